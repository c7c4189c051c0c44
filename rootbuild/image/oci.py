"""OCI and Docker image documents as frozen values: descriptors, manifests, indexes.

Rules (OCI image-spec v1.1 descriptor.md, manifest.md, image-index.md, config.md; Docker
image manifest v2 schema 2):
- Values are frozen; parsing validates every field rootbuild relies on and raises
  ``ImageError`` naming what is wrong. Unknown fields are ignored, as the spec requires.
- Docker schema-2 manifests and manifest lists are read as their OCI equivalents (same shape,
  different media types); schema 1 is refused.
- Documents rootbuild *creates* are serialised as canonical compact JSON (sorted keys, no
  whitespace, UTF-8); documents read from elsewhere keep their original bytes, since their
  digest is over those bytes.
- ``StoredImage`` is the value the rest of rootbuild passes around for one single-platform
  image whose blobs are in the store.
This module is pure: no filesystem, no network.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from rootbuild.errors import ImageError
from rootbuild.image.digest import Compression, check_digest
from rootbuild.platform import Platform

# OCI media types (image-spec media-types.md).
OCI_LAYOUT_VERSION = "1.0.0"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
OCI_LAYER_ND = "application/vnd.oci.image.layer.nondistributable.v1.tar"
OCI_LAYER_ND_GZIP = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
OCI_LAYER_ND_ZSTD = "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd"
# Docker media types (distribution manifest-v2-2.md).
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_LAYER_FOREIGN_GZIP = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"

ANNOTATION_REF_NAME = "org.opencontainers.image.ref.name"
ANNOTATION_CONTAINERD_NAME = "io.containerd.image.name"

MANIFEST_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_MANIFEST_LIST})
CONFIG_TYPES = frozenset({OCI_CONFIG, DOCKER_CONFIG})
_LAYER_COMPRESSION: dict[str, Compression] = {
    OCI_LAYER: "none",
    OCI_LAYER_GZIP: "gzip",
    OCI_LAYER_ZSTD: "zstd",
    OCI_LAYER_ND: "none",
    OCI_LAYER_ND_GZIP: "gzip",
    OCI_LAYER_ND_ZSTD: "zstd",
    DOCKER_LAYER: "none",
    DOCKER_LAYER_GZIP: "gzip",
    DOCKER_LAYER_FOREIGN_GZIP: "gzip",
}
OCI_LAYER_FOR: dict[Compression, str] = {
    "none": OCI_LAYER,
    "gzip": OCI_LAYER_GZIP,
    "zstd": OCI_LAYER_ZSTD,
}


def canonical_json(value: object) -> bytes:
    """Canonical compact JSON: sorted keys, no insignificant whitespace, UTF-8."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def parse_json_object(data: bytes, what: str) -> dict[str, Any]:
    """Decode a JSON document that must be an object."""
    try:
        value = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ImageError(f"parse {what}: invalid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise ImageError(f"parse {what}: expected a JSON object")
    return value


def layer_compression(media_type: str) -> Compression:
    """The compression a layer media type implies; ImageError for non-layer types."""
    try:
        return _LAYER_COMPRESSION[media_type]
    except KeyError:
        raise ImageError(f"read layer: unsupported layer media type {media_type!r}") from None


def _annotations(value: object, what: str) -> tuple[tuple[str, str], ...]:
    if value is None:
        return ()
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise ImageError(f"parse {what}: annotations must map strings to strings")
    return tuple(sorted(value.items()))


def _platform(value: object, what: str) -> Platform | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ImageError(f"parse {what}: platform must be an object")
    os_name, arch, variant = value.get("os"), value.get("architecture"), value.get("variant")
    if not isinstance(os_name, str) or not isinstance(arch, str):
        raise ImageError(f"parse {what}: platform needs os and architecture strings")
    if variant is not None and not isinstance(variant, str):
        raise ImageError(f"parse {what}: platform variant must be a string")
    return Platform(os_name, arch, variant or None)


@dataclass(frozen=True)
class Descriptor:
    """An OCI content descriptor (image-spec descriptor.md)."""

    media_type: str
    digest: str
    size: int
    annotations: tuple[tuple[str, str], ...] = ()
    platform: Platform | None = None

    def annotation(self, key: str) -> str | None:
        return dict(self.annotations).get(key)

    def with_annotations(self, annotations: Mapping[str, str]) -> Descriptor:
        return Descriptor(
            self.media_type,
            self.digest,
            self.size,
            tuple(sorted(annotations.items())),
            self.platform,
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "mediaType": self.media_type,
            "digest": self.digest,
            "size": self.size,
        }
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        if self.platform is not None:
            out["platform"] = self.platform.to_oci()
        return out

    @classmethod
    def from_json(cls, value: object, what: str = "descriptor") -> Descriptor:
        if not isinstance(value, dict):
            raise ImageError(f"parse {what}: expected an object")
        media_type, digest, size = value.get("mediaType"), value.get("digest"), value.get("size")
        if not isinstance(media_type, str) or not media_type:
            raise ImageError(f"parse {what}: missing mediaType")
        try:
            check_digest(digest)
        except ImageError as exc:
            raise ImageError(f"parse {what}: {exc.message}") from exc
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise ImageError(f"parse {what}: size must be a non-negative integer")
        assert isinstance(digest, str)
        return cls(
            media_type,
            digest,
            size,
            _annotations(value.get("annotations"), what),
            _platform(value.get("platform"), what),
        )


def _schema_version(obj: Mapping[str, Any], what: str) -> None:
    if obj.get("schemaVersion") != 2:
        raise ImageError(f"parse {what}: unsupported schemaVersion {obj.get('schemaVersion')!r}")


@dataclass(frozen=True)
class Manifest:
    """An image manifest (OCI image-spec manifest.md, or Docker schema 2)."""

    media_type: str
    config: Descriptor
    layers: tuple[Descriptor, ...]
    annotations: tuple[tuple[str, str], ...] = ()

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "schemaVersion": 2,
            "mediaType": self.media_type,
            "config": self.config.to_json(),
            "layers": [layer.to_json() for layer in self.layers],
        }
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        return out

    def to_bytes(self) -> bytes:
        return canonical_json(self.to_json())

    @classmethod
    def parse(cls, data: bytes, media_type: str | None = None) -> Manifest:
        """Parse manifest bytes; ``media_type`` is the descriptor's, if one pointed here."""
        obj = parse_json_object(data, "manifest")
        _schema_version(obj, "manifest")
        declared = obj.get("mediaType")
        if declared is not None and not isinstance(declared, str):
            raise ImageError("parse manifest: mediaType must be a string")
        kind = declared or media_type or OCI_MANIFEST
        if kind not in MANIFEST_TYPES:
            raise ImageError(f"parse manifest: unsupported media type {kind!r}")
        if media_type is not None and declared is not None and declared != media_type:
            raise ImageError(
                f"parse manifest: mediaType {declared!r} differs from descriptor's {media_type!r}"
            )
        config = Descriptor.from_json(obj.get("config"), "manifest config")
        if config.media_type not in CONFIG_TYPES:
            raise ImageError(f"parse manifest: unsupported config media type {config.media_type!r}")
        layers_json = obj.get("layers")
        if not isinstance(layers_json, list):
            raise ImageError("parse manifest: layers must be a list")
        layers = tuple(
            Descriptor.from_json(item, f"manifest layer {n}") for n, item in enumerate(layers_json)
        )
        for layer in layers:
            layer_compression(layer.media_type)
        return cls(kind, config, layers, _annotations(obj.get("annotations"), "manifest"))


