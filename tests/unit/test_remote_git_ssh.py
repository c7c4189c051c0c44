"""``ADD git@.../ssh://...`` and ``--ssh default``: the environment and ssh command git runs
with, with and without the build's agent; the fetcher reads the socket when git runs; the
build hands its agents' sockets to the remote sources; ssh's reason and the hint."""

from __future__ import annotations

import os
import pwd
import shlex
import socket
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from rootbuild.engine.build import build
from rootbuild.engine.options import BuildOptions
from rootbuild.engine.remote_git import GitBinaryFetcher, _reason, git_env, ssh_command
from rootbuild.engine.remote_ref import GitSource, parse_remote
from rootbuild.engine.remote_source import Checkout, RemoteSources
from rootbuild.engine.seams import Seams
from rootbuild.engine.secrets import SshSource
from rootbuild.errors import StepError
from rootbuild.image.store import Store
from rootbuild.platform import Platform
from rootbuild.registry.client import TransportOptions
from rootbuild.testing.fakes import (
    FakeBaseImages,
    FakeExecutor,
    FakeExporter,
    RecordingProgress,
)

KNOWN = Path(pwd.getpwuid(os.getuid()).pw_dir) / ".ssh" / "known_hosts"
COMMON = ["ssh", "-F", "/dev/null", "-o", "BatchMode=yes", "-o", "IdentityFile=none"]
STRICT = ["-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={KNOWN}"]


def _options(command: str) -> dict[str, str]:
    words = shlex.split(command)
    assert words[:3] == ["ssh", "-F", "/dev/null"]
    pairs = words[3:]
    assert all(flag == "-o" for flag in pairs[::2]), words
    return dict(value.split("=", 1) for value in pairs[1::2])


def test_without_an_agent_ssh_gets_no_key_and_no_agent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SSH_AUTH_SOCK", "/tmp/users-own-agent.sock")
    env = git_env(tmp_path, TransportOptions(), "ssh://git@h:2222/r.git")
    assert "SSH_AUTH_SOCK" not in env
    assert shlex.split(env["GIT_SSH_COMMAND"]) == [
        *COMMON, "-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none", *STRICT]
    assert env["GIT_SSH_COMMAND"] == ssh_command()


def test_with_the_agent_ssh_uses_its_socket_and_still_no_key_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SSH_AUTH_SOCK", "/tmp/users-own-agent.sock")
    sock = tmp_path / "odd %h ${HOME} dir" / "agent.sock"
    env = git_env(tmp_path, TransportOptions(), "git@h:o/r.git", sock)
    assert env["SSH_AUTH_SOCK"] == str(sock)  # taken as is: ssh expands no token in it
    assert shlex.split(env["GIT_SSH_COMMAND"]) == [
        *COMMON, "-o", "IdentitiesOnly=no", "-o", "IdentityAgent=SSH_AUTH_SOCK",
        "-o", "ForwardAgent=no", *STRICT]
    options = _options(env["GIT_SSH_COMMAND"])
    assert options["IdentityFile"] == "none"  # not even ~/.ssh/id_*
    assert options["StrictHostKeyChecking"] == "yes" and options["BatchMode"] == "yes"
    assert str(sock) not in env["GIT_SSH_COMMAND"]
    # everything but the agent is as without it
    plain = git_env(tmp_path, TransportOptions(), "git@h:o/r.git")
    assert {k: v for k, v in env.items() if k not in ("SSH_AUTH_SOCK", "GIT_SSH_COMMAND")} \
        == {k: v for k, v in plain.items() if k != "GIT_SSH_COMMAND"}


