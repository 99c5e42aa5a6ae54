"""XDP mode in `make bench`: pairs/s of ``colo-xdp compare --primary-xdp
--secondary-xdp`` for the chardev rows, next to two ceilings of the same kind of veths.

Used by ``tools.bench`` (``--no-xdp`` skips it). The lab is the one of
``tests/xdp/test_service_xdp.py``, with a twin of each veth for the AF_XDP
ceiling::

    ns guest-p: p-g  ──veth── p-h  ┐ ns host: colo-xdp compare --primary-xdp p-h
    ns guest-s: s-g  ──veth── s-h  ┘   --secondary-xdp s-h --outdev unix:out.sock
    ns guest-p: pc-g ──veth── pc-h ┐ ns host: AF_XDP sink (rx_burst/rx_done only)
    ns guest-s: sc-g ──veth── sc-h ┘   both on cpu 1 (taskset -c 1)
        ▲
        driver (cpu 0): AF_XDP TX on p-g/s-g or pc-g/sc-g, reads out.sock, drains notify

Method, per row:
- The frames are built before the clock starts (the chardev rows' frames,
  unframed). The driver sends them with ``XskSocket.tx_burst``, ``BURST`` at
  a time, the same frames on both sides.
- The veths have a 1600-byte MTU (``LAB_MTU``): row 7's frames are 1522.
- ``drop``: an XDP program on p-h and s-h that drops every frame and counts
  it in a per-CPU array, one unpaced run (both sides blasting, alternating
  bursts) before the comparator starts: what the driver can send, a sanity
  bound.
- Then the comparator (on p-h/s-h) and the AF_XDP sink (classify.c on pc-h/sc-h
  redirecting to an ``XskSocket`` per interface, in a process that only does
  ``rx_burst`` + ``rx_done``, no engine) are both started, both on cpu 1, and
  measured in turn: ``WINDOWS`` (``--xdp-windows``) times a ceiling window,
  then an XDP mode window, each of ``MAX_SECONDS`` after ``REWARM_S`` of
  sending (the first of each kind: ``CEILING_WARMUP``, ``--warmup``). The one
  not measured gets no frames and sleeps in poll. A ceiling measured once,
  a moment apart from the comparator, moved by ±15 % on a shared host;
  alternating short windows has both sample the same host, and the table
  gives medians, the ratio of the medians and the spread.
- Ceiling windows: both sides unpaced, alternating bursts; frames/s the sink
  received (both interfaces together, like the XDP mode's frames/s, 2 x pairs/s).
- XDP mode windows: one side leads (as in the chardev bench: the secondary by
  0 frames in rows 1-4, the primary by ``LEAD_FRAMES`` in row 5): the
  follower never passes the leader less the lead, the leader is at most one
  burst ahead of that, and neither side is more than ``WINDOW_FRAMES`` beyond
  the pairs released, so the comparator's rx rings (INPUT_RING_SIZE, 4096)
  never overflow, and a comparator that loses its cpu for a while finds a
  ring's worth waiting instead of a driver that stopped (512 made a shared
  host's figures depend on scheduling more than on the comparator). Between
  its windows the comparator drains and waits: the stream goes on where it
  stopped. Released pairs = outdev bytes / framed size; the first frames
  released and the last are checked against the stream as in the chardev bench.
- Per window, the share of cpu 1 other processes took from the comparator or
  the sink; a row where the median is 5 % or more gets a note.

Note that veth runs the receiving side's XDP (and AF_XDP's copy into the
UMEM) in the sender's softirq: on the driver's cpu 0, not the comparator's.
"""
from __future__ import annotations

import contextlib
import os
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from colo_xdp.lab.netns import add_netns, add_veth, in_netns
from colo_xdp.lab.netns import sh as _sh
from colo_xdp.lab.process import READY_LINE, ProcessError, SupervisedProcess


