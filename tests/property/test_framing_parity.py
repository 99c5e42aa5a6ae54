"""The two readers of QEMU's chardev framing agree on any byte stream.

The data path reads records in C (cx_engine__feed_stream, as the service's
Input drives it: whatever arrived, the unconsumed rest kept for the next
read); notify-dev and the tools read them in Python
(proto.framing.Decoder, strict: it refuses zero-length and oversize
records).  For any stream cut into any pieces, the C reader finds the
records a whole-stream model finds, in the same order, counts the same bad
records (zero-length: an empty frame; oversize: body skipped; a length past
any frame: framing lost, reading stops there) and leaves the same bytes
pending.
"""
import struct

from hypothesis import given
from hypothesis import strategies as st

from colo_xdp import native
from colo_xdp.engine import Engine, EngineConfig, Side
from colo_xdp.errors import FramingError
from colo_xdp.proto import framing
from property_settings import profile

NET_BUFSIZE = framing.NET_BUFSIZE
FRAMING_LOST = native.CX_FRAMING_LOST_LEN


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
    """The engine's reading rules in Python, over the whole stream: records
    in order; a zero-length one is an empty frame; an oversize one is
    counted and its body skipped (what remains of it is left as skipped);
    one past any frame is counted and ends the reading in front of it."""
    wire = b"".join(pieces)
    head = 8 if vnet else 4
    out, bad, pos = [], [], 0
    while len(wire) - pos >= head:
        size = struct.unpack_from(">I", wire, pos)[0]
        if size > FRAMING_LOST:
            bad.append("oversize")
            break
        if size > NET_BUFSIZE:
            bad.append("oversize")
            pos = min(pos + head + size, len(wire))
            continue
        if len(wire) - pos - head < size:
            break
        if size == 0:
            bad.append("empty")
        else:
            vlen = struct.unpack_from(">I", wire, pos + 4)[0] if vnet else 0
            out.append((vlen, wire[pos + head:pos + head + size]))
        pos += head + size
    return out, bad, len(wire) - pos


def c_reader(vnet, pieces):
    """As colo_xdp.transport.chardev.roles.Input feeds the engine; after
    failover every primary frame comes out as it went in, so the output
    shows the records."""
    eng = Engine(EngineConfig(vnet_hdr=vnet))
    eng.failover()
    buf = b""
    for i, piece in enumerate(pieces):
        buf += piece
        try:
            buf = buf[eng.feed_stream(Side.PRIMARY, buf, 0):]
        except FramingError as exc:        # the stream would be closed here
            buf = b"".join([buf[exc.consumed:], *pieces[i + 1:]])
            break
    out = bytes(eng.output())
    records, pos, head = [], 0, 8 if vnet else 4
    while pos < len(out):
        size = struct.unpack_from(">I", out, pos)[0]
        vlen = struct.unpack_from(">I", out, pos + 4)[0] if vnet else 0
        records.append((vlen, out[pos + head:pos + head + size]))
        pos += head + size
    c = eng.counters()
    dropped = c.dropped["primary"]
    bad = dropped["empty"] + dropped["oversize"]
    assert c.frames_in["primary"] == len(records) + bad
    return records, bad, len(buf)


@profile
@given(streams())
def test_python_and_c_read_the_same_records(stream):
    vnet, pieces = stream
    records, bad, left = python_reader(vnet, pieces)
    assert c_reader(vnet, pieces) == (records, len(bad), left)
