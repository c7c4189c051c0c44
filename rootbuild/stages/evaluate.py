"""Dispatch semantics: what each Dockerfile instruction does to a stage's config, its
variable scope and its history, and what the executor must run for it.

Rules (BuildKit ``frontend/dockerfile/dockerfile2llb/convert.go`` ``dispatch*``):
- ``apply(state, instruction)`` is a pure function returning the next ``StageState`` and a
  ``Step``; every word Docker substitutes is expanded in the Step, nothing else is.
- Substitution: ADD, COPY (sources, dest, ``--chown``, ``--chmod``; ADD ``--checksum``),
  ENV, EXPOSE (split into words), LABEL, STOPSIGNAL, USER, VOLUME, WORKDIR, ARG defaults,
  ``RUN --mount`` values and ``<<EOF`` (unquoted) heredoc bodies of COPY/ADD. Never RUN,
  CMD, ENTRYPOINT, SHELL, HEALTHCHECK, MAINTAINER, ONBUILD (triggers expand when they run).
  ``COPY --from`` and ``--mount from=`` are not expanded here: the stage plan resolved them
  in the global scope, and the step carries what they name (``StageState.resolve``).
- The substitution environment is the stage's environment: the image's Env overlaid, in
  instruction order, by ENV and by ARGs with a value (``rootbuild.stages.args``).
- History: one entry per instruction except ONBUILD, ``comment: buildkit.dockerfile.v0``,
  ``created_by`` formatted exactly as BuildKit's ``commitToHistory`` calls do; metadata
  instructions are ``empty_layer``; RUN/COPY/ADD and WORKDIR (other than ``/``) make a layer.
- ONBUILD triggers of the base run first, as ordinary instructions of the child stage: the
  plan put them there (``stages.onbuild``) before the stage graph was built; ``begin_stage``
  clears ``OnBuild`` in the child's config, as BuildKit does.
- Pure: no os, no trio.
"""

from __future__ import annotations

import dataclasses
import posixpath
import re
from collections.abc import Callable, Mapping

