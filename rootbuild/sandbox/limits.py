"""Per-step limits on processes, memory and output, without root (SERVICE.md "Limits
without root").

Job: ``StepLimits`` (what a step may use: processes, resident memory, output bytes; None
is unlimited) and its wire form; the pure parts of the watchdog (``descendants``,
``over_limit``) and its reading of /proc (``read_proc``, ``Watchdog``) that the sandbox
init runs while the step lives; ``OutputCap``, which the builder puts in front of a step's
output stream; ``enforcement``: which mechanism enforces each limit here, for ``doctor``.

Rules:
- Processes: the watchdog counts the step's pid namespace (every uid) and ends the step
  when it reaches the limit, naming it. RLIMIT_NPROC is the kernel's hard stop behind it,
  at twice the limit plus ``NPROC_SLACK`` (the kernel's count can include the init's and
  FUSE servers' threads): a bomb faster than one poll meets it first, its shell exits on
  "can't fork" and the pid namespace dies with it; so the init also counts once more at
  pid 1's exit stop (``exit_stop.py``), while every process of the step still lives, and
  the step is then reported as having reached the limit. With ``--slot`` the step's
  root is its own subordinate uid and the step runs in a nested user namespace
  (``nest.py``) created under the limit, so the kernel counts all its processes, of every
  uid, per slot, and slots cannot signal each other.
- Memory: cgroup v2 is used only where one is delegated; without one (the common rootless
  case) the watchdog sums the resident set of the step's processes every
  ``POLL_SECONDS`` and kills the pid namespace when the sum is over the limit. The sum
  counts pages shared by several processes once per process (PSS would not, but reading it
  needs ptrace access to every process of the step): it errs towards killing early.
- Output: at most ``log_bytes`` per step reach the builder's output; the rest is read and
  dropped (the builder's memory stays flat) and one note line says so, as BuildKit's
  ``[output clipped, log limit ... reached]``. Clipping does not fail the step.
- A limit hit is reported as one line naming the limit; the caller names the step.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from rootbuild.errors import SandboxError
from rootbuild.sandbox.rlimits import Ulimit

POLL_SECONDS = 0.05
#: RLIMIT_NPROC is set this far above the pids limit (see Rules)
NPROC_SLACK = 32
PAGE = os.sysconf("SC_PAGE_SIZE")
#: defaults for --untrusted builds (the worker's jobs); BuildKit's step log limit is 2 MiB
UNTRUSTED_PIDS = 512
UNTRUSTED_MEMORY = 2 << 30
UNTRUSTED_LOG_BYTES = 2 << 20


def human(size: int) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if size >= 1 << shift and size % (1 << shift) == 0:
            return f"{size >> shift}{unit}"
    return f"{size}B" if size < 1 << 20 else f"{size / (1 << 20):.1f}MiB"


@dataclass(frozen=True)
class StepLimits:
    """What one RUN step may use: ``pids`` processes at once, ``memory`` bytes of
    resident memory summed over its processes, ``log_bytes`` bytes of output."""

    pids: int | None = None
    memory: int | None = None
    log_bytes: int | None = None

    def validate(self) -> None:
        for name, value in (("pids", self.pids), ("memory", self.memory),
                            ("log", self.log_bytes)):
            if value is not None and value <= 0:
                raise SandboxError(f"run step: {name} limit {value} is not positive")

    @property
    def watched(self) -> bool:
        return self.pids is not None or self.memory is not None

    def to_json(self) -> dict[str, Any]:
        return {"pids": self.pids, "memory": self.memory, "log_bytes": self.log_bytes}

    @classmethod
    def from_json(cls, data: Any) -> StepLimits:
        if data is None:
            return cls()
        if not isinstance(data, dict):
            raise SandboxError("read step spec: limits is not an object")
        values = [data.get(k) for k in ("pids", "memory", "log_bytes")]
        if not all(v is None or (isinstance(v, int) and not isinstance(v, bool))
                   for v in values):
            raise SandboxError("read step spec: a limit is not a number")
        return cls(*values)


def nproc_value(limits: StepLimits) -> int | None:
    """The RLIMIT_NPROC for a pids limit (None without one)."""
    return None if limits.pids is None else 2 * limits.pids + NPROC_SLACK


def nproc_ulimits(limits: StepLimits) -> tuple[Ulimit, ...]:
    """The RLIMIT_NPROC the step gets for its pids limit, as a ulimit set before exec."""
    value = nproc_value(limits)
    return () if value is None else (Ulimit("nproc", value, value),)


# -- the watchdog: pure decisions ------------------------------------------------------------


@dataclass(frozen=True)
class ProcEntry:
    ppid: int
    rss_pages: int


def descendants(root: int, table: Mapping[int, ProcEntry]) -> set[int]:
    """``root`` and every process below it in ``table`` (pid -> entry). In a pid namespace
    orphans are reparented to its pid 1, so this is the whole namespace."""
    children: dict[int, list[int]] = {}
    for pid, entry in table.items():
        children.setdefault(entry.ppid, []).append(pid)
    found = {root} if root in table else set()
    todo = [root] if found else []
    while todo:
        for child in children.get(todo.pop(), ()):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def over_limit(limits: StepLimits, count: int, rss_bytes: int) -> str | None:
    """The line naming the limit the step's processes broke, or None."""
    if limits.pids is not None and count >= limits.pids:
        return f"pids limit {limits.pids} reached"
    if limits.memory is not None and rss_bytes > limits.memory:
        return (f"memory limit {human(limits.memory)} exceeded (resident memory of the "
                f"step's processes: {human(rss_bytes)})")
    return None


