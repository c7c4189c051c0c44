"""ONBUILD triggers in the plan (``stages.onbuild``) and the plan-time feature check
(``stages.features``): pure."""

from __future__ import annotations

import pytest

from rootbuild.dockerfile.parser import parse_dockerfile
from rootbuild.errors import DockerfileError
from rootbuild.platform import Platform
from rootbuild.stages.features import check_supported, required_features
from rootbuild.stages.graph import StageBase
from rootbuild.stages.onbuild import stage_triggers, with_triggers
from rootbuild.stages.plan import plan, render

AMD64 = Platform("linux", "amd64")
TEXT = (
    "FROM scratch AS helper\nCOPY h /h\n"
    "FROM scratch AS unrelated\nCOPY u /u\n"
    "FROM base:1\nRUN echo\n"
)


def _plan(text: str, triggers: dict[int, tuple[str, ...]]) -> object:
    dockerfile = with_triggers(parse_dockerfile(text), triggers)
    return plan(dockerfile, target=None, build_args={}, target_platform=AMD64,
                build_platform=AMD64)


def test_a_triggers_copy_from_is_an_edge_of_the_graph() -> None:
    before = _plan(TEXT, {})
    assert before.pruned == (0, 1)  # type: ignore[attr-defined]
    after = _plan(TEXT, {2: ("COPY --from=helper /h /h2",)})
    assert after.pruned == (1,)  # type: ignore[attr-defined]
    stage = after.stage(2)  # type: ignore[attr-defined]
    assert stage.deps == (0,)
    assert dict(stage.refs)["helper"] == StageBase(stage=0)
    assert [t.original for t in stage.onbuild] == ["COPY --from=helper /h /h2"]
    assert stage.onbuild[0].location.line == 5  # located at the child's FROM
    assert "  onbuild 5: COPY --from=helper /h /h2" in render(after)  # type: ignore[arg-type]


def test_a_triggers_mount_from_is_an_edge_too() -> None:
    after = _plan(TEXT, {2: ("RUN --mount=from=helper,target=/h true",)})
    assert after.stage(2).deps == (0,)  # type: ignore[attr-defined]


def test_stage_triggers_are_the_stages_own_onbuild_instructions() -> None:
    dockerfile = parse_dockerfile("FROM scratch\nONBUILD RUN a\nRUN b\nONBUILD COPY x /x\n")
    assert stage_triggers(dockerfile.stages[0]) == ("RUN a", "COPY x /x")


@pytest.mark.parametrize(
    ("trigger", "message"),
    [
        ("ONBUILD RUN x", r"chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed"),
        ("FROM alpine", r"FROM isn't allowed as an ONBUILD trigger"),
        ("MAINTAINER me", r"MAINTAINER isn't allowed as an ONBUILD trigger"),
    ],
)
def test_forbidden_triggers_are_located_errors(trigger: str, message: str) -> None:
    with pytest.raises(DockerfileError, match=rf"^Dockerfile:5: ONBUILD {trigger}: {message}$"):
        _plan(TEXT, {2: (trigger,)})


def test_features_are_found_in_triggers_and_in_build_order() -> None:
    text = "FROM scratch AS a\nCOPY --parents x /y/\nFROM a\nCOPY --chmod=u+x f /f\n"
    p = _plan(text, {1: ("ADD https://example.invalid/z /z",)})
    found = [(f.name, f.location.line) for f in required_features(p)]  # type: ignore[arg-type]
    assert found == [("copy.parents", 2), ("source.remote", 3), ("chmod.symbolic", 4)]
    check_supported(p, frozenset({"copy.parents", "source.remote", "chmod.symbolic"}))  # type: ignore[arg-type]


def test_words_with_variables_are_left_to_the_step() -> None:
    text = "FROM scratch\nARG M=u+x\nCOPY --chmod=$M f /f\nADD $URL /z\n"
    assert required_features(_plan(text, {})) == ()  # type: ignore[arg-type]
