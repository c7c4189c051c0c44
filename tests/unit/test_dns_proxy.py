"""The isolated step's DNS: what is relayed (``sandbox/dns_proxy.py``, pure), and the
forwarder's loop (``sandbox/dns_relay.Forwarder``) on sockets of 127.0.0.1 against the test
DNS server (no namespace, no traffic beyond 127.0.0.1)."""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Iterator

import pytest

from rootbuild.errors import SandboxError
from rootbuild.sandbox import dns_proxy, dns_relay, executor
from rootbuild.sandbox.dns_proxy import check_answer, check_query
from rootbuild.sandbox.spec import DirRoot, StepSpec
from rootbuild.testing.dns_server import DnsServer, answer_addresses, build_query

QUERY = build_query(0x1234, "pkg.example.test")
OPT = b"\0" + struct.pack("!HHIH", 41, 1232, 0, 0)


def _with_counts(data: bytes, qd: int, an: int, ns: int, ar: int) -> bytes:
    return data[:4] + struct.pack("!HHHH", qd, an, ns, ar) + data[12:]


def test_a_standard_query_is_accepted() -> None:
    query = check_query(QUERY)
    assert isinstance(query, dns_proxy.Query)
    assert query.ident == 0x1234 and query.name == "pkg.example.test."
    assert query.question == QUERY[12:]


def test_a_query_with_an_edns_opt_record_is_accepted() -> None:
    data = _with_counts(QUERY, 1, 0, 0, 1) + OPT
    assert isinstance(check_query(data), dns_proxy.Query)


@pytest.mark.parametrize(("data", "why"), [
    (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "opcode"),
    (b"hello", "shorter than a DNS header"),
    (b"\0" * 11, "shorter than a DNS header"),
    (QUERY[:2] + struct.pack("!H", 0x8180) + QUERY[4:], "not a query"),
    (QUERY[:2] + struct.pack("!H", 0x2900) + QUERY[4:], "opcode 5"),  # UPDATE
    (_with_counts(QUERY, 2, 0, 0, 0), "counts 2/0/0/0"),
    (_with_counts(QUERY, 0, 0, 0, 0), "counts 0/0/0/0"),
    (_with_counts(QUERY, 1, 1, 0, 0), "counts 1/1/0/0"),
    (_with_counts(QUERY, 1, 0, 0, 1), "not an EDNS OPT record"),
    (_with_counts(QUERY, 1, 0, 0, 1) + b"\0" + struct.pack("!HHIH", 1, 1, 0, 0),
     "not an EDNS OPT record"),
    (QUERY + b"x", "bytes after the last record"),
    (QUERY[:-1], "truncated question"),
    (QUERY[:12] + b"\xc0\x0c" + QUERY[-4:], "compressed"),
    (QUERY[:12] + b"\x05ab", "truncated label"),
    (QUERY[:12] + (b"\x3f" + b"a" * 63) * 5 + b"\0" + QUERY[-4:], "longer than 255"),
    (build_query(1, "example.test", 252), "zone transfer"),
    (QUERY[:-2] + b"\0\3", "class 3 is not IN"),  # CHAOS
    (QUERY + b"\0" * 600, "longer than 512 bytes"),
])
def test_anything_else_is_not_relayed(data: bytes, why: str) -> None:
    result = check_query(data)
    assert isinstance(result, str) and why in result, result


def _answer(query: bytes, ident: int, flags: int = 0x8180) -> bytes:
    return struct.pack("!HHHHHH", ident, flags, 1, 0, 0, 0) + query[12:]


def test_only_the_matching_answer_goes_back() -> None:
    query = check_query(QUERY)
    assert isinstance(query, dns_proxy.Query)
    assert check_answer(_answer(QUERY, 77), query, 77)
    # names compare without case (0x20 randomisation by an upstream)
    upper = QUERY[:12] + QUERY[12:-4].upper() + QUERY[-4:]
    assert check_answer(_answer(upper, 77), query, 77)
    assert not check_answer(_answer(QUERY, 78), query, 77)  # another id
    assert not check_answer(_answer(QUERY, 77, flags=0x0100), query, 77)  # a query
    other = build_query(77, "other.example.test")
    assert not check_answer(_answer(other, 77), query, 77)  # another question
    assert not check_answer(_answer(QUERY[:-2] + b"\0\x1c", 77), query, 77)  # another type
    assert not check_answer(b"\0" * 5, query, 77)


