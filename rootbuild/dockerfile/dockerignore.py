""".dockerignore parsing and matching, as Docker/BuildKit do it.

Sources: moby/patternmatcher (``ignorefile.ReadAll``, ``New``, ``Pattern.compile``,
``MatchesOrParentMatches``), tonistiigi/fsutil's walker (which directories can be skipped)
and Docker's ".dockerignore file" documentation.

Rules:
- One pattern per line (``\\n``; a trailing ``\\r`` is dropped, a UTF-8 BOM on line 1 too).
  A line whose *first* character is ``#`` is a comment; other lines are trimmed and blank
  ones skipped. ``!`` makes an exception (re-include); the rest is cleaned like Go's
  ``filepath.Clean`` and a leading ``/`` is removed. A lone ``!`` is an error.
- Matching is patternmatcher's: ``*`` and ``?`` never match ``/``, ``[...]`` ranges and
  ``\\`` escapes follow Go's ``filepath.Match`` (which also validates each pattern), and
  ``**`` matches any number of directories, including none. ``foo**`` is a plain prefix.
- A pattern that matches a directory matches everything below it (the parent check of
  ``MatchesOrParentMatches``). Patterns apply in order; the last one that matches wins.
- The context root itself is never ignored.

Pure: no I/O. ``glob_match``/``has_wildcards``/``clean`` are shared with the build-context
code, which resolves COPY/ADD wildcards with the same ``filepath.Match`` rules.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

from rootbuild.errors import ContextError, Location

__all__ = [
    "BadPatternError",
    "IgnoreMatcher",
    "IgnorePattern",
    "clean",
    "glob_match",
    "has_wildcards",
]

_MatchType = Literal["exact", "prefix", "suffix", "regexp"]


class BadPatternError(ValueError):
    """A pattern ``filepath.Match`` rejects (``syntax error in pattern``)."""

    def __init__(self, pattern: str) -> None:
        super().__init__(f'syntax error in pattern "{pattern}"')
        self.pattern = pattern


def clean(path: str) -> str:
    """Go's ``path.Clean``: collapse ``//``, ``.`` and ``x/..``; ``""`` becomes ``"."``."""
    if not path:
        return "."
    rooted = path.startswith("/")
    parts: list[str] = []
    for comp in path.split("/"):
        if comp in ("", "."):
            continue
        if comp == "..":
            if parts and parts[-1] != "..":
                parts.pop()
            elif not rooted:
                parts.append("..")
            continue
        parts.append(comp)
    joined = "/".join(parts)
    if rooted:
        return "/" + joined
    return joined or "."


def has_wildcards(name: str) -> bool:
    """BuildKit's ``containsWildcards``: an unescaped ``*``, ``?`` or ``[``."""
    i = 0
    while i < len(name):
        ch = name[i]
        if ch == "\\":
            i += 2
            continue
        if ch in "*?[":
            return True
        i += 1
    return False


def _class_item(pattern: str, i: int) -> tuple[str, int]:
    """Go's ``getEsc``: one (possibly escaped) character of a ``[...]`` class."""
    if i >= len(pattern) or pattern[i] in "-]":
        raise BadPatternError(pattern)
    if pattern[i] == "\\":
        i += 1
        if i >= len(pattern):
            raise BadPatternError(pattern)
    ch = pattern[i]
    i += 1
    if i >= len(pattern):
        raise BadPatternError(pattern)  # the class is never closed
    return ch, i


def _translate_class(pattern: str, i: int) -> tuple[str, int]:
    """Translate the class starting after ``[`` at ``i``; returns (regex, next index)."""
    negated = i < len(pattern) and pattern[i] == "^"
    if negated:
        i += 1
    ranges: list[str] = []
    while True:
        if i < len(pattern) and pattern[i] == "]" and ranges:
            i += 1
            break
        lo, i = _class_item(pattern, i)
        hi = lo
        if pattern[i] == "-":
            hi, i = _class_item(pattern, i + 1)
        if lo > hi:
            raise BadPatternError(pattern)  # Go's regexp (patternmatcher) rejects it too
        ranges.append(re.escape(lo) if lo == hi else f"{re.escape(lo)}-{re.escape(hi)}")
    return "[" + ("^" if negated else "") + "".join(ranges) + "]", i


def _translate(pattern: str, *, double_star: bool) -> tuple[_MatchType, str]:
    """patternmatcher ``Pattern.compile`` (``double_star``) or ``filepath.Match`` as a regex.

    Raises ``BadPatternError`` for anything ``filepath.Match`` calls malformed."""
    out: list[str] = []
    kind: _MatchType = "exact"
    i = 0
    n = len(pattern)
    first = True
    while i < n:
        ch = pattern[i]
        i += 1
        if ch == "*":
            if double_star and i < n and pattern[i] == "*":
                i += 1
                if i < n and pattern[i] == "/":
                    i += 1  # "**/" is "**"
                if i >= n:
                    if kind == "exact":
                        kind = "prefix"
                    else:
                        out.append(".*")
                        kind = "regexp"
                else:
                    out.append("(?:.*/)?")
                    kind = "regexp"
                if first:
                    kind = "suffix"
            else:
                out.append("[^/]*")
                kind = "regexp"
        elif ch == "?":
            out.append("[^/]")
            kind = "regexp"
        elif ch == "\\":
            if i >= n:
                raise BadPatternError(pattern)
            out.append(re.escape(pattern[i]))
            i += 1
            kind = "regexp"
        elif ch == "[":
            cls, i = _translate_class(pattern, i)
            out.append(cls)
            kind = "regexp"
        else:
            out.append(re.escape(ch))
        first = False
    return kind, "".join(out)


