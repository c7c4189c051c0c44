"""One registry's HTTP side: scheme, TLS, authentication, retries and redirects.

Rules (OCI distribution-spec v1.1; Docker registry token auth "token.md"; Docker's
insecure-registry behaviour):
- HTTPS with the system CA store plus ``*.crt`` from the cert dir (``DIR/*.crt`` and
  ``DIR/<host:port>/*.crt``, the containers-certs.d layout). Loopback registries and
  ``tls_verify=False`` may use plain HTTP: HTTPS is tried first and HTTP taken only when the
  server does not speak TLS (or, with ``tls_verify=False``, when TLS fails at all). A
  certificate that fails verification on a verified connection is an error, never a
  silent fallback (SECURITY.md rule 5).
- Auth follows the first 401's challenge: ``Bearer`` fetches a token from the challenge's
  realm for ``service`` and the request's ``scope`` (cached per scope, refetched once when a
  cached token is refused), ``Basic`` sends the credentials. Credentials and tokens are
  only sent to the registry's own host and its token realm; a redirect to another host (blob
  storage) is followed without them.
- Transient failures (5xx, 429, resets, timeouts) are retried a bounded number of times with
  exponential backoff; a refused connection is reported at once, naming host:port.
- Every response body read into memory is capped (manifests and configs 4 MiB, errors and
  tokens 1 MiB); callers stream blobs through verifiers themselves.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import ssl
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx
import trio

from rootbuild.errors import RegistryError
from rootbuild.registry.auth import Credentials, find_credentials, normalize_registry
from rootbuild.registry.protocol import Challenge, api_host, is_loopback, parse_www_authenticate
from rootbuild.registry.transport import DEFAULT_TRANSPORT as DEFAULT_TRANSPORT
from rootbuild.registry.transport import TransportOptions as TransportOptions  # re-exported

MAX_SMALL_BODY = 1 << 20
MAX_REDIRECTS = 5
RETRY_STATUS = frozenset({429, 500, 502, 503, 504})
# TransportErrors after which the same request may be sent again (a reset, a cut body).
TRANSIENT = (httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError, httpx.TimeoutException)

ContentFactory = Callable[[], Any]


class TransientError(RegistryError):
    """A transfer broke off (reset, cut body, timeout): the caller may start it again."""


def ssl_context(transport: TransportOptions, registry: str) -> ssl.SSLContext:
    """The TLS context for ``registry``: system CAs plus the cert dir's ``*.crt``."""
    ctx = ssl.create_default_context()
    if not transport.tls_verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx
    cert_dir = transport.cert_dir or (
        Path(os.environ["REGISTRY_CERT_DIR"]) if os.environ.get("REGISTRY_CERT_DIR") else None
    )
    if cert_dir is not None:
        for directory in (cert_dir, cert_dir / registry):
            try:
                if not directory.is_dir():
                    continue
                certs = sorted(directory.glob("*.crt"))
            except OSError as exc:
                raise RegistryError(
                    f"read certificate directory {directory}: {exc.strerror}") from exc
            for crt in certs:
                try:
                    ctx.load_verify_locations(cafile=str(crt))
                except (OSError, ssl.SSLError) as exc:
                    raise RegistryError(f"load CA certificate {crt}: {exc}") from exc
    return ctx


