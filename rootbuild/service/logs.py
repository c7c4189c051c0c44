"""A job's log: one Redis stream per job, capped, resumable from an entry id.

Job: ``append_log`` (a worker's build output, under its lease) and ``read_log`` (``rootbuild
logs [--follow]``: entries after an entry id, optionally waiting a short while).

Rules:
- Capped in entries and bytes (``QueueConfig.log_max_entries``/``log_max_bytes``): the head
  of the output is kept, the rest dropped, and one ``note`` entry says so; the job record
  counts the dropped entries (``log_dropped``). Redis memory per job stays bounded.
- Only the current attempt writes: a stale lease's lines are refused (the lease is fenced
  by attempt like every other write), so a reclaimed job's log is not interleaved.
- Reading never blocks longer than ``block`` seconds (at most 2 s per call, so a trio
  caller's cancellation stays prompt); resume by passing the last entry id seen.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

import redis

from rootbuild.service.jobs import Lease, LogEntry, QueueError

if TYPE_CHECKING:
    from rootbuild.service.queue import RedisQueue

MAX_BLOCK = 2.0


def append_log(queue: RedisQueue, lease: Lease, data: bytes) -> bool:
    cfg = queue.config
    try:
        entry = queue._append(args=[  # the script object RedisQueue registered
            queue.prefix, lease.job_id, lease.attempt, data, cfg.log_max_entries,
            cfg.log_max_bytes,
        ])
    except redis.ResponseError as exc:
        if "STALE" in str(exc):
            return False
        raise QueueError(f"log {lease.job_id}: {exc}") from exc
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise QueueError(f"log {lease.job_id}: cannot reach redis: {exc}") from exc
    return bool(entry)


def _entry(entry_id: bytes, fields: dict[bytes, bytes]) -> LogEntry:
    return LogEntry(
        id=entry_id.decode(),
        kind=fields.get(b"kind", b"out").decode(),
        attempt=int(fields.get(b"attempt", b"0")),
        data=fields.get(b"data", b""),
    )


def read_log(queue: RedisQueue, job_id: str, after: str, count: int,
             block: float | None) -> list[LogEntry]:
    key = f"{queue.prefix}:log:{job_id}"
    wait = None if block is None else int(min(block, MAX_BLOCK) * 1000)
    if wait == 0:
        wait = None  # XREAD BLOCK 0 would wait for ever
    reply = cast(Any, queue.client.xread({key: after}, count=count, block=wait))
    if not reply:
        return []
    # RESP2: [[key, [(id, {field: value}), ...]]]
    return [_entry(entry_id, fields) for entry_id, fields in reply[0][1]]
