"""The trio stage scheduler: dependency-driven start, --jobs limit, first failure wins."""

from __future__ import annotations

import itertools
from collections.abc import Mapping

import pytest
import trio
import trio.testing

from rootbuild.dockerfile.instructions import From
from rootbuild.errors import Location, StepError, UsageError
from rootbuild.platform import Platform
from rootbuild.stages.graph import StageBase
from rootbuild.stages.plan import BuildPlan, StagePlan
from rootbuild.stages.scheduler import run_plan

AMD64 = Platform("linux", "amd64")


def _plan(deps: dict[int, tuple[int, ...]]) -> BuildPlan:
    """A plan whose stage i depends on deps[i]; the highest index is the target."""
    stages = tuple(
        StagePlan(
            index=i,
            name=f"s{i}",
            base=StageBase(image="scratch"),
            platform=AMD64,
            deps=tuple(sorted(d)),
            images=(),
            from_=From(Location("Dockerfile", i + 1), "FROM scratch", "scratch", f"s{i}"),
            instructions=(),
            refs=(),
        )
        for i, d in sorted(deps.items())
    )
    return BuildPlan(
        dockerfile="Dockerfile",
        target=max(deps),
        stages=stages,
        order=tuple(sorted(deps)),
        levels=(),
        pruned=(),
        global_args=(),
        from_args=frozenset(),
        meta_arg_names=frozenset(),
        target_platform=AMD64,
        build_platform=AMD64,
    )


class _Recorder:
    def __init__(self, durations: dict[int, float]) -> None:
        self.durations = durations
        self.spans: dict[int, tuple[float, float]] = {}
        self.inputs: dict[int, dict[int, str]] = {}

    async def __call__(self, stage: StagePlan, deps: Mapping[int, str]) -> str:
        start = trio.current_time()
        self.inputs[stage.index] = dict(deps)
        await trio.sleep(self.durations.get(stage.index, 1))
        self.spans[stage.index] = (start, trio.current_time())
        return f"result-{stage.index}"


def _overlap(a: tuple[float, float], b: tuple[float, float]) -> bool:
    return a[0] < b[1] and b[0] < a[1]


async def test_independent_stages_overlap_and_results_flow(
    autojump_clock: trio.testing.MockClock,
) -> None:
    rec = _Recorder({0: 1, 1: 1, 2: 1})
    results = await run_plan(_plan({0: (), 1: (), 2: (0, 1)}), rec, jobs=4)
    assert results == {0: "result-0", 1: "result-1", 2: "result-2"}
    assert _overlap(rec.spans[0], rec.spans[1])
    assert rec.spans[2][0] >= max(rec.spans[0][1], rec.spans[1][1])
    assert rec.inputs == {0: {}, 1: {}, 2: {0: "result-0", 1: "result-1"}}


