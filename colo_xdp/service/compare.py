"""The chardev service: sockets and the clock around one engine.

One thread, one selector.  Each loop turn reads at most one bounded chunk
from each input that is ready (so a side that runs ahead cannot starve the
other), feeds it to the engine in one call, writes what the engine released
to the outdev, and sends a ``DO_CHECKPOINT`` for every checkpoint request.
When the outdev cannot keep up, released frames wait in the engine's out
buffer; past a high-water mark the inputs are no longer read (backpressure)
until it drains, so nothing is lost and nothing is reordered.

Roles and their sockets::

    primary-in  ──▶ ┐                     ┌──▶ outdev
                    ├── engine (C core) ──┤
    secondary-in ─▶ ┘        ▲            ├──▶ notify-dev: DO_CHECKPOINT
                             │            └──▶ attachments: control-socket events,
                             │                 miscompare pcap, /metrics
                             ├──────────────── notify-dev: COLO_CHECKPOINT
                             └──────────────── control socket: checkpoint, failover,
                                               passthrough, stats

Attachments (``colo_xdp.observe.control_server``, ``colo_xdp.observe.metrics``,
``colo_xdp.observe.pcap``) are served from the same loop: ``open``/``close`` with the
service, ``end_batch`` after every batch, ``tick`` every turn, ``stats`` for
the snapshot.  None of them does per-frame work.
"""
from __future__ import annotations

import errno
import select
import selectors
import signal
import socket
import time
from collections import Counter
from dataclasses import dataclass, field

from colo_xdp.proto.control import PassthroughTable, format_flow
from colo_xdp.observe.control_server import ControlServer, ServiceTarget
from colo_xdp.engine import (CheckpointRequest, ConnectionEvicted, ConnectionOpened, Drop,
                             DropReason, Engine, EngineConfig, FramingError, PassthroughRule,
                             Side)
from colo_xdp.observe.log import EventLog
from colo_xdp.observe.listener import is_loopback
from colo_xdp.proto.notify import DO_CHECKPOINT_RECORD, NotifyEvent, NotifyProtocol
from colo_xdp.transport.chardev import endpoint as chardev
from colo_xdp.transport.chardev.endpoint import EndpointError, Spec
from colo_xdp.proto.framing import NET_BUFSIZE

READ = selectors.EVENT_READ
WRITE = selectors.EVENT_WRITE

CHUNK = 64 * 1024                  # one read per input per turn, at most
OUT_HIGH_WATER = 8 * 1024 * 1024   # stop reading inputs above this much output
OUT_LOW_WATER = 1 * 1024 * 1024    # ... and resume below this
NOTIFY_OUT_MAX = 64 * 1024         # DO_CHECKPOINT bytes kept for a slow peer
SHUTDOWN_DRAIN_S = 2.0             # how long to try delivering at exit
IFACE_CHECK_S = 1.0                # XDP mode: how often to look for a vanished interface
MAX_SLEEP_S = 0.5
EVIDENCE_MAX_BYTES = 4 * 1024 * 1024   # miscompare frames kept per batch for the pcap


@dataclass(frozen=True)
class XdpIface:
    """A guest's (or an uplink's) interface in XDP mode, as a role's endpoint."""

    name: str
    mode: str = "native"          # or "generic"

    def __str__(self) -> str:
        return f"xdp:{self.name}"


Endpoint = Spec | XdpIface


