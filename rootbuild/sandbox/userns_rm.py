"""Remove a tree of the store, entering the user namespace for what subordinate ids own.

Job: ``remove_entries(dir_fd, names)`` / ``remove_tree(path)``: remove store entries (a
dead build's scratch, a layer tree, a whole store for ``rootbuild system reset``) and say
how many bytes that freed. A RUN step on the kernel overlay (``snapshot/kernel.py``)
creates files owned by the build's ids: ``RUN chown 1000 /x`` leaves, on disk, a file of
the user's subordinate uid (the range's first id + 999). The step removes them inside its
user namespace when it ends; when every process of the build dies at once (``kill -9``,
power loss) they stay, and ``rm -rf`` cannot remove them as the user (EACCES: the user
has no write permission on a directory a subordinate id owns, nor may chmod it). What the
user cannot remove is then removed by a child process in a fresh user namespace that maps
the user to 0 and EVERY subordinate range the user has (``full_plan``: more than a
build's 65536 ids, so the blocks of ``--slot`` builds are covered too), mapped by the
same newuidmap/newgidmap helpers the builder uses (``idmap.apply_helpers``); as root of
that namespace it holds CAP_DAC_OVERRIDE over every inode whose owner and group are
mapped.

Rules (SECURITY.md rule 1):
- Every removal is relative to a directory file descriptor, ``O_NOFOLLOW``: a symlink is
  unlinked, never followed; a directory is opened no-follow and checked to be the one
  ``lstat`` saw (same device and inode) before its entries are removed. The child gets the
  parent directories as inherited fds, never path strings.
- No other filesystem is entered (``rm --one-file-system``): a directory on another
  device is left and reported, so a mount inside the store never leads outside it.
- The user's own entries are removed in-process first (read-only directories made
  writable, as ``force_rmtree`` does); only what that refuses with EACCES/EPERM goes to the
  namespace. Without a subordinate range there is nothing to map: one line says so and how
  to add a range (``usermod --add-subuids``, as doctor and kernel.py say).
- ``full_plan`` and ``no_range_message`` are pure; the walker (``remove_at``), the child
  and ``read_full_plan`` do the I/O.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import stat
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rootbuild.errors import StoreError
from rootbuild.sandbox.idmap import (
    IdMapPlan,
    IdRange,
    apply_helpers,
    invoking_user,
    parse_subid,
    read_id_file,
)

_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
CLONE_NEWUSER = 0x10000000
PR_SET_PDEATHSIG = 1
CHILD_TIMEOUT = 3600.0  # a store of millions of files takes minutes, never hours


# -- the plan (pure) --------------------------------------------------------------------------


def full_plan(*, uid: int, gid: int, name: str, subuid: str, subgid: str) -> IdMapPlan | None:
    """0 -> the user, then every range of the user in ``subuid``/``subgid`` (file order),
    back to back: each id any build of this user can have given a file. None without a
    range in either file."""
    def ranges(own: int, text: str) -> tuple[IdRange, ...] | None:
        out = [IdRange(0, own, 1)]
        inside = 1
        for start, count in parse_subid(text, name, uid):
            if start <= own < start + count:
                continue  # newuidmap refuses overlapping ranges; the user is mapped at 0
            out.append(IdRange(inside, start, count))
            inside += count
        return tuple(out) if len(out) > 1 else None

    uids, gids = ranges(uid, subuid), ranges(gid, subgid)
    if uids is None or gids is None:
        return None
    return IdMapPlan("subid", uids, gids)


def no_range_message(what: str, name: str, helpers: bool) -> str:
    """The one line for entries the user cannot remove and no namespace can."""
    if not helpers:
        return (f"remove {what}: entries owned by other ids (a killed kernel-overlay step's "
                "files) need newuidmap/newgidmap to be removed (Debian/Ubuntu: apt-get "
                "install uidmap)")
    return (f"remove {what}: entries owned by ids outside your own (a killed kernel-overlay "
            f"step's files) and no subordinate id range to remove them with; fix: as root, "
            f"usermod --add-subuids 100000-165535 --add-subgids 100000-165535 {name}")


def read_full_plan(what: str) -> tuple[IdMapPlan | None, str]:
    """``full_plan`` for the invoking user, or None and the line saying why (about
    removing ``what``)."""
    uid, gid, name, helpers = invoking_user()
    plan = full_plan(uid=uid, gid=gid, name=name, subuid=read_id_file("/etc/subuid"),
                     subgid=read_id_file("/etc/subgid")) if helpers else None
    return plan, ("" if plan is not None else no_range_message(what, name, helpers))


# -- the walker (used in-process and in the namespace) ------------------------------------------


@dataclass
class Tally:
    """What a removal did: bytes freed (apparent sizes, as ``tree_size`` counts) and the
    directories left because another filesystem is mounted there."""

    freed: int = 0
    other_fs: list[str] = field(default_factory=list)


def _make_writable(dfd: int, st: os.stat_result) -> None:
    """Give the user write and search on its own read-only directory (extracted layers
    keep 0555; overlayfs's work/work is 0000). Not ours: nothing to do (EPERM would say
    the same thing later, on the entry itself)."""
    if st.st_uid == os.geteuid() and st.st_mode & 0o700 != 0o700:
        os.fchmod(dfd, stat.S_IMODE(st.st_mode) | 0o700)


def _open_dir(dfd: int, name: str, st: os.stat_result) -> int:
    """``name`` in ``dfd`` opened no-follow, checked to be the directory ``st`` describes."""
    try:
        fd = os.open(name, _DIR, dir_fd=dfd)
    except PermissionError:  # our own directory of mode 0: make it searchable first
        if st.st_uid != os.geteuid():
            raise
        path_fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
        try:
            again = os.fstat(path_fd)
            if not stat.S_ISDIR(again.st_mode) or again.st_ino != st.st_ino:
                raise FileNotFoundError(errno.ENOENT, "replaced while removed", name)
            os.chmod(f"/proc/self/fd/{path_fd}", stat.S_IMODE(st.st_mode) | 0o700)
        finally:
            os.close(path_fd)
        fd = os.open(name, _DIR, dir_fd=dfd)
    got = os.fstat(fd)
    if (got.st_dev, got.st_ino) != (st.st_dev, st.st_ino):
        os.close(fd)
        raise FileNotFoundError(errno.ENOENT, "replaced while removed", name)
    return fd


def remove_at(dfd: int, name: str, tally: Tally) -> None:
    """Remove ``name`` in directory ``dfd`` and everything below it (never following a
    symlink, never entering another filesystem). Depth-first, holding one directory fd
    whatever the depth (a step can make a tree deeper than the fd limit): going up is
    ``..`` of the current directory, checked to be the directory that was come down from.
    An entry already gone is fine. Raises PermissionError on the first entry it may not
    remove (what is removed by then stays removed, and counted)."""
    try:
        top = os.stat(name, dir_fd=dfd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(top.st_mode):
        os.unlink(name, dir_fd=dfd)
        tally.freed += top.st_size
        return
    if top.st_dev != os.fstat(dfd).st_dev:
        tally.other_fs.append(name)
        return
    # the directories come down through: (stat, entries not yet removed, name in parent)
    stack: list[tuple[os.stat_result, list[str], str]] = []
    cur = _open_dir(dfd, name, top)
    try:
        _make_writable(cur, top)
        stack.append((top, sorted(os.listdir(cur), reverse=True), name))
        while stack:
            cur_st, names, cur_name = stack[-1]
            if not names:  # emptied: go up, remove it from its parent
                stack.pop()
                if stack:
                    up = os.open("..", _DIR, dir_fd=cur)
                    got = os.fstat(up)
                    if (got.st_dev, got.st_ino) != (stack[-1][0].st_dev, stack[-1][0].st_ino):
                        os.close(up)
                        raise OSError(errno.ESTALE, "moved while being removed", cur_name)
                else:
                    up = dfd
                os.close(cur)
                cur = up
                try:
                    os.rmdir(cur_name, dir_fd=cur)
                    tally.freed += cur_st.st_size
                except FileNotFoundError:
                    pass
                except OSError as exc:  # a mount below it was left (and is reported)
                    if exc.errno not in (errno.ENOTEMPTY, errno.EBUSY) or not tally.other_fs:
                        raise
                continue
            child = names.pop()
            try:
                st = os.stat(child, dir_fd=cur, follow_symlinks=False)
            except FileNotFoundError:
                continue
            if not stat.S_ISDIR(st.st_mode):
                try:
                    os.unlink(child, dir_fd=cur)
                    tally.freed += st.st_size
                except FileNotFoundError:
                    pass
                continue
            if st.st_dev != cur_st.st_dev:
                tally.other_fs.append("/".join([e[2] for e in stack] + [child]))
                continue
            sub = _open_dir(cur, child, st)
            os.close(cur)
            cur = sub
            _make_writable(cur, st)
            stack.append((st, sorted(os.listdir(cur), reverse=True), child))
    finally:
        if cur != dfd:
            os.close(cur)


# -- removing in the user namespace -------------------------------------------------------------


def _child(pairs: Sequence[tuple[int, str]]) -> int:
    """The namespace side (``python -I -m rootbuild.sandbox.userns_rm FD NAME ...``): unshare
    a user namespace, say so, wait for the parent to map it, remove, print the tally."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, 9, 0, 0, 0)  # never outlive the command that asked
    if libc.unshare(CLONE_NEWUSER) != 0:
        err = ctypes.get_errno()
        print(json.dumps({"error": f"unshare a user namespace: {os.strerror(err)}"}))
        return 1
    sys.stdout.write("unshared\n")
    sys.stdout.flush()
    if sys.stdin.readline().strip() != "mapped":
        return 1
    tally = Tally()
    error = ""
    for dfd, name in pairs:
        try:
            remove_at(dfd, name, tally)
        except OSError as exc:
            error = f"{exc.filename or name}: {exc.strerror or exc}"
            break
    print(json.dumps({"freed": tally.freed, "other_fs": tally.other_fs, "error": error}))
    return 0


