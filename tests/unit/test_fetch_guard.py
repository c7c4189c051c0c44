"""The builder's own fetches for an untrusted build (``engine/fetch_guard.py``): the deny
list of untrusted RUN (``netrules``) applied to ``ADD <url>`` and Git sources, every
connection (redirects included) made to the address that was checked, TLS still named
after the host, no proxy; Git remotes pinned with ``http.curloptResolve``."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import httpcore
import pytest

from rootbuild.engine.fetch_guard import (
    DeniedDestination,
    DestinationGuard,
    GuardedBackend,
    git_pin,
)
from rootbuild.engine.remote_git import GitBinaryFetcher, git_env
from rootbuild.engine.remote_http import HttpxFetcher
from rootbuild.engine.remote_ref import GitSource
from rootbuild.engine.remote_source import RemoteSources
from rootbuild.errors import Location, StepError
from rootbuild.netrules import DENIED_CLASSES, DENIED_V4, denied_class
from rootbuild.registry.client import DEFAULT_TRANSPORT

PUBLIC = "93.184.216.34"
OWN = "203.0.113.7"  # a public address on one of the host's interfaces

# -- the pure check -----------------------------------------------------------------------


@pytest.mark.parametrize(("address", "why"), [
    ("127.0.0.1", "the host's loopback"),
    ("127.8.9.10", "the host's loopback"),
    ("169.254.169.254", "link-local (169.254.0.0/16, the cloud metadata address's range)"),
    ("10.1.2.3", "a private address (10.0.0.0/8)"),
    ("172.31.255.1", "a private address (172.16.0.0/12)"),
    ("192.168.0.1", "a private address (192.168.0.0/16)"),
    ("100.100.100.200", "a carrier-grade NAT address (100.64.0.0/10, where some clouds "
                        "keep their metadata service)"),
    ("0.0.0.0", "in 0.0.0.0/8 (\"this network\")"),
    ("255.255.255.255", "reserved (240.0.0.0/4)"),
    (OWN, "one of the host's own addresses"),
    ("::ffff:127.0.0.1", "the host's loopback"),
    ("::1", "an IPv6 address (untrusted builds fetch over IPv4 only, as their RUN steps "
            "reach)"),
    ("fd00::1", "an IPv6 address (untrusted builds fetch over IPv4 only, as their RUN "
                "steps reach)"),
    ("not-an-ip", "not an IP address"),
])
def test_denied_class_names_each_class(address: str, why: str) -> None:
    assert denied_class(address, [OWN, "127.0.0.1"]) == why


@pytest.mark.parametrize("address", [PUBLIC, "8.8.8.8", "1.1.1.1", "172.32.0.1"])
def test_public_addresses_are_allowed(address: str) -> None:
    assert denied_class(address, [OWN]) is None


def test_every_denied_prefix_has_a_class() -> None:
    assert set(DENIED_CLASSES) == set(DENIED_V4)


# -- the guard: one lookup, any denied address refuses -----------------------------------


class Resolver:
    """A fake DNS: names to addresses, counting lookups."""

    def __init__(self, names: dict[str, list[str]]) -> None:
        self.names = names
        self.lookups: list[str] = []

    async def __call__(self, host: str, port: int) -> list[str]:
        self.lookups.append(host)
        return list(self.names.get(host, []))


def _guard(names: dict[str, list[str]]) -> tuple[DestinationGuard, Resolver]:
    resolver = Resolver(names)
    return DestinationGuard(resolve=resolver, own_addresses=lambda: [OWN]), resolver


async def test_any_denied_address_refuses_the_name() -> None:
    guard, _ = _guard({"mixed.example": [PUBLIC, "127.0.0.1"]})
    with pytest.raises(DeniedDestination) as caught:
        await guard.check("mixed.example", 80)
    assert caught.value.address == "127.0.0.1"
    assert caught.value.describe() == \
        "destination mixed.example (127.0.0.1) is the host's loopback"


async def test_literals_are_not_looked_up_and_no_ipv4_is_an_error() -> None:
    guard, resolver = _guard({"v6only.example": []})
    with pytest.raises(DeniedDestination) as caught:
        await guard.check("169.254.169.254", 80)
    assert caught.value.describe().startswith("destination 169.254.169.254 is link-local")
    with pytest.raises(DeniedDestination):
        await guard.check("[::1]", 80)
    assert resolver.lookups == []
    assert await guard.check(PUBLIC, 443) == [PUBLIC]
    with pytest.raises(OSError, match="no IPv4 address"):
        await guard.check("v6only.example", 80)


# -- httpx over the guarded backend ------------------------------------------------------


class Stream(httpcore.AsyncNetworkStream):
    def __init__(self, replies: list[bytes], tls: list[str | None]) -> None:
        self.replies = replies
        self.tls = tls

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self.replies.pop(0) if self.replies else b""

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        pass

    async def aclose(self) -> None:
        pass

    async def start_tls(self, ssl_context: ssl.SSLContext, server_hostname: str | None = None,
                        timeout: float | None = None) -> httpcore.AsyncNetworkStream:
        self.tls.append(server_hostname)
        return self

    def get_extra_info(self, info: str) -> Any:
        return None


class Network(httpcore.AsyncNetworkBackend):
    """Servers by address: what each answers; which (address, port) were connected and
    which TLS server names were asked for."""

    def __init__(self, servers: dict[str, bytes]) -> None:
        self.servers = servers
        self.connects: list[tuple[str, int]] = []
        self.tls: list[str | None] = []

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                          local_address: str | None = None,
                          socket_options: Any = None) -> httpcore.AsyncNetworkStream:
        self.connects.append((host, port))
        if host not in self.servers:
            raise httpcore.ConnectError(f"no server at {host}")
        return Stream([self.servers[host]], self.tls)

    async def connect_unix_socket(self, path: str, timeout: float | None = None,
                                  socket_options: Any = None) -> httpcore.AsyncNetworkStream:
        raise AssertionError("no unix sockets")

    async def sleep(self, seconds: float) -> None:
        pass


def _reply(status: int, body: bytes = b"", **headers: str) -> bytes:
    lines = [f"HTTP/1.1 {status} X", f"Content-Length: {len(body)}",
             *(f"{k.replace('_', '-')}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def _fetcher(names: dict[str, list[str]], network: Network) -> tuple[HttpxFetcher, Resolver]:
    guard, resolver = _guard(names)
    return HttpxFetcher(DEFAULT_TRANSPORT, guard=guard, inner_backend=network), resolver


async def test_connects_to_the_checked_address_with_the_host_as_tls_name(
        tmp_path: Path) -> None:
    network = Network({PUBLIC: _reply(200, b"hello")})
    fetcher, resolver = _fetcher({"files.example": [PUBLIC]}, network)
    got = await fetcher.fetch("https://files.example/a.txt", tmp_path / "a")
    assert got is not None and (tmp_path / "a").read_bytes() == b"hello"
    assert network.connects == [(PUBLIC, 443)]  # the address, never the name again
    assert network.tls == ["files.example"]  # certificate checked against the name
    assert resolver.lookups == ["files.example"]


async def test_redirect_to_a_denied_host_is_refused(tmp_path: Path) -> None:
    network = Network({PUBLIC: _reply(302, location="http://evil.example:8080/x")})
    fetcher, _ = _fetcher({"files.example": [PUBLIC], "evil.example": ["127.0.0.1"]},
                          network)
    with pytest.raises(StepError) as caught:
        await fetcher.fetch("http://files.example/a.txt", tmp_path / "a")
    assert caught.value.message == (
        "ADD: http://files.example/a.txt: redirected to http://evil.example:8080/x: "
        "destination evil.example (127.0.0.1) is the host's loopback; refused in "
        "untrusted builds")
    assert network.connects == [(PUBLIC, 80)]  # the loopback was never connected
    assert not (tmp_path / "a").exists()


async def test_redirect_to_the_metadata_address_is_refused(tmp_path: Path) -> None:
    network = Network({PUBLIC: _reply(301, location="http://169.254.169.254/latest/")})
    fetcher, _ = _fetcher({"files.example": [PUBLIC]}, network)
    with pytest.raises(StepError, match=r"redirected to http://169.254.169.254/latest/: "
                       r"destination 169.254.169.254 is link-local"):
        await fetcher.fetch("http://files.example/a.txt", tmp_path / "a")
    assert network.connects == [(PUBLIC, 80)]


async def test_allowed_redirect_is_followed_through_the_check(tmp_path: Path) -> None:
    other = "198.51.100.20"
    network = Network({PUBLIC: _reply(302, location="http://cdn.example/b"),
                       other: _reply(200, b"from the cdn")})
    fetcher, resolver = _fetcher({"files.example": [PUBLIC], "cdn.example": [other]},
                                 network)
    got = await fetcher.fetch("http://files.example/a", tmp_path / "a")
    assert got is not None and (tmp_path / "a").read_bytes() == b"from the cdn"
    assert network.connects == [(PUBLIC, 80), (other, 80)]
    assert resolver.lookups == ["files.example", "cdn.example"]


async def test_a_direct_denied_url_is_refused_before_connecting(tmp_path: Path) -> None:
    network = Network({"127.0.0.1": _reply(200, b"secret")})
    fetcher, _ = _fetcher({}, network)
    with pytest.raises(StepError) as caught:
        await fetcher.fetch("http://user:pw@127.0.0.1:8080/x", tmp_path / "a")
    assert caught.value.message == (
        "ADD: http://user:xxxxx@127.0.0.1:8080/x: destination 127.0.0.1 is the host's "
        "loopback; refused in untrusted builds")
    assert network.connects == []


async def test_untrusted_fetch_ignores_proxy_variables(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTP_PROXY", "http://10.9.9.9:3128")
    monkeypatch.setenv("http_proxy", "http://10.9.9.9:3128")
    network = Network({PUBLIC: _reply(200, b"direct")})
    fetcher, _ = _fetcher({"files.example": [PUBLIC]}, network)
    got = await fetcher.fetch("http://files.example/a", tmp_path / "a")
    assert got is not None and network.connects == [(PUBLIC, 80)]


async def test_backend_tries_the_next_checked_address() -> None:
    other = "198.51.100.20"
    guard, _ = _guard({"two.example": [PUBLIC, other]})
    network = Network({other: _reply(200)})
    backend = GuardedBackend(guard, network)
    await backend.connect_tcp("two.example", 80)
    assert network.connects == [(PUBLIC, 80), (other, 80)]
    assert backend.connected == [("two.example", other, 80)]


# -- git: pinned https/http, other transports refused ------------------------------------


def _git_fetcher(names: dict[str, list[str]]) -> GitBinaryFetcher:
    guard, _ = _guard(names)
    return GitBinaryFetcher(DEFAULT_TRANSPORT, guard=guard)


async def test_git_https_remote_is_pinned_to_its_checked_address() -> None:
    fetcher = _git_fetcher({"git.example": [PUBLIC]})
    assert await fetcher.pin(GitSource("https://u:p@git.example/r.git", "main", "")) == [
        "-c", f"http.curloptResolve=git.example:443:{PUBLIC}",
        "-c", "http.followRedirects=false"]
    assert await fetcher.pin(GitSource("http://git.example:8080/r.git", "", "")) == \
        git_pin("git.example", 8080, PUBLIC)


async def test_git_denied_remote_and_unpinnable_transports_are_refused() -> None:
    fetcher = _git_fetcher({"git.example": [PUBLIC]})
    with pytest.raises(StepError) as caught:
        await fetcher.pin(GitSource("http://127.0.0.1:9418/r.git", "main", ""))
    assert caught.value.message == (
        "ADD: http://127.0.0.1:9418/r.git#main: destination 127.0.0.1 is the host's "
        "loopback; refused in untrusted builds")
    with pytest.raises(StepError, match=r"^ADD: git://git.example/r.git: git:// remotes "
                                        r"are refused in untrusted builds"):
        await fetcher.pin(GitSource("git://git.example/r.git", "", ""))
    with pytest.raises(StepError, match=r"ssh:// remotes are refused"):
        await fetcher.pin(GitSource("ssh://git@git.example/r.git", "", ""))
    with pytest.raises(StepError, match=r"scp-style ssh remotes are refused"):
        await fetcher.pin(GitSource("git@git.example:r.git", "", ""))


async def test_trusted_git_is_not_pinned_and_keeps_proxies(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert await GitBinaryFetcher(DEFAULT_TRANSPORT).pin(
        GitSource("git://127.0.0.1/r.git", "", "")) == []
    monkeypatch.setenv("https_proxy", "http://10.9.9.9:3128")
    assert "https_proxy" in git_env(tmp_path, DEFAULT_TRANSPORT, "https://x/r.git")
    untrusted = git_env(tmp_path, DEFAULT_TRANSPORT, "https://x/r.git", proxies=False)
    assert "https_proxy" not in untrusted and "PATH" in untrusted


def test_remote_sources_guard_only_untrusted_builds() -> None:
    trusted = RemoteSources()._http()
    untrusted = RemoteSources(untrusted=True)._http()
    assert isinstance(trusted, HttpxFetcher) and trusted.guard is None
    assert isinstance(untrusted, HttpxFetcher) and untrusted.guard is not None
    git = RemoteSources(untrusted=True)._git()
    assert isinstance(git, GitBinaryFetcher) and git.guard is not None
    git = RemoteSources()._git()
    assert isinstance(git, GitBinaryFetcher) and git.guard is None


class NoFetch:
    async def fetch(self, url: str, dest: Path, *, etag: str | None = None) -> None:
        raise AssertionError(f"fetched {url}")


async def test_untrusted_key_refuses_a_denied_checksum_url_without_fetching(
        tmp_path: Path) -> None:
    where = Location("Dockerfile", 2)
    url = "http://127.0.0.1:8080/x"
    digest = "sha256:" + "ab" * 32
    trusted = RemoteSources(http=NoFetch())
    assert await trusted.key(url, digest, False, tmp_path, where) == digest
    untrusted = RemoteSources(http=NoFetch(), untrusted=True)
    with pytest.raises(StepError) as caught:
        await untrusted.key(url, digest, False, tmp_path, where)
    assert str(caught.value) == (
        "Dockerfile:2: ADD: http://127.0.0.1:8080/x: destination 127.0.0.1 is the host's "
        "loopback; refused in untrusted builds")
    with pytest.raises(StepError, match="git:// remotes are refused"):
        await untrusted.key("git://127.0.0.1/r.git#" + "a" * 40, None, False, tmp_path,
                            where)
