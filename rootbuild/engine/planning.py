"""The plan a build runs: the pure plan, with every stage's ONBUILD triggers in it, and
checked against what this engine executes before any step runs.

Rules:
- Triggers come from the base, so the images stages are built FROM are fetched first
  (concurrently, each once: ``BaseImages``), as BuildKit resolves every base's config
  before it converts the Dockerfile. Planning again with the triggers can make more
  stages needed (a trigger's ``COPY --from=<stage>``); their bases are fetched in turn
  until nothing new is needed.
- A base that cannot be fetched fails at its ``FROM`` line; a feature the engine does
  not execute yet fails at its own line (``stages.features``), both before any step runs.
"""

from __future__ import annotations

from collections.abc import Mapping

import trio

from rootbuild.dockerfile.instructions import Dockerfile
from rootbuild.engine.seams import BaseImages
from rootbuild.errors import RootbuildError
from rootbuild.image.oci import StoredImage
from rootbuild.platform import Platform
from rootbuild.stages.config import ImageConfig
from rootbuild.stages.evaluate import onbuild_triggers
from rootbuild.stages.features import check_supported
from rootbuild.stages.graph import StageBase
from rootbuild.stages.onbuild import stage_triggers, with_triggers
from rootbuild.stages.plan import BuildPlan, StagePlan, plan
from rootbuild.stages.scheduler import unwrap_group

#: what this engine carries out beyond plain RUN/COPY/ADD (``stages.features`` names)
SUPPORTED: frozenset[str] = frozenset({
    "copy.parents", "chmod.symbolic", "source.remote", "run.heredoc.shebang",
    "run.mount.bind", "run.mount.tmpfs", "run.mount.cache",
    "run.mount.secret", "run.mount.ssh",  # engine/run_mounts.py, engine/secrets.py
    "run.security.insecure",  # an entitlement: engine/entitlements.py
})


async def plan_build(
    dockerfile: Dockerfile, base_images: BaseImages, *, target: str | None,
    build_args: Mapping[str, str], target_platform: Platform, build_platform: Platform,
    supported: frozenset[str] = SUPPORTED, contexts: Mapping[str, StageBase] | None = None,
) -> BuildPlan:
    """The plan of ``dockerfile`` with its triggers (see the module rules)."""
    triggers: dict[int, tuple[str, ...]] = {}
    while True:
        the_plan = plan(
            with_triggers(dockerfile, triggers), target=target, build_args=build_args,
            target_platform=target_platform, build_platform=build_platform,
            contexts=contexts,
        )
        new = [stage for stage in the_plan.stages if stage.index not in triggers]
        if not new:
            check_supported(the_plan, supported)
            return the_plan
        images = await fetch_bases(new, base_images)
        for stage in new:
            if stage.base.stage is not None:
                parent = the_plan.stage(stage.base.stage)
                # a stage a named context replaced has no Dockerfile triggers to pass on
                triggers[stage.index] = () if parent.replaced else stage_triggers(
                    dockerfile.stages[stage.base.stage])
            elif stage.index in images:
                config = ImageConfig.from_oci(images[stage.index].config_json)
                triggers[stage.index] = onbuild_triggers(config)
            else:  # scratch
                triggers[stage.index] = ()


async def fetch_bases(
    stages: list[StagePlan], base_images: BaseImages
) -> dict[int, StoredImage]:
    """The base image of every stage of ``stages`` built FROM an image, fetched at once;
    the first failure, located at its FROM line, cancels the rest."""
    found: dict[int, StoredImage] = {}

    async def fetch(stage: StagePlan) -> None:
        assert stage.base.image is not None
        try:
            found[stage.index] = await base_images.get(stage.base.image, stage.platform)
        except RootbuildError as exc:
            if exc.location is not None:
                raise
            raise type(exc)(exc.message, stage.from_.location) from exc

    try:
        async with trio.open_nursery() as nursery:
            for stage in stages:
                if stage.base.image is not None and not stage.base.is_scratch:
                    nursery.start_soon(fetch, stage)
    except ExceptionGroup as group:
        raise unwrap_group(group) from None
    return found
