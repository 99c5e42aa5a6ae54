"""Passthrough rule updates: a refused change reaches no sink; while frames
flow, no frame is classified by a mixed list (part the old list, part the
new, or one's count with the other's rules).

The two lists below pass the same two flows, F and G, each through a rule
at the other end of the list.  Every frame of F and G is PASSTHROUGH under
either list, whole.  A frame that meets a list half written, rule 0 already
the new list's while rule 63 is still the old one's, matches neither end
and is COMPARE: that verdict counter moving is a mixed list seen.  The
frames run in the kernel (BPF_PROG_TEST_RUN, many runs a call, on one CPU)
while this thread writes A, B, A, ... from another.
"""
from __future__ import annotations

import threading
import time

import pytest

from colo_xdp.engine import MAX_PASSTHROUGH_RULES
from colo_xdp.lab import pktgen
from colo_xdp.transport.xdp.bpfsys import XDP_REDIRECT
from colo_xdp.transport.xdp.classify_abi import Side, Verdict

from xdp_kit import Rule

F_PORT, G_PORT = 2000, 3000
SWAPS = 200                    # list changes per run
RUNS_A_CALL = 20000            # frames one BPF_PROG_TEST_RUN call classifies


def _lists() -> tuple[list[Rule], list[Rule]]:
    junk = [Rule(proto=17, dport=10 + i) for i in range(MAX_PASSTHROUGH_RULES - 2)]
    f, g = Rule(proto=17, dport=F_PORT), Rule(proto=17, dport=G_PORT)
    return [f, *junk, g], [g, *junk, f]


def test_no_frame_sees_a_half_written_list(programs):
    clf = programs[Side.SECONDARY]
    a, b = _lists()
    frames = [pktgen.udp_frame(b"f", dport=F_PORT), pktgen.udp_frame(b"g", dport=G_PORT)]
    clf.set_rules(a)
    for frame in frames:
        assert clf.test_run(frame).action is not None
    before = clf.counters()
    done = threading.Event()
    runs = [0]
    during = [0]               # calls that ended while the lists were being changed

    def flow() -> None:
        while not done.is_set():
            for frame in frames:
                clf.test_run(frame, repeat=RUNS_A_CALL)
                runs[0] += RUNS_A_CALL
                during[0] += not done.is_set()

    sender = threading.Thread(target=flow)
    sender.start()
    began = time.monotonic()
    try:
        for i in range(SWAPS):
            clf.set_rules(b if i % 2 == 0 else a)
    finally:
        done.set()
        sender.join()
        took = time.monotonic() - began
        clf.set_rules([])
    after = clf.counters()
    moved = {v: after[v].frames - before[v].frames for v in Verdict}
    assert during[0] >= 4, "the frames did not run while the lists changed"
    assert moved[Verdict.PASSTHROUGH] == runs[0], (
        f"{runs[0] - moved[Verdict.PASSTHROUGH]} of {runs[0]} frames met a "
        f"half-written list during {SWAPS} changes in {took:.2f} s: {moved}")


def test_a_change_one_sink_refuses_reaches_no_sink(programs):
    """Every sink checks before any commits: a change the last sink refuses
    leaves the classifier's list and the engine's held frames as they were."""
    from colo_xdp.engine import Engine, EngineConfig, PassthroughRule
    from colo_xdp.proto.flows import PassthroughError, PassthroughSink, PassthroughTable

    clf = programs[Side.PRIMARY]
    engine = Engine(EngineConfig())
    frame = pktgen.udp_frame(b"held", dport=F_PORT)

    def refuse_two(rules):
        if len(rules) > 1:
            raise PassthroughError("the file cannot be written")

    table = PassthroughTable(final=PassthroughSink(engine.set_passthrough,
                                                   engine.check_passthrough))
    table.add_sink(PassthroughSink(clf.set_rules, clf.check_rules))
    table.add_sink(PassthroughSink(lambda rules: None, refuse_two))
    try:
        table.add(PassthroughRule(proto=17, dport=G_PORT))
        engine.feed_frame(Side.PRIMARY, frame, 0)              # held: no twin yet
        assert engine.counters().queued["primary"] == 1
        with pytest.raises(PassthroughError, match="not changed: the file cannot be written"):
            table.add(PassthroughRule(proto=17, dport=F_PORT))  # would cover the held frame
        assert table.rules == [PassthroughRule(proto=17, dport=G_PORT)]
        assert engine.counters().queued["primary"] == 1         # not flushed
        assert engine.counters().released["passthrough"] == 0
        assert clf.test_run(frame).action == XDP_REDIRECT       # still compared
        before = clf.counters()[Verdict.COMPARE].frames
        clf.test_run(frame)
        assert clf.counters()[Verdict.COMPARE].frames == before + 1
    finally:
        clf.set_rules([])
