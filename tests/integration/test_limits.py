"""Per-step limits (issue 13, "Isolation of strangers": limits), through the real `rootbuild`
run as the unprivileged build user on a busybox base.

- ``--pids-limit``: a fork bomb of sleepers ends the build with one line naming the limit
  and the step; nothing is left, in any uid (``--slot`` puts the step's root on a
  subordinate uid, so the check looks at every process on the machine).
- ``--memory``: a step holding more resident memory than the limit (busybox ``dd`` with a
  block bigger than the limit) is killed by the watchdog, one line naming the limit.
- ``--log-limit``: a step printing 100 MB gets the first bytes and one note line, and the
  builder's resident memory stays flat (sampled from /proc while the build runs).
- ``--slot 0``: the step's processes run as the first id of the user's subordinate range,
  not as the user; a slot the range does not hold is refused with one line.
- The step's nested user namespace (``nest.py``) bounds processes of every uid together.
- Every limit hit leaves the store as it was.
"""

from __future__ import annotations

import os
import pwd
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from conftest import ROOTBUILD, Harness
from test_build_run import Image, build_to_layout, busybox_context, error_lines, unique_seconds

from rootbuild.sandbox.idmap import slot_blocks

pytestmark = pytest.mark.integration

EXTRA = {"rootfs/bin/dd": "symlink:busybox", "rootfs/bin/yes": "symlink:busybox",
         "rootfs/bin/head": "symlink:busybox"}


def _context(rb: Harness, name: str, run: str) -> Path:
    return busybox_context(rb, name, f"FROM scratch\nCOPY rootfs/ /\nRUN {run}\n", EXTRA)


def _anywhere(marker: str) -> list[str]:
    """Processes of ANY user naming ``marker`` (a slot's step runs as a subordinate uid)."""
    out = subprocess.run(["ps", "-e", "-ww", "-o", "pid=,user=,args="],
                         capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if marker in line]


def _first_subuid(name: str) -> int:
    for line in Path("/etc/subuid").read_text().splitlines():
        fields = line.split(":")
        if len(fields) == 3 and fields[0] == name:
            return int(fields[1])
    pytest.fail(f"the test user {name} has no /etc/subuid range")


def _primed_snapshot(rb: Harness) -> dict[str, tuple[int, int]]:
    """The store after a build of the same base (its COPY layer is then a cache hit)."""
    rb.run("build", "-q", str(_context(rb, "prime", "true")))
    return rb.store_snapshot()


def _assert_clean(rb: Harness, before: dict[str, tuple[int, int]], marker: str) -> None:
    assert rb.store_snapshot() == before
    assert _anywhere(marker) == []
    work = rb.store / "tmp"
    assert not work.exists() or list(work.iterdir()) == []
    assert [m for m in Path("/proc/mounts").read_text().splitlines()
            if str(rb.workdir) in m] == []


def test_fork_bomb_ends_at_the_pids_limit_and_leaves_nothing(rb: Harness) -> None:
    seconds = unique_seconds()
    ctx = _context(rb, "forkbomb", f"while true; do sleep {seconds} & done")
    before = _primed_snapshot(rb)
    started = time.monotonic()
    proc = rb.run("build", "-q", "--slot", "0", "--pids-limit", "40", "--timeout", "120",
                  str(ctx), check=False, timeout=180)
    assert time.monotonic() - started < 60
    assert proc.returncode == 1, proc.stderr
    assert error_lines(proc.stderr) == [
        f'rootbuild: Dockerfile:3: RUN: process "/bin/sh -c while true; do sleep {seconds} '
        '& done" was killed: pids limit 40 reached'
    ], proc.stderr
    _assert_clean(rb, before, f"sleep {seconds}")


