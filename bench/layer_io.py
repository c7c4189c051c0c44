"""Layer I/O benchmark: rootbuild's layer writer and extractor against GNU tar + gzip,
measured in the same run, alternating run by run; prints medians and ratios.

Usage: /opt/rootbuild/venv/bin/python bench/layer_io.py [--runs 5] [--dir DIR]

Workloads: 20,000 small files (1 KiB each, 200 directories) and 4 large files (64 MiB of
incompressible-ish data each). "write" = directory tree -> compressed layer blob (gzip);
"extract" = compressed layer blob -> directory tree. The peer for write is
``tar -c --sort=name | gzip -1`` (gzip's fastest level, closest in ratio to ISA-L level 2),
for extract ``tar -xzf``. Ratios are rootbuild time / peer time (below 1 = faster).
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


def entries(root: Path) -> Iterator[TarEntry]:
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        rel = "" if rel == "." else rel
        if rel:
            st = os.lstat(dirpath)
            yield TarEntry(rel, "dir", st.st_mode & 0o7777, 0, 0, int(st.st_mtime))
        for name in filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            yield TarEntry(
                os.path.join(rel, name), "file", st.st_mode & 0o7777, 0, 0, int(st.st_mtime),
                st.st_size, source=lambda p=path: open(p, "rb"),  # type: ignore[misc]
            )


def timed(fn: Callable[[], None]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--dir", type=Path, default=None)
    args = parser.parse_args()
    for tool in ("tar", "gzip"):
        if shutil.which(tool) is None:
            sys.exit(f"bench: {tool} missing")
    base = Path(tempfile.mkdtemp(prefix="rb-bench-", dir=args.dir))
    try:
        workloads = {"small": (make_small, 20000), "large": (make_large, 4)}
        print(f"machine: {os.uname().nodename} {os.cpu_count()} cores; runs: {args.runs}")
        for name, (make, count) in workloads.items():
            src = base / f"src-{name}"
            make(src)
            total = sum(p.stat().st_size for p in src.rglob("*") if p.is_file())
            blob = base / f"{name}.tar.gz"
            results: dict[str, list[float]] = {k: [] for k in ("rb-w", "tar-w", "rb-x", "tar-x")}
            for run in range(args.runs):
                def rb_write() -> None:
                    with open(blob, "wb") as out:
                        write_layer(entries(src), out, compression="gzip")

                def tar_write() -> None:
                    subprocess.run(
                        f"tar -C {src} --sort=name --numeric-owner -cf - . | gzip -1 > {blob}.peer",
                        shell=True, check=True,
                    )

                def rb_extract() -> None:
                    dest = base / f"x-{run}"
                    with open(blob, "rb") as f:
                        extract_layer(f, dest, media_type_or_compression="gzip")
                    shutil.rmtree(dest)

                def tar_extract() -> None:
                    dest = base / f"t-{run}"
                    dest.mkdir()
                    subprocess.run(["tar", "-C", str(dest), "-xzf", f"{blob}.peer"], check=True)
                    shutil.rmtree(dest)

                pairs = [("rb-w", rb_write), ("tar-w", tar_write)]
                if run % 2:
                    pairs.reverse()
                for key, fn in pairs:
                    results[key].append(timed(fn))
                pairs = [("rb-x", rb_extract), ("tar-x", tar_extract)]
                if run % 2:
                    pairs.reverse()
                for key, fn in pairs:
                    results[key].append(timed(fn))
            med = {k: statistics.median(v) for k, v in results.items()}
            mb = total / 1e6
            print(f"{name}: {count} files, {mb:.0f} MB")
            for op, rb, peer in (("write", "rb-w", "tar-w"), ("extract", "rb-x", "tar-x")):
                print(
                    f"  {op:8} rootbuild {med[rb]:.2f}s ({count / med[rb]:,.0f} files/s, "
                    f"{mb / med[rb]:.0f} MB/s)  tar+gzip {med[peer]:.2f}s  "
                    f"ratio {med[rb] / med[peer]:.2f}"
                )
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
