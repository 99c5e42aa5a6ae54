"""colo-xdp in XDP mode end to end: the real CLI in a namespace whose veth ends
stand for the guests' taps, the guests sending from their own namespaces.

    ns guest-p: p-g ──veth── p-h ┐
                                 ├─ ns host: colo-xdp compare --primary-xdp p-h
    ns guest-s: s-g ──veth── s-h ┘             --secondary-xdp s-h --outdev ...
    ns uplink:  u-g ──veth── u-h ── (--outdev xdp:u-h)

The outdev and notify-dev are unix sockets in a temp dir, which every
namespace shares.  Every namespace, program and process is removed on every
path; after each test no XDP program is left on any interface.
"""
from __future__ import annotations

import itertools
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Iterator

import pytest

from colo_xdp.lab import pktgen as g
from colo_xdp.proto.framing import Decoder
from colo_xdp.lab.netns import add_netns, add_veth
from colo_xdp.lab.process import ProcessError, SupervisedProcess
from xdp_kit import in_netns, sh, xdp_shown

ROOT = Path(__file__).resolve().parents[2]
EXE = str(ROOT / ".venv" / "bin" / "colo-xdp")
TIMEOUT = 10.0
DO_CHECKPOINT = b"\x00\x00\x00\x0dDO_CHECKPOINT"

_counter = itertools.count()


class XdpServiceNetwork:
    """Namespaces host/guest-p/guest-s/uplink joined by veth pairs."""

    LINKS = {"p": "guest_p", "s": "guest_s", "u": "uplink"}

    def __init__(self):
        tag = f"{os.getpid() % 10000}{next(_counter)}"
        self.ns = {name: f"cx{name[0]}{name[-1]}-{tag}"
                   for name in ("host", "guest_p", "guest_s", "uplink")}
        self.dir = Path(tempfile.mkdtemp(prefix="cx-xdp-"))
        self.procs: list[SupervisedProcess] = []
        self.socks: list[socket.socket] = []
        self.made: list[str] = []

    def build(self) -> None:
        for ns in self.ns.values():
            self.made.append(ns)
            add_netns(ns)
        for short in self.LINKS:
            self.link(short)

    def link(self, short: str) -> None:
        """The veth pair {short}-h (host) / {short}-g, both ends up."""
        add_veth(self.ns["host"], f"{short}-h", self.ns[self.LINKS[short]], f"{short}-g")

    def start(self, *args: str, ready: bool = True) -> SupervisedProcess:
        proc = SupervisedProcess(args, prefix=["ip", "netns", "exec", self.ns["host"]])
        self.procs.append(proc.start())
        if ready:
            try:
                proc.wait_ready(TIMEOUT)
            except ProcessError:
                pytest.fail("colo-xdp did not come up:\n" + proc.log)
        return proc

    def unix(self, name: str, server: bool = True) -> str:
        return f"unix:{self.dir / name}" + (",server=on" if server else "")

    def connect(self, name: str) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(TIMEOUT)
        sock.connect(str(self.dir / name))
        self.socks.append(sock)
        return sock

    def listen(self, name: str) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(str(self.dir / name))
        sock.listen(1)
        sock.settimeout(TIMEOUT)
        self.socks.append(sock)
        return sock

    def packet_socket(self, link: str) -> socket.socket:
        """An AF_PACKET socket on the far end of ``link`` (p, s or u)."""
        with in_netns(self.ns[self.LINKS[link]]):
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
        sock.bind((f"{link}-g", 0))
        sock.settimeout(TIMEOUT)
        self.socks.append(sock)
        return sock

    def send(self, link: str, *frames: bytes) -> None:
        sock = self.packet_socket(link)
        for frame in frames:
            sock.send(frame)

    def attached(self) -> list[str]:
        return [f"{short}-h" for short in self.LINKS
                if xdp_shown(self.ns["host"], f"{short}-h")]

    def close(self) -> None:
        for sock in self.socks:
            sock.close()
        for proc in self.procs:
            proc.kill(5)
        for ns in self.made:
            sh("ip", "netns", "del", ns, check=False)
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def lab(bpf_ready, netns_available) -> Iterator[XdpServiceNetwork]:
    lab = XdpServiceNetwork()
    try:
        lab.build()
        yield lab
    finally:
        lab.close()


