"""What a killed kernel-overlay step leaves owned by subordinate ids, and ``rootbuild system
reset``: run as the unprivileged user, against the real builder.

A ``--snapshotter overlay`` step gives its files the build's ids (``RUN chown 1000`` is the
user's subordinate uid on disk). The step removes them inside its user namespace when it
ends; when every process of the build dies at once with SIGKILL (what a power loss or an
OOM kill of the whole build does) they stay, and the user cannot remove them with ``rm -rf``.
``prune`` and ``system reset`` remove them inside a user namespace
(``sandbox/userns_rm.py``); reset refuses while the store's lock is held, without
``--force`` off a terminal, and never follows a symlink out of the store.
"""

from __future__ import annotations

import contextlib
import os
import pty
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import ROOTBUILD, Harness
from test_build_run import (
    build,
    build_until_sleeping,
    busybox_context,
    error_lines,
    leftovers,
    unique_seconds,
)
from test_build_snapshotter import _foreign_owned
from test_service_worker import (  # noqa: F401 (pytest fixtures)
    Service,
    redis_server,
    service,
    wait_until,
)

pytestmark = pytest.mark.integration

BUILDX_PRUNE = "https://docs.docker.com/engine/reference/commandline/buildx_prune/"


def _killed_overlay_build(rb: Harness) -> None:
    """A kernel-overlay build whose step made a directory of uid 1000 (mode 0700, so the
    user can neither list nor empty it), killed with SIGKILL in every one of its processes
    (the step's init first: nothing tears the step down) while the step sleeps."""
    seconds = unique_seconds()
    ctx = busybox_context(rb, "killed", (
        "FROM scratch\nCOPY rootfs/ /\n"
        "RUN mkdir -p /x/y && touch /x/y/f && chown -R 1000:1000 /x && chmod 0700 /x "
        f"&& sleep {seconds}\n"
    ))
    proc = build_until_sleeping(rb, ctx, seconds, "--snapshotter", "overlay")
    try:
        running = [line for line in leftovers(rb, [f"sleep {seconds}"])
                   if not line.startswith("mount:")]
        pids = [int(line.split()[0]) for line in running]
        inits = [int(line.split()[0]) for line in running if "rootbuild.sandbox.init" in line]
        assert inits, running
        for pid in [*inits, *(p for p in pids if p not in inits)]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    deadline = time.monotonic() + 30
    while leftovers(rb, [f"sleep {seconds}"]) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert leftovers(rb, [f"sleep {seconds}"]) == []


def _assert_user_cannot_remove(rb: Harness) -> list[str]:
    foreign = _foreign_owned(rb, rb.store / "tmp")
    assert foreign, "the killed step left nothing of the build's ids: the test proves nothing"
    rm = rb.as_user(["rm", "-rf", str(rb.store / "tmp")], check=False)
    assert rm.returncode != 0 and "Permission denied" in rm.stderr, rm
    assert _foreign_owned(rb, rb.store / "tmp") == foreign
    return foreign


def _reset(rb: Harness, *args: str, check: bool = True,
           input: bytes | None = None) -> subprocess.CompletedProcess[str]:
    return rb.run("system", "reset", "--root", str(rb.store), *args, store=False,
                  check=check, input=input)


def test_prune_removes_a_killed_kernel_overlay_steps_files(rb: Harness) -> None:
    """``rootbuild prune`` removes everything in the store's scratch, including the upper
    of a killed step whose files a subordinate id owns (removed inside the user
    namespace), where plain ``rm -rf`` as the user fails. The next build works."""
    _killed_overlay_build(rb)
    _assert_user_cannot_remove(rb)
    doctor = rb.run("doctor", store=False, env={"ROOTBUILD_ROOT": str(rb.store)})
    assert re.search(rf"^warn store: {re.escape(str(rb.store))}/tmp holds [1-9]\d* entries "
                     r"of other ids .* — fix: rootbuild prune", doctor.stdout, re.M), doctor

    proc = rb.run("prune")
    assert "Traceback" not in proc.stderr and proc.stderr == "", proc.stderr
    freed = re.search(r"^reclaimed (\d+) bytes$", proc.stdout, re.M)
    assert freed and int(freed.group(1)) > 0, proc.stdout
    assert list((rb.store / "tmp").iterdir()) == []
    assert _foreign_owned(rb, rb.store) == []
    assert leftovers(rb, []) == []
    doctor = rb.run("doctor", store=False, env={"ROOTBUILD_ROOT": str(rb.store)})
    assert f"ok   store: {rb.store}: nothing of other ids left" in doctor.stdout, doctor

    ctx = busybox_context(rb, "after", "FROM scratch\nCOPY rootfs/ /\nRUN touch /ok\n")
    build(rb, ctx, "--snapshotter", "overlay")
    assert list((rb.store / "tmp").iterdir()) == []


