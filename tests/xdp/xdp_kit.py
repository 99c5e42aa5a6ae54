"""Helpers of the XDP tests: capability checks, bare AF_XDP sockets,
network namespaces.  Fixtures are in conftest.py."""
from __future__ import annotations

import contextlib
import ctypes
import mmap
import os
import socket
import struct
from dataclasses import dataclass
from typing import Iterator

import pytest

from colo_xdp.lab.netns import in_netns, sh  # noqa: F401 (the tests import them from here)
from colo_xdp.transport.xdp import classifier as xdp

CI = bool(os.environ.get("CI"))

# <linux/if_xdp.h>
AF_XDP = 44
SOL_XDP = 283
XDP_RX_RING = 2
XDP_UMEM_REG = 4


@dataclass(frozen=True)
class Rule:
    """A passthrough rule as the classifier's tests write it: stands for the
    engine's PassthroughRule (same fields, addresses as text)."""

    proto: int | None = None
    src: str | None = None
    dst: str | None = None
    sport: int | None = None
    dport: int | None = None


def need(ok: bool, message: str) -> None:
    """Skip without a capability; under CI, fail instead."""
    if ok:
        return
    if CI:
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def bpf_problem() -> str | None:
    return xdp.unavailable()


@contextlib.contextmanager
def bare_xsk() -> Iterator[socket.socket]:
    """An AF_XDP socket with a UMEM and an RX ring, not bound: enough for the
    XSKMAP to take it, so that a test run can see XDP_REDIRECT."""
    size = 16 * 4096
    umem = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    sock = socket.socket(AF_XDP, socket.SOCK_RAW, 0)
    try:
        anchor = ctypes.c_char.from_buffer(umem)
        # struct xdp_umem_reg {addr, len, chunk_size, headroom, flags, tx_metadata_len}
        reg = struct.pack("QQIIII", ctypes.addressof(anchor), size, 4096, 0, 0, 0)
        del anchor
        sock.setsockopt(SOL_XDP, XDP_UMEM_REG, reg)
        sock.setsockopt(SOL_XDP, XDP_RX_RING, struct.pack("I", 64))
        yield sock
    finally:
        sock.close()
        umem.close()


# --- network namespaces ------------------------------------------------------------

def xdp_shown(ns: str, ifname: str) -> bool:
    """Does 'ip -d link show' list an XDP program on the interface?"""
    out = sh("ip", "-n", ns, "-d", "link", "show", "dev", ifname)
    return "prog/xdp" in out or any(w in out.split() for w in ("xdp", "xdpgeneric", "xdpdrv"))


@dataclass
class VethPair:
    """The XDP end (``host``, in namespace ``host_ns``) and the guest end."""

    host_ns: str
    guest_ns: str
    host: str = "veth-h"
    guest: str = "veth-g"
    host_ip: str = "10.99.0.1"
    guest_ip: str = "10.99.0.2"

    def mac(self, which: str) -> str:
        ns, dev = (self.host_ns, self.host) if which == "host" else (self.guest_ns, self.guest)
        return sh("ip", "-n", ns, "-br", "link", "show", "dev", dev).split()[2]
