"""Which network addresses a status callback may reach (pure logic, ``ipaddress`` only).

By default only *global* unicast addresses are allowed: a callback URL given by an API
client must not make the bridge post signed call data to its own host or to internal
services (SSRF). ``webhooks.allow_private`` opens loopback, private (RFC 1918, RFC 4193),
link-local and shared (CGNAT, RFC 6598) ranges; ``webhooks.allow_cidrs`` opens exactly
the networks listed. Multicast, unspecified and reserved addresses are refused unless
listed in ``allow_cidrs``.

IPv6 forms that embed an IPv4 address (IPv4-mapped ``::ffff:a.b.c.d``, NAT64
``64:ff9b::/96`` RFC 6052, 6to4 ``2002::/16`` RFC 3056) are judged by that IPv4 address.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_6TO4 = ipaddress.ip_network("2002::/16")


@dataclass(frozen=True)
class TargetPolicy:
    allow_private: bool = False
    allow_cidrs: tuple[IPNetwork, ...] = ()

    @classmethod
    def of(cls, allow_private: bool, cidrs: Iterable[str]) -> TargetPolicy:
        return cls(allow_private, tuple(ipaddress.ip_network(c, strict=False) for c in cidrs))


def first_bad_network(nets: Iterable[str]) -> tuple[int, str] | None:
    """The index and text of the first entry that is not an IP network (CIDR or a bare
    address, host bits allowed), for config validators to name; None when all are."""
    for i, net in enumerate(nets):
        try:
            ipaddress.ip_network(net, strict=False)
        except ValueError:
            return i, net
    return None


def networks_field(nets: list[str]) -> list[str]:
    """A pydantic field validator's body for a list of IP networks: the list, or a
    ``ValueError`` naming the first bad item (pydantic places it at the field already)."""
    bad = first_bad_network(nets)
    if bad is not None:
        raise ValueError(f"item {bad[0]}, {bad[1]!r}, is not an IP network")
    return nets


def embedded_v4(addr: IPAddress) -> IPAddress:
    """The IPv4 address an IPv6 address stands for, else the address itself."""
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return addr.ipv4_mapped
        if addr in _NAT64:
            return ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)
        if addr.sixtofour is not None:
            return addr.sixtofour
    return addr


def address_problem(addr: IPAddress, policy: TargetPolicy) -> str | None:
    """None if ``addr`` may be contacted, else why not (names the kind of address)."""
    for a in {addr, embedded_v4(addr)}:
        if any(a.version == n.version and a in n for n in policy.allow_cidrs):
            return None
    a = embedded_v4(addr)
    if a.is_multicast:
        return f"{addr} is a multicast address"
    if a.is_unspecified:
        return f"{addr} is the unspecified address"
    if a.is_loopback:
        kind = "loopback"
    elif a.is_link_local:
        kind = "link-local"
    elif a.version == 4 and a in _CGNAT:
        kind = "shared (CGNAT)"
    elif a.is_reserved:
        return f"{addr} is a reserved address"
    elif a.is_global:
        return None
    else:
        kind = "private"
    if policy.allow_private:
        return None
    return (
        f"{addr} is a {kind} address (set webhooks.allow_private or "
        "webhooks.allow_cidrs to allow it)"
    )


def literal_address(host: str) -> IPAddress | None:
    """The address a URL host stands for without DNS: IP literals, and the legacy IPv4
    forms that C resolvers accept (``127.1``, ``2130706433``, ``0x7f.0.0.1``)."""
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        pass
    try:
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except OSError:
        return None


def callback_url_problem(url: str, policy: TargetPolicy) -> str | None:
    """None if ``url`` is usable as a status callback target before DNS, else why not.

    A host name is checked again after resolution, at delivery; names that always mean
    this host (``localhost``, ``*.localhost``, RFC 6761) are judged as loopback here."""
    if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in url):
        return "contains whitespace or control characters"
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        return f"not a URL: {e}"
    if parts.scheme not in ("http", "https"):
        return "must be an http:// or https:// URL"
    host = parts.hostname
    if not host:
        return "has no host"
    if parts.username is not None or parts.password is not None:
        return "must not carry credentials (user:password@)"
    if port == 0:
        return "port 0 is not usable"
    host = host.rstrip(".")  # "localhost." is localhost
    addr = literal_address(host)
    if addr is None and (host == "localhost" or host.endswith(".localhost")):
        addr = ipaddress.ip_address("127.0.0.1")
    if addr is not None:
        return address_problem(addr, policy)
    return None


__all__ = [
    "TargetPolicy",
    "address_problem",
    "callback_url_problem",
    "embedded_v4",
    "first_bad_network",
    "literal_address",
    "networks_field",
]
