"""docs/compare-rules.md, "Time": compare_timeout and expired_scan_cycle,
driven by tick(now).  The first tick arms the scan timer; the scan runs at
every tick at or past the deadline and sets the next one a cycle later."""
from colo_xdp.engine import CheckpointReason, CheckpointRequest
from engine_kit import (
    P, S, UDP_KEY, assert_accounted, engine, released, seg, udp, udp_key,
)

TIMEOUT = [CheckpointRequest(CheckpointReason.TIMEOUT, UDP_KEY)]


def test_first_tick_arms_the_scan_and_returns_its_deadline():
    eng = engine()
    assert eng.run_timers(0) == 1000
    assert eng.run_timers(999) == 1000          # not due yet
    assert eng.run_timers(1000) == 2000         # scanned, next one a cycle on
    assert eng.run_timers(2500) == 3500         # a late tick: a cycle from now


def test_held_frame_requests_a_checkpoint_only_once_older_than_the_timeout():
    eng = engine()
    eng.tick(0)
    eng.feed(P, udp(1), 0)
    for now in (1000, 2000, 3000):               # age 3000 is not older than 3000
        assert eng.tick(now) == []
    assert eng.tick(3500) == []                   # expired, but no scan is due
    assert eng.tick(4000) == TIMEOUT
    c = assert_accounted(eng)
    assert c.checkpoints["timeout"] == 1
    assert c.queued["primary"] == 1


def test_timeout_is_strictly_greater_than_compare_timeout():
    eng = engine(compare_timeout_ms=100, expired_scan_cycle_ms=10)
    eng.tick(0)
    eng.feed(P, udp(1), 0)
    assert eng.tick(100) == []
    assert eng.tick(110) == TIMEOUT


def test_timeout_repeats_every_scan_and_never_releases():
    eng = engine()
    eng.tick(0)
    eng.feed(P, udp(1), 0)
    actions = []
    for now in range(1000, 10001, 1000):
        actions += eng.tick(now)
    assert released(actions) == []
    assert actions == TIMEOUT * 7                # the scans at 4000, 5000 .. 10000
    assert eng.counters().checkpoints["timeout"] == 7
    # only a checkpoint lets it go, and then the scans are quiet
    assert released(eng.checkpoint()) == [udp(1)]
    assert eng.tick(11000) == []


def test_secondary_frame_times_out_too():
    eng = engine()
    eng.tick(0)
    eng.feed(S, udp(1), 0)
    assert eng.tick(3000) == []                  # scanned: not expired yet
    assert eng.tick(4000) == TIMEOUT


def test_one_checkpoint_per_scan_for_the_first_expired_connection_in_creation_order():
    eng = engine()
    eng.tick(0)
    eng.feed(P, udp(0, flow=0), 2000)            # created first, still young
    eng.feed(P, udp(0, flow=1), 0)               # expired
    eng.feed(S, udp(0, flow=2), 0)               # expired
    assert eng.tick(4000) == [CheckpointRequest(CheckpointReason.TIMEOUT, udp_key(1))]
    assert eng.tick(5100) == [CheckpointRequest(CheckpointReason.TIMEOUT, udp_key(0))]


def test_any_expired_frame_in_a_queue_counts_not_only_the_head():
    # TCP queues are in sequence order: the oldest frame need not be first.
    eng = engine()
    eng.tick(0)
    eng.feed(P, seg(b"late", 100), 0)            # oldest, but sorts second
    eng.feed(P, seg(b"early", 0), 2500)
    assert eng.tick(3000) == []
    assert [a.reason for a in eng.tick(4000)] == [CheckpointReason.TIMEOUT]


def test_matched_frames_do_not_time_out():
    eng = engine()
    eng.tick(0)
    for i in range(10):
        eng.feed(P, udp(i), i * 100)
        eng.feed(S, udp(i), i * 100 + 50)
    assert [eng.tick(t) for t in range(1000, 10001, 1000)] == [[]] * 10


def test_configured_timeout_and_cycle_are_used():
    eng = engine(compare_timeout_ms=50, expired_scan_cycle_ms=20)
    assert eng.run_timers(0) == 20
    eng.feed(P, udp(1), 0)
    assert eng.tick(20) == [] and eng.tick(40) == []
    assert eng.tick(60) == TIMEOUT
    assert eng.run_timers(60) == 80


def test_no_scan_after_failover():
    eng = engine()
    eng.tick(0)
    eng.failover()
    eng.feed(P, udp(1), 0)                       # passes straight through
    assert eng.tick(10000) == [] and eng.tick(20000) == []
