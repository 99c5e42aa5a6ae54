"""docs/compare-rules.md, "Parsing" and "Connections": what is compared, and
how frames are keyed into connections."""
import struct
from dataclasses import replace

import pytest

from colo_xdp.lab import pktgen as g
from colo_xdp.engine import CheckpointReason, ConnKey, DropReason, Release
from engine_kit import (
    GRE_KEY, ICMP6_KEY, ICMP_KEY, P, S, TCP6_KEY, TCP_KEY, UDP6_KEY, UDP_KEY,
    assert_accounted, drops, engine,
    nonzero, opened, reasons, released,
)


def _set(frame: bytes, offset: int, value: bytes) -> bytes:
    return frame[:offset] + value + frame[offset + len(value):]


def _ip_tot(frame: bytes, tot: int) -> bytes:
    return _set(frame, 16, struct.pack("!H", tot))


UDP = g.udp_frame(b"payload")
TCP = g.tcp_frame(b"payload", seq=1, ack=1)

UNSUPPORTED = {
    "arp": g.arp_frame(),
    "ipv6-jumbogram": _set(g.udp6_frame(b"x"), 18, b"\0\0"),
    "ipv6-payload-length-past-frame": _set(g.udp6_frame(b"x"), 18, b"\0\x40"),
    "ipv6-version-4": _set(g.udp6_frame(b"x"), 14, b"\x40"),
    "ipv6-ext-header-past-packet": g.ipv6_frame(b"\x11\x05" + b"\0" * 6,
                                                next_header=g.IPV6_DSTOPTS),
    "ipv6-hop-by-hop-not-first": g.udp6_frame(b"x", ip=g.IPv6Fields(
        ext=((g.IPV6_DSTOPTS, b""), (g.IPV6_HOPOPTS, b"")))),
    "ipv6-seven-ext-headers": g.udp6_frame(b"x", ip=g.IPv6Fields(
        ext=((g.IPV6_HOPOPTS, b""),) + ((g.IPV6_DSTOPTS, b""),) * 6)),
    "icmpv6-neighbour-solicitation": g.neighbor_solicit_frame(),
    "icmpv6-3-bytes": g.ipv6_frame(b"\x80\0\0", next_header=g.IPPROTO_ICMPV6),
    "three-vlan-tags": g.vlan_frame(g.qinq_frame(UDP)),
    "vlan-tag-cut": g.vlan_frame(UDP)[:17],
    "ipv4-fragment-not-multiple-of-8": g.ipv4_frame(b"x" * 9, g.IPPROTO_UDP,
                                                    ip=g.IPv4Fields(flags=g.IP_MF)),
    "runt-ethernet": UDP[:13],
    "ipv4-shorter-than-its-header": UDP[:33],
    "ip-version-6-in-ipv4-ethertype": _set(UDP, 14, b"\x65"),
    "ihl-4": _set(UDP, 14, b"\x44"),
    "total-length-below-ihl": _ip_tot(UDP, 19),
    "total-length-past-frame": _ip_tot(UDP, len(UDP) - 14 + 1),
    "tcp-header-19-bytes": g.ipv4_frame(b"\0" * 19, g.IPPROTO_TCP),
    "tcp-data-offset-4": _set(TCP, 34 + 12, b"\x40"),
    "tcp-data-offset-past-packet": _set(g.tcp_frame(b""), 34 + 12, b"\x60"),
    "udp-header-7-bytes": g.ipv4_frame(b"\0" * 7, g.IPPROTO_UDP),
    "udp-without-l4": g.ipv4_frame(b"", g.IPPROTO_UDP),
    "icmp-3-bytes": g.ipv4_frame(b"\x08\0\0", g.IPPROTO_ICMP),
}

