"""Base images of one build (``FROM``, ``COPY --from``, ``RUN --mount from=``): the store's
``BaseImages``.

Rules:
- A name in the store wins when it is for the build's platform (as ``docker build`` uses
  local images), unless ``always_pull`` (``--pull``): then every name is looked up in its
  registry again (a new digest is pulled, the same one reuses the store's blobs); any
  other name is pulled from its registry; ``oci:``, ``oci-archive:``
  and ``docker-archive:`` references are imported.
- Each (reference, platform) is fetched once per build. A lock per reference, not one for
  all: stages on different bases pull at the same time, two stages on one base wait for
  the one pull.
- Errors carry no location; the caller knows which line asked.
"""

from __future__ import annotations

import trio

from rootbuild.errors import ImageError, RegistryError, RootbuildError, UsageError
from rootbuild.image.archives import import_image
from rootbuild.image.oci import StoredImage, config_platform
from rootbuild.image.refs import ImageRef, parse_base_ref
from rootbuild.image.store import Store
from rootbuild.platform import Platform
from rootbuild.progress import Progress
from rootbuild.registry.transport import TransportOptions


def platform_of(image: StoredImage) -> Platform | None:
    """The image's platform as its config states it, normalised like ``--platform``."""
    declared = config_platform(image.config_json)
    return Platform.parse(str(declared)) if declared is not None else None


class StoreBaseImages:
    def __init__(self, store: Store, transport: TransportOptions, progress: Progress,
                 always_pull: bool = False) -> None:
        self.store = store
        self.always_pull = always_pull  # --pull: look the reference up in its registry
        self.transport = transport
        self.progress = progress
        self._images: dict[tuple[str, str], StoredImage] = {}
        self._locks: dict[tuple[str, str], trio.Lock] = {}
        # for engine/replay.py: store name -> manifest digest of every base it gave, and
        # whether one came from anywhere else (an archive or layout imported)
        self.resolved: dict[str, str] = {}
        self.imported = False

    async def get(self, ref: str, platform: Platform) -> StoredImage:
        key = (ref, str(platform))
        lock = self._locks.setdefault(key, trio.Lock())
        async with lock:
            if key not in self._images:
                try:
                    parsed = parse_base_ref(ref)
                except UsageError as exc:
                    raise ImageError(exc.message) from exc
                image = await self._fetch(parsed, ref, platform)
                if parsed.transport == "store":
                    self.resolved[ref] = image.manifest.digest
                else:
                    self.imported = True
                self._images[key] = image
            return self._images[key]

    async def _fetch(self, ref: ImageRef, text: str, platform: Platform) -> StoredImage:
        if ref.transport != "store":
            return await trio.to_thread.run_sync(import_image, self.store, ref, platform)
        assert ref.name is not None
        local = await trio.to_thread.run_sync(self.store.resolve, ref.name)
        if local is not None and platform_of(local) == platform and not self.always_pull:
            return local
        from rootbuild.registry.pull import pull  # the HTTP client: only for a pull

        handle = self.progress.start(f"pulling {text}")
        try:
            image = await pull(
                self.store, text, platform, transport=self.transport,
                progress=lambda line: self.progress.output(handle, line),
            )
        except RootbuildError as exc:
            have = "not in the store" if local is None else (
                "--pull: the stored copy is not used" if platform_of(local) == platform
                else "for another platform only")
            error = RegistryError(
                f"pull {text} for {platform} ({have}): "
                f"{exc.message.removeprefix(f'pull {text}: ')}"
            )
            self.progress.failed(handle, str(error))
            raise error from exc
        self.progress.done(handle)
        return image
