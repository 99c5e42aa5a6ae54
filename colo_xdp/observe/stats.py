"""One snapshot of the service's state, and the table ``colo-xdp stats`` shows.

``snapshot(svc)`` is the body of the control socket's ``stats`` reply and what
the Prometheus exposition is built from, so both always agree.  It runs on
the service's loop (the engine is not thread-safe), costs one counters call
plus, when asked for rows, one call that picks them in C.  ``render`` turns a
snapshot (as JSON gives it back) into the text table; it is pure.
"""
from __future__ import annotations

from typing import Any

from colo_xdp.engine import HOLD_MS_BOUNDS, ConnInfo
from colo_xdp.proto.inet import PROTO_BY_NUMBER

SIDES = ("primary", "secondary")


def _has_peer(ch) -> bool:
    """A chardev channel has its peer when connected; an XDP input when its
    interface's sockets are open (it has no ``sock``)."""
    if hasattr(ch, "sock"):
        return ch.sock is not None
    return getattr(ch, "port", None) is not None


def _conn_row(info: ConnInfo, now_ms: int) -> dict:
    key = info.conn
    proto = PROTO_BY_NUMBER.get(key.proto, str(key.proto))
    return {
        "conn": str(key), "proto": proto, "family": key.family, "vlan": list(key.vlan),
        "src": key.saddr, "sport": key.sport,
        "dst": key.daddr, "dport": key.dport, "passthrough": info.passthrough,
        "held": {"primary": info.queued_primary, "secondary": info.queued_secondary},
        "matched": info.matched, "released": info.released,
        "mismatches": info.mismatches, "checkpoints": info.checkpoints,
        "age_ms": max(now_ms - info.created_ms, 0), "idle_ms": max(now_ms - info.last_ms, 0),
    }


def _hold_ms(c) -> dict:
    """How long released primary frames were held, from the engine's
    histogram: each bucket's own count (not cumulative), keyed by its upper
    bound in ms (``le_0`` ... ``le_8192``, then ``inf``); sum in ms; count
    (every frame released, as released_total)."""
    names = [f"le_{b}" for b in HOLD_MS_BOUNDS] + ["inf"]
    return {"buckets": dict(zip(names, c.hold_ms_buckets)), "sum": c.hold_ms_sum,
            "count": sum(c.hold_ms_buckets)}


def snapshot(svc, connections: int = 0) -> dict[str, Any]:
    """The service's counters and state; ``connections`` rows of the table."""
    c = svc.engine.counters()
    now_ms = svc.now_ms()
    mismatched = sum(c.mismatches.values())
    matched = c.released.get("matched", 0)
    rows: list[dict] = []
    if connections:
        # The engine picks the rows (one pass in C): O(rows) here, whatever
        # the size of the table.
        rows = [_conn_row(i, now_ms) for i in svc.engine.connections(limit=connections)]
    snap: dict[str, Any] = {
        "mode": svc.mode,
        "uptime_s": round(now_ms / 1000.0, 3),
        "failover": svc.failed_over,
        "backpressure": svc.paused,
        # polling before sleeping while frames are held (service.busypoll)
        "busy_poll": svc.poll.stats(),
        "peers": {ch.role: _has_peer(ch) for ch in svc.channels},
        "frames_in": c.frames_in,
        "bytes_in": c.bytes_in,
        "pairs": {"compared": matched + mismatched, "matched": matched,
                  "mismatched": mismatched},
        "mismatches": c.mismatches,
        "released": c.released,
        "released_total": c.released_total,
        "released_bytes": c.released_bytes,
        # how long released primary frames were held: the latency COLO adds
        "hold_ms": _hold_ms(c),
        "secondary": {"matched": c.matched_secondary, "skipped": c.skipped_secondary},
        "held": c.queued,
        "outdev_pending_bytes": svc.engine.output_pending(),
        "max_queue_size": svc.config.engine.max_queue_size,
        "checkpoint_requests": c.checkpoints,
        "checkpoints_done": sum(svc.checkpoints_done.values()),
        "checkpoints_done_by_source": dict(svc.checkpoints_done),
        # Unix time of the last checkpoint done (None: none yet).
        "last_checkpoint_unix": getattr(svc, "last_checkpoint_at", None),
        "dropped": c.dropped,
        # datagrams that came in IP fragments, by side and outcome
        "fragments": c.frag,
        "connections": {
            "count": c.connections, "max": svc.config.engine.max_connections,
            "opened": c.conns_created, "evicted": c.conns_evicted,
            "shown": len(rows), "table": rows,
        },
        "lost": {"events": c.events_lost, "evidence": c.evidence_lost,
                 "outdev_cut": c.outdev_cut, "outdev_unsent": c.outdev_unsent},
        "passthrough_rules": len(svc.passthrough.rules),
        # XDP mode: the classifier's verdict counters, by verdict.
        "verdicts": dict(svc.verdict_counters()) if svc.verdict_counters else {},
        # XDP mode: frames redirected to us that the kernel dropped, by side
        # and reason (they never reached the engine: not in frames_in).
        "kernel_dropped": svc.kernel_drops() if getattr(svc, "kernel_drops", None) else {},
        # XDP mode: per role, the syscalls that woke the kernel (kicks on tx,
        # wakeups on rx: only when a ring asked) against the bursts moved.
        "xdp_wakeups": svc.xdp_wakeups() if getattr(svc, "xdp_wakeups", None) else {},
    }
    if getattr(svc, "qmp", None):
        snap["qmp"] = svc.qmp.stats()
    for part in svc.attachments:
        name, value = part.stats()
        snap[name] = value
    return snap


