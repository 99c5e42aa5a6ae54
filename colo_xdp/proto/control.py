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
returns the reply object.  ``colo_xdp/control_server.py`` does the I/O.

Passthrough rules live here too: ``parse_flow``/``flow_from_fields`` read
flow specs, ``PassthroughTable`` keeps the list and pushes every change to
its sinks: the engine in chardev mode, and in XDP mode also the BPF map, so
that the kernel fast path and the engine never disagree.
"""
from __future__ import annotations

import ipaddress
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

from colo_xdp.engine import PassthroughRule
from colo_xdp.observe.log import EVENT_NAMES, json_value

MAX_LINE = 64 * 1024              # bytes in one request line, newline included
MAX_PASSTHROUGH_RULES = 1024      # the engine scans them per new connection
DEFAULT_STATS_CONNECTIONS = 100   # connection rows in a stats reply unless asked
MAX_STATS_CONNECTIONS = 65536

PROTO_NAMES = {"icmp": 1, "tcp": 6, "udp": 17, "icmp6": 58}
PROTO_BY_NUMBER = {v: k for k, v in PROTO_NAMES.items()}
PROTO_NAMES["ipv6-icmp"] = 58     # /etc/protocols' name, read too
# Protocols the engine keys by port (compare-rules.md: DCCP, SCTP, UDP-Lite too).
PORTED_PROTOS = {6, 17, 33, 132, 136}
WILDCARDS = {"*", "any"}


def default_control_path() -> str | None:
    """Where the control socket lives when --control is given without a path:
    /run/colo-xdp/colo-xdp.sock for root, $XDG_RUNTIME_DIR/colo-xdp.sock for
    other users (None when that is not set)."""
    if os.geteuid() == 0:
        return "/run/colo-xdp/colo-xdp.sock"
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    return os.path.join(runtime, "colo-xdp.sock") if runtime else None


# -- flow specs ------------------------------------------------------------------------

class FlowError(ValueError):
    """A flow spec that names no flow; the message is one sentence."""


def _shorten(digits: str) -> str:
    """A number too long to repeat whole in an error sentence."""
    return digits if len(digits) <= 12 else f"{digits[:8]}... ({len(digits)} digits)"


def _proto(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool):
        raise FlowError(f"protocol {value!r} is not tcp, udp, icmp, a number or *")
    if isinstance(value, int):
        number = value
    else:
        text = str(value).strip().lower()
        if text in WILDCARDS:
            return None
        if text in PROTO_NAMES:
            return PROTO_NAMES[text]
        if not (text.isascii() and text.isdigit()):
            raise FlowError(f"protocol {value!r} is not tcp, udp, icmp, a number or *")
        digits = text.lstrip("0") or "0"      # int() refuses over 4300 digits
        if len(digits) > 3:
            raise FlowError(f"protocol number {_shorten(digits)} is outside 1..255")
        number = int(digits)
    if not 1 <= number <= 255:
        raise FlowError(f"protocol number {number} is outside 1..255")
    return number


def _net(value: Any, what: str) -> str | None:
    """'10.0.0.7/24' -> '10.0.0.0/24', '10.0.0.1/32' -> '10.0.0.1', '*' -> None;
    IPv6 alike ('fd00::7/64' -> 'fd00::/64'); a /0 of either family is any."""
    if value is None:
        return None
    text = str(value).strip()
    if text.lower() in WILDCARDS:
        return None
    try:
        net = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise FlowError(f"{what} {text!r} is not an IPv4 or IPv6 address, "
                        "address/prefix or *") from None
    if net.prefixlen == 0:
        return None
    return str(net.network_address) if net.prefixlen == net.max_prefixlen else str(net)


def _port(value: Any, what: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool):
        raise FlowError(f"{what} {value!r} is not a port number or *")
    if isinstance(value, int):
        number = value
    else:
        text = str(value).strip()
        if text.lower() in WILDCARDS:
            return None
        if not (text.isascii() and text.isdigit()):
            raise FlowError(f"{what} {value!r} is not a port number or *")
        digits = text.lstrip("0") or "0"      # int() refuses over 4300 digits
        if len(digits) > 5:
            raise FlowError(f"{what} {_shorten(digits)} is outside 1..65535 "
                            "(use * for any port)")
        number = int(digits)
    if not 1 <= number <= 65535:
        raise FlowError(f"{what} {number} is outside 1..65535 (use * for any port)")
    return number


def _rule(proto, src, dst, sport, dport) -> PassthroughRule:
    rule = PassthroughRule(proto=_proto(proto), src=_net(src, "source"),
                           dst=_net(dst, "destination"), sport=_port(sport, "source port"),
                           dport=_port(dport, "destination port"))
    if (rule.sport or rule.dport) and rule.proto is not None and rule.proto not in PORTED_PROTOS:
        raise FlowError(f"{proto_name(rule.proto)} has no ports; leave them out or use *")
    return rule


def _endpoint(text: str, what: str) -> tuple[str, str | None]:
    """'10.0.0.0/24:53' -> ('10.0.0.0/24', '53'); '*' -> ('*', None);
    IPv6 in brackets when a port follows: '[fd00::/64]:53', else bare."""
    if text.startswith("["):
        addr, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise FlowError(f"{what} {text!r} is not [IPV6]:PORT or [IPV6]")
        return addr, rest[1:] or None
    if text.count(":") > 1:
        return text, None                        # IPv6 without a port
    addr, sep, port = text.rpartition(":")
    if not sep:
        return text, None
    if not addr:
        raise FlowError(f"{what} {text!r} has a port but no address (use *:{port})")
    return addr, port


def parse_flow(text: str) -> PassthroughRule:
    """Read a flow spec: ``[PROTO] SRC[:PORT] > DST[:PORT]``, or ``PROTO`` alone.

    PROTO is tcp, udp, icmp, icmp6, a protocol number or * / any (the
    default); an address is A.B.C.D, A.B.C.D/PREFIX, an IPv6 address or
    prefix (in brackets when a port follows) or *; a port a number or *::

        udp 10.0.0.0/24:* > *:53      UDP from 10.0.0.0/24 to port 53
        tcp * > 10.0.0.2:22           TCP to 10.0.0.2 port 22
        udp [fd00::/64]:* > *:53      UDP from fd00::/64 to port 53
        tcp * > 2001:db8::2           TCP to 2001:db8::2
        10.0.0.9 > *                  everything from 10.0.0.9
        icmp                          all ICMP
    """
    if not isinstance(text, str) or not text.strip():
        raise FlowError("a flow spec is PROTO, or [PROTO] SRC[:PORT] > DST[:PORT]")
    left, sep, right = text.partition(">")
    head = left.split()
    if not sep:
        if len(head) != 1:
            raise FlowError(f"flow {text!r} is not PROTO or [PROTO] SRC[:PORT] > DST[:PORT]")
        return _rule(head[0], None, None, None, None)
    tail = right.split()
    if len(head) not in (1, 2) or len(tail) != 1:
        raise FlowError(f"flow {text!r} is not [PROTO] SRC[:PORT] > DST[:PORT]")
    proto = head[0] if len(head) == 2 else None
    src, sport = _endpoint(head[-1], "source")
    dst, dport = _endpoint(tail[0], "destination")
    return _rule(proto, src, dst, sport, dport)


FLOW_FIELDS = ("proto", "src", "dst", "sport", "dport")


def flow_from_fields(fields: dict) -> PassthroughRule:
    """The JSON form: proto, src, dst, sport, dport; absent, null or "*" is any."""
    return _rule(*(fields.get(name) for name in FLOW_FIELDS))


def proto_name(proto: int | None) -> str:
    if proto is None:
        return "*"
    return PROTO_BY_NUMBER.get(proto, str(proto))


def format_flow(rule: PassthroughRule) -> str:
    """The canonical spec: ``udp 10.0.0.0/24 > *:53`` (parse_flow reads it back)."""
    def end(addr, port):
        if port and addr and ":" in addr:
            return f"[{addr}]:{port}"
        return f"{addr or '*'}:{port}" if port else addr or "*"
    return f"{proto_name(rule.proto)} {end(rule.src, rule.sport)} > {end(rule.dst, rule.dport)}"


def rule_json(rule: PassthroughRule) -> dict:
    return {"flow": format_flow(rule),
            "proto": None if rule.proto is None else proto_name(rule.proto),
            "src": rule.src, "dst": rule.dst, "sport": rule.sport, "dport": rule.dport}


# -- passthrough table -----------------------------------------------------------------

PassthroughSink = Callable[[list[PassthroughRule]], None]


class PassthroughError(Exception):
    """A passthrough change that was refused; the message is one sentence."""


class PassthroughTable:
    """The passthrough list and where it goes.

    Every change is pushed, as the whole new list, to each sink in order: in
    chardev mode the engine (``Engine.set_passthrough``); in XDP mode the
    transport adds the classifier's rules map too
    (``add_sink(classifier.set_rules)``, colo_xdp/transport/xdp.py).  A sink
    refuses a change by raising (EngineError, XdpError, ...; the message
    becomes the reply's error): the sinks already updated are given the old
    list back and the change is refused as a whole.
    """

    def __init__(self, sinks: list[PassthroughSink] | None = None,
                 max_rules: int = MAX_PASSTHROUGH_RULES):
        self.sinks: list[PassthroughSink] = list(sinks or [])
        self.max_rules = max_rules
        self.rules: list[PassthroughRule] = []
        self.on_change: Callable[[str, PassthroughRule], None] | None = None

    def add_sink(self, sink: PassthroughSink) -> None:
        """Attach a sink and bring it up to date at once."""
        sink(list(self.rules))
        self.sinks.append(sink)

    def remove_sink(self, sink: PassthroughSink) -> None:
        """Detach a sink (a transport going away); unknown sinks are ignored."""
        if sink in self.sinks:
            self.sinks.remove(sink)

    def replace(self, rules: list[PassthroughRule]) -> None:
        unique = list(dict.fromkeys(rules))
        if len(unique) > self.max_rules:
            raise PassthroughError(f"at most {self.max_rules} passthrough rules are kept")
        self._push(unique)

    def add(self, rule: PassthroughRule) -> bool:
        """Add a rule; False if it was there already."""
        if rule in self.rules:
            return False
        if len(self.rules) >= self.max_rules:
            raise PassthroughError(f"the passthrough list is full ({self.max_rules} rules); "
                                   "delete one first")
        self._push(self.rules + [rule])
        if self.on_change:
            self.on_change("add", rule)
        return True

    def delete(self, rule: PassthroughRule) -> None:
        if rule not in self.rules:
            raise PassthroughError(f"no passthrough rule {format_flow(rule)!r}; "
                                   "'passthrough list' shows them")
        self._push([r for r in self.rules if r != rule])
        if self.on_change:
            self.on_change("del", rule)

    def _push(self, new: list[PassthroughRule]) -> None:
        done: list[PassthroughSink] = []
        for sink in self.sinks:
            try:
                sink(list(new))
            except Exception as exc:   # any sink's refusal; sinks are plug-ins (engine, BPF map)
                for undo in done:
                    undo(list(self.rules))
                raise PassthroughError(f"the passthrough list was not changed: {exc}") from None
            done.append(sink)
        self.rules = new


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


class CommandError(Exception):
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
