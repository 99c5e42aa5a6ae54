"""A real QEMU COLO pair on one host, under TCG, for the tests in tests/colo.

Built on tests/vm/vmkit.py's ``VmNetwork`` (two namespaces, a bridge, a client on a
veth; its ``close()`` removes every process, socket, namespace and the temp
dir).  ``ColoPair`` adds what COLO needs:

- the patched QEMU (scripts/build-qemu.sh; Debian's deadlocks under TCG),
- the COLO-FT chardevs and filters of QEMU's docs/COLO-FT.txt, with
  virtio-net and ``vnet_hdr_support=on`` on every filter and comparator,
- a divergence switch per QEMU: the fw_cfg file ``opt/colo/diverge`` (not
  guest RAM, not migrated; the guest's echo reads it on every request),
- QMP clients on both QEMUs (events kept with monotonic receive times),
- starting COLO, requesting a checkpoint from outside, failover.

Wiring (all chardevs are unix sockets in the lab's temp dir; QEMU runs in the
lab's host namespace; the secondary's tap is off the bridge until failover)::

   client ns: c-g ─veth─ c-h ─ br0 ─ ccp0 (primary's tap)      ccs0 (secondary's tap, down the bridge)
                                       │                          │
   primary QEMU  hn0: filter-mirror m0 (tx) ──mirror.sock──▶ red0 ─┤ filter-redirector f1 (tx, indev)
                      filter-redirector redire1 (rx) ─▶ pri-in.sock
                      filter-redirector redire0 (rx) ◀─ out.sock
   secondary QEMU hn0: filter-redirector f2 (rx, outdev) ─▶ sec-in.sock
                       filter-rewriter rew0

The comparator is one of:

``qemu``      QEMU's in-process ``-object colo-compare`` on the primary (the
              reference): pri-in.sock and out.sock are looped back inside the
              primary (a server chardev for the filter, a client chardev for
              colo-compare), sec-in.sock is served by the primary and the
              secondary's ``red1`` connects to it, as in COLO-FT.txt.
``external``  no colo-compare object.  QEMU serves all three comparator
              sockets (``server=on,wait=off``): the primary pri-in.sock (its
              redirector's outdev) and out.sock (its redirector's indev), the
              secondary sec-in.sock (its ``red1``).  The external process
              connects to them as a client, outdev first::

                colo-xdp compare --outdev unix:DIR/out.sock \\
                    --primary-in unix:DIR/pri-in.sock \\
                    --secondary-in unix:DIR/sec-in.sock --vnet-hdr-support

              A checkpoint the external comparator wants reaches QEMU's
              COLO thread through a QMP monitor of its own on the primary
              (``qmp-cx.sock``: ``colo-xdp compare --qmp``).
``xdp``       no redirectors and no colo-compare: each guest's output goes
              to its tap (the secondary keeps filter-redirector f1 for the
              mirrored input and the filter-rewriter), where colo-xdp's XDP
              program takes it; released frames leave by AF_XDP on the
              client's bridge port ``c-h``::

                colo-xdp compare --primary-xdp ccp0 --secondary-xdp ccs0 \
                    --outdev xdp:c-h --qmp unix:DIR/qmp-cx.sock
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tools import vmlab
from colo_xdp.lab.netns import sh
from colo_xdp.lab.process import SupervisedProcess
from vmkit import CLIENT_IP, CLIENT_MAC, GUEST_IP, GUEST_MAC, VmNetwork

ROOT = Path(__file__).resolve().parents[2]
BUILD_QEMU = ROOT / "scripts" / "build-qemu.sh"
FIRMWARE = ("/usr/share/seabios", "/usr/share/qemu")
QMP_TIMEOUT = 10.0
COLO_TIMEOUT = 30.0
BOOT_TIMEOUT = float(os.environ.get("COLO_XDP_VM_BOOT_TIMEOUT", "90"))
DEFAULT_CHECKPOINT_DELAY_MS = 20000      # QEMU's x-checkpoint-delay default
TAP_PRIMARY, TAP_SECONDARY = "ccp0", "ccs0"
COMPARATORS = ("qemu", "external", "xdp")


class QmpError(RuntimeError):
    """QEMU answered a QMP command with an error, or QMP went away."""


def cached_qemu() -> str | None:
    """The patched QEMU's path when scripts/build-qemu.sh has built it, else None."""
    proc = subprocess.run([str(BUILD_QEMU), "--check"], capture_output=True, text=True)
    path = proc.stdout.strip()
    return path if proc.returncode == 0 and os.access(path, os.X_OK) else None


