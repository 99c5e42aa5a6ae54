"""Prometheus metrics (``--metrics HOST:PORT``), served from the service's loop.

The exposition is prometheus_client's (text format, or OpenMetrics when the
scraper asks for it); the HTTP side is a small non-blocking server on the
service's own selector, so a scrape reads the engine from the one thread
that may touch it (the engine is not thread-safe and cffi releases the GIL
inside C calls: a scrape thread calling into it could race the loop).
Every value comes from ``colo_xdp.observe.stats.snapshot``, the same numbers as the
control socket's ``stats``; docs/observability.md lists the metrics.

HTTP: ``GET /metrics`` (and HEAD); ``/`` says where the metrics are; other
paths 404, other methods 405.  One request per connection; a client gets
``IDLE_S`` seconds from connecting to send its request and read the answer.
"""
from __future__ import annotations

import socket
import time

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily,
                                   HistogramMetricFamily, InfoMetricFamily)
from prometheus_client.utils import floatToGoString
from prometheus_client.exposition import CONTENT_TYPE_LATEST, choose_encoder, generate_latest

from colo_xdp.observe.listener import Client, Listener, listen_tcp
from colo_xdp.observe.stats import snapshot
from colo_xdp.version import VERSION

MAX_HEAD = 8 * 1024      # request line and headers
IDLE_S = 10.0
MAX_CLIENTS = 32
PREFIX = "colo_xdp"



def _counter(name: str, doc: str, labels: tuple[str, ...] = ()) -> CounterMetricFamily:
    return CounterMetricFamily(f"{PREFIX}_{name}", doc, labels=list(labels))


def _gauge(name: str, doc: str, labels: tuple[str, ...] = ()) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"{PREFIX}_{name}", doc, labels=list(labels))


def _hold_histogram(hold: dict) -> HistogramMetricFamily:
    """The snapshot's hold_ms (per-bucket counts keyed le_<ms>, then inf) as
    a Prometheus histogram in seconds: cumulative buckets, +Inf the count."""
    buckets, total = [], 0
    for name, n in hold["buckets"].items():
        total += n
        le = "+Inf" if name == "inf" else floatToGoString(int(name[3:]) / 1000.0)
        buckets.append((le, total))
    m = HistogramMetricFamily(f"{PREFIX}_hold_seconds", "How long primary frames were "
                              "held before release (the latency COLO adds).")
    m.add_metric([], buckets, hold["sum"] / 1000.0)
    return m


