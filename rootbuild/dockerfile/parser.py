"""Dockerfile text -> typed, located instructions: rootbuild's one adapter over dockerfile-parse.

Job: turn a Dockerfile into ``rootbuild.dockerfile.instructions`` values the way BuildKit's
front end does (moby/buildkit frontend/dockerfile/parser/parser.go, line_parsers.go,
split_command.go and instructions/parse.go), so a Dockerfile means here what it means to
``docker build``.

How the work is split:
- Parser directives (``# escape=``, ``# syntax=``, ``# check=``) are read here first, with
  BuildKit's rules: only at the top, case-insensitive keys, each at most once, the first
  line that is not a directive ends them.
- ``heredoc.scan`` walks the lines as BuildKit does and takes heredoc bodies out
  (dockerfile-parse does not know heredocs and would read their lines as instructions).
- dockerfile-parse's ``structure`` groups the remaining text into instructions (start and
  end lines). Its quirks are corrected by rewriting its input, never its answer, and
  every correction is tested: the escape directive is put on a line of its own first
  and the file's directive lines are normalised to a form it knows (it stops at
  ``# check=``), empty lines inside a continuation become comment lines
  (it ends the instruction there; BuildKit skips them with a warning), a line ending in
  an escaped escape (``foo \\\\``) gets a sentinel (it continues such lines; BuildKit does
  not), and every line ends with a newline (it drops a one-word last line such as
  ``CMD``). Its ``value`` is not used: ``original`` is re-joined from the raw lines by
  BuildKit's rules (first line left-trimmed, continuation lines kept as written, comment
  and blank continuation lines skipped), and the keyword is taken from it (dockerfile-
  parse reads ``RUN\\`` + newline as the keyword ``RUN\\``).
- Each instruction's words are then split per instruction as BuildKit's line parsers do
  and kept unexpanded; flags go through ``flags.py``.

Heredoc sources of COPY/ADD appear in ``sources`` as ``"<<NAME"`` (the name without
quotes or ``-``), matching one ``Heredoc`` of the instruction by name. RUN keeps the
command text as written (``"<<EOF"``, ``"python3 <<EOF"``) plus its ``heredocs``.
Line endings ``\\r\\n`` are read as ``\\n``; a leading UTF-8 BOM is dropped.
"""

from __future__ import annotations

import difflib
import io
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from dockerfile_parse import DockerfileParser

from rootbuild.dockerfile import flags as fl
from rootbuild.dockerfile import heredoc as hd
from rootbuild.dockerfile.instructions import (
    INSTRUCTION_TYPES,
    Add,
    Arg,
    Cmd,
    Command,
    Copy,
    Directives,
    Dockerfile,
    Entrypoint,
    Env,
    ExecCommand,
    Expose,
    From,
    Healthcheck,
    Heredoc,
    Instruction,
    Label,
    Maintainer,
    Onbuild,
    Run,
    Shell,
    ShellCommand,
    StageSpec,
    StopSignal,
    User,
    Volume,
    Workdir,
)
from rootbuild.dockerfile.words import (
    TOKEN_WS,
    json_array,
    name_values,
    parse_words,
    split_command,
    whitespace_words,
)
from rootbuild.errors import DockerfileError, Location

__all__ = ["parse_dockerfile", "parse_instruction"]

_DIRECTIVE_RE = re.compile(r"^#\s*([a-zA-Z][a-zA-Z0-9]*)\s*=\s*(.+?)\s*$")
_VALID_DIRECTIVES = ("syntax", "escape", "check")
_STAGE_NAME_RE = re.compile(r"^[a-z][a-z0-9\-_.]*$")
_ONBUILD_PREFIX = re.compile(r"^\s*ONBUILD\s*", re.IGNORECASE)
_HEREDOC_KEYWORDS = ("RUN", "COPY", "ADD")


# ---------------------------------------------------------------- whole file


