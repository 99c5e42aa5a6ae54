"""XDP mode's transport: one guest interface, its classifier and its sockets,
and the roles that serve them on the service's loop (``XdpInput``,
``XdpOutdev``), as ``colo_xdp.transport.chardev.roles`` does for sockets.

An ``XdpPort`` owns, for one interface, the classifier (bpf/classify.c for the
primary or the secondary side) and one AF_XDP socket per rx queue, each in the
classifier's XSKMAP.  Opening loads the program, opens and registers the
sockets, and only then attaches, so no frame meets a queue without a socket;
closing detaches first.  Frames move in bursts through the C glue
(csrc/xdp_glue.c): from a socket into the engine, and from the engine's
releases out of a socket.  Python calls
once per burst of up to ``BURST`` frames.

    with XdpPort("tap0", Side.PRIMARY) as port:
        for sock in port.sockets:                 # watch sock.fileno() for input
            n, held_back = rx_to_engine(sock, engine, Side.PRIMARY, now_ms)
"""
from __future__ import annotations

import errno
import select
import selectors
import socket
from collections import Counter
from dataclasses import dataclass

from colo_xdp import native
from colo_xdp.engine import Engine, Side
from colo_xdp.errors import EndpointError, XdpError
from colo_xdp.proto.flows import PassthroughSink
from colo_xdp.transport.xdp.classifier import Mode, XdpClassifier
from colo_xdp.transport.xdp.xsk import XskConfig, XskError, XskSocket, _rx_queues

READ = selectors.EVENT_READ
WRITE = selectors.EVENT_WRITE

BURST = native.XDP_GLUE_BURST
# Rings and UMEM of an input's sockets: flow control leaves a side's lead in
# the rx ring, so the ring (and the UMEM frames behind it) must hold the lead
# the engine does not take (flow_high_water per connection) without the
# kernel dropping: 4096 entries hold a 2048-frame lead on one flow twice over.
# UMEM: 4096 rx + 4096 tx frames of 2 KiB, 16 MiB per rx queue.
INPUT_RING_SIZE = 4096
INPUT_FRAME_COUNT = 2 * INPUT_RING_SIZE
IFACE_CHECK_S = 1.0     # how often a role looks for a vanished interface
# Bursts one readable socket gives per loop turn while they come full: the
# loop's own work (timers, ticks, after_batch) is paid once for them.
RX_BURSTS_PER_TURN = 4
# XDP_STATISTICS counters that are frames lost after the redirect.
KERNEL_DROP_REASONS = ("rx_ring_full", "rx_dropped")
# Our own counters of a socket (csrc/xsk.h, struct xsk__stats): the syscalls
# made to wake the kernel (need_wakeup) against the bursts moved.
WAKEUP_COUNTS = ("tx_kicks", "tx_batches", "rx_wakeups", "rx_batches")


def wakeup_counts(socks) -> Counter:
    """WAKEUP_COUNTS summed over open sockets."""
    total: Counter = Counter(dict.fromkeys(WAKEUP_COUNTS, 0))
    for sock in socks:
        try:
            st = sock.stats()
        except XskError:
            continue
        total.update({k: st[k] for k in WAKEUP_COUNTS})
    return total


@dataclass(frozen=True)
class XdpIface:
    """A guest's (or an uplink's) interface in XDP mode, as a role's endpoint."""

    name: str
    mode: str = "native"          # or "generic"

    def __str__(self) -> str:
        return f"xdp:{self.name}"


class XdpPortError(XdpError):
    """An XDP port could not be opened or used; one sentence."""


