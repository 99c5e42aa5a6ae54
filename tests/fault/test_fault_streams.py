"""Broken peers: cut mid-frame, garbage, impossible lengths, zero-length
records, on every input and on notify-dev, again and again.

QEMU 7.2 aborts on a zero-length frame, disables an input for good on an
oversized one and glues a cut frame to the next connection's bytes.  Here
each fault closes only the stream it broke, is counted, and the next peer on
that socket is served from a clean record boundary.  Every test ends by
checking what was released (exactly, in order), what the `stopped` summary
counted, and that a fresh pair still goes through.
"""
from __future__ import annotations

import random
import signal
import time
import struct
import threading

import pytest

from colo_xdp.lab.pktgen import NET_BUFSIZE
from faultkit import (COLO_CHECKPOINT_WIRE, DO_CHECKPOINT_WIRE, INIT_REPLY_WIRE, INIT_WIRE,
                      TIMEOUT, PairSender, connect_all, encode, flow_frame, framed,
                      free_tcp_ports, still_serving)

SOCK = {"primary": "pin.sock", "secondary": "sin.sock"}
ROUNDS = 12


@pytest.mark.parametrize("side", ["primary", "secondary"])
def test_peer_cut_mid_frame_again_and_again(lab, side):
    """Each round the peer sends a whole frame and part of the next (cut in
    the length word or in the frame), then goes; a new peer sends that frame
    whole.  Every frame is released once, in order; every cut is counted."""
    cmp = lab.start(notify=False)
    out, _, pin, sin = connect_all(lab, notify=False)
    peers = {"primary": pin, "secondary": sin}
    other = peers["secondary" if side == "primary" else "primary"]
    rnd = random.Random(side)
    frames = [flow_frame(1, i, size=rnd.randrange(200)) for i in range(2 * ROUNDS)]
    other.send(*frames)
    for r in range(ROUNDS):
        whole, cut = frames[2 * r], encode(frames[2 * r + 1])
        at = rnd.choice([1, 3, 4, 5, rnd.randrange(1, len(cut))])
        peers[side].send_raw(encode(whole) + cut[:at])
        assert out.frames(1) == [whole]
        peers[side].close()
        cmp.wait_line(rf"frame_dropped side={side} reason=truncated bytes={at}$")
        peers[side] = lab.connect(SOCK[side])
        peers[side].send(frames[2 * r + 1])
        assert out.frames(1) == [frames[2 * r + 1]]
    out.expect_quiet()
    still_serving(out, peers["primary"], peers["secondary"])

    s = cmp.stop_summary()
    cuts = (ROUNDS, 0) if side == "primary" else (0, ROUNDS)
    assert s.frames_in == (2 * ROUNDS + 1 + cuts[0], 2 * ROUNDS + 1 + cuts[1])
    assert s.dropped == cuts
    assert (s.released, s.checkpoints) == (2 * ROUNDS + 1, 0)


def _impossible_lengths(rnd: random.Random) -> list[bytes]:
    """Record headers no frame can have (past CX_FRAMING_LOST_LEN): the
    stream's framing is lost."""
    return [struct.pack(">I", (1 << 20) + 1), b"\xff\xff\xff\xff",
            struct.pack(">I", rnd.randrange((1 << 20) + 2, 1 << 32))]


def _garbage(rnd: random.Random, n: int) -> list[bytes]:
    """Frames of random bytes that are not IPv4 (unsupported), 1..1500 long."""
    out = []
    for _ in range(n):
        f = bytearray(rnd.randbytes(rnd.choice([1, 13, 14, 60, rnd.randrange(1, 1500)])))
        if len(f) >= 14 and f[12:14] == b"\x08\x00":
            f[13] = 0x06
        out.append(bytes(f))
    return out


