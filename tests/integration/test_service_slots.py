"""The worker's build slots (issue 13: "each job slot maps its root to its own subuid range
so RLIMIT_NPROC counts per slot and slots cannot signal each other"), its refusal to start
without the subordinate ids its slots need, the sweep of a dead worker's job directories,
and the incident id of an internal error.

Workers run as the unprivileged test user, which scripts/test.sh gives two blocks of 65536
subordinate ids (slots 0 and 1); the test reads the step processes' /proc/<pid>/status as
root to see the host uids they run as. Fixtures as in test_service_worker.py: a real
redis-server per test on a unix socket.
"""

from __future__ import annotations

import fcntl
import os
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path

import pytest
from conftest import ROOTBUILD, Harness
from test_build_run import busybox_context, error_lines
from test_service_worker import (  # noqa: F401 (pytest fixtures)
    TERMINAL,
    Service,
    marker,
    mounts_under,
    redis_server,
    service,
    step_processes_all_users,
    wait_until,
)
from test_untrusted_network import (  # noqa: F401 (pytest fixtures)
    Canary,
    canary,
    probe,
    probe_context,
    probe_lines,
)

from rootbuild.sandbox.idmap import SLOT_SPAN, parse_subid
from rootbuild.service.jobs import JobState

pytestmark = pytest.mark.integration


