"""make soak: minutes of mixed traffic through a real `colo-xdp compare`,
in chardev mode and in XDP mode at the same time.

    python -m tools.soak [--mode both|chardev|xdp] [--seconds 600] [--rate 4000]
                            [--report-every 30]

Each mode soaks its own service, with every peer played here:

* **chardev**: the primary and secondary inputs, the outdev and notify-dev
  are unix sockets in a temporary directory.
* **xdp**: namespaces host, guest-p, guest-s and uplink joined by veth pairs
  (as in tests/xdp); the service runs in host with ``--primary-xdp p-h
  --secondary-xdp s-h --outdev xdp:o-h``; the guests' frames are sent on
  p-g and s-g with AF_PACKET, and released frames are read on o-g.

In both, a notify-dev peer answers each DO_CHECKPOINT with a COLO_CHECKPOINT
a moment later, as the COLO frame does, and the counters come from the
service's control socket (``stats``, exact).  The traffic mixes

* matched UDP pairs on more flows than --max-connections (idle connections
  are evicted all the time), ICMP echoes, ARP (not compared);
* TCP flows cut into segments differently on each side, with pure ACKs;
* now and then a mismatch, a primary frame with no secondary (timeout) and a
  flood past --max-queue-size;
* a UDP flow put on the passthrough list and taken off it in turn, through
  the control socket, its frames sent only while it is on;
* chardev: a zero-length record on the secondary input and a primary peer
  that leaves mid-frame (both reconnect at once);
* xdp: IPv4 frames cut short (the classifier's MALFORMED: passed on the
  primary, dropped on the secondary), and the secondary guest's interface
  removed and made anew (the service lets it go and attaches again).

Every --report-every seconds a line per mode gives the colo-xdp process's RSS,
frames in and out, checkpoints and drops by reason.  At the end each service
is stopped with SIGTERM and a verdict line per mode says PASS or FAIL, then a
last line for the run:

* alive: the process ran until told to stop, exited 0 and printed its summary;
* accounted: every frame this driver wrote is counted: chardev, each record
  on both inputs; xdp, each frame the classifier sends to the engine (compared,
  and the primary's passthrough frames) in frames_in or as dropped by the
  kernel (AF_XDP rx ring full), each frame not compared (ARP, cut short,
  passthrough) in the classifier's verdict counters.  The outdev got exactly the frames the service says it released,
  each once, each flow's in order, none unknown; and released + dropped =
  primary frames in (nothing held after the exit flush);
* RSS bounded: the peak of the last fifth of the run is within 10% + 16 MiB
  of the peak after warm-up (the second fifth).
"""
from __future__ import annotations

import argparse
import contextlib
import os
import random
import re
import signal
import socket
import struct
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from colo_xdp.lab import pktgen as g
from tools.harness import default_colo_xdp_exe
from colo_xdp.lab.netns import NetnsError, add_netns, add_veth, in_netns, sh
from colo_xdp.lab.process import ProcessError, SupervisedProcess

MAX_QUEUE = 256
MAX_CONNECTIONS = 4096
UDP_FLOWS = 6000          # more than MAX_CONNECTIONS: eviction never stops
TCP_FLOWS = 64
COMPARE_TIMEOUT_MS = 500
SCAN_MS = 100
CHECKPOINT_DELAY_S = 0.01  # the notify peer's answer to DO_CHECKPOINT
MAX_ROUND_S = 0.05         # pairs owed after a pause are capped to this much time
MAGIC = b"SOAK"
UDP_DPORT, MISMATCH_DPORT, LONELY_DPORT, FLOOD_DPORT, PT_DPORT = 5000, 5001, 5002, 5003, 5004
PT_FLOW = f"udp * > *:{PT_DPORT}"   # on the passthrough list every other PT_SECONDS
PT_SECONDS = 7.0
TCP_SPORT = 20000
WRAP = 1 << 32
SIDES = ("primary", "secondary")

DO_CHECKPOINT = g.encode(b"DO_CHECKPOINT")
COLO_CHECKPOINT = g.encode(b"COLO_CHECKPOINT")
SECONDARY_IP = g.IPv4Fields(ttl=63, ident=7)
SECONDARY_MAC = g.EtherAddrs(src="52:54:00:00:00:aa", dst="52:54:00:00:00:bb")

SOL_PACKET, PACKET_STATISTICS, PACKET_OUTGOING = 263, 6, 4
SO_RCVBUFFORCE = 33          # not in the socket module


class SoakError(RuntimeError):
    """The soak could not run (not: the service failed it)."""


# -- traffic ------------------------------------------------------------------------------

def _seq_after(a: int, b: int) -> bool:
    return 0 < (a - b) % WRAP < (1 << 31)


