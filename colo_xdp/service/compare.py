"""colo-xdp compare: primary and secondary output around one engine.

Roles and their endpoints (chardev sockets, ``colo_xdp.transport.chardev``,
or guest interfaces in XDP mode, ``colo_xdp.transport.xdp.port``)::

    primary-in  ──▶ ┐                     ┌──▶ outdev
                    ├── engine (C core) ──┤
    secondary-in ─▶ ┘        ▲            ├──▶ notify-dev: DO_CHECKPOINT
                             │            └──▶ attachments: control-socket events,
                             │                 miscompare pcap, /metrics
                             ├──────────────── notify-dev: COLO_CHECKPOINT
                             └──────────────── control socket: checkpoint, failover,
                                               passthrough, stats

The loop, its clock and backpressure are ``colo_xdp.service.loop``; this
module adds the policy: what a checkpoint request, a drop or a connection
event does, checkpoints done, failover, the passthrough list, and the
attachments (``colo_xdp.observe``), served from the same loop and never
doing per-frame work.
"""
from __future__ import annotations

import time
from collections import Counter
from typing import Callable

from colo_xdp.engine import (CheckpointRequest, ConnectionEvicted, ConnectionOpened, Drop,
                             DropReason, Engine, Side)
from colo_xdp.observe.control_server import ControlServer, ServiceTarget
from colo_xdp.observe.log import EventLog, PerSide
from colo_xdp.proto.flows import PassthroughSink, PassthroughTable, format_flow
from colo_xdp.service import signals as sigs
from colo_xdp.service.config import CompareConfig, Endpoint
from colo_xdp.service.loop import Loop, serve_loop
from colo_xdp.transport.chardev.qmp import QmpMonitor
from colo_xdp.transport.chardev.roles import Input, Notify, Outdev
from colo_xdp.transport.xdp.port import XdpIface, XdpInput, XdpOutdev

# One request (DO_CHECKPOINT, a QMP kick) per outstanding checkpoint; asked
# again only when no checkpoint came this long after (the COLO frame missed
# it, or its driver was not connected yet).
CHECKPOINT_RESEND_MS = 1000
DRAIN_ROUNDS_MAX = 256      # chunks per input read at a checkpoint: bounded, as every turn


def _input(svc, role: str, end: Endpoint, side: Side):
    if isinstance(end, XdpIface):
        return XdpInput(svc, role, end, side)
    return Input(svc, role, end, side)


def _outdev(svc, end: Endpoint):
    if isinstance(end, XdpIface):
        return XdpOutdev(svc, "outdev", end)
    return Outdev(svc, "outdev", end)


def _times(count: int) -> dict:
    """A coalesced event's count as a log field, when it is more than one."""
    return {"count": count} if count > 1 else {}


def _sum_verdicts(inputs: list[XdpInput]) -> dict[str, int]:
    total: dict[str, int] = {}
    for inp in inputs:
        for verdict, packets in inp.verdicts().items():
            total[verdict] = total.get(verdict, 0) + packets
    return total


