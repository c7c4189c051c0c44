"""RUN's ``#!`` heredoc: the script file the engine hands the sandbox (engine/run_files.py)."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
import trio

from rootbuild.engine.build import build
from rootbuild.engine.options import BuildOptions
from rootbuild.engine.run_files import heredoc_binds
from rootbuild.engine.seams import Seams
from rootbuild.errors import StepError
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


def test_heredoc_binds_write_executable_files_in_a_read_only_tree(tmp_path: Path) -> None:
    binds = heredoc_binds((("/dev/pipes/EOF", "#!/bin/sh\necho hi\n"),), tmp_path / "h")
    assert len(binds) == 1
    bind = binds[0]
    assert (bind.target, bind.readonly, bind.kind, bind.required) == (
        "/dev/pipes", True, "dir", True)
    assert [p.name for p in bind.source.iterdir()] == ["EOF"]  # the script alone
    script = bind.source / "EOF"
    assert script.read_text() == "#!/bin/sh\necho hi\n"
    assert stat.S_IMODE(script.stat().st_mode) == 0o755
    bind.validate()
    assert heredoc_binds((), tmp_path / "none") == ()
    assert not (tmp_path / "none").exists()


@pytest.mark.parametrize("target", ["/dev/pipes/..", "/dev/pipes/", "/dev/pipes/."])
def test_a_heredoc_name_that_is_no_file_name_is_refused(tmp_path: Path, target: str) -> None:
    with pytest.raises(StepError, match=r"^RUN: heredoc name '.*' cannot name a file$"):
        heredoc_binds(((target, "#!/bin/sh\n"),), tmp_path / "h")


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
            for script in bind.source.iterdir():
                mode = stat.S_IMODE(script.stat().st_mode)
                seen.append((f"{bind.target}/{script.name}", script.read_text(), mode))
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


def test_only_targets_inside_dev_are_made_in_the_steps_dev() -> None:
    from rootbuild.sandbox.mounts import in_step_dev

    assert in_step_dev("/dev/pipes/EOF")
    assert in_step_dev("/dev/shm/x")
    assert not in_step_dev("/dev")
    assert not in_step_dev("/dev/")
    assert not in_step_dev("/device/x")
    assert not in_step_dev("/run/secrets/x")
