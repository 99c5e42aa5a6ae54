"""XDP mode's transport: one guest interface, its classifier and its sockets.

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
            n = rx_to_engine(sock, engine, Side.PRIMARY, now_ms)
"""
from __future__ import annotations

from colo_xdp._native import lib
from colo_xdp.engine import Engine, Side
from colo_xdp.transport.xdp.classifier import Mode, XdpClassifier, XdpError
from colo_xdp.transport.xdp.xsk import XskConfig, XskError, XskSocket, _rx_queues

BURST = lib.XDP_GLUE__BURST
# XDP_STATISTICS counters that are frames lost after the redirect.
KERNEL_DROP_REASONS = ("rx_ring_full", "rx_dropped")


class XdpPortError(Exception):
    """An XDP port could not be opened or used; one sentence."""


class XdpPort:
    """The classifier on ``ifname`` and an AF_XDP socket on each rx queue."""

    def __init__(self, ifname: str, side: Side, *, mode: Mode = Mode.NATIVE,
                 rules=(), xsk_config: XskConfig | None = None):
        self.ifname = ifname
        self.side = Side(side)
        self.mode = Mode(mode)
        self.classifier = XdpClassifier(self.side, ifname, mode=self.mode, rules=rules,
                                        handle_sigterm=False)
        self.xsk_config = xsk_config or XskConfig(burst=BURST)
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

    def set_rules(self, rules) -> None:
        """Passthrough rules (the engine's PassthroughRule) into the BPF map."""
        self.classifier.set_rules(rules)

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


def rx_to_engine(sock: XskSocket, engine: Engine, side: Side, now_ms: int) -> int:
    """Move up to BURST received frames into the engine; returns how many."""
    n = lib.xdp_glue__rx_to_engine(sock._x, engine._e, side, now_ms, BURST)
    if n < 0:
        raise XdpPortError(f"{sock.ifname} queue {sock.queue}: receiving failed "
                           f"(errno {-n})")
    return n


def tx_from_engine(sock: XskSocket, engine: Engine) -> int:
    """Send up to BURST released frames; returns how many (0: ring full or
    nothing to send)."""
    n = lib.xdp_glue__tx_from_engine(sock._x, engine._e, BURST)
    if n < 0:
        raise XdpPortError(f"{sock.ifname}: sending failed (errno {-n})")
    return n
