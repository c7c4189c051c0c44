"""A per-phase trace of RUN steps, for measurements only (bench/run_cost.py): off unless
``ROOTBUILD_RUN_TRACE=FILE`` is in the builder's environment.

Job: ``mark(name)`` appends ``{"n": name, "t": CLOCK_MONOTONIC, "p": pid}`` as one line to
FILE. The builder and the zygote's inits mark (the zygote is given the variable when the
builder has it; the FUSE server's start and finish are seen from the init); the clock is
the machine's, so marks of different processes compare. A phase is the time between a
mark and the one before it.

Rules: stdlib only, nothing when the variable is unset (one dict lookup per mark), never
an error (a mark that cannot be written is dropped). FILE is created world-writable: the
inits write it as a subordinate uid.
"""

from __future__ import annotations

import contextlib
import json
import os
import time

ENV = "ROOTBUILD_RUN_TRACE"


def mark(name: str) -> None:
    path = os.environ.get(ENV)
    if not path:
        return
    line = json.dumps({"n": name, "t": time.monotonic(), "p": os.getpid()}) + "\n"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o666)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):  # not its owner: the builder made it so already
            os.fchmod(fd, 0o666)
        os.write(fd, line.encode())
    except OSError:
        pass
    finally:
        os.close(fd)
