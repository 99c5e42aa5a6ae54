"""make soak: minutes of mixed traffic through a real `colo-xdp compare`.

    python -m colo_xdp.soak [--seconds 600] [--rate 4000] [--report-every 30]

Chardev mode on unix sockets in a temporary directory, with every peer
played here: the primary and secondary inputs, the outdev, and a notify-dev
peer that answers each DO_CHECKPOINT with a COLO_CHECKPOINT a moment later,
as the COLO frame does.  The traffic mixes

* matched UDP pairs on more flows than --max-connections (idle connections
  are evicted all the time), ICMP echoes, ARP (not compared);
* TCP flows cut into segments differently on each side, with pure ACKs;
* now and then a mismatch, a primary frame with no secondary (timeout), a
  flood past --max-queue-size, a zero-length record on the secondary input
  and a primary peer that leaves mid-frame (both reconnect at once).

Every --report-every seconds a line gives the colo-xdp process's RSS, frames
in and out, checkpoints by reason and drops by reason (exact, from
--metrics; from the rate-limited logs if the service has no metrics).  At the
end the service is stopped with SIGTERM and a verdict line says PASS or FAIL:

* alive: the process ran until told to stop, exited 0 and printed its summary;
* accounted: it counted every record this driver wrote, on both inputs; the
  outdev got exactly the frames it says it released, each once, each flow's
  in order, none unknown; and released + dropped = frames in (nothing held
  after the exit flush);
* RSS bounded: the peak of the last fifth of the run is within 10% + 16 MiB
  of the peak after warm-up (the second fifth).
"""
from __future__ import annotations

import argparse
import os
import random
import re
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from colo_xdp import pktgen as g
from colo_xdp.harness import default_colo_xdp_exe

MAX_QUEUE = 256
MAX_CONNECTIONS = 4096
UDP_FLOWS = 6000          # more than MAX_CONNECTIONS: eviction never stops
TCP_FLOWS = 64
COMPARE_TIMEOUT_MS = 500
SCAN_MS = 100
CHECKPOINT_DELAY_S = 0.01  # the notify peer's answer to DO_CHECKPOINT
MAGIC = b"SOAK"
UDP_DPORT, MISMATCH_DPORT, LONELY_DPORT, FLOOD_DPORT = 5000, 5001, 5002, 5003
TCP_SPORT = 20000
WRAP = 1 << 32

DO_CHECKPOINT = g.encode(b"DO_CHECKPOINT")
COLO_CHECKPOINT = g.encode(b"COLO_CHECKPOINT")
SECONDARY_IP = g.IPv4Fields(ttl=63, ident=7)
SECONDARY_MAC = g.EtherAddrs(src="52:54:00:00:00:aa", dst="52:54:00:00:00:bb")


class SoakError(RuntimeError):
    """The soak could not run (not: the service failed it)."""


# -- traffic ------------------------------------------------------------------------------

def _seq_after(a: int, b: int) -> bool:
    return 0 < (a - b) % WRAP < (1 << 31)


@dataclass
class Traffic:
    """Builds both sides' records; remembers what it wrote."""

    rnd: random.Random
    udp_seq: Counter = field(default_factory=Counter)
    tcp_seq: dict = field(default_factory=dict)
    sent: Counter = field(default_factory=Counter)     # records written, by side

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
    """One batch of records for each side."""

    def __init__(self):
        self.p: list[bytes] = []
        self.s: list[bytes] = []

    def pair(self, prim: bytes, sec: bytes | None) -> None:
        self.p.append(prim)
        if sec is not None:
            self.s.append(sec)


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
    """Reads released frames; checks each flow's order and that it knows them."""

    def __init__(self, sock: socket.socket):
        super().__init__(daemon=True)
        self.sock = sock
        self.received = 0
        self.problems: list[str] = []
        self.udp_last: dict = {}
        self.tcp_last: dict = {}
        self.start()

    def run(self) -> None:
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


