"""The chardev inputs in C (csrc/chardev_glue.c): read a socket, feed the
engine, write what it released, and under load go round the inputs again,
on socketpairs.  What each result field says is what roles.Input and
roles.Outdev act on: bytes read or the peer gone or nothing waiting,
records taken and the rest left, flow control's hold, framing lost, and the
write's bytes, error and remainder; and when a call goes on and when it
stops."""
from __future__ import annotations

import errno
import socket
import struct

import pytest

from colo_xdp import native
from colo_xdp.engine import CheckpointRequest, Engine, EngineConfig, Side
from colo_xdp.lab import pktgen

ROOM = 1 << 16
CHUNK = ROOM // 2


def _frame(i: int, size: int = 0) -> bytes:
    return pktgen.udp_frame((b"glue %04d" % i).ljust(size, b"."), sport=1000, dport=2000)


def _socketpair():
    ends = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    yield ends
    for s in ends:
        s.close()


pair = pytest.fixture(_socketpair, name="pair")    # an input: the peer's end, ours
pair2 = pytest.fixture(_socketpair, name="pair2")  # a second input
out = pytest.fixture(_socketpair, name="out")      # the outdev: ours, the peer's end


class Turns:
    """An input's buffer and its calls into the glue, as roles.Input keeps them."""

    def __init__(self, engine: Engine, side: Side, sock: socket.socket):
        self.engine, self.side, self.sock = engine, side, sock
        self.buf = bytearray(ROOM)
        self.io = native.ChardevInput(side, self.buf, CHUNK)
        self.io.st.fd = sock.fileno()
        self.pump = native.ChardevPump()

    @property
    def st(self):
        return self.io.st

    def run(self, out_fd: int = -1, force: bool = False, now: int = 0, others=(),
            rounds: int = 1):
        return self.pump.run(self.engine.handle, [self.io] + [o.io for o in others], rounds,
                             now, force, out_fd)


def _records(n: int, size: int = 0, first: int = 0) -> bytes:
    return b"".join(pktgen.encode(_frame(first + i, size)) for i in range(n))


def _recv_all(sock: socket.socket, want: int) -> bytes:
    got = b""
    sock.settimeout(2)
    while len(got) < want:
        got += sock.recv(1 << 20)
    return got


def test_a_pair_read_on_both_sides_is_written_out_in_one_turn(pair, pair2, out):
    engine = Engine(EngineConfig())
    frame = pktgen.encode(_frame(0))
    sec = Turns(engine, Side.SECONDARY, pair[1])
    prim = Turns(engine, Side.PRIMARY, pair2[1])
    pair[0].send(frame)
    r = sec.run(out[0].fileno())
    assert (sec.st.nread, sec.st.feed, sec.st.took, r.nsent, r.out_left) == \
        (len(frame), 0, len(frame), 0, 0)
    pair2[0].send(frame)
    r = prim.run(out[0].fileno())
    assert (prim.st.nread, prim.st.took, r.nsent, r.out_left) == (len(frame),) * 3 + (0,)
    assert out[1].recv(4096) == frame
    assert engine.counters().released_total == 1


def test_a_partial_record_is_left_for_the_next_turn(pair):
    engine = Engine(EngineConfig())
    engine.failover()
    frame = pktgen.encode(_frame(1))
    turns = Turns(engine, Side.PRIMARY, pair[1])
    pair[0].send(frame + frame[:10])
    r = turns.run()
    assert (turns.st.nread, turns.st.took) == (len(frame) + 10, len(frame))
    assert (turns.st.start, turns.st.end) == (len(frame), len(frame) + 10)
    assert r.out_left == len(frame)          # out_fd -1: the caller writes
    pair[0].send(frame[10:])
    turns.run()
    assert turns.st.took == len(frame) and turns.st.start == turns.st.end == 0
    assert engine.output_pending() == 2 * len(frame)


def test_a_partial_record_slides_to_the_front_when_a_chunk_would_not_fit(pair):
    engine = Engine(EngineConfig())
    engine.failover()
    frame = pktgen.encode(_frame(9, 1000))
    turns = Turns(engine, Side.PRIMARY, pair[1])
    turns.st.start, turns.st.end = ROOM - CHUNK, ROOM - CHUNK + 10
    turns.buf[ROOM - CHUNK:ROOM - CHUNK + 10] = frame[:10]
    pair[0].send(frame[10:])
    turns.run()
    assert turns.st.took == len(frame) and turns.st.start == turns.st.end == 0
    assert engine.output_pending() == len(frame)


def test_nothing_waiting_and_a_closed_peer(pair):
    engine = Engine(EngineConfig())
    turns = Turns(engine, Side.PRIMARY, pair[1])
    turns.run()
    assert turns.st.nread == -errno.EAGAIN
    pair[0].close()
    turns.run()
    assert (turns.st.nread, turns.st.took) == (0, 0)


def test_flow_control_holds_a_side_that_runs_ahead(pair):
    engine = Engine(EngineConfig(flow_high_water=2))
    turns = Turns(engine, Side.SECONDARY, pair[1])
    records = _records(5)
    pair[0].send(records)
    turns.run()
    assert turns.st.feed == native.CX_FEED_BLOCKED and turns.st.held
    assert 0 < turns.st.took < len(records)
    assert engine.queued(Side.SECONDARY) == 2
    pair[0].send(pktgen.encode(_frame(5)))
    turns.run()                                # held: fed again, not read
    assert turns.st.held and turns.st.nread == -errno.EAGAIN and turns.st.took == 0
    turns.run(force=True)                      # forced: every record is taken, then read
    assert not turns.st.held and turns.st.start == turns.st.end
    assert engine.queued(Side.SECONDARY) == 6


