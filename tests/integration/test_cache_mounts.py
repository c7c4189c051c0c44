"""``RUN --mount=type=cache`` through the real `rootbuild` executable, as the unprivileged
build user: persistence in the store across builds, never in a layer nor in the step cache
key, virtual ownership (a step writing as uid 1000 leaves the store owned by the user),
``sharing=locked|private``, ``from``/``source`` seeding, ``mode``/``uid``/``gid``, ``ro``,
listing (``images --all``) and ``prune``; then the cache mounts' round trip through
``--cache-to``/``--cache-from`` (the ★ of issue 12).
"""

from __future__ import annotations

import http.server
import json
import os
import random
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOTBUILD, Harness
from registry_fixtures import (  # noqa: F401 (pytest fixtures)
    Registry,
    registry_base_fixture,
    registry_fixture,
)
from test_build_cache import cached, ran
from test_build_run import (
    Image,
    assert_nothing_left,
    build,
    build_to_layout,
    busybox_context,
)

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
    """Docker's reference, RUN --mount=type=cache: "Contents of the cache directories
    persists between builder invocations without invalidating the instruction cache."
    (https://docs.docker.com/reference/dockerfile/#run---mounttypecache)"""
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


def test_a_failed_step_keeps_its_writes_and_a_killed_one_none(rb: Harness) -> None:
    """What a failed step wrote to a cache mount is kept (rootbuild's rule, as BuildKit
    keeps a failed exec's cache writes); a step killed by ``--timeout`` keeps nothing:
    the sandbox leaves a mount's changes only when its step exited by itself."""
    mount = "RUN --mount=type=cache,target=/c,id=fates "
    failed = busybox_context(rb, "fails", BASE + mount + "echo f > /c/failed; exit 3\n")
    proc = build(rb, failed, check=False)
    assert proc.returncode != 0 and "exit code: 3" in proc.stderr, proc.stderr
    killed = busybox_context(rb, "killed", BASE + mount + "echo k > /c/killed; sleep 60\n")
    proc = build(rb, killed, "--timeout", "3", check=False)
    assert proc.returncode != 0 and "timed out" in proc.stderr, proc.stderr
    seen_ctx = busybox_context(rb, "fates", BASE + mount + "ls /c > /seen\n")
    image, _ = seen(rb, seen_ctx)
    assert image.text("seen") == "failed\n"
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


def _stamps(text: str) -> tuple[float, float]:
    start, end = (float(line.split()[0]) for line in text.splitlines())
    return start, end


def _two_stages(sharing: str, body: str) -> str:
    stage = (
        "FROM base AS {name}\n"
        f"RUN --mount=type=cache,target=/c,id=together,sharing={sharing} "
        f"cut -d' ' -f1 /proc/uptime > /t && {body} && cut -d' ' -f1 /proc/uptime >> /t\n"
    )
    return (
        "FROM scratch AS base\nCOPY rootfs/ /\n"
        + stage.format(name="one") + stage.format(name="two")
        + "FROM base\nCOPY --from=one /t /one\nCOPY --from=two /t /two\n"
        + "COPY --from=one /l /one-list\nCOPY --from=two /l /two-list\n"
    )


def test_sharing_locked_waits_and_shared_does_not(rb: Harness) -> None:
    """Docker's reference: "A `shared` cache mount can be used concurrently by multiple
    writers." and "`locked` pauses the second writer until the first one releases the
    mount." (https://docs.docker.com/reference/dockerfile/#run---mounttypecache)"""
    body = "ls /c > /l && touch /c/$(cat /proc/sys/kernel/random/uuid) && sleep 2"
    spans = {}
    for sharing in ("shared", "locked"):
        ctx = busybox_context(rb, f"sharing-{sharing}", _two_stages(sharing, body))
        image, _ = seen(rb, ctx, "--jobs", "2")
        spans[sharing] = sorted([_stamps(image.text("one")), _stamps(image.text("two"))])
    (_a_start, a_end), (b_start, _b_end) = spans["shared"]
    assert b_start < a_end, f"shared steps did not overlap: {spans}"  # they ran at once
    (_a_start, a_end), (b_start, _b_end) = spans["locked"]
    assert b_start >= a_end, f"locked steps overlapped: {spans}"


