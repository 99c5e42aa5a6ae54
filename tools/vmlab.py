"""Real guests for the VM tests: Debian's kernel and a busybox initramfs.

``build_guest()`` makes, idempotently and cached under ``.cache/vm/`` of the
repository (or ``$COLO_XDP_VM_CACHE``):

- ``vmlinuz``: from Debian's versioned ``linux-image-6.1.*-amd64`` package
  (the one ``linux-image-amd64`` depends on), fetched with ``apt-get download``;
- ``initrd.gz``: a newc cpio made here (no root, no cpio binary) holding
  busybox-static (``apt-get download busybox-static``), the virtio-net and
  qemu_fw_cfg modules of that kernel (Debian builds virtio, virtio_pci,
  virtio_net and qemu_fw_cfg as modules), ``colo-echo`` (a 50-line static UDP
  echo compiled from the C source below with the host's gcc and glibc's
  libc.a) and ``/init``.

The guest's ``/init`` loads the modules, gives ``eth0`` the address in
``colo.ip=ADDR/LEN``, a static ARP entry for ``colo.peer=IP,MAC`` (no
ARP needed: frames of both replicas stay identical), and runs
``colo-echo 7 DIVERGE FWCFG`` where DIVERGE is ``colo.diverge=`` (default 0)
and FWCFG is the fw_cfg file ``opt/colo/diverge`` in sysfs. The echo answers
every datagram with ``echo:`` and the payload; with diverge on, a payload
starting with ``!`` is answered with its letters' case flipped (same length),
so one boot serves both matching traffic and a forced divergence. Diverge is
on when the command line says so, or when the fw_cfg file (QEMU's
``-fw_cfg name=opt/colo/diverge,file=PATH``) starts with ``1``; that file is
read again for every datagram. The command-line flag lives in guest RAM, so
in a COLO pair the first checkpoint overwrites the secondary's with the
primary's; the fw_cfg file belongs to each QEMU process and is not migrated,
so a secondary started with it set diverges after every checkpoint. When
ready the guest prints ``COLO-GUEST-READY`` on the serial console.

Nothing is downloaded from anywhere but Debian's apt mirrors.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import os
import re
import shutil
import socket
import stat
import struct
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from colo_xdp.lab.netns import add_netns, add_veth, in_netns, sh

ROOT = Path(__file__).resolve().parents[1]
READY = "COLO-GUEST-READY"

# Load order matters: dependencies first (modules.dep is not shipped unbuilt).
MODULES = ("virtio_ring", "virtio", "virtio_pci_legacy_dev", "virtio_pci_modern_dev",
           "virtio_pci", "failover", "net_failover", "virtio_net", "qemu_fw_cfg")
# The guest reads the divergence switch here (see the module docstring).
FW_CFG_DIVERGE = "opt/colo/diverge"
FW_CFG_DIVERGE_SYSFS = f"/sys/firmware/qemu_fw_cfg/by_name/{FW_CFG_DIVERGE}/raw"

ECHO_C = r"""
/* colo-echo PORT [DIVERGE [FWCFG]]: UDP echo for the COLO VM tests. */
#include <fcntl.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* Does the fw_cfg file say 1?  Read anew each time: not cached in RAM. */
static int fwcfg_on(const char *path)
{
    char c = 0;
    int fd = path ? open(path, O_RDONLY) : -1;
    if (fd < 0)
        return 0;
    if (read(fd, &c, 1) != 1)
        c = 0;
    close(fd);
    return c == '1';
}

int main(int argc, char **argv)
{
    int port = argc > 1 ? atoi(argv[1]) : 7;
    int diverge = argc > 2 && atoi(argv[2]);
    const char *fwcfg = argc > 3 ? argv[3] : NULL;
    int s = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in me = {0};
    me.sin_family = AF_INET;
    me.sin_port = htons(port);
    if (s < 0 || bind(s, (struct sockaddr *)&me, sizeof me) < 0)
        return 1;
    for (;;) {
        char in[2048], out[2048 + 5];
        struct sockaddr_in peer;
        socklen_t plen = sizeof peer;
        ssize_t n = recvfrom(s, in, sizeof in, 0, (struct sockaddr *)&peer, &plen);
        if (n < 0)
            continue;
        memcpy(out, "echo:", 5);
        memcpy(out + 5, in, n);
        if (n > 0 && in[0] == '!' && (diverge || fwcfg_on(fwcfg)))
            for (ssize_t i = 5; i < n + 5; i++)
                if ((out[i] | 0x20) >= 'a' && (out[i] | 0x20) <= 'z')
                    out[i] ^= 0x20;
        sendto(s, out, n + 5, 0, (struct sockaddr *)&peer, plen);
    }
}
"""

# The byte at offset i of what colo-send sends: pattern_byte(i) below.
SEND_PORT = 5001
SEND_C = r"""
/* colo-send PORT: TCP for the COLO VM tests.  Each connection writes a 4-byte
 * big-endian count N, then reads N bytes of (i * 131 + (i >> 13)) & 0xff, byte i
 * from 0, and the connection is closed.  Deterministic, so both replicas send
 * the same stream. */
