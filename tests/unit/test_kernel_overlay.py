"""The kernel overlay's pure parts: the upper directory as a change list
(``snapshot/upper_changes.py``) and each lower's ``under``/``over`` plan
(``snapshot/kernel_view.py``), on fake trees; and the registry's auto choice."""

from __future__ import annotations

from collections.abc import Iterable

import pytest

from rootbuild.engine.options import SNAPSHOTTER_CHOICES
from rootbuild.image.layermeta import EntryMeta, LayerMeta, resolve_entry
from rootbuild.snapshot import AUTO, CHOICES, SNAPSHOTTERS, KernelOverlaySnapshotter, kernel
from rootbuild.snapshot.kernel_view import needs_fix, plan_layer, root_entry
from rootbuild.snapshot.upper_changes import UpperNode, changes_from_upper

NS = 1_000_000_000
T = 1_700_000_000


def lower_of(metas: list[LayerMeta]):  # type: ignore[no-untyped-def]
    def lookup(path: str) -> EntryMeta | None:
        if not path:
            return root_entry(metas)
        found = resolve_entry(metas, path, range(len(metas) - 1, -1, -1))
        return None if found is None else found[1]
    return lookup


def base() -> LayerMeta:
    return LayerMeta.build([
        EntryMeta("", "dir", 0o755, mtime=T),
        EntryMeta("etc", "dir", 0o755, mtime=T),
        EntryMeta("etc/passwd", "file", 0o644, mtime=T, size=5),
        EntryMeta("etc/shadow", "file", 0o640, 0, 42, mtime=T, size=5),
        EntryMeta("srv", "dir", 0o755, mtime=T),
        EntryMeta("srv/d", "dir", 0o755, mtime=T),
        EntryMeta("srv/d/a", "file", 0o644, mtime=T),
        EntryMeta("usr", "dir", 0o755, mtime=T),
        EntryMeta("usr/bin", "dir", 0o755, mtime=T),
        EntryMeta("usr/bin/su", "file", 0o4755, mtime=T),
        EntryMeta("usr/bin/sudo", "hardlink", 0o4755, mtime=T, linkname="usr/bin/su"),
        EntryMeta("tmp", "dir", 0o1777, mtime=T),
        EntryMeta("home", "dir", 0o755, mtime=T),
        EntryMeta("home/node", "dir", 0o700, 1000, 1000, mtime=T),
    ])


def node(path: str, kind: str = "file", mode: int = 0o644, uid: int = 0, gid: int = 0,
         mtime: int = T + 5, **kw: object) -> UpperNode:
    return UpperNode(path, kind, mode, uid, gid, mtime * NS, **kw)  # type: ignore[arg-type]


def changes(nodes: Iterable[UpperNode], metas: list[LayerMeta]) -> LayerMeta:
    return changes_from_upper(nodes, lower_of(metas)).meta


# -- the upper as a change list ------------------------------------------------------------


def test_created_and_copied_up_entries_keep_the_steps_attributes() -> None:
    meta = changes([
        node("", "dir", 0o755, mtime=T),
        node("etc", "dir", 0o755, mtime=T + 9, xattrs=(("user.overlay.origin", b"x"),
                                                       ("user.overlay.impure", b"y"))),
        node("etc/shadow", "file", 0o600, 0, 42, size=7),
        node("etc/new", "file", 0o4750, 1000, 1000, size=3,
             xattrs=(("security.capability", b"cap"), ("user.mime", b"t"))),
        node("etc/link", "symlink", 0o777, linkname="../usr/bin/su"),
        node("etc/fifo", "fifo", 0o600),
    ], [base()])
    assert list(meta.entries) == ["etc", "etc/fifo", "etc/link", "etc/new", "etc/shadow"]
    assert meta.entries["etc"].xattrs == ()  # overlayfs's own bookkeeping is dropped
    new = meta.entries["etc/new"]
    assert (new.kind, new.mode, new.uid, new.gid, new.size, new.mtime) == (
        "file", 0o4750, 1000, 1000, 3, T + 5)
    assert new.xattrs == (("security.capability", b"cap"), ("user.mime", b"t"))
    assert meta.entries["etc/link"].linkname == "../usr/bin/su"
    assert meta.entries["etc/fifo"].kind == "fifo"
    assert meta.entries["etc/shadow"].gid == 42
    assert not meta.whiteouts and not meta.opaque_dirs


