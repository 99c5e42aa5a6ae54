"""Throughput of colo-xdp against QEMU's colo-compare, in the same run (`make bench`).

Not a test: it prints figures. For every row, each comparator runs alone on
one core (``taskset -c 1``) while this process, the load driver, runs on
core 0. A fresh comparator is started for every run and fed over its four
unix server sockets, exactly as in ``tools.harness``::

    driver (cpu 0)                       comparator (cpu 1)
      primary stream   ── pin.sock ──▶ ┐
      secondary stream ── sin.sock ──▶ ├─ compare ─▶ out.sock ──▶ driver counts bytes
                                       └───────────▶ notify.sock ─▶ driver discards

Method, per run:
- The framed streams (``u32be len | frame``, pktgen) are built in memory
  before the clock starts, and both inputs get the same frames. UDP rows
  repeat a block of frames whose payloads carry a counter, so no two frames
  of a block are alike; the TCP row is generated a lap at a time with
  increasing seq (see ``TcpStream``).
- The outdev and notify_dev are connected first, then the inputs. One
  non-blocking loop writes both inputs in chunks, reads the outdev and
  drains notify_dev (QEMU may request tens of thousands of checkpoints a
  second; none is answered, so nothing is flushed).
- The writes are paced so that the comparator sees a known order, whatever
  order it reads its sockets in. One input leads: the other (the follower)
  writes a frame only once the comparator has read the leader's copy, less
  the row's lead, and the comparator never holds more than a window of the
  leader beyond what it read of the follower (fewer frames than a queue
  holds). What a comparator has read comes from SIOCOUTQ. Rows 1-4 lead
  with the secondary by 0 frames: the primary copy of a frame never reaches
  the comparator first. That is QEMU's fast path (it matches the newest
  primary against the oldest secondary) and costs a correct comparator
  nothing. Row 5 leads with the primary by ``LEAD_FRAMES``.
- After ``--warmup`` seconds the outdev byte count and the CPU time of the
  comparator (utime + stime of its session, /proc) and of its core are
  sampled, and again ``--seconds`` later. Every frame of a row has the same
  framed size, so released pairs = outdev bytes / framed size. Time other
  processes took on the comparator's core is reported, as the machine may
  be shared. The first ``HEAD_FRAMES`` records and the last one are decoded
  and looked up in the stream: they must be frames that were sent, the
  first ones in order.
- Each row also measures the driver's own ceiling: the same loop against a
  sink (``--sink``) that compares nothing: it forwards the primary to the
  outdev as it comes and drops the secondary.

Median of ``--runs`` runs per row and comparator.
"""

from __future__ import annotations

import argparse
import array
import contextlib
import fcntl
import os
import platform
import select
import socket
import statistics
import subprocess
import sys
import termios
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

from colo_xdp.lab import pktgen
from tools.harness import (SOCKETS, CompareOptions, Comparator, HarnessError,
                              colo_xdp_ref, connect_unix, default_colo_xdp_exe, sockets_exist,
                              supervised)
from tools.qemu_ref import qemu_binary, qemu_ref

DRIVER_CPU = 0
COMPARATOR_CPU = 1
DEFAULT_EXE = ".venv/bin/colo-xdp"

QEMU = "qemu"
COLO_XDP = "colo-xdp"
SINK = "sink"

DEFAULT_SECONDS = 2.0
DEFAULT_WARMUP = 0.5
DEFAULT_RUNS = 3
# The ceiling needs no median: it is a sanity bound, one short run per row.
CEILING_SECONDS = 1.0

# Pacing (see _drive_loop). One send() writes at most a chunk: CHUNK_BYTES,
# or CHUNK_MIN_FRAMES records if that is more. The leader is written at most
# SENT_AHEAD_CHUNKS chunks beyond the follower, and the comparator never
# holds more of the leader than the window beyond what it read of the
# follower: WINDOW_BYTES, and fewer frames per flow than the 1024 a queue
# holds by default (QEMU's max_queue_size). Chosen by measuring on a quiet
# 2-core VM: QEMU stays at 100% of its core and the driver's own ceiling
# stays highest.
CHUNK_BYTES = 16 * 1024
CHUNK_MIN_FRAMES = 32
SENT_AHEAD_CHUNKS = 2
WINDOW_BYTES = 1 << 20
WINDOW_FRAMES_PER_FLOW = 768
# Send buffer of the driver's input sockets (SO_SNDBUFFORCE when root): room
# for the whole window, so a send only waits for the comparator.
SNDBUF_BYTES = 4 << 20
SO_SNDBUFFORCE = getattr(socket, "SO_SNDBUFFORCE", 32)
# Row 5: how many frames the primary stream is kept ahead of the secondary.
LEAD_FRAMES = 32
# Share of the comparator's cpu taken by other processes worth a note.
FOREIGN_CPU_NOTE = 0.05
# Output records decoded and checked against the primary stream per run.
HEAD_FRAMES = 16
RECV_BYTES = 1 << 20
# Let the comparator accept all four connections before any frame moves
# (QEMU drops what it releases while no outdev client is accepted yet).
SETTLE_S = 0.05

# Frames of UDP rows: a block of distinct frames repeated (~1 MB to ~12 MB).
UDP_SPORT = 10000
UDP_DPORT = 2000
UDP_BLOCK_FRAMES = 16384
UDP_BLOCK_MAX_BYTES = 12 << 20
COUNTER = 4  # bytes of frame counter at the start of each UDP payload

