"""The build's zygote: one interpreter with the sandbox init's code already imported, which
forks a ready init for each RUN step instead of starting a new interpreter per step.

Job: ``Zygote`` (the builder's side: started on first use, ``spawn`` -> ``InitProcess``,
``aclose``) and ``main`` (``python -I -m rootbuild.sandbox.zygote SOCK_FD``: the zygote).

Why: a fresh ``python -I -m rootbuild.sandbox.init`` costs ~70 ms before it does anything
(interpreter start and imports), and its FUSE server another ~110 ms (trio and pyfuse3);
a fork of a process that has imported both costs about a millisecond (issue 14, item 1).

Rules:
- The zygote is single-threaded and never runs trio: forking it is as safe as starting a
  fresh interpreter, and its children (the inits) may fork again (the FUSE servers,
  ``fuse_overlay/mount.py``) and run trio there.
- It is started by the builder with the init's minimal environment, in a session of its
  own, with PR_SET_PDEATHSIG: it dies with the builder, and it exits when its socket
  closes (``aclose``). Its children do not depend on it once forked: each init is in a
  session of its own and tears its step down when the builder's end of its control pipe
  closes, exactly as a directly started init does.
- It may be started early (``prestart``: the build has RUN steps that will run), so that
  its interpreter start and imports overlap the build's base pulls and COPY steps instead
  of delaying the first RUN; ``spawn`` waits for it to be ready. Earliest of all, the CLI
  launches it (``EarlyZygote.launch``) before it imports trio and the engine, when the
  Dockerfile has a RUN line: both interpreters then import at once, on two CPUs, and the
  build's ``Zygote`` adopts it. One never adopted is killed by ``close``.
- A request may name layer metadata files (``"metas"``: the step's lower layers), which the
  zygote loads before it forks (``image/meta_cache.py``): each init and FUSE server
  inherits them instead of parsing them again per step. They are the builder's own files
  from the store, never the step's data.
- A request is one SOCK_SEQPACKET message: JSON ``{"argv": [...], "cwd": DIR}`` and the
  fds (SCM_RIGHTS) ``[log, *passed]``; ``argv`` entries ``"{fd:N}"`` become the number of
  passed fd N in the child. The child gets stdin /dev/null, stdout and stderr on the log,
  the passed fds and nothing else of the zygote's, default signal dispositions, and runs
  ``init.main(argv)``. The answer is ``{"pid": PID}`` with a pidfd (SCM_RIGHTS) opened
  before the zygote can reap the child, so the builder never signals a reused pid.
- The zygote reaps its children; the builder learns of an init's end from the pidfd and
  of its outcome from the init's status events, never from an exit status.
"""

from __future__ import annotations

import array
import contextlib
import ctypes
import gc
import importlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from rootbuild import runtrace
from rootbuild.errors import SandboxError
from rootbuild.image import meta_cache
from rootbuild.proctitle import ROOM, fresh_start, set_title
from rootbuild.runtrace import mark

INIT_MODULE = "rootbuild.sandbox.init"
ZYGOTE_MODULE = "rootbuild.sandbox.zygote"
PR_SET_PDEATHSIG = 1
MAX_MESSAGE = 1 << 16
MAX_FDS = 16
START_SECONDS = 30.0
ANSWER_SECONDS = 30.0  # a fork: milliseconds; past this the zygote is taken for dead


def fd_arg(index: int) -> str:
    """The ``argv`` placeholder for passed fd ``index`` (0: the first after the log)."""
    return f"{{fd:{index}}}"


def expand_argv(argv: Sequence[str], fds: Sequence[int]) -> list[str]:
    """``argv`` with each ``{fd:N}`` replaced by the number of ``fds[N]``."""
    out = []
    for arg in argv:
        if arg.startswith("{fd:") and arg.endswith("}"):
            index = int(arg[4:-1])
            if not 0 <= index < len(fds):
                raise ValueError(f"zygote request: no passed fd {index}")
            out.append(str(fds[index]))
        else:
            out.append(arg)
    return out


