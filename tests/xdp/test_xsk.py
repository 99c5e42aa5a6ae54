"""AF_XDP sockets (csrc/xsk.c through colo_xdp.transport.xdp.xsk) on a real veth.

classify.c runs on the host end with the socket in its XSKMAP; the guest
namespace sends frames from the other end and receives what the socket
transmits.  Frames are taken and sent in bursts, as the guest sent them
(nothing in front: the engine parses them).
"""
from __future__ import annotations

import contextlib
import select
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Iterator

import pytest

from colo_xdp.lab import pktgen
from colo_xdp.transport.xdp.classify_abi import Side, Verdict
from colo_xdp.transport.xdp.classifier import Mode, XdpClassifier
from colo_xdp.transport.xdp.xsk import XskConfig, XskError, XskSocket

from xdp_kit import VethPair, in_netns

ETH_P_ALL = 0x0003


@dataclass
class Path:
    veth: VethPair
    xsk: XskSocket
    clf: XdpClassifier
    guest: socket.socket            # AF_PACKET on the guest end

    def send(self, frames) -> None:
        for frame in frames:
            self.guest.send(frame)

    def receive(self, count: int, timeout: float = 2.0) -> list[tuple[bytes, bytes, int]]:
        """(frame, the 32 bytes in front of it, addr) of ``count`` frames,
        taken in bursts and handed back burst by burst."""
        got, deadline = [], time.monotonic() + timeout
        while len(got) < count and time.monotonic() < deadline:
            n = self.xsk.rx_burst()
            if not n:
                select.select([self.xsk.fileno()], [], [], 0.05)
                continue
            got += [(bytes(self.xsk.frame(a, length)), bytes(self.xsk.frame(a - 32, 32)), a)
                    for a, length in self.xsk.received(n)]
            self.xsk.rx_done(n)
        return got

    def guest_receives(self, count: int, timeout: float = 2.0) -> list[bytes]:
        out, deadline = [], time.monotonic() + timeout
        while len(out) < count and time.monotonic() < deadline:
            ready, _, _ = select.select([self.guest], [], [], 0.05)
            if ready:
                out.append(self.guest.recv(4096))
        return out


@pytest.fixture
def path(veth, request) -> Iterator[Path]:
    """classify.c attached in native mode (or request.param) with an AF_XDP
    socket on queue 0 of the host end; a packet socket on the guest end."""
    mode = getattr(request, "param", Mode.NATIVE)
    with contextlib.ExitStack() as stack:
        with in_netns(veth.guest_ns):
            guest = stack.enter_context(
                socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL)))
        guest.bind((veth.guest, 0))
        with in_netns(veth.host_ns):
            xsk = stack.enter_context(XskSocket(veth.host, 0))
            clf = stack.enter_context(XdpClassifier(Side.PRIMARY, veth.host, mode=mode))
        clf.set_socket(0, xsk.fileno())
        yield Path(veth, xsk, clf, guest)


@pytest.mark.parametrize("path", list(Mode), ids=lambda m: m.value, indirect=True)
def test_frames_arrive_in_bursts_with_nothing_in_front(path):
    """Every frame to compare arrives, in order, as the guest sent it; the
    classifier writes no metadata in front of it (the engine parses)."""
    frames = []
    for i in range(150):
        kind = i % 3
        if kind == 0:
            frames.append(pktgen.udp_frame(b"u%d" % i, sport=1000 + i, dport=53))
        elif kind == 1:
            frames.append(pktgen.tcp_frame(b"t%d" % i, sport=2000 + i, dport=80, seq=i))
        else:
            frames.append(pktgen.icmp_echo_frame(b"i%d" % i, seq=i))
    path.send(frames)
    got = path.receive(len(frames))
    assert [g[0] for g in got] == frames                # all of them, in order
    assert all(front == bytes(32) for _, front, _ in got)
    counters = path.clf.counters()
    assert counters[Verdict.COMPARE].frames == len(frames)
    assert path.xsk.stats()["rx_dropped"] == 0


def test_frames_not_compared_do_not_reach_the_socket(path):
    path.send([pktgen.arp_frame(), pktgen.neighbor_solicit_frame(), pktgen.udp_frame(b"after")])
    got = path.receive(3, timeout=0.5)
    assert [g[0] for g in got] == [pktgen.udp_frame(b"after")]
    assert path.clf.counters()[Verdict.UNSUPPORTED].frames == 2


def _one_burst(path) -> int:
    path.send([pktgen.udp_frame(b"one")])
    n, deadline = 0, time.monotonic() + 2
    while not n and time.monotonic() < deadline:
        n = path.xsk.rx_burst()
    assert n == 1
    return n


def test_handing_back_a_foreign_address_is_refused(path):
    _one_burst(path)
    path.xsk.addrs[0] = path.xsk.info.umem_bytes - 1024      # a tx frame
    with pytest.raises(XskError, match="not one this socket received"):
        path.xsk.rx_done(1)


def test_handing_back_more_than_the_burst_took_is_refused(path):
    """The C side reads addrs[:n]: n past the burst would read past the array
    (or hand back frames the kernel still owns)."""
    with pytest.raises(XskError, match="hand back 1 frames: the last burst took 0"):
        path.xsk.rx_done(1)
    _one_burst(path)
    with pytest.raises(XskError, match="hand back 2 frames: the last burst took 1"):
        path.xsk.rx_done(2)
    too_many = len(path.xsk.addrs) + 1
    with pytest.raises(XskError, match=f"hand back {too_many} frames"):
        path.xsk.rx_done(too_many)
    path.xsk.rx_done(1)
    with pytest.raises(XskError, match="last burst took 0"):   # not twice
        path.xsk.rx_done(1)


