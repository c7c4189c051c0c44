"""RUN --device in the sandbox: host device nodes bound into the step's /dev.

Job: ``bind_devices(rootfd, devices)``, called by the step process after its /dev tmpfs is
mounted (``child._mount_all``): for each host path (``/dev/NAME`` or deeper), an empty
file is made at the same place in the step's /dev and the host's node is bound over it.

Rules:
- Only what the build was allowed (``--allow device``, checked at plan time by
  ``engine/entitlements.py``) and only character or block device nodes under /dev; the
  node is opened O_PATH|O_NOFOLLOW, so a symlink on the host is refused, never followed.
- A rootless builder grants no access of its own: the step can open a node only as far as
  the invoking user can (its mode and owner on the host, unmapped ids look like nobody).
"""

from __future__ import annotations

import contextlib
import os
import stat

from rootbuild.sandbox import mounts


def bind_devices(rootfd: int, devices: tuple[str, ...]) -> None:
    """Bind each host device node of ``devices`` at the same path in the step's /dev."""
    for path in devices:
        parts = path.strip("/").split("/")
        if len(parts) < 2 or parts[0] != "dev" or any(p in ("", ".", "..") for p in parts):
            raise RuntimeError(f"bind device {path}: not a path under /dev")
        source = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            if not (stat.S_ISCHR(os.fstat(source).st_mode)
                    or stat.S_ISBLK(os.fstat(source).st_mode)):
                raise RuntimeError(f"bind device {path}: not a device node on this host")
            parent = mounts.open_in_root(rootfd, "dev", os.O_PATH | os.O_DIRECTORY)
            try:
                for name in parts[1:-1]:
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(name, 0o755, dir_fd=parent)
                    child = mounts.openat2(parent, name, os.O_PATH | os.O_DIRECTORY
                                           | os.O_NOFOLLOW, mounts.TARGET_RESOLVE)
                    os.close(parent)
                    parent = child
                try:
                    os.close(os.open(parts[-1], os.O_CREAT | os.O_EXCL | os.O_WRONLY
                                     | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=parent))
                except FileExistsError:
                    continue  # one of the nodes every step gets (/dev/null ...)
                target = mounts.openat2(parent, parts[-1], os.O_PATH | os.O_NOFOLLOW,
                                        mounts.TARGET_RESOLVE)
            finally:
                os.close(parent)
            try:
                mounts.bind(mounts.fd_path(source), target)
            finally:
                os.close(target)
        finally:
            os.close(source)
