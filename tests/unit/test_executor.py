"""SandboxExecutor: the state one build's steps share (CPU slots, the once-only id-mapping
warning) belongs to each executor, and errors from the sandbox's nursery come out bare.
The sandbox process itself is replaced by a fake ``run_init``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import trio
import trio.testing

from rootbuild.errors import SandboxError, StepError
from rootbuild.sandbox import executor as executor_module
from rootbuild.sandbox import run as run_module
from rootbuild.sandbox.executor import HOST_WARNING, SandboxExecutor
from rootbuild.sandbox.idmap import IdMapPlan, IdRange
from rootbuild.sandbox.spec import Bind, DirRoot, InitRequest, StepResult, StepSpec
from rootbuild.sandbox.zygote import Zygote

WARNING = "warning: RUN maps only root to your user: test"
SINGLE = IdMapPlan("single", (IdRange(0, 1000, 1),), (IdRange(0, 1000, 1),), WARNING)
SUBID = IdMapPlan("subid", (IdRange(0, 1000, 1), IdRange(1, 100000, 65535)),
                  (IdRange(0, 1000, 1), IdRange(1, 100000, 65535)))


class FakeSandbox:
    """Stands in for ``run.run_init``: records each request; a step waits for ``release``
    when asked to, and fails when its argv says so."""

    def __init__(self) -> None:
        self.requests: list[InitRequest] = []
        self.release = trio.Event()
        self.started = 0
        self.zygotes: set[int] = set()

    async def __call__(self, request: InitRequest, on_output: Callable[[str], None],
                       zygote: Zygote) -> StepResult:
        self.zygotes.add(id(zygote))
        self.requests.append(request)
        self.started += 1
        if request.step.argv[0] == "wait":
            await self.release.wait()
        if request.step.argv[0] == "fail":
            raise SandboxError("map ids with newuidmap: refused")
        return StepResult(0, None, request.warnings)


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeSandbox:
    sandbox = FakeSandbox()
    monkeypatch.setattr(executor_module, "run_init", sandbox)
    return sandbox


class Specs:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.count = 0

    def __call__(self, *argv: str, proc: str = "fresh") -> StepSpec:
        self.count += 1
        return StepSpec(argv=argv, rootfs=DirRoot(self.base / "root"),
                        scratch=self.base / f"s{self.count}", proc=proc)


@pytest.fixture
def specs(tmp_path: Path) -> Specs:
    return Specs(tmp_path)


async def test_warning_once_per_executor_never_shared(fake: FakeSandbox, specs: Specs
                                                      ) -> None:
    a = SandboxExecutor(SINGLE, placement=False)
    b = SandboxExecutor(SINGLE, placement=False)
    assert (await a.run(specs("true"), print)).warnings == (WARNING,)
    assert (await a.run(specs("true"), print)).warnings == ()
    assert (await b.run(specs("true"), print)).warnings == (WARNING,)  # not lost to a's
    assert (await b.run(specs("true"), print)).warnings == ()
    assert (await SandboxExecutor(SUBID).run(specs("true"), print)).warnings == ()


async def test_warning_handed_on_when_a_step_raises(fake: FakeSandbox, specs: Specs) -> None:
    ex = SandboxExecutor(SINGLE, placement=False)
    with pytest.raises(SandboxError):
        await ex.run(specs("fail"), print)
    assert fake.requests[0].warnings == (WARNING,)
    assert (await ex.run(specs("true"), print)).warnings == (WARNING,)


async def test_host_bind_warns_on_every_step(fake: FakeSandbox, specs: Specs) -> None:
    ex = SandboxExecutor(SUBID, placement=False)
    for _ in range(2):
        result = await ex.run(specs("true", proc="host-bind"), print)
        assert result.warnings == (HOST_WARNING,)


async def test_cpu_slots_belong_to_each_executor(fake: FakeSandbox, specs: Specs) -> None:
    a = SandboxExecutor(SUBID, placement=True, cpus={0, 1, 2})
    b = SandboxExecutor(SUBID, placement=True, cpus={0, 1, 2})
    async with trio.open_nursery() as nursery:
        for ex in (a, a, b):
            nursery.start_soon(ex.run, specs("wait"), print)
            await trio.testing.wait_all_tasks_blocked()
        cpus = [r.cpu for r in fake.requests]
        assert cpus == [0, 1, 0]  # b's first step is not pushed aside by a's two
        fake.release.set()
    # every slot was given back: each executor starts over at CPU 0
    assert (await a.run(specs("true"), print)) is not None
    assert (await b.run(specs("true"), print)) is not None
    assert [r.cpu for r in fake.requests[3:]] == [0, 0]


async def test_slot_given_back_when_a_step_raises(fake: FakeSandbox, specs: Specs) -> None:
    ex = SandboxExecutor(SUBID, placement=True, cpus={0, 1})
    with pytest.raises(SandboxError):
        await ex.run(specs("fail"), print)
    await ex.run(specs("true"), print)
    assert [r.cpu for r in fake.requests] == [0, 0]


async def test_placement_off_and_from_environment(fake: FakeSandbox, specs: Specs,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    await SandboxExecutor(SUBID, placement=False, cpus={0, 1}).run(specs("true"), print)
    monkeypatch.setenv("ROOTBUILD_CPU_PLACEMENT", "off")
    from_env = SandboxExecutor(SUBID, cpus={0, 1})
    assert from_env.placement is False
    await from_env.run(specs("true"), print)
    monkeypatch.delenv("ROOTBUILD_CPU_PLACEMENT")
    assert SandboxExecutor(SUBID, cpus={0, 1}).placement is True
    assert [r.cpu for r in fake.requests] == [None, None]


async def test_request_carries_etc_binds_first(fake: FakeSandbox, specs: Specs) -> None:
    own = Bind(Path("/cache"), "/var/cache", readonly=False, kind="dir")
    spec = specs("true")
    spec = StepSpec(argv=spec.argv, rootfs=spec.rootfs, scratch=spec.scratch, binds=(own,),
                    hostname="box")
    await SandboxExecutor(SUBID, placement=False).run(spec, print)
    request = fake.requests[0]
    etc = spec.scratch / "etc"
    assert request.step.binds == (
        Bind(etc / "hosts", "/etc/hosts", readonly=True, kind="file", required=False),
        Bind(etc / "resolv.conf", "/etc/resolv.conf", readonly=True, kind="file",
             required=False),
        Bind(etc / "hostname", "/etc/hostname", readonly=True, kind="file", required=False),
        own,
    )
    assert (etc / "hostname").read_text() == "box\n"
    assert "127.0.0.1\tlocalhost box" in (etc / "hosts").read_text()
    assert request.idmap == SUBID and request.step.argv == ("true",)


async def test_invalid_spec_refused_before_anything_runs(fake: FakeSandbox, specs: Specs
                                                         ) -> None:
    ex = SandboxExecutor(SINGLE, placement=True, cpus={0, 1})
    with pytest.raises(SandboxError, match=r"^run step: empty command$"):
        await ex.run(specs(), print)
    assert fake.requests == []
    assert (await ex.run(specs("true"), print)).warnings == (WARNING,)
    assert fake.requests[0].cpu == 0


async def test_nursery_error_comes_out_bare() -> None:
    async def fail() -> None:
        raise SandboxError("map ids with newuidmap: refused")

    with pytest.raises(SandboxError) as info, run_module._bare_errors():
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.sleep_forever)
            await fail()
    assert type(info.value) is SandboxError

    with pytest.raises(StepError), run_module._bare_errors():
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_raise_step_error)


async def _raise_step_error() -> None:
    raise StepError("exec: not found")


async def test_other_groups_are_left_alone() -> None:
    with pytest.raises(ExceptionGroup) as info, run_module._bare_errors():
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_raise_step_error)
            nursery.start_soon(_raise_step_error)
            await trio.sleep(1)
    assert len(info.value.exceptions) == 2
    with pytest.raises(ExceptionGroup), run_module._bare_errors():
        async with trio.open_nursery():
            raise ValueError("a bug keeps its group and traceback")
    with trio.move_on_after(0.01) as scope:  # cancellation passes through untouched
        with run_module._bare_errors():
            async with trio.open_nursery() as nursery:
                nursery.start_soon(trio.sleep_forever)
                await trio.sleep_forever()
    assert scope.cancelled_caught