BURST = 64                # frames per tx_burst call
WINDOWS = 10              # per row: this many AF_XDP ceiling and XDP mode windows, alternating
REWARM_S = 0.1            # sending before a window measures, after the first of its kind
TWIN = "c"                # the twin veths the AF_XDP ceiling runs on: pc-h/pc-g, sc-h/sc-g
WINDOW_FRAMES = 2048      # sent on a side, beyond pairs released (rx ring: INPUT_RING_SIZE)
CEILING_SECONDS = 1.0     # the XDP_DROP ceiling: one run per row
MAX_SECONDS = 0.5         # a window (both kinds): short, so the two kinds alternate often
CEILING_WARMUP = 0.3
TCP_LAPS_KEPT = 4
HOST_CPU = "1"
# The rows' largest frame, IPv6 TCP with 1448 bytes of payload, is 1522 bytes:
# past a 1500-byte MTU the peer veth drops it before any XDP program (row 7
# measured 0 frames/s everywhere).  An AF_XDP frame (2048 - 256 headroom)
# holds it.
LAB_MTU = 1600
READY_TIMEOUT = 20.0
STOP_GRACE_S = 3.0


DROP_PROG = r"""
BPF_PERCPU_ARRAY(dropped, u64, 1);
int drop_all(struct xdp_md *ctx) {
    int zero = 0;
    u64 *n = dropped.lookup(&zero);
    if (n)
        *n += 1;
    return XDP_DROP;
}
"""


def problem() -> str | None:
    """Why XDP rows cannot run here, in one line; None if they can."""
    from colo_xdp.transport.xdp import classifier as xdp
    why = xdp.unavailable()
    if why:
        return why
    if shutil.which("ip") is None or shutil.which("taskset") is None:
        return "XDP rows need 'ip' (iproute2) and 'taskset' (util-linux)"
    return None


# --- namespaces ---------------------------------------------------------------------------

class BenchNetwork:
    """Namespaces host / guest-p / guest-s, veth p-h/p-g and s-h/s-g (1 queue),
    and their twins pc-h/pc-g and sc-h/sc-g (the AF_XDP ceiling's)."""

    LINKS = {"p": "gp", "s": "gs", f"p{TWIN}": "gp", f"s{TWIN}": "gs"}

    def __init__(self, cpu: str | None = HOST_CPU):
        self.cpu = cpu
        tag = os.getpid() % 100000
        self.ns = {name: f"cxb{name}-{tag}" for name in ("host", "gp", "gs")}
        self.dir = Path(tempfile.mkdtemp(prefix="cx-bench-xdp-"))
        self.made: list[str] = []

    def __enter__(self) -> "BenchNetwork":
        try:
            for ns in self.ns.values():
                self.made.append(ns)
                add_netns(ns)
            for short, where in self.LINKS.items():
                add_veth(self.ns["host"], f"{short}-h", self.ns[where], f"{short}-g")
                for ns, dev in ((self.ns["host"], f"{short}-h"), (self.ns[where], f"{short}-g")):
                    _sh("ip", "-n", ns, "link", "set", dev, "mtu", str(LAB_MTU))
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        for ns in self.made:
            _sh("ip", "netns", "del", ns, check=False)
        self.made = []
        shutil.rmtree(self.dir, ignore_errors=True)

    def host_argv(self, argv: list[str]) -> list[str]:
        """``argv`` in the host namespace, pinned to the comparator's cpu."""
        return [*self.host_prefix(), *argv]

    def host_prefix(self) -> list[str]:
        pin = ["taskset", "-c", self.cpu] if self.cpu is not None else []
        return ["ip", "netns", "exec", self.ns["host"], *pin]


# --- frames -------------------------------------------------------------------------------

