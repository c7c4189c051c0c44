"""Disk-budget conformance driver: runs INSIDE a user+mount namespace as its root.

Usage: ``python quota_driver.py WORKDIR [SNAPSHOTTER]``: prints one JSON report, exits 0
when every check held. Every mount goes through the ``Snapshotter`` Protocol
(``mount(lowers, work, mountpoint, budget)``) with one budget (``snapshot.create_budget``)
of ``LIMIT`` bytes and ``INODES`` inodes shared by two overlays, the way a RUN step's root
and its writable cache mount share it.

Checks, in order (each one line of the report's ``failures`` when it does not hold):
statfs reports the budget; a write past it fails with ENOSPC (at write, fsync or close:
the kernel's writeback cache may delay it) and the budget counts a refusal; unlink gives the
space back; copy-up of a large lower file is charged its size; truncate up past the budget
is refused and truncate down gives space back; mkdir, symlink, setxattr are refused once
the bytes are gone; creating files stops at the inode limit; the second overlay sees the
first's usage and the space the first frees; the step's layer holds nothing of a refused
write; nothing is left mounted.
"""

from __future__ import annotations

import errno
import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from overlay_driver import D, F, _mounts_under, build_lower

from rootbuild.snapshot import LowerLayer, budget_usage, create_budget, snapshotter_named

MiB = 1 << 20
LIMIT = 8 * MiB
INODES = 200
LOWER_BIG = 3 * MiB


def write_file(path: Path, size: int, chunk: int = 256 << 10) -> int:
    """Write ``size`` bytes; the first errno seen at write, fsync or close, else 0."""
    first = 0
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    except OSError as exc:
        return exc.errno or -1
    data = b"z" * chunk
    done = 0
    try:
        while done < size:
            done += os.write(fd, data[: min(chunk, size - done)])
    except OSError as exc:
        first = exc.errno or -1
    try:
        os.fsync(fd)
    except OSError as exc:
        first = first or exc.errno or -1
    try:
        os.close(fd)
    except OSError as exc:
        first = first or exc.errno or -1
    return first


def errno_of(fn: Any, *args: Any) -> int:
    try:
        fn(*args)
    except OSError as exc:
        return exc.errno or -1
    return 0


def fill_with_xattrs(path: Path) -> int:
    """Set xattrs of shrinking sizes until even a one-byte value is refused."""
    made = 0
    for size in (60000, 4096, 256, 16, 1):
        while True:
            try:
                os.setxattr(path, f"user.f{made}", b"v" * size)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                break
            made += 1
    return made


def wait_free(mnt: Path, want: int, timeout: float = 5.0) -> int:
    """Free bytes once at least ``want`` (or after ``timeout``): the kernel sends RELEASE
    and FORGET of an unlinked file asynchronously, and the space comes back with them."""
    deadline = time.monotonic() + timeout
    while True:
        avail = free(mnt)[1]
        if avail >= want or time.monotonic() > deadline:
            return avail
        time.sleep(0.01)


def free(mnt: Path) -> tuple[int, int, int, int]:
    st = os.statvfs(mnt)
    return st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize, st.f_files, st.f_ffree