def records(sock: socket.socket, n: int) -> list[bytes]:
    """n chardev records from sock, their frames."""
    dec, out = Decoder(vnet=False), []
    deadline = time.monotonic() + TIMEOUT
    while len(out) < n:
        assert time.monotonic() < deadline, f"got {len(out)} of {n} frames"
        out += [r.frame for r in dec.feed(sock.recv(65536))]
    return out


def quiet(sock: socket.socket, seconds: float = 0.3) -> bool:
    sock.settimeout(seconds)
    try:
        return sock.recv(65536) == b""
    except socket.timeout:
        return True
    finally:
        sock.settimeout(TIMEOUT)


def wait_log(proc: SupervisedProcess, text: str, count: int = 1) -> None:
    """Until ``text`` is in ``count`` lines of the service's log."""
    deadline = time.monotonic() + TIMEOUT
    while sum(text in line for line in proc.lines) < count:
        assert time.monotonic() < deadline and proc.poll() is None, proc.log
        time.sleep(0.05)


def udp(tag: bytes, sport: int = 4000) -> bytes:
    return g.udp_frame(tag, src="10.98.0.2", dst="10.98.0.1", sport=sport, dport=53)


def stop(proc: SupervisedProcess) -> str:
    assert proc.stop(TIMEOUT) == 0 and not proc.killed, proc.log
    return proc.log


def compare_args(lab: XdpServiceNetwork, outdev: str | None = None, *extra: str) -> list[str]:
    return ["compare", "--primary-xdp", "p-h", "--secondary-xdp", "s-h",
            "--outdev", outdev or lab.unix("out.sock"),
            "--notify-dev", lab.unix("notify.sock"), *extra]


def test_xdp_mode_releases_matching_frames_in_order_and_detaches(lab):
    proc = lab.start(*compare_args(lab))
    out, _note = lab.connect("out.sock"), lab.connect("notify.sock")
    assert sorted(lab.attached()) == ["p-h", "s-h"]
    frames = [udp(b"reply %d" % i, sport=4000 + i % 3) for i in range(40)]
    lab.send("p", *frames[:20])
    lab.send("s", *frames)
    lab.send("p", *frames[20:])
    assert records(out, 40) == frames
    log = stop(proc)
    assert "stopped frames_in=40/40 released=40 dropped=0/0 checkpoints_requested=0" in log
    assert lab.attached() == []


def test_xdp_mode_mismatch_requests_a_checkpoint(lab):
    lab.start(*compare_args(lab))
    out, note = lab.connect("out.sock"), lab.connect("notify.sock")
    lab.send("p", udp(b"primary says A"))
    lab.send("s", udp(b"second says B"))
    note.settimeout(TIMEOUT)
    assert note.recv(len(DO_CHECKPOINT)) == DO_CHECKPOINT
    assert quiet(out)
    note.sendall(b"\x00\x00\x00\x0fCOLO_CHECKPOINT")
    assert records(out, 1) == [udp(b"primary says A")]


def test_xdp_mode_tcp_with_different_segmentation(lab):
    lab.start(*compare_args(lab))
    out, _note = lab.connect("out.sock"), lab.connect("notify.sock")
    data = bytes(range(200)) * 3
    seg = lambda off, n: g.tcp_frame(data[off:off + n], src="10.98.0.2", dst="10.98.0.1",
                                     sport=80, dport=5555, seq=1000 + off, ack=7)
    primary = [seg(0, 200), seg(200, 200), seg(400, 200)]
    lab.send("p", *primary)
    lab.send("s", seg(0, 300), seg(300, 300))
    assert records(out, 3) == primary


def test_xdp_outdev_sends_released_frames_on_the_uplink(lab):
    proc = lab.start(*compare_args(lab, "xdp:u-h"))
    lab.connect("notify.sock")
    sniff = lab.packet_socket("u")
    frames = [udp(b"to the client %d" % i) for i in range(10)]
    lab.send("p", *frames)
    lab.send("s", *frames)
    got, deadline = [], time.monotonic() + TIMEOUT
    while len(got) < len(frames) and time.monotonic() < deadline:
        frame = sniff.recv(65536)
        if frame in frames:
            got.append(frame)
    assert got == frames
    stop(proc)
    assert lab.attached() == []


