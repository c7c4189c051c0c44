"""The overlay server's request loop: pyfuse3's own, with one worker task that waits for
the next request in poll(2) instead of in trio's scheduler.

Why: pyfuse3 (3.3 to 3.5) reads each request in ``_session_loop``, which first awaits the
module-level ``_wait_fuse_readable()``. That takes a ``trio.Lock`` (so that only one of
several worker tasks waits on the FUSE fd; acquiring even an uncontended trio lock is a whole
scheduler turn) and then parks the task until trio's epoll loop reports the fd readable (an
``epoll_ctl``, a second turn, an ``epoll_wait``). With one worker task there is nothing to
exclude, and the server has nothing else to do while it waits: ``run_session`` puts in its
place a wait that blocks in ``poll`` on the FUSE fd, and runs ``pyfuse3.main(1, 1)``. A
request then costs one ``poll`` on top of libfuse's read and reply. When the step and the
server share a CPU (``sandbox/placement.py``) this makes an untar of 5,000 files 0.92 s
instead of 1.89 s with pyfuse3's stock loop (``bench/placement.py``; docs/benchmarks.md).

Rules:
- One worker task: a handler that awaits (a copy-up over 1 MiB runs in a thread) holds up the
  requests behind it until it is done. rootbuild's handlers never wait for another request,
  so this cannot deadlock; it is libfuse's own single-threaded loop.
- The wait blocks trio's loop, so it hands the loop a turn (a checkpoint) at least every
  ``TURN_S``: while idle (``poll`` times out) and while busy. The server's other task, the
  signal watcher, therefore reacts within ``TURN_S``. ``stop()`` (from that task) ends the
  loop at the next wait: it sets the flag the wait checks and calls ``pyfuse3.terminate()``.
- An unmount makes the fd readable (POLLERR): the wait returns and libfuse's read ends the
  session, as in pyfuse3's loop.
- Where pyfuse3's internals are not as described (another version), pyfuse3's stock loop
  runs: slower, the same behaviour. ``fast_loop_supported()`` tells which; a unit test pins
  it, so an upgrade that changes them fails CI instead of silently slowing every RUN.
"""

from __future__ import annotations

import inspect
import os
import select
import time

import pyfuse3
import trio

_HOOK = "_wait_fuse_readable"
FUSE_DEVICE = "/dev/fuse"
TURN_S = 0.05

_stopping = False


def fast_loop_supported() -> bool:
    """pyfuse3 has the per-request wait this module replaces."""
    return inspect.iscoroutinefunction(getattr(pyfuse3, _HOOK, None))


def fuse_fd() -> int:
    """The FUSE device fd pyfuse3.init opened (pyfuse3 keeps it private). One mount per
    server process, so there is exactly one."""
    found = []
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{name}") == FUSE_DEVICE:
                found.append(int(name))
        except OSError:  # the listing's own fd, already closed
            continue
    if len(found) != 1:
        raise RuntimeError(f"expected one open {FUSE_DEVICE}, found {len(found)}")
    return found[0]


def stop() -> None:
    """End the session (from another task of the server): no request is read after the one
    being handled."""
    global _stopping
    _stopping = True
    pyfuse3.terminate()


async def run_session() -> None:
    """Serve requests until the mount goes away or ``stop()``. Call after ``pyfuse3.init``."""
    if not fast_loop_supported():
        await pyfuse3.main()
        return
    poller = select.poll()
    poller.register(fuse_fd(), select.POLLIN)
    turn_ms = int(TURN_S * 1000)
    last_turn = time.monotonic()

    async def wait_readable() -> bool:
        nonlocal last_turn
        while True:
            if time.monotonic() - last_turn >= TURN_S:
                await trio.lowlevel.checkpoint()  # let the signal watcher run
                last_turn = time.monotonic()
            if _stopping:
                return False
            if poller.poll(turn_ms):
                return True
            last_turn = 0.0  # idle: hand trio a turn before waiting again

    setattr(pyfuse3, _HOOK, wait_readable)  # pyfuse3 looks it up by name on every request
    await pyfuse3.main(min_tasks=1, max_tasks=1)
