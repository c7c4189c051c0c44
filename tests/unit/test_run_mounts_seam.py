"""``RUN --mount`` (bind, tmpfs): the pure parts (targets, sources, the spec's wire form,
mount order, the plan's refusal of other types) and the engine driven through the fakes,
checking the ``StepSpec.mounts`` it makes and the step cache it keys."""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path

import pytest
from test_engine import Rig

from rootbuild.dockerfile.instructions import Mount
from rootbuild.dockerfile.parser import parse_dockerfile
from rootbuild.engine.planning import SUPPORTED
from rootbuild.engine.run_mounts import (
    MOUNT_TYPES,
    MountEnv,
    MountType,
    Prepared,
    describe,
    source_of,
    target_of,
)
from rootbuild.errors import ContextError, ImageError, Location, SandboxError, StepError
from rootbuild.image.layermeta import LayerMeta
from rootbuild.platform import Platform
from rootbuild.sandbox.spec import (
    Bind,
    LayerMount,
    OverlayRoot,
    SecretMount,
    StepSpec,
    TmpfsMount,
)
from rootbuild.sandbox.step_mounts import ordered
from rootbuild.snapshot import LowerLayer
from rootbuild.stages.features import check_supported
from rootbuild.stages.graph import StageBase
from rootbuild.stages.plan import plan
from rootbuild.stages.steps import StepMount
from rootbuild.testing.fakes import FakeExecutor, FakeRun

LOC = Location("Dockerfile", 7)


def step_mount(**fields: object) -> StepMount:
    source = fields.pop("stage", None)
    return StepMount(Mount(**fields),  # type: ignore[arg-type]
                     StageBase(stage=source) if isinstance(source, int) else None)


# -- pure: targets, sources, names ------------------------------------------------------------


def test_target_is_required_and_never_the_root() -> None:
    with pytest.raises(StepError, match=r'^Dockerfile:7: RUN --mount=type=bind: a target is '
                       r'required$'):
        target_of(step_mount(), LOC)
    for target in ("/", "/a/..", "//"):
        with pytest.raises(StepError, match=r'invalid mount target "/"$'):
            target_of(step_mount(target=target), LOC)
    assert target_of(step_mount(target="/a/./b/"), LOC) == "/a/b"


def test_source_cannot_climb_above_its_root() -> None:
    # BuildKit: path.Join("/", source)
    assert source_of(step_mount(target="/m")) == "/"
    assert source_of(step_mount(target="/m", source="../../etc")) == "/etc"
    assert source_of(step_mount(target="/m", source="a/../../b/")) == "/b"
    assert source_of(step_mount(target="/m", source="./x")) == "/x"


def test_errors_name_the_mount_as_written() -> None:
    mount = step_mount(type="bind", from_="build", source="out", target="/m")
    assert describe(mount) == "RUN --mount=type=bind,from=build,source=out,target=/m"


def test_engine_supports_every_mount_type_and_a_refusal_names_only_the_missing_one() -> None:
    assert {f"run.mount.{name}" for name in MOUNT_TYPES} <= SUPPORTED
    assert set(MOUNT_TYPES) == {"bind", "tmpfs", "secret", "ssh", "cache"}
    # an engine without ssh refuses it by name only (not "bind, ssh"), at its line
    platform = Platform("linux", "amd64")
    text = "FROM scratch\nRUN --mount=target=/a --mount=type=ssh true\n"
    the_plan = plan(parse_dockerfile(text), target=None, build_args={}, target_platform=platform,
                    build_platform=platform)
    refused = r"^Dockerfile:2: RUN --mount=type=ssh: not supported yet$"
    with pytest.raises(StepError, match=refused):
        check_supported(the_plan, SUPPORTED - {"run.mount.ssh"})


# -- pure: the sandbox's side ---------------------------------------------------------------------


def _spec(tmp_path: Path, mounts: tuple[object, ...]) -> StepSpec:
    return StepSpec(argv=("true",), rootfs=OverlayRoot((), tmp_path / "o"),
                    scratch=tmp_path / "s", mounts=mounts)  # type: ignore[arg-type]


