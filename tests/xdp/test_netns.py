"""The classifier on a real veth, in namespaces made by the tests.

A "guest" namespace sends crafted frames out of its veth end; the other end,
in the "host" namespace, carries the XDP program, as a guest's tap would.
What passes reaches the host's stack (a UDP socket there sees it), what is
dropped does not; the per-CPU counters account for every frame.  After every
test, on every path (the body raising, SIGTERM, Ctrl-C, SIGKILL), nothing is
left attached: 'ip -d link show' lists no XDP program.
"""
from __future__ import annotations

import select
import signal
import socket
import subprocess
import sys
import time

import pytest

from colo_xdp.lab import pktgen
from colo_xdp.lab.pktgen import EtherAddrs
from colo_xdp.transport.xdp.classify_abi import Side, Verdict
from colo_xdp.transport.xdp.classifier import Mode, XdpClassifier, attached_xdp

from xdp_kit import in_netns, xdp_shown

COMPARED_PORT = 7000
PASSTHROUGH_PORT = 7001


class Rule:
    """A passthrough rule with the engine's PassthroughRule fields."""

    def __init__(self, proto=None, src=None, dst=None, sport=None, dport=None):
        self.proto, self.src, self.dst, self.sport, self.dport = proto, src, dst, sport, dport


def send_from_guest(pair, frames) -> None:
    with in_netns(pair.guest_ns):
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    with sock:
        sock.bind((pair.guest, 0))
        for frame in frames:
            sock.send(frame)


def udp_listener(pair, port: int) -> socket.socket:
    with in_netns(pair.host_ns):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((pair.host_ip, port))
    sock.setblocking(False)
    return sock


def received(sock: socket.socket, expected: int, timeout: float = 1.0) -> list[bytes]:
    """Datagrams on sock: waits for ``expected`` of them, then a little more."""
    out, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(out) >= expected:
            deadline = min(deadline, time.monotonic() + 0.1)
        ready, _, _ = select.select([sock], [], [], max(0.0, deadline - time.monotonic()))
        if ready:
            out.append(sock.recv(2048))
    return out


def wait_counters(clf, total: int, timeout: float = 2.0) -> dict[Verdict, int]:
    deadline = time.monotonic() + timeout
    while True:
        frames = {v: c.frames for v, c in clf.counters().items() if c.frames}
        if sum(frames.values()) >= total or time.monotonic() > deadline:
            return frames
        time.sleep(0.02)


@pytest.mark.parametrize("mode", list(Mode), ids=lambda m: m.value)
@pytest.mark.parametrize("side", list(Side), ids=lambda s: s.name.lower())
def test_traffic_is_classified_and_nothing_is_left(veth, side, mode):
    eth = EtherAddrs(src=veth.mac("guest"), dst=veth.mac("host"))
    udp = lambda port, i: pktgen.udp_frame(f"#{i}".encode(), src=veth.guest_ip,  # noqa: E731
                                           dst=veth.host_ip, sport=5000, dport=port, eth=eth)
    compared = [udp(COMPARED_PORT, i) for i in range(4)]
    passthrough = [udp(PASSTHROUGH_PORT, i) for i in range(3)]
    arp = [pktgen.arp_frame(sender_ip=veth.guest_ip, target_ip=veth.host_ip,
                            sender_mac=eth.src,
                            eth=EtherAddrs(src=eth.src, dst="ff:ff:ff:ff:ff:ff"))] * 2
    tagged = [pktgen.vlan_frame(pktgen.vlan_frame(pktgen.vlan_frame(udp(COMPARED_PORT, 99))))]

    with udp_listener(veth, COMPARED_PORT) as to_compared, \
            udp_listener(veth, PASSTHROUGH_PORT) as to_passthrough:
        with in_netns(veth.host_ns), \
                XdpClassifier(side, veth.host, mode=mode,
                              rules=[Rule(proto=17, dport=PASSTHROUGH_PORT)]) as clf:
            assert xdp_shown(veth.host_ns, veth.host)
            send_from_guest(veth, compared + passthrough + arp + tagged)
            counts = wait_counters(clf, 10)
        passed = received(to_passthrough, 0, timeout=0.2)
        leaked = received(to_compared, 0, timeout=0.2)

    # The primary's passthrough frames go to the engine's socket too (it
    # releases them uncompared): without a socket they are dropped.
    if side is Side.PRIMARY:
        assert counts == {Verdict.NO_SOCKET: 7, Verdict.UNSUPPORTED: 3}
    else:
        assert counts == {Verdict.NO_SOCKET: 4, Verdict.PASSTHROUGH: 3, Verdict.UNSUPPORTED: 3}
    assert passed == [], "a passthrough frame reached the host's stack"
    assert leaked == [], "a frame to compare reached the host without a socket"
    assert not xdp_shown(veth.host_ns, veth.host)
    with in_netns(veth.host_ns):
        assert attached_xdp(veth.host) is None


def test_detached_when_the_body_raises(veth):
    class Boom(Exception):
        pass

    with in_netns(veth.host_ns), pytest.raises(Boom):
        with XdpClassifier(Side.PRIMARY, veth.host, mode=Mode.NATIVE):
            assert xdp_shown(veth.host_ns, veth.host)
            raise Boom()
    assert not xdp_shown(veth.host_ns, veth.host)


def test_detached_when_attaching_fails_half_way(veth):
    """A second classifier on the same interface fails and leaves the first."""
    with in_netns(veth.host_ns):
        with XdpClassifier(Side.PRIMARY, veth.host) as first:
            with pytest.raises(Exception, match="already has an XDP program"):
                with XdpClassifier(Side.PRIMARY, veth.host):
                    pass
            assert first.attached and xdp_shown(veth.host_ns, veth.host)
    assert not xdp_shown(veth.host_ns, veth.host)


CHILD = """
import sys, time
from colo_xdp.transport.xdp.classifier import Mode, XdpClassifier
try:
    with XdpClassifier(int(sys.argv[1]), sys.argv[2], mode=Mode(sys.argv[3])):
        print("attached", flush=True)
        while True:
            time.sleep(1)
except KeyboardInterrupt:
    sys.exit(130)
"""


@pytest.mark.parametrize("signum,status", [
    (signal.SIGTERM, 143),
    (signal.SIGINT, 130),
    (signal.SIGKILL, -signal.SIGKILL),
], ids=["sigterm", "ctrl-c", "sigkill"])
@pytest.mark.parametrize("mode", list(Mode), ids=lambda m: m.value)
def test_detached_when_the_process_is_signalled(veth, signum, status, mode):
    """SIGTERM and Ctrl-C unwind and detach; SIGKILL closes the BPF link."""
    child = subprocess.Popen(
        ["ip", "netns", "exec", veth.host_ns, sys.executable, "-c", CHILD,
         str(int(Side.PRIMARY)), veth.host, mode.value],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = child.stdout.readline()
        assert line.strip() == "attached", child.stderr.read()
        assert xdp_shown(veth.host_ns, veth.host)
        child.send_signal(signum)
        assert child.wait(timeout=10) == status, child.stderr.read()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        child.stdout.close()
        child.stderr.close()
    deadline = time.monotonic() + 2
    while xdp_shown(veth.host_ns, veth.host) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not xdp_shown(veth.host_ns, veth.host)
