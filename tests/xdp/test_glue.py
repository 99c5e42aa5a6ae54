"""The engine's releases out of an AF_XDP socket (csrc/xdp_glue.c,
``xdp_glue__tx_from_engine``) on a real veth: each record copied once into
its tx frame, a record no frame can carry skipped and counted where it
stands, a kick that fails never sending a frame twice, a closed socket's
unsent frames sent first by the next, and one kick per batch.

The engine here is a framer (failed over, as ``colo-xdp forward`` uses it):
every frame fed is released at once, in order.
"""
from __future__ import annotations

import contextlib
import select
import socket
import time
from typing import Iterator

import pytest

from colo_xdp.engine import Engine, EngineConfig, Side
from colo_xdp.lab import pktgen
from colo_xdp.transport.xdp.port import (BURST, XdpIface, XdpOutdev, XdpPortError,
                                         tx_from_engine)
from colo_xdp.transport.xdp.xsk import XskSocket

from xdp_kit import VethPair, in_netns, sh

ETH_P_ALL = 0x0003
SO_RCVBUFFORCE = 33
MARK = b"glue-test "


def _frames(n: int, size: int = 0) -> list[bytes]:
    return [pktgen.udp_frame(MARK + b"%04d" % i + b"." * size, src="10.99.0.1",
                             dst="10.99.0.2", sport=1000, dport=2000) for i in range(n)]


def _framer(frames: list[bytes]) -> Engine:
    """An engine that has released ``frames``, in order, to its output."""
    engine = Engine(EngineConfig())
    engine.failover()
    for i, frame in enumerate(frames):
        engine.feed_frame(Side.PRIMARY, frame, i)
    return engine


@contextlib.contextmanager
def _guest(veth: VethPair) -> Iterator[socket.socket]:
    with in_netns(veth.guest_ns):
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    with sock:
        sock.bind((veth.guest, 0))
        yield sock


def _ours(guest: socket.socket, want: int, timeout: float = 3.0) -> list[bytes]:
    """The test's frames the guest end received (incoming only), in order."""
    got, deadline = [], time.monotonic() + timeout
    while len(got) < want and time.monotonic() < deadline:
        if select.select([guest], [], [], 0.05)[0]:
            frame, addr = guest.recvfrom(65536)
            if addr[2] != socket.PACKET_OUTGOING and MARK in frame:
                got.append(frame)
    # a little longer: a duplicate would come right behind
    while select.select([guest], [], [], 0.2)[0]:
        frame, addr = guest.recvfrom(65536)
        if addr[2] != socket.PACKET_OUTGOING and MARK in frame:
            got.append(frame)
    return got


