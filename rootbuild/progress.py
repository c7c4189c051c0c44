"""Build progress for people: one line per step in plain mode, a live view on a terminal.

Rules:
- Progress and warnings go to the progress stream (stderr by default); stdout is kept for
  results (`-q` prints the image ID). Nothing here writes to ``sys.stderr`` directly.
- Plain mode prints BuildKit-like lines: ``#3 [build 2/4] COPY a /b`` then ``#3 DONE 0.1s``.
- The tty mode redraws the running steps in place and leaves the same finished lines behind.
- Nothing here decides anything about the build; the builder calls these methods.
"""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Protocol, TextIO


class Progress(Protocol):
    def start(self, label: str) -> int: ...
    def done(self, step: int, *, cached: bool = False) -> None: ...
    def failed(self, step: int, error: str) -> None: ...
    def output(self, step: int, line: str) -> None: ...
    def warn(self, message: str) -> None: ...
    def note(self, message: str) -> None: ...
    def close(self) -> None: ...


@dataclass
class _Step:
    number: int
    label: str
    started: float


@dataclass
class PlainProgress:
    """``--progress=plain``: append-only lines, safe for CI logs."""

    stream: TextIO = field(default_factory=lambda: sys.stderr)
    quiet: bool = False
    _steps: dict[int, _Step] = field(default_factory=dict)
    _counter: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _emit(self, text: str) -> None:
        if not self.quiet:
            with self._lock:
                self.stream.write(text + "\n")
                self.stream.flush()

    def start(self, label: str) -> int:
        with self._lock:
            self._counter += 1
            number = self._counter
            self._steps[number] = _Step(number, label, time.monotonic())
        self._emit(f"#{number} {label}")
        return number

    def _elapsed(self, step: int) -> str:
        started = self._steps[step].started
        return f"{time.monotonic() - started:.1f}s"

    def done(self, step: int, *, cached: bool = False) -> None:
        self._emit(f"#{step} CACHED" if cached else f"#{step} DONE {self._elapsed(step)}")

    def failed(self, step: int, error: str) -> None:
        self._emit(f"#{step} ERROR {error}")

    def output(self, step: int, line: str) -> None:
        self._emit(f"#{step} {self._elapsed(step)} {line}")

    def warn(self, message: str) -> None:
        # shown even with -q, as docker build does: a warning is never progress noise
        with self._lock:
            self.stream.write(f"WARNING: {message}\n")
            self.stream.flush()

    def note(self, message: str) -> None:
        self._emit(f"note: {message}")

    def close(self) -> None:
        pass


@dataclass
class TtyProgress(PlainProgress):
    """``--progress=tty``: the running steps are redrawn in place under the finished lines."""

    _drawn: int = 0

    def _redraw(self, finished: str | None = None) -> None:
        with self._lock:
            out = self.stream
            if self._drawn:
                out.write(f"\x1b[{self._drawn}F\x1b[J")
            if finished is not None:
                out.write(finished + "\n")
            now = time.monotonic()
            running = [s for s in self._steps.values() if s.number in self._running]
            for step in running:
                out.write(f" => {step.label} {now - step.started:.1f}s\n")
            self._drawn = len(running)
            out.flush()

    def __post_init__(self) -> None:
        self._running: set[int] = set()

    def start(self, label: str) -> int:
        with self._lock:
            self._counter += 1
            number = self._counter
            self._steps[number] = _Step(number, label, time.monotonic())
            self._running.add(number)
        self._redraw()
        return number

    def _finish(self, step: int, suffix: str) -> None:
        with self._lock:
            self._running.discard(step)
        self._redraw(f" => {self._steps[step].label} {suffix}")

    def done(self, step: int, *, cached: bool = False) -> None:
        self._finish(step, "CACHED" if cached else self._elapsed(step))

    def failed(self, step: int, error: str) -> None:
        self._finish(step, f"ERROR {error}")

    def output(self, step: int, line: str) -> None:
        self._redraw(f"    {line}")

    def note(self, message: str) -> None:
        self._redraw(f"note: {message}")

    def warn(self, message: str) -> None:
        # above the running steps, so the next redraw keeps it
        self._redraw(f"WARNING: {message}")

    def close(self) -> None:
        self._redraw()


def make_progress(mode: str, *, quiet: bool = False) -> Progress:
    """``auto`` is tty when stderr is a terminal, plain otherwise."""
    if quiet:
        return PlainProgress(quiet=True)
    if mode == "tty" or (mode == "auto" and sys.stderr.isatty()):
        return TtyProgress()
    return PlainProgress()
