"""docs/compare-rules.md, "UDP, ICMP and other IPv4", and the rows of "Where
colo-xdp differs from QEMU 7.2" about the order they are released in."""
from colo_xdp.lab import pktgen as g
from colo_xdp.engine import CheckpointReason, CheckpointRequest
from engine_kit import (
    GRE_KEY, ICMP_KEY, P, S, UDP_KEY, assert_accounted, checkpoints, engine,
    feed_all, nonzero, opened, reasons, released, udp,
)

OTHER_IP = g.IPv4Fields(ident=4242, ttl=3, tos=0x10, flags=0)
OTHER_ETH = g.EtherAddrs(src="02:00:00:00:00:aa", dst="02:00:00:00:00:bb")


def test_udp_match_releases_primary_and_consumes_secondary():
    eng = engine()
    assert released(eng.feed(P, udp(1), 0)) == []
    assert released(eng.feed(S, udp(1), 0)) == [udp(1)]
    c = assert_accounted(eng)
    assert nonzero(c.released) == {"matched": 1}
    assert c.matched_secondary == 1
    assert c.queued == {"primary": 0, "secondary": 0}
    assert c.checkpoints == {"mismatch": 0, "timeout": 0, "queue_full": 0, "table_full": 0}


def test_secondary_first_then_primary_is_released_at_once():
    eng = engine()
    actions = eng.feed(S, udp(1), 0)
    assert released(actions) == [] and opened(actions) == [UDP_KEY]
    assert released(eng.feed(P, udp(1), 0)) == [udp(1)]
    assert_accounted(eng)


def test_udp_ignores_ethernet_and_ip_header_differences():
    # Same UDP datagram, but other MACs, IP id, TTL, TOS and flags: a match,
    # and the primary's own bytes are what comes out.
    prim = g.udp_frame(b"same")
    sec = g.udp_frame(b"same", ip=OTHER_IP, eth=OTHER_ETH)
    assert prim != sec and len(prim) == len(sec)
    eng = engine()
    eng.feed(P, prim, 0)
    actions = eng.feed(S, sec, 0)
    assert released(actions) == [prim]
    assert checkpoints(actions) == []


def test_icmp_ignores_ethernet_and_ip_header_differences():
    prim = g.icmp_echo_frame(b"ping", ident=3, seq=9)
    sec = g.icmp_echo_frame(b"ping", ident=3, seq=9, ip=OTHER_IP, eth=OTHER_ETH)
    eng = engine()
    eng.feed(S, sec, 0)
    assert released(eng.feed(P, prim, 0)) == [prim]


def test_udp_payload_difference_is_a_mismatch_and_both_stay_queued():
    eng = engine()
    eng.feed(P, g.udp_frame(b"aaaa"), 0)
    actions = eng.feed(S, g.udp_frame(b"aaab"), 0)
    assert released(actions) == []
    assert checkpoints(actions) == [CheckpointRequest(CheckpointReason.MISMATCH, UDP_KEY)]
    c = assert_accounted(eng)
    assert c.queued == {"primary": 1, "secondary": 1}
    assert c.mismatches == {"tcp": 0, "udp_icmp": 1, "other": 0}
    assert nonzero(c.checkpoints) == {"mismatch": 1}


def test_icmp_payload_difference_is_a_mismatch():
    eng = engine()
    eng.feed(P, g.icmp_echo_frame(b"ping", seq=1), 0)
    actions = eng.feed(S, g.icmp_echo_frame(b"ping", seq=2), 0)
    assert checkpoints(actions) == [CheckpointRequest(CheckpointReason.MISMATCH, ICMP_KEY)]
    assert eng.counters().mismatches["udp_icmp"] == 1


def test_frame_length_difference_is_a_mismatch():
    # Same datagram, one frame carries Ethernet padding: the sizes differ.
    eng = engine()
    eng.feed(P, udp(1), 0)
    actions = eng.feed(S, udp(1) + b"\0" * 6, 0)
    assert released(actions) == []
    assert reasons(actions) == [CheckpointReason.MISMATCH]


def test_padding_bytes_are_compared_for_udp():
    eng = engine()
    eng.feed(P, udp(1) + b"\0" * 6, 0)
    actions = eng.feed(S, udp(1) + b"\0" * 5 + b"\1", 0)
    assert reasons(actions) == [CheckpointReason.MISMATCH]


def test_other_protocol_identical_frames_match():
    frame = g.ipv4_frame(b"gre-body", g.IPPROTO_GRE)
    eng = engine()
    eng.feed(P, frame, 0)
    assert released(eng.feed(S, frame, 0)) == [frame]
    assert nonzero(eng.counters().released) == {"matched": 1}


def test_other_protocol_ttl_difference_is_a_mismatch():
    eng = engine()
    eng.feed(P, g.ipv4_frame(b"gre-body", g.IPPROTO_GRE), 0)
    actions = eng.feed(S, g.ipv4_frame(b"gre-body", g.IPPROTO_GRE,
                                       ip=g.IPv4Fields(ttl=63)), 0)
    assert released(actions) == []
    assert checkpoints(actions) == [CheckpointRequest(CheckpointReason.MISMATCH, GRE_KEY)]
    assert eng.counters().mismatches == {"tcp": 0, "udp_icmp": 0, "other": 1}


