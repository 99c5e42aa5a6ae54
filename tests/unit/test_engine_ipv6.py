"""docs/compare-rules.md, "IPv6" and "VLAN tags": IPv6 compared by IPv4's
rules, keyed with 128-bit addresses; 802.1Q and QinQ tags in the key; ND and
MLD not compared, as ARP."""
from dataclasses import replace

import pytest

from colo_xdp.lab import pktgen as g
from colo_xdp.engine import CheckpointReason, ConnKey, PassthroughRule
from engine_kit import (
    ICMP6_KEY, P, S, TCP6_KEY, UDP6_KEY, UDP_KEY, assert_accounted, data, drops, engine,
    nonzero, opened, reasons, released,
)


def test_udp6_same_payload_matches_whatever_the_ipv6_header_says():
    # hop limit, traffic class, flow label and extension headers are to
    # IPv6 what TTL, TOS and options are to IPv4: not compared for UDP
    eng = engine()
    prim = g.udp6_frame(b"answer")
    sec = g.udp6_frame(b"answer", ip=g.IPv6Fields(hop_limit=3, traffic_class=0x28,
                                                  flow_label=0xABCDE))
    assert opened(eng.feed(P, prim, 0)) == [UDP6_KEY]
    assert released(eng.feed(S, sec, 1)) == [prim]
    assert_accounted(eng)


def test_udp6_different_payload_is_a_mismatch():
    eng = engine()
    eng.feed(P, g.udp6_frame(b"answer-1"), 0)
    actions = eng.feed(S, g.udp6_frame(b"answer-2"), 1)
    assert released(actions) == []
    assert reasons(actions) == [CheckpointReason.MISMATCH]
    assert eng.counters().mismatches["udp_icmp"] == 1


def test_icmpv6_echo_compared_from_its_header():
    eng = engine()
    prim = g.icmp6_echo_frame(b"ping", seq=1)
    assert opened(eng.feed(P, prim, 0)) == [ICMP6_KEY]
    assert reasons(eng.feed(S, g.icmp6_echo_frame(b"ping", seq=2), 0)) == \
        [CheckpointReason.MISMATCH]
    assert released(eng.feed(S, g.icmp6_echo_frame(b"ping", seq=1,
                                                    ip=g.IPv6Fields(hop_limit=1)), 0)) == [prim]


def test_other_ipv6_protocols_count_the_hop_limit_as_ipv4_counts_the_ttl():
    eng = engine()
    prim = g.ipv6_frame(b"gre-ish", next_header=g.IPPROTO_GRE)
    eng.feed(P, prim, 0)
    later = g.ipv6_frame(b"gre-ish", next_header=g.IPPROTO_GRE, hop_limit=63)
    assert reasons(eng.feed(S, later, 0)) == [CheckpointReason.MISMATCH]
    assert released(eng.feed(S, prim, 0)) == [prim]


def test_tcp6_compared_by_sequence_range():
    eng = engine()
    body = data(3000)
    eng.feed(P, g.tcp6_frame(body[:1448], seq=1, ack=1), 0)
    eng.feed(P, g.tcp6_frame(body[1448:2896], seq=1449, ack=1), 0)
    # the secondary cut the same bytes differently
    out = eng.feed(S, g.tcp6_frame(body[:1000], seq=1, ack=1), 1)
    out += eng.feed(S, g.tcp6_frame(body[1000:2896], seq=1001, ack=1), 1)
    assert len(released(out)) == 2 and reasons(out) == []
    assert opened(out) == [] and eng.counters().connections == 1
    assert_accounted(eng)


@pytest.mark.parametrize("frame", [g.neighbor_solicit_frame(),
                                   g.vlan_frame(g.neighbor_solicit_frame())],
                         ids=["untagged", "tagged"])
def test_neighbour_discovery_is_passed_from_primary_dropped_from_secondary(frame):
    eng = engine()
    assert released(eng.feed(P, frame, 0)) == [frame]
    assert [d.reason.name for d in drops(eng.feed(S, frame, 0))] == ["UNSUPPORTED"]
    assert eng.counters().connections == 0