#include <netinet/in.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

static int send_stream(int c)
{
    unsigned char hdr[4], buf[65536];
    uint32_t n, at = 0;
    ssize_t got = 0;
    while (got < 4) {
        ssize_t r = read(c, hdr + got, 4 - got);
        if (r <= 0)
            return -1;
        got += r;
    }
    n = (uint32_t)hdr[0] << 24 | hdr[1] << 16 | hdr[2] << 8 | hdr[3];
    while (at < n) {
        uint32_t len = n - at < sizeof buf ? n - at : sizeof buf;
        for (uint32_t i = 0; i < len; i++)
            buf[i] = (unsigned char)((at + i) * 131 + ((at + i) >> 13));
        for (uint32_t off = 0; off < len;) {
            ssize_t w = write(c, buf + off, len - off);
            if (w <= 0)
                return -1;
            off += w;
        }
        at += len;
    }
    return 0;
}

int main(int argc, char **argv)
{
    int s = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    struct sockaddr_in me = {0};
    me.sin_family = AF_INET;
    me.sin_port = htons(argc > 1 ? atoi(argv[1]) : 5001);
    setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (s < 0 || bind(s, (struct sockaddr *)&me, sizeof me) < 0 || listen(s, 4) < 0)
        return 1;
    for (;;) {
        int c = accept(s, NULL, NULL);
        if (c < 0)
            continue;
        send_stream(c);
        close(c);
    }
}
"""


def pattern(n: int) -> bytes:
    """The n bytes colo-send sends: byte i is (i * 131 + (i >> 13)) & 0xff."""
    block = 1 << 13
    base = bytes((i * 131) & 0xFF for i in range(block))
    out = bytearray()
    for k in range(-(-n // block)):
        add = bytes((j + k) & 0xFF for j in range(256))
        out += base.translate(add)
    return bytes(out[:n])


def build_client_side(host_ns: str, client_ns: str, client: tuple[str, str],
                      guest: tuple[str, str]) -> None:
    """The namespaces a guest lab is built on: ``host_ns`` (where the taps
    go) with a bridge br0, and ``client_ns`` linked to it by a veth (c-g in
    the client, c-h on br0), the client's (ip, mac) on c-g and a static
    neighbour entry for the guest's (ip, mac).  Made in this order, so a
    caller that notes both names first can remove what was made."""
    for ns in (host_ns, client_ns):
        add_netns(ns)
        sh("ip", "-n", ns, "link", "set", "lo", "up")
    add_veth(host_ns, "c-h", client_ns, "c-g", up=False)
    sh("ip", "-n", client_ns, "link", "set", "c-g", "address", client[1])
    sh("ip", "-n", client_ns, "addr", "add", f"{client[0]}/24", "dev", "c-g")
    sh("ip", "-n", client_ns, "link", "set", "c-g", "up")
    sh("ip", "-n", client_ns, "neigh", "replace", guest[0], "lladdr", guest[1],
       "dev", "c-g", "nud", "permanent")
    sh("ip", "-n", host_ns, "link", "add", "br0", "type", "bridge")
    sh("ip", "-n", host_ns, "link", "set", "c-h", "master", "br0", "up")
    sh("ip", "-n", host_ns, "link", "set", "br0", "up")


@dataclass(frozen=True)
class Fetched:
    """What fetch_stream got: bytes that came, whether they were the
    pattern's, seconds from connect to the last byte."""

    got: int
    intact: bool
    seconds: float


def fetch_stream(client_ns: str, guest_ip: str, n: int, timeout: float) -> Fetched:
    """Ask the guest's colo-send (port SEND_PORT) for n bytes, from a TCP
    socket in network namespace ``client_ns``, and check them against
    pattern(n)."""
    with in_netns(client_ns):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        t0 = time.monotonic()
        sock.connect((guest_ip, SEND_PORT))
        sock.sendall(struct.pack("!I", n))
        digest, got = hashlib.sha256(), 0
        while got < n:
            chunk = sock.recv(1 << 20)
            if not chunk:
                break
            digest.update(chunk)
            got += len(chunk)
        seconds = time.monotonic() - t0
    finally:
        sock.close()
    intact = got == n and digest.digest() == hashlib.sha256(pattern(n)).digest()
    return Fetched(got, intact, seconds)


