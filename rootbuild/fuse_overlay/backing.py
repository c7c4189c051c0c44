"""The overlay's backing store: the read-only lower trees and the flat upper data store.

Job: every syscall the overlay makes on host storage, in one place, so the safety rules
can be read off one file (SECURITY.md rule 4: the backing store is host territory).

Rules:
- Every operation is relative to a directory fd opened with O_DIRECTORY|O_NOFOLLOW; every
  open has O_NOFOLLOW (lower paths: on every component, via ``open_beneath``). Nothing
  here ever follows a symlink; symlinks stored in a layer reach the kernel only through
  READLINK, from the model.
- The upper data store is flat: ``work/data/<n>``, one file per upper inode, created
  O_CREAT|O_EXCL. Renames and hardlinks never touch it, so no path is ever traversed in
  the upper.
- Backing files are plain files of the invoking user (mode 0600); owners, modes, devices
  and xattrs are virtual (inodes.py).
- Copies use copy_file_range (reflink or in-kernel copy where the filesystem can),
  falling back to a pread/pwrite loop.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Sequence
from pathlib import Path

from rootbuild.image.rootfs import open_beneath

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_CHUNK = 1 << 20
_COPY_CHUNK = 1 << 30


def copy_fd(src: int, dst: int, size: int) -> None:
    """Copy ``size`` bytes from offset 0 of ``src`` to offset 0 of ``dst``."""
    done = 0
    try:
        while done < size:
            n = os.copy_file_range(src, dst, min(size - done, _COPY_CHUNK), done, done)
            if n == 0:
                break  # the source is shorter than recorded: copy what is there
            done += n
        return
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            raise
    while done < size:
        chunk = os.pread(src, min(_CHUNK, size - done), done)
        if not chunk:
            break
        view = memoryview(chunk)
        off = done
        while view:
            n = os.pwrite(dst, view, off)
            view, off = view[n:], off + n
        done += len(chunk)


class Backing:
    """Directory fds on the lower trees (lowest first) and on ``work/data``."""

    def __init__(self, lowers: Sequence[Path], work: Path) -> None:
        self._fds: list[int] = []
        try:
            self.work_fd = os.open(work, _DIR_FLAGS)
            self._fds.append(self.work_fd)
            os.mkdir("data", 0o700, dir_fd=self.work_fd)
            self.data_fd = os.open("data", _DIR_FLAGS, dir_fd=self.work_fd)
            self._fds.append(self.data_fd)
            self.lower_fds = []
            for lower in lowers:
                fd = os.open(lower, _DIR_FLAGS)
                self._fds.append(fd)
                self.lower_fds.append(fd)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        while self._fds:
            os.close(self._fds.pop())

    # -- upper data store -------------------------------------------------------------------

    def create_data(self, n: int) -> int:
        """Create the empty data file ``n``; returns an O_RDWR fd on it."""
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        return os.open(str(n), flags, 0o600, dir_fd=self.data_fd)

    def open_data(self, n: int, write: bool) -> int:
        flags = (os.O_RDWR if write else os.O_RDONLY) | os.O_NOFOLLOW | os.O_CLOEXEC
        return os.open(str(n), flags, dir_fd=self.data_fd)

    def remove_data(self, n: int) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(str(n), dir_fd=self.data_fd)

    def truncate_data(self, n: int, size: int, fd: int | None = None) -> None:
        if fd is not None:
            os.ftruncate(fd, size)
            return
        fd = self.open_data(n, write=True)
        try:
            os.ftruncate(fd, size)
        finally:
            os.close(fd)

    def move_data(self, n: int, dir_fd: int, name: str) -> None:
        """Move data file ``n`` to a name in another tree (same filesystem), without copying
        it; the data store is done with it (``journal.write_tree``, after the session), and
        the step's scratch is left with nothing to unlink for it."""
        os.rename(str(n), name, src_dir_fd=self.data_fd, dst_dir_fd=dir_fd)

    # -- lowers -----------------------------------------------------------------------------

    def open_lower(self, layer: int, path: str) -> int:
        return open_beneath(self.lower_fds[layer], path, os.O_RDONLY)

    def copy_up(self, layer: int, path: str, n: int, size: int) -> int:
        """Copy a lower file into new data file ``n`` (blocking; large files run in a
        worker thread). Returns an O_RDWR fd on the copy."""
        dst = self.create_data(n)
        try:
            if size:
                src = self.open_lower(layer, path)
                try:
                    copy_fd(src, dst, size)
                finally:
                    os.close(src)
        except BaseException:
            os.close(dst)
            self.remove_data(n)
            raise
        return dst

    # -- misc -------------------------------------------------------------------------------

    def statvfs(self) -> os.statvfs_result:
        return os.fstatvfs(self.work_fd)


def pread(fd: int, size: int, off: int) -> bytes:
    return os.pread(fd, size, off)


def pwrite(fd: int, buf: bytes, off: int) -> int:
    view = memoryview(buf)
    total = 0
    while view:
        n = os.pwrite(fd, view, off + total)
        view, total = view[n:], total + n
    return total


def close(fd: int) -> None:
    os.close(fd)