class XdpPort:
    """The classifier on ``ifname`` and an AF_XDP socket on each rx queue."""

    def __init__(self, ifname: str, side: Side, *, mode: Mode = Mode.NATIVE,
                 rules=(), xsk_config: XskConfig | None = None):
        self.ifname = ifname
        self.side = Side(side)
        self.mode = Mode(mode)
        # reuse: a port opened again (an interface back) takes the program
        # compiled for the last one instead of compiling for most of a second.
        self.classifier = XdpClassifier(self.side, ifname, mode=self.mode, rules=rules,
                                        handle_sigterm=False, reuse=True)
        self.xsk_config = xsk_config or XskConfig(burst=BURST, ring_size=INPUT_RING_SIZE,
                                                  frame_count=INPUT_FRAME_COUNT,
                                                  multi_buffer=True)
        self.sockets: list[XskSocket] = []

    def __enter__(self) -> "XdpPort":
        self.open()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close()

    def open(self) -> None:
        try:
            self.classifier.load()
            for queue in range(_rx_queues(self.ifname) or 1):
                sock = XskSocket(self.ifname, queue, self.xsk_config)
                sock.open()
                self.sockets.append(sock)
                self.classifier.set_socket(queue, sock.fileno())
            self.classifier.attach()
        except (XdpError, XskError) as exc:
            self.close()
            raise XdpPortError(f"{self.ifname}: {exc}") from None
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Detach, then close the sockets; safe to call twice."""
        self.classifier.close()
        for sock in self.sockets:
            sock.close()
        self.sockets = []

    @property
    def passthrough_sink(self) -> PassthroughSink:
        """The classifier's list map as a PassthroughTable sink."""
        return PassthroughSink(self.classifier.set_rules, self.classifier.check_rules)

    def verdicts(self) -> dict[str, int]:
        """Frames per verdict since the program was loaded."""
        return {v.name.lower(): c.frames for v, c in self.classifier.counters().items()}

    def kernel_drops(self) -> dict[str, int]:
        """Frames the classifier redirected that the kernel then dropped,
        by reason, summed over the sockets (XDP_STATISTICS): ``rx_ring_full``
        (the rx ring was full: we were not reading fast enough) and
        ``rx_dropped`` (no free UMEM frame, or a frame larger than one)."""
        total = dict.fromkeys(KERNEL_DROP_REASONS, 0)
        for sock in self.sockets:
            try:
                st = sock.stats()
            except XskError:
                continue
            for reason in KERNEL_DROP_REASONS:
                total[reason] += st[reason]
        return total


def rx_to_engine(sock: XskSocket, engine: Engine, side: Side, now_ms: int,
                 force: bool = True) -> tuple[int, bool]:
    """Move up to BURST received frames into the engine, with flow control
    unless ``force``; returns (how many, held back).  Frames held back stay
    at the head of the rx ring."""
    try:
        return native.rx_to_engine(sock.handle, engine.handle, side, now_ms, BURST, force)
    except native.NativeError as exc:
        raise XdpPortError(f"{sock.ifname} queue {sock.queue}: receiving failed "
                           f"(errno {exc.errno})") from None


def tx_from_engine(sock: XskSocket, engine: Engine) -> int:
    """Send up to BURST released frames; returns how many (0: ring full or
    nothing to send)."""
    try:
        return native.tx_from_engine(sock.handle, engine.handle, BURST)
    except native.NativeError as exc:
        raise XdpPortError(f"{sock.ifname}: sending failed (errno {exc.errno})") from None


