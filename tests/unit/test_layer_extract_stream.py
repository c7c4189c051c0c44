"""extract_layer's fast paths: the header parser agrees with tarfile's, headers and file
bodies that straddle decoded chunks, sparse members read through forward seeks, and file
modes with and without the umask's help."""

from __future__ import annotations

import io
import os
import random
import stat
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from rootbuild.image.layer_extract import extract_layer
from rootbuild.image.tar_headers import StrictTarInfo


def header_blocks() -> Iterator[bytes]:
    names = ("a", "dir/", "x" * 99, "p/" * 60 + "f", "é/ü", "./a/b", "l" * 300)
    kinds = (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.CHRTYPE)
    for fmt in (tarfile.GNU_FORMAT, tarfile.USTAR_FORMAT, tarfile.PAX_FORMAT):
        for name in names:
            for kind in kinds:
                info = tarfile.TarInfo(name)
                info.type, info.uid, info.mtime = kind, 1000, 1_700_000_000
                info.size = 5 if kind in (tarfile.REGTYPE, tarfile.AREGTYPE) else 0
                info.linkname = "target" if kind == tarfile.SYMTYPE else ""
                try:
                    buf = info.tobuf(fmt, "utf-8", "surrogateescape")
                except ValueError:
                    continue
                yield from (buf[i : i + 512] for i in range(0, len(buf), 512))
    big = tarfile.TarInfo("b")
    big.uid = 8**8 + 5  # base-256 in GNU format
    yield big.tobuf(tarfile.GNU_FORMAT)[:512]
    yield from (bytes(512), b"", b"short")


def parsed(parse: object, buf: bytes) -> object:
    try:
        info = parse(buf, "utf-8", "surrogateescape")  # type: ignore[operator]
    except Exception as exc:  # the error type is what is compared
        return type(exc).__name__
    return (info.get_info(), info.chksum, getattr(info, "_sparse_structs", None))


def test_fast_header_parser_agrees_with_tarfile() -> None:
    rnd = random.Random(6)
    blocks = list(header_blocks())
    for base in list(blocks):
        for _ in range(60):
            block = bytearray(base if len(base) == 512 else bytes(512))
            for _ in range(rnd.randint(1, 4)):
                pick = [0, 0x20, 0x1C, 0x80, 0xFF, ord("7"), ord("8"), ord("/"), rnd.randrange(256)]
                block[rnd.randrange(512)] = rnd.choice(pick)
            if rnd.random() < 0.7:  # keep most checksums valid, so the fields get parsed
                block[148:156] = b" " * 8
                block[148:156] = b"%06o\0 " % sum(block)
            blocks.append(bytes(block))
    for buf in blocks:
        assert parsed(StrictTarInfo.frombuf, buf) == parsed(tarfile.TarInfo.frombuf, buf)


class Trickle(io.RawIOBase):
    """At most ``step`` bytes per read: decoded chunks end mid-header and mid-body."""

    def __init__(self, data: bytes, step: int) -> None:
        self._src, self._step = io.BytesIO(data), step

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1, /) -> bytes:
        return self._src.read(self._step if size < 0 else min(size, self._step))


def mktar(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o640
            info.pax_headers = {"mtime": "1700000000.5"}
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_headers_and_bodies_split_across_decoded_chunks(tmp_path: Path) -> None:
    rnd = random.Random(1)
    files = {f"d{i % 7}/f{i}": rnd.randbytes(rnd.randrange(0, 5000)) for i in range(200)}
    files["big"] = rnd.randbytes(3 << 20)
    blob = mktar(files)
    for step in (333, 1000, 1 << 16):
        dest = tmp_path / f"x{step}"
        res = extract_layer(Trickle(blob, step), dest, media_type_or_compression="none")  # type: ignore[arg-type]
        assert res.entry_count == len(files) and res.uncompressed_size == len(blob)
        for name, data in files.items():
            assert (dest / name).read_bytes() == data
        assert res.meta.entries["big"].mtime_ns == 1_700_000_000_500_000_000


def sparse_member() -> bytes:
    """An old-GNU sparse file ('S'): 4 KiB of data at 0 and 4 KiB at 1 MiB, 2 MiB long."""
    info = tarfile.TarInfo("holey")
    info.type, info.size, info.mode = tarfile.GNUTYPE_SPARSE, 8192, 0o644
    block = bytearray(info.tobuf(tarfile.GNU_FORMAT))
    for i, (offset, size) in enumerate(((0, 4096), (1 << 20, 4096))):
        block[386 + 24 * i : 398 + 24 * i] = b"%011o\0" % offset
        block[398 + 24 * i : 410 + 24 * i] = b"%011o\0" % size
    block[483:495] = b"%011o\0" % (2 << 20)
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\0 " % sum(block[:512])
    return bytes(block[:512]) + b"A" * 4096 + b"B" * 4096


def test_sparse_members_are_read_through_forward_seeks(tmp_path: Path) -> None:
    after = tarfile.TarInfo("after")
    after.size = 3
    blob = sparse_member() + after.tobuf(tarfile.GNU_FORMAT) + b"end".ljust(512, b"\0")
    blob += bytes(1024)
    res = extract_layer(io.BytesIO(blob), tmp_path / "x", media_type_or_compression="none")
    data = (tmp_path / "x" / "holey").read_bytes()
    assert len(data) == 2 << 20 and res.meta.entries["holey"].size == 2 << 20
    assert data[:4096] == b"A" * 4096 and data[1 << 20 : (1 << 20) + 4096] == b"B" * 4096
    assert data.count(0) == (2 << 20) - 8192
    assert (tmp_path / "x" / "after").read_bytes() == b"end"


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o000])
def test_file_modes_do_not_depend_on_the_umask(tmp_path: Path, umask: int) -> None:
    blob = io.BytesIO()
    with tarfile.open(fileobj=blob, mode="w") as tf:
        for name, mode in (("rw", 0o644), ("x", 0o755), ("none", 0o000), ("grp", 0o070)):
            info = tarfile.TarInfo(name)
            info.mode, info.size = mode, 1
            tf.addfile(info, io.BytesIO(b"z"))
    old = os.umask(umask)
    try:
        extract_layer(io.BytesIO(blob.getvalue()), tmp_path / "x", media_type_or_compression="none")
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "x").iterdir()}
    assert modes == {"rw": 0o644, "x": 0o755, "none": 0o600, "grp": 0o670}
