"""The build service's queue against a real ``redis-server`` (issue 13, tests 1-3 and 5-9 at
the queue level: no build runs, so no builder and no test user are involved).

Each test starts its own server on a unix socket in a temporary directory, with AOF on, as
the service runs it: ``redis-server --port 0 --unixsocket $tmp/r.sock --save ''
--appendonly yes --dir $tmp``. Lease times are short (heartbeats of 0.05-0.1 s) so the
suite stays fast; the rules are the same at production times.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import redis
import trio

from rootbuild.service.jobs import FailureInfo, JobState, Lease, QueueConfig
from rootbuild.service.queue import RedisQueue, connect
from rootbuild.service.trio_queue import LeaseEnd, TrioQueue

pytestmark = pytest.mark.integration

FAST = QueueConfig(heartbeat=0.1)  # a lease is lost after 0.3 s without a heartbeat


class RedisServer:
    """One redis-server of one test: started, killed (-9) and restarted on the same AOF."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.socket = directory / "r.sock"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def start(self) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            pytest.fail("integration prerequisite missing: redis-server (apt-get install "
                        "redis-server; scripts/setup-debian.sh lists it)")
        log = open(self.dir / "redis.log", "ab")  # noqa: SIM115 (the server keeps it)
        self.proc = subprocess.Popen(
            [exe, "--port", "0", "--unixsocket", str(self.socket), "--save", "",
             "--appendonly", "yes", "--dir", str(self.dir)],
            stdout=log, stderr=log,
        )
        log.close()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.socket.exists():
                try:
                    if redis.Redis(unix_socket_path=str(self.socket)).ping():
                        return
                except redis.ConnectionError:
                    pass
            if self.proc.poll() is not None:
                break
            time.sleep(0.01)
        pytest.fail(f"redis-server did not start: {(self.dir / 'redis.log').read_text()}")

    def kill(self) -> None:
        """SIGKILL: no shutdown save; what survives is what the AOF already holds."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)
        self.proc = None
        self.socket.unlink(missing_ok=True)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
            self.proc = None


@pytest.fixture
def server() -> Iterator[RedisServer]:
    directory = Path(tempfile.mkdtemp(prefix="rb-redis-"))
    srv = RedisServer(directory)
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()
        shutil.rmtree(directory, ignore_errors=True)


def _queue(server: RedisServer, config: QueueConfig = FAST) -> RedisQueue:
    return RedisQueue(connect(server.url), config)


def _pending(q: RedisQueue, tenant: str) -> int:
    return int(q.client.xpending(f"rb:q:{tenant}", "workers")["pending"])


# A worker process that claims one job, prints its lease, and heartbeats until killed.
_WORKER = """
import json, sys, time
from dataclasses import asdict
from rootbuild.service.jobs import QueueConfig
from rootbuild.service.queue import RedisQueue, connect
q = RedisQueue(connect(sys.argv[1]), QueueConfig(heartbeat=0.1))
lease = q.claim(sys.argv[2])
print(json.dumps(asdict(lease)), flush=True)
while True:
    assert q.heartbeat(lease).alive
    q.append_log(lease, b"step 1 of many\\n")
    time.sleep(0.1)
