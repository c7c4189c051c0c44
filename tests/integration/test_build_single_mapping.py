"""RUN for a user without an /etc/subuid range: one id mapping (root → the user), said
once, and a chown to an unmapped id fails the build naming the cause and the fix."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import Harness

pytestmark = pytest.mark.integration

BUSYBOX = Path("/bin/busybox")
TOOLS = ("sh", "id", "touch", "chown", "cat")


def _context(rb: Harness, run: str) -> Path:
    files: dict[str, str | bytes] = {"rootfs/bin/busybox": BUSYBOX.read_bytes()}
    files.update({f"rootfs/bin/{t}": "symlink:busybox" for t in TOOLS})
    files["Dockerfile"] = f"FROM scratch\nCOPY rootfs/ /\n{run}\n"
    ctx = rb.make_context("ctx", files)
    (ctx / "rootfs/bin/busybox").chmod(0o755)
    return ctx


def test_single_mapping_runs_as_root_and_warns_once(rb_nosub: Harness) -> None:
    ctx = _context(rb_nosub, "RUN id -u > /uid\nRUN id -g > /gid")
    out = rb_nosub.workdir / "out"
    proc = rb_nosub.run("build", "--progress=plain", "--output", f"dir:{out}", str(ctx))
    assert (out / "uid").read_text() == "0\n"
    assert (out / "gid").read_text() == "0\n"
    warnings = [line for line in proc.stderr.splitlines() if "maps only root" in line]
    assert len(warnings) == 1, proc.stderr
    assert "has no range in /etc/subuid" in warnings[0]
    assert "usermod --add-subuids" in warnings[0]


def test_chown_to_an_unmapped_id_is_a_clear_error(rb_nosub: Harness) -> None:
    ctx = _context(rb_nosub, "RUN touch /f && chown 33:33 /f")
    (ctx / "Dockerfile.ok").write_text("FROM scratch\nCOPY rootfs/ /\n")
    rb_nosub.run("build", "-q", "-f", str(ctx / "Dockerfile.ok"), str(ctx))
    before = rb_nosub.store_snapshot()
    proc = rb_nosub.run("build", "--progress=plain", str(ctx), check=False)
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("rootbuild:")]
    assert len(errors) == 1, proc.stderr
    assert re.match(
        r'^rootbuild: Dockerfile:3: RUN: process "/bin/sh -c touch /f && chown 33:33 /f" '
        r"did not complete successfully: exit code: 1 \(note: RUN maps only root to your "
        r"user, so chown to other ids and USER switches fail; add a range, e.g. 'usermod "
        r"--add-subuids "
        r"100000-165535 --add-subgids 100000-165535 [\w-]+'\)$",
        errors[0],
    ), errors[0]
    assert "Invalid argument" in proc.stderr  # chown's own message, streamed
    assert rb_nosub.store_snapshot() == before
