"""ADD's remote sources in a build: a URL's file or a Git repository's tree, fetched once
per build, verified against ``--checksum``, keyed for the step cache, turned into COPY
sources.

Rules (Docker's Dockerfile reference "Adding files from a URL", "Adding files from a Git
repository", "ADD --checksum", "ADD --keep-git-dir", "ADD --unpack"; BuildKit's HTTP and
Git sources):
- The fetching is behind two Protocols, ``HttpFetcher`` (``remote_http``: httpx, the
  registry client's proxy and CA handling) and ``GitFetcher`` (``remote_git``: the host's
  ``git`` binary in a clean environment); engine tests pass fakes. In an untrusted build
  (``untrusted``) both check and pin every destination (``fetch_guard``).
- A Git source over ssh authenticates with the agent of ``--ssh default`` (BuildKit's
  Git source mounts that ssh id): the build hands its agents' sockets over with
  ``forward_ssh`` once they run, and the fetcher asks for the socket when git runs.
- A URL's step cache key is its content digest: the ``--checksum`` itself when given (no
  request at all), else the digest of what the fetch streamed. The ETag of every fetch
  is remembered in the store (``<root>/remote-sources/``, one file per URL hash: no URL,
  so no credentials, is written there) when the build succeeds; the next build asks
  with ``If-None-Match`` and a 304 reuses the remembered digest without a download.
- A URL file lands with mode 0600, its mtime from ``Last-Modified`` (else the build's
  time), named after the URL path; it is unpacked only with ``--unpack=true``.
- A Git source's key is the commit its ref names (``git ls-remote``: a cached rebuild
  fetches nothing); ``--checksum`` must be a prefix of that commit. Its tree is copied
  with Git's modes normalised (0644, 0755 for executables and directories), owned by
  0:0, without ``.git`` unless ``--keep-git-dir``.
- A mismatch, an HTTP error, an unreachable host or a missing ref is one ``StepError``
  line (the stage adds the Dockerfile line); credentials in a URL are never shown.
"""

from __future__ import annotations

import hashlib
import json
import os
import tarfile
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Protocol

import trio

from rootbuild.engine.archive_source import stream_is_tar, unpack_archive
from rootbuild.engine.copy import Source, SourceItem
from rootbuild.engine.remote_ref import (
    GitSource,
    HttpSource,
    check_checksum,
    file_name,
    http_mtime,
    parse_remote,
)
from rootbuild.errors import Location, StepError
from rootbuild.registry.transport import DEFAULT_TRANSPORT, TransportOptions


@dataclass(frozen=True)
class Download:
    """A URL's body, staged in the build's private directory."""

    path: Path
    digest: str  # "sha256:<hex>" of the bytes, computed while they streamed in
    size: int
    etag: str | None
    last_modified: str | None


class HttpFetcher(Protocol):
    async def fetch(self, url: str, dest: Path, *, etag: str | None = None) -> Download | None:
        """GET ``url`` into the new file ``dest``. With ``etag``, a conditional request:
        None when the server answers 304. Failures raise ``StepError`` without a
        location, the URL shown without credentials."""
        ...


@dataclass(frozen=True)
class Checkout:
    """A Git source checked out: ``tree`` holds the files (the subdirectory applied;
    ``.git`` only when asked to keep it)."""

    tree: Path
    commit: str
    time: int  # the commit's time: the mtime of every file


class GitFetcher(Protocol):
    async def resolve(self, source: GitSource) -> str | None:
        """The commit ``source``'s ref names on the remote now (``git ls-remote``); None
        when no ref has that name (it may still be a commit id). An unreachable remote
        raises ``StepError`` without a location."""
        ...

    async def fetch(self, source: GitSource, dest: Path, *, keep_git_dir: bool) -> Checkout:
        """Fetch ``source``'s ref (shallow where the server allows) into the new directory
        ``dest``. Failures raise ``StepError`` without a location."""
        ...


