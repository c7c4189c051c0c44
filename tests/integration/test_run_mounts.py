"""``RUN --mount`` of type bind and tmpfs through the real `rootbuild` executable, as the
unprivileged build user, on a busybox base (``COPY rootfs/ /``).

- bind from the build context (only what .dockerignore admits, root-owned, read-only by
  default, the step's cache key following the bound content only), from a stage and from
  an image (``source=`` a file or a subdirectory), ``rw`` (writes discarded), a relative
  target (against WORKDIR), sources that try to leave their tree (symlinks, '..').
- tmpfs: writable, ``size`` honoured, gone after the step.
- Nothing of a mount reaches the layer: neither the target created for it nor what was
  written through it.
- Bad input: a missing source, a ``from=`` naming nothing, an unknown option, the target
  '/': one line naming the Dockerfile line, exit 1, the store as it was.

Expectations come from Docker's Dockerfile reference, "RUN --mount"
(https://docs.docker.com/reference/dockerfile/#run---mount), quoted in each test.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import Harness
from registry_fixtures import write_multiplatform_layout
from test_build_cache import cached, ran
from test_build_run import (
    PASSWD,
    Image,
    assert_nothing_left,
    build,
    build_to_layout,
    busybox_context,
)
from test_sandbox import Sandbox

pytestmark = pytest.mark.integration

REFERENCE = "https://docs.docker.com/reference/dockerfile/#run---mount"


def all_paths(image: Image) -> set[str]:
    return {name for layer in image.layers for name in layer}


def run_layer(image: Image) -> set[str]:
    """The entries of the image's last layer (the RUN under test)."""
    return set(image.layers[-1])


# -- type=bind from the build context --------------------------------------------------------


def test_bind_from_context_sees_admitted_files_read_only_and_leaves_nothing(
    rb: Harness,
) -> None:
    """Reference: "This mount type allows binding files or directories to the build
    container. A bind mount is read-only by default."; ``from``: "Build stage, context, or
    image name for the root of the source. Defaults to the build context."; the
    .dockerignore section: files it excludes are not sent to the builder. A relative target
    resolves against WORKDIR, as BuildKit joins it with the stage's dir."""
    ctx = busybox_context(rb, "ctxbind", (
        "FROM scratch\n"
        "COPY rootfs/ /\n"
        "WORKDIR /w\n"
        "RUN --mount=target=ctx cat ctx/src/a.txt > /a.out; ls ctx/src > /ls.out; "
        "stat -c %u:%g ctx/src/a.txt > /owner.out; "
        "(touch ctx/src/new 2>/dev/null && echo writable || echo read-only) > /ro.out; "
        "pwd > /pwd.out; ls -d /w/ctx > /where.out\n"
    ), {
        "src/a.txt": "from the context\n",
        "src/b.txt": "bee\n",
        "src/notes.log": "ignored\n",
        ".dockerignore": "src/*.log\n",
    })
    layout, _ = build_to_layout(rb, ctx)
    image = Image(rb, layout)
    assert image.text("a.out") == "from the context\n"
    assert image.text("ls.out").split() == ["a.txt", "b.txt"]  # the .log is not there
    assert image.text("owner.out") == "0:0\n"  # context files are root-owned, as BuildKit
    assert image.text("ro.out") == "read-only\n"
    assert image.text("where.out") == "/w/ctx\n"  # relative target: under WORKDIR
    # nothing of the mount in the layer: not its target, not the WORKDIR it lies in
    assert run_layer(image) == {"a.out", "ls.out", "owner.out", "ro.out", "pwd.out",
                                "where.out"}
    assert not any(p.startswith("w/ctx") for p in all_paths(image))
    assert_nothing_left(rb, [])


def test_bind_from_context_reruns_only_when_the_bound_content_changes(rb: Harness) -> None:
    """Docker's build cache docs ("Use bind mounts"): a bind-mounted source is part of the
    step's cache key, so the step reruns when the bound files change; files outside the
    bound source do not invalidate it (BuildKit checksums the mount's selector)."""
    dockerfile = (
        "FROM scratch\n"
        "COPY rootfs/ /\n"
        "RUN --mount=source=src,target=/src cat /src/a.txt > /copy\n"
    )
    ctx = busybox_context(rb, "cachebind", dockerfile,
                          {"src/a.txt": "one\n", "other.txt": "x\n"})
    step = "stage-0 RUN --mount=source=src,target=/src cat /src/a.txt > /copy"
    first = build(rb, ctx, "-t", "m:1")
    assert step in ran(first.stderr)
    (ctx / "other.txt").write_text("changed, but not bound\n")
    second = build(rb, ctx, "-t", "m:2")
    assert step in cached(second.stderr)
    (ctx / "src/a.txt").write_text("two\n")
    layout, third = build_to_layout(rb, ctx)
    assert step in ran(third.stderr)
    assert Image(rb, layout).text("copy") == "two\n"
    assert_nothing_left(rb, [])