@dataclass
class ServiceConfig:
    primary_in: Endpoint
    secondary_in: Endpoint
    outdev: Endpoint
    notify_dev: Spec | None = None
    engine: EngineConfig = field(default_factory=EngineConfig)
    control_path: str | None = None              # unix control socket, mode 0600
    control_tcp: tuple[str, int] | None = None   # loopback TCP control socket
    metrics: tuple[str, int] | None = None       # Prometheus exposition
    miscompare_pcap: str | None = None
    miscompare_pcap_bytes: int = 64_000_000
    miscompare_pcap_keep: int = 4
    passthrough: list[PassthroughRule] = field(default_factory=list)

    def check(self) -> None:
        """One sentence for the first problem: two roles on one socket, a
        control socket off loopback."""
        roles = {"primary-in": self.primary_in, "secondary-in": self.secondary_in,
                 "outdev": self.outdev}
        ifaces = {role: end.name for role, end in roles.items() if isinstance(end, XdpIface)}
        if len(set(ifaces.values())) < len(ifaces):
            raise chardev.SpecError(f"{' and '.join(ifaces)} name the same interface; "
                                    "each role needs its own")
        roles = {role: end for role, end in roles.items() if isinstance(end, Spec)}
        if self.notify_dev:
            roles["notify-dev"] = self.notify_dev
        if self.control_path:
            roles["control"] = Spec("unix", path=self.control_path)
        for role, addr in (("control-tcp", self.control_tcp), ("metrics", self.metrics)):
            if addr:
                roles[role] = Spec("tcp", host=addr[0], port=addr[1])
        chardev.check_distinct(roles)
        if self.control_tcp and not is_loopback(self.control_tcp[0]):
            raise chardev.SpecError(
                f"--control-tcp must listen on a loopback address such as 127.0.0.1, not "
                f"{self.control_tcp[0]}: the control socket has no authentication")
        if self.miscompare_pcap and not self.engine.evidence_max_bytes:
            self.engine.evidence_max_bytes = EVIDENCE_MAX_BYTES
        self.engine.validate()


class Channel:
    """One role's socket: a listener serving one peer at a time (as QEMU's
    socket chardev does), or a connector that may retry."""

    def __init__(self, svc: "Service", role: str, spec: Spec):
        self.svc = svc
        self.role = role
        self.spec = spec
        self.listener: socket.socket | None = None
        self.sock: socket.socket | None = None
        self.retry_at: float | None = None
        # A retry's non-blocking connect in progress, and when to give it up.
        self.connecting: socket.socket | None = None
        self.connect_deadline = 0.0

    # -- lifecycle ---------------------------------------------------------

    def open(self) -> None:
        if self.spec.server:
            self.listener = chardev.listen(self.spec)
            self.svc.watch(self.listener, READ, self._accept)
        else:
            try:
                self._attach(chardev.connect(self.spec))
            except EndpointError as exc:
                if not self.spec.reconnect:
                    raise EndpointError(exc.errno, f"{self.role}: {exc.strerror}; add "
                                        ",reconnect=SECONDS to keep trying") from None
                self.svc.log.warning("connect_failed", role=self.role, error=exc.strerror,
                                     retry_s=self.spec.reconnect)
                self.retry_at = time.monotonic() + self.spec.reconnect

    def shutdown(self) -> None:
        self._abort_connect()
        self._detach()
        if self.listener:
            self.svc.unwatch(self.listener)
            self.listener.close()
            self.listener = None
            chardev.cleanup(self.spec)

    def maybe_retry(self, now: float) -> None:
        """Runs every loop turn.  Retries never block the loop: the connect is
        started here and finished in _connect_done when the socket is writable
        (a blocking connect to a host that drops SYNs would stall every role
        for CONNECT_TIMEOUT_S at each retry)."""
        if self.connecting and now >= self.connect_deadline:
            self._abort_connect()
            self._retry_later(now, f"cannot connect to {self.spec}: timed out")
        if self.retry_at is None or now < self.retry_at or self.sock or self.connecting:
            return
        self.retry_at = None
        try:
            self.connecting = chardev.connect_start(self.spec)
        except EndpointError as exc:
            self._retry_later(now, exc.strerror)
            return
        self.connect_deadline = now + chardev.CONNECT_TIMEOUT_S
        self.svc.watch(self.connecting, WRITE, self._connect_done)

    def _connect_done(self, mask: int) -> None:
        sock, self.connecting = self.connecting, None
        self.svc.unwatch(sock)
        try:
            self._attach(chardev.connect_finish(self.spec, sock))
        except EndpointError as exc:
            self._retry_later(time.monotonic(), exc.strerror)

    def _abort_connect(self) -> None:
        if self.connecting:
            self.svc.unwatch(self.connecting)
            self.connecting.close()
            self.connecting = None

    def _retry_later(self, now: float, error: str) -> None:
        self.svc.log.warning("connect_failed", role=self.role, error=error,
                             retry_s=self.spec.reconnect)
        self.retry_at = now + (self.spec.reconnect or 1.0)

    def _accept(self, mask: int) -> None:
        try:
            sock, _ = self.listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:              # EMFILE, ENOBUFS, ...: try again later
            self.svc.log.warning("accept_failed", role=self.role,
                                 error=exc.strerror or str(exc))
            return
        sock.setblocking(False)
        chardev.tune(sock)
        self.svc.unwatch(self.listener)      # one peer at a time
        self._attach(sock)

    def _attach(self, sock: socket.socket) -> None:
        self.sock = sock
        self.svc.log.event("connected", role=self.role, endpoint=self.spec)
        self.connected()

    def _detach(self) -> None:
        if self.sock:
            self.svc.unwatch(self.sock)
            self.sock.close()
            self.sock = None

    def lost(self, why: str, reconnect_now: bool = False) -> None:
        """The peer is gone (or its stream broken): close, then listen or retry."""
        self._detach()
        self.svc.log.warning("disconnected", role=self.role, endpoint=self.spec, why=why)
        self.disconnected()
        if self.spec.server:
            self.svc.watch(self.listener, READ, self._accept)
        elif self.spec.reconnect or reconnect_now:
            self.retry_at = time.monotonic() + (0 if reconnect_now else self.spec.reconnect)

    # -- hooks ---------------------------------------------------------------

    def connected(self) -> None:
        pass

    def disconnected(self) -> None:
        pass


