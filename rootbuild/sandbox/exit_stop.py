"""Stop the step's pid 1 on its way out, so that the limits watchdog counts the step's
processes once more before its pid namespace dies (sandbox/limits.py "Processes").

Job: ``ExitStop``: attach to the step's pid 1 with ``PTRACE_SEIZE`` and only
``PTRACE_O_TRACEEXIT`` (plus ``PTRACE_O_EXITKILL``); ``handle`` reads the tracee's stops
(``waitid(WSTOPPED)``, never its exit), lets every signal through as it came, and says
when pid 1 has stopped at its exit; ``release`` lets it go on exiting. The pure part,
``classify_stop``, reads a stop's status.

Why: the pids watchdog polls; RLIMIT_NPROC is the kernel's hard stop behind it. A fork
bomb faster than one poll meets RLIMIT_NPROC first: its shell cannot fork, exits, and
the pid namespace dies with it (the kernel kills every other process of a namespace whose
pid 1 exits) before the next poll, so the step used to fail with the shell's own "can't
fork" instead of the named limit. Stopped at ``PTRACE_EVENT_EXIT``, pid 1 has not yet
left: every process of the namespace still lives and the count is exact.

Rules:
- ``PTRACE_SEIZE``, not ``PTRACE_ATTACH``: no stop at attach, no SIGTRAP at exec; pid 1
  stays the step's command (Docker's semantics) and runs as before.
- Every signal-delivery stop is resumed with its own signal: the kernel still drops, at
  delivery, what pid 1 of a namespace does not handle (``SIGNAL_UNKILLABLE``), so tracing
  changes no signal's effect. Group stops (``PTRACE_EVENT_STOP``) are resumed too.
- Attached after the step's exec (a stop during the child's set-up would deadlock with the
  init reading its error pipe); a step gone or not traceable by then is simply not
  stopped at exit (``attach`` returns None) and the polls alone decide.
- ``PTRACE_O_EXITKILL``: if the init dies, the kernel kills the step.
"""

from __future__ import annotations

import ctypes
import errno
import os
import signal

PTRACE_CONT = 7
PTRACE_SEIZE = 0x4206
PTRACE_O_TRACEEXIT = 0x40
PTRACE_O_EXITKILL = 0x100000
PTRACE_EVENT_EXIT = 6
PTRACE_EVENT_STOP = 128

_libc = ctypes.CDLL(None, use_errno=True)
_libc.ptrace.restype = ctypes.c_long
_libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]


def _ptrace(request: int, pid: int, data: int = 0) -> None:
    if _libc.ptrace(request, pid, None, ctypes.c_void_p(data)) == -1:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def classify_stop(status: int) -> tuple[str, int]:
    """A ptrace stop's ``waitid`` status (the stop signal, with a ptrace event in bits
    8-15) as (kind, signal to resume with): ("exit", 0) at PTRACE_EVENT_EXIT, ("event", 0)
    at another event stop (group stop, interrupt), ("signal", SIG) at a signal-delivery
    stop."""
    event = (status >> 8) & 0xFF
    sig = status & 0xFF
    if event == PTRACE_EVENT_EXIT and sig == signal.SIGTRAP:
        return "exit", 0
    if event:
        return "event", 0
    return "signal", sig


class ExitStop:
    """The step's pid 1, traced for its exit stop only."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.stopped = False  # at its exit stop, waiting for ``release``

    @classmethod
    def attach(cls, pid: int) -> ExitStop | None:
        try:
            _ptrace(PTRACE_SEIZE, pid, PTRACE_O_TRACEEXIT | PTRACE_O_EXITKILL)
        except OSError:
            return None
        return cls(pid)

    def handle(self) -> bool:
        """Resume every pending stop but the exit stop; True once pid 1 is at its exit."""
        while not self.stopped:
            try:
                info = os.waitid(os.P_PID, self.pid, os.WSTOPPED | os.WNOHANG)
            except ChildProcessError:
                return False
            if info is None:
                return False
            kind, sig = classify_stop(info.si_status)
            if kind == "exit":
                self.stopped = True
            else:
                self._resume(sig)
        return True

    def release(self) -> None:
        """Let pid 1 go on exiting (after its exit stop)."""
        if self.stopped:
            self.stopped = False
            self._resume(0)

    def _resume(self, sig: int) -> None:
        try:
            _ptrace(PTRACE_CONT, self.pid, sig)
        except OSError as exc:
            if exc.errno != errno.ESRCH:  # killed meanwhile (SIGKILL needs no resume)
                raise
