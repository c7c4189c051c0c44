"""The distribution API as data (rootbuild.registry.protocol) and pure push helpers."""

from __future__ import annotations

import json

import pytest

from rootbuild.errors import RegistryError
from rootbuild.image.oci import (
    DOCKER_CONFIG,
    DOCKER_LAYER,
    DOCKER_LAYER_GZIP,
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER,
    OCI_LAYER_GZIP,
    OCI_LAYER_ZSTD,
    OCI_MANIFEST,
    Descriptor,
    Index,
    Manifest,
)
from rootbuild.image.refs import parse_reference
from rootbuild.platform import Platform
from rootbuild.registry.protocol import (
    MANIFEST_ACCEPT,
    Challenge,
    api_host,
    blob_path,
    check_document_type,
    choose_from_index,
    document_type,
    is_loopback,
    manifest_path,
    parse_www_authenticate,
    reference_of,
    scope_for,
    to_docker_manifest,
    upload_path,
)
from rootbuild.registry.push import manifest_to_push, with_digest

D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64
D3 = "sha256:" + "3" * 64


def test_bearer_challenge_of_docker_hub() -> None:
    header = (
        'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
        'scope="repository:library/alpine:pull"'
    )
    assert parse_www_authenticate(header) == [
        Challenge(
            "bearer",
            (
                ("realm", "https://auth.docker.io/token"),
                ("service", "registry.docker.io"),
                ("scope", "repository:library/alpine:pull"),
            ),
        )
    ]


def test_challenge_scope_with_commas_and_escapes_stays_one_value() -> None:
    [challenge] = parse_www_authenticate(
        r'Bearer realm="https://r/t", scope="repository:a:pull,push", error="say \"no\""'
    )
    assert challenge.get("scope") == "repository:a:pull,push"
    assert challenge.get("error") == 'say "no"'


def test_several_challenges_and_token_values() -> None:
    challenges = parse_www_authenticate(
        'Basic realm="registry", Bearer realm=https://x/t,service=s'
    )
    assert [c.scheme for c in challenges] == ["basic", "bearer"]
    assert challenges[0].get("realm") == "registry"
    assert challenges[1].get("realm") == "https://x/t"
    assert challenges[1].get("service") == "s"


def test_scheme_is_case_insensitive_and_empty_header_has_no_challenge() -> None:
    assert parse_www_authenticate('BASIC Realm="x"') == [Challenge("basic", (("realm", "x"),))]
    assert parse_www_authenticate("") == []


@pytest.mark.parametrize(
    ("registry", "loopback"),
    [
        ("localhost", True),
        ("localhost:5000", True),
        ("127.0.0.1:5000", True),
        ("127.8.9.10", True),
        ("[::1]:5000", True),
        ("::1", True),
        ("registry.localhost:80", True),
        ("128.0.0.1:5000", False),
        ("docker.io", False),
        ("myregistry:5000", False),
        ("localhost.example.com", False),
    ],
)
def test_loopback_registries_are_the_insecure_defaults(registry: str, loopback: bool) -> None:
    assert is_loopback(registry) is loopback


def test_docker_hub_api_host_and_others_unchanged() -> None:
    assert api_host("docker.io") == "registry-1.docker.io"
    assert api_host("index.docker.io") == "registry-1.docker.io"
    assert api_host("ghcr.io") == "ghcr.io"
    assert api_host("localhost:5000") == "localhost:5000"


@pytest.mark.parametrize(
    ("text", "repo", "reference"),
    [
        ("alpine", "library/alpine", "latest"),
        ("alpine:3.19", "library/alpine", "3.19"),
        ("user/app", "user/app", "latest"),
        ("localhost:5000/team/app:1.2", "team/app", "1.2"),
        (f"alpine@{D1}", "library/alpine", D1),
        (f"alpine:3.19@{D1}", "library/alpine", D1),  # the digest wins
    ],
)
def test_reference_to_manifest_url(text: str, repo: str, reference: str) -> None:
    ref = parse_reference(text)
    assert ref.path == repo
    assert reference_of(ref) == reference
    assert manifest_path(ref.path, reference_of(ref)) == f"/v2/{repo}/manifests/{reference}"


def test_blob_upload_paths_and_scopes() -> None:
    assert blob_path("a/b", D1) == f"/v2/a/b/blobs/{D1}"
    assert upload_path("a/b") == "/v2/a/b/blobs/uploads/"
    assert scope_for("a/b") == "repository:a/b:pull"
    assert scope_for("a/b", push=True) == "repository:a/b:pull,push"


