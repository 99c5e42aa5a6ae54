"""The engine against the model (tests/property/model.py) on random traffic.

Each scenario (scenarios.py) is played step by step through the C engine
(ActionEngine) and through the model.  After every step:

* the engine released the same frames, in the same order, and reported the
  same checkpoint requests, drops and connection events as the model;
* its counters and its connection snapshot equal the model's, and the
  counters add up (engine_kit.assert_accounted);
* no connection holds more than max_queue_size frames a side, and the table
  no more than max_connections connections.

At the end, on what the engine put out:

* every primary frame was released exactly once, or is still held, or was
  dropped with a reason; nothing was released that no primary sent;
* per connection, frames left in order: arrival order for datagrams, and for
  TCP never a segment while one that sorts before it was held;
* nothing was released before it matched, except frames the engine does not
  compare, TCP segments without new data, and checkpoint and failover
  flushes, failover and the passthrough list: a matched datagram had an equal secondary datagram, not used by
  another match; every byte of a matched TCP segment above what was compared
  when it arrived had been sent by the secondary, the same, at the same
  sequence number.
"""
from __future__ import annotations

from collections import Counter, defaultdict

from hypothesis import given

from colo_xdp.engine import (ActionEngine, CheckpointRequest, ConnectionEvicted,
                             ConnectionOpened, Drop, EngineConfig, Release)
from engine_kit import assert_accounted
from model import P, S, Model, conn_id, parse, seq_after
from property_settings import profile
from scenarios import Scenario, scenarios

SIDE = {"P": P, "S": S}


def _key(conn):
    return None if conn is None else (conn.saddr, conn.daddr, conn.sport, conn.dport, conn.proto,
                                      conn.vlan)


def coalesced(events: list[tuple]) -> list[tuple]:
    """The model's events as the engine reports them: drops and checkpoint
    requests of one call merged per kind, reason and connection at the first
    one's place, with a count (a checkpoint's evidence concatenated)."""
    out: list = []
    at: dict = {}
    for ev in events:
        if ev[0] not in ("drop", "checkpoint"):
            out.append(ev)
            continue
        key = ev[:4] if ev[0] == "drop" else ev[:3]
        if key not in at:
            at[key] = len(out)
            out.append([*ev, 1])
            continue
        merged = out[at[key]]
        merged[-1] += 1
        if ev[0] == "checkpoint":
            merged[3] = merged[3] + ev[3]
    return [tuple(ev) if isinstance(ev, list) else ev for ev in out]


def engine_events(actions) -> list[tuple]:
    """The engine's events in the model's form."""
    out = []
    for a in actions:
        if isinstance(a, CheckpointRequest):
            evidence = tuple((e.side.name.lower(), e.frame, e.vnet_hdr_len, e.born_ms)
                             for e in a.evidence)
            out.append(("checkpoint", a.reason.name.lower(), _key(a.conn), evidence, a.count))
        elif isinstance(a, Drop):
            out.append(("drop", a.side.name.lower(), a.reason.name.lower(), _key(a.conn),
                        a.count))
        elif isinstance(a, ConnectionOpened):
            out.append(("opened", _key(a.conn)))
        elif isinstance(a, ConnectionEvicted):
            out.append(("evicted", _key(a.conn)))
    return out


COUNTER_FIELDS = ("frames_in", "bytes_in", "released", "released_bytes", "matched_secondary",
                  "skipped_secondary", "dropped", "checkpoints", "mismatches", "queued",
                  "connections", "conns_created", "conns_evicted", "evidence_lost", "frag")


def model_snapshot(model: Model) -> list[tuple]:
    return [(c.key, c.passthrough, sum(f.weight for f in c.q[P]),
             sum(f.weight for f in c.q[S]), c.created, c.last, c.matched,
             c.released, c.mismatches, c.checkpoints) for c in model.conns.values()]


def engine_snapshot(eng) -> list[tuple]:
    return [(_key(c.conn), c.passthrough, c.queued_primary, c.queued_secondary, c.created_ms,
             c.last_ms, c.matched, c.released, c.mismatches, c.checkpoints)
            for c in eng.connections()]


