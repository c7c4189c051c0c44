"""The queue for trio programs (the worker, ``logs --follow``): each call in a thread.

Job: ``TrioQueue`` wraps a ``RedisQueue`` (``redis.asyncio`` does not run under trio: "no
running event loop"); ``claim_wait`` polls the claim script until a job comes or the
timeout passes; ``follow_log`` yields a job's log until the job ends.

Rules:
- Every Redis call runs through ``trio.to_thread.run_sync`` and is short (claim and
  heartbeat are single scripts; log reads block at most 2 s), so cancelling the trio task
  waits at most that long; redis-py's connection pool is thread-safe.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, TypeVar

import trio

from rootbuild.service.jobs import (
    FailureInfo,
    Heartbeat,
    JobRecord,
    JobState,
    Lease,
    LogEntry,
)
from rootbuild.service.queue import RedisQueue

T = TypeVar("T")


class TrioQueue:
    def __init__(self, queue: RedisQueue, poll: float = 0.2) -> None:
        self.queue = queue
        self.poll = poll

    async def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await trio.to_thread.run_sync(functools.partial(fn, *args, **kwargs))

    async def submit(self, tenant: str, spec: Mapping[str, Any],
                     credentials_ref: str | None = None) -> str:
        return await self._call(self.queue.submit, tenant, spec, credentials_ref)

    async def claim(self, worker: str) -> Lease | None:
        return await self._call(self.queue.claim, worker)

    async def claim_wait(self, worker: str, timeout: float) -> Lease | None:
        """A job, or None after ``timeout`` seconds without one."""
        with trio.move_on_after(timeout):
            while True:
                lease = await self.claim(worker)
                if lease is not None:
                    return lease
                await trio.sleep(self.poll)
        return None

    async def heartbeat(self, lease: Lease) -> Heartbeat:
        return await self._call(self.queue.heartbeat, lease)

    async def complete(self, lease: Lease, state: JobState,
                       result: Mapping[str, Any] | None = None,
                       failure: FailureInfo | None = None) -> bool:
        return await self._call(self.queue.complete, lease, state, result, failure)

    async def cancel(self, job_id: str) -> JobState:
        return await self._call(self.queue.cancel, job_id)

    async def status(self, job_id: str) -> JobRecord:
        return await self._call(self.queue.status, job_id)

    async def reap(self) -> int:
        return await self._call(self.queue.reap)

    async def append_log(self, lease: Lease, data: bytes) -> bool:
        return await self._call(self.queue.append_log, lease, data)

    async def read_log(self, job_id: str, after: str = "0-0", count: int = 1000,
                       block: float | None = None) -> list[LogEntry]:
        return await self._call(self.queue.read_log, job_id, after, count, block)

    async def follow_log(self, job_id: str, after: str = "0-0") -> AsyncIterator[LogEntry]:
        """Every entry after ``after`` until the job has ended and its log is drained."""
        while True:
            ended = (await self.status(job_id)).terminal
            entries = await self.read_log(job_id, after, block=1.0)
            for entry in entries:
                after = entry.id
                yield entry
            if ended and not entries:
                return
