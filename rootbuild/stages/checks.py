"""Build checks: BuildKit's Dockerfile lint rules (``docker build --check``), with BuildKit's
rule names and message wording.

Job: given the parsed Dockerfile, its text and what the plan learnt of each stage's base
image, say which rules fire where; and read the ``# check=`` parser directive (or the
``BUILDKIT_DOCKERFILE_CHECK`` build arg, which overrides it) that skips rules, enables the
experimental ones and turns warnings into an error.

Rules (moby/buildkit ``frontend/dockerfile/linter/ruleset.go`` for names and formats,
``dockerfile2llb/convert.go`` and ``instructions/parse.go`` for when each fires; the
reference is https://docs.docker.com/reference/build-checks/):
- Every rule BuildKit enables by default is implemented, and the experimental ones (off
  unless ``experimental=`` names them) ``InvalidDefinitionDescription`` and
  ``CopyIgnoredFile`` (given the context's ignore rules; a source holding a variable is
  not judged). ``InvalidBaseImagePlatform`` needs the fetched base image: the engine
  reports it (``engine/lint.py``), under the same ``# check=`` rules.
- ``# check=skip=A,B;error=true;experimental=C`` (``skip=all``, ``experimental=all``);
  an unknown option or a bad boolean is a ``DockerfileError`` at the directive's line,
  as BuildKit refuses it.
- ``UndefinedVar`` looks at the words BuildKit expands (never RUN's command): a variable
  is defined when it is in the stage's environment (the base image's Env, ENV, ARG with
  a value) or declared by an ARG; every reference counts, ``${x:-default}`` too, as
  BuildKit's lexer records it. A stage whose base image is unknown (``bases`` lacks it:
  the engine fetches the bases of the stages the target needs) is not checked for it.
- Warnings come in Dockerfile order, each at its instruction's first line.
- Pure: no I/O.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

from rootbuild.dockerfile.dockerignore import IgnoreMatcher
from rootbuild.dockerfile.instructions import (
    Add,
    Arg,
    Cmd,
    Copy,
    Dockerfile,
    Entrypoint,
    Env,
    ExecCommand,
    Expose,
    From,
    Healthcheck,
    Instruction,
    Label,
    Maintainer,
    Run,
    Shell,
    StopSignal,
    User,
    Volume,
    Workdir,
)
from rootbuild.dockerfile.substitution import expand
from rootbuild.dockerfile.words import split_command
from rootbuild.errors import DockerfileError, Location
from rootbuild.stages.args import NON_ENV_ARGS, PREDEFINED_PLATFORM_ARGS
from rootbuild.stages.config import ImageConfig

DOCS = "https://docs.docker.com/go/dockerfile/rule/"
CHECK_ARG = "BUILDKIT_DOCKERFILE_CHECK"

_WarnFn = Callable[[str, str, Location], None]


@dataclass(frozen=True)
class Rule:
    name: str
    description: str
    experimental: bool = False

    @property
    def url(self) -> str:
        slug = re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "-", self.name)
        return f"{DOCS}{slug.lower()}/"


RULES: dict[str, Rule] = {rule.name: rule for rule in (
    Rule("StageNameCasing", "Stage names should be lowercase"),
    Rule("FromAsCasing", "The 'as' keyword should match the case of the 'from' keyword"),
    Rule("NoEmptyContinuation", "Empty continuation lines will become errors in a future "
         "release"),
    Rule("ConsistentInstructionCasing", "All commands within the Dockerfile should use the "
         "same casing (either upper or lower)"),
    Rule("DuplicateStageName", "Stage names should be unique"),
    Rule("ReservedStageName", "Reserved words should not be used as stage names"),
    Rule("JSONArgsRecommended", "JSON arguments recommended for ENTRYPOINT/CMD to prevent "
         "unintended behavior related to OS signals"),
    Rule("MaintainerDeprecated", "The MAINTAINER instruction is deprecated, use a label "
         "instead to define an image author"),
    Rule("UndefinedArgInFrom", "FROM command must use declared ARGs"),
    Rule("WorkdirRelativePath", "Relative workdir without an absolute workdir declared "
         "within the build can have unexpected results if the base image changes"),
    Rule("UndefinedVar", "Variables should be defined before their use"),
    Rule("MultipleInstructionsDisallowed", "Multiple instructions of the same type should "
         "not be used in the same stage"),
    Rule("LegacyKeyValueFormat", "Legacy key/value format with whitespace separator should "
         "not be used"),
    Rule("RedundantTargetPlatform", "Setting platform to predefined $TARGETPLATFORM in FROM "
         "is redundant as this is the default behavior"),
    Rule("SecretsUsedInArgOrEnv", "Sensitive data should not be used in the ARG or ENV "
         "commands"),
    Rule("InvalidDefaultArgInFrom", "Default value for global ARG results in an empty or "
         "invalid base image name"),
    Rule("FromPlatformFlagConstDisallowed", "FROM --platform flag should not use a constant "
         "value"),
    Rule("ExposeProtoCasing", "Protocol in EXPOSE instruction should be lowercase"),
    Rule("InvalidBaseImagePlatform", "Base image platform does not match expected target "
         "platform"),
    Rule("CopyIgnoredFile", "Attempting to Copy file that is excluded by .dockerignore",
         experimental=True),
    Rule("InvalidDefinitionDescription", "Comment for build stage or argument should follow "
         "the format: `# <arg/stage name> <description>`. If this is not intended to be a "
         "description comment, add an empty line or comment between the instruction and "
         "the comment.", experimental=True),
)}


@dataclass(frozen=True)
class CheckWarning:
    """One rule firing: ``message`` is BuildKit's text for it."""

    rule: str
    message: str
    location: Location

    @property
    def url(self) -> str:
        return RULES[self.rule].url

    def __str__(self) -> str:
        return f"{self.location}: {self.rule}: {self.message}"


