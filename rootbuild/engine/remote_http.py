"""``ADD <url>``'s fetcher: httpx, streamed into a staging file with a size cap, hashed as
it streams.

Rules:
- The same transport settings as registries (``registry.client``): the system CAs plus
  ``--cert-dir``'s ``*.crt``, ``--tls-verify=false`` to accept any certificate, proxies
  from ``HTTP(S)_PROXY``/``NO_PROXY`` (httpx's ``trust_env``). A certificate that fails
  verification is an error, never a silent fallback to plain HTTP.
- Redirects are followed (at most 5); only status 200 delivers a file, 304 answers a
  conditional request, anything else is ``invalid response status N`` (BuildKit's
  wording). A body over ``MAX_BYTES`` (or a declared length over it) is refused.
- Errors name the URL without its credentials; the body file is removed on failure.
- For an untrusted build (``guard``) every connection, the first and each redirect's, goes
  to an address ``fetch_guard`` checked and pinned, with no proxy; a denied destination
  is one line naming it (and the redirect that led there).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from urllib.parse import urlsplit

import httpcore
import httpx

from rootbuild.engine.fetch_guard import (
    DeniedDestination,
    DestinationGuard,
    GuardedBackend,
    GuardedTransport,
    refusal,
)
from rootbuild.engine.remote_ref import redact
from rootbuild.engine.remote_source import Download
from rootbuild.errors import RegistryError, StepError
from rootbuild.registry.client import TransportOptions, describe_transport_error, ssl_context

MAX_BYTES = 16 << 30  # one ADD <url> file: at most 16 GiB
MAX_REDIRECTS = 5
_CHUNK = 1 << 20


class HttpxFetcher:
    """``HttpFetcher`` over httpx (one client per request: builds fetch few URLs)."""

    def __init__(
        self, transport: TransportOptions, max_bytes: int = MAX_BYTES,
        http_transport: httpx.AsyncBaseTransport | None = None,  # tests of the HTTP logic
        guard: DestinationGuard | None = None,  # an untrusted build's destination check
        inner_backend: httpcore.AsyncNetworkBackend | None = None,  # tests of the guard
    ) -> None:
        self.transport = transport
        self.max_bytes = max_bytes
        self.http_transport = http_transport
        self.guard = guard
        self.inner_backend = inner_backend

    async def fetch(self, url: str, dest: Path, *, etag: str | None = None) -> Download | None:
        shown = redact(url)
        host = urlsplit(url).netloc.rpartition("@")[2]
        try:
            verify = ssl_context(self.transport, host)
        except RegistryError as exc:
            raise StepError(f"ADD: download {shown}: {exc.message}") from exc
        except OSError as exc:  # an unreadable --cert-dir
            raise StepError(f"ADD: download {shown}: read --cert-dir: {exc.strerror}") from exc
        headers = {"User-Agent": "rootbuild"}
        if etag:
            headers["If-None-Match"] = etag
        http_transport = self.http_transport
        if self.guard is not None and http_transport is None:
            http_transport = GuardedTransport(
                verify, GuardedBackend(self.guard, self.inner_backend))
        requested: list[str] = []  # the first request's URL, then each redirect's

        async def record(request: httpx.Request) -> None:  # each redirect's URL
            requested.append(str(request.url))

        try:
            async with httpx.AsyncClient(
                verify=verify, follow_redirects=True, max_redirects=MAX_REDIRECTS,
                timeout=httpx.Timeout(60.0, connect=15.0), transport=http_transport,
                trust_env=self.guard is None, event_hooks={"request": [record]},
            ) as client, client.stream("GET", url, headers=headers) as response:
                if response.status_code == 304 and etag:
                    return None
                if response.status_code != 200:
                    raise StepError(
                        f"ADD: download {shown}: invalid response status "
                        f"{response.status_code}"
                    )
                declared = response.headers.get("content-length", "")
                if declared.isdigit() and int(declared) > self.max_bytes:
                    raise StepError(
                        f"ADD: download {shown}: {declared} bytes is over the "
                        f"{self.max_bytes}-byte limit"
                    )
                digest, size = await self._save(response, dest, shown)
                return Download(
                    path=dest, digest=digest, size=size,
                    etag=response.headers.get("etag"),
                    last_modified=response.headers.get("last-modified"),
                )
        except DeniedDestination as exc:
            _unlink(dest)
            what = f"ADD: {shown}"
            if len(requested) > 1:
                what += f": redirected to {redact(requested[-1])}"
            raise StepError(refusal(what, exc)) from exc
        except httpx.TooManyRedirects as exc:
            _unlink(dest)
            raise StepError(f"ADD: download {shown}: too many redirects") from exc
        except httpx.TransportError as exc:
            _unlink(dest)
            raise StepError(
                f"ADD: download {shown}: {describe_transport_error(exc)}"
            ) from exc
        except BaseException:
            _unlink(dest)
            raise

    async def _save(self, response: httpx.Response, dest: Path, shown: str) -> tuple[str, int]:
        hasher = hashlib.sha256()
        size = 0
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "wb") as out:
            async for chunk in response.aiter_bytes(_CHUNK):
                size += len(chunk)
                if size > self.max_bytes:
                    raise StepError(
                        f"ADD: download {shown}: over the {self.max_bytes}-byte limit"
                    )
                hasher.update(chunk)
                out.write(chunk)
        return "sha256:" + hasher.hexdigest(), size


def _unlink(path: Path) -> None:
    path.unlink(missing_ok=True)  # nothing may have been written yet
