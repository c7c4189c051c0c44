"""Content digests of COPY sources for the step cache (``rootbuild.engine.step_cache``),
through a real build context: what changes a digest, what doesn't, and that an unchanged
file is not read twice."""

from __future__ import annotations

import os
import time
from pathlib import Path

from rootbuild.cache.index import CacheIndex
from rootbuild.context import BuildContext, load_ignore
from rootbuild.engine.copy import context_sources
from rootbuild.engine.step_cache import SourceHasher, StepCache
from rootbuild.errors import Location

WHERE = Location("Dockerfile", 1)


def make_ctx(root: Path) -> Path:
    ctx = root / "ctx"
    (ctx / "app/sub").mkdir(parents=True)
    (ctx / "app/a.txt").write_text("a\n")
    (ctx / "app/sub/b.txt").write_text("b\n")
    (ctx / "app/link").symlink_to("a.txt")
    (ctx / "app/skip.log").write_text("log\n")
    (ctx / ".dockerignore").write_text("app/*.log\n")
    (ctx / "Dockerfile").write_text("FROM scratch\n")
    old = time.time() - 60  # older than the racy window: digests are remembered
    for path in (ctx / "app/a.txt", ctx / "app/sub/b.txt", ctx / "app/skip.log"):
        os.utime(path, (old, old))
    return ctx


def digest(ctx: Path, hasher: SourceHasher, *patterns: str) -> str:
    with BuildContext.open(ctx, load_ignore(ctx, ctx / "Dockerfile")) as bc:
        return hasher.digest(context_sources(bc, patterns or ("app",), (), WHERE))


def test_mtime_and_ignored_files_do_not_count_content_mode_and_names_do(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path)
    hasher = SourceHasher(CacheIndex(tmp_path))
    first = digest(ctx, hasher)
    later = time.time() - 30
    os.utime(ctx / "app/a.txt", (later, later))
    (ctx / "app/skip.log").write_text("changed but ignored\n")
    (ctx / "app/new.log").write_text("new but ignored\n")
    assert digest(ctx, hasher) == first
    (ctx / "app/sub/b.txt").write_text("B\n")
    changed = digest(ctx, hasher)
    assert changed != first
    os.chmod(ctx / "app/a.txt", 0o600)
    assert digest(ctx, hasher) not in (first, changed)
    os.chmod(ctx / "app/a.txt", 0o644)
    (ctx / "app/link").unlink()
    (ctx / "app/link").symlink_to("sub/b.txt")
    assert digest(ctx, hasher) not in (first, changed)
    assert digest(ctx, hasher, "app/a.txt") != digest(ctx, hasher, "app/sub/b.txt")


def test_renaming_a_file_counts(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path)
    hasher = SourceHasher(CacheIndex(tmp_path))
    first = digest(ctx, hasher)
    os.rename(ctx / "app/sub/b.txt", ctx / "app/sub/c.txt")
    assert digest(ctx, hasher) != first


def test_unchanged_files_are_read_once_across_builds(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path)
    index = CacheIndex(tmp_path / "store")
    (tmp_path / "store").mkdir()
    cache = StepCache(index)
    first = digest(ctx, cache.hasher)
    assert cache.hasher.files_read == 2
    digest(ctx, cache.hasher)
    assert cache.hasher.files_read == 2  # memo within the build
    cache.commit()  # the build succeeded: the index learns the digests
    index.close()
    fresh = SourceHasher(CacheIndex(tmp_path / "store"))
    assert digest(ctx, fresh) == first
    assert fresh.files_read == 0  # nothing read again in the next build
    (ctx / "app/a.txt").write_text("A\n")  # new mtime and content: read again
    assert digest(ctx, fresh) != first
    assert fresh.files_read == 1


def test_a_freshly_written_file_is_not_remembered(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path)
    (ctx / "app/a.txt").write_text("just now\n")
    hasher = SourceHasher(CacheIndex(tmp_path))
    digest(ctx, hasher)
    assert len(hasher.learned) == 1  # b.txt only: a.txt may still change within its mtime
