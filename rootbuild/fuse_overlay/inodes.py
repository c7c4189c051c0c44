"""The overlay's inode table: virtual inodes over the lowers' merged view, loaded lazily,
and the reference counts that decide when an inode goes. Pure: no I/O.

Rules:
- Lower layers (lowest first, as LayerMeta values) merge per the OCI image spec
  ("Whiteouts", layer.md): the topmost entry wins unless a higher layer whites the path
  out; a directory merges lower directories down to an opaque marker, a whiteout or a
  non-directory. A ``hardlink`` entry is its target's inode.
- An ``Inode`` holds everything an unprivileged backing store cannot: kind, permission
  bits incl. setuid/setgid/sticky, owner, device numbers, xattrs, times; nlink is derived
  (a directory's from its subdirectories, any other kind's from its names).
- Directory tables load lazily, once, from a per-layer index (parent path -> names) built
  at start. Loading creates an inode for every child; a lower hardlink group is ONE inode
  (nlink = its visible names), and creating it loads the directories of all its names.
- Inode numbers are stable; an inode is dropped only when it has no name, no kernel
  lookup reference and no open handle (pyfuse3's ``forget`` contract). A dropped file
  returns its upper data number so the adapter can delete the backing file.
- Queries only materialise lazily loaded tables: ``child`` takes no reference,
  ``lookup`` takes one. Every change to the tree is the model's (model.py).
- Errors are ``OSError(errno, message)`` (``fs_error``); the adapter turns them into FUSE
  errors.
"""

from __future__ import annotations

import errno
import stat
from collections.abc import Iterable, Sequence

from rootbuild.image.layermeta import EntryMeta, LayerMeta, resolve_entry

ROOT_INO = 1
NS = 1_000_000_000  # nanoseconds per second
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


def fs_error(code: int, what: str) -> OSError:
    return OSError(code, f"{errno.errorcode.get(code, code)}: {what}")


def join_path(parent: str, name: str) -> str:
    return f"{parent}/{name}" if parent else name


def sort_key(path: str) -> bytes:
    """Bytewise tar order (what write_layer sorts by)."""
    return path.encode("utf-8", "surrogateescape")


class Inode:
    """One virtual inode. Directories have ``parent``/``name`` (0 when removed) and a
    lazily loaded ``children`` table; other kinds have ``links`` (parent ino, name)."""

    __slots__ = (
        "atime_ns",
        "charged",
        "charged_data",
        "children",
        "counted",
        "ctime_ns",
        "data",
        "dirty",
        "gid",
        "ino",
        "is_dir",
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
        self.kind = kind  # never changes (a new kind is a new inode)
        self.is_dir = kind == "dir"  # an attribute, not a property: read on most requests
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
        # the disk budget (quota.py): bytes charged for the entry, its names and xattrs;
        # content bytes charged; whether it counts as an inode of the upper
        self.charged = 0
        self.charged_data = 0
        self.counted = False

    @property
    def st_mode(self) -> int:
        return _IFMT[self.kind] | self.perm


_Found = tuple[int, EntryMeta, tuple[int, ...]]


class InodeTable:
    """Virtual inodes over ``metas`` (lowest first); ``touched`` holds the inodes the
    change journal must visit (marked by model.py, unmarked when an inode is dropped)."""

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

    def _add_inode(self, kind: str, perm: int, uid: int, gid: int, time_ns: int) -> Inode:
        """A new inode under the next number (numbers are never reused)."""
        node = Inode(self._next_ino, kind, perm, uid, gid, time_ns)
        self._next_ino += 1
        self.inodes[node.ino] = node
        return node

    def _new_inode(self, kind: str, e: EntryMeta, time_ns: int | None) -> Inode:
        if time_ns is None:
            time_ns = e.mtime_ns if e.mtime_ns is not None else e.mtime * NS
        node = self._add_inode(kind, e.mode, e.uid, e.gid, time_ns)
        node.xattrs = dict(e.xattrs)
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
            raise fs_error(errno.ENOENT, f"inode {ino}")
        return node

    def dir(self, ino: int) -> Inode:
        node = self.get(ino)
        if not node.is_dir:
            raise fs_error(errno.ENOTDIR, f"inode {ino}")
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
        """``child`` plus one kernel lookup reference. The common case, a name in a
        directory whose table is loaded, is answered here without ``child``'s calls: LOOKUP
        is the most frequent request (3 per file an untar creates)."""
        d = self.inodes.get(parent)
        if d is not None and d.children is not None and name != "." and name != "..":
            ino = d.children.get(name)
            node = self.inodes[ino] if ino is not None else None
        else:
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

    # -- references (pyfuse3's lookup counts, open handles) ---------------------------------

    def _maybe_drop(self, node: Inode) -> list[int]:
        """Drop an inode nobody refers to any more; returns data numbers to delete."""
        if node.ino == ROOT_INO or node.lookups > 0 or node.opens > 0 or self.nlink(node):
            return []
        del self.inodes[node.ino]
        self.touched.discard(node.ino)
        return [node.data] if node.data is not None else []

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

