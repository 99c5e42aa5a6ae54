"""Floods past the limits: max_queue_size, and 100k connections with
--max-connections below and above that.

QEMU 7.2 keeps 1025 frames a queue and drops the rest silently, and past
16384 connections discards the whole table and every frame in it.  Here what
is dropped is counted, a checkpoint is requested, held frames come out at the
checkpoint in order, idle connections make room, and the process goes on
serving.
"""
from __future__ import annotations

import threading
import time

from faultkit import (COLO_CHECKPOINT_WIRE, DO_CHECKPOINT_WIRE, connect_all, flow_frame,
                      framed, still_serving)

QUEUE = 8
FLOOD = 500
CONNS = 100_000
SMALL_TABLE = 4096      # 25 times fewer than CONNS; room for the read skew of the
                        # two inputs (one 64 KiB chunk each per turn, ~900 frames)


class NotifyReader(threading.Thread):
    """Reads notify-dev (only DO_CHECKPOINT comes) so the service never meets
    a notify peer that stopped reading; counts the requests."""

    def __init__(self, note):
        super().__init__(daemon=True)
        self.sock, self.bytes, self.stopping = note.sock, 0, threading.Event()
        self.sock.settimeout(0.1)
        self.start()

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                data = self.sock.recv(1 << 16)
            except TimeoutError:
                continue
            except OSError:
                return
            if not data:
                return
            self.bytes += len(data)

    @property
    def requests(self) -> int:
        return self.bytes // len(DO_CHECKPOINT_WIRE)

    def wait_for(self, n: int, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while self.requests < n and time.monotonic() < deadline:
            time.sleep(0.02)
        assert self.requests == n, f"{self.requests} checkpoint requests, not {n}"

    def stop(self) -> None:
        self.stopping.set()
        self.join(2)
        self.sock.settimeout(5)


def test_flood_past_max_queue_size_on_both_sides(lab):
    cmp = lab.start(args=("--max-queue-size", str(QUEUE), "--compare-timeout", "60000"))
    out, note, pin, sin = connect_all(lab)
    primary = [flow_frame(1, i) for i in range(FLOOD)]       # nothing to match them
    secondary = [flow_frame(2, i) for i in range(FLOOD)]     # nor these
    pin.send_raw(framed(primary))
    sin.send_raw(framed(secondary))
    for _ in range(2):                                       # one per queue that filled
        assert note.read_bytes(len(DO_CHECKPOINT_WIRE)) == DO_CHECKPOINT_WIRE
    # A pair sent after the floods comes out once both were read: serving,
    # and the floods are behind us.
    still_serving(out, pin, sin)
    note.send_raw(COLO_CHECKPOINT_WIRE)
    assert out.frames(QUEUE) == primary[:QUEUE]              # the ones held, in order
    out.expect_quiet()
    note.expect_quiet(0.1)                                   # no request after the flush
    still_serving(out, pin, sin)

    s = cmp.stop_summary()
    assert s.frames_in == (FLOOD + 2, FLOOD + 2)
    assert s.released == QUEUE + 2
    # primary: the rest of the flood; secondary: the rest, and the held ones flushed
    assert s.dropped == (FLOOD - QUEUE, FLOOD)
    assert s.checkpoints == 2


def primary_frames_in(ctl: str) -> int:
    from colo_xdp.cli.ctl_client import ControlClient
    with ControlClient.connect(path=ctl, timeout=10) as client:
        return client.request({"cmd": "stats"})["stats"]["frames_in"]["primary"]


def test_100k_connections_through_a_small_table(lab):
    """Matched pairs on 100k connections: every one released, in order, with
    nothing dropped, the idle connections evicted to make room.  Then 100k
    primary frames that stay held: the table fills, each further frame is
    dropped and counted as a checkpoint request, one DO_CHECKPOINT asks for
    the checkpoint (one per outstanding checkpoint, docs/compare-rules.md),
    and the checkpoint releases the ones held."""
    ctl = lab.path("ctl.sock")
    cmp = lab.start(args=("--max-connections", str(SMALL_TABLE), "--compare-timeout", "60000",
                          "--control", ctl))
    out, note, pin, sin = connect_all(lab)
    pairs = [flow_frame(c) for c in range(CONNS)]
    for i in range(0, CONNS, 500):                           # the two sides in step
        batch = framed(pairs[i:i + 500])
        pin.send_raw(batch)
        sin.send_raw(batch)
    assert out.frames(CONNS, timeout=60) == pairs
    out.expect_quiet()

    reader = NotifyReader(note)
    held = [flow_frame(CONNS + c) for c in range(CONNS)]
    pin.send_raw(framed(held))
    deadline = time.monotonic() + 60                         # every frame read: held or dropped
    while primary_frames_in(ctl) < 2 * CONNS or not reader.requests:
        assert time.monotonic() < deadline, "the held frames were never all read"
        time.sleep(0.1)
    out.expect_quiet(0.3)
    reader.stop()
    assert reader.requests <= 1 + 60, "DO_CHECKPOINT repeated faster than once a second"
    note.send_raw(COLO_CHECKPOINT_WIRE)
    assert out.frames(SMALL_TABLE, timeout=20) == held[:SMALL_TABLE]
    still_serving(out, pin, sin)

    s = cmp.stop_summary()
    assert s.frames_in == (2 * CONNS + 1, CONNS + 1)
    assert s.released == CONNS + SMALL_TABLE + 1
    assert s.dropped == (CONNS - SMALL_TABLE, 0)
    assert s.checkpoints == CONNS - SMALL_TABLE              # one per frame turned away
    assert cmp.count(r"checkpoint_requested reason=table_full") <= 25 * 60, "not rate-limited"


def test_100k_connections_in_a_200k_connection_table(lab):
    """100k primary frames on 100k connections are all held, their 100k
    secondaries release every one, in order; nothing dropped or requested."""
    cmp = lab.start(args=("--max-connections", "200000", "--compare-timeout", "60000"))
    out, note, pin, sin = connect_all(lab)
    frames = [flow_frame(c, 7) for c in range(CONNS)]
    wire = framed(frames)
    pin.send_raw(wire)
    out.expect_quiet(0.3)                                    # all held, none released
    sin.send_raw(wire)
    assert out.frames(CONNS, timeout=60) == frames
    out.expect_quiet()
    note.expect_quiet(0.05)
    still_serving(out, pin, sin)

    s = cmp.stop_summary()
    assert s.frames_in == (CONNS + 1, CONNS + 1)
    assert s.released == CONNS + 1 and s.dropped == (0, 0) and s.checkpoints == 0
