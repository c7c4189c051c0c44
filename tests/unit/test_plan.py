"""Build plans: golden renderings of fixtures/dockerfiles/<case>/ and targeted behaviour.

Each case directory holds a ``Dockerfile``, its expected ``plan.golden`` and optionally a
``target`` file (the --target name) and a ``build-args`` file (K=V lines). Run with
``UPDATE_GOLDEN=1`` to rewrite the golden files after an intended change.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from rootbuild.dockerfile.parser import parse_dockerfile
from rootbuild.errors import DockerfileError, StageGraphError
from rootbuild.platform import Platform
from rootbuild.stages.graph import StageBase
from rootbuild.stages.plan import BuildPlan, plan, render

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "dockerfiles"
CASES = sorted(p.name for p in FIXTURES.iterdir() if (p / "Dockerfile").is_file())
TARGET = Platform("linux", "amd64")
BUILD = Platform("linux", "arm64")


def _plan_text(
    text: str,
    *,
    target: str | None = None,
    build_args: dict[str, str] | None = None,
) -> BuildPlan:
    return plan(
        parse_dockerfile(text),
        target=target,
        build_args=build_args or {},
        target_platform=TARGET,
        build_platform=BUILD,
    )


def _read_build_args(path: Path) -> dict[str, str]:
    if not path.is_file():
        return {}
    out = {}
    for line in path.read_text().splitlines():
        if line.strip():
            key, _, value = line.partition("=")
            out[key] = value
    return out


def test_there_are_enough_cases() -> None:
    assert len(CASES) >= 8


@pytest.mark.parametrize("case", CASES)
def test_golden(case: str) -> None:
    case_dir = FIXTURES / case
    target_file = case_dir / "target"
    target = target_file.read_text().strip() if target_file.is_file() else None
    result = plan(
        parse_dockerfile((case_dir / "Dockerfile").read_text()),
        target=target,
        build_args=_read_build_args(case_dir / "build-args"),
        target_platform=TARGET,
        build_platform=BUILD,
    )
    rendered = render(result)
    golden = case_dir / "plan.golden"
    if os.environ.get("UPDATE_GOLDEN") == "1":
        golden.write_text(rendered)
    assert golden.is_file(), f"missing {golden}; run with UPDATE_GOLDEN=1"
    assert rendered == golden.read_text()


def test_render_is_deterministic() -> None:
    text = (FIXTURES / "parallel-levels" / "Dockerfile").read_text()
    assert render(_plan_text(text)) == render(_plan_text(text))


def test_default_target_is_last_stage_and_unneeded_stages_are_pruned() -> None:
    p = _plan_text(
        "FROM alpine AS a\nRUN true\nFROM busybox AS b\nFROM scratch\nCOPY --from=a / /\n"
    )
    assert p.target == 2
    assert [s.index for s in p.stages] == [0, 2]
    assert p.pruned == (1,)
    assert p.order == (0, 2)
    assert p.levels == ((0,), (2,))
    assert p.stage(2).deps == (0,)
    assert dict(p.stage(2).refs)["a"] == StageBase(stage=0)


def test_target_is_case_insensitive() -> None:
    p = _plan_text("FROM alpine AS Build\nFROM scratch\n", target="BUILD")
    assert p.target == 0
    assert p.target_stage.name == "build"
    assert p.pruned == (1,)


def test_unknown_target() -> None:
    with pytest.raises(StageGraphError, match=r'^target stage "nope" could not be found$'):
        _plan_text("FROM alpine AS a\n", target="nope")


def test_from_args_and_global_scope() -> None:
    p = _plan_text(
        "ARG IMG=alpine\nARG TAG=3\nARG OTHER=x\nFROM $IMG:${TAG}\n",
        build_args={"TAG": "3.20", "OTHER": "y"},
    )
    assert p.stage(0).base == StageBase(image="alpine:3.20")
    assert p.from_args == {"IMG", "TAG"}
    assert p.meta_arg_names == {"IMG", "TAG", "OTHER"}
    assert ("OTHER", "y") in p.global_args
    assert ("TARGETSTAGE", "") in p.global_args
    assert ("TARGETARCH", "amd64") in p.global_args
    assert ("BUILDPLATFORM", "linux/arm64") in p.global_args


def test_from_args_ignore_pruned_stages() -> None:
    p = _plan_text("ARG A=x\nARG B=y\nFROM $A AS one\nFROM $B AS two\n", target="one")
    assert p.from_args == {"A"}


def test_platforms() -> None:
    p = _plan_text(
        "FROM --platform=$BUILDPLATFORM golang AS build\n"
        "FROM --platform=linux/arm/v7 alpine AS arm\n"
        "FROM --platform=linux/s390x build AS child\n"
        "FROM alpine\nCOPY --from=child / /\nCOPY --from=arm / /\n"
    )
    assert p.stage(0).platform == BUILD
    assert p.stage(1).platform == Platform("linux", "arm", "v7")
    assert p.stage(2).platform == BUILD  # a stage built FROM a stage inherits its platform
    assert p.stage(3).platform == TARGET


def test_empty_platform() -> None:
    with pytest.raises(DockerfileError, match=r"^Dockerfile:1: FROM: empty platform value"):
        _plan_text("FROM --platform=$NOPE alpine\n")


def test_copy_from_later_stage_is_rejected() -> None:
    with pytest.raises(
        StageGraphError,
        match=r'^Dockerfile:2: COPY --from: cannot use stage "later", it needs to be '
        r'defined before current stage "stage-0"$',
    ):
        _plan_text(
            "FROM alpine\nCOPY --from=later / /\nFROM busybox AS later\nFROM scratch\n"
            "COPY --from=0 / /\n"
        )


def test_cycle_is_reported_even_in_pruned_stages() -> None:
    with pytest.raises(StageGraphError, match=r"^Dockerfile:2: stage cycle: a -> b -> a$"):
        _plan_text(
            "FROM alpine AS a\nCOPY --from=b / /\nFROM alpine AS b\nCOPY --from=a / /\n"
            "FROM scratch\n"
        )


def test_duplicate_stage_name_warns() -> None:
    p = _plan_text("FROM alpine AS x\nFROM x AS x\nFROM scratch\nCOPY --from=x / /\n")
    assert p.stage(2).deps == (1,)
    assert p.warnings == (
        'Dockerfile:2: stage name "x" is already used at Dockerfile:1; '
        "later references use this stage",
    )
