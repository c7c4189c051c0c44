"""The overlay's pure model: merged lookups, whiteouts/opaque, copy-up decisions,
namespace bookkeeping, nlink and the change journal (OCI image-spec layer.md)."""

from __future__ import annotations

import errno
import io
import os
from pathlib import Path

import pytest

from rootbuild.fuse_overlay.backing import Backing
from rootbuild.fuse_overlay.diff import Change, ChangeSet, changes
from rootbuild.fuse_overlay.inodes import ROOT_INO
from rootbuild.fuse_overlay.journal import write_tree
from rootbuild.fuse_overlay.model import OverlayModel
from rootbuild.image.layer_extract import extract_layer
from rootbuild.image.layer_write import entries_from_extracted, write_layer
from rootbuild.image.layermeta import EntryMeta, LayerMeta

NOW = 5_000 * 10**9


def D(path: str, mode: int = 0o755, **kw: object) -> EntryMeta:
    return EntryMeta(path, "dir", mode, **kw)  # type: ignore[arg-type]


def F(path: str, mode: int = 0o644, size: int = 3, **kw: object) -> EntryMeta:
    return EntryMeta(path, "file", mode, size=size, **kw)  # type: ignore[arg-type]


def L(path: str, target: str) -> EntryMeta:
    return EntryMeta(path, "hardlink", 0o644, linkname=target)


def layer(
    *entries: EntryMeta, whiteouts: tuple[str, ...] = (), opaque: tuple[str, ...] = ()
) -> LayerMeta:
    return LayerMeta.build(entries, whiteouts, opaque)


def walk(m: OverlayModel, path: str) -> int:
    ino = ROOT_INO
    for comp in path.split("/") if path else []:
        node = m.child(ino, comp)
        assert node is not None, path
        ino = node.ino
    return ino


def exists(m: OverlayModel, path: str) -> bool:
    try:
        walk(m, path)
    except AssertionError:
        return False
    return True


def parent_and_name(m: OverlayModel, path: str) -> tuple[int, str]:
    parent, _, name = path.rpartition("/")
    return walk(m, parent), name


def by_path(cs: ChangeSet) -> dict[str, Change]:
    return {c.entry.path: c for c in cs.changes}


BASE = layer(
    D("etc"),
    F("etc/passwd", size=10),
    F("etc/shadow", 0o640, gid=42),
    D("usr"),
    D("usr/bin"),
    F("usr/bin/a", 0o755, size=100),
    L("usr/bin/b", "usr/bin/a"),
    D("usr/lib"),
    F("usr/lib/x"),
    D("opt", 0o700, uid=7),
    D("opt/sub"),
    F("opt/sub/f"),
    F("opt/g"),
    EntryMeta("dev", "dir", 0o755),
    EntryMeta("dev/null", "char", 0o666, devmajor=1, devminor=3),
    EntryMeta("lnk", "symlink", 0o777, linkname="/etc/passwd"),
)
TOP = layer(
    D("etc", 0o750, implicit=True),
    F("etc/passwd", 0o600, size=20),
    D("usr", implicit=True),  # the extractor records parents it had to create
    D("usr/lib"),
    F("usr/lib/y"),
    whiteouts=("etc/shadow",),
    opaque=("usr/lib",),
)


def model(*metas: LayerMeta) -> OverlayModel:
    return OverlayModel(list(metas) or [BASE, TOP], NOW)


# -- merged lookups --------------------------------------------------------------------------


def test_topmost_entry_wins_and_directories_merge() -> None:
    m = model()
    passwd = m.get(walk(m, "etc/passwd"))
    assert (passwd.perm, passwd.size, passwd.lower) == (0o600, 20, (1, "etc/passwd"))
    assert m.get(walk(m, "etc")).perm == 0o755  # implicit in TOP: BASE's explicit dir
    assert [n for n, _ in m.listdir(walk(m, "usr/bin"))] == ["a", "b"]


def test_whiteout_and_opaque_hide_lower_entries() -> None:
    m = model()
    assert not exists(m, "etc/shadow")
    assert [n for n, _ in m.listdir(walk(m, "usr/lib"))] == ["y"]  # x hidden by opaque


