"""Hostile builds through the real `rootbuild` executable, run as the unprivileged build
user, for the SECURITY.md attack classes "Build context" and "Layer extraction".

Every test checks the HOST afterwards, not only the exit code (``Host.verify``):
- a canary directory outside the store and the context (writable by the build user, so a
  write-through would succeed if the builder allowed it) is byte-for-byte unchanged;
- nothing new in ``/tmp`` owned by the build user or named with the test's mark, nothing
  created or changed in the build user's ``$HOME``, the contexts unchanged;
- the canary token is in no blob of the store (decompressed), no extracted tree, no
  exported image or ``dir:`` output, and not in the build's output or logs;
- no leftover processes or mounts (the ``rb`` fixture asserts that).

A hostile input must give either one clear ``rootbuild:`` error (and leave the store as it
was, apart from the blobs of a base image imported on the way, as a pull would) or a result
that is contained in the image. Layers and archives are made in memory with tarfile.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import re
import stat
import subprocess
import tarfile
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import zstandard

from rootbuild.image.oci import ANNOTATION_REF_NAME, OCI_CONFIG, OCI_INDEX, OCI_LAYER, OCI_MANIFEST
from rootbuild.platform import host_platform

if TYPE_CHECKING:
    from conftest import Harness

pytestmark = pytest.mark.integration

Proc = subprocess.CompletedProcess[str]
_BUILDER_TMP = re.compile(r"tmp[a-z0-9_]{8}|(stage|work|add)-.*|\..*-[a-z0-9_]{8}")
Member = tuple[tarfile.TarInfo, bytes | None]


# -- tar and image helpers -----------------------------------------------------------------------


def _info(name: str, kind: bytes, mode: int, **attrs: object) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.mtime = kind, mode, 1_600_000_000
    for key, value in attrs.items():
        setattr(info, key, value)
    return info


def m_file(name: str, data: bytes = b"", mode: int = 0o644, **attrs: object) -> Member:
    return _info(name, tarfile.REGTYPE, mode, size=len(data), **attrs), data


def m_dir(name: str, mode: int = 0o755, **attrs: object) -> Member:
    return _info(name, tarfile.DIRTYPE, mode, **attrs), None


def m_sym(name: str, target: str) -> Member:
    return _info(name, tarfile.SYMTYPE, 0o777, linkname=target), None


def m_hard(name: str, target: str) -> Member:
    return _info(name, tarfile.LNKTYPE, 0o644, linkname=target), None


def m_dev(name: str, major: int, minor: int, kind: bytes = tarfile.CHRTYPE) -> Member:
    return _info(name, kind, 0o666, devmajor=major, devminor=minor), None


def m_fifo(name: str) -> Member:
    return _info(name, tarfile.FIFOTYPE, 0o644), None


def make_layer(members: Iterable[Member]) -> bytes:
    """A PAX tar with the members exactly as given (names are not cleaned)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _plain_tar(members: Mapping[str, bytes]) -> bytes:
    return make_layer(m_file(n, d) for n, d in members.items())


def oci_archive(path: Path, layers: Sequence[bytes]) -> list[str]:
    """Write an ``oci-archive:`` of an image with these plain tar layers; returns the
    digests of every blob in it."""
    blobs: dict[str, bytes] = {_sha(p): p for p in layers}
    diff_ids = [_sha(p) for p in layers]
    config = json.dumps({
        **host_platform().to_oci(),
        "config": {"Env": ["PATH=/usr/bin:/bin"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created_by": f"layer {n}"} for n in range(len(layers))],
    }).encode()
    manifest = json.dumps({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": _sha(config), "size": len(config)},
        "layers": [{"mediaType": OCI_LAYER, "digest": _sha(p), "size": len(p)} for p in layers],
    }).encode()
    blobs[_sha(config)] = config
    blobs[_sha(manifest)] = manifest
    index = json.dumps({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [{
            "mediaType": OCI_MANIFEST, "digest": _sha(manifest), "size": len(manifest),
            "annotations": {ANNOTATION_REF_NAME: "latest"},
        }],
    }).encode()
    members = {"oci-layout": b'{"imageLayoutVersion":"1.0.0"}', "index.json": index}
    members.update({f"blobs/sha256/{d[7:]}": b for d, b in blobs.items()})
    path.write_bytes(_plain_tar(members))
    return list(blobs)


def _decoded(data: bytes) -> Iterator[bytes]:
    """The bytes, and their decompressed form when they are gzip or zstd."""
    yield data
    try:
        if data[:2] == b"\x1f\x8b":
            yield gzip.decompress(data)
        elif data[:4] == b"\x28\xb5\x2f\xfd":
            yield zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data)).read()
    except (OSError, EOFError, zstandard.ZstdError):
        pass


@dataclass
class OutLayer:
    members: dict[str, tarfile.TarInfo]
    data: dict[str, bytes]


