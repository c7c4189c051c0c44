"""One stage of a build: its base, then each step, each one looked up in the step cache
before it is carried out (RUN in the sandbox, COPY/ADD/WORKDIR as a layer written here).

Rules:
- The pure evaluator decides what a step is (``stages.evaluate.apply``); this module only
  carries it out. Config changes are always derived again; only layers come from the cache.
- A step that can make a layer has a cache key (``cache.keys``) chained from the stage's
  base; a hit reuses the stored layer (or the recorded "no layer") without running
  anything, and progress says ``CACHED`` as BuildKit does.
- A ``COPY/ADD --link`` step's key starts from ``scratch`` instead (its layer is computed
  without the image below), so it hits when only the base changed; the key it hands on
  still chains the state below.
- In an untrusted build a RUN that mounts a secret or an ssh agent is neither looked up
  nor recorded (``private_step``): its key cannot tell one secret value from another.
- Blocking work runs in worker threads so independent stages really overlap.
- A stage sees only what it is handed: the build's frozen ``BuildEnv``, its ``Seams``
  (executor, base images) and the per-build ``Workspace``; it never reaches into the
  build that made them.
- The base's ONBUILD triggers are already in the plan (``StagePlan.onbuild``); they run
  first, shown as ``[ONBUILD ...]``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import trio

from rootbuild.cache.entry import CacheEntry
from rootbuild.cache.keys import Scalar, base_key, chain_key, step_key
from rootbuild.context import BuildContext
from rootbuild.dockerfile.instructions import Instruction, StageSpec
from rootbuild.engine.archive_source import add_archive_or_file
from rootbuild.engine.cache_mounts import BuildCacheMounts
from rootbuild.engine.chmod import parse_chmod
from rootbuild.engine.copy import (
    CopyPlan,
    Source,
    SourceItem,
    context_parents_sources,
    context_sources,
    copy_entries,
    heredoc_source,
    image_parents_sources,
    image_sources,
    resolve_chown,
)
from rootbuild.engine.disk_limit import DiskAccount, limit_message, limits_of
from rootbuild.engine.entitlements import host_devices
from rootbuild.engine.env import BuildEnv
from rootbuild.engine.layers import Layer, LayerTrees
from rootbuild.engine.network import default_for as default_network
from rootbuild.engine.remote_ref import redact_text
from rootbuild.engine.run_files import heredoc_binds
from rootbuild.engine.run_mounts import ContextLayer, MountEnv, mount_keys, prepare_mounts
from rootbuild.engine.seams import Seams
from rootbuild.engine.secrets import BuildSources, mask_of
from rootbuild.engine.step_cache import StepCache
from rootbuild.errors import (
    ContextError,
    Location,
    RootbuildError,
    SandboxError,
    StepError,
    StepTimeout,
)
from rootbuild.image.layer_write import TarEntry
from rootbuild.image.oci import StoredImage
from rootbuild.image.rootfs import RootfsView
from rootbuild.image.store import Staging
from rootbuild.progress import Progress
from rootbuild.runtrace import mark
from rootbuild.sandbox.idmap import IdMapPlan
from rootbuild.sandbox.spec import OverlayRoot, StepSpec
from rootbuild.snapshot import LowerLayer
from rootbuild.stages.config import HistoryEntry, ImageConfig, format_timestamp
from rootbuild.stages.evaluate import REMOTE_PREFIXES, apply, begin_stage
from rootbuild.stages.graph import StageBase
from rootbuild.stages.plan import StagePlan
from rootbuild.stages.steps import CopyStep, MetadataStep, RunStep, StageState, Step, WorkdirStep


@dataclass(frozen=True)
class Workspace:
    """The per-build places and records every stage shares: progress, the layer trees,
    the step cache, the build context, the build's scratch directory and staging area,
    the id mapping RUN gets and the once-per-build warnings."""

    progress: Progress
    trees: LayerTrees
    cache: StepCache
    context: BuildContext
    work_dir: Path
    staging: Staging
    idmap: IdMapPlan
    warn_once: Callable[[str], None]
    named: Mapping[str, BuildContext] = field(default_factory=dict)  # directory contexts
    context_layer: ContextLayer = field(default_factory=ContextLayer)  # RUN --mount source
    sources: BuildSources = field(default_factory=BuildSources)  # --secret/--ssh
    cache_mounts: BuildCacheMounts | None = None  # RUN --mount=type=cache's store
    disk: DiskAccount = field(default_factory=DiskAccount)  # --disk-limit: RUN layers so far
    runs_ahead: bool = False  # the Dockerfile has RUN steps: a cache miss prestarts them


@dataclass(frozen=True)
class StageResult:
    state: StageState
    layers: tuple[Layer, ...]
    key: str  # the step cache key of the stage's final state

    @property
    def config(self) -> ImageConfig:
        return self.state.config


class Stage:
    """Runs the steps of one stage."""

    def __init__(self, env: BuildEnv, seams: Seams, work: Workspace, stage: StagePlan,
                 deps: Mapping[int, StageResult]):
        self.env = env
        self.seams = seams
        self.work = work
        self.stage = stage
        self.deps = deps
        self.layers: tuple[Layer, ...] = ()
        self.key = ""  # the cache key of the state reached so far
        self.total = len(stage.instructions) + 1
        self.use_cache = work.cache.enabled_for(stage.index, stage.name)

    def label(self, number: int, text: str) -> str:
        short = text if len(text) <= 120 else text[:117] + "..."
        return f"[{self.stage.display_name} {number}/{self.total}] {short}"

    async def run(self) -> StageResult:
        env, progress = self.env, self.work.progress
        step = progress.start(self.label(1, self.stage.from_.original))
        try:
            base_config, parent = await self.base()
        except RootbuildError as exc:
            progress.failed(step, str(exc))
            raise
        progress.done(step)
        spec = StageSpec(self.stage.index, self.stage.from_, self.stage.instructions)
        state = begin_stage(
            base_config, spec, env.global_args, env.options.build_args, env.predefined,
            escape=env.escape, parent=parent.state if parent else None, refs=self.stage.refs,
        )
        for trigger in self.stage.onbuild:
            state = await self.step(state, trigger, f"ONBUILD {trigger.original}", None)
        for number, instr in enumerate(self.stage.instructions, start=2):
            state = await self.step(state, instr, instr.original, number)
        return StageResult(state, self.layers, self.key)

    async def base(self) -> tuple[ImageConfig, StageResult | None]:
        base = self.stage.base
        if base.stage is not None:
            parent = self.deps[base.stage]
            self.layers, self.key = parent.layers, parent.key
            return parent.config, parent
        platform = str(self.stage.platform)
        if base.context is not None:  # a directory named context: its files, no config
            where = self.stage.from_.location
            digest = await trio.to_thread.run_sync(self.named_digest, base.context, ".", where)
            self.key = base_key(f"context:{digest}", platform)
            layer = await trio.to_thread.run_sync(self.named_layer, base.context, where)
            config = ImageConfig.scratch(self.stage.platform)
            if layer is not None:
                self.layers = (layer,)
                # as BuildKit's exporter does for a layer no history entry describes
                # (no time: the same directory gives the same image at every rebuild)
                config = config.with_layer(layer.diff_id).with_history(HistoryEntry(
                    created_by=f"context {base.context}",
                    comment="buildkit.exporter.image.v0"))
            return config, None
        assert base.image is not None
        if base.is_scratch:
            self.key = base_key(None, platform)
            return ImageConfig.scratch(self.stage.platform), None
        image = await self.image(base.image, self.stage.from_.location)
        self.layers = tuple(Layer(d, i) for d, i in zip(image.layers, image.diff_ids, strict=True))
        self.key = base_key(image.manifest.digest, platform)
        return ImageConfig.from_oci(image.config_json), None

    async def step(
        self, state: StageState, instr: Instruction, text: str, number: int | None
    ) -> StageState:
        progress = self.work.progress
        text = redact_text(text)  # ADD https://user:token@...: shown and recorded without it
        handle = progress.start(self.label(number, text) if number else f"[{text}]")
        try:
            state, action = apply(state, instr, now=self.env.clock.now)
            state, cached = await self.execute(state, action, instr, text, handle)
        except RootbuildError as exc:
            # every error of a step says which instruction it was
            error = exc if exc.location else type(exc)(exc.message, instr.location)
            progress.failed(handle, str(error))
            if error is exc:
                raise
            raise error from exc
        progress.done(handle, cached=cached)
        return state

    async def execute(
        self, state: StageState, action: Step, instr: Instruction, text: str, handle: int
    ) -> tuple[StageState, bool]:
        """Carry out one step (or take it from the cache); True when it was cached."""
        if isinstance(action, MetadataStep):
            return state, False
        cache = self.work.cache
        mark("step.start")
        key = await self.cache_key(action, instr.location)
        mark("b.cache_key")
        state_key = self.after_link(action, key)
        private = self.private_step(action)
        if key is None or not self.use_cache or private:
            cache.bypassed = True  # this build is never replayed (engine/replay.py)
        if key is not None and self.use_cache and not private:
            entry = await cache.lookup(key, self.work.staging)
            if entry is not None:
                cache.hit(self.stage.index, entry)
                self.key = chain_key(state_key or key, entry.diff_id)
                layer = Layer(entry.layer, entry.diff_id) if entry.layer and entry.diff_id \
                    else None
                state = _stamped(state, entry.created, self.env.options.source_date_epoch)
                return self.with_layer(state, layer), True
        if self.work.runs_ahead:  # steps run from here on: RUN's sandbox starts meanwhile
            await self.seams.executor.prestart()
        layer = await self.produce(action, instr.location, handle)
        if key is not None:
            if not private:
                cache.add(self.stage.index, CacheEntry(
                    key=key, layer=layer.descriptor if layer else None,
                    diff_id=layer.diff_id if layer else None, description=text,
                    created=self.env.clock.started,
                ))
                cache.recorded.add(handle)  # a rebuild shows it CACHED (engine/replay.py)
            self.key = chain_key(state_key or key, layer.diff_id if layer else None)
        mark("b.cache_add")
        return self.with_layer(state, layer), False

    def private_step(self, action: Step) -> bool:
        """A RUN of an untrusted build that mounts a secret or an ssh agent: never taken
        from the step cache nor recorded in it. Its key holds the secret's id, never the
        value (as BuildKit's), so another job with another value, or none, could reuse
        what this one computed from it (docker/buildx#551; SERVICE.md)."""
        return self.env.options.untrusted and isinstance(action, RunStep) and any(
            m.mount.type in ("secret", "ssh") for m in action.mounts
        )

    def with_layer(self, state: StageState, layer: Layer | None) -> StageState:
        if layer is None:  # nothing changed: no layer, as BuildKit drops empty diffs
            return _mark_last_empty(state)
        self.layers = (*self.layers, layer)
        return dataclasses.replace(state, config=state.config.with_layer(layer.diff_id))

    async def produce(self, action: Step, where: Location, handle: int) -> Layer | None:
        """Run the step: the layer it made, None when it changed nothing."""
        if isinstance(action, RunStep):
            return await self.run_command(action, where, handle)
        if isinstance(action, WorkdirStep):
            entries = await trio.to_thread.run_sync(self.workdir_entries, action, where)
        else:
            assert isinstance(action, CopyStep)
            entries = await self.copy_entries(action, where)
            if entries is not None:  # --disk-limit: the build's layers (disk_limit.py)
                entries = list(entries)
                spent = self.work.disk.charge(entries, *limits_of(self.env.options))
                if spent:
                    name = "ADD" if action.is_add else "COPY"
                    raise StepError(f"{name}: {limit_message(self.env.options, spent)} "
                                    "by the build's layers", where)
        if entries is None:
            return None
        options = self.env.options
        return await trio.to_thread.run_sync(
            self.work.trees.commit, entries, options.compression, options.source_date_epoch,
        )

    async def cache_key(self, action: Step, where: Location) -> str | None:
        """The step's cache key (remote sources: ``RemoteSources.key``, which may fetch)."""
        options = self.env.options
        assert not isinstance(action, MetadataStep)
        inputs: dict[str, Scalar] = {
            "compression": options.compression,
            "epoch": options.source_date_epoch,
        }
        if isinstance(action, RunStep):
            inputs |= {"network": self.network(action), "idmap": self.work.idmap.mode}
            inputs |= options.run_flags().key_inputs()  # --add-host, --ulimit, ...
            if action.mounts:
                inputs |= await mount_keys(action.mounts, self.mount_env(where))
        elif isinstance(action, CopyStep):
            remote = [src for src in action.sources if src.startswith(REMOTE_PREFIXES)]
            for number, src in enumerate(remote):  # ADD <url|git>: its content or commit
                inputs[f"remote{number}"] = await self.seams.remote.key(
                    src, action.checksum, action.keep_git_dir, self.work.work_dir, where
                )
            local = dataclasses.replace(  # the key still hashes the whole step below
                action, sources=tuple(s for s in action.sources if s not in remote)
            )
            if action.link and action.chown and not action.chown.replace(":", "").isdigit():
                # the one thing a --link layer takes from the image below: --chown names
                uid, gid = await trio.to_thread.run_sync(
                    lambda: resolve_chown(action.chown or "", self.view(), where)
                )
                inputs["owner"] = f"{uid}:{gid}"
            if action.from_ is not None and action.from_.context is not None:
                inputs["from"] = await trio.to_thread.run_sync(
                    self.context_digest, action, where, self.work.named[action.from_.context]
                )
            elif action.from_ is not None:
                inputs["from"] = await self.source_key(action.from_, where)
            elif local.sources:
                inputs["context"] = await trio.to_thread.run_sync(
                    self.context_digest, local, where
                )
        parent = self.key
        if isinstance(action, CopyStep) and action.link:
            # BuildKit: "your files remain independent on their own layer and don't get
            # invalidated when commands on previous layers are changed"
            parent = base_key(None, str(self.stage.platform))
        return step_key(parent, action, inputs)

    def after_link(self, action: Step, key: str | None) -> str | None:
        """The key a ``--link`` step hands on: its own key does not depend on the state
        below (see ``cache_key``), but the state after it does."""
        if key is None or not (isinstance(action, CopyStep) and action.link):
            return None
        return step_key(self.key, action, {"linked": key})

    async def source_key(self, ref: StageBase, where: Location) -> str:
        """The key of what ``COPY --from`` reads: a stage's final key, or an image's."""
        if ref.stage is not None:
            return self.deps[ref.stage].key
        platform = str(self.stage.platform)
        if ref.context is not None:
            digest = await trio.to_thread.run_sync(self.named_digest, ref.context, ".", where)
            return base_key(f"context:{digest}", platform)
        if ref.is_scratch:
            return base_key(None, platform)
        assert ref.image is not None
        image = await self.image(ref.image, where)
        return base_key(image.manifest.digest, platform)

    async def source_layers(self, ref: StageBase, where: Location) -> tuple[Layer, ...]:
        """The layers of what ``--from``/``from=`` names: a stage's, an image's, none."""
        if ref.context is not None:  # a directory: read through work.named, not as layers
            raise ContextError(f"{self.describe(ref)}: a directory build context cannot be "
                               "read as an image here", where)
        if ref.stage is not None:
            return self.deps[ref.stage].layers
        if ref.is_scratch:
            return ()
        assert ref.image is not None
        image = await self.image(ref.image, where)
        return tuple(Layer(d, i) for d, i in zip(image.layers, image.diff_ids, strict=True))

    def mount_env(self, where: Location, scratch: Path | None = None) -> MountEnv:
        """What this stage's ``RUN --mount``s read (``engine/run_mounts.py``); ``scratch``:
        the step's own directory (None while only keys are computed)."""
        work = self.work
        return MountEnv(self, work.trees, work.context, work.context_layer, work.cache.hasher,
                        work.work_dir, self.seams.snapshotter, where, scratch, work.named,
                        work.sources, caches=work.cache_mounts)

    def context_digest(self, action: CopyStep, where: Location,
                       context: BuildContext | None = None) -> str:
        """The digest of the context files the step takes (ADD: the archive files
        themselves, before unpacking), through the same walk COPY makes; ``context``: a
        named directory context instead of the build's."""
        keyword = "ADD" if action.is_add else "COPY"
        try:
            take = context_parents_sources if action.parents else context_sources
            sources = take(context or self.work.context, action.sources, action.excludes,
                           where)
            return self.work.cache.hasher.digest(sources)
        except ContextError as exc:
            if exc.message.startswith(keyword):
                raise
            raise ContextError(f"{keyword}: {exc.message}", where) from exc

    def view(self) -> RootfsView:
        return self.work.trees.view(self.layers)

    async def image(self, ref: str, where: Location) -> StoredImage:
        """A base or ``--from`` image of this stage's platform, its error located."""
        try:
            return await self.seams.base_images.get(ref, self.stage.platform)
        except RootbuildError as exc:
            if exc.location is not None:
                raise
            raise type(exc)(exc.message, where) from exc

    def network(self, action: RunStep) -> str:
        """RUN's network: its own ``--network`` when host or none, else the build's."""
        if action.network in ("host", "none"):
            return action.network
        # resolved by build() (engine/network.py); never "" here, but never host either
        return self.env.options.network or default_network(self.env.options.untrusted)

    async def run_command(
        self, action: RunStep, where: Location, handle: int
    ) -> Layer | None:
        """Run a RUN step in the sandbox over the overlay of this stage's layers."""
        options, work = self.env.options, self.work
        # RUN --mount types without a MountType never get here: the plan refused them
        # (engine/planning.py SUPPORTED); entitlements were checked with the plan
        snapshotter = self.seams.snapshotter()
        lowers = await trio.to_thread.run_sync(
            lambda: tuple(LowerLayer(*work.trees.lower(layer)) for layer in self.layers)
        )
        mark("b.lowers")
        disk_limit, inode_limit = work.disk.left(*limits_of(options))
        if disk_limit == 0 or inode_limit == 0:
            spent = "disk" if disk_limit == 0 else "inodes"
            raise StepError(f"RUN: {limit_message(options, spent)} by the build's earlier "
                            "steps", where)
        scratch = Path(tempfile.mkdtemp(prefix="run-", dir=work.work_dir))
        env = dict(item.partition("=")[::2] for item in action.env)
        held = contextlib.AsyncExitStack()  # what the mounts keep until the step ends
        mounts = await prepare_mounts(action.mounts, self.mount_env(where, scratch), held)
        try:  # held is closed on every path from here
            spec = StepSpec(
                argv=action.command,
                rootfs=OverlayRoot(lowers, scratch / "overlay", snapshotter),
                scratch=scratch / "sandbox",
                # the step's own variables win over a mount's (BuildKit: SSH_AUTH_SOCK)
                env=mounts.env | env, user=action.user, workdir=action.workdir or "/",
                network=self.network(action), proc=options.proc, untrusted=options.untrusted,
                timeout=options.step_timeout, mounts=mounts.mounts,
                binds=heredoc_binds(action.heredoc_files, scratch / "heredocs"),
                secret_env=mounts.secret_env, insecure=action.security == "insecure",
                devices=host_devices(action.devices), limits=options.step_limits(),
                **options.run_flags().step_fields(),  # --add-host, --shm-size, --ulimit
                disk_limit=disk_limit, inode_limit=inode_limit,
            )
            mask = mask_of(mounts.mounts, mounts.secret_env)  # no secret value in the output
            mark("b.spec")
            result = await self.seams.executor.run(
                spec, mask.wrap(lambda line: work.progress.output(handle, line))
            )
        except (StepError, SandboxError) as exc:
            if exc.location is not None or exc.message.startswith("RUN"):
                raise
            raise type(exc)(f"RUN: {exc.message}", where) from exc
        finally:
            await held.aclose()
        for warning in result.warnings:
            work.warn_once(warning)
        command = " ".join(action.command)
        if result.limit:  # sandbox/limits.py: the step was killed for it
            raise StepError(f'RUN: process "{command}" was killed: {result.limit}', where)
        if result.limit_exceeded:
            raise StepError(f'RUN: {limit_message(options, result.limit_exceeded)}: process '
                            f'"{command}" (exit code {result.exit_code})', where)
        if result.timed_out:
            raise StepTimeout(
                f'RUN: process "{command}" timed out after {options.step_timeout:g}s', where
            )
        if result.exit_code != 0:
            hint = ""
            if work.idmap.mode == "single":  # the likeliest cause of a chown/USER failure
                hint = (
                    " (note: RUN maps only root to your user, so chown to other ids and "
                    "USER switches fail; " + work.idmap.warning.split("; fix: ")[-1] + ")"
                )
            raise StepError(
                f'RUN: process "{command}" did not complete successfully: '
                f"exit code: {result.exit_code}{hint}", where,
            )
        if result.layer is None:
            raise SandboxError("RUN: the sandbox returned no layer for a successful step",
                               where)
        work.disk.add(result.layer.meta)
        mark("b.result")
        adopted = await trio.to_thread.run_sync(
            work.trees.adopt, result.layer.tree, result.layer.meta, options.compression,
            options.source_date_epoch,
        )
        mark("b.adopt")
        return adopted

    def workdir_entries(self, action: WorkdirStep, where: Location) -> list[TarEntry] | None:
        view = self.view()
        target = view.realpath(action.path).strip("/")
        found = view.lookup(target, follow=True) if target else None
        if not target or (found is not None and found.is_dir):
            return None
        owner = resolve_chown(action.user, view, where) if action.user else (0, 0)
        plan = CopyPlan(
            sources=[_empty_dir_source()], dest="/" + target + "/", owner=owner, chmod=None,
            now=self.env.clock.epoch_now,
        )
        return copy_entries(plan, view, where)

    async def copy_entries(self, action: CopyStep, where: Location) -> list[TarEntry]:
        keyword = "ADD" if action.is_add else "COPY"
        remote_sources: list[Source] = []
        remote_owned = False
        remote = [src for src in action.sources if src.startswith(REMOTE_PREFIXES)]
        for src in remote:  # only ADD gets here with one: the evaluator refuses COPY's
            found, owned = await self.seams.remote.sources(
                src, checksum=action.checksum, keep_git_dir=action.keep_git_dir,
                unpack=action.unpack, excludes=action.excludes, work_dir=self.work.work_dir,
                where=where, now=self.env.clock.epoch_now,
            )
            remote_sources += found
            remote_owned = remote_owned or owned
        if remote:
            action = dataclasses.replace(
                action, sources=tuple(s for s in action.sources if s not in remote)
            )
        source_view: RootfsView | None = None
        what = ""
        named = None
        if action.from_ is not None and action.from_.context is not None:
            named = self.work.named[action.from_.context]
        elif action.from_ is not None:
            source_view = await self.from_view(action.from_, where)
            what = self.describe(action.from_)
        ws, epoch_now = self.work, self.env.clock.epoch_now

        def work() -> list[TarEntry]:
            view = self.view()
            sources: list[Source]
            keep_owner = False
            if source_view is not None:
                from_image = image_parents_sources if action.parents else image_sources
                sources = from_image(source_view, action.sources, action.excludes, where, what)
                keep_owner = True
            else:
                try:
                    if action.is_add:
                        sources, keep_owner = add_archive_or_file(
                            ws.context, action.sources, action.excludes, where,
                            ws.work_dir, unpack=action.unpack,
                        )
                    else:
                        take = context_parents_sources if action.parents else context_sources
                        sources = take(named or ws.context, action.sources, action.excludes,
                                       where)
                except ContextError as exc:
                    if exc.message.startswith(keyword):
                        raise
                    raise ContextError(f"{keyword}: {exc.message}", where) from exc
            sources += [heredoc_source(h.name, h.content, epoch_now)
                        for h in action.heredocs]
            sources = remote_sources + sources
            keep_owner = keep_owner or remote_owned
            plan = CopyPlan(
                sources=sources, dest=action.dest,
                owner=resolve_chown(action.chown, view, where) if action.chown else None,
                chmod=parse_chmod(action.chmod, where), now=epoch_now,
                keep_owner=keep_owner, link=action.link,
            )
            return copy_entries(plan, view, where)

        return await trio.to_thread.run_sync(work)

    async def from_view(self, ref: StageBase, where: Location) -> RootfsView:
        layers = await self.source_layers(ref, where)
        return await trio.to_thread.run_sync(self.work.trees.view, layers)

    def named_digest(self, name: str, pattern: str, where: Location) -> str:
        """The digest of ``pattern`` in the directory context ``name``."""
        sources = context_sources(self.work.named[name], [pattern], (), where)
        return self.work.cache.hasher.digest(sources)

    def named_layer(self, name: str, where: Location) -> Layer | None:
        """A directory context as a base: one layer of its files (None when empty)."""
        sources = context_sources(self.work.named[name], ["."], (), where)
        plan = CopyPlan(sources=sources, dest="/", owner=None, chmod=None,
                        now=self.env.clock.epoch_now)
        entries = copy_entries(plan, self.work.trees.view(()), where)
        if not entries:
            return None
        options = self.env.options
        return self.work.trees.commit(entries, options.compression, options.source_date_epoch)

    def describe(self, ref: StageBase) -> str:
        """How errors name a ``--from`` source: the word the Dockerfile wrote for it."""
        return next((raw for raw, found in self.stage.refs if found == ref), str(ref))


def _empty_dir_source() -> Source:
    def items() -> Iterator[SourceItem]:
        yield SourceItem(rel="", kind="dir", mode=0o755, mtime=0)

    return Source(name=".", is_dir=True, items=items)


def _stamped(state: StageState, created: float, epoch: int | None) -> StageState:
    """The step's history entry with the time the cached step first ran (BuildKit keeps
    cache records' times, so an unchanged rebuild is the same image); SOURCE_DATE_EPOCH
    wins."""
    history = state.config.history
    if not history or epoch is not None:
        return state
    when = format_timestamp(datetime.fromtimestamp(created, UTC))
    last = dataclasses.replace(history[-1], created=when)
    config = dataclasses.replace(state.config, history=(*history[:-1], last))
    return dataclasses.replace(state, config=config)


def _mark_last_empty(state: StageState) -> StageState:
    history = state.config.history
    if not history:
        return state
    last = dataclasses.replace(history[-1], empty_layer=True)
    config = dataclasses.replace(state.config, history=(*history[:-1], last))
    return dataclasses.replace(state, config=config)


