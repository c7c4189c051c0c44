"""``rootbuild prune``: the step cache's part of garbage collection.

Rules (``docker buildx prune``, ``docker builder prune --keep-storage``):
- Without ``keep_storage`` every cache entry goes (``buildx prune --all``); with it, the
  most recently used entries are kept while the storage they alone hold fits in the
  budget, and the least recently used go first.
- An entry's cost is what removing it would free: its layer blob and the layer's extracted
  tree, counted once per layer, and nothing for a layer a tagged image keeps anyway.
- The decision is made under the store's exclusive GC lock (``Store.prune(also_keep=)``),
  so no build adds or uses entries meanwhile; kept entries keep their blobs and trees.
- When a tagged image keeps a layer blob, the blob's tree stays too, even if that image's
  config cannot be read (a cache entry still says which diffID the blob has).
- Cache mounts (``RUN --mount=type=cache``, ``cache/mounts.py``) are cache records too,
  as in BuildKit: without ``keep_storage`` they all go; with it they compete for the same
  budget by last use, their cost being their size.
- Scratch a killed build left (``tmp/``) may hold files its kernel-overlay step gave
  subordinate ids: what the user may not remove is removed inside the user namespace
  (``sandbox/userns_rm.py``), never left behind silently.
- What ADD remembers of URLs (ETag and digest, ``store.remote_records_dir``) serves only
  cached steps: without ``keep_storage`` it goes with them (the next build downloads
  again); with it, the few hundred bytes per URL stay.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from rootbuild.cache.entry import CacheEntry
from rootbuild.cache.index import CacheIndex
from rootbuild.cache.mounts import CacheMountInfo, CacheMounts
from rootbuild.image.store import Store, tree_size
from rootbuild.sandbox.userns_rm import remove_tree


@dataclass(frozen=True)
class PruneResult:
    freed: int  # bytes
    removed: int  # cache entries
    kept: int
    mounts_removed: int = 0  # cache mounts
    mounts_kept: int = 0


def choose_kept(
    entries: Sequence[CacheEntry], cost: Mapping[str, int], held: Iterable[str],
    keep_storage: int | None,
) -> list[CacheEntry]:
    """The entries to keep: ``entries`` most recently used first, ``cost`` by layer
    digest, ``held`` the layer digests tagged images keep anyway."""
    return choose_kept_with_mounts(entries, cost, held, (), keep_storage)[0]


def choose_kept_with_mounts(
    entries: Sequence[CacheEntry], cost: Mapping[str, int], held: Iterable[str],
    mounts: Sequence[CacheMountInfo], keep_storage: int | None,
) -> tuple[list[CacheEntry], list[CacheMountInfo]]:
    """``choose_kept`` with the cache mounts in the same budget, by last use."""
    if keep_storage is None:
        return [], []
    counted = set(held)
    used = 0
    kept: list[CacheEntry] = []
    kept_mounts: list[CacheMountInfo] = []
    records: list[tuple[float, str, CacheEntry | CacheMountInfo]] = [
        *((e.last_used, "e" + e.key, e) for e in entries),
        *((m.last_used, "m" + m.key, m) for m in mounts),
    ]
    for _, _, record in sorted(records, key=lambda r: (-r[0], r[1])):
        if isinstance(record, CacheMountInfo):
            if used + record.size <= keep_storage:
                used += record.size
                kept_mounts.append(record)
            continue
        entry = record
        digest = entry.layer.digest if entry.layer is not None else None
        extra = 0 if digest is None or digest in counted else cost.get(digest, 0)
        if used + extra > keep_storage:
            continue
        used += extra
        if digest is not None:
            counted.add(digest)
        kept.append(entry)
    return kept, kept_mounts


def prune(store: Store, keep_storage: int | None = None, wait: bool = True) -> PruneResult:
    """Prune the store and its step cache (see the module rules)."""
    index = CacheIndex(store.root)
    mounts = CacheMounts(store.root)
    counts = {"removed": 0, "kept": 0, "mounts_removed": 0, "mounts_kept": 0, "freed": 0}

    def also_keep() -> tuple[set[str], set[str]]:
        entries = index.entries()
        held_blobs, _held_diffs = store.reachable()
        cost: dict[str, int] = {}
        for entry in entries:
            if entry.layer is None or entry.diff_id is None or entry.layer.digest in cost:
                continue
            size = entry.layer.size if store.has_blob(entry.layer.digest) else 0
            with contextlib.suppress(OSError):
                size += tree_size(store.layer_dir(entry.diff_id))
            cost[entry.layer.digest] = size
        infos = mounts.list()
        kept, kept_mounts = choose_kept_with_mounts(
            entries, cost, held_blobs, infos, keep_storage
        )
        kept_mount_keys = {m.key for m in kept_mounts}
        for info in infos:
            if info.key not in kept_mount_keys:
                counts["freed"] += mounts.remove(info.key)
        counts["freed"] += mounts.remove_broken()
        counts["mounts_removed"] = len(infos) - len(kept_mounts)
        counts["mounts_kept"] = len(kept_mounts)
        if keep_storage is None:
            counts["freed"] += _remove_remote_records(store)
        kept_keys = {e.key for e in kept}
        index.remove(e.key for e in entries if e.key not in kept_keys)
        counts["removed"] = len(entries) - len(kept)
        counts["kept"] = len(kept)
        held = [e for e in entries if e.layer is not None and e.layer.digest in held_blobs]
        return (
            {e.layer.digest for e in kept if e.layer is not None},
            {e.diff_id for e in [*kept, *held] if e.diff_id is not None},
        )

    try:
        freed = store.prune(wait=wait, also_keep=also_keep, remove=remove_tree)
    finally:
        index.close()
    return PruneResult(freed + counts["freed"], counts["removed"], counts["kept"],
                       counts["mounts_removed"], counts["mounts_kept"])


def _remove_remote_records(store: Store) -> int:
    freed = 0
    with contextlib.suppress(FileNotFoundError):
        for entry in sorted(store.remote_records_dir.iterdir()):
            with contextlib.suppress(FileNotFoundError):
                freed += entry.lstat().st_size
                entry.unlink()
    return freed


_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(text: str) -> int:
    """``--keep-storage`` sizes as Docker reads them (go-units ``RAMInBytes``: ``512mb``,
    ``10GB``, ``1.5g``, ``2GiB``, plain bytes; multiples of 1024, case-insensitive)."""
    clean = text.strip().lower()
    number = clean.rstrip("bikmgt")
    unit = clean[len(number):].removesuffix("b").removesuffix("i") if clean[len(number):] \
        not in ("", "b") else ""
    try:
        value = float(number)
    except ValueError:
        value = -1.0
    if unit not in _UNITS or value < 0 or not number:
        raise ValueError(f"invalid size {text!r} (use e.g. 512MB, 10GB)")
    return int(value * _UNITS[unit])