def test_reset_removes_the_whole_store_and_nothing_outside_it(rb: Harness) -> None:
    """``system reset --force`` removes the store directory, subordinate ids' leftovers
    included, without following symlinks planted in it (one in the user's scratch, one in
    a directory a subordinate id owns, so the namespace's walk meets it too). Docker's
    prune reference: "Clears the build cache of the selected builder." and ``--force``:
    "Do not prompt for confirmation" (BUILDX_PRUNE)."""
    _killed_overlay_build(rb)
    foreign_dir = next(Path(line.split(" uid ")[0])
                       for line in _assert_user_cannot_remove(rb)
                       if os.path.isdir(line.split(" uid ")[0]))
    outside = rb.workdir / "outside"
    rb.make_context("outside", {"keep": "canary", "sub/deep": "canary"})
    for link, target, owner in (
        (rb.store / "tmp" / "evil", outside, rb.store),
        (rb.store / "layers" / "evil-file", outside / "keep", rb.store),
        (foreign_dir / "out", outside, foreign_dir),
    ):
        link.symlink_to(target)
        st = os.lstat(owner)
        os.lchown(link, st.st_uid, st.st_gid)

    proc = _reset(rb, "--force")
    assert proc.stderr == "", proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == f"removed store {rb.store}", proc.stdout
    assert re.fullmatch(r"reclaimed [1-9]\d* bytes", lines[1]), proc.stdout
    assert not os.path.lexists(rb.store)
    assert (outside / "keep").read_text() == "canary"
    assert (outside / "sub" / "deep").read_text() == "canary"
    assert leftovers(rb, []) == []

    again = _reset(rb, "--force")
    assert again.stdout == f"no store at {rb.store}; nothing to remove\n"


def test_reset_refuses_while_a_build_holds_the_store(rb: Harness) -> None:
    """A running build holds the store's lock shared: reset says so in one line, exits
    non-zero and removes nothing."""
    seconds = unique_seconds()
    ctx = busybox_context(rb, "running", f"FROM scratch\nCOPY rootfs/ /\nRUN sleep {seconds}\n")
    proc = build_until_sleeping(rb, ctx, seconds)
    try:
        before = set(rb.store_snapshot())
        refused = _reset(rb, "--force", check=False)
        assert refused.returncode == 1 and "Traceback" not in refused.stderr
        assert error_lines(refused.stderr) == [
            f"rootbuild: system reset: store {rb.store} is in use by a running build or "
            "worker; nothing removed (stop it, or wait, and try again)"
        ], refused.stderr
        assert refused.stdout == ""
        assert before <= set(rb.store_snapshot())
        assert any(line for line in leftovers(rb, [f"sleep {seconds}"]) if "sleep" in line)
    finally:
        proc.kill()  # the builder alone: its step tears itself down (test_build_run.py)
        proc.wait()
    deadline = time.monotonic() + 30
    while leftovers(rb, [f"sleep {seconds}"]) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert leftovers(rb, [f"sleep {seconds}"]) == []
    assert rb.store.is_dir()


def test_reset_without_force_off_a_terminal_refuses(rb: Harness) -> None:
    """Without ``--force`` reset asks on a terminal; with stdin a pipe (even one that says
    "y") it refuses in one line and removes nothing (``--force``: "Do not prompt for
    confirmation", BUILDX_PRUNE)."""
    ctx = busybox_context(rb, "small", "FROM scratch\nCOPY rootfs/ /\n")
    build(rb, ctx)
    before = rb.store_snapshot()
    proc = _reset(rb, check=False, input=b"y\n")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert error_lines(proc.stderr) == [
        f"rootbuild: system reset: refusing to delete {rb.store} without confirmation: "
        "stdin is not a terminal (add --force)"
    ], proc.stderr
    assert rb.store_snapshot() == before


def test_reset_refuses_a_directory_that_is_not_a_store(rb: Harness) -> None:
    """``--root`` pointing at anything but a store (a context, a home directory) is
    refused before anything is removed."""
    ctx = rb.make_context("notastore", {"Dockerfile": "FROM scratch\n", "a/b": "x"})
    proc = rb.run("system", "reset", "--root", str(ctx), "--force", store=False, check=False)
    assert proc.returncode == 1
    assert error_lines(proc.stderr) == [
        f"rootbuild: system reset: {ctx} does not look like a rootbuild store (no gc.lock, "
        "blobs/ or tenants/); nothing removed"
    ], proc.stderr
    assert (ctx / "a" / "b").read_text() == "x"


