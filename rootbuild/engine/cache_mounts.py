"""``RUN --mount=type=cache`` for one step: its cache instances taken, mounted, kept.

Job: ``StepCaches.take`` (called by the ``cache`` entry of ``run_mounts.MOUNT_TYPES``
for each cache mount of a step) takes the mount's instance in the store
(``cache/mounts.py``: created empty, or seeded from ``from=``/``source=``), waiting or
picking another instance as its ``sharing`` says, and gives the step a private hard-link
snapshot of it: the lower of a writable ``LayerMount`` whose changes the sandbox keeps
(``LayerMount.keep``); ``StepCaches.close``, on the step's ``held`` stack, folds those
changes back into the store after the step and lets go. ``BuildCacheMounts`` is the
build's side: the ids used (what ``--cache-to`` exports) and the ``--cache-from`` copies.

Rules (Docker's reference, "RUN --mount=type=cache"):
- ``id`` defaults to the target; options: ``sharing`` (shared: default; locked: a second
  step using the id waits until the first is done; private: a step that finds the id in
  use takes the next instance that is free, a new empty one the first time), ``from`` +
  ``source`` (seed a new cache), ``mode`` (0755), ``uid``/``gid`` (0), ``ro``.
- Contents never reach a layer (the mount is not in the step's root) and never the step
  cache key (``stage.cache_key`` hashes the mount's options only): a RUN whose only
  change is the cache's contents stays cached, as with BuildKit.
- Writes of a step that failed are kept (BuildKit keeps them too); a killed (timed out,
  cancelled) step keeps nothing: the sandbox leaves changes in ``keep`` only when the
  step exited by itself, and only what it left is folded. A step never waits for an id
  while holding one that sorts after it (no deadlock between two steps holding two ids;
  ``StepCaches``); every instance is let go on every path.
- Waiting is a cancellable poll, never a blocked worker thread.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import tempfile
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, cast

import trio

from rootbuild.cache.mount_export import (
    MountRecord,
    choose_exported,
    restore_mount,
    write_mount_blob,
)
from rootbuild.cache.mounts import CacheMounts, mount_key, root_entry
from rootbuild.cache.remote import ImportedCache
from rootbuild.cache.spec import CacheSpec
from rootbuild.engine.copy import Source, image_sources
from rootbuild.errors import ContextError, Location, RootbuildError, StepError
from rootbuild.image.layer_extract import extract_layer
from rootbuild.image.layer_write import TarEntry, write_layer
from rootbuild.image.layermeta import LayerMeta
from rootbuild.image.rootfs import RootfsView
from rootbuild.image.store import Staging, Store, force_rmtree
from rootbuild.sandbox.spec import KEPT_META, KEPT_TREE
from rootbuild.snapshot import LowerLayer
from rootbuild.stages.graph import StageBase
from rootbuild.stages.steps import StepMount

POLL_SECONDS = 0.05
MAX_PRIVATE_INSTANCES = 64


@dataclass(frozen=True)
class CacheMountPlan:
    """One cache mount of a step, its options settled."""

    id: str
    target: str
    sharing: str
    readonly: bool
    mode: int
    uid: int
    gid: int
    source: str
    seed_from: StageBase | None


def plan_cache_mount(item: StepMount, where: Location) -> CacheMountPlan:
    """One cache mount with its defaults (pure)."""
    m = item.mount
    if not m.target:
        raise StepError("RUN --mount=type=cache: target is required", where)
    return CacheMountPlan(
        id=m.id or m.target, target=m.target, sharing=m.sharing or "shared",
        readonly=bool(m.readonly), mode=0o755 if m.mode is None else m.mode,
        uid=m.uid or 0, gid=m.gid or 0, source=m.source or "/", seed_from=item.source,
    )


def plan_cache_mounts(mounts: Sequence[StepMount], where: Location) -> list[CacheMountPlan]:
    """The cache mounts of a step with their defaults (pure)."""
    return [plan_cache_mount(item, where) for item in mounts if item.mount.type == "cache"]


def seed_source(view: RootfsView, source: str, what: str, where: Location) -> Source:
    """The directory ``source`` of ``view`` that seeds a new cache (checked before the
    store is touched)."""
    try:
        found = image_sources(view, [source], (), where, what)
    except ContextError as exc:
        raise ContextError(
            f'RUN --mount=type=cache,from={what}: source "{source}" not found', where
        ) from exc
    if len(found) != 1 or not found[0].is_dir:
        raise ContextError(
            f'RUN --mount=type=cache,from={what}: source "{source}" is not a directory',
            where,
        )
    return found[0]


def seed_tree(source: Source, tree: Path, name: str) -> LayerMeta:
    """Write ``source`` into ``tree`` (empty) as an extracted layer with its recorded
    owners; returns its metadata."""
    entries = [
        TarEntry(path=i.rel, kind=i.kind, mode=i.mode, uid=i.uid, gid=i.gid, mtime=i.mtime,
                 size=i.size, linkname=i.linkname, devmajor=i.devmajor, devminor=i.devminor,
                 xattrs=i.xattrs, source=i.opener)
        for i in source.items()
    ]
    with tempfile.TemporaryFile(dir=tree.parent) as tar:
        write_layer(entries, cast(BinaryIO, tar), compression="none")
        tar.seek(0)
        return extract_layer(cast(BinaryIO, tar), tree, media_type_or_compression="none",
                             layer_name=f"cache mount seed {name}").meta


class BuildCacheMounts:
    """One build's view of the store's cache mounts: the store, the ids its steps used
    (what ``--cache-to`` exports) and the cache mounts ``--cache-from`` offered (restored
    before the first step that mounts them; see ``cache/mount_export.py``)."""

    def __init__(self, store: CacheMounts, staging: Staging,
                 say: Callable[[str], None] = lambda line: None, namespace: str = "") -> None:
        self.store = store
        self.staging = staging
        self.say = say  # restore notes and warnings
        # BuildKit's BUILDKIT_CACHE_MOUNT_NS build arg: every id becomes "NS/id"
        self.namespace = namespace
        self._steps: weakref.WeakKeyDictionary[contextlib.AsyncExitStack, StepCaches] = (
            weakref.WeakKeyDictionary()
        )
        self.used: set[str] = set()
        self.imported: list[tuple[ImportedCache, MountRecord]] = []
        self._checked: set[str] = set()
        self._lock = trio.Lock()

    def step(self, held: contextlib.AsyncExitStack, scratch: Path) -> StepCaches:
        """The cache mounts of the step whose ``held`` stack this is (made at its first
        cache mount, given back when ``held`` closes)."""
        step = self._steps.get(held)
        if step is None:
            step = self._steps[held] = StepCaches(self, scratch)
            held.push_async_callback(step.close)
        return step

    def offer(self, remote: object) -> None:
        """Take the cache mounts of the ``--cache-from`` caches (the first one that has
        an id wins, as for step cache entries)."""
        caches = getattr(remote, "caches", None) or ([remote] if remote is not None else [])
        seen = {record.id for _, record in self.imported}
        for cache in caches:
            if isinstance(cache, ImportedCache):
                for record in cache.mounts:
                    if record.id not in seen:
                        seen.add(record.id)
                        self.imported.append((cache, record))

    async def restore(self, mount_id: str, say: Callable[[str], None]) -> None:
        """Restore ``mount_id`` from an imported cache once per build, when the store has
        no copy of it or an older one. A failure is a warning: the step runs on what the
        store has."""
        if mount_id in self._checked:
            return
        async with self._lock:
            if mount_id in self._checked:
                return
            self._checked.add(mount_id)
            found = [(c, r) for c, r in self.imported if r.id == mount_id]
            if not found:
                return
            cache, record = found[0]
            info = self.store.info(mount_key(mount_id))
            if info is not None and info.last_used >= record.last_used:
                say(f"cache mount {mount_id}: the store's copy is as new as the imported one")
                return
            try:
                await cache.fetch_mount(self.staging, record)
                done = await trio.to_thread.run_sync(
                    restore_mount, self.store, record,
                    lambda: self.staging.open_blob(record.layer.digest),
                )
            except RootbuildError as exc:
                say(f"warning: cache mount {mount_id}: not restored: {exc}")
                return
            if done:
                say(f"cache mount {mount_id}: restored from the imported cache "
                    f"({record.layer.size} bytes, {record.layer.digest[:19]})")


async def export_cache_mounts(
    store: Store, mounts: BuildCacheMounts | None, spec: CacheSpec,
    warn: Callable[[str], None],
) -> list[MountRecord]:
    """The blobs of the cache mounts this build used, for ``--cache-to`` ``spec`` (none
    with ``cache-mounts=false``); mounts over ``cache-mounts-max-size`` are skipped with a
    warning. The caller holds the store's shared lock."""
    if mounts is None or not spec.mounts:
        return []
    infos = [info for mount_id in sorted(mounts.used)
             if (info := mounts.store.info(mount_key(mount_id))) is not None]
    chosen, skipped = choose_exported(infos, spec.mounts_max_size)
    for info in skipped:
        warn(f"--cache-to {spec.ref}: cache mount {info.id} ({info.size} bytes) "
             f"not exported: over cache-mounts-max-size={spec.mounts_max_size}")
    return [await trio.to_thread.run_sync(write_mount_blob, store, mounts.store, info)
            for info in chosen]