@pytest.fixture
def fake_git(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A ``git`` on PATH that records its environment and lists one ref."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    record = tmp_path / "env.txt"
    script = bin_dir / "git"
    script.write_text(
        "#!/bin/sh\n"
        f"{{ echo \"SOCK=${{SSH_AUTH_SOCK-unset}}\"; echo \"CMD=$GIT_SSH_COMMAND\"; }} >> "
        f"{shlex.quote(str(record))}\n"
        "printf '%s\\trefs/heads/main\\n' " + "a" * 40 + "\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}")
    yield record


def test_the_fetcher_reads_the_socket_when_git_runs(fake_git: Path) -> None:
    sockets: dict[str, Path] = {}
    fetcher = GitBinaryFetcher(TransportOptions(), agent=lambda: sockets.get("default"))
    source = GitSource("ssh://git@h/r.git", "main", "")
    assert trio.run(fetcher.resolve, source) == "a" * 40
    sockets["default"] = Path("/run/agent.sock")  # the build started its agents later
    assert trio.run(fetcher.resolve, source) == "a" * 40
    lines = fake_git.read_text().splitlines()
    assert lines[0] == "SOCK=unset" and "IdentityAgent=none" in lines[1]
    assert lines[2] == "SOCK=/run/agent.sock"
    assert "IdentityAgent=SSH_AUTH_SOCK" in lines[3]


def test_remote_sources_forward_only_the_default_id(fake_git: Path) -> None:
    remote = RemoteSources()
    fetcher = remote._git()  # made before the agents run, as in a build
    assert remote.ssh_agent() is None
    remote.forward_ssh({"deploy": Path("/run/deploy.sock")})
    assert remote.ssh_agent() is None  # BuildKit's Git source mounts the id "default"
    remote.forward_ssh({"default": Path("/run/default.sock"),
                        "deploy": Path("/run/deploy.sock")})
    trio.run(fetcher.resolve, GitSource("git@h:o/r.git", "main", ""))
    assert fake_git.read_text().splitlines()[0] == "SOCK=/run/default.sock"


DENIED = (b"git@h: Permission denied (publickey).\r\n"
          b"fatal: Could not read from remote repository.\n\n"
          b"Please make sure you have the correct access rights\nand the repository exists.\n")


def test_ssh_failures_give_sshs_reason_and_hint_at_ssh_default() -> None:
    source = parse_remote("git@h:o/r.git#main")
    assert isinstance(source, GitSource)
    assert _reason(DENIED, source) == (
        "git@h: Permission denied (publickey) (no ssh agent for the build: forward one "
        "with --ssh default)")
    assert _reason(DENIED, source, Path("/run/agent.sock")) == \
        "git@h: Permission denied (publickey)"
    unknown = DENIED.replace(b"git@h: Permission denied (publickey).",
                             b"Host key verification failed.")
    assert _reason(unknown, source) == \
        "Host key verification failed (the host's key must be in ~/.ssh/known_hosts)"
    refused = DENIED.replace(b"git@h: Permission denied (publickey).",
                             b"ssh: connect to host h port 22: Connection refused")
    assert _reason(refused, source) == "ssh: connect to host h port 22: Connection refused"
    assert _reason(b"fatal: couldn't find remote ref nope\n", source) == \
        "couldn't find remote ref nope"


# -- the build hands its --ssh sockets to the remote sources -----------------------------------


class AgentSeeingGit:
    """A ``GitFetcher`` that records the socket the build's remote sources give when it
    runs."""

    def __init__(self) -> None:
        self.remote: RemoteSources | None = None
        self.seen: list[Path | None] = []

    async def resolve(self, source: GitSource) -> str | None:
        assert self.remote is not None
        self.seen.append(self.remote.ssh_agent())
        return "b" * 40

    async def fetch(self, source: GitSource, dest: Path, *, keep_git_dir: bool) -> Checkout:
        assert self.remote is not None
        self.seen.append(self.remote.ssh_agent())
        tree = dest / "repo"
        tree.mkdir()
        (tree / "f.txt").write_text("f\n")
        return Checkout(tree, "b" * 40, 1600000000)


@pytest.mark.parametrize("given", [True, False])
def test_the_build_forwards_its_ssh_default_socket(tmp_path: Path, given: bool) -> None:
    sock = tmp_path / "agent.sock"
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(sock))
    try:
        store = Store.open(tmp_path / "store")
        ctx = tmp_path / "ctx"
        ctx.mkdir()
        (ctx / "Dockerfile").write_text("FROM scratch\nADD git@h:o/r.git#main /src/\n")
        git = AgentSeeingGit()
        remote = RemoteSources(git=git)
        git.remote = remote
        ssh = (SshSource("default", socket=str(sock)),) if given else ()
        opts = BuildOptions(context_dir=ctx, target_platform=Platform("linux", "amd64"),
                            source_date_epoch=1700000000, ssh=ssh)
        seams = Seams(FakeExecutor(), FakeBaseImages(store), FakeExporter(),
                      lambda: "fake", remote=remote)
        trio.run(lambda: build(opts, store, RecordingProgress(), seams=seams))
    finally:
        listener.close()
    assert git.seen and set(git.seen) == {sock if given else None}


def test_a_denied_login_is_one_located_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                            ) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "git"
    script.write_text("#!/bin/sh\nprintf '%s' " + shlex.quote(DENIED.decode()) + " >&2\n"
                      "exit 128\n")
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    fetcher = GitBinaryFetcher(TransportOptions())
    with pytest.raises(StepError, match=r"^ADD: fetch git@h:o/r\.git#main: git@h: Permission "
                       r"denied \(publickey\) \(no ssh agent for the build: forward one "
                       r"with --ssh default\)$"):
        trio.run(fetcher.resolve, GitSource("git@h:o/r.git", "main", ""))