@dataclass(frozen=True)
class Index:
    """An image index (OCI image-spec image-index.md) or Docker manifest list."""

    manifests: tuple[Descriptor, ...]
    annotations: tuple[tuple[str, str], ...] = ()
    media_type: str = OCI_INDEX

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "schemaVersion": 2,
            "mediaType": self.media_type,
            "manifests": [m.to_json() for m in self.manifests],
        }
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        return out

    def to_bytes(self) -> bytes:
        return canonical_json(self.to_json())

    @classmethod
    def parse(cls, data: bytes, what: str = "index") -> Index:
        obj = parse_json_object(data, what)
        _schema_version(obj, what)
        declared = obj.get("mediaType", OCI_INDEX)
        if declared not in INDEX_TYPES:
            raise ImageError(f"parse {what}: unsupported media type {declared!r}")
        items = obj.get("manifests")
        if not isinstance(items, list):
            raise ImageError(f"parse {what}: manifests must be a list")
        manifests = tuple(
            Descriptor.from_json(item, f"{what} entry {n}") for n, item in enumerate(items)
        )
        return cls(manifests, _annotations(obj.get("annotations"), what), declared)


def diff_ids_of(config: Mapping[str, Any]) -> tuple[str, ...]:
    """The config's ``rootfs.diff_ids`` (image-spec config.md), validated."""
    rootfs = config.get("rootfs")
    if not isinstance(rootfs, dict) or rootfs.get("type") != "layers":
        raise ImageError('parse image config: rootfs.type must be "layers"')
    diff_ids = rootfs.get("diff_ids")
    if not isinstance(diff_ids, list):
        raise ImageError("parse image config: rootfs.diff_ids must be a list")
    try:
        return tuple(check_digest(d) for d in diff_ids)
    except ImageError as exc:
        raise ImageError(f"parse image config: rootfs.diff_ids: {exc.message}") from exc