def output_layers(archive: Path) -> list[OutLayer]:
    """The layers of the only image in an ``oci-archive:`` output, lowest first."""
    with tarfile.open(archive) as tar:
        def read(name: str) -> bytes:
            f = tar.extractfile(name)
            assert f is not None, name
            return f.read()

        index = json.loads(read("index.json"))
        manifest = json.loads(read(f"blobs/sha256/{index['manifests'][0]['digest'][7:]}"))
        layers = []
        for desc in manifest["layers"]:
            blob = read(f"blobs/sha256/{desc['digest'][7:]}")
            plain = list(_decoded(blob))[-1]
            members: dict[str, tarfile.TarInfo] = {}
            data: dict[str, bytes] = {}
            with tarfile.open(fileobj=io.BytesIO(plain)) as layer:
                for info in layer:
                    name = info.name.removeprefix("./").rstrip("/")
                    members[name] = info
                    if info.isreg():
                        f = layer.extractfile(info)
                        assert f is not None
                        data[name] = f.read()
            layers.append(OutLayer(members, data))
    return layers


def all_members(layers: Sequence[OutLayer]) -> set[str]:
    return {name for layer in layers for name in layer.members}


# -- the host guard ------------------------------------------------------------------------------


def _tree(root: Path) -> dict[str, tuple[int, int, int, int, str]]:
    """(type, mode, size, mtime_ns, content hash or link target) of every path below root."""
    out: dict[str, tuple[int, int, int, int, str]] = {}
    if not root.exists():
        return out
    paths = [root]
    for dirpath, dirnames, filenames in os.walk(root):
        paths += [Path(dirpath, name) for name in [*dirnames, *filenames]]
    for path in paths:
        st = path.lstat()
        if stat.S_ISREG(st.st_mode):
            what = hashlib.sha256(path.read_bytes()).hexdigest()
        elif stat.S_ISLNK(st.st_mode):
            what = os.readlink(path)
        else:
            what = ""
        size = st.st_size if not stat.S_ISDIR(st.st_mode) else 0
        out[os.path.relpath(path, root)] = (
            stat.S_IFMT(st.st_mode), st.st_mode, size, st.st_mtime_ns, what
        )
    return out


@dataclass
class Host:
    """The host as the build user sees it, recorded before the hostile build."""

    rb: Harness
    token: str = field(default_factory=lambda: f"CANARY-{uuid.uuid4().hex}")
    mark: str = field(default_factory=lambda: f"rbsec{uuid.uuid4().hex[:12]}")
    contexts: dict[Path, dict[str, tuple[int, int, int, int, str]]] = field(
        default_factory=dict
    )
    procs: list[Proc] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.canary = self.rb.workdir / "canary"
        self.canary.mkdir()
        (self.canary / "token").write_text(self.token + "\n")
        (self.canary / "Dockerfile").write_text(f"FROM scratch\nLABEL leak={self.token}\n")
        (self.canary / "sub").mkdir()
        (self.canary / "sub" / "token2").write_text(self.token + " again\n")
        self.rb._own(self.canary)
        self.rb.run("images", "-q")  # create the (empty) store: snapshots compare from here
        self.home = Path(self.rb.user.home)
        self.start_ns = time.time_ns() - 1_000_000_000  # ctime granularity slack
        self.tmp_before = set(os.listdir("/tmp"))
        self.canary_before = _tree(self.canary)
        self.home_before = _tree_shallow(self.home)

    # setting up

    def context(self, name: str, files: Mapping[str, str | bytes]) -> Path:
        ctx = self.rb.make_context(name, files)
        self.contexts[ctx] = _tree(ctx)
        return ctx

    def archive(self, name: str, layers: Sequence[bytes]) -> tuple[Path, list[str]]:
        path = self.rb.workdir / name
        digests = oci_archive(path, layers)
        os.chmod(path, 0o644)
        return path, digests

    def build(self, ctx: Path, dockerfile: str | None = None, *args: str) -> Proc:
        """``rootbuild build -q`` (Dockerfile from stdin when given), not checked."""
        argv = ["build", "-q", *args]
        if dockerfile is not None:
            argv += ["-f", "-"]
        proc = self.rb.run(
            *argv, str(ctx), check=False,
            input=dockerfile.encode() if dockerfile is not None else None,
        )
        self.procs.append(proc)
        assert "Traceback" not in proc.stderr, proc.stderr
        return proc

    def build_ok(self, ctx: Path, dockerfile: str | None = None, *args: str) -> Proc:
        proc = self.build(ctx, dockerfile, *args)
        assert proc.returncode == 0, f"build failed:\n{proc.stderr}"
        return proc

    # checking

    def verify(self, outputs: Iterable[Path] = ()) -> None:
        assert _tree(self.canary) == self.canary_before, "the canary directory changed"
        for ctx, before in self.contexts.items():
            assert _tree(ctx) == before, f"the context {ctx} changed"
        uid = self.rb.user.uid
        new_tmp = []
        for name in set(os.listdir("/tmp")) - self.tmp_before:
            try:
                owner = os.lstat(f"/tmp/{name}").st_uid
            except FileNotFoundError:
                continue
            # Other sessions may share /tmp: flag the test's own names, and names the
            # builder (Python's tempfile, rootbuild's prefixes) would make as the user.
            if self.mark in name or (owner == uid and _BUILDER_TMP.fullmatch(name)):
                new_tmp.append(name)
        assert not new_tmp, f"stray files in /tmp: {new_tmp}"
        home_now = _tree_shallow(self.home)
        assert home_now == self.home_before, (
            f"$HOME changed: {sorted(set(home_now) ^ set(self.home_before))}"
        )
        token = self.token.encode()
        for proc in self.procs:
            assert self.token not in proc.stdout + proc.stderr, "canary token in the build log"
        leaks = [p for p in _files(self.rb.store) if _holds(p, token)]
        for out in outputs:
            leaks += [p for p in _files(out) if _holds(p, token)]
        assert not leaks, f"canary token found in {leaks}"