class Service:
    """The `colo-xdp compare` process under soak."""

    def __init__(self, exe: Path, work: Path, metrics_port: int | None):
        self.work = work
        self.metrics_port = metrics_port
        server = lambda name: f"unix:{work / name},server=on"  # noqa: E731
        argv = [str(exe), "compare", "--primary-in", server("pin"), "--secondary-in",
                server("sin"), "--outdev", server("out"), "--notify-dev", server("notify"),
                "--max-queue-size", str(MAX_QUEUE), "--max-connections", str(MAX_CONNECTIONS),
                "--compare-timeout", str(COMPARE_TIMEOUT_MS), "--expired-scan-cycle",
                str(SCAN_MS)]
        if metrics_port:
            argv += ["--metrics", f"127.0.0.1:{metrics_port}"]
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True, errors="replace")
        self.lines: list[str] = []
        self.logged = Counter()            # (event, reason, side) -> count, from the logs
        self.ready = threading.Event()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        if not self.ready.wait(20):
            self.kill()
            raise SoakError("colo-xdp compare did not get ready:\n" + "\n".join(self.lines))

    def _read(self) -> None:
        for line in self.proc.stderr:
            line = line.rstrip("\n")
            self.lines = self.lines[-300:] + [line]
            if line == "colo-xdp: ready":
                self.ready.set()
            m = re.match(r"colo-xdp: (frame_dropped|checkpoint_requested) (.*)", line)
            if m:
                fields = dict(re.findall(r"(\w+)=(\S+)", m.group(2)))
                key = (m.group(1), fields.get("reason"), fields.get("side", ""))
                self.logged[key] += 1 + int(fields.get("suppressed", 0))

    def rss_kib(self) -> int:
        try:
            text = Path(f"/proc/{self.proc.pid}/status").read_text()
        except OSError:
            return 0
        m = re.search(r"VmRSS:\s+(\d+) kB", text)
        return int(m.group(1)) if m else 0

    def metrics(self) -> dict[tuple, float] | None:
        if not self.metrics_port:
            return None
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics",
                                        timeout=5) as resp:
                text = resp.read().decode()
        except OSError:
            return None
        out = {}
        for m in re.finditer(r"^(colo_xdp_\w+?)(?:\{(.*?)\})? ([0-9.e+-]+)$", text, re.M):
            labels = tuple(sorted(re.findall(r'(\w+)="([^"]*)"', m.group(2) or "")))
            out[(m.group(1), labels)] = float(m.group(3))
        return out

    def stop(self) -> tuple[int, str]:
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.kill()
            rc = -9
        self.reader.join(5)
        return rc, next((ln for ln in reversed(self.lines) if " stopped " in ln), "")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _supports_metrics(exe: Path) -> bool:
    out = subprocess.run([str(exe), "compare", "--help"], capture_output=True, text=True)
    return "--metrics" in out.stdout


# -- the run ----------------------------------------------------------------------------------

