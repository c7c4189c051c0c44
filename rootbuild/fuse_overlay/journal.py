"""Finalize: the model's change set -> an extracted-layer tree plus its LayerMeta.

Job: write exactly what ``rootbuild.image.layer_extract.extract_layer`` would have written
from the step's layer tar, so that ``entries_from_extracted(tree, meta)`` + ``write_layer``
gives the OCI layer and ``(tree, meta)`` serves directly as the next step's lower.

Rules:
- Only the change set is visited (diff.changes(model): touched paths, their parents, moved
  subtrees), never the merged tree: time grows with the change, not with the image.
- On-disk shapes follow the extractor: files at their paths with modes OR 0o600 and
  their mtimes; directories mode OR 0o700; symlinks as symlinks; devices and FIFOs as
  empty placeholder files; hardlinks as hardlinks; no setuid/setgid/sticky on disk.
- Content of upper files is moved (renamed) from the data store (same filesystem: no copy;
  each data file has one name in the change set, its other names are hardlink entries);
  content of lower files changed only in metadata or moved is hardlinked from the lower
  tree when the on-disk mode and mtime already match (the lower is shared and must not be
  modified), else copied (copy_file_range).
- Every operation is dir-fd relative with O_NOFOLLOW; ``tree`` must not exist.
"""

from __future__ import annotations

import errno
import os
import stat
from collections import OrderedDict
from dataclasses import replace
from pathlib import Path

from rootbuild.errors import StoreError
from rootbuild.fuse_overlay.backing import Backing, copy_fd
from rootbuild.fuse_overlay.diff import Change, ChangeSet
from rootbuild.image.layermeta import EntryMeta, LayerMeta
from rootbuild.image.rootfs import open_beneath

_NS = 1_000_000_000
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class _Dirs:
    """Directory fds of the tree being written, by relative path (LRU-bounded)."""

    def __init__(self, root_fd: int, limit: int = 128) -> None:
        self.root = root_fd
        self._fds: OrderedDict[str, int] = OrderedDict()
        self._limit = limit

    def get(self, rel: str) -> int:
        if not rel:
            return self.root
        fd = self._fds.get(rel)
        if fd is None:
            fd = open_beneath(self.root, rel, os.O_RDONLY | os.O_DIRECTORY)
            self.put(rel, fd)
        else:
            self._fds.move_to_end(rel)
        return fd

    def put(self, rel: str, fd: int) -> None:
        self._fds[rel] = fd
        if len(self._fds) > self._limit:
            os.close(self._fds.popitem(last=False)[1])

    def close(self) -> None:
        while self._fds:
            os.close(self._fds.popitem()[1])


def _finish_file(fd: int, e: EntryMeta) -> int:
    os.fchmod(fd, (e.mode & 0o777) | 0o600)
    ns = e.mtime * _NS
    os.utime(fd, ns=(ns, ns))
    return os.fstat(fd).st_size


def _lower_file(store: Backing, ch: Change, pfd: int, name: str) -> int:
    assert ch.lower is not None
    layer, path = ch.lower
    e = ch.entry
    src = store.open_lower(layer, path)
    try:
        st = os.fstat(src)
        want_mode = (e.mode & 0o777) | 0o600
        if stat.S_IMODE(st.st_mode) == want_mode and st.st_mtime_ns == e.mtime * _NS:
            parent, _, base = path.rpartition("/")
            lfd = store.lower_fds[layer]
            sfd = open_beneath(lfd, parent, os.O_RDONLY | os.O_DIRECTORY) if parent else -1
            try:
                os.link(
                    base,
                    name,
                    src_dir_fd=sfd if parent else lfd,
                    dst_dir_fd=pfd,
                    follow_symlinks=False,
                )
                return st.st_size
            except OSError as exc:
                if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
                    raise
            finally:
                if parent:
                    os.close(sfd)
        dst = os.open(name, _CREATE, 0o600, dir_fd=pfd)
        try:
            copy_fd(src, dst, st.st_size)
            return _finish_file(dst, e)
        finally:
            os.close(dst)
    finally:
        os.close(src)


def _file(store: Backing, ch: Change, pfd: int, name: str) -> int:
    """Write one regular file; returns its size on disk."""
    if ch.data is not None:
        store.move_data(ch.data, pfd, name)
    elif ch.lower is not None:
        return _lower_file(store, ch, pfd, name)
    else:
        os.close(os.open(name, _CREATE, 0o600, dir_fd=pfd))
    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=pfd)
    try:
        return _finish_file(fd, ch.entry)
    finally:
        os.close(fd)


def write_tree(changes: ChangeSet, tree: Path, store: Backing) -> LayerMeta:
    """Write ``changes`` as an extracted layer at ``tree`` (created; must not exist)."""
    try:
        tree.mkdir(mode=0o700)
        root_fd = os.open(tree, _DIR_FLAGS)
    except OSError as exc:
        raise StoreError(f"write layer tree {tree}: {exc.strerror or exc}") from exc
    dirs = _Dirs(root_fd)
    entries: list[EntryMeta] = []
    path = ""
    try:
        for ch in changes.changes:
            e = ch.entry
            path = e.path
            if not path:
                os.fchmod(root_fd, (e.mode & 0o777) | 0o700)
                entries.append(e)
                continue
            parent, _, name = path.rpartition("/")
            pfd = dirs.get(parent)
            if e.kind == "dir":
                os.mkdir(name, 0o700, dir_fd=pfd)
                fd = os.open(name, _DIR_FLAGS, dir_fd=pfd)
                os.fchmod(fd, (e.mode & 0o777) | 0o700)
                dirs.put(path, fd)
            elif e.kind == "symlink":
                os.symlink(e.linkname, name, dir_fd=pfd)
            elif e.kind == "hardlink":
                src_parent, _, src_name = e.linkname.rpartition("/")
                sfd = os.dup(dirs.get(src_parent))
                try:
                    pfd = dirs.get(parent)  # the lookup above may have evicted it
                    os.link(src_name, name, src_dir_fd=sfd, dst_dir_fd=pfd, follow_symlinks=False)
                finally:
                    os.close(sfd)
            elif e.kind == "file":
                size = _file(store, ch, pfd, name)
                if size != e.size:
                    e = replace(e, size=size)
            else:  # char, block, fifo: an empty placeholder, as the extractor writes them
                fd = os.open(name, _CREATE, 0o600, dir_fd=pfd)
                try:
                    _finish_file(fd, e)
                finally:
                    os.close(fd)
            entries.append(e)
    except OSError as exc:
        raise StoreError(f"write layer tree {tree}: {path!r}: {exc.strerror or exc}") from exc
    finally:
        dirs.close()
        os.close(root_fd)
    return LayerMeta.build(entries, changes.whiteouts, changes.opaque_dirs)
