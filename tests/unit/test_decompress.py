"""decompress: the Inflater's exact reads, uncopied views, forward-only seeks and hashing,
and the one zstd reader (multi-frame, truncation, bounded output)."""

from __future__ import annotations

import gzip
import hashlib
import io
import os

import pytest
import zstandard

from rootbuild.image.decompress import (
    Inflater,
    Prepend,
    StreamError,
    TooBig,
    ZstdReader,
    decoder,
    select_compression,
)


class Trickle:
    """A raw stream that returns at most ``step`` bytes per read, like a slow socket."""

    def __init__(self, data: bytes, step: int) -> None:
        self._src, self._step = io.BytesIO(data), step

    def read(self, size: int = -1, /) -> bytes:
        return self._src.read(self._step if size < 0 else min(size, self._step))


def test_exact_reads_views_and_seeks_across_chunk_boundaries() -> None:
    data = os.urandom(10_000)
    inf = Inflater(Trickle(data, 700), None)
    try:
        assert inf.read(512) == data[:512]  # spans the first 700-byte chunk
        assert inf.read(1000) == data[512:1512]  # spans two more
        assert inf.tell() == 1512
        view = inf.read_view(5000)
        assert isinstance(view, memoryview)
        assert 0 < len(view) <= 700 and bytes(view) == data[1512 : 1512 + len(view)]
        pos = inf.tell()
        assert pos == 1512 + len(view)
        assert inf.seek(pos + 3000) == pos + 3000  # forward: skipped by reading
        assert inf.read(10) == data[pos + 3000 : pos + 3010]
        with pytest.raises(OSError, match="cannot seek back"):
            inf.seek(0)
        inf.drain()
        assert inf.read(1) == b"" and len(inf.read_view(1)) == 0
        # every byte was hashed, the skipped and drained ones included
        assert inf.sha.hexdigest() == hashlib.sha256(data).hexdigest()
        assert inf.total == len(data)
    finally:
        inf.close()


def test_seek_past_the_end_stops_at_the_end() -> None:
    inf = Inflater(Trickle(b"abc", 2), None)
    try:
        assert inf.seek(10) == 3
        assert inf.read(1) == b""
    finally:
        inf.close()


def test_cap_and_corrupt_stream_errors() -> None:
    inf = Inflater(Trickle(bytes(5000), 1000), 3000)
    try:
        with pytest.raises(TooBig, match="exceeds the limit of 3000 bytes"):
            inf.read(5000)
    finally:
        inf.close()
    packed = bytearray(gzip.compress(os.urandom(200_000)))
    packed[len(packed) // 2] ^= 0xFF
    compression, raw = select_compression(io.BytesIO(bytes(packed)), "gzip")
    inf = Inflater(decoder(compression, raw), None)
    try:
        with pytest.raises(StreamError):
            while inf.read(1 << 16):
                pass
    finally:
        inf.close()


def test_close_stops_a_blocked_worker() -> None:
    inf = Inflater(Trickle(bytes(50 << 20), 1 << 20), None)  # fills the queue and blocks
    assert inf.read(10) == bytes(10)
    inf.close()  # returns: the worker notices the stop while waiting to put


def test_zstd_reader_frames_truncation_and_bounded_output() -> None:
    cctx = zstandard.ZstdCompressor()
    frames = cctx.compress(b"one-") + cctx.compress(b"two-") + cctx.compress(b"three")
    reader = ZstdReader(Prepend(b"", io.BytesIO(frames)))
    assert b"".join(iter(lambda: reader.read(1 << 20), b"")) == b"one-two-three"
    cut = cctx.compress(os.urandom(100_000))[:-10]
    reader = ZstdReader(io.BytesIO(cut))
    with pytest.raises(EOFError, match="ends inside a frame"):
        while reader.read(1 << 20):
            pass
    with pytest.raises(EOFError, match="empty zstd stream"):
        ZstdReader(io.BytesIO(b"")).read(10)
    # A 1 GiB run of zeros compresses to ~32 KiB; no single read may return all of it.
    bomb = cctx.compress(bytes(1 << 30))
    reader = ZstdReader(io.BytesIO(bomb))
    first = reader.read(1 << 20)
    assert 0 < len(first) <= 64 << 20
