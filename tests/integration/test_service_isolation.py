"""Hostile jobs through the build service (issue 13, test 10): ``rootbuild submit`` queues
them in a real ``redis-server``, ``rootbuild worker`` (run as the unprivileged test user)
builds them, and each job's end is read back with ``status --json``.

- Network: a RUN step connects to neither a canary on the host's 127.0.0.1 nor one on an
  abstract unix socket of the host's network namespace (the canaries count every
  connection; the job itself succeeds, the step printing that each connect failed).
- Limits set by the worker's flags (small, to stay fast): a fork bomb, a memory hog and a
  disk filler each end the job FAILURE with ``failure_info`` naming the limit and the
  Dockerfile line; a log flood is clipped (the issue: "output per step capped (the rest
  dropped with a note, the builder's memory flat)"), not failed. Afterwards no process of
  the job, no mount and no scratch data remain, and the tenant's store kept nothing of
  the failed steps.
- Tenants: tenant B does not see tenant A's cache mount (same id, same target: empty)
  and does not get A's cached RUN result (same Dockerfile: B's step runs).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Harness, require_tool
from test_build_run import busybox_context
from test_service_queue import RedisServer
from test_service_worker import TERMINAL, Service, mounts_under, wait_until
from test_untrusted_network import PROBE_SOURCE, Canary, probe_context, probe_lines

from rootbuild.service.jobs import JobState

pytestmark = pytest.mark.integration

TOOLS = {f"rootfs/bin/{a}": "symlink:busybox" for a in ("dd", "yes", "head", "seq")}


@pytest.fixture(name="service")
def service_fixture(rb: Harness) -> Iterator[Service]:
    """A redis-server on a unix socket the test user may use, and the test's workers
    (test_service_worker's fixtures)."""
    directory = Path(tempfile.mkdtemp(prefix="rb-redis-"))
    os.chmod(directory, 0o755)
    server = RedisServer(directory)
    server.start()
    os.chmod(server.socket, 0o777)
    svc = Service(rb, server)
    try:
        yield svc
    finally:
        svc.stop_all()
        server.stop()
        subprocess.run(["rm", "-rf", str(directory)], check=False)


@pytest.fixture(name="canary")
def canary_fixture() -> Iterator[Canary]:
    c = Canary()
    try:
        yield c
    finally:
        c.close()


@pytest.fixture(scope="session", name="probe")
def probe_fixture(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """test_untrusted_network's probe, compiled static (the step's root is busybox)."""
    out = tmp_path_factory.mktemp("netprobe") / "netprobe"
    subprocess.run([require_tool("gcc"), "-static", "-O1", "-o", str(out),
                    str(PROBE_SOURCE)], check=True, capture_output=True)
    return out.read_bytes()


def status_json(service: Service, job: str) -> dict[str, Any]:
    record = json.loads(service.cli("status", job, "--json").stdout)
    assert isinstance(record, dict)
    return record


def processes_naming(text: str) -> list[str]:
    """Processes of any user (a step may run as a subordinate uid) whose command line
    holds ``text``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if text.encode() in cmdline:
            found.append(f"{entry} {cmdline.decode(errors='replace')}")
    return found


def store_bytes(root: Path) -> int:
    total = 0
    for dirpath, _, files in os.walk(root):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:
                continue
    return total


def assert_no_scratch(service: Service, tenant: str) -> None:
    """No job directory and no build work directory of the tenant remain."""
    tenant_dir = service.store / "tenants" / tenant
    for leftover in (tenant_dir / "jobs", tenant_dir / "store" / "tmp"):
        assert not leftover.exists() or sorted(p.name for p in leftover.iterdir()) == [], \
            leftover


# -- network ---------------------------------------------------------------------------------


def test_a_job_reaches_no_canary_on_the_hosts_loopback_or_abstract_sockets(
        rb: Harness, service: Service, probe: bytes, canary: Canary) -> None:
    """A job's RUN step tries a canary on the host's 127.0.0.1 (directly and through the
    user-mode network's gateway) and one on an abstract unix socket: every connect fails,
    the canaries record nothing, and the job, whose step only reports, succeeds.

    Docker's reference (RUN --network): "none: The command is run with no network access
    (lo is still available, but is isolated to this process)" and "The use of
    --network=host is protected by the network.host entitlement"
    (https://docs.docker.com/reference/dockerfile/#run---network): a service's jobs never
    get the host's network."""
    port = canary.listen(socket.AF_INET, ("127.0.0.1", 0)).getsockname()[1]
    name = "rootbuild-canary-" + secrets.token_hex(6)
    canary.listen(socket.AF_UNIX, "\0" + name)
    ctx = probe_context(rb, probe, "netjob", (
        f"RUN /netprobe tcp 127.0.0.1 {port}; /netprobe tcp 10.0.2.2 {port}; "
        f"/netprobe abstract {name}; echo probes-done"))
    service.start_worker("w1")
    job = service.submit(ctx, "mallory")
    done = service.wait(job, TERMINAL)
    log = service.log_text(job)
    assert done.state is JobState.SUCCESS, (done, log)
    record = status_json(service, job)
    assert record["state"] == "SUCCESS" and record["failure_info"] is None
    lines = probe_lines(log)
    assert "probes-done" in log
    assert lines[f"tcp 127.0.0.1:{port}"].startswith("failed:"), lines
    assert lines[f"tcp 10.0.2.2:{port}"].startswith("failed:"), lines
    assert lines[f"abstract {name}"].startswith("failed:"), lines
    assert canary.hits == [], canary.hits
    # the canaries do count: the host itself reaches both
    with socket.create_connection(("127.0.0.1", port), timeout=5):
        pass
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect("\0" + name)
    wait_until("the canaries to see the host", lambda: len(canary.hits) == 2, timeout=10)
    assert mounts_under(rb) == []


# -- limits ----------------------------------------------------------------------------------

LIMIT_FLAGS = ("--pids-limit", "20", "--memory", "64m", "--disk-limit", "8MB",
               "--log-limit", "64k")


def _limit_job(rb: Harness, service: Service, name: str, run: str) -> tuple[str, str]:
    ctx = busybox_context(rb, name, f"FROM scratch\nCOPY rootfs/ /\nRUN {run}\n", TOOLS)
    return service.submit(ctx, "mallory"), run


def _failed_at_the_limit(service: Service, job: str, run: str, limit: str,
                         markers: tuple[str, ...]) -> dict[str, Any]:
    done = service.wait(job, TERMINAL, timeout=180)
    assert done.state is JobState.FAILURE, (done, service.log_text(job))
    record = status_json(service, job)
    info = record["failure_info"]
    assert record["state"] == "FAILURE", record
    assert info["reason"] == "build_failed" and info["step"] == "Dockerfile:3", info
    assert f'process "/bin/sh -c {run}"' in info["message"], info
    assert limit in info["message"], info
    for mark in markers:
        assert processes_naming(mark) == [], mark
    return info


def test_each_limit_ends_the_job_naming_it_and_leaves_nothing(
        rb: Harness, service: Service) -> None:
    """With the worker's ``--pids-limit 20 --memory 64m --disk-limit 8MB``: a fork bomb
    (a loop of sleepers, and a recursive function), a memory hog and a disk filler each
    end FAILURE, ``failure_info`` naming the limit and the step; no process of the job,
    no mount, no scratch data remain, and the tenant's store holds nothing of them."""
    service.start_worker("w1", *LIMIT_FLAGS)
    warm = busybox_context(rb, "warm", "FROM scratch\nCOPY rootfs/ /\nRUN echo warm\n",
                           TOOLS)
    assert service.wait(service.submit(warm, "mallory"), TERMINAL).state is JobState.SUCCESS
    tenant_store = service.store / "tenants" / "mallory" / "store"
    before = store_bytes(tenant_store)

    mark = f"{100 + secrets.randbelow(800)}.{secrets.randbelow(10**6):06d}"
    loop = _limit_job(rb, service, "bomb-loop", f"while true; do sleep {mark} & done")
    mark2 = f"{100 + secrets.randbelow(800)}.{secrets.randbelow(10**6):06d}"
    recursive = _limit_job(rb, service, "bomb-fn", f"f(){{ sleep {mark2} & f|f& }}; f; wait")
    hog = _limit_job(rb, service, "hog", "dd if=/dev/zero of=/dev/null bs=256M count=101")
    filler = _limit_job(rb, service, "filler", "dd if=/dev/zero of=/big bs=1M count=40")

    for (job, run), marks in ((loop, (f"sleep {mark}",)), (recursive, (f"sleep {mark2}",))):
        info = _failed_at_the_limit(service, job, run, "was killed: pids limit 20 reached",
                                    marks)
        assert info["message"] == f'RUN: process "/bin/sh -c {run}" was killed: pids ' \
            "limit 20 reached", info
    info = _failed_at_the_limit(service, *hog, "was killed: memory limit 64MiB exceeded",
                                ("bs=256M count=101",))
    info = _failed_at_the_limit(service, *filler, "disk limit 8MB exceeded",
                                ("of=/big bs=1M count=40",))
    assert re.fullmatch(r'RUN: disk limit 8MB exceeded: process "/bin/sh -c dd '
                        r'if=/dev/zero of=/big bs=1M count=40" \(exit code \d+\)',
                        info["message"]), info
    assert mounts_under(rb) == []
    assert_no_scratch(service, "mallory")
    # nothing of the failed steps was kept: no 8 MB layer, no bomb's layer
    assert store_bytes(tenant_store) - before < 1 << 20, (before, store_bytes(tenant_store))
    # the worker lives on and builds the next job
    ok = busybox_context(rb, "after", "FROM scratch\nCOPY rootfs/ /\nRUN echo after-limits\n",
                         TOOLS)
    assert service.wait(service.submit(ok, "mallory"), TERMINAL).state is JobState.SUCCESS


def test_the_fork_bomb_is_named_every_time(rb: Harness, service: Service) -> None:
    """A bomb whose shell may meet the kernel's RLIMIT_NPROC between two polls of the
    watchdog (it then fails to fork and exits within milliseconds) is reported as the
    pids limit, never as the shell's own "can't fork" exit status: ten jobs in a row."""
    service.start_worker("w1", "--pids-limit", "20")
    mark = f"{100 + secrets.randbelow(800)}.{secrets.randbelow(10**6):06d}"
    run = f"while true; do sleep {mark} & done"
    ctx = busybox_context(rb, "bomb10", f"FROM scratch\nCOPY rootfs/ /\nRUN {run}\n")
    jobs = [service.submit(ctx, "mallory") for _ in range(10)]
    messages = []
    for job in jobs:
        done = service.wait(job, TERMINAL, timeout=120)
        assert done.state is JobState.FAILURE, done
        assert done.failure_info is not None
        messages.append(done.failure_info.message)
    assert set(messages) == {f'RUN: process "/bin/sh -c {run}" was killed: pids limit 20 '
                             "reached"}, messages
    assert processes_naming(f"sleep {mark}") == []
    assert mounts_under(rb) == []
    assert_no_scratch(service, "mallory")


def test_copy_layers_count_against_the_jobs_disk_limit(rb: Harness, service: Service) -> None:
    """The disk limit is the job's, COPY/ADD layers included: two COPYs of a 5 MiB file
    under the worker's ``--disk-limit 8MB`` end FAILURE at the second COPY's line, naming
    the limit; one COPY and a RUN writing 4 MiB end at the RUN. The store keeps nothing
    of either."""
    service.start_worker("w1", *LIMIT_FLAGS)
    big = {"big.bin": os.urandom(5 << 20)}
    warm = busybox_context(rb, "warm-copy", "FROM scratch\nCOPY rootfs/ /\n", TOOLS)
    assert service.wait(service.submit(warm, "mallory"), TERMINAL).state is JobState.SUCCESS
    tenant_store = service.store / "tenants" / "mallory" / "store"
    before = store_bytes(tenant_store)
    twice = busybox_context(rb, "copy-twice", (
        "FROM scratch\nCOPY rootfs/ /\nCOPY big.bin /a\nCOPY big.bin /b\n"), {**TOOLS, **big})
    then_run = busybox_context(rb, "copy-run", (
        "FROM scratch\nCOPY rootfs/ /\nCOPY big.bin /a\n"
        "RUN dd if=/dev/zero of=/c bs=1M count=4\n"), {**TOOLS, **big})
    job = service.submit(twice, "mallory")
    done = service.wait(job, TERMINAL, timeout=180)
    assert done.state is JobState.FAILURE, (done, service.log_text(job))
    info = status_json(service, job)["failure_info"]
    assert info == {"reason": "build_failed", "step": "Dockerfile:4",
                    "message": "COPY: disk limit 8MB exceeded by the build's layers"}, info
    job = service.submit(then_run, "mallory")
    done = service.wait(job, TERMINAL, timeout=180)
    assert done.state is JobState.FAILURE, (done, service.log_text(job))
    info = status_json(service, job)["failure_info"]
    assert info["step"] == "Dockerfile:4", info
    assert info["message"].startswith("RUN: disk limit 8MB exceeded"), info
    assert mounts_under(rb) == []
    assert_no_scratch(service, "mallory")
    assert store_bytes(tenant_store) - before < 1 << 20, (before, store_bytes(tenant_store))


def test_processes_over_the_limit_at_the_steps_exit_are_named(
        rb: Harness, service: Service) -> None:
    """A step that starts 25 sleepers under ``--pids-limit 20`` and exits at once (status
    3): its processes reached the limit only in the few milliseconds before its exit,
    which a poll of the watchdog seldom sees (the pid namespace dies with its pid 1). The
    count taken at pid 1's exit stop (sandbox/exit_stop.py) names the limit, every time:
    without it the job ended "exit code: 3"."""
    service.start_worker("w1", "--pids-limit", "20")
    mark = f"{100 + secrets.randbelow(800)}.{secrets.randbelow(10**6):06d}"
    run = f"for i in {' '.join(str(i) for i in range(25))}; do sleep {mark} & done; exit 3"
    ctx = busybox_context(rb, "burst", f"FROM scratch\nCOPY rootfs/ /\nRUN {run}\n")
    jobs = [service.submit(ctx, "mallory") for _ in range(5)]
    for job in jobs:
        done = service.wait(job, TERMINAL, timeout=120)
        assert done.state is JobState.FAILURE, done
        assert done.failure_info is not None
        assert done.failure_info.message == (
            f'RUN: process "/bin/sh -c {run}" was killed: pids limit 20 reached'), done
    assert processes_naming(f"sleep {mark}") == []
    assert mounts_under(rb) == []
    assert_no_scratch(service, "mallory")


@pytest.mark.parametrize("slot", [[], ["--slot", "0"]], ids=["own-uid", "slot"])
def test_the_exit_stop_counts_in_a_slot_too(rb: Harness, slot: list[str]) -> None:
    """The same burst-and-exit step through ``rootbuild build``, with and without
    ``--slot 0`` (the init then is not root of its namespace and the step runs in a
    nested one, as a subordinate uid, USER included): the limit is named each time.
    (Not ``--untrusted``: its isolated network needs main's e6dd3e3 in a slot.)"""
    mark = f"{100 + secrets.randbelow(800)}.{secrets.randbelow(10**6):06d}"
    run = f"for i in {' '.join(str(i) for i in range(25))}; do sleep {mark} & done; exit 3"
    ctx = busybox_context(rb, "burstcli", f"FROM scratch\nCOPY rootfs/ /\nRUN {run}\n")
    for _ in range(3):
        proc = rb.run("build", "-q", "--pids-limit", "20", *slot, str(ctx),
                      check=False)
        assert proc.returncode == 1, proc.stderr
        assert [ln for ln in proc.stderr.splitlines() if ln.startswith("rootbuild:")] == [
            f'rootbuild: Dockerfile:3: RUN: process "/bin/sh -c {run}" was killed: pids '
            "limit 20 reached"], proc.stderr
    user = busybox_context(rb, "burstuser", (
        f"FROM scratch\nCOPY rootfs/ /\nUSER app\nRUN {run}\n"))
    proc = rb.run("build", "-q", "--pids-limit", "20", *slot, str(user),
                  check=False)
    assert proc.returncode == 1, proc.stderr
    assert "Dockerfile:4: RUN: process" in proc.stderr and "pids limit 20 reached" in \
        proc.stderr, proc.stderr
    assert processes_naming(f"sleep {mark}") == []
    assert mounts_under(rb) == []


def test_the_exit_stop_changes_no_signal_or_exit_status(rb: Harness) -> None:
    """Under a pids limit the step's pid 1 is traced for its exit stop only: a signal it
    handles still reaches its handler, signals it does not handle are still dropped (pid 1
    of a namespace), a child's exit still wakes ``wait``, and its exit status is reported
    as it was: the step's command stays pid 1, as Docker says of it: "running programs as
    PID 1 means the program now has the special responsibilities and behaviors associated
    with PID 1 in Linux, such as reaping child processes."
    (https://docs.docker.com/reference/build-checks/json-args-recommended/)"""
    ctx = busybox_context(rb, "signals", (
        "FROM scratch\nCOPY rootfs/ /\n"
        "RUN trap 'echo got-usr1' USR1; kill -USR1 $$; (kill -TERM 1; kill -KILL 1; "
        "echo still-here); sleep 0.2 & wait; echo waited\n"
        "RUN exit 7\n"), TOOLS)
    proc = rb.run("build", "--progress=plain", "--untrusted", "--pids-limit", "20", str(ctx),
                  check=False)
    assert proc.returncode == 1, proc.stderr
    for line in ("got-usr1", "still-here", "waited"):
        assert re.search(rf"^#\d+ [\d.]+s {line}$", proc.stderr, re.M), proc.stderr
    assert [ln for ln in proc.stderr.splitlines() if ln.startswith("rootbuild:")] == [
        'rootbuild: Dockerfile:4: RUN: process "/bin/sh -c exit 7" did not complete '
        "successfully: exit code: 7"], proc.stderr


def test_a_log_flood_is_clipped_with_a_note_not_failed(rb: Harness, service: Service) -> None:
    """100 MB of output under the worker's ``--log-limit 64k``: the job succeeds, its log
    holds the step's first 64 KiB and one note saying the rest was dropped, and the
    worker's memory stays flat while it drops the rest.

    BuildKit clips a step's log the same way, with the note "[output clipped, log limit
    2MiB reached]" (its default step log limit; issue 13: "output per step capped (the
    rest dropped with a note, the builder's memory flat)")."""
    worker = service.start_worker("w1", *LIMIT_FLAGS)
    quiet = busybox_context(rb, "quiet", "FROM scratch\nCOPY rootfs/ /\nRUN echo hi\n", TOOLS)
    assert service.wait(service.submit(quiet, "mallory"), TERMINAL).state is JobState.SUCCESS
    ctx = busybox_context(rb, "flood", (
        "FROM scratch\nCOPY rootfs/ /\n"
        "RUN yes 0123456789abcdefghijklmnopqrstuvwxyz | head -c 100000000; echo flooded\n"
    ), TOOLS)

    def rss_kib() -> int:
        for line in Path(f"/proc/{worker.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")

    # the worker's pid is rootbuild's own once setpriv/env exec'd it
    wait_until("the worker to exec", lambda: "rootbuild" in
               Path(f"/proc/{worker.pid}/cmdline").read_text(errors="replace"))
    base = rss_kib()
    job = service.submit(ctx, "mallory")
    peak = base
    while service.queue.status(job).state not in TERMINAL:
        peak = max(peak, rss_kib())
        time.sleep(0.02)
    done = service.queue.status(job)
    log = service.log_text(job)
    assert done.state is JobState.SUCCESS, (done, log[-2000:])
    assert status_json(service, job)["failure_info"] is None
    printed = [line for line in log.splitlines() if "0123456789abcdef" in line]
    # 64 KiB of 37-byte lines
    assert 1700 <= len(printed) <= 1800, len(printed)
    assert log.count("[output clipped, log limit 64KiB reached]") == 1, log[-2000:]
    assert "flooded" not in log.replace("echo flooded", "")  # dropped with the rest
    assert len(log.encode()) < 200 << 10
    # 100 MB went through the worker: it grew by far less than one MB per MB of output
    assert peak < base + 20 * 1024, (base, peak)


# -- tenants ---------------------------------------------------------------------------------


def test_tenants_share_no_cache_mount_and_no_step_result(rb: Harness,
                                                         service: Service) -> None:
    """Tenant A writes a secret into ``RUN --mount=type=cache,id=x,target=/c``; its next
    job sees it there (the cache mount persists within a tenant) and a repeat of that job
    is a cache hit. Tenant B, with the same id and target, finds the mount empty, and the
    very same Dockerfile runs its step for B instead of taking A's result.

    Docker's reference (RUN --mount=type=cache): "Mount type cache allows the build
    container to cache directories for compilers and package managers"; its ``id`` is
    the "Optional ID to identify separate/different caches"
    (https://docs.docker.com/reference/dockerfile/#run---mounttypecache); the service
    keeps those caches per tenant."""
    token = secrets.token_hex(8)
    service.start_worker("w1")
    writer = busybox_context(rb, "writer", (
        "FROM scratch\nCOPY rootfs/ /\n"
        f"RUN --mount=type=cache,id=x,target=/c echo secret-{token} > /c/secret; echo wrote\n"
    ))
    reader = busybox_context(rb, "reader", (
        "FROM scratch\nCOPY rootfs/ /\n"
        'RUN --mount=type=cache,id=x,target=/c echo "seen:[$(ls -A /c)$(cat /c/* '
        '2>/dev/null)]"\n'
    ))
    seen = re.compile(r"^#\d+ seen:\[(.*)\]$", re.M)  # the step's output, not its label

    def run(ctx: Path, tenant: str) -> str:
        job = service.submit(ctx, tenant)
        done = service.wait(job, TERMINAL)
        log = service.log_text(job)
        assert done.state is JobState.SUCCESS, (done, log)
        record = status_json(service, job)
        assert (record["state"], record["failure_info"]) == ("SUCCESS", None), record
        return log

    assert "wrote" in run(writer, "acme")
    a_read = run(reader, "acme")
    assert seen.findall(a_read) == [f"secretsecret-{token}"], a_read
    b_read = run(reader, "globex")
    assert seen.findall(b_read) == [""], b_read  # B's own, empty cache mount
    assert token not in b_read
    assert not re.search(r"^#\d+ CACHED$", b_read, re.M), b_read  # nothing of A's
    a_again = run(reader, "acme")
    assert seen.findall(a_again) == [], a_again  # A's own result, from A's cache
    assert "CACHED" in a_again
    globex = service.store / "tenants" / "globex" / "store"
    leaked = [p for p in globex.rglob("*") if p.is_file() and
              token.encode() in p.read_bytes()]
    assert leaked == [], leaked


@pytest.mark.parametrize(("flag", "value", "needle"), [
    ("--pids-limit", "0", "worker: --pids-limit must be positive, not 0"),
    ("--memory", "lots", "worker: invalid --memory 'lots'"),
    ("--disk-limit", "0", "worker: invalid --disk-limit '0'"),
    ("--log-limit", "0k", "worker: invalid --log-limit '0k'"),
])
def test_the_worker_refuses_bad_limits(rb: Harness, service: Service, flag: str, value: str,
                                       needle: str) -> None:
    """A bad limit flag: one line naming it, exit status 2, no traceback, no job taken."""
    job = service.submit(busybox_context(rb, "untouched", "FROM scratch\nCOPY rootfs/ /\n"),
                         "mallory")
    proc = service.cli("worker", "--store", str(service.store), flag, value, check=False)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rootbuild: " + needle), proc.stderr
    assert service.queue.status(job).state is JobState.QUEUED
