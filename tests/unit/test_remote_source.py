"""ADD's remote sources: the pure parsing (``engine.remote_ref``) and the engine driven
through fake fetchers (``engine.remote_source``): names, modes, mtimes, checksums, the
ETag records and the step cache, with no network and no git."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
import trio

from rootbuild.engine.build import BuildResult, build
from rootbuild.engine.layers import Layer, LayerTrees
from rootbuild.engine.options import BuildOptions
from rootbuild.engine.remote_ref import (
    UNNAMED,
    GitSource,
    HttpSource,
    check_checksum,
    file_name,
    http_mtime,
    parse_remote,
    redact,
    strip_credentials,
)
from rootbuild.engine.remote_source import Checkout, Download, RemoteSources
from rootbuild.engine.seams import Seams
from rootbuild.errors import DockerfileError, StepError
from rootbuild.image.rootfs import RootfsView
from rootbuild.image.store import Store
from rootbuild.platform import Platform
from rootbuild.testing.fakes import (
    FakeBaseImages,
    FakeExecutor,
    FakeExporter,
    RecordingProgress,
)

AMD64 = Platform("linux", "amd64")

# -- parsing ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("src", "expected"),
    [
        ("https://example.com/file.tar.gz", HttpSource("https://example.com/file.tar.gz")),
        ("http://example.com/a/b?x=1", HttpSource("http://example.com/a/b?x=1")),
        ("https://github.com/moby/buildkit.git#v0.14.1:docs",
         GitSource("https://github.com/moby/buildkit.git", "v0.14.1", "docs")),
        ("https://host/repo.git", GitSource("https://host/repo.git", "", "")),
        ("git@github.com:moby/buildkit.git#v0.14.1:docs",
         GitSource("git@github.com:moby/buildkit.git", "v0.14.1", "docs")),
        ("git://127.0.0.1:9418/repo.git#main", GitSource("git://127.0.0.1:9418/repo.git",
                                                          "main", "")),
        ("ssh://git@host/repo.git#:sub/dir/", GitSource("ssh://git@host/repo.git", "",
                                                         "sub/dir")),
        ("git://h/r.git#abc123:../../etc", GitSource("git://h/r.git", "abc123", "etc")),
    ],
)
def test_parse_remote(src: str, expected: object) -> None:
    assert parse_remote(src) == expected


@pytest.mark.parametrize(
    "src", ["git://h/r.git#--upload-pack=x", "git://h/r.git#a..b", "git@:path", "git://"],
)
def test_parse_remote_refuses_bad_refs(src: str) -> None:
    with pytest.raises(DockerfileError):
        parse_remote(src)


@pytest.mark.parametrize(
    ("url", "name"),
    [
        ("http://example.com/foobar", "foobar"),
        ("http://example.com/dir/file.tar.gz?token=1#frag", "file.tar.gz"),
        ("http://example.com/dir/", "dir"),
        ("http://example.com/with%20space", "with space"),
        ("http://example.com", UNNAMED),
        ("http://example.com/", UNNAMED),
        ("http://example.com/a%2Fb", UNNAMED),
    ],
)
def test_file_name_from_the_url_path(url: str, name: str) -> None:
    assert file_name(url) == name


@pytest.mark.parametrize(
    ("value", "epoch"),
    [
        ("Sun, 06 Nov 1994 08:49:37 GMT", 784111777),  # RFC 9110 IMF-fixdate
        ("Sunday, 06-Nov-94 08:49:37 GMT", 784111777),  # obsolete RFC 850
        ("Sun Nov  6 08:49:37 1994", 784111777),  # asctime
        ("not a date", None),
        ("", None),
        (None, None),
    ],
)
def test_last_modified(value: str | None, epoch: int | None) -> None:
    assert http_mtime(value) == epoch


def test_credentials_are_never_shown() -> None:
    assert redact("https://user:s3cret@host/x") == "https://user:xxxxx@host/x"
    assert redact("https://tok3n@host/x") == "https://xxxxx@host/x"
    assert redact("ssh://git@host/r.git") == "ssh://git@host/r.git"
    assert redact("https://host/x") == "https://host/x"
    assert strip_credentials("https://user:s3cret@host:8443/r.git") == "https://host:8443/r.git"
    assert GitSource("https://u:pw@h/r.git", "main", "d").shown == \
        "https://u:xxxxx@h/r.git#main:d"


def test_checksum_formats() -> None:
    http, git = HttpSource("https://h/f"), GitSource("git://h/r.git", "", "")
    digest = "sha256:" + "a" * 64
    assert check_checksum(http, digest.upper().replace("SHA", "sha"), None) == digest
    with pytest.raises(DockerfileError, match="unsupported digest algorithm 'sha512'"):
        check_checksum(http, "sha512:" + "a" * 128, None)
    with pytest.raises(DockerfileError, match="invalid checksum digest format"):
        check_checksum(http, "sha256:abc", None)
    assert check_checksum(git, "BE1F38E", None) == "be1f38e"
    with pytest.raises(DockerfileError, match="commit id"):
        check_checksum(git, "sha256:" + "a" * 64, None)


# -- the engine with fake fetchers --------------------------------------------------------


class FakeHttp:
    """Serves ``files`` (url -> body); answers 304 to a matching ``If-None-Match``."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.last_modified: str | None = "Wed, 21 Oct 2015 07:28:00 GMT"
        self.calls: list[tuple[str, str | None]] = []

    def etag(self, url: str) -> str:
        return '"' + hashlib.sha256(self.files[url]).hexdigest()[:16] + '"'

    async def fetch(self, url: str, dest: Path, *, etag: str | None = None) -> Download | None:
        self.calls.append((url, etag))
        if url not in self.files:
            raise StepError(f"ADD: download {redact(url)}: invalid response status 404")
        if etag is not None and etag == self.etag(url):
            return None
        body = self.files[url]
        dest.write_bytes(body)
        return Download(dest, "sha256:" + hashlib.sha256(body).hexdigest(), len(body),
                        self.etag(url), self.last_modified)


