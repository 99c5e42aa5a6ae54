"""``colo-xdp demo``: a scripted COLO scenario through the real service.

The demo starts ``colo-xdp compare`` as a subprocess, as a user would, with
its four sockets as unix servers in a temporary directory, and plays every
peer around it: the primary and the secondary guest, the outdev reader and
the COLO frame on notify-dev::

    demo ─ pin.sock ─▶ ┐                     ┌─▶ out.sock ─▶ demo: decode, attribute
                       ├─ colo-xdp compare ──┤
    demo ─ sin.sock ─▶ ┘    (subprocess)     └─▶ notify.sock ◀▶ demo: the COLO frame
                                 └─ stderr: checkpoint_requested reason=... ─▶ demo

The scenario is data: phases of steps, each step one write (or a wait for
the service's clock) and what docs/compare-rules.md says must follow from it.
A step waits for what it expects, then stays quiet for ``SETTLE_S`` so that
the service sees writes to different sockets in script order.  Whatever
arrives in a step's window is put down to that step: that is how a release
gets its *why* (a release after a secondary frame is a match, after
``COLO_CHECKPOINT`` a flush).  At the end the demo checks what came out
against the scenario and against the service's own ``stopped`` counters.

Everything runs in one thread around one selector; the service process and
the temporary directory are removed on every path, Ctrl-C and SIGTERM included.
"""
from __future__ import annotations

import contextlib
import enum
import os
import selectors
import shlex
import signal
import socket
import struct
import tempfile
import textwrap
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

from colo_xdp.errors import LabError
from colo_xdp.lab.process import ProcessError, SupervisedProcess, colo_xdp_command
from colo_xdp.proto.notify import CHECKPOINT_DONE, DO_CHECKPOINT, PROXY_INIT, PROXY_INIT_REPLY
from colo_xdp.lab.pktgen import (ARP_REPLY, ETH_P_ARP, ETH_P_IP, IPPROTO_ICMP, IPPROTO_TCP,
                             IPPROTO_UDP, TCP_ACK, TCP_FIN, TCP_PSH, TCP_RST, TCP_SYN, TCP_URG,
                             EtherAddrs, IPv4Fields, arp_frame, icmp_echo_frame, tcp_frame,
                             udp_frame)
from colo_xdp.proto.framing import Decoder, FramingError, encode
from colo_xdp.proto.inet import PROTO_BY_NUMBER

# The service runs with short timers so that the timeout phase takes < 0.5 s.
COMPARE_TIMEOUT_MS = 300
EXPIRED_SCAN_CYCLE_MS = 100

SETTLE_S = 0.02          # quiet after every step: keeps writes to two sockets in order
STEP_TIMEOUT_S = 1.0     # how long a step waits for what it expects
SCAN_TIMEOUT_S = 2.0     # ... and a step that waits for the expiry scan
READY_TIMEOUT_S = 10.0   # for the service to bind its sockets and log "ready"
STOP_TIMEOUT_S = 3.0     # for the service to exit after SIGTERM (it drains up to 2 s)

LOG_PREFIX = "colo-xdp: "
SOCKETS = {"pin": "--primary-in", "sin": "--secondary-in", "out": "--outdev",
           "notify": "--notify-dev"}

# What the demo sees, by where it came from.
OUT = "out"          # a frame released on the outdev
NOTIFY = "notify"    # a message from the service on notify-dev
LOG = "log"          # a line of the service's stderr


class DemoError(LabError):
    """The demo could not run (the service did not start, a socket failed);
    the message is one sentence."""


# --- decoding frames ------------------------------------------------------------

@dataclass(frozen=True)
class Decoded:
    """The columns the demo prints for a frame, and its connection."""

    proto: str
    src: str
    dst: str
    detail: str
    conn: str            # as the service logs it (ConnKey), "-" when not compared
    compared: bool       # IPv4: compared; anything else passes through
    tcp_payload: int | None = None


_TCP_FLAGS = ((TCP_FIN, "F"), (TCP_SYN, "S"), (TCP_RST, "R"), (TCP_PSH, "P"),
              (TCP_ACK, "."), (TCP_URG, "U"))     # tcpdump's notation and order
_ICMP_TYPES = {0: "echo-reply", 8: "echo-request"}


def _ip4(raw: bytes) -> str:
    return socket.inet_ntoa(raw)


