"""Progress output: warnings go to the progress stream, and the live view keeps them."""

from __future__ import annotations

import io

from rootbuild.progress import PlainProgress, TtyProgress


def test_plain_warning_goes_to_the_progress_stream(capsys: object) -> None:
    stream = io.StringIO()
    progress = PlainProgress(stream=stream)
    progress.warn("something odd")
    assert stream.getvalue() == "WARNING: something odd\n"


def test_quiet_progress_still_shows_warnings() -> None:
    stream = io.StringIO()
    PlainProgress(stream=stream, quiet=True).warn("kept")
    assert stream.getvalue() == "WARNING: kept\n"


def _screen(raw: str) -> list[str]:
    """The lines a terminal shows after ``raw`` (cursor-up-N + erase-below handled)."""
    lines: list[str] = []
    i = 0
    while i < len(raw):
        if raw.startswith("\x1b[", i):
            end = raw.index("F", i) if "F" in raw[i:i + 8] else -1
            if end > 0:
                lines = lines[: len(lines) - int(raw[i + 2:end])]
                i = end + 1
                continue
            assert raw.startswith("\x1b[J", i)
            i += 3
            continue
        nl = raw.index("\n", i)
        lines.append(raw[i:nl])
        i = nl + 1
    return lines


def test_tty_warning_survives_the_next_redraw() -> None:
    # Before: warn() wrote to sys.stderr behind the live view's back; the next redraw
    # moved the cursor up over it and erased it.
    stream = io.StringIO()
    progress = TtyProgress(stream=stream)
    step = progress.start("[stage-0 2/2] RUN make")
    progress.warn("RUN maps only root to your user")
    progress.output(step, "compiling")
    progress.done(step)
    screen = _screen(stream.getvalue())
    assert "WARNING: RUN maps only root to your user" in screen
    assert screen[-1].startswith(" => [stage-0 2/2] RUN make ")
