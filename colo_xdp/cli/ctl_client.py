"""A blocking client for the control socket (``colo-xdp ctl``, ``colo-xdp stats``).

    with ControlClient.connect(path="/run/colo-xdp/colo-xdp.sock") as client:
        reply = client.request({"cmd": "stats"})

Replies come in order; a subscribed connection also carries event lines
(objects with "event" instead of "ok"), which ``request`` sets aside and
``events`` hands out.
"""
from __future__ import annotations

import errno
import json
import socket
from collections import deque
from typing import Iterator

from colo_xdp.errors import ControlError


class ClientError(ControlError):
    """The control socket cannot be used; the message is one sentence."""


class ControlClient:
    def __init__(self, sock: socket.socket, where: str, timeout: float | None):
        self.sock = sock
        self.where = where
        self.timeout = timeout
        self.buf = bytearray()
        self.pending_events: deque[dict] = deque()

    @classmethod
    def connect(cls, path: str | None = None, tcp: tuple[str, int] | None = None,
                timeout: float | None = 5.0) -> "ControlClient":
        if tcp:
            where = f"{tcp[0]}:{tcp[1]}"
            family, addr = (socket.AF_INET6 if ":" in tcp[0] else socket.AF_INET), tcp
        elif path:
            where, family, addr = path, socket.AF_UNIX, path
        else:
            raise ClientError("no control socket given: use --control PATH or --control-tcp "
                              "HOST:PORT")
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(addr)
        except OSError as exc:
            sock.close()
            raise ClientError(_connect_error(where, exc)) from None
        return cls(sock, where, timeout)

    def __enter__(self) -> "ControlClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    def send(self, obj: dict) -> None:
        try:
            self.sock.sendall(json.dumps(obj).encode() + b"\n")
        except OSError as exc:
            raise ClientError(f"cannot send to the control socket {self.where}: "
                              f"{exc.strerror or exc}") from None

    def request(self, obj: dict) -> dict:
        """Send one request and return its reply (events meanwhile are kept)."""
        self.send(obj)
        while True:
            msg = self._read()
            if "ok" in msg:
                return msg
            self.pending_events.append(msg)

    def events(self, timeout: float | None = None) -> Iterator[dict]:
        """Events as they come; ends when the service closes the connection."""
        self.sock.settimeout(timeout)
        while True:
            if self.pending_events:
                yield self.pending_events.popleft()
                continue
            try:
                msg = self._read()
            except ClientError as exc:
                if "closed" in str(exc):
                    return
                raise
            if "event" in msg:
                yield msg

    def _read(self) -> dict:
        while True:
            nl = self.buf.find(b"\n")
            if nl >= 0:
                line = bytes(self.buf[:nl])
                del self.buf[:nl + 1]
                try:
                    return json.loads(line)
                except ValueError:
                    raise ClientError(f"the control socket {self.where} sent a line that is "
                                      "not JSON") from None
            try:
                data = self.sock.recv(1 << 20)
            except socket.timeout:
                raise ClientError(f"no answer from the control socket {self.where} within "
                                  f"{self.timeout} s") from None
            except OSError as exc:
                raise ClientError(f"the control socket {self.where} failed: "
                                  f"{exc.strerror or exc}") from None
            if not data:
                raise ClientError(f"the control socket {self.where} closed the connection")
            self.buf += data
            if len(self.buf) > 256 * 1024 * 1024:
                raise ClientError(f"the control socket {self.where} sent an endless line")


def _connect_error(where: str, exc: OSError) -> str:
    if exc.errno in (errno.ENOENT, errno.ECONNREFUSED):
        return (f"no colo-xdp answers on {where}: is colo-xdp compare running with "
                "--control (or --control-tcp)?")
    if exc.errno in (errno.EACCES, errno.EPERM):
        return (f"permission denied on {where}: the control socket is open to its owner "
                "only (run as that user, usually root)")
    return f"cannot connect to the control socket {where}: {exc.strerror or exc}"

