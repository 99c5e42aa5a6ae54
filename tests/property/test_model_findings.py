"""What the property tests found where the engine and docs/compare-rules.md
disagreed (the doc was right; fixed in bb004e7), kept as regression tests.

Each was first a shrunk hypothesis example; here it is the smallest input
that shows it, with the model's answer next to the engine's.
"""
from colo_xdp.lab import pktgen as g
from engine_kit import P, S, checkpoints, data, engine, released, seg
from model import Model

BYTES = data(20)


def _model(steps):
    model, out, reasons = Model(), [], []
    for side, frame in steps:
        o, events = model.feed("primary" if side is P else "secondary", frame, 0)
        out += [x.frame for x in o]
        reasons += [e[1] for e in events if e[0] == "checkpoint"]
    return out, reasons


def _engine(steps):
    eng, actions = engine(), []
    for side, frame in steps:
        actions += eng.feed(side, frame, 0)
    return released(actions), [c.reason.name.lower() for c in checkpoints(actions)]


def _both(steps):
    got, want = _engine(steps), _model(steps)
    assert got == want
    return got


def test_identical_ranges_release_whatever_their_acks_after_a_partial_compare():
    """The primary [0,20) was partly compared against a secondary [0,10); the
    secondary resends [0,20) byte for byte.  The same range: released though
    the primary acknowledges more (the engine asked for a checkpoint)."""
    steps = [(P, seg(BYTES, 0, ack=5000)), (S, seg(BYTES[:10], 0, ack=1)),
             (S, seg(BYTES, 0, ack=1))]
    assert _both(steps) == ([steps[0][1]], [])


def test_identical_ranges_skip_bytes_already_compared():
    """[0,10) matched; both sides then send [0,20), differing only in a byte
    below the compared sequence: skipped, so no mismatch."""
    steps = [(P, seg(BYTES[:10], 0)), (S, seg(BYTES[:10], 0)),
             (P, seg(b"X" + BYTES[1:], 0, ack=900)), (S, seg(BYTES, 0, ack=1))]
    assert _both(steps) == ([steps[0][1], steps[2][1]], [])


def test_identical_ranges_differing_above_the_compared_sequence_are_a_mismatch():
    steps = [(P, seg(BYTES[:10], 0)), (S, seg(BYTES[:10], 0)),
             (P, seg(BYTES[:15] + b"X" + BYTES[16:], 0)), (S, seg(BYTES, 0))]
    assert _both(steps) == ([steps[0][1]], ["mismatch"])


def test_later_fragments_are_compared_whole_even_beside_a_port_zero_tcp_flow():
    """A later IP fragment of TCP is keyed without ports; it used to share the
    connection of a TCP flow on ports 0 and 0 and go out uncompared as a
    segment without payload."""
    def fragment(payload: bytes) -> bytes:
        return g.ipv4_frame(payload, g.IPPROTO_TCP, ip=g.IPv4Fields(flags=0, frag_offset=10))
    syn = g.tcp_frame(b"", sport=0, dport=0, seq=0, flags=g.TCP_SYN)
    steps = [(P, syn), (S, syn), (S, fragment(b"secondary bytes")),
             (P, fragment(b"primary bytes!!"))]
    assert _both(steps) == ([syn], ["mismatch"])
