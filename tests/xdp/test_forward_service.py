"""colo-xdp forward as a service: the control socket and /metrics that
compare has, and a back-off when the primary keeps refusing (issue 12)."""
from __future__ import annotations

import json
import re
import socket

from colo_xdp.lab import pktgen as g
from test_service_xdp import TIMEOUT, lab, records, stop, wait_log  # noqa: F401 (lab: fixture)
from xdp_kit import in_netns, sh

METRICS_PORT = 9520          # inside the lab's own host namespace: nothing else there


def udp(tag: bytes) -> bytes:
    return g.udp_frame(tag, src="10.98.0.2", dst="10.98.0.1", sport=4000, dport=53)


def ask(path: str, request: dict) -> dict:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(TIMEOUT)
        sock.connect(path)
        sock.sendall(json.dumps(request).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            data += sock.recv(65536)
    return json.loads(data)


def scrape(ns: str) -> str:
    with in_netns(ns):
        sock = socket.create_connection(("127.0.0.1", METRICS_PORT), timeout=TIMEOUT)
    with sock:
        sock.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return data.decode()


def test_forward_backs_off_then_serves_control_and_metrics(lab):
    ctl = str(lab.dir / "ctl.sock")
    sh("ip", "-n", lab.ns["host"], "link", "set", "lo", "up")       # for --metrics
    proc = lab.start("forward", "--xdp", "s-h", "--to",
                     lab.unix("sin.sock", server=False) + ",reconnect=0.05",
                     "--control", ctl, "--metrics", f"127.0.0.1:{METRICS_PORT}")
    wait_log(proc, "retry_s=0.4")
    waits = [float(m.group(1)) for line in proc.lines if "connect_failed" in line
             for m in [re.search(r"retry_s=(\S+)", line)]]
    assert waits[:5] == [0.05, 0.05, 0.1, 0.2, 0.4], waits   # doubled per failure
    listener = lab.listen("sin.sock")
    peer, _ = listener.accept()
    lab.socks.append(peer)
    frames = [udp(b"forwarded %d" % i) for i in range(7)]
    lab.send("s", *frames)
    assert records(peer, 7) == frames

    stats = ask(ctl, {"cmd": "stats"})["stats"]
    assert stats["mode"] == "forward"
    assert stats["frames_in"]["primary"] == 7 and stats["released_total"] == 7
    assert stats["peers"] == {"to": True, "secondary-xdp": True}
    refused = ask(ctl, {"cmd": "checkpoint"})
    assert not refused["ok"] and "forward compares nothing" in refused["error"]
    refused = ask(ctl, {"cmd": "passthrough", "op": "add", "flow": "icmp"})
    assert not refused["ok"] and "no passthrough rules" in refused["error"]

    text = scrape(lab.ns["host"])
    assert 'colo_xdp_frames_total{side="primary"} 7.0' in text
    assert 'colo_xdp_info{mode="forward"' in text
    assert 'colo_xdp_peer_connected{role="to"} 1.0' in text
    assert "frames_in=7 forwarded=7" in stop(proc)
