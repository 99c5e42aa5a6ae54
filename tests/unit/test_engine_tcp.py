"""docs/compare-rules.md, "TCP", and its rows in "Where colo-xdp differs from
QEMU 7.2" (wraparound-safe ACKs, ACK flag, padding, the secondary segment
consumed at once)."""
import pytest

from colo_xdp.lab import pktgen as g
from colo_xdp.engine import CheckpointReason, CheckpointRequest
from engine_kit import (
    ACK, P, S, TCP_KEY, WRAP, assert_accounted, checkpoints, data, engine,
    feed_all, nonzero, reasons, released, seg,
)

MISMATCH = [CheckpointRequest(CheckpointReason.MISMATCH, TCP_KEY)]
BYTES = data(1000)


def split(seq: int, sizes, ack: int = 1, payload: bytes = BYTES, **kw) -> list[bytes]:
    """``payload`` cut into segments of ``sizes``, the first at ``seq``."""
    out, pos = [], 0
    for n in sizes:
        out.append(seg(payload[pos:pos + n], seq + pos, ack, **kw))
        pos += n
    return out


# -- equal segmentation --------------------------------------------------------

def test_equal_segmentation_releases_each_segment_on_its_match():
    # The secondary's window differs: what comes out is the primary's bytes.
    prim, sec = split(0, [100, 200, 300]), split(0, [100, 200, 300], window=512)
    eng = engine()
    assert released(eng.feed(P, prim[0], 0)) == []
    assert released(eng.feed(S, sec[0], 0)) == [prim[0]]
    assert released(eng.feed(P, prim[1], 0)) == []
    assert released(eng.feed(P, prim[2], 0)) == []
    assert released(eng.feed(S, sec[1], 0)) == [prim[1]]
    assert released(eng.feed(S, sec[2], 0)) == [prim[2]]
    c = assert_accounted(eng)
    assert nonzero(c.released) == {"matched": 3}
    assert c.matched_secondary == 3 and c.skipped_secondary == 0
    assert c.checkpoints["mismatch"] == 0


def test_equal_ranges_release_whatever_the_acks():
    # Only split ranges look at ACKs; here the primary acknowledges far more.
    prim, sec = seg(b"x" * 10, 0, ack=90000), seg(b"x" * 10, 0, ack=1)
    eng = engine()
    eng.feed(P, prim, 0)
    actions = eng.feed(S, sec, 0)
    assert released(actions) == [prim]
    assert checkpoints(actions) == []


def test_same_range_different_payload_is_a_mismatch():
    eng = engine()
    eng.feed(P, seg(b"abcd", 0), 0)
    actions = eng.feed(S, seg(b"abce", 0), 0)
    assert released(actions) == []
    assert checkpoints(actions) == MISMATCH
    c = assert_accounted(eng)
    assert c.queued == {"primary": 1, "secondary": 1}
    assert c.mismatches == {"tcp": 1, "udp_icmp": 0, "other": 0}


# -- different segmentation ------------------------------------------------------

def test_one_primary_segment_against_two_secondary_segments():
    (prim,), sec = split(0, [1000]), split(0, [500, 500])
    eng = engine()
    eng.feed(P, prim, 0)
    actions = eng.feed(S, sec[0], 0)
    # the secondary ended first: its part is compared, it is consumed
    assert released(actions) == [] and checkpoints(actions) == []
    assert eng.counters().queued == {"primary": 1, "secondary": 0}
    assert released(eng.feed(S, sec[1], 0)) == [prim]
    c = assert_accounted(eng)
    assert c.queued == {"primary": 0, "secondary": 0}
    assert nonzero(c.released) == {"matched": 1}
    assert c.matched_secondary == 2


