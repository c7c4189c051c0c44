"""The files a RUN step gets from the Dockerfile itself: a ``#!`` heredoc's script.

Job: BuildKit's ``dispatchRun`` runs ``RUN <<EOF`` whose body starts with ``#!`` by writing
the body to a file (mode 0755) in a scratch tree mounted read-only at ``/dev/pipes/`` and
running ``/dev/pipes/<name>`` through the shell, so the kernel picks the interpreter from
the ``#!`` line. Here each file is written into a tree in the step's private scratch
directory, and that tree is bound read-only at the file's directory (``stages.evaluate``
chose the path): ``/dev/pipes`` holds only the script, and nothing can be written there.

Rules:
- The script lives under the step's /dev (a tmpfs made for the step), never in the root:
  nothing of it reaches the layer, as with BuildKit's mount.
- A file is named by its heredoc (``$0`` is ``/dev/pipes/EOF``); a name that cannot be a
  file name (empty, ``.``, ``..``) is refused. The tree's directories are named here.
- The content is part of the step (``RunStep.heredoc_files``), hence of its cache key.
"""

from __future__ import annotations

import os
import posixpath
from pathlib import Path

from rootbuild.errors import StepError
from rootbuild.sandbox.spec import Bind

SCRIPT_MODE = 0o755  # BuildKit: llb.Mkfile(name, 0755, data)


def heredoc_binds(files: tuple[tuple[str, str], ...], directory: Path) -> tuple[Bind, ...]:
    """Write each (in-image path, content) of ``files`` into a private tree under
    ``directory`` (created) and return the read-only directory binds that put them at
    their paths: one per in-image directory (``/dev/pipes``), holding only its files, as
    BuildKit's scratch mount does."""
    if not files:
        return ()
    directory.mkdir(mode=0o700)
    trees: dict[str, Path] = {}
    for target, content in files:
        parent, name = posixpath.split(target)
        if name in ("", ".", "..") or "\0" in name:
            raise StepError(f"RUN: heredoc name {name!r} cannot name a file")
        if parent not in trees:
            trees[parent] = directory / str(len(trees))
            trees[parent].mkdir(mode=0o755)
        path = trees[parent] / name
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC,
                     SCRIPT_MODE)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(content)
        os.chmod(path, SCRIPT_MODE)  # whatever the umask took away
    return tuple(Bind(tree, parent, readonly=True, kind="dir") for parent, tree in trees.items())
