"""COPY destination rules on an empty image (no layers): which paths a layer gets."""

from __future__ import annotations

import io
import re
from collections.abc import Iterator

import pytest

from rootbuild.engine.chmod import parse_chmod
from rootbuild.engine.copy import CopyPlan, Source, SourceItem, copy_entries
from rootbuild.errors import DockerfileError, Location
from rootbuild.image.rootfs import RootfsView

WHERE = Location("Dockerfile", 3)


def file_source(name: str, data: bytes = b"x", mode: int = 0o644) -> Source:
    def items() -> Iterator[SourceItem]:
        yield SourceItem("", "file", mode, 100, len(data), opener=lambda: io.BytesIO(data))

    return Source(name, False, items)


def dir_source(name: str) -> Source:
    def items() -> Iterator[SourceItem]:
        yield SourceItem("", "dir", 0o750, 100)
        yield SourceItem("a", "file", 0o600, 100, 1, opener=lambda: io.BytesIO(b"a"))
        yield SourceItem("sub", "dir", 0o700, 100)
        yield SourceItem("sub/link", "symlink", 0o777, 100, linkname="../a")

    return Source(name, True, items)


def paths(plan: CopyPlan) -> dict[str, tuple[str, int, int, int]]:
    return {
        e.path: (e.kind, e.mode, e.uid, e.gid) for e in copy_entries(plan, RootfsView([]), WHERE)
    }


def test_file_to_new_name_creates_parents() -> None:
    got = paths(CopyPlan([file_source("f")], "/opt/app/conf", None, None, now=5))
    assert got == {
        "opt": ("dir", 0o755, 0, 0),
        "opt/app": ("dir", 0o755, 0, 0),
        "opt/app/conf": ("file", 0o644, 0, 0),
    }


def test_file_into_directory_keeps_its_name() -> None:
    got = paths(CopyPlan([file_source("f")], "/opt/", None, None, now=5))
    assert set(got) == {"opt", "opt/f"}


def test_directory_copies_its_contents_with_chown_and_chmod() -> None:
    got = paths(CopyPlan([dir_source("src")], "/dst", (33, 44), parse_chmod("0640", WHERE), now=5))
    assert got["dst/a"] == ("file", 0o640, 33, 44)
    assert got["dst/sub"] == ("dir", 0o640, 33, 44)
    assert got["dst/sub/link"] == ("symlink", 0o777, 33, 44)
    assert "dst/src" not in got


def test_several_sources_need_a_directory_destination() -> None:
    plan = CopyPlan([file_source("a"), file_source("b")], "/dst", None, None, now=5)
    with pytest.raises(DockerfileError, match=re.escape("Dockerfile:3: when using COPY")):
        copy_entries(plan, RootfsView([]), WHERE)
    ok = paths(CopyPlan([file_source("a"), file_source("b")], "/dst/", None, None, now=5))
    assert {"dst/a", "dst/b"} <= set(ok)