async def test_stage_starts_when_its_own_deps_are_done_not_per_level(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # 0 is fast, 1 is slow; 2 needs only 0, so it must start before 1 ends.
    rec = _Recorder({0: 1, 1: 10, 2: 1, 3: 1})
    await run_plan(_plan({0: (), 1: (), 2: (0,), 3: (1, 2)}), rec, jobs=4)
    assert rec.spans[2][0] == pytest.approx(rec.spans[0][1])
    assert rec.spans[2][1] < rec.spans[1][1]
    assert rec.spans[3][0] >= rec.spans[1][1]


async def test_jobs_one_serialises(autojump_clock: trio.testing.MockClock) -> None:
    rec = _Recorder({})
    await run_plan(_plan({0: (), 1: (), 2: (), 3: (0, 1, 2)}), rec, jobs=1)
    spans = sorted(rec.spans.values())
    for first, second in itertools.pairwise(spans):
        assert not _overlap(first, second)
    assert spans[-1][1] == pytest.approx(spans[0][0] + 4)


async def test_jobs_two_caps_concurrency(autojump_clock: trio.testing.MockClock) -> None:
    running = 0
    peak = 0

    async def build(stage: StagePlan, deps: Mapping[int, None]) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await trio.sleep(1)
        running -= 1

    await run_plan(_plan({0: (), 1: (), 2: (), 3: (), 4: ()}), build, jobs=2)
    assert peak == 2


async def test_first_failure_cancels_siblings_and_is_raised_as_is(
    autojump_clock: trio.testing.MockClock,
) -> None:
    boom = StepError("RUN: process exited with status 1", Location("Dockerfile", 3))
    started: list[int] = []
    finished: list[int] = []

    async def build(stage: StagePlan, deps: Mapping[int, None]) -> None:
        started.append(stage.index)
        if stage.index == 0:
            await trio.sleep(1)
            raise boom
        await trio.sleep(100)
        finished.append(stage.index)

    with pytest.raises(StepError) as info:
        await run_plan(_plan({0: (), 1: (), 2: (0, 1)}), build, jobs=4)
    assert info.value is boom
    assert str(info.value) == "Dockerfile:3: RUN: process exited with status 1"
    assert sorted(started) == [0, 1]  # 2 never started: its dependency failed
    assert finished == []
    assert trio.current_time() < 100


async def test_failures_during_cancellation_become_notes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def build(stage: StagePlan, deps: Mapping[int, None]) -> None:
        if stage.index == 0:
            await trio.sleep(1)
            raise StepError("RUN: first")
        try:
            await trio.sleep(100)
        except trio.Cancelled:
            raise StepError("RUN: cleanup broke") from None

    with pytest.raises(StepError) as info:
        await run_plan(_plan({0: (), 1: ()}), build, jobs=2)
    assert str(info.value) == "RUN: first"
    assert info.value.__notes__ == [
        "also failed while the build was being cancelled: RUN: cleanup broke"
    ]


async def test_single_error_in_a_stage_nursery_is_unwrapped(
    autojump_clock: trio.testing.MockClock,
) -> None:
    boom = StepError("RUN: inner failure")

    async def build(stage: StagePlan, deps: Mapping[int, None]) -> None:
        async def fail() -> None:
            raise boom

        async with trio.open_nursery() as nursery:  # strict groups: raises ExceptionGroup
            nursery.start_soon(trio.sleep, 10)
            nursery.start_soon(fail)

    with pytest.raises(StepError) as info:
        await run_plan(_plan({0: ()}), build, jobs=1)
    assert info.value is boom


async def test_several_real_causes_stay_grouped(autojump_clock: trio.testing.MockClock) -> None:
    async def build(stage: StagePlan, deps: Mapping[int, None]) -> None:
        raise ExceptionGroup("two", [StepError("RUN: a"), StepError("RUN: b")])

    with pytest.raises(ExceptionGroup):
        await run_plan(_plan({0: ()}), build, jobs=1)


async def test_jobs_must_be_positive() -> None:
    async def build(stage: StagePlan, deps: Mapping[int, None]) -> None:
        raise AssertionError("not called")

    with pytest.raises(UsageError, match=r"^run build: --jobs must be at least 1, not 0$"):
        await run_plan(_plan({0: ()}), build, jobs=0)


async def test_real_clock_parallelism() -> None:
    # No mock clock: two 0.2 s stages with jobs=2 finish well under 0.4 s.
    async def build(stage: StagePlan, deps: Mapping[int, None]) -> None:
        await trio.sleep(0.2)

    start = trio.current_time()
    await run_plan(_plan({0: (), 1: ()}), build, jobs=2)
    assert trio.current_time() - start < 0.38  # serial would take >= 0.4


async def test_default_runs_every_ready_stage_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Issue 14: no cap by default, however many CPUs there are (BuildKit runs every ready
    # vertex); 8 independent stages all run together, then the one that needs them.
    running = 0
    peak = 0

    async def build(stage: StagePlan, deps: Mapping[int, None]) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await trio.sleep(1)
        running -= 1

    await run_plan(_plan({**{i: () for i in range(8)}, 8: tuple(range(8))}), build)
    assert peak == 8
    assert trio.current_time() == pytest.approx(2)  # virtual time: one round, then stage 8
