"""COPY/ADD flags and source rules through the real `rootbuild build`, as the unprivileged
user: ``--parents`` (with the ``/./`` pivot), ``--exclude``, ``--link``, symbolic
``--chmod``, ``--chown`` by name for every source kind, and BuildKit's symlink and wildcard
source rules (the three bug reports of issue 12 as regression tests).

Images are exported as ``oci:`` layouts and read back with ``tarfile`` (test_build.py's
readers), independently of rootbuild's own code. Each expectation cites the paragraph of
Docker's Dockerfile reference (https://docs.docker.com/reference/dockerfile/) it follows.
"""

from __future__ import annotations

import os
import tarfile

import pytest
from conftest import Harness
from test_build import _blob, build, file_at, make_tar, read_image, tree_of
from test_build_cache import cached, manifest_layers, ran
from test_build_errors import expect_error, set_dockerfile
from test_build_run import BUSYBOX, busybox_context

pytestmark = pytest.mark.integration

REF = "https://docs.docker.com/reference/dockerfile/"


def layer_members(rb: Harness, tag: str, index: int) -> dict[str, tarfile.TarInfo]:
    """The members of one layer (``index`` into the manifest's layers) of an exported image."""
    layout = rb.workdir / f"{tag}.oci"
    manifest, _ = read_image(layout, tag)
    with tarfile.open(_blob(layout, manifest["layers"][index]["digest"]), mode="r:*") as tar:
        members = {m.name.removeprefix("./").rstrip("/"): m for m in tar}
    members.pop("", None)
    return members


# -- COPY --parents ----------------------------------------------------------------------------


PARENTS_CONTEXT: dict[str, str | bytes] = {
    "x/a.txt": "xa\n",
    "y/a.txt": "ya\n",
    "x/y/a.txt": "xya\n",
    "x/y/b.txt": "xyb\n",
    "x/y/c.md": "xyc\n",
    "x/y/z": "xyz\n",
    "x/y/l": "symlink:a.txt",
    "src/a.txt": "sa\n",
    "src/x/b.txt": "sxb\n",
    "src/x/y/c.txt": "sxyc\n",
    "src/x/d.md": "sxd\n",
}


def test_copy_parents_keeps_the_parent_directories(rb: Harness) -> None:
    """Reference, "COPY --parents" (REF#copy---parents): "The ``--parents`` flag preserves
    parent directories for ``src`` entries." / "it is possible to limit which parent
    directories are preserved by inserting a dot and a slash (``./``) into the source path.
    If such point exists, only parent directories after it will be preserved. This may be
    especially useful copies between stages with ``--from`` where the source paths need to
    be absolute." / "The ``**`` wildcard matches any number of path components, including
    none"."""
    ctx = rb.make_context("ctx", {**PARENTS_CONTEXT, "Dockerfile": (
        "FROM scratch AS base\n"
        "COPY x /opt/x\n"
        "FROM scratch\n"
        "COPY ./x/a.txt ./y/a.txt /no_parents/\n"
        "COPY --parents ./x/a.txt ./y/a.txt /parents/\n"
        "COPY --parents ./x/./y/*.txt /pivot/\n"
        "COPY --parents ./x/./y/z /dst/\n"
        "COPY --parents ./src/**/*.txt /star/\n"
        "COPY --parents x/y /dir/\n"
        "COPY --parents */a.txt /any/\n"
        "COPY --from=base --parents /opt/./x/y/*.txt /fromstage/\n"
    )})
    os.chmod(ctx / "x/y", 0o750)
    # a FIFO the patterns do not select is never looked at (BuildKit's include patterns)
    os.mkfifo(ctx / "fifo")
    if os.getuid() == 0:
        os.lchown(ctx / "fifo", rb.user.uid, rb.user.gid)
    build(rb, ctx)
    tree = tree_of(rb, "img")
    got = {p for p in tree if p.split("/")[0] in (
        "no_parents", "parents", "pivot", "dst", "star", "dir", "any", "fromstage")}
    assert got == {
        "no_parents", "no_parents/a.txt",
        "parents", "parents/x", "parents/x/a.txt", "parents/y", "parents/y/a.txt",
        "pivot", "pivot/y", "pivot/y/a.txt", "pivot/y/b.txt",
        "dst", "dst/y", "dst/y/z",
        "star", "star/src", "star/src/a.txt", "star/src/x", "star/src/x/b.txt",
        "star/src/x/y", "star/src/x/y/c.txt",
        "dir", "dir/x", "dir/x/y", "dir/x/y/a.txt", "dir/x/y/b.txt", "dir/x/y/c.md",
        "dir/x/y/z", "dir/x/y/l",
        "any", "any/x", "any/x/a.txt", "any/y", "any/y/a.txt", "any/src", "any/src/a.txt",
        "fromstage", "fromstage/x", "fromstage/x/y", "fromstage/x/y/a.txt",
        "fromstage/x/y/b.txt",
    }
    # BuildKit silently overwrites on a collision without --parents: the last source wins
    assert file_at(tree, "no_parents/a.txt") == b"ya\n"
    assert file_at(tree, "parents/x/a.txt") == b"xa\n"
    assert file_at(tree, "parents/y/a.txt") == b"ya\n"
    assert file_at(tree, "dst/y/z") == b"xyz\n"
    assert file_at(tree, "fromstage/x/y/b.txt") == b"xyb\n"
    # the kept parents are the source's own directories (their mode), not fresh 0755 ones
    assert tree["pivot/y"].kind == "dir" and tree["pivot/y"].mode == 0o750
    assert tree["dir/x/y"].mode == 0o750
    # a symlink inside what is copied stays a symlink
    assert tree["dir/x/y/l"].kind == "symlink" and tree["dir/x/y/l"].linkname == "a.txt"


