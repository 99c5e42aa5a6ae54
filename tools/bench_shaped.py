"""QEMU-shaped rows of `make bench` (issue 11): traffic as two VMs make it.

tools/bench.py paces one writer so that the comparator sees a known order;
real COLO is not like that. Here, as in the shape the issue was found with:

- two independent sender processes, one for the primary input and one for
  the secondary, each writing bursts of ``BURST`` frames with blocking
  writes; the leading side may run up to ``lead`` frames (512 or 2048) ahead
  of the other and never further; the other never passes it;
- notify_dev is read, checkpoints are never answered;
- the main process reads the outdev and notify_dev and measures.

Rows (both leads, both directions): 1 UDP flow and 1000 flows at 64 B and
1400 B, one TCP flow. A row reports steady-state pairs/s after the warm-up,
primary frames never released by the end (``lost``: dropped, or still held)
and DO_CHECKPOINT per second. Each comparator is pinned to its own core;
the three driver processes share the other. The driver's ceiling is the same
driver against ``tools.bench``'s sink. A row runs ``RUNS`` times, every
comparator and the sink in turn, and shows each one's best pairs/s (with
every run's lost frames and the highest checkpoint rate): on a shared host
one run of the same comparator moved by 15 % and more, and the row's
verdict was the noise's.

Then the COLO-frame simulator: every DO_CHECKPOINT is answered with
COLO_CHECKPOINT after ``CHECKPOINT_MS``, and the secondary is resynchronised
as a real checkpoint does (senders paused, the comparator flushed, both
streams continue from the same frame); one secondary frame in ``DIVERGE_EVERY``
differs. Goodput: pairs released per second.

Then latency: one pair at a time, secondary first and primary first; the
time from the second copy's write to the release on the outdev.  colo-xdp
runs twice there: as it comes (polling while frames are held) and with
``--busy-poll 0``, to show what polling adds.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import select
import socket
import statistics
import time
from dataclasses import dataclass

from colo_xdp.lab import pktgen
from tools import bench
from tools.harness import HarnessError, connect_unix

BURST = 128                  # frames per write, as QEMU's chunks in the issue
RUNS = 2                     # of each row, interleaved (tools.bench --shaped-runs)
LEADS = (512, 2048)
CHECKPOINT_MS = 50
DIVERGE_EVERY = 10_000
LATENCY_PAIRS = 2000
DRAIN_S = 0.5                # after the senders stop, for the counts to settle
COLO_CHECKPOINT = pktgen.encode(b"COLO_CHECKPOINT")

# shared counters: sent by side, pause request, pause acks, jump target, stop
SENT_P, SENT_S, PAUSE, ACK_P, ACK_S, JUMP, STOP = range(7)


@dataclass(frozen=True)
class Shaped:
    label: str
    proto: str
    flows: int
    size: int
    leader: str          # "pin" or "sin"
    lead: int


def shaped_rows() -> list[Shaped]:
    rows = []
    for proto, flows, size, what in (("udp", 1, 64, "UDP 1 flow 64 B"),
                                     ("udp", 1, 1400, "UDP 1 flow 1400 B"),
                                     ("udp", 1000, 64, "UDP 1000 flows 64 B"),
                                     ("udp", 1000, 1400, "UDP 1000 flows 1400 B"),
                                     ("tcp", 1, 1448, "TCP 1 flow 1448 B")):
        for leader in ("sin", "pin"):
            for lead in LEADS:
                side = "secondary" if leader == "sin" else "primary"
                rows.append(Shaped(f"{what}, {side} +{lead}", proto, flows, size, leader,
                                   lead))
    return rows


def _stream(row: Shaped):
    return bench.build_stream(bench.Row(0, row.label, row.proto, row.flows, row.size))


def _sender(sock: socket.socket, stream, record: int, side: int, leader: int, lead: int,
            shared) -> None:
    """One VM's output: bursts of frames, never more than ``lead`` ahead."""
    me, other = (SENT_P, SENT_S) if side == 0 else (SENT_S, SENT_P)
    ack = ACK_P if side == 0 else ACK_S
    sock.setblocking(True)
    pos = 0
    try:
        while not shared[STOP]:
            if shared[PAUSE]:
                shared[ack] = 1
                while shared[PAUSE] and not shared[STOP]:
                    time.sleep(0.0002)
                pos = max(pos, shared[JUMP])
                shared[me] = pos
                shared[ack] = 0
                continue
            if side == leader:
                room = shared[other] + lead - pos
            else:
                room = shared[other] - pos           # never pass the leader
            if room <= 0:
                os.sched_yield()
                continue
            n = min(BURST, room)
            data = bytearray()
            while len(data) < n * record:            # a view may stop at a block's end
                data += stream.view((pos * record) + len(data), n * record - len(data))
            sock.sendall(data)
            pos += n
            shared[me] = pos
    except OSError:
        pass


def _start_senders(socks, pstream, sstream, record, leader, lead, shared):
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_sender, args=(socks["pin"], pstream, record, 0, leader, lead,
                                               shared), daemon=True),
             ctx.Process(target=_sender, args=(socks["sin"], sstream, record, 1, leader, lead,
                                               shared), daemon=True)]
    for p in procs:
        p.start()
    return procs


