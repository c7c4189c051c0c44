"""Pure parts of the per-step limits (sandbox/limits.py), the slot id mapping
(sandbox/idmap.py ``slot_plan``) and the limit flags of BuildOptions."""

from __future__ import annotations

from pathlib import Path

import pytest

from rootbuild.engine.options import BuildOptions
from rootbuild.errors import SandboxError, UsageError
from rootbuild.sandbox.idmap import IdRange, plan_idmap, slot_blocks, slot_plan
from rootbuild.sandbox.limits import (
    NPROC_SLACK,
    PAGE,
    UNTRUSTED_LOG_BYTES,
    UNTRUSTED_MEMORY,
    UNTRUSTED_PIDS,
    OutputCap,
    ProcEntry,
    StepLimits,
    check,
    descendants,
    nproc_value,
    over_limit,
    parse_stat,
)
from rootbuild.sandbox.spec import DirRoot, StepSpec

# pid 1 of the host, the step's pid 1 (500) with a subtree, and an unrelated tree (900)
TABLE = {
    1: ProcEntry(0, 10), 500: ProcEntry(1, 100), 501: ProcEntry(500, 200),
    502: ProcEntry(501, 300), 503: ProcEntry(500, 400), 900: ProcEntry(1, 5000),
    901: ProcEntry(900, 5000),
}


def test_descendants_are_the_step_subtree_only() -> None:
    assert descendants(500, TABLE) == {500, 501, 502, 503}
    assert descendants(42, TABLE) == set()  # the step is gone


def test_memory_decision_sums_resident_pages_of_the_subtree() -> None:
    total = (100 + 200 + 300 + 400) * PAGE
    assert check(StepLimits(memory=total), 500, TABLE) is None
    line = check(StepLimits(memory=total - 1), 500, TABLE)
    assert line is not None and line.startswith("memory limit ") and " exceeded " in line


def test_pids_decision_counts_processes_and_names_the_limit() -> None:
    assert check(StepLimits(pids=5), 500, TABLE) is None
    assert check(StepLimits(pids=4), 500, TABLE) == "pids limit 4 reached"
    assert over_limit(StepLimits(), 10_000, 1 << 40) is None


def test_memory_message_uses_binary_units() -> None:
    assert over_limit(StepLimits(memory=64 << 20), 1, 100 << 20) == (
        "memory limit 64MiB exceeded (resident memory of the step's processes: 100MiB)")


def test_parse_stat_handles_parentheses_in_the_command() -> None:
    fields = " ".join(["S", "77"] + ["0"] * 19 + ["1234"] + ["0"] * 20)
    assert parse_stat(f"12 (a) b) {fields}".encode()) == ProcEntry(77, 1234)
    assert parse_stat(b"garbage") is None


def test_output_cap_passes_the_first_bytes_and_notes_once() -> None:
    cap = OutputCap(10)
    assert cap.take(b"12345") == b"12345" and cap.note is None
    assert cap.take(b"67890abc") == b"67890"
    assert cap.note == "[output clipped, log limit 10B reached]"
    assert cap.take(b"more") == b""
    assert OutputCap(None).take(b"x" * 100) == b"x" * 100


def test_limits_cross_the_wire_and_are_validated(tmp_path: Path) -> None:
    limits = StepLimits(pids=7, memory=1 << 20, log_bytes=99)
    spec = StepSpec(argv=("true",), rootfs=DirRoot(tmp_path), scratch=tmp_path / "s",
                    limits=limits)
    assert StepSpec.from_json(spec.to_json()).limits == limits
    old_wire = spec.to_json()
    del old_wire["limits"]
    assert StepSpec.from_json(old_wire).limits == StepLimits()
    with pytest.raises(SandboxError, match="pids limit 0 is not positive"):
        StepLimits(pids=0).validate()
    with pytest.raises(SandboxError, match="not a number"):
        StepLimits.from_json({"pids": "7"})
    assert nproc_value(limits) == 14 + NPROC_SLACK


def test_untrusted_builds_get_default_limits_and_flags_win(tmp_path: Path) -> None:
    assert BuildOptions(tmp_path).step_limits() == StepLimits()
    assert BuildOptions(tmp_path, untrusted=True).step_limits() == StepLimits(
        UNTRUSTED_PIDS, UNTRUSTED_MEMORY, UNTRUSTED_LOG_BYTES)
    assert BuildOptions(tmp_path, untrusted=True, pids_limit=9).step_limits().pids == 9
    with pytest.raises(UsageError, match="--memory must be positive"):
        BuildOptions(tmp_path, memory_limit=0).validate()
    with pytest.raises(UsageError, match="--slot must be 0 or more"):
        BuildOptions(tmp_path, slot=-1).validate()


SUBUID = "alice:100000:65536\nbob:300000:65536\nalice:500000:131072\n"


def test_slot_plan_picks_whole_blocks_in_file_order_and_maps_the_user_apart() -> None:
    base = plan_idmap(uid=1000, gid=1000, name="alice", subuid=SUBUID, subgid=SUBUID,
                      helpers=True)
    assert slot_blocks(SUBUID, SUBUID, "alice", 1000) == 3
    assert slot_plan(base, 0, SUBUID, SUBUID, "alice", 1000, 1001).uids == (
        IdRange(0, 100000, 65536), IdRange(65536, 1000, 1))
    assert slot_plan(base, 2, SUBUID, SUBUID, "alice", 1000, 1001).gids == (
        IdRange(0, 565536, 65536), IdRange(65536, 1001, 1))
    with pytest.raises(SandboxError, match="--slot 3: /etc/subuid holds 3 block"):
        slot_plan(base, 3, SUBUID, SUBUID, "alice", 1000, 1001)


def test_slot_plan_needs_a_subordinate_range() -> None:
    single = plan_idmap(uid=1000, gid=1000, name="carol", subuid="", subgid="", helpers=True)
    with pytest.raises(SandboxError, match="--slot 0: needs newuidmap"):
        slot_plan(single, 0, "", "", "carol", 1000, 1000)


def test_watchdog_reads_a_process_tree(tmp_path: Path) -> None:
    """A tree of its own (a shell and its two sleeps): the test process may have other
    children (servers other tests started), which must not count."""
    import os
    import subprocess
    import time

    from rootbuild.sandbox.limits import Watchdog

    child = subprocess.Popen(["sh", "-c", "sleep 30 & sleep 30 & wait"])
    try:
        deadline = time.monotonic() + 10
        watch = Watchdog(StepLimits(pids=4), child.pid)
        while len(watch.members) < 3 and time.monotonic() < deadline:
            assert watch.tick() is None  # the shell and its sleeps: 3 < 4
            time.sleep(0.01)
        assert len(watch.members) == 3 and child.pid in watch.members
        assert os.getpid() in watch.others  # outside the tree: not re-read at the next poll
        assert Watchdog(StepLimits(pids=3), child.pid).tick() == "pids limit 3 reached"
    finally:
        child.kill()
        child.wait()