@pytest.mark.parametrize("side", ["primary", "secondary"])
def test_garbage_frames_and_impossible_lengths(lab, side):
    """Garbage frames pass (primary) or are dropped (secondary) as
    unsupported; an impossible length (over 1 MiB, up to 2**32-1) closes that
    stream after the whole records before it, with its count; compare goes
    on after every reconnect."""
    cmp = lab.start(notify=False)
    out, _, pin, sin = connect_all(lab, notify=False)
    peers = {"primary": pin, "secondary": sin}
    rnd = random.Random(7)
    bad = _impossible_lengths(rnd)
    released = garbage_total = 0
    for header in bad:
        garbage = _garbage(rnd, 5)
        garbage_total += len(garbage)
        mark = len(cmp.lines)
        peers[side].send_raw(framed(garbage) + header + rnd.randbytes(100))
        peers[side].wait_closed()
        cmp.wait_line(rf"stream_broken role={side}-in reason=oversize", start=mark)
        if side == "primary":
            assert out.frames(len(garbage)) == garbage
            released += len(garbage)
        peers[side] = lab.connect(SOCK[side])
        still_serving(out, peers["primary"], peers["secondary"])
        released += 1
    out.expect_quiet()

    s = cmp.stop_summary()
    pairs = len(bad)
    if side == "primary":
        assert s.frames_in == (garbage_total + len(bad) + pairs, pairs)
        assert s.dropped == (len(bad), 0)
    else:
        assert s.frames_in == (pairs, garbage_total + len(bad) + pairs)
        assert s.dropped == (0, garbage_total + len(bad))
    assert (s.released, s.checkpoints) == (released, 0)


def test_empty_and_oversize_records_are_read_past(lab):
    """A zero length is an empty frame and an oversize one (up to 1 MiB) has
    its body skipped: both counted, the frames after them read on, the
    stream kept."""
    cmp = lab.start(notify=False)
    out, _, pin, sin = connect_all(lab, notify=False)
    before, after = flow_frame(5, 1), flow_frame(6, 1)
    body = b"\x00" * (NET_BUFSIZE + 1)
    pin.send_raw(framed([before]) + b"\0\0\0\0" + struct.pack(">I", len(body)) + body
                 + framed([after]))
    sin.send(before, after)
    assert out.frames(2) == [before, after]
    still_serving(out, pin, sin)
    s = cmp.stop_summary()
    assert s.dropped == (2, 0) and s.released == 3


def test_vnet_streams_with_broken_records(lab):
    """With vnet headers the record has a second word; a zero length and an
    oversize length are read past, a vnet length past the frame
    (unsupported: passed through from the primary) is survived, and an
    impossible length closes the stream."""
    cmp = lab.start(notify=False, args=("--vnet-hdr-support",))
    out, _, pin, sin = connect_all(lab, vnet=True, notify=False)
    weird = flow_frame(2, 1)
    pin.send_raw(struct.pack(">II", len(weird), 0xFFFFFFFF) + weird)   # vnet len > frame
    assert out.records(1)[0].frame == weird
    body = b"x" * (NET_BUFSIZE + 1)
    sin.send_raw(struct.pack(">II", 0, 0) + struct.pack(">II", len(body), 12) + body)
    sin.send_raw(struct.pack(">II", 0xFFFFFFF0, 12) + b"x" * 16)
    sin.wait_closed()
    sin = lab.connect("sin.sock", vnet=True)
    pair = flow_frame(3, 1)
    pin.send(pair)
    sin.send(pair)
    assert out.records(1)[0].frame == pair
    s = cmp.stop_summary()
    assert s.frames_in == (2, 4) and s.dropped == (0, 3) and s.released == 2