def config_platform(config: Mapping[str, Any]) -> Platform | None:
    """The platform an image config declares, if it declares one."""
    os_name, arch = config.get("os"), config.get("architecture")
    if not isinstance(os_name, str) or not isinstance(arch, str):
        return None
    variant = config.get("variant")
    return Platform(os_name, arch, variant if isinstance(variant, str) and variant else None)


def _variant_rank(wanted: Platform, have: Platform) -> int | None:
    """0 for an exact match, larger for a weaker one, None for no match (containerd's
    platforms.Only: arm64 "v8" equals no variant; a requested variant matches older ones of
    the same architecture only for arm)."""
    if have.os != wanted.os or have.architecture != wanted.architecture:
        return None
    want_v, have_v = wanted.variant, have.variant
    if have.architecture == "arm64":
        want_v = None if want_v == "v8" else want_v
        have_v = None if have_v == "v8" else have_v
    if want_v == have_v:
        return 0
    if want_v is None:
        return 1  # no variant asked for: any variant will do, after an exact match
    if have_v is None:
        return 2
    if have.architecture == "arm" and have_v < want_v:
        return 3 + ord(want_v[-1]) - ord(have_v[-1])
    return None


def select_platform(manifests: tuple[Descriptor, ...], wanted: Platform) -> Descriptor | None:
    """Pick the manifest of an index that best serves ``wanted`` (first of equal ranks)."""
    best: tuple[int, Descriptor] | None = None
    for desc in manifests:
        if desc.platform is None or desc.media_type not in MANIFEST_TYPES | INDEX_TYPES:
            continue
        rank = _variant_rank(wanted, desc.platform)
        if rank is not None and (best is None or rank < best[0]):
            best = (rank, desc)
    return best[1] if best else None


@dataclass(frozen=True)
class StoredImage:
    """One single-platform image whose manifest, config and layers are all in the store."""

    manifest: Descriptor
    manifest_json: dict[str, Any] = field(compare=False, hash=False)
    config: Descriptor
    config_json: dict[str, Any] = field(compare=False, hash=False)
    layers: tuple[Descriptor, ...]
    diff_ids: tuple[str, ...]

    @classmethod
    def from_documents(
        cls, manifest: Descriptor, manifest_bytes: bytes, config_bytes: bytes
    ) -> StoredImage:
        """Build the value from verified manifest and config bytes; checks that the config
        lists one diffID per layer."""
        parsed = Manifest.parse(manifest_bytes, manifest.media_type)
        config_json = parse_json_object(config_bytes, "image config")
        diff_ids = diff_ids_of(config_json)
        if len(diff_ids) != len(parsed.layers):
            raise ImageError(
                f"read image {manifest.digest}: config lists {len(diff_ids)} diff_ids "
                f"for {len(parsed.layers)} layers"
            )
        return cls(
            manifest=Descriptor(manifest.media_type, manifest.digest, manifest.size),
            manifest_json=parse_json_object(manifest_bytes, "manifest"),
            config=parsed.config,
            config_json=config_json,
            layers=parsed.layers,
            diff_ids=diff_ids,
        )
