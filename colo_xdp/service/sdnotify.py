"""sd_notify(3), the few lines of it a service needs, without libsystemd.

Under ``Type=notify`` systemd passes ``NOTIFY_SOCKET`` (a path, or ``@name``
for an abstract address) and, with ``WatchdogSec=``, ``WATCHDOG_USEC`` (and
``WATCHDOG_PID``, whose watchdog it is).  A state is one datagram of
``KEY=VALUE`` lines::

    READY=1          the service is up (sent when the `ready` event is logged)
    STATUS=...       one line for `systemctl status`
    WATCHDOG=1       still alive (sent from the loop's turn, every half interval)
    STOPPING=1       shutting down

Without ``NOTIFY_SOCKET`` every call does nothing.  A datagram that cannot
be sent is counted (``errors``), never raised: the service does not stop for
its supervisor's socket.
"""
from __future__ import annotations

import os
import socket


class Notifier:
    def __init__(self, environ=None):
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        self.address: str | None = None
        if address.startswith("@"):
            self.address = "\0" + address[1:]          # abstract namespace
        elif address.startswith("/"):
            self.address = address
        self.watchdog_s: float | None = None
        usec, pid = env.get("WATCHDOG_USEC", ""), env.get("WATCHDOG_PID", "")
        if usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            self.watchdog_s = int(usec) / 1e6
        self.next_ping = 0.0
        self.errors = 0
        self.sent = 0
        self._sock: socket.socket | None = None

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, *lines: str) -> bool:
        if self.address is None:
            return False
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.setblocking(False)
            self._sock.sendto("\n".join(lines).encode(), self.address)
        except OSError:
            self.errors += 1
            return False
        self.sent += 1
        return True

    def ready(self, status: str = "") -> None:
        self.notify("READY=1", f"MAINPID={os.getpid()}", *([f"STATUS={status}"] if status else []))

    def status(self, text: str) -> None:
        self.notify(f"STATUS={text}")

    def stopping(self) -> None:
        self.notify("STOPPING=1")

    def tick(self, now: float) -> None:
        """Every loop turn: WATCHDOG=1 once per half interval, so a loop that
        stops turning is restarted by systemd."""
        if self.watchdog_s is None or now < self.next_ping:
            return
        self.next_ping = now + self.watchdog_s / 2
        self.notify("WATCHDOG=1")

    def due_in(self, now: float) -> float:
        """Seconds until the next WATCHDOG=1 is due (the loop sleeps no longer)."""
        if self.watchdog_s is None:
            return float("inf")
        return max(self.next_ping - now, 0.0)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
