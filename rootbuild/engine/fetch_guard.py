"""Where the builder may connect when it fetches for an untrusted build: ``ADD <url>``
and Git sources checked against the deny list of untrusted RUN, and pinned to the
address that was checked.

Job: ``DestinationGuard.check(host, port)`` resolves a host once (IPv4 only) and refuses
it when ANY of its addresses is denied (``rootbuild.netrules.denied_class``: the host's
loopback and own addresses, link-local and the metadata address, private ranges, ...);
``GuardedBackend`` is httpcore's network backend for httpx that checks every connection
(each redirect opens one) and connects to the checked address, never resolving again;
``guarded_transport`` is httpx's transport over it; ``git_pin`` gives git's
``http.curloptResolve`` pin for an https/http remote.

Rules:
- One lookup, then the checked address is what the socket connects to: a name that
  resolves to a public address when checked and to ``127.0.0.1`` a moment later (DNS
  rebinding) gains nothing. TLS is still verified against the host name (httpcore sends
  the URL's host as SNI and checks the certificate against it, whatever address the
  socket reached).
- Untrusted fetches use no proxy (httpx's ``trust_env`` off, git without the proxy
  variables): through a proxy the destination is resolved and reached by the proxy,
  which the builder cannot check, and the proxy itself is usually on a private or
  loopback address.
- A refusal is ``DeniedDestination``; the fetcher names the Dockerfile source with it
  (``refusal``). A name that does not resolve, or resolves to no IPv4 address, is an
  ordinary connect error.
"""

from __future__ import annotations

import ipaddress
import socket
import ssl
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import httpcore
import httpx
import trio

from rootbuild.netrules import denied_class
from rootbuild.sandbox.netdeny import host_addresses

Resolver = Callable[[str, int], Awaitable[list[str]]]
LOOKUP_TIMEOUT = 15.0


class DeniedDestination(Exception):
    """``host`` resolved to ``address``, which an untrusted build may not reach."""

    def __init__(self, host: str, address: str, why: str) -> None:
        super().__init__(f"{host} -> {address}: {why}")
        self.host, self.address, self.why = host, address, why

    def describe(self) -> str:
        """"destination 127.0.0.1 is the host's loopback" (the name too when it differs)."""
        shown = self.address if self.host in (self.address, f"[{self.address}]") \
            else f"{self.host} ({self.address})"
        return f"destination {shown} is {self.why}"


def refusal(what: str, exc: DeniedDestination) -> str:
    """The one line of a refused fetch (``what``: "ADD: <url>", credentials removed)."""
    return f"{what}: {exc.describe()}; refused in untrusted builds"


async def system_resolve(host: str, port: int) -> list[str]:
    """The IPv4 addresses of ``host`` (the system resolver, once)."""
    found = await trio.socket.getaddrinfo(host, port, socket.AF_INET, socket.SOCK_STREAM)
    out: list[str] = []
    for *_, sockaddr in found:
        addr = str(sockaddr[0])
        if addr not in out:
            out.append(addr)
    return out


def _literal(host: str) -> str | None:
    """``host`` as an IP address when it is one (brackets of IPv6 removed)."""
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        return str(ipaddress.ip_address(bare.split("%", 1)[0]))
    except ValueError:
        return None


@dataclass
class DestinationGuard:
    """The check of one untrusted build (``own``: the builder's own IPv4 addresses, read
    once, when first needed)."""

    resolve: Resolver = system_resolve
    own_addresses: Callable[[], Iterable[str]] = host_addresses
    _own: list[str] | None = field(default=None, init=False)

    def _host_addresses(self) -> list[str]:
        if self._own is None:
            self._own = list(self.own_addresses())
        return self._own

    async def check(self, host: str, port: int) -> list[str]:
        """The addresses to connect to (all of ``host``'s, all allowed), else raises
        ``DeniedDestination`` for the first denied one, or ``OSError`` when the name has
        no IPv4 address."""
        literal = _literal(host)
        if literal is not None:
            addresses = [literal]
        else:
            with trio.move_on_after(LOOKUP_TIMEOUT) as scope:
                addresses = await self.resolve(host, port)
            if scope.cancelled_caught:
                raise OSError(f"lookup of {host} timed out")
            if not addresses:
                raise OSError(f"{host} has no IPv4 address (untrusted builds fetch over "
                              "IPv4 only)")
        own = self._host_addresses()
        for address in addresses:
            why = denied_class(address, own)
            if why is not None:
                raise DeniedDestination(host, address, why)
        return addresses


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """httpcore's trio backend behind the guard: every TCP connection is checked, then
    made to a checked address (the host name stays the TLS server name)."""

    def __init__(self, guard: DestinationGuard,
                 inner: httpcore.AsyncNetworkBackend | None = None) -> None:
        self.guard = guard
        self.inner = inner if inner is not None else httpcore.TrioBackend()
        self.connected: list[tuple[str, str, int]] = []  # (host, address, port), for tests

    async def connect_tcp(
        self, host: str, port: int, timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        try:
            addresses = await self.guard.check(host, port)
        except OSError as exc:
            raise httpcore.ConnectError(str(exc) or f"cannot resolve {host}") from exc
        last: Exception | None = None
        for address in addresses:
            try:
                stream = await self.inner.connect_tcp(
                    address, port, timeout=timeout, local_address=local_address,
                    socket_options=socket_options,
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last = exc
                continue
            self.connected.append((host, address, port))
            return stream
        assert last is not None
        raise last

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise DeniedDestination(path, path, "a unix socket")

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)


class GuardedTransport(httpx.AsyncHTTPTransport):
    """httpx's own transport (its request and response mapping) over a connection pool
    whose network backend is ``GuardedBackend``, with no proxy. httpx takes no network
    backend of its own, so the pool it made is replaced (``_pool``, as in every httpx
    since 0.18; the unit tests go through this class)."""

    def __init__(self, verify: ssl.SSLContext, backend: GuardedBackend) -> None:
        super().__init__(verify=verify, trust_env=False)
        self.backend = backend
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=verify, network_backend=backend, http1=True, http2=False,
        )


def host_port(url: str) -> tuple[str, int]:
    """The host (an IPv6 literal in brackets) and port an http(s) URL connects to;
    ``ValueError`` for a malformed port."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    host = host[: host.index("]") + 1] if host.startswith("[") else host.partition(":")[0]
    return host, parts.port or (443 if parts.scheme == "https" else 80)


def git_pin(remote_host: str, port: int, address: str) -> list[str]:
    """git's options that make curl connect ``remote_host:port`` to ``address`` only
    (``http.curloptResolve``, git 2.37 and later) and follow no redirect (a redirect to
    another host would be resolved by curl, unchecked)."""
    bare = remote_host[1:-1] if remote_host.startswith("[") else remote_host
    return ["-c", f"http.curloptResolve={bare}:{port}:{address}",
            "-c", "http.followRedirects=false"]
