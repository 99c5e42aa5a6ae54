"""Where QEMU 7.2 breaks down: queue limit and zero-length frames.

Each ``test_ours_*`` states what colo-xdp does instead; the ``test_qemu_*``
next to it pins down the QEMU behaviour it departs from, as measured.
"""

import signal
import time

import pytest

from tools.harness import (PRIMARY, SECONDARY, CompareOptions, Driver, Sleep, checkpoint,
                              primary, secondary, wait_output)
from colo_xdp.lab.pktgen import tcp_frame, udp_frame

pytestmark = pytest.mark.interop

QUEUE_SIZE = 4
SMALL_QUEUE = CompareOptions(max_queue_size=QUEUE_SIZE, compare_timeout=60_000)
SENT = 10

FLOWS = {
    "udp": lambda: [udp_frame(b"q%02d" % i) for i in range(SENT)],
    "tcp": lambda: [tcp_frame(b"q%02d" % i, seq=3 * i, ack=1) for i in range(SENT)],
}


# QEMU keeps max_queue_size + 1 frames, drops the rest without a word and
# does not ask for a checkpoint, so the primary's output silently loses
# frames. colo-xdp first holds a side that runs ahead of the other (flow
# control: half the queue, the rest left unread in its socket); when the
# other side has produced nothing for a second it has stopped, and the queue
# fills: max_queue_size frames kept, one checkpoint requested, the rest
# dropped and counted.

STOPPED_S = 1.0        # colo_xdp.service.loop.FLOW_STOPPED_MS


@pytest.mark.parametrize("flow", FLOWS)
def test_ours_full_primary_queue_requests_checkpoint(play_ours, flow):
    frames = FLOWS[flow]()
    run = play_ours([primary(f) for f in frames]
                    + [Sleep(STOPPED_S * 1000 + 500), checkpoint(), wait_output(QUEUE_SIZE)],
                    SMALL_QUEUE)
    first_write = min(e.t for e in run.events if e.channel == PRIMARY)
    times = run.checkpoint_times()
    assert len(times) == 1, "one request while it is outstanding\n" + run.summary()
    assert times[0] - first_write >= STOPPED_S * 0.9, "held first\n" + run.summary()
    assert run.released == frames[:QUEUE_SIZE], run.summary()


def test_ours_full_secondary_queue_requests_checkpoint(play_ours):
    frames = FLOWS["udp"]()
    run = play_ours([secondary(f) for f in frames]
                    + [primary(f) for f in frames[:QUEUE_SIZE]]
                    + [wait_output(QUEUE_SIZE), Sleep(STOPPED_S * 1000 + 500)], SMALL_QUEUE)
    assert run.released == frames[:QUEUE_SIZE], run.summary()
    assert run.do_checkpoints == 1, run.summary()


@pytest.mark.parametrize("flow", FLOWS)
def test_qemu_full_queue_keeps_one_more_and_drops_silently(play_qemu, flow):
    frames = FLOWS[flow]()
    kept = frames[:QUEUE_SIZE + 1]
    run = play_qemu([primary(f) for f in frames] + [checkpoint(),
                                                    wait_output(len(kept))], SMALL_QUEUE)
    assert run.do_checkpoints == 0, run.summary()
    expected = kept if flow == "tcp" else kept[::-1]  # UDP flushes newest first
    assert run.released == expected, run.summary()


# A zero-length record on either input trips an assertion in QEMU's parser
# (as soon as the next record arrives behind it) and the whole VM aborts.
# colo-xdp counts it as a bad frame, closes that stream (its sender is broken)
# and accepts the peer again; everything else keeps being served.

SIDES = {PRIMARY: primary, SECONDARY: secondary}


@pytest.mark.parametrize("side", SIDES)
def test_ours_zero_length_frame_is_survived(ours, side):
    frame = udp_frame(b"after")
    with ours(CompareOptions()) as comparator, Driver(comparator) as driver:
        driver.run([SIDES[side](b"")])
        driver.reconnect(side)  # that stream was closed: the peer redials
        run = driver.run([primary(frame), secondary(frame), wait_output(1)])
        assert comparator.alive(), comparator.log()
        assert driver.handshake(), "still answers on notify_dev"
    assert run.released == [frame], run.summary()
    assert run.do_checkpoints == 0, run.summary()


@pytest.mark.parametrize("side", SIDES)
def test_qemu_zero_length_frame_aborts(qemu, side):
    with qemu(CompareOptions()) as comparator, Driver(comparator) as driver:
        driver.send(side, b"")
        driver.send(side, udp_frame(b"next"))
        deadline = time.monotonic() + 5
        while comparator.alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert comparator.process.returncode == -signal.SIGABRT, comparator.log()
