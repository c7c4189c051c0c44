"""Build secrets in the service: a job names secret ids; the worker reads their values from
files its operator provisioned for the job's tenant.

Job: check the ids a job names (``check_secret_id``, ``parse_submit_secret``: the spec's
side), read each one from ``SECRETS_DIR/<tenant>/<id>`` (``read_secrets``), and say where
the Dockerfile uses one that is missing (``secret_line``, ``job_secrets``: the located
failure).

Rules (as ``credentials_ref``, worker.py):
- A value never leaves the worker's memory: the spec, the job hash, ``status --json`` and
  the log hold ids only; the values go to the build as ``BuildOptions.secrets``
  (engine/secrets.py: masked in the step's output, never in a cache key, layer or file),
  and an untrusted build never takes a step that mounts one from the step cache nor
  records it (engine/stage.py ``private_step``), so the next job reruns it with its own.
- Ids are file names: ``[A-Za-z0-9][A-Za-z0-9_.-]{0,127}`` (no ``/``, no ``..``, never
  absolute); a job names at most ``MAX_SECRETS``. BuildKit takes any string as an id; the
  service takes the subset that is a safe file name (Docker's secret names are the same
  kind of name).
- The tenant comes from the lease (the queue's stream), never from the spec, so a tenant
  only ever names files of its own directory. The tenant's directory and the secret file
  are opened relative to the one above with ``O_NOFOLLOW``: a symbolic link, a file that
  is not regular or one over 500 KiB (BuildKit's ``MaxSecretSize``) is refused, never
  followed or read past the cap.
- Every id a job names must be provisioned: a missing one fails the job before the build
  starts (``SecretNotFound``: FAILURE ``secret_not_found``), located at the first RUN that
  mounts it, with the CLI's plan-time wording (``secret ID: not found``).
- Messages name the id and the tenant, never the worker's paths or a value.
"""

from __future__ import annotations

import csv
import errno
import os
import re
import stat
from collections.abc import Sequence
from pathlib import Path

from rootbuild.dockerfile.instructions import Run
from rootbuild.dockerfile.parser import parse_dockerfile
from rootbuild.engine.secrets import MAX_SECRET, secret_id
from rootbuild.errors import DockerfileError, Location, RootbuildError, UsageError
from rootbuild.service.jobs import QueueError, check_tenant

MAX_SECRETS = 32  # ids one job may name
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
_OPEN = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW


class SecretError(RootbuildError):
    """A secret a job names cannot be given to its build (refused, unreadable)."""

    reason = "bad_secret"


class SecretNotFound(SecretError):
    """A secret a job names is not provisioned for its tenant on this worker."""

    reason = "secret_not_found"

    def __init__(self, id_: str, why: str, location: Location | None = None) -> None:
        self.secret_id = id_
        self.why = why
        super().__init__(f"RUN --mount=type=secret: secret {id_}: not found ({why})",
                         location)


def check_secret_id(id_: str) -> str | None:
    """Why ``id_`` is not a secret id a job may name (None: it is one)."""
    if not _ID.fullmatch(id_):
        return (f"secret id {id_!r} is not a name (letters, digits, '_.-', not starting "
                "with '.' or '-', at most 128 characters)")
    return None


def check_secret_ids(ids: Sequence[str]) -> str | None:
    """Why ``ids`` are not what a job may name (None: they are)."""
    if len(ids) > MAX_SECRETS:
        return f"{len(ids)} secrets named, at most {MAX_SECRETS}"
    for id_ in ids:
        why = check_secret_id(id_)
        if why:
            return why
    if len(set(ids)) != len(ids):
        return "a secret id is named twice"
    return None


def parse_submit_secret(text: str) -> str:
    """``submit --secret ID`` or ``--secret id=ID[,type=file]`` (buildx's syntax): the id.
    A value source (``src=``, ``source=``, ``env=``) is refused: a job carries ids only."""
    fields = next(csv.reader([text]), []) if text else []
    if len(fields) == 1 and "=" not in fields[0]:
        id_ = fields[0]
    else:
        found: str | None = None
        for item in fields:
            key, has_value, value = item.partition("=")
            key = key.lower()
            if key in ("src", "source", "env"):
                raise UsageError(
                    f"submit: --secret {text}: {key}= is not sent with a job: the workers "
                    "read secret values from files their operator provisions "
                    "(worker --secrets-dir DIR: DIR/<tenant>/<id>); name it with "
                    "--secret ID")
            if not has_value:
                raise UsageError(f"submit: --secret {text}: expected ID or id=ID")
            if key == "id":
                found = value
            elif key == "type" and value == "file":
                continue
            else:
                raise UsageError(f"submit: --secret {text}: unexpected key {key!r}")
        if not found:
            raise UsageError(f"submit: --secret {text}: an id is required")
        id_ = found
    why = check_secret_id(id_)
    if why:
        raise UsageError(f"submit: --secret {text}: {why}")
    return id_


