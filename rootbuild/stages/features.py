"""What a plan asks of the engine beyond plain RUN/COPY/ADD: the flags an engine may not
carry out yet, found before any step runs.

Rules:
- ``required_features(plan)`` lists, in build order (a stage's ONBUILD triggers first),
  every use of a flag that names a capability (``RUN --mount=type=cache``,
  ``COPY --parents``, a symbolic ``--chmod``, ``ADD <url>`` ...), each with its location.
- The engine states what it executes as a set of feature names; ``check_supported``
  refuses the first use of anything else with the same message the step would have
  given, at its line, so a build never runs minutes of steps before an unsupported one.
- Words are looked at as written. One that holds a variable (``ADD $URL /x``,
  ``--chmod=$MODE``) is judged when its step runs (the engine keeps that check too).
- Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from rootbuild.dockerfile.instructions import Add, Copy, Instruction, Run, ShellCommand
from rootbuild.errors import ContextError, DockerfileError, Location, RootbuildError, StepError
from rootbuild.stages.evaluate import REMOTE_PREFIXES, SINGLE_HEREDOC
from rootbuild.stages.plan import BuildPlan


@dataclass(frozen=True)
class Feature:
    """One use of a capability: ``name`` is its stable id (``run.mount.cache``,
    ``copy.parents``, ``chmod.symbolic``, ``run.heredoc.shebang``,
    ``run.security.insecure``, ``source.remote``); ``message`` what refusing it says."""

    name: str
    message: str
    location: Location
    error: type[RootbuildError] = DockerfileError


def _of_instruction(instr: Instruction) -> Iterator[Feature]:
    loc = instr.location
    if isinstance(instr, Run):
        if instr.mounts:
            for kind in sorted({m.type for m in instr.mounts}):
                yield Feature(f"run.mount.{kind}",
                              f"RUN --mount=type={kind}: not supported yet", loc, StepError)
        if instr.security == "insecure":
            yield Feature("run.security.insecure",
                          "RUN --security=insecure: not supported by this engine",
                          loc, StepError)
        if (
            isinstance(instr.command, ShellCommand) and len(instr.heredocs) == 1
            and SINGLE_HEREDOC.match(instr.command.text.strip())
            and instr.heredocs[0].content.startswith("#!")
        ):
            yield Feature("run.heredoc.shebang", "RUN with a #! heredoc: not supported yet",
                          loc, StepError)
        return
    if not isinstance(instr, Copy | Add):
        return
    keyword = instr.keyword
    if isinstance(instr, Copy) and instr.parents:
        yield Feature("copy.parents", f"{keyword} --parents: not supported yet", loc,
                      ContextError)
    chmod = instr.chmod
    if chmod and "$" not in chmod and not chmod.isdigit():
        yield Feature("chmod.symbolic", f"--chmod={chmod}: only octal modes are supported",
                      loc)
    if isinstance(instr, Add):
        for src in instr.sources:
            if src.startswith(REMOTE_PREFIXES):
                yield Feature(
                    "source.remote",
                    f'{keyword}: source "{src}": remote sources are not supported yet',
                    loc, ContextError,
                )


def required_features(plan: BuildPlan) -> tuple[Feature, ...]:
    """Every capability use of the stages ``plan`` builds, in build order."""
    found: list[Feature] = []
    for index in plan.order:
        stage = plan.stage(index)
        for instr in (*stage.onbuild, *stage.instructions):
            found.extend(_of_instruction(instr))
    return tuple(found)


def check_supported(plan: BuildPlan, supported: frozenset[str]) -> None:
    """Raise the located error of the first feature ``plan`` uses outside ``supported``."""
    for feature in required_features(plan):
        if feature.name not in supported:
            raise feature.error(feature.message, feature.location)
