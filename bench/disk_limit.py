"""What the disk budget costs: write-heavy workloads on rootbuild's FUSE overlay mounted
with and without a budget (``--disk-limit``), medians of RUNS. Run by hand; not part of CI.

Usage, as an ordinary user (re-executes itself in ``unshare --map-auto --map-root-user
--mount --fork``, so the mounts live and die in a private mount namespace):

    /opt/rootbuild-venv/bin/python bench/disk_limit.py [--runs 5] [--io-mib 256]
        [--files 5000] [--dir /dev/shm]

Workloads, each on a fresh mount, the two variants alternating (order reversed every other
run) so a slow spell of the host hits both alike:
  seq-write   IO MiB in 1 MiB write(2)s, then fsync (the kernel's write-back reaches the
              server in max_write requests, each one charged);
  small-files FILES files of 4 KiB created, written, closed, then all unlinked (create,
              write, release, unlink, forget: every request that charges or gives back).
The budget is 4 GiB (never reached): the cost measured is the accounting, not refusals.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from rootbuild.snapshot import FuseSnapshotter, create_budget

LIMIT = 4 << 30


def seq_write(root: Path, mib: int) -> None:
    block = b"\xa5" * (1 << 20)
    fd = os.open(root / "big", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for _ in range(mib):
            os.write(fd, block)
        os.fsync(fd)
    finally:
        os.close(fd)


def small_files(root: Path, files: int) -> None:
    data = b"\x5a" * 4096
    (root / "d").mkdir()
    for i in range(files):
        fd = os.open(root / "d" / str(i), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.write(fd, data)
        os.close(fd)
    for i in range(files):
        os.unlink(root / "d" / str(i))


def once(scratch: Path, limited: bool, work: Callable[[Path], None]) -> float:
    base = Path(tempfile.mkdtemp(dir=scratch))
    try:
        mnt = base / "mnt"
        mnt.mkdir()
        budget = create_budget(base / "budget", LIMIT, None) if limited else None
        with FuseSnapshotter().mount([], base / "work", mnt, budget):
            t0 = time.perf_counter()
            work(mnt)
            return time.perf_counter() - t0
    finally:
        shutil.rmtree(base, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--io-mib", type=int, default=256)
    ap.add_argument("--files", type=int, default=5000)
    ap.add_argument("--dir", type=Path, default=Path("/dev/shm"))
    ap.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if not args.inside:
        argv = ["unshare", "--map-auto", "--map-root-user", "--mount", "--fork",
                sys.executable, *sys.argv, "--inside"]
        return subprocess.run(argv).returncode
    workloads: dict[str, Callable[[Path], None]] = {
        f"seq-write {args.io_mib} MiB": lambda r: seq_write(r, args.io_mib),
        f"small-files {args.files}": lambda r: small_files(r, args.files),
    }
    for name, work in workloads.items():
        times: dict[bool, list[float]] = {False: [], True: []}
        for run in range(args.runs):
            for limited in ((False, True) if run % 2 == 0 else (True, False)):
                times[limited].append(once(args.dir, limited, work))
        off, on = statistics.median(times[False]), statistics.median(times[True])
        print(f"{name:24} no limit {off:7.3f}s  --disk-limit {on:7.3f}s  "
              f"overhead {100 * (on - off) / off:+5.1f}%  "
              f"(runs: {[round(t, 3) for t in times[False]]} / "
              f"{[round(t, 3) for t in times[True]]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
