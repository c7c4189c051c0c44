"""DNS for untrusted RUN steps (``--network=isolated``): the step's resolver is a forwarder
on 127.0.0.11 (``sandbox/dns_relay.py``), through the real ``rootbuild`` executable as the
unprivileged build user.

The host's resolvers are normally on loopback or a private address, which an isolated step
has no route to; the forwarder relays well-formed queries to them from the host's network
namespace. Here the upstream is this test's own DNS server on 127.0.0.1:<port>
(``rootbuild.testing.dns_server``, named by ``ROOTBUILD_TEST_DNS_UPSTREAMS``): no packet
leaves 127.0.0.1.

Docker's reference (the embedded DNS server, https://docs.docker.com/engine/userguide/
networking/configure-dns/): "As of Docker 1.10, the docker daemon implements an embedded
DNS server which provides built-in service discovery for any container created with a
valid name or net-alias or aliased by link." and, of the host's resolv.conf, "Filtering is
necessary because all localhost addresses on the host are unreachable from the container's
network."
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Harness, require_tool
from test_build_run import build, busybox_context
from test_untrusted_network import (
    Canary,
    host_v4,
    kill_builder_mid_step,
    probe_lines,
    slirp_processes,
)

from rootbuild.sandbox import dns_proxy
from rootbuild.testing.dns_server import DnsServer, build_query

pytestmark = pytest.mark.integration

PROBES = Path(__file__).parent / "netprobe"
NAME = "pkg.rootbuild-dns.test"
JUNK = b"GET / HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n"


@pytest.fixture(scope="session")
def probes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """netprobe (TCP connect) and dnsprobe (one UDP exchange), compiled static."""
    gcc = require_tool("gcc")
    out = tmp_path_factory.mktemp("dnsprobe")
    found = {}
    for name in ("netprobe", "dnsprobe"):
        subprocess.run([gcc, "-static", "-O1", "-o", str(out / name),
                        str(PROBES / f"{name}.c")], check=True, capture_output=True)
        found[name] = (out / name).read_bytes()
    return found


@pytest.fixture
def canary() -> Iterator[Canary]:
    c = Canary()
    try:
        yield c
    finally:
        c.close()


@pytest.fixture
def private_address() -> str:
    """The address the test name resolves to: this machine's own (private) address when it
    has one, so that a canary can listen there."""
    return host_v4() or "10.123.45.67"


@pytest.fixture
def upstream(private_address: str) -> Iterator[DnsServer]:
    server = DnsServer({NAME: private_address})
    try:
        yield server
    finally:
        server.close()


def dns_context(rb: Harness, probes: dict[str, bytes], name: str, run: str) -> Path:
    ctx = busybox_context(rb, name, "FROM scratch\nCOPY rootfs/ /\n" + run + "\n", {
        "rootfs/netprobe": probes["netprobe"], "rootfs/dnsprobe": probes["dnsprobe"],
        **{f"rootfs/bin/{a}": "symlink:busybox" for a in ("nslookup", "sed", "tail", "test")},
    })
    for name_ in ("netprobe", "dnsprobe"):
        os.chmod(ctx / "rootfs" / name_, 0o755)
    os.chmod(rb.workdir, 0o755)
    return ctx


def relay_processes(rb: Harness) -> list[str]:
    out = subprocess.run(["ps", "-ww", "-o", "pid=,args=", "-u", str(rb.user.uid)],
                         capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if "rootbuild.sandbox.dns_relay" in line]


def env_for(server: DnsServer) -> dict[str, str]:
    return {dns_proxy.TEST_UPSTREAMS_ENV: f"127.0.0.1:{server.port}"}


def host_nameserver() -> str | None:
    """The host's first resolver, when it is an IPv4 address outside 127/8."""
    with contextlib.suppress(OSError):
        for upstream_ in dns_proxy.upstreams_of(Path("/etc/resolv.conf").read_text()):
            if "." in upstream_[0] and not upstream_[0].startswith("127."):
                return upstream_[0]
    return None