"""


def test_killed_worker_is_reclaimed_once_and_its_late_result_is_rejected(
        server: RedisServer) -> None:
    q = _queue(server)
    job = q.submit("acme", {"context": "sha256:" + "1" * 64}, credentials_ref="acme-push")
    first = subprocess.Popen(
        [sys.executable, "-c", _WORKER, server.url, "worker-1"],
        stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(Path.cwd())},
    )
    try:
        assert first.stdout is not None
        stale = Lease(**json.loads(first.stdout.readline()))
        assert (stale.job_id, stale.attempt, stale.worker) == (job, 1, "worker-1")
        time.sleep(0.6)  # twice the reclaim time: heartbeats keep the lease
        assert q.claim("worker-2") is None
        first.send_signal(signal.SIGKILL)  # kill -9 mid-build
    finally:
        first.kill()
        first.wait()
    assert q.status(job).state is JobState.WORKING
    time.sleep(0.4)  # three missed heartbeats
    lease = q.claim("worker-2")
    assert lease is not None
    assert (lease.job_id, lease.attempt, lease.credentials_ref) == (job, 2, "acme-push")
    assert q.status(job).worker == "worker-2"

    # the first worker comes back late: every write of attempt 1 is refused
    assert q.heartbeat(stale).alive is False
    assert q.append_log(stale, b"late line\n") is False
    assert q.complete(stale, JobState.SUCCESS, {"digest": "sha256:" + "a" * 64}) is False

    accepted = [
        q.complete(lease, JobState.SUCCESS, {"digest": "sha256:" + "b" * 64}),
        q.complete(stale, JobState.SUCCESS, {"digest": "sha256:" + "a" * 64}),
        q.complete(lease, JobState.FAILURE, None, FailureInfo("step_failed", "again")),
    ]
    assert accepted == [True, False, False]  # exactly one result
    record = q.status(job)
    assert record.state is JobState.SUCCESS
    assert (record.attempt, record.worker) == (2, "worker-2")
    assert record.result == {"digest": "sha256:" + "b" * 64}
    assert _pending(q, "acme") == 0
    log = q.read_log(job)
    assert all(e.data != b"late line\n" for e in log)
    notes = [e.data.decode() for e in log if e.kind == "note"]
    assert notes == ["attempt 2: lease of attempt 1 lost, job taken over by worker-2"]
    assert q.claim("worker-3") is None  # nothing left to run twice


async def test_heartbeats_keep_a_lease_longer_than_the_reclaim_time(
        server: RedisServer) -> None:
    tq = TrioQueue(_queue(server), poll=0.02)
    job = await tq.submit("acme", {"context": "long"})
    lease = await tq.claim("worker-1")
    assert lease is not None
    stolen: list[object] = []

    async def heartbeats() -> None:
        while True:
            beat = await tq.heartbeat(lease)
            assert beat.alive and not beat.cancel_requested
            await trio.sleep(FAST.heartbeat)

    async def thieves() -> None:
        # other workers claim and reap all the while: 5 times the reclaim time
        end = trio.current_time() + 5 * FAST.reclaim_ms / 1000
        while trio.current_time() < end:
            stolen.append(await tq.claim("worker-2"))
            assert await tq.reap() == 0
            await trio.sleep(0.03)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(heartbeats)
        await thieves()
        nursery.cancel_scope.cancel()
    assert stolen and set(stolen) == {None}
    assert await tq.complete(lease, JobState.SUCCESS, {"digest": "sha256:" + "c" * 64})
    record = await tq.status(job)
    assert (record.state, record.attempt, record.worker) == (JobState.SUCCESS, 1, "worker-1")
    assert await tq.claim_wait("worker-2", 0.2) is None


def test_cancel_while_queued_is_skipped_at_claim(server: RedisServer) -> None:
    q = _queue(server)
    doomed = q.submit("acme", {"n": 1})
    kept = q.submit("acme", {"n": 2})
    assert q.cancel(doomed) is JobState.CANCELLED
    assert q.status(doomed).state is JobState.CANCELLED  # at once, not at claim
    lease = q.claim("worker-1")
    assert lease is not None and lease.job_id == kept
    record = q.status(doomed)
    assert (record.state, record.attempt, record.started_at) == (JobState.CANCELLED, 0, None)
    assert q.cancel(doomed) is JobState.CANCELLED  # idempotent
    assert q.claim("worker-1") is None
    assert _pending(q, "acme") == 1  # only the running job's lease


def test_cancel_while_running_reaches_the_worker(server: RedisServer) -> None:
    q = _queue(server)
    job = q.submit("acme", {"n": 1})
    lease = q.claim("worker-1")
    assert lease is not None
    pubsub = q.client.pubsub()
    pubsub.subscribe("rb:cancel")
    assert pubsub.get_message(timeout=1.0)["type"] == "subscribe"  # type: ignore[index]
    assert q.heartbeat(lease).cancel_requested is False

    assert q.cancel(job) is JobState.WORKING  # the worker ends it
    message = pubsub.get_message(timeout=1.0)
    assert message is not None and message["data"] == job.encode()
    pubsub.close()
    beat = q.heartbeat(lease)
    assert beat.alive and beat.cancel_requested
    assert q.status(job).cancel_requested
    assert q.complete(lease, JobState.CANCELLED)
    record = q.status(job)
    assert record.state is JobState.CANCELLED and record.finished_at is not None
    assert q.cancel(job) is JobState.CANCELLED
    assert _pending(q, "acme") == 0


def test_cancelled_job_whose_worker_died_is_not_run_again(server: RedisServer) -> None:
    q = _queue(server)
    job = q.submit("acme", {"n": 1})
    assert q.claim("worker-1") is not None
    assert q.cancel(job) is JobState.WORKING
    time.sleep(0.4)  # the worker is gone before it learned of the cancel
    assert q.claim("worker-2") is None
    assert q.status(job).state is JobState.CANCELLED
    assert _pending(q, "acme") == 0


def test_round_robin_serves_the_small_tenant_in_the_first_round(server: RedisServer) -> None:
    q = _queue(server, QueueConfig(heartbeat=10, tenant_cap=2))
    a_jobs = [q.submit("tenant-a", {"n": i}) for i in range(30)]
    b_job = q.submit("tenant-b", {"n": 0})
    q.set_tenant_cap("tenant-c", 3)
    c_jobs = [q.submit("tenant-c", {"n": i}) for i in range(5)]

    first_round = [q.claim(f"worker-{i}") for i in range(3)]
    assert [lease.tenant for lease in first_round if lease] == ["tenant-a", "tenant-b",
                                                                "tenant-c"]
    assert first_round[1] is not None and first_round[1].job_id == b_job
    assert first_round[0] is not None and first_round[0].job_id == a_jobs[0]  # FIFO
    # fill every slot: the caps hold however many workers ask
    leases = [lease for lease in first_round if lease]
    while (lease := q.claim("worker-x")) is not None:
        leases.append(lease)
    running = Counter(lease.tenant for lease in leases)
    assert running == {"tenant-a": 2, "tenant-b": 1, "tenant-c": 3}
    assert [lease.job_id for lease in leases if lease.tenant == "tenant-c"] == c_jobs[:3]
    # a slot freed by tenant-a goes to tenant-a's next job, and only one
    done = next(lease for lease in leases if lease.tenant == "tenant-a")
    assert q.complete(done, JobState.SUCCESS)
    nxt = q.claim("worker-y")
    assert nxt is not None and nxt.job_id == a_jobs[2]
    assert q.claim("worker-y") is None


def test_log_resumes_from_an_entry_id_and_is_capped_in_bytes(server: RedisServer) -> None:
    q = _queue(server, QueueConfig(heartbeat=0.1, log_max_bytes=100))
    job = q.submit("acme", {"n": 1})
    lease = q.claim("worker-1")
    assert lease is not None
    kept = [q.append_log(lease, b"line %04d\n" % i) for i in range(25)]  # 10 bytes each
    assert kept == [True] * 10 + [False] * 15
    log = q.read_log(job)
    assert [e.data for e in log[:10]] == [b"line %04d\n" % i for i in range(10)]
    assert [e.kind for e in log] == ["out"] * 10 + ["note"]
    assert b"log capped at" in log[10].data and b"100 bytes" in log[10].data
    assert sum(len(e.data) for e in log if e.kind == "out") == 100
    assert q.status(job).log_dropped == 15
    # resume after the 4th entry, a page of 3 at a time
    resumed, after = [], log[3].id
    while page := q.read_log(job, after=after, count=3):
        resumed.extend(page)
        after = page[-1].id
    assert resumed == log[4:]
    assert q.read_log(job, after=log[-1].id, block=0.1) == []


def test_log_is_capped_in_entries(server: RedisServer) -> None:
    q = _queue(server, QueueConfig(heartbeat=0.1, log_max_entries=3))
    job = q.submit("acme", {"n": 1})
    lease = q.claim("worker-1")
    assert lease is not None
    assert [q.append_log(lease, b"x") for _ in range(5)] == [True] * 3 + [False] * 2
    assert [e.kind for e in q.read_log(job)] == ["out"] * 3 + ["note"]


async def test_follow_log_streams_until_the_job_ends(server: RedisServer) -> None:
    tq = TrioQueue(_queue(server))
    job = await tq.submit("acme", {"n": 1})
    lease = await tq.claim_wait("worker-1", 2.0)
    assert lease is not None
    seen: list[bytes] = []

    async def follow() -> None:
        async for entry in tq.follow_log(job):
            seen.append(entry.data)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(follow)
        for i in range(5):
            assert await tq.append_log(lease, b"%d\n" % i)
            await trio.sleep(0.05)
        assert await tq.complete(lease, JobState.FAILURE, None,
                                 FailureInfo("step_failed", "exit code 1", "RUN make"))
    assert seen == [b"%d\n" % i for i in range(5)]
    record = await tq.status(job)
    assert record.failure_info == FailureInfo("step_failed", "exit code 1", "RUN make")


def test_queue_ttl_expires_jobs_at_claim_and_at_reap(server: RedisServer) -> None:
    q = _queue(server, QueueConfig(heartbeat=0.1, queue_ttl=0.3))
    stale = [q.submit("acme", {"n": i}) for i in range(2)]
    idle = q.submit("other", {"n": 0})
    time.sleep(0.4)
    fresh = q.submit("acme", {"n": 9})
    lease = q.claim("worker-1")  # expires acme's two stale jobs on the way
    assert lease is not None and lease.job_id == fresh
    assert q.reap() == 1  # "other" had no claim to expire it
    for job in [*stale, idle]:
        record = q.status(job)
        assert record.state is JobState.EXPIRED and record.started_at is None
        assert record.failure_info is not None
        assert record.failure_info.reason == "expired"
        assert "queue_ttl" in record.failure_info.message
    assert q.claim("worker-1") is None
    assert q.status(fresh).state is JobState.WORKING


def test_poison_job_ends_internal_error_after_three_deliveries(server: RedisServer) -> None:
    q = _queue(server, QueueConfig(heartbeat=0.05))  # reclaimed after 0.15 s
    job = q.submit("acme", {"n": 1})
    attempts = []
    for worker in ["worker-1", "worker-2", "worker-3"]:
        lease = q.claim(worker)
        assert lease is not None and lease.job_id == job
        attempts.append(lease.attempt)
        time.sleep(0.25)  # the worker crashes on this job, every time
    assert attempts == [1, 2, 3]
    assert q.claim("worker-4") is None  # a fourth delivery is refused
    record = q.status(job)
    assert (record.state, record.attempt) == (JobState.INTERNAL_ERROR, 3)
    assert record.failure_info is not None
    assert record.failure_info.reason == "worker_lost"
    assert record.failure_info.message.startswith("worker lost")
    assert _pending(q, "acme") == 0


def test_reap_ends_a_poison_job_without_a_free_worker(server: RedisServer) -> None:
    q = _queue(server, QueueConfig(heartbeat=0.05))
    job = q.submit("acme", {"n": 1})
    for worker in ["worker-1", "worker-2", "worker-3"]:
        assert q.claim(worker) is not None
        assert q.reap() == 0  # a live lease is never reaped
        time.sleep(0.25)
    assert q.reap() == 1
    assert q.status(job).state is JobState.INTERNAL_ERROR


def test_queued_and_running_jobs_survive_a_redis_restart(server: RedisServer) -> None:
    config = QueueConfig(heartbeat=1.0)  # the lease outlives the restart
    q = _queue(server, config)
    running = q.submit("acme", {"n": 1}, credentials_ref="acme-push")
    queued = [q.submit("acme", {"n": 2}), q.submit("beta", {"n": 3})]
    lease = q.claim("worker-1")
    assert lease is not None and lease.job_id == running
    assert q.append_log(lease, b"before the restart\n")
    time.sleep(1.1)  # appendfsync everysec: give the AOF its fsync

    server.kill()  # kill -9: the data is what the AOF holds
    server.start()

    beat = q.heartbeat(lease)  # the same client reconnects
    assert beat.alive and not beat.cancel_requested
    assert q.status(running).state is JobState.WORKING
    assert [q.status(job).state for job in queued] == [JobState.QUEUED] * 2
    assert q.append_log(lease, b"after the restart\n")
    assert q.complete(lease, JobState.SUCCESS, {"digest": "sha256:" + "d" * 64})
    for _ in queued:
        other = q.claim("worker-2")
        assert other is not None
        assert q.complete(other, JobState.SUCCESS, {"digest": "sha256:" + "e" * 64})
    assert {q.status(job).state for job in [running, *queued]} == {JobState.SUCCESS}
    assert [e.data for e in q.read_log(running)] == [b"before the restart\n",
                                                     b"after the restart\n"]
    assert q.status(running).credentials_ref == "acme-push"


def test_reap_puts_a_tenant_with_queued_work_back_in_the_ring(server: RedisServer) -> None:
    # the ring is derived state: if it loses a tenant (a write lost with the AOF's last
    # second), reap restores it from the streams, so no tenant's queue is forgotten
    q = _queue(server)
    job = q.submit("acme", {"n": 1})
    q.client.delete("rb:ring")
    assert q.claim("worker-1") is None
    assert q.reap() == 0
    lease = q.claim("worker-1")
    assert lease is not None and lease.job_id == job


def test_caps_hold_under_concurrent_claims(server: RedisServer) -> None:
    # 8 workers claim at once (each its own connection): the claim script is atomic, so
    # no tenant ever runs more than its cap and no job is handed out twice
    q = _queue(server, QueueConfig(heartbeat=10, tenant_cap=3))
    for tenant in ["tenant-a", "tenant-b"]:
        for i in range(10):
            q.submit(tenant, {"n": i})

    def worker(name: str) -> list[Lease]:
        mine = RedisQueue(connect(server.url), q.config)
        got = []
        for _ in range(5):
            lease = mine.claim(name)
            if lease is not None:
                got.append(lease)
        return got

    with ThreadPoolExecutor(8) as pool:
        leases = [lease for got in pool.map(worker, [f"w{i}" for i in range(8)])
                  for lease in got]
    assert Counter(lease.tenant for lease in leases) == {"tenant-a": 3, "tenant-b": 3}
    assert len({lease.job_id for lease in leases}) == 6


async def test_keep_lease_says_when_to_kill_the_build(server: RedisServer) -> None:
    tq = TrioQueue(_queue(server))
    cancelled_job = await tq.submit("acme", {"n": 1})
    lost_job = await tq.submit("beta", {"n": 2})
    first = await tq.claim("worker-1")
    second = await tq.claim("worker-1")
    assert first is not None and second is not None
    assert first.job_id == cancelled_job and second.job_id == lost_job

    async def cancel_soon() -> None:
        await trio.sleep(0.5)
        assert await tq.cancel(cancelled_job) is JobState.WORKING

    async with trio.open_nursery() as nursery:
        nursery.start_soon(cancel_soon)
        with trio.fail_after(3):
            assert await tq.keep_lease(first) is LeaseEnd.CANCELLED
    assert await tq.complete(first, JobState.CANCELLED)

    # a worker that stalls past the reclaim time finds its job taken over
    await trio.sleep(0.4)
    taken = await tq.claim("worker-2")
    assert taken is not None and taken.attempt == 2
    with trio.fail_after(3):
        assert await tq.keep_lease(second) is LeaseEnd.LOST

    # Redis goes away for good: the worker gives up within the reclaim time
    server.kill()
    start = trio.current_time()
    with trio.fail_after(5):
        assert await tq.keep_lease(taken) is LeaseEnd.UNREACHABLE
    assert trio.current_time() - start <= FAST.reclaim_ms / 1000 + 0.2


def test_reap_forgets_idle_consumers(server: RedisServer) -> None:
    # a worker name is a consumer of each stream it claimed from; workers come and go, so
    # consumers with nothing pending are deleted once idle (an XREADGROUP recreates them)
    q = _queue(server)
    q.submit("acme", {"n": 1})
    lease = q.claim("worker-gone")
    assert lease is not None and q.complete(lease, JobState.SUCCESS)
    busy = q.submit("acme", {"n": 2})
    running = q.claim("worker-busy")
    assert running is not None and running.job_id == busy
    time.sleep(0.2)
    assert q.heartbeat(running).alive
    time.sleep(0.2)
    assert q.heartbeat(running).alive
    assert q.reap() == 0
    names = {c["name"] for c in q.client.xinfo_consumers("rb:q:acme", "workers")}
    assert names == {b"worker-busy"}
