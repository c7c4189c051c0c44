"""Bearer token auth against a real registry: Debian's ``docker-registry`` (distribution
v2.8) with ``auth: token`` trusting the test token server in ``token_server.py`` (HTTPS
realm, RS256 JWTs with an ``x5c`` header), driven through the real ``rootbuild`` executable
as the unprivileged build user; skopeo is the independent client.

- ``rootbuild login`` goes through the token flow (GET /v2/ → 401 Bearer → token with the
  credentials → 200) before it files anything; push, ``skopeo inspect``, pull and ``FROM``
  then work with the filed credentials.
- The client caches tokens per scope: one push and one pull ask the token server for only
  a few tokens, however many blob requests they make.
- Wrong password (at login and in the auth file) and anonymous push: one clear error line,
  a non-zero exit, nothing filed, the store unchanged.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import stat
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from registry_fixtures import (  # noqa: F401 (pytest fixtures)
    MT_OCI_MANIFEST,
    PASSWORD,
    USERNAME,
    registry_base_fixture,
)
from token_server import (  # noqa: F401 (pytest fixtures)
    SERVICE,
    TokenRegistry,
    token_registry_fixture,
)

pytestmark = pytest.mark.integration

DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")


def unique() -> str:
    return uuid.uuid4().hex[:12]


def skopeo(rb: Any, *args: str) -> str:
    return str(rb.as_user(["skopeo", "--insecure-policy", *args]).stdout)


def assert_one_clear_error(proc: Any, *needles: str) -> str:
    """Non-zero exit, exactly one non-empty stderr line ``rootbuild: ...``, no traceback."""
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode != 0, f"expected failure, got 0:\n{proc.stdout}\n{proc.stderr}"
    assert len(lines) == 1, f"expected one error line, got:\n{proc.stderr}"
    line = str(lines[0])
    assert line.startswith("rootbuild: "), line
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle.lower() in line.lower(), f"{needle!r} not in {line!r}"
    return line


def build_scratch(rb: Any, tag: str, content: str) -> str:
    ctx = rb.make_context(
        f"ctx-{unique()}",
        {
            "Dockerfile": "FROM scratch\nCOPY hello.txt /hello.txt\nCOPY two.txt /two.txt\n",
            "hello.txt": content,
            "two.txt": unique(),
        },
    )
    return str(rb.run("build", "-q", "-t", tag, str(ctx)).stdout.strip().splitlines()[-1])


def inspect(rb: Any, name: str, root: Path) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(
        rb.run("inspect", "--root", str(root), name, store=False).stdout
    )
    return doc


def auth_env(rb: Any) -> tuple[dict[str, str], Path]:
    path = rb.workdir / "auth" / "auth.json"
    return {"REGISTRY_AUTH_FILE": str(path)}, path


def login(rb: Any, setup: TokenRegistry, password: str, env: dict[str, str]) -> Any:
    reg = setup.registry
    assert reg.tls is not None
    return rb.run(
        "login",
        reg.host,
        "-u",
        USERNAME,
        "--password-stdin",
        "--cert-dir",
        str(reg.tls.ca_dir),
        input=f"{password}\n".encode(),
        env=env,
        store=False,
        check=False,
    )


def write_authfile(rb: Any, path: Path, host: str, password: str) -> None:
    path.parent.mkdir(exist_ok=True)
    path.write_text(
        json.dumps(
            {
                "auths": {
                    host: {"auth": base64.b64encode(f"{USERNAME}:{password}".encode()).decode()}
                }
            }
        )
    )
    os.chmod(path, 0o600)
    os.chown(path.parent, rb.user.uid, rb.user.gid)
    os.chown(path, rb.user.uid, rb.user.gid)


def access_log_statuses(setup: TokenRegistry, since: int, path_re: str) -> list[int]:
    """HTTP statuses the registry's access log shows for requests matching ``path_re``,
    among log lines after character ``since``."""
    time.sleep(0.3)  # the access-log line is written as the response finishes
    text = setup.registry.log_text()[since:]
    return [
        int(m.group(1)) for m in re.finditer(rf'"[A-Z]+ {path_re} HTTP/[0-9.]+" (\d{{3}})', text)
    ]


# -- login, push, skopeo, pull, FROM -------------------------------------------------------------


def test_token_login_push_inspect_pull_from(rb: Any, token_registry: TokenRegistry) -> None:
    setup, tokens, reg = token_registry, token_registry.tokens, token_registry.registry
    assert reg.tls is not None
    ca = str(reg.tls.ca_dir)
    env, authfile = auth_env(rb)
    repo = f"tok-{unique()}"
    ref = reg.ref(f"{repo}:1")
    build_scratch(rb, "app:1", "through a token\n")

    # login: an anonymous GET /v2/ gets the Bearer challenge, the token server sees the
    # credentials, the authenticated GET /v2/ answers 200; only then is anything filed.
    log_mark, mark = len(reg.log_text()), tokens.mark()
    proc = login(rb, setup, PASSWORD, env)
    assert proc.returncode == 0, proc.stderr
    seen = tokens.since(mark)
    assert [(r.account, r.authenticated, r.service, r.status) for r in seen] == [
        (USERNAME, True, SERVICE, 200)
    ], seen
    assert access_log_statuses(setup, log_mark, "/v2/") == [401, 200]
    assert stat.S_IMODE(authfile.stat().st_mode) == 0o600
    entry = json.loads(authfile.read_text())["auths"][reg.host]
    assert base64.b64decode(entry["auth"]).decode() == f"{USERNAME}:{PASSWORD}"

    # push: the token for repository:REPO:pull,push is fetched once and reused for every
    # HEAD, upload and the manifest PUT.
    mark = tokens.mark()
    digest = rb.run("push", "-q", "--cert-dir", ca, "app:1", ref, env=env).stdout.strip()
    assert DIGEST.match(digest)
    push_scope = f"repository:{repo}:pull,push"
    assert tokens.count(push_scope, mark) == 1, tokens.since(mark)
    assert all(r.status == 200 and r.authenticated for r in tokens.since(mark))

    # skopeo, with the auth file rootbuild wrote and the same CA, goes through the same
    # token server and sees the manifest rootbuild pushed.
    raw = skopeo(
        rb, "inspect", "--raw", "--authfile", str(authfile), "--cert-dir", ca, f"docker://{ref}"
    )
    assert "sha256:" + hashlib.sha256(raw.encode()).hexdigest() == digest
    assert json.loads(raw)["mediaType"] == MT_OCI_MANIFEST
    info = json.loads(
        skopeo(
            rb, "inspect", "--creds", f"{USERNAME}:{PASSWORD}", "--cert-dir", ca, f"docker://{ref}"
        )
    )
    assert info["Digest"] == digest

    # pull into a fresh store: config + 2 layers + manifest, one token.
    store2 = rb.workdir / "store2"
    mark, log_mark = tokens.mark(), len(reg.log_text())
    out = rb.run("pull", "--root", str(store2), "-q", "--cert-dir", ca, ref, env=env, store=False)
    assert out.stdout.strip().splitlines()[-1] == digest
    blob_gets = access_log_statuses(setup, log_mark, rf"/v2/{repo}/blobs/sha256:[0-9a-f]{{64}}")
    assert blob_gets == [200, 200, 200], blob_gets
    pull_scope = f"repository:{repo}:pull"
    assert tokens.count(pull_scope, mark) == 1, tokens.since(mark)
    assert len(tokens.since(mark)) == 1, tokens.since(mark)
    assert inspect(rb, ref, store2)["ManifestDigest"] == digest

    # FROM the pushed image in another fresh store.
    store3 = rb.workdir / "store3"
    ctx = rb.make_context(f"ctx-{unique()}", {"Dockerfile": f"FROM {ref}\nCOPY x /x\n", "x": "x"})
    mark = tokens.mark()
    rb.run(
        "build",
        "--root",
        str(store3),
        "-q",
        "--cert-dir",
        ca,
        "-t",
        "derived:1",
        str(ctx),
        env=env,
        store=False,
    )
    derived = inspect(rb, "derived:1", store3)
    assert len(derived["Manifest"]["layers"]) == 3
    assert 1 <= tokens.count(pull_scope, mark) <= 2, tokens.since(mark)


# -- refused credentials -------------------------------------------------------------------------


def test_token_wrong_password(rb: Any, token_registry: TokenRegistry) -> None:
    setup, tokens, reg = token_registry, token_registry.tokens, token_registry.registry
    assert reg.tls is not None
    ca = str(reg.tls.ca_dir)
    env, authfile = auth_env(rb)

    # login: the token server refuses the password; nothing is filed.
    mark = tokens.mark()
    proc = login(rb, setup, "wrong-password", env)
    assert_one_clear_error(proc, reg.host)
    assert [(r.account, r.status) for r in tokens.since(mark)] == [(USERNAME, 401)]
    assert not authfile.exists()

    # an image there, pushed by skopeo with the right password
    repo = f"tokwrong-{unique()}"
    build_scratch(rb, "app:1", "wrong creds\n")
    layout = rb.workdir / "oci"
    rb.run(
        "build",
        "-q",
        "--output",
        f"oci:{layout}:1",
        str(rb.make_context("c2", {"Dockerfile": "FROM scratch\nCOPY a /a\n", "a": unique()})),
    )
    skopeo(
        rb,
        "copy",
        "--dest-cert-dir",
        ca,
        "--dest-creds",
        f"{USERNAME}:{PASSWORD}",
        f"oci:{layout}:1",
        f"docker://{reg.ref(repo + ':1')}",
    )

    # a wrong password in the auth file: pull and push fail with one line, store unchanged
    write_authfile(rb, authfile, reg.host, "not-the-password")
    snap = rb.store_snapshot()
    proc = rb.run("pull", "-q", "--cert-dir", ca, reg.ref(f"{repo}:1"), check=False, env=env)
    assert_one_clear_error(proc, reg.host, "credentials")
    assert rb.store_snapshot() == snap
    proc = rb.run(
        "push", "-q", "--cert-dir", ca, "app:1", reg.ref(f"{repo}:2"), check=False, env=env
    )
    assert_one_clear_error(proc, reg.host, "credentials")
    assert rb.store_snapshot() == snap


def test_token_anonymous_push_refused(rb: Any, token_registry: TokenRegistry) -> None:
    tokens, reg = token_registry.tokens, token_registry.registry
    assert reg.tls is not None
    ca = str(reg.tls.ca_dir)
    env, authfile = auth_env(rb)
    assert not authfile.exists()
    build_scratch(rb, "app:1", "anonymous\n")
    repo = f"tokanon-{unique()}"

    # Logged out: the token server hands out an anonymous token without access, the
    # registry refuses it, and rootbuild says to log in.
    snap = rb.store_snapshot()
    mark = tokens.mark()
    proc = rb.run(
        "push", "-q", "--cert-dir", ca, "app:1", reg.ref(f"{repo}:1"), check=False, env=env
    )
    assert_one_clear_error(proc, reg.host, "rootbuild login")
    seen = tokens.since(mark)
    assert seen and all(not r.authenticated and r.status == 200 for r in seen), seen
    # The first token, then at most one refetch per refused request (3 blobs checked at
    # once): bounded, no retry loop.
    assert len(seen) <= 1 + 3, seen
    assert rb.store_snapshot() == snap

    # Nothing reached the registry: skopeo (with the right password) finds no such image.
    proc = rb.as_user(
        [
            "skopeo",
            "--insecure-policy",
            "inspect",
            "--raw",
            "--creds",
            f"{USERNAME}:{PASSWORD}",
            "--cert-dir",
            ca,
            f"docker://{reg.ref(repo + ':1')}",
        ],
        check=False,
    )
    assert proc.returncode != 0 and "manifest unknown" in proc.stderr.lower(), proc.stderr

    # Logged in then out again: refused the same way.
    rb.run(
        "login",
        reg.host,
        "-u",
        USERNAME,
        "--password-stdin",
        "--cert-dir",
        ca,
        input=f"{PASSWORD}\n".encode(),
        env=env,
        store=False,
    )
    rb.run("logout", reg.host, env=env, store=False)
    proc = rb.run(
        "push", "-q", "--cert-dir", ca, "app:1", reg.ref(f"{repo}:1"), check=False, env=env
    )
    assert_one_clear_error(proc, "rootbuild login")
    assert rb.store_snapshot() == snap
