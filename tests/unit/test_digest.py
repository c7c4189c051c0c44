"""digest: diffIDs through the extractor's decoders (gzip members, zstd frames, plain)."""

from __future__ import annotations

import gzip
import hashlib
import io
import os

import pytest
import zstandard
from isal import igzip

from rootbuild.errors import ImageError
from rootbuild.image.digest import Verifier, copy_decompressed, diff_id_of


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def test_diff_id_of_every_registered_compression() -> None:
    tar = os.urandom(3 << 20)  # several decoder chunks
    half = len(tar) // 2
    cctx = zstandard.ZstdCompressor()
    blobs = {
        "none": tar,
        "gzip": gzip.compress(tar[:half], mtime=0) + igzip.compress(tar[half:]),  # 2 members
        "zstd": cctx.compress(tar[:half]) + cctx.compress(tar[half:]),  # 2 frames
    }
    for compression, blob in blobs.items():
        assert diff_id_of(io.BytesIO(blob), compression, "layer") == sha(tar)  # type: ignore[arg-type]


def test_copy_decompressed_writes_and_verifies() -> None:
    data = b"layer bytes " * 1000
    out = io.BytesIO()
    blob = zstandard.ZstdCompressor().compress(data)
    digest = copy_decompressed(io.BytesIO(blob), "zstd", out, Verifier("t", sha(data)))
    assert digest == sha(data) and out.getvalue() == data
    with pytest.raises(ImageError, match=r"^verify t: digest is sha256:"):
        copy_decompressed(io.BytesIO(blob), "zstd", None, Verifier("t", sha(b"other")))


def test_truncated_or_corrupt_streams_are_image_errors() -> None:
    data = os.urandom(200_000)
    cut_zstd = zstandard.ZstdCompressor().compress(data)[:-7]
    with pytest.raises(ImageError, match=r"^decompress layer: zstd stream ends inside a frame"):
        diff_id_of(io.BytesIO(cut_zstd), "zstd", "layer")
    cut_gzip = gzip.compress(data)[:-20]
    with pytest.raises(ImageError, match=r"^decompress layer: "):
        diff_id_of(io.BytesIO(cut_gzip), "gzip", "layer")
    with pytest.raises(ImageError, match=r"^decompress layer: "):
        diff_id_of(io.BytesIO(b"\x1f\x8b not really gzip" * 10), "gzip", "layer")
