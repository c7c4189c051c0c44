"""``--cache-to``/``--cache-from`` parsing: every accepted form and each refusal."""

from __future__ import annotations

import re

import pytest

from rootbuild.cache.spec import CacheSpec, parse_cache_from, parse_cache_to
from rootbuild.errors import UsageError


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("user/app:cache", CacheSpec("registry", "user/app:cache")),
        ("  localhost:5000/c  ", CacheSpec("registry", "localhost:5000/c")),
        (
            "type=registry,ref=ghcr.io/o/app:buildcache",
            CacheSpec("registry", "ghcr.io/o/app:buildcache"),
        ),
        ("type=registry,ref=r.io/a:c,mode=max", CacheSpec("registry", "r.io/a:c", "max")),
        ("type=registry,ref=r.io/a:c,mode=min", CacheSpec("registry", "r.io/a:c", "min")),
        ("TYPE=registry,Ref=r.io/a:c,MODE=max", CacheSpec("registry", "r.io/a:c", "max")),
        ("type=local,dest=/tmp/.buildx-cache-new", CacheSpec("local", "/tmp/.buildx-cache-new")),
        ("type=local,dest=cache,mode=max", CacheSpec("local", "cache", "max")),
        ('type=local,"dest=/tmp/a,b"', CacheSpec("local", "/tmp/a,b")),
        ("type=local,dest=a,dest=b", CacheSpec("local", "b")),  # buildx: the last one wins
        (
            "type=registry,ref=r.io/a:c,mode=max,image-manifest=true,oci-mediatypes=true",
            CacheSpec("registry", "r.io/a:c", "max"),
        ),
        (
            "type=registry,ref=r.io/a:c,compression=zstd,compression-level=3,"
            "force-compression=false,ignore-error=false,image-manifest=false",
            CacheSpec("registry", "r.io/a:c"),
        ),
    ],
)
def test_cache_to_forms(text: str, expected: CacheSpec) -> None:
    assert parse_cache_to(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("user/app:cache", CacheSpec("registry", "user/app:cache")),
        ("type=registry,ref=r.io/a:c", CacheSpec("registry", "r.io/a:c")),
        (
            "type=registry,ref=r.io/a@sha256:" + "a" * 64,
            CacheSpec("registry", "r.io/a@sha256:" + "a" * 64),
        ),
        ("type=local,src=/tmp/.buildx-cache", CacheSpec("local", "/tmp/.buildx-cache")),
    ],
)
def test_cache_from_forms(text: str, expected: CacheSpec) -> None:
    assert parse_cache_from(text) == expected


@pytest.mark.parametrize(
    ("parse", "text", "message"),
    [
        (
            parse_cache_to,
            "type=gha",
            "--cache-to type=gha: not supported (rootbuild supports type=registry and type=local)",
        ),
        (
            parse_cache_from,
            "type=s3,region=us-east-1,bucket=b",
            "--cache-from type=s3,region=us-east-1,bucket=b: not supported "
            "(rootbuild supports type=registry and type=local)",
        ),
        (
            parse_cache_to,
            "type=inline",
            "--cache-to type=inline: "
            "not supported (rootbuild supports type=registry and type=local)",
        ),
        (
            parse_cache_to,
            "type=azblob,name=x",
            "--cache-to type=azblob,name=x: not supported "
            "(rootbuild supports type=registry and type=local)",
        ),
        (parse_cache_to, "", "--cache-to '': empty value"),
        (
            parse_cache_to,
            "mode=max,ref=r.io/a",
            "--cache-to mode=max,ref=r.io/a: missing type= (registry or local)",
        ),
        (parse_cache_to, "type=registry", "--cache-to type=registry: type=registry needs ref=REF"),
        (
            parse_cache_to,
            "type=registry,mode=max",
            "--cache-to type=registry,mode=max: type=registry needs ref=REF",
        ),
        (parse_cache_from, "type=local", "--cache-from type=local: type=local needs src=DIR"),
        (parse_cache_to, "type=local", "--cache-to type=local: type=local needs dest=DIR"),
        (
            parse_cache_to,
            "type=local,src=/c",
            "--cache-to type=local,src=/c: type=local needs dest=DIR",
        ),
        (
            parse_cache_from,
            "type=local,dest=/c",
            "--cache-from type=local,dest=/c: type=local needs src=DIR",
        ),
        (
            parse_cache_to,
            "type=local,dest=/c,tag=x",
            "--cache-to type=local,dest=/c,tag=x: unknown attribute 'tag'",
        ),
        (
            parse_cache_from,
            "type=registry,ref=r.io/a,mode=max",
            "--cache-from type=registry,ref=r.io/a,mode=max: unknown attribute 'mode'",
        ),
        (
            parse_cache_from,
            "type=registry,ref=r.io/a,oci-mediatypes=true",
            "--cache-from type=registry,ref=r.io/a,oci-mediatypes=true: "
            "unknown attribute 'oci-mediatypes'",
        ),
        (
            parse_cache_to,
            "type=local,dest=/c,mode=all",
            "--cache-to type=local,dest=/c,mode=all: mode must be min or max, got 'all'",
        ),
        (
            parse_cache_to,
            "type=local,dest",
            "--cache-to type=local,dest: expected key=value, got 'dest'",
        ),
        (parse_cache_to, "type=local,=x", "--cache-to type=local,=x: expected key=value, got '=x'"),
        (
            parse_cache_to,
            "type=registry,ref=Upper/Case",
            "--cache-to type=registry,ref=Upper/Case: parse image reference 'Upper/Case': "
            "repository name must be lowercase",
        ),
        (
            parse_cache_from,
            "bad ref",
            "--cache-from bad ref: parse image reference 'bad ref': invalid repository name",
        ),
        (
            parse_cache_to,
            "r.io/a@sha256:" + "a" * 64,
            f"--cache-to r.io/a@sha256:{'a' * 64}: "
            f"cannot export a cache to a digest reference; name a tag",
        ),
        (
            parse_cache_to,
            "type=registry,ref=r.io/a,oci-mediatypes=false",
            "--cache-to type=registry,ref=r.io/a,oci-mediatypes=false: "
            "oci-mediatypes=false is not supported by rootbuild",
        ),
        (
            parse_cache_to,
            "type=registry,ref=r.io/a,ignore-error=true",
            "--cache-to type=registry,ref=r.io/a,ignore-error=true: "
            "ignore-error=true is not supported by rootbuild",
        ),
        (
            parse_cache_to,
            "type=registry,ref=r.io/a,force-compression=true",
            "--cache-to type=registry,ref=r.io/a,force-compression=true: "
            "force-compression=true is not supported by rootbuild",
        ),
        (
            parse_cache_to,
            "type=registry,ref=r.io/a,compression=lz4",
            "--cache-to type=registry,ref=r.io/a,compression=lz4: "
            "compression=lz4 is not supported by rootbuild",
        ),
        (
            parse_cache_to,
            "type=registry,ref=r.io/a,compression-level=high",
            "--cache-to type=registry,ref=r.io/a,compression-level=high: "
            "compression-level must be an integer from 0 to 22",
        ),
        (
            parse_cache_to,
            'type=local,"dest=/a',
            '--cache-to type=local,"dest=/a: invalid csv value',
        ),
    ],
)
def test_refusals(parse: object, text: str, message: str) -> None:
    assert callable(parse)
    with pytest.raises(UsageError, match="^" + re.escape(message)) as info:
        parse(text)
    assert info.value.exit_code == 2
