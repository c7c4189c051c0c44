"""The store's cache mounts (``RUN --mount=type=cache``): their trees, locks, use and GC.

Layout under the store root::

    cache-mounts/<key>/info.json   {"id", "instance", "created", "last_used", "size"}
                      /tree/       the contents, an extracted-layer tree (layer_extract's
                                   on-disk shapes: modes OR 0o600, no owners on disk)
                      /meta.json   its ``LayerMeta``: the virtual owners and modes; "" is
                                   the mount's own directory (mode/uid/gid of the mount)
                      /tree.lock   flock: held while the tree is copied or changed
                      /use.lock    flock: shared by sharing=shared steps, exclusive by
                                   locked (waits) and private (never waits) steps

Rules:
- A store belongs to one user, so ids are per user; ``<key>`` is a digest of the id (ids
  may hold "/"), with ``-N`` for the N-th private instance.
- Ownership is virtual, as in layers: every file on disk belongs to the invoking user; the
  owners a step set (uid 1000 ...) live in ``meta.json`` only.
- A step never mounts the tree itself: ``snapshot()`` gives it a private copy (hard links:
  no data is copied) as the lower of its overlay, so a tree changing under a running
  step's FUSE server cannot happen. ``fold()`` applies a step's changes (an overlay
  diff: entries, whiteouts, opaque directories) to the tree under ``tree.lock``, through
  directory fds and never following a link. Files are replaced by rename, never written
  in place, so the copies' shared inodes never change.
- Concurrent shared writers each fold their own changes when their step ends; the last
  one to finish wins per path (BuildKit's shared mounts are one live directory instead,
  where the writers see each other's files while they run).
- Hard links in a step's changes become independent files sharing the inode on disk.
- Cache mounts live outside the step cache and the image: never in a layer or a key.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import hashlib
import json
import os
import shutil
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from rootbuild.errors import StoreError
from rootbuild.image.layer_extract import extract_layer
from rootbuild.image.layermeta import EntryMeta, LayerMeta
from rootbuild.image.store import force_rmtree, tree_size

MOUNTS_DIR = "cache-mounts"
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(frozen=True)
class CacheMountInfo:
    """One cache mount instance of the store."""

    key: str
    id: str
    instance: int
    created: float
    last_used: float
    size: int
    generation: int = 0  # counts the changes of the tree
    #: (digest, size, diffID) of the export blob made at ``generation`` (mount_export.py)
    export: tuple[str, int, str] | None = None

    def to_json(self) -> dict[str, object]:
        return {"id": self.id, "instance": self.instance, "created": self.created,
                "last_used": self.last_used, "size": self.size,
                "generation": self.generation,
                "export": list(self.export) if self.export else None}


def mount_key(mount_id: str, instance: int = 1) -> str:
    digest = hashlib.sha256(mount_id.encode("utf-8", "surrogateescape")).hexdigest()[:32]
    return digest if instance == 1 else f"{digest}-{instance}"


# -- the pure part of a fold ----------------------------------------------------------------


@dataclass(frozen=True)
class FoldPlan:
    """What folding a step's changes into a cache tree does: the subtrees to remove first
    (``remove``, shallowest first), then the entries to place (``place``, in the changes'
    order, parents first), and the tree's metadata afterwards."""

    remove: tuple[str, ...]
    place: tuple[EntryMeta, ...]
    meta: LayerMeta


def _under(path: str, top: str) -> bool:
    return top == "" or path == top or path.startswith(top + "/")


