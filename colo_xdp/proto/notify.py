"""QEMU's notify_dev protocol, byte for byte (sans-I/O).

Peer to colo-xdp: records in chardev framing, with the vnet length word when
vnet headers are on (QEMU's notify reader shares the inputs' setting):
``COLO_USERSPACE_PROXY_INIT`` is answered with ``COLO_COMPARE_GET_XEN_INIT``;
``COLO_CHECKPOINT`` reports that a checkpoint happened (flush).
colo-xdp to peer: ``DO_CHECKPOINT`` asks for one; these records never carry
the vnet word.  Messages match exactly, without a terminating NUL, as QEMU's
packet_matches_str does.
"""
from __future__ import annotations

import enum

from colo_xdp.proto.framing import Decoder, FramingError, encode

PROXY_INIT = b"COLO_USERSPACE_PROXY_INIT"
PROXY_INIT_REPLY = b"COLO_COMPARE_GET_XEN_INIT"
CHECKPOINT_DONE = b"COLO_CHECKPOINT"
DO_CHECKPOINT = b"DO_CHECKPOINT"

DO_CHECKPOINT_RECORD = encode(DO_CHECKPOINT)


class NotifyEvent(enum.Enum):
    CHECKPOINT = "checkpoint"      # the COLO frame reports a checkpoint
    INIT = "init"                  # handshake answered
    UNKNOWN = "unknown"            # a message QEMU would not know either


class NotifyProtocol:
    """Bytes from the notify peer in; (reply bytes, events) out."""

    def __init__(self, vnet: bool):
        self._decoder = Decoder(vnet)

    def receive(self, data: bytes) -> tuple[bytes, list[tuple[NotifyEvent, bytes]], str]:
        """Take bytes from the peer; return the reply to send, the events in
        order, and an error sentence ('' if none) when the stream broke its
        framing.  Records before a broken one still count."""
        reply = b""
        events = []
        self._decoder.push(data)
        try:
            for record in self._decoder.records():
                msg = record.frame
                if msg == PROXY_INIT:
                    reply += encode(PROXY_INIT_REPLY)
                    events.append((NotifyEvent.INIT, msg))
                elif msg == CHECKPOINT_DONE:
                    events.append((NotifyEvent.CHECKPOINT, msg))
                else:
                    events.append((NotifyEvent.UNKNOWN, msg))
        except FramingError as exc:
            return reply, events, str(exc)
        return reply, events, ""

    @property
    def pending(self) -> int:
        return self._decoder.pending
