"""The pure parts of ``--network=isolated``: the deny list, the rtnetlink messages, the
resolv.conf an isolated step gets, slirp4netns's command line, and the build's choice of
network (engine/network.py)."""

from __future__ import annotations

import socket
import struct
from pathlib import Path

import pytest
from test_engine import Rig

from rootbuild.engine import network
from rootbuild.engine.options import BuildOptions
from rootbuild.errors import UsageError
from rootbuild.sandbox import netdeny, usernet


def test_denied_prefixes_cover_private_link_local_and_the_host() -> None:
    prefixes = netdeny.denied_prefixes(["127.0.0.1", "192.0.2.2", "192.0.2.2", "fd00::2"])
    for required in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16",
                     "100.64.0.0/10", "192.0.2.2/32", "10.0.2.0/25", "10.0.2.128/25"):
        assert required in prefixes
    assert prefixes.count("192.0.2.2/32") == 1
    assert not any(p.startswith("127.") for p in prefixes)  # the step's own loopback


@pytest.mark.parametrize(("address", "denied"), [
    ("169.254.169.254", True), ("10.0.2.2", True), ("10.0.2.3", True), ("172.31.0.1", True),
    ("192.168.1.1", True), ("100.100.100.200", True), ("192.0.2.2", True),
    ("127.0.0.53", True), ("::1", True), ("fd00::1", True), ("fe80::1", True),
    ("not-an-address", True), ("1.1.1.1", False), ("8.8.8.8", False), ("172.32.0.1", False),
])
def test_is_denied(address: str, denied: bool) -> None:
    assert netdeny.is_denied(address, netdeny.denied_prefixes(["192.0.2.2"])) is denied


def test_route_message_is_a_prohibit_route_in_the_main_table() -> None:
    msg = netdeny.route_message(7, "169.254.0.0/16")
    length, kind, flags, seq, _ = struct.unpack_from("=IHHII", msg)
    assert (length, kind, seq) == (len(msg), netdeny.RTM_NEWROUTE, 7)
    assert flags & netdeny.NLM_F_ACK and flags & netdeny.NLM_F_CREATE
    family, dst_len, _, _, table, _, scope, rtype, _ = struct.unpack_from("=BBBBBBBBI", msg, 16)
    assert (family, dst_len, table, scope, rtype) == (
        socket.AF_INET, 16, netdeny.RT_TABLE_MAIN, netdeny.RT_SCOPE_UNIVERSE,
        netdeny.RTN_PROHIBIT)
    attr_len, attr_type = struct.unpack_from("=HH", msg, 28)
    assert (attr_len, attr_type) == (8, netdeny.RTA_DST)
    assert msg[32:36] == socket.inet_aton("169.254.0.0")
    assert len(msg) % 4 == 0


def test_messages_and_errors_parse() -> None:
    ack = struct.pack("=IHHII", 36, netdeny.NLMSG_ERROR, 0, 3, 0) + struct.pack("=i", -13) \
        + b"\0" * 16
    done = struct.pack("=IHHII", 20, netdeny.NLMSG_DONE, 0, 4, 0) + b"\0" * 4
    parsed = netdeny.messages(ack + done)
    assert [(k, s) for k, s, _ in parsed] == [(netdeny.NLMSG_ERROR, 3), (netdeny.NLMSG_DONE, 4)]
    assert netdeny.error_of(parsed[0][2]) == 13
    assert netdeny.messages(b"\x05\0\0\0") == []  # truncated: nothing


def _newaddr(family: int, attrs: list[tuple[int, bytes]]) -> bytes:
    body = struct.pack("=BBBBI", family, 24, 0, 0, 2)
    for kind, value in attrs:
        attr = struct.pack("=HH", 4 + len(value), kind) + value
        body += attr + b"\0" * (-len(attr) % 4)
    return body


def test_addresses_of_prefers_the_local_address() -> None:
    local, peer = socket.inet_aton("192.0.2.2"), socket.inet_aton("192.0.2.9")
    payload = _newaddr(socket.AF_INET, [(netdeny.IFA_ADDRESS, peer), (netdeny.IFA_LOCAL, local)])
    assert netdeny.addresses_of(payload) == ["192.0.2.2"]
    assert netdeny.addresses_of(_newaddr(socket.AF_INET, [(netdeny.IFA_ADDRESS, peer)])) == [
        "192.0.2.9"]
    assert netdeny.addresses_of(_newaddr(socket.AF_INET6, [(netdeny.IFA_ADDRESS, b"\0" * 16)])
                                ) == []


