"""The signals a service answers, as one lifecycle: installed before the
loop opens anything, restored when it has closed.

=========  ==========================================================
SIGTERM,   stop: held frames released, delivered for a moment, summary
SIGINT
SIGHUP     reopen the log file and the evidence pcap (logrotate); nothing
           else changes, nothing is lost
SIGUSR1    compare: failover (comparing stops for good)
SIGUSR2    log a ``status`` line: the counters so far
others     SIGALRM, SIGVTALRM, SIGPROF, SIGIO, SIGPWR (whose default is to
           end the process) are ignored: a stray one stops nothing
=========  ==========================================================

Handlers only note the signal (they may run in the middle of an engine
call); the loop acts on it at its next turn.  A wakeup socket
(``signal.set_wakeup_fd``) on the loop's selector makes that next turn come
at once instead of after the current sleep.
"""
from __future__ import annotations

import signal
import socket

STOP = (signal.SIGINT, signal.SIGTERM)
REOPEN = signal.SIGHUP
STATUS = signal.SIGUSR2
FAILOVER = signal.SIGUSR1
IGNORED = tuple(getattr(signal, name) for name in
                ("SIGALRM", "SIGVTALRM", "SIGPROF", "SIGIO", "SIGPWR") if hasattr(signal, name))


class Signals:
    """Notes the signals of one loop; ``take()`` hands them over once."""

    def __init__(self, loop, handled: tuple[int, ...]):
        self.loop = loop
        self.handled = handled
        self.pending: list[int] = []
        self._old: dict[int, object] = {}
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._old_wakeup = -1

    def install(self) -> None:
        self._wake_r, self._wake_w = socket.socketpair()
        for sock in (self._wake_r, self._wake_w):
            sock.setblocking(False)
        self._old_wakeup = signal.set_wakeup_fd(self._wake_w.fileno(), warn_on_full_buffer=False)
        self.loop.watch(self._wake_r, 1, self._drain)
        for sig in self.handled:
            self._old[sig] = signal.signal(sig, self._note)
        for sig in IGNORED:
            if sig not in self.handled:
                self._old[sig] = signal.signal(sig, signal.SIG_IGN)

    def restore(self) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()
        if self._wake_r is not None:
            signal.set_wakeup_fd(self._old_wakeup)
            self.loop.unwatch(self._wake_r)
            self._wake_r.close()
            self._wake_w.close()
            self._wake_r = self._wake_w = None

    def _note(self, signum, _frame) -> None:
        if signum in STOP:
            self.loop.stop()
        else:
            self.pending.append(signum)

    def _drain(self, _mask: int) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, InterruptedError):
            pass

    def take(self) -> list[int]:
        pending, self.pending = self.pending, []
        return pending