class Frames:
    """Frame n of a row's stream (unframed), handed out as lists of bytes."""

    def __init__(self, row, build_stream: Callable):
        self.row = row
        self.stream = build_stream(row)
        self.record = self.stream.record
        self.check_stream = build_stream(row)   # for check_output: its own lap buffers
        if row.proto == "udp":
            block = self.stream._block
            rec = self.record
            self._block = [bytes(block[i + 4:i + rec]) for i in range(0, len(block), rec)]
            self._laps = None
        else:
            self._block = None
            self._lap_len = self.stream.lap_bytes // self.record
            self._laps: dict[int, list[bytes]] = {}

    def _lap(self, lap: int) -> list[bytes]:
        frames = self._laps.get(lap)
        if frames is None:
            view = self.stream.view(lap * self.stream.lap_bytes, self.stream.lap_bytes)
            rec = self.record
            frames = [bytes(view[i + 4:i + rec]) for i in range(0, len(view), rec)]
            self._laps[lap] = frames
            for old in [k for k in self._laps if k < lap - TCP_LAPS_KEPT]:
                del self._laps[old]
        return frames

    def take(self, start: int, n: int) -> list[bytes]:
        """Up to ``n`` (at least 1) frames from frame ``start`` on."""
        if self._block is not None:
            i = start % len(self._block)
            return self._block[i:i + n]
        lap, i = divmod(start, self._lap_len)
        return self._lap(lap)[i:i + n]


class Sender:
    """An XskSocket in a guest namespace, sending a stream a burst at a time."""

    def __init__(self, ns: str, ifname: str):
        from colo_xdp.transport.xdp.xsk import XskSocket
        with in_netns(ns):
            self.sock = XskSocket(ifname, 0)
            self.sock.open()
        self.sent = 0

    def close(self) -> None:
        self.sock.close()

    def send(self, frames: Frames, n: int) -> int:
        """Send up to ``n`` frames from where this side is; how many went."""
        batch = frames.take(self.sent, min(n, BURST))
        got = self.sock.tx_burst(batch)
        if got < len(batch):
            self.sock.tx_reap()
        self.sent += got
        return got


@contextlib.contextmanager
def senders(lab: BenchNetwork, twin: bool = False) -> Iterator[dict[str, Sender]]:
    """Senders on p-g and s-g (keys pin, sin), or on their twins pc-g, sc-g."""
    made: dict[str, Sender] = {}
    tag = TWIN if twin else ""
    try:
        made["pin"] = Sender(lab.ns["gp"], f"p{tag}-g")
        made["sin"] = Sender(lab.ns["gs"], f"s{tag}-g")
        yield made
    finally:
        for s in made.values():
            s.close()


# --- XDP mode -------------------------------------------------------------------------------

@dataclass
class XdpRowResult:
    row: object
    runs: list = field(default_factory=list)       # bench.Measurement per XDP mode window
    errors: list[str] = field(default_factory=list)
    drop_ceiling: float | None = None              # frames/s
    xsk_runs: list[float] = field(default_factory=list)   # AF_XDP ceiling, frames/s per window
    xsk_drops: list[float] = field(default_factory=list)  # frames/s its rx rings dropped
    xsk_foreign: list[float] = field(default_factory=list)  # cpu others took from the sink
    driver_rate: float | None = None               # frames/s the driver sent in the drop run
    output: str = "-"

    def median(self, what: str) -> float | None:
        return statistics.median(getattr(m, what) for m in self.runs) if self.runs else None

    @property
    def xsk_ceiling(self) -> float | None:
        """Median of the AF_XDP ceiling's windows, frames/s."""
        return statistics.median(self.xsk_runs) if self.xsk_runs else None

    def ratio(self) -> float | None:
        """XDP mode frames/s over the AF_XDP ceiling: the ratio of the medians."""
        pairs, ceiling = self.median("released"), self.xsk_ceiling
        return None if pairs is None or not ceiling else 2 * pairs / ceiling

    def window_ratios(self) -> list[float]:
        """Each XDP mode window over the ceiling window measured just before it."""
        return [2 * m.released / c for m, c in zip(self.runs, self.xsk_runs) if c]


