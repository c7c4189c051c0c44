"""How many concurrent builds one worker holds: the measurement behind docs/service-scale.md.

Job: queue ``--jobs`` M small, realistic builds from two tenants with ``rootbuild submit``
into a fresh ``redis-server`` (unix socket in a temporary directory, AOF on, as
tests/integration/test_service_queue.py starts it), start ONE ``rootbuild worker
--concurrency N`` as an unprivileged bench user, wait until every job is terminal, and
report per run: wall time (worker start to the last ``finished_at``), jobs/minute, median
and p90 latency (``finished_at`` minus the later of ``queued_at`` and the worker's start,
from ``rootbuild status --json``), median run time (``finished_at - started_at``), the
worker's CPU seconds per job (its whole process tree's, ``cpu_seconds``: less sensitive to
other load than wall time), the worker process's peak RSS (``VmHWM``) and the peak summed
RSS of its whole process tree, how many builds really ran at once (max and time-average of
the jobs' WORKING intervals, and of their RUN steps, from the job logs' entry ids), how
many sandbox inits (one per RUN step in flight) the tree held (sampled every 0.2 s), the
1-minute load average during the run, and failures. Rounds are interleaved (round r runs
every N once, the order reversed every other round) so that ratios between N values
compare runs made minutes apart on the same (shared, noisy) machine; medians per N and of
the per-round ratios to the first N end the output, and ``--out FILE`` keeps every run as
JSON.

Rules:
- Run as root: ``ensure_bench_user`` creates the bench user (``--user``, default
  ``rbbench``) if missing and gives it the blocks of 65536 subordinate uids and gids a
  worker with ``--concurrency max(N)`` needs (service/slots.py: ``slot_base + N``).
  Idempotent (a user that holds enough blocks is left alone); a missing range is added in
  one ``usermod`` past every range of every user in /etc/subuid and /etc/subgid and past
  the space scripts/test.sh places test users' ranges in, so it overlaps no one, also on a
  machine other users already use (the user is created without useradd's automatic range,
  which would land in that space). Redis, submit and the worker run as that user.
- Each tenant's concurrency cap (queue default 2, ``QueueConfig.tenant_cap``) is set to N
  (``RedisQueue.set_tenant_cap``), so only the worker's ``--concurrency`` limits it;
  ``--default-caps`` keeps the queue's default (2 tenants x cap 2 = at most 4 builds at
  once: what the 2026-12-06 N=8 runs measured).
- Everything started is stopped by pid and every temporary directory removed, also on
  Ctrl-C. Each job gets its own ``--build-arg NONCE`` so no RUN step is a cache hit.

    sudo python3 bench/service_scale.py --jobs 16 --concurrency 1,2,4,8 --runs 3 \\
        --venv /opt/rb-front/venv --out /tmp/scale.json
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import re
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
sys.path.insert(0, str(HERE))  # run by Debian's python3 as root: this checkout's modules
from rootbuild.sandbox.idmap import SLOT_SPAN as SPAN  # noqa: E402 (ids per slot block)
from rootbuild.sandbox.idmap import blocks_of  # noqa: E402
from rootbuild.service import slots  # noqa: E402

# scripts/test.sh puts test user k's blocks at 100000 + k * 65536 for k < 2000 (two blocks
# per user, placed by uid): the bench user's ranges go above that space
TEST_SPACE_END = 100000 + 2000 * SPAN
INIT_TITLE = b"rootbuild.sandbox.init"  # a RUN step's sandbox init (sandbox/zygote.py)
TENANTS = ("acme", "globex")

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

# Run by the venv's python as the bench user: set the tenants' caps, or dump the job logs
# with their stream entry ids (milliseconds) for the step trace.
SET_CAPS = """\
import sys
from rootbuild.service.queue import RedisQueue, connect
q = RedisQueue(connect(sys.argv[1]))
for tenant in sys.argv[3:]:
    q.set_tenant_cap(tenant, int(sys.argv[2]))