SUPPORTED = {
    "udp": (UDP, UDP_KEY),
    "udp-header-only": (g.ipv4_frame(b"\x03\xe8\x07\xd0\0\x08\0\0", g.IPPROTO_UDP), UDP_KEY),
    "tcp": (TCP, TCP_KEY),
    "tcp-header-only": (g.tcp_frame(b""), TCP_KEY),
    "tcp-data-offset-15": (g.tcp_frame(b"x", options=b"\x01" * 40), TCP_KEY),
    "ip-ihl-15": (g.udp_frame(b"x", ip=g.IPv4Fields(options=b"\x01" * 40)), UDP_KEY),
    "icmp-4-bytes": (g.ipv4_frame(b"\x08\0\0\0", g.IPPROTO_ICMP), ICMP_KEY),
    "icmp-echo": (g.icmp_echo_frame(b"ping"), ICMP_KEY),
    "other-without-l4": (g.ipv4_frame(b"", g.IPPROTO_GRE), GRE_KEY),
    "ethernet-padding": (UDP + b"\0" * 20, UDP_KEY),
    "udp6": (g.udp6_frame(b"x"), UDP6_KEY),
    "udp6-after-ext-headers": (g.udp6_frame(b"x", ip=g.IPv6Fields(ext=(
        (g.IPV6_HOPOPTS, b"\x01\x02\0\0"), (g.IPV6_ROUTING, b"\0" * 6 + b"r" * 16),
        (g.IPV6_DSTOPTS, b"")))), UDP6_KEY),
    "tcp6": (g.tcp6_frame(b"x", seq=1, ack=1), TCP6_KEY),
    "icmpv6-echo": (g.icmp6_echo_frame(b"ping"), ICMP6_KEY),
    "ipv6-no-next-header": (g.ipv6_frame(b"x"), ConnKey(g.DEFAULT_SRC_IP6, g.DEFAULT_DST_IP6,
                                                        0, 0, g.IPV6_NO_NEXT_HEADER)),
    "vlan-udp": (g.vlan_frame(UDP, 7), replace(UDP_KEY, vlan=(7,))),
    "qinq-udp6": (g.qinq_frame(g.udp6_frame(b"x"), 20, 30), replace(UDP6_KEY, vlan=(20, 30))),
}


@pytest.mark.parametrize("frame", UNSUPPORTED.values(), ids=UNSUPPORTED.keys())
def test_unsupported_primary_is_released_at_once(frame):
    eng = engine()
    actions = eng.feed(P, frame, 0)
    assert released(actions) == [frame]
    assert opened(actions) == []
    c = assert_accounted(eng)
    assert nonzero(c.released) == {"unsupported": 1}
    assert c.connections == 0


@pytest.mark.parametrize("frame", UNSUPPORTED.values(), ids=UNSUPPORTED.keys())
def test_unsupported_secondary_is_dropped_and_counted(frame):
    eng = engine()
    actions = eng.feed(S, frame, 0)
    assert released(actions) == []
    assert [(d.side, d.reason, d.conn) for d in drops(actions)] == [
        (S, DropReason.UNSUPPORTED, None)]
    c = assert_accounted(eng)
    assert c.dropped["secondary"]["unsupported"] == 1
    assert c.connections == 0


@pytest.mark.parametrize("frame,key", SUPPORTED.values(), ids=SUPPORTED.keys())
def test_supported_frame_is_queued_for_compare(frame, key):
    eng = engine()
    actions = eng.feed(P, frame, 0)
    assert released(actions) == []
    assert opened(actions) == [key]
    c = assert_accounted(eng)
    assert c.queued == {"primary": 1, "secondary": 0}


def test_unsupported_primary_passes_queued_frames_of_its_flow():
    # An unsupported frame never waits, even behind compared frames.
    eng = engine()
    eng.feed(P, UDP, 0)
    arp = g.arp_frame()
    assert released(eng.feed(P, arp, 0)) == [arp]
    assert released(eng.feed(S, UDP, 0)) == [UDP]


