"""The command line a forked helper shows in ``ps``, as if it had been started fresh.

Job: ``set_title(args)``: rewrite this process's command line (``/proc/self/cmdline``).

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
