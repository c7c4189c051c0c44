"""Layer metadata loaded once per process: ``load(path)`` -> ``LayerMeta``, memoised.

Job: the build's zygote (``sandbox/zygote.py``) loads the metadata of a step's lower layers
before it forks the step's init; the init and its FUSE server, forks of it, find them here
instead of parsing the same files again in every step (a Debian base's metadata, ~10,000
entries, takes ~110 ms to parse, and each step parsed it twice: in the FUSE server and in
the init's ``_drop_stub_parents``).

Rules:
- A ``LayerMeta`` is immutable, so sharing one between the processes that inherit it is as
  safe as loading it again.
- An entry is keyed by the path and the file's device, inode, size and mtime: a file
  replaced or rewritten is loaded again. Layer metadata files are written once by the
  builder (content-addressed layers) and never change in place.
- At most ``MAX_ENTRIES`` metas are kept, the least recently used dropped first: the zygote
  lives for one build, but a build may have many layers. A step's lowers are all used for
  each step, so they stay unless one step has more than ``MAX_ENTRIES`` of them.
"""

from __future__ import annotations

import os
from pathlib import Path

from rootbuild.image.layermeta import LayerMeta

MAX_ENTRIES = 256

_Key = tuple[str, int, int, int, int]
_cache: dict[_Key, LayerMeta] = {}


def _key(path: Path) -> _Key | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (str(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def load(path: Path) -> LayerMeta:
    """``LayerMeta.load(path)``, from this process's memo when the file is unchanged."""
    key = _key(path)
    if key is not None and (hit := _cache.pop(key, None)) is not None:
        _cache[key] = hit  # the most recently used: last in the dict's order
        return hit
    meta = LayerMeta.load(path)
    if key is not None:
        while len(_cache) >= MAX_ENTRIES:
            del _cache[next(iter(_cache))]
        _cache[key] = meta
    return meta


def preload(paths: list[str]) -> None:
    """Load each of ``paths`` into the memo; a file that cannot be loaded is left for its
    user to report."""
    for path in paths:
        try:
            load(Path(path))
        except Exception:
            continue


def clear() -> None:
    _cache.clear()
