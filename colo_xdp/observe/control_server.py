"""The control socket, served from the service's selector loop.

A unix socket (mode 0600: only its owner, normally root, may connect) and,
when asked, a TCP listener on a loopback address.  Each connection speaks
the line protocol of ``colo_xdp.proto.control``; requests are answered in order,
from the loop, between batches of frames.

Bounded everywhere: a client whose replies back up (``OUT_HIGH``) is not read
until they drain; a subscriber whose events back up loses events, counted and
reported to it in an ``events_lost`` line once it reads again.  Nothing a
client does can block the loop or grow memory without bound.
"""
from __future__ import annotations

import os
import socket
import time

from colo_xdp.proto import control
from colo_xdp.proto.control import Commands, LineReader, encode, event_line, parse_request
from colo_xdp.observe.listener import Client, Listener, listen_tcp, listen_unix_private, \
    remove_own_socket

OUT_HIGH = 1024 * 1024          # reply bytes queued before a client is no longer read
EVENTS_HIGH = 1024 * 1024       # event bytes queued before a subscriber loses events
MAX_CLIENTS = 64                # per listener: TCP clients cannot lock out the unix socket
DEFAULT_IDLE_TIMEOUT_S = 300.0  # a connection that neither asks nor subscribes is closed


class ControlSession(Client):
    """One control connection."""

    def __init__(self, server: "ControlServer", sock: socket.socket, clients: list):
        self.server = server
        self.reader = LineReader()
        self.events: frozenset[str] = frozenset()
        self.lost = 0               # events not queued since the last events_lost line
        self.active_at = time.monotonic()
        super().__init__(server.svc, sock, clients, OUT_HIGH)

    def wants_input(self) -> bool:
        return not self.reader.has_line()

    def on_data(self, data: bytes) -> None:
        self.active_at = time.monotonic()
        self.reader.feed(data)
        self.pump()

    def on_drained(self) -> None:
        self.pump()

    def pump(self) -> None:
        """Answer buffered requests while replies are not backed up."""
        while len(self.out) < self.out_high and not self.closed:
            item = self.reader.next_line()
            if item is None:
                return
            if isinstance(item, bytes):
                item = parse_request(item)
                if item is None:
                    continue
            try:
                reply = self.server.commands.reply(item, self)
            except Exception as exc:   # a bug must not take the COLO service down with it
                self.server.svc.log.warning("control_error", role="control",
                                            error=f"{type(exc).__name__}: {exc}")
                reply = {"ok": False, "error": f"internal error ({type(exc).__name__}); "
                                               "the service logged it"}
            self.send(encode(reply))

    def on_eof(self) -> None:
        self.pump()
        if self.reader.partial:
            self.send(encode({"ok": False, "error": "the connection ended in the middle of "
                                                    "a request line; it was not run"}))
        self.close_when_flushed = True

    # -- events ---------------------------------------------------------------------------

    def subscribe(self, events: frozenset[str]) -> None:
        self.events = events
        self.server.update_subscribers()

    def deliver(self, line: bytes) -> None:
        # Once events are lost, they stay lost until half the backlog has
        # gone, so a slow reader sees a few gaps, each with its count.
        limit = EVENTS_HIGH // 2 if self.lost else EVENTS_HIGH
        if len(self.out) + len(line) > limit:
            self.lost += 1
            self.server.events_lost += 1
            return
        if self.lost:
            self.out += event_line("events_lost", {"count": self.lost}, time.time())
            self.lost = 0
        self.out += line
        self.server.dirty.add(self)

    def close(self) -> None:
        was_subscribed = bool(self.events)
        super().close()
        if was_subscribed:
            self.events = frozenset()
            self.server.update_subscribers()


