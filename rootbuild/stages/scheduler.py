"""Run a build plan's stages concurrently with trio.

Rules:
- A stage starts as soon as every stage it depends on has finished (not level by level, as
  BuildKit's solver runs independent stages in parallel). ``jobs=None`` (the default)
  runs every ready stage at once, as BuildKit runs every ready vertex: a stage that sleeps
  or waits on I/O never holds back another, and the kernel places them on the CPUs.
  ``jobs=N`` caps it at N stages (a ``trio.CapacityLimiter``, taken only after the
  dependencies are done, so waiting stages never hold a slot).
- ``build_stage`` gets the stage and the results of its dependencies (stage index -> result).
- The first stage that fails cancels every other stage, and ``run_plan`` raises that very
  exception, never an ``ExceptionGroup``: the user sees one clean error. Failures raised by
  other stages while they are being cancelled are consequences of that cancellation; they
  are attached to the first error as notes rather than dropped silently. A stage that
  raises an ``ExceptionGroup`` (its own nursery) with a single real cause is reported as
  that cause.
- This is the only module of ``rootbuild.stages`` that imports trio.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Mapping
from types import MappingProxyType
from typing import TypeVar

import trio

from rootbuild.errors import UsageError
from rootbuild.stages.plan import BuildPlan, StagePlan

R = TypeVar("R")


async def run_plan(
    plan: BuildPlan,
    build_stage: Callable[[StagePlan, Mapping[int, R]], Awaitable[R]],
    *,
    jobs: int | None = None,
) -> dict[int, R]:
    """Build every stage of ``plan``; return each stage's result by stage index. ``jobs``:
    at most that many stages at once; None: every stage whose dependencies are built."""
    if jobs is not None and jobs < 1:
        raise UsageError(f"run build: --jobs must be at least 1, not {jobs}")
    limiter = trio.CapacityLimiter(math.inf if jobs is None else jobs)
    finished = {stage.index: trio.Event() for stage in plan.stages}
    results: dict[int, R] = {}
    failures: list[Exception] = []

    async def run_one(stage: StagePlan, cancel_scope: trio.CancelScope) -> None:
        try:
            for dep in stage.deps:
                await finished[dep].wait()
            async with limiter:
                inputs = MappingProxyType({dep: results[dep] for dep in stage.deps})
                results[stage.index] = await build_stage(stage, inputs)
        except Exception as exc:  # every stage failure ends the build; see module rules
            failures.append(unwrap_group(exc))
            cancel_scope.cancel()
            return
        finished[stage.index].set()

    async with trio.open_nursery() as nursery:
        for index in plan.order:
            nursery.start_soon(run_one, plan.stage(index), nursery.cancel_scope)

    if failures:
        first = failures[0]
        for later in failures[1:]:
            first.add_note(f"also failed while the build was being cancelled: {later}")
        raise first
    return results


def unwrap_group(exc: Exception) -> Exception:
    """The one exception inside a (nested) exception group, ignoring trio's ``Cancelled``;
    ``exc`` itself when it is not a group or holds several real causes."""
    if not isinstance(exc, BaseExceptionGroup):
        return exc
    _, rest = exc.split(trio.Cancelled)
    leaves: list[BaseException] = []
    pending: list[BaseException] = [rest] if rest is not None else []
    while pending:
        item = pending.pop()
        if isinstance(item, BaseExceptionGroup):
            pending.extend(item.exceptions)
        else:
            leaves.append(item)
    if len(leaves) == 1 and isinstance(leaves[0], Exception):
        return leaves[0]
    return exc
