"""The builder's own fetches in untrusted builds (issue 13, "Isolation of strangers"),
through the real executable as the unprivileged build user: ``ADD <url>`` and Git sources
reach only what untrusted RUN reaches, so a Dockerfile cannot make the builder copy a
host-loopback service's answer (or the cloud metadata service's) into its image. Trusted
builds fetch as before (``test_add_remote.py`` runs them against 127.0.0.1 too).

A redirect from an allowed host to a denied one cannot be served here: every address of
this machine is denied to an untrusted build, so no first hop is allowed. That part is
proved in ``tests/unit/test_fetch_guard.py`` (a fake network behind the real httpx
transport and guard); here, every refusal is checked to happen before any request.

Docker's reference, "Adding files from a URL": "In the case where source is a remote file
URL, the destination will have permissions of 600." and "Adding files from a Git
repository": "To use a remote Git repository as the source of an ADD, you can reference
the repository's HTTP or SSH address as the source."
(https://docs.docker.com/reference/dockerfile/#add)
"""

from __future__ import annotations

import hashlib
import http.server
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_add_remote import Server, _fails_in_one_line, git_daemon, web
from test_build import build, file_at, tree_of

from rootbuild.sandbox import netdeny

pytestmark = pytest.mark.integration

__all__ = ["git_daemon", "web"]  # fixtures used here, defined with the ADD tests

REFUSED = "refused in untrusted builds"


def _gets(web: Server, prefix: str) -> list[str]:
    return [path for _method, path, _status in web.requests if path.startswith(prefix)]


def test_untrusted_add_from_host_loopback_is_refused(rb: Any, web: Server) -> None:
    """An untrusted build's ``ADD http://127.0.0.1:PORT/...`` (and the same through the
    name ``localhost``) fails in one line naming the Dockerfile line and the address's
    class; the canary server sees no request; the store is unchanged."""
    web.files["/canary/secret.txt"] = b"host-only secret\n"
    url = web.url("/canary/secret.txt")
    ctx = rb.make_context("ctx", {"Dockerfile": f"FROM scratch\nADD {url} /secret\n"})
    _fails_in_one_line(
        rb, ctx, rf"rootbuild: Dockerfile:2: ADD: {re.escape(url)}: destination 127\.0\.0\.1 "
        rf"is the host's loopback; {REFUSED}", "--untrusted")
    by_name = url.replace("127.0.0.1", "localhost")
    ctx2 = rb.make_context("ctx2", {
        "Dockerfile": f"FROM scratch\nCOPY Dockerfile /d\nADD --chmod=644 {by_name} /s\n"})
    _fails_in_one_line(
        rb, ctx2, rf"rootbuild: Dockerfile:3: ADD: {re.escape(by_name)}: destination "
        rf"localhost \(127\.0\.0\.1\) is the host's loopback; {REFUSED}", "--untrusted")
    assert _gets(web, "/canary/") == []


def test_trusted_build_still_fetches_from_loopback(rb: Any, web: Server) -> None:
    """The same ``ADD`` without ``--untrusted`` fetches (the canary sees the GET)."""
    web.files["/canary/open.txt"] = b"for trusted builds\n"
    url = web.url("/canary/open.txt")
    ctx = rb.make_context("ctx", {"Dockerfile": f"FROM scratch\nADD {url} /open\n"})
    build(rb, ctx)
    assert file_at(tree_of(rb, "img"), "open") == b"for trusted builds\n"
    assert _gets(web, "/canary/open.txt") == ["/canary/open.txt"]


