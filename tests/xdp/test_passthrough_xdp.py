"""Passthrough flows in XDP mode, end to end through the CLI.

- In the one-host lab of ``colo-xdp demo`` (colo_xdp/lab/xdp_demo.py: a
  client, two guests answering alike, colo-xdp releasing to the client with
  AF_XDP on its link), a passthrough UDP or TCP flow gets its replies at the
  client: the primary's frames are released uncompared, the secondary's are
  dropped by its classifier and never leave (the secondary is made to
  answer differently: a reply of its would show).
- With a chardev outdev the primary's passthrough frames come out too, at
  once and in order, ahead of compared frames still waiting for their twins.
- A passthrough change the sinks cannot take is refused whole, before
  anything changes: the 65th rule leaves the held frames held, the list and
  the BPF maps as they were.
"""
from __future__ import annotations

import socket
import subprocess
import sys
import time
from typing import Iterator

import pytest

from colo_xdp.cli.ctl_client import ControlClient
from colo_xdp.engine import MAX_PASSTHROUGH_RULES
from colo_xdp.lab import xdp_demo
from colo_xdp.lab.netns import in_netns
from colo_xdp.lab.process import colo_xdp_command
from test_service_xdp import compare_args, lab, quiet, udp  # noqa: F401 - lab: a fixture

TCP_PORT = 7008
REQUESTS = 8


# --- the one-host lab ---------------------------------------------------------------------

TCP_ECHO = """
import socket, sys
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("0.0.0.0", int(sys.argv[1])))
srv.listen(4)
print("echo ready", flush=True)
while True:
    conn, _ = srv.accept()
    with conn:
        while data := conn.recv(65536):
            conn.sendall(b"echo " + data)
"""


@pytest.fixture
def demo_lab(bpf_ready, netns_available) -> Iterator[xdp_demo.DemoNetwork]:
    """The demo's namespaces and responders (UDP, and a TCP echo in each
    guest), the secondary answering differently from the start."""
    net = xdp_demo.DemoNetwork()
    try:
        net.build()
        net.flag.touch()
        net.responders()
        for where in ("guest-p", "guest-s"):
            proc = net.start(where, [sys.executable, "-c", TCP_ECHO, str(TCP_PORT)], "echo",
                             stdout=subprocess.PIPE)
            assert proc.stdout.readline().strip() == b"echo ready"
        yield net
    finally:
        net.close()


def _service(net: xdp_demo.DemoNetwork, *flows: str):
    control = str(net.dir / "control.sock")
    argv = [*colo_xdp_command(), "compare", "--primary-xdp", "p-h", "--secondary-xdp", "s-h",
            "--outdev", "xdp:c-h", "--control", control]
    for flow in flows:
        argv += ["--passthrough", flow]
    proc = net.start("host", argv, "colo-xdp compare")
    proc.wait_ready(xdp_demo.READY_TIMEOUT_S)
    return proc, control


def _stats(control: str) -> dict:
    with ControlClient.connect(path=control) as client:
        return client.request({"cmd": "stats"})["stats"]


def test_a_passthrough_udp_flow_gets_the_primarys_replies_in_the_lab(demo_lab):
    proc, control = _service(demo_lab, f"udp {xdp_demo.GUEST_IP}:{xdp_demo.SERVICE_PORT} > *")
    with in_netns(demo_lab.ns("client")):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with sock:
        sock.bind((xdp_demo.CLIENT_IP, xdp_demo.CLIENT_PORT))
        sock.settimeout(xdp_demo.REPLY_TIMEOUT_S)
        replies = []
        for n in range(REQUESTS):
            request = b"request %03d" % n
            sock.sendto(request, (xdp_demo.GUEST_IP, xdp_demo.SERVICE_PORT))
            try:
                replies.append(sock.recv(65536))
            except socket.timeout:
                pytest.fail(f"no reply to {request!r} (got {len(replies)}):\n"
                            + "\n".join(proc.lines[-5:]))
        sock.settimeout(0.3)                     # the secondary's answers never come
        with pytest.raises(socket.timeout):
            replies.append(sock.recv(65536))
    assert replies == [xdp_demo.answer(b"request %03d" % n) for n in range(REQUESTS)]
    s = _stats(control)
    assert s["released"]["passthrough"] == REQUESTS
    assert s["frames_in"] == {"primary": REQUESTS, "secondary": 0}
    assert s["verdicts"]["passthrough"] == 2 * REQUESTS      # each guest's replies
    assert sum(s["checkpoint_requests"].values()) == 0
    assert s["connections"]["count"] == 0                     # uncompared: no entry


