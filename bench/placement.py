"""Placement benchmark: an untar through a FUSE overlay, with the client (tar) and the
server on one CPU or free to spread, for rootbuild's overlay (its request loop with one
worker task and pyfuse3's stock loop) and fuse-overlayfs; medians and ratios in one run.
Run by hand; not part of CI. It measures why RUN steps start on one CPU with their FUSE
server (rootbuild/sandbox/placement.py) and why the server runs its own request loop
(rootbuild/fuse_overlay/session.py).

Usage, as an ordinary user with a subordinate id range (the script re-executes itself in a
user and mount namespace, as bench/overlay.py does):

    /opt/rootbuild/venv/bin/python bench/placement.py [--runs 5] [--files 5000]
        [--tar "busybox tar -xf"] [--dir /dev/shm]

Each run mounts every configuration side by side, on a fresh upper over the same tiny base
layer, and extracts the same tar of FILES 1 KiB files into each, in an order rotated run by
run. "one CPU": the tar and the server both have the affinity mask of the CPU the script
runs on (as a RUN step and its server do); "spread": every allowed CPU. The pipe round trip
(one byte between two processes and back) is printed for both placements: it is the context
switch every FUSE request pays twice.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import overlay as ovl  # bench/overlay.py: layers, mounts, namespace re-exec helpers

NS_ENV = "RB_BENCH_PLACEMENT_NS"
CONFIGS = ("rootbuild", "rootbuild-stock-loop", "fuse-overlayfs")


def serve_stock(spec: Path) -> int:
    """rootbuild's overlay server with pyfuse3's stock loop (``python -m placement SPEC``)."""
    from rootbuild.fuse_overlay import session
    from rootbuild.fuse_overlay.server import serve

    session.fast_loop_supported = lambda: False
    return serve(spec)


@contextlib.contextmanager
def mounted(config: str, base: ovl.Layer, where: Path) -> Iterator[Path]:
    if config == "fuse-overlayfs":
        with ovl.mount("fuse-ovl", [base], where) as m:
            try:
                yield m.path
            finally:
                m.abort()
        return
    from rootbuild.fuse_overlay import mount as rb_mount

    stock = config == "rootbuild-stock-loop"
    rb_mount.SERVER_MODULE = Path(__file__).stem if stock else "rootbuild.fuse_overlay.server"
    assert base.meta is not None
    where.mkdir()
    (where / "merged").mkdir()
    # leaving the context without finish() unmounts and stops the server
    with rb_mount.mount_overlay([(base.tree, base.meta)], where / "work", where / "merged"):
        yield where / "merged"


def one(config: str, base: ovl.Layer, tar: Path, where: Path, cmd: list[str]) -> float:
    with mounted(config, base, where) as root:
        start = time.perf_counter()
        subprocess.run([*cmd, str(tar), "-C", str(root / "tmp")], check=True)
        return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--files", type=int, default=5000)
    parser.add_argument("--tar", default="busybox tar -xf", help="the extracting command")
    parser.add_argument("--dir", type=Path, default=Path("/dev/shm"))
    args = parser.parse_args()
    if os.environ.get(NS_ENV) != "1":
        os.environ[NS_ENV] = "1"
        os.environ["PYTHONPATH"] = os.pathsep.join(
            [str(Path(__file__).resolve().parent), os.environ.get("PYTHONPATH", "")]
        )
        code = subprocess.run(
            ["unshare", "--map-auto", "--map-root-user", "--mount", "--fork", "--",
             sys.executable, os.path.abspath(__file__), *sys.argv[1:]]
        ).returncode
        left = ovl.check_mounts("rb-placement-")
        if left:
            print("bench: mounts left behind:\n  " + "\n  ".join(left), file=sys.stderr)
            return code or 1
        return code
    cmd = shlex.split(args.tar)
    everywhere = os.sched_getaffinity(0)
    if len(everywhere) < 2:
        sys.exit(f"bench: placement needs two CPUs; allowed: {everywhere}")
    configs = [c for c in CONFIGS if c != "fuse-overlayfs" or shutil.which("fuse-overlayfs")]
    scratch = Path(tempfile.mkdtemp(prefix="rb-placement-", dir=args.dir))
    times: dict[tuple[str, str], list[float]] = {}
    rtt: dict[str, list[float]] = {"one CPU": [], "spread": []}
    try:
        ovl.make_tree(scratch / "src", args.files)
        subprocess.run(["tar", "-C", str(scratch / "src"), "-cf", str(scratch / "t.tar"), "."],
                       check=True)
        shutil.rmtree(scratch / "src")
        base = ovl.make_layer(ovl.base_entries(), scratch / "base")
        def mask(placement: str) -> set[int]:
            return {min(everywhere)} if placement == "one CPU" else everywhere

        n = 0
        for run in range(args.runs):
            order = [(p, c) for p in ("one CPU", "spread") for c in configs]
            order = order[run % len(order):] + order[: run % len(order)]
            for placement, config in order:
                os.sched_setaffinity(0, mask(placement))  # the server and tar inherit it
                n += 1
                elapsed = one(config, base, scratch / "t.tar", scratch / f"m{n}", cmd)
                times.setdefault((placement, config), []).append(elapsed)
                print(f"  run {run} {placement:8} {config:22} {elapsed:6.2f} s", file=sys.stderr)
            for placement in rtt:
                os.sched_setaffinity(0, mask(placement))
                rtt[placement].append(ovl.pipe_round_trip_us())
        os.sched_setaffinity(0, everywhere)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"\nuntar of {args.files} files of 1 KiB ({args.tar}), {args.runs} runs, medians; "
          f"scratch on {args.dir}; {len(everywhere)} CPUs")
    print("pipe round trip: " + ", ".join(
        f"{p} {statistics.median(v):.1f} us" for p, v in rtt.items()))
    print("\n| overlay | one CPU | spread | one CPU / spread | vs rootbuild, one CPU |")
    print("|---|---|---|---|---|")
    ref = med[("one CPU", "rootbuild")]
    for config in configs:
        one_cpu, spread = med[("one CPU", config)], med[("spread", config)]
        print(f"| {config} | {one_cpu:.2f} s | {spread:.2f} s | {one_cpu / spread:.2f} | "
              f"{one_cpu / ref:.2f} |")
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 2 and sys.argv[1].endswith(".json") and os.environ.get(NS_ENV) == "1":
        code = serve_stock(Path(sys.argv[1]))  # started by mount_overlay as the server
        sys.stdout.flush()
        os._exit(code)
    sys.exit(main())