def _ready(proc: SupervisedProcess, directory: Path) -> bool:
    return (proc.count(READY_LINE) > 0
            and (directory / "out.sock").exists() and (directory / "notify.sock").exists())


@contextlib.contextmanager
def comparator(lab: BenchNetwork, exe: Path, tag: str) -> Iterator[SupervisedProcess]:
    """colo-xdp compare on p-h/s-h in the host namespace, on cpu 1; always stopped."""
    directory = lab.dir / tag
    directory.mkdir()
    proc = SupervisedProcess(["compare", "--primary-xdp", "p-h", "--secondary-xdp", "s-h",
                              "--outdev", f"unix:{directory / 'out.sock'},server=on",
                              "--notify-dev", f"unix:{directory / 'notify.sock'},server=on"],
                             command=[str(exe)], prefix=lab.host_prefix(),
                             name="colo-xdp compare", stdout=subprocess.STDOUT)
    proc.directory = directory
    proc.cpu = lab.cpu
    try:
        proc.start()
        try:
            proc.wait_for(lambda: _ready(proc, directory), READY_TIMEOUT)
        except ProcessError:
            raise RuntimeError("colo-xdp compare did not come up: " + _tail(proc)) from None
        yield proc
    finally:
        proc.stop(STOP_GRACE_S)


def _tail(proc: SupervisedProcess) -> str:
    return proc.tail(3, empty="(empty log)")


class ComparatorDriver:
    """Drives one comparator a window at a time; between windows it sends
    nothing (the comparator drains and waits), so the AF_XDP ceiling can be
    measured on the twin veths in between."""

    def __init__(self, proc: SupervisedProcess, tx: dict[str, Sender], row, frames: Frames,
                 bench):
        self.proc, self.row, self.frames, self.bench = proc, row, frames, bench
        self.leader, self.follower = ((tx["pin"], tx["sin"]) if row.leader == "pin"
                                      else (tx["sin"], tx["pin"]))
        self.socks: dict[str, socket.socket] = {}
        self.out_buf, self.notify_buf = bytearray(1 << 20), bytearray(1 << 16)
        self.head, self.head_bytes = bytearray(), bench.HEAD_FRAMES * frames.record
        self.got_out = self.got_notify = self.last_read = 0
        self.cpu = None if proc.cpu is None else int(proc.cpu)

    def __enter__(self) -> "ComparatorDriver":
        try:
            for name in ("out", "notify"):
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self.socks[name] = s
                s.connect(str(self.proc.directory / f"{name}.sock"))
                s.setblocking(False)
        except BaseException:
            self.close()
            raise
        time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        for s in self.socks.values():
            s.close()
        self.socks = {}

    def _mark(self, now: float) -> tuple:
        return (now, self.got_out, self.got_notify, self.follower.sent,
                self.bench.session_cpu_seconds(self.proc.pid),
                self.bench.cpu_busy_seconds(self.cpu))

    def window(self, warm: float, seconds: float):
        """Send for ``warm`` s, then measure ``seconds`` s; a bench.Measurement
        (its output is filled in by ``output``)."""
        bench, record, lead = self.bench, self.frames.record, self.row.lead
        leader, follower, frames = self.leader, self.follower, self.frames
        out_recv = self.socks["out"].recv_into
        notify_recv = self.socks["notify"].recv_into
        out_buf, notify_buf = self.out_buf, self.notify_buf
        start = time.monotonic()
        marks_at = (start + warm, start + warm + seconds)
        marks: list[tuple] = []
        next_alive = start
        while True:
            released = self.got_out // record
            # leader: at most one burst beyond follower + lead, and the window
            room = (min(follower.sent + lead + BURST, released + lead + WINDOW_FRAMES)
                    - leader.sent)
            if room > 0:
                leader.send(frames, room)
            room = min(leader.sent - lead, released + WINDOW_FRAMES) - follower.sent
            if room > 0:
                follower.send(frames, room)
            try:
                while True:
                    n = out_recv(out_buf)
                    if not n:
                        raise RuntimeError("colo-xdp closed its outdev: " + _tail(self.proc))
                    if len(self.head) < self.head_bytes:
                        self.head += out_buf[:min(n, self.head_bytes - len(self.head))]
                    self.got_out += n
                    self.last_read = n
                    if n < len(out_buf):
                        break
            except BlockingIOError:
                pass
            try:
                n = notify_recv(notify_buf)
                if not n:
                    raise RuntimeError("colo-xdp closed its notify_dev: " + _tail(self.proc))
                self.got_notify += n
            except BlockingIOError:
                pass
            now = time.monotonic()
            if now >= next_alive:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"colo-xdp exited ({self.proc.returncode}): "
                                       + _tail(self.proc))
                next_alive = now + 0.1
            if now >= marks_at[len(marks)]:
                marks.append(self._mark(now))
                if len(marks) == len(marks_at):
                    break
        a, b = marks
        el = b[0] - a[0]
        ccpu = b[4] - a[4]
        return bench.Measurement(
            released=(b[1] - a[1]) / record / el, sent=(b[3] - a[3]) / el,
            comparator_cpu=ccpu / el,
            foreign_cpu=max(0.0, (b[5] - a[5]) - ccpu) / el,
            checkpoints=(b[2] - a[2]) / bench.NOTIFY_RECORD / el, output="-")

    def output(self) -> str:
        """The first frames released and the last, checked against the stream."""
        record, last_read = self.frames.record, self.last_read
        last = (bytes(self.out_buf[last_read - record + 4:last_read])
                if self.got_out % record == 0 and last_read >= record else None)
        return self.bench.check_output(bytes(self.head), last, self.frames.check_stream)