def _ancillary(fds: Sequence[int]) -> list[tuple[int, int, bytes]]:
    return [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())]


def _received_fds(ancdata: list[tuple[int, int, bytes]]) -> list[int]:
    fds = array.array("i")
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
    return list(fds)


# -- the zygote process --------------------------------------------------------------------


def _preload() -> Any:
    """Import what the inits and their helpers run: the init, and each snapshotter's
    helper modules (the FUSE server: trio and pyfuse3)."""
    from rootbuild.snapshot.registry import helper_modules

    init = importlib.import_module(INIT_MODULE)
    for name in helper_modules():
        importlib.import_module(name)
    return init


def _reap() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _child(init: Any, sock: socket.socket, request: dict[str, Any], fds: list[int]) -> NoReturn:
    """In the forked child: become the init of ``request`` (never returns)."""
    code = 127
    try:
        sock.detach()  # its fd is closed by fresh_start with the zygote's others
        log, passed = fds[0], fds[1:]
        argv = expand_argv(request["argv"], passed)
        fresh_start(log, tuple(passed), [sys.executable, "-I", "-m", INIT_MODULE, *argv])
        os.chdir(request["cwd"])
        sys.argv = ["-m", *argv]
        init.main(argv)
    except BaseException:  # the init reports its own errors; this is a failed hand-over
        with contextlib.suppress(BaseException):
            import traceback

            traceback.print_exc()
            sys.stderr.flush()
    os._exit(code)


def serve(sock: socket.socket, init: Any) -> None:
    """Answer spawn requests until the builder closes its end."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the builder's to handle
    sock.sendall(b'{"ready": true}')
    while True:
        _reap()
        ready, _, _ = select.select([sock], [], [], 1.0)
        if not ready:
            continue
        data, ancdata, _, _ = sock.recvmsg(MAX_MESSAGE, socket.CMSG_SPACE(MAX_FDS * 4))
        fds = _received_fds(ancdata)
        if not data:
            return
        try:
            request = json.loads(data)
            if len(fds) < 1:
                raise ValueError("zygote request: no log fd")
            metas = request.get("metas")
            if isinstance(metas, list) and all(isinstance(m, str) for m in metas):
                meta_cache.preload(metas)
            gc.freeze()  # a child's collections then leave the shared pages alone
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                _child(init, sock, request, fds)
            pidfd = os.pidfd_open(pid)
            try:
                sock.sendmsg([json.dumps({"pid": pid}).encode()], _ancillary([pidfd]))
            finally:
                os.close(pidfd)
        except (OSError, ValueError) as exc:
            sock.sendall(json.dumps({"error": str(exc)}).encode())
        finally:
            for fd in fds:
                os.close(fd)


def main(argv: list[str]) -> NoReturn:
    """``SOCK_FD LABEL ROOM``: LABEL names the build's store (shown by ``ps``), ROOM is
    ``proctitle.ROOM``, the room the children's titles are written in."""
    ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() == 1:  # the builder died before the line above
        os._exit(1)
    set_title([sys.executable, "-I", "-m", ZYGOTE_MODULE, *argv[:2]])
    sock = socket.socket(fileno=int(argv[0]))
    with contextlib.suppress(OSError, KeyboardInterrupt):
        serve(sock, _preload())
    os._exit(0)


# -- the builder's side --------------------------------------------------------------------


