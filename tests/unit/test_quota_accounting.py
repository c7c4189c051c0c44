"""The overlay's disk budget, pure: what each change costs, ENOSPC with nothing changed,
freed space given back, several servers sharing one pool (fuse_overlay/quota.py), and the
model charging before it changes anything (fuse_overlay/model.py)."""

from __future__ import annotations

import dataclasses
import errno
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from rootbuild.engine.disk_limit import (
    UNTRUSTED_DISK_LIMIT,
    exceeded_message,
    format_size,
    parse_disk_limit,
    parse_inode_limit,
    step_limits,
)
from rootbuild.errors import SandboxError, UsageError
from rootbuild.fuse_overlay.inodes import ROOT_INO
from rootbuild.fuse_overlay.model import OverlayModel
from rootbuild.fuse_overlay.pool import FilePool, create_pool, read_pool
from rootbuild.fuse_overlay.quota import ENTRY_BYTES, MemoryPool, Quota
from rootbuild.image.layermeta import EntryMeta, LayerMeta
from rootbuild.sandbox.spec import DirRoot, StepSpec, TmpfsMount
from rootbuild.sandbox.step_mounts import capped_tmpfs
from rootbuild.snapshot import DiskBudget

NOW = 5_000 * 10**9
MiB = 1 << 20


def model(limit: int, inodes: int = 1 << 40, *lower: EntryMeta) -> tuple[OverlayModel, Quota]:
    quota = Quota(MemoryPool(limit, inodes))
    return OverlayModel([LayerMeta.build(lower, (), ())], NOW, quota), quota


def new_file(m: OverlayModel, name: str, parent: int = ROOT_INO) -> int:
    node = m.create(parent, name, "file", 0o644, 0, 0, NOW, data=m.alloc_data())
    return node.ino


def enospc(fn: Callable[..., object], *args: object) -> None:
    with pytest.raises(OSError) as info:
        fn(*args)
    assert info.value.errno == errno.ENOSPC


# -- Quota against one pool --------------------------------------------------------------


def test_charge_up_to_the_limit_then_enospc_changes_nothing() -> None:
    pool = MemoryPool(MiB)
    q = Quota(pool)
    q.charge(MiB - 10)
    enospc(q.charge, 11)
    assert q.used_bytes == MiB - 10
    assert pool.usage().refusals == 1 and pool.usage().inode_refusals == 0
    q.charge(10)
    assert q.used_bytes == MiB
    assert q.free()[1] == 0


def test_release_gives_space_back_and_returns_reservation_to_the_pool() -> None:
    pool = MemoryPool(64 * MiB)
    q = Quota(pool)
    q.charge(60 * MiB)
    assert pool.usage().taken_bytes >= 60 * MiB
    q.release(60 * MiB)
    assert q.used_bytes == 0
    assert pool.usage().taken_bytes <= 2 * q.chunk_bytes  # the rest went back
    q.charge(63 * MiB)  # all of it can be taken again


def test_inode_limit_is_counted_apart_from_bytes() -> None:
    pool = MemoryPool(MiB, 3)
    q = Quota(pool)
    for _ in range(3):
        q.charge(ENTRY_BYTES, 1)
    enospc(q.charge, ENTRY_BYTES, 1)
    assert pool.usage().inode_refusals == 1 and pool.usage().refusals == 0
    q.release(ENTRY_BYTES, 1)
    q.charge(ENTRY_BYTES, 1)


def test_two_servers_share_one_pool() -> None:
    pool = MemoryPool(8 * MiB)
    a, b = Quota(pool), Quota(pool)
    a.charge(5 * MiB)
    enospc(b.charge, 4 * MiB)  # 5 + 4 > 8, whoever asks
    b.charge(3 * MiB - a.chunk_bytes)  # what a does not hold in reserve
    a.release(5 * MiB)
    b.charge(4 * MiB)  # a's freed space reaches b
    assert a.free()[0] == 8 * MiB


