"""What a RUN step asks of the sandbox and what it gets back, as values, and their wire form.

Job: the typed request (``StepSpec``) with the mounts it gets (``Bind``), the root filesystem
descriptions (``OverlayRoot``: a snapshotter's overlay of lower layers; ``DirRoot``: a
prepared plain directory), the answer (``StepResult``), and ``InitRequest``: everything the
sandbox init receives. The init is a fresh interpreter (never a fork of the multithreaded
builder), so the request crosses as JSON: ``to_json()`` gives plain JSON-ready data,
``from_json()`` reads it back into the same value (or raises ``SandboxError``).

Rules: values are frozen; ``env`` is the whole environment of the step (the image config's
Env and the step's build args, already merged by the caller); nothing else reaches it.
``binds`` are mounted in order, after /dev, /sys and /proc, each through the root's fd with
no symlink followed (``child.py``); that list is where every ``RUN --mount`` goes.
"""

from __future__ import annotations

import posixpath
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from rootbuild.errors import SandboxError
from rootbuild.sandbox.idmap import IdMapPlan
from rootbuild.snapshot import LowerLayer, StepChanges

#: PATH when the image and build args set none (Docker's default for Linux containers)
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#: BuildKit's hostname for build containers
DEFAULT_HOSTNAME = "buildkitsandbox"
NETWORK_MODES = ("host", "none")
PROC_MODES = ("fresh", "host-bind")
BindKind = Literal["file", "dir"]
BIND_KINDS: tuple[BindKind, ...] = ("file", "dir")


@dataclass(frozen=True)
class Bind:
    """A host file or directory (``source``, made by the builder) bound at ``target`` (an
    absolute in-image path) for the step; ``readonly`` binds refuse writes (EROFS);
    ``kind`` is what both ends must be. A missing target is created for the step and removed
    after it, so it never reaches the layer. ``required``: an image that makes the target
    impossible (a symlink on the way, the wrong type) fails the step; when False (the /etc
    files the sandbox itself provides) the step runs without it, with a warning."""

    source: Path
    target: str
    readonly: bool
    kind: BindKind
    required: bool = True

    def validate(self) -> None:
        if self.kind not in BIND_KINDS:
            raise SandboxError(f"run step: bind {self.target!r}: unknown kind {self.kind!r}")
        if not self.source.is_absolute():
            raise SandboxError(f"run step: bind source {str(self.source)!r} is not absolute")
        target = self.target
        if (not target.startswith("/") or "\0" in target
                or posixpath.normpath(target) != target or target.startswith("//")):
            raise SandboxError(
                f"run step: bind target {target!r} is not a clean absolute path"
            )
        if target == "/":
            raise SandboxError("run step: bind target '/' would replace the root")

    def to_json(self) -> dict[str, Any]:
        return {"source": str(self.source), "target": self.target, "readonly": self.readonly,
                "kind": self.kind, "required": self.required}

    @classmethod
    def from_json(cls, data: Any) -> Bind:
        kind = _str(data, "kind")
        if kind not in BIND_KINDS:
            raise SandboxError(f"read step spec: unknown bind kind {kind!r}")
        return cls(Path(_str(data, "source")), _str(data, "target"),
                   _bool(data, "readonly"), "file" if kind == "file" else "dir",
                   _bool(data, "required"))


@dataclass(frozen=True)
class OverlayBind:
    """A snapshotter overlay of ``lowers`` mounted for the step at ``target`` (an absolute
    in-image directory; a cache mount: ``engine/cache_mounts.py``), with a fresh upper kept
    in ``work`` (created by the init; must not exist). ``readonly``: a read-only view (writes
    fail with EROFS, no changes). After the step ran (any exit status, not killed), the
    init leaves its changes in ``work/changes`` (tree) and ``work/changes.meta.json``
    (``overlay_binds.py``)."""

    lowers: tuple[LowerLayer, ...]
    work: Path
    target: str
    readonly: bool
    snapshotter: str = "fuse"

    def validate(self) -> None:
        Bind(self.work, self.target, self.readonly, "dir").validate()

    def to_json(self) -> dict[str, Any]:
        return {"lowers": [{"tree": str(lo.tree), "meta": str(lo.meta_path)}
                           for lo in self.lowers],
                "work": str(self.work), "target": self.target, "readonly": self.readonly,
                "snapshotter": self.snapshotter}

    @classmethod
    def from_json(cls, data: Any) -> OverlayBind:
        lowers = tuple(LowerLayer(Path(_str(lo, "tree")), Path(_str(lo, "meta")))
                       for lo in _list(data, "lowers"))
        return cls(lowers, Path(_str(data, "work")), _str(data, "target"),
                   _bool(data, "readonly"), _str(data, "snapshotter"))


