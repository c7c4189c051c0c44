"""The secrets and SSH agents a build was given, and what each RUN step gets from them.

Job: parse ``--secret`` and ``--ssh`` (buildx's syntax), read the secret values once
(``load_secrets``), refuse at plan time a ``required`` secret or ssh id the build was not
given (``check_required``), and turn each ``type=secret``/``type=ssh`` mount into what
the sandbox gets (``secret_mount``, ``ssh_mount``: the ``MountType``s of
``engine/run_mounts.py`` call them): a secret file (``SecretMount``) and variable (values in
memory only, ``sandbox/secrets.py``), an agent socket as a ``Bind``; and ``mask_of``: the
``OutputMask`` that hides every value the step prints.

Rules (Docker's reference, "RUN --mount=type=secret" and "type=ssh"; BuildKit
dockerfile2llb ``dispatchSecret``/``dispatchSSH``):
- secret: ``id`` defaults to ``source``, else the base name of ``target``; ``target``
  defaults to ``/run/secrets/<base name of id>``; ``env=NAME`` exposes the value as that
  variable of this step only (with no ``target``, no file); mode 0400, uid 0, gid 0.
- ssh: ``id`` defaults to "default"; ``target`` to ``/run/buildkit/ssh_agent.<N>`` (N: its
  place among the step's ssh mounts; the plan fills it in, ``stages/evaluate.py``);
  ``SSH_AUTH_SOCK`` names the first one the step gets unless the step sets it. No
  ``source``.
- A missing secret or ssh id skips the mount, unless ``required``: then the build fails at
  plan time at the RUN's line (ids holding a variable: when the step runs), with BuildKit's
  wording (``secret ID: not found``, ``no SSH key "ID" forwarded from the client``).
- A value never reaches the cache key (the key hashes the mount as written, its id, never
  the value: BuildKit does not rerun a step when only a secret's value changes), a
  layer, the history, the progress output (``OutputMask``) or a file.
"""

from __future__ import annotations

import csv
import os
import posixpath
import stat
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from rootbuild.dockerfile.instructions import Mount, Run
from rootbuild.errors import DockerfileError, StepError, UsageError
from rootbuild.sandbox.spec import Bind, RunMount, SecretMount
from rootbuild.stages.plan import BuildPlan

SECRET_DIR = "/run/secrets/"
MASK = "****"
MAX_SECRET = 500 * 1024  # BuildKit's MaxSecretSize


@dataclass(frozen=True)
class SecretSource:
    """One ``--secret``: the value of ``id`` comes from the file ``path`` or the builder's
    environment variable ``env``."""

    id: str
    path: str | None = None
    env: str | None = None


def parse_secret(text: str, environ: Mapping[str, str]) -> SecretSource:
    """``--secret id=X[,src=FILE|,env=VAR][,type=file|env]`` (buildx ``parseSecret``); with
    neither ``src`` nor ``env``, the variable named by the id when it is set, else the file
    named by it."""
    typ = None
    id_ = path = env = None
    for item in _csv(text, "--secret"):
        key, has_value, value = item.partition("=")
        key = key.lower()
        if not has_value:
            raise UsageError(f"--secret {text}: invalid field {item!r} must be a key=value pair")
        if key == "type":
            if value not in ("file", "env"):
                raise UsageError(f"--secret {text}: unsupported secret type {value!r}")
            typ = value
        elif key == "id":
            id_ = value
        elif key in ("source", "src"):
            path = value
        elif key == "env":
            env = value
        else:
            raise UsageError(f"--secret {text}: unexpected key {key!r} in {item!r}")
    if typ == "env" and env is None:
        env, path = path, None
    if not id_:
        id_ = env or (os.path.basename(path) if path else None)
    if not id_:
        raise UsageError(f"--secret {text}: an id is required")
    if path is None and env is None:
        if typ != "file" and id_ in environ:
            env = id_
        else:
            path = id_
    return SecretSource(id_, path, env)