def test_special_files_and_symlinks_are_virtual() -> None:
    m = model()
    null = m.get(walk(m, "dev/null"))
    assert (null.kind, null.rdev, null.perm, null.lower) == ("char", (1, 3), 0o666, None)
    lnk = m.get(walk(m, "lnk"))
    assert (lnk.kind, lnk.target, lnk.size) == ("symlink", "/etc/passwd", 11)


def test_lookup_counts_and_dot_entries() -> None:
    m = model()
    usr = m.lookup(ROOT_INO, "usr")
    assert usr is not None and usr.lookups == 1
    assert m.lookup(usr.ino, "..") is m.get(ROOT_INO)
    assert m.lookup(usr.ino, "missing") is None
    with pytest.raises(OSError) as info:
        m.lookup(walk(m, "etc/passwd"), "x")
    assert info.value.errno == errno.ENOTDIR


# -- hardlinks and copy-up ---------------------------------------------------------------------


def test_lower_hardlinks_are_one_inode_with_nlink_two() -> None:
    m = model()
    a, b = walk(m, "usr/bin/a"), walk(m, "usr/bin/b")
    assert a == b
    node = m.get(a)
    assert m.nlink(node) == 2
    assert m.needs_copy_up(node)
    m.copied_up(a, m.alloc_data())
    assert not m.needs_copy_up(node) and node.lower is None
    assert walk(m, "usr/bin/b") == a and m.nlink(node) == 2


def test_hardlink_group_across_directories_loads_every_name() -> None:
    base = layer(D("x"), F("x/f"), D("y"), L("y/g", "x/f"))
    m = model(base)
    node = m.get(walk(m, "x/f"))  # loading only x must still count y/g
    assert m.nlink(node) == 2
    assert walk(m, "y/g") == node.ino


def test_hidden_hardlink_name_does_not_count() -> None:
    base = layer(D("x"), F("x/f"), L("x/g", "x/f"))
    top = layer(D("x", implicit=True), whiteouts=("x/g",))
    m = model(base, top)
    assert m.nlink(m.get(walk(m, "x/f"))) == 1


def test_metadata_changes_never_need_a_copy() -> None:
    m = model()
    ino = walk(m, "etc/passwd")
    m.setattr(ino, NOW, perm=0o4755, uid=33, gid=33)
    m.setxattr(ino, "security.capability", b"\x01\x00\x00\x02", NOW)
    node = m.get(ino)
    assert node.data is None and node.lower == (1, "etc/passwd")
    c = by_path(changes(m))["etc/passwd"]
    assert (c.entry.mode, c.entry.uid, c.entry.gid, c.lower) == (0o4755, 33, 33, (1, "etc/passwd"))
    assert c.entry.xattrs == (("security.capability", b"\x01\x00\x00\x02"),)


def test_truncate_requires_copy_up_first() -> None:
    m = model()
    ino = walk(m, "etc/passwd")
    with pytest.raises(OSError):
        m.setattr(ino, NOW, size=0)
    m.copied_up(ino, m.alloc_data())
    assert m.setattr(ino, NOW, size=0).size == 0


# -- namespace operations ------------------------------------------------------------------


def test_unlink_rmdir_and_enotempty_across_layers() -> None:
    m = model()
    opt = walk(m, "opt")
    with pytest.raises(OSError) as info:
        m.rmdir(ROOT_INO, "opt", NOW)
    assert info.value.errno == errno.ENOTEMPTY
    sub = walk(m, "opt/sub")
    m.unlink(sub, "f", NOW)
    m.rmdir(opt, "sub", NOW)
    m.unlink(opt, "g", NOW)
    assert m.nlink(m.get(ROOT_INO)) == 2 + 4  # etc usr opt dev
    m.rmdir(ROOT_INO, "opt", NOW)
    assert m.nlink(m.get(ROOT_INO)) == 2 + 3
    assert not exists(m, "opt")
    cs = changes(m)
    assert cs.whiteouts == {"opt"} and "opt" not in by_path(cs)


