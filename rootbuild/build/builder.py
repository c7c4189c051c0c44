"""One build: Dockerfile → plan → stages run by the scheduler → image in the store → outputs.

Rules:
- The pure pieces decide (``stages.plan``, ``stages.evaluate.apply``); this module only
  carries their decisions out: resolves bases, produces layers, writes the image.
- Blocking work (extraction, tar writing, export) runs in worker threads so independent
  stages really overlap.
- Everything a build writes is staged; only a successful build commits blobs, publishes
  the trees of its new layers and then tags, so a failed build leaves the store's images
  and blobs as they were. Base images imported along the way stay, as a pull would, and
  so do the extracted trees of base layers (a shared cache under ``layers/``).
- The store's shared lock is held for the whole build (``prune`` takes it exclusively).
"""

from __future__ import annotations

import dataclasses
import os
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

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
from rootbuild.build.layers import Compression, Layer, LayerTrees
from rootbuild.context import BuildContext, find_dockerfile, load_ignore
from rootbuild.dockerfile.instructions import Instruction, StageSpec
from rootbuild.dockerfile.parser import parse_dockerfile, parse_instruction
from rootbuild.errors import (
    ContextError,
    ImageError,
    Location,
    RegistryError,
    RootbuildError,
    SandboxError,
    StepError,
    UsageError,
)
from rootbuild.fuse_overlay.snapshotter import choose_snapshotter
from rootbuild.image.archives import export_image, import_image
from rootbuild.image.layer_write import TarEntry
from rootbuild.image.oci import (
    OCI_CONFIG,
    OCI_MANIFEST,
    StoredImage,
    canonical_json,
    config_platform,
)
from rootbuild.image.refs import ImageRef, OutputRef, parse_base_ref
from rootbuild.image.rootfs import RootfsView, materialize
from rootbuild.image.store import Staging, Store, force_rmtree
from rootbuild.platform import Platform, host_platform
from rootbuild.progress import Progress
from rootbuild.registry.client import TransportOptions
from rootbuild.registry.pull import pull
from rootbuild.registry.push import push
from rootbuild.sandbox.idmap import read_host_plan
from rootbuild.sandbox.run import run_step
from rootbuild.sandbox.spec import OverlayRoot, StepSpec
from rootbuild.stages.args import predefined_args, unused_build_args, unused_build_args_warning
from rootbuild.stages.config import (
    ImageConfig,
    format_timestamp,
    timestamp_from_epoch,
)
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
from rootbuild.stages.plan import BuildPlan, StagePlan, plan
from rootbuild.stages.scheduler import run_plan


@dataclass(frozen=True)
class BuildOptions:
    context_dir: Path
    dockerfile: str | None = None
    dockerfile_text: str | None = None  # `-f -`: the Dockerfile read from stdin
    tags: tuple[str, ...] = ()
    build_args: Mapping[str, str] = field(default_factory=dict)
    target: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    no_cache: bool = False  # there is no step cache yet: every build runs every step
    outputs: tuple[OutputRef, ...] = ()
    jobs: int = 1
    compression: Compression = "gzip"
    target_platform: Platform = field(default_factory=host_platform)
    source_date_epoch: int | None = None
    network: str = "host"  # RUN's network unless RUN --network says otherwise
    proc: str = "fresh"  # "host-bind": the explicit, weaker /proc fallback
    untrusted: bool = False  # refuse every weakening (host-bind /proc, ...)
    step_timeout: float | None = None  # seconds a RUN step may take
    transport: TransportOptions = field(default_factory=TransportOptions)  # registries
    push: bool = False  # push every -t name after the build
    docker_format: bool = False  # push with Docker schema 2 media types


@dataclass(frozen=True)
class StageResult:
    state: StageState
    layers: tuple[Layer, ...]

    @property
    def config(self) -> ImageConfig:
        return self.state.config


@dataclass(frozen=True)
class BuildResult:
    image_id: str  # the config digest, as `docker build` reports it
    image: StoredImage
    pushed: tuple[tuple[str, str], ...] = ()  # (reference, manifest digest) per push