def test_the_file_pool_is_shared_through_its_file(tmp_path: Path) -> None:
    path = tmp_path / "budget"
    create_pool(path, 4 * MiB, 100)
    one, two = FilePool(path), FilePool(path)
    try:
        a, b = Quota(one), Quota(two)
        a.charge(3 * MiB, 1)
        enospc(b.charge, 2 * MiB)
        usage = read_pool(path)
        assert usage.refusals == 1
        assert 3 * MiB <= usage.taken_bytes <= 4 * MiB
        assert usage.taken_inodes >= 1
    finally:
        one.close()
        two.close()


# -- the model charges before it changes --------------------------------------------------


def test_create_costs_an_entry_and_an_inode_and_is_refused_with_nothing_made() -> None:
    m, q = model(2 * ENTRY_BYTES + 3)
    m.create(ROOT_INO, "d", "dir", 0o755, 0, 0, NOW)
    m.create(ROOT_INO, "s", "symlink", 0o777, 0, 0, NOW, target="abc")
    assert q.used_bytes == 2 * ENTRY_BYTES + 3 and q.used_inodes == 2
    enospc(m.create, ROOT_INO, "x", "dir", 0o755, 0, 0, NOW)
    assert m.child(ROOT_INO, "x") is None
    assert m.listdir(ROOT_INO) == [("d", m.child(ROOT_INO, "d").ino),  # type: ignore[union-attr]
                                   ("s", m.child(ROOT_INO, "s").ino)]  # type: ignore[union-attr]


def test_content_is_charged_before_it_is_written_and_given_back_on_truncate() -> None:
    m, q = model(MiB)
    ino = new_file(m, "f")
    node = m.get(ino)
    m.grow(node, 1000)
    assert q.used_bytes == ENTRY_BYTES + 1000
    enospc(m.grow, node, MiB)  # a write ending past the limit: refused whole
    assert q.used_bytes == ENTRY_BYTES + 1000 and node.charged_data == 1000
    m.resize(node, 10)  # truncate down
    assert q.used_bytes == ENTRY_BYTES + 10
    enospc(m.resize, node, 2 * MiB)  # truncate up past the limit
    assert node.charged_data == 10


def test_unlink_of_the_last_name_gives_everything_back_once_released() -> None:
    m, q = model(MiB)
    ino = new_file(m, "f")
    node = m.get(ino)
    m.opened(node)
    m.grow(node, 500_000)
    m.link(ino, ROOT_INO, "g", NOW)  # a second name costs an entry
    assert q.used_bytes == 2 * ENTRY_BYTES + 500_000
    m.forget(ino, node.lookups)
    m.unlink(ROOT_INO, "f", NOW)
    m.unlink(ROOT_INO, "g", NOW)
    assert q.used_bytes == 2 * ENTRY_BYTES + 500_000  # still open: still held
    assert m.released(ino) == [node.data]
    assert q.used_bytes == 0 and q.used_inodes == 0


def test_copy_up_of_a_lower_file_charges_its_size() -> None:
    lower = EntryMeta("big", "file", 0o644, size=3 * MiB)
    m, q = model(2 * MiB, 1 << 40, lower)
    node = m.child(ROOT_INO, "big")
    assert node is not None and m.needs_copy_up(node)
    enospc(m.resize, node, node.size)  # what ops._copy_up charges before copying
    assert q.used_bytes == 0
    m.resize(node, 0)  # O_TRUNC: a copy that keeps nothing costs nothing
    assert q.used_bytes == 0


def test_xattrs_cost_their_name_and_value() -> None:
    m, q = model(ENTRY_BYTES + 100)
    ino = new_file(m, "f")
    m.setxattr(ino, "user.a", b"x" * 50, NOW)
    assert q.used_bytes == ENTRY_BYTES + 56
    enospc(m.setxattr, ino, "user.b", b"x" * 50, NOW)
    assert m.listxattr(ino) == ["user.a"]
    m.setxattr(ino, "user.a", b"x" * 10, NOW)  # a smaller value gives back the difference
    assert q.used_bytes == ENTRY_BYTES + 16
    m.removexattr(ino, "user.a", NOW)
    assert q.used_bytes == ENTRY_BYTES


