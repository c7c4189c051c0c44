"""Conformance of every registered snapshotter on real mounts (containerd's fstest model).

The suite runs once per entry of ``rootbuild.snapshot.SNAPSHOTTERS`` (test ids name it), so a
second implementation meets the same scenarios from its first day; the driver mounts only
through the ``Snapshotter`` Protocol (``mount`` and the read-only ``view``).

Each case runs ``overlay_driver.py SCENARIO WORKDIR SNAPSHOTTER`` as the unprivileged build
user inside a new user namespace (its subuid range mapped, so chown to other ids reaches the
overlay) and a new mount namespace. The driver applies the scenario's operations to a plain
directory and to the mounted overlay of the same lower layers, compares the trees,
round-trips the step's layer, checks the layer's whiteouts/opaque markers and minimality,
and that no mount remains. It prints a JSON report, shown here on failure.

The ``view_*`` scenarios check ``view()``: reads equal the merged tree, every change fails
with EROFS, the lowers are unchanged after.

Rules: nothing is skipped; a snapshotter whose probe fails (for FUSE: /dev/fuse), a missing
user namespace or subuid range fails the test with the cause. The driver and its helpers are
copied into the test's directory first (the checkout may be unreadable to the build user);
they import rootbuild from the venv.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from rootbuild.snapshot import SNAPSHOTTERS

if TYPE_CHECKING:
    from conftest import Harness

pytestmark = pytest.mark.integration

HERE = Path(__file__).resolve().parent
DRIVER_FILES = ("overlay_driver.py", "fstest.py")
SCENARIOS = [
    "baseline", "create_write", "mmap_shared", "delete_lower", "replace_dir", "rmdir_mkdir",
    "rename_lower_dir", "rename_over", "rename_exchange", "rename_storm", "hardlink_copyup",
    "link_counts", "chown_chmod", "mknod_fifo", "xattrs", "utimens", "untar", "cp_a", "rm_rf",
    "readdir", "statfs", "symlinks", "abs_symlink", "odd_names", "whiteout_names",
    "permissions", "copyup_big", "one_file_change_10k",
    "view_reads", "view_reads_chroot", "view_writes",
]


def _install_driver(rb: Harness) -> Path:
    ctx = rb.make_context("driver", {n: (HERE / n).read_text() for n in DRIVER_FILES})
    return ctx / "overlay_driver.py"


def _report(proc: subprocess.CompletedProcess[str]) -> dict[str, object]:
    start = proc.stdout.find("{")
    try:
        report: dict[str, object] = json.loads(proc.stdout[start:]) if start >= 0 else {}
    except json.JSONDecodeError:
        report = {}
    return report


def _explain(proc: subprocess.CompletedProcess[str], report: dict[str, object]) -> str:
    if not report:
        return f"driver exited {proc.returncode} without a report\n{proc.stdout}\n{proc.stderr}"
    lines = [f"driver exited {proc.returncode}"]
    if report.get("error"):
        lines.append(str(report["error"]))
    diffs = report.get("diffs") or []
    assert isinstance(diffs, list)
    lines += [f"  {d}" for d in diffs[:80]]
    if len(diffs) > 80:
        lines.append(f"  ... and {len(diffs) - 80} more")
    for key in ("layer", "times", "notes", "server_log_tail"):
        if report.get(key):
            lines.append(f"{key}: {json.dumps(report[key], indent=1)[:3000]}")
    if proc.stderr.strip():
        lines.append("stderr:\n" + proc.stderr[-3000:])
    return "\n".join(lines)


def test_driver_lists_every_scenario(rb: Harness) -> None:
    driver = _install_driver(rb)
    proc = rb.as_user([sys.executable, str(driver), "--list"])
    assert proc.stdout.split() == SCENARIOS


@pytest.mark.parametrize("scenario", SCENARIOS)
@pytest.mark.parametrize("snapshotter", list(SNAPSHOTTERS))
def test_overlay_conformance(rb: Harness, snapshotter: str, scenario: str) -> None:
    driver = _install_driver(rb)
    proc = rb.as_user(
        ["unshare", "--map-auto", "--map-root-user", "--mount", "--fork",
         sys.executable, str(driver), scenario, str(rb.workdir / "run"), snapshotter],
        check=False,
    )
    report = _report(proc)
    times = report.get("times")
    print(f"{snapshotter}/{scenario}: times {times}")  # finish() time is what -s / -rA shows
    if report.get("notes"):
        print(f"{snapshotter}/{scenario}: notes {report['notes']}")
    assert proc.returncode == 0 and report.get("ok") is True, _explain(proc, report)
