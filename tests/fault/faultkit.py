"""Helpers for the fault tests: many distinct frames fast, and "still serving"."""
from __future__ import annotations

import itertools
import re
import struct

from colo_xdp.lab.pktgen import udp_frame
from test_service import (COLO_CHECKPOINT_WIRE, DO_CHECKPOINT_WIRE, INIT_REPLY_WIRE,
                          INIT_WIRE, TIMEOUT, Compare, ServiceSandbox, PairSender, Peer, Summary,
                          connect_all, encode, free_tcp_ports)

# The unit tests' service kit, shared (not copied), and what is added here.
__all__ = ["COLO_CHECKPOINT_WIRE", "DO_CHECKPOINT_WIRE", "INIT_REPLY_WIRE", "INIT_WIRE",
           "TIMEOUT", "Compare", "ServiceSandbox", "PairSender", "Peer", "Summary", "connect_all",
           "encode", "free_tcp_ports", "flow_frame", "framed", "still_serving", "started_line"]

_TEMPLATE = udp_frame(b"fault-" + bytes(20))
_serial = itertools.count()


def flow_frame(flow: int, n: int = 0, size: int = 0) -> bytes:
    """A UDP frame of connection ``flow`` (up to 2**32 of them: the source
    address and port carry it) whose payload carries ``n``; the checksums are
    not redone, the engine never reads them."""
    f = bytearray(_TEMPLATE + bytes(size))
    struct.pack_into(">H", f, 16, len(f) - 14)                  # IP total length
    struct.pack_into(">H", f, 38, len(f) - 34)                  # UDP length
    struct.pack_into(">I", f, 26, 0x0A000000 | (flow >> 8 & 0xFFFFFF))  # source address
    struct.pack_into(">H", f, 34, 1024 + (flow & 0xFF))                 # source port
    struct.pack_into(">HI", f, 42, flow & 0xFFFF, n)
    return bytes(f)


def framed(frames) -> bytes:
    return b"".join(encode(f) for f in frames)


def still_serving(out: Peer, pin: Peer, sin: Peer) -> bytes:
    """A fresh pair goes through: the process compares and releases."""
    pair = flow_frame(0xFFFFFF, next(_serial))
    pin.send(pair)
    sin.send(pair)
    assert out.frames(1) == [pair], "the service stopped releasing matched pairs"
    return pair


def started_line(cmp: Compare) -> dict[str, str]:
    """The fields of the `started` line (before `ready`)."""
    line = cmp.wait_line(r"^colo-xdp: started ")
    return dict(re.findall(r"(\w+)=(\S+)", line))