class FakeGit:
    """One repository: ``refs`` maps a ref to (commit, files)."""

    def __init__(self) -> None:
        self.refs: dict[str, tuple[str, dict[str, str]]] = {}
        self.calls: list[GitSource] = []
        self.resolved: list[GitSource] = []

    async def resolve(self, source: GitSource) -> str | None:
        self.resolved.append(source)
        return self.refs[source.ref][0] if source.ref in self.refs else None

    async def fetch(self, source: GitSource, dest: Path, *, keep_git_dir: bool) -> Checkout:
        self.calls.append(source)
        if source.ref not in self.refs:
            raise StepError(f"ADD: fetch {source.shown}: couldn't find remote ref {source.ref}")
        commit, files = self.refs[source.ref]
        tree = dest / "repo"
        for rel, text in files.items():
            (tree / rel).parent.mkdir(parents=True, exist_ok=True)
            (tree / rel).write_text(text)
            if rel.endswith(".sh"):
                (tree / rel).chmod(0o700)
        if keep_git_dir:
            (tree / ".git").mkdir()
            (tree / ".git" / "HEAD").write_text(commit + "\n")
        if source.subdir:
            tree = tree / source.subdir
        return Checkout(tree, commit, 1600000000)


class RemoteRig:
    def __init__(self, tmp: Path) -> None:
        self.store = Store.open(tmp / "store")
        self.context = tmp / "ctx"
        self.context.mkdir()
        self.http = FakeHttp()
        self.git = FakeGit()

    def build(self, dockerfile: str, **options: object) -> BuildResult:
        (self.context / "Dockerfile").write_text(dockerfile)
        opts = BuildOptions(context_dir=self.context, target_platform=AMD64,
                            source_date_epoch=1700000000, **options)  # type: ignore[arg-type]
        remote = RemoteSources(http=self.http, git=self.git,
                               records_dir=self.store.root / "remote-sources")
        seams = Seams(FakeExecutor(), FakeBaseImages(self.store), FakeExporter(),
                      lambda: "fake", remote=remote)
        self.progress = RecordingProgress()
        return trio.run(lambda: build(opts, self.store, self.progress, seams=seams))

    def view(self, result: BuildResult) -> RootfsView:
        image = result.image
        with self.store.stage() as staging:
            trees = LayerTrees(self.store, staging)
            return trees.view([Layer(d, i) for d, i in
                               zip(image.layers, image.diff_ids, strict=True)])

    def snapshot(self) -> set[str]:
        root = self.store.root
        return {str(p.relative_to(root)) for p in root.rglob("*")
                if p.relative_to(root).parts[0] not in ("tmp", "locks")
                and not p.name.endswith((".lock", "-wal", "-shm"))}


@pytest.fixture
def rig(tmp_path: Path) -> RemoteRig:
    return RemoteRig(tmp_path)


URL = "https://files.example/dl/tool-1.0"