def test_servfail_and_ids() -> None:
    query = check_query(QUERY)
    assert isinstance(query, dns_proxy.Query)
    fail = dns_proxy.servfail(query)
    assert struct.unpack_from("!HH", fail) == (0x1234, 0x8000 | 0x0100 | 0x0080 | 2)
    assert fail[12:] == QUERY[12:]
    assert dns_proxy.with_id(QUERY, 9)[:2] == b"\0\x09"
    assert dns_proxy.with_id(QUERY, 9)[2:] == QUERY[2:]
    assert not dns_proxy.truncated(QUERY)
    assert dns_proxy.truncated(_answer(QUERY, 1, flags=0x8380))


def test_upstreams_of_the_host_resolv_conf() -> None:
    text = ("# generated\nnameserver 10.255.255.53\nnameserver 127.0.0.53\n"
            "nameserver 10.255.255.53\nnameserver fe80::1%eth0\nnameserver bogus\n"
            "nameserver 8.8.8.8\nsearch corp.example\n")
    assert dns_proxy.upstreams_of(text) == (
        ("10.255.255.53", 53), ("127.0.0.53", 53), ("fe80::1%eth0", 53))
    assert dns_proxy.upstreams_of("search x\n") == ()


def test_step_resolv_conf_names_the_forwarder_and_keeps_search_and_options() -> None:
    text = ("nameserver 127.0.0.53\noptions edns0 trust-ad\nsearch corp.example\n"
            "sortlist 10.0.0.0/8\n")
    assert dns_proxy.step_resolv_conf(text) == (
        "nameserver 127.0.0.11\noptions edns0 trust-ad\nsearch corp.example\n")


def test_the_test_override_names_address_and_port() -> None:
    assert dns_proxy.parse_upstreams("127.0.0.1:5353, [::1]:53") == (
        ("127.0.0.1", 5353), ("::1", 53))
    for bad in ("127.0.0.1", "127.0.0.1:0", "localhost:53", "127.0.0.1:99999", ""):
        result = dns_proxy.parse_upstreams(bad)
        assert isinstance(result, str) and dns_proxy.TEST_UPSTREAMS_ENV in result


def test_rate_limit_is_a_token_bucket() -> None:
    limit = dns_proxy.RateLimit(rate=2, burst=3, now=0.0)
    assert [limit.allow(0.0) for _ in range(4)] == [True, True, True, False]
    assert limit.allow(0.5) and not limit.allow(0.5)  # one token after half a second
    assert [limit.allow(100.0) for _ in range(4)] == [True, True, True, False]  # capped


def test_executor_gives_an_isolated_step_the_forwarder(monkeypatch: pytest.MonkeyPatch,
                                                        tmp_path: object) -> None:
    monkeypatch.setenv(dns_proxy.TEST_UPSTREAMS_ENV, "127.0.0.1:5353")
    assert executor.dns_upstreams("isolated") == (("127.0.0.1", 5353),)
    assert executor.dns_upstreams("none") == ()
    assert executor.dns_upstreams("host") == ()
    assert executor._resolv_conf("none") == ""
    assert executor._resolv_conf("isolated", ()) == ""  # no resolver: no forwarder
    assert executor._resolv_conf("isolated", (("127.0.0.1", 5353),)).startswith(
        "nameserver 127.0.0.11\n")
    monkeypatch.setenv(dns_proxy.TEST_UPSTREAMS_ENV, "nonsense")
    with pytest.raises(SandboxError, match="ROOTBUILD_TEST_DNS_UPSTREAMS"):
        executor.dns_upstreams("isolated")


def test_spec_carries_the_upstreams_and_refuses_them_outside_isolated(tmp_path: object
                                                                      ) -> None:
    from pathlib import Path

    spec = StepSpec(("true",), DirRoot(Path("/r")), Path("/s"), network="isolated",
                    dns_upstreams=(("10.0.0.2", 53),))
    spec.validate()
    assert StepSpec.from_json(spec.to_json()) == spec
    old = spec.to_json()
    del old["dns_upstreams"]  # an older builder's spec: no forwarder
    assert StepSpec.from_json(old).dns_upstreams == ()
    with pytest.raises(SandboxError, match="only for --network=isolated"):
        StepSpec(("true",), DirRoot(Path("/r")), Path("/s"), network="none",
                 dns_upstreams=(("10.0.0.2", 53),)).validate()
    with pytest.raises(SandboxError, match="invalid DNS upstream"):
        StepSpec(("true",), DirRoot(Path("/r")), Path("/s"), network="isolated",
                 dns_upstreams=(("10.0.0.2", 0),)).validate()


# -- the forwarder's loop ------------------------------------------------------------------


