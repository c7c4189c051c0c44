"""The overlay's pure model: merged lookups over the lowers, the inode table, copy-up
decisions and the change journal. No I/O: the adapter (ops.py) does every syscall.

Rules:
- Lower layers (lowest first, as LayerMeta values) merge per the OCI image spec
  ("Whiteouts", layer.md): the topmost entry wins unless a higher layer whites the path
  out; a directory merges lower directories down to an opaque marker, a whiteout or a
  non-directory. A ``hardlink`` entry is its target's inode.
- Everything an unprivileged backing store cannot hold is virtual and lives here: kind,
  permission bits incl. setuid/setgid/sticky, owner, device numbers, xattrs, times, nlink.
  chmod/chown/utimens/setxattr of a lower file change only this model (no data copy).
- Directory tables load lazily, once, from a per-layer index (parent path -> names) built
  at start. Loading creates an inode for every child; a lower hardlink group is ONE inode
  (nlink = its visible names), and creating it loads the directories of all its names.
- Inode numbers are stable; an inode is dropped only when it has no name, no kernel
  lookup reference and no open handle (pyfuse3's ``forget`` contract). A dropped file
  returns its upper data number so the adapter can delete the backing file.
- Names are ``str`` (surrogateescape-decoded bytes); "", ".", "..", names with "/" or NUL
  and names starting with ".wh." (they would read as OCI whiteouts) are refused (EINVAL).
- Errors are ``OSError(errno, message)``; the adapter turns them into FUSE errors.
- The journal: attribute, content and directory-table changes mark inodes "touched";
  ``diff.changes(model)`` visits only those (see diff.py), so its cost grows with the
  change.
"""

from __future__ import annotations

import errno
import stat
from collections.abc import Iterable, Sequence

from rootbuild.image.layermeta import EntryMeta, LayerMeta, resolve_entry

ROOT_INO = 1
_NS = 1_000_000_000
FILE_KINDS = frozenset({"file", "dir", "symlink", "char", "block", "fifo", "socket"})
_IFMT = {
    "file": stat.S_IFREG,
    "dir": stat.S_IFDIR,
    "symlink": stat.S_IFLNK,
    "char": stat.S_IFCHR,
    "block": stat.S_IFBLK,
    "fifo": stat.S_IFIFO,
    "socket": stat.S_IFSOCK,
}
KIND_OF_IFMT = {v: k for k, v in _IFMT.items()}


def _err(code: int, what: str) -> OSError:
    return OSError(code, f"{errno.errorcode.get(code, code)}: {what}")


def join_path(parent: str, name: str) -> str:
    return f"{parent}/{name}" if parent else name


def sort_key(path: str) -> bytes:
    """Bytewise tar order (what write_layer sorts by)."""
    return path.encode("utf-8", "surrogateescape")


def check_name(name: str) -> None:
    """Refuse names a directory entry cannot have, and OCI whiteout look-alikes."""
    if name in ("", ".", "..") or "/" in name or "\x00" in name or name.startswith(".wh."):
        raise _err(errno.EINVAL, f"invalid name {name!r}")


class Inode:
    """One virtual inode. Directories have ``parent``/``name`` (0 when removed) and a
    lazily loaded ``children`` table; other kinds have ``links`` (parent ino, name)."""

    __slots__ = (
        "atime_ns",
        "children",
        "ctime_ns",
        "data",
        "dirty",
        "gid",
        "ino",
        "kind",
        "layers",
        "links",
        "lookups",
        "lower",
        "lower_listing",
        "lower_names",
        "mtime_ns",
        "name",
        "opens",
        "origin",
        "parent",
        "perm",
        "rdev",
        "size",
        "subdirs",
        "table_dirty",
        "target",
        "uid",
        "version",
        "xattrs",
    )

    def __init__(self, ino: int, kind: str, perm: int, uid: int, gid: int, time_ns: int):
        self.ino = ino
        self.kind = kind
        self.perm = perm & 0o7777
        self.uid = uid
        self.gid = gid
        self.size = 0
        self.atime_ns = self.mtime_ns = self.ctime_ns = time_ns
        self.rdev = (0, 0)
        self.target = ""
        self.xattrs: dict[str, bytes] = {}
        self.lookups = 0
        self.opens = 0
        self.version = 0
        self.data: int | None = None  # upper data store number (regular files)
        self.lower: tuple[int, str] | None = None  # (layer, path) holding the content
        self.lower_names: frozenset[str] = frozenset()  # non-dir: its original lower paths
        self.dirty = False  # attributes or content differ from the lower
        self.links: set[tuple[int, str]] = set()
        self.parent = 0
        self.name = ""
        self.origin: str | None = None  # dir: the lower path it stands for
        self.layers: tuple[int, ...] = ()  # dir: contributing lower layers, top first
        self.children: dict[str, int] | None = None
        self.lower_listing: frozenset[str] = frozenset()
        self.table_dirty = False
        self.subdirs = 0

    @property
    def st_mode(self) -> int:
        return _IFMT[self.kind] | self.perm

    @property
    def is_dir(self) -> bool:
        return self.kind == "dir"


