"""classify.c and an AF_XDP socket on a tap, frames written into the tap's fd
the way QEMU writes a guest's output (with and without IFF_VNET_HDR)."""
from __future__ import annotations

import contextlib
import fcntl
import os
import select
import struct
import time
from typing import Iterator

import pytest

from colo_xdp.lab import pktgen
from colo_xdp.transport.xdp.classify_abi import Side, Verdict
from colo_xdp.transport.xdp.classifier import Mode, XdpClassifier
from colo_xdp.transport.xdp.xsk import XskSocket

from xdp_kit import in_netns, need, sh

TUNSETIFF = 0x400454CA
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
VNET_HDR_LEN = 10           # struct virtio_net_hdr, the tap's default
TAP = "cxtap0"


@contextlib.contextmanager
def tap(ns: str, vnet_hdr: bool) -> Iterator[int]:
    """A tap in namespace ns, up; yields the fd QEMU would hold."""
    with in_netns(ns):
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    try:
        flags = IFF_TAP | IFF_NO_PI | (IFF_VNET_HDR if vnet_hdr else 0)
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", TAP.encode(), flags))
        sh("ip", "-n", ns, "link", "set", TAP, "up")
        yield fd
    finally:
        os.close(fd)


@pytest.fixture
def host_ns(veth) -> str:
    """The host namespace of a fresh veth pair: a tap is made in it."""
    need(os.path.exists("/dev/net/tun"), "/dev/net/tun is missing: no taps here")
    return veth.host_ns


@pytest.mark.parametrize("mode", list(Mode), ids=lambda m: m.value)
@pytest.mark.parametrize("vnet_hdr", [False, True], ids=["plain", "vnet-hdr"])
def test_guest_output_through_a_tap(host_ns, vnet_hdr, mode):
    hdr = bytes(VNET_HDR_LEN) if vnet_hdr else b""
    frames = [pktgen.udp_frame(b"guest %d" % i, sport=3000 + i) for i in range(50)]
    arp = pktgen.arp_frame()
    with tap(host_ns, vnet_hdr) as fd, in_netns(host_ns), \
            XskSocket(TAP, 0) as xsk, XdpClassifier(Side.PRIMARY, TAP, mode=mode) as clf:
        clf.set_socket(0, xsk.fileno())
        for frame in frames[:25] + [arp] + frames[25:]:
            os.write(fd, hdr + frame)           # what QEMU does with guest output
        got, deadline = [], time.monotonic() + 2
        while len(got) < len(frames) and time.monotonic() < deadline:
            n = xsk.rx_burst()
            got += [bytes(xsk.frame(a, length)) for a, length in xsk.received(n)]
            xsk.rx_done(n)
        assert got == frames
        counters = clf.counters()
        assert counters[Verdict.COMPARE].frames == len(frames)
        assert counters[Verdict.UNSUPPORTED].frames == 1

        # Released frames sent on the tap reach the guest (QEMU reads them).
        back = [pktgen.udp_frame(b"to guest %d" % i, src="10.0.0.2", dst="10.0.0.1")
                for i in range(40)]
        assert xsk.tx_burst(back) == len(back)
        seen, deadline = [], time.monotonic() + 2
        while len(seen) < len(back) and time.monotonic() < deadline:
            select.select([fd], [], [], 0.05)
            with contextlib.suppress(BlockingIOError):
                while True:
                    data = os.read(fd, 65536)[len(hdr):]
                    if data in back:            # the host stack may add its own frames
                        seen.append(data)
        assert seen == back
