"""Build secrets in the build service: ``submit --secret ID`` names a secret, a worker
started with ``--secrets-dir DIR`` reads its value from ``DIR/<tenant>/<id>`` and gives it
to the job's ``RUN --mount=type=secret`` steps (issue 13: "A step that mounts a secret is
never cached across jobs").

Real redis-server on a unix socket and workers as the unprivileged test user, with the
fixtures of test_service_worker.py. A step proves it read a value by printing its sha256
(never the value); the value itself is then looked for, and not found, in every key and
value of Redis (strings, hashes, streams, lists, sets), in Redis' append-only file, in the
job log, ``status --json``, the worker's stderr and every file of the worker's store.

Docker's reference: https://docs.docker.com/reference/dockerfile/#run---mounttypesecret
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import uuid
from pathlib import Path

import pytest
from conftest import Harness
from test_run_secrets import secret_context
from test_service_queue import RedisServer
from test_service_worker import (  # noqa: F401 (pytest fixtures)
    TERMINAL,
    Service,
    redis_server,
    service,
)

from rootbuild.service.jobs import JobState

pytestmark = pytest.mark.integration

DOCKERFILE = (
    "FROM scratch\n"
    "COPY rootfs/ /\n"
    "RUN echo warm > /warm\n"
    "RUN --mount=type=secret,id=tok --mount=type=secret,id=api,env=API_TOKEN \\\n"
    "    sha256sum /run/secrets/tok; printf %s \"$API_TOKEN\" | sha256sum; "
    "echo \"tok is $(cat /run/secrets/tok).\"; echo \"api is $API_TOKEN.\"; "
    "sha256sum /run/secrets/tok > /tok.sha\n"
)


def sha(value: bytes) -> str:
    return hashlib.sha256(value).hexdigest()


def new_value(kind: str) -> bytes:
    return f"{kind}-{uuid.uuid4().hex}".encode()


def provision(rb: Harness, tenant: str, values: dict[str, bytes]) -> Path:
    """The operator's ``DIR/<tenant>/<id>`` files, the worker user's own, mode 0600."""
    root = rb.workdir / "secrets"
    where = root / tenant
    where.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o700)
    os.chmod(where, 0o700)
    for id_, value in values.items():
        (where / id_).write_bytes(value)
        os.chmod(where / id_, 0o600)
    rb._own(root)
    return root


def redis_contents(svc: Service, server: RedisServer) -> bytes:
    """Every key and every value Redis holds, by type, and its append-only file."""
    client = svc.queue.client
    out: list[bytes] = []
    for key in client.scan_iter(count=1000):
        out.append(key)
        kind = client.type(key)
        if kind == b"string":
            out.append(client.get(key) or b"")
        elif kind == b"hash":
            for field, value in client.hgetall(key).items():
                out += [field, value]
        elif kind == b"stream":
            for entry_id, fields in client.xrange(key):
                out.append(entry_id)
                for field, value in fields.items():
                    out += [field, value]
        elif kind == b"list":
            out += client.lrange(key, 0, -1)
        elif kind == b"set":
            out += list(client.smembers(key))
        elif kind == b"zset":
            out += list(client.zrange(key, 0, -1))
        else:
            raise AssertionError(f"redis key {key!r} of type {kind!r}: not read")
    assert out, "redis holds nothing: the scan read no job"
    for path in server.dir.rglob("*"):
        if path.is_file() and path.suffix != ".sock" and path.name != "redis.log":
            out.append(path.read_bytes())
    return b"\n".join(out)


def files_holding(root: Path, values: list[bytes]) -> list[str]:
    """Regular files under ``root`` (the worker's store: extracted layer trees, blobs,
    cache index, job directories) that hold one of ``values``."""
    found = []
    for dirpath, _, names in os.walk(root):
        for name in names:
            path = Path(dirpath, name)
            if path.is_symlink() or not path.is_file():
                continue
            data = path.read_bytes()
            if any(v in data for v in values):
                found.append(str(path))
    return found


def step_number(log: str, text: str) -> str:
    """The ``#N`` of the step whose label holds ``text``."""
    match = re.search(rf"^#(\d+) .*{re.escape(text)}", log, re.M)
    assert match, (text, log)
    return match.group(1)