def test_sharing_private_gives_a_concurrent_step_its_own_instance(rb: Harness) -> None:
    """Docker's reference: "`private` creates a new mount if there are multiple writers."
    (https://docs.docker.com/reference/dockerfile/#run---mounttypecache)"""
    fill = busybox_context(rb, "private-fill", BASE + (
        "RUN --mount=type=cache,target=/c,id=together,sharing=private touch /c/seed\n"
    ))
    build(rb, fill)
    ctx = busybox_context(rb, "private", _two_stages("private", "ls /c > /l && sleep 2"))
    image, _ = seen(rb, ctx, "--jobs", "2")
    (_a_start, a_end), (b_start, _b_end) = sorted(
        [_stamps(image.text("one")), _stamps(image.text("two"))]
    )
    assert b_start < a_end, "the two private steps did not run at once"
    assert sorted([image.text("one-list"), image.text("two-list")]) == ["", "seed\n"]
    listing = rb.run("images", "--all").stdout
    assert re.search(r"^together +\S+ +\S+ +2$", listing, re.M), listing


def test_from_and_source_seed_a_new_cache(rb: Harness) -> None:
    """Docker's reference: (from) "Build stage, context, or image name to use as a base of
    the cache mount. Defaults to empty directory." and (source) "Subpath in the `from` to
    mount. Defaults to the root of the `from`."
    (https://docs.docker.com/reference/dockerfile/#run---mounttypecache)"""
    ctx = busybox_context(rb, "seed", (
        "FROM scratch AS seed\nCOPY rootfs/ /\n"
        "RUN mkdir -p /opt/seed/sub && echo hello > /opt/seed/sub/f && "
        "chown 1000:1000 /opt/seed/sub/f\n"
        + BASE +
        "RUN --mount=type=cache,target=/c,from=seed,source=/opt/seed "
        "cat /c/sub/f > /got && stat -c %u /c/sub/f >> /got && echo more > /c/more\n"
        "RUN --mount=type=cache,target=/c,from=seed,source=/opt/seed ls /c > /list\n"
    ))
    image, _ = seen(rb, ctx)
    assert image.text("got") == "hello\n1000\n"
    assert image.text("list") == "more\nsub\n"  # seeded once, then it is a cache
    assert not any(p.startswith("c/") for p in layer_paths(image))


def test_mode_uid_gid_and_ro(rb: Harness) -> None:
    """Docker's reference: (mode) "File mode for new cache directory in octal. Default
    `0755`.", "User ID for new cache directory. Default `0`.", "Group ID for new cache
    directory. Default `0`." and (ro, readonly) "Read-only if set."
    (https://docs.docker.com/reference/dockerfile/#run---mounttypecache)"""
    ctx = busybox_context(rb, "modes", BASE + (
        "RUN --mount=type=cache,target=/m,mode=0700,uid=123,gid=456 "
        "stat -c '%a %u %g' /m > /mstat && echo kept > /m/prev\n"
        "RUN --mount=type=cache,target=/d stat -c '%a %u %g' /d > /dstat\n"
        "RUN --mount=type=cache,target=/x,id=/m,ro "
        "sh -c 'cat /x/prev; if touch /x/new 2>/dev/null; then echo wrote; "
        "else echo refused; fi' > /ro\n"
        "RUN --mount=type=cache,target=/y,id=/m ls /y > /after\n"
    ))
    image, _ = seen(rb, ctx)
    assert image.text("mstat") == "700 123 456\n"
    assert image.text("dstat") == "755 0 0\n"
    assert image.text("ro") == "kept\nrefused\n"
    assert image.text("after") == "prev\n"


