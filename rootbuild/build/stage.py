"""One stage of a build: its base, then each step, each one looked up in the step cache
before it is carried out (RUN in the sandbox, COPY/ADD/WORKDIR as a layer written here).

Rules:
- The pure evaluator decides what a step is (``stages.evaluate.apply``); this module only
  carries it out. Config changes are always derived again; only layers come from the cache.
- A step that can make a layer has a cache key (``cache.keys``) chained from the stage's
  base; a hit reuses the stored layer (or the recorded "no layer") without running
  anything, and progress says ``CACHED`` as BuildKit does.
- Blocking work runs in worker threads so independent stages really overlap.
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import trio

from rootbuild.build.archive_source import add_archive_or_file
from rootbuild.build.copy import (
    CopyPlan,
    Source,
    SourceItem,
    context_sources,
    copy_entries,
    heredoc_source,
    image_sources,
    parse_chmod,
    resolve_chown,
)
from rootbuild.build.layers import Layer
from rootbuild.cache.entry import CacheEntry
from rootbuild.cache.keys import Scalar, base_key, chain_key, step_key
from rootbuild.dockerfile.instructions import Instruction, StageSpec
from rootbuild.dockerfile.parser import parse_instruction
from rootbuild.errors import (
    ContextError,
    Location,
    RootbuildError,
    SandboxError,
    StepError,
)
from rootbuild.image.layer_write import TarEntry
from rootbuild.image.rootfs import RootfsView
from rootbuild.sandbox.spec import OverlayRoot, StepSpec
from rootbuild.snapshot import LowerLayer
from rootbuild.stages.config import ImageConfig, format_timestamp
from rootbuild.stages.evaluate import (
    CopyStep,
    MetadataStep,
    RunStep,
    StageState,
    Step,
    WorkdirStep,
    apply,
    begin_stage,
    onbuild_triggers,
)
from rootbuild.stages.graph import StageBase
from rootbuild.stages.plan import StagePlan

if TYPE_CHECKING:
    from rootbuild.build.builder import BuildOptions, _Build

_REMOTE = ("http://", "https://", "git@", "git://", "ssh://")


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

    def __init__(self, build: _Build, stage: StagePlan, deps: Mapping[int, StageResult]):
        self.build = build
        self.stage = stage
        self.deps = deps
        self.layers: tuple[Layer, ...] = ()
        self.key = ""  # the cache key of the state reached so far
        self.total = len(stage.instructions) + 1
        self.use_cache = build.cache.enabled_for(stage.index, stage.name)

    def label(self, number: int, text: str) -> str:
        short = text if len(text) <= 120 else text[:117] + "..."
        return f"[{self.stage.display_name} {number}/{self.total}] {short}"

    async def run(self) -> StageResult:
        b = self.build
        step = b.progress.start(self.label(1, self.stage.from_.original))
        try:
            base_config, parent = await self.base()
        except RootbuildError as exc:
            b.progress.failed(step, str(exc))
            raise
        b.progress.done(step)
        spec = StageSpec(self.stage.index, self.stage.from_, self.stage.instructions)
        state = begin_stage(
            base_config, spec, dict(b.plan.global_args), b.options.build_args, b.predefined,
            escape=b.escape, parent=parent.state if parent else None,
        )
        for trigger in onbuild_triggers(base_config):
            instr = parse_instruction(trigger, self.stage.from_.location, b.escape)
            state = await self.step(state, instr, f"ONBUILD {trigger}", None)
        for number, instr in enumerate(self.stage.instructions, start=2):
            state = await self.step(state, instr, instr.original, number)
        return StageResult(state, self.layers, self.key)

    async def base(self) -> tuple[ImageConfig, StageResult | None]:
        base = self.stage.base
        if base.stage is not None:
            parent = self.deps[base.stage]
            self.layers, self.key = parent.layers, parent.key
            return parent.config, parent
        assert base.image is not None
        platform = str(self.stage.platform)
        if base.is_scratch:
            self.key = base_key(None, platform)
            return ImageConfig.scratch(self.stage.platform), None
        image = await self.build.image(base.image, self.stage.platform, self.stage.from_.location)
        self.layers = tuple(Layer(d, i) for d, i in zip(image.layers, image.diff_ids, strict=True))
        self.key = base_key(image.manifest.digest, platform)
        return ImageConfig.from_oci(image.config_json), None

    async def step(
        self, state: StageState, instr: Instruction, text: str, number: int | None
    ) -> StageState:
        b = self.build
        handle = b.progress.start(self.label(number, text) if number else f"[{text}]")
        try:
            state, action = apply(state, instr, now=b.now)
            state, cached = await self.execute(state, action, instr, text, handle)
        except RootbuildError as exc:
            # every error of a step says which instruction it was
            error = exc if exc.location else type(exc)(exc.message, instr.location)
            b.progress.failed(handle, str(error))
            if error is exc:
                raise
            raise error from exc
        b.progress.done(handle, cached=cached)
        return state

    async def execute(
        self, state: StageState, action: Step, instr: Instruction, text: str, handle: int
    ) -> tuple[StageState, bool]:
        """Carry out one step (or take it from the cache); True when it was cached."""
        if isinstance(action, MetadataStep):
            return state, False
        cache = self.build.cache
        key = await self.cache_key(action, instr.location)
        if key is not None and self.use_cache:
            entry = await cache.lookup(key, self.build.staging)
            if entry is not None:
                cache.hit(self.stage.index, entry)
                self.key = chain_key(key, entry.diff_id)
                layer = Layer(entry.layer, entry.diff_id) if entry.layer and entry.diff_id \
                    else None
                state = _stamped(state, entry.created, self.build.options)
                return self.with_layer(state, layer), True
        layer = await self.produce(action, instr.location, handle)
        if key is not None:
            cache.add(self.stage.index, CacheEntry(
                key=key, layer=layer.descriptor if layer else None,
                diff_id=layer.diff_id if layer else None, description=text,
                created=self.build.started,
            ))
            self.key = chain_key(key, layer.diff_id if layer else None)
        return self.with_layer(state, layer), False

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
        if entries is None:
            return None
        return await trio.to_thread.run_sync(
            self.build.trees.commit, entries, self.build.options.compression,
            self.build.options.source_date_epoch,
        )

    async def cache_key(self, action: Step, where: Location) -> str | None:
        """The step's cache key; None for a step the cache leaves alone (one that is
        refused anyway: remote sources, ``--parents``)."""
        b = self.build
        assert not isinstance(action, MetadataStep)
        inputs: dict[str, Scalar] = {
            "compression": b.options.compression,
            "epoch": b.options.source_date_epoch,
        }
        if isinstance(action, RunStep):
            network = action.network if action.network in ("host", "none") \
                else b.options.network
            inputs |= {"network": network, "idmap": b.idmap.mode}
        elif isinstance(action, CopyStep):
            if action.parents or any(src.startswith(_REMOTE) for src in action.sources):
                return None
            if action.from_ is not None:
                inputs["from"] = await self.source_key(self.stage.resolve(action.from_), where)
            elif action.sources:
                inputs["context"] = await trio.to_thread.run_sync(
                    self.context_digest, action, where
                )
        return step_key(self.key, action, inputs)

    async def source_key(self, ref: StageBase, where: Location) -> str:
        """The key of what ``COPY --from`` reads: a stage's final key, or an image's."""
        if ref.stage is not None:
            return self.deps[ref.stage].key
        platform = str(self.stage.platform)
        if ref.is_scratch:
            return base_key(None, platform)
        assert ref.image is not None
        image = await self.build.image(ref.image, self.stage.platform, where)
        return base_key(image.manifest.digest, platform)

    def context_digest(self, action: CopyStep, where: Location) -> str:
        """The digest of the context files the step takes (ADD: the archive files
        themselves, before unpacking), through the same walk COPY makes."""
        keyword = "ADD" if action.is_add else "COPY"
        try:
            sources = context_sources(
                self.build.context, action.sources, action.excludes, where
            )
            return self.build.cache.hasher.digest(sources)
        except ContextError as exc:
            if exc.message.startswith(keyword):
                raise
            raise ContextError(f"{keyword}: {exc.message}", where) from exc

    def view(self) -> RootfsView:
        return self.build.trees.view(self.layers)

    async def run_command(
        self, action: RunStep, where: Location, handle: int
    ) -> Layer | None:
        """Run a RUN step in the sandbox over the overlay of this stage's layers."""
        b = self.build
        if action.mounts:
            kinds = ", ".join(sorted({m.type for m in action.mounts}))
            raise StepError(f"RUN --mount=type={kinds}: not supported yet", where)
        if action.heredoc_files:
            raise StepError("RUN with a #! heredoc: not supported yet", where)
        if action.security == "insecure":
            raise StepError("RUN --security=insecure: refused (rootbuild has no such mode)",
                            where)
        lowers = await trio.to_thread.run_sync(
            lambda: tuple(LowerLayer(*b.trees.lower(layer)) for layer in self.layers)
        )
        scratch = Path(tempfile.mkdtemp(prefix="run-", dir=b.work_dir))
        network = action.network if action.network in ("host", "none") else b.options.network
        env = dict(item.partition("=")[::2] for item in action.env)
        spec = StepSpec(
            argv=action.command,
            rootfs=OverlayRoot(lowers, scratch / "overlay", b.snapshotter.name),
            scratch=scratch / "sandbox",
            env=env, user=action.user, workdir=action.workdir or "/", network=network,
            proc=b.options.proc, untrusted=b.options.untrusted,
            timeout=b.options.step_timeout,
        )
        try:
            result = await b.executor.run(spec, lambda line: b.progress.output(handle, line))
        except (StepError, SandboxError) as exc:
            if exc.location is not None or exc.message.startswith("RUN"):
                raise
            raise type(exc)(f"RUN: {exc.message}", where) from exc
        for warning in result.warnings:
            b.warn_once(warning)
        command = " ".join(action.command)
        if result.timed_out:
            raise StepError(
                f'RUN: process "{command}" timed out after {b.options.step_timeout:g}s', where
            )
        if result.exit_code != 0:
            hint = ""
            if b.idmap.mode == "single":  # the likeliest cause of a chown/USER failure
                hint = (
                    " (note: RUN maps only root to your user, so chown to other ids and "
                    "USER switches fail; " + b.idmap.warning.split("; fix: ")[-1] + ")"
                )
            raise StepError(
                f'RUN: process "{command}" did not complete successfully: '
                f"exit code: {result.exit_code}{hint}", where,
            )
        if result.layer is None:
            raise SandboxError("RUN: the sandbox returned no layer for a successful step",
                               where)
        return await trio.to_thread.run_sync(
            b.trees.adopt, result.layer.tree, result.layer.meta, b.options.compression,
            b.options.source_date_epoch,
        )

    def workdir_entries(self, action: WorkdirStep, where: Location) -> list[TarEntry] | None:
        view = self.view()
        target = view.realpath(action.path).strip("/")
        found = view.lookup(target, follow=True) if target else None
        if not target or (found is not None and found.is_dir):
            return None
        owner = resolve_chown(action.user, view, where) if action.user else (0, 0)
        plan = CopyPlan(
            sources=[_empty_dir_source()], dest="/" + target + "/", owner=owner, chmod=None,
            now=self.build.epoch_now,
        )
        return copy_entries(plan, view, where)

    async def copy_entries(self, action: CopyStep, where: Location) -> list[TarEntry]:
        keyword = "ADD" if action.is_add else "COPY"
        for src in action.sources:
            if src.startswith(_REMOTE):
                raise ContextError(
                    f'{keyword}: source "{src}": remote sources are not supported yet', where
                )
        if action.parents:
            raise ContextError(f"{keyword} --parents: not supported yet", where)
        source_view: RootfsView | None = None
        what = ""
        if action.from_ is not None:
            ref = self.stage.resolve(action.from_)
            source_view, what = await self.from_view(ref, where), action.from_
        build = self.build

        def work() -> list[TarEntry]:
            view = self.view()
            sources: list[Source]
            keep_owner = False
            if source_view is not None:
                sources = image_sources(source_view, action.sources, action.excludes, where, what)
                keep_owner = True
            else:
                try:
                    if action.is_add:
                        sources, keep_owner = add_archive_or_file(
                            build.context, action.sources, action.excludes, where,
                            build.work_dir,
                        )
                    else:
                        sources = context_sources(
                            build.context, action.sources, action.excludes, where
                        )
                except ContextError as exc:
                    if exc.message.startswith(keyword):
                        raise
                    raise ContextError(f"{keyword}: {exc.message}", where) from exc
            sources += [heredoc_source(h.name, h.content, build.epoch_now)
                        for h in action.heredocs]
            plan = CopyPlan(
                sources=sources, dest=action.dest,
                owner=resolve_chown(action.chown, view, where) if action.chown else None,
                chmod=parse_chmod(action.chmod, where), now=build.epoch_now,
                keep_owner=keep_owner,
            )
            return copy_entries(plan, view, where)

        return await trio.to_thread.run_sync(work)

    async def from_view(self, ref: StageBase, where: Location) -> RootfsView:
        if ref.stage is not None:
            layers = self.deps[ref.stage].layers
        elif ref.is_scratch:
            layers = ()
        else:
            assert ref.image is not None
            image = await self.build.image(ref.image, self.stage.platform, where)
            layers = tuple(Layer(d, i) for d, i in zip(image.layers, image.diff_ids, strict=True))
        return await trio.to_thread.run_sync(self.build.trees.view, layers)



def _empty_dir_source() -> Source:
    def items() -> Iterator[SourceItem]:
        yield SourceItem(rel="", kind="dir", mode=0o755, mtime=0)

    return Source(name=".", is_dir=True, items=items)


def _stamped(state: StageState, created: float, options: BuildOptions) -> StageState:
    """The step's history entry with the time the cached step first ran (BuildKit keeps
    cache records' times, so an unchanged rebuild is the same image); SOURCE_DATE_EPOCH
    wins."""
    history = state.config.history
    if not history or options.source_date_epoch is not None:
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


