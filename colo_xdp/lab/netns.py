"""Network namespaces for the lab, the benchmark and the tests.

``sh`` runs a command (``ip``, ``tc``, ...) and says in one sentence what
failed; ``add_netns`` and ``add_veth`` make the namespaces and links every
lab here uses; ``in_netns`` runs the calling thread in a namespace for a
while, so that sockets made meanwhile (AF_PACKET, AF_XDP) live there::

    add_netns("guest")
    add_veth("host", "g-h", "guest", "g-g")
    with in_netns("guest"):
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
"""
from __future__ import annotations

import contextlib
import ctypes
import os
import subprocess
from typing import Iterator

from colo_xdp.errors import LabError

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


class NetnsError(LabError, RuntimeError):
    """A namespace command or switch failed; the message is one sentence."""


def sh(*args: str, check: bool = True) -> str:
    """Run a command; its stdout.  Raises NetnsError when it fails (check)."""
    proc = subprocess.run(args, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise NetnsError(f"'{' '.join(args)}' failed: {proc.stderr.strip() or proc.returncode}")
    return proc.stdout


def add_netns(name: str) -> None:
    """A network namespace with IPv6 off (no router solicitations or DAD
    frames on its links to surprise a test).  A caller that cleans up should
    note ``name`` before calling: the namespace may exist when this fails."""
    sh("ip", "netns", "add", name)
    sh("ip", "netns", "exec", name, "sysctl", "-q", "-w",
       "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1")


def add_veth(ns: str, name: str, peer_ns: str, peer: str, up: bool = True) -> None:
    """A veth pair, ``name`` in ``ns`` and ``peer`` in ``peer_ns``, with one
    queue each way (an AF_XDP socket on queue 0 then sees every frame); both
    ends up unless ``up`` is false (to set an address or MAC first)."""
    sh("ip", "-n", ns, "link", "add", name, "numtxqueues", "1", "numrxqueues", "1",
       "type", "veth", "peer", "name", peer, "netns", peer_ns,
       "numtxqueues", "1", "numrxqueues", "1")
    if up:
        sh("ip", "-n", ns, "link", "set", name, "up")
        sh("ip", "-n", peer_ns, "link", "set", peer, "up")


def _setns(fd: int, what: str) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        raise NetnsError(f"cannot enter {what}: {os.strerror(ctypes.get_errno())}")


@contextlib.contextmanager
def in_netns(name: str) -> Iterator[None]:
    """Run the calling thread in network namespace ``name`` for a while."""
    with open("/proc/thread-self/ns/net") as home, open(f"/run/netns/{name}") as there:
        _setns(there.fileno(), f"namespace {name}")
        try:
            yield
        finally:
            _setns(home.fileno(), "the home network namespace")