_GLOB_CACHE: dict[str, re.Pattern[str]] = {}


def glob_match(pattern: str, name: str) -> bool:
    """Go's ``filepath.Match(pattern, name)``; raises ``BadPatternError``."""
    rx = _GLOB_CACHE.get(pattern)
    if rx is None:
        _, body = _translate(pattern, double_star=False)
        rx = re.compile(body)
        if len(_GLOB_CACHE) < 4096:
            _GLOB_CACHE[pattern] = rx
    return rx.fullmatch(name) is not None


@dataclass(frozen=True)
class IgnorePattern:
    """One cleaned .dockerignore line. ``exclusion`` is a ``!`` line (re-includes)."""

    text: str
    exclusion: bool
    line: int
    match_type: _MatchType = field(repr=False, compare=False, default="exact")
    regex: re.Pattern[str] | None = field(repr=False, compare=False, default=None)

    @classmethod
    def compile(cls, text: str, exclusion: bool, line: int) -> IgnorePattern:
        kind, body = _translate(text, double_star=True)
        regex = re.compile(body) if kind == "regexp" else None
        return cls(text, exclusion, line, kind, regex)

    def matches(self, path: str) -> bool:
        """patternmatcher ``Pattern.match`` on a cleaned, slash-separated path."""
        if self.match_type == "exact":
            return path == self.text
        if self.match_type == "prefix":
            return path.startswith(self.text[:-2])
        if self.match_type == "suffix":
            suffix = self.text[2:]
            return path.endswith(suffix) or (suffix[:1] == "/" and path == suffix[1:])
        assert self.regex is not None
        return self.regex.fullmatch(path) is not None

    def matches_or_parent(self, path: str) -> bool:
        """True if the pattern matches ``path`` or one of its parent directories."""
        if self.matches(path):
            return True
        parts = path.split("/")
        return any(self.matches("/".join(parts[:i])) for i in range(1, len(parts)))

    def could_match_below(self, reldir: str) -> bool:
        """Whether this pattern might match ``reldir`` itself, one of its parents or a
        path beneath it. Sound (never False when a match is possible), not exact."""
        pparts = self.text.split("/")
        for i, dpart in enumerate(reldir.split("/")):
            if i >= len(pparts):
                return True  # matched a parent of reldir
            ppart = pparts[i]
            if "**" in ppart:
                return True
            try:
                if not glob_match(ppart, dpart):
                    return False
            except BadPatternError:
                return True  # e.g. a class split by "/": be conservative
        return True


@dataclass(frozen=True)
class IgnoreMatcher:
    """An ordered list of patterns from one ignore file (``source`` names it)."""

    patterns: tuple[IgnorePattern, ...] = ()
    source: str = ".dockerignore"

    @classmethod
    def parse(cls, text: str, source: str = ".dockerignore") -> IgnoreMatcher:
        """Parse ignore-file text (patternmatcher ``ignorefile.ReadAll`` + ``New``).

        A malformed pattern raises ``ContextError`` located at ``source:line``."""
        patterns: list[IgnorePattern] = []
        for lineno, raw in enumerate(text.split("\n"), start=1):
            line = raw[:-1] if raw.endswith("\r") else raw
            if lineno == 1:
                line = line.removeprefix("\ufeff")
            if line.startswith("#"):
                continue
            line = line.strip()
            if not line:
                continue
            exclusion = line.startswith("!")
            if exclusion:
                line = line[1:].strip()
            if line:
                line = clean(line)
                if len(line) > 1 and line.startswith("/"):
                    line = line[1:]
            where = Location(source, lineno)
            if exclusion and not line:
                raise ContextError('parse pattern "!": illegal exclusion pattern', where)
            try:
                patterns.append(IgnorePattern.compile(line, exclusion, lineno))
            except BadPatternError as exc:
                raise ContextError(f'parse pattern "{raw.strip()}": {exc}', where) from exc
        return cls(tuple(patterns), source)

    @property
    def has_exclusions(self) -> bool:
        return any(p.exclusion for p in self.patterns)

    def ignored(self, relpath: str) -> bool:
        """Whether ``relpath`` (posix, relative to the context root) is excluded from the
        context: patternmatcher ``MatchesOrParentMatches`` semantics."""
        path = clean(relpath)
        if path == ".":
            return False
        matched = False
        for pattern in self.patterns:
            # An include can only flip "not matched"; an exception only "matched".
            if pattern.exclusion != matched:
                continue
            if pattern.matches_or_parent(path):
                matched = not pattern.exclusion
        return matched

    def may_include_below(self, reldir: str) -> bool:
        """False only when ``reldir`` is ignored and no ``!`` pattern could re-include
        anything beneath it, so a walker may skip the directory without reading it."""
        path = clean(reldir)
        if not self.ignored(path):
            return True
        return any(p.exclusion and p.could_match_below(path) for p in self.patterns)
