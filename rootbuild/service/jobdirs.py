"""A worker's job directories, held by a lock so a restarted worker can sweep what a dead
one left behind without touching a live worker's.

Job: ``claim`` (a fresh ``STORE/tenants/T/jobs/ID.ATTEMPT`` directory, held by
``flock(LOCK_EX)`` on the ``ID.ATTEMPT.lock`` file beside it while its job runs),
``release`` and ``sweep``: at worker start, remove every job directory whose lock no live
process holds (a worker killed with ``kill -9`` leaves its job's context and Dockerfile
behind), and the scratch in ``tmp/`` of every tenant store no build holds (the store's own
``gc.lock`` protocol: builds hold it shared, so an exclusive try-lock that succeeds means no
build runs in that store). What a killed kernel-overlay step left owned by subordinate ids
is removed inside the user namespace (``sandbox/userns_rm.py``).

Rules:
- The lock file is made and locked before the directory, and removed after it, so a job
  directory that exists always has its lock file unless its owner is gone. A lock is only
  trusted after checking that the locked file is still the one at its path (a sweeper may
  have unlinked it between ``open`` and ``flock``); otherwise the claim tries again.
- Several workers may share one store: each sweeps only what no live process holds. A
  flock dies with its process, however it dies.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from rootbuild.image.store import force_rmtree
from rootbuild.sandbox.userns_rm import remove_tree

LOCK_SUFFIX = ".lock"


def _lock_path(work: Path) -> Path:
    return work.with_name(work.name + LOCK_SUFFIX)


def _try_lock(path: Path, wait: bool) -> int | None:
    """An fd holding ``flock(LOCK_EX)`` on the file now at ``path``, or None when another
    process holds it (``wait`` False) or the file is gone."""
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            return None
        try:
            same = os.stat(path, follow_symlinks=False).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)  # unlinked (or replaced) under us: lock the file that is there now
        if not wait:
            return None


def claim(work: Path) -> int:
    """Make ``work`` afresh (its parents too) and hold it; returns the lock's fd for
    ``release``. Blocking; the worker runs it in a thread."""
    work.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = _try_lock(_lock_path(work), wait=True)
    assert fd is not None  # waiting, and O_CREAT: always a lock
    try:
        force_rmtree(work)  # a leftover of the same attempt: never a live one (we hold it)
        work.mkdir(mode=0o700)
    except BaseException:
        release(work, fd)
        raise
    return fd


def release(work: Path, fd: int) -> None:
    """Remove ``work`` and its lock file, then let go of the lock."""
    try:
        force_rmtree(work)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(_lock_path(work))
    finally:
        os.close(fd)


def sweep_jobs(jobs: Path) -> list[Path]:
    """Remove the job directories (and lock files) in ``jobs`` that no live process holds;
    the directories removed."""
    removed: list[Path] = []
    try:
        names = sorted(os.listdir(jobs))
    except (FileNotFoundError, NotADirectoryError):
        return removed  # no jobs yet (or not a directory: the job's claim will say so)
    for name in names:
        if name.endswith(LOCK_SUFFIX):
            continue
        work = jobs / name
        lock = _lock_path(work)
        fd = _try_lock(lock, wait=False) if lock.exists() else None
        if fd is None and lock.exists():
            continue  # a live worker holds it
        try:
            remove_tree(work)
            removed.append(work)
            if fd is not None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(lock)
        finally:
            if fd is not None:
                os.close(fd)
    for name in names:  # lock files whose directory is gone (a death between the two)
        if name.endswith(LOCK_SUFFIX) and not (jobs / name[: -len(LOCK_SUFFIX)]).exists():
            fd = _try_lock(jobs / name, wait=False)
            if fd is not None:
                try:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(jobs / name)
                finally:
                    os.close(fd)
    return removed


def sweep_store_tmp(store: Path) -> list[Path]:
    """Empty ``store/tmp`` (a tenant store's scratch) when no build holds the store; the
    entries removed."""
    tmp = store / "tmp"
    if not tmp.is_dir():
        return []
    try:
        fd = os.open(store / "gc.lock", os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        return []
    removed: list[Path] = []
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return removed  # a build runs there
        for entry in sorted(tmp.iterdir()):
            remove_tree(entry)  # a killed kernel-overlay step's files: in the user namespace
            removed.append(entry)
    finally:
        os.close(fd)
    return removed


def hold_store(store: Path) -> int:
    """An fd holding the worker's ``store/gc.lock`` shared for the worker's life (released
    when it exits, however it dies): ``rootbuild system reset`` (``cache/reset.py``) takes
    it exclusively, so it refuses while a worker runs on that store, even an idle one."""
    fd = os.open(store / "gc.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    fcntl.flock(fd, fcntl.LOCK_SH)
    return fd


def sweep(store: Path) -> tuple[list[Path], list[Path]]:
    """Every tenant's leftover job directories and store scratch under a worker's
    ``store``: what a dead worker left; the job directories and scratch entries removed."""
    jobs: list[Path] = []
    scratch: list[Path] = []
    tenants = store / "tenants"
    try:
        names = sorted(os.listdir(tenants))
    except FileNotFoundError:
        return jobs, scratch
    for tenant in names:
        jobs += sweep_jobs(tenants / tenant / "jobs")
        scratch += sweep_store_tmp(tenants / tenant / "store")
    return jobs, scratch


def said(jobs: list[Path], scratch: list[Path]) -> str:
    """The worker's line about a sweep ("" when nothing was left)."""
    if not jobs and not scratch:
        return ""
    return (f"removed {len(jobs)} job director{'y' if len(jobs) == 1 else 'ies'} and "
            f"{len(scratch)} build scratch entr{'y' if len(scratch) == 1 else 'ies'} left "
            "by workers gone")