Seed = Callable[[Path], LayerMeta]


@dataclass
class _Taken:
    """One cache mount of a step: its instance (``fd``: the use lock it holds; None while
    it holds none, or when another mount of the step holds the same instance), the
    snapshot its overlay reads (``lower``) and where the sandbox leaves its changes
    (``keep``)."""

    plan: CacheMountPlan
    seed: Seed | None
    lower: Path
    keep: Path
    instance: int = 0
    key: str = ""
    fd: int | None = None


class StepCaches:
    """The cache mounts of one step, taken one by one as ``run_mounts`` prepares them, and
    given back (changes folded, locks released) when the step's ``held`` stack closes.

    No deadlock between two steps that mount the same ids in another order: a step waits
    for an instance only while every id it holds sorts before the awaited one; when it
    would wait otherwise, it lets go of the later ids first and takes them again after
    (their snapshots made again: a ``locked`` id may have changed meanwhile)."""

    def __init__(self, build: BuildCacheMounts, scratch: Path) -> None:
        self.build = build
        self.store = build.store
        self.scratch = scratch
        self.taken: list[_Taken] = []

    async def take(self, plan: CacheMountPlan, seed: Seed | None) -> tuple[LowerLayer, Path]:
        """Hold an instance for ``plan``; returns its snapshot (the overlay's lower) and the
        directory where the sandbox leaves the step's changes."""
        if self.build.namespace:
            plan = dataclasses.replace(plan, id=f"{self.build.namespace}/{plan.id}")
        n = len(self.taken)
        item = _Taken(plan, seed, self.scratch / f"cache-{n}-lower", self.scratch / f"cache-{n}")
        self.taken.append(item)  # close() lets go of what it holds, whatever happens next
        await self._hold(item)
        await self._snapshot(item)
        await trio.to_thread.run_sync(item.keep.mkdir, 0o700)
        return LowerLayer(item.lower / "tree", item.lower / "meta.json"), item.keep

    async def _hold(self, item: _Taken) -> None:
        plan = item.plan
        owner = next((t for t in self.taken if t is not item and t.plan.id == plan.id
                      and t.instance == 1 and t.fd is not None), None)
        if plan.sharing != "private" and owner is not None:  # one id mounted twice
            item.instance, item.key = owner.instance, owner.key
            return
        if plan.sharing == "private":
            await self._take_private(item)
        else:
            exclusive = plan.sharing == "locked"
            key = mount_key(plan.id)
            item.fd = await trio.to_thread.run_sync(self.store.try_use, key, exclusive)
            if item.fd is None:
                later = sorted((t for t in self.taken if t.key and t.plan.id > plan.id),
                               key=lambda t: t.plan.id)
                for t in later:  # never wait holding an id that sorts after the awaited one
                    self._release(t)
                item.fd = await _wait_use(self.store, key, exclusive)
                item.instance = 1
                await self._ensure(item)
                for t in later:
                    await self._hold(t)
                    await trio.to_thread.run_sync(force_rmtree, t.lower)
                    await self._snapshot(t)
                return
            item.instance = 1
        await self._ensure(item)

    async def _take_private(self, item: _Taken) -> None:
        """The first instance of the id that no step uses (never waits)."""
        for instance in range(1, MAX_PRIVATE_INSTANCES + 1):
            key = mount_key(item.plan.id, instance)
            fd = await trio.to_thread.run_sync(self.store.try_use, key, True)
            if fd is not None:
                item.fd, item.instance = fd, instance
                return
        raise StepError(f"RUN --mount=type=cache,id={item.plan.id}: more than "
                        f"{MAX_PRIVATE_INSTANCES} private instances in use")

    def _release(self, item: _Taken) -> None:
        if item.fd is not None:
            os.close(item.fd)
            item.fd = None

    async def _ensure(self, item: _Taken) -> None:
        plan = item.plan
        if item.instance == 1:
            self.build.used.add(plan.id)
            await self.build.restore(plan.id, self.build.say)
        root = root_entry(plan.mode, plan.uid, plan.gid, 0)
        item.key = await trio.to_thread.run_sync(
            self.store.ensure, plan.id, item.instance, root, item.seed
        )

    async def _snapshot(self, item: _Taken) -> None:
        await trio.to_thread.run_sync(self.store.snapshot, item.key, item.lower)

    async def close(self) -> None:
        """After the step: fold what each writable mount's step left (a step the sandbox
        killed, or one that never started, left nothing), then let go of every instance.
        Shielded: a cancelled build still folds what a finished step left."""
        with trio.CancelScope(shield=True):
            try:
                for item in self.taken:
                    if item.key and not item.plan.readonly:
                        await trio.to_thread.run_sync(self._fold, item)
            finally:
                for item in self.taken:
                    self._release(item)

    def _fold(self, item: _Taken) -> None:
        meta_path = item.keep / KEPT_META
        if meta_path.is_file():
            self.store.fold(item.key, item.keep / KEPT_TREE, LayerMeta.load(meta_path))


async def _wait_use(store: CacheMounts, key: str, exclusive: bool) -> int:
    """The use lock of ``key``, polled (cancellable; no worker thread blocked)."""
    while True:
        fd = await trio.to_thread.run_sync(store.try_use, key, exclusive)
        if fd is not None:
            return fd
        await trio.sleep(POLL_SECONDS)
