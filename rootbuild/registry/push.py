"""Push one stored image to a registry.

Rules (OCI distribution-spec "Pushing blobs"/"Pushing manifests"; Docker manifest v2.2):
- Blobs first, manifest last: a registry never holds a manifest whose blobs are missing.
- A blob the repository already has (``HEAD`` answers 200) is not sent again. Others are
  uploaded monolithically: ``POST /blobs/uploads/`` then ``PUT <Location>?digest=``,
  streamed from the store with ``Content-Length``; an upload that breaks off is started
  again a bounded number of times.
- The manifest keeps its stored bytes (and digest) unless ``docker_format`` asks for
  Docker schema 2 media types, which makes a new manifest (and a new digest); zstd layers
  have no Docker media type and are refused.
- The returned digest is the sha256 of the manifest bytes sent; a registry that reports a
  different ``Docker-Content-Digest`` is an error.
- Uploads run concurrently (at most ``jobs``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import trio

from rootbuild.errors import ImageError, RegistryError
from rootbuild.image.digest import CHUNK, sha256_digest
from rootbuild.image.oci import DOCKER_MANIFEST, Descriptor, Manifest, StoredImage
from rootbuild.image.refs import parse_reference
from rootbuild.image.store import Store
from rootbuild.registry.client import (
    DEFAULT_TRANSPORT,
    RegistryClient,
    TransientError,
    TransportOptions,
)
from rootbuild.registry.protocol import (
    blob_path,
    manifest_path,
    scope_for,
    to_docker_manifest,
    upload_path,
)
from rootbuild.registry.pull import one_error

Say = Callable[[str], None]


def _quiet(_line: str) -> None:
    pass


def manifest_to_push(
    manifest_bytes: bytes, media_type: str, docker_format: bool, where: str
) -> tuple[bytes, str, Manifest]:
    """The manifest bytes and media type to send, and the parsed manifest they describe."""
    manifest = Manifest.parse(manifest_bytes, media_type)
    if docker_format and manifest.media_type != DOCKER_MANIFEST:
        manifest = to_docker_manifest(manifest, where)
        return manifest.to_bytes(), DOCKER_MANIFEST, manifest
    return manifest_bytes, manifest.media_type, manifest


def with_digest(location: str, digest: str) -> str:
    """The upload URL with ``digest=`` added (the Location may carry its own query)."""
    sep = "&" if "?" in location else "?"
    return f"{location}{sep}digest={digest}"


class _Pusher:
    def __init__(
        self, client: RegistryClient, store: Store, repo: str, where: str, say: Say, jobs: int
    ) -> None:
        self.client = client
        self.store = store
        self.repo = repo
        self.where = where
        self.scope = scope_for(repo, push=True)
        self.say = say
        self.limiter = trio.CapacityLimiter(max(1, jobs))

    async def exists(self, desc: Descriptor) -> bool:
        async with self.client.request(
            "HEAD",
            blob_path(self.repo, desc.digest),
            scope=self.scope,
            what=f"push {self.where}: check blob {desc.digest}",
            allow=(404,),
        ) as response:
            return response.status_code == 200

    def _body(self, desc: Descriptor) -> Callable[[], AsyncIterator[bytes]]:
        async def chunks() -> AsyncIterator[bytes]:
            with self.store.open_blob(desc.digest) as f:
                while chunk := f.read(CHUNK):
                    yield chunk

        return chunks

    async def upload(self, desc: Descriptor) -> None:
        what = f"push {self.where}: upload blob {desc.digest}"
        async with self.client.request(
            "POST",
            upload_path(self.repo),
            scope=self.scope,
            what=what,
            ok=(202,),
            headers={"Content-Length": "0"},
        ) as response:
            location = response.headers.get("location")
        if not location:
            raise RegistryError(f"{what}: registry gave no upload location")
        url = str(response.url.join(location))
        async with self.client.request(
            "PUT",
            with_digest(url, desc.digest),
            scope=self.scope,
            what=what,
            ok=(201,),
            headers={"Content-Type": "application/octet-stream", "Content-Length": str(desc.size)},
            content=self._body(desc),
        ):
            pass

    async def blob(self, desc: Descriptor, what: str) -> None:
        async with self.limiter:
            if await self.exists(desc):
                self.say(f"{what} {desc.digest[7:19]}: already exists")
                return
            self.say(f"pushing {what} {desc.digest[7:19]} ({desc.size} bytes)")
            attempt = 0
            while True:
                try:
                    await self.upload(desc)
                    break
                except TransientError:
                    attempt += 1
                    if attempt >= self.client.retries:
                        raise
                    self.say(f"retrying {what} {desc.digest[7:19]}")
                    await self.client.sleep_backoff(attempt)
            self.say(f"pushed {what} {desc.digest[7:19]}")

    async def manifest(self, tag: str, data: bytes, media_type: str) -> str:
        digest = sha256_digest(data)
        async with self.client.request(
            "PUT",
            manifest_path(self.repo, tag),
            scope=self.scope,
            what=f"push {self.where}: put manifest",
            ok=(201, 200),
            headers={"Content-Type": media_type},
            content=lambda: data,
        ) as response:
            reported = response.headers.get("docker-content-digest")
        if reported and reported != digest:
            raise RegistryError(
                f"push {self.where}: registry stored the manifest as {reported}, sent {digest}"
            )
        return digest


async def push(
    store: Store,
    image: StoredImage,
    ref: str,
    *,
    transport: TransportOptions = DEFAULT_TRANSPORT,
    docker_format: bool = False,
    progress: Callable[[str], None] | None = None,
    jobs: int = 4,
) -> str:
    """Push ``image`` to ``ref`` (``[registry/]name[:tag]``); return the manifest digest."""
    parsed = parse_reference(ref)
    where = parsed.familiar()
    if parsed.digest is not None:
        raise RegistryError(f"push {ref}: cannot push to a digest reference; name a tag")
    say = progress or _quiet
    try:
        manifest_bytes = await trio.to_thread.run_sync(store.read_blob, image.manifest)
        data, media_type, manifest = manifest_to_push(
            manifest_bytes, image.manifest.media_type, docker_format, where
        )
        async with RegistryClient(parsed.domain, transport) as client:
            pusher = _Pusher(client, store, parsed.path, where, say, jobs)
            blobs = {manifest.config.digest: (manifest.config, "config")}
            for n, layer in enumerate(manifest.layers):
                blobs.setdefault(layer.digest, (layer, f"layer {n + 1}/{len(manifest.layers)}"))
            async with trio.open_nursery() as nursery:
                for desc, what in blobs.values():
                    nursery.start_soon(pusher.blob, desc, what)
            digest = await pusher.manifest(parsed.tag or "latest", data, media_type)
    except (ImageError, BaseExceptionGroup) as exc:
        raise one_error(exc, f"push {where}") from exc
    say(f"pushed {where}: {digest}")
    return digest