def test_xdp_outdev_sends_again_when_its_interface_is_made_anew(lab):
    """The uplink veth goes away under traffic and is made again: the outdev
    says it is disconnected, opens a socket on the new interface and sends
    what was released meanwhile; every frame arrives once and in order."""
    proc = lab.start(*compare_args(lab, "xdp:u-h"))
    lab.connect("notify.sock")
    sniff = lab.packet_socket("u")
    before = [udp(b"before %d" % i) for i in range(10)]
    during = [udp(b"while the uplink is gone %d" % i) for i in range(20)]
    after = [udp(b"after the uplink came back %d" % i) for i in range(10)]

    def receive(sock, want: list[bytes]) -> list[bytes]:
        got, deadline = [], time.monotonic() + TIMEOUT
        while len(got) < len(want) and time.monotonic() < deadline:
            try:
                frame = sock.recv(65536)
            except socket.timeout:
                break
            if frame in before + during + after:
                got.append(frame)
        return got

    lab.send("p", *before)
    lab.send("s", *before)
    assert receive(sniff, before) == before
    sh("ip", "-n", lab.ns["host"], "link", "del", "u-h")       # u-g goes with it
    for i in range(0, len(during), 5):                          # traffic goes on
        lab.send("p", *during[i:i + 5])
        lab.send("s", *during[i:i + 5])
        time.sleep(0.05)
    wait_log(proc, "disconnected role=outdev")
    wait_log(proc, "xdp_iface_gone role=outdev iface=u-h")
    # The pair is made in the uplink's namespace and u-h moved (and set up)
    # into the host's in one step, once the sniffer listens on u-g.
    sh("ip", "-n", lab.ns["uplink"], "link", "add", "u-h", "numtxqueues", "1",
       "numrxqueues", "1", "type", "veth", "peer", "name", "u-g",
       "numtxqueues", "1", "numrxqueues", "1")
    sh("ip", "-n", lab.ns["uplink"], "link", "set", "u-g", "up")
    sniff = lab.packet_socket("u")
    sh("ip", "-n", lab.ns["uplink"], "link", "set", "u-h", "netns", lab.ns["host"], "up")
    wait_log(proc, " connected role=outdev", 2)
    lab.send("p", *after)
    lab.send("s", *after)
    assert receive(sniff, during + after) == during + after
    log = stop(proc)
    assert "released=40" in log, log
    assert lab.attached() == []


def partial_checksum(frame: bytes) -> bytes:
    """The frame as a guest that offloads checksums hands it to its tap: the
    UDP checksum field holds only the pseudo-header sum."""
    ip = frame[14:34]
    udp_len = len(frame) - 34
    words = ip[12:20] + bytes([0, 17]) + udp_len.to_bytes(2, "big")
    total = sum(int.from_bytes(words[i:i + 2], "big") for i in range(0, len(words), 2))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return frame[:40] + total.to_bytes(2, "big") + frame[42:]


def partial_checksum_any(frame: bytes, at: int, l3: int, v6: bool, proto: int) -> bytes:
    """As partial_checksum, for IPv6 and tagged frames: ``at`` is the
    checksum field, ``l3`` the IP header."""
    if v6:
        length = int.from_bytes(frame[l3 + 4:l3 + 6], "big")
        words = frame[l3 + 8:l3 + 40] + length.to_bytes(4, "big") + bytes([0, 0, 0, proto])
    else:
        length = int.from_bytes(frame[l3 + 2:l3 + 4], "big") - (frame[l3] & 15) * 4
        words = frame[l3 + 12:l3 + 20] + bytes([0, proto]) + length.to_bytes(2, "big")
    total = sum(int.from_bytes(words[i:i + 2], "big") for i in range(0, len(words), 2))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return frame[:at] + total.to_bytes(2, "big") + frame[at + 2:]


