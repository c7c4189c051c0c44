"""Layer stream decompression for extraction: sniffing, decoders, and a worker thread that
inflates while the extractor writes.

Rules:
- The compression of a layer blob is sniffed from its magic bytes, as containerd's
  DecompressStream does; a layer media type admits only gzip, zstd and plain tar, while
  ``auto`` (ADD of a local archive) also admits bzip2 and xz.
- gzip through ISA-L (``isal.igzip``); zstd frame by frame, noticing truncation (the
  library's stream reader would end quietly) and feeding small slices so that one call's
  output stays bounded (a zstd bomb guard).
- ``Inflater`` decodes in a worker thread, hashing (the diffID) and counting uncompressed
  bytes; a cap on that count stops decompression bombs. A bad stream becomes
  ``StreamError``, an exceeded cap ``TooBig``; any other exception is a bug and passes
  through unchanged.
"""

from __future__ import annotations

import bz2
import hashlib
import lzma
import queue
import threading
from typing import IO, Protocol, cast

import zstandard
from isal import igzip, igzip_lib

from rootbuild.errors import ImageError

CHUNK = 1 << 20


class Reader(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


# Media types whose blobs are tar layers. As containerd's DecompressStream does, the actual
# compression is sniffed from the magic bytes; only gzip, zstd and plain tar are allowed.
LAYER_MEDIA_TYPES = frozenset(
    {
        "application/vnd.oci.image.layer.v1.tar",
        "application/vnd.oci.image.layer.v1.tar+gzip",
        "application/vnd.oci.image.layer.v1.tar+zstd",
        "application/vnd.oci.image.layer.nondistributable.v1.tar",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
        "application/vnd.docker.image.rootfs.diff.tar.gzip",
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
    }
)
COMPRESSIONS = ("gzip", "zstd", "bzip2", "xz", "none")
MAGIC = (
    (b"\x1f\x8b", "gzip"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
    (b"BZh", "bzip2"),
    (b"\xfd7zXZ\x00", "xz"),
)


class StreamError(Exception):
    """The (compressed) byte stream could not be read or decoded."""


class TooBig(Exception):
    pass


class Prepend:
    def __init__(self, head: bytes, raw: Reader) -> None:
        self._head, self._raw = head, raw

    def read(self, size: int = -1, /) -> bytes:
        if self._head:
            if size < 0 or size >= len(self._head):
                out, self._head = self._head, b""
                return out
            out, self._head = self._head[:size], self._head[size:]
            return out
        return self._raw.read(size)

    def readinto(self, buf: bytearray | memoryview) -> int:
        data = self.read(len(buf))
        buf[: len(data)] = data
        return len(data)


class ZstdReader:
    """Multi-frame zstd decoding that notices truncation (zstandard's stream_reader does not)
    and bounds each output burst by feeding small input slices."""

    _FEED = 1024  # <= 256 RLE blocks of 128 KiB: at most 32 MiB out per decompress() call

    def __init__(self, raw: Reader) -> None:
        self._raw = raw
        self._dctx = zstandard.ZstdDecompressor()
        self._obj = self._dctx.decompressobj()
        self._buf = memoryview(b"")
        self._in_frame = False
        self._seen = False

    def read(self, size: int = -1, /) -> bytes:
        while True:
            if not self._buf:
                data = self._raw.read(CHUNK)
                if not data:
                    if self._in_frame:
                        raise EOFError("zstd stream ends inside a frame")
                    if not self._seen:
                        raise EOFError("empty zstd stream")
                    return b""
                self._buf = memoryview(data)
            feed, self._buf = self._buf[: self._FEED], self._buf[self._FEED :]
            self._in_frame = self._seen = True
            out: bytes = self._obj.decompress(feed)
            if self._obj.eof:
                rest = bytes(self._obj.unused_data) + bytes(self._buf)
                self._buf = memoryview(rest)
                self._obj = self._dctx.decompressobj()
                self._in_frame = False
            if out:
                return out


def decoder(compression: str, raw: Reader) -> Reader:
    if compression == "gzip":
        gz = igzip.GzipFile(fileobj=cast(IO[bytes], raw), mode="rb")  # type: ignore[no-untyped-call]
        return cast(Reader, gz)
    if compression == "zstd":
        return ZstdReader(raw)
    if compression == "bzip2":
        return bz2.BZ2File(cast(IO[bytes], raw))
    if compression == "xz":
        return lzma.LZMAFile(cast(IO[bytes], raw))
    return raw


def read_up_to(stream: Reader, n: int) -> bytes:
    """The next ``n`` bytes of ``stream``, fewer only at its end (reads may be short)."""
    data = b""
    while len(data) < n:
        more = stream.read(n - len(data))
        if not more:
            break
        data += more
    return data


def select_compression(stream: Reader, spec: str) -> tuple[str, Reader]:
    """Map a media type or compression name to (compression, stream); sniff when needed."""
    if spec not in COMPRESSIONS and spec != "auto" and spec not in LAYER_MEDIA_TYPES:
        raise ImageError(f"extract layer: unsupported media type or compression {spec!r}")
    head = read_up_to(stream, 6)
    if spec in COMPRESSIONS:
        if not head and spec != "none":
            raise StreamError(f"empty {spec} stream")
        return spec, Prepend(head, stream)
    found = next((name for magic, name in MAGIC if head.startswith(magic)), "none")
    if spec != "auto" and found not in ("gzip", "zstd", "none"):
        raise ImageError(f"extract layer: {found} compression is not allowed for {spec}")
    return found, Prepend(head, stream)


# What a bad stream raises from the decoders (gzip/bz2 raise OSError subclasses, isal
# raises its own error, truncation is EOFError everywhere).
DECODE_ERRORS: tuple[type[Exception], ...] = (
    OSError,
    EOFError,
    zstandard.ZstdError,
    lzma.LZMAError,
    cast(type[Exception], igzip_lib.IsalError),
)


class Inflater:
    """Decodes in a worker thread (overlapping with extraction), hashing and counting the
    uncompressed bytes; the main thread reads it like a file.

    Reads are exact (``read(n)`` returns ``n`` bytes unless the stream ends) and
    ``read_view`` hands out slices of the decoded chunks without copying them, for file
    bodies. ``tell`` and a forward-only ``seek`` (skipping by reading, so every byte is
    still hashed) let ``tarfile`` use its seekable "r:" mode, whose header reads go straight
    to this object instead of through the 10 KiB re-buffering of its stream ("r|") mode.
    """

    def __init__(self, decoder: Reader, max_bytes: int | None) -> None:
        self.decoder, self._max = decoder, max_bytes
        self._q: queue.Queue[bytes | BaseException | None] = queue.Queue(maxsize=8)
        self._stop = threading.Event()
        self.sha = hashlib.sha256()
        self.total = 0
        self._pos = 0
        self._cur = memoryview(b"")
        self._eof = False
        self._thread = threading.Thread(target=self._run, name="layer-inflate", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                chunk = self.decoder.read(CHUNK)
                if not chunk:
                    self._put(None)
                    return
                self.total += len(chunk)
                if self._max is not None and self.total > self._max:
                    raise TooBig(f"uncompressed size exceeds the limit of {self._max} bytes")
                self._put(chunk)
        except TooBig as exc:
            self._put(exc)
            return
        except DECODE_ERRORS as exc:  # the stream is bad: an ImageError
            self._put(StreamError(str(exc) or type(exc).__name__))
            return
        except BaseException as exc:  # a bug: re-raised as is by the reading thread
            self._put(exc)

    def _put(self, item: bytes | BaseException | None) -> None:
        while not self._stop.is_set():
            try:
                self._q.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def _fill(self) -> bool:
        """Make ``_cur`` non-empty; False at the end of the stream."""
        while not self._cur:
            if self._eof:
                return False
            item = self._q.get()
            if item is None:
                self._eof = True
                return False
            if isinstance(item, BaseException):
                raise item
            # Hashed here rather than in the decoding thread: decoding is the slower half
            # of the pipeline for big files, and hashlib drops the GIL for big buffers.
            self.sha.update(item)
            self._cur = memoryview(item)
        return True

    def read_view(self, size: int, /) -> memoryview:
        """Up to ``size`` (> 0) bytes as a view of a decoded chunk; empty at the end."""
        if not self._cur and not self._fill():
            return self._cur
        out = self._cur[:size]
        self._cur = self._cur[size:]
        self._pos += len(out)
        return out

    def read(self, size: int = -1, /) -> bytes:
        if size < 0:
            size = 1 << 62
        first = self.read_view(size)
        if len(first) == size or not first:
            return bytes(first)
        parts = [first]
        got = len(first)
        while got < size and (view := self.read_view(size - got)):
            parts.append(view)
            got += len(view)
        return b"".join(parts)

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = 0, /) -> int:
        if whence != 0 or offset < self._pos:
            raise OSError(f"layer stream: cannot seek back from {self._pos} to {offset}")
        while self._pos < offset and self.read_view(offset - self._pos):
            pass
        return self._pos

    def drain(self) -> None:
        """Read (and hash) whatever follows the end-of-archive marker."""
        self._cur = memoryview(b"")
        while self._fill():
            self._cur = memoryview(b"")

    def close(self) -> None:
        self._stop.set()
        while True:
            try:
                self._q.get_nowait()
            except queue.Empty:
                break
        self._thread.join()