# --- ceilings --------------------------------------------------------------------------------

def _blast(tx: dict[str, Sender], frames: Frames, warm: float, seconds: float,
           count: Callable[[], int]) -> tuple[float, float]:
    """Both sides unpaced, alternating bursts; (counted frames/s, sent frames/s)."""
    p, s = tx["pin"], tx["sin"]
    end_warm = time.monotonic() + warm
    while time.monotonic() < end_warm:
        p.send(frames, BURST)
        s.send(frames, BURST)
    t0, c0, s0 = time.monotonic(), count(), p.sent + s.sent
    end = t0 + seconds
    while True:
        for _ in range(16):
            p.send(frames, BURST)
            s.send(frames, BURST)
        if time.monotonic() >= end:
            break
    t1, c1, s1 = time.monotonic(), count(), p.sent + s.sent
    return (c1 - c0) / (t1 - t0), (s1 - s0) / (t1 - t0)


def drop_ceiling(lab: BenchNetwork, frames: Frames, seconds: float) -> tuple[float, float]:
    """Frames/s an XDP_DROP program on p-h and s-h counts, and what was sent."""
    from bcc import BPF
    b = BPF(text=DROP_PROG)
    attached = []
    try:
        fn = b.load_func("drop_all", BPF.XDP)
        with in_netns(lab.ns["host"]):
            for dev in ("p-h", "s-h"):
                b.attach_xdp(dev, fn, 1 << 2)     # XDP_FLAGS_DRV_MODE
                attached.append(dev)
        table = b["dropped"]

        def count() -> int:
            return sum(table[0])     # per-CPU values
        with senders(lab) as tx:
            return _blast(tx, frames, CEILING_WARMUP, seconds, count)
    finally:
        with in_netns(lab.ns["host"]):
            for dev in attached:
                with contextlib.suppress(Exception):
                    b.remove_xdp(dev, 1 << 2)
        b.cleanup()