class Records:
    """What the store remembers of URLs: ETag and content digest, one JSON file per
    sha256 of the URL. Writes wait for ``commit()`` (a failed build changes nothing)."""

    def __init__(self, root: Path | None) -> None:
        self.root = root
        self.pending: dict[str, dict[str, str]] = {}

    @staticmethod
    def _name(url: str) -> str:
        return hashlib.sha256(url.encode()).hexdigest() + ".json"

    def get(self, url: str) -> dict[str, str] | None:
        if self.root is None:
            return None
        try:
            data = json.loads((self.root / self._name(url)).read_bytes()[:65536])
        except (OSError, ValueError):
            return None
        if not isinstance(data, dict) or not all(
            isinstance(data.get(k), str) for k in ("etag", "digest")
        ):
            return None
        return {"etag": data["etag"], "digest": data["digest"]}

    def put(self, url: str, etag: str, digest: str) -> None:
        self.pending[self._name(url)] = {"etag": etag, "digest": digest}

    def commit(self) -> None:
        if self.root is None or not self.pending:
            return
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        for name, record in self.pending.items():
            fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".tmp-")
            with os.fdopen(fd, "w") as f:
                json.dump(record, f)
            os.replace(tmp, self.root / name)
        self.pending.clear()


def _default_http(transport: TransportOptions, untrusted: bool = False) -> HttpFetcher:
    from rootbuild.engine.fetch_guard import DestinationGuard
    from rootbuild.engine.remote_http import HttpxFetcher

    return HttpxFetcher(transport, guard=DestinationGuard() if untrusted else None)


def _default_git(transport: TransportOptions, agent: Callable[[], Path | None],
                 untrusted: bool = False) -> GitFetcher:
    from rootbuild.engine.fetch_guard import DestinationGuard
    from rootbuild.engine.remote_git import GitBinaryFetcher

    return GitBinaryFetcher(transport, agent=agent,
                            guard=DestinationGuard() if untrusted else None)


GIT_SSH_ID = "default"  # the --ssh id a Git source authenticates with (BuildKit's)


