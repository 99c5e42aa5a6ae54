"""colo-xdp compare end to end: the real CLI as a subprocess, driven over the
same chardev sockets QEMU would use.

Every test starts ``colo-xdp compare`` through the ``lab`` fixture, waits for
its ``colo-xdp: ready`` line, plays peers on its sockets and, at the end,
stops it with SIGTERM and reads its ``stopped ...`` summary.  The fixture
kills the process, closes every socket and removes its directory on every
path, and fails the test if the service ever printed a traceback.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import struct
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from colo_xdp.lab.process import ProcessError, SupervisedProcess, colo_xdp_command
from colo_xdp.lab.pktgen import (NET_BUFSIZE, EtherAddrs, IPv4Fields, Record, arp_frame,
                             encode, udp_frame, vnet_header)

TIMEOUT = 5.0             # any single wait in these tests
STOP_TIMEOUT = 5.0        # SIGTERM to exit

INIT_WIRE = b"\x00\x00\x00\x19COLO_USERSPACE_PROXY_INIT"
INIT_REPLY_WIRE = b"\x00\x00\x00\x19COLO_COMPARE_GET_XEN_INIT"
DO_CHECKPOINT_WIRE = b"\x00\x00\x00\x0dDO_CHECKPOINT"
COLO_CHECKPOINT_WIRE = b"\x00\x00\x00\x0fCOLO_CHECKPOINT"

SUMMARY = re.compile(r"^colo-xdp: stopped frames_in=(\d+)/(\d+) released=(\d+) "
                     r"dropped=(\d+)/(\d+) checkpoints_requested=(\d+)$")


def colo_xdp_argv() -> list[str]:
    """The installed console script next to this Python, else the module."""
    return colo_xdp_command()


# -- the service process ------------------------------------------------------------------

@dataclass(frozen=True)
class Summary:
    frames_in: tuple[int, int]        # primary, secondary
    released: int
    dropped: tuple[int, int]
    checkpoints: int


class Compare(SupervisedProcess):
    """One ``colo-xdp compare`` process; its stderr collected line by line."""

    def __init__(self, argv: list[str]):
        super().__init__(command=argv)
        self.start()

    def wait_line(self, pattern: str, timeout: float = TIMEOUT, start: int = 0) -> str:
        """The first stderr line (from index ``start``) matching regex ``pattern``."""
        try:
            return self.wait_for(pattern, timeout, start=start)
        except ProcessError:
            raise AssertionError(f"no stderr line matching {pattern!r}; "
                                 f"stderr so far:\n{self.log}") from None

    def stop(self) -> int:
        """SIGTERM (once); the exit status."""
        rc = super().stop(STOP_TIMEOUT)
        if self.killed:
            raise AssertionError(f"no exit {STOP_TIMEOUT} s after SIGTERM:\n{self.log}")
        return rc

    def stop_summary(self) -> Summary:
        """SIGTERM, a clean exit and the ``stopped ...`` line, parsed."""
        rc = self.stop()
        assert rc == 0, f"exit status {rc}:\n{self.log}"
        last = self.lines[-1] if self.lines else ""
        match = SUMMARY.match(last)
        assert match, f"last stderr line is not the summary:\n{self.log}"
        n = [int(x) for x in match.groups()]
        return Summary((n[0], n[1]), n[2], (n[3], n[4]), n[5])


# -- peers --------------------------------------------------------------------------------

class Peer:
    """One end of a chardev stream: framed frames out, framed records in."""

    def __init__(self, sock: socket.socket, vnet: bool = False):
        self.sock = sock
        self.vnet = vnet
        self.sock.settimeout(TIMEOUT)
        self.buf = bytearray()
        self.pos = 0

    # sending

    def send(self, *frames: bytes, vnet_hdr_len: int = 0) -> None:
        hdr = vnet_hdr_len if self.vnet else None
        self.sock.sendall(b"".join(encode(f, hdr) for f in frames))

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    # receiving

    def _fill(self, deadline: float) -> None:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"timed out with {len(self.buf) - self.pos} bytes buffered")
        self.sock.settimeout(left)
        try:
            data = self.sock.recv(1 << 20)
        except socket.timeout:
            raise AssertionError(
                f"timed out with {len(self.buf) - self.pos} bytes buffered") from None
        if not data:
            raise AssertionError("the service closed the stream")
        if self.pos > (1 << 20):
            del self.buf[:self.pos]
            self.pos = 0
        self.buf += data

    def read_bytes(self, n: int, timeout: float = TIMEOUT) -> bytes:
        deadline = time.monotonic() + timeout
        while len(self.buf) - self.pos < n:
            self._fill(deadline)
        data = bytes(self.buf[self.pos:self.pos + n])
        self.pos += n
        return data

    def records(self, n: int, timeout: float = TIMEOUT) -> list[Record]:
        head = 8 if self.vnet else 4
        deadline = time.monotonic() + timeout
        out: list[Record] = []
        while len(out) < n:
            avail = len(self.buf) - self.pos
            if avail >= head:
                size = struct.unpack_from(">I", self.buf, self.pos)[0]
                if avail >= head + size:
                    vlen = struct.unpack_from(">I", self.buf, self.pos + 4)[0] if self.vnet else 0
                    start = self.pos + head
                    out.append(Record(vlen, bytes(self.buf[start:start + size])))
                    self.pos = start + size
                    continue
            self._fill(deadline)
        return out

    def frames(self, n: int, timeout: float = TIMEOUT) -> list[bytes]:
        return [r.frame for r in self.records(n, timeout)]

    def expect_quiet(self, seconds: float = 0.15) -> None:
        """Nothing more arrives for ``seconds``."""
        assert len(self.buf) == self.pos, "unexpected bytes already buffered"
        self.sock.settimeout(seconds)
        try:
            data = self.sock.recv(65536)
        except socket.timeout:
            return
        finally:
            self.sock.settimeout(TIMEOUT)
        raise AssertionError(f"unexpected {'EOF' if not data else data[:64]!r}")

    def wait_closed(self, timeout: float = TIMEOUT) -> None:
        """The service closed this stream (EOF or reset); data before it ignored."""
        deadline = time.monotonic() + timeout
        while True:
            self.sock.settimeout(max(deadline - time.monotonic(), 0.001))
            try:
                if not self.sock.recv(65536):
                    return
            except (ConnectionResetError, BrokenPipeError):
                return
            except socket.timeout:
                raise AssertionError("the service did not close the stream") from None

    def close(self) -> None:
        self.sock.close()


class ServiceSandbox:
    """A temp directory, the processes and sockets of one test; all undone by close()."""

    def __init__(self):
        self.dir = Path(tempfile.mkdtemp(prefix="cx-svc-"))
        self.procs: list[Compare] = []
        self.socks: list[socket.socket] = []

    def path(self, name: str) -> str:
        return str(self.dir / name)

    def start(self, *, pin: str | None = None, sin: str | None = None, out: str | None = None,
              notify: str | bool = True, args: tuple[str, ...] = (),
              ready: bool = True) -> Compare:
        """Default roles: unix server sockets pin/sin/out/notify.sock in the lab dir."""
        def unix(name):
            return f"unix:{self.path(name)},server=on,wait=off"
        argv = colo_xdp_argv() + [
            "compare",
            "--primary-in", pin or unix("pin.sock"),
            "--secondary-in", sin or unix("sin.sock"),
            "--outdev", out or unix("out.sock")]
        if notify:
            argv += ["--notify-dev", unix("notify.sock") if notify is True else notify]
        proc = Compare(argv + list(args))
        self.procs.append(proc)
        if ready:
            proc.wait_line(r"^colo-xdp: ready$")
        return proc

    def track(self, sock: socket.socket) -> socket.socket:
        self.socks.append(sock)
        return sock

    def connect(self, name: str, vnet: bool = False) -> Peer:
        """A peer on the unix socket ``name`` of the lab dir."""
        sock = self.track(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))
        sock.settimeout(TIMEOUT)
        sock.connect(self.path(name))
        return Peer(sock, vnet)

    def connect_tcp(self, port: int, vnet: bool = False) -> Peer:
        sock = self.track(socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT))
        return Peer(sock, vnet)

    def listen_tcp(self, port: int) -> socket.socket:
        sock = self.track(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        sock.listen(4)
        sock.settimeout(TIMEOUT)
        return sock

    def accept(self, listener: socket.socket, vnet: bool = False) -> Peer:
        sock, _ = listener.accept()
        return Peer(self.track(sock), vnet)

    def close(self) -> list[str]:
        """Undo everything; return the problems found on the way (tracebacks)."""
        problems = []
        for sock in self.socks:
            sock.close()
        for proc in self.procs:
            proc.kill()
            if "Traceback" in proc.log:
                problems.append(f"{' '.join(proc.argv)} printed a traceback:\n{proc.log}")
        shutil.rmtree(self.dir, ignore_errors=True)
        return problems


@pytest.fixture
def lab():
    lab = ServiceSandbox()
    try:
        yield lab
    finally:
        problems = lab.close()
    assert not problems, "\n".join(problems)


def free_tcp_ports(n: int) -> list[int]:
    """Ports nobody listens on right now (the kernel's pick, then released)."""
    socks = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(n)]
    try:
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def connect_all(lab: ServiceSandbox, vnet: bool = False, notify: bool = True):
    """Outdev first (as with QEMU), then notify-dev, then both inputs."""
    out = lab.connect("out.sock", vnet)
    note = lab.connect("notify.sock") if notify else None
    return out, note, lab.connect("pin.sock", vnet), lab.connect("sin.sock", vnet)


