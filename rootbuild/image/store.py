"""rootbuild's local content-addressed image store.

Layout under the store root (created mode 0700)::

    blobs/<alg>/<hex>   immutable, verified blobs (mode 0444)
    tmp/                staging on the same filesystem; every entry is scratch (marked as a
                        "top directory" where the filesystem has the flag: see spread_subdirs)
    layers/<hex>        extracted layer trees keyed by diffID (written by the layer modules)
    images.json         {"version": 1, "images": {name: {digest, mediaType, size, created}}}
    images.lock         flock: exclusive while images.json is read-modified-written
    gc.lock             flock: shared while a build/import/export runs, exclusive for GC

Rules (after go-containerregistry's layout writer and containerd's content store):
- A blob is written to a temp file in ``tmp/`` while its digest and size are verified,
  fsynced, then *linked* to its digest path: an existing blob wins, nothing is overwritten.
- Indexes last: a name is tagged only after every blob it reaches is in place; images.json
  is replaced by temp file + fsync + rename under the exclusive ``images.lock``.
- Builds hold ``shared_lock()`` while they run; ``prune()`` takes ``gc.lock`` exclusively,
  so it never removes a blob or a staged file a running build may still tag. A build
  starting where nothing holds the store sweeps what dead builds left (``sweep_scratch``).
- ``prune()`` keeps what tagged images reach; an image that does not load (config or
  manifest missing or corrupt) keeps every blob and tree its verified documents name.
- Imports are atomic: they ``stage()`` blobs in a private directory and ``commit()`` only
  once the whole image verified; an uncommitted staging directory is removed.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import stat
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any, BinaryIO

from rootbuild.errors import ImageError, StoreError
from rootbuild.image.digest import (
    MAX_JSON_SIZE,
    Verifier,
    check_digest,
    hex_of,
    parse_digest,
    read_verified,
    sha256_digest,
)
from rootbuild.image.oci import (
    Descriptor,
    Manifest,
    StoredImage,
    diff_ids_of,
    layer_compression,
    parse_json_object,
)
from rootbuild.image.refs import normalize_name

IMAGES_VERSION = 1
FS_IOC_GETFLAGS = 0x80086601
FS_IOC_SETFLAGS = 0x40086602
FS_TOPDIR_FL = 0x00020000


def spread_subdirs(path: Path) -> None:
    """Mark ``path`` a "top directory" (``chattr +T``) where the filesystem knows the flag
    (ext2/3/4): each directory made directly in it is then placed in a block group with
    many free inodes (the Orlov allocator) instead of next to its parent. Every build,
    extracted layer and RUN step works in such a directory in ``tmp/``. Without it, their
    files land in the group of the store's last deletions, and ext4 without a journal will
    not reuse an inode freed less than a minute ago: each new file then scans past every
    such inode, and extracting a 10,000-file base after a large ``rm -rf`` took 5.8-6.8 s
    instead of 0.9 s (docs/benchmarks.md, "ext4"). Best effort: other filesystems refuse
    the ioctl or ignore the flag, which changes nothing."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return
    try:
        buf = bytearray(8)  # the kernel reads and writes an int; room for a long
        fcntl.ioctl(fd, FS_IOC_GETFLAGS, buf)
        flags = int.from_bytes(buf[:4], sys.byteorder)
        if not flags & FS_TOPDIR_FL:
            new = (flags | FS_TOPDIR_FL).to_bytes(4, sys.byteorder) + bytes(4)
            fcntl.ioctl(fd, FS_IOC_SETFLAGS, new)
    except OSError:  # ENOTTY, EOPNOTSUPP, EPERM: nothing to gain here
        pass
    finally:
        os.close(fd)


def default_root(env: dict[str, str] | None = None) -> Path:
    """``$ROOTBUILD_ROOT``, else ``$XDG_DATA_HOME/rootbuild``, else
    ``~/.local/share/rootbuild`` (XDG base-directory spec)."""
    env = dict(os.environ) if env is None else env
    if env.get("ROOTBUILD_ROOT"):
        return Path(env["ROOTBUILD_ROOT"])
    if env.get("XDG_DATA_HOME"):
        return Path(env["XDG_DATA_HOME"]) / "rootbuild"
    return Path.home() / ".local" / "share" / "rootbuild"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _link_no_replace(src: Path, dst: Path) -> bool:
    """Put ``src`` at ``dst`` unless ``dst`` exists; True if placed. ``src`` is removed."""
    try:
        os.link(src, dst)
    except FileExistsError:
        placed = False
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
            raise
        # No hard links here: rename, which is safe because equal digests mean equal bytes.
        placed = not dst.exists()
        if placed:
            os.replace(src, dst)
            return True
    else:
        placed = True
    src.unlink()
    return placed


