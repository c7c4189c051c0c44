"""``--snapshotter``: a whole build through the kernel overlay (``snapshot/kernel.py``)
gives the same layers, byte for byte, as through the FUSE overlay; auto stays on FUSE;
nothing of the build's subordinate ids is left in the store; what the kernel overlay
cannot do is refused with one line.

Layers are compared by their diff IDs under ``SOURCE_DATE_EPOCH`` (every mtime clamped to
it, as BuildKit's ``rewrite-timestamp``), so only content, names, owners, modes, kinds,
whiteouts and opaque markers count: the steps create, chown, setuid, hard-link, symlink,
delete lower files (whiteouts), re-create a lower directory (an opaque marker) and read
another stage through ``RUN --mount=from`` (the snapshotter's read-only ``view``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import Harness
from test_build_run import (
    assert_nothing_left,
    build,
    build_to_layout,
    busybox_context,
    error_lines,
)

pytestmark = pytest.mark.integration

EPOCH = "1700000000"
DOCKERFILE = (
    "FROM scratch AS other\n"
    "COPY rootfs/etc/passwd /from-other\n"
    "FROM scratch\n"
    "COPY rootfs/ /\n"
    "RUN mkdir -p /srv/app && echo hi > /srv/app/a && chown 1000:1000 /srv/app/a "
    "&& chmod 4755 /srv/app/a && ln /srv/app/a /srv/app/hl\n"
    "RUN rm /etc/group && echo 'x:x:7:7::/:/bin/sh' >> /etc/passwd && mkfifo /srv/fifo "
    "&& ln -s /srv/app/a /srv/link && mkdir /srv/keep && chmod 0700 /srv/keep\n"
    "RUN rm -rf /srv/app && mkdir /srv/app && echo new > /srv/app/b && touch /srv/keep/x\n"
    "RUN --mount=from=other,target=/m cat /m/from-other > /srv/copied\n"
    "RUN true\n"
)


def _diff_ids(layout: Path) -> list[str]:
    index = json.loads((layout / "index.json").read_text())
    blobs = layout / "blobs" / "sha256"
    manifest = json.loads((blobs / index["manifests"][0]["digest"][7:]).read_text())
    config = json.loads((blobs / manifest["config"]["digest"][7:]).read_text())
    return list(config["rootfs"]["diff_ids"])


def _foreign_owned(rb: Harness, root: Path) -> list[str]:
    """Paths under ``root`` not owned by the build user (a subordinate id's, say)."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            st = os.lstat(os.path.join(dirpath, name))
            if st.st_uid != rb.user.uid:
                out.append(f"{os.path.join(dirpath, name)} uid {st.st_uid}")
    return out


def test_kernel_overlay_layers_equal_the_fuse_overlays(rb: Harness) -> None:
    ctx = busybox_context(rb, "snap", DOCKERFILE)
    env = {"SOURCE_DATE_EPOCH": EPOCH}
    layout_fuse = rb.workdir / "fuse.oci"
    build(rb, ctx, "--no-cache", "--snapshotter", "fuse", "--output",
          f"oci:{layout_fuse}:v1", env=env)
    layout_kernel = rb.workdir / "kernel.oci"
    build(rb, ctx, "--no-cache", "--snapshotter", "overlay", "--output",
          f"oci:{layout_kernel}:v1", env=env)
    fuse_ids, kernel_ids = _diff_ids(layout_fuse), _diff_ids(layout_kernel)
    assert len(fuse_ids) == 5  # COPY and four RUN layers; `RUN true` adds none
    assert kernel_ids == fuse_ids
    assert_nothing_left(rb, [])
    assert _foreign_owned(rb, rb.store) == []


def test_auto_uses_fuse_and_doctor_says_why(rb: Harness) -> None:
    ctx = busybox_context(rb, "auto", "FROM scratch\nCOPY rootfs/ /\nRUN echo hi > /f\n")
    layout, _ = build_to_layout(rb, ctx)
    assert layout.exists()
    doctor = rb.run("doctor", store=False, check=False)
    lines = doctor.stdout.splitlines()
    assert "ok   snapshotter auto: picks fuse: the first usable one in preference order" \
        in lines
    overlay = next(line for line in lines if line.startswith(("ok   snapshotter overlay",
                                                              "warn snapshotter overlay")))
    assert "auto skips it: it does not pass the whole overlay conformance suite yet" in overlay


def test_kernel_overlay_refuses_a_disk_limit_in_one_line(rb: Harness) -> None:
    ctx = busybox_context(rb, "limit", "FROM scratch\nCOPY rootfs/ /\nRUN echo hi > /f\n")
    build(rb, ctx, "--snapshotter", "overlay")  # the store as a first build leaves it
    before = rb.store_snapshot()
    proc = build(rb, ctx, "--no-cache", "--snapshotter", "overlay", "--disk-limit", "10m",
                 check=False)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    lines = error_lines(proc.stderr)
    assert len(lines) == 1 and "Dockerfile:3" in lines[0], proc.stderr
    assert "a disk limit (--disk-limit, --inode-limit) is not enforced" in lines[0]
    assert "use --snapshotter fuse" in lines[0]
    assert rb.store_snapshot() == before
    assert_nothing_left(rb, [])


def test_unknown_snapshotter_is_a_usage_error(rb: Harness) -> None:
    ctx = busybox_context(rb, "bogus", "FROM scratch\nCOPY rootfs/ /\n")
    proc = build(rb, ctx, "--snapshotter", "zfs", check=False)
    assert proc.returncode == 2
    assert "invalid choice: 'zfs'" in proc.stderr and "Traceback" not in proc.stderr


def test_without_a_subuid_range_the_kernel_overlay_says_why(rb_nosub: Harness) -> None:
    doctor = rb_nosub.run("doctor", store=False, check=False)
    line = next(line for line in doctor.stdout.splitlines()
                if line.startswith("warn snapshotter overlay"))
    assert "not usable: no subordinate id range for this user in /etc/subuid" in line
    ctx = busybox_context(rb_nosub, "nosub", "FROM scratch\nCOPY rootfs/ /\nRUN true\n")
    proc = build(rb_nosub, ctx, "--snapshotter", "overlay", check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    lines = error_lines(proc.stderr)
    assert len(lines) == 1 and "use snapshotter overlay: no subordinate id range" in lines[0]


def test_a_failed_step_leaves_nothing_of_the_builds_ids(rb: Harness) -> None:
    """The upper of a failed step holds files of other owners (a subordinate id's on the
    host): they are removed inside the build's user namespace, not left to the user."""
    ctx = busybox_context(rb, "fail", (
        "FROM scratch\nCOPY rootfs/ /\n"
        "RUN mkdir -p /srv/x && touch /srv/x/y && chown -R 1000:1000 /srv/x "
        "&& chmod 0700 /srv/x && exit 3\n"
    ))
    proc = build(rb, ctx, "--snapshotter", "overlay", check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    lines = error_lines(proc.stderr)
    assert len(lines) == 1 and "exit code: 3" in lines[0], proc.stderr
    assert_nothing_left(rb, [])
    assert _foreign_owned(rb, rb.store) == []