def run(work: Path, snapshotter_name: str) -> dict[str, Any]:
    failures: list[str] = []
    notes: dict[str, Any] = {}

    def check(ok: bool, what: str) -> None:
        if not ok:
            failures.append(what)

    snapshotter = snapshotter_named(snapshotter_name)
    tree, meta = work / "lower", work / "lower.meta.json"
    build_lower([D(""), D("srv"), F("srv/big.bin", b"b" * LOWER_BIG), F("srv/small", b"s")],
                tree, meta)
    lowers = [LowerLayer(tree, meta)]
    budget = create_budget(work / "budget", LIMIT, INODES)
    mnt, cache = work / "mnt", work / "cache"
    mnt.mkdir()
    cache.mkdir()
    with snapshotter.mount(lowers, work / "ovl", mnt, budget) as m, \
            snapshotter.mount([], work / "cache-ovl", cache, budget) as c:
        size, avail, files, ffree = free(mnt)
        notes["statfs"] = [size, avail, files, ffree]
        check(size == LIMIT, f"statfs: size {size} != the budget {LIMIT}")
        check(LIMIT - MiB <= avail <= LIMIT, f"statfs: free {avail} of {LIMIT}")
        check(files == INODES, f"statfs: files {files} != {INODES}")

        e = write_file(mnt / "over.bin", LIMIT + MiB)
        check(e == errno.ENOSPC, f"write past the budget: errno {e}, expected ENOSPC")
        check(budget_usage(budget).refusals >= 1, "the budget counted no refusal")
        stored = os.stat(mnt / "over.bin").st_size
        notes["over_size_seen"] = stored
        os.unlink(mnt / "over.bin")
        avail_back = wait_free(mnt, LIMIT - MiB)
        check(avail_back >= LIMIT - MiB, f"unlink gave back too little: free {avail_back}")

        e = write_file(mnt / "fits.bin", 2 * MiB)
        check(e == 0, f"a write under the budget failed: errno {e}")

        fd = os.open(mnt / "srv/big.bin", os.O_WRONLY | os.O_APPEND)  # copy-up: 3 MiB
        os.write(fd, b"!")
        os.close(fd)
        avail_cu = free(mnt)[1]
        check(avail_cu <= LIMIT - 5 * MiB, f"copy-up not charged its size: free {avail_cu}")

        e = errno_of(os.truncate, mnt / "fits.bin", LIMIT)
        check(e == errno.ENOSPC, f"truncate up past the budget: errno {e}")
        check(os.stat(mnt / "fits.bin").st_size == 2 * MiB, "a refused truncate changed size")

        e = write_file(cache / "shared.bin", 4 * MiB)  # 5 MiB + 4 MiB > 8 MiB
        check(e == errno.ENOSPC, f"second overlay: write past the shared budget: errno {e}")
        os.unlink(cache / "shared.bin")
        os.truncate(mnt / "srv/big.bin", 0)  # truncate down: 3 MiB back
        e = write_file(cache / "shared.bin", 4 * MiB)
        check(e == 0, f"second overlay: space freed by the first not usable: errno {e}")

        e = write_file(mnt / "fill.bin", LIMIT)  # fill what is left
        check(e == errno.ENOSPC, f"filling the rest: errno {e}")
        # one WRITE request is refused whole (up to max_write bytes may stay free): fill
        # the rest exactly, with xattrs (each one request, charged its name and value)
        notes["xattrs_to_fill"] = fill_with_xattrs(mnt / "fits.bin")
        left = free(mnt)[1]
        for name, fn, args in (
            ("mkdir", os.mkdir, (mnt / "newdir",)),
            ("symlink", os.symlink, ("target" * 40, mnt / "newlink")),
            ("setxattr", os.setxattr, (mnt / "fits.bin", "user.big", b"v" * 60000)),
        ):
            e = errno_of(fn, *args)
            check(e == errno.ENOSPC, f"{name} with {left} bytes free: errno {e}")
        os.unlink(mnt / "fill.bin")
        os.unlink(cache / "shared.bin")

        made = 0
        e = 0
        for i in range(INODES + 10):
            try:
                os.close(os.open(mnt / f"n{i}", os.O_WRONLY | os.O_CREAT, 0o644))
                made += 1
            except OSError as exc:
                e = exc.errno or -1
                break
        notes["files_made"] = made
        check(e == errno.ENOSPC and made <= INODES,
              f"inode limit: made {made} files of {INODES}, then errno {e}")
        check(budget_usage(budget).inode_refusals >= 1, "no inode refusal counted")
        for i in range(made):
            os.unlink(mnt / f"n{i}")
        for name in os.listxattr(mnt / "fits.bin"):
            os.removexattr(mnt / "fits.bin", name)

        result = m.finish()
        c.finish()
    layer = result.meta
    paths = sorted(p for p, e in layer.entries.items() if not e.implicit)
    notes["layer"] = paths
    for gone in ("over.bin", "fill.bin", "newdir", "newlink", "n0"):
        check(gone not in layer.entries, f"the layer holds {gone}")
    total = sum(e.size for e in layer.entries.values())
    check(total <= LIMIT, f"the layer holds {total} bytes, more than the budget")
    check(layer.entries["fits.bin"].size == 2 * MiB, "fits.bin lost its content")
    check(not _mounts_under(work), f"mounts left: {_mounts_under(work)}")
    return {"failures": failures, "notes": notes}


def main(argv: list[str]) -> int:
    work = Path(argv[1])
    work.mkdir(mode=0o755)
    try:
        report = run(work, argv[2] if len(argv) > 2 else "fuse")
    except BaseException:
        report = {"failures": [], "error": traceback.format_exc()}
        for log in (work / "ovl" / "server.log", work / "cache-ovl" / "server.log"):
            if log.exists():
                report[log.parent.name] = log.read_text(errors="replace").splitlines()[-20:]
    report["mounts_left"] = _mounts_under(work)
    report["ok"] = not report["failures"] and "error" not in report \
        and not report["mounts_left"]
    print(json.dumps(report, indent=1, default=repr))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