def _tree_shallow(home: Path) -> dict[str, tuple[int, int, int, int, str]]:
    """$HOME to three levels (enough for ~/.local/share/x, ~/.cache/x); big homes are
    common when the tests run as a developer."""
    out: dict[str, tuple[int, int, int, int, str]] = {}
    todo = [(home, 0)]
    while todo:
        path, level = todo.pop()
        try:
            names = os.listdir(path)
        except OSError:
            continue
        for name in names:
            child = path / name
            try:
                st = child.lstat()
            except OSError:
                continue
            size = 0 if stat.S_ISDIR(st.st_mode) else st.st_size
            out[str(child)] = (stat.S_IFMT(st.st_mode), st.st_mode, size, st.st_mtime_ns, "")
            if stat.S_ISDIR(st.st_mode) and level + 1 < 3:
                todo.append((child, level + 1))
    return out


def _files(root: Path) -> Iterator[Path]:
    if root.is_file():
        yield root
        return
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            path = Path(dirpath, name)
            if path.is_file() and not path.is_symlink():
                yield path


def _holds(path: Path, token: bytes) -> bool:
    """Whether ``path`` (a blob, an archive of blobs, any file) contains ``token``."""
    try:
        data = path.read_bytes()
    except OSError:
        return False
    if any(token in d for d in _decoded(data)):
        return True
    if data[257:262] == b"ustar":  # an exported archive: look inside every member
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            for info in tar:
                f = tar.extractfile(info) if info.isreg() else None
                if f is not None and any(token in d for d in _decoded(f.read())):
                    return True
    return False


def assert_clean_error(proc: Proc, pattern: str = r".+") -> str:
    """A failed build with one ``rootbuild:`` line on stderr matching ``pattern``."""
    assert proc.returncode != 0, f"hostile build succeeded:\n{proc.stderr}"
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, f"expected one error line:\n{proc.stderr}"
    assert re.fullmatch(rf"rootbuild: {pattern}", lines[0]), lines[0]
    return lines[0]


def store_added(before: Mapping[str, object], after: Mapping[str, object]) -> set[str]:
    changed = {k for k in set(before) & set(after) if before[k] != after[k]}
    removed = set(before) - set(after)
    assert not changed and not removed, f"store entries changed {changed} / removed {removed}"
    return set(after) - set(before)


def assert_only_blobs_added(
    before: Mapping[str, object], after: Mapping[str, object], digests: Iterable[str]
) -> None:
    """A failed build may keep the verified blobs of a base image it imported (as a pull
    would); nothing else: no extracted tree, no tag, no staging leftovers."""
    allowed = {f"blobs/sha256/{d[7:]}" for d in digests} | {"blobs", "blobs/sha256"}
    extra = store_added(before, after) - allowed
    assert not extra, f"a failed build left {sorted(extra)} in the store"


@pytest.fixture
def host(rb: Harness) -> Host:
    return Host(rb)


# -- build context -------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["absolute", "relative"])
def test_context_symlink_to_outside_file(rb: Harness, host: Host, how: str) -> None:
    target = str(host.canary / "token") if how == "absolute" else "../canary/token"
    ctx = host.context("ctx", {"link": f"symlink:{target}", "ok.txt": "fine\n"})
    for dockerfile in (
        "FROM scratch\nCOPY link /x\n",
        "FROM scratch\nCOPY ok.txt link /d/\n",
        "FROM scratch\nADD link /x\n",
    ):
        assert_clean_error(host.build(ctx, dockerfile), r'Dockerfile:2: .*"link".*')
    # Copying the directory keeps the link as a link: its target is never read.
    out = rb.workdir / "out.tar"
    host.build_ok(ctx, "FROM scratch\nCOPY . /c/\n", "--output", f"oci-archive:{out}")
    link = output_layers(out)[-1].members["c/link"]
    assert link.issym() and link.linkname == target
    host.verify([out])


@pytest.mark.parametrize("how", ["absolute", "relative"])
def test_context_symlinked_dir_outside(rb: Harness, host: Host, how: str) -> None:
    target = str(host.canary) if how == "absolute" else "../canary"
    ctx = host.context("ctx", {"d": f"symlink:{target}", "in/ok": "ok\n"})
    for source in ("d", "d/", "d/token", "d/.", "d/sub/token2", "in/../d/token"):
        proc = host.build(ctx, f"FROM scratch\nCOPY {source} /x/\n")
        assert_clean_error(proc, r"Dockerfile:2: .*(outside the build context|not found).*")
    host.verify()


