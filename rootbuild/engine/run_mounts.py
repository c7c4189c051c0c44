"""``RUN --mount`` in the engine: what each mount of a ``RunStep`` adds to the step's cache
key, and what it becomes in the sandbox's ``StepSpec.mounts``.

Job: one ``MountType`` per ``--mount`` type in ``MOUNT_TYPES`` (``key``: the mount's
cache-key input, None when it adds none; ``prepare``: what the step gets, a ``Prepared``:
the ``RunMount`` the sandbox carries out and the environment variables it adds), run over
a step's mounts by ``mount_keys`` (before the step cache is asked) and ``prepare_mounts``
(when the step runs). ``ContextLayer`` makes the build context, as a mount source, into an
extracted-layer tree once per build.

Rules (Docker's Dockerfile reference, ``RUN --mount``; BuildKit's dockerfile2llb):
- Every mount needs a ``target`` (relative ones were resolved against WORKDIR by the plan,
  as BuildKit joins them with the state's dir); '/' is refused with BuildKit's
  ``invalid mount target "/"``.
- ``type=bind`` (the default): ``from=`` a stage or an image (their layers), a named
  directory context (``--build-context``), or none: the build context, as COPY sees it
  (only what .dockerignore admits, every entry owned by root). ``source`` is a path in
  that tree, cleaned as BuildKit's ``path.Join("/", src)`` (default: its root); symlinks
  in it resolve inside the tree (the sandbox's ``step_mounts``). Read-only unless ``rw``;
  writes through ``rw`` are thrown away. The key takes the bound context path by content
  (the COPY walk and its digests), or the key of the stage or image; a source that is not
  there fails as BuildKit's checksum does.
- ``type=tmpfs``: a fresh tmpfs of ``size`` bytes; its options are in the step's fields,
  which the key takes already.
- ``type=secret`` / ``type=ssh`` (``engine/secrets.py``): a ``SecretMount`` (the value is
  written inside the sandbox, from a memfd) and/or a secret variable
  (``Prepared.secret_env``: never in ``env``, which the spec's JSON holds), or the agent's
  socket as a ``Bind`` plus ``SSH_AUTH_SOCK``. Their key adds nothing: the step's fields
  hold the id and target, never a value (BuildKit does not rerun a step when only a
  secret's value changes). A secret needs no target (``env=`` alone, or its default).
- A variable set by several mounts is the first one's (``SSH_AUTH_SOCK``: the first ssh
  mount's); the step's own environment wins over them (``Stage.run_command``).
- ``type=cache``: a writable ``LayerMount`` of a snapshot of the cache's instance whose
  changes the sandbox keeps (``keep``) and ``engine/cache_mounts.py`` folds back into the
  store after the step (held on ``held``, with the instance's sharing lock). The key is
  the options only (the step's fields), never the contents; a ``from=``/``source=`` seed
  is checked when the key is computed, before the step cache or the store is touched.
- Nothing of a mount reaches the layer (the sandbox removes the targets it created).
- ``prepare`` may hold things until the step ends (a lock, a file it wrote in the step's
  ``MountEnv.scratch``) by entering them on the ``held`` stack it is given; the engine
  closes that stack when the step has ended, whatever happened, and ``prepare_mounts``
  closes it itself when a later mount fails to prepare.
- A type without an entry is refused at plan time (``planning.SUPPORTED``); a type added
  later adds one ``MountType`` here and, when it needs a new kind of mount, a ``RunMount``
  of ``sandbox.spec``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import posixpath
import threading
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import trio

from rootbuild.cache.keys import Scalar
from rootbuild.context import BuildContext
from rootbuild.engine.cache_mounts import (
    BuildCacheMounts,
    Seed,
    plan_cache_mount,
    seed_source,
    seed_tree,
)
from rootbuild.engine.copy import CopyPlan, context_sources, copy_entries
from rootbuild.engine.layers import Layer, LayerTrees
from rootbuild.engine.secrets import BuildSources, secret_mount, ssh_mount
from rootbuild.engine.step_cache import SourceHasher
from rootbuild.errors import ContextError, DockerfileError, Location, StepError
from rootbuild.image.layer_extract import extract_layer
from rootbuild.image.layer_write import write_layer
from rootbuild.image.rootfs import RootfsView
from rootbuild.image.store import force_rmtree
from rootbuild.sandbox.spec import LayerMount, RunMount, TmpfsMount
from rootbuild.snapshot import LowerLayer
from rootbuild.stages.graph import StageBase
from rootbuild.stages.steps import StepMount


class MountSources(Protocol):
    """What a mount reads from the build: the stage being run implements it."""

    async def source_key(self, ref: StageBase, where: Location) -> str:
        """The cache key of a stage's final state, or of an image."""
        ...

    async def source_layers(self, ref: StageBase, where: Location) -> tuple[Layer, ...]:
        """The layers of a stage's final state, or of an image (lowest first)."""
        ...


