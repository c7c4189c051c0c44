"""COPY's layer entries over a real merged image (engine/copy.py): ``--link`` computed on an
empty tree, ``--from`` sources that are symlinks, ``--parents`` and ``--exclude`` inside an
image, and symbolic ``--chmod`` on a whole tree."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import pytest

from rootbuild.engine.chmod import parse_chmod
from rootbuild.engine.copy import (
    CopyPlan,
    Source,
    SourceItem,
    copy_entries,
    image_parents_sources,
    image_sources,
)
from rootbuild.errors import ContextError, Location
from rootbuild.image.layer_extract import extract_layer
from rootbuild.image.layer_write import TarEntry, write_layer
from rootbuild.image.layermeta import LayerMeta
from rootbuild.image.rootfs import RootfsView

WHERE = Location("Dockerfile", 4)


def image(tmp: Path, entries: list[TarEntry]) -> RootfsView:
    out = io.BytesIO()
    write_layer(entries, out, compression="none")
    res = extract_layer(io.BytesIO(out.getvalue()), tmp / "layer0",
                        media_type_or_compression="none")
    layers: list[tuple[Path, LayerMeta]] = [(tmp / "layer0", res.meta)]
    return RootfsView(layers)


def f(path: str, data: bytes = b"x", mode: int = 0o644) -> TarEntry:
    return TarEntry(path, "file", mode, size=len(data), source=lambda: io.BytesIO(data))


def d(path: str, mode: int = 0o755) -> TarEntry:
    return TarEntry(path, "dir", mode)


def sym(path: str, target: str) -> TarEntry:
    return TarEntry(path, "symlink", 0o777, linkname=target)


def one_file(name: str) -> Source:
    def items() -> Iterator[SourceItem]:
        yield SourceItem("", "file", 0o644, 100, 1, opener=lambda: io.BytesIO(b"f"))

    return Source(name, False, items)


def one_dir(mode: int) -> Source:
    def items() -> Iterator[SourceItem]:
        yield SourceItem("", "dir", mode, 100)
        yield SourceItem("h", "file", 0o644, 100, 1, opener=lambda: io.BytesIO(b"h"))

    return Source("dir", True, items)


def entries(plan: CopyPlan, view: RootfsView) -> dict[str, tuple[str, int]]:
    return {e.path: (e.kind, e.mode) for e in copy_entries(plan, view, WHERE)}


@pytest.fixture
def base(tmp_path: Path) -> RootfsView:
    return image(tmp_path, [
        d("real"), f("real/keep"), sym("app", "real"), d("bin"),
        f("bin/busybox", b"BB", 0o755), sym("bin/paste", "busybox"), sym("bin/sh", "/bin/busybox"),
        d("opt"), d("opt/x", 0o750), d("opt/x/y"), f("opt/x/y/a.txt"), f("opt/x/y/b.md"),
        f("opt/x/top.txt"),
    ])


def test_link_does_not_read_the_image_below(base: RootfsView) -> None:
    plain = CopyPlan([one_file("f")], "/app/f", None, None, now=5)
    linked = CopyPlan([one_file("f")], "/app/f", None, None, now=5, link=True)
    assert entries(plain, base) == {"real": ("dir", 0o755), "real/f": ("file", 0o644)}
    # the symlink /app is not followed: a fresh directory replaces it in the merged image
    assert entries(linked, base) == {"app": ("dir", 0o755), "app/f": ("file", 0o644)}


def test_link_copies_a_directory_with_its_own_mode(base: RootfsView) -> None:
    plain = CopyPlan([one_dir(0o700)], "/real/", None, None, now=5)
    linked = CopyPlan([one_dir(0o700)], "/real/", None, None, now=5, link=True)
    assert entries(plain, base)["real"] == ("dir", 0o755)  # the image's directory kept
    assert entries(linked, base)["real"] == ("dir", 0o700)


def test_from_symlink_sources_keep_their_name_and_copy_the_file(base: RootfsView) -> None:
    sources = image_sources(base, ["/bin/paste", "/bin/sh"], [], WHERE, "bb")
    assert [s.name for s in sources] == ["paste", "sh"]
    got = entries(CopyPlan(sources, "/out/", None, None, now=5), RootfsView([]))
    assert got["out/paste"] == ("file", 0o755) and got["out/sh"] == ("file", 0o755)
    assert "out/busybox" not in got
    globbed = image_sources(base, ["/bin/pa*"], [], WHERE, "bb")
    assert [s.name for s in globbed] == ["paste"]
    with pytest.raises(ContextError, match=r'^Dockerfile:4: COPY --from=bb: source "/nope\*"'):
        image_sources(base, ["/nope*"], [], WHERE, "bb")


def test_parents_and_exclude_inside_an_image(base: RootfsView) -> None:
    sources = image_parents_sources(base, ["/opt/./x/y/*.txt"], [], WHERE, "bb")
    got = entries(CopyPlan(sources, "/p/", None, None, now=5), RootfsView([]))
    assert got == {"p": ("dir", 0o755), "p/x": ("dir", 0o750), "p/x/y": ("dir", 0o755),
                   "p/x/y/a.txt": ("file", 0o644)}
    excluded = image_sources(base, ["/opt/x"], ["**/*.md", "top.txt"], WHERE, "bb")
    got = entries(CopyPlan(excluded, "/e/", None, None, now=5), RootfsView([]))
    assert set(got) == {"e", "e/y", "e/y/a.txt"}
    with pytest.raises(ContextError, match=r'source "/opt/./x/\*.go" not found'):
        image_parents_sources(base, ["/opt/./x/*.go"], [], WHERE, "bb")


def test_symbolic_chmod_over_a_tree(base: RootfsView) -> None:
    sources = image_sources(base, ["/opt/x"], [], WHERE, "bb")
    chmod = parse_chmod("u=rwX,go=rX", WHERE)
    got = entries(CopyPlan(sources, "/c/", None, chmod, now=5), RootfsView([]))
    assert got["c/y"] == ("dir", 0o755)
    assert got["c/y/a.txt"] == ("file", 0o644)