def decode(frame: bytes) -> Decoded:
    """Columns for one Ethernet frame (no vnet header); never raises."""
    if len(frame) < 14:
        return Decoded("?", "-", "-", f"runt, {len(frame)} bytes", "-", False)
    (ethertype,) = struct.unpack_from("!H", frame, 12)
    if ethertype == ETH_P_ARP and len(frame) >= 42:
        (op,) = struct.unpack_from("!H", frame, 20)
        what = {1: "who-has", 2: "is-at"}.get(op, f"op {op}")
        return Decoded("ARP", _ip4(frame[28:32]), _ip4(frame[38:42]), what, "-", False)
    if ethertype != ETH_P_IP or len(frame) < 34:
        return Decoded(f"0x{ethertype:04x}", "-", "-", f"{len(frame)} bytes", "-", False)
    ip = frame[14:]
    ihl = (ip[0] & 0x0F) * 4
    (total,) = struct.unpack_from("!H", ip, 2)
    proto, saddr, daddr = ip[9], _ip4(ip[12:16]), _ip4(ip[16:20])
    l4 = ip[ihl:total]
    name = PROTO_BY_NUMBER.get(proto, f"ip{proto}")
    if proto in (IPPROTO_TCP, IPPROTO_UDP) and len(l4) >= 8:
        sport, dport = struct.unpack_from("!HH", l4)
        conn = f"{name} {saddr}:{sport} > {daddr}:{dport}"
        src, dst = f"{saddr}:{sport}", f"{daddr}:{dport}"
        if proto == IPPROTO_UDP:
            return Decoded("UDP", src, dst, f"len={len(l4) - 8}", conn, True)
        if len(l4) >= 20:
            (seq,) = struct.unpack_from("!I", l4, 4)
            payload = len(l4) - (l4[12] >> 4) * 4
            flags = "".join(c for bit, c in _TCP_FLAGS if l4[13] & bit)
            return Decoded("TCP", src, dst, f"[{flags}] seq={seq} len={payload}", conn, True,
                           payload)
    conn = f"{name} {saddr}:0 > {daddr}:0"
    if proto == IPPROTO_ICMP and len(l4) >= 8:
        kind, _, _, _, seq = struct.unpack_from("!BBHHH", l4)
        what = _ICMP_TYPES.get(kind, f"type {kind}")
        return Decoded("ICMP", saddr, daddr, f"{what} seq={seq}", conn, True)
    return Decoded(name.upper(), saddr, daddr, f"len={len(l4)}", conn, True)


def _conn_columns(conn: str) -> tuple[str, str, str]:
    """(proto, source, destination) from a logged ``udp 1.2.3.4:5 > 6.7.8.9:10``."""
    proto, _, rest = conn.partition(" ")
    src, _, dst = rest.partition(" > ")
    if proto not in ("tcp", "udp"):          # no ports: drop the ":0"
        src, dst = src.rsplit(":", 1)[0], dst.rsplit(":", 1)[0]
    return (proto.upper() or "-"), (src or "-"), (dst or "-")


# --- the scenario ---------------------------------------------------------------------

class Act(enum.Enum):
    """What a step does."""

    PRIMARY = "primary in"           # write a frame on primary-in
    SECONDARY = "secondary in"       # write a frame on secondary-in
    COLO_CHECKPOINT = "COLO frame"   # write COLO_CHECKPOINT on notify-dev
    SCAN = "waiting"                 # write nothing: let the service's clock run


@dataclass(frozen=True)
class Step:
    """One thing the demo does, and what the compare rules say follows from it."""

    act: Act
    frame: bytes = b""
    label: str = ""
    releases: tuple[bytes, ...] = ()          # primary frames released, in this order
    checkpoint: tuple[str, str] | None = None  # (reason, conn) of a checkpoint request
    drops: tuple[str, ...] = ()               # reasons of secondary frames dropped

    @property
    def timeout(self) -> float:
        return SCAN_TIMEOUT_S if self.act is Act.SCAN else STEP_TIMEOUT_S


@dataclass(frozen=True)
class Phase:
    title: str
    story: str
    steps: tuple[Step, ...]


def release_reason(act: Act, frame: bytes) -> str:
    """Why a frame was released, from what triggered it (the engine's names)."""
    if act is Act.COLO_CHECKPOINT:
        return "flushed"
    if act is Act.SCAN:
        return "on its own"      # never expected: a timeout releases nothing
    d = decode(frame)
    if not d.compared:
        return "unsupported"
    if d.tcp_payload == 0:
        return "no_payload"
    return "matched"


GUEST_IP = "10.0.0.2"          # the protected guest: the primary and the secondary VM
CLIENT_IP = "10.0.0.100"
LOGHOST_IP = "10.0.0.50"
GUEST_MAC = "52:54:00:12:34:56"
CLIENT_MAC = "52:54:00:ab:cd:ef"
LOGHOST_MAC = "52:54:00:00:00:50"
QUERY_PORT, QUERY_CLIENT_PORT = 7000, 40000
HTTP_PORT, HTTP_CLIENT_PORT = 80, 51000
SYSLOG_SPORT, SYSLOG_PORT = 5140, 514
GUEST_ISN, CLIENT_ISN = 1000, 5000
HTTP_REQUEST_LEN = 79          # what the client sent; the guest acknowledges it
HTTP_RESPONSE_LEN = 300


def _http_response(size: int = HTTP_RESPONSE_LEN) -> bytes:
    head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n"
    body_len = size - len(head % 100)
    body = (b"COLO keeps the secondary VM in lockstep. " * 10)[:body_len]
    return head % body_len + body


class _Guest:
    """One VM's output.  Both VMs send the same frames except for what colo
    never compares: each numbers its IP packets on its own and has its own
    TCP window."""

    def __init__(self, first_ip_id: int, window: int):
        self._ip_id = first_ip_id
        self._window = window

    def _ip(self) -> IPv4Fields:
        self._ip_id = (self._ip_id + 1) & 0xFFFF
        return IPv4Fields(ident=self._ip_id)

    def arp_reply(self) -> bytes:
        return arp_frame(ARP_REPLY, sender_ip=GUEST_IP, target_ip=CLIENT_IP,
                         sender_mac=GUEST_MAC, target_mac=CLIENT_MAC,
                         eth=EtherAddrs(GUEST_MAC, CLIENT_MAC))

    def echo_reply(self, seq: int) -> bytes:
        return icmp_echo_frame(bytes(range(0x10, 0x30)), ident=0x4D2, seq=seq, reply=True,
                               src=GUEST_IP, dst=CLIENT_IP, ip=self._ip(),
                               eth=EtherAddrs(GUEST_MAC, CLIENT_MAC))

    def udp(self, payload: bytes, sport: int, dst: str, dport: int, mac: str) -> bytes:
        return udp_frame(payload, src=GUEST_IP, dst=dst, sport=sport, dport=dport,
                         ip=self._ip(), eth=EtherAddrs(GUEST_MAC, mac))

    def tcp(self, seq: int, flags: int, payload: bytes = b"",
            ack: int = CLIENT_ISN + 1 + HTTP_REQUEST_LEN) -> bytes:
        return tcp_frame(payload, src=GUEST_IP, dst=CLIENT_IP, sport=HTTP_PORT,
                         dport=HTTP_CLIENT_PORT, seq=seq, ack=ack, flags=flags,
                         window=self._window, ip=self._ip(),
                         eth=EtherAddrs(GUEST_MAC, CLIENT_MAC))