@dataclass(frozen=True)
class CheckConfig:
    """What ``# check=`` asks: rules skipped, experimental rules on, warnings as error."""

    skip: frozenset[str] = frozenset()
    skip_all: bool = False
    error: bool = False
    experimental: frozenset[str] = frozenset()
    experimental_all: bool = False

    def enabled(self, rule: str) -> bool:
        if self.skip_all or rule in self.skip:
            return False
        if RULES[rule].experimental:
            return self.experimental_all or rule in self.experimental
        return True


def parse_check_config(value: str, location: Location | None = None) -> CheckConfig:
    """BuildKit's ``linter.ParseLintOptions``: ``skip=A,B;error=true;experimental=C``."""
    value = value.strip()
    if not value:
        return CheckConfig()
    skip: set[str] = set()
    experimental: set[str] = set()
    skip_all = experimental_all = error = False
    for part in value.split(";", 2):
        key, sep, raw = part.partition("=")
        if not sep:
            raise DockerfileError(f'invalid check option "{part}"', location)
        key, raw = key.strip(), raw.strip()
        if key == "skip":
            if raw == "all":
                skip_all = True
            else:
                skip |= {name.strip() for name in raw.split(",")}
        elif key == "experimental":
            if raw == "all":
                experimental_all = True
            else:
                experimental |= {name.strip() for name in raw.split(",")}
        elif key == "error":
            parsed = _go_bool(raw)
            if parsed is None:
                raise DockerfileError(
                    f'failed to parse check option "{part}": strconv.ParseBool: parsing '
                    f'"{raw}": invalid syntax', location)
            error = parsed
        else:
            raise DockerfileError(f'invalid check option "{key}"', location)
    return CheckConfig(frozenset(skip), skip_all, error, frozenset(experimental),
                       experimental_all)


def _go_bool(text: str) -> bool | None:
    if text in ("1", "t", "T", "TRUE", "true", "True"):
        return True
    if text in ("0", "f", "F", "FALSE", "false", "False"):
        return False
    return None


_DIRECTIVE = re.compile(r"^#\s*([a-zA-Z][a-zA-Z0-9]*)\s*=\s*(.+?)\s*$")