def test_context_glob_through_outside_symlink(rb: Harness, host: Host) -> None:
    ctx = host.context("ctx", {
        "d1/token": "inside\n",
        "d2": f"symlink:{host.canary}",
        "d3": "symlink:../canary",
        "l": f"symlink:{host.canary}/token",
    })
    out = rb.workdir / "out"
    for n, source in enumerate(("*/token", "d*", "d?/sub/*", "?", "[l]")):
        dest = out / str(n)
        proc = host.build(ctx, f"FROM scratch\nCOPY {source} /x/\n", "--output", f"dir:{dest}")
        if proc.returncode != 0:
            assert_clean_error(proc, r"Dockerfile:2: .*")
    host.verify([out])


def test_dockerignore_bypass_attempts(rb: Harness, host: Host) -> None:
    secret = f"IGNORED-{uuid.uuid4().hex}"
    ctx = host.context("ctx", {
        ".dockerignore": "secret\nsecrets/\n**/*.key\n",
        "secret": secret,
        "secrets/inner": secret,
        "sub/deep.key": secret,
        "sub/keep": "keep\n",
        "alias": "symlink:secret",
        "dotalias": "symlink:./sub/../secret",
        "selfdir": "symlink:.",
        "absalias": "symlink:/secret",
    })
    out = rb.workdir / "all.tar"
    host.build_ok(ctx, "FROM scratch\nCOPY . /all/\n", "--output", f"oci-archive:{out}")
    names = all_members(output_layers(out))
    assert "all/sub/keep" in names
    assert not {"all/secret", "all/secrets", "all/secrets/inner", "all/sub/deep.key"} & names
    for source in (
        "secret", "./secret", "/secret", "sub/../secret", "secre*", "s[e]cret", "sub/../secr?t",
        "alias", "dotalias", "selfdir/secret", "selfdir/selfdir/secret", "secrets",
        "secrets/inner", "secrets/../secret", "sub/deep.key", "sub/*.key", "absalias",
    ):
        proc = host.build(ctx, f"FROM scratch\nCOPY {source} /x\n")
        assert_clean_error(proc, r"Dockerfile:2: .*(not found|excluded|outside).*")
    host.verify([out])
    for path in [*_files(rb.store), out]:
        assert not _holds(path, secret.encode()), f"ignored file's content in {path}"


@pytest.mark.parametrize("how", ["absolute", "relative"])
def test_symlinked_dockerfile_outside_context(rb: Harness, host: Host, how: str) -> None:
    target = str(host.canary / "Dockerfile") if how == "absolute" else "../canary/Dockerfile"
    ctx = host.context("ctx", {"Dockerfile": f"symlink:{target}"})
    assert_clean_error(host.build(ctx), r".*Dockerfile.*outside.*")
    # Containerfile is the fallback name: the same rule applies.
    ctx2 = host.context("ctx2", {"Containerfile": f"symlink:{target}"})
    assert_clean_error(host.build(ctx2), r".*Containerfile.*outside.*")
    host.verify()


def test_symlinked_dockerignore_outside_context(rb: Harness, host: Host) -> None:
    ctx = host.context("ctx", {
        "Dockerfile": "FROM scratch\nCOPY . /c/\n",
        ".dockerignore": f"symlink:{host.canary}/token",
        "f": "f\n",
    })
    out = rb.workdir / "out.tar"
    proc = host.build(ctx, None, "--output", f"oci-archive:{out}")
    if proc.returncode != 0:
        assert_clean_error(proc, r".*dockerignore.*")
    host.verify([out] if out.exists() else [])


def _linky_base(host: Host) -> None:
    """A stored image ``linky`` with in-image links to its own root: /a -> /, /w -> /,
    /up -> ../../../../.. and /t -> /tmp (made by a previous build)."""
    ctx = host.context("linkctx", {
        "root/a": "symlink:/",
        "root/w": "symlink:/",
        "root/up": "symlink:../../../../..",
        "root/t": "symlink:/tmp",
        "root/tmp/.keep": "",
    })
    host.build_ok(ctx, "FROM scratch\nCOPY root/ /\n", "-t", "linky")


def test_copy_destination_through_in_image_symlink(rb: Harness, host: Host) -> None:
    _linky_base(host)
    m = host.mark
    ctx = host.context("ctx", {"x": "payload\n"})
    out, out_dir = rb.workdir / "out.tar", rb.workdir / "outdir"
    host.build_ok(
        ctx,
        f"FROM linky\nCOPY x /a/tmp/x-{m}\nCOPY x /up/tmp/up-{m}\nCOPY x /t/t-{m}\n"
        f"COPY x /a/a/a/tmp/aaa-{m}\n",
        "--output", f"oci-archive:{out}", "--output", f"dir:{out_dir}",
    )
    layers = output_layers(out)
    new = set().union(*(set(layer.members) for layer in layers[1:]))
    for name in (f"tmp/x-{m}", f"tmp/up-{m}", f"tmp/t-{m}", f"tmp/aaa-{m}"):
        assert name in new, f"{name} not in the new layers: {sorted(new)}"
    assert not {n for n in new if n.startswith(("a/", "up/", "t/"))}, sorted(new)
    assert (out_dir / "tmp" / f"x-{m}").read_text() == "payload\n"
    assert os.readlink(out_dir / "a") == "/"
    host.verify([out, out_dir])


