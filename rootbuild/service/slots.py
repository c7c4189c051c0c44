"""The worker's build slots: which ``--slot`` each concurrent build gets, and whether the
user's subordinate ids hold them all.

Job: ``worker_slots`` (slot task i of a worker started with ``--slot-base N`` always builds
with slot N+i: RUN's root maps to the (N+i)-th block of 65536 subordinate ids,
``idmap.slot_plan``), and ``slot_shortage`` / ``check_worker_slots``: the refusal, at worker
start, of a worker whose slots the user's /etc/subuid and /etc/subgid do not hold.

Rules:
- Each slot is its own host uid range, so RLIMIT_NPROC is counted per slot and the steps of
  two slots (and the worker) cannot signal or ptrace each other. Two workers of the same
  user on one machine must use disjoint slots: ``--slot-base`` puts them apart.
- ``worker_slots`` and ``slot_shortage`` are pure (texts in, a message or None out); only
  ``check_worker_slots`` reads the host. The refusal is one line naming what is missing and
  the ``usermod`` command that adds it, with a range past every range either file holds
  (free of other users' ids).
"""

from __future__ import annotations

import os
import shutil

from rootbuild.errors import UsageError
from rootbuild.sandbox.idmap import NEWGIDMAP, NEWUIDMAP, SLOT_SPAN, blocks_of, read_id_file


def worker_slots(base: int, concurrency: int) -> tuple[int, ...]:
    """The slot of each of a worker's ``concurrency`` slot tasks, in task order."""
    return tuple(range(base, base + concurrency))


def free_start(*texts: str, floor: int = 100000) -> int:
    """A first id past every range of every user in the files (and past ``floor``),
    rounded up to a block."""
    end = floor
    for text in texts:
        for raw in text.splitlines():
            fields = raw.strip().split(":")
            if len(fields) == 3 and fields[1].isdigit() and fields[2].isdigit():
                end = max(end, int(fields[1]) + int(fields[2]))
    return -(-end // SLOT_SPAN) * SLOT_SPAN


def slot_shortage(base: int, concurrency: int, *, subuid: str, subgid: str, name: str,
                  uid: int, helpers: bool) -> str | None:
    """Why a worker with ``--slot-base base --concurrency concurrency`` cannot run as
    ``name`` (``uid``) given the texts of /etc/subuid and /etc/subgid, or None."""
    slots = worker_slots(base, concurrency)
    which = (f"slot {slots[0]}" if len(slots) == 1 else f"slots {slots[0]}..{slots[-1]}")
    why = f"worker: {which} (--slot-base {base}, --concurrency {concurrency})"
    if not helpers:
        return (f"{why} map RUN's root to subordinate ids with newuidmap/newgidmap, which are "
                "not installed (Debian/Ubuntu: apt-get install uidmap)")
    need = base + concurrency
    have = {"/etc/subuid": blocks_of(subuid, name, uid),
            "/etc/subgid": blocks_of(subgid, name, uid)}
    short = {path: n for path, n in have.items() if n < need}
    if not short:
        return None
    held = " and ".join(f"{path} holds {n}" for path, n in short.items())
    more = need - min(short.values())
    first = free_start(subuid, subgid)
    last = first + more * SLOT_SPAN - 1
    verb = "needs" if len(slots) == 1 else "need"
    return (f"{why} {verb} {need} block(s) of {SLOT_SPAN} subordinate ids for {name!r}; {held}; "
            f"fix: 'usermod --add-subuids {first}-{last} --add-subgids {first}-{last} {name}' "
            f"(as root; any free range of {more * SLOT_SPAN} ids will do)")


def check_worker_slots(base: int, concurrency: int) -> None:
    """Refuse (``UsageError``, one line) a worker whose slots this user does not hold."""
    import pwd

    if base < 0:
        raise UsageError(f"worker: --slot-base must be 0 or more, not {base}")
    uid = os.getuid()
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        name = str(uid)
    helpers = shutil.which(NEWUIDMAP) is not None and shutil.which(NEWGIDMAP) is not None
    problem = slot_shortage(base, concurrency, subuid=read_id_file("/etc/subuid"),
                            subgid=read_id_file("/etc/subgid"), name=name, uid=uid, helpers=helpers)
    if problem is not None:
        raise UsageError(problem)
