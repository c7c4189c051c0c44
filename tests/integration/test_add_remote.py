"""``ADD <url>`` and ``ADD <git source>`` through the real executable, as the unprivileged
build user, against servers on 127.0.0.1 only: a small HTTP(S) server in this process
(files with ETag and Last-Modified, request counting, Git's smart HTTP through
``git http-backend``, a Basic-auth area), ``git daemon`` for ``git://``, and an sshd of the
build user for ``ssh://`` (authenticated by the agent of ``--ssh default``).

Expectations come from Docker's Dockerfile reference
(https://docs.docker.com/reference/dockerfile/#add), quoted in each test.
"""

from __future__ import annotations

import base64
import email.utils
import gzip
import hashlib
import http.server
import os
import re
import shutil
import socket
import ssl
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import zstandard
from conftest import require_tool
from registry_fixtures import free_port, make_certs
from test_build import build, file_at, make_tar, read_image, tree_of

pytestmark = pytest.mark.integration

LAST_MODIFIED = 1445412480  # Wed, 21 Oct 2015 07:28:00 GMT
USER, TOKEN = "builder", "tok3n-Zq81-not-for-images"
GIT_DATE = "1500000000 +0000"


# -- the loopback HTTP server -------------------------------------------------------------------


@dataclass
class Server:
    """What the HTTP server serves and what it saw."""

    files: dict[str, bytes] = field(default_factory=dict)  # path -> body
    requests: list[tuple[str, str, int]] = field(default_factory=list)  # (method, path, status)
    repos: Path | None = None  # bare repositories for /git/<name> and /private/<name>
    port: int = 0
    tls_port: int = 0
    cert_dir: Path | None = None  # the test CA, for --cert-dir

    def url(self, path: str, tls: bool = False) -> str:
        if tls:
            return f"https://localhost:{self.tls_port}{path}"
        return f"http://127.0.0.1:{self.port}{path}"

    def statuses(self, path: str) -> list[int]:
        return [status for method, p, status in self.requests if p == path and method == "GET"]


def _etag(body: bytes) -> str:
    return '"' + hashlib.sha256(body).hexdigest()[:20] + '"'


class _Handler(http.server.BaseHTTPRequestHandler):
    server_state: Server

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None,
              ) -> None:
        path = self.path.partition("?")[0]
        self.server_state.requests.append((self.command, path, status))
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_GET(self) -> None:
        self._route()

    def do_POST(self) -> None:
        self._route()

    def _route(self) -> None:
        state = self.server_state
        path, _, query = self.path.partition("?")
        if path.startswith("/private/"):
            expected = "Basic " + base64.b64encode(f"{USER}:{TOKEN}".encode()).decode()
            if self.headers.get("Authorization") != expected:
                self._send(401, b"auth\n", {"WWW-Authenticate": 'Basic realm="t"'})
                return
            self._git(path.removeprefix("/private"), query)
            return
        if path.startswith("/git/"):
            self._git(path.removeprefix("/git"), query)
            return
        body = state.files.get(path)
        if body is None:
            self._send(404, b"not found\n")
            return
        etag = _etag(body)
        if self.headers.get("If-None-Match") == etag:
            self._send(304, b"", {"ETag": etag})
            return
        self._send(200, body, {
            "ETag": etag, "Content-Type": "application/octet-stream",
            "Last-Modified": email.utils.formatdate(LAST_MODIFIED, usegmt=True),
        })

    def _git(self, path_info: str, query: str) -> None:
        """Git's smart HTTP protocol through ``git http-backend`` (a CGI program)."""
        state = self.server_state
        assert state.repos is not None
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        env = {
            "PATH": "/usr/bin:/bin", "GIT_PROJECT_ROOT": str(state.repos),
            "GIT_HTTP_EXPORT_ALL": "1", "PATH_INFO": path_info, "QUERY_STRING": query,
            "REQUEST_METHOD": self.command, "REMOTE_ADDR": "127.0.0.1",
            "CONTENT_TYPE": self.headers.get("Content-Type", ""),
            "CONTENT_LENGTH": str(length), "GIT_CONFIG_NOSYSTEM": "1", "HOME": str(state.repos),
        }
        if self.headers.get("Content-Encoding"):
            env["HTTP_CONTENT_ENCODING"] = self.headers["Content-Encoding"]
        if self.headers.get("Git-Protocol"):
            env["GIT_PROTOCOL"] = self.headers["Git-Protocol"]
        proc = subprocess.run(["git", "http-backend"], input=body, env=env,
                              capture_output=True, timeout=60)
        head, _, payload = proc.stdout.partition(b"\r\n\r\n")
        if not _:
            head, _, payload = proc.stdout.partition(b"\n\n")
        status, headers = 200, {}
        for line in head.decode("latin-1").splitlines():
            key, _, value = line.partition(":")
            if key.lower() == "status":
                status = int(value.strip().split()[0])
            elif key:
                headers[key.strip()] = value.strip()
        self._send(status, payload, headers)


