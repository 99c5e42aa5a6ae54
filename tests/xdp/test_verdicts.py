"""bpf/classify.c frame by frame through BPF_PROG_TEST_RUN, on both sides.

Every run is checked whole by ``run``: exactly one verdict counter moved, by
one frame and the frame's bytes (the program's one exit counts every path);
the action is the one classify.h's table gives for that verdict and side;
the frame comes back unchanged, with no metadata in front of it (the engine
parses every frame itself).
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

import pytest

from colo_xdp.lab import pktgen
from colo_xdp.engine import ActionEngine, EngineConfig
from colo_xdp.lab.pktgen import EtherAddrs, IPv4Fields
from colo_xdp.transport.xdp.bpfsys import XDP_DROP, XDP_PASS, XDP_REDIRECT
from colo_xdp.transport.xdp.classify_abi import Side, Verdict, action_of

from xdp_kit import Rule


@dataclass(frozen=True)
class Result:
    verdict: Verdict
    action: int


def run(clf, frame: bytes) -> Result:
    before = clf.counters()
    out = clf.test_run(frame)
    after = clf.counters()
    moved = {v: (after[v].frames - before[v].frames, after[v].bytes - before[v].bytes)
             for v in Verdict if after[v] != before[v]}
    assert len(moved) == 1, f"counters moved: {moved}"
    (verdict, delta), = moved.items()
    assert delta == (1, len(frame))
    assert out.action == action_of(verdict, clf.side), (verdict, out.action_name)
    assert out.frame == frame, "the program changed the frame"
    # No metadata, whatever the verdict: the engine parses the frame itself.
    assert out.meta == b"", f"metadata on a {verdict.name} frame"
    return Result(verdict, out.action)


def not_compared(side: Side) -> int:
    return XDP_PASS if side is Side.PRIMARY else XDP_DROP


# --- the guest's IPv4: compared ---------------------------------------------------

GUEST_FRAMES = {
    "udp": pktgen.udp_frame(b"hello", sport=1000, dport=2000),
    "tcp": pktgen.tcp_frame(b"data", sport=40000, dport=80, seq=7, flags=pktgen.TCP_ACK),
    "tcp-syn": pktgen.tcp_frame(flags=pktgen.TCP_SYN, options=b"\x02\x04\x05\xb4"),
    "icmp": pktgen.icmp_echo_frame(b"ping"),
    "gre": pktgen.ipv4_frame(b"\0\0\x08\0"),
    "udp-empty": pktgen.udp_frame(b""),
    "udp-padded": pktgen.udp_frame(b"x") + b"\0" * 17,      # Ethernet minimum 60
    "udp6": pktgen.udp6_frame(b"hello"),
    "tcp6": pktgen.tcp6_frame(b"data", seq=7),
    "icmp6-echo": pktgen.icmp6_echo_frame(b"ping"),
    "udp6-ext": pktgen.udp6_frame(b"x", ip=pktgen.IPv6Fields(ext=(
        (pktgen.IPV6_HOPOPTS, b""), (pktgen.IPV6_ROUTING, b"\0" * 6 + b"r" * 16),
        (pktgen.IPV6_DSTOPTS, b"d" * 30)))),
    "ipv6-no-next": pktgen.ipv6_frame(b"\0" * 8),
    "qinq-udp6": pktgen.qinq_frame(pktgen.udp6_frame(b"q")),
}


@pytest.mark.parametrize("name", GUEST_FRAMES)
def test_guest_ipv4_is_redirected_on_both_sides(clf, name):
    r = run(clf, GUEST_FRAMES[name])
    assert r.verdict is Verdict.COMPARE
    assert r.action == XDP_REDIRECT


@pytest.mark.parametrize("frame", [
    pktgen.icmp_echo_frame(b"ping", ident=77, seq=9),
    pktgen.ipv4_frame(b"rest of a datagram", pktgen.IPPROTO_UDP,
                      ip=IPv4Fields(flags=0, frag_offset=100)),
    pktgen.fragment(pktgen.udp_frame(b"x" * 40, ip=IPv4Fields(flags=0)), 16)[0],
    *pktgen.fragment(pktgen.tcp6_frame(b"y" * 100), 64)[:2],
], ids=["icmp", "ipv4-later-fragment", "ipv4-first-fragment", "ipv6-first-fragment",
        "ipv6-later-fragment"])
def test_no_ports_or_a_fragment_is_compared(clf, frame):
    """ICMP, and every fragment: the engine reassembles and keys the
    datagram; the program decides nothing on one fragment."""
    assert run(clf, frame).verdict is Verdict.COMPARE


# --- not IPv4: not compared -------------------------------------------------------------

NON_IPV4 = {
    "arp": pktgen.arp_frame(),
    "nd-solicit": pktgen.neighbor_solicit_frame(),
    "mld2-report": pktgen.ipv6_frame(pktgen.icmpv6(143, b"\0" * 4), next_header=58,
                                     ip=pktgen.IPv6Fields(ext=((pktgen.IPV6_HOPOPTS,
                                                                b"\x05\x02\0\0"),))),
    "lldp": pktgen.ethernet(b"\0" * 46, 0x88CC),
    "ethernet-only": pktgen.ethernet(b"", 0x88B5),
}


@pytest.mark.parametrize("name", NON_IPV4)
def test_non_ipv4_passes_on_primary_and_is_dropped_on_secondary(clf, side, name):
    r = run(clf, NON_IPV4[name])
    assert r.verdict is Verdict.UNSUPPORTED
    assert r.action == not_compared(side)


# --- 802.1Q -----------------------------------------------------------------------------

def test_tagged_is_not_compared_without_vlan_compare(clf, side):
    """As in QEMU, when asked: tagged frames go their way uncompared."""
    clf.set_config(vlan_compare=False)
    r = run(clf, pktgen.vlan_frame(pktgen.udp_frame(b"tagged"), vid=42))
    assert r.verdict is Verdict.UNSUPPORTED
    assert r.action == not_compared(side)


def test_tagged_ipv4_is_compared_by_default(clf):
    r = run(clf, pktgen.vlan_frame(pktgen.udp_frame(b"tagged", dport=99), vid=42, pcp=5))
    assert r.verdict is Verdict.COMPARE


def test_three_tags_are_not_compared(clf, side):
    clf.set_config(vlan_compare=True)
    frame = pktgen.vlan_frame(pktgen.vlan_frame(pktgen.vlan_frame(pktgen.udp_frame(b"3"))))
    assert run(clf, frame).verdict is Verdict.UNSUPPORTED


def test_tagged_arp_is_not_compared(clf, side):
    clf.set_config(vlan_compare=True)
    r = run(clf, pktgen.vlan_frame(pktgen.arp_frame()))
    assert (r.verdict, r.action) == (Verdict.UNSUPPORTED, not_compared(side))


# --- malformed IPv4 ----------------------------------------------------------------------

def _ip_patch(frame: bytes, offset: int, value: bytes) -> bytes:
    """The frame with bytes of its IPv4 header replaced (checksum left stale:
    neither the engine nor the program checks it)."""
    return frame[:14 + offset] + value + frame[14 + offset + len(value):]


MALFORMED = {
    "version-6": _ip_patch(pktgen.udp_frame(b"x"), 0, b"\x65"),
    "ihl-4": _ip_patch(pktgen.udp_frame(b"x"), 0, b"\x44"),
    "tot-below-ihl": _ip_patch(pktgen.udp_frame(b"x"), 2, struct.pack("!H", 19)),
    "tot-beyond-frame": _ip_patch(pktgen.udp_frame(b"x"), 2, struct.pack("!H", 200)),
    "ihl-beyond-tot": _ip_patch(pktgen.udp_frame(b"x"), 0, b"\x4f"),
    "udp-shorter-than-header": _ip_patch(pktgen.udp_frame(b"x"), 2, struct.pack("!H", 27)),
    "tcp-doff-4": pktgen.tcp_frame(b"x")[:46] + b"\x40" + pktgen.tcp_frame(b"x")[47:],
    "tcp-doff-beyond-packet": pktgen.tcp_frame(b"x")[:46] + b"\xf0" + pktgen.tcp_frame(b"x")[47:],
    "icmp-3-bytes": pktgen.ipv4_frame(b"\x08\0\0", pktgen.IPPROTO_ICMP),
    "ipv4-fragment-off-8": pktgen.ipv4_frame(b"x" * 9, 17, ip=IPv4Fields(flags=pktgen.IP_MF)),
    "ipv6-jumbogram": pktgen.udp6_frame(b"x")[:18] + b"\0\0" + pktgen.udp6_frame(b"x")[20:],
    "ipv6-plen-beyond-frame": (pktgen.udp6_frame(b"x")[:18] + b"\x01\0"
                               + pktgen.udp6_frame(b"x")[20:]),
    "ipv6-ext-beyond-payload": pktgen.ipv6_frame(b"\x11\x05" + b"\0" * 6,
                                                 next_header=pktgen.IPV6_DSTOPTS),
    "ipv6-hop-by-hop-second": pktgen.udp6_frame(b"x", ip=pktgen.IPv6Fields(
        ext=((pktgen.IPV6_DSTOPTS, b""), (pktgen.IPV6_HOPOPTS, b"")))),
    "ipv6-seven-ext": pktgen.udp6_frame(b"x", ip=pktgen.IPv6Fields(
        ext=((pktgen.IPV6_HOPOPTS, b""),) + ((pktgen.IPV6_DSTOPTS, b""),) * 6)),
    "icmp6-3-bytes": pktgen.ipv6_frame(b"\x80\0\0", next_header=58),
    "udp6-7-bytes": pktgen.ipv6_frame(b"\0" * 7, next_header=17),
}


@pytest.mark.parametrize("name", MALFORMED)
def test_malformed_ipv4_is_not_compared(clf, side, name):
    r = run(clf, MALFORMED[name])
    assert r.verdict is Verdict.MALFORMED
    assert r.action == not_compared(side)


CUT_FRAMES = {
    "udp": pktgen.udp_frame(b"payload"),
    "tcp": pktgen.tcp_frame(b"payload", options=b"\x01" * 8),
    "icmp": pktgen.icmp_echo_frame(b"payload"),
    "ip-options": pktgen.udp_frame(b"p", ip=IPv4Fields(options=b"\x01" * 12)),
    "udp6-ext": GUEST_FRAMES["udp6-ext"],
    "tcp6": pktgen.tcp6_frame(b"payload"),
}


@pytest.mark.parametrize("name", CUT_FRAMES)
def test_truncated_at_every_cut(programs, name):
    """Every cut of a frame from the Ethernet header on (the kernel runs no
    test on less): the IPv4 total length then reaches beyond the frame."""
    frame = CUT_FRAMES[name]
    for side, clf in programs.items():
        for cut in range(14, len(frame)):
            r = run(clf, frame[:cut])
            assert r.verdict is Verdict.MALFORMED, (side.name, cut)
            assert r.action == not_compared(side)
        assert run(clf, frame).verdict is Verdict.COMPARE


@pytest.mark.parametrize("vlan_compare", [False, True])
def test_truncated_tagged_at_every_cut(programs, vlan_compare):
    frame = pktgen.vlan_frame(pktgen.tcp_frame(b"payload"))
    for side, clf in programs.items():
        clf.set_config(vlan_compare=vlan_compare)
        try:
            for cut in range(14, len(frame)):
                expected = Verdict.MALFORMED
                if cut >= 18 and not vlan_compare:
                    expected = Verdict.UNSUPPORTED
                assert run(clf, frame[:cut]).verdict is expected, (side.name, cut)
        finally:
            clf.set_config(vlan_compare=True)


# --- passthrough ---------------------------------------------------------------------------

PASSTHROUGH_CASES = [
    # (rules, frame, on the list?)
    ([Rule(proto=17, dport=2000)], pktgen.udp_frame(b"x", dport=2000), True),
    ([Rule(proto=17, dport=2000)], pktgen.udp_frame(b"x", dport=2001), False),
    ([Rule(proto=6, dport=2000)], pktgen.udp_frame(b"x", dport=2000), False),
    ([Rule(src="10.0.0.0/24")], pktgen.tcp_frame(b"x", src="10.0.0.99"), True),
    ([Rule(src="10.0.0.0/24")], pktgen.tcp_frame(b"x", src="10.0.1.1"), False),
    ([Rule(dst="10.0.0.2", sport=1000)], pktgen.udp_frame(b"x"), True),
    ([Rule(dst="10.0.0.2", sport=1001)], pktgen.udp_frame(b"x"), False),
    ([Rule(proto=1)], pktgen.icmp_echo_frame(b"x"), True),
    ([Rule()], pktgen.ipv4_frame(b"gre"), True),
    ([Rule(dport=9), Rule(proto=6), Rule(dst="10.0.0.2/32", dport=2000)],
     pktgen.udp_frame(b"x"), True),
    # Fragments go to the engine, which decides on the datagram.
    ([Rule(proto=17, dport=2000)],
     pktgen.ipv4_frame(b"frag", 17, ip=IPv4Fields(flags=0, frag_offset=8)), False),
    ([Rule()], pktgen.fragment(pktgen.udp6_frame(b"z" * 40), 16)[0], False),
    ([Rule(proto=17, dst="fd00::/16", dport=2000)], pktgen.udp6_frame(b"x"), True),
    ([Rule(proto=17, dst="fd00::3/128")], pktgen.udp6_frame(b"x"), False),
    ([Rule(src="10.0.0.0/8")], pktgen.udp6_frame(b"x"), False),
    ([Rule(src="fd00::/8")], pktgen.udp_frame(b"x"), False),
    ([Rule(src="10.0.0.1")], pktgen.vlan_frame(pktgen.udp_frame(b"x")), True),
    # The 5-tuple is found past IP options, extension headers and tags.
    ([Rule(proto=6, sport=1234, dport=443)],
     pktgen.tcp_frame(b"abc", sport=1234, dport=443, ip=IPv4Fields(options=b"\x01\x01\x01\x00")),
     True),
    ([Rule(proto=17, dport=2000)], GUEST_FRAMES["udp6-ext"], True),
    ([Rule(proto=17, src="2001:db8::1", dst="fd00::2", sport=5353, dport=53)],
     pktgen.udp6_frame(b"x", src="2001:db8::1", dst="fd00::2", sport=5353, dport=53), True),
    ([Rule(proto=17, dport=99)],
     pktgen.vlan_frame(pktgen.udp_frame(b"tagged", dport=99), vid=42, pcp=5), True),
    ([Rule(proto=17, dport=2000)],
     pktgen.udp_frame(b"qinq")[:12] + struct.pack("!HHHH", 0x88A8, 300, 0x8100, 7)
     + pktgen.udp_frame(b"qinq")[12:], True),
    *[([Rule(proto=proto, sport=4000, dport=5000)],
       pktgen.ipv4_frame(struct.pack("!HH", 4000, 5000) + b"\0" * 8, proto), True)
      for proto in (33, 132, 136)],                   # DCCP, SCTP, UDP-Lite: ports
]


@pytest.mark.parametrize("rules,frame,listed", PASSTHROUGH_CASES)
def test_passthrough(clf, side, rules, frame, listed):
    clf.set_rules(rules)
    r = run(clf, frame)
    if listed:
        # The primary's goes to the engine, marked (released there
        # uncompared); the secondary's is dropped.
        to_engine = XDP_REDIRECT if side is Side.PRIMARY else XDP_DROP
        assert (r.verdict, r.action) == (Verdict.PASSTHROUGH, to_engine)
    else:
        assert r.verdict is Verdict.COMPARE


def test_passthrough_list_shrinks_and_clears(clf):
    frame = pktgen.udp_frame(b"x", dport=2000)
    clf.set_rules([Rule(dport=9), Rule(dport=2000)])
    assert run(clf, frame).verdict is Verdict.PASSTHROUGH
    clf.set_rules([Rule(dport=9)])
    assert run(clf, frame).verdict is Verdict.COMPARE
    clf.set_rules([Rule(dport=2000)] * 64)
    assert run(clf, frame).verdict is Verdict.PASSTHROUGH
    clf.set_rules([])
    assert run(clf, frame).verdict is Verdict.COMPARE


# --- guest filter and missing socket -----------------------------------------------------

def test_guest_mac_filter(clf):
    clf.set_guest_macs(["52:54:00:00:00:01"])
    assert run(clf, pktgen.udp_frame(b"x")).verdict is Verdict.COMPARE
    other = pktgen.udp_frame(b"x", eth=EtherAddrs(src="52:54:00:00:00:99"))
    r = run(clf, other)
    assert (r.verdict, r.action) == (Verdict.NOT_GUEST, XDP_PASS)
    r = run(clf, pktgen.arp_frame(eth=EtherAddrs(src="02:00:00:00:00:01", dst="ff:ff:ff:ff:ff:ff")))
    assert (r.verdict, r.action) == (Verdict.NOT_GUEST, XDP_PASS)
    clf.set_guest_macs([])
    assert run(clf, other).verdict is Verdict.COMPARE


def test_no_socket_on_the_queue_drops(clf):
    clf.clear_socket(0)            # the fixture puts it back
    r = run(clf, pktgen.udp_frame(b"x"))
    assert (r.verdict, r.action) == (Verdict.NO_SOCKET, XDP_DROP)


# --- the engine agrees -------------------------------------------------------------------

ALL_FRAMES = {**{f"guest-{k}": v for k, v in GUEST_FRAMES.items()},
              **{f"non-ipv4-{k}": v for k, v in NON_IPV4.items()},
              **{f"malformed-{k}": v for k, v in MALFORMED.items()},
              "tagged": pktgen.vlan_frame(pktgen.udp_frame(b"t")),
              "three-tags": pktgen.vlan_frame(pktgen.qinq_frame(pktgen.udp_frame(b"t"))),
              **{f"fragment-{i}": f for i, f in enumerate(
                  pktgen.fragment(pktgen.udp6_frame(b"f" * 40), 16)
                  + pktgen.fragment(pktgen.qinq_frame(pktgen.udp_frame(b"f" * 40)), 16))}}


@pytest.mark.parametrize("name", ALL_FRAMES)
def test_compared_exactly_when_the_engine_compares(programs, name):
    """The program sends the engine what the engine compares, nothing else."""
    frame = ALL_FRAMES[name]
    engine = ActionEngine(EngineConfig())
    engine.feed(Side.PRIMARY, frame, now_ms=0)
    engine.checkpoint()            # a fragment held for reassembly: out as flushed
    engine_compares = engine.counters().released.get("unsupported", 0) == 0
    verdict = run(programs[Side.PRIMARY], frame).verdict
    assert (verdict is Verdict.COMPARE) == engine_compares, verdict