def test_a_length_past_any_frame_is_framing_lost(pair):
    engine = Engine(EngineConfig())
    turns = Turns(engine, Side.PRIMARY, pair[1])
    good = pktgen.encode(_frame(2))
    pair[0].send(good + struct.pack("!I", native.CX_FRAMING_LOST_LEN + 1) + b"x" * 16)
    turns.run()
    assert turns.st.feed == -errno.EPROTO
    assert turns.st.took == len(good)        # the good record before it was fed


def test_a_write_to_a_gone_outdev_says_why_and_keeps_the_frames(pair, out):
    engine = Engine(EngineConfig())
    engine.failover()
    frame = pktgen.encode(_frame(3))
    turns = Turns(engine, Side.PRIMARY, pair[1])
    out[1].close()
    pair[0].send(frame)
    r = turns.run(out[0].fileno())
    assert r.nsent == -errno.EPIPE
    assert r.out_left == len(frame)


def test_under_load_one_call_goes_round_the_inputs_until_they_are_drained(pair, pair2, out):
    engine = Engine(EngineConfig())
    prim = Turns(engine, Side.PRIMARY, pair[1])
    sec = Turns(engine, Side.SECONDARY, pair2[1])
    records = _records(200, 400)             # 2.5 chunks a side
    pair[0].sendall(records)
    pair2[0].sendall(records)
    r = prim.run(out[0].fileno(), others=[sec], rounds=64)
    assert prim.st.read == sec.st.read == len(records)
    assert r.rounds > 3 and (r.nsent, r.out_left) != (0, 0) and r.out_left == 0
    assert _recv_all(out[1], len(records)) == records
    assert engine.counters().released_total == 200


def test_a_read_that_brings_little_ends_the_call_at_once(pair, pair2, out):
    """A lone frame (COLO's request and reply traffic) costs one read, not a
    round of reads of every input."""
    engine = Engine(EngineConfig())
    prim = Turns(engine, Side.PRIMARY, pair[1])
    sec = Turns(engine, Side.SECONDARY, pair2[1])
    frame = pktgen.encode(_frame(4))
    pair[0].send(frame)
    pair2[0].send(frame)
    r = prim.run(out[0].fileno(), others=[sec], rounds=64)
    assert r.rounds == 1 and prim.st.read == len(frame)
    assert (sec.st.read, sec.st.nread) == (0, -errno.EAGAIN)


def test_max_rounds_bounds_the_call(pair, pair2, out):
    engine = Engine(EngineConfig())
    prim = Turns(engine, Side.PRIMARY, pair[1])
    sec = Turns(engine, Side.SECONDARY, pair2[1])
    records = _records(200, 400)
    pair[0].sendall(records)
    pair2[0].sendall(records)
    r = prim.run(out[0].fileno(), others=[sec], rounds=2)
    assert r.rounds == 2 and prim.st.read == 2 * CHUNK and sec.st.read == CHUNK


def test_an_event_ends_the_call(pair, pair2, out):
    """A mismatch asks for a checkpoint: the caller hears of it at once, the
    rest waits in the sockets."""
    engine = Engine(EngineConfig())
    prim = Turns(engine, Side.PRIMARY, pair[1])
    sec = Turns(engine, Side.SECONDARY, pair2[1])
    records = _records(200, 400)
    pair[0].sendall(records)
    pair2[0].sendall(_records(200, 400, first=1))     # every frame differs
    r = prim.run(out[0].fileno(), others=[sec], rounds=64)
    assert r.rounds == 2 and sec.st.read == CHUNK and prim.st.read == 2 * CHUNK
    assert any(isinstance(ev, CheckpointRequest) for ev in engine.drain_events())


def test_a_held_input_is_fed_again_in_the_call_as_the_other_catches_up(pair, pair2, out):
    engine = Engine(EngineConfig(flow_high_water=8))
    prim = Turns(engine, Side.PRIMARY, pair[1])
    sec = Turns(engine, Side.SECONDARY, pair2[1])
    records = _records(60, 400)
    pair2[0].sendall(records)                 # the secondary leads by all of it
    r = sec.run(out[0].fileno(), others=[prim], rounds=64)
    assert sec.st.held and engine.queued(Side.SECONDARY) == 8 and r.rounds == 2
    pair[0].sendall(records)
    r = prim.run(out[0].fileno(), others=[sec], rounds=64)
    assert not sec.st.held and not prim.st.held
    assert engine.counters().released_total == 60
    assert _recv_all(out[1], len(records)) == records


def test_a_full_outdev_ends_the_call(pair, out):
    engine = Engine(EngineConfig())
    engine.failover()
    out[0].setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    prim = Turns(engine, Side.PRIMARY, pair[1])
    pair[0].sendall(_records(200, 400))
    r = prim.run(out[0].fileno(), rounds=64)
    assert r.rounds == 1 and prim.st.read == CHUNK
    assert r.nsent > 0 and r.out_left > 0


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