def _serve(server: http.server.ThreadingHTTPServer) -> threading.Thread:
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return thread


@pytest.fixture(scope="module")
def web() -> Iterator[Server]:
    """The HTTP server on 127.0.0.1 and an HTTPS one (a test CA) on localhost."""
    base = Path(tempfile.mkdtemp(prefix="rootbuild-web-"))
    base.chmod(0o755)  # the build user reads the CA in it
    state = Server(repos=_make_repos(base))
    handler = type("Handler", (_Handler,), {"server_state": state})
    plain = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    tls = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    certs = make_certs(base)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certs.server_cert, certs.server_key)
    tls.socket = context.wrap_socket(tls.socket, server_side=True)
    state.port, state.tls_port = plain.server_address[1], tls.server_address[1]
    state.cert_dir = certs.ca_dir
    threads = [_serve(plain), _serve(tls)]
    try:
        yield state
    finally:
        for server in (plain, tls):
            server.shutdown()
            server.server_close()
        for thread in threads:
            thread.join(timeout=10)
        shutil.rmtree(base, ignore_errors=True)


# -- the Git repository and git daemon ------------------------------------------------------


@dataclass(frozen=True)
class Repo:
    first: str  # the commit tagged v1
    main: str  # main's head (a second commit)
    feature: str  # branch "feature"


REPO: dict[str, Repo] = {}


def _git(*args: str, cwd: Path) -> str:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(cwd), "GIT_CONFIG_NOSYSTEM": "1",
           "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.invalid",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.invalid",
           "GIT_AUTHOR_DATE": GIT_DATE, "GIT_COMMITTER_DATE": GIT_DATE}
    proc = subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.fail(f"git {' '.join(args)}: {proc.stderr}")
    return proc.stdout.strip()


def _make_repos(base: Path) -> Path:
    """``repos/repo.git`` (and ``repos/secret.git``, the same history): README.md, docs/,
    an executable and a symlink; tag v1, then a second commit on main; branch feature."""
    work = base / "work"
    work.mkdir()
    _git("init", "-q", "-b", "main", ".", cwd=work)
    (work / "README.md").write_text("v1\n")
    (work / "docs").mkdir()
    (work / "docs" / "guide.md").write_text("guide\n")
    (work / "bin").mkdir()
    (work / "bin" / "tool.sh").write_text("#!/bin/sh\necho tool\n")
    (work / "bin" / "tool.sh").chmod(0o755)
    (work / "readme-link").symlink_to("README.md")
    _git("add", "-A", cwd=work)
    _git("commit", "-q", "-m", "one", cwd=work)
    _git("tag", "-a", "v1", "-m", "v1", cwd=work)
    first = _git("rev-parse", "HEAD", cwd=work)
    _git("checkout", "-q", "-b", "feature", cwd=work)
    (work / "feature.txt").write_text("feature\n")
    _git("add", "-A", cwd=work)
    _git("commit", "-q", "-m", "feature", cwd=work)
    feature = _git("rev-parse", "HEAD", cwd=work)
    _git("checkout", "-q", "main", cwd=work)
    (work / "README.md").write_text("v2\n")
    _git("commit", "-q", "-am", "two", cwd=work)
    main = _git("rev-parse", "HEAD", cwd=work)
    repos = base / "repos"
    repos.mkdir()
    for name in ("repo.git", "secret.git"):
        _git("clone", "-q", "--bare", str(work), str(repos / name), cwd=base)
    REPO["repo"] = Repo(first, main, feature)
    return repos