@dataclass
class RemoteSources:
    """The remote sources of one build (a ``Seams`` member: per-build state only)."""

    http: HttpFetcher | None = None
    git: GitFetcher | None = None
    records_dir: Path | None = None
    transport: TransportOptions = DEFAULT_TRANSPORT
    ssh_sockets: Mapping[str, Path] = field(default_factory=dict)  # --ssh id -> socket
    untrusted: bool = False  # the fetches reach only what untrusted RUN reaches
    _records: Records = field(init=False)
    _downloads: dict[str, Download] = field(init=False, default_factory=dict)
    _checkouts: dict[tuple[str, bool], Checkout] = field(init=False, default_factory=dict)
    _locks: dict[object, trio.Lock] = field(init=False, default_factory=dict)
    _resolved: dict[object, str] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        self._records = Records(self.records_dir)
        self.consulted = False

    def _http(self) -> HttpFetcher:
        if self.http is None:
            self.http = _default_http(self.transport, self.untrusted)
        return self.http

    def _git(self) -> GitFetcher:
        if self.git is None:
            self.git = _default_git(self.transport, self.ssh_agent, self.untrusted)
        return self.git

    def forward_ssh(self, sockets: Mapping[str, Path]) -> None:
        """The agent sockets of the build's ``--ssh`` ids, once its agents run."""
        self.ssh_sockets = dict(sockets)

    def ssh_agent(self) -> Path | None:
        """The socket Git sources authenticate with now (None: no ``--ssh default``)."""
        return self.ssh_sockets.get(GIT_SSH_ID)

    def _lock(self, key: object) -> trio.Lock:
        return self._locks.setdefault(key, trio.Lock())

    # -- the step cache key -------------------------------------------------------------

    async def key(
        self, src: str, checksum: str | None, keep_git_dir: bool, work_dir: Path,
        where: Location,
    ) -> str:
        """What the step cache keys ``src`` by (see the module rules)."""
        self.consulted = True  # a build that fetched is never replayed (engine/replay.py)
        source = parse_remote(src, where)
        expected = check_checksum(source, checksum, where) if checksum else None
        if self.untrusted:
            await _check_destination(source, self.transport, where)
        if isinstance(source, GitSource):
            return "git:" + await self._commit(source, keep_git_dir, work_dir, expected)
        if expected is not None:
            return expected
        async with self._lock(src):
            if src in self._downloads:
                return self._downloads[src].digest
            record = self._records.get(src)
            dest = _new_file(work_dir)
            found = await self._http().fetch(
                src, dest, etag=record["etag"] if record else None
            )
            if found is None:
                assert record is not None
                return record["digest"]
            self._remember(src, found)
            return found.digest

    def _remember(self, src: str, found: Download) -> None:
        self._downloads[src] = found
        if found.etag:
            self._records.put(src, found.etag, found.digest)

    # -- the sources a step copies ------------------------------------------------------

    async def sources(
        self, src: str, *, checksum: str | None, keep_git_dir: bool, unpack: bool | None,
        excludes: Sequence[str], work_dir: Path, where: Location, now: int,
    ) -> tuple[list[Source], bool]:
        """The sources of ``src`` for the copy, and whether they keep their owners (an
        unpacked archive does)."""
        source = parse_remote(src, where)
        expected = check_checksum(source, checksum, where) if checksum else None
        if isinstance(source, GitSource):
            checkout = await self._checkout(source, keep_git_dir, work_dir, expected)
            what = source.shown
            return await trio.to_thread.run_sync(
                _tree_sources, checkout, excludes, where, work_dir, what
            ), False
        download = await self._download(source, work_dir)
        if expected is not None and download.digest != expected:
            raise StepError(f"ADD: digest mismatch {expected}: {download.digest}", where)
        if unpack:
            with download.path.open("rb") as f:
                is_tar = stream_is_tar(f)
            if is_tar:
                def unpacked() -> list[Source]:
                    with download.path.open("rb") as f:
                        return unpack_archive(f, file_name(src), excludes, where, work_dir)

                return await trio.to_thread.run_sync(unpacked), True
        mtime = http_mtime(download.last_modified)
        return [_file_source(file_name(src), download, now if mtime is None else mtime)], False

    async def _download(self, source: HttpSource, work_dir: Path) -> Download:
        async with self._lock(source.url):
            found = self._downloads.get(source.url)
            if found is None:
                found = await self._http().fetch(source.url, _new_file(work_dir))
                assert found is not None  # an unconditional GET never answers 304
                self._remember(source.url, found)
            return found

    async def _commit(
        self, source: GitSource, keep_git_dir: bool, work_dir: Path, expected: str | None,
    ) -> str:
        """The commit a Git source stands for, as BuildKit keys it: a full commit id as
        written, else the ref resolved on the remote without fetching; a ref no name
        matches is fetched (it may be an abbreviated commit id)."""
        ref = source.ref.lower()
        commit: str | None = None
        if len(ref) in (40, 64) and all(c in "0123456789abcdef" for c in ref):
            commit = ref
        else:
            key = ("resolve", source.remote, source.ref)
            async with self._lock(key):
                commit = self._resolved.get(key)
                if commit is None:
                    commit = await self._git().resolve(source)
                    if commit is not None:
                        self._resolved[key] = commit
        if commit is None:
            return (await self._checkout(source, keep_git_dir, work_dir, expected)).commit
        if expected is not None and not commit.startswith(expected):
            raise StepError(f"ADD: expected checksum to match {expected}, got {commit}", None)
        return commit

    async def _checkout(
        self, source: GitSource, keep_git_dir: bool, work_dir: Path, expected: str | None,
    ) -> Checkout:
        key = (f"{source.remote}#{source.ref}:{source.subdir}", keep_git_dir)
        async with self._lock(key):
            found = self._checkouts.get(key)
            if found is None:
                dest = Path(tempfile.mkdtemp(prefix="git-", dir=work_dir))
                found = await self._git().fetch(source, dest, keep_git_dir=keep_git_dir)
                self._checkouts[key] = found
        if expected is not None and not found.commit.startswith(expected):
            raise StepError(
                f"ADD: expected checksum to match {expected}, got {found.commit}", None
            )
        return found

    def commit(self) -> None:
        """After the image is committed: the store learns this build's ETags."""
        self._records.commit()


