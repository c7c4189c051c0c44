"""Base-image and output references (rootbuild.image.refs)."""

from __future__ import annotations

import pytest

from rootbuild.errors import UsageError
from rootbuild.image.refs import (
    ImageRef,
    OutputRef,
    is_registry_reference,
    normalize_name,
    parse_base_ref,
    parse_output,
    parse_reference,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("app", "app:latest"),
        ("app:1.0", "app:1.0"),
        ("docker.io/library/app", "app:latest"),
        ("index.docker.io/library/app:v2", "app:v2"),
        ("library/app", "app:latest"),
        ("docker.io/user/app", "user/app:latest"),
        ("ghcr.io/o/app", "ghcr.io/o/app:latest"),
        ("localhost:5000/app:dev", "localhost:5000/app:dev"),
        ("localhost/app", "localhost/app:latest"),
        ("a/b/c-d__e.f:t_1.2-x", "a/b/c-d__e.f:t_1.2-x"),
        ("app@sha256:" + "a" * 64, "app@sha256:" + "a" * 64),
        ("app:t@sha256:" + "a" * 64, "app:t@sha256:" + "a" * 64),
    ],
)
def test_normalize_name_like_docker(text: str, expected: str) -> None:
    assert normalize_name(text) == expected


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("App", "must be lowercase"),
        ("app:", "invalid tag"),
        ("app:-x", "invalid tag"),
        ("-app", "invalid repository name"),
        ("a//b", "invalid repository name"),
        ("app@sha256:xyz", "invalid digest"),
        ("bad_host:99/app", "invalid registry"),
        ("a" * 256, "longer than 255"),
    ],
)
def test_bad_names_are_usage_errors(text: str, reason: str) -> None:
    with pytest.raises(UsageError, match=rf"^parse image reference .*: .*{reason}"):
        parse_reference(text)


def test_reference_parts() -> None:
    ref = parse_reference("localhost:5000/team/app:v1")
    assert (ref.domain, ref.path, ref.tag, ref.digest) == ("localhost:5000", "team/app", "v1", None)
    assert parse_reference("alpine").path == "library/alpine"


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("alpine", False),
        ("user/app", False),
        ("alpine:3.19", False),
        ("ghcr.io/o/app", True),
        ("localhost/app", True),
        ("localhost:5000/app", True),
        ("docker.io/library/alpine", True),
    ],
)
def test_is_registry_reference(name: str, expected: bool) -> None:
    assert is_registry_reference(name) is expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("scratch", ImageRef("scratch", text="scratch")),
        ("alpine", ImageRef("store", name="alpine:latest", text="alpine")),
        (
            "docker.io/library/alpine:3",
            ImageRef("store", "", "alpine:3", "docker.io/library/alpine:3"),
        ),
        ("oci:/tmp/lay", ImageRef("oci", "/tmp/lay", None, "oci:/tmp/lay")),
        ("oci:lay:v1.0", ImageRef("oci", "lay", "v1.0", "oci:lay:v1.0")),
        ("oci:lay:docker.io/x:1", ImageRef("oci", "lay", "docker.io/x:1", "oci:lay:docker.io/x:1")),
        ("oci-archive:a.tar", ImageRef("oci-archive", "a.tar", None, "oci-archive:a.tar")),
        ("oci-archive:a.tar:t", ImageRef("oci-archive", "a.tar", "t", "oci-archive:a.tar:t")),
        ("docker-archive:d.tar", ImageRef("docker-archive", "d.tar", None, "docker-archive:d.tar")),
        (
            "docker-archive:d.tar:app",
            ImageRef("docker-archive", "d.tar", "app:latest", "docker-archive:d.tar:app"),
        ),
        (
            "docker-archive:d.tar:localhost:5000/a:b",
            ImageRef(
                "docker-archive",
                "d.tar",
                "localhost:5000/a:b",
                "docker-archive:d.tar:localhost:5000/a:b",
            ),
        ),
        (
            "docker-archive:d.tar:@1",
            ImageRef("docker-archive", "d.tar", "@1", "docker-archive:d.tar:@1"),
        ),
    ],
)
def test_parse_base_ref(text: str, expected: ImageRef) -> None:
    assert parse_base_ref(text) == expected


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty"),
        ("oci:", "missing path"),
        ("oci-archive::tag", "missing path"),
        ("oci:dir:", "empty name"),
        ("oci:dir:bad tag", "invalid OCI ref name"),
        ("docker-archive:f.tar:Bad", "must be lowercase"),
        ("docker-archive:f.tar:app@sha256:" + "a" * 64, "digest cannot name"),
        ("docker://alpine", "unsupported transport"),
        ("dir:/x", "unsupported transport"),
        ("Alpine", "must be lowercase"),
    ],
)
def test_bad_base_refs(text: str, reason: str) -> None:
    with pytest.raises(UsageError, match=rf"^parse image reference '.*'?: .*{reason}") as info:
        parse_base_ref(text)
    assert repr(text.strip()) in str(info.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("oci:out", OutputRef("oci", "out", None, "oci:out")),
        ("oci:out:v1", OutputRef("oci", "out", "v1", "oci:out:v1")),
        ("oci-archive:o.tar:v1", OutputRef("oci-archive", "o.tar", "v1", "oci-archive:o.tar:v1")),
        (
            "docker-archive:o.tar",
            OutputRef("docker-archive", "o.tar", None, "docker-archive:o.tar"),
        ),
        (
            "docker-archive:o.tar:app:1",
            OutputRef("docker-archive", "o.tar", "app:1", "docker-archive:o.tar:app:1"),
        ),
        (
            "docker-archive:o.tar:app",
            OutputRef("docker-archive", "o.tar", "app:latest", "docker-archive:o.tar:app"),
        ),
        ("dir:/x/y", OutputRef("dir", "/x/y", None, "dir:/x/y")),
        (
            "type=oci,dest=o.tar,name=app:2",
            OutputRef("oci-archive", "o.tar", "2", "type=oci,dest=o.tar,name=app:2"),
        ),
        ("type=oci,dest=d,tar=false", OutputRef("oci", "d", None, "type=oci,dest=d,tar=false")),
        (
            "type=docker,dest=o.tar,name=app",
            OutputRef("docker-archive", "o.tar", "app:latest", "type=docker,dest=o.tar,name=app"),
        ),
        ("type=local,dest=out", OutputRef("dir", "out", None, "type=local,dest=out")),
    ],
)
def test_parse_output(text: str, expected: OutputRef) -> None:
    assert parse_output(text) == expected


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("out.tar", "expected oci:DIR"),
        ("dir:", "missing path"),
        ("oci:", "missing path"),
        ("type=registry,dest=x", "unsupported type 'registry'"),
        ("type=oci", "missing dest"),
        ("type=oci,dest=x,push=true", "unsupported option 'push'"),
        ("type=oci,dest=x,tar=maybe", "tar must be true or false"),
        ("type=oci,dest", "expected key=value"),
        ("docker-archive:o.tar:UP", "must be lowercase"),
    ],
)
def test_bad_outputs(text: str, reason: str) -> None:
    with pytest.raises(UsageError, match=rf"^parse (output|image reference) '.*': .*{reason}"):
        parse_output(text)
