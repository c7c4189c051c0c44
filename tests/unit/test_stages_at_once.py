"""Stages at once through the real engine and its seams' fakes (issue 14, item 3): by
default every stage whose dependencies are built runs, as BuildKit runs every ready
vertex; ``--jobs N`` caps it. A stage is "running" while its RUN step is inside the
executor, so the tests count RUN steps in the executor at the same moment."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import trio

from rootbuild.engine.build import build
from rootbuild.engine.options import BuildOptions
from rootbuild.engine.seams import Seams
from rootbuild.image.store import Store
from rootbuild.platform import Platform
from rootbuild.sandbox.spec import StepResult, StepSpec
from rootbuild.testing.fakes import (
    FakeBaseImages,
    FakeExecutor,
    FakeExporter,
    FakeRun,
    RecordingProgress,
)

AMD64 = Platform("linux", "amd64")

THREE_STAGES = (
    "FROM scratch AS a\nRUN work-a\n"
    "FROM scratch AS b\nRUN work-b\n"
    "FROM scratch AS c\nRUN work-c\n"
    "FROM scratch\nCOPY --from=a /a /a\nCOPY --from=b /b /b\nCOPY --from=c /c /c\n"
)


class GateExecutor(FakeExecutor):
    """A RUN step waits until ``want`` RUN steps are inside the executor at once (or
    ``patience`` seconds passed: a schedule that never gets there must not hang the test),
    then does what the fake does. ``peak`` is the most steps seen inside at once;
    ``order`` says when each step entered and left."""

    def __init__(self, want: int, patience: float) -> None:
        super().__init__(lambda spec: FakeRun(files={f"/{spec.argv[-1][-1]}": b"x\n"}))
        self.want = want
        self.patience = patience
        self.inside = 0
        self.peak = 0
        self.order: list[str] = []
        self.full = trio.Event()

    async def run(self, spec: StepSpec, on_output: Callable[[str], None]) -> StepResult:
        self.inside += 1
        self.peak = max(self.peak, self.inside)
        self.order.append(f"start {spec.argv[-1]}")
        if self.inside >= self.want:
            self.full.set()
        try:
            with trio.move_on_after(self.patience):
                await self.full.wait()
            return await super().run(spec, on_output)
        finally:
            self.inside -= 1
            self.order.append(f"end {spec.argv[-1]}")


def _build(tmp: Path, executor: FakeExecutor, **options: object) -> None:
    context = tmp / "ctx"
    context.mkdir()
    (context / "Dockerfile").write_text(THREE_STAGES)
    store = Store.open(tmp / "store")
    opts = BuildOptions(context_dir=context, target_platform=AMD64, tags=("app:1",),
                        **options)  # type: ignore[arg-type]
    seams = Seams(executor, FakeBaseImages(store), FakeExporter(), lambda: "fake")
    trio.run(lambda: build(opts, store, RecordingProgress(), seams=seams))
    assert store.resolve("app:1") is not None


def test_default_starts_all_three_independent_stages_before_any_ends(tmp_path: Path) -> None:
    assert BuildOptions(tmp_path).jobs is None  # the default: no cap
    # patience only keeps a broken schedule (two at once) from hanging: it then fails below
    gate = GateExecutor(want=3, patience=60)
    _build(tmp_path, gate)
    assert gate.peak == 3
    assert [line.split()[0] for line in gate.order[:3]] == ["start"] * 3


@pytest.mark.parametrize("jobs", [2, 3])
def test_jobs_caps_the_stages_at_once(tmp_path: Path, jobs: int) -> None:
    gate = GateExecutor(want=jobs, patience=60)
    _build(tmp_path, gate, jobs=jobs)
    assert gate.peak == jobs


def test_jobs_one_serialises(tmp_path: Path) -> None:
    # Each step would wait for a second one; with --jobs 1 none ever comes, so each goes
    # on alone after a short patience, and the steps never overlap.
    gate = GateExecutor(want=2, patience=0.2)
    _build(tmp_path, gate, jobs=1)
    assert gate.peak == 1
    assert [line.split()[0] for line in gate.order] == ["start", "end"] * 3
