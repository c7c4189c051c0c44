"""The pyfuse3 adapter: FUSE requests -> model decisions -> backing-store syscalls.

Job: a thin ``pyfuse3.Operations`` over ``OverlayModel`` (virtual inodes, journal) and
``Backing`` (dir-fd relative, no-follow syscalls). ``finalize`` writes the step's layer.

Rules (pyfuse3's contract, SECURITY.md rule 4):
- One error boundary (``_boundary``): every ``OSError`` becomes ``FUSEError(errno)``;
  anything else is a bug, logged with its traceback and answered EIO. ``forget`` has no
  reply, so nothing may raise out of it (pyfuse3 would end the session, and with it the
  step's filesystem): it logs each failure and goes on with the other inodes.
- Names arrive as bytes and are decoded with surrogateescape; "/" and NUL are refused.
- Lookup counts: every reply that hands the kernel an inode (lookup, create, mkdir, mknod,
  symlink, link, readdirplus) adds one; content goes away in ``forget``/``release`` once
  the inode also has no name (inodes.InodeTable._maybe_drop).
- Speed (pyfuse3 costs ~20 us per request): attributes are built once per inode version;
  entry/attr timeouts are long (rootbuild is the only writer during a step); the kernel's
  writeback cache is on, so the kernel owns mtime/ctime and i_size of written files;
  ``keep_cache`` everywhere, never ``direct_io`` (shared writable mmap must work);
  reads and writes are pread/pwrite on the handle's cached fd. Copy-up of files above
  1 MiB runs in a worker thread; small ones inline.
- Permission checks are the kernel's (``default_permissions``) against the virtual
  attributes; ``access`` is not implemented. fallocate has no pyfuse3 handler, so the
  kernel answers EOPNOTSUPP. fsync/fsyncdir/flush answer ENOSYS, which the kernel turns
  into "always succeeds" without asking again: the upper is scratch space.
- The disk budget (quota.py; None: unlimited) is charged before the syscall that grows
  the upper (create, write past the charged size, truncate up, copy-up), so a refused
  request (ENOSPC) leaves nothing behind; statfs reports the budget as the filesystem's
  size and free space (each at most the backing store's).

Requests per file (issue 14, item 2; counted by ``stats.py``, ``bench/fuse_requests.py``).
The kernel caches as much as the FUSE protocol lets a server ask for, and it is safe to:
the server is the only writer (the step reaches the upper and the lowers only through the
mount; nothing else changes the tree while it is mounted), so every change the kernel has
cached went through a request whose reply updated the cache, and the server never calls
``pyfuse3.invalidate_entry``/``invalidate_inode``:
- positive and negative entries and attributes are cached for ``TIMEOUT`` (a negative
  LOOKUP reply has ``st_ino`` 0 and that timeout);
- the writeback cache (``enable_writeback_cache``) merges small writes into WRITEs of up
  to libfuse's ``max_write`` (1 MiB: 8 MiB of 8 KiB writes is 9 WRITEs); ``keep_cache``
  keeps page cache across opens; ``default_permissions``: no ACCESS requests;
  flush/fsync answer ENOSYS once; READDIRPLUS (pyfuse3 always asks for it) fills the
  dentry and attribute caches while listing.
What is left is what the kernel sends whatever the server answers. An untar (busybox
tar: ``mkdir`` EEXIST, ``unlink`` ENOENT, open O_EXCL, write, close, chown, chmod,
utimes) costs 14 requests per file: a LOOKUP for each O_EXCL-style call (``mkdir`` of the
existing parent, the open: LOOKUP_EXCL always revalidates) and one for the new name (a
genuine miss); CREATE; WRITE and RELEASE; a SETATTR of mtime/ctime at close (the
writeback cache's); GETATTR of the parent (a create invalidates its attributes, and the
next path walk's permission check needs them); GETXATTR ``security.capability`` before
the write and before the chown (FUSE clears SB_NOSEC, so file_remove_privs and
ATTR_KILL_PRIV always ask; answered on a fast path, see ``getxattr``); GETATTR before the
chown (the kernel refreshes the mode unless the server handles killpriv); three
SETATTRs for chown, chmod, utimes. Not available or not adopted:
- FUSE_CAP_HANDLE_KILLPRIV(_V2) would save the GETATTR before a chown, but pyfuse3 3.5
  sets the connection's capabilities in C (``fuse_init``) and exposes only the writeback
  cache, ACLs and export support; it would also move suid/sgid/capability clearing into
  this server. libfuse's conn options (max_write, splice, async_read) are applied by
  ``fuse_apply_conn_info_opts``, which pyfuse3 never calls: its defaults stand.
- Turning the writeback cache off saves the SETATTR at close (13 instead of 14 per
  untarred file) but costs one WRITE per write(2): 8 MiB in 8 KiB writes is 1,001 WRITEs
  instead of 9, and compilers and archivers write in small chunks.
"""