def families(s: dict) -> list:
    """Metric families from a stats snapshot (colo_xdp.observe.stats.snapshot)."""
    out = []

    out.append(InfoMetricFamily(PREFIX, "colo-xdp version and mode",
                                value={"version": VERSION, "mode": s["mode"]}))

    frames = _counter("frames", "Frames received, by side.", ("side",))
    nbytes = _counter("bytes", "Bytes of frames received, by side.", ("side",))
    for side in ("primary", "secondary"):
        frames.add_metric([side], s["frames_in"][side])
        nbytes.add_metric([side], s["bytes_in"][side])
    out += [frames, nbytes]

    m = _counter("pairs_compared", "Primary frames compared with the secondary "
                 "(matched plus mismatches).")
    m.add_metric([], s["pairs"]["compared"])
    out.append(m)
    m = _counter("mismatches", "Compares that found a difference, by protocol.", ("proto",))
    for proto, n in s["mismatches"].items():
        m.add_metric([proto], n)
    out.append(m)

    m = _counter("checkpoint_requests", "Checkpoints requested, by reason.", ("reason",))
    for reason, n in s["checkpoint_requests"].items():
        m.add_metric([reason], n)
    out.append(m)
    m = _counter("checkpoints", "Checkpoints done, by what reported them "
                 "(notify-dev, qmp, control).", ("source",))
    for source, n in s.get("checkpoints_done_by_source", {}).items():
        m.add_metric([source], n)
    out.append(m)
    if s.get("last_checkpoint_unix") is not None:
        m = _gauge("last_checkpoint_timestamp_seconds", "Unix time of the last checkpoint "
                   "done (absent until one is).")
        m.add_metric([], s["last_checkpoint_unix"])
        out.append(m)
    if "qmp" in s:
        m = _counter("qmp_checkpoint_kicks", "With --qmp: checkpoint requests and the kicks "
                     "sent to QEMU's COLO thread, by outcome.", ("outcome",))
        for outcome in ("requests", "kicks", "coalesced", "retries", "undelivered"):
            m.add_metric([outcome], s["qmp"][outcome])
        out.append(m)

    m = _counter("released_frames", "Primary frames released to the outdev, by reason.",
                 ("reason",))
    for reason, n in s["released"].items():
        m.add_metric([reason], n)
    out.append(m)
    m = _counter("released_bytes", "Bytes of primary frames released.")
    m.add_metric([], s["released_bytes"])
    out.append(m)
    if "hold_ms" in s:
        out.append(_hold_histogram(s["hold_ms"]))
    m = _counter("secondary_consumed", "Secondary frames consumed without a drop: "
                 "matched, or skipped by the TCP rules.", ("how",))
    for how, n in s["secondary"].items():
        m.add_metric([how], n)
    out.append(m)

    m = _counter("dropped_frames", "Frames dropped, by side and reason.", ("side", "reason"))
    for side, reasons in s["dropped"].items():
        for reason, n in reasons.items():
            m.add_metric([side, reason], n)
    out.append(m)

    m = _counter("fragmented_datagrams", "IP datagrams that came in fragments, by side and "
                 "outcome (reassembled, timed_out, overlap, over_limit).", ("side", "outcome"))
    for side, outcomes in s.get("fragments", {}).items():
        for outcome, n in outcomes.items():
            m.add_metric([side, outcome], n)
    out.append(m)

    m = _gauge("queued_frames", "Frames held waiting for a compare, by side.", ("side",))
    for side, n in s["held"].items():
        m.add_metric([side], n)
    out.append(m)
    m = _gauge("outdev_pending_bytes", "Released bytes not yet written to the outdev.")
    m.add_metric([], s["outdev_pending_bytes"])
    out.append(m)

    conns = s["connections"]
    m = _gauge("connections", "Connections in the table.")
    m.add_metric([], conns["count"])
    out.append(m)
    m = _gauge("connections_max", "Size of the connection table.")
    m.add_metric([], conns["max"])
    out.append(m)
    m = _counter("connections_opened", "Connections added to the table.")
    m.add_metric([], conns["opened"])
    out.append(m)
    m = _counter("connections_evicted", "Idle connections evicted to make room.")
    m.add_metric([], conns["evicted"])
    out.append(m)

    m = _counter("lost", "Records the engine could not keep: events past max_events, "
                 "evidence frames past the evidence buffer, outdev frames cut short, "
                 "frames left unsent in a closed AF_XDP socket's tx ring.",
                 ("what",))
    for what, n in s["lost"].items():
        m.add_metric([what], n)
    out.append(m)

    for name, doc, value in (
            ("failover", "1 once failover happened: comparing stopped for good.",
             s["failover"]),
            ("backpressure", "1 while the inputs are not read because the outdev is behind.",
             s["backpressure"]),
            ("passthrough_rules", "Rules on the passthrough list.", s["passthrough_rules"])):
        m = _gauge(name, doc)
        m.add_metric([], int(value))
        out.append(m)
    m = _counter("busy_polls", "Polls before sleeping while frames were held, by outcome: "
                 "hit (input came while polling), miss (ran out, slept), contended (the "
                 "CPU was shared: no polling for a second).", ("outcome",))
    for outcome, key in (("hit", "hits"), ("miss", "misses"), ("contended", "contended")):
        m.add_metric([outcome], s["busy_poll"][key])
    out.append(m)
    m = _gauge("peer_connected", "1 while the role's peer is connected.", ("role",))
    for role, up in s["peers"].items():
        m.add_metric([role], int(up))
    out.append(m)

    m = _counter("xdp_verdicts", "XDP mode: packets by classifier verdict "
                 "(no samples in chardev mode).", ("verdict",))
    for verdict, n in s["verdicts"].items():
        m.add_metric([verdict], n)
    out.append(m)
    m = _counter("xdp_kernel_dropped", "XDP mode: frames the classifier redirected that "
                 "the kernel dropped before we read them (AF_XDP rx ring full, no UMEM "
                 "frame); not in frames_in.", ("side", "reason"))
    for side, drops in s.get("kernel_dropped", {}).items():
        for reason, n in drops.items():
            m.add_metric([side, reason], n)
    out.append(m)
    m = _counter("xdp_ring_calls", "XDP mode: AF_XDP bursts moved (tx_batches, rx_batches) "
                 "and the syscalls that woke the kernel for them (tx_kicks, rx_wakeups).",
                 ("role", "what"))
    for role, counts in s.get("xdp_wakeups", {}).items():
        for what, n in counts.items():
            m.add_metric([role, what], n)
    out.append(m)

    control = s.get("control")
    if control:
        m = _gauge("control_subscribers", "Control connections subscribed to events.")
        m.add_metric([], control["subscribers"])
        out.append(m)
        m = _counter("control_events_lost", "Events a slow subscriber did not get.")
        m.add_metric([], control["events_lost"])
        out.append(m)
    pcap = s.get("miscompare_pcap")
    if pcap:
        m = _counter("miscompare_pcap_frames", "Evidence frames written to the pcap.")
        m.add_metric([], pcap["frames"])
        out.append(m)
        m = _counter("miscompare_pcap_errors", "Evidence frames not written (file errors).")
        m.add_metric([], pcap["errors"])
        out.append(m)
    return out


