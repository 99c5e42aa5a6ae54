"""QEMU's QMP, the client side, sans-I/O: bytes in, messages out.

QEMU's monitor greets with ``{"QMP": {"version": ..., "capabilities": [...]}}``,
then takes commands ``{"execute": NAME, "arguments": {...}, "id": ID}`` once
``qmp_capabilities`` has been accepted, and answers each with
``{"return": VALUE, "id": ID}`` or ``{"error": {"class": C, "desc": D}, "id": ID}``;
events ``{"event": NAME, "data": {...}, "timestamp": {...}}`` come in between.
Every message is one JSON object on a line ending in CRLF.

    qmp = QmpClient()
    sock.sendall(b"")                      # nothing is sent before the greeting
    for msg in qmp.receive(sock.recv(65536)):
        if isinstance(msg, Greeting):
            sock.sendall(qmp.command("qmp_capabilities").data)

``receive`` raises QmpError (one sentence) for a peer that is not a QMP
monitor: a first line that is not a greeting, a line that is not a JSON
object, or a line longer than ``MAX_LINE``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

MAX_LINE = 1 << 20      # no reply colo-xdp asks for comes near this


class QmpError(ValueError):
    """The peer broke the QMP protocol; the message is one sentence."""


@dataclass(frozen=True)
class Greeting:
    version: str                     # "7.2.0"; "" when the greeting has none
    capabilities: tuple[str, ...]


@dataclass(frozen=True)
class Reply:
    id: int
    ok: bool
    value: Any = None                # "return" when ok
    error_class: str = ""            # "error" when not
    error_desc: str = ""


@dataclass(frozen=True)
class Event:
    name: str
    data: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Command:
    id: int
    name: str
    data: bytes                      # the line to send


Message = Greeting | Reply | Event


def _version(greeting: dict) -> str:
    qemu = greeting.get("version", {}).get("qemu", {}) if isinstance(
        greeting.get("version"), dict) else {}
    if not isinstance(qemu, dict):
        return ""
    try:
        return f"{int(qemu['major'])}.{int(qemu['minor'])}.{int(qemu['micro'])}"
    except (KeyError, TypeError, ValueError):
        return ""


class QmpClient:
    """One QMP session: call ``receive`` with what the socket gave, send what
    ``command`` returns.  A new connection needs a new QmpClient."""

    def __init__(self, max_line: int = MAX_LINE):
        self.max_line = max_line
        self.greeted = False
        self._buf = bytearray()
        self._next_id = 1

    def command(self, name: str, arguments: dict | None = None) -> Command:
        cid = self._next_id
        self._next_id += 1
        msg: dict[str, Any] = {"execute": name, "id": cid}
        if arguments is not None:
            msg["arguments"] = arguments
        return Command(cid, name, json.dumps(msg, separators=(",", ":")).encode() + b"\n")

    def receive(self, data: bytes) -> list[Message]:
        self._buf += data
        out: list[Message] = []
        while True:
            end = self._buf.find(b"\n")
            if end < 0:
                if len(self._buf) > self.max_line:
                    raise QmpError(f"the peer sent a line longer than {self.max_line} bytes; "
                                   "it is not a QMP monitor")
                return out
            line = bytes(self._buf[:end]).strip()
            del self._buf[:end + 1]
            if line:
                out.append(self._message(line))

    def _message(self, line: bytes) -> Message:
        try:
            obj = json.loads(line)
        except (ValueError, RecursionError):
            obj = None
        if not isinstance(obj, dict):
            what = "its greeting" if not self.greeted else "a line"
            raise QmpError(f"the peer sent {what} that is not a JSON object "
                           f"({line[:40]!r}); it is not a QMP monitor")
        if not self.greeted:
            greeting = obj.get("QMP")
            if not isinstance(greeting, dict):
                raise QmpError("the peer did not greet with a QMP banner; "
                               "it is not a QMP monitor")
            self.greeted = True
            caps = greeting.get("capabilities")
            return Greeting(_version(greeting),
                            tuple(c for c in caps if isinstance(c, str))
                            if isinstance(caps, list) else ())
        if "event" in obj:
            data = obj.get("data")
            return Event(str(obj["event"]), data if isinstance(data, dict) else {})
        cid = obj.get("id")
        if not isinstance(cid, int) or isinstance(cid, bool):
            raise QmpError(f"the monitor answered without an id we sent ({line[:60]!r})")
        if "return" in obj:
            return Reply(cid, True, obj["return"])
        err = obj.get("error")
        if isinstance(err, dict):
            return Reply(cid, False, None, str(err.get("class", "")), str(err.get("desc", "")))
        raise QmpError(f"the monitor sent a reply with neither return nor error "
                       f"({line[:60]!r})")
