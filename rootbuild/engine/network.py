"""The build's RUN network: what ``--network`` (or its absence) means for this build.

Job: ``choose(requested, untrusted, unavailable)`` (pure) turns the build's ``--network``
into the mode its RUN steps get and the warning to print; ``resolve(options)`` asks the
sandbox whether ``isolated`` can run here and applies ``choose`` once, when the build
starts.

Rules (SECURITY.md rule 6: network only as configured; issue 13):
- A trusted build gets ``host`` by default, as ``docker build`` does; ``none`` and
  ``isolated`` on request.
- An untrusted build never gets ``host`` (refused by ``BuildOptions.validate``, as the
  ``network.host`` entitlement is refused for it at each RUN). Its default is
  ``isolated`` (slirp4netns: public egress only; sandbox/usernet.py) where that can run,
  else ``none``, with a warning that says why: never a silent choice.
- ``isolated`` asked for explicitly and impossible here is an error naming the cause.
- ``RUN --network=none|host`` still chooses per step (``engine/stage.py``); ``default``
  means the build's mode.
"""

from __future__ import annotations

import dataclasses

from rootbuild.engine.options import BuildOptions
from rootbuild.errors import UsageError
from rootbuild.sandbox import usernet

#: BuildOptions.network when ``--network`` was not given
DEFAULT = ""


def default_for(untrusted: bool) -> str:
    """The mode a build gets without ``--network``, where ``isolated`` can run."""
    return "isolated" if untrusted else "host"


def choose(requested: str, untrusted: bool, unavailable: str | None) -> tuple[str, str | None]:
    """(mode, warning or None). ``unavailable``: why ``isolated`` cannot run here."""
    if requested == DEFAULT:
        mode = default_for(untrusted)
        if mode == "isolated" and unavailable is not None:
            return "none", (
                f"warning: --untrusted: RUN gets --network=none (no network at all), not "
                f"the isolated public-egress network: {unavailable}"
            )
        return mode, None
    if requested == "isolated" and unavailable is not None:
        raise UsageError(f"build: --network=isolated cannot run here: {unavailable}")
    return requested, None


def resolve(options: BuildOptions) -> tuple[BuildOptions, str | None]:
    """``options`` with the network its RUN steps get, and the warning to print."""
    needs_probe = options.network == "isolated" or (
        options.network == DEFAULT and default_for(options.untrusted) == "isolated")
    unavailable = usernet.unavailable() if needs_probe else None
    mode, warning = choose(options.network, options.untrusted, unavailable)
    return dataclasses.replace(options, network=mode), warning