def test_url_file_name_mode_mtime(rig: RemoteRig) -> None:
    rig.http.files[URL] = b"tool\n"
    result = rig.build(f"FROM scratch\nADD {URL} /opt/\nADD {URL} /named\n"
                       "ARG U=" + URL + "\nADD $U /from-arg/\n")
    view = rig.view(result)
    for path in ("opt/tool-1.0", "named", "from-arg/tool-1.0"):
        entry = view.lookup(path)
        assert entry is not None and entry.kind == "file"
        assert entry.mode & 0o7777 == 0o600
        assert entry.mtime == 1445412480  # Last-Modified
        assert (entry.uid, entry.gid) == (0, 0)
        assert view.open(path).read() == b"tool\n"
    assert len(rig.http.calls) == 1  # one fetch per URL and build


def test_url_file_takes_chmod_and_chown(rig: RemoteRig) -> None:
    rig.http.files[URL] = b"tool\n"
    view = rig.view(rig.build(f"FROM scratch\nADD --chmod=755 --chown=7:8 {URL} /bin/tool\n"))
    entry = view.lookup("bin/tool")
    assert entry is not None
    assert (entry.mode & 0o7777, entry.uid, entry.gid) == (0o755, 7, 8)


def test_url_without_last_modified_gets_the_build_time(rig: RemoteRig) -> None:
    rig.http.files[URL] = b"tool\n"
    rig.http.last_modified = None
    entry = rig.view(rig.build(f"FROM scratch\nADD {URL} /t\n")).lookup("t")
    assert entry is not None and entry.mtime == 1700000000


def test_checksum_is_the_key_and_is_verified(rig: RemoteRig) -> None:
    body = b"payload\n"
    good = "sha256:" + hashlib.sha256(body).hexdigest()
    rig.http.files[URL] = body
    rig.build(f"FROM scratch\nADD --checksum={good} {URL} /p\n")
    assert len(rig.http.calls) == 1
    rig.build(f"FROM scratch\nADD --checksum={good} {URL} /p\n")
    assert len(rig.http.calls) == 1  # cached by the checksum: no request at all
    bad = "sha256:" + "0" * 64
    before = rig.snapshot()
    with pytest.raises(StepError, match=rf"^Dockerfile:2: ADD: digest mismatch {bad}: {good}$"):
        rig.build(f"FROM scratch\nADD --checksum={bad} {URL} /p\n")
    assert rig.snapshot() == before


def test_etag_revalidation_reuses_the_layer(rig: RemoteRig) -> None:
    rig.http.files[URL] = b"v1\n"
    first = rig.build(f"FROM scratch\nADD {URL} /t\n")
    assert rig.http.calls == [(URL, None)]
    second = rig.build(f"FROM scratch\nADD {URL} /t\n")
    assert rig.http.calls[1] == (URL, rig.http.etag(URL))  # conditional, answered 304
    assert second.image.manifest.digest == first.image.manifest.digest
    assert ("cached", f"[stage-0 2/2] ADD {URL} /t") in rig.progress.events
    rig.http.files[URL] = b"v2\n"
    third = rig.build(f"FROM scratch\nADD {URL} /t\n")
    assert rig.view(third).open("t").read() == b"v2\n"


def test_failed_fetch_is_one_line_and_changes_nothing(rig: RemoteRig) -> None:
    before = rig.snapshot()
    with pytest.raises(StepError, match=r"^Dockerfile:2: ADD: download "
                       r"https://u:xxxxx@files\.example/missing: invalid response status 404$"):
        rig.build("FROM scratch\nADD https://u:pw@files.example/missing /m\n")
    assert rig.snapshot() == before


def test_unpack_true_unpacks_a_remote_archive(rig: RemoteRig, tmp_path: Path) -> None:
    src = tmp_path / "pkg"
    (src / "d").mkdir(parents=True)
    (src / "d" / "f.txt").write_text("inside\n")
    archive = shutil.make_archive(str(tmp_path / "a"), "gztar", src)
    rig.http.files[URL + ".tgz"] = Path(archive).read_bytes()
    view = rig.view(rig.build(
        f"FROM scratch\nADD --unpack=true {URL}.tgz /x/\nADD {URL}.tgz /y/\n"
    ))
    assert view.open("x/d/f.txt").read() == b"inside\n"
    assert view.lookup("y/tool-1.0.tgz") is not None  # not unpacked by default


