"""TCP: queues sorted by sequence number, payload compared across segment boundaries."""

import pytest

from tools.harness import (OUT, TO_NOTIFY, checkpoint, primary, secondary,
                              wait_checkpoints, wait_output)
from colo_xdp.lab.pktgen import TCP_ACK, TCP_FIN, TCP_PSH, TCP_SYN, tcp_frame

pytestmark = pytest.mark.interop

DATA = bytes(range(256)) * 4  # 1024 bytes, so every slice differs from its neighbours


def seg(start, length, ack=1, data=DATA, **fields):
    """A segment carrying data[start:start+length] at seq=start."""
    fields.setdefault("flags", TCP_ACK | TCP_PSH)
    return tcp_frame(data[start:start + length], seq=start, ack=ack, **fields)


def bare(seq, flags, ack=1):
    """A segment without payload (pure ACK, SYN or FIN)."""
    return tcp_frame(b"", seq=seq, ack=ack, flags=flags)


def test_equal_segments_released_in_order(play):
    frames = [seg(i * 100, 100) for i in range(4)]
    steps = [step for f in frames for step in (primary(f), secondary(f))]
    run = play(steps + [wait_output(4)])
    assert run.released == frames, run.summary()
    assert run.do_checkpoints == 0


@pytest.mark.parametrize("pack, sack", [(1, 9), (9, 1)])
def test_same_range_ignores_ack_window_flags_options(play, pack, sack):
    sent = seg(0, 100, ack=pack)
    twin = seg(0, 100, ack=sack, flags=TCP_ACK, window=512,
               options=b"\x01\x01\x08\x0a" + bytes(8))
    run = play([primary(sent), secondary(twin), wait_output(1)])
    assert run.released == [sent], run.summary()
    assert run.do_checkpoints == 0


def test_same_range_different_payload_requests_checkpoint(play):
    sent = seg(0, 100)
    twin = seg(0, 100, data=DATA[1:])
    run = play([primary(sent), secondary(twin), wait_checkpoints(1)])
    assert run.released == [], run.summary()


def segmented(pri_parts, sec_parts, pack, sack, secondary_first):
    """DATA[0:1000] cut into equal segments per side; returns (primary frames, steps)."""
    def cut(parts, ack):
        size = 1000 // parts
        return [seg(i * size, size, ack=ack) for i in range(parts)]

    pri, sec = cut(pri_parts, pack), cut(sec_parts, sack)
    pri_steps, sec_steps = [primary(f) for f in pri], [secondary(f) for f in sec]
    return pri, (sec_steps + pri_steps if secondary_first else pri_steps + sec_steps)


SEGMENTATION = pytest.mark.parametrize("pri_parts, sec_parts", [(1, 2), (2, 1)],
                                       ids=["p1000-s2x500", "p2x500-s1000"])
ARRIVAL = pytest.mark.parametrize("secondary_first", [False, True],
                                  ids=["pri-first", "sec-first"])


# ACK of the primary (pack) vs the secondary (sack): with different segment
# boundaries a primary segment goes out only if its ACK is not beyond both.
@SEGMENTATION
@ARRIVAL
@pytest.mark.parametrize("pack, sack", [(1, 1), (1, 5)], ids=["ack-equal", "pack-lower"])
def test_different_segmentation_released(play, pri_parts, sec_parts, pack, sack,
                                         secondary_first):
    pri, steps = segmented(pri_parts, sec_parts, pack, sack, secondary_first)
    run = play(steps + [wait_output(len(pri))])
    assert run.released == pri, run.summary()
    assert run.do_checkpoints == 0, run.summary()


@SEGMENTATION
@ARRIVAL
def test_different_segmentation_primary_ack_ahead_held(play, pri_parts, sec_parts,
                                                       secondary_first):
    pri, steps = segmented(pri_parts, sec_parts, 5, 1, secondary_first)
    run = play(steps + [wait_checkpoints(1), checkpoint(), wait_output(len(pri))])
    channels = [e.channel for e in run.events]
    assert run.released == pri, run.summary()
    assert channels.index(OUT) > channels.index(TO_NOTIFY), "released only by the flush"


