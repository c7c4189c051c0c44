"""TEMPORARY adapter until sandbox.run grows SandboxExecutor."""

from __future__ import annotations

from collections.abc import Callable

from rootbuild.sandbox.idmap import IdMapPlan
from rootbuild.sandbox.run import run_step
from rootbuild.sandbox.spec import StepResult, StepSpec


class SandboxExecutor:
    def __init__(self, idmap: IdMapPlan) -> None:
        self.idmap = idmap

    async def run(self, spec: StepSpec, on_output: Callable[[str], None]) -> StepResult:
        return await run_step(spec, on_output)