def tree_size(path: Path) -> int:
    """Bytes of every file below ``path`` (apparent sizes, not following links)."""
    total = 0
    for dirpath, dirnames, filenames in os.walk(path):
        for name in [*dirnames, *filenames]:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, name)).st_size
    return total


def force_rmtree(path: Path) -> None:
    """rmtree that also removes read-only directories (extracted layers keep 0555 modes)."""

    def onerror(func: Any, failed: str, exc_info: Any) -> None:
        parent = os.path.dirname(failed)
        try:
            os.chmod(parent, stat.S_IRWXU)
            if os.path.isdir(failed) and not os.path.islink(failed):
                os.chmod(failed, stat.S_IRWXU)
            func(failed)
        except FileNotFoundError:
            pass

    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, onerror=onerror)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _remove_counted(entry: Path, remove: Callable[[Path], int] | None) -> int:
    """Remove ``entry`` with ``remove`` (which counts), else ``force_rmtree``; the bytes."""
    if remove is not None:
        return remove(entry)
    freed = tree_size(entry) + entry.lstat().st_size
    force_rmtree(entry)
    return freed


class BlobWriter:
    """A blob being written: ``write()`` bytes, then ``close()`` verifies and places it.

    Use as a context manager; after a clean exit ``descriptor`` describes the blob. On an
    exception the temp file is removed and nothing is placed.
    """

    def __init__(
        self,
        tmp_dir: Path,
        dest_for: Any,
        media_type: str,
        expected_digest: str | None,
        expected_size: int | None,
        what: str,
        max_size: int | None = None,
    ) -> None:
        self._verifier = Verifier(what, expected_digest, expected_size, max_size)
        self._dest_for = dest_for
        self._media_type = media_type
        fd, name = tempfile.mkstemp(prefix="blob-", dir=tmp_dir)
        self._path = Path(name)
        self._file: IO[bytes] = os.fdopen(fd, "wb")
        self.descriptor: Descriptor | None = None
        self.placed = False

    def write(self, data: bytes) -> int:
        self._verifier.update(data)
        return self._file.write(data)

    def close(self) -> Descriptor:
        """Verify, fsync and link the blob into place (an existing blob wins)."""
        if self.descriptor is not None:
            return self.descriptor
        try:
            digest = self._verifier.finish()
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            os.chmod(self._path, 0o444)
            dest: Path = self._dest_for(digest)
            dest.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            self.placed = _link_no_replace(self._path, dest)
            if self.placed:
                _fsync_dir(dest.parent)
        except BaseException:
            self.abort()
            raise
        self.descriptor = Descriptor(self._media_type, digest, self._verifier.size)
        return self.descriptor

    def abort(self) -> None:
        self._file.close()
        with contextlib.suppress(FileNotFoundError):
            self._path.unlink()

    def __enter__(self) -> BlobWriter:
        return self

    def __exit__(
        self, typ: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if typ is None:
            self.close()
        else:
            self.abort()


class Staging:
    """A private directory in ``tmp/`` that collects verified blobs for one import.

    Blobs become visible in the store only through ``commit()``; leaving the context without
    committing removes everything staged (the store is left as it was).
    """

    def __init__(self, store: Store) -> None:
        self._store = store
        self.path = Path(tempfile.mkdtemp(prefix="stage-", dir=store.tmp_dir))
        self._digests: dict[str, Path] = {}

    def _path_for(self, digest: str) -> Path:
        algorithm, encoded = parse_digest(digest)
        return self.path / f"{algorithm}-{encoded}"

    def ingest(
        self,
        expected_digest: str | None = None,
        expected_size: int | None = None,
        media_type: str = "application/octet-stream",
        what: str = "blob",
        max_size: int | None = None,
    ) -> BlobWriter:
        def dest_for(digest: str) -> Path:
            self._digests[digest] = self._path_for(digest)
            return self._digests[digest]

        return BlobWriter(
            self.path, dest_for, media_type, expected_digest, expected_size, what, max_size
        )

    def put_bytes(self, data: bytes, media_type: str) -> Descriptor:
        digest = sha256_digest(data)
        if self.has_blob(digest):  # already there (an unchanged rebuild's config and
            return Descriptor(media_type, digest, len(data))  # manifest): no write, no fsync
        with self.ingest(media_type=media_type, what=media_type) as writer:
            writer.write(data)
        assert writer.descriptor is not None
        return writer.descriptor

    def has_blob(self, digest: str) -> bool:
        return digest in self._digests or self._store.has_blob(digest)

    def open_blob(self, digest: str) -> BinaryIO:
        """A staged blob, else one already in the store."""
        path = self._digests.get(digest)
        if path is not None:
            return open(path, "rb")
        return self._store.open_blob(digest)

    def commit(self) -> None:
        """Link every staged blob into ``blobs/``; existing blobs win."""
        for digest, path in self._digests.items():
            dest = self._store.blob_path(digest)
            dest.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            _link_no_replace(path, dest)
        for parent in {self._store.blob_path(d).parent for d in self._digests}:
            _fsync_dir(parent)
        self._digests.clear()

    def close(self) -> None:
        force_rmtree(self.path)

    def __enter__(self) -> Staging:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True)
