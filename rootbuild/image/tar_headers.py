"""Tar header policy for layer extraction: the strict header parser and what one header
means (clean name, kind, mtime, xattrs), with no file system access.

Rules (SECURITY.md rule 2; the layer_extract module applies them):
- ``tarfile`` only parses headers: ``StrictTarInfo`` turns a bad checksum or a truncated
  header after the first member into an error (tarfile alone would silently stop), and
  parses the common ustar/PAX case with a faster but equivalent ``frombuf`` that falls back
  to tarfile's own parser for anything unusual.
- Names are cleaned lexically; one that climbs above the layer root raises ``Reject``,
  which rejects the whole layer.
"""

from __future__ import annotations

import base64
import math
import struct
import tarfile
from decimal import ROUND_FLOOR, Decimal, InvalidOperation
from typing import Self, cast
from urllib.parse import unquote


class Reject(Exception):
    """An entry that makes the whole layer unacceptable."""



# Header errors tarfile defines but typeshed does not declare.
_EmptyHeaderError = cast(type[Exception], tarfile.__dict__["EmptyHeaderError"])
_EOFHeaderError = cast(type[Exception], tarfile.__dict__["EOFHeaderError"])
_BadHeaderErrors = cast(
    tuple[type[Exception], ...],
    (tarfile.__dict__["TruncatedHeaderError"], tarfile.__dict__["InvalidHeaderError"]),
)


class StrictTarInfo(tarfile.TarInfo):
    """tarfile silently ends the archive at a bad checksum or a truncated header after the
    first member; turn those into errors. A clean end of data ends the archive (Go does)."""

    @classmethod
    def fromtarfile(cls, tarfile_: tarfile.TarFile) -> StrictTarInfo:
        try:
            info = super().fromtarfile(tarfile_)
        except _EmptyHeaderError:
            raise _EOFHeaderError("end of file header") from None
        except _BadHeaderErrors as exc:
            raise Reject(f"corrupt tar header: {exc}") from exc
        if info.size < 0:
            raise Reject("corrupt tar header: negative size")
        return info

    @classmethod
    def frombuf(cls, buf: bytes | bytearray, encoding: str, errors: str) -> Self:
        """tarfile's ``TarInfo.frombuf`` with one ``struct`` unpack instead of two dozen
        slices and calls (header parsing was a third of the time per small file). Headers
        the fast path does not cover (base-256 numbers, old GNU sparse, bad checksums,
        short or zero blocks) go to tarfile's own parser, so the results are the same."""
        if len(buf) != tarfile.BLOCKSIZE or buf == _ZERO_BLOCK:
            return super().frombuf(buf, encoding, errors)
        fields = _HEADER.unpack(buf)
        numbers = fields[1:7] + fields[11:13]
        if fields[7] == tarfile.GNUTYPE_SPARSE or any(f[0] >= 0x80 for f in numbers):
            return super().frombuf(buf, encoding, errors)
        try:
            mode, uid, gid, size, mtime, chksum, devmajor, devminor = map(_octal, numbers)
        except ValueError:
            return super().frombuf(buf, encoding, errors)
        if chksum != 256 + sum(buf) - sum(buf[148:156]):
            return super().frombuf(buf, encoding, errors)
        obj = cls()
        name, type_, prefix = _nts(fields[0], encoding, errors), fields[7], fields[13]
        obj.name, obj.mode, obj.uid, obj.gid = name, mode, uid, gid
        obj.size, obj.mtime, obj.chksum, obj.type = size, mtime, chksum, type_
        obj.linkname = _nts(fields[8], encoding, errors)
        obj.uname = _nts(fields[9], encoding, errors)
        obj.gname = _nts(fields[10], encoding, errors)
        obj.devmajor, obj.devminor = devmajor, devminor
        if type_ == tarfile.AREGTYPE and name.endswith("/"):
            obj.type = tarfile.DIRTYPE
        if obj.isdir():
            obj.name = obj.name.rstrip("/")
        if prefix[:1] not in (b"", b"\0") and obj.type not in tarfile.GNU_TYPES:
            obj.name = _nts(prefix, encoding, errors) + "/" + obj.name
        return obj


# name mode uid gid size mtime chksum type linkname (magic) uname gname devmajor devminor prefix
_HEADER = struct.Struct("100s8s8s8s12s12s8sc100s8x32s32s8s8s155s12x")
_ZERO_BLOCK = bytes(tarfile.BLOCKSIZE)


def _nts(field: bytes, encoding: str, errors: str) -> str:
    return field.partition(b"\0")[0].decode(encoding, errors)


def _octal(field: bytes) -> int:
    """tarfile's ``nti`` for a field that is not base-256."""
    return int(field.partition(b"\0")[0].decode("ascii").strip() or "0", 8)


def clean_name(name: str) -> str:
    """Strip leading "/" and "./", apply ".." lexically; raise Reject when it escapes."""
    parts: list[str] = []
    for comp in name.split("/"):
        if comp in ("", "."):
            continue
        if comp == "..":
            if not parts:
                raise Reject("path escapes the layer root")
            parts.pop()
        else:
            parts.append(comp)
    return "/".join(parts)


def split_name(rel: str) -> tuple[str, str]:
    parent, _, name = rel.rpartition("/")
    return parent, name


def entry_kind(member: tarfile.TarInfo) -> str:
    if member.isreg():
        return "file"
    for test, kind in (
        (member.isdir, "dir"),
        (member.issym, "symlink"),
        (member.islnk, "hardlink"),
        (member.ischr, "char"),
        (member.isblk, "block"),
        (member.isfifo, "fifo"),
    ):
        if test():
            return kind
    raise Reject(f"unsupported tar entry type {member.type!r}")


def entry_mtime(member: tarfile.TarInfo) -> tuple[int, int | None]:
    raw = member.pax_headers.get("mtime")
    if raw:
        try:
            value = Decimal(raw)
            if value.is_finite():
                seconds = math.floor(value)
                if value == seconds:
                    return seconds, None
                ns = int((value * 1_000_000_000).to_integral_value(rounding=ROUND_FLOOR))
                return seconds, ns
        except (InvalidOperation, ValueError):
            pass
    return math.floor(member.mtime), None


def entry_xattrs(member: tarfile.TarInfo) -> tuple[tuple[str, bytes], ...]:
    found: dict[str, bytes] = {}
    for key, value in member.pax_headers.items():
        if key.startswith("SCHILY.xattr."):
            found[key[13:]] = value.encode("utf-8", "surrogateescape")
        elif key.startswith("LIBARCHIVE.xattr."):
            try:
                found[unquote(key[17:])] = base64.b64decode(value + "=" * (-len(value) % 4))
            except ValueError as exc:
                raise Reject(f"bad LIBARCHIVE xattr {key!r}") from exc
    return tuple(sorted(found.items()))
