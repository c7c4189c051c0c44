"""A RUN step's CPU placement, carried out by the sandbox init (the policy and the reasons
are in ``placement.py``).

Rules:
- The init pins itself to the step's CPU before the FUSE server starts and the step is
  forked, so both inherit that one-CPU mask; once the step runs, the init takes the
  builder's mask back for itself: only the server and the step's tree stay pinned.
- While the step runs, the init reads the scheduler statistics of every thread below it
  (the server, the step and all it started, orphans included: they are reparented to the
  step's pid 1, or to the init in host-bind mode) every ``INTERVAL_S``, and widens them all
  to the builder's mask when ``Contention`` says so. A thread created during the widening
  copies its parent's old mask: the walk repeats until it finds none left (bounded).
- Reading or setting a thread that has just exited fails (ESRCH): ignored. Placement is a
  matter of speed and never fails a step.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator

from rootbuild.sandbox.placement import INTERVAL_S, Contention, ThreadStat

WIDEN_PASSES = 5


def _threads(pid: int) -> list[int]:
    try:
        return [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        return []


def _thread_children(pid: int, tid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{tid}/children", "rb") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


def children(pid: int) -> set[int]:
    """The processes ``pid``'s threads started (and have not reaped)."""
    return {c for tid in _threads(pid) for c in _thread_children(pid, tid)}


def tree_threads(root: int) -> Iterator[tuple[int, int]]:
    """(pid, tid) of every thread of ``root`` and of its descendants."""
    queue, seen = [root], {root}
    while queue:
        pid = queue.pop()
        for tid in _threads(pid):
            yield pid, tid
            for child in _thread_children(pid, tid):
                if child not in seen:
                    seen.add(child)
                    queue.append(child)


def read_stats(root: int) -> dict[int, ThreadStat]:
    stats = {}
    for pid, tid in tree_threads(root):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat", encoding="ascii") as f:
                stats[tid] = ThreadStat.parse(f.read())
        except (OSError, ValueError):
            continue
    return stats


def widen(root: int, mask: set[int]) -> None:
    """Give every thread below ``root`` the CPU mask ``mask``."""
    for _ in range(WIDEN_PASSES):
        changed = False
        for _pid, tid in tree_threads(root):
            with contextlib.suppress(OSError):
                if os.sched_getaffinity(tid) != mask:
                    os.sched_setaffinity(tid, mask)
                    changed = True
        if not changed:
            return


class StepCpu:
    """The init's handle on its step's placement; inert when ``cpu`` is None (a single
    allowed CPU, or a builder that chose none)."""

    def __init__(self, cpu: int | None) -> None:
        self.allowed = os.sched_getaffinity(0)
        self.cpu = cpu if cpu in self.allowed and len(self.allowed) > 1 else None
        self._contention = Contention()
        self._root = os.getpid()

    @property
    def interval(self) -> float | None:
        """Seconds until the next ``tick`` is due, None when there is nothing to watch."""
        if self.cpu is None or self._contention.widened:
            return None
        return INTERVAL_S

    def pin(self) -> None:
        if self.cpu is None:
            return
        try:
            os.sched_setaffinity(0, {self.cpu})
        except OSError:  # the CPU went offline, or a cpuset changed since the builder looked
            self.cpu = None

    def unpin_self(self) -> None:
        if self.cpu is not None:
            with contextlib.suppress(OSError):
                os.sched_setaffinity(0, self.allowed)

    def tick(self) -> None:
        if self.interval is None:
            return
        if self._contention.observe(time.monotonic_ns(), read_stats(self._root)):
            widen(self._root, self.allowed)
