"""The snapshotter seam: prepare the filesystem a step runs on, mount it, collect the step's
changes as a layer, clean up.

Rules (STYLE.md: a small Protocol at each side-effect seam, the implementation chosen once):
- A ``Snapshotter`` is chosen once, when a build starts (``choose_snapshotter``); the rest of
  the build only sees the Protocol. Today there is one implementation, the FUSE overlay.
  The kernel's own overlayfs inside the build's user namespace is the next candidate where
  the kernel allows it and a subuid range exists; it slots in here as a second class whose
  ``mount`` returns the same ``MountedStep`` shape.
- A step's result is always an extracted-layer tree plus its ``LayerMeta``: exactly what
  layer extraction produces, so it is exported with ``entries_from_extracted`` and serves
  as a lower of the next step without being extracted again.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from rootbuild.errors import SandboxError
from rootbuild.fuse_overlay.mount import OverlayResult, mount_overlay


@dataclass(frozen=True)
class LowerLayer:
    """An extracted layer: its tree and the ``meta.json`` its extraction recorded."""

    tree: Path
    meta_path: Path


class MountedStep(Protocol):
    mountpoint: Path

    def finish(self) -> OverlayResult:
        """Unmount and return the step's changes (created, modified, deleted paths)."""
        ...


class Snapshotter(Protocol):
    name: str

    def mount(
        self, lowers: Sequence[LowerLayer], work: Path, mountpoint: Path
    ) -> contextlib.AbstractContextManager[MountedStep]:
        """Mount ``lowers`` (lowest first) read-only with a fresh writable upper kept in
        ``work`` (created; must not exist) at ``mountpoint``. Leaving the context without
        ``finish()`` tears everything down and keeps nothing."""
        ...


class FuseSnapshotter:
    """rootbuild's pyfuse3 overlay (``rootbuild.fuse_overlay``): works wherever an
    unprivileged user can mount FUSE (in a user namespace, or through fusermount3)."""

    name = "fuse"

    @contextlib.contextmanager
    def mount(
        self, lowers: Sequence[LowerLayer], work: Path, mountpoint: Path
    ) -> Iterator[MountedStep]:
        with mount_overlay([(lo.tree, lo.meta_path) for lo in lowers], work, mountpoint) as m:
            yield m


SNAPSHOTTERS: dict[str, type[FuseSnapshotter]] = {FuseSnapshotter.name: FuseSnapshotter}


def choose_snapshotter() -> Snapshotter:
    """The snapshotter for this build, chosen once when the build starts; its ``name``
    travels with each step's spec to the sandbox, which asks ``snapshotter_named``."""
    return FuseSnapshotter()


def snapshotter_named(name: str) -> Snapshotter:
    try:
        return SNAPSHOTTERS[name]()
    except KeyError:
        raise SandboxError(f"mount step root: unknown snapshotter {name!r}") from None
