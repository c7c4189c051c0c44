"""The queue for trio programs (the worker, ``logs --follow``): each call in a thread.

Job: ``TrioQueue`` wraps a ``RedisQueue`` (``redis.asyncio`` does not run under trio: "no
running event loop"); ``claim_wait`` polls the claim script until a job comes or the
timeout passes; ``keep_lease`` heartbeats beside a build and says when to kill it;
``follow_log`` yields a job's log until the job ends.

Rules:
- Every Redis call runs through ``trio.to_thread.run_sync`` and is short (claim and
  heartbeat are single scripts; log reads block at most 2 s), so cancelling the trio task
  waits at most that long; redis-py's connection pool is thread-safe.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Callable, Mapping
from enum import StrEnum
from typing import Any, TypeVar

import trio

from rootbuild.service.jobs import (
    FailureInfo,
    Heartbeat,
    JobRecord,
    JobState,
    Lease,
    LogEntry,
    QueueError,
)
from rootbuild.service.queue import RedisQueue

T = TypeVar("T")


class LeaseEnd(StrEnum):
    """Why ``keep_lease`` returned: each one means "kill the build now"."""

    CANCELLED = "cancelled"  # complete the job CANCELLED
    LOST = "lost"  # someone else owns the job; complete nothing
    UNREACHABLE = "unreachable"  # Redis gone for the reclaim time; complete nothing


class TrioQueue:
    def __init__(self, queue: RedisQueue, poll: float = 0.2) -> None:
        self.queue = queue
        self.poll = poll

    async def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        # abandon_on_cancel: a cancelled caller stops waiting at once; the thread ends
        # with its (short) Redis call and nobody reads its result
        return await trio.to_thread.run_sync(functools.partial(fn, *args, **kwargs),
                                             abandon_on_cancel=True)

    async def submit(self, tenant: str, spec: Mapping[str, Any],
                     credentials_ref: str | None = None) -> str:
        return await self._call(self.queue.submit, tenant, spec, credentials_ref)

    async def claim(self, worker: str) -> Lease | None:
        """One claim, never abandoned half way (shielded, not ``abandon_on_cancel``): a
        lease the claim script gave out must reach the caller, or the job would sit leased
        to nobody until it is reclaimed (a delivery counted for nothing)."""
        lease: Lease | None = None
        with trio.CancelScope(shield=True):
            lease = await trio.to_thread.run_sync(self.queue.claim, worker)
        return lease

    async def claim_wait(self, worker: str, timeout: float) -> Lease | None:
        """A job, or None after ``timeout`` seconds without one."""
        deadline = trio.current_time() + timeout
        while True:
            lease = await self.claim(worker)
            if lease is not None:
                return lease
            left = deadline - trio.current_time()
            if left <= 0:
                return None
            await trio.sleep(min(self.poll, left))

    async def heartbeat(self, lease: Lease) -> Heartbeat:
        return await self._call(self.queue.heartbeat, lease)

    async def keep_lease(self, lease: Lease) -> LeaseEnd:
        """Heartbeat every ``config.heartbeat`` seconds until the worker must stop the
        build: the job was cancelled, the lease was lost (reclaimed, or the job ended), or
        Redis could not be reached for the reclaim time (counted from the last good
        heartbeat's sending, so the worker gives up no later than another worker may take
        the job over). Run it beside the build; when it returns, kill the build."""
        config = self.queue.config
        grace = config.reclaim_ms / 1000
        last_ok = trio.current_time()
        with trio.move_on_at(last_ok + grace) as scope:
            while True:
                sent = trio.current_time()
                try:
                    beat = await self.heartbeat(lease)
                except QueueError:
                    beat = None  # keep trying until the deadline
                if beat is not None:
                    if not beat.alive:
                        return LeaseEnd.LOST
                    if beat.cancel_requested:
                        return LeaseEnd.CANCELLED
                    last_ok = sent
                    scope.deadline = last_ok + grace
                await trio.sleep(config.heartbeat)
        return LeaseEnd.UNREACHABLE

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
