"""Safe extraction of one OCI layer tar into a plain directory, plus its LayerMeta.

Job: decompress a layer stream, compute its diffID (sha256 of the uncompressed tar) while
reading, and write every entry ourselves beneath ``dest_dir``; what an unprivileged user
cannot apply on disk (owners, setuid/setgid/sticky, devices, FIFOs, xattrs, exact mtimes)
goes into the returned ``LayerMeta`` instead.

Rules (SECURITY.md rules 1-3):
- ``tarfile`` only parses headers (mode ``r:`` over the forward-only ``Inflater``, with a
  faster but equivalent ``frombuf``); nothing is extracted by it. Headers
  that are corrupt or truncated anywhere in the archive are errors (tarfile on its own would
  silently stop there); a clean end of data on a block boundary ends the archive, as in Go's
  archive/tar, which Docker and containerd use.
- Every file operation is relative to a directory fd opened with O_NOFOLLOW|O_DIRECTORY;
  files are created O_CREAT|O_EXCL|O_NOFOLLOW. Nothing is ever written through a symlink:
  a parent component that is a symlink (or not a directory) in this layer rejects the layer.
- Names are the effective (PAX/GNU long) names, with leading "/" and "./" stripped and ".."
  applied lexically; a name or hardlink target that climbs above the layer root rejects the
  *whole layer* with ImageError naming the layer and entry (Docker's pkg/archive and
  containerd both refuse such "breakout" entries).
- Hardlink targets must be earlier, non-directory entries of this layer; a hardlink to an
  earlier symlink becomes a second symlink with the same target (indistinguishable in use).
- Whiteouts (OCI layer.md): ``.wh.NAME`` records a deletion, ``.wh..wh..opq`` an opaque
  directory; both must be empty regular files (or hardlinks). AUFS metadata at the top level
  (``.wh..wh.plnk`` etc.) is skipped as Docker does; other ``.wh..wh.*`` names, ``.wh.``,
  ``.wh..``, and ``.wh.*`` used as a directory are malformed.
- Devices and FIFOs become empty placeholder files (never mknod); on-disk modes are the
  permission bits OR 0o600 (files) / 0o700 (dirs), never setuid/setgid/sticky.
- Duplicate entries: the later one wins (two directories merge; otherwise the earlier one,
  with its subtree, is removed first).
- On any error ``dest_dir`` is left half-written: extract into a staging directory and
  rename it into place on success; the caller removes the staging directory on failure.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
import tarfile
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, BinaryIO, cast

from rootbuild.errors import ImageError
from rootbuild.image.decompress import (
    CHUNK,
    Inflater,
    StreamError,
    TooBig,
    decoder,
    select_compression,
)
from rootbuild.image.layermeta import EntryMeta, LayerMeta
from rootbuild.image.tar_headers import (
    Reject,
    StrictTarInfo,
    clean_name,
    entry_kind,
    entry_mtime,
    entry_xattrs,
    split_name,
)

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(frozen=True)
class LayerExtractResult:
    diff_id: str
    meta: LayerMeta
    entry_count: int
    uncompressed_size: int
    compression: str


# -- the extractor --------------------------------------------------------------------------


class _Dirs:
    """Open directory fds by relative path (LRU-bounded); each directory is checked once."""

    def __init__(self, root_fd: int, on_create: Callable[[str], None], limit: int = 256):
        self._root = root_fd
        self._on_create = on_create
        self._limit = limit
        self._fds: OrderedDict[str, int] = OrderedDict()

    def get(self, rel: str) -> int:
        if not rel:
            return self._root
        fd = self._fds.get(rel)
        if fd is not None:
            self._fds.move_to_end(rel)
            return fd
        parts = rel.split("/")
        start, fd = 0, self._root
        for i in range(len(parts) - 1, 0, -1):
            cached = self._fds.get("/".join(parts[:i]))
            if cached is not None:
                start, fd = i, cached
                break
        for i in range(start, len(parts)):
            sub = "/".join(parts[: i + 1])
            fd = self._open_child(fd, parts[i], sub)
            self._fds[sub] = fd
            if len(self._fds) > self._limit:
                os.close(self._fds.popitem(last=False)[1])
        return fd

    def _open_child(self, parent_fd: int, name: str, sub: str) -> int:
        try:
            return os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
        except FileNotFoundError:
            pass
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise Reject(f"parent {sub!r} is a symlink or not a directory") from exc
            raise
        os.mkdir(name, 0o700, dir_fd=parent_fd)
        fd = os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
        os.fchmod(fd, 0o755)
        self._on_create(sub)
        return fd

    def forget(self, rel: str) -> None:
        prefix = rel + "/"
        for key in [k for k in self._fds if k == rel or k.startswith(prefix)]:
            os.close(self._fds.pop(key))

    def close(self) -> None:
        while self._fds:
            os.close(self._fds.popitem()[1])


class _Extractor:
    def __init__(self, root_fd: int) -> None:
        self.root_fd = root_fd
        self.entries: dict[str, EntryMeta] = {}
        self.children: dict[str, set[str]] = {}
        self.links: dict[str, list[str]] = {}  # primary path -> hardlink paths
        self.whiteouts: set[str] = set()
        self.opaque: set[str] = set()
        self.dirs = _Dirs(root_fd, self._implicit_dir)
        self.create_mask = _creation_mask(root_fd)

    # bookkeeping

    def _record(self, meta: EntryMeta) -> None:
        if meta.path:
            parent, name = split_name(meta.path)
            self.children.setdefault(parent, set()).add(name)
        self.entries[meta.path] = meta

    def _implicit_dir(self, rel: str) -> None:
        self._record(EntryMeta(rel, "dir", 0o755, implicit=True))

    def _subtree(self, rel: str) -> list[str]:
        out, todo = [], [rel]
        while todo:
            path = todo.pop()
            out.append(path)
            todo.extend(f"{path}/{n}" for n in self.children.get(path, ()))
        return out

    def _forget(self, rel: str) -> None:
        """Drop ``rel`` and its subtree from the metadata; keep hardlink groups whole."""
        doomed = self._subtree(rel)
        gone = set(doomed)
        orphaned: list[tuple[EntryMeta, list[str]]] = []
        for path in doomed:
            self.children.pop(path, None)
            old = self.entries.pop(path, None)
            if old is None:
                continue
            if old.kind == "hardlink" and old.linkname in self.links:
                self.links[old.linkname].remove(path)
            linkers = self.links.pop(path, None)
            if linkers:
                orphaned.append((old, linkers))
        parent, name = split_name(rel)
        self.children.get(parent, set()).discard(name)
        for old, linkers in orphaned:
            survivors = [p for p in linkers if p not in gone]
            if not survivors:
                continue
            # The inode lives on under the first surviving link: promote it.
            heir, rest = survivors[0], survivors[1:]
            self.entries[heir] = replace(old, path=heir)
            for p in rest:
                e = self.entries[p]
                self.entries[p] = replace(e, linkname=heir)
            if rest:
                self.links[heir] = rest

    def _remove(self, parent_fd: int, name: str, rel: str) -> None:
        st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
        if stat.S_ISDIR(st.st_mode):
            self.dirs.forget(rel)
            shutil.rmtree(name, dir_fd=parent_fd)
        else:
            os.unlink(name, dir_fd=parent_fd)
        self._forget(rel)

    # entries

    def add(self, member: tarfile.TarInfo, tf: tarfile.TarFile, data: Inflater) -> None:
        """Apply one entry; ``data`` is positioned at its content."""
        name = member.name
        if "\x00" in name or "\x00" in member.linkname:
            raise Reject("name contains a NUL byte")
        rel = clean_name(name)
        parts = rel.split("/") if rel else []
        if parts and parts[0].startswith(".wh..wh.") and parts[0] != ".wh..wh..opq":
            return  # AUFS metadata (.wh..wh.plnk, .wh..wh.aufs): skipped, as Docker does
        if any(comp.startswith(".wh.") for comp in parts[:-1]):
            raise Reject("malformed whiteout: a whiteout name used as a directory")
        if parts and parts[-1].startswith(".wh."):
            self._whiteout(member, parts)
            return
        kind = entry_kind(member)
        mtime, mtime_ns = entry_mtime(member)
        meta = EntryMeta(
            path=rel,
            kind=kind,
            mode=member.mode & 0o7777,
            uid=member.uid,
            gid=member.gid,
            mtime=mtime,
            mtime_ns=mtime_ns,
            size=member.size if kind == "file" else 0,
            linkname=member.linkname if kind in ("symlink", "hardlink") else "",
            devmajor=member.devmajor if kind in ("char", "block") else 0,
            devminor=member.devminor if kind in ("char", "block") else 0,
            xattrs=entry_xattrs(member),
        )
        if min(meta.uid, meta.gid, meta.devmajor, meta.devminor) < 0:
            raise Reject("negative owner or device number")
        if not rel:
            if kind != "dir":
                raise Reject("entry resolves to the layer root")
            os.fchmod(self.root_fd, (meta.mode & 0o777) | 0o700)
            self._record(meta)
        elif kind == "dir":
            self._dir(meta)
        elif kind == "symlink":
            self._symlink(meta, meta.linkname)
        elif kind == "hardlink":
            self._hardlink(meta)
        else:
            self._file(meta, member, tf, data)

    def _whiteout(self, member: tarfile.TarInfo, parts: list[str]) -> None:
        base, parent = parts[-1], "/".join(parts[:-1])
        if not (member.isreg() or member.islnk()) or (member.isreg() and member.size):
            raise Reject("malformed whiteout: not an empty regular file")
        if base == ".wh..wh..opq":
            self.dirs.get(parent)  # the opaque directory exists in this layer
            self.opaque.add(parent)
            return
        target = base[4:]
        if target in ("", ".", "..") or target.startswith(".wh."):
            raise Reject("malformed whiteout name")
        self.dirs.get(parent)  # the parent exists in this layer, so merged views consult it
        self.whiteouts.add(f"{parent}/{target}" if parent else target)

    def _dir(self, meta: EntryMeta) -> None:
        parent, name = split_name(meta.path)
        parent_fd = self.dirs.get(parent)
        try:
            os.mkdir(name, 0o700, dir_fd=parent_fd)
        except FileExistsError:
            st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
            if not stat.S_ISDIR(st.st_mode):
                self._remove(parent_fd, name, meta.path)
                os.mkdir(name, 0o700, dir_fd=parent_fd)
        os.fchmod(self.dirs.get(meta.path), (meta.mode & 0o777) | 0o700)
        self._record(meta)

    def _replace_slot(self, parent_fd: int, name: str, rel: str) -> None:
        """Make room for a non-directory entry at ``rel`` (a duplicate: the later one wins)."""
        try:
            os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
        except FileNotFoundError:
            return
        self._remove(parent_fd, name, rel)

    def _symlink(self, meta: EntryMeta, target: str) -> None:
        if not target:
            raise Reject("symlink with an empty target")
        parent, name = split_name(meta.path)
        parent_fd = self.dirs.get(parent)
        try:
            os.symlink(target, name, dir_fd=parent_fd)
        except FileExistsError:
            self._replace_slot(parent_fd, name, meta.path)
            os.symlink(target, name, dir_fd=parent_fd)
        self._record(meta)

    def _hardlink(self, meta: EntryMeta) -> None:
        try:
            target = clean_name(meta.linkname)
        except Reject:
            raise Reject(f"hardlink target {meta.linkname!r} escapes the layer root") from None
        found = self.entries.get(target)
        if found is not None and found.kind == "hardlink":
            target, found = found.linkname, self.entries.get(found.linkname)
        if found is None or found.implicit:
            raise Reject(f"hardlink target {meta.linkname!r} is not an earlier entry of the layer")
        if found.kind == "dir":
            raise Reject(f"hardlink target {meta.linkname!r} is a directory")
        if target == meta.path:
            return  # a link to itself: the file is already there
        if found.kind == "symlink":
            self._symlink(
                replace(meta, kind="symlink", linkname=found.linkname),
                found.linkname,
            )
            return
        src_parent, src_name = split_name(target)
        src_fd = os.dup(self.dirs.get(src_parent))
        try:
            parent, name = split_name(meta.path)
            parent_fd = self.dirs.get(parent)
            try:
                os.link(
                    src_name, name, src_dir_fd=src_fd, dst_dir_fd=parent_fd, follow_symlinks=False
                )
            except FileExistsError:
                self._replace_slot(parent_fd, name, meta.path)
                if target not in self.entries:
                    raise Reject("hardlink target was replaced by this entry") from None
                os.link(
                    src_name, name, src_dir_fd=src_fd, dst_dir_fd=parent_fd, follow_symlinks=False
                )
        finally:
            os.close(src_fd)
        self._record(replace(meta, linkname=target))
        self.links.setdefault(target, []).append(meta.path)

    def _file(
        self, meta: EntryMeta, member: tarfile.TarInfo, tf: tarfile.TarFile, data: Inflater
    ) -> None:
        parent, name = split_name(meta.path)
        parent_fd = self.dirs.get(parent)
        mode = (meta.mode & 0o777) | 0o600
        try:
            fd = os.open(name, _CREATE_FLAGS, mode, dir_fd=parent_fd)
        except FileExistsError:
            self._replace_slot(parent_fd, name, meta.path)
            fd = os.open(name, _CREATE_FLAGS, mode, dir_fd=parent_fd)
        try:
            if meta.kind == "file" and meta.size:
                _copy_member(member, tf, data, fd)
            if mode & self.create_mask:  # else the kernel created it with this mode
                os.fchmod(fd, mode)
            ns = meta.mtime_ns if meta.mtime_ns is not None else meta.mtime * 1_000_000_000
            os.utime(fd, ns=(ns, ns))
        finally:
            os.close(fd)
        self._record(meta)

    def finish(self) -> LayerMeta:
        return LayerMeta.build(self.entries.values(), self.whiteouts, self.opaque)


def _creation_mask(root_fd: int) -> int:
    """The permission bits ``open(O_CREAT)`` may drop: the umask (read from procfs, as
    reading it with ``os.umask`` would briefly change it for every thread), or all bits
    when unknown or when a default ACL (which replaces the umask) is inherited."""
    try:
        os.getxattr(root_fd, "system.posix_acl_default")
        return 0o777
    except OSError:
        pass
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o777


def _copy_member(member: tarfile.TarInfo, tf: tarfile.TarFile, src: Inflater, fd: int) -> None:
    """Write the member's data (the stream is positioned at it) to ``fd``: slices of the
    decoded chunks go to ``os.write`` uncopied."""
    if member.sparse is not None:
        extracted = tf.extractfile(member)
        assert extracted is not None
        remaining = member.size
        while remaining:
            data = extracted.read(min(remaining, CHUNK))
            if not data:
                raise tarfile.ReadError("unexpected end of data")
            remaining -= len(data)
            _write_all(fd, memoryview(data))
        return
    remaining = member.size
    while remaining:
        view = src.read_view(remaining)
        if not view:
            raise tarfile.ReadError("unexpected end of data")
        remaining -= len(view)
        _write_all(fd, view)


def _write_all(fd: int, view: memoryview) -> None:
    while view:
        view = view[os.write(fd, view) :]


def extract_layer(
    stream: BinaryIO,
    dest_dir: Path,
    *,
    media_type_or_compression: str,
    layer_name: str = "layer",
    max_bytes: int | None = None,
    max_entries: int | None = None,
    expected_diff_id: str | None = None,
) -> LayerExtractResult:
    """Extract one layer tar into ``dest_dir`` (created if missing; must be empty).

    ``media_type_or_compression`` is an OCI/Docker layer media type (compression sniffed,
    gzip/zstd/none only), a compression name (gzip, zstd, bzip2, xz, none) or ``auto``
    (sniffed, all five; for ADD). ``max_bytes``/``max_entries`` cap the uncompressed size
    and the number of tar entries (decompression bombs). On ImageError the partly written
    ``dest_dir`` is the caller's to remove.
    """
    what = f"extract layer {layer_name}"
    try:
        compression, raw = select_compression(stream, media_type_or_compression)
    except StreamError as exc:
        raise ImageError(f"{what}: {exc}") from exc
    dest_dir.mkdir(mode=0o700, exist_ok=True)
    root_fd = os.open(dest_dir, _DIR_FLAGS)
    if os.listdir(root_fd):
        os.close(root_fd)
        raise ValueError(f"extract_layer: {dest_dir} is not empty")
    entry_name = ""
    inflater: Inflater | None = None
    extractor = _Extractor(root_fd)
    try:
        inflater = Inflater(decoder(compression, raw), max_bytes)
        count = 0
        with tarfile.open(
            fileobj=cast(IO[bytes], inflater),
            mode="r:",
            tarinfo=StrictTarInfo,
            encoding="utf-8",
            errors="surrogateescape",
        ) as tf:
            seen: list[tarfile.TarInfo] = vars(tf)["members"]
            while (member := tf.next()) is not None:
                seen.clear()  # stream mode would otherwise keep every header in memory
                count += 1
                entry_name = member.name
                if max_entries is not None and count > max_entries:
                    raise ImageError(f"{what}: more than {max_entries} entries")
                extractor.add(member, tf, inflater)
        entry_name = ""
        inflater.drain()
        diff_id = "sha256:" + inflater.sha.hexdigest()
        if expected_diff_id is not None and diff_id != expected_diff_id:
            raise ImageError(f"{what}: diffID {diff_id} does not match {expected_diff_id}")
        return LayerExtractResult(diff_id, extractor.finish(), count, inflater.total, compression)
    except Reject as exc:
        at = f": entry {entry_name!r}" if entry_name else ""
        raise ImageError(f"{what}{at}: {exc}") from exc
    except TooBig as exc:
        raise ImageError(f"{what}: {exc}") from exc
    except StreamError as exc:
        raise ImageError(f"{what}: corrupt or truncated {compression} stream: {exc}") from exc
    except tarfile.TarError as exc:
        raise ImageError(f"{what}: corrupt or truncated tar: {exc}") from exc
    except (OSError, ValueError) as exc:  # ValueError: e.g. an embedded NUL in a name
        at = f": entry {entry_name!r}" if entry_name else ""
        cause = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ImageError(f"{what}{at}: {cause}") from exc
    finally:
        if inflater is not None:
            inflater.close()
        extractor.dirs.close()
        os.close(root_fd)