class _Stage:
    """Runs the steps of one stage."""

    def __init__(self, build: _Build, stage: StagePlan, deps: Mapping[int, StageResult]):
        self.build = build
        self.stage = stage
        self.deps = deps
        self.layers: tuple[Layer, ...] = ()
        self.total = len(stage.instructions) + 1

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
        return StageResult(state, self.layers)

    async def base(self) -> tuple[ImageConfig, StageResult | None]:
        base = self.stage.base
        if base.stage is not None:
            parent = self.deps[base.stage]
            self.layers = parent.layers
            return parent.config, parent
        assert base.image is not None
        if base.is_scratch:
            return ImageConfig.scratch(self.stage.platform), None
        image = await self.build.image(base.image, self.stage.platform, self.stage.from_.location)
        self.layers = tuple(Layer(d, i) for d, i in zip(image.layers, image.diff_ids, strict=True))
        return ImageConfig.from_oci(image.config_json), None

    async def step(
        self, state: StageState, instr: Instruction, text: str, number: int | None
    ) -> StageState:
        b = self.build
        handle = b.progress.start(self.label(number, text) if number else f"[{text}]")
        try:
            state, action = apply(state, instr, now=b.now)
            state = await self.execute(state, action, instr, handle)
        except RootbuildError as exc:
            # every error of a step says which instruction it was
            error = exc if exc.location else type(exc)(exc.message, instr.location)
            b.progress.failed(handle, str(error))
            if error is exc:
                raise
            raise error from exc
        b.progress.done(handle)
        return state

    async def execute(
        self, state: StageState, action: Step, instr: Instruction, handle: int
    ) -> StageState:
        if isinstance(action, MetadataStep):
            return state
        if isinstance(action, RunStep):
            layer = await self.run_command(action, instr.location, handle)
            if layer is None:
                return _mark_last_empty(state)
            self.layers = (*self.layers, layer)
            return dataclasses.replace(state, config=state.config.with_layer(layer.diff_id))
        if isinstance(action, WorkdirStep):
            entries = await trio.to_thread.run_sync(self.workdir_entries, action, instr.location)
        else:
            assert isinstance(action, CopyStep)
            entries = await self.copy_entries(action, instr.location)
        if entries is None:  # nothing changed: no layer, as BuildKit drops empty diffs
            return _mark_last_empty(state)
        layer = await trio.to_thread.run_sync(
            self.build.trees.commit, entries, self.build.options.compression,
            self.build.options.source_date_epoch,
        )
        self.layers = (*self.layers, layer)
        return dataclasses.replace(state, config=state.config.with_layer(layer.diff_id))

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
            lambda: tuple(b.trees.lower(layer) for layer in self.layers)
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
            result = await run_step(spec, lambda line: b.progress.output(handle, line))
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
            if src.startswith(("http://", "https://", "git@", "git://", "ssh://")):
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


def _platform_of(image: StoredImage) -> Platform | None:
    """The image's platform as its config states it, normalised like ``--platform``."""
    declared = config_platform(image.config_json)
    return Platform.parse(str(declared)) if declared is not None else None


def _empty_dir_source() -> Source:
    def items() -> Iterator[SourceItem]:
        yield SourceItem(rel="", kind="dir", mode=0o755, mtime=0)

    return Source(name=".", is_dir=True, items=items)


def _mark_last_empty(state: StageState) -> StageState:
    history = state.config.history
    if not history:
        return state
    last = dataclasses.replace(history[-1], empty_layer=True)
    config = dataclasses.replace(state.config, history=(*history[:-1], last))
    return dataclasses.replace(state, config=config)


class _Build:
    def __init__(
        self, options: BuildOptions, store: Store, staging: Staging, progress: Progress,
        context: BuildContext, plan: BuildPlan, escape: str, work_dir: Path,
    ) -> None:
        self.options = options
        self.store = store
        self.progress = progress
        self.context = context
        self.plan = plan
        self.escape = escape
        self.work_dir = work_dir
        self.trees = LayerTrees(store, staging)
        epoch = options.source_date_epoch
        self.epoch_now = epoch if epoch is not None else int(time.time())
        self.now = (
            timestamp_from_epoch(epoch) if epoch is not None
            else format_timestamp(datetime.now(UTC))
        )
        self.predefined = predefined_args(
            plan.target_platform, plan.build_platform,
            target_stage=plan.target_stage.name or None,
        )
        self._images: dict[tuple[str, str], StoredImage] = {}
        self._image_lock = trio.Lock()
        self._warned: set[str] = set()
        self.snapshotter = choose_snapshotter()
        self.idmap = read_host_plan()

    def warn_once(self, message: str) -> None:
        if message not in self._warned:
            self._warned.add(message)
            self.progress.warn(message)

    async def image(self, text: str, platform: Platform, where: Location) -> StoredImage:
        """A base image (or ``COPY --from`` image), imported once per build."""
        key = (text, str(platform))
        async with self._image_lock:
            if key not in self._images:
                try:
                    ref = parse_base_ref(text)
                except UsageError as exc:
                    raise ImageError(exc.message, where) from exc
                try:
                    self._images[key] = await self._base_image(ref, text, platform)
                except RootbuildError as exc:
                    if exc.location is None:
                        raise type(exc)(exc.message, where) from exc
                    raise
            return self._images[key]

    async def _base_image(self, ref: ImageRef, text: str, platform: Platform) -> StoredImage:
        """A name in the store wins (as with `docker build` and local images); any other
        name is pulled from its registry; archives and layouts are imported."""
        if ref.transport == "store":
            assert ref.name is not None
            local = await trio.to_thread.run_sync(self.store.resolve, ref.name)
            if local is not None and _platform_of(local) == platform:
                return local
            handle = self.progress.start(f"pulling {text}")
            try:
                image = await pull(
                    self.store, text, platform, transport=self.options.transport,
                    progress=lambda line: self.progress.output(handle, line),
                )
            except RootbuildError as exc:
                have = "for another platform only" if local is not None else "not in the store"
                error = RegistryError(
                    f"pull {text} for {platform} ({have}): "
                    f"{exc.message.removeprefix(f'pull {text}: ')}"
                )
                self.progress.failed(handle, str(error))
                raise error from exc
            self.progress.done(handle)
            return image
        return await trio.to_thread.run_sync(import_image, self.store, ref, platform)

    async def stage(self, stage: StagePlan, deps: Mapping[int, StageResult]) -> StageResult:
        return await _Stage(self, stage, deps).run()