def test_git_source_commit_subdir_and_checksum(rig: RemoteRig) -> None:
    commit = "be1f38e" + "0" * 33
    rig.git.refs["v1"] = (commit, {"docs/a.md": "a\n", "run.sh": "#!/bin/sh\n"})
    repo = "https://git.example/r.git"
    result = rig.build(
        f"FROM scratch\nADD {repo}#v1 /all\nADD --checksum=be1f38e {repo}#v1:docs /docs\n"
        f"ADD --keep-git-dir=true {repo}#v1 /kept\n"
    )
    view = rig.view(result)
    assert view.open("all/docs/a.md").read() == b"a\n"
    entry = view.lookup("all/run.sh")
    assert entry is not None and entry.mode & 0o7777 == 0o755
    doc = view.lookup("all/docs/a.md")
    assert doc is not None and doc.mode & 0o7777 == 0o644
    assert view.lookup("all/.git") is None
    assert view.open("docs/a.md").read() == b"a\n"
    assert view.lookup("kept/.git/HEAD") is not None
    with pytest.raises(StepError, match=rf"^Dockerfile:2: ADD: expected checksum to match "
                       rf"abc, got {commit}$"):
        rig.build(f"FROM scratch\nADD --checksum=abc {repo}#v1 /x\n")
    with pytest.raises(StepError, match=r"^Dockerfile:2: ADD: fetch "
                       r"https://git\.example/r\.git#nope: couldn't find remote ref nope$"):
        rig.build(f"FROM scratch\nADD {repo}#nope /x\n")


def test_copy_still_refuses_urls(rig: RemoteRig) -> None:
    with pytest.raises(DockerfileError, match="COPY: source can't be a URL or git ref"):
        rig.build(f"FROM scratch\nCOPY {URL} /x\n")


def test_dockerfile_lines_are_shown_without_credentials() -> None:
    from rootbuild.engine.remote_ref import redact_text

    assert redact_text("ADD https://u:p4ss@h/r.git#main /src") == \
        "ADD https://u:xxxxx@h/r.git#main /src"
    assert redact_text("ADD --keep-git-dir https://ghp_T0k@h/r.git /s") == \
        "ADD --keep-git-dir https://xxxxx@h/r.git /s"
    assert redact_text("ADD git@github.com:moby/buildkit.git /b") == \
        "ADD git@github.com:moby/buildkit.git /b"


def test_history_never_holds_url_credentials(rig: RemoteRig) -> None:
    rig.http.files["https://u:p4ss@files.example/f"] = b"f\n"
    rig.http.files["https://t0ken@files.example/g"] = b"g\n"
    result = rig.build("FROM scratch\nADD https://u:p4ss@files.example/f /f\n"
                       "ADD https://t0ken@files.example/g /g\n")
    history = repr(result.image.config_json)
    assert "p4ss" not in history and "t0ken" not in history
    assert "https://u:xxxxx@files.example/f" in history
    assert "https://xxxxx@files.example/g" in history
    assert "p4ss" not in repr(rig.progress.events)


def test_git_rebuild_resolves_without_fetching(rig: RemoteRig) -> None:
    commit = "c0ffee" + "1" * 34
    rig.git.refs["main"] = (commit, {"a.txt": "a\n"})
    dockerfile = "FROM scratch\nADD https://git.example/r.git#main /src/\n"
    rig.build(dockerfile)
    assert len(rig.git.calls) == 1
    rig.build(dockerfile)
    assert len(rig.git.calls) == 1  # the ref resolved to the same commit: cached
    assert len(rig.git.resolved) == 2
    rig.git.refs["main"] = ("d" * 40, {"a.txt": "changed\n"})
    assert rig.view(rig.build(dockerfile)).open("src/a.txt").read() == b"changed\n"


@pytest.mark.parametrize(
    ("ref", "expected"),
    [("", "h" * 40), ("v1", "c" * 40), ("main", "m" * 40), ("refs/pull/1/head", "p" * 40),
     ("nope", None)],
)
def test_pick_ref_follows_git_precedence(ref: str, expected: str | None) -> None:
    from rootbuild.engine.remote_git import pick_ref

    listing = (f"{'h' * 40}\tHEAD\n{'m' * 40}\trefs/heads/main\n{'t' * 40}\trefs/tags/v1\n"
               f"{'c' * 40}\trefs/tags/v1^{{}}\n{'p' * 40}\trefs/pull/1/head\n")
    assert pick_ref(listing, ref) == expected


# -- the httpx fetcher over a mock transport ------------------------------------------------


def _fetcher(handler: object, max_bytes: int = 1 << 20) -> object:
    import httpx

    from rootbuild.engine.remote_http import HttpxFetcher
    from rootbuild.registry.client import TransportOptions

    return HttpxFetcher(TransportOptions(), max_bytes=max_bytes,
                        http_transport=httpx.MockTransport(handler))  # type: ignore[arg-type]