# The TCP row.
TCP_SPORT = 20000
TCP_DPORT = 80
TCP_ISN = 1
TCP_ACK = 1
TCP_LAP_SEGMENTS = 2048
# Segments per connection before the stream moves to the next source port,
# so seq never wraps (QEMU sorts by plain seq): 2**21 * 1448 < 2**32 - TCP_ISN.
TCP_SEGMENTS_PER_CONN = 1 << 21
CSUM_PERIOD = 0xFFFF  # the checksum of a segment depends on seq mod 0xffff only
ETH_IP_HLEN = pktgen.ETH_HLEN + 20
IP_HLEN = {4: 20, 6: 40}             # the IPv6 rows: a fixed header, no extension

NOTIFY_RECORD = len(pktgen.encode(b"DO_CHECKPOINT"))


# --- rows ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Row:
    """One line of the table: what traffic both sides send."""

    number: int
    label: str
    proto: str          # "udp" or "tcp"
    flows: int
    size: int           # UDP: whole frame; TCP: payload per segment
    leader: str = "sin"  # the input the comparator sees first: "sin" or "pin"
    lead: int = 0        # frames by which the leader is ahead of the follower
    family: int = 4      # IP version of the frames (QEMU compares only 4)


ROWS = (
    Row(1, "UDP, 1 flow, 64 B", "udp", 1, 64),
    Row(2, "UDP, 1 flow, 1400 B", "udp", 1, 1400),
    Row(3, "UDP, 1000 flows, 64 B", "udp", 1000, 64),
    Row(4, "TCP, 1 flow, 1448 B payload", "tcp", 1, 1448),
    Row(5, f"UDP, 1 flow, 64 B, primary +{LEAD_FRAMES}", "udp", 1, 64, "pin", LEAD_FRAMES),
    # IPv6 beside rows 1 and 4.  QEMU 7.2 releases IPv6 uncompared: its
    # figure is that of a pass-through, not of a compare.
    Row(6, "IPv6 UDP, 1 flow, 64 B", "udp", 1, 64, family=6),
    Row(7, "IPv6 TCP, 1 flow, 1448 B payload", "tcp", 1, 1448, family=6),
)


# --- streams ----------------------------------------------------------------------------

class Stream(Protocol):
    """An endless framed byte stream; every record has ``record`` bytes."""

    record: int

    def view(self, offset: int, limit: int) -> memoryview:
        """At most ``limit`` (> 0) bytes of the stream from byte ``offset``, at least one."""

    def locate(self, frame: bytes) -> int | None:
        """The position of ``frame`` (unframed) in the stream, None if it is not in it.

        Positions may repeat with a period: see ``period``.
        """

    @property
    def period(self) -> int | None:
        """Frames after which positions repeat, None if they never do."""


class RingStream:
    """A block of framed records sent over and over."""

    def __init__(self, records: list[bytes]):
        self.record = len(records[0])
        if any(len(r) != self.record for r in records):
            raise ValueError("every record of a benchmark stream has the same size")
        self._block = memoryview(b"".join(records))
        self._positions: dict[bytes, int] | None = None

    def view(self, offset: int, limit: int) -> memoryview:
        start = offset % len(self._block)
        return self._block[start:start + limit]

    def locate(self, frame: bytes) -> int | None:
        if self._positions is None:
            self._positions = {bytes(self._block[i + 4:i + self.record]): i // self.record
                               for i in range(0, len(self._block), self.record)}
        return self._positions.get(frame)

    @property
    def period(self) -> int:
        return len(self._block) // self.record


