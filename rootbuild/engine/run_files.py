"""The files a RUN step gets from the Dockerfile itself: a ``#!`` heredoc's script.

Job: BuildKit's ``dispatchRun`` runs ``RUN <<EOF`` whose body starts with ``#!`` by writing
the body to a file (mode 0755) in a scratch tree mounted read-only at ``/dev/pipes/`` and
running ``/dev/pipes/<name>`` through the shell, so the kernel picks the interpreter from
the ``#!`` line. Here each file is written into the step's private scratch directory and
handed to the sandbox as a read-only file bind at its path (``stages.evaluate`` chose it).

Rules:
- The script lives under the step's /dev (a tmpfs made for the step), never in the root:
  nothing of it reaches the layer, as with BuildKit's mount.
- Host file names are made here (``0``, ``1`` ...), never taken from the Dockerfile.
- The content is part of the step (``RunStep.heredoc_files``), hence of its cache key.
"""

from __future__ import annotations

import os
from pathlib import Path

from rootbuild.sandbox.spec import Bind

SCRIPT_MODE = 0o755  # BuildKit: llb.Mkfile(name, 0755, data)


def heredoc_binds(files: tuple[tuple[str, str], ...], directory: Path) -> tuple[Bind, ...]:
    """Write each (in-image path, content) of ``files`` into ``directory`` (created, private)
    and return the read-only binds that put them at their paths."""
    if not files:
        return ()
    directory.mkdir(mode=0o700)
    binds = []
    for index, (target, content) in enumerate(files):
        path = directory / str(index)
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC,
                     SCRIPT_MODE)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(content)
        os.chmod(path, SCRIPT_MODE)  # whatever the umask took away
        binds.append(Bind(path, target, readonly=True, kind="file"))
    return tuple(binds)
