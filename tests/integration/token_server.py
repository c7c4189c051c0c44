"""A real Bearer-token setup for the registry tests: a small token server (Docker registry
token auth, distribution ``docs/spec/auth/token.md``) and Debian's ``docker-registry``
(distribution v2.8) configured to trust it.

Rules:
- The token server is Python's ``http.server`` on a loopback port, HTTPS with the test CA's
  server certificate (the realm is ``https://127.0.0.1:PORT/token``, as real realms are). It
  answers ``GET /token?service=..&scope=..[&scope=..]``: a request with Basic credentials
  that do not match the one user is refused with 401; a request without credentials gets an
  anonymous token with no access (as Docker Hub does for a private repository); the user
  gets every action asked for in each ``repository:NAME:ACTIONS`` scope.
- Tokens are JWTs (RFC 7519) signed RS256 with the ``openssl`` command (no Python crypto
  dependency). The header carries ``x5c`` = [the signing certificate]: distribution's
  ``registry/auth/token/token.go`` takes the key from the x5c leaf after verifying it
  against ``rootcertbundle``, which holds that same self-signed certificate. Claims:
  ``iss``, ``sub``, ``aud`` (the service), ``exp``/``nbf``/``iat``, ``jti``, ``access``.
- Every token request is recorded (account sent, whether credentials came, scopes, the
  answer), so tests can count requests per scope and prove the client's token cache.
- The registry is started like ``registry_fixtures.start_registry`` (its own process, a log
  file with the access log, torn down after); it is ready when ``GET /v2/`` answers 401
  with a Bearer challenge naming the realm. Nothing here skips: a missing piece fails.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from registry_fixtures import (
    PASSWORD,
    REGISTRY_BIN,
    USERNAME,
    Certs,
    Registry,
    free_port,
    make_certs,
    stop_registry,
)

SERVICE = "rootbuild-test"
ISSUER = "rootbuild-test-issuer"
TOKEN_TTL = 300


def _b64url(data: bytes) -> str:
    """JOSE base64url without padding (RFC 7515 section 2)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _run_openssl(args: list[str], cwd: Path, data: bytes | None = None) -> bytes:
    proc = subprocess.run(["openssl", *args], cwd=cwd, input=data, capture_output=True)
    if proc.returncode != 0:
        pytest.fail(f"openssl {' '.join(args)} failed:\n{proc.stderr.decode(errors='replace')}")
    return proc.stdout


@dataclass
class TokenRequest:
    """One request the token server answered."""

    account: str | None
    authenticated: bool  # valid Basic credentials came with it
    scopes: tuple[str, ...]
    service: str | None
    status: int


@dataclass
class Signer:
    """An RSA key and its self-signed certificate (the registry's ``rootcertbundle``)."""

    key: Path
    cert: Path
    cert_der_b64: str

    def sign_jwt(self, claims: dict[str, Any]) -> str:
        header = {"typ": "JWT", "alg": "RS256", "x5c": [self.cert_der_b64]}
        signing_input = (
            _b64url(json.dumps(header, separators=(",", ":")).encode())
            + "."
            + _b64url(json.dumps(claims, separators=(",", ":")).encode())
        )
        # RSASSA-PKCS1-v1_5 with SHA-256 is JWS "RS256" (RFC 7518 section 3.3).
        signature = _run_openssl(
            ["dgst", "-sha256", "-sign", str(self.key)], self.key.parent, signing_input.encode()
        )
        return signing_input + "." + _b64url(signature)


def make_signer(base: Path) -> Signer:
    work = base / "token-signing"
    work.mkdir()
    _run_openssl(
        [
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-keyout",
            "token.key",
            "-out",
            "token.crt",
            "-subj",
            "/CN=rootbuild test token signer",
        ],
        work,
    )
    der = _run_openssl(["x509", "-in", "token.crt", "-outform", "DER"], work)
    return Signer(work / "token.key", work / "token.crt", base64.b64encode(der).decode())


