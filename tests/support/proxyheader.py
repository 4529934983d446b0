"""PROXY protocol headers as a load balancer writes them (HAProxy's `send-proxy-v2`, v1 text),
built here independently of the parser under test (server/sftp/proxyproto.py)."""

from __future__ import annotations

import ipaddress
import struct

SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"


def v2(source: tuple[str, int] | None, destination: tuple[str, int] = ("127.0.0.1", 2222), *,
       tlvs: bytes = b"") -> bytes:
    """A v2 PROXY header for a TCP client `source` (host, port); None: a LOCAL header (a check)."""
    if source is None:
        return SIGNATURE + bytes([0x20, 0x00]) + struct.pack("!H", len(tlvs)) + tlvs
    src, dst = ipaddress.ip_address(source[0]), ipaddress.ip_address(destination[0])
    family = 0x11 if src.version == 4 else 0x21
    body = src.packed + dst.packed + struct.pack("!HH", source[1], destination[1]) + tlvs
    return SIGNATURE + bytes([0x21, family]) + struct.pack("!H", len(body)) + body


def v1(source: tuple[str, int] | None, destination: tuple[str, int] = ("127.0.0.1", 2222)) -> bytes:
    """A v1 PROXY line; None: 'PROXY UNKNOWN' (a v1 check)."""
    if source is None:
        return b"PROXY UNKNOWN\r\n"
    kind = "TCP4" if ipaddress.ip_address(source[0]).version == 4 else "TCP6"
    return f"PROXY {kind} {source[0]} {destination[0]} {source[1]} {destination[1]}\r\n".encode()


def tlv(kind: int, value: bytes) -> bytes:
    return bytes([kind]) + struct.pack("!H", len(value)) + value
