"""User-namespace id mapping for a step: plan it from /etc/subuid and /etc/subgid, apply it.

Job: decide how the step's ids map to the invoking user's ids, as rootless podman and buildah
do: container 0 -> the invoking uid/gid, container 1..65535 -> the user's first subordinate
range (``newuidmap``/``newgidmap``, setuid helpers from Debian's ``uidmap``). Without a range
or the helpers, the fallback is the single mapping 0 -> the user that an unprivileged process
may write itself (with ``setgroups`` denied), and the plan carries a warning saying so once.

Rules:
- /etc/subuid and /etc/subgid are data: ``name-or-uid:start:count`` lines; malformed lines
  are ignored (shadow-utils' own parser skips them too); a line may name the user or its uid.
- ``plan_idmap`` is pure; only ``read_host_plan``, ``apply_helpers`` and ``write_own_maps``
  touch the system. rootbuild ships no setuid helper of its own.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

from rootbuild.errors import SandboxError

#: ids 1..65535 come from the subordinate range, as rootless podman maps them
SUBID_SPAN = 65535
NEWUIDMAP = "newuidmap"
NEWGIDMAP = "newgidmap"


@dataclass(frozen=True)
class IdRange:
    """One ``inside outside count`` line of a uid_map/gid_map."""

    inside: int
    outside: int
    count: int

    def line(self) -> str:
        return f"{self.inside} {self.outside} {self.count}"


@dataclass(frozen=True)
class IdMapPlan:
    """How a step's namespace maps ids. ``mode`` is "subid" (helpers, a range) or "single"
    (0 -> the user only; written by the namespace's own process, setgroups denied)."""

    mode: str
    uids: tuple[IdRange, ...]
    gids: tuple[IdRange, ...]
    warning: str = ""

    def maps_uid(self, uid: int) -> bool:
        return any(r.inside <= uid < r.inside + r.count for r in self.uids)

    def maps_gid(self, gid: int) -> bool:
        return any(r.inside <= gid < r.inside + r.count for r in self.gids)

    def to_json(self) -> dict[str, object]:
        return {
            "mode": self.mode,
            "uids": [[r.inside, r.outside, r.count] for r in self.uids],
            "gids": [[r.inside, r.outside, r.count] for r in self.gids],
            "warning": self.warning,
        }

    @classmethod
    def from_json(cls, data: dict[str, object]) -> IdMapPlan:
        def ranges(key: str) -> tuple[IdRange, ...]:
            rows = data[key]
            assert isinstance(rows, list)
            return tuple(IdRange(int(a), int(b), int(c)) for a, b, c in rows)

        return cls(str(data["mode"]), ranges("uids"), ranges("gids"), str(data["warning"]))


def parse_subid(text: str, name: str, uid: int) -> list[tuple[int, int]]:
    """The (start, count) ranges of /etc/subuid-format ``text`` that belong to the user
    ``name`` or its numeric ``uid``, in file order (subuid(5))."""
    out: list[tuple[int, int]] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split(":")
        if len(fields) != 3 or fields[0] not in (name, str(uid)):
            continue
        try:
            start, count = int(fields[1]), int(fields[2])
        except ValueError:
            continue
        if start >= 0 and count > 0:
            out.append((start, count))
    return out


def _subid_ranges(own: int, ranges: Sequence[tuple[int, int]]) -> tuple[IdRange, ...] | None:
    """0 -> ``own`` plus 1.. -> the ranges (up to SUBID_SPAN ids), or None without ids."""
    out = [IdRange(0, own, 1)]
    inside = 1
    for start, count in ranges:
        take = min(count, SUBID_SPAN + 1 - inside)
        if take <= 0:
            break
        out.append(IdRange(inside, start, take))
        inside += take
    return tuple(out) if inside > 1 else None


def plan_idmap(
    *, uid: int, gid: int, name: str, subuid: str, subgid: str, helpers: bool
) -> IdMapPlan:
    """The mapping for a step run by ``name`` (``uid``/``gid``) given the texts of
    /etc/subuid and /etc/subgid and whether newuidmap/newgidmap are installed."""
    uids = _subid_ranges(uid, parse_subid(subuid, name, uid))
    gids = _subid_ranges(gid, parse_subid(subgid, name, uid))
    if helpers and uids and gids:
        return IdMapPlan("subid", uids, gids)
    if not helpers:
        cause = "newuidmap/newgidmap are not installed (Debian/Ubuntu: apt-get install uidmap)"
    else:
        cause = f"user {name!r} has no range in /etc/subuid and /etc/subgid"
    warning = (
        f"warning: RUN maps only root to your user: {cause}; steps that chown files or "
        f"switch to other users (USER nobody, package managers creating system users) fail "
        f"with 'Invalid argument'; fix: add a range, e.g. "
        f"'usermod --add-subuids 100000-165535 --add-subgids 100000-165535 {name}'"
    )
    return IdMapPlan("single", (IdRange(0, uid, 1),), (IdRange(0, gid, 1),), warning)


def read_id_file(path: str) -> str:
    """/etc/subuid or /etc/subgid as text ("" when missing; another error is one line)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read(1 << 20)
    except FileNotFoundError:
        return ""
    except OSError as exc:
        raise SandboxError(f"read {path}: {exc.strerror}") from exc


def invoking_user() -> tuple[int, int, str, bool]:
    """(uid, gid, user name, whether newuidmap and newgidmap are installed) of this
    process: what every id-mapping plan starts from."""
    import pwd

    uid, gid = os.getuid(), os.getgid()
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        name = str(uid)
    helpers = shutil.which(NEWUIDMAP) is not None and shutil.which(NEWGIDMAP) is not None
    return uid, gid, name, helpers


def read_host_plan() -> IdMapPlan:
    """Plan the mapping for the invoking user from the host's files and helpers."""
    uid, gid, name, helpers = invoking_user()
    return plan_idmap(
        uid=uid, gid=gid, name=name, subuid=read_id_file("/etc/subuid"),
        subgid=read_id_file("/etc/subgid"), helpers=helpers,
    )


def helper_argv(pid: int, plan: IdMapPlan) -> list[list[str]]:
    """The newuidmap and newgidmap command lines that map the namespace of ``pid``."""
    def args(ranges: tuple[IdRange, ...]) -> list[str]:
        return [str(v) for r in ranges for v in (r.inside, r.outside, r.count)]

    return [[NEWUIDMAP, str(pid), *args(plan.uids)], [NEWGIDMAP, str(pid), *args(plan.gids)]]


def apply_helpers(pid: int, plan: IdMapPlan) -> None:
    """Run newuidmap/newgidmap on ``pid`` (a process that has just unshared its user
    namespace). Blocking; the builder runs it in a worker thread. The two helpers write
    different files of ``pid`` (uid_map, gid_map) and run at once: a step waits for the
    slower one, not for both in turn (issue 14: ~3 ms a step)."""
    procs = [
        (argv, subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True))
        for argv in helper_argv(pid, plan)
    ]
    failed = ""
    for argv, proc in procs:
        _, err = proc.communicate()
        if proc.returncode != 0 and not failed:
            failed = f"map ids with {argv[0]}: {err.strip() or f'exit {proc.returncode}'}"
    if failed:
        raise SandboxError(failed)


