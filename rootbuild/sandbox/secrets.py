"""RUN --mount=type=secret in the sandbox: values that cross to the init without touching a
disk, and the files and variables the step gets from them.

Job: a step's secrets are its ``SecretMount``s (files) and ``StepSpec.secret_env``
(variables); their values never enter the spec's JSON. ``payload_fd`` puts them in a sealed
memfd that the builder hands to the init (``run.run_init``); ``read_payload`` reads them
back there and ``with_values`` puts them into the spec read from JSON; ``SecretFiles`` (in
the init, inside the user namespace, after its mount namespace is private; called by
``step_mounts.mount_trees`` for each ``SecretMount``) mounts a tmpfs over
``scratch/secrets`` at the first file, writes each file there with its owner and mode, and
returns the read-only ``Bind`` that puts it at its target, mounted like every other
``RUN --mount``; ``env_of`` gives the step's secret variables.

Rules (SECURITY.md "Secrets"):
- A value is never written to a file the builder's store holds: the memfd lives in memory,
  the tmpfs exists only in the init's mount namespace (the directory under the store stays
  empty on disk) and dies with it. No repr shows a value.
- Files are made inside the user namespace, so ``uid``/``gid``/``mode`` are the file's real
  owner and mode as the step sees them; an id the namespace does not map fails the step
  with a message that says so.
- Secret files are bound read-only; the target the sandbox created for one is removed after
  the step like every mount target, so it never reaches the layer.
"""

from __future__ import annotations

import base64
import dataclasses
import fcntl
import json
import os
from dataclasses import dataclass
from pathlib import Path

from rootbuild.errors import SandboxError, StepError
from rootbuild.sandbox import mounts
from rootbuild.sandbox.spec import Bind, SecretMount, StepSpec

#: the tmpfs that holds a step's secret files (per step; counts against the user's memory)
TMPFS_OPTIONS = "mode=0700,size=16m,nr_inodes=1024"
MAX_PAYLOAD = 32 * 1024 * 1024


@dataclass(frozen=True)
class Payload:
    """A step's secret values: ``files`` in the order of its ``SecretMount``s, ``env`` by
    variable name."""

    files: tuple[bytes, ...] = ()
    env: dict[str, bytes] = dataclasses.field(default_factory=dict)

    def __repr__(self) -> str:
        return f"Payload({len(self.files)} files, {len(self.env)} variables)"


def step_values(spec: StepSpec) -> Payload:
    """The values the builder's ``spec`` holds."""
    files = tuple(m.value for m in spec.mounts if isinstance(m, SecretMount))
    return Payload(files, dict(spec.secret_env))


def payload_fd(spec: StepSpec) -> int | None:
    """A sealed, close-on-exec memfd holding the secret values of ``spec`` (None: none);
    the caller passes it to the init and closes it."""
    values = step_values(spec)
    if not values.files and not values.env:
        return None
    data = json.dumps({
        "files": [base64.b64encode(v).decode() for v in values.files],
        "env": {k: base64.b64encode(v).decode() for k, v in values.env.items()},
    })
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


def read_payload(fd: int) -> Payload:
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
        return Payload(tuple(base64.b64decode(v) for v in data["files"]),
                       {str(k): base64.b64decode(v) for k, v in data["env"].items()})
    except (ValueError, AttributeError, KeyError, TypeError) as exc:
        raise SandboxError("read secrets: malformed payload") from exc


def with_values(spec: StepSpec, values: Payload) -> StepSpec:
    """``spec`` as read from JSON, with the values of ``values`` put back (each secret of
    the spec must have one)."""
    if sum(isinstance(m, SecretMount) for m in spec.mounts) != len(values.files):
        raise SandboxError("read secrets: a secret file has no value")
    files = iter(values.files)
    run_mounts = tuple(dataclasses.replace(m, value=next(files))
                       if isinstance(m, SecretMount) else m for m in spec.mounts)
    if set(spec.secret_env) - set(values.env):
        raise SandboxError("read secrets: a secret variable has no value")
    env = {name: values.env[name] for name in spec.secret_env}
    return dataclasses.replace(spec, mounts=run_mounts, secret_env=env)


def env_of(spec: StepSpec) -> dict[str, str]:
    """The step's secret variables (``env=``), as strings."""
    return {name: value.decode("utf-8", "surrogateescape")
            for name, value in spec.secret_env.items()}


class SecretFiles:
    """The step's secret files, on a tmpfs over ``where`` mounted at the first one (in the
    init: user and private mount namespace)."""

    def __init__(self, where: Path) -> None:
        self.where = where
        self.count = 0

    def write(self, item: SecretMount) -> Bind:
        """Write ``item``'s value with its owner and mode; the read-only bind of it."""
        if self.count == 0:
            self.where.mkdir(mode=0o700)
            mounts.mount("tmpfs", str(self.where), "tmpfs",
                         mounts.MS_NOSUID | mounts.MS_NODEV | mounts.MS_NOEXEC, TMPFS_OPTIONS)
        path = self.where / str(self.count)
        self.count += 1
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW
                     | os.O_CLOEXEC, 0o600)
        try:
            view = memoryview(item.value)
            while view:
                view = view[os.write(fd, view):]
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
        return Bind(path, item.target, readonly=True, kind="file")
