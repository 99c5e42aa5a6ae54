"""docs/compare-rules.md as a small executable model: the reference the engine
is checked against.

Pure Python, no import from colo_xdp: lists for queues, dicts for tables, one
method per rule, each quoting the sentence of the doc it states.  Slow (it
copies and scans), so it is only for tests.

A step (``feed``, ``tick``, ``checkpoint``, ``failover``,
``set_passthrough``) returns what it caused as plain tuples, in the order the engine reports them:

* releases: ``Out(id, frame, vnet_hdr_len, reason)``, in output order;
* events: ``("checkpoint", reason, key, evidence)``, ``("drop", side,
  reason, key)``, ``("opened", key)``, ``("evicted", key)``; ``key`` is
  ``(saddr, daddr, sport, dport, proto, vlan)`` with addresses as text
  (dotted, or IPv6) and the VIDs of the frame's tags, or None;
  ``evidence`` a tuple of ``(side, frame, vnet_hdr_len, born_ms)``.

Every frame fed in gets an id (its position in the feed order), so the tests
can follow each primary frame to its one fate: released, held or dropped.
"""
from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass, field
from typing import NamedTuple

NET_BUFSIZE = 69632          # a record longer than this is "oversize"
VNET_HDR_MAX = 20            # sizeof(struct virtio_net_hdr_v1_hash)
ETH_HLEN = 14
ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
VLAN_TPIDS = (0x8100, 0x88A8)
IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, IPPROTO_ICMPV6 = 1, 6, 17, 58
IPV6_EXT = (0, 43, 60, 44)   # hop-by-hop, routing, destination options, fragment
IPV6_MAX_EXT = 6
ICMPV6_LINK = set(range(130, 138)) | {143}   # MLD and ND: not compared, as ARP
REASM_TIMEOUT_MS, REASM_MAX_BYTES, REASM_MAX_DATAGRAMS = 3000, 4 << 20, 1024
REASM_MAX_FRAGS, REASM_MAX_PER_HOST = 64, 64
PORTED_OTHER = (33, 132, 136)  # DCCP, SCTP, UDP-Lite: keyed by their ports too
TCP_ACK = 0x10

P, S = "primary", "secondary"
SIDES = (P, S)

RELEASE_REASONS = ("matched", "unsupported", "no_payload", "retransmit", "flushed",
                   "failover", "passthrough")
DROP_REASONS = ("unsupported", "queue_full", "table_full", "flushed", "failover", "empty",
                "oversize", "truncated", "no_memory", "passthrough", "frag_timeout",
                "frag_overlap", "frag_limit")
FRAG_OUTCOMES = ("reassembled", "timed_out", "overlap", "over_limit")
CHECKPOINT_REASONS = ("mismatch", "timeout", "queue_full", "table_full")
EVIDENCE_HEADER = 24           # struct cx_evidence; each frame padded to 8 bytes


def seq_after(a: int, b: int) -> bool:
    """Is sequence number a after b, modulo 2**32 (RFC 1982)?"""
    return 0 < (a - b) % (1 << 32) < (1 << 31)


def seq_at_or_below(a: int, b: int) -> bool:
    return not seq_after(a, b)


class Out(NamedTuple):
    id: int
    frame: bytes
    vnet_hdr_len: int
    reason: str


@dataclass
class FragInfo:
    """Where a fragment belongs: its datagram and its part of it."""
    ident: int
    off: int                   # of its part in the datagram's payload
    pay_at: int                # where its part starts in the frame
    plen: int
    hdr_end: int               # the headers a datagram keeps end here
    l3_off: int
    nh_at: int = 0             # IPv6: the byte naming the fragment header
    nxt: int = 0               # IPv6: the fragment header's next header
    more: bool = False


@dataclass
class Parsed:
    key: tuple                 # the 5-tuple and tags, as events and the snapshot show it
    kind: str                  # "tcp", "l4" (UDP, ICMP), "whole" (other) or "frag"
    fragment: bool = False     # an IP fragment: reassembled first
    frag: FragInfo | None = None
    cmp_off: int = 0           # "l4"/"whole": compared bytes start here
    seq: int = 0               # "tcp" only from here on
    payload: bytes = b""
    ack: int = 0
    has_ack: bool = False


@dataclass
class Frame:
    id: int
    side: str
    data: bytes
    vnet: int
    born: int
    p: Parsed
    captured: bool = False     # given out as miscompare evidence already
    parts: list = field(default_factory=list)   # a datagram: its fragments (Frames)

    @property
    def weight(self) -> int:
        return len(self.parts) or 1

    @property
    def seq_end(self) -> int:
        return (self.p.seq + len(self.p.payload)) % (1 << 32)