class ContextLayer:
    """The build context (or a named directory context) as one extracted layer (what COPY
    would take of ``.``: only what .dockerignore admits, owned by root), made at the first
    mount that needs it and kept in the build's scratch for the rest of the build."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lowers: dict[str, LowerLayer] = {}

    def get(self, context: BuildContext, work_dir: Path, where: Location,
            name: str = "") -> LowerLayer:
        """The layer of ``context`` (``name``: the named context's, "" the build's).
        Blocks: call it in a worker thread."""
        with self._lock:
            if name not in self._lowers:
                place = work_dir / f"mount-context-{len(self._lowers)}"
                self._lowers[name] = _make_context_layer(context, place, where)
            return self._lowers[name]


def _make_context_layer(context: BuildContext, place: Path, where: Location) -> LowerLayer:
    place.mkdir(mode=0o700)
    tar = place / "context.tar"
    try:
        sources = context_sources(context, ["."], [], where)
        plan = CopyPlan(sources=sources, dest="/", owner=(0, 0), chmod=None, now=0)
        entries = copy_entries(plan, RootfsView([]), where)
        with open(tar, "wb") as out:
            write_layer(entries, out, compression="none")
        with open(tar, "rb") as stream:
            result = extract_layer(stream, place / "rootfs", media_type_or_compression="none",
                                   layer_name="of the build context")
        result.meta.save(place / "meta.json")
    except BaseException:
        force_rmtree(place)
        raise
    tar.unlink()
    return LowerLayer(place / "rootfs", place / "meta.json")


@dataclass(frozen=True)
class MountEnv:
    """Everything a mount type may use, for one step: ``where`` is its Dockerfile line;
    ``scratch`` the step's own directory (exists; removed with the build's work dir), None
    while only the keys are computed."""

    sources: MountSources
    trees: LayerTrees
    context: BuildContext
    context_layer: ContextLayer
    hasher: SourceHasher
    work_dir: Path
    snapshotter: Callable[[], str]
    where: Location
    scratch: Path | None = None
    named: Mapping[str, BuildContext] = dataclasses.field(default_factory=dict)
    secrets: BuildSources = dataclasses.field(default_factory=BuildSources)  # --secret/--ssh
    caches: BuildCacheMounts | None = None  # type=cache: the build's cache mounts

    def context_of(self, ref: StageBase | None) -> tuple[str, BuildContext] | None:
        """The directory a bind reads (``name``, context): the build context when ``ref``
        is None, a named directory context (``--build-context``); None for layers."""
        if ref is None:
            return "", self.context
        if ref.context is not None:
            return ref.context, self.named[ref.context]
        return None


@dataclass(frozen=True)
class Prepared:
    """What one mount gives the step: ``mount`` (None: nothing is mounted, e.g. a secret
    exposed only as ``env=``) and environment variables it adds."""

    mount: RunMount | None
    env: Mapping[str, str] = dataclasses.field(default_factory=dict)
    #: secret variables (``env=`` of type=secret): values the spec's JSON must not hold
    secret_env: Mapping[str, bytes] = dataclasses.field(default_factory=dict, repr=False)


@dataclass(frozen=True)
class StepMounts:
    """Every mount of a step, in the Dockerfile's order, and the variables they add."""

    mounts: tuple[RunMount, ...] = ()
    env: dict[str, str] = dataclasses.field(default_factory=dict)
    secret_env: dict[str, bytes] = dataclasses.field(default_factory=dict, repr=False)