def _p(frame: bytes, label: str, *, releases: Sequence[bytes] = ()) -> Step:
    return Step(Act.PRIMARY, frame, label, tuple(releases))


def _s(frame: bytes, label: str, *, releases: Sequence[bytes] = (),
       checkpoint: str | None = None, drops: Sequence[str] = ()) -> Step:
    ckpt = (checkpoint, decode(frame).conn) if checkpoint else None
    return Step(Act.SECONDARY, frame, label, tuple(releases), ckpt, tuple(drops))


def _colo(*, releases: Sequence[bytes] = (), drops: Sequence[str] = ()) -> Step:
    return Step(Act.COLO_CHECKPOINT, releases=tuple(releases), drops=tuple(drops))


def _scan(reason: str, of: bytes) -> Step:
    return Step(Act.SCAN, checkpoint=(reason, decode(of).conn))


def scenario() -> list[Phase]:
    """The demo's script: five phases, each with what must come out."""
    pri, sec = _Guest(0x1000, 64256), _Guest(0x5000, 65160)

    arp = pri.arp_reply()
    arp_phase = Phase(
        "ARP reply: not IPv4, so not compared",
        "The guest answers who-has 10.0.0.2. The primary's reply goes out at once\n"
        "(unsupported); the secondary's copy is dropped.",
        (_p(arp, "ARP reply", releases=[arp]),
         _s(sec.arp_reply(), "ARP reply", drops=["unsupported"])))

    e1, e2, e3 = (pri.echo_reply(n) for n in (1, 2, 3))
    icmp_phase = Phase(
        "ICMP echo replies",
        "10.0.0.100 pings the guest. Replies match from the ICMP header on (the VMs'\n"
        "IP ids differ and are not compared). The secondary runs ahead on seq 2.",
        (_p(e1, "echo reply 1"),
         _s(sec.echo_reply(1), "echo reply 1", releases=[e1]),
         _s(sec.echo_reply(2), "echo reply 2"),
         _p(e2, "echo reply 2", releases=[e2]),
         _p(e3, "echo reply 3"),
         _s(sec.echo_reply(3), "echo reply 3", releases=[e3])))

    def answer(guest: _Guest, text: bytes) -> bytes:
        return guest.udp(text, QUERY_PORT, CLIENT_IP, QUERY_CLIENT_PORT, CLIENT_MAC)

    r1, r2 = answer(pri, b"OK 1 temperature=21.5C"), answer(pri, b"OK 2 temperature=21.6C")
    r3 = answer(pri, b"OK 3 time=1700000000.120")
    udp_phase = Phase(
        "UDP request/response, one answer differs",
        "A query service on 10.0.0.2:7000 answers 10.0.0.100. Answer 3 carries each\n"
        "VM's own clock: a mismatch, so a checkpoint is requested; the COLO frame's\n"
        "COLO_CHECKPOINT then flushes the held primary frame.",
        (_p(r1, "answer 1"),
         _s(answer(sec, b"OK 1 temperature=21.5C"), "answer 1", releases=[r1]),
         _p(r2, "answer 2"),
         _s(answer(sec, b"OK 2 temperature=21.6C"), "answer 2", releases=[r2]),
         _p(r3, "answer 3"),
         _s(answer(sec, b"OK 3 time=1700000000.134"), "answer 3 (differs)",
            checkpoint="mismatch"),
         _colo(releases=[r3], drops=["flushed"])))

    body = _http_response()
    seq0 = GUEST_ISN + 1
    syn_ack, ack = pri.tcp(GUEST_ISN, TCP_SYN | TCP_ACK, ack=CLIENT_ISN + 1), pri.tcp(seq0, TCP_ACK)
    d1, d2, d3 = (pri.tcp(seq0 + off, TCP_ACK | (TCP_PSH if off == 200 else 0),
                          body[off:off + 100]) for off in (0, 100, 200))
    fin = pri.tcp(seq0 + 300, TCP_FIN | TCP_ACK)
    last_ack = pri.tcp(seq0 + 301, TCP_ACK, ack=CLIENT_ISN + 2 + HTTP_REQUEST_LEN)
    tcp_phase = Phase(
        "TCP session, the secondary segments differently",
        "10.0.0.100 fetches 300 bytes from 10.0.0.2:80. The primary sends them as\n"
        "3 x 100 bytes, the secondary as 2 x 150: compared by sequence range, not by\n"
        "segment. Segments without payload (SYN-ACK, ACK, FIN) go out once the\n"
        "secondary has sent its own.",
        (_p(syn_ack, "SYN-ACK"),
         _s(sec.tcp(GUEST_ISN, TCP_SYN | TCP_ACK, ack=CLIENT_ISN + 1), "SYN-ACK",
            releases=[syn_ack]),
         _p(ack, "ACK of the request"),
         _s(sec.tcp(seq0, TCP_ACK), "ACK of the request", releases=[ack]),
         _p(d1, "bytes 0-99"),
         _s(sec.tcp(seq0, TCP_ACK, body[:150]), "bytes 0-149", releases=[d1]),
         _p(d2, "bytes 100-199"),
         _p(d3, "bytes 200-299"),
         _s(sec.tcp(seq0 + 150, TCP_ACK | TCP_PSH, body[150:]), "bytes 150-299",
            releases=[d2, d3]),
         _p(fin, "FIN"),
         _s(sec.tcp(seq0 + 300, TCP_FIN | TCP_ACK), "FIN", releases=[fin]),
         _p(last_ack, "ACK of the client's FIN"),
         _s(sec.tcp(seq0 + 301, TCP_ACK, ack=CLIENT_ISN + 2 + HTTP_REQUEST_LEN),
            "ACK of the client's FIN", releases=[last_ack])))

    def log_line(text: bytes) -> bytes:
        return pri.udp(text, SYSLOG_SPORT, LOGHOST_IP, SYSLOG_PORT, LOGHOST_MAC)

    l1, l2 = log_line(b"<14>guest: backup started"), log_line(b"<14>guest: backup done")
    silent_phase = Phase(
        "The secondary stays silent",
        f"The guest logs to 10.0.0.50:514; the secondary never sends its copy. Nothing\n"
        f"goes out until a frame is older than --compare-timeout ({COMPARE_TIMEOUT_MS} ms): "
        f"the scan\n(every {EXPIRED_SCAN_CYCLE_MS} ms) requests a checkpoint and the flush "
        f"releases both, in order.",
        (_p(l1, "log line 1"),
         _p(l2, "log line 2"),
         _scan("timeout", l1),
         _colo(releases=[l1, l2])))

    return [arp_phase, icmp_phase, udp_phase, tcp_phase, silent_phase]