def test_unlink_of_one_hardlink_name_keeps_the_other() -> None:
    m = model()
    node = m.get(walk(m, "usr/bin/a"))
    assert m.unlink(walk(m, "usr/bin"), "b", NOW) == []
    assert m.nlink(node) == 1
    cs = changes(m)
    assert cs.whiteouts == {"usr/bin/b"}
    assert set(by_path(cs)) == {"usr", "usr/bin"}  # a is unchanged: stays in the lower


def test_data_is_freed_only_after_last_link_forget_and_release() -> None:
    m = model()
    n = m.alloc_data()
    node = m.create(ROOT_INO, "new", "file", 0o644, 0, 0, NOW, data=n)
    m.opened(node)
    assert m.unlink(ROOT_INO, "new", NOW) == []
    assert m.forget(node.ino, 1) == []  # still open
    assert m.released(node.ino) == [n]
    assert node.ino not in m.inodes
    assert "new" not in by_path(changes(m))


def test_invalid_names_are_refused() -> None:
    m = model()
    for bad in ("", ".", "..", "a/b", "a\x00b", ".wh.x", ".wh..wh..opq"):
        with pytest.raises(OSError) as info:
            m.create(ROOT_INO, bad, "dir", 0o755, 0, 0, NOW)
        assert info.value.errno == errno.EINVAL
    with pytest.raises(OSError) as info:
        m.create(ROOT_INO, "etc", "dir", 0o755, 0, 0, NOW)
    assert info.value.errno == errno.EEXIST


def test_setgid_directory_passes_group_and_bit() -> None:
    m = model()
    d = m.create(ROOT_INO, "sg", "dir", 0o2775, 0, 50, NOW)
    f = m.create(d.ino, "f", "file", 0o644, 1000, 1000, NOW, data=m.alloc_data())
    sub = m.create(d.ino, "sub", "dir", 0o755, 1000, 1000, NOW)
    assert (f.gid, f.perm) == (50, 0o644)
    assert (sub.gid, sub.perm) == (50, 0o2755)


def test_rename_noreplace_exchange_and_errors() -> None:
    m = model()
    etc = walk(m, "etc")
    with pytest.raises(OSError) as info:
        m.rename(etc, "passwd", ROOT_INO, "lnk", NOW, noreplace=True)
    assert info.value.errno == errno.EEXIST
    with pytest.raises(OSError) as info:
        m.rename(ROOT_INO, "usr", walk(m, "usr/bin"), "u", NOW)
    assert info.value.errno == errno.EINVAL
    with pytest.raises(OSError) as info:
        m.rename(ROOT_INO, "lnk", ROOT_INO, "usr", NOW)
    assert info.value.errno == errno.EISDIR
    with pytest.raises(OSError) as info:
        m.rename(ROOT_INO, "dev", ROOT_INO, "opt", NOW)  # target not empty
    assert info.value.errno == errno.ENOTEMPTY
    passwd, lnk = walk(m, "etc/passwd"), walk(m, "lnk")
    m.rename(etc, "passwd", ROOT_INO, "lnk", NOW, exchange=True)
    assert walk(m, "etc/passwd") == lnk and walk(m, "lnk") == passwd
    cs = by_path(changes(m))
    assert cs["etc/passwd"].entry.kind == "symlink"
    assert cs["lnk"].entry.kind == "file" and cs["lnk"].lower == (1, "etc/passwd")


def test_rename_over_upper_target_frees_its_data_after_forget() -> None:
    m = model()
    n1, n2 = m.alloc_data(), m.alloc_data()
    a = m.create(ROOT_INO, "a", "file", 0o644, 0, 0, NOW, data=n1)
    b = m.create(ROOT_INO, "b", "file", 0o644, 0, 0, NOW, data=n2)
    assert m.rename(ROOT_INO, "a", ROOT_INO, "b", NOW) == []  # b still looked up
    assert m.forget(b.ino, 1) == [n2]
    assert walk(m, "b") == a.ino


def test_rename_between_names_of_one_inode_is_a_no_op() -> None:
    m = model()
    bin_ = walk(m, "usr/bin")
    m.rename(bin_, "a", bin_, "b", NOW)
    assert exists(m, "usr/bin/a") and exists(m, "usr/bin/b")


