"""An unchanged rebuild answered from its record (engine/replay.py), through the real
``rootbuild`` as the unprivileged user: it shows what the full build shows, gives the same
image and the same archive, imports neither trio, the sandbox nor the registry client
(issue 14, item 4), and is never used when something the build depends on changed.

Whether a build was replayed is read from Python's own import log
(``PYTHONPROFILEIMPORTTIME=1``): a full build imports trio, a replay does not.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from conftest import Harness
from test_add_remote import Server, web  # noqa: F401 (pytest fixture)
from test_build_run import busybox_context

pytestmark = pytest.mark.integration

DOCKERFILE = (
    "FROM scratch\n"
    "COPY rootfs/ /\n"
    "ARG FLAVOUR=plain\n"
    "RUN echo $FLAVOUR > /flavour && cat /proc/sys/kernel/random/uuid > /stamp\n"
    "COPY app/ /app/\n"
    "RUN cat /app/main.txt > /copy\n"
)
IMPORT = re.compile(r"^import time:.*\|\s*(\S+)$")
TIMING = re.compile(r" \d+\.\d+s$")


def build(rb: Harness, ctx: Path, *args: str, out: str = "o.tar") -> tuple[str, set[str]]:
    """(progress lines without timings or import lines, modules imported)."""
    proc = rb.run("build", "--progress=plain", "--output",
                  f"oci-archive:{rb.workdir / out}", *args, str(ctx),
                  env={"PYTHONPROFILEIMPORTTIME": "1"})
    lines, modules = [], set()
    for line in proc.stderr.splitlines():
        m = IMPORT.match(line)
        if m:
            modules.add(m.group(1))
        else:
            lines.append(TIMING.sub("", line))
    return "\n".join(lines), modules


def replayed(modules: set[str]) -> bool:
    assert "rootbuild.cli" in modules, "no import log: PYTHONPROFILEIMPORTTIME not honoured"
    return "trio" not in modules


@pytest.fixture
def app(rb: Harness) -> Path:
    return busybox_context(rb, "replay-app", DOCKERFILE, {
        "app/main.txt": "main v1\n",
        "app/skip.log": "ignored\n",
        ".dockerignore": "app/*.log\n",
    })


def test_unchanged_rebuild_is_replayed_as_the_full_build_showed_it(
        rb: Harness, app: Path) -> None:
    first, modules = build(rb, app, "-t", "app:1", out="1.tar")
    assert not replayed(modules) and "CACHED" not in first
    # the first build ran every step and added it to the step cache: the next is replayed
    second, modules = build(rb, app, "-t", "app:2", "--iidfile", str(rb.workdir / "iid"),
                            out="2.tar")
    assert replayed(modules)
    for heavy in ("rootbuild.sandbox", "rootbuild.registry", "rootbuild.engine.build",
                  "rootbuild.fuse_overlay", "httpx"):
        assert heavy not in modules, heavy
    # against the full build of the same (every step from the step cache, no record)
    rb.as_user(["rm", "-r", str(rb.store / "replay")])
    full, modules = build(rb, app, "-t", "app:2", out="3.tar")
    assert not replayed(modules)
    assert "#4 CACHED" in full and "#6 CACHED" in full  # the RUN steps
    # the same lines (but the output's name), the same image, the same archive bytes
    assert second.replace("2.tar", "3.tar") == full
    assert (rb.workdir / "2.tar").read_bytes() == (rb.workdir / "3.tar").read_bytes()
    assert (rb.workdir / "1.tar").read_bytes() == (rb.workdir / "3.tar").read_bytes()
    image = json.loads(rb.run("inspect", "app:1").stdout)["Id"]
    assert (rb.workdir / "iid").read_text().strip() == image
    assert json.loads(rb.run("inspect", "app:2").stdout)["Id"] == image  # -t applied


def test_a_change_to_anything_the_build_used_means_the_full_build(
        rb: Harness, app: Path) -> None:
    build(rb, app)
    assert replayed(build(rb, app)[1])
    # an ignored file is not part of the build
    (app / "app/skip.log").write_text("ignored, changed\n")
    assert replayed(build(rb, app)[1])
    # a context file the build copies: that COPY and what follows run again
    (app / "app/main.txt").write_text("main v2\n")
    lines, modules = build(rb, app)
    assert not replayed(modules)
    assert re.search(r"COPY app/ /app/\n#\d+ DONE", lines), lines
    assert replayed(build(rb, app)[1])
    # a build arg, --no-cache, a new Dockerfile line: each is a different build
    for args in (("--build-arg", "FLAVOUR=spicy"), ("--no-cache",)):
        lines, modules = build(rb, app, *args)
        assert not replayed(modules), args
    (app / "Dockerfile").write_text(DOCKERFILE + "RUN true\n")
    assert not replayed(build(rb, app)[1])


def test_prune_means_the_full_build_again(rb: Harness, app: Path) -> None:
    build(rb, app)
    assert replayed(build(rb, app)[1])
    rb.run("prune")
    lines, modules = build(rb, app)
    assert not replayed(modules)
    assert "CACHED" not in lines  # the step cache went with it: every step ran


def test_a_base_name_that_moved_means_the_full_build(rb: Harness, app: Path) -> None:
    base = busybox_context(rb, "replay-base", "FROM scratch\nCOPY rootfs/ /\n")
    rb.run("build", "-t", "base:1", str(base))
    child = rb.make_context("replay-child", {
        "Dockerfile": "FROM base:1\nRUN echo x > /x\n",
    })
    build(rb, child)
    assert replayed(build(rb, child)[1])
    (base / "rootfs/etc/motd").write_text("a new base\n")
    rb.run("build", "-t", "base:1", str(base))  # base:1 names another image now
    lines, modules = build(rb, child)
    assert not replayed(modules)
    assert re.search(r"RUN echo x > /x\n#\d+ DONE", lines), lines


def test_a_build_that_fetches_a_url_is_never_replayed(rb: Harness, web: Server) -> None:  # noqa: F811
    """Reference, "Adding files from a URL": a cached rebuild asks the server again (with
    the ETag); a replay would not, so such a build is never recorded.
    https://docs.docker.com/reference/dockerfile/#adding-files-from-a-url"""
    web.files["/replay/f.txt"] = b"fetched\n"
    ctx = rb.make_context("replay-url", {
        "Dockerfile": f"FROM scratch\nADD {web.url('/replay/f.txt')} /f\n",
    })
    for _ in range(3):
        assert not replayed(build(rb, ctx)[1])
    assert web.statuses("/replay/f.txt") == [200, 304, 304]


def test_a_replay_shows_no_warning_of_a_step_that_does_not_run(rb_nosub: Harness) -> None:
    """A user without a subuid range gets a warning from each build whose RUN steps run;
    a cached rebuild runs none and says nothing, and neither does its replay."""
    ctx = busybox_context(rb_nosub, "replay-nosub", "FROM scratch\nCOPY rootfs/ /\n"
                                                    "RUN echo hi > /hi\n")
    first, _ = build(rb_nosub, ctx)
    assert "maps only root" in first
    second, modules = build(rb_nosub, ctx)
    assert replayed(modules)
    rb_nosub.as_user(["rm", "-r", str(rb_nosub.store / "replay")])
    full, modules = build(rb_nosub, ctx)
    assert not replayed(modules)
    assert "maps only root" not in full
    assert second == full
