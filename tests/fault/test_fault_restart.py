"""A colo-xdp killed with SIGKILL, and started again on the same sockets.

What it held dies with it (its state is in memory only, as QEMU's is); the
new process must come up on the same endpoints (stale unix socket files
replaced, TCP ports bound again), say that it starts clean and with which
configuration (the `started` line), release nothing from before, count only
what it sees, and serve.
"""
from __future__ import annotations

import pytest

from faultkit import (INIT_REPLY_WIRE, INIT_WIRE, connect_all, flow_frame, free_tcp_ports,
                      started_line, still_serving)

ARGS = ("--max-queue-size", "64", "--max-connections", "128", "--compare-timeout", "60000")
ROLES = ("pin", "sin", "out", "notify")


def _endpoints(lab, transport: str) -> dict:
    if transport == "unix":
        return {}
    ports = dict(zip(ROLES, free_tcp_ports(4)))
    return {role: f"tcp:127.0.0.1:{port},server=on" for role, port in ports.items()}


def _peers(lab, transport: str, specs: dict):
    if transport == "unix":
        return connect_all(lab)
    port = {role: int(spec.split(":")[2].split(",")[0]) for role, spec in specs.items()}
    return tuple(lab.connect_tcp(port[r]) for r in ("out", "notify", "pin", "sin"))


@pytest.mark.parametrize("transport", ["unix", "tcp"])
def test_sigkill_then_restart_starts_clean_and_serves(lab, transport):
    specs = _endpoints(lab, transport)
    first = lab.start(**specs, args=ARGS)
    before = started_line(first)
    assert (before["state"], before["held"], before["connections"]) == ("clean", "0", "0")
    out, note, pin, sin = _peers(lab, transport, specs)
    pair = flow_frame(1, 1)
    pin.send(pair)
    sin.send(pair)
    assert out.frames(1) == [pair]
    held = [flow_frame(2, i) for i in range(5)]             # held: no secondary for them
    pin.send(*held)
    sin.send(flow_frame(3, 1))                              # held: no primary for it
    still_serving(out, pin, sin)                            # all of it read by now

    first.proc.kill()                                       # SIGKILL: no flush, no summary
    first.proc.wait(5)
    assert first.proc.returncode == -9
    assert not any("stopped" in line for line in first.lines)
    for peer in (out, note, pin, sin):
        peer.wait_closed()

    second = lab.start(**specs, args=ARGS)
    after = started_line(second)
    assert after["state"] == "clean"
    assert (after["held"], after["connections"], after["frames_in"]) == ("0", "0", "0")
    assert after["pid"] != before["pid"]
    same = {k: v for k, v in before.items() if k != "pid"}
    assert {k: v for k, v in after.items() if k != "pid"} == same, "configuration changed"
    out, note, pin, sin = _peers(lab, transport, specs)
    note.send_raw(INIT_WIRE)
    assert note.read_bytes(len(INIT_REPLY_WIRE)) == INIT_REPLY_WIRE
    out.expect_quiet(0.3)                                   # nothing from before
    sin.send(held[0])                                       # the old primary is gone:
    out.expect_quiet(0.1)                                   # its secondary is held, alone
    fresh = [flow_frame(4, i) for i in range(3)]
    pin.send(*fresh)
    sin.send(*fresh)
    assert out.frames(3) == fresh
    still_serving(out, pin, sin)

    s = second.stop_summary()                               # held[0]'s secondary flushed
    assert s.frames_in == (4, 5) and s.released == 4
    assert s.dropped == (0, 1) and s.checkpoints == 0
