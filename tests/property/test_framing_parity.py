"""The two readers of QEMU's chardev framing agree on any byte stream.

The data path reads records in C (cx_engine__feed_stream, as the service's
Input drives it: whatever arrived, the unconsumed rest kept for the next
read); notify-dev and the tools read them in Python
(transport.framing.Decoder).  For any stream cut into any pieces, both find
the same records in the same order, stop at the same broken record for the
same reason, and leave the same bytes pending.
"""
import struct

from hypothesis import given
from hypothesis import strategies as st

from colo_xdp.engine import DropReason, Engine, EngineConfig, FramingError, Side
from colo_xdp.proto import framing
from property_settings import profile

NET_BUFSIZE = framing.NET_BUFSIZE


@st.composite
def streams(draw):
    vnet = draw(st.booleans())
    records = draw(st.lists(st.binary(min_size=1, max_size=80), max_size=8))
    wire = b"".join(framing.encode(r, draw(st.integers(0, 30)) if vnet else None)
                    for r in records)
    tail = draw(st.sampled_from([b"", b"\0\0\0\0", struct.pack(">I", NET_BUFSIZE + 1),
                                 struct.pack(">I", NET_BUFSIZE), b"\0\0\0\x05ab",
                                 b"\xff\xff\xff\xff\0\0\0\0", b"\0"]))
    wire += tail + draw(st.binary(max_size=12))
    cuts = sorted(draw(st.sets(st.integers(0, len(wire)), max_size=6)))
    pieces = [wire[a:b] for a, b in zip([0, *cuts], [*cuts, len(wire)])]
    return vnet, pieces


def python_reader(vnet, pieces):
    dec = framing.Decoder(vnet)
    out = []
    for piece in pieces:
        dec.push(piece)
        try:
            for r in dec.records():             # each record as it comes: none lost
                out.append((r.vnet_hdr_len, r.frame))
        except framing.FramingError as exc:
            reason = "empty" if " 0 bytes" in str(exc) else "oversize"
            return out, reason, None
    return out, None, dec.pending


def c_reader(vnet, pieces):
    """As colo_xdp.transport.chardev.roles.Input feeds the engine; after failover every
    primary frame comes out as it went in, so the output shows the records."""
    eng = Engine(EngineConfig(vnet_hdr=vnet))
    eng.failover()
    buf, error = b"", None
    for piece in pieces:
        buf += piece
        try:
            used = eng.feed_stream(Side.PRIMARY, buf, 0)
        except FramingError as exc:
            error = exc.reason
            buf = buf[exc.consumed:]
            break
        buf = buf[used:]
    out = bytes(eng.output())
    records, pos, head = [], 0, 8 if vnet else 4
    while pos < len(out):
        size = struct.unpack_from(">I", out, pos)[0]
        vlen = struct.unpack_from(">I", out, pos + 4)[0] if vnet else 0
        records.append((vlen, out[pos + head:pos + head + size]))
        pos += head + size
    c = eng.counters()
    assert c.frames_in["primary"] == len(records) + (error is not None)
    if error is not None:
        return records, DropReason(error).name.lower(), None
    return records, None, len(buf)


@profile
@given(streams())
def test_python_and_c_read_the_same_records(stream):
    vnet, pieces = stream
    assert python_reader(vnet, pieces) == c_reader(vnet, pieces)