def load_secrets(sources: tuple[SecretSource, ...], environ: Mapping[str, str]
                 ) -> dict[str, bytes]:
    """The values, read once. An unset variable gives no secret (buildx does the same); a
    file that cannot be read is an error."""
    values: dict[str, bytes] = {}
    for src in sources:
        if src.env is not None:
            if src.env in environ:
                values[src.id] = environ[src.env].encode("utf-8", "surrogateescape")
            continue
        assert src.path is not None
        try:
            with open(src.path, "rb") as f:
                data = f.read(MAX_SECRET + 1)
        except OSError as exc:
            raise UsageError(f"--secret id={src.id}: read {src.path}: {exc.strerror}") from exc
        if len(data) > MAX_SECRET:
            raise UsageError(f"--secret id={src.id}: {src.path} is larger than 500 KiB")
        values[src.id] = data
    return values


@dataclass(frozen=True)
class SshSource:
    """One ``--ssh``: ``id`` forwards the agent at ``socket``, or an agent the build starts
    holding the private keys ``keys``."""

    id: str
    socket: str | None = None
    keys: tuple[str, ...] = ()


def parse_ssh(text: str, environ: Mapping[str, str]) -> SshSource:
    """``--ssh default``, ``--ssh ID`` (both: ``$SSH_AUTH_SOCK``), ``--ssh ID=SOCKET``,
    ``--ssh ID=KEY[,KEY]`` (buildx ``parseSSH``: a path that is a socket is an agent)."""
    id_, has_paths, rest = text.partition("=")
    if not id_:
        raise UsageError(f"--ssh {text}: an id is required")
    paths = [p for p in rest.split(",") if p] if has_paths else []
    if not paths:
        sock = environ.get("SSH_AUTH_SOCK")
        if not sock:
            raise UsageError(f"--ssh {text}: SSH_AUTH_SOCK is not set: name a socket or key")
        return SshSource(id_, socket=sock)
    sockets = [p for p in paths if _is_socket(p)]
    if sockets and len(paths) > 1:
        raise UsageError(f"--ssh {text}: one agent socket, or key files, not both")
    if sockets:
        return SshSource(id_, socket=sockets[0])
    for p in paths:
        if not os.path.isfile(p):
            raise UsageError(f"--ssh {text}: {p} is neither an agent socket nor a key file")
    return SshSource(id_, keys=tuple(os.path.abspath(p) for p in paths))


def _is_socket(path: str) -> bool:
    try:
        return stat.S_ISSOCK(os.stat(path).st_mode)
    except OSError:
        return False


def _csv(text: str, what: str) -> list[str]:
    try:
        return next(csv.reader([text]), [])
    except csv.Error as exc:
        raise UsageError(f"{what} {text}: {exc}") from exc


@dataclass(frozen=True)
class BuildSources:
    """What a build's steps may mount: secret values by id, agent sockets by ssh id
    (``sockets`` is filled when the build starts its agents: ``ssh_agent.py``)."""

    secrets: Mapping[str, bytes] = field(default_factory=dict, repr=False)
    sockets: Mapping[str, Path] = field(default_factory=dict)


# -- per mount ----------------------------------------------------------------------------------


def secret_id(mount: Mount) -> str:
    """BuildKit ``dispatchSecret``: ``source``, else ``id``, else the target's base name."""
    found = mount.source or mount.id or posixpath.basename(mount.target or "")
    if not found:
        raise DockerfileError("invalid secret mount. one of source, target required")
    return found


def ssh_id(mount: Mount) -> str:
    return mount.id or "default"


def _secret_missing(id_: str) -> str:
    return f"secret {id_}: not found"


def _ssh_missing(id_: str) -> str:
    return f'no SSH key "{id_}" forwarded from the client'


def _check_ssh_mount(mount: Mount) -> None:
    if mount.source:
        raise DockerfileError("ssh does not support source")
    if (mount.mode or 0o600) != 0o600 or mount.uid or mount.gid:
        raise DockerfileError(
            "uid, gid and mode other than 0 and 0600 are not supported: the step gets the "
            "agent's own socket, owned by root of the step"
        )