# -- --exclude ---------------------------------------------------------------------------------


def test_exclude_for_context_stage_and_add_sources(rb: Harness) -> None:
    """Reference, "COPY --exclude" (REF#copy---exclude): "to add all files starting with
    "hom", excluding files with a ``.txt`` extension: ``COPY --exclude=*.txt hom* /mydir/``"
    / "You can specify the ``--exclude`` option multiple times" / "Files matching any of the
    specified ``--exclude`` patterns are not copied, even if their paths match the pattern
    specified in ``<src>``." ADD takes the same flag ("ADD --exclude", REF#add---exclude)."""
    ctx = rb.make_context("ctx", {
        "hom1.txt": "1\n", "home.md": "md\n", "hom.go": "go\n", "other.txt": "o\n",
        "tree/a.txt": "a\n", "tree/b.go": "b\n", "tree/sub/c.txt": "c\n",
        "tree/sub/d.go": "d\n", "tree/keep/e.md": "e\n",
        "Dockerfile": (
            "FROM scratch AS base\n"
            "COPY tree /data/\n"
            "FROM scratch\n"
            "COPY --exclude=*.txt hom* /mydir/\n"
            "COPY --exclude=*.txt --exclude=*.md hom* /mydir2/\n"
            "COPY --exclude=sub tree /nosub/\n"
            "COPY --exclude=**/*.go tree /nogo/\n"
            "ADD --exclude=sub/*.txt tree /added/\n"
            "COPY --from=base --exclude=sub --exclude=**/*.md /data /fromstage/\n"
            "COPY --from=base --exclude=/data/*.go /data/*.go /data/a.txt /fromglob/\n"
        ),
    })
    build(rb, ctx)
    tree = tree_of(rb, "img")

    def files(top: str) -> set[str]:
        return {p.removeprefix(top + "/") for p, n in tree.items()
                if p.startswith(top + "/") and n.kind == "file"}

    assert files("mydir") == {"home.md", "hom.go"}
    assert files("mydir2") == {"hom.go"}
    # an excluded directory takes everything below it along
    assert files("nosub") == {"a.txt", "b.go", "keep/e.md"}
    assert "nosub/sub" not in tree
    assert files("nogo") == {"a.txt", "sub/c.txt", "keep/e.md"}
    assert files("added") == {"a.txt", "b.go", "sub/d.go", "keep/e.md"}
    assert files("fromstage") == {"a.txt", "b.go"}
    # "The path expression follows the same format as <src>": a matched source is
    # excluded by its own path, written like the source (from the image's root here)
    assert files("fromglob") == {"a.txt"}


# -- --link ------------------------------------------------------------------------------------


