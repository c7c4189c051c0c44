"""Instruction flags (``--from=``, ``--mount=``, ``--interval=`` ...) into typed values.

Job: split the leading ``--flag[=value]`` words off an instruction, check them against
the flags that instruction accepts, and turn the values that have a fixed syntax into
typed fields once, here: ``RUN --mount`` CSV into ``Mount``, Go duration strings into
nanoseconds, ``--network``/``--security`` into checked strings.

Rules (BuildKit's ``extractBuilderFlags`` in frontend/dockerfile/parser/split_command.go,
``BFlags`` in instructions/bflag.go, ``parseMount`` in instructions/runmount.go):
- Flags are the words starting with ``--`` before the first other word; ``--`` alone ends
  them. Quotes are removed and ``\\`` escapes one character inside flag words, whatever
  the ``# escape=`` directive says.
- A bool flag takes ``--link``, ``--link=true`` or ``--link=false``; a string flag needs
  ``=value``; a repeatable (strings) flag collects every occurrence; other flags may not
  repeat.
- Values stay unexpanded (substitution is the stage evaluator's job), except the mount
  fields Docker types as numbers (``mode``, ``uid``, ``gid``, ``size``), which must be
  literal here.
- Errors are ``DockerfileError`` without a location; the parser adds the instruction's.
"""

from __future__ import annotations

import csv
import difflib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from rootbuild.dockerfile.instructions import Device, Mount
from rootbuild.errors import DockerfileError

FlagKind = Literal["bool", "string", "strings"]

_SPACE = " \t\n\r\v\f"


def split_flags(rest: str) -> tuple[list[str], str]:
    """Split ``--flag`` words off ``rest``; return (flag words without quotes, the rest).

    Mirrors BuildKit's ``extractBuilderFlags``: the rest starts at the first word that
    does not begin with ``--``."""
    words: list[str] = []
    i, n = 0, len(rest)
    while True:
        while i < n and rest[i] in _SPACE:
            i += 1
        if i >= n:
            return words, ""
        if not rest.startswith("--", i):
            return words, rest[i:]
        word: list[str] = []
        quote = ""
        while i < n:
            ch = rest[i]
            if not quote and ch in _SPACE:
                break
            if not quote and ch in "'\"":
                quote = ch
            elif quote and ch == quote:
                quote = ""
            elif ch == "\\":
                if i + 1 < n:
                    i += 1
                    word.append(rest[i])
            else:
                word.append(ch)
            i += 1
        text = "".join(word)
        if text == "--":
            return words, rest[i:]
        words.append(text)


@dataclass
class ParsedFlags:
    """The flags one instruction was given, checked against what it accepts."""

    values: dict[str, str | bool | list[str]] = field(default_factory=dict)

    def string(self, name: str) -> str | None:
        value = self.values.get(name)
        return value if isinstance(value, str) else None

    def boolean(self, name: str) -> bool | None:
        value = self.values.get(name)
        return value if isinstance(value, bool) else None

    def strings(self, name: str) -> tuple[str, ...]:
        value = self.values.get(name)
        return tuple(value) if isinstance(value, list) else ()


def parse_flags(words: list[str], accepted: Mapping[str, FlagKind]) -> ParsedFlags:
    """Check flag words (``name[=value]`` after ``--``) against ``accepted`` (BFlags.Parse)."""
    parsed = ParsedFlags()
    for word in words:
        if not word.startswith("--"):
            raise DockerfileError(f"arg should start with -- : {word}")
        name, has_value, value = word[2:].partition("=")
        kind = accepted.get(name)
        if kind is None:
            raise DockerfileError(f"unknown flag: {name}" + _suggest(name, accepted))
        if name in parsed.values and kind != "strings":
            raise DockerfileError(f"duplicate flag specified: {name}")
        if kind == "bool":
            if has_value and value == "":
                raise DockerfileError(f"missing a value on flag: {name}")
            lowered = value.lower()
            if lowered not in ("", "true", "false"):
                raise DockerfileError(
                    f"expecting boolean value for flag {name}, not: {value}"
                )
            parsed.values[name] = lowered != "false"
            continue
        if not has_value:
            raise DockerfileError(f"missing a value on flag: {name}")
        if kind == "string":
            parsed.values[name] = value
        else:
            collected = parsed.values.setdefault(name, [])
            assert isinstance(collected, list)
            collected.append(value)
    return parsed