def check_config(text: str, name: str, build_args: Mapping[str, str]) -> CheckConfig:
    """The checks a build runs: ``--build-arg BUILDKIT_DOCKERFILE_CHECK=...`` if given,
    else the ``# check=`` directive among the file's leading directives, else defaults."""
    if CHECK_ARG in build_args:
        return parse_check_config(build_args[CHECK_ARG])
    for index, raw in enumerate(text.splitlines()):
        match = _DIRECTIVE.match(raw.lstrip())
        if match is None or match.group(1).lower() not in ("syntax", "escape", "check"):
            break
        if match.group(1).lower() == "check":
            return parse_check_config(match.group(2), Location(name, index + 1))
    return CheckConfig()


# -- the rules -----------------------------------------------------------------------------


class _AnyEnv(Mapping[str, str]):
    """An environment that has every name: expansion never fails, ``used`` sees all."""

    def __getitem__(self, key: str) -> str:
        return "x"

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0


def referenced(word: str, escape: str, location: Location) -> list[str]:
    """Every variable ``word`` refers to, in order of first use."""
    used: set[str] = set()
    order: list[str] = []

    class _Recording(_AnyEnv):
        def __getitem__(self, key: str) -> str:
            if key not in used:
                order.append(key)
            used.add(key)
            return "x"

    with contextlib.suppress(DockerfileError):  # a malformed word fails the build itself
        expand(word, _Recording(), escape=escape, location=location)
    return order


def suggest(name: str, options: Mapping[str, object] | set[str] | frozenset[str]) -> str:
    """The closest of ``options`` to ``name`` (a likely typo), or ""."""
    best, best_dist = "", 3
    for option in sorted(options):
        if option.lower() == name.lower():
            return option
        dist = _distance(name, option)
        if dist < best_dist and dist < len(name):
            best, best_dist = option, dist
    return best


