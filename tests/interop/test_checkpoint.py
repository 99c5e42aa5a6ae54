"""Checkpoint requests (mismatch, timeout) and the flush that COLO_CHECKPOINT causes."""

from collections import Counter

import pytest

from tools.harness import (TO_NOTIFY, CompareOptions, Sleep, checkpoint, primary,
                              secondary, wait_checkpoints, wait_output)
from colo_xdp.lab.pktgen import tcp_frame, udp_frame

pytestmark = pytest.mark.interop


# QEMU 7.2 writes a DO_CHECKPOINT for every request: every frame arriving on
# a connection with a pending mismatch, every scan while a frame is old.
# colo-xdp sends one per outstanding checkpoint, again only after
# CHECKPOINT_RESEND_MS without a checkpoint (issue 11: a storm of requests
# cost a Python event each and flooded the COLO frame).

def _mismatch_steps():
    pri = [udp_frame(b"pri%d" % i) for i in range(2)]
    sec = [udp_frame(b"sec%d" % i) for i in range(3)]
    unrelated = udp_frame(b"unrelated", sport=9)
    return [primary(pri[0]), secondary(sec[0]), secondary(sec[1]), primary(pri[1]),
            secondary(sec[2]), primary(unrelated)]


def test_qemu_mismatch_requests_one_checkpoint_per_arriving_frame(play_qemu):
    """Every frame of a connection with a pending mismatch asks again, once."""
    run = play_qemu(_mismatch_steps() + [wait_checkpoints(4)])
    assert [row[2] for row in run.after_each_write()] == [0, 1, 1, 1, 1, 0], run.summary()
    assert run.released == [], run.summary()


def test_ours_mismatch_requests_one_checkpoint_while_it_is_outstanding(play_ours):
    run = play_ours(_mismatch_steps() + [Sleep(300)])
    assert [row[2] for row in run.after_each_write()] == [0, 1, 0, 0, 0, 0], run.summary()
    assert run.released == [], run.summary()


def _tcp_mismatch_steps():
    x, y = (tcp_frame(c * 100, seq=0, ack=1) for c in (b"x", b"y"))
    x2, y2 = (tcp_frame(c * 100, seq=100, ack=1) for c in (b"x", b"y"))
    return [primary(x), secondary(y), primary(x2), secondary(y2)]


def test_qemu_tcp_mismatch_requests_one_checkpoint_per_arriving_frame(play_qemu):
    run = play_qemu(_tcp_mismatch_steps() + [wait_checkpoints(3)])
    assert [row[2] for row in run.after_each_write()] == [0, 1, 1, 1], run.summary()
    assert run.released == [], run.summary()


def test_ours_tcp_mismatch_requests_one_checkpoint(play_ours):
    run = play_ours(_tcp_mismatch_steps() + [Sleep(300)])
    assert [row[2] for row in run.after_each_write()] == [0, 1, 0, 0], run.summary()
    assert run.released == [], run.summary()


def test_ours_checkpoint_request_is_sent_again_after_the_bound(play_ours):
    """No COLO_CHECKPOINT came: the request goes out again, once a second."""
    run = play_ours([primary(udp_frame(b"a")), secondary(udp_frame(b"b")), Sleep(1500)],
                    quiet_ms=0)
    times = request_times_ms(run, since_event=1)
    assert len(times) == 2 and 900 <= times[1] - times[0] <= 1400, times


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


def assert_one_request_outstanding(run):
    """One request after the timeout; again only after the resend bound."""
    times = request_times_ms(run)
    assert times and times[0] >= TIMEOUT_MS, run.summary()
    assert len(times) == 1, f"sent again before the resend bound: {times}"


@pytest.mark.parametrize("side", [primary, secondary])
def test_qemu_old_frame_requests_checkpoint_every_scan(play_qemu, side):
    frame = udp_frame(b"alone")
    run = play_qemu([side(frame), Sleep(WATCH_MS)], EXPIRING, quiet_ms=0)
    assert run.released == [], run.summary()
    assert_one_request_per_scan(run)


@pytest.mark.parametrize("side", [primary, secondary])
def test_ours_old_frame_requests_one_checkpoint(play_ours, side):
    frame = udp_frame(b"alone")
    run = play_ours([side(frame), Sleep(WATCH_MS)], EXPIRING, quiet_ms=0)
    assert run.released == [], run.summary()
    assert_one_request_outstanding(run)


def _old_connections():
    frames = [udp_frame(b"old", sport=port) for port in (1, 2, 3)]
    frames.append(tcp_frame(b"old", sport=4, seq=0, ack=1))
    return [primary(f) for f in frames] + [Sleep(WATCH_MS)]


def test_qemu_many_old_connections_still_one_request_per_scan(play_qemu):
    assert_one_request_per_scan(play_qemu(_old_connections(), EXPIRING, quiet_ms=0))


def test_ours_many_old_connections_still_one_request(play_ours):
    assert_one_request_outstanding(play_ours(_old_connections(), EXPIRING, quiet_ms=0))


def test_old_frame_released_only_by_the_flush_which_ends_the_requests(play):
    frame = udp_frame(b"old")
    run = play([primary(frame), wait_checkpoints(2), checkpoint(), wait_output(1),
                Sleep(3 * SCAN_MS)], EXPIRING, quiet_ms=0)
    flushed_at = run.on(TO_NOTIFY)[0].t
    assert run.released == [frame], run.summary()
    assert all(t <= flushed_at for t in run.checkpoint_times()), run.summary()