def test_notify_dev_faults(lab):
    """notify-dev: a record cut mid-way by a leaving peer, garbage, a zero
    length and an oversize length each close only notify-dev; a new peer's
    COLO_CHECKPOINT still flushes, and DO_CHECKPOINT still reaches it."""
    cmp = lab.start(args=("--compare-timeout", "60000"))
    out, note, pin, sin = connect_all(lab)
    held = flow_frame(4, 1)
    pin.send(held)
    out.expect_quiet()

    note.send_raw(COLO_CHECKPOINT_WIRE[:9])             # cut: must not count as one
    note.close()
    cmp.wait_line(r"disconnected role=notify-dev")
    for bad in (b"\0\0\0\0", struct.pack(">I", NET_BUFSIZE + 1), b"\xde\xad\xbe\xef"):
        note = lab.connect("notify.sock")
        mark = len(cmp.lines)
        note.send_raw(encode(b"GARBAGE\x00\xff") + bad + b"rest")
        note.wait_closed()
        cmp.wait_line(r"stream_broken role=notify-dev", start=mark)
    out.expect_quiet()                                   # nothing flushed by any of it
    note = lab.connect("notify.sock")
    note.send_raw(INIT_WIRE)
    assert note.read_bytes(len(INIT_REPLY_WIRE)) == INIT_REPLY_WIRE
    note.send_raw(COLO_CHECKPOINT_WIRE)
    assert out.frames(1) == [held]
    pin.send(flow_frame(4, 2))
    sin.send(flow_frame(4, 3))                           # a mismatch asks for a checkpoint
    assert note.read_bytes(len(DO_CHECKPOINT_WIRE)) == DO_CHECKPOINT_WIRE
    note.send_raw(COLO_CHECKPOINT_WIRE)
    assert out.frames(1) == [flow_frame(4, 2)]
    still_serving(out, pin, sin)

    s = cmp.stop_summary()
    assert s.frames_in == (3, 2) and s.released == 3
    assert s.dropped == (0, 1) and s.checkpoints == 1
    assert cmp.count(r"checkpoint_done") == 2


def _flood(lab, pin, sin, frames, per_batch=32) -> PairSender:
    """Send ``frames`` on both inputs, batch by batch, from a thread."""
    wire = [encode(f) for f in frames]
    batches = [b"".join(wire[i:i + per_batch]) for i in range(0, len(wire), per_batch)]
    for peer in (pin, sin):
        peer.sock.settimeout(30.0)
    sender = PairSender(pin, sin, batches)
    sender.start()
    return sender


def _per_flow(frames: list[bytes]) -> dict[bytes, list[bytes]]:
    flows: dict[bytes, list[bytes]] = {}
    for f in frames:
        flows.setdefault(f[26:30] + f[34:36], []).append(f)
    return flows


def test_outdev_leaves_mid_record_and_the_next_one_starts_clean(lab):
    """The outdev stops reading until the service stops reading its inputs
    (backpressure), takes a few frames and leaves with a record half-sent
    (outdev_cut).  The next outdev gets whole records only: the rest of what
    was released, in order; the service goes on comparing.  (A TCP outdev:
    over a unix socket the service's writes, whole records, go in whole or
    not at all, so a record is never cut there.)"""
    (port,) = free_tcp_ports(1)
    cmp = lab.start(notify=False, out=f"tcp:127.0.0.1:{port},server=on",
                    args=("--compare-timeout", "60000"))
    out = lab.connect_tcp(port)
    pin, sin = lab.connect("pin.sock"), lab.connect("sin.sock")
    frames = [flow_frame(5 + i % 7, i, size=1000) for i in range(12_000)]   # 12 MiB a side
    sender = _flood(lab, pin, sin, frames)
    cmp.wait_line(r"backpressure on=True", timeout=20)
    assert out.frames(3) == frames[:3]
    mark = len(cmp.lines)
    out.close()
    cmp.wait_line(r"outdev_cut ", start=mark)
    out = lab.connect_tcp(port)
    rest = out.frames(1, timeout=20)
    start = frames.index(rest[0])
    assert start > 3
    rest += out.frames(len(frames) - start - 1, timeout=30)
    assert rest == frames[start:], "the new outdev got records cut short or out of order"
    sender.join(TIMEOUT)
    assert sender.error is None and not sender.is_alive()
    out.expect_quiet()
    still_serving(out, pin, sin)

    s = cmp.stop_summary()
    assert s.frames_in == (len(frames) + 1, len(frames) + 1)
    assert s.released == len(frames) + 1 and s.dropped == (0, 0) and s.checkpoints == 0