def test_xdp_outdev_finishes_offloaded_checksums(lab):
    """Both guests offload (same partial sums, so they still match); what
    leaves on the uplink carries the full checksum a receiver accepts:
    IPv4, IPv6 (UDP and TCP) and tagged."""
    lab.start(*compare_args(lab, "xdp:u-h"))
    lab.connect("notify.sock")
    sniff = lab.packet_socket("u")
    good = [udp(b"offloaded %d" % i) for i in range(5)]
    partial = [partial_checksum(f) for f in good]
    v6 = [g.udp6_frame(b"offloaded v6 %d" % i) for i in range(2)]
    v6 += [g.tcp6_frame(b"offloaded tcp6", seq=5)]
    tagged = [g.vlan_frame(udp(b"offloaded tagged"), 9)]
    partial += [partial_checksum_any(v6[0], 14 + 40 + 6, 14, True, 17),
                partial_checksum_any(v6[1], 14 + 40 + 6, 14, True, 17),
                partial_checksum_any(v6[2], 14 + 40 + 16, 14, True, 6),
                partial_checksum_any(tagged[0], 18 + 20 + 6, 18, False, 17)]
    good += v6 + tagged
    assert all(p != f for p, f in zip(partial, good))
    lab.send("p", *partial)
    lab.send("s", *partial)
    got, deadline = [], time.monotonic() + TIMEOUT
    while len(got) < len(good) and time.monotonic() < deadline:
        frame = sniff.recv(65536)
        if any(frame[-10:] == f[-10:] for f in good):
            got.append(frame)
    # the receiving veth hands the tag over as metadata (rx VLAN offload):
    # the packet socket reads the frame without it
    assert got == good[:-1] + [tagged[0][:12] + tagged[0][16:]]


def test_forward_sends_the_secondary_guests_frames_to_the_primary(lab):
    listener = lab.listen("sin.sock")
    proc = lab.start("forward", "--xdp", "s-h", "--to", lab.unix("sin.sock", server=False))
    peer, _ = listener.accept()
    lab.socks.append(peer)
    frames = [udp(b"secondary %d" % i) for i in range(25)]
    lab.send("s", *frames, g.arp_frame())
    assert records(peer, 25) == frames        # ARP: dropped in the kernel, never sent
    log = stop(proc)
    assert "frames_in=25 forwarded=25" in log
    assert lab.attached() == []


def test_forward_attaches_again_to_an_interface_that_comes_back(lab):
    listener = lab.listen("sin.sock")
    proc = lab.start("forward", "--xdp", "s-h", "--to", lab.unix("sin.sock", server=False))
    peer, _ = listener.accept()
    lab.socks.append(peer)
    sh("ip", "-n", lab.ns["host"], "link", "del", "s-h")
    wait_log(proc, "xdp_iface_gone role=secondary-xdp iface=s-h")
    lab.link("s")
    wait_log(proc, "xdp_attached role=secondary-xdp", 2)
    frames = [udp(b"after the tap came back %d" % i) for i in range(5)]
    lab.send("s", *frames)
    assert records(peer, 5) == frames
    assert "frames_in=5 forwarded=5 cut=0 kernel_dropped=0" in stop(proc)
    assert lab.attached() == []


def test_an_interface_that_goes_away_is_attached_again_when_back(lab):
    """The primary guest's tap goes away (the guest is stopped, say): the
    service says so and keeps serving; when the tap is back it attaches again
    and comparing goes on; passthrough changes still work meanwhile."""
    proc = lab.start(*compare_args(lab, None, "--control", str(lab.dir / "ctl.sock")))
    out, _note = lab.connect("out.sock"), lab.connect("notify.sock")
    sh("ip", "-n", lab.ns["host"], "link", "del", "p-h")
    wait_log(proc, "xdp_iface_gone role=primary-in iface=p-h")
    ctl = subprocess.run([EXE, "ctl", "--control", str(lab.dir / "ctl.sock"), "passthrough",
                          "add", "udp * > *:9"], capture_output=True, text=True)
    assert ctl.returncode == 0, ctl.stderr
    lab.link("p")
    wait_log(proc, "xdp_attached role=primary-in", 2)
    frames = [udp(b"after the tap came back %d" % i) for i in range(5)]
    lab.send("p", *frames)
    lab.send("s", *frames)
    assert records(out, 5) == frames
    stop(proc)
    assert lab.attached() == []


