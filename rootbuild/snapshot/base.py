"""The snapshotter seam as types: what a step's root filesystem provider takes and promises.

Job: ``LowerLayer`` (an extracted layer), ``StepChanges`` (a step's changes as a layer),
and the ``Snapshotter`` Protocol with the ``MountedStep`` its ``mount`` yields.

Rules (STYLE.md: a small Protocol at each side-effect seam, the implementation chosen once):
- A step's result is always an extracted-layer tree plus its ``LayerMeta``: exactly what
  layer extraction produces, so it is exported with ``entries_from_extracted`` and serves
  as a lower of the next step without being extracted again.
- ``mount`` gives a step a writable root over read-only lowers; ``view`` gives a read-only
  merged tree (no upper at all: every write fails with EROFS). Neither ever writes to a
  lower; both leave no mount and no process behind when their context ends.
- ``probe`` is cheap and touches nothing: it says why the snapshotter cannot work for this
  user on this machine (with the fix), or None when it can.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from rootbuild.image.layermeta import LayerMeta
from rootbuild.snapshot.budget import DiskBudget


@dataclass(frozen=True)
class LowerLayer:
    """An extracted layer: its tree and the ``meta.json`` its extraction recorded."""

    tree: Path
    meta_path: Path


@dataclass(frozen=True)
class StepChanges:
    """A step's changes as an extracted-layer tree and its metadata (``layermeta``)."""

    tree: Path
    meta: LayerMeta


class MountedStep(Protocol):
    @property
    def mountpoint(self) -> Path: ...

    def finish(self) -> StepChanges:
        """Unmount and return the step's changes (created, modified, deleted paths)."""
        ...


class Snapshotter(Protocol):
    @property
    def name(self) -> str: ...

    def probe(self) -> str | None:
        """Why this snapshotter cannot work here, with the fix; None when it can."""
        ...

    def mount(
        self, lowers: Sequence[LowerLayer], work: Path, mountpoint: Path,
        budget: DiskBudget | None = None,
    ) -> contextlib.AbstractContextManager[MountedStep]:
        """Mount ``lowers`` (lowest first) read-only with a fresh writable upper kept in
        ``work`` (created; must not exist) at ``mountpoint``. Leaving the context without
        ``finish()`` tears everything down and keeps nothing. ``budget``: what the upper
        may hold (bytes, inodes; shared with the step's other overlays): beyond it,
        writes and creates fail with ENOSPC, and statfs reports it."""
        ...

    def view(
        self, lowers: Sequence[LowerLayer], work: Path, mountpoint: Path
    ) -> contextlib.AbstractContextManager[Path]:
        """Mount the merged tree of ``lowers`` (lowest first) READ-ONLY at ``mountpoint``
        (yielded); ``work`` (created; must not exist) holds the provider's own files,
        never a change. Writes, creates and unlinks fail with EROFS; leaving the context
        unmounts it."""
        ...
