"""``--disk-limit``/``--inode-limit`` in the engine, through the seams' fakes: every RUN
step's spec carries the build's limits (``--untrusted``: the defaults), and a step whose
sandbox reports a hit limit fails with one line naming the limit and the step, whatever its
exit status, leaving the store as it was."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_engine import Rig, _script

from rootbuild.engine.disk_limit import UNTRUSTED_DISK_LIMIT, UNTRUSTED_INODE_LIMIT
from rootbuild.errors import StepError
from rootbuild.testing.fakes import FakeRun

MiB = 1 << 20


@pytest.fixture
def rig(tmp_path: Path) -> Rig:
    return Rig(tmp_path)


def test_each_run_step_gets_what_the_earlier_steps_left(rig: Rig) -> None:
    rig.executor = _script({"a": FakeRun(files={"f": b"x" * 1000, "g": b"y"})})
    rig.build("FROM scratch\nRUN a\nRUN b\n", disk_limit=100 * MiB, inode_limit=50)
    first, second = rig.executor.specs
    assert (first.disk_limit, first.inode_limit) == (100 * MiB, 50)
    # the first layer: two files (1001 bytes) and an entry's header (512) each
    assert (second.disk_limit, second.inode_limit) == (100 * MiB - 1001 - 2 * 512, 48)


def test_a_limit_spent_by_earlier_steps_stops_the_next_before_it_runs(rig: Rig) -> None:
    rig.executor = _script({"a": FakeRun(files={"f": b"x" * 4000})})
    rig.fails("FROM scratch\nRUN a\nRUN b\n", StepError,
              r"^Dockerfile:3: RUN: disk limit 4KB exceeded by the build's earlier steps$",
              disk_limit=4096)
    assert rig.commands() == ["a"]


def test_untrusted_builds_get_the_defaults_and_trusted_ones_none(rig: Rig) -> None:
    rig.build("FROM scratch\nRUN a\n", untrusted=True)
    rig.build("FROM scratch\nRUN b\n")
    assert [(s.disk_limit, s.inode_limit) for s in rig.executor.specs] == [
        (UNTRUSTED_DISK_LIMIT, UNTRUSTED_INODE_LIMIT), (None, None)]


def test_a_step_that_hit_the_limit_fails_naming_it_even_with_status_0(rig: Rig) -> None:
    rig.executor = _script({"fill": FakeRun(exit_code=0, limit_exceeded="disk")})
    rig.fails("FROM scratch\nRUN true\nRUN fill\n", StepError,
              r'^Dockerfile:3: RUN: disk limit 100MB exceeded: process "/bin/sh -c fill" '
              r"\(exit code 0\)$", disk_limit=100 * MiB)


def test_the_inode_limit_is_named_as_such(rig: Rig) -> None:
    rig.executor = _script({"touch": FakeRun(exit_code=1, limit_exceeded="inodes")})
    rig.fails("FROM scratch\nRUN touch\n", StepError,
              r"^Dockerfile:2: RUN: inode limit 50 exceeded: ", inode_limit=50)
