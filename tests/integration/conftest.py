"""Integration test harness: the real `rootbuild` executable, run as an unprivileged user.

Rules:
- The builder never runs as root. When pytest runs as root (CI, `scripts/test.sh`), every
  build runs as the unprivileged user named by ``$ROOTBUILD_TEST_USER`` (created by the test
  set-up with /etc/subuid and /etc/subgid ranges) through ``setpriv``, with a clean
  environment. When pytest runs as an ordinary user, builds run as that user.
- A missing capability (user, validator, executable) FAILS the test with what is missing;
  it never skips.
- After each test: no process of the build user is left, and no mount under the test's
  directory remains.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ROOTBUILD = Path(sys.executable).parent / "rootbuild"


def _fail_missing(what: str) -> None:
    pytest.fail(f"integration prerequisite missing: {what} (run scripts/test.sh as root)")


@dataclass
class BuildUser:
    name: str
    uid: int
    gid: int
    home: str

    @property
    def is_current(self) -> bool:
        return self.uid == os.getuid()


@pytest.fixture(scope="session")
def build_user() -> BuildUser:
    if os.getuid() != 0:
        entry = pwd.getpwuid(os.getuid())
    else:
        name = os.environ.get("ROOTBUILD_TEST_USER", "rbtest")
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            _fail_missing(f"unprivileged test user {name!r}")
            raise
    if entry.pw_uid == 0:
        _fail_missing("an unprivileged user to run the builder as")
    if not ROOTBUILD.exists():
        _fail_missing(f"rootbuild executable at {ROOTBUILD}")
    return BuildUser(entry.pw_name, entry.pw_uid, entry.pw_gid, entry.pw_dir)


def require_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        _fail_missing(f"the {name} command")
        raise AssertionError
    return path


@dataclass
class Harness:
    """One test's world: a directory owned by the build user, a store inside it."""

    user: BuildUser
    workdir: Path
    store: Path = field(init=False)

    def __post_init__(self) -> None:
        self.store = self.workdir / "store"

    def _own(self, path: Path) -> None:
        if os.getuid() == 0:
            for root, dirs, files in os.walk(path):
                for name in [*dirs, *files]:
                    os.lchown(os.path.join(root, name), self.user.uid, self.user.gid)
            os.lchown(path, self.user.uid, self.user.gid)

    def make_context(self, name: str, files: Mapping[str, str | bytes]) -> Path:
        """Create a context dir; values are file contents (str or bytes); a value starting
        with "symlink:" makes a symlink to the rest."""
        ctx = self.workdir / name
        ctx.mkdir(parents=True, exist_ok=True)
        for rel, content in files.items():
            path = ctx / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, str) and content.startswith("symlink:"):
                path.symlink_to(content.removeprefix("symlink:"))
            elif isinstance(content, str):
                path.write_text(content)
            else:
                path.write_bytes(content)
        self._own(ctx)
        return ctx

    def copy_fixture(self, src: Path, name: str) -> Path:
        dest = self.workdir / name
        shutil.copytree(src, dest, symlinks=True)
        self._own(dest)
        return dest

    def command(self, argv: list[str], env: Mapping[str, str] | None = None) -> list[str]:
        base_env = {
            "HOME": self.user.home,
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "LANG": "C.UTF-8",
            "USER": self.user.name,
        }
        base_env.update(env or {})
        env_args = ["env", "-i", *(f"{k}={v}" for k, v in sorted(base_env.items()))]
        if self.user.is_current:
            return [*env_args, *argv]
        return [
            "setpriv", f"--reuid={self.user.uid}", f"--regid={self.user.gid}",
            "--init-groups", "--", *env_args, *argv,
        ]

    def run(
        self,
        *args: str,
        cwd: Path | None = None,
        input: bytes | None = None,
        check: bool = True,
        env: Mapping[str, str] | None = None,
        store: bool = True,
        timeout: float = 300,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``rootbuild ARGS`` as the build user (``--root`` added after the subcommand)."""
        argv = [str(ROOTBUILD), *args]
        if store and args:
            argv = [str(ROOTBUILD), args[0], "--root", str(self.store), *args[1:]]
        proc = subprocess.run(
            self.command(argv, env),
            cwd=cwd or self.workdir,
            input=input.decode() if input is not None else None,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and proc.returncode != 0:
            pytest.fail(
                f"rootbuild {' '.join(args)} exited {proc.returncode}\n"
                f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
            )
        return proc

    def as_user(self, argv: list[str], check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run any command (a validator) as the build user."""
        proc = subprocess.run(
            self.command(argv), cwd=self.workdir, capture_output=True, text=True, timeout=300
        )
        if check and proc.returncode != 0:
            pytest.fail(f"{argv} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
        return proc

    def store_snapshot(self) -> dict[str, tuple[int, int]]:
        """Every path in the store with (size, mtime_ns): equal snapshots = untouched store."""
        snap: dict[str, tuple[int, int]] = {}
        if not self.store.exists():
            return snap
        for root, dirs, files in os.walk(self.store):
            for name in [*dirs, *files]:
                path = os.path.join(root, name)
                st = os.lstat(path)
                size = 0 if os.path.isdir(path) else st.st_size
                snap[os.path.relpath(path, self.store)] = (size, st.st_mtime_ns if size else 0)
        return snap


def _leftover_processes(uid: int, marker: str) -> list[str]:
    """Processes of ``uid`` that belong to this test (their command line names its
    directory; other tests may run builds as the same user at the same time)."""
    out = subprocess.run(
        ["ps", "-ww", "-o", "pid=,args=", "-u", str(uid)], capture_output=True, text=True
    ).stdout
    return [line for line in out.splitlines() if marker in line]


def _harness(user: BuildUser) -> Iterator[Harness]:
    base = Path(tempfile.mkdtemp(prefix="rootbuild-it-"))
    os.chmod(base, 0o755)
    work = base / "w"
    work.mkdir()
    harness = Harness(user, work)
    harness._own(work)
    try:
        yield harness
    finally:
        mounts = [
            line for line in Path("/proc/mounts").read_text().splitlines() if str(base) in line
        ]
        leftovers = _leftover_processes(user.uid, str(base))
        shutil.rmtree(base, ignore_errors=True)
        assert not mounts, f"mounts left behind: {mounts}"
        assert not leftovers, f"processes left behind: {leftovers}"


@pytest.fixture
def rb(build_user: BuildUser) -> Iterator[Harness]:
    yield from _harness(build_user)


@pytest.fixture
def rb_nosub() -> Iterator[Harness]:
    """A build user WITHOUT an /etc/subuid range (created by scripts/test.sh as
    ``<test user>-nosub``): RUN falls back to a single id mapping."""
    if os.getuid() != 0:
        pytest.fail("this test creates its world as root: run it through scripts/test.sh")
    name = os.environ.get("ROOTBUILD_TEST_USER", "rbtest") + "-nosub"
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        _fail_missing(f"unprivileged test user {name!r} without a subuid range")
        raise
    yield from _harness(BuildUser(entry.pw_name, entry.pw_uid, entry.pw_gid, entry.pw_dir))
