"""``--disk-limit`` / ``--inode-limit`` through the real `rootbuild` executable, as the
unprivileged build user, on a busybox base.

The limit is the build's: each RUN step gets what the earlier steps' layers left, and the
step's writable overlays (its root and its cache mounts) share that; the FUSE overlay
answers ENOSPC beyond it, as a full disk does.
The step then fails with one line naming the limit and the step, whatever its exit status,
the store is left as it was and no process or mount remains. statfs (busybox ``df``) shows
the limit as the filesystem's size. ``--untrusted`` gets a default limit.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from conftest import Harness
from test_build_run import Image, assert_nothing_left, build, build_to_layout, busybox_context

pytestmark = pytest.mark.integration

BASE = "FROM scratch\nCOPY rootfs/ /\n"
TOOLS = {f"rootfs/bin/{a}": "symlink:busybox" for a in ("dd", "df", "seq", "head", "tail")}
MiB = 1 << 20


def context(rb: Harness, name: str, run: str) -> Path:
    return busybox_context(rb, name, BASE + run, TOOLS)


def prime(rb: Harness) -> None:
    """Build the base first: its COPY layer is then taken from the cache (not new data),
    so the RUN step gets the whole limit (COPY/ADD layers the build makes count too)."""
    build(rb, busybox_context(rb, "primed-base", BASE, TOOLS))


def fails_with(rb: Harness, ctx: Path, pattern: str, *args: str, marker: str,
               new_cache: bool = False) -> str:
    """The build fails with exactly one error line matching ``pattern``; the store is as
    it was (its base step built first; ``new_cache``: but for the empty cache mount the
    step created, which keeps none of the step's writes); nothing is left behind."""
    base = busybox_context(rb, ctx.name + "-base", BASE, TOOLS)
    build(rb, base)  # the COPY step is in the store: the failing build adds nothing to it
    before = rb.store_snapshot()
    proc = build(rb, ctx, *args, check=False)
    assert proc.returncode == 1, proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("rootbuild: ")]
    assert len(errors) == 1, proc.stderr
    assert re.fullmatch(pattern, errors[0]), errors[0]
    assert "Traceback" not in proc.stderr
    assert_nothing_left(rb, [marker])
    after = rb.store_snapshot()
    changed = {k for k in before.keys() | after.keys()
               if before.get(k) != after.get(k) and not k.startswith("tmp")}
    if new_cache:
        kept = {k: after[k] for k in changed if k.startswith("cache-mounts/")
                and "/tree/" in k}
        assert kept == {}, kept  # the cache mount's tree is empty: the writes were dropped
        changed = {k for k in changed if not k.startswith("cache-mounts")}
    assert changed == set(), sorted(changed)
    return errors[0]


def test_a_step_writing_past_the_limit_fails_naming_the_limit(rb: Harness) -> None:
    run = "RUN dd if=/dev/zero of=/big bs=1M count=60\n"
    fails_with(rb, context(rb, "over", run),
               r'rootbuild: Dockerfile:3: RUN: disk limit 30MB exceeded: process '
               r'"/bin/sh -c dd if=/dev/zero of=/big bs=1M count=60" \(exit code \d+\)',
               "--disk-limit", "30MB", marker="of=/big")


def test_the_step_fails_even_when_its_command_ignores_enospc(rb: Harness) -> None:
    """A refused write may be the kernel's write-back of data the command believes
    written: its layer would silently lack it, so the step fails whatever its status."""
    run = "RUN dd if=/dev/zero of=/big bs=1M count=60 || true\n"
    fails_with(rb, context(rb, "ignored", run),
               r'rootbuild: Dockerfile:3: RUN: disk limit 30MB exceeded: process '
               r'"/bin/sh -c dd .* \|\| true" \(exit code 0\)',
               "--disk-limit", "30MB", marker="of=/big")


def test_under_the_limit_the_step_works_and_df_shows_the_limit(rb: Harness) -> None:
    ctx = context(rb, "under", (
        "RUN dd if=/dev/zero of=/f bs=1M count=10 && df -k / | tail -n 1 > /df\n"
    ))
    prime(rb)
    layout, _ = build_to_layout(rb, ctx, "--disk-limit", "30MB")
    image = Image(rb, layout)
    assert len(image.file("f")) == 10 * MiB
    fields = image.text("df").split()
    assert int(fields[1]) == 30 * 1024, fields  # 1K-blocks: the limit
    assert 30 * 1024 - 10 * 1024 - 1024 <= int(fields[3]) <= 20 * 1024, fields  # available