@dataclass
class Event:
    t: float        # time.monotonic() when the line arrived
    name: str
    data: dict


class Qmp:
    """A QMP client on a unix socket: greeting, qmp_capabilities, one command
    at a time, and every event kept with its receive time.  A reader thread
    owns the socket's input; ``close()`` ends it."""

    def __init__(self, path: Path, timeout: float = QMP_TIMEOUT):
        deadline = time.monotonic() + timeout
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        while True:
            try:
                self.sock.connect(str(path))
                break
            except (FileNotFoundError, ConnectionRefusedError):
                if time.monotonic() > deadline:
                    self.sock.close()
                    raise QmpError(f"no QMP on {path} after {timeout:.0f} s") from None
                time.sleep(0.05)
        self.events: list[Event] = []
        self._replies: list[dict] = []
        self._cond = threading.Condition()
        self._cmd_lock = threading.Lock()
        self._closed = False
        self._greeting: dict | None = None
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        with self._cond:
            if not self._cond.wait_for(lambda: self._greeting or self._closed, timeout):
                raise QmpError(f"no QMP greeting on {path}")
        self.cmd("qmp_capabilities")

    def _read(self) -> None:
        buf = b""
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    break
                now = time.monotonic()
                buf += chunk
                *lines, buf = buf.split(b"\n")
                with self._cond:
                    for line in lines:
                        if not line.strip():
                            continue
                        msg = json.loads(line)
                        if "QMP" in msg:
                            self._greeting = msg
                        elif "event" in msg:
                            self.events.append(Event(now, msg["event"], msg.get("data", {})))
                        else:
                            self._replies.append(msg)
                    self._cond.notify_all()
        except OSError:
            pass
        finally:
            with self._cond:
                self._closed = True
                self._cond.notify_all()

    def cmd(self, execute: str, /, timeout: float = QMP_TIMEOUT, **arguments):
        """Run one command; its ``return`` value.  Raises QmpError on an error
        reply, a timeout or a closed connection."""
        name = execute
        with self._cmd_lock:
            msg = {"execute": name}
            if arguments:
                msg["arguments"] = arguments
            with self._cond:
                self._replies.clear()
            try:
                self.sock.sendall(json.dumps(msg).encode() + b"\n")
            except OSError as exc:
                raise QmpError(f"{name}: QMP is gone ({exc})") from None
            with self._cond:
                if not self._cond.wait_for(lambda: self._replies or self._closed, timeout):
                    raise QmpError(f"{name}: no reply in {timeout:.0f} s")
                if not self._replies:
                    raise QmpError(f"{name}: QMP closed")
                reply = self._replies.pop(0)
        if "error" in reply:
            raise QmpError(f"{name}: {reply['error'].get('desc', reply['error'])}")
        return reply.get("return")

    def wait_event(self, name: str, after: float, timeout: float = QMP_TIMEOUT) -> Event:
        """The first event ``name`` received after monotonic time ``after``."""
        def find():
            return next((e for e in self.events if e.name == name and e.t >= after), None)
        with self._cond:
            if not self._cond.wait_for(find, timeout):
                raise QmpError(f"no {name} event within {timeout:.0f} s")
            return find()

    def events_named(self, name: str, after: float = 0.0) -> list[Event]:
        with self._cond:
            return [e for e in self.events if e.name == name and e.t >= after]

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        self._reader.join(2)


@dataclass
class Checkpoint:
    stop: float     # the primary's STOP
    resume: float   # the primary's RESUME

    @property
    def ms(self) -> float:
        return (self.resume - self.stop) * 1000


