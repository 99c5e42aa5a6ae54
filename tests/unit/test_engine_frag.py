"""docs/compare-rules.md, "IP fragments": IPv4 and IPv6 fragments are
reassembled per side and datagram, the datagram compared as one frame, the
primary's fragments released in the order they came; bounded, timed out,
overlaps dropped (RFC 5722); every outcome counted."""
import struct

import pytest

from colo_xdp.lab import pktgen as g
from colo_xdp.engine import CheckpointReason, DropReason, EngineConfig
from engine_kit import (
    P, S, assert_accounted, data, drops, engine, nonzero, opened,
    reasons, released,
)

BUILDERS = {
    "ipv4": lambda body, **kw: g.udp_frame(body, ip=g.IPv4Fields(flags=0), **kw),
    "ipv6": lambda body, **kw: g.udp6_frame(body, **kw),
    "ipv6-ext": lambda body, **kw: g.udp6_frame(body, ip=g.IPv6Fields(
        ext=((g.IPV6_HOPOPTS, b""), (g.IPV6_DSTOPTS, b"d" * 10))), **kw),
    "vlan-ipv4": lambda body, **kw: g.vlan_frame(g.udp_frame(body, ip=g.IPv4Fields(flags=0),
                                                             **kw), 42),
    "qinq-ipv6": lambda body, **kw: g.qinq_frame(g.udp6_frame(body, **kw)),
}


def frags(kind, body=None, sizes=(1208, 1208), ident=7, order=None, **kw):
    body = data(3000) if body is None else body
    return g.fragment(BUILDERS[kind](body, **kw), list(sizes), ident=ident, order=order)


@pytest.mark.parametrize("kind", BUILDERS)
def test_datagram_compared_as_one_originals_released_in_arrival_order(kind):
    eng = engine()
    prim = frags(kind, order=[1, 0, 2])          # the primary sent them out of order
    sec = frags(kind, sizes=(800, 800, 800), ident=99)   # cut differently, other id
    out = []
    for f in prim:
        out += eng.feed(P, f, 0)
    assert released(out) == [] and eng.counters().queued["primary"] == 3
    assert len(opened(out)) == 1 and opened(out)[0].sport == 1000   # keyed with its ports
    for f in sec:
        out += eng.feed(S, f, 0)
    assert released(out) == prim
    c = assert_accounted(eng)
    assert c.frag == {"primary": {"reassembled": 1, "timed_out": 0, "overlap": 0,
                                  "over_limit": 0},
                      "secondary": {"reassembled": 1, "timed_out": 0, "overlap": 0,
                                    "over_limit": 0}}
    assert c.matched_secondary == 4 and nonzero(c.released) == {"matched": 3}


@pytest.mark.parametrize("kind", ["ipv4", "ipv6"])
def test_a_difference_in_a_later_fragment_is_a_mismatch(kind):
    eng = engine()
    body = data(3000)
    other = body[:2900] + b"!" + body[2901:]
    for f in frags(kind, body):
        eng.feed(P, f, 0)
    out = []
    for f in frags(kind, other):
        out += eng.feed(S, f, 0)
    assert released(out) == [] and reasons(out) == [CheckpointReason.MISMATCH]
    out = eng.checkpoint()
    assert released(out) == frags(kind, body)     # the flush releases the fragments
    assert_accounted(eng)


def test_unfragmented_and_fragmented_copies_of_a_datagram_match():
    # the secondary's path MTU may differ: the datagram is what counts
    eng = engine()
    whole = g.udp_frame(data(1000), ip=g.IPv4Fields(flags=0))
    for f in g.fragment(whole, 504):
        eng.feed(P, f, 0)
    assert len(released(eng.feed(S, whole, 0))) == 2


def test_the_fragment_id_is_never_compared_but_other_protocols_count_ttl():
    eng = engine()
    gre = g.ipv4_frame(data(100), g.IPPROTO_GRE, ip=g.IPv4Fields(flags=0))
    for f in g.fragment(gre, 48, ident=1):
        eng.feed(P, f, 0)
    for f in g.fragment(gre, 48, ident=2):
        out = eng.feed(S, f, 0)
    assert len(released(out)) == 3
    ttl = g.ipv4_frame(data(100), g.IPPROTO_GRE, ip=g.IPv4Fields(flags=0, ttl=9))
    for f in g.fragment(gre, 48, ident=3):
        eng.feed(P, f, 0)
    for f in g.fragment(ttl, 48, ident=3):
        out = eng.feed(S, f, 0)
    assert reasons(out) == [CheckpointReason.MISMATCH]


@pytest.mark.parametrize("kind", ["ipv4", "ipv6"])
def test_overlapping_fragments_drop_the_datagram(kind):
    eng = engine()
    parts = frags(kind, data(200), sizes=(96, 96))
    overlap = g.fragment(BUILDERS[kind](data(200)), [88, 96], ident=7)[1]   # at offset 88
    out = eng.feed(P, parts[0], 0) + eng.feed(P, overlap, 0)
    out += eng.feed(P, parts[1], 0) + eng.feed(P, parts[2], 0)   # later ones dropped too
    assert released(out) == []
    assert [d.reason for d in drops(out)] == [DropReason.FRAG_OVERLAP] * 4
    c = assert_accounted(eng)
    assert c.frag["primary"]["overlap"] == 1 and c.queued["primary"] == 0