def test_a_jobs_run_gets_its_tenants_secret_and_it_is_stored_nowhere(
        rb: Harness, service: Service,  # noqa: F811 (the fixtures)
        redis_server: RedisServer) -> None:  # noqa: F811
    """A job naming ``--secret tok --secret api`` gets the values the worker's operator
    provisioned for its tenant, as a file and as a variable: the step prints their sha256.
    A value the step prints is masked in the job's log as on the CLI, and no value is in
    Redis (keys, values, AOF), ``status --json``, the log, the worker's stderr or any file
    of the worker's store.

    "A secret mount takes a secret from the build client and makes it temporarily
    available inside the build container, for the duration of the build instruction."
    (https://docs.docker.com/build/building/secrets/#secret-mounts)

    The same Dockerfile again, after the operator changed the values: the step that mounts
    the secrets runs again and sees the new values (the issue: "A step that mounts a secret
    is never cached across jobs"), while the step before it is a cache hit."""
    first = {"tok": new_value("tok"), "api": new_value("api")}
    root = provision(rb, "acme", first)
    service.start_worker("w1", "--secrets-dir", str(root))
    ctx = secret_context(rb, "sec", DOCKERFILE)
    job = service.submit(ctx, "acme", "--secret", "tok", "--secret", "id=api")
    done = service.wait(job, TERMINAL, timeout=180)
    log = service.log_text(job)
    assert done.state is JobState.SUCCESS, (done, log)
    assert done.spec["secrets"] == ["tok", "api"]  # the ids, in the job's spec
    assert f"{sha(first['tok'])}  /run/secrets/tok" in log  # read from the file
    assert f"{sha(first['api'])}  -" in log  # and from the variable
    assert "tok is ****." in log and "api is ****." in log  # masked as on the CLI

    second = {"tok": new_value("tok"), "api": new_value("api")}
    provision(rb, "acme", second)
    again = service.submit(ctx, "acme", "--secret", "tok", "--secret", "api")
    done = service.wait(again, TERMINAL, timeout=180)
    log2 = service.log_text(again)
    assert done.state is JobState.SUCCESS, (done, log2)
    warm = step_number(log2, "RUN echo warm")
    assert f"#{warm} CACHED" in log2  # the step cache works for this tenant
    secret_step = step_number(log2, "RUN --mount=type=secret")
    assert f"#{secret_step} CACHED" not in log2 and f"#{secret_step} DONE" in log2
    assert f"{sha(second['tok'])}  /run/secrets/tok" in log2  # its own value
    assert f"{sha(second['api'])}  -" in log2
    assert sha(first["tok"]) not in log2

    values = [*first.values(), *second.values()]
    status = service.cli("status", job, "--json").stdout
    assert json.loads(status)["spec"]["secrets"] == ["tok", "api"]
    shown = "".join([status, service.cli("status", again, "--json").stdout,
                     service.cli("logs", job).stdout, service.cli("logs", again).stdout,
                     service.worker_log("w1")]).encode()
    stored = redis_contents(service, redis_server)
    for value in values:
        assert value not in shown
        assert value not in stored
    assert files_holding(service.store, values) == []


