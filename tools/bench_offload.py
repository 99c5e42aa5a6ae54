"""A guest with virtio-net's default offloads: its TCP throughput to a client
through colo-xdp's XDP mode, next to the same guest without colo-xdp, in the
same run (``python -m tools.bench_offload``, and the last section of ``make
bench`` unless ``--no-offload``; root, the guest of tools/vmlab.py).  Figures
only: nothing here passes or fails on a speed.

One TCG guest, TSO and checksum offload on (``vhost=off``)::

   ns client: c-g ─veth─ c-h ─ br0 ─ tp ═ guest (QEMU, filter-mirror rx ─▶ mirror.sock)
                                                                    │ relay (this process)
                                        ts (a tap: the "secondary") ◀┘

The relay writes every frame the guest sends, vnet header and all (TSO
super-frames with partial checksums), into ``ts``: the secondary of an XDP
mode comparator that sees the primary's own stream, so every pair matches.
Rows, alternating, ``--runs`` times each, ``--mib`` MiB per fetch by the
client from the guest's ``colo-send``:

- ``direct``: no colo-xdp; the guest's frames cross the bridge to the client
  (the kernel segments them for the veth).
- ``xdp``: ``colo-xdp compare --primary-xdp tp --secondary-xdp ts --outdev
  xdp:c-h``: the super-frames are redirected whole (multi-buffer AF_XDP),
  compared, cut into MSS segments (csrc/segment.c) and sent by AF_XDP.

Each fetch's bytes are checked against the pattern.  The relay runs in both
rows, so both pay for it.
"""
from __future__ import annotations

import argparse
import fcntl
import os
import shutil
import socket
import statistics
import struct
import sys
import tempfile
import threading
import time
from pathlib import Path

from colo_xdp.lab.netns import in_netns, sh
from colo_xdp.lab.process import ProcessError, SupervisedProcess
from colo_xdp.proto.framing import Decoder
from tools import vmlab

GUEST_IP, CLIENT_IP = "10.79.0.2", "10.79.0.1"
GUEST_MAC, CLIENT_MAC = "52:54:00:c0:79:02", "02:00:00:79:00:01"
TUNSETIFF, TUNSETVNETHDRSZ = 0x400454CA, 0x400454D8
IFF_TAP, IFF_NO_PI, IFF_VNET_HDR = 0x0002, 0x1000, 0x4000
BOOT_TIMEOUT = 120.0
FETCH_TIMEOUT = 120.0
DEFAULT_MIB = 20


def problem() -> str | None:
    """Why the offload row cannot run here, or None."""
    from colo_xdp.transport.xdp import classifier
    return vmlab.qemu_problem() or classifier.unavailable()


