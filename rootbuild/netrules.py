"""Which destinations an untrusted build may not reach: one list for its RUN steps and for
the builder's own fetches on its behalf.

Job: ``denied_prefixes`` is the IPv4 deny list of ``--network=isolated`` (the sandbox
turns it into ``prohibit`` routes, ``sandbox/netdeny.py``); ``is_denied`` tells whether an
isolated step can reach an address; ``denied_class`` names why an untrusted build's
``ADD <url>`` or Git source may not be fetched from an address (the builder fetches from
the host's network namespace, so its own loopback is the host's). Pure: no I/O here, the
caller reads the host's addresses.

Rules:
- The list: the host's own addresses, 0/8, private ranges (10/8, 172.16/12, 192.168/16),
  carrier-grade NAT (100.64/10, where some clouds keep their metadata service),
  link-local (169.254/16, the metadata address 169.254.169.254), IETF protocol
  assignments (192.0.0/24), benchmarking (198.18/15) and reserved space (240/4), and
  the user-mode stack's own /24 (as two /25s, see ``netdeny``).
- For the builder's fetches loopback (127/8) is denied too, and every IPv6 address:
  an untrusted build reaches what its RUN steps reach, public IPv4 only.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

#: destinations an isolated step never reaches, besides the host's own addresses
DENIED_V4 = (
    "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "169.254.0.0/16", "172.16.0.0/12",
    "192.0.0.0/24", "192.168.0.0/16", "198.18.0.0/15", "240.0.0.0/4",
)

#: what each prefix of DENIED_V4 is, as a refusal names it
DENIED_CLASSES = {
    "0.0.0.0/8": "in 0.0.0.0/8 (\"this network\")",
    "10.0.0.0/8": "a private address (10.0.0.0/8)",
    "100.64.0.0/10": "a carrier-grade NAT address (100.64.0.0/10, where some clouds keep "
                     "their metadata service)",
    "169.254.0.0/16": "link-local (169.254.0.0/16, the cloud metadata address's range)",
    "172.16.0.0/12": "a private address (172.16.0.0/12)",
    "192.0.0.0/24": "an IETF protocol assignment (192.0.0.0/24)",
    "192.168.0.0/16": "a private address (192.168.0.0/16)",
    "198.18.0.0/15": "a benchmarking address (198.18.0.0/15)",
    "240.0.0.0/4": "reserved (240.0.0.0/4)",
}


def user_net_prefixes(cidr: str) -> tuple[str, ...]:
    """The user-mode stack's own network as two halves (more specific than its /24)."""
    net = ipaddress.IPv4Network(cidr)
    return tuple(str(half) for half in net.subnets(prefixlen_diff=1))


def denied_prefixes(host_addresses: Iterable[str], user_net: str = "10.0.2.0/24"
                    ) -> tuple[str, ...]:
    """Every IPv4 prefix an isolated step gets a ``prohibit`` route for (see the module
    docstring), without duplicates, host addresses as /32s."""
    out: list[str] = [*DENIED_V4, *user_net_prefixes(user_net)]
    for addr in host_addresses:
        ip = ipaddress.ip_address(addr)
        if ip.version != 4 or ip.is_loopback:
            continue
        prefix = f"{ip}/32"
        if prefix not in out:
            out.append(prefix)
    return tuple(out)


def is_denied(address: str, prefixes: Iterable[str]) -> bool:
    """Whether ``address`` (IPv4 or IPv6) is one an isolated step cannot reach: in a
    denied prefix, or IPv6 (no IPv6 route at all), or loopback (the step's own)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return True
    if ip.version != 4 or ip.is_loopback:
        return True
    return any(ip in ipaddress.IPv4Network(p) for p in prefixes)


def denied_class(address: str, host_addresses: Iterable[str]) -> str | None:
    """Why the builder may not fetch from ``address`` for an untrusted build (a phrase
    such as "the host's loopback"), None when it may: the same list as ``is_denied``
    for a step (``host_addresses``: the IPv4 addresses of the builder's own network
    namespace), loopback and IPv6 included."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return "not an IP address"
    if ip.version != 4:
        mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
        if mapped is not None:
            return denied_class(str(mapped), host_addresses)
        return ("an IPv6 address (untrusted builds fetch over IPv4 only, as their RUN "
                "steps reach)")
    if ip.is_loopback:
        return "the host's loopback"
    if any(ip == ipaddress.ip_address(h) for h in host_addresses
           if ipaddress.ip_address(h).version == 4):
        return "one of the host's own addresses"
    for prefix in DENIED_V4:
        if ip in ipaddress.IPv4Network(prefix):
            return DENIED_CLASSES[prefix]
    return None
