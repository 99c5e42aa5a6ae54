"""docs/compare-rules.md, "Accounting": every frame fed in is released or
consumed once, held, or dropped with a reason, and the counters say which."""
from colo_xdp.lab import pktgen as g
from colo_xdp.engine import (
    CheckpointRequest, Drop, DropReason, Engine, EngineConfig, NET_BUFSIZE, Side,
)
from engine_kit import (
    P, S, assert_accounted, engine, feed_all, nonzero, seg, udp,
)


def test_counters_add_up_over_every_outcome():
    eng = engine(max_queue_size=2, max_connections=2)
    step = []

    def run(*items):
        step.append(feed_all(eng, items))
        return assert_accounted(eng)

    run((P, udp(0)), (S, udp(0)))                                  # matched
    run((P, g.arp_frame()), (S, g.arp_frame()))                    # unsupported
    syn = seg(b"", 0, flags=g.TCP_SYN)
    run((P, syn), (S, syn))                                        # no_payload, skipped
    run((P, seg(b"d" * 10, 1)), (S, seg(b"d" * 10, 1)))            # matched
    run((P, seg(b"R" * 10, 1)), (S, seg(b"e" * 5, 11)))            # retransmit; S held
    run((P, udp(1, flow=1)), (P, udp(2, flow=1)), (P, udp(3, flow=1)))  # evicts flow 0,
    #                                                                   # queue full
    run((S, udp(0, flow=2)))                        # table full: tcp and flow 1 busy
    eng.feed_frame(P, b"", 0)                                      # empty
    eng.feed_frame(S, b"\0" * (NET_BUFSIZE + 1), 0)                # oversize
    assert_accounted(eng)
    eng.checkpoint()                                               # flushed
    c = assert_accounted(eng)
    eng.failover()
    run((P, udp(9)), (S, udp(9)))                                  # failover
    c = assert_accounted(eng)

    assert c.frames_in == {"primary": 10, "secondary": 8}
    assert (c.conns_created, c.conns_evicted) == (3, 1)
    assert nonzero(c.released) == {"matched": 2, "unsupported": 1, "no_payload": 1,
                                   "retransmit": 1, "flushed": 2, "failover": 1}
    assert nonzero(c.dropped["primary"]) == {"queue_full": 1, "empty": 1}
    assert nonzero(c.dropped["secondary"]) == {
        "unsupported": 1, "table_full": 1, "flushed": 1, "failover": 1, "oversize": 1}
    assert (c.matched_secondary, c.skipped_secondary) == (2, 1)
    assert nonzero(c.checkpoints) == {"queue_full": 1, "table_full": 1}
    assert c.queued == {"primary": 0, "secondary": 0}


def test_bytes_in_and_released_bytes():
    eng = engine()
    a, b, arp = udp(0), udp(1) + b"\0" * 30, g.arp_frame()
    feed_all(eng, [(P, a), (S, a), (P, b), (P, arp), (S, udp(5))])
    c = assert_accounted(eng)
    assert c.bytes_in == {"primary": len(a) + len(b) + len(arp),
                          "secondary": len(a) + len(udp(5))}
    assert c.released_bytes == len(a) + len(arp)
    eng.checkpoint()
    assert eng.counters().released_bytes == len(a) + len(arp) + len(b)


def test_mismatches_are_counted_by_protocol():
    eng = engine()
    feed_all(eng, [(P, udp(0)), (S, udp(1)),
                   (P, g.icmp_echo_frame(b"a")), (S, g.icmp_echo_frame(b"b")),
                   (P, seg(b"a", 0)), (S, seg(b"b", 0)),
                   (P, g.ipv4_frame(b"a", 99)), (S, g.ipv4_frame(b"b", 99))])
    c = assert_accounted(eng)
    assert c.mismatches == {"tcp": 1, "udp_icmp": 2, "other": 1}
    assert nonzero(c.checkpoints) == {"mismatch": 4}


def test_every_drop_and_checkpoint_counted_is_also_an_event():
    eng = engine(max_queue_size=1, max_connections=1)
    actions = feed_all(eng, [(P, udp(0)), (P, udp(1)), (S, g.arp_frame()),
                             (S, udp(0, flow=1)), (P, udp(5)), (S, udp(6))])
    actions += eng.checkpoint()
    c = assert_accounted(eng)
    for side in Side:
        for reason in DropReason:
            events = [a for a in actions if isinstance(a, Drop)
                      and a.side == side and a.reason == reason]
            assert len(events) == c.dropped[side.name.lower()][reason.name.lower()]
    assert len([a for a in actions if isinstance(a, CheckpointRequest)]) == \
        sum(c.checkpoints.values())


def test_transport_reported_drop_counts_a_frame_in():
    eng = Engine(EngineConfig())
    eng.note_drop(S, DropReason.TRUNCATED)
    eng.note_drop(P, DropReason.TRUNCATED)
    assert eng.drain_events() == [Drop(S, DropReason.TRUNCATED, None),
                                  Drop(P, DropReason.TRUNCATED, None)]
    c = assert_accounted(eng)
    assert c.frames_in == {"primary": 1, "secondary": 1}
    assert c.dropped["primary"]["truncated"] == c.dropped["secondary"]["truncated"] == 1


def test_frame_cut_off_at_the_outdev_is_counted_once():
    # The outdev peer went away after 3 bytes of a released record.  The frame
    # stays counted once, as released, and the cut is counted on its own
    # (outdev_cut), never as a drop too.
    eng = Engine(EngineConfig())
    eng.feed_frame(P, g.arp_frame(), 0)                  # released at once
    eng.consume_output(3)
    assert eng.abandon_partial_output() is True
    assert eng.abandon_partial_output() is False         # nothing left to cut
    assert eng.output_pending() == 0
    c = eng.counters()
    assert c.outdev_cut == 1
    assert c.released["unsupported"] == 1
    assert c.dropped["primary"]["truncated"] == 0
    assert_accounted(eng)
