"""The disk budget of a step: what its writable overlays may hold together.

Job: ``DiskBudget`` (a step's limits and the file its overlay servers share),
``create_budget`` (the sandbox init, before it mounts anything) and ``budget_usage`` (after
the step: taken bytes and inodes, refusals).

Rules: one budget per RUN step, shared by its root overlay and its writable ``RUN --mount``
trees (cache mounts included); a snapshotter charges every byte and inode its upper holds
to it and answers ENOSPC beyond it (``fuse_overlay/quota.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rootbuild.fuse_overlay.pool import create_pool, read_pool
from rootbuild.fuse_overlay.quota import NO_INODE_LIMIT, Usage

__all__ = ["NO_INODE_LIMIT", "DiskBudget", "Usage", "budget_usage", "create_budget"]


@dataclass(frozen=True)
class DiskBudget:
    """``path``: the shared file; ``limit_bytes``/``limit_inodes``: the limits."""

    path: Path
    limit_bytes: int
    limit_inodes: int = NO_INODE_LIMIT


def create_budget(path: Path, limit_bytes: int, limit_inodes: int | None) -> DiskBudget:
    inodes = NO_INODE_LIMIT if limit_inodes is None else limit_inodes
    create_pool(path, limit_bytes, inodes)
    return DiskBudget(path, limit_bytes, inodes)


def budget_usage(budget: DiskBudget) -> Usage:
    return read_pool(budget.path)
