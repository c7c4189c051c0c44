"""write_layer: deterministic tar, compression, hashing, and round trips through extract."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import tarfile
from pathlib import Path
from typing import BinaryIO

import pytest
import zstandard

from rootbuild.errors import ImageError
from rootbuild.image.layer_extract import extract_layer
from rootbuild.image.layer_write import TarEntry, entries_from_extracted, write_layer


def content(data: bytes) -> TarEntry:
    return TarEntry("", "file", size=len(data), source=lambda: io.BytesIO(data))


def file(path: str, data: bytes, **kw: object) -> TarEntry:
    return TarEntry(path, "file", size=len(data), source=lambda: io.BytesIO(data), **kw)  # type: ignore[arg-type]


BIG = os.urandom(3 << 20)  # crosses the 1 MiB chunking of the pipeline

ENTRIES = [
    TarEntry("", "dir", 0o755, mtime=1),
    TarEntry("usr", "dir", 0o755, mtime=2),
    TarEntry("usr/bin", "dir", 0o755, mtime=3),
    file(
        "usr/bin/su",
        b"\x7fELF",
        mode=0o4755,
        mtime=4,
        xattrs=(("security.capability", b"\x01\x00\x00\x02\xff\x00"), ("user.a", b"1")),
    ),
    TarEntry("usr/bin/sudo", "hardlink", 0o4755, mtime=4, linkname="usr/bin/su"),
    TarEntry("bin", "symlink", 0o777, mtime=5, linkname="/usr/bin"),
    TarEntry("dev", "dir", 0o755, mtime=6),
    TarEntry("dev/null", "char", 0o666, mtime=7, devmajor=1, devminor=3),
    TarEntry("dev/sda", "block", 0o660, gid=6, mtime=7, devmajor=8),
    TarEntry("dev/fifo", "fifo", 0o600, mtime=7),
    TarEntry("tmp", "dir", 0o1777, mtime=8),
    TarEntry("srv", "dir", 0o2775, uid=70000000, gid=1000, mtime=9),  # uid needs PAX
    file("srv/" + "n" * 150, b"long name", mtime=10),
    file("srv/big.bin", BIG, mtime=11),
    file("srv/empty", b"", mtime=12),
    TarEntry("etc", "opaque", 0),
    TarEntry("var/cache", "whiteout", 0),
]


def extracted_entries(blob: bytes, tmp: Path, name: str, comp: str) -> list[TarEntry]:
    dest = tmp / name
    res = extract_layer(io.BytesIO(blob), dest, media_type_or_compression=comp)
    return entries_from_extracted(dest, res.meta)


def read_source(e: TarEntry) -> bytes:
    assert e.source is not None
    with e.source() as f:
        return f.read()


@pytest.mark.parametrize("comp", ["gzip", "zstd", "none"])
def test_round_trip(tmp_path: Path, comp: str) -> None:
    out = io.BytesIO()
    res = write_layer(ENTRIES, out, compression=comp)  # type: ignore[arg-type]
    blob = out.getvalue()
    assert res.digest == "sha256:" + hashlib.sha256(blob).hexdigest()
    assert res.size == len(blob)
    assert (
        res.media_type
        == {
            "gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
            "zstd": "application/vnd.oci.image.layer.v1.tar+zstd",
            "none": "application/vnd.oci.image.layer.v1.tar",
        }[comp]
    )
    if comp == "gzip":
        tar = gzip.decompress(blob)
    elif comp == "zstd":
        tar = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(blob)).read()
    else:
        tar = blob
    assert res.diff_id == "sha256:" + hashlib.sha256(tar).hexdigest()
    back = extracted_entries(blob, tmp_path, "l", comp)

    def key(e: TarEntry) -> tuple[bool, str]:
        return (e.kind in ("whiteout", "opaque"), e.path)

    assert sorted(back, key=key) == sorted(ENTRIES, key=key)
    for e in back:
        if e.kind == "file":
            want = next(x for x in ENTRIES if x.path == e.path)
            assert read_source(e) == read_source(want), e.path
    # Re-export of the extracted layer reproduces the blob bit for bit.
    again = io.BytesIO()
    assert write_layer(back, again, compression=comp) == res  # type: ignore[arg-type]
    assert again.getvalue() == blob


def test_deterministic_regardless_of_input_order() -> None:
    results = set()
    for order in (ENTRIES, list(reversed(ENTRIES)), ENTRIES[5:] + ENTRIES[:5]):
        out = io.BytesIO()
        results.add((write_layer(order, out, compression="gzip"), out.getvalue()))
    assert len(results) == 1


def test_tar_layout() -> None:
    out = io.BytesIO()
    write_layer(ENTRIES, out, compression="none")
    raw = out.getvalue()
    assert raw.endswith(bytes(1024)) and len(raw) % 512 == 0
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as tf:
        members = tf.getmembers()
    names = [m.name for m in members]
    assert names[0] == "." and names[1:] == sorted(names[1:], key=str.encode)
    assert "etc/.wh..wh..opq" in names and "var/.wh.cache" in names
    for m in members:
        assert (m.uname, m.gname) == ("", "")
        assert isinstance(m.mtime, int)
    by = {m.name: m for m in members}
    assert by["usr/bin/sudo"].islnk() and by["usr/bin/sudo"].linkname == "usr/bin/su"
    assert by["usr/bin/su"].mode == 0o4755
    assert by["srv"].uid == 70000000
    assert by["var/.wh.cache"].size == 0 and by["var/.wh.cache"].mode == 0
    # PAX headers only where needed: xattrs, the big uid, the long name. Non-UTF-8 xattr
    # bytes make tarfile add hdrcharset=BINARY (POSIX pax; Go's reader ignores it).
    assert set(by["usr/bin/su"].pax_headers) == {
        "SCHILY.xattr.security.capability",
        "SCHILY.xattr.user.a",
        "hdrcharset",
    }
    assert by["srv"].pax_headers == {"uid": "70000000"}
    assert by["dev/null"].pax_headers == {} and by["bin"].pax_headers == {}
    assert raw.count(b"././@PaxHeader") == 3
    # Directories carry the trailing slash, as Docker's layers do.
    assert b"usr/bin/\x00" in raw


def test_source_date_epoch_clamps_mtimes() -> None:
    entries = [
        file("old", b"1", mtime=100),
        file("new", b"2", mtime=5000),
        TarEntry("gone", "whiteout", mtime=9000),
    ]
    out = io.BytesIO()
    write_layer(entries, out, compression="none", source_date_epoch=1000)
    with tarfile.open(fileobj=io.BytesIO(out.getvalue())) as tf:
        assert {m.name: m.mtime for m in tf} == {"old": 100, "new": 1000, ".wh.gone": 1000}


def test_hardlink_group_content_goes_to_first_name(tmp_path: Path) -> None:
    entries = [
        file("z/real", b"payload", mode=0o755, uid=5),
        TarEntry("a/link", "hardlink", linkname="z/real"),
        TarEntry("m/link2", "hardlink", linkname="a/link"),
    ]
    out = io.BytesIO()
    write_layer(entries, out, compression="none")
    with tarfile.open(fileobj=io.BytesIO(out.getvalue())) as tf:
        by = {m.name: m for m in tf}
    assert by["a/link"].isreg() and by["a/link"].size == 7 and by["a/link"].uid == 5
    assert by["z/real"].islnk() and by["z/real"].linkname == "a/link"
    assert by["m/link2"].linkname == "a/link"
    back = extracted_entries(out.getvalue(), tmp_path, "l", "none")
    assert os.stat(tmp_path / "l/z/real").st_ino == os.stat(tmp_path / "l/a/link").st_ino
    assert {e.path: e.kind for e in back} == {
        "a/link": "file",
        "z/real": "hardlink",
        "m/link2": "hardlink",
    }


@pytest.mark.parametrize(
    ("entries", "pattern"),
    [
        ([file("a", b"1"), file("a", b"2")], r"^write layer: duplicate entry 'a'$"),
        ([file("../x", b"1")], r"^write layer: invalid entry '\.\./x'"),
        ([file("/abs", b"1")], r"^write layer: invalid entry '/abs'"),
        ([file("d/", b"1")], r"invalid entry 'd/'"),
        ([TarEntry("", "file")], r"invalid entry ''"),
        ([TarEntry("x", "socket")], r"invalid entry 'x' of kind 'socket'"),
        ([file("a/.wh.b", b"")], r"would be read as a whiteout"),
        ([TarEntry("l", "symlink")], r"symlink 'l' has no target"),
        ([TarEntry("h", "hardlink", linkname="nope")], r"hardlink 'h' targets 'nope'"),
        ([TarEntry("d", "dir"), TarEntry("h", "hardlink", linkname="d")], r"targets 'd'"),
        ([TarEntry("f", "file", size=3)], r"file 'f' has no content source"),
        ([TarEntry("f", "file", size=3, source=lambda: io.BytesIO(b"12"))], r"shorter than 3"),
        ([TarEntry("f", "file", size=1, source=lambda: io.BytesIO(b"12"))], r"longer than 1"),
    ],
)
def test_invalid_entries(entries: list[TarEntry], pattern: str) -> None:
    with pytest.raises(ImageError, match=pattern):
        write_layer(entries, io.BytesIO(), compression="gzip")


def test_source_and_output_errors_propagate() -> None:
    def failing() -> BinaryIO:
        raise OSError("disk gone")

    with pytest.raises(OSError, match="disk gone"):
        write_layer(
            [TarEntry("f", "file", size=1, source=failing)], io.BytesIO(), compression="zstd"
        )

    class Broken(io.BytesIO):
        def write(self, data: object) -> int:
            raise OSError("no space left")

    with pytest.raises(OSError, match="no space left"):
        write_layer([file("big", BIG)], Broken(), compression="gzip")
