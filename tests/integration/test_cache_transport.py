"""The step cache's registry transport against a real ``docker-registry`` (distribution 2.8,
Debian's), in process: export -> import -> fetch round trips, a second export that uploads no
blob (counted in the registry's access log), origins recorded by a fetch and then used by a
push of an image to another repository (a cross-repository mount, no upload).

These tests run the library, not the builder, so they need no build user.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import re
import tarfile
import time
from pathlib import Path

import pytest
from registry_fixtures import (  # noqa: F401 (pytest fixtures)
    Registry,
    registry_base_fixture,
    registry_fixture,
)

from rootbuild.cache.entry import CacheEntry
from rootbuild.cache.remote import CACHE_CONFIG, export_cache, import_cache
from rootbuild.cache.spec import parse_cache_from, parse_cache_to
from rootbuild.errors import RegistryError
from rootbuild.image.oci import (
    OCI_CONFIG,
    OCI_LAYER_GZIP,
    OCI_MANIFEST,
    StoredImage,
    canonical_json,
)
from rootbuild.image.store import Store
from rootbuild.registry.client import TransportOptions
from rootbuild.registry.origins import Origins
from rootbuild.registry.push import push

pytestmark = pytest.mark.integration

T = TransportOptions()
ACCESS = re.compile(r'"(?P<method>[A-Z]+) (?P<path>/v2/[^ "]*) HTTP/[0-9.]+" (?P<status>\d{3}) ')


def requests_for(reg: Registry, repo: str) -> list[tuple[str, str, int]]:
    """(method, path, status) of every access-log line for ``/v2/<repo>/``."""
    time.sleep(0.3)  # the registry writes the line as it finishes the response
    return [
        (m["method"], m["path"], int(m["status"]))
        for m in ACCESS.finditer(reg.log_text())
        if m["path"].startswith(f"/v2/{repo}/")
    ]


def uploads(requests: list[tuple[str, str, int]]) -> list[tuple[str, str, int]]:
    """Requests that start or carry a blob upload (POST/PATCH/PUT under /blobs/uploads/)."""
    return [r for r in requests if r[0] in ("POST", "PATCH", "PUT") and "/blobs/uploads/" in r[1]]


def layer(files: dict[str, bytes]) -> tuple[bytes, str]:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, content in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size = len(content)
            info.mtime = 1700000000
            tar.addfile(info, io.BytesIO(content))
    plain = raw.getvalue()
    return gzip.compress(plain, mtime=0), "sha256:" + hashlib.sha256(plain).hexdigest()


def make_entries(store: Store, tag: str) -> list[CacheEntry]:
    out = []
    for n in range(2):
        blob, diff_id = layer({f"{tag}/{n}": f"{tag} {n}\n".encode() * (200 + n)})
        desc = store.put_bytes(blob, OCI_LAYER_GZIP)
        k = "sha256:" + hashlib.sha256(f"{tag} step {n}".encode()).hexdigest()
        out.append(CacheEntry(k, desc, diff_id, f"RUN {tag} {n}", 1700000000.0 + n))
    k = "sha256:" + hashlib.sha256(f"{tag} env".encode()).hexdigest()
    out.append(CacheEntry(k, None, None, "ENV X=1", 1700000002.0))
    return out


class Lines:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def __call__(self, line: str) -> None:
        self.lines.append(line)


async def test_round_trip_and_a_second_export_uploads_nothing(
    tmp_path: Path, registry: Registry
) -> None:
    src, dst = Store.open(tmp_path / "src"), Store.open(tmp_path / "dst")
    entries = make_entries(src, "rt")
    ref = registry.ref("rt-cache:buildcache")
    say = Lines()
    digest = await export_cache(
        src, entries, parse_cache_to(f"type=registry,ref={ref},mode=max"), transport=T, say=say
    )
    first = requests_for(registry, "rt-cache")
    # distribution 2.8 took the OCI manifest with the custom config media type as it is.
    status, body, headers = registry.get("/v2/rt-cache/manifests/buildcache", accept=OCI_MANIFEST)
    assert status == 200 and headers["Content-Type"] == OCI_MANIFEST
    assert "sha256:" + hashlib.sha256(body).hexdigest() == digest
    assert json.loads(body)["config"]["mediaType"] == CACHE_CONFIG
    assert (
        sum(1 for r in first if r[0] == "PUT" and "/blobs/uploads/" in r[1]) == 3
    )  # 2 layers + config

    imported = await import_cache(dst, parse_cache_from(ref), transport=T, say=say)
    assert {k: e.to_json() for k, e in imported.entries.items()} == {
        e.key: e.to_json() for e in entries
    }
    async with imported:
        with dst.stage() as staging:
            for entry in imported.entries.values():
                await imported.fetch(staging, entry)
            staging.commit()
    for entry in entries:
        if entry.layer is not None:
            assert (
                dst.blob_path(entry.layer.digest).read_bytes()
                == src.blob_path(entry.layer.digest).read_bytes()
            )

    say2 = Lines()
    again = await export_cache(
        src, list(reversed(entries)), parse_cache_to(ref), transport=T, say=say2
    )
    assert again == digest
    second = requests_for(registry, "rt-cache")[len(first) :]
    assert uploads(second) == [], second
    heads = [r for r in second if r[0] == "HEAD" and "/blobs/" in r[1]]
    assert len(heads) == 3 and all(r[2] == 200 for r in heads)
    assert sum("already exists" in line for line in say2.lines) == 3
    assert [r[:2] for r in second if r[0] == "PUT"] == [
        ("PUT", "/v2/rt-cache/manifests/buildcache")
    ]


async def test_fetch_records_origin_and_a_later_push_mounts(
    tmp_path: Path, registry: Registry
) -> None:
    src, dst = Store.open(tmp_path / "src"), Store.open(tmp_path / "dst")
    entries = make_entries(src, "origin")
    ref_a = registry.ref("cache-a:1")
    await export_cache(src, entries, parse_cache_to(ref_a), transport=T, say=Lines())
    imported = await import_cache(dst, parse_cache_from(ref_a), transport=T, say=Lines())
    with dst.shared_lock(), dst.stage() as staging:
        for entry in entries:
            await imported.fetch(staging, imported.entries[entry.key])  # own client each
        staging.commit()
    layers = [e.layer for e in entries if e.layer is not None]
    origins = Origins(dst.root, dst.tmp_dir)
    for desc in layers:
        assert origins.lookup(registry.host, desc.digest) == ["cache-a"]

    # An image made of those layers, pushed from dst to another repository: they are mounted.
    config = canonical_json(
        {
            "architecture": "amd64",
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [e.diff_id for e in entries if e.layer]},
        }
    )
    config_desc = dst.put_bytes(config, OCI_CONFIG)
    manifest = canonical_json(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": config_desc.to_json(),
            "layers": [d.to_json() for d in layers],
        }
    )
    image = StoredImage.from_documents(dst.put_bytes(manifest, OCI_MANIFEST), manifest, config)
    said = Lines()
    await push(dst, image, registry.ref("app-b:1"), progress=said)
    reqs = requests_for(registry, "app-b")
    mounted = [r for r in reqs if r[0] == "POST" and "mount=" in r[1]]
    assert len(mounted) == 2 and all(r[2] == 201 and "from=cache-a" in r[1] for r in mounted)
    data_sent = [r for r in uploads(reqs) if r[0] in ("PUT", "PATCH")]
    assert len(data_sent) == 1  # the image config only
    assert sum(line.startswith("mounted") for line in said.lines) == 2

    # That image is no cache: importing it is a clear error naming the ref.
    with pytest.raises(
        RegistryError, match=r"^read cache 127\.0\.0\.1:\d+/app-b:1: not a rootbuild cache"
    ):
        await import_cache(dst, parse_cache_from(registry.ref("app-b:1")), transport=T, say=Lines())


async def test_missing_cache_warns_and_imports_nothing(tmp_path: Path, registry: Registry) -> None:
    store = Store.open(tmp_path / "s")
    say = Lines()
    ref = registry.ref("never-exported:cache")
    imported = await import_cache(
        store, parse_cache_from(f"type=registry,ref={ref}"), transport=T, say=say
    )
    assert imported.entries == {}
    assert say.lines == [f"WARNING: registry cache import from {ref} not found"]


async def test_tampered_layer_is_refused_on_fetch(tmp_path: Path, registry: Registry) -> None:
    src, dst = Store.open(tmp_path / "src"), Store.open(tmp_path / "dst")
    entries = make_entries(src, "tamper")
    ref = registry.ref("tamper-cache:1")
    await export_cache(src, entries, parse_cache_to(ref), transport=T, say=Lines())
    victim = entries[0]
    assert victim.layer is not None
    data = registry.blob_data(victim.layer.digest)
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    data.write_bytes(bytes(raw))
    imported = await import_cache(dst, parse_cache_from(ref), transport=T, say=Lines())
    with dst.stage() as staging:
        with pytest.raises(
            RegistryError, match=r"digest is sha256:[0-9a-f]{64}, expected " + victim.layer.digest
        ):
            await imported.fetch(staging, victim)
        assert not staging.has_blob(victim.layer.digest)
    assert Origins(dst.root, dst.tmp_dir).lookup(registry.host, victim.layer.digest) == []
