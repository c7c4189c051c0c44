"""A tiny authoritative DNS server on 127.0.0.1 for tests of the step's DNS forwarder.

Job: ``DnsServer(records, truncate=...)`` listens on UDP and TCP ``127.0.0.1:<port>`` (the
same port), answers ``A`` queries for the names in ``records`` (NXDOMAIN for any other
name, an empty NOERROR for other types of a known name), and records every datagram and
TCP message it received in ``received`` (the raw bytes, in order). A name in ``truncate``
gets an empty answer with the TC bit over UDP and the full answer over TCP. ``close()``
stops it.

Rules: no traffic leaves 127.0.0.1; one thread per transport, daemon threads that end at
``close()``; used by tests only (unit and integration).
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading

_HEADER = struct.Struct("!HHHHHH")
QR, AA, TC, RD, RA = 0x8000, 0x0400, 0x0200, 0x0100, 0x0080
NXDOMAIN = 3
TYPE_A = 1


def question_of(query: bytes) -> tuple[str, int, bytes] | None:
    """(name without the final dot, lower-cased; type; the question's wire bytes)."""
    offset = _HEADER.size
    labels = []
    while offset < len(query) and query[offset]:
        size = query[offset]
        labels.append(query[offset + 1:offset + 1 + size].decode("ascii", "replace"))
        offset += 1 + size
    offset += 1
    if offset + 4 > len(query):
        return None
    qtype = struct.unpack_from("!H", query, offset)[0]
    return ".".join(labels).lower(), qtype, query[_HEADER.size:offset + 4]


def build_query(ident: int, name: str, qtype: int = TYPE_A) -> bytes:
    """A standard recursive query for ``name``."""
    wire = b"".join(bytes([len(p)]) + p.encode() for p in name.strip(".").split(".")) + b"\0"
    return _HEADER.pack(ident, RD, 1, 0, 0, 0) + wire + struct.pack("!HH", qtype, 1)


def answer_addresses(answer: bytes) -> list[str]:
    """The A records' addresses in an answer (as this server writes them)."""
    count = _HEADER.unpack_from(answer)[3]
    found = question_of(answer)
    if found is None:
        return []
    offset = _HEADER.size + len(found[2])
    out = []
    for _ in range(count):
        rtype, _cls, _ttl, length = struct.unpack_from("!HHIH", answer, offset + 2)
        data = answer[offset + 12:offset + 12 + length]
        if rtype == TYPE_A and length == 4:
            out.append(socket.inet_ntoa(data))
        offset += 12 + length
    return out


class DnsServer:
    """See the module docstring."""

    def __init__(self, records: dict[str, str], truncate: frozenset[str] = frozenset()
                 ) -> None:
        self.records = {k.lower().strip("."): v for k, v in records.items()}
        self.truncate = {k.lower().strip(".") for k in truncate}
        self.received: list[bytes] = []
        self.tcp_received: list[bytes] = []
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind(("127.0.0.1", 0))
        self.port: int = self.udp.getsockname()[1]
        self.tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.tcp.bind(("127.0.0.1", self.port))
        self.tcp.listen(8)
        for sock in (self.udp, self.tcp):
            sock.settimeout(0.1)
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=t, daemon=True)
                         for t in (self._serve_udp, self._serve_tcp)]
        for thread in self._threads:
            thread.start()

    def answer(self, query: bytes, over_tcp: bool) -> bytes | None:
        if len(query) < _HEADER.size:
            return None
        ident, flags = _HEADER.unpack_from(query)[:2]
        found = question_of(query)
        if flags & QR or found is None:
            return None
        name, qtype, question = found
        head = QR | AA | RA | (flags & RD)
        if name not in self.records:
            return _HEADER.pack(ident, head | NXDOMAIN, 1, 0, 0, 0) + question
        if name in self.truncate and not over_tcp:
            return _HEADER.pack(ident, head | TC, 1, 0, 0, 0) + question
        if qtype != TYPE_A:
            return _HEADER.pack(ident, head, 1, 0, 0, 0) + question
        record = struct.pack("!HHHIH", 0xC00C, TYPE_A, 1, 60, 4) + socket.inet_aton(
            self.records[name])
        return _HEADER.pack(ident, head, 1, 1, 0, 0) + question + record

    def _serve_udp(self) -> None:
        while not self._stop.is_set():
            try:
                data, peer = self.udp.recvfrom(65535)
            except (TimeoutError, OSError):
                continue
            self.received.append(data)
            reply = self.answer(data, over_tcp=False)
            if reply is not None:
                with contextlib.suppress(OSError):
                    self.udp.sendto(reply, peer)

    def _serve_tcp(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.tcp.accept()
            except (TimeoutError, OSError):
                continue
            with conn:
                conn.settimeout(2)
                with contextlib.suppress(OSError, struct.error):
                    while True:
                        head = conn.recv(2)
                        if len(head) < 2:
                            break
                        data = conn.recv(struct.unpack("!H", head)[0])
                        self.received.append(data)
                        self.tcp_received.append(data)
                        reply = self.answer(data, over_tcp=True)
                        if reply is None:
                            break
                        conn.sendall(struct.pack("!H", len(reply)) + reply)

    def close(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()
        self.udp.close()
        self.tcp.close()
