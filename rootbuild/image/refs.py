"""Image references: base images (``FROM``/``--from``) and build outputs (``--output``).

Rules:
- Transports are spelled as skopeo/containers-image spell them, split at the *first* colon
  after the transport, as containers/image does on Unix: ``oci:DIR[:TAG]``,
  ``oci-archive:FILE[:TAG]``, ``docker-archive:FILE[:NAME[:TAG]|@INDEX]``. Outputs also take
  ``dir:PATH`` and BuildKit's ``type=oci|docker|local,dest=...[,name=...][,tar=false]``.
- ``scratch`` is the empty image; anything else is an image name in the local store, parsed
  with Docker's reference grammar (distribution/reference) and normalised the way Docker
  shows local names: ``docker.io/library/app`` -> ``app:latest``.
- Every malformed reference is a ``UsageError`` quoting the text.
This module is pure.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from rootbuild.errors import UsageError

BaseTransport = Literal["scratch", "store", "oci", "oci-archive", "docker-archive"]
OutputTransport = Literal["oci", "oci-archive", "docker-archive", "dir", "docker"]

_DOMAIN_PART = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = re.compile(rf"{_DOMAIN_PART}(?:\.{_DOMAIN_PART})*(?::[0-9]+)?")
_PATH_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_TAG = re.compile(r"[\w][\w.-]{0,127}")
_DIGEST = re.compile(r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}")
# image-spec annotations.md: org.opencontainers.image.ref.name grammar.
_REF_COMPONENT = r"[A-Za-z0-9]+(?:(?:[-._:@+]|--)[A-Za-z0-9]+)*"
_REF_NAME = re.compile(rf"{_REF_COMPONENT}(?:/{_REF_COMPONENT})*")
DEFAULT_DOMAIN = "docker.io"
_NAME_MAX = 255


@dataclass(frozen=True)
class Reference:
    """A parsed Docker image reference."""

    domain: str
    path: str
    tag: str | None = None
    digest: str | None = None

    def familiar(self) -> str:
        """Docker's short spelling, ``:latest`` added when neither tag nor digest is given."""
        path = self.path
        if self.domain == DEFAULT_DOMAIN:
            if path.startswith("library/") and path.count("/") == 1:
                path = path[len("library/") :]
            name = path
        else:
            name = f"{self.domain}/{path}"
        tag = self.tag if self.tag or self.digest else "latest"
        if tag:
            name += f":{tag}"
        if self.digest:
            name += f"@{self.digest}"
        return name


def parse_reference(text: str) -> Reference:
    """Parse ``[domain/]path[:tag][@digest]`` (distribution/reference ParseNormalizedNamed)."""
    rest, digest = text, None
    if "@" in rest:
        rest, digest = rest.split("@", 1)
        if not _DIGEST.fullmatch(digest):
            raise UsageError(f"parse image reference {text!r}: invalid digest {digest!r}")
    tag = None
    slash = rest.rfind("/")
    colon = rest.rfind(":")
    if colon > slash:
        rest, tag = rest[:colon], rest[colon + 1 :]
        if not _TAG.fullmatch(tag):
            raise UsageError(f"parse image reference {text!r}: invalid tag {tag!r}")
    first, sep, remainder = rest.partition("/")
    if sep and (any(c in first for c in ".:") or first == "localhost" or first.lower() != first):
        domain, path = first, remainder
        if not _DOMAIN.fullmatch(domain):
            raise UsageError(f"parse image reference {text!r}: invalid registry {domain!r}")
    else:
        domain, path = DEFAULT_DOMAIN, rest
    if domain == "index.docker.io":
        domain = DEFAULT_DOMAIN
    if domain == DEFAULT_DOMAIN and "/" not in path:
        path = f"library/{path}"
    if path.lower() != path:
        raise UsageError(f"parse image reference {text!r}: repository name must be lowercase")
    if not path or not all(_PATH_COMPONENT.fullmatch(c) for c in path.split("/")):
        raise UsageError(f"parse image reference {text!r}: invalid repository name")
    if len(domain) + 1 + len(path) > _NAME_MAX:
        raise UsageError(f"parse image reference {text!r}: repository name longer than 255")
    return Reference(domain, path, tag, digest)


def normalize_name(text: str) -> str:
    """The store key for an image name: Docker's familiar form (``app`` -> ``app:latest``)."""
    return parse_reference(text).familiar()


def is_registry_reference(name: str) -> bool:
    """True when ``name`` explicitly names a registry host (``ghcr.io/x``, ``localhost:5000/x``,
    ``docker.io/x``): a name Docker could only have pulled, never one built locally under a
    short name. Short names (``alpine``) are ambiguous and answer False."""
    first, sep, _ = name.partition("/")
    return bool(sep) and (
        any(c in first for c in ".:") or first == "localhost" or first.lower() != first
    )


def _check_ref_name(tag: str, text: str) -> str:
    if not _REF_NAME.fullmatch(tag):
        raise UsageError(f"parse image reference {text!r}: invalid OCI ref name {tag!r}")
    return tag


