"""Layer I/O benchmark: rootbuild's layer export and extraction against GNU tar + gzip,
measured in the same run, alternating run by run; prints medians and ratios.

Usage: /opt/rootbuild-venv/bin/python bench/layer_io.py [--runs 3] [--dir DIR ...]
       [--workloads small,large] [--delete-between]

Workloads: 20,000 small files (1 KiB each, 200 directories) and 4 large files (64 MiB of
incompressible-ish data each). "export" = directory tree -> gzip layer blob
(``write_layer``: tar, diffID, compression in a second thread, digest, in one pass);
"extract" = gzip layer blob -> directory tree (``extract_layer``). The peer for export is
``tar -c --sort=name | gzip -1`` (gzip's fastest level, closest in ratio to ISA-L level 2),
for extract ``tar -xzf``. Ratios are rootbuild time / peer time (below 1 = faster).
Each ``--dir`` (default: /dev/shm and /var/tmp) gets its own scratch directory.

Where extracted trees are removed (``--delete-between``, default ``auto``): on tmpfs before
each extraction (so every run writes into memory the VM has already touched: fresh guest
pages cost extra system time on these Firecracker VMs); on disk only after all timed runs
of a workload, because on an ext4 without a journal (these VMs' root disk) the inode
allocator skips inodes freed in the last 60-360 s one by one (``recently_deleted()`` in
fs/ext4/ialloc.c), so creating files right after deleting thousands costs ~0.5 ms per file
in the kernel for any tool. ``--delete-between yes`` measures that case on disk too.
The "sys" figure is the system CPU time of rootbuild's extraction (both of its threads).
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
from collections.abc import Callable, Iterator
from pathlib import Path

from rootbuild.image.layer_extract import extract_layer
from rootbuild.image.layer_write import TarEntry, write_layer

TARGETS = {  # issue 6: (files/s for small, MB/s for large)
    ("small", "export"): 10_000,
    ("small", "extract"): 20_000,
    ("large", "export"): 150,
    ("large", "extract"): 300,
}


def make_small(root: Path) -> None:
    for d in range(200):
        sub = root / f"d{d:03}"
        sub.mkdir(parents=True)
        for f in range(100):
            (sub / f"f{f:03}").write_bytes(os.urandom(512) + b"a" * 512)


def make_large(root: Path) -> None:
    root.mkdir(parents=True)
    block = os.urandom(1 << 20)
    for i in range(4):
        with open(root / f"big{i}", "wb") as f:
            for j in range(64):
                f.write(block[j:] + block[:j])


WORKLOADS: dict[str, tuple[Callable[[Path], None], int]] = {
    "small": (make_small, 20000),
    "large": (make_large, 4),
}


def entries(root: Path) -> Iterator[TarEntry]:
    for dirpath, _dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        rel = "" if rel == "." else rel
        if rel:
            st = os.lstat(dirpath)
            yield TarEntry(rel, "dir", st.st_mode & 0o7777, 0, 0, int(st.st_mtime))
        for name in filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            yield TarEntry(
                os.path.join(rel, name),
                "file",
                st.st_mode & 0o7777,
                0,
                0,
                int(st.st_mtime),
                st.st_size,
                source=lambda p=path: open(p, "rb"),  # type: ignore[misc]  # noqa: SIM115
            )


def timed(fn: Callable[[], None]) -> tuple[float, float]:
    """Wall time and this process's system CPU time of ``fn``."""
    sys0, start = os.times().system, time.perf_counter()
    fn()
    return time.perf_counter() - start, os.times().system - sys0


def fs_type(path: Path) -> str:
    """The filesystem type of the mount that holds ``path`` (from /proc/self/mounts)."""
    best, found = "", "?"
    with open("/proc/self/mounts") as f:
        for line in f:
            _dev, mnt, kind = line.split()[:3]
            inside = str(path) == mnt or str(path).startswith(mnt.rstrip("/") + "/")
            if inside and len(mnt) >= len(best):
                best, found = mnt, kind
    return found


