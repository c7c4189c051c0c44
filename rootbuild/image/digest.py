"""Content digests: parse them, compute them, and verify streams against them.

Rules (OCI image-spec "descriptor.md", SECURITY.md rule 7):
- A digest is ``algorithm:encoded``; rootbuild accepts ``sha256`` (64 lowercase hex) and
  ``sha512`` (128 lowercase hex), the two registered algorithms, and writes only sha256.
- Every byte read from an untrusted source goes through a ``Verifier`` that counts and
  hashes it; the size is checked on every update (so an over-long blob fails before it is
  all read) and the digest at the end. Nothing may be used before ``finish()`` returned.
- JSON documents (manifests, indexes, configs) are read with a size cap.
- Decompression for diffIDs uses the extractor's decoders (``decompress.decoder``): ISA-L
  gzip (multi-member) and zstd (all frames), the two layer compressions the image-spec
  registers.
This module does no filesystem I/O of its own; it works on file objects it is given.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from typing import BinaryIO, Literal, cast

from rootbuild.errors import ImageError
from rootbuild.image.decompress import DECODE_ERRORS, Reader, decoder

SHA256 = "sha256"
_ENCODED = {"sha256": re.compile(r"[a-f0-9]{64}"), "sha512": re.compile(r"[a-f0-9]{128}")}
CHUNK = 1 << 20
MAX_JSON_SIZE = 4 << 20  # manifests, indexes and configs: 4 MiB, as containerd caps them

Compression = Literal["none", "gzip", "zstd"]


def parse_digest(text: object) -> tuple[str, str]:
    """Split a digest into (algorithm, hex); raise ImageError unless it is well-formed."""
    if not isinstance(text, str) or ":" not in text:
        raise ImageError(f"parse digest {text!r}: expected algorithm:hex")
    algorithm, encoded = text.split(":", 1)
    pattern = _ENCODED.get(algorithm)
    if pattern is None:
        raise ImageError(f"parse digest {text!r}: unsupported algorithm {algorithm!r}")
    if not pattern.fullmatch(encoded):
        raise ImageError(f"parse digest {text!r}: malformed {algorithm} hex")
    return algorithm, encoded


def check_digest(text: object) -> str:
    """Return ``text`` if it is a well-formed digest (see ``parse_digest``)."""
    parse_digest(text)
    assert isinstance(text, str)
    return text


def hex_of(digest: str) -> str:
    """The encoded part of a digest: what names ``blobs/<alg>/<hex>``."""
    return parse_digest(digest)[1]


def sha256_digest(data: bytes) -> str:
    """``sha256:<hex>`` of ``data``."""
    return f"{SHA256}:{hashlib.sha256(data).hexdigest()}"


class Verifier:
    """Count and hash a stream; check it against an expected digest and size.

    ``expected_digest`` None means "compute a sha256"; ``expected_size`` None means any size
    (up to ``max_size`` when given). ``what`` names the blob in error messages.
    """

    def __init__(
        self,
        what: str,
        expected_digest: str | None = None,
        expected_size: int | None = None,
        max_size: int | None = None,
    ) -> None:
        algorithm = parse_digest(expected_digest)[0] if expected_digest else SHA256
        if expected_size is not None and expected_size < 0:
            raise ImageError(f"verify {what}: negative size {expected_size}")
        self.what = what
        self.expected_digest = expected_digest
        self.expected_size = expected_size
        self.max_size = max_size
        self.size = 0
        self._algorithm = algorithm
        self._hash = hashlib.new(algorithm)

    def update(self, data: bytes) -> None:
        self.size += len(data)
        if self.expected_size is not None and self.size > self.expected_size:
            raise ImageError(
                f"verify {self.what}: more than the {self.expected_size} bytes "
                "its descriptor states"
            )
        if self.max_size is not None and self.size > self.max_size:
            raise ImageError(f"verify {self.what}: larger than the {self.max_size}-byte limit")
        self._hash.update(data)

    @property
    def digest(self) -> str:
        return f"{self._algorithm}:{self._hash.hexdigest()}"

    def finish(self) -> str:
        """Check size and digest of everything seen; return the digest."""
        if self.expected_size is not None and self.size != self.expected_size:
            raise ImageError(
                f"verify {self.what}: got {self.size} bytes, descriptor states "
                f"{self.expected_size} (truncated?)"
            )
        digest = self.digest
        if self.expected_digest is not None and digest != self.expected_digest:
            raise ImageError(
                f"verify {self.what}: digest is {digest}, expected {self.expected_digest}"
            )
        return digest


def copy_verified(src: BinaryIO, dst: BinaryIO | None, verifier: Verifier) -> str:
    """Stream ``src`` into ``dst`` (or nowhere) through ``verifier``; return the digest."""
    while True:
        chunk = src.read(CHUNK)
        if not chunk:
            break
        verifier.update(chunk)
        if dst is not None:
            dst.write(chunk)
    return verifier.finish()


def read_verified(
    src: BinaryIO,
    what: str,
    expected_digest: str | None = None,
    expected_size: int | None = None,
    max_size: int = MAX_JSON_SIZE,
) -> bytes:
    """Read a whole (small) blob, verified and capped at ``max_size`` bytes."""
    verifier = Verifier(what, expected_digest, expected_size, max_size)
    parts: list[bytes] = []
    while True:
        chunk = src.read(CHUNK)
        if not chunk:
            break
        verifier.update(chunk)
        parts.append(chunk)
    verifier.finish()
    return b"".join(parts)


def sniff_compression(head: bytes) -> Compression:
    """Tell gzip and zstd streams from plain tar by their magic numbers."""
    if head.startswith(b"\x1f\x8b"):
        return "gzip"
    if head.startswith(b"\x28\xb5\x2f\xfd"):
        return "zstd"
    return "none"


def iter_decompressed(src: BinaryIO, compression: Compression) -> Iterator[bytes]:
    """The uncompressed stream in chunks (gzip may be multi-member, zstd multi-frame), with
    the extractor's decoders (``decompress.decoder``: one zstd reader that notices
    truncation and bounds its output per call). Corrupt or truncated input raises one of
    ``DECOMPRESS_ERRORS``."""
    reader = decoder(compression, cast(Reader, src))
    while chunk := reader.read(CHUNK):
        yield chunk


DECOMPRESS_ERRORS = DECODE_ERRORS


def copy_decompressed(
    src: BinaryIO, compression: Compression, dst: BinaryIO | None, verifier: Verifier
) -> str:
    """Decompress ``src`` into ``dst`` (or nowhere) through ``verifier``; return the digest."""
    try:
        for chunk in iter_decompressed(src, compression):
            verifier.update(chunk)
            if dst is not None:
                dst.write(chunk)
    except DECOMPRESS_ERRORS as exc:
        raise ImageError(f"decompress {verifier.what}: {exc}") from exc
    return verifier.finish()


def diff_id_of(src: BinaryIO, compression: Compression, what: str) -> str:
    """sha256 of the uncompressed stream: a layer's diffID (image-spec config.md)."""
    return copy_decompressed(src, compression, None, Verifier(what))
