"""Word splitting of Dockerfile instruction arguments, as BuildKit's parser does it
(frontend/dockerfile/parser: splitCommand, parseJSON, parseWords, parseNameVal).

Rules: pure; words keep their quotes and escapes (variable substitution removes them
later); errors are ``DockerfileError`` without a location (the parser adds it).
"""

from __future__ import annotations

import json
import re

from rootbuild.dockerfile import flags as fl
from rootbuild.errors import DockerfileError

TOKEN_WS = re.compile(r"[\t\v\f\r ]+")


def split_command(line: str) -> tuple[str, list[str], str]:
    """BuildKit's splitCommand: keyword, flag words, the rest (trimmed)."""
    parts = TOKEN_WS.split(line.strip(), maxsplit=1)
    if len(parts) < 2:
        return parts[0], [], ""
    flag_words, rest = fl.split_flags(parts[1])
    return parts[0], flag_words, rest.strip()


def json_array(args: str) -> list[str] | None:
    """BuildKit's parseJSON: a JSON array of strings, or None when ``args`` is not JSON
    (then it is shell form). A JSON array holding a non-string is an error."""
    if not args.lstrip().startswith("["):
        return None
    try:
        value = json.loads(args, parse_constant=_reject_constant)
    except ValueError:
        return None
    if not isinstance(value, list):
        return None
    if not all(isinstance(item, str) for item in value):
        raise DockerfileError(
            "when using JSON array syntax, arrays must be comprised of strings only"
        )
    return value


def _reject_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")  # Go's encoding/json rejects NaN/Infinity


def whitespace_words(args: str) -> list[str]:
    return TOKEN_WS.split(args) if args else []


def parse_words(rest: str, escape: str) -> list[str]:
    """BuildKit's parseWords: split on blanks outside quotes, keeping quotes and escapes."""
    words: list[str] = []
    word: list[str] = []
    quote = ""
    blank_ok = False
    in_word = False
    i, n = 0, len(rest)
    while i < n:
        ch = rest[i]
        if not in_word:
            if ch.isspace():
                i += 1
                continue
            in_word = True
        if not quote:
            if ch.isspace():
                if blank_ok or word:
                    words.append("".join(word))
                word, blank_ok, in_word = [], False, False
                i += 1
                continue
            if ch in "'\"":
                quote, blank_ok = ch, True
            if ch == escape:
                if i + 1 == n:
                    i += 1
                    continue
                word.append(ch)
                i += 1
                ch = rest[i]
            word.append(ch)
            i += 1
            continue
        if ch == quote:
            quote = ""
        elif ch == escape and quote != "'":
            if i + 1 == n:
                quote = ""
                i += 1
                continue
            word.append(ch)
            i += 1
            ch = rest[i]
        word.append(ch)
        i += 1
    if in_word and (blank_ok or word):
        words.append("".join(word))
    return words


def name_values(rest: str, keyword: str, escape: str) -> list[tuple[str, str]]:
    """BuildKit's parseNameVal for ENV and LABEL: ``name value`` (legacy, one pair) or
    ``name=value ...``; values keep their quotes and escapes."""
    words = parse_words(rest, escape)
    if not words:
        raise DockerfileError(f"{keyword} requires at least one argument")
    if "=" not in words[0]:
        parts = TOKEN_WS.split(rest, maxsplit=1)
        if len(parts) < 2:
            raise DockerfileError(f"{keyword} must have two arguments")
        return [(parts[0], parts[1])]
    pairs = []
    for word in words:
        if "=" not in word:
            raise DockerfileError(
                f"syntax error - can't find = in {json.dumps(word)}."
                " Must be of the form: name=value"
            )
        key, _, value = word.partition("=")
        if key == "":
            raise DockerfileError(f"{keyword} names can not be blank")
        pairs.append((key, value))
    return pairs
