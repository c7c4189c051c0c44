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
no symlink followed (``child.py``): the sandbox's own /etc files. ``mounts`` (every
``RUN --mount``, a ``RunMount``: ``Bind``, ``LayerMount``, ``TmpfsMount``, ``SecretMount``)
come after them, parents before children (sorted by target depth, as BuildKit's LLB sorts
exec mounts). A secret value (``SecretMount.value``, ``StepSpec.secret_env``) is never in
the JSON nor in a repr: it crosses in a sealed memfd (``secrets.py``).
"""

from __future__ import annotations

import posixpath
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from rootbuild.errors import SandboxError, StepError
from rootbuild.sandbox.idmap import IdMapPlan
from rootbuild.sandbox.limits import StepLimits
from rootbuild.sandbox.rlimits import Ulimit
from rootbuild.snapshot import LowerLayer, StepChanges

#: PATH when the image and build args set none (Docker's default for Linux containers)
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#: BuildKit's hostname for build containers
DEFAULT_HOSTNAME = "buildkitsandbox"
NETWORK_MODES = ("host", "none", "isolated")  # isolated: sandbox/usernet.py
PROC_MODES = ("fresh", "host-bind")
BindKind = Literal["file", "dir", "socket"]
#: "socket": a unix socket of the builder (RUN --mount=type=ssh: the agent's)
BIND_KINDS: tuple[BindKind, ...] = ("file", "dir", "socket")


@dataclass(frozen=True)
class Bind:
    """A host file, directory or unix socket (``source``, made by the builder) bound at
    ``target`` (an absolute in-image path) for the step; ``readonly`` binds refuse writes
    (EROFS); ``kind`` is what the source must be (a socket is bound over a file). A
    missing target is created for the step and removed after it, so it never reaches the
    layer. ``required``: an image that makes the target
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
                   _bool(data, "readonly"), BIND_KINDS[BIND_KINDS.index(kind)],
                   _bool(data, "required"))


def check_target(target: str) -> None:
    """A mount target must be a clean absolute in-image path other than '/'."""
    if (not target.startswith("/") or "\0" in target
            or posixpath.normpath(target) != target or target.startswith("//")):
        raise SandboxError(f"run step: mount target {target!r} is not a clean absolute path")
    if target == "/":
        raise SandboxError("run step: mount target '/' would replace the root")


@dataclass(frozen=True)
class LayerMount:
    """``RUN --mount=type=bind`` of a tree made of layers (a stage, an image, the build
    context as one layer): the merged tree of ``lowers`` (lowest first) is mounted by the
    snapshotter named ``snapshotter`` in the step's scratch, read-only (``view``) or, when
    not ``readonly``, writable over an upper that is thrown away after the step; its path
    ``source`` (resolved inside that tree: no symlink or '..' leaves it) is bound at
    ``target``, whose kind (file or directory) follows the source's. ``keep`` (a writable
    mount whose changes are kept: ``RUN --mount=type=cache``): an existing directory of the
    builder where, after the step ran (any exit status, not killed), the init leaves the
    changes: ``KEPT_TREE`` (the upper's tree) and ``KEPT_META`` (its ``LayerMeta``)."""

    lowers: tuple[LowerLayer, ...]
    source: str
    target: str
    readonly: bool = True
    snapshotter: str = "fuse"
    keep: Path | None = None

    def validate(self) -> None:
        check_target(self.target)
        if "\0" in self.source:
            raise SandboxError(f"run step: mount source {self.source!r} holds a NUL byte")
        if self.keep is not None and (self.readonly or not self.keep.is_absolute()):
            raise SandboxError(f"run step: mount at {self.target}: the changes of a "
                               "read-only mount cannot be kept, nor kept at a relative path")

    def to_json(self) -> dict[str, Any]:
        return {"type": "layers", "source": self.source, "target": self.target,
                "readonly": self.readonly, "snapshotter": self.snapshotter,
                "lowers": [{"tree": str(lo.tree), "meta": str(lo.meta_path)}
                           for lo in self.lowers],
                "keep": None if self.keep is None else str(self.keep)}

    @classmethod
    def from_json(cls, data: Any) -> LayerMount:
        lowers = tuple(LowerLayer(Path(_str(lo, "tree")), Path(_str(lo, "meta")))
                       for lo in _list(data, "lowers"))
        keep = None  # optional: a mount whose changes are thrown away may leave it out
        if isinstance(data, dict) and data.get("keep") is not None:
            keep = Path(_str(data, "keep"))
        return cls(lowers, _str(data, "source"), _str(data, "target"),
                   _bool(data, "readonly"), _str(data, "snapshotter"), keep)


#: what ``LayerMount.keep`` holds after the step: the changes' tree and their metadata
KEPT_TREE = "changes"
KEPT_META = "changes.meta.json"