INIT_SH = r"""#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mkdir -p /proc /sys /dev /tmp
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
for m in %(modules)s; do insmod /lib/modules/$m.ko || echo "colo-guest: insmod $m failed"; done
ip=; peer=; diverge=0
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        colo.ip=*) ip=${arg#colo.ip=} ;;
        colo.peer=*) peer=${arg#colo.peer=} ;;
        colo.diverge=*) diverge=${arg#colo.diverge=} ;;
    esac
done
i=0
while [ ! -e /sys/class/net/eth0 ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
ip link set lo up
ip addr add "$ip" dev eth0
ip link set eth0 up
[ -n "$peer" ] && arp -i eth0 -s "${peer%%%%,*}" "${peer#*,}"
/bin/colo-echo 7 "$diverge" %(fwcfg)s &
/bin/colo-send %(send_port)d &
# Ready once the echo's socket is bound (UDP port 7 in /proc/net/udp) and
# colo-send listens (its TCP port in /proc/net/tcp): a datagram or a
# connection before that would be refused.
i=0
while ! { grep -q ' 00000000:0007 ' /proc/net/udp && grep -q ' 00000000:%(send_port)04X ' /proc/net/tcp; } && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
echo "%(ready)s ip=$ip diverge=$diverge"
while true; do sleep 3600; done
"""


class VmBuildError(RuntimeError):
    pass


@dataclass(frozen=True)
class Guest:
    kernel: Path
    initrd: Path
    version: str


def cache_dir() -> Path:
    return Path(os.environ.get("COLO_XDP_VM_CACHE", ROOT / ".cache" / "vm"))


def _run(*args: str, cwd: Path | None = None) -> str:
    try:
        out = subprocess.run(args, cwd=cwd, check=True, capture_output=True, text=True)
    except FileNotFoundError as exc:
        raise VmBuildError(f"{args[0]} is missing") from exc
    except subprocess.CalledProcessError as exc:
        raise VmBuildError(f"{' '.join(args)} failed: {exc.stderr.strip()[-400:]}") from exc
    return out.stdout


def _download(debs: Path, pattern: str, package: str) -> Path:
    """The cached .deb matching pattern, else apt-get download package."""
    debs.mkdir(parents=True, exist_ok=True)
    found = sorted(p for p in debs.glob("*.deb") if re.match(pattern, p.name))
    if not found:
        _run("apt-get", "download", package, cwd=debs)
        found = sorted(p for p in debs.glob("*.deb") if re.match(pattern, p.name))
    if not found:
        raise VmBuildError(f"apt-get download {package} left no {pattern} in {debs}")
    return found[-1]


def kernel_package() -> str:
    """The versioned package linux-image-amd64 depends on."""
    out = _run("apt-cache", "depends", "linux-image-amd64")
    match = re.search(r"Depends: (linux-image-6\.1\.\S+-amd64)\b", out)
    if not match:
        raise VmBuildError("apt-cache depends linux-image-amd64 names no linux-image-6.1.*-amd64")
    return match.group(1)


class _Cpio:
    """newc archive writer: files, directories, symlinks, device nodes."""

    def __init__(self) -> None:
        self.buf = io.BytesIO()
        self.ino = 1

    def _entry(self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)) -> None:
        nb = name.encode() + b"\0"
        fields = (self.ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(nb), 0)
        self.ino += 1
        self.buf.write(b"070701" + b"".join(b"%08X" % f for f in fields) + nb)
        self.buf.write(b"\0" * (-(110 + len(nb)) % 4))
        self.buf.write(data)
        self.buf.write(b"\0" * (-len(data) % 4))

    def dir(self, name: str) -> None:
        self._entry(name, stat.S_IFDIR | 0o755)

    def file(self, name: str, data: bytes, perm: int = 0o644) -> None:
        self._entry(name, stat.S_IFREG | perm, data)

    def chardev(self, name: str, major: int, minor: int) -> None:
        self._entry(name, stat.S_IFCHR | 0o600, rdev=(major, minor))

    def finish(self) -> bytes:
        self._entry("TRAILER!!!", 0)
        return self.buf.getvalue()


