"""FUSE request benchmark (issue 14, item 2: "FUSE requests per file"): runs issue 14's
many-small-files workloads as RUN steps of real builds with the FUSE overlay and prints,
per workload, the FUSE requests that reached the overlay server, per opcode (a
deterministic measure on a shared, noisy machine), the Python time spent in the handlers,
and the build's wall time (median of ``--runs``). Run by hand; not part of CI.

Usage, as an ordinary user with a usable /dev/fuse and a subuid range (what the
integration tests' user has):

    /opt/rootbuild/venv/bin/python bench/fuse_requests.py [--runs 5] [--cases 1,2,3]
        [--work DIR] [--json FILE]

Workloads (busybox base: ``FROM scratch`` + the host's busybox and its applet links):
  1a  a RUN untarring 20,000 files of 100 bytes (200 dirs x 100) from the context
  1b  the next RUN: ``rm -rf`` one of those dirs, append a line to 500 files
  2   a RUN creating a node_modules-like tree: 600 packages, each a dir with 5 files
      (package.json, index.js, README.md, LICENSE, lib/x.js) and a .bin symlink, then
      removing every third package and its symlink
  3   ``RUN echo x > /f``

How: ``ROOTBUILD_FUSE_STATS=DIR`` makes every overlay server write its counts to DIR
(``rootbuild/fuse_overlay/stats.py``). The context's COPY steps come from the step cache
after the first build; a build argument used by the RUN steps changes every repetition, so
each timed build runs the workload's RUN steps (and nothing else) again. Counts are those
of the last repetition (they are the same in every one; the script says when not).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from io import BytesIO
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rootbuild.fuse_overlay.stats import STATS_ENV, load_dir, merge

ROOTBUILD = Path(sys.executable).parent / "rootbuild"
BUSYBOX = shutil.which("busybox") or "/bin/busybox"
BASE = "FROM scratch\nCOPY rootfs/ /\nENV PATH=/bin\n"

# issue 14 case 2: 600 packages of 5 files and a .bin symlink; then every third removed
NODE_MODULES_RUN = (
    "RUN echo $BUST && mkdir -p /app/node_modules/.bin && cd /app/node_modules && i=0"
    " && while [ $i -lt 600 ]; do p=pkg$i && mkdir -p $p/lib"
    " && echo \"{\\\"name\\\": \\\"$p\\\"}\" > $p/package.json"
    " && echo \"module.exports = $i;\" > $p/index.js && echo \"# $p\" > $p/README.md"
    " && echo MIT > $p/LICENSE && echo x > $p/lib/x.js && ln -s ../$p/index.js .bin/$p"
    " && i=$((i+1)); done"
    " && i=0 && while [ $i -lt 600 ]; do rm -rf pkg$i .bin/pkg$i && i=$((i+3)); done\n"
)

CASES: dict[str, tuple[str, str]] = {
    "1": ("untar 20,000 files; rm -rf a dir, modify 500 files",
          BASE + "COPY files.tar /src/files.tar\nARG BUST\n"
          "RUN echo $BUST && mkdir -p /data && tar -xf /src/files.tar -C /data\n"
          "RUN echo $BUST && rm -rf /data/d000 && for d in 001 002 003 004 005; do"
          " for f in /data/d$d/*; do echo patched >> \"$f\"; done; done\n"),
    "2": ("node_modules-like tree: 600 packages, then a third removed",
          BASE + "ARG BUST\n" + NODE_MODULES_RUN),
    "3": ("RUN echo x > /f", BASE + "ARG BUST\nRUN echo $BUST > /dev/null && echo x > /f\n"),
}


def make_context(ctx: Path) -> None:
    """The busybox rootfs and the 20,000-file tar (200 dirs x 100 files of 100 bytes)."""
    root = ctx / "rootfs"
    (root / "bin").mkdir(parents=True)
    for sub in ("tmp", "etc", "root"):
        (root / sub).mkdir()
    os.chmod(root / "tmp", 0o1777)
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (root / "etc/group").write_text("root:x:0:\n")
    shutil.copy(BUSYBOX, root / "bin/busybox")
    applets = subprocess.run([BUSYBOX, "--list"], capture_output=True, text=True, check=True)
    for name in applets.stdout.split():
        if name != "busybox":
            os.symlink("busybox", root / "bin" / name)
    with tarfile.open(ctx / "files.tar", "w", format=tarfile.GNU_FORMAT) as tar:
        for d in range(200):
            info = tarfile.TarInfo(f"d{d:03}")
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 1_700_000_000
            tar.addfile(info)
            for i in range(100):
                data = (f"{d:03}/{i:03} " * 13)[:99].encode() + b"\n"
                info = tarfile.TarInfo(f"d{d:03}/f{i:03}")
                info.size, info.mode, info.mtime = len(data), 0o644, 1_700_000_000
                tar.addfile(info, BytesIO(data))


def build(ctx: Path, dockerfile: Path, store: Path, stats: Path, bust: str) -> float:
    if stats.exists():
        shutil.rmtree(stats)
    stats.mkdir()
    env = dict(os.environ, **{STATS_ENV: str(stats)})
    argv = [str(ROOTBUILD), "build", "--progress", "plain", "--root", str(store),
            "-f", str(dockerfile), "--build-arg", f"BUST={bust}", str(ctx)]
    start = time.monotonic()
    proc = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                          text=True)
    took = time.monotonic() - start
    if proc.returncode != 0:
        sys.exit(f"build failed ({proc.returncode}):\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
    return took


def per_step(stats: Path) -> list[dict[str, Any]]:
    """The writable mounts' records, in the order the steps ended."""
    return sorted(load_dir(stats), key=lambda r: int(r.get("ended_ns", 0)))