def check_scenario(phases: Sequence[Phase]) -> None:
    """Refuse a script the cross-check cannot judge: primary frames must be
    unique, and each expected release must name one already sent, once."""
    sent: set[bytes] = set()
    expected: Counter[bytes] = Counter()
    for phase in phases:
        for step in phase.steps:
            if step.act is Act.PRIMARY:
                if step.frame in sent:
                    raise ValueError(f"{phase.title}: {step.label} is sent twice on primary-in")
                sent.add(step.frame)
            for frame in step.releases:
                if frame not in sent:
                    raise ValueError(f"{phase.title}: a release names a frame not sent yet")
                expected[frame] += 1
    if set(expected) != sent or any(n != 1 for n in expected.values()):
        raise ValueError("the scenario must expect every primary frame released exactly once")


# --- the service and the demo's ends of its sockets ---------------------------------------

def service_argv(directory: Path) -> list[str]:
    """``colo-xdp compare`` as a user runs it: the colo-xdp script installed next
    to this Python (else the same CLI through ``-m``), every socket a server."""
    argv = [*colo_xdp_command(), "compare"]
    for name, option in SOCKETS.items():
        argv += [option, f"unix:{directory / name}.sock,server=on"]
    return argv + ["--compare-timeout", str(COMPARE_TIMEOUT_MS),
                   "--expired-scan-cycle", str(EXPIRED_SCAN_CYCLE_MS)]


@contextlib.contextmanager
def _service(argv: list[str]) -> Iterator[SupervisedProcess]:
    """Run the service for the block; it is gone when the block ends, however it ends
    (SIGTERM, SIGKILL after STOP_TIMEOUT_S or on Ctrl-C).  Its stderr is the Link's
    to read, with the sockets."""
    proc = SupervisedProcess(command=argv, capture=False)
    try:
        proc.start()
    except ProcessError as exc:
        raise DemoError(str(exc)) from None
    try:
        yield proc
    finally:
        proc.stop(STOP_TIMEOUT_S)


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """SIGTERM ends the demo like Ctrl-C does, through every cleanup."""
    def interrupt(_signum, _frame):
        raise KeyboardInterrupt
    try:
        previous = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:            # not the main thread: leave SIGTERM alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@dataclass(frozen=True)
class Seen:
    """One thing that came from the service, with its monotonic time."""

    t: float
    kind: str              # OUT, NOTIFY or LOG
    data: bytes | str