def test_link_does_not_follow_a_symlinked_destination(rb: Harness) -> None:
    """Reference, "COPY --link" (REF#copy---link): "When ``--link`` is used your source files
    are copied into an empty destination directory. That directory is turned into a layer
    that is linked on top of your previous state." / "Incompatibilities with --link=false":
    "if in previous state the destination directory was a path that contained a symlink,
    ``COPY/ADD`` can not follow it. In the final image the destination path created with
    ``--link`` will always be a path containing only directories." / "When copying a
    directory, the existing mode is overridden with the new mode from the copied path."."""
    ctx = rb.make_context("ctx", {
        "base/real/keep.txt": "keep\n",
        "base/app": "symlink:real",
        "base/app2": "symlink:/real",
        "f.txt": "f\n",
        "g.txt": "g\n",
        "dir/h.txt": "h\n",
        "Dockerfile": (
            "FROM scratch\n"
            "COPY base/ /\n"
            "COPY --link f.txt /app/f.txt\n"
            "COPY g.txt /app2/g.txt\n"
            "COPY --link dir /real/\n"
        ),
    })
    os.chmod(ctx / "dir", 0o700)
    build(rb, ctx)
    tree = tree_of(rb, "img")
    # --link: /app is now a directory holding f.txt; what the link named is untouched
    assert tree["app"].kind == "dir"
    assert file_at(tree, "app/f.txt") == b"f\n"
    assert "real/f.txt" not in tree
    # without --link the destination's symlink is followed (Docker's classic behaviour)
    assert tree["app2"].kind == "symlink"
    assert file_at(tree, "real/g.txt") == b"g\n"
    # the directory copied with --link over an existing one takes the source's mode
    assert tree["real"].mode == 0o700
    assert file_at(tree, "real/keep.txt") == b"keep\n"
    # the --link layer holds only what it copied and the directories on its way
    assert set(layer_members(rb, "img", 1)) == {"app", "app/f.txt"}


def test_link_layer_is_reused_when_the_base_changes(rb: Harness) -> None:
    """Reference, "Benefits of using --link" (REF#benefits-of-using---link): "Use ``--link``
    to reuse already built layers in subsequent builds ... even if the previous layers have
    changed." / "files remain independent on their own layer and don't get invalidated when
    commands on previous layers are changed"."""
    ctx = busybox_context(rb, "link-cache", (
        "FROM scratch\n"
        "COPY base.txt /base.txt\n"
        "COPY --link app.txt /app/app.txt\n"
        "COPY app.txt /plain/app.txt\n"
        "COPY rootfs/ /\n"
        "RUN cat /base.txt /app/app.txt > /both\n"
    ), {"base.txt": "base v1\n", "app.txt": "app\n"})
    first = rb.run("build", "--progress", "plain", "-t", "app", str(ctx)).stderr
    assert cached(first) == set()
    layers1 = manifest_layers(rb, "app")
    (ctx / "base.txt").write_text("base v2\n")
    second = rb.run("build", "--progress", "plain", "-t", "app", str(ctx)).stderr
    s = "stage-0"
    assert cached(second) == {f"{s} COPY --link app.txt /app/app.txt"}, second
    # what follows a reused --link layer still depends on the new base
    assert {f"{s} COPY base.txt /base.txt", f"{s} COPY app.txt /plain/app.txt",
            f"{s} COPY rootfs/ /", f"{s} RUN cat /base.txt /app/app.txt > /both"} <= ran(second)
    layers2 = manifest_layers(rb, "app")
    assert layers2[1] == layers1[1]  # the very same --link layer blob
    assert layers2[0] != layers1[0]
    out = rb.workdir / "app.oci"
    rb.run("build", "--progress", "plain", "--output", f"oci:{out}:app", str(ctx))
    assert file_at(tree_of(rb, "app"), "both") == b"base v2\napp\n"


# -- --chmod symbolic ---------------------------------------------------------------------------


