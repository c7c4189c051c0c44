"""RootfsView: OCI whiteout/opaque merging, chroot-style symlink resolution, materialize."""

from __future__ import annotations

import io
import os
import stat
from pathlib import Path

import pytest

from rootbuild.errors import ImageError
from rootbuild.image.layer_extract import extract_layer
from rootbuild.image.layer_write import TarEntry, write_layer
from rootbuild.image.layermeta import LayerMeta
from rootbuild.image.rootfs import RootfsView, materialize


def f(path: str, data: bytes, **kw: object) -> TarEntry:
    return TarEntry(path, "file", size=len(data), source=lambda: io.BytesIO(data), **kw)  # type: ignore[arg-type]


def d(path: str, **kw: object) -> TarEntry:
    return TarEntry(path, "dir", **{"mode": 0o755, **kw})  # type: ignore[arg-type]


def sym(path: str, target: str) -> TarEntry:
    return TarEntry(path, "symlink", 0o777, linkname=target)


def wh(path: str) -> TarEntry:
    return TarEntry(path, "whiteout", 0)


def opq(path: str) -> TarEntry:
    return TarEntry(path, "opaque", 0)


def build(tmp: Path, *layers: list[TarEntry]) -> RootfsView:
    stack: list[tuple[Path, LayerMeta]] = []
    tmp.mkdir(exist_ok=True)
    for i, entries in enumerate(layers):
        out = io.BytesIO()
        write_layer(entries, out, compression="none")
        dest = tmp / f"layer{i}"
        res = extract_layer(io.BytesIO(out.getvalue()), dest, media_type_or_compression="none")
        stack.append((dest, res.meta))
    return RootfsView(stack)


def read(view: RootfsView, path: str) -> bytes:
    with view.open(path) as fh:
        return fh.read()


def test_whiteouts_opaque_and_replacement(tmp_path: Path) -> None:
    view = build(
        tmp_path,
        [
            d("etc"),
            f("etc/passwd", b"root"),
            f("etc/shadow", b"x"),
            d("opt"),
            f("opt/a", b"a"),
            d("var"),
            d("var/lib"),
            f("var/lib/db", b"db"),
            f("lower-file", b"lf"),
            d("lower-dir"),
            f("lower-dir/c", b"c"),
        ],
        [
            wh("etc/shadow"),
            opq("opt"),
            f("opt/b", b"b"),
            wh("var/lib"),
            f("etc/group", b"g"),
            d("lower-file"),
            f("lower-file/now", b"dir now"),
            f("lower-dir", b"file now"),
        ],
        [
            f("var/lib", b"a file over a whited-out dir"),
            wh("nonexistent"),
            f("etc/.hidden", b"h"),
            wh("etc/.hidden"),
        ],  # a whiteout never hides its own layer's entry
    )
    assert view.listdir("/etc") == [".hidden", "group", "passwd"]
    assert view.lookup("/etc/shadow") is None
    assert view.listdir("/opt") == ["b"] and view.lookup("/opt/a") is None
    assert read(view, "/var/lib") == b"a file over a whited-out dir"
    assert view.listdir("/lower-file") == ["now"]
    lower_dir = view.lookup("lower-dir")
    assert lower_dir is not None and lower_dir.kind == "file" and lower_dir.layer == 1
    assert view.lookup("lower-dir/c") is None
    assert view.listdir("/") == ["etc", "lower-dir", "lower-file", "opt", "var"]
    passwd = view.lookup("etc/passwd")
    assert passwd is not None and passwd.layer == 0 and read(view, "/etc/passwd") == b"root"


def test_opaque_root_and_implicit_dirs_take_lower_attributes(tmp_path: Path) -> None:
    view = build(
        tmp_path,
        [d("usr", mode=0o750, uid=7, mtime=99), f("usr/old", b"o"), f("gone", b"g")],
        [f("usr/new", b"n")],  # "usr" only implied here
    )
    usr = view.lookup("/usr")
    assert usr is not None and (usr.mode, usr.uid, usr.mtime, usr.layer) == (0o750, 7, 99, 1)
    assert view.listdir("usr") == ["new", "old"]
    view2 = build(tmp_path / "2", [f("gone", b"g")], [opq(""), f("kept", b"k")])
    assert view2.listdir("/") == ["kept"]


