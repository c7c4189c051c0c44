"""`rootbuild doctor` on this machine and in the two simulated container environments:
a masked /proc (mount_too_revealing) and a seccomp filter that denies unshare."""

from __future__ import annotations

import subprocess

import pytest
from conftest import ROOTBUILD, Harness, require_tool

pytestmark = pytest.mark.integration

# As root: a private mount namespace whose /proc has a read-only sub-mount, as Docker's
# and Kubernetes' default masking does; then the builder runs as the unprivileged user.
MASKED_PROC = [
    "unshare", "--mount", "--propagation", "private", "sh", "-c",
    'mount --bind -o ro /proc/sys /proc/sys && exec "$@"', "sh",
]

# As root: load a seccomp filter denying unshare (Debian's python3-seccomp), then exec the
# builder as the unprivileged user; the filter is inherited.
DENY_UNSHARE = r"""
import errno, os, sys, seccomp
f = seccomp.SyscallFilter(defaction=seccomp.ALLOW)
f.add_rule(seccomp.ERRNO(errno.EPERM), "unshare")
f.load()
os.execvp(sys.argv[1], sys.argv[1:])
"""


def _doctor(rb: Harness, prefix: list[str]) -> subprocess.CompletedProcess[str]:
    argv = [*prefix, *rb.command([str(ROOTBUILD), "doctor"])]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120)


def test_doctor_passes_on_this_machine(rb: Harness) -> None:
    proc = rb.run("doctor", store=False, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    for name in ("kernel", "user namespaces", "mounts", "fresh /proc", "/dev/fuse",
                 "id mapping", "network isolation"):
        assert any(line.startswith(f"ok   {name}:") for line in lines), (name, lines)
    assert lines[-1] == "RUN steps can work here."


def test_doctor_explains_a_masked_proc(rb: Harness) -> None:
    require_tool("unshare")
    proc = _doctor(rb, MASKED_PROC)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    fail = [line for line in proc.stdout.splitlines() if line.startswith("FAIL")]
    assert len(fail) == 1, proc.stdout
    assert fail[0].startswith("FAIL fresh /proc: mounting a new procfs was refused")
    assert "mount_too_revealing" in fail[0]
    assert "--security-opt systempaths=unconfined" in fail[0]
    assert "procMount: Unmasked" in fail[0]
    assert "--proc=host-bind" in fail[0]


def test_doctor_explains_a_seccomp_filter_denying_unshare(rb: Harness) -> None:
    python = "/usr/bin/python3"
    check = subprocess.run([python, "-c", "import seccomp"], capture_output=True)
    if check.returncode != 0:
        pytest.fail("integration prerequisite missing: python3-seccomp (scripts/setup-debian.sh)")
    proc = _doctor(rb, [python, "-c", DENY_UNSHARE])
    assert proc.returncode == 1, proc.stdout + proc.stderr
    fail = [line for line in proc.stdout.splitlines() if line.startswith("FAIL")]
    assert len(fail) == 1, proc.stdout
    assert fail[0].startswith("FAIL user namespaces: unshare(CLONE_NEWUSER) refused")
    assert "Operation not permitted" in fail[0]
    assert "seccomp" in fail[0]
