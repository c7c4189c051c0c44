"""Where blobs are known to live in registries: hints for cross-repository mounts.

Layout under the store root::

    origins.json   {"version": 1, "blobs": {digest: [[registry, repo], ...]}}
    origins.lock   flock: exclusive while origins.json is read-modified-written

Rules (OCI distribution-spec "Mounting a blob from another repository"):
- A pull from, or a push to, ``registry/repo`` records every blob of the image there. A push
  to the same registry may then ask for a blob to be mounted ``from`` one of those repos
  instead of uploading it; the registry decides (it checks the digest and the pull right on
  the source), so an entry is a hint, never trusted data.
- Hints never cross registries: a lookup names repositories of the registry asked about only.
- Bounded: at most ``MAX_REPOS`` repositories per blob (most recent first) and ``MAX_BLOBS``
  blobs (the least recently recorded are dropped first).
- origins.json is replaced by temp file + fsync + rename under the exclusive lock (as the
  store's images.json); readers need no lock. A missing, unreadable or corrupt index reads
  as empty: it is a cache of hints, and losing it costs uploads, not correctness.
- ``add_origins``/``repos_for``/``parse_origins``/``render_origins`` are pure; ``Origins``
  does the file I/O.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

ORIGINS_VERSION = 1
MAX_BLOBS = 10_000
MAX_REPOS = 4
MAX_INDEX_BYTES = 8 << 20  # ~10,000 blobs x 4 repos fit easily; larger is not ours

Entries = dict[str, list[tuple[str, str]]]


def add_origins(
    blobs: Entries,
    registry: str,
    repo: str,
    digests: Iterable[str],
    *,
    max_blobs: int = MAX_BLOBS,
    max_repos: int = MAX_REPOS,
) -> Entries:
    """A new index with ``registry/repo`` first for each of ``digests`` (see module rules).

    A recorded digest moves to the end of the index (most recently recorded); when the index
    outgrows ``max_blobs`` the digests at its start go."""
    out: Entries = dict(blobs)
    where = (registry, repo)
    for digest in dict.fromkeys(digests):
        known = [w for w in out.pop(digest, []) if w != where]
        out[digest] = [where, *known][:max_repos]
    excess = len(out) - max_blobs
    if excess > 0:
        for digest in list(out)[:excess]:
            del out[digest]
    return out


def repos_for(blobs: Entries, registry: str, digest: str, exclude: str = "") -> list[str]:
    """The repositories of ``registry`` known to hold ``digest``, most recent first."""
    return [repo for reg, repo in blobs.get(digest, []) if reg == registry and repo != exclude]


def parse_origins(data: bytes) -> Entries:
    """The index in ``data``; anything malformed is dropped (see module rules)."""
    try:
        obj = json.loads(data)
        raw = obj["blobs"] if obj.get("version") == ORIGINS_VERSION else {}
    except (ValueError, KeyError, TypeError, AttributeError):
        return {}
    out: Entries = {}
    if not isinstance(raw, dict):
        return out
    for digest, places in raw.items():
        if not isinstance(digest, str) or not isinstance(places, list):
            continue
        good = [
            (p[0], p[1])
            for p in places
            if isinstance(p, list) and len(p) == 2 and all(isinstance(s, str) for s in p)
        ]
        if good:
            out[digest] = good[:MAX_REPOS]
    return out


def render_origins(blobs: Entries) -> bytes:
    doc = {"version": ORIGINS_VERSION, "blobs": {d: [list(p) for p in w] for d, w in blobs.items()}}
    return (json.dumps(doc, separators=(",", ":")) + "\n").encode()


class Origins:
    """The origins index of the store at ``root`` (``tmp_dir`` on the same filesystem)."""

    def __init__(self, root: Path, tmp_dir: Path | None = None) -> None:
        self.path = root / "origins.json"
        self._lock_path = root / "origins.lock"
        self._tmp_dir = tmp_dir or root / "tmp"

    def _read(self) -> Entries:
        try:
            with open(self.path, "rb") as f:
                data = f.read(MAX_INDEX_BYTES + 1)
        except OSError:
            return {}  # missing or unreadable: no hints (module rules)
        return {} if len(data) > MAX_INDEX_BYTES else parse_origins(data)

    def lookup(self, registry: str, digest: str, exclude: str = "") -> list[str]:
        """Repositories of ``registry`` that held ``digest``, most recent first."""
        return repos_for(self._read(), registry, digest, exclude)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing the last descriptor releases the flock

    def record(self, registry: str, repo: str, digests: Iterable[str]) -> None:
        """Note that ``registry/repo`` holds ``digests`` (atomic; raises ``OSError``)."""
        wanted = list(digests)
        if not wanted:
            return
        with self._locked():
            data = render_origins(add_origins(self._read(), registry, repo, wanted))
            fd, name = tempfile.mkstemp(prefix="origins-", dir=self._tmp_dir)
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(name, self.path)
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(name)
                raise
            dir_fd = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
