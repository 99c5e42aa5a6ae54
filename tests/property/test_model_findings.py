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


def test_fragments_of_a_port_zero_tcp_segment_are_compared_as_that_segment():
    """Issue 14: a later IP fragment of TCP used to be keyed without ports
    (apart from a TCP flow on ports 0 and 0).  Fragments are now reassembled:
    the datagram is that flow's segment, compared by sequence; a lone later
    fragment waits for the rest."""
    syn = g.tcp_frame(b"", sport=0, dport=0, seq=0, flags=g.TCP_SYN)
    prim = g.fragment(g.tcp_frame(b"primary bytes!!" * 4, sport=0, dport=0, seq=1,
                                  ip=g.IPv4Fields(flags=0)), 32)
    sec = g.fragment(g.tcp_frame(b"secondary bytes" * 4, sport=0, dport=0, seq=1,
                                 ip=g.IPv4Fields(flags=0)), 48)
    assert _both([(P, syn), (S, syn), (S, sec[1]), (P, prim[1])]) == ([syn], [])
    steps = [(P, syn), (S, syn), *((S, f) for f in sec), *((P, f) for f in prim)]
    assert _both(steps) == ([syn], ["mismatch"])