def test_two_primary_segments_against_one_secondary_segment():
    prim, (sec,) = split(0, [500, 500]), split(0, [1000])
    eng = engine()
    actions = feed_all(eng, [(P, prim[0]), (P, prim[1]), (S, sec)])
    assert released(actions) == prim
    assert checkpoints(actions) == []
    c = assert_accounted(eng)
    assert c.queued == {"primary": 0, "secondary": 0}
    assert nonzero(c.released) == {"matched": 2}
    assert c.matched_secondary == 1


def test_secondary_matched_by_the_primary_that_ends_with_it_is_consumed_at_once():
    # QEMU keeps it queued until the next primary segment, and it can time
    # out there; here it is consumed when the primary that ends with it goes.
    prim, (sec,) = split(0, [500, 500]), split(0, [1000])
    eng = engine()
    eng.tick(0)
    assert released(feed_all(eng, [(P, prim[0]), (S, sec)])) == [prim[0]]
    assert eng.counters().queued == {"primary": 0, "secondary": 1}   # half compared
    assert released(eng.feed(P, prim[1], 0)) == [prim[1]]
    assert eng.counters().queued == {"primary": 0, "secondary": 0}
    assert eng.counters().matched_secondary == 1
    for now in range(1000, 10001, 1000):
        assert eng.tick(now) == []


def test_difference_in_the_second_half_of_a_split_range_is_a_mismatch():
    (prim,) = split(0, [1000])
    other = BYTES[:700] + b"\xff" + BYTES[701:]
    sec = split(0, [500, 500], payload=other)
    eng = engine()
    eng.feed(P, prim, 0)
    assert checkpoints(eng.feed(S, sec[0], 0)) == []
    actions = eng.feed(S, sec[1], 0)
    assert released(actions) == []
    assert checkpoints(actions) == MISMATCH
    assert eng.counters().queued == {"primary": 1, "secondary": 1}


def test_difference_in_a_short_primary_segment_is_a_mismatch():
    prim = split(0, [500, 500], payload=b"\xff" + BYTES[1:])
    (sec,) = split(0, [1000])
    eng = engine()
    eng.feed(S, sec, 0)
    actions = eng.feed(P, prim[0], 0)
    assert released(actions) == []
    assert checkpoints(actions) == MISMATCH


# -- the ACK rule ----------------------------------------------------------------------

@pytest.mark.parametrize("p_ack,s_ack,expect_release", [
    (1000, 1000, True),      # equal to the lower highest ACK
    (999, 1000, True),       # below it
    (1000, 5000, True),      # the secondary acknowledged more
    (1001, 1000, False),     # the primary acknowledges what the secondary has not
    (5000, 1000, False),
])
def test_split_primary_is_released_only_if_ack_is_at_most_the_lower_highest_ack(
        p_ack, s_ack, expect_release):
    prim, (sec,) = split(0, [500, 500], ack=p_ack), split(0, [1000], ack=s_ack)
    eng = engine()
    actions = feed_all(eng, [(S, sec), (P, prim[0])])
    if expect_release:
        assert released(actions) == [prim[0]]
        assert checkpoints(actions) == []
    else:
        assert released(actions) == []
        assert checkpoints(actions) == MISMATCH
        c = assert_accounted(eng)
        assert c.queued == {"primary": 1, "secondary": 1}
        assert c.mismatches["tcp"] == 1


def test_ack_rule_is_per_segment():
    # Highest ACKs: primary 1500, secondary 1000, so the lower one is 1000.
    # The first primary segment (ack 500) goes, the second (ack 1500) is held.
    prim = [seg(BYTES[:500], 0, ack=500), seg(BYTES[500:], 500, ack=1500)]
    (sec,) = split(0, [1000], ack=1000)
    eng = engine()
    actions = feed_all(eng, [(P, prim[0]), (P, prim[1]), (S, sec)])
    assert released(actions) == [prim[0]]
    assert checkpoints(actions) == MISMATCH
    assert eng.counters().queued == {"primary": 1, "secondary": 1}


