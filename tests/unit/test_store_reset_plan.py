"""``rootbuild system reset`` and the removal of what subordinate ids own, without a user
namespace: the full id mapping (``userns_rm.full_plan``), the messages, the plan of a reset
(``cache/reset.py``), the fd-relative walker on trees the test builds, and the store lock
a reset takes."""

from __future__ import annotations

import fcntl
import os
import resource
from pathlib import Path

import pytest

from rootbuild.cache import reset as reset_mod
from rootbuild.cache.reset import NO_STORE, plan_reset, reset
from rootbuild.errors import StoreError
from rootbuild.sandbox import userns_rm
from rootbuild.sandbox.idmap import IdRange
from rootbuild.sandbox.userns_rm import Tally, full_plan, no_range_message, remove_at

# -- the mapping --------------------------------------------------------------------------------


def test_full_plan_maps_the_user_at_zero_and_every_range_after_it() -> None:
    subuid = "alice:100000:65536\nbob:300000:65536\nalice:500000:131072\n"
    subgid = "1000:200000:65536\n"
    plan = full_plan(uid=1000, gid=1000, name="alice", subuid=subuid, subgid=subgid)
    assert plan is not None and plan.mode == "subid"
    # more than a build's 65536 ids: the blocks of --slot builds are files' owners too
    assert plan.uids == (IdRange(0, 1000, 1), IdRange(1, 100000, 65536),
                         IdRange(65537, 500000, 131072))
    assert plan.gids == (IdRange(0, 1000, 1), IdRange(1, 200000, 65536))


def test_full_plan_needs_a_range_in_both_files_and_skips_one_holding_the_user() -> None:
    assert full_plan(uid=1000, gid=1000, name="alice", subuid="alice:100000:65536\n",
                     subgid="") is None
    assert full_plan(uid=1000, gid=1000, name="alice", subuid="bob:1:5\n",
                     subgid="alice:1:5\n") is None
    plan = full_plan(uid=1000, gid=1000, name="alice", subuid="alice:0:2000\nalice:9000:10\n",
                     subgid="alice:9000:10\n")
    assert plan is not None and plan.uids == (IdRange(0, 1000, 1), IdRange(1, 9000, 10))


def test_no_range_message_is_one_line_with_the_fix() -> None:
    text = no_range_message("/s/tmp/work-1", "alice", helpers=True)
    assert "\n" not in text
    assert text.startswith("remove /s/tmp/work-1: entries owned by ids outside your own")
    assert text.endswith("usermod --add-subuids 100000-165535 --add-subgids 100000-165535 "
                         "alice")
    assert "apt-get install uidmap" in no_range_message("/s", "alice", helpers=False)


def test_entries_the_user_may_not_remove_without_a_range_say_so(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "leftover").mkdir()

    def refused(dfd: int, name: str, tally: Tally) -> None:
        raise PermissionError(13, "Permission denied", name)

    monkeypatch.setattr(userns_rm, "remove_at", refused)
    monkeypatch.setattr(userns_rm, "read_full_plan", lambda what: (
        None, no_range_message(what, "alice", helpers=True)))
    with pytest.raises(StoreError, match=r"^remove .*/leftover: entries owned by ids "
                                         r"outside your own .* usermod --add-subuids"):
        userns_rm.remove_tree(tmp_path / "leftover")


# -- the walker ---------------------------------------------------------------------------------


def _tree(root: Path, outside: Path) -> None:
    (root / "a" / "b").mkdir(parents=True)
    (root / "a" / "b" / "f").write_bytes(b"x" * 1000)
    (root / "a" / "link").symlink_to(outside)  # a symlink out: unlinked, not followed
    (root / "a" / "flink").symlink_to(outside / "keep")
    (root / "ro").mkdir()
    (root / "ro" / "g").write_text("g")
    (root / "ro").chmod(0o555)  # an extracted layer's directory
    (root / "zero").mkdir()
    (root / "zero" / "h").write_text("h")
    (root / "zero").chmod(0)  # overlayfs's work/work


