"""Build checks (``stages/checks.py``): each rule on the examples of its page in Docker's
build checks reference (https://docs.docker.com/reference/build-checks/), the bad example
fires with BuildKit's message, the good one does not; and the ``# check=`` directive."""

from __future__ import annotations

import dataclasses

import pytest

from rootbuild.dockerfile.parser import parse_dockerfile
from rootbuild.errors import DockerfileError
from rootbuild.platform import Platform
from rootbuild.stages.checks import (
    RULES,
    CheckConfig,
    check_config,
    parse_check_config,
    run_checks,
)
from rootbuild.stages.config import ImageConfig

AMD64 = Platform("linux", "amd64")
IMAGE = dataclasses.replace(ImageConfig.scratch(AMD64), env=("PATH=/usr/bin:/bin", "HOME=/"))


def lint(text: str, config: CheckConfig | None = None) -> list[tuple[str, int, str]]:
    """(rule, line, message) of every warning; every stage's base image is IMAGE."""
    dockerfile = parse_dockerfile(text)
    bases = {stage.index: IMAGE for stage in dockerfile.stages}
    return [(w.rule, w.location.line, w.message)
            for w in run_checks(dockerfile, text, config=config or CheckConfig(), bases=bases)]


def rules(text: str, config: CheckConfig | None = None) -> list[str]:
    return [rule for rule, _, _ in lint(text, config)]


