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
- Cross-repository mount (distribution-spec "Mounting a blob from another repository"): a
  blob ``HEAD`` reports missing, that the store's origins index (``origins.py``) places in
  another repository of the SAME registry, is first asked for with ``POST
  /blobs/uploads/?mount=<digest>&from=<repo>`` under a token for both repositories
  (``repository:<name>:pull,push`` and ``repository:<from>:pull``). 201 means mounted;
  202 means not, and the upload continues through that 202's session (no second POST).
- After a successful push every store blob is recorded as held by ``registry/repo``.
- ``push_blobs_and_manifest`` is the public core (used by ``push`` and by the step cache's
  registry transport): any blobs, some of which may be served from memory rather than the
  store, then one manifest. ``push`` adds reading the stored image and ``--format docker``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping, Sequence

import trio

from rootbuild.errors import ImageError, RegistryError
from rootbuild.image.digest import CHUNK, sha256_digest
from rootbuild.image.oci import DOCKER_MANIFEST, Descriptor, Manifest, StoredImage
from rootbuild.image.refs import Reference, parse_reference
from rootbuild.image.store import Store
from rootbuild.registry.client import (
    DEFAULT_TRANSPORT,
    RegistryClient,
    TransientError,
    TransportOptions,
)
from rootbuild.registry.origins import Origins
from rootbuild.registry.protocol import (
    blob_path,
    manifest_path,
    scope_for,
    to_docker_manifest,
    upload_path,
)
from rootbuild.registry.pull import one_error, record_origins

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


def mount_scope(repo: str, source: str) -> str:
    """The token scopes a mount needs (token.md: several scopes, space-separated here;
    the client sends each as its own ``scope`` parameter)."""
    return f"{scope_for(repo, push=True)} {scope_for(source)}"


class _Pusher:
    def __init__(
        self,
        client: RegistryClient,
        store: Store,
        repo: str,
        where: str,
        say: Say,
        jobs: int,
        in_memory: Mapping[str, bytes],
    ) -> None:
        self.client = client
        self.store = store
        self.in_memory = dict(in_memory)
        self.repo = repo
        self.where = where
        self.scope = scope_for(repo, push=True)
        self.say = say
        self.limiter = trio.CapacityLimiter(max(1, jobs))
        self.origins = Origins(store.root, store.tmp_dir)

    def mount_source(self, desc: Descriptor) -> str | None:
        """Another repository of this registry known to hold ``desc`` (a hint)."""
        try:
            repos = self.origins.lookup(self.client.registry, desc.digest, exclude=self.repo)
        except OSError:
            return None  # no hints: the blob is uploaded as it would be without them
        return repos[0] if repos else None

    async def mount(self, desc: Descriptor, source: str) -> str | None:
        """Ask for ``desc`` to be mounted from ``source``: None when mounted (201), else
        the upload session URL the registry opened instead (202)."""
        what = f"push {self.where}: mount blob {desc.digest} from {source}"
        async with self.client.request(
            "POST",
            f"{upload_path(self.repo)}?mount={desc.digest}&from={source}",
            scope=mount_scope(self.repo, source),
            what=what,
            ok=(201, 202),
            headers={"Content-Length": "0"},
        ) as response:
            if response.status_code == 201:
                return None
            location = response.headers.get("location")
        if not location:
            raise RegistryError(f"{what}: registry gave no upload location")
        return str(response.url.join(location))

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
        """A fresh byte stream of ``desc`` per attempt: from memory when given, else the store."""
        data = self.in_memory.get(desc.digest)
        if data is not None:
            payload = data

            async def from_memory() -> AsyncIterator[bytes]:
                yield payload

            return from_memory

        async def from_store() -> AsyncIterator[bytes]:
            with self.store.open_blob(desc.digest) as f:
                while chunk := f.read(CHUNK):
                    yield chunk

        return from_store

    async def start_upload(self, what: str) -> str:
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
        return str(response.url.join(location))

    async def upload(self, desc: Descriptor, session: str | None = None) -> None:
        """Upload ``desc`` monolithically, through ``session`` when one is open."""
        what = f"push {self.where}: upload blob {desc.digest}"
        url = session or await self.start_upload(what)
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
            session: str | None = None
            source = self.mount_source(desc)
            if source is not None:
                session = await self.mount(desc, source)
                if session is None:
                    self.say(f"mounted {what} {desc.digest[7:19]} from {source}")
                    return
            self.say(f"pushing {what} {desc.digest[7:19]} ({desc.size} bytes)")
            attempt = 0
            while True:
                try:
                    await self.upload(desc, session)
                    break
                except TransientError:
                    attempt += 1
                    if attempt >= self.client.retries:
                        raise
                    session = None  # a broken session is not reused: start afresh
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


async def push_blobs_and_manifest(
    store: Store,
    ref: Reference,
    blobs: Sequence[tuple[Descriptor, str]],
    manifest_bytes: bytes,
    media_type: str,
    *,
    in_memory: Mapping[str, bytes] | None = None,
    transport: TransportOptions = DEFAULT_TRANSPORT,
    say: Say = _quiet,
    jobs: int = 4,
    action: str = "push",
) -> str:
    """Push ``blobs`` to ``ref``'s repository, then ``manifest_bytes`` (of ``media_type``)
    under ``ref.tag`` (``latest`` when none); return the manifest digest (see module rules).

    ``blobs`` are ``(descriptor, progress label)`` pairs; a digest listed twice is sent once,
    under its first label. A blob whose digest is a key of ``in_memory`` is sent from those
    bytes, every other one from ``store`` (the caller keeps it there, e.g. under the store's
    shared lock). Once the manifest is in, the store blobs (not the in-memory ones) are
    recorded as held by ``registry/repo``. Errors: one ``RootbuildError`` (the first of
    the concurrent uploads'); a failed verification (``ImageError``) becomes a
    ``RegistryError`` worded ``"<action> <ref>: <cause>"``.
    """
    where = ref.familiar()
    if ref.digest is not None:
        raise RegistryError(f"{action} {where}: cannot push to a digest reference; name a tag")
    memory = dict(in_memory or {})
    unique: dict[str, tuple[Descriptor, str]] = {}
    for desc, what in blobs:
        unique.setdefault(desc.digest, (desc, what))
    try:
        async with RegistryClient(ref.domain, transport) as client:
            pusher = _Pusher(client, store, ref.path, where, say, jobs, memory)
            async with trio.open_nursery() as nursery:
                for desc, what in unique.values():
                    nursery.start_soon(pusher.blob, desc, what)
            digest = await pusher.manifest(ref.tag or "latest", manifest_bytes, media_type)
            from_store = [blob for blob in unique if blob not in memory]
            record_origins(store, client.registry, ref.path, from_store, say)
    except (ImageError, BaseExceptionGroup) as exc:
        raise one_error(exc, f"{action} {where}") from exc
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
    except ImageError as exc:
        raise one_error(exc, f"push {where}") from exc
    blobs = [(manifest.config, "config")]
    blobs += [
        (layer, f"layer {n + 1}/{len(manifest.layers)}") for n, layer in enumerate(manifest.layers)
    ]
    digest = await push_blobs_and_manifest(
        store, parsed, blobs, data, media_type, transport=transport, say=say, jobs=jobs
    )
    say(f"pushed {where}: {digest}")
    return digest