def parse_dockerfile(text: str, name: str = "Dockerfile") -> Dockerfile:
    """Parse a whole Dockerfile: directives, meta ARGs (before the first FROM), stages."""
    lines = _split_lines(text)
    directives, directive_count = _read_directives(lines, name)
    groups, warnings = _group(lines, directives.escape, name, directive_count)
    if not groups:
        raise DockerfileError("file with no instructions", Location(name, max(len(lines), 1)))
    meta: list[Arg] = []
    stages: list[tuple[From, list[Instruction]]] = []
    for group in groups:
        location = Location(name, group.start + 1, group.end + 1)
        instruction = _build(group.text, group.heredocs, location, directives.escape)
        if isinstance(instruction, From):
            stages.append((instruction, []))
        elif stages:
            stages[-1][1].append(instruction)
        elif isinstance(instruction, Arg):
            meta.append(instruction)
        else:
            raise DockerfileError(
                f"no build stage in current context: {instruction.keyword} before the first FROM",
                location,
            )
    if not stages:
        raise DockerfileError("dockerfile contains no stages to build", Location(name, 1))
    return Dockerfile(
        name=name,
        directives=directives,
        meta_args=tuple(meta),
        stages=tuple(
            StageSpec(index, from_, tuple(body)) for index, (from_, body) in enumerate(stages)
        ),
        warnings=tuple(warnings),
    )


def parse_instruction(text: str, location: Location, escape: str = "\\") -> Instruction:
    """Parse one instruction (an ONBUILD trigger, possibly followed by its heredoc
    bodies). Every error carries ``location``."""
    lines = _split_lines(text)
    groups, _ = _group(lines, escape, location.file, 0, location)
    if len(groups) != 1:
        raise DockerfileError(
            f"expected exactly one instruction, found {len(groups)}: {text!r}", location
        )
    return _build(groups[0].text, groups[0].heredocs, location, escape)


def _split_lines(text: str) -> list[str]:
    text = text.removeprefix("\ufeff").replace("\r\n", "\n")
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return lines


def _read_directives(lines: Sequence[str], name: str) -> tuple[Directives, int]:
    """BuildKit's DirectiveParser; returns the directives and how many lines they take."""
    seen: dict[str, str] = {}
    count = 0
    for index, raw in enumerate(lines):
        match = _DIRECTIVE_RE.match(raw.lstrip())
        key = match.group(1).lower() if match else ""
        if match is None or key not in _VALID_DIRECTIVES:
            break
        if key in seen:
            raise DockerfileError(
                f"only one {key} parser directive can be used", Location(name, index + 1)
            )
        seen[key] = match.group(2)
        count = index + 1
    escape = seen.get("escape", "\\")
    if escape not in ("\\", "`"):
        raise DockerfileError(
            f"invalid escape token '{escape}' does not match ` or \\", Location(name, 1)
        )
    return Directives(escape=escape, syntax=seen.get("syntax")), count


# ---------------------------------------------------------------- line grouping


@dataclass(frozen=True)
class _Group:
    start: int  # 0-based
    end: int  # 0-based, inclusive, heredoc bodies included
    text: str  # BuildKit's Original
    heredocs: tuple[Heredoc, ...]


def _group(
    lines: list[str],
    escape: str,
    name: str,
    directive_count: int,
    fixed: Location | None = None,
) -> tuple[list[_Group], list[str]]:
    """Group lines into instructions via dockerfile-parse (see the module docstring)."""
    try:
        scanned = hd.scan(lines, escape, _wants_heredocs, name)
    except DockerfileError as exc:
        if fixed is None:
            raise
        raise DockerfileError(exc.message, fixed) from exc
    bodies = {lg.start: lg for lg in scanned.logical if lg.heredocs}
    fed = _input_for_dockerfile_parse(scanned, escape, directive_count)
    # Only line numbers are read back, so an unencodable (surrogate) character may
    # become "?" here without changing any answer.
    parser = DockerfileParser(fileobj=io.BytesIO(fed.encode("utf-8", "replace")))
    regex = hd.continuation_regex(escape)
    groups: list[_Group] = []
    for entry in parser.structure:
        if entry["instruction"] == "COMMENT":
            continue
        # -1: the escape directive line put first; min(): the extra last line (see below)
        start = int(entry["startline"]) - 1
        end = min(int(entry["endline"]) - 1, len(lines) - 1)
        text = _join(lines[start : end + 1], regex)
        heredocs: tuple[Heredoc, ...] = ()
        if start in bodies:
            end, heredocs = bodies[start].end, bodies[start].heredocs
        groups.append(_Group(start, end, text, heredocs))
    if sorted(bodies) != sorted(g.start for g in groups if g.heredocs):
        # Both walks follow BuildKit's line rules; disagreeing is a bug, not bad input.
        raise AssertionError("heredoc scan and dockerfile-parse disagree on instruction lines")
    warnings = [
        f"{name}:{index + 1}: empty continuation line (such lines will become errors"
        " in a future Docker release)"
        for index in scanned.empty_continuations
    ]
    return groups, warnings


