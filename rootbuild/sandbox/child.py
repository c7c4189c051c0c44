"""The step process between fork and exec: pid 1 of the step's pid namespace.

Job: in a mount namespace of its own (so that pivot_root moves only the step, never the init
or the FUSE server), mount /dev, /sys, a fresh /proc (or the host-bind fallback) and the
step's binds (the sandbox's /etc files first, then every ``RUN --mount``), in order, under
the new root, pivot_root into it and detach the old root, then become the step: WORKDIR,
USER, only fds 0-2, exactly the given environment, exec.

Rules (SECURITY.md rules 1, 5, 6):
- Mount targets are opened with openat2 as O_PATH fds, never through path strings (the init
  checked or created them first). A bind's source (the builder's own file or directory) is
  opened O_PATH|O_NOFOLLOW and must be of the bind's kind; a read-only bind is made so
  recursively after the bind.
- EPERM from the fresh procfs mount is explained (mount_too_revealing) and fatal; the
  fallback is only ever the explicit ``host_bind`` mode.
- WORKDIR is resolved after pivot_root with RESOLVE_NO_MAGICLINKS: ``/proc/self/fd/N`` or
  ``/proc/<pid>/cwd`` cannot lead out of the root.
- No PR_SET_NO_NEW_PRIVS: setuid binaries of the image work as in Docker. Signals the
  interpreter ignores (SIGPIPE, SIGXFSZ) are restored first: ignored signals survive exec.
- Errors before exec go to ``err_fd`` as ``step:message`` (the Dockerfile's fault) or
  ``sandbox:message``; a successful exec closes it (O_CLOEXEC).
"""

from __future__ import annotations

import ctypes
import errno
import os
import signal
import stat
from dataclasses import dataclass
from typing import NoReturn

from rootbuild.sandbox import mounts, step_mounts
from rootbuild.sandbox.devices import bind_devices
from rootbuild.sandbox.nest import enter_nested
from rootbuild.sandbox.rlimits import Ulimit, apply_ulimits
from rootbuild.sandbox.spec import Bind
from rootbuild.sandbox.users import Identity

PR_SET_PDEATHSIG = 1
AT_FDCWD = -100


class _StepFault(Exception):
    """The step's own request is impossible (bad WORKDIR, command not found)."""


@dataclass(frozen=True)
class ChildPlan:
    argv: list[str]
    env: dict[str, str]
    workdir: str
    identity: Identity
    setgroups: bool
    mountpoint: str
    out_fd: int
    binds: tuple[Bind, ...] = ()
    own_netns: bool = False
    host_bind: bool = False
    tty_gid_mapped: bool = False
    mounts: tuple[step_mounts.Prepared, ...] = ()  # every RUN --mount, in order
    insecure: bool = False  # RUN --security=insecure: keep the user namespace's capabilities
    no_net_raw: bool = False  # --network=isolated: CAP_NET_RAW goes too (sandbox/netdeny.py)
    devices: tuple[str, ...] = ()  # RUN --device: host nodes bound into /dev (devices.py)
    shm_size: int | None = None  # --shm-size (None: 64 MiB)
    ulimits: tuple[Ulimit, ...] = ()  # --ulimit, set just before exec
    nest: bool = False  # --slot: run in a nested user namespace (nest.py)
    nproc: int | None = None  # --pids-limit: RLIMIT_NPROC, set before nesting


def proc_refused_message(submounts: list[str]) -> str:
    covered = f" (mounted over: {', '.join(submounts[:6])})" if submounts else ""
    return (
        "mount /proc for RUN: the kernel refused a fresh procfs (EPERM): the /proc "
        f"rootbuild runs under has masked or read-only sub-mounts{covered}, so the kernel's "
        "mount_too_revealing check forbids a new one, as in a default `docker run` or "
        "Kubernetes pod; fix: run the builder's container with "
        "`--security-opt systempaths=unconfined` (Docker) or `procMount: Unmasked` with "
        "`hostUsers: false` (Kubernetes), or accept the weaker explicit fallback "
        "`--proc=host-bind` (RUN then sees and can signal the builder's processes)"
    )


