"""The step cache as one build uses it: the content digest of COPY/ADD sources, lookups in
the store's index and in an imported (``--cache-from``) cache, and the entries to record.

Rules (BuildKit's behaviour as ``docker buildx build`` users see it):
- A context source's digest covers, per item in copy order, its path below the source, its
  type, permission bits, symlink target and content, never its mtime or owner (COPY sets
  0:0): touching a file or checking it out again changes nothing, editing it does.
  Ignored files are never opened (the same ``context_sources`` walk COPY uses).
- A file's content digest is remembered by (host path, device, inode, size, mtime_ns), so
  an unchanged context is not read again; a file modified within the last two seconds is
  not remembered (its mtime may not yet show a second write, git's "racy clean" rule).
- A hit needs the layer blob: a local entry whose blob is gone is a miss; an imported
  entry's blob is fetched into the build's staging area, and the entry becomes a local one
  when the build succeeds.
- An imported cache that cannot be read, or a layer of it that cannot be fetched, is a
  warning and a miss (BuildKit ignores cache import errors), never a failed build.
- ``--no-cache`` and ``--no-cache-filter`` turn lookups off (for every stage, or for the
  named ones); the steps still run and are recorded, as with BuildKit.
- Nothing is written while the build runs: ``commit()`` records new entries, marks used
  ones and stores the learnt file digests after the image is committed.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import trio

from rootbuild.cache.entry import CacheEntry
from rootbuild.cache.index import CacheIndex, FileIdentity
from rootbuild.engine.copy import Source, SourceItem
from rootbuild.errors import RootbuildError
from rootbuild.image.store import Staging

RACY_SECONDS = 2.0
_CHUNK = 1 << 20


class RemoteCache(Protocol):
    """An imported cache (``--cache-from``)."""

    @property
    def entries(self) -> Mapping[str, CacheEntry]: ...

    async def fetch(self, staging: Staging, entry: CacheEntry) -> None: ...


class MergedCache:
    """Several ``--cache-from`` sources as one; the first that has a key wins."""

    def __init__(self, caches: Sequence[RemoteCache]) -> None:
        self.caches = tuple(caches)
        self._owner: dict[str, RemoteCache] = {}
        for cache in caches:
            for key in cache.entries:
                self._owner.setdefault(key, cache)
        self._entries = {key: cache.entries[key] for key, cache in self._owner.items()}

    @property
    def entries(self) -> Mapping[str, CacheEntry]:
        return self._entries

    async def fetch(self, staging: Staging, entry: CacheEntry) -> None:
        await self._owner[entry.key].fetch(staging, entry)


class SourceHasher:
    """Content digests of COPY/ADD sources, with the index's file digests as a memo."""

    def __init__(self, index: CacheIndex) -> None:
        self._index = index
        self._lock = threading.Lock()
        self.learned: dict[FileIdentity, str] = {}
        self.files_read = 0  # files whose content was read (for tests and progress)

    def file_digest(self, item: SourceItem) -> str:
        ident = item.identity
        if ident is not None:
            with self._lock:
                known = self.learned.get(ident)
            if known is None:
                known = self._index.file_digest(ident)
            if known is not None:
                return known
        assert item.opener is not None
        h = hashlib.sha256()
        with item.opener() as f:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
        digest = "sha256:" + h.hexdigest()
        with self._lock:
            self.files_read += 1
            if ident is not None and time.time() - ident[4] / 1e9 > RACY_SECONDS:
                self.learned[ident] = digest
        return digest

    def digest(self, sources: Sequence[Source]) -> str:
        """One digest over every source, as COPY would take them."""
        h = hashlib.sha256()
        for source in sources:
            h.update(_line(["source", source.name, source.is_dir]))
            for item in source.items():
                content = self.file_digest(item) if item.kind == "file" else ""
                h.update(_line([item.rel, item.kind, item.mode, item.linkname,
                                item.devmajor, item.devminor, content]))
        return "sha256:" + h.hexdigest()


def _line(fields: list[object]) -> bytes:
    return json.dumps(fields, ensure_ascii=True).encode("ascii") + b"\n"


@dataclass
class StepCache:
    """One build's view of the step cache."""

    index: CacheIndex
    disabled: bool = False  # --no-cache
    disabled_stages: frozenset[str] = frozenset()  # --no-cache-filter
    remote: RemoteCache | None = None
    warn: Callable[[str], None] = print
    hasher: SourceHasher = field(init=False)
    new: dict[str, CacheEntry] = field(default_factory=dict)
    used: dict[str, CacheEntry] = field(default_factory=dict)
    stage_keys: dict[int, list[str]] = field(default_factory=dict)  # keys met, by stage
    bypassed: bool = False  # a step ran without looking the cache up (engine/replay.py)
    recorded: set[int] = field(default_factory=set)  # progress handles of steps run and added

    def __post_init__(self) -> None:
        self.hasher = SourceHasher(self.index)

    def enabled_for(self, stage_index: int, stage_name: str | None) -> bool:
        if self.disabled:
            return False
        names = {str(stage_index), f"stage-{stage_index}"}
        if stage_name is not None:
            names.add(stage_name)
        return not names & self.disabled_stages

    async def lookup(self, key: str, staging: Staging) -> CacheEntry | None:
        """The entry for ``key`` whose layer this build can use, or None (a miss)."""
        local = await trio.to_thread.run_sync(self.index.lookup, key)
        if local is not None and (local.layer is None or staging.has_blob(local.layer.digest)):
            return local
        if self.remote is not None:
            entry = self.remote.entries.get(key)
            if entry is not None:
                try:
                    await self.remote.fetch(staging, entry)
                except RootbuildError as exc:  # BuildKit: a cache that fails is a miss
                    self.warn(f"cache layer for {entry.description!r} not used: {exc}")
                    return None
                self.new[key] = entry  # local from now on, once the build succeeds
                return entry
        return None

    def hit(self, stage_index: int, entry: CacheEntry) -> None:
        if entry.key not in self.new:
            self.used[entry.key] = entry
        self.stage_keys.setdefault(stage_index, []).append(entry.key)

    def add(self, stage_index: int, entry: CacheEntry) -> None:
        self.new[entry.key] = entry
        self.stage_keys.setdefault(stage_index, []).append(entry.key)

    def entries_of(self, stages: Sequence[int]) -> list[CacheEntry]:
        """The entries this build met in ``stages`` (for ``--cache-to``), in step order."""
        out: dict[str, CacheEntry] = {}
        for index in stages:
            for key in self.stage_keys.get(index, []):
                entry = self.new.get(key) or self.used.get(key)
                if entry is not None:
                    out[key] = entry
        return list(out.values())

    def commit(self) -> None:
        """After the image is committed: the index learns what this build did."""
        self.index.record(
            self.new.values(), self.used.keys(), time.time(), self.hasher.learned.items()
        )
