"""The pure helpers of bench/service_scale.py that docs/service-scale.md's numbers rest on:
the bench user's subordinate-id blocks (placed past every user's range and past
scripts/test.sh's space), and the concurrency computed from intervals and job logs."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

SPAN = 65536


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    path = Path(__file__).resolve().parents[2] / "bench" / "service_scale.py"
    spec = importlib.util.spec_from_file_location("service_scale", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_blocks_count_whole_blocks_of_the_user_by_name_or_uid(bench: ModuleType) -> None:
    text = (f"rbbench:200000:{SPAN}\nother:300000:{3 * SPAN}\n1234:900000:{2 * SPAN + 5}\n"
            "# comment\nbroken line\n")
    assert bench.subid_blocks(text, "rbbench", 1234) == 3
    assert bench.subid_blocks(text, "nobody", 999) == 0


def test_free_start_is_past_every_range_and_past_the_test_users_space(
        bench: ModuleType) -> None:
    test_end = 100000 + 2000 * SPAN  # scripts/test.sh: 100000 + k * 65536, k < 2000
    assert bench.free_start("a:100000:65536\n", "") == -(-test_end // SPAN) * SPAN
    high = test_end + 10 * SPAN + 7
    start = bench.free_start(f"a:{test_end}:{10 * SPAN + 7}\n", f"b:100000:{SPAN}\n")
    assert start >= high and start % SPAN == 0 and start - high < SPAN


def test_overlap_counts_the_most_open_intervals_and_their_time_average(
        bench: ModuleType) -> None:
    # two jobs at once for 2 s of a 4 s window, one for the other 2 s
    most, avg = bench.overlap([(0.0, 3.0), (1.0, 3.0), (3.0, 4.0)], 0.0, 4.0)
    assert most == 2
    assert avg == pytest.approx((3 + 2 + 1) / 4)
    assert bench.overlap([], 0.0, 1.0) == (0, 0.0)


def test_run_steps_pairs_each_run_line_with_its_done(bench: ModuleType) -> None:
    entries = [
        ("1000-0", "#1 [stage-0 1/4] FROM scratch\n#1 DONE\n#2 [stage-0 2/4] RUN echo a"),
        ("1200-0", "#2 a\n#2 DONE\n#3 [stage-0 3/4] RUN false"),
        ("1600-0", "#3 ERROR exit 1\n#4 [stage-0 4/4] COPY x /\n#4 DONE"),
    ]
    assert bench.run_steps(entries) == [(1.0, 1.2), (1.2, 1.6)]
