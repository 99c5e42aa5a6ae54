"""Helpers for tests that drive a running ``colo-xdp compare`` through its
control socket (the service itself comes from test_service's ``lab``)."""
from __future__ import annotations

import importlib
import json
import os
import shutil
import socket
import time

import pytest

TIMEOUT = 5.0


def need_tool(name: str) -> str:
    """The path of a host tool; a missing one skips the test, or fails it under
    CI=true (CI must have everything: scripts/setup-host.sh installs it)."""
    path = shutil.which(name)
    if path:
        return path
    message = f"{name} is not installed (scripts/setup-host.sh installs it)"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(message)
    pytest.skip(message)


def need_module(name: str):
    """Import a test-only Python module; missing: skip, or fail under CI=true."""
    try:
        return importlib.import_module(name)
    except ImportError:
        message = f"Python module {name} is missing (pip install -e '.[test]')"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message)
        pytest.skip(message)


class Ctl:
    """A raw control connection: JSON lines out, JSON lines in."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.sock.settimeout(TIMEOUT)
        self.buf = bytearray()
        self.events: list[dict] = []     # events that came while waiting for a reply

    @classmethod
    def unix(cls, path: str) -> "Ctl":
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(TIMEOUT)
        sock.connect(path)
        return cls(sock)

    @classmethod
    def tcp(cls, port: int, host: str = "127.0.0.1") -> "Ctl":
        return cls(socket.create_connection((host, port), timeout=TIMEOUT))

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send(self, obj: dict) -> None:
        self.send_raw(json.dumps(obj).encode() + b"\n")

    def line(self, timeout: float = TIMEOUT) -> dict:
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no line within {timeout} s; buffered {bytes(self.buf)!r}")
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(1 << 20)
            except socket.timeout:
                continue
            if not data:
                raise AssertionError(f"the service closed the connection; buffered "
                                     f"{bytes(self.buf)!r}")
            self.buf += data
        nl = self.buf.index(b"\n")
        line = bytes(self.buf[:nl])
        del self.buf[:nl + 1]
        return json.loads(line)

    def ask(self, obj: dict) -> dict:
        """One request, its reply (events meanwhile are kept for ``event``)."""
        self.send(obj)
        while True:
            msg = self.line()
            if "ok" in msg:
                return msg
            self.events.append(msg)

    def event(self, name: str, timeout: float = TIMEOUT, **match) -> dict:
        """The next event called ``name`` whose fields include ``match``."""
        deadline = time.monotonic() + timeout
        while True:
            if self.events:
                msg = self.events.pop(0)
            else:
                msg = self.line(max(deadline - time.monotonic(), 0.001))
            if msg.get("event") == name and all(msg.get(k) == v for k, v in match.items()):
                return msg

    def expect_closed(self, timeout: float = TIMEOUT) -> bytes:
        """Everything until the service closes the connection."""
        self.sock.settimeout(timeout)
        data = bytearray(self.buf)
        while True:
            chunk = self.sock.recv(65536)
            if not chunk:
                return bytes(data)
            data += chunk

    def close(self) -> None:
        self.sock.close()
