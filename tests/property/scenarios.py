"""Hypothesis strategies: random COLO traffic for the engine and the model.

A scenario is a configuration, a few flows and a schedule.  Each flow is what
the primary sent and what the secondary sent on one connection (or a stream
of frames the engine does not compare); the schedule interleaves the two
sides of every flow at random, with time steps, expiry scans, checkpoints,
changes of the passthrough list and at most one failover between them.

Flows (index ``n`` gives each its own ports, so each is one connection):

* UDP, ICMP and GRE (other IPv4, compared whole): the secondary sends the
  same datagrams with the fields the compare ignores changed, and sometimes
  one of them corrupted, missing, duplicated or swapped with its neighbour;
* TCP: one byte stream, cut into segments differently on each side, after a
  SYN and with pure ACKs, coalesced retransmits, a swapped pair of segments,
  a FIN, ACK numbers that may run ahead of the other side, an ISN just below
  2**32 so sequence numbers wrap, and sometimes a corrupted byte or a
  secondary that stops early;
* IPv6 (UDP, ICMPv6 and TCP, with extension headers, hop limit, traffic
  class and flow label changed on the secondary) and 802.1Q / QinQ-tagged
  flows;
* IP fragments, IPv4 and IPv6, tagged or not: datagrams cut differently on
  each side, sent out of order, with overlaps, duplicates, missing parts;
* frames the engine does not compare: ARP, ND, three tags, runts, bad IPv4,
  IPv6 and TCP headers, zero-length and oversize frames.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import strategies as st

from colo_xdp.lab import pktgen as g
from colo_xdp.engine import PassthroughRule
from colo_xdp.lab.pktgen import EtherAddrs, IPv4Fields

WRAP = 1 << 32
OTHER_MAC = EtherAddrs(src="52:54:00:00:00:aa", dst="52:54:00:00:00:bb")


@dataclass
class Flow:
    kind: str
    primary: list[bytes]
    secondary: list[bytes]
    vnet: int = 0                  # vnet header length on both sides


@dataclass
class Op:
    kind: str                      # "P", "S", "tick", "checkpoint", "failover", "rules"
    flow: int = 0
    dt: int = 0                    # ms to advance the clock before the op
    rules: tuple = ()              # "rules": the new passthrough list


@dataclass
class Scenario:
    config: dict
    flows: list[Flow]
    ops: list[Op] = field(default_factory=list)

    def __repr__(self) -> str:     # what hypothesis prints for a failing example
        flows = "\n".join(f"  flow {i} {f.kind}: vnet={f.vnet} P={[g.describe(x, f.vnet) for x in f.primary]}"
                          f"\n    S={[g.describe(x, f.vnet) for x in f.secondary]}"
                          for i, f in enumerate(self.flows))
        ops = " ".join(f"{o.kind}{o.flow if o.kind in 'PS' else ''}{list(o.rules) if o.rules else ''}"
                       f"+{o.dt}" for o in self.ops)
        return f"Scenario(config={self.config}\n{flows}\n  ops: {ops})"


def _ident(flow: int, i: int) -> int:
    """IP id of a primary frame: tells frames apart, never compared except in GRE."""
    return (flow * 251 + i) & 0xFFFF


# -- the secondary's deviations from the primary (datagram flows) ---------------------------

@st.composite
def _deviate(draw, frames: list[bytes], corrupt_from: int) -> list[bytes]:
    """The secondary's copy of ``frames``: mostly equal; sometimes one frame
    corrupted (a byte at or past ``corrupt_from`` flipped), left out,
    doubled, or swapped with the next one."""
    out = list(frames)
    how = draw(st.sampled_from(["same"] * 5 + ["corrupt", "omit", "double", "swap", "extra"]))
    if not out or how == "same":
        return out
    k = draw(st.integers(0, len(out) - 1))
    if how == "corrupt":
        f = bytearray(out[k])
        pos = draw(st.integers(min(corrupt_from, len(f) - 1), len(f) - 1))
        f[pos] ^= 0xFF
        out[k] = bytes(f)
    elif how == "omit":
        del out[k]
    elif how == "double":
        out.insert(k, out[k])
    elif how == "swap" and k + 1 < len(out):
        out[k], out[k + 1] = out[k + 1], out[k]
    elif how == "extra":
        out.insert(k, out[k][:-1] + b"X")
    return out


def _payloads(n_max: int = 5):
    return st.lists(st.binary(max_size=20), min_size=1, max_size=n_max)


@st.composite
def udp_flow(draw, n: int) -> Flow:
    sport = 1000 + n
    payloads = draw(_payloads())
    prim = [g.udp_frame(b"%d:" % i + p, sport=sport, ip=IPv4Fields(ident=_ident(n, i)))
            for i, p in enumerate(payloads)]
    sec = [g.udp_frame(b"%d:" % i + p, sport=sport, eth=OTHER_MAC,
                       ip=IPv4Fields(ident=0x8000 + i, ttl=63)) for i, p in enumerate(payloads)]
    return Flow("udp", prim, draw(_deviate(sec, 14 + 20)))


@st.composite
def icmp_flow(draw, n: int) -> Flow:
    # ICMP is keyed without ports: one flow per source address.
    src = f"10.0.1.{n + 1}"
    payloads = draw(_payloads())
    prim = [g.icmp_echo_frame(p, seq=i, src=src, ip=IPv4Fields(ident=_ident(n, i)))
            for i, p in enumerate(payloads)]
    sec = [g.icmp_echo_frame(p, seq=i, src=src, ip=IPv4Fields(ident=9, ttl=1))
           for i, p in enumerate(payloads)]
    return Flow("icmp", prim, draw(_deviate(sec, 14 + 20)))


@st.composite
def gre_flow(draw, n: int) -> Flow:
    """Other IPv4, compared from the Ethernet header on: a TTL or MAC
    difference is a mismatch there."""
    src = f"10.0.2.{n + 1}"
    payloads = draw(_payloads())
    prim = [g.ipv4_frame(b"%d:" % i + p, g.IPPROTO_GRE, src=src, ip=IPv4Fields(ident=_ident(n, i)))
            for i, p in enumerate(payloads)]
    sec = list(prim)
    if draw(st.booleans()):
        sec = draw(_deviate(sec, 0))
    return Flow("gre", prim, sec)


V6_SEC = g.IPv6Fields(hop_limit=3, traffic_class=0x28, flow_label=0x12345)


@st.composite
def udp6_flow(draw, n: int) -> Flow:
    """IPv6 UDP, after extension headers on one side: compared from the L4
    header on, so hop limit, traffic class, flow label and extension
    headers do not count."""
    sport = 6000 + n
    payloads = draw(_payloads())
    ext = ((g.IPV6_HOPOPTS, b""), (g.IPV6_DSTOPTS, b"opt"))
    prim = [g.udp6_frame(b"%d:" % i + p, sport=sport,
                         ip=g.IPv6Fields(flow_label=_ident(n, i), ext=ext if i % 2 else ()))
            for i, p in enumerate(payloads)]
    sec = [g.udp6_frame(b"%d:" % i + p, sport=sport, eth=OTHER_MAC, ip=V6_SEC)
           for i, p in enumerate(payloads)]
    return Flow("udp6", prim, draw(_deviate(sec, 14 + 40)))


@st.composite
def icmp6_flow(draw, n: int) -> Flow:
    src = f"fd00:1::{n + 1}"
    payloads = draw(_payloads())
    prim = [g.icmp6_echo_frame(p, seq=i, src=src, ip=g.IPv6Fields(flow_label=_ident(n, i)))
            for i, p in enumerate(payloads)]
    sec = [g.icmp6_echo_frame(p, seq=i, src=src, ip=V6_SEC) for i, p in enumerate(payloads)]
    return Flow("icmp6", prim, draw(_deviate(sec, 14 + 40)))


@st.composite
def vlan_flow(draw, n: int) -> Flow:
    """UDP over one or two tags: the VIDs are the key; the secondary's PCP
    differs (not keyed) and sometimes a VID (another connection)."""
    tags = draw(st.sampled_from([(10,), (20, 30), (30, 20)]))
    payloads = draw(_payloads())

    def tag(frame, pcp, vids):
        if len(vids) == 1:
            return g.vlan_frame(frame, vids[0], pcp)
        return g.qinq_frame(frame, *vids)
    sport = 7000 + n
    prim = [tag(g.udp_frame(b"%d:" % i + p, sport=sport, ip=IPv4Fields(ident=_ident(n, i))),
                0, tags) for i, p in enumerate(payloads)]
    sec_tags = tags if draw(st.integers(0, 5)) else tags[::-1] + (0,) * (len(tags) == 1)
    sec = [tag(g.udp_frame(b"%d:" % i + p, sport=sport), 5, sec_tags)
           for i, p in enumerate(payloads)]
    return Flow("vlan", prim, draw(_deviate(sec, 14 + 8 + 20)))


@st.composite
def _fragmented(draw, frame: bytes, ident: int) -> list[bytes]:
    """``frame`` cut into fragments at random multiples of 8, maybe out of
    order, maybe with one left out, doubled or overlapping."""
    body = len(frame) - 14 - 40
    cuts = draw(st.lists(st.sampled_from([8, 16, 24, 48]), min_size=1, max_size=4))
    parts = g.fragment(frame, cuts, ident=ident) if body > 8 else [frame]
    how = draw(st.sampled_from(["same"] * 4 + ["shuffle", "omit", "double", "overlap"]))
    if how == "shuffle":
        parts = draw(st.permutations(parts))
    elif how == "omit" and len(parts) > 1:
        del parts[draw(st.integers(0, len(parts) - 1))]
    elif how == "double":
        k = draw(st.integers(0, len(parts) - 1))
        parts.insert(k, parts[k])
    elif how == "overlap" and len(parts) > 1:
        other = g.fragment(frame, [8] * 20, ident=ident)
        parts.insert(draw(st.integers(0, len(parts))), draw(st.sampled_from(other)))
    return list(parts)


@st.composite
def fragment_flow(draw, n: int) -> Flow:
    """Datagrams in IP fragments (IPv4 or IPv6, tagged or not, UDP, TCP or
    other), cut differently on each side: reassembled, compared whole."""
    family = draw(st.sampled_from(["v4", "v6", "v4-vlan", "v6-qinq"]))
    proto = draw(st.sampled_from(["udp", "udp", "gre"]))
    payloads = draw(_payloads(3))
    prim, sec = [], []
    for i, p in enumerate(payloads):
        body = b"%d:" % i + p * 3 + bytes(range(40))
        if family.startswith("v4"):
            mk = (lambda b, ttl: g.udp_frame(b, sport=8000 + n, ip=IPv4Fields(flags=0, ttl=ttl))
                  if proto == "udp" else
                  g.ipv4_frame(b, g.IPPROTO_GRE, src=f"10.0.3.{n + 1}",
                               ip=IPv4Fields(flags=0, ttl=ttl)))
        else:
            mk = (lambda b, ttl: g.udp6_frame(b, sport=8000 + n, ip=g.IPv6Fields(hop_limit=ttl))
                  if proto == "udp" else
                  g.ipv6_frame(b, next_header=g.IPPROTO_GRE, src=f"fd00:3::{n + 1}",
                               ip=g.IPv6Fields(hop_limit=ttl)))
        tag = (lambda f: f) if "-" not in family else (
            (lambda f: g.vlan_frame(f, 5)) if family == "v4-vlan" else g.qinq_frame)
        prim += draw(_fragmented(tag(mk(body, 64)), _ident(n, i)))
        s_body = body if draw(st.integers(0, 4)) else body[:-1] + b"!"
        sec += draw(_fragmented(tag(mk(s_body, 64)), 0x9000 + i))
    return Flow("fragment", prim, sec)


UNSUPPORTED = [
    g.arp_frame(),
    g.neighbor_solicit_frame(),
    g.vlan_frame(g.qinq_frame(g.udp_frame(b"three tags"))),
    (lambda f: f[:18] + b"\0\0" + f[20:])(g.udp6_frame(b"jumbo")),
    g.ipv6_frame(b"\x11\x05" + b"\0" * 6, next_header=g.IPV6_DSTOPTS),
    g.ipv4_frame(b"x" * 9, g.IPPROTO_UDP, ip=IPv4Fields(flags=g.IP_MF)),
    g.udp_frame(b"runt")[:20],                                     # no IPv4 header
    b"",                                                           # zero-length
    bytes(g.NET_BUFSIZE + 1),                                      # oversize
    bytes(g.NET_BUFSIZE),                                          # the largest: runt of zeros
    # IPv4 with IHL 4, and with a total length past the frame
    (lambda f: f[:14] + b"\x44" + f[15:])(g.udp_frame(b"ihl")),
    (lambda f: f[:16] + b"\x05\xdc" + f[18:])(g.udp_frame(b"total")),
    # TCP with a data offset past the segment; UDP header cut short
    (lambda f: f[:46] + b"\xf0" + f[47:])(g.tcp_frame(b"")),
    g.ipv4_frame(b"1234567", g.IPPROTO_UDP),
    g.ipv4_frame(b"sctp" + b"\0" * 8, 132),                        # other IPv4 with ports
]


@st.composite
def unsupported_flow(draw, n: int) -> Flow:
    prim = draw(st.lists(st.sampled_from(UNSUPPORTED) | st.binary(max_size=60), max_size=4))
    sec = draw(st.lists(st.sampled_from(UNSUPPORTED) | st.binary(max_size=60), max_size=4))
    return Flow("unsupported", prim, sec)


# -- TCP ------------------------------------------------------------------------------

@st.composite
def _cuts(draw, length: int) -> list[tuple[int, int]]:
    """``length`` bytes cut into [start, end) ranges at random points."""
    if length == 0:
        return []
    points = draw(st.sets(st.integers(1, length - 1), max_size=min(6, length - 1))) if length > 1 else set()
    edges = [0, *sorted(points), length]
    return list(zip(edges, edges[1:]))


@st.composite
def _tcp_side(draw, data: bytes, isn: int, sport: int, ack0: int, eth: EtherAddrs,
              window: int) -> list[bytes]:
    """One side's segments of ``data``: SYN, data (with pure ACKs, one
    coalesced retransmit, one swapped pair), FIN."""
    ranges = draw(_cuts(len(data)))
    if ranges and draw(st.integers(0, 3)) == 0:              # a coalesced retransmit
        a = draw(st.integers(0, len(ranges) - 1))
        b = draw(st.integers(a, len(ranges) - 1))
        at = draw(st.integers(b + 1, len(ranges)))
        ranges.insert(at, (ranges[a][0], ranges[b][1]))
    ack, segs = ack0, []
    if draw(st.booleans()):
        segs.append(g.tcp_frame(b"", sport=sport, seq=isn, ack=0, flags=g.TCP_SYN, eth=eth))
    for start, end in ranges:
        ack = (ack + draw(st.sampled_from([0, 0, 0, 100, 1000]))) % WRAP
        segs.append(g.tcp_frame(data[start:end], sport=sport, seq=(isn + 1 + start) % WRAP,
                                ack=ack, flags=g.TCP_ACK | g.TCP_PSH, eth=eth, window=window))
        if draw(st.integers(0, 4)) == 0:                     # a pure ACK
            ack = (ack + draw(st.sampled_from([0, 1, 500]))) % WRAP
            segs.append(g.tcp_frame(b"", sport=sport, seq=(isn + 1 + end) % WRAP, ack=ack,
                                    eth=eth, window=window))
    if segs and draw(st.integers(0, 4)) == 0:                # out of order
        k = draw(st.integers(0, len(segs) - 1))
        segs[k:k + 2] = segs[k:k + 2][::-1]
    if draw(st.booleans()):
        segs.append(g.tcp_frame(b"", sport=sport, seq=(isn + 1 + len(data)) % WRAP, ack=ack,
                                flags=g.TCP_FIN | g.TCP_ACK, eth=eth, window=window))
    return segs


@st.composite
def tcp_flow(draw, n: int) -> Flow:
    sport = 4000 + n
    isn = draw(st.sampled_from([0, WRAP - 40, (1 << 31) - 10]) | st.integers(0, WRAP - 1))
    data = draw(st.binary(max_size=90))
    ack0 = draw(st.sampled_from([1, WRAP - 200]) | st.integers(0, WRAP - 1))
    prim = draw(_tcp_side(data, isn, sport, ack0, g.ETHER_DEFAULTS, 65535))
    sec_data = bytearray(data)
    if data and draw(st.integers(0, 4)) == 0:                # the secondary diverges
        sec_data[draw(st.integers(0, len(data) - 1))] ^= 0x55
    sec_ack0 = (ack0 + draw(st.sampled_from([0, 0, 0, 100, -100]))) % WRAP
    sec = draw(_tcp_side(bytes(sec_data), isn, sport, sec_ack0, OTHER_MAC, 512))
    if sec and draw(st.integers(0, 5)) == 0:                 # the secondary stops early
        sec = sec[:draw(st.integers(0, len(sec) - 1))]
    # Unique primary frames: the IP id is not compared for TCP.
    prim = [f[:18] + _ident(n, i).to_bytes(2, "big") + f[20:] for i, f in enumerate(prim)]
    return Flow("tcp", prim, sec)


@st.composite
def tcp6_flow(draw, n: int) -> Flow:
    """TCP over IPv6: the same rules, by sequence range."""
    flow = draw(tcp_flow(n))

    def six(frame: bytes, sec: bool) -> bytes:
        seg = frame[14 + 20:]
        # the IPv4 segment as is (its checksum is not compared, nor checked)
        return g.ethernet(g.ipv6(seg, g.IPPROTO_TCP,
                                 ip=V6_SEC if sec else g.IPv6Fields(flow_label=len(seg))),
                          g.ETH_P_IPV6, OTHER_MAC if sec else g.ETHER_DEFAULTS)
    return Flow("tcp6", [six(f, False) for f in flow.primary],
                [six(f, True) for f in flow.secondary])


FLOWS = {"udp": udp_flow, "icmp": icmp_flow, "gre": gre_flow, "fragment": fragment_flow,
         "unsupported": unsupported_flow, "tcp": tcp_flow, "udp6": udp6_flow,
         "icmp6": icmp6_flow, "vlan": vlan_flow, "tcp6": tcp6_flow}


# -- vnet headers ---------------------------------------------------------------------

@st.composite
def with_vnet(draw, flow: Flow) -> Flow:
    """The flow's frames behind a vnet header (21 bytes: unsupported)."""
    length = draw(st.sampled_from([0, 10, 12, 20, 21]))
    p_hdr = g.vnet_header(length, b"\x01\x02") if length else b""
    s_hdr = g.vnet_header(length, b"\x03") if length else b""
    return Flow(flow.kind, [p_hdr + f if f else f for f in flow.primary],
                [s_hdr + f if f else f for f in flow.secondary], length)


