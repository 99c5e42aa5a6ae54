"""The compare engine: frames and time in, actions out.

The engine is sans-I/O: it never reads a socket, a clock or a timer.  Its
state (connection table, per-side queues, compare rules) lives in the C core
(``csrc/cx_engine.c``) so that per-frame work stays in C; this module is the
Python face of it and has two ways in:

* frame by frame, for tests and tools (ActionEngine)::

      eng = ActionEngine(EngineConfig())
      actions = eng.feed(Side.PRIMARY, frame, now_ms=0)
      actions += eng.feed(Side.SECONDARY, frame, now_ms=1)
      # -> [Release(frame=..., vnet_hdr_len=0, ...)]

* in batches, for transports: ``feed_stream`` takes a chunk of a QEMU-framed
  stream (``feed_stream_flow`` with flow control: it may stop early and say
  so), ``output()``/``consume_output()`` hand out released frames already
  framed for the outdev, ``drain_events()`` the checkpoint requests, drops and
  connection events (coalesced: one per kind, reason and connection, with a
  count), ``checkpoint_wanted()`` whether a checkpoint request is
  outstanding.  Python runs per batch, never per frame.
"""
from __future__ import annotations

import enum
import socket
import struct
from dataclasses import dataclass, field

from colo_xdp import native
from colo_xdp.errors import EngineError, FramingError
from colo_xdp.proto.inet import PROTO_BY_NUMBER, net_bytes

# Why a stream is closed when a record length is past any frame
# (feed_stream_flow, and the chardev glue's turn).
FRAMING_LOST = (f"the stream carried a record length over {native.CX_FRAMING_LOST_LEN} "
                "bytes; its framing is lost")

# Defaults carry QEMU's property names (net/colo-compare.c).
DEFAULT_COMPARE_TIMEOUT_MS = 3000
DEFAULT_EXPIRED_SCAN_CYCLE_MS = 1000
DEFAULT_MAX_QUEUE_SIZE = 1024
# QEMU's HASHTABLE_MAX_SIZE; here a limit with eviction, never a wipe.
DEFAULT_MAX_CONNECTIONS = 16384
DEFAULT_MAX_EVENTS = 65536
# The passthrough list's limit, the engine's and the XDP classifier's alike
# (CX_MAX_RULES, bpf/cx_wire.h): each scans the list in order.
MAX_PASSTHROUGH_RULES = native.CX_MAX_RULES
NET_BUFSIZE = native.CX_NET_BUFSIZE
# Upper bounds (inclusive, ms) of the hold-time buckets but the last (+Inf):
# 0, 1, 2, 4, ... 8192 (csrc/cx_engine.h, CX_HOLD_BUCKETS).
HOLD_MS_BOUNDS = (0,) + tuple(1 << i for i in range(native.CX_HOLD_BUCKETS - 2))


class Side(enum.IntEnum):
    """Which guest a frame comes from; also classify.c's -DCX_XDP_SIDE."""

    PRIMARY = native.CX_PRIMARY
    SECONDARY = native.CX_SECONDARY


class CheckpointReason(enum.IntEnum):
    MISMATCH = native.CX_CKPT_MISMATCH
    TIMEOUT = native.CX_CKPT_TIMEOUT
    QUEUE_FULL = native.CX_CKPT_QUEUE_FULL
    TABLE_FULL = native.CX_CKPT_TABLE_FULL


class DropReason(enum.IntEnum):
    UNSUPPORTED = native.CX_DROP_UNSUPPORTED
    QUEUE_FULL = native.CX_DROP_QUEUE_FULL
    TABLE_FULL = native.CX_DROP_TABLE_FULL
    FLUSHED = native.CX_DROP_FLUSHED
    FAILOVER = native.CX_DROP_FAILOVER
    EMPTY = native.CX_DROP_EMPTY
    OVERSIZE = native.CX_DROP_OVERSIZE
    TRUNCATED = native.CX_DROP_TRUNCATED
    NO_MEMORY = native.CX_DROP_NO_MEMORY
    PASSTHROUGH = native.CX_DROP_PASSTHROUGH
    FRAG_TIMEOUT = native.CX_DROP_FRAG_TIMEOUT
    FRAG_OVERLAP = native.CX_DROP_FRAG_OVERLAP
    FRAG_LIMIT = native.CX_DROP_FRAG_LIMIT


