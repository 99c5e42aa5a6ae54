"""Frame builders: header layout, checksums, and the one-line descriptions."""

import struct

import pytest

from colo_xdp.lab import pktgen as g


def ones_sum_is_zero(data: bytes) -> bool:
    """A header or segment whose checksum field is right sums to 0xffff."""
    return g.inet_checksum(data) == 0


def l4_with_pseudo(frame: bytes, proto: int) -> bytes:
    """Pseudo-header plus the L4 bytes of an Ethernet/IPv4 frame."""
    ip = frame[g.ETH_HLEN:]
    ihl = (ip[0] & 0x0F) * 4
    l4 = ip[ihl:]
    return ip[12:20] + struct.pack("!BBH", 0, proto, len(l4)) + l4


def test_inet_checksum_matches_a_published_header():
    header = bytes.fromhex("450000730000400040110000c0a80001c0a800c7")
    assert g.inet_checksum(header) == 0xB861


@pytest.mark.parametrize("ip", [g.IPv4Fields(), g.IPv4Fields(ident=9, ttl=1, tos=0x10,
                                                             flags=g.IP_MF, frag_offset=3),
                                g.IPv4Fields(options=b"\x94\x04\x00\x00\x01")])
def test_ipv4_header_fields_and_checksum(ip):
    frame = g.udp_frame(b"x", ip=ip)
    header = frame[g.ETH_HLEN:]
    ihl = (header[0] & 0x0F) * 4
    assert ihl == 20 + len(ip.options) + (-len(ip.options) % 4)
    assert ones_sum_is_zero(header[:ihl])
    assert header[1] == ip.tos and header[8] == ip.ttl
    assert struct.unpack_from("!HH", header, 4) == (ip.ident,
                                                    ip.flags << 13 | ip.frag_offset)
    assert struct.unpack_from("!H", header, 2)[0] == len(header)


def test_udp_checksum_and_length():
    frame = g.udp_frame(b"hello", sport=1, dport=2)
    assert ones_sum_is_zero(l4_with_pseudo(frame, g.IPPROTO_UDP))
    assert frame.endswith(b"hello")
    assert struct.unpack_from("!HHH", frame, 34) == (1, 2, 13)


def test_tcp_fields_options_and_checksum():
    frame = g.tcp_frame(b"data", seq=2**32 + 5, ack=7, flags=g.TCP_SYN | g.TCP_ACK,
                        window=100, options=b"\x02\x04\x05\xb4\x01")
    tcp = frame[34:]
    assert ones_sum_is_zero(l4_with_pseudo(frame, g.IPPROTO_TCP))
    assert struct.unpack_from("!IIBBH", tcp, 4) == (5, 7, 7 << 4, 0x12, 100)
    assert tcp[20:28] == b"\x02\x04\x05\xb4\x01\x00\x00\x00"
    assert tcp.endswith(b"data")


@pytest.mark.parametrize("reply, kind", [(False, 8), (True, 0)])
def test_icmp_echo(reply, kind):
    frame = g.icmp_echo_frame(b"ping", ident=3, seq=4, reply=reply)
    icmp = frame[34:]
    assert ones_sum_is_zero(icmp)
    assert struct.unpack_from("!BBxxHH", icmp) == (kind, 0, 3, 4)


def test_ethernet_addresses_and_types():
    eth = g.EtherAddrs(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
    frame = g.udp_frame(eth=eth)
    assert frame[:12] == bytes.fromhex("020000000002" "020000000001")
    assert g.arp_frame()[12:14] == b"\x08\x06"
    assert g.ipv6_frame(b"abc")[12:14] == b"\x86\xdd"


def test_vlan_tag_goes_after_the_macs():
    inner = g.udp_frame(b"x")
    tagged = g.vlan_frame(inner, vid=10, pcp=5)
    assert tagged[:12] == inner[:12] and tagged[16:] == inner[12:]
    assert struct.unpack_from("!HH", tagged, 12) == (g.ETH_P_8021Q, 5 << 13 | 10)


def test_vnet_header_pattern_and_length():
    assert g.vnet_header(10) == bytes(10)
    assert g.vnet_header(5, b"\x01\x02") == b"\x01\x02\x01\x02\x01"


def test_bad_mac_is_refused():
    with pytest.raises(ValueError):
        g.mac_bytes("00:11")


def test_framing_round_trip_byte_by_byte():
    frames = [g.vnet_header(12) + g.udp_frame(b"a"), g.arp_frame()]
    wire = b"".join(g.encode(f, 12) for f in frames)
    decoder = g.Decoder(vnet=True)
    records = [r for i in range(len(wire)) for r in decoder.feed(wire[i:i + 1])]
    assert records == [g.Record(12, f) for f in frames] and decoder.pending == 0


@pytest.mark.parametrize("frame, text", [
    (g.udp_frame(b"x" * 18), "UDP 10.0.0.1:1000>10.0.0.2:2000 len=60"),
    (g.tcp_frame(b"abc", seq=1, ack=2, flags=g.TCP_ACK | g.TCP_PSH),
     "TCP 10.0.0.1:1000>10.0.0.2:2000 seq=1 ack=2 [PA] payload=3 len=57"),
    (g.icmp_echo_frame(seq=9), "ICMP type=8 10.0.0.1>10.0.0.2 id=1 seq=9 len=42"),
    (g.ipv4_frame(b""), "IPv4 proto=47 10.0.0.1>10.0.0.2 len=34"),
    (g.arp_frame(), "ARP len=42"),
    (g.vlan_frame(g.arp_frame(), vid=7), "802.1Q vid=7 len=46"),
    (b"short", "runt len=5"),
])
def test_describe(frame, text):
    assert g.describe(frame) == text


def test_describe_skips_the_vnet_header():
    frame = g.vnet_header(12) + g.arp_frame()
    assert g.describe(frame, 12) == "ARP len=54"