def fold_plan(cache: LayerMeta, changes: LayerMeta) -> FoldPlan:
    """Fold ``changes`` (one overlay diff over ``cache``) into ``cache`` (a flat tree:
    no whiteouts), per the OCI layer rules (whiteouts and opaque directories hide what is
    below, an entry replaces what was at its path)."""
    entries = dict(cache.entries)
    remove: list[str] = []

    def drop(top: str, keep_top: bool = False) -> None:
        gone = [p for p in entries if _under(p, top) and not (keep_top and p == top)]
        if not gone:
            return
        for p in gone:
            del entries[p]
        if keep_top:
            remove.extend(p for p in gone if p.rpartition("/")[0] == top and p != top)
        else:
            remove.append(top)

    for path in sorted(changes.whiteouts):
        drop(path)
    for path in sorted(changes.opaque_dirs):
        drop(path, keep_top=True)
    place: list[EntryMeta] = []
    for e in changes.entries.values():
        parts = e.path.split("/")[:-1]
        for depth in range(1, len(parts) + 1):
            # a parent that another writer removed or made a non-directory meanwhile
            parent = "/".join(parts[:depth])
            found = entries.get(parent)
            if found is None or found.kind != "dir":
                if found is not None:
                    drop(parent)
                entries[parent] = EntryMeta(parent, "dir", mode=stat.S_IFDIR | 0o755,
                                            implicit=True)
        old = entries.get(e.path)
        if old is not None and (old.kind == "dir") != (e.kind == "dir"):
            drop(e.path)
        if e.kind == "hardlink":
            target = changes.entries.get(e.linkname)
            e = dataclasses.replace(e, kind="file", linkname="",
                                    size=target.size if target else 0)
        if e.kind == "dir" and e.implicit and old is not None and old.kind == "dir":
            place.append(old)  # the parent of a change: what the cache said wins
            continue
        if e.kind == "dir" and old is not None and old.kind == "dir":
            entries.pop(e.path)  # keep the tree order: parents before children
        entries[e.path] = e
        place.append(e)
    ordered = sorted(entries.values(), key=lambda x: x.path.encode("utf-8", "surrogateescape"))
    return FoldPlan(tuple(remove), tuple(place), LayerMeta.build(ordered))


def root_entry(mode: int, uid: int, gid: int, mtime: int) -> EntryMeta:
    """The mount's own directory: BuildKit's ``mode`` (default 0755), ``uid``, ``gid``."""
    return EntryMeta("", "dir", mode=stat.S_IFDIR | (mode & 0o7777), uid=uid, gid=gid,
                     mtime=mtime)


# -- disk operations through directory fds ----------------------------------------------------


def _open_dir(root_fd: int, rel: str, create: bool) -> int:
    """An fd of directory ``rel`` below ``root_fd``, no link followed; with ``create``,
    missing directories are made and a non-directory in the way is replaced."""
    fd = os.dup(root_fd)
    for name in [p for p in rel.split("/") if p]:
        try:
            nfd = os.open(name, _DIR_FLAGS, dir_fd=fd)
        except OSError as exc:
            if not create or exc.errno not in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
                os.close(fd)
                raise
            _remove_at(fd, name)
            os.mkdir(name, 0o700, dir_fd=fd)
            nfd = os.open(name, _DIR_FLAGS, dir_fd=fd)
        os.close(fd)
        fd = nfd
    return fd


def _remove_at(dir_fd: int, name: str) -> None:
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(name, dir_fd=dir_fd)
    else:
        os.unlink(name, dir_fd=dir_fd)


def _remove(root_fd: int, rel: str) -> None:
    parent, _, name = rel.rpartition("/")
    try:
        pfd = _open_dir(root_fd, parent, create=False)
    except (FileNotFoundError, NotADirectoryError, OSError):
        return  # a parent that is gone or not a directory holds nothing to remove
    try:
        _remove_at(pfd, name)
    finally:
        os.close(pfd)


def apply_fold(plan: FoldPlan, tree: Path, changes_tree: Path) -> None:
    """Carry ``plan`` out on disk: ``changes_tree``'s files are moved into ``tree``."""
    root_fd = os.open(tree, _DIR_FLAGS)
    src_fd = os.open(changes_tree, _DIR_FLAGS)
    try:
        for rel in plan.remove:
            if rel:
                _remove(root_fd, rel)
            else:
                for name in os.listdir(root_fd):
                    _remove_at(root_fd, name)
        for e in plan.place:
            if e.path == "":
                os.fchmod(root_fd, (e.mode & 0o777) | 0o700)
                continue
            parent, _, name = e.path.rpartition("/")
            pfd = _open_dir(root_fd, parent, create=True)
            try:
                if e.kind == "dir":
                    try:
                        st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
                        if not stat.S_ISDIR(st.st_mode):
                            _remove_at(pfd, name)
                            raise FileNotFoundError
                    except FileNotFoundError:
                        os.mkdir(name, 0o700, dir_fd=pfd)
                    dfd = os.open(name, _DIR_FLAGS, dir_fd=pfd)
                    try:
                        os.fchmod(dfd, (e.mode & 0o777) | 0o700)
                    finally:
                        os.close(dfd)
                    continue
                sfd = _open_dir(src_fd, parent, create=False)
                try:
                    with contextlib.suppress(FileNotFoundError):
                        st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
                        if stat.S_ISDIR(st.st_mode):
                            shutil.rmtree(name, dir_fd=pfd)
                    os.rename(name, name, src_dir_fd=sfd, dst_dir_fd=pfd)
                finally:
                    os.close(sfd)
            finally:
                os.close(pfd)
    finally:
        os.close(src_fd)
        os.close(root_fd)