def test_listed_by_images_all_and_removed_by_prune(rb: Harness) -> None:
    """Cache mounts are cache records: ``images --all`` lists them with their size (as
    ``docker buildx du``), ``prune`` removes them, ``--keep-storage`` the least recently
    used first (``docker builder prune --keep-storage``)."""
    big = busybox_context(rb, "big", BASE + (
        "RUN --mount=type=cache,target=/c,id=big-one "
        "dd if=/dev/zero of=/c/blob bs=1024 count=3072 2>/dev/null\n"
    ), extra={"rootfs/bin/dd": "symlink:busybox"})
    small = busybox_context(rb, "small", BASE + (
        "RUN --mount=type=cache,target=/c,id=small-one echo hi > /c/f\n"
    ))
    build(rb, big)
    build(rb, small)
    listing = rb.run("images", "--all").stdout
    assert re.search(r"^big-one +3\.0MiB ", listing, re.M), listing
    assert re.search(r"^small-one +3B ", listing, re.M), listing
    out = rb.run("prune", "--keep-storage", "1MB").stdout
    assert "removed 1 cache mounts, kept 1" in out, out
    listing = rb.run("images", "--all").stdout
    assert not re.search(r"^big-one ", listing, re.M), listing
    assert re.search(r"^small-one ", listing, re.M), listing
    out = rb.run("prune").stdout
    assert "removed 1 cache mounts, kept 0" in out, out
    assert "CACHE MOUNTS: 0," in rb.run("images", "--all").stdout
    assert not any((rb.store / "cache-mounts").iterdir())


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("RUN --mount=type=cache,target=/c,sharing=sometimes true",
         r'^rootbuild: Dockerfile:4: unsupported sharing value "sometimes"'),
        ("RUN --mount=type=cache,target=/c,colour=red true",
         r"^rootbuild: Dockerfile:4: unexpected key 'colour' in 'colour=red'"),
        ("RUN --mount=type=cache,id=x true",
         r"^rootbuild: Dockerfile:4: RUN --mount=type=cache: a target is required$"),
        ("RUN --mount=type=cache,target=/ true",
         r'^rootbuild: Dockerfile:4: RUN --mount=type=cache,target=/: invalid mount target "/"$'),
        ("RUN --mount=type=cache,target=/c,from=base,source=/nowhere true",
         r'^rootbuild: Dockerfile:4: RUN --mount=type=cache,from=base: source "/nowhere" '
         r"not found$"),
        ("RUN --mount=type=cache,target=/c,from=base,source=/bin/busybox true",
         r'^rootbuild: Dockerfile:4: RUN --mount=type=cache,from=base: source '
         r'"/bin/busybox" is not a directory$'),
    ],
)
def test_bad_cache_mounts_fail_on_their_line_and_change_nothing(
    rb: Harness, line: str, message: str
) -> None:
    head = "FROM scratch AS base\nCOPY rootfs/ /\nFROM base\n"
    build(rb, busybox_context(rb, "warm", head))  # the store exists, the COPY is cached
    ctx = busybox_context(rb, "bad", head + line + "\n")
    before = rb.store_snapshot()
    proc = build(rb, ctx, check=False)
    assert proc.returncode != 0
    errors = [x for x in proc.stderr.splitlines() if x.startswith("rootbuild:")]
    assert len(errors) == 1 and re.match(message, errors[0]), proc.stderr
    assert "Traceback" not in proc.stderr
    after = rb.store_snapshot()
    assert {k: v for k, v in after.items() if not k.startswith("tmp")} \
        == {k: v for k, v in before.items() if not k.startswith("tmp")}


# -- ★ cache mounts through --cache-to / --cache-from -----------------------------------------

FETCH_PKGS = """#!/bin/sh
# a package manager's download step: each package comes from the cache directory when it
# is there, else it is downloaded from the index into it; then it is "installed"
set -e
index=$1; cache=$2; shift 2
mkdir -p "$cache" /opt/pkgs
for p in "$@"; do
  if [ -f "$cache/$p" ]; then echo "cached $p"; else
    wget -q -O "$cache/$p.part" "$index/$p" && mv "$cache/$p.part" "$cache/$p"
    echo "downloaded $p"
  fi
  cp "$cache/$p" "/opt/pkgs/$p"
done
"""
PACKAGES = [f"pkg{n:02d}-1.0-py3-none-any.whl" for n in range(24)]
PKG_SIZE = 256 * 1024


#: the index answers like a remote one: latency per request, bandwidth (the README's numbers)
INDEX_LATENCY = 0.05
INDEX_RATE = 16 << 20