def test_symlinks_resolve_inside_the_image(tmp_path: Path) -> None:
    outside = tmp_path / "host-secret"
    outside.write_bytes(b"HOST")
    view = build(
        tmp_path,
        [
            d("usr"),
            d("usr/bin"),
            f("usr/bin/tool", b"T", mode=0o755),
            sym("bin", "/usr/bin"),
            d("etc"),
            d("etc/alternatives"),
            sym("etc/alternatives/tool", "/usr/bin/tool"),
            sym("escape", "../../../../.." + str(outside)),
            sym("abs", str(outside)),
            sym("rel", "usr/../usr/bin/./tool"),
            sym("loop1", "loop2"),
            sym("loop2", "/loop1"),
            sym("dangling", "/nope"),
            f("plain", b"p"),
        ],
    )
    for path in (
        "/bin/tool",
        "bin/tool",
        "/etc/alternatives/tool",
        "/rel",
        "/bin/../bin/tool",
        "/../../bin/tool",
    ):
        e = view.lookup(path)
        assert e is not None and e.path == "usr/bin/tool" and e.kind == "file", path
    link = view.lookup("/bin", follow=False)
    assert link is not None and link.kind == "symlink" and link.linkname == "/usr/bin"
    # Symlinks aimed at host paths resolve against the image root: not found, never the host.
    assert view.lookup("/escape") is None and view.lookup("/abs") is None
    with pytest.raises(ImageError, match=r"^open '/abs' in image: no such file or directory$"):
        view.open("/abs")
    with pytest.raises(ImageError, match=r"too many levels of symbolic links"):
        view.lookup("/loop1")
    assert view.lookup("/loop1", follow=False) is not None
    assert view.lookup("/dangling") is None
    assert view.lookup("/plain/x") is None  # a file as a directory
    assert view.realpath("/bin/new/dir/../file") == "usr/bin/new/file"
    assert view.realpath("/etc/alternatives/tool") == "usr/bin/tool"
    with pytest.raises(ImageError, match=r"'plain' is not a directory"):
        view.realpath("/plain/x")


def test_hardlinks_show_their_inode(tmp_path: Path) -> None:
    view = build(
        tmp_path, [f("a", b"data", mode=0o4711, uid=3), TarEntry("b", "hardlink", linkname="a")]
    )
    b = view.lookup("b")
    assert b is not None and (b.kind, b.mode, b.uid, b.size, b.hardlink_to) == (
        "file",
        0o4711,
        3,
        4,
        "a",
    )
    assert read(view, "b") == b"data"


def test_walk_listdir_and_small_files(tmp_path: Path) -> None:
    view = build(
        tmp_path,
        [
            d("etc"),
            f("etc/passwd", b"root:x:0:0::/root:/bin/sh\n"),
            d("etc/skel"),
            f("etc/skel/.bashrc", b""),
            sym("link", "etc"),
        ],
    )
    assert [e.path for e in view.walk("/")] == [
        "",
        "etc",
        "etc/passwd",
        "etc/skel",
        "etc/skel/.bashrc",
        "link",
    ]
    assert [e.path for e in view.walk("/link")] == [
        "etc",
        "etc/passwd",
        "etc/skel",
        "etc/skel/.bashrc",
    ]
    assert view.read_small_file("/link/passwd", 100).startswith(b"root:")
    with pytest.raises(ImageError, match=r"^read '/etc/passwd' in image: larger than 5 bytes$"):
        view.read_small_file("/etc/passwd", 5)
    with pytest.raises(ImageError, match="not a directory"):
        view.listdir("/etc/passwd")
    with pytest.raises(ImageError, match="no such file"):
        view.listdir("/nope")
    with pytest.raises(ImageError, match="not a regular file"):
        view.open("/etc")


def test_materialize(tmp_path: Path) -> None:
    canary = tmp_path / "canary"
    canary.mkdir()
    (canary / "token").write_bytes(b"TOKEN")
    view = build(
        tmp_path,
        [
            d("bin"),
            f("bin/su", b"su", mode=0o4755, mtime=1000),
            d("dev"),
            TarEntry("dev/null", "char", 0o666, devmajor=1, devminor=3),
            TarEntry("dev/fifo", "fifo", 0o600),
            d("tmp", mode=0o1777),
            d("ro", mode=0o555),
            f("ro/file", b"r", mode=0o444),
            sym("out", str(canary)),
            sym("out-token", str(canary / "token")),
            f("bin/sudo", b"sudo"),
            TarEntry("bin/sudo2", "hardlink", linkname="bin/sudo"),
        ],
        [f("out-token", b"replaced in an upper layer")],
    )
    dest = tmp_path / "export"
    skipped = materialize(view, dest)
    assert skipped == ["dev/fifo", "dev/null"]
    assert (dest / "bin/su").read_bytes() == b"su"
    st = os.lstat(dest / "bin/su")
    assert stat.S_IMODE(st.st_mode) == 0o755 and st.st_mtime == 1000
    assert stat.S_IMODE(os.lstat(dest / "tmp").st_mode) == 0o1777
    assert stat.S_IMODE(os.lstat(dest / "ro").st_mode) == 0o555
    assert (dest / "ro/file").read_bytes() == b"r"
    assert os.readlink(dest / "out") == str(canary)
    assert not (dest / "out-token").is_symlink()
    assert (dest / "out-token").read_bytes() == b"replaced in an upper layer"
    assert os.stat(dest / "bin/sudo").st_ino == os.stat(dest / "bin/sudo2").st_ino
    assert sorted(os.listdir(canary)) == ["token"] and (canary / "token").read_bytes() == b"TOKEN"
    (dest / "x").mkdir()
    with pytest.raises(ImageError, match="not empty"):
        materialize(view, dest)
    os.chmod(dest / "ro", 0o755)  # let pytest clean up
