"""The overlay server's request loop (fuse_overlay/session.py) relies on one private name of
pyfuse3: the per-request ``_wait_fuse_readable`` coroutine function that its session loop
looks up on every request. If an upgrade of pyfuse3 renames or reshapes it, the server falls
back to pyfuse3's slower stock loop; this test makes that a CI failure, not a silent slowdown.
(The loop itself is exercised by every overlay and RUN integration test.)"""

from __future__ import annotations

import inspect

import pyfuse3

from rootbuild.fuse_overlay import session


def test_pyfuse3_has_the_per_request_wait_the_fast_loop_replaces() -> None:
    assert session.fast_loop_supported()
    hook = pyfuse3._wait_fuse_readable  # type: ignore[attr-defined]
    assert inspect.signature(hook).parameters == {}  # called with no arguments
    # main() takes the worker task bounds the fast loop sets to one
    assert {"min_tasks", "max_tasks"} <= set(inspect.signature(pyfuse3.main).parameters)