class ImageRecord:
    """One row of ``images.json``."""

    name: str
    manifest: Descriptor
    created: str


class Store:
    """The store at ``root``; construct with ``Store.open``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.tmp_dir = root / "tmp"
        self.layers_dir = root / "layers"
        # what ADD remembers of URLs (ETag and digest; engine/remote_source.py Records)
        self.remote_records_dir = root / "remote-sources"
        # the records of builds an unchanged rebuild replays (engine/replay.py)
        self.replay_dir = root / "replay"
        self._images_file = root / "images.json"
        self._shared_depth = 0

    @classmethod
    def open(cls, root: Path | None = None) -> Store:
        """Open (creating, mode 0700) the store at ``root`` or ``default_root()``."""
        root = (root or default_root()).absolute()
        try:
            root.mkdir(mode=0o700, parents=True, exist_ok=True)
            for sub in ("blobs/sha256", "tmp", "layers"):
                (root / sub).mkdir(mode=0o700, parents=True, exist_ok=True)
            spread_subdirs(root / "tmp")
            for lock in ("images.lock", "gc.lock"):
                os.close(os.open(root / lock, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))
        except OSError as exc:
            raise StoreError(f"open store {root}: {exc.strerror or exc}") from exc
        return cls(root)

    # -- blobs ------------------------------------------------------------------------------

    def blob_path(self, digest: str) -> Path:
        algorithm, encoded = parse_digest(digest)
        return self.root / "blobs" / algorithm / encoded

    def has_blob(self, digest: str) -> bool:
        return self.blob_path(digest).is_file()

    def open_blob(self, digest: str) -> BinaryIO:
        try:
            return open(self.blob_path(digest), "rb")
        except FileNotFoundError as exc:
            raise StoreError(f"open blob {digest}: not in store {self.root}") from exc

    def ingest(
        self,
        expected_digest: str | None = None,
        expected_size: int | None = None,
        media_type: str = "application/octet-stream",
        what: str = "blob",
    ) -> BlobWriter:
        """A writer whose verified bytes land at ``blobs/<alg>/<hex>`` on clean close::

            with store.shared_lock(), store.ingest(media_type=OCI_LAYER_GZIP) as w:
                w.write(chunk)
            w.descriptor  # media type, digest, size

        Hold ``shared_lock()`` from before the write until the blob is tagged (or referenced
        by a tagged image), or ``prune()`` may remove it."""
        return BlobWriter(
            self.tmp_dir, self.blob_path, media_type, expected_digest, expected_size, what
        )

    def put_bytes(self, data: bytes, media_type: str) -> Descriptor:
        with self.ingest(sha256_digest(data), len(data), media_type, media_type) as writer:
            writer.write(data)
        assert writer.descriptor is not None
        return writer.descriptor

    def read_blob(self, desc: Descriptor, max_size: int = MAX_JSON_SIZE) -> bytes:
        """A small blob's bytes, verified against its descriptor."""
        with self.open_blob(desc.digest) as f:
            return read_verified(f, desc.digest, desc.digest, desc.size, max_size)

    def stage(self) -> Staging:
        """A staging area for an atomic import (see ``Staging``)."""
        return Staging(self)

    def staging_dir(self) -> Path:
        """A fresh private directory on the store's filesystem; the caller removes it."""
        return Path(tempfile.mkdtemp(prefix="work-", dir=self.tmp_dir))

    def layer_dir(self, diff_id: str) -> Path:
        """Where the extracted tree of the layer with this diffID lives (may not exist)."""
        return self.layers_dir / hex_of(diff_id)

    # -- locks ------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _flock(self, name: str, mode: int, wait: bool = True) -> Iterator[None]:
        fd = os.open(self.root / name, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            try:
                fcntl.flock(fd, mode | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError as exc:
                raise StoreError(f"lock store {self.root}: in use by a running build") from exc
            yield
        finally:
            os.close(fd)  # closing the last descriptor releases the flock

    @contextlib.contextmanager
    def shared_lock(self) -> Iterator[None]:
        """Held by builds, imports and exports: keeps ``prune()`` out while they run."""
        with self._flock("gc.lock", fcntl.LOCK_SH):
            self._shared_depth += 1
            try:
                yield
            finally:
                self._shared_depth -= 1

    def sweep_scratch(self, remove: Callable[[Path], int]) -> int | None:
        """Remove the scratch dead builds and imports left in ``tmp/`` (their ``work-*`` and
        ``stage-*`` directories, made only under the shared lock) when nothing holds the
        store: ``gc.lock`` taken exclusively without waiting, else None (someone runs, and
        their scratch is live). The bytes ``remove`` freed."""
        if self._shared_depth:
            return None
        fd = os.open(self.root / "gc.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return None
            return sum(remove(entry) for entry in sorted(self.tmp_dir.iterdir())
                       if entry.name.startswith(("work-", "stage-")))
        finally:
            os.close(fd)

    # -- images.json ------------------------------------------------------------------------

    def _read_records(self) -> dict[str, dict[str, Any]]:
        try:
            data = self._images_file.read_bytes()
        except FileNotFoundError:
            return {}
        try:
            obj = json.loads(data)
            images = obj["images"]
            if obj.get("version") != IMAGES_VERSION or not isinstance(images, dict):
                raise ValueError("unknown version")
        except (ValueError, KeyError, TypeError) as exc:
            raise StoreError(f"read {self._images_file}: corrupt ({exc})") from exc
        return images

    def _write_records(self, records: dict[str, dict[str, Any]]) -> None:
        data = json.dumps({"version": IMAGES_VERSION, "images": records}, indent=1, sort_keys=True)
        fd, name = tempfile.mkstemp(prefix="images-", dir=self.tmp_dir)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(data + "\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(name, self._images_file)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name)
            raise
        _fsync_dir(self.root)

    def records(self) -> list[ImageRecord]:
        with self._flock("images.lock", fcntl.LOCK_SH):
            rows = self._read_records()
        out = []
        for name, row in sorted(rows.items()):
            try:
                desc = Descriptor(row["mediaType"], check_digest(row["digest"]), int(row["size"]))
            except (KeyError, TypeError, ValueError, ImageError) as exc:
                raise StoreError(f"read {self._images_file}: bad entry {name!r}") from exc
            out.append(ImageRecord(name, desc, str(row.get("created", ""))))
        return out

    def images(self) -> list[tuple[str, str, str]]:
        """(name, manifest digest, created RFC 3339) for every tagged image, by name."""
        return [(r.name, r.manifest.digest, r.created) for r in self.records()]

    def tag(self, name: str, manifest: Descriptor) -> str:
        """Point ``name`` (normalised, ``app`` -> ``app:latest``) at a stored manifest;
        return the normalised name. The manifest and everything it reaches must be stored.
        A name that already points there is left as it is, with the time it was given
        (``docker tag`` of an image to a tag it has changes nothing): an unchanged rebuild
        writes no index."""
        key = normalize_name(name)
        if "@" in key:
            raise StoreError(f"tag image {name!r}: a tag cannot contain a digest")
        if not self.has_blob(manifest.digest):
            raise StoreError(f"tag image {key}: manifest {manifest.digest} is not in the store")
        created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        row = {
            "digest": manifest.digest,
            "mediaType": manifest.media_type,
            "size": manifest.size,
            "created": created,
        }
        with self._flock("images.lock", fcntl.LOCK_EX):
            records = self._read_records()
            old = records.get(key)
            if old is not None and all(old.get(k) == row[k] for k in ("digest", "mediaType",
                                                                        "size")):
                return key
            records[key] = row
            self._write_records(records)
        return key

    def untag(self, name: str) -> bool:
        """Remove a name (``rmi``); True if it existed. Blobs go at the next ``prune()``."""
        key = normalize_name(name)
        with self._flock("images.lock", fcntl.LOCK_EX):
            records = self._read_records()
            if records.pop(key, None) is None:
                return False
            self._write_records(records)
        return True

    def load(self, manifest: Descriptor) -> StoredImage:
        """The image whose manifest is ``manifest`` (manifest and config re-verified)."""
        try:
            manifest_bytes = self.read_blob(manifest)
            config_desc = Manifest.parse(manifest_bytes, manifest.media_type).config
            config_bytes = self.read_blob(config_desc)
            return StoredImage.from_documents(manifest, manifest_bytes, config_bytes)
        except ImageError as exc:
            raise StoreError(f"load image {manifest.digest}: {exc.message}") from exc

    def resolve(self, name: str) -> StoredImage | None:
        """The image tagged ``name`` (or pinned ``name@sha256:...``), None if absent."""
        key = normalize_name(name)
        if "@" in key:
            digest = key.split("@", 1)[1]
            for record in self.records():
                if record.manifest.digest == digest:
                    return self.load(record.manifest)
            return None
        for record in self.records():
            if record.name == key:
                return self.load(record.manifest)
        return None

    # -- garbage collection -----------------------------------------------------------------

    def reachable(self, extra_roots: Iterable[str] = ()) -> tuple[set[str], set[str]]:
        """(blob digests, layer diffIDs) that tagged images reach, plus ``extra_roots``."""
        blobs: set[str] = set(extra_roots)
        diff_ids: set[str] = set()
        for record in self.records():
            blobs.add(record.manifest.digest)
            try:
                image = self.load(record.manifest)
            except StoreError:
                more_blobs, more_diff_ids = self._broken_reaches(record.manifest)
                blobs.update(more_blobs)
                diff_ids.update(more_diff_ids)
                continue
            blobs.add(image.config.digest)
            blobs.update(layer.digest for layer in image.layers)
            diff_ids.update(image.diff_ids)
        return blobs, diff_ids

    def _broken_reaches(self, manifest: Descriptor) -> tuple[set[str], set[str]]:
        """What an image that does not load still reaches, as far as its verified documents
        say: a broken image keeps what it has; prune never guesses. A readable manifest
        names the config and the layers (an uncompressed layer's diffID is its digest); a
        verified config that does not fit the manifest still names its diffIDs."""
        try:
            manifest_bytes = self.read_blob(manifest)
            parsed = Manifest.parse(manifest_bytes, manifest.media_type)
        except (StoreError, ImageError):
            return set(), set()  # nothing is known beyond the manifest's own digest
        blobs = {parsed.config.digest, *(layer.digest for layer in parsed.layers)}
        diff_ids = {
            layer.digest for layer in parsed.layers if layer_compression(layer.media_type) == "none"
        }
        with contextlib.suppress(StoreError, ImageError):
            config = parse_json_object(self.read_blob(parsed.config), "image config")
            diff_ids.update(diff_ids_of(config))
        return blobs, diff_ids

    def prune(
        self, extra_roots: Iterable[str] = (), wait: bool = True,
        also_keep: Callable[[], tuple[Iterable[str], Iterable[str]]] | None = None,
        remove: Callable[[Path], int] | None = None,
    ) -> int:
        """Remove blobs and ``layers/<hex>`` trees no tagged image reaches, and everything in
        ``tmp/``; return the bytes freed. Waits for running builds unless ``wait`` is False.
        ``also_keep`` is called under the exclusive lock and names more (blob digests,
        diffIDs) to keep: the step cache's entries. ``remove`` removes a tree and says the
        bytes freed (the caller's may also remove what subordinate ids own:
        ``sandbox/userns_rm.py``); without it, ``force_rmtree``."""
        if self._shared_depth:
            raise StoreError(f"prune store {self.root}: this process holds the build lock")
        freed = 0
        with self._flock("gc.lock", fcntl.LOCK_EX, wait):
            keep_blobs, keep_diffs = self.reachable(extra_roots)
            if also_keep is not None:
                more_blobs, more_diffs = also_keep()
                keep_blobs.update(more_blobs)
                keep_diffs.update(more_diffs)
            blobs_root = self.root / "blobs"
            for alg_dir in sorted(blobs_root.iterdir()):
                for entry in sorted(alg_dir.iterdir()):
                    if f"{alg_dir.name}:{entry.name}" not in keep_blobs:
                        freed += entry.lstat().st_size
                        entry.unlink()
            keep_hex = {hex_of(d) for d in keep_diffs}
            for entry in sorted(self.layers_dir.iterdir()):
                if entry.name not in keep_hex:
                    freed += _remove_counted(entry, remove)
            for entry in sorted(self.tmp_dir.iterdir()):
                freed += _remove_counted(entry, remove)
            if self.replay_dir.exists():  # a pruned store builds in full again
                force_rmtree(self.replay_dir)
        return freed
