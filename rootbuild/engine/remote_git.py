"""``ADD <git source>``'s fetcher: the host's ``git`` binary, never one from an image.

Rules (SECURITY.md rules 3 and 6; BuildKit's Git source):
- git runs with a clean environment: ``HOME`` a private directory, no system or global
  config (``GIT_CONFIG_NOSYSTEM``, ``GIT_CONFIG_GLOBAL=/dev/null``), no prompts
  (``GIT_TERMINAL_PROMPT=0``, ssh in batch mode), only the proxy variables passed on, TLS
  as for registries (``--tls-verify``, ``--cert-dir`` added to the system CAs); ssh uses
  no key file or ssh config of the user, only their known_hosts, strictly; hooks
  are off (``core.hooksPath=/dev/null``, an empty template), only the ``https``, ``http``,
  ``git`` and ``ssh`` transports are allowed (never ``ext::`` or ``file://``).
- The ref is fetched shallowly (``--depth=1``) into a fresh repository; a commit id the
  server will not hand out shallowly is fetched with the whole history and looked up.
  The URL is given on the command line, never stored in ``.git/config``; with
  ``--keep-git-dir`` the kept ``.git`` names ``origin`` without credentials and holds no
  ``FETCH_HEAD`` or reflog.
- ssh authenticates only through the agent the build was given as ``--ssh default``
  (Docker's reference, "Adding private Git repositories": "This Dockerfile can be built
  with docker build --ssh or buildctl build --ssh"; BuildKit's Git source mounts the ssh
  id ``default``): its socket, read when git runs (the build starts its agents after
  the fetcher is made), is ``SSH_AUTH_SOCK`` of git's environment and ssh's
  ``IdentityAgent``. Without it ssh has no agent at all (``IdentityAgent=none``): a
  Dockerfile must not make the builder use the user's keys on a host of its choosing.
  Never a key file (``IdentityFile=none``: not even ``~/.ssh/id_*``), never agent
  forwarding to the server.
- For an untrusted build (``guard``), only ``https://`` and ``http://`` remotes: their host
  is checked once (``fetch_guard``: the deny list of untrusted RUN) and curl is pinned to
  the checked address (``http.curloptResolve``), follows no redirect and uses no proxy.
  ``git://`` and ssh remotes are refused: git and ssh resolve the name themselves, and
  a connector pinning them would be one more program between the build and the host.
- A missing ref or an unreachable remote is one line with git's own reason (ssh's, when
  ssh failed); an ssh login refused without ``--ssh default`` says to give it.
"""

from __future__ import annotations

import os
import pwd
import re
import shlex
import shutil
import ssl
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import trio

from rootbuild.engine.fetch_guard import (
    DeniedDestination,
    DestinationGuard,
    git_pin,
    host_port,
    refusal,
)
from rootbuild.engine.remote_ref import GitSource, redact, strip_credentials
from rootbuild.engine.remote_source import Checkout
from rootbuild.errors import StepError
from rootbuild.registry.transport import TransportOptions

GIT_TIMEOUT = 600.0
_USERINFO = re.compile(r"://[^/@\s]+@")
_PASSED_ENV = ("PATH", "http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY",
               "NO_PROXY", "ALL_PROXY", "all_proxy")
_SAFE_CONFIG = (
    "core.hooksPath=/dev/null", "protocol.allow=never", "protocol.https.allow=always",
    "protocol.http.allow=always", "protocol.git.allow=always", "protocol.ssh.allow=always",
    "advice.detachedHead=false", "core.symlinks=true", "init.defaultBranch=main",
    "submodule.recurse=false", "core.fsmonitor=false",
)


