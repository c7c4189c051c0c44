"""CPU placement of RUN steps (sandbox/placement.py, sandbox/affinity.py) through the real
`rootbuild` executable, as the unprivileged build user:

- a step starts on one CPU, and its FUSE server is on the same one;
- a step that keeps two CPU-bound processes busy is given every CPU within a second;
- two steps running at the same time start on different CPUs;
- ``ROOTBUILD_CPU_PLACEMENT=off`` leaves steps on every CPU.

These need at least two CPUs the build user may run on (CI machines have two); with fewer
there is nothing to place and the tests fail, saying so, rather than skip.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

import pytest
from conftest import ROOTBUILD, Harness
from test_build_run import assert_nothing_left, build, busybox_context

pytestmark = pytest.mark.integration

CPUS_LINE = re.compile(r"^#\d+ [\d.]+s (\S+): Cpus_allowed_list:\s+(\S+)$", re.M)


def allowed() -> set[int]:
    cpus = os.sched_getaffinity(0)
    if len(cpus) < 2:
        pytest.fail(f"CPU placement needs two CPUs to choose from; this machine allows {cpus}")
    return cpus


def cpu_list(text: str) -> set[int]:
    """A kernel cpu list ("0-1,3") as a set."""
    out: set[int] = set()
    for part in text.split(","):
        first, _, last = part.partition("-")
        out.update(range(int(first), int(last or first) + 1))
    return out


def reported(stderr: str) -> dict[str, set[int]]:
    """label -> the CPUs a step printed with ``echo LABEL: $(grep Cpus_allowed_list ...)``."""
    return {label: cpu_list(cpus) for label, cpus in CPUS_LINE.findall(stderr)}


def show(label: str) -> str:
    return f'echo "{label}: $(grep Cpus_allowed_list /proc/self/status)"'


def test_a_step_starts_on_one_cpu_with_its_fuse_server(rb: Harness) -> None:
    cpus = allowed()
    ctx = busybox_context(rb, "one-cpu", (
        f"FROM scratch\nCOPY rootfs/ /\nRUN {show('step')}; sleep 3; {show('later')}\n"
    ))
    argv = rb.command([str(ROOTBUILD), "build", "--root", str(rb.store), "--progress=plain",
                       str(ctx)])
    proc = subprocess.Popen(argv, cwd=rb.workdir, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    server: set[int] | None = None
    try:
        deadline = time.monotonic() + 60
        while server is None and proc.poll() is None and time.monotonic() < deadline:
            server = _server_cpus(rb)
            time.sleep(0.1)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, stderr
    seen = reported(stderr)
    assert len(seen["step"]) == 1 and seen["step"] <= cpus, stderr
    assert seen["later"] == seen["step"], "a sleeping step was widened"
    assert server == seen["step"], f"FUSE server on {server}, step on {seen['step']}"
    assert_nothing_left(rb, [])


def _server_cpus(rb: Harness) -> set[int] | None:
    """The CPUs of this test's FUSE server process, once it runs."""
    out = subprocess.run(["ps", "-ww", "-o", "pid=,args=", "-u", str(rb.user.uid)],
                         capture_output=True, text=True).stdout
    for line in out.splitlines():
        pid, _, args = line.strip().partition(" ")
        if "rootbuild.fuse_overlay.server" in args and str(rb.workdir) in args:
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                return None
            match = re.search(r"^Cpus_allowed_list:\s+(\S+)$", status, re.M)
            return cpu_list(match.group(1)) if match else None
    return None


def test_a_step_that_wants_two_cpus_gets_them(rb: Harness) -> None:
    cpus = allowed()
    ctx = busybox_context(rb, "widen", (
        "FROM scratch\nCOPY rootfs/ /\n"
        f"RUN {show('start')}; sh -c 'while :; do :; done' & a=$!; "
        "sh -c 'while :; do :; done' & b=$!; "
        f"sleep 2; {show('after')}; kill $a $b\n"
    ))
    seen = reported(build(rb, ctx).stderr)
    assert len(seen["start"]) == 1
    assert seen["after"] == cpus


def test_placement_can_be_switched_off(rb: Harness) -> None:
    cpus = allowed()
    ctx = busybox_context(rb, "off", f"FROM scratch\nCOPY rootfs/ /\nRUN {show('step')}\n")
    seen = reported(build(rb, ctx, env={"ROOTBUILD_CPU_PLACEMENT": "off"}).stderr)
    assert seen["step"] == cpus


def test_steps_running_at_once_start_on_different_cpus(rb: Harness) -> None:
    allowed()
    stage = "FROM scratch AS {0}\nCOPY rootfs/ /\nRUN {1} && sleep 3 && echo {0} > /{0}\n"
    ctx = busybox_context(rb, "two-stages", (
        stage.format("a", show("a"))
        + stage.format("b", show("b"))
        + "FROM scratch\nCOPY --from=a /a /a\nCOPY --from=b /b /b\n"
    ))
    seen = reported(build(rb, ctx, "--jobs", "2").stderr)
    assert len(seen["a"]) == 1 and len(seen["b"]) == 1
    assert seen["a"] != seen["b"]
