"""The step cache's index in the store: ``cache.db`` (SQLite), two tables.

``entries``: one row per step cache key → the layer the step produced (or none), when it
first ran and when a build last used it. ``files``: content digests of context files by
(path, device, inode, size, mtime_ns), so an unchanged context is not read again.

Rules:
- Builds only read while they run; they write (new entries, ``last_used`` of the entries
  they used, file digests) once, after their image is committed. A failed build leaves
  ``cache.db`` as it was, and a store without ``cache.db`` is never given one by a read.
- A row is only an index: a hit also needs the layer blob in the store (``Store.has_blob``
  is checked by the caller), so a blob removed by hand is a miss, never a broken image.
- SQLite does the locking between concurrent builds (rollback journal, 30 s busy timeout);
  ``prune`` changes rows only under the store's exclusive GC lock.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path

from rootbuild.cache.entry import CacheEntry
from rootbuild.errors import ImageError, StoreError
from rootbuild.image.oci import Descriptor

INDEX_NAME = "cache.db"
SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    key TEXT PRIMARY KEY,
    layer TEXT,
    diff_id TEXT,
    description TEXT NOT NULL,
    created REAL NOT NULL,
    last_used REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS files (
    path TEXT PRIMARY KEY,
    dev INTEGER NOT NULL,
    ino INTEGER NOT NULL,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    digest TEXT NOT NULL
);
"""

_FIX = " (remove that file to start the step cache afresh; images are not affected)"

FileIdentity = tuple[str, int, int, int, int]  # (host path, dev, ino, size, mtime_ns)


class CacheIndex:
    """``cache.db`` under the store root ``root``; thread-safe."""

    def __init__(self, root: Path) -> None:
        self.path = root / INDEX_NAME
        self._lock = threading.Lock()
        self._reader: sqlite3.Connection | None = None

    # -- connections ------------------------------------------------------------------------

    def _read(self) -> sqlite3.Connection | None:
        """A read-only connection, None while there is no ``cache.db`` (never created)."""
        if self._reader is None:
            if not self.path.is_file():
                return None
            try:
                self._reader = sqlite3.connect(
                    f"file:{self.path}?mode=ro", uri=True, timeout=30,
                    check_same_thread=False,
                )
                version = self._reader.execute("PRAGMA user_version").fetchone()[0]
            except sqlite3.Error as exc:
                raise StoreError(f"read step cache {self.path}: {exc}{_FIX}") from exc
            if version not in (0, SCHEMA_VERSION):
                raise StoreError(
                    f"read step cache {self.path}: schema {version} is newer than this "
                    f"rootbuild's ({SCHEMA_VERSION})"
                )
        return self._reader

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        try:
            conn = sqlite3.connect(self.path, timeout=30)
        except sqlite3.Error as exc:
            raise StoreError(f"open step cache {self.path}: {exc}") from exc
        try:
            with conn:
                conn.executescript(_SCHEMA)
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                yield conn
        except sqlite3.Error as exc:
            raise StoreError(f"write step cache {self.path}: {exc}{_FIX}") from exc
        finally:
            conn.close()

    def close(self) -> None:
        with self._lock:
            if self._reader is not None:
                self._reader.close()
                self._reader = None

    def _select(self, sql: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
        with self._lock:
            conn = self._read()
            if conn is None:
                return []
            try:
                return list(conn.execute(sql, params))
            except sqlite3.OperationalError as exc:
                if "no such table" in str(exc):
                    return []
                raise StoreError(f"read step cache {self.path}: {exc}{_FIX}") from exc

    # -- entries ----------------------------------------------------------------------------

    def lookup(self, key: str) -> CacheEntry | None:
        rows = self._select(
            "SELECT key, layer, diff_id, description, created, last_used FROM entries "
            "WHERE key = ?", (key,),
        )
        return _entry(rows[0], self.path) if rows else None

    def entries(self) -> list[CacheEntry]:
        """Every entry, most recently used first."""
        rows = self._select(
            "SELECT key, layer, diff_id, description, created, last_used FROM entries "
            "ORDER BY last_used DESC, key"
        )
        return [_entry(row, self.path) for row in rows]

    def record(
        self, new: Iterable[CacheEntry], used: Iterable[str], now: float,
        files: Iterable[tuple[FileIdentity, str]] = (),
    ) -> None:
        """After a successful build: add its new entries, mark the ones it used, remember
        the file digests it computed."""
        with self._write() as conn:
            conn.executemany(
                "INSERT OR REPLACE INTO entries VALUES (?, ?, ?, ?, ?, ?)",
                [(e.key, json.dumps(e.layer.to_json()) if e.layer else None, e.diff_id,
                  e.description, e.created, now) for e in new],
            )
            conn.executemany(
                "UPDATE entries SET last_used = ? WHERE key = ?", [(now, k) for k in used]
            )
            conn.executemany(
                "INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?, ?, ?)",
                [(*ident, digest) for ident, digest in files],
            )

    def remove(self, keys: Iterable[str]) -> None:
        keys = list(keys)
        if not keys or not self.path.is_file():
            return
        with self._write() as conn:
            conn.executemany("DELETE FROM entries WHERE key = ?", [(k,) for k in keys])

    # -- file digests -----------------------------------------------------------------------

    def file_digest(self, ident: FileIdentity) -> str | None:
        """The content digest recorded for this exact file state, if any."""
        rows = self._select(
            "SELECT digest FROM files WHERE path = ? AND dev = ? AND ino = ? AND size = ? "
            "AND mtime_ns = ?", ident,
        )
        return str(rows[0][0]) if rows else None


def _entry(row: tuple[object, ...], where: Path) -> CacheEntry:
    key, layer, diff_id, description, created, last_used = row
    try:
        descriptor = (
            Descriptor.from_json(json.loads(str(layer)), "cached layer") if layer else None
        )
        return CacheEntry(
            key=str(key), layer=descriptor, diff_id=str(diff_id) if diff_id else None,
            description=str(description), created=float(str(created)),
            last_used=float(str(last_used)),
        )
    except (ValueError, ImageError) as exc:
        raise StoreError(f"read step cache {where}: bad entry {key}: {exc}") from exc
