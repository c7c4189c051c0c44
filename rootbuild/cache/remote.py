"""``--cache-to``/``--cache-from``: step-cache entries exported to, and imported from, a
registry or a local directory, so that an ephemeral CI runner reuses the previous run's layers.

The format (one OCI image manifest, image-spec manifest.md; the OCI "artifact" shape that
BuildKit's registry cache also uses with ``image-manifest=true``)::

    manifest  application/vnd.oci.image.manifest.v1+json
      config  application/vnd.rootbuild.cache.config.v1+json
              {"version": 1, "entries": [CacheEntry.to_json(), ...]}   (canonical JSON)
      layers  the distinct layer blobs the entries name, as stored (their media types),
              then one zstd tar per exported cache mount (``mount_export.py``), which the
              config lists under "mounts" (absent when there are none)

Rules:
- Exports carry exactly the entries given (the caller chooses them by ``mode``: min = the
  steps of the exported image, max = every step); entries are sorted by key, so the same
  entries give the same manifest digest. Every layer must be in the store.
- Imports read only the manifest and the config (capped at 4 MiB, digest-verified); layers
  are fetched one by one, later, by ``ImportedCache.fetch`` into the build's staging area,
  verified while they stream (digest, size, then diffID against the entry).
- A cache that does not exist yet (manifest unknown, directory or index absent) is what a
  first CI run meets: a ``WARNING`` line is said and the import is empty (BuildKit warns and
  builds on). A cache that exists but is malformed is an error naming where it came from:
  ``RegistryError`` for a registry, ``ImageError`` for a directory.
- An entry whose layer the manifest does not list is malformed: a registry only promises
  the blobs a manifest references.
The transports themselves live in ``registry_cache.py`` and ``local_cache.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

import trio

from rootbuild.cache.entry import CacheEntry
from rootbuild.cache.local_cache import LocalCacheSource, write_local_cache
from rootbuild.cache.mount_export import MountRecord
from rootbuild.cache.spec import CacheSpec
from rootbuild.errors import ImageError, RegistryError, StoreError
from rootbuild.image.digest import sha256_digest
from rootbuild.image.oci import OCI_MANIFEST, Descriptor, canonical_json, parse_json_object
from rootbuild.image.refs import parse_reference
from rootbuild.image.store import Staging, Store
from rootbuild.registry.transport import TransportOptions

CACHE_CONFIG = "application/vnd.rootbuild.cache.config.v1+json"
CACHE_VERSION = 1

Say = Callable[[str], None]


@dataclass(frozen=True)
class CacheDocuments:
    """The blobs of one exported cache: config and manifest bytes, and the layers."""

    config: Descriptor
    config_bytes: bytes
    manifest: Descriptor
    manifest_bytes: bytes
    layers: tuple[Descriptor, ...]
    entries: tuple[CacheEntry, ...]


def cache_documents(
    entries: Sequence[CacheEntry], mounts: Sequence[MountRecord] = ()
) -> CacheDocuments:
    """The config and manifest for ``entries`` and ``mounts`` (see module docstring). Pure."""
    by_key: dict[str, CacheEntry] = {}
    for entry in entries:
        by_key.setdefault(entry.key, entry)
    ordered = tuple(by_key[key] for key in sorted(by_key))
    layers: dict[str, Descriptor] = {}
    for entry in ordered:
        if entry.layer is not None:
            layers.setdefault(entry.layer.digest, entry.layer)
    doc: dict[str, Any] = {"version": CACHE_VERSION,
                           "entries": [entry.to_json() for entry in ordered]}
    ordered_mounts = sorted({m.id: m for m in mounts}.values(), key=lambda m: m.id)
    if ordered_mounts:
        doc["mounts"] = [m.to_json() for m in ordered_mounts]
    config_bytes = canonical_json(doc)
    config = Descriptor(CACHE_CONFIG, sha256_digest(config_bytes), len(config_bytes))
    manifest_bytes = canonical_json(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": config.to_json(),
            "layers": [layer.to_json() for layer in layers.values()]
            + [m.descriptor.to_json() for m in ordered_mounts],
        }
    )
    manifest = Descriptor(OCI_MANIFEST, sha256_digest(manifest_bytes), len(manifest_bytes))
    return CacheDocuments(
        config, config_bytes, manifest, manifest_bytes,
        (*layers.values(), *(m.layer for m in ordered_mounts)), ordered,
    )


@dataclass(frozen=True)
class CacheManifest:
    config: Descriptor
    layers: tuple[Descriptor, ...]


def parse_cache_manifest(data: bytes, where: str) -> CacheManifest:
    """The config and layers of a cache manifest; ImageError if it is not one. Pure."""
    obj = parse_json_object(data, f"cache manifest of {where}")
    if obj.get("schemaVersion") != 2:
        raise ImageError(
            f"read cache {where}: unsupported schemaVersion {obj.get('schemaVersion')!r}"
        )
    media_type = obj.get("mediaType", OCI_MANIFEST)
    if media_type != OCI_MANIFEST:
        raise ImageError(f"read cache {where}: not a cache manifest (media type {media_type!r})")
    config = Descriptor.from_json(obj.get("config"), f"cache manifest config of {where}")
    if config.media_type != CACHE_CONFIG:
        raise ImageError(
            f"read cache {where}: not a rootbuild cache (config media type {config.media_type!r})"
        )
    raw_layers = obj.get("layers")
    if not isinstance(raw_layers, list):
        raise ImageError(f"read cache {where}: manifest layers must be a list")
    layers = tuple(
        Descriptor.from_json(item, f"cache manifest layer {n} of {where}")
        for n, item in enumerate(raw_layers)
    )
    return CacheManifest(config, layers)


def parse_cache_config(data: bytes, manifest: CacheManifest, where: str) -> dict[str, CacheEntry]:
    """The entries of a cache config, by key; each entry's layer must be a manifest layer."""
    obj = parse_json_object(data, f"cache config of {where}")
    if obj.get("version") != CACHE_VERSION:
        raise ImageError(f"read cache {where}: unsupported cache version {obj.get('version')!r}")
    raw: Any = obj.get("entries")
    if not isinstance(raw, list):
        raise ImageError(f"read cache {where}: entries must be a list")
    listed = {(layer.digest, layer.size) for layer in manifest.layers}
    out: dict[str, CacheEntry] = {}
    for item in raw:
        entry = CacheEntry.from_json(item, f"cache {where}")
        if entry.layer is not None and (entry.layer.digest, entry.layer.size) not in listed:
            raise ImageError(
                f"read cache {where}: entry {entry.key} names layer {entry.layer.digest}, "
                "which the manifest does not list"
            )
        out[entry.key] = entry
    return out


