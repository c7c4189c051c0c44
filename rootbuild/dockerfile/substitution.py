"""Dockerfile variable substitution: BuildKit's shell lexer, word for word.

This module mirrors moby/buildkit ``frontend/dockerfile/shell/lex.go`` (``ProcessWord`` and
``ProcessWords``), which is what ``docker build`` uses for ADD, COPY, ENV, EXPOSE, FROM,
LABEL, STOPSIGNAL, USER, VOLUME, WORKDIR, ONBUILD and the flags that take variables.

Rules (all from lex.go):
- ``'...'`` is literal; ``"..."`` expands ``$`` and lets the escape character escape only
  ``"``, ``$`` and itself (any other escape stays literal). Quotes are removed.
- Outside quotes the escape character (``\\`` or, with ``# escape=``` ``, a backtick) makes
  the next character literal; a trailing escape is dropped.
- ``$name`` and ``${name}``; names are letters, digits and ``_``, or a run of digits
  (``$1``), or one special parameter (``$@ $* $# $? $- $$ $! $0``). ``$`` followed by
  anything else is a literal ``$``. Unset variables expand to ``""``.
- Modifiers: ``${v:-w} ${v-w} ${v:+w} ${v+w} ${v:?msg} ${v?msg}``, ``${v#p} ${v##p}
  ${v%p} ${v%%p}`` (``:#``/``:%`` are rejected, as in BuildKit) and ``${v/p/r} ${v//p/r}``.
  Patterns support ``*`` and ``?`` and ``\\`` escapes of ``* ? \\ } /``; like BuildKit,
  bracket expressions are *not* supported (``[`` is literal).
- The word part of a modifier is itself expanded (so ``${a:-${b}}`` works); inside ``#``,
  ``%`` and ``/`` patterns escapes are kept raw so the pattern compiler sees them.
- No word splitting in ``expand``; ``expand_words`` splits on unquoted whitespace *after*
  expansion (whitespace produced by a ``$`` expansion splits too, as in lex.go).

Pure: no I/O, no ``os``. Errors are ``DockerfileError`` carrying the instruction location.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from rootbuild.errors import DockerfileError, Location

__all__ = ["expand", "expand_words"]

_SPECIAL_PARAMS = frozenset("@*#?-$!0")
# Go's unicode.IsSpace; Python's str.isspace() also accepts the ASCII separators 0x1c-0x1f.
_NOT_GO_SPACE = frozenset("\x1c\x1d\x1e\x1f")


def _is_space(ch: str) -> bool:
    return ch.isspace() and ch not in _NOT_GO_SPACE


class _SyntaxError(Exception):
    """Raised inside the lexer; turned into a located DockerfileError at the API edge."""


class _Words:
    """lex.go's wordsStruct: accumulates the split form next to the unsplit result."""

    def __init__(self) -> None:
        self.word = ""
        self.words: list[str] = []
        self.in_word = False

    def add_char(self, ch: str) -> None:
        if _is_space(ch):
            if self.in_word and self.word:
                self.words.append(self.word)
                self.word = ""
                self.in_word = False
        else:
            self.add_raw_char(ch)

    def add_raw_char(self, ch: str) -> None:
        self.word += ch
        self.in_word = True

    def add_string(self, text: str) -> None:
        for ch in text:
            self.add_char(ch)

    def add_raw_string(self, text: str) -> None:
        self.word += text
        self.in_word = True

    def get(self) -> list[str]:
        if self.word:
            self.words.append(self.word)
            self.word = ""
            self.in_word = False
        return self.words