class Run:
    """One scenario through both, with what the final checks need."""

    def __init__(self, scn: Scenario):
        self.scn = scn
        self.cfg = scn.config
        self.eng = ActionEngine(EngineConfig(**self.cfg))
        self.model = Model(**self.cfg)
        self.now = 0
        self.released: list[tuple[int, str, int]] = []   # (frame id, step kind, ids fed so far)
        self.compared_at_arrival: dict[int, int | None] = {}
        self.sec_seen: list[int] = []                      # secondary frame ids, in order
        self.failed_over_at: int | None = None             # first frame id after failover

    def play(self) -> None:
        cursor = {side: [0] * len(self.scn.flows) for side in SIDE}
        for step, op in enumerate(self.scn.ops):
            self.now += op.dt
            if op.kind in SIDE:
                flow = self.scn.flows[op.flow]
                frames = flow.primary if op.kind == "P" else flow.secondary
                i = cursor[op.kind][op.flow]
                if i >= len(frames):
                    continue
                cursor[op.kind][op.flow] += 1
                self.feed(SIDE[op.kind], frames[i], flow.vnet, step)
            elif op.kind == "tick":
                self.compare(step, "tick", self.eng.tick(self.now), self.model.tick(self.now))
            elif op.kind == "checkpoint":
                self.compare(step, "checkpoint", self.eng.checkpoint(), self.model.checkpoint())
            elif op.kind == "failover":
                if self.failed_over_at is None:
                    self.failed_over_at = self.model.next_id
                self.compare(step, "failover", self.eng.failover(), self.model.failover())
            elif op.kind == "rules":
                self.eng.set_passthrough(list(op.rules))
                self.compare(step, "rules", self.eng.collect(),
                             self.model.set_passthrough(op.rules))

    def feed(self, side: str, frame: bytes, vnet: int, step: int) -> None:
        fid = self.model.next_id
        parsed = parse(frame, vnet)
        if side == P and parsed and conn_id(parsed) in self.model.conns:
            self.compared_at_arrival[fid] = self.model.conns[conn_id(parsed)].compared
        if side == S:
            self.sec_seen.append(fid)
        eng_side = self.eng_side(side)
        self.compare(step, "feed", self.eng.feed(eng_side, frame, self.now, vnet),
                     self.model.feed(side, frame, self.now, vnet))

    @staticmethod
    def eng_side(side):
        from colo_xdp.engine import Side
        return Side.PRIMARY if side == P else Side.SECONDARY

    def compare(self, step: int, kind: str, actions, expected) -> None:
        m_out, m_events = expected
        e_out = [(a.frame, a.vnet_hdr_len) for a in actions if isinstance(a, Release)]
        where = f"step {step} ({kind}, now={self.now})"
        assert e_out == [(o.frame, o.vnet_hdr_len) for o in m_out], (
            f"{where}: engine released {len(e_out)} frames, the model "
            f"{[(o.id, o.reason) for o in m_out]}")
        assert engine_events(actions) == coalesced(m_events), f"{where}: events differ"
        for o in m_out:
            self.released.append((o.id, kind, self.model.next_id))
        c = self.eng.counters()
        mc = self.model.counters()
        for name in COUNTER_FIELDS:
            assert getattr(c, name) == mc[name], f"{where}: counter {name}"
        assert_accounted(self.eng)
        snapshot = engine_snapshot(self.eng)
        assert snapshot == model_snapshot(self.model), f"{where}: connection snapshot"
        # Memory bounded by the configured limits.
        assert c.connections <= self.cfg["max_connections"]
        # (a queue holds max_queue_size frames; a reassembled datagram is one
        # frame standing for up to 64 fragments, the snapshot counts those)
        for conn in snapshot:
            assert max(conn[2], conn[3]) <= self.cfg["max_queue_size"] * 64
        for conn in self.model.conns.values():
            assert max(len(conn.q[P]), len(conn.q[S])) <= self.cfg["max_queue_size"]

    # -- the end-of-run invariants on what the engine put out --------------------------

    def check_fates(self) -> None:
        m = self.model
        primaries = [f for f in m.frames.values() if f.side == P]
        out_ids = [fid for fid, _, _ in self.released]
        assert len(out_ids) == len(set(out_ids)), "a primary frame released twice"
        fed = Counter(f.data for f in primaries)
        out = Counter(m.frames[fid].data for fid in out_ids)
        assert not out - fed, "released a frame no primary sent"
        for f in primaries:
            fate, reason = m.fate[f.id]
            if fate == "released":
                assert f.id in out_ids
            elif fate == "held":
                assert m.holds(f)
            else:
                assert fate == "dropped" and reason, f"frame {f.id}: {m.fate[f.id]}"
        c = self.eng.counters()
        assert c.released_total == len(out_ids)
        assert c.queued["primary"] == sum(1 for f in primaries if m.fate[f.id][0] == "held")

    def check_order(self) -> None:
        m = self.model
        by_key = defaultdict(list)
        for pos, (fid, _, fed) in enumerate(self.released):
            f = m.frames[fid]
            parsed = parse(f.data, f.vnet)
            if parsed:
                by_key[conn_id(parsed)].append((fid, fed, parsed))
        for key, rel in by_key.items():
            if rel[0][2].kind != "tcp":
                ids = [fid for fid, _, _ in rel]
                assert ids == sorted(ids), f"{key}: released out of arrival order {ids}"
                continue
            gone = set()
            for fid, fed, parsed in rel:
                gone.add(fid)
                # every segment of this connection that was held then
                held = [h for h in m.frames.values()
                        if h.side == P and h.id < fed and h.id not in gone
                        and h.p is not None and conn_id(h.p) == key
                        and m.fate[h.id][0] in ("held", "released")]
                for h in held:
                    assert not seq_after(parsed.seq, h.p.seq) and not (
                        parsed.seq == h.p.seq and h.id < fid), (
                        f"{key}: frame {fid} (seq {parsed.seq}) released while "
                        f"frame {h.id} (seq {h.p.seq}) was held")

    def check_matched_first(self) -> None:
        m = self.model
        for fid, kind, fed in self.released:
            reason = m.fate[fid][1]
            f = m.frames[fid]
            allowed = {"feed": {"matched", "unsupported", "no_payload", "retransmit", "failover",
                                "passthrough"},
                       "tick": set(), "checkpoint": {"flushed"}, "failover": {"failover"},
                       "rules": {"passthrough"}}[kind]
            if kind == "feed" and reason == "flushed":
                # the rest of a datagram a checkpoint flushed part of
                assert parse(f.data, f.vnet).fragment, f"frame {fid} flushed by a feed"
                continue
            assert reason in allowed, f"frame {fid} released as {reason} by a {kind}"
            if reason == "failover" and kind == "feed":
                assert self.failed_over_at is not None and fid >= self.failed_over_at
            if reason == "unsupported":
                assert parse(f.data, f.vnet) is None
            if reason == "no_payload":
                assert f.p.kind == "tcp" and not f.p.payload
        self._check_dgram_matches()
        self._check_tcp_matches()

    def _matched(self, kind: str):
        for fid, _, fed in self.released:
            f = self.model.frames[fid]
            if self.model.fate[fid][1] == "matched" and f.p is not None and f.p.kind == kind:
                yield f, fed

    def _check_dgram_matches(self) -> None:
        m = self.model
        used = Counter()
        for kind in ("l4", "whole"):
            for f, fed in self._matched(kind):
                want = (conn_id(f.p), len(f.data), f.data[f.p.cmp_off:])
                have = sum(1 for sid in self.sec_seen if sid < fed and m.frames[sid].p
                           and (conn_id(m.frames[sid].p), len(m.frames[sid].data),
                                m.frames[sid].data[f.p.cmp_off:]) == want)
                used[want] += 1
                assert used[want] <= have, f"frame {f.id} released without its own equal secondary"

    def _check_tcp_matches(self) -> None:
        m = self.model
        for f, fed in self._matched("tcp"):
            sent = {}
            for sid in self.sec_seen:
                s = m.frames[sid]
                if sid < fed and s.p and conn_id(s.p) == conn_id(f.p):
                    for i, byte in enumerate(s.p.payload):
                        sent.setdefault((s.p.seq + i) % (1 << 32), set()).add(byte)
            mark = self.compared_at_arrival.get(f.id)
            for i, byte in enumerate(f.p.payload):
                seq = (f.p.seq + i) % (1 << 32)
                if mark is not None and not seq_after(seq + 1, mark):
                    continue            # compared before this segment arrived
                assert byte in sent.get(seq, ()), (
                    f"frame {f.id}: byte at seq {seq} released, the secondary never sent it")


def play_and_check(scn: Scenario) -> Run:
    run = Run(scn)
    run.play()
    run.check_fates()
    run.check_order()
    run.check_matched_first()
    return run


@profile
@given(scenarios())
def test_engine_matches_model_on_mixed_traffic(scn):
    play_and_check(scn)


@profile
@given(scenarios(kinds=("tcp",), max_flows=2))
def test_engine_matches_model_on_tcp(scn):
    play_and_check(scn)


@profile
@given(scenarios(vnet_hdr=True, max_flows=3))
def test_engine_matches_model_with_vnet_headers(scn):
    play_and_check(scn)