class Input(Channel):
    """primary-in or secondary-in: framed frames into the engine."""

    def __init__(self, svc: "Service", role: str, spec: Spec, side: Side):
        super().__init__(svc, role, spec)
        self.side = side
        # Room for one chunk behind the longest partial record.
        self.buf = bytearray(CHUNK + NET_BUFSIZE + 8)
        self.view = memoryview(self.buf)
        self.start = self.end = 0

    def connected(self) -> None:
        if not self.svc.paused:
            self.svc.watch(self.sock, READ, self._readable)

    def disconnected(self) -> None:
        if self.end > self.start:       # the peer left in the middle of a record
            self.svc.engine.note_drop(self.side, DropReason.TRUNCATED)
            self.svc.log.warning("frame_dropped", side=self.side.name.lower(),
                                 reason="truncated", bytes=self.end - self.start)
        self.start = self.end = 0

    def pause(self, paused: bool) -> None:
        if not self.sock:
            return
        if paused:
            self.svc.unwatch(self.sock)
        else:
            self.svc.watch(self.sock, READ, self._readable)

    def _readable(self, mask: int) -> None:
        if self.end + CHUNK > len(self.buf):      # slide the partial record down
            n = self.end - self.start
            self.buf[:n] = bytes(self.view[self.start:self.end])
            self.start, self.end = 0, n
        try:
            n = self.sock.recv_into(self.view[self.end:self.end + CHUNK])
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self.lost(exc.strerror or str(exc))
            return
        if n == 0:
            self.lost("peer closed the stream")
            return
        self.end += n
        try:
            used = self.svc.engine.feed_stream(self.side, self.view[self.start:self.end],
                                               self.svc.now_ms())
        except FramingError as exc:
            self.start = self.end = 0
            self.svc.log.warning("stream_broken", role=self.role, reason=exc.reason.name.lower(),
                                 error=str(exc))
            self.lost("framing lost", reconnect_now=True)
            self.svc.after_batch()
            return
        self.start += used
        if self.start == self.end:
            self.start = self.end = 0
        self.svc.after_batch()


