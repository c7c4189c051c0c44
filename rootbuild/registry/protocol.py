"""The OCI distribution API as data: endpoints, challenges, media types, platform choice.

Rules (OCI distribution-spec v1.1 "spec.md"; Docker registry token auth "token.md";
RFC 7235 for ``WWW-Authenticate``):
- A registry is named as Docker names it (``docker.io``, ``ghcr.io``, ``localhost:5000``);
  ``api_host`` maps Docker Hub to the host that serves its API, ``registry-1.docker.io``.
- Loopback registries (``localhost``, 127.0.0.0/8, ``::1``) are "insecure" as Docker treats
  them: plain HTTP is allowed there (Docker's default ``insecure-registries`` contains
  127.0.0.0/8, and localhost resolves there).
- Challenges are parsed, never evaluated: the client decides what to send to whom.
- Manifest documents are told apart by their declared ``mediaType`` first, the
  ``Content-Type`` header second (distribution-spec "Pulling manifests"); schema 1 is refused.
This module is pure: no network, no filesystem.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from rootbuild.errors import RegistryError
from rootbuild.image.oci import (
    DOCKER_CONFIG,
    DOCKER_LAYER,
    DOCKER_LAYER_GZIP,
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    INDEX_TYPES,
    MANIFEST_TYPES,
    OCI_INDEX,
    OCI_LAYER,
    OCI_LAYER_GZIP,
    OCI_MANIFEST,
    Descriptor,
    Index,
    Manifest,
    select_platform,
)
from rootbuild.image.refs import DEFAULT_DOMAIN, Reference
from rootbuild.platform import Platform

DOCKER_HUB_API = "registry-1.docker.io"
DOCKER_HUB_AUTH_KEY = "https://index.docker.io/v1/"
SCHEMA1_TYPES = frozenset(
    {
        "application/vnd.docker.distribution.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.v1+prettyjws",
    }
)
# What a pull accepts, most wanted first (containerd sends the same four).
MANIFEST_ACCEPT = ", ".join([OCI_INDEX, DOCKER_MANIFEST_LIST, OCI_MANIFEST, DOCKER_MANIFEST])
MAX_MANIFEST_SIZE = 4 << 20  # containerd's limit on manifests and indexes
MAX_CONFIG_SIZE = 4 << 20


def api_host(registry: str) -> str:
    """The host[:port] that serves the registry API for a Docker registry name."""
    return DOCKER_HUB_API if registry in (DEFAULT_DOMAIN, "index.docker.io") else registry


def host_only(registry: str) -> str:
    """``registry`` without its port (``[::1]:5000`` -> ``::1``)."""
    if registry.startswith("["):
        return registry[1:].split("]", 1)[0]
    return registry.rsplit(":", 1)[0] if registry.count(":") == 1 else registry


def is_loopback(registry: str) -> bool:
    """True for ``localhost``, 127.0.0.0/8 and ``::1`` (with or without a port)."""
    host = host_only(registry).lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def reference_of(ref: Reference) -> str:
    """The manifest reference a pull asks for: the digest wins over the tag (Docker)."""
    return ref.digest or ref.tag or "latest"


def manifest_path(repo: str, reference: str) -> str:
    return f"/v2/{repo}/manifests/{reference}"


def blob_path(repo: str, digest: str) -> str:
    return f"/v2/{repo}/blobs/{digest}"


def upload_path(repo: str) -> str:
    return f"/v2/{repo}/blobs/uploads/"


def scope_for(repo: str, push: bool = False) -> str:
    """A token scope (token.md "Requesting a Token"): ``repository:NAME:pull[,push]``."""
    return f"repository:{repo}:{'pull,push' if push else 'pull'}"


@dataclass(frozen=True)
class Challenge:
    """One ``WWW-Authenticate`` challenge: scheme (lowercased) and its parameters."""

    scheme: str
    params: tuple[tuple[str, str], ...] = ()

    def get(self, key: str) -> str | None:
        return dict(self.params).get(key)


_TOKEN = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
# Unquoted values are taken up to the next comma: registries only ever quote, but a lenient
# reading of ``realm=https://x/token`` costs nothing.
_PARAM = re.compile(rf'\s*({_TOKEN})\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,"]+))\s*')
_SCHEME = re.compile(rf"\s*({_TOKEN})(?:\s+|$)")


def parse_www_authenticate(header: str) -> list[Challenge]:
    """Parse ``WWW-Authenticate`` into challenges (RFC 7235 section 4.1, auth-param form).

    ``Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="a,b"``
    gives one Bearer challenge; several challenges may be comma-separated. A malformed tail is
    dropped (the challenges parsed so far stand), as a lenient HTTP client does."""
    out: list[Challenge] = []
    pos, text = 0, header
    while pos < len(text):
        while pos < len(text) and text[pos] in " ,":
            pos += 1
        m = _SCHEME.match(text, pos)
        if not m:
            break
        scheme, pos = m.group(1).lower(), m.end()
        params: list[tuple[str, str]] = []
        while True:
            p = _PARAM.match(text, pos)
            if not p:
                break
            value = p.group(2)
            value = re.sub(r"\\(.)", r"\1", value) if value is not None else p.group(3)
            params.append((p.group(1).lower(), value))
            pos = p.end()
            if pos < len(text) and text[pos] == ",":
                pos += 1
                if not _PARAM.match(text, pos):
                    break  # the next item is a new challenge
            else:
                break
        out.append(Challenge(scheme, tuple(params)))
    return out


def document_type(body_media_type: object, content_type: str | None) -> str:
    """The media type of a fetched manifest: its ``mediaType`` field, else the header."""
    if isinstance(body_media_type, str) and body_media_type:
        return body_media_type
    return (content_type or "").split(";", 1)[0].strip()


def check_document_type(media_type: str, where: str) -> None:
    """Refuse schema 1 and anything that is neither a manifest nor an index."""
    if media_type in SCHEMA1_TYPES:
        raise RegistryError(
            f"pull {where}: Docker image manifest schema 1 is deprecated and not supported; "
            "push the image again with a current client"
        )
    if media_type not in MANIFEST_TYPES | INDEX_TYPES:
        raise RegistryError(f"pull {where}: unsupported manifest media type {media_type!r}")


def choose_from_index(index: Index, platform: Platform, where: str) -> Descriptor:
    """The index entry for ``platform`` (containerd's matcher), or an error listing what the
    index offers (``docker pull`` says "no matching manifest for linux/s390x ...")."""
    chosen = select_platform(index.manifests, platform)
    if chosen is None:
        have = sorted({str(d.platform) for d in index.manifests if d.platform is not None})
        raise RegistryError(
            f"pull {where}: no image for platform {platform} "
            f"(available: {', '.join(have) or 'none'})"
        )
    return chosen


_DOCKER_LAYER_FOR = {
    OCI_LAYER: DOCKER_LAYER,
    OCI_LAYER_GZIP: DOCKER_LAYER_GZIP,
    DOCKER_LAYER: DOCKER_LAYER,
    DOCKER_LAYER_GZIP: DOCKER_LAYER_GZIP,
}


def to_docker_manifest(manifest: Manifest, where: str) -> Manifest:
    """The Docker schema 2 spelling of an image manifest (manifest-v2-2.md): same config and
    layer bytes, Docker media types. zstd layers have no Docker media type."""
    layers = []
    for layer in manifest.layers:
        docker_type = _DOCKER_LAYER_FOR.get(layer.media_type)
        if docker_type is None:
            raise RegistryError(
                f"push {where}: layer {layer.digest} is {layer.media_type}, which has no "
                "Docker schema 2 media type (use the OCI format, or gzip layers)"
            )
        layers.append(Descriptor(docker_type, layer.digest, layer.size, layer.annotations))
    config = Descriptor(DOCKER_CONFIG, manifest.config.digest, manifest.config.size)
    return Manifest(DOCKER_MANIFEST, config, tuple(layers))