def test_ack_rule_applies_when_both_end_together_after_a_partial_match():
    (prim,), sec = split(0, [1000], ack=5000), split(0, [500, 500], ack=1)
    eng = engine()
    eng.feed(P, prim, 0)
    first = eng.feed(S, sec[0], 0)
    assert checkpoints(first) == []           # the secondary ended first: no ACK check
    actions = eng.feed(S, sec[1], 0)
    assert released(actions) == []
    assert checkpoints(actions) == MISMATCH
    assert eng.counters().queued == {"primary": 1, "secondary": 1}


def test_a_later_pure_ack_raises_the_highest_ack_and_releases_held_data():
    prim, (sec,) = split(0, [500, 500], ack=2000), split(0, [1000], ack=1000)
    eng = engine()
    actions = feed_all(eng, [(P, prim[0]), (P, prim[1]), (S, sec)])
    assert released(actions) == [] and reasons(actions) == [CheckpointReason.MISMATCH]
    pure_ack = seg(b"", 1000, ack=2000)
    actions = eng.feed(S, pure_ack, 0)
    assert released(actions) == prim
    assert checkpoints(actions) == []
    c = assert_accounted(eng)
    # the pure ACK sorts after the data and waits for the next primary frame
    assert c.queued == {"primary": 0, "secondary": 1}


def test_highest_ack_comes_only_from_segments_with_the_ack_flag():
    # A secondary RST without ACK carries a large ack field: it must not count.
    prim, (sec,) = split(0, [500, 500], ack=800), split(0, [1000], ack=500)
    rst = seg(b"", 1000, ack=900, flags=g.TCP_RST)
    eng = engine()
    actions = feed_all(eng, [(S, rst), (S, sec), (P, prim[0])])
    assert released(actions) == []
    assert checkpoints(actions) == MISMATCH


def test_highest_ack_is_wraparound_safe():
    # Primary ACKs go 2**32-10 then 5 (5 is later); the secondary's highest is
    # 3 (also past the wrap).  The lower highest ACK is 3: a segment acking
    # 2**32-10 is below it and goes, one acking 5 is above it and is held.
    prim = [seg(BYTES[:500], 0, ack=WRAP - 10), seg(BYTES[500:], 500, ack=5)]
    (sec,) = split(0, [1000], ack=3)
    eng = engine()
    actions = feed_all(eng, [(P, prim[0]), (P, prim[1]), (S, sec)])
    assert released(actions) == [prim[0]]
    assert checkpoints(actions) == MISMATCH


def test_highest_ack_does_not_go_back_on_an_older_ack():
    # The secondary acks 1000, then an older segment acks 10: highest stays 1000.
    prim, (sec,) = split(0, [500, 500], ack=1000), split(0, [1000], ack=1000)
    eng = engine()
    eng.feed(S, seg(b"", 5000, ack=10), 0)     # sorts after the data
    feed_all(eng, [(S, sec)])
    eng.feed(S, seg(b"", 6000, ack=10), 0)
    actions = feed_all(eng, [(P, prim[0]), (P, prim[1])])
    assert released(actions) == prim


# -- retransmits and segments without payload --------------------------------------

def test_retransmit_is_released_without_compare_even_if_different():
    (prim,), (sec,) = split(0, [1000]), split(0, [1000])
    eng = engine()
    feed_all(eng, [(P, prim), (S, sec)])
    retx = [seg(b"Z" * 1000, 0), seg(b"Y" * 500, 200)]      # whole and inner part
    assert released(feed_all(eng, [(P, retx[0]), (P, retx[1])])) == []   # no secondary yet
    nxt_p, nxt_s = seg(b"next", 1000), seg(b"next", 1000)
    actions = feed_all(eng, [(S, nxt_s)])
    assert released(actions) == retx
    assert checkpoints(actions) == []
    assert released(eng.feed(P, nxt_p, 0)) == [nxt_p]
    c = assert_accounted(eng)
    assert nonzero(c.released) == {"matched": 2, "retransmit": 2}


