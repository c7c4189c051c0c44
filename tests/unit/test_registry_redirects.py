"""The client's HTTP logic: credentials never follow a redirect to another host (blob
storage), and a 401 Basic challenge is answered with the registry's own credentials.

The transport is httpx's MockTransport: this tests the client's decisions, not a server
(the real-registry tests in tests/integration cover the servers)."""

from __future__ import annotations

import httpx
import trio

from rootbuild.registry.auth import Credentials
from rootbuild.registry.client import RegistryClient


def _handler(seen: list[tuple[str, str | None]]) -> httpx.MockTransport:
    def handle(request: httpx.Request) -> httpx.Response:
        seen.append((str(request.url), request.headers.get("authorization")))
        host = request.url.host
        if host == "reg.example" and request.url.path == "/v2/":
            if request.headers.get("authorization"):
                return httpx.Response(200)
            return httpx.Response(401, headers={"www-authenticate": 'Basic realm="reg"'})
        if host == "reg.example" and "/blobs/" in request.url.path:
            if not request.headers.get("authorization"):
                return httpx.Response(401, headers={"www-authenticate": 'Basic realm="reg"'})
            return httpx.Response(307, headers={"location": "https://storage.example/b?sig=1"})
        if host == "storage.example":
            return httpx.Response(200, content=b"blob bytes")
        return httpx.Response(404)

    return httpx.MockTransport(handle)


def test_credentials_stay_with_their_registry_across_a_redirect() -> None:
    seen: list[tuple[str, str | None]] = []

    async def main() -> bytes:
        async with RegistryClient(
            "reg.example", credentials=Credentials("u", "secret"), env={},
            http_transport=_handler(seen),
        ) as client, client.request(
            "GET", "/v2/app/blobs/sha256:" + "0" * 64, scope="repository:app:pull",
            what="fetch blob",
        ) as response:
            return await response.aread()

    assert trio.run(main) == b"blob bytes"
    registry = [auth for url, auth in seen if "reg.example" in url and "/blobs/" in url]
    storage = [auth for url, auth in seen if "storage.example" in url]
    assert registry and registry[-1] is not None and registry[-1].startswith("Basic ")
    assert storage == [None]  # the storage host never saw the registry's credentials