def test_remove_at_removes_a_tree_without_following_symlinks(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("canary")
    store = tmp_path / "store"
    (store / "tmp").mkdir(parents=True)
    _tree(store / "tmp", outside)
    dfd = os.open(store, os.O_RDONLY | os.O_DIRECTORY)
    try:
        tally = Tally()
        remove_at(dfd, "tmp", tally)
        remove_at(dfd, "gone-already", tally)  # nothing there: fine
    finally:
        os.close(dfd)
    assert os.listdir(store) == []
    assert (outside / "keep").read_text() == "canary"
    assert tally.freed >= 1000 + 2 and tally.other_fs == []


def test_remove_at_holds_one_fd_whatever_the_depth(tmp_path: Path) -> None:
    """A tree deeper than the fd limit (a step can make one): removed all the same."""
    depth = 300
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    for _ in range(depth):  # fd-relative: the path would pass PATH_MAX
        os.mkdir("d", dir_fd=fd)
        sub = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = sub
    os.close(os.open("f", os.O_WRONLY | os.O_CREAT, 0o600, dir_fd=fd))
    os.close(fd)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    dfd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    resource.setrlimit(resource.RLIMIT_NOFILE, (100, hard))
    try:
        remove_at(dfd, "d", Tally())
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        os.close(dfd)
    assert os.listdir(tmp_path) == []


def test_remove_tree_of_a_symlink_removes_the_link_only(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("canary")
    (tmp_path / "store").mkdir()
    (tmp_path / "store" / "evil").symlink_to(outside)
    userns_rm.remove_tree(tmp_path / "store" / "evil")
    assert not os.path.lexists(tmp_path / "store" / "evil")
    assert (outside / "keep").read_text() == "canary"


# -- the reset ----------------------------------------------------------------------------------


def test_plan_reset_keeps_the_lock_for_last() -> None:
    plan = plan_reset(Path("/s"), ["tmp", "gc.lock", "blobs", "images.lock", "layers"])
    assert plan.entries == ("blobs", "images.lock", "layers", "tmp")
    assert plan.last == ("gc.lock",)
    worker = plan_reset(Path("/w"), ["tenants", "anonymous-auth.json"])
    assert worker.entries == ("anonymous-auth.json", "tenants") and worker.last == ()


@pytest.mark.parametrize("names", [[], ["Documents", ".bashrc"], ["blobs"], ["tenants"]])
def test_plan_reset_refuses_what_is_not_a_store(names: list[str]) -> None:
    with pytest.raises(StoreError, match=r"^system reset: /home/u does not look like a "
                                         r"rootbuild store .*; nothing removed$"):
        plan_reset(Path("/home/u"), names)


def _store(root: Path) -> None:
    for sub in ("blobs/sha256", "layers/abc/etc", "tmp/work-1"):
        (root / sub).mkdir(parents=True)
    (root / "blobs/sha256/00").write_bytes(b"b" * 100)
    (root / "layers/abc/etc/passwd").write_text("root:x:0:0::/:/bin/sh\n")
    (root / "layers/abc/etc").chmod(0o555)
    for name in ("gc.lock", "images.lock"):
        (root / name).touch()


def test_reset_removes_the_store_and_only_it(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("canary")
    root = tmp_path / "store"
    _store(root)
    (root / "tmp/work-1/out").symlink_to(outside)
    (tmp_path / "sibling").write_text("stays")
    asked: list[str] = []
    freed = reset(root, lambda text: asked.append(text) or True)
    assert freed is not None and freed >= 100
    assert not root.exists()
    assert (outside / "keep").read_text() == "canary" and (tmp_path / "sibling").exists()
    assert asked == [reset_mod.summary(root.absolute())]
    assert reset(root, lambda text: True) == NO_STORE


def test_reset_refuses_while_the_store_lock_is_held(tmp_path: Path) -> None:
    root = tmp_path / "store"
    _store(root)
    before = sorted(str(p) for p in root.rglob("*"))
    build = os.open(root / "gc.lock", os.O_RDWR)  # a running build holds it shared
    try:
        fcntl.flock(build, fcntl.LOCK_SH)
        with pytest.raises(StoreError, match=r"^system reset: store .* is in use by a running "
                                             r"build or worker; nothing removed"):
            reset(root, lambda text: pytest.fail("asked although the store is in use"))
    finally:
        os.close(build)
    assert sorted(str(p) for p in root.rglob("*")) == before


def test_reset_refuses_while_a_workers_tenant_build_holds_its_store(tmp_path: Path) -> None:
    root = tmp_path / "service"
    (root / "tenants/t1/store").mkdir(parents=True)
    (root / "anonymous-auth.json").write_text("{}")
    (root / "tenants/t1/store/gc.lock").touch()
    build = os.open(root / "tenants/t1/store/gc.lock", os.O_RDWR)
    try:
        fcntl.flock(build, fcntl.LOCK_SH)
        with pytest.raises(StoreError, match=r"in use by a running build or worker"):
            reset(root, lambda text: True)
    finally:
        os.close(build)
    assert (root / "tenants/t1/store/gc.lock").exists()
    assert reset(root, lambda text: True) is not None and not root.exists()


def test_reset_that_is_not_confirmed_removes_nothing(tmp_path: Path) -> None:
    root = tmp_path / "store"
    _store(root)
    before = sorted(str(p) for p in root.rglob("*"))
    assert reset(root, lambda text: False) is None
    assert sorted(str(p) for p in root.rglob("*")) == before


def test_reset_of_a_symlinked_root_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "store"
    _store(root)
    (tmp_path / "link").symlink_to(root)
    with pytest.raises(StoreError, match=r"^system reset: .*/link is not a directory "
                                         r"\(a symlink\?\); name the store directory itself"):
        reset(tmp_path / "link", lambda text: True)
    assert (root / "blobs/sha256/00").exists()


def test_reset_leaves_the_lock_to_a_build_that_started_meanwhile(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A build's ``Store.open`` makes the store's directories again while reset removes
    them, then waits on the lock reset holds: the lock file must stay, so that the build
    and a later prune share one lock."""
    root = tmp_path / "store"
    _store(root)
    real = reset_mod.remove_entries

    def racing(dfd: int, names: tuple[str, ...], what: str) -> Tally:
        tally = real(dfd, names, what)
        (root / "tmp").mkdir()  # what Store.open makes, after the removal
        return tally

    monkeypatch.setattr(reset_mod, "remove_entries", racing)
    with pytest.raises(StoreError, match=r"^system reset: a build started while .* was being "
                                         r"removed .*the directory stays$"):
        reset(root, lambda text: True)
    assert sorted(os.listdir(root)) == ["gc.lock", "tmp"]


# -- a build's start-up sweep (Store.sweep_scratch) -----------------------------------------------


def test_sweep_scratch_removes_dead_builds_dirs_only_when_the_store_is_free(
        tmp_path: Path) -> None:
    from rootbuild.image.store import Store

    store = Store.open(tmp_path / "store")
    for name in ("work-dead", "stage-dead"):
        (store.tmp_dir / name / "sub").mkdir(parents=True)
        (store.tmp_dir / name / "sub" / "f").write_bytes(b"x" * 10)
    (store.tmp_dir / "images-123").write_text("{}")  # a temp file of images.lock's writer
    removed: list[str] = []

    def remove(path: Path) -> int:
        removed.append(path.name)
        return userns_rm.remove_tree(path)

    build = os.open(store.root / "gc.lock", os.O_RDWR)
    try:
        fcntl.flock(build, fcntl.LOCK_SH)  # another build runs: its scratch is live
        assert store.sweep_scratch(remove) is None
    finally:
        os.close(build)
    assert removed == []
    freed = store.sweep_scratch(remove)
    assert removed == ["stage-dead", "work-dead"] and freed is not None and freed >= 20
    assert sorted(p.name for p in store.tmp_dir.iterdir()) == ["images-123"]
    with store.shared_lock():  # this process's own build: never swept under it
        assert store.sweep_scratch(remove) is None
