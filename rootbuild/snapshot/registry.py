"""The snapshotters rootbuild knows, in preference order, and the choice among them.

Job: ``SNAPSHOTTERS`` (name -> factory), ``choose_snapshotter`` (the first one whose probe
passes) and ``snapshotter_named`` (the sandbox's lookup of the one the build chose).

Rules:
- The choice is made once per build, lazily: the engine asks at the build's first RUN
  step, so a build without RUN never needs FUSE (or any snapshotter).
- Preference order is the dict's order. Today there is one implementation, the FUSE
  overlay; the kernel's own overlayfs inside the build's user namespace is the next
  candidate where the kernel allows it, and goes before it here. The overlay conformance
  suite (tests/integration/test_overlay.py) runs once per entry.
- When none can work, the error names every snapshotter and why (with its fix).
"""

from __future__ import annotations

from collections.abc import Callable

from rootbuild.errors import SandboxError
from rootbuild.snapshot.base import Snapshotter
from rootbuild.snapshot.fuse import FuseSnapshotter

SNAPSHOTTERS: dict[str, Callable[[], Snapshotter]] = {FuseSnapshotter.name: FuseSnapshotter}


def choose_snapshotter() -> Snapshotter:
    """The first usable snapshotter in preference order; its ``name`` travels with each
    step's spec to the sandbox, which asks ``snapshotter_named``."""
    reasons = []
    for name, factory in SNAPSHOTTERS.items():
        snapshotter = factory()
        reason = snapshotter.probe()
        if reason is None:
            return snapshotter
        reasons.append(f"{name}: {reason}")
    if not reasons:
        raise SandboxError("choose snapshotter: none is registered")
    raise SandboxError("choose snapshotter: none can work here: " + "; ".join(reasons))


def helper_modules() -> tuple[str, ...]:
    """The modules every snapshotter's helper processes run (the FUSE server), for the
    build's zygote to import once (``sandbox/zygote.py``)."""
    found = (getattr(factory, "helper_modules", ()) for factory in SNAPSHOTTERS.values())
    return tuple(dict.fromkeys(name for names in found for name in names))


def snapshotter_named(name: str) -> Snapshotter:
    try:
        factory = SNAPSHOTTERS[name]
    except KeyError:
        raise SandboxError(f"mount step root: unknown snapshotter {name!r}") from None
    return factory()
