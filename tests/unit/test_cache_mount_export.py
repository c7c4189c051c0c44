"""Cache mounts in an exported cache: the ``--cache-to`` attributes, the records in the
cache config and manifest (deterministic, checked on import), the size cap's choice, and a
mount's blob written from one store and restored into another (owners kept as tar
headers, an older or equal import never replacing the store's copy)."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest
import zstandard

from rootbuild.cache.mount_export import (
    ANNOTATION_MOUNT_ID,
    MOUNT_MEDIA_TYPE,
    MountRecord,
    choose_exported,
    restore_mount,
    write_mount_blob,
)
from rootbuild.cache.mounts import CacheMountInfo, CacheMounts, root_entry
from rootbuild.cache.remote import cache_documents, parse_cache_manifest, parse_cache_mounts
from rootbuild.cache.spec import parse_cache_from, parse_cache_to
from rootbuild.errors import ImageError, UsageError
from rootbuild.image.layermeta import EntryMeta, LayerMeta
from rootbuild.image.oci import Descriptor
from rootbuild.image.store import Store


def test_cache_to_mount_attributes() -> None:
    spec = parse_cache_to("type=local,dest=/c")
    assert (spec.mounts, spec.mounts_max_size) == (True, None)
    spec = parse_cache_to("type=local,dest=/c,cache-mounts=false")
    assert spec.mounts is False
    spec = parse_cache_to("type=registry,ref=r/x:c,cache-mounts-max-size=2GB")
    assert spec.mounts_max_size == 2 << 30
    with pytest.raises(UsageError, match="cache-mounts must be true or false, got 'maybe'"):
        parse_cache_to("type=local,dest=/c,cache-mounts=maybe")
    with pytest.raises(UsageError, match="cache-mounts-max-size: invalid size 'big'"):
        parse_cache_to("type=local,dest=/c,cache-mounts-max-size=big")
    with pytest.raises(UsageError, match="unknown attribute 'cache-mounts'"):
        parse_cache_from("type=local,src=/c,cache-mounts=false")  # an export attribute


def _info(key: str, size: int, used: float, instance: int = 1) -> CacheMountInfo:
    return CacheMountInfo(key, key, instance, 0, used, size)


def test_choose_exported_takes_recent_mounts_under_the_cap() -> None:
    a, b, c = _info("a", 600, 3), _info("b", 500, 2), _info("c", 100, 1)
    private = _info("a", 10, 9, instance=2)
    assert choose_exported([c, b, a, private], None) == ([a, b, c], [])
    assert choose_exported([c, b, a], 700) == ([a, c], [b])


def _record(mount_id: str, data: bytes) -> MountRecord:
    from rootbuild.image.digest import sha256_digest

    return MountRecord(mount_id, Descriptor(MOUNT_MEDIA_TYPE, sha256_digest(data), len(data)),
                       "sha256:" + "d" * 64, 12.5)


def test_documents_list_mounts_after_layers_and_import_reads_them_back() -> None:
    one, two = _record("pip", b"one"), _record("npm", b"two")
    docs = cache_documents([], [one, two])
    assert cache_documents([], [two, one]).manifest == docs.manifest  # deterministic
    manifest = json.loads(docs.manifest_bytes)
    assert [layer["annotations"][ANNOTATION_MOUNT_ID] for layer in manifest["layers"]] == [
        "npm", "pip"]
    parsed = parse_cache_manifest(docs.manifest_bytes, "here")
    assert parse_cache_mounts(docs.config_bytes, parsed, "here") == (two, one)
    assert "mounts" not in json.loads(cache_documents([]).config_bytes)  # unchanged format
    stray = cache_documents([], [one])
    with pytest.raises(ImageError, match="cache mount 'pip' names blob"):
        parse_cache_mounts(stray.config_bytes, parse_cache_manifest(
            cache_documents([]).manifest_bytes, "here"), "here")


def test_a_blob_round_trips_between_stores_with_virtual_owners(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "a")
    mounts = CacheMounts(store.root, clock=lambda: 100.0)
    key = mounts.ensure("pip", 1, root_entry(0o755, 1000, 1000, 0))
    changes_tree = tmp_path / "changes"
    (changes_tree / "wheels").mkdir(parents=True)
    (changes_tree / "wheels/a.whl").write_bytes(b"wheel")
    changes = LayerMeta.build([
        EntryMeta("wheels", "dir", mode=0o40755, uid=1000, gid=1000),
        EntryMeta("wheels/a.whl", "file", mode=0o100644, uid=1000, gid=1000, size=5),
    ])
    mounts.fold(key, changes_tree, changes)
    info = mounts.info(key)
    assert info is not None
    record = write_mount_blob(store, mounts, info)
    assert write_mount_blob(store, mounts, info) == record  # deterministic
    raw = zstandard.ZstdDecompressor().decompressobj().decompress(
        store.blob_path(record.layer.digest).read_bytes())
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        owners = {m.name: (m.uid, m.gid) for m in tar}
    assert owners["wheels/a.whl"] == (1000, 1000)

    other = CacheMounts(tmp_path / "b", clock=lambda: 50.0)
    (tmp_path / "b").mkdir()
    assert restore_mount(other, record, lambda: store.open_blob(record.layer.digest))
    restored = LayerMeta.load(other.path(key) / "meta.json")
    assert restored.get("wheels/a.whl") is not None
    assert restored.get("wheels/a.whl").uid == 1000  # type: ignore[union-attr]
    assert (other.path(key) / "tree/wheels/a.whl").read_bytes() == b"wheel"
    # the store's copy is now as new as the record: not replaced again
    assert not restore_mount(other, record, lambda: store.open_blob(record.layer.digest))


def test_an_unchanged_tree_reuses_its_export_blob_and_a_change_makes_a_new_one(
    tmp_path: Path
) -> None:
    store = Store.open(tmp_path / "s")
    mounts = CacheMounts(store.root)
    key = mounts.ensure("m", 1, root_entry(0o755, 0, 0, 0))
    info = mounts.info(key)
    assert info is not None
    first = write_mount_blob(store, mounts, info)
    blob = store.blob_path(first.layer.digest)
    blob.chmod(0o644)
    blob.write_bytes(b"not read again")  # proves the second export did not tar the tree
    assert write_mount_blob(store, mounts, info).layer == first.layer
    tree = tmp_path / "changes"
    tree.mkdir()
    (tree / "f").write_text("x")
    mounts.fold(key, tree, LayerMeta.build([EntryMeta("f", "file", size=1)]))
    changed = mounts.info(key)
    assert changed is not None and changed.generation == 1 and changed.export is None
    assert write_mount_blob(store, mounts, changed).layer.digest != first.layer.digest
    # a step that changed nothing does not count as a change
    mounts.fold(key, tree, LayerMeta.build([]))
    assert mounts.info(key).generation == 1  # type: ignore[union-attr]
