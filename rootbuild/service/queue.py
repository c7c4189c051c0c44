"""The job queue on Redis Streams: submit, claim, heartbeat, complete, cancel, status, reap.

Job: ``RedisQueue``, the adapter between ``jobs.JobQueue`` and one Redis (or Valkey)
server. Every transition is one Lua script from ``scripts.py``; this module encodes the
arguments and decodes the replies. Logs are in ``logs.py``.

Rules:
- Synchronous (redis-py's blocking client; ``redis.asyncio`` does not run under trio): a
  trio program calls it through ``trio_queue.TrioQueue``, which runs each call in a thread.
  No call blocks longer than the ``block`` it is given (logs) or a few milliseconds.
- Fairness, caps and leases live in the claim script, so any number of workers claim
  without a leader: each claim rotates the ring of tenants with backlog by one, skips a
  tenant at its cap, and takes one entry.
- Delivery is at least once: a lease idle for ``missed_heartbeats`` heartbeats is taken over
  by the next claim with ``attempt + 1``; the ``attempt`` fences every later write, so the
  first worker's late heartbeat, log line or result changes nothing.
- A worker that gets ``Heartbeat.alive == False``, or cannot reach Redis for longer than
  ``config.reclaim_ms``, must kill its build: the job belongs to someone else now.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Iterator, Mapping
from typing import Any, cast

import redis

from rootbuild.service import scripts
from rootbuild.service.jobs import (
    FailureInfo,
    Heartbeat,
    JobQueue,
    JobRecord,
    JobState,
    Lease,
    LogEntry,
    QueueConfig,
    QueueError,
    check_credentials_ref,
    check_job_id,
    check_outcome,
    check_tenant,
    encode_spec,
)
from rootbuild.service.logs import append_log, read_log


@contextlib.contextmanager
def _redis_errors() -> Iterator[None]:
    """Redis failures as the one-line errors the CLI prints."""
    try:
        yield
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise QueueError(f"queue: cannot reach redis: {exc}") from exc
    except redis.ResponseError as exc:
        raise QueueError(f"queue: redis refused: {exc}") from exc


def connect(url: str) -> redis.Redis:
    """A client for ``redis://host:port/db`` or ``unix:///path/to/socket``. Connection
    errors are retried briefly, so a Redis restart is a pause, not a failure."""
    from redis.backoff import ExponentialBackoff
    from redis.retry import Retry

    return redis.Redis.from_url(
        url,
        socket_timeout=10,
        socket_connect_timeout=5,
        retry=Retry(ExponentialBackoff(cap=0.5, base=0.02), 8),
        retry_on_error=[redis.ConnectionError, redis.TimeoutError],
        health_check_interval=0,
    )


class RedisQueue:
    """One Redis server holding every tenant's jobs (see ``scripts.py`` for the keys)."""

    def __init__(self, client: redis.Redis, config: QueueConfig | None = None) -> None:
        self.client = client
        self.config = config or QueueConfig()
        self._submit = client.register_script(scripts.SUBMIT)
        self._claim = client.register_script(scripts.CLAIM)
        self._heartbeat = client.register_script(scripts.HEARTBEAT)
        self._complete = client.register_script(scripts.COMPLETE)
        self._cancel = client.register_script(scripts.CANCEL)
        self._reap = client.register_script(scripts.REAP)
        self._append = client.register_script(scripts.APPEND_LOG)

    @property
    def prefix(self) -> str:
        return self.config.prefix

    def _run(self, script: Any, *args: object) -> Any:
        with _redis_errors():
            return script(args=[self.prefix, *args])

    def set_tenant_cap(self, tenant: str, cap: int) -> None:
        """The tenant's concurrency cap (default ``config.tenant_cap``)."""
        if cap < 1:
            raise QueueError(f"tenant {tenant}: cap must be at least 1, not {cap}")
        with _redis_errors():
            self.client.hset(f"{self.prefix}:caps", check_tenant(tenant), cap)

    def tenant_cap(self, tenant: str) -> int | None:
        """The tenant's own cap (``set_tenant_cap``), None when it has none: then each
        worker's ``config.tenant_cap`` applies."""
        with _redis_errors():
            value = self.client.hget(f"{self.prefix}:caps", check_tenant(tenant))
        return None if value is None else int(value)

    def submit(self, tenant: str, spec: Mapping[str, Any],
               credentials_ref: str | None = None) -> str:
        """Queue a job; returns its id. ``spec`` is the worker's business (context digest,
        Dockerfile name, tags, build args ...) and must hold no credential value."""
        job_id = uuid.uuid4().hex
        self._run(self._submit, job_id, check_tenant(tenant), encode_spec(spec),
                  check_credentials_ref(credentials_ref))
        return job_id

    def claim(self, worker: str) -> Lease | None:
        """The next job for ``worker`` (a lost lease first, then round-robin over tenants),
        or None. Never blocks; ``TrioQueue.claim_wait`` polls."""
        cfg = self.config
        reply = self._run(
            self._claim, worker, cfg.tenant_cap, int(cfg.queue_ttl * 1000), cfg.reclaim_ms,
            cfg.max_deliveries, int(cfg.retention * 1000),
        )
        if not reply:
            return None
        job_id, attempt, entry, tenant, spec, cred = reply
        return Lease(
            job_id=job_id.decode(), tenant=tenant.decode(), attempt=int(attempt),
            worker=worker, entry=entry.decode(), spec=json.loads(spec),
            credentials_ref=cred.decode() or None,
        )

    def heartbeat(self, lease: Lease) -> Heartbeat:
        """Renew the lease (``XCLAIM ... JUSTID``); say whether it is still ours and whether
        the job was cancelled."""
        alive, cancel = self._run(self._heartbeat, lease.job_id, lease.attempt, lease.worker)
        return Heartbeat(alive=bool(alive), cancel_requested=bool(cancel))

    def complete(self, lease: Lease, state: JobState, result: Mapping[str, Any] | None = None,
                 failure: FailureInfo | None = None) -> bool:
        """End the job with ``state`` if ``lease`` is still the current attempt (XACK in the
        same script). False: the lease was lost or the job already ended; nothing changed."""
        check_outcome(state, failure)
        accepted, _ = self._run(
            self._complete, lease.job_id, lease.attempt, state.value,
            json.dumps(dict(result or {}), sort_keys=True),
            failure.reason if failure else "", failure.message if failure else "",
            (failure.step or "") if failure else "", int(self.config.retention * 1000),
        )
        return bool(accepted)

    def cancel(self, job_id: str) -> JobState:
        """Cancel a job: a queued one is CANCELLED at once (its claim skips it); a running
        one is flagged and announced on ``<prefix>:cancel``, and stays WORKING until its
        worker (told by its next heartbeat) completes it CANCELLED. Returns the state now."""
        state = self._run(self._cancel, check_job_id(job_id), int(self.config.retention * 1000))
        if not state:
            raise QueueError(f"cancel: no job {job_id}")
        return JobState(state.decode())

    def status(self, job_id: str) -> JobRecord:
        with _redis_errors():
            raw = cast(dict[bytes, bytes],
                       self.client.hgetall(f"{self.prefix}:job:{check_job_id(job_id)}"))
        if not raw:
            raise QueueError(f"status: no job {job_id}")
        return JobRecord.from_hash(job_id, raw)

    def reap(self) -> int:
        """End what no claim will take: lost leases already delivered ``max_deliveries``
        times (INTERNAL_ERROR), lost leases of cancelled jobs, queue heads past queue_ttl
        (EXPIRED) or cancelled. Every worker calls this now and then; returns jobs ended."""
        cfg = self.config
        return int(self._run(self._reap, cfg.reclaim_ms, cfg.max_deliveries,
                             int(cfg.queue_ttl * 1000), int(cfg.retention * 1000)))

    def append_log(self, lease: Lease, data: bytes) -> bool:
        """Append build output under the lease; False when a cap dropped it."""
        return append_log(self, lease, data)

    def read_log(self, job_id: str, after: str = "0-0", count: int = 1000,
                 block: float | None = None) -> list[LogEntry]:
        """Log entries after entry id ``after``, waiting up to ``block`` seconds for one."""
        with _redis_errors():
            return read_log(self, check_job_id(job_id), after, count, block)


def as_job_queue(queue: RedisQueue) -> JobQueue:
    """``RedisQueue`` as the worker's seam (mypy checks that it implements ``JobQueue``)."""
    return queue