def _suggest(word: str, choices: Mapping[str, object] | list[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {close[0]}?)" if close else ""


# --- RUN --network / --security (BuildKit runnetwork.go, runsecurity.go) ---

NETWORK_MODES = ("default", "none", "host")
SECURITY_MODES = ("sandbox", "insecure")


def check_network(value: str | None) -> str | None:
    if value is not None and value not in NETWORK_MODES:
        hint = _suggest(value, list(NETWORK_MODES))
        raise DockerfileError(f'network mode "{value}" not supported{hint}')
    return value


def check_security(value: str | None) -> str | None:
    if value is not None and value not in SECURITY_MODES:
        hint = _suggest(value, list(SECURITY_MODES))
        raise DockerfileError(f'security mode "{value}" not supported{hint}')
    return value


# --- RUN --device (BuildKit instructions/commands_rundevice.go ParseDevice) ---


def parse_device(value: str) -> Device:
    """One ``--device=`` value: CSV whose one bare field (or ``name=``) is the device
    name, and ``required[=BOOL]`` (default false)."""
    try:
        fields = next(csv.reader([value], skipinitialspace=False), [])
    except csv.Error as exc:
        raise DockerfileError(f"failed to parse csv device: {exc}") from exc
    name = ""
    required = False
    for item in fields:
        key, has_value, text = item.partition("=")
        key = key.lower()
        if key == "required":
            required = True if not has_value else _go_bool(key, text)
            continue
        if has_value and key == "name":
            item = text
        if name:
            raise DockerfileError(f"device name already set to {name}")
        name = item
    if not name:
        raise DockerfileError(f"device name is required in --device={value}")
    return Device(name, required)


# --- RUN --mount (BuildKit instructions/runmount.go parseMount) ---

MOUNT_TYPES = ("bind", "cache", "tmpfs", "secret", "ssh")
SHARING_MODES = ("shared", "private", "locked")
_MOUNT_KEYS = (
    "type", "from", "source", "target", "readonly", "id", "sharing", "required", "size",
    "mode", "uid", "gid", "src", "dst", "destination", "ro", "rw", "readwrite", "env",
)
_GO_TRUE = ("1", "t", "T", "TRUE", "true", "True")
_GO_FALSE = ("0", "f", "F", "FALSE", "false", "False")


def _go_bool(key: str, value: str) -> bool:
    """Go's ``strconv.ParseBool``."""
    if value in _GO_TRUE:
        return True
    if value in _GO_FALSE:
        return False
    raise DockerfileError(f"invalid value for {key}: {value}")


def _uint(key: str, value: str, base: int) -> int:
    digits = "01234567" if base == 8 else "0123456789"
    if not value or any(c not in digits for c in value) or int(value, base) >= 1 << 32:
        raise DockerfileError(f"invalid value {value} for {key}")
    return int(value, base)


def parse_mount(value: str) -> Mount:
    """Parse one ``--mount=`` value: CSV of ``key=value`` (``ro``, ``rw``, ``required``
    may stand alone). ``readonly`` is resolved as BuildKit does when not given: read-only
    for bind/secret/ssh, writable for cache/tmpfs."""
    try:
        fields = next(csv.reader([value], skipinitialspace=False), [])
    except csv.Error as exc:
        raise DockerfileError(f"failed to parse csv mounts: {exc}") from exc
    pairs: list[tuple[str, str | None]] = []
    for item in fields:
        name, has_value, text = item.partition("=")
        pairs.append((name.lower(), text if has_value else None))
    mount_type = "bind"
    for key, val in pairs:
        if key == "type" and val is not None:
            mount_type = val.lower()
            if mount_type not in MOUNT_TYPES:
                hint = _suggest(mount_type, list(MOUNT_TYPES))
                raise DockerfileError(f'unsupported mount type "{val}"{hint}')
    opts: dict[str, object] = {"type": mount_type}
    readonly: bool | None = None
    for (key, val), item in zip(pairs, fields, strict=True):
        if key == "type":
            continue
        if val is None:
            if key in ("readonly", "ro"):
                readonly = True
            elif key in ("readwrite", "rw"):
                readonly = False
            elif key == "required" and mount_type in ("secret", "ssh"):
                opts["required"] = True
            elif key == "required":
                raise DockerfileError(f"unexpected key '{key}' for mount type '{mount_type}'")
            else:
                raise DockerfileError(f"invalid field '{item}' must be a key=value pair")
            continue
        if key in ("readonly", "ro"):
            readonly = _go_bool(key, val)
        elif key in ("readwrite", "rw"):
            readonly = not _go_bool(key, val)
        elif key == "from":
            if "$" in val[:-1]:
                raise DockerfileError(
                    "'from' doesn't support variable expansion, define alias stage instead"
                )
            opts["from_"] = val
        elif key in ("source", "src"):
            opts["source"] = val
        elif key in ("target", "dst", "destination"):
            opts["target"] = val
        elif key == "id":
            opts["id"] = val
        elif key == "env":
            opts["env"] = val
        elif key == "required":
            if mount_type not in ("secret", "ssh"):
                raise DockerfileError(f"unexpected key '{key}' for mount type '{mount_type}'")
            opts["required"] = _go_bool(key, val)
        elif key == "size":
            if mount_type != "tmpfs":
                raise DockerfileError(f"unexpected key '{key}' for mount type '{mount_type}'")
            opts["size"] = parse_ram_size(val)
        elif key == "sharing":
            if val.lower() not in SHARING_MODES:
                hint = _suggest(val.lower(), list(SHARING_MODES))
                raise DockerfileError(f'unsupported sharing value "{val}"{hint}')
            opts["sharing"] = val.lower()
        elif key == "mode":
            opts["mode"] = _uint("mode", val, 8)
        elif key in ("uid", "gid"):
            opts[key] = _uint(key, val, 10)
        else:
            raise DockerfileError(
                f"unexpected key '{key}' in '{item}'" + _suggest(key, list(_MOUNT_KEYS))
            )
    if mount_type not in ("secret", "ssh", "cache"):
        for key in ("mode", "uid", "gid"):
            if key in opts:
                raise DockerfileError(f'{key} not allowed for "{mount_type}" type mounts')
    if readonly is None:
        readonly = mount_type not in ("cache", "tmpfs")
    if mount_type == "secret":
        if "from_" in opts:
            raise DockerfileError("secret mount should not have a from")
        if "sharing" in opts:
            raise DockerfileError("secret mount should not define sharing")
        if not any(k in opts for k in ("source", "target", "id")):
            raise DockerfileError("invalid secret mount. one of source, target required")
        if "source" in opts and "id" in opts:
            raise DockerfileError("both source and id can't be set")
    if "sharing" in opts and mount_type != "cache":
        raise DockerfileError(f"invalid cache sharing set for {mount_type} mount")
    return Mount(readonly=readonly, **opts)  # type: ignore[arg-type]


_RAM_RE = re.compile(r"^(\d+(?:\.\d+)*) ?([kKmMgGtTpP])?[iI]?[bB]?$")
_RAM_UNITS = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}


