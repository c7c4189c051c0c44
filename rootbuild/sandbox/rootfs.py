"""Root filesystem providers: mount a step's root at a mountpoint, inside the sandbox.

Job: turn a ``Rootfs`` description into a context manager that mounts the root at the given
mountpoint and yields a ``MountedRoot`` whose ``finish()`` unmounts it and returns the step's
layer (None for a plain directory). Leaving the context without ``finish()`` tears the
mount down and keeps nothing.

Rules: providers run in the sandbox init, as root of the step's user namespace and in its
private mount namespace, so the FUSE server they start sees namespace ids and its mount
never appears in the builder's namespace.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol

from rootbuild.sandbox import mounts
from rootbuild.sandbox.spec import DirRoot, OverlayRoot, Rootfs
from rootbuild.snapshot import DiskBudget, StepChanges, snapshotter_named


class MountedRoot(Protocol):
    @property
    def mountpoint(self) -> Path: ...

    def finish(self) -> StepChanges | None: ...


Provider = Callable[[Path], contextlib.AbstractContextManager[MountedRoot]]


class _BoundDir:
    def __init__(self, mountpoint: Path) -> None:
        self.mountpoint = mountpoint
        self.mounted = True

    def finish(self) -> None:
        self.unmount()

    def unmount(self) -> None:
        if self.mounted:
            self.mounted = False
            mounts.umount2(str(self.mountpoint), mounts.MNT_DETACH)


@contextlib.contextmanager
def _dir_root(source: Path, mountpoint: Path) -> Iterator[MountedRoot]:
    # a bind makes the directory a mount of its own, which pivot_root requires
    mounts.mount(str(source), str(mountpoint), None, mounts.MS_BIND | mounts.MS_REC)
    handle = _BoundDir(mountpoint)
    try:
        yield handle
    finally:
        handle.unmount()


@contextlib.contextmanager
def _overlay_root(root: OverlayRoot, mountpoint: Path, budget: DiskBudget | None
                  ) -> Iterator[MountedRoot]:
    snapshotter = snapshotter_named(root.snapshotter)
    with snapshotter.mount(root.lowers, root.work, mountpoint, budget) as m:
        yield m


def provider_for(root: Rootfs, budget: DiskBudget | None = None) -> Provider:
    """The provider that mounts ``root``; an overlay's upper is charged to ``budget``."""
    if isinstance(root, DirRoot):
        return lambda mountpoint: _dir_root(root.path, mountpoint)
    return lambda mountpoint: _overlay_root(root, mountpoint, budget)