class XskSink:
    """The AF_XDP sink process, as ``xsk_sink`` yields it."""

    def __init__(self, proc: SupervisedProcess):
        self.proc = proc
        self.pid = proc.pid
        self.cpu = None if proc.cpu is None else int(proc.cpu)

    def query(self) -> tuple[int, int]:
        """(frames received, frames its rx rings dropped) so far."""
        proc = self.proc
        try:
            proc.stdin.write(b"?\n")
            proc.stdin.flush()
            got, dropped = proc.stdout.readline().split()
            return int(got), int(dropped)
        except (OSError, ValueError):
            proc.wait(2)
            raise RuntimeError(f"AF_XDP sink exited ({proc.returncode}): "
                               + proc.log[-300:].replace("\n", " | ")) from None


@contextlib.contextmanager
def xsk_sink(lab: BenchNetwork) -> Iterator[XskSink]:
    """The AF_XDP sink (classify.c + XskSocket, rx_burst/rx_done, no engine) on
    the twin veths pc-h and sc-h, on the comparator's cpu. Always stopped."""
    twin = [f"{side}{TWIN}-h" for side in ("p", "s")]
    proc = SupervisedProcess(["-m", "tools.bench_xdp", "--xsk-sink", *twin],
                             command=[sys.executable], prefix=lab.host_prefix(),
                             name="AF_XDP sink", stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             cwd=str(Path(__file__).resolve().parent.parent))
    try:
        proc.start()
        line = proc.stdout.readline().decode()
        if line.strip() != "ready":
            proc.wait(2)
            raise RuntimeError("AF_XDP sink did not come up: "
                               + (line.strip() + " | " + proc.tail(5)).strip(" |"))
        proc.cpu = lab.cpu
        yield XskSink(proc)
    finally:
        with contextlib.suppress(Exception):
            proc.stdin.close()
        proc.stop(STOP_GRACE_S)


def xsk_window(sink: XskSink, tx: dict[str, Sender], frames: Frames, warm: float,
               seconds: float, bench) -> tuple[float, float, float]:
    """One ceiling window on the twin veths: frames/s the AF_XDP sink received,
    frames/s its rx rings dropped, and the share of its cpu other processes took."""
    marks = []

    def count() -> int:
        got, dropped = sink.query()
        marks.append((time.monotonic(), dropped, bench.session_cpu_seconds(sink.pid),
                      bench.cpu_busy_seconds(sink.cpu)))
        return got
    rate, _sent = _blast(tx, frames, warm, seconds, count)
    (t0, d0, own0, busy0), (t1, d1, own1, busy1) = marks[-2:]
    el = t1 - t0
    return rate, (d1 - d0) / el, max(0.0, (busy1 - busy0) - (own1 - own0)) / el


def run_xsk_sink(ifaces: list[str]) -> int:
    """The ``--xsk-sink`` process: classify.c on each interface (first primary,
    others secondary), rx_burst + rx_done on their sockets; answers '?' on stdin
    with 'received dropped'."""
    from colo_xdp.engine import Side
    from colo_xdp.transport.xdp.port import XdpPort
    ports = []
    try:
        for i, ifname in enumerate(ifaces):
            port = XdpPort(ifname, Side.PRIMARY if i == 0 else Side.SECONDARY)
            port.open()
            ports.append(port)
        socks = [s for p in ports for s in p.sockets]
        by_fd = {s.fileno(): s for s in socks}
        poller = select.poll()
        for fd in by_fd:
            poller.register(fd, select.POLLIN)
        stdin = sys.stdin.fileno()
        poller.register(stdin, select.POLLIN)
        print("ready", flush=True)
        total = 0
        while True:
            for fd, _ in poller.poll(1000):
                if fd == stdin:
                    if not os.read(stdin, 64):
                        return 0
                    dropped = sum(s.stats()["rx_dropped"] for s in socks)
                    print(total, dropped, flush=True)
                    continue
                s = by_fd[fd]
                n = s.rx_burst()
                while n:
                    s.rx_done(n)
                    total += n
                    n = s.rx_burst()
    finally:
        for p in ports:
            p.close()


