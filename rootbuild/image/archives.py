"""Image archives (``oci-archive``, ``docker-archive``) and the import/export entry points.

Rules:
- Archives are read with ``tarfile`` headers and member data only; nothing is extracted to
  disk. Member names are normalised inside the archive's own namespace; symlinks and hard
  links between members (``docker save`` links duplicate layers) are followed there, at
  most 8 hops, never on the host.
- ``docker-archive`` (the ``docker save`` format: ``manifest.json`` with Config, RepoTags,
  Layers) is imported as an OCI manifest: the config is kept byte for byte, each layer is
  stored as it is after its sha256 (or, if ``docker save`` wrote it compressed, the sha256
  of its decompressed bytes) matched the config's ``rootfs.diff_ids``.
- Written archives are deterministic (sorted entries, zero times and owners, fixed modes)
  and appear atomically: temp file in the destination directory, fsync, rename.
- ``docker-archive`` output holds uncompressed layers (``<diffID hex>/layer.tar``), which
  ``docker load`` and ``podman load`` accept; compressed store layers are decompressed and
  re-verified against their diffID on the way out.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import posixpath
import shutil
import tarfile
import tempfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, BinaryIO

from rootbuild.errors import ImageError, UsageError
from rootbuild.image.digest import (
    CHUNK,
    MAX_JSON_SIZE,
    Verifier,
    copy_decompressed,
    hex_of,
    parse_digest,
    read_verified,
)
from rootbuild.image.layout import (
    image_blobs,
    import_from_source,
    import_layout_dir,
    index_entry,
    layout_file,
    merged_index,
    stage_layer,
    write_layout_dir,
)
from rootbuild.image.oci import (
    OCI_CONFIG,
    OCI_MANIFEST,
    Descriptor,
    Manifest,
    StoredImage,
    diff_ids_of,
    layer_compression,
    parse_json_object,
)
from rootbuild.image.refs import ImageRef, OutputRef, is_registry_reference, normalize_name
from rootbuild.image.store import Store
from rootbuild.platform import Platform

MAX_LINK_HOPS = 8
_READ_ERRORS = (tarfile.TarError, OSError, EOFError, zlib.error)


def _clean(name: str) -> str:
    """A member name inside the archive namespace ("" for the root)."""
    norm = posixpath.normpath("/" + name).lstrip("/")
    return "" if norm == "." else norm


class _MemberReader(io.RawIOBase):
    """A member's data; read errors (truncation, bad compression) become ImageError."""

    def __init__(self, inner: IO[bytes], what: str) -> None:
        self._inner = inner
        self._what = what

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        try:
            data = self._inner.read(len(buffer))
        except _READ_ERRORS as exc:
            raise ImageError(f"read {self._what}: {exc}") from exc
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        self._inner.close()
        super().close()


class TarSource:
    """A tar archive as a ``BlobSource``: one pass over the headers, then random access."""

    def __init__(self, path: Path) -> None:
        self.description = str(path)
        self._members: dict[str, tarfile.TarInfo] = {}
        try:
            self._tar = tarfile.open(path, "r:*")  # noqa: SIM115 -- closed by close()
        except (*_READ_ERRORS,) as exc:
            raise ImageError(f"read archive {path}: {exc}") from exc
        try:
            for member in self._tar:
                name = _clean(member.name)
                if name:
                    self._members[name] = member  # a later entry wins, as on extraction
        except (*_READ_ERRORS,) as exc:
            self._tar.close()
            raise ImageError(f"read archive {path}: {exc}") from exc

    def close(self) -> None:
        self._tar.close()

    def __enter__(self) -> TarSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _resolve(self, name: str) -> tarfile.TarInfo | None:
        for _ in range(MAX_LINK_HOPS):
            member = self._members.get(name)
            if member is None or member.isreg():
                return member
            if member.issym():
                name = _clean(posixpath.join(posixpath.dirname(name), member.linkname))
            elif member.islnk():
                name = _clean(member.linkname)
            else:
                raise ImageError(f"read {name} in {self.description}: not a regular file")
        raise ImageError(f"read {name} in {self.description}: too many levels of links")

    def open_member(self, name: str) -> BinaryIO | None:
        member = self._resolve(_clean(name))
        if member is None:
            return None
        try:
            inner = self._tar.extractfile(member)
        except _READ_ERRORS as exc:
            raise ImageError(f"read {name} in {self.description}: {exc}") from exc
        assert inner is not None
        what = f"{name} in {self.description}"
        return io.BufferedReader(_MemberReader(inner, what), CHUNK)

    def read_file(self, name: str, max_size: int = MAX_JSON_SIZE) -> bytes | None:
        f = self.open_member(name)
        if f is None:
            return None
        with f:
            return read_verified(f, f"{name} in {self.description}", max_size=max_size)

    def open_blob(self, digest: str) -> BinaryIO | None:
        algorithm, encoded = parse_digest(digest)
        return self.open_member(f"blobs/{algorithm}/{encoded}")


