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

import signal
import time
from dataclasses import dataclass

from colo_xdp.engine import Engine, EngineConfig, Side
from colo_xdp.observe.log import EventLog
from colo_xdp.service.compare import (MAX_SLEEP_S, OUT_HIGH_WATER, OUT_LOW_WATER, EndpointError, Loop,
                              Outdev, XdpIface, XdpInput)
from colo_xdp.transport.chardev.endpoint import Spec


@dataclass
class ForwardConfig:
    iface: XdpIface
    to: Spec
    vnet_hdr: bool = False


class Forwarder(Loop):
    def __init__(self, config: ForwardConfig, log: EventLog):
        engine = Engine(EngineConfig(vnet_hdr=config.vnet_hdr))
        engine.failover()                    # a framer: nothing is compared here
        super().__init__(engine, log)
        self.config = config
        self.input = XdpInput(self, "secondary-xdp", config.iface,
                              classify_as=Side.SECONDARY, feed_as=Side.PRIMARY)
        self.outdev = Outdev(self, "to", config.to)

    def open(self) -> None:
        self.outdev.open()
        try:
            self.input.open()
        except EndpointError:
            self.outdev.shutdown()
            raise

    def run(self) -> None:
        while not self._stop:
            for key, mask in self.sel.select(MAX_SLEEP_S):
                key.data(mask)
            mono = time.monotonic()
            self.outdev.maybe_retry(mono)
            self.input.maybe_retry(mono)       # the interface went away, or came back
            self.log.tick()
            self.after_batch()

    def after_batch(self) -> None:
        self.engine.drain_events()           # no compare: nothing to act on
        self.outdev.write_pending()
        pending = self.engine.output_pending()
        if (not self.paused and pending > OUT_HIGH_WATER) or (
                self.paused and pending < OUT_LOW_WATER):
            self.paused = not self.paused
            self.log.event("backpressure", on=self.paused, pending_bytes=pending)
            self.input.pause(self.paused)

    def close(self) -> None:
        self.drain_output()
        self.input.shutdown()
        self.outdev.shutdown()
        self.sel.close()
        self.log.tick(final=True)


def serve_forward(config: ForwardConfig, log: EventLog, on_ready=None) -> Forwarder:
    """Open, announce readiness, run until SIGINT/SIGTERM, then close."""
    fwd = Forwarder(config, log)
    fwd.open()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, fwd.stop)
    if on_ready:
        on_ready(fwd)
    try:
        fwd.run()
    finally:
        fwd.close()
    return fwd