def blocks(rb: Harness, path: str) -> list[int]:
    """The first id of each whole 65536-id block of the test user's ranges, in slot order
    (``idmap.slot_plan``)."""
    ranges = parse_subid(Path(path).read_text(), rb.user.name, rb.user.uid)
    return [start + i * SLOT_SPAN for start, count in ranges for i in range(count // SLOT_SPAN)]


def host_ids(pid: int) -> tuple[int, int]:
    """(real uid, real gid) of ``pid`` as the host sees them."""
    fields = dict(line.split(":", 1) for line in
                  Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["Uid"].split()[0]), int(fields["Gid"].split()[0])


def holders(mark: str) -> dict[int, tuple[int, int]]:
    """pid -> host (uid, gid) of every live ``sleep MARK`` process (not the shell that
    started them, whose command line names it too)."""
    out: dict[int, tuple[int, int]] = {}
    for line in step_processes_all_users(mark):
        pid, _, args = line.split(None, 2)
        if args != f"sleep {mark}":
            continue
        try:
            out[int(pid)] = host_ids(int(pid))
        except (OSError, KeyError):
            continue  # gone meanwhile
    return out


def spawner(rb: Harness, name: str, count: int, mark: str) -> Path:
    """A build whose RUN starts ``count`` sleepers at once and waits for them."""
    return busybox_context(rb, name, (
        "FROM scratch\nCOPY rootfs/ /\n"
        f"RUN i=0; while [ $i -lt {count} ]; do sleep {mark} & i=$((i+1)); done; wait; "
        "echo all-done\n"
    ))


def wait_holding(svc: Service, job: str, mark: str, count: int,
                 seen: dict[int, tuple[int, int]]) -> None:
    """Until ``count`` processes of ``mark`` were seen (collected in ``seen``); fails with
    the job's record and logs if the job ends first."""
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        seen.update(holders(mark))
        if len(seen) >= count:
            return
        record = svc.queue.status(job)
        if record.state in TERMINAL:
            raise AssertionError(f"{record}\n{svc.log_text(job)}\n"
                                 + "\n".join(svc.worker_log(n) for n in svc.workers))
        time.sleep(0.05)
    raise AssertionError(f"{len(seen)} of {count} processes of job {job} seen\n"
                         + "\n".join(svc.worker_log(n) for n in svc.workers))


def test_concurrent_builds_run_in_their_own_slots_and_count_processes_apart(
        rb: Harness, service: Service) -> None:  # noqa: F811 (the fixture)
    """Two jobs at once on a ``--concurrency 2`` worker: each one's RUN processes run as
    the root of its own slot, a different host uid (and gid) at the start of a different
    block of the user's subordinate ids, never the user's own. With ``--pids-limit 40``,
    job A holds 30 processes (its step's whole pid namespace is near the limit) for as
    long as job B starts 30 of its own and ends SUCCESS: RLIMIT_NPROC (set at 2 x 40 + 32
    in each step) counts per host uid and per user namespace, and every process of A's uid
    is A's: the kernel's count for one slot holds no process of the other."""
    uid_blocks = blocks(rb, "/etc/subuid")[:2]
    gid_blocks = blocks(rb, "/etc/subgid")[:2]
    assert len(uid_blocks) == 2 and len(gid_blocks) == 2, "scripts/test.sh gives two blocks"
    service.start_worker("w1", "--concurrency", "2", "--pids-limit", "40")
    # A's sleepers outlive B's whole build (the test ends them), B's are short
    mark_a = marker()
    mark_b = f"2.{uuid.uuid4().int % 10**6:06d}"
    job_a = service.submit(spawner(rb, "slot-a", 30, mark_a), "acme")
    wait_holding(service, job_a, mark_a, 30, {})
    job_b = service.submit(spawner(rb, "slot-b", 30, mark_b), "globex")
    seen_b: dict[int, tuple[int, int]] = {}
    wait_holding(service, job_b, mark_b, 30, seen_b)
    a = holders(mark_a)
    assert len(a) == 30, "A still holds its processes while B starts its own"
    done_b = service.wait(job_b, TERMINAL, timeout=90)
    assert done_b.state is JobState.SUCCESS, (done_b, service.log_text(job_b))
    assert "all-done" in service.log_text(job_b)
    assert service.queue.status(job_a).state is JobState.WORKING  # A held on throughout
    assert len(holders(mark_a)) == 30

    ids_a, ids_b = set(a.values()), set(seen_b.values())
    assert len(ids_a) == 1 and len(ids_b) == 1, (ids_a, ids_b)
    (uid_a, gid_a), (uid_b, gid_b) = ids_a.pop(), ids_b.pop()
    assert uid_a != uid_b and gid_a != gid_b
    # each is the root of one slot (block start), one per slot, the worker's slots 0 and 1
    assert {uid_a, uid_b} == set(uid_blocks), (uid_a, uid_b, uid_blocks)
    assert {gid_a, gid_b} == set(gid_blocks), (gid_a, gid_b, gid_blocks)
    assert rb.user.uid not in (uid_a, uid_b)
    # the worker's --pids-limit reached the step: its kernel limit, 2 x 40 + 32 (limits.py)
    nproc = [line.split()[2:4] for line in Path(f"/proc/{next(iter(a))}/limits").read_text()
             .splitlines() if line.startswith("Max processes")]
    assert nproc == [["112", "112"]], nproc
    # the host's count per uid: A's uid runs A's step and nothing of B's
    by_uid: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                uid = host_ids(int(entry))[0]
            except (OSError, KeyError):
                continue
            by_uid[uid] = by_uid.get(uid, 0) + 1
    assert 30 <= by_uid.get(uid_a, 0) <= 40, by_uid.get(uid_a)
    assert by_uid.get(uid_b, 0) == 0  # B is done: its slot's uid runs nothing now
    for pid in holders(mark_a):  # A's step then ends well: its shell's wait returns
        os.kill(pid, signal.SIGKILL)
    done_a = service.wait(job_a, TERMINAL, timeout=90)
    assert done_a.state is JobState.SUCCESS, (done_a, service.log_text(job_a))
    assert holders(mark_a) == {} and mounts_under(rb) == []


def test_a_worker_whose_slots_exceed_the_subordinate_ids_refuses_to_start(
        rb: Harness, service: Service) -> None:  # noqa: F811 (the fixture)
    """Three slots (the user has two blocks), or a base past them: one line naming what is
    missing and the usermod that adds it, exit 2, no traceback, nothing claimed."""
    for args, which, verb in ((["--concurrency", "3"], "slots 0..2", "need"),
                              (["--slot-base", "2"], "slot 2", "needs")):
        proc = rb.run("worker", "--redis", service.url, "--store", str(service.store), *args,
                      store=False, check=False, timeout=30)
        assert proc.returncode == 2, proc.stderr
        lines = error_lines(proc.stderr)
        assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
        assert lines[0].startswith(f"rootbuild: worker: {which} "), lines
        assert f") {verb} 3 block(s) of 65536 subordinate ids" in lines[0], lines
        assert "/etc/subuid holds 2 and /etc/subgid holds 2" in lines[0]
        assert "--add-subgids" in lines[0] and lines[0].rstrip().endswith("will do)")
        assert f"{rb.user.name}'" in lines[0]
    assert not service.store.exists()  # refused before anything


def lock_free(path: Path) -> bool:
    """No process holds a flock on ``path`` (taken and let go at once)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
    return True


def test_a_restarted_worker_sweeps_a_killed_workers_job_directories_only(
        rb: Harness, service: Service) -> None:  # noqa: F811 (the fixture)
    """``kill -9`` a worker mid-build: its job directory (context, Dockerfile) and the
    scratch of its tenant's store stay behind; a new worker removes them at start, while the
    job directory of a live worker's running build sharing the store stays untouched and its
    build goes on (it is then cancelled: no process or mount left)."""
    mark_a, mark_b = marker(), marker()
    deadline = int(time.time()) + 10  # attempt 2 of A (after the kill) is quick
    ctx_a = busybox_context(rb, "dead-a", (
        "FROM scratch\nCOPY rootfs/ /\n"
        f'RUN if [ "$(date +%s)" -lt {deadline} ]; then sleep {mark_a}; fi\n'
    ), {"rootfs/bin/date": "symlink:busybox"})
    ctx_b = busybox_context(rb, "live-b", f"FROM scratch\nCOPY rootfs/ /\nRUN sleep {mark_b}\n")
    first = service.start_worker("w1")
    job_a = service.submit(ctx_a, "acme")
    wait_until("A's step", lambda: step_processes_all_users(mark_a))
    service.start_worker("w2", "--slot-base", "1")
    job_b = service.submit(ctx_b, "globex")
    wait_until("B's step", lambda: step_processes_all_users(mark_b))
    dir_a = service.store / "tenants" / "acme" / "jobs" / f"{job_a}.1"
    dir_b = service.store / "tenants" / "globex" / "jobs" / f"{job_b}.1"
    assert (dir_a / "Dockerfile").is_file() and (dir_b / "Dockerfile").is_file()
    first.send_signal(signal.SIGKILL)
    first.wait()
    wait_until("A's step to die", lambda: not step_processes_all_users(mark_a), timeout=10)
    assert (dir_a / "Dockerfile").is_file()  # left behind
    # the killed build's FUSE servers end with its mounts; then nothing holds its store
    acme_store = service.store / "tenants" / "acme" / "store"
    wait_until("A's mounts to go",
               lambda: not [m for m in mounts_under(rb) if "/tenants/acme/" in m], timeout=15)
    wait_until("A's store to be free", lambda: lock_free(acme_store / "gc.lock"), timeout=15)
    scratch_a = list((service.store / "tenants" / "acme" / "store" / "tmp").iterdir())
    assert scratch_a, "the killed build's scratch stays too"
    b_before = sorted(p.relative_to(dir_b) for p in dir_b.rglob("*"))

    time.sleep(max(0.0, deadline + 1 - time.time()))
    service.start_worker("w3")
    wait_until("w3 to start", lambda: "claiming jobs" in service.worker_log("w3"), timeout=30)
    assert (f"removed 1 job directory and {len(scratch_a)} build scratch entr"
            in service.worker_log("w3")), service.worker_log("w3")
    assert not dir_a.exists()
    assert all(not p.exists() for p in scratch_a)
    # the live worker's: untouched, and its build still running
    assert sorted(p.relative_to(dir_b) for p in dir_b.rglob("*")) == b_before
    assert (dir_b.parent / f"{dir_b.name}.lock").exists()
    assert step_processes_all_users(mark_b)
    assert service.queue.status(job_b).state is JobState.WORKING
    # A is taken over by w3 (attempt 2) and built
    done_a = service.wait(job_a, TERMINAL, timeout=90)
    assert (done_a.state, done_a.attempt, done_a.worker) == (JobState.SUCCESS, 2, "w3"), done_a
    service.cli("cancel", job_b)
    assert service.wait(job_b, TERMINAL, timeout=30).state is JobState.CANCELLED
    wait_until("B's step to die", lambda: not step_processes_all_users(mark_b), timeout=10)
    assert mounts_under(rb) == []
    jobs_left = [p for t in ("acme", "globex")
                 for p in (service.store / "tenants" / t / "jobs").iterdir()]
    assert jobs_left == []


def test_an_internal_error_gives_the_tenant_an_incident_id_and_the_worker_the_traceback(
        rb: Harness, service: Service) -> None:  # noqa: F811 (the fixture)
    """A tenant's job directory cannot be made (its ``jobs`` is a file): not a build error
    but the service's own, INTERNAL_ERROR. The tenant's log gets one line with an incident
    id and no traceback or worker path; the worker's stderr has the same id and the
    traceback."""
    tenant = service.store / "tenants" / "evil"
    tenant.mkdir(parents=True)
    (tenant / "jobs").write_text("not a directory\n")
    rb._own(service.store)
    service.start_worker("w1")
    ctx = busybox_context(rb, "internal", "FROM scratch\nCOPY rootfs/ /\nRUN true\n")
    job = service.submit(ctx, "evil")
    done = service.wait(job, TERMINAL, timeout=60)
    assert done.state is JobState.INTERNAL_ERROR, done
    assert done.failure_info is not None
    message = done.failure_info.message
    assert message.startswith("internal error in the build service (incident "), message
    code = message.removeprefix("internal error in the build service (incident ")[:-1]
    assert len(code) == 12
    log = service.log_text(job)
    lines = [line for line in log.splitlines() if "internal error" in line]
    assert lines == [f"note: INTERNAL_ERROR: {message}"], log
    assert "Traceback" not in log and str(service.store) not in log
    worker = service.worker_log("w1")
    assert f"job {job}: internal error (incident {code})" in worker
    after = worker.split(f"(incident {code})", 1)[1]
    assert "Traceback (most recent call last)" in after and "FileExistsError" in after
    assert (tenant / "jobs").is_file()  # nothing was made of it


def slirps_in(uids: set[int]) -> dict[int, int]:
    """pid -> host uid of every slirp4netns running as one of ``uids``."""
    out = subprocess.run(["ps", "-e", "-o", "pid=,uid=,comm="], capture_output=True,
                         text=True).stdout
    found = {}
    for line in out.splitlines():
        pid, uid, comm = line.split(None, 2)
        if comm.strip() == "slirp4netns" and int(uid) in uids:
            found[int(pid)] = int(uid)
    return found


def test_a_slot_build_gets_the_isolated_network_and_leaves_no_slirp4netns(
        rb: Harness, probe: bytes, canary: Canary) -> None:  # noqa: F811 (the fixtures)
    """What every worker job is: ``--untrusted --slot 1``. slirp4netns comes up in the
    slot's namespace (its helper keeps the capabilities of the build's namespace it needs,
    sandbox/caps.py, and its own sandbox set-up then makes it the slot's root),
    the step reaches no canary on the host's 127.0.0.1, directly or through the gateway,
    and has public egress; no slirp4netns is left after the build."""
    port = canary.listen(socket.AF_INET, ("127.0.0.1", 0)).getsockname()[1]
    mark = marker()
    ctx = probe_context(rb, probe, "slotnet", (
        f"RUN ! /netprobe tcp 127.0.0.1 {port} && ! /netprobe tcp 10.0.2.2 {port} && "
        f"/netprobe route 1.1.1.1 && /netprobe loopback && sleep {mark}"))
    slot_root = blocks(rb, "/etc/subuid")[1]
    ours = {rb.user.uid, *blocks(rb, "/etc/subuid")}
    argv = rb.command([str(ROOTBUILD), "build", "--root", str(rb.store), "--progress=plain",
                       "--untrusted", "--slot", "1", "--timeout", "60", str(ctx)])
    seen: dict[int, int] = {}
    with subprocess.Popen(argv, cwd=rb.workdir, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True) as child:
        try:
            wait_until("the step to sleep", lambda: holders(mark), timeout=90)
            seen = slirps_in(ours)
        finally:
            for pid in holders(mark):  # end the step (the build fails; its probes ran)
                os.kill(pid, signal.SIGKILL)
            _, err = child.communicate(timeout=60)
    assert set(seen.values()) == {slot_root}, (seen, slot_root)
    lines = probe_lines(err)
    assert lines[f"tcp 127.0.0.1:{port}"].startswith("failed:"), err
    assert lines[f"tcp 10.0.2.2:{port}"] == "failed: Permission denied", err
    assert lines["route 1.1.1.1"] == "via 10.0.2.100", err
    assert lines["loopback 127.0.0.1"] == "connected", err
    assert canary.hits == []
    wait_until("slirp4netns to end", lambda: not slirps_in(ours), timeout=15)
    assert holders(mark) == {} and mounts_under(rb) == []
