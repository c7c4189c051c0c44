"""sandbox.spec on the wire: StepSpec / InitRequest to_json and from_json round-trip through
real JSON text, malformed data is refused, binds are validated."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from rootbuild.errors import SandboxError
from rootbuild.sandbox.idmap import IdMapPlan, IdRange
from rootbuild.sandbox.spec import Bind, DirRoot, InitRequest, OverlayRoot, StepSpec
from rootbuild.snapshot import LowerLayer

LOWERS = (LowerLayer(Path("/s/l1/rootfs"), Path("/s/l1/meta.json")),
          LowerLayer(Path("/s/l2/rootfs"), Path("/s/l2/meta.json")))
BINDS = (
    Bind(Path("/scratch/etc/hosts"), "/etc/hosts", readonly=True, kind="file", required=False),
    Bind(Path("/cache/apt"), "/var/cache/apt", readonly=False, kind="dir"),
)
PLAN = IdMapPlan("subid", (IdRange(0, 1000, 1), IdRange(1, 100000, 65535)),
                 (IdRange(0, 1000, 1), IdRange(1, 100000, 65535)))


def _wire(data: dict[str, Any]) -> Any:
    return json.loads(json.dumps(data))


def _full_spec() -> StepSpec:
    return StepSpec(
        argv=("/bin/sh", "-c", "echo hi"), rootfs=OverlayRoot(LOWERS, Path("/w/ovl"), "fuse"),
        scratch=Path("/w/sandbox"), env={"A": "1", "PATH": "/bin"}, user="nobody:nogroup",
        workdir="/srv", network="none", proc="host-bind", untrusted=False, timeout=2.5,
        hostname="h", binds=BINDS,
    )


@pytest.mark.parametrize("spec", [
    _full_spec(),
    StepSpec(argv=("true",), rootfs=DirRoot(Path("/w/root")), scratch=Path("/w/s")),
    StepSpec(argv=("true",), rootfs=OverlayRoot((), Path("/w/o")), scratch=Path("/w/s"),
             timeout=3),
])
def test_step_spec_round_trip(spec: StepSpec) -> None:
    back = StepSpec.from_json(_wire(spec.to_json()))
    assert back == spec
    assert back.to_json() == spec.to_json()


def test_integer_timeout_reads_back_as_float() -> None:
    spec = StepSpec(argv=("true",), rootfs=DirRoot(Path("/r")), scratch=Path("/s"), timeout=3)
    back = StepSpec.from_json(_wire(spec.to_json()))
    assert back.timeout == 3.0 and isinstance(back.timeout, float)


@pytest.mark.parametrize("cpu", [None, 0, 3])
def test_init_request_round_trip(cpu: int | None) -> None:
    single = IdMapPlan("single", (IdRange(0, 1000, 1),), (IdRange(0, 1000, 1),), "warning: x")
    for plan in (PLAN, single):
        request = InitRequest(_full_spec(), plan, ("warning: a", "warning: b"), cpu, "/bin")
        back = InitRequest.from_json(_wire(request.to_json()))
        assert back == request


def test_bind_round_trip_keeps_every_field() -> None:
    for bind in BINDS:
        assert Bind.from_json(_wire(bind.to_json())) == bind


@pytest.mark.parametrize(("path", "value", "message"), [
    (("argv",), "true", r"'argv' is not a list"),
    (("argv",), [1], r"'argv' is not a list of strings"),
    (("env",), {"A": 1}, r"env is not a map of strings"),
    (("timeout",), "5", r"timeout is not a number"),
    (("timeout",), True, r"timeout is not a number"),
    (("rootfs", "kind"), "tmpfs", r"unknown root kind 'tmpfs'"),
    (("binds",), [{"source": "/a", "kind": "dir"}], r"'target' is missing"),
    (("untrusted",), "yes", r"'untrusted' is not a boolean"),
])
def test_malformed_step_spec_is_refused(path: tuple[str, ...], value: Any, message: str
                                        ) -> None:
    data = _wire(_full_spec().to_json())
    node = data
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises(SandboxError, match=r"^read step spec: " + message):
        StepSpec.from_json(data)


def test_missing_field_and_bad_bind_kind_are_refused() -> None:
    data = _wire(_full_spec().to_json())
    del data["workdir"]
    with pytest.raises(SandboxError, match=re.escape("read step spec: 'workdir' is missing")):
        StepSpec.from_json(data)
    bad = _wire(BINDS[0].to_json()) | {"kind": "pipe"}
    with pytest.raises(SandboxError, match=r"^read step spec: unknown bind kind 'pipe'$"):
        Bind.from_json(bad)
    request = _wire(InitRequest(_full_spec(), PLAN).to_json()) | {"cpu": "0"}
    with pytest.raises(SandboxError, match=r"^read step spec: cpu is not a number$"):
        InitRequest.from_json(request)
    request = _wire(InitRequest(_full_spec(), PLAN).to_json()) | {"idmap": {"mode": "x"}}
    with pytest.raises(SandboxError, match=r"^read step spec: malformed idmap"):
        InitRequest.from_json(request)


@pytest.mark.parametrize(("target", "message"), [
    ("etc/hosts", "is not a clean absolute path"),
    ("/etc/../hosts", "is not a clean absolute path"),
    ("/etc/hosts/", "is not a clean absolute path"),
    ("//etc", "is not a clean absolute path"),
    ("/a\0b", "is not a clean absolute path"),
    ("/", "would replace the root"),
])
def test_bad_bind_targets_are_refused(target: str, message: str) -> None:
    spec = StepSpec(argv=("true",), rootfs=DirRoot(Path("/r")), scratch=Path("/s"),
                    binds=(Bind(Path("/src"), target, readonly=True, kind="dir"),))
    with pytest.raises(SandboxError, match=r"^run step: bind target .*" + re.escape(message)):
        spec.validate()


def test_relative_bind_source_is_refused() -> None:
    spec = StepSpec(argv=("true",), rootfs=DirRoot(Path("/r")), scratch=Path("/s"),
                    binds=(Bind(Path("src"), "/x", readonly=True, kind="dir"),))
    with pytest.raises(SandboxError, match=r"^run step: bind source 'src' is not absolute$"):
        spec.validate()
    _full_spec().validate()  # the good ones pass