def git_env(home: Path, transport: TransportOptions, remote: str,
            agent: Path | None = None, proxies: bool = True) -> dict[str, str]:
    """The whole environment git runs with (``home``: a private directory; ``agent``: the
    socket of ``--ssh default``, else None; ``proxies``: pass the proxy variables on)."""
    env = {k: os.environ[k] for k in _PASSED_ENV
           if k in os.environ and (proxies or k == "PATH")}
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    env |= {
        "HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config"),
        "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": "/dev/null",
        "GIT_TERMINAL_PROMPT": "0", "GIT_ASKPASS": "", "SSH_ASKPASS": "",
        "GIT_SSH_COMMAND": ssh_command(agent=agent is not None), "LC_ALL": "C",
    }
    if agent is not None:
        env["SSH_AUTH_SOCK"] = str(agent)
    if not transport.tls_verify:
        env["GIT_SSL_NO_VERIFY"] = "1"
    else:
        bundle = ca_bundle(home, transport, remote)
        if bundle is not None:
            env["GIT_SSL_CAINFO"] = str(bundle)
    return env


def ssh_command(*, agent: bool = False) -> str:
    """ssh for ``git@``/``ssh://`` sources: no user ssh config, no key files, the user's
    known_hosts checked strictly, never a prompt. ``agent``: the keys of the agent at
    ``$SSH_AUTH_SOCK`` (git's environment holds the ``--ssh default`` socket), else no
    agent at all.

    With the agent, ``IdentitiesOnly`` is off: it makes ssh use only the identities
    ``IdentityFile`` configures "even if ssh-agent(1) [...] offers more identities"
    (ssh_config(5)), and ``IdentityFile=none`` configures none, so the agent's keys
    would never be offered. No key file is read either way. The socket is named through
    the variable, not on the command line: ssh expands ``%`` and ``${}`` in an
    ``IdentityAgent`` path, never in the variable's value."""
    try:
        home = pwd.getpwuid(os.getuid()).pw_dir  # ssh's own notion of ~, not $HOME
    except KeyError:
        home = "/nonexistent"
    known = Path(home) / ".ssh" / "known_hosts"
    auth = ("-o IdentitiesOnly=no -o IdentityAgent=SSH_AUTH_SOCK -o ForwardAgent=no"
            if agent else "-o IdentitiesOnly=yes -o IdentityAgent=none")
    return (f"ssh -F /dev/null -o BatchMode=yes -o IdentityFile=none {auth} "
            f"-o StrictHostKeyChecking=yes "
            f"-o UserKnownHostsFile={shlex.quote(str(known))}")


def ca_bundle(home: Path, transport: TransportOptions, remote: str) -> Path | None:
    """``--cert-dir``'s ``*.crt`` (``DIR`` and ``DIR/<host:port>``, as for registries) added
    to the system CAs, as the file ``GIT_SSL_CAINFO`` names; None without a cert dir."""
    cert_dir = transport.cert_dir or (
        Path(os.environ["REGISTRY_CERT_DIR"]) if os.environ.get("REGISTRY_CERT_DIR") else None
    )
    if cert_dir is None or not remote.startswith("https://"):
        return None
    host = urlsplit(remote).netloc.rpartition("@")[2]
    crts = [c for d in (cert_dir, cert_dir / host) if d.is_dir() for c in sorted(d.glob("*.crt"))]
    if not crts:
        return None
    parts: list[bytes] = []
    system = ssl.get_default_verify_paths().cafile
    if system and os.path.isfile(system):
        parts.append(Path(system).read_bytes())
    try:
        parts += [c.read_bytes() for c in crts]
    except OSError as exc:
        raise StepError(f"ADD: read --cert-dir: {exc.strerror}: {exc.filename}") from exc
    bundle = home / "ca-bundle.pem"
    bundle.write_bytes(b"\n".join(parts))
    return bundle