def test_memory_hog_is_killed_by_the_watchdog(rb: Harness) -> None:
    ctx = _context(rb, "hog", "dd if=/dev/zero of=/dev/null bs=256M count=200")
    before = _primed_snapshot(rb)
    proc = rb.run("build", "-q", "--memory", "64m", str(ctx), check=False, timeout=180)
    assert proc.returncode == 1, proc.stderr
    lines = error_lines(proc.stderr)
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(
        'rootbuild: Dockerfile:3: RUN: process "/bin/sh -c dd if=/dev/zero of=/dev/null '
        'bs=256M count=200" was killed: memory limit 64MiB exceeded (resident memory of '
        "the step's processes: "
    ), lines
    _assert_clean(rb, before, "bs=256M count=200")


def test_memory_under_the_limit_builds(rb: Harness) -> None:
    ctx = _context(rb, "small", "dd if=/dev/zero of=/dev/null bs=1M count=50")
    proc = rb.run("build", "-q", "--memory", "256m", "--pids-limit", "20", str(ctx))
    assert proc.stdout.strip().startswith("sha256:")


def _peak_rss(argv: list[str], cwd: Path) -> tuple[subprocess.CompletedProcess[str], int]:
    """Run ``argv`` (setpriv and env exec, so the pid is rootbuild's) and sample its VmRSS
    every 20 ms; returns the result and the peak in KiB. Output goes to files (a pipe
    nobody reads would stall the builder)."""
    peak = 0
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        with subprocess.Popen(argv, cwd=cwd, stdout=out, stderr=err, text=True) as child:
            while child.poll() is None:
                try:
                    status = Path(f"/proc/{child.pid}/status").read_text()
                except OSError:
                    status = ""
                for line in status.splitlines():
                    if line.startswith("VmRSS:"):
                        peak = max(peak, int(line.split()[1]))
                time.sleep(0.02)
        out.seek(0)
        err.seek(0)
        return subprocess.CompletedProcess(argv, child.returncode, out.read(), err.read()), peak


def test_output_beyond_the_log_limit_is_dropped_with_a_note_and_memory_stays_flat(
        rb: Harness) -> None:
    ctx = _context(rb, "chatty", "yes 0123456789abcdefghijklmnopqrstuvwxyz | head -c 100000000")
    small = _context(rb, "quiet", "echo hi")
    base = [str(ROOTBUILD), "build", "--root", str(rb.store), "--progress=plain",
            "--no-cache", "--log-limit", "64k"]
    quiet, quiet_peak = _peak_rss(rb.command([*base, str(small)]), rb.workdir)
    assert quiet.returncode == 0, quiet.stderr
    loud, loud_peak = _peak_rss(rb.command([*base, str(ctx)]), rb.workdir)
    assert loud.returncode == 0, loud.stderr
    printed = [line for line in loud.stderr.splitlines() if "0123456789abcdef" in line]
    # 64 KiB of 37-byte lines, the progress prefix aside
    assert 1700 <= len(printed) <= 1800, len(printed)
    assert loud.stderr.count("[output clipped, log limit 64KiB reached]") == 1
    # 100 MB went through the builder; it grew by far less than one MB per MB of output
    assert loud_peak < quiet_peak + 20 * 1024, (quiet_peak, loud_peak)


def test_slot_zero_runs_the_step_as_a_subordinate_uid(rb: Harness) -> None:
    seconds = unique_seconds()
    ctx = _context(rb, "slot", f"sleep {seconds}")
    argv = rb.command([str(ROOTBUILD), "build", "--root", str(rb.store), "-q", "--slot", "0",
                       "--timeout", "20", str(ctx)])
    owner = None
    with subprocess.Popen(argv, cwd=rb.workdir, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True) as child:
        deadline = time.monotonic() + 20
        while owner is None and time.monotonic() < deadline:
            for line in _anywhere(f"sleep {seconds}"):
                pid = int(line.split()[0])
                try:
                    owner = os.stat(f"/proc/{pid}").st_uid
                except OSError:
                    continue
            time.sleep(0.1)
        child.kill() if owner is None else None
        child.communicate()
    assert owner == _first_subuid(rb.user.name), owner
    assert owner != rb.user.uid
    assert _anywhere(f"sleep {seconds}") == []


