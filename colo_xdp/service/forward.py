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

from dataclasses import dataclass

from colo_xdp.engine import Engine, EngineConfig, Side
from colo_xdp.observe.log import EventLog
from colo_xdp.service.loop import Loop, serve_loop
from colo_xdp.transport.chardev.endpoint import Spec
from colo_xdp.transport.chardev.roles import Outdev
from colo_xdp.transport.xdp.port import XdpIface, XdpInput


@dataclass
class ForwardConfig:
    iface: XdpIface
    to: Spec
    vnet_hdr: bool = False


class ForwardService(Loop):
    """colo-xdp forward: one XDP input, one chardev outdev, nothing compared."""

    def __init__(self, config: ForwardConfig, log: EventLog):
        engine = Engine(EngineConfig(vnet_hdr=config.vnet_hdr))
        engine.failover()                    # a framer: nothing is compared here
        super().__init__(engine, log)
        self.config = config
        self.input = XdpInput(self, "secondary-xdp", config.iface,
                              classify_as=Side.SECONDARY, feed_as=Side.PRIMARY)
        self.outdev = Outdev(self, "to", config.to)
        self.inputs = [self.input]
        self.channels = [self.outdev, self.input]

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
