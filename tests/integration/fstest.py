"""Tree snapshots and comparisons for the overlay conformance suite (containerd's fstest).

Job: describe a directory tree (a plain directory, a FUSE mount, or the merged view of a
stack of extracted layers) as ``{relative path: Node}`` with what the suite compares, and
list the differences between two such descriptions as readable lines.

Rules:
- Compared: kind, permission bits incl. setuid/setgid/sticky, numeric owner, size and
  sha256 of regular files, symlink targets, device numbers, xattrs in ``user.*`` and
  ``security.capability``, link counts and which names share an inode. Never times, unless a
  case asks for ``mtime`` explicitly (``compare(..., fields=...)``).
- Snapshots of real trees use ``lstat``/``l*xattr`` only: nothing is followed, FIFOs and
  devices are never opened.
- A plain directory made by an unprivileged user cannot hold device nodes; the driver stands
  in regular placeholder files for them and passes their inode numbers in ``devices``, so the
  placeholder is described as the device it stands for wherever it is renamed or linked.
- Importable by the in-namespace driver (no pytest, no rootbuild imports at module level).
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

XATTR_KEEP = ("user.", "security.capability")
DEFAULT_FIELDS = ("kind", "mode", "uid", "gid", "size", "digest", "target", "rdev", "xattrs",
                  "nlink", "links")
_KINDS = {
    stat.S_IFREG: "file", stat.S_IFDIR: "dir", stat.S_IFLNK: "symlink", stat.S_IFCHR: "char",
    stat.S_IFBLK: "block", stat.S_IFIFO: "fifo", stat.S_IFSOCK: "socket",
}


@dataclass(frozen=True)
class Node:
    """One path of a tree. ``links`` lists the OTHER names of the same inode in the tree
    (non-directories only); ``rdev`` is (major, minor) for devices."""

    kind: str
    mode: int
    uid: int
    gid: int
    size: int = 0
    digest: str = ""
    target: str = ""
    rdev: tuple[int, int] = (0, 0)
    xattrs: tuple[tuple[str, str], ...] = ()
    nlink: int = 1
    links: tuple[str, ...] = ()
    mtime_ns: int = 0

    def to_json(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


Snapshot = dict[str, Node]


def keep_xattr(name: str) -> bool:
    return name.startswith(XATTR_KEEP[0]) or name == XATTR_KEEP[1]


def file_digest(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        while chunk := os.read(fd, 1 << 20):
            h.update(chunk)
    finally:
        os.close(fd)
    return h.hexdigest()


def _xattrs(path: str) -> tuple[tuple[str, str], ...]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return ()
    out = []
    for name in names:
        if keep_xattr(name):
            try:
                out.append((name, os.getxattr(path, name, follow_symlinks=False).hex()))
            except OSError as exc:
                out.append((name, f"<error {exc.errno}>"))
    return tuple(sorted(out))


def snapshot_dir(
    root: str | os.PathLike[str],
    devices: Mapping[int, tuple[str, int, int]] | None = None,
) -> Snapshot:
    """Describe the tree at ``root`` (the root itself is ``""``). ``devices`` maps inode
    numbers of placeholder files to (kind, major, minor)."""
    devices = devices or {}
    root = os.fspath(root)
    snap: Snapshot = {}
    inodes: dict[tuple[int, int], list[str]] = {}
    todo = [""]
    while todo:
        rel = todo.pop()
        path = os.path.join(root, rel) if rel else root
        st = os.lstat(path)
        kind = _KINDS.get(stat.S_IFMT(st.st_mode), "unknown")
        node = Node(
            kind=kind, mode=stat.S_IMODE(st.st_mode), uid=st.st_uid, gid=st.st_gid,
            nlink=st.st_nlink, xattrs=_xattrs(path), mtime_ns=st.st_mtime_ns,
        )
        if kind == "file" and st.st_ino in devices:
            dkind, major, minor = devices[st.st_ino]
            node = replace(node, kind=dkind, rdev=(major, minor))
        elif kind == "file":
            node = replace(node, size=st.st_size, digest=file_digest(path))
        elif kind == "symlink":
            node = replace(node, target=os.readlink(path))
        elif kind in ("char", "block"):
            node = replace(node, rdev=(os.major(st.st_rdev), os.minor(st.st_rdev)))
        elif kind == "dir":
            todo.extend(os.path.join(rel, n) if rel else n for n in os.listdir(path))
        if kind != "dir":
            inodes.setdefault((st.st_dev, st.st_ino), []).append(rel)
        snap[rel] = node
    return _with_links(snap, inodes.values())


def _with_links(snap: Snapshot, groups: Iterable[list[str]]) -> Snapshot:
    for names in groups:
        if len(names) > 1:
            for name in names:
                snap[name] = replace(snap[name], links=tuple(sorted(n for n in names if n != name)))
    return snap


def snapshot_view(view: Any) -> Snapshot:
    """Describe a ``rootbuild.image.rootfs.RootfsView`` the same way: link counts are the
    visible names of one inode (a layer's hardlink group), directories count 2 + subdirs."""
    snap: Snapshot = {}
    groups: dict[tuple[int, str], list[str]] = {}
    subdirs: dict[str, int] = {}
    for e in view.walk(""):
        node = Node(
            kind=e.kind, mode=e.mode & 0o7777, uid=e.uid, gid=e.gid,
            xattrs=tuple(sorted((k, v.hex()) for k, v in e.xattrs if keep_xattr(k))),
            mtime_ns=e.mtime_ns if e.mtime_ns is not None else e.mtime * 1_000_000_000,
        )
        if e.kind == "file":
            h = hashlib.sha256()
            with view.open_entry(e) as f:
                while chunk := f.read(1 << 20):
                    h.update(chunk)
            node = replace(node, size=e.size, digest=h.hexdigest())
        elif e.kind == "symlink":
            node = replace(node, target=e.linkname)
        elif e.kind in ("char", "block"):
            node = replace(node, rdev=(e.devmajor, e.devminor))
        if e.kind not in ("dir", "symlink"):  # a layer's hardlink group is one inode
            groups.setdefault((e.layer, e.hardlink_to or e.path), []).append(e.path)
        if e.kind == "dir":
            subdirs.setdefault(e.path, 0)
            if e.path:
                parent = e.path.rpartition("/")[0]
                subdirs[parent] = subdirs.get(parent, 0) + 1
        snap[e.path] = node
    for path, count in subdirs.items():
        snap[path] = replace(snap[path], nlink=2 + count)
    for names in groups.values():
        for name in names:
            snap[name] = replace(snap[name], nlink=len(names))
    return _with_links(snap, groups.values())


def compare(
    left: Snapshot,
    right: Snapshot,
    *,
    names: tuple[str, str] = ("plain", "overlay"),
    fields: Iterable[str] = DEFAULT_FIELDS,
    ignore: Iterable[str] = (),
    dir_nlink: bool = True,
) -> list[str]:
    """Differences between two snapshots as lines ``PATH: FIELD LEFT != RIGHT``; paths
    in ``ignore`` (and everything beneath them) are left out."""
    skip = tuple(ignore)

    def ignored(path: str) -> bool:
        return any(path == s or path.startswith(s + "/") for s in skip)

    out: list[str] = []
    wanted = tuple(fields)
    for path in sorted(set(left) | set(right)):
        if ignored(path):
            continue
        a, b = left.get(path), right.get(path)
        if a is None or b is None:
            where = names[1] if a is None else names[0]
            node = b if a is None else a
            assert node is not None
            out.append(f"/{path}: only in {where} ({node.kind})")
            continue
        for name in wanted:
            if name == "nlink" and a.kind == "dir" and not dir_nlink:
                continue
            va, vb = getattr(a, name), getattr(b, name)
            if va != vb:
                if name == "mode":
                    va, vb = oct(va), oct(vb)
                out.append(f"/{path}: {name} {va!r} ({names[0]}) != {vb!r} ({names[1]})")
    return out


def changed_paths(before: Snapshot, after: Snapshot) -> set[str]:
    """Paths whose description differs (added, removed or changed), times ignored."""
    out = set()
    for path in set(before) | set(after):
        a, b = before.get(path), after.get(path)
        if a is None or b is None or replace(a, mtime_ns=0, nlink=0) != replace(
            b, mtime_ns=0, nlink=0
        ):
            out.add(path)
    return out


def ancestors(path: str) -> list[str]:
    """"" and every parent directory of ``path`` ("a/b/c" -> ["", "a", "a/b"])."""
    parts = path.split("/")
    return ["/".join(parts[:i]) for i in range(len(parts))]


def dump(snap: Snapshot, path: str | Path) -> None:
    """For debugging a failure by hand: one line per path."""
    with open(path, "w", encoding="utf-8") as f:
        for rel in sorted(snap):
            f.write(f"/{rel} {snap[rel].to_json()}\n")
