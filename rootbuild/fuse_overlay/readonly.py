"""The overlay's read-only mode: the merged tree of the lowers, with no upper at all.

Job: ``ReadOnlyOperations``, what ``server.py`` serves for a view (``mount_overlay(...,
readonly=True)``): a stage's or an image's tree visible in a step without a writable layer
(``RUN --mount=type=bind,from=...``).

Rules:
- Two locks, either one enough: the mount is ``ro`` (the kernel answers EROFS to every
  write, create, unlink, setattr and write-open before a request is sent), and every
  request that would change the tree is refused here with EROFS too, so nothing reaches
  the model's copy-up or the upper store even if the kernel let one through.
- Nothing is ever written to a lower (the overlay never does: ``backing.py``), and a view
  has no result: the server writes no layer when it ends.
"""

from __future__ import annotations

import errno
import os

import pyfuse3

from rootbuild.fuse_overlay.ops import OverlayOperations


def _refuse() -> pyfuse3.FUSEError:
    return pyfuse3.FUSEError(errno.EROFS)


class ReadOnlyOperations(OverlayOperations):
    """``OverlayOperations`` that refuse every change with EROFS, mounted ``ro``."""

    def mount_options(self) -> set[str]:
        return super().mount_options() | {"ro"}

    async def setattr(
        self,
        inode: int,
        attr: pyfuse3.EntryAttributes,
        fields: pyfuse3.SetattrFields,
        fh: int | None,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        raise _refuse()

    async def mknod(
        self, parent_inode: int, name: bytes, mode: int, rdev: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        raise _refuse()

    async def mkdir(
        self, parent_inode: int, name: bytes, mode: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        raise _refuse()

    async def symlink(
        self, parent_inode: int, name: bytes, target: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        raise _refuse()

    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        raise _refuse()

    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        raise _refuse()

    async def rename(
        self,
        parent_inode_old: int,
        name_old: bytes,
        parent_inode_new: int,
        name_new: bytes,
        flags: int,
        ctx: pyfuse3.RequestContext,
    ) -> None:
        raise _refuse()

    async def link(
        self, inode: int, new_parent_inode: int, new_name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        raise _refuse()

    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        if (flags & os.O_ACCMODE) != os.O_RDONLY or flags & os.O_TRUNC:
            raise _refuse()
        return await super().open(inode, flags, ctx)

    async def create(
        self,
        parent_inode: int,
        name: bytes,
        mode: int,
        flags: int,
        ctx: pyfuse3.RequestContext,
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        raise _refuse()

    async def write(self, fh: int, off: int, buf: bytes) -> int:
        raise _refuse()

    async def setxattr(
        self, inode: int, name: bytes, value: bytes, ctx: pyfuse3.RequestContext
    ) -> None:
        raise _refuse()

    async def removexattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        raise _refuse()
