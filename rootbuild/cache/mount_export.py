"""Cache mounts in an exported cache (``--cache-to``/``--cache-from``): one blob each.

Job: ``MountRecord`` (what the cache config says of one cache mount), ``choose_exported``
(which mounts an export takes, under its size cap; pure), ``write_mount_blob`` (a cache
mount's contents as a deterministic zstd layer tar in the store) and ``restore_mount``
(an imported blob back into the store's cache mount).

Format: each mount is one manifest layer, media type
``application/vnd.oci.image.layer.v1.tar+zstd``, annotated ``dev.rootbuild.cache.mount.id``;
the tar is what ``layer_write`` makes of the mount's extracted tree and metadata, so owners
and modes are the virtual ones, as tar headers (uid 1000 stays uid 1000). The cache config
lists ``{"id", "digest", "size", "mediaType", "diffID", "lastUsed"}`` per mount.

Rules:
- Deterministic: entries sorted, times from the metadata, fixed zstd level; an unchanged
  mount gives the same digest, so a registry that has it is not sent it again (``HEAD``)
  and a local cache directory keeps its blob. A tree unchanged since its last export or
  its restore (``CacheMountInfo.generation``) is not even read again: the blob it made
  (or came from) is reused while the store still has it.
- Only instance 1 of each id travels (``sharing=private`` overflow instances stay local).
- Restoring happens only when the store has no copy of the id or an older one (by last
  use): a runner's own newer cache is never replaced by the registry's.
- An imported blob is verified (digest, size, diffID) before it is extracted, and extracted
  by ``layer_extract`` (never ``extractall``) into a new tree that replaces the old one by
  rename under the mount's tree lock.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO, cast

from rootbuild.cache.mounts import CacheMountInfo, CacheMounts
from rootbuild.errors import ImageError
from rootbuild.image.layer_write import MEDIA_TYPES, entries_from_extracted, write_layer
from rootbuild.image.layermeta import LayerMeta
from rootbuild.image.oci import Descriptor
from rootbuild.image.store import Store

ANNOTATION_MOUNT_ID = "dev.rootbuild.cache.mount.id"
MOUNT_MEDIA_TYPE = MEDIA_TYPES["zstd"]


@dataclass(frozen=True)
class MountRecord:
    """One cache mount of an exported cache."""

    id: str
    layer: Descriptor
    diff_id: str
    last_used: float

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "digest": self.layer.digest, "size": self.layer.size,
                "mediaType": self.layer.media_type, "diffID": self.diff_id,
                "lastUsed": self.last_used}

    @classmethod
    def from_json(cls, data: Any, where: str) -> MountRecord:
        try:
            layer = Descriptor.from_json(
                {"mediaType": data["mediaType"], "digest": data["digest"],
                 "size": data["size"]}, f"cache mount of {where}")
            record = cls(str(data["id"]), layer, str(data["diffID"]), float(data["lastUsed"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ImageError(f"read cache {where}: malformed cache mount record") from exc
        if layer.media_type != MOUNT_MEDIA_TYPE or not record.diff_id.startswith("sha256:"):
            raise ImageError(f"read cache {where}: cache mount {record.id!r} is not a zstd tar")
        return record

    @property
    def descriptor(self) -> Descriptor:
        """The manifest layer: the blob, annotated with the mount's id."""
        return self.layer.with_annotations({ANNOTATION_MOUNT_ID: self.id})


def choose_exported(
    infos: Sequence[CacheMountInfo], max_size: int | None
) -> tuple[list[CacheMountInfo], list[CacheMountInfo]]:
    """(exported, skipped): instance-1 mounts, most recently used first, while their total
    size fits in ``max_size`` (None: no cap). Pure."""
    chosen: list[CacheMountInfo] = []
    skipped: list[CacheMountInfo] = []
    total = 0
    for info in sorted(infos, key=lambda i: (-i.last_used, i.id)):
        if info.instance != 1:
            continue
        if max_size is not None and total + info.size > max_size:
            skipped.append(info)
            continue
        total += info.size
        chosen.append(info)
    return chosen, skipped


def write_mount_blob(store: Store, mounts: CacheMounts, info: CacheMountInfo) -> MountRecord:
    """The contents of the mount ``info`` names as a zstd tar blob in ``store`` (the
    caller holds the store's shared lock until the export is done); a tree unchanged
    since its last export (or its restore) reuses that blob. Blocking."""
    with mounts.reading(info.key) as (tree, meta_path, now):
        current = now or info
        if current.export is not None and store.has_blob(current.export[0]):
            digest, size, diff_id = current.export
            return MountRecord(info.id, Descriptor(MOUNT_MEDIA_TYPE, digest, size), diff_id,
                               current.last_used)
        meta = LayerMeta.load(meta_path)
        with store.ingest(media_type=MOUNT_MEDIA_TYPE, what="cache mount") as writer:
            result = write_layer(entries_from_extracted(tree, meta), cast(BinaryIO, writer),
                                 compression="zstd")
    assert writer.descriptor is not None
    mounts.record_export(info.key, current.generation,
                         (writer.descriptor.digest, writer.descriptor.size, result.diff_id))
    return MountRecord(info.id, writer.descriptor, result.diff_id, current.last_used)


def restore_mount(mounts: CacheMounts, record: MountRecord,
                  open_blob: Callable[[], BinaryIO]) -> bool:
    """Put ``record``'s contents into the store as instance 1 of its id, unless the store
    has a copy used at or after ``record.last_used``. True when restored. Blocking."""
    return mounts.replace_from(record.id, record.last_used, open_blob, record.diff_id,
                               (record.layer.digest, record.layer.size, record.diff_id))