def table(title: str, recs: list[dict[str, Any]], ns: dict[str, int]) -> str:
    steps = [dict(r["counts"]) for r in recs]
    ops = sorted({op for s in steps for op in s})
    lines = [f"== {title}", f"{'opcode':<12}" + "".join(f"{f'step {i + 1}':>10}"
                                                     for i in range(len(steps)))
             + f"{'total':>10}{'us/req':>8}"]
    for op in ops:
        total = sum(s.get(op, 0) for s in steps)
        per = ns.get(op, 0) / total / 1000 if total else 0.0
        lines.append(f"{op:<12}" + "".join(f"{s.get(op, 0):>10}" for s in steps)
                     + f"{total:>10}{per:>8.1f}")
    lines.append(f"{'all':<12}" + "".join(f"{sum(s.values()):>10}" for s in steps)
                 + f"{sum(sum(s.values()) for s in steps):>10}")
    # seconds (last repetition): mounted, in the handlers, writing the layer tree
    lines.append(f"{'mounted s':<12}" + "".join(
        f"{r.get('phases', {}).get('session', 0.0):>10.2f}" for r in recs))
    lines.append(f"{'handlers s':<12}" + "".join(
        f"{sum(r.get('ns', {}).values()) / 1e9:>10.2f}" for r in recs))
    lines.append(f"{'finalize s':<12}" + "".join(
        f"{r.get('phases', {}).get('finalize', 0.0):>10.2f}" for r in recs))
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--cases", default="1,2,3")
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="fuse-requests-", dir=args.work))
    results: dict[str, object] = {}
    try:
        ctx = work / "ctx"
        ctx.mkdir()
        make_context(ctx)
        store = work / "store"
        for case in args.cases.split(","):
            title, text = CASES[case]
            dockerfile = work / f"Dockerfile.{case}"
            dockerfile.write_text(text)
            stats = work / "stats"
            build(ctx, dockerfile, store, stats, "warm-up")  # fills the COPY steps' cache
            times: list[float] = []
            seen: list[list[dict[str, Any]]] = []
            for i in range(args.runs):
                times.append(build(ctx, dockerfile, store, stats, f"{case}-{i}"))
                seen.append(per_step(stats))
            _, ns = merge(load_dir(stats))
            print(table(f"case {case}: {title}", seen[-1], dict(ns)))
            totals = [sum(sum(r["counts"].values()) for r in recs) for recs in seen]
            if len(set(totals)) > 1:  # FORGETs come in batches the kernel sizes
                print("   (requests per repetition: " + ", ".join(map(str, totals)) + ")")
            steps = [r["counts"] for r in seen[-1]]
            print(f"   build wall time: median {statistics.median(times):.3f} s, "
                  f"min {min(times):.3f} s over {len(times)} runs "
                  f"({', '.join(f'{t:.2f}' for t in times)})\n")
            results[case] = {"title": title, "steps": steps, "ns": dict(ns), "times": times,
                             "phases": [r.get("phases", {}) for r in seen[-1]]}
        if args.json is not None:
            args.json.write_text(json.dumps(results, indent=1))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