@pytest.mark.parametrize(("bad", "good", "expected"), [
    ("FROM alpine AS BuilderBase\n", "FROM alpine AS builder-base\n",
     ("StageNameCasing", 1, "Stage name 'BuilderBase' should be lowercase")),
    ("FROM debian:latest as builder\n", "FROM debian:latest AS deb-builder\n",
     ("FromAsCasing", 1, "'as' and 'FROM' keywords' casing do not match")),
    ("from debian:latest AS builder\n", "from debian:latest as deb-builder\n",
     ("FromAsCasing", 1, "'AS' and 'from' keywords' casing do not match")),
    ("FROM debian:latest AS builder\nRUN apt-get install \\\n\n    wget\n",
     "FROM debian:latest AS builder\nRUN apt-get install \\\n    wget\n",
     ("NoEmptyContinuation", 2, "Empty continuation line")),
    ("FROM alpine\nRUN echo hello > /greeting.txt\nEntrYpoint [\"cat\", \"/greeting.txt\"]\n",
     "FROM alpine\nRUN echo hello > /greeting.txt\nENTRYPOINT [\"cat\", \"/greeting.txt\"]\n",
     ("ConsistentInstructionCasing", 3,
      "Command 'EntrYpoint' should match the case of the command majority (uppercase)")),
    ("FROM debian:latest AS builder\nRUN apt-get update\nFROM golang:latest AS builder\n",
     "FROM debian:latest AS deb-builder\nRUN apt-get update\nFROM golang:latest AS go-builder\n",
     ("DuplicateStageName", 3, 'Duplicate stage name "builder", stage names should be unique')),
    ("FROM alpine AS scratch\nFROM alpine AS context\n", "FROM alpine AS builder\n",
     ("ReservedStageName", 1, 'Stage name should not use the same name as reserved stage '
      '"scratch"')),
    ("FROM alpine\nENTRYPOINT my-program start\n",
     "FROM alpine\nENTRYPOINT [\"my-program\", \"start\"]\n",
     ("JSONArgsRecommended", 2, "JSON arguments recommended for ENTRYPOINT to prevent "
      "unintended behavior related to OS signals")),
    ("FROM alpine\nMAINTAINER moby@example.com\n",
     "FROM alpine\nLABEL org.opencontainers.image.authors=\"moby@example.com\"\n",
     ("MaintainerDeprecated", 2, "Maintainer instruction is deprecated in favor of using "
      "label")),
    ("FROM node:22${VARIANT} AS jsbuilder\n",
     "ARG VARIANT=\"-alpine3.20\"\nFROM node:22${VARIANT} AS jsbuilder\n",
     ("UndefinedArgInFrom", 1, "FROM argument 'VARIANT' is not declared")),
    ("FROM nginx AS web\nWORKDIR usr/share/nginx/html\nCOPY public .\n",
     "FROM nginx AS web\nWORKDIR /usr/share/nginx/html\nCOPY public .\n",
     ("WorkdirRelativePath", 2, 'Relative workdir "usr/share/nginx/html" can have unexpected '
      "results if the base image changes")),
    ("FROM alpine AS base\nCOPY $foo .\n", "FROM alpine AS base\nARG foo\nCOPY $foo .\n",
     ("UndefinedVar", 2, "Usage of undefined variable '$foo'")),
    ("FROM alpine\nEXPOSE 80\nHEALTHCHECK CMD true\nHEALTHCHECK CMD false\n",
     "FROM alpine\nEXPOSE 80\nHEALTHCHECK CMD false\n",
     ("MultipleInstructionsDisallowed", 3, "Multiple HEALTHCHECK instructions should not be "
      "used in the same stage because only the last one will be used")),
    ("FROM alpine\nENV DEPS curl git make\n", "FROM alpine\nENV DEPS=\"curl git make\"\n",
     ("LegacyKeyValueFormat", 2, '"ENV key=value" should be used instead of legacy '
      '"ENV key value" format')),
    ("FROM --platform=$TARGETPLATFORM alpine AS builder\n", "FROM alpine AS builder\n",
     ("RedundantTargetPlatform", 1, "Setting platform to predefined $TARGETPLATFORM in FROM "
      "is redundant as this is the default behavior")),
    ("FROM scratch\nARG AWS_SECRET_ACCESS_KEY\n", "FROM scratch\nARG PUBLIC_KEY\n",
     ("SecretsUsedInArgOrEnv", 2, "Do not use ARG or ENV instructions for sensitive data "
      '(ARG "AWS_SECRET_ACCESS_KEY")')),
    ("ARG TAG\nFROM busybox:${TAG}\n", "ARG TAG=latest\nFROM busybox:${TAG}\n",
     ("InvalidDefaultArgInFrom", 2, "Default value for ARG busybox:${TAG} results in empty "
      "or invalid base image name")),
    ("FROM --platform=linux/amd64 alpine AS base\n",
     "FROM --platform=linux/amd64 alpine AS build_amd64\n",
     ("FromPlatformFlagConstDisallowed", 1, 'FROM --platform flag should not use constant '
      'value "linux/amd64"')),
    ("FROM alpine\nEXPOSE 80/TcP\n", "FROM alpine\nEXPOSE 80/tcp\n",
     ("ExposeProtoCasing", 2, "Defined protocol '80/TcP' in EXPOSE instruction should be "
      "lowercase")),
])
def test_rule_fires_on_the_docs_bad_example_only(
    bad: str, good: str, expected: tuple[str, int, str]
) -> None:
    assert expected in lint(bad)
    assert expected[0] not in rules(good)


def test_undefined_var_suggests_the_likely_name() -> None:
    """The UndefinedVar page: ``ENV PATH=$PAHT:/app/bin``."""
    assert lint("FROM alpine\nENV PATH=$PAHT:/app/bin\n") == [
        ("UndefinedVar", 2, "Usage of undefined variable '$PAHT' (did you mean $PATH?)")]


def test_undefined_var_sees_env_arg_and_parent_stages_but_not_run() -> None:
    text = (
        "FROM alpine AS base\n"
        "ENV APP=/app\n"
        "ARG VERSION\n"
        "RUN echo $NOT_CHECKED\n"
        "FROM base\n"
        "COPY a ${APP}/${VERSION}/${HOME}\n"
        "WORKDIR $MISSING\n"
        "LABEL v=${ALSO_MISSING:-x}\n"
    )
    assert [(r, line) for r, line, _ in lint(text) if r == "UndefinedVar"] == [
        ("UndefinedVar", 7), ("UndefinedVar", 8)]


def test_json_args_not_recommended_when_a_shell_is_set() -> None:
    assert "JSONArgsRecommended" not in rules(
        'FROM alpine\nSHELL ["/bin/bash", "-c"]\nCMD echo hi\n')
    assert "JSONArgsRecommended" in rules("FROM alpine\nCMD echo hi\n")