def test_accept_header_names_all_four_manifest_types() -> None:
    for media_type in (OCI_INDEX, OCI_MANIFEST, DOCKER_MANIFEST, DOCKER_MANIFEST_LIST):
        assert media_type in MANIFEST_ACCEPT
    assert "distribution.manifest.v1" not in MANIFEST_ACCEPT  # never ask for schema 1


def test_document_type_prefers_the_body_then_the_header() -> None:
    assert document_type(OCI_INDEX, DOCKER_MANIFEST) == OCI_INDEX
    assert document_type(None, f"{DOCKER_MANIFEST}; charset=utf-8") == DOCKER_MANIFEST
    assert document_type("", None) == ""


def test_schema1_is_refused_clearly() -> None:
    with pytest.raises(RegistryError, match=r"^pull alpine:1: Docker image manifest schema 1 "):
        check_document_type("application/vnd.docker.distribution.manifest.v1+prettyjws", "alpine:1")
    with pytest.raises(
        RegistryError, match=r"^pull x: unsupported manifest media type 'text/html'$"
    ):
        check_document_type("text/html", "x")
    check_document_type(DOCKER_MANIFEST_LIST, "x")


def _entry(digest: str, platform: str) -> Descriptor:
    return Descriptor(OCI_MANIFEST, digest, 100, platform=Platform.parse(platform))


def test_platform_is_chosen_from_an_index() -> None:
    index = Index(
        (_entry(D1, "linux/amd64"), _entry(D2, "linux/arm64"), _entry(D3, "linux/arm/v7"))
    )
    assert choose_from_index(index, Platform.parse("linux/arm64"), "x").digest == D2
    assert choose_from_index(index, Platform.parse("linux/amd64"), "x").digest == D1
    assert choose_from_index(index, Platform.parse("linux/arm/v7"), "x").digest == D3


def test_no_matching_platform_lists_the_available_ones() -> None:
    index = Index((_entry(D1, "linux/arm64"), _entry(D2, "linux/amd64")))
    with pytest.raises(
        RegistryError,
        match=r"^pull alpine:latest: no image for platform linux/s390x "
        r"\(available: linux/amd64, linux/arm64\)$",
    ):
        choose_from_index(index, Platform.parse("linux/s390x"), "alpine:latest")


def _manifest(*layer_types: str) -> Manifest:
    layers = tuple(Descriptor(t, f"sha256:{n:064x}", 10 + n) for n, t in enumerate(layer_types))
    return Manifest(OCI_MANIFEST, Descriptor(OCI_CONFIG, D1, 5), layers, (("a", "b"),))


def test_docker_format_converts_every_media_type() -> None:
    docker = to_docker_manifest(_manifest(OCI_LAYER_GZIP, OCI_LAYER), "x")
    assert docker.media_type == DOCKER_MANIFEST
    assert docker.config == Descriptor(DOCKER_CONFIG, D1, 5)
    assert [layer.media_type for layer in docker.layers] == [DOCKER_LAYER_GZIP, DOCKER_LAYER]
    assert [layer.digest for layer in docker.layers] == [
        layer.digest for layer in _manifest(OCI_LAYER_GZIP, OCI_LAYER).layers
    ]
    reparsed = Manifest.parse(docker.to_bytes())
    assert reparsed.media_type == DOCKER_MANIFEST


def test_docker_format_refuses_zstd_layers() -> None:
    with pytest.raises(
        RegistryError, match=r"^push r:1: layer sha256:0+1 is .*zstd, which has no Docker"
    ):
        to_docker_manifest(_manifest(OCI_LAYER_GZIP, OCI_LAYER_ZSTD), "r:1")


def test_manifest_to_push_keeps_bytes_unless_docker_format() -> None:
    original = json.dumps(_manifest(OCI_LAYER_GZIP).to_json(), indent=2).encode()
    data, media_type, _ = manifest_to_push(original, OCI_MANIFEST, False, "x")
    assert (data, media_type) == (original, OCI_MANIFEST)  # same bytes: same digest
    data, media_type, manifest = manifest_to_push(original, OCI_MANIFEST, True, "x")
    assert media_type == DOCKER_MANIFEST
    assert json.loads(data)["mediaType"] == DOCKER_MANIFEST
    assert manifest.layers[0].media_type == DOCKER_LAYER_GZIP


def test_upload_location_gets_the_digest_parameter() -> None:
    assert with_digest("http://r/v2/a/blobs/uploads/u1", D1) == (
        f"http://r/v2/a/blobs/uploads/u1?digest={D1}"
    )
    assert with_digest("/v2/a/blobs/uploads/u1?_state=abc", D1) == (
        f"/v2/a/blobs/uploads/u1?_state=abc&digest={D1}"
    )
