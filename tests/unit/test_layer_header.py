"""layer_write's tar headers: the fast ustar path (``_ustar_header``) writes, for every
entry it takes, exactly the bytes ``tarfile``'s PAX format writes (``_tarfile_header``),
and leaves every entry that needs a pax record to ``tarfile``. Byte identity is what
keeps layers (and so diffIDs, cache keys and image ids) the same as before it existed."""

from __future__ import annotations

import itertools
import random

import pytest

from rootbuild.image.layer_write import TarEntry, _header, _tarfile_header, _ustar_header

NAMES = [
    "f", "a/b/c.txt", "x" * 99, "x" * 100, "x" * 101, "d/" + "y" * 98, "café", "sp ace",
    "tab\tname", "new\nline", "surr\udcffogate", "日本", "-dash", "a" * 255,
]
LINKS = ["", "target", "../up/" + "z" * 94, "l" * 100, "l" * 101, "ünï"]
NUMBERS = [0, 1, 0o7777777, 0o7777777 + 1, 2**21, 2**31, 2**32 + 5]
TIMES = [0, 1, 1_700_000_000, 8**11 - 1, 8**11, 2**40]


def entries() -> list[tuple[TarEntry, str]]:
    out: list[tuple[TarEntry, str]] = []
    for kind in ("file", "dir", "symlink", "hardlink", "char", "block", "fifo",
                 "whiteout", "opaque"):
        for name in NAMES:
            link = "target" if kind in ("symlink", "hardlink") else ""
            out.append((TarEntry(path=name, kind=kind, mode=0o755, size=3 if kind == "file"
                                 else 0, linkname=link, mtime=1_700_000_000,
                                 devmajor=1, devminor=3), name))
    for link in LINKS:
        out.append((TarEntry(path="s", kind="symlink", linkname=link or "t"), "s"))
    for uid, gid in itertools.product(NUMBERS, repeat=2):
        out.append((TarEntry(path="o", kind="file", uid=uid, gid=gid, size=1), "o"))
    for size in [0, 1, 511, 512, 8**11 - 1, 8**11, 2**40]:
        out.append((TarEntry(path="big", kind="file", size=size), "big"))
    for mtime in TIMES:
        out.append((TarEntry(path="t", kind="file", mtime=mtime), "t"))
    for mode in (0, 0o644, 0o4755, 0o2755, 0o1777, 0o107777):
        out.append((TarEntry(path="m", kind="file", mode=mode), "m"))
    for major, minor in ((0, 0), (8, 1), (0o7777777, 0o7777777)):
        out.append((TarEntry(path="dev", kind="char", devmajor=major, devminor=minor), "dev"))
    out.append((TarEntry(path="x", kind="file", xattrs=(("user.a", b"1"),)), "x"))
    out.append((TarEntry(path="", kind="dir"), "./"))
    rng = random.Random(14)
    alphabet = "abc/._- é\udc80Z09"
    for _ in range(300):
        name = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 120))).strip("/")
        name = name or "n"
        kind = rng.choice(["file", "dir", "symlink", "char"])
        out.append((TarEntry(
            path=name, kind=kind, mode=rng.randint(0, 0o7777), uid=rng.choice(NUMBERS),
            gid=rng.choice(NUMBERS), size=rng.choice([0, 5, 2**33]) if kind == "file" else 0,
            mtime=rng.choice(TIMES), linkname="l" * rng.randint(1, 110)
            if kind == "symlink" else "", devmajor=rng.randint(0, 300),
            devminor=rng.randint(0, 300)), name))
    return out


@pytest.mark.parametrize("clamp", [None, 1_000_000_000])
def test_every_header_is_the_bytes_tarfile_writes(clamp: int | None) -> None:
    fast = 0
    for entry, name in entries():
        mtime = entry.mtime if clamp is None else min(entry.mtime, clamp)
        expected = _tarfile_header(entry, name, mtime)
        assert _header(entry, name, clamp) == expected, (entry, name)
        if _ustar_header(name, b"0", 0, 0, 0, 0, mtime, "", 0, 0) is not None:
            fast += 1
    assert fast > 100  # the fast path was really taken, not only the fallback


def test_entries_that_need_pax_records_are_left_to_tarfile() -> None:
    assert _ustar_header("x" * 101, b"0", 0o644, 0, 0, 0, 0, "", 0, 0) is None
    assert _ustar_header("café", b"0", 0o644, 0, 0, 0, 0, "", 0, 0) is None
    assert _ustar_header("f", b"2", 0o777, 0, 0, 0, 0, "l" * 101, 0, 0) is None
    assert _ustar_header("f", b"0", 0o644, 8**7, 0, 0, 0, "", 0, 0) is None
    assert _ustar_header("f", b"0", 0o644, 0, 0, 8**11, 0, "", 0, 0) is None
    assert _ustar_header("f", b"0", 0o644, 0, 0, 0, -1, "", 0, 0) is None
    assert _ustar_header("d" * 100, b"5", 0o755, 0, 0, 0, 0, "", 0, 0) is None  # + "/"
    assert len(_ustar_header("f", b"0", 0o644, 0, 0, 0, 0, "", 0, 0) or b"") == 512
