"""The pure and store-local parts of RUN --mount=type=cache: the options' defaults, the
fold of a step's changes into a cache tree (whiteouts, opaque directories, type changes,
hard links), the store's instances (create, seed, snapshot, fold, list, remove), the LRU
choice of ``prune --keep-storage`` with cache mounts, and the spec's wire form."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from rootbuild.cache.entry import CacheEntry
from rootbuild.cache.mounts import CacheMountInfo, CacheMounts, fold_plan, mount_key, root_entry
from rootbuild.cache.prune import choose_kept_with_mounts
from rootbuild.dockerfile.flags import parse_mount
from rootbuild.engine.cache_mounts import plan_cache_mounts
from rootbuild.errors import Location, StepError
from rootbuild.image.layermeta import EntryMeta, LayerMeta
from rootbuild.image.oci import Descriptor
from rootbuild.sandbox.spec import LayerMount, OverlayRoot, StepSpec
from rootbuild.snapshot import LowerLayer
from rootbuild.stages.steps import StepMount

WHERE = Location("Dockerfile", 3)


def d(path: str, mode: int = 0o755, uid: int = 0, implicit: bool = False) -> EntryMeta:
    return EntryMeta(path, "dir", mode=0o40000 | mode, uid=uid, implicit=implicit)


def f(path: str, size: int = 1, uid: int = 0) -> EntryMeta:
    return EntryMeta(path, "file", mode=0o100644, uid=uid, size=size)


# -- options --------------------------------------------------------------------------------


def test_defaults_follow_buildkit() -> None:
    mounts = (StepMount(parse_mount("type=cache,target=/root/.cache"), None),
              StepMount(parse_mount("type=bind,target=/b"), None))
    [plan] = plan_cache_mounts(mounts, WHERE)
    assert (plan.id, plan.sharing, plan.readonly, plan.mode, plan.uid, plan.gid) == (
        "/root/.cache", "shared", False, 0o755, 0, 0)
    [plan] = plan_cache_mounts((StepMount(parse_mount(
        "type=cache,target=/c,id=pip,sharing=locked,mode=0700,uid=1000,gid=1001,ro"), None),),
        WHERE)
    assert (plan.id, plan.sharing, plan.readonly, plan.mode, plan.uid, plan.gid) == (
        "pip", "locked", True, 0o700, 1000, 1001)


def test_a_cache_mount_needs_a_target() -> None:
    with pytest.raises(StepError, match="target is required") as info:
        plan_cache_mounts((StepMount(parse_mount("type=cache,id=x"), None),), WHERE)
    assert info.value.location == WHERE


# -- the fold -------------------------------------------------------------------------------


def test_fold_adds_replaces_and_keeps_untouched_entries() -> None:
    cache = LayerMeta.build([d(""), d("a"), f("a/old"), f("a/keep")])
    changes = LayerMeta.build([d(""), d("a"), f("a/old", size=9, uid=1000), f("a/new")])
    plan = fold_plan(cache, changes)
    assert plan.remove == ()
    assert list(plan.meta.entries) == ["", "a", "a/keep", "a/new", "a/old"]
    assert plan.meta.get("a/old") == f("a/old", size=9, uid=1000)


def test_fold_applies_whiteouts_and_opaque_directories() -> None:
    cache = LayerMeta.build([d(""), d("a"), f("a/x"), d("a/sub"), f("a/sub/y"), f("b")])
    changes = LayerMeta.build([d(""), d("a"), f("a/fresh")], whiteouts=["b"],
                              opaque_dirs=["a"])
    plan = fold_plan(cache, changes)
    assert set(plan.remove) == {"b", "a/x", "a/sub"}
    assert list(plan.meta.entries) == ["", "a", "a/fresh"]


def test_fold_replaces_a_directory_by_a_file_and_keeps_implicit_parents_as_they_were() -> None:
    cache = LayerMeta.build([d(""), d("p", mode=0o700, uid=7), d("x"), f("x/in")])
    changes = LayerMeta.build([d("p", implicit=True), f("p/q"), f("x")])
    plan = fold_plan(cache, changes)
    assert plan.remove == ("x",)
    assert plan.meta.get("x") == f("x")
    assert plan.meta.get("p") == d("p", mode=0o700, uid=7)
    assert "x/in" not in plan.meta.entries


def test_fold_turns_hard_links_into_files() -> None:
    cache = LayerMeta.build([d("")])
    changes = LayerMeta.build([f("one", size=5),
                               EntryMeta("two", "hardlink", linkname="one")])
    plan = fold_plan(cache, changes)
    assert plan.meta.get("two") == EntryMeta("two", "file", size=5)


# -- the store's instances --------------------------------------------------------------------


def _changes(tmp: Path, files: dict[str, bytes], meta: LayerMeta) -> Path:
    tree = tmp / "changes"
    tree.mkdir()
    for rel, data in files.items():
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        (tree / rel).write_bytes(data)
    return tree


def test_store_creates_snapshots_folds_lists_and_removes(tmp_path: Path) -> None:
    clock = iter(range(100, 200))
    store = CacheMounts(tmp_path, clock=lambda: float(next(clock)))
    key = store.ensure("/root/.cache", 1, root_entry(0o700, 1000, 1000, 0))
    assert key == mount_key("/root/.cache")
    assert LayerMeta.load(store.path(key) / "meta.json").get("") == root_entry(0o700, 1000,
                                                                                1000, 0)
    tree, meta = store.snapshot(key, tmp_path / "snap1")
    assert list(tree.iterdir()) == [] and meta.is_file()
    changes = LayerMeta.build([d("d"), f("d/f", size=3, uid=1000)])
    store.fold(key, _changes(tmp_path, {"d/f": b"abc"}, changes), changes)
    assert (store.path(key) / "tree/d/f").read_bytes() == b"abc"
    assert LayerMeta.load(store.path(key) / "meta.json").get("d/f") == f("d/f", 3, 1000)
    # a snapshot shares inodes with the tree; a later fold replaces, never rewrites
    snap_tree, _ = store.snapshot(key, tmp_path / "snap2")
    assert os.stat(snap_tree / "d/f").st_ino == os.stat(store.path(key) / "tree/d/f").st_ino
    (tmp_path / "changes").rename(tmp_path / "changes-1")
    store.fold(key, _changes(tmp_path, {"d/f": b"new!"}, changes), changes)
    assert (snap_tree / "d/f").read_bytes() == b"abc"
    assert (store.path(key) / "tree/d/f").read_bytes() == b"new!"
    [info] = store.list()
    dir_size = os.lstat(store.path(key) / "tree/d").st_size  # tree_size counts directories
    assert (info.id, info.instance, info.size) == ("/root/.cache", 1, 4 + dir_size)
    assert info.last_used > info.created
    assert store.remove(key) > 0
    assert store.list() == []


def test_ensure_seeds_a_new_instance_once(tmp_path: Path) -> None:
    store = CacheMounts(tmp_path)
    calls = []

    def seed(tree: Path) -> LayerMeta:
        calls.append(tree)
        (tree / "s").write_text("seed")
        return LayerMeta.build([d(""), f("s", uid=5)])

    root = root_entry(0o755, 0, 0, 0)
    key = store.ensure("x", 2, root, seed)
    assert key == mount_key("x", 2) and key.endswith("-2")
    assert store.ensure("x", 2, root, seed) == key
    assert len(calls) == 1
    meta = LayerMeta.load(store.path(key) / "meta.json")
    assert meta.get("") == root and meta.get("s") == f("s", uid=5)


def test_use_lock_shared_and_exclusive(tmp_path: Path) -> None:
    store = CacheMounts(tmp_path)
    one = store.try_use("k", exclusive=False)
    two = store.try_use("k", exclusive=False)
    assert one is not None and two is not None
    assert store.try_use("k", exclusive=True) is None
    os.close(one)
    os.close(two)
    held = store.try_use("k", exclusive=True)
    assert held is not None
    assert store.try_use("k", exclusive=False) is None
    os.close(held)


# -- prune ------------------------------------------------------------------------------------


def test_keep_storage_keeps_most_recently_used_records_of_both_kinds() -> None:
    layer = Descriptor("application/vnd.oci.image.layer.v1.tar+gzip", "sha256:" + "a" * 64, 10)
    entry = CacheEntry(key="sha256:" + "c" * 64, layer=layer, diff_id="sha256:" + "b" * 64,
                       description="RUN", created=0, last_used=50)
    old = CacheMountInfo("m-old", "old", 1, 0, 10, 100)
    new = CacheMountInfo("m-new", "new", 1, 0, 90, 100)
    kept, mounts = choose_kept_with_mounts([entry], {layer.digest: 150}, (), [old, new], 300)
    assert kept == [entry] and mounts == [new]  # new (100) + entry (150) fit; old does not
    assert choose_kept_with_mounts([entry], {}, (), [old, new], None) == ([], [])


# -- the wire form ----------------------------------------------------------------------------


def test_kept_layer_mounts_cross_to_the_init_as_json(tmp_path: Path) -> None:
    mount = LayerMount((LowerLayer(tmp_path / "t", tmp_path / "m.json"),), "/",
                       "/root/.cache", False, keep=tmp_path / "w")
    spec = StepSpec(("true",), OverlayRoot((), tmp_path / "o"), tmp_path / "s",
                    mounts=(mount,))
    assert StepSpec.from_json(spec.to_json()) == spec
    spec.validate()
    for bad in (LayerMount((), "/", "rel", False, keep=tmp_path / "w"),
                LayerMount((), "/", "/c", True, keep=tmp_path / "w"),
                LayerMount((), "/", "/c", False, keep=Path("w"))):
        with pytest.raises(Exception, match=r"not a clean absolute path|cannot be kept"):
            StepSpec(("true",), OverlayRoot((), tmp_path / "o"), tmp_path / "s",
                     mounts=(bad,)).validate()


def test_fold_never_follows_a_symlink_in_the_cache_tree(tmp_path: Path) -> None:
    """SECURITY.md rule 1: a symlink a step left in the cache (pointing at a host path)
    where a later fold needs a directory is replaced, never written through."""
    outside = tmp_path / "outside"
    outside.mkdir()
    store = CacheMounts(tmp_path)
    key = store.ensure("c", 1, root_entry(0o755, 0, 0, 0))
    tree = store.path(key) / "tree"
    (tree / "d").symlink_to(outside)
    meta = LayerMeta.build([d(""), EntryMeta("d", "symlink", linkname=str(outside))])
    meta.save(store.path(key) / "meta.json")
    # a concurrent step that still saw "d" as a directory folds "d/file" (its diff names
    # only the file: "d" was unchanged in its view)
    changes = LayerMeta.build([f("d/file", size=2)])
    store.fold(key, _changes(tmp_path, {"d/file": b"hi"}, changes), changes)
    assert list(outside.iterdir()) == []
    assert (tree / "d").is_dir() and not (tree / "d").is_symlink()
    assert (tree / "d/file").read_bytes() == b"hi"
    folded = LayerMeta.load(store.path(key) / "meta.json")
    assert folded.get("d") == EntryMeta("d", "dir", mode=0o40755, implicit=True)
