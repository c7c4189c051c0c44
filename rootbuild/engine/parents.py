"""``COPY --parents``: which paths below a source root a pattern selects, and where they go.

Rules (Docker's Dockerfile reference, "COPY --parents"; BuildKit's dockerfile2llb copies
the pivot directory with the rest of the source as an include pattern):
- A source ``a/./b/c`` pivots at ``a``: only the parents after the ``/./`` are kept
  (``b/c``). Without a ``/./`` the pivot is the root (the build context's or, with
  ``--from``, the image's) and every parent is kept.
- The pattern is matched against each path relative to the pivot, component by
  component with ``filepath.Match`` wildcards; ``**`` matches any number of components,
  none included. A matched directory brings everything below it.
- Each match lands at ``dest/<its path relative to the pivot>``; the directories on the
  way are copied as directories (their own attributes), nothing else of them.
- Pure: no I/O. ``..`` that climbs above the pivot is refused by the caller's context
  rules (a context source outside the context); here a pattern is only normalised.
"""

from __future__ import annotations

import posixpath

from rootbuild.dockerfile.dockerignore import glob_match, has_wildcards


def split_pivot(source: str) -> tuple[str, str]:
    """(pivot, pattern) of a ``--parents`` source: ``./x/./y/*.txt`` -> (``x``, ``y/*.txt``),
    ``x/a.txt`` -> (``.``, ``x/a.txt``). Both are normalised and relative ("." is the
    root); either may still start with ``..`` (see ``outside``)."""
    marker = source.find("/./")
    if marker == -1:
        pivot, pattern = ".", source
    else:
        pivot, pattern = source[:marker] or "/", source[marker + 3:]
    pivot = posixpath.normpath(pivot.lstrip("/") or ".")
    pattern = posixpath.normpath(pattern.lstrip("/") or ".")
    return pivot, pattern


def outside(path: str) -> bool:
    """Whether a normalised relative path climbs above where it starts."""
    return path == ".." or path.startswith("../")


def match_path(pattern: str, rel: str) -> bool:
    """Whether ``rel`` (a path relative to the pivot) is what ``pattern`` names."""
    if pattern == ".":
        return True
    return _match(pattern.split("/"), rel.split("/") if rel else [])


def _match(pats: list[str], parts: list[str]) -> bool:
    if not pats:
        return not parts
    head = pats[0]
    if head == "**":
        return any(_match(pats[1:], parts[i:]) for i in range(len(parts) + 1))
    if not parts:
        return False
    return glob_match(head, parts[0]) and _match(pats[1:], parts[1:])


def literal_prefix(pattern: str) -> str:
    """The leading components of ``pattern`` that hold no wildcard (where every match
    must lie): ``src/app/*.txt`` -> ``src/app``, ``**/x`` -> "", ``a/b`` -> ``a/b``."""
    fixed: list[str] = []
    for comp in pattern.split("/"):
        if comp in (".", "**") or has_wildcards(comp):
            break
        fixed.append(comp)
    return "/".join(fixed)


def selected(pattern: str, rel: str) -> bool:
    """Whether ``rel`` is copied: it matches, or a directory above it matched."""
    parts = rel.split("/")
    return any(match_path(pattern, "/".join(parts[:i])) for i in range(1, len(parts) + 1))