class Relay:
    """A ``Forwarder`` serving a UDP and TCP socket on 127.0.0.1 in a thread."""

    def __init__(self, upstreams: list[tuple[str, int]]) -> None:
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind(("127.0.0.1", 0))
        self.address = self.udp.getsockname()
        self.tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.tcp.bind(self.address)
        self.tcp.listen(8)
        self.ctl, theirs = socket.socketpair()
        self.forwarder = dns_relay.Forwarder(self.udp, self.tcp, theirs, upstreams)
        self.thread = threading.Thread(target=self.forwarder.serve, daemon=True)
        self.thread.start()

    def ask(self, data: bytes, timeout: float = 3.0) -> bytes | None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(timeout)
            s.sendto(data, self.address)
            try:
                return s.recv(65535)
            except TimeoutError:
                return None

    def close(self) -> None:
        self.ctl.close()  # EOF: serve() returns
        self.thread.join(timeout=5)


@pytest.fixture
def upstream() -> Iterator[DnsServer]:
    server = DnsServer({"pkg.example.test": "10.9.8.7", "big.example.test": "10.1.1.1"},
                       truncate=frozenset({"big.example.test"}))
    try:
        yield server
    finally:
        server.close()


def test_forwarder_relays_a_query_and_its_answer(upstream: DnsServer) -> None:
    relay = Relay([("127.0.0.1", upstream.port)])
    try:
        answer = relay.ask(QUERY)
        assert answer is not None and answer[:2] == QUERY[:2]  # the step's own id back
        assert answer_addresses(answer) == ["10.9.8.7"]
        assert len(upstream.received) == 1
        assert upstream.received[0][2:] == QUERY[2:]  # relayed as is, under its own id
    finally:
        relay.close()
    assert not relay.thread.is_alive()


def test_forwarder_forwards_nothing_that_is_not_a_query(upstream: DnsServer) -> None:
    relay = Relay([("127.0.0.1", upstream.port)])
    try:
        for junk in (b"GET / HTTP/1.0\r\n\r\n", b"x" * 40, _answer(QUERY, 1),
                     _with_counts(QUERY, 2, 0, 0, 0)):
            assert relay.ask(junk, timeout=0.5) is None
        assert relay.ask(QUERY) is not None  # still serving
    finally:
        relay.close()
    assert len(upstream.received) == 1 and upstream.received[0][2:] == QUERY[2:]


def test_forwarder_falls_back_to_the_next_upstream_then_servfail(upstream: DnsServer
                                                                  ) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as dead:
        dead.bind(("127.0.0.1", 0))
        dead_port = dead.getsockname()[1]
    relay = Relay([("127.0.0.1", dead_port), ("127.0.0.1", upstream.port)])
    try:
        answer = relay.ask(QUERY)
        assert answer is not None and answer_addresses(answer) == ["10.9.8.7"]
    finally:
        relay.close()
    relay = Relay([("127.0.0.1", dead_port)])
    try:
        answer = relay.ask(QUERY)
        assert answer is not None and struct.unpack_from("!H", answer, 2)[0] & 0xF == 2
    finally:
        relay.close()


def test_forwarder_serves_tcp_after_a_truncated_answer(upstream: DnsServer) -> None:
    relay = Relay([("127.0.0.1", upstream.port)])
    query = build_query(0x4242, "big.example.test")
    try:
        answer = relay.ask(query)
        assert answer is not None and dns_proxy.truncated(answer)
        with socket.create_connection(relay.address, timeout=3) as s:
            s.sendall(struct.pack("!H", len(query)) + query)
            size = struct.unpack("!H", s.recv(2))[0]
            full = s.recv(size)
        assert full[:2] == query[:2] and answer_addresses(full) == ["10.1.1.1"]
        assert [m[2:] for m in upstream.tcp_received] == [query[2:]]
        with socket.create_connection(relay.address, timeout=3) as s:
            s.sendall(struct.pack("!H", 5) + b"hello")
            assert s.recv(2) == b""  # closed: nothing relayed
        assert len(upstream.tcp_received) == 1
    finally:
        relay.close()


def test_forwarder_rate_limit_drops_the_excess(upstream: DnsServer,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dns_relay, "RATE", 0.001)
    monkeypatch.setattr(dns_relay, "BURST", 2)
    relay = Relay([("127.0.0.1", upstream.port)])
    try:
        answers = [relay.ask(build_query(i, "pkg.example.test"), timeout=0.5)
                   for i in range(4)]
    finally:
        relay.close()
    assert [a is not None for a in answers] == [True, True, False, False]
    assert len(upstream.received) == 2
