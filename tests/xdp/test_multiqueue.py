"""Multi-queue taps (``ip tuntap add ... multi_queue``, QEMU's ``queues=N``),
driven without a VM: the test opens the tap's queue fds itself (TUNSETIFF
with IFF_MULTI_QUEUE, one fd a queue) and writes a guest's frames into them,
as QEMU's queues would.  The queue a frame arrives on is the fd it was
written to: the classifier redirects it to the socket of that rx queue.

An ``XdpPort`` opens one AF_XDP socket per queue; each test would fail if a
queue were left without one (its frames counted NO_SOCKET and missing) or
if a connection's frames came out of order.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import struct
import time
from typing import Iterator

import pytest

from colo_xdp.engine import Engine, EngineConfig, Side
from colo_xdp.lab import pktgen
from colo_xdp.transport.xdp.classify_abi import Verdict
from colo_xdp.transport.xdp.port import XdpIface, XdpInput, XdpPort, rx_to_engine

from xdp_kit import in_netns, need, sh

TUNSETIFF = 0x400454CA
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_MULTI_QUEUE = 0x0100
QUEUES = 4
PER_CONN = 40


@pytest.fixture
def host_ns(veth) -> str:
    need(os.path.exists("/dev/net/tun"), "/dev/net/tun is missing: no taps here")
    return veth.host_ns


@contextlib.contextmanager
def mq_tap(ns: str, name: str, queues: int) -> Iterator[list[int]]:
    """A multi-queue tap in ns with ``queues`` queues attached, up; yields
    their fds (queue i is fds[i]).  It goes away with the last fd."""
    fds: list[int] = []
    try:
        for _ in range(queues):
            with in_netns(ns):
                fds.append(os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK))
            fcntl.ioctl(fds[-1], TUNSETIFF,
                        struct.pack("16sH", name.encode(), IFF_TAP | IFF_NO_PI | IFF_MULTI_QUEUE))
        sh("ip", "-n", ns, "link", "set", name, "up")
        yield fds
    finally:
        for fd in fds:
            os.close(fd)


def conn_frames(conn: int, src: str = "10.0.0.1") -> list[bytes]:
    """PER_CONN frames of connection ``conn`` (its own source port), numbered."""
    return [pktgen.udp_frame(b"conn %d frame %03d" % (conn, i), src=src, dst="10.0.0.2",
                             sport=5000 + conn, dport=53) for i in range(PER_CONN)]


def write_interleaved(fds: list[int], queue_of: dict[int, int], src: str = "10.0.0.1") -> None:
    """Connection c's frames into queue queue_of[c], round robin over the
    connections, so the queues fill side by side."""
    frames = {c: conn_frames(c, src) for c in queue_of}
    for i in range(PER_CONN):
        for c, q in queue_of.items():
            os.write(fds[q], frames[c][i])


def test_every_queue_is_served_in_order(host_ns):
    """One socket per queue, each bound to its queue; frames written on
    queue q reach queue q's socket, all of them, in the order written."""
    with mq_tap(host_ns, "cxmq0", QUEUES) as fds, in_netns(host_ns), \
            XdpPort("cxmq0", Side.PRIMARY) as port:
        assert [s.queue for s in port.sockets] == list(range(QUEUES))
        write_interleaved(fds, {q: q for q in range(QUEUES)})
        got: dict[int, list[bytes]] = {q: [] for q in range(QUEUES)}
        deadline = time.monotonic() + 3
        while sum(map(len, got.values())) < QUEUES * PER_CONN and time.monotonic() < deadline:
            for sock in port.sockets:
                n = sock.rx_burst()
                got[sock.queue] += [bytes(sock.frame(a, length)) for a, length in sock.received(n)]
                sock.rx_done(n)
        assert got == {q: conn_frames(q) for q in range(QUEUES)}
        verdicts = port.verdicts()
        assert verdicts["compare"] == QUEUES * PER_CONN and verdicts["no_socket"] == 0