class Outdev(Channel):
    """Where released primary frames go, in order, never dropped for slowness."""

    writing = False

    @property
    def has_peer(self) -> bool:
        return self.sock is not None

    def wait_writable(self, timeout: float) -> None:
        if self.sock:
            select.select([], [self.sock], [], timeout)

    def connected(self) -> None:
        self.writing = False
        self.svc.watch(self.sock, READ, self._ready)
        self.write_pending()

    def disconnected(self) -> None:
        if self.svc.engine.abandon_partial_output():
            self.svc.log.warning("outdev_cut", why="outdev closed in the middle of a frame")
        self.writing = False

    def _ready(self, mask: int) -> None:
        if mask & READ:
            try:
                data = self.sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                data = None
            except OSError as exc:
                self.lost(exc.strerror or str(exc))
                return
            if data == b"":
                self.lost("peer closed the stream")
                return
        if mask & WRITE:
            self.write_pending()

    def write_pending(self) -> None:
        if not self.sock:
            return
        engine = self.svc.engine
        while True:
            out = engine.output()
            if not out:
                break
            try:
                n = self.sock.send(out)
            except (BlockingIOError, InterruptedError):
                n = 0
            except OSError as exc:
                out.release()
                self.lost(exc.strerror or str(exc))
                return
            out.release()
            if n == 0:
                break
            engine.consume_output(n)
        want = bool(engine.output_pending())
        if want != self.writing:
            self.writing = want
            self.svc.watch(self.sock, READ | (WRITE if want else 0), self._ready)


class Notify(Channel):
    """notify-dev: DO_CHECKPOINT out, COLO_CHECKPOINT in."""

    def __init__(self, svc: "Service", role: str, spec: Spec, vnet: bool):
        super().__init__(svc, role, spec)
        self.vnet = vnet
        self.proto = NotifyProtocol(vnet)
        self.out = bytearray()
        self.suppressed = 0

    def connected(self) -> None:
        self.proto = NotifyProtocol(self.vnet)
        self.svc.watch(self.sock, READ, self._ready)
        self._flush()

    def disconnected(self) -> None:
        self.out.clear()

    def request_checkpoint(self) -> None:
        if not self.sock:
            return
        if len(self.out) >= NOTIFY_OUT_MAX:   # the peer is not reading: it has enough
            self.suppressed += 1
            return
        self.out += DO_CHECKPOINT_RECORD
        self._flush()

    def _ready(self, mask: int) -> None:
        if mask & WRITE:
            self._flush()
        if not mask & READ or not self.sock:
            return
        try:
            data = self.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self.lost(exc.strerror or str(exc))
            return
        if not data:
            self.lost("peer closed the stream")
            return
        reply, events, error = self.proto.receive(data)
        if reply:
            self.out += reply
            self._flush()
        for kind, msg in events:
            if kind is NotifyEvent.CHECKPOINT:
                self.svc.colo_checkpoint()
            elif kind is NotifyEvent.INIT:
                self.svc.log.event("notify_init", role=self.role)
            else:
                self.svc.log.warning("notify_unknown_message", message=msg[:64])
        if error:
            self.svc.log.warning("stream_broken", role=self.role, error=error)
            self.lost("framing lost", reconnect_now=True)

    def _flush(self) -> None:
        if not self.sock:
            return
        try:
            n = self.sock.send(self.out) if self.out else 0
        except (BlockingIOError, InterruptedError):
            n = 0
        except OSError as exc:
            self.lost(exc.strerror or str(exc))
            return
        del self.out[:n]
        self.svc.watch(self.sock, READ | (WRITE if self.out else 0), self._ready)