# -- type=bind from a stage or an image --------------------------------------------------------


def test_bind_from_a_stage_and_an_image_with_source(rb: Harness) -> None:
    """Reference, bind options: ``source``: "Source path in the from. Defaults to the root
    of the from."; ``from``: "Build stage, context, or image name for the root of the
    source." Owners in a stage's tree are kept (its layers' own metadata)."""
    image_layout = rb.workdir / "base.oci"
    write_multiplatform_layout(image_layout, "v1", [("linux", "amd64")])
    rb._own(image_layout)
    ctx = busybox_context(rb, "stagebind", (
        "FROM scratch AS build\n"
        "COPY rootfs/ /\n"
        "RUN mkdir -p /out/dir && echo built > /out/dir/f.txt && chown 1000:1000 /out/dir/f.txt\n"
        "FROM scratch\n"
        "COPY rootfs/ /\n"
        "RUN --mount=from=build,source=out/dir,target=/m "
        f"--mount=from=oci:{image_layout}:v1,source=platform.txt,target=/etc/platform "
        "cat /m/f.txt > /stage.out; stat -c %u:%g /m/f.txt > /owner.out; "
        "cat /etc/platform > /image.out; ls /m > /ls.out\n"
    ))
    layout, _ = build_to_layout(rb, ctx)
    image = Image(rb, layout)
    assert image.text("stage.out") == "built\n"
    assert image.text("ls.out") == "f.txt\n"  # the source directory is the mount's root
    assert image.text("owner.out") == "1000:1000\n"
    assert image.text("image.out") == "linux/amd64\n"
    assert run_layer(image) == {"stage.out", "owner.out", "image.out", "ls.out"}
    assert_nothing_left(rb, [])


def test_rw_bind_writes_are_discarded(rb: Harness) -> None:
    """Reference, bind options: ``rw``, ``readwrite``: "Allow writes on the mount. Written
    data will be discarded." Docker's build docs: "even with the rw option, the changes are
    not persisted in the final image or the build cache"."""
    ctx = busybox_context(rb, "rwbind", (
        "FROM scratch AS build\n"
        "COPY rootfs/ /\n"
        "RUN mkdir /out && echo kept > /out/old.txt\n"
        "FROM scratch\n"
        "COPY rootfs/ /\n"
        "RUN --mount=from=build,source=out,target=/m,rw "
        "echo new > /m/new.txt && rm /m/old.txt && ls /m > /during.out\n"
        "RUN --mount=from=build,source=out,target=/m ls /m > /after.out\n"
        "RUN ls / > /root.out\n"
    ))
    layout, _ = build_to_layout(rb, ctx)
    image = Image(rb, layout)
    assert image.text("during.out") == "new.txt\n"
    assert image.text("after.out") == "old.txt\n"  # the next step sees the source as it was
    assert "m" not in image.text("root.out").split()
    assert not any(p == "m" or p.startswith("m/") for p in all_paths(image))
    assert_nothing_left(rb, [])


def test_bind_sources_resolve_inside_their_tree(rb: Harness) -> None:
    """SECURITY.md rule 1 with BuildKit's ``path.Join("/", source)``: '..' cannot climb
    above the source's root and an absolute symlink in the source resolves against the
    source's own root (its /etc/passwd, never the host's)."""
    ctx = busybox_context(rb, "escape", (
        "FROM scratch AS s\n"
        "COPY rootfs/ /\n"
        "RUN mkdir /data && ln -s /etc/passwd /data/link && ln -s ../../../../../etc /data/up\n"
        "FROM scratch\n"
        "COPY rootfs/ /\n"
        "RUN --mount=from=s,source=data/link,target=/a "
        "--mount=from=s,source=../../../../etc/passwd,target=/b "
        "--mount=from=s,source=data/up,target=/c "
        "cat /a > /a.out; cat /b > /b.out; cat /c/passwd > /c.out\n"
    ))
    layout, _ = build_to_layout(rb, ctx)
    image = Image(rb, layout)
    for name in ("a.out", "b.out", "c.out"):
        assert image.text(name) == PASSWD, name
    assert_nothing_left(rb, [])


# -- type=tmpfs ------------------------------------------------------------------------------


