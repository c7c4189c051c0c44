"""engine/run_flags.py, sandbox/rlimits.py and engine/metadata.py without a kernel: the
flags' text as Docker reads it, their checks, the StepSpec wire form with them, the cache key
inputs, the /etc/hosts the executor writes, and the --metadata-file document."""

from __future__ import annotations

import base64
import json
import resource
from pathlib import Path

import pytest

from rootbuild.engine.metadata import build_metadata
from rootbuild.engine.options import BuildOptions, BuildResult
from rootbuild.engine.run_flags import (
    RunFlags,
    check_run_flags,
    merge_ulimits,
    parse_add_host,
    parse_shm_size,
    parse_ulimit,
    sandbox_hostname,
)
from rootbuild.errors import Location, SandboxError, UsageError
from rootbuild.image.oci import Descriptor, StoredImage
from rootbuild.sandbox.executor import prepare_scratch
from rootbuild.sandbox.rlimits import Ulimit, check_ulimit
from rootbuild.sandbox.spec import DirRoot, StepSpec
from rootbuild.stages.checks import CheckWarning


def test_add_host_forms() -> None:
    assert parse_add_host("a:1.2.3.4") == (("a", "1.2.3.4"),)
    assert parse_add_host("a=1.2.3.4") == (("a", "1.2.3.4"),)
    assert parse_add_host("v6:::1") == (("v6", "::1"),)  # cut at the first ':'
    assert parse_add_host("v6=[2001:db8::1]") == (("v6", "2001:db8::1"),)
    assert parse_add_host("a:10.0.0.1,b=10.0.0.2") == (("a", "10.0.0.1"), ("b", "10.0.0.2"))


@pytest.mark.parametrize("text", ["nohost", ":1.2.3.4", "a b:1.2.3.4", "h:x", "h=[::1",
                                  "h:host-gateway", "h=1.2.3.4.5"])
def test_add_host_bad(text: str) -> None:
    with pytest.raises(UsageError) as info:
        parse_add_host(text)
    assert info.value.exit_code == 2 and "--add-host" in info.value.message


def test_shm_size() -> None:
    assert parse_shm_size("128m") == 128 << 20
    assert parse_shm_size("1g") == 1 << 30
    assert parse_shm_size("4096") == 4096
    for bad in ("0", "", "-5", "1x", "m"):
        with pytest.raises(UsageError):
            parse_shm_size(bad)


def test_ulimit_parse_and_merge() -> None:
    assert parse_ulimit("nofile=1024:2048") == Ulimit("nofile", 1024, 2048)
    assert parse_ulimit("core=0") == Ulimit("core", 0, 0)
    assert parse_ulimit("stack=-1") == Ulimit("stack", -1, -1)
    assert parse_ulimit("nofile=5:-1") == Ulimit("nofile", 5, -1)
    merged = merge_ulimits([Ulimit("nofile", 1, 1), Ulimit("core", 0, 0),
                            Ulimit("nofile", 2, 2)])
    assert merged == (Ulimit("core", 0, 0), Ulimit("nofile", 2, 2))


@pytest.mark.parametrize(("text", "needle"), [
    ("nofile", "argument"), ("nope=1", "type"), ("nofile=3:2", "soft limit"),
    ("nofile=1:2:3", "too many"), ("nofile=a", "integers"), ("nofile=-2", "-1"),
    ("nofile=-1:5", "soft limit"),
])
def test_ulimit_bad(text: str, needle: str) -> None:
    with pytest.raises(UsageError, match=needle):
        parse_ulimit(text)


def test_ulimit_above_own_hard_limit() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert check_ulimit(Ulimit("nofile", 1, hard)) is None
    reason = check_ulimit(Ulimit("nofile", 1, hard + 1))
    assert reason is not None and f"hard limit {hard}" in reason
    with pytest.raises(UsageError, match="cannot raise a hard limit"):
        check_run_flags(RunFlags(ulimits=(Ulimit("nofile", 1, hard + 1),)))


def test_hostname_from_build_args() -> None:
    assert sandbox_hostname({}) == "buildkitsandbox"
    assert sandbox_hostname({"BUILDKIT_SANDBOX_HOSTNAME": ""}) == "buildkitsandbox"
    assert sandbox_hostname({"BUILDKIT_SANDBOX_HOSTNAME": "b1"}) == "b1"
    options = BuildOptions(Path("/c"), build_args={"BUILDKIT_SANDBOX_HOSTNAME": "x y"})
    with pytest.raises(UsageError, match="not a valid hostname"):
        options.validate()
    BuildOptions(Path("/c"), build_args={"BUILDKIT_SANDBOX_HOSTNAME": "x" * 64}).validate()


