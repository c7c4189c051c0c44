"""How many concurrent builds one worker holds: the measurement behind docs/service-scale.md.

Job: for each ``--concurrency`` N (and ``--runs`` times each), start a fresh ``redis-server``
on a unix socket in a temporary directory (as tests/integration/test_service_queue.py does),
queue ``--jobs`` M small, realistic builds from two tenants with ``rootbuild submit``, start
ONE ``rootbuild worker --concurrency N`` as the unprivileged test user, wait until every job
is terminal, and report: wall time (worker start to the last ``finished_at``), jobs/minute,
median and p90 latency (``finished_at`` minus the later of ``queued_at`` and the worker's
start, from ``rootbuild status --json``), median run time (``finished_at - started_at``), the
worker process's peak RSS (``VmHWM``) and the peak summed RSS of its whole process tree
(FUSE servers and steps included, sampled every 0.2 s), and failures. A median over the runs
ends the output.

Rules: run as root (only for ``runuser``: redis, submit and the worker run as the test user);
everything started is stopped by pid and every temporary directory removed, also on
Ctrl-C. Each job gets its own ``--build-arg NONCE`` so no RUN step is a cache hit.

    sudo python3 bench/service_scale.py --jobs 12 --concurrency 1,2,4,8 --runs 3
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent

DOCKERFILE = """\
FROM scratch
COPY rootfs/ /
ENV PATH=/bin
ARG NONCE
RUN /bin/busybox --install -s /bin && mkdir -p /work/a && cd /work/a && \\
    i=0; while [ $i -lt 2000 ]; do echo "$NONCE $i" > f$i; i=$((i+1)); done
RUN cd /work && tar cf a.tar a && md5sum a.tar > a.md5 && rm -rf a
RUN cd /work && i=0; s=0; while [ $i -lt 30000 ]; do s=$(((s+i*i)%7919)); i=$((i+1)); done; \\
    echo "$NONCE $s" > sum