# -- configurations and schedules --------------------------------------------------------

def configs(vnet_hdr: bool = False):
    return st.fixed_dictionaries({
        "compare_timeout_ms": st.sampled_from([1, 100, 3000]),
        "expired_scan_cycle_ms": st.sampled_from([1, 50, 1000]),
        "max_queue_size": st.sampled_from([1, 2, 3, 5, 1024]),
        "max_connections": st.sampled_from([1, 2, 3, 16384]),
        "vnet_hdr": st.just(vnet_hdr),
        "evidence_max_bytes": st.sampled_from([0, 0, 100, 300, 1 << 20]),
        "reasm_timeout_ms": st.sampled_from([0, 0, 50]),
        "reasm_max_bytes": st.sampled_from([0, 0, 300]),
        "reasm_max_datagrams": st.sampled_from([0, 0, 1, 2]),
        "reasm_max_per_host": st.sampled_from([0, 0, 1]),
    })


# Passthrough lists: one flow's ports, a protocol, an address prefix, everything.
RULES = st.lists(st.sampled_from([
    PassthroughRule(proto=17), PassthroughRule(proto=6, dport=2000),
    PassthroughRule(sport=1000), PassthroughRule(sport=4001), PassthroughRule(proto=47),
    PassthroughRule(src="10.0.1.0/24"), PassthroughRule(src="10.0.2.1", proto=47),
    PassthroughRule(dst="10.0.0.0/8", sport=4000), PassthroughRule(),
    PassthroughRule(src="fd00::/16", proto=17), PassthroughRule(dst="fd00::2", sport=6001),
    PassthroughRule(src="fd00:1::1"), PassthroughRule(src="10.0.0.1", sport=7000),
]), max_size=2).map(tuple)