class GitBinaryFetcher:
    """``GitFetcher`` through ``git`` (found on the builder's PATH). ``agent`` gives the
    socket of the build's ``--ssh default`` agent (None: no agent) when git runs."""

    def __init__(self, transport: TransportOptions, timeout: float = GIT_TIMEOUT,
                 agent: Callable[[], Path | None] = lambda: None,
                 guard: DestinationGuard | None = None) -> None:
        self.transport = transport
        self.timeout = timeout
        self.agent = agent
        self.guard = guard

    async def pin(self, source: GitSource) -> list[str]:
        """git's options pinning an untrusted build's remote to its checked address (none
        for a trusted build); ``StepError`` for a denied or unpinnable remote."""
        if self.guard is None:
            return []
        parts = urlsplit(source.remote)
        if parts.scheme not in ("http", "https"):
            kind = f"{parts.scheme}://" if "://" in source.remote else "scp-style ssh"
            raise StepError(
                f"ADD: {source.shown}: {kind} remotes are refused in untrusted builds (the "
                "builder cannot check where they connect); use an https:// remote")
        try:
            host, port = host_port(source.remote)
            addresses = await self.guard.check(host, port)
        except DeniedDestination as exc:
            raise StepError(refusal(f"ADD: {source.shown}", exc)) from exc
        except (OSError, ValueError) as exc:
            raise StepError(f"ADD: fetch {source.shown}: {exc}") from exc
        return git_pin(host, port, addresses[0])

    async def resolve(self, source: GitSource) -> str | None:
        git = shutil.which("git")
        if git is None:
            raise StepError("ADD: Git sources need the git command on the builder's PATH")
        agent = self.agent()
        pin = await self.pin(source)
        with tempfile.TemporaryDirectory(prefix="git-home-") as home:
            argv = [git, *(a for kv in _SAFE_CONFIG for a in ("-c", kv)), *pin, "ls-remote",
                    source.remote, *_candidates(source.ref)]
            with trio.move_on_after(self.timeout) as scope:
                done = await trio.run_process(
                    argv, env=git_env(Path(home), self.transport, source.remote, agent,
                                      proxies=self.guard is None),
                    cwd=home,
                    stdin=subprocess.DEVNULL, capture_stdout=True, capture_stderr=True,
                    check=False,
                )
        if scope.cancelled_caught:
            raise StepError(f"ADD: fetch {source.shown}: git timed out after {self.timeout:g}s")
        if done.returncode != 0:
            raise StepError(
                f"ADD: fetch {source.shown}: {_reason(done.stderr, source, agent)}")
        return pick_ref(done.stdout.decode("utf-8", "replace"), source.ref)

    async def fetch(self, source: GitSource, dest: Path, *, keep_git_dir: bool) -> Checkout:
        git = shutil.which("git")
        if git is None:
            raise StepError("ADD: Git sources need the git command on the builder's PATH")
        home, repo = dest / "home", dest / "repo"
        agent = self.agent()
        pin = await self.pin(source)
        home.mkdir()
        env = git_env(home, self.transport, source.remote, agent, proxies=self.guard is None)
        shown = source.shown

        async def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
            argv = [git, *(a for kv in _SAFE_CONFIG for a in ("-c", kv)), *pin, *args]
            with trio.move_on_after(self.timeout) as scope:
                done = await trio.run_process(
                    argv, env=env, cwd=str(repo) if repo.exists() else str(dest),
                    stdin=subprocess.DEVNULL, capture_stdout=True, capture_stderr=True,
                    check=False,
                )
            if scope.cancelled_caught:
                raise StepError(f"ADD: fetch {shown}: git timed out after {self.timeout:g}s")
            if check and done.returncode != 0:
                raise StepError(f"ADD: fetch {shown}: {_reason(done.stderr, source, agent)}")
            return done

        await run("init", "-q", "--template=", str(repo))
        ref = source.ref or "HEAD"
        fetched = await run("fetch", "-q", "--depth=1", "--no-tags", source.remote, ref,
                            check=False)
        if fetched.returncode == 0:
            commit = (await run("rev-parse", "--verify", "FETCH_HEAD^{commit}")).stdout
        elif _looks_like_commit(ref):
            await run("fetch", "-q", "--no-tags", source.remote,
                      "+refs/heads/*:refs/remotes/origin/*", "+refs/tags/*:refs/tags/*")
            found = await run("rev-parse", "--verify", "-q", f"{ref}^{{commit}}", check=False)
            if found.returncode != 0:
                raise StepError(f'ADD: fetch {shown}: no commit "{ref}" in the repository')
            commit = found.stdout
        else:
            raise StepError(f"ADD: fetch {shown}: {_reason(fetched.stderr, source, agent)}")
        sha = commit.decode().strip()
        await run("checkout", "-q", "--detach", sha)
        when = int((await run("log", "-1", "--format=%ct", sha)).stdout.decode().strip() or 0)
        for name in ("FETCH_HEAD", "logs", "ORIG_HEAD"):
            _remove(repo / ".git" / name)
        if keep_git_dir and not source.subdir:
            await run("remote", "add", "origin", strip_credentials(source.remote))
            if source.ref and not _looks_like_commit(source.ref):
                await run("update-ref", f"refs/remotes/origin/{source.ref}", sha, check=False)
        else:
            shutil.rmtree(repo / ".git")
        tree: Path | None = repo
        if source.subdir:
            tree = _subdir(repo, source.subdir)
        if tree is None:
            raise StepError(f'ADD: fetch {shown}: no directory "{source.subdir}" at {sha[:12]}')
        return Checkout(tree=tree, commit=sha, time=when)


