"""extract_layer: functional behaviour and the layer-extraction attack classes (SECURITY.md).

Every attack test checks the host afterwards: a canary directory beside the store is
unchanged and nothing was written outside the destination directory.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import lzma
import os
import stat
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import zstandard

from rootbuild.errors import ImageError
from rootbuild.image.layer_extract import LayerExtractResult, extract_layer
from rootbuild.image.layermeta import LayerMeta

# -- building tars in memory ----------------------------------------------------------------


def ti(name: str, kind: bytes = tarfile.REGTYPE, **kw: object) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = 0o644 if kind != tarfile.DIRTYPE else 0o755
    for key, value in kw.items():
        setattr(info, key, value)
    return info


def mktar(
    *members: tarfile.TarInfo | tuple[tarfile.TarInfo, bytes], fmt: int = tarfile.PAX_FORMAT
) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
        for m in members:
            info, data = m if isinstance(m, tuple) else (m, b"")
            if data:
                info.size = len(data)
            tf.addfile(info, io.BytesIO(data) if data else None)
    return buf.getvalue()


def raw(data: bytes) -> str:
    """A PAX value carrying arbitrary bytes (tarfile then writes hdrcharset=BINARY)."""
    return data.decode("utf-8", "surrogateescape")


def gz(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)


# -- host checks ----------------------------------------------------------------------------


def snapshot(root: Path, skip: set[Path]) -> dict[str, tuple[int, int, bytes]]:
    """Every path under ``root`` except the ``skip`` subtrees: (mode, nlink, content)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = [d for d in dirnames if here / d not in skip]
        for name in dirnames + filenames:
            p = here / name
            st = p.lstat()
            if stat.S_ISLNK(st.st_mode):
                body = os.readlink(p).encode()
            elif stat.S_ISREG(st.st_mode):
                body = p.read_bytes()
            else:
                body = b""
            nlink = 0 if stat.S_ISDIR(st.st_mode) else st.st_nlink
            out[str(p)] = (st.st_mode, nlink, body)
    return out


