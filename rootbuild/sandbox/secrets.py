"""RUN --mount=type=secret in the sandbox: values that cross to the init without touching a
disk, and the files and variables the step gets from them.

Job: ``StepSecrets`` says which secret files (target, mode, uid, gid) and environment
variables a step gets, each naming its value by a key; its ``values`` (key -> bytes) never
enter the step spec's JSON. ``payload_fd`` puts the values in a sealed memfd that the
builder hands to the init (``run.run_init``); ``read_payload`` reads them back there;
``provide`` (in the init, inside the user namespace, after its mount namespace is private)
mounts a tmpfs over ``scratch/secrets``, writes each file there with its owner and mode, and
returns the ``Bind``s that put them at their targets plus the variables for the step.

Rules (SECURITY.md "Secrets"):
- A value is never written to a file the builder's store holds: the memfd lives in memory,
  the tmpfs exists only in the init's mount namespace (the directory under the store stays
  empty on disk) and dies with it. ``StepSecrets`` has no repr of its values.
- Files are made inside the user namespace, so ``uid``/``gid``/``mode`` are the file's real
  owner and mode as the step sees them; an id the namespace does not map fails the step
  with a message that says so.
- Secret files are bound read-only; the target the sandbox created for one is removed after
  the step like every bind target, so it never reaches the layer.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rootbuild.errors import SandboxError, StepError
from rootbuild.sandbox import mounts

if TYPE_CHECKING:  # spec.py holds a StepSecrets: import Bind where it is used
    from rootbuild.sandbox.spec import Bind

#: the tmpfs that holds a step's secret files (per step; counts against the user's memory)
TMPFS_OPTIONS = "mode=0700,size=16m,nr_inodes=1024"
MAX_PAYLOAD = 32 * 1024 * 1024


@dataclass(frozen=True)
class SecretFile:
    """A secret file at ``target`` (absolute, in the image) holding the value ``key``."""

    key: str
    target: str
    mode: int = 0o400
    uid: int = 0
    gid: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"key": self.key, "target": self.target, "mode": self.mode,
                "uid": self.uid, "gid": self.gid}


@dataclass(frozen=True)
class SecretEnv:
    """The environment variable ``name`` of the step, set to the value ``key``."""

    key: str
    name: str

    def to_json(self) -> dict[str, Any]:
        return {"key": self.key, "name": self.name}


@dataclass(frozen=True)
class StepSecrets:
    """What one step gets from the build's secrets (see the module docstring)."""

    files: tuple[SecretFile, ...] = ()
    env: tuple[SecretEnv, ...] = ()
    values: Mapping[str, bytes] = field(default_factory=dict, repr=False, compare=False)

    def __bool__(self) -> bool:
        return bool(self.files or self.env)

    def validate(self) -> None:
        keys = {f.key for f in self.files} | {e.key for e in self.env}
        if not keys <= set(self.values):
            raise SandboxError("run step: a secret mount names a value it was not given")
        from rootbuild.sandbox.spec import Bind

        for item in self.files:
            Bind(Path("/"), item.target, True, "file").validate()
            if not 0 <= item.mode <= 0o7777:
                raise SandboxError(f"run step: secret {item.target}: invalid mode")
        for var in self.env:
            if not var.name or "=" in var.name or "\0" in var.name:
                raise SandboxError(f"run step: invalid secret variable name {var.name!r}")
            if b"\0" in self.values[var.key]:
                raise StepError(f"secret for ${var.name}: a variable cannot hold a NUL byte")

    def to_json(self) -> dict[str, Any]:
        """Targets and names only: the values cross through ``payload_fd``."""
        return {"files": [f.to_json() for f in self.files],
                "env": [e.to_json() for e in self.env]}

    @classmethod
    def from_json(cls, data: Any) -> StepSecrets:
        try:
            files = tuple(SecretFile(str(f["key"]), str(f["target"]), int(f["mode"]),
                                     int(f["uid"]), int(f["gid"])) for f in data["files"])
            env = tuple(SecretEnv(str(e["key"]), str(e["name"])) for e in data["env"])
        except (KeyError, TypeError, ValueError) as exc:
            raise SandboxError(f"read step spec: malformed secrets ({exc!r})") from exc
        return cls(files, env)


def payload_fd(secrets: StepSecrets) -> int | None:
    """A sealed, close-on-exec memfd holding the values of ``secrets`` (None: no secret);
    the caller passes it to the init and closes it."""
    if not secrets:
        return None
    data = json.dumps({k: base64.b64encode(v).decode() for k, v in secrets.values.items()})
    fd = os.memfd_create("rootbuild-secrets", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        view = memoryview(data.encode())
        while view:
            view = view[os.write(fd, view):]
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK
                    | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE)
        os.lseek(fd, 0, os.SEEK_SET)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_payload(fd: int) -> dict[str, bytes]:
    """The values ``payload_fd`` wrote (closes ``fd``)."""
    try:
        chunks = []
        total = 0
        while chunk := os.read(fd, 1 << 20):
            total += len(chunk)
            if total > MAX_PAYLOAD:
                raise SandboxError("read secrets: more than 32 MiB")
            chunks.append(chunk)
    finally:
        os.close(fd)
    try:
        data = json.loads(b"".join(chunks))
        return {str(k): base64.b64decode(v) for k, v in data.items()}
    except (ValueError, AttributeError) as exc:
        raise SandboxError("read secrets: malformed payload") from exc


def provide(secrets: StepSecrets, values: Mapping[str, bytes], scratch: Path
            ) -> tuple[tuple[Bind, ...], dict[str, str]]:
    """In the init (user and private mount namespace): the binds of the secret files,
    written to a fresh tmpfs at ``scratch/secrets``, and the step's secret variables."""
    from rootbuild.sandbox.spec import Bind

    env = {var.name: values[var.key].decode("utf-8", "surrogateescape")
           for var in secrets.env}
    if not secrets.files:
        return (), env
    where = scratch / "secrets"
    where.mkdir(mode=0o700)
    mounts.mount("tmpfs", str(where), "tmpfs",
                 mounts.MS_NOSUID | mounts.MS_NODEV | mounts.MS_NOEXEC, TMPFS_OPTIONS)
    binds = []
    for number, item in enumerate(secrets.files):
        path = where / str(number)
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW
                     | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, values[item.key])
            try:
                os.fchown(fd, item.uid, item.gid)
            except OSError as exc:
                raise StepError(
                    f"mount secret at {item.target}: uid {item.uid} / gid {item.gid} is not "
                    f"mapped in the build's user namespace ({exc.strerror}); fix: give your "
                    "user a subordinate id range in /etc/subuid and /etc/subgid"
                ) from exc
            os.fchmod(fd, item.mode)
        finally:
            os.close(fd)
        binds.append(Bind(path, item.target, readonly=True, kind="file"))
    return tuple(binds), env
