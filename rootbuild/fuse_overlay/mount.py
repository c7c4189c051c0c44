"""Mount lifecycle of the overlay: one server process per mount, a ready handshake,
unmount, the step's layer collected, and nothing left behind.

The server is forked from the caller when the caller is single-threaded (the sandbox init:
its code is already imported there, ~110 ms saved per mount), else started as a fresh
interpreter (``python -m rootbuild.fuse_overlay.server``).

Rules:
- ``mount_overlay`` runs where FUSE mounts are allowed: as root of a user namespace that
  owns the current mount namespace (the sandbox), or as a user with ``fusermount3``.
- Leaving the context without ``finish()`` (or ``close()``, for a read-only view: an
  error, a cancelled step) detaches the mount and kills the server: no mount and no process
  remain, whatever happened.
- The server's stderr goes to ``work/server.log``; its last lines are quoted in errors.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from rootbuild.errors import SandboxError
from rootbuild.image.layermeta import LayerMeta
from rootbuild.proctitle import set_title

MNT_DETACH = 2
SERVER_MODULE = "rootbuild.fuse_overlay.server"
# the C library this process already has (find_library would run ldconfig: ~10 ms)
_libc = ctypes.CDLL(None, use_errno=True)


@dataclass(frozen=True)
class OverlayResult:
    """A step's changes as an extracted-layer tree and its metadata (``layermeta``)."""

    tree: Path
    meta: LayerMeta


def is_mounted(path: Path) -> bool:
    target = os.path.realpath(path)
    with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
        for line in f:
            fields = line.split()
            if len(fields) > 4 and _unescape(fields[4]) == target:
                return True
    return False


def _unescape(field: str) -> str:
    return field.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace(
        "\\134", "\\"
    )


def unmount(path: Path) -> None:
    """Detach ``path`` (lazily: open files cannot keep it). Not mounted is fine."""
    if _libc.umount2(os.fsencode(path), MNT_DETACH) == 0:
        return
    err = ctypes.get_errno()
    if err == errno.EINVAL and not is_mounted(path):
        return
    if err in (errno.EPERM, errno.EINVAL):  # mounted through fusermount3 by this user
        proc = subprocess.run(
            ["fusermount3", "-u", "-z", str(path)], capture_output=True, text=True
        )
        if proc.returncode == 0 or not is_mounted(path):
            return
        raise SandboxError(f"unmount overlay {path}: {proc.stderr.strip()}")
    raise SandboxError(f"unmount overlay {path}: {os.strerror(err)}")


class OverlayMount:
    """A mounted overlay; ``finish()`` unmounts it and returns the step's changes; a
    read-only view is unmounted by ``close()`` (or by leaving its context)."""

    def __init__(self, proc: ForkedServer | subprocess.Popen[bytes], mountpoint: Path, work: Path,
                 readonly: bool = False) -> None:
        self.proc = proc
        self.mountpoint = mountpoint
        self.work = work
        self.readonly = readonly
        self.done = False

    def _log_tail(self) -> str:
        try:
            lines = (self.work / "server.log").read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return " | ".join(lines[-3:])

    def finish(self, timeout: float = 120.0) -> OverlayResult:
        """Unmount, let the server write the change journal as a layer tree, return it."""
        if self.readonly:
            raise SandboxError(f"finish overlay {self.mountpoint}: a read-only view has no "
                               "changes (leave its context, or call close())")
        self.close(timeout)
        from rootbuild.fuse_overlay.server import RESULT_META, RESULT_TREE

        overlay = self.work / "overlay"
        return OverlayResult(overlay / RESULT_TREE, LayerMeta.load(overlay / RESULT_META))

    def close(self, timeout: float = 120.0) -> None:
        """Unmount and wait for the server to exit cleanly (after writing the layer, for a
        writable mount)."""
        what = "close read-only overlay" if self.readonly else "finish overlay"
        self.done = True
        try:
            unmount(self.mountpoint)
            code = _wait(self.proc, timeout)
        except subprocess.TimeoutExpired:
            self._kill()
            raise SandboxError(
                f"{what} {self.mountpoint}: server did not exit in {timeout:.0f}s"
            ) from None
        except BaseException:
            self._kill()
            raise
        if code != 0:
            raise SandboxError(
                f"{what} {self.mountpoint}: server exited {code}: {self._log_tail()}"
            )

    def _kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def abort(self) -> None:
        """Tear down without a result: detach the mount, stop the server."""
        self.done = True
        try:
            if self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self._kill()
        finally:
            with contextlib.suppress(SandboxError):
                unmount(self.mountpoint)
            self._kill()