class Link:
    """The demo's ends of the service's four sockets and of its stderr.

    Writes are blocking and small; everything the service sends is read in
    ``pump``, one selector, and appended to ``seen`` in arrival order.
    """

    def __init__(self, proc: SupervisedProcess, directory: Path):
        self.proc = proc
        self.directory = directory
        self.seen: list[Seen] = []
        self.sel = selectors.DefaultSelector()
        self.socks: dict[str, socket.socket] = {}
        self.stopping = False
        self._stderr_tail = b""
        self._open = {LOG}
        self.sel.register(proc.stderr, selectors.EVENT_READ, self._read_stderr)

    def close(self) -> None:
        for sock in self.socks.values():
            sock.close()
        self.socks.clear()
        self.sel.close()

    # -- reading ----------------------------------------------------------------

    def _read_stderr(self, fileobj) -> None:
        data = os.read(fileobj.fileno(), 65536)
        if not data:
            self.sel.unregister(fileobj)
            self._open.discard(LOG)
            data = b"\n" if self._stderr_tail else b""
        lines = (self._stderr_tail + data).split(b"\n")
        self._stderr_tail = lines.pop()
        now = time.monotonic()
        for line in lines:
            self.seen.append(Seen(now, LOG, line.decode(errors="replace")))

    def _reader(self, kind: str, sock: socket.socket):
        decoder = Decoder(vnet=False)

        def read(_fileobj) -> None:
            try:
                data = sock.recv(65536)
            except ConnectionError:
                data = b""
            if not data:
                self.sel.unregister(sock)
                self._open.discard(kind)
                return
            try:
                records = decoder.feed(data)
            except FramingError as exc:
                raise DemoError(f"the service's {kind} stream is not chardev framing: "
                                f"{exc}") from None
            now = time.monotonic()
            self.seen.extend(Seen(now, kind, r.frame) for r in records)
        return read

    def pump(self, timeout: float, until: Callable[[], bool] | None = None) -> bool:
        """Read for ``timeout`` seconds, or until ``until()`` holds (then True)."""
        deadline = time.monotonic() + timeout
        while True:
            if until is not None and until():
                return True
            if not self.stopping and self.proc.poll() is not None:
                raise DemoError(f"colo-xdp compare exited with status {self.proc.returncode}"
                                f": {self.log_tail()}")
            left = deadline - time.monotonic()
            if left <= 0:
                return until is None
            if not self.sel.get_map():
                time.sleep(min(left, 0.01))
                continue
            for key, _ in self.sel.select(left):
                key.data(key.fileobj)

    def logs(self, start: int = 0) -> list[str]:
        return [s.data for s in self.seen[start:] if s.kind == LOG]

    def log_tail(self, lines: int = 3) -> str:
        text = [line for line in self.logs() if line.strip()][-lines:]
        return " | ".join(text) or "(it logged nothing)"

    def closed(self, kind: str) -> bool:
        return kind not in self._open

    # -- setting up -------------------------------------------------------------------

    def wait_ready(self) -> None:
        if not self.pump(READY_TIMEOUT_S, lambda: LOG_PREFIX + "ready" in self.logs()):
            raise DemoError(f"colo-xdp compare was not ready after {READY_TIMEOUT_S:.0f} s: "
                            f"{self.log_tail()}")

    def connect(self) -> None:
        """outdev and notify-dev first (nothing released may be missed), then the inputs;
        returns once the service has accepted all four and answered the handshake."""
        for name in ("out", "notify", "pin", "sin"):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.socks[name] = sock
            try:
                sock.connect(str(self.directory / f"{name}.sock"))
            except OSError as exc:
                raise DemoError(f"cannot connect to the service's {name}.sock: "
                                f"{exc.strerror}") from None
        for name, kind in (("out", OUT), ("notify", NOTIFY)):
            self._open.add(kind)
            self.sel.register(self.socks[name], selectors.EVENT_READ,
                              self._reader(kind, self.socks[name]))

        def accepted() -> bool:
            return sum(line.startswith(LOG_PREFIX + "connected ")
                       for line in self.logs()) >= len(SOCKETS)
        self.write_notify(PROXY_INIT)
        if not self.pump(READY_TIMEOUT_S, lambda: accepted() and PROXY_INIT_REPLY in [
                s.data for s in self.seen if s.kind == NOTIFY]):
            raise DemoError("the service did not accept all four connections and answer "
                            f"{PROXY_INIT.decode()}: {self.log_tail()}")

    # -- writing -----------------------------------------------------------------------

    def write_frame(self, name: str, frame: bytes) -> None:
        self.socks[name].sendall(encode(frame))

    def write_notify(self, message: bytes) -> None:
        self.socks["notify"].sendall(encode(message))

    def stop(self) -> int:
        """SIGTERM the service and read until it has exited and closed its end;
        return where its last words start in ``seen``."""
        start = len(self.seen)
        self.stopping = True
        self.proc.terminate()
        self.pump(STOP_TIMEOUT_S, lambda: self.proc.poll() is not None
                  and self.closed(LOG) and self.closed(OUT))
        return start


# --- playing the scenario ---------------------------------------------------------------

def parse_log(line: str) -> tuple[str, dict[str, str]] | None:
    """``colo-xdp: EVENT key=value ...`` into (EVENT, fields), else None."""
    if not line.startswith(LOG_PREFIX):
        return None
    try:
        words = shlex.split(line[len(LOG_PREFIX):])
    except ValueError:
        return None
    if not words:
        return None
    return words[0], dict(word.partition("=")[::2] for word in words[1:])


# Log events the demo shows in other ways, or that say nothing about frames.
_QUIET_EVENTS = {"ready", "connected", "notify_init", "checkpoint_done", "stopped"}