class XdpInput:
    """A guest interface in XDP mode: the classifier and an AF_XDP socket per
    rx queue; each ready socket gives one burst per loop turn to the engine.
    ``classify_as`` is the classifier's side, ``feed_as`` the engine's (they
    differ only for ``forward``)."""

    def __init__(self, svc, role: str, iface: XdpIface, classify_as: Side,
                 feed_as: Side | None = None):
        self.svc = svc
        self.role = role
        self.iface = iface
        self.classify_as = classify_as
        self.side = classify_as if feed_as is None else feed_as
        self.port = None
        self.ifindex = 0
        self.next_check = 0.0
        # Counters of ports given up (the interface went away): the live
        # port's counters start from zero, these keep the totals whole.
        self.carried_verdicts: Counter = Counter()
        self.carried_drops: Counter = Counter()
        self.drops_logged = 0

    def open(self) -> None:
        from colo_xdp.transport.xdp.classifier import Mode
        from colo_xdp.transport.xdp.port import XdpPort, XdpPortError
        table = getattr(self.svc, "passthrough", None)
        self.port = XdpPort(self.iface.name, self.classify_as, mode=Mode(self.iface.mode),
                            rules=table.rules if table else ())
        try:
            self.port.open()
        except XdpPortError as exc:
            self.port = None
            raise EndpointError(errno.EIO, f"{self.role}: {exc}") from None
        if table:
            table.add_sink(self.port.set_rules)
        self.ifindex = socket.if_nametoindex(self.iface.name)
        self.pause(self.svc.paused)
        self.svc.log.event("xdp_attached", role=self.role, iface=self.iface.name,
                           mode=self.iface.mode, queues=len(self.port.sockets))

    def _reader(self, sock):
        from colo_xdp.transport.xdp.port import XdpPortError, rx_to_engine

        def readable(mask: int) -> None:
            try:
                rx_to_engine(sock, self.svc.engine, self.side, self.svc.now_ms())
            except XdpPortError as exc:
                self.svc.log.warning("xdp_rx_failed", role=self.role, error=str(exc))
            self.svc.after_batch()
        return readable

    def pause(self, paused: bool) -> None:
        """Backpressure: unread frames wait in the rx rings (the kernel drops
        and counts past them: a guest cannot be told to wait)."""
        for sock in self.port.sockets if self.port else ():
            if paused:
                self.svc.unwatch(sock)
            else:
                self.svc.watch(sock, READ, self._reader(sock))

    def maybe_retry(self, now: float) -> None:
        """Once a second: is the interface still the one attached to?  One
        that went away (or was made anew) is given up with a log line, and
        attached to again as soon as it is back."""
        if now < self.next_check:
            return
        self.next_check = now + IFACE_CHECK_S
        self.log_kernel_drops()
        try:
            index = socket.if_nametoindex(self.iface.name)
        except OSError:
            index = 0
        if self.port and index != self.ifindex:
            self.svc.log.warning("xdp_iface_gone", role=self.role, iface=self.iface.name)
            self.shutdown()
        if not self.port and index:
            try:
                self.open()
            except EndpointError as exc:
                self.svc.log.warning("xdp_attach_failed", role=self.role, error=exc.strerror)

    def verdicts(self) -> dict[str, int]:
        live = self.port.verdicts() if self.port else {}
        return {v: self.carried_verdicts[v] + live.get(v, 0)
                for v in {**self.carried_verdicts, **live}}

    def kernel_drops(self) -> dict[str, int]:
        """Frames the kernel dropped on their way to our sockets, by reason."""
        from colo_xdp.transport.xdp.port import KERNEL_DROP_REASONS
        live = self.port.kernel_drops() if self.port else {}
        return {r: self.carried_drops[r] + live.get(r, 0) for r in KERNEL_DROP_REASONS}

    def log_kernel_drops(self) -> None:
        """A warning when the kernel dropped frames since the last one (once
        a second at most: the counters are exact in stats and metrics)."""
        drops = self.kernel_drops()
        total = sum(drops.values())
        if total > self.drops_logged:
            self.svc.log.warning("xdp_kernel_dropped", role=self.role,
                                 side=self.side.name.lower(), new=total - self.drops_logged,
                                 total=total, **drops)
            self.drops_logged = total

    def shutdown(self) -> None:
        if self.port:
            self.log_kernel_drops()
            self.carried_verdicts.update(self.port.verdicts())
            self.carried_drops.update(self.port.kernel_drops())
            self.pause(True)
            table = getattr(self.svc, "passthrough", None)
            if table:
                table.remove_sink(self.port.set_rules)
            self.port.close()
            self.port = None
            self.svc.log.event("xdp_detached", role=self.role, iface=self.iface.name)