from __future__ import annotations

import errno
import logging
import os
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

import pyfuse3
import trio

from rootbuild.fuse_overlay import backing
from rootbuild.fuse_overlay.backing import Backing
from rootbuild.fuse_overlay.diff import changes
from rootbuild.fuse_overlay.inodes import KIND_OF_IFMT, ROOT_INO, Inode
from rootbuild.fuse_overlay.journal import write_tree
from rootbuild.fuse_overlay.model import OverlayModel
from rootbuild.fuse_overlay.quota import Quota
from rootbuild.image.layermeta import LayerMeta

log = logging.getLogger(__name__)

TIMEOUT = 3600.0
THREAD_COPY_MIN = 1 << 20

P = ParamSpec("P")
R = TypeVar("R")


def _boundary(
    fn: Callable[Concatenate[OverlayOperations, P], Coroutine[Any, Any, R]],
) -> Callable[Concatenate[OverlayOperations, P], Coroutine[Any, Any, R]]:
    """The one place where errors become FUSE replies."""

    async def wrapper(self: OverlayOperations, /, *args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await fn(self, *args, **kwargs)
        except pyfuse3.FUSEError:
            raise
        except OSError as exc:
            raise pyfuse3.FUSEError(exc.errno or errno.EIO) from None
        except Exception:
            log.exception("fuse overlay: %s failed", fn.__name__)
            raise pyfuse3.FUSEError(errno.EIO) from None

    wrapper.__name__ = wrapper.__qualname__ = fn.__name__
    wrapper.__doc__ = fn.__doc__
    return wrapper


NAME_MAX = 255  # FUSE lets names up to 1024 bytes through; layers and backing fs hold 255


def _name(raw: bytes) -> str:
    if b"/" in raw or b"\x00" in raw:
        raise OSError(errno.EINVAL, "invalid name")
    if len(raw) > NAME_MAX:
        raise OSError(errno.ENAMETOOLONG, "name too long")
    return raw.decode("utf-8", "surrogateescape")


_now = time.time_ns  # the builtin itself: no Python frame per request


def _negative_entry() -> pyfuse3.EntryAttributes:
    """A negative LOOKUP reply (st_ino 0), cached by the kernel for ``TIMEOUT``."""
    neg = pyfuse3.EntryAttributes()
    neg.st_ino = 0
    neg.entry_timeout = TIMEOUT
    return neg


_NEGATIVE = _negative_entry()  # never changed after this: every miss can share it


@dataclass
class _Handle:
    ino: int
    fd: int
    upper: bool  # fd is on the upper data file (else on a lower file)
    write: bool


class OverlayOperations(pyfuse3.Operations):
    """The FUSE overlay of ``lowers`` (lowest first) with its upper in ``work``."""

    supports_dot_lookup = True
    enable_writeback_cache = True
    enable_acl = False

    def __init__(self, lowers: Sequence[tuple[Path, LayerMeta]], work: Path,
                 quota: Quota | None = None) -> None:
        super().__init__()
        self._lower_dirs = [d for d, _ in lowers]
        self.quota = quota
        self.model = OverlayModel([m for _, m in lowers], _now(), quota)
        self.backing = Backing(self._lower_dirs, work)
        self._handles: dict[int, _Handle] = {}
        self._dir_handles: dict[int, tuple[int, list[tuple[str, int]]]] = {}
        self._next_fh = 1
        self._attrs: dict[int, tuple[int, pyfuse3.EntryAttributes]] = {}
        self._copying: dict[int, trio.Event] = {}

    # -- lifecycle --------------------------------------------------------------------------

    def mount_options(self) -> set[str]:
        """Options for pyfuse3.init: the kernel checks permissions against the virtual
        attributes; device nodes are inert (nodev); setuid binaries stay setuid ("suid":
        libfuse would otherwise add nosuid); every uid of the step may use the mount."""
        return set(pyfuse3.default_options) | {
            "default_permissions",
            "fsname=rootbuild",
            "subtype=rootbuild",
            "nodev",
            "suid",
            # Inside the build's user namespace the kernel admits only that namespace's
            # processes; without it, a step running as USER nobody could not use the mount.
            "allow_other",
        }

    def finalize(self, tree: Path) -> LayerMeta:
        """After the session: write the step's changes as an extracted-layer tree at
        ``tree`` (must not exist) and return its LayerMeta. Closes the backing store."""
        for h in self._handles.values():
            backing.close(h.fd)
        self._handles.clear()
        try:
            return write_tree(changes(self.model), tree, self.backing)
        finally:
            self.backing.close()

    # -- attributes -------------------------------------------------------------------------

    def _attr(self, node: Inode) -> pyfuse3.EntryAttributes:
        cached = self._attrs.get(node.ino)
        if cached is not None and cached[0] == node.version:
            return cached[1]
        a = pyfuse3.EntryAttributes()
        a.st_ino = node.ino
        a.generation = 0
        a.entry_timeout = TIMEOUT
        a.attr_timeout = TIMEOUT
        a.st_mode = node.st_mode
        a.st_nlink = self.model.nlink(node)
        a.st_uid = node.uid
        a.st_gid = node.gid
        a.st_rdev = os.makedev(*node.rdev) if node.kind in ("char", "block") else 0
        a.st_size = node.size
        a.st_blksize = 4096
        a.st_blocks = (node.size + 511) // 512
        a.st_atime_ns = node.atime_ns
        a.st_mtime_ns = node.mtime_ns
        a.st_ctime_ns = node.ctime_ns
        self._attrs[node.ino] = (node.version, a)
        return a

    def _drop(self, freed: list[int]) -> None:
        for n in freed:
            self.backing.remove_data(n)

    def _forget_attrs(self, freed_inos: Sequence[int]) -> None:
        for ino in freed_inos:
            if ino not in self.model.inodes:
                self._attrs.pop(ino, None)

    # -- lookups and attributes -------------------------------------------------------------

    @_boundary
    async def lookup(
        self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        node = self.model.lookup(parent_inode, _name(name))
        if node is None:
            return _NEGATIVE
        return self._attr(node)

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        """FORGET has no reply: an exception here would propagate into pyfuse3's session
        loop and end the mount. A failure is logged to the server's stderr (server.log)
        and the remaining inodes are still forgotten."""
        for ino, n in inode_list:
            try:
                self._forget_one(ino, n)
            except OSError as exc:
                log.error("fuse overlay: forget inode %d: %s", ino, exc)
            except Exception:
                log.exception("fuse overlay: forget inode %d failed", ino)

    def _forget_one(self, ino: int, n: int) -> None:
        try:
            self._drop(self.model.forget(ino, n))
        finally:  # also when the backing file could not be removed
            self._forget_attrs([ino])

    @_boundary
    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return self._attr(self.model.get(inode))

    @_boundary
    async def setattr(
        self,
        inode: int,
        attr: pyfuse3.EntryAttributes,
        fields: pyfuse3.SetattrFields,
        fh: int | None,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        node = self.model.get(inode)
        size: int | None = None
        if fields.update_size:
            size = attr.st_size
            if self.model.needs_copy_up(node):
                await self._copy_up(node, keep=size)
            assert node.data is not None
            self.model.resize(node, size)  # ENOSPC before a truncate up
            h = self._handles.get(fh) if fh is not None else None
            self.backing.truncate_data(node.data, size, h.fd if h and h.upper and h.write else None)
        self.model.setattr(
            inode,
            _now(),
            perm=attr.st_mode & 0o7777 if fields.update_mode else None,
            uid=attr.st_uid if fields.update_uid else None,
            gid=attr.st_gid if fields.update_gid else None,
            size=size,
            atime_ns=attr.st_atime_ns if fields.update_atime else None,
            mtime_ns=attr.st_mtime_ns if fields.update_mtime else None,
        )
        if fields.update_ctime:
            node.ctime_ns = attr.st_ctime_ns
        return self._attr(node)

    @_boundary
    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        node = self.model.get(inode)
        if node.kind != "symlink":
            raise OSError(errno.EINVAL, "not a symlink")
        return node.target.encode("utf-8", "surrogateescape")

    # -- namespace --------------------------------------------------------------------------

    @_boundary
    async def mknod(
        self, parent_inode: int, name: bytes, mode: int, rdev: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        kind = KIND_OF_IFMT.get(mode & 0o170000)
        if kind is None or kind in ("dir", "symlink"):
            raise OSError(errno.EINVAL, "mknod: bad file type")
        if kind == "file":
            fi, attr = await self.create(parent_inode, name, mode, os.O_RDONLY, ctx)
            await self.release(fi.fh)
            return attr
        node = self.model.create(
            parent_inode,
            _name(name),
            kind,
            mode & 0o7777,
            ctx.uid,
            ctx.gid,
            _now(),
            rdev=(os.major(rdev), os.minor(rdev)),
        )
        return self._attr(node)

    @_boundary
    async def mkdir(
        self, parent_inode: int, name: bytes, mode: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        node = self.model.create(
            parent_inode, _name(name), "dir", mode & 0o7777, ctx.uid, ctx.gid, _now()
        )
        return self._attr(node)

    @_boundary
    async def symlink(
        self, parent_inode: int, name: bytes, target: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        node = self.model.create(
            parent_inode,
            _name(name),
            "symlink",
            0o777,
            ctx.uid,
            ctx.gid,
            _now(),
            target=target.decode("utf-8", "surrogateescape"),
        )
        return self._attr(node)

    @_boundary
    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        self._drop(self.model.unlink(parent_inode, _name(name), _now()))

    @_boundary
    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        self._drop(self.model.rmdir(parent_inode, _name(name), _now()))

    @_boundary
    async def rename(
        self,
        parent_inode_old: int,
        name_old: bytes,
        parent_inode_new: int,
        name_new: bytes,
        flags: int,
        ctx: pyfuse3.RequestContext,
    ) -> None:
        if flags & ~(pyfuse3.RENAME_NOREPLACE | pyfuse3.RENAME_EXCHANGE):
            raise OSError(errno.EINVAL, "rename: unsupported flags")
        freed = self.model.rename(
            parent_inode_old,
            _name(name_old),
            parent_inode_new,
            _name(name_new),
            _now(),
            noreplace=bool(flags & pyfuse3.RENAME_NOREPLACE),
            exchange=bool(flags & pyfuse3.RENAME_EXCHANGE),
        )
        self._drop(freed)

    @_boundary
    async def link(
        self, inode: int, new_parent_inode: int, new_name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        node = self.model.link(inode, new_parent_inode, _name(new_name), _now())
        return self._attr(node)

    # -- files ------------------------------------------------------------------------------

    async def _copy_up(self, node: Inode, keep: int | None = None) -> None:
        """Give a lower file its own upper data file; ``keep`` bytes of content (all when
        None; 0 for O_TRUNC). Concurrent callers wait for the first copy."""
        pending = self._copying.get(node.ino)
        if pending is not None:
            await pending.wait()
            return
        if node.lower is None:
            raise OSError(errno.EIO, "copy-up: file has no content source")
        layer, path = node.lower
        size = node.size if keep is None else min(keep, node.size)
        self.model.resize(node, size)  # the copy's bytes: ENOSPC before any copying
        n = self.model.alloc_data()
        done = trio.Event()
        self._copying[node.ino] = done
        node.opens += 1  # keep the inode alive across the await
        try:
            if size > THREAD_COPY_MIN:
                fd = await trio.to_thread.run_sync(self.backing.copy_up, layer, path, n, size)
            else:
                fd = self.backing.copy_up(layer, path, n, size)
            backing.close(fd)
            self.model.copied_up(node.ino, n)
        except BaseException:
            self.model.resize(node, 0)
            raise
        finally:
            del self._copying[node.ino]
            done.set()
            self._drop(self.model.released(node.ino))

    def _new_fh(self, h: _Handle) -> int:
        fh = self._next_fh
        self._next_fh += 1
        self._handles[fh] = h
        return fh

    @_boundary
    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        node = self.model.get(inode)
        if node.kind != "file":
            raise OSError(errno.EISDIR if node.is_dir else errno.EINVAL, "open")
        write = (flags & os.O_ACCMODE) != os.O_RDONLY
        trunc = bool(flags & os.O_TRUNC) and write
        if write and node.data is None:
            await self._copy_up(node, keep=0 if trunc else None)
        if node.data is not None:
            fd = self.backing.open_data(node.data, write)
            if trunc and node.size:
                self.model.resize(node, 0)
                os.ftruncate(fd, 0)
                self.model.setattr(inode, _now(), size=0)
            h = _Handle(inode, fd, True, write)
        else:
            assert node.lower is not None
            h = _Handle(inode, self.backing.open_lower(*node.lower), False, False)
        self.model.opened(node)
        return pyfuse3.FileInfo(fh=self._new_fh(h), keep_cache=True)

    @_boundary
    async def create(
        self,
        parent_inode: int,
        name: bytes,
        mode: int,
        flags: int,
        ctx: pyfuse3.RequestContext,
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        sname = _name(name)
        self.model.check_new(parent_inode, sname)
        n = self.model.alloc_data()
        fd = self.backing.create_data(n)
        try:
            node = self.model.create(
                parent_inode, sname, "file", mode & 0o7777, ctx.uid, ctx.gid, _now(), data=n
            )
        except BaseException:
            backing.close(fd)
            self.backing.remove_data(n)
            raise
        self.model.opened(node)
        fh = self._new_fh(_Handle(node.ino, fd, True, True))
        return pyfuse3.FileInfo(fh=fh, keep_cache=True), self._attr(node)

    def _upper_fd(self, h: _Handle) -> int:
        """A read handle opened before a copy-up follows the content to the upper."""
        if not h.upper:
            node = self.model.inodes.get(h.ino)
            if node is not None and node.data is not None:
                fd = self.backing.open_data(node.data, False)
                backing.close(h.fd)
                h.fd, h.upper = fd, True
        return h.fd

    @_boundary
    async def read(self, fh: int, off: int, size: int) -> bytes:
        return backing.pread(self._upper_fd(self._handles[fh]), size, off)

    @_boundary
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        h = self._handles[fh]
        if not h.write:
            raise OSError(errno.EBADF, "write on a read-only handle")
        node = self.model.get(h.ino)
        self.model.grow(node, off + len(buf))  # ENOSPC before anything is written
        n = backing.pwrite(h.fd, buf, off)
        self.model.wrote(node, off + n)
        return n

    # flush/fsync/fsyncdir answer ENOSYS once: the kernel then stops sending them and
    # reports success itself (fuse_flush still writes dirty pages back before close).
    # The upper is scratch space; durability matters only for the finished layer.

    async def flush(self, fh: int) -> None:
        raise pyfuse3.FUSEError(errno.ENOSYS)

    async def fsync(self, fh: int, datasync: bool) -> None:
        raise pyfuse3.FUSEError(errno.ENOSYS)

    @_boundary
    async def release(self, fh: int) -> None:
        h = self._handles.pop(fh)
        backing.close(h.fd)
        self._drop(self.model.released(h.ino))
        self._forget_attrs([h.ino])

    # -- directories ------------------------------------------------------------------------

    @_boundary
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        self.model.dir(inode)  # ENOTDIR unless a directory
        fh = self._next_fh
        self._next_fh += 1
        # the listing is snapshotted when reading starts (offset 0), so offsets stay valid
        # while the directory changes, and a rewind sees it as it is now
        self._dir_handles[fh] = (inode, [])
        return fh

    @_boundary
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        ino, listing = self._dir_handles[fh]
        if start_id == 0:  # a (re)wind: POSIX wants the directory as it is now
            listing = self.model.listdir(ino)
            self._dir_handles[fh] = (ino, listing)
        d = self.model.inodes.get(ino)
        table = d.children if d is not None and d.children is not None else {}
        for i in range(start_id, len(listing)):
            name, child = listing[i]
            if table.get(name) != child:
                continue  # removed or replaced since opendir
            node = self.model.inodes[child]
            raw = name.encode("utf-8", "surrogateescape")
            if not pyfuse3.readdir_reply(token, raw, self._attr(node), i + 1):
                break
            node.lookups += 1

    async def releasedir(self, fh: int) -> None:
        self._dir_handles.pop(fh, None)

    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        raise pyfuse3.FUSEError(errno.ENOSYS)

    @_boundary
    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        st = self.backing.statvfs()
        out = pyfuse3.StatvfsData()
        out.f_bsize = st.f_bsize
        out.f_frsize = st.f_frsize
        out.f_blocks = st.f_blocks
        out.f_bfree = st.f_bfree
        out.f_bavail = st.f_bavail
        out.f_files = st.f_files
        out.f_ffree = st.f_ffree
        out.f_favail = st.f_favail
        out.f_namemax = 255
        if self.quota is not None:  # the budget is the filesystem: what df and tools see
            limit_b, free_b, limit_i, free_i = self.quota.free()
            frsize = st.f_frsize or 4096
            out.f_blocks = min(limit_b // frsize, st.f_blocks)  # a smaller disk is the limit
            out.f_bfree = out.f_bavail = min(st.f_bavail, free_b // frsize)
            out.f_files = min(limit_i, st.f_files) if st.f_files else limit_i
            out.f_ffree = out.f_favail = min(free_i, out.f_files)
        return out

    # -- xattrs -----------------------------------------------------------------------------

    @_boundary
    async def setxattr(
        self, inode: int, name: bytes, value: bytes, ctx: pyfuse3.RequestContext
    ) -> None:
        self.model.setxattr(inode, _xname(name), value, _now())

    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        """The kernel asks for ``security.capability`` before every write(2) and chown(2)
        of a regular file (file_remove_privs, ATTR_KILL_PRIV: FUSE clears SB_NOSEC, and
        pyfuse3 cannot ask for FUSE_CAP_HANDLE_KILLPRIV), two requests per file an untar
        creates. The usual answer, "no such attribute" on an inode without xattrs, is
        given here directly (``no_such_xattr``); everything else goes through the model."""
        node = self.model.inodes.get(inode)
        if node is not None and no_such_xattr(node.xattrs, name):
            raise pyfuse3.FUSEError(errno.ENODATA)  # a new one: a reused one's traceback grows
        return await self._getxattr(inode, name)

    @_boundary
    async def _getxattr(self, inode: int, name: bytes) -> bytes:
        return self.model.getxattr(inode, _xname(name))

    @_boundary
    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> Sequence[bytes]:
        return [n.encode("utf-8", "surrogateescape") for n in self.model.listxattr(inode)]

    @_boundary
    async def removexattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        self.model.removexattr(inode, _xname(name), _now())


XATTR_NAMESPACES = ("user.", "trusted.", "security.", "system.")
# the namespaces the model stores (no "system.": POSIX ACLs answer EOPNOTSUPP)
_STORED_XATTR_PREFIXES = (b"user.", b"trusted.", b"security.")


def no_such_xattr(xattrs: dict[str, bytes], name: bytes) -> bool:
    """True when the model's answer to GETXATTR ``name`` on an inode with ``xattrs`` is
    certainly ENODATA: a name it would accept (a stored namespace) and no xattrs at all."""
    return not xattrs and name.startswith(_STORED_XATTR_PREFIXES)


def _xname(raw: bytes) -> str:
    """An xattr name; the kernel's namespaces only (others would be exported into layers
    that no runtime could apply)."""
    name = raw.decode("utf-8", "surrogateescape")
    if not name.startswith(XATTR_NAMESPACES):
        raise OSError(errno.EOPNOTSUPP, "unsupported xattr namespace")
    return name


__all__ = ["ROOT_INO", "OverlayOperations"]