@dataclass
class Outcome:
    """What a step (or the service's stop) caused, as the demo saw it."""

    released: list[tuple[float, bytes]] = field(default_factory=list)
    checkpoints: list[tuple[float, str, str]] = field(default_factory=list)  # t, reason, conn
    drops: list[tuple[float, str, str, str]] = field(default_factory=list)  # t, side, reason, conn
    do_checkpoints: int = 0
    requests_logged: int = 0
    other: list[tuple[float, str]] = field(default_factory=list)
    stopped: dict[str, str] | None = None

    @classmethod
    def from_seen(cls, seen: Sequence[Seen]) -> "Outcome":
        out = cls()
        ckpt_times, reasons = [], []
        for s in seen:
            if s.kind == OUT:
                out.released.append((s.t, s.data))
            elif s.kind == NOTIFY:
                if s.data == DO_CHECKPOINT:
                    ckpt_times.append(s.t)
                else:
                    out.other.append((s.t, f"notify-dev: {s.data[:40]!r}"))
            elif (parsed := parse_log(s.data)) is None:
                if s.data.strip():
                    out.other.append((s.t, s.data))
            elif parsed[0] == "checkpoint_requested":
                reasons.append((s.t, parsed[1].get("reason", "?"), parsed[1].get("conn", "-")))
            elif parsed[0] == "frame_dropped":
                f = parsed[1]
                out.drops.append((s.t, f.get("side", "?"), f.get("reason", "?"),
                                  f.get("conn", "-")))
            elif parsed[0] == "stopped":
                out.stopped = parsed[1]
            elif parsed[0] not in _QUIET_EVENTS:
                out.other.append((s.t, s.data[len(LOG_PREFIX):]))
        out.do_checkpoints, out.requests_logged = len(ckpt_times), len(reasons)
        # The k-th DO_CHECKPOINT is the k-th request the service logged.
        for i in range(max(len(ckpt_times), len(reasons))):
            t, reason, conn = reasons[i] if i < len(reasons) else (ckpt_times[i], "?", "-")
            out.checkpoints.append((ckpt_times[i] if i < len(ckpt_times) else t, reason, conn))
        return out


def play(link: Link, step: Step) -> tuple[float, Outcome, bool]:
    """Do one step; wait for what it expects, then SETTLE_S of quiet.

    Returns when it was done, what followed, and whether all that was
    expected arrived in time."""
    start = len(link.seen)
    t = time.monotonic()
    if step.act is Act.PRIMARY:
        link.write_frame("pin", step.frame)
    elif step.act is Act.SECONDARY:
        link.write_frame("sin", step.frame)
    elif step.act is Act.COLO_CHECKPOINT:
        link.write_notify(CHECKPOINT_DONE)
    want_ckpt = 1 if step.checkpoint else 0

    def arrived() -> bool:
        got = Outcome.from_seen(link.seen[start:])
        return (len(got.released) >= len(step.releases) and got.do_checkpoints >= want_ckpt
                and got.requests_logged >= want_ckpt and len(got.drops) >= len(step.drops))
    met = link.pump(step.timeout, arrived)
    link.pump(SETTLE_S)
    return t, Outcome.from_seen(link.seen[start:]), met


# --- what the demo prints ------------------------------------------------------------------

ROW = "{t:>6}  {event:<13} {proto:<5} {src:<15} {dst:<17} {detail:<22} {why}"
HEADER_ROW = ROW.format(t="ms", event="event", proto="proto", src="source",
                        dst="destination", detail="detail", why="why")


class Labels:
    """Names for messages: a primary frame by its step's label."""

    def __init__(self, phases: Sequence[Phase]):
        self._names = {step.frame: step.label for phase in phases for step in phase.steps
                       if step.act is Act.PRIMARY}

    def __call__(self, frame: bytes) -> str:
        d = decode(frame)
        name = self._names.get(frame, "a frame no primary sent")
        return f"{name} ({d.proto} {d.src} > {d.dst} {d.detail})"

    def many(self, frames: Sequence[bytes]) -> str:
        return ", ".join(self._names.get(f, decode(f).detail) for f in frames) or "nothing"


def _row(t: float, event: str, proto: str = "-", src: str = "-", dst: str = "-",
         detail: str = "", why: str = "") -> str:
    return ROW.format(t=f"{t * 1000:.0f}", event=event, proto=proto, src=src, dst=dst,
                      detail=detail, why=why).rstrip()


def outcome_rows(t0: float, step: Step | None, outcome: Outcome) -> list[str]:
    """One line per event, in arrival order; ``step`` None: the service's stop."""
    rows: list[tuple[float, int, str]] = []
    for i, (t, frame) in enumerate(outcome.released):
        d = decode(frame)
        why = release_reason(step.act, frame) if step else "at exit"
        rows.append((t, i, _row(t - t0, "released", d.proto, d.src, d.dst, d.detail, why)))
    for t, reason, conn in outcome.checkpoints:
        rows.append((t, 0, _row(t - t0, "checkpoint", *_conn_columns(conn),
                                "DO_CHECKPOINT", reason)))
    for t, side, reason, conn in outcome.drops:
        columns = _conn_columns(conn)
        if conn == "-" and step is not None and step.act is Act.SECONDARY:
            d = decode(step.frame)         # no connection logged: the frame just sent
            columns = (d.proto, d.src, d.dst)
        rows.append((t, 0, _row(t - t0, "dropped", *columns, f"{side} frame", reason)))
    for t, text in outcome.other:
        rows.append((t, 0, _row(t - t0, "service", detail=text)))
    return [text for _, _, text in sorted(rows, key=lambda r: (r[0], r[1]))]


def step_row(t0: float, t: float, step: Step) -> str:
    if step.act is Act.COLO_CHECKPOINT:
        return _row(t - t0, step.act.value, detail=CHECKPOINT_DONE.decode())
    if step.act is Act.SCAN:
        return _row(t - t0, step.act.value, detail=f"expiry scan, every {EXPIRED_SCAN_CYCLE_MS} ms")
    d = decode(step.frame)
    return _row(t - t0, step.act.value, d.proto, d.src, d.dst, d.detail)


