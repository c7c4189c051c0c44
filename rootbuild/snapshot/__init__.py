"""Snapshotters: the filesystem a step runs on, behind one Protocol (the "engine seam").

- ``base``: ``LowerLayer``, ``StepChanges``, the ``Snapshotter`` Protocol, ``MountedStep``.
- ``fuse``: ``FuseSnapshotter``, over ``rootbuild.fuse_overlay``.
- ``registry``: ``SNAPSHOTTERS`` in preference order, ``choose_snapshotter`` (probes),
  ``snapshotter_named``.

Rules: this package imports ``fuse_overlay``, never the reverse; ``sandbox`` and the engine
import this package, never ``fuse_overlay``.
"""

from rootbuild.snapshot.base import LowerLayer, MountedStep, Snapshotter, StepChanges
from rootbuild.snapshot.fuse import FuseSnapshotter
from rootbuild.snapshot.registry import SNAPSHOTTERS, choose_snapshotter, snapshotter_named

__all__ = [
    "SNAPSHOTTERS",
    "FuseSnapshotter",
    "LowerLayer",
    "MountedStep",
    "Snapshotter",
    "StepChanges",
    "choose_snapshotter",
    "snapshotter_named",
]
