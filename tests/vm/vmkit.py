"""The lab of the VM tests: namespaces, taps, a bridge, TCG guests, a client.

Everything lives in two network namespaces made per test (``host``: the
guests' taps, the bridge, colo-xdp, and in test B QEMU's chardev sockets on
its loopback; ``client``: the client's end of a veth).  ``close()`` removes
every process, socket, namespace (and with them every tap, bridge, veth and
tc filter) on every path.  See docs/vm-tests.md for the pictures.
"""
from __future__ import annotations

import itertools
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tools import vmlab
from colo_xdp.lab.netns import in_netns, sh
from colo_xdp.lab.process import ProcessError, SupervisedProcess

CI = bool(os.environ.get("CI"))
BOOT_TIMEOUT = float(os.environ.get("COLO_XDP_VM_BOOT_TIMEOUT", "90"))
TIMEOUT = 10.0

GUEST_MAC = "52:54:00:c0:10:02"      # both replicas: same MAC, same IP
GUEST_IP = "10.77.0.2"
CLIENT_MAC = "02:00:00:77:00:01"
CLIENT_IP = "10.77.0.1"
PORT = 7

DO_CHECKPOINT = b"\x00\x00\x00\x0dDO_CHECKPOINT"
COLO_CHECKPOINT = b"\x00\x00\x00\x0fCOLO_CHECKPOINT"

_counter = itertools.count()


def need(ok: bool, message: str) -> None:
    """Skip without a capability; under CI, fail instead."""
    if ok:
        return
    if CI:
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


class VmNetwork:
    def __init__(self, guest: vmlab.Guest, prefix: str = "cxv", dir_prefix: str = "cx-vm-"):
        """Namespaces PREFIXh-N (host) and PREFIXc-N (client), temp dir
        /tmp/DIR_PREFIX*."""
        tag = f"{os.getpid() % 10000}{next(_counter)}"
        self.guest = guest
        self.host, self.client_ns = f"{prefix}h-{tag}", f"{prefix}c-{tag}"
        self.dir = Path(tempfile.mkdtemp(prefix=dir_prefix))
        self.procs: list[SupervisedProcess] = []
        self.socks: list[socket.socket] = []
        self.made: list[str] = []
        self.timings: dict[str, float] = {}

    # --- namespaces and links ---------------------------------------------------
    def build(self) -> None:
        self.made += [self.host, self.client_ns]
        vmlab.build_client_side(self.host, self.client_ns, (CLIENT_IP, CLIENT_MAC),
                                (GUEST_IP, GUEST_MAC))

    def wait_link(self, dev: str) -> None:
        deadline = time.monotonic() + TIMEOUT
        while subprocess.run(["ip", "-n", self.host, "link", "show", "dev", dev],
                             capture_output=True).returncode != 0:
            if time.monotonic() > deadline:
                pytest.fail(f"{dev} did not appear:\n{self.logs()}")
            time.sleep(0.05)

    def plug_tap(self, tap: str, bridge: bool) -> None:
        self.wait_link(tap)
        if bridge:
            sh("ip", "-n", self.host, "link", "set", tap, "master", "br0")
        sh("ip", "-n", self.host, "link", "set", tap, "up")

    def mirror_client_to(self, tap: str) -> None:
        """Every frame the client sends is also written into ``tap`` (u32
        match-all: this kernel has no cls_matchall)."""
        sh("ip", "netns", "exec", self.host, "tc", "qdisc", "add", "dev", "c-h", "clsact")
        sh("ip", "netns", "exec", self.host, "tc", "filter", "add", "dev", "c-h", "ingress",
           "protocol", "all", "u32", "match", "u32", "0", "0", "action", "mirred", "egress", "mirror", "dev", tap)

    # --- processes ----------------------------------------------------------------
    def spawn(self, name: str, argv: list[str] | None, args: tuple[str, ...] = ()
              ) -> SupervisedProcess:
        """``argv`` (None: colo-xdp) with ``args`` in the host namespace."""
        proc = SupervisedProcess(args, command=argv, name=name,
                                 prefix=["ip", "netns", "exec", self.host])
        self.procs.append(proc.start())
        return proc

    def serial(self, name: str) -> Path:
        return self.dir / f"{name}.serial"

    def boot(self, name: str, *, diverge: bool, netdev: str, extra: tuple[str, ...] = ()
             ) -> SupervisedProcess:
        cmdline = (f"colo.ip={GUEST_IP}/24 colo.peer={CLIENT_IP},{CLIENT_MAC} "
                   f"colo.diverge={int(diverge)}")
        argv = vmlab.qemu_argv(self.guest, name, mac=GUEST_MAC, cmdline=cmdline,
                               netdev=netdev, serial_log=self.serial(name), extra=extra)
        self.timings[f"{name}_start"] = time.monotonic()
        return self.spawn(f"qemu-{name}", argv)

    def wait_ready(self, *names: str) -> None:
        deadline = time.monotonic() + BOOT_TIMEOUT
        pending = set(names)
        while pending:
            for name in list(pending):
                path = self.serial(name)
                if path.exists() and vmlab.READY in path.read_text(errors="replace"):
                    pending.discard(name)
                    self.timings[f"{name}_boot_s"] = round(
                        time.monotonic() - self.timings[f"{name}_start"], 1)
            dead = [p for p in self.procs if p.poll() is not None]
            if dead or time.monotonic() > deadline:
                pytest.fail(f"guests {sorted(pending)} not ready:\n{self.logs()}")
            time.sleep(0.1)

    def colo_xdp(self, *args: str, ready_timeout: float = TIMEOUT) -> SupervisedProcess:
        proc = self.spawn("colo-xdp", None, args)
        try:
            proc.wait_ready(ready_timeout)
        except ProcessError:
            pytest.fail("colo-xdp did not come up:\n" + proc.log)
        return proc

    def stop(self, proc: SupervisedProcess) -> str:
        assert proc.stop(TIMEOUT) == 0 and not proc.killed, proc.log
        return proc.log

    def logs(self) -> str:
        out = []
        for proc in self.procs:
            out.append(f"--- {proc.name} (rc={proc.poll()}):\n" + proc.log[-2000:])
        for path in sorted(self.dir.glob("*.serial")):
            out.append(f"--- {path.name}:\n" + path.read_text(errors="replace")[-1500:])
        return "\n".join(out)

    # --- sockets --------------------------------------------------------------------
    def unix(self, name: str) -> str:
        return f"unix:{self.dir / name},server=on"

    def connect(self, name: str) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(TIMEOUT)
        sock.connect(str(self.dir / name))
        self.socks.append(sock)
        return sock

    def client(self) -> socket.socket:
        """A UDP socket in the client namespace, talking to the guests' echo."""
        with in_netns(self.client_ns):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((CLIENT_IP, 40007))
        sock.connect((GUEST_IP, PORT))
        sock.settimeout(TIMEOUT)
        self.socks.append(sock)
        return sock

    def close(self) -> None:
        for sock in self.socks:
            sock.close()
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            proc.stop(5)
        for ns in self.made:
            sh("ip", "netns", "del", ns, check=False)
        shutil.rmtree(self.dir, ignore_errors=True)