@dataclass(eq=False)
class Conn:
    key: tuple
    kind: str
    id: tuple = ()
    q: dict = field(default_factory=lambda: {P: [], S: []})
    max_ack: dict = field(default_factory=lambda: {P: None, S: None})
    compared: int | None = None        # end of the highest compared TCP data
    passthrough: bool = False
    # the connection snapshot
    created: int = 0
    last: int = 0
    matched: int = 0
    released: int = 0
    mismatches: int = 0
    checkpoints: int = 0

    @property
    def idle(self) -> bool:
        return not self.q[P] and not self.q[S]


# -- "Parsing" --------------------------------------------------------------------

def _link(eth: bytes) -> tuple[int, tuple, int] | None:
    """"802.1Q and QinQ": (EtherType, VIDs, network header offset), None
    when cut or with more than two tags."""
    at, vids = 12, []
    kind = int.from_bytes(eth[12:14], "big")
    while kind in VLAN_TPIDS:
        if len(vids) == 2 or len(eth) < at + 6:
            return None
        vids.append(int.from_bytes(eth[at + 2:at + 4], "big") & 0x0FFF)
        at += 4
        kind = int.from_bytes(eth[at:at + 2], "big")
    return kind, tuple(vids), at + 2


def _l4(p: Parsed, proto: int, l4: bytes, l4_off: int, keyed) -> Parsed | None:
    """"TCP: at least 20 bytes ...; UDP: at least 8 bytes; ICMP: at least 4"."""
    if proto == IPPROTO_TCP:
        if len(l4) < 20:
            return None
        doff = (l4[12] >> 4) * 4
        if doff < 20 or doff > len(l4):
            return None
        return Parsed(keyed(_u16(l4, 0), _u16(l4, 2)), "tcp", cmp_off=p.cmp_off,
                      seq=_u32(l4, 4), ack=_u32(l4, 8), has_ack=bool(l4[13] & TCP_ACK),
                      payload=bytes(l4[doff:]))
    if proto == IPPROTO_UDP:
        if len(l4) < 8:
            return None
        return Parsed(keyed(_u16(l4, 0), _u16(l4, 2)), "l4", cmp_off=l4_off)
    if proto in (IPPROTO_ICMP, IPPROTO_ICMPV6):
        if len(l4) < 4 or (proto == IPPROTO_ICMPV6 and l4[0] in ICMPV6_LINK):
            return None
        return Parsed(keyed(0, 0), "l4", cmp_off=l4_off)
    if proto in PORTED_OTHER and len(l4) >= 4:
        p.key = keyed(_u16(l4, 0), _u16(l4, 2))
    return p


def parse(data: bytes, vnet: int) -> Parsed | None:
    """Parsed if the frame is *compared*, None if it is *unsupported*."""
    if vnet > VNET_HDR_MAX or len(data) < vnet + ETH_HLEN:
        return None
    eth = data[vnet:]
    link = _link(eth)
    if link is None:
        return None
    kind, vids, l3 = link
    ip = eth[l3:]
    l3_off = vnet + l3
    frag = None
    if kind == ETH_P_IP:
        if len(ip) < 20:
            return None
        version, ihl = ip[0] >> 4, (ip[0] & 0x0F) * 4
        total = int.from_bytes(ip[2:4], "big")
        if version != 4 or ihl < 20 or total < ihl or total > len(ip):
            return None
        proto = ip[9]
        saddr, daddr = socket.inet_ntoa(ip[12:16]), socket.inet_ntoa(ip[16:20])
        l4, l4_off = ip[ihl:total], l3_off + ihl
        word = _u16(ip, 6)
        if word & 0x3FFF:
            frag = FragInfo(_u16(ip, 4), (word & 0x1FFF) * 8, l4_off, len(l4), l4_off, l3_off,
                            more=bool(word & 0x2000))
    elif kind == ETH_P_IPV6:
        if len(ip) < 40 or ip[0] >> 4 != 6:
            return None
        plen = _u16(ip, 4)
        if plen == 0 or plen > len(ip) - 40:
            return None
        saddr = socket.inet_ntop(socket.AF_INET6, ip[8:24])
        daddr = socket.inet_ntop(socket.AF_INET6, ip[24:40])
        end, at, nh_at, nh = 40 + plen, 40, 6, ip[6]
        for i in range(IPV6_MAX_EXT + 1):
            if nh not in IPV6_EXT:
                break
            if i == IPV6_MAX_EXT or end - at < 8 or (nh == 0 and i != 0):
                return None
            if nh == 44:
                word = _u16(ip, at + 2)
                frag = FragInfo(_u32(ip, at + 4), word & 0xFFF8, l3_off + at + 8, end - at - 8,
                                l3_off + at, l3_off, l3_off + nh_at, ip[at], bool(word & 1))
                nh, at = ip[at], at + 8
                break
            hlen = (ip[at + 1] + 1) * 8
            if hlen > end - at:
                return None
            nh_at, nh, at = at, ip[at], at + hlen
        proto, l4, l4_off = nh, ip[at:end], l3_off + at
    else:
        return None                                  # ARP and other EtherTypes
    whole = Parsed((saddr, daddr, 0, 0, proto, vids), "whole", cmp_off=vnet)
    if frag is not None:
        # "reassembled per side and datagram": keyed by it (addresses, id;
        # IPv4 also the protocol), only the last part may end off 8.
        if frag.more and (frag.plen == 0 or frag.plen % 8):
            return None
        key = (saddr, daddr, 0, 0, proto if kind == ETH_P_IP else 0, vids)
        return Parsed(key, "frag", fragment=True, frag=frag, cmp_off=vnet)
    return _l4(whole, proto, l4, l4_off, lambda sp, dp: (saddr, daddr, sp, dp, proto, vids))