def test_arp_is_still_passed_from_primary_dropped_from_secondary():
    eng = engine()
    assert released(eng.feed(P, g.arp_frame(), 0)) == [g.arp_frame()]
    assert [d.reason.name for d in drops(eng.feed(S, g.arp_frame(), 0))] == ["UNSUPPORTED"]


def test_vlan_tags_are_part_of_the_key():
    eng = engine()
    udp = g.udp_frame(b"same")
    a, b = g.vlan_frame(udp, 10), g.vlan_frame(udp, 11)
    assert opened(eng.feed(P, a, 0)) == [replace(UDP_KEY, vlan=(10,))]
    assert opened(eng.feed(P, udp, 0)) == [UDP_KEY]
    assert opened(eng.feed(S, b, 0)) == [replace(UDP_KEY, vlan=(11,))]
    # the frame on VID 10 has no partner yet; VID 11's secondary is alone too
    assert eng.counters().queued == {"primary": 2, "secondary": 1}
    assert released(eng.feed(S, g.vlan_frame(udp, 10, pcp=5), 0)) == [a]  # PCP not keyed
    assert released(eng.feed(S, udp, 0)) == [udp]
    assert_accounted(eng)


def test_qinq_keys_both_vids_outer_first():
    eng = engine()
    frame = g.qinq_frame(g.udp6_frame(b"x"), outer=300, inner=5)
    assert opened(eng.feed(P, frame, 0)) == [replace(UDP6_KEY, vlan=(300, 5))]
    assert opened(eng.feed(S, g.qinq_frame(g.udp6_frame(b"x"), outer=5, inner=300), 0)) == \
        [replace(UDP6_KEY, vlan=(5, 300))]


def test_conn_key_prints_ipv6_in_brackets_and_tags():
    assert str(TCP6_KEY) == "tcp [fd00::1]:1000 > [fd00::2]:2000"
    assert str(replace(UDP_KEY, vlan=(200, 5))) == \
        "udp 10.0.0.1:1000 > 10.0.0.2:2000 vlan 200 vlan 5"
    assert str(ConnKey("fd00::1", "fd00::2", 0, 0, 58)) == "icmp6 [fd00::1]:0 > [fd00::2]:0"


def test_passthrough_takes_ipv6_prefixes():
    eng = engine()
    eng.set_passthrough([PassthroughRule(proto=17, dst="fd00::/64", dport=2000)])
    frame = g.udp6_frame(b"x")
    assert released(eng.feed(P, frame, 0)) == [frame]
    assert eng.counters().connections == 0
    outside = g.udp6_frame(b"x", dst="fd01::2")
    assert opened(eng.feed(P, outside, 0)) != []
    # an IPv4 rule does not cover IPv6, nor an IPv6 rule IPv4
    eng.set_passthrough([PassthroughRule(src="10.0.0.0/8")])
    assert released(eng.feed(P, g.udp6_frame(b"y", sport=7), 0)) == []
    assert released(eng.feed(P, g.udp_frame(b"y"), 0)) == [g.udp_frame(b"y")]
    # a /0 is a zero mask: any source, of either family (as no address at all)
    eng.set_passthrough([PassthroughRule(src="::/0")])
    assert eng.counters().connections == 0


def test_a_passthrough_rule_for_ipv6_releases_what_it_holds():
    eng = engine()
    held = [g.udp6_frame(b"%d" % i) for i in range(3)]
    for f in held:
        eng.feed(P, f, 0)
    eng.feed(S, g.udp6_frame(b"other"), 0)
    eng.set_passthrough([PassthroughRule(src="fd00::1/128")])
    assert released(eng.collect()) == held
    assert_accounted(eng)


def test_a_slash_zero_of_either_family_is_any_address():
    for src in ("0.0.0.0/0", "::/0"):
        eng = engine()
        eng.set_passthrough([PassthroughRule(src=src)])
        for frame in (g.udp_frame(b"4"), g.udp6_frame(b"6")):
            assert released(eng.feed(P, frame, 0)) == [frame]
        assert eng.counters().connections == 0
