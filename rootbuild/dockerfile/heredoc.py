"""Here-documents in Dockerfiles: find them, read their bodies, take them out of the text.

Job: dockerfile-parse knows nothing of BuildKit's heredocs (``RUN <<EOF`` ... ``EOF``) and
would read every body line as an instruction. This module walks the Dockerfile's lines
the way BuildKit's ``parser.Parse`` does (moby/buildkit frontend/dockerfile/parser/
parser.go), finds each logical instruction that may carry heredocs, reads the bodies that
follow it and blanks those lines, so the rest can be handed to dockerfile-parse with every
line number unchanged.

Rules (all BuildKit's):
- A logical instruction is its first line plus continuation lines (the escape character
  as the last non-blank character); comment lines and empty lines inside a continuation
  are skipped (BuildKit warns about the empty ones; we report their indexes).
- Only RUN, COPY and ADD in shell form (and ``ONBUILD`` of those) carry heredocs. The
  caller decides which joined lines qualify (``wants_heredocs``); this module knows no
  instruction syntax.
- Heredoc words are found by splitting the joined line into shell words with quotes and
  escapes kept raw (the escape is always ``\\`` here, whatever ``# escape=`` says); a word
  matching ``^(\\d*)<<(-?)\\s*([^<]*)$`` whose rest is one shell word is a heredoc. A quoted
  name (``<<"EOF"``, ``<<'EOF'``, ``<<E"O"F``) means no expansion. The file-descriptor
  prefix (``3<<EOF``) is accepted and dropped.
- Bodies follow the instruction in order, one per heredoc; a body ends at the first line
  equal to the name (after stripping leading tabs for ``<<-``). A body line keeps its
  newline; ``<<-`` bodies have leading tabs stripped from every line.
- Indexes here are 0-based; callers add 1 for locations.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from rootbuild.dockerfile.instructions import Heredoc
from rootbuild.errors import DockerfileError, Location

_HEREDOC_RE = re.compile(r"^(\d*)<<(-?)\s*([^<]*)$", re.DOTALL)
_LEADING_TABS_RE = re.compile(r"^\t+", re.MULTILINE)
_WHITESPACE = " \t\v\f\r\n"


def continuation_regex(escape: str) -> re.Pattern[str]:
    """BuildKit's ``lineContinuationRegex``: the escape as the last non-blank character,
    unless itself escaped (``foo \\\\`` does not continue), or alone on its line."""
    e = re.escape(escape)
    return re.compile(rf"([^{e}]){e}[ \t]*$|^{e}[ \t]*$")


def trim_continuation(line: str, regex: re.Pattern[str]) -> tuple[str, bool]:
    """Return ``line`` without its continuation character and whether it continues."""
    if regex.search(line):
        return regex.sub(r"\1", line, count=1), True
    return line, False


def is_comment(line: str) -> bool:
    """A comment line: ``#`` after optional leading whitespace (BuildKit ``isComment``)."""
    return line.lstrip().startswith("#")


@dataclass(frozen=True)
class LogicalLine:
    """One instruction as BuildKit joins it: ``text`` is its ``Original``; ``start`` and
    ``end`` are 0-based line indexes, ``end`` including any heredoc bodies."""

    start: int
    end: int
    text: str
    heredocs: tuple[Heredoc, ...] = ()


@dataclass(frozen=True)
class HeredocScan:
    """The result of ``scan``: the logical lines, the text lines with heredoc bodies and
    terminators blanked, and the indexes of empty lines inside continuations."""

    logical: tuple[LogicalLine, ...]
    stripped: tuple[str, ...]
    empty_continuations: tuple[int, ...]


def scan(
    lines: Sequence[str],
    escape: str,
    wants_heredocs: Callable[[str], bool],
    name: str = "Dockerfile",
) -> HeredocScan:
    """Walk ``lines`` (no line terminators) as BuildKit's parser does.

    Raises ``DockerfileError`` located at the instruction (``name``, its first line, the
    last line read) for an unterminated heredoc or an unclosed quote in a heredoc name."""
    regex = continuation_regex(escape)
    stripped = list(lines)
    logical: list[LogicalLine] = []
    empty: list[int] = []
    i, n = 0, len(lines)
    while i < n:
        first = lines[i].lstrip()
        start = i
        i += 1
        if is_comment(first):
            continue
        text, cont = trim_continuation(first, regex)
        if not cont and text == "":
            continue
        while cont and i < n:
            raw = lines[i]
            i += 1
            if is_comment(raw):
                continue
            if raw.strip() == "":
                empty.append(i - 1)
                continue
            piece, cont = trim_continuation(raw, regex)
            text += piece
        heredocs: list[Heredoc] = []
        if "<<" in text and wants_heredocs(text):
            try:
                markers = heredocs_in_line(text)
            except DockerfileError as exc:
                raise DockerfileError(exc.message, Location(name, start + 1, i)) from exc
            for marker in markers:
                body_start = i
                try:
                    body, i = read_body(lines, i, marker)
                except DockerfileError as exc:
                    location = Location(name, start + 1, len(lines))
                    raise DockerfileError(exc.message, location) from exc
                for k in range(body_start, i):
                    stripped[k] = ""
                content = chomp(body) if marker.chomp else body
                heredocs.append(
                    Heredoc(marker.name, content, expand=marker.expand, chomp=marker.chomp)
                )
        logical.append(LogicalLine(start, i - 1, text, tuple(heredocs)))
    return HeredocScan(tuple(logical), tuple(stripped), tuple(empty))