def _drain(xsk: XskSocket, engine: Engine, timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while (engine.output_pending() or xsk.tx_pending) and time.monotonic() < deadline:
        tx_from_engine(xsk, engine)
        xsk.tx_reap()


def test_a_failed_kick_never_sends_a_frame_twice(veth):
    """The host end down: the kick fails (ENETDOWN) after the frames were
    queued.  They left the engine's output all the same and wait in the tx
    ring; with the link up again each goes out once, in order."""
    frames = _frames(100)
    engine = _framer(frames)
    with _guest(veth) as guest, in_netns(veth.host_ns), XskSocket(veth.host, 0) as xsk:
        sh("ip", "-n", veth.host_ns, "link", "set", veth.host, "down")
        pending = engine.output_pending()
        with pytest.raises(XdpPortError, match="sending failed"):
            tx_from_engine(xsk, engine)
        queued = xsk.tx_pending
        assert 0 < queued <= len(frames)
        taken = pending - engine.output_pending()
        assert taken == sum(4 + len(f) for f in frames[:queued])
        sh("ip", "-n", veth.host_ns, "link", "set", veth.host, "up")
        time.sleep(0.1)
        _drain(xsk, engine)
        assert engine.output_pending() == 0 and xsk.tx_pending == 0
        assert _ours(guest, len(frames)) == frames


def test_a_record_no_frame_can_carry_is_skipped_where_it_stands(veth):
    """Frames before and after a record too long for a tx frame, and not
    TCP/UDP to be cut (csrc/segment.c), go out in one call, in order; that
    one is counted in outdev_cut."""
    not_ip = b"\x02" * 6 + b"\x02\x00\x00\x00\x00\x01" + b"\x88\xb5" + MARK + b"." * 3000
    frames = _frames(3) + [not_ip] + _frames(3)
    engine = _framer(frames)
    with _guest(veth) as guest, in_netns(veth.host_ns), XskSocket(veth.host, 0) as xsk:
        assert tx_from_engine(xsk, engine) == 6
        assert engine.output_pending() == 0
        assert engine.counters().outdev_cut == 1
        assert _ours(guest, 6) == frames[:3] + frames[4:]


class _Svc:
    """What XdpOutdev asks of its service."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self.warnings: list[tuple[str, dict]] = []
        self.log = self

    def warning(self, name: str, **fields) -> None:
        self.warnings.append((name, fields))

    def event(self, name: str, **fields) -> None:
        pass

    def watch(self, *args) -> None:
        pass

    def unwatch(self, *args) -> None:
        pass


def test_a_closed_sockets_unsent_frames_go_first_on_the_next(veth):
    """The send fails with frames queued (host end down: ENETDOWN): the
    outdev closes its socket and keeps the frames the kernel never read;
    the next socket sends them first, then the rest, each once, in order."""
    frames = _frames(50)
    engine = _framer(frames)
    svc = _Svc(engine)
    with _guest(veth) as guest, in_netns(veth.host_ns):
        out = XdpOutdev(svc, "outdev", XdpIface(veth.host))
        out.open()
        try:
            sh("ip", "-n", veth.host_ns, "link", "set", veth.host, "down")
            out.write_pending()
            assert out.sock is None and out.retrying
            assert len(out.carry) == len(frames)       # one burst: all 50 queued
            assert ("xdp_tx_unsent", {"role": "outdev", "iface": veth.host,
                                      "frames": len(frames), "kept": 1}) in svc.warnings
            for i, frame in enumerate(_frames(60)[50:]):     # released meanwhile
                engine.feed_frame(Side.PRIMARY, frame, 100 + i)
            sh("ip", "-n", veth.host_ns, "link", "set", veth.host, "up")
            out.maybe_retry(time.monotonic() + 10)
            assert out.sock is not None
            assert _ours(guest, 60) == _frames(60)
            assert engine.counters().outdev_unsent == 0
        finally:
            out.shutdown()


def test_unsent_frames_at_exit_are_counted(veth):
    """Frames a closed socket left unsent and no socket came for: at exit
    they are counted in outdev_unsent (and logged)."""
    engine = _framer(_frames(20))
    svc = _Svc(engine)
    with in_netns(veth.host_ns):
        out = XdpOutdev(svc, "outdev", XdpIface(veth.host))
        out.open()
        sh("ip", "-n", veth.host_ns, "link", "set", veth.host, "down")
        out.write_pending()
        out.shutdown()
    assert engine.counters().outdev_unsent == 20
    assert engine.output_pending() == 0
    assert ("xdp_tx_unsent", {"role": "outdev", "iface": veth.host, "frames": 20,
                              "kept": 0}) in svc.warnings


def test_one_kick_per_batch_not_per_burst(veth):
    """need_wakeup: the outdev queues burst after burst and kicks the
    kernel once the batch is queued (or the ring is full), not once a
    burst; every frame arrives, once, in order."""
    frames = _frames(2000)
    engine = _framer(frames)
    svc = _Svc(engine)
    with _guest(veth) as guest, in_netns(veth.host_ns):
        guest.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 16 << 20)
        out = XdpOutdev(svc, "outdev", XdpIface(veth.host))
        out.open()
        try:
            deadline = time.monotonic() + 5
            while engine.output_pending() and time.monotonic() < deadline:
                out.write_pending()
                out.wait_writable(0.05)
            assert engine.output_pending() == 0
            st = out.sock.stats()
            assert _ours(guest, len(frames)) == frames
        finally:
            out.shutdown()
    assert st["tx_batches"] >= len(frames) // BURST
    assert st["tx_kicks"] < st["tx_batches"], st