def test_httpx_fetcher_streams_hashes_and_revalidates(tmp_path: Path) -> None:
    import httpx

    seen: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("if-none-match"))
        if request.url.path == "/moved":
            return httpx.Response(302, headers={"Location": "/f"})
        if request.headers.get("if-none-match") == '"e1"':
            return httpx.Response(304)
        return httpx.Response(200, content=b"body\n", headers={
            "ETag": '"e1"', "Last-Modified": "Wed, 21 Oct 2015 07:28:00 GMT"})

    fetcher = _fetcher(handler)
    got = trio.run(lambda: fetcher.fetch("http://h/moved", tmp_path / "a"))  # type: ignore[attr-defined]
    assert got is not None
    assert got.digest == "sha256:" + hashlib.sha256(b"body\n").hexdigest()
    assert (got.size, got.etag, got.last_modified) == (5, '"e1"',
                                                       "Wed, 21 Oct 2015 07:28:00 GMT")
    assert (tmp_path / "a").read_bytes() == b"body\n"
    assert (tmp_path / "a").stat().st_mode & 0o777 == 0o600
    again = trio.run(lambda: fetcher.fetch("http://h/f", tmp_path / "b", etag='"e1"'))  # type: ignore[attr-defined]
    assert again is None and not (tmp_path / "b").exists()
    assert seen == [None, None, '"e1"']


@pytest.mark.parametrize(
    ("response", "message"),
    [
        ({"status_code": 404}, r"^ADD: download http://u:xxxxx@h/f: invalid response status 404$"),
        ({"status_code": 200, "content": b"x" * 2048},
         r"^ADD: download http://u:xxxxx@h/f: (2048 bytes is )?over the 1024-byte limit$"),
    ],
)
def test_httpx_fetcher_failures(tmp_path: Path, response: dict[str, object],
                                message: str) -> None:
    import httpx

    fetcher = _fetcher(lambda request: httpx.Response(**response), max_bytes=1024)  # type: ignore[arg-type]
    with pytest.raises(StepError, match=message):
        trio.run(lambda: fetcher.fetch("http://u:pw@h/f", tmp_path / "a"))  # type: ignore[attr-defined]
    assert not (tmp_path / "a").exists()


def test_git_runs_with_a_clean_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           ) -> None:
    from rootbuild.engine.remote_git import git_env
    from rootbuild.registry.client import TransportOptions

    monkeypatch.setenv("SSH_AUTH_SOCK", "/tmp/agent.sock")
    monkeypatch.setenv("GIT_DIR", "/elsewhere")
    monkeypatch.setenv("https_proxy", "http://proxy.example:3128")
    env = git_env(tmp_path, TransportOptions(), "git://h/r.git")
    assert env["HOME"] == str(tmp_path)
    assert (env["GIT_CONFIG_NOSYSTEM"], env["GIT_CONFIG_GLOBAL"]) == ("1", "/dev/null")
    assert env["GIT_TERMINAL_PROMPT"] == "0"
    assert env["https_proxy"] == "http://proxy.example:3128"
    assert "SSH_AUTH_SOCK" not in env and "GIT_DIR" not in env
    assert "IdentityAgent=none" in env["GIT_SSH_COMMAND"]
    assert "StrictHostKeyChecking=yes" in env["GIT_SSH_COMMAND"]
    insecure = git_env(tmp_path, TransportOptions(tls_verify=False), "https://h/r.git")
    assert insecure["GIT_SSL_NO_VERIFY"] == "1"
    certs = tmp_path / "certs"
    (certs / "h:8443").mkdir(parents=True)
    (certs / "h:8443" / "ca.crt").write_text("TEST CA\n")
    env = git_env(tmp_path, TransportOptions(cert_dir=certs), "https://u:p@h:8443/r.git")
    assert Path(env["GIT_SSL_CAINFO"]).read_text().endswith("TEST CA\n")


def test_git_subdirs_of_one_commit_are_different_steps(rig: RemoteRig) -> None:
    rig.git.refs["v1"] = ("a" * 40, {"one/f.txt": "one\n", "two/f.txt": "two\n"})
    repo = "https://git.example/r.git"
    rig.build(f"FROM scratch\nADD {repo}#v1:one /x/\n")
    view = rig.view(rig.build(f"FROM scratch\nADD {repo}#v1:two /x/\n"))
    assert view.open("x/f.txt").read() == b"two\n"  # not the cached layer of :one
    keep = rig.view(rig.build(f"FROM scratch\nADD --keep-git-dir=true {repo}#v1 /x/\n"))
    assert keep.lookup("x/.git/HEAD") is not None