def _encoder(accept: str):
    """prometheus_client's choice for this Accept header; the plain text format
    when it cannot parse the header (it raises TypeError for a version such
    as ``version=abc``): a scraper's typo gets metrics, never a dead service."""
    try:
        return choose_encoder(accept)
    except Exception:      # noqa: BLE001 - any parse failure inside the library
        return generate_latest, CONTENT_TYPE_LATEST


class ServiceCollector:
    """prometheus_client collector over the service (runs on its loop only)."""

    def __init__(self, svc):
        self.svc = svc

    def collect(self):
        return families(snapshot(self.svc, 0))


class HttpSession(Client):
    """One scrape: read the request head, answer, close."""

    def __init__(self, server: "MetricsServer", sock: socket.socket):
        self.server = server
        self.head = bytearray()
        self.deadline = time.monotonic() + IDLE_S
        super().__init__(server.svc, sock, server.clients, out_high=1 << 30)

    def on_data(self, data: bytes) -> None:
        self.head += data
        end = self.head.find(b"\r\n\r\n")
        if end < 0:
            end = self.head.find(b"\n\n")
        if end < 0:
            if len(self.head) > MAX_HEAD:
                self._respond(431, b"request header too large\n")
            return
        self._handle(bytes(self.head[:end]).decode("latin-1"))

    def on_eof(self) -> None:
        self.close()

    def _handle(self, head: str) -> None:
        lines = head.replace("\r\n", "\n").split("\n")
        parts = lines[0].split()
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            self._respond(400, b"bad request\n")
            return
        method, target, _ = parts
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if method not in ("GET", "HEAD"):
            self._respond(405, b"only GET and HEAD\n", extra="Allow: GET, HEAD\r\n")
            return
        path = target.split("?", 1)[0]
        head_only = method == "HEAD"
        if path == "/metrics":
            encoder, ctype = _encoder(headers.get("accept", ""))
            try:
                body = encoder(self.server.registry)
            except Exception as exc:   # a bug must not take the COLO service down with it
                self.svc.log.warning("control_error", role="metrics",
                                     error=f"{type(exc).__name__}: {exc}")
                self._respond(500, b"internal error; the service logged it\n")
                return
            self._respond(200, body, ctype, head_only=head_only)
        elif path == "/":
            self._respond(200, b"colo-xdp: metrics are at /metrics\n", head_only=head_only)
        else:
            self._respond(404, b"not found: metrics are at /metrics\n", head_only=head_only)

    def _respond(self, status: int, body: bytes, ctype: str = "text/plain; charset=utf-8",
                 extra: str = "", head_only: bool = False) -> None:
        reason = {200: "OK", 400: "Bad Request", 404: "Not Found",
                  405: "Method Not Allowed", 431: "Request Header Fields Too Large",
                  500: "Internal Server Error"}[status]
        header = (f"HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\n"
                  f"Content-Length: {len(body)}\r\n{extra}Connection: close\r\n\r\n")
        self.send(header.encode("latin-1") + (b"" if head_only else body))
        self.close_when_flushed = True


class MetricsServer:
    """``--metrics HOST:PORT``: an attachment of CompareService."""

    name = "metrics"

    def __init__(self, svc, host: str, port: int):
        self.svc = svc
        self.host, self.port = host, port
        self.listener: Listener | None = None
        self.clients: list[HttpSession] = []
        self.registry = CollectorRegistry()
        self.registry.register(ServiceCollector(svc))
        ProcessCollector(registry=self.registry)

    def open(self) -> None:
        sock = listen_tcp(self.host, self.port, "metrics")
        self.listener = Listener(self.svc, sock, lambda s: HttpSession(self, s), MAX_CLIENTS,
                                 self.clients, "metrics")

    def close(self) -> None:
        for client in list(self.clients):
            client.close()
        if self.listener:
            self.listener.close()
            self.listener = None

    def tick(self, now: float) -> None:
        for client in [c for c in self.clients if now >= c.deadline]:
            client.close()

    def end_batch(self) -> None:
        pass

    def stats(self) -> tuple[str, dict]:
        return self.name, {"address": f"{self.host}:{self.port}", "clients": len(self.clients)}