class _Lexer:
    def __init__(
        self, word: str, env: Mapping[str, str], escape: str, used: set[str] | None
    ) -> None:
        self.src = word
        self.pos = 0
        self.env = env
        self.escape = escape
        self.used = used
        self.raw_escapes = False

    # -- scanner ---------------------------------------------------------------------------
    def peek(self) -> str:
        return self.src[self.pos] if self.pos < len(self.src) else ""

    def next(self) -> str:
        ch = self.peek()
        if ch:
            self.pos += 1
        return ch

    # -- lex.go processStopOn ---------------------------------------------------------------
    def process_stop_on(self, stop: str | None, raw_escapes: bool) -> tuple[str, list[str]]:
        """Process until ``stop`` (consumed) or end of input (``stop is None``)."""
        saved = self.raw_escapes
        self.raw_escapes = raw_escapes
        try:
            return self._process_stop_on(stop)
        finally:
            self.raw_escapes = saved

    def _process_stop_on(self, stop: str | None) -> tuple[str, list[str]]:
        result: list[str] = []
        words = _Words()
        while (ch := self.peek()) != "":
            if stop is not None and ch == stop:
                self.next()
                return "".join(result), words.get()
            if ch == "$":
                tmp = self.process_dollar()
                result.append(tmp)
                words.add_string(tmp)
            elif ch == "'":
                tmp = self.process_single_quote()
                result.append(tmp)
                words.add_raw_string(tmp)
            elif ch == '"':
                tmp = self.process_double_quote()
                result.append(tmp)
                words.add_raw_string(tmp)
            else:
                ch = self.next()
                if ch == self.escape:
                    if self.raw_escapes:
                        words.add_raw_char(ch)
                        result.append(ch)
                    ch = self.next()
                    if ch == "":
                        break  # a trailing escape is dropped
                    words.add_raw_char(ch)
                else:
                    words.add_char(ch)
                result.append(ch)
        if stop is not None:
            raise _SyntaxError(f"unexpected end of statement while looking for matching {stop}")
        return "".join(result), words.get()

    def process_single_quote(self) -> str:
        # POSIX: everything up to the next ' is literal; a ' cannot be escaped inside.
        self.next()
        start = self.pos
        end = self.src.find("'", start)
        if end < 0:
            raise _SyntaxError(
                "unexpected end of statement while looking for matching single-quote"
            )
        self.pos = end + 1
        return self.src[start:end]

    def process_double_quote(self) -> str:
        # POSIX: the escape only escapes " $ and itself inside double quotes.
        self.next()
        result: list[str] = []
        while True:
            ch = self.peek()
            if ch == "":
                raise _SyntaxError(
                    "unexpected end of statement while looking for matching double-quote"
                )
            if ch == '"':
                self.next()
                return "".join(result)
            if ch == "$":
                result.append(self.process_dollar())
                continue
            ch = self.next()
            if ch == self.escape:
                if self.raw_escapes:
                    result.append(ch)
                nxt = self.peek()
                if nxt == "":
                    continue  # escape at end of word is ignored
                if nxt in ('"', "$", self.escape):
                    ch = self.next()
            result.append(ch)

    # -- lex.go processDollar ---------------------------------------------------------------
    def process_dollar(self) -> str:
        self.next()  # the "$"
        if self.peek() != "{":
            name = self.process_name()
            if not name:
                return "$"
            return self.get_env(name)[0]

        self.next()  # the "{"
        first = self.peek()
        if first == "":
            raise _SyntaxError("syntax error: missing '}'")
        if first in "{}:":
            raise _SyntaxError("syntax error: bad substitution")
        name = self.process_name()
        ch = self.next()
        if ch == "":
            raise _SyntaxError("syntax error: missing '}'")
        if ch == "}":
            return self.get_env(name)[0]
        if ch == "/":
            return self._replace(name)

        mod = ch
        null_is_unset = False
        if ch == ":":
            null_is_unset = True
            ch = self.next()
            mod += ch
        elif ch not in "+-?#%":
            raise _SyntaxError(f"unsupported modifier ({mod}) in substitution")
        raw = ch in ("#", "%")
        if null_is_unset and raw:
            raise _SyntaxError(f"unsupported modifier ({mod}) in substitution")
        word = self._modifier_word("}", raw)
        value, is_set = self.get_env(name)

        if ch == "-":
            return word if not is_set or (null_is_unset and value == "") else value
        if ch == "+":
            return "" if not is_set or (null_is_unset and value == "") else word
        if ch == "?":
            if not is_set:
                raise _SyntaxError(f"{name}: {word or 'is not allowed to be unset'}")
            if null_is_unset and value == "":
                raise _SyntaxError(f"{name}: {word or 'is not allowed to be empty'}")
            return value
        if ch in ("#", "%"):
            greedy = word.startswith(ch)
            if greedy:
                word = word[1:]
            if ch == "%":
                return _trim_suffix(word, value, greedy)
            return _trim_prefix(word, value, greedy)
        raise _SyntaxError(f"unsupported modifier ({mod}) in substitution")

    def _modifier_word(self, stop: str, raw: bool) -> str:
        try:
            word, _ = self.process_stop_on(stop, raw)
        except _SyntaxError:
            if self.peek() == "":
                if stop == "/":
                    raise _SyntaxError("syntax error: missing '/' in ${}") from None
                raise _SyntaxError("syntax error: missing '}'") from None
            raise
        return word

    def _replace(self, name: str) -> str:
        replace_all = self.peek() == "/"
        if replace_all:
            self.next()
        pattern = self._modifier_word("/", True)
        replacement = self._modifier_word("}", True)
        value, _ = self.get_env(name)
        rx = _pattern_regex(pattern, greedy=True, anchored=False)
        if replace_all:
            return _replace_all(rx, value, replacement)
        m = rx.search(value)
        if m is None:
            return value
        return value[: m.start()] + replacement + value[m.end() :]

    def process_name(self) -> str:
        buf: list[str] = []
        while (ch := self.peek()) != "":
            if not buf and ch.isdecimal():
                while self.peek() != "" and self.peek().isdecimal():
                    buf.append(self.next())
                return "".join(buf)
            if not buf and ch in _SPECIAL_PARAMS:
                return self.next()
            if not (ch.isalpha() or ch.isdecimal() or ch == "_"):
                break
            buf.append(self.next())
        return "".join(buf)

    def get_env(self, name: str) -> tuple[str, bool]:
        if self.used is not None:
            self.used.add(name)
        value = self.env.get(name)
        if value is None:
            return "", False
        return value, True


