"""``colo-xdp demo``: COLO compare on real traffic, in a lab built on this host.

Two "guests" (network namespaces behind veth pairs that stand for their taps,
with the same IP and MAC) run the same deterministic UDP service; a client's
requests reach both; ``colo-xdp compare`` in XDP mode takes both guests'
replies on their host-side links and releases the primary's to the client
after compare (``--outdev xdp:c-h``)::

    ns client  c-g 10.77.0.1 ──veth── c-h ─┬─ tc ingress u32: mirred redirect ──▶ p-h
                                   ▲       └─ tc ingress u32: mirred mirror   ──▶ s-h
                                   │  (AF_XDP TX: --outdev xdp:c-h)
    ns host    colo-xdp compare --primary-xdp p-h --secondary-xdp s-h --outdev xdp:c-h
                                   ▲ XDP + AF_XDP        ▲ XDP + AF_XDP (never forwarded)
    ns guest-p p-g 10.77.0.2 ──veth── p-h    ns guest-s s-g 10.77.0.2 ──veth── s-h
               responder                              responder (+ divergence flag)

The scenario: requests in step; then the secondary is made to answer
differently (a flag file its responder looks at), the mismatch requests a
checkpoint and holds the primary's reply; ``checkpoint`` on the control socket
flushes it to the client; the miscompare pcap shows both replies; requests in
step again.  The lab is removed on every path (Ctrl-C, SIGTERM, errors).

The responder is ``python -m colo_xdp.lab.xdp_demo responder``: stdlib only, one reply
per request, a pure function of the request (and of the flag).
"""
from __future__ import annotations

import contextlib
import hashlib
import itertools
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from colo_xdp.lab.netns import NetnsError, add_netns, add_veth, in_netns
from colo_xdp.lab.process import ProcessError, SupervisedProcess, colo_xdp_command
from colo_xdp.lab.netns import sh as _sh

# Addresses: both guests are 10.77.0.2 with one MAC, as a COLO pair is.
CLIENT_IP, GUEST_IP = "10.77.0.1", "10.77.0.2"
CLIENT_MAC, GUEST_MAC = "02:c0:10:00:00:01", "02:c0:10:00:00:02"
SERVICE_PORT = 7007
CLIENT_PORT = 40000

REQUESTS_BEFORE = 12        # requests in step before the divergence
REQUESTS_AFTER = 6          # ... and after the checkpoint
REQUEST_GAP_S = 0.08        # between requests: the table is readable live
REPLY_TIMEOUT_S = 2.0       # for a reply the client should get
HELD_CHECK_S = 0.5          # how long a held reply must not arrive
READY_TIMEOUT_S = 15.0      # for colo-xdp to compile, attach and log "ready"
STOP_TIMEOUT_S = 5.0
COMPARE_TIMEOUT_MS = 5000   # longer than the demo holds a frame: the request is a mismatch

SO_NO_CHECK = 11            # <asm-generic/socket.h>: UDP checksum 0 (legal in IPv4)
DIVERGED = b"DIVERGED"

_counter = itertools.count()


class XdpDemoError(NetnsError):
    """The lab could not be built or run; the message is one sentence (as
    the NetnsError a failing ip or tc command raises)."""


# --- the guests' service ---------------------------------------------------------------

def answer(request: bytes, diverged: bool = False) -> bytes:
    """The service: a pure function of the request; with ``diverged`` the
    secondary's answer after the demo flips its flag."""
    digest = hashlib.sha256(request).hexdigest()[:16].encode()
    return b"reply to " + request + b": " + (DIVERGED if diverged else digest)


