"""The kernel overlay snapshotter: overlayfs mounted in the build's user namespace.

Job: ``KernelOverlaySnapshotter`` (``--snapshotter overlay``): its probe (why not here),
``mount`` (a step's writable root: the lowers, each with its small ``under``/``over``
trees from ``kernel_view.py``, and a fresh upper, mounted with ``userxattr`` through the
new mount API) and ``view`` (the read-only merged tree); ``finish`` turns the upper
directory into the step's ``StepChanges`` (``upper_changes.py``) without walking the image.

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
  outlives the step, so the store and the scratch stay removable by the user. Caching the
  trees per layer in the store is the next step (it needs ``rootbuild system reset``).
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
import stat
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

from rootbuild.errors import SandboxError
from rootbuild.image.layermeta import EntryMeta, LayerMeta, resolve_entry
from rootbuild.image.rootfs import open_beneath
from rootbuild.snapshot.base import LowerLayer, StepChanges
from rootbuild.snapshot.budget import DiskBudget
from rootbuild.snapshot.kernel_view import ViewPlan, plan_layer, root_entry
from rootbuild.snapshot.upper_changes import UpperNode, changes_from_upper

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
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long

_KINDS = {stat.S_IFREG: "file", stat.S_IFDIR: "dir", stat.S_IFLNK: "symlink",
          stat.S_IFCHR: "char", stat.S_IFBLK: "block", stat.S_IFIFO: "fifo",
          stat.S_IFSOCK: "socket"}


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


# -- the per-layer trees -------------------------------------------------------------------


def _set_attrs(fd: int, e: EntryMeta) -> None:
    os.fchown(fd, e.uid, e.gid)
    os.fchmod(fd, e.mode & 0o7777)  # after chown, which clears setuid/setgid
    for name, value in e.xattrs:
        os.setxattr(fd, name, value)
    ns = e.mtime_ns if e.mtime_ns is not None else e.mtime * NS
    os.utime(fd, ns=(ns, ns))


def _parent_fd(root: int, path: str) -> tuple[int, str]:
    parent, _, name = path.rpartition("/")
    return (os.dup(root) if not parent else open_beneath(root, parent, _DIR)), name


def _make_dirs(root: int, entries: Sequence[EntryMeta]) -> list[EntryMeta]:
    """mkdir each (parents first); returns them for ``_finish_dirs``."""
    dirs = []
    for e in entries:
        if e.kind != "dir":
            continue
        pfd, name = _parent_fd(root, e.path)
        try:
            os.mkdir(name, 0o700, dir_fd=pfd)
        finally:
            os.close(pfd)
        dirs.append(e)
    return dirs


def _finish_dirs(root: int, dirs: list[EntryMeta]) -> None:
    for e in reversed(dirs):  # children first: their creation moved the parents' mtimes
        fd = open_beneath(root, e.path, _DIR)
        try:
            _set_attrs(fd, e)
        finally:
            os.close(fd)


def write_over(plan: ViewPlan, layer: Path, dest: Path) -> None:
    """The ``over`` tree of ``plan`` at ``dest`` (created): fixed entries with their real
    attributes, file content copied from the layer's tree."""
    dest.mkdir(mode=0o755)
    root = os.open(dest, _DIR)
    src_root = os.open(layer, _DIR)
    try:
        dirs = _make_dirs(root, plan.fixes)
        for e in plan.fixes:
            if e.kind == "dir":
                continue
            pfd, name = _parent_fd(root, e.path)
            try:
                if e.kind == "symlink":
                    os.symlink(e.linkname, name, dir_fd=pfd)
                    os.chown(name, e.uid, e.gid, dir_fd=pfd, follow_symlinks=False)
                    ns = e.mtime * NS
                    os.utime(name, ns=(ns, ns), dir_fd=pfd, follow_symlinks=False)
                    continue
                if e.kind == "fifo":
                    os.mkfifo(name, 0o600, dir_fd=pfd)
                    fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=pfd)
                    try:
                        os.chown(f"/proc/self/fd/{fd}", e.uid, e.gid)
                        os.chmod(f"/proc/self/fd/{fd}", e.mode & 0o7777)
                        ns = e.mtime * NS
                        os.utime(f"/proc/self/fd/{fd}", ns=(ns, ns))
                    finally:
                        os.close(fd)
                    continue
                src = open_beneath(src_root, e.path)
                try:
                    dst = os.open(name, _CREATE, 0o600, dir_fd=pfd)
                    try:
                        size = os.fstat(src).st_size
                        while size > 0:
                            n = os.copy_file_range(src, dst, size)
                            if n == 0:
                                break
                            size -= n
                        _set_attrs(dst, e)
                    finally:
                        os.close(dst)
                finally:
                    os.close(src)
            finally:
                os.close(pfd)
        for path, target in plan.links:
            tfd, tname = _parent_fd(root, target)
            pfd, name = _parent_fd(root, path)
            try:
                os.link(tname, name, src_dir_fd=tfd, dst_dir_fd=pfd, follow_symlinks=False)
            finally:
                os.close(tfd)
                os.close(pfd)
        _finish_dirs(root, dirs)
    finally:
        os.close(src_root)
        os.close(root)


