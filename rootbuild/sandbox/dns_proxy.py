"""The DNS of an isolated RUN step: what its resolv.conf says, and which messages the
forwarder (``dns_relay.py``) relays. Pure: no socket here.

Job: ``upstreams_of(resolv_conf)`` lists the host's resolvers as ``(address, 53)``;
``parse_upstreams(text)`` reads the test override (``TEST_UPSTREAMS_ENV``);
``step_resolv_conf(resolv_conf)`` is the step's ``/etc/resolv.conf`` (``nameserver
127.0.0.11`` plus the host's ``search``/``domain``/``options`` lines); ``check_query``
accepts one well-formed standard query or says why not; ``check_answer`` accepts only the
upstream's answer to that query; ``servfail`` answers a query no upstream answered;
``RateLimit`` is the step's token bucket.

Rules:
- Only DNS crosses: a query is relayed when its header says query (QR=0), standard query
  opcode, exactly one question and no answer or authority records, at most one additional
  record and that an EDNS OPT record of the root name, class IN, no zone transfer type, no
  compression pointer and no byte after the last record, within ``MAX_QUERY_BYTES``.
  Anything else is dropped without a reply: nothing is forwarded for it.
- Only to DNS: upstreams are the host's ``nameserver`` addresses, port 53 (loopback and
  private ones included: the forwarder runs in the host's network namespace, the step
  does not). The test override names ``address:port`` pairs; it is read by the builder
  from its own environment, for the integration tests only.
- An answer is relayed back only when it comes from the socket the query went out on (one
  connected socket per query), carries the forwarder's own random id, QR=1 and the same
  question (compared without case), within ``MAX_ANSWER_BYTES``.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import struct

#: where the step's resolver is, inside its own network namespace (Docker's embedded DNS
#: server uses the same address)
PROXY_ADDRESS = "127.0.0.11"
DNS_PORT = 53
#: for the integration tests only: the builder's ``address:port[,address:port...]`` list
#: replaces the host's resolvers (a test runs its own DNS server on 127.0.0.1:<port>)
TEST_UPSTREAMS_ENV = "ROOTBUILD_TEST_DNS_UPSTREAMS"
MAX_QUERY_BYTES = 512  # a question (name <= 255 bytes) and an OPT record fit easily
MAX_ANSWER_BYTES = 65535
MAX_UPSTREAMS = 3  # glibc reads at most three nameserver lines
HEADER = struct.Struct("!HHHHHH")
QR = 0x8000
OPCODE_MASK = 0x7800
TC = 0x0200
RD = 0x0100
RA = 0x0080
SERVFAIL = 2
CLASS_IN = 1
TYPE_OPT = 41
#: IXFR, AXFR, MAILB, MAILA: transfers and obsolete types, never a build's lookup
REFUSED_TYPES = frozenset({251, 252, 253, 254})
KEPT_KEYWORDS = ("search", "domain", "options")

Upstream = tuple[str, int]


@dataclasses.dataclass(frozen=True)
class Query:
    """A checked query: its id, flags and the question's wire bytes (name, type, class)."""

    ident: int
    flags: int
    question: bytes
    name: str


def _name_end(data: bytes, offset: int) -> tuple[int, str] | str:
    """The offset after an uncompressed domain name at ``offset`` and the name, or why it
    is not one."""
    labels: list[str] = []
    length = 0
    while True:
        if offset >= len(data):
            return "truncated name"
        size = data[offset]
        if size & 0xC0:
            return "compressed or extended label in a query"
        offset += 1
        length += size + 1
        if length > 255:
            return "name longer than 255 bytes"
        if size == 0:
            return offset, ".".join(labels) + "."
        if offset + size > len(data):
            return "truncated label"
        labels.append(data[offset:offset + size].decode("ascii", errors="replace"))
        offset += size