def responder(port: int, flag: str | None) -> None:
    """Answer every UDP datagram on ``port`` with ``answer()``; diverge while
    the file ``flag`` exists.  Runs until SIGTERM."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    # Checksum 0: a guest's veth leaves the checksum to an offload that the
    # AF_XDP path does not do; 0 means "none" in IPv4 and is the same on both guests.
    sock.setsockopt(socket.SOL_SOCKET, SO_NO_CHECK, 1)
    sock.bind(("0.0.0.0", port))
    print("responder ready", flush=True)
    while True:
        data, peer = sock.recvfrom(65536)
        sock.sendto(answer(data, bool(flag) and os.path.exists(flag)), peer)


# --- availability ----------------------------------------------------------------------

def xdp_problem() -> str | None:
    """Why the XDP lab cannot run here, in one sentence; None when it can."""
    from colo_xdp.transport.xdp import classifier as xdp
    if not shutil.which("ip") or not shutil.which("tc"):
        return "the XDP lab needs iproute2's ip and tc: run 'make setup'"
    return xdp.unavailable()


# --- the lab ---------------------------------------------------------------------------

def lab_namespaces() -> list[str]:
    """The lab's namespaces present on this host (any run's)."""
    out = _sh("ip", "netns", "list", check=False)
    return [line.split()[0] for line in out.splitlines() if line.startswith("cxlab-")]


@dataclass
class DemoNetwork:
    """Namespaces client, host, guest-p, guest-s; veth pairs c, p, s between
    host and the others; tc mirroring of the client's frames to both guests."""

    tag: str = field(default_factory=lambda: f"{os.getpid()}-{next(_counter)}")
    dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="colo-xdp-lab-")))
    made: list[str] = field(default_factory=list)
    procs: list[SupervisedProcess] = field(default_factory=list)

    LINKS = {"c": "client", "p": "guest-p", "s": "guest-s"}

    def ns(self, name: str) -> str:
        return f"cxlab-{name}-{self.tag}"

    @property
    def flag(self) -> Path:
        return self.dir / "secondary-diverges"

    def build(self) -> None:
        for name in ("host", *self.LINKS.values()):
            self.made.append(self.ns(name))
            add_netns(self.ns(name))
        host = self.ns("host")
        for short, where in self.LINKS.items():      # the far ends: MAC and address first
            add_veth(host, f"{short}-h", self.ns(where), f"{short}-g", up=False)
            _sh("ip", "-n", host, "link", "set", f"{short}-h", "up")
        for short, where, ip, mac, peer_ip, peer_mac in (
                ("c", "client", CLIENT_IP, CLIENT_MAC, GUEST_IP, GUEST_MAC),
                ("p", "guest-p", GUEST_IP, GUEST_MAC, CLIENT_IP, CLIENT_MAC),
                ("s", "guest-s", GUEST_IP, GUEST_MAC, CLIENT_IP, CLIENT_MAC)):
            ns, dev = self.ns(where), f"{short}-g"
            _sh("ip", "-n", ns, "link", "set", dev, "address", mac)
            _sh("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", dev)
            _sh("ip", "-n", ns, "link", "set", dev, "up")
            _sh("ip", "-n", ns, "link", "set", "lo", "up")
            # No ARP: the secondary's answers would be dropped, and the lab is static.
            _sh("ip", "-n", ns, "neigh", "replace", peer_ip, "lladdr", peer_mac,
                "dev", dev, "nud", "permanent")
        # The client's frames: to the primary, and a copy to the secondary.
        _sh("tc", "-n", host, "qdisc", "add", "dev", "c-h", "ingress")
        _sh("tc", "-n", host, "filter", "add", "dev", "c-h", "parent", "ffff:", "protocol", "all",
            "u32", "match", "u32", "0", "0",
            "action", "mirred", "egress", "mirror", "dev", "s-h",
            "action", "mirred", "egress", "redirect", "dev", "p-h")

    def start(self, where: str, argv: list[str], name: str, **kw) -> SupervisedProcess:
        # Its own session: a Ctrl-C on the terminal reaches the demo only,
        # which stops the lab's processes in order.
        proc = SupervisedProcess(command=argv, prefix=["ip", "netns", "exec", self.ns(where)],
                                 name=name, **kw)
        self.procs.append(proc)
        try:
            return proc.start()
        except ProcessError as exc:
            raise XdpDemoError(str(exc)) from None

    def responders(self) -> None:
        for where, flag in (("guest-p", None), ("guest-s", self.flag)):
            argv = [sys.executable, "-m", "colo_xdp.lab.xdp_demo", "responder", str(SERVICE_PORT)]
            proc = self.start(where, argv + ([str(flag)] if flag else []), "responder",
                              stdout=subprocess.PIPE)
            if proc.stdout.readline().strip() != b"responder ready":
                raise XdpDemoError(f"the responder in {where} did not start")

    def xdp_attached(self) -> list[str]:
        """Host-side links that still carry an XDP program."""
        if self.ns("host") not in lab_namespaces():
            return []
        out = []
        for short in self.LINKS:
            text = _sh("ip", "-n", self.ns("host"), "-d", "link", "show", "dev", f"{short}-h",
                       check=False)
            if "prog/xdp" in text:
                out.append(f"{short}-h")
        return out

    def close(self) -> None:
        """Stop the processes, delete the namespaces (and with them every link
        and XDP program), remove the directory.  A second Ctrl-C or SIGTERM
        waits until this is done."""
        held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        try:
            self._close()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, held)

    def _close(self) -> None:
        for proc in reversed(self.procs):
            proc.stop(STOP_TIMEOUT_S)
        for ns in reversed(self.made):
            _sh("ip", "netns", "del", ns, check=False)
        self.made.clear()
        shutil.rmtree(self.dir, ignore_errors=True)


