"""Build checks of a planned build: run the rules, turn ``error=true`` into the build's
error, and say what was found (``--check`` output; the list at the end of a build).

Job: the plan's base images give each stage the config ``stages.checks`` needs (the Env
``UndefinedVar`` counts as defined, the Shell ``JSONArgsRecommended`` looks at); the rules
the ``# check=`` directive (or ``BUILDKIT_DOCKERFILE_CHECK``) enables run over the file.

Rules (https://docs.docker.com/build/checks/):
- A build with ``error=true`` fails before any step when a check fires (BuildKit: "lint
  violation found for rules: ..."); otherwise it builds and lists the warnings at the end
  (``N warnings found:`` then `` - Rule: message (line N)``).
- ``--check`` prints each warning with its rule's page and its line, then buildx's count
  line ("Check complete, ...").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rootbuild.dockerfile.dockerignore import IgnoreMatcher
from rootbuild.dockerfile.instructions import Dockerfile
from rootbuild.engine.bases import platform_of
from rootbuild.engine.options import BuildOptions
from rootbuild.engine.seams import BaseImages
from rootbuild.errors import DockerfileError
from rootbuild.stages.checks import CheckConfig, CheckWarning, check_config, run_checks
from rootbuild.stages.config import ImageConfig
from rootbuild.stages.plan import BuildPlan


@dataclass(frozen=True)
class CheckReport:
    warnings: tuple[CheckWarning, ...]
    config: CheckConfig
    text: str  # the Dockerfile, to quote lines

    @property
    def failed(self) -> bool:
        return self.config.error and bool(self.warnings)


async def stage_bases(
    the_plan: BuildPlan, base_images: BaseImages
) -> tuple[dict[int, ImageConfig], list[CheckWarning]]:
    """The base image config of every planned stage built FROM an image (or scratch), and
    an ``InvalidBaseImagePlatform`` warning for each base whose config declares another
    OS or architecture than the stage's platform."""
    found: dict[int, ImageConfig] = {}
    mismatched: list[CheckWarning] = []
    for stage in the_plan.stages:
        base = stage.base
        if base.is_scratch or base.context is not None:
            found[stage.index] = ImageConfig.scratch(stage.platform)
        elif base.image is not None:  # fetched by planning already: the store has it
            image = await base_images.get(base.image, stage.platform)
            found[stage.index] = ImageConfig.from_oci(image.config_json)
            actual, expected = platform_of(image), stage.platform
            if actual is not None and (actual.os, actual.architecture) != (
                    expected.os, expected.architecture):
                mismatched.append(CheckWarning(
                    "InvalidBaseImagePlatform",
                    f'Base image {base.image} was pulled with platform "{actual}", expected '
                    f'"{expected}" for current build', stage.from_.location))
    return found, mismatched


async def lint(dockerfile: Dockerfile, text: str, the_plan: BuildPlan, options: BuildOptions,
               base_images: BaseImages, ignore: IgnoreMatcher | None = None) -> CheckReport:
    """Run the enabled checks over a planned build (``ignore``: the context's rules)."""
    config = check_config(text, dockerfile.name, options.build_args)
    bases, mismatched = await stage_bases(the_plan, base_images)
    warnings = run_checks(dockerfile, text, config=config, bases=bases, ignore=ignore)
    extra = [w for w in mismatched if config.enabled(w.rule)]
    warnings = tuple(sorted((*warnings, *extra), key=lambda w: w.location.line))
    return CheckReport(warnings, config, text)


def violation(report: CheckReport) -> DockerfileError | None:
    """The error ``error=true`` makes of the warnings, located at the first one."""
    if not report.failed:
        return None
    names = ", ".join(dict.fromkeys(w.rule for w in report.warnings))
    return DockerfileError(f"lint violation found for rules: {names}",
                           report.warnings[0].location)


def render_check(report: CheckReport) -> str:
    """What ``--check`` prints: each warning with its rule's page and its line, then the
    count, in buildx's words."""
    lines = report.text.splitlines()
    out: list[str] = []
    for warning in report.warnings:
        out.append(f"{warning.location}: {warning.rule}: {warning.message}")
        out.append(f"  {warning.url}")
        number = warning.location.line
        if 0 < number <= len(lines):
            out.append(f"  {number:>4} | {lines[number - 1]}")
    count = len(report.warnings)
    if count == 0:
        out.append("Check complete, no warnings found.")
    elif count == 1:
        out.append("Check complete, 1 warning has been found!")
    else:
        out.append(f"Check complete, {count} warnings have been found!")
    return "\n".join(out) + "\n"


def render_summary(warnings: Sequence[CheckWarning]) -> str:
    """The end of a build's output: ``N warnings found:`` and one line each."""
    if not warnings:
        return ""
    head = "1 warning found:" if len(warnings) == 1 else f"{len(warnings)} warnings found:"
    items = [f" - {w.rule}: {w.message} (line {w.location.line})" for w in warnings]
    return "\n".join([head, *items]) + "\n"
