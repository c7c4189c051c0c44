"""The stage graph: which stage needs which, resolved the way BuildKit's dockerfile2llb does.

Rules (BuildKit ``frontend/dockerfile/dockerfile2llb/convert.go`` is the reference):

- A stage's base is an EARLIER stage when the expanded ``FROM`` word equals an earlier stage's
  name (names compare case-insensitively; with duplicate names the latest earlier definition
  wins). Anything else, including a later stage's name, is an external image reference.
- ``COPY --from=`` and ``RUN --mount=...,from=`` (bind and cache mounts) name a stage by name,
  looked up among ALL stages (the last definition of a duplicated name wins), or by decimal
  index; any other value is an external image, recorded as an image dependency, not an edge.
- Every reference is an edge of the graph. Cycles are reported for the whole file, before any
  pruning (BuildKit's ``validateCircularDependency``); a reference to a stage that is not
  earlier is an error for the stages actually built (BuildKit: "it needs to be defined before
  current stage").
- This module does no I/O and knows nothing about ARG scopes: words are expanded through the
  ``Expander`` the caller passes in.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from rootbuild.dockerfile.instructions import Copy, Dockerfile, From, Instruction, Run
from rootbuild.errors import DockerfileError, Location, StageGraphError
from rootbuild.stages.contexts import context_key

# Expands one word in the global (meta-ARG) scope; adds the names it referenced to the set.
Expander = Callable[[str, Location, set[str]], str]

# Mount types whose ``from=`` names a source (BuildKit ignores it for tmpfs, secret, ssh).
MOUNT_TYPES_WITH_SOURCE = frozenset({"bind", "cache"})


@dataclass(frozen=True)
class StageBase:
    """What a ``FROM`` (or a ``--from``/``from=`` reference) resolves to: exactly one of an
    earlier stage's index, an external image reference as written after expansion
    ("scratch", "alpine:3", "oci-archive:base.tar"), or the name of a named build context
    that is a local directory (``--build-context name=DIR``; an image context resolves to
    its image reference)."""

    stage: int | None = None
    image: str | None = None
    context: str | None = None

    def __post_init__(self) -> None:
        if [self.stage, self.image, self.context].count(None) != 2:
            raise ValueError("StageBase needs exactly one of stage, image and context")

    @property
    def is_scratch(self) -> bool:
        """``FROM scratch`` starts from an empty filesystem and config (Dockerfile reference)."""
        return self.image is not None and self.image.lower() == "scratch"

    def __str__(self) -> str:
        if self.context is not None:
            return f"context {self.context}"
        return f"stage {self.stage}" if self.stage is not None else f"image {self.image}"


@dataclass(frozen=True)
class Edge:
    """One stage reference: ``kind`` is "FROM", "COPY --from" or "RUN --mount from"."""

    stage: int
    kind: str
    location: Location


@dataclass(frozen=True)
class StageNode:
    """One stage with its references resolved. ``refs`` maps every raw (unexpanded)
    ``--from``/``from=`` word used in the stage to what it resolves to."""

    index: int
    name: str | None  # lowercased alias
    from_: From
    base: StageBase
    platform: str | None  # expanded ``FROM --platform`` value
    edges: tuple[Edge, ...]
    images: tuple[str, ...]  # external images used by --from / from=, sorted, unique
    refs: tuple[tuple[str, StageBase], ...]
    from_args: frozenset[str]  # meta ARGs the FROM line and the references referenced
    instructions: tuple[Instruction, ...]
    onbuild: tuple[Instruction, ...] = ()  # the base's ONBUILD triggers, run first
    replaced: bool = False  # a named build context replaced the stage (``stages.contexts``)

    @property
    def display_name(self) -> str:
        """The stage's name, or BuildKit's ``stage-N`` for an unnamed stage."""
        return self.name if self.name is not None else f"stage-{self.index}"

    @property
    def stage_deps(self) -> frozenset[int]:
        return frozenset(edge.stage for edge in self.edges)


@dataclass(frozen=True)
class StageGraph:
    nodes: tuple[StageNode, ...]
    # name -> index of the LAST stage with that name (lookup for --from and --target)
    names: tuple[tuple[str, int], ...]

    def find(self, name: str) -> int | None:
        """The stage called ``name`` (case-insensitive), or None."""
        return dict(self.names).get(name.lower())


def build_graph(
    dockerfile: Dockerfile, expand: Expander, contexts: Mapping[str, StageBase] | None = None
) -> StageGraph:
    """Resolve every stage's base and references. Raises ``DockerfileError`` for a blank
    base name and ``StageGraphError`` for an index that names no stage. ``contexts`` are
    the named build contexts by ``context_key`` (``stages.contexts`` rules)."""
    contexts = contexts or {}

    def named(word: str) -> StageBase | None:
        key = context_key(word)
        return contexts.get(key) if key is not None else None

    final_names: dict[str, int] = {}
    for spec in dockerfile.stages:
        if spec.name:
            final_names[spec.name.lower()] = spec.index

    nodes: list[StageNode] = []
    earlier: dict[str, int] = {}
    for spec in dockerfile.stages:
        used: set[str] = set()
        loc = spec.from_.location
        base_word = expand(spec.from_.image, loc, used)
        if not base_word:
            raise DockerfileError(f"FROM: base name ({spec.from_.image}) should not be blank", loc)
        base_index = earlier.get(base_word.lower())
        edges: list[Edge] = []
        replaced = named(spec.name.lower()) if spec.name else None
        if replaced is not None:  # the named context replaces the whole stage
            base = replaced
        elif base_index is not None:
            base = StageBase(stage=base_index)
            edges.append(Edge(base_index, "FROM", loc))
        else:
            base = named(base_word) or StageBase(image=base_word)
        platform = None
        if spec.from_.platform is not None:
            platform = expand(spec.from_.platform, loc, used)
            if not platform:
                raise DockerfileError(
                    f"FROM: empty platform value from expression {spec.from_.platform}", loc
                )

        refs: dict[str, StageBase] = {}
        images: set[str] = set()
        body = () if replaced is not None else (*spec.onbuild, *spec.instructions)
        for instruction, kind, word in _references(body):
            ref = _resolve_ref(
                word,
                instruction.location,
                kind,
                len(dockerfile.stages),
                final_names,
                expand,
                used,
                named,
            )
            refs[word] = ref
            if ref.stage is not None:
                edges.append(Edge(ref.stage, kind, instruction.location))
            elif ref.image is not None:
                images.add(ref.image)

        name = spec.name.lower() if spec.name else None
        nodes.append(
            StageNode(
                index=spec.index,
                name=name,
                from_=spec.from_,
                base=base,
                platform=platform,
                edges=tuple(edges),
                images=tuple(sorted(images)),
                refs=tuple(sorted(refs.items())),
                from_args=frozenset(used),
                instructions=() if replaced is not None else spec.instructions,
                onbuild=() if replaced is not None else spec.onbuild,
                replaced=replaced is not None,
            )
        )
        if name is not None:
            earlier[name] = spec.index
    return StageGraph(nodes=tuple(nodes), names=tuple(sorted(final_names.items())))


def _references(
    instructions: Iterable[Instruction],
) -> Iterable[tuple[Instruction, str, str]]:
    for instruction in instructions:
        if isinstance(instruction, Copy) and instruction.from_ is not None:
            yield instruction, "COPY --from", instruction.from_
        elif isinstance(instruction, Run):
            for mount in instruction.mounts:
                if mount.from_ is not None and mount.type in MOUNT_TYPES_WITH_SOURCE:
                    yield instruction, "RUN --mount from", mount.from_


def _resolve_ref(
    word: str,
    location: Location,
    kind: str,
    stage_count: int,
    names: Mapping[str, int],
    expand: Expander,
    used: set[str],
    named: Callable[[str], StageBase | None] = lambda word: None,
) -> StageBase:
    value = expand(word, location, used)
    if not value:
        raise DockerfileError(f"{kind}: empty value from expression {word}", location)
    if value.isdecimal() and value.isascii():
        index = int(value)
        if index >= stage_count:
            raise StageGraphError(f"{kind}={value}: invalid stage index {index}", location)
        return StageBase(stage=index)
    found = names.get(value.lower())
    if found is not None:
        return StageBase(stage=found)
    return named(value) or StageBase(image=value)


def check_acyclic(graph: StageGraph) -> None:
    """Raise ``StageGraphError("stage cycle: a -> b -> a")`` for the first cycle found.

    The cycle is shown from its lowest-index stage; the location is that stage's reference
    into the cycle, which necessarily names a later stage and is therefore the offending one.
    """
    cycle = find_cycle(graph)
    if cycle is None:
        return
    stages, edge = cycle
    path = " -> ".join(graph.nodes[i].display_name for i in (*stages, stages[0]))
    raise StageGraphError(f"stage cycle: {path}", edge.location)


def find_cycle(graph: StageGraph) -> tuple[tuple[int, ...], Edge] | None:
    """A cycle as (stages from the lowest index, the edge leaving that stage), or None."""
    white, grey, black = 0, 1, 2
    colour = [white] * len(graph.nodes)
    stack: list[int] = []

    def visit(index: int) -> tuple[int, ...] | None:
        colour[index] = grey
        stack.append(index)
        for edge in sorted(graph.nodes[index].edges, key=lambda e: e.stage):
            if colour[edge.stage] == grey:
                return tuple(stack[stack.index(edge.stage) :])
            if colour[edge.stage] == white:
                found = visit(edge.stage)
                if found is not None:
                    return found
        stack.pop()
        colour[index] = black
        return None

    for node in graph.nodes:
        if colour[node.index] == white:
            found = visit(node.index)
            if found is not None:
                start = found.index(min(found))
                rotated = found[start:] + found[:start]
                nxt = rotated[1] if len(rotated) > 1 else rotated[0]
                edge = next(e for e in graph.nodes[rotated[0]].edges if e.stage == nxt)
                return rotated, edge
    return None


def needed_stages(graph: StageGraph, target: int) -> frozenset[int]:
    """The target and every stage it needs, transitively (BuildKit's allReachableStages)."""
    seen: set[int] = set()
    todo = [target]
    while todo:
        index = todo.pop()
        if index not in seen:
            seen.add(index)
            todo.extend(graph.nodes[index].stage_deps)
    return frozenset(seen)


def check_backward_refs(graph: StageGraph, stages: Iterable[int]) -> None:
    """A stage may only use stages defined before it (BuildKit: "cannot copy from stage
    "x", it needs to be defined before current stage "y"")."""
    for index in sorted(stages):
        node = graph.nodes[index]
        for edge in node.edges:
            if edge.stage >= index:
                other = graph.nodes[edge.stage].display_name
                raise StageGraphError(
                    f'{edge.kind}: cannot use stage "{other}", it needs to be defined '
                    f'before current stage "{node.display_name}"',
                    edge.location,
                )


def topological_order(graph: StageGraph, stages: Iterable[int]) -> tuple[int, ...]:
    """Dependencies first; among ready stages the lowest index first (deterministic)."""
    subset = frozenset(stages)
    waiting = {i: set(graph.nodes[i].stage_deps & subset) for i in subset}
    users: dict[int, list[int]] = {i: [] for i in subset}
    for i, deps in waiting.items():
        for dep in deps:
            users[dep].append(i)
    ready = [i for i, deps in waiting.items() if not deps]
    heapq.heapify(ready)
    order: list[int] = []
    while ready:
        index = heapq.heappop(ready)
        order.append(index)
        for user in users[index]:
            waiting[user].discard(index)
            if not waiting[user]:
                heapq.heappush(ready, user)
    if len(order) != len(subset):
        check_acyclic(graph)
        raise StageGraphError("order stages: dependency cycle")  # unreachable after check
    return tuple(order)


def levels(graph: StageGraph, stages: Iterable[int]) -> tuple[tuple[int, ...], ...]:
    """Stages grouped by depth: level 0 needs no stage, level n needs one of level n-1.
    Stages in one level can run at the same time."""
    subset = frozenset(stages)
    depth: dict[int, int] = {}
    for index in topological_order(graph, subset):
        deps = graph.nodes[index].stage_deps & subset
        depth[index] = 1 + max((depth[d] for d in deps), default=-1)
    grouped: dict[int, list[int]] = {}
    for index, level in depth.items():
        grouped.setdefault(level, []).append(index)
    return tuple(tuple(sorted(grouped[level])) for level in sorted(grouped))
