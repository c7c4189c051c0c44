"""ARG scoping: the global scope, in-stage resolution, RUN's history prefix, unused args."""

from __future__ import annotations

import pytest

from rootbuild.dockerfile.instructions import Arg, Directives, Dockerfile
from rootbuild.errors import Location
from rootbuild.platform import Platform
from rootbuild.stages.args import (
    meta_args,
    predefined_args,
    proxy_env,
    resolve_stage_arg,
    run_history_args,
    unused_build_args,
    unused_build_args_warning,
)

LOC = Location("Dockerfile", 1)
AMD64 = Platform("linux", "amd64")
ARMV7 = Platform("linux", "arm", "v7")


def dockerfile(*args: tuple[str, str | None], escape: str = "\\") -> Dockerfile:
    meta = tuple(Arg(LOC, f"ARG {k}", ((k, v),)) for k, v in args)
    return Dockerfile("Dockerfile", Directives(escape=escape), meta, ())


def test_predefined_args_for_cross_build() -> None:
    assert predefined_args(ARMV7, AMD64) == {
        "BUILDPLATFORM": "linux/amd64",
        "BUILDOS": "linux",
        "BUILDARCH": "amd64",
        "BUILDVARIANT": "",
        "TARGETPLATFORM": "linux/arm/v7",
        "TARGETOS": "linux",
        "TARGETARCH": "arm",
        "TARGETVARIANT": "v7",
    }
    assert predefined_args(AMD64, AMD64, target_stage="final")["TARGETSTAGE"] == "final"


def test_meta_args_defaults_expand_in_order_and_see_predefined() -> None:
    df = dockerfile(("BASE", "alpine"), ("IMAGE", "${BASE}:3-${TARGETARCH}"), ("EMPTY", None))
    scope = meta_args(df, {}, predefined_args(AMD64, AMD64))
    assert scope["IMAGE"] == "alpine:3-amd64"
    assert "EMPTY" not in scope  # declared without default nor build-arg: no value


def test_meta_args_build_arg_overrides_default_and_predefined() -> None:
    df = dockerfile(("BASE", "alpine"), ("IMAGE", "$BASE"))
    used: set[str] = set()
    scope = meta_args(df, {"BASE": "debian", "TARGETARCH": "riscv64", "OTHER": "x"},
                      predefined_args(AMD64, AMD64), used)
    assert scope["IMAGE"] == "debian"
    assert scope["TARGETARCH"] == "riscv64"
    assert "OTHER" not in scope  # an undeclared build arg is not in any scope
    assert used == {"BASE", "IMAGE"}


def test_meta_args_use_the_dockerfile_escape_character() -> None:
    df = dockerfile(("A", "`$x"), escape="`")
    assert meta_args(df, {}, {})["A"] == "$x"


@pytest.mark.parametrize(
    ("name", "default", "build_args", "global_args", "expected"),
    [
        ("V", None, {}, {"V": "global"}, "global"),  # re-declared global takes its value
        ("V", "own", {}, {"V": "global"}, "own"),  # a default wins over the global
        ("V", "own", {"V": "cli"}, {"V": "global"}, "cli"),  # --build-arg wins over all
        ("V", None, {"V": "cli"}, {}, "cli"),
        ("V", None, {}, {}, None),  # no value at all
        ("V", "${HOME:-/root}/x", {}, {}, "/home/u/x"),  # default expanded in stage env
    ],
)
def test_resolve_stage_arg(
    name: str, default: str | None, build_args: dict[str, str],
    global_args: dict[str, str], expected: str | None,
) -> None:
    got = resolve_stage_arg(name, default, build_args=build_args, global_args=global_args,
                            env={"HOME": "/home/u"}, escape="\\", location=LOC)
    assert got == expected


def test_run_history_args_like_runcommandstring() -> None:
    args = [("A", "1"), ("B", None), ("A", "2"), ("C", "c")]
    # First-declaration order, one entry each, the environment's value winning (an ENV
    # of the same name set later shows here), a valueless ARG as "B=".
    assert run_history_args(args, {"A": "2", "C": "from-env"}) == [
        "|3", "A=2", "B=", "C=from-env"]
    assert run_history_args([], {"A": "1"}) == []


def test_proxy_env_is_given_in_both_cases() -> None:
    assert proxy_env({"http_proxy": "http://p:3128", "FOO": "x", "NO_PROXY": "local"}) == [
        ("HTTP_PROXY", "http://p:3128"), ("http_proxy", "http://p:3128"),
        ("NO_PROXY", "local"), ("no_proxy", "local"),
    ]


def test_unused_build_args_and_docker_warning() -> None:
    names = unused_build_args(
        ["FOO", "BAR", "USED", "HTTP_PROXY", "BUILDKIT_INLINE_CACHE", "SOURCE_DATE_EPOCH"],
        declared={"USED"},
    )
    assert names == ("BAR", "FOO")
    assert unused_build_args_warning(names) == (
        "[Warning] One or more build-args [BAR FOO] were not consumed")
    assert unused_build_args_warning(()) == ""
