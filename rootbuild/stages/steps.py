"""What the stage evaluator hands the engine: the state between a stage's instructions and
the typed step each instruction asks to be carried out.

Rules:
- Values only, frozen; every word Docker substitutes is already expanded in a step.
- ``--from`` and ``--mount from=`` arrive resolved (a ``StageBase``: a stage of this build
  or an image reference), never as raw words the engine would have to look up again.
- Pure: no os, no trio.
"""

from __future__ import annotations

from dataclasses import dataclass

from rootbuild.dockerfile.instructions import Device, Heredoc, Instruction, Mount
from rootbuild.errors import StageGraphError
from rootbuild.stages.args import proxy_env
from rootbuild.stages.config import HistoryEntry, ImageConfig
from rootbuild.stages.graph import StageBase

DEFAULT_SHELL = ("/bin/sh", "-c")  # BuildKit ``defaultShell`` on Linux


@dataclass(frozen=True)
class StageState:
    """Everything ``apply`` needs between instructions of one stage.

    ``env`` is BuildKit's LLB state environment (image Env + ARG values, in order); ``args``
    its ``buildArgs`` (every ARG declared so far and its value, None when it has none);
    ``cmd_set`` whether CMD was given in this stage (ENTRYPOINT then keeps it).
    """

    config: ImageConfig
    env: tuple[tuple[str, str], ...] = ()
    args: tuple[tuple[str, str | None], ...] = ()
    global_args: tuple[tuple[str, str], ...] = ()
    build_args: tuple[tuple[str, str], ...] = ()
    escape: str = "\\"
    cmd_set: bool = False
    refs: tuple[tuple[str, StageBase], ...] = ()  # the stage plan's --from/from= words

    def resolve(self, word: str, kind: str, instr: Instruction) -> StageBase:
        """What the ``--from``/``from=`` word ``word`` names (the plan resolved every
        one); a word the plan never saw is a located error, never a ``KeyError``."""
        for raw, ref in self.refs:
            if raw == word:
                return ref
        raise StageGraphError(f"{kind}={word}: names no stage or image of this build",
                              instr.location)

    @property
    def scope(self) -> dict[str, str]:
        """The substitution environment at this point of the stage."""
        return dict(self.env)

    @property
    def shell(self) -> tuple[str, ...]:
        return self.config.shell or DEFAULT_SHELL

    @property
    def declared(self) -> frozenset[str]:
        """ARG names declared in this stage (and the stage it is built from)."""
        return frozenset(name for name, _ in self.args)

    def run_env(self) -> tuple[str, ...]:
        """The environment a RUN gets: the stage environment plus the proxy build args."""
        env = dict(self.env)
        for key, value in proxy_env(dict(self.build_args)):
            env.setdefault(key, value)
        return tuple(f"{k}={v}" for k, v in env.items())


@dataclass(frozen=True)
class MetadataStep:
    """Only the config changed; nothing to run. ``history`` is None for ONBUILD."""

    history: HistoryEntry | None


@dataclass(frozen=True)
class WorkdirStep:
    """``mkdir -p path`` (mode 0755, owned by ``user`` when set, resolved in the image's
    own passwd/group), committed as a layer (BuildKit ``dispatchWorkdir``)."""

    path: str
    user: str
    history: HistoryEntry


@dataclass(frozen=True)
class CopyStep:
    """COPY or ADD. ``sources`` are expanded context (or ``from_``) paths and URLs;
    ``from_`` is the stage or image ``--from`` names, resolved by the plan; ``heredocs``
    are inline files (created mode 0644 unless ``chmod``) named by their ``name``,
    bodies already expanded; ``dest`` is absolute, a trailing ``/`` kept."""

    is_add: bool
    sources: tuple[str, ...]
    dest: str
    from_: StageBase | None
    chown: str | None
    chmod: str | None
    link: bool
    parents: bool
    excludes: tuple[str, ...]
    heredocs: tuple[Heredoc, ...]
    checksum: str | None
    keep_git_dir: bool
    unpack: bool | None
    history: HistoryEntry


@dataclass(frozen=True)
class StepMount:
    """One ``RUN --mount`` with its values expanded and its ``from=`` resolved by the plan
    (``source`` None: no ``from=``, the build context or nothing)."""

    mount: Mount
    source: StageBase | None


@dataclass(frozen=True)
class RunStep:
    """RUN. ``command`` is the final argv (shell form already wrapped in the SHELL);
    ``heredoc_files`` are (absolute path, content) files to mount read-only, mode 0755
    (the ``#!`` heredoc case); mount ``target``s are absolute."""

    command: tuple[str, ...]
    env: tuple[str, ...]
    user: str
    workdir: str
    mounts: tuple[StepMount, ...]
    network: str | None
    security: str | None
    heredoc_files: tuple[tuple[str, str], ...]
    history: HistoryEntry
    devices: tuple[Device, ...] = ()  # RUN --device (an entitlement: engine/entitlements.py)


Step = MetadataStep | WorkdirStep | CopyStep | RunStep
