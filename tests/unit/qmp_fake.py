"""A QMP monitor that behaves like a COLO primary QEMU's, for the --qmp tests.

It listens on a unix socket (one client at a time, as QEMU's ``-qmp``),
greets, takes ``qmp_capabilities`` and then answers what colo-xdp asks:

* ``query-colo-status``: ``{"mode": self.mode, "reason": ...}``;
* ``query-migrate-parameters``: ``x-checkpoint-delay`` = ``self.delay``;
* ``migrate-set-parameters``: records the value; when it equals the current
  one (QEMU's checkpoint notifier) a checkpoint follows: ``STOP`` after
  ``stop_after`` s, ``RESUME`` ``checkpoint_s`` later (unless ``kicks_work``
  is False: then nothing follows, as a COLO thread that is busy);
* ``query-status``: ``colo`` between a checkpoint's STOP and RESUME,
  ``self.status`` otherwise.

``checkpoint()`` runs one periodic checkpoint; ``event(name, data)`` sends any
event.  ``stops`` keeps the monotonic time of every STOP sent.
"""
from __future__ import annotations

import json
import os
import socket
import threading
import time


class FakeQmp:
    def __init__(self, path: str, *, delay: int = 20000, mode: str = "primary",
                 stop_after: float = 0.0015, checkpoint_s: float = 0.05,
                 greeting: bytes | None = None):
        self.path = path
        self.delay = delay
        self.mode = mode
        self.status = "running"
        self.stop_after = stop_after
        self.checkpoint_s = checkpoint_s
        self.kicks_work = True
        self.greeting = greeting
        self.commands: list[tuple[str, dict]] = []
        self.set_values: list[int] = []
        self.stops: list[float] = []
        self.in_checkpoint = False
        self.clients = 0
        self._lock = threading.Lock()
        self._conn: socket.socket | None = None
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(path)
        self._listener.listen(1)
        self._closed = False
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    # -- the monitor ---------------------------------------------------------------

    def _serve(self) -> None:
        while not self._closed:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            self.clients += 1
            with self._lock:
                self._conn = conn
            try:
                self._session(conn)
            except OSError:
                pass
            finally:
                with self._lock:
                    self._conn = None
                conn.close()

    def _send(self, obj: dict) -> None:
        with self._lock:
            if self._conn:
                self._conn.sendall(json.dumps(obj).encode() + b"\r\n")

    def _session(self, conn: socket.socket) -> None:
        if self.greeting is not None:
            conn.sendall(self.greeting)
        else:
            self._send({"QMP": {"version": {"qemu": {"major": 7, "minor": 2, "micro": 0},
                                            "package": "fake"}, "capabilities": ["oob"]}})
        buf = b""
        while True:
            data = conn.recv(65536)
            if not data:
                return
            buf += data
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                if line.strip():
                    self._command(json.loads(line))

    def _command(self, cmd: dict) -> None:
        name, args, cid = cmd["execute"], cmd.get("arguments", {}), cmd.get("id")
        self.commands.append((name, args))
        value: object = {}
        if name == "query-colo-status":
            value = {"mode": self.mode, "last-mode": "none", "reason": "none"}
        elif name == "query-migrate-parameters":
            value = {"x-checkpoint-delay": self.delay, "max-bandwidth": 134217728}
        elif name == "query-status":
            value = {"status": "colo" if self.in_checkpoint else self.status,
                     "running": not self.in_checkpoint, "singlestep": False}
        elif name == "migrate-set-parameters":
            new = args.get("x-checkpoint-delay")
            self.set_values.append(new)
            if new == self.delay and self.kicks_work and self.mode == "primary":
                threading.Timer(self.stop_after, self.checkpoint).start()
            self.delay = new
        self._send({"return": value, "id": cid})

    # -- what a test does --------------------------------------------------------------

    def checkpoint(self) -> None:
        """One checkpoint: STOP, the state transfer, RESUME."""
        self.in_checkpoint = True
        self.stops.append(time.monotonic())
        self.event("STOP")
        time.sleep(self.checkpoint_s)
        self.in_checkpoint = False
        self.event("RESUME")

    def event(self, name: str, data: dict | None = None) -> None:
        msg: dict = {"event": name, "timestamp": {"seconds": int(time.time()),
                                                  "microseconds": 0}}
        if data is not None:
            msg["data"] = data
        self._send(msg)

    def kicks(self) -> int:
        return sum(1 for name, _ in self.commands if name == "migrate-set-parameters")

    def drop_client(self) -> None:
        with self._lock:
            if self._conn:
                self._conn.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._closed = True
        self.drop_client()
        self._listener.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
