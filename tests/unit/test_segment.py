"""csrc/segment.c through cffi: a guest's TSO/USO super-frame with a partial
checksum, cut into the wire frames the AF_XDP outdev sends.  Each expected
wire frame is built independently with pktgen (correct checksums) and
compared byte for byte."""
from __future__ import annotations

import errno
import struct

import pytest

from colo_xdp import native
from colo_xdp.lab import pktgen
from colo_xdp.lab.pktgen import IPv4Fields, IPv6Fields

MTU = 1500
FRAME = 2048            # a UMEM frame
TCP_FIN, TCP_PSH, TCP_ACK, TCP_CWR = 0x01, 0x08, 0x10, 0x80
PAYLOAD = bytes((i * 31 + 7) & 0xFF for i in range(20000))


def offloaded(frame: bytes, l4_off: int, csum_at: int) -> bytes:
    """The frame as a guest with checksum offload hands it over: the L4
    checksum field holds a pseudo-header-only sum, here a recognisable junk."""
    at = l4_off + csum_at
    return frame[:at] + b"\x12\x34" + frame[at + 2:]


def cut(frame: bytes, mtu: int = MTU, max_len: int = FRAME) -> list[bytes]:
    return native.segment(frame, mtu, max_len)


def test_a_frame_that_fits_goes_out_whole_with_its_checksum_finished():
    good = pktgen.tcp_frame(b"hello", seq=5)
    assert cut(offloaded(good, 34, 16)) == [good]
    good6 = pktgen.udp6_frame(b"hello six")
    assert cut(offloaded(good6, 54, 6)) == [good6]


@pytest.mark.parametrize("mss_options", [b"", b"\x01\x01\x08\x0a" + bytes(8)],
                         ids=["plain", "timestamps"])
def test_tcp_v4_super_frame_is_cut_into_segments(mss_options):
    flags = TCP_ACK | TCP_PSH | TCP_FIN | TCP_CWR
    ip = IPv4Fields(ident=0xfffe)                   # the id wraps past 0xffff
    hdr = 14 + 20 + 20 + len(mss_options)
    piece = MTU - (hdr - 14)
    super_frame = offloaded(pktgen.tcp_frame(PAYLOAD, seq=0xffffff00, flags=flags,
                                             options=mss_options, ip=ip), 34, 16)
    got = cut(super_frame)
    n = -(-len(PAYLOAD) // piece)
    assert len(got) == n
    for i, frame in enumerate(got):
        f = flags & ~(TCP_FIN | TCP_PSH) if i < n - 1 else flags
        f = f & ~TCP_CWR if i else f
        want = pktgen.tcp_frame(PAYLOAD[i * piece:(i + 1) * piece],
                                seq=(0xffffff00 + i * piece) & 0xFFFFFFFF, flags=f,
                                options=mss_options,
                                ip=IPv4Fields(ident=(0xfffe + i) & 0xFFFF))
        assert frame == want, f"segment {i}"
        assert len(frame) - 14 <= MTU


def test_tcp_v6_with_a_tag_and_options_header_cut_at_the_frame_size():
    ip = IPv6Fields(ext=((pktgen.IPV6_HOPOPTS, b"\x01\x02\x00\x00"),))
    data = PAYLOAD[:9000]
    frame = pktgen.vlan_frame(pktgen.tcp6_frame(data, seq=77, ip=ip), vid=5)
    l4_off = 18 + 40 + 8
    got = cut(offloaded(frame, l4_off, 16), mtu=9000, max_len=2048)
    piece = 2048 - (l4_off + 20)
    assert len(got) == -(-9000 // piece)
    for i, g in enumerate(got):
        want = pktgen.vlan_frame(pktgen.tcp6_frame(data[i * piece:(i + 1) * piece],
                                                   seq=77 + i * piece, ip=ip), vid=5)
        assert g == want, f"segment {i}"


def test_udp_super_frame_is_cut_into_datagrams_that_fill_the_mtu():
    data = PAYLOAD[:5000]
    got = cut(offloaded(pktgen.udp_frame(data, ip=IPv4Fields(ident=9)), 34, 6))
    piece = MTU - 28
    assert [g for g in got] == [
        pktgen.udp_frame(data[i:i + piece], ip=IPv4Fields(ident=9 + k))
        for k, i in enumerate(range(0, len(data), piece))]


def test_udp_v4_without_a_checksum_keeps_none():
    frame = pktgen.udp_frame(PAYLOAD[:3000])
    frame = frame[:40] + b"\0\0" + frame[42:]
    for g in cut(frame):
        assert g[40:42] == b"\0\0"


@pytest.mark.parametrize("damage", ["ip_total_beyond_frame", "tcp_header_beyond_packet"])
def test_an_inconsistent_super_frame_is_refused_with_einval(damage):
    if damage == "ip_total_beyond_frame":
        frame = pktgen.tcp_frame(PAYLOAD[:4000])[:3000]     # says 4040 bytes of IP
    else:
        frame = bytearray(pktgen.tcp_frame(bytes(16)))      # 36 bytes of TCP
        frame[46] = 0xF0                                    # a 60-byte TCP header
        frame = bytes(frame) + bytes(3000)                  # long (padding after IP)
    with pytest.raises(native.NativeError) as exc:
        cut(frame)
    assert exc.value.errno == errno.EINVAL


def test_what_cannot_be_cut_is_refused_with_emsgsize():
    long_other = pktgen.ipv4_frame(bytes(3000))                   # GRE
    frag = pktgen.udp_frame(bytes(3000), ip=IPv4Fields(flags=1))  # MF: a fragment
    for frame in (long_other, frag, bytes(3000)):
        with pytest.raises(native.NativeError) as exc:
            cut(frame)
        assert exc.value.errno == errno.EMSGSIZE
    with pytest.raises(native.NativeError) as exc:                # no room for payload
        cut(pktgen.tcp_frame(PAYLOAD[:3000]), mtu=80)
    assert exc.value.errno == errno.EMSGSIZE


def test_a_short_or_odd_frame_that_fits_is_copied_untouched():
    for frame in (b"\x01", pktgen.arp_frame(), pktgen.tcp_frame(b"x")[:40]):
        assert cut(frame) == [frame]


def test_an_empty_frame_is_refused_with_einval():
    with pytest.raises(native.NativeError) as exc:
        cut(b"")
    assert exc.value.errno == errno.EINVAL