class XdpInput:
    """A guest interface in XDP mode: the classifier and an AF_XDP socket per
    rx queue; each ready socket gives a burst per loop turn to the engine
    (up to RX_BURSTS_PER_TURN while they come full).
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
        self.carried_wakeups: Counter = Counter()
        self.drops_logged = 0
        self.held_socks: set = set()       # flow control: sockets left unread
        self.last_fed_ms = svc.now_ms()
        self.held_since = 0
        self.stopped_other_at: int | None = None

    def open(self) -> None:
        table = getattr(self.svc, "passthrough", None)
        self.port = XdpPort(self.iface.name, self.classify_as, mode=Mode(self.iface.mode),
                            rules=table.rules if table else ())
        try:
            self.port.open()
        except XdpPortError as exc:
            self.port = None
            raise EndpointError(errno.EIO, f"{self.role}: {exc}") from None
        if table:
            table.add_sink(self.port.passthrough_sink)
        self.ifindex = socket.if_nametoindex(self.iface.name)
        self.pause(self.svc.paused)
        self.svc.log.event("xdp_attached", role=self.role, iface=self.iface.name,
                           mode=self.iface.mode, queues=len(self.port.sockets))

    @property
    def held(self) -> bool:
        return bool(self.held_socks)

    def _rx(self, sock, force: bool) -> int:
        """One burst from ``sock`` into the engine; returns the frames taken."""
        now = self.svc.now_ms()
        try:
            n, held = rx_to_engine(sock, self.svc.engine, self.side, now, force)
        except XdpPortError as exc:
            self.svc.log.warning("xdp_rx_failed", role=self.role, error=str(exc))
            return 0
        if n:
            self.last_fed_ms = now
        if held and sock not in self.held_socks:
            if not self.held_socks:
                self.held_since = now
            self.held_socks.add(sock)
            self.svc.unwatch(sock)            # the lead waits in the rx ring
        elif not held and sock in self.held_socks:
            self.held_socks.discard(sock)
            if not self.svc.paused:
                self.svc.watch(sock, READ, self._reader(sock))
        return n

    def _reader(self, sock):
        """What the loop calls when ``sock`` is readable: up to
        RX_BURSTS_PER_TURN bursts while they come full and nothing is held
        back.  The loop's turn ends with after_batch (released frames out,
        events, backpressure): once a turn, not once a socket."""
        def readable(mask: int) -> None:
            for _ in range(RX_BURSTS_PER_TURN):
                if self._rx(sock, force=False) < BURST or sock in self.held_socks:
                    return
        return readable

    def feed(self, force: bool = False) -> int:
        """Feed the held rx rings again (flow control off with ``force``);
        returns the frames taken."""
        return sum(self._rx(sock, force) for sock in list(self.held_socks))

    def read_now(self, force: bool = False) -> int:
        """One burst from each socket, paused or not; returns the frames read."""
        return sum(self._rx(sock, force) for sock in (self.port.sockets if self.port else ()))

    def pause(self, paused: bool) -> None:
        """Backpressure: unread frames wait in the rx rings (the kernel drops
        and counts past them: a guest cannot be told to wait)."""
        for sock in self.port.sockets if self.port else ():
            if sock in self.held_socks:
                continue
            if paused:
                self.svc.unwatch(sock)
            else:
                self.svc.watch(sock, READ, self._reader(sock))

    def maybe_retry(self, now: float) -> None:
        """Once a second: is the interface still the one attached to?  One
        that went away (or was made anew) is given up with a log line, and
        attached to again as soon as it is back.  One with more rx queues in
        use than it has sockets (a multi-queue tap QEMU attached queues to
        after we opened, or a guest that enabled more) is opened again, with
        a socket on each: a queue without one would drop its frames."""
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
        elif self.port and (_rx_queues(self.iface.name) or 1) > len(self.port.sockets):
            self.svc.log.warning("xdp_queues_changed", role=self.role, iface=self.iface.name,
                                 sockets=len(self.port.sockets),
                                 queues=_rx_queues(self.iface.name))
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
        live = self.port.kernel_drops() if self.port else {}
        return {r: self.carried_drops[r] + live.get(r, 0) for r in KERNEL_DROP_REASONS}

    def wakeups(self) -> dict[str, int]:
        """WAKEUP_COUNTS of this input's sockets, since it started."""
        live = wakeup_counts(self.port.sockets if self.port else ())
        return {k: self.carried_wakeups[k] + live[k] for k in WAKEUP_COUNTS}

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
            self.carried_wakeups.update(wakeup_counts(self.port.sockets))
            self.feed(force=True)             # what waits in the rings is not lost
            self.held_socks.clear()
            self.pause(True)
            table = getattr(self.svc, "passthrough", None)
            if table:
                table.remove_sink(self.port.passthrough_sink)
            self.port.close()
            self.port = None
            self.svc.log.event("xdp_detached", role=self.role, iface=self.iface.name)