def _mount_all(plan: ChildPlan) -> int:
    """Mount everything under the root; returns an O_PATH fd of the root mount."""
    mounts.unshare(mounts.CLONE_NEWNS)
    # fds opened before unshare name mounts of the init's namespace: open the root again
    rootfd = os.open(plan.mountpoint, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    mounts.mount_dev(rootfd, [], plan.tty_gid_mapped, plan.shm_size)
    bind_devices(rootfd, plan.devices)
    mounts.mount_sys(rootfd, [], plan.own_netns)
    try:
        mounts.mount_proc(rootfd, [], plan.host_bind)
    except PermissionError as exc:
        if plan.host_bind:
            raise
        raise RuntimeError(proc_refused_message(mounts.proc_submounts())) from exc
    for item in plan.binds:
        _bind(rootfd, item)
    for mount in plan.mounts:
        step_mounts.ensure_nested_target(rootfd, mount)
        if isinstance(mount, Bind):
            _bind(rootfd, mount)
        else:
            step_mounts.mount_one(rootfd, mount)
    return rootfd


def _bind(rootfd: int, item: Bind) -> None:
    """Bind ``item.source`` over its target under the root (both opened as O_PATH fds, no
    symlink followed), read-only when asked."""
    try:
        source = os.open(item.source, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise RuntimeError(f"bind {item.source} at {item.target}: {exc.strerror}") from exc
    if mounts.in_step_dev(item.target):  # the target lives in /dev's tmpfs, never the root
        try:
            kind = "dir" if item.kind == "dir" else "file"  # a socket is bound over a file
            os.close(mounts.ensure_target(rootfd, item.target, kind, []))
        except OSError as exc:
            os.close(source)
            raise RuntimeError(f"bind at {item.target}: {exc.strerror}") from exc
    try:
        mode = os.fstat(source).st_mode
        is_kind = {"dir": stat.S_ISDIR, "file": stat.S_ISREG, "socket": stat.S_ISSOCK}
        if not is_kind[item.kind](mode):
            what = {"dir": "directory", "file": "regular file", "socket": "socket"}
            raise RuntimeError(
                f"bind {item.source} at {item.target}: the source is not a {what[item.kind]}"
            )
        mounts.bind_at(rootfd, source, item.target, item.kind == "dir", item.readonly)
    finally:
        os.close(source)


def _open_workdir(path: str) -> int:
    """WORKDIR as an O_PATH fd, created (mode 0755, as runc does) when missing. Called
    after pivot_root, so "/" and ".." are the image's root; magic links are refused."""
    rel = path.strip("/")
    resolve = mounts.RESOLVE_NO_MAGICLINKS
    flags = os.O_PATH | os.O_DIRECTORY
    parts = [p for p in rel.split("/") if p and p != "."]
    try:
        return mounts.openat2(AT_FDCWD, "/" + rel, flags, resolve)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise _StepFault(_workdir_error(path, exc)) from exc
    for depth in range(len(parts) - 1, -1, -1):
        try:
            fd = mounts.openat2(AT_FDCWD, "/" + "/".join(parts[:depth]), flags, resolve)
            break
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise _StepFault(_workdir_error(path, exc)) from exc
    try:
        for name in parts[depth:]:
            if name == "..":
                raise _StepFault(f"set WORKDIR {path!r}: '..' below a missing directory")
            os.mkdir(name, 0o755, dir_fd=fd)
            nfd = mounts.openat2(fd, name, flags | os.O_NOFOLLOW,
                                 mounts.RESOLVE_NO_SYMLINKS | resolve)
            os.close(fd)
            fd = nfd
    except OSError as exc:
        os.close(fd)
        raise _StepFault(_workdir_error(path, exc)) from exc
    return fd


def _workdir_error(path: str, exc: OSError) -> str:
    if exc.errno == 40:  # ELOOP: a magic link (/proc/self/fd/N, /proc/<pid>/cwd)
        return f"set WORKDIR {path!r}: it resolves outside the root filesystem"
    return f"set WORKDIR {path!r}: {exc.strerror}"


def _exec(argv: list[str], env: dict[str, str]) -> NoReturn:
    try:
        os.execvpe(argv[0], argv, env)
    except FileNotFoundError as exc:
        where = "" if "/" in argv[0] else " in $PATH"
        raise _StepFault(f'exec: "{argv[0]}": executable file not found{where}') from exc
    except OSError as exc:
        raise _StepFault(f'exec: "{argv[0]}": {exc.strerror}') from exc


PR_CAPBSET_DROP = 24
# Docker's default capability set for containers (and so for BuildKit's RUN): everything
# else (CAP_SYS_ADMIN, CAP_NET_ADMIN, CAP_SYS_PTRACE, ...) leaves the bounding set, so a
# step running as root of its user namespace cannot mount, unshare or trace.
DOCKER_DEFAULT_CAPS = frozenset({
    0,   # CHOWN
    1,   # DAC_OVERRIDE
    3,   # FOWNER
    4,   # FSETID
    5,   # KILL
    6,   # SETGID
    7,   # SETUID
    8,   # SETPCAP
    10,  # NET_BIND_SERVICE
    13,  # NET_RAW
    18,  # SYS_CHROOT
    27,  # MKNOD
    29,  # AUDIT_WRITE
    31,  # SETFCAP
})


CAP_NET_RAW = 13


def _drop_capabilities(keep: frozenset[int] = DOCKER_DEFAULT_CAPS) -> None:
    """Shrink the bounding set to ``keep``, Docker's defaults unless told (root's
    capabilities after exec are exactly its bounding set). Stops at the kernel's last
    capability (EINVAL)."""
    libc = ctypes.CDLL(None, use_errno=True)
    cap = 0
    while True:
        if cap not in keep and libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            err = ctypes.get_errno()
            if err == errno.EINVAL:
                return
            raise OSError(err, f"drop capability {cap}")
        cap += 1
        if cap > 63:
            return


def child_main(plan: ChildPlan, err_fd: int) -> NoReturn:
    """Never returns: execs the step or reports why not and exits 127."""
    try:
        for sig in (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, signal.SIG_DFL)
        null = os.open("/dev/null", os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(plan.out_fd, 1)
        os.dup2(plan.out_fd, 2)
        os.setsid()
        rootfd = _mount_all(plan)
        mounts.pivot_into(rootfd)
        os.closerange(3, err_fd)
        os.closerange(err_fd + 1, 1 << 16)
        cwd = _open_workdir(plan.workdir)
        os.fchdir(cwd)
        os.close(cwd)
        if plan.nest:
            enter_nested(plan.nproc)
        if not plan.insecure:
            _drop_capabilities(DOCKER_DEFAULT_CAPS - {CAP_NET_RAW} if plan.no_net_raw
                               else DOCKER_DEFAULT_CAPS)
        ident = plan.identity
        if plan.setgroups:
            os.setgroups(list(ident.groups))
        os.setresgid(ident.gid, ident.gid, ident.gid)
        os.setresuid(ident.uid, ident.uid, ident.uid)
        # after the uid change, which clears it: the step dies with the init
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        apply_ulimits(plan.ulimits)
        _exec(plan.argv, plan.env)
    except _StepFault as exc:
        message = f"step:{exc}"
    except RuntimeError as exc:
        message = f"sandbox:{exc}"
    except OSError as exc:
        message = f"sandbox:set up RUN sandbox: {exc}"
    except BaseException as exc:  # never let a forked interpreter return into the init
        message = f"sandbox:set up RUN sandbox: {exc!r}"
    try:
        os.write(err_fd, message.encode(errors="replace"))
    finally:
        os._exit(127)