def _mapped(addr: str) -> int:
    a = ipaddress.ip_address(addr)
    return int(a) | (0xFFFF << 32) if a.version == 4 else int(a)


def _in_net(addr: str, net: str | None) -> bool:
    """IPv4 as IPv4-mapped IPv6 on both sides (an IPv4 /n is a /96+n)."""
    if net is None:
        return True
    n = ipaddress.ip_network(net, strict=False)
    if n.prefixlen == 0:
        return True                      # "a /0 of either is any address"
    bits = n.prefixlen + (96 if n.version == 4 else 0)
    mask = ((1 << 128) - 1) ^ ((1 << (128 - bits)) - 1)
    return (_mapped(addr) ^ _mapped(str(n.network_address))) & mask == 0


def conn_id(p: Parsed) -> tuple:
    """What tells connections apart: the 5-tuple and tags; a fragment, its
    datagram."""
    return (*p.key, p.frag.ident if p.fragment else None)


@dataclass(eq=False)
class Reasm:
    """A datagram being reassembled, one side's: "collect", "pass" (after a
    flush: the rest goes through) or "discard" (the rest is dropped)."""
    side: str
    key: tuple
    born: int
    state: str = "collect"
    discard_reason: str = ""
    frags: list = field(default_factory=list)
    have_last: bool = False
    total: int = 0

    @property
    def have(self) -> int:
        return sum(f.p.frag.plen for f in self.frags)

    @property
    def bytes(self) -> int:
        return sum(len(f.data) for f in self.frags)


def rule_covers(rule, key: tuple) -> bool:
    """"A list of flow rules (protocol, source and destination address with
    prefix, source and destination port; each may be left open)"; ``rule``
    has the attributes of colo_xdp.engine.PassthroughRule."""
    saddr, daddr, sport, dport, proto, _vlan = key
    return ((not rule.proto or rule.proto == proto) and _in_net(saddr, rule.src)
            and _in_net(daddr, rule.dst) and (not rule.sport or rule.sport == sport)
            and (not rule.dport or rule.dport == dport))


def _u16(b: bytes, off: int) -> int:
    return int.from_bytes(b[off:off + 2], "big")


def _u32(b: bytes, off: int) -> int:
    return int.from_bytes(b[off:off + 4], "big")


# -- the model ---------------------------------------------------------------------

