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
- All per-build state lives in this call's objects (``BuildEnv``, ``Workspace``, the
  ``Seams``): nothing is kept in module globals or written straight to ``sys.stderr``,
  so one process (the worker) can run many builds, at once or in turn.
- ``options.validate()`` runs first: the checks hold for every caller, not just the CLI.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import trio

from rootbuild.cache.index import CacheIndex
from rootbuild.cache.mounts import CacheMounts
from rootbuild.cache.spec import CacheSpec
from rootbuild.context import BuildContext, find_dockerfile, load_ignore
from rootbuild.dockerfile.instructions import Dockerfile, Run
from rootbuild.dockerfile.parser import parse_dockerfile
from rootbuild.engine.bases import StoreBaseImages
from rootbuild.engine.cache_mounts import BuildCacheMounts, export_cache_mounts
from rootbuild.engine.entitlements import check_entitlements
from rootbuild.engine.env import BuildEnv
from rootbuild.engine.exporter import StoreExporter
from rootbuild.engine.layers import LayerTrees
from rootbuild.engine.lint import lint, violation
from rootbuild.engine.named_contexts import open_contexts, plan_contexts
from rootbuild.engine.network import resolve as resolve_network
from rootbuild.engine.options import BuildOptions, BuildResult
from rootbuild.engine.planning import plan_build
from rootbuild.engine.remote_source import RemoteSources
from rootbuild.engine.replay import ReplayFacts
from rootbuild.engine.scratch_sweep import sweep_dead_scratch
from rootbuild.engine.seams import ChosenSnapshotter, Executor, Exporter, Seams
from rootbuild.engine.secrets import BuildSources, check_required
from rootbuild.engine.ssh_agent import SshAgents
from rootbuild.engine.stage import Stage, StageResult, Workspace
from rootbuild.engine.step_cache import MergedCache, RemoteCache, StepCache
from rootbuild.errors import ContextError, RootbuildError
from rootbuild.image.oci import OCI_CONFIG, OCI_MANIFEST, StoredImage, canonical_json
from rootbuild.image.refs import OutputRef
from rootbuild.image.store import Store, force_rmtree
from rootbuild.platform import host_platform
from rootbuild.progress import Progress
from rootbuild.sandbox.idmap import read_slot_plan
from rootbuild.sandbox.spec import StepResult, StepSpec
from rootbuild.stages.args import unused_build_args, unused_build_args_warning
from rootbuild.stages.config import settle_created
from rootbuild.stages.plan import BuildPlan, StagePlan
from rootbuild.stages.scheduler import run_plan

if TYPE_CHECKING:
    from rootbuild.sandbox.zygote import EarlyZygote

__all__ = ["BuildOptions", "BuildResult", "build", "default_seams"]


class _SandboxOnFirstRun:
    """The real ``Executor`` (``SandboxExecutor``), made at the build's first RUN step: a
    build whose steps all come from the step cache never imports the sandbox's process
    machinery (issue 14: an unchanged rebuild pays only for what it does)."""

    def __init__(self, slot: int | None, label: str = "",
                 early: EarlyZygote | None = None) -> None:
        self.slot = slot
        self.label = label  # the store: shown by the zygote's command line
        self.early = early  # launched by the CLI (sandbox/zygote.py EarlyZygote)
        self._executor: Executor | None = None

    def _made(self) -> Executor:
        if self._executor is None:
            from rootbuild.sandbox.executor import SandboxExecutor

            self._executor = SandboxExecutor(read_slot_plan(self.slot), label=self.label,
                                             early=self.early)
        return self._executor

    async def run(self, spec: StepSpec, on_output: Callable[[str], None]) -> StepResult:
        return await self._made().run(spec, on_output)

    async def prestart(self) -> None:
        await self._made().prestart()

    async def aclose(self) -> None:
        if self._executor is not None:
            await self._executor.aclose()
        elif self.early is not None:  # no RUN ran: the zygote launched for it goes
            self.early.close()


def has_run(dockerfile: Dockerfile) -> bool:
    """The Dockerfile has a RUN instruction (ONBUILD triggers of bases not counted)."""
    return any(isinstance(i, Run) for stage in dockerfile.stages for i in stage.instructions)


def default_seams(store: Store, options: BuildOptions, progress: Progress,
                  zygote: EarlyZygote | None = None) -> Seams:
    """The real seams: the RUN sandbox (with ``zygote``: the one the CLI launched), the
    store's base images and exporter."""
    return Seams(
        executor=_SandboxOnFirstRun(options.slot, label=str(store.root), early=zygote),
        base_images=StoreBaseImages(store, options.transport, progress, options.pull),
        exporter=StoreExporter(store, options.transport, docker_format=options.docker_format,
                               warn=progress.warn),
        remote=RemoteSources(records_dir=store.remote_records_dir,
                             transport=options.transport, untrusted=options.untrusted),
        snapshotter=ChosenSnapshotter(options.snapshotter),
    )