"""
DUMP_LOGS = """\
import json, sys
from rootbuild.service.queue import RedisQueue, connect
q = RedisQueue(connect(sys.argv[1]))
out = {}
for job in sys.argv[2:]:
    entries, after = [], "0-0"
    while True:
        got = q.read_log(job, after)
        if not got:
            break
        entries += [(e.id, e.data.decode("utf-8", "replace")) for e in got]
        after = got[-1].id
    out[job] = entries
json.dump(out, sys.stdout)
"""


def run_as(user: str, home: Path, argv: list[str]) -> list[str]:
    return ["runuser", "-u", user, "--", "env", f"HOME={home}", *argv]


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    k = (len(s) - 1) * p
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


# -- the bench user's subordinate ids -------------------------------------------------------

def subid_blocks(text: str, name: str, uid: int) -> int:
    """Whole blocks of 65536 ids ``name`` (or ``uid``) holds in subuid(5)-format ``text``."""
    return blocks_of(text, name, uid)


def free_start(*texts: str) -> int:
    """A first id past every range of every user in the texts and past scripts/test.sh's
    space, on a block boundary."""
    return slots.free_start(*texts, floor=TEST_SPACE_END)


def ensure_bench_user(user: str, blocks: int) -> None:
    """Create ``user`` if missing and make it hold ``blocks`` blocks of subordinate uids and
    gids (idempotent; an added range overlaps no other user's)."""
    try:
        pwd.getpwnam(user)
    except KeyError:
        # no automatic subordinate range: useradd would place it in scripts/test.sh's space
        subprocess.run(["useradd", "--create-home", "--shell", "/bin/bash",
                        "-K", "SUB_UID_COUNT=0", "-K", "SUB_GID_COUNT=0", user], check=True)
    uid = pwd.getpwnam(user).pw_uid
    subuid, subgid = Path("/etc/subuid").read_text(), Path("/etc/subgid").read_text()
    have = min(subid_blocks(subuid, user, uid), subid_blocks(subgid, user, uid))
    if have >= blocks:
        return
    first = free_start(subuid, subgid)
    last = first + (blocks - have) * SPAN - 1
    print(f"service_scale: giving {user} {blocks - have} more block(s) of subordinate ids "
          f"({first}-{last})", file=sys.stderr)
    subprocess.run(["usermod", "--add-subuids", f"{first}-{last}",
                    "--add-subgids", f"{first}-{last}", user], check=True)


# -- sampling the worker's process tree -----------------------------------------------------

def proc_table() -> dict[int, tuple[int, bytes]]:
    """pid -> (ppid, cmdline) of every process."""
    out: dict[int, tuple[int, bytes]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{d}/cmdline", "rb") as f:
                cmd = f.read()
        except (OSError, IndexError, ValueError):
            continue
        out[int(d)] = (ppid, cmd)
    return out


def tree_pids(root: int, table: dict[int, tuple[int, bytes]] | None = None) -> list[int]:
    table = proc_table() if table is None else table
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def status_kb(pid: int, field: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def cpu_seconds(pid: int) -> float:
    """CPU time of ``pid`` and of every descendant it (or they) waited for: utime + stime +
    cutime + cstime. Read when every build has ended, the worker's whole tree's CPU (each
    build's zygote is waited for by the worker, its inits by the zygote)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def load1() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


class TreeSampler(threading.Thread):
    """Every 0.2 s: the summed VmRSS of the worker's process tree (its peak is kept), the
    number of sandbox inits in it (one per RUN step in flight: a forked init's own
    children still carry its title until they exec, so only top-most inits count), and
    the 1-minute load average."""

    def __init__(self, root: int) -> None:
        super().__init__(daemon=True)
        self.root, self.peak_kb, self.stop = root, 0, threading.Event()
        self.samples: list[tuple[float, int, float]] = []  # (time, inits, load1)

    def run(self) -> None:
        while not self.stop.is_set():
            table = proc_table()
            pids = tree_pids(self.root, table)
            self.peak_kb = max(self.peak_kb, sum(status_kb(p, "VmRSS") for p in pids))
            inits = {p for p in pids if INIT_TITLE in table.get(p, (0, b""))[1]}
            top = sum(1 for p in inits if table[p][0] not in inits)
            self.samples.append((time.time(), top, load1()))
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


# -- concurrency from intervals ---------------------------------------------------------------

def overlap(intervals: list[tuple[float, float]], t0: float, t1: float) -> tuple[int, float]:
    """The most intervals open at once, and their time-average over [t0, t1]."""
    events = sorted([(a, 1) for a, b in intervals] + [(b, -1) for a, b in intervals])
    most = now = 0
    area, last = 0.0, t0
    for t, d in events:
        area += now * (max(t0, min(t, t1)) - max(t0, min(last, t1)))
        last = t
        now += d
        most = max(most, now)
    return most, area / (t1 - t0) if t1 > t0 else 0.0


_STEP = re.compile(r"#(\d+) (\S.*)")


def run_steps(entries: list[tuple[str, str]]) -> list[tuple[float, float]]:
    """(start, end) in seconds of each RUN step of one job's log: from the log entry that
    holds its ``#n ... RUN`` line to the one that holds its ``#n DONE`` (or ERROR). Entries
    are flushed every 0.2 s, so each end is known to about 0.2 s."""
    begun: dict[str, float] = {}
    out: list[tuple[float, float]] = []
    for entry_id, text in entries:
        t = int(entry_id.split("-")[0]) / 1000
        for line in text.splitlines():
            m = _STEP.match(line)
            if not m:
                continue
            step, rest = m.groups()
            if step not in begun and " RUN " in f" {rest} ":
                begun[step] = t
            elif step in begun and rest.split()[0] in ("DONE", "ERROR"):
                out.append((begun.pop(step), t))
    return out


# -- one run ---------------------------------------------------------------------------------

def make_context(base: Path) -> Path:
    ctx = base / "context"
    shutil.copytree(HERE / "examples" / "busybox" / "rootfs", ctx / "rootfs", symlinks=True)
    shutil.copy2("/bin/busybox", ctx / "rootfs" / "bin" / "busybox")
    (ctx / "Dockerfile").write_text(DOCKERFILE)
    return ctx


def one_run(args: argparse.Namespace, n: int) -> dict[str, float]:
    user, py = args.user, str(Path(args.venv) / "bin" / "python")
    rb = str(Path(args.venv) / "bin" / "rootbuild")
    pw = pwd.getpwnam(user)
    tmp = Path(tempfile.mkdtemp(prefix="rb-scale-"))
    os.chmod(tmp, 0o755)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        home = tmp / "home"
        home.mkdir()
        ctx = make_context(tmp)
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
        if not args.default_caps:
            subprocess.run(run_as(user, home, [py, "-c", SET_CAPS, url, str(n), *TENANTS]),
                           check=True)
        jobs = []
        for i in range(args.jobs):
            out = subprocess.run(
                run_as(user, home, [rb, "submit", "--redis", url, "--tenant",
                                    TENANTS[i % 2], "--build-arg",
                                    f"NONCE={n}-{i}-{time.time_ns()}", str(ctx)]),
                check=True, capture_output=True, text=True).stdout.strip()
            jobs.append(out)
        log = open(tmp / "worker.log", "wb")  # noqa: SIM115
        load_start = load1()
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
        wpid = worker_python_pid(worker.pid)
        hwm_kb, cpu_s = status_kb(wpid, "VmHWM"), cpu_seconds(wpid)
        sampler.stop.set()
        sampler.join()
        logs = json.loads(subprocess.run(
            run_as(user, home, [py, "-c", DUMP_LOGS, url, *jobs]),
            check=True, capture_output=True, text=True).stdout)
        end_ms = max(r["finished_at"] for r in records.values())
        end = end_ms / 1000
        wall = end - t0
        lat = [(r["finished_at"] - max(r["queued_at"], t0 * 1000)) / 1000
               for r in records.values()]
        runs = [(r["started_at"] / 1000, r["finished_at"] / 1000)
                for r in records.values() if r.get("started_at")]
        steps = [s for job in jobs for s in run_steps(logs.get(job, []))]
        jobs_max, jobs_avg = overlap(runs, t0, end)
        steps_max, steps_avg = overlap(steps, t0, end)
        inits = [k for t, k, _ in sampler.samples if t <= end]
        loads = [la for _, _, la in sampler.samples]
        failed = [r for r in records.values() if r["state"] != "SUCCESS"]
        for r in failed:
            print(f"  failed {r.get('id')}: {r['state']} {r.get('failure_info')}", file=sys.stderr)
        return {"wall_s": wall, "jobs_per_min": len(jobs) / wall * 60,
                "lat_median_s": statistics.median(lat), "lat_p90_s": pct(lat, 0.9),
                "run_median_s": statistics.median(b - a for a, b in runs) if runs else 0.0,
                "cpu_s_per_job": cpu_s / len(jobs), "worker_rss_mib": hwm_kb / 1024,
                "tree_rss_mib": sampler.peak_kb / 1024,
                "jobs_max": float(jobs_max), "jobs_avg": jobs_avg,
                "steps_max": float(steps_max), "steps_avg": steps_avg,
                "inits_max": float(max(inits, default=0)),
                "inits_avg": statistics.fmean(inits) if inits else 0.0,
                "load_start": load_start, "load_mean": statistics.fmean(loads) if loads else 0.0,
                "load_max": max(loads, default=0.0), "failures": float(len(failed))}
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


KEYS = ["wall_s", "jobs_per_min", "lat_median_s", "lat_p90_s", "run_median_s",
        "cpu_s_per_job", "worker_rss_mib", "tree_rss_mib", "jobs_max", "jobs_avg",
        "steps_max", "steps_avg",
        "inits_max", "inits_avg", "load_start", "load_mean", "load_max", "failures"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=16)
    ap.add_argument("--concurrency", default="1,2,4,8")
    ap.add_argument("--runs", type=int, default=3, help="interleaved rounds")
    ap.add_argument("--timeout", type=float, default=900, help="per run, seconds")
    ap.add_argument("--user", default="rbbench",
                    help="the unprivileged bench user (created if missing)")
    ap.add_argument("--venv", default=os.environ.get("ROOTBUILD_VENV", "/opt/rb-front/venv"))
    ap.add_argument("--default-caps", action="store_true",
                    help="keep the queue's default tenant cap (2) instead of N")
    ap.add_argument("--out", type=Path, default=None, help="every run as JSON")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("service_scale: run as root (it sets up the bench user and uses runuser); the "
              "worker runs as --user", file=sys.stderr)
        return 2
    ns = [int(x) for x in args.concurrency.split(",")]
    ensure_bench_user(args.user, max(ns))  # --slot-base 0: slots 0..N-1
    subprocess.run(["chmod", "-R", "a+rX", str(Path(args.venv).parent)], check=True)
    print(f"{nproc_ram_kernel()}; {args.jobs} jobs per run", flush=True)
    print("N  round " + " ".join(f"{k:>12}" for k in KEYS), flush=True)
    results: dict[int, list[dict[str, float]]] = {n: [] for n in ns}
    for r in range(args.runs):
        for n in (ns if r % 2 == 0 else list(reversed(ns))):
            res = one_run(args, n)
            res["round"] = float(r)
            results[n].append(res)
            print(f"{n:<2} {r + 1:>5} " + " ".join(f"{res[k]:>12.2f}" for k in KEYS),
                  flush=True)
    print(f"\nmedian of {args.runs} run(s), {args.jobs} jobs each:")
    for n in ns:
        print(f"{n:<2}   med " + " ".join(
            f"{statistics.median(x[k] for x in results[n]):>12.2f}" for k in KEYS))
    base = ns[0]
    print(f"\njobs/min relative to N={base} in the same round (median over rounds):")
    for n in ns:
        ratios = [x["jobs_per_min"] / b["jobs_per_min"]
                  for x, b in zip(results[n], results[base], strict=True)]
        print(f"N={n}: {statistics.median(ratios):.2f} (rounds: "
              + ", ".join(f"{q:.2f}" for q in ratios) + ")")
    if args.out:
        args.out.write_text(json.dumps({str(n): v for n, v in results.items()}, indent=1))
    return 0


def nproc_ram_kernel() -> str:
    mem = next(line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines()
               if line.startswith("MemTotal:"))
    return f"nproc {os.cpu_count()}, MemTotal {mem} kB, kernel {os.uname().release}"


if __name__ == "__main__":
    sys.exit(main())