def parse_ram_size(value: str) -> int:
    """docker/go-units ``RAMInBytes``: ``64m``, ``1GiB``, ``512`` (binary multiples)."""
    match = _RAM_RE.match(value)
    if match is None:
        raise DockerfileError(f"invalid value for size: {value}")
    try:
        number = float(match.group(1))
    except ValueError as exc:
        raise DockerfileError(f"invalid value for size: {value}") from exc
    unit = match.group(2)
    return int(number * (_RAM_UNITS[unit.lower()] if unit else 1))


# --- Go durations (HEALTHCHECK --interval etc.) ---

_DURATION_UNITS = {
    "ns": 1, "us": 1_000, "µs": 1_000, "μs": 1_000, "ms": 1_000_000,
    "s": 1_000_000_000, "m": 60_000_000_000, "h": 3_600_000_000_000,
}
_DURATION_PART = re.compile(r"(\d*)(?:\.(\d*))?([^\d.]*)")
_MAX_DURATION = (1 << 63) - 1


def parse_duration(text: str) -> int:
    """Go's ``time.ParseDuration`` in nanoseconds: ``30s``, ``1m30s``, ``1.5h``, ``-2ms``,
    ``0``. Errors carry Go's wording."""
    quoted = '"' + text + '"'
    body = text
    negative = False
    if body[:1] in "+-" and body:
        negative = body[0] == "-"
        body = body[1:]
    if body == "0":
        return 0
    if body == "":
        raise DockerfileError(f"time: invalid duration {quoted}")
    total = 0
    pos = 0
    while pos < len(body):
        match = _DURATION_PART.match(body, pos)
        assert match is not None  # the pattern can match the empty string
        whole, frac, unit = match.group(1), match.group(2), match.group(3)
        if whole == "" and not frac:
            raise DockerfileError(f"time: invalid duration {quoted}")
        if unit == "":
            raise DockerfileError(f"time: missing unit in duration {quoted}")
        if unit not in _DURATION_UNITS:
            raise DockerfileError(f'time: unknown unit "{unit}" in duration {quoted}')
        scale = _DURATION_UNITS[unit]
        total += int(whole or "0") * scale
        if frac:
            total += int(frac) * scale // 10 ** len(frac)
        if total > _MAX_DURATION + (1 if negative else 0):
            raise DockerfileError(f"time: invalid duration {quoted}")
        pos = match.end()
    return -total if negative else total


_MIN_HEALTH_DURATION = 1_000_000  # Docker's container.MinimumDuration, 1ms


def health_duration(parsed: ParsedFlags, name: str) -> int | None:
    """A HEALTHCHECK duration flag in ns (BuildKit ``parseOptInterval``); None when absent
    or zero, as Docker then omits it from the config."""
    value = parsed.string(name)
    if value is None or value == "":
        return None
    try:
        duration = parse_duration(value)
    except DockerfileError as exc:
        raise DockerfileError(f"invalid value for --{name}: {exc.message}") from exc
    if duration == 0:
        return None
    if duration < _MIN_HEALTH_DURATION:
        raise DockerfileError(f'interval "{name}" cannot be less than 1ms')
    return duration


def health_retries(value: str | None) -> int | None:
    """``HEALTHCHECK --retries``: a non-negative 32-bit integer; None when absent or 0."""
    if value is None or value == "":
        return None
    if not re.fullmatch(r"[+-]?[0-9]+", value) or not -(2**31) <= int(value) < 2**31:
        raise DockerfileError(f"invalid value for --retries: {value}")
    retries = int(value)
    if retries < 0:
        raise DockerfileError(f"--retries cannot be negative ({retries})")
    return retries or None