def test_workdir_through_in_image_symlink(rb: Harness, host: Host) -> None:
    _linky_base(host)
    m = host.mark
    ctx = host.context("ctx", {"x": "payload\n"})
    out = rb.workdir / "out.tar"
    host.build_ok(
        ctx,
        f"FROM linky\nWORKDIR /w/tmp/wd-{m}\nCOPY x rel-{m}\nWORKDIR /t\nCOPY x t-{m}\n"
        f"WORKDIR /up\nCOPY x up-{m}\n",
        "--output", f"oci-archive:{out}",
    )
    new = set().union(*(set(layer.members) for layer in output_layers(out)[1:]))
    for name in (f"tmp/wd-{m}", f"tmp/wd-{m}/rel-{m}", f"tmp/t-{m}", f"up-{m}"):
        assert name in new, f"{name} not in the new layers: {sorted(new)}"
    host.verify([out])


def test_context_symlinks_to_proc_self(rb: Harness, host: Host) -> None:
    rel_canary = str(host.canary).lstrip("/")
    ctx = host.context("ctx", {
        "fd": "symlink:/proc/self/fd",
        "f3": "symlink:/proc/self/fd/3",
        "root": "symlink:/proc/self/root",
        "cwd": "symlink:/proc/self/cwd",
        "env": "symlink:/proc/self/environ",
        "ok": "ok\n",
    })
    for source in ("fd/0", "fd/3", "fd/4", "f3", f"root/{rel_canary}/token", "cwd/canary/token",
                   "env", "root/etc/passwd"):
        proc = host.build(ctx, f"FROM scratch\nCOPY {source} /x\n")
        assert_clean_error(proc, r"Dockerfile:2: .*(outside the build context|not found).*")
    out = rb.workdir / "out.tar"
    host.build_ok(ctx, "FROM scratch\nCOPY . /c/\n", "--output", f"oci-archive:{out}")
    members = output_layers(out)[-1].members
    assert members["c/fd"].issym() and members["c/fd"].linkname == "/proc/self/fd"
    host.verify([out])


def test_context_fifo_does_not_hang(rb: Harness, host: Host) -> None:
    """A FIFO in the context is neither opened for reading (it would block) nor copied as
    a file: a clear error or a skip, promptly."""
    ctx = host.context("ctx", {"ok": "ok\n"})
    os.mkfifo(ctx / "pipe")
    rb._own(ctx)
    host.contexts[ctx] = _tree(ctx)
    for dockerfile in ("FROM scratch\nCOPY pipe /p\n", "FROM scratch\nCOPY . /c/\n"):
        proc = host.rb.run("build", "-q", "-f", "-", str(ctx), check=False,
                           input=dockerfile.encode(), timeout=60)
        host.procs.append(proc)
        if proc.returncode != 0:
            assert_clean_error(proc, r"Dockerfile:2: .*pipe.*")
    host.verify()


def test_host_guard_notices_a_leak(rb: Harness, host: Host) -> None:
    """The guard is not vacuous: the token copied on purpose is found in store and output,
    and a file written into the canary is noticed."""
    ctx = host.context("ctx", {"t": host.token})
    out = rb.workdir / "out.tar"
    host.build_ok(ctx, "FROM scratch\nCOPY t /t\n", "--output", f"oci-archive:{out}")
    with pytest.raises(AssertionError, match="canary token found"):
        host.verify([out])
    (host.canary / "new").write_text("x")
    with pytest.raises(AssertionError, match="canary directory changed"):
        host.verify()


# -- layer extraction ----------------------------------------------------------------------------


def _malicious_layers(host: Host) -> dict[str, list[Member]]:
    m, canary = host.mark, str(host.canary)
    up = "../" * 12
    return {
        "dotdot": [m_file(f"{up}tmp/slip-{m}", b"x")],
        "dotdot-inner": [m_dir("a"), m_file(f"a/../../slip-{m}", b"x")],
        "symlink-root-then-write": [m_sym("a", "/"), m_file(f"a/tmp/pwned-{m}", b"x")],
        "symlink-up-then-write": [m_sym("a", up.rstrip("/")), m_file(f"a/tmp/pwned-{m}", b"x")],
        "symlink-canary-then-write": [m_sym("a", canary), m_file(f"a/pwned-{m}", b"x")],
        "symlink-then-mkdir": [m_sym("a", "/tmp"), m_dir(f"a/d-{m}")],
        "symlink-then-symlink": [m_sym("a", "/tmp"), m_sym(f"a/l-{m}", "/etc/passwd")],
        "symlink-then-hardlink": [m_sym("a", canary), m_hard(f"x-{m}", "a/token")],
        "nested-symlink-then-write": [
            m_dir("d"), m_sym("d/b", "../.."), m_file(f"d/b/tmp/pwned-{m}", b"x"),
        ],
        "hardlink-etc-passwd": [m_hard("p", "/etc/passwd")],
        "hardlink-canary": [m_hard("c", f"{canary}/token")],
        "hardlink-dotdot": [m_hard("c", f"{up}{canary.lstrip('/')}/token")],
        "whiteout-as-dir": [m_file(".wh.x/y", b"")],
        "whiteout-dotdot": [m_dir("d"), m_file("d/.wh..", b"")],
        "root-as-file": [m_file("./", b"x")],
    }