@pytest.mark.parametrize("vnet_len,compared", [(0, True), (12, True), (20, True),
                                               (21, False), (64, False)])
def test_vnet_header_up_to_20_bytes_is_parsed(vnet_len, compared):
    eng = engine(vnet_hdr=True)
    frame = g.vnet_header(vnet_len, b"\xaa") + UDP
    first = eng.feed(P, frame, 0, vnet_hdr_len=vnet_len)
    second = eng.feed(S, frame, 0, vnet_hdr_len=vnet_len)
    out = [(r.frame, r.vnet_hdr_len) for r in first + second if isinstance(r, Release)]
    assert out == [(frame, vnet_len)]
    c = assert_accounted(eng)
    if compared:
        assert opened(first) == [UDP_KEY]
        assert released(first) == []
        assert nonzero(c.released) == {"matched": 1}
    else:
        assert opened(first) == []
        assert [d.reason for d in drops(second)] == [DropReason.UNSUPPORTED]
        assert nonzero(c.released) == {"unsupported": 1}


# -- connections -------------------------------------------------------------

def test_connection_key_is_the_5tuple_as_seen_in_the_frame():
    # The reverse direction is a connection of its own.
    eng = engine()
    there = g.udp_frame(b"a", src="10.0.0.1", dst="10.0.0.2", sport=5, dport=6)
    back = g.udp_frame(b"a", src="10.0.0.2", dst="10.0.0.1", sport=6, dport=5)
    assert opened(eng.feed(P, there, 0)) == [ConnKey("10.0.0.1", "10.0.0.2", 5, 6, 17)]
    assert opened(eng.feed(S, back, 0)) == [ConnKey("10.0.0.2", "10.0.0.1", 6, 5, 17)]
    assert eng.counters().connections == 2
    assert released(eng.collect()) == []     # not each other's match
    assert eng.counters().queued == {"primary": 1, "secondary": 1}


def test_each_port_is_part_of_the_key():
    eng = engine()
    keys = []
    for sport, dport in [(1, 2), (1, 3), (4, 2)]:
        keys += opened(eng.feed(P, g.udp_frame(b"x", sport=sport, dport=dport), 0))
    assert [(k.sport, k.dport) for k in keys] == [(1, 2), (1, 3), (4, 2)]
    # TCP and UDP on the same ports are different connections
    assert opened(eng.feed(P, g.tcp_frame(b"x", sport=1, dport=2), 0)) == [
        ConnKey("10.0.0.1", "10.0.0.2", 1, 2, 6)]


def test_icmp_and_other_protocols_are_keyed_without_ports():
    eng = engine()
    assert opened(eng.feed(P, g.icmp_echo_frame(b"a", ident=7, seq=1), 0)) == [ICMP_KEY]
    # another echo id is still the same connection
    assert opened(eng.feed(P, g.icmp_echo_frame(b"a", ident=8, seq=1), 0)) == []
    assert opened(eng.feed(P, g.ipv4_frame(b"\x12\x34\x56\x78", g.IPPROTO_GRE), 0)) == [GRE_KEY]
    assert eng.counters().connections == 2


@pytest.mark.parametrize("proto", [33, 132, 136], ids=["dccp", "sctp", "udplite"])
def test_dccp_sctp_udplite_are_keyed_by_ports(proto):
    eng = engine()
    a = g.ipv4_frame(struct.pack("!HH", 4000, 5000) + b"\0" * 8, proto)
    b = g.ipv4_frame(struct.pack("!HH", 4001, 5000) + b"\0" * 8, proto)
    assert opened(eng.feed(P, a, 0)) == [ConnKey(g.DEFAULT_SRC_IP, g.DEFAULT_DST_IP,
                                                 4000, 5000, proto)]
    assert opened(eng.feed(P, b, 0)) == [ConnKey(g.DEFAULT_SRC_IP, g.DEFAULT_DST_IP,
                                                 4001, 5000, proto)]


