"""Typed, located Dockerfile instructions: what the front end produces.

Rules:
- Every instruction is a frozen value carrying its ``Location`` and its ``original`` text
  (the instruction as written, continuations joined, used for history and errors).
- Words are kept *unexpanded*: variable substitution depends on the ARG/ENV state at the
  point of execution, which the stage evaluator in ``rootbuild.stages`` tracks. The
  instruction says which of its words Docker substitutes; nothing else does.
- Every flag (``--from``, ``--chown``, ``--mount`` ...) is parsed here into a typed field
  and never re-parsed later.
- This module has no I/O and imports nothing outside the standard library and
  ``rootbuild.errors``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from rootbuild.errors import Location


@dataclass(frozen=True)
class Heredoc:
    """One here-document: ``<<EOF`` (expand=True), ``<<"EOF"``/``<<'EOF'`` (expand=False),
    ``<<-EOF`` (chomp=True: leading tabs stripped from every line, already applied to
    ``content``). ``content`` ends with a newline unless empty."""

    name: str
    content: str
    expand: bool = True
    chomp: bool = False


@dataclass(frozen=True)
class ShellCommand:
    """Shell form: run ``text`` through the stage's SHELL (default ``/bin/sh -c``)."""

    text: str


@dataclass(frozen=True)
class ExecCommand:
    """Exec (JSON array) form: run ``argv`` as given."""

    argv: tuple[str, ...]


Command = ShellCommand | ExecCommand


@dataclass(frozen=True)
class Mount:
    """One ``RUN --mount=...`` (BuildKit syntax). ``type`` is bind (default), cache, tmpfs,
    secret or ssh. ``from_`` names a stage or image for bind/cache mounts. Options this
    class has no field for are kept in ``extra`` (sorted key/value pairs)."""

    type: str = "bind"
    target: str | None = None
    source: str | None = None
    from_: str | None = None
    readonly: bool | None = None
    id: str | None = None
    sharing: str | None = None
    mode: int | None = None
    uid: int | None = None
    gid: int | None = None
    required: bool | None = None
    env: str | None = None
    size: int | None = None
    extra: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Device:
    """One ``RUN --device=NAME[,required=BOOL]`` (BuildKit's labs syntax,
    instructions/commands_rundevice.go). ``name`` is a device the builder's host provides."""

    name: str
    required: bool = False


@dataclass(frozen=True)
class Instruction:
    location: Location
    original: str

    @property
    def keyword(self) -> str:
        return type(self).__name__.upper()


@dataclass(frozen=True)
class From(Instruction):
    image: str  # unexpanded; expanded with the global (meta) ARGs only
    alias: str | None = None
    platform: str | None = None  # unexpanded --platform value


@dataclass(frozen=True)
class Run(Instruction):
    command: Command
    mounts: tuple[Mount, ...] = ()
    network: str | None = None  # --network=default|none|host
    security: str | None = None  # --security=insecure|sandbox
    heredocs: tuple[Heredoc, ...] = ()
    devices: tuple[Device, ...] = ()  # --device=NAME[,required]


@dataclass(frozen=True)
class Copy(Instruction):
    sources: tuple[str, ...]  # unexpanded; heredoc sources appear as "<<NAME"
    dest: str  # unexpanded
    from_: str | None = None  # stage name, stage index or image reference (unexpanded)
    chown: str | None = None  # unexpanded "user[:group]"
    chmod: str | None = None  # unexpanded octal (or symbolic) mode
    link: bool = False
    parents: bool = False
    excludes: tuple[str, ...] = ()
    heredocs: tuple[Heredoc, ...] = ()


@dataclass(frozen=True)
class Add(Instruction):
    sources: tuple[str, ...]
    dest: str
    chown: str | None = None
    chmod: str | None = None
    link: bool = False
    checksum: str | None = None
    keep_git_dir: bool = False
    unpack: bool | None = None
    excludes: tuple[str, ...] = ()
    heredocs: tuple[Heredoc, ...] = ()


@dataclass(frozen=True)
class Env(Instruction):
    pairs: tuple[tuple[str, str], ...]  # values unexpanded, quotes and escapes kept


@dataclass(frozen=True)
class Arg(Instruction):
    # name -> default (None when no default). Names are literal; defaults unexpanded.
    args: tuple[tuple[str, str | None], ...]


@dataclass(frozen=True)
class Label(Instruction):
    pairs: tuple[tuple[str, str], ...]  # keys and values unexpanded, quotes kept


@dataclass(frozen=True)
class Expose(Instruction):
    ports: tuple[str, ...]  # unexpanded, e.g. "80", "53/udp", "8000-8010/tcp"


@dataclass(frozen=True)
class User(Instruction):
    user: str  # unexpanded "user[:group]"


@dataclass(frozen=True)
class Workdir(Instruction):
    path: str  # unexpanded


@dataclass(frozen=True)
class Volume(Instruction):
    paths: tuple[str, ...]  # unexpanded; from JSON or whitespace-separated form


@dataclass(frozen=True)
class Entrypoint(Instruction):
    command: Command


@dataclass(frozen=True)
class Cmd(Instruction):
    command: Command


@dataclass(frozen=True)
class Shell(Instruction):
    argv: tuple[str, ...]  # JSON form only, as Docker requires


@dataclass(frozen=True)
class Healthcheck(Instruction):
    """``test`` is Docker's Healthcheck.Test: ("NONE",), ("CMD", *argv) or
    ("CMD-SHELL", text). Durations are nanoseconds; None means "not given" (Docker
    omits them from the config)."""

    test: tuple[str, ...]
    interval: int | None = None
    timeout: int | None = None
    start_period: int | None = None
    start_interval: int | None = None
    retries: int | None = None


@dataclass(frozen=True)
class StopSignal(Instruction):
    signal: str  # unexpanded


@dataclass(frozen=True)
class Onbuild(Instruction):
    trigger: str  # the trigger instruction's text, e.g. "RUN echo hi" (stored as written)


@dataclass(frozen=True)
class Maintainer(Instruction):
    name: str


@dataclass(frozen=True)
class Directives:
    escape: str = "\\"
    syntax: str | None = None  # accepted and ignored (noted to the user)


@dataclass(frozen=True)
class StageSpec:
    """One ``FROM`` and the instructions up to the next ``FROM``. ``index`` is 0-based.
    ``onbuild`` holds the base's ONBUILD triggers, parsed and located at the ``FROM``
    line, once the build has learnt them (they run before ``instructions``)."""

    index: int
    from_: From
    instructions: tuple[Instruction, ...] = ()
    onbuild: tuple[Instruction, ...] = ()

    @property
    def name(self) -> str | None:
        return self.from_.alias


@dataclass(frozen=True)
class Dockerfile:
    """A parsed Dockerfile. ``meta_args`` are the ARGs before the first FROM."""

    name: str  # display name used in locations, e.g. "Dockerfile"
    directives: Directives
    meta_args: tuple[Arg, ...]
    stages: tuple[StageSpec, ...]
    warnings: tuple[str, ...] = field(default=())


INSTRUCTION_TYPES: dict[str, type[Instruction]] = {
    cls.__name__.upper(): cls
    for cls in (
        From, Run, Copy, Add, Env, Arg, Label, Expose, User, Workdir, Volume,
        Entrypoint, Cmd, Shell, Healthcheck, StopSignal, Onbuild, Maintainer,
    )
}