# --- the section of make bench -------------------------------------------------------------

def run(rows, exe: Path, windows: int, warmup: float, seconds: float, bench,
        report: Callable[[str], None], cpu: str | None = HOST_CPU) -> list[XdpRowResult]:
    """Every row: the XDP_DROP ceiling, then ``windows`` AF_XDP ceiling windows
    and as many XDP mode windows, alternating (of at most MAX_SECONDS each)."""
    seconds = min(seconds, MAX_SECONDS)
    results = []
    # SIGTERM unwinds like Ctrl-C, so the lab (namespaces, programs, processes) goes too.
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        _run(rows, exe, windows, warmup, seconds, bench, report, cpu, results)
    finally:
        signal.signal(signal.SIGTERM, previous)
    return results


def _raise_interrupt(*_args) -> None:
    raise KeyboardInterrupt


def _run(rows, exe, windows, warmup, seconds, bench, report, cpu, results) -> None:
    with BenchNetwork(cpu) as lab:
        for row in rows:
            frames = Frames(row, bench.build_stream)
            r = XdpRowResult(row)
            results.append(r)
            try:
                r.drop_ceiling, r.driver_rate = drop_ceiling(lab, frames, CEILING_SECONDS)
                report(f"  row {row.number} xdp-drop {r.drop_ceiling:>12,.0f} frames/s "
                       f"dropped in XDP (driver sent {r.driver_rate:,.0f})")
            except Exception as err:      # noqa: BLE001  a ceiling failing is a note
                r.errors.append(f"drop ceiling: {err}")
                report(f"  row {row.number} xdp-drop failed: {err}")
            try:
                _interleaved(lab, exe, row, frames, r, windows, warmup, seconds, bench, report)
            except Exception as err:      # noqa: BLE001
                r.errors.append(f"XDP mode: {err}")
                report(f"  row {row.number} xdp-mode failed: {err}")


def _interleaved(lab, exe, row, frames, r: XdpRowResult, windows, warmup, seconds, bench,
                 report) -> None:
    """The AF_XDP sink on the twin veths and the comparator on p-h/s-h, both up
    for the row; ``windows`` times: a ceiling window, then an XDP mode window.
    The one not measured gets no frames and sleeps."""
    with contextlib.ExitStack() as stack:
        sink = None
        try:
            sink = stack.enter_context(xsk_sink(lab))
            ctx = stack.enter_context(senders(lab, twin=True))
        except Exception as err:      # noqa: BLE001  XDP mode still runs, without a ceiling
            r.errors.append(f"AF_XDP ceiling: {err}")
            report(f"  row {row.number} af_xdp   failed: {err}")
            sink = None
        proc = stack.enter_context(comparator(lab, exe, f"row{row.number}"))
        tx = stack.enter_context(senders(lab))
        drv = stack.enter_context(ComparatorDriver(proc, tx, row, frames, bench))
        for i in range(windows):
            if sink is not None:
                rate, drops, foreign = xsk_window(
                    sink, ctx, frames, CEILING_WARMUP if i == 0 else REWARM_S, seconds, bench)
                r.xsk_runs.append(rate)
                r.xsk_drops.append(drops)
                r.xsk_foreign.append(foreign)
                report(f"  row {row.number} af_xdp   {rate:>12,.0f} frames/s "
                       f"received (rx ring dropped {drops:,.0f}/s)  others {foreign:3.0%}")
            m = drv.window(warmup if i == 0 else REWARM_S, seconds)
            r.runs.append(m)
            report(f"  row {row.number} xdp-mode {m.released:>12,.0f} pairs/s  "
                   f"(sent {m.sent:,.0f})  cpu {m.comparator_cpu:4.0%} "
                   f"(others {m.foreign_cpu:3.0%})  DO_CHECKPOINT/s {m.checkpoints:<8,.0f}"
                   + (f"  {2 * m.released / rate:.0%} of the window before"
                      if sink is not None and rate else ""))
        r.output = drv.output()
        report(f"  row {row.number} output: {r.output}")