def write_under(plan: ViewPlan, dest: Path) -> None:
    """The ``under`` tree: whiteouts as character devices 0/0 (unprivileged since Linux
    5.8 for this one device), opaque directories marked ``user.overlay.opaque=y``."""
    dest.mkdir(mode=0o755)
    root = os.open(dest, _DIR)
    try:
        dirs = _make_dirs(root, plan.under_dirs)
        for path in plan.whiteouts:
            pfd, name = _parent_fd(root, path)
            try:
                os.mknod(name, stat.S_IFCHR | 0o600, os.makedev(0, 0), dir_fd=pfd)
            finally:
                os.close(pfd)
        _finish_dirs(root, dirs)
        for path in plan.opaque:
            fd = open_beneath(root, path, _DIR)
            try:
                os.setxattr(fd, "user.overlay.opaque", b"y")
            finally:
                os.close(fd)
    finally:
        os.close(root)


def stack_lowers(lowers: Sequence[LowerLayer], views: Path, metas: Sequence[LayerMeta]
                 ) -> tuple[list[Path], EntryMeta]:
    """The lowerdirs of ``lowers`` (topmost first; ``metas`` theirs) with their
    ``under``/``over`` trees written in ``views`` (created), and the merged root's
    attributes. Refuses lowers the kernel cannot present (``kernel_view`` rules)."""
    plans = [plan_layer(meta, metas[:i]) for i, meta in enumerate(metas)]
    problems = [f"{p}" for plan in plans for p in plan.unrepresentable]
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise SandboxError(
            f"mount the step's root with the kernel overlay: {problems[0]}{more}; the "
            "kernel overlay cannot present it in a user namespace: use --snapshotter fuse"
        )
    views.mkdir(mode=0o700)
    dirs: list[Path] = []
    for i, (lower, plan) in enumerate(zip(lowers, plans, strict=True)):
        if not plan.under_empty:
            write_under(plan, views / f"{i}.under")
            dirs.append(views / f"{i}.under")
        dirs.append(lower.tree)
        if plan.fixes:
            write_over(plan, lower.tree, views / f"{i}.over")
            dirs.append(views / f"{i}.over")
    return list(reversed(dirs)), root_entry(metas)


# -- the upper as a layer --------------------------------------------------------------------


def _xattrs(dfd: int, name: str) -> tuple[tuple[str, bytes], ...]:
    path = f"/proc/self/fd/{dfd}/{name}"
    try:
        names = os.listxattr(path, follow_symlinks=False)
        return tuple(sorted((k, os.getxattr(path, k, follow_symlinks=False)) for k in names))
    except OSError:
        return ()