"""


def run_as(user: str, home: Path, argv: list[str]) -> list[str]:
    return ["runuser", "-u", user, "--", "env", f"HOME={home}", *argv]


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    k = (len(s) - 1) * p
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def tree_pids(root: int) -> list[int]:
    parent: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        parent.setdefault(ppid, []).append(int(d))
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(parent.get(p, []))
    return out


def status_kb(pid: int, field: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


class TreeSampler(threading.Thread):
    """Peak summed VmRSS of a process tree, sampled every 0.2 s."""

    def __init__(self, root: int) -> None:
        super().__init__(daemon=True)
        self.root, self.peak_kb, self.stop = root, 0, threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            total = sum(status_kb(p, "VmRSS") for p in tree_pids(self.root))
            self.peak_kb = max(self.peak_kb, total)
            self.stop.wait(0.2)


def worker_python_pid(root: int) -> int:
    """The worker's own python process under ``runuser`` (the tree's first python)."""
    for p in tree_pids(root):
        try:
            cmd = Path(f"/proc/{p}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(c.endswith(b"rootbuild") for c in cmd[:2]) and b"worker" in cmd:
            return p
    return root


def make_context(base: Path) -> Path:
    ctx = base / "context"
    shutil.copytree(HERE / "examples" / "busybox" / "rootfs", ctx / "rootfs", symlinks=True)
    shutil.copy2("/bin/busybox", ctx / "rootfs" / "bin" / "busybox")
    (ctx / "Dockerfile").write_text(DOCKERFILE)
    return ctx


def one_run(args: argparse.Namespace, n: int, rb: str, user: str) -> dict[str, float]:
    pw = pwd.getpwnam(user)
    tmp = Path(tempfile.mkdtemp(prefix="rb-scale-"))
    os.chmod(tmp, 0o755)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        home = tmp / "home"
        home.mkdir()
        ctx = make_context(tmp)
        os.chown(tmp, pw.pw_uid, pw.pw_gid)
        subprocess.run(["chown", "-R", f"{pw.pw_uid}:{pw.pw_gid}", str(tmp)], check=True)
        sock = tmp / "r.sock"
        redis = subprocess.Popen(
            run_as(user, home, ["redis-server", "--port", "0", "--unixsocket", str(sock),
                                "--unixsocketperm", "700", "--save", "", "--appendonly", "yes",
                                "--dir", str(tmp)]),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(redis)
        deadline = time.monotonic() + 10
        while not sock.exists():
            if time.monotonic() > deadline or redis.poll() is not None:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.05)
        url = f"unix://{sock}"
        jobs = []
        for i in range(args.jobs):
            tenant = ("acme", "globex")[i % 2]
            out = subprocess.run(
                run_as(user, home, [rb, "submit", "--redis", url, "--tenant", tenant,
                                    "--build-arg", f"NONCE={n}-{i}-{time.time_ns()}", str(ctx)]),
                check=True, capture_output=True, text=True).stdout.strip()
            jobs.append(out)
        log = open(tmp / "worker.log", "wb")  # noqa: SIM115
        t0 = time.time()
        worker = subprocess.Popen(
            run_as(user, home, [rb, "worker", "--redis", url, "--concurrency", str(n),
                                "--store", str(tmp / "store"), "--name", f"bench-{n}"]),
            stdout=log, stderr=log)
        log.close()
        procs.append(worker)
        sampler = TreeSampler(worker.pid)
        sampler.start()
        records: dict[str, dict] = {}

        def status(job: str) -> dict:
            return json.loads(subprocess.run(
                run_as(user, home, [rb, "status", "--redis", url, "--json", job]),
                check=True, capture_output=True, text=True).stdout)

        deadline = time.monotonic() + args.timeout
        # one ``status`` call a second (each is a python start: polling all M jobs would
        # steal the CPU being measured); a job seen terminal is never asked again
        while len(records) < len(jobs):
            if time.monotonic() > deadline:
                raise RuntimeError(f"timeout: {len(records)}/{len(jobs)} jobs terminal")
            if worker.poll() is not None:
                raise RuntimeError("worker exited:\n" + (tmp / "worker.log").read_text())
            job = next(j for j in jobs if j not in records)
            rec = status(job)
            if rec["state"] not in ("QUEUED", "WORKING"):
                records[job] = rec
                continue
            time.sleep(1.0)
        hwm_kb = status_kb(worker_python_pid(worker.pid), "VmHWM")
        sampler.stop.set()
        sampler.join()
        t0_ms = t0 * 1000
        end = max(r["finished_at"] for r in records.values())
        wall = (end - t0_ms) / 1000
        lat = [(r["finished_at"] - max(r["queued_at"], t0_ms)) / 1000 for r in records.values()]
        runt = [(r["finished_at"] - r["started_at"]) / 1000
                for r in records.values() if r.get("started_at")]
        failed = [r for r in records.values() if r["state"] != "SUCCESS"]
        for r in failed:
            print(f"  failed {r.get('id')}: {r['state']} {r.get('failure_info')}", file=sys.stderr)
        return {"wall_s": wall, "jobs_per_min": len(jobs) / wall * 60,
                "lat_median_s": statistics.median(lat), "lat_p90_s": pct(lat, 0.9),
                "run_median_s": statistics.median(runt) if runt else 0.0,
                "worker_rss_mib": hwm_kb / 1024, "tree_rss_mib": sampler.peak_kb / 1024,
                "failures": float(len(failed))}
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(timeout=40)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        subprocess.run(["rm", "-rf", str(tmp)], check=False)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=12)
    ap.add_argument("--concurrency", default="1,2,4")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--timeout", type=float, default=900, help="per run, seconds")
    ap.add_argument("--user", default=os.environ.get("ROOTBUILD_TEST_USER", "rbt-front"))
    ap.add_argument("--venv", default=os.environ.get("ROOTBUILD_VENV", "/opt/rb-front/venv"))
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("service_scale: run as root (for runuser); the worker runs as --user",
              file=sys.stderr)
        return 2
    rb = str(Path(args.venv) / "bin" / "rootbuild")
    keys = ["wall_s", "jobs_per_min", "lat_median_s", "lat_p90_s", "run_median_s",
            "worker_rss_mib", "tree_rss_mib", "failures"]
    print("N  run " + " ".join(f"{k:>14}" for k in keys), flush=True)
    summary: list[tuple[int, dict[str, float]]] = []
    for n in (int(x) for x in args.concurrency.split(",")):
        results = []
        for i in range(args.runs):
            res = one_run(args, n, rb, args.user)
            results.append(res)
            print(f"{n:<2} {i + 1:>3} " + " ".join(f"{res[k]:>14.1f}" for k in keys), flush=True)
        summary.append((n, {k: statistics.median(r[k] for r in results) for k in keys}))
    print(f"\nmedian of {args.runs} run(s), {args.jobs} jobs each:")
    for n, med in summary:
        print(f"{n:<2} med " + " ".join(f"{med[k]:>14.1f}" for k in keys))
    return 0


if __name__ == "__main__":
    sys.exit(main())
