"""The PROXY header parser (server/sftp/proxyproto.py) on its own: what HAProxy sends parses to
the client address, every prefix asks for more, anything else is a ProxyHeaderError within
MAX_HEADER bytes (property tests with hypothesis)."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sluis.server.sftp.proxyproto import MAX_HEADER, Command, ProxyHeaderError, parse
from tests.support import proxyheader

ipv4 = st.ip_addresses(v=4).map(str)
ipv6 = st.ip_addresses(v=6).map(str)
ports = st.integers(0, 65535)
tlvs = st.lists(st.tuples(st.integers(0, 255), st.binary(max_size=60)), max_size=5).map(
    lambda items: b"".join(proxyheader.tlv(k, v) for k, v in items))


@settings(max_examples=300, deadline=None)
@given(src=st.one_of(ipv4, ipv6), sport=ports, dport=ports, extra=tlvs, after=st.binary(max_size=64),
       version=st.sampled_from([1, 2]))
def test_a_header_parses_to_its_client_and_leaves_what_follows(src, sport, dport, extra, after, version):
    dst = "198.51.100.1" if ipaddress.ip_address(src).version == 4 else "2001:db8::1"
    header = (proxyheader.v2((src, sport), (dst, dport), tlvs=extra) if version == 2
              else proxyheader.v1((src, sport), (dst, dport)))
    parsed = parse(header + after)
    assert parsed is not None
    assert (parsed.version, parsed.command, parsed.length) == (version, Command.PROXY, len(header))
    assert parsed.source == (src, sport) and parsed.destination == (dst, dport)
    for cut in range(len(header)):   # every proper prefix: read more
        assert parse(header[:cut]) is None


@pytest.mark.parametrize("header", [proxyheader.v2(None), proxyheader.v2(None, tlvs=proxyheader.tlv(0xE0, b"x")),
                                    proxyheader.v1(None), b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n"])
def test_a_check_header_is_local(header):
    parsed = parse(header + b"SSH-2.0-x\r\n")
    assert parsed is not None and parsed.command is Command.LOCAL and parsed.source is None
    assert parsed.length == len(header)


@settings(max_examples=2000, deadline=None)
@given(data=st.one_of(st.binary(max_size=MAX_HEADER + 16),
                      st.binary(max_size=40).map(lambda b: proxyheader.SIGNATURE + b),
                      st.binary(max_size=120).map(lambda b: b"PROXY " + b)))
def test_any_bytes_give_a_header_a_clear_error_or_a_bounded_wait(data):
    try:
        parsed = parse(data)
    except ProxyHeaderError as exc:
        assert str(exc)
        return
    if parsed is None:
        assert len(data) < MAX_HEADER   # "read more" never goes past the bound
    else:
        assert 0 < parsed.length <= len(data)
        assert (parsed.source is None) == (parsed.command is Command.LOCAL)


@pytest.mark.parametrize("data, what", [
    (b"SSH-2.0-OpenSSH_9.2\r\n", "not a PROXY protocol header"),
    (b"GET / HTTP/1.0\r\n", "not a PROXY protocol header"),
    (proxyheader.SIGNATURE + bytes([0x11, 0x11, 0, 12]) + bytes(12), "version 1"),
    (proxyheader.SIGNATURE + bytes([0x22, 0x11, 0, 12]) + bytes(12), "command 0x2"),
    (proxyheader.SIGNATURE + bytes([0x21, 0x11, 0x04, 0x01]), "at most 1024"),
    (proxyheader.SIGNATURE + bytes([0x21, 0x12, 0, 12]) + bytes(12), "not TCP"),        # UDP
    (proxyheader.SIGNATURE + bytes([0x21, 0x00, 0, 0]), "not TCP"),                    # PROXY, UNSPEC
    (proxyheader.SIGNATURE + bytes([0x21, 0x31, 0, 216]) + bytes(216), "not TCP"),     # UNIX
    (proxyheader.SIGNATURE + bytes([0x21, 0x21, 0, 12]) + bytes(12), "needs 36"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", "CRLF"),
    (b"PROXY TCP4 " + b"1" * 100, "CRLF"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", "SRC DST SPORT DPORT"),
    (b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n", "SRC DST SPORT DPORT"),
    (b"PROXY TCP4 ::1 5.6.7.8 1 2\r\n", "is not IPv4"),
    (b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n", "is not IPv6"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n", "port"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n", "port"),
    (b"PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n", "SRC DST SPORT DPORT"),
])
def test_bad_headers_are_named(data, what):
    with pytest.raises(ProxyHeaderError, match=what):
        parse(data)
