"""ONBUILD triggers, put into the plan before the stage graph is built.

Rules (Dockerfile reference, ONBUILD; BuildKit ``dockerfile2llb`` parses a base's
``Config.OnBuild`` into commands and prepends them to the child stage before it resolves
stage dependencies):
- A stage's triggers come from its base: an image's config ``OnBuild`` (the caller reads
  it), or, for a stage built ``FROM`` an earlier stage, that stage's own ``ONBUILD``
  instructions (``begin_stage`` cleared what its base carried, as Docker does).
- Triggers are parsed with the front end, located at the child's ``FROM`` line, and run
  before the stage's own instructions. Because they are in the plan, a trigger's
  ``COPY --from=<stage>`` or ``RUN --mount=from=<stage>`` is an edge of the graph like any
  other: the stage it names is built, not pruned.
- ``ONBUILD``, ``FROM`` and ``MAINTAINER`` are refused as triggers (the Docker builder's
  messages), wherever the trigger came from.
- Pure: the caller fetches image configs; this module only parses and places.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from rootbuild.dockerfile.instructions import (
    Dockerfile,
    From,
    Instruction,
    Maintainer,
    Onbuild,
    StageSpec,
)
from rootbuild.dockerfile.parser import parse_instruction
from rootbuild.errors import DockerfileError, Location


def stage_triggers(spec: StageSpec) -> tuple[str, ...]:
    """The triggers a stage built ``FROM`` stage ``spec`` runs: ``spec``'s own ONBUILD
    instructions, in order (the text after ``ONBUILD``)."""
    return tuple(i.trigger for i in spec.instructions if isinstance(i, Onbuild))


def parse_trigger(text: str, location: Location, escape: str) -> Instruction:
    """One trigger as an instruction located at the child's FROM line."""
    instr = parse_instruction(text, location, escape)
    if isinstance(instr, Onbuild):
        raise DockerfileError(
            f"ONBUILD {text}: chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed", location
        )
    if isinstance(instr, From | Maintainer):
        raise DockerfileError(
            f"ONBUILD {text}: {instr.keyword} isn't allowed as an ONBUILD trigger", location
        )
    return instr


def with_triggers(dockerfile: Dockerfile, triggers: Mapping[int, tuple[str, ...]]) -> Dockerfile:
    """``dockerfile`` with each stage's ``onbuild`` set from ``triggers`` (stage index ->
    trigger texts, base order); stages not in ``triggers`` get none."""
    escape = dockerfile.directives.escape
    stages = tuple(
        dataclasses.replace(
            spec,
            onbuild=tuple(
                parse_trigger(text, spec.from_.location, escape)
                for text in triggers.get(spec.index, ())
            ),
        )
        for spec in dockerfile.stages
    )
    return dataclasses.replace(dockerfile, stages=stages)
