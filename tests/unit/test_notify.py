"""notify_dev protocol, byte for byte (sans-I/O NotifyProtocol).

Expected bytes are spelled out by hand here, not built with the module's own
encoder, so that a framing mistake in both places cannot cancel out.
"""
from __future__ import annotations

import struct

import pytest

from colo_xdp.proto.notify import (DO_CHECKPOINT_RECORD, NotifyEvent, NotifyProtocol)
from colo_xdp.proto.framing import NET_BUFSIZE

INIT = b"COLO_USERSPACE_PROXY_INIT"
INIT_REPLY_WIRE = b"\x00\x00\x00\x19" + b"COLO_COMPARE_GET_XEN_INIT"   # u32be 25 | reply
CHECKPOINT = b"COLO_CHECKPOINT"


def record(message: bytes, vnet: bool = False) -> bytes:
    """What a QEMU-compatible notify peer sends: u32be len | [u32be 0] | message."""
    return struct.pack(">I", len(message)) + (b"\0\0\0\0" if vnet else b"") + message


def test_do_checkpoint_record_exact():
    assert DO_CHECKPOINT_RECORD == b"\x00\x00\x00\x0dDO_CHECKPOINT"


def test_init_reply_exact():
    proto = NotifyProtocol(vnet=False)
    reply, events, error = proto.receive(b"\x00\x00\x00\x19" + INIT)
    assert error == ''
    assert reply == INIT_REPLY_WIRE
    assert len(reply) == 29
    assert events == [(NotifyEvent.INIT, INIT)]
    assert proto.pending == 0


def test_init_reply_has_no_vnet_word_even_with_vnet_on():
    """QEMU sends notify messages with notify_remote_frame=true: no vnet word."""
    proto = NotifyProtocol(vnet=True)
    reply, events, error = proto.receive(b"\x00\x00\x00\x19\x00\x00\x00\x00" + INIT)
    assert error == ''
    assert reply == INIT_REPLY_WIRE
    assert events == [(NotifyEvent.INIT, INIT)]


def test_colo_checkpoint_event_and_no_reply():
    reply, events, error = NotifyProtocol(vnet=False).receive(b"\x00\x00\x00\x0f" + CHECKPOINT)
    assert error == ''
    assert reply == b""
    assert events == [(NotifyEvent.CHECKPOINT, CHECKPOINT)]


def test_vnet_on_peer_records_carry_zero_vnet_word():
    proto = NotifyProtocol(vnet=True)
    reply, events, error = proto.receive(b"\x00\x00\x00\x0f\x00\x00\x00\x00" + CHECKPOINT)
    assert error == ''
    assert (reply, events) == (b"", [(NotifyEvent.CHECKPOINT, CHECKPOINT)])
    assert proto.pending == 0


def test_vnet_on_does_not_take_a_record_without_the_vnet_word():
    """With vnet on the first 4 message bytes are read as the vnet word, so a
    record without it is still incomplete: no checkpoint may be reported."""
    proto = NotifyProtocol(vnet=True)
    reply, events, error = proto.receive(record(CHECKPOINT, vnet=False))
    assert error == ''
    assert (reply, events) == (b"", [])
    assert proto.pending == 4 + len(CHECKPOINT)


def test_vnet_off_does_not_take_a_vnet_record_as_checkpoint():
    """The peer's vnet word shifts the message: "\0\0\0\0COLO_CHECKP" is
    unknown and "OINT" then reads as an absurd length, so framing is lost."""
    proto = NotifyProtocol(vnet=False)
    reply, events, error = proto.receive(record(CHECKPOINT, vnet=True)[:4 + 15])
    assert error == ''
    assert (reply, events) == (b"", [(NotifyEvent.UNKNOWN, b"\0\0\0\0COLO_CHECKP")])
    reply, events, error = proto.receive(b"OINT")
    assert (reply, events) == (b"", [])
    assert "outside" in error


@pytest.mark.parametrize("message", [
    b"HELLO",
    b"COLO_CHECKPOINT\0",          # QEMU matches exactly: no terminating NUL
    b"colo_checkpoint",
    b"COLO_CHECKPOIN",
    b"DO_CHECKPOINT",               # our own message echoed back
])
def test_unknown_message(message):
    reply, events, error = NotifyProtocol(vnet=False).receive(record(message))
    assert error == ''
    assert reply == b""
    assert events == [(NotifyEvent.UNKNOWN, message)]


@pytest.mark.parametrize("vnet", [False, True])
def test_split_across_reads_byte_by_byte(vnet):
    proto = NotifyProtocol(vnet=vnet)
    wire = record(INIT, vnet) + record(CHECKPOINT, vnet)
    replies, events = b"", []
    for i in range(len(wire)):
        reply, evs, error = proto.receive(wire[i:i + 1])
        assert error == ""
        replies += reply
        events += evs
        if i < len(record(INIT, vnet)) - 1:
            assert (replies, events) == (b"", []), f"event before byte {i} completed INIT"
    assert replies == INIT_REPLY_WIRE
    assert events == [(NotifyEvent.INIT, INIT), (NotifyEvent.CHECKPOINT, CHECKPOINT)]
    assert proto.pending == 0


def test_split_in_the_length_word_and_several_in_one_read():
    proto = NotifyProtocol(vnet=False)
    wire = record(CHECKPOINT) + record(INIT) + record(CHECKPOINT) + record(INIT)
    cut = len(record(CHECKPOINT)) + 2         # inside INIT's length word
    reply1, ev1, _ = proto.receive(wire[:cut])
    assert (reply1, ev1) == (b"", [(NotifyEvent.CHECKPOINT, CHECKPOINT)])
    assert proto.pending == 2
    reply2, ev2, _ = proto.receive(wire[cut:])
    assert reply2 == INIT_REPLY_WIRE * 2      # one reply per INIT, in one buffer
    assert [kind for kind, _ in ev2] == [NotifyEvent.INIT, NotifyEvent.CHECKPOINT,
                                         NotifyEvent.INIT]


def test_empty_read_is_nothing():
    assert NotifyProtocol(vnet=False).receive(b"") == (b"", [], "")


@pytest.mark.parametrize("header", [
    b"\x00\x00\x00\x00",                       # zero-length record
    b"\x7f\xff\xff\xff",                       # absurd length
    struct.pack(">I", NET_BUFSIZE + 1),        # just over QEMU's limit
])
def test_broken_framing_is_one_sentence(header):
    reply, events, error = NotifyProtocol(vnet=False).receive(header + b"COLO")
    assert (reply, events) == (b"", [])
    assert error and "\n" not in error


def test_records_before_a_broken_one_still_count():
    proto = NotifyProtocol(vnet=False)
    reply, events, error = proto.receive(record(INIT) + record(CHECKPOINT) + b"\0\0\0\0")
    assert reply == INIT_REPLY_WIRE
    assert events == [(NotifyEvent.INIT, INIT), (NotifyEvent.CHECKPOINT, CHECKPOINT)]
    assert error


def test_protocols_do_not_share_state():
    a, b = NotifyProtocol(vnet=False), NotifyProtocol(vnet=False)
    a.receive(record(INIT)[:5])
    assert b.pending == 0
    assert b.receive(record(CHECKPOINT))[1] == [(NotifyEvent.CHECKPOINT, CHECKPOINT)]