class Index:
    """A package index on 127.0.0.1 that counts what it serves (a local pip index), with a
    remote index's latency and bandwidth (``INDEX_LATENCY``, ``INDEX_RATE``)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.gets: list[str] = []
        self.bytes = 0
        index = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                super().__init__(*args, directory=str(root), **kwargs)

            def do_GET(self) -> None:
                index.gets.append(self.path)
                path = root / self.path.lstrip("/")
                if path.is_file():
                    index.bytes += path.stat().st_size
                time.sleep(INDEX_LATENCY)
                super().do_GET()

            def copyfile(self, source: Any, outputfile: Any) -> None:
                while chunk := source.read(64 << 10):
                    outputfile.write(chunk)
                    time.sleep(len(chunk) / INDEX_RATE)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def index(tmp_path: Path) -> Iterator[Index]:
    root = tmp_path / "index"
    root.mkdir()
    for n, name in enumerate(PACKAGES):
        (root / name).write_bytes(random.Random(n).randbytes(PKG_SIZE))
    served = Index(root)
    try:
        yield served
    finally:
        served.close()


def pip_context(rb: Harness, index: Index, name: str) -> Path:
    return busybox_context(rb, name, BASE + (
        "ARG REV\n"
        "RUN --mount=type=cache,target=/root/.cache/pkgs,id=pkgs "
        f"sh /fetch-pkgs {index.url} /root/.cache/pkgs {' '.join(PACKAGES)} && echo $REV > /rev\n"
    ), extra={"rootfs/fetch-pkgs": FETCH_PKGS, "rootfs/bin/wget": "symlink:busybox",
              "rootfs/bin/cp": "symlink:busybox"})


STEP_DONE = re.compile(r"^#(\d+) DONE ([\d.]+)s$")


def step_seconds(stderr: str, prefix: str) -> float:
    """The duration progress printed for the step whose label contains ``prefix``."""
    numbers = {m.group(1) for line in stderr.splitlines()
               if (m := re.match(r"^#(\d+) \[.*\] (.*)$", line)) and prefix in m.group(2)}
    numbers |= {m.group(1) for line in stderr.splitlines()
                if (m := re.match(r"^#(\d+) (.*)$", line)) and m.group(2).startswith(prefix)}
    for line in stderr.splitlines():
        m = STEP_DONE.match(line)
        if m and m.group(1) in numbers:
            return float(m.group(2))
    raise AssertionError(f"no DONE line for {prefix!r}:\n{stderr}")


def test_cache_mounts_travel_through_the_registry_to_a_fresh_runner(
    rb: Harness, registry: Registry, index: Index
) -> None:
    """★ The second "machine" (a new store) shares only the registry with the first; its
    package step runs again (a changed build arg) and finds every download in the cache
    mount restored from --cache-from: the index serves it nothing. BuildKit cannot do this
    (moby/buildkit#1474). buildx's reference: "Export build cache to an external cache
    destination." (https://docs.docker.com/reference/cli/docker/buildx/build/#cache-to)"""
    ctx = pip_context(rb, index, "pip")
    ref = registry.ref("ci/app:buildcache")
    runner1, runner2 = rb.workdir / "runner1", rb.workdir / "runner2"

    one = rb.run("build", "--root", str(runner1), "--progress=plain", "--build-arg", "REV=1",
                 "--cache-to", f"type=registry,ref={ref},mode=max", str(ctx),
                 store=False).stderr
    assert one.count("downloaded pkg") == len(PACKAGES), one
    assert len(index.gets) == len(PACKAGES)
    first_bytes, first_seconds = index.bytes, step_seconds(one, "RUN --mount=type=cache")
    assert "exported 1 cache mounts: pkgs" in one, one
    manifest = json.loads(registry.get("/v2/ci/app/manifests/buildcache",
                                       "application/vnd.oci.image.manifest.v1+json")[1])
    [blob] = [layer for layer in manifest["layers"]
              if layer.get("annotations", {}).get("dev.rootbuild.cache.mount.id") == "pkgs"]
    assert blob["mediaType"] == "application/vnd.oci.image.layer.v1.tar+zstd"

    time.sleep(0.3)
    log_before = len(registry.log_text())
    two = rb.run("build", "--root", str(runner2), "--progress=plain", "--build-arg", "REV=2",
                 "--cache-from", ref, "--cache-to", f"type=registry,ref={ref},mode=max",
                 "--output", f"oci:{rb.workdir / 'two.oci'}:v1", str(ctx), store=False).stderr
    assert "cache mount pkgs: restored from the imported cache" in two, two
    assert any("RUN --mount=type=cache" in t for t in ran(two)), two
    assert two.count("cached pkg") == len(PACKAGES), two
    assert "downloaded" not in two
    assert len(index.gets) == len(PACKAGES), index.gets  # nothing more was downloaded
    image = Image(rb, rb.workdir / "two.oci")
    for n, name in enumerate(PACKAGES):
        assert image.file(f"opt/pkgs/{name}") == random.Random(n).randbytes(PKG_SIZE)
    assert not any(p.startswith("root/.cache") for p in layer_paths(image))
    # the unchanged cache mount is the same blob: the second export did not upload it
    time.sleep(0.3)
    log = registry.log_text()[log_before:]
    uploads = re.findall(r'"PUT /v2/ci/app/blobs/uploads/[^"]*digest=(sha256:[0-9a-f]{64})',
                         log)
    assert blob["digest"] not in uploads, log
    assert f'"HEAD /v2/ci/app/blobs/{blob["digest"]} ' in log
    second_seconds = step_seconds(two, "RUN --mount=type=cache")
    restore_seconds = step_seconds(two, "importing cache from")
    export_first = step_seconds(one, "exporting cache to")
    export_again = step_seconds(two, "exporting cache to")
    print(f"\n[cache-mount round trip] packages: {len(PACKAGES)} x {PKG_SIZE} B; "
          f"runner 1 downloaded {first_bytes} B, step {first_seconds:.2f}s; runner 2 "
          f"downloaded {index.bytes - first_bytes} B, step {second_seconds:.2f}s "
          f"(restore inside it), cache import {restore_seconds:.2f}s; cache mount blob "
          f"{blob['size']} B zstd; export {export_first:.2f}s, again unchanged "
          f"{export_again:.2f}s")
    assert store_owners_at(runner2) == {(rb.user.uid, rb.user.gid)}


def store_owners_at(root: Path) -> set[tuple[int, int]]:
    owners = set()
    for base, dirs, files in os.walk(root):
        for name in [*dirs, *files]:
            st = os.lstat(os.path.join(base, name))
            owners.add((st.st_uid, st.st_gid))
    return owners


def test_local_cache_round_trip_opt_out_and_size_cap(rb: Harness, index: Index) -> None:
    """``type=local`` carries cache mounts too; ``cache-mounts=false`` leaves them out;
    ``cache-mounts-max-size`` skips a mount over the cap with a warning; a store whose own
    copy is newer keeps it."""
    ctx = pip_context(rb, index, "pip-local")
    runner1 = rb.workdir / "runner1"
    full, none, capped = (rb.workdir / n for n in ("cache-full", "cache-none", "cache-cap"))
    one = rb.run("build", "--root", str(runner1), "--progress=plain", "--build-arg", "REV=1",
                 "--cache-to", f"type=local,dest={full}",
                 "--cache-to", f"type=local,dest={none},cache-mounts=false",
                 "--cache-to", f"type=local,dest={capped},cache-mounts-max-size=1MB",
                 str(ctx), store=False).stderr
    assert re.search(rf"^WARNING: --cache-to {capped}: cache mount pkgs \(\d+ bytes\) not "
                     r"exported: over cache-mounts-max-size=1048576$", one, re.M), one
    downloads = len(index.gets)
    for cache_dir, restored in ((none, False), (capped, False), (full, True)):
        runner = rb.workdir / f"runner-{cache_dir.name}"
        out = rb.run("build", "--root", str(runner), "--progress=plain", "--build-arg",
                     "REV=2", "--cache-from", f"type=local,src={cache_dir}", str(ctx),
                     store=False).stderr
        assert ("cache mount pkgs: restored" in out) == restored, out
        assert out.count("cached pkg") == (len(PACKAGES) if restored else 0), out
    assert len(index.gets) == downloads + 2 * len(PACKAGES)
    # runner-cache-full used its restored copy since: the import does not replace it
    again = rb.run("build", "--root", str(rb.workdir / "runner-cache-full"), "--progress=plain",
                   "--build-arg", "REV=3", "--cache-from", f"type=local,src={full}", str(ctx),
                   store=False).stderr
    assert "cache mount pkgs: the store's copy is as new as the imported one" in again, again
    assert again.count("cached pkg") == len(PACKAGES)


def test_locked_serialises_steps_of_two_builds_running_at_once(rb: Harness) -> None:
    """The lock is the store's, not the process's: two `rootbuild build` processes on one
    store wait for each other at a ``sharing=locked`` mount (Docker's reference:
    "`locked` pauses the second writer until the first one releases the mount.",
    https://docs.docker.com/reference/dockerfile/#run---mounttypecache)."""
    procs = []
    for name in ("left", "right"):
        ctx = busybox_context(rb, f"two-{name}", BASE + (
            f"RUN --mount=type=cache,target=/c,id=across,sharing=locked "
            f"cut -d' ' -f1 /proc/uptime > /t && echo {name} >> /c/log && sleep 2 && "
            "cut -d' ' -f1 /proc/uptime >> /t\n"
        ))
        argv = [str(ROOTBUILD), "build", "--root", str(rb.store), "--progress=plain",
                "--output", f"oci:{rb.workdir / name}.oci:v1", str(ctx)]
        procs.append(subprocess.Popen(rb.command(argv), cwd=rb.workdir, text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
    spans = sorted(_stamps(Image(rb, rb.workdir / f"{n}.oci").text("t"))
                   for n in ("left", "right"))
    assert spans[1][0] >= spans[0][1], f"locked steps of two builds overlapped: {spans}"
    tree = next((rb.store / "cache-mounts").iterdir()) / "tree"
    assert sorted((tree / "log").read_text().split()) == ["left", "right"]
