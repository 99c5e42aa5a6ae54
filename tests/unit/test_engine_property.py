"""Property-style checks: random interleavings of primary and secondary
streams that carry the same data.  Plain ``random`` with fixed seeds, so a
failure names its seed and replays exactly.

For every seed: every primary frame is released exactly once, in its
connection's order; no checkpoint is requested and nothing is dropped; the
counters add up after every single frame, and nothing is left queued.
"""
import random

import pytest

from colo_xdp.lab import pktgen as g
from colo_xdp.engine import CheckpointRequest, ConnectionOpened, Drop, Release
from engine_kit import P, S, WRAP, assert_accounted, engine

SEEDS = range(40)


def _udp_flow(rnd, flow):
    return [g.udp_frame(b"u%d-%d-" % (flow, i) + bytes(rnd.randrange(40)),
                        sport=3000 + flow) for i in range(rnd.randint(1, 25))]


def _icmp_flow(rnd):
    return [g.icmp_echo_frame(b"p" * rnd.randrange(30), seq=i)
            for i in range(rnd.randint(1, 10))]


def _tcp_flow(rnd, flow, sizes=None, payload=None, isn=None, acks=True):
    """SYN, data (random sizes, random pure ACKs between), FIN; the ISN may
    sit just below 2**32 so the stream wraps."""
    sport = 4000 + flow
    isn = rnd.choice([0, rnd.randrange(WRAP), WRAP - 700]) if isn is None else isn
    ack = rnd.randrange(WRAP)
    out = [g.tcp_frame(b"", sport=sport, seq=isn, ack=0, flags=g.TCP_SYN)]
    seq = isn + 1
    if sizes is None:
        sizes = [rnd.randint(1, 600) for _ in range(rnd.randint(1, 12))]
    if payload is None:
        payload = bytes(rnd.randrange(256) for _ in range(sum(sizes)))
    pos = 0
    for n in sizes:
        out.append(g.tcp_frame(payload[pos:pos + n], sport=sport, seq=(seq + pos) % WRAP,
                               ack=ack, flags=g.TCP_ACK | g.TCP_PSH))
        pos += n
        if acks and rnd.random() < 0.3:
            ack = (ack + rnd.randint(1, 5000)) % WRAP
            out.append(g.tcp_frame(b"", sport=sport, seq=(seq + pos) % WRAP, ack=ack))
    out.append(g.tcp_frame(b"", sport=sport, seq=(seq + pos) % WRAP, ack=ack,
                           flags=g.TCP_FIN | g.TCP_ACK))
    return out


def _merge(rnd, flows):
    """One random interleaving of ``flows`` that keeps each flow's order."""
    cursors = [0] * len(flows)
    live = [i for i, f in enumerate(flows) if f]
    out = []
    while live:
        i = rnd.choice(live)
        out.append(flows[i][cursors[i]])
        cursors[i] += 1
        if cursors[i] == len(flows[i]):
            live.remove(i)
    return out


def _run(prim_flows, sec_flows, rnd):
    """Feed both sides, interleaved at random; return the engine and actions."""
    prim, sec = _merge(rnd, prim_flows), _merge(rnd, sec_flows)
    both = _merge(rnd, [[(P, f) for f in prim], [(S, f) for f in sec]])
    eng, actions = engine(), []
    for now, (side, frame) in enumerate(both):
        actions += eng.feed(side, frame, now)
        assert_accounted(eng)
    return eng, actions


def _check(eng, actions, prim_flows):
    out = [a.frame for a in actions if isinstance(a, Release)]
    assert [a for a in actions if isinstance(a, (CheckpointRequest, Drop))] == []
    assert sorted(out) == sorted(f for flow in prim_flows for f in flow)   # each once
    for flow in prim_flows:                                               # in order
        members = set(flow)
        assert [f for f in out if f in members] == flow
    c = assert_accounted(eng)
    assert c.queued == {"primary": 0, "secondary": 0}
    assert sum(isinstance(a, ConnectionOpened) for a in actions) == len(prim_flows)
    assert set(k for k, v in c.released.items() if v) <= {"matched", "no_payload"}


@pytest.mark.parametrize("seed", SEEDS)
def test_identical_streams_in_any_interleaving(seed):
    rnd = random.Random(seed)
    flows = [_udp_flow(rnd, f) for f in range(rnd.randint(1, 3))]
    flows += [_icmp_flow(rnd)]
    flows += [_tcp_flow(rnd, f) for f in range(rnd.randint(1, 3))]
    eng, actions = _run(flows, flows, rnd)
    _check(eng, actions, flows)


@pytest.mark.parametrize("seed", SEEDS)
def test_same_tcp_bytes_segmented_differently_in_any_interleaving(seed):
    # One ACK value for the whole stream, so the ACK rule always allows.
    rnd = random.Random(1000 + seed)
    total = rnd.randint(1, 4000)
    payload = bytes(rnd.randrange(256) for _ in range(total))
    isn = rnd.choice([0, WRAP - 1500, rnd.randrange(WRAP)])

    def cuts():
        sizes, left = [], total
        while left:
            sizes.append(min(left, rnd.randint(1, 1448)))
            left -= sizes[-1]
        return sizes

    ack_seed = rnd.randrange(1 << 30)
    prim = _tcp_flow(random.Random(ack_seed), 0, cuts(), payload, isn, acks=False)
    sec = _tcp_flow(random.Random(ack_seed), 0, cuts(), payload, isn, acks=False)
    eng, actions = _run([prim], [sec], rnd)
    _check(eng, actions, [prim])
