"""FUSE request statistics for benchmarks (``ROOTBUILD_FUSE_STATS``, fuse_overlay/stats.py,
bench/fuse_requests.py): set in the builder's environment, they reach every RUN step's
overlay server (through the zygote's and the init's minimal environments and the server
spec); unset, no server writes any."""

from __future__ import annotations

import json
import os

from conftest import Harness
from test_build_run import build, busybox_context

DOCKERFILE = (
    "FROM scratch\nCOPY rootfs/ /\nENV PATH=/bin\n"
    "RUN mkdir /d && echo a > /d/a && echo b > /d/b && ln -s a /d/c && rm /d/b\n"
)


def test_statistics_reach_the_servers_of_run_steps(rb: Harness) -> None:
    ctx = busybox_context(rb, "stats", DOCKERFILE)
    stats = rb.workdir / "fuse-statistics"
    stats.mkdir()
    os.chown(stats, rb.user.uid, rb.user.gid)
    build(rb, ctx, env={"ROOTBUILD_FUSE_STATS": str(stats)})
    records = [json.loads(p.read_text()) for p in sorted(stats.glob("fuse-stats-*.json"))]
    writable = [r for r in records if not r["readonly"]]
    assert len(writable) == 1, records  # one RUN step, one writable overlay
    counts = writable[0]["counts"]
    # what the step did, as requests: two files created and written, a directory, a
    # symlink, an unlink (at least: the sandbox adds its own mountpoints)
    assert counts["create"] >= 2 and counts["write"] >= 2
    assert counts["mkdir"] >= 1 and counts["symlink"] == 1 and counts["unlink"] >= 1
    assert set(writable[0]["ns"]) == set(counts)
    assert writable[0]["phases"]["session"] > 0 and writable[0]["phases"]["finalize"] > 0


def test_no_statistics_unless_asked_for(rb: Harness) -> None:
    ctx = busybox_context(rb, "nostats", DOCKERFILE)
    build(rb, ctx)
    assert not list(rb.workdir.rglob("fuse-stats-*.json"))