class _Warnings:
    """Warnings shown once per build (the id-mapping note of every RUN, ...)."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.seen: set[str] = set()

    def __call__(self, message: str) -> None:
        if message not in self.seen:
            self.seen.add(message)
            self.progress.warn(message)


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


async def build(
    options: BuildOptions, store: Store, progress: Progress, *, seams: Seams | None = None,
    zygote: EarlyZygote | None = None,
) -> BuildResult:
    """Run one build and return the image it stored (tagged with ``options.tags``).
    ``seams`` replaces the real executor, base images and exporter (tests); ``zygote``: a
    RUN zygote launched ahead (the CLI's), adopted by the real executor. The caller closes
    ``zygote`` too (``EarlyZygote.close`` does nothing once it is adopted or closed)."""
    options.validate()
    options, network_warning = resolve_network(options)  # engine/network.py
    if network_warning:
        progress.warn(network_warning)
    text, name, path = _read_dockerfile(options)
    dockerfile = parse_dockerfile(text, name)
    if dockerfile.directives.syntax:
        progress.note(
            f"# syntax={dockerfile.directives.syntax} ignored: rootbuild has its own frontend"
        )
    for warning in dockerfile.warnings:
        progress.warn(warning)
    ignore = load_ignore(options.context_dir, path or options.context_dir / "Dockerfile")
    if seams is None:  # the real sandbox: what killed builds left (engine/scratch_sweep.py)
        sweep_dead_scratch(store, progress.warn)
    with store.shared_lock(), BuildContext.open(options.context_dir, ignore) as context, \
            store.stage() as staging, contextlib.ExitStack() as named:
        seams = seams or default_seams(store, options, progress, zygote)
        runs = has_run(dockerfile)
        try:  # a zygote started ahead is stopped on every path (also when planning fails)
            if runs and options.no_cache:  # every RUN will run: overlap its start-up with the
                await seams.executor.prestart()  # base pulls (an ONBUILD RUN starts it later)
            the_plan = await plan_build(
                dockerfile, seams.base_images, target=options.target,
                build_args=options.build_args, target_platform=options.target_platform,
                build_platform=host_platform(),
                contexts=plan_contexts(options.build_contexts),
            )
            for warning in the_plan.warnings:
                progress.warn(warning)
            checks = await lint(dockerfile, text, the_plan, options, seams.base_images, ignore)
            failure = violation(checks)
            if failure is not None:  # error=true: refuse before any step, as BuildKit does
                for check in checks.warnings:
                    progress.warn(str(check))
                raise failure
            check_entitlements(the_plan, options.allow, options.untrusted)
            check_required(the_plan, frozenset(options.secrets),
                           frozenset(s.id for s in options.ssh))
            agents = SshAgents(options.ssh)  # started below, stopped on every path
            env = BuildEnv.for_plan(options, the_plan, dockerfile.directives.escape)
            warn_once = _Warnings(progress)
            work = Workspace(
                progress=progress, trees=LayerTrees(store, staging),
                cache=StepCache(
                    CacheIndex(store.root), disabled=options.no_cache,
                    disabled_stages=frozenset(options.no_cache_filter), warn=warn_once,
                ),
                context=context, work_dir=store.staging_dir(), staging=staging,
                idmap=read_slot_plan(options.slot), warn_once=warn_once,
                named=open_contexts(options.build_contexts, named),
                sources=BuildSources(options.secrets),
                cache_mounts=BuildCacheMounts(
                    CacheMounts(store.root), staging, progress.note,
                    options.build_args.get("BUILDKIT_CACHE_MOUNT_NS", ""),
                ),
                runs_ahead=runs,
            )
        except BaseException:
            with trio.CancelScope(shield=True):
                await seams.executor.aclose()
            raise

        async def run_stage(stage: StagePlan, deps: Mapping[int, StageResult]) -> StageResult:
            return await Stage(env, seams, work, stage, deps).run()

        try:
            sockets = await trio.to_thread.run_sync(agents.start)
            seams.remote.forward_ssh(sockets)  # ADD git@/ssh:// authenticates with them
            work = dataclasses.replace(work, sources=dataclasses.replace(work.sources,
                                                                         sockets=sockets))
            async with contextlib.AsyncExitStack() as remotes:
                work.cache.remote = await _import_caches(store, options, progress, remotes)
                if work.cache_mounts is not None:  # RUN --mount=type=cache contents
                    work.cache_mounts.offer(work.cache.remote)
                results = await run_plan(the_plan, run_stage, jobs=options.jobs)
            final = results[the_plan.target]
            image = await trio.to_thread.run_sync(_commit_image, store, work, env, final)
            seams.remote.commit()  # the ETags of this build's URLs, now that it succeeded
        except BaseException:
            work.trees.discard()
            raise
        finally:
            agents.stop()
            with trio.CancelScope(shield=True):
                await seams.executor.aclose()  # the zygote of the RUN steps
            work.cache.index.close()
            _rmtree(work.work_dir)
        for spec in options.cache_to:
            await _export_cache(store, work, the_plan, spec, options, progress)
        _warn_unused_args(the_plan, results, options, progress)
        pushed = await _export(seams.exporter, image, final, work, options, progress)
    return BuildResult(image.config.digest, image, pushed, checks=checks.warnings,
                       replay=_replay_facts(seams, work.cache, warn_once.seen))


def _replay_facts(seams: Seams, cache: StepCache, step_warnings: set[str]) -> ReplayFacts | None:
    """What ``engine/replay.py`` records of this build: only when every step it ran is now
    in the local step cache (a rebuild takes every step from there), every base came from
    the store's names and no ADD fetched anything."""
    bases, remote = seams.base_images, seams.remote
    if not isinstance(bases, StoreBaseImages) or not isinstance(remote, RemoteSources):
        return None  # a test's seams
    if cache.bypassed or cache.remote is not None or remote.consulted or bases.imported:
        return None
    entries = {**cache.used, **cache.new}
    return ReplayFacts(
        bases=tuple(sorted(bases.resolved.items())),
        cache=tuple(sorted((key, entry.layer.digest if entry.layer else None)
                           for key, entry in entries.items())),
        recorded=frozenset(cache.recorded),
        step_warnings=frozenset(step_warnings),
    )


async def _export(
    exporter: Exporter, image: StoredImage, final: StageResult, work: Workspace,
    options: BuildOptions, progress: Progress,
) -> tuple[tuple[str, str], ...]:
    """Every ``--output``, then every ``-t`` name when ``--push``; (reference, digest) of
    each push."""
    jobs = [(f"exporting to {output.text}", output) for output in options.outputs]
    if options.push:
        jobs += [(f"pushing {tag}", OutputRef("docker", tag, text=f"docker://{tag}"))
                 for tag in options.tags]
    pushed: list[tuple[str, str]] = []
    for label, output in jobs:
        handle = progress.start(label)
        digest = await exporter.export(
            image, output, lambda: work.trees.view(final.layers),
            functools.partial(progress.output, handle),
        )
        if digest is not None:
            pushed.append((output.path, digest))
        progress.done(handle)
    return tuple(pushed)


def _commit_image(store: Store, work: Workspace, env: BuildEnv, final: StageResult) -> StoredImage:
    config = final.config
    staging, options = work.staging, env.options
    if options.labels:
        config = config.with_labels(sorted(options.labels.items()))
    config = settle_created(config, env.clock.now)
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
    work.trees.publish()
    work.cache.commit()
    for tag in options.tags:
        store.tag(tag, manifest_desc)
    return store.load(manifest_desc)


async def _import_caches(
    store: Store, options: BuildOptions, progress: Progress, stack: contextlib.AsyncExitStack
) -> RemoteCache | None:
    """Every ``--cache-from`` source, read (manifest and config only) before the build; one
    that cannot be read is a warning, as with BuildKit."""
    if not options.cache_from:
        return None
    from rootbuild.cache.remote import import_cache  # the registry client: only when asked

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
    store: Store, work: Workspace, the_plan: BuildPlan, spec: CacheSpec, options: BuildOptions,
    progress: Progress,
) -> None:
    """``--cache-to``: mode=min exports the steps whose layers are in the image (the target
    stage and the stages it is built FROM), mode=max every step of the build."""
    from rootbuild.cache.remote import export_cache  # the registry client: only when asked

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
    entries = work.cache.entries_of(stages)
    handle = progress.start(f"exporting cache to {_describe(spec)}")
    mounts = await export_cache_mounts(store, work.cache_mounts, spec, progress.warn)
    await export_cache(
        store, entries, spec, transport=options.transport,
        say=functools.partial(progress.output, handle), mounts=mounts,
    )
    progress.done(handle)


def _describe(spec: CacheSpec) -> str:
    return f"type={spec.kind},{'ref' if spec.kind == 'registry' else 'dir'}={spec.ref}"


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