def test_other_protocol_mac_difference_is_a_mismatch():
    eng = engine()
    eng.feed(P, g.ipv4_frame(b"gre-body", g.IPPROTO_GRE), 0)
    actions = eng.feed(S, g.ipv4_frame(b"gre-body", g.IPPROTO_GRE, eth=OTHER_ETH), 0)
    assert reasons(actions) == [CheckpointReason.MISMATCH]


def test_other_protocol_is_compared_from_the_end_of_the_vnet_header():
    body = g.ipv4_frame(b"gre-body", g.IPPROTO_GRE)
    prim, sec = g.vnet_header(12, b"\x01") + body, g.vnet_header(12, b"\x02") + body
    eng = engine(vnet_hdr=True)
    eng.feed(P, prim, 0, vnet_hdr_len=12)
    assert released(eng.feed(S, sec, 0, vnet_hdr_len=12)) == [prim]


def test_udp_vnet_header_difference_is_ignored():
    prim, sec = g.vnet_header(10, b"\x01") + udp(1), g.vnet_header(10, b"\x02") + udp(1)
    eng = engine(vnet_hdr=True)
    eng.feed(P, prim, 0, vnet_hdr_len=10)
    assert released(eng.feed(S, sec, 0, vnet_hdr_len=10)) == [prim]


def test_oldest_primary_is_matched_against_the_whole_secondary_queue():
    # The secondary holds X then A; the primary's A matches the second one
    # without a checkpoint, and X stays for the primary's X.
    eng = engine()
    feed_all(eng, [(S, udp(9)), (S, udp(1))])
    actions = eng.feed(P, udp(1), 0)
    assert released(actions) == [udp(1)]
    assert checkpoints(actions) == []
    assert eng.counters().queued == {"primary": 0, "secondary": 1}
    assert released(eng.feed(P, udp(9), 0)) == [udp(9)]
    assert_accounted(eng)


def test_primary_running_ahead_is_released_in_order_without_checkpoints():
    # QEMU takes the newest primary first: this comes out reversed there.
    eng = engine()
    frames = [udp(i) for i in range(5)]
    actions = feed_all(eng, [(P, f) for f in frames])
    actions += feed_all(eng, [(S, f) for f in frames])
    assert released(actions) == frames
    assert checkpoints(actions) == []
    c = assert_accounted(eng)
    assert c.checkpoints["mismatch"] == 0 and c.queued["primary"] == 0


def test_steady_flow_with_primary_one_ahead_releases_everything():
    # QEMU releases nothing here and asks for a checkpoint per frame.
    eng = engine()
    actions = eng.feed(P, udp(0), 0)
    for i in range(1, 50):
        actions += eng.feed(P, udp(i), i)
        actions += eng.feed(S, udp(i - 1), i)
    actions += eng.feed(S, udp(49), 50)
    assert released(actions) == [udp(i) for i in range(50)]
    assert checkpoints(actions) == []
    assert_accounted(eng)


def test_secondary_running_ahead_is_released_in_order():
    eng = engine()
    frames = [udp(i) for i in range(5)]
    actions = feed_all(eng, [(S, f) for f in frames] + [(P, f) for f in frames])
    assert released(actions) == frames
    assert checkpoints(actions) == []


def test_mismatched_primary_blocks_its_flow_and_asks_again_per_frame():
    # "No match is a mismatch: both stay queued": the oldest primary keeps
    # its place, so every later compare of this connection fails on it.
    eng = engine()
    actions = feed_all(eng, [(P, udp(100)), (S, udp(1)), (P, udp(2)), (S, udp(2))])
    assert released(actions) == []
    assert reasons(actions) == [CheckpointReason.MISMATCH] * 3
    c = assert_accounted(eng)
    assert c.queued == {"primary": 2, "secondary": 2}
    assert c.mismatches["udp_icmp"] == 3
    # the checkpoint releases the primary frames oldest first
    assert released(eng.checkpoint()) == [udp(100), udp(2)]


def test_flows_are_compared_independently():
    eng = engine()
    actions = feed_all(eng, [(P, udp(1, flow=0)), (P, udp(1, flow=1)),
                             (S, udp(2, flow=0)),          # mismatch on flow 0
                             (S, udp(1, flow=1))])         # flow 1 matches
    assert released(actions) == [udp(1, flow=1)]
    assert reasons(actions) == [CheckpointReason.MISMATCH]


def test_queued_frames_of_every_size_come_out_whole_and_in_order():
    # A secondary far ahead, frames of 64 B (malloc'd), 1400 B (a free-list
    # slot) and 4000 B (over a slot, malloc'd); each round queues more slots
    # than the free list keeps: every primary is released as it was, in order.
    sizes = (64, 1400, 1400, 1400, 4000)
    frames = [g.udp_frame(bytes([n % 251]) * (sizes[n % 5] - 42)) for n in range(6000)]
    eng = engine(max_queue_size=4096)
    out = []
    for start in range(0, len(frames), 3000):
        batch = frames[start:start + 3000]
        out += released(feed_all(eng, [(S, f) for f in batch]))
        out += released(feed_all(eng, [(P, f) for f in batch]))
    assert out == frames
    c = assert_accounted(eng)
    assert c.matched_secondary == len(frames)
    assert c.queued == {"primary": 0, "secondary": 0}