@pytest.fixture
def own_address_canary() -> Iterator[tuple[str, list[str]]]:
    """An HTTP server on one of this machine's own non-loopback addresses, recording each
    request path (its URL, its log)."""
    own = [a for a in netdeny.host_addresses() if not a.startswith("127.")]
    if not own:
        pytest.skip("no non-loopback IPv4 address on this machine")
    seen: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            seen.append(self.path)
            self.send_response(200)
            self.send_header("Content-Length", "3")
            self.end_headers()
            self.wfile.write(b"own")

    server = http.server.ThreadingHTTPServer((own[0], 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{own[0]}:{server.server_address[1]}/meta", seen
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_untrusted_add_from_the_hosts_own_address_is_refused(
        rb: Any, own_address_canary: tuple[str, list[str]]) -> None:
    """A service listening on the host's own address (not loopback) is out of reach too:
    refused, no request; a trusted build reaches it."""
    url, seen = own_address_canary
    host = url.split("//")[1].split(":")[0]
    ctx = rb.make_context("ctx", {"Dockerfile": f"FROM scratch\nADD {url} /m\n"})
    _fails_in_one_line(
        rb, ctx, rf"rootbuild: Dockerfile:2: ADD: {re.escape(url)}: destination "
        rf"{re.escape(host)} is one of the host's own addresses; {REFUSED}", "--untrusted")
    assert seen == []
    build(rb, ctx)
    assert seen == ["/meta"]


def test_untrusted_git_over_http_from_loopback_is_refused(rb: Any, web: Server) -> None:
    """A Git source over http on the host's loopback: refused before git runs (the
    server sees no request), as ``ADD <url>`` is."""
    url = web.url("/git/repo.git")
    ctx = rb.make_context("ctx", {"Dockerfile": f"FROM scratch\nADD {url}#main /src/\n"})
    _fails_in_one_line(
        rb, ctx, rf"rootbuild: Dockerfile:2: ADD: {re.escape(url)}#main: destination "
        rf"127\.0\.0\.1 is the host's loopback; {REFUSED}", "--untrusted")
    assert _gets(web, "/git/") == []


def test_untrusted_git_protocol_and_ssh_remotes_are_refused(
        rb: Any, git_daemon: str, tmp_path: Path) -> None:
    """``git://`` and ssh remotes are refused in untrusted builds whatever their host: the
    builder cannot pin where git or ssh connects."""
    url = f"{git_daemon}/repo.git"
    ctx = rb.make_context("ctx", {"Dockerfile": f"FROM scratch\nADD {url}#main /src/\n"})
    _fails_in_one_line(
        rb, ctx, rf"rootbuild: Dockerfile:2: ADD: {re.escape(url)}#main: git:// remotes are "
        rf"{REFUSED} \(the builder cannot check where they connect\); use an https:// "
        r"remote", "--untrusted")
    ssh = "ssh://git@127.0.0.1:1/repo.git"
    ctx2 = rb.make_context("ctx2", {"Dockerfile": f"FROM scratch\nADD {ssh} /src/\n"})
    _fails_in_one_line(
        rb, ctx2, rf"rootbuild: Dockerfile:2: ADD: {re.escape(ssh)}: ssh:// remotes are "
        rf"{REFUSED} .*", "--untrusted")


def test_untrusted_build_does_not_reuse_a_trusted_fetch_from_loopback(
        rb: Any, web: Server) -> None:
    """``ADD --checksum`` makes no request when the step is cached ("ADD --checksum": "The
    `--checksum` flag lets you verify the checksum of a remote resource"): a step a trusted
    build fetched from the host's loopback is still refused to an untrusted build on the
    same store, before any cache lookup."""
    body = b"fetched by a trusted build\n"
    web.files["/canary/cached.txt"] = body
    url = web.url("/canary/cached.txt")
    digest = "sha256:" + hashlib.sha256(body).hexdigest()
    ctx = rb.make_context("ctx", {
        "Dockerfile": f"FROM scratch\nADD --checksum={digest} {url} /c\n"})
    build(rb, ctx)
    assert file_at(tree_of(rb, "img"), "c") == body
    gets = len(_gets(web, "/canary/cached.txt"))
    _fails_in_one_line(
        rb, ctx, rf"rootbuild: Dockerfile:2: ADD: {re.escape(url)}: destination 127\.0\.0\.1 "
        rf"is the host's loopback; {REFUSED}", "--untrusted")
    assert len(_gets(web, "/canary/cached.txt")) == gets
