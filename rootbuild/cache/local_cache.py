"""The directory transport of the step cache: an OCI image layout (``type=local``).

Layout (image-spec image-layout.md)::

    DIR/oci-layout              {"imageLayoutVersion": "1.0.0"}
    DIR/index.json              one manifest, annotated org.opencontainers.image.ref.name=latest
    DIR/blobs/<alg>/<hex>       the manifest, the cache config and the layers

Rules:
- Export replaces the previous cache in DIR, crash-safe: every blob is written first (temp
  file in its blob directory, verified while copied, fsynced, renamed to its digest), then
  ``index.json`` by temp file + fsync + rename, and only then are the blobs the new index no
  longer reaches removed. A crash at any point leaves an index whose blobs are all there.
- A blob already in DIR (a regular file of the right size) is not copied again; its
  content is checked when an import fetches it.
- DIR may be new, empty, or a previous cache; an OCI layout that holds anything else (an
  image) is refused rather than overwritten.
- Reading goes through directory descriptors with ``O_NOFOLLOW`` (``layout.LayoutDirSource``):
  a symlink planted in ``blobs/`` is never followed. A missing DIR or ``index.json`` is no
  cache (``read_manifest`` answers None); everything read is size-capped and verified.
- Blocking work runs in a worker thread (``trio.to_thread``); ``write_local_cache`` is the
  synchronous part the caller runs there.
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
import re
import stat
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import BinaryIO

import trio

from rootbuild.errors import ImageError
from rootbuild.image.digest import Verifier, copy_verified, parse_digest
from rootbuild.image.layout import (
    LayoutDirSource,
    check_layout_version,
    fetch_json,
    layout_file,
    stage_layer,
)
from rootbuild.image.oci import (
    ANNOTATION_REF_NAME,
    OCI_MANIFEST,
    Descriptor,
    Index,
    parse_json_object,
)
from rootbuild.image.store import Staging, Store

CACHE_TAG = "latest"
_BLOB_NAME = re.compile(r"[a-f0-9]{64}|[a-f0-9]{128}")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _install(target: Path, fill: Callable[[BinaryIO], None]) -> None:
    """Write ``target`` through a temp file beside it: fill, fsync, chmod 0644, rename."""
    fd, name = tempfile.mkstemp(prefix=f".{target.name}-", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            fill(out)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(name, 0o644)
        os.replace(name, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name)
        raise


def _put(out: BinaryIO, data: bytes) -> None:
    out.write(data)


def _present(path: Path, size: int) -> bool:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    return stat.S_ISREG(st.st_mode) and st.st_size == size


def _blob_target(dest: Path, digest: str) -> Path:
    algorithm, encoded = parse_digest(digest)
    return dest / "blobs" / algorithm / encoded


def _check_replaceable(dest: Path, config_type: str) -> None:
    """Refuse to replace an OCI layout in ``dest`` that is not a step cache."""
    with LayoutDirSource(dest) as source:
        data = source.read_file("index.json")
        if data is None:
            return
        index = Index.parse(data, f"{dest}/index.json")
        for desc in index.manifests:
            kind = None
            if desc.media_type == OCI_MANIFEST:
                try:
                    manifest = parse_json_object(fetch_json(source, desc, "manifest"), "manifest")
                except ImageError as exc:
                    if "blob missing" in exc.message:
                        continue  # a broken earlier cache: nothing of value to keep
                    raise
                config = manifest.get("config")
                kind = config.get("mediaType") if isinstance(config, dict) else None
            if kind != config_type:
                raise ImageError(
                    f"export cache to {dest}: it holds an OCI layout that is not a rootbuild "
                    "cache; choose a new or empty directory for dest"
                )


def _prune(dest: Path, keep: set[str]) -> None:
    """Remove blobs no longer reached (temp files, which start with '.', stay)."""
    blobs = dest / "blobs"
    for algorithm in os.listdir(blobs):
        directory = blobs / algorithm
        if not directory.is_dir() or directory.is_symlink():
            continue
        for name in os.listdir(directory):
            if _BLOB_NAME.fullmatch(name) and f"{algorithm}:{name}" not in keep:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(directory / name)


def write_local_cache(
    store: Store,
    dest: Path,
    layers: Sequence[Descriptor],
    documents: Sequence[tuple[Descriptor, bytes]],
    manifest: Descriptor,
) -> tuple[int, int]:
    """Write the cache into ``dest`` (see module rules): ``layers`` from the store,
    ``documents`` (config first, then manifest) from memory, ``manifest`` as the index's one
    entry. Returns (blobs written, blobs already there). Blocking."""
    try:
        return _write(store, dest, layers, documents, manifest)
    except OSError as exc:
        raise ImageError(f"export cache to {dest}: {exc.strerror or exc}") from exc


def _write(
    store: Store,
    dest: Path,
    layers: Sequence[Descriptor],
    documents: Sequence[tuple[Descriptor, bytes]],
    manifest: Descriptor,
) -> tuple[int, int]:
    if dest.exists() and not dest.is_dir():
        raise ImageError(f"export cache to {dest}: exists and is not a directory")
    dest.mkdir(parents=True, exist_ok=True)
    _check_replaceable(dest, documents[0][0].media_type)
    _install(dest / "oci-layout", lambda out: _put(out, layout_file()))
    written = present = 0
    blobs: list[tuple[Descriptor, Callable[[], BinaryIO]]] = [
        (layer, functools.partial(store.open_blob, layer.digest)) for layer in layers
    ]
    blobs += [(desc, functools.partial(io.BytesIO, data)) for desc, data in documents]
    dirs: set[Path] = set()
    for desc, opener in blobs:
        target = _blob_target(dest, desc.digest)
        if _present(target, desc.size):
            present += 1
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        dirs.add(target.parent)

        def fill(
            out: BinaryIO, desc: Descriptor = desc, opener: Callable[[], BinaryIO] = opener
        ) -> None:
            with opener() as src:
                copy_verified(src, out, Verifier(f"blob {desc.digest}", desc.digest, desc.size))

        _install(target, fill)
        written += 1
    for directory in dirs:
        _fsync_dir(directory)
    index = Index((manifest.with_annotations({ANNOTATION_REF_NAME: CACHE_TAG}),))
    _install(dest / "index.json", lambda out: _put(out, index.to_bytes()))
    _fsync_dir(dest)
    _prune(dest, {desc.digest for desc, _ in blobs})
    return written, present


class LocalCacheSource:
    """The cache in an OCI layout directory (see module rules)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.where = str(path)

    async def open(self) -> None:
        pass

    async def aclose(self) -> None:
        pass

    async def read_manifest(self) -> bytes | None:
        return await trio.to_thread.run_sync(self._read_manifest)

    def _read_manifest(self) -> bytes | None:
        if not self.path.exists():
            return None
        if not self.path.is_dir():
            raise ImageError(f"read cache {self.where}: not a directory")
        with LayoutDirSource(self.path) as source:
            data = source.read_file("index.json")
            if data is None:
                return None
            check_layout_version(source)
            index = Index.parse(data, f"index.json of {self.where}")
            named = [d for d in index.manifests if d.annotation(ANNOTATION_REF_NAME) == CACHE_TAG]
            if not named:
                raise ImageError(f"read cache {self.where}: index.json names no {CACHE_TAG!r}")
            desc = named[-1]
            if desc.media_type != OCI_MANIFEST:
                raise ImageError(
                    f"read cache {self.where}: not a cache manifest (media type "
                    f"{desc.media_type!r})"
                )
            return fetch_json(source, desc, "cache manifest")

    async def read_config(self, desc: Descriptor) -> bytes:
        def read() -> bytes:
            with LayoutDirSource(self.path) as source:
                return fetch_json(source, desc, "cache config")

        return await trio.to_thread.run_sync(read)

    async def fetch_layer(self, staging: Staging, layer: Descriptor, diff_id: str) -> None:
        def fetch() -> None:
            with LayoutDirSource(self.path) as source:
                src = source.open_blob(layer.digest)
                if src is None:
                    raise ImageError(
                        f"fetch cache layer {layer.digest} from {self.where}: blob missing"
                    )
                with src:
                    what = f"cache layer {layer.digest} in {self.where}"
                    stage_layer(staging, src, diff_id, what, layer)

        await trio.to_thread.run_sync(fetch)