def remove_in_userns(pairs: Sequence[tuple[int, str]], plan: IdMapPlan, what: str) -> Tally:
    """Remove each ``(dir fd, name)`` in a child process that is root of a user namespace
    mapped by ``plan`` (``full_plan``). Blocking."""
    argv = [sys.executable, "-I", "-m", "rootbuild.sandbox.userns_rm"]
    for dfd, name in pairs:
        argv += [str(dfd), name]
    proc = subprocess.Popen(
        argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        pass_fds=sorted({dfd for dfd, _ in pairs}), text=True, cwd="/",
        env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        first = proc.stdout.readline()
        if first.strip() != "unshared":
            _, err = proc.communicate(timeout=30)
            cause = _said(first) or (err.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
            raise StoreError(f"remove {what} in a user namespace: {cause}")
        apply_helpers(proc.pid, plan)
        proc.stdin.write("mapped\n")
        proc.stdin.flush()
        out, err = proc.communicate(timeout=CHILD_TIMEOUT)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    result = _result(out)
    if result is None:
        cause = (err.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
        raise StoreError(f"remove {what} in a user namespace: {cause}")
    if result.get("error"):
        raise StoreError(f"remove {what} in a user namespace: {result['error']}")
    return Tally(int(result.get("freed", 0)), [str(p) for p in result.get("other_fs", [])])


def _said(line: str) -> str:
    result = _result(line)
    return str(result.get("error", "")) if result else line.strip()


def _result(text: str) -> dict[str, Any] | None:
    lines = text.strip().splitlines()
    try:
        data = json.loads(lines[-1]) if lines else None
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def remove_entries(dfd: int, names: Sequence[str], what: str) -> Tally:
    """Remove ``names`` (entries of the directory ``dfd``) and everything below them: as
    the user where it may, the rest inside the user namespace (module rules). ``what``
    names the place in messages."""
    tally = Tally()
    refused: list[str] = []
    for name in names:
        try:
            remove_at(dfd, name, tally)
        except PermissionError:
            refused.append(name)
        except OSError as exc:
            raise StoreError(f"remove {what}: {exc.filename or name}: "
                             f"{exc.strerror or exc}") from exc
    if refused:
        plan, why = read_full_plan(what)
        if plan is None:
            raise StoreError(why)
        more = remove_in_userns([(dfd, name) for name in refused], plan, what)
        tally.freed += more.freed
        tally.other_fs += more.other_fs
    return tally


def remove_tree(path: Path) -> int:
    """Remove ``path`` (a store entry: not followed if a symlink) and everything below it;
    the bytes freed. The parent directory is the caller's (a store directory)."""
    try:
        dfd = os.open(path.parent, _DIR)
    except FileNotFoundError:
        return 0
    except OSError as exc:
        raise StoreError(f"remove {path}: {exc.strerror or exc}") from exc
    try:
        tally = remove_entries(dfd, [path.name], str(path))
    finally:
        os.close(dfd)
    if tally.other_fs:
        raise StoreError(f"remove {path}: another filesystem is mounted at "
                         f"{path.parent / tally.other_fs[0]}; unmount it first")
    return tally.freed


def _main(argv: Sequence[str]) -> int:
    pairs = [(int(argv[i]), argv[i + 1]) for i in range(0, len(argv) - 1, 2)]
    return _child(pairs)


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
