"""FUSE request statistics of one overlay server: how many requests of each kind reached the
server's Python handlers, and the time spent in them. For benchmarks (issue 14, item 2:
"FUSE requests per file"; ``bench/fuse_requests.py``), off by default.

Rules:
- Off unless the server's spec names a directory (``stats``), which ``mount.mount_overlay``
  takes from ``ROOTBUILD_FUSE_STATS`` in its own environment. Off costs nothing: the
  handlers are wrapped only when it is on (``count_requests``).
- A request is counted once per handler call, by pyfuse3's handler name (``forget`` counts
  FORGET and BATCH_FORGET messages, ``readdir`` READDIRPLUS). Requests libfuse answers
  itself (INIT, INTERRUPT, operations pyfuse3 has no handler for such as FALLOCATE) never
  reach Python and are not counted.
- At the end of the session the server writes one JSON file per mount,
  ``DIR/fuse-stats-<pid>.json``: ``{"readonly", "ended_ns", "counts": {op: n},
  "ns": {op: total}, "phases": {name: s}}`` (phases: "session", mounted and serving;
  "finalize", writing the layer tree);
  ``merge`` adds several up. Writing it is best effort (a failure is logged, the step's
  result does not depend on it).
"""

from __future__ import annotations

import functools
import json
import os
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Iterable, Mapping
from pathlib import Path
from typing import Any

STATS_ENV = "ROOTBUILD_FUSE_STATS"

# pyfuse3.Operations' request handlers (every coroutine method it calls for a request)
HANDLERS = (
    "lookup", "forget", "getattr", "setattr", "readlink", "mknod", "mkdir", "unlink",
    "rmdir", "symlink", "rename", "link", "open", "read", "write", "flush", "release",
    "fsync", "opendir", "readdir", "releasedir", "fsyncdir", "statfs", "setxattr",
    "getxattr", "listxattr", "removexattr", "access", "create",
)


def stats_dir(environ: Mapping[str, str]) -> str | None:
    """The directory the statistics go to, or None (off)."""
    value = environ.get(STATS_ENV, "")
    return value or None


class RequestStats:
    """Per-handler request counts and nanoseconds spent in the handler."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.ns: Counter[str] = Counter()
        self.phases: dict[str, float] = {}  # seconds: "session" (mounted), "finalize"

    def to_json(self, readonly: bool) -> dict[str, Any]:
        return {"readonly": readonly, "ended_ns": time.time_ns(),
                "counts": dict(sorted(self.counts.items())), "ns": dict(sorted(self.ns.items())),
                "phases": self.phases}

    def save(self, directory: Path, readonly: bool) -> Path:
        path = directory / f"fuse-stats-{os.getpid()}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.to_json(readonly)))
        tmp.rename(path)
        return path


def _counting(name: str, fn: Callable[..., Coroutine[Any, Any, Any]],
              stats: RequestStats) -> Callable[..., Coroutine[Any, Any, Any]]:
    counts, ns, clock = stats.counts, stats.ns, time.perf_counter_ns

    @functools.wraps(fn)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        counts[name] += 1
        start = clock()
        try:
            return await fn(*args, **kwargs)
        finally:
            ns[name] += clock() - start

    return wrapper


def count_requests(ops: object, stats: RequestStats,
                   handlers: Iterable[str] = HANDLERS) -> None:
    """Wrap ``ops``' request handlers (as instance attributes: pyfuse3 looks each one up
    on the instance for every request) so that every call is counted in ``stats``."""
    for name in handlers:
        fn = getattr(ops, name, None)
        if fn is not None:
            setattr(ops, name, _counting(name, fn, stats))


def merge(records: Iterable[Mapping[str, Any]]) -> tuple[Counter[str], Counter[str]]:
    """Counts and nanoseconds of several servers' records (``to_json``) added up."""
    counts: Counter[str] = Counter()
    ns: Counter[str] = Counter()
    for rec in records:
        counts.update(rec.get("counts", {}))
        ns.update(rec.get("ns", {}))
    return counts, ns


def load_dir(directory: Path, *, readonly: bool | None = False) -> list[dict[str, Any]]:
    """The records in ``directory``; ``readonly``: only writable mounts (False), only views
    (True) or all (None)."""
    out = []
    for path in sorted(directory.glob("fuse-stats-*.json")):
        rec = json.loads(path.read_text())
        if readonly is None or bool(rec.get("readonly")) == readonly:
            out.append(rec)
    return out