def test_step_spec_mounts_cross_as_json(tmp_path: Path) -> None:
    lower = LowerLayer(tmp_path / "tree", tmp_path / "meta.json")
    mounts = (
        LayerMount((lower,), "/src", "/w/ctx", readonly=False, snapshotter="fuse"),
        TmpfsMount("/t", 1 << 20),
        TmpfsMount("/u"),
        Bind(tmp_path / "secret", "/run/secrets/x", readonly=True, kind="file"),
        Bind(tmp_path / "agent.sock", "/run/buildkit/ssh_agent.0", readonly=False,
             kind="socket"),
        SecretMount("/run/secrets/y", 0o440, 1000, 2000, value=b"never-on-the-wire"),
    )
    spec = _spec(tmp_path, mounts)
    assert "never-on-the-wire" not in repr(spec.to_json())
    spec.validate()
    assert StepSpec.from_json(spec.to_json()) == spec


@pytest.mark.parametrize("target", ["/", "relative", "/a/../b", "/a//b"])
def test_step_spec_refuses_unclean_targets(tmp_path: Path, target: str) -> None:
    for mount in (TmpfsMount(target), LayerMount((), "/", target), SecretMount(target)):
        with pytest.raises(SandboxError, match="mount target"):
            _spec(tmp_path, (mount,)).validate()


def test_unknown_mount_type_on_the_wire_is_refused(tmp_path: Path) -> None:
    data = _spec(tmp_path, (TmpfsMount("/t"),)).to_json()
    data["mounts"][0]["type"] = "volume"
    with pytest.raises(SandboxError, match="unknown mount type 'volume'"):
        StepSpec.from_json(data)


def test_mounts_go_parents_first_and_otherwise_in_order() -> None:
    items = (TmpfsMount("/a/b/c"), TmpfsMount("/z"), TmpfsMount("/a"), TmpfsMount("/a/b"),
             TmpfsMount("/b"))
    assert [m.target for m in ordered(items)] == ["/z", "/a", "/b", "/a/b", "/a/b/c"]


# -- the engine, through the fakes ----------------------------------------------------------------


class Seen:
    """What each RUN's mounts held while the step ran (the build removes its scratch)."""

    def __init__(self) -> None:
        self.mounts: list[tuple[object, ...]] = []
        self.trees: list[dict[str, tuple[str, int, int]]] = []

    def script(self, spec: StepSpec) -> FakeRun:
        self.mounts.append(spec.mounts)
        for mount in spec.mounts:
            if isinstance(mount, LayerMount):
                self.trees.append(_tree(mount.lowers))
        return FakeRun()


def _tree(lowers: tuple[LowerLayer, ...]) -> dict[str, tuple[str, int, int]]:
    """path -> (content or "dir", uid, gid) of the merged lowers (no whiteouts here)."""
    out: dict[str, tuple[str, int, int]] = {}
    for lower in lowers:
        meta = LayerMeta.load(lower.meta_path)
        for path, entry in meta.entries.items():
            full = lower.tree / path
            what = full.read_text() if entry.kind == "file" else entry.kind
            out[path] = (what, entry.uid, entry.gid)
    return out


@pytest.fixture
def seen_rig(tmp_path: Path) -> tuple[Rig, Seen]:
    rig = Rig(tmp_path)
    seen = Seen()
    rig.executor = FakeExecutor(seen.script)
    return rig, seen


def test_bind_from_context_is_the_admitted_context_as_one_root_owned_layer(
    seen_rig: tuple[Rig, Seen]
) -> None:
    rig, seen = seen_rig
    rig.write({"src/a.txt": "a\n", "src/skip.log": "no\n", ".dockerignore": "*/*.log\n"})
    os.chmod(rig.context / "src/a.txt", 0o600)
    rig.build("FROM scratch\nWORKDIR /w\nRUN --mount=target=ctx,source=src true\n")
    (mounts,) = seen.mounts
    assert len(mounts) == 1
    mount = mounts[0]
    assert isinstance(mount, LayerMount)
    assert (mount.source, mount.target, mount.readonly, mount.snapshotter) == (
        "/src", "/w/ctx", True, "fake")
    tree = seen.trees[0]
    assert tree["src/a.txt"] == ("a\n", 0, 0)
    assert "src/skip.log" not in tree
    assert tree["Dockerfile"][1:] == (0, 0)