class Host:
    """tmp/canary/token (the host's precious file), tmp/store/layer (dest)."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.canary = tmp / "canary"
        self.canary.mkdir()
        self.token = self.canary / "token"
        self.token.write_bytes(b"CANARY-TOKEN\n")
        (tmp / "store").mkdir()
        self.dest = tmp / "store" / "layer"
        self.dests = {self.dest}
        self.before = snapshot(tmp, self.dests)

    def new_dest(self, name: str) -> Path:
        """Another destination beside ``dest`` (excluded from the host comparison)."""
        self.dests.add(self.tmp / "store" / name)
        return self.tmp / "store" / name

    def extract(self, blob: bytes, compression: str = "none", **kw: object) -> LayerExtractResult:
        return extract_layer(
            io.BytesIO(blob),
            self.dest,
            media_type_or_compression=compression,
            layer_name="test",
            **kw,  # type: ignore[arg-type]
        )

    def assert_untouched(self) -> None:
        assert snapshot(self.tmp, self.dests) == self.before
        assert self.token.read_bytes() == b"CANARY-TOKEN\n"
        assert self.token.stat().st_nlink == 1


@pytest.fixture
def host(tmp_path: Path) -> Iterator[Host]:
    h = Host(tmp_path)
    yield h
    h.assert_untouched()


def rejects(host: Host, blob: bytes, pattern: str, compression: str = "none") -> None:
    with pytest.raises(ImageError, match=pattern):
        host.extract(blob, compression)
    host.assert_untouched()


# -- functional -----------------------------------------------------------------------------


def test_files_dirs_symlinks_and_diffid(host: Host) -> None:
    blob = mktar(
        ti("./", tarfile.DIRTYPE, mode=0o755, mtime=11),
        ti("./etc", tarfile.DIRTYPE, mode=0o755, mtime=12),
        (ti("./etc/hostname", mode=0o644, uid=1000, gid=100, mtime=13), b"box\n"),
        ti("./bin", tarfile.SYMTYPE, linkname="usr/bin"),
        ti("./empty"),
    )
    res = host.extract(gz(blob), "application/vnd.oci.image.layer.v1.tar+gzip")
    assert res.diff_id == "sha256:" + hashlib.sha256(blob).hexdigest()
    assert res.compression == "gzip" and res.entry_count == 5
    assert res.uncompressed_size == len(blob)
    assert (host.dest / "etc/hostname").read_bytes() == b"box\n"
    assert os.readlink(host.dest / "bin") == "usr/bin"
    assert (host.dest / "empty").read_bytes() == b""
    meta = res.meta
    assert meta.entries[""].kind == "dir" and meta.entries[""].mtime == 11
    host_name = meta.entries["etc/hostname"]
    assert (host_name.kind, host_name.uid, host_name.gid, host_name.mtime, host_name.size) == (
        "file",
        1000,
        100,
        13,
        4,
    )
    assert (host.dest / "etc/hostname").stat().st_mtime == 13
    assert list(meta.entries) == ["", "etc", "etc/hostname", "bin", "empty"]


def test_long_names_pax_and_gnu(host: Host) -> None:
    deep = "/".join(["d" * 60] * 5) + "/" + "f" * 200
    for fmt, sub in ((tarfile.PAX_FORMAT, "pax"), (tarfile.GNU_FORMAT, "gnu")):
        link = f"{sub}/{deep}"
        blob = mktar(
            (ti(link), b"long"), ti(f"{sub}/l", tarfile.SYMTYPE, linkname="x" * 300), fmt=fmt
        )
        dest = host.new_dest(sub)
        res = extract_layer(io.BytesIO(blob), dest, media_type_or_compression="none")
        assert res.meta.entries[link].size == 4
        assert os.readlink(dest / sub / "l") == "x" * 300
        assert (dest / link).read_bytes() == b"long"
        assert res.meta.entries[f"{sub}/{'d' * 60}"].implicit


def test_implicit_parents_are_recorded_and_created(host: Host) -> None:
    res = host.extract(mktar((ti("a/b/c.txt"), b"x")))
    for p in ("a", "a/b"):
        e = res.meta.entries[p]
        assert (e.kind, e.mode, e.implicit) == ("dir", 0o755, True)
        assert stat.S_IMODE((host.dest / p).stat().st_mode) == 0o755
    assert not res.meta.entries["a/b/c.txt"].implicit


def test_pax_mtime_nanoseconds_and_xattrs(host: Host) -> None:
    info = ti(
        "f",
        pax_headers={
            "mtime": "1700000000.123456789",
            "SCHILY.xattr.user.note": "hi",
            "SCHILY.xattr.security.capability": raw(b"\x01\x00\x00\x02\xff"),
        },
    )
    e = host.extract(mktar((info, b"x"))).meta.entries["f"]
    assert e.mtime == 1700000000 and e.mtime_ns == 1700000000123456789
    assert dict(e.xattrs) == {"user.note": b"hi", "security.capability": b"\x01\x00\x00\x02\xff"}
    assert os.stat(host.dest / "f").st_mtime_ns == 1700000000123456789


def test_duplicates_later_entry_wins(host: Host) -> None:
    blob = mktar(
        (ti("f"), b"first"),
        (ti("f", mode=0o600), b"second"),
        ti("d", tarfile.DIRTYPE),
        (ti("d/child"), b"c"),
        (ti("d"), b"now a file"),
        ti("e", tarfile.DIRTYPE, mode=0o700),
        (ti("e/keep"), b"k"),
        ti("e", tarfile.DIRTYPE, mode=0o755, uid=7),
    )
    meta = host.extract(blob).meta
    assert (host.dest / "f").read_bytes() == b"second" and meta.entries["f"].mode == 0o600
    assert (host.dest / "d").read_bytes() == b"now a file"
    assert meta.entries["d"].kind == "file" and "d/child" not in meta.entries
    assert (host.dest / "e/keep").read_bytes() == b"k"
    assert meta.entries["e"].uid == 7 and "e/keep" in meta.entries


def test_hardlinks_and_promotion_when_target_is_replaced(host: Host) -> None:
    blob = mktar(
        (ti("a", mode=0o4755, uid=3), b"old"),
        ti("b", tarfile.LNKTYPE, linkname="a"),
        ti(
            "c", tarfile.LNKTYPE, linkname="./b"
        ),  # a chain: recorded against the inode's first name
        (ti("a"), b"new"),
    )
    meta = host.extract(blob).meta
    assert (host.dest / "a").read_bytes() == b"new"
    assert (host.dest / "b").read_bytes() == b"old"
    assert os.stat(host.dest / "b").st_ino == os.stat(host.dest / "c").st_ino
    b, c = meta.entries["b"], meta.entries["c"]
    assert (b.kind, b.mode, b.uid, b.size) == ("file", 0o4755, 3, 3)
    assert (c.kind, c.linkname) == ("hardlink", "b")


def test_root_entry_and_entries_resolving_to_root(host: Host) -> None:
    meta = host.extract(mktar(ti(".", tarfile.DIRTYPE, mode=0o1777, uid=5))).meta
    assert meta.entries[""].mode == 0o1777 and meta.entries[""].uid == 5
    assert not stat.S_IMODE(host.dest.stat().st_mode) & 0o7000
    rejects(
        host_again(host),
        mktar((ti("a/.."), b"x")),
        r"^extract layer test: entry 'a/\.\.': entry resolves to the layer root$",
    )


def host_again(host: Host) -> Host:
    """A fresh destination beside the same canary."""
    import shutil

    shutil.rmtree(host.dest)
    return host


def test_whiteouts_and_opaque_recorded(host: Host) -> None:
    blob = mktar(
        ti("etc", tarfile.DIRTYPE),
        ti("etc/.wh..wh..opq"),
        ti("etc/.wh.shadow"),
        ti(".wh.tmp"),
        ti("usr/.wh..wh..opq"),
        (ti(".wh..wh.plnk/123.456"), b"aufs"),  # AUFS metadata: skipped as Docker does
    )
    meta = host.extract(blob).meta
    assert meta.whiteouts == {"etc/shadow", "tmp"}
    assert meta.opaque_dirs == {"etc", "usr"}
    assert sorted(os.listdir(host.dest)) == ["etc", "usr"]
    assert os.listdir(host.dest / "etc") == []
    assert meta.entries["usr"].implicit


def test_compressions_and_sniffing(host: Host) -> None:
    blob = mktar((ti("f"), b"data"))
    variants = {
        "gzip": gz(blob),
        "zstd": zstandard.ZstdCompressor().compress(blob),
        "bzip2": bz2.compress(blob),
        "xz": lzma.compress(blob),
        "none": blob,
    }
    want = "sha256:" + hashlib.sha256(blob).hexdigest()
    for name, data in variants.items():
        for spec in (name, "auto"):
            dest = host.new_dest(f"{name}-{spec}")
            res = extract_layer(io.BytesIO(data), dest, media_type_or_compression=spec)
            assert (res.diff_id, res.compression) == (want, name)
            assert (dest / "f").read_bytes() == b"data"
    # A layer media type sniffs (as containerd does) but only allows gzip, zstd and none.
    res = host.extract(variants["zstd"], "application/vnd.oci.image.layer.v1.tar+gzip")
    assert res.compression == "zstd"
    with pytest.raises(ImageError, match=r"xz compression is not allowed"):
        extract_layer(
            io.BytesIO(variants["xz"]),
            host.new_dest("x"),
            media_type_or_compression="application/vnd.oci.image.layer.v1.tar",
        )
    with pytest.raises(ImageError, match=r"unsupported media type or compression"):
        extract_layer(
            io.BytesIO(blob), host.new_dest("y"), media_type_or_compression="application/json"
        )


def test_zstd_multi_frame_and_empty_tar(host: Host) -> None:
    blob = mktar((ti("f"), b"x" * 5000), (ti("g"), b"y" * 5000))
    cut = len(blob) // 2
    frames = zstandard.ZstdCompressor().compress(blob[:cut]) + zstandard.ZstdCompressor().compress(
        blob[cut:]
    )
    res = host.extract(frames, "zstd")
    assert res.diff_id == "sha256:" + hashlib.sha256(blob).hexdigest()
    empty = extract_layer(
        io.BytesIO(bytes(1024)), host.new_dest("e"), media_type_or_compression="none"
    )
    assert empty.entry_count == 0 and dict(empty.meta.entries) == {}


def test_expected_diff_id_and_nonempty_dest(host: Host) -> None:
    blob = mktar((ti("f"), b"x"))
    with pytest.raises(
        ImageError,
        match=r"^extract layer test: diffID sha256:[0-9a-f]{64} does not match sha256:0+$",
    ):
        host.extract(blob, expected_diff_id="sha256:" + "0" * 64)
    with pytest.raises(ValueError, match="not empty"):
        host.extract(blob)


def test_meta_save_load_round_trip(host: Host) -> None:
    info = ti(
        "bin/ping",
        mode=0o4755,
        uid=0,
        gid=0,
        pax_headers={
            "SCHILY.xattr.security.capability": "\x01\x00\x00\x02\x00\x20\x00\x00",
            "mtime": "5.5",
        },
    )
    blob = mktar(
        (info, b"elf"),
        ti("dev/null", tarfile.CHRTYPE, devmajor=1, devminor=3),
        ti(".wh.x"),
        ti("o/.wh..wh..opq"),
    )
    meta = host.extract(blob).meta
    host.new_dest("m").mkdir()
    path = host.tmp / "store" / "m" / "meta.json"
    meta.save(path)
    loaded = LayerMeta.load(path)
    assert dict(loaded.entries) == dict(meta.entries)
    assert list(loaded.entries) == list(meta.entries)
    assert (loaded.whiteouts, loaded.opaque_dirs) == (meta.whiteouts, meta.opaque_dirs)
    path.write_text('{"v": 99}')
    with pytest.raises(ImageError, match=r"^load layer metadata .*unsupported format version 99"):
        LayerMeta.load(path)


# -- attack classes -------------------------------------------------------------------------


def test_tar_slip_dotdot_rejects_the_layer(host: Host) -> None:
    rejects(
        host,
        mktar((ti("../../canary/pwned"), b"x")),
        r"^extract layer test: entry '\.\./\.\./canary/pwned': path escapes the layer root$",
    )
    rejects(
        host_again(host),
        mktar((ti("ok"), b"1"), (ti("a/../../../canary/token"), b"x")),
        r"entry 'a/\.\./\.\./\.\./canary/token': path escapes the layer root",
    )


def test_tar_slip_in_pax_and_gnu_long_names(host: Host) -> None:
    evil = "../" * 3 + "canary/" + "p" * 120
    for fmt in (tarfile.PAX_FORMAT, tarfile.GNU_FORMAT):
        rejects(
            host_again(host) if host.dest.exists() else host,
            mktar((ti(evil), b"x"), fmt=fmt),
            r"path escapes the layer root",
        )


def test_absolute_names_stay_inside(host: Host) -> None:
    abs_name = str(host.canary / "pwned")
    host.extract(mktar((ti(abs_name), b"inside"), (ti("/" + str(host.token)), b"inside too")))
    assert (host.dest / abs_name.lstrip("/")).read_bytes() == b"inside"
    assert (host.dest / str(host.token).lstrip("/")).read_bytes() == b"inside too"


@pytest.mark.parametrize("target", ["/", "../..", "../../..", "CANARY"])
def test_symlink_then_write_through(host: Host, target: str) -> None:
    target = str(host.canary) if target == "CANARY" else target
    rel_canary = str(host.canary).lstrip("/")
    via = {
        "/": rel_canary,
        "../..": "canary",
        "../../..": f"{host.tmp.name}/canary",
        str(host.canary): "",
    }[target]
    name = f"a/{via}/pwned".replace("//", "/")
    rejects(
        host,
        mktar(ti("a", tarfile.SYMTYPE, linkname=target), (ti(name), b"x")),
        r"parent 'a' is a symlink or not a directory",
    )


def test_symlink_then_directory_hardlink_and_symlink_through(host: Host) -> None:
    link = ti("a", tarfile.SYMTYPE, linkname=str(host.canary))
    for second in (
        ti("a/newdir", tarfile.DIRTYPE),
        ti("a/sym", tarfile.SYMTYPE, linkname="/"),
        ti("a/.wh..wh..opq"),
        ti("a/dev", tarfile.CHRTYPE),
    ):
        if host.dest.exists():
            host_again(host)
        rejects(host, mktar(link, second), r"parent 'a' is a symlink or not a directory")


def test_directory_replaced_by_symlink_then_write_through(host: Host) -> None:
    # The directory's fd is cached by then; replacing it must invalidate the cache.
    blob = mktar(
        ti("a", tarfile.DIRTYPE),
        (ti("a/f"), b"1"),
        ti("a", tarfile.SYMTYPE, linkname=str(host.canary)),
        (ti("a/pwned"), b"x"),
    )
    rejects(host, blob, r"entry 'a/pwned': parent 'a' is a symlink or not a directory")


def test_file_over_symlink_replaces_the_link_not_its_target(host: Host) -> None:
    host.extract(mktar(ti("a", tarfile.SYMTYPE, linkname=str(host.token)), (ti("a"), b"mine")))
    assert not (host.dest / "a").is_symlink()
    assert (host.dest / "a").read_bytes() == b"mine"


def test_hardlink_to_outside_file(host: Host) -> None:
    rejects(
        host,
        mktar(ti("passwd", tarfile.LNKTYPE, linkname=str(host.token))),
        r"hardlink target '/.*/canary/token' is not an earlier entry of the layer",
    )
    rejects(
        host_again(host),
        mktar(ti("passwd", tarfile.LNKTYPE, linkname="../../canary/token")),
        r"hardlink target '\.\./\.\./canary/token' escapes the layer root",
    )


def test_hardlink_through_or_to_symlink(host: Host) -> None:
    # Through a symlinked directory: "s/token" is no entry of the layer.
    rejects(
        host,
        mktar(
            ti("s", tarfile.SYMTYPE, linkname=str(host.canary)),
            ti("h", tarfile.LNKTYPE, linkname="s/token"),
        ),
        r"hardlink target 's/token' is not an earlier entry of the layer",
    )
    # To a symlink itself: becomes a second symlink with the same target, nothing followed.
    meta = (
        host_again(host)
        .extract(
            mktar(
                ti("s", tarfile.SYMTYPE, linkname=str(host.token)),
                ti("h", tarfile.LNKTYPE, linkname="s"),
            )
        )
        .meta
    )
    assert os.readlink(host.dest / "h") == str(host.token)
    assert meta.entries["h"].kind == "symlink"
    # To a directory: refused.
    rejects(
        host_again(host),
        mktar(ti("d", tarfile.DIRTYPE), ti("h", tarfile.LNKTYPE, linkname="d")),
        r"hardlink target 'd' is a directory",
    )


@pytest.mark.parametrize(
    ("member", "pattern"),
    [
        (ti(".wh."), "malformed whiteout name"),
        (ti("d/.wh.."), "malformed whiteout name"),
        (ti("d/.wh..wh.foo"), "malformed whiteout name"),
        ((ti(".wh..wh..opq"), b"content"), "malformed whiteout: not an empty regular file"),
        ((ti("d/.wh.x"), b"content"), "malformed whiteout: not an empty regular file"),
        (ti("d/.wh.x", tarfile.DIRTYPE), "malformed whiteout: not an empty regular file"),
        (ti("d/.wh.x", tarfile.SYMTYPE, linkname="/"), "malformed whiteout: not an empty regular"),
        (ti("d/.wh.x/y"), "a whiteout name used as a directory"),
        (ti(".wh.a/../.wh.."), "malformed whiteout name"),
    ],
)
def test_malformed_whiteouts(host: Host, member: object, pattern: str) -> None:
    rejects(host, mktar(member), pattern)  # type: ignore[arg-type]


def test_devices_fifos_setuid_owners_xattrs_are_metadata_only(host: Host) -> None:
    blob = mktar(
        ti("dev", tarfile.DIRTYPE),
        ti("dev/null", tarfile.CHRTYPE, mode=0o666, devmajor=1, devminor=3),
        ti("dev/sda", tarfile.BLKTYPE, mode=0o660, devmajor=8, devminor=0, gid=6),
        ti("run/fifo", tarfile.FIFOTYPE, mode=0o600),
        (
            ti(
                "bin/su",
                mode=0o4755,
                uid=0,
                pax_headers={
                    "SCHILY.xattr.security.capability": raw(b"\x01\x00\x00\x02\xff\xff\xff\xff"),
                    "SCHILY.xattr.user.x": "1",
                },
            ),
            b"ELF",
        ),
        ti("tmp", tarfile.DIRTYPE, mode=0o1777),
        ti("srv", tarfile.DIRTYPE, mode=0o2775, uid=1234, gid=1234),
        (ti("home/u/file", mode=0o000, uid=1000, gid=1000), b"secret"),
    )
    meta = host.extract(blob).meta
    for p, kind, maj, mino in (
        ("dev/null", "char", 1, 3),
        ("dev/sda", "block", 8, 0),
        ("run/fifo", "fifo", 0, 0),
    ):
        st = os.lstat(host.dest / p)
        assert stat.S_ISREG(st.st_mode) and st.st_size == 0, p
        e = meta.entries[p]
        assert (e.kind, e.devmajor, e.devminor) == (kind, maj, mino)
    assert stat.S_IMODE(os.lstat(host.dest / "dev/null").st_mode) == 0o666
    assert stat.S_IMODE(os.lstat(host.dest / "bin/su").st_mode) == 0o755
    assert meta.entries["bin/su"].mode == 0o4755
    assert (
        dict(meta.entries["bin/su"].xattrs)["security.capability"]
        == b"\x01\x00\x00\x02\xff\xff\xff\xff"
    )
    assert os.listxattr(host.dest / "bin/su") == []
    assert stat.S_IMODE(os.lstat(host.dest / "tmp").st_mode) == 0o777
    assert stat.S_IMODE(os.lstat(host.dest / "srv").st_mode) == 0o775
    assert (meta.entries["tmp"].mode, meta.entries["srv"].mode) == (0o1777, 0o2775)
    assert stat.S_IMODE(os.lstat(host.dest / "home/u/file").st_mode) == 0o600
    for p in ("srv", "home/u/file", "bin/su"):
        assert os.lstat(host.dest / p).st_uid == os.getuid()
    assert (meta.entries["home/u/file"].uid, meta.entries["srv"].gid) == (1000, 1234)


def test_negative_ids_from_base256_headers(host: Host) -> None:
    rejects(host, mktar(ti("f", uid=-5), fmt=tarfile.GNU_FORMAT), r"negative owner or device")


def test_unsupported_entry_types_and_nul_names(host: Host) -> None:
    rejects(host, mktar(ti("vol", b"V")), r"unsupported tar entry type b'V'")
    rejects(
        host_again(host),
        mktar((ti("a", pax_headers={"path": "a\x00b"}), b"x")),
        r"name contains a NUL byte",
    )


def test_decompression_bomb_caps(host: Host) -> None:
    bomb = gz(mktar((ti("zeros"), bytes(20 << 20))))
    assert len(bomb) < 100_000
    with pytest.raises(
        ImageError,
        match=r"^extract layer test: uncompressed size exceeds the limit of 1048576 bytes$",
    ):
        host.extract(bomb, "gzip", max_bytes=1 << 20)
    host.assert_untouched()
    many = mktar(*[ti(f"f{i}") for i in range(50)])
    with pytest.raises(ImageError, match=r"^extract layer test: more than 10 entries$"):
        host_again(host).extract(many, max_entries=10)
    zbomb = zstandard.ZstdCompressor().compress(mktar((ti("z"), bytes(20 << 20))))
    with pytest.raises(ImageError, match=r"exceeds the limit"):
        host_again(host).extract(zbomb, "zstd", max_bytes=1 << 20)


def test_truncated_and_corrupt_streams(host: Host) -> None:
    blob = mktar(*[(ti(f"f{i}"), os.urandom(3000)) for i in range(20)])
    packed = gz(blob)
    flipped = bytearray(packed)
    flipped[len(flipped) // 2] ^= 0xFF
    zst = zstandard.ZstdCompressor().compress(blob)
    bad_header = bytearray(blob)
    bad_header[7 * 512 + 100] ^= 0x01  # the mode field of the 2nd header: checksum mismatch
    cases = [
        (packed[: len(packed) // 2], "gzip", r"corrupt or truncated gzip stream"),
        (packed[:-4], "gzip", r"corrupt or truncated gzip stream"),
        (bytes(flipped), "gzip", r"corrupt or truncated gzip stream"),
        (zst[: len(zst) // 2], "zstd", r"corrupt or truncated zstd stream"),
        (blob[: 10 * 512 + 100], "none", r"corrupt or truncated tar"),
        (blob[: 7 * 512 + 200], "none", r"corrupt tar header: truncated header"),
        (bytes(bad_header), "none", r"corrupt tar header"),
        (b"this is not a tar archive at all" * 40, "none", r"corrupt"),
        (b"", "gzip", r"^extract layer test: empty gzip stream$"),
    ]
    for data, compression, pattern in cases:
        if host.dest.exists():
            host_again(host)
        rejects(host, data, pattern, compression)


def test_legitimate_absolute_symlinks_keep_working(host: Host) -> None:
    from rootbuild.image.rootfs import RootfsView

    blob = mktar(
        ti("usr/bin", tarfile.DIRTYPE),
        (ti("usr/bin/x", mode=0o755), b"#!x\n"),
        ti("bin", tarfile.SYMTYPE, linkname="/usr/bin"),
        ti("etc/alternatives/x", tarfile.SYMTYPE, linkname="/usr/bin/x"),
        ti("up", tarfile.SYMTYPE, linkname="../../../../.."),
        ti("lib", tarfile.SYMTYPE, linkname="usr/lib"),
        (ti("usr/lib/libc.so"), b"libc"),
    )
    meta = host.extract(blob).meta
    assert os.readlink(host.dest / "bin") == "/usr/bin"
    assert os.readlink(host.dest / "etc/alternatives/x") == "/usr/bin/x"
    view = RootfsView([(host.dest, meta)])
    for path in ("/bin/x", "/etc/alternatives/x", "/up/usr/bin/x", "/up/bin/../bin/x"):
        e = view.lookup(path)
        assert e is not None and e.path == "usr/bin/x", path
        with view.open(path) as f:
            assert f.read() == b"#!x\n"
    assert view.read_small_file("/lib/libc.so", 100) == b"libc"


def test_missing_end_of_archive_marker_is_accepted_like_go(host: Host) -> None:
    blob = mktar((ti("a"), b"1"), (ti("b"), b"2"))
    res = host.extract(blob[: 4 * 512])  # two members, no zero blocks
    assert list(res.meta.entries) == ["a", "b"]


def test_deep_and_wide_trees_exercise_the_dir_fd_cache(host: Host) -> None:
    deep = "/".join(f"d{i}" for i in range(300))
    members: list[tarfile.TarInfo | tuple[tarfile.TarInfo, bytes]] = [(ti(f"{deep}/leaf"), b"x")]
    members += [(ti(f"w{i}/f"), b"y") for i in range(400)]
    members += [(ti(f"{deep}/again"), b"z"), (ti("w0/g"), b"g")]
    res = host.extract(mktar(*members))
    assert (host.dest / deep / "again").read_bytes() == b"z"
    assert res.meta.entries["d0/d1"].implicit and res.meta.entries["w0/g"].size == 1


def test_throughput_20000_small_files(host: Host, capsys: pytest.CaptureFixture[str]) -> None:
    """Printed, not asserted: extraction speed for 20,000 small files on this machine."""
    import time

    members: list[tarfile.TarInfo | tuple[tarfile.TarInfo, bytes]] = []
    for i in range(200):
        members.append(ti(f"d{i}", tarfile.DIRTYPE))
        members += [(ti(f"d{i}/f{j}.txt"), b"%d-%d\n" % (i, j) * 8) for j in range(100)]
    blob = gz(mktar(*members))
    start = time.perf_counter()
    res = host.extract(blob, "gzip")
    elapsed = time.perf_counter() - start
    assert res.entry_count == 20200
    with capsys.disabled():
        print(f"\n[throughput] extract 20,000 small files: {20000 / elapsed:,.0f} files/s")