def _spread(values: list[float]) -> str:
    """Half the range of ``values`` as a share of their median: "±7%"."""
    if len(values) < 2:
        return "-"
    return f"±{(max(values) - min(values)) / 2 / statistics.median(values):.0%}"


def table(results: list[XdpRowResult], qemu_pairs: Callable[[int], float | None]) -> str:
    head = ("row", "XDP pairs/s", "XDP frames/s", "±", "AF_XDP rx max", "±", "% of AF_XDP",
            "per window", "XDP_DROP max", "x QEMU", "XDP cpu")
    lines = [head]
    for r in results:
        pairs = r.median("released")
        frames = None if pairs is None else 2 * pairs
        ratio, each = r.ratio(), r.window_ratios()
        q = qemu_pairs(r.row.number)
        lines.append((
            f"{r.row.number} {r.row.label}",
            "failed" if pairs is None else f"{pairs:,.0f}",
            "-" if frames is None else f"{frames:,.0f}",
            _spread([m.released for m in r.runs]),
            "-" if r.xsk_ceiling is None else f"{r.xsk_ceiling:,.0f}",
            _spread(r.xsk_runs),
            "-" if ratio is None else f"{ratio:.0%}",
            "-" if not each else (f"{statistics.median(each):.0%} "
                                  f"({min(each):.0%}-{max(each):.0%})"),
            "-" if r.drop_ceiling is None else f"{r.drop_ceiling:,.0f}",
            "n/a" if pairs is None or not q else f"{pairs / q:.2f}",
            "-" if pairs is None else f"{r.median('comparator_cpu'):.0%}"))
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    text = []
    for n, line in enumerate(lines):
        text.append("  ".join([line[0].ljust(widths[0])]
                              + [c.rjust(w) for c, w in zip(line[1:], widths[1:])]))
        if n == 0:
            text.append("  ".join("-" * w for w in widths))
    return "\n".join(text)


def notes(results: list[XdpRowResult], foreign_note: float = 0.05) -> list[str]:
    """Notes under the table; a row whose comparator lost ``foreign_note``
    or more of its cpu to other processes says so (a shared host: its
    figure is understated; the ceiling windows between its windows shared
    the same host, but not necessarily the same moments of contention)."""
    out = []
    for r in results:
        where = f"row {r.row.number} xdp"
        out += [f"{where}: {e}" for e in r.errors]
        if r.output not in ("ok", "-"):
            out.append(f"{where}: output: {r.output}")
        cp = r.median("checkpoints") or 0
        if cp >= 1:
            out.append(f"{where}: {cp:,.0f} DO_CHECKPOINT/s")
        foreign = r.median("foreign_cpu") or 0
        sink_foreign = statistics.median(r.xsk_foreign) if r.xsk_foreign else 0
        if max(foreign, sink_foreign) >= foreign_note:
            out.append(f"{where}: other processes took {foreign:.0%} of the comparator's cpu "
                       f"(it had {r.median('comparator_cpu') or 0:.0%}) and {sink_foreign:.0%} "
                       "of the AF_XDP sink's (medians): a shared host, both figures are "
                       "understated and their ratio is only as good as the sharing was even")
        drops = statistics.median(r.xsk_drops) if r.xsk_drops else 0
        if drops:
            out.append(f"{where}: the AF_XDP sink's rx rings dropped {drops:,.0f} "
                       "frames/s (median): the driver outran it, its ceiling is the receiver's")
    return out


def main(argv: list[str]) -> int:
    if argv[:1] == ["--xsk-sink"]:
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        try:
            return run_xsk_sink(argv[1:])
        except KeyboardInterrupt:
            return 130
    print("usage: python -m tools.bench (XDP rows are part of it)", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