def test_slot_outside_the_range_is_refused(rb: Harness) -> None:
    ctx = _context(rb, "slot9", "true")
    proc = rb.run("build", "-q", "--slot", "9", str(ctx), check=False)
    assert proc.returncode != 0
    lines = error_lines(proc.stderr)
    assert len(lines) == 1 and "--slot 9: /etc/subuid holds" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert pwd.getpwnam(rb.user.name).pw_uid == rb.user.uid


def test_doctor_says_what_enforces_each_limit(rb: Harness) -> None:
    out = rb.run("doctor", store=False, check=False).stdout
    lines = {line.split(":", 1)[0].split(None, 1)[1]: line for line in out.splitlines()
             if line.split(None, 1)[-1].startswith("limit ")}
    assert set(lines) == {"limit pids", "limit memory", "limit log", "limit timeout"}, out
    blocks = slot_blocks(Path("/etc/subuid").read_text(), Path("/etc/subgid").read_text(),
                         rb.user.name, rb.user.uid)  # scripts/test.sh gives two
    assert blocks >= 1
    assert "RLIMIT_NPROC" in lines["limit pids"]
    assert f"--slot 0..{blocks - 1} " in lines["limit pids"], lines["limit pids"]
    # this machine delegates no cgroup v2 (SERVICE.md): the watchdog is the memory limit
    assert "RSS watchdog" in lines["limit memory"]


def test_a_slot_build_keeps_owners_and_user_switches(rb: Harness) -> None:
    """In a slot the step runs in a nested user namespace: chown and USER still work and
    the layer records the in-image owners, as without a slot."""
    ctx = busybox_context(rb, "slotowners", (
        "FROM scratch\nCOPY rootfs/ /\n"
        "RUN mkdir /out && touch /out/f && chown 1000:2000 /out/f && chown app /out\n"
        "USER app\nRUN id -u > /out/uid && id -G > /out/groups\n"
    ), EXTRA)
    layout, _ = build_to_layout(rb, ctx, "--slot", "0", "--pids-limit", "50")
    image = Image(rb, layout)
    info = next(m["out/f"][0] for m in image.layers if "out/f" in m)
    assert (info.uid, info.gid) == (1000, 2000)
    assert image.text("out/uid") == "1000\n"
    assert image.text("out/groups").split() == ["1000", "2000"]


NEST_PROBE = """
import os, subprocess, sys, time
from rootbuild.sandbox import mounts
from rootbuild.sandbox.nest import enter_nested
first, uid, gid, limit = (int(a) for a in sys.argv[1:5])
r, w = os.pipe(); r2, w2 = os.pipe()
pid = os.fork()
if pid == 0:  # as the init: the slot's namespace, then the step's nested one
    mounts.unshare(mounts.CLONE_NEWUSER)
    os.write(w2, b"u"); os.read(r, 1)
    enter_nested(limit)
    kids = []
    for i in range(3 * limit):
        try:
            kid = os.fork()
        except OSError:
            break
        if kid == 0:
            os.setresuid(i + 1, i + 1, i + 1)  # every process a uid of its own
            time.sleep(1); os._exit(0)
        kids.append(kid)
    print(len(kids), flush=True)
    for kid in kids: os.waitpid(kid, 0)
    os._exit(0)
os.read(r2, 1)
for tool, own in (("newuidmap", uid), ("newgidmap", gid)):
    subprocess.run([tool, str(pid), "0", str(first), "65536", "65536", str(own), "1"],
                   check=True)
os.write(w, b"m")
os.waitpid(pid, 0)
"""


def test_the_nested_namespace_counts_every_uid_against_the_limit(rb: Harness) -> None:
    """RLIMIT_NPROC set before the step's nested user namespace is created bounds all its
    processes together, even when each switches to a uid of its own (ucounts)."""
    script = rb.workdir / "nest_probe.py"
    script.write_text(NEST_PROBE)
    python = str(ROOTBUILD.parent / "python")
    proc = rb.as_user([python, str(script), str(_first_subuid(rb.user.name)),
                       str(rb.user.uid), str(rb.user.gid), "10"])
    forked = int(proc.stdout.strip())
    assert 1 <= forked < 10, proc.stdout