def test_slirp_argv_disables_host_loopback_and_dns() -> None:
    argv = usernet.slirp_argv("/usr/bin/slirp4netns", 6, 4, 5)
    assert argv[0] == "/usr/bin/slirp4netns"
    for flag in ("--configure", "--disable-host-loopback", "--disable-dns", "--enable-sandbox",
                 "--enable-seccomp", "--exit-fd=4", "--ready-fd=5", f"--cidr={usernet.CIDR}"):
        assert flag in argv
    assert "--enable-ipv6" not in argv and "-6" not in argv
    # the namespace by path (an inherited fd): no join of a user namespace (--slot)
    assert argv[-3:] == ["--netns-type=path", "/proc/self/fd/6", "tap0"]


def test_choose_defaults() -> None:
    assert network.choose("", False, None) == ("host", None)
    assert network.choose("", True, None) == ("isolated", None)
    assert network.choose("none", True, None) == ("none", None)
    assert network.choose("host", False, "anything") == ("host", None)


def test_untrusted_without_slirp4netns_gets_none_and_says_so() -> None:
    mode, warning = network.choose("", True, "slirp4netns is not installed")
    assert mode == "none"
    assert warning == (
        "warning: --untrusted: RUN gets --network=none (no network at all), not the "
        "isolated public-egress network: slirp4netns is not installed")


def test_isolated_on_request_that_cannot_run_is_an_error() -> None:
    with pytest.raises(UsageError, match=r"^build: --network=isolated cannot run here: "
                                         r"slirp4netns is not installed$"):
        network.choose("isolated", False, "slirp4netns is not installed")


def test_untrusted_host_network_is_refused(tmp_path: Path) -> None:
    options = BuildOptions(context_dir=tmp_path, network="host", untrusted=True)
    with pytest.raises(UsageError, match=r"^build: --network=host is refused with --untrusted"):
        options.validate()
    BuildOptions(context_dir=tmp_path, untrusted=True).validate()
    with pytest.raises(UsageError, match="unknown --network 'bridge'"):
        BuildOptions(context_dir=tmp_path, network="bridge").validate()


def test_default_for() -> None:
    assert network.default_for(True) == "isolated"
    assert network.default_for(False) == "host"


def test_step_spec_refuses_the_host_network_for_untrusted_steps(tmp_path: Path) -> None:
    from rootbuild.errors import SandboxError
    from rootbuild.sandbox.spec import DirRoot, StepSpec

    spec = StepSpec(argv=("true",), rootfs=DirRoot(tmp_path), scratch=tmp_path / "s",
                    untrusted=True)
    with pytest.raises(SandboxError, match=r"^run step: the host network is refused for "
                                           r"untrusted builds$"):
        spec.validate()
    StepSpec(argv=("true",), rootfs=DirRoot(tmp_path), scratch=tmp_path / "s",
             untrusted=True, network="isolated").validate()


# -- the engine: which network each RUN step's spec carries -----------------------------------

@pytest.fixture(name="rig")
def _rig(tmp_path: Path) -> Rig:
    return Rig(tmp_path)


DOCKERFILE = "FROM scratch\nRUN default-step\nRUN --network=none none-step\n"


def _networks(rig: Rig) -> dict[str, str]:
    return {spec.argv[-1]: spec.network for spec in rig.executor.specs}


def test_trusted_build_runs_on_the_host_network(rig: Rig) -> None:
    rig.build(DOCKERFILE)
    assert _networks(rig) == {"default-step": "host", "none-step": "none"}


def test_untrusted_build_runs_isolated(rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(usernet, "unavailable", lambda: None)
    rig.build(DOCKERFILE, untrusted=True)
    assert _networks(rig) == {"default-step": "isolated", "none-step": "none"}
    assert all(spec.untrusted for spec in rig.executor.specs)
    assert rig.progress.of("warn") == []


def test_untrusted_build_without_slirp4netns_falls_back_to_none_and_says_so(
        rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(usernet, "unavailable", lambda: "slirp4netns is not installed")
    rig.build(DOCKERFILE, untrusted=True)
    assert _networks(rig) == {"default-step": "none", "none-step": "none"}
    assert ("warn", "warning: --untrusted: RUN gets --network=none (no network at all), not "
            "the isolated public-egress network: slirp4netns is not installed"
            ) in rig.progress.of("warn")


def test_isolated_and_host_runs_are_cached_apart(rig: Rig,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(usernet, "unavailable", lambda: None)
    rig.build("FROM scratch\nRUN step\n")
    rig.build("FROM scratch\nRUN step\n", untrusted=True)
    assert [spec.network for spec in rig.executor.specs] == ["host", "isolated"]