@dataclass(frozen=True)
class OverlayRoot:
    """The overlay of ``lowers`` (lowest first) made by the snapshotter named
    ``snapshotter`` (chosen once per build: ``snapshot.choose_snapshotter``); its upper and
    the step's resulting layer are kept in ``work`` (created; must not exist)."""

    lowers: tuple[LowerLayer, ...]
    work: Path
    snapshotter: str = "fuse"


@dataclass(frozen=True)
class DirRoot:
    """A prepared directory used as the root as it is (changes land in it; no layer)."""

    path: Path


Rootfs = OverlayRoot | DirRoot


def rootfs_to_json(root: Rootfs) -> dict[str, Any]:
    if isinstance(root, OverlayRoot):
        return {
            "kind": "overlay",
            "lowers": [{"tree": str(lo.tree), "meta": str(lo.meta_path)} for lo in root.lowers],
            "work": str(root.work),
            "snapshotter": root.snapshotter,
        }
    return {"kind": "dir", "path": str(root.path)}


def rootfs_from_json(data: Any) -> Rootfs:
    kind = _str(data, "kind")
    if kind == "overlay":
        lowers = tuple(
            LowerLayer(Path(_str(lo, "tree")), Path(_str(lo, "meta")))
            for lo in _list(data, "lowers")
        )
        return OverlayRoot(lowers, Path(_str(data, "work")), _str(data, "snapshotter"))
    if kind == "dir":
        return DirRoot(Path(_str(data, "path")))
    raise SandboxError(f"read step spec: unknown root kind {kind!r}")


@dataclass(frozen=True)
class StepSpec:
    """One RUN step. ``argv`` is the command (shell form already wrapped by the caller);
    ``user`` is the Dockerfile USER value; ``workdir`` an absolute in-image path;
    ``scratch`` a private directory of the builder (created; must not exist) that holds
    the mountpoint and the files the sandbox provides (/etc/hosts ...); ``binds`` what is
    mounted into the step, in order (the sandbox adds its /etc files first)."""

    argv: tuple[str, ...]
    rootfs: Rootfs
    scratch: Path
    env: Mapping[str, str] = field(default_factory=dict)
    user: str = ""
    workdir: str = "/"
    network: str = "host"
    proc: str = "fresh"
    untrusted: bool = False
    timeout: float | None = None
    hostname: str = DEFAULT_HOSTNAME
    binds: tuple[Bind, ...] = ()
    overlays: tuple[OverlayBind, ...] = ()  # mounted after ``binds`` (RUN --mount=type=cache)

    def validate(self) -> None:
        if not self.argv:
            raise SandboxError("run step: empty command")
        if self.network not in NETWORK_MODES:
            raise SandboxError(f"run step: unknown network mode {self.network!r}")
        if self.proc not in PROC_MODES:
            raise SandboxError(f"run step: unknown proc mode {self.proc!r}")
        if self.proc == "host-bind" and self.untrusted:
            raise SandboxError(
                "run step: --proc=host-bind is refused for untrusted builds: it lets RUN "
                "see and signal the builder's processes"
            )
        if not self.workdir.startswith("/"):
            raise SandboxError(f"run step: WORKDIR {self.workdir!r} is not absolute")
        if any("=" in k or "\0" in k or "\0" in v or not k for k, v in self.env.items()):
            raise SandboxError("run step: invalid environment variable name or value")
        for bind in self.binds:
            bind.validate()
        for overlay in self.overlays:
            overlay.validate()

    def to_json(self) -> dict[str, Any]:
        return {
            "argv": list(self.argv), "rootfs": rootfs_to_json(self.rootfs),
            "scratch": str(self.scratch), "env": dict(self.env), "user": self.user,
            "workdir": self.workdir, "network": self.network, "proc": self.proc,
            "untrusted": self.untrusted, "timeout": self.timeout, "hostname": self.hostname,
            "binds": [b.to_json() for b in self.binds],
            "overlays": [o.to_json() for o in self.overlays],
        }

    @classmethod
    def from_json(cls, data: Any) -> StepSpec:
        env = _field(data, "env")
        if not isinstance(env, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in env.items()
        ):
            raise SandboxError("read step spec: env is not a map of strings")
        timeout = _field(data, "timeout")
        if timeout is not None and (
            isinstance(timeout, bool) or not isinstance(timeout, int | float)
        ):
            raise SandboxError("read step spec: timeout is not a number")
        return cls(
            argv=tuple(_strs(data, "argv")), rootfs=rootfs_from_json(_field(data, "rootfs")),
            scratch=Path(_str(data, "scratch")), env=dict(env), user=_str(data, "user"),
            workdir=_str(data, "workdir"), network=_str(data, "network"),
            proc=_str(data, "proc"), untrusted=_bool(data, "untrusted"),
            timeout=None if timeout is None else float(timeout),
            hostname=_str(data, "hostname"),
            binds=tuple(Bind.from_json(b) for b in _list(data, "binds")),
            overlays=tuple(OverlayBind.from_json(o) for o in data.get("overlays", [])),
        )