def test_whiteout_devices_and_xattrs_become_oci_whiteouts_only_for_lower_paths() -> None:
    meta = changes([
        node("etc", "dir", mtime=T + 1),
        node("etc/passwd", "char", 0, rdev=(0, 0)),
        node("etc/gone-in-step", "char", 0, rdev=(0, 0)),  # created and deleted: nothing
        node("srv", "dir"),
        node("srv/d", "file", 0, xattrs=(("user.overlay.whiteout", b""),)),
    ], [base()])
    assert meta.whiteouts == frozenset({"etc/passwd", "srv/d"})
    assert set(meta.entries) == {"etc", "srv"}


def test_a_real_device_in_the_upper_is_an_entry_not_a_whiteout() -> None:
    meta = changes([node("srv", "dir"), node("srv/null", "char", 0o666, rdev=(1, 3))],
                   [base()])
    e = meta.entries["srv/null"]
    assert (e.kind, e.devmajor, e.devminor) == ("char", 1, 3)
    assert not meta.whiteouts


def test_opaque_only_where_a_lower_directory_is_replaced() -> None:
    meta = changes([
        node("srv", "dir"),
        node("srv/d", "dir", xattrs=(("user.overlay.opaque", b"y"),)),
        node("srv/d/b", "file"),
        node("srv/fresh", "dir", xattrs=(("user.overlay.opaque", b"y"),)),
        node("usr", "dir"), node("usr/bin", "dir", xattrs=(("user.overlay.opaque", b"x"),)),
    ], [base()])
    assert meta.opaque_dirs == frozenset({"srv/d"})  # "x": holds xattr whiteouts only
    assert "srv/fresh" in meta.entries and "usr/bin" in meta.entries


def test_hard_links_are_one_file_and_links_to_its_first_name() -> None:
    meta = changes([
        node("srv", "dir"),
        node("srv/z", "file", size=4, inode=77, nlink=3),
        node("srv/a", "file", size=4, inode=77, nlink=3),
        node("srv/m", "file", size=4, inode=77, nlink=3),
        node("srv/solo", "file", size=1, inode=78, nlink=2),  # other name outside the upper
    ], [base()])
    assert meta.entries["srv/a"].kind == "file"
    assert [(meta.entries[p].kind, meta.entries[p].linkname) for p in ("srv/m", "srv/z")] == [
        ("hardlink", "srv/a"), ("hardlink", "srv/a")]
    assert meta.entries["srv/solo"].kind == "file"


def test_the_root_is_an_entry_only_when_its_attributes_changed() -> None:
    same = changes([node("", "dir", 0o755, mtime=T)], [base()])
    assert same.entries == {}
    # an entry added to / moves its mtime: the FUSE overlay does not emit / for that
    added = changes([node("", "dir", 0o755, mtime=T + 3), node("x", "file")], [base()])
    assert list(added.entries) == ["x"]
    chmod = changes([node("", "dir", 0o700, mtime=T + 3)], [base()])
    assert list(chmod.entries) == [""] and chmod.entries[""].mode == 0o700


def test_escaped_overlay_xattrs_are_the_steps_own_and_sockets_are_left_out() -> None:
    meta = changes([
        node("srv", "dir"),
        node("srv/f", "file", xattrs=(("user.overlay.overlay.mine", b"v"),
                                      ("user.overlay.origin", b"o"))),
        node("srv/sock", "socket"),
    ], [base()])
    assert meta.entries["srv/f"].xattrs == (("user.overlay.mine", b"v"),)
    assert "srv/sock" not in meta.entries


def test_entries_are_in_bytewise_tar_order() -> None:
    meta = changes([node("a-c", "file"), node("a", "dir"), node("a/b", "file")], [base()])
    assert list(meta.entries) == ["a", "a-c", "a/b"]


# -- each lower's under/over plan ----------------------------------------------------------


def test_plain_entries_need_nothing() -> None:
    assert not needs_fix(EntryMeta("f", "file", 0o644))
    assert not needs_fix(EntryMeta("f", "file", 0o755))
    assert not needs_fix(EntryMeta("d", "dir", 0o755))
    assert not needs_fix(EntryMeta("l", "symlink", 0o777, linkname="x"))
    assert needs_fix(EntryMeta("f", "file", 0o444))  # the extractor widened it to 0o644
    assert needs_fix(EntryMeta("d", "dir", 0o555))
    assert needs_fix(EntryMeta("f", "file", 0o4755))
    assert needs_fix(EntryMeta("f", "file", 0o644, 0, 42))
    assert needs_fix(EntryMeta("p", "fifo", 0o600))
    assert needs_fix(EntryMeta("f", "file", 0o644, xattrs=(("user.a", b"1"),)))


