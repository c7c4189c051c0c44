"""The kernel overlay snapshotter: overlayfs mounted in the build's user namespace.

Job: ``KernelOverlaySnapshotter`` (``--snapshotter overlay``): its probe (why not here),
``mount`` (a step's writable root: the lowers, each with its small ``under``/``over``
trees from ``kernel_view.py``, and a fresh upper, mounted with ``userxattr`` through the
new mount API) and ``view`` (the read-only merged tree); ``finish`` turns the upper
directory into the step's ``StepChanges`` (``upper_changes.py``; the trees on disk are
written and read by ``kernel_trees.py``) without walking the image.

Design (ownership):
- Layers in the store stay as they are: trees owned by the invoking user, the image's
  ownership, modes, devices and xattrs in their meta. The kernel shows what is on disk, so
  for each lower the entries the disk shows wrongly (an owner other than root, setuid,
  a narrowed mode, xattrs, FIFOs: a handful per image, /etc/shadow's group, setuid
  binaries, /home/*, /tmp's sticky bit) are materialised, with their real owners, in a
  tree stacked directly above the layer; its OCI whiteouts and opaque directories in one
  directly below. These trees, the upper and overlayfs's work directory are made per step
  in the step's work directory, INSIDE the build's user namespace (owners are its ids),
  and removed there again by ``finish`` or on teardown: nothing owned by a subordinate id
  outlives the step, so the store and the scratch stay removable by the user. When the
  step cannot tear down (every process of the build killed at once: ``kill -9``, power
  loss), those files stay in the step's scratch; the next build's start-up sweep
  (``engine/scratch_sweep.py``), ``rootbuild prune``, a worker's start-up sweep and
  ``rootbuild system reset`` remove them inside a user namespace that maps the
  user and all its subordinate ranges (``sandbox/userns_rm.py``). Caching the trees per
  layer in the store is the next step (``system reset`` can now remove them).
- The layer of a step is the upper directory, translated: its files are moved (renamed)
  into an extracted-layer tree owned by the user with the extractor's disk shapes
  (``journal.write_tree``'s), whiteouts (character devices 0/0) and opaque markers
  (``user.overlay.opaque``) become the meta's, overlayfs's own xattrs are dropped.
- What this cannot present is refused with the path and the way out (``--snapshotter
  fuse``), never presented wrongly: device nodes in a lower, xattrs only the initial
  namespace can set, a disk budget (``--disk-limit``; the upper is not charged yet).
- Known differences from the FUSE overlay, which keep ``auto`` on FUSE (registry.py):
  renaming a directory that exists in a lower fails with EXDEV (no ``redirect_dir`` in a
  user namespace; ``mv`` copies instead), a copy-up breaks the hard links of a lower file
  (no ``index``), lower directories and symlinks show the extraction's mtimes, and
  ``statfs`` reports the disk of the store.

Rules: the mount is a mount(2) in the step's own mount namespace (sandbox/init.py), as
root of the build's user namespace; it dies with that namespace. Every walk of the upper
and of the trees written is directory-fd relative, without following symlinks.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import platform
import shutil
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

from rootbuild.errors import SandboxError
from rootbuild.image.layermeta import EntryMeta, LayerMeta
from rootbuild.snapshot.base import LowerLayer, StepChanges
from rootbuild.snapshot.budget import DiskBudget
from rootbuild.snapshot.kernel_trees import set_attrs, stack_lowers, upper_to_changes

MIN_KERNEL = (6, 8)  # overlayfs "lowerdir+" through fsconfig(2): no option-string limit
NS = 1_000_000_000
# x86_64 and aarch64 share the new mount API's numbers (asm-generic)
SYS_MOVE_MOUNT, SYS_FSOPEN, SYS_FSCONFIG, SYS_FSMOUNT = 429, 430, 431, 432
FSCONFIG_SET_FLAG, FSCONFIG_SET_STRING, FSCONFIG_CMD_CREATE = 0, 1, 6
FSOPEN_CLOEXEC, FSMOUNT_CLOEXEC = 1, 1
MOUNT_ATTR_RDONLY, MOUNT_ATTR_NODEV = 0x1, 0x4
MOVE_MOUNT_F_EMPTY_PATH = 0x4
AT_FDCWD = -100
MNT_DETACH = 2
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long



def _check(result: int, what: str) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return result


def mount_overlay(lowerdirs: Sequence[Path], mountpoint: Path, upper: Path | None = None,
                  work: Path | None = None, readonly: bool = False) -> None:
    """Mount overlayfs at ``mountpoint``: ``lowerdirs`` topmost first (``lowerdir+``, one
    fsconfig call each: paths need no escaping), ``userxattr``; read-only without upper."""
    fd = _check(_libc.syscall(SYS_FSOPEN, b"overlay", FSOPEN_CLOEXEC), "fsopen overlay")
    try:
        def string(key: str, value: Path) -> None:
            _check(_libc.syscall(SYS_FSCONFIG, fd, FSCONFIG_SET_STRING, key.encode(),
                                 os.fsencode(value), 0), f"fsconfig {key}={value}")

        for lower in lowerdirs:
            string("lowerdir+", lower)
        if upper is not None and work is not None:
            string("upperdir", upper)
            string("workdir", work)
        _check(_libc.syscall(SYS_FSCONFIG, fd, FSCONFIG_SET_FLAG, b"userxattr", None, 0),
               "fsconfig userxattr")
        _check(_libc.syscall(SYS_FSCONFIG, fd, FSCONFIG_CMD_CREATE, None, None, 0),
               "create the overlay")
        attrs = MOUNT_ATTR_NODEV | (MOUNT_ATTR_RDONLY if readonly else 0)
        mfd = _check(_libc.syscall(SYS_FSMOUNT, fd, FSMOUNT_CLOEXEC, attrs), "fsmount")
        try:
            _check(_libc.syscall(SYS_MOVE_MOUNT, mfd, b"", AT_FDCWD,
                                 os.fsencode(mountpoint), MOVE_MOUNT_F_EMPTY_PATH),
                   f"move_mount to {mountpoint}")
        finally:
            os.close(mfd)
    finally:
        os.close(fd)


def unmount(mountpoint: Path) -> None:
    """Unmount (the step's processes are gone, so it is not busy); detach if it is."""
    if _libc.umount2(os.fsencode(mountpoint), 0) == 0:
        return
    _check(_libc.umount2(os.fsencode(mountpoint), MNT_DETACH), f"unmount {mountpoint}")


def _remove(path: Path) -> None:
    """Remove a tree of the build's ids (called inside its user namespace)."""
    if not os.path.lexists(path):
        return
    with contextlib.suppress(OSError):
        os.chmod(path, 0o700, follow_symlinks=False)  # overlayfs's work/work is mode 0
    shutil.rmtree(path)


# -- the snapshotter -------------------------------------------------------------------------


class _KernelStep:
    def __init__(self, metas: Sequence[LayerMeta], work: Path, mountpoint: Path) -> None:
        self.metas = metas
        self.work = work
        self.mountpoint = mountpoint
        self.mounted = False
        self.done = False

    def finish(self) -> StepChanges:
        if self.done:
            raise SandboxError(f"finish overlay {self.mountpoint}: already finished")
        self.done = True
        try:
            self.close()
            return upper_to_changes(self.work / "upper", self.metas, self.work / "layer")
        except OSError as exc:
            where = f" {exc.filename}" if exc.filename else ""
            raise SandboxError(f"finish the kernel overlay {self.mountpoint}:{where} "
                               f"{exc.strerror or exc}") from exc
        finally:
            self.clean()

    def close(self) -> None:
        if self.mounted:
            self.mounted = False
            unmount(self.mountpoint)

    def clean(self) -> None:
        """Remove what belongs to the build's ids (never the layer tree: the user's)."""
        for name in ("upper", "ovl-work", "views"):
            _remove(self.work / name)


def _root_attrs(path: Path, e: EntryMeta) -> None:
    fd = os.open(path, _DIR)
    try:
        set_attrs(fd, EntryMeta("", "dir", e.mode, e.uid, e.gid, e.mtime, e.mtime_ns))
    finally:
        os.close(fd)


def _kernel_release() -> tuple[int, int] | None:
    try:
        parts = platform.release().split(".")
        return int(parts[0]), int(parts[1].split("-")[0].split("+")[0])
    except (IndexError, ValueError):
        return None


# The tried capability: a throw-away user+mount namespace (only the user's own id mapped)
# mounts an overlay with userxattr, an upper and a whiteout made by deleting a lower file.
_PROBE = r"""
import os, sys
from pathlib import Path
from rootbuild.snapshot import kernel
tmp = Path(sys.argv[1])
uid, gid = os.getuid(), os.getgid()
if kernel._libc.unshare(0x10000000 | 0x20000) != 0:  # CLONE_NEWUSER | CLONE_NEWNS
    print("unshare of a user and mount namespace refused")
    sys.exit(1)
Path("/proc/self/setgroups").write_text("deny")
Path("/proc/self/uid_map").write_text(f"0 {uid} 1")
Path("/proc/self/gid_map").write_text(f"0 {gid} 1")
for d in ("lower", "upper", "work", "mnt"):
    (tmp / d).mkdir()
(tmp / "lower" / "f").write_text("x")
try:
    kernel.mount_overlay([tmp / "lower"], tmp / "mnt", tmp / "upper", tmp / "work")
    os.unlink(tmp / "mnt" / "f")
    kernel.unmount(tmp / "mnt")
except OSError as exc:
    print(exc.strerror)
    sys.exit(1)
st = os.lstat(tmp / "upper" / "f")
kernel._remove(tmp / "work")
print("ok" if (st.st_mode >> 12, st.st_rdev) == (2, 0) else "no whiteout device")
"""


def _subids() -> str | None:
    """Why the build's user namespace would map only one id, or None."""
    try:
        with open("/proc/self/uid_map", encoding="ascii") as f:
            rows = [line.split() for line in f]
    except OSError:
        rows = []
    if sum(int(r[2]) for r in rows if len(r) == 3) > 1 and not (
            len(rows) == 1 and rows[0][:2] == ["0", "0"]):
        return None  # already inside a user namespace with a range (the tests' driver)
    import pwd

    uid = os.getuid()
    try:
        names = {pwd.getpwuid(uid).pw_name, str(uid)}
    except KeyError:
        names = {str(uid)}
    for path in ("/etc/subuid", "/etc/subgid"):
        try:
            text = Path(path).read_text(errors="replace")
        except OSError:
            text = ""
        if not any(line.split(":")[0] in names for line in text.splitlines()):
            return (f"no subordinate id range for this user in {path}: a kernel overlay "
                    "would show every file the image gives another owner as root's; fix: "
                    "as root, usermod --add-subuids 100000-165535 --add-subgids "
                    "100000-165535 USER")
    return None


class KernelOverlaySnapshotter:
    """The kernel's overlayfs in the build's user namespace (``userxattr``)."""

    name = "overlay"
    presents_devices = False  # lowers with device nodes are refused (kernel_view.py)
    exact_dir_nlink = False  # overlayfs shows a merged directory's st_nlink as 1

    def probe(self) -> str | None:
        release = _kernel_release()
        if release is None or release < MIN_KERNEL:
            return (f"kernel {platform.release()} is too old: the kernel overlay needs "
                    f"{MIN_KERNEL[0]}.{MIN_KERNEL[1]}+ (overlayfs in a user namespace came "
                    "in 5.11, lowerdir+ through fsconfig in 6.8)")
        why = _subids()
        if why is not None:
            return why
        import tempfile

        with tempfile.TemporaryDirectory(prefix="rootbuild-ovl-probe-") as tmp:
            try:
                proc = subprocess.run(
                    [sys.executable, "-I", "-c", _PROBE, tmp], capture_output=True,
                    text=True, timeout=30, env={"PATH": "/usr/bin:/bin"},
                )
            except (OSError, subprocess.TimeoutExpired) as exc:
                return f"cannot try an overlay mount in a user namespace: {exc}"
            found = (proc.stdout.strip().splitlines() or [proc.stderr.strip()[-300:]])[-1]
        if found != "ok":
            return (f"mounting overlayfs in a user namespace was refused ({found}): the "
                    "kernel needs overlayfs with user namespace support (5.11+, not "
                    "disabled by the distribution)")
        return None

    @contextlib.contextmanager
    def mount(
        self, lowers: Sequence[LowerLayer], work: Path, mountpoint: Path,
        budget: DiskBudget | None = None,
    ) -> Iterator[_KernelStep]:
        if budget is not None:
            raise SandboxError(
                "mount the step's root with the kernel overlay: a disk limit (--disk-limit, "
                "--inode-limit) is not enforced on its upper yet; use --snapshotter fuse"
            )
        work.mkdir(mode=0o700)
        metas = [LayerMeta.load(lo.meta_path) for lo in lowers]
        step = _KernelStep(metas, work, mountpoint)
        try:
            dirs, root = stack_lowers(lowers, work / "views", metas)
            (work / "upper").mkdir(mode=0o755)
            (work / "ovl-work").mkdir(mode=0o700)
            _root_attrs(work / "upper", root)
            try:
                mount_overlay(dirs, mountpoint, work / "upper", work / "ovl-work")
            except OSError as exc:
                raise SandboxError(f"mount the step's root with the kernel overlay: "
                                   f"{exc.strerror}") from exc
            step.mounted = True
            yield step
        finally:
            if not step.done:
                step.done = True
                with contextlib.suppress(OSError):
                    step.close()
                step.clean()

    @contextlib.contextmanager
    def view(
        self, lowers: Sequence[LowerLayer], work: Path, mountpoint: Path
    ) -> Iterator[Path]:
        work.mkdir(mode=0o700)
        mounted = False
        try:
            metas = [LayerMeta.load(lo.meta_path) for lo in lowers]
            dirs, root = stack_lowers(lowers, work / "views", metas)
            top = work / "views" / "root"  # the merged root's attributes, and overlayfs
            top.mkdir(mode=0o755)  # wants two lowers when there is no upper
            _root_attrs(top, root)
            try:
                mount_overlay([top, *dirs], mountpoint, readonly=True)
            except OSError as exc:
                raise SandboxError(f"mount a read-only view with the kernel overlay: "
                                   f"{exc.strerror}") from exc
            mounted = True
            yield mountpoint
        finally:
            if mounted:
                with contextlib.suppress(OSError):
                    unmount(mountpoint)
            _remove(work / "views")