@dataclass(frozen=True)
class InitRequest:
    """What the sandbox init receives for one step: the step (its /etc binds added by the
    executor), the build's id mapping, the warnings to pass back (each shown once), the
    CPU the step starts on (``placement.py``; None: every CPU) and the PATH a step gets
    when its environment sets none."""

    step: StepSpec
    idmap: IdMapPlan
    warnings: tuple[str, ...] = ()
    cpu: int | None = None
    default_path: str = DEFAULT_PATH

    def to_json(self) -> dict[str, Any]:
        return {"step": self.step.to_json(), "idmap": self.idmap.to_json(),
                "warnings": list(self.warnings), "cpu": self.cpu,
                "default_path": self.default_path}

    @classmethod
    def from_json(cls, data: Any) -> InitRequest:
        cpu = _field(data, "cpu")
        if cpu is not None and (isinstance(cpu, bool) or not isinstance(cpu, int)):
            raise SandboxError("read step spec: cpu is not a number")
        idmap = _field(data, "idmap")
        try:
            plan = IdMapPlan.from_json(idmap)
        except (AssertionError, KeyError, TypeError, ValueError) as exc:
            raise SandboxError(f"read step spec: malformed idmap ({exc!r})") from exc
        return cls(StepSpec.from_json(_field(data, "step")), plan,
                   tuple(_strs(data, "warnings")), cpu, _str(data, "default_path"))


@dataclass(frozen=True)
class StepResult:
    """``exit_code``: the command's status (128+N when killed by signal N); ``layer``: the
    step's changes when it exited 0 on an overlay root; ``timed_out``: the step was killed
    after ``StepSpec.timeout`` seconds; ``warnings``: each to be shown once to the user."""

    exit_code: int
    layer: StepChanges | None = None
    warnings: tuple[str, ...] = ()
    timed_out: bool = False


# -- reading JSON data back, typed ----------------------------------------------------------


def _field(data: Any, key: str) -> Any:
    if not isinstance(data, dict):
        raise SandboxError(f"read step spec: expected an object holding {key!r}")
    if key not in data:
        raise SandboxError(f"read step spec: {key!r} is missing")
    return data[key]


def _str(data: Any, key: str) -> str:
    value = _field(data, key)
    if not isinstance(value, str):
        raise SandboxError(f"read step spec: {key!r} is not a string")
    return value


def _bool(data: Any, key: str) -> bool:
    value = _field(data, key)
    if not isinstance(value, bool):
        raise SandboxError(f"read step spec: {key!r} is not a boolean")
    return value


def _list(data: Any, key: str) -> list[Any]:
    value = _field(data, key)
    if not isinstance(value, list):
        raise SandboxError(f"read step spec: {key!r} is not a list")
    return value


def _strs(data: Any, key: str) -> list[str]:
    value = _list(data, key)
    if not all(isinstance(v, str) for v in value):
        raise SandboxError(f"read step spec: {key!r} is not a list of strings")
    return value
