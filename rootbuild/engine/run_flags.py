"""The build's settings for every RUN step's sandbox, from ``docker buildx build``'s flags:
``--add-host``, ``--shm-size``, ``--ulimit`` and the ``BUILDKIT_SANDBOX_HOSTNAME`` build arg.

Job: parse each flag's text exactly as Docker does (``parse_add_host``: docker/cli
``opts.ValidateExtraHost``; ``parse_shm_size``: go-units ``RAMInBytes``; ``parse_ulimit``:
go-units ``ParseUlimit``), check what the builder cannot give (``check_run_flags``), and
hand the values to each step (``RunFlags.step_fields``) and to its cache key
(``RunFlags.key_inputs``).

Rules:
- Bad text is a ``UsageError`` (exit 2, one line) naming the flag and the value.
- ``host-gateway`` is refused: a rootless sandbox has no gateway to the host (RUN shares
  the builder's network, where the host is 127.0.0.1; --network=none has no host at all).
- A value left at its default adds nothing to a cache key, so builds without these flags
  keep their keys; any other value is part of every RUN step's key (BuildKit keeps hosts,
  hostname and ulimits in the exec op, so they are part of its cache key too).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from rootbuild.cache.prune import parse_size
from rootbuild.errors import UsageError
from rootbuild.sandbox.rlimits import ULIMIT_RESOURCES, Ulimit, check_ulimit
from rootbuild.sandbox.spec import DEFAULT_HOSTNAME

HOSTNAME_ARG = "BUILDKIT_SANDBOX_HOSTNAME"
HOST_GATEWAY = "host-gateway"
HOST_NAME_MAX = 64  # the kernel's limit for sethostname (__NEW_UTS_LEN)


def parse_add_host(text: str) -> tuple[tuple[str, str], ...]:
    """``--add-host`` values: ``host:ip`` or ``host=ip`` (an IPv6 address may be in
    brackets), several comma-separated (buildx's flag is a string slice)."""
    return tuple(_one_host(item) for item in text.split(",") if item)


def _one_host(text: str) -> tuple[str, str]:
    host, sep, ip = text.partition("=")
    if not sep:
        host, sep, ip = text.partition(":")
    if not sep or not host or ":" in host or any(c.isspace() for c in host):
        raise UsageError(f"build: bad format for --add-host: {text!r} (expected host:ip "
                         "or host=ip)")
    if ip == HOST_GATEWAY:
        raise UsageError(
            f"build: --add-host {text}: host-gateway is not supported: a rootless sandbox "
            "has no gateway to the host (RUN shares the builder's network, where the host "
            "is 127.0.0.1: use --add-host HOST=127.0.0.1)"
        )
    if len(ip) > 2 and ip[0] == "[" and ip[-1] == "]":
        ip = ip[1:-1]
    try:
        ipaddress.ip_address(ip.strip())
    except ValueError:
        raise UsageError(f"build: invalid IP address in --add-host: {ip!r}") from None
    return host, ip.strip()


def positive_size(flag: str, text: str, examples: str) -> int:
    """A size flag's bytes (``cache.prune.parse_size``'s units: b, k, m, g, KB, MB...;
    multiples of 1024); 0, negative or unreadable is a usage error naming ``flag``."""
    try:
        size = parse_size(text)
    except ValueError:
        size = 0
    if size <= 0:
        raise UsageError(f"build: invalid {flag} {text!r}: expected a size greater "
                         f"than 0 (e.g. {examples})")
    return size


def parse_shm_size(text: str) -> int:
    """``--shm-size``: Docker: "number must be greater than 0"."""
    return positive_size("--shm-size", text, "64m, 1g")


def parse_ulimit(text: str) -> Ulimit:
    """``--ulimit TYPE=SOFT[:HARD]`` (HARD defaults to SOFT; -1: unlimited)."""
    name, sep, values = text.partition("=")
    if not sep:
        raise UsageError(f"build: invalid --ulimit argument {text!r} (expected "
                         "TYPE=SOFT[:HARD], e.g. nofile=1024:2048)")
    if name not in ULIMIT_RESOURCES:
        raise UsageError(f"build: invalid --ulimit type {name!r} (one of "
                         f"{', '.join(sorted(ULIMIT_RESOURCES))})")
    parts = values.split(":")
    if len(parts) > 2:
        raise UsageError(f"build: --ulimit {text}: too many limit values, can only have up "
                         "to two, soft[:hard]")
    try:
        soft = int(parts[0])
        hard = int(parts[1]) if len(parts) == 2 else soft
    except ValueError:
        raise UsageError(f"build: --ulimit {text}: limits must be integers") from None
    if soft < -1 or hard < -1:
        raise UsageError(f"build: --ulimit {text}: a limit is -1 (unlimited) or at least 0")
    if hard != -1 and (soft == -1 or soft > hard):
        raise UsageError(f"build: --ulimit {text}: the soft limit must be less than or "
                         "equal to the hard limit")
    return Ulimit(name, soft, hard)


def merge_ulimits(limits: Iterable[Ulimit]) -> tuple[Ulimit, ...]:
    """One limit per type, the last given winning (Docker keeps a map by name)."""
    by_name: dict[str, Ulimit] = {}
    for limit in limits:
        by_name[limit.name] = limit
    return tuple(by_name[name] for name in sorted(by_name))


def sandbox_hostname(build_args: Mapping[str, str]) -> str:
    """RUN's hostname: ``BUILDKIT_SANDBOX_HOSTNAME`` when set and not empty, else
    BuildKit's ``buildkitsandbox``."""
    return build_args.get(HOSTNAME_ARG) or DEFAULT_HOSTNAME


@dataclass(frozen=True)
class RunFlags:
    hostname: str = DEFAULT_HOSTNAME
    extra_hosts: tuple[tuple[str, str], ...] = ()
    shm_size: int | None = None
    ulimits: tuple[Ulimit, ...] = ()

    def step_fields(self) -> dict[str, Any]:
        """Keyword arguments for the step's ``StepSpec``."""
        return {"hostname": self.hostname, "extra_hosts": self.extra_hosts,
                "shm_size": self.shm_size, "ulimits": self.ulimits}

    def key_inputs(self) -> dict[str, str]:
        """What differs from the defaults, for the step's cache key."""
        inputs: dict[str, str] = {}
        if self.hostname != DEFAULT_HOSTNAME:
            inputs["hostname"] = self.hostname
        if self.extra_hosts:
            inputs["hosts"] = ",".join(f"{h}={ip}" for h, ip in self.extra_hosts)
        if self.shm_size is not None:
            inputs["shm"] = str(self.shm_size)
        if self.ulimits:
            inputs["ulimits"] = ",".join(f"{u.name}={u.soft}:{u.hard}" for u in self.ulimits)
        return inputs


def check_run_flags(flags: RunFlags) -> None:
    """Refuse what no step can get (``UsageError``): a hostname the kernel refuses, a
    limit above the builder's own hard limit."""
    name = flags.hostname
    if (len(name.encode()) > HOST_NAME_MAX or "\0" in name or "/" in name
            or any(c.isspace() for c in name)):
        raise UsageError(f"build: {HOSTNAME_ARG}={name!r} is not a valid hostname (at most "
                         f"{HOST_NAME_MAX} bytes, no spaces or '/')")
    for limit in flags.ulimits:
        reason = check_ulimit(limit)
        if reason is not None:
            raise UsageError(f"build: --ulimit {reason}")
