"""Stages at once through the real ``rootbuild`` executable, as the unprivileged build user
(issue 14, item 3): by default every stage whose dependencies are built runs, however few
CPUs there are; ``--jobs N`` caps it. Proven by what the steps themselves recorded (no
wall-clock budget): each stage's RUN writes the system's uptime when it starts and when it
ends into its layer, the final stage copies them all, and the test compares the intervals.

Docker's documentation (https://docs.docker.com/build/buildkit/), on what BuildKit adds
over the legacy builder: "Parallelize building independent build stages."
"""

from __future__ import annotations

import itertools

import pytest
from conftest import Harness
from test_build_run import Image, assert_nothing_left, build, build_to_layout, busybox_context

pytestmark = pytest.mark.integration

# /proc/uptime is the same clock in every step's pid namespace (no time namespace), in
# hundredths of a second. Each stage sleeps SLEEP s between its two readings: long enough
# that three steps started together overlap even when a loaded host starts their sandboxes
# seconds apart.
SLEEP = 4
STAGE = (
    "FROM base AS {s}\n"
    f"RUN mkdir /t && cat /proc/uptime > /t/{{s}}.start && sleep {SLEEP}"
    " && cat /proc/uptime > /t/{s}.end\n"
)
DOCKERFILE = (
    "FROM scratch AS base\nCOPY rootfs/ /\n"
    + "".join(STAGE.format(s=s) for s in "abc")
    + "FROM scratch\n"
    + "".join(f"COPY --from={s} /t/ /t/\n" for s in "abc")
)


def intervals(image: Image) -> dict[str, tuple[float, float]]:
    """Stage -> (uptime at its RUN's start, at its end), as the steps wrote them."""
    def read(name: str) -> float:
        return float(image.text(name).split()[0])

    return {s: (read(f"t/{s}.start"), read(f"t/{s}.end")) for s in "abc"}


def overlap(a: tuple[float, float], b: tuple[float, float]) -> bool:
    return a[0] < b[1] and b[0] < a[1]


def test_three_independent_stages_all_run_at_once_by_default(rb: Harness) -> None:
    ctx = busybox_context(rb, "par", DOCKERFILE)
    layout, _ = build_to_layout(rb, ctx, "--no-cache")
    spans = intervals(Image(rb, layout))
    for s, (start, end) in spans.items():
        assert end - start > SLEEP - 0.02, (s, spans)  # the readings are what the step did
    # Every pair overlaps: the third stage did not wait for one of the first two to end,
    # although this machine has fewer CPUs than stages (or as many: the default does not
    # count them).
    for (x, a), (y, b) in itertools.combinations(spans.items(), 2):
        assert overlap(a, b), (x, y, spans)
    assert max(start for start, _ in spans.values()) < min(end for _, end in spans.values())
    assert_nothing_left(rb, [])


def test_jobs_one_runs_them_one_after_another(rb: Harness) -> None:
    ctx = busybox_context(rb, "ser", DOCKERFILE)
    layout, _ = build_to_layout(rb, ctx, "--no-cache", "--jobs", "1")
    spans = sorted(intervals(Image(rb, layout)).values())
    for first, second in itertools.pairwise(spans):
        assert first[1] <= second[0], spans  # each began after the one before had ended
    assert_nothing_left(rb, [])


def test_jobs_two_caps_it_at_two(rb: Harness) -> None:
    ctx = busybox_context(rb, "two", DOCKERFILE)
    layout, _ = build_to_layout(rb, ctx, "--no-cache", "--jobs", "2")
    spans = intervals(Image(rb, layout))
    pairs = [overlap(a, b) for a, b in itertools.combinations(spans.values(), 2)]
    assert pairs.count(True) >= 1, spans  # two ran together...
    assert not all(pairs), spans  # ...but never all three
    assert max(start for start, _ in spans.values()) >= min(end for _, end in spans.values())
    assert_nothing_left(rb, [])


@pytest.mark.parametrize("value", ["0", "-1", "many"])
def test_bad_jobs_is_refused_before_anything_runs(rb: Harness, value: str) -> None:
    ctx = busybox_context(rb, f"bad{value}", DOCKERFILE)
    before = rb.store_snapshot()
    proc = build(rb, ctx, f"--jobs={value}", check=False)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rootbuild: "), proc.stderr
    assert "--jobs" in lines[0] and "Traceback" not in proc.stderr
    assert rb.store_snapshot() == before


def test_help_says_the_default(rb: Harness) -> None:
    out = rb.run("build", "--help", store=False).stdout
    flat = " ".join(out.split())
    assert "--jobs N build at most N stages at once (default: every stage whose " \
        "dependencies are built, as BuildKit)" in flat


