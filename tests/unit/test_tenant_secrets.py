"""The service's build secrets (service/tenant_secrets.py): ids in the job spec, ``submit
--secret`` parsing, reading ``SECRETS_DIR/<tenant>/<id>`` (no path escape, no symlink, no
oversize, missing ones located at their RUN), and the job's options and outcome."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from rootbuild.errors import UsageError
from rootbuild.service.jobs import JobState, encode_spec
from rootbuild.service.tenant_secrets import (
    MAX_SECRETS,
    SecretError,
    SecretNotFound,
    job_secrets,
    parse_submit_secret,
    read_secrets,
    secret_line,
)
from rootbuild.service.worker import JobSpec, SpecError, WorkerConfig, classify, job_options

DIGEST = "sha256:" + "a" * 64
DOCKERFILE = (
    "FROM scratch\n"
    "RUN echo no secret\n"
    "RUN --mount=type=secret,id=other true\n"
    "RUN --mount=type=secret,id=npmrc,target=/root/.npmrc \\\n"
    "    npm ci\n"
    "RUN --mount=type=secret,target=/run/secrets/tok true\n"
)


def spec_of(**extra: object) -> dict[str, object]:
    return {"context": DIGEST, "dockerfile": "FROM scratch\n", **extra}


def test_spec_carries_secret_ids_only() -> None:
    spec = JobSpec(DIGEST, "FROM scratch\n", secrets=("npmrc", "api.key"))
    data = spec.to_json()
    assert data["secrets"] == ["npmrc", "api.key"]
    assert JobSpec.parse(json.loads(encode_spec(data))) == spec  # stored as is, no refusal
    assert "secrets" not in JobSpec(DIGEST, "FROM scratch\n").to_json()  # old shape kept
    assert JobSpec.parse(spec_of()).secrets == ()


@pytest.mark.parametrize("bad, needle", [
    ("npmrc", "list of secret ids"),
    ([1], "list of secret ids"),
    (["../x"], "not a name"),
    (["/etc/shadow"], "not a name"),
    (["a/b"], "not a name"),
    ([".."], "not a name"),
    ([".hidden"], "not a name"),
    (["-rf"], "not a name"),
    ([""], "not a name"),
    (["x" * 129], "not a name"),
    (["a", "a"], "named twice"),
    ([f"s{i}" for i in range(MAX_SECRETS + 1)], f"at most {MAX_SECRETS}"),
])
def test_spec_refuses_bad_secret_ids(bad: object, needle: str) -> None:
    with pytest.raises(SpecError, match=needle):
        JobSpec.parse(spec_of(secrets=bad))


def test_submit_secret_syntax() -> None:
    assert parse_submit_secret("npmrc") == "npmrc"
    assert parse_submit_secret("id=npmrc") == "npmrc"
    assert parse_submit_secret("id=npmrc,type=file") == "npmrc"
    for text in ("id=x,src=/etc/passwd", "id=x,source=f", "env=TOKEN", "id=x,env=TOKEN"):
        with pytest.raises(UsageError) as err:
            parse_submit_secret(text)
        message = str(err.value)
        assert "--secrets-dir" in message and "\n" not in message, message
    for text, needle in (("../x", "not a name"), ("id=../x", "not a name"), ("", "id"),
                         ("type=file", "an id is required"), ("id=x,mode=1", "unexpected"),
                         ("id=x,flag", "expected ID")):
        with pytest.raises(UsageError, match=needle):
            parse_submit_secret(text)


def provision(root: Path, tenant: str, values: dict[str, bytes]) -> None:
    (root / tenant).mkdir(parents=True, exist_ok=True)
    for id_, value in values.items():
        (root / tenant / id_).write_bytes(value)


def test_read_secrets_of_the_tenant(tmp_path: Path) -> None:
    provision(tmp_path, "acme", {"npmrc": b"tok-acme\n", "api.key": b""})
    provision(tmp_path, "globex", {"npmrc": b"tok-globex\n"})
    assert read_secrets(tmp_path, "acme", ["npmrc", "api.key"]) == {
        "npmrc": b"tok-acme\n", "api.key": b""}
    assert read_secrets(tmp_path, "globex", ["npmrc"]) == {"npmrc": b"tok-globex\n"}
    assert read_secrets(None, "acme", []) == {}


def test_read_secrets_refuses_escapes(tmp_path: Path) -> None:
    root = tmp_path / "secrets"
    provision(root, "acme", {"npmrc": b"acme-value"})
    provision(root, "globex", {})
    (tmp_path / "outside").write_bytes(b"outside-value")
    for id_ in ("../acme/npmrc", "/etc/passwd", "..", "acme/npmrc", ".", ""):
        with pytest.raises(SecretError, match="not a name") as err:
            read_secrets(root, "globex", [id_])
        assert "value" not in str(err.value)
    for tenant in ("..", "../secrets", "Acme", "", "a/b"):
        with pytest.raises(SecretError, match="not a tenant name"):
            read_secrets(root, tenant, ["npmrc"])
    # a symbolic link is never followed: to another tenant's file, or out of the dir
    os.symlink(root / "acme" / "npmrc", root / "globex" / "npmrc")
    os.symlink(tmp_path / "outside", root / "globex" / "out")
    for id_ in ("npmrc", "out"):
        with pytest.raises(SecretError, match="symbolic link") as err:
            read_secrets(root, "globex", [id_])
        assert not isinstance(err.value, SecretNotFound)
    # nor is a tenant directory that is a link to another tenant's
    os.symlink(root / "acme", root / "mallory")
    with pytest.raises(SecretError, match=r"symbolic link|not a directory"):
        read_secrets(root, "mallory", ["npmrc"])
    # not a regular file: a directory, a FIFO (opened without blocking)
    (root / "globex" / "dir").mkdir()
    os.mkfifo(root / "globex" / "fifo")
    for id_ in ("dir", "fifo"):
        with pytest.raises(SecretError, match="not a regular file"):
            read_secrets(root, "globex", [id_])


def test_read_secrets_caps_the_size(tmp_path: Path) -> None:
    provision(tmp_path, "acme", {"big": b"x" * (500 * 1024 + 1), "ok": b"y" * 500 * 1024})
    with pytest.raises(SecretError, match="larger than 500 KiB"):
        read_secrets(tmp_path, "acme", ["big"])
    assert len(read_secrets(tmp_path, "acme", ["ok"])["ok"]) == 500 * 1024


def test_missing_secrets(tmp_path: Path) -> None:
    provision(tmp_path, "acme", {"npmrc": b"v"})
    with pytest.raises(SecretNotFound, match="secret gone: not found") as err:
        read_secrets(tmp_path, "acme", ["npmrc", "gone"])
    assert err.value.secret_id == "gone" and "acme" in str(err.value)
    with pytest.raises(SecretNotFound, match="none is provisioned for tenant globex"):
        read_secrets(tmp_path, "globex", ["npmrc"])
    with pytest.raises(SecretNotFound, match="no --secrets-dir"):
        read_secrets(None, "acme", ["npmrc"])
    with pytest.raises(SecretError, match="cannot be opened"):
        read_secrets(tmp_path / "nowhere", "acme", ["npmrc"])


def test_a_missing_secret_is_located_at_its_first_run(tmp_path: Path) -> None:
    assert str(secret_line(DOCKERFILE, "npmrc")) == "Dockerfile:4"
    assert str(secret_line(DOCKERFILE, "tok")) == "Dockerfile:6"  # id from the target
    assert secret_line(DOCKERFILE, "unused") is None
    assert secret_line("not a dockerfile\n", "npmrc") is None
    provision(tmp_path, "acme", {"other": b"v"})
    with pytest.raises(SecretNotFound) as err:
        job_secrets(tmp_path, "acme", ["other", "npmrc"], DOCKERFILE)
    assert str(err.value) == ("Dockerfile:4: RUN --mount=type=secret: secret npmrc: not "
                              "found (not provisioned for tenant acme on this worker)")
    outcome = classify(err.value, pushing=False)
    assert outcome.state is JobState.FAILURE and outcome.failure is not None
    assert (outcome.failure.reason, outcome.failure.step) == ("secret_not_found",
                                                              "Dockerfile:4")
    assert "secret npmrc: not found" in outcome.failure.message
    with pytest.raises(SecretNotFound) as err:  # used by no RUN: no line
        job_secrets(tmp_path, "acme", ["unused"], DOCKERFILE)
    assert err.value.location is None
    refused = classify(SecretError("secret x of tenant acme: larger than 500 KiB"), False)
    assert refused.failure is not None and refused.failure.reason == "bad_secret"


def test_job_options_carry_the_values_in_memory_only(tmp_path: Path) -> None:
    config = WorkerConfig(store=tmp_path, secrets_dir=tmp_path / "secrets")
    spec = JobSpec(DIGEST, DOCKERFILE, secrets=("npmrc",))
    options = job_options(spec, tmp_path / "ctx", tmp_path / "Dockerfile", config,
                          tmp_path / "anon.json", None, {"npmrc": b"value-123"})
    options.validate()
    assert options.untrusted and dict(options.secrets) == {"npmrc": b"value-123"}
    assert "value-123" not in repr(options)
    assert "value-123" not in json.dumps(spec.to_json())
    assert job_options(spec, tmp_path, tmp_path / "D", config, tmp_path / "a").secrets == {}