def _candidates(ref: str) -> list[str]:
    """The full names a short ref may stand for, in git's order (gitrevisions(7))."""
    if not ref:
        return ["HEAD"]
    return [ref, f"refs/{ref}", f"refs/tags/{ref}", f"refs/tags/{ref}^{{}}",
            f"refs/heads/{ref}"]


def pick_ref(listing: str, ref: str) -> str | None:
    """The commit ``ref`` names in ``git ls-remote`` output: the first of its candidates
    (an annotated tag's peeled ``^{}`` line before the tag object), None when none."""
    found: dict[str, str] = {}
    for line in listing.splitlines():
        sha, _, name = line.strip().partition("\t")
        if sha and name:
            found[name] = sha
    for name in _candidates(ref):
        if name.startswith("refs/tags/") and not name.endswith("^{}") and \
                name + "^{}" in found:
            return found[name + "^{}"]
        if name in found:
            return found[name]
    return None


def _subdir(repo: Path, subdir: str) -> Path | None:
    """``repo/subdir`` when it is a real directory (no symlink on the way)."""
    path = repo
    for part in subdir.split("/"):
        path = path / part
        if path.is_symlink() or not path.is_dir():
            return None
    return path


def _looks_like_commit(ref: str) -> bool:
    return 7 <= len(ref) <= 64 and all(c in "0123456789abcdef" for c in ref.lower())


def _reason(stderr: bytes, source: GitSource, agent: Path | None = None) -> str:
    """git's last meaningful line, without credentials: ssh's own line when ssh failed
    (git then only says it could not read from the remote, and gives advice), with a
    hint at ``--ssh default`` when the server refused a build without an agent."""
    lines = [ln.strip() for ln in stderr.decode("utf-8", "replace").splitlines()
             if ln.strip() and ln.strip() not in _GIT_ADVICE]
    line = lines[-1] if lines else "git failed"
    if line == _NO_REMOTE and len(lines) > 1:
        line = lines[-2].rstrip(".")
        if "Permission denied (publickey" in line and agent is None:
            line += " (no ssh agent for the build: forward one with --ssh default)"
        elif "Host key verification failed" in line:
            line += " (the host's key must be in ~/.ssh/known_hosts)"
    line = line.removeprefix("fatal: ").removeprefix("error: ")
    if source.remote in line:
        line = line.replace(source.remote, redact(source.remote))
    return _USERINFO.sub("://xxxxx@", line)


_NO_REMOTE = "fatal: Could not read from remote repository."
_GIT_ADVICE = frozenset((
    "Please make sure you have the correct access rights", "and the repository exists.",
))


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()
