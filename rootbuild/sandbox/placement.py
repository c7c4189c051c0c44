"""Where a RUN step runs: the CPU it shares with its FUSE server, and when to let it go.

Why: every file operation of a step is a FUSE request, a round trip between the step's
process and the overlay server. When the two sit on different CPUs, each request wakes an
idle CPU; on the virtual machines CI runs on that costs tens of microseconds each way
(an inter-processor interrupt, a halted vCPU scheduled again), more than the request's own
work. On one CPU a round trip is a plain context switch: an untar of 5,000 files through the
overlay took 0.92 s there against 3.38 s spread over two CPUs (docs/benchmarks.md, "CPU
placement"). So a step starts on one CPU together with its server, and is given every CPU
the builder may use as soon as it wants more than one: several of its threads wait for that
CPU at once (``make -j``), which the kernel's per-thread run-queue delays show.

Rules (pure: no I/O; ``sandbox/affinity.py`` reads /proc and sets masks):
- ``CpuSlots`` hands each concurrent step the allowed CPU with the fewest steps on it
  (lowest number first); with a single allowed CPU nothing is pinned.
- ``Contention`` is fed per-thread scheduler statistics (``/proc/<pid>/task/<tid>/schedstat``:
  time on the CPU, time waiting for it, timeslices) every ``INTERVAL_S``. An interval is
  contended when the step's threads together waited at least ``WAIT_SHARE`` of it *and* on
  average ``MIN_WAIT_PER_SLICE_NS`` or more per timeslice. The second test tells CPU hunger
  (a runnable thread waits out a whole timeslice of another, milliseconds) from the FUSE
  ping-pong itself (each side waits microseconds for the other to block): both spend a
  large share of the time "waiting".
- ``STREAK`` contended intervals in a row widen the step; a step once widened stays so.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

INTERVAL_S = 0.2
WAIT_SHARE = 0.25
MIN_WAIT_PER_SLICE_NS = 500_000
STREAK = 2


@dataclass(frozen=True)
class ThreadStat:
    """One thread's ``schedstat``: nanoseconds on a CPU, nanoseconds runnable but waiting,
    timeslices run."""

    run_ns: int
    wait_ns: int
    slices: int

    @classmethod
    def parse(cls, text: str) -> ThreadStat:
        run_ns, wait_ns, slices = (int(f) for f in text.split()[:3])
        return cls(run_ns, wait_ns, slices)


ZERO = ThreadStat(0, 0, 0)


def contended(
    before: Mapping[int, ThreadStat], after: Mapping[int, ThreadStat], interval_ns: int
) -> bool:
    """Did the threads of ``after`` (by tid) want more than their one CPU between the two
    readings? A thread first seen in ``after`` counts from zero: it was born within the
    interval."""
    if interval_ns <= 0:
        return False
    waited = slices = 0
    for tid, now in after.items():
        then = before.get(tid, ZERO)
        if now.slices < then.slices:  # a reused tid: another thread
            then = ZERO
        waited += now.wait_ns - then.wait_ns
        slices += now.slices - then.slices
    if slices <= 0:
        return False
    return waited >= WAIT_SHARE * interval_ns and waited >= MIN_WAIT_PER_SLICE_NS * slices


class Contention:
    """Feed readings in time order; ``observe`` answers True once, when the step should be
    given every CPU."""

    def __init__(self) -> None:
        self._last: tuple[int, Mapping[int, ThreadStat]] | None = None
        self._streak = 0
        self.widened = False

    def observe(self, now_ns: int, stats: Mapping[int, ThreadStat]) -> bool:
        if self.widened:
            return False
        last, self._last = self._last, (now_ns, stats)
        if last is None:
            return False
        if contended(last[1], stats, now_ns - last[0]):
            self._streak += 1
        else:
            self._streak = 0
        if self._streak >= STREAK:
            self.widened = True
        return self.widened


class CpuSlots:
    """The CPUs a builder may use and how many running steps each holds."""

    def __init__(self, allowed: Iterable[int]) -> None:
        self.allowed = tuple(sorted(set(allowed)))
        self._load = dict.fromkeys(self.allowed, 0)

    def take(self) -> int | None:
        """A CPU for a new step, or None where there is nothing to choose (one CPU)."""
        if len(self.allowed) < 2:
            return None
        cpu = min(self.allowed, key=lambda c: (self._load[c], c))
        self._load[cpu] += 1
        return cpu

    def give(self, cpu: int | None) -> None:
        if cpu is not None and self._load.get(cpu, 0) > 0:
            self._load[cpu] -= 1