def _wants_heredocs(line: str) -> bool:
    """BuildKit's canContainHeredoc: RUN/COPY/ADD (or ONBUILD of one) not in JSON form."""
    keyword, _, args = split_command(line)
    if keyword.upper() == "ONBUILD":
        keyword, _, args = split_command(args)
    if keyword.upper() not in _HEREDOC_KEYWORDS:
        return False
    return json_array(args) is None


def _input_for_dockerfile_parse(scanned: hd.HeredocScan, escape: str, directives: int) -> str:
    """Rewrite the lines so dockerfile-parse groups them as BuildKit does."""
    lines = list(scanned.stripped)
    for index in range(directives):
        lines[index] = "# syntax=directive"
    for index in scanned.empty_continuations:
        lines[index] = "#"
    ours = hd.continuation_regex(escape)
    theirs = re.compile(r"^.*" + re.escape(escape) + r"\s*$")
    for index, line in enumerate(lines):
        if not hd.is_comment(line) and theirs.match(line) and not ours.search(line):
            lines[index] = line + " ."
    # The escape directive goes first, always, as dockerfile-parse learns the escape
    # only from there (parse_instruction has no directive lines of its own). One extra
    # empty line goes last: dockerfile-parse drops an instruction whose continuation
    # runs to the end of the file; BuildKit keeps it.
    return f"# escape={escape}\n" + "".join(line + "\n" for line in lines) + "\n"


def _join(lines: Sequence[str], regex: re.Pattern[str]) -> str:
    """BuildKit's joining of an instruction's lines into its ``Original``."""
    text, cont = hd.trim_continuation(lines[0].lstrip(), regex)
    for raw in lines[1:]:
        if not cont:
            break
        if hd.is_comment(raw) or raw.strip() == "":
            continue
        piece, cont = hd.trim_continuation(raw, regex)
        text += piece
    return text


# ---------------------------------------------------------------- instructions


@dataclass(frozen=True)
class _Request:
    keyword: str
    flag_words: list[str]
    args: str
    original: str
    heredocs: tuple[Heredoc, ...]
    location: Location
    escape: str

    def flags(self, accepted: dict[str, fl.FlagKind] | None = None) -> fl.ParsedFlags:
        return fl.parse_flags(self.flag_words, accepted or {})


