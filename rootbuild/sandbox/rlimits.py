"""RUN's resource limits (``--ulimit TYPE=SOFT[:HARD]``), as values and as setrlimit calls.

Job: ``Ulimit`` (a limit the step gets: the name Docker gives it, soft and hard, -1 for
unlimited), its wire form, ``check_ulimit`` (can the builder give it at all) and
``apply_ulimits`` (setrlimit in the step process, just before exec: ``child.py``).

Rules:
- The names are Docker's (go-units ``ulimit.go``): core, cpu, data, fsize, locks, memlock,
  msgqueue, nice, nofile, nproc, rss, rtprio, rttime, sigpending, stack.
- A user cannot raise a hard limit (that needs CAP_SYS_RESOURCE in the initial user
  namespace, which a rootless builder never has): a limit above the builder's own hard limit
  is refused before the build starts, naming the builder's limit.
"""

from __future__ import annotations

import resource
from dataclasses import dataclass
from typing import Any

from rootbuild.errors import SandboxError

#: Docker's ulimit names -> the resource (go-units ulimit.go ``ulimitNameMapping``)
ULIMIT_RESOURCES: dict[str, int] = {
    "core": resource.RLIMIT_CORE,
    "cpu": resource.RLIMIT_CPU,
    "data": resource.RLIMIT_DATA,
    "fsize": resource.RLIMIT_FSIZE,
    "locks": getattr(resource, "RLIMIT_LOCKS", 10),
    "memlock": resource.RLIMIT_MEMLOCK,
    "msgqueue": getattr(resource, "RLIMIT_MSGQUEUE", 12),
    "nice": getattr(resource, "RLIMIT_NICE", 13),
    "nofile": resource.RLIMIT_NOFILE,
    "nproc": resource.RLIMIT_NPROC,
    "rss": resource.RLIMIT_RSS,
    "rtprio": getattr(resource, "RLIMIT_RTPRIO", 14),
    "rttime": getattr(resource, "RLIMIT_RTTIME", 15),
    "sigpending": getattr(resource, "RLIMIT_SIGPENDING", 11),
    "stack": resource.RLIMIT_STACK,
}


def _raw(value: int) -> int:
    return resource.RLIM_INFINITY if value == -1 else value


def _text(value: int) -> str:
    return "unlimited" if value in (-1, resource.RLIM_INFINITY) else str(value)


@dataclass(frozen=True)
class Ulimit:
    """One resource limit for RUN: ``name`` (a key of ``ULIMIT_RESOURCES``), ``soft`` and
    ``hard`` (-1: unlimited; soft <= hard)."""

    name: str
    soft: int
    hard: int

    def validate(self) -> None:
        if self.name not in ULIMIT_RESOURCES:
            raise SandboxError(f"run step: unknown ulimit {self.name!r}")
        if self.soft < -1 or self.hard < -1 or (
            self.hard != -1 and (self.soft == -1 or self.soft > self.hard)
        ):
            raise SandboxError(f"run step: ulimit {self.name}: soft {self.soft} is above "
                               f"hard {self.hard}")

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "soft": self.soft, "hard": self.hard}

    @classmethod
    def from_json(cls, data: Any) -> Ulimit:
        if not isinstance(data, dict):
            raise SandboxError("read step spec: a ulimit is not an object")
        name, soft, hard = data.get("name"), data.get("soft"), data.get("hard")
        if not isinstance(name, str) or not all(
            isinstance(n, int) and not isinstance(n, bool) for n in (soft, hard)
        ):
            raise SandboxError("read step spec: malformed ulimit")
        assert isinstance(soft, int) and isinstance(hard, int)
        return cls(name, soft, hard)


def check_ulimit(limit: Ulimit) -> str | None:
    """Why the builder cannot give ``limit`` to its steps (None: it can): a hard limit
    above its own cannot be set by an unprivileged process."""
    _soft, own_hard = resource.getrlimit(ULIMIT_RESOURCES[limit.name])
    if own_hard == resource.RLIM_INFINITY:
        return None
    wanted = max(_raw(limit.soft), _raw(limit.hard))
    if wanted > own_hard:
        return (f"{limit.name}={_text(limit.soft)}:{_text(limit.hard)} is above the "
                f"builder's own hard limit {own_hard}, and an unprivileged process cannot "
                "raise a hard limit (raise the builder's limit first, e.g. `ulimit -H`)")
    return None


def apply_ulimits(limits: tuple[Ulimit, ...]) -> None:
    """setrlimit each limit in this process (the step's, before exec); an impossible one
    raises ``RuntimeError`` naming it."""
    for limit in limits:
        try:
            resource.setrlimit(ULIMIT_RESOURCES[limit.name],
                               (_raw(limit.soft), _raw(limit.hard)))
        except (OSError, ValueError) as exc:
            raise RuntimeError(f"set ulimit {limit.name}={_text(limit.soft)}:"
                               f"{_text(limit.hard)}: {exc}") from exc