def test_key_inputs_only_for_non_defaults() -> None:
    assert RunFlags().key_inputs() == {}
    flags = RunFlags("h", (("a", "1.2.3.4"),), 1024, (Ulimit("core", 0, 0),))
    assert flags.key_inputs() == {"hostname": "h", "hosts": "a=1.2.3.4", "shm": "1024",
                                  "ulimits": "core=0:0"}
    assert RunFlags(shm_size=2048).key_inputs() != RunFlags(shm_size=1024).key_inputs()


def _spec(**fields: object) -> StepSpec:
    base: dict[str, object] = {"argv": ("true",), "rootfs": DirRoot(Path("/w/root")),
                               "scratch": Path("/w/s")}
    return StepSpec(**(base | fields))  # type: ignore[arg-type]


def test_step_spec_wire_form_carries_the_flags() -> None:
    spec = _spec(**RunFlags("h", (("a", "::1"),), 4096, (Ulimit("nofile", 1, 2),)
                            ).step_fields())
    back = StepSpec.from_json(json.loads(json.dumps(spec.to_json())))
    assert back == spec and back.extra_hosts == (("a", "::1"),) and back.shm_size == 4096
    # absent from older wire data: the defaults
    data = spec.to_json()
    for key in ("extra_hosts", "shm_size", "ulimits"):
        del data[key]
    assert StepSpec.from_json(data) == _spec(hostname="h")


@pytest.mark.parametrize(("key", "value"), [
    ("extra_hosts", [["a"]]), ("shm_size", "1"), ("ulimits", [{"name": "nofile"}]),
])
def test_step_spec_malformed_flags_refused(key: str, value: object) -> None:
    data = _spec().to_json()
    data[key] = value
    with pytest.raises(SandboxError):
        StepSpec.from_json(data)


def test_step_spec_validate_flags() -> None:
    for bad in (_spec(shm_size=0), _spec(extra_hosts=(("a b", "1.2.3.4"),)),
                _spec(ulimits=(Ulimit("nofile", 3, 2),)), _spec(ulimits=(Ulimit("x", 1, 1),))):
        with pytest.raises(SandboxError):
            bad.validate()


def test_hosts_file_gets_the_entries(tmp_path: Path) -> None:
    spec = _spec(scratch=tmp_path / "s", hostname="hh",
                 extra_hosts=(("a", "10.0.0.1"), ("b", "::1")))
    prepared = prepare_scratch(spec)
    assert (tmp_path / "s/etc/hosts").read_text().splitlines() == [
        "127.0.0.1\tlocalhost hh", "::1\tlocalhost ip6-localhost ip6-loopback",
        "10.0.0.1\ta", "::1\tb",
    ]
    assert prepared.binds[0].target == "/etc/hosts" and prepared.binds[0].readonly


def _image() -> StoredImage:
    return StoredImage(
        manifest=Descriptor("application/vnd.oci.image.manifest.v1+json", "sha256:" + "m" * 64,
                            321),
        manifest_json={}, config=Descriptor("application/vnd.oci.image.config.v1+json",
                                            "sha256:" + "c" * 64, 12),
        config_json={}, layers=(), diff_ids=(),
    )


def test_metadata_document() -> None:
    image = _image()
    result = BuildResult(image.config.digest, image)
    assert build_metadata(result, ()) == {
        "containerimage.config.digest": image.config.digest,
        "containerimage.digest": image.manifest.digest,
        "containerimage.descriptor": {"mediaType": image.manifest.media_type,
                                      "digest": image.manifest.digest, "size": 321},
    }
    warning = CheckWarning("FromAsCasing", "casing", Location("Dockerfile", 3))
    pushed = BuildResult(image.config.digest, image, (("r/x:1", "sha256:" + "p" * 64),),
                         checks=(warning,))
    doc = build_metadata(pushed, ("r/x:1", "r/x:2"))
    assert doc["containerimage.digest"] == "sha256:" + "p" * 64
    assert "containerimage.descriptor" not in doc  # the pushed bytes differ from the store's
    assert doc["image.name"] == "r/x:1,r/x:2"
    [entry] = doc["buildx.build.warnings"]
    assert base64.b64decode(entry["short"]) == b"FromAsCasing: casing (line 3)"
    assert entry["range"] == [{"start": {"line": 3}, "end": {"line": 3}}]
