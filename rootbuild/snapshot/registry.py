"""The snapshotters rootbuild knows, in preference order, and the choice among them.

Job: ``SNAPSHOTTERS`` (name -> factory), ``choose_snapshotter`` (the first one whose probe
passes) and ``snapshotter_named`` (the sandbox's lookup of the one the build chose).

Rules:
- The choice is made once per build, lazily: the engine asks at the build's first RUN
  step, so a build without RUN never needs FUSE (or any snapshotter).
- ``SNAPSHOTTERS`` names every implementation (``--snapshotter NAME`` picks one); the
  overlay conformance suite (tests/integration/test_overlay.py) runs once per entry.
- ``AUTO`` is the preference order of ``--snapshotter auto``: only implementations that
  pass that whole suite. The kernel overlay (``kernel.py``) does not yet (renames of
  lower directories, hard links across a copy-up, device nodes, disk budgets: see its
  xfails), so auto keeps the FUSE overlay until it does; then it goes first.
- When none can work, the error names every snapshotter and why (with its fix).
"""

from __future__ import annotations

from collections.abc import Callable

from rootbuild.errors import SandboxError
from rootbuild.snapshot.base import Snapshotter
from rootbuild.snapshot.fuse import FuseSnapshotter
from rootbuild.snapshot.kernel import KernelOverlaySnapshotter

SNAPSHOTTERS: dict[str, Callable[[], Snapshotter]] = {
    FuseSnapshotter.name: FuseSnapshotter,
    KernelOverlaySnapshotter.name: KernelOverlaySnapshotter,
}
AUTO: tuple[str, ...] = (FuseSnapshotter.name,)
CHOICES = ("auto", *SNAPSHOTTERS)  # --snapshotter


def choose_snapshotter(wanted: str = "auto") -> Snapshotter:
    """The snapshotter ``wanted`` names (probed), or for "auto" the first usable one in
    ``AUTO`` order; its ``name`` travels with each step's spec to the sandbox, which asks
    ``snapshotter_named``."""
    if wanted != "auto":
        snapshotter = snapshotter_named(wanted)
        reason = snapshotter.probe()
        if reason is not None:
            raise SandboxError(f"use snapshotter {wanted}: {reason}")
        return snapshotter
    reasons = []
    for name in AUTO:
        snapshotter = SNAPSHOTTERS[name]()
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


def explain_choice() -> list[tuple[str, str | None, bool]]:
    """For ``doctor``: every snapshotter's name, its probe's answer and whether auto
    considers it."""
    return [(name, factory().probe(), name in AUTO) for name, factory in SNAPSHOTTERS.items()]


def snapshotter_named(name: str) -> Snapshotter:
    try:
        factory = SNAPSHOTTERS[name]
    except KeyError:
        raise SandboxError(f"mount step root: unknown snapshotter {name!r}") from None
    return factory()