@dataclass
class Traffic:
    """Builds both sides' frames."""

    rnd: random.Random
    udp_seq: Counter = field(default_factory=Counter)
    tcp_seq: dict = field(default_factory=dict)

    def __post_init__(self):
        self.tcp_seq = {f: self.rnd.choice([1000, WRAP - 5000, self.rnd.randrange(WRAP)])
                        for f in range(TCP_FLOWS)}
        self.tcp_ack = {f: self.rnd.randrange(WRAP) for f in range(TCP_FLOWS)}

    def udp(self, flow: int, dport: int = UDP_DPORT, corrupt: bool = False,
            size: int | None = None) -> tuple[bytes, bytes]:
        seq = self.udp_seq[(dport, flow)]
        self.udp_seq[(dport, flow)] += 1
        src = f"10.1.{flow >> 8 & 255}.{flow & 255}"
        body = MAGIC + struct.pack(">IQ", flow, seq) + bytes((flow + seq) % 251 for _ in range(
            size if size is not None else 16 + flow % 200))
        prim = g.udp_frame(body, src=src, sport=10000 + flow % 50000, dport=dport)
        sec_body = body[:-1] + b"\xff" if corrupt else body
        sec = g.udp_frame(sec_body, src=src, sport=10000 + flow % 50000, dport=dport,
                          ip=SECONDARY_IP, eth=SECONDARY_MAC)
        return prim, sec

    def tcp(self, flow: int) -> tuple[list[bytes], list[bytes]]:
        """One chunk of flow ``flow``: one segment on one side, two on the
        other, a pure ACK after it now and then."""
        n = 200 + self.rnd.randrange(1200)
        seq, ack = self.tcp_seq[flow], self.tcp_ack[flow]
        data = bytes((seq + i) % 253 for i in range(n))
        cut = self.rnd.randrange(1, n)

        def seg(payload: bytes, at: int, sec: bool, flags: int = g.TCP_ACK | g.TCP_PSH):
            return g.tcp_frame(payload, sport=TCP_SPORT + flow, dport=80, seq=at % WRAP,
                               ack=ack, flags=flags, window=512 if sec else 65535,
                               eth=SECONDARY_MAC if sec else g.ETHER_DEFAULTS)
        if flow % 2:
            prim = [seg(data, seq, False)]
            sec = [seg(data[:cut], seq, True), seg(data[cut:], seq + cut, True)]
        else:
            prim = [seg(data[:cut], seq, False), seg(data[cut:], seq + cut, False)]
            sec = [seg(data, seq, True)]
        self.tcp_seq[flow] = (seq + n) % WRAP
        if self.rnd.random() < 0.2:
            prim.append(seg(b"", seq + n, False, g.TCP_ACK))
            sec.append(seg(b"", seq + n, True, g.TCP_ACK))
        return prim, sec


class Round:
    """One batch of frames for each side; ``other`` counts, by side, the
    frames in it that never reach the engine in XDP mode (ARP, frames cut
    short, the secondary's passthrough frames), ``passthrough`` those the
    classifier finds on its passthrough list (XDP mode)."""

    def __init__(self):
        self.p: list[bytes] = []
        self.s: list[bytes] = []
        self.other = Counter()
        self.passthrough = Counter()

    def pair(self, prim: bytes, sec: bytes | None) -> None:
        self.p.append(prim)
        if sec is not None:
            self.s.append(sec)

    def clear(self) -> None:
        self.p.clear()
        self.s.clear()
        self.other.clear()
        self.passthrough.clear()


# -- peers ----------------------------------------------------------------------------------

def _connect(path: Path) -> socket.socket:
    deadline = time.monotonic() + 10
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(str(path))
            return sock
        except OSError:
            sock.close()
            if time.monotonic() > deadline:
                raise SoakError(f"cannot connect to {path}") from None
            time.sleep(0.05)


