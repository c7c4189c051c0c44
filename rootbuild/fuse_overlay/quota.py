"""The overlay's disk budget: what a step's writable uppers may hold, counted in the server.

Job: ``Quota``, the per-server account (bytes and inodes the upper holds) that charges
before every change that would grow the upper and refuses it with ENOSPC, and gives back
what is freed; ``Pool``, the Protocol of the budget several servers share (the step's
root and its writable ``RUN --mount`` overlays: one server process each), and
``MemoryPool``, a pure one. The file-backed pool the servers really share is ``pool.py``.
Pure: no I/O here.

Rules:
- A charge happens before the change it pays for; a refused charge changes nothing (the
  caller has done nothing yet), counts one refusal in the pool, and raises
  ``OSError(ENOSPC)``: what a full disk answers, and what BuildKit users see from one.
- What the upper holds (``cost``): each inode created in the step costs one inode and
  ``ENTRY_BYTES`` (a layer tar's header); a regular file's content its apparent size
  (a sparse file counts whole: it becomes that many bytes in the layer); a copy-up the
  size it keeps (a lower file whose attributes, xattrs or names change: its whole size,
  since the layer holds its content again); a symlink its target's length; an extra hard
  link ``ENTRY_BYTES``; an xattr its name and value. Freed content (unlink of the last
  reference, truncate down, removexattr) is given back at once; a hard link's name is
  given back with its inode.
- Sharing without a lock per request: a server takes a reservation from the pool in
  chunks (``chunk``: 1/64 of the limit, between 64 KiB and 4 MiB) and charges against it
  locally; it goes back to the pool only when the reservation is used up, and returns
  what it holds beyond two chunks. A request is refused only when the pool itself cannot
  give what it needs, so the limit is exact up to the chunks other servers hold unused
  (at most 1/64 of the limit each).
- Not charged: whiteouts, and a lower directory moved whole (rename emits its subtree in
  the layer, hardlinked from the lower tree): both bounded by the base image's size.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass, replace
from typing import Protocol

#: what one new entry costs in bytes: the 512-byte header it takes in the layer tar
ENTRY_BYTES = 512
#: no limit on inodes (only --disk-limit given)
NO_INODE_LIMIT = 1 << 62


@dataclass(frozen=True)
class Usage:
    """The pool's state: limits, what the servers took from it, refusals so far."""

    limit_bytes: int
    limit_inodes: int
    taken_bytes: int
    taken_inodes: int
    refusals: int  # requests refused for bytes
    inode_refusals: int = 0  # requests refused for inodes alone


class Pool(Protocol):
    def take(self, nbytes: int, ninodes: int, want_bytes: int, want_inodes: int
             ) -> tuple[int, int] | None:
        """Reserve at least ``nbytes``/``ninodes`` (up to ``want_*`` when the pool has
        them); None (nothing taken) when the pool cannot give the minimum."""
        ...

    def give(self, nbytes: int, ninodes: int) -> None:
        """Return a reservation."""
        ...

    def refused(self, inodes: bool) -> None:
        """Count one refused request (``inodes``: for the inode limit alone)."""
        ...

    def usage(self) -> Usage: ...


class MemoryPool:
    """A pool in memory: one server's whole budget (and the unit tests')."""

    def __init__(self, limit_bytes: int, limit_inodes: int = NO_INODE_LIMIT) -> None:
        self._usage = Usage(limit_bytes, limit_inodes, 0, 0, 0, 0)

    def take(self, nbytes: int, ninodes: int, want_bytes: int, want_inodes: int
             ) -> tuple[int, int] | None:
        u = self._usage
        got = grant(u, nbytes, ninodes, want_bytes, want_inodes)
        if got is not None:
            self._usage = replace(u, taken_bytes=u.taken_bytes + got[0],
                                  taken_inodes=u.taken_inodes + got[1])
        return got

    def give(self, nbytes: int, ninodes: int) -> None:
        self._usage = given(self._usage, nbytes, ninodes)

    def refused(self, inodes: bool) -> None:
        self._usage = counted(self._usage, inodes)

    def usage(self) -> Usage:
        return self._usage


