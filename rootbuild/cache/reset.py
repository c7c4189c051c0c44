"""``rootbuild system reset``: delete everything rootbuild keeps in a store.

Job: ``reset(root, confirm)`` removes the whole store directory (images, blobs, layer trees,
the step cache, cache mounts, what ADD remembers of URLs, scratch, a worker's tenants and
job directories) and returns the bytes freed: ``docker buildx prune --all`` and ``docker
system reset`` at once. ``plan_reset`` (pure) decides whether the directory is a store and
what goes in which order.

Rules:
- Only a store is reset: the directory must hold a store's lock file (``gc.lock``), or a
  store's ``blobs``/``layers``/``tmp``, or a worker's ``tenants`` and
  ``anonymous-auth.json``; anything else (``--root ~`` by mistake) is refused, nothing
  removed. A ``--root`` that is a symlink is refused too: the store directory itself is
  named, never found through a link.
- The store's own lock decides (``image/store.py``): builds, imports, exports and workers
  hold ``gc.lock`` shared; reset takes it exclusively WITHOUT waiting, and the ``gc.lock``
  of every tenant store of a worker's store too; a holder means one line and nothing
  removed. The locks are held while everything else goes; the lock files go last, so a
  build that starts meanwhile waits on them instead of writing into a half-removed store.
- Removal is ``sandbox/userns_rm.py``'s: directory-fd relative, no symlink followed, no
  other filesystem entered, what subordinate ids own (a killed kernel-overlay step's
  files) removed inside the user namespace. Nothing outside the store directory is touched.
- ``confirm`` is asked after the locks are held and before anything is removed; it may
  refuse (the CLI asks on a terminal, and refuses without one unless ``--force``).
"""

from __future__ import annotations

import errno
import fcntl
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from rootbuild.errors import StoreError
from rootbuild.sandbox.userns_rm import Tally, remove_entries

LOCK = "gc.lock"
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(frozen=True)
class ResetPlan:
    """What goes: ``entries`` (names in the store directory) first, then ``last`` (its
    lock files, held until then), then the directory itself."""

    entries: tuple[str, ...]
    last: tuple[str, ...]


def plan_reset(root: Path, names: Iterable[str]) -> ResetPlan:
    """The plan for the store at ``root`` holding ``names``, or a StoreError saying why
    ``root`` is not a store (module rules)."""
    found = set(names)
    if not (LOCK in found or {"blobs", "layers", "tmp"} <= found
            or {"tenants", "anonymous-auth.json"} <= found):
        raise StoreError(not_a_store(root))
    last = tuple(n for n in (LOCK,) if n in found)
    return ResetPlan(tuple(sorted(found - set(last))), last)


def not_a_store(root: Path) -> str:
    return (f"system reset: {root} does not look like a rootbuild store (no gc.lock, "
            "blobs/ or tenants/); nothing removed")


def in_use(root: Path) -> str:
    return (f"system reset: store {root} is in use by a running build or worker; nothing "
            "removed (stop it, or wait, and try again)")


def summary(root: Path) -> str:
    """What the confirmation question says."""
    return (f"This deletes everything rootbuild keeps in {root}: images, layers, the step "
            "cache, cache mounts and scratch.")


def _lock(dfd: int, name: str, root: Path) -> int:
    """An fd holding ``name`` (in ``dfd``) locked exclusively, or StoreError (in use)."""
    fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                 dir_fd=dfd)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StoreError(in_use(root)) from None
    return fd


def _tenant_locks(root_fd: int, root: Path) -> list[int]:
    """The gc.lock of each tenant store below a worker's store, locked (module rules)."""
    held: list[int] = []
    try:
        tenants = os.open("tenants", _DIR, dir_fd=root_fd)
    except (FileNotFoundError, NotADirectoryError, OSError):
        return held  # not a worker's store (or nothing a build could hold there)
    try:
        for tenant in sorted(os.listdir(tenants)):
            try:
                store = os.open(tenant, _DIR, dir_fd=tenants)
            except OSError:
                continue
            try:
                sub = os.open("store", _DIR, dir_fd=store)
            except OSError:
                os.close(store)
                continue
            try:
                if _exists(sub, LOCK):
                    held.append(_lock(sub, LOCK, root))
            except BaseException:
                for fd in held:
                    os.close(fd)
                raise
            finally:
                os.close(sub)
                os.close(store)
    finally:
        os.close(tenants)
    return held


def _exists(dfd: int, name: str) -> bool:
    try:
        os.stat(name, dir_fd=dfd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


NO_STORE = -1


def reset(root: Path, confirm: Callable[[str], bool]) -> int | None:
    """Remove the store at ``root`` (module rules); the bytes freed, None when ``confirm``
    said no, ``NO_STORE`` when there is no store there."""
    root = root.absolute()
    if not root.name:
        raise StoreError(not_a_store(root))
    try:
        parent = os.open(root.parent, _DIR)
    except FileNotFoundError:
        return NO_STORE
    except OSError as exc:
        raise StoreError(f"system reset: open {root.parent}: {exc.strerror}") from exc
    try:
        try:
            root_fd = os.open(root.name, _DIR, dir_fd=parent)
        except FileNotFoundError:
            return NO_STORE
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise StoreError(f"system reset: {root} is not a directory (a symlink?); "
                                 "name the store directory itself; nothing removed") from exc
            raise StoreError(f"system reset: open {root}: {exc.strerror}") from exc
        try:
            return _reset_open(root, parent, root_fd, confirm)
        finally:
            os.close(root_fd)
    finally:
        os.close(parent)


def _reset_open(root: Path, parent: int, root_fd: int,
                confirm: Callable[[str], bool]) -> int | None:
    plan = plan_reset(root, os.listdir(root_fd))
    held = [_lock(root_fd, LOCK, root)]  # created if an old store lacks it: goes last
    try:
        held += _tenant_locks(root_fd, root)
        if not confirm(summary(root)):
            return None
        tally = remove_entries(root_fd, plan.entries, str(root))
        _refuse_mounts(root, tally)
        if set(os.listdir(root_fd)) - {LOCK}:  # Store.open of a build now waiting on the lock
            raise StoreError(f"system reset: a build started while {root} was being removed "
                             "(it waits for the store); its contents are gone, the directory "
                             "stays")
        for name in (*plan.last, LOCK):
            try:
                tally.freed += os.stat(name, dir_fd=root_fd, follow_symlinks=False).st_size
                os.unlink(name, dir_fd=root_fd)
            except FileNotFoundError:
                pass
        try:
            tally.freed += os.fstat(root_fd).st_size
            os.rmdir(root.name, dir_fd=parent)
        except OSError as exc:
            raise StoreError(f"system reset: remove {root}: {exc.strerror}") from exc
        return tally.freed
    finally:
        for fd in held:
            os.close(fd)


def _refuse_mounts(root: Path, tally: Tally) -> None:
    if tally.other_fs:
        raise StoreError(mounted_inside(root, tally.other_fs))


def mounted_inside(root: Path, where: Sequence[str]) -> str:
    return (f"system reset: {root}: another filesystem is mounted at "
            f"{root / where[0]}; unmount it and run reset again (the rest was removed)")