def silent(sock: socket.socket, seconds: float) -> bool:
    """Nothing arrives on sock for a while."""
    sock.settimeout(seconds)
    try:
        sock.recv(65536)
        return False
    except socket.timeout:
        return True
    finally:
        sock.settimeout(TIMEOUT)


def exchange_and_diverge(lab: VmNetwork, notify: socket.socket, n: int = 5,
                         vnet: bool = False) -> None:
    """The checks both tests make, from the client's side:

    1. n requests answered, in order, with the guests' (equal) replies, and
       no checkpoint requested;
    2. a request the secondary answers differently: DO_CHECKPOINT on the
       notify socket and the primary's reply held back from the client;
    3. COLO_CHECKPOINT sent back: the primary's reply reaches the client
       (with vnet_hdr on, QEMU's notify reader wants a zero vnet_hdr_len
       field before the message, and so does colo-xdp's).
    """
    client = lab.client()
    t0 = time.monotonic()
    for i in range(n):
        client.send(b"request %d" % i)
        assert client.recv(65536) == b"echo:request %d" % i, lab.logs()
    lab.timings["round_trip_ms"] = round((time.monotonic() - t0) / n * 1000, 1)
    assert silent(notify, 0.3), "a checkpoint was requested for matching replies"

    t0 = time.monotonic()
    client.send(b"!Diverge now")
    notify.settimeout(TIMEOUT)
    try:
        got = notify.recv(len(DO_CHECKPOINT))
    except socket.timeout:
        got = b"(nothing)"
    assert got == DO_CHECKPOINT, lab.logs()
    lab.timings["checkpoint_after_ms"] = round((time.monotonic() - t0) * 1000, 1)
    assert silent(client, 0.5), "the primary's reply left although the secondary differed"
    notify.sendall(COLO_CHECKPOINT[:4] + b"\0\0\0\0" + COLO_CHECKPOINT[4:] if vnet
                   else COLO_CHECKPOINT)
    assert client.recv(65536) == b"echo:!Diverge now"
