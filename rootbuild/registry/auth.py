"""Registry credentials: where they are looked up, and ``login``/``logout`` that write them.

Rules (containers-auth.json(5), Docker's config.json):
- Lookup order: ``$REGISTRY_AUTH_FILE``, ``$XDG_RUNTIME_DIR/containers/auth.json``,
  ``~/.config/containers/auth.json``, ``~/.docker/config.json``; the first file with an
  entry for the registry wins. An entry is ``{"auth": base64("user:pass")}`` or
  ``{"username": ..., "password": ...}``. Keys may carry a scheme or a path
  (``https://ghcr.io/v1/``); Docker Hub is also stored as ``https://index.docker.io/v1/``.
- A ``credHelpers`` entry for the registry, or a ``credsStore`` in a file with no inline
  entry for it, is a clear error: helpers are not supported yet, and silently going
  anonymous would hide why a pull fails.
- ``login`` writes the containers auth file (``$REGISTRY_AUTH_FILE``, else
  ``$XDG_RUNTIME_DIR/containers/auth.json``, else ``~/.config/containers/auth.json``)
  atomically with mode 0600, keeping every other entry and key of the file.
- Credentials are only ever returned for the registry they are filed under.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rootbuild.errors import RegistryError
from rootbuild.image.refs import DEFAULT_DOMAIN
from rootbuild.registry.protocol import DOCKER_HUB_AUTH_KEY

MAX_AUTH_FILE = 1 << 20


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str = field(repr=False)


def _home(env: Mapping[str, str]) -> Path:
    return Path(env["HOME"]) if env.get("HOME") else Path.home()


def auth_files(env: Mapping[str, str] = os.environ) -> list[Path]:
    """The files searched for credentials, in order."""
    if env.get("REGISTRY_AUTH_FILE"):
        return [Path(env["REGISTRY_AUTH_FILE"])]
    files = []
    if env.get("XDG_RUNTIME_DIR"):
        files.append(Path(env["XDG_RUNTIME_DIR"]) / "containers" / "auth.json")
    files.append(_home(env) / ".config" / "containers" / "auth.json")
    files.append(_home(env) / ".docker" / "config.json")
    return files


def write_target(env: Mapping[str, str] = os.environ) -> Path:
    """The auth file ``login``/``logout`` write."""
    if env.get("REGISTRY_AUTH_FILE"):
        return Path(env["REGISTRY_AUTH_FILE"])
    if env.get("XDG_RUNTIME_DIR"):
        return Path(env["XDG_RUNTIME_DIR"]) / "containers" / "auth.json"
    return _home(env) / ".config" / "containers" / "auth.json"


def normalize_registry(registry: str) -> str:
    """The key a registry is filed under: scheme and path stripped, Docker Hub as docker.io."""
    key = registry.strip()
    for prefix in ("https://", "http://"):
        if key.startswith(prefix):
            key = key[len(prefix) :]
    key = key.split("/", 1)[0]
    if key in ("index.docker.io", "registry-1.docker.io", "registry.hub.docker.com"):
        key = DEFAULT_DOMAIN
    return key


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_AUTH_FILE + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise RegistryError(f"read auth file {path}: {exc.strerror or exc}") from exc
    if len(data) > MAX_AUTH_FILE:
        raise RegistryError(f"read auth file {path}: larger than {MAX_AUTH_FILE} bytes")
    if not data.strip():
        return {}
    try:
        obj = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RegistryError(f"read auth file {path}: invalid JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise RegistryError(f"read auth file {path}: expected a JSON object")
    return obj


def decode_entry(entry: object, where: str) -> Credentials | None:
    """Credentials of one ``auths`` entry; None when it holds none (e.g. only a token)."""
    if not isinstance(entry, dict):
        raise RegistryError(f"read {where}: entry must be an object")
    auth = entry.get("auth")
    if isinstance(auth, str) and auth:
        try:
            user, sep, password = base64.b64decode(auth, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError) as exc:
            raise RegistryError(f'read {where}: "auth" is not base64 of user:password') from exc
        if not sep:
            raise RegistryError(f'read {where}: "auth" is not base64 of user:password')
        return Credentials(user, password)
    name, secret = entry.get("username"), entry.get("password")
    if isinstance(name, str) and isinstance(secret, str) and name:
        return Credentials(name, secret)
    return None


def _keys_for(registry: str) -> list[str]:
    keys = [registry]
    if registry == DEFAULT_DOMAIN:
        keys.append(DOCKER_HUB_AUTH_KEY)
    return keys


def _inline_entry(obj: Mapping[str, Any], registry: str, path: Path) -> Credentials | None:
    auths = obj.get("auths") or {}
    if not isinstance(auths, dict):
        raise RegistryError(f'read auth file {path}: "auths" must be an object')
    wanted = _keys_for(registry)
    for key in wanted:  # exact keys first, then scheme/path spellings of the same host
        if key in auths:
            found = decode_entry(auths[key], f"auth file {path} entry {key!r}")
            if found is not None:
                return found
    for key, entry in auths.items():
        if isinstance(key, str) and key not in wanted and normalize_registry(key) == registry:
            found = decode_entry(entry, f"auth file {path} entry {key!r}")
            if found is not None:
                return found
    return None


def _helper_for(obj: Mapping[str, Any], registry: str) -> str | None:
    helpers = obj.get("credHelpers")
    if isinstance(helpers, dict):
        for key, helper in helpers.items():
            if isinstance(key, str) and normalize_registry(key) == registry:
                return str(helper)
    store = obj.get("credsStore")
    return str(store) if isinstance(store, str) and store else None


def find_credentials(registry: str, env: Mapping[str, str] = os.environ) -> Credentials | None:
    """The credentials filed for ``registry`` (see module rules), None to go anonymous."""
    registry = normalize_registry(registry)
    for path in auth_files(env):
        obj = _read_json(path)
        if obj is None:
            continue
        found = _inline_entry(obj, registry, path)
        if found is not None:
            return found
        helper = _helper_for(obj, registry)
        if helper is not None:
            raise RegistryError(
                f"find credentials for {registry}: {path} names the credential helper "
                f"docker-credential-{helper}; credential helpers are not supported yet "
                "(use rootbuild login, or $REGISTRY_AUTH_FILE)"
            )
    return None


def _write_atomic(path: Path, obj: Mapping[str, Any]) -> None:
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".auth-", dir=path.parent)
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "w") as f:
                json.dump(obj, f, indent="\t")
                f.write("\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
    except OSError as exc:
        raise RegistryError(f"write auth file {path}: {exc.strerror or exc}") from exc


def login(registry: str, creds: Credentials, *, env: Mapping[str, str] = os.environ) -> Path:
    """File ``creds`` for ``registry`` in the containers auth file; return its path."""
    if not creds.username or ":" in creds.username:
        raise RegistryError(f"login {registry}: the username must be non-empty, without ':'")
    registry = normalize_registry(registry)
    path = write_target(env)
    obj = dict(_read_json(path) or {})
    auths = obj.get("auths") or {}
    if not isinstance(auths, dict):
        raise RegistryError(f'read auth file {path}: "auths" must be an object')
    auths = {k: v for k, v in auths.items() if normalize_registry(k) != registry}
    token = base64.b64encode(f"{creds.username}:{creds.password}".encode()).decode()
    auths[registry] = {"auth": token}
    obj["auths"] = auths
    _write_atomic(path, obj)
    return path


def logout(registry: str, *, env: Mapping[str, str] = os.environ) -> bool:
    """Remove ``registry``'s entries from the containers auth file; True if there were any."""
    registry = normalize_registry(registry)
    path = write_target(env)
    obj = _read_json(path)
    if not obj:
        return False
    auths = obj.get("auths") or {}
    if not isinstance(auths, dict):
        raise RegistryError(f'read auth file {path}: "auths" must be an object')
    kept = {k: v for k, v in auths.items() if normalize_registry(k) != registry}
    if len(kept) == len(auths):
        return False
    obj["auths"] = kept
    _write_atomic(path, obj)
    return True
