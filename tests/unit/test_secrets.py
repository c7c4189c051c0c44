"""Secrets, ssh and entitlements without a kernel: ``--secret``/``--ssh``/``--allow``
parsing, ``RUN --device`` parsing, what a mount gives its step (``engine/secrets``), the
output mask, the memfd payload, the step spec's JSON (no values), and the engine through its
fakes (plan-time refusals, the spec a RUN gets, the cache key without the value)."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest
import trio

from rootbuild.dockerfile import flags as fl
from rootbuild.dockerfile.instructions import Device, Mount
from rootbuild.engine.build import build
from rootbuild.engine.entitlements import parse_allow
from rootbuild.engine.options import BuildOptions
from rootbuild.engine.seams import Seams
from rootbuild.engine.secrets import (
    BuildSources,
    OutputMask,
    SecretSource,
    SshSource,
    load_secrets,
    parse_secret,
    parse_ssh,
    secret_id,
    secret_mount,
    ssh_mount,
)
from rootbuild.errors import DockerfileError, SandboxError, StepError, UsageError
from rootbuild.image.store import Store
from rootbuild.platform import Platform
from rootbuild.sandbox.secrets import (
    Payload,
    payload_fd,
    read_payload,
    step_values,
    with_values,
)
from rootbuild.sandbox.spec import Bind, DirRoot, SecretMount, StepSpec
from rootbuild.testing.fakes import (
    FakeBaseImages,
    FakeExecutor,
    FakeExporter,
    FakeRun,
    RecordingProgress,
)

VALUE = b"hunter2-value"

# -- CLI --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "environ", "expected"), [
    ("id=npm,src=/x/npmrc", {}, SecretSource("npm", path="/x/npmrc")),
    ("id=npm,source=/x/npmrc,type=file", {}, SecretSource("npm", path="/x/npmrc")),
    ("id=tok,env=GH_TOKEN", {}, SecretSource("tok", env="GH_TOKEN")),
    ("type=env,id=tok,src=GH_TOKEN", {}, SecretSource("tok", env="GH_TOKEN")),
    ("src=/x/npmrc", {}, SecretSource("npmrc", path="/x/npmrc")),
    ("env=GH_TOKEN", {}, SecretSource("GH_TOKEN", env="GH_TOKEN")),
    # buildx's shorthand: the variable named by the id when set, else the file
    ("id=GH_TOKEN", {"GH_TOKEN": "v"}, SecretSource("GH_TOKEN", env="GH_TOKEN")),
    ("id=GH_TOKEN", {}, SecretSource("GH_TOKEN", path="GH_TOKEN")),
])
def test_parse_secret(text: str, environ: dict[str, str], expected: SecretSource) -> None:
    assert parse_secret(text, environ) == expected


@pytest.mark.parametrize(("text", "message"), [
    ("id=x,type=s3", r"unsupported secret type 's3'"),
    ("id=x,bogus=1", r"unexpected key 'bogus'"),
    ("id=x,src", r"invalid field 'src' must be a key=value pair"),
    ("type=file", r"an id is required"),
])
def test_parse_secret_refuses(text: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        parse_secret(text, {})


def test_load_secrets_reads_files_and_variables(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(VALUE)
    values = load_secrets((SecretSource("a", path=str(tmp_path / "f")),
                           SecretSource("b", env="B"), SecretSource("c", env="UNSET")),
                          {"B": "bee"})
    assert values == {"a": VALUE, "b": b"bee"}  # an unset variable gives no secret
    with pytest.raises(UsageError, match=r"^--secret id=d: read .*/nope: No such file"):
        load_secrets((SecretSource("d", path=str(tmp_path / "nope")),), {})


def test_parse_ssh(tmp_path: Path) -> None:
    key = tmp_path / "id_ed25519"
    key.write_text("k")
    assert parse_ssh("default", {"SSH_AUTH_SOCK": "/a.sock"}) == SshSource("default",
                                                                           socket="/a.sock")
    assert parse_ssh(f"deploy={key}", {}) == SshSource("deploy", keys=(str(key),))
    with pytest.raises(UsageError, match="SSH_AUTH_SOCK is not set"):
        parse_ssh("default", {})
    with pytest.raises(UsageError, match="neither an agent socket nor a key file"):
        parse_ssh(f"x={tmp_path}/missing", {})


def test_parse_allow() -> None:
    assert parse_allow(["network.host,security.insecure", "device"]) == {
        "network.host", "security.insecure", "device"}
    with pytest.raises(UsageError, match=r"--allow net: unknown entitlement"):
        parse_allow(["net"])


@pytest.mark.parametrize(("text", "device"), [
    ("/dev/fuse", Device("/dev/fuse")),
    ("/dev/kvm,required", Device("/dev/kvm", True)),
    ("name=/dev/kvm,required=false", Device("/dev/kvm", False)),
    ("vendor.com/gpu=0", Device("vendor.com/gpu=0")),
])
def test_parse_device(text: str, device: Device) -> None:
    assert fl.parse_device(text) == device


def test_parse_device_refuses_two_names() -> None:
    with pytest.raises(DockerfileError, match="device name already set to /dev/a"):
        fl.parse_device("/dev/a,/dev/b")


# -- what a step gets ---------------------------------------------------------------------------


def test_secret_defaults_follow_buildkit() -> None:
    assert secret_id(Mount(type="secret", target="/etc/npmrc")) == "npmrc"
    sources = BuildSources({"npmrc": VALUE, "tok": b"t0k"})
    assert secret_mount(Mount(type="secret", id="npmrc"), sources) == (
        SecretMount("/run/secrets/npmrc", 0o400, 0, 0), {})
    file, variables = secret_mount(
        Mount(type="secret", target="/root/npmrc", mode=0o440, uid=1000, gid=2000), sources)
    assert file == SecretMount("/root/npmrc", 0o440, 1000, 2000) and file.value == VALUE
    assert variables == {}
    assert secret_mount(Mount(type="secret", id="tok", env="TOKEN"), sources) == (
        None, {"TOKEN": b"t0k"})
    file, variables = secret_mount(
        Mount(type="secret", id="tok", env="BOTH", target="/t"), sources)
    assert file == SecretMount("/t") and file.value == b"t0k" and variables == {"BOTH": b"t0k"}
    assert secret_mount(Mount(type="secret", id="absent"), sources) == (None, {})


def test_required_secret_and_ssh_missing_when_the_step_runs() -> None:
    with pytest.raises(StepError, match=r"^RUN --mount=type=secret: secret x: not found$"):
        secret_mount(Mount(type="secret", id="x", required=True), BuildSources())
    with pytest.raises(StepError, match=r'no SSH key "default" forwarded from the client'):
        ssh_mount(Mount(type="ssh", required=True), "/t", BuildSources())
    assert ssh_mount(Mount(type="ssh"), "/t", BuildSources()) is None


def test_ssh_sockets_targets_and_auth_sock(tmp_path: Path) -> None:
    """"target: SSH agent socket path. Defaults to /run/buildkit/ssh_agent.${N}." (Docker's
    Dockerfile reference, RUN --mount=type=ssh,
    https://docs.docker.com/reference/dockerfile/#run---mounttypessh); N counts every ssh
    mount of the step, SSH_AUTH_SOCK names the first one it gets unless the step sets it."""
    ssh = (SshSource("default", socket="/a.sock"), SshSource("b", socket="/b.sock"))
    _, executor, _ = _build(
        tmp_path, "FROM scratch\nRUN --mount=type=ssh,id=missing --mount=type=ssh "
        "--mount=type=ssh,id=b,target=/b true\n", ssh=ssh)
    spec, = executor.specs
    assert [(str(b.source), b.target, b.kind) for b in spec.mounts
            if isinstance(b, Bind)] == [
        ("/a.sock", "/run/buildkit/ssh_agent.1", "socket"), ("/b.sock", "/b", "socket")]
    assert spec.env["SSH_AUTH_SOCK"] == "/run/buildkit/ssh_agent.1"
    _, executor, _ = _build(
        tmp_path, "FROM scratch\nENV SSH_AUTH_SOCK=/mine\nRUN --mount=type=ssh true\n", ssh=ssh)
    spec, = executor.specs
    assert spec.env["SSH_AUTH_SOCK"] == "/mine"


def test_output_mask() -> None:
    mask = OutputMask((b"abc\n", b"first line\nsecond line\nx\n"))
    assert mask("token abc here") == "token **** here"
    assert mask("second line!") == "****!"
    assert mask("x marks") == "x marks"  # a short line of a long value stays
    assert OutputMask(()).wrap(print) is print


# -- the sandbox side ----------------------------------------------------------------------------


def test_step_spec_json_holds_no_value_and_repr_hides_it() -> None:
    spec = StepSpec(argv=("true",), rootfs=DirRoot(Path("/r")), scratch=Path("/s"),
                    mounts=(SecretMount("/run/secrets/a", value=VALUE),),
                    secret_env={"A": VALUE}, insecure=True, devices=("/dev/fuse",))
    spec.validate()
    text = json.dumps(spec.to_json())
    assert VALUE.decode() not in text and VALUE.decode() not in repr(spec)
    back = StepSpec.from_json(json.loads(text))
    assert back.mounts == spec.mounts and list(back.secret_env) == ["A"]
    assert back.insecure and back.devices == ("/dev/fuse",)
    assert step_values(back) == Payload((b"",), {"A": b""})
    filled = with_values(back, step_values(spec))
    assert step_values(filled) == Payload((VALUE,), {"A": VALUE})
    with pytest.raises(SandboxError, match="a secret file has no value"):
        with_values(back, Payload())


def test_payload_memfd_round_trip() -> None:
    spec = StepSpec(argv=("true",), rootfs=DirRoot(Path("/r")), scratch=Path("/s"),
                    mounts=(SecretMount("/a", value=VALUE + b"\0\xff"),))
    fd = payload_fd(spec)
    assert fd is not None
    assert os.readlink(f"/proc/self/fd/{fd}").startswith("/memfd:rootbuild-secrets")
    assert read_payload(fd) == Payload((VALUE + b"\0\xff",), {})
    assert payload_fd(dataclasses.replace(spec, mounts=())) is None


# -- the engine through its fakes ----------------------------------------------------------------


def _build(tmp: Path, dockerfile: str, executor: FakeExecutor | None = None,
           **options: object) -> tuple[Store, FakeExecutor, RecordingProgress]:
    store = Store.open(tmp / "store")
    ctx = tmp / "ctx"
    ctx.mkdir(exist_ok=True)
    (ctx / "Dockerfile").write_text(dockerfile)
    executor = executor or FakeExecutor()
    progress = RecordingProgress()
    opts = BuildOptions(context_dir=ctx, target_platform=Platform("linux", "amd64"),
                        **options)  # type: ignore[arg-type]
    seams = Seams(executor, FakeBaseImages(store), FakeExporter(), lambda: "fake")
    trio.run(lambda: build(opts, store, progress, seams=seams))
    return store, executor, progress


def test_engine_gives_the_step_its_secret_and_masks_it(tmp_path: Path) -> None:
    executor = FakeExecutor(lambda spec: FakeRun(output=(f"got {VALUE.decode()}!",)))
    _, executor, progress = _build(
        tmp_path, "FROM scratch\nRUN --mount=type=secret,id=a,env=A true\n", executor,
        secrets={"a": VALUE},
    )
    spec, = executor.specs
    assert dict(spec.secret_env) == {"A": VALUE} and spec.mounts == ()
    assert "A" not in spec.env  # the variable crosses with the values, not in the spec
    lines = [entry[-1] for entry in progress.of("output")]
    assert "got ****!" in lines and not any(VALUE.decode() in line for line in lines)


def test_a_changed_secret_value_hits_the_cache(tmp_path: Path) -> None:
    dockerfile = "FROM scratch\nRUN --mount=type=secret,id=a cat /run/secrets/a\n"
    _, first, _ = _build(tmp_path, dockerfile, secrets={"a": b"one"})
    _, second, _ = _build(tmp_path, dockerfile, secrets={"a": b"two"})
    assert len(first.specs) == 1 and second.specs == []


def test_an_untrusted_builds_secret_step_is_never_cached(tmp_path: Path) -> None:
    """SERVICE.md: a step that mounts a secret is never cached across jobs (its key holds
    the id, not the value): an untrusted build neither takes it from the cache nor records
    it, so the next build runs it again; the steps around it are cached as usual."""
    dockerfile = ("FROM scratch\nRUN before\nRUN --mount=type=secret,id=a cat /run/secrets/a"
                  "\nRUN --mount=type=ssh,id=k true\n")
    options = {"untrusted": True, "network": "none", "secrets": {"a": b"one"}}

    def runs(spec: object) -> FakeRun:
        return FakeRun()

    _, first, _ = _build(tmp_path, dockerfile, FakeExecutor(runs), **options)
    _, second, progress = _build(tmp_path, dockerfile, FakeExecutor(runs), **options)
    assert len(first.specs) == 3
    assert [spec.argv[-1] for spec in second.specs] == [
        "cat /run/secrets/a", "true"]  # "before" was CACHED; the secret steps ran again
    assert [entry[1] for entry in progress.of("cached")] == ["[stage-0 2/4] RUN before"]


@pytest.mark.parametrize(("line", "options", "message"), [
    ("RUN --network=host true", {}, r"^Dockerfile:2: RUN --network=host: entitlement "
     r"network.host is not allowed; fix: build with --allow network.host$"),
    ("RUN --device=/dev/null true", {"allow": frozenset({"network.host"})},
     r"entitlement device is not allowed"),
    ("RUN --security=insecure true", {"allow": frozenset({"security.insecure"}),
                                      "untrusted": True},
     r"security.insecure is not allowed in an untrusted build"),
    ("RUN --mount=type=ssh,uid=1000 true", {}, r"^Dockerfile:2: RUN --mount=type=ssh: uid, "
     r"gid and mode other than 0 and 0600 are not supported"),
])
def test_plan_time_refusals(tmp_path: Path, line: str, options: dict[str, object],
                            message: str) -> None:
    with pytest.raises((StepError, DockerfileError), match=message):
        _build(tmp_path, f"FROM scratch\n{line}\n", **options)


def test_allowed_entitlements_reach_the_spec(tmp_path: Path) -> None:
    _, executor, _ = _build(
        tmp_path, "FROM scratch\nRUN --network=host --security=insecure --device=/dev/null "
        "--device=/dev/rootbuild-none true\n",
        allow=frozenset({"network.host", "security.insecure", "device"}), network="none",
    )
    spec, = executor.specs
    assert spec.network == "host" and spec.insecure and spec.devices == ("/dev/null",)
