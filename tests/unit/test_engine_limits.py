"""docs/compare-rules.md, "Queue limit" and the connection table of
"Connections", with their rows in "Where colo-xdp differs from QEMU 7.2"."""
import pytest

from colo_xdp.engine import (
    CheckpointReason, CheckpointRequest, Drop, DropReason, Engine, EngineConfig,
    EngineError,
)
from engine_kit import (
    P, S, UDP_KEY, assert_accounted, checkpoints, drops, engine, evicted, feed_all,
    nonzero, opened, released, udp, udp_key,
)

QUEUE_FULL = CheckpointRequest(CheckpointReason.QUEUE_FULL, UDP_KEY)


# -- max_queue_size ------------------------------------------------------------

@pytest.mark.parametrize("side", [P, S])
def test_queue_full_after_compare_requests_a_checkpoint_and_then_drops(side):
    eng = engine(max_queue_size=3)
    assert checkpoints(feed_all(eng, [(side, udp(0)), (side, udp(1))])) == []
    actions = eng.feed(side, udp(2), 0)
    assert checkpoints(actions) == [QUEUE_FULL]
    actions = eng.feed(side, udp(3), 0)
    assert drops(actions) == [Drop(side, DropReason.QUEUE_FULL, UDP_KEY)]
    assert released(actions) == []
    c = assert_accounted(eng)
    assert c.queued[side.name.lower()] == 3
    assert c.dropped[side.name.lower()]["queue_full"] == 1
    assert nonzero(c.checkpoints) == {"queue_full": 1}


def test_queue_limit_is_judged_after_comparing():
    # max 1: the secondary frame fills its queue, but its match empties it.
    eng = engine(max_queue_size=1)
    assert checkpoints(eng.feed(P, udp(0), 0)) == [QUEUE_FULL]     # nothing to match
    actions = eng.feed(S, udp(0), 0)
    assert released(actions) == [udp(0)]
    assert checkpoints(actions) == [] and drops(actions) == []


def test_frames_waiting_for_their_match_count_against_the_limit():
    # max 2 and the primary one frame ahead: each primary frame fills the
    # queue until its predecessor's match arrives, so each asks.
    eng = engine(max_queue_size=2)
    actions = eng.feed(P, udp(0), 0)
    for i in range(1, 20):
        actions += eng.feed(P, udp(i), 0)
        actions += eng.feed(S, udp(i - 1), 0)
    assert checkpoints(actions) == [QUEUE_FULL] * 19
    assert released(actions) == [udp(i) for i in range(19)]
    assert drops(actions) == []


def test_checkpoint_makes_room_in_a_full_queue():
    eng = engine(max_queue_size=2)
    feed_all(eng, [(P, udp(0)), (P, udp(1)), (P, udp(2)), (S, udp(9))])
    assert released(eng.checkpoint()) == [udp(0), udp(1)]
    actions = feed_all(eng, [(P, udp(3)), (S, udp(3))])
    assert released(actions) == [udp(3)]
    assert drops(actions) == [] and checkpoints(actions) == []
    c = assert_accounted(eng)
    assert c.dropped["primary"]["queue_full"] == 1


def test_default_queue_keeps_1024_frames_and_counts_the_rest():
    # QEMU keeps 1025 and drops the rest silently, with no checkpoint.
    eng = engine()
    frames = [udp(i) for i in range(1030)]
    actions = feed_all(eng, [(P, f) for f in frames])
    assert checkpoints(actions) == [QUEUE_FULL]
    assert drops(actions) == [Drop(P, DropReason.QUEUE_FULL, UDP_KEY)] * 6
    c = assert_accounted(eng)
    assert c.queued["primary"] == 1024
    assert released(eng.checkpoint()) == frames[:1024]


def test_queues_are_limited_per_connection_and_side():
    eng = engine(max_queue_size=2)
    actions = feed_all(eng, [(P, udp(0, flow=0)), (P, udp(0, flow=1)),
                             (S, udp(7, flow=0)), (P, udp(1, flow=1))])
    assert checkpoints(actions) == [
        CheckpointRequest(CheckpointReason.MISMATCH, udp_key(0)),
        CheckpointRequest(CheckpointReason.QUEUE_FULL, udp_key(1))]
    assert drops(actions) == []


# -- max_connections: eviction and table full -----------------------------------------

def _matched(eng, flow, n=0, now=0):
    return feed_all(eng, [(P, udp(n, flow)), (S, udp(n, flow))], now)


def test_full_table_evicts_the_connection_idle_the_longest():
    eng = engine(max_connections=2)
    _matched(eng, 0)
    _matched(eng, 1)
    actions = eng.feed(P, udp(0, flow=2), 0)
    assert evicted(actions) == [udp_key(0)]
    assert opened(actions) == [udp_key(2)]
    assert [type(a).__name__ for a in actions] == ["ConnectionEvicted", "ConnectionOpened"]
    c = assert_accounted(eng)
    assert (c.connections, c.conns_created, c.conns_evicted) == (2, 3, 1)


