"""``--cache-to`` / ``--cache-from`` values: BuildKit's CSV syntax, parsed into a ``CacheSpec``.

Rules (docker buildx ``--cache-to``/``--cache-from``; BuildKit "registry" and "local" cache
backends, docs.docker.com/build/cache/backends/):
- The value is one CSV record (quotes allowed, as buildx reads it with a CSV reader) of
  ``key=value`` fields; keys are case-insensitive, a repeated key keeps its last value (as
  buildx). A value without any ``=`` is a bare registry reference: ``user/app:cache`` means
  ``type=registry,ref=user/app:cache``.
- ``type=registry,ref=REF[,mode=min|max]`` (to) / ``type=registry,ref=REF`` (from); REF is
  checked with Docker's reference grammar, and ``--cache-to`` needs a tag, not a digest.
- ``type=local,dest=DIR[,mode=min|max]`` (to) / ``type=local,src=DIR`` (from).
- Other types (``gha``, ``s3``, ``inline``, ``azblob``) and unknown or missing attributes are
  a ``UsageError`` naming the flag and the whole text.
- BuildKit attributes that change nothing here are accepted on ``--cache-to`` when their value
  asks for what rootbuild does anyway: ``oci-mediatypes=true``, ``image-manifest=true|false``
  (the cache is always one OCI image manifest), ``compression=gzip|zstd|uncompressed|estargz``
  and ``compression-level=N`` (layers are exported as the build stored them),
  ``force-compression=false`` and ``ignore-error=false``. Their other values
  (``oci-mediatypes=false``, ``force-compression=true``, ``ignore-error=true``) ask for
  behaviour rootbuild lacks and are refused rather than silently ignored.
- rootbuild's own ``--cache-to`` attributes for ``RUN --mount=type=cache`` contents
  (``mount_export.py``): ``cache-mounts=true|false`` (default true: every cache mount the
  build used travels with the cache) and ``cache-mounts-max-size=SIZE`` (``512MB``, ``2GB``:
  the most recently used mounts go while their total size fits; the others are skipped
  with a warning).
This module is pure.
"""

from __future__ import annotations

import csv
import dataclasses
from dataclasses import dataclass
from typing import Literal

from rootbuild.cache.prune import parse_size
from rootbuild.errors import UsageError
from rootbuild.image.refs import parse_reference

CacheKind = Literal["registry", "local"]
CacheMode = Literal["min", "max"]

_KNOWN_TYPES = ("registry", "local")
_BOOL = ("true", "false")
# attribute -> values accepted as no-ops (None: any value is checked by its own rule).
_NO_OP_TO: dict[str, tuple[str, ...] | None] = {
    "oci-mediatypes": ("true",),
    "image-manifest": _BOOL,
    "compression": ("gzip", "zstd", "uncompressed", "estargz"),
    "compression-level": None,
    "force-compression": ("false",),
    "ignore-error": ("false",),
}


@dataclass(frozen=True)
class CacheSpec:
    """Where a step cache goes to or comes from: a registry reference or a directory."""

    kind: CacheKind
    ref: str
    mode: CacheMode = "min"
    mounts: bool = True  # cache-mounts=: export RUN --mount=type=cache contents
    mounts_max_size: int | None = None  # cache-mounts-max-size=, bytes


def _fail(flag: str, text: str, cause: str) -> UsageError:
    return UsageError(f"{flag} {text}: {cause}")


def _fields(flag: str, text: str) -> dict[str, str]:
    try:
        rows = list(csv.reader([text], skipinitialspace=False, strict=True))
    except csv.Error as exc:
        raise _fail(flag, text, f"invalid csv value ({exc})") from exc
    fields: dict[str, str] = {}
    for item in rows[0] if rows else []:
        key, sep, value = item.partition("=")
        key = key.strip().lower()
        if not sep or not key:
            raise _fail(flag, text, f"expected key=value, got {item!r}")
        fields[key] = value
    return fields


def _registry_ref(flag: str, text: str, ref: str, *, push: bool) -> str:
    if not ref:
        raise _fail(flag, text, "type=registry needs ref=REF")
    try:
        parsed = parse_reference(ref)
    except UsageError as exc:
        raise _fail(flag, text, exc.message) from exc
    if push and parsed.digest is not None:
        raise _fail(flag, text, "cannot export a cache to a digest reference; name a tag")
    return ref


def _no_ops(flag: str, text: str, fields: dict[str, str]) -> None:
    for key in sorted(set(fields) & set(_NO_OP_TO)):
        value = fields.pop(key).lower()
        allowed = _NO_OP_TO[key]
        if allowed is None:
            if not value.isdigit() or int(value) > 22:
                raise _fail(flag, text, f"{key} must be an integer from 0 to 22")
        elif value not in allowed:
            raise _fail(flag, text, f"{key}={value} is not supported by rootbuild")


def _parse(flag: str, text: str, *, to: bool) -> CacheSpec:
    text = text.strip()
    if not text:
        raise _fail(flag, repr(""), "empty value")
    if "=" not in text:
        return CacheSpec("registry", _registry_ref(flag, text, text, push=to))
    fields = _fields(flag, text)
    kind = fields.pop("type", "")
    if not kind:
        raise _fail(flag, text, "missing type= (registry or local)")
    if kind not in _KNOWN_TYPES:
        raise _fail(flag, text, "not supported (rootbuild supports type=registry and type=local)")
    mode: CacheMode = "min"
    mounts, max_size = True, None
    if to:
        _no_ops(flag, text, fields)
        raw_mode = fields.pop("mode", "min").lower()
        if raw_mode not in ("min", "max"):
            raise _fail(flag, text, f"mode must be min or max, got {raw_mode!r}")
        mode = "max" if raw_mode == "max" else "min"
        mounts, max_size = _mount_attributes(flag, text, fields)
    if kind == "registry":
        spec = CacheSpec(
            "registry", _registry_ref(flag, text, fields.pop("ref", ""), push=to), mode
        )
    else:
        attr = "dest" if to else "src"
        path = fields.pop(attr, "")
        if not path:
            raise _fail(flag, text, f"type=local needs {attr}=DIR")
        spec = CacheSpec("local", path, mode)
    if fields:
        raise _fail(flag, text, f"unknown attribute {sorted(fields)[0]!r}")
    if to:
        spec = dataclasses.replace(spec, mounts=mounts, mounts_max_size=max_size)
    return spec


def _mount_attributes(flag: str, text: str, fields: dict[str, str]) -> tuple[bool, int | None]:
    raw = fields.pop("cache-mounts", "true").lower()
    if raw not in _BOOL:
        raise _fail(flag, text, f"cache-mounts must be true or false, got {raw!r}")
    size = fields.pop("cache-mounts-max-size", None)
    if size is None:
        return raw == "true", None
    try:
        return raw == "true", parse_size(size)
    except ValueError as exc:
        raise _fail(flag, text, f"cache-mounts-max-size: {exc}") from exc


def parse_cache_to(text: str) -> CacheSpec:
    """Parse a ``--cache-to`` value (see the module rules)."""
    return _parse("--cache-to", text, to=True)


def parse_cache_from(text: str) -> CacheSpec:
    """Parse a ``--cache-from`` value (see the module rules)."""
    return _parse("--cache-from", text, to=False)
