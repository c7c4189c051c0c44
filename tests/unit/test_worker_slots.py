"""The worker's slots (service/slots.py: which --slot each concurrent build gets, the check
at start), its job directories (service/jobdirs.py: held by a lock, swept when their owner
is gone) and the incident id an INTERNAL_ERROR gets (service/worker.py)."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
from pathlib import Path

from rootbuild.sandbox.idmap import SLOT_SPAN
from rootbuild.service import jobdirs
from rootbuild.service.jobs import JobState
from rootbuild.service.slots import slot_shortage, worker_slots
from rootbuild.service.worker import JobSpec, WorkerConfig, classify, incident, job_options

DIGEST = "sha256:" + "a" * 64
# alice: two blocks in two ranges (the second one larger than a block: 1 whole block);
# bob's range lies highest of all
SUBUID = ("alice:100000:65536\n"
          "bob:900000:65536\n"
          "alice:300000:70000\n")
SUBGID = "alice:100000:65536\n1000:200000:65536\n"


def test_slot_tasks_get_consecutive_slots_from_the_base() -> None:
    assert worker_slots(0, 1) == (0,)
    assert worker_slots(0, 2) == (0, 1)
    assert worker_slots(4, 3) == (4, 5, 6)


def test_job_options_carry_the_slot_and_the_workers_pids_limit(tmp_path: Path) -> None:
    spec = JobSpec(DIGEST, "FROM scratch\n")
    config = WorkerConfig(store=tmp_path, slot_base=2, pids_limit=40)
    options = job_options(spec, tmp_path / "ctx", tmp_path / "Dockerfile", config,
                          tmp_path / "anon.json", 3)
    options.validate()
    assert (options.slot, options.pids_limit) == (3, 40)
    assert options.step_limits().pids == 40
    # without a worker limit, the untrusted default
    plain = job_options(spec, tmp_path / "ctx", tmp_path / "Dockerfile",
                        WorkerConfig(store=tmp_path), tmp_path / "anon.json", 0)
    assert plain.pids_limit is None and plain.step_limits().pids == 512


def shortage(base: int, concurrency: int, *, helpers: bool = True) -> str | None:
    # alice's gids: by name and by uid 1000 (subuid(5) allows either)
    return slot_shortage(base, concurrency, subuid=SUBUID, subgid=SUBGID, name="alice",
                         uid=1000, helpers=helpers)


def test_slots_the_ranges_hold_pass() -> None:
    assert shortage(0, 1) is None
    assert shortage(0, 2) is None
    assert shortage(1, 1) is None


def test_slots_beyond_the_ranges_are_refused_with_the_fix() -> None:
    message = shortage(1, 2)
    assert message is not None and "\n" not in message
    assert message.startswith("worker: slots 1..2 (--slot-base 1, --concurrency 2) need 3 "
                              f"block(s) of {SLOT_SPAN} subordinate ids for 'alice'; ")
    assert "/etc/subuid holds 2 and /etc/subgid holds 2" in message
    # one more block, past every range of every user (bob's ends at 965536)
    first = 15 * SLOT_SPAN
    assert (f"fix: 'usermod --add-subuids {first}-{first + SLOT_SPAN - 1} --add-subgids "
            f"{first}-{first + SLOT_SPAN - 1} alice'") in message
    one = slot_shortage(0, 1, subuid=SUBUID, subgid="", name="alice", uid=1000,
                        helpers=True)
    assert one is not None and "slot 0 (" in one and "/etc/subgid holds 0" in one
    assert ") needs 1 block(s) of" in one
    assert "/etc/subuid" not in one.split(";")[1]  # only what is missing is named


def test_slots_need_the_helpers() -> None:
    message = shortage(0, 1, helpers=False)
    assert message is not None and "newuidmap/newgidmap" in message and "uidmap" in message


def test_an_internal_error_reaches_the_tenant_as_an_incident_id_only() -> None:
    outcome = classify(KeyError("/srv/worker/secret-path"), pushing=False)
    assert outcome.state is JobState.INTERNAL_ERROR
    told = incident(outcome, "0123456789ab")
    assert told.state is JobState.INTERNAL_ERROR and told.failure is not None
    assert told.failure.reason == "internal"
    assert told.failure.message == "internal error in the build service (incident 0123456789ab)"
    assert "secret-path" not in told.failure.message


# -- job directories ----------------------------------------------------------------------------


def test_a_claimed_job_directory_is_fresh_and_released_without_trace(tmp_path: Path) -> None:
    work = tmp_path / "tenants" / "acme" / "jobs" / "j1.1"
    work.mkdir(parents=True)
    (work / "stale").write_text("x")
    fd = jobdirs.claim(work)
    assert work.is_dir() and list(work.iterdir()) == []
    assert (work.parent / "j1.1.lock").exists()
    jobdirs.release(work, fd)
    assert list(work.parent.iterdir()) == []


HOLDER = """
import sys
from pathlib import Path
from rootbuild.service import jobdirs
jobdirs.claim(Path(sys.argv[1]))
print("held", flush=True)
sys.stdin.read()
"""


def test_sweep_removes_only_what_no_live_process_holds(tmp_path: Path) -> None:
    jobs = tmp_path / "tenants" / "acme" / "jobs"
    live, dead, bare = jobs / "live.1", jobs / "dead.1", jobs / "bare.1"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(live)], env=env,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    killed = subprocess.Popen([sys.executable, "-c", HOLDER, str(dead)], env=env,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        assert killed.stdout is not None and killed.stdout.readline() == "held\n"
        (live / "context").mkdir()
        (dead / "context").mkdir()
        killed.kill()  # as kill -9: its lock dies with it, its directory stays
        killed.wait()
        bare.mkdir()  # a directory without a lock file: no live owner either
        (jobs / "gone.1.lock").write_text("")  # a lock file whose directory is gone
        removed, scratch = jobdirs.sweep(tmp_path)
        assert sorted(removed) == sorted([dead, bare]) and scratch == []
        assert jobdirs.said(removed, scratch) == (
            "removed 2 job directories and 0 build scratch entries left by workers gone")
        assert sorted(p.name for p in jobs.iterdir()) == ["live.1", "live.1.lock"]
        assert (live / "context").is_dir()
    finally:
        for proc in (holder, killed):
            proc.kill()
            proc.wait()
            assert proc.stdin is not None
            proc.stdin.close()
            assert proc.stdout is not None
            proc.stdout.close()


def test_sweep_empties_a_tenant_stores_scratch_only_when_no_build_holds_it(
        tmp_path: Path) -> None:
    store = tmp_path / "tenants" / "acme" / "store"
    (store / "tmp" / "work-1").mkdir(parents=True)
    (store / "tmp" / "work-1" / "f").write_text("x")
    fd = os.open(store / "gc.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)  # a running build (Store.shared_lock)
        assert jobdirs.sweep(tmp_path) == ([], [])
        assert (store / "tmp" / "work-1" / "f").exists()
    finally:
        os.close(fd)
    assert jobdirs.sweep(tmp_path) == ([], [store / "tmp" / "work-1"])
    assert jobdirs.said([], []) == ""
    assert list((store / "tmp").iterdir()) == []