def udp(tag: bytes, sport: int = 1000, **kw) -> bytes:
    return udp_frame(tag, sport=sport, **kw)


# -- compare and release ----------------------------------------------------------------

def test_udp_pair_released_byte_identical(lab):
    cmp = lab.start()
    out, _, pin, sin = connect_all(lab)
    primary = udp(b"hello colo", ip=IPv4Fields(ident=7, ttl=64))
    # Same L4 bytes, other MACs, IP id and TTL: still a match.
    secondary = udp(b"hello colo", ip=IPv4Fields(ident=9, ttl=63),
                    eth=EtherAddrs(src="52:54:00:00:00:09", dst="52:54:00:00:00:0a"))
    assert primary != secondary and len(primary) == len(secondary)
    pin.send(primary)
    sin.send(secondary)
    assert out.read_bytes(4 + len(primary)) == struct.pack(">I", len(primary)) + primary
    out.expect_quiet()

    s = cmp.stop_summary()
    assert s == Summary(frames_in=(1, 1), released=1, dropped=(0, 0), checkpoints=0)


def test_frames_wait_for_a_late_outdev(lab):
    """Released while nobody reads the outdev: held, not lost (QEMU loses them)."""
    lab.start(notify=False)
    pin, sin = lab.connect("pin.sock"), lab.connect("sin.sock")
    frames = [udp(b"early %d" % i) for i in range(3)]
    pin.send(*frames)
    sin.send(*frames)
    time.sleep(0.1)
    out = lab.connect("out.sock")
    assert out.frames(3) == frames


