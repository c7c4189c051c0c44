"""The fixed cost of a RUN step (issue 14, item 1): whole-build medians of many-RUN builds,
two rootbuild installations interleaved build by build, and a per-phase trace of one step.

    python bench/run_cost.py --work DIR [--python A --python B ...] [--runs N]
                             [--debian-tar TAR] [--snapshotter fuse] [--trace]

Job: build, with each interpreter given (a venv's ``python``: its installed rootbuild), with
``--no-cache`` in a store that already holds the base: a busybox rootfs (``FROM scratch``,
``COPY rootfs/ /``) with no RUN and with 30 one-line RUNs (issue 14's second row), and, with
``--debian-tar``, a Debian minbase base (an oci-archive of the tar) with no RUN and 8
one-line RUNs. Prints, per case and installation, the median wall time and the median cost
per RUN (the difference to the no-RUN build, divided by the RUNs).

Rules:
- Builds of the installations alternate (A, B, A, B ...): a busy neighbour on this shared
  machine slows both alike; only medians are reported.
- ``--trace``: the builds run with ``ROOTBUILD_RUN_TRACE=FILE`` (``sandbox/trace.py``) and
  the per-phase medians of every RUN step are printed per installation.
- Every build ends with an oci-archive export, as issue 14 measured BuildKit.
- Measurements only: nothing here is a test, nothing is asserted about times.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

BUSYBOX = "/bin/busybox"
ONE_LINERS = 30
DEBIAN_RUNS = 8
CLI = "import sys; from rootbuild.cli import main; sys.exit(main())"


def busybox_context(ctx: Path, runs: int) -> None:
    rootfs = ctx / "rootfs"
    if not rootfs.exists():
        (rootfs / "bin").mkdir(parents=True)
        for d in ("tmp", "etc", "root"):
            (rootfs / d).mkdir()
        (rootfs / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
        (rootfs / "etc/group").write_text("root:x:0:\n")
        shutil.copy(BUSYBOX, rootfs / "bin/busybox")
        for name in ("sh", "echo", "mkdir"):
            os.symlink("busybox", rootfs / "bin" / name)
    lines = ["FROM scratch", "COPY rootfs/ /", "ENV PATH=/bin"]
    lines += [f"RUN echo {i} > /s{i} && mkdir -p /d/{i}" for i in range(runs)]
    (ctx / "Dockerfile").write_text("\n".join(lines) + "\n")


def debian_context(ctx: Path, archive: Path, runs: int) -> None:
    ctx.mkdir(parents=True, exist_ok=True)
    lines = [f"FROM oci-archive:{archive}"]
    lines += [f"RUN echo {i} > /s{i} && mkdir -p /d/{i}" for i in range(runs)]
    (ctx / "Dockerfile").write_text("\n".join(lines) + "\n")


def build(python: str, ctx: Path, store: Path, out: Path, snapshotter: str,
          trace: Path | None) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the build and every process it waited for)."""
    env = dict(os.environ)
    env.pop("ROOTBUILD_RUN_TRACE", None)
    if trace is not None:
        env["ROOTBUILD_RUN_TRACE"] = str(trace)
    argv = [python, "-I", "-c", CLI, "build", "--root", str(store), "--no-cache",
            "--progress", "plain", "--snapshotter", snapshotter,
            "--output", f"oci-archive:{out}", str(ctx)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.monotonic()
    proc = subprocess.run(argv, capture_output=True, text=True, env=env)
    took = time.monotonic() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if proc.returncode != 0:
        sys.exit(f"build failed ({python}, {ctx}): {proc.stderr[-2000:]}")
    return took, cpu


def phase_medians(trace: Path) -> dict[str, float]:
    """Per phase (the time from one mark to the next, named ``prev > next``), the median
    in ms over every traced RUN step (the marks from one ``step.start`` to the next that
    include an init's)."""
    if not trace.exists():
        return {}
    marks = sorted((json.loads(line) for line in trace.read_text().splitlines()),
                   key=lambda m: m["t"])
    steps: list[list[dict[str, object]]] = []
    for m in marks:
        if m["n"] == "step.start" or not steps:
            steps.append([])
        steps[-1].append(m)
    per: dict[str, list[float]] = {}
    for step in steps:
        if not any(m["n"] == "i.main" for m in step):
            continue
        for prev, nxt in itertools.pairwise(step):
            name = f"{prev['n']} > {nxt['n']}"
            per.setdefault(name, []).append((float(nxt["t"]) - float(prev["t"])) * 1000)
        total = (float(step[-1]["t"]) - float(step[0]["t"])) * 1000
        per.setdefault("TOTAL step.start > last", []).append(total)
    return {name: statistics.median(v) for name, v in per.items()}


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--python", action="append", default=[])
    ap.add_argument("--runs", type=int, default=9)
    ap.add_argument("--debian-tar", type=Path)
    ap.add_argument("--snapshotter", default="fuse")
    ap.add_argument("--trace", action="store_true")
    ap.add_argument("--only", choices=("busybox", "debian"))
    opts = ap.parse_args(argv)
    pythons = opts.python or [sys.executable]
    work = opts.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    cases: dict[str, tuple[Path, Path, int]] = {}
    if opts.only != "debian":
        busybox_context(work / "bb0", 0)
        busybox_context(work / "bb30", ONE_LINERS)
        cases["busybox"] = (work / "bb0", work / "bb30", ONE_LINERS)
    if opts.debian_tar is not None and opts.only != "busybox":
        archive = work / "debian.oci.tar"
        if not archive.exists():
            sys.path.insert(0, str(Path(__file__).parent))
            from peers import debian_oci_archive

            debian_oci_archive(opts.debian_tar, archive)
        debian_context(work / "deb0", archive, 0)
        debian_context(work / "deb8", archive, DEBIAN_RUNS)
        cases["debian"] = (work / "deb0", work / "deb8", DEBIAN_RUNS)
    for name, (ctx0, ctxn, runs) in cases.items():
        times: dict[tuple[str, str], list[float]] = {}
        cpus: dict[tuple[str, str], list[float]] = {}
        for i, python in enumerate(pythons):
            store = work / f"store-{i}"
            for ctx in (ctx0, ctxn):  # warm the store: the base is imported once
                build(python, ctx, store, work / "out.tar", opts.snapshotter, None)
        for _ in range(opts.runs):
            for i, python in enumerate(pythons):
                store = work / f"store-{i}"
                trace = work / f"trace-{name}-{i}.jsonl" if opts.trace else None
                for ctx in (ctx0, ctxn):
                    took, cpu = build(python, ctx, store, work / "out.tar", opts.snapshotter,
                                      trace if ctx is ctxn else None)
                    times.setdefault((python, ctx.name), []).append(took)
                    cpus.setdefault((python, ctx.name), []).append(cpu)
        print(f"== {name}: {runs} RUNs, --snapshotter {opts.snapshotter}, "
              f"{opts.runs} builds each")
        for i, python in enumerate(pythons):
            base = statistics.median(times[(python, ctx0.name)])
            full = statistics.median(times[(python, ctxn.name)])
            cbase = statistics.median(cpus[(python, ctx0.name)])
            cfull = statistics.median(cpus[(python, ctxn.name)])
            print(f"  [{i}] {python}: wall: no RUN {base:.3f} s, {runs} RUNs {full:.3f} s, "
                  f"per RUN {(full - base) / runs * 1000:.1f} ms; CPU: no RUN {cbase:.3f} s, "
                  f"{runs} RUNs {cfull:.3f} s, per RUN {(cfull - cbase) / runs * 1000:.1f} ms")
            if opts.trace:
                for phase, ms in phase_medians(work / f"trace-{name}-{i}.jsonl").items():
                    print(f"      {phase:<28} {ms:7.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