@dataclass(frozen=True)
class MountType:
    """``key``: the cache-key input of one mount (None: none beyond the step's fields; a
    secret's value must never be one); ``prepare``: what the step gets for it, holding on
    ``held`` (an ``AsyncExitStack`` closed after the step) what must last until the step
    ends."""

    key: Callable[[StepMount, MountEnv], Awaitable[Scalar | None]]
    prepare: Callable[[StepMount, MountEnv, contextlib.AsyncExitStack], Awaitable[Prepared]]
    needs_target: bool = True  # False: the type has a default target, or none


def describe(mount: StepMount) -> str:
    """How errors name a mount: ``RUN --mount=type=bind,source=x,target=/t``."""
    m = mount.mount
    words = [f"type={m.type}"]
    if m.from_ is not None:
        words.append(f"from={m.from_}")
    if m.source is not None:
        words.append(f"source={m.source}")
    if m.target is not None:
        words.append(f"target={m.target}")
    return "RUN --mount=" + ",".join(words)


def target_of(mount: StepMount, where: Location) -> str:
    """The mount's absolute, clean target; a missing one or '/' is a located error."""
    target = mount.mount.target
    if not target:
        raise StepError(f"{describe(mount)}: a target is required", where)
    clean = posixpath.normpath("/" + target.lstrip("/"))
    if clean == "/":
        raise StepError(f'{describe(mount)}: invalid mount target "{clean}"', where)
    return clean


def source_of(mount: StepMount) -> str:
    """BuildKit's ``path.Join("/", source)``: '..' cannot climb above the tree's root."""
    return posixpath.normpath("/" + (mount.mount.source or "")).replace("//", "/")


def _not_found(mount: StepMount, source: str, where: Location) -> StepError:
    # BuildKit: 'failed to compute cache key: failed to calculate checksum of ref ...:
    # "/missing": not found'
    return StepError(
        f'{describe(mount)}: failed to compute cache key: "{source}": not found', where
    )


# -- type=bind -------------------------------------------------------------------------------


async def _bind_key(mount: StepMount, env: MountEnv) -> Scalar:
    source = source_of(mount)
    directory = env.context_of(mount.source)
    if directory is None:
        assert mount.source is not None
        layers = await env.sources.source_layers(mount.source, env.where)
        found = await trio.to_thread.run_sync(
            lambda: env.trees.view(layers).lookup(source.strip("/"), follow=True)
        )
        if source != "/" and found is None:
            raise _not_found(mount, source, env.where)
        return "from:" + await env.sources.source_key(mount.source, env.where)

    name, context = directory

    def digest() -> str:
        try:
            return env.hasher.digest(context_sources(context, [source], [], env.where))
        except ContextError as exc:
            if "not found" in exc.message:
                raise _not_found(mount, source, env.where) from exc
            raise StepError(f"{describe(mount)}: {exc.message}", env.where) from exc

    return f"context:{name}:" + await trio.to_thread.run_sync(digest)


async def _bind_prepare(mount: StepMount, env: MountEnv, held: contextlib.AsyncExitStack
                        ) -> Prepared:
    target = target_of(mount, env.where)
    directory = env.context_of(mount.source)
    if directory is None:
        assert mount.source is not None
        layers = await env.sources.source_layers(mount.source, env.where)
        lowers = await trio.to_thread.run_sync(
            lambda: tuple(LowerLayer(*env.trees.lower(layer)) for layer in layers)
        )
    else:
        name, context = directory
        lowers = (await trio.to_thread.run_sync(
            env.context_layer.get, context, env.work_dir, env.where, name
        ),)
    readonly = mount.mount.readonly is not False
    return Prepared(LayerMount(lowers, source_of(mount), target, readonly, env.snapshotter()))


# -- type=tmpfs ------------------------------------------------------------------------------


async def _no_key(mount: StepMount, env: MountEnv) -> None:
    return None


async def _tmpfs_prepare(mount: StepMount, env: MountEnv, held: contextlib.AsyncExitStack
                         ) -> Prepared:
    return Prepared(TmpfsMount(target_of(mount, env.where), mount.mount.size))


# -- type=secret, type=ssh (engine/secrets.py) -----------------------------------------------


async def _secret_prepare(mount: StepMount, env: MountEnv, held: contextlib.AsyncExitStack
                          ) -> Prepared:
    try:
        secret, variables = secret_mount(mount.mount, env.secrets)
    except (StepError, DockerfileError) as exc:
        raise StepError(exc.message, env.where) from None
    if secret is not None and mount.mount.target:
        target_of(mount, env.where)  # one it names: absolute (the plan made it), not '/'
    return Prepared(secret, secret_env=variables)