def test_without_a_quota_nothing_is_counted() -> None:
    m = OverlayModel([LayerMeta.build((), (), ())], NOW)
    ino = new_file(m, "f")
    m.grow(m.get(ino), 10 * MiB)
    assert m.get(ino).charged_data == 0 and m.get(ino).charged == 0


# -- the flags ----------------------------------------------------------------------------


def test_flags_read_sizes_as_docker_and_word_the_failure() -> None:
    assert parse_disk_limit("100MB") == 100 * MiB
    assert parse_disk_limit("1g") == 1 << 30
    assert parse_inode_limit("5000") == 5000
    for bad in ("0", "-1", "ten", ""):
        with pytest.raises(UsageError, match=r"^build: invalid --disk-limit"):
            parse_disk_limit(bad)
    with pytest.raises(UsageError, match=r"^build: invalid --inode-limit"):
        parse_inode_limit("0")
    assert format_size(100 * MiB) == "100MB"
    assert format_size(1536 * MiB) == "1.5GB"
    assert exceeded_message("disk", 100 * MiB, None) == "disk limit 100MB exceeded"
    assert exceeded_message("inodes", 100 * MiB, 50) == "inode limit 50 exceeded"
    assert step_limits(None, None, False) == (None, None)
    assert step_limits(None, None, True)[0] == UNTRUSTED_DISK_LIMIT
    assert step_limits(5, 6, True) == (5, 6)


def test_a_metadata_change_of_a_lower_file_charges_its_content_once() -> None:
    """A layer entry has no metadata-only form: chmod of a lower file puts its content in
    the layer again; a later copy-up of it costs nothing more."""
    lower = EntryMeta("big", "file", 0o644, size=MiB)
    m, q = model(2 * MiB, 1 << 40, lower)
    node = m.child(ROOT_INO, "big")
    assert node is not None
    m.setattr(node.ino, NOW, perm=0o600)
    assert q.used_bytes == MiB
    m.resize(node, node.size)  # the copy-up of a write
    assert q.used_bytes == MiB
    small, _ = model(MiB // 2, 1 << 40, lower)
    big = small.child(ROOT_INO, "big")
    assert big is not None
    enospc(lambda: small.setattr(big.ino, NOW, perm=0o600))
    assert big.perm == 0o644  # refused: nothing changed


# -- the sandbox's side: the wire form, tmpfs mounts ----------------------------------------


def test_step_spec_carries_the_limits_and_old_specs_read_as_unlimited(tmp_path: Path) -> None:
    spec = StepSpec(argv=("true",), rootfs=DirRoot(tmp_path), scratch=tmp_path / "s",
                    mounts=(TmpfsMount("/t", 4096, 10),), disk_limit=30 * MiB,
                    inode_limit=100)
    wire = json.loads(json.dumps(spec.to_json()))
    assert StepSpec.from_json(wire) == spec
    for key in ("disk_limit", "inode_limit"):
        del wire[key]
    del wire["mounts"][0]["nr_inodes"]
    old = StepSpec.from_json(wire)
    assert (old.disk_limit, old.inode_limit) == (None, None)
    assert old.mounts == (TmpfsMount("/t", 4096),)
    with pytest.raises(SandboxError, match="positive"):
        dataclasses.replace(spec, disk_limit=0).validate()


def test_a_tmpfs_gets_at_most_the_budget(tmp_path: Path) -> None:
    budget = DiskBudget(tmp_path / "b", 30 * MiB, 1000)
    assert capped_tmpfs(TmpfsMount("/t"), budget) == TmpfsMount("/t", 30 * MiB, 1000)
    assert capped_tmpfs(TmpfsMount("/t", MiB), budget) == TmpfsMount("/t", MiB, 1000)
    assert capped_tmpfs(TmpfsMount("/t", 64 * MiB), budget).size == 30 * MiB
    unlimited_inodes = DiskBudget(tmp_path / "b", 30 * MiB)
    assert capped_tmpfs(TmpfsMount("/t"), unlimited_inodes).nr_inodes is None