def write_own_maps(plan: IdMapPlan) -> None:
    """Write the single mapping for the calling process's fresh user namespace (an
    unprivileged process may map only its own ids, and only after denying setgroups)."""
    try:
        with open("/proc/self/setgroups", "w") as f:
            f.write("deny")
        with open("/proc/self/uid_map", "w") as f:
            f.write("".join(r.line() + "\n" for r in plan.uids))
        with open("/proc/self/gid_map", "w") as f:
            f.write("".join(r.line() + "\n" for r in plan.gids))
    except OSError as exc:
        raise SandboxError(f"map ids of the step's user namespace: {exc.strerror}") from exc


#: ids per build slot (``slot_plan``)
SLOT_SPAN = 65536
#: where a slot mapping puts the user's own uid and gid (outside the step's ids)
SLOT_OWN = SLOT_SPAN


def blocks_of(text: str, name: str, uid: int) -> int:
    """How many whole ``SLOT_SPAN`` blocks the user's ranges in ``text`` (an /etc/subuid or
    /etc/subgid) hold."""
    return sum(c // SLOT_SPAN for _, c in parse_subid(text, name, uid))


def slot_blocks(subuid: str, subgid: str, name: str, uid: int) -> int:
    """How many build slots (whole ``SLOT_SPAN`` blocks) the user's subordinate uids and
    gids hold."""
    return min(blocks_of(subuid, name, uid), blocks_of(subgid, name, uid))


def slot_plan(plan: IdMapPlan, slot: int, subuid: str, subgid: str, name: str,
              uid: int, gid: int) -> IdMapPlan:
    """The mapping of build slot ``slot``: ids 0..65535 of the step, root included, map to
    the ``slot``-th block of 65536 ids of the user's subordinate ranges (in file order), so
    RLIMIT_NPROC counts each slot's processes apart and steps of two slots (and the
    builder) cannot signal or ptrace each other. The user's own ids map to ``SLOT_OWN``
    (65536) for the sandbox init and its FUSE servers only: the step itself runs in a
    nested user namespace that maps 0..65535 alone (``nest.py``), so it cannot become
    the user."""
    if plan.mode != "subid":
        raise SandboxError(f"--slot {slot}: needs newuidmap/newgidmap and a subordinate "
                           f"range ({plan.warning.partition(': ')[2].partition(';')[0]})")

    def block(text: str, what: str) -> IdRange:
        left = slot  # whole blocks to skip, range by range
        for start, count in parse_subid(text, name, uid):
            if left < count // SLOT_SPAN:
                return IdRange(0, start + left * SLOT_SPAN, SLOT_SPAN)
            left -= count // SLOT_SPAN
        have = blocks_of(text, name, uid)
        raise SandboxError(
            f"--slot {slot}: {what} holds {have} block(s) of {SLOT_SPAN} ids for "
            f"{name!r}, slot {slot} needs {slot + 1} (add a range, e.g. "
            f"'usermod --add-subuids FIRST-LAST --add-subgids FIRST-LAST {name}')")

    return IdMapPlan("subid", (block(subuid, "/etc/subuid"), IdRange(SLOT_OWN, uid, 1)),
                     (block(subgid, "/etc/subgid"), IdRange(SLOT_OWN, gid, 1)))


def read_slot_plan(slot: int | None) -> IdMapPlan:
    """``read_host_plan``, or with ``slot`` the mapping of that build slot."""
    import pwd

    plan = read_host_plan()
    if slot is None:
        return plan
    uid = os.getuid()
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        name = str(uid)
    return slot_plan(plan, slot, read_id_file("/etc/subuid"), read_id_file("/etc/subgid"),
                     name, uid, os.getgid())
