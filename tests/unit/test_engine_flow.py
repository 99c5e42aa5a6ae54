"""Flow control, coalesced events, the sticky checkpoint request and the
stats rows picked in C (issue 11), through the engine's Python face."""
import time

import pytest

from colo_xdp._native import ffi, lib
from colo_xdp.engine import (CheckpointReason, Drop, DropReason, Engine, EngineConfig,
                             EngineError, PassthroughRule)
from colo_xdp.lab import pktgen as g
from engine_kit import P, S, assert_accounted, udp, udp_key


def wire(frames) -> bytes:
    return b"".join(g.encode(f) for f in frames)


def flow_engine(**config) -> Engine:
    return Engine(EngineConfig(**config))


# -- a side ahead is held back ---------------------------------------------------------

@pytest.mark.parametrize("side", [P, S])
def test_side_ahead_stops_at_the_high_water_mark(side):
    eng = flow_engine(max_queue_size=8)                 # high water: 4
    frames = [udp(i) for i in range(10)]
    used, held = eng.feed_stream_flow(side, wire(frames), 0)
    assert held and used == len(wire(frames[:4]))
    c = assert_accounted(eng)
    assert c.frames_in[side.name.lower()] == 4          # the rest is not read
    assert c.held_back[side.name.lower()] == 1
    assert sum(c.dropped[side.name.lower()].values()) == 0


def test_the_other_side_catching_up_lets_the_rest_in():
    """Secondary 10 frames ahead, 4 allowed: it goes on as the primary
    catches up; every pair released, nothing dropped, no checkpoint."""
    eng = flow_engine(max_queue_size=8)
    frames = [udp(i) for i in range(10)]
    data = wire(frames)
    used, held = eng.feed_stream_flow(S, data, 0)
    assert held
    for i in range(10):
        assert eng.feed_stream_flow(P, wire(frames[i:i + 1]), 0) == (len(g.encode(frames[i])),
                                                                      False)
        n, held = eng.feed_stream_flow(S, data[used:], 0)
        used += n
    assert used == len(data) and not held
    assert [r.frame for r in eng.take_releases()] == frames
    c = assert_accounted(eng)
    assert c.checkpoints == dict.fromkeys(c.checkpoints, 0)
    assert sum(c.dropped["secondary"].values()) == 0


def test_force_applies_only_the_limits():
    eng = flow_engine(max_queue_size=8)
    frames = [udp(i) for i in range(10)]
    assert eng.feed_stream_flow(S, wire(frames), 0, force=True) == (len(wire(frames)), False)
    c = assert_accounted(eng)
    assert c.dropped["secondary"]["queue_full"] == 2
    assert c.checkpoints["queue_full"] >= 1


def test_high_water_is_configurable_and_checked():
    eng = flow_engine(max_queue_size=8, flow_high_water=2)
    used, held = eng.feed_stream_flow(P, wire([udp(i) for i in range(5)]), 0)
    assert held and eng.counters().frames_in["primary"] == 2
    with pytest.raises(EngineError):
        flow_engine(max_queue_size=8, flow_high_water=9)


def test_a_mismatch_is_not_held_back_it_reaches_the_limit():
    """Frames of the other side are queued (a mismatch): not "ahead", the
    queue limit and a checkpoint decide as before."""
    eng = flow_engine(max_queue_size=4)
    eng.feed_stream_flow(S, wire([udp(100)]), 0)        # never matches
    used, held = eng.feed_stream_flow(P, wire([udp(i) for i in range(6)]), 0)
    assert not held
    c = assert_accounted(eng)
    assert c.dropped["primary"]["queue_full"] == 2


def test_feed_frame_is_never_held_back():
    eng = flow_engine(max_queue_size=4)
    for i in range(4):
        eng.feed_frame(P, udp(i), 0)
    assert eng.counters().queued["primary"] == 4


# -- a small table and many new flows ---------------------------------------------------

def test_new_flows_wait_for_room_instead_of_table_full():
    eng = flow_engine(max_connections=16)
    frames = [udp(0, flow=f) for f in range(200)]
    data = wire(frames)
    pos = {P: 0, S: 0}
    for _ in range(100):
        for side in (P, S):
            used, _ = eng.feed_stream_flow(side, data[pos[side]:], 0)
            pos[side] += used
        if pos[P] == pos[S] == len(data):
            break
    assert pos[P] == pos[S] == len(data)
    assert [r.frame for r in eng.take_releases()] == frames
    c = assert_accounted(eng)
    assert c.dropped["primary"]["table_full"] == c.dropped["secondary"]["table_full"] == 0
    assert c.checkpoints["table_full"] == 0


def test_a_full_table_holds_back_and_force_drops_as_before():
    eng = flow_engine(max_connections=2)
    frames = [udp(0, flow=f) for f in range(3)]
    used, held = eng.feed_stream_flow(P, wire(frames), 0)
    assert held and used == len(wire(frames[:2]))
    eng.feed_stream_flow(P, wire(frames[2:]), 0, force=True)
    c = assert_accounted(eng)
    assert c.dropped["primary"]["table_full"] == 1 and c.checkpoints["table_full"] == 1