def test_bind_from_a_stage_or_an_image_mounts_their_layers(seen_rig: tuple[Rig, Seen]) -> None:
    rig, seen = seen_rig
    rig.images.add("tools", {"bin/tool": b"tool\n"})
    rig.write({"f.txt": "f\n"})
    rig.build(
        "FROM scratch AS build\nCOPY f.txt /out/f.txt\n"
        "FROM scratch\n"
        "RUN --mount=from=build,source=out,target=/m,rw "
        "--mount=from=tools,target=/tools --mount=type=tmpfs,target=/t,size=1m true\n"
    )
    (mounts,) = seen.mounts
    stage_mount, image_mount, tmpfs = mounts
    assert isinstance(stage_mount, LayerMount) and isinstance(image_mount, LayerMount)
    assert (stage_mount.source, stage_mount.target, stage_mount.readonly) == ("/out", "/m", False)
    assert (image_mount.source, image_mount.target, image_mount.readonly) == ("/", "/tools", True)
    assert seen.trees[0]["out/f.txt"][0] == "f\n"
    assert seen.trees[1]["bin/tool"][0] == "tool\n"
    assert tmpfs == TmpfsMount("/t", 1 << 20)
    assert ("tools", "linux/amd64") in rig.images.calls


def test_bound_context_content_keys_the_step(seen_rig: tuple[Rig, Seen]) -> None:
    rig, seen = seen_rig
    dockerfile = "FROM scratch\nRUN --mount=source=src,target=/src true\n"
    rig.write({"src/a.txt": "one\n", "other.txt": "x\n"})
    rig.build(dockerfile)
    assert len(seen.mounts) == 1
    rig.write({"other.txt": "changed, unbound\n"})
    rig.build(dockerfile)
    assert len(seen.mounts) == 1  # cached
    rig.write({"src/a.txt": "two\n"})
    rig.build(dockerfile)
    assert len(seen.mounts) == 2  # ran again
    assert seen.trees[-1]["src/a.txt"][0] == "two\n"


def test_a_bound_stage_keys_the_step(seen_rig: tuple[Rig, Seen]) -> None:
    rig, seen = seen_rig
    dockerfile = ("FROM scratch AS build\nCOPY f.txt /f.txt\n"
                  "FROM scratch\nRUN --mount=from=build,target=/m true\n")
    rig.write({"f.txt": "1\n"})
    rig.build(dockerfile)
    rig.build(dockerfile)
    assert len(seen.mounts) == 1
    rig.write({"f.txt": "2\n"})
    rig.build(dockerfile)
    assert len(seen.mounts) == 2


def test_tmpfs_options_are_in_the_key(seen_rig: tuple[Rig, Seen]) -> None:
    rig, seen = seen_rig
    rig.build("FROM scratch\nRUN --mount=type=tmpfs,target=/t true\n")
    rig.build("FROM scratch\nRUN --mount=type=tmpfs,target=/t,size=64k true\n")
    assert seen.mounts == [(TmpfsMount("/t"),), (TmpfsMount("/t", 65536),)]


@pytest.mark.parametrize(
    ("run", "error", "message"),
    [
        ("RUN --mount=source=nothere,target=/m true", StepError,
         r'RUN --mount=type=bind,source=nothere,target=/m: failed to compute cache key: '
         r'"/nothere": not found'),
        ("RUN --mount=from=build,source=../nothere,target=/m true", StepError,
         r'RUN --mount=type=bind,from=build,source=\.\./nothere,target=/m: failed to '
         r'compute cache key: "/nothere": not found'),
        ("RUN --mount=from=nowhere,target=/m true", ImageError,
         r"pull nowhere: no such image \(fake registry\)"),
        ("RUN --mount=type=tmpfs,target=/ true", StepError,
         r'RUN --mount=type=tmpfs,target=/: invalid mount target "/"'),
        ("RUN --mount=type=bind true", StepError,
         r"RUN --mount=type=bind: a target is required"),
        ("RUN --mount=type=bind,target=/m,bogus=1 true", Exception,
         r"unexpected key 'bogus' in 'bogus=1'"),
    ],
)
def test_bad_mounts_fail_at_their_line_and_run_nothing_there(
    seen_rig: tuple[Rig, Seen], run: str, error: type[Exception], message: str
) -> None:
    rig, seen = seen_rig
    rig.write({"f.txt": "f\n"})
    rig.fails(f"FROM scratch AS build\nCOPY f.txt /f.txt\nFROM build\n{run}\n", error,
              rf"^Dockerfile:4: {message}$")
    assert seen.mounts == []


