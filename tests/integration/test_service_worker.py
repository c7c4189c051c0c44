"""The build service end to end: ``rootbuild worker`` processes (run as the unprivileged test
user) take jobs that ``rootbuild submit`` queued in a real ``redis-server``, build them in
the sandbox, push to a real ``docker-registry`` (issue 13, tests 1-4 and 11, and the
service commands).

Each test starts its own redis-server on a unix socket in a temporary directory (the queue
tests' ``RedisServer``), reachable by the test user; workers heartbeat every 0.2 s, so a
lease is lost after 0.6 s without one. Every test ends with no worker, no step process and
no mount of its own left (the ``rb`` harness checks processes and mounts under its
directory; the steps are marked by a unique ``sleep`` duration).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import secrets
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import ROOTBUILD, Harness
from registry_fixtures import (  # noqa: F401 (pytest fixtures)
    Registry,
    registry_base_fixture,
    secure_registry_fixture,
)
from test_build_run import busybox_context
from test_service_queue import RedisServer

from rootbuild.service.jobs import JobRecord, JobState, Lease, QueueConfig
from rootbuild.service.queue import RedisQueue, connect

pytestmark = pytest.mark.integration

HEARTBEAT = 0.2
TERMINAL = {s for s in JobState if s not in (JobState.QUEUED, JobState.WORKING)}


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A redis-server whose socket the test user may connect to."""
    directory = Path(tempfile.mkdtemp(prefix="rb-redis-"))
    os.chmod(directory, 0o755)
    srv = RedisServer(directory)
    srv.start()
    os.chmod(srv.socket, 0o777)
    try:
        yield srv
    finally:
        srv.stop()
        subprocess.run(["rm", "-rf", str(directory)], check=False)


