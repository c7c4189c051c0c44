"""The disk budget a step's overlay servers share: a small file in the step's scratch.

Job: ``create_pool`` (the sandbox init, before any overlay of the step is mounted),
``FilePool`` (each server's ``quota.Pool``), ``read_pool`` (the init, after the step: did a
server refuse a request?).

Rules:
- The file holds six little-endian int64s: limit bytes, limit inodes, bytes and inodes
  taken by the servers, refusals for bytes, refusals for inodes. Every read-modify-write
  holds ``flock(LOCK_EX)`` on it; servers come here only per reservation chunk
  (quota.py), not per request.
- The file lives in the step's private scratch (host territory, never visible to the
  step); it is opened O_NOFOLLOW and created O_EXCL, mode 0600.
"""

from __future__ import annotations

import fcntl
import os
import struct
from dataclasses import replace
from pathlib import Path

from rootbuild.fuse_overlay.quota import Usage, counted, given, grant

_FORMAT = struct.Struct("<6q")


def create_pool(path: Path, limit_bytes: int, limit_inodes: int) -> None:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o600)
    try:
        os.pwrite(fd, _FORMAT.pack(limit_bytes, limit_inodes, 0, 0, 0, 0), 0)
    finally:
        os.close(fd)


def read_pool(path: Path) -> Usage:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        return Usage(*_FORMAT.unpack(os.pread(fd, _FORMAT.size, 0)))
    finally:
        os.close(fd)


class FilePool:
    """``quota.Pool`` over the shared file at ``path`` (kept open by the server)."""

    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)

    def close(self) -> None:
        os.close(self.fd)

    def _read(self) -> Usage:
        return Usage(*_FORMAT.unpack(os.pread(self.fd, _FORMAT.size, 0)))

    def _write(self, u: Usage) -> None:
        os.pwrite(self.fd, _FORMAT.pack(u.limit_bytes, u.limit_inodes, u.taken_bytes,
                                        u.taken_inodes, u.refusals, u.inode_refusals), 0)

    def _locked(self) -> _Lock:
        return _Lock(self.fd)

    def take(self, nbytes: int, ninodes: int, want_bytes: int, want_inodes: int
             ) -> tuple[int, int] | None:
        with self._locked():
            u = self._read()
            got = grant(u, nbytes, ninodes, want_bytes, want_inodes)
            if got is not None:
                self._write(replace(u, taken_bytes=u.taken_bytes + got[0],
                                    taken_inodes=u.taken_inodes + got[1]))
            return got

    def give(self, nbytes: int, ninodes: int) -> None:
        with self._locked():
            self._write(given(self._read(), nbytes, ninodes))

    def refused(self, inodes: bool) -> None:
        with self._locked():
            self._write(counted(self._read(), inodes))

    def usage(self) -> Usage:
        with self._locked():
            return self._read()


class _Lock:
    def __init__(self, fd: int) -> None:
        self.fd = fd

    def __enter__(self) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_EX)

    def __exit__(self, *exc: object) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_UN)