def test_many_bursts_recycle_the_rx_frames(path):
    """More frames than the socket has rx frames: only handing back makes room."""
    total = path.xsk.info.rx_frames * 3
    sent = 0
    received = 0
    while sent < total:
        batch = [pktgen.udp_frame(b"%d" % (sent + i)) for i in range(64)]
        path.send(batch)
        sent += len(batch)
        received += len(path.receive(len(batch)))
    assert received == total


def test_transmit_a_burst(path):
    """More than one kick's worth (32) and more than one burst call."""
    frames = [pktgen.udp_frame(b"back %d" % i, src="10.0.0.2", dst="10.0.0.1",
                               sport=2000, dport=1000) for i in range(200)]
    queued = 0
    deadline = time.monotonic() + 5
    while queued < len(frames) and time.monotonic() < deadline:
        queued += path.xsk.tx_burst(frames[queued:queued + 100])
        path.xsk.tx_reap()
    assert queued == len(frames)
    assert path.guest_receives(len(frames)) == frames
    deadline = time.monotonic() + 2
    while path.xsk.tx_pending and time.monotonic() < deadline:
        path.xsk.tx_reap()
    assert path.xsk.tx_pending == 0
    assert path.xsk.tx_reap() == path.xsk.info.tx_frames


@pytest.mark.parametrize("path", list(Mode), ids=lambda m: m.value, indirect=True)
def test_echo_received_frames_back(path):
    """Receive a burst, send the same frames back out: the forwarding loop."""
    frames = [pktgen.udp_frame(b"echo %d" % i) for i in range(40)]
    path.send(frames)
    got = path.receive(len(frames))
    assert path.xsk.tx_burst([g[0] for g in got]) == len(frames)
    assert path.guest_receives(len(frames)) == frames


def test_tx_frame_too_long(path):
    with pytest.raises(XskError, match="longer than the AF_XDP frame size"):
        path.xsk.tx_burst([b"\0" * 2049])


def test_rebind_right_after_close(veth):
    """The queue stays busy for a while after a close (measured on 6.18:
    bind answers EBUSY for 17-33 ms, 4-5 retries): reopening at once works."""
    with in_netns(veth.host_ns):
        retries = []
        for _ in range(5):
            with XskSocket(veth.host, 0) as xsk:
                retries.append(xsk.info.bind_retries)
    assert retries[0] == 0, retries


def test_missing_queue(veth):
    with in_netns(veth.host_ns), pytest.raises(XskError) as err:
        XskSocket(veth.host, 3).open()
    assert str(err.value) == (f"{veth.host} has no rx queue 3 (it has 1): "
                              "bind one socket per queue, 0..0")


def test_missing_interface(bpf_ready):
    with pytest.raises(XskError, match="there is no interface 'no-such-if0'"):
        XskSocket("no-such-if0").open()


def test_queue_in_use(veth):
    with in_netns(veth.host_ns), XskSocket(veth.host, 0):
        with pytest.raises(XskError, match="rx queue 0 of veth-h is in use"):
            XskSocket(veth.host, 0, XskConfig(bind_timeout_ms=50)).open()


MEMLOCK_CHILD = """
from colo_xdp.transport.xdp.xsk import XskError, XskSocket
try:
    with XskSocket({ifname!r}, 0) as xsk:
        print("open", xsk.info.memlock_raised, xsk.info.memlock_note())
except XskError as err:
    print("error", err)
"""


@pytest.mark.parametrize("limits,drop,expect", [
    ("1048576:8388608", "ipc_lock,-sys_resource", "open True raised RLIMIT_MEMLOCK to 8192 KiB"),
    ("1048576:1048576", "ipc_lock,-sys_resource", "error the AF_XDP UMEM (4096 KiB) is over"),
    ("1048576:1048576", "sys_resource", "open False None"),
], ids=["raised-to-hard", "cannot-raise", "ipc-lock-not-counted"])
def test_memlock(veth, limits, drop, expect):
    """Without CAP_IPC_LOCK the UMEM counts against RLIMIT_MEMLOCK: the soft
    limit is raised as far as allowed, else the error says what to do.
    (Raising the hard limit needs CAP_SYS_RESOURCE, dropped here so that the
    outcome does not depend on the machine.)"""
    caps = f"-{drop}"
    out = subprocess.run(
        ["ip", "netns", "exec", veth.host_ns, "prlimit", f"--memlock={limits}", "--",
         "setpriv", f"--bounding-set={caps}", f"--inh-caps={caps}",
         sys.executable, "-c", MEMLOCK_CHILD.format(ifname=veth.host)],
        capture_output=True, text=True, timeout=60)
    assert out.stdout.startswith(expect), out.stdout + out.stderr


def test_no_wakeup_syscall_unless_a_ring_asks(path):
    """Bound with XDP_USE_NEED_WAKEUP: copy mode never asks for the fill
    ring (no recvfrom), and a tx burst is kicked once, however many frames
    (the tx budget raised to the ring on kernels that allow it)."""
    frames = [pktgen.udp_frame(b"wake %d" % i) for i in range(40)]
    path.send(frames)
    assert len(path.receive(len(frames))) == len(frames)
    st = path.xsk.stats()
    assert st["rx_batches"] > 0 and st["rx_wakeups"] == 0
    assert path.xsk.tx_burst([g for g in frames]) == len(frames)
    st = path.xsk.stats()
    assert st["tx_batches"] == 1
    assert st["tx_kicks"] == (1 if st["tx_budget"] >= len(frames) else 2)