class OutdevReader(threading.Thread):
    """Reads released frames, from a chardev stream (``framed``) or one frame
    per recv (AF_PACKET); checks each flow's order and that it knows them."""

    def __init__(self, sock: socket.socket, framed: bool):
        super().__init__(daemon=True)
        self.sock = sock
        self.framed = framed
        self.received = 0
        self.problems: list[str] = []
        self.udp_last: dict = {}
        self.tcp_last: dict = {}
        self.done = threading.Event()
        self.last_frame_at = time.monotonic()
        self.start()

    def run(self) -> None:
        try:
            self._stream() if self.framed else self._packets()
        finally:
            self.done.set()

    def _stream(self) -> None:
        buf = bytearray()
        while True:
            try:
                data = self.sock.recv(1 << 20)
            except OSError as exc:
                self.problems.append(f"outdev: {exc}")
                return
            if not data:
                return
            buf += data
            pos = 0
            while len(buf) - pos >= 4:
                (size,) = struct.unpack_from(">I", buf, pos)
                if len(buf) - pos - 4 < size:
                    break
                self.check(bytes(buf[pos + 4:pos + 4 + size]))
                pos += 4 + size
            del buf[:pos]

    def _packets(self) -> None:
        self.sock.settimeout(0.2)
        while not self.done.is_set():
            try:
                frame, addr = self.sock.recvfrom(65536)
            except TimeoutError:
                continue
            except OSError as exc:
                if self.sock.fileno() >= 0:
                    self.problems.append(f"outdev: {exc}")
                return
            if addr[2] != PACKET_OUTGOING:
                self.last_frame_at = time.monotonic()
                self.check(frame)

    def stop_when_quiet(self, quiet_s: float = 0.5, limit_s: float = 10.0) -> None:
        """AF_PACKET has no end: stop once nothing came for ``quiet_s``."""
        deadline = time.monotonic() + limit_s
        while not self.framed and time.monotonic() < deadline and not self.done.is_set():
            if time.monotonic() - self.last_frame_at > quiet_s:
                break
            time.sleep(0.05)
        self.done.set()

    def kernel_drops(self) -> int:
        """AF_PACKET: frames the kernel could not queue to this socket."""
        if self.framed:
            return 0
        _packets, drops = struct.unpack("II", self.sock.getsockopt(SOL_PACKET,
                                                                   PACKET_STATISTICS, 8))
        return drops

    def problem(self, text: str) -> None:
        if len(self.problems) < 20:
            self.problems.append(text)

    def check(self, f: bytes) -> None:
        self.received += 1
        if len(f) < 34 or f[12:14] != b"\x08\x00":
            return                                   # ARP: not compared, passed through
        ihl = (f[14] & 15) * 4
        l4 = 14 + ihl
        proto = f[23]
        if proto == g.IPPROTO_UDP:
            dport = struct.unpack_from(">H", f, l4 + 2)[0]
            if f[l4 + 8:l4 + 12] != MAGIC:
                self.problem(f"unknown UDP frame released: {g.describe(f)}")
                return
            flow, seq = struct.unpack_from(">IQ", f, l4 + 12)
            key = (dport, flow)
            last = self.udp_last.get(key, -1)
            if seq <= last:
                self.problem(f"flow {key}: frame {seq} released after {last}")
            self.udp_last[key] = seq
        elif proto == g.IPPROTO_TCP:
            sport, _, seq = struct.unpack_from(">HHI", f, l4)
            last = self.tcp_last.get(sport)
            if last is not None and _seq_after(last, seq):
                self.problem(f"TCP flow {sport}: seq {seq} released after {last}")
            self.tcp_last[sport] = seq


class NotifyPeer(threading.Thread):
    """The COLO frame's side of notify-dev: DO_CHECKPOINT in, COLO_CHECKPOINT
    out a moment later (requests in between make one checkpoint)."""

    def __init__(self, sock: socket.socket):
        super().__init__(daemon=True)
        self.sock = sock
        self.requests = 0
        self.checkpoints = 0
        self.start()

    def run(self) -> None:
        buf = b""
        self.sock.settimeout(0.05)
        due = None
        while True:
            try:
                data = self.sock.recv(65536)
                if not data:
                    return
                buf += data
            except TimeoutError:
                pass
            except OSError:
                return
            n = buf.count(DO_CHECKPOINT)
            if n:
                self.requests += n
                buf = buf.replace(DO_CHECKPOINT, b"")
                due = due or time.monotonic() + CHECKPOINT_DELAY_S
            if due and time.monotonic() >= due:
                try:
                    self.sock.sendall(COLO_CHECKPOINT)
                except OSError:
                    return
                self.checkpoints += 1
                due = None


class SoakedService:
    """The `colo-xdp compare` process under soak: its log, RSS and stats."""

    def __init__(self, argv: list[str], control: Path):
        self.control = control
        self.events = Counter()            # (event, role) -> lines logged
        self.proc = SupervisedProcess(command=argv, name="colo-xdp compare", keep_lines=300,
                                      on_line=self._count)
        self.proc.start()
        self._client = None
        try:
            self.proc.wait_ready(30)
        except ProcessError:
            self.kill()
            raise SoakError("colo-xdp compare did not get ready:\n" + self.proc.log) from None

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def lines(self) -> list[str]:
        """The newest 300 lines of its stderr."""
        return self.proc.lines

    def _count(self, line: str) -> None:
        m = re.match(r"colo-xdp: (\w+)(?: role=(\S+))?", line)
        if m:
            self.events[(m.group(1), m.group(2))] += 1

    def rss_kib(self) -> int:
        try:
            text = Path(f"/proc/{self.proc.pid}/status").read_text()
        except OSError:
            return 0
        m = re.search(r"VmRSS:\s+(\d+) kB", text)
        return int(m.group(1)) if m else 0

    def ask(self, request: dict) -> dict | None:
        """One request on the control socket; its reply, None when the
        service does not answer."""
        from colo_xdp.cli.ctl_client import ClientError, ControlClient
        try:
            if self._client is None:
                self._client = ControlClient.connect(path=str(self.control), timeout=10)
            return self._client.request(request)
        except (ClientError, OSError):
            if self._client:
                self._client.close()
            self._client = None
            return None

    def stats(self) -> dict | None:
        """The control socket's ``stats`` (no connection rows)."""
        reply = self.ask({"cmd": "stats", "connections": 0})
        return reply.get("stats") if reply else None

    def wait_event(self, event: str, role: str, count: int, timeout: float) -> bool:
        """Until ``event`` for ``role`` was logged ``count`` times."""
        deadline = time.monotonic() + timeout
        while self.events[(event, role)] < count:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                return False
            time.sleep(0.05)
        return True

    def stop(self) -> tuple[int, str]:
        if self._client:
            self._client.close()
        rc = self.proc.stop(30)            # SIGKILL after 30 s: -9
        return rc, next((ln for ln in reversed(self.lines) if " stopped " in ln), "")

    def kill(self) -> None:
        self.proc.kill(10)