def test_invalid_definition_description_is_experimental() -> None:
    text = ("# bar this is the bar\nARG foo=bar\n\n# base2 is the stage\nFROM scratch AS base\n"
            "# foo2 is documented\nARG foo2=bar\n")
    assert "InvalidDefinitionDescription" not in rules(text)
    enabled = parse_check_config("experimental=InvalidDefinitionDescription")
    assert lint(text, enabled) == [
        ("InvalidDefinitionDescription", 2,
         "Comment for argument should follow the format: `# foo <description>`"),
        ("InvalidDefinitionDescription", 5,
         "Comment for build stage should follow the format: `# base <description>`"),
    ]


def test_clean_dockerfile_has_no_warning() -> None:
    assert lint('FROM alpine AS build\nARG V=1\nENV A=$V\nWORKDIR /src\nCOPY . .\n'
                'RUN make\nFROM build\nCMD ["/app"]\n') == []


def test_check_directive_skips_rules_and_asks_for_error() -> None:
    text = "# check=skip=JSONArgsRecommended,StageNameCasing;error=true\nFROM alpine AS Base\n" \
           "CMD run\nMAINTAINER me\n"
    config = check_config(text, "Dockerfile", {})
    assert config.error and config.skip == {"JSONArgsRecommended", "StageNameCasing"}
    assert rules(text, config) == ["MaintainerDeprecated"]
    assert rules(text, parse_check_config("skip=all")) == []
    # the build arg wins over the directive (BuildKit's BUILDKIT_DOCKERFILE_CHECK)
    assert check_config(text, "Dockerfile", {"BUILDKIT_DOCKERFILE_CHECK": "error=false"}) == \
        CheckConfig()


@pytest.mark.parametrize(("value", "message"), [
    ("skip", 'invalid check option "skip"'),
    ("error=maybe", 'failed to parse check option "error=maybe"'),
    ("colour=red", 'invalid check option "colour"'),
])
def test_bad_check_directive_is_a_located_error(value: str, message: str) -> None:
    with pytest.raises(DockerfileError, match="^Dockerfile:1: " + message):
        check_config(f"# check={value}\nFROM scratch\n", "Dockerfile", {})


def test_every_rule_has_its_docs_url() -> None:
    assert RULES["JSONArgsRecommended"].url == \
        "https://docs.docker.com/go/dockerfile/rule/json-args-recommended/"
    assert RULES["FromAsCasing"].url == "https://docs.docker.com/go/dockerfile/rule/from-as-casing/"


def test_copy_ignored_file_is_experimental_and_needs_the_ignore_rules() -> None:
    """The CopyIgnoredFile page: with ``*/tmp/*`` ignored, ``COPY ./tmp/helloworld.txt``."""
    from rootbuild.dockerfile.dockerignore import IgnoreMatcher

    text = "FROM scratch\nCOPY ./tmp/helloworld.txt /\nADD a.txt /\nCOPY --from=x tmp/y /\n"
    dockerfile = parse_dockerfile(text)
    ignore = IgnoreMatcher.parse("tmp/\na.txt\n")
    enabled = parse_check_config("experimental=CopyIgnoredFile")
    found = run_checks(dockerfile, text, config=enabled, ignore=ignore)
    assert [(w.rule, w.location.line, w.message) for w in found] == [
        ("CopyIgnoredFile", 2,
         'Attempting to Copy file "./tmp/helloworld.txt" that is excluded by .dockerignore'),
        ("CopyIgnoredFile", 3, 'Attempting to Add file "a.txt" that is excluded by .dockerignore'),
    ]
    assert run_checks(dockerfile, text, config=CheckConfig(), ignore=ignore) == ()


def test_platform_args_in_from_are_declared_and_resolve() -> None:
    text = ("FROM --platform=$BUILDPLATFORM golang:1-${TARGETARCH} AS build_amd64\n"
            "FROM build_${TARGETARCH}\n")
    assert rules(text) == []

