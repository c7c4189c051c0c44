"""``COPY/ADD --chmod``: an octal mode or a chmod(1) symbolic mode, applied to each copied
file and directory relative to its own mode.

Rules (Docker's Dockerfile reference, "COPY --chmod": "The ``--chmod`` flag supports octal
notation (e.g., ``755``, ``644``) and symbolic notation (e.g., ``+x``, ``g=u``)"; "``X``
means executable only if it's a directory or already executable"):
- Octal: the mode replaces the source's permission bits (at most ``07777``).
- Symbolic: comma-separated clauses ``[ugoa]*([-+=]([rwxXst]*|[ugo]))+``, applied left
  to right to the file's own mode. No ``who`` means ``a`` (a build has no umask).
  ``X`` adds execute for a directory or a file that has an execute bit; ``u``/``g``/``o``
  as permissions copy that class's bits; ``s`` is setuid/setgid for ``u``/``g``, ``t``
  the sticky bit. Symlinks keep their mode (the engine does not call this for them).
- Pure: no I/O. Errors are located at the instruction.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from rootbuild.errors import DockerfileError, Location

_CLAUSE = re.compile(r"^([ugoa]*)((?:[-+=](?:[ugo]|[rwxXst]*))+)$")
_ACTION = re.compile(r"([-+=])([ugo]|[rwxXst]*)")
_SHIFT = {"u": 6, "g": 3, "o": 0}
_SPECIAL = {"u": 0o4000, "g": 0o2000, "o": 0o1000}


@dataclass(frozen=True)
class Chmod:
    """A parsed ``--chmod``: ``octal`` when numeric, else the symbolic ``clauses``
    (who, ((op, perms), ...))."""

    text: str
    octal: int | None = None
    clauses: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = ()

    def apply(self, mode: int, is_dir: bool) -> int:
        """The new permission bits (``& 0o7777``) of an entry whose bits are ``mode``."""
        if self.octal is not None:
            return self.octal
        mode &= 0o7777
        for who, actions in self.clauses:
            classes = who.replace("a", "ugo") or "ugo"
            for op, perms in actions:
                mode = _apply_action(mode, is_dir, classes, op, perms)
        return mode


def _apply_action(mode: int, is_dir: bool, classes: str, op: str, perms: str) -> int:
    if perms in _SHIFT:  # copy a class's bits: g=u
        source = (mode >> _SHIFT[perms]) & 0o7
        bits = 0
        for c in set(classes):
            bits |= source << _SHIFT[c]
    else:
        rwx = 0
        for p in perms:
            if p == "r":
                rwx |= 4
            elif p == "w":
                rwx |= 2
            elif p == "x" or (p == "X" and (is_dir or mode & 0o111)):
                rwx |= 1
        bits = 0
        for c in set(classes):
            bits |= rwx << _SHIFT[c]
            if "s" in perms and c in ("u", "g"):
                bits |= _SPECIAL[c]
            if "t" in perms and c == "o":
                bits |= _SPECIAL["o"]
    if op == "+":
        return mode | bits
    if op == "-":
        return mode & ~bits
    cleared = mode
    for c in set(classes):  # "=": the classes named lose every bit they had first
        cleared &= ~((0o7 << _SHIFT[c]) | _SPECIAL[c])
    return cleared | bits


def parse_chmod(text: str | None, where: Location) -> Chmod | None:
    """``--chmod``'s value (None when absent), or a located error naming it."""
    if text is None:
        return None
    if text.isdigit():
        if re.fullmatch(r"[0-7]+", text) and int(text, 8) <= 0o7777:
            return Chmod(text, octal=int(text, 8))
        raise _invalid(text, where)
    clauses: list[tuple[str, tuple[tuple[str, str], ...]]] = []
    for clause in text.split(","):
        m = _CLAUSE.match(clause)
        if m is None:
            raise _invalid(text, where)
        actions = tuple((a.group(1), a.group(2)) for a in _ACTION.finditer(m.group(2)))
        clauses.append((m.group(1), actions))
    return Chmod(text, clauses=tuple(clauses))


def _invalid(text: str, where: Location) -> DockerfileError:
    return DockerfileError(
        f"invalid chmod parameter: '{text}'. it should be octal string and between 0 and "
        "07777, or a symbolic mode such as u+x or g-w,o=r", where,
    )
