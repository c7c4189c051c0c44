"""ADD's local archives: a context file that is a tar (plain, gzip, bzip2, xz or zstd) is
unpacked into the destination; any other file is copied as it is (Docker's ADD reference).

Rules:
- An archive is recognised by its content (compression magic, then the ustar magic of the
  first header), never by its name.
- Unpacking goes through the layer extractor (SECURITY.md rule 2: headers parsed, every
  entry written by us, ``..``/absolute names/links out refused) into a private directory
  of the build; the unpacked tree is then copied like a directory from another stage,
  keeping the archive's owners unless ``--chown`` says otherwise.
"""

from __future__ import annotations

import bz2
import lzma
import tempfile
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

import zstandard

from rootbuild.build.copy import Source, context_sources, image_sources
from rootbuild.context import BuildContext, ContextEntry
from rootbuild.errors import Location
from rootbuild.image.layer_extract import extract_layer
from rootbuild.image.rootfs import RootfsView

_HEAD = 1024
ADD_MAX_BYTES = 64 << 30  # an archive that inflates beyond 64 GiB is refused (bomb cap)


def _decompressed_head(head: bytes) -> bytes:
    """The first bytes of the uncompressed stream, or b"" when they cannot be read."""
    try:
        if head.startswith(b"\x1f\x8b"):
            return zlib.decompressobj(wbits=31).decompress(head)[:512]
        if head.startswith(b"BZh"):
            return bz2.BZ2Decompressor().decompress(head)[:512]
        if head.startswith(b"\xfd7zXZ\x00"):
            return lzma.LZMADecompressor().decompress(head)[:512]
        if head.startswith(b"\x28\xb5\x2f\xfd"):
            return zstandard.ZstdDecompressor().decompressobj().decompress(head)[:512]
    except (OSError, EOFError, zlib.error, lzma.LZMAError, zstandard.ZstdError):
        return b""
    return head[:512]


def is_tar_archive(head: bytes) -> bool:
    block = _decompressed_head(head)
    return len(block) >= 262 and block[257:262] == b"ustar"


def _head(ctx: BuildContext, entry: ContextEntry) -> bytes:
    f: BinaryIO = ctx.open_file(entry)
    with f:
        return f.read(_HEAD * 64)


def add_archive_or_file(
    ctx: BuildContext, patterns: Sequence[str], excludes: Sequence[str], where: Location,
    work_dir: Path,
) -> tuple[list[Source], bool]:
    """The sources of an ADD from the context; True when an archive was unpacked."""
    sources: list[Source] = []
    unpacked = False
    for pattern in patterns:
        for entry in ctx.resolve_sources(pattern, location=where):
            if entry.kind == "file" and is_tar_archive(_head(ctx, entry)):
                tree = Path(tempfile.mkdtemp(prefix="add-", dir=work_dir))
                with ctx.open_file(entry) as f:
                    result = extract_layer(
                        f, tree / "rootfs", media_type_or_compression="auto",
                        layer_name=entry.relpath, max_bytes=ADD_MAX_BYTES,
                    )
                view = RootfsView([(tree / "rootfs", result.meta)])
                sources += image_sources(view, ["/"], excludes, where, entry.relpath)
                unpacked = True
            else:
                sources += context_sources(ctx, [entry.relpath], excludes, where)
    return sources, unpacked
