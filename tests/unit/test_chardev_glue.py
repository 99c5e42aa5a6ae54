"""One input's turn in C (csrc/chardev_glue.c): read a socket, feed the
engine, write what it released, on socketpairs.  What each result field
says is what roles.Input and roles.Outdev act on: bytes read or the peer
gone or nothing waiting, records taken and the rest left, flow control's
hold, framing lost, and the write's bytes, error and remainder."""
from __future__ import annotations

import errno
import socket
import struct

import pytest

from colo_xdp import native
from colo_xdp.engine import Engine, EngineConfig, Side
from colo_xdp.lab import pktgen

ROOM = 1 << 16


def _frame(i: int) -> bytes:
    return pktgen.udp_frame(b"glue %04d" % i, sport=1000, dport=2000)


def _socketpair():
    ends = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    yield ends
    for s in ends:
        s.close()


pair = pytest.fixture(_socketpair, name="pair")    # an input: the peer's end, ours
out = pytest.fixture(_socketpair, name="out")      # the outdev: ours, the peer's end


class Turns:
    """An input's buffer and its turns, as roles.Input keeps them."""

    def __init__(self, engine: Engine, side: Side, sock: socket.socket):
        self.engine, self.side, self.sock = engine, side, sock
        self.buf = bytearray(ROOM)
        self.ptr = native.pointer_to(self.buf)
        self.turn = native.ChardevTurn()
        self.start = self.end = 0

    def run(self, out_fd: int = -1, force: bool = False, now: int = 0):
        t = self.turn.read_feed_write(self.engine.handle, self.side, self.sock.fileno(),
                                      self.ptr, self.start, self.end, ROOM - self.end, now,
                                      force, out_fd)
        if t.nread > 0:
            self.end += t.nread
            if t.feed >= 0:
                self.start += t.consumed
        return t


def test_a_pair_read_on_both_sides_is_written_out_in_one_turn(pair, out):
    engine = Engine(EngineConfig())
    frame = pktgen.encode(_frame(0))
    sec = Turns(engine, Side.SECONDARY, pair[1])
    pair[0].send(frame)
    t = sec.run(out[0].fileno())
    assert (t.nread, t.feed, t.consumed, t.nsent, t.out_left) == (len(frame), 0, len(frame), 0, 0)
    p = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with p[0], p[1]:
        prim = Turns(engine, Side.PRIMARY, p[1])
        p[0].send(frame)
        t = prim.run(out[0].fileno())
        assert (t.nread, t.consumed, t.nsent, t.out_left) == (len(frame),) * 3 + (0,)
    assert out[1].recv(4096) == frame
    assert engine.counters().released_total == 1


def test_a_partial_record_is_left_for_the_next_turn(pair):
    engine = Engine(EngineConfig())
    engine.failover()
    frame = pktgen.encode(_frame(1))
    turns = Turns(engine, Side.PRIMARY, pair[1])
    pair[0].send(frame + frame[:10])
    t = turns.run()
    assert (t.nread, t.consumed) == (len(frame) + 10, len(frame))
    assert t.out_left == len(frame)          # out_fd -1: the caller writes
    pair[0].send(frame[10:])
    t = turns.run()
    assert t.consumed == len(frame) and turns.start == turns.end == 2 * len(frame)
    assert engine.output_pending() == 2 * len(frame)


def test_nothing_waiting_and_a_closed_peer(pair):
    engine = Engine(EngineConfig())
    turns = Turns(engine, Side.PRIMARY, pair[1])
    assert turns.run().nread == -errno.EAGAIN
    pair[0].close()
    t = turns.run()
    assert (t.nread, t.consumed) == (0, 0)


def test_flow_control_holds_a_side_that_runs_ahead(pair):
    engine = Engine(EngineConfig(flow_high_water=2))
    turns = Turns(engine, Side.SECONDARY, pair[1])
    records = b"".join(pktgen.encode(_frame(i)) for i in range(5))
    pair[0].send(records)
    t = turns.run()
    assert t.feed == native.CX_FEED_BLOCKED
    assert 0 < t.consumed < len(records)
    assert engine.queued(Side.SECONDARY) == 2
    pair[0].send(pktgen.encode(_frame(5)))     # forced: every record read is taken
    t = turns.run(force=True)
    assert t.feed == 0 and turns.start == turns.end
    assert engine.queued(Side.SECONDARY) == 6


def test_a_length_past_any_frame_is_framing_lost(pair):
    engine = Engine(EngineConfig())
    turns = Turns(engine, Side.PRIMARY, pair[1])
    good = pktgen.encode(_frame(2))
    pair[0].send(good + struct.pack("!I", native.CX_FRAMING_LOST_LEN + 1) + b"x" * 16)
    t = turns.run()
    assert t.feed == -errno.EPROTO
    assert t.consumed == len(good)           # the good record before it was fed


def test_a_write_to_a_gone_outdev_says_why_and_keeps_the_frames(pair, out):
    engine = Engine(EngineConfig())
    engine.failover()
    frame = pktgen.encode(_frame(3))
    turns = Turns(engine, Side.PRIMARY, pair[1])
    out[1].close()
    pair[0].send(frame)
    t = turns.run(out[0].fileno())
    assert t.nsent == -errno.EPIPE
    assert t.out_left == len(frame)


def test_a_full_outdev_takes_what_fits_and_the_rest_waits(out):
    engine = Engine(EngineConfig())
    engine.failover()
    out[0].setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    frames = [_frame(i) for i in range(400)]
    for i, f in enumerate(frames):
        engine.feed_frame(Side.PRIMARY, f, i)
    total = engine.output_pending()
    n, left = native.write_out(engine.handle, out[0].fileno())
    assert 0 < n < total and left == total - n
    n2, left2 = native.write_out(engine.handle, out[0].fileno())
    assert (n2, left2) == (-errno.EAGAIN, left)
    got = b""
    while len(got) < n:
        got += out[1].recv(1 << 20)
    assert got == b"".join(pktgen.encode(f) for f in frames)[:n]