@dataclass
class ShapedResult:
    pairs: float
    lost: int
    checkpoints: float
    goodput: float = 0.0


def drive_shaped(comparator, row: Shaped, warmup: float, seconds: float,
                 simulate: bool = False) -> ShapedResult:
    """Both senders for ``warmup + seconds``; the outdev and notify read here."""
    pstream = sstream = _stream(row)
    if simulate:
        pstream, sstream = _diverging_streams()
    record = pstream.record
    socks = {name: connect_unix(comparator.socket_path(name))
             for name in ("out", "notify", "pin", "sin")}
    time.sleep(bench.SETTLE_S)
    shared = mp.Array("q", 7, lock=False)
    leader = 0 if row.leader == "pin" else 1
    procs = _start_senders(socks, pstream, sstream, record, leader, row.lead, shared)
    out, notify = socks["out"], socks["notify"]
    out.setblocking(False)
    notify.setblocking(False)
    got = notes = 0
    asked = False
    start = time.monotonic()
    mark_at, end_at = start + warmup, start + warmup + seconds
    mark = None
    try:
        while True:
            ready, _, _ = select.select([out, notify], [], [], 0.01)
            if out in ready:
                n = len(out.recv(1 << 20))
                if not n:
                    raise bench.ComparatorGone(f"{comparator.name} closed its outdev")
                got += n
            if notify in ready:
                data = notify.recv(1 << 16)
                if not data:
                    raise bench.ComparatorGone(f"{comparator.name} closed its notify_dev")
                notes += len(data)
                asked = asked or simulate
            now = time.monotonic()
            if asked:
                got += _checkpoint(out, notify, shared, now)
                asked = False
            now = time.monotonic()
            if mark is None and now >= mark_at:
                mark = (now, got, notes)
            elif mark is not None and now >= end_at:
                break
            if not comparator.alive():
                raise bench.ComparatorGone(f"{comparator.name} exited")
        t0, got0, notes0 = mark
        elapsed = now - t0
        pairs = (got - got0) / record / elapsed
        ckpts = (notes - notes0) / bench.NOTIFY_RECORD / elapsed
        shared[STOP] = 1
        for p in procs:
            p.join(2)
        settle = time.monotonic() + DRAIN_S
        while time.monotonic() < settle:
            if select.select([out], [], [], 0.05)[0]:
                got += len(out.recv(1 << 20))
        # Frames both sides sent that never came out (dropped, or held).
        lost = min(shared[SENT_P], shared[SENT_S]) - got // record
        return ShapedResult(pairs, lost, ckpts, pairs if simulate else 0.0)
    finally:
        shared[STOP] = 1
        for p in procs:
            if p.is_alive():
                p.terminate()
        for sock in socks.values():
            sock.close()


def _checkpoint(out, notify, shared, began: float) -> int:
    """The COLO frame: pause both VMs, take the checkpoint (CHECKPOINT_MS),
    flush the comparator, and let both continue from the same frame."""
    shared[PAUSE] = 1
    got = 0
    deadline = began + CHECKPOINT_MS / 1000
    while time.monotonic() < deadline or not (shared[ACK_P] and shared[ACK_S]):
        if select.select([out], [], [], 0.002)[0]:
            got += len(out.recv(1 << 20))
        with_notify = select.select([notify], [], [], 0)[0]
        if with_notify:
            notify.recv(1 << 16)
    # Flush twice: what was in flight at the first reaches the comparator
    # before the second, so both streams restart with nothing held.
    for _ in range(2):
        notify.setblocking(True)
        notify.sendall(COLO_CHECKPOINT)
        notify.setblocking(False)
        settle = time.monotonic() + 0.01
        while time.monotonic() < settle:
            if select.select([out], [], [], 0.002)[0]:
                got += len(out.recv(1 << 20))
    shared[JUMP] = max(shared[SENT_P], shared[SENT_S])
    shared[PAUSE] = 0
    return got


def _diverging_streams():
    payload = b"\xa5" * (64 - bench.ETH_IP_HLEN - 8 - bench.COUNTER)
    prim = [pktgen.encode(pktgen.udp_frame(n.to_bytes(bench.COUNTER, "big") + payload,
                                           sport=bench.UDP_SPORT, dport=bench.UDP_DPORT))
            for n in range(DIVERGE_EVERY)]
    sec = list(prim)
    sec[-1] = prim[-1][:-1] + b"\x00"               # one frame in DIVERGE_EVERY differs
    return bench.RingStream(prim), bench.RingStream(sec)


# --- latency ------------------------------------------------------------------------------

