"""The control protocol: JSON requests in, JSON replies out (sans-I/O).

One JSON object per line each way (docs/control.md has every command with an
example)::

    > {"cmd": "passthrough", "op": "add", "flow": "udp 10.0.0.0/24:* > *:53", "id": 1}
    < {"ok": true, "id": 1, "added": true, "rule": {"flow": "udp 10.0.0.0/24 > *:53", ...}}
    > {"cmd": "nope"}
    < {"ok": false, "error": "unknown command 'nope'; known: checkpoint, failover, ..."}

Nothing here reads a socket or a clock.  ``LineReader`` splits a byte stream
into request lines (bounded: an oversized line is an error, then skipped);
``parse_request`` turns a line into a ``Request`` or a ``BadRequest``;
``Commands`` runs a request against a ``ControlTarget`` (the service) and
returns the reply object.  ``colo_xdp.observe.control_server`` does the I/O.

The ``passthrough`` command reads and changes the list of
``colo_xdp.proto.flows`` (flow specs, ``PassthroughTable``).
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from typing import Any, Protocol

from colo_xdp.errors import ControlError
from colo_xdp.observe.log import EVENT_NAMES, json_value
from colo_xdp.proto.flows import (FLOW_FIELDS, FlowError, PassthroughError, PassthroughTable,
                                  flow_from_fields, parse_flow, rule_json)

MAX_LINE = 64 * 1024              # bytes in one request line, newline included
DEFAULT_STATS_CONNECTIONS = 100   # connection rows in a stats reply unless asked
MAX_STATS_CONNECTIONS = 65536


def default_control_path() -> str | None:
    """Where the control socket lives when --control is given without a path:
    /run/colo-xdp/colo-xdp.sock for root, $XDG_RUNTIME_DIR/colo-xdp.sock for
    other users (None when that is not set)."""
    if os.geteuid() == 0:
        return "/run/colo-xdp/colo-xdp.sock"
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    return os.path.join(runtime, "colo-xdp.sock") if runtime else None


# -- line framing ------------------------------------------------------------------------

@dataclass(frozen=True)
class BadRequest:
    """A line that is not a request; ``error`` is the sentence to reply with."""

    error: str
    id: Any = None


@dataclass(frozen=True)
class Request:
    cmd: str
    args: dict = field(default_factory=dict)
    id: Any = None


class LineReader:
    """Bytes in, complete lines out, each at most ``max_line`` bytes.

    A longer line yields one BadRequest when the limit is crossed; the rest
    of it, up to its newline, is skipped, so the connection stays usable.
    Lines come out one at a time (``next_line``) so that a caller can stop
    taking requests while its replies back up.
    """

    def __init__(self, max_line: int = MAX_LINE):
        self.max_line = max_line
        self.buf = bytearray()
        self.skipping = False
        self._scan = 0             # no newline in buf[:_scan]

    def feed(self, data: bytes) -> None:
        self.buf += data

    def next_line(self) -> bytes | BadRequest | None:
        while True:
            nl = self.buf.find(b"\n", self._scan)
            if nl < 0:
                self._scan = len(self.buf)
                if not self.skipping and len(self.buf) >= self.max_line:
                    self.skipping = True
                    self.buf.clear()
                    self._scan = 0
                    return BadRequest(f"request line longer than {self.max_line} bytes; "
                                      "it was skipped")
                if self.skipping:
                    self.buf.clear()
                    self._scan = 0
                return None
            line = bytes(self.buf[:nl])
            del self.buf[:nl + 1]
            self._scan = 0
            if self.skipping:              # the end of an oversized line
                self.skipping = False
                continue
            if nl + 1 > self.max_line:
                return BadRequest(f"request line longer than {self.max_line} bytes; "
                                  "it was skipped")
            return line

    @property
    def partial(self) -> int:
        """Bytes of an unfinished line (0 while skipping one)."""
        return 0 if self.skipping else len(self.buf)

    def has_line(self) -> bool:
        return self.buf.find(b"\n", self._scan) >= 0


def parse_request(line: bytes) -> Request | BadRequest | None:
    """A request line (without its newline) -> Request or BadRequest; None
    for a blank line, which is ignored."""
    if not line.strip():
        return None
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        return BadRequest("the request is not UTF-8 text")
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError):
        return BadRequest("the request is not valid JSON; send one JSON object per line")
    if not isinstance(obj, dict):
        return BadRequest("the request must be a JSON object such as {\"cmd\": \"stats\"}")
    rid = obj.pop("id", None)
    if not isinstance(rid, (str, int, float, type(None))) or isinstance(rid, bool) \
            or (isinstance(rid, float) and not math.isfinite(rid)):   # NaN, 1e999: no JSON
        return BadRequest("id must be a string or a number")
    cmd = obj.pop("cmd", None)
    if not isinstance(cmd, str):
        return BadRequest("the request needs \"cmd\", a string: one of "
                          + ", ".join(COMMANDS), rid)
    return Request(cmd, obj, rid)


# -- commands -------------------------------------------------------------------------------

class ControlTarget(Protocol):
    """What the control socket drives (the service, or a fake in tests)."""

    passthrough: PassthroughTable

    def control_checkpoint(self) -> dict: ...
    def control_failover(self) -> dict: ...
    def control_stats(self, connections: int) -> dict: ...


class Session(Protocol):
    """One control connection, as far as commands are concerned."""

    def subscribe(self, events: frozenset[str]) -> None: ...


class CommandError(ControlError):
    """A request that cannot be carried out; the message is one sentence."""


# name -> (fields it takes besides cmd and id, one-line description)
COMMANDS: dict[str, tuple[tuple[str, ...], str]] = {
    "checkpoint": ((), "the COLO frame reports a checkpoint: release held primary frames, "
                       "drop held secondary ones (as COLO_CHECKPOINT on notify-dev)"),
    "failover": ((), "stop comparing for good: release what is held, then pass primary "
                     "frames straight through and drop secondary ones"),
    "stats": (("connections",), "counters, queue depths and the connection table"),
    "subscribe": (("events",), "stream events (one JSON object per line) on this connection"),
    "passthrough": (("op", "flow") + FLOW_FIELDS,
                    "op add|del|list: flows not compared (flow spec or fields)"),
    "help": ((), "the commands and what they do"),
}


def _check_fields(req: Request) -> None:
    allowed = COMMANDS[req.cmd][0]
    for name in req.args:
        if name not in allowed:
            known = ", ".join(("cmd", "id") + allowed)
            raise CommandError(f"{req.cmd} takes no field {name!r} (known: {known})")


def _int_arg(req: Request, name: str, default: int, low: int, high: int) -> int:
    value = req.args.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise CommandError(f"{name} must be a whole number from {low} to {high}")
    return value


class Commands:
    """Carry out requests against a ControlTarget; every outcome is a reply."""

    def __init__(self, target: ControlTarget):
        self.target = target

    def reply(self, item: Request | BadRequest, session: Session) -> dict:
        if isinstance(item, BadRequest):
            return _with_id({"ok": False, "error": item.error}, item.id)
        try:
            if item.cmd not in COMMANDS:
                raise CommandError(f"unknown command {item.cmd!r}; known: "
                                   + ", ".join(COMMANDS))
            _check_fields(item)
            body = getattr(self, "_cmd_" + item.cmd)(item, session)
        except (CommandError, FlowError, PassthroughError) as exc:
            return _with_id({"ok": False, "error": str(exc)}, item.id)
        return _with_id({"ok": True, **body}, item.id)

    def _cmd_help(self, req: Request, session: Session) -> dict:
        return {"commands": {name: {"fields": list(fields), "does": does}
                             for name, (fields, does) in COMMANDS.items()},
                "events": list(EVENT_NAMES)}

    def _cmd_checkpoint(self, req: Request, session: Session) -> dict:
        return self.target.control_checkpoint()

    def _cmd_failover(self, req: Request, session: Session) -> dict:
        return self.target.control_failover()

    def _cmd_stats(self, req: Request, session: Session) -> dict:
        limit = _int_arg(req, "connections", DEFAULT_STATS_CONNECTIONS, 0,
                         MAX_STATS_CONNECTIONS)
        return {"stats": self.target.control_stats(limit)}

    def _cmd_subscribe(self, req: Request, session: Session) -> dict:
        events = req.args.get("events")
        if events is None:
            names = frozenset(EVENT_NAMES)
        else:
            if not isinstance(events, list) or not all(isinstance(e, str) for e in events):
                raise CommandError("events must be a list of event names")
            unknown = [e for e in events if e not in EVENT_NAMES]
            if unknown:
                raise CommandError(f"unknown event {unknown[0]!r}; known: "
                                   + ", ".join(EVENT_NAMES))
            names = frozenset(events)
        session.subscribe(names)
        return {"subscribed": sorted(names)}

    def _cmd_passthrough(self, req: Request, session: Session) -> dict:
        table = self.target.passthrough
        op = req.args.get("op")
        fields = {k: v for k, v in req.args.items() if k in FLOW_FIELDS}
        if op == "list":
            if fields or "flow" in req.args:
                raise CommandError("passthrough list takes no flow")
            return {"rules": [rule_json(r) for r in table.rules]}
        if op not in ("add", "del"):
            raise CommandError("passthrough needs op: add, del or list")
        if "flow" in req.args:
            if fields:
                raise CommandError("give either flow or the fields proto/src/dst/sport/dport, "
                                   "not both")
            rule = parse_flow(req.args["flow"])
        elif fields:
            rule = flow_from_fields(fields)
        else:
            raise CommandError(f"passthrough {op} needs a flow, e.g. "
                               "\"flow\": \"udp 10.0.0.0/24:* > *:53\"")
        if op == "add":
            added = table.add(rule)
            return {"added": added, "rule": rule_json(rule), "rules": len(table.rules)}
        table.delete(rule)
        return {"deleted": True, "rule": rule_json(rule), "rules": len(table.rules)}


def _with_id(reply: dict, rid: Any) -> dict:
    if rid is not None:
        reply = {"ok": reply.pop("ok"), "id": rid, **reply}
    return reply


def encode(obj: dict) -> bytes:
    """One reply or event line."""
    return json.dumps(obj, separators=(",", ":"), default=json_value).encode() + b"\n"


def event_line(name: str, fields: dict, ts: float) -> bytes:
    """An event for subscribers: ``{"event": NAME, "ts": ..., fields...}``."""
    obj = {"event": name, "ts": round(ts, 3)}
    for key, value in fields.items():
        obj[key] = None if key == "conn" and value == "-" else json_value(value)
    return json.dumps(obj, separators=(",", ":")).encode() + b"\n"
