"""The blob origins index (mount hints): record, lookup, bounds, atomic replacement; and
the pull's byte/layer tally (``PullTally``), which shares this file for now."""

from __future__ import annotations

import json
import multiprocessing
import os
from pathlib import Path

from rootbuild.image.store import Store
from rootbuild.registry.origins import (
    MAX_REPOS,
    Origins,
    add_origins,
    parse_origins,
    render_origins,
    repos_for,
)
from rootbuild.registry.pull import PullTally, record_origins

D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64
D3 = "sha256:" + "3" * 64
REG = "127.0.0.1:5000"


# -- pure --------------------------------------------------------------------------------------


def test_record_then_lookup_most_recent_first() -> None:
    blobs = add_origins({}, REG, "one", [D1, D2])
    blobs = add_origins(blobs, REG, "two", [D1])
    assert repos_for(blobs, REG, D1) == ["two", "one"]
    assert repos_for(blobs, REG, D2) == ["one"]
    assert repos_for(blobs, REG, D3) == []
    # Recording the same place again moves it to the front, without a duplicate.
    blobs = add_origins(blobs, REG, "one", [D1])
    assert repos_for(blobs, REG, D1) == ["one", "two"]


def test_lookup_never_crosses_registries_and_excludes_target() -> None:
    blobs = add_origins({}, "docker.io", "library/alpine", [D1])
    blobs = add_origins(blobs, REG, "one", [D1])
    assert repos_for(blobs, "ghcr.io", D1) == []
    assert repos_for(blobs, "docker.io", D1) == ["library/alpine"]
    assert repos_for(blobs, REG, D1, exclude="one") == []


def test_add_returns_new_value() -> None:
    first = add_origins({}, REG, "one", [D1])
    add_origins(first, REG, "two", [D1, D2])
    assert first == {D1: [(REG, "one")]}


def test_bounds_repos_per_blob_and_blobs() -> None:
    blobs: dict[str, list[tuple[str, str]]] = {}
    for n in range(MAX_REPOS + 3):
        blobs = add_origins(blobs, REG, f"r{n}", [D1])
    assert repos_for(blobs, REG, D1) == [f"r{n}" for n in range(MAX_REPOS + 2, 2, -1)]

    blobs = add_origins({}, REG, "a", [D1, D2], max_blobs=2)
    blobs = add_origins(blobs, REG, "a", [D1], max_blobs=2)  # D1 is now the most recent
    blobs = add_origins(blobs, REG, "a", [D3], max_blobs=2)
    assert sorted(blobs) == [D1, D3], "the least recently recorded blob goes first"


def test_render_parse_round_trip_and_garbage() -> None:
    blobs = add_origins(add_origins({}, REG, "one", [D1, D2]), "docker.io", "x/y", [D1])
    assert parse_origins(render_origins(blobs)) == blobs
    assert parse_origins(b"not json") == {}
    assert parse_origins(b'{"version": 99, "blobs": {}}') == {}
    assert parse_origins(b"[]") == {}
    doc = {"version": 1, "blobs": {D1: [["r", "a"], ["bad"], [1, 2]], D2: "x", D3: []}}
    assert parse_origins(json.dumps(doc).encode()) == {D1: [("r", "a")]}


# -- the file ----------------------------------------------------------------------------------


def test_origins_file_record_lookup(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "store")
    origins = Origins(store.root, store.tmp_dir)
    assert origins.lookup(REG, D1) == []  # no file yet
    assert not origins.path.exists()
    origins.record(REG, "one", [D1, D2])
    origins.record(REG, "two", [D2])
    again = Origins(store.root, store.tmp_dir)
    assert again.lookup(REG, D2) == ["two", "one"]
    assert again.lookup(REG, D2, exclude="two") == ["one"]
    assert os.listdir(store.tmp_dir) == [], "the temp file was renamed into place"
    assert json.loads(origins.path.read_text())["version"] == 1


def test_corrupt_file_reads_empty_and_is_replaced(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "store")
    origins = Origins(store.root, store.tmp_dir)
    origins.path.write_bytes(b"\x00garbage{")
    assert origins.lookup(REG, D1) == []
    origins.record(REG, "one", [D1])
    assert origins.lookup(REG, D1) == ["one"]


def test_atomic_replacement_keeps_inode_of_readers(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "store")
    origins = Origins(store.root, store.tmp_dir)
    origins.record(REG, "one", [D1])
    with open(origins.path, "rb") as reader:
        before = os.fstat(reader.fileno()).st_ino
        origins.record(REG, "two", [D2])
        # The reader still sees the complete old document; the path names a new file.
        assert parse_origins(reader.read()) == {D1: [(REG, "one")]}
    assert os.stat(origins.path).st_ino != before


def _record_many(root: str, repo: str) -> None:
    origins = Origins(Path(root), Path(root) / "tmp")
    for n in range(40):
        origins.record(REG, repo, [f"sha256:{n:064x}"])


def test_concurrent_writers_lose_nothing(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "store")
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_record_many, args=(str(store.root), f"r{i}")) for i in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    origins = Origins(store.root, store.tmp_dir)
    for n in range(40):
        assert sorted(origins.lookup(REG, f"sha256:{n:064x}")) == ["r0", "r1", "r2"]


def test_record_failure_is_said_not_raised(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "store")
    store.tmp_dir.rmdir()
    store.tmp_dir.write_text("not a directory")  # the temp file cannot be made, even as root
    said: list[str] = []
    record_origins(store, REG, "one", [D1], said.append)
    assert len(said) == 1 and said[0].startswith("warning: cannot record blob origins in ")
    assert Origins(store.root).lookup(REG, D1) == []


# -- the pull tally ----------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_tally_throttles_and_reports_the_end() -> None:
    clock, said = Clock(), []
    tally = PullTally(2, 120_000_000, said.append, clock=clock)
    tally.add(10_000_000)
    assert said == [], "no line before the interval passed"
    clock.now += 0.5
    tally.add(24_100_000)
    assert said == ["pulling 0/2 layers, 34.1/120.0 MB"]
    clock.now += 0.2
    tally.add(1_000_000)
    assert len(said) == 1, "at most one line every 0.5 s"
    tally.layer_done()
    assert len(said) == 1
    clock.now += 1
    tally.add(84_900_000)
    tally.layer_done()
    assert said[-1] == "pulling 2/2 layers, 120.0/120.0 MB"
    assert said[-2] == "pulling 1/2 layers, 120.0/120.0 MB"


def test_tally_takes_back_a_broken_attempt() -> None:
    clock, said = Clock(), []
    tally = PullTally(1, 2_000_000, said.append, clock=clock)
    tally.add(1_500_000)
    tally.add(-1_500_000)  # the transfer broke off and starts again
    clock.now += 1
    tally.add(2_000_000)
    tally.layer_done()
    assert said == ["pulling 0/1 layers, 2.0/2.0 MB", "pulling 1/1 layers, 2.0/2.0 MB"]