def _speaks_no_tls(exc: BaseException) -> bool:
    """True when a TLS handshake failed because the peer answered in plain HTTP."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return False
        if isinstance(seen, ssl.SSLError) and any(
            s in str(seen) for s in ("WRONG_VERSION_NUMBER", "record layer failure", "HTTP_REQUEST")
        ):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _causes(exc: BaseException) -> list[BaseException]:
    """``exc``, its causes and contexts, and the members of exception groups among them."""
    out: list[BaseException] = []
    todo = [exc]
    while todo and len(out) < 50:
        item = todo.pop(0)
        if item in out:
            continue
        out.append(item)
        if isinstance(item, BaseExceptionGroup):
            todo.extend(item.exceptions)
        todo.extend(e for e in (item.__cause__, item.__context__) if e is not None)
    return out


def describe_transport_error(exc: BaseException) -> str:
    """One line for a failed connection: refused, unresolvable, or a TLS failure."""
    causes = _causes(exc)
    for item in causes:
        if isinstance(item, ssl.SSLCertVerificationError):
            return (
                f"TLS certificate verification failed ({item.verify_message}); trust its CA "
                "with --cert-dir, or use --tls-verify=false"
            )
    for item in causes:
        if isinstance(item, ConnectionRefusedError):
            return "connection refused"
        if isinstance(item, socket.gaierror):
            return f"cannot resolve host ({item.strerror})"
        if isinstance(item, ssl.SSLError):
            return f"TLS handshake failed ({item.reason or item})"
    return str(exc) or type(exc).__name__


def _error_detail(body: bytes) -> str:
    """The first ``errors[].message`` of a distribution error body (spec "Error Codes")."""
    try:
        errors = json.loads(body).get("errors") or []
        first = errors[0]
        return f"{first.get('code', '')}: {first.get('message', '')}".strip(": ").lower()
    except (ValueError, AttributeError, IndexError, TypeError, KeyError):
        return ""


async def read_capped(response: httpx.Response, limit: int, what: str) -> bytes:
    """The whole body of a streamed response, refused once it passes ``limit`` bytes."""
    declared = response.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RegistryError(f"read {what}: {declared} bytes is over the {limit}-byte limit")
    parts, size = [], 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > limit:
            raise RegistryError(f"read {what}: over the {limit}-byte limit")
        parts.append(chunk)
    return b"".join(parts)


class RegistryClient:
    """An HTTP session with one registry (``docker.io``, ``localhost:5000``...)::

    async with RegistryClient("localhost:5000") as client:
        async with client.request("GET", "/v2/x/manifests/1", scope=...) as resp: ...
    """

    def __init__(
        self,
        registry: str,
        transport: TransportOptions = DEFAULT_TRANSPORT,
        *,
        credentials: Credentials | None = None,
        env: Mapping[str, str] = os.environ,
        retries: int = 3,
        backoff: float = 0.5,
        http_transport: httpx.AsyncBaseTransport | None = None,  # tests of the HTTP logic
    ) -> None:
        self.registry = normalize_registry(registry)
        self.host = api_host(self.registry)
        self.transport = transport
        self._env = env
        if transport.auth_file is not None:
            self._env = {"REGISTRY_AUTH_FILE": str(transport.auth_file)}
        self._creds = credentials
        self._creds_looked_up = credentials is not None
        self._retries = max(1, retries)
        self._backoff = backoff
        self._base: str | None = None
        self._challenge: Challenge | None = None
        self._tokens: dict[str, str] = {}
        self._plain_allowed = is_loopback(self.host) or not transport.tls_verify
        self._lock = trio.Lock()
        self._token_lock = trio.Lock()  # concurrent requests of one scope share one fetch
        self._http = httpx.AsyncClient(
            verify=ssl_context(transport, self.host),
            timeout=httpx.Timeout(60.0, connect=15.0),
            follow_redirects=False,
            headers={"User-Agent": "rootbuild"},
            transport=http_transport,
        )

    async def __aenter__(self) -> RegistryClient:
        return self

    async def __aexit__(
        self, typ: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._http.aclose()

    # -- credentials and the API base ------------------------------------------------------

    def credentials(self) -> Credentials | None:
        if not self._creds_looked_up:
            self._creds = find_credentials(self.registry, self._env)
            self._creds_looked_up = True
        return self._creds

    async def base(self) -> str:
        """``scheme://host``: found by pinging ``/v2/`` once (distribution-spec "end-1")."""
        async with self._lock:
            if self._base is None:
                self._base = await self._ping()
            return self._base

    async def _ping(self) -> str:
        schemes = ["https", "http"] if self._plain_allowed else ["https"]
        for scheme in schemes:
            url = f"{scheme}://{self.host}/v2/"
            try:
                response = await self._send_once("GET", url, {}, None, what="ping")
            except httpx.ConnectError as exc:
                fallback = scheme == "https" and self._plain_allowed
                if fallback and (not self.transport.tls_verify or _speaks_no_tls(exc)):
                    continue
                raise self._unreachable(exc) from exc
            except httpx.TransportError as exc:
                raise self._unreachable(exc) from exc
            await response.aclose()
            if response.status_code == 401:
                self._remember_challenge(response)
            elif response.status_code >= 500:
                raise RegistryError(f"ping registry {self.host}: HTTP {response.status_code}")
            return f"{scheme}://{self.host}"
        raise RegistryError(f"ping registry {self.host}: no usable scheme")  # pragma: no cover

    def _unreachable(self, exc: BaseException) -> RegistryError:
        return RegistryError(f"reach registry {self.host}: {describe_transport_error(exc)}")

    def _remember_challenge(self, response: httpx.Response) -> Challenge | None:
        for challenge in parse_www_authenticate(response.headers.get("www-authenticate", "")):
            if challenge.scheme in ("bearer", "basic"):
                self._challenge = challenge
                return challenge
        return None

    # -- auth ------------------------------------------------------------------------------

    def _same_host(self, url: str) -> bool:
        return urlsplit(url).netloc.lower() == self.host.lower()

    async def _auth_header(self, url: str, scope: str, refresh: bool) -> dict[str, str]:
        if self._challenge is None or not self._same_host(url):
            return {}
        creds = self.credentials()
        if self._challenge.scheme == "basic":
            if creds is None:
                return {}
            return {"Authorization": httpx.BasicAuth(creds.username, creds.password)._auth_header}
        async with self._token_lock:
            if refresh or scope not in self._tokens:
                self._tokens[scope] = await self._fetch_token(scope, creds)
        token = self._tokens[scope]
        return {"Authorization": f"Bearer {token}"} if token else {}

    async def _fetch_token(self, scope: str, creds: Credentials | None) -> str:
        """A bearer token for ``scope`` from the challenge's realm (token.md)."""
        assert self._challenge is not None
        realm = self._challenge.get("realm")
        if not realm or urlsplit(realm).scheme not in ("http", "https"):
            raise RegistryError(f"authenticate to {self.host}: bearer challenge without a realm")
        if creds is not None and urlsplit(realm).scheme == "http" and not self._plain_allowed:
            raise RegistryError(
                f"authenticate to {self.host}: refusing to send credentials to plain-HTTP "
                f"token realm {realm}"
            )
        # Several space-separated scopes (a mount's two repositories) go as repeated
        # ``scope`` parameters (token.md "Requesting a Token").
        # No scope at all (a login's ping) sends none, as `docker login` does.
        params: dict[str, str | list[str]] = {}
        if scope.split():
            params["scope"] = scope.split()
        if self._challenge.get("service"):
            params["service"] = self._challenge.get("service") or ""
        auth = None
        if creds is not None:
            params["account"] = creds.username
            auth = httpx.BasicAuth(creds.username, creds.password)
        try:
            response = await self._http.get(realm, params=params, auth=auth)
        except httpx.TransportError as exc:
            raise RegistryError(
                f"authenticate to {self.host}: token server {realm}: {exc}"
            ) from exc
        if response.status_code in (401, 403):
            raise self._unauthorized(creds)
        if response.status_code != 200:
            raise RegistryError(
                f"authenticate to {self.host}: token server answered HTTP {response.status_code}"
            )
        if len(response.content) > MAX_SMALL_BODY:
            raise RegistryError(f"authenticate to {self.host}: token response too large")
        try:
            body = json.loads(response.content)
            token = body.get("token") or body.get("access_token")
        except (ValueError, AttributeError) as exc:
            raise RegistryError(f"authenticate to {self.host}: malformed token response") from exc
        if not isinstance(token, str):
            raise RegistryError(f"authenticate to {self.host}: token response has no token")
        return token

    def _unauthorized(self, creds: Credentials | None, detail: str = "") -> RegistryError:
        if creds is None:
            extra = f" ({detail})" if detail else ""
            return RegistryError(
                f"authenticate to {self.host}: authentication required{extra}; "
                f"log in with: rootbuild login {self.registry}"
            )
        return RegistryError(
            f"authenticate to {self.host}: unauthorized: check your credentials for {self.registry}"
        )

    # -- requests --------------------------------------------------------------------------

    async def _send_once(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        content: ContentFactory | None,
        *,
        what: str,
    ) -> httpx.Response:
        body = content() if content is not None else None
        request = self._http.build_request(method, url, headers=dict(headers), content=body)
        return await self._http.send(request, stream=True)

    @contextlib.asynccontextmanager
    async def request(
        self,
        method: str,
        path: str,
        *,
        scope: str,
        headers: Mapping[str, str] | None = None,
        content: ContentFactory | None = None,
        what: str,
        ok: tuple[int, ...] = (200,),
        allow: tuple[int, ...] = (),
    ) -> AsyncIterator[httpx.Response]:
        """Send a request with auth, retries and redirects; yield the streamed response.

        ``path`` is an API path or an absolute URL (an upload ``Location``); ``content`` makes
        the body afresh for each attempt. Statuses in ``ok`` and ``allow`` are yielded, any
        other is a ``RegistryError`` naming ``what``."""
        response = await self._request(method, path, scope, headers or {}, content, what)
        try:
            if response.status_code not in ok + allow:
                body = await read_capped(response, MAX_SMALL_BODY, what)
                raise self._status_error(response.status_code, body, what)
            try:
                yield response
            except TRANSIENT as exc:
                raise TransientError(f"{what}: {self.host}: {exc or type(exc).__name__}") from exc
        finally:
            await response.aclose()

    def _status_error(self, status: int, body: bytes, what: str) -> RegistryError:
        detail = _error_detail(body)
        if status == 401:
            return self._unauthorized(self.credentials(), detail)
        if status == 403:
            return RegistryError(f"{what}: denied by {self.host}{f' ({detail})' if detail else ''}")
        return RegistryError(
            f"{what}: {self.host} answered HTTP {status}" + (f" ({detail})" if detail else "")
        )

    async def _request(
        self,
        method: str,
        path: str,
        scope: str,
        headers: Mapping[str, str],
        content: ContentFactory | None,
        what: str,
    ) -> httpx.Response:
        base = await self.base()
        url = path if "://" in path else base + path
        refreshed = False
        attempt = 0
        hops = 0
        while True:
            sent = dict(headers)
            sent.update(await self._auth_header(url, scope, refresh=False))
            try:
                response = await self._send_once(method, url, sent, content, what=what)
            except httpx.ConnectError as exc:
                raise self._unreachable(exc) from exc
            except TRANSIENT as exc:
                attempt += 1
                if attempt >= self._retries:
                    cause = str(exc) or type(exc).__name__
                    raise TransientError(f"{what}: {self.host}: {cause}") from exc
                await trio.sleep(self._backoff * 2 ** (attempt - 1))
                continue
            status = response.status_code
            if status == 401 and self._same_host(url) and not refreshed:
                refreshed = True
                challenge = self._remember_challenge(response)
                if challenge is not None and challenge.scheme == "bearer":
                    await response.aclose()
                    self._tokens[scope] = await self._fetch_token(scope, self.credentials())
                    continue
                if challenge is not None and self.credentials() is not None:
                    await response.aclose()
                    continue  # Basic: the next attempt carries the credentials
                return response
            if status in RETRY_STATUS and attempt + 1 < self._retries:
                await response.aclose()
                attempt += 1
                await trio.sleep(self._backoff * 2 ** (attempt - 1))
                continue
            if status in (301, 302, 303, 307, 308) and "location" in response.headers:
                await response.aclose()
                hops += 1
                if hops > MAX_REDIRECTS:
                    raise RegistryError(f"{what}: more than {MAX_REDIRECTS} redirects")
                url = urljoin(url, response.headers["location"])
                if status == 303:
                    method, content = "GET", None
                continue
            return response

    async def sleep_backoff(self, attempt: int) -> None:
        await trio.sleep(self._backoff * 2**attempt)

    @property
    def retries(self) -> int:
        return self._retries
