"""The PROXY protocol header a load balancer puts in front of a relayed connection (HAProxy's
`send-proxy-v2`), parsed from the first bytes of a socket, before SSH starts. Pure: bytes in, a
`Header` (or "need more", or `ProxyHeaderError`) out; the listener does the I/O.

From the specification (HAProxy 2.6, /usr/share/doc/haproxy/proxy-protocol.txt):

  Version 2: "The binary header format starts with a constant 12 bytes block containing the
  protocol signature : \\x0D \\x0A \\x0D \\x0A \\x00 \\x0D \\x0A \\x51 \\x55 \\x49 \\x54 \\x0A".
  "The next byte (the 13th one) is the protocol version and command. The highest four bits
  contains the version. As of this specification, it must always be sent as \\x2 and the
  receiver must only accept this value." Commands: "\\x0 : LOCAL : the connection was
  established on purpose by the proxy without being relayed. [...] Such connections exist
  when the proxy sends health-checks to the server", and "\\x1 : PROXY : the connection was
  established on behalf of another node, and reflects the original connection endpoints."
  "The 14th byte contains the transport protocol and address family. The highest 4 bits
  contain the address family, the lowest 4 bits contain the protocol": 0x1 AF_INET, 0x2
  AF_INET6 (0x0 UNSPEC, 0x3 AF_UNIX); 0x1 STREAM (0x2 DGRAM). "The 15th and 16th bytes is the
  address length in bytes in network endian order. [...] the length of the protocol header in
  bytes is always exactly 16 + this value." TCP over IPv4 takes 12 address bytes (src_addr[4]
  dst_addr[4] src_port[2] dst_port[2]), over IPv6 36; TLVs may follow: "A receiver may choose
  to skip over and ignore the TLVs it is not interested in" (sluis needs none).

  Version 1 (accepted too: it costs one line): "PROXY", then "exactly one space" between
  fields: TCP4|TCP6, source and destination address, source and destination port, "\\r\\n".
  "The maximum line lengths the receiver must support including the CRLF are [...] worst case
  [...] 107 chars". For "UNKNOWN" "the receiver must ignore anything presented before the CRLF
  is found": sluis reads it as v1's LOCAL.

Where sluis differs: for LOCAL the receiver "must accept this connection as valid and must use
the real connection endpoints"; sluis answers it (listener.py: the SSH version line, then
close) rather than serving SSH to the proxy, since LOCAL is HAProxy's health check.

Bounds: a v2 header longer than `MAX_V2_LENGTH` address-and-TLV bytes and a v1 line longer than
107 bytes are errors, so the buffer a peer can fill before this answers is `MAX_HEADER` bytes.
A PROXY command without a TCP client address (UNSPEC, UNIX, DGRAM) is an error here: sluis
accounts every connection to a client address, and a relayed connection without one is a
misconfigured proxy.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass
from enum import StrEnum

SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V1_PREFIX = b"PROXY "
V1_MAX_LINE = 107
MAX_V2_LENGTH = 1024                     # addresses (at most 36 bytes for TCP) and TLVs
MAX_HEADER = 16 + MAX_V2_LENGTH

_INET, _INET6 = 0x1, 0x2
_STREAM = 0x1
_ADDRESS_LENGTH = {_INET: 12, _INET6: 36}


class ProxyHeaderError(ValueError):
    """The bytes are not a PROXY header sluis accepts; the message says what is wrong."""


class Command(StrEnum):
    LOCAL = "local"   # the proxy's own connection (a health check): no client behind it
    PROXY = "proxy"   # relayed for the client in `Header.source`


@dataclass(frozen=True)
class Header:
    version: int                           # 1 or 2
    command: Command
    length: int                            # bytes the header takes; what follows is the client's
    source: tuple[str, int] | None = None  # the client (host, port); None for LOCAL
    destination: tuple[str, int] | None = None


def parse(data: bytes) -> Header | None:
    """The header at the start of `data`; None while `data` is a proper prefix of one (read
    more, `data` is shorter than MAX_HEADER); ProxyHeaderError if it cannot become one."""
    if data[:len(SIGNATURE)] == SIGNATURE[:len(data)]:
        return _parse_v2(data)
    if data[:len(V1_PREFIX)] == V1_PREFIX[:len(data)]:
        return _parse_v1(data)
    raise ProxyHeaderError("not a PROXY protocol header")


def _parse_v2(data: bytes) -> Header | None:
    if len(data) < 16:
        return None
    version, command = data[12] >> 4, data[12] & 0x0F
    family, transport = data[13] >> 4, data[13] & 0x0F
    (length,) = struct.unpack_from("!H", data, 14)
    if version != 2:
        raise ProxyHeaderError(f"PROXY v2 signature with version {version}")
    if command > 1:
        raise ProxyHeaderError(f"PROXY v2 command {command:#x} (only LOCAL and PROXY exist)")
    if length > MAX_V2_LENGTH:
        raise ProxyHeaderError(f"PROXY v2 header of {length} address bytes (at most {MAX_V2_LENGTH})")
    if len(data) < 16 + length:
        return None
    if command == 0:   # LOCAL: "discard the protocol block including the family"
        return Header(2, Command.LOCAL, 16 + length)
    need = _ADDRESS_LENGTH.get(family)
    if need is None or transport != _STREAM:
        raise ProxyHeaderError(f"PROXY v2 for family {family:#x} transport {transport:#x}, not TCP over IPv4 or IPv6")
    if length < need:
        raise ProxyHeaderError(f"PROXY v2 TCP header with {length} address bytes (needs {need})")
    size = 4 if family == _INET else 16
    src = ipaddress.ip_address(data[16:16 + size])
    dst = ipaddress.ip_address(data[16 + size:16 + 2 * size])
    sport, dport = struct.unpack_from("!HH", data, 16 + 2 * size)
    return Header(2, Command.PROXY, 16 + length, (str(src), sport), (str(dst), dport))


def _parse_v1(data: bytes) -> Header | None:
    end = data.find(b"\r\n", 0, V1_MAX_LINE)
    if end < 0:
        if len(data) >= V1_MAX_LINE or b"\n" in data:
            raise ProxyHeaderError(f"PROXY v1 line not ended by CRLF within {V1_MAX_LINE} bytes")
        return None
    fields = data[:end].split(b" ")
    if len(fields) >= 2 and fields[1] == b"UNKNOWN":   # "the receiver must ignore anything presented"
        return Header(1, Command.LOCAL, end + 2)
    if len(fields) != 6 or fields[1] not in (b"TCP4", b"TCP6"):
        raise ProxyHeaderError("PROXY v1 line is not 'PROXY TCP4|TCP6 SRC DST SPORT DPORT'")
    kind = ipaddress.IPv4Address if fields[1] == b"TCP4" else ipaddress.IPv6Address
    src, dst = _v1_address(fields[2], kind), _v1_address(fields[3], kind)
    return Header(1, Command.PROXY, end + 2, (src, _v1_port(fields[4])), (dst, _v1_port(fields[5])))


def _v1_address(field: bytes, kind: type[ipaddress.IPv4Address] | type[ipaddress.IPv6Address]) -> str:
    try:
        return str(kind(field.decode("ascii")))
    except (UnicodeDecodeError, ValueError):
        raise ProxyHeaderError(f"PROXY v1 address {field[:45]!r} is not {kind.__name__[:4]}") from None


def _v1_port(field: bytes) -> int:
    if not field.isdigit() or len(field) > 5 or (len(field) > 1 and field[:1] == b"0") or int(field) > 65535:
        raise ProxyHeaderError(f"PROXY v1 port {field[:8]!r} is not a number from 0 to 65535")
    return int(field)
