"""OCI image layouts: import an image from one, and write one.

Rules (OCI image-spec image-layout.md, annotations.md):
- A layout is ``oci-layout`` (``{"imageLayoutVersion": "1.0.0"}``), ``index.json`` and
  ``blobs/<alg>/<hex>``. The image is chosen by ``org.opencontainers.image.ref.name`` (or
  containerd's ``io.containerd.image.name``), or by its digest (a ``sha256:...`` in place
  of the tag names the index entry of that digest); without a tag the layout must hold one image,
  or only per-platform manifests. Nested indexes are resolved for the requested platform,
  as containerd's ``platforms.Only`` matcher does.
- Import reads through a ``BlobSource`` (a directory here, a tar in ``archives.py``) and
  verifies while streaming: every blob's digest and size, JSON documents capped at 4 MiB,
  every layer's diffID against the config's ``rootfs.diff_ids``. Blobs are staged and
  committed to the store only after the whole image verified, so a failed import leaves
  the store exactly as it was.
- Blobs inside a layout directory are opened relative to directory descriptors with
  ``O_NOFOLLOW``: a symlink planted in ``blobs/`` is never followed to a host file.
- Writing adds to an existing layout (blobs first, ``index.json`` last, each by temp file
  + rename), replacing an entry that carried the same ref name, as skopeo does.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, Protocol

from rootbuild.errors import ImageError
from rootbuild.image.digest import (
    CHUNK,
    MAX_JSON_SIZE,
    diff_id_of,
    parse_digest,
    read_verified,
    sniff_compression,
)
from rootbuild.image.oci import (
    ANNOTATION_CONTAINERD_NAME,
    ANNOTATION_REF_NAME,
    INDEX_TYPES,
    MANIFEST_TYPES,
    OCI_LAYER_FOR,
    OCI_LAYOUT_VERSION,
    Descriptor,
    Index,
    Manifest,
    StoredImage,
    canonical_json,
    diff_ids_of,
    layer_compression,
    parse_json_object,
    select_platform,
)
from rootbuild.image.store import Staging, Store
from rootbuild.platform import Platform

MAX_INDEX_DEPTH = 4


class BlobSource(Protocol):
    """Read access to an OCI layout, wherever it lives."""

    description: str

    def read_file(self, name: str, max_size: int = MAX_JSON_SIZE) -> bytes | None:
        """A top-level file (``oci-layout``, ``index.json``); None if absent."""
        ...

    def open_blob(self, digest: str) -> BinaryIO | None:
        """The blob stored under ``digest`` (unverified), or None if absent."""
        ...


class LayoutDirSource:
    """A layout directory, read through directory descriptors with ``O_NOFOLLOW``."""

    def __init__(self, path: Path) -> None:
        self.description = str(path)
        try:
            self._fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise ImageError(f"open OCI layout {path}: {exc.strerror or exc}") from exc

    def close(self) -> None:
        os.close(self._fd)

    def __enter__(self) -> LayoutDirSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _open(self, parts: list[str], dir_fd: int) -> BinaryIO | None:
        fd = dir_fd
        try:
            for n, part in enumerate(parts):
                last = n == len(parts) - 1
                flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
                new = os.open(part, flags if last else flags | os.O_DIRECTORY, dir_fd=fd)
                if fd != dir_fd:
                    os.close(fd)
                fd = new
        except FileNotFoundError:
            if fd != dir_fd:
                os.close(fd)
            return None
        except OSError as exc:
            if fd != dir_fd:
                os.close(fd)
            raise ImageError(
                f"read {'/'.join(parts)} in {self.description}: {exc.strerror or exc}"
            ) from exc
        f = os.fdopen(fd, "rb")
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            f.close()
            raise ImageError(f"read {'/'.join(parts)} in {self.description}: not a regular file")
        return f

    def read_file(self, name: str, max_size: int = MAX_JSON_SIZE) -> bytes | None:
        f = self._open([name], self._fd)
        if f is None:
            return None
        with f:
            return read_verified(f, name, max_size=max_size)

    def open_blob(self, digest: str) -> BinaryIO | None:
        algorithm, encoded = parse_digest(digest)
        return self._open(["blobs", algorithm, encoded], self._fd)


def check_layout_version(source: BlobSource) -> None:
    data = source.read_file("oci-layout")
    if data is None:
        raise ImageError(f"read OCI layout {source.description}: no oci-layout file")
    version = parse_json_object(data, "oci-layout").get("imageLayoutVersion")
    if not isinstance(version, str) or not version.startswith("1."):
        raise ImageError(
            f"read OCI layout {source.description}: unsupported imageLayoutVersion {version!r}"
        )


_DIGEST_NAME = re.compile(r"sha256:[0-9a-f]{64}")


def _ref_name(desc: Descriptor) -> str | None:
    return desc.annotation(ANNOTATION_REF_NAME) or desc.annotation(ANNOTATION_CONTAINERD_NAME)


def select_top(index: Index, tag: str | None, platform: Platform, where: str) -> Descriptor:
    """Choose the ``index.json`` entry named ``tag`` (or the only one) for ``platform``; a
    ``tag`` that is a digest (``sha256:...``) names the entry of that digest instead."""
    if tag is not None and _DIGEST_NAME.fullmatch(tag):
        candidates = tuple(d for d in index.manifests if d.digest == tag)
        if not candidates:
            raise ImageError(f"read OCI layout {where}: no image with digest {tag}")
    elif tag is not None:
        candidates = tuple(
            d
            for d in index.manifests
            if tag in (d.annotation(ANNOTATION_REF_NAME), d.annotation(ANNOTATION_CONTAINERD_NAME))
        )
        if not candidates:
            names = sorted({n for d in index.manifests if (n := _ref_name(d))})
            raise ImageError(
                f"read OCI layout {where}: no image named {tag!r}"
                f" (has: {', '.join(names) or 'none'})"
            )
    else:
        candidates = index.manifests
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        raise ImageError(f"read OCI layout {where}: index.json lists no images")
    if all(d.platform is not None for d in candidates):
        chosen = select_platform(candidates, platform)
        if chosen is None:
            raise ImageError(f"read OCI layout {where}: no image for platform {platform}")
        return chosen
    names = sorted({n for d in candidates if (n := _ref_name(d))})
    raise ImageError(
        f"read OCI layout {where}: holds {len(candidates)} images, name one with :TAG"
        f" (has: {', '.join(names) or 'no names'})"
    )


def fetch_json(source: BlobSource, desc: Descriptor, what: str) -> bytes:
    """A manifest/index/config blob from ``source``, verified and capped."""
    f = source.open_blob(desc.digest)
    if f is None:
        raise ImageError(f"read {what} {desc.digest} from {source.description}: blob missing")
    with f:
        return read_verified(f, f"{what} {desc.digest}", desc.digest, desc.size, MAX_JSON_SIZE)


def stage_layer(
    staging: Staging,
    src: BinaryIO,
    diff_id: str,
    what: str,
    desc: Descriptor | None = None,
) -> Descriptor:
    """Stream one layer into ``staging``, verify its digest/size (when ``desc`` is given) and
    that its uncompressed sha256 is ``diff_id``. Without ``desc`` (docker-archive) the
    compression is sniffed and the layer gets the matching OCI media type."""
    head = src.read(CHUNK)
    if desc is not None:
        compression = layer_compression(desc.media_type)
        media_type, digest, size = desc.media_type, desc.digest, desc.size
    else:
        compression = sniff_compression(head)
        media_type, digest, size = OCI_LAYER_FOR[compression], None, None
        if compression == "none":
            digest = diff_id  # the plain tar *is* the diff: check while streaming
    with staging.ingest(digest, size, media_type, what) as writer:
        chunk = head
        while chunk:
            writer.write(chunk)
            chunk = src.read(CHUNK)
    staged = writer.descriptor
    assert staged is not None
    actual = staged.digest
    if compression != "none":
        with staging.open_blob(staged.digest) as f:
            actual = diff_id_of(f, compression, what)
    if actual != diff_id:
        raise ImageError(f"verify {what}: diffID is {actual}, config says {diff_id}")
    if desc is not None:
        return desc
    return staged


def _stage_manifest(
    staging: Staging, source: BlobSource, desc: Descriptor, platform: Platform, depth: int
) -> StoredImage:
    where = source.description
    if desc.media_type in INDEX_TYPES:
        if depth >= MAX_INDEX_DEPTH:
            raise ImageError(f"read image index {desc.digest} in {where}: nested too deeply")
        nested = Index.parse(fetch_json(source, desc, "image index"), f"index {desc.digest}")
        chosen = select_platform(nested.manifests, platform)
        if chosen is None:
            have = ", ".join(sorted(str(d.platform) for d in nested.manifests if d.platform))
            raise ImageError(
                f"read image index {desc.digest} in {where}: no image for platform {platform}"
                f" (has: {have or 'none'})"
            )
        return _stage_manifest(staging, source, chosen, platform, depth + 1)
    if desc.media_type not in MANIFEST_TYPES:
        raise ImageError(f"read image {desc.digest} in {where}: unsupported {desc.media_type!r}")
    manifest_bytes = fetch_json(source, desc, "manifest")
    manifest = Manifest.parse(manifest_bytes, desc.media_type)
    config_bytes = fetch_json(source, manifest.config, "image config")
    diff_ids = diff_ids_of(parse_json_object(config_bytes, "image config"))
    if len(diff_ids) != len(manifest.layers):
        raise ImageError(
            f"read image {desc.digest} in {where}: config lists {len(diff_ids)} diff_ids "
            f"for {len(manifest.layers)} layers"
        )
    for n, (layer, diff_id) in enumerate(zip(manifest.layers, diff_ids, strict=True)):
        what = f"layer {n} ({layer.digest})"
        src = source.open_blob(layer.digest)
        if src is None:
            raise ImageError(f"read {what} from {where}: blob missing")
        with src:
            stage_layer(staging, src, diff_id, what, layer)
    staging.put_bytes(config_bytes, manifest.config.media_type)
    plain = Descriptor(desc.media_type, desc.digest, desc.size)
    staging.put_bytes(manifest_bytes, plain.media_type)
    return StoredImage.from_documents(plain, manifest_bytes, config_bytes)


def import_from_source(
    store: Store, source: BlobSource, tag: str | None, platform: Platform
) -> StoredImage:
    """Import the image ``tag`` (or the only one) of a layout; atomic (see module rules)."""
    check_layout_version(source)
    index_bytes = source.read_file("index.json")
    if index_bytes is None:
        raise ImageError(f"read OCI layout {source.description}: no index.json")
    index = Index.parse(index_bytes, "index.json")
    top = select_top(index, tag, platform, source.description)
    with store.shared_lock(), store.stage() as staging:
        image = _stage_manifest(staging, source, top, platform, 0)
        staging.commit()
    return image


def import_layout_dir(store: Store, path: Path, tag: str | None, platform: Platform) -> StoredImage:
    """``oci:DIR[:TAG]``."""
    with LayoutDirSource(path) as source:
        return import_from_source(store, source, tag, platform)


# -- writing ------------------------------------------------------------------------------


def image_blobs(image: StoredImage) -> list[Descriptor]:
    """Every blob of ``image``, each once: layers, config, manifest."""
    seen: dict[str, Descriptor] = {}
    for desc in (*image.layers, image.config, image.manifest):
        seen.setdefault(desc.digest, desc)
    return list(seen.values())


def _atomic_write(path: Path, data: bytes) -> None:
    fd, name = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(name, 0o644)
        os.replace(name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name)
        raise


def index_entry(image: StoredImage, tag: str | None) -> Descriptor:
    """The ``index.json`` descriptor for ``image`` (ref name annotation when tagged)."""
    desc = Descriptor(image.manifest.media_type, image.manifest.digest, image.manifest.size)
    return desc.with_annotations({ANNOTATION_REF_NAME: tag}) if tag else desc


def merged_index(existing: Index | None, entry: Descriptor) -> Index:
    """``existing`` plus ``entry``, dropping entries of the same ref name (or, untagged, of
    the same digest and no name)."""
    name = entry.annotation(ANNOTATION_REF_NAME)
    kept = [
        d
        for d in (existing.manifests if existing else ())
        if not (
            (name is not None and d.annotation(ANNOTATION_REF_NAME) == name)
            or (
                name is None
                and d.annotation(ANNOTATION_REF_NAME) is None
                and d.digest == entry.digest
            )
        )
    ]
    annotations = existing.annotations if existing else ()
    return Index((*kept, entry), annotations)


def layout_file() -> bytes:
    return canonical_json({"imageLayoutVersion": OCI_LAYOUT_VERSION})


@contextlib.contextmanager
def _open_layout_for_write(path: Path) -> Iterator[Index | None]:
    if path.exists() and not path.is_dir():
        raise ImageError(f"write OCI layout {path}: exists and is not a directory")
    if path.is_dir() and any(path.iterdir()):
        with LayoutDirSource(path) as source:
            check_layout_version(source)
            data = source.read_file("index.json")
            yield Index.parse(data, f"{path}/index.json") if data is not None else None
        return
    path.mkdir(parents=True, exist_ok=True)
    yield None


def write_layout_dir(store: Store, image: StoredImage, path: Path, tag: str | None) -> None:
    """``oci:DIR[:TAG]``: create or add to a layout directory."""
    try:
        with _open_layout_for_write(path) as existing:
            if not (path / "oci-layout").exists():
                _atomic_write(path / "oci-layout", layout_file())
            for desc in image_blobs(image):
                algorithm, encoded = parse_digest(desc.digest)
                blob_dir = path / "blobs" / algorithm
                blob_dir.mkdir(parents=True, exist_ok=True)
                dest = blob_dir / encoded
                if dest.is_file() and not dest.is_symlink() and dest.stat().st_size == desc.size:
                    continue
                fd, name = tempfile.mkstemp(prefix=f".{encoded}-", dir=blob_dir)
                try:
                    with os.fdopen(fd, "wb") as out, store.open_blob(desc.digest) as src:
                        shutil.copyfileobj(src, out, CHUNK)
                        out.flush()
                        os.fsync(out.fileno())
                    os.chmod(name, 0o644)
                    os.replace(name, dest)
                except BaseException:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(name)
                    raise
            index = merged_index(existing, index_entry(image, tag))
            _atomic_write(path / "index.json", index.to_bytes())
    except OSError as exc:
        raise ImageError(f"write OCI layout {path}: {exc.strerror or exc}") from exc
