"""The kernel overlay's upper directory as a step's change list (its layer's entries).

Job: ``changes_from_upper(nodes, lower)``: the upper directory of a kernel overlayfs
mount (mounted with ``userxattr``), walked parents first, translated into the same
``LayerMeta`` shape the FUSE overlay's journal gives (``fuse_overlay/diff.py``): entries in
bytewise path order with the attributes the step left, OCI whiteouts and opaque dirs.

Rules (overlayfs.rst, "whiteouts and opaque directories", "user xattr"):
- A character device 0/0, or a file with ``user.overlay.whiteout``, is a whiteout: an OCI
  whiteout when the lowers have that path, else nothing (created and deleted in the step).
- A directory with ``user.overlay.opaque=y`` that replaces a lower directory is opaque; the
  upper holds all of its content. ``opaque=x`` only says it holds xattr whiteouts.
- Other ``user.overlay.*`` xattrs are overlayfs's own bookkeeping (origin, impure, ...) and
  are dropped; ``user.overlay.overlay.X`` is the step's own ``user.overlay.X``, escaped.
- Every other upper entry is a change: the upper holds only what was created, written or
  copied up (with its parent directories). Several upper names of one inode are one file
  and hard links to its first name (tar order), as in ``diff.py``; sockets are left out.
- The root (the upper directory itself) is an entry only when its mode, owner or xattrs
  differ from the merged lowers' root (``kernel.py`` creates it with those): the FUSE
  overlay emits it only for such attribute changes, not for entries added or removed in
  it. (A step that only sets /'s mtime, ``touch /``, is the one case left out here.)
- Pure: the walk is done by ``kernel.py``; unit tests give a fake one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from rootbuild.image.layermeta import EntryMeta, LayerMeta

NS = 1_000_000_000
OVERLAY_PREFIX = "user.overlay."
ESCAPED_PREFIX = "user.overlay.overlay."
WHITEOUT_XATTR = "user.overlay.whiteout"
OPAQUE_XATTR = "user.overlay.opaque"


@dataclass(frozen=True)
class UpperNode:
    """One entry of the upper directory as ``lstat`` and ``listxattr`` show it (ids as
    the build's user namespace sees them)."""

    path: str  # "" for the upper directory itself
    kind: str  # file, dir, symlink, char, block, fifo, socket
    mode: int  # permission and special bits
    uid: int
    gid: int
    mtime_ns: int
    size: int = 0
    linkname: str = ""
    rdev: tuple[int, int] = (0, 0)
    inode: int = 0
    nlink: int = 1
    xattrs: tuple[tuple[str, bytes], ...] = ()


def _sort_key(path: str) -> bytes:
    return path.encode("utf-8", "surrogateescape")  # bytewise tar order, as diff.py


def is_whiteout(node: UpperNode) -> bool:
    if node.kind == "char" and node.rdev == (0, 0):
        return True
    return node.kind == "file" and any(k == WHITEOUT_XATTR for k, _ in node.xattrs)


def step_xattrs(xattrs: Iterable[tuple[str, bytes]]) -> tuple[tuple[str, bytes], ...]:
    """The xattrs the step set: overlayfs's own dropped, escaped ones unescaped."""
    out = []
    for name, value in xattrs:
        if name.startswith(ESCAPED_PREFIX):
            out.append((OVERLAY_PREFIX + name[len(ESCAPED_PREFIX):], value))
        elif not name.startswith(OVERLAY_PREFIX):
            out.append((name, value))
    return tuple(sorted(out))


def entry_of(node: UpperNode, path: str | None = None) -> EntryMeta:
    major, minor = node.rdev if node.kind in ("char", "block") else (0, 0)
    return EntryMeta(
        path=node.path if path is None else path,
        kind=node.kind,
        mode=node.mode,
        uid=node.uid,
        gid=node.gid,
        mtime=node.mtime_ns // NS,
        size=node.size if node.kind == "file" else 0,
        linkname=node.linkname if node.kind == "symlink" else "",
        devmajor=major,
        devminor=minor,
        xattrs=step_xattrs(node.xattrs),
    )


@dataclass(frozen=True)
class UpperChanges:
    """The layer's meta, and which upper path holds each file's content (the first name
    of every hard-link group; the others are ``hardlink`` entries)."""

    meta: LayerMeta
    sources: dict[str, str]


def changes_from_upper(
    nodes: Iterable[UpperNode], lower: Callable[[str], EntryMeta | None],
) -> UpperChanges:
    """The step's layer from the upper's ``nodes`` (any order); ``lower(path)`` is what
    the merged lowers show at ``path`` (None: nothing)."""
    entries: list[EntryMeta] = []
    whiteouts: set[str] = set()
    opaque: set[str] = set()
    groups: dict[int, list[UpperNode]] = {}
    for node in sorted(nodes, key=lambda n: _sort_key(n.path)):
        if is_whiteout(node):
            if lower(node.path) is not None:
                whiteouts.add(node.path)
            continue
        if node.kind == "socket":  # tar cannot carry sockets; Docker skips them too
            continue
        if node.path == "":
            root = lower("")
            mine = entry_of(node)
            if root is None or (root.mode, root.uid, root.gid, root.xattrs) != (
                    mine.mode, mine.uid, mine.gid, mine.xattrs):
                entries.append(mine)
            continue
        if node.kind == "dir":
            marked = dict(node.xattrs).get(OPAQUE_XATTR) == b"y"
            below = lower(node.path)
            if marked and below is not None and below.kind == "dir":
                opaque.add(node.path)
            entries.append(entry_of(node))
            continue
        if node.nlink > 1 and node.kind != "symlink":
            groups.setdefault(node.inode, []).append(node)
            if len(groups[node.inode]) > 1:
                continue
        entries.append(entry_of(node))
    sources = {e.path: e.path for e in entries if e.kind == "file"}
    for members in groups.values():
        first = members[0]  # sorted: the first name in tar order carries the content
        for other in members[1:]:
            e = entry_of(other)
            entries.append(EntryMeta(
                path=other.path, kind="hardlink", mode=e.mode, uid=e.uid, gid=e.gid,
                mtime=e.mtime, linkname=first.path, xattrs=e.xattrs,
            ))
    entries.sort(key=lambda e: _sort_key(e.path))
    return UpperChanges(LayerMeta.build(entries, whiteouts, opaque), sources)