# --- the live table -------------------------------------------------------------------

COLUMNS = ("requests", "replies", "connections", "pairs", "matched", "released",
           "held p/s", "ckpt req", "ckpt done")


def stats_row(requests: int, replies: int, s: dict) -> tuple[str, ...]:
    return (str(requests), str(replies), str(s["connections"]["count"]),
            str(s["pairs"]["compared"]), str(s["pairs"]["matched"]),
            str(s["released_total"]),
            f"{s['held']['primary']}/{s['held']['secondary']}",
            str(sum(s["checkpoint_requests"].values())), str(s["checkpoints_done"]))


class Table:
    """The counters as one table row, redrawn in place on a terminal (plain
    ANSI), printed as a new row otherwise (pipes, tests)."""

    def __init__(self, echo: Callable[[str], None], live: bool):
        self.echo, self.live, self.drawn = echo, live, False
        self.widths = [max(len(c), 9) for c in COLUMNS]

    def _line(self, cells) -> str:
        return "  " + " ".join(c.rjust(w) for c, w in zip(cells, self.widths))

    def header(self) -> None:
        self.echo(self._line(COLUMNS))
        self.drawn = False

    def show(self, row: tuple[str, ...], note: str = "", final: bool = False) -> None:
        line = self._line(row) + (f"  {note}" if note else "")
        if self.live and self.drawn:
            sys.stdout.write("\x1b[1A\x1b[2K")
        self.echo(line)
        self.drawn = not final


# --- the scenario ----------------------------------------------------------------------

@dataclass
class Result:
    requests: list[bytes] = field(default_factory=list)
    replies: list[bytes] = field(default_factory=list)
    ckpt_before: int = 0
    ckpt_after: int = 0
    held_seen: bool = False
    flushed: int = 0
    pcap_frames: list[tuple[str, bytes]] = field(default_factory=list)
    service_status: int | None = None
    stopped_line: str = ""
    leftovers: list[str] = field(default_factory=list)

    def problems(self) -> list[str]:
        out = []
        expected = [answer(r) for r in self.requests]
        if self.replies != expected:
            wrong = [r for r in self.replies if r not in expected]
            out.append(f"the client got {len(self.replies)} replies for {len(self.requests)} "
                       f"requests, {len(wrong)} not the primary's"
                       + (f" (first: {wrong[0]!r})" if wrong else ""))
        if self.ckpt_before:
            out.append(f"{self.ckpt_before} checkpoint request(s) while the guests were in step")
        if not self.ckpt_after:
            out.append("no mismatch checkpoint was requested after the divergence")
        if not self.held_seen:
            out.append("the primary's diverged reply was not held until the checkpoint")
        if not any(side == "secondary" and DIVERGED in frame
                   for side, frame in self.pcap_frames):
            out.append("the miscompare pcap does not hold the secondary's diverged reply")
        if self.service_status != 0:
            out.append(f"colo-xdp exited with status {self.service_status}")
        if self.leftovers:
            out.append(f"left behind: {', '.join(self.leftovers)}")
        return out


def read_pcapng(path: Path) -> list[tuple[str, bytes]]:
    """(interface name, frame) of every EPB in a pcapng file written by
    colo_xdp.observe.pcap (little-endian; interfaces primary=0, secondary=1)."""
    data, names, out, off = path.read_bytes(), [], [], 0
    while off + 12 <= len(data):
        btype, blen = struct.unpack_from("<II", data, off)
        if btype == 1:                                          # IDB: name in options
            opts = off + 16
            while opts + 4 <= off + blen - 4:
                code, olen = struct.unpack_from("<HH", data, opts)
                if code == 0:
                    break
                if code == 2:
                    names.append(data[opts + 4:opts + 4 + olen].decode())
                opts += 4 + (olen + 3) // 4 * 4
        elif btype == 6:                                        # EPB
            iface, _hi, _lo, caplen = struct.unpack_from("<IIII", data, off + 8)
            frame = data[off + 28:off + 28 + caplen]
            out.append((names[iface] if iface < len(names) else str(iface), frame))
        off += blen
    return out


def udp_payload(frame: bytes) -> bytes:
    ihl = (frame[14] & 0x0F) * 4
    return frame[14 + ihl + 8:]


