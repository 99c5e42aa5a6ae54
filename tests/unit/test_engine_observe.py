"""Passthrough rules, the connection snapshot and miscompare evidence."""
from __future__ import annotations

import pytest

from colo_xdp.engine import (ConnInfo, DropReason, EngineError, Evidence,
                             PassthroughRule, Release)
from engine_kit import (P, S, SPORT, UDP_KEY, assert_accounted, checkpoints, engine, released,
                        seg, udp, udp_key)


# -- passthrough -----------------------------------------------------------------------

def test_passthrough_flow_is_released_at_once_and_its_secondary_dropped():
    eng = engine()
    eng.set_passthrough([PassthroughRule(proto=17, dport=2000)])
    frame = udp(1)
    assert released(eng.feed(P, frame, 0)) == [frame]
    acts = eng.feed(S, udp(2), 1)                   # a different secondary: no mismatch
    assert checkpoints(acts) == []
    c = eng.counters()
    assert c.released["passthrough"] == 1
    assert c.dropped["secondary"]["passthrough"] == 1
    assert_accounted(eng)


@pytest.mark.parametrize("rule, covered", [
    (PassthroughRule(), True),                                  # everything
    (PassthroughRule(proto=6), False),                          # TCP only
    (PassthroughRule(src="10.0.0.0/24"), True),
    (PassthroughRule(src="10.0.1.0/24"), False),
    (PassthroughRule(dst="10.0.0.2"), True),
    (PassthroughRule(dst="10.0.0.3/32"), False),
    (PassthroughRule(sport=SPORT), True),
    (PassthroughRule(sport=SPORT + 1), False),
    (PassthroughRule(proto=17, src="0.0.0.0/0", dport=2000), True),
])
def test_rule_fields_and_wildcards(rule, covered):
    eng = engine()
    eng.set_passthrough([rule])
    out = released(eng.feed(P, udp(1), 0))
    assert out == ([udp(1)] if covered else [])


def test_adding_a_rule_releases_what_the_flow_holds_in_order():
    eng = engine()
    held = [udp(i) for i in range(3)]
    for f in held:
        eng.feed(P, f, 0)
    eng.feed(S, udp(9, flow=0), 0)                  # mismatch: secondary held too
    assert eng.counters().queued == {"primary": 3, "secondary": 1}
    eng.set_passthrough([PassthroughRule(proto=17)])
    assert eng.take_releases() == [Release(f) for f in held]
    assert eng.counters().queued == {"primary": 0, "secondary": 0}
    assert eng.counters().dropped["secondary"]["passthrough"] == 1
    assert_accounted(eng)


def test_removing_the_rule_compares_again():
    eng = engine()
    eng.set_passthrough([PassthroughRule(proto=17)])
    eng.feed(P, udp(1), 0)
    eng.set_passthrough([])
    assert released(eng.feed(P, udp(2), 1)) == []
    assert released(eng.feed(S, udp(2), 2)) == [udp(2)]


def test_passthrough_connections_are_evictable():
    eng = engine(max_connections=1)
    eng.set_passthrough([PassthroughRule(sport=SPORT)])
    eng.feed(P, udp(1, flow=0), 0)
    eng.feed(P, udp(1, flow=1), 1)                  # takes the only slot
    assert [c.conn for c in eng.connections()] == [udp_key(1)]


@pytest.mark.parametrize("rule", [
    PassthroughRule(src="10.0.0.300"), PassthroughRule(dst="10.0.0.0/33"),
    PassthroughRule(sport=70000), PassthroughRule(proto=256),
])
def test_bad_rule_is_one_sentence(rule):
    with pytest.raises(EngineError) as info:
        engine().set_passthrough([rule])
    assert "\n" not in str(info.value)


# -- connection snapshot ---------------------------------------------------------------

def test_snapshot_counts_per_connection():
    eng = engine()
    eng.feed(P, udp(1), 5)
    eng.feed(S, udp(1), 6)
    eng.feed(P, udp(2), 7)
    eng.feed(S, udp(3), 8)                           # mismatch
    eng.feed(P, seg(b"x" * 10, 100), 9)
    conns = eng.connections()
    assert [c.conn.proto for c in conns] == [17, 6]  # creation order
    u = conns[0]
    assert u == ConnInfo(UDP_KEY, False, 1, 1, 5, 8, matched=1, released=1,
                         mismatches=1, checkpoints=1)
    assert (conns[1].queued_primary, conns[1].queued_secondary) == (1, 0)


# -- evidence ----------------------------------------------------------------------------

def test_mismatch_carries_both_frames_once():
    eng = engine(evidence_max_bytes=1 << 16)
    p, s = udp(1), udp(2)
    eng.feed(P, p, 10)
    (req,) = checkpoints(eng.feed(S, s, 11))
    assert req.evidence == (Evidence(P, p, 0, 10), Evidence(S, s, 0, 11))
    (again,) = checkpoints(eng.feed(S, udp(3), 12))  # same held primary: not repeated
    assert [e.frame for e in again.evidence] == [udp(3)]


def test_timeout_carries_the_expired_frame():
    eng = engine(evidence_max_bytes=1 << 16, compare_timeout_ms=100,
                 expired_scan_cycle_ms=50)
    eng.tick(0)
    eng.feed(P, udp(1), 0)
    (req,) = checkpoints(eng.tick(200))
    assert req.reason.name == "TIMEOUT"
    assert req.evidence == (Evidence(P, udp(1), 0, 0),)


def test_evidence_off_by_default_and_bounded_when_on():
    eng = engine()
    eng.feed(P, udp(1), 0)
    (req,) = checkpoints(eng.feed(S, udp(2), 0))
    assert req.evidence == ()
    small = engine(evidence_max_bytes=128)            # room for one frame record
    small.feed(P, udp(1), 0)
    (req,) = checkpoints(small.feed(S, udp(2), 0))
    assert len(req.evidence) == 1
    assert small.counters().evidence_lost == 1


def test_tcp_mismatch_evidence():
    eng = engine(evidence_max_bytes=1 << 16)
    p, s = seg(b"a" * 50, 1000), seg(b"b" * 50, 1000)
    eng.feed(P, p, 0)
    (req,) = checkpoints(eng.feed(S, s, 1))
    assert [(e.side, e.frame) for e in req.evidence] == [(P, p), (S, s)]
    assert DropReason.PASSTHROUGH.name == "PASSTHROUGH"
