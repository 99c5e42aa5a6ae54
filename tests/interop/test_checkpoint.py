"""Checkpoint requests (mismatch, timeout) and the flush that COLO_CHECKPOINT causes."""

from collections import Counter

import pytest

from tools.harness import (TO_NOTIFY, CompareOptions, Sleep, checkpoint, primary,
                              secondary, wait_checkpoints, wait_output)
from colo_xdp.lab.pktgen import tcp_frame, udp_frame

pytestmark = pytest.mark.interop


def test_mismatch_requests_one_checkpoint_per_arriving_frame(play):
    """Every frame of a connection with a pending mismatch asks again, once."""
    pri = [udp_frame(b"pri%d" % i) for i in range(2)]
    sec = [udp_frame(b"sec%d" % i) for i in range(3)]
    unrelated = udp_frame(b"unrelated", sport=9)
    run = play([primary(pri[0]), secondary(sec[0]), secondary(sec[1]), primary(pri[1]),
                secondary(sec[2]), primary(unrelated), wait_checkpoints(4)])
    assert [row[2] for row in run.after_each_write()] == [0, 1, 1, 1, 1, 0], run.summary()
    assert run.released == [], run.summary()


def test_tcp_mismatch_requests_one_checkpoint_per_arriving_frame(play):
    x, y = (tcp_frame(c * 100, seq=0, ack=1) for c in (b"x", b"y"))
    x2, y2 = (tcp_frame(c * 100, seq=100, ack=1) for c in (b"x", b"y"))
    run = play([primary(x), secondary(y), primary(x2), secondary(y2), wait_checkpoints(3)])
    assert [row[2] for row in run.after_each_write()] == [0, 1, 1, 1], run.summary()
    assert run.released == [], run.summary()


def test_flush_drops_the_secondary_queue(play):
    frame = udp_frame(b"stale")
    run = play([secondary(frame), checkpoint(), primary(frame)])
    assert run.released == [], "the secondary frame went with the flush\n" + run.summary()
    assert run.do_checkpoints == 0


def test_flush_releases_every_connection(play):
    frames = [udp_frame(b"conn", sport=port) for port in (1, 2, 3)]
    frames.append(tcp_frame(b"tcp", sport=4, seq=0, ack=1))
    run = play([primary(f) for f in frames] + [checkpoint(), wait_output(len(frames))])
    # Connections come out in QEMU's list order; no order across connections
    # is promised, so compare as multisets.
    assert Counter(run.released) == Counter(frames), run.summary()


def test_checkpoint_without_held_frames_is_harmless(play):
    frame = udp_frame(b"after")
    run = play([checkpoint(), checkpoint(), primary(frame), secondary(frame),
                wait_output(1)])
    assert run.released == [frame], run.summary()
    assert run.do_checkpoints == 0


# QEMU 7.2 flushes a UDP/ICMP/other connection newest frame first. colo-xdp
# flushes every connection in the order the primary sent its frames.

def test_ours_flush_releases_udp_oldest_first(play_ours):
    frames = [udp_frame(b"held%d" % i) for i in range(3)]
    run = play_ours([primary(f) for f in frames] + [checkpoint(), wait_output(3)])
    assert run.released == frames, run.summary()


def test_qemu_flush_releases_udp_newest_first(play_qemu):
    frames = [udp_frame(b"held%d" % i) for i in range(3)]
    run = play_qemu([primary(f) for f in frames] + [checkpoint(), wait_output(3)])
    assert run.released == frames[::-1], run.summary()


# --- timeout: compare_timeout=500 ms, scanned every expired_scan_cycle=100 ms ---

TIMEOUT_MS, SCAN_MS = 500, 100
EXPIRING = CompareOptions(compare_timeout=TIMEOUT_MS, expired_scan_cycle=SCAN_MS)
WATCH_MS = 1000


def request_times_ms(run, since_event=0):
    """DO_CHECKPOINT arrival times in ms after the given event."""
    start = run.events[since_event].t
    return [(t - start) * 1000 for t in run.checkpoint_times()]


def assert_one_request_per_scan(run):
    """Requests start after the timeout and then come once per scan."""
    times = request_times_ms(run)
    assert times and times[0] >= TIMEOUT_MS, run.summary()
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert all(gap >= SCAN_MS / 2 for gap in gaps), f"more than one per scan: {times}"
    assert 3 <= len(times) <= (WATCH_MS - TIMEOUT_MS) // SCAN_MS + 2, times


@pytest.mark.parametrize("side", [primary, secondary])
def test_old_frame_requests_checkpoint_every_scan(play, side):
    frame = udp_frame(b"alone")
    run = play([side(frame), Sleep(WATCH_MS)], EXPIRING, quiet_ms=0)
    assert run.released == [], run.summary()
    assert_one_request_per_scan(run)


def test_many_old_connections_still_one_request_per_scan(play):
    frames = [udp_frame(b"old", sport=port) for port in (1, 2, 3)]
    frames.append(tcp_frame(b"old", sport=4, seq=0, ack=1))
    run = play([primary(f) for f in frames] + [Sleep(WATCH_MS)], EXPIRING, quiet_ms=0)
    assert_one_request_per_scan(run)


def test_old_frame_released_only_by_the_flush_which_ends_the_requests(play):
    frame = udp_frame(b"old")
    run = play([primary(frame), wait_checkpoints(2), checkpoint(), wait_output(1),
                Sleep(3 * SCAN_MS)], EXPIRING, quiet_ms=0)
    flushed_at = run.on(TO_NOTIFY)[0].t
    assert run.released == [frame], run.summary()
    assert all(t <= flushed_at for t in run.checkpoint_times()), run.summary()