def _service_args(work: Path) -> list[str]:
    return ["--notify-dev", f"unix:{work / 'notify'},server=on",
            "--control", str(work / "control"),
            "--max-queue-size", str(MAX_QUEUE), "--max-connections", str(MAX_CONNECTIONS),
            "--compare-timeout", str(COMPARE_TIMEOUT_MS), "--expired-scan-cycle", str(SCAN_MS)]


# -- the two modes --------------------------------------------------------------------------

class ChardevRig:
    """Chardev mode: every endpoint a unix socket in ``work``."""

    name = "chardev"
    # event -> seconds between two of them (besides the common ones)
    EVENTS = {"empty": 17.0, "cut": 23.0}

    def __init__(self, work: Path):
        self.work = work

    def argv(self, exe: Path) -> list[str]:
        server = lambda name: f"unix:{self.work / name},server=on"  # noqa: E731
        return [str(exe), "compare", "--primary-in", server("pin"),
                "--secondary-in", server("sin"), "--outdev", server("out"),
                *_service_args(self.work)]

    def connect(self) -> OutdevReader:
        out = OutdevReader(_connect(self.work / "out"), framed=True)
        self.pin, self.sin = _connect(self.work / "pin"), _connect(self.work / "sin")
        return out

    def send(self, side: str, frames: list[bytes]) -> None:
        sock = self.pin if side == "primary" else self.sin
        sock.sendall(b"".join(map(g.encode, frames)))

    def close(self) -> None:
        for sock in (getattr(self, "pin", None), getattr(self, "sin", None)):
            if sock:
                sock.close()

    @staticmethod
    def wait_closed(sock: socket.socket) -> None:
        sock.settimeout(10)
        try:
            while sock.recv(65536):
                pass
        except OSError:
            pass
        sock.close()


class XdpRig:
    """XDP mode: the guests, the uplink and the service in namespaces.

        guest-p: p-g ──veth── p-h ┐
        guest-s: s-g ──veth── s-h ┼─ host: colo-xdp compare --primary-xdp p-h
        uplink:  o-g ──veth── o-h ┘         --secondary-xdp s-h --outdev xdp:o-h
    """

    name = "xdp"
    EVENTS = {"malformed": 5.0, "flap": 47.0}
    LINKS = {"p": "gp", "s": "gs", "o": "up"}

    def __init__(self, work: Path):
        self.work = work
        tag = os.getpid() % 100000
        self.ns = {name: f"cxsoak{name}-{tag}" for name in ("host", "gp", "gs", "up")}
        self.made: list[str] = []
        self.tx: dict[str, socket.socket] = {}
        try:
            for ns in self.ns.values():
                self.made.append(ns)
                add_netns(ns)
            for short in self.LINKS:
                self.make_link(short)
        except NetnsError as exc:
            self.close()
            raise SoakError(str(exc)) from None

    def make_link(self, short: str) -> None:
        add_veth(self.ns["host"], f"{short}-h", self.ns[self.LINKS[short]], f"{short}-g")

    def packet_socket(self, short: str) -> socket.socket:
        with in_netns(self.ns[self.LINKS[short]]):
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
        sock.bind((f"{short}-g", 0))
        return sock

    def argv(self, exe: Path) -> list[str]:
        return ["ip", "netns", "exec", self.ns["host"], str(exe), "compare",
                "--primary-xdp", "p-h", "--secondary-xdp", "s-h", "--outdev", "xdp:o-h",
                *_service_args(self.work)]

    def connect(self) -> OutdevReader:
        out = self.packet_socket("o")
        out.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 32 << 20)
        self.tx = {"primary": self.packet_socket("p"), "secondary": self.packet_socket("s")}
        return OutdevReader(out, framed=False)

    def send(self, side: str, frames: list[bytes]) -> None:
        send = self.tx[side].send
        for frame in frames:
            send(frame)

    def close(self) -> None:
        for sock in self.tx.values():
            sock.close()
        self.tx = {}
        for ns in self.made:
            sh("ip", "netns", "del", ns, check=False)
        self.made = []


