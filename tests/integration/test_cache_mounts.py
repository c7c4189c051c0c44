"""``RUN --mount=type=cache`` through the real `rootbuild` executable, as the unprivileged
build user: persistence in the store across builds, never in a layer nor in the step cache
key, virtual ownership (a step writing as uid 1000 leaves the store owned by the user),
``sharing=locked|private``, ``from``/``source`` seeding, ``mode``/``uid``/``gid``, ``ro``,
listing (``images --all``) and ``prune``; then the cache mounts' round trip through
``--cache-to``/``--cache-from`` (the ★ of issue 12).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import Harness
from test_build_cache import cached, ran
from test_build_run import Image, assert_nothing_left, build_to_layout, busybox_context

pytestmark = pytest.mark.integration

BASE = "FROM scratch\nCOPY rootfs/ /\n"


def seen(rb: Harness, ctx: Path, *args: str) -> tuple[Image, str]:
    layout, proc = build_to_layout(rb, ctx, *args)
    return Image(rb, layout), proc.stderr


def store_owners(rb: Harness) -> set[tuple[int, int]]:
    owners = set()
    for root, dirs, files in os.walk(rb.store):
        for name in [*dirs, *files]:
            st = os.lstat(os.path.join(root, name))
            owners.add((st.st_uid, st.st_gid))
    return owners


def layer_paths(image: Image) -> set[str]:
    return {path for layer in image.layers for path in layer}


def test_contents_persist_across_builds_outside_layers_and_keys(rb: Harness) -> None:
    """Docker's reference, RUN --mount=type=cache: "This mount type allows the build
    container to cache directories for compilers and package managers." and "Contents of
    the cache directories persists between builder invocations without invalidating the
    instruction cache." (https://docs.docker.com/reference/dockerfile/#run---mounttypecache)
    """
    ctx = busybox_context(rb, "persist", BASE + (
        "ARG N\n"
        "RUN --mount=type=cache,target=/var/cache/app "
        "echo run-$N >> /var/cache/app/log && mkdir -p /var/cache/app/sub && "
        "echo data > /var/cache/app/sub/f && cp /var/cache/app/log /seen\n"
    ))
    first, _ = seen(rb, ctx, "--build-arg", "N=1")
    assert first.text("seen") == "run-1\n"
    second, _ = seen(rb, ctx, "--build-arg", "N=2")
    assert second.text("seen") == "run-1\nrun-2\n"
    for image in (first, second):
        paths = layer_paths(image)
        assert not any(p.startswith("var/cache") for p in paths), paths
    # the contents are not in the key: the same step again is CACHED and does not run
    third, stderr = seen(rb, ctx, "--build-arg", "N=2")
    assert any("RUN --mount=type=cache" in t for t in cached(stderr)), stderr
    assert third.text("seen") == "run-1\nrun-2\n"
    fourth, stderr = seen(rb, ctx, "--build-arg", "N=4")
    assert any("RUN --mount=type=cache" in t for t in ran(stderr)), stderr
    assert fourth.text("seen") == "run-1\nrun-2\nrun-4\n"
    assert_nothing_left(rb, [])


def test_files_written_as_uid_1000_keep_the_store_owned_by_the_user(rb: Harness) -> None:
    """Ownership is virtual: inside, the step sees the owners it set; on disk every file of
    the store belongs to the build user (no subordinate id ever owns one)."""
    ctx = busybox_context(rb, "owners", BASE + (
        "RUN mkdir -m 1777 /tmp\n"
        "ARG N\n"
        "USER app\n"
        "RUN --mount=type=cache,target=/home/app/.cache,uid=1000,gid=1000 "
        "echo $N > /home/app/.cache/by-app && mkdir -p /home/app/.cache/d && "
        "touch /home/app/.cache/d/x && "
        "stat -c '%u:%g %a' /home/app/.cache /home/app/.cache/d/x > /tmp/owners\n"
        "USER root\n"
        "RUN --mount=type=cache,target=/c,id=/home/app/.cache "
        "stat -c '%u:%g' /c/by-app /c/d/x > /root-view && cat /c/by-app >> /root-view\n"
    ))
    image, _ = seen(rb, ctx, "--build-arg", "N=1")
    assert image.text("tmp/owners") == "1000:1000 755\n1000:1000 644\n"
    assert image.text("root-view") == "1000:1000\n1000:1000\n1\n"
    assert store_owners(rb) == {(rb.user.uid, rb.user.gid)}
    # a later build sees the same virtual owners
    again, _ = seen(rb, ctx, "--build-arg", "N=2")
    assert again.text("root-view") == "1000:1000\n1000:1000\n2\n"
    assert store_owners(rb) == {(rb.user.uid, rb.user.gid)}
