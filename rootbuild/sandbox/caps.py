"""Capabilities across exec for the sandbox init's helpers, when the init is not root of
the step's user namespace (``--slot``: the user's own uid is not mapped, ``idmap.slot_plan``).

Job: ``helpers_keep_admin()`` before the init starts its FUSE servers (fresh interpreters),
``step_gets_none()`` once they run and before the step is forked. A process whose uid is not
root of its user namespace loses every capability at exec; a FUSE server needs
CAP_SYS_ADMIN there to mount. So the init raises CAP_SYS_ADMIN as an ambient capability
(the kernel's way to keep one across exec for a non-root uid) just for those helpers.
slirp4netns (``usernet.py``, exec'd by a helper the init forked before its network
namespace existed) needs more: CAP_SYS_ADMIN to join the step's network namespace,
CAP_NET_ADMIN to configure its tap, and, for its own ``--enable-sandbox``, CAP_SETUID,
CAP_SETGID, CAP_SETPCAP and CAP_NET_BIND_SERVICE (the set it keeps); a root helper has all
of them anyway. These are capabilities of the build's user namespace only.

Rules: the step never inherits any of it: the ambient set and the inheritable set are
cleared before the step is forked (an inheritable capability would survive the step's exec
as root past the bounding set). Only the init calls these; nothing here outlives the step's
user namespace, whose capabilities they are.
"""

from __future__ import annotations

import ctypes

CAP_SETGID = 6
CAP_SETUID = 7
CAP_SETPCAP = 8
CAP_NET_BIND_SERVICE = 10
CAP_NET_ADMIN = 12
CAP_SYS_ADMIN = 21
_VERSION_3 = 0x20080522
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_RAISE = 2
PR_CAP_AMBIENT_CLEAR_ALL = 4
PR_SET_PDEATHSIG = 1


class _Header(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _Data(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _set_inheritable(to_permitted: bool) -> None:
    libc = _libc()
    header = _Header(_VERSION_3, 0)
    data = (_Data * 2)()
    if libc.capget(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), "capget")
    for word in data:
        word.inheritable = word.permitted if to_permitted else 0
    if libc.capset(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), "capset")


def helpers_keep_admin(*more: int) -> None:
    """Processes this one execs from now on keep CAP_SYS_ADMIN (and ``more``) of this
    user namespace."""
    _set_inheritable(True)
    for cap in (CAP_SYS_ADMIN, *more):
        if _libc().prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, cap, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), f"raise ambient capability {cap}")


def step_gets_none() -> None:
    """Undo ``helpers_keep_admin``: empty ambient and inheritable sets."""
    if _libc().prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "clear ambient capabilities")
    _set_inheritable(False)