def _fingerprint(*parts: bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(hashlib.sha256(part).digest())
    return h.hexdigest()[:16]


def build_guest(cache: Path | None = None) -> Guest:
    """Kernel and initramfs, built once and reused while their inputs hold."""
    cache = cache or cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    debs = cache / "debs"
    kpkg = kernel_package() if not any(debs.glob("linux-image-6.1.*-amd64_*.deb")) else None
    kdeb = _download(debs, r"linux-image-6\.1\.\S+-amd64_.*\.deb$", kpkg or "linux-image-amd64")
    bdeb = _download(debs, r"busybox-static_.*\.deb$", "busybox-static")
    version = kdeb.name.split("_")[0][len("linux-image-"):]
    init = (INIT_SH % {"modules": " ".join(MODULES), "ready": READY,
                       "fwcfg": FW_CFG_DIVERGE_SYSFS, "send_port": SEND_PORT}).encode()
    stamp = _fingerprint(kdeb.name.encode(), bdeb.name.encode(), init, ECHO_C.encode(),
                         SEND_C.encode())
    out = cache / stamp
    guest = Guest(out / "vmlinuz", out / "initrd.gz", version)
    if guest.kernel.exists() and guest.initrd.exists():
        return guest

    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        tmp = Path(tmp)
        _run("dpkg-deb", "-x", str(kdeb), str(tmp / "k"))
        _run("dpkg-deb", "-x", str(bdeb), str(tmp / "bb"))
        vmlinuz = next((tmp / "k" / "boot").glob("vmlinuz-*"))
        moddir = next((tmp / "k" / "lib" / "modules").iterdir())
        kos = {p.stem: p for p in moddir.rglob("*.ko")}
        missing = [m for m in MODULES if m not in kos]
        if missing:
            raise VmBuildError(f"{kdeb.name} has no {', '.join(missing)}.ko")
        (tmp / "colo-echo.c").write_text(ECHO_C)
        _run("gcc", "-static", "-Os", "-Wall", "-o", str(tmp / "colo-echo"), str(tmp / "colo-echo.c"))
        (tmp / "colo-send.c").write_text(SEND_C)
        _run("gcc", "-static", "-O2", "-Wall", "-o", str(tmp / "colo-send"), str(tmp / "colo-send.c"))

        arc = _Cpio()
        for d in ("bin", "dev", "proc", "sys", "tmp", "lib", "lib/modules"):
            arc.dir(d)
        arc.chardev("dev/console", 5, 1)
        arc.chardev("dev/null", 1, 3)
        arc.file("bin/busybox", (tmp / "bb" / "bin" / "busybox").read_bytes(), 0o755)
        arc.file("bin/colo-echo", (tmp / "colo-echo").read_bytes(), 0o755)
        arc.file("bin/colo-send", (tmp / "colo-send").read_bytes(), 0o755)
        for m in MODULES:
            arc.file(f"lib/modules/{m}.ko", kos[m].read_bytes())
        arc.file("init", init, 0o755)

        stage = tmp / "out"
        stage.mkdir()
        shutil.copyfile(vmlinuz, stage / "vmlinuz")
        with gzip.open(stage / "initrd.gz", "wb", compresslevel=6) as f:
            f.write(arc.finish())
        if out.exists():
            shutil.rmtree(out)
        stage.rename(out)
    return guest


def qemu_problem() -> str | None:
    """Why real-guest tests cannot run here, or None."""
    if os.geteuid() != 0:
        return "the VM tests need root (taps, namespaces)"
    if not shutil.which("qemu-system-x86_64"):
        return "qemu-system-x86_64 is missing (apt-get install qemu-system-x86)"
    if not os.path.exists("/dev/net/tun"):
        return "/dev/net/tun is missing: no tap devices"
    for tool in ("apt-get", "dpkg-deb", "gcc", "ip", "tc"):
        if not shutil.which(tool):
            return f"{tool} is missing"
    return None


def qemu_argv(guest: Guest, name: str, *, mac: str, cmdline: str, netdev: str,
              serial_log: Path, extra: tuple[str, ...] = (),
              binary: str = "qemu-system-x86_64", offloads: bool = False) -> list[str]:
    """A TCG guest: one virtio-net NIC on ``netdev`` (id hn0), serial to a file.
    Without ``offloads`` the NIC has ``csum=off,gso=off`` (QEMU's filters and
    the chardev tests see plain frames); with them, virtio-net's defaults: the
    guest hands TSO super-frames with partial checksums to its tap."""
    nic_offloads = "" if offloads else ",csum=off,gso=off"
    return [binary, "-name", name, "-accel", "tcg", "-m", "256",
            "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
            "-kernel", str(guest.kernel), "-initrd", str(guest.initrd),
            "-append", f"console=ttyS0 quiet panic=-1 ipv6.disable=1 {cmdline}",
            "-serial", f"file:{serial_log}",
            "-netdev", netdev,
            "-device", f"virtio-net-pci,netdev=hn0,mac={mac},romfile={nic_offloads}",
            *extra]


if __name__ == "__main__":  # pragma: no cover
    g = build_guest()
    print(g.kernel, g.initrd, g.version)