def run_workload(base: Path, name: str, runs: int, delete_between: bool, fs: str) -> list[str]:
    make, count = WORKLOADS[name]
    src = base / f"src-{name}"
    make(src)
    total = sum(p.stat().st_size for p in src.rglob("*") if p.is_file())
    blob, peer_blob = base / f"{name}.tar.gz", base / f"{name}.peer.tar.gz"
    times: dict[str, list[float]] = {k: [] for k in ("rb-w", "tar-w", "rb-x", "tar-x")}
    rb_sys: list[float] = []
    trees: list[Path] = []

    def rb_write() -> None:
        with open(blob, "wb") as out:
            write_layer(entries(src), out, compression="gzip")

    def tar_write() -> None:
        subprocess.run(
            f"tar -C {src} --sort=name --numeric-owner -cf - . | gzip -1 > {peer_blob}",
            shell=True,
            check=True,
        )

    def forget_trees() -> None:
        if delete_between:
            for tree in trees:
                if tree.exists():
                    shutil.rmtree(tree)

    for run in range(runs):
        dest, peer_dest = base / f"x-{name}-{run}", base / f"t-{name}-{run}"
        trees += [dest, peer_dest]

        def rb_extract(dest: Path = dest) -> None:
            with open(blob, "rb") as f:
                extract_layer(f, dest, media_type_or_compression="gzip")

        def tar_extract(dest: Path = peer_dest) -> None:
            dest.mkdir()
            subprocess.run(["tar", "-C", str(dest), "-xzf", str(peer_blob)], check=True)

        for pair in (
            [("rb-w", rb_write), ("tar-w", tar_write)],
            [("rb-x", rb_extract), ("tar-x", tar_extract)],
        ):
            if run % 2:
                pair.reverse()
            for key, fn in pair:
                if key.endswith("x"):
                    forget_trees()
                wall, system = timed(fn)
                times[key].append(wall)
                if key == "rb-x":
                    rb_sys.append(system)
    for tree in trees:
        shutil.rmtree(tree, ignore_errors=True)
    shutil.rmtree(src)
    med = {k: statistics.median(v) for k, v in times.items()}
    mb = total / 1e6
    rows = []
    for op, rb, peer in (("export", "rb-w", "tar-w"), ("extract", "rb-x", "tar-x")):
        rate = count / med[rb] if name == "small" else mb / med[rb]
        unit = "files/s" if name == "small" else "MB/s"
        target = TARGETS[(name, op)]
        verdict = "met" if rate >= target else "**missed**"
        extra = f"; sys {statistics.median(rb_sys):.2f} s" if op == "extract" else ""
        size = "1 KiB" if name == "small" else "64 MiB"
        rows.append(
            f"| {count:,} x {size} | {base.parent} ({fs}) | {op} "
            f"| {med[rb]:.2f} s ({rate:,.0f} {unit}{extra}) | {med[peer]:.2f} s "
            f"| {med[rb] / med[peer]:.2f} | ≥ {target:,} {unit} {verdict} |"
        )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--dir", type=Path, action="append", default=None)
    parser.add_argument("--workloads", default="small,large")
    parser.add_argument("--delete-between", choices=("auto", "yes", "no"), default="auto")
    args = parser.parse_args()
    for tool in ("tar", "gzip"):
        if shutil.which(tool) is None:
            sys.exit(f"bench: {tool} missing")
    dirs = args.dir or [Path("/dev/shm"), Path("/var/tmp")]
    print(
        f"machine: {os.uname().nodename} {os.cpu_count()} cores; runs: {args.runs}; "
        f"delete trees between extractions: {args.delete_between}"
    )
    print("| workload | where | op | rootbuild | GNU tar | ratio | target |")
    print("|---|---|---|---|---|---|---|")
    for where in dirs:
        base = Path(tempfile.mkdtemp(prefix="rb-bench-", dir=where))
        try:
            fs = fs_type(base)
            delete = args.delete_between == "yes" or (
                args.delete_between == "auto" and fs == "tmpfs"
            )
            for name in args.workloads.split(","):
                for row in run_workload(base, name, args.runs, delete, fs):
                    print(row, flush=True)
        finally:
            shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