@dataclass(frozen=True)
class ImageRef:
    """Where a base image comes from. ``path`` is the layout/archive path; ``name`` is the
    store name (normalised), the OCI ref name, or the docker-archive ``name:tag``/``@N``."""

    transport: BaseTransport
    path: str = ""
    name: str | None = None
    text: str = ""

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True)
class OutputRef:
    """Where a built image goes. ``name`` is the OCI ref name or the docker-archive
    ``name:tag`` (RepoTags)."""

    transport: OutputTransport
    path: str
    name: str | None = None
    text: str = ""

    def __str__(self) -> str:
        return self.text


def _split_transport(
    text: str, transports: tuple[str, ...], what: str = "image reference"
) -> tuple[str, str, str | None] | None:
    for transport in transports:
        prefix = f"{transport}:"
        if text.startswith(prefix):
            path, sep, rest = text[len(prefix) :].partition(":")
            if not path:
                raise UsageError(f"parse {what} {text!r}: missing path")
            if sep and not rest:
                raise UsageError(f"parse {what} {text!r}: empty name after ':'")
            return transport, path, rest if sep else None
    return None


def _archive_name(rest: str | None, text: str, allow_index: bool) -> str | None:
    if rest is None:
        return None
    if allow_index and rest.startswith("@") and rest[1:].isdigit():
        return rest
    return normalize_name_for(rest, text)


def normalize_name_for(name: str, text: str) -> str:
    """``normalize_name`` with errors quoting the whole reference ``text``."""
    try:
        ref = parse_reference(name)
    except UsageError as exc:
        raise UsageError(f"parse image reference {text!r}: {exc.message}") from exc
    if ref.digest:
        raise UsageError(f"parse image reference {text!r}: a digest cannot name an archive image")
    return ref.familiar()


def parse_base_ref(text: str) -> ImageRef:
    """Parse a base-image reference: ``scratch``, a transport form, or a store name."""
    text = text.strip()
    if not text:
        raise UsageError("parse image reference '': empty")
    if text == "scratch":
        return ImageRef("scratch", text=text)
    split = _split_transport(text, ("oci-archive", "oci", "docker-archive"))
    if split is not None:
        transport, path, rest = split
        if transport == "docker-archive":
            return ImageRef("docker-archive", path, _archive_name(rest, text, True), text)
        name = _check_ref_name(rest, text) if rest is not None else None
        return ImageRef("oci" if transport == "oci" else "oci-archive", path, name, text)
    if re.match(r"[a-z][a-z0-9+.-]*://", text) or text.startswith(("docker:", "dir:")):
        raise UsageError(f"parse image reference {text!r}: unsupported transport")
    return ImageRef("store", name=normalize_name_for(text, text), text=text)


def _parse_buildkit_output(text: str) -> OutputRef:
    fields: dict[str, str] = {}
    for item in text.split(","):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"parse output {text!r}: expected key=value, got {item!r}")
        fields[key.strip().lower()] = value.strip()
    kind = fields.pop("type", "")
    dest = fields.pop("dest", "")
    name = fields.pop("name", None) or None
    as_tar = fields.pop("tar", "true").lower()
    if as_tar not in ("true", "false"):
        raise UsageError(f"parse output {text!r}: tar must be true or false")
    if fields:
        raise UsageError(f"parse output {text!r}: unsupported option {sorted(fields)[0]!r}")
    if not dest:
        raise UsageError(f"parse output {text!r}: missing dest")
    if kind == "oci":
        # BuildKit's oci exporter puts the tag alone in org.opencontainers.image.ref.name.
        tag = normalize_name_for(name, text).rsplit(":", 1)[1] if name else None
        return OutputRef("oci-archive" if as_tar == "true" else "oci", dest, tag, text)
    if kind == "docker":
        return OutputRef(
            "docker-archive", dest, normalize_name_for(name, text) if name else None, text
        )
    if kind == "local":
        return OutputRef("dir", dest, None, text)
    raise UsageError(f"parse output {text!r}: unsupported type {kind!r} (oci, docker, local)")


def parse_output(text: str) -> OutputRef:
    """Parse an ``--output`` value (see the module rules for the accepted forms)."""
    text = text.strip()
    if text.startswith("type="):
        return _parse_buildkit_output(text)
    if text.startswith("docker://"):  # a registry push (skopeo's spelling)
        ref = text[len("docker://") :]
        if not ref:
            raise UsageError(f"parse output {text!r}: missing image reference")
        normalize_name_for(ref, text)
        return OutputRef("docker", ref, None, text)
    if text.startswith("dir:"):
        path = text[len("dir:") :]
        if not path:
            raise UsageError(f"parse output {text!r}: missing path")
        return OutputRef("dir", path, None, text)
    split = _split_transport(text, ("oci-archive", "oci", "docker-archive"), "output")
    if split is None:
        raise UsageError(
            f"parse output {text!r}: expected oci:DIR[:TAG], oci-archive:FILE[:TAG], "
            "docker-archive:FILE[:NAME:TAG], dir:PATH or docker://REF"
        )
    transport, path, rest = split
    if transport == "docker-archive":
        return OutputRef("docker-archive", path, _archive_name(rest, text, False), text)
    name = _check_ref_name(rest, text) if rest is not None else None
    return OutputRef("oci" if transport == "oci" else "oci-archive", path, name, text)