def secret_line(dockerfile: str, id_: str, name: str = "Dockerfile") -> Location | None:
    """The first RUN of ``dockerfile`` that mounts secret ``id_`` as written (an id made
    of variables is only known once the build evaluates it: None)."""
    try:
        parsed = parse_dockerfile(dockerfile, name)
    except DockerfileError:
        return None  # the build says what is wrong with it
    for stage in parsed.stages:
        for instr in stage.instructions:
            if not isinstance(instr, Run):
                continue
            for mount in instr.mounts:
                if mount.type != "secret":
                    continue
                try:
                    if secret_id(mount) == id_:
                        return instr.location
                except DockerfileError:
                    continue
    return None


def read_secrets(root: Path | None, tenant: str, ids: Sequence[str]) -> dict[str, bytes]:
    """The values of ``ids`` for ``tenant``: ``root/<tenant>/<id>`` each.
    ``SecretNotFound`` for the first one missing; ``SecretError`` for one refused."""
    if not ids:
        return {}
    if root is None:
        raise SecretNotFound(ids[0], "this worker has no --secrets-dir")
    try:
        check_tenant(tenant)  # the lease's tenant: a name, never a path
    except QueueError:
        raise SecretError(f"secrets of tenant {tenant!r}: not a tenant name") from None
    why = check_secret_ids(ids)
    if why:
        raise SecretError(f"job spec: {why}")
    try:
        top = os.open(root, os.O_RDONLY | os.O_CLOEXEC | os.O_DIRECTORY)
    except OSError as exc:
        raise SecretError(f"secrets: this worker's --secrets-dir cannot be opened "
                          f"({exc.strerror})") from None
    try:
        try:
            here = os.open(tenant, _OPEN | os.O_DIRECTORY, dir_fd=top)
        except FileNotFoundError:
            raise SecretNotFound(ids[0], f"none is provisioned for tenant {tenant} on this "
                                 "worker") from None
        except OSError as exc:
            raise SecretError(f"secrets of tenant {tenant}: not a directory of the worker's "
                              f"--secrets-dir ({_why(exc)})") from None
        try:
            return {id_: _read_one(here, tenant, id_) for id_ in ids}
        finally:
            os.close(here)
    finally:
        os.close(top)


def _read_one(here: int, tenant: str, id_: str) -> bytes:
    try:
        # O_NONBLOCK: a FIFO opens without waiting for a writer (and is then refused)
        fd = os.open(id_, _OPEN | os.O_NONBLOCK, dir_fd=here)
    except FileNotFoundError:
        raise SecretNotFound(id_, f"not provisioned for tenant {tenant} on this "
                             "worker") from None
    except OSError as exc:
        raise SecretError(f"secret {id_} of tenant {tenant}: refused ({_why(exc)})") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise SecretError(f"secret {id_} of tenant {tenant}: refused (not a regular file)")
        if info.st_size > MAX_SECRET:
            raise SecretError(f"secret {id_} of tenant {tenant}: larger than 500 KiB")
        chunks: list[bytes] = []
        total = 0
        while chunk := os.read(fd, 1 << 16):
            total += len(chunk)
            if total > MAX_SECRET:
                raise SecretError(f"secret {id_} of tenant {tenant}: larger than 500 KiB")
            chunks.append(chunk)
        return b"".join(chunks)
    except OSError as exc:
        raise SecretError(f"secret {id_} of tenant {tenant}: read: {exc.strerror}") from None
    finally:
        os.close(fd)


def _why(exc: OSError) -> str:
    if exc.errno == errno.ELOOP:
        return "a symbolic link"
    if exc.errno == errno.ENOTDIR:
        return "not a directory"
    return exc.strerror or str(exc)


def job_secrets(root: Path | None, tenant: str, ids: Sequence[str],
                dockerfile: str) -> dict[str, bytes]:
    """``read_secrets``, with a missing secret's error located at the first RUN of the
    job's ``dockerfile`` that mounts it."""
    try:
        return read_secrets(root, tenant, ids)
    except SecretNotFound as exc:
        where = secret_line(dockerfile, exc.secret_id)
        if where is None:
            raise
        raise SecretNotFound(exc.secret_id, exc.why, where) from None