def test_symbolic_chmod_applies_to_each_entry_own_mode(rb: Harness) -> None:
    """Reference, "COPY --chmod" (REF#copy---chmod): "The ``--chmod`` flag supports octal
    notation (e.g., ``755``, ``644``) and symbolic notation (e.g., ``+x``, ``g=u``)." /
    "``u=rwX,go=rX`` sets directories to 755 and files to 644, while preserving the
    executable bit on files that already have it. (Capital ``X`` means "executable only if
    it's a directory or already executable.")"."""
    archive = make_tar({"pkg/run.sh": "#!/bin/sh\n", "pkg/data": "d\n"})
    ctx = rb.make_context("ctx", {
        "data.txt": "d\n", "script.sh": "#!/bin/sh\n", "group.txt": "g\n",
        "app/x.sh": "#!/bin/sh\n", "app/y.txt": "y\n", "pkg.tar": archive,
        "Dockerfile": (
            "FROM scratch AS base\n"
            "COPY app /srv/app\n"
            "FROM scratch\n"
            "COPY --chmod=+x data.txt /plusx/\n"
            "COPY --chmod=u=rwX,go=rX app /rx/\n"
            "COPY --chmod=g=u group.txt /gu/\n"
            "COPY --chmod=g-w,o=r script.sh /gw/\n"
            "COPY --from=base --chmod=a=rX /srv/app /fromstage/\n"
            "ADD --chmod=u+x,go-rwx pkg.tar /unpacked/\n"
            "COPY --chmod=go-rwx <<EOF /heredoc.txt\n"
            "secret-ish\n"
            "EOF\n"
            "COPY --chmod=755 data.txt /octal\n"
        ),
    })
    for path, mode in {"data.txt": 0o644, "script.sh": 0o775, "group.txt": 0o640,
                       "app": 0o700, "app/x.sh": 0o700, "app/y.txt": 0o600}.items():
        os.chmod(ctx / path, mode)
    build(rb, ctx)
    tree = tree_of(rb, "img")
    modes = {p: tree[p].mode for p in (
        "plusx/data.txt", "rx", "rx/x.sh", "rx/y.txt", "gu/group.txt", "gw/script.sh",
        "fromstage/x.sh", "fromstage/y.txt", "unpacked/pkg", "unpacked/pkg/run.sh",
        "unpacked/pkg/data", "heredoc.txt", "octal")}
    assert {p: oct(m) for p, m in modes.items()} == {p: oct(m) for p, m in {
        "plusx/data.txt": 0o755,
        "rx": 0o755, "rx/x.sh": 0o755, "rx/y.txt": 0o644,
        "gu/group.txt": 0o660,
        "gw/script.sh": 0o754,
        "fromstage/x.sh": 0o555, "fromstage/y.txt": 0o444,
        "unpacked/pkg": 0o700, "unpacked/pkg/run.sh": 0o700, "unpacked/pkg/data": 0o700,
        "heredoc.txt": 0o600,
        "octal": 0o755,
    }.items()}


# -- --chown by name, every source kind ---------------------------------------------------------


def test_chown_by_name_for_every_source_kind(rb: Harness) -> None:
    """Reference, "COPY --chown" (REF#copy---chown): "The flag accepts usernames, group
    names, UIDs, or GIDs in any combination." / "When using names instead of numeric IDs,
    BuildKit resolves them using ``/etc/passwd`` and ``/etc/group`` in the container's root
    filesystem. If these files are missing or don't contain the specified names, the build
    fails."."""
    other = rb.make_context("other", {
        "data/x": "x\n", "Dockerfile": "FROM scratch\nCOPY data /data\n",
    })
    rb.run("build", "-t", "other:1", str(other))
    archive = make_tar({"pkg/one.txt": "one\n"})
    ctx = rb.make_context("ctx", {
        "etc/passwd": "root:x:0:0:root:/root:/bin/sh\napp:x:1001:2002::/home/app:/bin/sh\n",
        "etc/group": "root:x:0:\nstaff:x:3003:\napp:x:2002:\n",
        "f.txt": "f\n", "plain.txt": "p\n", "pkg.tar": archive,
        "Dockerfile": (
            "FROM scratch AS users\n"
            "COPY etc/ /etc/\n"
            "FROM scratch AS stage\n"
            "COPY f.txt /s/f.txt\n"
            "FROM users\n"
            "COPY --chown=app:staff f.txt /ctx/f.txt\n"
            "COPY --from=stage --chown=app /s/f.txt /fromstage/f.txt\n"
            "COPY --from=other:1 --chown=app:staff /data/x /fromimage/x\n"
            "COPY --chown=app:staff <<EOF /heredoc.txt\n"
            "h\n"
            "EOF\n"
            "ADD --chown=app:staff pkg.tar /unpacked/\n"
            "ADD --chown=app plain.txt /added.txt\n"
            "COPY --link --chown=app:staff f.txt /linked/f.txt\n"
        ),
    })
    build(rb, ctx)
    tree = tree_of(rb, "img")
    owners = {p: (tree[p].uid, tree[p].gid) for p in (
        "ctx/f.txt", "fromstage/f.txt", "fromimage/x", "heredoc.txt", "unpacked/pkg",
        "unpacked/pkg/one.txt", "added.txt", "linked/f.txt", "linked")}
    assert owners == {
        "ctx/f.txt": (1001, 3003),
        "fromstage/f.txt": (1001, 2002),  # a user alone takes its primary group
        "fromimage/x": (1001, 3003),
        "heredoc.txt": (1001, 3003),
        "unpacked/pkg": (1001, 3003), "unpacked/pkg/one.txt": (1001, 3003),
        "added.txt": (1001, 2002),
        "linked/f.txt": (1001, 3003), "linked": (1001, 3003),
    }


# -- source symlinks and wildcards (issue 12's bug reports) --------------------------------------