def test_over_fixes_owners_and_modes_with_parents_and_hard_links() -> None:
    plan = plan_layer(base(), [])
    fixed = {e.path: e for e in plan.fixes}
    assert set(fixed) == {"etc", "etc/shadow", "usr", "usr/bin", "usr/bin/su", "tmp", "home",
                          "home/node"}
    assert fixed["etc/shadow"].gid == 42 and fixed["tmp"].mode == 0o1777
    assert fixed["home/node"].uid == 1000
    assert plan.links == (("usr/bin/sudo", "usr/bin/su"),)
    assert [e.path for e in plan.fixes].index("usr") < [e.path for e in plan.fixes].index(
        "usr/bin/su")
    assert not plan.whiteouts and not plan.opaque and not plan.unrepresentable


def test_an_implicit_directory_shows_the_explicit_one_below() -> None:
    upper = LayerMeta.build([
        EntryMeta("home", "dir", 0o755, implicit=True),
        EntryMeta("home/node", "dir", 0o755, implicit=True),
        EntryMeta("home/node/x", "file", 0o644, 1000, 1000),
    ])
    plan = plan_layer(upper, [base()])
    fixed = {e.path: e for e in plan.fixes}
    assert fixed["home/node"].uid == 1000 and fixed["home/node"].mode == 0o700
    assert not fixed["home"].implicit and fixed["home"].mode == 0o755


def test_under_holds_whiteouts_and_opaque_dirs_that_hide_something() -> None:
    second = LayerMeta.build(
        [EntryMeta("srv", "dir", 0o755), EntryMeta("srv/d", "dir", 0o755)],
        whiteouts=["etc/passwd", "etc/never-there"], opaque_dirs=["srv/d", "srv/new"],
    )
    plan = plan_layer(second, [base()])
    assert plan.whiteouts == ("etc/passwd",)
    assert plan.opaque == ("srv/d",)
    dirs = {e.path: e for e in plan.under_dirs}
    assert set(dirs) == {"etc", "srv", "srv/d"}


def test_devices_and_foreign_xattrs_are_unrepresentable() -> None:
    layer = LayerMeta.build([
        EntryMeta("dev", "dir", 0o755), EntryMeta("dev/null", "char", 0o666, devmajor=1,
                                                  devminor=3),
        EntryMeta("f", "file", 0o644, xattrs=(("trusted.x", b"1"),)),
        EntryMeta("g", "file", 0o644, xattrs=(("user.overlay.opaque", b"y"),)),
        EntryMeta("h", "file", 0o755, xattrs=(("security.capability", b"c"),)),
    ])
    problems = plan_layer(layer, []).unrepresentable
    assert len(problems) == 3
    assert problems[0].startswith("/dev/null: a char device")
    assert any("trusted.x" in p for p in problems)
    assert any("user.overlay.opaque" in p and "overlayfs control" in p for p in problems)


# -- the registry ----------------------------------------------------------------------------


def test_every_snapshotter_is_a_choice_and_auto_keeps_fuse() -> None:
    assert CHOICES == ("auto", *SNAPSHOTTERS) == SNAPSHOTTER_CHOICES
    assert set(SNAPSHOTTERS) == {"fuse", "overlay"}
    assert AUTO == ("fuse",)  # until the kernel overlay passes the conformance suite


def test_the_build_flag_offers_every_choice() -> None:
    from rootbuild.cli import build_parser

    args = build_parser().parse_args(["build", "--snapshotter", "overlay", "."])
    assert args.snapshotter == "overlay"
    assert build_parser().parse_args(["build", "."]).snapshotter == "auto"
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    build_action = next(a for a in sub.choices["build"]._actions  # type: ignore[index]
                        if a.dest == "snapshotter")
    assert tuple(build_action.choices) == CHOICES  # type: ignore[arg-type]


def test_probe_says_the_kernel_is_too_old(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kernel, "_kernel_release", lambda: (5, 10))
    monkeypatch.setattr(kernel.platform, "release", lambda: "5.10.0-28-amd64")
    reason = KernelOverlaySnapshotter().probe()
    assert reason is not None and reason.startswith(
        "kernel 5.10.0-28-amd64 is too old: the kernel overlay needs 6.8+")
