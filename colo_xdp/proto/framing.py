"""QEMU's chardev framing, in Python, for control-rate traffic and tools.

``u32be len | frame``, and with vnet headers on
``u32be len | u32be vnet_hdr_len | frame`` where ``frame`` starts with the vnet
header and ``len`` counts it.  The data path decodes this in C
(cx_engine__feed_stream); this module serves notify_dev messages, tests,
the demo and the benchmark.
"""
from __future__ import annotations

import struct
from typing import NamedTuple

from colo_xdp.errors import FramingError

NET_BUFSIZE = 69632  # QEMU's limit on one record
_U32 = struct.Struct(">I")


class Record(NamedTuple):
    """One record: the vnet header length (0 when off) and its bytes."""

    vnet_hdr_len: int
    frame: bytes


def encode(frame: bytes, vnet_hdr_len: int | None = None) -> bytes:
    """One record; pass ``vnet_hdr_len`` (possibly 0) when vnet is on."""
    head = _U32.pack(len(frame))
    if vnet_hdr_len is not None:
        head += _U32.pack(vnet_hdr_len)
    return head + frame


class Decoder:
    """Incremental reader: bytes in, whole records out.

    >>> d = Decoder(vnet=False)
    >>> d.feed(encode(b"abc")[:3]), d.feed(encode(b"abc")[3:])
    ([], [Record(vnet_hdr_len=0, frame=b'abc')])
    """

    def __init__(self, vnet: bool, max_len: int = NET_BUFSIZE):
        self.vnet = vnet
        self.max_len = max_len
        self._buf = bytearray()

    @property
    def pending(self) -> int:
        """Bytes received that do not make a whole record yet."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[Record]:
        """Take ``data``; return every record it completes, in order.

        Raises FramingError on a zero-length or oversized record; the records
        completed before it are on the exception (``records``)."""
        self.push(data)
        done: list[Record] = []
        try:
            for record in self.records():
                done.append(record)
        except FramingError as exc:
            exc.records = done
            raise
        return done

    def push(self, data: bytes) -> None:
        """Take ``data`` without decoding yet."""
        self._buf += data

    def records(self):
        """Yield the whole records received so far; raises FramingError at
        the first broken one (the records before it have been yielded)."""
        while (record := self._next_record()) is not None:
            yield record

    def _next_record(self) -> Record | None:
        head_len = 8 if self.vnet else 4
        if len(self._buf) < head_len:
            return None
        size = _U32.unpack_from(self._buf, 0)[0]
        if size == 0 or size > self.max_len:
            raise FramingError(f"a record of {size} bytes is outside 1..{self.max_len}")
        if len(self._buf) < head_len + size:
            return None
        vnet_hdr_len = _U32.unpack_from(self._buf, 4)[0] if self.vnet else 0
        frame = bytes(self._buf[head_len:head_len + size])
        del self._buf[:head_len + size]
        return Record(vnet_hdr_len, frame)


def count_records(data, vnet: bool) -> int:
    """Whole records in ``data`` (which starts at a record boundary): what
    was released but never delivered, counted in frames at exit."""
    head_len = 8 if vnet else 4
    n = pos = 0
    while pos + head_len <= len(data):
        size = _U32.unpack_from(data, pos)[0]
        if pos + head_len + size > len(data):
            break
        n += 1
        pos += head_len + size
    return n
