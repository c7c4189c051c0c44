"""The worker's pure pieces: job specs, the BuildOptions a job gets, outcomes of errors,
credentials by reference, the job log's line cap, and the context blob round trip (packing
with .dockerignore, safe unpacking)."""

from __future__ import annotations

import base64
import io
import json
import tarfile
from pathlib import Path

import pytest

from rootbuild.errors import Location, RegistryError, RootbuildError, StepError, StepTimeout
from rootbuild.registry.client import RegistryClient, TransportOptions
from rootbuild.service.context_blob import ContextBlobError, pack_context, unpack_context
from rootbuild.service.jobs import JobState
from rootbuild.service.worker import (
    JobLog,
    JobSpec,
    SpecError,
    WorkerConfig,
    classify,
    credentials_file,
    job_options,
)

DIGEST = "sha256:" + "a" * 64


def test_spec_round_trip_and_refusals() -> None:
    spec = JobSpec(DIGEST, "FROM scratch\n", ("r/x:1",), True, {"A": "1"}, "final", 60.0,
                   "*.log\n")
    assert JobSpec.parse(json.loads(json.dumps(spec.to_json()))) == spec
    for bad, needle in [
        ({"dockerfile": "x"}, "context"),
        ({"context": DIGEST}, "dockerfile"),
        ({"context": DIGEST, "dockerfile": "x", "tags": "r"}, "tags"),
        ({"context": DIGEST, "dockerfile": "x", "build_args": {"A": 1}}, "build_args"),
        ({"context": DIGEST, "dockerfile": "x", "timeout": -1}, "timeout"),
        ({"context": DIGEST, "dockerfile": "x", "push": True}, "push"),
    ]:
        with pytest.raises(SpecError, match=needle):
            JobSpec.parse(bad)


def test_job_options_are_untrusted_with_its_network_and_anonymous(tmp_path: Path) -> None:
    config = WorkerConfig(store=tmp_path, step_timeout=12.0,
                          transport=TransportOptions(tls_verify=False))
    spec = JobSpec(DIGEST, "FROM scratch\n", ("r/x:1",), True, {"A": "1"}, None)
    options = job_options(spec, tmp_path / "ctx", tmp_path / "Dockerfile", config,
                          tmp_path / "anon.json")
    options.validate()
    # "": settled at build start to the untrusted default, isolated (or none, warned)
    assert options.untrusted and options.network == ""
    assert options.push is False  # the worker pushes, with the job's credentials
    assert options.step_timeout == 12.0 and options.dockerfile == str(tmp_path / "Dockerfile")
    assert options.transport == TransportOptions(tls_verify=False,
                                                 auth_file=tmp_path / "anon.json")
    assert dict(options.build_args) == {"A": "1"} and options.tags == ("r/x:1",)


def test_errors_become_outcomes() -> None:
    where = Location("Dockerfile", 3)
    timeout = classify(StepTimeout("RUN: timed out", where), pushing=False)
    assert timeout.state is JobState.TIMEOUT
    assert timeout.failure is not None and timeout.failure.step == "Dockerfile:3"
    failed = classify(ExceptionGroup("x", [StepError("RUN: exit 1", where)]), pushing=False)
    assert failed.state is JobState.FAILURE and failed.failure is not None
    assert (failed.failure.reason, failed.failure.message, failed.failure.step) == (
        "build_failed", "RUN: exit 1", "Dockerfile:3")
    push = classify(RegistryError("push: 401"), pushing=True)
    assert push.failure is not None and push.failure.reason == "push_failed"
    pull = classify(RegistryError("pull: 401"), pushing=False)
    assert pull.failure is not None and pull.failure.reason == "build_failed"
    bad = classify(ContextBlobError("context: digest mismatch"), pushing=False)
    assert bad.failure is not None and bad.failure.reason == "bad_context"
    bug = classify(ZeroDivisionError("boom"), pushing=False)
    assert bug.state is JobState.INTERNAL_ERROR and bug.failure is not None
    assert bug.failure.message == "ZeroDivisionError: boom"


