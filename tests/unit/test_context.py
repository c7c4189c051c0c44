"""Tests for rootbuild.context on real temporary directories.

Each test builds a context under ``tmp_path/ctx`` with an "outside" world next to it
(``tmp_path/outside``) holding a canary, and checks both the result and that nothing outside
was reachable. Runs as root and as a normal user.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from rootbuild.context import (
    BuildContext,
    ContextEntry,
    find_dockerfile,
    ignore_file_for,
    load_ignore,
)
from rootbuild.dockerfile.dockerignore import IgnoreMatcher
from rootbuild.errors import ContextError, Location

CANARY = b"canary-token-outside-the-context"


@pytest.fixture
def world(tmp_path: Path) -> Path:
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(CANARY)
    (tmp_path / "secret").write_bytes(CANARY)
    return ctx


def tree(root: Path, spec: dict[str, str | bytes | None]) -> None:
    """Create files (str/bytes content) and directories (None); "->x" makes a symlink."""
    for rel, content in spec.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if content is None:
            path.mkdir(exist_ok=True)
        elif isinstance(content, str) and content.startswith("->"):
            path.symlink_to(content[2:])
        else:
            path.write_bytes(content.encode() if isinstance(content, str) else content)


def ctx_open(root: Path, ignore: str = "") -> BuildContext:
    return BuildContext.open(root, IgnoreMatcher.parse(ignore))


def rels(entries: list[ContextEntry]) -> list[str]:
    return [e.relpath for e in entries]


def read(ctx: BuildContext, entry: ContextEntry) -> bytes:
    with ctx.open_file(entry) as f:
        return f.read()


# -- find_dockerfile / ignore files -------------------------------------------------------------


def test_find_dockerfile_default_and_containerfile(world: Path) -> None:
    with pytest.raises(ContextError, match=r"^find Dockerfile: no Dockerfile or Containerfile"):
        find_dockerfile(world, None)
    (world / "Containerfile").write_text("FROM scratch\n")
    assert find_dockerfile(world, None) == world / "Containerfile"
    (world / "Dockerfile").write_text("FROM scratch\n")
    assert find_dockerfile(world, None) == world / "Dockerfile"


def test_find_dockerfile_flag_is_relative_to_cwd(
    world: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "build.Dockerfile").write_text("FROM scratch\n")
    monkeypatch.chdir(tmp_path)
    assert find_dockerfile(world, "build.Dockerfile") == tmp_path / "build.Dockerfile"
    with pytest.raises(ContextError, match=r'^find Dockerfile: "nope" not found$'):
        find_dockerfile(world, "nope")


def test_find_dockerfile_symlink_inside_is_resolved(world: Path) -> None:
    tree(
        world,
        {"docker/Dockerfile.real": "FROM scratch\n", "Dockerfile": "->docker/Dockerfile.real"},
    )
    assert find_dockerfile(world, None) == world / "docker" / "Dockerfile.real"


@pytest.mark.parametrize("target", ["../secret", "../outside/secret", "/etc/passwd"])
def test_find_dockerfile_symlink_outside_is_refused(world: Path, target: str) -> None:
    (world / "Dockerfile").symlink_to(target)
    with pytest.raises(ContextError, match="outside the build context"):
        find_dockerfile(world, None)


def test_ignore_file_for(world: Path, tmp_path: Path) -> None:
    dockerfile = world / "Dockerfile"
    assert ignore_file_for(world, dockerfile) is None
    (world / ".dockerignore").write_text("a\n")
    assert ignore_file_for(world, dockerfile) == world / ".dockerignore"
    (world / "Dockerfile.dockerignore").write_text("b\n")
    assert ignore_file_for(world, dockerfile) == world / "Dockerfile.dockerignore"
    other = tmp_path / "dev.Dockerfile"
    assert ignore_file_for(world, other) == world / ".dockerignore"
    (tmp_path / "dev.Dockerfile.dockerignore").write_text("c\n")
    assert ignore_file_for(world, other) == tmp_path / "dev.Dockerfile.dockerignore"


def test_load_ignore(world: Path) -> None:
    dockerfile = world / "Dockerfile"
    assert load_ignore(world, dockerfile).patterns == ()
    (world / ".dockerignore").write_text("# c\nnode_modules\n!keep\n[\n")
    with pytest.raises(ContextError, match=r"\.dockerignore:4: parse pattern \"\[\""):
        load_ignore(world, dockerfile)
    (world / ".dockerignore").write_text("node_modules\n!keep\n")
    m = load_ignore(world, dockerfile)
    assert [p.text for p in m.patterns] == ["node_modules", "keep"]
    assert m.ignored("node_modules/x")


def test_load_ignore_symlink_outside_is_refused(world: Path) -> None:
    (world / ".dockerignore").symlink_to("../secret")
    with pytest.raises(ContextError, match="outside the build context"):
        load_ignore(world, world / "Dockerfile")


# -- resolve_sources ------------------------------------------------------------------------------


def test_plain_sources(world: Path) -> None:
    tree(world, {"app/main.py": "print(1)\n", "app/lib/x.py": "", "README": "hi"})
    with ctx_open(world) as ctx:
        [readme] = ctx.resolve_sources("README")
        assert (readme.relpath, readme.kind, readme.size, readme.realpath) == (
            "README",
            "file",
            2,
            "",
        )
        assert read(ctx, readme) == b"hi"
        for spelling in ("app", "app/", "./app", "/app", "app/lib/..", "app//"):
            [app] = ctx.resolve_sources(spelling)
            assert (app.relpath, app.kind) == ("app", "dir")
        for spelling in (".", "/", "./", ""):
            [root] = ctx.resolve_sources(spelling)
            assert (root.relpath, root.kind) == (".", "dir")


def test_not_found_message_and_location(world: Path) -> None:
    loc = Location("Dockerfile", 4)
    with ctx_open(world) as ctx, pytest.raises(ContextError) as info:
        ctx.resolve_sources("app/", location=loc)
    assert str(info.value) == 'Dockerfile:4: source "app/" not found in build context'
    assert info.value.location == loc


@pytest.mark.parametrize(
    "source", ["../secret", "../outside/secret", "a/../../secret", "/../secret"]
)
def test_dotdot_sources_are_outside(world: Path, source: str) -> None:
    (world / "a").mkdir()
    with ctx_open(world) as ctx, pytest.raises(ContextError) as info:
        ctx.resolve_sources(source)
    assert str(info.value) == f'source "{source}" is outside the build context'


@pytest.mark.parametrize(
    "target", ["/etc/passwd", "/etc", "../secret", "../outside", "sub/../../outside/secret"]
)
def test_symlinks_pointing_outside_are_refused(world: Path, target: str) -> None:
    (world / "sub").mkdir()
    (world / "link").symlink_to(target)
    with ctx_open(world) as ctx:
        for source in ("link", "link/secret", "link/passwd", "*"):
            with pytest.raises(ContextError, match=r"is outside the build context$"):
                ctx.resolve_sources(source)


def test_absolute_symlink_to_host_path_outside_even_if_it_exists(
    world: Path, tmp_path: Path
) -> None:
    # The target exists on the host, and a chroot-like lookup would not find it in the
    # context either: it must be an error, never the host file.
    (world / "leak").symlink_to(tmp_path / "outside" / "secret")
    with ctx_open(world) as ctx, pytest.raises(ContextError, match="outside the build context"):
        ctx.resolve_sources("leak")


def test_symlinked_intermediate_directory_outside(world: Path) -> None:
    (world / "d").symlink_to("../outside")
    with ctx_open(world) as ctx, pytest.raises(ContextError, match="outside the build context"):
        ctx.resolve_sources("d/secret")


def test_symlinks_inside_are_followed_chroot_like(world: Path) -> None:
    tree(
        world,
        {
            "real/file": "content",
            "real/sub/deep": "deep",
            "d": "->real",
            "named": "->real/file",
            "viaparent": "->real/sub/../file",
            "chain": "->named",
            "abs": f"->{world}/real/file",
        },
    )
    with ctx_open(world) as ctx:
        [e] = ctx.resolve_sources("d/file")
        assert (e.relpath, e.realpath, e.kind) == ("d/file", "real/file", "file")
        assert read(ctx, e) == b"content"
        for name in ("named", "viaparent", "chain", "abs"):
            [e] = ctx.resolve_sources(name)
            assert (e.relpath, e.realpath, e.kind, e.size) == (name, "real/file", "file", 7)
            assert read(ctx, e) == b"content"
        [d] = ctx.resolve_sources("d")
        assert (d.relpath, d.realpath, d.kind) == ("d", "real", "dir")
        assert rels(list(ctx.walk(d))) == ["d", "d/file", "d/sub", "d/sub/deep"]
        assert [e.real for e in ctx.walk(d)] == ["real", "real/file", "real/sub", "real/sub/deep"]


def test_symlink_loop(world: Path) -> None:
    (world / "a").symlink_to("b")
    (world / "b").symlink_to("a")
    with ctx_open(world) as ctx, pytest.raises(ContextError, match=r'^resolve source "a": '):
        ctx.resolve_sources("a")


def test_globs(world: Path) -> None:
    tree(
        world,
        {
            "b.txt": "",
            "a.txt": "",
            ".hidden.txt": "",
            "c.md": "",
            "x.c": "",
            "src/one/f": "",
            "src/two/f": "",
            "src/three/g": "",
            "src/file": "",
            "B.txt": "",
        },
    )
    with ctx_open(world) as ctx:
        assert rels(ctx.resolve_sources("*.txt")) == [".hidden.txt", "B.txt", "a.txt", "b.txt"]
        assert rels(ctx.resolve_sources("./[ab].txt")) == ["a.txt", "b.txt"]
        assert rels(ctx.resolve_sources("?.c")) == ["x.c"]
        assert rels(ctx.resolve_sources("src/*/f")) == ["src/one/f", "src/two/f"]
        assert rels(ctx.resolve_sources("s*/t*")) == ["src/three", "src/two"]
        with pytest.raises(ContextError, match=r'^source "\*\.py" not found in build context$'):
            ctx.resolve_sources("*.py")
        with pytest.raises(ContextError, match=r'^resolve source "\[": syntax error in pattern'):
            ctx.resolve_sources("[")


def test_ignored_sources_count_as_not_found(world: Path) -> None:
    tree(
        world,
        {"secret.txt": "s", "public.txt": "p", "link": "->secret.txt", "ln": "->sub", "sub/x": ""},
    )
    with ctx_open(world, "secret.txt\nln\n") as ctx:
        with pytest.raises(
            ContextError,
            match=r'^source "secret.txt" not found in build context '
            r"\(excluded by \.dockerignore\)$",
        ):
            ctx.resolve_sources("secret.txt")
        assert rels(ctx.resolve_sources("*.txt")) == ["public.txt"]
        with pytest.raises(ContextError, match=r"excluded by \.dockerignore"):
            ctx.resolve_sources("link")  # the link is in the context, its target is not
        with pytest.raises(ContextError, match=r"excluded by \.dockerignore"):
            ctx.resolve_sources("ln/x")  # an ignored symlink is not followed


def test_exceptions_inside_ignored_directory(world: Path) -> None:
    tree(
        world,
        {
            "secrets/key": "k",
            "secrets/public/cert": "c",
            "secrets/public/more/x": "x",
            "secrets/private/y": "y",
            "app": "a",
        },
    )
    with ctx_open(world, "secrets\n!secrets/public\n") as ctx:
        [sec] = ctx.resolve_sources("secrets")
        assert rels(list(ctx.walk(sec))) == [
            "secrets",
            "secrets/public",
            "secrets/public/cert",
            "secrets/public/more",
            "secrets/public/more/x",
        ]
        with pytest.raises(ContextError, match="excluded by"):
            ctx.resolve_sources("secrets/key")
        with pytest.raises(ContextError, match="excluded by"):
            ctx.resolve_sources("secrets/private")
        [root] = ctx.resolve_sources(".")
        assert rels(list(ctx.walk(root))) == [
            ".",
            "app",
            "secrets",
            "secrets/public",
            "secrets/public/cert",
            "secrets/public/more",
            "secrets/public/more/x",
        ]


def test_ignored_parents_reported_only_with_included_children(world: Path) -> None:
    tree(world, {"a/b/keep": "", "a/b/other": "", "a/c/other": "", "a/d": None, "z": ""})
    with ctx_open(world, "a\n!a/*/keep\n!a/d\n") as ctx:
        [root] = ctx.resolve_sources(".")
        assert rels(list(ctx.walk(root))) == [".", "a", "a/b", "a/b/keep", "a/d", "z"]
        with pytest.raises(ContextError, match="excluded by"):
            ctx.resolve_sources("a/c")


# -- walk -------------------------------------------------------------------------------------


def test_walk_order_and_symlinks_not_followed(world: Path) -> None:
    tree(
        world,
        {
            "d/b": "bb",
            "d/a/z": "",
            "d/B": "",
            "d/_": "",
            "d/out": "->../../outside",
            "d/abs": "->/etc",
            "d/hard": "h",
        },
    )
    os.link(world / "d" / "hard", world / "d" / "hard2")
    with ctx_open(world) as ctx:
        [d] = ctx.resolve_sources("d")
        entries = list(ctx.walk(d))
        assert rels(entries) == [
            "d",
            "d/B",
            "d/_",
            "d/a",
            "d/a/z",
            "d/abs",
            "d/b",
            "d/hard",
            "d/hard2",
            "d/out",
        ]
        by = {e.relpath: e for e in entries}
        assert (by["d/out"].kind, by["d/out"].linkname) == ("symlink", "../../outside")
        assert (by["d/abs"].kind, by["d/abs"].linkname) == ("symlink", "/etc")
        assert by["d/hard"].nlink == 2 and by["d/hard"].ino == by["d/hard2"].ino
        assert by["d/b"].size == 2 and by["d/a"].kind == "dir"
        with pytest.raises(ContextError, match=r'^open "d/out": not a regular file$'):
            ctx.open_file(by["d/out"])
        [f] = ctx.resolve_sources("d/b")
        assert list(ctx.walk(f)) == [f]


def test_walk_skips_ignored_subtrees_without_opening_them(world: Path) -> None:
    tree(world, {"keep/a": "", "node_modules/pkg/index.js": "", "cache/x": "", "f": ""})
    locked = [world / "node_modules", world / "cache"]
    for p in locked:
        p.chmod(0)
    try:
        with ctx_open(world, "node_modules\ncache\n") as ctx:
            [root] = ctx.resolve_sources(".")
            assert rels(list(ctx.walk(root))) == [".", "f", "keep", "keep/a"]
            assert rels(ctx.resolve_sources("*")) == ["f", "keep"]
            assert not ctx.ignore.may_include_below("node_modules")
        if os.geteuid() != 0:
            # Sanity check: without the ignore file, the walk does try to read them.
            with ctx_open(world) as ctx, pytest.raises(ContextError, match="Permission denied"):
                list(ctx.walk(ctx.resolve_sources(".")[0]))
    finally:
        for p in locked:
            p.chmod(0o755)


def test_walk_early_close_releases_fds(world: Path) -> None:
    tree(world, {f"d{i}/f": "" for i in range(5)})
    before = len(os.listdir("/proc/self/fd"))
    with ctx_open(world) as ctx:
        it = ctx.walk(ctx.resolve_sources(".")[0])
        next(it)
        next(it)
        next(it)
        it.close()
    assert len(os.listdir("/proc/self/fd")) == before


# -- open_file ------------------------------------------------------------------------------


def test_open_file_detects_replacement(world: Path) -> None:
    tree(world, {"f": "original"})
    with ctx_open(world) as ctx:
        [f] = ctx.resolve_sources("f")
        os.rename(world / "f", world / "f.old")
        (world / "f").write_text("swapped!")
        with pytest.raises(
            ContextError, match=r'^open "f": changed while the build was reading it$'
        ):
            ctx.open_file(f)


def test_open_file_refuses_a_file_swapped_for_a_symlink(world: Path) -> None:
    tree(world, {"f": "original"})
    with ctx_open(world) as ctx:
        [f] = ctx.resolve_sources("f")
        (world / "f").unlink()
        (world / "f").symlink_to("../secret")
        with pytest.raises(ContextError, match=r'^open "f": '):
            ctx.open_file(f)


def test_open_file_refuses_a_directory_swapped_for_a_symlink(world: Path) -> None:
    tree(world, {"d/f": "original", "outside_d/f": "x"})
    (world.parent / "outside" / "f").write_bytes(CANARY)
    with ctx_open(world) as ctx:
        [f] = ctx.resolve_sources("d/f")
        os.rename(world / "d", world / "d.old")
        (world / "d").symlink_to("../outside")
        with pytest.raises(ContextError, match=r'^open "d/f": '):
            ctx.open_file(f)


def test_open_missing_context() -> None:
    with pytest.raises(ContextError, match=r"^open build context /nonexistent/ctx: "):
        BuildContext.open(Path("/nonexistent/ctx"), IgnoreMatcher())


def test_close_releases_root_fd(world: Path) -> None:
    before = len(os.listdir("/proc/self/fd"))
    ctx = ctx_open(world)
    assert len(os.listdir("/proc/self/fd")) == before + 1
    ctx.close()
    ctx.close()
    assert len(os.listdir("/proc/self/fd")) == before