@dataclass
class ColoPair:
    """Primary and secondary QEMU in COLO mode inside ``lab``.  The lab owns
    the processes, namespaces and temp dir; the pair owns its QMP clients and
    closes them in ``close()`` (the ``pair`` fixture calls both)."""

    lab: VmNetwork
    qemu: str
    comparator: str = "qemu"
    secondary_diverges: bool = True
    checkpoint_delay_ms: int = DEFAULT_CHECKPOINT_DELAY_MS
    # virtio-net's default offloads (TSO, checksum) on the guest's NIC instead
    # of csum=off,gso=off: its tap gets super-frames with partial checksums.
    offloads: bool = False
    timings: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.comparator not in COMPARATORS:
            raise ValueError(f"comparator {self.comparator!r}: use one of {COMPARATORS}")
        self.dir = self.lab.dir
        self.primary: SupervisedProcess | None = None
        self.secondary: SupervisedProcess | None = None
        self.qmp_p: Qmp | None = None
        self.qmp_s: Qmp | None = None
        self.failed_over = False
        self._client: socket.socket | None = None

    # --- paths ----------------------------------------------------------------------
    def sock(self, name: str) -> Path:
        return self.dir / name

    @property
    def comparator_endpoints(self) -> dict[str, str]:
        """Where an external comparator connects (``external`` wiring), and
        its QMP monitor on the primary (``external`` and ``xdp``)."""
        return {"primary_in": f"unix:{self.sock('pri-in.sock')}",
                "secondary_in": f"unix:{self.sock('sec-in.sock')}",
                "outdev": f"unix:{self.sock('out.sock')}",
                "qmp": f"unix:{self.sock('qmp-cx.sock')}"}

    # --- command lines ------------------------------------------------------------
    def _argv(self, side: str, extra: list[str]) -> list[str]:
        diverge = self.dir / f"diverge-{side}"
        diverge.write_text("1" if side == "secondary" and self.secondary_diverges else "0")
        tap = TAP_PRIMARY if side == "primary" else TAP_SECONDARY
        cmdline = f"colo.ip={GUEST_IP}/24 colo.peer={CLIENT_IP},{CLIENT_MAC}"
        fw = [a for d in FIRMWARE for a in ("-L", d)]
        return vmlab.qemu_argv(
            self.lab.guest, side, mac=GUEST_MAC, cmdline=cmdline,
            netdev=f"tap,id=hn0,ifname={tap},script=no,downscript=no,vhost=off",
            serial_log=self.lab.serial(side), binary=self.qemu, offloads=self.offloads,
            extra=(*fw, "-qmp", f"unix:{self.sock(f'qmp-{side}.sock')},server=on,wait=off",
                   "-fw_cfg", f"name={vmlab.FW_CFG_DIVERGE},file={diverge}", *extra))

    def _primary_extra(self) -> list[str]:
        vnet = "vnet_hdr_support=on"
        s = self.sock
        args = [
            "-chardev", f"socket,id=mirror0,path={s('mirror.sock')},server=on,wait=off",
            "-object", f"filter-mirror,id=m0,netdev=hn0,queue=tx,outdev=mirror0,{vnet}",
        ]
        if self.comparator != "qemu":       # the comparator's own monitor
            args += ["-qmp", f"unix:{s('qmp-cx.sock')},server=on,wait=off"]
        if self.comparator == "xdp":        # the guest's output goes to its tap
            return args + ["-S"]
        args += [
            "-chardev", f"socket,id=compare0,path={s('pri-in.sock')},server=on,wait=off",
            "-chardev", f"socket,id=compare_out,path={s('out.sock')},server=on,wait=off",
            "-object", f"filter-redirector,id=redire0,netdev=hn0,queue=rx,indev=compare_out,{vnet}",
            "-object", f"filter-redirector,id=redire1,netdev=hn0,queue=rx,outdev=compare0,{vnet}",
        ]
        if self.comparator == "qemu":
            args += [
                "-chardev", f"socket,id=compare1,path={s('sec-in.sock')},server=on,wait=off",
                "-chardev", f"socket,id=compare0-0,path={s('pri-in.sock')}",
                "-chardev", f"socket,id=compare_out0,path={s('out.sock')}",
                "-object", "iothread,id=iothread1",
                "-object", "colo-compare,id=comp0,primary_in=compare0-0,secondary_in=compare1,"
                           f"outdev=compare_out0,iothread=iothread1,{vnet}",
            ]
        return args + ["-S"]

    def _secondary_extra(self) -> list[str]:
        vnet = "vnet_hdr_support=on"
        s = self.sock
        red1 = (f"socket,id=red1,path={s('sec-in.sock')},reconnect=1" if self.comparator == "qemu"
                else f"socket,id=red1,path={s('sec-in.sock')},server=on,wait=off")
        args = [
            "-chardev", f"socket,id=red0,path={s('mirror.sock')},reconnect=1",
            "-object", f"filter-redirector,id=f1,netdev=hn0,queue=tx,indev=red0,{vnet}",
        ]
        if self.comparator != "xdp":        # in XDP mode the output goes to the tap
            args += ["-chardev", red1,
                     "-object", f"filter-redirector,id=f2,netdev=hn0,queue=rx,outdev=red1,{vnet}"]
        return args + [
            "-object", f"filter-rewriter,id=rew0,netdev=hn0,queue=all,{vnet}",
            "-incoming", f"unix:{s('migrate.sock')}",
        ]

    # --- life cycle -----------------------------------------------------------------
    def start(self) -> None:
        """Both QEMUs up and on QMP, taps plugged; nothing migrated yet."""
        self.lab.timings["primary_start"] = time.monotonic()
        self.primary = self.lab.spawn("qemu-primary", self._argv("primary", self._primary_extra()))
        self.qmp_p = self._qmp("primary")
        self.secondary = self.lab.spawn("qemu-secondary",
                                        self._argv("secondary", self._secondary_extra()))
        self.qmp_s = self._qmp("secondary")
        self.lab.plug_tap(TAP_PRIMARY, bridge=True)
        self.lab.plug_tap(TAP_SECONDARY, bridge=False)

    def _qmp(self, side: str) -> Qmp:
        try:
            qmp = Qmp(self.sock(f"qmp-{side}.sock"))
        except QmpError as exc:
            pytest.fail(f"{side}: {exc}\n{self.lab.logs()}")
        self.lab.socks.append(qmp.sock)
        return qmp

    def wait_chardevs(self, timeout: float = 5.0) -> None:
        """The secondary's client chardevs connected (they retry every second)."""
        deadline = time.monotonic() + timeout
        want = {"red0"} | ({"red1"} if self.comparator == "qemu" else set())
        while True:
            # query-chardev shows "disconnected:..." as the filename until connected
            up = {c["label"] for c in self.qmp_s.cmd("query-chardev")
                  if c["label"] in want and not c["filename"].startswith("disconnected")}
            if up == want:
                return
            if time.monotonic() > deadline:
                pytest.fail(f"secondary chardevs {sorted(want - up)} never connected:\n"
                            f"{self.qmp_s.cmd('query-chardev')}\n{self.lab.logs()}")
            time.sleep(0.1)

    def enter_colo(self) -> float:
        """x-colo on both, ``migrate``, wait for COLO on both; seconds taken."""
        for qmp in (self.qmp_p, self.qmp_s):
            qmp.cmd("migrate-set-capabilities",
                    capabilities=[{"capability": "x-colo", "state": True}])
        self.set_checkpoint_delay(self.checkpoint_delay_ms)
        t0 = time.monotonic()
        self.qmp_p.cmd("migrate", uri=f"unix:{self.sock('migrate.sock')}")
        deadline = t0 + COLO_TIMEOUT
        while True:
            modes = (self.qmp_p.cmd("query-colo-status")["mode"],
                     self.qmp_s.cmd("query-colo-status")["mode"])
            if modes == ("primary", "secondary"):
                break
            if time.monotonic() > deadline or any(p.poll() is not None for p in self.lab.procs):
                pytest.fail(f"no COLO (modes {modes}, migrate "
                            f"{self.qmp_p.cmd('query-migrate')}):\n{self.lab.logs()}")
            time.sleep(0.02)
        self.timings["colo_reach_s"] = round(time.monotonic() - t0, 3)
        return time.monotonic() - t0

    def wait_guest(self) -> None:
        """The guest, booting on both replicas from the state migrated at the
        start of COLO, printed its ready line on both serial consoles.
        (Checkpointing a secondary that has not booted yet is allowed by COLO,
        but the tests want both echoes up before they start.)"""
        now = time.monotonic()
        self.lab.timings.update(primary_start=now, secondary_start=now)
        self.lab.wait_ready("primary", "secondary")
        for side in ("primary", "secondary"):
            self.timings[f"{side}_boot_s"] = self.lab.timings.pop(f"{side}_boot_s")

    def up(self) -> None:
        """Start, enter COLO, wait for the guest, then one checkpoint so that
        both replicas start the tests from the same state."""
        self.start()
        self.run_colo()

    def run_colo(self) -> None:
        """The second half of up(), for a caller that plugs an external
        comparator in between (it connects once both QEMUs are up)."""
        self.wait_chardevs()
        self.enter_colo()
        self.wait_guest()
        cp = self.wait_checkpoint(self.request_checkpoint(), timeout=30)
        self.timings["first_checkpoint_ms"] = round(cp.ms, 1)

    def client(self) -> socket.socket:
        """The client's UDP socket to the guest's echo (one per pair)."""
        if self._client is None:
            self._client = self.lab.client()
        return self._client

    # --- checkpoints ----------------------------------------------------------------
    def set_checkpoint_delay(self, ms: int) -> None:
        """Also re-arms the COLO thread's timer: with the current value this
        is a checkpoint request (see request_checkpoint)."""
        self.qmp_p.cmd("migrate-set-parameters", **{"x-checkpoint-delay": ms})
        self.checkpoint_delay_ms = ms

    def request_checkpoint(self) -> float:
        """Ask the primary's COLO thread for a checkpoint now; the send time."""
        t = time.monotonic()
        self.set_checkpoint_delay(self.checkpoint_delay_ms)
        return t

    def checkpoints(self, after: float = 0.0) -> list[Checkpoint]:
        """Completed checkpoints seen on the primary's QMP (STOP, then RESUME)."""
        stops = self.qmp_p.events_named("STOP", after)
        resumes = self.qmp_p.events_named("RESUME", after)
        out = []
        for s in stops:
            r = next((r for r in resumes if r.t >= s.t), None)
            if r:
                out.append(Checkpoint(s.t, r.t))
        return out

    def wait_checkpoint(self, after: float, timeout: float = QMP_TIMEOUT) -> Checkpoint:
        stop = self.qmp_p.wait_event("STOP", after, timeout)
        resume = self.qmp_p.wait_event("RESUME", stop.t, timeout)
        return Checkpoint(stop.t, resume.t)

    # --- failover -------------------------------------------------------------------
    def failover(self, *dies_with_primary: SupervisedProcess) -> float:
        """The primary dies (with the processes of its host given); the
        secondary takes over: lost-heartbeat, its redirectors removed, its
        tap on the bridge.  Returns the kill time."""
        t_kill = time.monotonic()
        for proc in (self.primary, *dies_with_primary):
            proc.send_signal(signal.SIGKILL)
        for proc in (self.primary, *dies_with_primary):
            proc.wait(10)
        t0 = time.monotonic()
        self.qmp_s.cmd("x-colo-lost-heartbeat")
        self.timings["lost_heartbeat_ms"] = round((time.monotonic() - t0) * 1000, 1)
        for obj in ("f2", "f1") if self.comparator != "xdp" else ("f1",):
            self.qmp_s.cmd("object-del", id=obj)
        sh("ip", "-n", self.lab.host, "link", "set", TAP_SECONDARY, "master", "br0")
        self.failed_over = True
        return t_kill

    def first_reply_after(self, since: float, timeout: float = 10.0) -> float:
        """Ask the guest until it answers (after a failover); the monotonic
        time of the first right answer."""
        client = self.client()
        client.settimeout(0.05)
        deadline = since + timeout
        i = 0
        while True:
            assert time.monotonic() < deadline, "the guest never answered"
            client.send(b"failover %d" % i)
            try:
                reply = client.recv(65536)
            except socket.timeout:
                i += 1
                continue
            if reply == b"echo:failover %d" % i:
                return time.monotonic()

    def close(self) -> None:
        for qmp in (self.qmp_p, self.qmp_s):
            if qmp:
                qmp.close()
