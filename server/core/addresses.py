"""Peer addresses as sockets and PROXY headers report them, compared the one way everywhere:
the defender's allowlist and source keys, the trusted proxies, the listener."""

from __future__ import annotations

import ipaddress
from typing import Iterable

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def client_ip(address: str) -> IPAddress | None:
    """The IP address of a peer as sockets report it (a scope id dropped, an IPv4-mapped IPv6
    address as its IPv4 address), or None for what is not an IP address."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def in_networks(address: str, networks: Iterable[IPNetwork]) -> bool:
    """Whether `address` lies in one of `networks` (an allowlist, the trusted proxies)."""
    ip = client_ip(address)
    return ip is not None and any(ip in net for net in networks if net.version == ip.version)