# -- the table ---------------------------------------------------------------------------

def _n(value: int) -> str:
    return f"{value:,}".replace(",", " ") if value >= 100000 else str(value)


def _by_reason(counts: dict[str, int]) -> str:
    parts = [f"{k} {_n(v)}" for k, v in counts.items() if v]
    return ", ".join(parts) if parts else "none"


def _rate(now: dict, before: dict | None, dt: float, *path: str) -> str:
    if not before or dt <= 0:
        return ""
    a, b = now, before
    for key in path:
        a, b = a[key], b[key]
    return f" ({(a - b) / dt:.0f}/s)"


def _duration(ms: int) -> str:
    s = ms / 1000.0
    if s < 60:
        return f"{s:.1f}s"
    if s < 3600:
        return f"{int(s // 60)}m{int(s % 60):02d}s"
    return f"{int(s // 3600)}h{int(s % 3600 // 60):02d}m"


def _hold_quantile(hold: dict, q: float) -> str:
    """The bucket bound at or under which a fraction q of the hold times are."""
    need, seen = q * hold["count"], 0
    for name, n in hold["buckets"].items():
        seen += n
        if seen >= need:
            return f"> {HOLD_MS_BOUNDS[-1]} ms" if name == "inf" else f"<= {name[3:]} ms"
    return "?"


def render(snap: dict, before: dict | None = None, interval: float = 0.0) -> str:
    """The stats table; with the previous snapshot, per-second rates too."""
    pairs, held = snap["pairs"], snap["held"]
    conns = snap["connections"]
    peers = " ".join(f"{role}{'+' if up else '-'}" for role, up in snap["peers"].items())
    lines = [
        f"colo-xdp {snap['mode']}  up {_duration(int(snap['uptime_s'] * 1000))}  "
        f"failover {'YES' if snap['failover'] else 'no'}  "
        f"backpressure {'ON' if snap['backpressure'] else 'off'}  peers {peers}",
        "",
        f"{'frames in':<21}primary {_n(snap['frames_in']['primary'])}"
        f"{_rate(snap, before, interval, 'frames_in', 'primary')}  "
        f"secondary {_n(snap['frames_in']['secondary'])}"
        f"{_rate(snap, before, interval, 'frames_in', 'secondary')}",
        f"{'pairs':<21}compared {_n(pairs['compared'])}  matched {_n(pairs['matched'])}  "
        f"mismatched {_n(pairs['mismatched'])} ({_by_reason(snap['mismatches'])})",
        f"{'released':<21}{_n(snap['released_total'])}"
        f"{_rate(snap, before, interval, 'released_total')}: {_by_reason(snap['released'])}",
        f"{'held':<21}primary {_n(held['primary'])}  secondary {_n(held['secondary'])}  "
        f"outdev {_n(snap['outdev_pending_bytes'])} B  "
        f"(queue limit {snap['max_queue_size']} per side)",
        f"{'checkpoint requests':<21}{_by_reason(snap['checkpoint_requests'])}  "
        f"(checkpoints done {_n(snap['checkpoints_done'])})",
        f"{'drops primary':<21}{_by_reason(snap['dropped']['primary'])}",
        f"{'drops secondary':<21}{_by_reason(snap['dropped']['secondary'])}",
        f"{'connections':<21}{_n(conns['count'])} of {_n(conns['max'])}  "
        f"opened {_n(conns['opened'])}  evicted {_n(conns['evicted'])}  "
        f"passthrough rules {snap['passthrough_rules']}",
    ]
    hold = snap.get("hold_ms")
    if hold and hold["count"]:
        lines.append(f"{'hold time':<21}mean {hold['sum'] / hold['count']:.1f} ms  "
                     f"p50 {_hold_quantile(hold, 0.5)}  p99 {_hold_quantile(hold, 0.99)}")
    for side, outcomes in snap.get("fragments", {}).items():
        if any(outcomes.values()):
            lines.append(f"{'fragmented ' + side:<21}{_by_reason(outcomes)}")
    lost = {k: v for k, v in snap["lost"].items() if v}
    if lost:
        lines.append(f"{'lost':<21}{_by_reason(lost)}")
    if snap.get("verdicts"):
        lines.append(f"{'xdp verdicts':<21}{_by_reason(snap['verdicts'])}")
    for side, drops in snap.get("kernel_dropped", {}).items():
        lines.append(f"{'kernel drops ' + side:<21}{_by_reason(drops)}")
    for role, counts in snap.get("xdp_wakeups", {}).items():
        lines.append(f"{'af_xdp ' + role:<21}{_by_reason(counts)}")
    if conns["table"]:
        width = max(44, *(len(row["conn"]) for row in conns["table"]))
        lines += ["", f"{'CONNECTION':<{width}} {'PT':>2} {'HELD P/S':>11} {'MATCHED':>9} "
                      f"{'RELEASED':>9} {'MISM':>6} {'CKPT':>6} {'IDLE':>7}"]
        for row in conns["table"]:
            hp = f"{row['held']['primary']}/{row['held']['secondary']}"
            lines.append(f"{row['conn']:<{width}} {'pt' if row['passthrough'] else '':>2} "
                         f"{hp:>11} {row['matched']:>9} {row['released']:>9} "
                         f"{row['mismatches']:>6} {row['checkpoints']:>6} "
                         f"{_duration(row['idle_ms']):>7}")
        if conns["shown"] < conns["count"]:
            lines.append(f"... {conns['count'] - conns['shown']} more "
                         "(--connections N shows more)")
    return "\n".join(lines) + "\n"
