"""``rootbuild build --check``: plan the build, run the build checks, build nothing.

Rules (https://docs.docker.com/build/checks/): bases are fetched (BuildKit resolves them
to lint too); the result is ``engine.lint``'s report, and the command exits 0 unless
``error=true`` and a check fired.
"""

from __future__ import annotations

from rootbuild.context import load_ignore
from rootbuild.dockerfile.parser import parse_dockerfile
from rootbuild.engine.build import _read_dockerfile, default_seams
from rootbuild.engine.lint import CheckReport, lint
from rootbuild.engine.named_contexts import plan_contexts
from rootbuild.engine.options import BuildOptions
from rootbuild.engine.planning import plan_build
from rootbuild.engine.seams import Seams
from rootbuild.image.store import Store
from rootbuild.platform import host_platform
from rootbuild.progress import Progress
from rootbuild.stages.checks import check_config


async def check_build(options: BuildOptions, store: Store, progress: Progress, *,
                      seams: Seams | None = None) -> CheckReport:
    """``rootbuild build --check``: plan, lint, build nothing."""
    options.validate()
    text, name, path = _read_dockerfile(options)
    dockerfile = parse_dockerfile(text, name)
    check_config(text, name, options.build_args)  # a bad directive fails first
    with store.shared_lock():
        seams = seams or default_seams(store, options, progress)
        the_plan = await plan_build(
            dockerfile, seams.base_images, target=options.target,
            build_args=options.build_args, target_platform=options.target_platform,
            build_platform=host_platform(), contexts=plan_contexts(options.build_contexts),
        )
        ignore = load_ignore(options.context_dir, path or options.context_dir / "Dockerfile")
        return await lint(dockerfile, text, the_plan, options, seams.base_images, ignore)
