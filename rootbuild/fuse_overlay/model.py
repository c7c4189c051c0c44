"""The overlay's model: every change a FUSE request makes to the inode table (inodes.py),
decided without I/O, and the marks the change journal reads. The adapter (ops.py) does
every syscall.

Rules:
- Namespace changes (create, link, unlink, rmdir, rename/renameat2) follow POSIX and
  Linux: a setgid directory gives new entries its group (inode_init_owner); a directory
  cannot move into itself; a replaced or unlinked inode is dropped only when nothing
  refers to it any more, and the freed upper data numbers go back to the adapter.
- Moving a lower file or directory copies nothing: the journal emits it at its new path
  and a whiteout at the old one.
- Copy-up decisions: chmod/chown/utimens/setxattr of a lower file change only the model;
  only content changes (write, truncate) need the content in the upper first
  (``needs_copy_up``), which the adapter makes and reports (``copied_up``).
- Names are ``str`` (surrogateescape-decoded bytes); "", ".", "..", names with "/" or NUL
  and names starting with ".wh." (they would read as OCI whiteouts) are refused (EINVAL).
  xattr names in the "system." namespace (POSIX ACLs) are not supported (EOPNOTSUPP).
- Errors are ``OSError(errno, message)``; the adapter turns them into FUSE errors.
- The disk budget (``quota``, None: unlimited): every change that grows the upper is
  charged before it is made (a refusal is ENOSPC with nothing changed); an inode's charge
  is given back when it is dropped (see quota.py for what each change costs).
- The journal: attribute, content and directory-table changes mark inodes "touched";
  ``diff.changes(model)`` visits only those (see diff.py), so its cost grows with the
  change.
"""

from __future__ import annotations

import errno
import stat
from collections.abc import Sequence

from rootbuild.fuse_overlay.inodes import (
    FILE_KINDS,
    NS,
    ROOT_INO,
    Inode,
    InodeTable,
    fs_error,
)
from rootbuild.fuse_overlay.quota import ENTRY_BYTES, Quota
from rootbuild.image.layermeta import EntryMeta, LayerMeta


def check_name(name: str) -> None:
    """Refuse names a directory entry cannot have, and OCI whiteout look-alikes."""
    if name in ("", ".", "..") or "/" in name or "\x00" in name or name.startswith(".wh."):
        raise fs_error(errno.EINVAL, f"invalid name {name!r}")


