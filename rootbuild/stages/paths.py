"""In-image path rules of the Dockerfile dispatcher: WORKDIR joins and COPY destinations,
as BuildKit's ``system.NormalizeWorkdir`` and ``pathRelativeToWorkingDir`` compute them.

Rules: pure string functions on POSIX in-image paths; no filesystem is consulted.
"""

from __future__ import annotations

import posixpath


def go_clean(path: str) -> str:
    """Go ``path.Clean`` for absolute paths (POSIX ``normpath`` keeps a leading ``//``)."""
    cleaned = posixpath.normpath(path)
    return "/" + cleaned.lstrip("/") if cleaned.startswith("//") else cleaned


def normalize_workdir(current: str, path: str) -> str:
    """BuildKit ``system.NormalizeWorkdir`` (Unix): a relative WORKDIR joins the current."""
    if path.startswith("/"):
        return go_clean(path)
    return go_clean(posixpath.join("/", current, path))


def dest_relative_to_workdir(workdir: str, dest: str) -> str:
    """BuildKit ``pathRelativeToWorkingDir``: absolute, cleaned, and ending in ``/`` when
    the written destination did (or was ``.``/``""``): a trailing slash means "directory"."""
    if dest in (".", ""):
        dest = "./"
    base = dest if dest.startswith("/") else posixpath.join("/", workdir or "/", dest)
    out = go_clean(base)
    if (dest.endswith(("/", "/.")) or dest == ".") and out != "/":
        out += "/"
    return out