@pytest.fixture(scope="module")
def git_daemon(web: Server) -> Iterator[str]:
    """``git daemon`` serving the repositories on 127.0.0.1; yields its git:// base URL."""
    assert web.repos is not None
    port = free_port()
    proc = subprocess.Popen(
        ["git", "daemon", "--reuseaddr", "--export-all", "--informative-errors",
         f"--base-path={web.repos}", "--listen=127.0.0.1", f"--port={port}", str(web.repos)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        env={"PATH": "/usr/bin:/bin", "HOME": str(web.repos), "GIT_CONFIG_NOSYSTEM": "1"},
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    pytest.fail("git daemon did not start")
                time.sleep(0.1)
        yield f"git://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# -- helpers ------------------------------------------------------------------------------------


def _fails_in_one_line(rb: Any, ctx: Path, pattern: str, *extra: str) -> None:
    """The build fails with exactly one error line matching ``pattern``, no traceback, no
    image, and the store as it was."""
    rb.run("images")  # the store exists before the failing build
    before = rb.store_snapshot()
    proc = build(rb, ctx, "bad", *extra, check=False)
    assert proc.returncode != 0, proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("rootbuild: ")]
    assert len(errors) == 1, proc.stderr
    assert re.fullmatch(pattern, errors[0]), proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (rb.workdir / "bad.oci").exists()
    assert rb.store_snapshot() == before


def _all_bytes(root: Path) -> Iterator[tuple[Path, bytes]]:
    """Every regular file below ``root``, decompressed when it is a gzip/zstd blob."""
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            data = path.read_bytes()
            if data[:2] == b"\x1f\x8b":
                data = gzip.decompress(data)
            elif data[:4] == b"\x28\xb5\x2f\xfd":
                data = zstandard.ZstdDecompressor().decompressobj().decompress(data)
            yield path, data


# -- URLs ---------------------------------------------------------------------------------------


def test_url_file_name_mode_and_mtime(rb: Any, web: Server) -> None:
    """Reference, "Adding files from a URL": "In the case where source is a remote file
    URL, the destination will have permissions of 600. If the HTTP response contains a
    `Last-Modified` header, the timestamp from that header will be used to set the `mtime`
    on the destination file." and "If the destination ends with a trailing slash, then the
    filename is inferred from the URL path. [...] If the destination doesn't end with a
    trailing slash, the destination path becomes the filename of the file downloaded from
    the URL." https://docs.docker.com/reference/dockerfile/#adding-files-from-a-url"""
    web.files["/dl/tool-1.0.bin"] = b"tool body\n"
    url = web.url("/dl/tool-1.0.bin")
    ctx = rb.make_context("ctx", {"Dockerfile": (
        f"FROM scratch\nADD {url} /opt/\nADD {url} /renamed\n"
        f"ARG SRC={url}\nADD $SRC /var/\n"
    )})
    build(rb, ctx)
    tree = tree_of(rb, "img")
    for path in ("opt/tool-1.0.bin", "renamed", "var/tool-1.0.bin"):
        assert file_at(tree, path) == b"tool body\n"
        node = tree[path]
        assert node.mode == 0o600, (path, oct(node.mode))
        assert node.mtime == LAST_MODIFIED, path
        assert (node.uid, node.gid) == (0, 0)
    assert web.statuses("/dl/tool-1.0.bin") == [200]  # fetched once for the three steps


def test_url_checksum(rb: Any, web: Server) -> None:
    """Reference, "ADD --checksum": "For HTTP sources, the checksum is the SHA-256 content
    digest, formatted as `sha256:<hash>`." A mismatch fails the step (BuildKit: "digest
    mismatch"). https://docs.docker.com/reference/dockerfile/#add---checksum"""
    body = b"checked\n"
    web.files["/dl/checked.txt"] = body
    good = "sha256:" + hashlib.sha256(body).hexdigest()
    bad = "sha256:" + "0" * 64
    url = web.url("/dl/checked.txt")
    ctx = rb.make_context("ctx", {"Dockerfile": f"FROM scratch\nADD --checksum={good} {url} /c\n"})
    build(rb, ctx)
    assert file_at(tree_of(rb, "img"), "c") == body
    bad_ctx = rb.make_context("bad-ctx", {
        "Dockerfile": f"FROM scratch\nADD --checksum={bad} {url} /c\n"})
    _fails_in_one_line(
        rb, bad_ctx, rf"rootbuild: Dockerfile:2: ADD: digest mismatch {bad}: {good}")


def test_url_404_and_unreachable(rb: Any, web: Server) -> None:
    """An URL ADD cannot fetch fails its step: one line naming the Dockerfile line, the
    store unchanged (issue 12's bad-input rule; BuildKit: "invalid response status 404").
    https://docs.docker.com/reference/dockerfile/#adding-files-from-a-url"""
    missing = web.url("/dl/missing.txt")
    ctx = rb.make_context("ctx", {
        "Dockerfile": f"FROM scratch\nCOPY Dockerfile /d\nADD {missing} /m\n"})
    _fails_in_one_line(
        rb, ctx, rf"rootbuild: Dockerfile:3: ADD: download {re.escape(missing)}: "
        r"invalid response status 404")
    closed = f"http://127.0.0.1:{free_port()}/file.txt"
    ctx2 = rb.make_context("ctx2", {"Dockerfile": f"FROM scratch\nADD {closed} /m\n"})
    _fails_in_one_line(
        rb, ctx2, rf"rootbuild: Dockerfile:2: ADD: download {re.escape(closed)}: "
        r"connection refused")


def test_url_cached_rebuild_revalidates_with_etag(rb: Any, web: Server) -> None:
    """Reference, "Adding files from a URL": "`mtime` isn't included in the determination
    of whether or not the file has changed and the cache should be updated." BuildKit
    keeps the ETag and asks again with If-None-Match: an unchanged file (304) is not
    downloaded again and the step is CACHED; a changed one is.
    https://docs.docker.com/reference/dockerfile/#adding-files-from-a-url"""
    web.files["/dl/etag.txt"] = b"version 1\n"
    url = web.url("/dl/etag.txt")
    ctx = rb.make_context("ctx", {"Dockerfile": f"FROM scratch\nADD {url} /e\n"})
    build(rb, ctx, "one")
    second = build(rb, ctx, "two")
    assert re.search(r"^#\d+ CACHED$", second.stderr, re.M), second.stderr
    assert web.statuses("/dl/etag.txt") == [200, 304]  # no second download
    assert read_image(rb.workdir / "one.oci", "one")[0] == \
        read_image(rb.workdir / "two.oci", "two")[0]
    web.files["/dl/etag.txt"] = b"version 2\n"
    build(rb, ctx, "three")
    assert file_at(tree_of(rb, "three"), "e") == b"version 2\n"
    assert web.statuses("/dl/etag.txt") == [200, 304, 200]
    # prune drops the step cache and with it what the store remembered of the URL
    assert rb.run("prune").returncode == 0
    assert not any((rb.store / "remote-sources").iterdir())
    build(rb, ctx, "four")
    assert web.statuses("/dl/etag.txt") == [200, 304, 200, 200]


def test_https_with_cert_dir(rb: Any, web: Server) -> None:
    """HTTPS URLs are verified like registries: the test CA is trusted only through
    ``--cert-dir``; without it the certificate fails verification (SECURITY.md rule 5:
    no silent fallback). https://docs.docker.com/reference/dockerfile/#adding-files-from-a-url"""
    web.files["/dl/tls.txt"] = b"over tls\n"
    url = web.url("/dl/tls.txt", tls=True)
    ctx = rb.make_context("ctx", {"Dockerfile": f"FROM scratch\nADD {url} /t\n"})
    build(rb, ctx, "img", "--cert-dir", str(web.cert_dir))
    assert file_at(tree_of(rb, "img"), "t") == b"over tls\n"
    _fails_in_one_line(
        rb, ctx, rf"rootbuild: Dockerfile:2: ADD: download {re.escape(url)}: "
        r"TLS certificate verification failed .*")


def test_unpack_flag_and_zstd_archives(rb: Any, web: Server) -> None:
    """Reference, "ADD --unpack": "Local tar archives are unpacked by default, whereas
    remote tar archives (where `src` is a URL) are downloaded without unpacking."
    https://docs.docker.com/reference/dockerfile/#add---unpack ; zstd archives are
    recognised by content like gzip and xz ones ("Adding local tar archives")."""
    members: dict[str, bytes | str] = {"pkg/one.txt": "one\n", "pkg/run.sh": "#!/bin/sh\n"}
    web.files["/dl/pkg.tar.gz"] = make_tar(members, "gz")
    url = web.url("/dl/pkg.tar.gz")
    zst = zstandard.ZstdCompressor().compress(make_tar(members))
    ctx = rb.make_context("ctx", {
        "local.tar.zst": zst,
        "kept.tar.gz": make_tar(members, "gz"),
        "Dockerfile": (
            "FROM scratch\n"
            f"ADD {url} /remote-default/\n"
            f"ADD --unpack=true {url} /remote-unpacked/\n"
            "ADD local.tar.zst /zst/\n"
            "ADD --unpack=false kept.tar.gz /kept/\n"
            "ADD --unpack=true kept.tar.gz /local-unpacked/\n"
        ),
    })
    build(rb, ctx)
    tree = tree_of(rb, "img")
    assert file_at(tree, "remote-default/pkg.tar.gz") == web.files["/dl/pkg.tar.gz"]
    for top in ("remote-unpacked", "zst", "local-unpacked"):
        assert file_at(tree, f"{top}/pkg/one.txt") == b"one\n"
        assert tree[f"{top}/pkg/run.sh"].mode == 0o755
    assert file_at(tree, "kept/kept.tar.gz") == (rb.workdir / "ctx" / "kept.tar.gz").read_bytes()


# -- Git ----------------------------------------------------------------------------------------


def test_git_branch_tag_commit_and_subdir(rb: Any, git_daemon: str) -> None:
    """Reference, "Adding files from a Git repository": "You can use URL fragments to
    specify a specific branch, tag, commit, or subdirectory." and "When adding from a Git
    repository, the permissions bits for files are 644. If a file in the repository has
    the executable bit set, it will have permissions set to 755. Directories have
    permissions set to 755."; "ADD --keep-git-dir": "BuildKit adds the contents of the Git
    repository to the image excluding the `.git` directory by default."
    https://docs.docker.com/reference/dockerfile/#adding-files-from-a-git-repository"""
    repo = REPO["repo"]
    url = f"{git_daemon}/repo.git"
    ctx = rb.make_context("ctx", {"Dockerfile": (
        "FROM scratch\n"
        f"ADD {url} /head/\n"
        f"ADD {url}#main /main/\n"
        f"ADD {url}#v1 /tag/\n"
        f"ADD {url}#feature /branch/\n"
        f"ADD {url}#{repo.first} /commit/\n"
        f"ADD {url}#v1:docs /docs/\n"
        f"ADD --checksum={repo.first[:10]} {url}#v1 /checked/\n"
    )})
    build(rb, ctx)
    tree = tree_of(rb, "img")
    assert file_at(tree, "head/README.md") == b"v2\n"
    assert file_at(tree, "main/README.md") == b"v2\n"
    assert file_at(tree, "tag/README.md") == b"v1\n"
    assert file_at(tree, "commit/README.md") == b"v1\n"
    assert file_at(tree, "checked/README.md") == b"v1\n"
    assert file_at(tree, "branch/feature.txt") == b"feature\n"
    assert "tag/feature.txt" not in tree
    assert file_at(tree, "docs/guide.md") == b"guide\n"
    assert "docs/README.md" not in tree and "docs/docs" not in tree
    assert tree["tag/README.md"].mode == 0o644
    assert tree["tag/bin/tool.sh"].mode == 0o755
    assert tree["tag/bin"].mode == 0o755
    assert tree["tag/readme-link"].kind == "symlink"
    assert tree["tag/readme-link"].linkname == "README.md"
    assert not any(path.startswith(("head/.git", "tag/.git")) for path in tree)


def test_git_keep_git_dir_over_http_without_credentials(rb: Any, web: Server) -> None:
    """Reference, "ADD --keep-git-dir": "The `--keep-git-dir=true` flag lets you preserve
    the `.git` directory." Credentials in the URL reach git but never the image: not the
    kept .git/config, not a layer, not the config or its history, not the store.
    https://docs.docker.com/reference/dockerfile/#add---keep-git-dir"""
    repo = REPO["repo"]
    url = web.url("/private/secret.git").replace("://", f"://{USER}:{TOKEN}@")
    ctx = rb.make_context("ctx", {"Dockerfile": (
        f"FROM scratch\nADD --keep-git-dir=true {url}#main /src/\nADD {url}#v1:docs /docs/\n"
    )})
    proc = build(rb, ctx)
    tree = tree_of(rb, "img")
    assert file_at(tree, "src/README.md") == b"v2\n"
    assert file_at(tree, "docs/guide.md") == b"guide\n"
    assert "src/.git/HEAD" in tree
    config = file_at(tree, "src/.git/config").decode()
    assert f"http://127.0.0.1:{web.port}/private/secret.git" in config
    assert repo.main.encode() in file_at(tree, "src/.git/HEAD")
    leaks = [str(p) for root in (rb.workdir / "img.oci", rb.store)
             for p, data in _all_bytes(root) if TOKEN.encode() in data]
    assert leaks == []
    assert TOKEN not in proc.stderr and TOKEN not in proc.stdout
    _, image_config = read_image(rb.workdir / "img.oci", "img")
    assert f"{USER}:xxxxx@" in str(image_config["history"])


def test_git_cached_rebuild_only_resolves_the_ref(rb: Any, web: Server) -> None:
    """A Git source is cached by the commit its ref names (BuildKit resolves the ref and
    keys the step by the commit): an unchanged ref rebuilds CACHED with one ref listing and
    no fetch. https://docs.docker.com/reference/dockerfile/#adding-files-from-a-git-repository"""
    url = web.url("/git/repo.git")
    ctx = rb.make_context("ctx", {"Dockerfile": f"FROM scratch\nADD {url}#v1 /src/\n"})

    def posts() -> int:
        return sum(1 for method, path, _ in web.requests
                   if method == "POST" and path.startswith("/git/repo.git/"))

    start = posts()
    build(rb, ctx, "one")
    first = posts() - start
    second = build(rb, ctx, "two")
    assert re.search(r"^#\d+ CACHED$", second.stderr, re.M), second.stderr
    assert posts() - start - first == 1  # ls-refs only; the first build also fetched
    assert first > 1
    assert file_at(tree_of(rb, "two"), "src/README.md") == b"v1\n"


def test_git_over_https_trusts_cert_dir(rb: Any, web: Server) -> None:
    """Git over HTTPS verifies the server like ``ADD <url>`` and registries: the test CA is
    trusted through ``--cert-dir`` (added to the system CAs for git).
    https://docs.docker.com/reference/dockerfile/#adding-files-from-a-git-repository"""
    url = web.url("/git/repo.git", tls=True)
    ctx = rb.make_context("ctx", {"Dockerfile": f"FROM scratch\nADD {url}#v1:docs /docs/\n"})
    build(rb, ctx, "img", "--cert-dir", str(web.cert_dir))
    assert file_at(tree_of(rb, "img"), "docs/guide.md") == b"guide\n"
    _fails_in_one_line(
        rb, ctx, rf"rootbuild: Dockerfile:2: ADD: fetch {re.escape(url)}#v1:docs: .*"
        r"(certificate|SSL).*")


def test_git_missing_ref_and_wrong_checksum(rb: Any, git_daemon: str) -> None:
    """A ref the repository does not have, or a commit that does not match ``--checksum``
    ("For Git sources, the checksum is the commit SHA"), fails the step in one line.
    https://docs.docker.com/reference/dockerfile/#add---checksum"""
    url = f"{git_daemon}/repo.git"
    ctx = rb.make_context("ctx", {"Dockerfile": f"FROM scratch\nADD {url}#no-such-ref /x/\n"})
    _fails_in_one_line(
        rb, ctx, rf"rootbuild: Dockerfile:2: ADD: fetch {re.escape(url)}#no-such-ref: "
        r".*no-such-ref.*")
    ctx2 = rb.make_context("ctx2", {
        "Dockerfile": f"FROM scratch\nADD --checksum=deadbeef {url}#v1 /x/\n"})
    _fails_in_one_line(
        rb, ctx2, rf"rootbuild: Dockerfile:2: ADD: expected checksum to match deadbeef, "
        rf"got {REPO['repo'].first}")


def test_copy_refuses_urls(rb: Any, web: Server) -> None:
    """COPY takes no URL: "The `ADD` and `COPY` instructions are functionally similar [...]"
    and only ADD lists "Adding files from a URL".
    https://docs.docker.com/reference/dockerfile/#copy"""
    ctx = rb.make_context("ctx", {"Dockerfile": f"FROM scratch\nCOPY {web.url('/x')} /x\n"})
    _fails_in_one_line(
        rb, ctx, r"rootbuild: Dockerfile:2: COPY: source can't be a URL or git ref: .*")
    assert web.statuses("/x") == []



# -- Git over ssh with --ssh default -----------------------------------------------------------


@dataclass(frozen=True)
class SshServer:
    """An sshd of the build user on 127.0.0.1 serving ``repo.git``, and an ssh-agent of the
    build user holding the one key the server accepts."""

    url: str  # ssh://USER@127.0.0.1:PORT/.../repo.git
    agent: Path  # the agent's socket
    key: Path  # the client's private key (also the build user's ~/.ssh/id_ed25519)
    fingerprint: str  # SHA256:... of the client key
    log: Path  # sshd's log (LogLevel DEBUG1: every key a client offers)


def _wait_for_port(port: int, proc: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                pytest.fail(f"{what} did not start")
            time.sleep(0.1)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture
def sshd(rb: Any, web: Server) -> Iterator[SshServer]:
    """``/usr/sbin/sshd`` run AS the build user (an unprivileged sshd logs in only its own
    user) with a host key and authorized_keys made here; the host key in the build user's
    ~/.ssh/known_hosts for ``[127.0.0.1]:PORT`` and the client key as its
    ~/.ssh/id_ed25519 (what an ssh without rootbuild's rules would use), both restored
    after; sshd and the agent stopped after the test."""
    assert web.repos is not None
    keygen = require_tool("ssh-keygen")
    base = rb.workdir / "sshd"
    base.mkdir()
    _git("clone", "-q", "--bare", str(web.repos / "repo.git"), str(base / "repo.git"),
         cwd=rb.workdir)
    rb._own(base)
    host_key, key = base / "host_key", base / "id_client"
    for path in (host_key, key):
        rb.as_user([keygen, "-q", "-t", "ed25519", "-N", "", "-C", "rootbuild-test", "-f",
                    str(path)])
    fingerprint = rb.as_user([keygen, "-lf", f"{key}.pub"]).stdout.split()[1]
    (base / "authorized_keys").write_bytes(Path(f"{key}.pub").read_bytes())
    port = free_port()
    config = base / "sshd_config"
    config.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {host_key}\n"
        f"AuthorizedKeysFile {base / 'authorized_keys'}\nStrictModes no\nUsePAM no\n"
        "PidFile none\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        "AllowAgentForwarding no\nLogLevel DEBUG1\n"
    )
    rb._own(base)
    home_ssh = Path(rb.user.home) / ".ssh"
    saved = {name: (home_ssh / name).read_bytes() if (home_ssh / name).exists() else None
             for name in ("known_hosts", "id_ed25519")}
    had_dir = home_ssh.exists()
    log = base / "sshd.log"
    procs: list[subprocess.Popen[bytes]] = []
    try:
        home_ssh.mkdir(mode=0o700, exist_ok=True)
        host_pub = Path(f"{host_key}.pub").read_text().split()
        (home_ssh / "known_hosts").write_text(
            f"[127.0.0.1]:{port} {host_pub[0]} {host_pub[1]}\n")
        shutil.copyfile(key, home_ssh / "id_ed25519")
        (home_ssh / "id_ed25519").chmod(0o600)
        for path in (home_ssh, home_ssh / "known_hosts", home_ssh / "id_ed25519"):
            os.chown(path, rb.user.uid, rb.user.gid)
        with log.open("wb") as out:
            procs.append(subprocess.Popen(
                rb.command([require_tool("/usr/sbin/sshd"), "-D", "-e", "-f", str(config)]),
                stdout=out, stderr=out))
        _wait_for_port(port, procs[0], "sshd")
        sock = rb.workdir / "agent.sock"
        procs.append(subprocess.Popen(
            rb.command([require_tool("ssh-agent"), "-D", "-a", str(sock)]),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        for _ in range(250):
            if sock.exists():
                break
            time.sleep(0.02)
        subprocess.run(rb.command([require_tool("ssh-add"), "-q", str(key)],
                                  {"SSH_AUTH_SOCK": str(sock)}), check=True,
                       capture_output=True)
        url = f"ssh://{rb.user.name}@127.0.0.1:{port}{base / 'repo.git'}"
        yield SshServer(url, sock, key, fingerprint, log)
    finally:
        for proc in reversed(procs):
            _stop(proc)
        for name, data in saved.items():
            if data is None:
                (home_ssh / name).unlink(missing_ok=True)
            else:
                (home_ssh / name).write_bytes(data)
        if not had_dir:
            shutil.rmtree(home_ssh, ignore_errors=True)


def test_git_over_ssh_authenticates_with_the_ssh_default_agent(
    rb: Any, sshd: SshServer
) -> None:
    """Reference, "Adding private Git repositories": "To add a private repository via SSH,
    create a Dockerfile with the following form: ADD git@git.example.com:foo/bar.git /bar
    [...] This Dockerfile can be built with docker build --ssh or buildctl build --ssh,
    e.g., docker build --ssh default". The files arrive; the server saw the agent's key;
    the key reaches neither the image nor the store.
    https://docs.docker.com/reference/dockerfile/#adding-private-git-repositories"""
    repo = REPO["repo"]
    ctx = rb.make_context("ctx", {"Dockerfile": (
        f"FROM scratch\nADD {sshd.url}#v1 /src/\n"
        f"ADD --keep-git-dir=true {sshd.url}#main /kept/\n"
    )})
    proc = build(rb, ctx, "img", f"--ssh=default={sshd.agent}")
    tree = tree_of(rb, "img")
    assert file_at(tree, "src/README.md") == b"v1\n"
    assert file_at(tree, "src/docs/guide.md") == b"guide\n"
    assert tree["src/bin/tool.sh"].mode == 0o755
    assert "src/.git/HEAD" not in tree
    assert file_at(tree, "kept/README.md") == b"v2\n"
    assert repo.main.encode() in file_at(tree, "kept/.git/HEAD")
    assert f"Accepted publickey for {rb.user.name} from 127.0.0.1" in sshd.log.read_text()
    assert sshd.fingerprint in sshd.log.read_text()
    private = sshd.key.read_text().splitlines()
    needles = [line.encode() for line in private[1:-1]]  # the base64 body of the key
    needles.append(Path(f"{sshd.key}.pub").read_text().split()[1].encode())
    leaks = [str(p) for root in (rb.workdir / "img.oci", rb.store)
             for p, data in _all_bytes(root) if any(n in data for n in needles)]
    assert leaks == []
    assert not any(n.decode() in proc.stderr + proc.stdout for n in needles)


def test_git_over_ssh_without_ssh_default_uses_no_key(rb: Any, sshd: SshServer) -> None:
    """Without ``--ssh`` the build has no agent: Docker's reference makes ``--ssh`` the way
    to give the build access ("This Dockerfile can be built with docker build --ssh").
    Neither the user's ~/.ssh/id_ed25519 nor the agent in the builder's own
    ``SSH_AUTH_SOCK`` is offered (sshd logs every key a client offers: none was); the
    build fails in one line naming the Dockerfile line and saying to give --ssh default,
    the store unchanged.
    https://docs.docker.com/reference/dockerfile/#adding-private-git-repositories"""
    ctx = rb.make_context("ctx", {"Dockerfile": f"FROM scratch\nADD {sshd.url}#v1 /src/\n"})
    rb.run("images")
    before = rb.store_snapshot()
    out = rb.workdir / "bad.oci"
    proc = rb.run("build", "--progress=plain", "--output", f"oci:{out}:bad", str(ctx),
                  check=False, env={"SSH_AUTH_SOCK": str(sshd.agent)})
    assert proc.returncode != 0, proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("rootbuild: ")]
    assert len(errors) == 1, proc.stderr
    assert re.fullmatch(
        rf"rootbuild: Dockerfile:2: ADD: fetch {re.escape(sshd.url)}#v1: "
        rf"{re.escape(rb.user.name)}@127\.0\.0\.1: Permission denied \(publickey\) "
        r"\(no ssh agent for the build: forward one with --ssh default\)", errors[0]), errors
    assert "Traceback" not in proc.stderr
    assert not out.exists()
    assert rb.store_snapshot() == before
    log = sshd.log.read_text()
    assert f"userauth-request for user {rb.user.name} service ssh-connection" in log
    assert sshd.fingerprint not in log
    assert "publickey test pkalg" not in log  # no key at all was offered