class OverlayModel(InodeTable):
    """The inode table plus every change a request can make to it."""

    def __init__(self, metas: Sequence[LayerMeta], now_ns: int,
                 quota: Quota | None = None) -> None:
        super().__init__(metas, now_ns)
        self._next_data = 1
        self.quota = quota

    # -- the disk budget --------------------------------------------------------------------

    def _charge(self, node: Inode, nbytes: int, inode: bool = False) -> None:
        """Charge ``nbytes`` (negative: give back) to ``node`` (ENOSPC: nothing changed)."""
        if self.quota is None:
            return
        if nbytes > 0 or inode:
            self.quota.charge(max(0, nbytes), 1 if inode else 0)
        elif nbytes < 0:
            self.quota.release(-nbytes)
        node.charged += nbytes
        node.counted = node.counted or inode

    def resize(self, node: Inode, size: int) -> None:
        """Charge (or give back) the content bytes of ``node`` for an upper size of
        ``size``: before a write past them, a truncate, a copy-up."""
        if self.quota is None or size == node.charged_data:
            return
        if size > node.charged_data:
            self.quota.charge(size - node.charged_data)
        else:
            self.quota.release(node.charged_data - size)
        node.charged_data = size

    def _lower_content(self, node: Inode) -> None:
        """Before a lower file's attributes, xattrs or names change: the layer will hold
        its whole content (a tar entry has no metadata-only form), so the budget is
        charged its size, as for a copy-up (which then costs nothing more)."""
        if self.quota is not None and node.kind == "file" and node.data is None:
            self.resize(node, max(node.size, node.charged_data))

    def grow(self, node: Inode, end: int) -> None:
        """Before a write ending at ``end``."""
        if self.quota is not None and end > node.charged_data:
            self.resize(node, end)

    def _maybe_drop(self, node: Inode) -> list[int]:
        freed = super()._maybe_drop(node)
        if self.quota is not None and node.ino not in self.inodes:
            self.quota.release(node.charged + node.charged_data, 1 if node.counted else 0)
            node.charged = node.charged_data = 0
            node.counted = False
        return freed

    # -- journal marks and directory-table edits --------------------------------------------

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
            raise fs_error(errno.ENOENT, "directory was removed")
        if name in self.load(d):
            raise fs_error(errno.EEXIST, name)
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
            raise fs_error(errno.EINVAL, f"kind {kind!r}")
        d = self.check_new(parent, name)
        if kind == "file" and data is None:
            raise ValueError("create: a regular file needs a data number")
        cost = ENTRY_BYTES + len(target.encode("utf-8", "surrogateescape"))
        if self.quota is not None:
            self.quota.charge(cost, 1)
        if d.perm & stat.S_ISGID:
            gid = d.gid
            if kind == "dir":
                perm |= stat.S_ISGID
        node = self._add_inode(kind, perm, uid, gid, now_ns)
        if self.quota is not None:
            node.charged, node.counted = cost, True
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
            raise fs_error(errno.ENOENT, name)
        if node.is_dir:
            raise fs_error(errno.EISDIR, name)
        self._detach(d, name, node)
        node.ctime_ns = now_ns
        self._table_changed(d, now_ns)
        return self._maybe_drop(node)

    def rmdir(self, parent: int, name: str, now_ns: int) -> list[int]:
        d = self.dir(parent)
        if name in (".", ".."):
            raise fs_error(errno.EINVAL if name == "." else errno.ENOTEMPTY, name)
        node = self.child(parent, name)
        if node is None:
            raise fs_error(errno.ENOENT, name)
        if not node.is_dir:
            raise fs_error(errno.ENOTDIR, name)
        if self.load(node):
            raise fs_error(errno.ENOTEMPTY, name)
        self._detach(d, name, node)
        self._table_changed(d, now_ns)
        return self._maybe_drop(node)

    def link(self, ino: int, parent: int, name: str, now_ns: int) -> Inode:
        """A new name for a non-directory. The inode is marked changed so every name of it
        lands in the layer (a tar hardlink needs its target in the same layer)."""
        node = self.get(ino)
        if node.is_dir:
            raise fs_error(errno.EPERM, "hard link to a directory")
        if not node.links:
            raise fs_error(errno.ENOENT, "inode has no name")
        d = self.check_new(parent, name)
        self._lower_content(node)
        self._charge(node, ENTRY_BYTES)  # a name: a header in the layer
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
            raise fs_error(errno.ENOENT, old_name)
        check_name(new_name)
        if dst_d.parent == 0:
            raise fs_error(errno.ENOENT, "target directory was removed")
        dst = self.child(new_parent, new_name)
        if src.is_dir and self._is_ancestor(src, dst_d):
            raise fs_error(errno.EINVAL, "cannot move a directory into itself")
        if exchange:
            if dst is None:
                raise fs_error(errno.ENOENT, new_name)
            if dst.is_dir and self._is_ancestor(dst, src_d):
                raise fs_error(errno.EINVAL, "cannot move a directory into itself")
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
                raise fs_error(errno.EEXIST, new_name)
            if dst is src:  # two names of one inode (or the same name): nothing to do
                return []
            if src.is_dir:
                if not dst.is_dir:
                    raise fs_error(errno.ENOTDIR, new_name)
                if self.load(dst):
                    raise fs_error(errno.ENOTEMPTY, new_name)
            elif dst.is_dir:
                raise fs_error(errno.EISDIR, new_name)
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
        self._lower_content(node)
        if size is not None:
            if node.kind != "file":
                raise fs_error(errno.EISDIR if node.is_dir else errno.EINVAL, "truncate")
            if node.data is None:
                raise fs_error(errno.EIO, "truncate before copy-up")
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

    # -- xattrs (names in the "system." namespace, i.e. POSIX ACLs, are not supported) ------

    @staticmethod
    def _xattr_name(name: str) -> None:
        if name.startswith("system."):
            raise fs_error(errno.EOPNOTSUPP, name)
        if not name or "\x00" in name:
            raise fs_error(errno.EINVAL, "xattr name")

    def getxattr(self, ino: int, name: str) -> bytes:
        self._xattr_name(name)
        value = self.get(ino).xattrs.get(name)
        if value is None:
            raise fs_error(errno.ENODATA, name)
        return value

    def listxattr(self, ino: int) -> list[str]:
        return list(self.get(ino).xattrs)

    def setxattr(self, ino: int, name: str, value: bytes, now_ns: int) -> None:
        self._xattr_name(name)
        node = self.get(ino)
        self._lower_content(node)
        old = node.xattrs.get(name)
        size = len(name.encode("utf-8", "surrogateescape"))
        before = 0 if old is None else size + len(old)
        self._charge(node, size + len(value) - before)
        node.xattrs[name] = bytes(value)
        self._changed(node, now_ns)

    def removexattr(self, ino: int, name: str, now_ns: int) -> None:
        self._xattr_name(name)
        node = self.get(ino)
        old = node.xattrs.pop(name, None)
        if old is None:
            raise fs_error(errno.ENODATA, name)
        self._charge(node, -len(name.encode("utf-8", "surrogateescape")) - len(old))
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
            mtime=node.mtime_ns // NS,
            size=node.size if node.kind == "file" else 0,
            linkname=node.target if node.kind == "symlink" else "",
            devmajor=major,
            devminor=minor,
            xattrs=tuple(sorted(node.xattrs.items())),
        )
