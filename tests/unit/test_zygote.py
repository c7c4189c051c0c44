"""The build's zygote (sandbox/zygote.py) with a real zygote process: it forks inits that
run ``init.main`` with the fds they were given, answers each request with the right pid
(also after a cancelled request), and exits when the builder closes it. Each child's own
command line is checked by tests/integration/test_build_run.py while its step runs.
The inits here fail at once (their spec does not exist), which is
all these tests need; the integration suite runs every RUN step through it."""

from __future__ import annotations

import json
import os
import signal
import socket
from pathlib import Path

import pytest
import trio

from rootbuild.sandbox.zygote import EarlyZygote, Zygote, expand_argv, fd_arg

ENV = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"}


def test_expand_argv_replaces_placeholders() -> None:
    assert expand_argv(["spec", fd_arg(0), "x", fd_arg(1)], [7, 9]) == ["spec", "7", "x", "9"]
    try:
        expand_argv([fd_arg(2)], [7])
    except ValueError as exc:
        assert "no passed fd 2" in str(exc)
    else:
        raise AssertionError("an fd placeholder past the passed fds was accepted")


async def _spawn_failing_init(zygote: Zygote, tmp: Path, name: str) -> tuple[int, dict]:
    """Spawn an init whose spec is missing; return its pid and the event it reported."""
    out_r, out_w = os.pipe()
    ctl_r, ctl_w = os.pipe()
    st_r, st_w = os.pipe()
    with open(tmp / f"{name}.log", "wb") as log:
        proc = await zygote.spawn(
            [str(tmp / f"{name}-missing.json"), fd_arg(0), fd_arg(1), fd_arg(2)],
            log.fileno(), (out_w, ctl_r, st_w), tmp)
    for fd in (out_w, ctl_r, st_w):
        os.close(fd)
    await proc.wait()
    assert not proc.alive()
    with os.fdopen(st_r, "rb") as status:
        event = json.loads(status.readline())
    for fd in (out_r, ctl_w):
        os.close(fd)
    proc.close()
    return proc.pid, event


async def test_spawned_inits_report_through_their_own_fds(tmp_path: Path) -> None:
    zygote = Zygote(ENV, label=str(tmp_path))
    try:
        pids = set()
        for name in ("one", "two"):
            pid, event = await _spawn_failing_init(zygote, tmp_path, name)
            assert event["event"] == "error" and f"{name}-missing.json" in event["message"]
            pids.add(pid)
        assert len(pids) == 2
    finally:
        await zygote.aclose()
    assert zygote._proc is None


async def test_a_cancelled_request_leaves_no_answer_for_the_next(tmp_path: Path) -> None:
    """A spawn cancelled after its request went out still takes its answer: left unread,
    it would be taken for the next step's (and the next step would watch a wrong pid)."""
    zygote = Zygote(ENV)
    try:
        await _spawn_failing_init(zygote, tmp_path, "warm")  # the zygote runs
        assert zygote._proc is not None and zygote._sock is not None
        pid = zygote._proc.pid
        os.kill(pid, signal.SIGSTOP)  # the request is queued, the answer waits

        async def wake() -> None:
            await trio.sleep(0.6)
            os.kill(pid, signal.SIGCONT)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(wake)
            with trio.move_on_after(0.3):  # cancelled while waiting for the answer
                await _spawn_failing_init(zygote, tmp_path, "cancelled")
        await trio.sleep(0.3)
        peek = socket.socket(fileno=os.dup(zygote._sock.fileno()))
        try:
            with pytest.raises(BlockingIOError):  # no answer left behind
                peek.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        finally:
            peek.close()
        _, event = await _spawn_failing_init(zygote, tmp_path, "after")
        assert "after-missing.json" in event["message"], event
    finally:
        await zygote.aclose()


async def test_a_dead_zygote_is_replaced(tmp_path: Path) -> None:
    zygote = Zygote(ENV)
    try:
        await _spawn_failing_init(zygote, tmp_path, "first")
        assert zygote._proc is not None
        zygote._proc.kill()
        await zygote._proc.wait()
        _, event = await _spawn_failing_init(zygote, tmp_path, "second")
        assert "second-missing.json" in event["message"]
    finally:
        await zygote.aclose()


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


async def test_an_early_zygote_is_adopted_and_closed_by_the_build(tmp_path: Path) -> None:
    """Launched without trio (the CLI, before it imports the engine), then used by the
    build's Zygote as its own: same process, and gone after ``aclose``."""
    early = EarlyZygote.launch(ENV, label=str(tmp_path))
    pid = early.popen.pid
    zygote = Zygote(ENV, early=early)
    try:
        _, event = await _spawn_failing_init(zygote, tmp_path, "adopted")
        assert "adopted-missing.json" in event["message"]
        assert early.released() and zygote._proc is not None
        assert zygote._proc.popen.pid == pid  # no second zygote was started
    finally:
        await zygote.aclose()
    early.close()  # the CLI's own close: nothing left to do
    assert _gone(pid)


async def test_an_early_zygote_never_used_is_killed() -> None:
    early = EarlyZygote.launch(ENV)
    pid = early.popen.pid
    zygote = Zygote(ENV, early=early)  # a build whose RUN steps all came from the cache
    await zygote.aclose()
    assert _gone(pid) and early.released()  # closed: nothing left to close
    other = EarlyZygote.launch(ENV)  # a build that failed before it made its executor
    other.close()
    other.close()
    assert _gone(other.popen.pid)
