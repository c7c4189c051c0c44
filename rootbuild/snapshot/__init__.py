"""Snapshotters: the filesystem a step runs on, behind one Protocol (the "engine seam").

- ``base``: ``LowerLayer``, ``StepChanges``, the ``Snapshotter`` Protocol, ``MountedStep``.
- ``fuse``: ``FuseSnapshotter``, over ``rootbuild.fuse_overlay``.
- ``budget``: ``DiskBudget``, a step's disk limit shared by its overlays.
- ``registry``: ``SNAPSHOTTERS`` in preference order, ``choose_snapshotter`` (probes),
  ``snapshotter_named``.

Rules: this package imports ``fuse_overlay``, never the reverse; ``sandbox`` and the engine
import this package, never ``fuse_overlay``.
"""

from rootbuild.snapshot.base import LowerLayer, MountedStep, Snapshotter, StepChanges
from rootbuild.snapshot.budget import (
    NO_INODE_LIMIT,
    DiskBudget,
    budget_usage,
    create_budget,
)
from rootbuild.snapshot.fuse import FuseSnapshotter
from rootbuild.snapshot.registry import SNAPSHOTTERS, choose_snapshotter, snapshotter_named

__all__ = [
    "NO_INODE_LIMIT",
    "SNAPSHOTTERS",
    "DiskBudget",
    "FuseSnapshotter",
    "LowerLayer",
    "MountedStep",
    "Snapshotter",
    "StepChanges",
    "budget_usage",
    "choose_snapshotter",
    "create_budget",
    "snapshotter_named",
]