class FragOutcome(enum.IntEnum):
    """What became of an IP datagram that came in fragments."""

    REASSEMBLED = native.CX_FRAG_REASSEMBLED
    TIMED_OUT = native.CX_FRAG_TIMED_OUT
    OVERLAP = native.CX_FRAG_OVERLAP
    OVER_LIMIT = native.CX_FRAG_OVER_LIMIT


class ReleaseReason(enum.IntEnum):
    MATCHED = native.CX_REL_MATCHED
    UNSUPPORTED = native.CX_REL_UNSUPPORTED
    NO_PAYLOAD = native.CX_REL_NO_PAYLOAD
    RETRANSMIT = native.CX_REL_RETRANSMIT
    FLUSHED = native.CX_REL_FLUSHED
    FAILOVER = native.CX_REL_FAILOVER
    PASSTHROUGH = native.CX_REL_PASSTHROUGH


def _name(member: enum.Enum) -> str:
    return member.name.lower()


@dataclass(frozen=True)
class ConnKey:
    """A connection's 5-tuple (ports are 0 for protocols without them), IPv4
    or IPv6, with the VIDs of its 802.1Q / QinQ tags (outer first)."""

    saddr: str
    daddr: str
    sport: int
    dport: int
    proto: int
    vlan: tuple[int, ...] = ()

    @property
    def family(self) -> int:
        return 6 if ":" in self.saddr else 4

    def __str__(self) -> str:
        proto = PROTO_BY_NUMBER.get(self.proto, f"ip{self.proto}")
        if self.family == 6:
            text = f"{proto} [{self.saddr}]:{self.sport} > [{self.daddr}]:{self.dport}"
        else:
            text = f"{proto} {self.saddr}:{self.sport} > {self.daddr}:{self.dport}"
        return text + "".join(f" vlan {vid}" for vid in self.vlan)


@dataclass(frozen=True)
class Release:
    """Send this primary frame to the outdev."""

    frame: bytes
    vnet_hdr_len: int = 0


@dataclass(frozen=True)
class Evidence:
    """A frame behind a checkpoint request (EngineConfig.evidence_max_bytes)."""

    side: Side
    frame: bytes
    vnet_hdr_len: int
    born_ms: int


@dataclass(frozen=True)
class CheckpointRequest:
    """``count`` requests for this reason and connection in one batch."""

    reason: CheckpointReason
    conn: ConnKey | None
    evidence: tuple[Evidence, ...] = ()
    count: int = 1


@dataclass(frozen=True)
class Drop:
    """``count`` frames of this side, reason and connection in one batch."""

    side: Side
    reason: DropReason
    conn: ConnKey | None
    count: int = 1


@dataclass(frozen=True)
class PassthroughRule:
    """Flows not to compare.  None (or a /0 prefix) matches anything."""

    proto: int | None = None
    src: str | None = None          # address or address/prefix
    dst: str | None = None
    sport: int | None = None
    dport: int | None = None


@dataclass(frozen=True)
class ConnInfo:
    """One connection of the table, for stats."""

    conn: ConnKey
    passthrough: bool
    queued_primary: int
    queued_secondary: int
    created_ms: int
    last_ms: int
    matched: int
    released: int
    mismatches: int
    checkpoints: int


@dataclass(frozen=True)
class ConnectionOpened:
    conn: ConnKey


@dataclass(frozen=True)
class ConnectionEvicted:
    conn: ConnKey


Action = Release | CheckpointRequest | Drop | ConnectionOpened | ConnectionEvicted