class Soak:
    def __init__(self, args, echo=print):
        self.args = args
        self.echo = echo
        self.rnd = random.Random(args.seed)
        self.traffic = Traffic(self.rnd)
        self.samples: list[tuple[float, int]] = []
        self.truncated = 0
        self.empty = 0

    def run(self) -> bool:
        exe = default_colo_xdp_exe()
        if exe is None:
            raise SoakError("colo-xdp is not installed: run 'make setup'")
        with tempfile.TemporaryDirectory(prefix="cx-soak-") as tmp:
            work = Path(tmp)
            port = _free_port() if _supports_metrics(exe) else None
            svc = Service(exe, work, port)
            try:
                return self._run(svc, work)
            finally:
                svc.kill()

    def _run(self, svc: Service, work: Path) -> bool:
        out = OutdevReader(_connect(work / "out"))
        note = NotifyPeer(_connect(work / "notify"))
        self.pin, self.sin = _connect(work / "pin"), _connect(work / "sin")
        self.work = work
        self.echo(f"soak: colo-xdp pid {svc.proc.pid}, {self.args.seconds} s, "
                  f"{self.args.rate} pairs/s, max_queue_size {MAX_QUEUE}, max_connections "
                  f"{MAX_CONNECTIONS}, {UDP_FLOWS} UDP + {TCP_FLOWS} TCP flows, counters from "
                  f"{'--metrics' if svc.metrics_port else 'the logs (rate-limited)'}")
        start = time.monotonic()
        next_report = start
        alive = True
        pairs_due = 0.0
        last = start
        events = {"mismatch": 2.0, "lonely": 3.0, "flood": 11.0, "empty": 17.0, "cut": 23.0}
        next_event = {k: start + v for k, v in events.items()}
        while True:
            now = time.monotonic()
            if now - start >= self.args.seconds:
                break
            if svc.proc.poll() is not None:
                alive = False
                break
            pairs_due += (now - last) * self.args.rate
            last = now
            rnd = Round()
            for _ in range(int(pairs_due)):
                self._mixed(rnd)
            pairs_due -= int(pairs_due)
            for name, at in next_event.items():
                if now >= at:
                    next_event[name] = now + events[name]
                    getattr(self, f"_{name}")(rnd)
            self._send(rnd)
            if now >= next_report:
                self._report(svc, out, note, now - start)
                next_report += self.args.report_every
            time.sleep(0.005)
        # Let the last frames arrive, then stop and judge.
        time.sleep(1.0)
        self._report(svc, out, note, time.monotonic() - start)
        final_metrics = svc.metrics()
        rc, summary = svc.stop() if alive else (svc.proc.returncode, "")
        out.join(10)
        return self._verdict(svc, out, note, alive, rc, summary, final_metrics)

    # traffic -------------------------------------------------------------------------------

    def _mixed(self, rnd: Round) -> None:
        r = self.rnd.random()
        if r < 0.80:
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

    def _mismatch(self, rnd: Round) -> None:
        rnd.pair(*self.traffic.udp(0, MISMATCH_DPORT, corrupt=True))

    def _lonely(self, rnd: Round) -> None:
        rnd.pair(self.traffic.udp(0, LONELY_DPORT)[0], None)

    def _flood(self, rnd: Round) -> None:
        for _ in range(MAX_QUEUE + 50):
            rnd.pair(self.traffic.udp(0, FLOOD_DPORT, size=8)[0], None)

    def _empty(self, rnd: Round) -> None:
        """A zero-length record on the secondary input: the service closes it;
        reconnect (after this round's records, so none is lost)."""
        self._send(rnd)
        rnd.p.clear()
        rnd.s.clear()
        self.sin.sendall(b"\0\0\0\0")
        self.traffic.sent["secondary"] += 1
        self.empty += 1
        self._wait_closed(self.sin)
        self.sin = _connect(self.work / "sin")

    def _cut(self, rnd: Round) -> None:
        """The primary peer leaves in the middle of a record; a new one comes."""
        self._send(rnd)
        rnd.p.clear()
        rnd.s.clear()
        frame = self.traffic.udp(1, LONELY_DPORT)[0]
        self.pin.sendall(g.encode(frame)[:10])
        self.traffic.sent["primary"] += 1
        self.truncated += 1
        self.pin.close()
        self.pin = _connect(self.work / "pin")

    @staticmethod
    def _wait_closed(sock: socket.socket) -> None:
        sock.settimeout(10)
        try:
            while sock.recv(65536):
                pass
        except OSError:
            pass
        sock.close()

    def _send(self, rnd: Round) -> None:
        if rnd.p:
            self.pin.sendall(b"".join(map(g.encode, rnd.p)))
            self.traffic.sent["primary"] += len(rnd.p)
        if rnd.s:
            self.sin.sendall(b"".join(map(g.encode, rnd.s)))
            self.traffic.sent["secondary"] += len(rnd.s)
        rnd.p.clear()
        rnd.s.clear()

    # reporting -----------------------------------------------------------------------------

    def _by_reason(self, svc: Service, m: dict | None) -> tuple[str, str]:
        if m is not None:
            ckpt = {dict(lb)["reason"]: int(v) for (n, lb), v in m.items()
                    if n == "colo_xdp_checkpoint_requests_total"}
            drops = {f"{dict(lb)['side'][0].upper()}.{dict(lb)['reason']}": int(v)
                     for (n, lb), v in m.items() if n == "colo_xdp_dropped_frames_total"}
        else:
            ckpt = {r: n for (ev, r, _), n in svc.logged.items() if ev == "checkpoint_requested"}
            drops = {f"{s[0].upper()}.{r}": n for (ev, r, s), n in svc.logged.items()
                     if ev == "frame_dropped"}
        fmt = lambda d: " ".join(f"{k}={v}" for k, v in sorted(d.items()) if v) or "-"  # noqa: E731
        return fmt(ckpt), fmt(drops)

    def _report(self, svc: Service, out: OutdevReader, note: NotifyPeer, t: float) -> None:
        rss = svc.rss_kib()
        self.samples.append((t, rss))
        m = svc.metrics()
        ckpt, drops = self._by_reason(svc, m)
        held = ""
        if m is not None:
            held = " held=" + "/".join(str(int(m.get(("colo_xdp_queued_frames", (("side", s),)), 0)))
                                       for s in ("primary", "secondary"))
            held += (f" conns={int(m.get(('colo_xdp_connections', ()), 0))}"
                     f" evicted={int(m.get(('colo_xdp_connections_evicted_total', ()), 0))}")
        sent = self.traffic.sent
        self.echo(f"soak t={t:6.0f}s rss={rss / 1024:7.1f}MiB in={sent['primary']}/"
                  f"{sent['secondary']} out={out.received}{held} "
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

    def _verdict(self, svc, out, note, alive, rc, summary, m) -> bool:
        life = []
        if not alive:
            life.append(f"colo-xdp exited early (status {svc.proc.returncode})")
        if rc != 0:
            life.append(f"exit status {rc} after SIGTERM")
        if any("Traceback" in line for line in svc.lines):
            life.append("a traceback in its log")
        problems = []
        match = re.search(r"frames_in=(\d+)/(\d+) released=(\d+) dropped=(\d+)/(\d+) "
                          r"checkpoints_requested=(\d+)", summary)
        if not match:
            problems.append("no 'stopped' summary")
            fin_p = fin_s = released = drop_p = drop_s = ckpts = 0
        else:
            fin_p, fin_s, released, drop_p, drop_s, ckpts = map(int, match.groups())
        sent = self.traffic.sent
        if match and fin_p != sent["primary"]:
            problems.append(f"primary: wrote {sent['primary']} records, it counted {fin_p}")
        if match and fin_s != sent["secondary"]:
            problems.append(f"secondary: wrote {sent['secondary']} records, it counted {fin_s}")
        if match and released != out.received:
            problems.append(f"it released {released} frames, the outdev got {out.received}")
        if match and fin_p != released + drop_p:
            problems.append(f"primary: {fin_p} in, but {released} released + {drop_p} dropped")
        problems += out.problems
        rss_ok, rss_text = self._rss_verdict()
        self.echo("soak: RSS samples (s, MiB): " + " ".join(
            f"{t:.0f}:{r / 1024:.1f}" for t, r in self.samples))
        if m is not None:
            ckpt, drops = self._by_reason(svc, m)
            self.echo(f"soak: before stop, checkpoints by reason [{ckpt}], drops by reason "
                      f"[{drops}]")
        self.echo(f"soak: {summary.removeprefix('colo-xdp: ') or 'no summary'}; notify peer "
                  f"saw {note.requests} requests and answered {note.checkpoints} checkpoints; "
                  f"{self.truncated} primary records cut, {self.empty} zero-length secondary")
        ok = not life and not problems and rss_ok
        self.echo(f"soak: verdict {'PASS' if ok else 'FAIL'}: "
                  f"alive={'yes' if not life else 'NO'}, "
                  f"accounted={'yes' if not problems else 'NO'} ({fin_p} primary frames in = "
                  f"{released} released + {drop_p} dropped, none held; {fin_s} secondary in, "
                  f"{drop_s} dropped), rss={'bounded' if rss_ok else 'GREW'} ({rss_text}), "
                  f"{ckpts} checkpoints requested"
                  + "".join(f"; {p}" for p in life + problems))
        return ok


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m colo_xdp.soak",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float,
                   default=float(os.environ.get("SOAK_SECONDS", 600)))
    p.add_argument("--rate", type=int, default=4000, help="frame pairs a second (default 4000)")
    p.add_argument("--report-every", type=float, default=30.0, metavar="SECONDS")
    p.add_argument("--seed", type=int, default=1)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        ok = Soak(args, echo=lambda s: print(s, flush=True)).run()
    except SoakError as exc:
        print(f"soak: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("soak: interrupted; the service and its sockets are removed", file=sys.stderr)
        return 130
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