def step_differences(step: Step, outcome: Outcome, met: bool, labels: Labels) -> list[str]:
    """How what followed a step differs from what the scenario expects of it."""
    diffs = []
    got = [frame for _, frame in outcome.released]
    if got != list(step.releases):
        diffs.append(f"released {labels.many(got)}; expected {labels.many(step.releases)}")
    got_ckpt = [(reason, conn) for _, reason, conn in outcome.checkpoints]
    want_ckpt = [step.checkpoint] if step.checkpoint else []
    if got_ckpt != want_ckpt:
        diffs.append(f"checkpoint requests: {_requests(got_ckpt)}; "
                     f"expected {_requests(want_ckpt)}")
    if outcome.do_checkpoints != outcome.requests_logged:
        diffs.append(f"{outcome.do_checkpoints} DO_CHECKPOINT on notify-dev but "
                     f"{outcome.requests_logged} checkpoint_requested lines logged")
    got_drops = sorted((side, reason) for _, side, reason, _ in outcome.drops)
    want_drops = sorted(("secondary", reason) for reason in step.drops)
    if got_drops != want_drops:
        show = lambda d: ", ".join(f"{s} {r}" for s, r in d) or "none"  # noqa: E731
        diffs.append(f"drops: {show(got_drops)}; expected {show(want_drops)}")
    if not met and not diffs:
        diffs.append("what was expected arrived late")
    return diffs


def _requests(requests: Sequence[tuple[str, str]]) -> str:
    """``mismatch on udp ..., 3 x timeout on udp ...``: repeats counted, in order."""
    counted = Counter(requests)
    parts = [f"{'' if n == 1 else f'{n} x '}{reason} on {conn}"
             for (reason, conn), n in counted.items()]
    return ", ".join(parts) or "none"


def order_differences(sent: Sequence[bytes], released: Sequence[bytes],
                      labels: Labels) -> list[str]:
    """The demo's invariant, independent of the step expectations: every primary
    frame released exactly once, and per connection in the order sent."""
    diffs = []
    counts = Counter(released)
    for frame in sent:
        if counts[frame] != 1:
            diffs.append(f"{labels(frame)} was released {counts[frame]} times, not once")
    known = set(sent)
    for frame in dict.fromkeys(f for f in released if f not in known):
        diffs.append(f"{labels(frame)} came out of the outdev")
    flows: dict[str, list[bytes]] = {}
    for frame in sent:
        d = decode(frame)
        flows.setdefault(d.conn if d.compared else d.proto, []).append(frame)
    for flow, frames in flows.items():
        members = set(frames)
        out = list(dict.fromkeys(f for f in released if f in members))
        if out != [f for f in frames if f in set(out)]:
            diffs.append(f"{flow}: released as {labels.many(out)}, sent as {labels.many(frames)}")
    return diffs


# Counts are keyed (kind, reason): ("in", side), ("released", why),
# ("checkpoints", reason), ("dropped primary" | "dropped secondary", reason).
TOTALS = (("in primary", "frames in, primary"), ("in secondary", "frames in, secondary"),
          ("released", "released"), ("checkpoints", "checkpoints requested"),
          ("dropped primary", "dropped, primary"), ("dropped secondary", "dropped, secondary"))


def _total_key(key: tuple[str, str]) -> str:
    return f"in {key[1]}" if key[0] == "in" else key[0]


def totals(counts: Counter) -> Counter:
    out: Counter = Counter()
    for key, n in counts.items():
        out[_total_key(key)] += n
    return out


def expected_counts(phases: Sequence[Phase]) -> Counter:
    """What the scenario says the demo will see."""
    counts: Counter = Counter()
    for phase in phases:
        for step in phase.steps:
            if step.act in (Act.PRIMARY, Act.SECONDARY):
                counts["in", step.act.name.lower()] += 1
            for frame in step.releases:
                counts["released", release_reason(step.act, frame)] += 1
            if step.checkpoint:
                counts["checkpoints", step.checkpoint[0]] += 1
            for reason in step.drops:
                counts["dropped secondary", reason] += 1
    return counts


def seen_counts(played: Sequence[tuple[Step | None, Outcome]]) -> Counter:
    """What the demo saw; a step of None stands for the service's stop."""
    counts: Counter = Counter()
    for step, outcome in played:
        if step is not None and step.act in (Act.PRIMARY, Act.SECONDARY):
            counts["in", step.act.name.lower()] += 1
        for _, frame in outcome.released:
            counts["released", release_reason(step.act, frame) if step else "at exit"] += 1
        for _, reason, _ in outcome.checkpoints:
            counts["checkpoints", reason] += 1
        for _, side, reason, _ in outcome.drops:
            counts[f"dropped {side}", reason] += 1
    return counts


def service_counts(stopped: dict[str, str] | None) -> dict[str, int]:
    """The service's ``stopped frames_in=P/S released=N dropped=P/S
    checkpoints_requested=N`` line as totals; {} when missing or unreadable."""
    if not stopped:
        return {}
    try:
        fin_p, fin_s = stopped["frames_in"].split("/")
        drop_p, drop_s = stopped["dropped"].split("/")
        return {"in primary": int(fin_p), "in secondary": int(fin_s),
                "released": int(stopped["released"]),
                "checkpoints": int(stopped["checkpoints_requested"]),
                "dropped primary": int(drop_p), "dropped secondary": int(drop_s)}
    except (KeyError, ValueError):
        return {}


def summary_lines(seen: Counter, service: dict[str, int], expected: Counter) -> list[str]:
    """The cross-check table: the demo, the service and the scenario side by side."""
    fmt = "  {:<26}{:>6}{:>9}{:>10}"
    lines = ["Summary", fmt.format("", "seen", "service", "expected")]
    seen_t, expected_t = totals(seen), totals(expected)
    for total, label in TOTALS:
        lines.append(fmt.format(label, seen_t[total], service.get(total, "-"),
                                expected_t[total]))
        if total.startswith("in "):
            continue
        for key in sorted({k for k in (*seen, *expected) if k[0] == total}):
            lines.append(fmt.format(f"  {key[1]}", seen[key], "", expected[key]))
    return lines


