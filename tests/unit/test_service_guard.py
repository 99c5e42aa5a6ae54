"""Nothing around the service stops it: an attachment (control socket,
/metrics, evidence pcap) that raises is logged, and the loop turns on."""
from __future__ import annotations

import socket

from colo_xdp.observe.listener import Client
from colo_xdp.observe.log import EventLog
from colo_xdp.service.compare import CompareService
from colo_xdp.service.config import CompareConfig
from colo_xdp.transport.chardev.endpoint import parse_spec


class Faulty:
    """An attachment with a bug in every turn; stops the loop after ``turns``."""

    name = "faulty"

    def __init__(self, svc, turns: int):
        self.svc, self.turns, self.ticks, self.batches = svc, turns, 0, 0

    def open(self) -> None: ...
    def close(self) -> None: ...
    def stats(self): return self.name, {}

    def tick(self, now: float) -> None:
        self.ticks += 1
        if self.ticks >= self.turns:
            self.svc.stop()
        raise RuntimeError("tick bug")

    def end_batch(self) -> None:
        self.batches += 1
        raise KeyError("end_batch bug")


class Exploding(Client):
    def on_data(self, data: bytes) -> None:
        raise TypeError("a library's surprise")


def test_attachment_bugs_are_logged_and_the_loop_goes_on(tmp_path):
    specs = [parse_spec(f"unix:{tmp_path}/{name},server=on") for name in ("p", "s", "o")]
    log = EventLog()
    seen: list = []
    log.tap = lambda name, fields: seen.append((name, fields))
    svc = CompareService(CompareConfig(*specs), log)
    faulty = Faulty(svc, turns=5)
    svc.attachments.append(faulty)
    svc.open()
    a, b = socket.socketpair()
    clients: list = []
    try:
        b.setblocking(False)
        Exploding(svc, b, clients, out_high=1 << 20)
        a.sendall(b"anything")
        svc.run()
        a.settimeout(1.0)
        assert a.recv(10) == b""                 # the client that raised was closed
    finally:
        svc.close()
        a.close()
    assert faulty.ticks == 5 and faulty.batches >= 5
    errors = [f["error"] for name, f in seen if name == "control_error"]
    assert "RuntimeError: tick bug" in errors
    assert "KeyError: 'end_batch bug'" in errors
    assert "TypeError: a library's surprise" in errors
    assert clients == []