def test_tmpfs_is_writable_sized_and_gone_after_the_step(rb: Harness) -> None:
    """Reference, ``RUN --mount=type=tmpfs``: "This mount type allows mounting tmpfs in the
    build container."; ``size``: "Specify an upper limit on the size of the filesystem."."""
    ctx = busybox_context(rb, "tmpfs", (
        "FROM scratch\n"
        "COPY rootfs/ /\n"
        "RUN --mount=type=tmpfs,target=/t,size=1m echo hi > /t/x && cat /t/x > /tmpfs.out "
        "&& grep ' /t ' /proc/mounts > /mounts.out "
        "&& (dd if=/dev/zero of=/t/big bs=1024 count=2048 2>/dev/null && echo fits "
        "|| echo full) > /size.out\n"
        "RUN ls / > /root.out\n"
    ), {"rootfs/bin/dd": "symlink:busybox"})
    layout, _ = build_to_layout(rb, ctx)
    image = Image(rb, layout)
    assert image.text("tmpfs.out") == "hi\n"
    fields = image.text("mounts.out").split()
    assert fields[1:3] == ["/t", "tmpfs"]
    assert "size=1024k" in fields[3].split(",")
    assert image.text("size.out") == "full\n"  # 2 MiB do not fit in 1 MiB
    assert "t" not in image.text("root.out").split()
    assert not any(p == "t" or p.startswith("t/") for p in all_paths(image))
    assert_nothing_left(rb, [])


# -- bad input -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mount", "message"),
    [
        ("source=nothere,target=/m",
         r'RUN --mount=type=bind,source=nothere,target=/m: failed to compute cache key: '
         r'"/nothere": not found'),
        ("from=ok,source=nothere,target=/m",
         r'RUN --mount=type=bind,from=ok,source=nothere,target=/m: failed to compute cache '
         r'key: "/nothere": not found'),
        ("from=oci:/nonexistent/layout:v1,target=/m",
         r"open OCI layout /nonexistent/layout: No such file or directory"),
        ("type=bind,target=/m,bogus=1", r"unexpected key 'bogus' in 'bogus=1'.*"),
        ("type=tmpfs,target=/", r'RUN --mount=type=tmpfs,target=/: invalid mount target "/"'),
        ("target=/w/..", r'RUN --mount=type=bind,target=/w/\.\.: invalid mount target "/"'),
    ],
    ids=["context-source", "stage-source", "from-missing-image", "unknown-option", "root-target",
         "dotdot-root-target"],
)
def test_bad_mounts_fail_at_their_line_and_leave_the_store(
    rb: Harness, mount: str, message: str
) -> None:
    """Reference: ``target``: "Mount path." (BuildKit refuses '/': ``invalid mount target``);
    a ``source`` missing in the ``from`` fails as BuildKit's cache-key checksum does."""
    ok = busybox_context(rb, "ok", "FROM scratch AS ok\nCOPY rootfs/ /\nRUN echo ok > /ok\n")
    rb.run("build", "-q", "-t", "ok:1", str(ok))
    before = rb.store_snapshot()
    (ok / "Dockerfile").write_text(
        "FROM scratch AS ok\nCOPY rootfs/ /\nRUN echo ok > /ok\n"
        f"FROM ok\nRUN --mount={mount} true\n"
    )
    proc = rb.run("build", "-q", "-t", "bad:1", str(ok), check=False)
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert re.fullmatch(rf"rootbuild: Dockerfile:5: {message}\n", proc.stderr), proc.stderr
    assert rb.store_snapshot() == before
    assert_nothing_left(rb, [])


def test_mount_target_through_an_image_symlink_is_refused(rb: Harness) -> None:
    """SECURITY.md rule 1: a target is never reached through a symlink of the image (the
    image's /mnt links to the host's /tmp here): the step fails at its line."""
    ctx = busybox_context(rb, "symtarget", (
        "FROM scratch\n"
        "COPY rootfs/ /\n"
        "RUN ln -s /tmp /mnt\n"
        "RUN --mount=type=tmpfs,target=/mnt/t true\n"
    ))
    proc = build(rb, ctx, check=False)
    assert proc.returncode == 1
    lines = [line for line in proc.stderr.splitlines() if line.startswith("rootbuild:")]
    assert len(lines) == 1
    assert re.match(r"rootbuild: Dockerfile:4: RUN: mount /mnt/t for RUN: in the image it is "
                    r"a symlink, lies under one", lines[0]), lines
    assert "Traceback" not in proc.stderr
    assert_nothing_left(rb, [])


def test_mounts_work_for_a_non_root_user(rb: Harness) -> None:
    """Reference, USER: "the specified user is used for RUN instructions"; a bind is
    readable by it as its modes allow and a tmpfs (mode 1777, as the kernel makes it) is
    writable by it."""
    ctx = busybox_context(rb, "asuser", (
        "FROM scratch\n"
        "COPY rootfs/ /\n"
        "RUN mkdir -m 777 /out\n"
        "USER app\n"
        "RUN --mount=target=/c --mount=type=tmpfs,target=/t "
        "cat /c/a.txt > /out/a.out && echo mine > /t/f && stat -c %u /t/f > /out/t.out "
        "&& id -u > /out/id.out\n"
    ), {"a.txt": "readable\n"})
    layout, _ = build_to_layout(rb, ctx)
    image = Image(rb, layout)
    assert image.text("out/id.out") == "1000\n"
    assert image.text("out/a.out") == "readable\n"
    assert image.text("out/t.out") == "1000\n"
    assert run_layer(image) == {"out", "out/a.out", "out/t.out", "out/id.out"}
    assert_nothing_left(rb, [])


