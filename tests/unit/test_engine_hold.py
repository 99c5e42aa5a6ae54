"""The hold-time histogram (docs/observability.md, colo_xdp_hold_seconds): every
primary frame released is counted once, in C, by how long it waited in the
engine (released at - arrived, ms).  Bucket 0 is 0 ms, then upper bounds 1, 2,
4, ... 8192 ms (inclusive), then +Inf."""
import pytest

from colo_xdp.lab import pktgen as g
from colo_xdp.engine import HOLD_MS_BOUNDS, PassthroughRule
from engine_kit import P, S, assert_accounted, data, engine, released, seg, udp


def bucket(held_ms: int) -> int:
    """The bucket a hold time falls in: the first bound at or above it."""
    for i, bound in enumerate(HOLD_MS_BOUNDS):
        if held_ms <= bound:
            return i
    return len(HOLD_MS_BOUNDS)


def hist(*held: int) -> list[int]:
    """The expected (per-bucket) histogram of these hold times."""
    out = [0] * (len(HOLD_MS_BOUNDS) + 1)
    for h in held:
        out[bucket(h)] += 1
    return out


def test_bounds():
    assert HOLD_MS_BOUNDS == (0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096,
                              8192)
    assert [bucket(h) for h in (0, 1, 2, 3, 4, 5, 8, 9, 8192, 8193)] == [
        0, 1, 2, 3, 3, 4, 4, 5, 14, 15]


def test_matched_flushed_and_failover_at_known_times():
    eng = engine()
    # matched after 0 ms
    eng.feed(P, udp(0), 1000)
    assert released(eng.feed(S, udp(0), 1000)) == [udp(0)]
    # matched after 5 ms (the secondary came later)
    eng.feed(P, udp(1), 1000)
    assert released(eng.feed(S, udp(1), 1005)) == [udp(1)]
    c = assert_accounted(eng)
    assert c.hold_ms_buckets == hist(0, 5) and c.hold_ms_sum == 5
    # flushed by a checkpoint after 100 ms: the checkpoint has no time of its
    # own, the engine's latest (a tick at 1105) is its "now"
    eng.feed(P, udp(2), 1005)
    eng.tick(1105)
    assert released(eng.checkpoint()) == [udp(2)]
    c = assert_accounted(eng)
    assert c.hold_ms_buckets == hist(0, 5, 100) and c.hold_ms_sum == 105
    # failover: a frame held 3000 ms is flushed, one after it passes at once
    eng.feed(P, udp(3), 2000)
    eng.tick(5000)
    eng.failover()
    assert released(eng.feed(P, udp(4), 6000)) == [udp(4)]
    c = assert_accounted(eng)
    assert c.hold_ms_buckets == hist(0, 5, 100, 3000, 0)
    assert c.hold_ms_sum == 5 + 100 + 3000
    assert c.released_total == 5 == sum(c.hold_ms_buckets)
    assert {k: v for k, v in c.released.items() if v} == {
        "matched": 2, "flushed": 1, "failover": 2}


def test_uncompared_frames_are_held_zero_no_payload_waits_for_its_pair():
    eng = engine()
    eng.feed(P, g.arp_frame(), 50)                      # unsupported
    eng.set_passthrough([PassthroughRule(proto=17)])
    eng.feed(P, udp(0), 70)                             # passthrough
    c = assert_accounted(eng)
    assert c.released_total == 2
    assert c.hold_ms_buckets == hist(0, 0) and c.hold_ms_sum == 0
    # a TCP segment without payload waits for the secondary's, then goes
    eng.feed(P, seg(b"", 0, flags=g.TCP_SYN), 80)
    assert released(eng.feed(S, seg(b"", 0, flags=g.TCP_SYN), 82)) == [
        seg(b"", 0, flags=g.TCP_SYN)]
    c = assert_accounted(eng)
    assert c.released["no_payload"] == 1
    assert c.hold_ms_buckets == hist(0, 0, 2) and c.hold_ms_sum == 2


def test_passthrough_rule_releases_held_frames_at_the_latest_time():
    eng = engine()
    eng.feed(P, udp(0), 100)
    eng.feed(S, udp(9, flow=1), 130)                    # another flow: only the time moves
    eng.set_passthrough([PassthroughRule(proto=17, sport=g.DEFAULT_SPORT)])
    c = assert_accounted(eng)
    assert c.released["passthrough"] == 1
    assert c.hold_ms_buckets == hist(30) and c.hold_ms_sum == 30


def test_long_holds_go_to_the_last_buckets():
    eng = engine(compare_timeout_ms=100000)
    for i, t in enumerate((0, 1000, 1808)):
        eng.feed(P, udp(i, flow=i), t)
    eng.tick(10000)                     # held 10000, 9000, 8192 ms
    eng.checkpoint()
    c = assert_accounted(eng)
    assert c.hold_ms_buckets == hist(10000, 9000, 8192)
    assert c.hold_ms_buckets[-1] == 2 and c.hold_ms_buckets[-2] == 1
    assert c.hold_ms_sum == 10000 + 9000 + 8192


def test_fragments_count_each_by_its_own_arrival():
    eng = engine()
    frames = g.fragment(g.udp_frame(data(3000), ip=g.IPv4Fields(flags=0)), [1208, 1208],
                        ident=7)
    assert len(frames) == 3
    for f, t in zip(frames, (10, 20, 30)):
        eng.feed(P, f, t)
    assert eng.counters().queued["primary"] == 3
    eng.tick(40)
    assert released(eng.checkpoint()) == frames
    c = assert_accounted(eng)
    assert c.released["flushed"] == 3
    assert c.hold_ms_buckets == hist(30, 20, 10) and c.hold_ms_sum == 60


def test_incomplete_datagram_flushed_by_its_fragments_times():
    eng = engine()
    frames = g.fragment(g.udp_frame(data(3000), ip=g.IPv4Fields(flags=0)), [1208, 1208],
                        ident=7)
    eng.feed(P, frames[0], 10)
    eng.feed(P, frames[1], 12)
    eng.tick(16)
    assert released(eng.checkpoint()) == frames[:2]
    c = assert_accounted(eng)
    assert c.hold_ms_buckets == hist(6, 4) and c.hold_ms_sum == 10


@pytest.mark.parametrize("n", [1, 7, 64])
def test_count_equals_primary_frames_released(n):
    eng = engine()
    born, held = {}, []

    def note(actions, now):
        for frame in released(actions):
            held.append(now - born[frame])

    for i in range(n):
        born[udp(i, flow=i % 3)] = i
        note(eng.feed(P, udp(i, flow=i % 3), i), i)
    for i in range(0, n, 2):
        note(eng.feed(S, udp(i, flow=i % 3), n + 3 * i), n + 3 * i)
    eng.tick(10 * n)
    note(eng.checkpoint(), 10 * n)
    c = assert_accounted(eng)
    assert len(held) == c.released_total == n == sum(c.hold_ms_buckets)
    assert c.hold_ms_buckets == hist(*held) and c.hold_ms_sum == sum(held)


def test_checkpoint_and_failover_given_the_time_count_to_it():
    eng = engine()
    eng.feed(P, udp(0), 100)
    eng.tick(150)
    assert released(eng.checkpoint(400)) == [udp(0)]       # not the tick's 150
    eng.feed(P, udp(1), 500)
    assert released(eng.failover(520)) == [udp(1)]
    c = assert_accounted(eng)
    assert c.hold_ms_buckets == hist(300, 20) and c.hold_ms_sum == 320
