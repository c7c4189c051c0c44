"""Request statistics of the overlay server (fuse_overlay/stats.py): off unless asked for,
one count per handler call, saved and added up."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from rootbuild.fuse_overlay.stats import (
    STATS_ENV,
    RequestStats,
    count_requests,
    load_dir,
    merge,
    stats_dir,
)


class Ops:
    async def lookup(self, parent: int, name: bytes) -> str:
        return f"{parent}/{name.decode()}"

    async def getattr(self, ino: int) -> int:
        if ino < 0:
            raise ValueError("bad inode")
        return ino


def test_off_unless_the_environment_names_a_directory() -> None:
    assert stats_dir({}) is None
    assert stats_dir({STATS_ENV: ""}) is None
    assert stats_dir({STATS_ENV: "/tmp/x"}) == "/tmp/x"


def test_every_call_is_counted_also_when_the_handler_raises() -> None:
    ops, stats = Ops(), RequestStats()
    count_requests(ops, stats)

    async def main() -> None:
        assert await ops.lookup(1, b"a") == "1/a"
        assert await ops.lookup(2, b"b") == "2/b"
        assert await ops.getattr(3) == 3
        with pytest.raises(ValueError):
            await ops.getattr(-1)

    trio.run(main)
    assert stats.counts == {"lookup": 2, "getattr": 2}
    assert set(stats.ns) == {"lookup", "getattr"}
    assert all(v >= 0 for v in stats.ns.values())


def test_unwrapped_instance_is_untouched() -> None:
    ops = Ops()
    assert "lookup" not in vars(ops)  # off: nothing is wrapped, nothing costs


def test_saved_records_add_up(tmp_path: Path) -> None:
    a, b, view = RequestStats(), RequestStats(), RequestStats()
    a.counts.update({"lookup": 3, "create": 1})
    b.counts.update({"lookup": 2, "write": 5})
    view.counts.update({"lookup": 100})
    for i, (st, ro) in enumerate(((a, False), (b, False), (view, True))):
        path = st.save(tmp_path, ro)
        path.rename(tmp_path / f"fuse-stats-{i}.json")  # one process here: distinct names
    counts, _ = merge(load_dir(tmp_path))
    assert counts == {"lookup": 5, "create": 1, "write": 5}
    counts_all, _ = merge(load_dir(tmp_path, readonly=None))
    assert counts_all["lookup"] == 105
    assert [r["counts"] for r in load_dir(tmp_path, readonly=True)] == [{"lookup": 100}]