DT = st.sampled_from([0, 0, 0, 0, 1, 10, 100, 1000, 4000])


@st.composite
def scenarios(draw, kinds=tuple(FLOWS), vnet_hdr: bool = False, max_flows: int = 4) -> Scenario:
    config = draw(configs(vnet_hdr))
    chosen = draw(st.lists(st.sampled_from(kinds), min_size=1, max_size=max_flows))
    flows = [draw(FLOWS[kind](n)) for n, kind in enumerate(chosen)]
    if vnet_hdr:
        flows = [draw(with_vnet(f)) for f in flows]
    kind = st.sampled_from(["P"] * 6 + ["S"] * 6 + ["tick"] * 3 + ["checkpoint"])
    ops = draw(st.lists(st.builds(Op, kind, st.integers(0, len(flows) - 1), DT), max_size=60))
    for _ in range(draw(st.sampled_from([0, 0, 0, 1, 2]))):
        ops.insert(draw(st.integers(0, len(ops))), Op("rules", rules=draw(RULES)))
    if draw(st.integers(0, 7)) == 0:
        at = draw(st.integers(0, len(ops)))
        ops.insert(at, Op("failover"))
    # Then the rest of every flow, the two sides in turn, and maybe a last
    # scan and checkpoint, so most frames meet their fate.
    sent = {"P": [0] * len(flows), "S": [0] * len(flows)}
    for op in ops:
        if op.kind in sent:
            sent[op.kind][op.flow] += 1
    for n, flow in enumerate(flows):
        left_p = max(len(flow.primary) - sent["P"][n], 0)
        left_s = max(len(flow.secondary) - sent["S"][n], 0)
        for i in range(max(left_p, left_s)):
            if i < left_p:
                ops.append(Op("P", n))
            if i < left_s:
                ops.append(Op("S", n))
    if draw(st.booleans()):
        ops += [Op("tick", dt=5000), Op("tick", dt=5000)]
    if draw(st.booleans()):
        ops.append(Op("checkpoint"))
    return Scenario(config, flows, ops)