def _distance(a: str, b: str) -> int:
    """Levenshtein distance with adjacent transpositions (``PAHT`` is 1 from ``PATH``)."""
    rows = [list(range(len(b) + 1))]
    for i in range(1, len(a) + 1):
        row = [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            cost = 0 if a[i - 1] == b[j - 1] else 1
            row[j] = min(rows[-1][j] + 1, row[j - 1] + 1, rows[-1][j - 1] + cost)
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                row[j] = min(row[j], rows[-2][j - 2] + 1)
        rows.append(row)
    return rows[-1][-1]


_SECRET = re.compile(r"(?i)(?:_|^)(?:apikey|auth|credential|credentials|key|password|pword|"
                     r"passwd|secret|token)(?:_|$)")
_SECRET_ALLOWED = re.compile(r"(?i)(?:_|^)(?:public)(?:_|$)")
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REFERENCE = re.compile(
    rf"^(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9-]+)*(?::[0-9]+)?/)?"
    rf"{_COMPONENT}(?:/{_COMPONENT})*(?::[\w][\w.-]{{0,127}})?"
    rf"(?:@[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{{32,}})?$"
)
_RESERVED_STAGE_NAMES = ("context", "scratch")
# the platform ARGs always have a value; any valid one shows whether a FROM word resolves
_PLATFORM_DEFAULTS = (
    ("BUILDPLATFORM", "linux/amd64"), ("BUILDOS", "linux"), ("BUILDARCH", "amd64"),
    ("BUILDVARIANT", ""), ("TARGETPLATFORM", "linux/amd64"), ("TARGETOS", "linux"),
    ("TARGETARCH", "amd64"), ("TARGETVARIANT", ""),
)
_ONCE_PER_STAGE = (Cmd, Entrypoint, Healthcheck)


@dataclass
class _StageScope:
    env: set[str]
    declared: set[str]
    shell: bool
    workdir_set: bool


def run_checks(
    dockerfile: Dockerfile,
    text: str,
    *,
    config: CheckConfig,
    bases: Mapping[int, ImageConfig] | None = None,
    ignore: IgnoreMatcher | None = None,
) -> tuple[CheckWarning, ...]:
    """Every enabled rule's warnings for ``dockerfile`` (parsed from ``text``). ``bases``:
    the config of each stage's base image when it is an image (``scratch`` included), by
    stage index; stages built on an earlier stage inherit that stage's scope. ``ignore``:
    the build context's ignore rules (for ``CopyIgnoredFile``)."""
    bases = bases or {}
    found: list[CheckWarning] = []

    def warn(rule: str, message: str, location: Location) -> None:
        if config.enabled(rule):
            found.append(CheckWarning(rule, message, Location(location.file, location.line)))

    lines = text.splitlines()
    escape = dockerfile.directives.escape
    nodes: list[Instruction] = [*dockerfile.meta_args]
    for stage in dockerfile.stages:
        nodes += [stage.from_, *stage.instructions]

    _casing(nodes, warn)
    _empty_continuations(dockerfile, nodes, warn)
    meta_names = {name for arg in dockerfile.meta_args for name, _ in arg.args}
    meta_defaults: dict[str, str] = {}
    for arg in dockerfile.meta_args:
        _secrets("ARG", arg, [name for name, _ in arg.args], warn)
        _description(arg, lines, [name for name, _ in arg.args], warn)
        for name, default in arg.args:
            if default is not None:
                value = expand(default, meta_defaults, escape=escape, location=arg.location)
                meta_defaults[name] = value

    seen_names: set[str] = set()
    scopes: dict[int, _StageScope] = {}
    stage_names: dict[str, int] = {}
    for stage in dockerfile.stages:
        from_ = stage.from_
        _from_rules(from_, escape, meta_names, meta_defaults, seen_names, lines, warn)
        base_word = from_.image.lower()
        parent = scopes.get(stage_names[base_word]) if base_word in stage_names else None
        if parent is not None:
            scope: _StageScope | None = _StageScope(set(parent.env), set(parent.declared),
                                                    parent.shell, parent.workdir_set)
        elif stage.index in bases:
            base = bases[stage.index]
            scope = _StageScope({k for k, _ in base.env_pairs()} | {"PATH"}, set(),
                                bool(base.shell), False)
        else:
            scope = None
        scope = _stage_rules(stage.instructions, scope, escape, warn)
        if ignore is not None:
            _ignored_sources(stage.instructions, ignore, warn)
        if scope is not None:
            scopes[stage.index] = scope
        if stage.name:
            stage_names[stage.name.lower()] = stage.index
    found.sort(key=lambda w: w.location.line)
    return tuple(found)


def _keyword(instr: Instruction) -> str:
    return instr.original.split(None, 1)[0] if instr.original.strip() else instr.keyword


def _casing(nodes: list[Instruction], warn: _WarnFn) -> None:
    words = [_keyword(node) for node in nodes]
    consistent = [w for w in words if w in (w.lower(), w.upper())]
    lower = sum(1 for w in consistent if w == w.lower())
    majority_lower = lower > len(consistent) - lower
    for node, word in zip(nodes, words, strict=True):
        correct = ""
        if majority_lower and word != word.lower():
            correct = "lowercase"
        elif not majority_lower and word != word.upper():
            correct = "uppercase"
        if correct:
            warn("ConsistentInstructionCasing",
                 f"Command '{word}' should match the case of the command majority ({correct})",
                 node.location)


def _empty_continuations(dockerfile: Dockerfile, nodes: list[Instruction], warn: _WarnFn
                         ) -> None:
    for warning in dockerfile.warnings:
        match = re.match(rf"^{re.escape(dockerfile.name)}:(\d+): empty continuation line",
                         warning)
        if match is None:
            continue
        line = int(match.group(1))
        owner = max((n for n in nodes if n.location.line < line),
                    key=lambda n: n.location.line, default=None)
        if owner is not None:
            warn("NoEmptyContinuation", "Empty continuation line", owner.location)


def _secrets(keyword: str, instr: Instruction, names: list[str], warn: _WarnFn) -> None:
    for name in names:
        if _SECRET.search(name) and not _SECRET_ALLOWED.search(name):
            warn("SecretsUsedInArgOrEnv",
                 f'Do not use ARG or ENV instructions for sensitive data ({keyword} "{name}")',
                 instr.location)


def _description(instr: Instruction, lines: list[str], names: list[str], warn: _WarnFn
                 ) -> None:
    """InvalidDefinitionDescription: a comment right above a named stage or a one-name ARG
    must start with that name."""
    if len(names) != 1 or instr.location.line < 2:
        return
    above = lines[instr.location.line - 2].strip()
    if not above.startswith("#") or _DIRECTIVE.match(above):
        return
    words = above[1:].split()
    if words and words[0] == names[0]:
        return
    what = "build stage" if isinstance(instr, From) else "argument"
    warn("InvalidDefinitionDescription",
         f"Comment for {what} should follow the format: `# {names[0]} <description>`",
         instr.location)


def _from_rules(from_: From, escape: str, meta_names: set[str], meta_defaults: dict[str, str],
                seen_names: set[str], lines: list[str], warn: _WarnFn) -> None:
    keyword, _, rest = split_command(from_.original)
    args = rest.split()
    loc = from_.location
    if len(args) >= 3:
        as_word = args[1]
        if (keyword == keyword.lower() and as_word != as_word.lower()) or (
            keyword == keyword.upper() and as_word != as_word.upper()
        ):
            warn("FromAsCasing", f"'{as_word}' and '{keyword}' keywords' casing do not match",
                 loc)
        written = args[2]
        if written != written.lower():
            warn("StageNameCasing", f"Stage name '{written}' should be lowercase", loc)
    name = from_.alias.lower() if from_.alias else None
    if name is not None:
        if name in seen_names:
            warn("DuplicateStageName",
                 f'Duplicate stage name "{name}", stage names should be unique', loc)
        seen_names.add(name)
        if name in _RESERVED_STAGE_NAMES:
            warn("ReservedStageName",
                 f'Stage name should not use the same name as reserved stage "{name}"', loc)
        _description(from_, lines, [name], warn)
    known = meta_names | set(PREDEFINED_PLATFORM_ARGS) | {"TARGETSTAGE"}
    for word in (from_.image, from_.platform or ""):
        for var in referenced(word, escape, loc):
            if var not in known:
                hint = suggest(var, known)
                warn("UndefinedArgInFrom", f"FROM argument '{var}' is not declared"
                     + (f" (did you mean {hint}?)" if hint else ""), loc)
    if "$" in from_.image:
        defaults = dict(_PLATFORM_DEFAULTS) | meta_defaults
        try:
            base = expand(from_.image, defaults, escape=escape, location=loc)
        except DockerfileError:
            base = ""
        if not base or not _REFERENCE.match(base):
            warn("InvalidDefaultArgInFrom",
                 f"Default value for ARG {from_.image} results in empty or invalid base "
                 "image name", loc)
    platform = from_.platform
    if platform is not None:
        if platform in ("$TARGETPLATFORM", "${TARGETPLATFORM}"):
            warn("RedundantTargetPlatform",
                 f"Setting platform to predefined {platform} in FROM is redundant as this "
                 "is the default behavior", loc)
        elif "$" not in platform:
            parts = platform.split("/")
            if not name or not any(p and p in name for p in parts[:2]):
                warn("FromPlatformFlagConstDisallowed",
                     f'FROM --platform flag should not use constant value "{platform}"', loc)


def _ignored_sources(instructions: tuple[Instruction, ...], ignore: IgnoreMatcher,
                     warn: _WarnFn) -> None:
    """CopyIgnoredFile: a COPY/ADD source of the build context its ignore file excludes."""
    for instr in instructions:
        if not isinstance(instr, Copy | Add) or (isinstance(instr, Copy) and instr.from_):
            continue
        names = {"<<" + doc.name for doc in instr.heredocs}
        for src in instr.sources:
            if src in names or "$" in src or "://" in src or src.startswith("git@"):
                continue
            if ignore.ignored(src.lstrip("/") or "."):
                cmd = "Add" if isinstance(instr, Add) else "Copy"
                warn("CopyIgnoredFile",
                     f'Attempting to {cmd} file "{src}" that is excluded by .dockerignore',
                     instr.location)


def _expanded_words(instr: Instruction) -> list[str]:
    """The words of ``instr`` BuildKit expands (and so lints for UndefinedVar)."""
    if isinstance(instr, Env | Label):
        return [w for pair in instr.pairs for w in pair]
    if isinstance(instr, Copy | Add):
        names = {"<<" + doc.name for doc in instr.heredocs}
        words = [s for s in instr.sources if s not in names] + [instr.dest]
        words += [w for w in (instr.chown, instr.chmod) if w is not None]
        if isinstance(instr, Add) and instr.checksum is not None:
            words.append(instr.checksum)
        return words
    if isinstance(instr, Expose):
        return list(instr.ports)
    if isinstance(instr, Volume):
        return list(instr.paths)
    if isinstance(instr, User):
        return [instr.user]
    if isinstance(instr, Workdir):
        return [instr.path]
    if isinstance(instr, StopSignal):
        return [instr.signal]
    if isinstance(instr, Run):
        return [w for m in instr.mounts for w in (m.target, m.source, m.id, m.env)
                if w is not None] + [v for m in instr.mounts for _, v in m.extra]
    return []


def _stage_rules(instructions: tuple[Instruction, ...], scope: _StageScope | None,
                 escape: str, warn: _WarnFn) -> _StageScope | None:
    last: dict[type[Instruction], Instruction] = {}
    workdir_set = scope.workdir_set if scope is not None else False
    for instr in instructions:
        for kind in _ONCE_PER_STAGE:
            if isinstance(instr, kind):
                if kind in last:
                    previous = last[kind]
                    warn("MultipleInstructionsDisallowed",
                         f"Multiple {previous.keyword} instructions should not be used in the "
                         "same stage because only the last one will be used",
                         previous.location)
                last[kind] = instr
        if isinstance(instr, Maintainer):
            warn("MaintainerDeprecated",
                 "Maintainer instruction is deprecated in favor of using label", instr.location)
        if (isinstance(instr, Cmd | Entrypoint) and not isinstance(instr.command, ExecCommand)
                and (scope is None or not scope.shell)):
            warn("JSONArgsRecommended",
                 f"JSON arguments recommended for {instr.keyword} to prevent unintended "
                 "behavior related to OS signals", instr.location)
        if isinstance(instr, Env | Label):
            _, _, rest = split_command(instr.original)
            first = rest.split(None, 1)[0] if rest else ""
            if first and "=" not in first:
                warn("LegacyKeyValueFormat",
                     f'"{instr.keyword} key=value" should be used instead of legacy '
                     f'"{instr.keyword} key value" format', instr.location)
        if isinstance(instr, Expose):
            for port in instr.ports:
                proto = port.partition("/")[2]
                if proto and proto != proto.lower():
                    warn("ExposeProtoCasing",
                         f"Defined protocol '{port}' in EXPOSE instruction should be lowercase",
                         instr.location)
        if isinstance(instr, Workdir):
            if instr.path.startswith("/") or instr.path.startswith("$"):
                workdir_set = workdir_set or instr.path.startswith("/")
            elif not workdir_set:
                warn("WorkdirRelativePath",
                     f'Relative workdir "{instr.path}" can have unexpected results if the '
                     "base image changes", instr.location)
        if isinstance(instr, Env):
            _secrets("ENV", instr, [k for k, _ in instr.pairs], warn)
        if isinstance(instr, Arg):
            _secrets("ARG", instr, [name for name, _ in instr.args], warn)
        if scope is not None:
            _undefined(instr, scope, escape, warn)
            if isinstance(instr, Shell):
                scope.shell = True
    if scope is not None:
        scope.workdir_set = workdir_set
    return scope


def _undefined(instr: Instruction, scope: _StageScope, escape: str, warn: _WarnFn) -> None:
    if isinstance(instr, Arg):
        for name, default in instr.args:
            if default is not None:
                _report(instr, default, scope, escape, warn)
                scope.env.add(name)
            scope.declared.add(name)
        return
    for word in _expanded_words(instr):
        _report(instr, word, scope, escape, warn)
    if isinstance(instr, Env):
        scope.env.update(k for k, _ in instr.pairs)


def _report(instr: Instruction, word: str, scope: _StageScope, escape: str,
            warn: _WarnFn) -> None:
    for var in referenced(word, escape, instr.location):
        if var in scope.env or var in scope.declared or var in NON_ENV_ARGS:
            continue
        hint = suggest(var, scope.env)
        warn("UndefinedVar", f"Usage of undefined variable '${var}'"
             + (f" (did you mean ${hint}?)" if hint else ""), instr.location)
