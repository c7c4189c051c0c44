"""Pull one image for one platform from a registry into the store.

Rules (OCI distribution-spec "Pulling manifests"/"Pulling blobs"; SECURITY.md rule 7):
- The manifest reference is the digest when one is given (it wins over the tag, as in
  Docker). A digest-pinned manifest is checked against that digest; a tag's manifest is
  named by the sha256 of the bytes received, never by a header.
- An index (or Docker manifest list) is resolved to the entry for the requested platform;
  none matching is an error listing the platforms it has. Schema 1 is refused.
- Manifests and configs are capped at 4 MiB. Layers stream into a staging area, each one's
  size and digest checked while it is read and its diffID checked against the config.
- A blob already in the store is never requested; a second pull of the same image makes
  only the manifest request(s).
- Atomic: blobs are committed and the name tagged only once the whole image verified; a
  failed pull leaves the store as it was. Errors are one-line ``RegistryError``s.
- Downloads run concurrently (at most ``jobs``); a transfer that breaks off is started
  again a bounded number of times with backoff.
- Progress: one line when a layer starts and one when it is done, each with its size, and
  a running tally ``pulling 2/5 layers, 34.1/120.0 MB`` at most every 0.5 s while bytes
  arrive, plus once when the last layer is done (lines suit plain logs and the build's
  live view alike).
- A pulled image's blobs are recorded in the store's origins index as held by
  ``registry/repo`` (``origins.py``), so that a later push to that registry can mount them.
- ``fetch_layer`` is the public single-layer download (the step cache's registry transport
  uses it): the same streaming, verification, retries and progress lines as a pull's layers,
  into the caller's staging area, over the caller's client.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import trio

from rootbuild.errors import ImageError, RegistryError, RootbuildError
from rootbuild.image.digest import CHUNK, Verifier, diff_id_of
from rootbuild.image.oci import (
    INDEX_TYPES,
    Descriptor,
    Index,
    Manifest,
    StoredImage,
    diff_ids_of,
    layer_compression,
    parse_json_object,
)
from rootbuild.image.refs import Reference, parse_reference
from rootbuild.image.store import Staging, Store
from rootbuild.platform import Platform
from rootbuild.registry.client import (
    DEFAULT_TRANSPORT,
    RegistryClient,
    TransientError,
    TransportOptions,
    read_capped,
)
from rootbuild.registry.origins import Origins
from rootbuild.registry.protocol import (
    MANIFEST_ACCEPT,
    MAX_CONFIG_SIZE,
    MAX_MANIFEST_SIZE,
    blob_path,
    check_document_type,
    choose_from_index,
    document_type,
    manifest_path,
    reference_of,
    scope_for,
)

MAX_INDEX_DEPTH = 2
Say = Callable[[str], None]


@dataclass(frozen=True)
class _Fetched:
    descriptor: Descriptor
    data: bytes


def _quiet(_line: str) -> None:
    pass


def _human(size: int) -> str:
    value = float(size)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.1f} {unit}" if unit != "B" else f"{size} B"
        value /= 1000
    return f"{size} B"  # pragma: no cover


class PullTally:
    """Bytes and layers of one pull, said as ``pulling 2/5 layers, 34.1/120.0 MB`` at most
    every ``interval`` seconds, and once more when the last layer is done."""

    def __init__(
        self,
        layers: int,
        total_bytes: int,
        say: Say,
        *,
        interval: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.layers = layers
        self.total_bytes = total_bytes
        self.layers_done = 0
        self.bytes_done = 0
        self._say = say
        self._interval = interval
        self._clock = clock
        self._last = clock()

    def line(self) -> str:
        mb = 1_000_000
        return (
            f"pulling {self.layers_done}/{self.layers} layers, "
            f"{self.bytes_done / mb:.1f}/{self.total_bytes / mb:.1f} MB"
        )

    def add(self, size: int) -> None:
        """``size`` more bytes arrived (negative: a broken attempt's bytes are taken back)."""
        self.bytes_done += size
        now = self._clock()
        if size > 0 and now - self._last >= self._interval:
            self._last = now
            self._say(self.line())

    def layer_done(self) -> None:
        self.layers_done += 1
        if self.layers_done == self.layers:
            self._last = self._clock()
            self._say(self.line())


def record_origins(
    store: Store, registry: str, repo: str, digests: Iterable[str], say: Say
) -> None:
    """Record that ``registry/repo`` holds ``digests`` (mount hints for later pushes). The
    pull or push already succeeded: a failure to write the hint is said, not raised."""
    try:
        Origins(store.root, store.tmp_dir).record(registry, repo, digests)
    except OSError as exc:
        say(f"warning: cannot record blob origins in {store.root}: {exc.strerror or exc}")


async def _download_layer(
    client: RegistryClient,
    repo: str,
    where: str,
    staging: Staging,
    layer: Descriptor,
    diff_id: str,
    what: str,
    say: Say,
    tally: PullTally,
) -> None:
    """Stream one layer into ``staging``; retry a transfer that breaks off; check the
    diffID of the verified blob."""
    say(f"pulling {what} ({_human(layer.size)})")
    attempt = 0
    while True:
        writer = staging.ingest(layer.digest, layer.size, layer.media_type, what)
        received = 0
        try:
            async with client.request(
                "GET", blob_path(repo, layer.digest), scope=scope_for(repo), what=f"pull {what}"
            ) as response:
                async for chunk in response.aiter_bytes(CHUNK):
                    writer.write(chunk)  # counts and hashes: over-long fails here
                    received += len(chunk)
                    tally.add(len(chunk))
            await trio.to_thread.run_sync(writer.close)  # digest + size, then placed
            break
        except TransientError:
            writer.abort()
            tally.add(-received)
            attempt += 1
            if attempt >= client.retries:
                raise
            say(f"retrying {what}")
            await client.sleep_backoff(attempt)
        except BaseException:
            writer.abort()
            raise
    actual = await trio.to_thread.run_sync(_diff_id, staging, layer, what)
    if actual != diff_id:
        raise RegistryError(f"pull {where}: {what}: diffID is {actual}, config says {diff_id}")
    say(f"pulled {what} ({_human(layer.size)})")
    tally.layer_done()


def _diff_id(staging: Staging, layer: Descriptor, what: str) -> str:
    with staging.open_blob(layer.digest) as f:
        return diff_id_of(f, layer_compression(layer.media_type), what)


async def fetch_layer(
    client: RegistryClient,
    ref: Reference,
    staging: Staging,
    layer: Descriptor,
    diff_id: str,
    what: str,
    say: Say = _quiet,
) -> None:
    """Download ``layer`` of ``ref``'s repository into ``staging`` (committed by the
    caller): streamed, its size and digest verified while it arrives, retried when the
    transfer breaks off, then its diffID checked against ``diff_id`` (image-spec config.md
    ``rootfs.diff_ids``). Progress lines name it ``what``, with a one-layer tally.

    Errors are raised as they come (``RegistryError``, ``ImageError`` for a blob that
    fails verification): the caller words them, e.g. with ``one_error``. Nothing is recorded
    in the origins index; ``record_origins`` does that once the caller is done.
    """
    tally = PullTally(1, layer.size, say)
    await _download_layer(
        client, ref.path, ref.familiar(), staging, layer, diff_id, what, say, tally
    )


class _Puller:
    def __init__(
        self, client: RegistryClient, store: Store, ref: Reference, say: Say, jobs: int
    ) -> None:
        self.client = client
        self.store = store
        self.repo = ref.path
        self.where = ref.familiar()
        self.scope = scope_for(self.repo)
        self.say = say
        self.limiter = trio.CapacityLimiter(max(1, jobs))
        self.tally = PullTally(0, 0, say)

    async def manifest(self, reference: str, expected: Descriptor | None) -> _Fetched:
        """Fetch a manifest or index, verified against ``expected`` or a pinned digest."""
        what = f"pull {self.where}"
        async with self.client.request(
            "GET",
            manifest_path(self.repo, reference),
            scope=self.scope,
            headers={"Accept": MANIFEST_ACCEPT},
            what=what,
            allow=(404,),
        ) as response:
            if response.status_code == 404:
                raise RegistryError(
                    f"pull {self.where}: manifest unknown: {self.client.registry}/{self.repo} "
                    f"has no {'manifest' if reference.startswith('sha256:') else 'tag'} "
                    f"{reference}"
                )
            data = await read_capped(response, MAX_MANIFEST_SIZE, f"manifest of {self.where}")
            content_type = response.headers.get("content-type")
        pinned = expected.digest if expected else (reference if ":" in reference else None)
        verifier = Verifier(
            f"manifest {reference}", pinned, expected.size if expected else None, MAX_MANIFEST_SIZE
        )
        verifier.update(data)
        digest = verifier.finish()
        try:
            declared = json.loads(data).get("mediaType")
        except (ValueError, AttributeError):
            declared = None
        media_type = document_type(declared, content_type)
        if not declared and expected is not None:
            media_type = expected.media_type
        check_document_type(media_type, self.where)
        return _Fetched(Descriptor(media_type, digest, len(data)), data)

    async def small_blob(self, desc: Descriptor, what: str) -> bytes:
        """A config: from the store when it is there, else fetched, capped and verified."""
        if self.store.has_blob(desc.digest):
            return await trio.to_thread.run_sync(self.store.read_blob, desc, MAX_CONFIG_SIZE)
        async with self.client.request(
            "GET", blob_path(self.repo, desc.digest), scope=self.scope, what=f"pull {what}"
        ) as response:
            data = await read_capped(response, MAX_CONFIG_SIZE, what)
        verifier = Verifier(what, desc.digest, desc.size, MAX_CONFIG_SIZE)
        verifier.update(data)
        verifier.finish()
        return data

    async def layer(self, staging: Staging, layer: Descriptor, diff_id: str, what: str) -> None:
        async with self.limiter:
            await _download_layer(
                self.client,
                self.repo,
                self.where,
                staging,
                layer,
                diff_id,
                what,
                self.say,
                self.tally,
            )

    async def resolve(self, reference: str, platform: Platform) -> _Fetched:
        """The single-platform manifest ``reference`` names for ``platform``."""
        fetched = await self.manifest(reference, None)
        depth = 0
        while fetched.descriptor.media_type in INDEX_TYPES:
            if depth >= MAX_INDEX_DEPTH:
                raise RegistryError(f"pull {self.where}: image indexes nested too deeply")
            index = Index.parse(fetched.data, f"index {fetched.descriptor.digest}")
            chosen = choose_from_index(index, platform, self.where)
            fetched = await self.manifest(chosen.digest, chosen)
            depth += 1
        return fetched

    async def run(self, reference: str, platform: Platform, tag: str | None) -> StoredImage:
        top = await self.resolve(reference, platform)
        manifest = Manifest.parse(top.data, top.descriptor.media_type)
        config_bytes = await self.small_blob(manifest.config, f"config {manifest.config.digest}")
        diff_ids = diff_ids_of(parse_json_object(config_bytes, "image config"))
        if len(diff_ids) != len(manifest.layers):
            raise RegistryError(
                f"pull {self.where}: config lists {len(diff_ids)} diff_ids for "
                f"{len(manifest.layers)} layers"
            )
        with self.store.shared_lock(), self.store.stage() as staging:
            wanted: dict[str, tuple[Descriptor, str, str]] = {}
            for n, (layer, diff_id) in enumerate(zip(manifest.layers, diff_ids, strict=True)):
                if not self.store.has_blob(layer.digest) and layer.digest not in wanted:
                    wanted[layer.digest] = (
                        layer,
                        diff_id,
                        f"layer {n + 1}/{len(diff_ids)} {layer.digest[7:19]}",
                    )
            if not wanted:
                self.say(f"{self.where}: all layers already present")
            self.tally = PullTally(
                len(wanted), sum(desc.size for desc, _, _ in wanted.values()), self.say
            )
            async with trio.open_nursery() as nursery:
                for layer, diff_id, what in wanted.values():
                    nursery.start_soon(self.layer, staging, layer, diff_id, what)

            def commit() -> StoredImage:
                staging.put_bytes(config_bytes, manifest.config.media_type)
                staging.put_bytes(top.data, top.descriptor.media_type)
                image = StoredImage.from_documents(top.descriptor, top.data, config_bytes)
                staging.commit()
                if tag is not None:
                    self.store.tag(tag, image.manifest)
                return image

            return await trio.to_thread.run_sync(commit)


async def pull(
    store: Store,
    ref: str,
    platform: Platform,
    *,
    transport: TransportOptions = DEFAULT_TRANSPORT,
    progress: Callable[[str], None] | None = None,
    jobs: int = 4,
) -> StoredImage:
    """Pull ``ref`` for ``platform`` into ``store`` (see module rules); tag it under its
    normalised name (``alpine`` -> ``alpine:latest``) unless it is pinned by a digest
    (as ``docker pull name@sha256:...`` leaves the image untagged)."""
    parsed = parse_reference(ref)
    tag = parsed.familiar() if parsed.digest is None else None
    try:
        async with RegistryClient(parsed.domain, transport) as client:
            puller = _Puller(client, store, parsed, progress or _quiet, jobs)
            image = await puller.run(reference_of(parsed), platform, tag)
            digests = [image.config.digest, *(layer.digest for layer in image.layers)]
            record_origins(store, client.registry, parsed.path, digests, progress or _quiet)
            return image
    except (ImageError, BaseExceptionGroup) as exc:
        raise one_error(exc, f"pull {parsed.familiar()}") from exc


def one_error(exc: BaseException, action: str) -> BaseException:
    """The error to report for ``exc``: the first ``RootbuildError`` of a task group (trio's
    nurseries group concurrent failures), an ``ImageError`` turned into a ``RegistryError``."""
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = one_error(inner, action)
            if isinstance(found, RootbuildError):
                return found
        return exc
    if isinstance(exc, ImageError):
        return RegistryError(f"{action}: {exc.message}")
    return exc
