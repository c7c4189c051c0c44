"""The step cache through the real `rootbuild` executable, as an unprivileged user: what
invalidates a step and what must not (content vs mtime, ignored and unreferenced files,
unrelated build args, ENV, stage inputs), ``--no-cache``, ``--no-cache-filter``,
``images --all``, ``prune`` and ``--keep-storage``, and the progress lines that say CACHED.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import pytest
from conftest import Harness
from registry_fixtures import (  # noqa: F401 (pytest fixtures)
    Registry,
    registry_base_fixture,
    registry_fixture,
)
from test_build_run import busybox_context

pytestmark = pytest.mark.integration

STEP = re.compile(r"^#(\d+) \[(\S+) (\d+)/\d+\] (.*)$")


def steps(stderr: str) -> dict[str, str]:
    """Instruction text -> "CACHED" or "RUN" (it ran), from the plain progress output."""
    names: dict[str, str] = {}
    out: dict[str, str] = {}
    for line in stderr.splitlines():
        m = STEP.match(line)
        if m:
            names[m.group(1)] = f"{m.group(2)} {m.group(4)}"
            continue
        number, _, status = line.partition(" ")
        number = number.lstrip("#")
        if number in names and (status == "CACHED" or status.startswith("DONE")):
            out[names[number]] = "CACHED" if status == "CACHED" else "RUN"
    return out


def cached(stderr: str) -> set[str]:
    return {text for text, status in steps(stderr).items() if status == "CACHED"}


def ran(stderr: str) -> set[str]:
    """Layer steps that ran (metadata steps like ENV/LABEL always 'run': they are free)."""
    return {
        text for text, status in steps(stderr).items()
        if status == "RUN" and text.split(" ", 2)[1] in ("RUN", "COPY", "ADD", "WORKDIR")
    }


def manifest_layers(rb: Harness, name: str) -> list[str]:
    doc = json.loads(rb.run("inspect", name).stdout)
    return [layer["digest"] for layer in doc["Manifest"]["layers"]]


def image_id(rb: Harness, name: str) -> str:
    return str(json.loads(rb.run("inspect", name).stdout)["Id"])


def build(rb: Harness, ctx: Path, *extra: str, tag: str = "app") -> str:
    return rb.run("build", "--progress", "plain", "-t", tag, *extra, str(ctx)).stderr


# A value no two runs share (busybox's date has no %N, and two builds fit in one second)
FRESH = "cat /proc/sys/kernel/random/uuid"
STAMP_RUN = f"RUN echo $USED > /used && {FRESH} > /stamp"

DOCKERFILE = (
    "FROM scratch\n"
    "COPY rootfs/ /\n"
    "ARG USED=u\n"
    f"{STAMP_RUN}\n"
    "COPY app/ /app/\n"
    "RUN cat /app/main.txt > /copy-of-main\n"
    "LABEL built=yes\n"
)


@pytest.fixture
def app(rb: Harness) -> Path:
    ctx = busybox_context(rb, "cache-app", DOCKERFILE, {
        "app/main.txt": "main v1\n",
        "app/other.txt": "other\n",
        "ignored.txt": "ignored v1\n",
        "unreferenced.txt": "not copied\n",
        ".dockerignore": "ignored.txt\napp/*.log\n",
    })
    return ctx


S = "stage-0"


def test_unchanged_rebuild_is_all_cached_and_gives_the_same_layers(
    rb: Harness, app: Path
) -> None:
    first = build(rb, app)
    assert cached(first) == set()
    layers = manifest_layers(rb, "app")
    first_id = image_id(rb, "app")
    time.sleep(1.1)
    second = build(rb, app)
    assert ran(second) == set(), second
    assert cached(second) == {
        f"{S} COPY rootfs/ /", f"{S} {STAMP_RUN}",
        f"{S} COPY app/ /app/", f"{S} RUN cat /app/main.txt > /copy-of-main",
    }
    # the RUN that writes a fresh value did not run again: its layer is the stored one, and the
    # image is the same image (BuildKit keeps the cache records' times)
    assert manifest_layers(rb, "app") == layers
    assert image_id(rb, "app") == first_id


def test_content_change_invalidates_that_copy_and_what_follows_only(
    rb: Harness, app: Path
) -> None:
    build(rb, app)
    (app / "app/main.txt").write_text("main v2\n")
    out = build(rb, app)
    assert ran(out) == {f"{S} COPY app/ /app/", f"{S} RUN cat /app/main.txt > /copy-of-main"}
    assert f"{S} {STAMP_RUN}" in cached(out)


def test_mtime_ignored_and_unreferenced_files_do_not_invalidate(rb: Harness, app: Path) -> None:
    build(rb, app)
    later = time.time() + 100
    for name in ("app/main.txt", "app/other.txt"):
        os.utime(app / name, (later, later))  # touched: same content
    (app / "ignored.txt").write_text("ignored v2\n")  # in .dockerignore
    (app / "app/debug.log").write_text("a log\n")  # ignored by app/*.log
    (app / "unreferenced.txt").write_text("changed, but no COPY takes it\n")
    out = build(rb, app)
    assert ran(out) == set(), out


def test_mode_change_invalidates(rb: Harness, app: Path) -> None:
    build(rb, app)
    os.chmod(app / "app/other.txt", 0o600)
    assert f"{S} COPY app/ /app/" in ran(build(rb, app))


def test_build_args_invalidate_only_when_the_step_sees_them(rb: Harness, app: Path) -> None:
    build(rb, app)
    out = build(rb, app, "--build-arg", "UNRELATED=1")
    assert ran(out) == set(), out
    out = build(rb, app, "--build-arg", "USED=other")
    assert f"{S} {STAMP_RUN}" in ran(out)
    assert f"{S} COPY rootfs/ /" in cached(out)


def test_env_change_invalidates_the_runs_after_it(rb: Harness) -> None:
    ctx = busybox_context(rb, "cache-env", (
        "FROM scratch\nCOPY rootfs/ /\nRUN echo a > /a\nENV V=1\nRUN echo $V > /v\n"
    ))
    build(rb, ctx)
    (ctx / "Dockerfile").write_text(
        "FROM scratch\nCOPY rootfs/ /\nRUN echo a > /a\nENV V=2\nRUN echo $V > /v\n"
    )
    out = build(rb, ctx)
    assert ran(out) == {f"{S} RUN echo $V > /v"}
    assert cached(out) == {f"{S} COPY rootfs/ /", f"{S} RUN echo a > /a"}


def test_no_cache_runs_everything_and_still_records(rb: Harness, app: Path) -> None:
    build(rb, app)
    out = build(rb, app, "--no-cache")
    assert cached(out) == set()
    assert len(ran(out)) == 4
    stamp_layers = manifest_layers(rb, "app")
    again = build(rb, app)
    assert ran(again) == set()
    assert manifest_layers(rb, "app") == stamp_layers  # the --no-cache run's results


MULTI = (
    "FROM scratch AS base\nCOPY rootfs/ /\n"
    "FROM base AS a\nCOPY a.txt /a.txt\nRUN " + FRESH + " > /a-stamp\n"
    "FROM base AS b\nCOPY b.txt /b.txt\nRUN " + FRESH + " > /b-stamp\n"
    "FROM base\nCOPY --from=a /a.txt /a-stamp /out/\nCOPY --from=b /b.txt /b-stamp /out/\n"
    "RUN ls /out > /listing\n"
)


def test_stage_inputs_flow_through_copy_from(rb: Harness) -> None:
    ctx = busybox_context(rb, "cache-multi", MULTI, {"a.txt": "a1\n", "b.txt": "b1\n"})
    build(rb, ctx)
    (ctx / "a.txt").write_text("a2\n")
    out = build(rb, ctx)
    assert ran(out) == {
        "a COPY a.txt /a.txt", f"a RUN {FRESH} > /a-stamp",
        "stage-3 COPY --from=a /a.txt /a-stamp /out/",
        "stage-3 COPY --from=b /b.txt /b-stamp /out/", "stage-3 RUN ls /out > /listing",
    }
    assert {"b COPY b.txt /b.txt", f"b RUN {FRESH} > /b-stamp"} <= cached(out)


def test_no_cache_filter_reruns_the_named_stage_only(rb: Harness) -> None:
    ctx = busybox_context(rb, "cache-filter", MULTI, {"a.txt": "a1\n", "b.txt": "b1\n"})
    build(rb, ctx)
    out = build(rb, ctx, "--no-cache-filter", "b")
    assert {"b COPY b.txt /b.txt", f"b RUN {FRESH} > /b-stamp"} <= ran(out)
    assert {"a COPY a.txt /a.txt", f"a RUN {FRESH} > /a-stamp"} <= cached(out)
    # b's RUN wrote a new value, so the final stage's COPY --from=b ran again too
    assert "stage-3 COPY --from=b /b.txt /b-stamp /out/" in ran(out)


def test_images_all_lists_entries_and_prune_removes_them(rb: Harness, app: Path) -> None:
    build(rb, app)
    listing = rb.run("images", "--all").stdout
    assert "STEP CACHE: 4 entries" in listing
    assert "RUN cat /app/main.txt > /copy-of-main" in listing
    out = rb.run("prune").stdout
    assert "removed 4 step cache entries, kept 0" in out
    assert "STEP CACHE: 0 entries" in rb.run("images", "--all").stdout
    assert cached(build(rb, app)) == set()  # the image is tagged, but the cache is gone


def test_prune_keep_storage_drops_least_recently_used_first(rb: Harness) -> None:
    old = busybox_context(rb, "cache-old", "FROM scratch\nCOPY big1 /big1\n", {
        "big1": os.urandom(3 << 20),
    })
    new = busybox_context(rb, "cache-new", "FROM scratch\nCOPY big2 /big2\n", {
        "big2": os.urandom(3 << 20),
    })
    build(rb, old, tag="old")
    build(rb, new, tag="new")
    rb.run("rmi", "old", "new")
    # each entry holds a 3 MiB layer blob (random: gzip cannot shrink it); a final COPY's
    # tree is never extracted, so 4 MiB keeps exactly the most recently used one
    out = rb.run("prune", "--keep-storage", "4MB").stdout
    assert "removed 1 step cache entries, kept 1" in out
    assert cached(build(rb, new, tag="new")) == {f"{S} COPY big2 /big2"}
    assert cached(build(rb, old, tag="old")) == set()
    bad = rb.run("prune", "--keep-storage", "lots", check=False)
    assert bad.returncode == 2 and "keep-storage" in bad.stderr


def test_missing_blob_is_a_miss_not_an_error(rb: Harness, app: Path) -> None:
    build(rb, app)
    rb.run("rmi", "app")
    blobs = rb.store / "blobs" / "sha256"
    layers_dir = rb.store / "layers"
    rb.as_user(["sh", "-c", f"chmod u+w {blobs} && rm -f {blobs}/* && "
                            f"chmod -R u+w {layers_dir} && rm -rf {layers_dir}/*"])
    out = build(rb, app)
    assert cached(out) == set()
    assert len(ran(out)) == 4


def test_failed_build_records_nothing(rb: Harness, app: Path) -> None:
    build(rb, app)
    ctx = busybox_context(rb, "cache-fail", "FROM scratch\nCOPY rootfs/ /\nRUN exit 3\n")
    before = rb.store_snapshot()
    proc = rb.run("build", "-t", "x", str(ctx), check=False)
    assert proc.returncode == 1
    assert rb.store_snapshot() == before


# -- --cache-to / --cache-from ---------------------------------------------------------------


def build_in(rb: Harness, root: Path, ctx: Path, *extra: str, tag: str = "app") -> str:
    """A build into another store (a fresh CI runner)."""
    return rb.run("build", "--root", str(root), "--progress", "plain", "-t", tag, *extra,
                  str(ctx), store=False).stderr


def layers_in(rb: Harness, root: Path, name: str) -> list[str]:
    doc = json.loads(rb.run("inspect", "--root", str(root), name, store=False).stdout)
    return [layer["digest"] for layer in doc["Manifest"]["layers"]]


def test_local_cache_round_trip_to_a_fresh_store(rb: Harness, app: Path) -> None:
    cache_dir = rb.workdir / "cache-dir"
    build(rb, app, "--cache-to", f"type=local,dest={cache_dir}")
    assert (cache_dir / "index.json").is_file()
    fresh = rb.workdir / "fresh-store"
    out = build_in(rb, fresh, app, "--cache-from", f"type=local,src={cache_dir}")
    assert ran(out) == set(), out
    assert len(cached(out)) == 4
    assert layers_in(rb, fresh, "app") == manifest_layers(rb, "app")
    # the imported entries are now local ones: no --cache-from needed any more
    again = build_in(rb, fresh, app)
    assert ran(again) == set()


def test_cache_mode_min_exports_the_final_chain_and_max_everything(rb: Harness) -> None:
    ctx = busybox_context(rb, "cache-modes", MULTI, {"a.txt": "a1\n", "b.txt": "b1\n"})
    min_dir, max_dir = rb.workdir / "cache-min", rb.workdir / "cache-max"
    build(rb, ctx, "--cache-to", f"type=local,dest={min_dir}",
          "--cache-to", f"type=local,dest={max_dir},mode=max")
    out = build_in(rb, rb.workdir / "store-min", ctx, "--cache-from", f"type=local,src={min_dir}")
    assert "base COPY rootfs/ /" in cached(out)
    assert {f"a RUN {FRESH} > /a-stamp", f"b RUN {FRESH} > /b-stamp"} <= ran(out)
    out = build_in(rb, rb.workdir / "store-max", ctx, "--cache-from", f"type=local,src={max_dir}")
    assert ran(out) == set(), out


def test_unreadable_cache_source_is_a_warning(rb: Harness, app: Path) -> None:
    out = build(rb, app, "--cache-from", f"type=local,src={rb.workdir / 'no-such-cache'}")
    assert "not found" in out
    assert len(ran(out)) == 4
    bad = rb.run("build", "--cache-to", "type=gha", str(app), check=False)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines()[-1].endswith(
        "--cache-to type=gha: not supported (rootbuild supports type=registry and type=local)"
    )


def test_registry_cache_round_trip_reuses_layers_without_uploading_them(
    rb: Harness, app: Path, registry: Registry
) -> None:
    cache_ref = registry.ref("cache/app:buildcache")
    out = build(rb, app, "--cache-to", f"type=registry,ref={cache_ref},mode=max")
    assert f"exporting cache to type=registry,ref={cache_ref}" in out
    layers = manifest_layers(rb, "app")

    # a fresh runner: every step from the imported cache, and the push of the result
    # uploads no layer (each is mounted from the cache repository), only config + manifest
    fresh = rb.workdir / "runner2"
    target = registry.ref("team/app:2")
    time.sleep(0.3)
    log_before = len(registry.log_text())
    out = build_in(rb, fresh, app, "--cache-from", cache_ref, "--output", f"docker://{target}")
    assert ran(out) == set(), out
    assert layers_in(rb, fresh, "app") == layers
    time.sleep(0.3)
    log = registry.log_text()[log_before:]
    uploads = re.findall(r'"PUT /v2/team/app/blobs/uploads/[^"]*digest=(sha256:[0-9a-f]{64})', log)
    mounts = re.findall(r'"POST /v2/team/app/blobs/uploads/\?[^"]*mount=(sha256:[0-9a-f]{64})',
                        log)
    assert not set(uploads) & set(layers), uploads
    assert set(layers) <= set(mounts), log  # team/app is new: nothing there to HEAD