class ControlServer:
    """The service's control socket(s): an attachment of CompareService."""

    name = "control"

    def __init__(self, svc, target, unix_path: str | None, tcp: tuple[str, int] | None,
                 idle_timeout: float = DEFAULT_IDLE_TIMEOUT_S):
        self.svc = svc
        self.commands = Commands(target)
        self.unix_path = unix_path
        self.tcp = tcp
        self.idle_timeout = idle_timeout
        self.listeners: list[Listener] = []
        # One client list, and one cap, per listener.
        self.unix_clients: list[ControlSession] = []
        self.tcp_clients: list[ControlSession] = []
        self.subscribers: list[ControlSession] = []
        self.wanted: frozenset[str] = frozenset()
        self.dirty: set[ControlSession] = set()
        self.drops: dict[tuple, int] = {}
        self.events_lost = 0
        self._inode = 0

    # -- attachment ----------------------------------------------------------------------

    def open(self) -> None:
        """Listen; raises OSError with one sentence."""
        try:
            if self.unix_path:
                if self.unix_path == control.default_control_path():
                    os.makedirs(os.path.dirname(self.unix_path), mode=0o700, exist_ok=True)
                sock, self._inode = listen_unix_private(self.unix_path, "control socket")
                self.listeners.append(Listener(
                    self.svc, sock, lambda s: ControlSession(self, s, self.unix_clients),
                    MAX_CLIENTS, self.unix_clients, "control"))
            if self.tcp:
                sock = listen_tcp(*self.tcp, "control socket")
                self.listeners.append(Listener(
                    self.svc, sock, lambda s: ControlSession(self, s, self.tcp_clients),
                    MAX_CLIENTS, self.tcp_clients, "control-tcp"))
        except OSError:
            self.close()
            raise

    def close(self) -> None:
        self.end_batch()
        for client in list(self.clients):
            client.flush()
            client.close()
        for listener in self.listeners:
            listener.close()
        self.listeners.clear()
        if self.unix_path and self._inode:
            remove_own_socket(self.unix_path, self._inode)
            self._inode = 0

    @property
    def clients(self) -> list[ControlSession]:
        return self.unix_clients + self.tcp_clients

    def tick(self, now: float) -> None:
        """Close connections idle for longer than the idle timeout: no request
        and no subscription (a subscriber waits for events by design)."""
        limit = now - self.idle_timeout
        for session in [c for c in self.clients if not c.events and c.active_at < limit]:
            session.close()

    def end_batch(self) -> None:
        """Once per loop batch: summed drops out, queued events flushed."""
        if self.drops:
            drops, self.drops = self.drops, {}
            now = time.time()
            for (side, reason, conn), count in drops.items():
                self._fan_out("frame_dropped", event_line(
                    "frame_dropped", {"side": side, "reason": reason, "conn": conn,
                                      "count": count}, now))
        if self.dirty:
            dirty, self.dirty = self.dirty, set()
            for session in dirty:
                session.flush()

    def stats(self) -> tuple[str, dict]:
        return self.name, {"clients": len(self.clients), "subscribers": len(self.subscribers),
                           "events_lost": self.events_lost}

    # -- sessions ------------------------------------------------------------------------

    def update_subscribers(self) -> None:
        self.subscribers = [s for s in self.clients if s.events and not s.closed]
        wanted: frozenset[str] = frozenset()
        for s in self.subscribers:
            wanted |= s.events
        self.wanted = wanted
        # The log's tap costs nothing while nobody subscribes.
        self.svc.log.tap = self._tap if self.subscribers else None

    def _tap(self, name: str, fields: dict) -> None:
        if name not in self.wanted:
            return
        if name == "frame_dropped":          # coalesced by the engine: summed per batch
            conn = fields.get("conn")
            key = (fields.get("side"), fields.get("reason"),
                   None if conn in (None, "-") else str(conn))
            self.drops[key] = self.drops.get(key, 0) + fields.get("count", 1)
            return
        self._fan_out(name, event_line(name, fields, time.time()))

    def _fan_out(self, name: str, line: bytes) -> None:
        for session in self.subscribers:
            if name in session.events:
                session.deliver(line)


class ServiceTarget:
    """The service as the control commands see it (control.ControlTarget)."""

    def __init__(self, svc):
        self.svc = svc

    @property
    def passthrough(self):
        return self.svc.passthrough

    def _flushed(self, before, after) -> dict:
        released = sum(after.released.values()) - sum(before.released.values())
        dropped = after.dropped_total("secondary") - before.dropped_total("secondary")
        return {"released": released, "dropped_secondary": dropped}

    def control_checkpoint(self) -> dict:
        before = self.svc.engine.counters()
        self.svc.colo_checkpoint(source="control")
        return self._flushed(before, self.svc.engine.counters())

    def control_failover(self) -> dict:
        before = self.svc.engine.counters()
        done = self.svc.failover(source="control")
        return {"already": not done, **self._flushed(before, self.svc.engine.counters())}

    def control_stats(self, connections: int) -> dict:
        from colo_xdp.observe.stats import snapshot
        return snapshot(self.svc, connections)
