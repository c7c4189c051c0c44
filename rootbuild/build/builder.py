"""One build: Dockerfile → plan → stages run by the scheduler → image in the store → outputs.

Rules:
- The pure pieces decide (``stages.plan``, ``stages.evaluate.apply``); this module only
  carries their decisions out: resolves bases, produces layers, writes the image.
- Blocking work (extraction, tar writing, export) runs in worker threads so independent
  stages really overlap.
- Everything a build writes is staged; only a successful build commits blobs, publishes
  the layer trees it extracted, records its step cache entries and then tags, so a failed
  build leaves the store's images, blobs, trees and cache as they were. Base images
  imported along the way stay, as a pull would.
- The store's shared lock is held for the whole build (``prune`` takes it exclusively).
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import trio

from rootbuild.build.layers import Compression, LayerTrees
from rootbuild.build.stage import Stage, StageResult
from rootbuild.build.step_cache import MergedCache, RemoteCache, StepCache
from rootbuild.cache.index import CacheIndex
from rootbuild.cache.remote import export_cache, import_cache
from rootbuild.cache.spec import CacheSpec
from rootbuild.context import BuildContext, find_dockerfile, load_ignore
from rootbuild.dockerfile.parser import parse_dockerfile
from rootbuild.errors import (
    ContextError,
    ImageError,
    Location,
    RegistryError,
    RootbuildError,
    UsageError,
)
from rootbuild.image.archives import export_image, import_image
from rootbuild.image.oci import (
    OCI_CONFIG,
    OCI_MANIFEST,
    StoredImage,
    canonical_json,
    config_platform,
)
from rootbuild.image.refs import ImageRef, OutputRef, parse_base_ref
from rootbuild.image.rootfs import materialize
from rootbuild.image.store import Staging, Store, force_rmtree
from rootbuild.platform import Platform, host_platform
from rootbuild.progress import Progress
from rootbuild.registry.client import TransportOptions
from rootbuild.registry.pull import pull
from rootbuild.registry.push import push
from rootbuild.sandbox.executor import SandboxExecutor
from rootbuild.sandbox.idmap import read_host_plan
from rootbuild.snapshot import choose_snapshotter
from rootbuild.stages.args import predefined_args, unused_build_args, unused_build_args_warning
from rootbuild.stages.config import (
    format_timestamp,
    settle_created,
    timestamp_from_epoch,
)
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
    no_cache: bool = False  # no cache lookups (steps still recorded), as BuildKit
    no_cache_filter: tuple[str, ...] = ()  # stages whose steps are never looked up
    cache_from: tuple[CacheSpec, ...] = ()
    cache_to: tuple[CacheSpec, ...] = ()
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
class BuildResult:
    image_id: str  # the config digest, as `docker build` reports it
    image: StoredImage
    pushed: tuple[tuple[str, str], ...] = ()  # (reference, manifest digest) per push


def _platform_of(image: StoredImage) -> Platform | None:
    """The image's platform as its config states it, normalised like ``--platform``."""
    declared = config_platform(image.config_json)
    return Platform.parse(str(declared)) if declared is not None else None


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
        self.staging = staging
        self.trees = LayerTrees(store, staging)
        self.cache = StepCache(
            CacheIndex(store.root), disabled=options.no_cache,
            disabled_stages=frozenset(options.no_cache_filter), warn=self.warn_once,
        )
        epoch = options.source_date_epoch
        self.started = time.time()
        self.epoch_now = epoch if epoch is not None else int(self.started)
        self.now = (
            timestamp_from_epoch(epoch) if epoch is not None
            else format_timestamp(datetime.fromtimestamp(self.started, UTC))
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
        self.executor = SandboxExecutor(self.idmap)

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
        return await Stage(self, stage, deps).run()


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
            async with contextlib.AsyncExitStack() as remotes:
                runner.cache.remote = await _import_caches(store, options, progress, remotes)
                results = await run_plan(the_plan, runner.stage, jobs=options.jobs)
            final = results[the_plan.target]
            image = await trio.to_thread.run_sync(
                _commit_image, runner, staging, final, options
            )
        except BaseException:
            runner.trees.discard()
            raise
        finally:
            runner.cache.index.close()
            _rmtree(work_dir)
        for spec in options.cache_to:
            await _export_cache(store, runner, the_plan, spec, options, progress)
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
    config = settle_created(config, runner.now)
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
    runner.cache.commit()
    for tag in options.tags:
        runner.store.tag(tag, manifest_desc)
    return runner.store.load(manifest_desc)


async def _import_caches(
    store: Store, options: BuildOptions, progress: Progress, stack: contextlib.AsyncExitStack
) -> RemoteCache | None:
    """Every ``--cache-from`` source, read (manifest and config only) before the build; one
    that cannot be read is a warning, as with BuildKit."""
    imported: list[RemoteCache] = []
    for spec in options.cache_from:
        handle = progress.start(f"importing cache from {_describe(spec)}")
        try:
            cache = await import_cache(
                store, spec, transport=options.transport,
                say=functools.partial(progress.output, handle),
            )
        except RootbuildError as exc:
            progress.done(handle)
            progress.warn(f"importing cache from {_describe(spec)}: {exc}")
            continue
        progress.done(handle)
        imported.append(await stack.enter_async_context(cache))
    if not imported:
        return None
    return imported[0] if len(imported) == 1 else MergedCache(imported)


async def _export_cache(
    store: Store, runner: _Build, the_plan: BuildPlan, spec: CacheSpec, options: BuildOptions,
    progress: Progress,
) -> None:
    """``--cache-to``: mode=min exports the steps whose layers are in the image (the target
    stage and the stages it is built FROM), mode=max every step of the build."""
    if spec.mode == "max":
        stages = list(the_plan.order)
    else:
        stages, index = [], the_plan.target
        while True:
            stages.insert(0, index)
            base = the_plan.stage(index).base.stage
            if base is None:
                break
            index = base
    entries = runner.cache.entries_of(stages)
    handle = progress.start(f"exporting cache to {_describe(spec)}")
    await export_cache(
        store, entries, spec, transport=options.transport,
        say=functools.partial(progress.output, handle),
    )
    progress.done(handle)


def _describe(spec: CacheSpec) -> str:
    return f"type={spec.kind},{'ref' if spec.kind == 'registry' else 'dir'}={spec.ref}"


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