MALICIOUS = [
    "dotdot", "dotdot-inner", "symlink-root-then-write", "symlink-up-then-write",
    "symlink-canary-then-write", "symlink-then-mkdir", "symlink-then-symlink",
    "symlink-then-hardlink", "nested-symlink-then-write", "hardlink-etc-passwd",
    "hardlink-canary", "hardlink-dotdot", "whiteout-as-dir", "whiteout-dotdot", "root-as-file",
]


@pytest.mark.parametrize("case", MALICIOUS)
def test_malicious_base_layer(rb: Harness, host: Host, case: str) -> None:
    layer = make_layer(_malicious_layers(host)[case])
    base, digests = host.archive("base.tar", [layer])
    ctx = host.context("ctx", {"x": "x\n"})
    before = rb.store_snapshot()
    out_dir = rb.workdir / "out"
    proc = host.build(
        ctx, f"FROM oci-archive:{base}\nCOPY x /x\n", "--output", f"dir:{out_dir}"
    )
    host.verify([out_dir] if out_dir.exists() else [])
    assert proc.returncode != 0, f"malicious layer {case} accepted"
    assert not out_dir.exists(), "a failed build wrote its dir: output"
    assert_only_blobs_added(before, rb.store_snapshot(), digests)
    assert_clean_error(proc, r"(Dockerfile:\d+: )?.*(layer|extract).*")


@pytest.mark.parametrize("case", ["dotdot", "symlink-root-then-write", "hardlink-canary"])
def test_malicious_layer_via_copy_from(rb: Harness, host: Host, case: str) -> None:
    layer = make_layer(_malicious_layers(host)[case])
    base, digests = host.archive("base.tar", [layer])
    ctx = host.context("ctx", {"x": "x\n"})
    before = rb.store_snapshot()
    proc = host.build(ctx, f"FROM scratch\nCOPY --from=oci-archive:{base} / /\n")
    host.verify()
    assert proc.returncode != 0, f"malicious layer {case} accepted"
    assert_only_blobs_added(before, rb.store_snapshot(), digests)
    assert_clean_error(proc, r"(Dockerfile:2: )?.*(layer|extract).*")


def test_absolute_names_are_contained(rb: Harness, host: Host) -> None:
    m = host.mark
    layer = make_layer([
        m_file(f"/tmp/abs-{m}", b"abs\n"),
        m_file(f"/{host.canary}/abs-{m}".replace("//", "/"), b"abs\n"),
        m_file(f"./tmp/dot-{m}", b"dot\n"),
    ])
    base, _ = host.archive("base.tar", [layer])
    ctx = host.context("ctx", {"x": "x\n"})
    out_dir = rb.workdir / "out"
    host.build_ok(ctx, f"FROM oci-archive:{base}\nCOPY x /x\n", "--output", f"dir:{out_dir}")
    assert (out_dir / "tmp" / f"abs-{m}").read_bytes() == b"abs\n"
    assert (out_dir / str(host.canary).lstrip("/") / f"abs-{m}").is_file()
    host.verify([out_dir])


def test_upper_layer_dir_over_lower_symlink_is_contained(rb: Harness, host: Host) -> None:
    """A symlink in one layer and a path through it in the next: each layer is extracted on
    its own, so the write lands inside the image whatever the merge decides."""
    m = host.mark
    lower = make_layer([m_sym("a", "/"), m_sym("t", "/tmp"), m_sym("c", str(host.canary))])
    upper = make_layer([
        m_file(f"a/tmp/pwned-{m}", b"x"), m_file(f"t/t-{m}", b"x"), m_file(f"c/c-{m}", b"x"),
    ])
    base, _ = host.archive("base.tar", [lower, upper])
    ctx = host.context("ctx", {"x": "x\n"})
    out_dir, out = rb.workdir / "out", rb.workdir / "out.tar"
    proc = host.build(
        ctx, f"FROM oci-archive:{base}\nCOPY x /x\n",
        "--output", f"dir:{out_dir}", "--output", f"oci-archive:{out}",
    )
    host.verify([p for p in (out_dir, out) if p.exists()])
    if proc.returncode != 0:
        assert_clean_error(proc, r"Dockerfile:\d+: .*")


