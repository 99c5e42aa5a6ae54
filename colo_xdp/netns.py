"""Network namespaces for the lab, the benchmark and the tests.

``sh`` runs a command (``ip``, ``tc``, ...) and says in one sentence what
failed; ``in_netns`` runs the calling thread in a namespace for a while, so
that sockets made meanwhile (AF_PACKET, AF_XDP) live there::

    sh("ip", "netns", "add", "guest")
    with in_netns("guest"):
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
"""
from __future__ import annotations

import contextlib
import ctypes
import os
import subprocess
from typing import Iterator

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


class NetnsError(RuntimeError):
    """A namespace command or switch failed; the message is one sentence."""


def sh(*args: str, check: bool = True) -> str:
    """Run a command; its stdout.  Raises NetnsError when it fails (check)."""
    proc = subprocess.run(args, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise NetnsError(f"'{' '.join(args)}' failed: {proc.stderr.strip() or proc.returncode}")
    return proc.stdout


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