def parse_scope(scope: str) -> dict[str, Any] | None:
    """``repository:NAME:pull,push`` → a token ``access`` entry (token.md "Requesting a
    Token"); NAME may not hold ':' but a type like ``repository(plugin)`` is kept whole."""
    kind, sep, rest = scope.partition(":")
    name, sep2, actions = rest.rpartition(":")
    if not sep or not sep2 or not kind or not name:
        return None
    return {"type": kind, "name": name, "actions": [a for a in actions.split(",") if a]}


@dataclass
class TokenServer:
    url: str  # the realm
    signer: Signer
    users: dict[str, str]
    server: ThreadingHTTPServer
    thread: threading.Thread
    requests: list[TokenRequest] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, req: TokenRequest) -> None:
        with self.lock:
            self.requests.append(req)

    def mark(self) -> int:
        """A position in the request log: pass to ``since`` to see what came after."""
        with self.lock:
            return len(self.requests)

    def since(self, mark: int) -> list[TokenRequest]:
        with self.lock:
            return list(self.requests[mark:])

    def count(self, scope: str, mark: int = 0) -> int:
        """Token requests since ``mark`` that asked for ``scope``."""
        return sum(1 for r in self.since(mark) if scope in r.scopes)

    def issue(self, account: str | None, scopes: tuple[str, ...]) -> str:
        now = int(time.time())
        access = []
        if account is not None:
            for scope in scopes:
                entry = parse_scope(scope)
                if entry is not None:
                    access.append(entry)
        claims = {
            "iss": ISSUER,
            "sub": account or "",
            "aud": SERVICE,
            "exp": now + TOKEN_TTL,
            "nbf": now - 5,
            "iat": now,
            "jti": secrets.token_hex(8),
            "access": access,
        }
        return self.signer.sign_jwt(claims)