def _special_base(host: Host) -> tuple[Path, bytes]:
    note = f"note-{host.mark}"
    layer = make_layer([
        m_dir("dev"), m_dev("dev/null2", 1, 3), m_dev("dev/blk", 7, 0, tarfile.BLKTYPE),
        m_dir("run"), m_fifo("run/fifo"),
        m_dir("usr"), m_dir("usr/bin"),
        m_file("usr/bin/suid", b"#!/bin/sh\n", 0o4755),
        m_file("usr/bin/sgid", b"#!/bin/sh\n", 0o2755, uid=0, gid=42),
        m_file("usr/bin/xattr", b"cap\n", 0o755,
               pax_headers={"SCHILY.xattr.user.note": note}),
        m_dir("tmp", 0o1777),
        m_file("home/app/owned", b"o\n", 0o600, uid=1234, gid=4321),
    ])
    base, _ = host.archive("special.tar", [layer])
    return base, layer


def test_special_files_recorded_and_reexported(rb: Harness, host: Host) -> None:
    base, _ = _special_base(host)
    ctx = host.context("ctx", {"x": "x\n"})
    out, out_dir = rb.workdir / "out.tar", rb.workdir / "out"
    proc = host.build_ok(
        ctx, f"FROM oci-archive:{base}\nCOPY x /x\n",
        "--output", f"oci-archive:{out}", "--output", f"dir:{out_dir}",
    )
    layers = output_layers(out)
    base_members = layers[0].members
    assert base_members["dev/null2"].ischr()
    assert (base_members["dev/null2"].devmajor, base_members["dev/null2"].devminor) == (1, 3)
    assert base_members["dev/blk"].isblk() and base_members["run/fifo"].isfifo()
    assert base_members["usr/bin/suid"].mode & 0o7777 == 0o4755
    assert base_members["usr/bin/sgid"].mode & 0o7777 == 0o2755
    assert base_members["tmp"].mode & 0o7777 == 0o1777
    assert base_members["usr/bin/xattr"].pax_headers.get("SCHILY.xattr.user.note") == (
        f"note-{host.mark}"
    )
    assert (base_members["home/app/owned"].uid, base_members["home/app/owned"].gid) == (
        1234, 4321
    )
    # dir: output as an unprivileged user: no device/FIFO nodes, no setuid bits on disk.
    for name in ("dev/null2", "dev/blk", "run/fifo"):
        assert not os.path.lexists(out_dir / name), name
    assert stat.S_IMODE(os.lstat(out_dir / "usr/bin/suid").st_mode) & 0o6000 == 0
    assert stat.S_IMODE(os.lstat(out_dir / "usr/bin/sgid").st_mode) & 0o6000 == 0
    assert "WARNING" in proc.stderr or proc.stderr == ""
    host.verify([out, out_dir])


def _copy_from_special(rb: Harness, host: Host, what: str) -> OutLayer:
    base, _ = _special_base(host)
    ctx = host.context("ctx", {"x": "x\n"})
    out = rb.workdir / "out.tar"
    host.build_ok(
        ctx, f"FROM oci-archive:{base}\nFROM scratch\nCOPY --from=0 {what} /c/\n",
        "--output", f"oci-archive:{out}",
    )
    host.verify([out])
    return output_layers(out)[-1]


def test_copy_from_keeps_setuid_and_owner_bits(rb: Harness, host: Host) -> None:
    """BuildKit's copy (tonistiigi/fsutil copy.go, copyFileInfo) keeps the full mode."""
    top = _copy_from_special(rb, host, "/usr/bin/")
    assert top.members["c/suid"].mode & 0o7777 == 0o4755
    assert top.members["c/sgid"].mode & 0o7777 == 0o2755


def test_copy_from_keeps_owners(rb: Harness, host: Host) -> None:
    """Without --chown, COPY --from keeps the source's owners (moby/moby#37123 and #38599,
    moby/buildkit#1448; buildah's conformance tests do what docker build does); only
    context files become 0:0."""
    top = _copy_from_special(rb, host, "/home/app/owned")
    owned = top.members["c/owned"]
    assert (owned.uid, owned.gid) == (1234, 4321)
    assert owned.mode & 0o7777 == 0o600


def test_copy_from_keeps_xattrs(rb: Harness, host: Host) -> None:
    """BuildKit's copy copies extended attributes (fsutil copy.go, copyXAttrs): file
    capabilities (security.capability) depend on it."""
    top = _copy_from_special(rb, host, "/usr/bin/xattr")
    headers = top.members["c/xattr"].pax_headers
    assert headers.get("SCHILY.xattr.user.note") == f"note-{host.mark}", headers


def test_copy_from_keeps_device_nodes(rb: Harness, host: Host) -> None:
    """BuildKit's copy recreates device nodes (fsutil copy.go, copyDevice)."""
    top = _copy_from_special(rb, host, "/dev/")
    null2 = top.members.get("c/null2")
    assert null2 is not None and null2.ischr(), sorted(top.members)
    assert (null2.devmajor, null2.devminor) == (1, 3)


