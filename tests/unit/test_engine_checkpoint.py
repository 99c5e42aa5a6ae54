"""docs/compare-rules.md, "Checkpoint and failover", and the flush-order row of
"Where colo-xdp differs from QEMU 7.2"."""
from colo_xdp.lab import pktgen as g
from colo_xdp.engine import Drop, DropReason, Release
from engine_kit import (
    P, S, TCP_KEY, UDP_KEY, assert_accounted, checkpoints, drops, engine, feed_all,
    nonzero, opened, reasons, released, seg, udp,
)


def test_checkpoint_releases_primary_by_connection_in_creation_order():
    eng = engine()
    feed_all(eng, [(P, udp(0, flow=1)), (P, udp(0, flow=2)), (P, udp(1, flow=1)),
                   (P, udp(1, flow=2)), (P, udp(2, flow=1))])
    actions = eng.checkpoint()
    assert released(actions) == [udp(0, flow=1), udp(1, flow=1), udp(2, flow=1),
                                 udp(0, flow=2), udp(1, flow=2)]
    assert checkpoints(actions) == []
    c = assert_accounted(eng)
    assert nonzero(c.released) == {"flushed": 5}
    assert c.queued == {"primary": 0, "secondary": 0}


def test_checkpoint_releases_udp_oldest_first():
    # QEMU's flush puts the newest UDP frame out first.
    eng = engine()
    frames = [udp(i) for i in range(4)]
    feed_all(eng, [(P, f) for f in frames])
    assert released(eng.checkpoint()) == frames


def test_checkpoint_releases_tcp_lowest_sequence_first():
    segs = [seg(b"a" * 10, 0), seg(b"b" * 10, 10), seg(b"c" * 10, 20)]
    eng = engine()
    feed_all(eng, [(P, segs[2]), (P, segs[0]), (P, segs[1])])
    assert released(eng.checkpoint()) == segs


def test_checkpoint_drops_every_queued_secondary_frame_as_flushed():
    eng = engine()
    feed_all(eng, [(S, udp(0)), (S, udp(1)), (S, seg(b"x", 0)), (P, udp(5))])
    actions = eng.checkpoint()
    assert released(actions) == [udp(5)]
    assert drops(actions) == [Drop(S, DropReason.FLUSHED, UDP_KEY)] * 2 + [
        Drop(S, DropReason.FLUSHED, TCP_KEY)]
    c = assert_accounted(eng)
    assert c.dropped["secondary"]["flushed"] == 3
    assert c.queued == {"primary": 0, "secondary": 0}


def test_checkpoint_with_nothing_queued_does_nothing():
    eng = engine()
    feed_all(eng, [(P, udp(0)), (S, udp(0))])
    assert eng.checkpoint() == []
    assert nonzero(assert_accounted(eng).released) == {"matched": 1}


def test_comparing_goes_on_after_a_checkpoint():
    eng = engine()
    feed_all(eng, [(P, udp(0)), (S, udp(99))])          # mismatch
    eng.checkpoint()
    actions = feed_all(eng, [(P, udp(1)), (S, udp(1))])
    assert released(actions) == [udp(1)]
    assert checkpoints(actions) == []
    assert nonzero(assert_accounted(eng).released) == {"flushed": 1, "matched": 1}


def test_checkpoint_keeps_the_highest_compared_sequence():
    eng = engine()
    feed_all(eng, [(P, seg(b"a" * 100, 0)), (S, seg(b"a" * 100, 0))])
    eng.checkpoint()
    retx = seg(b"Z" * 100, 0)                           # differs, but was compared
    eng.feed(P, retx, 0)
    actions = eng.feed(S, seg(b"b", 100), 0)
    assert released(actions) == [retx]
    assert checkpoints(actions) == []
    assert nonzero(eng.counters().released) == {"matched": 1, "retransmit": 1}


def test_checkpoint_keeps_the_highest_acks():
    # The secondary acknowledged 5000 before the checkpoint; afterwards a
    # split range acking 5000 still goes although the secondary's segment
    # itself acks only 10.
    eng = engine()
    feed_all(eng, [(P, seg(b"", 0, ack=5000)), (S, seg(b"", 0, ack=5000))])
    eng.checkpoint()
    prim = [seg(b"p" * 50, 0, ack=5000), seg(b"q" * 50, 50, ack=5000)]
    actions = feed_all(eng, [(S, seg(b"p" * 50 + b"q" * 50, 0, ack=10)),
                             (P, prim[0]), (P, prim[1])])
    assert released(actions) == prim
    assert checkpoints(actions) == []


def test_checkpoint_flushes_a_partly_compared_primary_whole():
    whole = seg(bytes(range(100)), 0)
    eng = engine()
    feed_all(eng, [(P, whole), (S, seg(bytes(range(40)), 0))])
    assert eng.counters().queued == {"primary": 1, "secondary": 0}
    assert released(eng.checkpoint()) == [whole]
    # and the stream goes on from there
    nxt = seg(b"n" * 10, 100)
    assert released(feed_all(eng, [(P, nxt), (S, nxt)])) == [nxt]


# -- failover ------------------------------------------------------------------------

def test_failover_flushes_like_a_checkpoint_with_its_own_reasons():
    eng = engine()
    feed_all(eng, [(P, udp(0)), (P, udp(1)), (S, udp(7))])
    actions = eng.failover()
    assert released(actions) == [udp(0), udp(1)]
    assert drops(actions) == [Drop(S, DropReason.FAILOVER, UDP_KEY)]
    c = assert_accounted(eng)
    assert nonzero(c.released) == {"failover": 2}
    assert c.dropped["secondary"]["failover"] == 1


def test_after_failover_primary_passes_through_and_secondary_is_dropped():
    eng = engine()
    eng.failover()
    frames = [udp(0), seg(b"x", 5), g.arp_frame(), udp(0, flow=9)]
    for f in frames:
        actions = eng.feed(P, f, 0)
        assert actions == [Release(f, 0)]                 # no connection, no compare
    assert eng.feed(S, udp(0), 0) == [Drop(S, DropReason.FAILOVER, None)]
    c = assert_accounted(eng)
    assert nonzero(c.released) == {"failover": 4}
    assert c.connections == 0
    assert reasons(eng.checkpoint()) == []


def test_failover_keeps_vnet_header_length_on_pass_through():
    eng = engine(vnet_hdr=True)
    eng.failover()
    frame = g.vnet_header(12) + udp(0)
    assert eng.feed(P, frame, 0, vnet_hdr_len=12) == [Release(frame, 12)]


def test_failover_releases_held_tcp_in_sequence_order_before_new_frames():
    segs = [seg(b"a" * 10, 0), seg(b"b" * 10, 10)]
    eng = engine()
    feed_all(eng, [(P, segs[1]), (P, segs[0])])
    assert released(eng.failover()) == segs
    later = seg(b"c" * 10, 20)
    assert released(eng.feed(P, later, 0)) == [later]
    assert opened(eng.feed(S, later, 0)) == []