def test_a_worker_sweeps_a_killed_steps_files_and_reset_waits_for_the_worker(
        rb: Harness, service: Service) -> None:  # noqa: F811 (the fixture)
    """A tenant store of a worker's store with a killed kernel-overlay step's files: a
    worker starting there sweeps them (inside the user namespace) with the scratch of dead
    builds; while the worker runs, even idle, reset of the worker's store refuses (the
    worker holds the store's lock); once it stopped, reset removes it all."""
    rb.store = service.store / "tenants" / "acme" / "store"
    _killed_overlay_build(rb)
    _assert_user_cannot_remove(rb)
    scratch = list((rb.store / "tmp").iterdir())  # what rm -rf could not remove

    service.start_worker("w1")
    wait_until("w1 to start", lambda: "claiming jobs" in service.worker_log("w1"), timeout=30)
    log = service.worker_log("w1")
    assert f"removed 0 job directories and {len(scratch)} build scratch entr" in log, log
    assert "Traceback" not in log
    assert list((rb.store / "tmp").iterdir()) == []
    assert _foreign_owned(rb, service.store) == []

    busy = rb.run("system", "reset", "--root", str(service.store), "--force", store=False,
                  check=False)
    assert busy.returncode == 1
    assert error_lines(busy.stderr) == [
        f"rootbuild: system reset: store {service.store} is in use by a running build or "
        "worker; nothing removed (stop it, or wait, and try again)"
    ], busy.stderr
    assert (rb.store / "gc.lock").exists()

    service.stop_all()
    done = rb.run("system", "reset", "--root", str(service.store), "--force", store=False)
    assert done.stdout.startswith(f"removed store {service.store}\n"), done.stdout
    assert not os.path.lexists(service.store)


def _reset_on_a_terminal(rb: Harness, answer: bytes) -> subprocess.CompletedProcess[str]:
    """``system reset`` without ``--force``, stdin a terminal (a pty) answering ``answer``."""
    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen(
            rb.command([str(ROOTBUILD), "system", "reset", "--root", str(rb.store)]),
            stdin=slave, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            cwd=rb.workdir)
        os.close(slave)
        slave = -1
        os.write(master, answer)
        out, err = proc.communicate(timeout=60)
    finally:
        if slave != -1:
            os.close(slave)
        os.close(master)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def test_reset_on_a_terminal_asks_first(rb: Harness) -> None:
    """On a terminal reset asks, as Docker's prune commands do unless ``--force`` ("Do not
    prompt for confirmation", BUILDX_PRUNE): anything but yes removes nothing; yes removes
    the store."""
    ctx = busybox_context(rb, "asked", "FROM scratch\nCOPY rootfs/ /\n")
    build(rb, ctx)
    before = rb.store_snapshot()
    no = _reset_on_a_terminal(rb, b"n\n")
    assert no.returncode == 2, no
    assert "Are you sure you want to continue? [y/N]" in no.stderr
    assert error_lines(no.stderr) == [
        f"rootbuild: system reset: cancelled; nothing removed from {rb.store}"], no.stderr
    assert rb.store_snapshot() == before

    yes = _reset_on_a_terminal(rb, b"y\n")
    assert yes.returncode == 0, yes
    assert yes.stdout.startswith(f"removed store {rb.store}\n")
    assert not os.path.lexists(rb.store)


def test_the_next_build_sweeps_a_killed_steps_files(rb: Harness) -> None:
    """A build starting where nothing holds the store removes what killed builds left in
    its scratch, subordinate ids' files included (inside the user namespace), and says
    nothing about it."""
    _killed_overlay_build(rb)
    _assert_user_cannot_remove(rb)
    ctx = busybox_context(rb, "next", "FROM scratch\nCOPY rootfs/ /\nRUN touch /ok\n")
    proc = build(rb, ctx, "--snapshotter", "overlay")
    assert "warning" not in proc.stderr, proc.stderr
    assert list((rb.store / "tmp").iterdir()) == []
    assert _foreign_owned(rb, rb.store) == []


def test_a_build_starting_beside_a_running_one_leaves_its_scratch_alone(rb: Harness) -> None:
    """The sweep needs the store to itself: with a build running (the store's lock held
    shared), a second build sweeps nothing, and the first one's step goes on."""
    seconds = unique_seconds()
    ctx = busybox_context(rb, "first", f"FROM scratch\nCOPY rootfs/ /\nRUN sleep {seconds}\n")
    proc = build_until_sleeping(rb, ctx, seconds, "--snapshotter", "overlay")
    try:
        scratch = sorted(p.name for p in (rb.store / "tmp").iterdir())
        assert scratch, "the running build has no scratch: the test proves nothing"
        other = busybox_context(rb, "second", "FROM scratch\nCOPY rootfs/ /\nRUN true\n")
        build(rb, other, "--snapshotter", "overlay")
        assert set(scratch) <= {p.name for p in (rb.store / "tmp").iterdir()}
        assert proc.poll() is None
        assert any("sleep" in line for line in leftovers(rb, [f"sleep {seconds}"]))
    finally:
        proc.kill()  # the builder alone: its step tears itself down
        proc.wait()
    deadline = time.monotonic() + 30
    while leftovers(rb, [f"sleep {seconds}"]) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert leftovers(rb, [f"sleep {seconds}"]) == []
