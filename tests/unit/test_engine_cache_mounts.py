"""RUN --mount=type=cache through the engine with the seams' fakes (no kernel): the step
gets an overlay of its cache instance at the target, what it leaves is folded into the
store, the next build's step sees it, and the contents never enter the step cache key."""

from __future__ import annotations

from pathlib import Path
from typing import cast

import pytest
import trio
from test_engine import Rig

from rootbuild.cache.mounts import CacheMounts, mount_key
from rootbuild.dockerfile.flags import parse_mount
from rootbuild.engine.cache_mounts import (
    BuildCacheMounts,
    CacheMountPlan,
    StepCaches,
    plan_cache_mount,
)
from rootbuild.errors import Location
from rootbuild.image.layermeta import EntryMeta, LayerMeta
from rootbuild.image.store import Staging
from rootbuild.sandbox.spec import KEPT_META, KEPT_TREE, LayerMount, StepSpec
from rootbuild.stages.steps import StepMount
from rootbuild.testing.fakes import FakeExecutor, FakeRun

DOCKERFILE = (
    "FROM scratch\nARG N\n"
    "RUN --mount=type=cache,target=/root/.cache,uid=1000 fill $N\n"
)


def _kept(spec: StepSpec) -> list[LayerMount]:
    return [m for m in spec.mounts if isinstance(m, LayerMount) and m.keep is not None]


def _fill(spec: StepSpec) -> FakeRun:
    """What the sandbox does for a step with mounts whose changes are kept: leave each
    one's changes in its ``keep`` directory (here: one file per run, named by the number
    of files already in the cache)."""
    for mount in _kept(spec):
        [lower] = mount.lowers
        assert mount.keep is not None and mount.keep.is_dir()
        present = sorted(p.name for p in lower.tree.iterdir())
        (mount.keep / KEPT_TREE).mkdir()
        name = f"run{len(present)}"
        (mount.keep / KEPT_TREE / name).write_text(",".join(present))
        LayerMeta.build([EntryMeta(name, "file", mode=0o100644, uid=1000,
                                   size=len(",".join(present)))]).save(
            mount.keep / KEPT_META)
    return FakeRun()


@pytest.fixture
def rig(tmp_path: Path) -> Rig:
    rig = Rig(tmp_path)
    rig.executor = FakeExecutor(_fill)
    return rig


def test_the_cache_persists_outside_the_layer_and_the_key(rig: Rig) -> None:
    rig.build(DOCKERFILE, build_args={"N": "1"})
    [spec] = rig.executor.specs
    [mount] = spec.mounts
    assert isinstance(mount, LayerMount)
    assert (mount.target, mount.source, mount.readonly) == ("/root/.cache", "/", False)
    assert mount.keep is not None
    store = CacheMounts(rig.store.root)
    tree = store.path(mount_key("/root/.cache")) / "tree"
    assert sorted(p.name for p in tree.iterdir()) == ["run0"]
    meta = LayerMeta.load(tree.parent / "meta.json")
    assert meta.get("").uid == 1000  # type: ignore[union-attr]  # the mount's uid=
    assert meta.get("run0").uid == 1000  # type: ignore[union-attr]

    rig.build(DOCKERFILE, build_args={"N": "2"})
    assert sorted(p.name for p in tree.iterdir()) == ["run0", "run1"]
    assert (tree / "run1").read_text() == "run0"
    assert len(rig.executor.specs) == 2
    rig.build(DOCKERFILE, build_args={"N": "2"})  # only the cache changed: still cached
    assert len(rig.executor.specs) == 2
    assert [i.id for i in store.list()] == ["/root/.cache"]


def test_a_failed_step_keeps_its_cache_writes(rig: Rig) -> None:
    def fail(spec: StepSpec) -> FakeRun:
        _fill(spec)
        return FakeRun(exit_code=3)

    rig.executor = FakeExecutor(fail)
    with pytest.raises(Exception, match="exit code: 3"):
        rig.build(DOCKERFILE, build_args={"N": "1"})
    tree = CacheMounts(rig.store.root).path(mount_key("/root/.cache")) / "tree"
    assert [p.name for p in tree.iterdir()] == ["run0"]


def test_one_id_mounted_twice_by_a_locked_step_does_not_wait_for_itself(rig: Rig) -> None:
    rig.build("FROM scratch\nRUN --mount=type=cache,target=/a,id=x,sharing=locked "
              "--mount=type=cache,target=/b,id=x,sharing=locked fill\n")
    [spec] = rig.executor.specs
    assert [m.target for m in _kept(spec)] == ["/a", "/b"]


def test_a_shared_mount_of_an_id_the_step_holds_privately_does_not_wait_for_itself(
    rig: Rig,
) -> None:
    rig.build("FROM scratch\nRUN --mount=type=cache,target=/a,id=x,sharing=private "
              "--mount=type=cache,target=/b,id=x fill\n")
    [spec] = rig.executor.specs
    assert [m.target for m in _kept(spec)] == ["/a", "/b"]


def test_buildkit_cache_mount_ns_namespaces_every_id(rig: Rig) -> None:
    """BuildKit's dockerfile frontend: the BUILDKIT_CACHE_MOUNT_NS build arg is the
    namespace of every cache id ("NS/id"), so two projects sharing a store keep apart."""
    rig.build(DOCKERFILE, build_args={"N": "1", "BUILDKIT_CACHE_MOUNT_NS": "proj-a"})
    rig.build(DOCKERFILE, build_args={"N": "2", "BUILDKIT_CACHE_MOUNT_NS": "proj-b"})
    store = CacheMounts(rig.store.root)
    for ns in ("proj-a", "proj-b"):
        tree = store.path(mount_key(f"{ns}//root/.cache")) / "tree"
        assert sorted(p.name for p in tree.iterdir()) == ["run0"]  # each its own instance
    assert not store.path(mount_key("/root/.cache")).exists()


def test_two_steps_taking_two_locked_ids_in_opposite_orders_do_not_deadlock(
    tmp_path: Path,
) -> None:
    """The second step holds "a" and waits for "b"; the first holds "b" and then needs
    "a": it lets go of "b" (later in order) rather than wait holding it, and takes it
    again, with a fresh snapshot, once "a" is free."""
    where = Location("Dockerfile", 2)
    (tmp_path / "store").mkdir()
    build = BuildCacheMounts(CacheMounts(tmp_path / "store"), cast(Staging, None))

    def plan(mount_id: str) -> CacheMountPlan:
        return plan_cache_mount(StepMount(parse_mount(
            f"type=cache,target=/{mount_id},id={mount_id},sharing=locked"), None), where)

    order: list[str] = []

    async def main() -> None:
        with trio.fail_after(10):
            await steps()

    async def steps() -> None:
        (tmp_path / "one").mkdir()
        (tmp_path / "two").mkdir()
        one, two = StepCaches(build, tmp_path / "one"), StepCaches(build, tmp_path / "two")
        await one.take(plan("b"), None)
        await two.take(plan("a"), None)
        async with trio.open_nursery() as nursery:
            async def second() -> None:
                await two.take(plan("b"), None)  # waits for one to let go of "b"
                order.append("two ran")
                await two.close()

            nursery.start_soon(second)
            await trio.sleep(0.2)
            assert order == []
            await one.take(plan("a"), None)  # lets go of "b", waits for "a"
            order.append("one ran")
            assert [t.plan.id for t in one.taken if t.fd is not None] == ["b", "a"]
            assert (one.taken[0].lower / "tree").is_dir()  # "b" snapshotted again
            await one.close()

    trio.run(main)
    assert order == ["two ran", "one ran"]