def parse_cache_mounts(data: bytes, manifest: CacheManifest, where: str
                       ) -> tuple[MountRecord, ...]:
    """The cache mounts a cache config lists; each blob must be a manifest layer."""
    obj = parse_json_object(data, f"cache config of {where}")
    raw: Any = obj.get("mounts", [])
    if not isinstance(raw, list):
        raise ImageError(f"read cache {where}: mounts must be a list")
    listed = {(layer.digest, layer.size) for layer in manifest.layers}
    records = tuple(MountRecord.from_json(item, where) for item in raw)
    for record in records:
        if (record.layer.digest, record.layer.size) not in listed:
            raise ImageError(
                f"read cache {where}: cache mount {record.id!r} names blob "
                f"{record.layer.digest}, which the manifest does not list"
            )
    return records


# -- transports -----------------------------------------------------------------------------


class CacheSource(Protocol):
    """Read side of one transport (``RegistryCacheSource``, ``LocalCacheSource``)."""

    where: str

    async def open(self) -> None: ...

    async def aclose(self) -> None: ...

    async def read_manifest(self) -> bytes | None:
        """The cache manifest's bytes, verified if pinned; None when there is no cache."""
        ...

    async def read_config(self, desc: Descriptor) -> bytes: ...

    async def fetch_layer(self, staging: Staging, layer: Descriptor, diff_id: str) -> None: ...


def _source(store: Store, spec: CacheSpec, transport: TransportOptions, say: Say) -> CacheSource:
    if spec.kind == "registry":
        from rootbuild.cache.registry_cache import RegistryCacheSource  # the HTTP client

        return RegistryCacheSource(store, parse_reference(spec.ref), transport, say)
    return LocalCacheSource(Path(spec.ref))


def _wrap(exc: ImageError, spec: CacheSpec) -> ImageError | RegistryError:
    if spec.kind == "registry":
        return RegistryError(exc.message)
    return exc