def _wait(proc: ForkedServer | subprocess.Popen[bytes], timeout: float) -> int:
    """Wait for ``proc`` to exit, woken the moment it does (a pidfd), not by polling:
    ``Popen.wait(timeout)`` sleeps in doubling steps, which costs a step's layer ~30 ms."""
    try:
        pidfd = os.pidfd_open(proc.pid)
    except OSError:  # already reaped, or an old kernel
        return proc.wait(timeout=timeout)
    try:
        ready, _, _ = select.select([pidfd], [], [], timeout)
    finally:
        os.close(pidfd)
    if not ready:
        raise subprocess.TimeoutExpired(proc.args, timeout)
    return proc.wait()


def _wait_ready(fd: int, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    data = b""
    while b"\n" not in data:
        left = deadline - time.monotonic()
        if left <= 0:
            return "error: server did not report ready in time"
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            continue
        chunk = os.read(fd, 4096)
        if not chunk:
            return "error: server exited before it was ready"
        data += chunk
    return data.split(b"\n", 1)[0].decode(errors="replace")


class ForkedServer:
    """A server forked from this process: the part of ``subprocess.Popen`` the mount uses."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.args = ["fork", SERVER_MODULE]
        self.returncode: int | None = None

    def _status(self, flags: int) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, flags)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def poll(self) -> int | None:
        return self._status(os.WNOHANG)

    def wait(self, timeout: float | None = None) -> int:
        if timeout is not None and self.poll() is None:
            pidfd = os.pidfd_open(self.pid)
            try:
                ready, _, _ = select.select([pidfd], [], [], timeout)
            finally:
                os.close(pidfd)
            if not ready:
                raise subprocess.TimeoutExpired(self.args, timeout)
        code = self._status(0)
        assert code is not None
        return code

    def send_signal(self, signum: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, signum)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


def _start_server(
    spec_path: Path, ready_fd: int, log: int
) -> ForkedServer | subprocess.Popen[bytes]:
    """The server for ``spec_path``: forked from this process when it is single-threaded
    (the sandbox init, forked itself from the build's zygote, has the server's code
    imported: no interpreter start, no imports), else a fresh interpreter."""
    if threading.active_count() != 1:
        return subprocess.Popen(
            [sys.executable, "-m", SERVER_MODULE, str(spec_path)],
            pass_fds=[ready_fd], stdin=subprocess.DEVNULL, stdout=log, stderr=log,
            start_new_session=True,
        )
    from rootbuild.fuse_overlay import server

    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the server: what a fresh interpreter would be given, and no more
        code = 1
        try:
            os.setsid()
            devnull = os.open(os.devnull, os.O_RDWR)
            os.dup2(devnull, 0)
            os.dup2(log, 1)
            os.dup2(log, 2)
            keep = sorted({0, 1, 2, ready_fd})
            low = 3
            for fd in keep:
                if fd >= low:
                    os.closerange(low, fd)
                    low = fd + 1
            os.closerange(low, os.sysconf("SC_OPEN_MAX"))
            for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD, signal.SIGHUP):
                signal.signal(signum, signal.SIG_DFL)
            set_title([sys.executable, "-m", SERVER_MODULE, str(spec_path)])
            code = server.serve(spec_path)
        except BaseException:
            with contextlib.suppress(BaseException):
                import traceback

                traceback.print_exc()
        with contextlib.suppress(BaseException):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)
    return ForkedServer(pid)


@contextlib.contextmanager
def mount_overlay(
    lowers: Sequence[tuple[Path, Path]], work: Path, mountpoint: Path, *,
    readonly: bool = False, timeout: float = 30.0, pool: Path | None = None,
) -> Iterator[OverlayMount]:
    """Mount the overlay of ``lowers`` ((tree dir, meta.json) pairs, lowest first) at
    ``mountpoint``, with its upper in ``work`` (created; must not exist). ``readonly``:
    a view of the merged lowers, mounted ``ro``, with no upper and no result
    (``readonly.py``). ``pool``: the disk budget file (``pool.create_pool``) the upper is
    charged to (ENOSPC beyond it), shared with the step's other overlays."""
    work.mkdir(mode=0o700)
    spec_path = work / "spec.json"
    read_fd, write_fd = os.pipe()
    spec = {
        "lowers": [[str(tree), str(meta)] for tree, meta in lowers],
        "work": str(work / "overlay"),
        "mountpoint": str(mountpoint),
        "ready_fd": write_fd,
        "readonly": readonly,
        "pool": None if pool is None else str(pool),
    }
    spec_path.write_text(json.dumps(spec))
    (work / "overlay").mkdir(mode=0o700)
    with open(work / "server.log", "wb") as log:
        try:
            proc = _start_server(spec_path, write_fd, log.fileno())
        finally:
            os.close(write_fd)
    handle = OverlayMount(proc, mountpoint, work, readonly)
    try:
        try:
            status = _wait_ready(read_fd, timeout)
        finally:
            os.close(read_fd)
        if status != "ready":
            handle.abort()
            raise SandboxError(f"{status.removeprefix('error: ')} {handle._log_tail()}".strip())
        yield handle
    finally:
        if not handle.done:
            handle.abort()
