"""Credential lookup and login/logout (rootbuild.registry.auth)."""

from __future__ import annotations

import base64
import json
import stat
from pathlib import Path

import pytest

from rootbuild.errors import RegistryError
from rootbuild.registry.auth import Credentials, find_credentials, login, logout


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _write(path: Path, obj: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))
    return path


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {"HOME": str(tmp_path / "home"), "XDG_RUNTIME_DIR": str(tmp_path / "run")}


def _docker_config(env: dict[str, str]) -> Path:
    return Path(env["HOME"]) / ".docker" / "config.json"


def _runtime_auth(env: dict[str, str]) -> Path:
    return Path(env["XDG_RUNTIME_DIR"]) / "containers" / "auth.json"


def test_no_files_means_anonymous(env: dict[str, str]) -> None:
    assert find_credentials("ghcr.io", env) is None


def test_base64_auth_entry(env: dict[str, str]) -> None:
    _write(_docker_config(env), {"auths": {"ghcr.io": {"auth": _b64("me:pa:ss")}}})
    assert find_credentials("ghcr.io", env) == Credentials("me", "pa:ss")
    assert find_credentials("quay.io", env) is None  # never another registry's


def test_username_password_entry_and_url_keys(env: dict[str, str]) -> None:
    _write(
        _docker_config(env),
        {"auths": {"https://registry.example.com:5000/v1/": {"username": "u", "password": "p"}}},
    )
    assert find_credentials("registry.example.com:5000", env) == Credentials("u", "p")
    assert find_credentials("registry.example.com", env) is None  # the port is part of it


def test_docker_hub_legacy_key(env: dict[str, str]) -> None:
    _write(_docker_config(env), {"auths": {"https://index.docker.io/v1/": {"auth": _b64("d:h")}}})
    assert find_credentials("docker.io", env) == Credentials("d", "h")
    assert find_credentials("index.docker.io", env) == Credentials("d", "h")


def test_containers_auth_file_before_docker_config(env: dict[str, str]) -> None:
    _write(_docker_config(env), {"auths": {"ghcr.io": {"auth": _b64("docker:1")}}})
    _write(_runtime_auth(env), {"auths": {"ghcr.io": {"auth": _b64("podman:2")}}})
    assert find_credentials("ghcr.io", env) == Credentials("podman", "2")
    # an entry missing in the first file is looked for in the next one
    assert find_credentials("quay.io", env) is None
    _write(_docker_config(env), {"auths": {"quay.io": {"auth": _b64("q:3")}}})
    assert find_credentials("quay.io", env) == Credentials("q", "3")


def test_registry_auth_file_is_the_only_file(env: dict[str, str], tmp_path: Path) -> None:
    _write(_docker_config(env), {"auths": {"ghcr.io": {"auth": _b64("docker:1")}}})
    own = _write(tmp_path / "mine.json", {"auths": {}})
    env = {**env, "REGISTRY_AUTH_FILE": str(own)}
    assert find_credentials("ghcr.io", env) is None


def test_credential_helpers_fail_clearly(env: dict[str, str]) -> None:
    _write(_docker_config(env), {"credHelpers": {"gcr.io": "gcloud"}, "auths": {}})
    with pytest.raises(
        RegistryError,
        match=r"^find credentials for gcr\.io: .* docker-credential-gcloud; "
        r"credential helpers are not supported yet",
    ):
        find_credentials("gcr.io", env)
    assert find_credentials("ghcr.io", env) is None


def test_creds_store_fails_unless_an_inline_entry_exists(env: dict[str, str]) -> None:
    _write(
        _docker_config(env),
        {"credsStore": "desktop", "auths": {"ghcr.io": {"auth": _b64("a:b")}, "quay.io": {}}},
    )
    assert find_credentials("ghcr.io", env) == Credentials("a", "b")
    with pytest.raises(RegistryError, match="docker-credential-desktop"):
        find_credentials("quay.io", env)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "invalid JSON"),
        ("[]", "expected a JSON object"),
        ('{"auths": {"ghcr.io": {"auth": "!!!"}}}', "not base64 of user:password"),
        ('{"auths": {"ghcr.io": {"auth": "' + _b64("nocolon") + '"}}}', "not base64"),
    ],
)
def test_malformed_auth_files_are_errors(env: dict[str, str], content: str, message: str) -> None:
    path = _docker_config(env)
    path.parent.mkdir(parents=True)
    path.write_text(content)
    with pytest.raises(RegistryError, match=message):
        find_credentials("ghcr.io", env)


def test_login_writes_runtime_auth_file_mode_0600(env: dict[str, str]) -> None:
    path = login("localhost:5000", Credentials("alice", "s3cret"), env=env)
    assert path == _runtime_auth(env)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text()) == {
        "auths": {"localhost:5000": {"auth": _b64("alice:s3cret")}}
    }
    assert find_credentials("localhost:5000", env) == Credentials("alice", "s3cret")


def test_login_keeps_other_entries_and_replaces_spellings(env: dict[str, str]) -> None:
    _write(
        _runtime_auth(env),
        {
            "auths": {
                "quay.io": {"auth": _b64("q:q")},
                "https://index.docker.io/v1/": {"auth": _b64("old:old")},
            },
            "other": 1,
        },
    )
    login("docker.io", Credentials("new", "pw"), env=env)
    obj = json.loads(_runtime_auth(env).read_text())
    assert obj["other"] == 1
    assert obj["auths"] == {"quay.io": {"auth": _b64("q:q")}, "docker.io": {"auth": _b64("new:pw")}}
    assert find_credentials("docker.io", env) == Credentials("new", "pw")


def test_login_without_runtime_dir_uses_config_dir(tmp_path: Path) -> None:
    env = {"HOME": str(tmp_path)}
    path = login("ghcr.io", Credentials("a", "b"), env=env)
    assert path == tmp_path / ".config" / "containers" / "auth.json"
    assert find_credentials("ghcr.io", env) == Credentials("a", "b")


def test_login_honours_registry_auth_file(env: dict[str, str], tmp_path: Path) -> None:
    target = tmp_path / "x" / "auth.json"
    assert login("ghcr.io", Credentials("a", "b"), env={**env, "REGISTRY_AUTH_FILE": str(target)})
    assert target.is_file()
    assert not _runtime_auth(env).exists()


def test_logout_removes_only_that_registry(env: dict[str, str]) -> None:
    login("ghcr.io", Credentials("a", "b"), env=env)
    login("quay.io", Credentials("c", "d"), env=env)
    assert logout("ghcr.io", env=env) is True
    assert logout("ghcr.io", env=env) is False
    assert find_credentials("ghcr.io", env) is None
    assert find_credentials("quay.io", env) == Credentials("c", "d")
    assert stat.S_IMODE(_runtime_auth(env).stat().st_mode) == 0o600


def test_logout_without_file_is_false(env: dict[str, str]) -> None:
    assert logout("ghcr.io", env=env) is False


def test_credentials_repr_hides_the_password() -> None:
    assert "s3cret" not in repr(Credentials("alice", "s3cret"))
