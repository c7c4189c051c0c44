"""The step cache's directory transport (``type=local``) and its format, round-tripped for real:
entries and layer bytes survive export, import and fetch into a fresh store; a second export
copies nothing; tampered, planted and malformed caches are refused with clear errors."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import re
import tarfile
from pathlib import Path

import pytest

from rootbuild.cache.entry import CacheEntry
from rootbuild.cache.remote import (
    CACHE_CONFIG,
    cache_documents,
    export_cache,
    import_cache,
)
from rootbuild.cache.spec import CacheSpec
from rootbuild.errors import ImageError, StoreError
from rootbuild.image.oci import OCI_LAYER_GZIP, OCI_MANIFEST, canonical_json
from rootbuild.image.store import Store
from rootbuild.registry.client import TransportOptions

T = TransportOptions()


def layer(files: dict[str, bytes]) -> tuple[bytes, str]:
    """A gzip tar layer made in memory: (blob bytes, diffID)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, content in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size = len(content)
            info.mtime = 1700000000
            tar.addfile(info, io.BytesIO(content))
    plain = raw.getvalue()
    return gzip.compress(plain, mtime=0), "sha256:" + hashlib.sha256(plain).hexdigest()


def key(n: int) -> str:
    return "sha256:" + hashlib.sha256(f"step {n}".encode()).hexdigest()


def make_entries(store: Store) -> list[CacheEntry]:
    out = []
    for n, files in enumerate([{"a": b"one"}, {"b/c": b"two" * 1000}]):
        blob, diff_id = layer(files)
        desc = store.put_bytes(blob, OCI_LAYER_GZIP)
        out.append(CacheEntry(key(n), desc, diff_id, f"RUN step {n}", 1700000000.0 + n))
    out.append(CacheEntry(key(9), None, None, "ENV A=b", 1700000009.5))
    # a second step that produced the same layer: the blob is exported once
    out.append(CacheEntry(key(10), out[0].layer, out[0].diff_id, "RUN again", 1700000010.0))
    return out


class Lines:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def __call__(self, line: str) -> None:
        self.lines.append(line)


@pytest.fixture
def src_store(tmp_path: Path) -> Store:
    return Store.open(tmp_path / "src")


@pytest.fixture
def dst_store(tmp_path: Path) -> Store:
    return Store.open(tmp_path / "dst")


def blob_file(cache: Path, digest: str) -> Path:
    return cache / "blobs" / "sha256" / digest.removeprefix("sha256:")