def check(limits: StepLimits, root: int, table: Mapping[int, ProcEntry]) -> str | None:
    pids = descendants(root, table)
    return over_limit(limits, len(pids), sum(table[p].rss_pages for p in pids) * PAGE)


# -- the watchdog: reading /proc --------------------------------------------------------------


def parse_stat(text: bytes) -> ProcEntry | None:
    """ppid and rss (pages) from a /proc/PID/stat line (the command may hold ')')."""
    try:
        fields = text.rsplit(b")", 1)[1].split()
        return ProcEntry(int(fields[1]), int(fields[21]))
    except (IndexError, ValueError):
        return None


def read_proc(pids: Iterable[str] | None = None) -> dict[int, ProcEntry]:
    table: dict[int, ProcEntry] = {}
    for name in os.listdir("/proc") if pids is None else pids:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                entry = parse_stat(f.read())
        except OSError:
            continue
        if entry is not None:
            table[int(name)] = entry
    return table


class Watchdog:
    """Polls the step whose pid 1 is ``root`` (seen from the init's /proc). Processes found
    not to be the step's are remembered (until their pid disappears) and not read again:
    a poll reads the stat files of the step's processes and of new pids only."""

    def __init__(self, limits: StepLimits, root: int) -> None:
        self.limits = limits
        self.root = root
        self.interval = POLL_SECONDS if limits.watched else None
        self.members: set[int] = {root}
        self.others: set[int] = set()

    def tick(self) -> str | None:
        if not self.limits.watched:
            return None
        present = {int(n) for n in os.listdir("/proc") if n.isdigit()}
        self.others &= present
        table = read_proc(str(p) for p in present - self.others)
        found = descendants(self.root, table)
        self.others |= table.keys() - found
        self.members = found
        return over_limit(self.limits, len(found),
                          sum(table[p].rss_pages for p in found) * PAGE)


# -- output ----------------------------------------------------------------------------------


class OutputCap:
    """Passes the first ``limit`` bytes of a stream (None: all); ``note`` is set once the
    rest starts being dropped."""

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self.seen = 0
        self.note: str | None = None

    def take(self, data: bytes) -> bytes:
        if self.limit is None:
            return data
        room = max(self.limit - self.seen, 0)
        self.seen += len(data)
        if len(data) <= room:
            return data
        if self.note is None:
            self.note = f"[output clipped, log limit {human(self.limit)} reached]"
        return data[:room]


# -- what enforces each limit here ------------------------------------------------------------


def delegated_cgroup() -> str | None:
    """A cgroup v2 directory this process may create children in and move itself into
    (None: none delegated). Only probed: the watchdog is used either way today."""
    try:
        with open("/proc/self/cgroup") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for line in lines:
        if line.startswith("0::"):
            path = "/sys/fs/cgroup" + line[3:]
            if os.path.isfile("/sys/fs/cgroup/cgroup.controllers") and \
                    os.access(path, os.W_OK) and \
                    os.access(os.path.join(path, "cgroup.procs"), os.W_OK):
                return path
    return None


def enforcement(slot_ranges: int) -> list[tuple[str, str]]:
    """(limit, how it is enforced here) for ``rootbuild doctor``; ``slot_ranges``: how many
    65536-id slot blocks the user's subordinate ranges hold."""
    cgroup = delegated_cgroup()
    memory = ("cgroup v2 delegated at " + cgroup + " (not used yet); enforced by "
              if cgroup else "no delegated cgroup v2: enforced by ") + \
        f"an RSS watchdog over the step's pid namespace (every {POLL_SECONDS * 1000:g} ms)"
    slots = (f"--slot 0..{slot_ranges - 1} map RUN's root to its own subordinate ids"
             if slot_ranges else "no subordinate range: --slot unavailable")
    return [
        ("pids", "RLIMIT_NPROC in the step plus a count of its pid namespace (and once "
                 "more at its pid 1's exit, by ptrace); " + slots),
        ("memory", memory),
        ("log", "the builder drops a step's output beyond the limit (one note line)"),
        ("timeout", "the builder kills the step's pid namespace at the deadline"),
    ]
