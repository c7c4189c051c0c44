"""The overlay's FUSE server process: ``python -m rootbuild.fuse_overlay.server SPEC``.

Rules:
- pyfuse3 keeps one session per process, so every mount gets its own server process,
  started by ``mount.mount_overlay`` in the caller's namespaces (inside a build's user
  namespace it sees namespace ids).
- SPEC is a JSON file written by the parent: ``lowers`` (tree dir, meta.json path; lowest
  first), ``work`` (an empty private dir), ``mountpoint``, ``ready_fd``, ``readonly``
  (a view: ``readonly.ReadOnlyOperations``, mounted ``ro``, and no result is written),
  ``pool`` (optional: the step's shared disk budget file, ``pool.py``), ``stats``
  (optional: a directory for request statistics, ``stats.py``; off when absent).
- Requests are served by ``session.run_session`` (one worker task).
- The server writes ``ready\\n`` to ``ready_fd`` once mounted (or ``error: ...\\n`` and exits
  1). When the session ends (the parent unmounts), it writes the step's changes as a layer
  tree at ``work/tree`` with ``work/tree.meta.json`` (a view: nothing) and exits 0.
  SIGTERM or SIGINT means "abort": unmount if still mounted and exit 2 without writing a
  result.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import sys
import time
from pathlib import Path

import pyfuse3
import trio

from rootbuild.fuse_overlay.ops import OverlayOperations
from rootbuild.fuse_overlay.pool import FilePool
from rootbuild.fuse_overlay.quota import Quota
from rootbuild.fuse_overlay.readonly import ReadOnlyOperations
from rootbuild.fuse_overlay.session import run_session
from rootbuild.fuse_overlay.session import stop as stop_session
from rootbuild.fuse_overlay.stats import RequestStats, count_requests
from rootbuild.image import meta_cache

RESULT_TREE = "tree"
RESULT_META = "tree.meta.json"


def _report(fd: int, text: str) -> None:
    try:
        os.write(fd, text.encode() + b"\n")
    finally:
        os.close(fd)


def _raise_fd_limit() -> None:
    """Every open file on the mount holds one backing fd: allow as many as the system does."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _record(stats: RequestStats | None, directory: str | None, readonly: bool,
            **phases: float) -> None:
    """Write the request statistics, when they are on (best effort: they are for
    benchmarks, the step does not depend on them)."""
    if stats is None or not directory:
        return
    stats.phases.update(phases)
    try:
        stats.save(Path(directory), readonly)
    except OSError as exc:
        print(f"fuse overlay: write request statistics to {directory}: {exc}", file=sys.stderr)


def serve(spec_path: Path) -> int:
    _raise_fd_limit()
    spec = json.loads(spec_path.read_text())
    ready_fd = int(spec["ready_fd"])
    work = Path(spec["work"])
    mountpoint = str(spec["mountpoint"])
    readonly = bool(spec.get("readonly", False))
    stats_dir = spec.get("stats")
    stats = RequestStats() if stats_dir else None
    try:
        lowers = [(Path(tree), meta_cache.load(Path(meta))) for tree, meta in spec["lowers"]]
        if readonly:
            ops: OverlayOperations = ReadOnlyOperations(lowers, work)
        else:  # "pool": the step's shared disk budget (pool.py), when it has one
            pool = spec.get("pool")
            quota = Quota(FilePool(Path(pool))) if pool else None
            ops = OverlayOperations(lowers, work, quota)
        if stats is not None:
            count_requests(ops, stats)
        pyfuse3.init(ops, mountpoint, ops.mount_options())
    except Exception as exc:  # the parent turns this line into a RootbuildError
        _report(ready_fd, f"error: mount overlay at {mountpoint}: {exc}")
        return 1
    aborted = False

    async def run() -> None:
        async with trio.open_nursery() as nursery:

            async def session() -> None:
                await run_session()  # returns when the mount goes away
                nursery.cancel_scope.cancel()

            async def signals() -> None:
                nonlocal aborted
                with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as received:
                    _report(ready_fd, "ready")
                    async for _ in received:
                        aborted = True
                        stop_session()
                        return

            nursery.start_soon(session)
            nursery.start_soon(signals)

    started = time.monotonic()
    try:
        trio.run(run)
    finally:
        pyfuse3.close(unmount=aborted)
    session_s = time.monotonic() - started
    if aborted:
        return 2
    if readonly:
        ops.backing.close()
        _record(stats, stats_dir, readonly, session=session_s)
        return 0
    started = time.monotonic()
    meta = ops.finalize(work / RESULT_TREE)
    meta.save(work / RESULT_META, durable=False)  # a hand-over: the store's copy is durable
    _record(stats, stats_dir, readonly, session=session_s, finalize=time.monotonic() - started)
    return 0


if __name__ == "__main__":
    code = serve(Path(sys.argv[1]))
    # The result is written; skip the interpreter's teardown (~20 ms), which the
    # step's layer would otherwise wait for.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
