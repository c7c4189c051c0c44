"""Stage graph: reference resolution, cycles, pruning and ordering (BuildKit dockerfile2llb)."""

from __future__ import annotations

import re

import pytest

from rootbuild.dockerfile.instructions import (
    Copy,
    Directives,
    Dockerfile,
    From,
    Instruction,
    Mount,
    Run,
    ShellCommand,
    StageSpec,
)
from rootbuild.errors import DockerfileError, Location, StageGraphError
from rootbuild.stages.graph import (
    Expander,
    StageBase,
    StageGraph,
    build_graph,
    check_acyclic,
    check_backward_refs,
    find_cycle,
    levels,
    needed_stages,
    topological_order,
)

_VAR = re.compile(r"\$\{(\w+)\}|\$(\w+)")


def _dockerfile(*stages: tuple[str, str | None, list[Instruction]]) -> Dockerfile:
    """Stages as (image, alias, instructions); FROM lines get fresh locations."""
    specs = []
    for index, (image, alias, instructions) in enumerate(stages):
        loc = Location("Dockerfile", 100 * (index + 1))
        text = f"FROM {image}" + (f" AS {alias}" if alias else "")
        specs.append(StageSpec(index, From(loc, text, image, alias), tuple(instructions)))
    return Dockerfile("Dockerfile", Directives(), (), tuple(specs))


def _copy(from_: str, line: int) -> Copy:
    return Copy(Location("Dockerfile", line), f"COPY --from={from_} / /", ("/",), "/", from_)


def _run_mount(mount: Mount, line: int) -> Run:
    return Run(Location("Dockerfile", line), "RUN true", ShellCommand("true"), (mount,))


def _expander(env: dict[str, str]) -> Expander:
    def expand(word: str, location: Location, used: set[str]) -> str:
        def sub(match: re.Match[str]) -> str:
            name = match.group(1) or match.group(2)
            used.add(name)
            return env.get(name, "")

        return _VAR.sub(sub, word)

    return expand


def _graph(df: Dockerfile, env: dict[str, str] | None = None) -> StageGraph:
    return build_graph(df, _expander(env or {}))


def test_from_earlier_stage_name_is_stage_base_case_insensitively() -> None:
    g = _graph(_dockerfile(("alpine:3", "Base", []), ("BASE", "next", [])))
    assert g.nodes[0].base == StageBase(image="alpine:3")
    assert g.nodes[0].name == "base"
    assert g.nodes[1].base == StageBase(stage=0)
    assert g.nodes[1].stage_deps == {0}


def test_from_later_stage_name_is_an_image() -> None:
    # BuildKit resolves FROM against stages added so far only.
    g = _graph(_dockerfile(("later", "first", []), ("alpine", "later", [])))
    assert g.nodes[0].base == StageBase(image="later")
    assert g.nodes[0].edges == ()


def test_copy_from_name_index_and_image() -> None:
    df = _dockerfile(
        ("alpine", "build", []),
        ("busybox", None, []),
        ("scratch", None, [_copy("BUILD", 301), _copy("1", 302), _copy("nginx:1", 303)]),
    )
    node = _graph(df).nodes[2]
    assert node.base.is_scratch
    assert node.stage_deps == {0, 1}
    assert node.images == ("nginx:1",)
    assert dict(node.refs) == {
        "BUILD": StageBase(stage=0),
        "1": StageBase(stage=1),
        "nginx:1": StageBase(image="nginx:1"),
    }
    assert [(e.stage, e.kind, e.location.line) for e in node.edges] == [
        (0, "COPY --from", 301),
        (1, "COPY --from", 302),
    ]


def test_copy_from_index_out_of_range() -> None:
    df = _dockerfile(("alpine", None, [_copy("7", 101)]))
    with pytest.raises(
        StageGraphError, match=r"^Dockerfile:101: COPY --from=7: invalid stage index 7$"
    ):
        _graph(df)