def test_a_context_source_outside_the_context_is_refused(seen_rig: tuple[Rig, Seen]) -> None:
    rig, seen = seen_rig
    os.symlink("/etc", rig.context / "hostetc")
    with pytest.raises((StepError, ContextError), match=r"^Dockerfile:2: .*outside the build "
                       r"context"):
        rig.build("FROM scratch\nRUN --mount=source=hostetc,target=/m true\n")
    assert seen.mounts == []


# -- the seam the other mount types plug into ---------------------------------------------------


def test_a_mount_type_adds_env_and_holds_until_the_step_ends(
    seen_rig: tuple[Rig, Seen], monkeypatch: pytest.MonkeyPatch
) -> None:
    rig, _ = seen_rig
    events: list[str] = []

    async def key(mount: StepMount, env: MountEnv) -> None:
        return None

    async def prepare(mount: StepMount, env: MountEnv, held: contextlib.AsyncExitStack
                      ) -> Prepared:
        assert env.scratch is not None and env.scratch.is_dir()
        held.callback(events.append, f"released {mount.mount.target}")
        events.append(f"prepared {mount.mount.target}")
        if mount.mount.target == "/bad":
            raise StepError("cannot prepare", env.where)
        return Prepared(None, {"FROM_MOUNT": mount.mount.target or ""})

    def script(spec: StepSpec) -> FakeRun:
        events.append(f"ran with FROM_MOUNT={spec.env.get('FROM_MOUNT')} "
                      f"and {len(spec.mounts)} mounts")
        return FakeRun()

    monkeypatch.setitem(MOUNT_TYPES, "tmpfs", MountType(key, prepare))
    rig.executor = FakeExecutor(script)
    rig.build("FROM scratch\nRUN --mount=type=tmpfs,target=/a true\n")
    assert events == ["prepared /a", "ran with FROM_MOUNT=/a and 0 mounts", "released /a"]
    events.clear()
    rig.fails("FROM scratch\nRUN --mount=type=tmpfs,target=/a --mount=type=tmpfs,target=/bad "
              "true\n", StepError, r"^Dockerfile:2: cannot prepare$")
    assert events == ["prepared /a", "prepared /bad", "released /bad", "released /a"]


def test_a_source_lookup_retries_when_openat2_says_eagain(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # openat2(2): RESOLVE_IN_ROOT fails with EAGAIN when a mount or rename anywhere raced a
    # '..' lookup (other builds mount all the time); the caller is to retry (mounts.openat2
    # does, for every caller)
    import ctypes

    from rootbuild.sandbox import mounts, step_mounts

    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/passwd").write_text("root\n")
    real = mounts._libc
    calls: list[str] = []

    class Flaky:
        def syscall(self, number: ctypes.c_long, *args: object) -> int:
            if number.value == mounts.SYS_OPENAT2:
                calls.append(os.fsdecode(args[1]))  # type: ignore[arg-type]
                if len(calls) < 3:
                    ctypes.set_errno(errno.EAGAIN)
                    return -1
            return int(real.syscall(number, *args))

    monkeypatch.setattr(mounts, "_libc", Flaky())
    fd = step_mounts._open_source(str(tmp_path), "/etc/../../etc/passwd")
    try:
        assert os.path.samefile(f"/proc/self/fd/{fd}", tmp_path / "etc/passwd")
    finally:
        os.close(fd)
    assert calls == ["etc/../../etc/passwd"] * 3