class XdpOutdev:
    """Released frames sent with AF_XDP on an interface (``xdp:IFACE``)."""

    def __init__(self, svc, role: str, iface: XdpIface):
        self.svc = svc
        self.role = role
        self.iface = iface
        self.sock = None
        self.writing = False

    @property
    def has_peer(self) -> bool:
        return self.sock is not None

    def open(self) -> None:
        from colo_xdp.transport.xdp.xsk import XskError, XskSocket
        sock = XskSocket(self.iface.name, 0)
        try:
            sock.open()
        except XskError as exc:
            raise EndpointError(errno.EIO, f"{self.role}: {exc}") from None
        self.sock = sock
        self.svc.log.event("connected", role=self.role, endpoint=self.iface)

    def write_pending(self) -> None:
        from colo_xdp.transport.xdp.port import XdpPortError, tx_from_engine
        if not self.sock:
            return
        engine = self.svc.engine
        try:
            while engine.output_pending() and tx_from_engine(self.sock, engine):
                pass
        except XdpPortError as exc:
            self.svc.log.warning("disconnected", role=self.role, endpoint=self.iface,
                                 why=str(exc))
            self.shutdown()
            return
        want = bool(engine.output_pending())     # the tx ring is full: wait for room
        if want != self.writing:
            self.writing = want
            if want:
                self.svc.watch(self.sock, WRITE, lambda mask: self.write_pending())
            else:
                self.svc.unwatch(self.sock)

    def wait_writable(self, timeout: float) -> None:
        if self.sock:
            select.select([], [self.sock], [], timeout)

    def maybe_retry(self, now: float) -> None:
        pass

    def shutdown(self) -> None:
        if self.sock:
            self.svc.unwatch(self.sock)
            self.sock.close()
            self.sock = None


def _sum_verdicts(inputs: list[XdpInput]) -> dict[str, int]:
    total: dict[str, int] = {}
    for inp in inputs:
        for verdict, packets in inp.verdicts().items():
            total[verdict] = total.get(verdict, 0) + packets
    return total


def _input(svc, role: str, end: Endpoint, side: Side):
    if isinstance(end, XdpIface):
        return XdpInput(svc, role, end, side)
    return Input(svc, role, end, side)


def _outdev(svc, end: Endpoint):
    if isinstance(end, XdpIface):
        return XdpOutdev(svc, "outdev", end)
    return Outdev(svc, "outdev", end)


class Loop:
    """One thread, one selector, one engine: what every role is served by.
    Roles call ``watch``/``unwatch`` with a handler taking the event mask, read
    the engine's clock with ``now_ms`` and report with ``after_batch``."""

    def __init__(self, engine: Engine, log: EventLog):
        self.engine = engine
        self.log = log
        self.sel = selectors.DefaultSelector()
        self.paused = False              # inputs not read: the output is backed up
        self._stop = False
        self._t0 = time.monotonic()

    def watch(self, sock, events: int, handler) -> None:
        try:
            self.sel.modify(sock, events, handler)
        except KeyError:
            self.sel.register(sock, events, handler)

    def unwatch(self, sock) -> None:
        try:
            self.sel.unregister(sock)
        except (KeyError, ValueError):
            pass

    def now_ms(self) -> int:
        return int((time.monotonic() - self._t0) * 1000)

    def stop(self, *_args) -> None:
        self._stop = True

    def after_batch(self) -> None:
        raise NotImplementedError

    def drain_output(self) -> None:
        """At exit: try, for a moment, to deliver what the engine released."""
        end = time.monotonic() + SHUTDOWN_DRAIN_S
        while self.engine.output_pending() and self.outdev.has_peer and time.monotonic() < end:
            self.outdev.wait_writable(0.05)
            self.outdev.write_pending()
        left = self.engine.output_pending()
        if left:
            self.log.warning("undelivered_at_exit", bytes=left)


