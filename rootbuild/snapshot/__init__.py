"""Snapshotters: the filesystem a step runs on, behind one Protocol (the "engine seam").

- ``base``: ``LowerLayer``, ``StepChanges``, the ``Snapshotter`` Protocol, ``MountedStep``.
- ``fuse``: ``FuseSnapshotter``, over ``rootbuild.fuse_overlay``.
- ``kernel``: ``KernelOverlaySnapshotter``, the kernel's overlayfs in the build's user
  namespace, with ``kernel_view`` (what each lower needs shown differently from the disk),
  ``upper_changes`` (the upper directory as the step's layer; both pure) and
  ``kernel_trees`` (those trees written and read on disk).
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
from rootbuild.snapshot.kernel import KernelOverlaySnapshotter
from rootbuild.snapshot.registry import (
    AUTO,
    CHOICES,
    SNAPSHOTTERS,
    choose_snapshotter,
    explain_choice,
    snapshotter_named,
)

__all__ = [
    "AUTO",
    "CHOICES",
    "NO_INODE_LIMIT",
    "SNAPSHOTTERS",
    "DiskBudget",
    "FuseSnapshotter",
    "KernelOverlaySnapshotter",
    "LowerLayer",
    "MountedStep",
    "Snapshotter",
    "StepChanges",
    "budget_usage",
    "choose_snapshotter",
    "create_budget",
    "explain_choice",
    "snapshotter_named",
]