def check_query(data: bytes) -> Query | str:
    """The query in ``data``, or why it is not relayed."""
    if len(data) > MAX_QUERY_BYTES:
        return f"longer than {MAX_QUERY_BYTES} bytes"
    if len(data) < HEADER.size:
        return "shorter than a DNS header"
    ident, flags, qd, an, ns, ar = HEADER.unpack_from(data)
    if flags & QR:
        return "not a query (QR=1)"
    if flags & OPCODE_MASK:
        return f"opcode {(flags & OPCODE_MASK) >> 11} is not a standard query"
    if qd != 1 or an or ns or ar > 1:
        return f"counts {qd}/{an}/{ns}/{ar}: not one question and at most one OPT record"
    end = _name_end(data, HEADER.size)
    if isinstance(end, str):
        return end
    offset, name = end
    if offset + 4 > len(data):
        return "truncated question"
    qtype, qclass = struct.unpack_from("!HH", data, offset)
    if qclass != CLASS_IN:
        return f"class {qclass} is not IN"
    if qtype in REFUSED_TYPES:
        return f"type {qtype} (zone transfer) is not relayed"
    question = data[HEADER.size:offset + 4]
    offset += 4
    if ar:
        # an OPT pseudo-record: root name, type 41, class, ttl, rdlength, rdata
        if offset + 11 > len(data) or data[offset] != 0:
            return "additional record is not an EDNS OPT record"
        rtype, _size, _ttl, rdlength = struct.unpack_from("!HHIH", data, offset + 1)
        if rtype != TYPE_OPT:
            return "additional record is not an EDNS OPT record"
        offset += 11 + rdlength
    if offset != len(data):
        return "bytes after the last record"
    return Query(ident, flags, question, name)


def _same_question(a: bytes, b: bytes) -> bool:
    # names compare without ASCII case (RFC 4343); type and class exactly
    return len(a) == len(b) and a[:-4].lower() == b[:-4].lower() and a[-4:] == b[-4:]


def check_answer(data: bytes, query: Query, ident: int) -> bool:
    """Whether ``data`` is the upstream's answer to ``query`` sent with id ``ident``."""
    if not HEADER.size <= len(data) <= MAX_ANSWER_BYTES:
        return False
    got, flags, qd, _an, _ns, _ar = HEADER.unpack_from(data)
    if got != ident or not flags & QR or flags & OPCODE_MASK or qd != 1:
        return False
    end = HEADER.size + len(query.question)
    return _same_question(data[HEADER.size:end], query.question)


def with_id(data: bytes, ident: int) -> bytes:
    """``data`` with its DNS id replaced."""
    return struct.pack("!H", ident) + data[2:]


def truncated(data: bytes) -> bool:
    """Whether an answer has the TC bit (the client retries over TCP)."""
    return len(data) >= HEADER.size and bool(HEADER.unpack_from(data)[1] & TC)


def servfail(query: Query) -> bytes:
    """A SERVFAIL answer to ``query`` (every upstream failed or timed out)."""
    flags = QR | (query.flags & RD) | RA | SERVFAIL
    return HEADER.pack(query.ident, flags, 1, 0, 0, 0) + query.question


def _endpoint(text: str) -> Upstream | None:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        return None
    host = host.removeprefix("[").removesuffix("]")
    try:
        return str(ipaddress.ip_address(host)), int(port)
    except ValueError:
        return None


def parse_upstreams(text: str) -> tuple[Upstream, ...] | str:
    """The test override ``address:port[,address:port...]`` (IPv6 in brackets), or why it
    is invalid."""
    found: list[Upstream] = []
    for item in text.split(","):
        endpoint = _endpoint(item.strip())
        if endpoint is None:
            return f"{TEST_UPSTREAMS_ENV}: {item.strip()!r} is not ADDRESS:PORT"
        found.append(endpoint)
    return tuple(found[:MAX_UPSTREAMS])


def upstreams_of(resolv_conf: str) -> tuple[Upstream, ...]:
    """The host's resolvers (``nameserver`` lines with an IP address), port 53, at most
    ``MAX_UPSTREAMS``, in order, without repeats. A scoped IPv6 address (``%eth0``) is
    kept with its scope."""
    found: list[Upstream] = []
    for line in resolv_conf.splitlines():
        fields = line.split()
        if len(fields) < 2 or fields[0] != "nameserver":
            continue
        address, _, scope = fields[1].partition("%")
        try:
            ip = str(ipaddress.ip_address(address))
        except ValueError:
            continue
        endpoint = (f"{ip}%{scope}" if scope else ip, DNS_PORT)
        if endpoint not in found:
            found.append(endpoint)
    return tuple(found[:MAX_UPSTREAMS])


def step_resolv_conf(resolv_conf: str) -> str:
    """The step's resolv.conf: the forwarder's address, then the host's ``search``,
    ``domain`` and ``options`` lines as they were."""
    kept = [line for line in resolv_conf.splitlines()
            if line.split()[:1] and line.split()[0] in KEPT_KEYWORDS]
    return "".join(f"{line}\n" for line in [f"nameserver {PROXY_ADDRESS}", *kept])


class RateLimit:
    """A token bucket: ``rate`` queries a second, ``burst`` at once; the caller passes the
    time (``time.monotonic()``)."""

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self._tokens = float(burst)
        self._at = now

    def allow(self, now: float) -> bool:
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True