def test_mount_from_bind_and_cache_but_not_tmpfs() -> None:
    df = _dockerfile(
        ("alpine", "deps", []),
        (
            "python",
            None,
            [
                _run_mount(Mount(type="bind", target="/w", from_="deps"), 201),
                _run_mount(Mount(type="cache", target="/c", from_="busybox"), 202),
                _run_mount(Mount(type="cache", target="/c2"), 203),
                _run_mount(Mount(type="tmpfs", target="/t", from_="ignored"), 204),
            ],
        ),
    )
    node = _graph(df).nodes[1]
    assert node.stage_deps == {0}
    assert node.images == ("busybox",)
    assert [e.kind for e in node.edges] == ["RUN --mount from"]


def test_references_expanded_in_global_scope_and_recorded() -> None:
    df = _dockerfile(
        ("${IMG}:${TAG}", "build", []),
        ("$STAGE", None, [_copy("${STAGE}", 201)]),
    )
    g = _graph(df, {"IMG": "alpine", "TAG": "3", "STAGE": "build"})
    assert g.nodes[0].base == StageBase(image="alpine:3")
    assert g.nodes[0].from_args == {"IMG", "TAG"}
    assert g.nodes[1].base == StageBase(stage=0)
    assert g.nodes[1].from_args == {"STAGE"}
    assert dict(g.nodes[1].refs) == {"${STAGE}": StageBase(stage=0)}


def test_blank_base_name() -> None:
    df = _dockerfile(("${NOPE}", None, []))
    with pytest.raises(
        DockerfileError,
        match=r"^Dockerfile:100: FROM: base name \(\$\{NOPE\}\) should not be blank$",
    ):
        _graph(df)


def test_cycle_reported_with_path_and_forward_reference_location() -> None:
    df = _dockerfile(
        ("alpine", "a", [_copy("c", 101)]),
        ("alpine", "b", [_copy("a", 201)]),
        ("alpine", "c", [_copy("b", 301)]),
    )
    g = _graph(df)
    cycle = find_cycle(g)
    assert cycle is not None
    assert cycle[0] == (0, 2, 1)
    with pytest.raises(StageGraphError, match=r"^Dockerfile:101: stage cycle: a -> c -> b -> a$"):
        check_acyclic(g)


def test_self_reference_is_a_cycle() -> None:
    df = _dockerfile(("alpine", None, []), ("alpine", "me", [_copy("me", 201)]))
    with pytest.raises(StageGraphError, match=r"^Dockerfile:201: stage cycle: me -> me$"):
        check_acyclic(_graph(df))


def test_forward_reference_without_cycle_is_rejected_for_built_stages() -> None:
    df = _dockerfile(("alpine", "a", [_copy("b", 101)]), ("alpine", "b", []))
    g = _graph(df)
    check_acyclic(g)
    check_backward_refs(g, {1})  # stage a is not built: fine, as in BuildKit
    with pytest.raises(
        StageGraphError,
        match=r'^Dockerfile:101: COPY --from: cannot use stage "b", it needs to be defined '
        r'before current stage "a"$',
    ):
        check_backward_refs(g, needed_stages(g, 0))


def test_needed_order_and_levels() -> None:
    df = _dockerfile(
        ("alpine", "a", []),  # 0
        ("alpine", "b", []),  # 1
        ("a", "c", [_copy("b", 301)]),  # 2
        ("busybox", "unused", []),  # 3
        ("busybox", "d", []),  # 4
        ("scratch", None, [_copy("c", 601), _copy("d", 602)]),  # 5
    )
    g = _graph(df)
    needed = needed_stages(g, 5)
    assert needed == {0, 1, 2, 4, 5}
    assert topological_order(g, needed) == (0, 1, 2, 4, 5)
    assert levels(g, needed) == ((0, 1, 4), (2,), (5,))
    assert needed_stages(g, 2) == {0, 1, 2}


def test_duplicate_names_from_sees_earlier_copy_sees_last() -> None:
    df = _dockerfile(
        ("alpine", "tools", []),
        ("tools", "tools", []),
        ("scratch", None, [_copy("tools", 301)]),
    )
    g = _graph(df)
    assert g.nodes[1].base == StageBase(stage=0)
    assert g.nodes[2].stage_deps == {1}
    assert g.find("TOOLS") == 1