def udp_stream(row: Row) -> RingStream:
    """Round robin over ``row.flows`` source ports, a counter in every payload
    (IPv6 at 64 B leaves 2 payload bytes: the counter's low 16 bits there,
    the rest in the flow label, which the compare ignores)."""
    payload_len = row.size - pktgen.ETH_HLEN - IP_HLEN[row.family] - 8
    per_flow = max(1, min(UDP_BLOCK_FRAMES, UDP_BLOCK_MAX_BYTES // (row.size + 4))
                   // row.flows)
    width = min(COUNTER, payload_len)
    filler = b"\xa5" * (payload_len - width)

    def frame(n: int, flow: int) -> bytes:
        payload = (n & ((1 << 8 * width) - 1)).to_bytes(width, "big") + filler
        if row.family == 6:
            return pktgen.udp6_frame(payload, sport=UDP_SPORT + flow, dport=UDP_DPORT,
                                     ip=pktgen.IPv6Fields(flow_label=n >> 8 * width))
        return pktgen.udp_frame(payload, sport=UDP_SPORT + flow, dport=UDP_DPORT)
    records = [pktgen.encode(frame(n, flow)) for n in range(per_flow) for flow in range(row.flows)]
    return RingStream(records)


def _fold(total: int) -> int:
    """One's-complement sum folded to 16 bits."""
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


class TcpStream:
    """Back-to-back segments of one TCP flow, seq increasing, ack constant.

    Too long to build in advance, so two lap buffers of ``TCP_LAP_SEGMENTS``
    records take turns: a lap is rewritten only in its seq and checksum
    fields, a byte lane at a time through extended slices (C speed). Each
    lap is built when the leading side enters it; the other side is less
    than a lap behind, so it is still reading the other buffer.

    The checksum of a segment depends on its seq only through seq mod 0xffff
    (2**16 == 1 in one's-complement arithmetic), so the checksums of one
    connection repeat every 0xffff segments: they are computed once, from
    the checksum pktgen gave the template, and lapped out by slicing.
    """

    def __init__(self, payload_len: int, family: int = 4):
        self.family = family
        self.l4_at = pktgen.ETH_HLEN + IP_HLEN[family]
        self.seq_at = 4 + self.l4_at + 4        # in a framed record: len, eth, ip, ports
        self.csum_at = 4 + self.l4_at + 16
        self.mss = payload_len
        self._payload = bytes(range(256)) * (payload_len // 256) + bytes(payload_len % 256)
        self.record = len(self._template(0))
        self.lap_bytes = TCP_LAP_SEGMENTS * self.record
        self._laps: list[bytearray | None] = [None, None]
        self._lap_no = [-1, -1]
        self._csums: tuple[int, bytes] | None = None   # (connection, 2 periods)

    def _template(self, conn: int, seq: int = TCP_ISN) -> bytes:
        build = pktgen.tcp6_frame if self.family == 6 else pktgen.tcp_frame
        return pktgen.encode(build(
            self._payload, sport=TCP_SPORT + conn, dport=TCP_DPORT, seq=seq,
            ack=TCP_ACK, flags=pktgen.TCP_ACK | pktgen.TCP_PSH))

    def _checksums(self, conn: int) -> bytes:
        """Big-endian checksums of segments 0 .. 2 * 0xffff of connection ``conn``."""
        if self._csums is None or self._csums[0] != conn:
            template = self._template(conn, seq=0)
            rest = ~int.from_bytes(template[self.csum_at:self.csum_at + 2], "big") & 0xFFFF
            out = bytearray()
            for i in range(CSUM_PERIOD):
                seq = TCP_ISN + i * self.mss
                out += (~_fold(rest + (seq >> 16) + (seq & 0xFFFF)) & 0xFFFF).to_bytes(2, "big")
            self._csums = (conn, bytes(out + out))
        return self._csums[1]

    def _build_lap(self, lap: int) -> bytearray:
        slot = lap & 1
        conn, first = divmod(lap * TCP_LAP_SEGMENTS, TCP_SEGMENTS_PER_CONN)
        buf = self._laps[slot]
        old = self._lap_no[slot]
        if buf is None or old < 0 or (old * TCP_LAP_SEGMENTS) // TCP_SEGMENTS_PER_CONN != conn:
            buf = self._laps[slot] = bytearray(self._template(conn) * TCP_LAP_SEGMENTS)
        seqs = array.array("I", range(TCP_ISN + first * self.mss,
                                      TCP_ISN + (first + TCP_LAP_SEGMENTS) * self.mss,
                                      self.mss))
        if sys.byteorder == "little":
            seqs.byteswap()
        seq_bytes = seqs.tobytes()
        start = 2 * (first % CSUM_PERIOD)
        csums = self._checksums(conn)[start:start + 2 * TCP_LAP_SEGMENTS]
        end = len(buf)
        for lane in range(4):
            buf[self.seq_at + lane:end:self.record] = seq_bytes[lane::4]
        for lane in range(2):
            buf[self.csum_at + lane:end:self.record] = csums[lane::2]
        self._lap_no[slot] = lap
        return buf

    def view(self, offset: int, limit: int) -> memoryview:
        lap, start = divmod(offset, self.lap_bytes)
        slot = lap & 1
        buf = self._laps[slot] if self._lap_no[slot] == lap else self._build_lap(lap)
        return memoryview(buf)[start:start + limit]

    def locate(self, frame: bytes) -> int | None:
        tcp = frame[self.l4_at:]
        if len(frame) != self.record - 4 or len(tcp) < 8:
            return None
        conn = int.from_bytes(tcp[0:2], "big") - TCP_SPORT
        segment, rest = divmod(int.from_bytes(tcp[4:8], "big") - TCP_ISN, self.mss)
        if conn < 0 or rest or not 0 <= segment < TCP_SEGMENTS_PER_CONN:
            return None
        index = conn * TCP_SEGMENTS_PER_CONN + segment
        return index if bytes(self.view(index * self.record, self.record))[4:] == frame else None

    @property
    def period(self) -> None:
        return None

    def self_check(self) -> None:
        """Raise if a patched segment differs from pktgen's (first lap, next connection)."""
        for index in (0, 1, TCP_LAP_SEGMENTS + 7, CSUM_PERIOD + 3, TCP_SEGMENTS_PER_CONN + 5):
            conn, j = divmod(index, TCP_SEGMENTS_PER_CONN)
            want = self._template(conn, seq=TCP_ISN + j * self.mss)
            got = bytes(self.view(index * self.record, self.record))
            if got != want:
                raise RuntimeError(f"TcpStream segment {index} is not what pktgen builds")


def build_stream(row: Row) -> Stream:
    """The stream both sides of ``row`` send (the same frames on both)."""
    if row.proto == "tcp":
        stream = TcpStream(row.size, row.family)
        stream.self_check()
        return stream
    return udp_stream(row)


# --- comparators --------------------------------------------------------------------------

Launcher = Callable[[], contextlib.AbstractContextManager[Comparator]]


# The directory this colo_xdp package was imported from, for the sink process
# (which starts in its socket directory, so ``-m`` alone may not find us).
_IMPORT_ROOT = str(Path(__file__).resolve().parent.parent)


def _sink_argv(directory: Path) -> list[str]:
    code = (f"import sys; sys.path.insert(0, {_IMPORT_ROOT!r}); "
            "from tools.bench import main; sys.exit(main(sys.argv[1:]))")
    return [sys.executable, "-c", code, "--sink", str(directory)]


def sink_ref(cpus: str | None) -> contextlib.AbstractContextManager[Comparator]:
    """An ideal comparator for the driver's ceiling: see ``run_sink``."""
    return supervised(SINK, _sink_argv, CompareOptions(), sockets_exist, cpus)


def run_sink(directory: Path) -> None:
    """The ``--sink`` process: listen like a comparator, compare nothing.

    Bytes from the primary go to the outdev as they are (whole records, so
    the driver counts and checks them as usual), the secondary is dropped.
    """
    listeners = {}
    for name in SOCKETS:
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(directory / f"{name}.sock"))
        listener.listen(1)
        listeners[name] = listener
    conns = {name: listener.accept()[0] for name, listener in listeners.items()}
    out = conns["out"]
    buf = bytearray(RECV_BYTES)
    view = memoryview(buf)
    inputs = {conns[name].fileno(): conns[name] for name in ("pin", "sin")}
    poller = select.poll()
    for fd in inputs:
        poller.register(fd, select.POLLIN)
    pin = conns["pin"].fileno()
    while True:
        for fd, _ in poller.poll():
            n = inputs[fd].recv_into(buf)
            if not n:
                return
            if fd == pin:
                out.sendall(view[:n])


# --- the load driver -----------------------------------------------------------------------

@dataclass(frozen=True)
class Measurement:
    """One run: rates over the measured window."""

    released: float        # pairs per second out of the outdev
    sent: float            # pairs per second written (both copies of a frame)
    comparator_cpu: float  # cores busy, 1.0 = one core
    foreign_cpu: float     # what other processes took of the comparator's cpu
    checkpoints: float     # DO_CHECKPOINT requests per second
    output: str            # "ok", or what is wrong with the frames released


_CLK_TCK = os.sysconf("SC_CLK_TCK")


def session_cpu_seconds(sid: int) -> float:
    """User + system CPU seconds of every live process in session ``sid``.

    The comparator is a session leader (``supervised`` starts it so), and a
    session also covers any worker processes it forks.
    """
    ticks = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(b")") + 2:].split()
        # Fields from "state" on (field 3 of proc(5)): session is 6, utime 14, stime 15.
        if int(fields[3]) == sid:
            ticks += int(fields[11]) + int(fields[12])
    return ticks / _CLK_TCK


def cpu_busy_seconds(cpu: int | None) -> float:
    """Seconds CPU ``cpu`` spent on anything but idle and iowait since boot (None: 0)."""
    if cpu is None:
        return 0.0
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith(f"cpu{cpu} "):
                ticks = [int(x) for x in line.split()[1:]]
                return (sum(ticks[:8]) - ticks[3] - ticks[4]) / _CLK_TCK
    return 0.0


class ComparatorGone(HarnessError):
    """The comparator closed a socket or exited in the middle of a run."""


def drive(comparator: Comparator, row: Row, stream: Stream, warmup: float,
          seconds: float) -> Measurement:
    """Feed ``stream`` to both inputs for ``warmup + seconds``; measure the last part."""
    socks = {}
    try:
        for name in ("out", "notify", "pin", "sin"):
            socks[name] = connect_unix(comparator.socket_path(name))
        time.sleep(SETTLE_S)
        for name in ("pin", "sin"):
            try:
                socks[name].setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, SNDBUF_BYTES)
            except PermissionError:   # not root: what wmem_max allows
                socks[name].setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SNDBUF_BYTES)
        for sock in socks.values():
            sock.setblocking(False)
        return _drive_loop(comparator, socks, row, stream, warmup, seconds)
    finally:
        for sock in socks.values():
            sock.close()