# -- the run ----------------------------------------------------------------------------------

class Soak:
    def __init__(self, mode: str, args, echo: Callable[[str], None] = print,
                 stop: threading.Event | None = None):
        self.mode = mode
        self.args = args
        self.say = lambda text: echo(f"soak[{mode}] {text}")
        self.rnd = random.Random(args.seed)
        self.traffic = Traffic(self.rnd)
        self.sent = Counter()          # frames written, by side
        self.other = Counter()         # of which never in the engine (XDP: ARP, cut short, ...)
        self.passthrough = Counter()   # of which on the classifier's passthrough list (XDP)
        self.samples: list[tuple[float, int]] = []
        self.problems: list[str] = []  # the service failed an event
        self.notes = Counter()         # events done
        self.stop_event = stop or threading.Event()
        self.passthrough_on = False
        self.ok: bool | None = None
        self.verdict = ""

    def run(self) -> bool:
        exe = default_colo_xdp_exe()
        if exe is None:
            raise SoakError("colo-xdp is not installed: run 'make setup'")
        with tempfile.TemporaryDirectory(prefix=f"cx-soak-{self.mode}-") as tmp:
            work = Path(tmp)
            self.rig = ChardevRig(work) if self.mode == "chardev" else XdpRig(work)
            try:
                svc = SoakedService(self.rig.argv(exe), work / "control")
                try:
                    self.ok = self._run(svc, work)
                finally:
                    svc.kill()
            finally:
                self.rig.close()
        return self.ok

    def _run(self, svc: SoakedService, work: Path) -> bool:
        out = self.rig.connect()
        note = NotifyPeer(_connect(work / "notify"))
        self.say(f"colo-xdp pid {svc.pid}, {self.args.seconds:.0f} s, {self.args.rate} "
                 f"pairs/s, max_queue_size {MAX_QUEUE}, max_connections {MAX_CONNECTIONS}, "
                 f"{UDP_FLOWS} UDP + {TCP_FLOWS} TCP flows")
        start = time.monotonic()
        next_report = start
        alive = True
        pairs_due = 0.0
        last = start
        events = {"mismatch": 2.0, "lonely": 3.0, "flood": 11.0, "passthrough": PT_SECONDS,
                  **self.rig.EVENTS}
        # Each event at least once, even in a short run.
        next_event = {k: start + min(v, 0.4 * self.args.seconds) for k, v in events.items()}
        rnd = Round()
        while not self.stop_event.is_set() and not self.problems:
            now = time.monotonic()
            if now - start >= self.args.seconds:
                break
            if svc.proc.poll() is not None:
                alive = False
                break
            pairs_due = min(pairs_due + (now - last) * self.args.rate,
                            self.args.rate * MAX_ROUND_S)
            last = now
            for _ in range(int(pairs_due)):
                self._mixed(rnd)
            pairs_due -= int(pairs_due)
            for name, at in next_event.items():
                if now >= at:
                    next_event[name] = now + events[name]
                    getattr(self, f"_{name}")(rnd, svc)
            self._send(rnd)
            if now >= next_report:
                self._report(svc, out, note, now - start)
                next_report += self.args.report_every
            time.sleep(0.005)
        # Let the last frames arrive, then stop and judge.
        time.sleep(1.0)
        self._report(svc, out, note, time.monotonic() - start)
        final = svc.stats()
        rc, summary = svc.stop() if alive else (svc.proc.returncode, "")
        out.stop_when_quiet()
        out.join(10)
        return self._verdict(svc, out, note, alive, rc, summary, final)

    # traffic -------------------------------------------------------------------------------

    def _mixed(self, rnd: Round) -> None:
        r = self.rnd.random()
        if self.passthrough_on and r < 0.02:
            rnd.pair(*self.traffic.udp(self.rnd.randrange(8), PT_DPORT))
            if self.mode == "xdp":          # the engine releases the primary's uncompared,
                rnd.passthrough.update(SIDES)   # the secondary's classifier drops its own
                rnd.other["secondary"] += 1
        elif r < 0.80:
            rnd.pair(*self.traffic.udp(self.rnd.randrange(UDP_FLOWS)))
        elif r < 0.90:
            prim, sec = self.traffic.tcp(self.rnd.randrange(TCP_FLOWS))
            rnd.p += prim
            rnd.s += sec
        elif r < 0.97:
            seq = self.traffic.udp_seq["icmp"]
            self.traffic.udp_seq["icmp"] += 1
            frame = g.icmp_echo_frame(MAGIC + struct.pack(">IQ", 0, seq), seq=seq & 0xFFFF)
            rnd.pair(frame, frame)
        else:
            rnd.pair(g.arp_frame(), g.arp_frame())
            rnd.other.update(SIDES)

    def _passthrough(self, rnd: Round, svc: SoakedService) -> None:
        """Put PT_FLOW on the passthrough list, or take it off, with the
        control socket (in XDP mode the classifier's map changes too); its
        frames are sent only while the list is known to hold it."""
        self._send(rnd)
        op = "del" if self.passthrough_on else "add"
        reply = svc.ask({"cmd": "passthrough", "op": op, "flow": PT_FLOW})
        if not reply or not reply.get("ok"):
            self.problems.append(f"passthrough {op} {PT_FLOW!r} failed: {reply}")
            return
        self.passthrough_on = op == "add"
        self.notes["passthrough changes"] += 1

    def _mismatch(self, rnd: Round, svc: SoakedService) -> None:
        rnd.pair(*self.traffic.udp(0, MISMATCH_DPORT, corrupt=True))

    def _lonely(self, rnd: Round, svc: SoakedService) -> None:
        rnd.pair(self.traffic.udp(0, LONELY_DPORT)[0], None)

    def _flood(self, rnd: Round, svc: SoakedService) -> None:
        for _ in range(MAX_QUEUE + 50):
            rnd.pair(self.traffic.udp(0, FLOOD_DPORT, size=8)[0], None)

    def _empty(self, rnd: Round, svc: SoakedService) -> None:
        """chardev: a zero-length record on the secondary input: the service
        closes it; reconnect (after this round's records, so none is lost)."""
        self._send(rnd)
        self.rig.sin.sendall(b"\0\0\0\0")
        self.sent["secondary"] += 1
        self.notes["zero-length secondary records"] += 1
        self.rig.wait_closed(self.rig.sin)
        self.rig.sin = _connect(self.rig.work / "sin")

    def _cut(self, rnd: Round, svc: SoakedService) -> None:
        """chardev: the primary peer leaves in the middle of a record; a new
        one comes."""
        self._send(rnd)
        frame = self.traffic.udp(1, LONELY_DPORT)[0]
        self.rig.pin.sendall(g.encode(frame)[:10])
        self.sent["primary"] += 1
        self.notes["primary records cut"] += 1
        self.rig.pin.close()
        self.rig.pin = _connect(self.rig.work / "pin")

    def _malformed(self, rnd: Round, svc: SoakedService) -> None:
        """xdp: IPv4 frames cut inside their headers, on both sides."""
        prim, sec = self.traffic.udp(2, UDP_DPORT)
        cut = self.rnd.choice([20, 30, 38])          # in the IPv4 header, in the UDP one
        rnd.pair(prim[:cut], sec[:cut])
        rnd.other.update(SIDES)
        self.notes["frames cut short"] += 2

    def _flap(self, rnd: Round, svc: SoakedService) -> None:
        """xdp: the secondary guest's interface goes away and comes back.
        Frames are sent again once the service has attached anew."""
        self._send(rnd)
        role = "secondary-in"
        if not self._caught_up(svc, "secondary"):
            self.problems.append("before the interface went: the secondary's frames did not "
                                 "all arrive within 5 s")
            return
        gone = svc.events[("xdp_iface_gone", role)]
        attached = svc.events[("xdp_attached", role)]
        self.rig.tx.pop("secondary").close()
        sh("ip", "-n", self.rig.ns["host"], "link", "del", "s-h")
        if not svc.wait_event("xdp_iface_gone", role, gone + 1, 10):
            self.problems.append("s-h was removed but the service did not say xdp_iface_gone")
            return
        self.rig.make_link("s")
        if not svc.wait_event("xdp_attached", role, attached + 1, 10):
            self.problems.append("s-h came back but the service did not attach again")
            return
        self.rig.tx["secondary"] = self.rig.packet_socket("s")
        self.notes["interface removed and back"] += 1

    def _caught_up(self, svc: SoakedService, side: str, timeout: float = 5.0) -> bool:
        """XDP: every compared frame sent on ``side`` is in the service's
        frames_in or kernel drops."""
        want = self.sent[side] - self.other[side]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            st = svc.stats()
            if st and (st["frames_in"][side] + sum(st["kernel_dropped"][side].values())
                       >= want):
                return True
            time.sleep(0.05)
        return False

    def _send(self, rnd: Round) -> None:
        for side, frames in (("primary", rnd.p), ("secondary", rnd.s)):
            if frames:
                self.rig.send(side, frames)
                self.sent[side] += len(frames)
        self.other += rnd.other
        self.passthrough += rnd.passthrough
        rnd.clear()

    # reporting -----------------------------------------------------------------------------

    @staticmethod
    def _by_reason(st: dict | None) -> tuple[str, str]:
        if not st:
            return "?", "?"
        fmt = lambda d: " ".join(f"{k}={v}" for k, v in sorted(d.items()) if v) or "-"  # noqa: E731
        drops = {f"{side[0].upper()}.{reason}": n for side in SIDES
                 for reason, n in st["dropped"][side].items()}
        drops.update({f"{side[0].upper()}.kernel_{reason}": n
                      for side, by in st.get("kernel_dropped", {}).items()
                      for reason, n in by.items()})
        return fmt(st["checkpoint_requests"]), fmt(drops)

    def _report(self, svc: SoakedService, out: OutdevReader, note: NotifyPeer, t: float) -> None:
        rss = svc.rss_kib()
        self.samples.append((t, rss))
        st = svc.stats()
        ckpt, drops = self._by_reason(st)
        state = ""
        if st:
            state = (f" held={st['held']['primary']}/{st['held']['secondary']}"
                     f" conns={st['connections']['count']}"
                     f" evicted={st['connections']['evicted']}")
        other = (f" (not compared {self.other['primary']}/{self.other['secondary']})"
                 if self.mode == "xdp" else "")
        self.say(f"t={t:6.0f}s rss={rss / 1024:7.1f}MiB in={self.sent['primary']}/"
                 f"{self.sent['secondary']}{other} out={out.received}{state} "
                 f"checkpoints: requested={note.requests} done={note.checkpoints} [{ckpt}] "
                 f"drops: [{drops}]")

    def _rss_verdict(self) -> tuple[bool, str]:
        n = len(self.samples)
        if n < 5:
            return True, "too short to judge RSS"
        fifth = max(n // 5, 1)
        warm = max(r for _, r in self.samples[fifth:2 * fifth])
        last = max(r for _, r in self.samples[-fifth:])
        ok = last <= warm * 1.10 + 16 * 1024
        return ok, f"RSS after warm-up {warm / 1024:.1f} MiB, at the end {last / 1024:.1f} MiB"

    def _accounting(self, summary: dict[str, tuple[int, ...]], out: OutdevReader,
                    final: dict | None) -> list[str]:
        """What does not add up between what was sent, what the service
        counted and what the outdev got."""
        fin_p, fin_s = summary["frames_in"]
        released, = summary["released"]
        drop_p, _drop_s = summary["dropped"]
        k_p, k_s = summary.get("kernel_dropped", (0, 0))
        problems = []
        for side, counted, kernel in (("primary", fin_p, k_p), ("secondary", fin_s, k_s)):
            want = self.sent[side] - (self.other[side] if self.mode == "xdp" else 0)
            if counted + kernel != want:
                what = "compared frames" if self.mode == "xdp" else "records"
                extra = f" + {kernel} dropped by the kernel" if self.mode == "xdp" else ""
                problems.append(f"{side}: wrote {want} {what}, it counted {counted}{extra}")
        if self.mode == "xdp":
            problems += self._verdict_problems(final)
            lost = out.kernel_drops()
            if lost:
                problems.append(f"the uplink's packet socket lost {lost} frames (not the "
                                "service's fault, but the outdev check is incomplete)")
        if released != out.received:
            problems.append(f"it released {released} frames, the outdev got {out.received}")
        if fin_p != released + drop_p:
            problems.append(f"primary: {fin_p} in, but {released} released + {drop_p} dropped")
        return problems + out.problems

    def _verdict_problems(self, final: dict | None) -> list[str]:
        """XDP: the classifier's counters against what was sent."""
        if not final:
            return ["no stats from the control socket at the end"]
        v = Counter(final["verdicts"])
        uncompared = sum(self.other.values()) + self.passthrough["primary"]
        compared = sum(self.sent.values()) - uncompared
        problems = []
        if v["compare"] != compared:
            problems.append(f"the classifiers sent {v['compare']} "
                            f"frames to be compared, {compared} were")
        not_compared = v["unsupported"] + v["malformed"] + v["passthrough"]
        if not_compared != uncompared:
            problems.append(f"the classifiers passed or dropped {v['unsupported']} + "
                            f"{v['malformed']} + {v['passthrough']} (passthrough) frames not "
                            f"compared, {uncompared} were sent")
        if v["no_socket"]:
            problems.append(f"{v['no_socket']} frames met a queue without a socket")
        return problems

    def _verdict(self, svc, out, note, alive, rc, summary_line, final) -> bool:
        life = []
        if not alive:
            life.append(f"colo-xdp exited early (status {svc.proc.returncode})")
        if rc != 0:
            life.append(f"exit status {rc} after SIGTERM")
        if any("Traceback" in line for line in svc.lines):
            life.append("a traceback in its log")
        summary = {k: tuple(map(int, v.split("/")))
                   for k, v in re.findall(r"(\w+)=(\d+(?:/\d+)?)", summary_line)}
        if not {"frames_in", "released", "dropped"} <= set(summary):
            problems = ["no 'stopped' summary"]
            summary = {"frames_in": (0, 0), "released": (0,), "dropped": (0, 0),
                       "checkpoints_requested": (0,)}
        else:
            problems = self._accounting(summary, out, final)
        problems = self.problems + problems
        rss_ok, rss_text = self._rss_verdict()
        self.say("RSS samples (s, MiB): " + " ".join(
            f"{t:.0f}:{r / 1024:.1f}" for t, r in self.samples))
        if final:
            ckpt, drops = self._by_reason(final)
            extra = (f", xdp verdicts {dict(sorted(final['verdicts'].items()))}"
                     if final.get("verdicts") else "")
            mism = " ".join(f"{k}={v}" for k, v in sorted(final["mismatches"].items()) if v)
            self.say(f"before stop: checkpoints by reason [{ckpt}], mismatches by kind "
                     f"[{mism or '-'}], drops by reason [{drops}]{extra}")
        done = ", ".join(f"{n} {what}" for what, n in sorted(self.notes.items()))
        self.say(f"{summary_line.removeprefix('colo-xdp: ') or 'no summary'}; notify peer saw "
                 f"{note.requests} requests and answered {note.checkpoints} checkpoints"
                 + (f"; {done}" if done else ""))
        fin_p, fin_s = summary["frames_in"]
        drop_p, drop_s = summary["dropped"]
        kernel = summary.get("kernel_dropped")
        ok = not life and not problems and rss_ok
        self.verdict = (
            f"verdict {'PASS' if ok else 'FAIL'}: alive={'yes' if not life else 'NO'}, "
            f"accounted={'yes' if not problems else 'NO'} ({fin_p} primary frames in = "
            f"{summary['released'][0]} released + {drop_p} dropped, none held; {fin_s} "
            f"secondary in, {drop_s} dropped"
            + (f"; {kernel[0]}/{kernel[1]} dropped by the kernel" if kernel else "")
            + f"), rss={'bounded' if rss_ok else 'GREW'} ({rss_text}), "
            f"{summary['checkpoints_requested'][0]} checkpoints requested"
            + "".join(f"; {p}" for p in life + problems))
        self.say(self.verdict)
        return ok


MODES = ("chardev", "xdp")


def xdp_problem() -> str | None:
    """Why XDP mode cannot be soaked here, in one sentence; None if it can."""
    from colo_xdp.transport.xdp import classifier as xdp
    return xdp.unavailable()


def soak(modes: list[str], args, echo: Callable[[str], None] = print) -> bool:
    """Run each mode's soak at the same time; the last line judges them all."""
    stop = threading.Event()
    soaks = [Soak(mode, args, echo, stop) for mode in modes]
    errors: dict[str, BaseException] = {}

    def run(s: Soak) -> None:
        try:
            s.run()
        except BaseException as exc:       # noqa: BLE001 - reported below, by mode
            errors[s.mode] = exc
            stop.set()

    threads = [threading.Thread(target=run, args=(s,), name=s.mode) for s in soaks]
    for t in threads:
        t.start()
    try:
        for t in threads:
            while t.is_alive():
                t.join(0.5)
    except KeyboardInterrupt:
        stop.set()
        for t in threads:
            t.join(60)
        raise
    for mode, exc in errors.items():
        if not isinstance(exc, SoakError):
            raise exc
        raise SoakError(f"{mode}: {exc}")
    ok = all(s.ok for s in soaks)
    echo(f"soak: verdict {'PASS' if ok else 'FAIL'}: " + "; ".join(
        f"{s.mode} {'PASS' if s.ok else 'FAIL'}" for s in soaks))
    return ok


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tools.soak",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--mode", choices=("both", *MODES), default="both",
                   help="which services to soak (default both, at the same time)")
    p.add_argument("--seconds", type=float,
                   default=float(os.environ.get("SOAK_SECONDS", 600)))
    p.add_argument("--rate", type=int, default=4000,
                   help="frame pairs a second, per mode (default 4000)")
    p.add_argument("--report-every", type=float, default=30.0, metavar="SECONDS")
    p.add_argument("--seed", type=int, default=1)
    return p


def _interrupt(*_args) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    modes = list(MODES) if args.mode == "both" else [args.mode]
    if "xdp" in modes:
        why = xdp_problem()
        if why:
            print(f"soak: error: XDP mode cannot run here: {why} "
                  "('--mode chardev' soaks chardev mode alone)", file=sys.stderr)
            return 2
    lock = threading.Lock()
    signal.signal(signal.SIGTERM, _interrupt)   # clean up as on ^C: no namespace left

    def echo(text: str) -> None:
        with lock:
            print(text, flush=True)
    try:
        ok = soak(modes, args, echo)
    except SoakError as exc:
        print(f"soak: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("soak: interrupted; the services, namespaces and sockets are removed",
              file=sys.stderr)
        return 130
    return 0 if ok else 1


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