class XdpOutdev:
    """Released frames sent with AF_XDP on an interface (``xdp:IFACE``).

    A send that fails (the interface went away, say) closes the socket with
    a ``disconnected`` warning; the frames it did not take stay in the
    engine's output, and those it took but the kernel never read from its tx
    ring are copied out before the close (an ``xdp_tx_unsent`` warning) and
    sent first on the next socket: none is lost, none goes out twice, order
    is kept.  Those still unsent at exit are counted (``lost.outdev_unsent``).  Once a second the socket is opened again (``connected``)
    and they go out; an interface that is gone is waited for, as ``XdpInput``
    does, and one made anew (another ifindex) is noticed even with nothing to
    send."""

    def __init__(self, svc, role: str, iface: XdpIface):
        self.svc = svc
        self.role = role
        self.iface = iface
        self.sock = None
        self.ifindex = 0
        self.writing = False
        self.next_check = 0.0
        self.retrying = False          # disconnected: maybe_retry opens again
        self.carry: list[bytes] = []   # a closed socket's unsent frames, for the next
        self.carried_wakeups: Counter = Counter()
        self.waiting_for_iface = False

    @property
    def has_peer(self) -> bool:
        return self.sock is not None

    def _send_carry(self) -> None:
        """The frames a closed socket left unsent go first, in order."""
        while self.carry:
            n = self.sock.tx_queue(self.carry[:BURST])
            del self.carry[:n]
            self.sock.tx_kick()
            if not n:
                return

    def open(self) -> None:
        sock = XskSocket(self.iface.name, 0)
        try:
            sock.open()
            self.ifindex = socket.if_nametoindex(self.iface.name)
        except (XskError, OSError) as exc:
            sock.close()
            raise EndpointError(errno.EIO, f"{self.role}: {exc}") from None
        self.sock = sock
        self.retrying = self.waiting_for_iface = False
        self.svc.log.event("connected", role=self.role, endpoint=self.iface)

    def write_pending(self) -> None:
        if not self.sock:
            return
        engine = self.svc.engine
        try:
            self._send_carry()
            while not self.carry and engine.output_pending() and tx_from_engine(self.sock,
                                                                                 engine):
                pass
        except (XdpPortError, XskError) as exc:
            self._disconnect(str(exc))
            return
        want = bool(self.carry or engine.output_pending())   # the tx ring is full: wait
        if want != self.writing:
            self.writing = want
            if want:
                self.svc.watch(self.sock, WRITE, lambda mask: self.write_pending())
            else:
                self.svc.unwatch(self.sock)

    def wait_writable(self, timeout: float) -> None:
        if self.sock:
            select.select([], [self.sock], [], timeout)

    def _close_socket(self, carry: bool) -> None:
        """Close the socket.  Its tx ring's frames are out of the engine's
        output: one last kick for them, and what the kernel still has not
        read is kept for the next socket (``carry``) or, at exit, counted
        (``lost.outdev_unsent``); either way logged."""
        sock, self.sock, unsent = self.sock, None, []
        if sock:
            self.svc.unwatch(sock)
            try:
                sock.tx_reap()
            except XskError:
                pass                              # the interface is gone: they stay
            unsent = sock.tx_unsent()
            self.carried_wakeups.update(wakeup_counts([sock]))
            sock.close()
        self.carry[:0] = unsent                   # older than what waited to be carried
        if unsent or (self.carry and not carry):
            self.svc.log.warning("xdp_tx_unsent", role=self.role, iface=self.iface.name,
                                 frames=len(self.carry), kept=int(carry))
        if not carry and self.carry:
            self.svc.engine.note_unsent(len(self.carry))
            self.carry = []

    def wakeups(self) -> dict[str, int]:
        """WAKEUP_COUNTS of this outdev's sockets, since it started."""
        live = wakeup_counts([self.sock] if self.sock else ())
        return {k: self.carried_wakeups[k] + live[k] for k in WAKEUP_COUNTS}

    def _disconnect(self, why: str) -> None:
        """Close the socket; maybe_retry opens one again within a second."""
        self.svc.log.warning("disconnected", role=self.role, endpoint=self.iface, why=why)
        if self.sock:
            self._close_socket(carry=True)
        self.writing = False
        self.retrying = True
        self.next_check = 0.0

    def maybe_retry(self, now: float) -> None:
        """Once a second: still the interface the socket is bound to?  And,
        disconnected, open a socket again (the interface back, if it went)."""
        if now < self.next_check or not (self.sock or self.retrying):
            return
        self.next_check = now + IFACE_CHECK_S
        try:
            index = socket.if_nametoindex(self.iface.name)
        except OSError:
            index = 0
        if self.sock:
            if index != self.ifindex:
                self._disconnect(f"{self.iface.name} went away")
                self.next_check = now + IFACE_CHECK_S
            return
        if not index:
            if not self.waiting_for_iface:
                self.waiting_for_iface = True
                self.svc.log.warning("xdp_iface_gone", role=self.role, iface=self.iface.name)
            return
        try:
            self.open()
        except EndpointError as exc:
            self.svc.log.warning("connect_failed", role=self.role, error=exc.strerror,
                                 retry_s=IFACE_CHECK_S)
            return
        self.write_pending()                      # what waited goes out now

    def shutdown(self) -> None:
        self.retrying = False
        if self.sock or self.carry:
            self._close_socket(carry=False)
        self.writing = False
