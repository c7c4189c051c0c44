"""SSH agents a build starts for ``--ssh ID=KEYFILE[,KEYFILE]``, and every forwarded socket.

Job: ``SshAgents(sources)``; ``start()`` gives each key-file source an agent of its own
(``ssh-agent -a SOCK -D``, then ``ssh-add`` of its keys) and returns the socket of every
source by id; ``stop()`` kills the agents and removes their directories. The build calls
``stop()`` on every path, so no agent outlives it.

Rules:
- An agent's socket lives in a private directory (mode 0700) under ``$XDG_RUNTIME_DIR`` or
  the temp directory, never in the store; the keys stay in the agent's memory.
- ``ssh-agent`` and ``ssh-add`` (openssh-client) run with only ``PATH`` and
  ``SSH_AUTH_SOCK`` and no terminal: a key that needs a passphrase fails with ssh-add's
  message instead of prompting.
- An agent never outlives the build: ``stop()`` on every path; a killed builder closes the
  pipe the agent's command (``cat``) reads, and ssh-agent exits when its command has
  (a parent-death signal would not survive exec of the setgid ssh-agent).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from rootbuild.engine.secrets import SshSource
from rootbuild.errors import RootbuildError
from rootbuild.sandbox.affinity import children

START_SECONDS = 10.0


class SshAgents:
    def __init__(self, sources: tuple[SshSource, ...]) -> None:
        self.sources = sources
        self._agents: list[_Agent] = []

    def start(self) -> dict[str, Path]:
        """The socket of every ``--ssh`` id (agents started for key files)."""
        sockets: dict[str, Path] = {}
        try:
            for src in self.sources:
                if src.socket is not None:
                    sockets[src.id] = Path(src.socket)
                else:
                    sockets[src.id] = self._agent(src)
        except BaseException:
            self.stop()
            raise
        return sockets

    def _agent(self, src: SshSource) -> Path:
        agent_bin, add_bin = shutil.which("ssh-agent"), shutil.which("ssh-add")
        if agent_bin is None or add_bin is None:
            raise RootbuildError(
                f"--ssh {src.id}: ssh-agent and ssh-add are needed to forward key files "
                "(install openssh-client)"
            )
        base = os.environ.get("XDG_RUNTIME_DIR") or None
        if base is not None and not os.path.isdir(base):
            base = None
        where = Path(tempfile.mkdtemp(prefix="rootbuild-ssh-", dir=base))
        sock = where / "agent.sock"
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        # `ssh-agent -a SOCK cat`: the agent serves while its command runs; `cat` reads a
        # pipe only this process holds, so the agent also ends when the builder is killed
        # (ssh-agent checks every 10 s). stop() kills it at once.
        keep_r, keep_w = os.pipe()
        try:
            proc = subprocess.Popen([agent_bin, "-a", str(sock), "cat"], stdin=keep_r,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                    env=env, start_new_session=True)
        except BaseException:
            os.close(keep_w)
            raise
        finally:
            os.close(keep_r)
        agent = _Agent(proc, keep_w, where)
        self._agents.append(agent)
        deadline = time.monotonic() + START_SECONDS
        # the socket is made before ssh-agent forks: the agent is `cat`'s child
        while not sock.exists() or not agent.pids:
            agent.pids = children(proc.pid)
            if proc.poll() is not None or time.monotonic() > deadline:
                err = proc.stderr.read().decode(errors="replace").strip() if proc.stderr \
                    and proc.poll() is not None else "it did not create its socket"
                raise RootbuildError(f"--ssh {src.id}: start ssh-agent: {err}")
            time.sleep(0.02)
        added = subprocess.run([add_bin, "-q", *src.keys], stdin=subprocess.DEVNULL,
                               capture_output=True, env=env | {"SSH_AUTH_SOCK": str(sock)},
                               start_new_session=True, timeout=60)
        if added.returncode != 0:
            err = (added.stderr or added.stdout).decode(errors="replace").strip()
            raise RootbuildError(f"--ssh {src.id}: ssh-add {' '.join(src.keys)}: {err}")
        return sock

    def stop(self) -> None:
        for agent in self._agents:
            for pid in agent.pids:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGTERM)
            os.close(agent.keep)  # `cat` sees EOF and exits
            try:
                agent.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                agent.proc.kill()
                agent.proc.wait()
            if agent.proc.stderr:
                agent.proc.stderr.close()
            shutil.rmtree(agent.where, ignore_errors=True)
        self._agents = []


@dataclass
class _Agent:
    proc: subprocess.Popen[bytes]  # ssh-agent's first process, which became `cat`
    keep: int  # the write end of the pipe `cat` reads
    where: Path
    pids: set[int] = field(default_factory=set)  # the agent itself
