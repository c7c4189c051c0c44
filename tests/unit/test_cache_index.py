"""The step cache's SQLite index (``rootbuild.cache.index``) and the prune decision
(``rootbuild.cache.prune.choose_kept``, ``parse_size``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from rootbuild.cache.entry import CacheEntry
from rootbuild.cache.index import CacheIndex
from rootbuild.cache.prune import choose_kept, parse_size
from rootbuild.errors import ImageError, StoreError
from rootbuild.image.oci import Descriptor

LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"


def key(n: int) -> str:
    return f"sha256:{n:064x}"


def entry(n: int, size: int | None = 10, last_used: float = 0.0, layer: int | None = None
          ) -> CacheEntry:
    if size is None:
        return CacheEntry(key(n), None, None, f"RUN step {n}", 1.0, last_used)
    digest = key(1000 + (layer if layer is not None else n))
    return CacheEntry(key(n), Descriptor(LAYER, digest, size), key(2000 + n), f"RUN step {n}",
                      1.0, last_used)


def test_a_read_never_creates_the_database(tmp_path: Path) -> None:
    index = CacheIndex(tmp_path)
    assert index.lookup(key(1)) is None
    assert index.entries() == []
    assert index.file_digest(("/x", 1, 2, 3, 4)) is None
    index.close()
    assert list(tmp_path.iterdir()) == []


def test_record_lookup_last_used_and_remove(tmp_path: Path) -> None:
    index = CacheIndex(tmp_path)
    index.record([entry(1), entry(2, size=None)], used=[], now=100.0,
                 files=[(("/ctx/a", 1, 2, 3, 4), key(9))])
    got = index.lookup(key(1))
    assert got is not None
    assert (got.layer, got.diff_id, got.description) == (entry(1).layer, key(2001), "RUN step 1")
    assert got.last_used == 100.0
    empty = index.lookup(key(2))
    assert empty is not None and empty.layer is None and empty.diff_id is None
    index.record([], used=[key(2)], now=200.0)
    assert [e.key for e in index.entries()] == [key(2), key(1)]  # most recently used first
    assert index.file_digest(("/ctx/a", 1, 2, 3, 4)) == key(9)
    assert index.file_digest(("/ctx/a", 1, 2, 3, 5)) is None  # another mtime: unknown
    index.remove([key(1)])
    assert index.lookup(key(1)) is None
    index.close()


def test_entry_contract() -> None:
    with pytest.raises(ImageError):
        CacheEntry(key(1), Descriptor(LAYER, key(2), 1), None, "x", 0.0)
    with pytest.raises(ImageError):
        CacheEntry("nope", None, None, "x", 0.0)
    e = entry(3)
    assert CacheEntry.from_json(e.to_json(), "test") == CacheEntry(
        e.key, e.layer, e.diff_id, e.description, e.created
    )
    with pytest.raises(ImageError, match="read cache entry in test"):
        CacheEntry.from_json({"layer": None}, "test")


def test_choose_kept_is_lru_within_the_budget() -> None:
    entries = [entry(1, last_used=1), entry(2, last_used=3), entry(3, last_used=2)]
    cost = {e.layer.digest: 100 for e in entries if e.layer is not None}
    assert choose_kept(entries, cost, (), None) == []  # no budget: everything goes
    assert [e.key for e in choose_kept(entries, cost, (), 250)] == [key(2), key(3)]
    assert [e.key for e in choose_kept(entries, cost, (), 99)] == []
    # a layer a tagged image holds costs nothing; a shared layer is counted once
    held = {entries[0].layer.digest} if entries[0].layer else set()
    assert len(choose_kept(entries, cost, held, 200)) == 3
    shared = [entry(4, last_used=5, layer=7), entry(5, last_used=4, layer=7)]
    assert len(choose_kept(shared, {key(1007): 100}, (), 100)) == 2
    # entries without a layer cost nothing
    assert len(choose_kept([entry(6, size=None)], {}, (), 0)) == 1


@pytest.mark.parametrize(("text", "value"), [
    ("0", 0), ("100", 100), ("1k", 1024), ("1KB", 1024), ("2KiB", 2048), ("512mb", 512 << 20),
    ("10GB", 10 << 30), ("1.5g", 3 << 29), ("1t", 1 << 40), ("7b", 7),
])
def test_parse_size(text: str, value: int) -> None:
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["", "x", "-1", "1q", "gb", "1kk", "1.2.3g"])
def test_parse_size_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="invalid size"):
        parse_size(text)


def test_a_corrupt_index_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "cache.db").write_bytes(b"this is not a database, but long enough" * 50)
    index = CacheIndex(tmp_path)
    with pytest.raises(StoreError, match=r"read step cache .*cache\.db: .*remove that file"):
        index.lookup(key(1))
    index.close()