_Found = tuple[int, EntryMeta, tuple[int, ...]]


class OverlayModel:
    """Virtual inode table over ``metas`` (lowest first) plus one writable upper."""

    def __init__(self, metas: Sequence[LayerMeta], now_ns: int) -> None:
        self._metas = list(metas)
        self._index: list[dict[str, list[str]]] = []
        self._groups: list[dict[str, list[str]]] = []  # primary -> all names of the inode
        for meta in self._metas:
            index: dict[str, list[str]] = {}
            groups: dict[str, list[str]] = {}
            for path, e in meta.entries.items():
                if path:
                    parent, _, name = path.rpartition("/")
                    index.setdefault(parent, []).append(name)
                if e.kind == "hardlink":
                    groups.setdefault(e.linkname, [e.linkname]).append(path)
            self._index.append(index)
            self._groups.append(groups)
        self.inodes: dict[int, Inode] = {}
        self._next_ino = ROOT_INO
        self._next_data = 1
        self._group_inodes: dict[tuple[int, str], int] = {}
        self._by_origin: dict[str, int] = {}
        self.touched: set[int] = set()
        layers = self._root_layers()
        found = self._explicit_dir("", layers)
        e = found[1] if found else EntryMeta("", "dir", 0o755)
        root = self._new_inode("dir", e, now_ns if found is None else None)
        root.parent, root.origin, root.layers = ROOT_INO, "", layers
        root.lookups = 1  # the kernel never forgets the root
        self._by_origin[""] = ROOT_INO

    # -- lower resolution (RootfsView's semantics, over metadata only) ----------------------

    def _root_layers(self) -> tuple[int, ...]:
        layers: list[int] = []
        for li in reversed(range(len(self._metas))):
            layers.append(li)
            if "" in self._metas[li].opaque_dirs:
                break
        return tuple(layers)

    def _explicit_dir(self, path: str, layers: Iterable[int]) -> tuple[int, EntryMeta] | None:
        for li in layers:
            e = self._metas[li].entries.get(path)
            if e is not None and e.kind == "dir" and not e.implicit:
                return li, e
        return None

    def _resolve_child(self, path: str, layers: Sequence[int]) -> _Found | None:
        return resolve_entry(self._metas, path, layers)

    def lower_lookup(self, path: str) -> _Found | None:
        """The merged lower entry at ``path`` (no symlinks followed), or None."""
        layers = self._root_layers()
        if not path:
            return (-1, EntryMeta("", "dir"), layers)
        cur = ""
        found: _Found | None = None
        for comp in path.split("/"):
            if found is not None and found[1].kind != "dir":
                return None
            cur = join_path(cur, comp)
            found = self._resolve_child(cur, layers)
            if found is None:
                return None
            layers = found[2]
        return found

    # -- inode creation ---------------------------------------------------------------------

    def _new_inode(self, kind: str, e: EntryMeta, time_ns: int | None) -> Inode:
        ino = self._next_ino
        self._next_ino += 1
        if time_ns is None:
            time_ns = e.mtime_ns if e.mtime_ns is not None else e.mtime * _NS
        node = Inode(ino, kind, e.mode, e.uid, e.gid, time_ns)
        node.xattrs = dict(e.xattrs)
        self.inodes[ino] = node
        return node

    def _lower_inode(self, path: str, found: _Found) -> Inode:
        li, e, below = found
        if e.kind == "dir":
            src = e
            if e.implicit:
                better = self._explicit_dir(path, below)
                if better is not None:
                    src = better[1]
            node = self._new_inode("dir", src, None)
            node.origin, node.layers = path, below
            self._by_origin[path] = node.ino
            return node
        primary = e.linkname if e.kind == "hardlink" else path
        names = self._groups[li].get(primary)
        if names is None:
            return self._plain_lower(li, primary, self._metas[li].entries[primary], [path])
        key = (li, primary)
        ino = self._group_inodes.get(key)
        if ino is not None:
            return self.inodes[ino]
        target = self._metas[li].entries.get(primary)
        if target is None:  # the extractor guarantees it; be safe with foreign metadata
            return self._plain_lower(li, path, e, [path])
        visible = [n for n in names if self._shows(n, li)]
        node = self._plain_lower(li, primary, target, visible)
        self._group_inodes[key] = node.ino
        for other in visible:
            if other != path:
                d = self._dir_for_origin(other.rpartition("/")[0])
                if d is not None:
                    self.load(d)
        return node

    def _plain_lower(self, li: int, content: str, e: EntryMeta, names: list[str]) -> Inode:
        kind = "file" if e.kind == "hardlink" else e.kind
        node = self._new_inode(kind, e, None)
        node.lower_names = frozenset(names)
        if kind == "file":
            node.lower, node.size = (li, content), e.size
        elif kind == "symlink":
            node.target = e.linkname
            node.size = len(e.linkname.encode("utf-8", "surrogateescape"))
        elif kind in ("char", "block"):
            node.rdev = (e.devmajor, e.devminor)
        return node

    def _shows(self, path: str, li: int) -> bool:
        found = self.lower_lookup(path)
        return found is not None and found[0] == li

    def _dir_for_origin(self, path: str) -> Inode | None:
        ino = self._by_origin.get(path)
        if ino is not None:
            return self.inodes.get(ino)
        parent = self._dir_for_origin(path.rpartition("/")[0]) if path else None
        if parent is None:
            return None
        self.load(parent)
        ino = self._by_origin.get(path)
        return self.inodes.get(ino) if ino is not None else None

    def load(self, d: Inode) -> dict[str, int]:
        """The directory's table, built from the lowers on first use."""
        if d.children is not None:
            return d.children
        d.children = {}
        if d.origin is None:
            return d.children
        names: set[str] = set()
        for li in d.layers:
            names.update(self._index[li].get(d.origin, ()))
        for name in sorted(names, key=sort_key):
            path = join_path(d.origin, name)
            found = self._resolve_child(path, d.layers)
            if found is None:
                continue
            child = self._lower_inode(path, found)
            d.children[name] = child.ino
            if child.is_dir:
                child.parent, child.name = d.ino, name
                d.subdirs += 1
            else:
                child.links.add((d.ino, name))
        d.lower_listing = frozenset(d.children)
        return d.children

    # -- queries ----------------------------------------------------------------------------

    def get(self, ino: int) -> Inode:
        node = self.inodes.get(ino)
        if node is None:
            raise _err(errno.ENOENT, f"inode {ino}")
        return node

    def dir(self, ino: int) -> Inode:
        node = self.get(ino)
        if not node.is_dir:
            raise _err(errno.ENOTDIR, f"inode {ino}")
        return node

    def nlink(self, node: Inode) -> int:
        if not node.is_dir:
            return len(node.links)
        if node.parent == 0:
            return 0
        self.load(node)
        return 2 + node.subdirs

    def child(self, parent: int, name: str) -> Inode | None:
        """The entry ``name`` of directory ``parent`` (no lookup reference taken)."""
        d = self.dir(parent)
        if name == ".":
            return d
        if name == "..":
            return self.inodes.get(d.parent) if d.parent else None
        ino = self.load(d).get(name)
        return self.inodes[ino] if ino is not None else None

    def lookup(self, parent: int, name: str) -> Inode | None:
        """``child`` plus one kernel lookup reference."""
        node = self.child(parent, name)
        if node is not None:
            node.lookups += 1
        return node

    def listdir(self, ino: int) -> list[tuple[str, int]]:
        return list(self.load(self.dir(ino)).items())

    def dir_path(self, ino: int) -> str | None:
        """Current path of a directory, or None when it (or an ancestor) was removed."""
        parts: list[str] = []
        node = self.inodes.get(ino)
        while node is not None and node.ino != ROOT_INO:
            if node.parent == 0:
                return None
            parts.append(node.name)
            node = self.inodes.get(node.parent)
        if node is None:
            return None
        return "/".join(reversed(parts))

    # -- bookkeeping helpers ----------------------------------------------------------------

    def _changed(self, node: Inode, now_ns: int | None, *, content: bool = False) -> None:
        node.version += 1
        if now_ns is not None:
            node.ctime_ns = now_ns
            if content:
                node.mtime_ns = now_ns
        node.dirty = True
        self.touched.add(node.ino)

    def _table_changed(self, d: Inode, now_ns: int) -> None:
        d.version += 1
        d.mtime_ns = d.ctime_ns = now_ns
        d.table_dirty = True
        self.touched.add(d.ino)

    def _attach(self, d: Inode, name: str, node: Inode) -> None:
        assert d.children is not None
        d.children[name] = node.ino
        if node.is_dir:
            node.parent, node.name = d.ino, name
            d.subdirs += 1
        else:
            node.links.add((d.ino, name))
        node.version += 1

    def _detach(self, d: Inode, name: str, node: Inode) -> None:
        assert d.children is not None
        del d.children[name]
        if node.is_dir:
            node.parent = 0
            d.subdirs -= 1
        else:
            node.links.discard((d.ino, name))
        node.version += 1

    def _maybe_drop(self, node: Inode) -> list[int]:
        """Drop an inode nobody refers to any more; returns data numbers to delete."""
        if node.ino == ROOT_INO or node.lookups > 0 or node.opens > 0 or self.nlink(node):
            return []
        del self.inodes[node.ino]
        self.touched.discard(node.ino)
        return [node.data] if node.data is not None else []

    # -- namespace operations ---------------------------------------------------------------

    def alloc_data(self) -> int:
        """A fresh upper data store number (the adapter creates ``data/<n>``)."""
        n = self._next_data
        self._next_data += 1
        return n

    def check_new(self, parent: int, name: str) -> Inode:
        check_name(name)
        d = self.dir(parent)
        if d.parent == 0:
            raise _err(errno.ENOENT, "directory was removed")
        if name in self.load(d):
            raise _err(errno.EEXIST, name)
        return d

    def create(
        self,
        parent: int,
        name: str,
        kind: str,
        perm: int,
        uid: int,
        gid: int,
        now_ns: int,
        *,
        data: int | None = None,
        target: str = "",
        rdev: tuple[int, int] = (0, 0),
    ) -> Inode:
        """mkdir/mknod/symlink/create: a new entry owned by the caller (fsuid/fsgid); in a
        setgid directory it takes the directory's group and a new directory keeps the bit
        (as Linux's inode_init_owner). Returns it with one lookup reference."""
        if kind not in FILE_KINDS:
            raise _err(errno.EINVAL, f"kind {kind!r}")
        d = self.check_new(parent, name)
        if kind == "file" and data is None:
            raise ValueError("create: a regular file needs a data number")
        if d.perm & stat.S_ISGID:
            gid = d.gid
            if kind == "dir":
                perm |= stat.S_ISGID
        node = Inode(self._next_ino, kind, perm, uid, gid, now_ns)
        self._next_ino += 1
        self.inodes[node.ino] = node
        node.data = data if kind == "file" else None
        node.rdev = rdev if kind in ("char", "block") else (0, 0)
        if kind == "symlink":
            node.target = target
            node.size = len(target.encode("utf-8", "surrogateescape"))
        if kind == "dir":
            node.children = {}
        self._attach(d, name, node)
        self._table_changed(d, now_ns)
        self._changed(node, None)
        node.lookups += 1
        return node

    def unlink(self, parent: int, name: str, now_ns: int) -> list[int]:
        d = self.dir(parent)
        node = self.child(parent, name)
        if node is None or name in (".", ".."):
            raise _err(errno.ENOENT, name)
        if node.is_dir:
            raise _err(errno.EISDIR, name)
        self._detach(d, name, node)
        node.ctime_ns = now_ns
        self._table_changed(d, now_ns)
        return self._maybe_drop(node)

    def rmdir(self, parent: int, name: str, now_ns: int) -> list[int]:
        d = self.dir(parent)
        if name in (".", ".."):
            raise _err(errno.EINVAL if name == "." else errno.ENOTEMPTY, name)
        node = self.child(parent, name)
        if node is None:
            raise _err(errno.ENOENT, name)
        if not node.is_dir:
            raise _err(errno.ENOTDIR, name)
        if self.load(node):
            raise _err(errno.ENOTEMPTY, name)
        self._detach(d, name, node)
        self._table_changed(d, now_ns)
        return self._maybe_drop(node)

    def link(self, ino: int, parent: int, name: str, now_ns: int) -> Inode:
        """A new name for a non-directory. The inode is marked changed so every name of it
        lands in the layer (a tar hardlink needs its target in the same layer)."""
        node = self.get(ino)
        if node.is_dir:
            raise _err(errno.EPERM, "hard link to a directory")
        if not node.links:
            raise _err(errno.ENOENT, "inode has no name")
        d = self.check_new(parent, name)
        self._attach(d, name, node)
        self._table_changed(d, now_ns)
        self._changed(node, now_ns)
        node.lookups += 1
        return node

    def _is_ancestor(self, anc: Inode, d: Inode) -> bool:
        node: Inode | None = d
        while node is not None:
            if node.ino == anc.ino:
                return True
            if node.ino == ROOT_INO or node.parent == 0:
                return False
            node = self.inodes.get(node.parent)
        return False

    def rename(
        self,
        old_parent: int,
        old_name: str,
        new_parent: int,
        new_name: str,
        now_ns: int,
        *,
        noreplace: bool = False,
        exchange: bool = False,
    ) -> list[int]:
        """rename(2)/renameat2(2). Moving a lower file or directory copies nothing: the
        journal emits the moved entry (a directory with its whole subtree) at its new path
        and a whiteout at the old one. Returns data numbers freed by a replaced target."""
        src_d, dst_d = self.dir(old_parent), self.dir(new_parent)
        src = self.child(old_parent, old_name)
        if src is None or old_name in (".", ".."):
            raise _err(errno.ENOENT, old_name)
        check_name(new_name)
        if dst_d.parent == 0:
            raise _err(errno.ENOENT, "target directory was removed")
        dst = self.child(new_parent, new_name)
        if src.is_dir and self._is_ancestor(src, dst_d):
            raise _err(errno.EINVAL, "cannot move a directory into itself")
        if exchange:
            if dst is None:
                raise _err(errno.ENOENT, new_name)
            if dst.is_dir and self._is_ancestor(dst, src_d):
                raise _err(errno.EINVAL, "cannot move a directory into itself")
            if src is dst:
                return []
            self._detach(src_d, old_name, src)
            self._detach(dst_d, new_name, dst)
            self._attach(dst_d, new_name, src)
            self._attach(src_d, old_name, dst)
            src.ctime_ns = dst.ctime_ns = now_ns
            self._table_changed(src_d, now_ns)
            self._table_changed(dst_d, now_ns)
            return []
        freed: list[int] = []
        if dst is not None:
            if noreplace:
                raise _err(errno.EEXIST, new_name)
            if dst is src:  # two names of one inode (or the same name): nothing to do
                return []
            if src.is_dir:
                if not dst.is_dir:
                    raise _err(errno.ENOTDIR, new_name)
                if self.load(dst):
                    raise _err(errno.ENOTEMPTY, new_name)
            elif dst.is_dir:
                raise _err(errno.EISDIR, new_name)
            self._detach(dst_d, new_name, dst)
            dst.ctime_ns = now_ns
            freed = self._maybe_drop(dst)
        self._detach(src_d, old_name, src)
        self._attach(dst_d, new_name, src)
        src.ctime_ns = now_ns
        self._table_changed(src_d, now_ns)
        self._table_changed(dst_d, now_ns)
        return freed

    # -- attributes and content -------------------------------------------------------------

    def setattr(
        self,
        ino: int,
        now_ns: int,
        *,
        perm: int | None = None,
        uid: int | None = None,
        gid: int | None = None,
        size: int | None = None,
        atime_ns: int | None = None,
        mtime_ns: int | None = None,
    ) -> Inode:
        """chmod/chown/utimens/truncate. Only the model changes; a size change needs the
        content in the upper first (``needs_copy_up``), which the adapter ensures."""
        node = self.get(ino)
        if size is not None:
            if node.kind != "file":
                raise _err(errno.EISDIR if node.is_dir else errno.EINVAL, "truncate")
            if node.data is None:
                raise _err(errno.EIO, "truncate before copy-up")
            node.size = size
            node.mtime_ns = now_ns
        if perm is not None:
            node.perm = perm & 0o7777
        if uid is not None:
            node.uid = uid
        if gid is not None:
            node.gid = gid
        if atime_ns is not None:
            node.atime_ns = atime_ns
        if mtime_ns is not None:
            node.mtime_ns = mtime_ns
        self._changed(node, now_ns)
        return node

    def needs_copy_up(self, node: Inode) -> bool:
        return node.kind == "file" and node.data is None

    def copied_up(self, ino: int, data: int) -> None:
        """The adapter copied the lower content to ``data/<data>``."""
        node = self.get(ino)
        node.data, node.lower = data, None
        self._changed(node, None)

    def wrote(self, node: Inode, end: int) -> None:
        """Data written up to ``end``. mtime/ctime are the kernel's with the writeback cache
        (it sends them with SETATTR), so only the size moves here."""
        if end > node.size:
            node.size = end
            node.version += 1
        if not node.dirty:
            self._changed(node, None)

    def opened(self, node: Inode) -> None:
        node.opens += 1

    def released(self, ino: int) -> list[int]:
        node = self.inodes.get(ino)
        if node is None:
            return []
        node.opens -= 1
        return self._maybe_drop(node)

    def forget(self, ino: int, n: int) -> list[int]:
        node = self.inodes.get(ino)
        if node is None or ino == ROOT_INO:
            return []
        node.lookups = max(0, node.lookups - n)
        return self._maybe_drop(node)

    # -- xattrs (names in the "system." namespace, i.e. POSIX ACLs, are not supported) ------

    @staticmethod
    def _xattr_name(name: str) -> None:
        if name.startswith("system."):
            raise _err(errno.EOPNOTSUPP, name)
        if not name or "\x00" in name:
            raise _err(errno.EINVAL, "xattr name")

    def getxattr(self, ino: int, name: str) -> bytes:
        self._xattr_name(name)
        value = self.get(ino).xattrs.get(name)
        if value is None:
            raise _err(errno.ENODATA, name)
        return value

    def listxattr(self, ino: int) -> list[str]:
        return list(self.get(ino).xattrs)

    def setxattr(self, ino: int, name: str, value: bytes, now_ns: int) -> None:
        self._xattr_name(name)
        node = self.get(ino)
        node.xattrs[name] = bytes(value)
        self._changed(node, now_ns)

    def removexattr(self, ino: int, name: str, now_ns: int) -> None:
        self._xattr_name(name)
        node = self.get(ino)
        if node.xattrs.pop(name, None) is None:
            raise _err(errno.ENODATA, name)
        self._changed(node, now_ns)

    # -- the change journal -----------------------------------------------------------------

    def entry_for(self, node: Inode, path: str) -> EntryMeta:
        """The tar-level metadata of ``node`` at ``path`` (integer mtime: what
        extract_layer records from write_layer's tar)."""
        major, minor = node.rdev if node.kind in ("char", "block") else (0, 0)
        return EntryMeta(
            path=path,
            kind=node.kind,
            mode=node.perm,
            uid=node.uid,
            gid=node.gid,
            mtime=node.mtime_ns // _NS,
            size=node.size if node.kind == "file" else 0,
            linkname=node.target if node.kind == "symlink" else "",
            devmajor=major,
            devminor=minor,
            xattrs=tuple(sorted(node.xattrs.items())),
        )