def test_missing_and_other_tenants_secrets_fail_the_job_cleanly(
        rb: Harness, service: Service) -> None:  # noqa: F811 (the fixture)
    """A secret a job names must be provisioned for its own tenant: tenant globex naming
    acme's ``tok``, or acme naming one it does not have, ends FAILURE
    (``secret_not_found``) naming the id and the RUN's line, before any step runs; a
    provisioned symbolic link is not followed (``bad_secret``); a spec crafted to name a
    path ends ``bad_spec``; ``submit`` refuses to send a value. A
    ``required`` secret the job does not name fails at plan time as on the CLI:

    "required: If set to true, the instruction errors out when the secret is unavailable.
    Defaults to false." (https://docs.docker.com/reference/dockerfile/#run---mounttypesecret)
    """
    value = new_value("tok")
    root = provision(rb, "acme", {"tok": value})
    provision(rb, "globex", {"other": new_value("other")})
    provision(rb, "mallory", {})  # a link to acme's file is never followed
    os.symlink(root / "acme" / "tok", root / "mallory" / "tok")
    rb._own(root)
    worker = service.start_worker("w1", "--secrets-dir", str(root))
    ctx = secret_context(rb, "sec", DOCKERFILE)

    cases = {
        "globex": service.submit(ctx, "globex", "--secret", "tok"),
        "nobody": service.submit(ctx, "nobody", "--secret", "tok"),  # no directory at all
        "acme": service.submit(ctx, "acme", "--secret", "tok", "--secret", "api"),
    }
    for tenant, job in cases.items():
        done = service.wait(job, TERMINAL, timeout=120)
        assert done.state is JobState.FAILURE, done
        info = done.failure_info
        assert info is not None and info.reason == "secret_not_found", info
        assert info.step == "Dockerfile:4", info
        missing = "api" if tenant == "acme" else "tok"
        assert f"secret {missing}: not found" in info.message, info
        assert tenant in info.message and str(root) not in info.message
        log = service.log_text(job)
        assert f"secret {missing}: not found" in log and "#1 " not in log  # no step ran
        status = service.cli("status", job).stdout
        assert f"secret_not_found at Dockerfile:4: RUN --mount=type=secret: secret " \
               f"{missing}: not found" in status

    linked = service.submit(ctx, "mallory", "--secret", "tok")
    done = service.wait(linked, TERMINAL, timeout=120)
    assert done.state is JobState.FAILURE and done.failure_info is not None
    assert done.failure_info.reason == "bad_secret", done.failure_info
    assert "secret tok of tenant mallory: refused (a symbolic link)" in \
        done.failure_info.message

    required = secret_context(rb, "req", (
        "FROM scratch\nCOPY rootfs/ /\n"
        "RUN --mount=type=secret,id=tok,required=true true\n"))
    job = service.submit(required, "acme")  # names no secret
    done = service.wait(job, TERMINAL, timeout=120)
    assert done.state is JobState.FAILURE and done.failure_info is not None
    assert done.failure_info.step == "Dockerfile:3"
    assert "secret tok: not found" in done.failure_info.message

    # a spec written by hand (not by submit) naming a path: refused by the worker
    crafted = service.queue.submit("globex", {
        "context": "sha256:" + "0" * 64, "dockerfile": DOCKERFILE,
        "secrets": ["../acme/tok"]})
    done = service.wait(crafted, TERMINAL, timeout=60)
    assert done.state is JobState.FAILURE and done.failure_info is not None
    assert done.failure_info.reason == "bad_spec" and "not a name" in \
        done.failure_info.message

    for args, needle in [
        (("--secret", "id=tok,src=/etc/passwd"), "--secrets-dir"),
        (("--secret", "id=tok,env=TOKEN"), "--secrets-dir"),
        (("--secret", "../acme/tok"), "not a name"),
    ]:
        proc = service.cli("submit", "--tenant", "globex", *args, str(ctx), check=False)
        assert proc.returncode != 0, args
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("rootbuild: "), proc.stderr
        assert needle in lines[0], (args, lines)
    proc = rb.run("worker", "--redis", service.url, "--secrets-dir",
                  str(rb.workdir / "nowhere"), store=False, check=False, timeout=60)
    assert proc.returncode == 2 and "--secrets-dir" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr

    assert worker.poll() is None
    text = service.worker_log("w1")
    assert "Traceback" not in text and value.decode() not in text
