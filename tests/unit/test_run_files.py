"""RUN's ``#!`` heredoc: the script file the engine hands the sandbox (engine/run_files.py)."""

from __future__ import annotations

import stat
from pathlib import Path

import trio

from rootbuild.engine.build import build
from rootbuild.engine.options import BuildOptions
from rootbuild.engine.run_files import heredoc_binds
from rootbuild.engine.seams import Seams
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


def test_heredoc_binds_write_executable_read_only_files(tmp_path: Path) -> None:
    binds = heredoc_binds((("/dev/pipes/EOF", "#!/bin/sh\necho hi\n"),), tmp_path / "h")
    assert len(binds) == 1
    bind = binds[0]
    assert (bind.target, bind.readonly, bind.kind, bind.required) == (
        "/dev/pipes/EOF", True, "file", True)
    assert bind.source.read_text() == "#!/bin/sh\necho hi\n"
    assert stat.S_IMODE(bind.source.stat().st_mode) == 0o755
    bind.validate()
    assert heredoc_binds((), tmp_path / "none") == ()
    assert not (tmp_path / "none").exists()


def _build(tmp_path: Path, dockerfile: str, executor: FakeExecutor) -> None:
    context = tmp_path / "ctx"
    context.mkdir(exist_ok=True)
    (context / "Dockerfile").write_text(dockerfile)
    store = Store.open(tmp_path / "store")
    opts = BuildOptions(context_dir=context, target_platform=Platform("linux", "amd64"))
    seams = Seams(executor, FakeBaseImages(store), FakeExporter(), lambda: "fake")
    trio.run(lambda: build(opts, store, RecordingProgress(), seams=seams))


def test_shebang_heredoc_runs_the_script_from_dev_pipes(tmp_path: Path) -> None:
    seen: list[tuple[str, str, int]] = []

    def script(spec: StepSpec) -> FakeRun:
        for bind in spec.binds:  # the file exists while the step runs
            mode = stat.S_IMODE(bind.source.stat().st_mode)
            seen.append((bind.target, bind.source.read_text(), mode))
        return FakeRun()

    executor = FakeExecutor(script)
    _build(tmp_path, "FROM scratch\nRUN <<PY\n#!/usr/bin/env python3\nprint(1)\nPY\n",
           executor)
    assert executor.specs[0].argv == ("/bin/sh", "-c", "/dev/pipes/PY")
    assert seen == [("/dev/pipes/PY", "#!/usr/bin/env python3\nprint(1)\n", 0o755)]


def test_heredoc_without_shebang_gets_no_file(tmp_path: Path) -> None:
    executor = FakeExecutor()
    _build(tmp_path, "FROM scratch\nRUN <<EOF\necho hi\nEOF\n", executor)
    assert executor.specs[0].argv == ("/bin/sh", "-c", "echo hi\n")
    assert executor.specs[0].binds == ()
