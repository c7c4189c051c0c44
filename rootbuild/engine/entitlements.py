"""Entitlements: the RUN flags a build must be allowed (``--allow``) before any step runs.

Job: ``parse_allow`` reads ``--allow`` values; ``check_entitlements`` refuses, at plan
time and at the RUN's line, every ``RUN --network=host``, ``RUN --security=insecure`` and
``RUN --device`` the build was not allowed, and all of them in an ``--untrusted`` build
whatever ``--allow`` says. ``host_devices`` turns a step's ``--device`` list into the host
nodes it gets.

Rules (``docker buildx build --allow``; BuildKit entitlements ``network.host``,
``security.insecure``, ``device``):
- ``RUN --network=host`` needs ``network.host`` even though rootbuild's default RUN network
  is already the host's (the build's ``--network``, as ``docker build``): the flag is the
  Dockerfile *asking* for the host network, and a Dockerfile that builds here without
  ``--allow`` builds with BuildKit too. ``--network=none`` and ``default`` need nothing.
- ``RUN --security=insecure`` keeps every capability the step has in its user namespace
  (no bounding-set drop). It cannot grant real root, host devices, module loading or
  anything the invoking user cannot do: the builder is rootless.
- ``RUN --device=/dev/NAME[,required]`` binds that host node into the step's /dev; the
  step can use it only as far as the invoking user can. CDI names (``vendor/class=name``)
  are refused: rootbuild has no CDI registry. A missing device is skipped unless
  ``required``.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable

from rootbuild.dockerfile.instructions import Device, Run
from rootbuild.errors import StepError, UsageError
from rootbuild.stages.plan import BuildPlan

NETWORK_HOST = "network.host"
SECURITY_INSECURE = "security.insecure"
DEVICE = "device"
ENTITLEMENTS = (NETWORK_HOST, SECURITY_INSECURE, DEVICE)


def parse_allow(values: Iterable[str]) -> frozenset[str]:
    """``--allow network.host,security.insecure`` (repeatable; comma-separated)."""
    allowed = set()
    for value in values:
        for name in value.split(","):
            name = name.strip()
            if not name:
                continue
            if name not in ENTITLEMENTS:
                raise UsageError(
                    f"--allow {name}: unknown entitlement (known: {', '.join(ENTITLEMENTS)})"
                )
            allowed.add(name)
    return frozenset(allowed)


def _needs(instr: Run) -> list[tuple[str, str]]:
    """(entitlement, the flag as written) for each one ``instr`` needs."""
    needs = []
    if instr.network == "host":
        needs.append((NETWORK_HOST, "--network=host"))
    if instr.security == "insecure":
        needs.append((SECURITY_INSECURE, "--security=insecure"))
    for device in instr.devices:
        needs.append((DEVICE, f"--device={device.name}"))
    return needs


def check_entitlements(plan: BuildPlan, allowed: frozenset[str], untrusted: bool) -> None:
    """Refuse the first RUN of ``plan`` that needs an entitlement it was not given."""
    for index in plan.order:
        stage = plan.stage(index)
        for instr in (*stage.onbuild, *stage.instructions):
            if not isinstance(instr, Run):
                continue
            for name, flag in _needs(instr):
                if untrusted:
                    raise StepError(
                        f"RUN {flag}: entitlement {name} is not allowed in an untrusted "
                        "build (--untrusted refuses it even with --allow)", instr.location,
                    )
                if name not in allowed:
                    raise StepError(
                        f"RUN {flag}: entitlement {name} is not allowed; "
                        f"fix: build with --allow {name}", instr.location,
                    )
            for device in instr.devices:
                _check_device(device, instr)


def _check_device(device: Device, instr: Run) -> None:
    if not device.name.startswith("/dev/") or "=" in device.name:
        raise StepError(
            f"RUN --device={device.name}: CDI devices are not supported; name a host device "
            "node such as /dev/fuse", instr.location,
        )
    if device.required and _node(device.name) is None:
        raise StepError(f"RUN --device={device.name}: required device not found on this host",
                        instr.location)


def _node(path: str) -> str | None:
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    return path if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else None


def host_devices(devices: tuple[Device, ...]) -> tuple[str, ...]:
    """The host nodes a step gets: each that exists (a required one that vanished since
    the plan was checked is a step error)."""
    found = []
    for device in devices:
        node = _node(device.name)
        if node is None:
            if device.required:
                raise StepError(f"RUN --device={device.name}: required device not found")
            continue
        found.append(node)
    return tuple(found)
