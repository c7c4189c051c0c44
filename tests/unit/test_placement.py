"""The CPU placement policy (sandbox/placement.py): which CPU a step gets, and when the
scheduler statistics say it wants more than one. The numbers are the shapes measured on
this class of machine (docs/benchmarks.md, "CPU placement"): the FUSE ping-pong of an untar
waits ~30 % of the time in ~3 us pieces; two CPU-bound processes on one CPU wait ~100 % in
~3.5 ms pieces."""

from __future__ import annotations

import pytest

from rootbuild.sandbox.placement import (
    INTERVAL_S,
    MIN_WAIT_PER_SLICE_NS,
    STREAK,
    Contention,
    CpuSlots,
    ThreadStat,
    contended,
)

INTERVAL = int(INTERVAL_S * 1e9)


def after(before: dict[int, ThreadStat], waited_ns: int, slices: int) -> dict[int, ThreadStat]:
    """``before`` with ``waited_ns`` and ``slices`` more, split over its threads."""
    n = len(before)
    return {
        tid: ThreadStat(s.run_ns + INTERVAL // n, s.wait_ns + waited_ns // n,
                        s.slices + slices // n)
        for tid, s in before.items()
    }


BASE = {10: ThreadStat(5_000_000, 1_000_000, 100), 11: ThreadStat(7_000_000, 2_000_000, 300)}


def test_schedstat_line_parses() -> None:
    assert ThreadStat.parse("109898153 33054509 356\n") == ThreadStat(109898153, 33054509, 356)
    with pytest.raises(ValueError):
        ThreadStat.parse("")


def test_fuse_ping_pong_is_not_contention() -> None:
    # 30 % of the interval spent waiting, in 3 us pieces (20,000 timeslices)
    assert not contended(BASE, after(BASE, int(0.3 * INTERVAL), 20_000), INTERVAL)


def test_cpu_hunger_is_contention() -> None:
    # the whole interval waited, in 3.5 ms pieces
    assert contended(BASE, after(BASE, INTERVAL, 56), INTERVAL)


def test_short_waits_or_a_small_share_are_not_contention() -> None:
    # long pieces but only 10 % of the interval: a blip (the builder compressing a layer)
    assert not contended(BASE, after(BASE, int(0.1 * INTERVAL), 6), INTERVAL)
    # a large share in pieces just under the limit
    slices = 2 * INTERVAL // MIN_WAIT_PER_SLICE_NS
    assert not contended(BASE, after(BASE, 2 * INTERVAL - 2 * slices, slices + 2), INTERVAL)


def test_threads_born_in_the_interval_count_from_zero_and_reused_tids_too() -> None:
    born = {**BASE, 12: ThreadStat(INTERVAL, INTERVAL, 50)}
    assert contended(BASE, born, INTERVAL)
    # tid 10 now belongs to another thread: fewer slices than before
    reused = {10: ThreadStat(1_000, INTERVAL, 40)}
    assert contended(BASE, reused, INTERVAL)


def test_nothing_ran_or_no_time_passed() -> None:
    assert not contended(BASE, BASE, INTERVAL)
    assert not contended(BASE, after(BASE, INTERVAL, 56), 0)
    assert not contended({}, {}, INTERVAL)


def test_contention_widens_after_a_streak_and_only_once() -> None:
    watch = Contention()
    stats, now = BASE, 0
    assert not watch.observe(now, stats)  # the first reading has nothing to compare with
    answers = []
    for _ in range(STREAK):
        stats, now = after(stats, INTERVAL, 56), now + INTERVAL
        answers.append(watch.observe(now, stats))
    assert answers == [False] * (STREAK - 1) + [True]
    assert watch.widened
    stats, now = after(stats, INTERVAL, 56), now + INTERVAL
    assert not watch.observe(now, stats)  # already widened: said once


def test_a_quiet_interval_breaks_the_streak() -> None:
    watch = Contention()
    stats, now = BASE, 0
    watch.observe(now, stats)
    for waited, slices in [(INTERVAL, 56)] * (STREAK - 1) + [(0, 10)] + [(INTERVAL, 56)] * (
        STREAK - 1
    ):
        stats, now = after(stats, waited, slices), now + INTERVAL
        assert not watch.observe(now, stats)
    stats, now = after(stats, INTERVAL, 56), now + INTERVAL
    assert watch.observe(now, stats)


def test_steps_get_the_least_loaded_cpu() -> None:
    slots = CpuSlots([3, 1, 2])
    assert slots.allowed == (1, 2, 3)
    assert [slots.take(), slots.take(), slots.take(), slots.take()] == [1, 2, 3, 1]
    slots.give(2)
    assert slots.take() == 2
    slots.give(None)  # a step that got none gives none back
    slots.give(7)  # not ours: ignored
    assert slots.take() == 2


def test_a_single_cpu_pins_nothing() -> None:
    slots = CpuSlots([0])
    assert slots.take() is None
    slots.give(None)
    assert slots.take() is None