class Demo:
    def __init__(self, lab: DemoNetwork, echo: Callable[[str], None], live: bool):
        self.lab, self.echo = lab, echo
        self.table = Table(echo, live)
        self.result = Result()
        self.log: list[str] = []
        self.control = str(lab.dir / "control.sock")
        self.pcap = lab.dir / "miscompare.pcapng"

    # -- colo-xdp
    def argv(self) -> list[str]:
        return [*colo_xdp_command(), "compare", "--primary-xdp", "p-h", "--secondary-xdp", "s-h",
                "--outdev", "xdp:c-h", "--control", self.control,
                "--miscompare-pcap", str(self.pcap),
                "--compare-timeout", str(COMPARE_TIMEOUT_MS)]

    def start_service(self) -> SupervisedProcess:
        proc = self.lab.start("host", self.argv(), "colo-xdp compare")
        self.log = proc.lines
        try:
            proc.wait_ready(READY_TIMEOUT_S)
        except ProcessError:
            raise XdpDemoError("colo-xdp compare did not come up: "
                           + proc.tail(3, empty="no output")) from None
        return proc

    def ask(self, request: dict) -> dict:
        from colo_xdp.cli.ctl_client import ClientError, ControlClient
        try:
            with ControlClient.connect(path=self.control) as client:
                reply = client.request(request)
        except ClientError as exc:
            raise XdpDemoError(str(exc)) from None
        if not reply.get("ok"):
            raise XdpDemoError(f"colo-xdp refused {request['cmd']}: {reply.get('error')}")
        return reply

    def stats(self) -> dict:
        return self.ask({"cmd": "stats", "connections": 4})["stats"]

    def show(self, note: str = "", final: bool = False) -> dict:
        s = self.stats()
        self.table.show(stats_row(len(self.result.requests), len(self.result.replies), s),
                        note, final)
        return s

    # -- the client
    def client_socket(self) -> socket.socket:
        with in_netns(self.lab.ns("client")):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((CLIENT_IP, CLIENT_PORT))
        return sock

    def recv(self, sock: socket.socket, timeout: float) -> bytes | None:
        sock.settimeout(timeout)
        try:
            return sock.recv(65536)
        except socket.timeout:
            return None

    def request(self, sock: socket.socket, n: int, wait: float = REPLY_TIMEOUT_S) -> bytes | None:
        req = b"request %03d" % n
        self.result.requests.append(req)
        sock.sendto(req, (GUEST_IP, SERVICE_PORT))
        reply = self.recv(sock, wait)
        if reply is not None:
            self.result.replies.append(reply)
        return reply

    # -- the story
    def run(self) -> None:
        say, r = self.echo, self.result
        proc = self.start_service()
        say(f"colo-xdp compare is up (pid {proc.pid}):")
        say("  " + " ".join(self.argv()[len(colo_xdp_command()):]))
        sock = self.client_socket()
        n = itertools.count(1)
        try:
            say("")
            say(f"Phase 1: the client sends {REQUESTS_BEFORE} requests; both guests answer "
                "alike, each reply pair matches and the primary's is released.")
            self.table.header()
            for _ in range(REQUESTS_BEFORE):
                self.request(sock, next(n))
                self.show()
                time.sleep(REQUEST_GAP_S)
            s = self.show("in step", final=True)
            r.ckpt_before = sum(s["checkpoint_requests"].values())

            say("")
            say("Phase 2: the secondary is made to answer differently (its flag file is "
                "created); the next reply pair mismatches.")
            self.lab.flag.touch()
            self.table.header()
            reply = self.request(sock, next(n), wait=HELD_CHECK_S)
            s = self.show("diverged: primary's reply held", final=True)
            r.ckpt_after = s["checkpoint_requests"]["mismatch"]
            r.held_seen = reply is None and s["held"]["primary"] >= 1
            for line in self.log:
                if "checkpoint_requested" in line:
                    say(f"  service log: {line.strip()}")
            say("  colo-xdp ctl checkpoint (the COLO frame reports the checkpoint done):")
            done = self.ask({"cmd": "checkpoint"})
            r.flushed = done["released"]
            say(f"  checkpoint: released {done['released']} primary frame(s), dropped "
                f"{done['dropped_secondary']} secondary frame(s)")
            self.lab.flag.unlink()           # the checkpoint brought the secondary in step
            if reply is None:
                late = self.recv(sock, REPLY_TIMEOUT_S)
                if late is not None:
                    r.replies.append(late)
                say(f"  the client now has the primary's reply: {late!r}")
            self.table.header()
            self.show("after the checkpoint", final=True)

            say("")
            say(f"Phase 3: {REQUESTS_AFTER} more requests, in step again.")
            self.table.header()
            for _ in range(REQUESTS_AFTER):
                self.request(sock, next(n))
                self.show()
                time.sleep(REQUEST_GAP_S)
            self.show("in step", final=True)
            extra = self.recv(sock, 0.2)     # the secondary's replies never come
            if extra is not None:
                r.replies.append(extra)
        finally:
            sock.close()
            r.service_status = proc.stop(STOP_TIMEOUT_S)      # its stderr read to the end
        r.stopped_line = next((l.strip() for l in self.log if " stopped " in f" {l}"), "")
        say("")
        say(f"The miscompare pcap ({self.pcap.name}), decoded:")
        r.pcap_frames = read_pcapng(self.pcap) if self.pcap.exists() else []
        for side, frame in r.pcap_frames:
            say(f"  {side:9} {len(frame):4} bytes  udp {GUEST_IP}:{SERVICE_PORT} > "
                f"{CLIENT_IP}:{CLIENT_PORT}  {udp_payload(frame)!r}")
        if not r.pcap_frames:
            say("  (no file: nothing was written)")