# -- the journal -----------------------------------------------------------------------------


def test_new_file_brings_its_parents_but_not_the_root() -> None:
    m = model()
    n = m.alloc_data()
    m.create(walk(m, "usr/bin"), "new", "file", 0o755, 3, 4, NOW, data=n)
    cs = changes(m)
    assert [c.entry.path for c in cs.changes] == ["usr", "usr/bin", "usr/bin/new"]
    new = cs.changes[-1]
    assert (new.entry.uid, new.entry.gid, new.entry.mode, new.data) == (3, 4, 0o755, n)
    assert cs.changes[0].entry.mtime == 0  # parents carry their (unchanged) attributes
    assert not cs.whiteouts and not cs.opaque_dirs


def test_rmdir_then_mkdir_is_opaque() -> None:
    m = model()
    opt = walk(m, "opt")
    m.unlink(walk(m, "opt/sub"), "f", NOW)
    m.rmdir(opt, "sub", NOW)
    m.create(opt, "sub", "dir", 0o700, 0, 0, NOW)
    cs = changes(m)
    assert cs.opaque_dirs == {"opt/sub"}
    assert "opt/sub" in by_path(cs) and "opt/sub/f" not in cs.whiteouts


def test_lower_directory_replaced_by_file_and_file_by_directory() -> None:
    m = model()
    usr_lib = walk(m, "usr/lib")
    m.unlink(usr_lib, "y", NOW)
    m.rmdir(walk(m, "usr"), "lib", NOW)
    m.create(walk(m, "usr"), "lib", "file", 0o644, 0, 0, NOW, data=m.alloc_data())
    m.unlink(ROOT_INO, "lnk", NOW)
    m.create(ROOT_INO, "lnk", "dir", 0o755, 0, 0, NOW)
    cs = changes(m)
    entries = by_path(cs)
    assert entries["usr/lib"].entry.kind == "file" and entries["lnk"].entry.kind == "dir"
    assert not cs.whiteouts and not cs.opaque_dirs  # a non-dir entry replaces the dir


def test_rename_of_lower_directory_emits_subtree_and_whiteout() -> None:
    m = model()
    m.rename(ROOT_INO, "opt", ROOT_INO, "moved", NOW)
    cs = changes(m)
    entries = by_path(cs)
    assert cs.whiteouts == {"opt"}
    assert set(entries) == {"moved", "moved/sub", "moved/sub/f", "moved/g"}
    assert entries["moved"].entry.mode == 0o700 and entries["moved"].entry.uid == 7
    assert entries["moved/sub/f"].lower == (0, "opt/sub/f")


def test_rename_onto_emptied_lower_directory_is_opaque() -> None:
    m = model()
    sub = walk(m, "opt/sub")
    m.unlink(sub, "f", NOW)
    m.create(ROOT_INO, "newdir", "dir", 0o755, 0, 0, NOW)
    m.rename(ROOT_INO, "newdir", walk(m, "opt"), "sub", NOW)
    cs = changes(m)
    assert cs.opaque_dirs == {"opt/sub"} and not cs.whiteouts  # newdir never was in a lower


def test_moved_hardlink_name_takes_its_partner_along() -> None:
    m = model()
    m.rename(walk(m, "usr/bin"), "b", ROOT_INO, "b2", NOW)
    cs = by_path(changes(m))
    assert cs["b2"].entry.kind == "file" and cs["b2"].lower == (0, "usr/bin/a")
    assert cs["usr/bin/a"].entry.kind == "hardlink"
    assert cs["usr/bin/a"].entry.linkname == "b2"
    assert "usr/bin" in cs and "usr" in cs


def test_new_hardlink_to_lower_file_emits_both_names() -> None:
    m = model()
    m.link(walk(m, "etc/passwd"), ROOT_INO, "pw", NOW)
    cs = by_path(changes(m))
    assert cs["etc/passwd"].entry.kind == "file" and cs["pw"].entry.kind == "hardlink"
    assert cs["pw"].entry.linkname == "etc/passwd"


