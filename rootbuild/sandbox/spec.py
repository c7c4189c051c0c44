"""What a RUN step asks of the sandbox and what it gets back, as values.

Job: the typed request (``StepSpec``), the root filesystem descriptions (``OverlayRoot``: the
FUSE overlay of lower layers; ``DirRoot``: a prepared plain directory), the answer
(``StepResult``), and their JSON form for the sandbox init process, which is a fresh
interpreter (never a fork of the multithreaded builder) and so receives the spec as data.

Rules: values are frozen; ``env`` is the whole environment of the step (the image config's
Env and the step's build args, already merged by the caller); nothing else reaches it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rootbuild.errors import SandboxError
from rootbuild.fuse_overlay.mount import OverlayResult

#: PATH when the image and build args set none (Docker's default for Linux containers)
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#: BuildKit's hostname for build containers
DEFAULT_HOSTNAME = "buildkitsandbox"
NETWORK_MODES = ("host", "none")
PROC_MODES = ("fresh", "host-bind")


@dataclass(frozen=True)
class OverlayRoot:
    """The FUSE overlay of ``lowers`` ((tree dir, meta.json) pairs, lowest first); its upper
    and the step's resulting layer are kept in ``work`` (created; must not exist)."""

    lowers: tuple[tuple[Path, Path], ...]
    work: Path
    snapshotter: str = "fuse"  # chosen once per build (fuse_overlay.snapshotter)


@dataclass(frozen=True)
class DirRoot:
    """A prepared directory used as the root as it is (changes land in it; no layer)."""

    path: Path


Rootfs = OverlayRoot | DirRoot


@dataclass(frozen=True)
class StepSpec:
    """One RUN step. ``argv`` is the command (shell form already wrapped by the caller);
    ``user`` is the Dockerfile USER value; ``workdir`` an absolute in-image path;
    ``scratch`` a private directory of the builder (created; must not exist) that holds
    the mountpoint and the files the sandbox provides (/etc/hosts ...)."""

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


@dataclass(frozen=True)
class StepResult:
    """``exit_code``: the command's status (128+N when killed by signal N); ``layer``: the
    step's changes when it exited 0 on an overlay root; ``timed_out``: the step was killed
    after ``StepSpec.timeout`` seconds; ``warnings``: each to be shown once to the user."""

    exit_code: int
    layer: OverlayResult | None = None
    warnings: tuple[str, ...] = ()
    timed_out: bool = False


def rootfs_to_json(root: Rootfs) -> dict[str, Any]:
    if isinstance(root, OverlayRoot):
        return {
            "kind": "overlay",
            "lowers": [[str(t), str(m)] for t, m in root.lowers],
            "work": str(root.work),
            "snapshotter": root.snapshotter,
        }
    return {"kind": "dir", "path": str(root.path)}


def rootfs_from_json(data: dict[str, Any]) -> Rootfs:
    if data["kind"] == "overlay":
        return OverlayRoot(
            tuple((Path(t), Path(m)) for t, m in data["lowers"]), Path(data["work"]),
            str(data.get("snapshotter", "fuse")),
        )
    return DirRoot(Path(data["path"]))