# -- patterns (lex.go convertShellPatternToRegex, trimPrefix, trimSuffix) ---------------------


def _pattern_regex(pattern: str, *, greedy: bool, anchored: bool) -> re.Pattern[str]:
    out = ["^"] if anchored else []
    star = ".*" if greedy else ".*?"
    i = 0
    while i < len(pattern):
        tok = pattern[i]
        i += 1
        if tok == "*":
            out.append(star)
        elif tok == "?":
            out.append(".")
        elif tok == "\\":
            nxt = pattern[i] if i < len(pattern) else ""
            if nxt in ("}", "/") and nxt:
                continue  # escaped only to get past the ${} parser; not part of the pattern
            if nxt not in ("*", "?", "\\") or not nxt:
                raise _SyntaxError(
                    f"invalid pattern ({pattern}) in substitution: invalid escape '\\{nxt}'"
                )
            out.append(re.escape(nxt))
            i += 1
        else:
            out.append(re.escape(tok))
    return re.compile("".join(out))


def _trim_prefix(pattern: str, value: str, greedy: bool) -> str:
    m = _pattern_regex(pattern, greedy=greedy, anchored=True).search(value)
    return value[m.end() :] if m else value


def _reverse_pattern(pattern: str) -> str:
    """Reverse a pattern keeping each ``\\x`` escape pair in order (lex.go reversePattern)."""
    last = len(pattern) - 1
    out = [""] * len(pattern)
    i = 0
    while i <= last:
        tok = pattern[i]
        idx = last - i
        if tok == "\\" and i != last:
            out[idx - 1] = tok
            out[idx] = pattern[i + 1]
            i += 2
        else:
            out[idx] = tok
            i += 1
    return "".join(out)


def _trim_suffix(pattern: str, value: str, greedy: bool) -> str:
    # Regexes cannot find the shortest rightmost match, so search the reversed value
    # with the reversed pattern (what lex.go does).
    return _trim_prefix(_reverse_pattern(pattern), value[::-1], greedy)[::-1]


_GO_TEMPLATE = re.compile(r"\$(\$|\{([A-Za-z0-9_]+)\}|([A-Za-z0-9_]+))")


def _go_expand(template: str, m: re.Match[str]) -> str:
    """Go's ``Regexp.Expand`` as used by ``ReplaceAllString``: ``$$``, ``$0``, ``${0}``;
    other group references are empty (the generated regexes have no groups)."""

    def sub(t: re.Match[str]) -> str:
        if t.group(1) == "$":
            return "$"
        ref = t.group(2) or t.group(3)
        return m.group(0) if ref == "0" else ""

    return _GO_TEMPLATE.sub(sub, template)


def _replace_all(rx: re.Pattern[str], value: str, replacement: str) -> str:
    # Go's ReplaceAllString: an empty match right after a previous match is not replaced
    # (Python's re.sub would replace it, turning ${v//*/x} into "xx").
    out: list[str] = []
    last = 0
    prev_end = -1
    for m in rx.finditer(value):
        if m.start() == m.end() == prev_end:
            continue
        out.append(value[last : m.start()])
        out.append(_go_expand(replacement, m))
        last = prev_end = m.end()
    out.append(value[last:])
    return "".join(out)


# -- public API -----------------------------------------------------------------------------


def _run(
    word: str,
    env: Mapping[str, str],
    escape: str,
    location: Location | None,
    used: set[str] | None,
) -> tuple[str, list[str]]:
    if len(escape) != 1:
        raise ValueError(f"escape must be one character, got {escape!r}")
    lexer = _Lexer(word, env, escape, used)
    try:
        return lexer.process_stop_on(None, False)
    except _SyntaxError as exc:
        raise DockerfileError(f'expand "{word}": {exc}', location) from exc


def expand(
    word: str,
    env: Mapping[str, str],
    *,
    escape: str = "\\",
    location: Location | None = None,
    used: set[str] | None = None,
) -> str:
    """Expand one word like BuildKit's ``ProcessWord``: quotes and escapes processed and
    removed, variables substituted, whitespace kept. Every variable name looked up (set or
    not) is added to ``used``."""
    return _run(word, env, escape, location, used)[0]


def expand_words(
    text: str,
    env: Mapping[str, str],
    *,
    escape: str = "\\",
    location: Location | None = None,
    used: set[str] | None = None,
) -> list[str]:
    """Expand and split like BuildKit's ``ProcessWords`` (EXPOSE, VOLUME, ...): words are
    separated by unquoted whitespace, including whitespace that came from a ``$``
    expansion; empty words are dropped (``""`` alone yields no word)."""
    return _run(text, env, escape, location, used)[1]