# -- docker-archive import ----------------------------------------------------------------


def _select_docker_entry(entries: list[Any], name: str | None, where: str) -> dict[str, Any]:
    if not entries or not all(isinstance(e, dict) for e in entries):
        raise ImageError(f"read docker archive {where}: manifest.json lists no images")
    if name is None:
        if len(entries) != 1:
            raise ImageError(
                f"read docker archive {where}: holds {len(entries)} images, name one with "
                ":NAME:TAG or :@INDEX"
            )
        return dict(entries[0])
    if name.startswith("@"):
        n = int(name[1:])
        if n >= len(entries):
            raise ImageError(f"read docker archive {where}: no image @{n}")
        return dict(entries[n])
    for entry in entries:
        for repo_tag in entry.get("RepoTags") or []:
            with contextlib.suppress(UsageError, TypeError):
                if normalize_name(repo_tag) == name:
                    return dict(entry)
    raise ImageError(f"read docker archive {where}: no image tagged {name!r}")


def import_docker_archive(store: Store, path: Path, name: str | None) -> StoredImage:
    """``docker-archive:FILE[:NAME:TAG|:@N]``: verify and store as an OCI image."""
    with TarSource(path) as source:
        where = source.description
        data = source.read_file("manifest.json")
        if data is None:
            raise ImageError(f"read docker archive {where}: no manifest.json")
        try:
            entries = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ImageError(f"read docker archive {where}: manifest.json: {exc}") from exc
        if not isinstance(entries, list):
            raise ImageError(f"read docker archive {where}: manifest.json is not a list")
        entry = _select_docker_entry(entries, name, where)
        config_path, layer_paths = entry.get("Config"), entry.get("Layers")
        if (
            not isinstance(config_path, str)
            or not isinstance(layer_paths, list)
            or not all(isinstance(p, str) for p in layer_paths)
        ):
            raise ImageError(f"read docker archive {where}: manifest.json needs Config and Layers")
        config_bytes = source.read_file(config_path)
        if config_bytes is None:
            raise ImageError(f"read docker archive {where}: config {config_path!r} missing")
        diff_ids = diff_ids_of(parse_json_object(config_bytes, "image config"))
        if len(diff_ids) != len(layer_paths):
            raise ImageError(
                f"read docker archive {where}: config lists {len(diff_ids)} diff_ids for "
                f"{len(layer_paths)} layers"
            )
        with store.shared_lock(), store.stage() as staging:
            layers = []
            for layer_path, diff_id in zip(layer_paths, diff_ids, strict=True):
                what = f"layer {layer_path!r} in {where}"
                src = source.open_member(layer_path)
                if src is None:
                    raise ImageError(f"read {what}: missing")
                with src:
                    layers.append(stage_layer(staging, src, diff_id, what))
            config = staging.put_bytes(config_bytes, OCI_CONFIG)
            manifest_bytes = Manifest(OCI_MANIFEST, config, tuple(layers)).to_bytes()
            manifest = staging.put_bytes(manifest_bytes, OCI_MANIFEST)
            staging.commit()
    return StoredImage.from_documents(manifest, manifest_bytes, config_bytes)


# -- writing ------------------------------------------------------------------------------


def _info(name: str, size: int = 0, directory: bool = False) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.type = tarfile.DIRTYPE if directory else tarfile.REGTYPE
    info.mode = 0o755 if directory else 0o644
    return info


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    tar.addfile(_info(name, len(data)), io.BytesIO(data))


