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


def test_copy_layers_count_against_the_builds_limit(rig: Rig) -> None:
    """A COPY layer the build writes is charged as a RUN layer is: the next RUN step gets
    what is left (2 files of 1000 bytes and their headers; the directory entry and its
    header too); a cached COPY is not new data and is not charged again."""
    rig.write({"a.txt": "x" * 1000, "b.txt": "y" * 1000})
    rig.build("FROM scratch\nCOPY a.txt b.txt /d/\nRUN a\n", disk_limit=100 * MiB,
              inode_limit=50)
    spec = rig.executor.specs[-1]
    assert spec.disk_limit is not None and spec.inode_limit is not None
    charged = 100 * MiB - spec.disk_limit
    assert 2 * (1000 + 512) <= charged <= 2 * (1000 + 512) + 2 * 512, charged
    assert 50 - spec.inode_limit in (2, 3)  # the files, and /d/ when the layer holds it
    rig.build("FROM scratch\nCOPY a.txt b.txt /d/\nRUN a2\n", disk_limit=100 * MiB,
              inode_limit=50)
    assert rig.executor.specs[-1].disk_limit == 100 * MiB  # the COPY came from the cache


def test_a_copy_over_the_limit_fails_at_its_line_and_writes_nothing(rig: Rig) -> None:
    rig.write({"big.bin": "z" * 8000})
    before = rig.snapshot()
    rig.fails("FROM scratch\nCOPY big.bin /\nRUN a\n", StepError,
              r"^Dockerfile:2: COPY: disk limit 4KB exceeded by the build's layers$",
              disk_limit=4096)
    rig.fails("FROM scratch\nADD big.bin /\n", StepError,
              r"^Dockerfile:2: ADD: disk limit 4KB exceeded by the build's layers$",
              disk_limit=4096)
    assert rig.commands() == []
    assert rig.snapshot() == before