def _drive_loop(comparator: Comparator, socks: dict[str, socket.socket], row: Row,
                stream: Stream, warmup: float, seconds: float) -> Measurement:
    """The hot loop of ``drive``: one thread, non-blocking sockets, no per-frame work.

    It never sleeps: the driver has a core to itself, and a reader asleep in
    poll() makes every write of the comparator pay for waking it (that cost
    QEMU up to a third of its rate on a 2-core VM).

    ``sent_l`` / ``sent_f`` count the bytes written to the leader / follower;
    both read the same stream, so byte n is the same frame on both sides.
    """
    record = stream.record
    view = stream.view
    window_frames = min(WINDOW_FRAMES_PER_FLOW * row.flows, WINDOW_BYTES // record)
    chunk = max(CHUNK_BYTES // record, CHUNK_MIN_FRAMES) * record
    lead = row.lead * record
    window = lead + window_frames * record
    ahead = lead + SENT_AHEAD_CHUNKS * chunk
    leader = socks[row.leader]
    follower = socks["sin" if row.leader == "pin" else "pin"]
    leader_send, follower_send = leader.send, follower.send
    leader_fd, follower_fd = leader.fileno(), follower.fileno()
    outq = bytearray(4)
    out_recv, notify_recv = socks["out"].recv_into, socks["notify"].recv_into
    out_buf, notify_buf = bytearray(RECV_BYTES), bytearray(1 << 16)
    head = bytearray()
    head_bytes = HEAD_FRAMES * record
    sent_l = sent_f = got_out = got_notify = last_read = 0
    pid = comparator.process.pid
    pinned = os.sched_getaffinity(pid)
    cpu = min(pinned) if len(pinned) == 1 else None

    start = time.monotonic()
    mark_at, end_at = start + warmup, start + warmup + seconds
    mark = None
    next_alive_check = start
    while True:
        # SIOCOUTQ gives the bytes of a socket the comparator has not read
        # yet: more, not less (a send counts whole, with overhead, until it
        # is read to the end), so "sent - outq" never overstates what it has
        # read. The leader goes at most ``ahead`` beyond the follower's
        # writes and ``window`` beyond what was read of the follower; the
        # follower only up to what was read of the leader, less the lead.
        if sent_l < sent_f + ahead:
            fcntl.ioctl(follower_fd, termios.TIOCOUTQ, outq, True)
            room = min(sent_f + ahead,
                       sent_f - int.from_bytes(outq, sys.byteorder) + window) - sent_l
            if room > 0:
                try:
                    sent_l += leader_send(view(sent_l, min(room, chunk)))
                except BlockingIOError:
                    pass
        if sent_f < sent_l - lead:
            fcntl.ioctl(leader_fd, termios.TIOCOUTQ, outq, True)
            room = sent_l - int.from_bytes(outq, sys.byteorder) - lead - sent_f
            if room > 0:
                try:
                    sent_f += follower_send(view(sent_f, min(room, chunk)))
                except BlockingIOError:
                    pass
        try:
            n = out_recv(out_buf)
            if not n:
                raise ComparatorGone(f"{comparator.name} closed its outdev")
            if len(head) < head_bytes:
                head += out_buf[:min(n, head_bytes - len(head))]
            got_out += n
            last_read = n
        except BlockingIOError:
            pass
        try:
            n = notify_recv(notify_buf)
            if not n:
                raise ComparatorGone(f"{comparator.name} closed its notify_dev")
            got_notify += n
        except BlockingIOError:
            pass

        now = time.monotonic()
        if now >= next_alive_check:
            if not comparator.alive():
                raise ComparatorGone(f"{comparator.name} exited with status "
                                     f"{comparator.process.returncode}")
            next_alive_check = now + 0.1
        if mark is None and now >= mark_at:
            mark = (now, got_out, got_notify, sent_f, session_cpu_seconds(pid),
                    cpu_busy_seconds(cpu))
        elif mark is not None and now >= end_at:
            break
    comparator_cpu, cpu_busy = session_cpu_seconds(pid), cpu_busy_seconds(cpu)
    # The last record received, if the last read ended on a record boundary.
    last_record = (bytes(out_buf[last_read - record + 4:last_read])
                   if got_out % record == 0 and last_read >= record else None)
    t0, out0, notify0, sent0, comparator_cpu0, cpu_busy0 = mark
    elapsed = now - t0
    return Measurement(
        released=(got_out - out0) / record / elapsed,
        sent=(sent_f - sent0) / record / elapsed,
        comparator_cpu=(comparator_cpu - comparator_cpu0) / elapsed,
        foreign_cpu=0.0 if cpu is None else
        max(0.0, (cpu_busy - cpu_busy0) - (comparator_cpu - comparator_cpu0)) / elapsed,
        checkpoints=(got_notify - notify0) / NOTIFY_RECORD / elapsed,
        output=check_output(bytes(head), last_record, stream))


def check_output(head: bytes, last: bytes | None, stream: Stream) -> str:
    """Whether the first released records, and the last, are primary frames in order.

    ``head`` holds the first ``HEAD_FRAMES`` records; ``last`` the last one
    received (None when the run did not end on a record boundary).
    """
    try:
        records = [r.frame for r in pktgen.Decoder(vnet=False).feed(head)]
    except pktgen.FramingError as err:
        return f"not chardev framing: {err}"
    if not records:
        return "nothing released"
    found = [stream.locate(frame) for frame in records + ([last] if last else [])]
    if None in found:
        bad = found.index(None)
        which = "the last record" if bad == len(records) else f"record {bad}"
        frame = last if bad == len(records) else records[bad]
        return f"{which} is not a frame that was sent: {pktgen.describe(frame)}"
    found = found[:len(records)]
    steps = {(b - a) % stream.period if stream.period else b - a
             for a, b in zip(found, found[1:])}
    if steps - {1}:
        return f"first frames out of order: stream positions {', '.join(map(str, found))}"
    return "ok"


# --- orchestration -------------------------------------------------------------------------

@dataclass
class RowResult:
    """Every run of one row; failed runs keep their message instead."""

    row: Row
    runs: dict[str, list[Measurement]]
    errors: dict[str, list[str]]
    ceiling: Measurement | None = None

    def median(self, name: str, what: str) -> float | None:
        runs = self.runs.get(name)
        if not runs:
            return None
        return statistics.median(getattr(m, what) for m in runs)


def measure(launch: Launcher, row: Row, stream: Stream, warmup: float,
            seconds: float) -> Measurement:
    """Start a fresh comparator, drive it once, stop it; HarnessError if it fails."""
    with launch() as comparator:
        try:
            return drive(comparator, row, stream, warmup, seconds)
        except OSError as err:   # a connection reset or a broken pipe
            failure = f"{comparator.name} dropped a connection ({err})"
        except ComparatorGone as err:
            failure = str(err)
        time.sleep(0.1)   # a crash shows as a closed socket first; let it exit
        if not comparator.alive():
            failure = f"{comparator.name} exited with status {comparator.process.returncode}"
        tail = " | ".join(comparator.log().strip().splitlines()[-3:]) or "(empty log)"
        raise ComparatorGone(f"{failure}; its log ends: {tail}")


def run_bench(rows: list[Row], launchers: dict[str, Launcher], ceiling: Launcher | None,
              runs: int, warmup: float, seconds: float,
              report: Callable[[str], None]) -> list[RowResult]:
    """Measure every row: the ceiling once, then rounds of one run per comparator."""
    results = []
    for row in rows:
        stream = build_stream(row)
        result = RowResult(row, {name: [] for name in launchers},
                           {name: [] for name in launchers})
        if ceiling is not None:
            result.ceiling = measure(ceiling, row, stream, warmup,
                                     min(seconds, CEILING_SECONDS))
            report(f"  row {row.number} {'driver':<8} {result.ceiling.released:>12,.0f} "
                   "pairs/s against the sink")
        for _ in range(runs):
            for name, launch in launchers.items():
                try:
                    m = measure(launch, row, stream, warmup, seconds)
                except HarnessError as err:
                    result.errors[name].append(str(err))
                    report(f"  row {row.number} {name:<8} failed: {err}")
                    continue
                result.runs[name].append(m)
                report(f"  row {row.number} {name:<8} {m.released:>12,.0f} pairs/s  "
                       f"(sent {m.sent:,.0f})  "
                       f"cpu {m.comparator_cpu:4.0%} (others {m.foreign_cpu:3.0%})  "
                       f"DO_CHECKPOINT/s {m.checkpoints:<8,.0f} output: {m.output}")
        results.append(result)
    return results


def _rate_cell(result: RowResult, name: str) -> str:
    value = result.median(name, "released")
    if value is None:
        return "failed" if result.errors.get(name) else "-"
    return f"{value:,.0f}"


def _cpu_cell(result: RowResult, name: str) -> str:
    value = result.median(name, "comparator_cpu")
    return "-" if value is None else f"{value:.0%}"


def _ratio_cell(result: RowResult) -> str:
    ours, qemu = result.median(COLO_XDP, "released"), result.median(QEMU, "released")
    if ours is None or qemu is None:
        return "n/a"
    if qemu < 1:  # QEMU released nothing in the window
        return "inf" if ours >= 1 else "n/a"
    return f"{ours / qemu:.2f}"


def table(results: list[RowResult]) -> str:
    """The summary: medians per row and comparator, one line per row."""
    head = ("row", "colo-xdp pairs/s", "QEMU pairs/s", "ratio",
            "colo-xdp cpu", "QEMU cpu", "driver max pairs/s")
    lines = [head]
    for r in results:
        lines.append((f"{r.row.number} {r.row.label}",
                      _rate_cell(r, COLO_XDP), _rate_cell(r, QEMU), _ratio_cell(r),
                      _cpu_cell(r, COLO_XDP), _cpu_cell(r, QEMU),
                      f"{r.ceiling.released:,.0f}" if r.ceiling else "-"))
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    text = []
    for n, line in enumerate(lines):
        cells = [line[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(line[1:], widths[1:])]
        text.append("  ".join(cells))
        if n == 0:
            text.append("  ".join("-" * w for w in widths))
    return "\n".join(text)


def notes(results: list[RowResult]) -> list[str]:
    """What a reader of the table should know: failures, odd output, checkpoint storms."""
    out = []
    for r in results:
        for name, runs in r.runs.items():
            where = f"row {r.row.number} {name}"
            if r.errors[name]:
                out.append(f"{where}: {len(r.errors[name])} of "
                           f"{len(r.errors[name]) + len(runs)} runs failed: {r.errors[name][0]}")
            odd = sorted({m.output for m in runs} - {"ok"})
            if odd:
                out.append(f"{where}: output: " + "; ".join(odd))
            if any(m.released > m.sent * 1.01 + 1 for m in runs):
                out.append(f"{where}: released more frames than were sent")
            checkpoints = r.median(name, "checkpoints") or 0
            if checkpoints >= 1:
                out.append(f"{where}: {checkpoints:,.0f} DO_CHECKPOINT/s")
            foreign = r.median(name, "foreign_cpu") or 0
            if foreign >= FOREIGN_CPU_NOTE:
                out.append(f"{where}: other processes took {foreign:.0%} of the "
                           "comparator's cpu; its figure is understated")
    return out


# --- command line ---------------------------------------------------------------------------

def parse_rows(text: str) -> list[Row]:
    by_number = {row.number: row for row in ROWS}
    picked = []
    for part in text.split(","):
        lo, _, hi = part.strip().partition("-")
        try:
            numbers = range(int(lo), int(hi or lo) + 1)
        except ValueError:
            raise argparse.ArgumentTypeError(f"rows are numbers like 1,2,5 or 1-3, "
                                             f"not {text!r}") from None
        for number in numbers:
            if number not in by_number:
                raise argparse.ArgumentTypeError(
                    f"there is no row {number}; rows are 1-{len(ROWS)}")
            picked.append(by_number[number])
    return picked


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m tools.bench",
        description="Pairs/s released by colo-xdp and by QEMU's colo-compare, "
                    "each pinned to one core, driven by this process on another.")
    p.add_argument("--rows", type=parse_rows, default=list(ROWS),
                   help="rows to run, e.g. 1,2,5 or 1-3 (default: all)")
    p.add_argument("--seconds", type=float, default=DEFAULT_SECONDS,
                   help=f"measured seconds per run (default {DEFAULT_SECONDS})")
    p.add_argument("--warmup", type=float, default=DEFAULT_WARMUP,
                   help=f"seconds of load before measuring (default {DEFAULT_WARMUP})")
    p.add_argument("--runs", type=int, default=DEFAULT_RUNS,
                   help=f"runs per row and comparator, median reported (default {DEFAULT_RUNS})")
    p.add_argument("--only", choices=(QEMU, COLO_XDP), help="run one comparator only")
    p.add_argument("--colo-xdp", type=Path, metavar="PATH",
                   help="colo-xdp executable (default: .venv/bin/colo-xdp of the repository)")
    p.add_argument("--no-ceiling", dest="ceiling", action="store_false",
                   help="skip measuring the driver against a sink that compares nothing")
    p.add_argument("--no-xdp", dest="xdp", action="store_false",
                   help="skip the XDP mode rows (colo-xdp on veths, AF_XDP and XDP_DROP "
                        "ceilings; root and bcc)")
    p.add_argument("--xdp-windows", type=int, metavar="N",
                   help="XDP mode: per row, N AF_XDP ceiling windows and N colo-xdp "
                        "windows, alternating, medians reported (default 5)")
    p.add_argument("--no-offload", dest="offload", action="store_false",
                   help="skip the offload row (a TCG guest with virtio-net offloads: TCP "
                        "through XDP mode next to the same guest without colo-xdp)")
    p.add_argument("--no-shaped", dest="shaped", action="store_false",
                   help="skip the QEMU-shaped rows (independent senders, one side ahead), "
                        "the COLO-frame simulator and the latency rows")
    p.add_argument("--shaped-only", action="store_true",
                   help="run only the QEMU-shaped rows, simulator and latency")
    p.add_argument("--shaped-rows", metavar="TEXT",
                   help="only the shaped rows whose label contains TEXT")
    p.add_argument("--shaped-runs", type=int, default=None, metavar="N",
                   help="runs of each shaped row, interleaved, best shown (default: "
                        "tools.bench_shaped.RUNS)")
    p.add_argument("--sink", type=Path, metavar="DIR", help=argparse.SUPPRESS)
    return p


def _pin_driver() -> tuple[str | None, str | None]:
    """Put this process on DRIVER_CPU; the CPU list for comparators (None: no pinning)."""
    cpus = os.sched_getaffinity(0)
    if {DRIVER_CPU, COMPARATOR_CPU} <= cpus:
        os.sched_setaffinity(0, {DRIVER_CPU})
        return str(DRIVER_CPU), str(COMPARATOR_CPU)
    print(f"warning: cpus {DRIVER_CPU} and {COMPARATOR_CPU} are not both available "
          f"(have {sorted(cpus)}); nothing is pinned, so driver and comparator share "
          "cores and the figures mean less.", file=sys.stderr)
    return None, None


def _qemu_version() -> str:
    out = subprocess.run([qemu_binary(), "--version"], capture_output=True, text=True)
    return out.stdout.splitlines()[0] if out.stdout else "unknown"


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.sink is not None:
        run_sink(args.sink)
        return 0
    if (args.runs < 1 or args.seconds <= 0 or args.warmup < 0
            or (args.xdp_windows is not None and args.xdp_windows < 1)
            or (args.shaped_runs is not None and args.shaped_runs < 1)):
        print("error: --runs, --xdp-windows and --shaped-runs must be at least 1, "
              "--seconds above 0 "
              "and --warmup not negative.", file=sys.stderr)
        return 2

    about = []
    if args.only != QEMU:
        exe = args.colo_xdp or default_colo_xdp_exe()
        if exe is None or not Path(exe).is_file():
            print(f"error: colo-xdp executable {exe or DEFAULT_EXE} not found: install "
                  "the project into .venv, pass --colo-xdp PATH, or run --only qemu.",
                  file=sys.stderr)
            return 2
        about.append(f"colo-xdp: {exe}")
    if args.only != COLO_XDP:
        try:
            about.append(f"qemu: {_qemu_version()}")
        except HarnessError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2

    driver_cpu, comparator_cpu = _pin_driver()
    # colo-xdp first in each round, so neither always runs on a warmer machine.
    launchers: dict[str, Launcher] = {}
    if args.only != QEMU:
        launchers[COLO_XDP] = lambda: colo_xdp_ref(exe, cpus=comparator_cpu)
    if args.only != COLO_XDP:
        launchers[QEMU] = lambda: qemu_ref(cpus=comparator_cpu)
    ceiling = (lambda: sink_ref(comparator_cpu)) if args.ceiling else None
    # Latency also without polling, to show what --busy-poll's default adds.
    latency_only: dict[str, Launcher] = {}
    if args.only != QEMU:
        latency_only[f"{COLO_XDP} --busy-poll 0"] = lambda: colo_xdp_ref(
            exe, cpus=comparator_cpu, extra=("--busy-poll", "0"))

    pinning = (f"comparator on cpu {comparator_cpu}, driver on cpu {driver_cpu}"
               if driver_cpu is not None else "nothing pinned")
    print(f"colo-compare throughput: median of {args.runs} runs, {args.warmup:g} s "
          f"warm-up + {args.seconds:g} s measured; {pinning}")
    print(f"host: {platform.node()} {platform.release()}, {os.cpu_count()} cpus, "
          f"python {platform.python_version()}")
    for line in about:
        print(line)
    sys.stdout.flush()

    started = time.monotonic()
    if args.shaped_only:
        return _shaped_section(args, launchers, ceiling, latency_only)
    try:
        results = run_bench(args.rows, launchers, ceiling, args.runs, args.warmup,
                            args.seconds, lambda line: print(line, flush=True))
    except HarnessError as err:   # only the sink's own failures get here
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    print()
    print(table(results))
    for line in notes(results):
        print(f"note: {line}")
    print(f"(pairs/s: frames released on the outdev per second; cpu: share of one core "
          f"the comparator used; driver max: the same driver against a sink that "
          f"forwards the primary unchanged; {time.monotonic() - started:.0f} s in all)")
    failed = any(r.errors[name] for r in results for name in r.errors)
    if args.shaped:
        failed = bool(_shaped_section(args, launchers, ceiling, latency_only)) or failed
    if args.xdp:
        try:
            failed = _xdp_section(args, results, comparator_cpu) or failed
        except KeyboardInterrupt:
            return 130
    if args.offload and args.only != QEMU:
        try:
            failed = _offload_section(args) or failed
        except KeyboardInterrupt:
            return 130
    return 1 if failed else 0


def _shaped_section(args, launchers: dict[str, Launcher], ceiling: Launcher | None,
                    latency_only: dict[str, Launcher]) -> int:
    """The QEMU-shaped rows (tools.bench_shaped); 1 if a comparator failed."""
    from tools import bench_shaped

    print()
    print("QEMU-shaped traffic: independent sender processes, one side up to N frames "
          "ahead; checkpoints never answered (but in the simulator)")
    rows = [r for r in bench_shaped.shaped_rows()
            if not args.shaped_rows or args.shaped_rows in r.label]
    lines = bench_shaped.run(launchers, ceiling, args.warmup, args.seconds,
                             lambda line: print(line, flush=True), rows, latency_only,
                             args.shaped_runs or bench_shaped.RUNS)
    print()
    print("\n".join(lines))
    return int(any("failed" in line for line in lines))


def _offload_section(args) -> bool:
    """The offload row (tools.bench_offload); True if it failed."""
    from tools import bench_offload

    print()
    reason = bench_offload.problem()
    if reason:
        print(f"offloads: skipped: {reason}")
        return False
    try:
        bench_offload.run(args.runs)
    except Exception as err:      # noqa: BLE001  the lab or a stream failed
        print(f"offloads: failed: {err}")
        return True
    return False


def _xdp_section(args, results: list[RowResult], comparator_cpu: str | None) -> bool:
    """XDP mode rows (tools.bench_xdp) in the same run; True if one failed."""
    from tools import bench_xdp

    print()
    reason = ("--only qemu" if args.only == QEMU else bench_xdp.problem())
    if reason:
        print(f"XDP mode: skipped: {reason}")
        return False
    exe = args.colo_xdp or default_colo_xdp_exe()
    seconds = min(args.seconds, bench_xdp.MAX_SECONDS)
    windows = args.xdp_windows or bench_xdp.WINDOWS
    print(f"XDP mode: colo-xdp compare --primary-xdp p-h --secondary-xdp s-h on veths "
          f"in namespaces (cpu {comparator_cpu}), AF_XDP TX from p-g/s-g by the driver; "
          f"per row {windows} AF_XDP ceiling windows (twin veths pc-h/sc-h) and {windows} "
          f"colo-xdp windows of {seconds:g} s, alternating, medians", flush=True)
    started = time.monotonic()
    try:
        xdp = bench_xdp.run(args.rows, exe, windows, args.warmup, args.seconds,
                            sys.modules[__name__], lambda line: print(line, flush=True),
                            cpu=comparator_cpu)
    except Exception as err:      # noqa: BLE001  the lab itself could not be built
        print(f"XDP mode: failed: {err}")
        return True
    qemu = {r.row.number: r.median(QEMU, "released") for r in results}
    print()
    print(bench_xdp.table(xdp, qemu.get))
    for line in bench_xdp.notes(xdp, FOREIGN_CPU_NOTE):
        print(f"note: {line}")
    print(f"(XDP pairs/s: median over the windows of pairs released on the outdev per "
          f"second; frames/s: 2 x pairs/s, both guests' frames; AF_XDP rx max: median over "
          f"the windows between them of frames/s that classify.c + an AF_XDP socket per "
          f"interface deliver to a process on cpu {comparator_cpu} doing only rx_burst/"
          f"rx_done; ±: half the windows' range over their median; % of AF_XDP: ratio of "
          f"the medians; per window: each colo-xdp window over the ceiling window before it, "
          f"median (lowest-highest); XDP_DROP max: frames/s an XDP program dropping "
          f"everything counts, i.e. what the driver can send (one run); x QEMU: against "
          f"this run's QEMU chardev pairs/s; {time.monotonic() - started:.0f} s)")
    return any(not r.runs for r in xdp)


if __name__ == "__main__":
    sys.exit(main())