def count_differences(seen: Counter, service: dict[str, int], expected: Counter) -> list[str]:
    diffs = []
    for key in sorted(set(seen) | set(expected)):
        if seen[key] != expected[key]:
            diffs.append(f"{' '.join(key)}: seen {seen[key]}, expected {expected[key]}")
    seen_t = totals(seen)
    for key, value in service.items():
        if value != seen_t[key]:
            diffs.append(f"{key}: the service counted {value}, the demo saw {seen_t[key]}")
    return diffs


# --- the command --------------------------------------------------------------------------------

def _header(say: Callable[[str], None], argv: list[str], directory: Path, pid: int,
            ready_ms: float) -> None:
    shown = shlex.join(argv).replace(str(directory), "$DIR")
    wrapped = textwrap.wrap(shown, 84, break_on_hyphens=False, break_long_words=False)
    say("colo-xdp demo: a scripted COLO scenario through a real colo-xdp compare")
    say(f"  service  {wrapped[0]}")
    for part in wrapped[1:]:
        say(f"             {part}")
    say(f"  DIR      {directory}")
    say(f"  pid      {pid}, ready after {ready_ms:.0f} ms; notify-dev answered "
        f"{PROXY_INIT.decode()} with {PROXY_INIT_REPLY.decode()}")
    say("  The guest is 10.0.0.2 on both VMs; ms counts from the first frame. A release's")
    say("  why follows from what triggered it; checkpoint and drop reasons are the")
    say("  service's own, from its log.")


def run(quiet: bool = False, echo: Callable[[str], None] = print,
        phases: Sequence[Phase] | None = None) -> bool:
    """Play ``phases`` (default: ``scenario()``) through a fresh ``colo-xdp
    compare``; print the events (unless ``quiet``) and the summary with ``echo``.

    True when everything came out as the scenario expects.  Raises DemoError
    when the demo cannot run, KeyboardInterrupt on Ctrl-C or SIGTERM; the
    service process and its directory are gone on every path.
    """
    phases = list(scenario() if phases is None else phases)
    check_scenario(phases)
    labels = Labels(phases)
    say = (lambda _line: None) if quiet else echo
    began = time.monotonic()
    played: list[tuple[Step, Outcome]] = []
    diffs: list[str] = []
    with (_sigterm_interrupts(),
          tempfile.TemporaryDirectory(prefix="colo-xdp-demo-") as tmp,
          _service(argv := service_argv(Path(tmp))) as proc):
        directory = Path(tmp)
        link = Link(proc, directory)
        try:
            link.wait_ready()
            ready_ms = (time.monotonic() - began) * 1000
            link.connect()
            _header(say, argv, directory, proc.pid, ready_ms)
            t0 = None
            for number, phase in enumerate(phases, 1):
                say("")
                say(f"Phase {number} of {len(phases)}: {phase.title}")
                for text in phase.story.splitlines():
                    say(f"  {text}")
                say("")
                say(HEADER_ROW)
                for step in phase.steps:
                    t, outcome, met = play(link, step)
                    t0 = t if t0 is None else t0
                    played.append((step, outcome))
                    say(step_row(t0, t, step))
                    for row in outcome_rows(t0, step, outcome):
                        say(row)
                    for diff in step_differences(step, outcome, met, labels):
                        diffs.append(f"{phase.title}, {step.label or step.act.value}: {diff}")
                        say(f"{'':>8}! {diff}")
            at_exit = Outcome.from_seen(link.seen[link.stop():])
            if proc.poll() is None:
                diffs.append(f"the service did not exit within {STOP_TIMEOUT_S:.0f} s "
                             "of SIGTERM")
            elif proc.returncode != 0 or not at_exit.stopped:
                diffs.append(f"the service exited with status {proc.returncode} and "
                             f"{'its' if at_exit.stopped else 'without its'} stopped "
                             f"line: {link.log_tail()}")
            if at_exit.released or at_exit.drops or at_exit.other:
                say("")
                say("After SIGTERM")
                for row in outcome_rows(t0 or began, None, at_exit):
                    say(row)
            if at_exit.released:
                diffs.append(f"still held when the service stopped: "
                             f"{labels.many([f for _, f in at_exit.released])}")
        finally:
            link.close()

    everything = [*played, (None, at_exit)]
    sent = [step.frame for step, _ in played if step.act is Act.PRIMARY]
    released = [frame for _, outcome in everything for _, frame in outcome.released]
    order = order_differences(sent, released, labels)
    seen, expected = seen_counts(everything), expected_counts(phases)
    service = service_counts(at_exit.stopped)
    diffs += order + count_differences(seen, service, expected)
    say("")
    for line in summary_lines(seen, service, expected):
        echo(line)
    echo("")
    echo("  every primary frame released exactly once, in per-connection order: "
         + ("yes" if not order else "NO"))
    if diffs:
        echo("")
        echo(f"Differences from the scenario ({len(diffs)})")
        for diff in dict.fromkeys(diffs):
            echo(f"  - {diff}")
    took = time.monotonic() - began
    echo("")
    echo(f"colo-xdp demo: {'as expected' if not diffs else 'NOT as expected'} "
         f"({took:.1f} s)")
    return not diffs