def test_journal_does_not_walk_untouched_directories() -> None:
    entries = [D("big")]
    for i in range(50):
        entries.append(D(f"big/d{i}"))
        entries.extend(F(f"big/d{i}/f{j}") for j in range(20))
    m = model(layer(*entries))
    m.create(ROOT_INO, "new", "file", 0o644, 0, 0, NOW, data=m.alloc_data())
    cs = changes(m)
    assert [c.entry.path for c in cs.changes] == ["new"]
    big = m.child(ROOT_INO, "big")
    assert big is not None and big.children is None  # never loaded


def test_xattr_rules() -> None:
    m = model()
    ino = walk(m, "etc/passwd")
    with pytest.raises(OSError) as info:
        m.setxattr(ino, "system.posix_acl_access", b"x", NOW)
    assert info.value.errno == errno.EOPNOTSUPP
    with pytest.raises(OSError) as info:
        m.getxattr(ino, "user.a")
    assert info.value.errno == errno.ENODATA
    m.setxattr(ino, "user.a", b"1", NOW)
    assert m.listxattr(ino) == ["user.a"] and m.getxattr(ino, "user.a") == b"1"
    m.removexattr(ino, "user.a", NOW)
    assert m.listxattr(ino) == []


def test_fifo_device_and_socket_in_journal() -> None:
    m = model()
    m.create(ROOT_INO, "p", "fifo", 0o600, 0, 0, NOW)
    m.create(ROOT_INO, "c", "char", 0o600, 0, 0, NOW, rdev=(4, 5))
    m.create(ROOT_INO, "s", "socket", 0o600, 0, 0, NOW)
    cs = by_path(changes(m))
    assert cs["p"].entry.kind == "fifo"
    assert (cs["c"].entry.devmajor, cs["c"].entry.devminor) == (4, 5)
    assert "s" not in cs  # tar cannot carry sockets


# -- journal output on disk (tmp_path only; round trip through write_layer/extract) -----------


def test_write_tree_matches_extract_of_its_own_layer(tmp_path: Path) -> None:
    lower_dir = tmp_path / "lower"
    lower_dir.mkdir()
    (lower_dir / "etc").mkdir()
    (lower_dir / "etc" / "passwd").write_bytes(b"root:x:0:0")
    os.utime(lower_dir / "etc" / "passwd", ns=(0, 0))
    base = layer(D("etc"), F("etc/passwd", size=10), D("gone"))
    (lower_dir / "gone").mkdir()
    work = tmp_path / "work"
    work.mkdir()
    store = Backing([lower_dir], work)
    try:
        m = OverlayModel([base], NOW)
        etc = walk(m, "etc")
        m.setattr(walk(m, "etc/passwd"), NOW, perm=0o4755, uid=33)
        m.link(walk(m, "etc/passwd"), etc, "pw2", NOW)
        n = m.alloc_data()
        os.close(store.create_data(n))
        (work / "data" / str(n)).write_bytes(b"hello")
        f = m.create(etc, "new", "file", 0o600, 0, 0, NOW, data=n)
        m.wrote(f, 5)
        m.create(etc, "fifo", "fifo", 0o644, 0, 0, NOW)
        m.create(etc, "sl", "symlink", 0o777, 0, 0, NOW, target="../x")
        m.rmdir(ROOT_INO, "gone", NOW)
        meta = write_tree(changes(m), tmp_path / "tree", store)
    finally:
        store.close()
    assert meta.whiteouts == {"gone"}
    assert (tmp_path / "tree" / "etc" / "new").read_bytes() == b"hello"
    assert os.readlink(tmp_path / "tree" / "etc" / "sl") == "../x"
    st = os.stat(tmp_path / "tree" / "etc" / "passwd")
    assert st.st_nlink == 2 and st.st_mode & 0o7777 == 0o755  # no setuid on disk
    blob = io.BytesIO()
    write_layer(entries_from_extracted(tmp_path / "tree", meta), blob, compression="none")
    blob.seek(0)
    again = extract_layer(blob, tmp_path / "tree2", media_type_or_compression="none").meta
    assert dict(again.entries) == dict(meta.entries)
    assert again.whiteouts == meta.whiteouts and again.opaque_dirs == meta.opaque_dirs