class InitProcess:
    """A spawned init: its pid and a pidfd (readable once it has exited)."""

    def __init__(self, pid: int, pidfd: int) -> None:
        self.pid = pid
        self.pidfd = pidfd

    def alive(self) -> bool:
        if self.pidfd < 0:
            return False
        ready, _, _ = select.select([self.pidfd], [], [], 0)
        return not ready

    async def wait(self) -> None:
        import trio

        if self.alive():
            await trio.lowlevel.wait_readable(self.pidfd)

    def kill_group(self) -> None:
        """SIGKILL its process group (its session: the init and what it did not move out),
        if it still runs (checked through the pidfd: never a reused pid)."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
                os.killpg(self.pid, signal.SIGKILL)

    def close(self) -> None:
        if self.pidfd >= 0:
            os.close(self.pidfd)
            self.pidfd = -1


# the builder's variables the zygote passes on (runtrace.py, fuse_overlay/stats.py)
MEASUREMENT_ENV = (runtrace.ENV, "ROOTBUILD_FUSE_STATS")


def zygote_env() -> dict[str, str]:
    """The zygote's whole environment: PATH, LANG, and the measurement variables set."""
    path = os.environ.get("PATH")
    if path is None:
        from rootbuild.sandbox.spec import DEFAULT_PATH

        path = DEFAULT_PATH
    env = {"PATH": path, "LANG": "C.UTF-8"}
    env.update({name: os.environ[name] for name in MEASUREMENT_ENV if os.environ.get(name)})
    return env


def zygote_argv(sock_fd: int, label: str) -> list[str]:
    return [sys.executable, "-I", "-m", ZYGOTE_MODULE, str(sock_fd), label or "-", ROOM]


class EarlyZygote:
    """A zygote launched without trio, before the builder imports it (see the module
    rules): ``launch``, then either a ``Zygote`` adopts it or ``close`` kills it."""

    def __init__(self, popen: subprocess.Popen[bytes], sock: socket.socket,
                 errors: Any) -> None:
        self.popen = popen
        self.sock: socket.socket | None = sock
        self.errors = errors

    @classmethod
    def launch(cls, env: dict[str, str], label: str = "") -> EarlyZygote:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        errors = tempfile.TemporaryFile()  # noqa: SIM115 (closed by close or the adopter)
        try:
            popen = subprocess.Popen(
                zygote_argv(theirs.fileno(), label), pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=errors,
                start_new_session=True, env=env, cwd="/",
            )
        except BaseException:
            ours.close()
            errors.close()
            raise
        finally:
            theirs.close()
        return cls(popen, ours, errors)

    def released(self) -> bool:
        """Adopted by a ``Zygote`` or closed: this object has nothing left to close."""
        return self.sock is None

    def close(self) -> None:
        """Kill and reap it unless a ``Zygote`` adopted it (then that one closes it)."""
        if self.sock is None:
            return
        self.sock.close()
        self.sock = None
        self.errors.close()
        self.popen.kill()  # never asked for a fork: it has no children
        self.popen.wait()


class _ZygoteProcess:
    """The zygote's process (an ``EarlyZygote``'s, adopted) with the part of
    ``trio.Process`` that ``Zygote`` uses, its exit awaited through a pidfd."""

    def __init__(self, popen: subprocess.Popen[bytes]) -> None:
        self.popen = popen
        self.pid = popen.pid
        self.pidfd = os.pidfd_open(popen.pid)

    @property
    def returncode(self) -> int | None:
        return self.popen.poll()

    def kill(self) -> None:
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)

    async def wait(self) -> int:
        import trio

        if self.popen.poll() is None:
            await trio.lowlevel.wait_readable(self.pidfd)
        code = self.popen.wait()
        if self.pidfd >= 0:
            os.close(self.pidfd)
            self.pidfd = -1
        return code