async def test_round_trip_into_a_fresh_store(
    tmp_path: Path, src_store: Store, dst_store: Store
) -> None:
    entries = make_entries(src_store)
    cache = tmp_path / "ci-cache" / "new"
    say = Lines()
    digest = await export_cache(
        src_store, entries, CacheSpec("local", str(cache)), transport=T, say=say
    )
    assert json.loads((cache / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    index = json.loads((cache / "index.json").read_text())
    assert index["manifests"] == [
        {
            "mediaType": OCI_MANIFEST,
            "digest": digest,
            "size": blob_file(cache, digest).stat().st_size,
            "annotations": {"org.opencontainers.image.ref.name": "latest"},
        }
    ]
    manifest = json.loads(blob_file(cache, digest).read_bytes())
    assert manifest["config"]["mediaType"] == CACHE_CONFIG
    assert [x["digest"] for x in manifest["layers"]] == [
        e.layer.digest for e in sorted(entries[:2], key=lambda e: e.key) if e.layer
    ]
    assert len(os.listdir(cache / "blobs" / "sha256")) == 4  # 2 layers, config, manifest

    imported = await import_cache(dst_store, CacheSpec("local", str(cache)), transport=T, say=say)
    assert {k: e.to_json() for k, e in imported.entries.items()} == {
        e.key: e.to_json() for e in entries
    }
    assert any(line.startswith(f"imported 4 cache entries from {cache}") for line in say.lines)
    with dst_store.stage() as staging:
        for entry in imported.entries.values():
            await imported.fetch(staging, entry)
        staging.commit()
    for entry in entries:
        if entry.layer is not None:
            with (
                dst_store.open_blob(entry.layer.digest) as got,
                src_store.open_blob(entry.layer.digest) as want,
            ):
                assert got.read() == want.read()


async def test_second_export_copies_nothing_and_replaces_the_old_cache(
    tmp_path: Path, src_store: Store
) -> None:
    entries = make_entries(src_store)
    cache = tmp_path / "cache"
    spec = CacheSpec("local", str(cache), "max")
    say = Lines()
    first = await export_cache(src_store, entries, spec, transport=T, say=say)
    assert f"cache {cache}: 4 blobs written, 0 already there" in say.lines
    inodes = {p.name: p.stat().st_ino for p in (cache / "blobs" / "sha256").iterdir()}
    second = await export_cache(src_store, list(reversed(entries)), spec, transport=T, say=say)
    assert second == first  # same entries, any order: same manifest
    assert f"cache {cache}: 0 blobs written, 4 already there" in say.lines
    assert {p.name: p.stat().st_ino for p in (cache / "blobs" / "sha256").iterdir()} == inodes

    # A smaller cache replaces it: the layer only the old one used is gone afterwards.
    third = await export_cache(src_store, entries[:1], spec, transport=T, say=say)
    assert f"cache {cache}: 2 blobs written, 1 already there" in say.lines
    names = set(os.listdir(cache / "blobs" / "sha256"))
    assert blob_file(cache, third).name in names
    assert entries[0].layer is not None and entries[1].layer is not None
    assert entries[0].layer.digest.removeprefix("sha256:") in names
    assert entries[1].layer.digest.removeprefix("sha256:") not in names
    assert len(names) == 3


async def test_tampered_blob_is_refused_on_fetch(
    tmp_path: Path, src_store: Store, dst_store: Store
) -> None:
    entries = make_entries(src_store)
    cache = tmp_path / "cache"
    await export_cache(src_store, entries, CacheSpec("local", str(cache)), transport=T, say=Lines())
    victim = entries[1]
    assert victim.layer is not None
    path = blob_file(cache, victim.layer.digest)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    imported = await import_cache(
        dst_store, CacheSpec("local", str(cache)), transport=T, say=Lines()
    )
    with dst_store.stage() as staging:
        with pytest.raises(
            ImageError, match=r"^verify cache layer sha256:[0-9a-f]{64} in .*: digest is"
        ):
            await imported.fetch(staging, victim)
        assert not staging.has_blob(victim.layer.digest)
        await imported.fetch(staging, entries[0])  # the others still come in
        assert entries[0].layer is not None and staging.has_blob(entries[0].layer.digest)


async def test_planted_symlink_blob_is_not_followed(
    tmp_path: Path, src_store: Store, dst_store: Store
) -> None:
    entries = make_entries(src_store)
    cache = tmp_path / "cache"
    await export_cache(src_store, entries, CacheSpec("local", str(cache)), transport=T, say=Lines())
    victim = entries[0]
    assert victim.layer is not None
    path = blob_file(cache, victim.layer.digest)
    outside = tmp_path / "outside"
    outside.write_bytes(path.read_bytes())  # even the right bytes, behind a symlink
    path.unlink()
    path.symlink_to(outside)
    imported = await import_cache(
        dst_store, CacheSpec("local", str(cache)), transport=T, say=Lines()
    )
    with dst_store.stage() as staging, pytest.raises(ImageError, match="read blobs/sha256/"):
        await imported.fetch(staging, victim)


async def test_fetch_skips_a_blob_already_there(src_store: Store, tmp_path: Path) -> None:
    entries = make_entries(src_store)
    cache = tmp_path / "cache"
    await export_cache(src_store, entries, CacheSpec("local", str(cache)), transport=T, say=Lines())
    imported = await import_cache(
        src_store, CacheSpec("local", str(cache)), transport=T, say=Lines()
    )
    for path in (cache / "blobs" / "sha256").iterdir():
        path.unlink()  # the source is gone: only a skip can succeed
    with src_store.stage() as staging:
        for entry in entries:
            await imported.fetch(staging, entry)


async def test_missing_cache_warns_and_imports_nothing(tmp_path: Path, dst_store: Store) -> None:
    for where in (tmp_path / "absent", tmp_path / "empty"):
        (tmp_path / "empty").mkdir(exist_ok=True)
        say = Lines()
        imported = await import_cache(
            dst_store, CacheSpec("local", str(where)), transport=T, say=say
        )
        assert imported.entries == {}
        assert say.lines == [f"WARNING: local cache import from {where} not found"]


def write_cache_dir(cache: Path, config: bytes, config_type: str = CACHE_CONFIG) -> None:
    """A hand-made cache layout whose config blob is ``config``."""
    blobs = cache / "blobs" / "sha256"
    blobs.mkdir(parents=True)

    def put(data: bytes) -> dict[str, object]:
        digest = hashlib.sha256(data).hexdigest()
        (blobs / digest).write_bytes(data)
        return {"digest": f"sha256:{digest}", "size": len(data)}

    manifest = canonical_json(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": config_type, **put(config)},
            "layers": [],
        }
    )
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": OCI_MANIFEST,
                **put(manifest),
                "annotations": {"org.opencontainers.image.ref.name": "latest"},
            }
        ],
    }
    (cache / "index.json").write_text(json.dumps(index))
    (cache / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')


@pytest.mark.parametrize(
    ("config", "config_type", "message"),
    [
        (
            b'{"version": 1, "entries": [',
            CACHE_CONFIG,
            "parse cache config of {cache}: invalid JSON",
        ),
        (b"[]", CACHE_CONFIG, "parse cache config of {cache}: expected a JSON object"),
        (
            b'{"version": 2, "entries": []}',
            CACHE_CONFIG,
            "read cache {cache}: unsupported cache version 2",
        ),
        (
            b'{"version": 1, "entries": {}}',
            CACHE_CONFIG,
            "read cache {cache}: entries must be a list",
        ),
        (
            b'{"version": 1, "entries": [{"key": "sha256:nothex"}]}',
            CACHE_CONFIG,
            "parse digest 'sha256:nothex'",
        ),
        (
            canonical_json(
                {
                    "version": 1,
                    "entries": [
                        {
                            "key": key(1),
                            "layer": {"mediaType": OCI_LAYER_GZIP, "digest": key(2), "size": 3},
                            "diffID": key(3),
                        }
                    ],
                }
            ),
            CACHE_CONFIG,
            "read cache {cache}: entry " + key(1) + " names layer " + key(2) + ", which the "
            "manifest does not list",
        ),
        (
            b"{}",
            "application/vnd.oci.image.config.v1+json",
            "read cache {cache}: not a rootbuild cache "
            "(config media type 'application/vnd.oci.image.config.v1+json')",
        ),
    ],
)
async def test_malformed_cache_is_a_clear_error(
    tmp_path: Path, dst_store: Store, config: bytes, config_type: str, message: str
) -> None:
    cache = tmp_path / "cache"
    write_cache_dir(cache, config, config_type)
    with pytest.raises(ImageError, match=re.escape(message.format(cache=cache))):
        await import_cache(dst_store, CacheSpec("local", str(cache)), transport=T, say=Lines())


async def test_tampered_config_is_refused(
    tmp_path: Path, src_store: Store, dst_store: Store
) -> None:
    cache = tmp_path / "cache"
    digest = await export_cache(
        src_store, make_entries(src_store), CacheSpec("local", str(cache)), transport=T, say=Lines()
    )
    config = json.loads(blob_file(cache, digest).read_bytes())["config"]["digest"]
    path = blob_file(cache, config)
    path.write_bytes(path.read_bytes().replace(b"RUN step 0", b"RUN step X"))
    with pytest.raises(ImageError, match=r"^verify cache config sha256:[0-9a-f]{64}: digest is"):
        await import_cache(dst_store, CacheSpec("local", str(cache)), transport=T, say=Lines())


async def test_export_refuses_to_replace_an_image_layout(tmp_path: Path, src_store: Store) -> None:
    cache = tmp_path / "image"
    write_cache_dir(cache, b"{}", "application/vnd.oci.image.config.v1+json")
    before = sorted(p.name for p in (cache / "blobs" / "sha256").iterdir())
    with pytest.raises(
        ImageError, match=r"^export cache to .*: it holds an OCI layout that is not"
    ):
        await export_cache(
            src_store,
            make_entries(src_store),
            CacheSpec("local", str(cache)),
            transport=T,
            say=Lines(),
        )
    assert sorted(p.name for p in (cache / "blobs" / "sha256").iterdir()) == before


async def test_export_needs_every_layer_in_the_store(tmp_path: Path, src_store: Store) -> None:
    ghost = CacheEntry(key(1), cache_documents([]).config, key(2), "RUN x", 0.0)
    with pytest.raises(
        StoreError, match=r"^export cache to .*: layer sha256:[0-9a-f]{64} is not in store"
    ):
        await export_cache(
            src_store, [ghost], CacheSpec("local", str(tmp_path / "c")), transport=T, say=Lines()
        )
    assert not (tmp_path / "c").exists()


async def test_fetch_refuses_an_entry_of_another_cache(
    tmp_path: Path, src_store: Store, dst_store: Store
) -> None:
    entries = make_entries(src_store)
    cache = tmp_path / "cache"
    await export_cache(
        src_store, entries[:1], CacheSpec("local", str(cache)), transport=T, say=Lines()
    )
    imported = await import_cache(
        dst_store, CacheSpec("local", str(cache)), transport=T, say=Lines()
    )
    with (
        dst_store.stage() as staging,
        pytest.raises(StoreError, match="not part of this imported cache"),
    ):
        await imported.fetch(staging, entries[1])


def test_documents_are_deterministic_and_deduplicated(src_store: Store) -> None:
    entries = make_entries(src_store)
    one = cache_documents(entries)
    two = cache_documents([*reversed(entries), entries[0]])
    assert one.manifest == two.manifest and one.manifest_bytes == two.manifest_bytes
    assert len(one.entries) == 4 and len(one.layers) == 2
    config = json.loads(one.config_bytes)
    assert config["version"] == 1 and [e["key"] for e in config["entries"]] == sorted(
        e.key for e in entries
    )
    assert one.config_bytes == canonical_json(config)
