"""``Store.prune`` and ``rootbuild prune`` (cache/prune.py) with a tagged image that does
not load: it keeps every blob and extracted tree its readable documents name, while
what nothing reaches goes (image/store.py "a broken image keeps what it has")."""

from __future__ import annotations

import gzip
import io
import json
import tarfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from rootbuild.cache.entry import CacheEntry
from rootbuild.cache.index import CacheIndex
from rootbuild.cache.prune import prune
from rootbuild.errors import StoreError
from rootbuild.image.digest import hex_of, sha256_digest
from rootbuild.image.oci import (
    OCI_CONFIG,
    OCI_LAYER,
    OCI_LAYER_GZIP,
    OCI_MANIFEST,
    Descriptor,
    Manifest,
)
from rootbuild.image.store import Store


def tar_of(name: str, data: bytes) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


@dataclass
class Image:
    manifest: Descriptor
    config: Descriptor
    layers: list[tuple[Descriptor, str]]  # (blob, diffID)


def add_image(
    store: Store, name: str, files: dict[str, bytes], config_lists: slice = slice(None)
) -> Image:
    """Tag an image with one layer per file (gzip for names ending in .gz), and extract
    each layer's tree (``layers/<hex of diffID>``) as a build would have. The config lists
    the ``config_lists`` part of the diffIDs."""
    layers: list[tuple[Descriptor, str]] = []
    for path, data in files.items():
        tar = tar_of(path, data)
        diff_id = sha256_digest(tar)
        blob = gzip.compress(tar, mtime=0) if path.endswith(".gz") else tar
        layers.append((store.put_bytes(blob, OCI_LAYER_GZIP if blob != tar else OCI_LAYER),
                       diff_id))
        rootfs = store.layer_dir(diff_id) / "rootfs"
        rootfs.mkdir(parents=True)
        (rootfs / path).write_bytes(data)
    config = store.put_bytes(json.dumps({
        "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [d for _, d in layers][config_lists]},
    }).encode(), OCI_CONFIG)
    manifest = Manifest(OCI_MANIFEST, config, tuple(b for b, _ in layers)).to_bytes()
    desc = store.put_bytes(manifest, OCI_MANIFEST)
    store.tag(name, desc)
    return Image(desc, config, layers)


def tree(store: Store, diff_id: str) -> Path:
    return store.layers_dir / hex_of(diff_id)


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store.open(tmp_path / "store")


def break_config(store: Store, image: Image, how: str) -> None:
    path = store.blob_path(image.config.digest)
    path.unlink()
    if how == "corrupt":  # present but no longer what the manifest says it is
        path.write_bytes(b'{"rootfs": "not what the digest says"}')


@pytest.mark.parametrize("how", ["missing", "corrupt"])
def test_an_image_whose_config_is_unreadable_keeps_its_layers(store: Store, how: str) -> None:
    healthy = add_image(store, "healthy", {"h.gz": b"healthy"})
    broken = add_image(store, "broken", {"a.gz": b"gzip layer", "b": b"plain layer"})
    gone = add_image(store, "gone", {"g.gz": b"untagged"})
    store.untag("gone")
    stray = store.put_bytes(b"nobody refers to me", "application/octet-stream")
    break_config(store, broken, how)
    assert store.load(healthy.manifest)  # the healthy image still loads

    assert store.prune() > 0

    (gz_blob, gz_diff), (plain_blob, plain_diff) = broken.layers
    # the broken image: manifest and both layer blobs stay; an uncompressed layer's diffID
    # is its digest, so its tree stays too
    assert store.has_blob(broken.manifest.digest)
    assert store.has_blob(gz_blob.digest) and store.has_blob(plain_blob.digest)
    assert (tree(store, plain_diff) / "rootfs" / "b").read_bytes() == b"plain layer"
    # a corrupt config blob is kept as it is (prune never guesses)
    assert store.blob_path(broken.config.digest).exists() == (how == "corrupt")
    # the healthy image keeps everything
    for desc in (healthy.manifest, healthy.config, healthy.layers[0][0]):
        assert store.has_blob(desc.digest)
    assert tree(store, healthy.layers[0][1]).is_dir()
    # what nothing reaches goes
    assert not store.has_blob(stray.digest)
    for desc in (gone.manifest, gone.config, gone.layers[0][0]):
        assert not store.has_blob(desc.digest)
    assert not tree(store, gone.layers[0][1]).exists()
    # the gzip layer's diffID is only in the lost config: Store.prune cannot know its tree
    assert not tree(store, gz_diff).exists()


def test_rootbuild_prune_keeps_the_tree_a_cache_entry_names_for_a_kept_blob(
    store: Store,
) -> None:
    broken = add_image(store, "broken", {"a.gz": b"gzip layer"})
    (gz_blob, gz_diff), = broken.layers
    other = add_image(store, "other", {"o.gz": b"cache only"})
    store.untag("other")
    (other_blob, other_diff), = other.layers
    index = CacheIndex(store.root)
    try:
        index.record([
            CacheEntry(sha256_digest(b"step 1"), gz_blob, gz_diff, "RUN a", 1.0),
            CacheEntry(sha256_digest(b"step 2"), other_blob, other_diff, "RUN o", 1.0),
        ], [], 2.0)
    finally:
        index.close()
    break_config(store, broken, "missing")

    result = prune(store)  # no --keep-storage: every cache entry goes

    assert result.removed == 2 and result.kept == 0
    assert store.has_blob(gz_blob.digest)
    assert (tree(store, gz_diff) / "rootfs" / "a.gz").read_bytes() == b"gzip layer"
    assert not store.has_blob(other_blob.digest) and not tree(store, other_diff).exists()


def test_a_config_that_does_not_fit_its_manifest_still_keeps_the_trees_it_names(
    store: Store,
) -> None:
    # verified, but one diffID for two layers: the image does not load
    broken = add_image(store, "broken", {"a.gz": b"one", "b.gz": b"two"}, slice(1))
    (a_blob, a_diff), (b_blob, b_diff) = broken.layers
    with pytest.raises(StoreError, match="config lists 1 diff_ids for 2 layers"):
        store.load(broken.manifest)

    store.prune()

    for desc in (broken.manifest, broken.config, a_blob, b_blob):
        assert store.has_blob(desc.digest)
    assert tree(store, a_diff).is_dir()
    assert not tree(store, b_diff).exists()  # named nowhere readable