def test_tcp_server_endpoints(lab):
    ports = free_tcp_ports(4)
    pin_p, sin_p, out_p, note_p = ports
    cmp = lab.start(pin=f"tcp:127.0.0.1:{pin_p},server=on",
                    sin=f"tcp:localhost:{sin_p},server=on,wait=off",
                    out=f"tcp:127.0.0.1:{out_p},server=on",
                    notify=f"tcp:127.0.0.1:{note_p},server=on")
    out = lab.connect_tcp(out_p)
    note = lab.connect_tcp(note_p)
    pin, sin = lab.connect_tcp(pin_p), lab.connect_tcp(sin_p)
    note.send_raw(INIT_WIRE)
    assert note.read_bytes(len(INIT_REPLY_WIRE)) == INIT_REPLY_WIRE
    frames = [udp(b"over tcp %d" % i, sport=1000 + i % 2) for i in range(4)]
    pin.send(*frames)
    sin.send(*frames)
    assert out.frames(4) == frames
    assert cmp.stop_summary().released == 4


def test_service_as_tcp_client_reconnects_to_late_listeners(lab):
    pin_p, sin_p, out_p = free_tcp_ports(3)
    cmp = lab.start(pin=f"tcp:127.0.0.1:{pin_p},reconnect=0.1",
                    sin=f"tcp:127.0.0.1:{sin_p},reconnect=0.1",
                    out=f"tcp:127.0.0.1:{out_p},server=off,reconnect=0.1", notify=False)
    for role in ("outdev", "primary-in", "secondary-in"):
        cmp.wait_line(rf"connect_failed role={role} ")
    # Only now do the peers listen.
    out_l, pin_l, sin_l = (lab.listen_tcp(p) for p in (out_p, pin_p, sin_p))
    out, pin, sin = lab.accept(out_l), lab.accept(pin_l), lab.accept(sin_l)
    for role in ("outdev", "primary-in", "secondary-in"):
        cmp.wait_line(rf"^colo-xdp: connected role={role} ")
    first = udp(b"late listener")
    pin.send(first)
    sin.send(first)
    assert out.frames(1) == [first]

    # The outdev peer goes away: the service connects again on its own.
    mark = len(cmp.lines)
    out.close()
    cmp.wait_line(r"disconnected role=outdev ", start=mark)
    out = lab.accept(out_l)
    second = udp(b"after reconnect")
    pin.send(second)
    sin.send(second)
    assert out.frames(1) == [second]
    assert cmp.stop_summary().released == 2


