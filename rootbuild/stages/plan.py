"""The build plan: which stages a ``docker build`` of one target builds, from what, in what order.

Rules:
- ``plan()`` is a pure function of the parsed Dockerfile, ``--target``, the build args and
  the two platforms; its result is a frozen value and ``render()`` prints it deterministically
  (the golden files under ``fixtures/dockerfiles/`` pin it).
- ``FROM`` image names and ``--platform`` values, ``COPY --from`` and ``RUN --mount from=``
  values are expanded in the global scope only: the meta ARGs (ARG before the first FROM,
  overridden by build args) plus the predefined platform args (Dockerfile reference,
  "Understand how ARG and FROM interact"; BuildKit ``buildMetaArgs``/``defaultArgs``).
- Without ``--target`` the last stage is the target; stages the target does not need
  (transitively, through FROM and --from/from= references) are pruned, as BuildKit does.
- A stage built ``FROM`` another stage runs on that stage's platform (BuildKit's
  ``dispatchState.init``); otherwise on its ``--platform`` or the target platform.
- No I/O here: pulling images and running steps belong to the caller.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from rootbuild.dockerfile.instructions import Dockerfile, From, Instruction
from rootbuild.dockerfile.substitution import expand
from rootbuild.errors import DockerfileError, Location, RootbuildError, StageGraphError
from rootbuild.platform import Platform
from rootbuild.stages.args import PREDEFINED_PLATFORM_ARGS, meta_args, predefined_args
from rootbuild.stages.graph import (
    Expander,
    StageBase,
    StageGraph,
    build_graph,
    check_acyclic,
    check_backward_refs,
    levels,
    needed_stages,
    topological_order,
)


@dataclass(frozen=True)
class StagePlan:
    """One stage to build. ``deps`` are the stage indices it needs (its base stage and every
    stage it copies or mounts from); ``images`` the external images it copies or mounts
    from (its base image is in ``base``)."""

    index: int
    name: str | None
    base: StageBase
    platform: Platform
    deps: tuple[int, ...]
    images: tuple[str, ...]
    from_: From
    instructions: tuple[Instruction, ...]
    refs: tuple[tuple[str, StageBase], ...]  # raw --from / from= word -> what it names
    onbuild: tuple[Instruction, ...] = ()  # the base's ONBUILD triggers, run first
    replaced: bool = False  # a named build context replaced the stage: nothing of it runs

    @property
    def display_name(self) -> str:
        """The stage's name, or BuildKit's ``stage-N`` for an unnamed stage."""
        return self.name if self.name is not None else f"stage-{self.index}"


@dataclass(frozen=True)
class BuildPlan:
    dockerfile: str  # display name
    target: int
    stages: tuple[StagePlan, ...]  # the stages to build, by index
    order: tuple[int, ...]  # a topological order: dependencies first
    levels: tuple[tuple[int, ...], ...]  # stages of one level can run concurrently
    pruned: tuple[int, ...]  # stages the target does not need
    global_args: tuple[tuple[str, str], ...]  # the meta-ARG scope, sorted
    from_args: frozenset[str]  # args referenced by FROM lines and --from of built stages
    meta_arg_names: frozenset[str]  # names declared by ARG before the first FROM
    target_platform: Platform
    build_platform: Platform
    warnings: tuple[str, ...] = ()

    def stage(self, index: int) -> StagePlan:
        for stage in self.stages:
            if stage.index == index:
                return stage
        raise KeyError(index)

    @property
    def target_stage(self) -> StagePlan:
        return self.stage(self.target)


def plan(
    dockerfile: Dockerfile,
    *,
    target: str | None,
    build_args: Mapping[str, str],
    target_platform: Platform,
    build_platform: Platform,
    contexts: Mapping[str, StageBase] | None = None,
) -> BuildPlan:
    """Plan the build of ``target`` (default: the last stage); ``contexts`` are the named
    build contexts by ``stages.contexts.context_key``."""
    if not dockerfile.stages:
        raise DockerfileError(f"plan build: {dockerfile.name} contains no stages to build")
    # TARGETSTAGE is the --target as given, else the last stage's name (BuildKit defaultArgs).
    target_stage = target if target is not None else (dockerfile.stages[-1].name or "")
    predefined = predefined_args(target_platform, build_platform, target_stage=target_stage)
    declared: set[str] = set()
    scope = meta_args(dockerfile, build_args, predefined, declared)
    escape = dockerfile.directives.escape

    def expand_global(word: str, location: Location, used: set[str]) -> str:
        return expand(word, scope, escape=escape, location=location, used=used)

    graph = build_graph(dockerfile, expand_global, contexts)
    check_acyclic(graph)
    target_index = _target_index(graph, target)
    needed = needed_stages(graph, target_index)
    check_backward_refs(graph, needed)

    platforms = _platforms(graph, needed, target_platform)
    stages = tuple(
        StagePlan(
            index=node.index,
            name=node.name,
            base=node.base,
            platform=platforms[node.index],
            deps=tuple(sorted(node.stage_deps)),
            images=node.images,
            from_=node.from_,
            instructions=node.instructions,
            refs=node.refs,
            onbuild=node.onbuild,
            replaced=node.replaced,
        )
        for node in graph.nodes
        if node.index in needed
    )
    from_args: set[str] = set()
    for node in graph.nodes:
        if node.index in needed:
            from_args |= node.from_args
    return BuildPlan(
        dockerfile=dockerfile.name,
        target=target_index,
        stages=stages,
        order=topological_order(graph, needed),
        levels=levels(graph, needed),
        pruned=tuple(n.index for n in graph.nodes if n.index not in needed),
        global_args=tuple(sorted(scope.items())),
        from_args=frozenset(from_args),
        meta_arg_names=frozenset(declared),
        target_platform=target_platform,
        build_platform=build_platform,
        warnings=_duplicate_name_warnings(dockerfile),
    )


def _target_index(graph: StageGraph, target: str | None) -> int:
    if target is None:
        return len(graph.nodes) - 1
    found = graph.find(target)
    if found is None:
        raise StageGraphError(f'target stage "{target}" could not be found')
    return found


def _platforms(
    graph: StageGraph, needed: frozenset[int], target_platform: Platform
) -> dict[int, Platform]:
    # Index order is enough: a FROM can only name an earlier stage.
    out: dict[int, Platform] = {}
    for node in graph.nodes:
        if node.index not in needed:
            continue
        if node.base.stage is not None:
            out[node.index] = out[node.base.stage]
        elif node.platform is not None:
            try:
                out[node.index] = Platform.parse(node.platform)
            except RootbuildError as exc:
                raise DockerfileError(
                    f"FROM: parse platform {node.platform!r}: expected os/arch[/variant]",
                    node.from_.location,
                ) from exc
        else:
            out[node.index] = target_platform
    return out


def _duplicate_name_warnings(dockerfile: Dockerfile) -> tuple[str, ...]:
    # BuildKit lints this (DuplicateStageName) but builds: later definitions win.
    seen: dict[str, Location] = {}
    warnings: list[str] = []
    for spec in dockerfile.stages:
        if not spec.name:
            continue
        key = spec.name.lower()
        if key in seen:
            warnings.append(
                f'{spec.from_.location}: stage name "{key}" is already used at '
                f"{seen[key]}; later references use this stage"
            )
        seen[key] = spec.from_.location
    return tuple(warnings)


def render(build: BuildPlan) -> str:
    """A stable text form of the plan (used by the golden files and ``--dry-run`` output)."""
    lines = [
        f"dockerfile: {build.dockerfile}",
        f"target: {build.target} {build.target_stage.display_name}",
        f"platforms: target {build.target_platform} build {build.build_platform}",
        f"order: {_ints(build.order)}",
        "levels: " + " ".join(f"[{_ints(level)}]" for level in build.levels),
        f"pruned: {_ints(build.pruned)}",
        "from-args: " + (" ".join(sorted(build.from_args)) or "-"),
    ]
    # Platform args are shown only where a build arg overrode them: the platforms line
    # already says what they are.
    defaults = predefined_args(build.target_platform, build.build_platform)
    lines.extend(
        f"global-arg {name}={value}"
        for name, value in build.global_args
        if defaults.get(name) != value or name not in PREDEFINED_PLATFORM_ARGS
    )
    for stage in build.stages:
        lines.append(f"stage {stage.index} {stage.display_name}")
        lines.append(f"  base: {stage.base}")
        lines.append(f"  platform: {stage.platform}")
        lines.append(f"  deps: {_ints(stage.deps)}")
        lines.append("  images: " + (" ".join(stage.images) or "-"))
        for raw, ref in stage.refs:
            lines.append(f"  ref {raw} -> {ref}")
        for trigger in stage.onbuild:
            text = trigger.original.replace("\n", "\\n")
            lines.append(f"  onbuild {trigger.location.line}: {text}")
        for instruction in stage.instructions:
            text = instruction.original.replace("\n", "\\n")
            lines.append(f"  {instruction.location.line}: {text}")
    for warning in build.warnings:
        lines.append(f"warning: {warning}")
    return "\n".join(lines) + "\n"


def _ints(values: tuple[int, ...]) -> str:
    return " ".join(str(v) for v in values) or "-"


__all__ = ["BuildPlan", "Expander", "StageBase", "StagePlan", "plan", "render"]