class CompareService(Loop):
    """colo-xdp compare: chardev sockets or XDP interfaces around one engine."""

    def __init__(self, config: CompareConfig, log: EventLog | None = None):
        config.validate()
        super().__init__(Engine(config.engine_config()), log or EventLog())
        self.config = config
        self._failover_requested = False
        self.inputs = [_input(self, "primary-in", config.primary_in, Side.PRIMARY),
                       _input(self, "secondary-in", config.secondary_in, Side.SECONDARY)]
        self.outdev = _outdev(self, config.outdev)
        self.notify = (Notify(self, "notify-dev", config.notify_dev, config.engine.vnet_hdr)
                       if config.notify_dev else None)
        self.qmp = QmpMonitor(self, config.qmp) if config.qmp else None
        # The COLO frame's drivers: checkpoint requests out, checkpoints done in.
        self.colo_drivers = [d for d in (self.notify, self.qmp) if d]
        self.channels = [self.outdev, *self.colo_drivers, *self.inputs]
        self.failed_over = False
        self.checkpoints_done: Counter = Counter()      # by source
        self.last_checkpoint_at: float | None = None    # wall clock of the last one done
        self.draining = False            # reading what the inputs hold at a checkpoint
        self.checkpoint_asked_ms: int | None = None   # last request sent, if outstanding
        xdp_inputs = [i for i in self.inputs if isinstance(i, XdpInput)]
        self.mode = "xdp" if xdp_inputs or isinstance(self.outdev, XdpOutdev) else "chardev"
        # In XDP mode: () -> {verdict: packets}, the classifiers' counters summed.
        self.verdict_counters = (lambda: _sum_verdicts(xdp_inputs)) if xdp_inputs else None
        # In XDP mode: () -> {side: {reason: frames}} the kernel dropped after
        # the classifier redirected them (AF_XDP rx ring full, no UMEM frame).
        self.kernel_drops = (lambda: {i.side.name.lower(): i.kernel_drops()
                                      for i in xdp_inputs}) if xdp_inputs else None
        # In XDP mode: () -> {role: {tx_kicks, tx_batches, rx_wakeups, rx_batches}}.
        xdp_parts = [*xdp_inputs, *([self.outdev] if isinstance(self.outdev, XdpOutdev) else [])]
        self.xdp_wakeups = (lambda: {p.role: p.wakeups() for p in xdp_parts}) if xdp_parts else None
        # Every passthrough change goes to each sink: the engine (last: its
        # commit flushes what the flows a new rule covers hold), in XDP mode
        # the classifiers (XdpInput adds them), the --passthrough-file.
        self.passthrough = PassthroughTable(final=PassthroughSink(
            self.engine.set_passthrough, self.engine.check_passthrough))
        self.passthrough.on_change = lambda op, rule: self.log.event(
            "passthrough_changed", op=op, flow=format_flow(rule),
            rules=len(self.passthrough.rules))
        self.passthrough.replace(config.passthrough)
        if config.passthrough_file:
            # Kept across restarts: every change is written there first.
            from colo_xdp.service.passthrough_file import PassthroughFile
            ptfile = PassthroughFile(config.passthrough_file)
            self.passthrough.add_sink(PassthroughSink(ptfile.write, ptfile.check))
        self.poll.max_s = config.busy_poll_us / 1e6
        self.pcap = None
        self.attachments = self._attachments(config)

    def _attachments(self, config: CompareConfig) -> list:
        """Control socket, /metrics and evidence pcap, as configured (the
        latter two imported only when asked for)."""
        parts: list = []
        if config.control_path or config.control_tcp:
            parts.append(ControlServer(self, ServiceTarget(self), config.control_path,
                                       config.control_tcp, config.control_idle_timeout))
        if config.metrics:
            from colo_xdp.observe.metrics import MetricsServer
            parts.append(MetricsServer(self, *config.metrics))
        if config.miscompare_pcap:
            from colo_xdp.observe.pcap import MiscomparePcap
            self.pcap = MiscomparePcap(self, config.miscompare_pcap,
                                       config.miscompare_pcap_bytes, config.miscompare_pcap_keep)
            parts.append(self.pcap)
        return parts

    def request_failover(self, *_args) -> None:
        """Signal-safe: the loop fails over at its next turn."""
        self._failover_requested = True

    def wake_at_ms(self) -> float:
        """An outstanding DO_CHECKPOINT is sent again on time."""
        if self.checkpoint_asked_ms is None:
            return float("inf")
        return self.checkpoint_asked_ms + CHECKPOINT_RESEND_MS

    def on_turn(self) -> None:
        if self._failover_requested:
            self._failover_requested = False
            self.failover()

    def on_signal(self, signum: int) -> None:
        if signum == sigs.FAILOVER:
            self.failover()
        else:
            super().on_signal(signum)

    def summary_fields(self) -> dict:
        c = self.engine.counters()
        fields = {"frames_in": PerSide(c.frames_in["primary"], c.frames_in["secondary"]),
                  "released": c.released_total,
                  "dropped": PerSide(c.dropped_total("primary"), c.dropped_total("secondary")),
                  "checkpoints_requested": sum(c.checkpoints.values())}
        if self.kernel_drops:            # XDP mode: frames that never reached us
            drops = self.kernel_drops()
            fields["kernel_dropped"] = PerSide(*(sum(drops.get(side, {}).values())
                                                 for side in ("primary", "secondary")))
        return fields

    def close(self) -> None:
        """Read what the inputs still hold (frames the guests sent before the
        stop are counted, never left unread), release everything held (as
        QEMU does when the object goes away), then deliver and close as every
        loop does."""
        self.draining = True             # no checkpoint requests go out now
        try:
            for _ in range(DRAIN_ROUNDS_MAX):
                if not sum(inp.read_now(force=True) for inp in self.inputs):
                    break
                self.engine.checkpoint(self.now_ms())  # released below anyway: keep queues short
                self.after_batch()
        finally:
            self.draining = False
        for inp in self.inputs:          # a record cut short by the stop: counted (truncated)
            if isinstance(inp, Input) and inp.sock is not None:
                inp.disconnected()
        self.engine.checkpoint(self.now_ms())
        self.after_batch()
        super().close()

    # -- engine outputs -------------------------------------------------------------

    def on_events(self, actions: list) -> None:
        """The batch's events, coalesced by the engine (one per kind, reason
        and connection, with a count); the log rate-limits per event name."""
        for action in actions:
            if isinstance(action, CheckpointRequest):
                if self.pcap is not None and action.evidence:
                    self.pcap.record(action)
                self.log.event("checkpoint_requested", reason=action.reason.name.lower(),
                               conn=action.conn or "-", **_times(action.count))
            elif isinstance(action, Drop):
                # Truncated frames are only ever noted by a transport (Input and
                # Outdev .disconnected), which already logged them with more
                # detail; a second line would read as a second drop.
                if action.reason is DropReason.TRUNCATED:
                    continue
                self.log.warning("frame_dropped", side=action.side.name.lower(),
                                 reason=action.reason.name.lower(), conn=action.conn or "-",
                                 **_times(action.count))
            elif isinstance(action, ConnectionOpened):
                self.log.event("connection_opened", level=10, conn=action.conn)
            elif isinstance(action, ConnectionEvicted):
                self.log.event("connection_evicted", level=10, conn=action.conn)
        self._ask_for_checkpoint()

    def _ask_for_checkpoint(self) -> None:
        """One request (DO_CHECKPOINT, the QMP kick) per outstanding
        checkpoint: the engine keeps it until a checkpoint is done, apart
        from its events, so it is never lost.  While a checkpoint's drain
        reads the frames from before it, that very checkpoint answers."""
        if (not self.colo_drivers or self.draining
                or not self.engine.checkpoint_outstanding()):
            return
        now = self.now_ms()
        if (self.checkpoint_asked_ms is not None
                and now - self.checkpoint_asked_ms < CHECKPOINT_RESEND_MS):
            return
        for driver in self.colo_drivers:
            driver.request_checkpoint()
        self.checkpoint_asked_ms = now

    def colo_checkpoint(self, source: str = "notify-dev", flush: bool = True, **fields) -> None:
        """The COLO frame reports a checkpoint: flush (unless the caller has)."""
        if flush:
            self.engine.checkpoint(self.now_ms())
        self.checkpoint_asked_ms = None
        self.checkpoints_done[source] += 1
        self.last_checkpoint_at = time.time()
        self.log.event("checkpoint_done", source=source, **fields)

    def checkpoint_at_stop(self, resumed: Callable[[], bool], **fields) -> bool:
        """The primary stopped for a checkpoint (QMP STOP in COLO): every frame
        it sent before is in our inputs already, none after it can be until
        it resumes.  Read what the inputs hold, flushing as we go, for as
        long as ``resumed()`` says the primary has not resumed; frames read
        after it has are compared as usual.  False when the STOP was read
        too late, after the RESUME: nothing is flushed then (what the
        checkpoint should have released waits for the next one)."""
        if resumed():
            self.log.warning("checkpoint_stop_late", **fields)
            return False
        self.draining = True
        try:
            for _ in range(DRAIN_ROUNDS_MAX):
                got = sum(inp.read_now(force=True) for inp in self.inputs)
                if resumed():
                    break
                self.engine.checkpoint(self.now_ms())
                self.after_batch()
                if not got:
                    break
        finally:
            self.draining = False
        self.colo_checkpoint("qmp", flush=False, **fields)
        return True

    def failover(self, source: str = "signal", why: str | None = None) -> bool:
        """Comparing stops for good: held primary frames are released and
        later ones pass straight through; secondary frames are dropped.
        False if it had already happened."""
        if self.failed_over:
            return False
        self.engine.failover(self.now_ms())
        self.checkpoint_asked_ms = None
        self.failed_over = True
        self.log.warning("failover", source=source, **({"why": why} if why else {}))
        return True


def serve(config: CompareConfig, log: EventLog, on_ready=None) -> CompareService:
    """Open, announce readiness, run until SIGINT/SIGTERM, then close; SIGHUP
    reopens files, SIGUSR1 fails over (the COLO frame's COLO_EVENT_FAILOVER,
    which QEMU delivers in-process), SIGUSR2 logs the counters."""
    svc = CompareService(config, log)
    serve_loop(svc, on_ready, (*sigs.STOP, sigs.REOPEN, sigs.STATUS, sigs.FAILOVER))
    return svc
