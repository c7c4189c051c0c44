"""OCI documents and digests (rootbuild.image.oci, rootbuild.image.digest)."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
from typing import Any

import pytest
import zstandard

from rootbuild.errors import ImageError
from rootbuild.image.digest import (
    Verifier,
    copy_verified,
    diff_id_of,
    hex_of,
    parse_digest,
    read_verified,
    sha256_digest,
    sniff_compression,
)
from rootbuild.image.oci import (
    DOCKER_CONFIG,
    DOCKER_LAYER_GZIP,
    DOCKER_MANIFEST,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER,
    OCI_LAYER_GZIP,
    OCI_MANIFEST,
    Descriptor,
    Index,
    Manifest,
    StoredImage,
    canonical_json,
    config_platform,
    diff_ids_of,
    layer_compression,
    select_platform,
)
from rootbuild.platform import Platform

D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64
D3 = "sha256:" + "3" * 64


def manifest_json(**over: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": D1, "size": 10},
        "layers": [{"mediaType": OCI_LAYER_GZIP, "digest": D2, "size": 20}],
    }
    doc.update(over)
    return doc


def test_canonical_json_is_sorted_compact_utf8() -> None:
    assert canonical_json({"b": 1, "a": {"d": [1, 2], "c": "é"}}) == (
        '{"a":{"c":"é","d":[1,2]},"b":1}'.encode()
    )


def test_descriptor_round_trip() -> None:
    raw = {
        "mediaType": OCI_MANIFEST,
        "digest": D1,
        "size": 5,
        "annotations": {"org.opencontainers.image.ref.name": "v1"},
        "platform": {"architecture": "arm", "os": "linux", "variant": "v7"},
        "urls": ["ignored"],
    }
    desc = Descriptor.from_json(raw)
    assert desc.annotation("org.opencontainers.image.ref.name") == "v1"
    assert desc.platform == Platform("linux", "arm", "v7")
    assert Descriptor.from_json(desc.to_json()) == desc
    assert "urls" not in desc.to_json()


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ([], "expected an object"),
        ({"digest": D1, "size": 1}, "missing mediaType"),
        ({"mediaType": "x", "digest": "sha256:abc", "size": 1}, "malformed sha256 hex"),
        ({"mediaType": "x", "digest": "md5:" + "a" * 32, "size": 1}, "unsupported algorithm"),
        ({"mediaType": "x", "digest": "sha256:" + "A" * 64, "size": 1}, "malformed"),
        ({"mediaType": "x", "digest": D1, "size": -1}, "non-negative"),
        ({"mediaType": "x", "digest": D1, "size": True}, "non-negative"),
        ({"mediaType": "x", "digest": D1, "size": 1, "annotations": {"a": 1}}, "annotations"),
        ({"mediaType": "x", "digest": D1, "size": 1, "platform": {"os": "linux"}}, "platform"),
    ],
)
def test_bad_descriptors(raw: object, reason: str) -> None:
    with pytest.raises(ImageError, match=rf"^parse descriptor: .*{reason}"):
        Descriptor.from_json(raw)


def test_manifest_parse_and_serialise() -> None:
    data = json.dumps(manifest_json(annotations={"k": "v"})).encode()
    manifest = Manifest.parse(data, OCI_MANIFEST)
    assert manifest.config == Descriptor(OCI_CONFIG, D1, 10)
    assert manifest.layers == (Descriptor(OCI_LAYER_GZIP, D2, 20),)
    assert json.loads(manifest.to_bytes()) == manifest_json(annotations={"k": "v"})
    assert Manifest.parse(manifest.to_bytes()) == manifest


def test_docker_schema2_manifest_is_accepted() -> None:
    doc = manifest_json(
        mediaType=DOCKER_MANIFEST,
        config={"mediaType": DOCKER_CONFIG, "digest": D1, "size": 1},
        layers=[{"mediaType": DOCKER_LAYER_GZIP, "digest": D2, "size": 2}],
    )
    manifest = Manifest.parse(json.dumps(doc).encode())
    assert manifest.media_type == DOCKER_MANIFEST
    assert layer_compression(manifest.layers[0].media_type) == "gzip"


def test_manifest_without_media_type_takes_the_descriptors() -> None:
    doc = manifest_json()
    del doc["mediaType"]
    assert Manifest.parse(json.dumps(doc).encode(), DOCKER_MANIFEST).media_type == DOCKER_MANIFEST


@pytest.mark.parametrize(
    ("doc", "descriptor_type", "reason"),
    [
        (manifest_json(schemaVersion=1), None, "unsupported schemaVersion 1"),
        (manifest_json(mediaType=OCI_INDEX), None, "unsupported media type"),
        (manifest_json(), DOCKER_MANIFEST, "differs from descriptor"),
        (manifest_json(layers={}), None, "layers must be a list"),
        (
            manifest_json(config={"mediaType": "text/plain", "digest": D1, "size": 1}),
            None,
            "unsupported config media type",
        ),
        (
            manifest_json(layers=[{"mediaType": "application/x-foo", "digest": D2, "size": 1}]),
            None,
            "unsupported layer media type",
        ),
        (manifest_json(config=None), None, "expected an object"),
    ],
)
def test_bad_manifests(doc: dict[str, Any], descriptor_type: str | None, reason: str) -> None:
    with pytest.raises(ImageError, match=reason):
        Manifest.parse(json.dumps(doc).encode(), descriptor_type)


@pytest.mark.parametrize("data", [b"\xff", b"[1]", b"{", b"null"])
def test_manifest_must_be_a_json_object(data: bytes) -> None:
    with pytest.raises(ImageError, match=r"^parse manifest: "):
        Manifest.parse(data)


def test_index_round_trip() -> None:
    entry = Descriptor(OCI_MANIFEST, D1, 3).with_annotations({"a": "b"})
    index = Index((entry,), (("x", "y"),))
    parsed = Index.parse(index.to_bytes())
    assert parsed == index
    with pytest.raises(ImageError, match="manifests must be a list"):
        Index.parse(b'{"schemaVersion":2}')


def test_diff_ids_of_validates() -> None:
    assert diff_ids_of({"rootfs": {"type": "layers", "diff_ids": [D1, D2]}}) == (D1, D2)
    with pytest.raises(ImageError, match=r'rootfs\.type must be "layers"'):
        diff_ids_of({})
    with pytest.raises(ImageError, match=r"rootfs\.diff_ids: parse digest"):
        diff_ids_of({"rootfs": {"type": "layers", "diff_ids": ["sha256:zz"]}})


def test_config_platform() -> None:
    assert config_platform({"os": "linux", "architecture": "arm64", "variant": "v8"}) == Platform(
        "linux", "arm64", "v8"
    )
    assert config_platform({"os": "linux"}) is None


def _plat(desc_digest: str, os_name: str, arch: str, variant: str | None = None) -> Descriptor:
    return Descriptor(OCI_MANIFEST, desc_digest, 1, platform=Platform(os_name, arch, variant))


def test_select_platform_exact_and_fallbacks() -> None:
    amd, arm7, arm6, arm64 = (
        _plat(D1, "linux", "amd64"),
        _plat(D2, "linux", "arm", "v7"),
        _plat(D3, "linux", "arm", "v6"),
        _plat("sha256:" + "4" * 64, "linux", "arm64", "v8"),
    )
    unknown = _plat("sha256:" + "5" * 64, "unknown", "unknown")
    entries = (unknown, amd, arm6, arm7, arm64)
    assert select_platform(entries, Platform("linux", "amd64")) == amd
    assert select_platform(entries, Platform("linux", "arm", "v7")) == arm7
    assert select_platform((arm6,), Platform("linux", "arm", "v7")) == arm6  # v7 runs v6
    assert select_platform((arm7,), Platform("linux", "arm", "v6")) is None
    assert select_platform(entries, Platform("linux", "arm64")) == arm64  # v8 == no variant
    assert select_platform(entries, Platform("linux", "s390x")) is None
    assert select_platform(entries, Platform("windows", "amd64")) is None


def _config(diff_ids: list[str]) -> bytes:
    return json.dumps({"rootfs": {"type": "layers", "diff_ids": diff_ids}}).encode()


def test_stored_image_from_documents() -> None:
    manifest_bytes = json.dumps(manifest_json()).encode()
    desc = Descriptor(OCI_MANIFEST, sha256_digest(manifest_bytes), len(manifest_bytes))
    image = StoredImage.from_documents(desc, manifest_bytes, _config([D3]))
    assert image.diff_ids == (D3,)
    assert image.layers == (Descriptor(OCI_LAYER_GZIP, D2, 20),)
    assert image.config.digest == D1
    with pytest.raises(ImageError, match="config lists 2 diff_ids for 1 layers"):
        StoredImage.from_documents(desc, manifest_bytes, _config([D3, D3]))


# -- digests ------------------------------------------------------------------------------


def test_parse_digest_and_hex() -> None:
    assert parse_digest(D1) == ("sha256", "1" * 64)
    assert hex_of("sha512:" + "a" * 128) == "a" * 128
    with pytest.raises(ImageError, match="expected algorithm:hex"):
        parse_digest("1234")


def test_verifier_checks_digest_size_and_cap() -> None:
    data = b"hello world"
    good = sha256_digest(data)
    assert copy_verified(io.BytesIO(data), None, Verifier("b", good, len(data))) == good
    with pytest.raises(ImageError, match=r"^verify b: digest is sha256:.*, expected "):
        copy_verified(io.BytesIO(data), None, Verifier("b", D1, len(data)))
    with pytest.raises(ImageError, match=r"^verify b: got 5 bytes, descriptor states 11"):
        copy_verified(io.BytesIO(data[:5]), None, Verifier("b", good, len(data)))
    with pytest.raises(ImageError, match=r"^verify b: more than the 4 bytes"):
        Verifier("b", None, 4).update(data)
    with pytest.raises(ImageError, match=r"larger than the 8-byte limit"):
        read_verified(io.BytesIO(data), "b", max_size=8)
    sha512 = "sha512:" + hashlib.sha512(data).hexdigest()
    assert read_verified(io.BytesIO(data), "b", sha512, len(data)) == data


def test_diff_id_of_gzip_multi_member_and_zstd_frames() -> None:
    plain = b"a" * 5000 + b"b" * 7000
    expected = sha256_digest(plain)
    multi = gzip.compress(plain[:5000]) + gzip.compress(plain[5000:])
    assert sniff_compression(multi) == "gzip"
    assert diff_id_of(io.BytesIO(multi), "gzip", "l") == expected
    cctx = zstandard.ZstdCompressor()
    frames = cctx.compress(plain[:5000]) + cctx.compress(plain[5000:])
    assert sniff_compression(frames) == "zstd"
    assert diff_id_of(io.BytesIO(frames), "zstd", "l") == expected
    assert sniff_compression(plain) == "none"
    assert diff_id_of(io.BytesIO(plain), "none", "l") == expected
    with pytest.raises(ImageError, match=r"^decompress l: "):
        diff_id_of(io.BytesIO(multi[:-30]), "gzip", "l")
    with pytest.raises(ImageError, match=r"^decompress l: "):
        diff_id_of(io.BytesIO(b"\x1f\x8bgarbage" * 10), "gzip", "l")
    with pytest.raises(ImageError, match=r"^decompress l: "):
        diff_id_of(io.BytesIO(frames[:-10]), "zstd", "l")


def test_layer_compression() -> None:
    assert layer_compression(OCI_LAYER) == "none"
    assert layer_compression("application/vnd.oci.image.layer.v1.tar+zstd") == "zstd"
