"""ADD's local archives: a context file that is a tar (plain, gzip, bzip2, xz or zstd) is
unpacked into the destination (unless ``ADD --unpack=false``); any other file is copied as
it is (Docker's ADD reference). A remote file is unpacked only with ``--unpack=true``
(``unpack_archive``, called by ``engine.remote_source``).

Rules:
- An archive is recognised by its content (compression magic, then the ustar magic of the
  first header, through the extractor's own decoders), never by its name.
- Unpacking goes through the layer extractor (SECURITY.md rule 2: headers parsed, every
  entry written by us, ``..``/absolute names/links out refused) into a private directory
  of the build; the unpacked tree is then copied like a directory from another stage,
  keeping the archive's owners unless ``--chown`` says otherwise.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

from rootbuild.context import BuildContext, ContextEntry
from rootbuild.engine.copy import Source, context_sources, image_sources
from rootbuild.errors import Location
from rootbuild.image.decompress import (
    DECODE_ERRORS,
    StreamError,
    decoder,
    read_up_to,
    select_compression,
)
from rootbuild.image.layer_extract import extract_layer
from rootbuild.image.rootfs import RootfsView

ADD_MAX_BYTES = 64 << 30  # an archive that inflates beyond 64 GiB is refused (bomb cap)


def is_tar_archive(ctx: BuildContext, entry: ContextEntry) -> bool:
    """Whether the file's content, decompressed as extraction would (the same sniffing and
    decoders), starts with a ustar header. The decoder reads as much of the file as it needs:
    a bzip2 block can be 900 KiB before its first byte of output."""
    with ctx.open_file(entry) as f:
        return stream_is_tar(f)


def stream_is_tar(f: BinaryIO) -> bool:
    """Whether the stream ``f`` (at its start) holds a tar archive, as ``is_tar_archive``."""
    try:
        compression, stream = select_compression(f, "auto")
        block = read_up_to(decoder(compression, stream), 512)
    except StreamError:
        return False
    except DECODE_ERRORS:  # compressed-looking but not decodable: an ordinary file
        return False
    return len(block) >= 262 and block[257:262] == b"ustar"


def add_archive_or_file(
    ctx: BuildContext, patterns: Sequence[str], excludes: Sequence[str], where: Location,
    work_dir: Path, unpack: bool | None = None,
) -> tuple[list[Source], bool]:
    """The sources of an ADD from the context; True when an archive was unpacked.
    ``unpack`` is ``ADD --unpack``: local archives are unpacked unless it is False."""
    sources: list[Source] = []
    unpacked = False
    for pattern in patterns:
        for entry in ctx.resolve_sources(pattern, location=where):
            if unpack is not False and entry.kind == "file" and is_tar_archive(ctx, entry):
                with ctx.open_file(entry) as f:
                    sources += unpack_archive(f, entry.relpath, excludes, where, work_dir)
                unpacked = True
            else:
                sources += context_sources(ctx, [entry.relpath], excludes, where)
    return sources, unpacked


def unpack_archive(
    f: BinaryIO, name: str, excludes: Sequence[str], where: Location, work_dir: Path,
) -> list[Source]:
    """The tar archive ``f`` (any compression ``auto`` admits) extracted into a private
    directory of the build, as sources that copy its tree (owners kept)."""
    tree = Path(tempfile.mkdtemp(prefix="add-", dir=work_dir))
    result = extract_layer(
        f, tree / "rootfs", media_type_or_compression="auto", layer_name=name,
        max_bytes=ADD_MAX_BYTES,
    )
    view = RootfsView([(tree / "rootfs", result.meta)])
    return image_sources(view, ["/"], excludes, where, name)