class Model:
    """One colo-compare instance, rule by rule."""

    def __init__(self, compare_timeout_ms=3000, expired_scan_cycle_ms=1000,
                 max_queue_size=1024, max_connections=16384, vnet_hdr=False,
                 evidence_max_bytes=0, reasm_timeout_ms=0, reasm_max_bytes=0,
                 reasm_max_datagrams=0, reasm_max_per_host=0):
        self.reasm_timeout = reasm_timeout_ms or REASM_TIMEOUT_MS
        self.reasm_max_bytes = reasm_max_bytes or REASM_MAX_BYTES
        self.reasm_max_datagrams = reasm_max_datagrams or REASM_MAX_DATAGRAMS
        self.reasm_max_per_host = reasm_max_per_host or REASM_MAX_PER_HOST
        self.reasm: dict[tuple, Reasm] = {}     # (side, key, id), in creation order
        self.timeout = compare_timeout_ms
        self.cycle = expired_scan_cycle_ms
        self.max_queue = max_queue_size
        self.max_conns = max_connections
        self.vnet_hdr = vnet_hdr
        self.evidence_max = evidence_max_bytes
        self.evidence_used = 0                  # bytes given out since the last step
        self.rules: list = []
        self.conns: dict[tuple, Conn] = {}      # by conn_id(), in creation order
        self.idle: list[Conn] = []              # least recently idle first
        self.failed_over = False
        self.next_scan: int | None = None
        self.next_id = 0
        self.frames: dict[int, Frame] = {}      # every frame fed in, by id
        self.fate: dict[int, tuple] = {}        # id -> ("released"|"dropped"|..., reason)
        self.c = {
            "frames_in": {P: 0, S: 0}, "bytes_in": {P: 0, S: 0},
            "released": dict.fromkeys(RELEASE_REASONS, 0), "released_bytes": 0,
            "matched_secondary": 0, "skipped_secondary": 0,
            "dropped": {s: dict.fromkeys(DROP_REASONS, 0) for s in SIDES},
            "checkpoints": dict.fromkeys(CHECKPOINT_REASONS, 0),
            "mismatches": {"tcp": 0, "udp_icmp": 0, "other": 0},
            "conns_created": 0, "conns_evicted": 0, "evidence_lost": 0,
            "frag": {s: dict.fromkeys(FRAG_OUTCOMES, 0) for s in SIDES},
        }
        self._out: list[Out] = []
        self._events: list[tuple] = []

    # -- outputs of one step --------------------------------------------------

    def _step(self) -> tuple[list[Out], list[tuple]]:
        out, ev = self._out, self._events
        self._out, self._events = [], []
        self.evidence_used = 0
        return out, ev

    def _release(self, f: Frame, reason: str) -> None:
        if f.parts:
            # "the primary's fragments released in the order they came"
            if f.p is not None and conn_id(f.p) in self.conns:
                conn = self.conns[conn_id(f.p)]
                conn.released += f.weight
                conn.matched += f.weight * (reason == "matched")
            for part in f.parts:
                part.p = None
                self._release(part, reason)
            return
        assert self.fate.get(f.id, ("held",))[0] == "held", f"frame {f.id} released twice"
        self.fate[f.id] = ("released", reason)
        self._out.append(Out(f.id, f.data, f.vnet if self.vnet_hdr else 0, reason))
        if f.p is not None and conn_id(f.p) in self.conns:
            conn = self.conns[conn_id(f.p)]
            conn.released += 1
            conn.matched += reason == "matched"
        self.c["released"][reason] += 1
        self.c["released_bytes"] += len(f.data)

    def _drop(self, f: Frame, reason: str, key) -> None:
        if f.parts:
            for part in f.parts:
                self._drop(part, reason, key)
            return
        assert self.fate.get(f.id, ("held",))[0] == "held", f"frame {f.id} dropped twice"
        self.fate[f.id] = ("dropped", reason)
        self.c["dropped"][f.side][reason] += 1
        self._events.append(("drop", f.side, reason, key))

    def _consume(self, f: Frame, how: str) -> None:
        """A secondary frame used up by a compare: "matched" or "skipped"."""
        for part in f.parts or [f]:
            self.fate[part.id] = (how, None)
            self.c[f"{how}_secondary"] += 1

    def _checkpoint(self, reason: str, key, conn: Conn | None = None, evidence=()) -> None:
        self.c["checkpoints"][reason] += 1
        if conn:
            conn.checkpoints += 1
            conn.mismatches += reason == "mismatch"
        # "Miscompare evidence": each frame given out once, what does not fit
        # counted as lost.
        kept = []
        for f in evidence:
            if f is None or f.captured or not self.evidence_max:
                continue
            need = EVIDENCE_HEADER + (len(f.data) + 7) // 8 * 8
            if self.evidence_used + need > self.evidence_max:
                self.c["evidence_lost"] += 1
                continue
            self.evidence_used += need
            f.captured = True
            kept.append((f.side, f.data, f.vnet, f.born))
        self._events.append(("checkpoint", reason, key, tuple(kept)))

    def _mismatch(self, conn: Conn, p: Frame, s: Frame) -> None:
        """A checkpoint request with "the oldest held primary frame and the
        newest secondary frame it was compared with" as evidence."""
        proto = {"tcp": "tcp", "l4": "udp_icmp", "whole": "other"}[conn.kind]
        self.c["mismatches"][proto] += 1
        self._checkpoint("mismatch", conn.key, conn, (p, s))

    # -- "Connections" -----------------------------------------------------------

    def _touch(self, conn: Conn) -> None:
        """Keep the idle list: a connection joins its end when its last frame
        goes and leaves it when it holds one again."""
        was_idle = conn in self.idle
        if conn.idle and not was_idle:
            self.idle.append(conn)
        elif not conn.idle and was_idle:
            self.idle.remove(conn)

    def _conn(self, p: Parsed, now: int) -> Conn | None:
        """"When the table is full a new connection takes the place of the
        connection that has been idle the longest.  If every connection holds
        frames" there is none: None."""
        if conn_id(p) in self.conns:
            return self.conns[conn_id(p)]
        if len(self.conns) >= self.max_conns:
            if not self.idle:
                return None
            victim = self.idle.pop(0)
            del self.conns[victim.id]
            self.c["conns_evicted"] += 1
            self._events.append(("evicted", victim.key))
        conn = self.conns[conn_id(p)] = Conn(p.key, p.kind, id=conn_id(p), created=now,
                                             passthrough=self._covered(p.key))
        self.c["conns_created"] += 1
        self._events.append(("opened", p.key))
        return conn

    # -- feeding ------------------------------------------------------------------------

    def feed(self, side: str, data: bytes, now: int, vnet: int = 0):
        f = Frame(self.next_id, side, bytes(data), vnet, now, None)
        self.next_id += 1
        self.frames[f.id] = f
        self.c["frames_in"][side] += 1
        self.c["bytes_in"][side] += len(data)
        if not data:
            self._drop(f, "empty", None)
        elif len(data) > NET_BUFSIZE:
            self._drop(f, "oversize", None)
        elif self.failed_over:
            # "primary frames pass straight through, secondary frames are dropped"
            if side == P:
                self._release(f, "failover")
            else:
                self._drop(f, "failover", None)
        elif (parsed := parse(f.data, vnet)) is None:
            # "Unsupported frames from the primary are released at once; from
            # the secondary they are dropped"
            if side == P:
                self._release(f, "unsupported")
            else:
                self._drop(f, "unsupported", None)
        elif parsed.fragment:
            f.p = parsed
            self._reasm_feed(f)
        else:
            f.p = parsed
            self._queue(f)
        return self._step()

    # -- "IP fragments" -----------------------------------------------------------------

    def _reasm_drop_held(self, r: Reasm, reason: str, outcome: str) -> None:
        for part in r.frags:
            self._drop(part, reason, r.key)
        r.frags = []
        self.c["frag"][r.side][outcome] += 1
        r.state, r.discard_reason = "discard", reason

    def _reasm_feed(self, f: Frame) -> None:
        fi = f.p.frag
        rid = (f.side, f.p.key, fi.ident)
        r = self.reasm.get(rid)
        if r is None:
            mine = [x for x in self.reasm.values() if x.side == f.side]
            if (len(mine) >= self.reasm_max_datagrams or
                    sum(x.key[0] == f.p.key[0] for x in mine) >= self.reasm_max_per_host):
                self._drop(f, "frag_limit", f.p.key)
                self.c["frag"][f.side]["over_limit"] += 1
                return
            r = self.reasm[rid] = Reasm(f.side, f.p.key, f.born)
        if r.state == "pass":
            # "its datagram was flushed: the rest too"
            if f.side == P:
                self._release(f, "flushed")
            else:
                self._drop(f, "flushed", f.p.key)
            return
        if r.state == "discard":
            self._drop(f, r.discard_reason, f.p.key)
            return
        end = fi.off + fi.plen
        conflict = ((not fi.more and (r.have_last or end < r.have))
                    or (r.have_last and end > r.total)
                    or any((not fi.more and h.p.frag.off + h.p.frag.plen > end)
                           or (fi.off < h.p.frag.off + h.p.frag.plen and h.p.frag.off < end)
                           for h in r.frags))
        if conflict:
            # "overlapping fragments abandon the datagram (RFC 5722)"
            self._drop(f, "frag_overlap", f.p.key)
            self._reasm_drop_held(r, "frag_overlap", "overlap")
            return
        side_bytes = sum(x.bytes for x in self.reasm.values() if x.side == f.side)
        if (len(r.frags) >= REASM_MAX_FRAGS or end > 0xFFFF
                or side_bytes + len(f.data) > self.reasm_max_bytes):
            self._drop(f, "frag_limit", f.p.key)
            self._reasm_drop_held(r, "frag_limit", "over_limit")
            return
        r.frags.append(f)
        self.fate[f.id] = ("held", None)
        if not fi.more:
            r.have_last, r.total = True, end
        if r.have_last and r.have == r.total:
            self._reasm_complete(rid, r, f.born)

    def _reasm_complete(self, rid, r: Reasm, now: int) -> None:
        """The first fragment's headers with the fragment fields cleared, then
        every part at its offset: fed as one frame standing for its parts."""
        del self.reasm[rid]
        first = next(x for x in r.frags if x.p.frag.off == 0)
        fi = first.p.frag
        l3 = fi.l3_off
        v6 = ":" in r.key[0]
        ip_len = (fi.hdr_end - l3 - 40 if v6 else fi.hdr_end - l3) + r.total
        if ip_len > 0xFFFF or fi.hdr_end + r.total > NET_BUFSIZE:
            self._reasm_drop_held(r, "frag_limit", "over_limit")
            return
        d = bytearray(first.data[:fi.hdr_end]) + bytearray(r.total)
        for x in r.frags:
            xi = x.p.frag
            d[fi.hdr_end + xi.off:fi.hdr_end + xi.off + xi.plen] = x.data[xi.pay_at:xi.pay_at + xi.plen]
        if v6:
            d[fi.nh_at] = fi.nxt
            d[l3 + 4:l3 + 6] = ip_len.to_bytes(2, "big")
        else:
            d[l3 + 2:l3 + 4] = ip_len.to_bytes(2, "big")
            d[l3 + 4:l3 + 8] = bytes(4)
            d[l3 + 10:l3 + 12] = bytes(2)
        self.c["frag"][r.side]["reassembled"] += 1
        dgram = Frame(-1, r.side, bytes(d), first.vnet, now, parse(bytes(d), first.vnet),
                      parts=list(r.frags))
        if dgram.p is None or dgram.p.fragment:
            if dgram.side == P:
                for part in dgram.parts:
                    self._release(part, "unsupported")
            else:
                for part in dgram.parts:
                    self._drop(part, "unsupported", r.key)
            return
        for part in dgram.parts:
            part.p = None          # the datagram stands for them now
        self._queue(dgram)

    def _reasm_expire(self, now: int) -> None:
        for rid, r in list(self.reasm.items()):
            if now > r.born and now - r.born > self.reasm_timeout:
                if r.state == "collect":
                    self._reasm_drop_held(r, "frag_timeout", "timed_out")
                del self.reasm[rid]

    def _reasm_flush(self, release_reason: str, drop_reason: str) -> None:
        for r in self.reasm.values():
            if r.state != "collect":
                continue
            for part in r.frags:
                if r.side == P:
                    self._release(part, release_reason)
                else:
                    self._drop(part, drop_reason, r.key)
            r.frags, r.state = [], "pass"

    def _queue(self, f: Frame) -> None:
        if conn_id(f.p) not in self.conns and self._covered(f.p.key):
            # "Passthrough flows take no place in the connection table": their
            # primary frames are released at once, their secondary ones dropped.
            if f.side == P:
                self._release(f, "passthrough")
            else:
                self._drop(f, "passthrough", f.p.key)
            return
        conn = self._conn(f.p, f.born)
        if conn is None:
            self._drop(f, "table_full", f.p.key)
            self._checkpoint("table_full", f.p.key)
            return
        conn.last = f.born
        if conn.passthrough:
            # "their primary frames are released at once (passthrough), their
            # secondary frames dropped"
            if f.side == P:
                self._release(f, "passthrough")
            else:
                self._drop(f, "passthrough", conn.key)
            self._touch(conn)
            return
        q = conn.q[f.side]
        if len(q) >= self.max_queue:
            # "a frame arriving at a full queue is dropped and counted"
            self._drop(f, "queue_full", conn.key)
            return
        if conn.kind == "tcp" and f.p.kind == "tcp" and f.p.has_ack:
            # "the highest ACK seen on each side is tracked (wraparound-safe,
            # only from segments with the ACK flag)"
            top = conn.max_ack[f.side]
            if top is None or seq_after(f.p.ack, top):
                conn.max_ack[f.side] = f.p.ack
        if conn.kind == "tcp":
            # "Each side's queue is kept in sequence order": after the last
            # frame that is not after it (equal sequences in arrival order).
            at = len(q)
            while at and seq_after(q[at - 1].p.seq, f.p.seq):
                at -= 1
            q.insert(at, f)
        else:
            q.append(f)
        self.fate[f.id] = ("held", None)
        if conn.kind == "tcp":
            self._compare_tcp(conn)
        else:
            self._compare_dgram(conn)
        self._touch(conn)
        # "A queue still full after comparing requests a checkpoint"
        if len(q) >= self.max_queue:
            self._checkpoint("queue_full", conn.key, conn)

    # -- "UDP, ICMP and other IPv4" ---------------------------------------------------

    @staticmethod
    def _dgram_equal(p: Frame, s: Frame) -> bool:
        """"the same length and the same bytes from the L4 header on (UDP,
        ICMP) or from the end of the vnet header on" (both at the primary's
        offsets)."""
        return len(p.data) == len(s.data) and p.data[p.p.cmp_off:] == s.data[p.p.cmp_off:]

    def _compare_dgram(self, conn: Conn) -> None:
        """"The oldest primary frame is matched against the secondary queue,
        oldest first; a match releases the primary frame and consumes that
        secondary frame.  No match is a mismatch"."""
        pq, sq = conn.q[P], conn.q[S]
        while pq and sq:
            p = pq[0]
            s = next((s for s in sq if self._dgram_equal(p, s)), None)
            if s is None:
                self._mismatch(conn, p, sq[-1])
                return
            pq.pop(0)
            sq.remove(s)
            self._release(p, "matched")
            self._consume(s, "matched")

    # -- "TCP" ----------------------------------------------------------------------

    def _already_compared(self, conn: Conn, f: Frame) -> bool:
        """"a segment whose data ends at or below the highest compared sequence"."""
        return conn.compared is not None and seq_at_or_below(f.seq_end, conn.compared)

    def _compare_tcp(self, conn: Conn) -> None:
        pq, sq = conn.q[P], conn.q[S]
        while pq and sq:
            p, s = pq[0], sq[0]
            p_gone = False
            # 1. no payload, 2. retransmit: the primary's head goes uncompared ...
            if not p.p.payload:
                pq.pop(0)
                self._release(p, "no_payload")
                p_gone = True
            elif self._already_compared(conn, p):
                pq.pop(0)
                self._release(p, "retransmit")
                p_gone = True
            # ... and the secondary's is consumed
            if not s.p.payload or self._already_compared(conn, s):
                sq.pop(0)
                self._consume(s, "skipped")
                continue
            if p_gone:
                continue
            if not self._match_heads(conn, p, s):
                return

    def _match_heads(self, conn: Conn, p: Frame, s: Frame) -> bool:
        """Rule 3; False when the walk stops (a gap waits, or a mismatch)."""
        pq, sq = conn.q[P], conn.q[S]
        # "data at or below the highest compared sequence is skipped on both heads"
        p_start, s_start = self._start(conn, p), self._start(conn, s)
        p_off = (p_start - p.p.seq) % (1 << 32)
        if p.p.seq == s.p.seq and len(p.p.payload) == len(s.p.payload):
            # "When both heads are the same range, what is left of it is
            # compared and, if equal, the primary is released and the
            # secondary consumed, whatever their ACKs."
            if p.p.payload[p_off:] != s.p.payload[p_off:]:
                self._mismatch(conn, p, s)
                return False
            conn.compared = p.seq_end
            pq.pop(0)
            sq.pop(0)
            self._release(p, "matched")
            self._consume(s, "matched")
            return True
        # "Otherwise, if the heads start at the same sequence number, the
        # shorter remaining part is compared"
        if p_start != s_start:
            return False              # a gap: "nothing is decided until it does"
        p_left = (p.seq_end - p_start) % (1 << 32)
        s_left = (s.seq_end - s_start) % (1 << 32)
        n = min(p_left, s_left)
        s_off = (s_start - s.p.seq) % (1 << 32)
        if p.p.payload[p_off:p_off + n] != s.p.payload[s_off:s_off + n]:
            self._mismatch(conn, p, s)
            return False
        if s_left < p_left:
            # "when the secondary ends first, that part of the primary is
            # marked compared and the secondary consumed"
            conn.compared = s.seq_end
            sq.pop(0)
            self._consume(s, "matched")
            return True
        # "when the primary ends first (or both end together) it is released
        # only if its ACK is at or below the lower of the two sides' highest ACKs"
        tops = conn.max_ack[P], conn.max_ack[S]
        if None in tops:
            self._mismatch(conn, p, s)
            return False
        lower = tops[1] if seq_after(tops[0], tops[1]) else tops[0]
        if seq_after(p.p.ack, lower):
            self._mismatch(conn, p, s)
            return False
        conn.compared = p.seq_end
        pq.pop(0)
        self._release(p, "matched")
        if s_left == p_left:
            # a secondary fully matched by the primary that ends with it is
            # "consumed at once"
            sq.pop(0)
            self._consume(s, "matched")
        return True

    @staticmethod
    def _start(conn: Conn, f: Frame) -> int:
        """Where a segment's data above the compared sequence starts."""
        if conn.compared is not None and seq_after(conn.compared, f.p.seq):
            return conn.compared
        return f.p.seq

    # -- "Time" ------------------------------------------------------------------------

    def tick(self, now: int):
        """"Every --expired-scan-cycle ms the connections are scanned in the
        order they were created; the first one holding a frame, on either
        side, older than --compare-timeout ms requests one checkpoint".
        The first tick starts the clock of the scan."""
        if self.next_scan is None:
            self.next_scan = now + self.cycle
        elif now >= self.next_scan:
            self.next_scan = now + self.cycle
            self._reasm_expire(now)
            if not self.failed_over:
                for conn in self.conns.values():
                    # evidence: the oldest expired frame of each side
                    expired = [next((f for f in conn.q[side] if now - f.born > self.timeout),
                                    None) for side in SIDES]
                    if any(expired):
                        self._checkpoint("timeout", conn.key, conn, expired)
                        break
        return self._step()

    # -- "Checkpoint and failover" ---------------------------------------------------

    def _flush_conn(self, conn: Conn, release_reason: str, drop_reason: str) -> None:
        while conn.q[P]:
            self._release(conn.q[P].pop(0), release_reason)
        while conn.q[S]:
            self._drop(conn.q[S].pop(0), drop_reason, conn.key)

    def _flush(self, release_reason: str, drop_reason: str) -> None:
        """"connection by connection in creation order, every queued primary
        frame is released in queue order; every queued secondary frame is
        dropped".  TCP compare state is kept.  Then datagrams being
        reassembled release (primary) or drop (secondary) what they hold."""
        for conn in self.conns.values():
            self._flush_conn(conn, release_reason, drop_reason)
            self._touch(conn)
        self._reasm_flush(release_reason, drop_reason)

    def checkpoint(self):
        self._flush("flushed", "flushed")
        return self._step()

    def failover(self):
        self._flush("failover", "failover")
        self.failed_over = True
        return self._step()

    # -- "Passthrough" ------------------------------------------------------------------

    def _covered(self, key: tuple) -> bool:
        return any(rule_covers(r, key) for r in self.rules)

    def set_passthrough(self, rules: list):
        """"Adding a rule that covers a connection holding frames releases its
        primary frames in order and drops its secondary ones"; a connection no
        rule covers any more is compared again."""
        self.rules = list(rules)
        for conn in list(self.conns.values()):
            if not self._covered(conn.key):
                continue
            # ... and the connection leaves the table: passthrough flows have none.
            self._flush_conn(conn, "passthrough", "passthrough")
            if conn in self.idle:
                self.idle.remove(conn)
            del self.conns[conn.id]
            self.c["conns_evicted"] += 1
            self._events.append(("evicted", conn.key))
        return self._step()

    # -- state ---------------------------------------------------------------------

    def queued(self, side: str) -> int:
        """Frames held: in queues (a datagram as its fragments) and fragments
        waiting for the rest of their datagram."""
        return (sum(f.weight for c in self.conns.values() for f in c.q[side])
                + sum(len(r.frags) for r in self.reasm.values() if r.side == side))

    def holds(self, f: Frame) -> bool:
        return (any(f is x or f in x.parts for c in self.conns.values() for x in c.q[f.side])
                or any(f in r.frags for r in self.reasm.values()))

    def counters(self) -> dict:
        """The engine's Counters, as a dict with the same field names."""
        out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in self.c.items()}
        out["dropped"] = {s: dict(v) for s, v in self.c["dropped"].items()}
        out["queued"] = {s: self.queued(s) for s in SIDES}
        out["connections"] = len(self.conns)
        return out
