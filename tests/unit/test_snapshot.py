"""rootbuild.snapshot: the registry's choice really probes, in preference order, and says
why each snapshotter is unusable; the FUSE probe names the fix."""

from __future__ import annotations

import contextlib
import errno
import os
import re
from collections.abc import Sequence
from pathlib import Path

import pytest

from rootbuild.errors import SandboxError
from rootbuild.snapshot import (
    SNAPSHOTTERS,
    DiskBudget,
    FuseSnapshotter,
    LowerLayer,
    MountedStep,
    Snapshotter,
    choose_snapshotter,
    registry,
    snapshotter_named,
)


class _Fake:
    def __init__(self, name: str, reason: str | None) -> None:
        self.name = name
        self.reason = reason

    def probe(self) -> str | None:
        return self.reason

    def mount(self, lowers: Sequence[LowerLayer], work: Path, mountpoint: Path,
              budget: DiskBudget | None = None
              ) -> contextlib.AbstractContextManager[MountedStep]:
        raise NotImplementedError

    def view(self, lowers: Sequence[LowerLayer], work: Path, mountpoint: Path
             ) -> contextlib.AbstractContextManager[Path]:
        raise NotImplementedError


def _register(monkeypatch: pytest.MonkeyPatch, *fakes: _Fake) -> None:
    table = {f.name: (lambda f=f: f) for f in fakes}
    monkeypatch.setattr(registry, "SNAPSHOTTERS", table)
    monkeypatch.setattr(registry, "AUTO", tuple(table))  # auto considers them all, in order


def test_fuse_is_registered_and_named() -> None:
    assert list(SNAPSHOTTERS) == ["fuse", "overlay"]
    assert snapshotter_named("fuse").name == "fuse"
    with pytest.raises(SandboxError, match=r"^mount step root: unknown snapshotter 'zfs'$"):
        snapshotter_named("zfs")


def test_choose_returns_the_first_usable_in_order(monkeypatch: pytest.MonkeyPatch) -> None:
    first, second, third = _Fake("kernel", "no overlayfs"), _Fake("fuse", None), \
        _Fake("copy", None)
    _register(monkeypatch, first, second, third)
    chosen: Snapshotter = choose_snapshotter()
    assert chosen is second


def test_choose_names_every_snapshotter_and_why(monkeypatch: pytest.MonkeyPatch) -> None:
    _register(monkeypatch, _Fake("kernel", "overlayfs refused in a user namespace"),
              _Fake("fuse", "cannot open /dev/fuse; fix: chmod 0666 /dev/fuse"))
    with pytest.raises(SandboxError) as info:
        choose_snapshotter()
    assert str(info.value) == (
        "choose snapshotter: none can work here: kernel: overlayfs refused in a user "
        "namespace; fuse: cannot open /dev/fuse; fix: chmod 0666 /dev/fuse"
    )


def test_choose_a_named_snapshotter_or_say_why_not(monkeypatch: pytest.MonkeyPatch) -> None:
    _register(monkeypatch, _Fake("fuse", None), _Fake("overlay", "kernel 5.4 is too old"))
    with pytest.raises(SandboxError, match=r"^use snapshotter overlay: kernel 5.4 is too old$"):
        choose_snapshotter("overlay")
    assert choose_snapshotter("fuse").name == "fuse"


def test_choose_without_any_snapshotter(monkeypatch: pytest.MonkeyPatch) -> None:
    _register(monkeypatch)
    with pytest.raises(SandboxError, match=r"^choose snapshotter: none is registered$"):
        choose_snapshotter()


def test_fuse_probe_missing_device(tmp_path: Path) -> None:
    reason = FuseSnapshotter(str(tmp_path / "fuse")).probe()
    assert reason is not None and re.match(r".*/fuse does not exist; fix: .*modprobe fuse",
                                           reason)


def test_fuse_probe_not_a_device(tmp_path: Path) -> None:
    (tmp_path / "fuse").write_text("")
    reason = FuseSnapshotter(str(tmp_path / "fuse")).probe()
    assert reason is not None and "is not a character device" in reason


def test_fuse_probe_permission_says_chmod(monkeypatch: pytest.MonkeyPatch) -> None:
    real_open = os.open

    def refuse(path: str, flags: int, *args: int) -> int:
        if path == "/dev/null":
            raise PermissionError(errno.EACCES, "Permission denied")
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", refuse)
    reason = FuseSnapshotter("/dev/null").probe()  # a character device, as /dev/fuse is
    assert reason is not None
    assert re.match(r"^cannot open /dev/null read-write \(mode 0\d{3}, owner uid 0\): "
                    r"Permission denied; fix: as root, chmod 0666 /dev/null$", reason), reason


def test_fuse_probe_passes_on_a_usable_device() -> None:
    # /dev/null stands in for /dev/fuse: a character device that opens read-write
    assert FuseSnapshotter("/dev/null").probe() is None