@dataclass
class EngineConfig:
    compare_timeout_ms: int = DEFAULT_COMPARE_TIMEOUT_MS
    expired_scan_cycle_ms: int = DEFAULT_EXPIRED_SCAN_CYCLE_MS
    max_queue_size: int = DEFAULT_MAX_QUEUE_SIZE
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    vnet_hdr: bool = False
    max_events: int = DEFAULT_MAX_EVENTS
    evidence_max_bytes: int = 0      # 0: no miscompare evidence kept
    # Flow control: frames one side may hold on a connection the other holds
    # nothing on before a feed stops there; 0: max_queue_size / 2.
    flow_high_water: int = 0
    # IP fragment reassembly, per side; 0: the engine's CX_REASM_* default.
    reasm_timeout_ms: int = 0
    reasm_max_bytes: int = 0
    reasm_max_datagrams: int = 0
    reasm_max_per_host: int = 0

    def validate(self) -> None:
        """Raise EngineError with one sentence for the first bad value."""
        for name in ("compare_timeout_ms", "expired_scan_cycle_ms", "max_queue_size",
                     "max_connections", "max_events"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise EngineError(f"{name} must be a positive whole number, not {value!r}")
        if self.max_queue_size > 1 << 24 or self.max_connections > 1 << 24:
            raise EngineError("max_queue_size and max_connections must be at most 16777216")
        if not 0 <= self.evidence_max_bytes < 1 << 32:
            raise EngineError("evidence_max_bytes must be from 0 to 4294967295")
        if not isinstance(self.flow_high_water, int) or not (
                0 <= self.flow_high_water <= self.max_queue_size):
            raise EngineError(f"flow_high_water must be from 0 to max_queue_size "
                              f"({self.max_queue_size}), not {self.flow_high_water!r}")
        for name in ("reasm_timeout_ms", "reasm_max_bytes", "reasm_max_datagrams",
                     "reasm_max_per_host"):
            value = getattr(self, name)
            if not isinstance(value, int) or not 0 <= value < 1 << 32:
                raise EngineError(f"{name} must be from 0 (the default) to 4294967295, "
                                  f"not {value!r}")


@dataclass
class Counters:
    """A snapshot of the engine's counters; every frame in is accounted for."""

    frames_in: dict[str, int] = field(default_factory=dict)
    bytes_in: dict[str, int] = field(default_factory=dict)
    released: dict[str, int] = field(default_factory=dict)
    released_bytes: int = 0
    matched_secondary: int = 0
    skipped_secondary: int = 0
    dropped: dict[str, dict[str, int]] = field(default_factory=dict)
    checkpoints: dict[str, int] = field(default_factory=dict)
    mismatches: dict[str, int] = field(default_factory=dict)
    queued: dict[str, int] = field(default_factory=dict)
    connections: int = 0
    conns_created: int = 0
    conns_evicted: int = 0
    events_lost: int = 0
    evidence_lost: int = 0
    outdev_cut: int = 0
    outdev_unsent: int = 0          # taken by an AF_XDP outdev, never sent (socket closed)
    held_back: dict[str, int] = field(default_factory=dict)   # feeds flow control stopped
    # datagrams that came in fragments, per side, by outcome (FragOutcome)
    frag: dict[str, dict[str, int]] = field(default_factory=dict)
    # How long released primary frames were held: counts per bucket (upper
    # bounds HOLD_MS_BOUNDS, then +Inf; not cumulative), and the total ms.
    # The counts sum to released_total.
    hold_ms_buckets: list[int] = field(default_factory=list)
    hold_ms_sum: int = 0

    @property
    def released_total(self) -> int:
        return sum(self.released.values())

    def dropped_total(self, side: str) -> int:
        return sum(self.dropped[side].values())


_WORDS = struct.Struct("=4I")       # an address as the engine keeps it: 4 words


def _addr(words, family: int) -> str:
    raw = _WORDS.pack(*words)
    return socket.inet_ntop(socket.AF_INET6, raw) if family == 6 else socket.inet_ntoa(raw[12:])


def _net(text: str | None, what: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """'10.0.0.0/8' or 'fd00::/64' -> (address, mask) as the engine's four
    words, network byte order, IPv4 mapped (colo_xdp.proto.inet)."""
    try:
        addr, mask = net_bytes(text, what)
    except ValueError as exc:
        raise EngineError(str(exc)) from None
    return _WORDS.unpack(addr), _WORDS.unpack(mask)


_EVIDENCE = struct.Struct("=IBBHIIQ")
_NONE: frozenset = frozenset()


def _key(k) -> ConnKey:
    return ConnKey(_addr(k.saddr, k.family), _addr(k.daddr, k.family), k.sport, k.dport,
                   k.proto, tuple(k.vid[0:k.ntags]))


class Engine:
    """Compare primary and secondary frames per connection (QEMU colo-compare)."""

    def __init__(self, config: EngineConfig | None = None):
        self.config = config or EngineConfig()
        self.config.validate()
        cfg = {
            "compare_timeout_ms": self.config.compare_timeout_ms,
            "expired_scan_cycle_ms": self.config.expired_scan_cycle_ms,
            "max_queue_size": self.config.max_queue_size,
            "max_connections": self.config.max_connections,
            "max_events": self.config.max_events,
            "evidence_max_bytes": self.config.evidence_max_bytes,
            "vnet_hdr": int(self.config.vnet_hdr),
            "flow_high_water": self.config.flow_high_water,
            "reasm_timeout_ms": self.config.reasm_timeout_ms,
            "reasm_max_bytes": self.config.reasm_max_bytes,
            "reasm_max_datagrams": self.config.reasm_max_datagrams,
            "reasm_max_per_host": self.config.reasm_max_per_host,
        }
        try:
            self._e = native.EngineCore(cfg)
        except native.NativeError:
            raise EngineError("the engine could not allocate its tables") from None
        self._hdr = 8 if self.config.vnet_hdr else 4

    @property
    def handle(self) -> native.EngineCore:
        """The C engine, for the glue (colo_xdp.native: rx_to_engine, ChardevPump)."""
        return self._e

    # -- batch interface (transports) ------------------------------------

    def feed_stream(self, side: Side, chunk, now_ms: int) -> int:
        """Feed every whole framed record of ``chunk`` (no flow control);
        return bytes consumed.  A partial record at the end is left for the
        next call.  A zero-length record is counted (``empty``) and read
        past; an oversize one is counted and its body skipped, also across
        calls (``stream_reset`` when the stream gets a new peer)."""
        return self.feed_stream_flow(side, chunk, now_ms, force=True)[0]

    def feed_stream_flow(self, side: Side, chunk, now_ms: int,
                         force: bool = False) -> tuple[int, bool]:
        """As feed_stream, with flow control unless ``force``: returns (bytes
        consumed, held back).  Held back: the engine stopped in front of a
        frame that would run this side ahead of the other; leave the rest
        unread until the other side has been fed (or force it when both
        sides are held back or the other has stopped).  FramingError (with
        ``consumed``, the bytes before the bad record, which were fed) when
        a record length is past any frame: close the stream."""
        try:
            return self._e.feed_stream(side, chunk, now_ms, force)
        except native.NativeError as exc:         # EPROTO: a length past any frame
            err = FramingError(FRAMING_LOST)
            err.consumed = self._e.consumed
            raise err from None

    def stream_reset(self, side: Side) -> None:
        """The side's stream has a new peer: stop skipping an oversize record."""
        self._e.stream_reset(side)

    def queued(self, side: Side) -> int:
        """Frames held on one side, over all connections."""
        return self._e.queued(side)

    def holding(self) -> bool:
        """Whether any frame is held, on either side."""
        return bool(self._e.queued(Side.PRIMARY) or self._e.queued(Side.SECONDARY))

    def checkpoint_wanted(self) -> frozenset[CheckpointReason]:
        """Reasons of the checkpoint requests since the last checkpoint (or
        failover): outstanding until one is done, never lost."""
        mask = self._e.checkpoint_wanted()
        return frozenset(r for r in CheckpointReason if mask & (1 << r)) if mask else _NONE

    def checkpoint_outstanding(self) -> bool:
        """Whether a checkpoint request is outstanding (checkpoint_wanted,
        cheap enough for every batch)."""
        return bool(self._e.checkpoint_wanted())

    def output(self) -> memoryview:
        """Released frames, in the outdev's framing, not yet consumed."""
        return self._e.out_peek()

    def consume_output(self, n: int) -> None:
        self._e.out_consume(n)

    def abandon_partial_output(self) -> bool:
        """The outdev left mid-record: skip its rest (counted); True if one was cut."""
        return self._e.out_abandon_partial()

    def output_pending(self) -> int:
        return self._e.out_pending()

    def drain_events(self) -> list[Action]:
        """Events since the last drain, in order; checkpoint requests carry
        their evidence when the engine keeps it."""
        events = self._e.events()
        if not events:                # the usual batch; evidence only comes with events
            return []
        out: list[Action] = []
        evidence = self._take_evidence() if self.config.evidence_max_bytes else {}
        for i, ev in enumerate(events):
            key = _key(ev.key) if ev.has_key else None
            if ev.kind == native.CX_EV_CHECKPOINT:
                out.append(CheckpointRequest(CheckpointReason(ev.reason), key,
                                             tuple(evidence.get(i, ())), ev.count))
            elif ev.kind == native.CX_EV_DROP:
                out.append(Drop(Side(ev.side), DropReason(ev.reason), key, ev.count))
            elif ev.kind == native.CX_EV_CONN_NEW:
                out.append(ConnectionOpened(key))
            elif ev.kind == native.CX_EV_CONN_EVICT:
                out.append(ConnectionEvicted(key))
        self._e.events_clear()
        return out

    def _take_evidence(self) -> dict[int, list[Evidence]]:
        buf = self._e.evidence()
        n = len(buf)
        if not n:
            return {}
        by_event: dict[int, list[Evidence]] = {}
        pos = 0
        while pos < n:
            event, side, _reason, _, vnet, length, born = _EVIDENCE.unpack_from(buf, pos)
            start = pos + _EVIDENCE.size
            by_event.setdefault(event, []).append(
                Evidence(Side(side), buf[start:start + length], vnet, born))
            pos = start + ((length + 7) & ~7)
        return by_event

    def check_passthrough(self, rules: list[PassthroughRule]) -> list[dict[str, int]]:
        """The list as the engine would take it (struct cx_rule fields);
        EngineError, one sentence, if it cannot.  Changes nothing."""
        if len(rules) > MAX_PASSTHROUGH_RULES:
            raise EngineError(f"the engine takes at most {MAX_PASSTHROUGH_RULES} passthrough "
                              f"rules, not {len(rules)}")
        arr: list[dict[str, int]] = []
        for rule in rules:
            r: dict[str, int] = {}
            arr.append(r)
            r["saddr"], r["smask"] = _net(rule.src, "source")
            r["daddr"], r["dmask"] = _net(rule.dst, "destination")
            for name in ("sport", "dport", "proto"):
                value = getattr(rule, name)
                limit = 255 if name == "proto" else 65535
                if value is not None and not 0 <= value <= limit:
                    raise EngineError(f"{name} {value} is outside 0..{limit}")
                # Ports in network byte order, as in cx_wire.h's struct cx_rule.
                r[name] = socket.htons(value or 0) if name != "proto" else value or 0
        return arr

    def set_passthrough(self, rules: list[PassthroughRule]) -> None:
        """Replace the passthrough list; flows it now covers release what
        they hold (primary) and drop the rest (secondary).  What
        ``check_passthrough`` refuses is refused before anything changes."""
        arr = self.check_passthrough(rules)
        try:
            self._e.set_passthrough(arr)
        except native.NativeError:
            raise EngineError("the engine could not allocate the passthrough list")

    def connections(self, limit: int | None = None) -> list[ConnInfo]:
        """Every connection of the table, in creation order; with ``limit``,
        the ``limit`` most worth a look (most frames held, then most
        recently seen; creation order when all fit), picked in C: the
        Python cost is that of the rows."""
        return [ConnInfo(_key(c.key), bool(c.passthrough), c.queued[0], c.queued[1],
                         c.created_ms, c.last_ms, c.matched, c.released, c.mismatches,
                         c.checkpoints) for c in self._e.conn_snapshot(limit)]

    def note_unsent(self, frames: int) -> None:
        """Count released frames an outdev took and never sent (left in the
        tx ring of an AF_XDP socket that was closed)."""
        self._e.out_note_unsent(frames)

    def note_drop(self, side: Side, reason: DropReason) -> None:
        """Count a frame a transport lost (e.g. a peer gone mid-frame)."""
        self._e.note_drop(side, reason)

    # -- control ---------------------------------------------------------

    def feed_frame(self, side: Side, frame: bytes, now_ms: int, vnet_hdr_len: int = 0) -> None:
        """Feed one frame (its vnet header, if any, included)."""
        self._e.feed(side, frame, vnet_hdr_len, now_ms)

    def run_timers(self, now_ms: int) -> int:
        """Run the expired-frame scan if due; return when to call again (ms)."""
        return self._e.tick(now_ms)

    def checkpoint(self, now_ms: int | None = None) -> None:
        """The COLO frame reports a checkpoint: flush every connection.
        ``now_ms``: the time, for the hold time of the frames it releases
        (default: the latest feed or timer run)."""
        if now_ms is not None:
            self._e.set_time(now_ms)
        self._e.checkpoint()

    def failover(self, now_ms: int | None = None) -> None:
        """Stop comparing for good: flush, then pass primary frames through
        (``now_ms`` as for checkpoint)."""
        if now_ms is not None:
            self._e.set_time(now_ms)
        self._e.failover()

    def take_releases(self) -> list[Release]:
        """Decode and consume the pending output into Release actions."""
        buf = bytes(self.output())
        self.consume_output(len(buf))
        releases, pos, hdr = [], 0, self._hdr
        while pos < len(buf):
            (length,) = struct.unpack_from(">I", buf, pos)
            vnet = struct.unpack_from(">I", buf, pos + 4)[0] if hdr == 8 else 0
            releases.append(Release(buf[pos + hdr:pos + hdr + length], vnet))
            pos += hdr + length
        return releases

    def collect(self) -> list[Action]:
        """Everything the engine produced since the last collect, as actions:
        releases first (in order), then events."""
        return self.take_releases() + self.drain_events()

    # -- state -----------------------------------------------------------

    def counters(self) -> Counters:
        c = self._e.counters()
        sides = {s: _name(s) for s in Side}
        return Counters(
            frames_in={sides[s]: c.frames_in[s] for s in Side},
            bytes_in={sides[s]: c.bytes_in[s] for s in Side},
            released={_name(r): c.released[r] for r in ReleaseReason},
            released_bytes=c.released_bytes,
            matched_secondary=c.matched_secondary,
            skipped_secondary=c.skipped_secondary,
            dropped={sides[s]: {_name(r): c.dropped[s][r] for r in DropReason} for s in Side},
            checkpoints={_name(r): c.checkpoints[r] for r in CheckpointReason},
            mismatches={"tcp": c.mismatches_by_proto[0], "udp_icmp": c.mismatches_by_proto[1],
                        "other": c.mismatches_by_proto[2]},
            queued={sides[s]: self._e.queued(s) for s in Side},
            connections=self._e.connections(),
            conns_created=c.conns_created,
            conns_evicted=c.conns_evicted,
            events_lost=c.events_lost,
            evidence_lost=c.evidence_lost,
            outdev_cut=c.outdev_cut,
            outdev_unsent=c.outdev_unsent,
            held_back={sides[s]: c.held_back[s] for s in Side},
            frag={sides[s]: {_name(o): c.frag[s][o] for o in FragOutcome} for s in Side},
            hold_ms_buckets=list(c.hold_hist),
            hold_ms_sum=c.hold_ms_sum,
        )


class ActionEngine(Engine):
    """The engine one step at a time: every call returns the actions it caused.

    Meant for tests and tools; transports use Engine's batch interface.
    """

    def feed(self, side: Side, frame: bytes, now_ms: int, vnet_hdr_len: int = 0) -> list[Action]:
        self.feed_frame(side, frame, now_ms, vnet_hdr_len)
        return self.collect()

    def tick(self, now_ms: int) -> list[Action]:
        self.run_timers(now_ms)
        return self.collect()

    def checkpoint(self, now_ms: int | None = None) -> list[Action]:
        super().checkpoint(now_ms)
        return self.collect()

    def failover(self, now_ms: int | None = None) -> list[Action]:
        super().failover(now_ms)
        return self.collect()