def test_credentials_by_reference_only(tmp_path: Path) -> None:
    assert credentials_file(WorkerConfig(store=tmp_path), None) is None
    with pytest.raises(RegistryError, match="no --credentials-dir"):
        credentials_file(WorkerConfig(store=tmp_path), "acme")
    config = WorkerConfig(store=tmp_path, credentials_dir=tmp_path)
    for ref in ("a/../b", ".hidden", "unknown"):
        with pytest.raises(RegistryError, match="credentials_ref"):
            credentials_file(config, ref)
    auth = tmp_path / "acme.json"
    token = base64.b64encode(b"u:p").decode()
    auth.write_text(json.dumps({"auths": {"reg.example": {"auth": token}}}))
    assert credentials_file(config, "acme") == auth
    # the file named by the transport is the only one a registry client reads
    client = RegistryClient("reg.example", TransportOptions(auth_file=auth),
                            env={"REGISTRY_AUTH_FILE": "/nonexistent"})
    creds = client.credentials()
    assert creds is not None and (creds.username, creds.password) == ("u", "p")
    empty = tmp_path / "anon.json"
    empty.write_text('{"auths": {}}')
    assert RegistryClient("reg.example", TransportOptions(auth_file=empty),
                          env={"REGISTRY_AUTH_FILE": str(auth)}).credentials() is None


def test_job_log_cuts_long_lines() -> None:
    log = JobLog(line_max=10)
    step = log.start("RUN x")
    log.output(step, "y" * 50)
    log.warn("w")
    assert log.take() == b"#1 RUN x\n#1 yyyyyyy [line cut]\nWARNING: w\n"
    assert log.take() == b""


def test_job_log_holds_a_bounded_buffer() -> None:
    log = JobLog(line_max=100, buffer_max=25)
    for i in range(10):
        log.note(f"line {i}")  # 13 bytes each with the newline
    assert log.take() == (b"note: line 0\nnote: line 1\nnote: 8 lines of output dropped "
                          b"(written faster than the log could take them)\n")
    log.capped = True  # the queue's cap was reached: nothing more is kept
    log.note("late")
    assert log.take() == b""


def test_context_round_trip_applies_dockerignore(tmp_path: Path) -> None:
    ctx = tmp_path / "ctx"
    (ctx / "src").mkdir(parents=True)
    (ctx / "Dockerfile").write_text("FROM scratch\nCOPY . /\n")
    (ctx / "src/app.py").write_text("print(1)\n")
    (ctx / "secret.key").write_text("no\n")
    (ctx / ".dockerignore").write_text("secret.key\n")
    (ctx / "link").symlink_to("/etc/passwd")
    packed = pack_context(ctx, None)
    again = pack_context(ctx, None)
    assert packed.digest == again.digest  # deterministic
    assert packed.dockerfile == "FROM scratch\nCOPY . /\n"
    assert packed.dockerignore == "secret.key\n"
    out = tmp_path / "out"
    unpack_context(packed.data, out)
    assert (out / "src/app.py").read_text() == "print(1)\n"
    assert not (out / "secret.key").exists()
    assert (out / ".dockerignore").read_text() == "secret.key\n"  # as docker build sends it
    assert (out / "link").is_symlink() and str((out / "link").readlink()) == "/etc/passwd"
    with pytest.raises(RootbuildError, match="larger than 10 bytes"):
        pack_context(ctx, None, max_bytes=10)


def test_unpack_refuses_entries_that_climb_out(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        info = tarfile.TarInfo("../escape")
        info.size = 1
        tf.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(ContextBlobError):
        unpack_context(buf.getvalue(), tmp_path / "out")
    assert not (tmp_path / "escape").exists()


def test_a_dockerfile_specific_ignore_file_wins_and_travels_in_the_spec(
        tmp_path: Path) -> None:
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "build.Dockerfile").write_text("FROM scratch\n")
    (ctx / "build.Dockerfile.dockerignore").write_text("a.txt\n")
    (ctx / ".dockerignore").write_text("b.txt\n")
    (ctx / "a.txt").write_text("a")
    (ctx / "b.txt").write_text("b")
    packed = pack_context(ctx, str(ctx / "build.Dockerfile"))
    assert packed.dockerignore == "a.txt\n"
    out = tmp_path / "out"
    unpack_context(packed.data, out)
    assert sorted(p.name for p in out.iterdir()) == [
        ".dockerignore", "b.txt", "build.Dockerfile", "build.Dockerfile.dockerignore"]