def summary(result: Result, echo: Callable[[str], None], took: float) -> bool:
    problems = result.problems()
    expected = [answer(q) for q in result.requests]
    echo("")
    echo("Summary")
    echo(f"  requests sent                         {len(result.requests)}")
    echo(f"  replies the client got                {len(result.replies)}")
    echo("  the client got exactly the primary's replies: "
         + ("yes" if result.replies == expected else "NO"))
    echo(f"  checkpoint requests while in step     {result.ckpt_before}")
    echo(f"  mismatch checkpoint after divergence  {result.ckpt_after}")
    echo(f"  held primary frames flushed           {result.flushed}")
    echo(f"  frames in the miscompare pcap         {len(result.pcap_frames)}")
    if result.stopped_line:
        echo(f"  service: {result.stopped_line}")
    echo(f"  lab removed: {'yes' if not result.leftovers else 'NO'}")
    for p in problems:
        echo(f"  ! {p}")
    echo("")
    echo(f"colo-xdp demo: {'as expected' if not problems else 'NOT as expected'} "
         f"({took:.1f} s)")
    return not problems


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    def interrupt(_signum, _frame):
        raise KeyboardInterrupt
    old = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def run(echo: Callable[[str], None] = print, live: bool | None = None) -> bool:
    """Build the lab, play the scenario, remove the lab.  True when what
    happened is what COLO promises.  Raises XdpDemoError when the lab cannot be
    built or run, KeyboardInterrupt on Ctrl-C or SIGTERM; the lab is gone on
    every path."""
    began = time.monotonic()
    live = sys.stdout.isatty() if live is None else live
    lab = DemoNetwork()
    echo("colo-xdp demo: XDP mode on a lab of network namespaces on this host")
    echo(f"  client {CLIENT_IP} -> guests {GUEST_IP} (primary and secondary, same MAC "
         f"{GUEST_MAC}), UDP port {SERVICE_PORT}; namespaces cxlab-*-{lab.tag}")
    with _sigterm_interrupts():
        try:
            lab.build()
            lab.responders()
            demo = Demo(lab, echo, live)
            demo.run()
        finally:
            lab.close()
    demo.result.leftovers = [ns for ns in lab_namespaces() if ns.endswith(f"-{lab.tag}")]
    return summary(demo.result, echo, time.monotonic() - began)


def client(host: str, port: int, count: int) -> int:
    """Send ``count`` requests to the guests' service and check every reply is
    the primary's (vagrant/: the client host).  0 when all are."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(REPLY_TIMEOUT_S)
    good = 0
    for n in range(1, count + 1):
        req = b"request %03d" % n
        sock.sendto(req, (host, port))
        try:
            reply = sock.recv(65536)
        except socket.timeout:
            reply = None
        ok = reply == answer(req)
        good += ok
        print(f"{req.decode()}: {reply!r} {'ok' if ok else 'NOT the primary reply'}")
    print(f"{good} of {count} replies were the primary's")
    return 0 if good == count else 1


USAGE = ("usage: python -m colo_xdp.lab.xdp_demo responder PORT [FLAG_FILE]\n"
         "       python -m colo_xdp.lab.xdp_demo client HOST PORT COUNT")

if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "responder":
        responder(int(sys.argv[2]), sys.argv[3] if len(sys.argv) > 3 else None)
    elif len(sys.argv) == 5 and sys.argv[1] == "client":
        sys.exit(client(sys.argv[2], int(sys.argv[3]), int(sys.argv[4])))
    else:
        sys.exit(USAGE)
