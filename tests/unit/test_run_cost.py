"""Issue 14 item 1 (the fixed cost of a RUN): when the engine asks for the sandbox early
(``Executor.prestart``), layer metadata loaded once per process (``image/meta_cache.py``),
and the off-by-default step trace (``runtrace.py``). Timings are measured by
bench/run_cost.py, never asserted here."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from test_engine import Rig

from rootbuild import runtrace
from rootbuild.errors import RootbuildError
from rootbuild.image import meta_cache
from rootbuild.image.layermeta import EntryMeta, LayerMeta


@pytest.fixture
def rig(tmp_path: Path) -> Rig:
    return Rig(tmp_path)


def test_no_cache_build_with_a_run_prestarts_the_sandbox_before_any_step(rig: Rig) -> None:
    rig.write({"a": "x"})
    rig.build("FROM scratch\nCOPY a /a\nRUN make\n", no_cache=True)
    assert rig.executor.prestarts >= 1
    assert len(rig.executor.specs) == 1


def test_a_cache_miss_prestarts_and_an_unchanged_rebuild_does_not(rig: Rig) -> None:
    rig.write({"a": "x"})
    rig.build("FROM scratch\nCOPY a /a\nRUN make\n")
    assert rig.executor.prestarts >= 1  # the COPY missed: the RUN's sandbox starts meanwhile
    rig.executor.prestarts = 0
    rig.build("FROM scratch\nCOPY a /a\nRUN make\n")
    assert rig.executor.prestarts == 0  # every step cached: no sandbox at all
    assert len(rig.executor.specs) == 1


def test_a_sandbox_started_ahead_is_stopped_when_planning_fails(rig: Rig) -> None:
    """--no-cache starts the RUN sandbox before the bases are resolved; a base that does
    not exist ends the build there, and the sandbox (a zygote process in a long-lived
    worker) is stopped all the same."""
    rig.fails("FROM no-such-base\nRUN make\n", RootbuildError, "no-such-base", no_cache=True)
    assert rig.executor.prestarts >= 1
    assert rig.executor.closed


def test_a_build_without_run_never_prestarts(rig: Rig) -> None:
    rig.write({"a": "x"})
    rig.build("FROM scratch\nCOPY a /a\n", no_cache=True)
    assert rig.executor.prestarts == 0


def _meta(path: Path, names: list[str]) -> None:
    LayerMeta.build(
        EntryMeta(path=n, kind="file", mode=0o644, uid=0, gid=0, mtime=0, size=1)
        for n in names).save(path)


def test_meta_cache_returns_the_same_object_until_the_file_changes(tmp_path: Path) -> None:
    meta_cache.clear()
    path = tmp_path / "meta.json"
    _meta(path, ["a"])
    first = meta_cache.load(path)
    assert meta_cache.load(path) is first
    _meta(path, ["a", "b"])  # replaced (a new inode): loaded again
    second = meta_cache.load(path)
    assert second is not first and set(second.entries) == {"a", "b"}
    meta_cache.clear()


def test_meta_cache_keeps_at_most_max_entries(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                              ) -> None:
    meta_cache.clear()
    monkeypatch.setattr(meta_cache, "MAX_ENTRIES", 2)
    paths = [tmp_path / f"m{i}.json" for i in range(3)]
    for p in paths:
        _meta(p, [p.stem])
    first = meta_cache.load(paths[0])
    second = meta_cache.load(paths[1])
    assert meta_cache.load(paths[0]) is first  # used again: now the most recent
    meta_cache.load(paths[2])  # drops the least recently used: paths[1]
    assert meta_cache.load(paths[0]) is first
    assert meta_cache.load(paths[1]) is not second
    meta_cache.clear()


def test_meta_cache_preload_leaves_a_bad_file_to_its_user(tmp_path: Path) -> None:
    meta_cache.clear()
    (tmp_path / "bad.json").write_text("not json")
    meta_cache.preload([str(tmp_path / "bad.json"), str(tmp_path / "missing.json")])
    with pytest.raises(Exception, match="layer metadata"):
        meta_cache.load(tmp_path / "bad.json")


def test_runtrace_is_off_by_default_and_appends_marks_when_on(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(runtrace.ENV, raising=False)
    runtrace.mark("nothing")
    assert list(tmp_path.iterdir()) == []
    trace = tmp_path / "trace.jsonl"
    monkeypatch.setenv(runtrace.ENV, str(trace))
    runtrace.mark("a")
    runtrace.mark("b")
    marks = [json.loads(line) for line in trace.read_text().splitlines()]
    assert [m["n"] for m in marks] == ["a", "b"]
    assert marks[0]["t"] <= marks[1]["t"] and marks[0]["p"] == os.getpid()
    assert trace.stat().st_mode & 0o777 == 0o666  # the inits write it as another uid