class Lab:
    """Namespaces, bridge, the guest, the relay; ``close`` removes them all."""

    def __init__(self, offloads: bool = True, vhost: bool = False):
        tag = os.getpid() % 100000
        self.host, self.client = f"cxoh-{tag}", f"cxoc-{tag}"
        self.dir = Path(tempfile.mkdtemp(prefix="cx-offload-"))
        self.offloads, self.vhost = offloads, vhost
        self.made: list[str] = []
        self.procs: list[SupervisedProcess] = []
        self.ts_fd: int | None = None
        self.relay_frames = 0
        self._stop = threading.Event()

    def build(self, guest: vmlab.Guest) -> None:
        self.made += [self.host, self.client]
        vmlab.build_client_side(self.host, self.client, (CLIENT_IP, CLIENT_MAC),
                                (GUEST_IP, GUEST_MAC))
        with in_netns(self.host):
            self.ts_fd = os.open("/dev/net/tun", os.O_RDWR)
        fcntl.ioctl(self.ts_fd, TUNSETIFF,
                    struct.pack("16sH", b"ts", IFF_TAP | IFF_NO_PI | IFF_VNET_HDR))
        sh("ip", "-n", self.host, "link", "set", "ts", "up")
        mirror = self.dir / "mirror.sock"
        argv = vmlab.qemu_argv(
            guest, "offload-guest", mac=GUEST_MAC,
            cmdline=f"colo.ip={GUEST_IP}/24 colo.peer={CLIENT_IP},{CLIENT_MAC}",
            netdev="tap,id=hn0,ifname=tp,script=no,downscript=no,vhost="
                   + ("on" if self.vhost else "off"),
            serial_log=self.dir / "guest.serial", offloads=self.offloads,
            extra=("-chardev", f"socket,id=mirror0,path={mirror},server=on,wait=off",
                   "-object", "filter-mirror,id=m0,netdev=hn0,queue=rx,outdev=mirror0,"
                              "vnet_hdr_support=on"))
        qemu = SupervisedProcess((), command=argv, name="qemu",
                                 prefix=["ip", "netns", "exec", self.host])
        self.procs.append(qemu.start())
        deadline = time.monotonic() + 10
        while not mirror.exists() or not sh("ip", "-n", self.host, "-o", "link", "show",
                                            "dev", "tp", check=False):
            if time.monotonic() > deadline or qemu.poll() is not None:
                raise RuntimeError("QEMU did not start:\n" + qemu.log)
            time.sleep(0.05)
        sh("ip", "-n", self.host, "link", "set", "tp", "master", "br0", "up")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(str(mirror))
        threading.Thread(target=self._relay, args=(sock,), daemon=True).start()
        serial, deadline = self.dir / "guest.serial", time.monotonic() + BOOT_TIMEOUT
        while vmlab.READY not in (serial.read_text(errors="replace") if serial.exists() else ""):
            if time.monotonic() > deadline or qemu.poll() is not None:
                raise RuntimeError("the guest did not boot:\n" + qemu.log)
            time.sleep(0.2)

    def _relay(self, sock: socket.socket) -> None:
        """Every mirrored frame, vnet header and all, into ts."""
        dec, hdr_len = Decoder(vnet=True), None
        sock.settimeout(0.2)
        while not self._stop.is_set():
            try:
                data = sock.recv(1 << 20)
            except socket.timeout:
                continue
            if not data:
                return
            for rec in dec.feed(data):
                if rec.vnet_hdr_len != hdr_len:
                    hdr_len = rec.vnet_hdr_len
                    fcntl.ioctl(self.ts_fd, TUNSETVNETHDRSZ, struct.pack("i", hdr_len))
                try:
                    os.write(self.ts_fd, rec.frame)
                    self.relay_frames += 1
                except OSError:
                    pass

    def wait_sender(self, timeout: float = 10.0) -> None:
        """Until colo-send listens (the guest says ready as it starts it)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.fetch(1)
                return
            except ConnectionRefusedError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def fetch(self, n: int) -> float:
        """Seconds for the client to get n bytes from colo-send, checked."""
        fetched = vmlab.fetch_stream(self.client, GUEST_IP, n, FETCH_TIMEOUT)
        if not fetched.intact:
            raise RuntimeError(f"the stream came wrong: {fetched.got} of {n} bytes")
        return fetched.seconds

    def colo_xdp(self) -> SupervisedProcess:
        proc = SupervisedProcess(
            ("compare", "--primary-xdp", "tp", "--secondary-xdp", "ts", "--outdev", "xdp:c-h",
             "--notify-dev", f"unix:{self.dir / 'notify.sock'},server=on"),
            prefix=["ip", "netns", "exec", self.host])
        self.procs.append(proc.start())
        try:
            proc.wait_ready(30)
        except ProcessError:
            raise RuntimeError("colo-xdp did not come up:\n" + proc.log) from None
        return proc

    def close(self) -> None:
        self._stop.set()
        for proc in self.procs:
            proc.kill(3)
        if self.ts_fd is not None:
            os.close(self.ts_fd)
        for ns in self.made:
            sh("ip", "netns", "del", ns, check=False)
        shutil.rmtree(self.dir, ignore_errors=True)


def run(runs: int, mib: int = DEFAULT_MIB, vhost: bool = False) -> int:
    """Build the lab, measure both rows, print them; raises when the lab or
    a stream fails."""
    lab = Lab(vhost=vhost)
    rows: dict[str, list[float]] = {"direct": [], "xdp": []}
    n = mib << 20
    summary = ""
    try:
        lab.build(vmlab.build_guest())
        lab.wait_sender()
        lab.fetch(1 << 20)                                     # warm up
        for _ in range(runs):
            rows["direct"].append(n / lab.fetch(n) / 1e6)
            cx = lab.colo_xdp()
            rows["xdp"].append(n / lab.fetch(n) / 1e6)
            cx.stop(5)
            summary = next((ln for ln in reversed(cx.lines) if " stopped " in f" {ln}"), "")
    finally:
        lab.close()
    print(f"guest TCP with offloads on (TCG, vhost={'on' if vhost else 'off'}), "
          f"{mib} MiB per fetch, {runs} fetches per row, MB/s:")
    for name, values in rows.items():
        print(f"  {name:<7} median {statistics.median(values):7.2f}   "
              f"runs {' '.join(f'{v:.2f}' for v in values)}")
    ratio = statistics.median(rows["xdp"]) / statistics.median(rows["direct"])
    print(f"  xdp/direct: {ratio:.2f}; frames relayed to the secondary: {lab.relay_frames}")
    if summary:
        print(f"  last colo-xdp summary: {summary.strip()[:300]}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=3, help="fetches per row (default 3)")
    p.add_argument("--mib", type=int, default=DEFAULT_MIB,
                   help=f"MiB per fetch (default {DEFAULT_MIB})")
    p.add_argument("--vhost", action="store_true", help="the guest's tap with vhost=on")
    args = p.parse_args(argv)
    reason = problem()
    if reason:
        print(f"error: the offload bench cannot run here: {reason}", file=sys.stderr)
        return 1
    try:
        return run(args.runs, args.mib, args.vhost)
    except (RuntimeError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