async def _ssh_prepare(mount: StepMount, env: MountEnv, held: contextlib.AsyncExitStack
                       ) -> Prepared:
    target = target_of(mount, env.where)
    try:
        socket = ssh_mount(mount.mount, target, env.secrets)
    except StepError as exc:
        raise StepError(exc.message, env.where) from None
    if socket is None:
        return Prepared(None)
    return Prepared(socket, {"SSH_AUTH_SOCK": target})


# -- type=cache ------------------------------------------------------------------------------


async def _cache_seed(mount: StepMount, env: MountEnv) -> Seed | None:
    """What seeds a new instance: the directory ``source`` of ``from=`` (checked here)."""
    if mount.source is None:
        return None
    ref = mount.source
    plan = plan_cache_mount(mount, env.where)
    what = mount.mount.from_ or str(ref)
    layers = await env.sources.source_layers(ref, env.where)
    source = await trio.to_thread.run_sync(
        lambda: seed_source(env.trees.view(layers), plan.source, what, env.where)
    )
    return lambda tree: seed_tree(source, tree, f"{what}:{plan.source}")


async def _cache_key(mount: StepMount, env: MountEnv) -> None:
    await _cache_seed(mount, env)  # a bad seed fails before the step cache is asked
    return None


async def _cache_prepare(mount: StepMount, env: MountEnv, held: contextlib.AsyncExitStack
                         ) -> Prepared:
    target = target_of(mount, env.where)
    plan = plan_cache_mount(mount, env.where)
    if env.caches is None or env.scratch is None:
        raise StepError(f"{describe(mount)}: this build has no store for cache mounts",
                        env.where)
    seed = await _cache_seed(mount, env)
    lower, keep = await env.caches.step(held, env.scratch).take(plan, seed)
    return Prepared(LayerMount((lower,), "/", target, plan.readonly, env.snapshotter(),
                               keep=None if plan.readonly else keep))


#: every ``--mount`` type this engine carries out (``planning.SUPPORTED`` names them)
MOUNT_TYPES: dict[str, MountType] = {
    "bind": MountType(_bind_key, _bind_prepare),
    "tmpfs": MountType(_no_key, _tmpfs_prepare),
    "secret": MountType(_no_key, _secret_prepare, needs_target=False),
    "ssh": MountType(_no_key, _ssh_prepare),
    "cache": MountType(_cache_key, _cache_prepare),
}


def _type(mount: StepMount, where: Location) -> MountType:
    kind = MOUNT_TYPES.get(mount.mount.type)
    if kind is None:  # the plan refused it already (planning.SUPPORTED)
        raise StepError(f"RUN --mount=type={mount.mount.type}: not supported yet", where)
    return kind


async def mount_keys(mounts: Sequence[StepMount], env: MountEnv) -> dict[str, Scalar]:
    """The cache-key inputs of a step's mounts (``mount.N`` by position); every target is
    checked first, so a bad one fails before the step cache is asked."""
    for mount in mounts:
        if _type(mount, env.where).needs_target:
            target_of(mount, env.where)
    inputs: dict[str, Scalar] = {}
    for number, mount in enumerate(mounts):
        value = await _type(mount, env.where).key(mount, env)
        if value is not None:
            inputs[f"mount.{number}"] = value
    return inputs


async def prepare_mounts(mounts: Sequence[StepMount], env: MountEnv,
                         held: contextlib.AsyncExitStack) -> StepMounts:
    """What the step gets for its mounts, in the Dockerfile's order (the sandbox mounts
    parents first). The caller closes ``held`` after the step; when a mount fails to
    prepare, ``held`` is closed here before the error goes on."""
    out: list[RunMount] = []
    variables: dict[str, str] = {}
    secret_env: dict[str, bytes] = {}
    try:
        for mount in mounts:
            prepared = await _type(mount, env.where).prepare(mount, env, held)
            if prepared.mount is not None:
                out.append(prepared.mount)
            variables = dict(prepared.env) | variables  # the first mount's wins
            secret_env.update(prepared.secret_env)
    except BaseException:
        await held.aclose()
        raise
    return StepMounts(tuple(out), variables, secret_env)