def test_secondary_retransmit_is_consumed_without_compare():
    (prim,), (sec,) = split(0, [1000]), split(0, [1000])
    eng = engine()
    feed_all(eng, [(P, prim), (S, sec)])
    eng.feed(S, seg(b"Q" * 1000, 0), 0)           # differs, but already compared
    nxt = seg(b"next", 1000)
    actions = feed_all(eng, [(P, nxt)])
    assert checkpoints(actions) == []
    assert eng.counters().skipped_secondary == 1
    assert released(eng.feed(S, nxt, 0)) == [nxt]
    assert_accounted(eng)


@pytest.mark.parametrize("flags", [g.TCP_SYN, g.TCP_SYN | ACK, ACK, g.TCP_FIN | ACK,
                                   g.TCP_RST],
                         ids=["syn", "syn-ack", "ack", "fin", "rst"])
def test_zero_payload_primary_is_released_without_compare(flags):
    prim = seg(b"", 77, ack=5, flags=flags, window=100)
    sec = seg(b"", 77, ack=6, flags=flags, window=200)        # differs: not compared
    eng = engine()
    assert released(eng.feed(P, prim, 0)) == []               # no secondary frame yet
    assert eng.counters().queued["primary"] == 1
    actions = eng.feed(S, sec, 0)
    assert released(actions) == [prim]
    assert checkpoints(actions) == []
    c = assert_accounted(eng)
    assert nonzero(c.released) == {"no_payload": 1}
    assert c.skipped_secondary == 1


def test_zero_payload_primary_waits_for_a_frame_in_the_secondary_queue():
    # Released without compare, but the compare loop only runs while both
    # queues hold a frame: a pure ACK after the handshake waits for the
    # secondary's next frame, even though the secondary has sent before.
    eng = engine()
    syn = seg(b"", 0, ack=0, flags=g.TCP_SYN)
    assert released(feed_all(eng, [(P, syn), (S, syn)])) == [syn]
    ack = seg(b"", 1, ack=1)
    assert released(eng.feed(P, ack, 0)) == []
    assert eng.counters().queued == {"primary": 1, "secondary": 0}
    # any secondary frame lets it go; secondary data stays for its match
    sdata = seg(b"hello", 1, ack=1)
    assert released(eng.feed(S, sdata, 0)) == [ack]
    assert eng.counters().queued == {"primary": 0, "secondary": 1}
    pdata = seg(b"hello", 1, ack=1)
    assert released(eng.feed(P, pdata, 0)) == [pdata]
    assert_accounted(eng)


def test_zero_payload_secondary_is_consumed_and_primary_data_waits():
    eng = engine()
    eng.feed(S, seg(b"", 1, ack=1), 0)
    pdata = seg(b"hello", 1, ack=1)
    actions = eng.feed(P, pdata, 0)
    assert released(actions) == [] and checkpoints(actions) == []
    c = assert_accounted(eng)
    assert c.skipped_secondary == 1
    assert c.queued == {"primary": 1, "secondary": 0}


# -- order and sequence space ------------------------------------------------------

def test_primary_arriving_out_of_order_is_sorted_by_seq():
    prim, sec = split(0, [300, 300, 400]), split(0, [300, 300, 400])
    eng = engine()
    feed_all(eng, [(P, prim[2]), (P, prim[0]), (P, prim[1])])
    actions = feed_all(eng, [(S, s) for s in sec])
    assert released(actions) == prim
    assert checkpoints(actions) == []


def test_secondary_arriving_out_of_order_is_sorted_by_seq():
    prim, sec = split(0, [300, 300, 400]), split(0, [300, 300, 400])
    eng = engine()
    feed_all(eng, [(S, sec[2]), (S, sec[0]), (S, sec[1])])
    actions = feed_all(eng, [(P, p) for p in prim])
    assert released(actions) == prim
    assert checkpoints(actions) == []