class LeadSender(threading.Thread):
    """Sends the same batches on both inputs, the primary ``lead`` batches
    ahead; blocking sends under the sockets' timeout."""

    def __init__(self, pin, sin, batches: list[bytes], lead: int):
        super().__init__(daemon=True)
        self.pin, self.sin, self.batches, self.lead = pin, sin, batches, lead
        self.error: Exception | None = None

    def run(self) -> None:
        try:
            for i in range(len(self.batches) + self.lead):
                if i < len(self.batches):
                    self.pin.sock.sendall(self.batches[i])
                if i >= self.lead:
                    self.sin.sock.sendall(self.batches[i - self.lead])
        except OSError as exc:
            self.error = exc


def test_an_outdev_stall_does_not_expire_frames(lab):
    """The primary runs 256 frames ahead, so primary frames are always held
    waiting for their secondary copies.  While the outdev is stalled the
    inputs are not read and those copies wait in our own socket buffers: that
    is no reason to ask for a checkpoint.  The stall outlasts compare_timeout
    five times over; no timeout is requested and every pair comes out."""
    cmp = lab.start(args=("--compare-timeout", "200", "--expired-scan-cycle", "50"))
    out, note, pin, sin = connect_all(lab)
    frames = [flow_frame(20 + i % 5, i, size=1200) for i in range(10_000)]
    wire = [encode(f) for f in frames]
    batches = [b"".join(wire[i:i + 32]) for i in range(0, len(wire), 32)]
    for peer in (pin, sin):
        peer.sock.settimeout(30.0)
    sender = LeadSender(pin, sin, batches, lead=8)
    sender.start()
    cmp.wait_line(r"backpressure on=True", timeout=20)
    time.sleep(1.0)
    got = out.frames(len(frames), timeout=30)
    sender.join(TIMEOUT)
    assert sender.error is None and not sender.is_alive()
    assert _per_flow(got) == _per_flow(frames)
    note.expect_quiet(0.2)
    s = cmp.stop_summary()
    assert s.released == len(frames) and s.checkpoints == 0


def test_outdev_stalls_while_checkpoint_and_failover_go_on(lab):
    """While the outdev is stalled (inputs paused), notify-dev and signals
    are still served: a checkpoint flushes into the backlog, SIGUSR1 fails
    over.  When the outdev reads again every primary frame arrives exactly
    once, each connection's in order."""
    cmp = lab.start(args=("--compare-timeout", "60000"))
    out, note, pin, sin = connect_all(lab)
    held = [flow_frame(9, i) for i in range(3)]
    pin.send(*held)                                     # no secondary for these
    frames = [flow_frame(10 + i % 5, i, size=1200) for i in range(10_000)]
    sender = _flood(lab, pin, sin, frames)
    cmp.wait_line(r"backpressure on=True", timeout=20)
    note.send_raw(COLO_CHECKPOINT_WIRE)
    cmp.wait_line(r"checkpoint_done")
    cmp.proc.send_signal(signal.SIGUSR1)
    cmp.wait_line(r"colo-xdp: failover")
    got = out.frames(len(held) + len(frames), timeout=30)
    sender.join(TIMEOUT)
    assert sender.error is None and not sender.is_alive()
    assert sorted(got) == sorted(held + frames), "a primary frame lost or doubled"
    assert _per_flow(got) == _per_flow(held + frames), "a connection's order changed"
    out.expect_quiet()
    after = still_serving(out, pin, sin)                # failed over: passes through

    s = cmp.stop_summary()
    assert s.frames_in[0] == len(held) + len(frames) + 1
    assert s.released == s.frames_in[0] and s.dropped[0] == 0
    assert s.frames_in[1] == len(frames) + 1 and after