def test_a_passthrough_tcp_flow_works_end_to_end_in_the_lab(demo_lab):
    proc, control = _service(demo_lab, f"tcp {xdp_demo.GUEST_IP}:{TCP_PORT} > *")
    with in_netns(demo_lab.ns("client")):
        conn = socket.create_connection((xdp_demo.GUEST_IP, TCP_PORT), timeout=5)
    with conn:
        got = []
        for n in range(REQUESTS):
            conn.sendall(b"line %d;" % n)
            got.append(conn.recv(65536))
    assert b"".join(got) == b"".join(b"echo line %d;" % n for n in range(REQUESTS))
    s = _stats(control)
    assert s["released"]["passthrough"] >= REQUESTS
    assert s["frames_in"]["secondary"] == 0
    assert sum(s["checkpoint_requests"].values()) == 0


# --- a refused change changes nothing ------------------------------------------------------

def test_the_rule_past_the_limit_is_refused_and_nothing_changes(lab):  # noqa: F811
    control = str(lab.dir / "control.sock")
    lab.start(*compare_args(lab, None, "--control", control))
    out, _note = lab.connect("out.sock"), lab.connect("notify.sock")
    lab.send("p", udp(b"held: its twin never comes"))
    with ControlClient.connect(path=control) as client:
        deadline = time.monotonic() + 5
        while client.request({"cmd": "stats"})["stats"]["held"]["primary"] != 1:
            assert time.monotonic() < deadline, "the primary's frame was not held"
            time.sleep(0.05)
        for n in range(MAX_PASSTHROUGH_RULES):
            reply = client.request({"cmd": "passthrough", "op": "add",
                                    "flow": f"udp * > 10.98.7.{n}:9"})
            assert reply["ok"], reply
        # One more, and it covers the held frame's flow.
        reply = client.request({"cmd": "passthrough", "op": "add", "flow": "udp 10.98.0.2 > *"})
        assert not reply["ok"]
        assert reply["error"] == (f"the passthrough list is full ({MAX_PASSTHROUGH_RULES} "
                                  "rules); delete one first")
        s = client.request({"cmd": "stats"})["stats"]
        rules = client.request({"cmd": "passthrough", "op": "list"})["rules"]
    assert s["held"]["primary"] == 1 and s["released_total"] == 0
    assert len(rules) == MAX_PASSTHROUGH_RULES and s["passthrough_rules"] == len(rules)
    assert quiet(out), "the held frame was released by the refused change"


def test_passthrough_frames_go_to_a_chardev_outdev_too_in_flow_order(lab):  # noqa: F811
    """XDP inputs, a chardev outdev: the primary's passthrough frames come
    out at once and in order, without waiting for the compared ones; the
    secondary's never."""
    from colo_xdp.lab import pktgen as g
    from test_service_xdp import records

    lab.start(*compare_args(lab, None, "--passthrough", "udp * > *:53"))
    out, _note = lab.connect("out.sock"), lab.connect("notify.sock")
    passed = [udp(b"passthrough %d" % i) for i in range(5)]            # to port 53
    compared = [g.udp_frame(b"compared %d" % i, src="10.98.0.2", dst="10.98.0.1",
                            sport=4000, dport=54) for i in range(5)]
    lab.send("p", *[f for pair in zip(compared, passed) for f in pair])
    assert records(out, 5) == passed                  # the compared ones wait for twins
    lab.send("s", *[udp(b"secondary's own %d" % i) for i in range(5)], *compared)
    assert records(out, 5) == compared
    assert quiet(out), "a secondary frame left"
