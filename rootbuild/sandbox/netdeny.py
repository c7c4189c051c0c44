"""What an isolated RUN may not reach: the deny list and the routes that enforce it.

Job: ``denied_prefixes(host_addresses)`` is the list of IPv4 destinations a step of
``--network=isolated`` gets no route to; ``install(prefixes)`` adds one ``prohibit`` route
per prefix to the current network namespace (rtnetlink, ``RTM_NEWROUTE`` with
``RTN_PROHIBIT``: ``connect`` fails at once with EACCES); ``host_addresses()`` reads the
IPv4 addresses of the caller's network namespace (``RTM_GETADDR`` dump). The message
builders and parsers are pure; only ``install`` and ``host_addresses`` touch a socket.

Rules:
- Routes are added by the sandbox init, which holds CAP_NET_ADMIN in the user namespace
  that owns the step's network namespace, before the step exists. The step never has
  CAP_NET_ADMIN there (Docker's default set; ``--security=insecure`` is refused for
  untrusted builds), so it cannot remove them, and a user namespace it creates owns no
  power over this network namespace. It also loses CAP_NET_RAW: a packet socket writes
  frames to the tap device without a route lookup (``child.py``).
- The list (kept in ``rootbuild.netrules``, which the builder's own fetches for an
  untrusted build check too): the host's own addresses, 0/8, private ranges (10/8,
  172.16/12, 192.168/16),
  carrier-grade NAT (100.64/10, where some clouds keep their metadata service),
  link-local (169.254/16, the metadata address 169.254.169.254), IETF protocol
  assignments (192.0.0/24), benchmarking (198.18/15) and reserved space (240/4); and every
  address of the user-mode stack's own /24 (its gateway is the host, its DNS address
  forwards to the host's resolver on any port), split in two /25s so that the connected
  /24 route, which the default route's gateway needs, stays.
- 127/8 needs no route: the step's loopback is its own (the local table is consulted
  first). IPv6 needs none either: the step's namespace keeps no IPv6 address besides
  ``::1`` (slirp4netns runs without ``--enable-ipv6``, and ``usernet`` disables IPv6 on
  its tap, removing the link-local address), so fc00::/7, fe80::/10 and the host's IPv6
  addresses have no route at all.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct
from collections.abc import Iterable

from rootbuild.netrules import DENIED_V4 as DENIED_V4
from rootbuild.netrules import denied_prefixes as denied_prefixes
from rootbuild.netrules import is_denied as is_denied
from rootbuild.netrules import user_net_prefixes as user_net_prefixes

NLMSG_ERROR, NLMSG_DONE = 2, 3
RTM_NEWADDR, RTM_GETADDR, RTM_NEWROUTE = 20, 22, 24
NLM_F_REQUEST, NLM_F_ACK, NLM_F_EXCL, NLM_F_CREATE, NLM_F_DUMP = 0x1, 0x4, 0x200, 0x400, 0x300
RT_TABLE_MAIN, RTPROT_STATIC, RT_SCOPE_UNIVERSE, RTN_PROHIBIT = 254, 4, 0, 8
RTA_DST, IFA_ADDRESS, IFA_LOCAL = 1, 1, 2
_NLMSGHDR = struct.Struct("=IHHII")
_RTMSG = struct.Struct("=BBBBBBBBI")
_IFADDRMSG = struct.Struct("=BBBBI")
_RTATTR = struct.Struct("=HH")


def _align(n: int) -> int:
    return (n + 3) & ~3


def route_message(seq: int, prefix: str) -> bytes:
    """``RTM_NEWROUTE``: a ``prohibit`` route for the IPv4 ``prefix`` in the main table."""
    net = ipaddress.IPv4Network(prefix)
    dst = net.network_address.packed
    rtmsg = _RTMSG.pack(socket.AF_INET, net.prefixlen, 0, 0, RT_TABLE_MAIN, RTPROT_STATIC,
                        RT_SCOPE_UNIVERSE, RTN_PROHIBIT, 0)
    attr = _RTATTR.pack(_RTATTR.size + len(dst), RTA_DST) + dst
    body = rtmsg + attr + b"\0" * (_align(len(attr)) - len(attr))
    flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL
    return _NLMSGHDR.pack(_NLMSGHDR.size + len(body), RTM_NEWROUTE, flags, seq, 0) + body


def addr_dump_message(seq: int) -> bytes:
    body = _IFADDRMSG.pack(socket.AF_INET, 0, 0, 0, 0)
    return _NLMSGHDR.pack(_NLMSGHDR.size + len(body), RTM_GETADDR,
                          NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + body


def messages(data: bytes) -> list[tuple[int, int, bytes]]:
    """Split a netlink datagram into (type, seq, payload)."""
    out = []
    offset = 0
    while offset + _NLMSGHDR.size <= len(data):
        length, kind, _flags, seq, _pid = _NLMSGHDR.unpack_from(data, offset)
        if length < _NLMSGHDR.size or offset + length > len(data):
            break
        out.append((kind, seq, data[offset + _NLMSGHDR.size:offset + length]))
        offset += _align(length)
    return out


def error_of(payload: bytes) -> int:
    """The (positive) errno of an ``NLMSG_ERROR`` payload; 0 is an ACK."""
    code: int = struct.unpack_from("=i", payload)[0]
    return -code


def addresses_of(payload: bytes) -> list[str]:
    """The IPv4 addresses in one ``RTM_NEWADDR`` payload (IFA_LOCAL, else IFA_ADDRESS)."""
    family = payload[0] if payload else 0
    if family != socket.AF_INET:
        return []
    found: dict[int, str] = {}
    offset = _IFADDRMSG.size
    while offset + _RTATTR.size <= len(payload):
        length, kind = _RTATTR.unpack_from(payload, offset)
        if length < _RTATTR.size:
            break
        value = payload[offset + _RTATTR.size:offset + length]
        if kind in (IFA_ADDRESS, IFA_LOCAL) and len(value) == 4:
            found[kind] = socket.inet_ntoa(value)
        offset += _align(length)
    addr = found.get(IFA_LOCAL) or found.get(IFA_ADDRESS)
    return [addr] if addr else []


def _socket() -> socket.socket:
    return socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                         socket.NETLINK_ROUTE)


def host_addresses() -> list[str]:
    """The IPv4 addresses of every interface of the caller's network namespace."""
    found: list[str] = []
    with _socket() as sock:
        sock.sendto(addr_dump_message(1), (0, 0))
        while True:
            for kind, _seq, payload in messages(sock.recv(65536)):
                if kind == NLMSG_DONE:
                    return found
                if kind == NLMSG_ERROR:
                    code = error_of(payload)
                    raise OSError(code, f"read the host's addresses: {os.strerror(code)}")
                if kind == RTM_NEWADDR:
                    found += [a for a in addresses_of(payload) if a not in found]


def install(prefixes: Iterable[str]) -> None:
    """Add a ``prohibit`` route for each prefix to the caller's network namespace; any
    refusal is an ``OSError`` naming the prefix (an existing route counts as added)."""
    with _socket() as sock:
        for seq, prefix in enumerate(prefixes, start=1):
            sock.sendto(route_message(seq, prefix), (0, 0))
            for kind, got, payload in messages(sock.recv(65536)):
                if kind != NLMSG_ERROR or got != seq:
                    continue
                code = error_of(payload)
                if code not in (0, errno.EEXIST):
                    raise OSError(code, f"deny route to {prefix}: {os.strerror(code)}")
