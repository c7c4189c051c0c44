"""Overlay binds: a snapshotter overlay mounted in the sandbox init and bound into the step.

Job: ``mount_overlay_binds(spec)`` mounts every ``StepSpec.overlays`` entry (a writable
overlay of its lowers with a fresh upper, or a read-only view) inside the init, and yields
the ``Bind`` of each mountpoint at its target, for the step's child to mount like any other
bind (``child._bind``). ``finish()`` (after the step exited, not killed) unmounts the
writable ones and leaves each one's changes in ``work/changes`` + ``work/changes.meta.json``
for the builder to fold (``engine/cache_mounts.py``).

Rules:
- Ownership stays virtual: the step sees the owners the lowers' metadata records and the
  owners it sets, and the changes record them as metadata; nothing on the host is ever
  owned by a subordinate id (the same reason the root is an overlay).
- One FUSE server process per overlay (``fuse_overlay/mount.py``), started here inside the
  user namespace, before the init records which processes are its servers.
- Leaving the context without ``finish()`` (a failed set-up, a killed step) tears every
  overlay down and keeps no changes; no mount and no process remain either way.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from rootbuild.errors import SandboxError
from rootbuild.sandbox.spec import Bind, OverlayBind, StepSpec
from rootbuild.snapshot import MountedStep, snapshotter_named

CHANGES_TREE = "changes"
CHANGES_META = "changes.meta.json"


class MountedOverlays:
    """The overlays of one step: their binds, and ``finish()``."""

    def __init__(self) -> None:
        self.binds: list[Bind] = []
        self._writable: list[tuple[OverlayBind, MountedStep]] = []

    def finish(self) -> None:
        """Unmount the writable overlays and leave their changes beside them."""
        for overlay, mounted in self._writable:
            changes = mounted.finish()
            try:
                os.rename(changes.tree, overlay.work / CHANGES_TREE)
            except OSError as exc:
                raise SandboxError(
                    f"keep the changes of the mount at {overlay.target}: {exc.strerror}"
                ) from exc
            changes.meta.save(overlay.work / CHANGES_META)
        self._writable.clear()


@contextlib.contextmanager
def mount_overlay_binds(spec: StepSpec) -> Iterator[MountedOverlays]:
    """Mount ``spec.overlays`` (see the module rules)."""
    result = MountedOverlays()
    with contextlib.ExitStack() as stack:
        for overlay in spec.overlays:
            overlay.work.mkdir(mode=0o700)
            mountpoint = overlay.work / "mnt"
            mountpoint.mkdir(mode=0o700)
            snapshotter = snapshotter_named(overlay.snapshotter)
            work = Path(overlay.work / "overlay")
            if overlay.readonly:
                stack.enter_context(snapshotter.view(overlay.lowers, work, mountpoint))
            else:
                mounted = stack.enter_context(
                    snapshotter.mount(overlay.lowers, work, mountpoint)
                )
                result._writable.append((overlay, mounted))
            result.binds.append(Bind(mountpoint, overlay.target, overlay.readonly, "dir"))
        yield result
