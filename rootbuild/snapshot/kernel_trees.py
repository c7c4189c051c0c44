"""The kernel overlay's trees on disk: each lower's ``under``/``over`` trees written, and
the upper directory read back and moved into the step's extracted-layer tree.

Job: ``stack_lowers`` (the lowerdirs of a step, topmost first, with the trees
``kernel_view.plan_layer`` asks for), ``walk_upper`` and ``upper_to_changes`` (the upper
as ``StepChanges``: ``upper_changes.changes_from_upper`` for the meta, then its files
renamed into the layer tree in the extractor's disk shape).

Rules: runs inside the build's user namespace, as its root (owners are its ids). Every
walk and write is directory-fd relative with O_NOFOLLOW; a symlink is only ever read with
readlink, never traversed; file content of a lower is copied through ``open_beneath``.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Sequence
from pathlib import Path

from rootbuild.errors import SandboxError
from rootbuild.image.layermeta import EntryMeta, LayerMeta, resolve_entry
from rootbuild.image.rootfs import open_beneath
from rootbuild.snapshot.base import LowerLayer, StepChanges
from rootbuild.snapshot.kernel_view import ViewPlan, plan_layer, root_entry
from rootbuild.snapshot.upper_changes import UpperNode, changes_from_upper

NS = 1_000_000_000
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_KINDS = {stat.S_IFREG: "file", stat.S_IFDIR: "dir", stat.S_IFLNK: "symlink",
          stat.S_IFCHR: "char", stat.S_IFBLK: "block", stat.S_IFIFO: "fifo",
          stat.S_IFSOCK: "socket"}


# -- the per-layer trees -------------------------------------------------------------------


def set_attrs(fd: int, e: EntryMeta) -> None:
    os.fchown(fd, e.uid, e.gid)
    os.fchmod(fd, e.mode & 0o7777)  # after chown, which clears setuid/setgid
    for name, value in e.xattrs:
        os.setxattr(fd, name, value)
    ns = e.mtime_ns if e.mtime_ns is not None else e.mtime * NS
    os.utime(fd, ns=(ns, ns))


def _parent_fd(root: int, path: str) -> tuple[int, str]:
    parent, _, name = path.rpartition("/")
    return (os.dup(root) if not parent else open_beneath(root, parent, _DIR)), name


def _make_dirs(root: int, entries: Sequence[EntryMeta]) -> list[EntryMeta]:
    """mkdir each (parents first); returns them for ``_finish_dirs``."""
    dirs = []
    for e in entries:
        if e.kind != "dir":
            continue
        pfd, name = _parent_fd(root, e.path)
        try:
            os.mkdir(name, 0o700, dir_fd=pfd)
        finally:
            os.close(pfd)
        dirs.append(e)
    return dirs


def _finish_dirs(root: int, dirs: list[EntryMeta]) -> None:
    for e in reversed(dirs):  # children first: their creation moved the parents' mtimes
        fd = open_beneath(root, e.path, _DIR)
        try:
            set_attrs(fd, e)
        finally:
            os.close(fd)


def write_over(plan: ViewPlan, layer: Path, dest: Path) -> None:
    """The ``over`` tree of ``plan`` at ``dest`` (created): fixed entries with their real
    attributes, file content copied from the layer's tree."""
    dest.mkdir(mode=0o755)
    root = os.open(dest, _DIR)
    src_root = os.open(layer, _DIR)
    try:
        dirs = _make_dirs(root, plan.fixes)
        for e in plan.fixes:
            if e.kind == "dir":
                continue
            pfd, name = _parent_fd(root, e.path)
            try:
                if e.kind == "symlink":
                    os.symlink(e.linkname, name, dir_fd=pfd)
                    os.chown(name, e.uid, e.gid, dir_fd=pfd, follow_symlinks=False)
                    ns = e.mtime * NS
                    os.utime(name, ns=(ns, ns), dir_fd=pfd, follow_symlinks=False)
                    continue
                if e.kind == "fifo":
                    os.mkfifo(name, 0o600, dir_fd=pfd)
                    fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=pfd)
                    try:
                        os.chown(f"/proc/self/fd/{fd}", e.uid, e.gid)
                        os.chmod(f"/proc/self/fd/{fd}", e.mode & 0o7777)
                        ns = e.mtime * NS
                        os.utime(f"/proc/self/fd/{fd}", ns=(ns, ns))
                    finally:
                        os.close(fd)
                    continue
                src = open_beneath(src_root, e.path)
                try:
                    dst = os.open(name, _CREATE, 0o600, dir_fd=pfd)
                    try:
                        size = os.fstat(src).st_size
                        while size > 0:
                            n = os.copy_file_range(src, dst, size)
                            if n == 0:
                                break
                            size -= n
                        set_attrs(dst, e)
                    finally:
                        os.close(dst)
                finally:
                    os.close(src)
            finally:
                os.close(pfd)
        for path, target in plan.links:
            tfd, tname = _parent_fd(root, target)
            pfd, name = _parent_fd(root, path)
            try:
                os.link(tname, name, src_dir_fd=tfd, dst_dir_fd=pfd, follow_symlinks=False)
            finally:
                os.close(tfd)
                os.close(pfd)
        _finish_dirs(root, dirs)
    finally:
        os.close(src_root)
        os.close(root)


