"""A forked helper made to look and start like a freshly exec'd one: its command line in
``ps``, its standard fds, its other fds and its signal dispositions.

Job: ``set_title(args)``: rewrite this process's command line (``/proc/self/cmdline``);
``fresh_start(log, keep, title)``: what ``subprocess.Popen(start_new_session=True,
stdin=DEVNULL, stdout=log, stderr=log, pass_fds=keep)`` would have given the child.

Why: the build's zygote forks the sandbox inits and they fork the FUSE servers
(``sandbox/zygote.py``); without this they would all show the zygote's command line. With
it each shows what a fresh interpreter would (``python3 -I -m rootbuild.sandbox.init
SCRATCH/spec.json ...``), which names the build's store: an operator (and the leftover
checks of the tests) can tell which build a process belongs to.

Rules:
- The title is written over the process's original argument area (``arg_start`` ..
  ``arg_end`` of /proc/self/stat, through /proc/self/mem), cut to fit and padded with NULs;
  the zygote is started with a long placeholder argument to make room. Nothing else of
  the process changes (``sys.argv`` is a copy).
- Best effort: a failure leaves the old title and is not an error.
"""

from __future__ import annotations

import contextlib
import os
import signal

#: a placeholder argument that makes room for the titles of a forked process's children
ROOM = "." * 1536


def set_title(args: list[str]) -> None:
    """Show ``args`` as this process's command line (cut to the room there is)."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        with open("/proc/self/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        start, end = int(fields[45]), int(fields[46])  # arg_start, arg_end (fields 48, 49)
        room = end - start
        if room <= 1:
            return
        title = b"\0".join(os.fsencode(a) for a in args) + b"\0"
        with open("/proc/self/mem", "r+b", buffering=0) as mem:
            mem.seek(start)
            mem.write(title[: room - 1].ljust(room, b"\0"))


def fresh_start(log: int, keep: tuple[int, ...], title: list[str]) -> None:
    """In a just-forked child: a session of its own, stdin /dev/null, stdout and stderr on
    ``log``, no fd open but those and ``keep``, default dispositions for the signals its
    parent handles, and ``title`` as its command line."""
    os.setsid()
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(log, 1)
    os.dup2(log, 2)
    low = 3
    for fd in sorted({0, 1, 2, *keep}):
        if fd >= low:
            os.closerange(low, fd)
            low = fd + 1
    os.closerange(low, os.sysconf("SC_OPEN_MAX"))
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD, signal.SIGHUP):
        signal.signal(signum, signal.SIG_DFL)
    set_title(title)
