"""engine/replay.py without a kernel: what an invocation's key depends on, which command
lines are never replayed, the context fingerprint, the progress record, and the checks
``load_valid`` makes against a real store in a temp directory."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import time
from pathlib import Path

import pytest

from rootbuild.cache.entry import CacheEntry
from rootbuild.cache.index import CacheIndex
from rootbuild.dockerfile.dockerignore import IgnoreMatcher
from rootbuild.engine.replay import (
    Invocation,
    Recorder,
    ReplayFacts,
    context_fingerprint,
    load_valid,
    save,
    save_if_unchanged,
    show,
)
from rootbuild.image.oci import (
    OCI_CONFIG,
    OCI_LAYER_GZIP,
    OCI_MANIFEST,
    Descriptor,
    canonical_json,
)
from rootbuild.image.store import Store


def flags(ctx: Path, **more: object) -> dict[str, object]:
    base: dict[str, object] = {
        "command": "build", "context": str(ctx), "dockerfile": None, "tags": [],
        "outputs": [], "iidfile": None, "quiet": False, "progress": "plain", "root": None,
        "build_args": [], "target": None, "call": "build", "check": False, "pull": False,
        "no_cache": False, "no_cache_filter": [], "cache_from": [], "cache_to": [],
        "push": False, "build_contexts": [], "secrets": [], "ssh": [],
        "metadata_file": None, "digestfile": None, "network": "",
    }
    base.update(more)
    return base


def invocation(ctx: Path, outputs: tuple[str, ...] = (), build_args: dict[str, str] | None
               = None, **more: object) -> Invocation | None:
    return Invocation.of(flags(ctx, **more), build_args or {}, outputs, "1.0")


@pytest.fixture
def ctx(tmp_path: Path) -> Path:
    root = tmp_path / "ctx"
    (root / "src").mkdir(parents=True)
    (root / "Dockerfile").write_text("FROM scratch\nCOPY src /src\n")
    (root / "src" / "a.txt").write_text("a")
    return root


def key(ctx: Path, **kw: object) -> str:
    found = invocation(ctx, **kw)  # type: ignore[arg-type]
    assert found is not None
    return found.key


# -- the key ----------------------------------------------------------------------------


def test_where_the_result_goes_is_not_part_of_the_key(ctx: Path) -> None:
    plain = key(ctx)
    assert key(ctx, tags=["app:1"], iidfile=Path("/x"), quiet=True, progress="tty",
               root="/elsewhere") == plain
    assert key(ctx, outputs=("oci-archive:/tmp/o.tar",)) == plain


def test_what_is_built_is_part_of_the_key(ctx: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    plain = key(ctx)
    assert key(ctx, target="base") != plain
    assert key(ctx, network="none") != plain
    assert key(ctx, build_args={"A": "1"}) != plain
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "0")
    assert key(ctx) != plain
    monkeypatch.delenv("SOURCE_DATE_EPOCH")
    (ctx / "Dockerfile").write_text("FROM scratch\nCOPY src /dst\n")
    assert key(ctx) != plain


def test_an_ignore_file_is_part_of_the_key(ctx: Path) -> None:
    plain = key(ctx)
    (ctx / ".dockerignore").write_text("*.log\n")
    with_ignore = key(ctx)
    (ctx / "Dockerfile.dockerignore").write_text("*.log\n")  # BuildKit's own file wins
    assert len({plain, with_ignore, key(ctx)}) == 3


@pytest.mark.parametrize("flag,value", [
    ("pull", True), ("no_cache", True), ("no_cache_filter", ["a"]),
    ("cache_from", ["type=local,src=/c"]), ("cache_to", ["type=local,dest=/c"]),
    ("push", True), ("build_contexts", ["x=/y"]), ("secrets", ["id=s"]),
    ("ssh", ["default"]), ("check", True), ("call", "check"),
    ("metadata_file", Path("/m.json")), ("digestfile", Path("/d")), ("dockerfile", "-"),
])
def test_volatile_command_lines_are_never_replayed(ctx: Path, flag: str,
                                                   value: object) -> None:
    assert invocation(ctx, **{flag: value}) is None


def test_outputs_not_written_from_blobs_are_never_replayed(ctx: Path) -> None:
    for ok in ("oci:/o", "oci-archive:/o.tar", "docker-archive:/o.tar:a:b"):
        assert invocation(ctx, outputs=(ok,)) is not None
    for volatile in ("dir:/o", "docker://reg/app", "type=local,dest=/o"):
        assert invocation(ctx, outputs=(volatile,)) is None


def test_a_missing_dockerfile_or_linked_ignore_file_is_left_to_the_build(ctx: Path) -> None:
    (ctx / "Dockerfile").unlink()
    assert invocation(ctx) is None
    (ctx / "Dockerfile").write_text("FROM scratch\n")
    (ctx / ".dockerignore").symlink_to("/etc/hostname")
    assert invocation(ctx) is None


def test_files_unchanged_sees_an_edit(ctx: Path) -> None:
    found = invocation(ctx)
    assert found is not None and found.files_unchanged()
    (ctx / "Dockerfile").write_text("FROM scratch\n")
    assert not found.files_unchanged()


# -- the context fingerprint ------------------------------------------------------------


def fp(ctx: Path, ignore: str = "") -> str:
    found = context_fingerprint(ctx, IgnoreMatcher.parse(ignore))
    assert found is not None
    return found


def test_fingerprint_is_stable_and_sees_every_change(ctx: Path) -> None:
    first = fp(ctx)
    assert fp(ctx) == first
    seen = {first}
    a = ctx / "src" / "a.txt"
    os.utime(a, ns=(1, 1))
    seen.add(fp(ctx))  # mtime alone
    time.sleep(0.05)  # ctime has the kernel's coarse clock (a few ms)
    a.write_text("b")
    os.utime(a, ns=(1, 1))
    seen.add(fp(ctx))  # same size and mtime, new content: its ctime
    a.chmod(0o600)
    seen.add(fp(ctx))  # mode
    (ctx / "src" / "new").write_text("")
    seen.add(fp(ctx))  # a new file
    (ctx / "link").symlink_to("src")
    seen.add(fp(ctx))
    (ctx / "link").unlink()
    (ctx / "link").symlink_to("src/a.txt")
    seen.add(fp(ctx))  # a symlink's target
    assert len(seen) == 7


def test_fingerprint_skips_what_the_ignore_file_excludes(ctx: Path) -> None:
    (ctx / "build.log").write_text("1")
    (ctx / "cache").mkdir()
    (ctx / "cache" / "x").write_text("1")
    first = fp(ctx, "*.log\ncache\n")
    (ctx / "build.log").write_text("22")
    (ctx / "cache" / "x").write_text("22")
    (ctx / "cache" / "y").write_text("")
    assert fp(ctx, "*.log\ncache\n") == first
    assert fp(ctx) != fp(ctx, "*.log\ncache\n")


def test_fingerprint_walks_ignored_directories_with_re_included_paths(ctx: Path) -> None:
    (ctx / "docs").mkdir()
    (ctx / "docs" / "keep.md").write_text("1")
    (ctx / "docs" / "skip.md").write_text("1")
    rules = "docs\n!docs/keep.md\n"
    first = fp(ctx, rules)
    (ctx / "docs" / "skip.md").write_text("22")
    assert fp(ctx, rules) == first
    (ctx / "docs" / "keep.md").write_text("22")
    assert fp(ctx, rules) != first


def test_fingerprint_of_a_context_deeper_than_the_recursion_limit(ctx: Path) -> None:
    depth = sys.getrecursionlimit() + 100  # 1,100 levels, a path of ~2,200 bytes
    fds = [os.open(ctx, os.O_RDONLY | os.O_DIRECTORY)]
    try:
        for _ in range(depth):
            os.mkdir("d", dir_fd=fds[-1])
            fds.append(os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fds[-1]))
        leaf = os.open("leaf", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fds[-1])
        first = fp(ctx)
        os.write(leaf, b"22")
        os.close(leaf)
        assert fp(ctx) != first
    finally:  # bottom up: pytest's own clean-up of old temp dirs recurses
        with contextlib.suppress(FileNotFoundError):
            os.unlink("leaf", dir_fd=fds[-1])
        while len(fds) > 1:
            os.close(fds.pop())
            with contextlib.suppress(FileNotFoundError):
                os.rmdir("d", dir_fd=fds[-1])
        os.close(fds.pop())


def test_fingerprint_of_an_unreadable_context_is_none(ctx: Path) -> None:
    assert context_fingerprint(ctx / "missing", IgnoreMatcher()) is None


# -- the progress record ----------------------------------------------------------------


class Lines:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.n = 0
        self.labels: dict[int, str] = {}

    def start(self, label: str) -> int:
        self.n += 1
        self.labels[self.n] = label
        return self.n

    def done(self, step: int, *, cached: bool = False) -> None:
        self.lines.append(f"{self.labels[step]} {'CACHED' if cached else 'DONE'}")

    def failed(self, step: int, error: str) -> None:
        self.lines.append(f"{self.labels[step]} ERROR {error}")

    def output(self, step: int, line: str) -> None:
        self.lines.append(f"{self.labels[step]}: {line}")

    def warn(self, message: str) -> None:
        self.lines.append(f"WARN {message}")

    def note(self, message: str) -> None:
        self.lines.append(f"NOTE {message}")

    def close(self) -> None:
        self.lines.append("closed")


def test_recorder_keeps_steps_warnings_and_notes_and_show_repeats_them() -> None:
    inner = Lines()
    rec = Recorder(inner)
    rec.note("# syntax ignored")
    first = rec.start("[stage-0 1/2] FROM scratch")
    pull = rec.start("pulling busybox")
    rec.output(pull, "layer 1/1")
    rec.done(pull)
    rec.done(first)
    rec.done(rec.start("[stage-0 2/2] COPY a /a"), cached=True)
    rec.warn("unused build arg X")
    rec.done(rec.start("exporting to oci:/o"))
    assert inner.lines[-1] == "exporting to oci:/o DONE"
    replayed = Lines()
    show(rec.events, replayed)
    assert replayed.lines == [
        "NOTE # syntax ignored", "[stage-0 1/2] FROM scratch DONE",
        "[stage-0 2/2] COPY a /a CACHED", "WARN unused build arg X",
    ]


def test_rebuild_events_show_run_steps_cached_and_drop_their_warnings() -> None:
    rec = Recorder(Lines())
    rec.done(rec.start("[stage-0 1/3] FROM scratch"))
    ran = rec.start("[stage-0 2/3] RUN make")
    rec.warn("RUN maps only root")  # given by the step while it ran
    rec.done(ran)
    rec.done(rec.start("[stage-0 3/3] ENV A=1"))
    rec.warn("unused build arg X")
    facts = ReplayFacts(bases=(), cache=(), recorded=frozenset({ran}),
                        step_warnings=frozenset({"RUN maps only root"}))
    assert rec.rebuild_events(facts) == [
        ("step", "[stage-0 1/3] FROM scratch", False),
        ("step", "[stage-0 2/3] RUN make", True),
        ("step", "[stage-0 3/3] ENV A=1", False),
        ("warn", "unused build arg X", False),
    ]


# -- load_valid against a store ---------------------------------------------------------


def _image(store: Store, layer: bytes) -> tuple[Descriptor, str]:
    staging = store.stage()
    layer_desc = staging.put_bytes(layer, OCI_LAYER_GZIP)
    diff_id = "sha256:" + hashlib.sha256(layer).hexdigest()
    config = {"architecture": "amd64", "os": "linux",
              "rootfs": {"type": "layers", "diff_ids": [diff_id]}}
    config_desc = staging.put_bytes(canonical_json(config), OCI_CONFIG)
    manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                "config": config_desc.to_json(), "layers": [layer_desc.to_json()]}
    manifest_desc = staging.put_bytes(canonical_json(manifest), OCI_MANIFEST)
    staging.commit()
    entry = CacheEntry(key="sha256:" + "1" * 64, layer=layer_desc, diff_id=diff_id,
                       description="COPY a /a", created=1.0)
    index = CacheIndex(store.root)
    index.record([entry], [], 1.0)
    index.close()
    return manifest_desc, layer_desc.digest


@pytest.fixture
def recorded(tmp_path: Path, ctx: Path) -> tuple[Store, Invocation, str]:
    store = Store.open(tmp_path / "store")
    manifest, layer = _image(store, b"layer bytes")
    base = store.tag("base:1", manifest)
    found = invocation(ctx)
    assert found is not None
    facts = ReplayFacts(bases=((base, manifest.digest),), cache=(("sha256:" + "1" * 64, layer),))
    save(store, found, fp(ctx), facts, store.load(manifest),
         [("step", "[stage-0 1/1] COPY a /a", True)], "")
    return store, found, layer


def test_a_record_whose_inputs_hold_is_replayed_and_marks_the_cache_used(
        recorded: tuple[Store, Invocation, str], ctx: Path) -> None:
    store, found, _ = recorded
    replay = load_valid(store, found, lambda: fp(ctx))
    assert replay is not None
    assert replay.events == (("step", "[stage-0 1/1] COPY a /a", True),)
    index = CacheIndex(store.root)
    entry = index.lookup("sha256:" + "1" * 64)
    index.close()
    assert entry is not None and entry.last_used > 1.0


def test_a_changed_context_is_not_replayed(recorded: tuple[Store, Invocation, str],
                                           ctx: Path) -> None:
    store, found, _ = recorded
    (ctx / "src" / "a.txt").write_text("changed")
    assert load_valid(store, found, lambda: fp(ctx)) is None


def test_a_moved_base_name_is_not_replayed(recorded: tuple[Store, Invocation, str],
                                           ctx: Path) -> None:
    store, found, _ = recorded
    other, _ = _image(store, b"other layer")
    store.tag("base:1", other)
    assert load_valid(store, found, lambda: fp(ctx)) is None


def test_a_removed_cache_entry_or_blob_is_not_replayed(
        recorded: tuple[Store, Invocation, str], ctx: Path) -> None:
    store, found, layer = recorded
    index = CacheIndex(store.root)
    index.remove(["sha256:" + "1" * 64])
    index.close()
    assert load_valid(store, found, lambda: fp(ctx)) is None
    store.blob_path(layer).unlink()
    assert load_valid(store, found, lambda: fp(ctx)) is None


def test_prune_removes_every_record(recorded: tuple[Store, Invocation, str], ctx: Path) -> None:
    store, found, _ = recorded
    assert store.replay_dir.is_dir()
    store.prune()
    assert not store.replay_dir.exists()
    assert load_valid(store, found, lambda: fp(ctx)) is None


def test_a_damaged_record_means_the_full_build(recorded: tuple[Store, Invocation, str],
                                               ctx: Path) -> None:
    store, found, _ = recorded
    path = store.replay_dir / found.key
    for damage in (b"{", b"[]", json.dumps({"v": 1}).encode(),
                   json.dumps({"v": 99, "context": fp(ctx)}).encode()):
        path.write_bytes(damage)
        assert load_valid(store, found, lambda: fp(ctx)) is None


def test_save_if_unchanged_writes_nothing_after_a_change_during_the_build(
        tmp_path: Path, ctx: Path) -> None:
    store = Store.open(tmp_path / "store")
    manifest, _ = _image(store, b"layer")
    found = invocation(ctx)
    assert found is not None
    before = fp(ctx)
    (ctx / "src" / "a.txt").write_text("edited during the build")
    facts = ReplayFacts(bases=(), cache=())
    save_if_unchanged(store, found, IgnoreMatcher(), before, facts, store.load(manifest), [], "")
    assert not (store.replay_dir / found.key).exists()
    save_if_unchanged(store, found, IgnoreMatcher(), fp(ctx), facts, store.load(manifest), [],
                      "")
    assert (store.replay_dir / found.key).exists()


def test_tagging_a_name_with_its_own_image_again_writes_no_index(tmp_path: Path) -> None:
    """``docker tag`` of an image to a tag it has changes nothing; an unchanged rebuild's
    ``-t`` then costs no index write (and its fsyncs)."""
    store = Store.open(tmp_path / "store")
    manifest, _ = _image(store, b"layer")
    store.tag("app", manifest)
    index = store.root / "images.json"
    before = index.stat()
    store.tag("app:latest", manifest)
    after = index.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    other, _ = _image(store, b"other")
    store.tag("app", other)
    found = store.resolve("app")
    assert found is not None and found.manifest == other
