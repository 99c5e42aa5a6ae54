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
  stream, ``output()``/``consume_output()`` hand out released frames already
  framed for the outdev, ``drain_events()`` the checkpoint requests, drops and
  connection events.  Python runs per batch, never per frame.
"""
from __future__ import annotations

import enum
import errno
import socket
import struct
from dataclasses import dataclass, field

from colo_xdp import native
from colo_xdp.errors import EngineError, FramingError
from colo_xdp.proto.ipv4 import PROTO_BY_NUMBER, net_bytes

# Defaults carry QEMU's property names (net/colo-compare.c).
DEFAULT_COMPARE_TIMEOUT_MS = 3000
DEFAULT_EXPIRED_SCAN_CYCLE_MS = 1000
DEFAULT_MAX_QUEUE_SIZE = 1024
# QEMU's HASHTABLE_MAX_SIZE; here a limit with eviction, never a wipe.
DEFAULT_MAX_CONNECTIONS = 16384
DEFAULT_MAX_EVENTS = 65536
NET_BUFSIZE = native.CX_NET_BUFSIZE


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
    """A connection's 5-tuple (ports are 0 for protocols without them)."""

    saddr: str
    daddr: str
    sport: int
    dport: int
    proto: int

    def __str__(self) -> str:
        proto = PROTO_BY_NUMBER.get(self.proto, f"ip{self.proto}")
        return f"{proto} {self.saddr}:{self.sport} > {self.daddr}:{self.dport}"


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
    reason: CheckpointReason
    conn: ConnKey | None
    evidence: tuple[Evidence, ...] = ()


@dataclass(frozen=True)
class Drop:
    side: Side
    reason: DropReason
    conn: ConnKey | None


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


def _framing_error(reason: DropReason, consumed: int) -> FramingError:
    """The FramingError of a stream the engine refused at ``consumed``."""
    what = "a zero-length frame" if reason is DropReason.EMPTY else (
        f"a frame longer than {NET_BUFSIZE} bytes")
    err = FramingError(f"the stream carried {what}; its framing is lost")
    err.reason = reason
    err.consumed = consumed
    return err


@dataclass
class EngineConfig:
    compare_timeout_ms: int = DEFAULT_COMPARE_TIMEOUT_MS
    expired_scan_cycle_ms: int = DEFAULT_EXPIRED_SCAN_CYCLE_MS
    max_queue_size: int = DEFAULT_MAX_QUEUE_SIZE
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    vnet_hdr: bool = False
    max_events: int = DEFAULT_MAX_EVENTS
    evidence_max_bytes: int = 0      # 0: no miscompare evidence kept

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

    @property
    def released_total(self) -> int:
        return sum(self.released.values())

    def dropped_total(self, side: str) -> int:
        return sum(self.dropped[side].values())


def _addr(a: int) -> str:
    return socket.inet_ntoa(struct.pack("=I", a))


def _net(text: str | None, what: str) -> tuple[int, int]:
    """'10.0.0.0/8' -> (address, mask), both in network byte order as ints."""
    try:
        addr, mask = net_bytes(text, what)
    except ValueError as exc:
        raise EngineError(str(exc)) from None
    return struct.unpack("=I", addr)[0], struct.unpack("=I", mask)[0]


_EVIDENCE = struct.Struct("=IBBHIIQ")


def _key(k) -> ConnKey:
    return ConnKey(_addr(k.saddr), _addr(k.daddr), k.sport, k.dport, k.proto)


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
        }
        try:
            self._e = native.EngineCore(cfg)
        except native.NativeError:
            raise EngineError("the engine could not allocate its tables") from None
        self._hdr = 8 if self.config.vnet_hdr else 4

    @property
    def handle(self) -> native.EngineCore:
        """The C engine, for the XDP glue (colo_xdp.native.rx_to_engine)."""
        return self._e

    # -- batch interface (transports) ------------------------------------

    def feed_stream(self, side: Side, chunk, now_ms: int) -> int:
        """Feed whole framed records from ``chunk``; return bytes consumed.

        A partial record at the end is left for the next call.  Raises
        FramingError (with ``consumed``) on a zero-length or oversized record.
        """
        try:
            return self._e.feed_stream(side, chunk, now_ms)
        except native.NativeError as exc:
            reason = DropReason.EMPTY if exc.errno == errno.EBADMSG else DropReason.OVERSIZE
            raise _framing_error(reason, self._e.consumed) from None

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
        out: list[Action] = []
        evidence = self._take_evidence() if self.config.evidence_max_bytes else {}
        for i, ev in enumerate(self._e.events()):
            key = _key(ev.key) if ev.has_key else None
            if ev.kind == native.CX_EV_CHECKPOINT:
                out.append(CheckpointRequest(CheckpointReason(ev.reason), key,
                                             tuple(evidence.get(i, ()))))
            elif ev.kind == native.CX_EV_DROP:
                out.append(Drop(Side(ev.side), DropReason(ev.reason), key))
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

    def set_passthrough(self, rules: list[PassthroughRule]) -> None:
        """Replace the passthrough list; flows it now covers release what
        they hold (primary) and drop the rest (secondary)."""
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
                r[name] = value or 0
        try:
            self._e.set_passthrough(arr)
        except native.NativeError:
            raise EngineError("the engine could not allocate the passthrough list")

    def connections(self) -> list[ConnInfo]:
        """Every connection of the table, in creation order."""
        return [ConnInfo(_key(c.key), bool(c.passthrough), c.queued[0], c.queued[1],
                         c.created_ms, c.last_ms, c.matched, c.released, c.mismatches,
                         c.checkpoints) for c in self._e.conn_snapshot()]

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

    def checkpoint(self) -> None:
        """The COLO frame reports a checkpoint: flush every connection."""
        self._e.checkpoint()

    def failover(self) -> None:
        """Stop comparing for good: flush, then pass primary frames through."""
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

    def checkpoint(self) -> list[Action]:
        super().checkpoint()
        return self.collect()

    def failover(self) -> list[Action]:
        super().failover()
        return self.collect()