@contextlib.contextmanager
def _atomic_tar(dest: Path) -> Iterator[tarfile.TarFile]:
    """A tar written to a temp file beside ``dest``, renamed into place on success."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{dest.name}-", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            with tarfile.open(fileobj=f, mode="w", format=tarfile.PAX_FORMAT) as tar:
                yield tar
            f.flush()
            os.fsync(f.fileno())
        os.chmod(name, 0o644)
        os.replace(name, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name)
        raise


def write_oci_archive(store: Store, image: StoredImage, dest: Path, tag: str | None) -> None:
    """``oci-archive:FILE[:TAG]``: a tar of a one-image OCI layout."""
    with _atomic_tar(dest) as tar:
        _add_bytes(tar, "oci-layout", layout_file())
        _add_bytes(tar, "index.json", merged_index(None, index_entry(image, tag)).to_bytes())
        blobs = sorted(image_blobs(image), key=lambda d: d.digest)
        tar.addfile(_info("blobs/", directory=True))
        for algorithm in sorted({parse_digest(d.digest)[0] for d in blobs}):
            tar.addfile(_info(f"blobs/{algorithm}/", directory=True))
        for desc in blobs:
            algorithm, encoded = parse_digest(desc.digest)
            with store.open_blob(desc.digest) as src:
                tar.addfile(_info(f"blobs/{algorithm}/{encoded}", desc.size), src)


def _add_plain_layer(
    store: Store, tar: tarfile.TarFile, desc: Descriptor, diff_id: str, name: str
) -> None:
    compression = layer_compression(desc.media_type)
    if compression == "none":
        with store.open_blob(desc.digest) as src:
            tar.addfile(_info(name, desc.size), src)
        return
    work = store.staging_dir()
    try:
        plain = work / "layer.tar"
        with store.open_blob(desc.digest) as src, open(plain, "wb") as out:
            copy_decompressed(src, compression, out, Verifier(f"layer {desc.digest}", diff_id))
        with open(plain, "rb") as src:
            tar.addfile(_info(name, plain.stat().st_size), src)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def write_docker_archive(store: Store, image: StoredImage, dest: Path, name: str | None) -> None:
    """``docker-archive:FILE[:NAME:TAG]``: the ``docker save`` format."""
    config_name = f"{hex_of(image.config.digest)}.json"
    layer_names: list[str] = []
    with _atomic_tar(dest) as tar:
        written: set[str] = set()
        for desc, diff_id in zip(image.layers, image.diff_ids, strict=True):
            layer_dir = hex_of(diff_id)
            layer_names.append(f"{layer_dir}/layer.tar")
            if layer_dir in written:
                continue
            written.add(layer_dir)
            tar.addfile(_info(f"{layer_dir}/", directory=True))
            _add_plain_layer(store, tar, desc, diff_id, f"{layer_dir}/layer.tar")
        _add_bytes(tar, config_name, store.read_blob(image.config))
        manifest = [
            {"Config": config_name, "RepoTags": [name] if name else [], "Layers": layer_names}
        ]
        _add_bytes(tar, "manifest.json", json.dumps(manifest, separators=(",", ":")).encode())


# -- entry points -------------------------------------------------------------------------


def import_image(store: Store, ref: ImageRef, platform: Platform) -> StoredImage:
    """Bring the base image ``ref`` into the store (verified, atomic) and return it."""
    if ref.transport == "scratch":
        raise ImageError("import image scratch: scratch is the empty root, not an image")
    if ref.transport == "store":
        assert ref.name is not None
        image = store.resolve(ref.name)
        if image is not None:
            return image
        hint = (
            "rootbuild does not pull from registries; "
            "fetch it with skopeo copy to an oci-archive: and use that"
            if is_registry_reference(ref.text)
            else "build or import it first"
        )
        raise ImageError(f"find image {ref.name!r}: not in the local store ({hint})")
    path = Path(ref.path)
    if ref.transport == "oci":
        return import_layout_dir(store, path, ref.name, platform)
    if ref.transport == "oci-archive":
        with TarSource(path) as source:
            return import_from_source(store, source, ref.name, platform)
    return import_docker_archive(store, path, ref.name)


def export_image(store: Store, image: StoredImage, dest: OutputRef) -> None:
    """Write ``image`` to ``dest`` (``oci:``, ``oci-archive:``, ``docker-archive:``)."""
    path = Path(dest.path)
    with store.shared_lock():
        try:
            if dest.transport == "oci":
                write_layout_dir(store, image, path, dest.name)
            elif dest.transport == "oci-archive":
                write_oci_archive(store, image, path, dest.name)
            elif dest.transport == "docker-archive":
                write_docker_archive(store, image, path, dest.name)
            else:
                raise UsageError(f"export image to {dest.text!r}: not an image format")
        except OSError as exc:
            raise ImageError(f"export image to {dest.text}: {exc.strerror or exc}") from exc