def _build(
    original: str, heredocs: tuple[Heredoc, ...], location: Location, escape: str
) -> Instruction:
    word, flag_words, args = split_command(original)
    keyword = word.upper()
    builder = _BUILDERS.get(keyword)
    try:
        if builder is None:
            close = difflib.get_close_matches(keyword, list(INSTRUCTION_TYPES), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise DockerfileError(f"unknown instruction: {keyword}{hint}")
        return builder(_Request(keyword, flag_words, args, original, heredocs, location, escape))
    except DockerfileError as exc:
        if exc.location is not None:
            raise
        raise DockerfileError(exc.message, location) from exc


def _command(args: str) -> tuple[Command, bool]:
    """parseMaybeJSON + handleJSONArgs: exec form for a JSON string array, else the text."""
    argv = json_array(args)
    if argv is not None:
        return ExecCommand(tuple(argv)), True
    return ShellCommand(args), False


def _exactly_one(req: _Request) -> str:
    req.flags()
    if req.args == "":
        raise DockerfileError(f"{req.keyword} requires exactly one argument")
    return req.args


def _from(req: _Request) -> From:
    words = whitespace_words(req.args)
    alias = None
    if len(words) == 3 and words[1].lower() == "as":
        alias = words[2].lower()
        if not _STAGE_NAME_RE.match(alias):
            raise DockerfileError(
                f"invalid name for build stage: {json.dumps(words[2])},"
                " name can't start with a number or contain symbols"
            )
    elif len(words) != 1:
        raise DockerfileError("FROM requires either one or three arguments")
    parsed = req.flags({"platform": "string"})
    return From(req.location, req.original, words[0], alias, parsed.string("platform"))


def _run(req: _Request) -> Run:
    parsed = req.flags({"mount": "strings", "network": "string", "security": "string",
                        "device": "strings"})
    command, _ = _command(req.args)
    return Run(
        req.location,
        req.original,
        command,
        mounts=tuple(fl.parse_mount(value) for value in parsed.strings("mount")),
        network=fl.check_network(parsed.string("network")),
        security=fl.check_security(parsed.string("security")),
        heredocs=req.heredocs,
        devices=tuple(fl.parse_device(value) for value in parsed.strings("device")),
    )


def _cmd(req: _Request) -> Cmd:
    req.flags()
    return Cmd(req.location, req.original, _command(req.args)[0])


def _entrypoint(req: _Request) -> Entrypoint:
    req.flags()
    return Entrypoint(req.location, req.original, _command(req.args)[0])


def _shell(req: _Request) -> Shell:
    req.flags()
    argv = json_array(req.args)
    if argv is None and req.args:
        raise DockerfileError("SHELL requires the arguments to be in JSON form")
    if not argv:
        raise DockerfileError("SHELL requires at least one argument")
    return Shell(req.location, req.original, tuple(argv))


def _sources_and_dest(req: _Request) -> tuple[tuple[str, ...], str, tuple[Heredoc, ...]]:
    argv = json_array(req.args)
    words = argv if argv is not None else whitespace_words(req.args)
    if len(words) < 2:
        raise DockerfileError(
            f"{req.keyword} requires at least two arguments, but only one was provided."
            " Destination could not be determined"
        )
    if argv is None and hd.parse_heredoc_word(words[-1]) is not None:
        raise DockerfileError(f"{req.keyword} cannot accept a heredoc as a destination")
    sources = []
    for word in words[:-1]:
        marker = hd.parse_heredoc_word(word) if argv is None else None
        sources.append(f"<<{marker.name}" if marker else word)
    return tuple(sources), words[-1], req.heredocs


def _copy(req: _Request) -> Copy:
    sources, dest, heredocs = _sources_and_dest(req)
    parsed = req.flags(
        {"from": "string", "chown": "string", "chmod": "string", "link": "bool",
         "parents": "bool", "exclude": "strings"}
    )
    return Copy(
        req.location, req.original, sources, dest,
        from_=parsed.string("from"), chown=parsed.string("chown"),
        chmod=parsed.string("chmod"), link=bool(parsed.boolean("link")),
        parents=bool(parsed.boolean("parents")), excludes=parsed.strings("exclude"),
        heredocs=heredocs,
    )


def _add(req: _Request) -> Add:
    sources, dest, heredocs = _sources_and_dest(req)
    parsed = req.flags(
        {"chown": "string", "chmod": "string", "link": "bool", "checksum": "string",
         "keep-git-dir": "bool", "unpack": "bool", "exclude": "strings"}
    )
    return Add(
        req.location, req.original, sources, dest,
        chown=parsed.string("chown"), chmod=parsed.string("chmod"),
        link=bool(parsed.boolean("link")), checksum=parsed.string("checksum"),
        keep_git_dir=bool(parsed.boolean("keep-git-dir")), unpack=parsed.boolean("unpack"),
        excludes=parsed.strings("exclude"), heredocs=heredocs,
    )


def _env(req: _Request) -> Env:
    req.flags()
    return Env(req.location, req.original, tuple(name_values(req.args, "ENV", req.escape)))


def _label(req: _Request) -> Label:
    req.flags()
    return Label(req.location, req.original, tuple(name_values(req.args, "LABEL", req.escape)))


def _arg(req: _Request) -> Arg:
    req.flags()
    words = parse_words(req.args, req.escape)
    if not words:
        raise DockerfileError("ARG requires at least one argument")
    pairs: list[tuple[str, str | None]] = []
    for word in words:
        key, has_value, value = word.partition("=")
        if has_value and key == "":
            raise DockerfileError("ARG names can not be blank")
        pairs.append((key, value if has_value else None))
    return Arg(req.location, req.original, tuple(pairs))


def _expose(req: _Request) -> Expose:
    req.flags()
    ports = whitespace_words(req.args)
    if not ports:
        raise DockerfileError("EXPOSE requires at least one argument")
    return Expose(req.location, req.original, tuple(sorted(ports)))


def _user(req: _Request) -> User:
    return User(req.location, req.original, _exactly_one(req))


def _workdir(req: _Request) -> Workdir:
    return Workdir(req.location, req.original, _exactly_one(req))


def _stopsignal(req: _Request) -> StopSignal:
    return StopSignal(req.location, req.original, _exactly_one(req))


def _maintainer(req: _Request) -> Maintainer:
    return Maintainer(req.location, req.original, _exactly_one(req))


def _volume(req: _Request) -> Volume:
    req.flags()
    argv = json_array(req.args)
    words = argv if argv is not None else whitespace_words(req.args)
    if not words:
        raise DockerfileError("VOLUME requires at least one argument")
    paths = tuple(word.strip() for word in words)
    if "" in paths:
        raise DockerfileError("VOLUME specified can not be an empty string")
    return Volume(req.location, req.original, paths)


def _onbuild(req: _Request) -> Onbuild:
    req.flags()
    if req.args == "":
        raise DockerfileError("ONBUILD requires at least one argument")
    trigger_keyword = TOKEN_WS.split(req.args, maxsplit=1)[0].upper()
    if trigger_keyword == "ONBUILD":
        raise DockerfileError("chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed")
    if trigger_keyword in ("MAINTAINER", "FROM"):
        raise DockerfileError(f"{trigger_keyword} isn't allowed as an ONBUILD trigger")
    trigger = _ONBUILD_PREFIX.sub("", req.original, count=1)
    for doc in req.heredocs:
        trigger += "\n" + doc.content + doc.name
    return Onbuild(req.location, req.original, trigger)


def _healthcheck(req: _Request) -> Healthcheck:
    parsed = req.flags(
        {"interval": "string", "timeout": "string", "start-period": "string",
         "start-interval": "string", "retries": "string"}
    )
    if req.args == "":
        raise DockerfileError("HEALTHCHECK requires at least one argument")
    parts = req.args.split(maxsplit=1)
    kind, rest = parts[0].upper(), parts[1] if len(parts) > 1 else ""
    if kind == "NONE":
        if rest:
            raise DockerfileError("HEALTHCHECK NONE takes no arguments")
        return Healthcheck(req.location, req.original, ("NONE",))
    if kind != "CMD":
        raise DockerfileError(f"unknown type {json.dumps(kind)} in HEALTHCHECK (try CMD)")
    command, _ = _command(rest)
    if isinstance(command, ExecCommand):
        if not command.argv:
            raise DockerfileError("missing command after HEALTHCHECK CMD")
        test: tuple[str, ...] = ("CMD", *command.argv)
    else:
        if not command.text:
            raise DockerfileError("missing command after HEALTHCHECK CMD")
        test = ("CMD-SHELL", command.text)
    return Healthcheck(
        req.location, req.original, test,
        interval=fl.health_duration(parsed, "interval"),
        timeout=fl.health_duration(parsed, "timeout"),
        start_period=fl.health_duration(parsed, "start-period"),
        start_interval=fl.health_duration(parsed, "start-interval"),
        retries=fl.health_retries(parsed.string("retries")),
    )


_BUILDERS: dict[str, Callable[[_Request], Instruction]] = {
    "FROM": _from,
    "RUN": _run,
    "CMD": _cmd,
    "ENTRYPOINT": _entrypoint,
    "SHELL": _shell,
    "COPY": _copy,
    "ADD": _add,
    "ENV": _env,
    "LABEL": _label,
    "ARG": _arg,
    "EXPOSE": _expose,
    "USER": _user,
    "WORKDIR": _workdir,
    "STOPSIGNAL": _stopsignal,
    "MAINTAINER": _maintainer,
    "VOLUME": _volume,
    "ONBUILD": _onbuild,
    "HEALTHCHECK": _healthcheck,
}
assert set(_BUILDERS) == set(INSTRUCTION_TYPES)
