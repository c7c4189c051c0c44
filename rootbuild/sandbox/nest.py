"""The step's own user namespace inside a slot's (``--slot``, ``idmap.slot_plan``).

Job: ``enter_nested(nproc)``, called by the step process (``child.py``) after its mounts
and pivot_root and before it drops capabilities: a new user namespace that maps ids
0..65535 onto the same ids of the slot's namespace and nothing else, so the step can never
switch to ``SLOT_OWN`` (the user's own uid, which the init and its FUSE servers need).

Rules:
- The maps of the nested namespace can only be written by a process holding CAP_SETUID
  and CAP_SETGID in the slot's namespace; the step gives those up by unsharing, so a
  helper forked just before writes them and exits (it never execs).
- ``nproc`` (RLIMIT_NPROC) is set before the unshare: the kernel then also counts every
  process of the nested namespace, of any uid, against it (ucounts: a namespace's limit is
  its creator's at creation), so switching uids inside the step does not escape the limit.
"""

from __future__ import annotations

import os
import resource

from rootbuild.sandbox import mounts
from rootbuild.sandbox.idmap import SLOT_SPAN


def enter_nested(nproc: int | None) -> None:
    """Unshare a user namespace mapping 0..65535 to the same ids; raises ``OSError``."""
    if nproc is not None:
        resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
    go_r, go_w = os.pipe2(os.O_CLOEXEC)
    done_r, done_w = os.pipe2(os.O_CLOEXEC)
    me = os.getpid()
    helper = os.fork()
    if helper == 0:  # still in the slot's namespace, with its capabilities
        code = 1
        try:
            os.close(go_w)
            os.close(done_r)
            if os.read(go_r, 1) == b"u":
                line = f"0 0 {SLOT_SPAN}\n"
                for name in ("uid_map", "gid_map"):
                    with open(f"/proc/{me}/{name}", "w") as f:
                        f.write(line)
                code = 0
        finally:
            os._exit(code)
    os.close(go_r)
    os.close(done_w)
    try:
        mounts.unshare(mounts.CLONE_NEWUSER)
        os.write(go_w, b"u")
    finally:
        os.close(go_w)
        os.close(done_r)
        _, status = os.waitpid(helper, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise OSError(0, "map ids of the step's nested user namespace: the helper failed")
