"""Engine.feed_stream and the out buffer: QEMU's chardev framing in and out,
partial records, zero-length and oversize records, vnet framing, and the
"Where colo-xdp differs from QEMU 7.2" rows about them."""
import random
import struct

import pytest

from colo_xdp.lab import pktgen as g
from colo_xdp.engine import (
    Drop, DropReason, Engine, EngineConfig, NET_BUFSIZE, Release,
)
from engine_kit import P, S, assert_accounted, seg, udp


def stream_engine(**config) -> Engine:
    return Engine(EngineConfig(**config))


def feed_chunks(eng: Engine, side, wire: bytes, sizes) -> int:
    """Feed ``wire`` in chunks of ``sizes``, carrying what was not consumed
    over to the next call as a reader would; return the bytes left over."""
    pending, pos = b"", 0
    for n in sizes:
        pending += wire[pos:pos + n]
        pos += n
        pending = pending[eng.feed_stream(side, pending, 0):]
    assert pos == len(wire)
    return len(pending)


FRAMES = [udp(i) for i in range(5)] + [g.arp_frame(), seg(b"tcp", 7)]
WIRE = b"".join(g.encode(f) for f in FRAMES)


def test_whole_records_are_fed_like_frames():
    eng = stream_engine()
    assert eng.feed_stream(S, WIRE, 0) == len(WIRE)
    assert eng.feed_stream(P, WIRE, 0) == len(WIRE)
    assert [r.frame for r in eng.take_releases()] == FRAMES
    c = assert_accounted(eng)
    assert c.frames_in == {"primary": 7, "secondary": 7}
    assert c.bytes_in["primary"] == sum(map(len, FRAMES))


FIRST = len(g.encode(FRAMES[0]))


@pytest.mark.parametrize("cut", range(1, FIRST + 3))
def test_partial_record_is_left_for_the_next_call(cut):
    eng = stream_engine()
    used = eng.feed_stream(P, WIRE[:cut], 0)
    assert used == (FIRST if cut >= FIRST else 0)
    assert eng.counters().frames_in["primary"] == (1 if cut >= FIRST else 0)
    assert eng.feed_stream(P, WIRE[used:], 0) == len(WIRE) - used
    assert eng.counters().frames_in["primary"] == 7
    eng.checkpoint()
    assert [r.frame for r in eng.take_releases()] == [FRAMES[5]] + FRAMES[:5] + [FRAMES[6]]


def test_records_split_anywhere_across_calls():
    rnd = random.Random(7)
    for _ in range(50):
        sizes, left = [], len(WIRE)
        while left:
            n = min(left, rnd.choice([1, 2, 3, 5, 8, 40, 100]))
            sizes.append(n)
            left -= n
        eng = stream_engine()
        assert feed_chunks(eng, S, WIRE, [len(WIRE)]) == 0
        assert feed_chunks(eng, P, WIRE, sizes) == 0
        assert [r.frame for r in eng.take_releases()] == FRAMES
        assert_accounted(eng)


def test_header_alone_is_not_consumed():
    eng = stream_engine()
    assert eng.feed_stream(P, b"", 0) == 0
    assert eng.feed_stream(P, struct.pack("!I", 50)[:3], 0) == 0
    assert eng.feed_stream(P, struct.pack("!I", 50), 0) == 0
    assert eng.counters().frames_in["primary"] == 0


@pytest.mark.parametrize("side", [P, S])
def test_zero_length_record_is_counted_and_read_past(side):
    eng = stream_engine()
    wire = (g.encode(udp(0)) + g.encode(udp(1)) + struct.pack("!I", 0) + g.encode(udp(2)))
    assert eng.feed_stream(side, wire, 0) == len(wire)
    assert Drop(side, DropReason.EMPTY, None) in eng.drain_events()
    c = assert_accounted(eng)
    assert c.frames_in[side.name.lower()] == 4          # three frames and the empty one
    assert c.dropped[side.name.lower()]["empty"] == 1


def test_zero_length_records_coalesce_into_one_event_with_a_count():
    eng = stream_engine()
    wire = struct.pack("!I", 0) * 50 + g.encode(udp(0))
    assert eng.feed_stream(P, wire, 0) == len(wire)
    assert Drop(P, DropReason.EMPTY, None, count=50) in eng.drain_events()


@pytest.mark.parametrize("side", [P, S])
def test_oversize_record_is_counted_and_its_body_skipped_across_calls(side):
    eng = stream_engine()
    size = NET_BUFSIZE + 1000
    good = [udp(i) for i in range(50)]
    wire = (g.encode(udp(100)) + struct.pack("!I", size) + b"\xee" * size
            + b"".join(g.encode(f) for f in good))
    assert feed_chunks(eng, side, wire, [100, 30000, 30000, len(wire) - 60100]) == 0
    other = S if side is P else P
    for f in good + [udp(100)]:
        eng.feed_frame(other, f, 0)
    assert len(eng.take_releases()) == 51                # nothing after it vanished
    c = assert_accounted(eng)
    assert c.dropped[side.name.lower()]["oversize"] == 1
    assert c.frames_in[side.name.lower()] == 52


def test_stream_reset_stops_skipping_an_oversize_body():
    eng = stream_engine()
    assert eng.feed_stream(P, struct.pack("!I", NET_BUFSIZE + 1), 0) == 4
    eng.stream_reset(P)                                  # a new peer
    assert eng.feed_stream(P, g.encode(udp(0)), 0) == len(g.encode(udp(0)))
    assert eng.counters().frames_in["primary"] == 2


