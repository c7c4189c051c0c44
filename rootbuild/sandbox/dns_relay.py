"""The DNS forwarder of an isolated RUN step (Docker's embedded DNS server, for slirp4netns).

Job: ``DnsRelay(upstreams)`` in the sandbox init: ``fork_helper()`` while the init is still
in the host's network namespace (the helper, which stays there, is the fork itself when
the init is single-threaded, as a zygote's fork is: no interpreter start, ~30 ms a step;
else it execs a fresh ``python -I -m rootbuild.sandbox.dns_relay``), ``attach()`` once the
init is in the step's network namespace: it binds UDP and TCP ``127.0.0.11:53`` there and
hands both to the helper over a unix socket (``SCM_RIGHTS``); ``close()`` at teardown. The helper
(``Forwarder``) relays the step's queries to the host's resolvers and their answers back.

Rules:
- The sockets exist before the step does: the step cannot bind 127.0.0.11:53 first, and
  it reaches the forwarder only through them. The forwarder opens one connected socket
  per query to an upstream (``dns_proxy``: only well-formed queries, only to the
  resolvers' DNS port, only the matching answer back), so it is no relay to any other
  host service; the step itself still has no route to a private or loopback resolver.
- Bounded: ``RATE`` queries a second (``BURST`` at once) per step, ``MAX_PENDING`` UDP
  queries in flight, ``MAX_TCP`` TCP connections of ``MAX_TCP_QUERIES`` queries each,
  every upstream try ``TRY_SECONDS``; over a limit a query is dropped, and a query no
  upstream answered gets SERVFAIL.
- It does not outlive the step: the helper dies with the init (``PR_SET_PDEATHSIG``), ends
  when the init's end of the unix socket closes, is among the init's children the builder
  kills if the init vanishes, and ``close()`` kills and reaps it before the init reports
  its exit. It drops every capability and sets no_new_privs before it reads a byte.
- A forked helper keeps a copy of the init's memory, which holds this step's secret values
  (``secrets.py``) and the build's layer metadata (the zygote's, ``image/meta_cache.py``):
  nothing the step itself is not given (its secrets are mounted for it; the zygote never
  holds a secret, each init reads its own from a memfd after the fork). The helper parses
  only DNS messages, in Python, and the step cannot reach its memory (another pid
  namespace; no ptrace, no /proc of it).
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import json
import os
import secrets
import select
import selectors
import signal
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable, Sequence

from rootbuild.errors import SandboxError
from rootbuild.proctitle import set_title
from rootbuild.sandbox import dns_proxy
from rootbuild.sandbox.dns_proxy import Query, Upstream
from rootbuild.sandbox.reap import stop_child

RATE = 50.0
BURST = 200
MAX_PENDING = 64
MAX_TCP = 8
MAX_TCP_QUERIES = 16
TRY_SECONDS = 2.0
TCP_IDLE_SECONDS = 5.0
READY_SECONDS = 10.0
STOP_SECONDS = 2.0
PR_SET_PDEATHSIG = 1
PR_SET_NO_NEW_PRIVS = 38
_LENGTH = struct.Struct("!H")


class DnsRelay:
    """One step's DNS forwarder, seen from the init (see the module docstring)."""

    def __init__(self, upstreams: Sequence[Upstream], label: str = "") -> None:
        self.upstreams = tuple(upstreams)
        self.label = label  # the step's scratch: names the helper in ``ps``
        self.pid: int | None = None
        self._ctl: socket.socket | None = None

    def fork_helper(self) -> None:
        """Start the helper in the current (the host's) network namespace."""
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        parent = os.getpid()
        sys.stdout.flush()  # a forked helper must not write the init's buffers again
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the helper: exec or die, never return
            try:
                mine.close()
                _exec_helper(theirs.detach(), parent, self.upstreams, self.label)
            finally:
                os._exit(127)
        theirs.close()
        self.pid = pid
        self._ctl = mine

    def attach(self) -> None:
        """In the step's network namespace (loopback up): bind the forwarder's sockets and
        hand them to the helper; returns once it holds them."""
        assert self._ctl is not None
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp, \
                    socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                address = (dns_proxy.PROXY_ADDRESS, dns_proxy.DNS_PORT)
                udp.bind(address)
                tcp.bind(address)
                tcp.listen(MAX_TCP)
                socket.send_fds(self._ctl, [b"s"], [udp.fileno(), tcp.fileno()])
            ready = b""
            if select.select([self._ctl], [], [], READY_SECONDS)[0]:
                ready = self._ctl.recv(1)
        except OSError as exc:
            raise SandboxError(
                f"RUN --network=isolated: DNS forwarder on {dns_proxy.PROXY_ADDRESS}: "
                f"{exc.strerror or exc}") from exc
        if ready != b"r":
            raise SandboxError("RUN --network=isolated: the DNS forwarder did not start "
                               "(see init.log in the step's scratch)")

    def close(self) -> None:
        """End the helper and reap it."""
        if self._ctl is not None:
            self._ctl.close()  # EOF: the helper returns by itself
            self._ctl = None
        if self.pid is None:
            return
        pid, self.pid = self.pid, None
        stop_child(pid, STOP_SECONDS)