def _handler(owner: TokenServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass  # requests are recorded as data instead

        def _send(
            self, status: int, body: dict[str, Any], extra: dict[str, str] | None = None
        ) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for key, value in (extra or {}).items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            parts = urlsplit(self.path)
            if parts.path != "/token":
                self._send(404, {"errors": [{"code": "NOT_FOUND", "message": parts.path}]})
                return
            query = parse_qs(parts.query, keep_blank_values=True)
            scopes = tuple(s for value in query.get("scope", []) for s in value.split(" ") if s)
            account = query["account"][0] if query.get("account") else None
            service = query["service"][0] if query.get("service") else None
            header = self.headers.get("Authorization", "")
            user: str | None = None
            if header:
                scheme, _, value = header.partition(" ")
                try:
                    name, _, password = base64.b64decode(value).decode().partition(":")
                except (ValueError, UnicodeDecodeError):
                    name, password = "", ""
                if scheme.lower() != "basic" or owner.users.get(name) != password:
                    owner.record(TokenRequest(account, False, scopes, service, 401))
                    self._send(
                        401,
                        {"errors": [{"code": "UNAUTHORIZED", "message": "bad credentials"}]},
                        {"WWW-Authenticate": 'Basic realm="rootbuild-test-token"'},
                    )
                    return
                user = name
            if service != SERVICE:
                owner.record(TokenRequest(account, user is not None, scopes, service, 400))
                self._send(400, {"errors": [{"code": "UNSUPPORTED", "message": "service"}]})
                return
            token = owner.issue(user, scopes)
            owner.record(TokenRequest(account, user is not None, scopes, service, 200))
            self._send(
                200,
                {
                    "token": token,
                    "access_token": token,
                    "expires_in": TOKEN_TTL,
                    "issued_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                },
            )

    return Handler


def start_token_server(base: Path, certs: Certs) -> TokenServer:
    """Serve tokens over HTTPS (the test CA's 127.0.0.1 certificate) on a free port."""
    signer = make_signer(base)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(certs.server_cert), str(certs.server_key))
    httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
    port = int(httpd.server_address[1])
    thread = threading.Thread(target=httpd.serve_forever, name="token-server", daemon=True)
    owner = TokenServer(
        f"https://127.0.0.1:{port}/token", signer, {USERNAME: PASSWORD}, httpd, thread
    )
    httpd.RequestHandlerClass = _handler(owner)
    thread.start()
    return owner


def stop_token_server(owner: TokenServer) -> None:
    owner.server.shutdown()
    owner.server.server_close()
    owner.thread.join(timeout=10)


# -- the registry that trusts it -----------------------------------------------------------------


def _config_yaml(port: int, storage: Path, certs: Certs, tokens: TokenServer) -> str:
    return (
        "\n".join(
            [
                "version: 0.1",
                "log:",
                "  level: info",
                "  formatter: text",
                "  accesslog:",
                "    disabled: false",
                "storage:",
                "  filesystem:",
                f"    rootdirectory: {storage}",
                "  maintenance:",
                "    uploadpurging:",
                "      enabled: false",
                "http:",
                f"  addr: 127.0.0.1:{port}",
                f"  secret: {secrets.token_hex(16)}",
                "  tls:",
                f"    certificate: {certs.server_cert}",
                f"    key: {certs.server_key}",
                "auth:",
                "  token:",
                f'    realm: "{tokens.url}"',
                f"    service: {SERVICE}",
                f"    issuer: {ISSUER}",
                f"    rootcertbundle: {tokens.signer.cert}",
            ]
        )
        + "\n"
    )


def _challenge(reg: Registry) -> str | None:
    """The ``WWW-Authenticate`` of an anonymous ``GET /v2/``, None while not answering."""
    assert reg.tls is not None
    ctx = ssl.create_default_context(cafile=str(reg.tls.ca_file))
    try:
        with urllib.request.urlopen(f"https://{reg.host}/v2/", timeout=5, context=ctx):
            return ""  # 200 without a token: not what this registry must do
    except urllib.error.HTTPError as exc:
        return str(exc.headers.get("WWW-Authenticate", "")) if exc.code == 401 else ""
    except (OSError, urllib.error.URLError):
        return None


@dataclass
class TokenRegistry:
    registry: Registry
    tokens: TokenServer


def start_token_registry(base: Path) -> TokenRegistry:
    if not os.access(REGISTRY_BIN, os.X_OK):
        pytest.fail(f"integration prerequisite missing: {REGISTRY_BIN} (Debian docker-registry)")
    base.mkdir(parents=True, exist_ok=True)
    certs = make_certs(base)
    tokens = start_token_server(base, certs)
    storage = base / "storage"
    storage.mkdir()
    last_log = ""
    for _attempt in range(3):
        port = free_port()
        config = base / "config.yml"
        config.write_text(_config_yaml(port, storage, certs, tokens))
        log = base / f"registry-{port}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [REGISTRY_BIN, "serve", str(config)],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={"PATH": "/usr/bin:/bin", "HOME": str(base)},
            )
        reg = Registry(f"127.0.0.1:{port}", storage, log, proc, certs, None)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and proc.poll() is None:
            challenge = _challenge(reg)
            if challenge is not None:
                expected = f'Bearer realm="{tokens.url}",service="{SERVICE}"'
                if challenge != expected:
                    stop_registry(reg)
                    stop_token_server(tokens)
                    pytest.fail(f"token registry challenge {challenge!r}, want {expected!r}")
                return TokenRegistry(reg, tokens)
            time.sleep(0.1)
        last_log = log.read_text(errors="replace")
        stop_registry(reg)
        if "address already in use" not in last_log:
            break
    stop_token_server(tokens)
    pytest.fail(f"docker-registry with token auth did not come up:\n{last_log}")
    raise AssertionError


@pytest.fixture(scope="session", name="token_registry")
def token_registry_fixture(registry_base: Path) -> Iterator[TokenRegistry]:
    """HTTPS (test CA: ``registry.tls.ca_dir``) with Bearer token auth from ``tokens``."""
    setup = start_token_registry(registry_base / "token")
    try:
        yield setup
    finally:
        stop_registry(setup.registry)
        stop_token_server(setup.tokens)