def test_record_of_net_bufsize_is_accepted():
    big = g.arp_frame() + b"\0" * (NET_BUFSIZE - len(g.arp_frame()))
    eng = stream_engine()
    assert eng.feed_stream(P, g.encode(big), 0) == NET_BUFSIZE + 4
    assert [r.frame for r in eng.take_releases()] == [big]


def test_direct_feed_counts_empty_and_oversize_frames():
    eng = stream_engine()
    eng.feed_frame(P, b"", 0)
    eng.feed_frame(S, b"\0" * (NET_BUFSIZE + 1), 0)
    assert eng.drain_events() == [Drop(P, DropReason.EMPTY, None),
                                  Drop(S, DropReason.OVERSIZE, None)]
    assert_accounted(eng)


# -- vnet framing -------------------------------------------------------------

def test_vnet_records_are_parsed_after_the_vnet_header():
    hp, hs = g.vnet_header(12, b"\x01"), g.vnet_header(12, b"\x02")
    eng = stream_engine(vnet_hdr=True)
    eng.feed_stream(P, g.encode(hp + udp(0), 12), 0)
    assert eng.output_pending() == 0
    eng.feed_stream(S, g.encode(hs + udp(0), 12), 0)
    # the primary's record goes out unchanged: len | vnet_hdr_len | header + frame
    assert bytes(eng.output()) == g.encode(hp + udp(0), 12)
    assert eng.take_releases() == [Release(hp + udp(0), 12)]


def test_vnet_records_split_across_calls():
    frames = [g.vnet_header(10) + udp(i) for i in range(3)]
    wire = b"".join(g.encode(f, 10) for f in frames)
    eng = stream_engine(vnet_hdr=True)
    for cut in (1, 4, 5, 7, 8, 9):
        assert feed_chunks(eng, P, wire, [cut, len(wire) - cut]) == 0
    assert eng.counters().frames_in["primary"] == 18
    eng.checkpoint()
    assert eng.take_releases() == [Release(f, 10) for f in frames] * 6


def test_vnet_zero_length_record_is_an_empty_frame():
    eng = stream_engine(vnet_hdr=True)
    assert eng.feed_stream(P, struct.pack("!I", 0), 0) == 0      # header incomplete
    assert eng.feed_stream(P, struct.pack("!II", 0, 0), 0) == 8
    assert eng.counters().dropped["primary"]["empty"] == 1


def test_vnet_header_length_over_20_in_the_stream_is_unsupported():
    frame = g.vnet_header(24) + udp(0)
    eng = stream_engine(vnet_hdr=True)
    eng.feed_stream(P, g.encode(frame, 24), 0)
    eng.feed_stream(S, g.encode(frame, 24), 0)
    assert eng.take_releases() == [Release(frame, 24)]
    c = assert_accounted(eng)
    assert c.released["unsupported"] == 1
    assert c.dropped["secondary"]["unsupported"] == 1


# -- the out buffer -----------------------------------------------------------------

def test_output_is_held_until_consumed_and_keeps_release_order():
    # No outdev peer / a slow one: nothing is lost or reordered.
    eng = stream_engine()
    frames = [udp(i, flow=i % 3) for i in range(300)]
    for f in frames:
        eng.feed_frame(P, f, 0)
        eng.feed_frame(S, f, 0)
    want = b"".join(g.encode(f) for f in frames)
    assert bytes(eng.output()) == want
    eng.consume_output(10)
    assert bytes(eng.output()) == want[10:]
    more = udp(1000)
    eng.feed_frame(P, more, 0)
    eng.feed_frame(S, more, 0)
    assert bytes(eng.output()) == want[10:] + g.encode(more)
    eng.consume_output(len(want) - 10 + len(g.encode(more)))
    assert eng.output_pending() == 0


def test_abandoned_partial_record_is_skipped_to_the_next_boundary():
    eng = stream_engine()
    a, b = g.arp_frame(), g.arp_frame(g.ARP_REPLY)
    eng.feed_frame(P, a, 0)
    eng.feed_frame(P, b, 0)
    assert eng.abandon_partial_output() is False        # on a boundary: nothing cut
    eng.consume_output(5)
    assert eng.abandon_partial_output() is True
    assert bytes(eng.output()) == g.encode(b)
    assert eng.counters().outdev_cut == 1


def test_stream_and_frame_feeding_give_the_same_output():
    rnd = random.Random(11)
    frames = [rnd.choice([udp(i), seg(b"s%d" % i, 10 * i), g.arp_frame()]) for i in range(60)]
    direct, streamed = stream_engine(), stream_engine()
    for f in frames:
        direct.feed_frame(S, f, 0)
        direct.feed_frame(P, f, 0)
    wire = b"".join(g.encode(f) for f in frames)
    for side in (S, P):
        sizes, left = [], len(wire)
        while left:
            sizes.append(min(left, rnd.randint(1, 120)))
            left -= sizes[-1]
        assert feed_chunks(streamed, side, wire, sizes) == 0
    # same frames out; the order differs only by when each side was fed
    assert sorted(r.frame for r in streamed.take_releases()) == \
        sorted(r.frame for r in direct.take_releases())
    assert assert_accounted(streamed) == assert_accounted(direct)


def test_burst_feeding_equals_frame_feeding():
    """cx_engine__feed_burst (the AF_XDP path) is cx_engine__feed per frame."""
    frames = [udp(i) for i in range(5)] + [g.arp_frame()]
    by_frame, by_burst = Engine(EngineConfig()), Engine(EngineConfig())
    for side in (P, S):
        for f in frames:
            by_frame.feed_frame(side, f, 0)
        assert by_burst.handle.feed_burst(side, frames, 0) == len(frames)
    assert bytes(by_burst.output()) == bytes(by_frame.output())
    assert by_burst.counters() == by_frame.counters()