def _exec_helper(ctl: int, parent: int, upstreams: tuple[Upstream, ...],
                 label: str) -> None:  # pragma: no cover - runs in the forked helper
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGPIPE):
        signal.signal(sig, signal.SIG_DFL)
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:
        return
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(2, 1)  # the init's log
    os.dup2(ctl, 3)
    os.set_inheritable(3, True)
    os.closerange(4, 1 << 16)
    argv = ["3", json.dumps([list(u) for u in upstreams]), label]
    title = [sys.executable, "-I", "-m", "rootbuild.sandbox.dns_relay", *argv]
    if threading.active_count() == 1:  # the init (a zygote fork): no interpreter start
        set_title(title)
        try:
            main(argv)
        except BaseException:  # to the init's log, as a fresh interpreter's would be
            with contextlib.suppress(BaseException):
                import traceback

                traceback.print_exc()
                sys.stderr.flush()
        finally:
            os._exit(0)  # the TCP threads die with the process
    os.execv(sys.executable, title)


@dataclasses.dataclass
class _Pending:
    query: Query
    raw: bytes
    client: tuple[str, int]
    attempt: int = 0
    ident: int = 0
    deadline: float = 0.0


class Forwarder:
    """The helper's loop: ``udp`` and ``tcp`` are the sockets bound in the step's network
    namespace, ``ctl`` the unix socket whose EOF ends it."""

    def __init__(self, udp: socket.socket, tcp: socket.socket, ctl: socket.socket,
                 upstreams: Sequence[Upstream],
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not upstreams:
            raise ValueError("no upstream resolver")
        self.udp, self.tcp, self.ctl = udp, tcp, ctl
        self.upstreams = tuple(upstreams)
        self.clock = clock
        self.limit = dns_proxy.RateLimit(RATE, BURST, clock())
        self._lock = threading.Lock()
        self._tcp_active = 0
        self._pending: dict[socket.socket, _Pending] = {}
        self._selector = selectors.DefaultSelector()
        self._sockets: dict[int, socket.socket] = {}

    def serve(self) -> None:
        for sock in (self.udp, self.tcp):
            sock.setblocking(False)
        for sock in (self.udp, self.tcp, self.ctl):
            self._register(sock)
        while True:
            deadlines = [p.deadline for p in self._pending.values()]
            timeout = max(0.0, min(deadlines) - self.clock()) if deadlines else None
            for key, _ in self._selector.select(timeout):
                sock = self._sockets[key.fd]
                if sock is self.ctl:
                    if not self.ctl.recv(1):
                        return  # the init closed its end: the step is over
                elif sock is self.udp:
                    self._from_step()
                elif sock is self.tcp:
                    self._accept()
                else:
                    self._from_upstream(sock)
            self._expire()

    def _allow(self) -> bool:
        with self._lock:
            return self.limit.allow(self.clock())

    # -- UDP -------------------------------------------------------------------------------

    def _from_step(self) -> None:
        for _ in range(MAX_PENDING):
            try:
                data, client = self.udp.recvfrom(dns_proxy.MAX_QUERY_BYTES + 1)
            except (BlockingIOError, InterruptedError):
                return
            query = dns_proxy.check_query(data)
            if isinstance(query, str) or len(self._pending) >= MAX_PENDING \
                    or not self._allow():
                continue  # dropped: nothing forwarded, no answer
            self._send(_Pending(query, data, client))

    def _send(self, pending: _Pending) -> None:
        while pending.attempt < len(self.upstreams):
            host, port = self.upstreams[pending.attempt]
            pending.ident = secrets.randbelow(1 << 16)
            pending.deadline = self.clock() + TRY_SECONDS
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_DGRAM)
            try:
                sock.setblocking(False)
                sock.connect((host, port))
                sock.send(dns_proxy.with_id(pending.raw, pending.ident))
            except OSError:
                sock.close()
                pending.attempt += 1
                continue
            self._pending[sock] = pending
            self._register(sock)
            return
        self._answer(pending, dns_proxy.servfail(pending.query))

    def _answer(self, pending: _Pending, data: bytes) -> None:
        with contextlib.suppress(OSError):
            self.udp.sendto(dns_proxy.with_id(data, pending.query.ident), pending.client)

    def _register(self, sock: socket.socket) -> None:
        self._sockets[sock.fileno()] = sock
        self._selector.register(sock, selectors.EVENT_READ)

    def _drop(self, sock: socket.socket) -> _Pending:
        self._selector.unregister(sock)
        del self._sockets[sock.fileno()]
        sock.close()
        return self._pending.pop(sock)

    def _from_upstream(self, sock: socket.socket) -> None:
        pending = self._pending[sock]
        try:
            data = sock.recv(dns_proxy.MAX_ANSWER_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:  # refused (ICMP): the next upstream
            self._drop(sock)
            pending.attempt += 1
            self._send(pending)
            return
        if dns_proxy.check_answer(data, pending.query, pending.ident):
            self._drop(sock)
            self._answer(pending, data)

    def _expire(self) -> None:
        now = self.clock()
        for sock in [s for s, p in self._pending.items() if p.deadline <= now]:
            pending = self._drop(sock)
            pending.attempt += 1
            self._send(pending)

    # -- TCP (the client's retry after an answer with the TC bit) --------------------------

    def _accept(self) -> None:
        try:
            conn, _ = self.tcp.accept()
        except (BlockingIOError, InterruptedError):
            return
        with self._lock:
            if self._tcp_active >= MAX_TCP:
                conn.close()
                return
            self._tcp_active += 1
        threading.Thread(target=self._serve_tcp, args=(conn,), daemon=True).start()

    def _serve_tcp(self, conn: socket.socket) -> None:
        try:
            conn.setblocking(True)
            conn.settimeout(TCP_IDLE_SECONDS)
            for _ in range(MAX_TCP_QUERIES):
                data = _read_message(conn, dns_proxy.MAX_QUERY_BYTES)
                if data is None:
                    return
                query = dns_proxy.check_query(data)
                if isinstance(query, str) or not self._allow():
                    return
                answer = self._tcp_upstream(data, query) or dns_proxy.servfail(query)
                conn.sendall(_LENGTH.pack(len(answer)) + dns_proxy.with_id(answer,
                                                                          query.ident))
        except OSError:
            return
        finally:
            conn.close()
            with self._lock:
                self._tcp_active -= 1

    def _tcp_upstream(self, data: bytes, query: Query) -> bytes | None:
        for host, port in self.upstreams:
            ident = secrets.randbelow(1 << 16)
            try:
                with socket.create_connection((host, port), timeout=TRY_SECONDS) as up:
                    message = dns_proxy.with_id(data, ident)
                    up.sendall(_LENGTH.pack(len(message)) + message)
                    answer = _read_message(up, dns_proxy.MAX_ANSWER_BYTES)
            except OSError:
                continue
            if answer is not None and dns_proxy.check_answer(answer, query, ident):
                return answer
        return None


def _read_exact(conn: socket.socket, size: int) -> bytes | None:
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def _read_message(conn: socket.socket, cap: int) -> bytes | None:
    """One length-prefixed DNS message over TCP, or None (EOF, or longer than ``cap``)."""
    head = _read_exact(conn, _LENGTH.size)
    if head is None:
        return None
    (size,) = _LENGTH.unpack(head)
    if not 0 < size <= cap:
        return None
    return _read_exact(conn, size)


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


def drop_privileges() -> None:
    """no_new_privs and an empty capability set: the forwarder needs neither."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "set no_new_privs")
    header = _CapHeader(0x20080522, 0)
    data = (_CapData * 2)()
    if libc.capset(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), "drop capabilities")


def main(argv: list[str]) -> None:  # pragma: no cover - the helper process
    ctl = socket.socket(fileno=int(argv[0]))
    upstreams = [(str(h), int(p)) for h, p in json.loads(argv[1])]
    drop_privileges()
    _, fds, _, _ = socket.recv_fds(ctl, 16, 2)
    if len(fds) != 2:
        return
    udp = socket.socket(fileno=fds[0])
    tcp = socket.socket(fileno=fds[1])
    ctl.sendall(b"r")
    Forwarder(udp, tcp, ctl, upstreams).serve()


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    finally:
        os._exit(0)  # the TCP threads die with the process