def read_body(lines: Sequence[str], i: int, marker: Heredoc) -> tuple[str, int]:
    """Read one heredoc body starting at index ``i``; return it (raw, each line with its
    newline) and the index after the terminator line."""
    body: list[str] = []
    while i < len(lines):
        line = lines[i]
        i += 1
        candidate = line.lstrip("\t") if marker.chomp else line
        if candidate == marker.name:
            return "".join(body), i
        body.append(line + "\n")
    raise DockerfileError(f"unterminated heredoc: no line {marker.name!r} ends it")


def chomp(content: str) -> str:
    """``<<-``: strip leading tabs from every line (BuildKit ``ChompHeredocContent``)."""
    return _LEADING_TABS_RE.sub("", content)


def heredocs_in_line(line: str) -> list[Heredoc]:
    """The heredoc markers of a joined instruction line, in order, with empty content
    (BuildKit ``heredocsFromLine``)."""
    found = []
    for word in _raw_words(line):
        marker = parse_heredoc_word(word)
        if marker is not None:
            found.append(marker)
    return found


def parse_heredoc_word(word: str) -> Heredoc | None:
    """Parse one word like ``<<EOF``, ``<<-"EOF"``, ``3<<'EOF'``; ``None`` if it is not
    a heredoc (BuildKit ``ParseHeredoc``). The result has empty content."""
    match = _HEREDOC_RE.match(word)
    if match is None or match.group(3) == "":
        return None
    rest = match.group(3)
    unquoted = _unquoted_words(rest)
    if len(unquoted) != 1:
        return None
    name = unquoted[0]
    raw_quotes = rest.count("'") + rest.count('"')
    name_quotes = name.count("'") + name.count('"')
    return Heredoc(name, "", expand=raw_quotes == name_quotes, chomp=match.group(2) == "-")


def _raw_words(line: str) -> list[str]:
    """Split into shell words keeping quotes and escapes, as BuildKit's lexer does with
    RawQuotes/RawEscapes; ``<<`` swallows the blanks after it (``<< EOF`` is one word)."""
    words: list[str] = []
    word: list[str] = []
    in_word = False
    i, n = 0, len(line)
    while i < n:
        ch = line[i]
        if ch in _WHITESPACE:
            if in_word:
                words.append("".join(word))
                word, in_word = [], False
            i += 1
            continue
        in_word = True
        if ch == "\\" and i + 1 < n:
            word.append(line[i : i + 2])
            i += 2
        elif ch in "'\"":
            end = _closing_quote(line, i)
            end = n if end < 0 else end
            word.append(line[i:end])
            i = end
        elif line.startswith("<<", i):
            j = i + 2
            while j < n and line[j] in " \t":
                j += 1
            word.append(line[i:j])
            i = j
        else:
            word.append(ch)
            i += 1
    if in_word:
        words.append("".join(word))
    return words


def _closing_quote(line: str, i: int) -> int:
    """Index just past the quote closing the one at ``i``; -1 if it is never closed."""
    quote = line[i]
    j = i + 1
    while j < len(line):
        if line[j] == "\\" and quote == '"' and j + 1 < len(line):
            j += 2
            continue
        if line[j] == quote:
            return j + 1
        j += 1
    return -1


def _unquoted_words(text: str) -> list[str]:
    """Shell words with quotes removed (escapes resolved); error on an unclosed quote."""
    words: list[str] = []
    word: list[str] = []
    in_word = False
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch in _WHITESPACE:
            if in_word:
                words.append("".join(word))
                word, in_word = [], False
            i += 1
            continue
        in_word = True
        if ch == "\\" and i + 1 < n:
            word.append(text[i + 1])
            i += 2
        elif ch in "'\"":
            end = _closing_quote(text, i)
            if end < 0:
                raise DockerfileError(f"unterminated quote in heredoc name: {text}")
            inner = text[i + 1 : end - 1]
            if ch == '"':
                inner = re.sub(r"\\(.)", r"\1", inner)
            word.append(inner)
            i = end
        else:
            word.append(ch)
            i += 1
    if in_word:
        words.append("".join(word))
    return words