def test_untrusted_run_resolves_through_the_forwarder_and_nothing_else_crosses(
        rb: Harness, probes: dict[str, bytes], upstream: DnsServer, canary: Canary,
        private_address: str) -> None:
    """An untrusted RUN resolves a name with busybox nslookup through 127.0.0.11; the
    answer, a private address, stays unreachable; a non-DNS datagram to 127.0.0.11:53 gets
    no reply and reaches no upstream; the upstream's own address (the host's 127.0.0.1)
    and the host's real resolver stay out of reach; nothing is left after the build."""
    port = 80
    if private_address == host_v4():
        port = canary.listen(socket.AF_INET, (private_address, 0)).getsockname()[1]
    valid = build_query(0x5151, "direct." + NAME).hex()  # a name only this probe asks
    resolver = host_nameserver()
    run = ("RUN set -e; echo \"conf: $(sed -n 's/^nameserver //p' /etc/resolv.conf)\"; "
           f"ip=$(nslookup {NAME} | sed -n 's/^Address: //p' | tail -n 1); "
           "echo \"resolved: $ip\"; "
           f"! /netprobe tcp \"$ip\" {port}; "
           f"! /dnsprobe udp 127.0.0.11 53 {JUNK.hex()}; "
           f"! /dnsprobe udp 127.0.0.1 {upstream.port} {valid}; "
           + (f"! /netprobe tcp {resolver} 53; ! /dnsprobe udp {resolver} 53 {valid}; "
              if resolver else "")
           + "echo dns-done")
    ctx = dns_context(rb, probes, "resolve", run)
    proc = build(rb, ctx, "--untrusted", env=env_for(upstream), check=False)
    assert proc.returncode == 0, proc.stderr
    assert "dns-done" in proc.stderr
    assert re.search(r"conf: 127\.0\.0\.11$", proc.stderr, re.M), proc.stderr
    assert re.search(rf"resolved: {re.escape(private_address)}$", proc.stderr, re.M), \
        proc.stderr
    lines = probe_lines(proc.stderr)
    # the resolved private address: refused at once by the step's prohibit route
    assert lines[f"tcp {private_address}:{port}"] == "failed: Permission denied", lines
    assert canary.hits == []
    # the junk datagram: no reply, and the upstream saw only well-formed queries
    assert lines["udp 127.0.0.11:53"].startswith("no reply"), lines
    # the upstream's address is the step's own loopback: nothing listens there
    assert lines[f"udp 127.0.0.1:{upstream.port}"].startswith("no reply"), lines
    if resolver:
        assert lines[f"tcp {resolver}:53"] == "failed: Permission denied", lines
        assert lines[f"udp {resolver}:53"] == "failed: Permission denied", lines
    assert upstream.received, "nslookup's queries never reached the upstream"
    for data in upstream.received:
        assert JUNK not in data
        assert not isinstance(dns_proxy.check_query(data), str), data
    assert all(b"\x06direct" not in data for data in upstream.received)
    assert relay_processes(rb) == [] and slirp_processes(rb) == []


def test_a_truncated_answer_is_retried_over_tcp(rb: Harness, probes: dict[str, bytes]
                                                ) -> None:
    """The TC bit: the client asks again over TCP 127.0.0.11:53, and the forwarder relays
    that query over TCP to the upstream; a non-DNS TCP message is relayed nowhere."""
    big = "big." + NAME
    server = DnsServer({big: "10.1.2.3"}, truncate=frozenset({big}))
    query = build_query(0x6262, big)
    run = ("RUN set -e; "
           f"/dnsprobe udp 127.0.0.11 53 {query.hex()}; "
           f"! /dnsprobe tcp 127.0.0.11 53 {JUNK.hex()}; "
           f"/dnsprobe tcp 127.0.0.11 53 {query.hex()}; echo tcp-done")
    try:
        ctx = dns_context(rb, probes, "tcp", run)
        proc = build(rb, ctx, "--untrusted", env=env_for(server), check=False)
    finally:
        server.close()
    assert proc.returncode == 0, proc.stderr
    assert "tcp-done" in proc.stderr
    lines = probe_lines(proc.stderr)
    # over UDP: the question alone with TC; over TCP: the question and one A record
    assert lines["udp 127.0.0.11:53"] == f"reply {len(query)} bytes", lines
    assert lines["tcp 127.0.0.11:53"] == f"reply {len(query) + 16} bytes", lines  # the last
    assert "no reply: closed" in proc.stderr  # the junk before it: closed, nothing relayed
    assert [m[2:] for m in server.tcp_received] == [query[2:]]
    assert all(JUNK not in m for m in server.received)
    assert relay_processes(rb) == []


def test_no_forwarder_without_a_network(rb: Harness, probes: dict[str, bytes],
                                        upstream: DnsServer) -> None:
    """``RUN --network=none`` in an untrusted build: an empty resolv.conf, no resolver at
    127.0.0.11, and nothing reaches the upstream."""
    run = ("RUN --network=none set -e; test ! -s /etc/resolv.conf; "
           f"! /dnsprobe udp 127.0.0.11 53 {build_query(7, NAME).hex()}; echo none-done")
    ctx = dns_context(rb, probes, "none", run)
    proc = build(rb, ctx, "--untrusted", env=env_for(upstream), check=False)
    assert proc.returncode == 0, proc.stderr
    assert "none-done" in proc.stderr
    assert probe_lines(proc.stderr)["udp 127.0.0.11:53"].startswith("no reply")
    assert upstream.received == []


def test_an_invalid_test_override_is_one_line(rb: Harness, probes: dict[str, bytes]) -> None:
    """A malformed ``ROOTBUILD_TEST_DNS_UPSTREAMS`` fails the step with one line naming
    it, without a traceback."""
    ctx = dns_context(rb, probes, "badenv", "RUN echo ran")
    proc = build(rb, ctx, "--untrusted", env={dns_proxy.TEST_UPSTREAMS_ENV: "nowhere"},
                 check=False)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("rootbuild:")]
    assert len(errors) == 1 and "ROOTBUILD_TEST_DNS_UPSTREAMS" in errors[0], proc.stderr
    assert "Dockerfile:3" in errors[0], errors


def test_no_forwarder_left_after_the_builder_is_killed(rb: Harness, probes: dict[str, bytes],
                                                       upstream: DnsServer) -> None:
    """SIGKILL to the builder mid-step, after a lookup: the forwarder goes with the init."""
    ctx = dns_context(rb, probes, "killed", f"RUN nslookup {NAME} && echo started && sleep 60")
    def running() -> None:
        assert relay_processes(rb), "the DNS forwarder was not running during the step"
        assert upstream.received, "the lookup did not reach the upstream"

    kill_builder_mid_step(rb, ctx, running, env_for(upstream))
    deadline = time.monotonic() + 15
    while (relay_processes(rb) or slirp_processes(rb)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert relay_processes(rb) == [] and slirp_processes(rb) == []