def test_idle_order_follows_the_last_time_a_connection_emptied():
    eng = engine(max_connections=3)
    _matched(eng, 0)
    _matched(eng, 1)
    _matched(eng, 2)
    _matched(eng, 0, n=1)                 # 0 was idle first, but is used again
    assert evicted(eng.feed(P, udp(0, flow=3), 0)) == [udp_key(1)]
    assert evicted(eng.feed(P, udp(0, flow=4), 0)) == [udp_key(2)]
    assert evicted(eng.feed(P, udp(0, flow=5), 0)) == [udp_key(0)]


def test_connection_holding_frames_is_never_evicted():
    eng = engine(max_connections=2)
    eng.feed(P, udp(0, flow=0), 0)        # holds a frame
    _matched(eng, 1)                      # idle
    assert evicted(eng.feed(S, udp(0, flow=2), 0)) == [udp_key(1)]
    # flow 0 still matches its frame
    assert released(eng.feed(S, udp(0, flow=0), 0)) == [udp(0, flow=0)]


@pytest.mark.parametrize("side", [P, S])
def test_table_full_of_busy_connections_drops_and_requests_a_checkpoint(side):
    eng = engine(max_connections=2)
    feed_all(eng, [(P, udp(0, flow=0)), (S, udp(0, flow=1))])
    actions = eng.feed(side, udp(0, flow=2), 0)
    assert actions == [Drop(side, DropReason.TABLE_FULL, udp_key(2)),
                       CheckpointRequest(CheckpointReason.TABLE_FULL, udp_key(2))]
    c = assert_accounted(eng)
    assert c.dropped[side.name.lower()]["table_full"] == 1
    assert c.checkpoints["table_full"] == 1
    assert c.connections == 2 and c.conns_evicted == 0
    # the checkpoint empties the queues and makes room: the oldest goes
    assert released(eng.checkpoint()) == [udp(0, flow=0)]
    actions = eng.feed(side, udp(1, flow=2), 0)
    assert evicted(actions) == [udp_key(0)] and opened(actions) == [udp_key(2)]
    assert_accounted(eng)


def test_default_table_holds_16384_connections_and_discards_nothing():
    # QEMU wipes the table and every queued frame past 16384 connections.
    eng = Engine(EngineConfig())
    for flow in range(16384):
        eng.feed_frame(P, _flow_frame(flow), 0)
    eng.drain_events()
    eng.feed_frame(P, _flow_frame(16384), 0)
    assert [type(a).__name__ for a in eng.drain_events()] == ["Drop", "CheckpointRequest"]
    c = assert_accounted(eng)
    assert c.connections == 16384 and c.queued["primary"] == 16384
    assert c.dropped["primary"]["table_full"] == 1
    eng.checkpoint()
    out = [r.frame for r in eng.take_releases()]
    assert out == [_flow_frame(flow) for flow in range(16384)]   # creation order
    eng.feed_frame(P, _flow_frame(16384), 0)
    assert [type(a).__name__ for a in eng.drain_events()][-2:] == [
        "ConnectionEvicted", "ConnectionOpened"]
    assert_accounted(eng)


def _flow_frame(flow: int) -> bytes:
    return udp(0, dport=1 + flow // 60000, flow=flow % 60000)


# -- configuration -------------------------------------------------------------------

@pytest.mark.parametrize("field", ["compare_timeout_ms", "expired_scan_cycle_ms",
                                   "max_queue_size", "max_connections", "max_events"])
@pytest.mark.parametrize("value", [0, -1, 1.5])
def test_config_rejects_values_that_are_not_positive_whole_numbers(field, value):
    with pytest.raises(EngineError, match=field):
        engine(**{field: value})


@pytest.mark.parametrize("field", ["max_queue_size", "max_connections"])
def test_config_rejects_limits_past_2_24(field):
    with pytest.raises(EngineError):
        engine(**{field: (1 << 24) + 1})
    engine(**{field: 1 << 24}).feed(P, udp(0), 0)


def test_events_past_max_events_are_counted_as_lost():
    eng = Engine(EngineConfig(max_events=2))
    for flow in range(3):
        eng.feed_frame(S, udp(0, flow=flow), 0)    # a new connection each
    assert len(eng.drain_events()) == 2
    c = assert_accounted(eng)
    assert c.events_lost == 1


def test_a_storm_of_drops_is_one_event_with_its_count():
    eng = Engine(EngineConfig(max_events=2))
    for _ in range(3000):
        eng.feed_frame(S, b"\0" * 20, 0)          # unsupported, no connection
    assert eng.drain_events() == [Drop(S, DropReason.UNSUPPORTED, None, count=3000)]
    c = assert_accounted(eng)
    assert c.events_lost == 0
    assert c.dropped["secondary"]["unsupported"] == 3000
