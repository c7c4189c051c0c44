"""Two (or more) rootbuild installations on the same workloads, build by build in turn:
the way to compare versions on this noisy 2-core machine (issue 14's second pass).

    python bench/interleave.py --work DIR --python A/bin/python --python B/bin/python
        [--runs 15] [--only warm,case8,case1]

Workloads (local busybox base: ``FROM scratch``, ``COPY rootfs/ /``; no registry):
- ``warm``: busybox + 30 one-line RUNs, rebuilt unchanged with ``-t`` and an oci-archive
  output (the unchanged rebuild; each installation's store is warmed by two builds first).
- ``case8``: peers.py case 8's RUN (a node_modules-like tree, a third removed), ``--no-cache``.
- ``case1``: peers.py case 1 (untar 20,000 files, rm a dir, modify 500), ``--no-cache``.

Rules: run as an ordinary user with /dev/fuse and a subuid range (as bench/run_cost.py);
one store per installation and workload under DIR, kept between runs; installations
alternate (A, B, A, B ...) so a busy neighbour slows both alike; medians and minimums
only. Measurements, not tests: nothing is asserted about times.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import peers  # the workloads' Dockerfiles and contexts
import run_cost

CLI = run_cost.CLI
BASE = "FROM scratch\nCOPY rootfs/ /\nENV PATH=/bin\n"
TOOLS = ("rm", "ln", "cat", "tar")


def _busybox(ctx: Path, runs: int) -> None:
    run_cost.busybox_context(ctx, runs)
    for tool in TOOLS:
        link = ctx / "rootfs/bin" / tool
        if not link.exists():
            link.symlink_to("busybox")


def warm_context(ctx: Path) -> None:
    _busybox(ctx, 30)


def case8_context(ctx: Path) -> None:
    _busybox(ctx, 0)
    (ctx / "Dockerfile").write_text(BASE + peers.NODE_MODULES_RUN)


def case1_context(ctx: Path) -> None:
    _busybox(ctx, 0)
    if not (ctx / "files.tar").exists():
        peers._ctx1(ctx)
    (ctx / "Dockerfile").write_text(
        peers._df1("REG").replace("FROM REG/busybox:latest\n", BASE))


WORKLOADS: dict[str, tuple[Callable[[Path], None], list[str]]] = {
    "warm": (warm_context, ["-t", "app:1"]),
    "case8": (case8_context, ["--no-cache"]),
    "case1": (case1_context, ["--no-cache"]),
}


def build(python: str, ctx: Path, store: Path, out: Path, flags: list[str]) -> float:
    argv = [python, "-I", "-c", CLI, "build", "--root", str(store), "--progress", "plain",
            *flags, "--output", f"oci-archive:{out}", str(ctx)]
    start = time.monotonic()
    proc = subprocess.run(argv, capture_output=True, text=True)
    took = time.monotonic() - start
    if proc.returncode != 0:
        sys.exit(f"build failed ({python}, {ctx.name}):\n{proc.stderr[-2000:]}")
    return took


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--python", action="append", required=True)
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--only", default=",".join(WORKLOADS))
    args = ap.parse_args()
    for name in args.only.split(","):
        make, flags = WORKLOADS[name]
        ctx = args.work / name
        ctx.mkdir(parents=True, exist_ok=True)
        make(ctx)
        stores = {p: args.work / f"store-{name}-{i}" for i, p in enumerate(args.python)}
        out = args.work / f"{name}.tar"
        for python in args.python:  # the base imported; warm: the record written
            build(python, ctx, stores[python], out, [f for f in flags if f != "--no-cache"])
            build(python, ctx, stores[python], out, [f for f in flags if f != "--no-cache"])
        times: dict[str, list[float]] = {p: [] for p in args.python}
        for _ in range(args.runs):
            for python in args.python:
                times[python].append(build(python, ctx, stores[python], out, flags))
        print(f"== {name}: {' '.join(flags)}, {args.runs} builds each")
        for python, ts in times.items():
            print(f"  {python}: median {statistics.median(ts):.3f} s, min {min(ts):.3f} s")


if __name__ == "__main__":
    main()