class Service(Loop):
    """colo-xdp compare: chardev sockets or XDP interfaces around one engine."""

    def __init__(self, config: ServiceConfig, log: EventLog | None = None):
        config.check()
        super().__init__(Engine(config.engine), log or EventLog())
        self.config = config
        self._failover_requested = False
        self._resumed_ms = -(1 << 62)      # last end of backpressure
        self.inputs = [_input(self, "primary-in", config.primary_in, Side.PRIMARY),
                       _input(self, "secondary-in", config.secondary_in, Side.SECONDARY)]
        self.outdev = _outdev(self, config.outdev)
        self.notify = (Notify(self, "notify-dev", config.notify_dev, config.engine.vnet_hdr)
                       if config.notify_dev else None)
        self.channels: list = [self.outdev, *self.inputs]
        if self.notify:
            self.channels.insert(1, self.notify)
        self.mode = "chardev"
        self.failed_over = False
        self.checkpoints_done = 0
        # In XDP mode: () -> {verdict: packets}, the classifiers' counters summed.
        xdp_inputs = [i for i in self.inputs if isinstance(i, XdpInput)]
        self.verdict_counters = (lambda: _sum_verdicts(xdp_inputs)) if xdp_inputs else None
        # In XDP mode: () -> {side: {reason: frames}} the kernel dropped after
        # the classifier redirected them (AF_XDP rx ring full, no UMEM frame).
        self.kernel_drops = (lambda: {i.side.name.lower(): i.kernel_drops()
                                      for i in xdp_inputs}) if xdp_inputs else None
        if xdp_inputs or isinstance(self.outdev, XdpOutdev):
            self.mode = "xdp"
        # Every passthrough change goes to each sink: here the engine; in XDP
        # mode the transport adds its BPF map (PassthroughTable.add_sink).
        self.passthrough = PassthroughTable([self.engine.set_passthrough])
        self.passthrough.on_change = lambda op, rule: self.log.event(
            "passthrough_changed", op=op, flow=format_flow(rule),
            rules=len(self.passthrough.rules))
        self.passthrough.replace(config.passthrough)
        self.pcap = None
        self.attachments = self._attachments(config)

    def _attachments(self, config: ServiceConfig) -> list:
        """Control socket, /metrics and evidence pcap, as configured (the
        latter two imported only when asked for)."""
        parts: list = []
        if config.control_path or config.control_tcp:
            parts.append(ControlServer(self, ServiceTarget(self), config.control_path,
                                       config.control_tcp))
        if config.metrics:
            from colo_xdp.observe.metrics import MetricsServer
            parts.append(MetricsServer(self, *config.metrics))
        if config.miscompare_pcap:
            from colo_xdp.observe.pcap import MiscomparePcap
            self.pcap = MiscomparePcap(self, config.miscompare_pcap,
                                       config.miscompare_pcap_bytes, config.miscompare_pcap_keep)
            parts.append(self.pcap)
        return parts

    # -- running ----------------------------------------------------------------

    def open(self) -> None:
        """Open the attachments, bind listeners and reach peers; raises
        EndpointError (one sentence)."""
        opened: list = []
        try:
            for part in self.attachments:
                try:
                    part.open()
                except EndpointError:
                    raise
                except OSError as exc:
                    raise EndpointError(exc.errno, exc.strerror or str(exc)) from None
                opened.append(part)
            for ch in self.channels:
                ch.open()
                opened.append(ch)
        except EndpointError:
            for item in reversed(opened):
                if isinstance(item, Channel):
                    item.shutdown()
                else:
                    item.close()
            raise

    def request_failover(self, *_args) -> None:
        """Signal-safe: the loop fails over at its next turn."""
        self._failover_requested = True

    def run(self) -> None:
        deadline = self.engine.run_timers(self.now_ms())
        while not self._stop:
            now = self.now_ms()
            wait_s = min(max(deadline - now, 0) / 1000.0, MAX_SLEEP_S)
            for key, mask in self.sel.select(wait_s):
                key.data(mask)
            now = self.now_ms()
            if now >= deadline:
                deadline = self._scan_for_expired(now)
            mono = time.monotonic()
            for ch in self.channels:
                ch.maybe_retry(mono)
            for part in self.attachments:
                part.tick(mono)
            self.log.tick()
            if self._failover_requested:
                self._failover_requested = False
                self.failover()
            self.after_batch()

    def close(self) -> None:
        """Release what is still held (as QEMU does when the object goes away),
        try to deliver it for a moment, then close every socket."""
        self.engine.checkpoint()
        self.after_batch()
        self.drain_output()
        for ch in self.channels:
            ch.shutdown()
        for part in self.attachments:
            part.close()
        self.sel.close()
        self.log.tick(final=True)

    # -- engine outputs -------------------------------------------------------------

    def after_batch(self) -> None:
        for action in self.engine.drain_events():
            self._handle(action)
        for part in self.attachments:
            part.end_batch()
        self.outdev.write_pending()
        pending = self.engine.output_pending()
        if not self.paused and pending > OUT_HIGH_WATER:
            self._pause(True, pending)
        elif self.paused and pending < OUT_LOW_WATER:
            self._pause(False, pending)

    def _scan_for_expired(self, now: int) -> int:
        """Run the expired-frame scan, unless the inputs are not being read
        (backpressure) or were resumed less than a cycle ago: a frame is not
        old because its secondary copy waits unread in our own socket buffer.
        Returns when to come back."""
        cycle = self.config.engine.expired_scan_cycle_ms
        if self.paused or now - self._resumed_ms < cycle:
            return now + cycle
        return self.engine.run_timers(now)

    def _pause(self, paused: bool, pending: int) -> None:
        if not paused:
            self._resumed_ms = self.now_ms()
        self.paused = paused
        self.log.event("backpressure", on=paused, pending_bytes=pending)
        for inp in self.inputs:
            inp.pause(paused)

    def _handle(self, action) -> None:
        if isinstance(action, CheckpointRequest):
            if self.notify:
                self.notify.request_checkpoint()
            if self.pcap is not None and action.evidence:
                self.pcap.record(action)
            self.log.event("checkpoint_requested", reason=action.reason.name.lower(),
                           conn=action.conn or "-")
        elif isinstance(action, Drop):
            # Truncated frames are only ever noted by this transport (Input and
            # Outdev .disconnected), which already logged them with more detail;
            # a second line would read as a second drop.
            if action.reason is DropReason.TRUNCATED:
                return
            self.log.warning("frame_dropped", side=action.side.name.lower(),
                             reason=action.reason.name.lower(), conn=action.conn or "-")
        elif isinstance(action, ConnectionOpened):
            self.log.event("connection_opened", level=10, conn=action.conn)
        elif isinstance(action, ConnectionEvicted):
            self.log.event("connection_evicted", level=10, conn=action.conn)

    def colo_checkpoint(self, source: str = "notify-dev") -> None:
        """The COLO frame reports a checkpoint: flush."""
        self.engine.checkpoint()
        self.checkpoints_done += 1
        self.log.event("checkpoint_done", source=source)

    def failover(self, source: str = "signal") -> bool:
        """Comparing stops for good: held primary frames are released and
        later ones pass straight through; secondary frames are dropped.
        False if it had already happened."""
        if self.failed_over:
            return False
        self.engine.failover()
        self.failed_over = True
        self.log.warning("failover", source=source)
        return True


def serve(config: ServiceConfig, log: EventLog, on_ready=None) -> Service:
    """Open, announce readiness, run until SIGINT/SIGTERM, then close."""
    svc = Service(config, log)
    svc.open()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, svc.stop)
    # Failover by signal as well as on the control socket: the COLO frame's
    # COLO_EVENT_FAILOVER, which QEMU delivers in-process.
    signal.signal(signal.SIGUSR1, svc.request_failover)
    if on_ready:
        on_ready(svc)
    try:
        svc.run()
    finally:
        svc.close()
    return svc
