"""Ending a helper child of the sandbox init (slirp4netns, the DNS forwarder).

Job: ``stop_child(pid, grace)``: SIGTERM, reap, SIGKILL after ``grace`` seconds, reap.
Rule: only for a child of the calling process (it is reaped here, so its pid cannot be
reused before the kill reaches it).
"""

from __future__ import annotations

import contextlib
import os
import signal
import time


def stop_child(pid: int, grace: float) -> None:
    """End child ``pid``: SIGTERM, then SIGKILL if it has not exited after ``grace``
    seconds; it is reaped on return."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done:
            return
        time.sleep(0.01)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
