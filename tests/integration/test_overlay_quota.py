"""The disk budget of every registered snapshotter, on real mounts (``quota_driver.py``).

Like the overlay conformance suite (test_overlay.py), this runs once per entry of
``rootbuild.snapshot.SNAPSHOTTERS`` as the unprivileged build user inside a new user and
mount namespace, mounting only through the ``Snapshotter`` Protocol: two writable overlays
(a step's root and a cache mount) share one budget; statfs reports it; writes, copy-ups,
truncates, mkdir, symlink, xattrs and creates past it fail with ENOSPC, freed space comes
back, and the layer holds nothing of a refused write. ENOSPC is what a full disk answers
(write(2): "ENOSPC The device containing the file referred to by fd has no room for the
data"), so it is what a build tool in a RUN step already handles.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from rootbuild.snapshot import SNAPSHOTTERS

if TYPE_CHECKING:
    from conftest import Harness

pytestmark = pytest.mark.integration

HERE = Path(__file__).resolve().parent
DRIVER_FILES = ("quota_driver.py", "overlay_driver.py", "fstest.py")


@pytest.mark.parametrize("snapshotter", [
    pytest.param(name, marks=[pytest.mark.xfail(
        reason="the kernel overlay refuses a disk budget: its upper is not charged yet "
               "(a size-limited upper or project quota is the next step)", strict=True)]
                 if name == "overlay" else [])
    for name in SNAPSHOTTERS
])
def test_disk_budget_conformance(rb: Harness, snapshotter: str) -> None:
    ctx = rb.make_context("driver", {n: (HERE / n).read_text() for n in DRIVER_FILES})
    proc = rb.as_user(
        ["unshare", "--map-auto", "--map-root-user", "--mount", "--fork",
         sys.executable, str(ctx / "quota_driver.py"), str(rb.workdir / "run"), snapshotter],
        check=False,
    )
    start = proc.stdout.find("{")
    report = json.loads(proc.stdout[start:]) if start >= 0 else {}
    explain = f"exit {proc.returncode}\n{proc.stdout[-6000:]}\n{proc.stderr[-3000:]}"
    assert proc.returncode == 0 and report.get("ok") is True, explain
    assert report["notes"]["files_made"] > 0