def test_reconnect_to_a_silent_peer_does_not_stall_the_data_path(lab):
    """A notify-dev peer whose host drops SYNs: retries must not block the loop.

    A listener with a full accept queue drops further SYNs, so a connect to it
    neither succeeds nor fails for seconds; meanwhile pairs must flow."""
    (note_p,) = free_tcp_ports(1)
    cmp = lab.start(notify=f"tcp:127.0.0.1:{note_p},reconnect=0.1")
    cmp.wait_line(r"connect_failed role=notify-dev .*Connection refused")
    stuffed = lab.listen_tcp(note_p)
    stuffed.listen(0)                            # room for one connection, never accepted
    for _ in range(2):
        filler = lab.track(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
        filler.setblocking(False)
        filler.connect_ex(("127.0.0.1", note_p))
    out, pin, sin = lab.connect("out.sock"), lab.connect("pin.sock"), lab.connect("sin.sock")
    time.sleep(0.3)                              # a retry is under way by now
    for i in range(5):
        pair = udp(b"while notify-dev hangs %d" % i)
        t0 = time.monotonic()
        pin.send(pair)
        sin.send(pair)
        assert out.frames(1, timeout=2.0) == [pair]
        assert time.monotonic() - t0 < 0.5, f"pair {i} waited for a connect"
        time.sleep(0.05)
    assert cmp.stop_summary().released == 5


# -- checkpoints over notify-dev ------------------------------------------------------------

def test_mismatch_requests_checkpoint_and_colo_checkpoint_flushes(lab):
    cmp = lab.start()
    out, note, pin, sin = connect_all(lab)
    note.send_raw(INIT_WIRE)
    assert note.read_bytes(len(INIT_REPLY_WIRE)) == INIT_REPLY_WIRE

    primary, secondary = udp(b"primary says A"), udp(b"second says B")
    pin.send(primary)
    sin.send(secondary)
    assert note.read_bytes(len(DO_CHECKPOINT_WIRE)) == DO_CHECKPOINT_WIRE
    out.expect_quiet()                              # a mismatch releases nothing

    note.send_raw(struct.pack(">I", 5) + b"HELLO")  # unknown: logged, ignored
    cmp.wait_line(r"notify_unknown_message")
    out.expect_quiet(0.05)

    note.send_raw(COLO_CHECKPOINT_WIRE)
    assert out.frames(1) == [primary]               # the flush releases the primary
    cmp.wait_line(r"checkpoint_done")

    # The flush dropped the old secondary: the next pair matches cleanly.
    after = udp(b"after the checkpoint")
    pin.send(after)
    sin.send(after)
    assert out.frames(1) == [after]
    note.expect_quiet(0.05)                         # no further checkpoint request

    s = cmp.stop_summary()
    assert s == Summary(frames_in=(2, 2), released=2, dropped=(0, 1), checkpoints=1)


def test_sigusr1_fails_over(lab):
    """SIGUSR1 is the failover event: held primary frames are released, later
    primary frames pass straight through uncompared, secondary frames are
    dropped, and no checkpoint is requested any more."""
    cmp = lab.start()
    out, note, pin, sin = connect_all(lab)
    held = udp(b"held, never matched")
    pin.send(held)
    out.expect_quiet()
    cmp.proc.send_signal(signal.SIGUSR1)
    cmp.wait_line(r"colo-xdp: failover")
    assert out.frames(1) == [held]
    alone, different = udp(b"primary alone"), udp(b"secondary differs")
    pin.send(alone)
    assert out.frames(1) == [alone]
    sin.send(different)
    note.expect_quiet(0.1)
    s = cmp.stop_summary()
    assert s == Summary(frames_in=(2, 1), released=2, dropped=(0, 1), checkpoints=0)


def test_notify_split_across_writes(lab):
    lab.start()
    out, note, pin, sin = connect_all(lab)
    wire = INIT_WIRE + COLO_CHECKPOINT_WIRE
    for i in range(0, len(wire), 7):
        note.send_raw(wire[i:i + 7])
        time.sleep(0.005)
    assert note.read_bytes(len(INIT_REPLY_WIRE)) == INIT_REPLY_WIRE


# -- vnet headers ---------------------------------------------------------------------------

def test_vnet_hdr_support_round_trip(lab):
    cmp = lab.start(args=("--vnet-hdr-support",))
    out, note, pin, sin = connect_all(lab, vnet=True)
    frame = udp(b"with a vnet header")
    cases = [
        (12, vnet_header(12, b"\x01\x02\x03"), vnet_header(12, b"\xee")),
        (10, vnet_header(10, b"\x5a"), vnet_header(10)),
        (0, b"", b""),
    ]
    for hlen, p_hdr, s_hdr in cases:
        pin.send(p_hdr + frame, vnet_hdr_len=hlen)
        sin.send(s_hdr + frame, vnet_hdr_len=hlen)
        # u32be len | u32be vnet_hdr_len | the primary's header, unchanged | frame
        expected = struct.pack(">II", hlen + len(frame), hlen) + p_hdr + frame
        assert out.read_bytes(len(expected)) == expected

    # notify-dev with vnet on: the peer adds u32be 0; colo-xdp never does.
    note.send_raw(struct.pack(">II", 25, 0) + b"COLO_USERSPACE_PROXY_INIT")
    assert note.read_bytes(len(INIT_REPLY_WIRE)) == INIT_REPLY_WIRE
    p_bad = vnet_header(12, b"\x07") + udp(b"left")
    pin.send(p_bad, vnet_hdr_len=12)
    sin.send(vnet_header(12) + udp(b"rite"), vnet_hdr_len=12)
    assert note.read_bytes(len(DO_CHECKPOINT_WIRE)) == DO_CHECKPOINT_WIRE
    note.send_raw(struct.pack(">II", 15, 0) + b"COLO_CHECKPOINT")
    expected = struct.pack(">II", len(p_bad), 12) + p_bad
    assert out.read_bytes(len(expected)) == expected

    s = cmp.stop_summary()
    assert s == Summary(frames_in=(4, 4), released=4, dropped=(0, 1), checkpoints=1)


# -- broken input streams --------------------------------------------------------------------

@pytest.mark.parametrize("side, bad, reason", [
    pytest.param("primary", b"\0\0\0\0", "empty", id="zero-length-primary"),
    pytest.param("secondary", b"\0\0\0\0", "empty", id="zero-length-secondary"),
    pytest.param("primary", b"\x7f\xff\xff\xff", "oversize", id="0x7fffffff-primary"),
    pytest.param("secondary", struct.pack(">I", NET_BUFSIZE + 1), "oversize",
                 id="netbufsize+1-secondary"),
])
def test_broken_framing_closes_only_that_stream(lab, side, bad, reason):
    cmp = lab.start(notify=False)
    out = lab.connect("out.sock")
    sock_name = {"primary": "pin.sock", "secondary": "sin.sock"}
    peers = {"primary": lab.connect("pin.sock"), "secondary": lab.connect("sin.sock")}
    other = "secondary" if side == "primary" else "primary"
    a = [udp(b"flow a %d" % i) for i in range(3)]
    held = udp(b"held across the break", sport=3000)

    peers[other].send(*a)                       # sent earlier on the other input
    peers[side].send(a[0])
    assert out.frames(1) == [a[0]]
    peers["primary"].send(held)                 # queued: no secondary for it yet
    # A whole frame in the same write as the bad record still counts.
    peers[side].send_raw(encode(a[1]) + bad + b"bytes after the broken record")
    peers[side].wait_closed()
    cmp.wait_line(rf"stream_broken role={side}-in reason={reason}")
    assert out.frames(1) == [a[1]]

    peers[side] = lab.connect(sock_name[side])  # reconnect: compare goes on
    peers[side].send(a[2])
    assert out.frames(1) == [a[2]]
    peers["secondary"].send(held)
    assert out.frames(1) == [held]
    out.expect_quiet()

    s = cmp.stop_summary()
    bad_in = (1, 0) if side == "primary" else (0, 1)
    assert s.frames_in == (4 + bad_in[0], 4 + bad_in[1])
    assert s.dropped == bad_in
    assert (s.released, s.checkpoints) == (4, 0)


@pytest.mark.parametrize("side", ["primary", "secondary"])
def test_peer_gone_mid_frame_is_counted_and_next_peer_works(lab, side):
    cmp = lab.start(notify=False)
    out = lab.connect("out.sock")
    sock_name = {"primary": "pin.sock", "secondary": "sin.sock"}
    peers = {"primary": lab.connect("pin.sock"), "secondary": lab.connect("sin.sock")}
    other = "secondary" if side == "primary" else "primary"
    a = [udp(b"cut %d" % i) for i in range(3)]

    peers[other].send(*a)
    cut = encode(a[1])[:20]                     # header and part of the frame
    peers[side].send_raw(encode(a[0]) + cut)
    assert out.frames(1) == [a[0]]
    peers[side].close()
    line = cmp.wait_line(rf"frame_dropped side={side} reason=truncated")
    assert f"bytes={len(cut)}" in line

    peers[side] = lab.connect(sock_name[side])  # the partial must not leak into it
    peers[side].send(a[1], a[2])
    assert out.frames(2) == a[1:]
    out.expect_quiet()

    s = cmp.stop_summary()
    assert s.dropped == ((1, 0) if side == "primary" else (0, 1))
    assert (s.released, s.checkpoints) == (3, 0)
    assert cmp.count(r"frame_dropped .*reason=truncated") == 1, cmp.log


# -- backpressure ---------------------------------------------------------------------------

class PairSender(threading.Thread):
    """Sends pre-framed batches alternately on the two inputs; blocking sends
    under the sockets' timeout, so it can never hang the test."""

    def __init__(self, pin: Peer, sin: Peer, batches: list[bytes]):
        super().__init__(daemon=True)
        self.pin, self.sin, self.batches = pin, sin, batches
        self.sent = 0
        self.error: Exception | None = None

    def run(self) -> None:
        try:
            for batch in self.batches:
                self.pin.sock.sendall(batch)
                self.sin.sock.sendall(batch)
                self.sent += 1
        except OSError as exc:
            self.error = exc


def test_slow_outdev_backpressure_keeps_everything_in_order(lab):
    pairs, flows, per_batch = 50_000, 16, 32
    templates = []
    for flow in range(flows):
        t = bytearray(udp_frame(bytes(300), sport=20000 + flow))
        t[40:42] = b"\0\0"                      # UDP checksum 0: "none", valid in IPv4
        templates.append(bytes(t))
    frames = [templates[i % flows][:42] + struct.pack(">I", i) + templates[0][46:]
              for i in range(pairs)]
    wire = [encode(f) for f in frames]
    batches = [b"".join(wire[i:i + per_batch]) for i in range(0, pairs, per_batch)]

    cmp = lab.start(notify=False)
    out, _, pin, sin = connect_all(lab, notify=False)
    for peer in (pin, sin):
        peer.sock.settimeout(20.0)              # the sender's deadline
    sender = PairSender(pin, sin, batches)
    sender.start()

    # Nobody reads the outdev: the service must stop reading its inputs, so
    # the sender stalls long before it is done.
    cmp.wait_line(r"backpressure on=True")
    last, still_since = -1, time.monotonic()
    while time.monotonic() - still_since < 0.3:
        if sender.sent != last:
            last, still_since = sender.sent, time.monotonic()
        assert sender.is_alive(), f"sender finished or failed ({sender.error})"
        time.sleep(0.02)
    assert sender.sent < len(batches)

    got = out.frames(pairs, timeout=20.0)       # now read it all
    sender.join(TIMEOUT)
    assert not sender.is_alive() and sender.error is None
    assert len(got) == pairs
    first_bad = next((i for i, (g, f) in enumerate(zip(got, frames)) if g != f), None)
    assert first_bad is None, f"frame {first_bad} out of order or altered"
    out.expect_quiet()
    cmp.wait_line(r"backpressure on=False")

    s = cmp.stop_summary()
    assert s == Summary(frames_in=(pairs, pairs), released=pairs, dropped=(0, 0),
                        checkpoints=0)


# -- non-IP frames -------------------------------------------------------------------------

def test_primary_arp_passes_secondary_arp_dropped(lab):
    cmp = lab.start(notify=False)
    out, _, pin, sin = connect_all(lab, notify=False)
    arp = arp_frame()
    pin.send(arp)                                # no secondary needed
    assert out.read_bytes(4 + len(arp)) == struct.pack(">I", len(arp)) + arp
    sin.send(arp)                                # dropped, never output
    cmp.wait_line(r"frame_dropped side=secondary reason=unsupported")
    pair = udp(b"after arp")
    pin.send(pair)
    sin.send(pair)
    assert out.frames(1) == [pair]
    out.expect_quiet()

    s = cmp.stop_summary()
    assert s == Summary(frames_in=(2, 2), released=2, dropped=(0, 1), checkpoints=0)


# -- stopping -------------------------------------------------------------------------------

def test_sigterm_flushes_exits_zero_and_removes_sockets(lab):
    cmp = lab.start()
    out, note, pin, sin = connect_all(lab)
    pair, alone = udp(b"matched"), udp(b"unmatched", sport=4000)
    pin.send(pair, alone)
    sin.send(pair)
    assert out.frames(1) == [pair]
    out.expect_quiet()

    cmp.terminate()
    assert out.frames(1) == [alone]              # held frames are delivered at exit
    out.wait_closed()
    s = cmp.stop_summary()
    assert s == Summary(frames_in=(2, 1), released=2, dropped=(0, 0), checkpoints=0)
    assert os.listdir(lab.dir) == []             # every unix socket file removed


def test_sigterm_without_peers(lab):
    cmp = lab.start()
    assert sorted(os.listdir(lab.dir)) == ["notify.sock", "out.sock", "pin.sock", "sin.sock"]
    assert cmp.stop_summary() == Summary((0, 0), 0, (0, 0), 0)
    assert os.listdir(lab.dir) == []