@dataclass(frozen=True)
class TmpfsMount:
    """``RUN --mount=type=tmpfs``: a fresh tmpfs at ``target`` (``size`` bytes at most;
    None: the kernel's default, half the RAM), gone with the step."""

    target: str
    size: int | None = None
    nr_inodes: int | None = None  # under a disk budget: its inode limit

    def validate(self) -> None:
        check_target(self.target)
        if self.size is not None and self.size < 0:
            raise SandboxError(f"run step: tmpfs size {self.size} is negative")

    def to_json(self) -> dict[str, Any]:
        return {"type": "tmpfs", "target": self.target, "size": self.size,
                "nr_inodes": self.nr_inodes}

    @classmethod
    def from_json(cls, data: Any) -> TmpfsMount:
        size = _field(data, "size")
        inodes = data.get("nr_inodes")
        if any(n is not None and (isinstance(n, bool) or not isinstance(n, int))
               for n in (size, inodes)):
            raise SandboxError("read step spec: tmpfs size is not a number")
        return cls(_str(data, "target"), size, inodes)


@dataclass(frozen=True)
class SecretMount:
    """``RUN --mount=type=secret`` as a file: the init writes ``value`` on a tmpfs of its own
    mount namespace, owned ``uid``:``gid`` with ``mode`` as the step sees them, and binds it
    read-only at ``target`` (``secrets.py``). ``value`` is not in the JSON (it crosses in the
    step's memfd, ``secrets.payload_fd``), nor in the repr, nor compared."""

    target: str
    mode: int = 0o400
    uid: int = 0
    gid: int = 0
    value: bytes = field(default=b"", repr=False, compare=False)

    def validate(self) -> None:
        check_target(self.target)
        if not 0 <= self.mode <= 0o7777:
            raise SandboxError(f"run step: secret {self.target}: invalid mode {self.mode:o}")
        if self.uid < 0 or self.gid < 0:
            raise SandboxError(f"run step: secret {self.target}: invalid owner")

    def to_json(self) -> dict[str, Any]:
        return {"type": "secret", "target": self.target, "mode": self.mode,
                "uid": self.uid, "gid": self.gid}

    @classmethod
    def from_json(cls, data: Any) -> SecretMount:
        numbers = [_field(data, key) for key in ("mode", "uid", "gid")]
        if not all(isinstance(n, int) and not isinstance(n, bool) for n in numbers):
            raise SandboxError("read step spec: secret mode, uid or gid is not a number")
        return cls(_str(data, "target"), *numbers)


#: what a ``RUN --mount`` becomes in ``StepSpec.mounts``; a host file, directory or socket
#: made by the builder (a cache directory, an ssh agent's socket) is a ``Bind``
RunMount = Bind | LayerMount | TmpfsMount | SecretMount


def mount_to_json(mount: RunMount) -> dict[str, Any]:
    if isinstance(mount, Bind):
        return {"type": "host", **mount.to_json()}
    return mount.to_json()