# -- passthrough flows take no connection -----------------------------------------------

def test_passthrough_flows_take_no_place_in_the_table():
    eng = flow_engine(max_connections=1)
    eng.set_passthrough([PassthroughRule(proto=17, sport=2000)])
    eng.feed_frame(P, udp(0, flow=5), 0)                # compared: takes the only slot
    passing = [g.udp_frame(b"pt %d" % i, sport=2000) for i in range(50)]
    for f in passing:
        eng.feed_frame(P, f, 0)
        eng.feed_frame(S, f, 0)
    assert [r.frame for r in eng.take_releases()] == passing
    c = assert_accounted(eng)
    assert c.released["passthrough"] == 50
    assert c.dropped["primary"]["table_full"] == 0
    assert c.dropped["secondary"]["passthrough"] == 50
    assert [i.conn for i in eng.connections()] == [udp_key(5)]


def test_a_new_rule_takes_the_connection_out_of_the_table():
    eng = flow_engine()
    eng.feed_frame(P, udp(0), 0)
    eng.set_passthrough([PassthroughRule(proto=17)])
    assert eng.connections() == []
    assert [r.frame for r in eng.take_releases()] == [udp(0)]
    assert_accounted(eng)


# -- coalesced events and the sticky checkpoint request ---------------------------------

def test_mismatch_storm_is_one_event_per_connection_with_its_count():
    eng = flow_engine()
    eng.feed_frame(S, udp(100), 0)
    for i in range(500):
        eng.feed_frame(P, udp(i), 0)
    events = eng.drain_events()
    ckpt = [e for e in events if not isinstance(e, Drop) and hasattr(e, "reason")
            and e.reason is CheckpointReason.MISMATCH]
    assert len(ckpt) == 1 and ckpt[0].count == 500
    assert eng.counters().checkpoints["mismatch"] == 500


def test_checkpoint_request_survives_a_full_event_array():
    eng = flow_engine(max_events=1)
    eng.feed_frame(P, udp(0, flow=1), 0)                # the one event: connection opened
    eng.feed_frame(S, udp(9, flow=1), 0)                # mismatch: its event is lost
    assert eng.counters().events_lost >= 1
    assert eng.checkpoint_wanted() == {CheckpointReason.MISMATCH}
    eng.drain_events()
    assert eng.checkpoint_wanted() == {CheckpointReason.MISMATCH}   # still outstanding
    eng.checkpoint()
    assert eng.checkpoint_wanted() == frozenset()


def test_failover_clears_the_request():
    eng = flow_engine()
    eng.feed_frame(P, udp(0), 0)
    eng.feed_frame(S, udp(1), 0)
    assert eng.checkpoint_wanted()
    eng.failover()
    assert not eng.checkpoint_wanted()


# -- stats rows picked in C -------------------------------------------------------------

def test_connections_limit_picks_most_held_then_most_recent():
    eng = flow_engine()
    for f in range(10):
        for i in range(f % 4):
            eng.feed_frame(P, udp(i, flow=f), f)        # flow f holds f % 4 frames
        eng.feed_frame(P, g.udp_frame(b"x", sport=5000 + f), 100 + f)
        eng.feed_frame(S, g.udp_frame(b"x", sport=5000 + f), 100 + f)
    top = eng.connections(limit=4)
    assert [(c.queued_primary, c.last_ms) for c in top] == [(3, 7), (3, 3), (2, 6), (2, 2)]
    assert eng.connections(limit=100) == eng.connections()  # all fit: creation order


def test_top_rows_of_a_big_table_cost_little_python():
    eng = flow_engine(max_connections=1 << 18)
    n = 1 << 18
    frames = wire([g.udp_frame(b"c", sport=1 + i % 60000, dport=1 + i // 60000)
                   for i in range(n)])
    eng.feed_stream(P, frames, 0)
    assert eng.counters().connections == n
    t0 = time.perf_counter()
    rows = eng.connections(limit=20)
    took = time.perf_counter() - t0
    assert len(rows) == 20 and took < 1.0, took     # was 2.2 s through Python


def test_conn_top_matches_a_sort():
    eng = flow_engine()
    for f in range(50):
        for i in range((f * 7) % 5):
            eng.feed_frame(S, udp(i, flow=f), (f * 13) % 17)
    everything = eng.connections()
    want = sorted(everything, key=lambda c: (c.queued_secondary, c.last_ms), reverse=True)
    got = eng.connections(limit=10)
    assert [(c.queued_secondary, c.last_ms) for c in got] == \
        [(c.queued_secondary, c.last_ms) for c in want[:10]]
    arr = ffi.new("struct cx_conn_info[]", 10)
    assert lib.cx_engine__conn_top(eng._e, arr, 10) == 10