def write_under(plan: ViewPlan, dest: Path) -> None:
    """The ``under`` tree: whiteouts as character devices 0/0 (unprivileged since Linux
    5.8 for this one device), opaque directories marked ``user.overlay.opaque=y``."""
    dest.mkdir(mode=0o755)
    root = os.open(dest, _DIR)
    try:
        dirs = _make_dirs(root, plan.under_dirs)
        for path in plan.whiteouts:
            pfd, name = _parent_fd(root, path)
            try:
                os.mknod(name, stat.S_IFCHR | 0o600, os.makedev(0, 0), dir_fd=pfd)
            finally:
                os.close(pfd)
        _finish_dirs(root, dirs)
        for path in plan.opaque:
            fd = open_beneath(root, path, _DIR)
            try:
                os.setxattr(fd, "user.overlay.opaque", b"y")
            finally:
                os.close(fd)
    finally:
        os.close(root)


def stack_lowers(lowers: Sequence[LowerLayer], views: Path, metas: Sequence[LayerMeta]
                 ) -> tuple[list[Path], EntryMeta]:
    """The lowerdirs of ``lowers`` (topmost first; ``metas`` theirs) with their
    ``under``/``over`` trees written in ``views`` (created), and the merged root's
    attributes. Refuses lowers the kernel cannot present (``kernel_view`` rules)."""
    plans = [plan_layer(meta, metas[:i]) for i, meta in enumerate(metas)]
    problems = [f"{p}" for plan in plans for p in plan.unrepresentable]
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise SandboxError(
            f"mount the step's root with the kernel overlay: {problems[0]}{more}; the "
            "kernel overlay cannot present it in a user namespace: use --snapshotter fuse"
        )
    views.mkdir(mode=0o700)
    dirs: list[Path] = []
    for i, (lower, plan) in enumerate(zip(lowers, plans, strict=True)):
        if not plan.under_empty:
            write_under(plan, views / f"{i}.under")
            dirs.append(views / f"{i}.under")
        dirs.append(lower.tree)
        if plan.fixes:
            write_over(plan, lower.tree, views / f"{i}.over")
            dirs.append(views / f"{i}.over")
    return list(reversed(dirs)), root_entry(metas)


# -- the upper as a layer --------------------------------------------------------------------


def _xattrs(dfd: int, name: str) -> tuple[tuple[str, bytes], ...]:
    path = f"/proc/self/fd/{dfd}/{name}"
    try:
        names = os.listxattr(path, follow_symlinks=False)
        return tuple(sorted((k, os.getxattr(path, k, follow_symlinks=False)) for k in names))
    except OSError:
        return ()