@pytest.mark.parametrize("retransmit", [seg(0, 100, data=DATA[7:]),
                                        seg(0, 50, data=DATA[7:])], ids=["whole", "part"])
def test_retransmit_released_without_compare(play, retransmit):
    """A segment ending at or before the highest compared seq needs no twin."""
    first, second = seg(0, 100), seg(100, 100)
    run = play([primary(first), secondary(first), wait_output(1), primary(retransmit),
                primary(second), secondary(second), wait_output(3)])
    assert run.released == [first, retransmit, second], run.summary()
    assert run.do_checkpoints == 0, run.summary()


FLAGS = {"ack": TCP_ACK, "syn": TCP_SYN, "fin": TCP_FIN | TCP_ACK}


@pytest.mark.parametrize("flag", FLAGS)
def test_bare_segment_released_while_secondary_queue_holds_a_frame(play, flag):
    waiting = seg(0, 100)
    ack = bare(0, FLAGS[flag])
    run = play([secondary(waiting), primary(ack), wait_output(1)])
    assert run.released == [ack], run.summary()


@pytest.mark.parametrize("flag", FLAGS)
def test_bare_segment_held_until_a_secondary_frame_arrives(play, flag):
    first, second = seg(0, 100), seg(100, 100)
    ack = bare(100, FLAGS[flag])
    run = play([primary(first), secondary(first), wait_output(1), primary(ack)])
    assert run.released == [first], "held while the secondary queue is empty\n" + \
        run.summary()
    run = play([primary(first), secondary(first), wait_output(1), primary(ack),
                secondary(second), wait_output(2), primary(second), wait_output(3)])
    assert run.released == [first, ack, second], run.summary()
    assert run.do_checkpoints == 0, run.summary()


def test_out_of_order_primary_released_in_sequence(play):
    a, b, c = seg(0, 100), seg(100, 100), seg(200, 100)
    run = play([primary(c), primary(a), primary(b),
                secondary(a), secondary(b), secondary(c), wait_output(3)])
    assert run.released == [a, b, c], run.summary()
    assert run.do_checkpoints == 0


OUT_OF_ORDER_SECONDARY = (seg(0, 100), seg(100, 100))


def _out_of_order_secondary_script():
    a, b = OUT_OF_ORDER_SECONDARY
    return [primary(a), primary(b), secondary(b), secondary(a), wait_output(2)]


def test_out_of_order_secondary_released_in_sequence(play):
    run = play(_out_of_order_secondary_script())
    assert run.released == list(OUT_OF_ORDER_SECONDARY), run.summary()


# QEMU compares the queue heads at their offsets without checking that they
# start at the same sequence number: primary 0..100 is compared with secondary
# 100..200 and a checkpoint is requested for nothing.  colo-xdp compares by
# sequence number and waits for the gap to fill (docs/compare-rules.md).

def test_ours_out_of_order_secondary_requests_no_checkpoint(play_ours):
    run = play_ours(_out_of_order_secondary_script())
    assert run.do_checkpoints == 0, run.summary()


def test_qemu_out_of_order_secondary_requests_a_spurious_checkpoint(play_qemu):
    run = play_qemu(_out_of_order_secondary_script())
    assert run.do_checkpoints == 1, run.summary()


def test_checkpoint_flushes_in_sequence_order(play):
    frames = [seg(i * 100, 100) for i in range(3)]
    run = play([primary(frames[2]), primary(frames[0]), primary(frames[1]),
                checkpoint(), wait_output(3)])
    assert run.released == frames, run.summary()
    assert run.do_checkpoints == 0


def test_mismatch_then_checkpoint_resynchronises(play):
    sent, wrong = seg(0, 100), seg(0, 100, data=DATA[3:])
    after = seg(100, 100)
    run = play([primary(sent), secondary(wrong), wait_checkpoints(1), checkpoint(),
                wait_output(1), primary(after), secondary(after), wait_output(2)])
    assert run.released == [sent, after], run.summary()