def test_sequence_order_is_wraparound_safe():
    # 2**32-1000 .. 2**32 .. 1000: in sequence order the wrapped part is last.
    start, payload = WRAP - 1000, data(2000)
    prim = split(start, [500] * 4, payload=payload)
    sec = split(start, [500] * 4, payload=payload)
    eng = engine()
    feed_all(eng, [(P, prim[3]), (P, prim[2]), (P, prim[0]), (P, prim[1])])
    actions = feed_all(eng, [(S, s) for s in sec])
    assert released(actions) == prim
    assert checkpoints(actions) == []


def test_secondary_sequence_order_is_wraparound_safe():
    start, payload = WRAP - 1000, data(2000)
    prim = split(start, [500] * 4, payload=payload)
    sec = split(start, [500] * 4, payload=payload)
    eng = engine()
    feed_all(eng, [(S, sec[2]), (S, sec[3]), (S, sec[1]), (S, sec[0])])
    actions = feed_all(eng, [(P, p) for p in prim])
    assert released(actions) == prim
    assert checkpoints(actions) == []


def test_split_range_across_the_wrap_is_compared():
    start = WRAP - 300
    (prim,), sec = split(start, [1000]), split(start, [300, 700])   # 2nd starts at 0
    eng = engine()
    actions = feed_all(eng, [(P, prim), (S, sec[0]), (S, sec[1])])
    assert released(actions) == [prim]
    assert checkpoints(actions) == []
    assert eng.counters().matched_secondary == 2


def test_retransmit_detection_is_wraparound_safe():
    start = WRAP - 600
    prim = split(start, [400, 400])                   # the second ends at 200
    eng = engine()
    feed_all(eng, [(P, prim[0]), (P, prim[1])] + [(S, s) for s in split(start, [400, 400])])
    retx = seg(b"R" * 400, start)                      # ends at 2**32-200
    eng.feed(P, retx, 0)
    assert released(eng.feed(S, seg(b"n", 200), 0)) == [retx]
    assert eng.counters().released["retransmit"] == 1


def test_data_ending_exactly_at_2_32_counts_as_compared():
    # The highest compared sequence is 0 here; QEMU takes 0 as "nothing
    # compared yet" and would compare the retransmit.
    start = WRAP - 100
    (prim,), (sec,) = split(start, [100]), split(start, [100])
    eng = engine()
    feed_all(eng, [(P, prim), (S, sec)])
    retx = seg(b"R" * 100, start)
    eng.feed(P, retx, 0)
    actions = eng.feed(S, seg(b"n", 0), 0)
    assert released(actions) == [retx]
    assert checkpoints(actions) == []


# -- what is not compared -------------------------------------------------------------

def test_tcp_options_window_and_flags_are_not_compared():
    payload = b"payload" * 10
    prim = g.tcp_frame(payload, seq=10, ack=20, flags=ACK | g.TCP_PSH, window=1000,
                       options=b"\x01\x01\x08\x0a" + b"\0" * 8)
    sec = g.tcp_frame(payload, seq=10, ack=20, flags=ACK, window=29200)
    eng = engine()
    eng.feed(P, prim, 0)
    actions = eng.feed(S, sec, 0)
    assert released(actions) == [prim]
    assert checkpoints(actions) == []


def test_ethernet_padding_is_not_payload():
    # 3 bytes of data padded to the Ethernet minimum with junk on one side:
    # same range, same payload.
    prim = seg(b"abc", 5) + b"\xee" * 7
    sec = seg(b"abc", 5)
    eng = engine()
    eng.feed(P, prim, 0)
    actions = eng.feed(S, sec, 0)
    assert released(actions) == [prim]
    assert checkpoints(actions) == []
    assert nonzero(eng.counters().released) == {"matched": 1}


def test_padded_pure_ack_has_no_payload():
    prim = seg(b"", 5) + b"\xee" * 6
    eng = engine()
    eng.feed(P, prim, 0)
    actions = eng.feed(S, seg(b"", 5), 0)
    assert released(actions) == [prim]
    assert nonzero(eng.counters().released) == {"no_payload": 1}


