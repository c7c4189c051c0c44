"""``RUN --mount=type=cache`` for one step: its cache instances taken, mounted, kept.

Job: ``cache_mount_executor(...)`` wraps the build's ``Executor`` for a RUN step that has
cache mounts: before the step it takes each mount's instance in the store
(``cache/mounts.py``: created empty, or seeded from ``from=``/``source=``), waits or
picks another instance as its ``sharing`` says, and gives the step a private hard-link
snapshot of it as the lower of an overlay bound at the target (``StepSpec.overlays``);
after the step it folds the step's changes back into the store and lets go.

Rules (Docker's reference, "RUN --mount=type=cache"):
- ``id`` defaults to the target; options: ``sharing`` (shared: default; locked: a second
  step using the id waits until the first is done; private: a step that finds the id in
  use takes the next instance that is free, a new empty one the first time), ``from`` +
  ``source`` (seed a new cache), ``mode`` (0755), ``uid``/``gid`` (0), ``ro``.
- Contents never reach a layer (the mount is not in the step's root) and never the step
  cache key (``stage.cache_key`` hashes the mount's options only): a RUN whose only
  change is the cache's contents stays cached, as with BuildKit.
- Writes of a step that failed are kept (BuildKit keeps them too); a killed or cancelled
  step keeps nothing. The instances a step holds are taken in key order (no deadlock
  between two steps holding two ids) and let go on every path.
- Waiting is a cancellable poll, never a blocked worker thread.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from collections.abc import Awaitable, Callable, Sequence
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
from rootbuild.engine.seams import Executor
from rootbuild.errors import ContextError, Location, RootbuildError, StepError
from rootbuild.image.layer_extract import extract_layer
from rootbuild.image.layer_write import TarEntry, write_layer
from rootbuild.image.layermeta import LayerMeta
from rootbuild.image.rootfs import RootfsView
from rootbuild.image.store import Staging, Store
from rootbuild.sandbox.overlay_binds import CHANGES_META, CHANGES_TREE
from rootbuild.sandbox.spec import OverlayBind, StepResult, StepSpec
from rootbuild.snapshot import LowerLayer
from rootbuild.stages.graph import StageBase
from rootbuild.stages.steps import RunStep, StepMount

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


def plan_cache_mounts(mounts: Sequence[StepMount], where: Location) -> list[CacheMountPlan]:
    """The cache mounts of a step with their defaults (pure)."""
    plans = []
    for item in mounts:
        m = item.mount
        if m.type != "cache":
            continue
        if not m.target:
            raise StepError("RUN --mount=type=cache: target is required", where)
        plans.append(CacheMountPlan(
            id=m.id or m.target, target=m.target, sharing=m.sharing or "shared",
            readonly=bool(m.readonly), mode=0o755 if m.mode is None else m.mode,
            uid=m.uid or 0, gid=m.gid or 0, source=m.source or "/", seed_from=item.source,
        ))
    return plans


Views = Callable[[StageBase, Location], Awaitable[RootfsView]]


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

    def __init__(self, store: CacheMounts, staging: Staging) -> None:
        self.store = store
        self.staging = staging
        self.used: set[str] = set()
        self.imported: list[tuple[ImportedCache, MountRecord]] = []
        self._checked: set[str] = set()
        self._lock = trio.Lock()

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


class _Held:
    """The instances one step holds: their use-lock fds, released on close."""

    def __init__(self) -> None:
        self.fds: list[int] = []

    def close(self) -> None:
        while self.fds:
            os.close(self.fds.pop())


async def _take(store: CacheMounts, plan: CacheMountPlan, held: _Held) -> int:
    """Take an instance of ``plan.id`` as its sharing says; returns its number."""
    if plan.sharing == "private":
        for instance in range(1, MAX_PRIVATE_INSTANCES + 1):
            fd = await trio.to_thread.run_sync(store.try_use, mount_key(plan.id, instance), True)
            if fd is not None:
                held.fds.append(fd)
                return instance
        raise StepError(f"RUN --mount=type=cache,id={plan.id}: more than "
                        f"{MAX_PRIVATE_INSTANCES} private instances in use")
    exclusive = plan.sharing == "locked"
    while True:
        fd = await trio.to_thread.run_sync(store.try_use, mount_key(plan.id), exclusive)
        if fd is not None:
            held.fds.append(fd)
            return 1
        await trio.sleep(POLL_SECONDS)


class CacheMountExecutor:
    """An ``Executor`` that runs one step with its cache mounts (see the module rules)."""

    def __init__(self, inner: Executor, build: BuildCacheMounts, plans: list[CacheMountPlan],
                 scratch: Path, views: Views, where: Location,
                 describe: Callable[[StageBase], str]) -> None:
        self.inner = inner
        self.build = build
        self.store = build.store
        self.plans = plans
        self.scratch = scratch
        self.views = views
        self.where = where
        self.describe = describe

    async def _seed(self, plan: CacheMountPlan) -> Callable[[Path], LayerMeta] | None:
        if plan.seed_from is None:
            return None
        view = await self.views(plan.seed_from, self.where)
        what = self.describe(plan.seed_from)
        source = await trio.to_thread.run_sync(seed_source, view, plan.source, what,
                                               self.where)
        return lambda tree: seed_tree(source, tree, f"{what}:{plan.source}")

    async def run(self, spec: StepSpec, on_output: Callable[[str], None]) -> StepResult:
        held = _Held()
        taken: list[tuple[str, OverlayBind]] = []
        try:
            seeds = [await self._seed(plan) for plan in self.plans]
            order = sorted(range(len(self.plans)), key=lambda i: (self.plans[i].id, i))
            keys: dict[int, str] = {}
            mine: dict[str, int] = {}  # ids this step holds (one id mounted twice)
            for i in order:
                plan = self.plans[i]
                if plan.sharing != "private" and plan.id in mine:
                    instance = mine[plan.id]
                else:
                    instance = await _take(self.store, plan, held)
                    mine.setdefault(plan.id, instance)
                if instance == 1:
                    self.build.used.add(plan.id)
                    await self.build.restore(plan.id, on_output)
                root = root_entry(plan.mode, plan.uid, plan.gid, 0)
                keys[i] = await trio.to_thread.run_sync(
                    self.store.ensure, plan.id, instance, root, seeds[i]
                )
            overlays = []
            for i, plan in enumerate(self.plans):
                lower = await trio.to_thread.run_sync(
                    self.store.snapshot, keys[i], self.scratch / f"cache-{i}-lower"
                )
                overlay = OverlayBind((LowerLayer(*lower),), self.scratch / f"cache-{i}",
                                      plan.target, plan.readonly, _snapshotter(spec))
                overlays.append(overlay)
                taken.append((keys[i], overlay))
            step = dataclasses.replace(spec, overlays=(*spec.overlays, *overlays))
            return await self.inner.run(step, on_output)
        finally:
            with trio.CancelScope(shield=True):
                try:
                    for key, overlay in taken:
                        await trio.to_thread.run_sync(self._fold, key, overlay)
                finally:
                    held.close()

    def _fold(self, key: str, overlay: OverlayBind) -> None:
        meta_path = overlay.work / CHANGES_META
        if overlay.readonly or not meta_path.is_file():
            return
        self.store.fold(key, overlay.work / CHANGES_TREE, LayerMeta.load(meta_path))


def _snapshotter(spec: StepSpec) -> str:
    return getattr(spec.rootfs, "snapshotter", "fuse")


def cache_mount_executor(
    inner: Executor, action: RunStep, where: Location, store: BuildCacheMounts | None,
    scratch: Path, views: Views, describe: Callable[[StageBase], str],
) -> Executor:
    """``inner`` itself for a step without cache mounts, else one that provides them."""
    plans = plan_cache_mounts(action.mounts, where)
    if not plans:
        return inner
    if store is None:
        raise StepError("RUN --mount=type=cache: this build has no store for cache mounts",
                        where)
    return CacheMountExecutor(inner, store, plans, scratch, views, where, describe)
