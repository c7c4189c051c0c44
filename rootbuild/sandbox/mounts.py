"""Kernel plumbing of the sandbox: namespaces, mounts and pivot_root through libc (ctypes),
and the step's /proc, /dev, /sys and /etc files prepared under its new root.

Job: the system calls Debian's Python 3.11 lacks (unshare, mount, umount2, pivot_root,
sethostname, openat2, mount_setattr) and the mount layout runc gives a container.

Rules (SECURITY.md rule 1):
- Nothing under the new root is reached by a path string: every mount target is opened
  with ``openat2`` (RESOLVE_IN_ROOT | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS) as an
  O_PATH fd and the mount goes onto ``/proc/self/fd/N``. A symlink anywhere on the way
  fails with ELOOP, so an image cannot redirect a mount to the host.
- Mount targets the image lacks are created (and reported, so the caller can remove them
  after the step); a target of the wrong type is refused.
- Every failure is an ``OSError`` with its errno; callers turn them into ``SandboxError``
  with what was being done.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import platform
import socket
import stat
import struct
from dataclasses import dataclass

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
MNT_DETACH = 2

RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_IN_ROOT = 0x10
AT_EMPTY_PATH = 0x1000
AT_RECURSIVE = 0x8000
MOUNT_ATTR_RDONLY = 0x1

SYS_OPENAT2 = 437
SYS_MOUNT_SETATTR = 442
SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "riscv64": 41, "ppc64le": 203, "s390x": 217}

#: host device nodes bind-mounted into the step's /dev (runc's default devices)
DEV_NODES = ("null", "zero", "full", "random", "urandom", "tty")
DEV_LINKS = (
    ("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
    ("stderr", "/proc/self/fd/2"), ("ptmx", "pts/ptmx"),
)
TARGET_RESOLVE = RESOLVE_IN_ROOT | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS

# the C library this process already has (find_library would run ldconfig: ~10 ms)
_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64),
                ("resolve", ctypes.c_uint64)]


class _MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


def _check(ret: int, what: str) -> int:
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return ret


def unshare(flags: int) -> None:
    _check(_libc.unshare(flags), "unshare")


def mount(source: str, target: str, fstype: str | None, flags: int, data: str | None = None
          ) -> None:
    _check(
        _libc.mount(os.fsencode(source), os.fsencode(target),
                    os.fsencode(fstype) if fstype else None, ctypes.c_ulong(flags),
                    os.fsencode(data) if data else None),
        f"mount {fstype or source}",
    )


def syncfs(fd: int) -> None:
    """Write back the dirty pages of the filesystem ``fd`` is on (syncfs(2))."""
    _check(_libc.syncfs(fd), "syncfs")


def umount2(target: str, flags: int) -> None:
    _check(_libc.umount2(os.fsencode(target), flags), f"unmount {target}")


def sethostname(name: str) -> None:
    raw = name.encode()
    _check(_libc.sethostname(raw, len(raw)), "sethostname")


def pivot_root(new_root: str, put_old: str) -> None:
    nr = SYS_PIVOT_ROOT.get(platform.machine())
    if nr is None:
        raise OSError(errno.ENOSYS, f"pivot_root: unknown syscall number on {platform.machine()}")
    _check(_libc.syscall(ctypes.c_long(nr), os.fsencode(new_root), os.fsencode(put_old)),
           "pivot_root")


#: openat2(2): with RESOLVE_IN_ROOT/RESOLVE_BENEATH, a '..' resolved while any mount or
#: rename happens on the machine fails with EAGAIN, and "the caller may retry"
OPENAT2_RETRIES = 64


def openat2(dirfd: int, path: str, flags: int, resolve: int, mode: int = 0) -> int:
    how = _OpenHow(flags | os.O_CLOEXEC, mode, resolve)
    name = os.fsencode(path)
    for attempt in range(OPENAT2_RETRIES + 1):
        try:
            return _check(
                _libc.syscall(ctypes.c_long(SYS_OPENAT2), ctypes.c_int(dirfd), name,
                              ctypes.byref(how), ctypes.c_size_t(ctypes.sizeof(how))),
                f"open {path}",
            )
        except BlockingIOError:
            if attempt == OPENAT2_RETRIES:
                raise
    raise AssertionError("unreachable")


def make_readonly_recursive(fd: int) -> None:
    """Make the mount tree at ``fd`` (an O_PATH fd of a mount's root) read-only."""
    attr = _MountAttr(MOUNT_ATTR_RDONLY, 0, 0, 0)
    _check(
        _libc.syscall(ctypes.c_long(SYS_MOUNT_SETATTR), ctypes.c_int(fd), b"",
                      ctypes.c_uint(AT_EMPTY_PATH | AT_RECURSIVE), ctypes.byref(attr),
                      ctypes.c_size_t(ctypes.sizeof(attr))),
        "make mount read-only",
    )


def fd_path(fd: int) -> str:
    """The magic link that names what ``fd`` refers to, for mount(2) targets."""
    return f"/proc/self/fd/{fd}"


def open_in_root(rootfd: int, path: str, flags: int = os.O_PATH) -> int:
    """Open ``path`` under ``rootfd`` with no symlink anywhere on the way."""
    return openat2(rootfd, path.lstrip("/") or ".", flags | os.O_NOFOLLOW, TARGET_RESOLVE)


def in_step_dev(target: str) -> bool:
    """Whether a bind ``target`` lies inside the step's own /dev (a tmpfs made for the
    step): its mount point is created there after /dev is mounted, never in the root, so
    nothing of it can reach the layer (BuildKit's ``#!`` heredoc under /dev/pipes/)."""
    return target.startswith("/dev/") and target.rstrip("/") != "/dev"


@dataclass(frozen=True)
class Created:
    """A mount target the sandbox had to create in the root (``kind``: "dir" or "file")."""

    path: str
    kind: str


def ensure_target(rootfd: int, path: str, kind: str, created: list[Created]) -> int:
    """An O_PATH fd of ``path`` (a "dir" or a "file") under the root, created with root
    ownership when missing (missing parents too; appended to ``created``). A symlink on the
    way fails with ELOOP, a wrong type with ENOTDIR/EISDIR: never follow, never replace."""
    rel = path.strip("/")
    try:
        fd = open_in_root(rootfd, rel)
    except FileNotFoundError:
        parent, _, name = rel.rpartition("/")
        pfd = ensure_target(rootfd, parent, "dir", created) if parent else os.dup(rootfd)
        try:
            if kind == "dir":
                os.mkdir(name, 0o755, dir_fd=pfd)
            else:
                os.close(os.open(name, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW
                                 | os.O_CLOEXEC, 0o644, dir_fd=pfd))
        finally:
            os.close(pfd)
        created.append(Created("/" + rel, kind))
        fd = open_in_root(rootfd, rel)
    st = os.fstat(fd)
    if kind == "dir" and not stat.S_ISDIR(st.st_mode):
        os.close(fd)
        raise OSError(errno.ENOTDIR, f"/{rel} is not a directory in the image")
    if kind == "file" and not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise OSError(errno.EISDIR, f"/{rel} is not a regular file in the image")
    return fd


def remove_created(rootfd: int, created: list[Created]) -> list[str]:
    """Remove the mount targets the sandbox created, newest first, when they are still
    what the sandbox made (an empty file, an empty directory). Returns those kept."""
    kept = []
    for item in reversed(created):
        rel = item.path.strip("/")
        parent, _, name = rel.rpartition("/")
        try:
            pfd = open_in_root(rootfd, parent, os.O_PATH | os.O_DIRECTORY) if parent else \
                os.dup(rootfd)
        except OSError:
            continue  # the step moved or removed the parent: nothing of ours is there
        try:
            st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
            if item.kind == "dir" and stat.S_ISDIR(st.st_mode):
                os.rmdir(name, dir_fd=pfd)
            elif item.kind == "file" and stat.S_ISREG(st.st_mode) and st.st_size == 0:
                os.unlink(name, dir_fd=pfd)
            else:
                kept.append(item.path)
        except FileNotFoundError:
            pass
        except OSError:
            kept.append(item.path)  # not empty: the step put something there
        finally:
            os.close(pfd)
    return kept


def bind(source: str, target_fd: int, flags: int = 0) -> None:
    mount(source, fd_path(target_fd), None, MS_BIND | flags)


def mount_dev(rootfd: int, created: list[Created], gid_tty_mapped: bool,
              shm_size: int | None = None) -> None:
    """/dev: a tmpfs with runc's device nodes bound from the host, a private devpts
    instance, /dev/shm (``shm_size`` bytes; None: 64 MiB, Docker's default) and the fd
    links (runc libcontainer/rootfs_linux.go)."""
    target = ensure_target(rootfd, "dev", "dir", created)
    try:
        mount("tmpfs", fd_path(target), "tmpfs", MS_NOSUID | MS_NOEXEC, "mode=755,size=65536k")
    finally:
        os.close(target)
    dev = open_in_root(rootfd, "dev", os.O_PATH | os.O_DIRECTORY)
    try:
        for name in DEV_NODES:
            os.close(os.open(name, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC, 0o666,
                             dir_fd=dev))
            node = openat2(dev, name, os.O_PATH | os.O_NOFOLLOW, TARGET_RESOLVE)
            try:
                bind(f"/dev/{name}", node)
            finally:
                os.close(node)
        for name, mode in (("pts", 0o755), ("shm", 0o1777)):
            os.mkdir(name, mode, dir_fd=dev)
        pts = openat2(dev, "pts", os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW, TARGET_RESOLVE)
        shm = openat2(dev, "shm", os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW, TARGET_RESOLVE)
        try:
            opts = "newinstance,ptmxmode=0666,mode=0620" + (",gid=5" if gid_tty_mapped else "")
            mount("devpts", fd_path(pts), "devpts", MS_NOSUID | MS_NOEXEC, opts)
            mount("shm", fd_path(shm), "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC,
                  f"mode=1777,size={shm_size or 65536 * 1024}")
        finally:
            os.close(pts)
            os.close(shm)
        for name, target_path in DEV_LINKS:
            os.symlink(target_path, name, dir_fd=dev)
    finally:
        os.close(dev)


def mount_sys(rootfd: int, created: list[Created], own_netns: bool) -> None:
    """/sys: a fresh read-only sysfs with a network namespace of the step's own (the
    kernel allows sysfs only to the netns owner), else a read-only bind of the host's."""
    target = ensure_target(rootfd, "sys", "dir", created)
    try:
        if own_netns:
            mount("sysfs", fd_path(target), "sysfs",
                  MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_RDONLY)
            return
        bind("/sys", target, MS_REC)
    finally:
        os.close(target)
    mounted = open_in_root(rootfd, "sys", os.O_PATH | os.O_DIRECTORY)
    try:
        make_readonly_recursive(mounted)
    finally:
        os.close(mounted)


def mount_proc(rootfd: int, created: list[Created], host_bind: bool) -> None:
    """/proc: a fresh procfs of the caller's pid namespace, or (``host_bind``) a read-only
    recursive bind of the parent's /proc. EPERM of the fresh mount is left to the caller
    to explain (mount_too_revealing)."""
    target = ensure_target(rootfd, "proc", "dir", created)
    try:
        if not host_bind:
            mount("proc", fd_path(target), "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
            return
        bind("/proc", target, MS_REC)
    finally:
        os.close(target)
    mounted = open_in_root(rootfd, "proc", os.O_PATH | os.O_DIRECTORY)
    try:
        make_readonly_recursive(mounted)
    finally:
        os.close(mounted)


def proc_submounts() -> list[str]:
    """Mounts below /proc in this mount namespace: what makes the kernel refuse a fresh
    procfs in a user namespace (fs/namespace.c mount_too_revealing)."""
    out = []
    with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
        for line in f:
            fields = line.split()
            if len(fields) > 5 and fields[4].startswith("/proc/"):
                out.append(f"{fields[4]} ({fields[5].split(',')[0]})")
    return out


def pivot_into(rootfd: int) -> None:
    """Make the mount at ``rootfd`` the root and detach the old one (runc's pivot_root
    without a put_old directory: pivot_root(".", ".") then unmount the stacked old root)."""
    os.fchdir(rootfd)
    pivot_root(".", ".")
    umount2(".", MNT_DETACH)
    os.chdir("/")


def loopback_up() -> None:
    """Bring up ``lo`` of a fresh network namespace (SIOCGIFFLAGS/SIOCSIFFLAGS)."""
    siocgifflags, siocsifflags, iff_up = 0x8913, 0x8914, 0x1
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        req = struct.pack("16sh22x", b"lo", 0)
        flags = struct.unpack("16sh22x", fcntl.ioctl(s.fileno(), siocgifflags, req))[1]
        fcntl.ioctl(s.fileno(), siocsifflags, struct.pack("16sh22x", b"lo", flags | iff_up))


def bind_at(rootfd: int, source: int, target: str, directory: bool, readonly: bool) -> None:
    """Bind the O_PATH fd ``source`` over ``target`` under the root (opened with no symlink
    followed), recursively for a directory, then make it read-only when asked."""
    fd = open_in_root(rootfd, target)
    try:
        bind(fd_path(source), fd, MS_REC if directory else 0)
    finally:
        os.close(fd)
    if readonly:
        again = open_in_root(rootfd, target)
        try:
            make_readonly_recursive(again)
        finally:
            os.close(again)