def test_symlink_sources_are_followed_and_keep_their_own_name(rb: Harness) -> None:
    """BuildKit's copy follows a top-level source symlink (``FollowSymlinks`` in its copy op)
    and names the result after the source; links inside a copied directory stay links.
    Reference, "Source" (REF#source-1): "``COPY --from`` ... The source path ... is always
    resolved from filesystem root of the image or stage that you specify"; "If ``<src>`` is
    a file, and ``<dest>`` ends with a trailing slash, the source file will be copied into
    the ``<dest>`` directory" (so it keeps the source's name). Also issue 12's reports:
    ``COPY --from=busybox /bin/paste /test/`` gave /test/busybox; ``COPY --from=base /bin/sh
    /bin/`` copied a dangling link; ``COPY *.txt /dest`` with one match failed."""
    if not BUSYBOX.is_file():
        pytest.fail("integration prerequisite missing: /bin/busybox (busybox-static)")
    ctx = busybox_context(rb, "links", (
        "FROM scratch AS bb\n"
        "COPY rootfs/ /\n"
        "FROM scratch\n"
        "COPY --from=bb /bin/paste /test/\n"
        "COPY --from=bb /bin/sh /bin/\n"
        "COPY --from=bb /bin/ /allbin/\n"
        "COPY --from=bb /bin/pas* /globbed/\n"
        "COPY ctxlink /ctxlinked/\n"
        "COPY *.one /dest\n"
        "COPY linkdir/ /viadirlink/\n"
    ), {"rootfs/bin/paste": "symlink:busybox", "real.txt": "real\n",
        "ctxlink": "symlink:real.txt", "only.one": "one\n",
        "target/inner.txt": "inner\n", "target/rel": "symlink:inner.txt",
        "linkdir": "symlink:target"})
    build(rb, ctx)
    tree = tree_of(rb, "img")
    busybox = BUSYBOX.read_bytes()
    assert file_at(tree, "test/paste") == busybox
    assert "test/busybox" not in tree
    assert file_at(tree, "bin/sh") == busybox  # the file the link names, not a link
    assert tree["bin/sh"].mode == 0o755
    assert tree["allbin/paste"].kind == "symlink"
    assert tree["allbin/paste"].linkname == "busybox"
    assert file_at(tree, "globbed/paste") == busybox
    assert file_at(tree, "ctxlinked/ctxlink") == b"real\n"
    assert file_at(tree, "dest") == b"one\n"  # one match, a non-slash destination: a file
    assert file_at(tree, "viadirlink/inner.txt") == b"inner\n"
    assert tree["viadirlink/rel"].kind == "symlink"


# -- bad input --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dockerfile", "pattern"),
    [
        ("FROM scratch\nCOPY a.txt /a\nCOPY --chmod=u+q a.txt /b\n",
         r"rootbuild: Dockerfile:3: COPY: invalid chmod parameter: 'u\+q'.*"),
        ("FROM scratch\nCOPY a.txt /a\nCOPY nomatch*.txt /d/\n",
         r'rootbuild: Dockerfile:3: COPY: source "nomatch\*\.txt" not found in build context'),
        ("FROM scratch\nCOPY a.txt /a\nCOPY --parents ../x/a.txt /d/\n",
         r'rootbuild: Dockerfile:3: COPY: source "\.\./x/a\.txt" is outside the build '
         r"context"),
        ("FROM scratch\nCOPY a.txt /a\nCOPY --parents ./nomatch/./*.txt /d/\n",
         r'rootbuild: Dockerfile:3: COPY: source "nomatch" not found in build context'),
        ("FROM scratch AS s\nCOPY a.txt /a\nFROM scratch\nCOPY --from=s /nomatch* /d/\n",
         r'rootbuild: Dockerfile:4: COPY --from=s: source "/nomatch\*" not found'),
        ("FROM scratch\nCOPY a.txt /a\nCOPY --chown=ghost a.txt /b\n",
         r"rootbuild: Dockerfile:3: --chown=ghost: unable to find user 'ghost' in the "
         r"image's etc/passwd"),
    ],
)
def test_bad_copy_flags_fail_cleanly(rb: Harness, dockerfile: str, pattern: str) -> None:
    ctx = rb.make_context("ctx", {"a.txt": "a\n", "Dockerfile": "FROM scratch\nCOPY a.txt /a\n"})
    rb.run("build", "-q", "-t", "good", str(ctx))
    assert rb.store_snapshot()
    set_dockerfile(rb, ctx, dockerfile)
    expect_error(rb, ctx, pattern)
