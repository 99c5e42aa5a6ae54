"""colo-xdp compare's settings: the roles' endpoints, the engine's settings
and the attachments, checked as a whole before anything is opened."""
from __future__ import annotations

from dataclasses import dataclass, field, replace

from colo_xdp.engine import EngineConfig, PassthroughRule
from colo_xdp.observe.listener import is_loopback
from colo_xdp.proto.flows import PassthroughTable
from colo_xdp.service.busypoll import DEFAULT_BUSY_POLL_US
from colo_xdp.transport.chardev.endpoint import Spec, SpecError, check_distinct
from colo_xdp.transport.xdp.port import XdpIface

EVIDENCE_MAX_BYTES = 4 * 1024 * 1024   # miscompare frames kept per batch for the pcap

Endpoint = Spec | XdpIface


@dataclass
class CompareConfig:
    primary_in: Endpoint
    secondary_in: Endpoint
    outdev: Endpoint
    notify_dev: Spec | None = None
    qmp: Spec | None = None                      # the primary QEMU's QMP monitor
    engine: EngineConfig = field(default_factory=EngineConfig)
    control_path: str | None = None              # unix control socket, mode 0600
    control_tcp: tuple[str, int] | None = None   # loopback TCP control socket
    control_idle_timeout: float = 300.0          # s: a control client that neither asks nor subscribes
    metrics: tuple[str, int] | None = None       # Prometheus exposition
    miscompare_pcap: str | None = None
    miscompare_pcap_bytes: int = 64_000_000
    miscompare_pcap_keep: int = 4
    passthrough: list[PassthroughRule] = field(default_factory=list)
    passthrough_file: str | None = None          # the list, kept across restarts
    busy_poll_us: int = DEFAULT_BUSY_POLL_US     # poll this long at most before sleeping

    def validate(self) -> None:
        """Raise SpecError, EngineError or PassthroughError with one sentence
        for the first problem: two roles on one socket, a control socket off
        loopback, an engine setting out of range, more passthrough rules than
        are kept."""
        roles = {"primary-in": self.primary_in, "secondary-in": self.secondary_in,
                 "outdev": self.outdev}
        ifaces = {role: end.name for role, end in roles.items() if isinstance(end, XdpIface)}
        if len(set(ifaces.values())) < len(ifaces):
            raise SpecError(f"{' and '.join(ifaces)} name the same interface; "
                                    "each role needs its own")
        roles = {role: end for role, end in roles.items() if isinstance(end, Spec)}
        if self.notify_dev:
            roles["notify-dev"] = self.notify_dev
        if self.qmp:
            roles["qmp"] = self.qmp
        if self.control_path:
            roles["control"] = Spec("unix", path=self.control_path)
        for role, addr in (("control-tcp", self.control_tcp), ("metrics", self.metrics)):
            if addr:
                roles[role] = Spec("tcp", host=addr[0], port=addr[1])
        check_distinct(roles)
        if self.control_tcp and not is_loopback(self.control_tcp[0]):
            raise SpecError(
                f"--control-tcp must listen on a loopback address such as 127.0.0.1, not "
                f"{self.control_tcp[0]}: the control socket has no authentication")
        self.engine.validate()
        PassthroughTable().replace(self.passthrough)     # the table's own limit, no sinks

    def engine_config(self) -> EngineConfig:
        """The engine's settings, with miscompare evidence kept when the
        evidence pcap is asked for."""
        if self.miscompare_pcap and not self.engine.evidence_max_bytes:
            return replace(self.engine, evidence_max_bytes=EVIDENCE_MAX_BYTES)
        return self.engine