def walk_upper(upper: Path) -> list[UpperNode]:
    """Every entry of ``upper`` (the root as ""), directory-fd relative, no symlink
    followed."""
    nodes: list[UpperNode] = []
    root = os.open(upper, _DIR)
    st = os.fstat(root)
    rxattrs = _xattrs(root, ".")
    nodes.append(UpperNode("", "dir", stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid,
                           st.st_mtime_ns, inode=st.st_ino, xattrs=rxattrs))
    stack = [(root, "")]
    try:
        while stack:
            dfd, prefix = stack.pop()
            try:
                with os.scandir(dfd) as it:
                    items = list(it)
                for item in items:
                    st = item.stat(follow_symlinks=False)
                    kind = _KINDS.get(stat.S_IFMT(st.st_mode), "file")
                    path = prefix + item.name
                    link = os.readlink(item.name, dir_fd=dfd) if kind == "symlink" else ""
                    nodes.append(UpperNode(
                        path, kind, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid,
                        st.st_mtime_ns, st.st_size, link,
                        (os.major(st.st_rdev), os.minor(st.st_rdev)), st.st_ino,
                        st.st_nlink, _xattrs(dfd, item.name) if kind != "symlink" else (),
                    ))
                    if kind == "dir":
                        stack.append((os.open(item.name, _DIR, dir_fd=dfd), path + "/"))
            finally:
                os.close(dfd)
    finally:
        for fd, _ in stack:
            os.close(fd)
    return nodes


def _plain_file(fd: int, e: EntryMeta) -> None:
    """The extractor's disk shape: owned by the user (root here), mode | 0o600, no special
    bits, no xattrs, whole-second mtime (``journal._finish_file``)."""
    os.fchown(fd, 0, 0)
    for name in os.listxattr(fd):
        with contextlib.suppress(OSError):
            os.removexattr(fd, name)
    os.fchmod(fd, (e.mode & 0o777) | 0o600)
    ns = e.mtime * NS
    os.utime(fd, ns=(ns, ns))


def write_layer_tree(upper: Path, meta: LayerMeta, tree: Path) -> None:
    """Move the upper's content into ``tree`` (created) in the extracted-layer shape."""
    tree.mkdir(mode=0o700)
    root = os.open(tree, _DIR)
    up = os.open(upper, _DIR)
    try:
        for e in meta.entries.values():
            if not e.path:
                os.fchmod(root, (e.mode & 0o777) | 0o700)
                continue
            pfd, name = _parent_fd(root, e.path)
            try:
                if e.kind == "dir":
                    os.mkdir(name, 0o700, dir_fd=pfd)
                    fd = os.open(name, _DIR, dir_fd=pfd)
                    try:
                        os.fchmod(fd, (e.mode & 0o777) | 0o700)
                    finally:
                        os.close(fd)
                elif e.kind == "symlink":
                    os.symlink(e.linkname, name, dir_fd=pfd)
                elif e.kind == "hardlink":
                    sfd, sname = _parent_fd(root, e.linkname)
                    try:
                        os.link(sname, name, src_dir_fd=sfd, dst_dir_fd=pfd,
                                follow_symlinks=False)
                    finally:
                        os.close(sfd)
                else:
                    if e.kind == "file":
                        ufd, uname = _parent_fd(up, e.path)
                        try:
                            os.rename(uname, name, src_dir_fd=ufd, dst_dir_fd=pfd)
                        finally:
                            os.close(ufd)
                    else:  # fifo, char, block: an empty placeholder, as the extractor's
                        os.close(os.open(name, _CREATE, 0o600, dir_fd=pfd))
                    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK,
                                 dir_fd=pfd)
                    try:
                        _plain_file(fd, e)
                    finally:
                        os.close(fd)
            finally:
                os.close(pfd)
    finally:
        os.close(up)
        os.close(root)


def upper_to_changes(upper: Path, metas: Sequence[LayerMeta], tree: Path) -> StepChanges:
    """The step's layer at ``tree`` from ``upper`` over lowers with ``metas``."""
    order = range(len(metas) - 1, -1, -1)

    def lower(path: str) -> EntryMeta | None:
        if not path:
            return root_entry(metas) if metas else None
        found = resolve_entry(metas, path, order)
        return None if found is None else found[1]

    changes = changes_from_upper(walk_upper(upper), lower)
    write_layer_tree(upper, changes.meta, tree)
    return StepChanges(tree, changes.meta)


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
        _set_attrs(fd, EntryMeta("", "dir", e.mode, e.uid, e.gid, e.mtime, e.mtime_ns))
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
