"""Base images of a build: one fetch per reference, different references at once (bug 4:
one lock held across every pull serialised stages with different bases)."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from rootbuild.engine.bases import StoreBaseImages
from rootbuild.errors import ImageError
from rootbuild.image.oci import StoredImage
from rootbuild.image.refs import ImageRef
from rootbuild.image.store import Store
from rootbuild.platform import Platform
from rootbuild.registry.client import TransportOptions
from rootbuild.testing.fakes import RecordingProgress, put_image

AMD64 = Platform("linux", "amd64")


class SlowBases(StoreBaseImages):
    """The real locking of ``get`` over a fetch that takes a second and counts overlap."""

    def __init__(self, store: Store) -> None:
        super().__init__(store, TransportOptions(), RecordingProgress())
        self.image = put_image(store, {"f": b"x"})
        self.fetches: list[str] = []
        self.running = 0
        self.most = 0

    async def _fetch(self, ref: ImageRef, text: str, platform: Platform) -> StoredImage:
        self.fetches.append(text)
        self.running += 1
        self.most = max(self.most, self.running)
        await trio.sleep(1)
        self.running -= 1
        return self.image


async def test_different_references_are_fetched_at_once(tmp_path: Path,
                                                        autojump_clock: object) -> None:
    bases = SlowBases(Store.open(tmp_path / "store"))
    async with trio.open_nursery() as nursery:
        for ref in ("alpine:3", "debian:12", "alpine:3", "alpine:3"):
            nursery.start_soon(bases.get, ref, AMD64)
    assert sorted(bases.fetches) == ["alpine:3", "debian:12"]  # each once
    assert bases.most == 2  # the two pulls overlapped


async def test_an_unparsable_reference_is_an_image_error(tmp_path: Path) -> None:
    bases = StoreBaseImages(Store.open(tmp_path / "store"), TransportOptions(),
                            RecordingProgress())
    with pytest.raises(ImageError):
        await bases.get("UPPER/Case::bad", AMD64)
