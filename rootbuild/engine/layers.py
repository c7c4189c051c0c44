"""The layers of one build: new layer blobs staged until the build succeeds, and the
extracted trees that every merged view (COPY --from, destinations, ``dir:`` output) reads.

Rules:
- New blobs go to the build's ``Staging`` area; nothing a failed build wrote becomes
  visible in the store (blobs, extracted trees) — the store is left as it was.
- A layer is extracted once per diffID into ``layers/<hex>/{rootfs,meta.json}`` and shared
  read-only by every build; extraction happens in a private directory that is renamed into
  place when the build succeeds (a failed build leaves ``layers/`` as it was), so two builds
  racing on one layer both end with one good tree. Trees are extracted only when a step or
  an output needs them.
- Every method here blocks; callers run them in a worker thread.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal, cast

from rootbuild.image.layer_extract import extract_layer
from rootbuild.image.layer_write import (
    MEDIA_TYPES,
    TarEntry,
    entries_from_extracted,
    write_layer,
)
from rootbuild.image.layermeta import LayerMeta
from rootbuild.image.oci import Descriptor
from rootbuild.image.rootfs import RootfsView
from rootbuild.image.store import Staging, Store, force_rmtree

Compression = Literal["gzip", "zstd", "none"]

# Docker schema 2 layer types and their OCI equivalents (same bytes, image-spec
# media-types.md "compatibility matrix").
_OCI_LAYER_TYPES = {
    "application/vnd.docker.image.rootfs.diff.tar.gzip":
        "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.docker.image.rootfs.diff.tar.zstd":
        "application/vnd.oci.image.layer.v1.tar+zstd",
    "application/vnd.docker.image.rootfs.diff.tar":
        "application/vnd.oci.image.layer.v1.tar",
}


@dataclass(frozen=True)
class Layer:
    descriptor: Descriptor
    diff_id: str

    def as_oci(self) -> Layer:
        media_type = _OCI_LAYER_TYPES.get(self.descriptor.media_type)
        if media_type is None:
            return self
        d = self.descriptor
        return Layer(Descriptor(media_type, d.digest, d.size), self.diff_id)


class LayerTrees:
    """Extracted trees by diffID, for one build."""

    def __init__(self, store: Store, staging: Staging) -> None:
        self._store = store
        self._staging = staging
        self._guard = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}
        self._trees: dict[str, tuple[Path, LayerMeta]] = {}
        self._pending: dict[str, Path] = {}  # trees of layers this build made: published last

    def _lock_for(self, diff_id: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(diff_id, threading.Lock())

    def tree(self, layer: Layer) -> tuple[Path, LayerMeta]:
        """The extracted tree of ``layer`` and its recorded metadata."""
        with self._lock_for(layer.diff_id):
            known = self._trees.get(layer.diff_id)
            if known is not None:
                return known
            final = self._store.layer_dir(layer.diff_id)
            if (final / "meta.json").is_file():
                found = (final / "rootfs", LayerMeta.load(final / "meta.json"))
                self._trees[layer.diff_id] = found
                return found
            work = self._store.staging_dir()
            try:
                with self._staging.open_blob(layer.descriptor.digest) as blob:
                    result = extract_layer(
                        blob, work / "rootfs",
                        media_type_or_compression=layer.descriptor.media_type,
                        layer_name=layer.descriptor.digest,
                        expected_diff_id=layer.diff_id,
                    )
                result.meta.save(work / "meta.json")
            except BaseException:
                force_rmtree(work)
                raise
            self._pending[layer.diff_id] = work  # published only if the build succeeds
            found = (work / "rootfs", result.meta)
            self._trees[layer.diff_id] = found
            return found

    def _publish(self, work: Path, final: Path) -> Path:
        final.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            os.rename(work, final)
        except OSError:  # another build published the same layer first: use theirs
            force_rmtree(work)
        return final

    def lower(self, layer: Layer) -> tuple[Path, Path]:
        """(tree dir, meta.json) of ``layer``, for the overlay a RUN step runs on."""
        tree, _meta = self.tree(layer)
        return tree, tree.parent / "meta.json"

    def adopt(
        self, tree: Path, meta: LayerMeta, compression: Compression, epoch: int | None
    ) -> Layer | None:
        """Turn a RUN step's changes (an extracted-layer tree and its metadata, as the
        overlay wrote them) into a new layer without extracting anything again. None when
        the step changed nothing (BuildKit's exporter drops empty layers too)."""
        if not (meta.entries or meta.whiteouts or meta.opaque_dirs):
            return None
        with self._staging.ingest(media_type=MEDIA_TYPES[compression], what="layer") as writer:
            result = write_layer(
                entries_from_extracted(tree, meta), cast(BinaryIO, writer),
                compression=compression, source_date_epoch=epoch,
            )
        assert writer.descriptor is not None
        layer = Layer(writer.descriptor, result.diff_id)
        with self._lock_for(layer.diff_id):
            if layer.diff_id not in self._trees:
                work = self._store.staging_dir()
                os.rename(tree, work / "rootfs")
                meta.save(work / "meta.json")
                self._pending[layer.diff_id] = work
                self._trees[layer.diff_id] = (work / "rootfs", meta)
        return layer

    def view(self, layers: Sequence[Layer]) -> RootfsView:
        return RootfsView([self.tree(layer) for layer in layers])

    def commit(
        self, entries: Iterable[TarEntry], compression: Compression, epoch: int | None
    ) -> Layer:
        """Write a new layer blob into the staging area. Its tree is extracted only when a
        later step or output needs it (a final COPY is never unpacked again)."""
        with self._staging.ingest(media_type=MEDIA_TYPES[compression], what="layer") as writer:
            result = write_layer(
                entries, cast(BinaryIO, writer), compression=compression,
                source_date_epoch=epoch,
            )
        assert writer.descriptor is not None
        return Layer(writer.descriptor, result.diff_id)

    def publish(self) -> None:
        """After the build's blobs are committed: move this build's trees into the store."""
        for diff_id, work in self._pending.items():
            final = self._publish(work, self._store.layer_dir(diff_id))
            self._trees[diff_id] = (final / "rootfs", self._trees[diff_id][1])
        self._pending.clear()

    def discard(self) -> None:
        for work in self._pending.values():
            force_rmtree(work)
        self._pending.clear()