def test_legitimate_absolute_symlinks_keep_working(rb: Harness, host: Host) -> None:
    layer = make_layer([
        m_dir("usr"), m_dir("usr/bin"), m_dir("usr/lib"),
        m_sym("bin", "usr/bin"), m_sym("lib", "/usr/lib"),
        m_file("usr/bin/x", b"old\n", 0o755),
        m_dir("etc"), m_dir("etc/alternatives"), m_sym("etc/alternatives/x", "/usr/bin/x"),
    ])
    base, _ = host.archive("base.tar", [layer])
    ctx = host.context("ctx", {"tool": "tool\n", "newx": "new\n", "lib.so": "so\n"})
    out, out_dir = rb.workdir / "out.tar", rb.workdir / "out"
    host.build_ok(
        ctx,
        f"FROM oci-archive:{base} AS base\nFROM base\nCOPY tool /bin/\n"
        "COPY newx /etc/alternatives/x\nCOPY lib.so /lib/\nCOPY --from=base /bin/x /fromlink\n",
        "--output", f"oci-archive:{out}", "--output", f"dir:{out_dir}",
    )
    layers = output_layers(out)
    new_names = set().union(*(set(layer.members) for layer in layers[1:]))
    new_data: dict[str, bytes] = {}
    for layer_ in layers[1:]:
        new_data.update(layer_.data)
    assert new_data.get("usr/bin/tool") == b"tool\n", sorted(new_names)
    assert new_data.get("usr/bin/x") == b"new\n", sorted(new_names)
    assert new_data.get("usr/lib/lib.so") == b"so\n", sorted(new_names)
    assert new_data.get("fromlink") == b"old\n", sorted(new_names)
    assert "bin/tool" not in new_names and "lib/lib.so" not in new_names
    assert "etc/alternatives/x" not in new_names  # the link itself is untouched
    assert os.readlink(out_dir / "bin") == "usr/bin"
    assert (out_dir / "usr/bin/tool").read_text() == "tool\n"
    assert os.readlink(out_dir / "etc/alternatives/x") == "/usr/bin/x"
    assert (out_dir / "usr/bin/x").read_text() == "new\n"
    host.verify([out, out_dir])


# -- ADD of a local archive -----------------------------------------------------------------------


ADD_CASES = [
    "dotdot", "symlink-root-then-write", "symlink-up-then-write", "symlink-canary-then-write",
    "nested-symlink-then-write", "hardlink-etc-passwd", "hardlink-canary", "hardlink-dotdot",
    "symlink-then-hardlink",
]


@pytest.mark.parametrize(
    ("case", "compress"),
    [(case, False) for case in ADD_CASES]
    + [(case, True) for case in ("dotdot", "symlink-root-then-write", "hardlink-canary")],
)
def test_add_malicious_archive(rb: Harness, host: Host, case: str, compress: bool) -> None:
    archive = make_layer(_malicious_layers(host)[case])
    name = "evil.tgz" if compress else "evil.tar"
    ctx = host.context("ctx", {name: gzip.compress(archive) if compress else archive})
    before = rb.store_snapshot()
    out_dir = rb.workdir / "out"
    proc = host.build(ctx, f"FROM scratch\nADD {name} /dst/\n", "--output", f"dir:{out_dir}")
    host.verify([out_dir] if out_dir.exists() else [])
    if proc.returncode == 0:  # contained: everything under /dst, nothing outside it
        for path in _files(out_dir):
            assert path.relative_to(out_dir).parts[0] == "dst", path
        return
    assert rb.store_snapshot() == before, "a failed ADD changed the store"
    assert_clean_error(proc, r"(Dockerfile:2: )?.*")


def test_rejected_layer_error_names_the_dockerfile_line(rb: Harness, host: Host) -> None:
    """errors.py: a message carries the Dockerfile location when there is one. A base layer
    refused while a COPY needs it, a COPY --from image and an ADD archive all have one."""
    layer = make_layer(_malicious_layers(host)["dotdot"])
    base, _ = host.archive("base.tar", [layer])
    ctx = host.context("ctx", {"x": "x\n", "evil.tar": layer})
    for dockerfile, line in (
        (f"FROM oci-archive:{base}\nCOPY x /x\n", r"[12]"),
        (f"FROM scratch\nCOPY x /x\nCOPY --from=oci-archive:{base} / /\n", "3"),
        ("FROM scratch\nCOPY x /x\nADD evil.tar /dst/\n", "3"),
    ):
        proc = host.build(ctx, dockerfile)
        assert_clean_error(proc, rf"Dockerfile:{line}: extract layer .*escapes the layer root")
    host.verify()


def test_add_archive_with_absolute_names_is_contained(rb: Harness, host: Host) -> None:
    m = host.mark
    archive = make_layer([m_file(f"/tmp/abs-{m}", b"abs\n"), m_file(f"/etc/e-{m}", b"e\n")])
    ctx = host.context("ctx", {"a.tar": archive})
    out = rb.workdir / "out.tar"
    host.build_ok(ctx, "FROM scratch\nADD a.tar /dst/\n", "--output", f"oci-archive:{out}")
    names = output_layers(out)[-1].members
    assert f"dst/tmp/abs-{m}" in names and f"dst/etc/e-{m}" in names, sorted(names)
    host.verify([out])