def clone_tree(src: Path, dest: Path) -> None:
    """``dest`` (must not exist) as a copy of ``src`` whose files are hard links."""
    shutil.copytree(src, dest, symlinks=True, copy_function=os.link)


# -- the store's cache mounts ----------------------------------------------------------------


class CacheMounts:
    """The cache mounts of the store at ``root`` (see the module rules)."""

    def __init__(self, root: Path, clock: Callable[[], float] = time.time) -> None:
        self.dir = root / MOUNTS_DIR
        self.clock = clock

    def path(self, key: str) -> Path:
        return self.dir / key

    # -- locks ------------------------------------------------------------------------------

    def _lock_fd(self, key: str, name: str) -> int:
        self.dir.mkdir(mode=0o700, exist_ok=True)
        self.path(key).mkdir(mode=0o700, exist_ok=True)
        return os.open(self.path(key) / name, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)

    def try_use(self, key: str, exclusive: bool) -> int | None:
        """The fd holding ``use.lock`` (shared or exclusive), or None when it is taken;
        closing the fd releases it."""
        fd = self._lock_fd(key, "use.lock")
        try:
            fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        return fd

    @contextlib.contextmanager
    def _tree_lock(self, key: str) -> Iterator[None]:
        fd = self._lock_fd(key, "tree.lock")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    # -- contents -----------------------------------------------------------------------------

    def info(self, key: str) -> CacheMountInfo | None:
        try:
            doc = json.loads((self.path(key) / "info.json").read_text())
            export = doc.get("export")
            return CacheMountInfo(key, str(doc["id"]), int(doc["instance"]),
                                  float(doc["created"]), float(doc["last_used"]),
                                  int(doc["size"]), int(doc.get("generation", 0)),
                                  (str(export[0]), int(export[1]), str(export[2]))
                                  if export else None)
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _write_info(self, info: CacheMountInfo) -> None:
        path = self.path(info.key) / "info.json"
        tmp = path.with_name(".info.json.tmp")
        tmp.write_text(json.dumps(info.to_json()))
        os.replace(tmp, path)

    def ensure(self, mount_id: str, instance: int, root: EntryMeta,
               seed: Callable[[Path], LayerMeta] | None = None) -> str:
        """The key of instance ``instance`` of ``mount_id``, created empty (its directory
        ``root``) when missing, or filled by ``seed(tree)`` (which returns the metadata
        of what it wrote, whose "" entry is replaced by ``root``)."""
        key = mount_key(mount_id, instance)
        with self._tree_lock(key):
            base = self.path(key)
            if (base / "meta.json").is_file() and self.info(key) is not None:
                return key
            force_rmtree(base / "tree")
            (base / "tree").mkdir(mode=0o700)
            entries: list[EntryMeta] = []
            if seed is not None:
                try:
                    entries = [e for e in seed(base / "tree").entries.values() if e.path]
                except BaseException:
                    force_rmtree(base / "tree")
                    raise
            os.chmod(base / "tree", (root.mode & 0o777) | 0o700)
            meta = LayerMeta.build([root, *entries])
            meta.save(base / "meta.json")
            now = self.clock()
            self._write_info(CacheMountInfo(key, mount_id, instance, now, now,
                                            tree_size(base / "tree")))
        return key

    def snapshot(self, key: str, dest: Path) -> tuple[Path, Path]:
        """A private hard-link copy of the tree and its metadata in ``dest`` (created):
        (tree, meta.json), the lower of one step's overlay."""
        with self._tree_lock(key):
            base = self.path(key)
            dest.mkdir(mode=0o700)
            clone_tree(base / "tree", dest / "tree")
            shutil.copyfile(base / "meta.json", dest / "meta.json")
            info = self.info(key)
            if info is not None:
                self._write_info(dataclasses.replace(info, last_used=self.clock()))
        return dest / "tree", dest / "meta.json"

    def fold(self, key: str, changes_tree: Path, changes: LayerMeta) -> None:
        """Apply one step's changes to the tree (see the module rules)."""
        if not (changes.entries or changes.whiteouts or changes.opaque_dirs):
            return  # the step changed nothing: the tree (and its export blob) stay
        with self._tree_lock(key):
            base = self.path(key)
            try:
                current = LayerMeta.load(base / "meta.json")
                plan = fold_plan(current, changes)
                apply_fold(plan, base / "tree", changes_tree)
                plan.meta.save(base / "meta.json")
            except OSError as exc:
                raise StoreError(f"update cache mount {key}: {exc.strerror or exc}") from exc
            info = self.info(key)
            if info is not None:
                self._write_info(dataclasses.replace(
                    info, last_used=self.clock(), size=tree_size(base / "tree"),
                    generation=info.generation + 1, export=None,
                ))

    @contextlib.contextmanager
    def reading(self, key: str) -> Iterator[tuple[Path, Path, CacheMountInfo | None]]:
        """(tree, meta.json, info) of ``key``, unchanged while the context lasts."""
        with self._tree_lock(key):
            yield self.path(key) / "tree", self.path(key) / "meta.json", self.info(key)

    def record_export(self, key: str, generation: int, export: tuple[str, int, str]) -> None:
        """Remember the export blob of ``generation`` (if the tree is still at it)."""
        with self._tree_lock(key):
            info = self.info(key)
            if info is not None and info.generation == generation:
                self._write_info(dataclasses.replace(info, export=export))

    def replace_from(self, mount_id: str, last_used: float,
                     open_blob: Callable[[], BinaryIO], diff_id: str,
                     exported: tuple[str, int, str] | None = None) -> bool:
        """Replace instance 1 of ``mount_id`` by the layer tar ``open_blob`` gives (zstd,
        verified against ``diff_id``), unless the store's copy was used at or after
        ``last_used``. True when replaced. Running steps keep their own snapshots.
        ``exported``: the blob's (digest, size, diffID), which an unchanged tree exports
        again without writing a tar."""
        key = mount_key(mount_id)
        with self._tree_lock(key):
            info = self.info(key)
            if info is not None and info.last_used >= last_used:
                return False
            base = self.path(key)
            new, old = base / "tree.new", base / "tree.old"
            force_rmtree(new)
            force_rmtree(old)
            try:
                with open_blob() as blob:
                    meta = extract_layer(
                        blob, new, media_type_or_compression="zstd",
                        layer_name=f"cache mount {mount_id!r}", expected_diff_id=diff_id,
                    ).meta
            except BaseException:
                force_rmtree(new)
                raise
            if meta.get("") is None:
                meta = LayerMeta.build([root_entry(0o755, 0, 0, 0), *meta.entries.values()])
            if (base / "tree").exists():
                os.rename(base / "tree", old)
            os.rename(new, base / "tree")
            meta.save(base / "meta.json")
            now = self.clock()
            generation = info.generation + 1 if info else 0
            self._write_info(CacheMountInfo(
                key, mount_id, 1, info.created if info else now, last_used,
                tree_size(base / "tree"), generation, exported,
            ))
            force_rmtree(old)
        return True

    # -- listing and removal -------------------------------------------------------------------

    def list(self) -> list[CacheMountInfo]:
        """Every cache mount instance, most recently used first."""
        if not self.dir.is_dir():
            return []
        found = [info for entry in sorted(self.dir.iterdir())
                 if (info := self.info(entry.name)) is not None]
        return sorted(found, key=lambda i: (-i.last_used, i.id, i.instance))

    def remove(self, key: str) -> int:
        """Remove one instance; the bytes freed. The caller holds the store's GC lock."""
        base = self.path(key)
        size = tree_size(base) if base.exists() else 0
        force_rmtree(base)
        return size

    def remove_broken(self) -> int:
        """Remove directories without a readable ``info.json`` (an interrupted creation)."""
        if not self.dir.is_dir():
            return 0
        freed = 0
        for entry in sorted(self.dir.iterdir()):
            if self.info(entry.name) is None:
                freed += self.remove(entry.name)
        return freed