def test_connections_on_different_queues_compare_and_keep_their_order(host_ns):
    """Both guests with multi-queue taps, each connection on another queue
    on each side (the secondary's guest may hash it elsewhere): the engine,
    fed from every socket, matches every pair and releases each
    connection's frames in the order the primary sent them."""
    engine = Engine(EngineConfig())
    with mq_tap(host_ns, "cxmqp", QUEUES) as pfds, mq_tap(host_ns, "cxmqs", QUEUES) as sfds, \
            in_netns(host_ns), XdpPort("cxmqp", Side.PRIMARY) as pport, \
            XdpPort("cxmqs", Side.SECONDARY) as sport:
        write_interleaved(pfds, {c: c for c in range(QUEUES)})
        write_interleaved(sfds, {c: (c + 1) % QUEUES for c in range(QUEUES)})
        deadline = time.monotonic() + 3
        while engine.counters().released_total < QUEUES * PER_CONN \
                and time.monotonic() < deadline:
            for port in (pport, sport):
                for sock in port.sockets:
                    rx_to_engine(sock, engine, port.side, int(time.monotonic() * 1000))
        for port in (pport, sport):
            assert port.verdicts()["no_socket"] == 0
    out = bytes(engine.output())
    released, at = [], 0
    while at < len(out):
        n = int.from_bytes(out[at:at + 4], "big")
        released.append(out[at + 4:at + 4 + n])
        at += 4 + n
    c = engine.counters()
    assert c.released["matched"] == QUEUES * PER_CONN, c
    assert sum(c.checkpoints.values()) == 0
    for conn in range(QUEUES):
        mine = [f for f in released if b"conn %d " % conn in f]
        assert mine == conn_frames(conn)


class _Svc:
    """What XdpInput asks of its service."""

    paused = False

    def __init__(self, engine: Engine):
        self.engine = engine
        self.warnings: list[str] = []
        self.log = self

    def warning(self, name: str, **fields) -> None:
        self.warnings.append(name)

    def event(self, name: str, **fields) -> None:
        pass

    def now_ms(self) -> int:
        return int(time.monotonic() * 1000)

    def watch(self, *args) -> None:
        pass

    def unwatch(self, *args) -> None:
        pass

    def after_batch(self) -> None:
        pass


def test_queues_attached_later_get_sockets(host_ns):
    """QEMU may attach a tap's queues after colo-xdp opened it: within a
    check the input is opened again with a socket on every queue, and
    frames on the new queues reach the engine."""
    engine = Engine(EngineConfig())
    engine.failover()                        # a framer: every frame released
    svc = _Svc(engine)
    with mq_tap(host_ns, "cxmql", 2) as fds, in_netns(host_ns):
        inp = XdpInput(svc, "primary-in", XdpIface("cxmql"), Side.PRIMARY)
        inp.open()
        try:
            assert len(inp.port.sockets) == 2
            with in_netns(host_ns):
                later = [os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK) for _ in range(2)]
            try:
                for fd in later:
                    fcntl.ioctl(fd, TUNSETIFF, struct.pack(
                        "16sH", b"cxmql", IFF_TAP | IFF_NO_PI | IFF_MULTI_QUEUE))
                inp.maybe_retry(time.monotonic() + 10)
                assert "xdp_queues_changed" in svc.warnings
                assert [s.queue for s in inp.port.sockets] == [0, 1, 2, 3]
                write_interleaved(fds + later, {c: c for c in range(QUEUES)})
                deadline = time.monotonic() + 3
                while engine.counters().released_total < QUEUES * PER_CONN \
                        and time.monotonic() < deadline:
                    inp.read_now(force=True)
                assert engine.counters().released_total == QUEUES * PER_CONN
                assert inp.verdicts()["no_socket"] == 0
            finally:
                for fd in later:
                    os.close(fd)
        finally:
            inp.shutdown()
