"""ADD recognises local archives by content, through the extractor's own decoders."""

from __future__ import annotations

import bz2
import gzip
import io
import os
import tarfile
from pathlib import Path

import pytest

from rootbuild.context import BuildContext
from rootbuild.dockerfile.dockerignore import IgnoreMatcher
from rootbuild.engine.archive_source import is_tar_archive


def _tar(payload: bytes) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("d/big")
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    return buf.getvalue()


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        # random data: bzip2's first block (~900 KiB) yields no output until it is complete
        ("big.tar.bz2", bz2.compress(_tar(os.urandom(3 << 20))), True),
        ("small.tgz", gzip.compress(_tar(b"x" * 100)), True),
        ("plain.tar", _tar(b"x" * 100), True),
        ("notes.txt.gz", gzip.compress(b"just text\n" * 100), False),
        ("fake.tar.gz", b"\x1f\x8b not really gzip", False),
        ("empty.tar", b"", False),
    ],
)
def test_archives_are_recognised_by_content(
    tmp_path: Path, name: str, content: bytes, expected: bool
) -> None:
    (tmp_path / name).write_bytes(content)
    with BuildContext.open(tmp_path, IgnoreMatcher()) as ctx:
        (entry,) = ctx.resolve_sources(name, location=None)
        assert is_tar_archive(ctx, entry) is expected