def test_a_veth_made_with_default_queue_counts(lab):
    """'ip link add ... type veth' allocates several rx queues but uses one;
    AF_XDP refuses the unused ones, so only the queues in use get a socket."""
    sh("ip", "-n", lab.ns["host"], "link", "add", "d-h", "type", "veth", "peer", "name", "d-g")
    for dev in ("d-h", "d-g"):
        sh("ip", "-n", lab.ns["host"], "link", "set", dev, "up")
    proc = lab.start("compare", "--primary-xdp", "d-h", "--secondary-xdp", "s-h",
                     "--outdev", lab.unix("out.sock"))
    assert any("xdp_attached role=primary-in iface=d-h mode=native queues=1" in line
               for line in proc.lines), proc.log
    stop(proc)


def test_sigkill_leaves_nothing_attached(lab):
    proc = lab.start(*compare_args(lab))
    assert sorted(lab.attached()) == ["p-h", "s-h"]
    proc.kill()
    proc.wait(TIMEOUT)
    deadline = time.monotonic() + 2
    while lab.attached() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert lab.attached() == []


def test_outdev_stall_in_xdp_mode_pauses_and_every_frame_is_accounted(lab):
    """The outdev peer stops reading while the guests send 12 MiB of matched
    pairs: past the high-water mark the service stops reading its rings and
    the kernel drops what overflows them.  When the peer reads again, every
    frame released arrives once and in order, the service still serves, and
    each primary frame sent is released, dropped by the engine or dropped by
    the kernel."""
    proc = lab.start(*compare_args(lab))
    out, note = lab.connect("out.sock"), lab.connect("notify.sock")
    tx = {side: lab.packet_socket(side) for side in "ps"}
    frames: list[bytes] = []
    paused_at = None
    # Paced pairs until the service pauses (about 8 MiB released, unread),
    # then twice an input ring more: the rings overflow for sure.
    from colo_xdp.transport.xdp.port import INPUT_RING_SIZE
    while paused_at is None or len(frames) < paused_at + 2 * INPUT_RING_SIZE:
        assert len(frames) < 40000, "no backpressure:\n" + "\n".join(proc.lines[-20:])
        chunk = [udp(b"%06d" % i + bytes(1300), sport=4000 + i % 16)
                 for i in range(len(frames), len(frames) + 100)]
        frames += chunk
        for side in "ps":
            for frame in chunk:
                tx[side].send(frame)
        if paused_at is None:
            time.sleep(0.002)
            if any("backpressure on=True" in line for line in proc.lines):
                paused_at = len(frames)
    pairs = len(frames)
    wait_log(proc, "xdp_kernel_dropped role=primary-in")
    dec, got = Decoder(vnet=False), []

    def read_until(done) -> None:                 # the peer reads again
        deadline = time.monotonic() + TIMEOUT
        while not done():
            assert time.monotonic() < deadline, f"got {len(got)} frames"
            got.extend(r.frame for r in dec.feed(out.recv(1 << 20)))

    read_until(lambda: any("backpressure on=False" in line for line in proc.lines))
    # Pairs the kernel broke up mismatch; the COLO frame's checkpoint heals that.
    note.sendall(b"\x00\x00\x00\x0fCOLO_CHECKPOINT")
    wait_log(proc, "checkpoint_done")
    # A new flow goes through at once (the stalled ones may still hold frames
    # read from the rings after the checkpoint: the exit flush releases them).
    after = [udp(b"after the stall %d" % i, sport=6000) for i in range(3)]
    lab.send("p", *after)
    lab.send("s", *after)
    read_until(lambda: [f for f in got if f in after] == after)     # still serving
    log = stop(proc)
    while data := out.recv(1 << 20):              # what the exit flush released
        got.extend(r.frame for r in dec.feed(data))
    index = {frame: i for i, frame in enumerate(frames)}
    stalled = [index[f] for f in got if f not in after]
    assert len(stalled) == len(set(stalled))      # each once
    for flow in range(16):                        # each flow's in order
        mine = [i for i in stalled if i % 16 == flow]
        assert mine == sorted(mine)
    m = re.search(r"stopped frames_in=(\d+)/\d+ released=(\d+) dropped=(\d+)/\d+ .*"
                  r"kernel_dropped=(\d+)/\d+", log)
    assert m, log
    frames_in, released, dropped, kernel = map(int, m.groups())
    assert kernel > 0
    assert frames_in + kernel == pairs + 3
    assert released + dropped == frames_in
    assert released == len(got)