def test_untrusted_builds_get_the_default_limit(rb: Harness) -> None:
    ctx = context(rb, "untrusted", "RUN df -k / | tail -n 1 > /df && df -i / | tail -n 1 > /di\n")
    prime(rb)
    layout, _ = build_to_layout(rb, ctx, "--untrusted")
    image = Image(rb, layout)
    disk = os.statvfs(rb.store)  # a smaller disk than the limit is what df shows
    assert int(image.text("df").split()[1]) == min(10 << 20, disk.f_blocks * disk.f_frsize
                                                   // 1024)  # 10GB
    assert int(image.text("di").split()[1]) == min(1_000_000, disk.f_files or 1_000_000)


def test_unlink_gives_the_space_back_within_the_step(rb: Harness) -> None:
    ctx = context(rb, "unlink", (
        "RUN dd if=/dev/zero of=/a bs=1M count=20 && rm /a && "
        "dd if=/dev/zero of=/b bs=1M count=20 && rm /b && "
        "dd if=/dev/zero of=/c bs=1M count=20\n"
    ))
    layout, _ = build_to_layout(rb, ctx, "--disk-limit", "30MB")
    assert len(Image(rb, layout).file("c")) == 20 * MiB


def test_the_limit_is_the_builds_an_earlier_layer_counts(rb: Harness) -> None:
    """20 MiB in the layer of one step and 20 MiB in the next: more than 30MB."""
    run = ("RUN dd if=/dev/zero of=/a bs=1M count=20\n"
           "RUN dd if=/dev/zero of=/b bs=1M count=20\n")
    fails_with(rb, context(rb, "twosteps", run),
               r'rootbuild: Dockerfile:4: RUN: disk limit 30MB exceeded: process '
               r'"/bin/sh -c dd if=/dev/zero of=/b bs=1M count=20" \(exit code \d+\)',
               "--disk-limit", "30MB", marker="of=/b")


def test_a_cache_mount_write_counts_against_the_limit(rb: Harness) -> None:
    """The step's root and its cache mount share the one limit: 20 MiB in each of them
    is more than 30MB."""
    run = ("RUN --mount=type=cache,target=/cache dd if=/dev/zero of=/cache/x bs=1M count=20 "
           "&& dd if=/dev/zero of=/y bs=1M count=20\n")
    fails_with(rb, context(rb, "cache", run),
               r'rootbuild: Dockerfile:3: RUN: disk limit 30MB exceeded: process .*',
               "--disk-limit", "30MB", marker="of=/cache/x", new_cache=True)


def test_creating_files_past_the_inode_limit_fails_naming_it(rb: Harness) -> None:
    run = "RUN for i in $(seq 200); do echo > /f$i || exit 1; done\n"
    fails_with(rb, context(rb, "inodes", run),
               r'rootbuild: Dockerfile:3: RUN: inode limit 100 exceeded: process .*',
               "--inode-limit", "100", marker="seq 200")


@pytest.mark.parametrize(("flag", "value"), [("--disk-limit", "0"), ("--disk-limit", "lots"),
                                             ("--inode-limit", "-3")])
def test_bad_limits_are_usage_errors(rb: Harness, flag: str, value: str) -> None:
    ctx = context(rb, "bad", "RUN true\n")
    proc = build(rb, ctx, flag, value, check=False)
    assert proc.returncode == 2, proc.stderr
    assert re.search(rf"invalid {flag} '{re.escape(value)}'", proc.stderr), proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_tmpfs_mount_is_capped_by_the_limit(rb: Harness) -> None:
    """A tmpfs without a size (the kernel's default: half the RAM) gets the limit's."""
    ctx = context(rb, "tmpfs", (
        "RUN --mount=type=tmpfs,target=/t df -k /t | tail -n 1 > /df\n"
    ))
    prime(rb)
    layout, _ = build_to_layout(rb, ctx, "--disk-limit", "30MB")
    assert int(Image(rb, layout).text("df").split()[1]) == 30 * 1024