def _read_dockerfile(options: BuildOptions) -> tuple[str, str, Path | None]:
    """(text, display name, path) of the Dockerfile."""
    if options.dockerfile_text is not None:
        return options.dockerfile_text, "Dockerfile", None
    path = find_dockerfile(options.context_dir, options.dockerfile)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ContextError(f"read Dockerfile {path}: {exc.strerror}") from exc
    return data.decode("utf-8", "surrogateescape"), path.name, path


async def build(options: BuildOptions, store: Store, progress: Progress) -> BuildResult:
    """Run one build and return the image it stored (tagged with ``options.tags``)."""
    text, name, path = _read_dockerfile(options)
    dockerfile = parse_dockerfile(text, name)
    if dockerfile.directives.syntax:
        progress.note(
            f"# syntax={dockerfile.directives.syntax} ignored: rootbuild has its own frontend"
        )
    for warning in dockerfile.warnings:
        progress.warn(warning)
    the_plan = plan(
        dockerfile, target=options.target, build_args=options.build_args,
        target_platform=options.target_platform, build_platform=host_platform(),
    )
    for warning in the_plan.warnings:
        progress.warn(warning)
    ignore = load_ignore(options.context_dir, path or options.context_dir / "Dockerfile")
    with store.shared_lock(), BuildContext.open(options.context_dir, ignore) as context, \
            store.stage() as staging:
        work_dir = store.staging_dir()
        runner = _Build(
            options, store, staging, progress, context, the_plan,
            dockerfile.directives.escape, work_dir,
        )
        try:
            results = await run_plan(the_plan, runner.stage, jobs=options.jobs)
            final = results[the_plan.target]
            image = await trio.to_thread.run_sync(
                _commit_image, runner, staging, final, options
            )
        except BaseException:
            runner.trees.discard()
            raise
        finally:
            _rmtree(work_dir)
        _warn_unused_args(the_plan, results, options, progress)
        pushed: list[tuple[str, str]] = []
        for output in options.outputs:
            handle = progress.start(f"exporting to {output.text}")
            if output.transport == "docker":
                digest = await _push(store, image, output.path, options, progress, handle)
                pushed.append((output.path, digest))
            else:
                await trio.to_thread.run_sync(_export, runner, store, image, final, output)
            progress.done(handle)
        if options.push:
            for tag in options.tags:
                handle = progress.start(f"pushing {tag}")
                pushed.append((tag, await _push(store, image, tag, options, progress, handle)))
                progress.done(handle)
    return BuildResult(image.config.digest, image, tuple(pushed))


async def _push(
    store: Store, image: StoredImage, ref: str, options: BuildOptions, progress: Progress,
    handle: int,
) -> str:
    digest = await push(
        store, image, ref, transport=options.transport, docker_format=options.docker_format,
        progress=lambda line: progress.output(handle, line),
    )
    progress.output(handle, f"pushed {ref}@{digest}")
    return digest


def _commit_image(
    runner: _Build, staging: Staging, final: StageResult, options: BuildOptions
) -> StoredImage:
    config = final.config
    if options.labels:
        config = config.with_labels(sorted(options.labels.items()))
    config = dataclasses.replace(config, created=runner.now)
    config_desc = staging.put_bytes(canonical_json(config.to_oci()), OCI_CONFIG)
    layers = [layer.as_oci().descriptor.to_json() for layer in final.layers]
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config_desc.to_json(),
        "layers": layers,
    }
    manifest_desc = staging.put_bytes(canonical_json(manifest), OCI_MANIFEST)
    staging.commit()
    runner.trees.publish()
    for tag in options.tags:
        runner.store.tag(tag, manifest_desc)
    return runner.store.load(manifest_desc)


def _export(
    runner: _Build, store: Store, image: StoredImage, final: StageResult, output: OutputRef
) -> None:
    if output.transport == "dir":
        skipped = materialize(runner.trees.view(final.layers), Path(output.path))
        if skipped:
            sys.stderr.write(
                f"WARNING: dir:{output.path}: {len(skipped)} device or FIFO entries not "
                "written (an unprivileged user cannot create them)\n"
            )
        return
    export_image(store, image, output)


def _warn_unused_args(
    the_plan: BuildPlan, results: Mapping[int, StageResult], options: BuildOptions,
    progress: Progress,
) -> None:
    declared: set[str] = set(the_plan.meta_arg_names)
    for result in results.values():
        declared |= result.state.declared
    unused = unused_build_args(options.build_args, declared)
    if unused:
        progress.warn(unused_build_args_warning(unused))


def _rmtree(path: Path) -> None:
    force_rmtree(path)
    if os.path.exists(path):
        raise RootbuildError(f"remove build work directory {path}: failed")