def test_killed_and_restarted_at_once_it_starts_clean_and_serves(lab):
    """SIGKILL with frames held, then a new service on the same interfaces
    straight away (the old sockets' queues are still being torn down: bind
    says EBUSY for a moment): it says it starts clean and compares."""
    proc = lab.start(*compare_args(lab))
    lab.connect("out.sock"), lab.connect("notify.sock")
    lab.send("p", *[udp(b"held when killed %d" % i) for i in range(5)])
    proc.kill()
    proc.wait(TIMEOUT)
    proc = lab.start(*compare_args(lab))        # same socket paths, left behind
    started = next(line for line in proc.lines if " started " in line)
    assert "state=clean" in started and "held=0" in started, started
    out, _note = lab.connect("out.sock"), lab.connect("notify.sock")
    frames = [udp(b"after the restart %d" % i) for i in range(5)]
    lab.send("p", *frames)
    lab.send("s", *frames)
    assert records(out, 5) == frames
    assert "stopped frames_in=5/5 released=5" in stop(proc)
    assert lab.attached() == []


def test_missing_interface_is_one_sentence(lab):
    proc = lab.start("compare", "--primary-xdp", "nope0", "--secondary-xdp", "s-h",
                     "--outdev", lab.unix("out.sock"), ready=False)
    assert proc.wait(TIMEOUT) == 1
    lines = [line for line in proc.lines if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("colo-xdp: error: primary-in: nope0")
    assert lab.attached() == []


def test_frames_the_kernel_drops_are_counted_not_lost(lab):
    """The service is stopped (SIGSTOP) while a guest sends more than its rx
    ring holds: the kernel drops the overflow.  Those frames are reported
    (a warning, the summary's kernel_dropped), and with frames_in they make
    up every frame the guest sent."""
    from colo_xdp.transport.xdp.port import INPUT_RING_SIZE
    sent = 3 * INPUT_RING_SIZE                    # more than the rx ring holds
    proc = lab.start(*compare_args(lab, None, "--max-queue-size", "16384"))
    _out, _note = lab.connect("out.sock"), lab.connect("notify.sock")
    os.kill(proc.pid, signal.SIGSTOP)
    try:
        lab.send("p", *[udp(b"overflow %d" % i, sport=4000 + i % 7) for i in range(sent)])
    finally:
        os.kill(proc.pid, signal.SIGCONT)
    wait_log(proc, "xdp_kernel_dropped role=primary-in side=primary")
    log = stop(proc)
    m = re.search(r"stopped frames_in=(\d+)/0 .* kernel_dropped=(\d+)/0", log)
    assert m, log
    frames_in, kernel_dropped = map(int, m.groups())
    assert kernel_dropped > 0 and frames_in >= INPUT_RING_SIZE
    assert frames_in + kernel_dropped == sent, log


@pytest.mark.parametrize("ahead", ["s", "p"])
def test_a_lead_of_2048_frames_waits_in_the_rx_ring_without_kernel_drops(lab, ahead):
    """Flow control in XDP mode: one guest 2048 frames ahead on one flow.
    The engine takes half a queue of them; the rest waits in the rx ring,
    which is sized for it: no kernel drop, no engine drop, no checkpoint."""
    proc = lab.start(*compare_args(lab))
    out, note = lab.connect("out.sock"), lab.connect("notify.sock")
    frames = [udp(b"lead %05d" % i) for i in range(2048)]
    behind = "p" if ahead == "s" else "s"
    lab.send(ahead, *frames)
    time.sleep(0.2)
    lab.send(behind, *frames)
    assert records(out, len(frames)) == frames
    assert quiet(note)                           # not one DO_CHECKPOINT
    log = stop(proc)
    m = re.search(r"stopped frames_in=(\d+)/(\d+) released=(\d+) dropped=(\d+)/(\d+) "
                  r"checkpoints_requested=(\d+)", log)
    assert m and tuple(map(int, m.groups())) == (2048, 2048, 2048, 0, 0, 0), log
    assert "kernel_dropped=0/0" in log or "kernel_dropped" not in log, log