from rootbuild.dockerfile.instructions import (
    Add,
    Arg,
    Cmd,
    Copy,
    Entrypoint,
    Env,
    ExecCommand,
    Expose,
    Healthcheck,
    Heredoc,
    Instruction,
    Label,
    Maintainer,
    Mount,
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
from rootbuild.dockerfile.instructions import Command as CommandForm
from rootbuild.dockerfile.substitution import expand, expand_words
from rootbuild.errors import DockerfileError
from rootbuild.stages.args import NON_ENV_ARGS, resolve_stage_arg, run_history_args
from rootbuild.stages.config import (
    DEFAULT_PATH,
    HISTORY_COMMENT,
    HealthConfig,
    HistoryEntry,
    ImageConfig,
    check_signal,
    go_healthcheck,
    go_list,
    go_quote_list,
    parse_port_spec,
)
from rootbuild.stages.graph import MOUNT_TYPES_WITH_SOURCE, StageBase
from rootbuild.stages.paths import dest_relative_to_workdir, go_clean, normalize_workdir
from rootbuild.stages.steps import (
    CopyStep,
    MetadataStep,
    RunStep,
    StageState,
    Step,
    StepMount,
    WorkdirStep,
)

SSH_TARGET = "/run/buildkit/ssh_agent.{}"  # RUN --mount=type=ssh with no target
PIPES_DIR = "/dev/pipes/"  # where BuildKit mounts a ``#!`` RUN heredoc


# -- stage start ----------------------------------------------------------------------------


def begin_stage(
    base_config: ImageConfig,
    stage: StageSpec,
    meta: Mapping[str, str],
    build_args: Mapping[str, str],
    predefined: Mapping[str, str],
    *,
    escape: str,
    parent: StageState | None = None,
    refs: tuple[tuple[str, StageBase], ...] = (),
) -> StageState:
    """The state before the stage's first instruction (BuildKit ``dispatchStages``).

    ``base_config`` is the base image's config (``ImageConfig.scratch`` for ``FROM
    scratch``), or the final config of ``parent`` when the stage is built FROM an earlier
    stage; ``parent`` then passes on its environment and declared ARGs (BuildKit
    ``dispatchState.init``). ``created`` and ``OnBuild`` are cleared: the plan already
    put the base's triggers first (``stages.onbuild``). ``refs`` is the stage plan's
    ``refs``: what each ``--from``/``from=`` word of the stage (triggers included) names.
    """
    del stage  # the FROM line itself changes nothing here; kept for the caller's symmetry
    config = dataclasses.replace(base_config, created=None, onbuild=())
    env: dict[str, str] = dict(parent.env) if parent is not None else {}
    if config.os != "windows" and all(k != "PATH" for k, _ in config.env_pairs()):
        config = dataclasses.replace(config, env=(*config.env, f"PATH={DEFAULT_PATH}"))
    for key, value in config.env_pairs():
        env[key] = value
    if config.working_dir:
        config = dataclasses.replace(
            config, working_dir=normalize_workdir(config.working_dir, config.working_dir)
        )
    return StageState(
        config=config,
        env=tuple(env.items()),
        args=parent.args if parent is not None else (),
        global_args=tuple({**predefined, **meta}.items()),
        build_args=tuple(build_args.items()),
        escape=escape,
        refs=refs,
    )


def onbuild_triggers(config: ImageConfig) -> tuple[str, ...]:
    """The ONBUILD triggers a stage built on ``config`` runs before its own instructions,
    in order. Each is an instruction's text (``"RUN make"``) for the front end to parse."""
    return config.onbuild


# -- apply ----------------------------------------------------------------------------------

_Handler = Callable[[StageState, Instruction, str], tuple[StageState, Step]]
_HANDLERS: dict[type[Instruction], _Handler] = {}


def _handles(kind: type[Instruction]) -> Callable[[_Handler], _Handler]:
    def register(fn: _Handler) -> _Handler:
        _HANDLERS[kind] = fn
        return fn

    return register


def apply(state: StageState, instr: Instruction, *, now: str) -> tuple[StageState, Step]:
    """Apply one instruction; ``now`` (RFC 3339) stamps its history entry."""
    handler = _HANDLERS.get(type(instr))
    if handler is None:
        raise DockerfileError(f"{instr.keyword}: not allowed inside a stage", instr.location)
    return handler(state, instr, now)


def _history(created_by: str, now: str, *, layer: bool = False) -> HistoryEntry:
    return HistoryEntry(
        created=now,
        created_by=created_by + (" # buildkit" if layer else ""),
        comment=HISTORY_COMMENT,
        empty_layer=not layer,
    )


def _expand(state: StageState, word: str, instr: Instruction) -> str:
    return expand(word, state.scope, escape=state.escape, location=instr.location)


def _metadata(
    state: StageState, config: ImageConfig, created_by: str, now: str
) -> tuple[StageState, Step]:
    """Commit a metadata-only change: ``config`` plus a history entry with no layer."""
    entry = _history(created_by, now)
    return dataclasses.replace(state, config=config.with_history(entry)), MetadataStep(entry)


def _set_env(env: tuple[tuple[str, str], ...], key: str, value: str) -> tuple[tuple[str, str], ...]:
    merged = dict(env)
    merged[key] = value
    return tuple(merged.items())


@_handles(Env)
def _env(state: StageState, instr: Instruction, now: str) -> tuple[StageState, Step]:
    assert isinstance(instr, Env)
    # All pairs are expanded against the environment *before* the instruction (BuildKit
    # expands the whole command, then dispatches): ``ENV a=x b=$a`` uses the old ``a``.
    pairs = [(_expand(state, k, instr), _expand(state, v, instr)) for k, v in instr.pairs]
    config, env = state.config, state.env
    for key, value in pairs:
        config = config.with_env(key, value)
        env = _set_env(env, key, value)
    text = "ENV " + " ".join(f"{k}={v}" for k, v in pairs)
    return _metadata(dataclasses.replace(state, env=env), config, text, now)


@_handles(Arg)
def _arg(state: StageState, instr: Instruction, now: str) -> tuple[StageState, Step]:
    assert isinstance(instr, Arg)
    env, args, parts = state.env, list(state.args), []
    for name, default in instr.args:
        value = resolve_stage_arg(
            name, default,
            build_args=dict(state.build_args), global_args=dict(state.global_args),
            env=dict(env), escape=state.escape, location=instr.location,
        )
        if value is not None and name not in NON_ENV_ARGS:
            env = _set_env(env, name, value)
        args.append((name, value))
        parts.append(name if value is None else f"{name}={value}")
    new = dataclasses.replace(state, env=env, args=tuple(args))
    return _metadata(new, state.config, "ARG " + " ".join(parts), now)


@_handles(Label)
def _label(state: StageState, instr: Instruction, now: str) -> tuple[StageState, Step]:
    assert isinstance(instr, Label)
    pairs = [(_expand(state, k, instr), _expand(state, v, instr)) for k, v in instr.pairs]
    text = "LABEL " + " ".join(f"{k}={v}" for k, v in pairs)
    return _metadata(state, state.config.with_labels(pairs), text, now)


@_handles(Expose)
def _expose(state: StageState, instr: Instruction, now: str) -> tuple[StageState, Step]:
    assert isinstance(instr, Expose)
    words: list[str] = []
    for port in instr.ports:
        words += expand_words(port, state.scope, escape=state.escape, location=instr.location)
    ports: list[str] = []
    for word in words:
        ports += parse_port_spec(word, instr.location)
    return _metadata(state, state.config.with_exposed_ports(ports), f"EXPOSE {go_list(ports)}", now)


@_handles(User)
def _user(state: StageState, instr: Instruction, now: str) -> tuple[StageState, Step]:
    assert isinstance(instr, User)
    user = _expand(state, instr.user, instr)
    return _metadata(state, dataclasses.replace(state.config, user=user), f"USER {user}", now)


@_handles(Workdir)
def _workdir(state: StageState, instr: Instruction, now: str) -> tuple[StageState, Step]:
    assert isinstance(instr, Workdir)
    path = _expand(state, instr.path, instr)
    if not path:
        raise DockerfileError("WORKDIR: cannot normalize empty path", instr.location)
    wd = normalize_workdir(state.config.working_dir, path)
    config = dataclasses.replace(state.config, working_dir=wd)
    if wd == "/":
        return _metadata(state, config, f"WORKDIR {wd}", now)
    # BuildKit commits WORKDIR with a layer (a mkdir FileOp) but without " # buildkit".
    entry = HistoryEntry(created=now, created_by=f"WORKDIR {wd}", comment=HISTORY_COMMENT)
    new = dataclasses.replace(state, config=config.with_history(entry))
    return new, WorkdirStep(path=wd, user=config.user, history=entry)


@_handles(Volume)
def _volume(state: StageState, instr: Instruction, now: str) -> tuple[StageState, Step]:
    assert isinstance(instr, Volume)
    paths = [_expand(state, p, instr) for p in instr.paths]
    if any(p == "" for p in paths):
        raise DockerfileError("VOLUME: specified path can not be an empty string", instr.location)
    return _metadata(state, state.config.with_volumes(paths), f"VOLUME {go_list(paths)}", now)


@_handles(StopSignal)
def _stopsignal(state: StageState, instr: Instruction, now: str) -> tuple[StageState, Step]:
    assert isinstance(instr, StopSignal)
    signal = _expand(state, instr.signal, instr)
    check_signal(signal, instr.location)
    config = dataclasses.replace(state.config, stop_signal=signal)
    return _metadata(state, config, f"STOPSIGNAL {signal}", now)


@_handles(Shell)
def _shell(state: StageState, instr: Instruction, now: str) -> tuple[StageState, Step]:
    assert isinstance(instr, Shell)
    config = dataclasses.replace(state.config, shell=instr.argv)
    return _metadata(state, config, f"SHELL {go_list(instr.argv)}", now)


def _argv(state: StageState, command: CommandForm) -> tuple[str, ...]:
    """BuildKit ``withShell``: shell form runs as ``SHELL + [text]``; exec form as given."""
    if isinstance(command, ShellCommand):
        return (*state.shell, command.text)
    return command.argv


@_handles(Cmd)
def _cmd(state: StageState, instr: Instruction, now: str) -> tuple[StageState, Step]:
    assert isinstance(instr, Cmd)
    argv = _argv(state, instr.command)
    config = dataclasses.replace(state.config, cmd=argv, args_escaped=True)
    return _metadata(dataclasses.replace(state, cmd_set=True), config,
                     f"CMD {go_quote_list(argv)}", now)


@_handles(Entrypoint)
def _entrypoint(state: StageState, instr: Instruction, now: str) -> tuple[StageState, Step]:
    assert isinstance(instr, Entrypoint)
    argv = _argv(state, instr.command)
    config = dataclasses.replace(state.config, entrypoint=argv)
    if not state.cmd_set:  # an inherited CMD is dropped; a CMD of this stage is kept
        config = dataclasses.replace(config, cmd=None)
    return _metadata(state, config, f"ENTRYPOINT {go_quote_list(argv)}", now)


@_handles(Healthcheck)
def _healthcheck(state: StageState, instr: Instruction, now: str) -> tuple[StageState, Step]:
    assert isinstance(instr, Healthcheck)
    health = HealthConfig(
        test=instr.test,
        interval=instr.interval or 0,
        timeout=instr.timeout or 0,
        start_period=instr.start_period or 0,
        start_interval=instr.start_interval or 0,
        retries=instr.retries or 0,
    )
    config = dataclasses.replace(state.config, healthcheck=health)
    return _metadata(state, config, f"HEALTHCHECK {go_healthcheck(health)}", now)


@_handles(Onbuild)
def _onbuild(state: StageState, instr: Instruction, now: str) -> tuple[StageState, Step]:
    assert isinstance(instr, Onbuild)
    # BuildKit ``dispatchOnbuild`` records the trigger and commits no history entry.
    config = dataclasses.replace(state.config, onbuild=(*state.config.onbuild, instr.trigger))
    return dataclasses.replace(state, config=config), MetadataStep(None)


@_handles(Maintainer)
def _maintainer(state: StageState, instr: Instruction, now: str) -> tuple[StageState, Step]:
    assert isinstance(instr, Maintainer)
    config = dataclasses.replace(state.config, author=instr.name)
    return _metadata(state, config, f"MAINTAINER {instr.name}", now)


# -- RUN ------------------------------------------------------------------------------------

#: a RUN command that is one heredoc alone (BuildKit runs its body itself)
#: URL and git source prefixes of ADD (COPY refuses them here)
REMOTE_PREFIXES = ("http://", "https://", "git@", "git://", "ssh://")
SINGLE_HEREDOC = re.compile(r"^\d*<<-?\s*(?P<name>[^<\s]+)$")


@_handles(Run)
def _run(state: StageState, instr: Instruction, now: str) -> tuple[StageState, Step]:
    assert isinstance(instr, Run)
    files: tuple[tuple[str, str], ...] = ()
    if isinstance(instr.command, ExecCommand):
        if instr.heredocs:
            raise DockerfileError("RUN: heredocs need the shell form", instr.location)
        argv = instr.command.argv
    else:
        text = instr.command.text
        if instr.heredocs:
            text, files = _run_heredoc_text(text, instr.heredocs)
        argv = (*state.shell, text)
    workdir = state.config.working_dir or "/"
    mounts = tuple(
        StepMount(
            _expand_mount(state, m, instr, workdir),
            state.resolve(m.from_, "RUN --mount from", instr)
            if m.from_ is not None and m.type in MOUNT_TYPES_WITH_SOURCE else None,
        )
        for m in instr.mounts
    )
    mounts = _ssh_targets(mounts)
    words = [*run_history_args(state.args, state.scope), *argv]
    entry = _history("RUN " + " ".join(words), now, layer=True)
    step = RunStep(
        command=argv,
        env=state.run_env(),
        user=state.config.user,
        workdir=workdir,
        mounts=mounts,
        network=instr.network,
        security=instr.security,
        heredoc_files=files,
        history=entry,
        devices=instr.devices,
    )
    return dataclasses.replace(state, config=state.config.with_history(entry)), step


def _run_heredoc_text(
    text: str, heredocs: tuple[Heredoc, ...]
) -> tuple[str, tuple[tuple[str, str], ...]]:
    """BuildKit ``dispatchRun``: a command that is one heredoc alone runs its body (a body
    starting with ``#!`` as a script mounted under /dev/pipes/); otherwise the heredocs
    are appended to the command text for the shell to read. Bodies are not expanded."""
    if len(heredocs) == 1 and SINGLE_HEREDOC.match(text.strip()):
        doc = heredocs[0]
        if doc.content.startswith("#!"):
            path = PIPES_DIR + doc.name
            return path, ((path, doc.content),)
        return doc.content, ()
    parts = [text]
    for doc in heredocs:
        parts.append("\n" + doc.content + doc.name)
    return "".join(parts), ()


def _ssh_targets(mounts: tuple[StepMount, ...]) -> tuple[StepMount, ...]:
    """BuildKit's LLB exec: a ``type=ssh`` mount with no target gets
    ``/run/buildkit/ssh_agent.N``, N its place among the step's ssh mounts."""
    out: list[StepMount] = []
    for item in mounts:
        if item.mount.type == "ssh" and not item.mount.target:
            target = SSH_TARGET.format(sum(m.mount.type == "ssh" for m in out))
            item = dataclasses.replace(item, mount=dataclasses.replace(item.mount, target=target))
        out.append(item)
    return tuple(out)


def _expand_mount(state: StageState, mount: Mount, instr: Instruction, workdir: str) -> Mount:
    def ex(value: str | None) -> str | None:
        return None if value is None else _expand(state, value, instr)

    target = ex(mount.target)
    if target is not None and not target.startswith("/"):
        target = go_clean(posixpath.join("/", workdir, target))
    return dataclasses.replace(
        mount,
        target=target,
        source=ex(mount.source),
        id=ex(mount.id),
        env=ex(mount.env),
        extra=tuple((k, _expand(state, v, instr)) for k, v in mount.extra),
    )


# -- COPY / ADD -----------------------------------------------------------------------------

_OCTAL = re.compile(r"^[0-7]+$")
_SYMBOLIC_MODE = re.compile(r"^[ugoa]*[-+=]([rwxXst]*|[ugo])([-+=]([rwxXst]*|[ugo]))*"
                            r"(,[ugoa]*[-+=]([rwxXst]*|[ugo])([-+=]([rwxXst]*|[ugo]))*)*$")


@_handles(Copy)
@_handles(Add)
def _copy(state: StageState, instr: Instruction, now: str) -> tuple[StageState, Step]:
    assert isinstance(instr, Copy | Add)
    is_add = isinstance(instr, Add)
    keyword = "ADD" if is_add else "COPY"
    names = {"<<" + doc.name for doc in instr.heredocs}
    sources = tuple(_expand(state, s, instr) for s in instr.sources if s not in names)
    dest_word = _expand(state, instr.dest, instr)
    chown = _expand(state, instr.chown, instr) if instr.chown is not None else None
    chmod = _expand(state, instr.chmod, instr) if instr.chmod is not None else None
    checksum = None
    from_: StageBase | None = None
    if isinstance(instr, Add):
        checksum = _expand(state, instr.checksum, instr) if instr.checksum is not None else None
    elif instr.from_ is not None:
        from_ = state.resolve(instr.from_, "COPY --from", instr)
    _check_copy(keyword, sources, chmod, checksum, instr)
    heredocs = tuple(
        dataclasses.replace(doc, content=expand_heredoc(doc.content, state.scope, instr))
        if doc.expand else doc
        for doc in instr.heredocs
    )
    parts = [keyword]
    if isinstance(instr, Copy) and instr.parents:
        parts.append("--parents")
    if chown:
        parts.append(f"--chown={chown}")
    if chmod:
        parts.append(f"--chmod={chmod}")
    parts += [*map(_without_password, sources), *("<<" + doc.name for doc in heredocs),
              dest_word]
    entry = _history(" ".join(parts), now, layer=True)
    step = CopyStep(
        is_add=is_add,
        sources=sources,
        dest=dest_relative_to_workdir(state.config.working_dir, dest_word),
        from_=from_,
        chown=chown or None,
        chmod=chmod or None,
        link=instr.link,
        parents=isinstance(instr, Copy) and instr.parents,
        excludes=instr.excludes,
        heredocs=heredocs,
        checksum=checksum or None,
        keep_git_dir=isinstance(instr, Add) and instr.keep_git_dir,
        unpack=instr.unpack if isinstance(instr, Add) else None,
        history=entry,
    )
    return dataclasses.replace(state, config=state.config.with_history(entry)), step


_URL_PASSWORD = re.compile(r"^((?:https?|git|ssh)://[^/@:]*):[^/@]*@")
_URL_TOKEN = re.compile(r"^(https?://)[^/@:]+@")


def _without_password(src: str) -> str:
    """A source as the image history shows it: a URL's password (or an HTTP URL's lone
    token) replaced by ``xxxxx`` (BuildKit's ``urlutil.RedactCredentials``), so no
    credential reaches the config."""
    return _URL_TOKEN.sub(r"\1xxxxx@", _URL_PASSWORD.sub(r"\1:xxxxx@", src))


def _is_remote(src: str) -> bool:
    return src.startswith(REMOTE_PREFIXES)


def _check_copy(
    keyword: str, sources: tuple[str, ...], chmod: str | None, checksum: str | None,
    instr: Instruction,
) -> None:
    loc = instr.location
    if chmod:
        octal = chmod.isdigit()
        if (octal and (not _OCTAL.match(chmod) or int(chmod, 8) > 0o7777)) or (
            not octal and not _SYMBOLIC_MODE.match(chmod)
        ):
            raise DockerfileError(
                f"{keyword}: invalid chmod parameter: '{chmod}'. it should be octal string"
                " and between 0 and 07777", loc)
    if keyword == "COPY":
        for src in sources:
            if _is_remote(src):
                raise DockerfileError(f"COPY: source can't be a URL or git ref: {src}", loc)
    if checksum:
        if len(sources) != 1:
            raise DockerfileError("ADD: checksum can't be specified for multiple sources", loc)
        if not _is_remote(sources[0]):
            raise DockerfileError("ADD: checksum requires HTTP(S) or Git sources", loc)


def expand_heredoc(content: str, env: Mapping[str, str], instr: Instruction) -> str:
    """Expand an unquoted ``<<EOF`` body like BuildKit's ``ExpandRaw`` (a lexer with
    ``SkipProcessQuotes``, escape ``\\`` whatever ``# escape=`` says): ``$`` expands and
    ``\\`` escapes, but quotes are ordinary characters. Escaping each unescaped quote
    before ``expand`` gives exactly that."""
    out: list[str] = []
    i = 0
    while i < len(content):
        ch = content[i]
        if ch == "\\":
            out.append(content[i:i + 2])
            i += 2
            continue
        out.append("\\" + ch if ch in "\"'" else ch)
        i += 1
    return expand("".join(out), env, escape="\\", location=instr.location)