def _run_mounts(plan: BuildPlan) -> Iterator[tuple[Run, Mount]]:
    for index in plan.order:
        stage = plan.stage(index)
        for instr in (*stage.onbuild, *stage.instructions):
            if isinstance(instr, Run):
                for mount in instr.mounts:
                    yield instr, mount


def check_required(plan: BuildPlan, secret_ids: frozenset[str], ssh_ids: frozenset[str]
                   ) -> None:
    """Before any step runs: every ``required`` secret and ssh id of ``plan`` was given,
    and every ssh mount is one rootbuild can make (located errors)."""
    for instr, mount in _run_mounts(plan):
        try:
            if mount.type == "secret":
                id_ = secret_id(mount)
                if mount.required and "$" not in id_ and id_ not in secret_ids:
                    raise StepError(_secret_missing(id_))
            elif mount.type == "ssh":
                _check_ssh_mount(mount)
                id_ = ssh_id(mount)
                if mount.required and "$" not in id_ and id_ not in ssh_ids:
                    raise StepError(_ssh_missing(id_))
        except (StepError, DockerfileError) as exc:
            raise type(exc)(f"RUN --mount=type={mount.type}: {exc.message}",
                            instr.location) from None


# -- per mount (engine/run_mounts.py calls these) ---------------------------------------------


def secret_mount(mount: Mount, sources: BuildSources
                 ) -> tuple[SecretMount | None, dict[str, bytes]]:
    """What one ``type=secret`` mount gives its step: the file (None: ``env=`` alone, or an
    optional secret the build was not given) and the variable holding the value; a
    ``required`` one the build was not given is a ``StepError``."""
    id_ = secret_id(mount)
    value = sources.secrets.get(id_)
    if value is None:
        if mount.required:
            raise StepError(f"RUN --mount=type=secret: {_secret_missing(id_)}")
        return None, {}
    variables = {mount.env: value} if mount.env else {}
    if not mount.target and mount.env:
        return None, variables
    target = mount.target or SECRET_DIR + posixpath.basename(id_)
    mode = 0o400 if mount.mode is None else mount.mode
    return SecretMount(target, mode, mount.uid or 0, mount.gid or 0, value), variables


def ssh_mount(mount: Mount, target: str, sources: BuildSources) -> Bind | None:
    """The agent socket of one ``type=ssh`` mount, bound at ``target`` (None: an optional id
    the build was not given; a ``required`` one is a ``StepError``)."""
    id_ = ssh_id(mount)
    socket = sources.sockets.get(id_)
    if socket is None:
        if mount.required:
            raise StepError(f"RUN --mount=type=ssh: {_ssh_missing(id_)}")
        return None
    return Bind(socket, target, readonly=False, kind="socket")


def mask_of(mounts: Iterable[RunMount], variables: Mapping[str, bytes]) -> OutputMask:
    """The mask of every secret value a step gets (its ``SecretMount``s and variables)."""
    files = (m.value for m in mounts if isinstance(m, SecretMount))
    return OutputMask((*files, *variables.values()))


class OutputMask:
    """Hides secret values in a step's output lines: each value (without its final line
    break) and, for a value of several lines, each of its lines of 4 or more characters,
    becomes ``****``."""

    def __init__(self, values: tuple[bytes, ...]) -> None:
        words: set[str] = set()
        for value in values:
            text = value.decode("utf-8", "replace").strip("\r\n")
            if text:
                words.add(text)
            lines = [line.strip("\r") for line in text.splitlines()]
            if len(lines) > 1:
                words.update(line for line in lines if len(line.strip()) >= 4)
        self.words = sorted(words, key=len, reverse=True)

    def __bool__(self) -> bool:
        return bool(self.words)

    def __call__(self, line: str) -> str:
        for word in self.words:
            line = line.replace(word, MASK)
        return line

    def wrap(self, on_output: Callable[[str], None]) -> Callable[[str], None]:
        if not self.words:
            return on_output
        return lambda line: on_output(self(line))
