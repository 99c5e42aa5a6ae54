"""Frames that are not compared: non-IP and too short to parse, and vnet
headers; IPv6 and tagged frames, which QEMU passes and colo-xdp compares."""

import pytest

from tools.harness import (OUT, CompareOptions, Driver, checkpoint, primary, secondary,
                              wait_checkpoints, wait_output)
from colo_xdp.lab.pktgen import (arp_frame, icmp_echo_frame, ipv4_frame, ipv6_frame,
                                 neighbor_solicit_frame, qinq_frame, tcp_frame, udp6_frame,
                                 udp_frame, vlan_frame, vnet_header)

pytestmark = pytest.mark.interop

UNPARSED = {
    "arp": arp_frame(),
    "nd": neighbor_solicit_frame(),                 # QEMU: IPv6; colo-xdp: as ARP
    "three-tags": vlan_frame(qinq_frame(udp_frame(b"tagged"))),
    "runt": udp_frame(b"")[:17],
    "ipv4-truncated": udp_frame(b"")[:30],
}


@pytest.mark.parametrize("name", UNPARSED)
def test_unparsed_primary_passes_straight_through(play, name):
    frame = UNPARSED[name]
    run = play([primary(frame), wait_output(1)])
    assert run.released == [frame], run.summary()
    assert run.do_checkpoints == 0


@pytest.mark.parametrize("name", UNPARSED)
def test_unparsed_secondary_dropped(play, name):
    frame, later = UNPARSED[name], udp_frame(b"later")
    run = play([secondary(frame), checkpoint(), primary(later), secondary(later),
                wait_output(1)])
    assert run.released == [later], run.summary()
    assert run.do_checkpoints == 0


def test_unparsed_frames_keep_their_place_among_compared_ones(play):
    first, second = udp_frame(b"one"), udp_frame(b"two")
    arp = arp_frame()
    run = play([primary(first), secondary(first), primary(arp), secondary(arp),
                primary(second), secondary(second), wait_output(3)])
    assert run.released == [first, arp, second], run.summary()


VNET = CompareOptions(vnet_hdr_support=True, compare_timeout=60_000)
COMPARED = {
    "udp": udp_frame(b"vnet"),
    "tcp": tcp_frame(b"vnet" * 10, seq=0, ack=1),
    "icmp": icmp_echo_frame(b"vnet"),
    "other": ipv4_frame(b"vnet"),
}


@pytest.mark.parametrize("hdr_len", [0, 10, 12, 20])
@pytest.mark.parametrize("name", COMPARED)
def test_vnet_header_ignored_in_compare_and_kept_on_output(play, name, hdr_len):
    frame = COMPARED[name]
    sent = vnet_header(hdr_len, b"\x11\x12") + frame
    twin = vnet_header(hdr_len, b"\x21") + frame
    run = play([primary(sent, hdr_len), secondary(twin, hdr_len), wait_output(1)], VNET)
    assert run.released == [sent], run.summary()
    assert [e.record.vnet_hdr_len for e in run.on(OUT)] == [hdr_len]
    assert run.do_checkpoints == 0


def test_vnet_header_lengths_differ_is_a_mismatch(play):
    frame = udp_frame(b"vnet")
    run = play([primary(vnet_header(12) + frame, 12),
                secondary(vnet_header(10) + frame, 10), wait_checkpoints(1)], VNET)
    assert run.released == [], run.summary()


# QEMU 7.2 compares IPv4 only: these pass its compare straight through;
# colo-xdp compares them (docs/compare-rules.md, "IPv6", "VLAN tags").
QEMU_UNPARSED = {
    "ipv6": ipv6_frame(b"v6 payload"),
    "udp6": udp6_frame(b"v6 payload"),
    "vlan": vlan_frame(udp_frame(b"tagged"), vid=10),
}


@pytest.mark.parametrize("name", QEMU_UNPARSED)
def test_qemu_passes_ipv6_and_tagged_primary_uncompared(play_qemu, name):
    frame = QEMU_UNPARSED[name]
    run = play_qemu([primary(frame), wait_output(1)])
    assert run.released == [frame], run.summary()


@pytest.mark.parametrize("name", QEMU_UNPARSED)
def test_ours_compares_ipv6_and_tagged(play_ours, name):
    frame = QEMU_UNPARSED[name]
    run = play_ours([primary(frame), secondary(frame), wait_output(1)])
    assert run.released == [frame], run.summary()
    other = frame[:-1] + b"!"
    run = play_ours([primary(frame), secondary(other), wait_checkpoints(1)])
    assert run.released == [], run.summary()


@pytest.mark.parametrize("name", ["arp", "nd"])
def test_vnet_unparsed_primary_passes_with_header(play, name):
    sent = vnet_header(12, b"\x42") + UNPARSED[name]
    run = play([primary(sent, 12), wait_output(1)], VNET)
    assert run.released == [sent], run.summary()


def test_vnet_header_over_20_bytes_passes_straight_through(play):
    """QEMU does not parse a frame behind a vnet header over 20 bytes."""
    sent = vnet_header(21, b"\x42") + udp_frame(b"long header")
    run = play([primary(sent, 21), wait_output(1), secondary(sent, 21), checkpoint()],
               VNET)
    assert run.released == [sent], run.summary()
    assert run.do_checkpoints == 0


@pytest.mark.parametrize("options", [CompareOptions(), VNET], ids=["plain", "vnet"])
def test_handshake_answered(launch, options):
    with launch(options) as comparator, Driver(comparator, handshake=False) as driver:
        assert driver.handshake(), driver.snapshot().summary()
        assert driver.snapshot().notifications == [b"COLO_COMPARE_GET_XEN_INIT"]