def grant(u: Usage, nbytes: int, ninodes: int, want_bytes: int, want_inodes: int
          ) -> tuple[int, int] | None:
    """What a pool in state ``u`` gives for a request (the rule every pool applies)."""
    free_b = u.limit_bytes - u.taken_bytes
    free_i = u.limit_inodes - u.taken_inodes
    if nbytes > free_b or ninodes > free_i:
        return None
    return (min(max(nbytes, want_bytes), free_b) if nbytes or want_bytes else 0,
            min(max(ninodes, want_inodes), free_i) if ninodes or want_inodes else 0)


def given(u: Usage, nbytes: int, ninodes: int) -> Usage:
    return replace(u, taken_bytes=max(0, u.taken_bytes - nbytes),
                   taken_inodes=max(0, u.taken_inodes - ninodes))


def counted(u: Usage, inodes: bool) -> Usage:
    if inodes:
        return replace(u, inode_refusals=u.inode_refusals + 1)
    return replace(u, refusals=u.refusals + 1)


def chunk_of(limit: int, low: int, high: int) -> int:
    return max(low, min(high, limit // 64))


class Quota:
    """One server's account against ``pool``: ``used`` what its upper holds, ``held`` the
    reservation it took (``used <= held``)."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        u = pool.usage()
        self.chunk_bytes = chunk_of(u.limit_bytes, 64 << 10, 4 << 20)
        self.chunk_inodes = chunk_of(u.limit_inodes, 16, 1024)
        self.used_bytes = self.used_inodes = 0
        self.held_bytes = self.held_inodes = 0
        self.refusals = 0

    def charge(self, nbytes: int, ninodes: int = 0) -> None:
        """Account ``nbytes`` and ``ninodes`` more, or refuse (ENOSPC, nothing changed)."""
        if nbytes <= 0 and ninodes <= 0:
            return
        need_b = max(0, self.used_bytes + nbytes - self.held_bytes)
        need_i = max(0, self.used_inodes + ninodes - self.held_inodes)
        if need_b or need_i:
            got = self.pool.take(need_b, need_i, self.chunk_bytes if need_b else 0,
                                 self.chunk_inodes if need_i else 0)
            if got is None:
                self.refusals += 1
                u = self.pool.usage()
                inodes = u.limit_bytes - u.taken_bytes >= need_b  # bytes were not short
                self.pool.refused(inodes)
                raise OSError(errno.ENOSPC, f"{'inode' if inodes else 'disk'} limit reached")
            self.held_bytes += got[0]
            self.held_inodes += got[1]
        self.used_bytes += max(0, nbytes)
        self.used_inodes += max(0, ninodes)

    def release(self, nbytes: int, ninodes: int = 0) -> None:
        """Give back what was freed; a reservation beyond two chunks goes to the pool."""
        self.used_bytes = max(0, self.used_bytes - max(0, nbytes))
        self.used_inodes = max(0, self.used_inodes - max(0, ninodes))
        extra_b = self.held_bytes - self.used_bytes - 2 * self.chunk_bytes
        extra_i = self.held_inodes - self.used_inodes - 2 * self.chunk_inodes
        if extra_b > 0 or extra_i > 0:
            back_b = self.held_bytes - self.used_bytes - self.chunk_bytes if extra_b > 0 else 0
            back_i = (self.held_inodes - self.used_inodes - self.chunk_inodes
                      if extra_i > 0 else 0)
            self.pool.give(back_b, back_i)
            self.held_bytes -= back_b
            self.held_inodes -= back_i

    def free(self) -> tuple[int, int, int, int]:
        """(limit bytes, free bytes, limit inodes, free inodes) for statfs: the pool's free
        space plus this server's unused reservation."""
        u = self.pool.usage()
        free_b = u.limit_bytes - u.taken_bytes + self.held_bytes - self.used_bytes
        free_i = u.limit_inodes - u.taken_inodes + self.held_inodes - self.used_inodes
        return u.limit_bytes, max(0, free_b), u.limit_inodes, max(0, free_i)