class Service:
    """One test's service: its queue (read by the test as root), workers as the test user."""

    def __init__(self, rb: Harness, server: RedisServer) -> None:
        self.rb = rb
        self.url = server.url
        self.queue = RedisQueue(connect(server.url), QueueConfig(heartbeat=HEARTBEAT))
        self.store = rb.workdir / "service"
        self.workers: dict[str, subprocess.Popen[bytes]] = {}

    def start_worker(self, name: str, *extra: str,
                     env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        argv = [str(ROOTBUILD), "worker", "--redis", self.url, "--store", str(self.store),
                "--name", name, "--heartbeat", str(HEARTBEAT), "--grace", "2", *extra]
        log = open(self.rb.workdir / f"worker-{name}.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen(self.rb.command(argv, env), stdout=log, stderr=log,
                                cwd=self.rb.workdir)
        log.close()
        self.workers[name] = proc
        return proc

    def worker_log(self, name: str) -> str:
        return (self.rb.workdir / f"worker-{name}.log").read_text(errors="replace")

    def stop_all(self) -> None:
        for proc in self.workers.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.workers.values():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.rb.run(args[0], "--redis", self.url, *args[1:], store=False, check=check)

    def submit(self, ctx: Path, tenant: str, *args: str) -> str:
        out = self.cli("submit", "--tenant", tenant, *args, str(ctx)).stdout.strip()
        assert len(out) == 32, out
        return out

    def wait(self, job: str, states: set[JobState], timeout: float = 120) -> JobRecord:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            record = self.queue.status(job)
            if record.state in states:
                return record
            time.sleep(0.1)
        logs = "\n".join(self.worker_log(n) for n in self.workers)
        raise AssertionError(f"job {job} is {self.queue.status(job)}, not {states}\n{logs}")

    def log_text(self, job: str) -> str:
        return b"".join(e.data for e in self.queue.read_log(job, count=100000)).decode()


@pytest.fixture
def service(rb: Harness, redis_server: RedisServer) -> Iterator[Service]:
    svc = Service(rb, redis_server)
    try:
        yield svc
    finally:
        svc.stop_all()


def marker() -> str:
    """A sleep duration nobody else uses: finds this test's step processes."""
    return f"{100 + uuid.uuid4().int % 800}.{uuid.uuid4().int % 10**6:06d}"


def step_processes_all_users(mark: str) -> list[str]:
    """The step runs under the test user's subordinate ids: look at every process."""
    out = subprocess.run(["ps", "-e", "-ww", "-o", "pid=,user=,args="],
                         capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if f"sleep {mark}" in line]


def wait_until(what: str, check: object, timeout: float = 60) -> None:
    assert callable(check)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def mounts_under(rb: Harness) -> list[str]:
    return [line for line in Path("/proc/mounts").read_text().splitlines()
            if str(rb.workdir) in line]


def sleeper(rb: Harness, name: str, mark: str) -> Path:
    return busybox_context(rb, name, (
        "FROM scratch\n"
        "COPY rootfs/ /\n"
        f"RUN echo started; sleep {mark}; echo slept > /done\n"
    ))


# -- tests 1 and 2: leases ----------------------------------------------------------------------


def test_killed_worker_is_reclaimed_by_another_and_only_one_result_counts(
        rb: Harness, service: Service) -> None:
    """Issue 13 test 1: ``kill -9`` a worker mid-build: its step dies with it, another
    worker takes the job over (attempt 2) and builds it; exactly one SUCCESS is recorded
    and a late completion of attempt 1 is refused."""
    mark = marker()
    # the step sleeps (for minutes) only until a deadline: the first worker's attempt
    # hangs until it is killed, the second one, started after the deadline, is quick
    deadline = int(time.time()) + 8
    ctx = busybox_context(rb, "slow", (
        "FROM scratch\nCOPY rootfs/ /\n"
        f'RUN echo started; if [ "$(date +%s)" -lt {deadline} ]; then sleep {mark}; fi\n'
    ), {"rootfs/bin/date": "symlink:busybox"})
    first = service.start_worker("w1")
    job = service.submit(ctx, "acme")
    wait_until("the step to run", lambda: step_processes_all_users(mark))
    record = service.queue.status(job)
    assert (record.state, record.attempt, record.worker) == (JobState.WORKING, 1, "w1")
    first.send_signal(signal.SIGKILL)
    first.wait()
    # the step's pid namespace dies with its builder (no orphaned sleep, no mount)
    wait_until("the killed worker's step to die", lambda: not step_processes_all_users(mark),
               timeout=10)
    wait_until("its mounts to go", lambda: not mounts_under(rb), timeout=10)
    assert service.queue.status(job).state is JobState.WORKING
    time.sleep(max(0.0, deadline + 1 - time.time()))
    service.start_worker("w2")
    done = service.wait(job, TERMINAL)
    assert done.state is JobState.SUCCESS, done
    assert (done.attempt, done.worker) == (2, "w2")
    assert done.result["manifest_digest"].startswith("sha256:")
    raw = service.queue.client.hget(f"rb:job:{job}", "entry")
    assert isinstance(raw, bytes)
    stale = Lease(job, "acme", 1, "w1", raw.decode(), {}, None)
    assert service.queue.complete(stale, JobState.SUCCESS, {"x": 1}) is False
    after = service.queue.status(job)
    assert (after.state, after.attempt, after.result) == (done.state, 2, done.result)
    log = service.log_text(job)
    assert "attempt 2: lease of attempt 1 lost, job taken over by w2" in log
    assert log.count("started") >= 1


def test_a_build_longer_than_the_reclaim_time_is_not_stolen(
        rb: Harness, service: Service) -> None:
    """Issue 13 test 2: heartbeats keep a lease: a 3 s step (five reclaim times) beside an
    idle second worker ends SUCCESS on the first attempt, built once."""
    mark = f"3.{uuid.uuid4().int % 10**6:06d}"
    ctx = sleeper(rb, "long", mark)
    service.start_worker("w1")
    job = service.submit(ctx, "acme")
    wait_until("the step to run", lambda: step_processes_all_users(mark))
    service.start_worker("w2")
    done = service.wait(job, TERMINAL)
    assert done.state is JobState.SUCCESS, done
    assert (done.attempt, done.worker) == (1, "w1")
    assert "lease of attempt" not in service.log_text(job)
    assert "w2: job" not in service.worker_log("w2").replace("w2: claiming", "")


# -- tests 3 and 4: cancel and timeout ----------------------------------------------------------


def test_cancel_queued_and_running_jobs(rb: Harness, service: Service) -> None:
    """Issue 13 test 3: a queued job cancelled never runs; a running one has its step
    killed, ends CANCELLED, pushes nothing, and leaves no process or mount."""
    mark = marker()
    ctx = sleeper(rb, "cancel", mark)
    queued = service.submit(ctx, "acme")
    out = service.cli("cancel", queued).stdout
    assert out.strip() == f"{queued} CANCELLED"
    assert service.queue.status(queued).state is JobState.CANCELLED

    service.start_worker("w1")
    running = service.submit(ctx, "acme")
    wait_until("the step to run", lambda: step_processes_all_users(mark))
    out = service.cli("cancel", running).stdout
    assert out.strip() == f"{running} WORKING (cancel requested)"
    done = service.wait(running, TERMINAL, timeout=30)
    assert done.state is JobState.CANCELLED
    assert done.result == {}
    wait_until("the step to die", lambda: not step_processes_all_users(mark), timeout=10)
    assert mounts_under(rb) == []
    record = service.queue.status(queued)
    assert (record.state, record.attempt) == (JobState.CANCELLED, 0)  # never claimed
    assert "build cancelled" in service.log_text(running)
    # the worker lives on and takes the next job
    quick = busybox_context(rb, "quick", "FROM scratch\nCOPY rootfs/ /\nRUN echo fine\n")
    assert service.wait(service.submit(quick, "acme"), TERMINAL).state is JobState.SUCCESS


def test_step_and_job_time_limits_end_in_timeout(rb: Harness, service: Service) -> None:
    """Issue 13 test 4: a step over the worker's ``--timeout`` ends TIMEOUT naming the
    Dockerfile line, and a job over its own ``--timeout`` ends TIMEOUT; the step's pid
    namespace is empty afterwards."""
    mark = marker()
    ctx = sleeper(rb, "timeout", mark)
    service.start_worker("w1", "--timeout", "2")
    job = service.submit(ctx, "acme")
    done = service.wait(job, TERMINAL)
    assert done.state is JobState.TIMEOUT, done
    assert done.failure_info is not None
    assert done.failure_info.reason == "step_timeout"
    assert done.failure_info.step == "Dockerfile:3"
    assert "timed out after 2s" in done.failure_info.message
    assert step_processes_all_users(mark) == []
    assert mounts_under(rb) == []

    mark2 = marker()
    job2 = service.submit(sleeper(rb, "timeout2", mark2), "acme", "--timeout", "1.5")
    done2 = service.wait(job2, TERMINAL)
    assert done2.state is JobState.TIMEOUT, done2
    assert done2.failure_info is not None and done2.failure_info.reason == "job_timeout"
    wait_until("the step to die", lambda: not step_processes_all_users(mark2), timeout=10)
    assert mounts_under(rb) == []


# -- test 11: end to end with pushes -----------------------------------------------------------


def _auth_file(path: Path, registry: Registry, password: str) -> None:
    assert registry.auth is not None
    token = base64.b64encode(f"{registry.auth[0]}:{password}".encode()).decode()
    path.write_text(json.dumps({"auths": {registry.host: {"auth": token}}}))


def test_two_tenants_push_with_their_own_credentials_only(
        rb: Harness, service: Service, secure_registry: Registry) -> None:
    """Issue 13 test 11: two tenants' builds pushed to a registry with htpasswd auth; each
    job's reported digest is the manifest digest the registry serves. Credentials come only
    from the job's ``credentials_ref``: a job naming wrong ones, or none, fails its push
    although the worker user's own auth file holds valid ones."""
    reg = secure_registry
    assert reg.auth is not None and reg.tls is not None
    creds = rb.workdir / "creds"
    creds.mkdir()
    _auth_file(creds / "acme.json", reg, reg.auth[1])
    _auth_file(creds / "globex.json", reg, reg.auth[1])
    _auth_file(creds / "mallory.json", reg, "wrong-password")
    own = rb.workdir / "worker-own-auth.json"
    _auth_file(own, reg, reg.auth[1])
    rb._own(creds)
    rb._own(own)
    service.start_worker("w1", "--concurrency", "2", "--credentials-dir", str(creds),
                         "--cert-dir", str(reg.tls.ca_dir),
                         env={"REGISTRY_AUTH_FILE": str(own)})
    jobs = {}
    for tenant in ("acme", "globex", "mallory", "anon"):
        token = secrets.token_hex(8)
        ctx = busybox_context(rb, f"ctx-{tenant}", (
            "FROM scratch\nCOPY rootfs/ /\n"
            f"RUN echo {tenant}-{token} > /owner\n"
        ))
        ref = reg.ref(f"svc/{tenant}:v1")
        args = ["-t", ref, "--push"]
        if tenant != "anon":
            args += ["--credentials-ref", tenant]
        jobs[tenant] = (service.submit(ctx, tenant, *args), ref)

    for tenant in ("acme", "globex"):
        job, ref = jobs[tenant]
        done = service.wait(job, TERMINAL, timeout=180)
        assert done.state is JobState.SUCCESS, (done, service.log_text(job))
        digest = done.result["pushed"][ref]
        status, body, headers = reg.get(
            f"/v2/svc/{tenant}/manifests/v1",
            accept="application/vnd.oci.image.manifest.v1+json")
        assert status == 200
        assert digest == "sha256:" + hashlib.sha256(body).hexdigest()
        assert headers.get("Docker-Content-Digest") == digest
        assert done.result["manifest_digest"] == digest
        assert (service.store / "tenants" / tenant / "store").is_dir()
        status_out = service.cli("status", job).stdout
        assert f"pushed {ref}@{digest}" in status_out
    for tenant in ("mallory", "anon"):
        job, ref = jobs[tenant]
        done = service.wait(job, TERMINAL, timeout=180)
        assert done.state is JobState.FAILURE, done
        assert done.failure_info is not None
        assert done.failure_info.reason == "push_failed", done.failure_info
        status, _, _ = reg.get(f"/v2/svc/{tenant}/manifests/v1")
        assert status == 404
    # nothing of a credential in the job records or logs
    for job, _ in jobs.values():
        record = service.queue.client.hgetall(f"rb:job:{job}")
        text = b" ".join([*record.keys(), *record.values()]).decode(errors="replace")
        text += service.log_text(job)
        assert reg.auth[1] not in text and "wrong-password" not in text


def test_tenants_share_no_step_cache(rb: Harness, service: Service) -> None:
    """Per-tenant stores: the same RUN built for two tenants runs twice (no cache hit
    across tenants) and once more for the same tenant is a cache hit."""
    service.start_worker("w1")
    dockerfile = "FROM scratch\nCOPY rootfs/ /\nRUN echo ran-the-step\n"
    ctx = busybox_context(rb, "shared", dockerfile)
    first = service.submit(ctx, "acme")
    assert service.wait(first, TERMINAL).state is JobState.SUCCESS
    other = service.submit(ctx, "globex")
    assert service.wait(other, TERMINAL).state is JobState.SUCCESS
    again = service.submit(ctx, "acme")
    assert service.wait(again, TERMINAL).state is JobState.SUCCESS
    ran = re.compile(r"^#\d+ ran-the-step$", re.M)  # the step's output, not its label
    assert ran.search(service.log_text(first))
    assert ran.search(service.log_text(other))  # globex ran it itself
    assert not ran.search(service.log_text(again))
    assert "CACHED" in service.log_text(again)


# -- the commands -----------------------------------------------------------------------------


def test_submit_status_logs_follow_and_errors(
        rb: Harness, service: Service, redis_server: RedisServer) -> None:
    """``submit`` prints the id, ``status`` and ``status --json`` the record, ``logs`` the
    build output (``--follow`` until the end); bad input is one line and a non-zero exit.

    The upload honours the ignore file as ``docker build`` does: "You can use a
    .dockerignore file to exclude files or directories from the build context."
    (https://docs.docker.com/build/building/context/#dockerignore-files)"""
    token = secrets.token_hex(8)
    ctx = busybox_context(rb, "cmds", (
        "FROM scratch\nCOPY rootfs/ /\nCOPY data.txt /\n"
        f"RUN echo out-{token}; cat /data.txt\n"
    ), {"data.txt": "kept\n", "secret.key": "ignored-file\n", ".dockerignore": "secret.key\n"})
    job = service.submit(ctx, "acme", "--build-arg", "A=1")
    assert service.cli("status", job).stdout.startswith(f"{job} QUEUED tenant=acme attempt=0")
    worker = service.start_worker("w1")
    follow = service.cli("logs", job, "--follow").stdout
    # workers pull: no listening socket of any kind (TCP, UDP, unix) after a build
    listening = subprocess.run(["ss", "-H", "-l", "-n", "-p", "-t", "-u", "-x"],
                               capture_output=True, text=True, check=True).stdout
    assert [line for line in listening.splitlines() if f"pid={worker.pid}," in line] == []
    assert redis_server.proc is not None  # the check sees listeners: redis-server's socket
    assert any(f"pid={redis_server.proc.pid}," in line for line in listening.splitlines())
    assert f"out-{token}" in follow and "kept" in follow
    record = json.loads(service.cli("status", job, "--json").stdout)
    assert record["state"] == "SUCCESS" and record["attempt"] == 1
    assert record["worker"] == "w1" and record["failure_info"] is None
    assert record["result"]["manifest_digest"].startswith("sha256:")
    assert record["spec"]["build_args"] == {"A": "1"}
    assert service.cli("logs", job).stdout == follow

    # the .dockerignore held secret.key back from the upload
    failing = busybox_context(rb, "ign", "FROM scratch\nCOPY secret.key /\n",
                              {"secret.key": "x", ".dockerignore": "secret.key\n"})
    bad = service.submit(failing, "acme")
    done = service.wait(bad, TERMINAL)
    assert done.state is JobState.FAILURE and done.failure_info is not None
    assert done.failure_info.reason == "build_failed"
    assert done.failure_info.step == "Dockerfile:2"
    assert "secret.key" in done.failure_info.message
    status = service.cli("status", bad).stdout
    assert "build_failed at Dockerfile:2:" in status

    for args, needle in [
        (("submit", "--tenant", "Bad Tenant", str(ctx)), "tenant"),
        (("submit", "--tenant", "acme", str(rb.workdir / "nowhere")), "nowhere"),
        (("submit", "--tenant", "acme", "-t", "x", "--push", "--credentials-ref", "../x",
          str(ctx)), "credentials_ref"),
        (("status", "0" * 32), "no job"),
        (("status", "not-an-id"), "not a job id"),
        (("logs", "0" * 32), "no job"),
        (("cancel", "0" * 32), "no job"),
    ]:
        proc = service.cli(*args, check=False)
        assert proc.returncode != 0, args
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("rootbuild: "), proc.stderr
        assert needle in lines[0], (args, lines)
    proc = rb.run("status", job, store=False, check=False)  # no --redis, no $ROOTBUILD_REDIS
    assert proc.returncode == 2 and "ROOTBUILD_REDIS" in proc.stderr
    proc = rb.run("status", job, store=False, env={"ROOTBUILD_REDIS": service.url})
    assert "SUCCESS" in proc.stdout


def test_tenant_caps_are_set_by_command_and_by_the_workers_default(
        rb: Harness, service: Service) -> None:
    """``rootbuild tenant-cap TENANT N`` sets one tenant's cap for every worker; without N
    it prints it; a tenant without one gets the workers' ``--tenant-cap``. With a default
    of 1, a worker of concurrency 2 runs one job of a tenant at a time, and two jobs of
    two tenants at once."""
    assert service.cli("tenant-cap", "acme").stdout.strip() == \
        "acme default (each worker's --tenant-cap)"
    assert service.cli("tenant-cap", "acme", "3").stdout.strip() == "acme 3"
    assert service.queue.tenant_cap("acme") == 3
    assert service.cli("tenant-cap", "acme").stdout.strip() == "acme 3"
    for args, needle in [(("tenant-cap", "acme", "0"), "at least 1"),
                         (("tenant-cap", "Bad Tenant", "2"), "tenant")]:
        proc = service.cli(*args, check=False)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode != 0 and len(lines) == 1, proc.stderr
        assert lines[0].startswith("rootbuild: ") and needle in lines[0], lines
    proc = rb.run("worker", "--redis", service.url, "--tenant-cap", "0", store=False,
                  check=False)
    assert proc.returncode == 2 and "--tenant-cap must be at least 1" in proc.stderr

    mark = marker()
    ctx = sleeper(rb, "capped", mark)
    first = service.submit(ctx, "globex", "--build-arg", "N=1")
    second = service.submit(ctx, "globex", "--build-arg", "N=2")
    other = service.submit(ctx, "initech", "--build-arg", "N=3")
    service.start_worker("w1", "--concurrency", "2", "--tenant-cap", "1")
    wait_until("two jobs to run", lambda: sum(
        service.queue.status(j).state is JobState.WORKING for j in (first, second, other)) == 2)
    states = {j: service.queue.status(j).state for j in (first, second, other)}
    assert states[other] is JobState.WORKING, states  # globex has one slot, initech the other
    assert sorted(s.value for s in states.values()) == ["QUEUED", "WORKING", "WORKING"]
    for job in (first, second, other):
        service.cli("cancel", job)
    for job in (first, second, other):
        assert service.wait(job, TERMINAL).state is JobState.CANCELLED


def test_bad_context_uploads_end_in_failure(rb: Harness, service: Service) -> None:
    """A context blob over the worker's size cap, or whose digest is not the one the job
    names, ends FAILURE (``bad_context``) before anything is unpacked; ``submit`` refuses a
    context over its own cap."""
    big = rb.make_context("big", {"Dockerfile": "FROM scratch\nCOPY . /\n",
                                  "noise.bin": os.urandom(200_000)})
    proc = service.cli("submit", "--tenant", "acme", "--max-context", "64KiB", str(big),
                       check=False)
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1
    assert "larger than 65536 bytes" in proc.stderr

    too_big = service.submit(big, "acme")
    small = rb.make_context("small", {"Dockerfile": "FROM scratch\nCOPY . /\n", "a": "b"})
    swapped = service.submit(small, "acme")
    spec = service.queue.status(swapped).spec
    key = f"rb:ctx:{spec['context']}"
    data = service.queue.client.get(key)
    assert isinstance(data, bytes)
    service.queue.client.set(key, data[:-1] + bytes([data[-1] ^ 1]))  # one bit flipped
    service.start_worker("w1", "--max-context", "150KiB")
    done = service.wait(too_big, TERMINAL)
    assert done.state is JobState.FAILURE and done.failure_info is not None
    assert done.failure_info.reason == "bad_context"
    assert "over the worker's limit" in done.failure_info.message
    done = service.wait(swapped, TERMINAL)
    assert done.state is JobState.FAILURE and done.failure_info is not None
    assert done.failure_info.reason == "bad_context"
    assert "digest mismatch" in done.failure_info.message
    jobs_dir = service.store / "tenants" / "acme" / "jobs"
    assert not jobs_dir.exists() or list(jobs_dir.iterdir()) == []


def test_sigterm_stops_claiming_lets_builds_finish_then_cancels_after_the_grace(
        rb: Harness, service: Service) -> None:
    """SIGTERM: the worker claims nothing more, a running build finishes within the grace
    time and is completed; one that outlasts the grace is killed (no step left) and not
    completed, so its lease lapses for another worker; the worker exits 0."""
    quick = busybox_context(rb, "quick", "FROM scratch\nCOPY rootfs/ /\nRUN sleep 1.5\n")
    worker = service.start_worker("w1", "--grace", "20")
    job = service.submit(quick, "acme")
    service.wait(job, {JobState.WORKING})
    time.sleep(0.3)
    worker.send_signal(signal.SIGTERM)
    later = service.submit(quick, "acme")
    assert worker.wait(timeout=60) == 0
    assert service.queue.status(job).state is JobState.SUCCESS
    assert service.queue.status(later).state is JobState.QUEUED
    service.cli("cancel", later)

    mark = marker()
    worker = service.start_worker("w2", "--grace", "1")
    slow = service.submit(sleeper(rb, "slow", mark), "acme")
    wait_until("the step to run", lambda: step_processes_all_users(mark))
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=30) == 0
    assert step_processes_all_users(mark) == []
    assert mounts_under(rb) == []
    record = service.queue.status(slow)
    assert (record.state, record.attempt) == (JobState.WORKING, 1)  # left to a reclaim
    assert "not completing it" in service.worker_log("w2")
    service.cli("cancel", slow)


def test_a_worker_that_loses_redis_kills_its_own_build(
        rb: Harness, service: Service, redis_server: RedisServer) -> None:
    """A worker that cannot reach Redis for the reclaim time kills its build (another
    worker may own the job by then) and keeps running, without completing anything."""
    mark = marker()
    worker = service.start_worker("w1")
    job = service.submit(sleeper(rb, "cut", mark), "acme")
    wait_until("the step to run", lambda: step_processes_all_users(mark))
    redis_server.kill()
    wait_until("the step to die", lambda: not step_processes_all_users(mark), timeout=20)
    assert mounts_under(rb) == []
    assert worker.poll() is None
    redis_server.start()  # the AOF kept the job: still attempt 1, WORKING, not completed
    os.chmod(redis_server.socket, 0o777)
    record = service.queue.status(job)
    assert (record.state, record.attempt) == (JobState.WORKING, 1)
    wait_until("the worker to say why",
               lambda: "build stopped (unreachable)" in service.worker_log("w1"), timeout=20)
    service.cli("cancel", job)