class ImportedCache:
    """The entries of an imported cache, by key; ``fetch`` brings one entry's layer in.

    Optionally ``async with`` it while fetching: registry fetches then share one connection
    and token; without it each fetch opens its own."""

    def __init__(
        self,
        entries: Mapping[str, CacheEntry],
        source: CacheSource | None = None,
        spec: CacheSpec | None = None,
        mounts: Sequence[MountRecord] = (),
    ) -> None:
        self.entries: Mapping[str, CacheEntry] = dict(entries)
        self.mounts: tuple[MountRecord, ...] = tuple(mounts)
        self._source = source
        self._spec = spec
        self._layers = {e.layer.digest for e in self.entries.values() if e.layer is not None}

    async def fetch(self, staging: Staging, entry: CacheEntry) -> None:
        """Put ``entry``'s layer blob into ``staging`` (nothing if it is there already),
        verified while it streams: digest, size, then the diffID the entry states."""
        if entry.layer is None or staging.has_blob(entry.layer.digest):
            return
        assert entry.diff_id is not None  # CacheEntry: a layer has its diffID
        await self._fetch(staging, entry.layer, entry.diff_id,
                          entry.layer.digest in self._layers,
                          f"cache layer {entry.layer.digest}")

    async def fetch_mount(self, staging: Staging, record: MountRecord) -> None:
        """Put a cache mount's blob into ``staging``, verified as ``fetch`` does."""
        if staging.has_blob(record.layer.digest):
            return
        await self._fetch(staging, record.layer, record.diff_id, record in self.mounts,
                          f"cache mount {record.id!r}")

    async def _fetch(self, staging: Staging, blob: Descriptor, diff_id: str, listed: bool,
                     what: str) -> None:
        """Fetch a blob this cache lists (``listed``) from its source, verified."""
        if self._source is None or self._spec is None or not listed:
            raise StoreError(f"fetch {what}: not part of this imported cache")
        try:
            await self._source.fetch_layer(staging, blob, diff_id)
        except ImageError as exc:
            raise _wrap(exc, self._spec) from exc

    async def __aenter__(self) -> ImportedCache:
        if self._source is not None:
            await self._source.open()
        return self

    async def __aexit__(
        self, typ: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._source is not None:
            await self._source.aclose()


async def import_cache(
    store: Store, spec: CacheSpec, *, transport: TransportOptions, say: Say
) -> ImportedCache:
    """Read the cache ``spec`` names (manifest and config only; see module rules)."""
    source = _source(store, spec, transport, say)
    await source.open()
    try:
        data = await source.read_manifest()
        if data is None:
            say(f"WARNING: {spec.kind} cache import from {source.where} not found")
            return ImportedCache({})
        manifest = parse_cache_manifest(data, source.where)
        config = await source.read_config(manifest.config)
        entries = parse_cache_config(config, manifest, source.where)
        mounts = parse_cache_mounts(config, manifest, source.where)
    except ImageError as exc:
        raise _wrap(exc, spec) from exc
    finally:
        await source.aclose()
    say(f"imported {len(entries)} cache entries from {source.where} ({sha256_digest(data)})")
    if mounts:
        say(f"imported {len(mounts)} cache mounts: {', '.join(m.id for m in mounts)}")
    return ImportedCache(entries, source, spec, mounts)


async def export_cache(
    store: Store,
    entries: Sequence[CacheEntry],
    spec: CacheSpec,
    *,
    transport: TransportOptions,
    say: Say,
    mounts: Sequence[MountRecord] = (),
) -> str:
    """Export ``entries`` (and their layers, from ``store``) and the cache ``mounts``
    (blobs in ``store``) to ``spec``; return the cache manifest's digest. Registry: blobs
    first (those the repository has are not sent again), manifest last. Directory: an OCI
    layout, blobs first, ``index.json`` replaced last."""
    docs = cache_documents(entries, mounts)
    with store.shared_lock():  # keeps prune() from removing layers while they are sent
        for layer in docs.layers:
            if not store.has_blob(layer.digest):
                raise StoreError(
                    f"export cache to {spec.ref}: layer {layer.digest} is not in store {store.root}"
                )
        if spec.kind == "registry":
            from rootbuild.cache.registry_cache import push_cache  # the HTTP client

            digest = await push_cache(
                store,
                parse_reference(spec.ref),
                docs.layers,
                {docs.config.digest: (docs.config, docs.config_bytes)},
                docs.manifest_bytes,
                transport=transport,
                say=say,
            )
        else:
            copied, present = await trio.to_thread.run_sync(
                lambda: write_local_cache(
                    store,
                    Path(spec.ref),
                    docs.layers,
                    [(docs.config, docs.config_bytes), (docs.manifest, docs.manifest_bytes)],
                    docs.manifest,
                )
            )
            say(f"cache {spec.ref}: {copied} blobs written, {present} already there")
            digest = docs.manifest.digest
    say(f"exported {len(docs.entries)} cache entries to {spec.ref}: {digest}")
    if mounts:
        say(f"exported {len(mounts)} cache mounts: {', '.join(m.id for m in mounts)}")
    return digest
