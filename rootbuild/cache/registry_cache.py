"""The registry transport of the step cache: push a cache manifest and its blobs, read one back.

Rules (OCI distribution-spec v1.1; the push and pull rules of ``registry/push.py`` and
``registry/pull.py``, whose public functions this uses rather than copies):
- Export: blobs first, manifest last, through ``push_blobs_and_manifest``: a blob the repository
  already has (``HEAD`` 200) is not sent again, a blob the origins index places in another
  repository of the same registry is mounted, others are uploaded monolithically. The cache
  config is not a store blob: it is uploaded from memory. The layers are then recorded as held
  by ``registry/repo`` (mount hints).
- Import: the manifest (``GET /manifests/<tag or digest>``, 4 MiB cap, checked against a
  pinned digest) and the config (4 MiB cap, digest and size checked). A 404 on the manifest
  means no cache yet: ``read_manifest`` answers None.
- Fetch: one layer streamed into the caller's staging area by pull.py's ``fetch_layer``
  (bounded retries, digest and size verified while streaming, then the diffID); its origin is
  recorded so that a later push of an image to another repository of the same registry
  mounts it instead of uploading it.
- Registry clients: one per call, unless ``open()`` made a shared one (``aclose()`` ends it;
  calls nest, the last ``aclose`` closes).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Mapping, Sequence

from rootbuild.errors import ImageError, RegistryError
from rootbuild.image.digest import Verifier
from rootbuild.image.oci import OCI_MANIFEST, Descriptor
from rootbuild.image.refs import Reference
from rootbuild.image.store import Staging, Store
from rootbuild.registry.client import RegistryClient, TransportOptions, read_capped
from rootbuild.registry.protocol import (
    MANIFEST_ACCEPT,
    MAX_CONFIG_SIZE,
    MAX_MANIFEST_SIZE,
    blob_path,
    manifest_path,
    reference_of,
    scope_for,
)
from rootbuild.registry.pull import fetch_layer, one_error, record_origins
from rootbuild.registry.push import push_blobs_and_manifest

Say = Callable[[str], None]


async def push_cache(
    store: Store,
    ref: Reference,
    layers: Sequence[Descriptor],
    in_memory: Mapping[str, tuple[Descriptor, bytes]],
    manifest_bytes: bytes,
    *,
    transport: TransportOptions,
    say: Say,
    jobs: int = 4,
) -> str:
    """Push ``layers`` (from the store), the ``in_memory`` blobs and then the manifest to
    ``ref``; return the manifest digest."""
    where = ref.familiar()
    if ref.digest is not None:
        raise RegistryError(f"export cache to {where}: cannot push to a digest reference")
    blobs = [(desc, "cache config") for desc, _ in in_memory.values()]
    blobs += [(layer, f"cache layer {n + 1}/{len(layers)}") for n, layer in enumerate(layers)]
    return await push_blobs_and_manifest(
        store,
        ref,
        blobs,
        manifest_bytes,
        OCI_MANIFEST,
        in_memory={digest: data for digest, (_, data) in in_memory.items()},
        transport=transport,
        say=say,
        jobs=jobs,
        action="export cache to",
    )


class RegistryCacheSource:
    """The cache at a registry reference (see module rules)."""

    def __init__(self, store: Store, ref: Reference, transport: TransportOptions, say: Say) -> None:
        self.store = store
        self.ref = ref
        self.where = ref.familiar()
        self.transport = transport
        self.say = say
        self._shared: RegistryClient | None = None
        self._opened = 0

    async def open(self) -> None:
        if self._shared is None:
            self._shared = RegistryClient(self.ref.domain, self.transport)
        self._opened += 1

    async def aclose(self) -> None:
        self._opened -= 1
        if self._opened <= 0 and self._shared is not None:
            client, self._shared = self._shared, None
            await client.__aexit__(None, None, None)

    @contextlib.asynccontextmanager
    async def _client(self) -> AsyncIterator[RegistryClient]:
        if self._shared is not None:
            yield self._shared
            return
        async with RegistryClient(self.ref.domain, self.transport) as client:
            yield client

    async def read_manifest(self) -> bytes | None:
        reference = reference_of(self.ref)
        what = f"import cache {self.where}"
        async with (
            self._client() as client,
            client.request(
                "GET",
                manifest_path(self.ref.path, reference),
                scope=scope_for(self.ref.path),
                headers={"Accept": MANIFEST_ACCEPT},
                what=what,
                allow=(404,),
            ) as response,
        ):
            if response.status_code == 404:
                return None
            data = await read_capped(response, MAX_MANIFEST_SIZE, f"cache manifest of {self.where}")
        verifier = Verifier(f"cache manifest of {self.where}", self.ref.digest, None)
        verifier.update(data)
        verifier.finish()
        return data

    async def read_config(self, desc: Descriptor) -> bytes:
        what = f"cache config {desc.digest} of {self.where}"
        async with (
            self._client() as client,
            client.request(
                "GET",
                blob_path(self.ref.path, desc.digest),
                scope=scope_for(self.ref.path),
                what=f"import {what}",
            ) as response,
        ):
            data = await read_capped(response, MAX_CONFIG_SIZE, what)
        verifier = Verifier(what, desc.digest, desc.size, MAX_CONFIG_SIZE)
        verifier.update(data)
        verifier.finish()
        return data

    async def fetch_layer(self, staging: Staging, layer: Descriptor, diff_id: str) -> None:
        what = f"cache layer {layer.digest[7:19]}"
        try:
            async with self._client() as client:
                await fetch_layer(client, self.ref, staging, layer, diff_id, what, self.say)
                record_origins(self.store, client.registry, self.ref.path, [layer.digest], self.say)
        except (ImageError, BaseExceptionGroup) as exc:
            raise one_error(exc, f"fetch {what} from {self.where}") from exc
