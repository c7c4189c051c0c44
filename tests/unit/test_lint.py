"""Build checks in a build (``engine/lint.py``, ``engine/checking.py``) through the fakes:
the base image's Env and platform feed the rules, ``error=true`` stops the build before
any step, ``--check`` builds nothing."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from rootbuild.engine.build import build
from rootbuild.engine.checking import check_build
from rootbuild.engine.lint import render_check, render_summary
from rootbuild.engine.options import BuildOptions, BuildResult
from rootbuild.engine.seams import Seams
from rootbuild.errors import DockerfileError
from rootbuild.image.store import Store
from rootbuild.platform import Platform
from rootbuild.testing.fakes import (
    FakeBaseImages,
    FakeExecutor,
    FakeExporter,
    RecordingProgress,
)

AMD64 = Platform("linux", "amd64")


class World:
    def __init__(self, tmp: Path) -> None:
        self.context = tmp / "ctx"
        self.context.mkdir()
        self.store = Store.open(tmp / "store")
        self.images = FakeBaseImages(self.store)
        self.executor = FakeExecutor()

    def options(self, dockerfile: str) -> BuildOptions:
        (self.context / "Dockerfile").write_text(dockerfile)
        return BuildOptions(context_dir=self.context, target_platform=AMD64)

    def seams(self) -> Seams:
        return Seams(self.executor, self.images, FakeExporter(), lambda: "fake")


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World(tmp_path)


def test_base_env_defines_variables_and_a_foreign_base_is_reported(world: World) -> None:
    world.images.add("app", {}, env=("APP_HOME=/srv",))
    world.images.add("arm", {}, platform=Platform("linux", "arm64"))
    options = world.options(
        "FROM app\nWORKDIR $APP_HOME\nCOPY x $APP_HOM/\n"
        "FROM arm AS other\n"
        "COPY --from=0 / /\n"  # the first stage is built too: its base's Env is known
    )
    report = trio.run(lambda: check_build(options, world.store, RecordingProgress(),
                                          seams=world.seams()))
    assert [(w.rule, w.location.line, w.message) for w in report.warnings] == [
        ("UndefinedVar", 3, "Usage of undefined variable '$APP_HOM' (did you mean $APP_HOME?)"),
        ("InvalidBaseImagePlatform", 4, 'Base image arm was pulled with platform '
         '"linux/arm64", expected "linux/amd64" for current build'),
    ]
    assert world.executor.specs == []
    assert render_check(report).endswith("Check complete, 2 warnings have been found!\n")


def test_error_true_stops_the_build_before_any_step(world: World) -> None:
    options = world.options("# check=error=true\nFROM scratch\nRUN make\nCMD run\n")
    with pytest.raises(DockerfileError, match=r"^Dockerfile:4: lint violation found for "
                                              r"rules: JSONArgsRecommended$"):
        trio.run(lambda: build(options, world.store, RecordingProgress(), seams=world.seams()))
    assert world.executor.specs == []


def test_a_build_returns_its_warnings(world: World) -> None:
    options = world.options("FROM scratch\nRUN make\nCMD run\nMAINTAINER me\n")
    result = trio.run(lambda: build(options, world.store, RecordingProgress(),
                                    seams=world.seams()))
    assert isinstance(result, BuildResult)
    assert [w.rule for w in result.checks] == ["JSONArgsRecommended", "MaintainerDeprecated"]
    assert render_summary(result.checks) == (
        "2 warnings found:\n"
        " - JSONArgsRecommended: JSON arguments recommended for CMD to prevent unintended "
        "behavior related to OS signals (line 3)\n"
        " - MaintainerDeprecated: Maintainer instruction is deprecated in favor of using "
        "label (line 4)\n"
    )
    assert render_summary(()) == ""