class Zygote:
    """The builder's zygote (see the module rules): one per ``SandboxExecutor``. ``early``:
    a zygote the CLI launched for this build, adopted at the first use."""

    def __init__(self, env: dict[str, str], label: str = "",
                 early: EarlyZygote | None = None) -> None:
        self.env = env
        self.label = label  # shown in its command line: the build's store
        self._early = early
        self._proc: Any = None
        self._sock: Any = None
        self._lock: Any = None
        self._ready = False
        self._errors: Any = None  # the zygote's stderr: a temporary file

    async def prestart(self) -> None:
        """Start the zygote now, without waiting for it to be ready (``spawn`` does)."""
        if self._proc is None:
            await self._launch()

    async def _start(self) -> None:
        if self._proc is None:
            await self._launch()
        await self._hello()

    async def _launch(self) -> None:
        import trio

        early, self._early = self._early, None
        if early is None or early.released():
            early = EarlyZygote.launch(self.env, self.label)  # no early one: started now
        assert early.sock is not None
        self._proc = _ZygoteProcess(early.popen)
        self._sock = trio.socket.from_stdlib_socket(early.sock)
        self._errors = early.errors  # its stderr (an import error, say): quoted if it fails
        early.sock = None  # this object closes it from now on
        self._ready = False

    async def _hello(self) -> None:
        import trio

        if self._ready:
            return
        with trio.move_on_after(START_SECONDS):
            hello = await self._sock.recv(MAX_MESSAGE)
            if hello:
                self._ready = True
                return
        tail = ""
        if self._errors is not None:
            self._errors.seek(0)
            text = self._errors.read(65536).decode(errors="replace")
            tail = " | ".join(text.splitlines()[-3:])
        await self.aclose()
        raise SandboxError(
            f"start the RUN sandbox: its zygote process did not start: {tail}".rstrip(": "))

    async def spawn(self, argv: Sequence[str], log: int, fds: Sequence[int],
                    cwd: Path, metas: Sequence[str] = ()) -> InitProcess:
        """Fork an init running ``init.main(argv)`` (``fd_arg(i)`` in ``argv``: passed
        fd ``fds[i]``) with stdout and stderr on ``log``, in ``cwd``; ``metas``: layer
        metadata files the zygote loads first, for the init to inherit."""
        import trio

        if self._lock is None:
            self._lock = trio.Lock()
        async with self._lock:
            for attempt in (1, 2):  # a zygote that died (killed by hand) is replaced once
                if self._sock is None or not self._ready:
                    await self._start()
                    mark("b.zygote_started")
                try:
                    # one request, one answer, never torn apart by a cancel: an answer
                    # left unread would be taken for the next step's
                    with trio.CancelScope(shield=True):
                        with trio.fail_after(ANSWER_SECONDS):
                            return await self._ask(argv, log, fds, cwd, metas)
                except (OSError, EOFError, trio.TooSlowError) as exc:
                    await self.aclose()
                    if attempt == 2:
                        raise SandboxError(f"start the RUN sandbox: zygote: {exc}") from exc
        raise AssertionError("unreachable")

    async def _ask(self, argv: Sequence[str], log: int, fds: Sequence[int],
                   cwd: Path, metas: Sequence[str] = ()) -> InitProcess:
        request = json.dumps({"argv": list(argv), "cwd": str(cwd),
                              "metas": list(metas)}).encode()
        await self._sock.sendmsg([request], _ancillary([log, *fds]))
        data, ancdata, _, _ = await self._sock.recvmsg(
            MAX_MESSAGE, socket.CMSG_SPACE(MAX_FDS * 4))
        got = _received_fds(ancdata)
        if not data:
            for fd in got:
                os.close(fd)
            raise EOFError("the zygote exited")
        answer = json.loads(data)
        if "error" in answer or len(got) != 1:
            for fd in got:
                os.close(fd)
            raise SandboxError(f"start the RUN sandbox: zygote: {answer.get('error', answer)}")
        return InitProcess(int(answer["pid"]), got[0])

    async def aclose(self) -> None:
        """Close the zygote's socket and wait for it to exit (its inits are not touched)."""
        import trio

        if self._early is not None:  # launched for this build, never used
            self._early.close()
            self._early = None
        sock, proc, ready = self._sock, self._proc, self._ready
        self._sock = self._proc = None
        self._ready = False
        if self._errors is not None:
            self._errors.close()
            self._errors = None
        if sock is not None:
            sock.close()
        if proc is not None and not ready and proc.returncode is None:
            proc.kill()  # started early, never used: it has forked nothing
        if proc is not None:
            with trio.CancelScope(shield=True):
                with trio.move_on_after(5):
                    await proc.wait()
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()


if __name__ == "__main__":
    main(sys.argv[1:])