def walk_upper(upper: Path) -> list[UpperNode]:
    """Every entry of ``upper`` (the root as ""), directory-fd relative, no symlink
    followed."""
    nodes: list[UpperNode] = []
    root = os.open(upper, _DIR)
    st = os.fstat(root)
    rxattrs = _xattrs(root, ".")
    nodes.append(UpperNode("", "dir", stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid,
                           st.st_mtime_ns, inode=st.st_ino, xattrs=rxattrs))
    stack = [(root, "")]
    try:
        while stack:
            dfd, prefix = stack.pop()
            try:
                with os.scandir(dfd) as it:
                    items = list(it)
                for item in items:
                    st = item.stat(follow_symlinks=False)
                    kind = _KINDS.get(stat.S_IFMT(st.st_mode), "file")
                    path = prefix + item.name
                    link = os.readlink(item.name, dir_fd=dfd) if kind == "symlink" else ""
                    nodes.append(UpperNode(
                        path, kind, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid,
                        st.st_mtime_ns, st.st_size, link,
                        (os.major(st.st_rdev), os.minor(st.st_rdev)), st.st_ino,
                        st.st_nlink, _xattrs(dfd, item.name) if kind != "symlink" else (),
                    ))
                    if kind == "dir":
                        stack.append((os.open(item.name, _DIR, dir_fd=dfd), path + "/"))
            finally:
                os.close(dfd)
    finally:
        for fd, _ in stack:
            os.close(fd)
    return nodes


def _plain_file(fd: int, e: EntryMeta) -> None:
    """The extractor's disk shape: owned by the user (root here), mode | 0o600, no special
    bits, no xattrs, whole-second mtime (``journal._finish_file``)."""
    os.fchown(fd, 0, 0)
    for name in os.listxattr(fd):
        with contextlib.suppress(OSError):
            os.removexattr(fd, name)
    os.fchmod(fd, (e.mode & 0o777) | 0o600)
    ns = e.mtime * NS
    os.utime(fd, ns=(ns, ns))


def write_layer_tree(upper: Path, meta: LayerMeta, tree: Path) -> None:
    """Move the upper's content into ``tree`` (created) in the extracted-layer shape."""
    tree.mkdir(mode=0o700)
    root = os.open(tree, _DIR)
    up = os.open(upper, _DIR)
    try:
        for e in meta.entries.values():
            if not e.path:
                os.fchmod(root, (e.mode & 0o777) | 0o700)
                continue
            pfd, name = _parent_fd(root, e.path)
            try:
                if e.kind == "dir":
                    os.mkdir(name, 0o700, dir_fd=pfd)
                    fd = os.open(name, _DIR, dir_fd=pfd)
                    try:
                        os.fchmod(fd, (e.mode & 0o777) | 0o700)
                    finally:
                        os.close(fd)
                elif e.kind == "symlink":
                    os.symlink(e.linkname, name, dir_fd=pfd)
                elif e.kind == "hardlink":
                    sfd, sname = _parent_fd(root, e.linkname)
                    try:
                        os.link(sname, name, src_dir_fd=sfd, dst_dir_fd=pfd,
                                follow_symlinks=False)
                    finally:
                        os.close(sfd)
                else:
                    if e.kind == "file":
                        ufd, uname = _parent_fd(up, e.path)
                        try:
                            os.rename(uname, name, src_dir_fd=ufd, dst_dir_fd=pfd)
                        finally:
                            os.close(ufd)
                    else:  # fifo, char, block: an empty placeholder, as the extractor's
                        os.close(os.open(name, _CREATE, 0o600, dir_fd=pfd))
                    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK,
                                 dir_fd=pfd)
                    try:
                        _plain_file(fd, e)
                    finally:
                        os.close(fd)
            finally:
                os.close(pfd)
    finally:
        os.close(up)
        os.close(root)


def upper_to_changes(upper: Path, metas: Sequence[LayerMeta], tree: Path) -> StepChanges:
    """The step's layer at ``tree`` from ``upper`` over lowers with ``metas``."""
    order = range(len(metas) - 1, -1, -1)

    def lower(path: str) -> EntryMeta | None:
        if not path:
            return root_entry(metas) if metas else None
        found = resolve_entry(metas, path, order)
        return None if found is None else found[1]

    changes = changes_from_upper(walk_upper(upper), lower)
    write_layer_tree(upper, changes.meta, tree)
    return StepChanges(tree, changes.meta)