def test_an_exact_duplicate_is_an_overlap_too():
    eng = engine()
    parts = frags("ipv6", data(200), sizes=(96, 96))
    out = eng.feed(P, parts[0], 0) + eng.feed(P, parts[0], 0)
    assert [d.reason for d in drops(out)] == [DropReason.FRAG_OVERLAP] * 2


def test_an_incomplete_datagram_times_out_and_is_dropped():
    eng = engine(reasm_timeout_ms=500, expired_scan_cycle_ms=100)
    parts = frags("ipv4")
    eng.tick(0)
    eng.feed(P, parts[0], 0)
    eng.feed(S, parts[0], 0)
    assert eng.counters().queued == {"primary": 1, "secondary": 1}
    assert drops(eng.tick(400)) == []
    out = eng.tick(600)
    assert sorted(d.side for d in drops(out)) == [P, S]
    assert {d.reason for d in drops(out)} == {DropReason.FRAG_TIMEOUT}
    c = assert_accounted(eng)
    assert c.frag["primary"]["timed_out"] == 1 and c.queued == {"primary": 0, "secondary": 0}
    assert reasons(out) == []           # the peer would have dropped it too


def test_a_checkpoint_releases_held_fragments_and_lets_the_rest_through():
    eng = engine()
    parts = frags("ipv6")
    eng.feed(P, parts[0], 0)
    eng.feed(S, parts[0], 0)
    out = eng.checkpoint()
    assert released(out) == [parts[0]]
    assert [d.reason for d in drops(out)] == [DropReason.FLUSHED]
    assert released(eng.feed(P, parts[1], 0)) == [parts[1]]
    assert [d.reason for d in drops(eng.feed(S, parts[1], 0))] == [DropReason.FLUSHED]
    assert_accounted(eng)


def test_limits_datagrams_per_source_address():
    eng = engine(reasm_max_per_host=2)
    for ident in range(3):
        out = eng.feed(P, frags("ipv4", ident=ident)[0], 0)
    assert [d.reason for d in drops(out)] == [DropReason.FRAG_LIMIT]
    # another source has its own allowance
    assert drops(eng.feed(P, frags("ipv4", ident=0, src="10.0.0.9")[0], 0)) == []
    c = assert_accounted(eng)
    assert c.frag["primary"]["over_limit"] == 1


def test_limits_datagrams_and_bytes_per_side():
    eng = engine(reasm_max_datagrams=1)
    eng.feed(P, frags("ipv6", ident=1)[0], 0)
    assert [d.reason for d in drops(eng.feed(P, frags("ipv6", ident=2)[0], 0))] == \
        [DropReason.FRAG_LIMIT]
    assert drops(eng.feed(S, frags("ipv6", ident=2)[0], 0)) == []   # sides apart
    eng = engine(reasm_max_bytes=2000)
    parts = frags("ipv4")
    out = eng.feed(P, parts[0], 0) + eng.feed(P, parts[1], 0) + eng.feed(P, parts[2], 0)
    assert [d.reason for d in drops(out)] == [DropReason.FRAG_LIMIT] * 3
    assert_accounted(eng)


def test_limits_fragments_per_datagram():
    eng = engine()
    parts = g.fragment(BUILDERS["ipv4"](data(8 * 70)), 8)
    out = []
    for f in parts:
        out += eng.feed(P, f, 0)
    assert len(parts) == 71 and released(out) == []
    assert {d.reason for d in drops(out)} == {DropReason.FRAG_LIMIT}
    assert_accounted(eng)


def test_a_datagram_over_64k_is_dropped():
    eng = engine()
    first = g.fragment(BUILDERS["ipv6"](data(1200)), 1200)[0]
    # a last fragment that claims to end past 65535
    at = 14 + 40 + 2
    last = bytearray(g.fragment(BUILDERS["ipv6"](data(1200)), [1200])[1])
    struct.pack_into("!H", last, at, 65528)
    out = eng.feed(P, first, 0) + eng.feed(P, bytes(last), 0)
    assert {d.reason for d in drops(out)} == {DropReason.FRAG_LIMIT}


def test_passthrough_applies_to_the_reassembled_datagram():
    from colo_xdp.engine import PassthroughRule
    eng = engine()
    eng.set_passthrough([PassthroughRule(proto=17, dport=2000)])
    parts = frags("ipv6")
    out = []
    for f in parts:
        out += eng.feed(P, f, 0)
    assert released(out) == parts
    assert nonzero(eng.counters().released) == {"passthrough": 3}


def test_failover_releases_held_fragments():
    eng = engine()
    parts = frags("ipv4")
    eng.feed(P, parts[0], 0)
    assert released(eng.failover()) == [parts[0]]
    assert released(eng.feed(P, parts[1], 0)) == [parts[1]]
    assert_accounted(eng)


def test_config_rejects_bad_reassembly_limits():
    from colo_xdp.engine import EngineError
    with pytest.raises(EngineError, match="reasm_max_bytes"):
        EngineConfig(reasm_max_bytes=-1).validate()
