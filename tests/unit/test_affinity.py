"""The placement carrier (sandbox/affinity.py) on this process: reading the process tree and
its scheduler statistics from /proc, and a placement that has nothing to do staying inert.
(Pinning and widening a real step are integration tests: test_build_run_placement.py.)"""

from __future__ import annotations

import os
import subprocess
import threading

from rootbuild.sandbox.affinity import StepCpu, children, read_stats, tree_threads


def test_the_tree_holds_threads_and_children_with_their_schedstat() -> None:
    stop = threading.Event()
    worker = threading.Thread(target=stop.wait)
    worker.start()
    child = subprocess.Popen(["sleep", "30"])
    try:
        me = os.getpid()
        assert child.pid in children(me)
        tids = {tid for _, tid in tree_threads(me)}
        assert {me, worker.native_id, child.pid} <= tids
        stats = read_stats(me)
        assert stats[me].run_ns > 0 and stats[me].slices > 0
    finally:
        child.kill()
        child.wait()
        stop.set()
        worker.join()


def test_nothing_to_place_is_inert() -> None:
    before = os.sched_getaffinity(0)
    for cpu in (None, max(before) + 64):  # none chosen; one this process may not use
        placement = StepCpu(cpu)
        assert placement.cpu is None and placement.interval is None
        placement.pin()
        placement.tick()
        placement.unpin_self()
        assert os.sched_getaffinity(0) == before
