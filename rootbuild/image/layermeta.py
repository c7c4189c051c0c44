"""Per-layer metadata that an unprivileged extraction cannot apply on disk.

Job: hold, for every entry of one extracted layer, what the tar header said (kind, full mode
incl. setuid/setgid/sticky, numeric owner, mtime, size, link target, device numbers, xattrs)
plus the layer's OCI whiteouts and opaque directories, so the layer can be re-exported
exactly and presented by the FUSE overlay with the attributes the image asked for.

Rules:
- Paths are relative, "/"-separated, without leading or trailing "/"; the layer root is "".
- A ``hardlink`` entry's ``linkname`` always names a non-hardlink entry of the same layer
  (the extractor resolves chains), so consumers need one lookup to find the inode's kind.
- ``implicit`` marks parent directories the extractor created because the tar omitted them;
  they are not re-exported, and a merged view prefers a lower layer's explicit directory.
- Whiteouts/opaque directories follow the OCI image spec ("Whiteouts", layer.md): they hide
  entries of *lower* layers only, never entries of the same layer.
- Serialisation is compact versioned JSON (one array row per entry), written temp+rename.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from rootbuild.errors import ImageError

KINDS = frozenset({"file", "dir", "symlink", "hardlink", "char", "block", "fifo"})
FORMAT_VERSION = 1


@dataclass(frozen=True, slots=True)
class EntryMeta:
    """One tar entry as the image described it (not as it sits on disk)."""

    path: str
    kind: str
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    mtime: int = 0
    mtime_ns: int | None = None
    size: int = 0
    linkname: str = ""
    devmajor: int = 0
    devminor: int = 0
    xattrs: tuple[tuple[str, bytes], ...] = ()
    implicit: bool = False

    @property
    def is_dir(self) -> bool:
        return self.kind == "dir"


def _empty_entries() -> Mapping[str, EntryMeta]:
    return MappingProxyType({})


@dataclass(frozen=True)
class LayerMeta:
    """Metadata of one extracted layer: entries in tar order, whiteouts, opaque dirs."""

    entries: Mapping[str, EntryMeta] = field(default_factory=_empty_entries)
    whiteouts: frozenset[str] = frozenset()
    opaque_dirs: frozenset[str] = frozenset()

    @classmethod
    def build(
        cls,
        entries: Iterable[EntryMeta],
        whiteouts: Iterable[str] = (),
        opaque_dirs: Iterable[str] = (),
    ) -> LayerMeta:
        table = {e.path: e for e in entries}
        return cls(MappingProxyType(table), frozenset(whiteouts), frozenset(opaque_dirs))

    def get(self, path: str) -> EntryMeta | None:
        return self.entries.get(path)

    # -- serialisation -------------------------------------------------------------------

    def to_json(self) -> bytes:
        rows: list[list[Any]] = []
        for e in self.entries.values():
            row: list[Any] = [e.path, e.kind, e.mode, e.uid, e.gid, e.mtime, e.size, e.linkname]
            extra: dict[str, Any] = {}
            if e.mtime_ns is not None:
                extra["ns"] = e.mtime_ns
            if e.devmajor or e.devminor:
                extra["dev"] = [e.devmajor, e.devminor]
            if e.xattrs:
                extra["x"] = [[k, base64.b64encode(v).decode("ascii")] for k, v in e.xattrs]
            if e.implicit:
                extra["i"] = 1
            if extra:
                row.append(extra)
            rows.append(row)
        doc = {
            "v": FORMAT_VERSION,
            "e": rows,
            "w": sorted(self.whiteouts),
            "o": sorted(self.opaque_dirs),
        }
        # surrogateescape'd names (non-UTF-8 bytes in tar names) survive as \udcXX escapes.
        return json.dumps(doc, separators=(",", ":"), ensure_ascii=True).encode("ascii")

    @classmethod
    def from_json(cls, data: bytes, *, source: str = "layer metadata") -> LayerMeta:
        try:
            doc = json.loads(data)
            version = doc.get("v") if isinstance(doc, dict) else None
            if version != FORMAT_VERSION:
                raise ValueError(f"unsupported format version {version!r}")
            entries = [_row_to_entry(row) for row in doc["e"]]
            whiteouts = [str(w) for w in doc["w"]]
            opaque = [str(o) for o in doc["o"]]
        except (ValueError, KeyError, TypeError, IndexError) as exc:
            raise ImageError(f"load {source}: {exc}") from exc
        return cls.build(entries, whiteouts, opaque)

    def save(self, path: Path, durable: bool = True) -> None:
        """Write atomically: a temp file in the same directory, fsync, then rename.
        ``durable=False``: no fsync, for a hand-over file in a step's scratch that a crash
        makes garbage anyway (the layer's own copy in the store is written durably)."""
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
        data = self.to_json()
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                if durable:
                    os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise ImageError(f"save layer metadata {path}: {exc.strerror or exc}") from exc

    @classmethod
    def load(cls, path: Path) -> LayerMeta:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ImageError(f"load layer metadata {path}: {exc.strerror or exc}") from exc
        return cls.from_json(data, source=f"layer metadata {path}")


def _row_to_entry(row: list[Any]) -> EntryMeta:
    path, kind, mode, uid, gid, mtime, size, linkname = row[:8]
    if kind not in KINDS:
        raise ValueError(f"unknown entry kind {kind!r}")
    extra: dict[str, Any] = row[8] if len(row) > 8 else {}
    dev = extra.get("dev", (0, 0))
    xattrs = tuple((str(k), base64.b64decode(v)) for k, v in extra.get("x", ()))
    return EntryMeta(
        path=str(path),
        kind=kind,
        mode=int(mode),
        uid=int(uid),
        gid=int(gid),
        mtime=int(mtime),
        mtime_ns=extra.get("ns"),
        size=int(size),
        linkname=str(linkname),
        devmajor=int(dev[0]),
        devminor=int(dev[1]),
        xattrs=xattrs,
        implicit=bool(extra.get("i", 0)),
    )


def resolve_entry(
    metas: Sequence[LayerMeta], path: str, layers: Iterable[int]
) -> tuple[int, EntryMeta, tuple[int, ...]] | None:
    """What the merged image shows at ``path``, looking through ``layers`` (indexes into
    ``metas``, topmost first), per the OCI image spec's whiteout rules (layer.md): the
    topmost entry wins unless a higher layer whites the path out; a directory merges the
    lower directories down to an opaque marker, a whiteout or a non-directory. Returns
    (winning layer, its entry, the layers whose directory merges there, winner first)."""
    found: tuple[int, EntryMeta] | None = None
    merged: list[int] = []
    for li in layers:
        meta = metas[li]
        e = meta.entries.get(path)
        if found is None:
            if e is None:
                if path in meta.whiteouts:
                    return None
                continue
            found = (li, e)
            if e.kind != "dir":
                break
        elif e is None:
            if path in meta.whiteouts:
                break
        elif e.kind != "dir":
            break
        merged.append(li)
        if path in meta.opaque_dirs:
            break
    if found is None:
        return None
    return found[0], found[1], tuple(merged)