# -- the sandbox's side, driven directly ----------------------------------------------------


@pytest.fixture
def sbx(rb: Harness) -> Sandbox:
    return Sandbox(rb)


def _layers_mount(lower: tuple[str, str], source: str, target: str, readonly: bool = True
                  ) -> dict[str, object]:
    return {"type": "layers", "source": source, "target": target, "readonly": readonly,
            "snapshotter": "fuse", "lowers": [{"tree": lower[0], "meta": lower[1]}]}


def test_sandbox_resolves_layer_sources_inside_their_tree(sbx: Sandbox) -> None:
    """SECURITY.md rule 1: a source is resolved inside its own tree (RESOLVE_IN_ROOT): a
    symlink to a host path finds nothing of the host, one to /etc finds the tree's /etc; a
    missing source fails the step naming it; the tree's files on disk never change."""
    canary = sbx.rb.make_context("canary", {"secret": "host only\n"})
    source = sbx.layer([["data", "dir", ""], ["data/host", "symlink", str(canary)],
                        ["data/etc", "symlink", "../../../../etc"]])
    before = sorted(p.name for p in Path(source[0]).iterdir())
    res = sbx.run(["sh", "-c", "cat /m/passwd; echo x > /w/new; ls /w"], mounts=[
        _layers_mount(source, "data/etc", "/m"),
        _layers_mount(source, "/", "/w", readonly=False),
    ])
    assert res["exit_code"] == 0, res
    assert res["lines"][:2] == ["root:x:0:0:root:/root:/bin/sh",
                                "nobody:x:65534:65534:nobody:/nonexistent:/bin/sh"]
    assert "new" in res["lines"][2:]
    assert not {e for e in res["layer"]["entries"] if e.split("/")[0] in ("m", "w")}, res
    assert sorted(p.name for p in Path(source[0]).iterdir()) == before  # rw: upper discarded
    for missing in ("data/host/secret", "nothere"):
        res = sbx.run(["true"], mounts=[_layers_mount(source, missing, "/m")])
        assert res.get("error_type") == "StepError", res
        assert res["error"] == f'mount at /m: source "{missing}": not found', res
    assert sorted(p.name for p in canary.iterdir()) == ["secret"]
    assert str(sbx.rb.workdir) not in Path("/proc/mounts").read_text()


def test_nested_targets_are_made_in_the_mount_that_covers_them(rb: Harness) -> None:
    """BuildKit mounts a step's mounts parents first (its LLB sorts them by target), so a
    mount may lie inside another: a tmpfs in a ``rw`` bind, a bind in a tmpfs. Its
    mountpoint is made in the covering mount and goes with it; under a read-only bind it
    cannot be made and the step fails saying so."""
    ctx = busybox_context(rb, "nested", (
        "FROM scratch AS build\n"
        "COPY rootfs/ /\n"
        "RUN mkdir /out && echo built > /out/f.txt\n"
        "FROM scratch\n"
        "COPY rootfs/ /\n"
        "RUN --mount=type=tmpfs,target=/src/tmp --mount=from=build,source=out,target=/src,rw "
        "--mount=type=tmpfs,target=/t --mount=from=build,source=out/f.txt,target=/t/in/f.txt "
        "cat /src/f.txt /t/in/f.txt > /cat.out && echo x > /src/tmp/x "
        "&& grep -c ' /src/tmp ' /proc/mounts > /count.out\n"
    ))
    layout, _ = build_to_layout(rb, ctx)
    image = Image(rb, layout)
    assert image.text("cat.out") == "built\nbuilt\n"
    assert image.text("count.out") == "1\n"
    assert run_layer(image) == {"cat.out", "count.out"}

    (ctx / "Dockerfile").write_text(
        "FROM scratch\nCOPY rootfs/ /\n"
        "RUN --mount=target=/src --mount=type=tmpfs,target=/src/nothere/tmp true\n"
    )
    proc = build(rb, ctx, check=False)
    assert proc.returncode == 1
    lines = [line for line in proc.stderr.splitlines() if line.startswith("rootbuild:")]
    assert lines == ["rootbuild: Dockerfile:3: RUN: mount at /src/nothere/tmp for RUN: it lies "
                     "in an earlier mount where it cannot be made (Read-only file system)"]
    assert_nothing_left(rb, [])
