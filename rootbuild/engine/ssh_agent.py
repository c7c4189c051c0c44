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
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from rootbuild.engine.secrets import SshSource
from rootbuild.errors import RootbuildError

START_SECONDS = 10.0


class SshAgents:
    def __init__(self, sources: tuple[SshSource, ...]) -> None:
        self.sources = sources
        self._agents: list[tuple[subprocess.Popen[bytes], Path]] = []

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
        proc = subprocess.Popen([agent_bin, "-a", str(sock), "-D"], stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env,
                                start_new_session=True)
        self._agents.append((proc, where))
        deadline = time.monotonic() + START_SECONDS
        while not sock.exists():
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
        for proc, where in self._agents:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait()
            if proc.stderr:
                proc.stderr.close()
            shutil.rmtree(where, ignore_errors=True)
        self._agents = []