async def _check_destination(
    source: HttpSource | GitSource, transport: TransportOptions, where: Location,
) -> None:
    """An untrusted build refuses a denied source before its cache key is made, not only
    when it fetches: a ``--checksum`` URL or a full commit id makes no request, and the
    step cached by a trusted build from that destination must not be reused."""
    from rootbuild.engine.fetch_guard import (
        DeniedDestination,
        DestinationGuard,
        host_port,
        refusal,
    )
    from rootbuild.engine.remote_git import GitBinaryFetcher

    guard = DestinationGuard()
    try:
        if isinstance(source, GitSource):
            await GitBinaryFetcher(transport, guard=guard).pin(source)
            return
        await guard.check(*host_port(source.url))
    except DeniedDestination as exc:
        raise StepError(refusal(f"ADD: {source.shown}", exc), where) from exc
    except StepError as exc:
        raise StepError(exc.message, where) from exc
    except (OSError, ValueError):
        pass  # not resolvable now: the fetch, if one is made, says why


def _new_file(work_dir: Path) -> Path:
    return Path(tempfile.mkdtemp(prefix="url-", dir=work_dir)) / "body"


def _file_source(name: str, download: Download, mtime: int) -> Source:
    """A downloaded file: mode 0600 (Docker's reference), owned by 0:0."""
    path = download.path

    def opener() -> BinaryIO:
        return path.open("rb")

    def items() -> Iterator[SourceItem]:
        yield SourceItem(rel="", kind="file", mode=0o600, mtime=mtime, size=download.size,
                         opener=opener)

    return Source(name=name, is_dir=False, items=items)


def _tree_sources(
    checkout: Checkout, excludes: Sequence[str], where: Location, work_dir: Path, what: str,
) -> list[Source]:
    """A checkout as copy sources: written as a tar (modes normalised, owners 0:0, the
    commit's time), then unpacked through the layer extractor, so the repository's
    symlinks are only ever data (SECURITY.md rules 1 and 2)."""
    fd, _name = tempfile.mkstemp(prefix="git-", suffix=".tar", dir=work_dir)
    with os.fdopen(fd, "w+b") as f:
        with tarfile.open(fileobj=f, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for info, opener in _tree_members(checkout.tree, checkout.time):
                if opener is None:
                    tar.addfile(info)
                else:
                    with opener() as data:
                        tar.addfile(info, data)
        f.seek(0)
        return unpack_archive(f, what, excludes, where, work_dir)


def _tree_members(
    root: Path, mtime: int
) -> Iterator[tuple[tarfile.TarInfo, Callable[[], BinaryIO] | None]]:
    """Every entry below ``root`` (never following a symlink), sorted, as tar members."""
    def walk(rel: str) -> Iterator[tuple[tarfile.TarInfo, Callable[[], BinaryIO] | None]]:
        directory = root / rel if rel else root
        for entry in sorted(os.scandir(directory), key=lambda e: e.name):
            path = f"{rel}/{entry.name}" if rel else entry.name
            st = entry.stat(follow_symlinks=False)
            info = tarfile.TarInfo(path)
            info.mtime, info.uid, info.gid, info.uname, info.gname = mtime, 0, 0, "", ""
            if entry.is_symlink():
                info.type, info.mode = tarfile.SYMTYPE, 0o777
                info.linkname = os.readlink(entry.path)
                yield info, None
            elif entry.is_dir(follow_symlinks=False):
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                yield info, None
                yield from walk(path)
            elif entry.is_file(follow_symlinks=False):
                info.mode = 0o755 if st.st_mode & 0o111 else 0o644
                info.size = st.st_size
                file_path = entry.path

                def opener(p: str = file_path) -> BinaryIO:
                    return open(p, "rb", opener=lambda n, fl: os.open(n, fl | os.O_NOFOLLOW))

                yield info, opener

    yield from walk("")

