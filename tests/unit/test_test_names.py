"""The test suite's own layout: pytest imports test modules by basename (rootdir-relative
``tests/unit`` and ``tests/integration`` are not packages), so a unit and an integration
test module with the same name stop collection of the whole suite."""

from __future__ import annotations

from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent


def test_no_two_test_modules_share_a_basename() -> None:
    seen: dict[str, Path] = {}
    clashes: list[str] = []
    for path in sorted(TESTS.rglob("test_*.py")):
        if path.name in seen:
            clashes.append(f"{seen[path.name].relative_to(TESTS)} and {path.relative_to(TESTS)}")
        seen.setdefault(path.name, path)
    assert clashes == []
