"""``--disk-limit`` and ``--inode-limit``: what the build's RUN steps may write.

Job: parse the flags (``parse_disk_limit``, ``parse_inode_limit``), choose the limits of a
build (``step_limits``: the flags, or the ``--untrusted`` defaults), keep the account of
what the build's RUN layers hold (``DiskAccount``) and word the failure of a step that hit
a limit (``exceeded_message``).

Rules:
- The limit is the build's: each RUN step gets what the layers of the build's earlier RUN
  steps left of it (``DiskAccount``; steps of concurrent stages each see what was left
  when they started). Within a step, its root overlay and its writable ``RUN --mount``
  trees (cache mounts included) share it; a tmpfs mount gets at most that size. The
  servers answer ENOSPC beyond it (``fuse_overlay/quota.py``), as a full disk would; the
  step then fails with one line naming the limit, whatever the command's exit status
  (a refused write may have been the kernel's write-back of data the command believes
  written), and nothing of it is kept: no layer, no cache-mount change.
- Sizes read as Docker reads them (go-units ``RAMInBytes``: multiples of 1024, ``100MB``
  is 100 MiB); the message says the limit the same way.
- A limit is not part of any cache key: a step that fits its limit makes the same layer
  as without one. Layers taken from the step cache are not new data and are not counted.
- COPY/ADD layers the build makes count too (``DiskAccount.charge``, their entries as
  written, before the layer is): a COPY or ADD over what is left fails at its line naming
  the limit, and what it left is all the next RUN step gets. Without that, a job could
  add to the disk what its context and remote sources hold, again at every COPY.
- Why the build's and not each step's: a build service must bound what one job can add
  to the disk; a per-step limit lets a Dockerfile of many steps write that many times it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from rootbuild.engine.run_flags import positive_size
from rootbuild.errors import UsageError
from rootbuild.image.layer_write import TarEntry
from rootbuild.image.layermeta import LayerMeta

if TYPE_CHECKING:
    from rootbuild.engine.options import BuildOptions

#: ``--untrusted`` without the flags: per build, 10 GiB and a million inodes
UNTRUSTED_DISK_LIMIT = 10 << 30
UNTRUSTED_INODE_LIMIT = 1_000_000
_UNITS = (("TB", 1 << 40), ("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10))


def parse_disk_limit(text: str) -> int:
    return positive_size("--disk-limit", text, "100MB, 10GB")


def parse_inode_limit(text: str) -> int:
    try:
        count = int(text)
    except ValueError:
        count = 0
    if count <= 0:
        raise UsageError(f"build: invalid --inode-limit {text!r}: expected a number of "
                         "files greater than 0")
    return count


def step_limits(disk: int | None, inodes: int | None, untrusted: bool
                ) -> tuple[int | None, int | None]:
    """(bytes, inodes) each RUN step may hold; None: unlimited."""
    if untrusted:
        return (UNTRUSTED_DISK_LIMIT if disk is None else disk,
                UNTRUSTED_INODE_LIMIT if inodes is None else inodes)
    return disk, inodes


def format_size(size: int) -> str:
    """``100MB`` for 100 MiB (Docker's units); exact, or with up to two decimals."""
    for unit, scale in _UNITS:
        if size >= scale:
            value = size / scale
            text = f"{value:.2f}".rstrip("0").rstrip(".")
            return f"{text}{unit}"
    return f"{size}B"


def exceeded_message(limit: str, disk: int | None, inodes: int | None) -> str:
    """The failure of a step whose overlay refused a request for ``limit``."""
    if limit == "inodes" and inodes is not None:
        return f"inode limit {inodes} exceeded"
    return f"disk limit {format_size(disk or 0)} exceeded"


def limits_of(options: BuildOptions) -> tuple[int | None, int | None]:
    """(``StepSpec.disk_limit``, ``StepSpec.inode_limit``) of every RUN step of the build."""
    return step_limits(options.disk_limit, options.inode_limit, options.untrusted)


def limit_message(options: BuildOptions, limit: str) -> str:
    return exceeded_message(limit, *limits_of(options))


#: what one layer entry costs (a tar header), as the overlay counts it (fuse_overlay/quota.py)
ENTRY_BYTES = 512


@dataclass
class DiskAccount:
    """What the build's RUN layers hold so far (bytes, entries)."""

    bytes_used: int = 0
    inodes_used: int = 0

    def left(self, disk: int | None, inodes: int | None) -> tuple[int | None, int | None]:
        """The limits of the next RUN step; a spent limit is 0."""
        return (None if disk is None else max(0, disk - self.bytes_used),
                None if inodes is None else max(0, inodes - self.inodes_used))

    def add(self, meta: LayerMeta) -> None:
        """A RUN step's layer, made by this build."""
        entries = [e for e in meta.entries.values() if not e.implicit]
        self.bytes_used += sum(e.size + ENTRY_BYTES for e in entries)
        self.inodes_used += len(entries)

    def charge(self, entries: Sequence[TarEntry], disk: int | None, inodes: int | None
               ) -> str:
        """A COPY/ADD layer about to be written: counted, or, when it does not fit in
        what is left, the limit it would break ("disk", "inodes"; nothing counted)."""
        size = sum(e.size + ENTRY_BYTES for e in entries)
        left_disk, left_inodes = self.left(disk, inodes)
        if left_disk is not None and size > left_disk:
            return "disk"
        if left_inodes is not None and len(entries) > left_inodes:
            return "inodes"
        self.bytes_used += size
        self.inodes_used += len(entries)
        return ""
