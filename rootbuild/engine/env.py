"""What every stage of one build reads and nobody changes: ``BuildEnv``.

Rules:
- A frozen value made once when the build starts: the options, the build's clock, the
  predefined and global ARGs, the Dockerfile's escape character. Stages get it passed in;
  nothing reaches into the build object that made it.
- The clock: ``started`` (wall time the build began; cached steps record it), ``now``
  (RFC 3339 for history entries: SOURCE_DATE_EPOCH when given) and ``epoch_now`` (the
  mtime of files a step creates from nothing: heredocs, WORKDIR directories).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from rootbuild.engine.options import BuildOptions
from rootbuild.stages.args import predefined_args
from rootbuild.stages.config import format_timestamp, timestamp_from_epoch
from rootbuild.stages.plan import BuildPlan


@dataclass(frozen=True)
class Clock:
    started: float
    now: str
    epoch_now: int

    @classmethod
    def start(cls, epoch: int | None, started: float | None = None) -> Clock:
        began = time.time() if started is None else started
        if epoch is not None:
            return cls(began, timestamp_from_epoch(epoch), epoch)
        return cls(began, format_timestamp(datetime.fromtimestamp(began, UTC)), int(began))


@dataclass(frozen=True)
class BuildEnv:
    options: BuildOptions
    clock: Clock
    predefined: Mapping[str, str]
    global_args: Mapping[str, str]
    escape: str

    @classmethod
    def for_plan(cls, options: BuildOptions, plan: BuildPlan, escape: str,
                 clock: Clock | None = None) -> BuildEnv:
        return cls(
            options=options,
            clock=clock or Clock.start(options.source_date_epoch),
            predefined=predefined_args(
                plan.target_platform, plan.build_platform,
                target_stage=plan.target_stage.name or None,
            ),
            global_args=dict(plan.global_args),
            escape=escape,
        )