def mount_from_json(data: Any) -> RunMount:
    kind = _str(data, "type")
    if kind == "host":
        return Bind.from_json(data)
    if kind == "layers":
        return LayerMount.from_json(data)
    if kind == "tmpfs":
        return TmpfsMount.from_json(data)
    if kind == "secret":
        return SecretMount.from_json(data)
    raise SandboxError(f"read step spec: unknown mount type {kind!r}")


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
    mounts: tuple[RunMount, ...] = ()
    # RUN --mount=type=secret,env=NAME: values by name (not in the JSON: the memfd carries
    # them); RUN --security=insecure: keep every capability of the user namespace;
    # RUN --device: host device nodes bound into /dev (devices.py)
    secret_env: Mapping[str, bytes] = field(default_factory=dict, repr=False, compare=False)
    insecure: bool = False
    devices: tuple[str, ...] = ()
    # --add-host (host, ip) lines appended to the sandbox's /etc/hosts; --shm-size: bytes
    # of /dev/shm (None: 64 MiB, Docker's default); --ulimit: set before exec (rlimits.py)
    extra_hosts: tuple[tuple[str, str], ...] = ()
    shm_size: int | None = None
    ulimits: tuple[Ulimit, ...] = ()
    # --disk-limit bytes / --inode-limit inodes that the step's writable overlays (its root
    # and writable RUN --mount trees) may hold together; tmpfs mounts are capped by them
    disk_limit: int | None = None
    inode_limit: int | None = None
    # --pids-limit, --memory, --log-limit (limits.py)
    limits: StepLimits = field(default_factory=StepLimits)
    # network="isolated": the resolvers (address, port) the step's DNS forwarder on
    # 127.0.0.11 relays to (dns_relay.py); set by the executor
    dns_upstreams: tuple[tuple[str, int], ...] = ()

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
        if self.network == "host" and self.untrusted:  # engine/network.py never asks it
            raise SandboxError("run step: the host network is refused for untrusted builds")
        if not self.workdir.startswith("/"):
            raise SandboxError(f"run step: WORKDIR {self.workdir!r} is not absolute")
        if any("=" in k or "\0" in k or "\0" in v or not k for k, v in self.env.items()):
            raise SandboxError("run step: invalid environment variable name or value")
        for bind in self.binds:
            bind.validate()
        for mount in self.mounts:
            mount.validate()
        if any(not h or not ip or any(c.isspace() for c in h + ip)
               for h, ip in self.extra_hosts):
            raise SandboxError("run step: invalid extra /etc/hosts entry")
        if self.shm_size is not None and self.shm_size <= 0:
            raise SandboxError(f"run step: /dev/shm size {self.shm_size} is not positive")
        for limit in self.ulimits:
            limit.validate()
        if any(n is not None and n <= 0 for n in (self.disk_limit, self.inode_limit)):
            raise SandboxError("run step: disk and inode limits must be positive")
        self.limits.validate()
        if self.dns_upstreams and self.network != "isolated":
            raise SandboxError("run step: a DNS forwarder is only for --network=isolated")
        if any(not host or not 0 < port < 65536 for host, port in self.dns_upstreams):
            raise SandboxError("run step: invalid DNS upstream")
        for name, value in self.secret_env.items():
            if not name or "=" in name or "\0" in name:
                raise SandboxError(f"run step: invalid secret variable name {name!r}")
            if b"\0" in value:
                raise StepError(f"secret for ${name}: a variable cannot hold a NUL byte")

    def to_json(self) -> dict[str, Any]:
        return {
            "argv": list(self.argv), "rootfs": rootfs_to_json(self.rootfs),
            "scratch": str(self.scratch), "env": dict(self.env), "user": self.user,
            "workdir": self.workdir, "network": self.network, "proc": self.proc,
            "untrusted": self.untrusted, "timeout": self.timeout, "hostname": self.hostname,
            "binds": [b.to_json() for b in self.binds],
            "mounts": [mount_to_json(m) for m in self.mounts],
            "secret_env": sorted(self.secret_env), "insecure": self.insecure,
            "devices": list(self.devices),
            "extra_hosts": [list(pair) for pair in self.extra_hosts],
            "shm_size": self.shm_size, "ulimits": [u.to_json() for u in self.ulimits],
            "disk_limit": self.disk_limit, "inode_limit": self.inode_limit,
            "limits": self.limits.to_json(),
            "dns_upstreams": [list(u) for u in self.dns_upstreams],
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
            mounts=tuple(mount_from_json(m) for m in _list(data, "mounts")),
            # names only: secrets.with_values puts the memfd's values in
            secret_env=dict.fromkeys(_strs(data, "secret_env"), b""),
            insecure=_bool(data, "insecure"), devices=tuple(_strs(data, "devices")),
            **_run_flags(data),
        )


def _run_flags(data: Any) -> dict[str, Any]:
    """``extra_hosts``, ``shm_size``, ``ulimits``, ``disk_limit``, ``inode_limit``: optional
    in the wire form (absent: the defaults)."""
    flags: dict[str, Any] = {}
    hosts = data.get("extra_hosts") or []
    if not isinstance(hosts, list) or not all(
        isinstance(p, list) and len(p) == 2 and all(isinstance(x, str) for x in p)
        for p in hosts
    ):
        raise SandboxError("read step spec: extra_hosts is not a list of [host, ip]")
    flags["extra_hosts"] = tuple((h, ip) for h, ip in hosts)
    shm = data.get("shm_size")
    if shm is not None and (isinstance(shm, bool) or not isinstance(shm, int)):
        raise SandboxError("read step spec: shm_size is not a number")
    flags["shm_size"] = shm
    limits = data.get("ulimits") or []
    if not isinstance(limits, list):
        raise SandboxError("read step spec: ulimits is not a list")
    flags["ulimits"] = tuple(Ulimit.from_json(u) for u in limits)
    for key in ("disk_limit", "inode_limit"):
        value = data.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise SandboxError(f"read step spec: {key} is not a number")
        flags[key] = value
    flags["limits"] = StepLimits.from_json(data.get("limits"))
    upstreams = data.get("dns_upstreams") or []
    if not isinstance(upstreams, list) or not all(
        isinstance(u, list) and len(u) == 2 and isinstance(u[0], str)
        and isinstance(u[1], int) and not isinstance(u[1], bool) for u in upstreams
    ):
        raise SandboxError("read step spec: dns_upstreams is not a list of [address, port]")
    flags["dns_upstreams"] = tuple((h, p) for h, p in upstreams)
    return flags


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
    after ``StepSpec.timeout`` seconds; ``warnings``: each to be shown once to the user;
    ``limit_exceeded``: the limit the step hit (``"disk"``, ``"inodes"``), which failed it
    whatever its exit status, or ""."""

    exit_code: int
    layer: StepChanges | None = None
    warnings: tuple[str, ...] = ()
    timed_out: bool = False
    limit_exceeded: str = ""
    limit: str = ""  # the limit that ended the step (sandbox/limits.py), "" if none


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
