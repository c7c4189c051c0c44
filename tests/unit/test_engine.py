"""The stage engine driven through its seams' fakes (``rootbuild.testing``): no kernel, no
FUSE, no network. A real store in a temp dir; the executor, base images and exporter are
fakes that record what the engine asked of them."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from rootbuild.engine.build import build
from rootbuild.engine.options import BuildOptions
from rootbuild.engine.seams import Seams
from rootbuild.errors import (
    ContextError,
    DockerfileError,
    ImageError,
    RootbuildError,
    SandboxError,
    StepError,
    UsageError,
)
from rootbuild.image.refs import parse_output
from rootbuild.image.rootfs import RootfsView
from rootbuild.image.store import Store
from rootbuild.platform import Platform
from rootbuild.sandbox.spec import StepSpec
from rootbuild.testing.fakes import (
    FakeBaseImages,
    FakeExecutor,
    FakeExporter,
    FakeRun,
    RecordingProgress,
)

AMD64 = Platform("linux", "amd64")


class Rig:
    """One store, one context dir, the fakes; ``build`` runs the real engine over them."""

    def __init__(self, tmp: Path) -> None:
        self.store = Store.open(tmp / "store")
        self.context = tmp / "ctx"
        self.context.mkdir()
        self.images = FakeBaseImages(self.store)
        self.executor = FakeExecutor()
        self.exporter = FakeExporter()
        self.progress = RecordingProgress()

    def write(self, files: dict[str, str]) -> None:
        for name, text in files.items():
            path = self.context / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)

    def build(self, dockerfile: str, **options: object) -> tuple[Path, object]:
        self.write({"Dockerfile": dockerfile})
        self.progress = RecordingProgress()
        options.setdefault("jobs", 2)
        opts = BuildOptions(context_dir=self.context, target_platform=AMD64,
                            **options)  # type: ignore[arg-type]
        seams = Seams(self.executor, self.images, self.exporter, lambda: "fake")
        result = trio.run(lambda: build(opts, self.store, self.progress, seams=seams))
        return self.context, result

    def fails(self, dockerfile: str, error: type[Exception], match: str,
              **options: object) -> RootbuildError:
        before = self.snapshot()
        with pytest.raises(error, match=match) as info:
            self.build(dockerfile, **options)
        assert self.snapshot() == before, "a failed build changed the store"
        assert isinstance(info.value, RootbuildError)
        return info.value

    def snapshot(self) -> set[str]:
        """Everything the store holds except its scratch and lock files."""
        root = self.store.root
        return {
            str(p.relative_to(root)) for p in root.rglob("*")
            if p.relative_to(root).parts[0] not in ("tmp", "locks")
            and not p.name.endswith((".lock", "-wal", "-shm"))
        }

    def view(self, result: object) -> RootfsView:
        from rootbuild.engine.build import BuildResult
        from rootbuild.engine.layers import Layer, LayerTrees

        assert isinstance(result, BuildResult)
        image = result.image
        with self.store.stage() as staging:
            trees = LayerTrees(self.store, staging)
            layers = [Layer(d, i) for d, i in zip(image.layers, image.diff_ids, strict=True)]
            return trees.view(layers)

    def commands(self) -> list[str]:
        return [spec.argv[-1] for spec in self.executor.specs]


@pytest.fixture
def rig(tmp_path: Path) -> Rig:
    return Rig(tmp_path)


def _script(table: dict[str, FakeRun]) -> FakeExecutor:
    def script(spec: StepSpec) -> FakeRun:
        return table.get(spec.argv[-1], FakeRun())

    return FakeExecutor(script)


# -- ONBUILD (bug 1) ---------------------------------------------------------------------------


def test_onbuild_copy_from_a_stage_builds_that_stage(rig: Rig) -> None:
    # Before: the graph never saw the trigger's --from, pruned "helper", and the trigger
    # ended in a KeyError from StagePlan.resolve.
    rig.images.add("onbuild-base", {"base.txt": b"base\n"},
                   onbuild=("COPY --from=helper /h.txt /from-helper.txt", "RUN make"))
    rig.write({"h.txt": "helper\n"})
    rig.executor = _script({"make": FakeRun(files={"made": b"made\n"})})
    _, result = rig.build(
        "FROM scratch AS helper\nCOPY h.txt /h.txt\n"
        "FROM onbuild-base\nRUN echo own\n"
    )
    view = rig.view(result)
    assert view.open("from-helper.txt").read() == b"helper\n"
    assert view.open("made").read() == b"made\n"
    assert rig.commands() == ["make", "echo own"]  # triggers run first
    labels = [e[1] for e in rig.progress.of("done")]
    assert "[ONBUILD COPY --from=helper /h.txt /from-helper.txt]" in labels
    assert "[ONBUILD RUN make]" in labels
    config = result.image.config_json  # type: ignore[attr-defined]
    assert not config["config"].get("OnBuild")  # triggers are not inherited


def test_onbuild_of_a_parent_stage_runs_in_the_child(rig: Rig) -> None:
    rig.write({"a.txt": "a\n"})
    _, result = rig.build(
        "FROM scratch AS parent\nONBUILD COPY a.txt /a.txt\n"
        "FROM parent\nCOPY a.txt /again.txt\n"
    )
    view = rig.view(result)
    assert view.open("a.txt").read() == b"a\n"
    assert view.open("again.txt").read() == b"a\n"


def test_onbuild_from_names_nothing_is_a_located_error(rig: Rig) -> None:
    rig.images.add("onbuild-base", {}, onbuild=("COPY --from=nowhere /x /x",))
    error = rig.fails("FROM scratch\nRUN true\nFROM onbuild-base\n", ImageError,
                      r"^Dockerfile:3: pull nowhere: no such image")
    assert "nowhere" in str(error)
    assert rig.executor.specs == []  # nothing ran before the error


def test_onbuild_run_mount_missing_a_required_secret_is_refused_before_any_step(
    rig: Rig,
) -> None:
    rig.images.add("onbuild-base", {}, onbuild=(
        "RUN --mount=from=helper,target=/h --mount=type=secret,id=tok,required true",))
    rig.fails(
        "FROM scratch AS helper\nRUN true\nFROM onbuild-base\nRUN echo\n", StepError,
        r"^Dockerfile:3: RUN --mount=type=secret: secret tok: not found$",
    )
    assert rig.executor.specs == []


def test_onbuild_from_is_refused_as_a_trigger(rig: Rig) -> None:
    rig.images.add("bad-base", {}, onbuild=("FROM alpine",))
    rig.fails("FROM bad-base\n", DockerfileError,
              r"^Dockerfile:1: ONBUILD FROM alpine: FROM isn't allowed as an ONBUILD trigger$")


# -- the step cache ------------------------------------------------------------------------------


def test_an_unchanged_rebuild_is_cached_and_runs_nothing(rig: Rig) -> None:
    rig.write({"app.txt": "v1\n"})
    dockerfile = "FROM scratch\nCOPY app.txt /app.txt\nRUN build\n"
    rig.executor = _script({"build": FakeRun(files={"out": b"1\n"})})
    _, first = rig.build(dockerfile)
    assert rig.commands() == ["build"]
    _, second = rig.build(dockerfile)
    assert rig.commands() == ["build"]  # not run again
    assert [e[1] for e in rig.progress.of("cached")] == [
        "[stage-0 2/3] COPY app.txt /app.txt", "[stage-0 3/3] RUN build"]
    assert second.image.manifest == first.image.manifest  # type: ignore[attr-defined]


def test_a_changed_context_file_misses_from_that_step_on(rig: Rig) -> None:
    rig.write({"app.txt": "v1\n", "other.txt": "o\n"})
    dockerfile = "FROM scratch\nCOPY other.txt /o\nCOPY app.txt /app.txt\nRUN build\n"
    rig.build(dockerfile)
    rig.write({"app.txt": "v2\n"})
    _, result = rig.build(dockerfile)
    assert [e[1] for e in rig.progress.of("cached")] == ["[stage-0 2/4] COPY other.txt /o"]
    assert rig.commands() == ["build", "build"]
    assert rig.view(result).open("app.txt").read() == b"v2\n"


def test_no_cache_runs_every_step_again(rig: Rig) -> None:
    rig.build("FROM scratch\nRUN build\n")
    rig.build("FROM scratch\nRUN build\n", no_cache=True)
    assert rig.commands() == ["build", "build"]
    assert rig.progress.of("cached") == []


# -- error locations -----------------------------------------------------------------------------


def test_a_failing_run_names_its_line_and_marks_the_step(rig: Rig) -> None:
    rig.executor = _script({"false": FakeRun(exit_code=3)})
    rig.fails("FROM scratch\nRUN true\nRUN false\n", StepError,
              r'^Dockerfile:3: RUN: process "/bin/sh -c false" did not complete '
              r"successfully: exit code: 3")
    failed = rig.progress.of("failed")
    assert [e[1] for e in failed] == ["[stage-0 3/3] RUN false"]


def test_a_sandbox_error_without_location_gets_the_runs_line(rig: Rig) -> None:
    rig.executor = _script({"x": FakeRun(error=SandboxError("map ids: newuidmap failed"))})
    rig.fails("FROM scratch\nRUN x\n", SandboxError,
              r"^Dockerfile:2: RUN: map ids: newuidmap failed$")
    assert rig.progress.of("failed")[0][1] == "[stage-0 2/2] RUN x"


def test_a_missing_copy_source_names_its_line(rig: Rig) -> None:
    rig.fails("FROM scratch\nCOPY missing.txt /m\n", ContextError, r"^Dockerfile:2: COPY: ")


def test_an_unknown_base_image_fails_at_its_from_line(rig: Rig) -> None:
    rig.fails("FROM scratch AS a\nRUN true\nFROM nothing-here\n", ImageError,
              r"^Dockerfile:3: pull nothing-here: no such image")
    assert rig.executor.specs == []


def test_run_output_reaches_progress(rig: Rig) -> None:
    rig.executor = _script({"hello": FakeRun(output=("hi there",))})
    rig.build("FROM scratch\nRUN hello\n")
    assert ("output", "[stage-0 2/2] RUN hello", "hi there") in rig.progress.events


# -- cancellation --------------------------------------------------------------------------------


def test_one_failing_stage_cancels_the_others_and_keeps_nothing(rig: Rig) -> None:
    hanging = trio.Event()  # "fail" ends only once "hang" runs, whichever stage starts first
    rig.executor = _script({"hang": FakeRun(block=True, started=hanging),
                            "fail": FakeRun(exit_code=1, after=hanging)})
    rig.fails(
        "FROM scratch AS slow\nRUN hang\n"
        "FROM scratch AS bad\nRUN fail\n"
        "FROM scratch\nCOPY --from=slow / /\nCOPY --from=bad / /\n",
        StepError, r'^Dockerfile:4: RUN: process "/bin/sh -c fail"', tags=("app:1",),
    )
    assert [spec.argv[-1] for spec in rig.executor.cancelled] == ["hang"]
    assert rig.store.resolve("app:1") is None


# -- features the engine does not execute yet: refused at plan time (bug 7) ----------------------


@pytest.mark.parametrize(
    ("line", "error", "message"),
    [
        ("RUN --mount=type=secret,id=x,required true", StepError,
         r"RUN --mount=type=secret: secret x: not found"),
        ("RUN --security=insecure true", StepError,
         r"RUN --security=insecure: entitlement security.insecure is not allowed; "
         r"fix: build with --allow security.insecure"),
    ],
)
def test_unsupported_flags_fail_before_any_step_runs(
    rig: Rig, line: str, error: type[Exception], message: str
) -> None:
    rig.write({"a.txt": "a\n"})
    rig.fails(f"FROM scratch\nRUN apt-get update\nCOPY a.txt /a\n{line}\n", error,
              rf"^Dockerfile:4: {message}$")
    assert rig.executor.specs == []  # the minutes of apt-get before it never ran
    assert rig.progress.of("start") == []


# -- outputs: one exporter, keyed by transport -----------------------------------------------------


def test_outputs_and_push_go_through_the_exporter(rig: Rig, tmp_path: Path) -> None:
    rig.write({"a.txt": "a\n"})
    _, result = rig.build(
        "FROM scratch\nCOPY a.txt /a.txt\n", tags=("reg.example/app:1",), push=True,
        outputs=(parse_output(f"dir:{tmp_path / 'out'}"),
                 parse_output(f"oci:{tmp_path / 'layout'}")),
    )
    kinds = [(e.output.transport, e.output.path) for e in rig.exporter.exports]
    assert kinds == [("dir", str(tmp_path / "out")), ("oci", str(tmp_path / "layout")),
                     ("docker", "reg.example/app:1")]
    assert rig.exporter.exports[0].paths == ("a.txt",)
    digest = result.image.manifest.digest  # type: ignore[attr-defined]
    assert result.pushed == (("reg.example/app:1", digest),)  # type: ignore[attr-defined]


# -- options checked for every caller ------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"push": True}, r"--push needs at least one -t NAME"),
        ({"proc": "host-bind", "untrusted": True}, r"--proc=host-bind is refused"),
        ({"jobs": 0}, r"--jobs must be at least 1"),
        ({"network": "bridge"}, r"unknown --network"),
    ],
)
def test_options_are_validated_by_the_engine(
    rig: Rig, options: dict[str, object], message: str
) -> None:
    rig.fails("FROM scratch\n", UsageError, message, **options)


# -- two builds in one process share nothing ---------------------------------------------------


def test_two_builds_at_once_in_one_process(tmp_path: Path) -> None:
    rigs = [Rig(tmp_path / "one"), Rig(tmp_path / "two")]
    for i, r in enumerate(rigs):
        (tmp_path / ("one", "two")[i]).mkdir(exist_ok=True)
        r.write({"Dockerfile": f"FROM scratch\nRUN step{i}\n"})
        r.executor = FakeExecutor(lambda spec: FakeRun(files={spec.argv[-1]: b"x"}))

    async def both() -> list[object]:
        out: list[object] = [None, None]

        async def one(i: int) -> None:
            r = rigs[i]
            opts = BuildOptions(context_dir=r.context, target_platform=AMD64)
            out[i] = await build(opts, r.store, r.progress,
                                 seams=Seams(r.executor, r.images, r.exporter, lambda: "fake"))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(one, 0)
            nursery.start_soon(one, 1)
        return out

    results = trio.run(both)
    for i, r in enumerate(rigs):
        assert r.commands() == [f"step{i}"]
        assert [e.path for e in r.view(results[i]).walk() if e.path] == [f"step{i}"]
