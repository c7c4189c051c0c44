"""`rootbuild build` through the real executable, as an unprivileged user: COPY and ADD.

Every build writes an ``oci:`` layout; the tests read the layers of that layout with
``tarfile`` (independently of rootbuild's own readers) and check what Docker's Dockerfile
reference says COPY and ADD produce: paths, contents, modes, owners and symlinks. Context
selection (``.dockerignore``, ``<Dockerfile>.dockerignore``, ``-f -``, ``Containerfile``) is
checked the same way.
"""

from __future__ import annotations

import gzip
import io
import json
import lzma
import os
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.integration

EPOCH = "1700000000"
SOURCE_MTIME = 1600000000


# -- reading an OCI layout the way a runtime would -----------------------------------------


@dataclass(frozen=True)
class Node:
    kind: str  # file, dir, symlink, hardlink, other
    mode: int
    uid: int
    gid: int
    linkname: str
    data: bytes
    mtime: int


def _blob(layout: Path, digest: str) -> Path:
    alg, _, hex_ = digest.partition(":")
    return layout / "blobs" / alg / hex_


def read_image(layout: Path, tag: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(manifest, config) of the image tagged ``tag`` in the OCI layout ``layout``."""
    index = json.loads((layout / "index.json").read_text())
    for desc in index["manifests"]:
        if desc.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag:
            manifest = json.loads(_blob(layout, desc["digest"]).read_bytes())
            config = json.loads(_blob(layout, manifest["config"]["digest"]).read_bytes())
            return manifest, config
    raise AssertionError(f"{tag!r} not in {layout}/index.json: {index}")


def _kind(info: tarfile.TarInfo) -> str:
    if info.isdir():
        return "dir"
    if info.issym():
        return "symlink"
    if info.islnk():
        return "hardlink"
    if info.isfile():
        return "file"
    return "other"


def image_tree(layout: Path, tag: str) -> dict[str, Node]:
    """The image's filesystem: every layer applied in order, OCI whiteouts honoured."""
    manifest, _ = read_image(layout, tag)
    tree: dict[str, Node] = {}
    for layer in manifest["layers"]:
        with tarfile.open(_blob(layout, layer["digest"]), mode="r:*") as tar:
            for info in tar:
                name = info.name.removeprefix("./").strip("/")
                if not name:
                    continue
                parent, _, base = name.rpartition("/")
                if base == ".wh..wh..opq":
                    for key in [k for k in tree if k.startswith(parent + "/")]:
                        del tree[key]
                    continue
                if base.startswith(".wh."):
                    gone = f"{parent}/{base[4:]}".lstrip("/")
                    for key in [k for k in tree if k == gone or k.startswith(gone + "/")]:
                        del tree[key]
                    continue
                data = b""
                if info.isfile():
                    f = tar.extractfile(info)
                    assert f is not None
                    data = f.read()
                tree[name] = Node(
                    _kind(info),
                    info.mode & 0o7777,
                    info.uid,
                    info.gid,
                    info.linkname,
                    data,
                    int(info.mtime),
                )
    return tree


def build(
    rb: Any,
    ctx: Path,
    tag: str = "img",
    *extra: str,
    check: bool = True,
    input: bytes | None = None,
) -> Any:
    """Build ``ctx`` into ``<workdir>/<tag>.oci`` (tag ``tag``) as the build user."""
    out = rb.workdir / f"{tag}.oci"
    return rb.run(
        "build",
        "--progress=plain",
        "--output",
        f"oci:{out}:{tag}",
        *extra,
        str(ctx),
        check=check,
        input=input,
        env={"SOURCE_DATE_EPOCH": EPOCH},
    )


def tree_of(rb: Any, tag: str) -> dict[str, Node]:
    return image_tree(rb.workdir / f"{tag}.oci", tag)


def file_at(tree: dict[str, Node], path: str) -> bytes:
    node = tree.get(path)
    assert node is not None, f"/{path} missing; image has {sorted(tree)}"
    assert node.kind == "file", f"/{path} is a {node.kind}"
    return node.data


def make_tar(files: dict[str, bytes | str], compress: str = "") -> bytes:
    """A tar archive (``compress`` "", "gz" or "xz"); "symlink:T" values make symlinks.
    Entries are owned by 1000:1000 so owner preservation is visible."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        dirs = sorted({str(Path(n).parent) for n in files} - {"."})
        for d in dirs:
            info = tarfile.TarInfo(d)
            info.type, info.mode, info.uid, info.gid = tarfile.DIRTYPE, 0o755, 1000, 1000
            tar.addfile(info)
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.uid = info.gid = 1000
            if isinstance(content, str) and content.startswith("symlink:"):
                info.type, info.linkname = tarfile.SYMTYPE, content.removeprefix("symlink:")
                info.mode = 0o777
                tar.addfile(info)
                continue
            data = content.encode() if isinstance(content, str) else content
            info.size = len(data)
            info.mode = 0o755 if name.endswith(".sh") else 0o644
            tar.addfile(info, io.BytesIO(data))
    if compress == "gz":
        return gzip.compress(raw.getvalue())
    if compress == "xz":
        return lzma.compress(raw.getvalue())
    return raw.getvalue()


# -- COPY ------------------------------------------------------------------------------------

COPY_CONTEXT: dict[str, str | bytes] = {
    "app/a.txt": "A\n",
    "app/sub/b.txt": "B\n",
    "app/link": "symlink:a.txt",
    "app/abs": "symlink:/etc/hostname",
    "app/dirlink": "symlink:sub",
    "single.txt": "single\n",
    "f1.txt": "one\n",
    "f2.txt": "two\n",
    "fx.md": "markdown\n",
}

COPY_DOCKERFILE = """\
FROM scratch
ENV NAME=world
ARG SRC=single.txt
COPY $SRC /var-dest/${SRC}.copy
COPY --link single.txt /linked/
COPY app /contents/
COPY app /nodest
COPY single.txt /intodir/
COPY single.txt /asfile
COPY f1.txt f2.txt /multi/
COPY *.txt /glob/
COPY f?.* /glob2/
WORKDIR /work
COPY single.txt rel/
COPY single.txt .
COPY single.txt /deep/missing/parents/file.txt
COPY --chmod=0640 single.txt /chmod/single.txt
COPY --chmod=0700 app /chmoddir/
COPY --chmod=0000 app /locked/
COPY --chown=1234:5678 single.txt /chown/single.txt
COPY --chown=42 f1.txt /chown/f1.txt
COPY <<EOF /heredoc/hello.txt
hello ${NAME}
EOF
COPY <<'EOF' /heredoc/raw.txt
hello ${NAME}
EOF
COPY --chmod=0755 <<EOF /heredoc/script.sh
#!/bin/sh
echo hi
EOF
"""


def test_copy_semantics(rb: Any) -> None:
    ctx = rb.make_context("ctx", {**COPY_CONTEXT, "Dockerfile": COPY_DOCKERFILE})
    os.utime(ctx / "single.txt", (SOURCE_MTIME, SOURCE_MTIME))
    build(rb, ctx)
    tree = tree_of(rb, "img")

    # A directory source copies its contents, with or without a trailing slash on dest.
    for top in ("contents", "nodest"):
        assert file_at(tree, f"{top}/a.txt") == b"A\n"
        assert file_at(tree, f"{top}/sub/b.txt") == b"B\n"
        assert f"{top}/app" not in tree
        assert tree[top].kind == "dir"
        # Symlinks inside a copied directory stay symlinks, targets untouched.
        assert tree[f"{top}/link"].kind == "symlink"
        assert tree[f"{top}/link"].linkname == "a.txt"
        assert tree[f"{top}/abs"].kind == "symlink"
        assert tree[f"{top}/abs"].linkname == "/etc/hostname"
        assert tree[f"{top}/dirlink"].kind == "symlink"
        assert tree[f"{top}/dirlink"].linkname == "sub"

    # A file goes into dest/ when dest ends with a slash, else becomes dest.
    assert file_at(tree, "intodir/single.txt") == b"single\n"
    assert tree["intodir"].kind == "dir"
    assert file_at(tree, "asfile") == b"single\n"

    # Several sources into a directory; wildcards expand in the context.
    assert file_at(tree, "multi/f1.txt") == b"one\n"
    assert file_at(tree, "multi/f2.txt") == b"two\n"
    assert sorted(k for k in tree if k.startswith("glob/")) == [
        "glob/f1.txt",
        "glob/f2.txt",
        "glob/single.txt",
    ]
    assert sorted(k for k in tree if k.startswith("glob2/")) == [
        "glob2/f1.txt",
        "glob2/f2.txt",
        "glob2/fx.md",
    ]

    # Relative destinations are relative to WORKDIR; missing parents are created 0755.
    assert tree["work"].kind == "dir"
    assert file_at(tree, "work/rel/single.txt") == b"single\n"
    assert file_at(tree, "work/single.txt") == b"single\n"
    assert file_at(tree, "deep/missing/parents/file.txt") == b"single\n"
    for parent in ("deep", "deep/missing", "deep/missing/parents"):
        assert tree[parent].kind == "dir"
        assert tree[parent].mode == 0o755

    # Variables expand in sources and destinations; --link copies the same way.
    assert file_at(tree, "var-dest/single.txt.copy") == b"single\n"
    assert file_at(tree, "linked/single.txt") == b"single\n"

    # A copied file keeps its mtime; directories the copy creates get SOURCE_DATE_EPOCH
    # (BuildKit's llb.WithCreatedTime).
    assert tree["asfile"].mtime == SOURCE_MTIME
    assert tree["deep/missing/parents"].mtime == int(EPOCH)
    assert tree["work"].mtime == int(EPOCH)

    # Modes come from the context unless --chmod; owners are 0:0 unless --chown.
    assert tree["asfile"].mode == 0o644
    assert (tree["asfile"].uid, tree["asfile"].gid) == (0, 0)
    assert tree["chmod/single.txt"].mode == 0o640
    assert tree["chmoddir/a.txt"].mode == 0o700
    assert tree["chmoddir/sub"].mode == 0o700
    assert tree["chmoddir/link"].kind == "symlink"
    # --chmod=0000 is a mode like any other (for the directory it creates too).
    locked = ("locked", "locked/a.txt", "locked/sub", "locked/sub/b.txt")
    assert [tree[p].mode for p in locked] == [0, 0, 0, 0]
    assert (tree["chown/single.txt"].uid, tree["chown/single.txt"].gid) == (1234, 5678)
    assert (tree["chown/f1.txt"].uid, tree["chown/f1.txt"].gid) == (42, 42)

    # Heredocs: unquoted bodies expand variables, quoted ones do not; default mode 0644.
    assert file_at(tree, "heredoc/hello.txt") == b"hello world\n"
    assert tree["heredoc/hello.txt"].mode == 0o644
    assert file_at(tree, "heredoc/raw.txt") == b"hello ${NAME}\n"
    assert file_at(tree, "heredoc/script.sh") == b"#!/bin/sh\necho hi\n"
    assert tree["heredoc/script.sh"].mode == 0o755


def test_copy_several_sources_need_a_directory(rb: Any) -> None:
    ctx = rb.make_context(
        "ctx",
        {
            "f1.txt": "one\n",
            "f2.txt": "two\n",
            "Dockerfile": "FROM scratch\nCOPY f1.txt f2.txt /notadir\n",
        },
    )
    proc = build(rb, ctx, check=False)
    assert proc.returncode != 0
    assert re.search(
        r"Dockerfile:2: .*more than one source file, the destination must be a directory "
        r"and end with a /",
        proc.stderr,
    ), proc.stderr
    assert not (rb.workdir / "img.oci").exists()


def test_copy_chown_by_name_uses_the_image_passwd(rb: Any) -> None:
    base = rb.make_context(
        "base",
        {
            "etc/passwd": "root:x:0:0:root:/root:/bin/sh\napp:x:1001:2002::/home/app:/bin/sh\n",
            "etc/group": "root:x:0:\nstaff:x:3003:\napp:x:2002:\n",
            "Dockerfile": "FROM scratch\nCOPY etc/ /etc/\n",
        },
    )
    rb.run("build", "-t", "users-base:1", str(base))
    child = rb.make_context(
        "child",
        {
            "f.txt": "f\n",
            "Dockerfile": (
                "FROM users-base:1\n"
                "COPY --chown=app:staff f.txt /named/both\n"
                "COPY --chown=app f.txt /named/user-only\n"
                "COPY --chown=app:3004 f.txt /named/mixed\n"
                "COPY --chown=app:staff f.txt /named/newdir/f.txt\n"
                "USER app\n"
                "WORKDIR /data/work\n"
                "USER 1234\n"
                "WORKDIR /numeric\n"
            ),
        },
    )
    build(rb, child)
    tree = tree_of(rb, "img")
    assert file_at(tree, "etc/passwd").startswith(b"root:")
    owners = {p: (tree[p].uid, tree[p].gid) for p in tree if p.startswith("named/")}
    assert owners["named/both"] == (1001, 3003)
    # BuildKit (solver/llbsolver/file/user_linux.go readUser): a user name without a
    # group takes the user's primary group from the image's /etc/passwd.
    assert owners["named/user-only"] == (1001, 2002)
    assert owners["named/mixed"] == (1001, 3004)
    assert owners["named/newdir/f.txt"] == (1001, 3003)
    # WORKDIR creates its directories (parents too) as the current USER (BuildKit's mkdir
    # WithUser), resolved the same way.
    assert (tree["data"].uid, tree["data"].gid) == (1001, 2002)
    assert (tree["data/work"].uid, tree["data/work"].gid) == (1001, 2002)
    assert (tree["numeric"].uid, tree["numeric"].gid) == (1234, 1234)


# -- ADD -------------------------------------------------------------------------------------


def test_add_unpacks_local_archives_and_copies_other_files(rb: Any) -> None:
    members: dict[str, bytes | str] = {
        "pkg/one.txt": "one\n",
        "pkg/bin/run.sh": "#!/bin/sh\n",
        "pkg/current": "symlink:one.txt",
    }
    ctx = rb.make_context(
        "ctx",
        {
            "gz.tar.gz": make_tar(members, "gz"),
            "xz.tar.xz": make_tar(members, "xz"),
            "plain.tar": make_tar(members),
            "named-by-content.bin": make_tar({"inner.txt": "inner\n"}, "gz"),
            "fake.tar.gz": "I only look like an archive\n",
            "notes.txt": "notes\n",
            "Dockerfile": (
                "FROM scratch\n"
                "ADD gz.tar.gz /gz/\n"
                "ADD xz.tar.xz /xz\n"
                "ADD plain.tar /plain/\n"
                "ADD named-by-content.bin /bycontent/\n"
                "ADD fake.tar.gz /fake/\n"
                "ADD notes.txt /notes/\n"
                "ADD --chown=7:8 gz.tar.gz /owned/\n"
            ),
        },
    )
    build(rb, ctx)
    tree = tree_of(rb, "img")
    for top in ("gz", "xz", "plain"):
        assert file_at(tree, f"{top}/pkg/one.txt") == b"one\n"
        assert file_at(tree, f"{top}/pkg/bin/run.sh") == b"#!/bin/sh\n"
        assert tree[f"{top}/pkg/bin/run.sh"].mode == 0o755
        assert tree[f"{top}/pkg/current"].kind == "symlink"
        assert tree[f"{top}/pkg/current"].linkname == "one.txt"
        # An unpacked archive keeps its owners (Docker's ADD reference).
        assert (tree[f"{top}/pkg/one.txt"].uid, tree[f"{top}/pkg/one.txt"].gid) == (1000, 1000)
        assert f"{top}/{top}.tar" not in tree
    assert file_at(tree, "bycontent/inner.txt") == b"inner\n"
    # Not an archive (whatever its name): copied as it is.
    assert file_at(tree, "fake/fake.tar.gz") == b"I only look like an archive\n"
    assert file_at(tree, "notes/notes.txt") == b"notes\n"
    assert (tree["owned/pkg/one.txt"].uid, tree["owned/pkg/one.txt"].gid) == (7, 8)


# -- context selection -----------------------------------------------------------------------

IGNORE_CONTEXT: dict[str, str | bytes] = {
    "a.txt": "a\n",
    "debug.log": "noise\n",
    "keep.log": "kept\n",
    "secret/token": "s3cret\n",
    "README.md": "readme\n",
    "docs/a.md": "a\n",
    "docs/keep.md": "keep\n",
    "Dockerfile": "FROM scratch\nCOPY . /ctx/\n",
    ".dockerignore": "*.log\n!keep.log\nsecret/\nDockerfile\ndocs\n!docs/keep.md\n",
    "build.Dockerfile": "FROM scratch\nCOPY . /ctx/\n",
    "build.Dockerfile.dockerignore": "*.md\n",
}


def test_dockerignore_and_dockerfile_specific_ignore_file(rb: Any) -> None:
    ctx = rb.make_context("ctx", IGNORE_CONTEXT)
    build(rb, ctx, "default")
    tree = tree_of(rb, "default")
    assert file_at(tree, "ctx/a.txt") == b"a\n"
    assert file_at(tree, "ctx/keep.log") == b"kept\n"  # re-included by "!keep.log"
    assert file_at(tree, "ctx/README.md") == b"readme\n"
    assert "ctx/debug.log" not in tree
    assert not any(k.startswith("ctx/secret") for k in tree)
    # An ignored Dockerfile still builds; it is just not part of the context.
    assert "ctx/Dockerfile" not in tree
    # A file re-included below an ignored directory comes with its directory.
    assert file_at(tree, "ctx/docs/keep.md") == b"keep\n"
    assert "ctx/docs/a.md" not in tree

    # <Dockerfile>.dockerignore beside the Dockerfile wins over .dockerignore.
    build(rb, ctx, "specific", "-f", str(ctx / "build.Dockerfile"))
    tree = tree_of(rb, "specific")
    assert "ctx/README.md" not in tree
    assert file_at(tree, "ctx/debug.log") == b"noise\n"
    assert file_at(tree, "ctx/secret/token") == b"s3cret\n"


def test_dockerfile_from_stdin(rb: Any) -> None:
    ctx = rb.make_context("ctx", {"a.txt": "a\n", "Dockerfile": "FROM scratch\nCOPY missing /\n"})
    build(
        rb,
        ctx,
        "stdin",
        "-f",
        "-",
        input=b"FROM scratch\nCOPY a.txt /from-stdin.txt\nLABEL via=stdin\n",
    )
    tree = tree_of(rb, "stdin")
    assert file_at(tree, "from-stdin.txt") == b"a\n"
    _, config = read_image(rb.workdir / "stdin.oci", "stdin")
    assert config["config"]["Labels"] == {"via": "stdin"}


def test_containerfile_is_the_default_without_dockerfile(rb: Any) -> None:
    ctx = rb.make_context(
        "ctx",
        {
            "a.txt": "a\n",
            "Containerfile": "FROM scratch\nCOPY a.txt /from-containerfile.txt\n",
        },
    )
    build(rb, ctx, "cf")
    assert file_at(tree_of(rb, "cf"), "from-containerfile.txt") == b"a\n"
