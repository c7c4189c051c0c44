"""``COPY --parents`` path computation (engine/parents.py): the ``/./`` pivot and which
paths a pattern keeps (Docker's Dockerfile reference, "COPY --parents":
https://docs.docker.com/reference/dockerfile/#copy---parents)."""

from __future__ import annotations

import pytest

from rootbuild.engine.parents import literal_prefix, match_path, outside, selected, split_pivot


@pytest.mark.parametrize(
    ("source", "pivot", "pattern"),
    [
        ("./x/a.txt", ".", "x/a.txt"),
        ("x/a.txt", ".", "x/a.txt"),
        ("./x/./y/*.txt", "x", "y/*.txt"),     # "only parent directories after it"
        ("/usr/./lib/*.so", "usr", "lib/*.so"),  # --from sources are absolute
        ("./x/./y/z", "x", "y/z"),
        ("x/./", "x", "."),
        ("./src/**/*.txt", ".", "src/**/*.txt"),
        ("../x/./y", "../x", "y"),
    ],
)
def test_split_pivot(source: str, pivot: str, pattern: str) -> None:
    assert split_pivot(source) == (pivot, pattern)


def test_outside() -> None:
    assert outside("..") and outside("../x")
    assert not outside("..x") and not outside("x/..y") and not outside(".")


def test_match_path_per_component_and_double_star() -> None:
    assert match_path("y/*.txt", "y/a.txt")
    assert not match_path("y/*.txt", "y/sub/a.txt")  # "*" stays inside one component
    assert not match_path("y/*.txt", "y")
    # "**" matches any number of components, none included (the reference's example)
    for rel in ("src/a.txt", "src/x/b.txt", "src/x/y/c.txt"):
        assert match_path("src/**/*.txt", rel)
    assert not match_path("src/**/*.txt", "src/x/b.md")
    assert match_path(".", "anything/below")


def test_selected_includes_everything_below_a_matched_directory() -> None:
    assert selected("x", "x")
    assert selected("x", "x/deep/file")
    assert selected("*/conf", "app/conf/a.ini")
    assert not selected("x/a.txt", "x")  # a parent on the way is not itself selected
    assert not selected("x/a.txt", "x/b.txt")


@pytest.mark.parametrize(
    ("pattern", "prefix"),
    [
        ("packages/app/*/package.json", "packages/app"),
        ("src/**/*.txt", "src"),
        ("**/x", ""),
        ("x/a.txt", "x/a.txt"),
        ("*.txt", ""),
        ("a/[bc]/d", "a"),
        (".", ""),
    ],
)
def test_literal_prefix_is_where_every_match_lies(pattern: str, prefix: str) -> None:
    assert literal_prefix(pattern) == prefix
