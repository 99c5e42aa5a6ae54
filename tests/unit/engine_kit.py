"""Shared helpers for the engine tests (tests/unit/test_engine_*.py).

Frames, keys and action filters, plus ``assert_accounted``: the invariant that
every frame fed in is accounted for, checked at the end of most tests.
"""
from __future__ import annotations

from dataclasses import replace

from colo_xdp.lab import pktgen as g
from colo_xdp.engine import (
    ActionEngine,
    CheckpointReason,
    CheckpointRequest,
    ConnectionEvicted,
    ConnectionOpened,
    ConnKey,
    Counters,
    Drop,
    EngineConfig,
    Release,
    Side,
)

P = Side.PRIMARY
S = Side.SECONDARY

SRC, DST = g.DEFAULT_SRC_IP, g.DEFAULT_DST_IP
SPORT, DPORT = g.DEFAULT_SPORT, g.DEFAULT_DPORT
UDP_KEY = ConnKey(SRC, DST, SPORT, DPORT, g.IPPROTO_UDP)
TCP_KEY = ConnKey(SRC, DST, SPORT, DPORT, g.IPPROTO_TCP)
ICMP_KEY = ConnKey(SRC, DST, 0, 0, g.IPPROTO_ICMP)
GRE_KEY = ConnKey(SRC, DST, 0, 0, g.IPPROTO_GRE)
SRC6, DST6 = g.DEFAULT_SRC_IP6, g.DEFAULT_DST_IP6
UDP6_KEY = ConnKey(SRC6, DST6, SPORT, DPORT, g.IPPROTO_UDP)
TCP6_KEY = ConnKey(SRC6, DST6, SPORT, DPORT, g.IPPROTO_TCP)
ICMP6_KEY = ConnKey(SRC6, DST6, 0, 0, g.IPPROTO_ICMPV6)

ACK = g.TCP_ACK
WRAP = 1 << 32


def engine(**config) -> ActionEngine:
    """An ActionEngine with EngineConfig defaults overridden by ``config``."""
    return ActionEngine(EngineConfig(**config))


def udp(n: int, flow: int = 0, **kw) -> bytes:
    """UDP frame number ``n`` of flow ``flow`` (source port SPORT + flow)."""
    return g.udp_frame(b"udp-%d-%d" % (flow, n), sport=SPORT + flow, **kw)


def seg(payload: bytes, seq: int, ack: int = 1, flags: int = ACK, **kw) -> bytes:
    """A TCP segment of the default connection; seq and ack wrap mod 2**32."""
    return g.tcp_frame(payload, seq=seq % WRAP, ack=ack % WRAP, flags=flags, **kw)


def data(n: int, start: int = 0) -> bytes:
    """``n`` payload bytes that differ from position to position (no repeats
    within 251 bytes), so a compare at a wrong offset cannot pass by luck."""
    return bytes((start + i) % 251 for i in range(n))


def udp_key(flow: int = 0) -> ConnKey:
    return ConnKey(SRC, DST, SPORT + flow, DPORT, g.IPPROTO_UDP)


# -- picking actions apart ---------------------------------------------------

def released(actions) -> list[bytes]:
    return [a.frame for a in actions if isinstance(a, Release)]


def _expanded(items):
    """The engine coalesces events (one per kind, reason and connection per
    batch, with a count): one item per occurrence, as a per-frame view."""
    return [replace(a, count=1) for a in items for _ in range(a.count)]


def checkpoints(actions) -> list[CheckpointRequest]:
    return _expanded(a for a in actions if isinstance(a, CheckpointRequest))


def reasons(actions) -> list[CheckpointReason]:
    return [a.reason for a in checkpoints(actions)]


def drops(actions) -> list[Drop]:
    return _expanded(a for a in actions if isinstance(a, Drop))


def opened(actions) -> list[ConnKey]:
    return [a.conn for a in actions if isinstance(a, ConnectionOpened)]


def evicted(actions) -> list[ConnKey]:
    return [a.conn for a in actions if isinstance(a, ConnectionEvicted)]


def feed_all(eng: ActionEngine, items, now_ms: int = 0) -> list:
    """Feed ``(side, frame)`` pairs in order; return every action they caused."""
    out = []
    for side, frame in items:
        out += eng.feed(side, frame, now_ms)
    return out


# -- the accounting invariant -----------------------------------------------

def assert_accounted(eng) -> Counters:
    """Every frame fed in is released/consumed once, held, or dropped.

    primary:   frames_in == released (all reasons) + dropped + queued,
               and released == the hold-time histogram's count
    secondary: frames_in == matched + skipped + dropped + queued
    Returns the counters so a test can go on checking them.
    """
    c = eng.counters()
    primary = c.released_total + c.dropped_total("primary") + c.queued["primary"]
    secondary = (c.matched_secondary + c.skipped_secondary
                 + c.dropped_total("secondary") + c.queued["secondary"])
    assert c.frames_in["primary"] == primary, (
        f"primary: {c.frames_in['primary']} in, but released {c.released} + "
        f"dropped {c.dropped['primary']} + queued {c.queued['primary']} = {primary}")
    assert c.frames_in["secondary"] == secondary, (
        f"secondary: {c.frames_in['secondary']} in, but matched {c.matched_secondary} + "
        f"skipped {c.skipped_secondary} + dropped {c.dropped['secondary']} + "
        f"queued {c.queued['secondary']} = {secondary}")
    assert c.connections == c.conns_created - c.conns_evicted
    # Every primary frame released is counted once in the hold-time histogram.
    assert sum(c.hold_ms_buckets) == c.released_total, (
        f"hold histogram counts {sum(c.hold_ms_buckets)}, released {c.released}")
    return c


def nonzero(counts: dict[str, int]) -> dict[str, int]:
    """Only the reasons that were counted, for exact comparisons."""
    return {k: v for k, v in counts.items() if v}