# -- compared by sequence range ---------------------------------------------------------

def test_payload_is_compared_at_the_same_sequence_numbers():
    # The primary's first segment arrives late.  Its second one (seq 100,
    # zeros) meets the secondary's first one (seq 0, zeros): by sequence range
    # they have nothing in common.  The primary's first segment then differs
    # from the secondary's at seq 0..99 (X against zeros): a mismatch, and it
    # must not go out before a checkpoint.
    p1, p2 = seg(b"X" * 100, 0), seg(b"\0" * 100, 100)
    s1, s2 = seg(b"\0" * 100, 0), seg(b"\0" * 100, 100)
    eng = engine()
    out = feed_all(eng, [(P, p2), (S, s1), (P, p1), (S, s2)])
    assert p1 not in released(out), (
        "seq 0..99 differ (X / zeros) but the primary's went out as "
        f"{nonzero(eng.counters().released)} with checkpoints {reasons(out)}")
    assert CheckpointReason.MISMATCH in reasons(out)


def test_secondary_segment_starting_later_is_not_compared_from_the_primary_start():
    # The secondary's second segment (seq 300..999) arrives before its first.
    # By sequence range it covers only the primary's bytes 300..999, which are
    # equal; the primary waits for seq 0..299 and then goes, no checkpoint.
    (prim,), sec = split(0, [1000]), split(0, [300, 700])
    eng = engine()
    actions = feed_all(eng, [(P, prim), (S, sec[1]), (S, sec[0])])
    assert released(actions) == [prim]
    assert checkpoints(actions) == []


def test_coalesced_secondary_retransmit_is_compared_by_sequence_range():
    # seq 0..49 matched.  The secondary then retransmits 0..149 in one
    # segment (Linux collapses retransmits), the primary sends 50..149.  Not
    # a retransmit (it ends above 50), so rule 3: the overlap 50..149 is
    # equal and both end at 150, the ACKs allow: the primary goes, no
    # checkpoint.
    payload = data(150)
    eng = engine()
    feed_all(eng, [(P, seg(payload[:50], 0)), (S, seg(payload[:50], 0))])
    prim = seg(payload[50:], 50)
    actions = feed_all(eng, [(S, seg(payload, 0)), (P, prim)])
    assert released(actions) == [prim]
    assert checkpoints(actions) == []


# -- super-frames (a guest's TSO output, docs/xdp.md "Guests' offloads") --------

SUPER = data(60000)


@pytest.mark.parametrize("prim_sizes,sec_sizes", [
    ([60000], [1448] * 41 + [60000 - 1448 * 41]),          # primary TSO, secondary MSS
    ([1448] * 41 + [60000 - 1448 * 41], [60000]),          # the other way round
    ([20000, 20000, 20000], [7000, 31000, 1448, 20552]),   # both TSO, cut otherwise
], ids=["primary-super", "secondary-super", "both-super"])
def test_super_frames_cut_differently_match_by_sequence_range(prim_sizes, sec_sizes):
    prim = split(5000, prim_sizes, payload=SUPER)
    sec = split(5000, sec_sizes, payload=SUPER)
    eng = engine()
    out = feed_all(eng, [(P, f) for f in prim] + [(S, f) for f in sec])
    assert released(out) == prim
    c = assert_accounted(eng)
    assert c.checkpoints["mismatch"] == 0


def test_a_super_frame_differing_in_its_last_byte_is_a_mismatch():
    eng = engine()
    eng.feed(P, seg(SUPER, 0), 0)
    actions = feed_all(eng, [(S, f) for f in split(0, [30000, 29999], payload=SUPER)]
                       + [(S, seg(b"\x00" if SUPER[-1] else b"\x01", 59999))])
    assert released(actions) == []
    assert checkpoints(actions) == MISMATCH
