"""The FUSE snapshotter: ``rootbuild.fuse_overlay`` behind the ``Snapshotter`` Protocol.

Job: ``FuseSnapshotter``: its probe (can this user mount FUSE here?), ``mount`` (a step's
writable overlay) and ``view`` (the read-only merged tree), converting the overlay's own
result into ``StepChanges``.

Rules:
- Works wherever an unprivileged user can mount FUSE: as root of a user namespace that owns
  its mount namespace (the sandbox), or through ``fusermount3``.
- The probe only looks: /dev/fuse is a character device that this user can open read-write,
  and pyfuse3 (with libfuse3) imports. Each failure names its fix.
"""

from __future__ import annotations

import contextlib
import errno
import importlib
import os
import stat
from collections.abc import Iterator, Sequence
from pathlib import Path

from rootbuild.fuse_overlay.mount import OverlayMount, mount_overlay
from rootbuild.snapshot.base import LowerLayer, StepChanges
from rootbuild.snapshot.budget import DiskBudget

FUSE_DEVICE = "/dev/fuse"


class _FuseStep:
    """A mounted step root: ``finish()`` returns its changes as ``StepChanges``."""

    def __init__(self, mounted: OverlayMount) -> None:
        self._mounted = mounted
        self.mountpoint = mounted.mountpoint

    def finish(self) -> StepChanges:
        result = self._mounted.finish()
        return StepChanges(result.tree, result.meta)


def _pairs(lowers: Sequence[LowerLayer]) -> list[tuple[Path, Path]]:
    return [(lo.tree, lo.meta_path) for lo in lowers]


class FuseSnapshotter:
    """rootbuild's pyfuse3 overlay (``rootbuild.fuse_overlay``)."""

    name = "fuse"
    # what its helper processes run: the build's zygote imports it ahead (sandbox/zygote.py)
    helper_modules = ("rootbuild.fuse_overlay.server",)

    def __init__(self, device: str = FUSE_DEVICE) -> None:
        self.device = device

    def probe(self) -> str | None:
        try:
            st = os.stat(self.device)
        except FileNotFoundError:
            return (f"{self.device} does not exist; fix: load the fuse module (modprobe fuse) "
                    "or install fuse3; in a container pass --device /dev/fuse")
        except OSError as exc:
            return f"cannot stat {self.device}: {exc.strerror}"
        if not stat.S_ISCHR(st.st_mode):
            return f"{self.device} is not a character device; fix: as root, recreate it"
        try:
            os.close(os.open(self.device, os.O_RDWR | os.O_CLOEXEC))
        except OSError as exc:
            fix = ""
            if exc.errno in (errno.EACCES, errno.EPERM):
                fix = f"; fix: as root, chmod 0666 {self.device}"
            return (f"cannot open {self.device} read-write (mode "
                    f"{stat.S_IMODE(st.st_mode):04o}, owner uid {st.st_uid}): "
                    f"{exc.strerror}{fix}")
        try:
            importlib.import_module("pyfuse3")
        except (ImportError, OSError) as exc:
            return (f"cannot import pyfuse3 ({exc}); fix: install libfuse3 (apt-get install "
                    "fuse3 libfuse3-dev) and pyfuse3 in rootbuild's environment")
        return None

    @contextlib.contextmanager
    def mount(
        self, lowers: Sequence[LowerLayer], work: Path, mountpoint: Path,
        budget: DiskBudget | None = None,
    ) -> Iterator[_FuseStep]:
        pool = None if budget is None else budget.path
        with mount_overlay(_pairs(lowers), work, mountpoint, pool=pool) as mounted:
            yield _FuseStep(mounted)

    @contextlib.contextmanager
    def view(
        self, lowers: Sequence[LowerLayer], work: Path, mountpoint: Path
    ) -> Iterator[Path]:
        with mount_overlay(_pairs(lowers), work, mountpoint, readonly=True) as mounted:
            yield mountpoint
            mounted.close()
