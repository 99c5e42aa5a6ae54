"""colo-xdp forward: the secondary guest's output, taken with XDP, to the primary.

On the secondary host this stands in for QEMU's filter-redirector: the
classifier on the secondary guest's tap sends every frame the primary compares
to AF_XDP (so it never reaches the network; frames the primary does not
compare are dropped in the kernel, as chardev mode drops them), and the frames
go to the primary's ``--secondary-in`` in QEMU's chardev framing.

The engine, with comparing stopped from the start, is the framer: every frame
fed is released at once, in order, into an out buffer that keeps records
whole when the peer goes away (a cut record is counted, never half-sent to
the next peer) and makes the same backpressure as the compare service.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from colo_xdp.engine import Engine, EngineConfig, Side
from colo_xdp.observe.control_server import DEFAULT_IDLE_TIMEOUT_S, ControlServer, ServiceTarget
from colo_xdp.observe.log import EventLog
from colo_xdp.proto.control import CommandError
from colo_xdp.proto.flows import PassthroughError, PassthroughSink, PassthroughTable
from colo_xdp.service.loop import Loop, serve_loop
from colo_xdp.transport.chardev.endpoint import Spec
from colo_xdp.transport.chardev.roles import Outdev
from colo_xdp.transport.xdp.port import XdpIface, XdpInput

BACKOFF_MAX_S = 30.0        # the longest wait between two connect attempts to --to


@dataclass
class ForwardConfig:
    iface: XdpIface
    to: Spec
    vnet_hdr: bool = False
    control_path: str | None = None              # unix control socket, mode 0600
    control_tcp: tuple[str, int] | None = None   # loopback TCP control socket
    control_idle_timeout: float = DEFAULT_IDLE_TIMEOUT_S
    metrics: tuple[str, int] | None = None       # Prometheus exposition

    @property
    def engine(self) -> EngineConfig:
        return EngineConfig(vnet_hdr=self.vnet_hdr)


class BackoffOutdev(Outdev):
    """``--to``: retries a peer that keeps refusing less and less often,
    ``reconnect`` seconds doubled per failure up to BACKOFF_MAX_S (at least
    the reconnect interval), back to ``reconnect`` once connected."""

    failures = 0

    def _retry_later(self, now: float, error: str) -> None:
        self.failures += 1
        base = self.spec.reconnect or 1.0
        delay = min(base * 2 ** (self.failures - 1), max(BACKOFF_MAX_S, base))
        self.svc.log.warning("connect_failed", role=self.role, error=error,
                             retry_s=round(delay, 3))
        self.retry_at = now + delay

    def _attach(self, sock) -> None:
        self.failures = 0
        super()._attach(sock)


class ForwardTarget(ServiceTarget):
    """The control commands forward answers: stats, subscribe, help."""

    def control_checkpoint(self) -> dict:
        raise CommandError("colo-xdp forward compares nothing: checkpoint is for the "
                           "primary's colo-xdp compare")

    def control_failover(self) -> dict:
        raise CommandError("colo-xdp forward compares nothing: failover is for the "
                           "primary's colo-xdp compare")


def _no_passthrough(rules) -> None:
    if rules:
        raise PassthroughError("colo-xdp forward takes no passthrough rules; set them on "
                               "the primary's colo-xdp compare")


class ForwardService(Loop):
    """colo-xdp forward: one XDP input, one chardev outdev, nothing compared."""

    mode = "forward"

    def __init__(self, config: ForwardConfig, log: EventLog):
        engine = Engine(EngineConfig(vnet_hdr=config.vnet_hdr))
        engine.failover()                    # a framer: nothing is compared here
        super().__init__(engine, log)
        self.config = config
        self.input = XdpInput(self, "secondary-xdp", config.iface,
                              classify_as=Side.SECONDARY, feed_as=Side.PRIMARY)
        self.outdev = BackoffOutdev(self, "to", config.to)
        self.inputs = [self.input]
        self.channels = [self.outdev, self.input]
        # What the control socket's stats and /metrics read (observe/stats.py).
        self.failed_over = False
        self.checkpoints_done: Counter = Counter()
        self.passthrough = PassthroughTable([PassthroughSink(_no_passthrough, _no_passthrough)])
        self.verdict_counters = self.input.verdicts
        self.kernel_drops = lambda: {"secondary": self.input.kernel_drops()}
        self.xdp_wakeups = lambda: {self.input.role: self.input.wakeups()}
        self.attachments = []
        if config.control_path or config.control_tcp:
            self.attachments.append(ControlServer(self, ForwardTarget(self), config.control_path,
                                                  config.control_tcp,
                                                  config.control_idle_timeout))
        if config.metrics:
            from colo_xdp.observe.metrics import MetricsServer
            self.attachments.append(MetricsServer(self, *config.metrics))

    def summary_fields(self) -> dict:
        c = self.engine.counters()
        return {"frames_in": c.frames_in["primary"], "forwarded": c.released_total,
                "cut": c.outdev_cut, "kernel_dropped": sum(self.input.kernel_drops().values())}


def serve_forward(config: ForwardConfig, log: EventLog, on_ready=None) -> ForwardService:
    """Open, announce readiness, run until SIGINT/SIGTERM, then close; SIGHUP
    reopens the log file, SIGUSR2 logs the counters."""
    fwd = ForwardService(config, log)
    serve_loop(fwd, on_ready)
    return fwd