def drive_latency(comparator, first: str, pairs: int = LATENCY_PAIRS) -> tuple[float, float]:
    """p50 and p99 in microseconds: second copy written -> frame on the outdev."""
    socks = {name: connect_unix(comparator.socket_path(name))
             for name in ("out", "notify", "pin", "sin")}
    try:
        time.sleep(bench.SETTLE_S)
        for s in socks.values():
            s.setblocking(True)
        a, b = (socks["sin"], socks["pin"]) if first == "sin" else (socks["pin"], socks["sin"])
        samples = []
        for i in range(pairs + 100):
            rec = pktgen.encode(pktgen.udp_frame(b"lat %d" % i, sport=bench.UDP_SPORT,
                                                 dport=bench.UDP_DPORT))
            a.sendall(rec)
            time.sleep(0.0002)                   # the first copy is in before the second
            t0 = time.perf_counter()
            b.sendall(rec)
            need = len(rec)
            while need:
                need -= len(socks["out"].recv(need))
            if i >= 100:                         # warm-up
                samples.append((time.perf_counter() - t0) * 1e6)
        samples.sort()
        return statistics.median(samples), samples[int(len(samples) * 0.99) - 1]
    finally:
        for s in socks.values():
            s.close()


# --- the section ------------------------------------------------------------------------------

def _best(kept: ShapedResult | None, new: ShapedResult) -> ShapedResult:
    """Runs of one row: the best pairs/s; every run's lost frames, the most
    checkpoint requests/s any run saw."""
    if kept is None:
        return new
    return ShapedResult(max(kept.pairs, new.pairs), kept.lost + new.lost,
                        max(kept.checkpoints, new.checkpoints))


def run(launchers: dict, ceiling, warmup: float, seconds: float, report,
        rows: list[Shaped] | None = None, latency_only: dict | None = None,
        runs: int = RUNS) -> list[str]:
    """Every shaped row, the simulator and latency; returns the table lines.
    A row runs ``runs`` times, each comparator and the sink in turn, and
    shows the best pairs/s of each (see ``_best``).  ``latency_only``: more
    comparators (a variant's options) for the latency rows."""
    names = list(launchers)
    lines = ["| row | " + " | ".join(f"{n} pairs/s | lost | ckpt/s" for n in names)
             + " | driver max | target met |",
             "|---|" + "---|---|---|" * len(names) + "---|---|"]
    for row in rows if rows is not None else shaped_rows():
        cells = []
        res: dict[str, ShapedResult | None] = {name: None for name in names}
        ceil = None
        for _ in range(runs):              # interleaved: a noisy moment hits one run
            for name, launch in launchers.items():
                try:
                    with launch() as comparator:
                        res[name] = _best(res[name], drive_shaped(comparator, row, warmup,
                                                                  seconds))
                except HarnessError as err:
                    report(f"  {row.label}: {name} failed: {err}")
            if ceiling is not None:
                try:
                    with ceiling() as sink:
                        pairs = drive_shaped(sink, row, warmup, min(seconds, 1.0)).pairs
                    ceil = max(ceil or 0.0, pairs)
                except HarnessError as err:
                    report(f"  {row.label}: sink failed: {err}")
        for name in names:
            r = res[name]
            cells.append("failed | - | -" if r is None else
                         f"{r.pairs:,.0f} | {r.lost:,} | {r.checkpoints:,.0f}")
        lines.append(f"| {row.label} | " + " | ".join(cells) + f" | "
                     f"{'-' if ceil is None else f'{ceil:,.0f}'} | {_met(res, ceil)} |")
        report("  " + lines[-1])
    sim = bench.Row(0, "sim", "udp", 1, 64)
    row = Shaped("COLO simulator: UDP 1 flow 64 B, secondary +512, 1 in 10k diverges",
                 sim.proto, 1, 64, "sin", 512)
    cells = []
    for name, launch in launchers.items():
        try:
            with launch() as comparator:
                r = drive_shaped(comparator, row, warmup, seconds, simulate=True)
            cells.append(f"goodput {r.goodput:,.0f} pairs/s, {r.checkpoints:,.1f} ckpt/s")
        except HarnessError as err:
            cells.append(f"failed: {err}")
    lines += ["", f"{row.label}: " + "; ".join(f"{n} {c}" for n, c in zip(names, cells))]
    report("  " + lines[-1])
    lines.append("")
    timed = {**launchers, **(latency_only or {})}
    lines.append("| latency (us) | " + " | ".join(f"{n} p50 | {n} p99" for n in timed) + " |")
    lines.append("|---|" + "---|---|" * len(timed))
    for first, label in (("sin", "secondary first"), ("pin", "primary first")):
        cells = []
        for name, launch in timed.items():
            try:
                with launch() as comparator:
                    p50, p99 = drive_latency(comparator, first)
                cells.append(f"{p50:.0f} | {p99:.0f}")
            except HarnessError as err:
                cells.append("failed | failed")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
        report("  " + lines[-1])
    return lines


def _met(res: dict, ceil: float | None) -> str:
    ours, qemu = res.get(bench.COLO_XDP), res.get(bench.QEMU)
    if ours is None:
        return "-"
    bad = ours.lost > 0 or ours.checkpoints > 0
    fast = (qemu is not None and ours.pairs >= 10 * qemu.pairs) or (
        ceil is not None and ours.pairs >= 0.9 * ceil)
    return "yes" if fast and not bad else "no"
