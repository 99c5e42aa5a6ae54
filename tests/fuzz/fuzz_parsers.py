#!/usr/bin/env python3
"""atheris harnesses for the parsers that read what peers and users send.

    .venv/bin/python tests/fuzz/fuzz_parsers.py TARGET [libFuzzer options] [corpus dirs]

(libFuzzer's -merge runs this file again as a program, with its own options
only: the target then comes from CX_FUZZ_TARGET, set here, and the first
python3 on PATH must be the venv's: fuzzlib.env() puts it there.)

TARGET is one of:

* ``framing``: colo_xdp.proto.framing.Decoder, fed a byte stream in
  pieces through ``push``/``records`` (as NotifyProtocol reads).  It must
  yield exactly the records an independent walk of the stream finds, in
  order, raise FramingError exactly at the first zero-length or oversize
  record, and keep the rest as ``pending``.  (``feed`` loses the records it
  completed in the same call before a broken one:
  test_fuzz_parsers.py::test_decoder_feed_keeps_records_before_a_broken_one.)
* ``notify``: colo_xdp.proto.notify.NotifyProtocol, fed in pieces.  Every whole
  record becomes one event of the right kind, each COLO_USERSPACE_PROXY_INIT
  one reply, a broken record an error sentence; nothing raises.
* ``spec``: colo_xdp.transport.chardev.endpoint.parse_spec on any text.  It returns
  a Spec that says what the text says, or raises SpecError; nothing else.
* ``control``: the control socket's protocol (colo_xdp.proto.control), one
  connection's byte stream fed in pieces to a LineReader (sometimes with a
  small line limit, sometimes taking one line per read), each line through
  parse_request and Commands.reply against a fake service with a real
  PassthroughTable (sometimes 3 rules at most, sometimes with a sink that
  refuses more than 2).  The reader must yield exactly the lines an
  independent split finds (one BadRequest per oversized line, ``partial``
  below the limit); each line must read as json.loads reads it; each reply
  must be the one docs/control.md gives (the id echoed, an error one
  sentence) and encode to one line of strict JSON; the table must follow a
  model of add/del; every rule accepted must be canonical and read back from
  format_flow and rule_json.  Lines that are not JSON go to parse_flow too.

Each target is a plain function of bytes, so tests/fuzz/test_fuzz_parsers.py
replays the corpus and every crash reproducer without atheris.
"""
from __future__ import annotations

import math
import os
import struct
import sys
from types import SimpleNamespace

NET_BUFSIZE = 69632


def _pieces(data: bytes) -> tuple[int, list[bytes]]:
    """The first byte sets flags and where the rest is cut into pieces."""
    if not data:
        return 0, []
    flags, rest = data[0], data[1:]
    step = 1 + (flags >> 2)
    return flags, [rest[i:i + step] for i in range(0, len(rest), step)] or [b""]


def _walk(stream: bytes, vnet: bool, max_len: int):
    """An independent reading of QEMU framing: (records, error at, pending)."""
    head = 8 if vnet else 4
    pos, records = 0, []
    while len(stream) - pos >= head:
        size = struct.unpack_from(">I", stream, pos)[0]
        if size == 0 or size > max_len:
            return records, pos, None
        if len(stream) - pos - head < size:
            break
        vnet_len = struct.unpack_from(">I", stream, pos + 4)[0] if vnet else 0
        records.append((vnet_len, stream[pos + head:pos + head + size]))
        pos += head + size
    return records, None, len(stream) - pos


def fuzz_framing(data: bytes) -> None:
    from colo_xdp.proto.framing import Decoder, FramingError, encode

    flags, pieces = _pieces(data)
    vnet = bool(flags & 1)
    max_len = 64 if flags & 2 else NET_BUFSIZE     # small: oversize is reachable
    dec = Decoder(vnet, max_len)
    got, error = [], False
    for piece in pieces:
        dec.push(piece)
        try:
            for r in dec.records():
                got.append((r.vnet_hdr_len, r.frame))
        except FramingError as exc:
            assert str(exc), "FramingError without a sentence"
            error = True
            break
    stream = b"".join(pieces)
    want, bad_at, pending = _walk(stream, vnet, max_len)
    assert got == want[:len(got)], "records differ from the stream's"
    if error:
        assert bad_at is not None, "FramingError on a well-framed stream"
        assert got == want
    else:
        assert bad_at is None or got == want, "missed a broken record"
        if bad_at is None:
            assert got == want and dec.pending == pending, "records or pending bytes lost"
    for vnet_len, frame in got:
        assert encode(frame, vnet_len if vnet else None) in stream


def fuzz_notify(data: bytes) -> None:
    from colo_xdp.proto.notify import (CHECKPOINT_DONE, PROXY_INIT, PROXY_INIT_REPLY, NotifyEvent,
                                 NotifyProtocol)
    from colo_xdp.proto.framing import encode

    flags, pieces = _pieces(data)
    vnet = bool(flags & 1)
    proto = NotifyProtocol(vnet)
    replies, events, errors = b"", [], []
    for piece in pieces:
        reply, evs, error = proto.receive(piece)
        assert isinstance(reply, bytes) and isinstance(error, str)
        replies += reply
        events += evs
        if error:
            errors.append(error)
            break
    want, bad_at, _ = _walk(b"".join(pieces), vnet, NET_BUFSIZE)
    assert bool(errors) == (bad_at is not None and len(events) == len(want)), "error misreported"
    assert [msg for _, msg in events] == [frame for _, frame in want][:len(events)]
    for kind, msg in events:
        expect = {PROXY_INIT: NotifyEvent.INIT, CHECKPOINT_DONE: NotifyEvent.CHECKPOINT}
        assert kind is expect.get(msg, NotifyEvent.UNKNOWN)
    inits = sum(1 for kind, _ in events if kind is NotifyEvent.INIT)
    assert replies == encode(PROXY_INIT_REPLY) * inits, "wrong replies"


def fuzz_spec(data: bytes) -> None:
    from colo_xdp.transport.chardev.endpoint import Spec, SpecError, check_distinct, parse_spec

    text = data.decode("utf-8", errors="replace")
    try:
        spec = parse_spec(text)
    except SpecError as exc:
        assert str(exc), "SpecError without a sentence"
        return
    assert isinstance(spec, Spec) and str(spec) == text
    assert spec.kind in ("unix", "tcp")
    if spec.kind == "unix":
        assert spec.path and text.startswith("unix:" + spec.path)
    else:
        assert 0 < spec.port < 65536
        assert int(text.split(",")[0].rpartition(":")[2]) == spec.port
    assert math.isfinite(spec.reconnect) and spec.reconnect >= 0
    assert not (spec.server and spec.reconnect)
    assert spec.same_place(spec)
    try:
        check_distinct({"a": spec, "b": spec})
    except SpecError:
        pass
    else:
        raise AssertionError("one socket for two roles was not refused")


# -- control: the control socket's protocol (colo_xdp.proto.control) ----------------------------

# The fields each command takes besides cmd and id, as docs/control.md lists them.
CONTROL_FIELDS = {
    "checkpoint": (), "failover": (), "stats": ("connections",), "subscribe": ("events",),
    "passthrough": ("op", "flow", "proto", "src", "dst", "sport", "dport"), "help": (),
}
FLOW_KEYS = ("proto", "src", "dst", "sport", "dport")
PORTED = {6, 17, 33, 132, 136}            # TCP, UDP, DCCP, SCTP, UDP-Lite
PROTO_NAMES = {1: "icmp", 6: "tcp", 17: "udp", 58: "icmp6"}   # the others go by number
CONTROL_MAX_LINES = (None, 24, 96, 400)   # None: control.MAX_LINE
CONTROL_STEPS = (1, 2, 3, 7, 16, 61, 512, 4096)
SMALL_TABLE, SINK_LIMIT = 3, 2
TOO_LONG = "too long"                     # what the reader yields for an oversized line
JSON_BLANK = frozenset(b" \t\r\x0b\x0c")  # bytes.strip()'s whitespace, newline aside
DEEP = 800     # brackets past which two json.loads calls may disagree on RecursionError


def _strict_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def _sentence(text) -> None:
    assert isinstance(text, str) and text, "an error that is not a sentence"
    assert text == text.strip() and "\n" not in text and "\r" not in text, repr(text)


def _control_lines(stream: bytes, max_line: int) -> tuple[list, int]:
    """An independent split: (the lines or TOO_LONG, the unfinished line's length)."""
    *complete, tail = stream.split(b"\n")
    lines = [line if len(line) < max_line else TOO_LONG for line in complete]
    if len(tail) >= max_line:
        return lines + [TOO_LONG], 0
    return lines, len(tail)


def _valid_id(rid) -> bool:
    if type(rid) is str or type(rid) is int:
        return True
    return type(rid) is float and math.isfinite(rid)


def _reading(line: bytes):
    """What a request line is, read without colo_xdp.proto.control: None (blank),
    ("bad", fragment, id), ("request", cmd, args, id) or ("deep",)."""
    import json

    if all(b in JSON_BLANK for b in line):
        return None
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        return ("bad", "not UTF-8", None)
    try:
        obj = json.loads(text)
    except RecursionError:
        return ("deep",)
    except ValueError:
        return ("bad", "not valid JSON", None)
    if type(obj) is not dict:
        return ("bad", "must be a JSON object", None)
    rid = obj.pop("id", None)
    if rid is not None and not _valid_id(rid):
        return ("bad", "id must be", None)
    cmd = obj.pop("cmd", None)
    if type(cmd) is not str:
        return ("bad", 'needs "cmd"', rid)
    return ("request", cmd, obj, rid)


def _check_rule(c, rule) -> None:
    """A rule the flow parsers accepted: canonical fields; both forms read it back."""
    import ipaddress
    import json

    from colo_xdp.engine import PassthroughRule

    assert type(rule) is PassthroughRule
    assert rule.proto is None or (type(rule.proto) is int and 1 <= rule.proto <= 255)
    for port in (rule.sport, rule.dport):
        assert port is None or (type(port) is int and 1 <= port <= 65535)
    if rule.sport or rule.dport:
        assert rule.proto is None or rule.proto in PORTED, f"ports on protocol {rule.proto}"
    for addr in (rule.src, rule.dst):
        if addr is not None:
            net = ipaddress.ip_network(addr)       # strict: host bits are clear
            assert net.prefixlen > 0, "a /0 kept instead of *"
            host = net.prefixlen == net.max_prefixlen
            want = str(net.network_address) if host else str(net)
            assert addr == want, f"{addr!r} is not canonical ({want!r})"
    text = c.format_flow(rule)
    assert c.parse_flow(text) == rule, f"{text!r} does not read back as {rule}"
    as_json = c.rule_json(rule)
    name = None if rule.proto is None else PROTO_NAMES.get(rule.proto, str(rule.proto))
    assert as_json["proto"] == name and text.startswith(f"{name or '*'} ")
    assert as_json["flow"] == text
    assert json.loads(json.dumps(as_json, allow_nan=False)) == as_json
    fields = {k: as_json[k] for k in FLOW_KEYS}
    assert c.flow_from_fields(fields) == rule, f"{fields} does not read back as {rule}"


class _ControlTarget:
    """The service as the control socket sees it: a real PassthroughTable whose
    first sink records the list, and, if asked, a second sink that refuses
    lists longer than SINK_LIMIT (an XDP map smaller than the table)."""

    def __init__(self, c, max_rules: int, refusing_sink: bool):
        self.held: list = []
        sinks = [c.PassthroughSink(self._record)]
        if refusing_sink:
            sinks.append(c.PassthroughSink(lambda rules: None, self._refuse))
        self.passthrough = c.PassthroughTable(sinks, max_rules)
        self.changes: list = []
        self.passthrough.on_change = lambda op, rule: self.changes.append((op, rule))
        self.last: tuple = ()
        self.failed_over = False

    def _record(self, rules: list) -> None:
        assert type(rules) is list
        self.held = rules

    def _refuse(self, rules: list) -> None:
        if len(rules) > SINK_LIMIT:
            raise RuntimeError(f"the map holds {SINK_LIMIT} rules")

    def control_checkpoint(self) -> dict:
        self.last = ("checkpoint", {"released": 2, "dropped_secondary": 1})
        return dict(self.last[1])

    def control_failover(self) -> dict:
        self.last = ("failover", {"already": self.failed_over, "released": 0,
                                  "dropped_secondary": 0})
        self.failed_over = True
        return dict(self.last[1])

    def control_stats(self, connections: int) -> dict:
        self.last = ("stats", connections, {"connections": {"shown": min(connections, 3)},
                                            "passthrough_rules": len(self.passthrough.rules)})
        return dict(self.last[2])


class _Session:
    def __init__(self):
        self.events = None

    def subscribe(self, events) -> None:
        assert type(events) is frozenset
        self.events = events


class _ControlRun:
    """One input's connection: the reader, the commands and the models."""

    def __init__(self, c, flags: int):
        self.c = c
        self.max_line = CONTROL_MAX_LINES[flags & 3] or c.MAX_LINE
        self.reader = c.LineReader(self.max_line)
        self.max_rules = SMALL_TABLE if flags & 8 else c.MAX_PASSTHROUGH_RULES
        self.sink_limit = SINK_LIMIT if flags & 16 else None
        self.target = _ControlTarget(c, self.max_rules, bool(flags & 16))
        self.session = _Session()
        self.commands = c.Commands(self.target)
        self.rules: list = []          # the passthrough list, modelled
        self.changes = 0
        self.got: list = []            # the reader's lines, TOO_LONG for its BadRequests

    def take(self) -> bool:
        """One line from the reader, served; False when it has none."""
        c = self.c
        item = self.reader.next_line()
        if item is None:
            return False
        if isinstance(item, c.BadRequest):
            assert f"longer than {self.max_line} bytes" in item.error and item.id is None
            self.got.append(TOO_LONG)
            self.serve(item, ("bad", "longer than", None))
            return True
        assert type(item) is bytes and b"\n" not in item and len(item) < self.max_line
        self.got.append(item)
        reading = _reading(item)
        request = c.parse_request(item)
        deep = item.count(b"[") + item.count(b"{") > DEEP
        if deep and isinstance(request, c.BadRequest) and "not valid JSON" in request.error:
            reading = ("bad", "not valid JSON", None)
        elif reading == ("deep",):           # too deep here, not there (or the reverse)
            assert deep and request is not None, f"{request} on {item[:80]!r}"
            reading = (("request", request.cmd, dict(request.args), request.id)
                       if isinstance(request, c.Request) else ("bad", request.error, request.id))
        if reading is None:
            assert request is None, f"blank line {item!r} read as {request}"
            return True
        if reading[0] == "bad":
            assert type(request) is c.BadRequest, f"{item[:200]!r} read as {request}"
            assert reading[1] in request.error, f"{request.error!r}, not {reading[1]!r}"
            assert request.id == reading[2] and type(request.id) is type(reading[2])
            if reading[1] == "not valid JSON":
                self.flow_text(item.decode("utf-8"))
        else:
            _, cmd, args, rid = reading
            assert type(request) is c.Request, f"{item[:200]!r} read as {request}"
            assert request.cmd == cmd and repr(request.args) == repr(args)
            assert request.id == rid and type(request.id) is type(rid)
        self.serve(request, reading)
        return True

    def flow_text(self, text: str) -> None:
        """Any text that is not JSON, as a flow spec too."""
        try:
            rule = self.c.parse_flow(text)
        except self.c.FlowError as exc:
            _sentence(str(exc))
        else:
            _check_rule(self.c, rule)

    def serve(self, item, reading) -> None:
        import json

        c = self.c
        reply = self.commands.reply(item, self.session)
        assert type(reply) is dict and type(reply.get("ok")) is bool, repr(reply)[:200]
        rid = reading[-1]
        if rid is None:
            assert "id" not in reply, "an id in the reply to a request without one"
        else:
            assert list(reply)[:2] == ["ok", "id"], "the id is not echoed second"
            assert reply["id"] == rid and type(reply["id"]) is type(rid)
        if reply["ok"]:
            assert "error" not in reply
        else:
            assert set(reply) == {"ok", "error"} | ({"id"} if rid is not None else set())
            _sentence(reply["error"])
        wire = c.encode(reply)
        assert wire.endswith(b"\n") and wire.count(b"\n") == 1, "a reply is not one line"
        try:
            back = json.loads(wire.decode("utf-8"), parse_constant=_strict_constant)
        except ValueError as exc:
            raise AssertionError(f"the reply is not JSON ({exc}): {wire[:200]!r}") from None
        assert back == reply, "the reply does not survive JSON"
        if reading[0] == "bad":
            assert not reply["ok"] and reading[1] in reply["error"]
            assert reply["error"] == item.error
        else:
            self.check_command(item, reply)
        table = self.target.passthrough
        assert len(table.rules) <= table.max_rules <= c.MAX_PASSTHROUGH_RULES
        assert table.rules == self.rules, "the table differs from the model"
        assert self.target.held == self.rules, "the first sink was not given the list back"
        assert len(self.target.changes) == self.changes

    def check_command(self, req, reply) -> None:
        """The reply a request deserves, read from docs/control.md."""
        from colo_xdp.observe.log import EVENT_NAMES

        args = req.args
        body = {k: v for k, v in reply.items() if k not in ("ok", "id")}
        if req.cmd not in CONTROL_FIELDS:
            assert not reply["ok"] and reply["error"].startswith("unknown command")
            return
        extra = [name for name in args if name not in CONTROL_FIELDS[req.cmd]]
        if extra:
            assert not reply["ok"], f"{req.cmd} took field {extra[0]!r}"
            assert reply["error"].startswith(f"{req.cmd} takes no field {extra[0]!r}")
            return
        if req.cmd == "help":
            assert reply["ok"] and set(body) == {"commands", "events"}
            assert {k: v["fields"] for k, v in body["commands"].items()} == \
                {k: list(v) for k, v in CONTROL_FIELDS.items()}
            assert body["events"] == list(EVENT_NAMES)
        elif req.cmd in ("checkpoint", "failover"):
            assert reply["ok"] and self.target.last == (req.cmd, body)
        elif req.cmd == "stats":
            want = args.get("connections", 100)
            if type(want) is int and 0 <= want <= 65536:
                assert reply["ok"] and self.target.last[:2] == ("stats", want)
                assert body == {"stats": self.target.last[2]}
            else:
                assert not reply["ok"] and "connections must be a whole number" in reply["error"]
        elif req.cmd == "subscribe":
            self.check_subscribe(args.get("events"), reply, body, set(EVENT_NAMES))
        else:
            self.check_passthrough(args, reply, body)

    def check_subscribe(self, events, reply, body, known: set) -> None:
        before = self.session.events
        if events is None:
            want = known
        elif type(events) is list and all(type(e) is str for e in events):
            want = set(events)
            if not want <= known:
                assert not reply["ok"] and reply["error"].startswith("unknown event")
                assert self.session.events is before
                return
        else:
            assert not reply["ok"] and "list of event names" in reply["error"]
            assert self.session.events is before
            return
        assert reply["ok"] and body == {"subscribed": sorted(want)}
        assert self.session.events == want

    def check_passthrough(self, args, reply, body) -> None:
        c = self.c
        op = args.get("op")
        fields = {k: args[k] for k in FLOW_KEYS if k in args}
        if op == "list":
            if fields or "flow" in args:
                assert not reply["ok"] and "takes no flow" in reply["error"]
            else:
                assert reply["ok"] and body == {"rules": [c.rule_json(r) for r in self.rules]}
            return
        if op not in ("add", "del"):
            assert not reply["ok"] and "needs op" in reply["error"]
            return
        if "flow" in args and fields:
            assert not reply["ok"] and "not both" in reply["error"]
            return
        if "flow" not in args and not fields:
            assert not reply["ok"] and "needs a flow" in reply["error"]
            return
        try:
            if "flow" in args:
                rule = c.parse_flow(args["flow"])
            else:
                rule = c.flow_from_fields(fields)
        except c.FlowError as exc:
            _sentence(str(exc))
            assert not reply["ok"] and reply["error"] == str(exc)
            return
        _check_rule(c, rule)
        if op == "del":
            if rule not in self.rules:
                assert not reply["ok"] and reply["error"].startswith("no passthrough rule")
                return
            self.rules.remove(rule)
            self.changes += 1
            assert self.target.changes[-1] == ("del", rule)
            assert reply["ok"] and body == {"deleted": True, "rule": c.rule_json(rule),
                                            "rules": len(self.rules)}
            return
        if rule in self.rules:
            assert reply["ok"] and body == {"added": False, "rule": c.rule_json(rule),
                                            "rules": len(self.rules)}
        elif len(self.rules) >= self.max_rules:
            assert not reply["ok"] and "is full" in reply["error"], reply
        elif self.sink_limit is not None and len(self.rules) >= self.sink_limit:
            assert not reply["ok"] and "was not changed" in reply["error"], reply
        else:
            self.rules.append(rule)
            self.changes += 1
            assert self.target.changes[-1] == ("add", rule)
            assert reply["ok"] and body == {"added": True, "rule": c.rule_json(rule),
                                            "rules": len(self.rules)}


def fuzz_control(data: bytes) -> None:
    from colo_xdp.proto import control, flows
    c = SimpleNamespace(**{**vars(flows), **vars(control)})   # the protocol and its flow specs

    if not data:
        return
    flags, rest = data[0], data[1:]
    step = CONTROL_STEPS[flags >> 5]
    run = _ControlRun(c, flags)
    stream = bytearray()
    for i in range(0, len(rest), step):
        piece = rest[i:i + step]
        run.reader.feed(piece)
        stream += piece
        if flags & 4:              # a client whose replies back up: one line per read
            run.take()
            continue
        while run.take():
            pass
        nl = stream.rfind(b"\n")
        tail = len(stream) - nl - 1
        assert run.reader.partial == (tail if tail < run.max_line else 0), "partial is wrong"
        assert len(run.reader.buf) < run.max_line and not run.reader.has_line()
    while run.take():
        pass
    lines, partial = _control_lines(bytes(stream), run.max_line)
    assert run.got == lines, "the reader's lines differ from the stream's"
    assert run.reader.partial == partial and len(run.reader.buf) < run.max_line
    assert not run.reader.has_line()


TARGETS = {"framing": fuzz_framing, "notify": fuzz_notify, "spec": fuzz_spec,
           "control": fuzz_control}
MODULES = ["colo_xdp.proto.framing", "colo_xdp.proto.notify", "colo_xdp.transport.chardev.endpoint",
           "colo_xdp.proto.control", "colo_xdp.proto.flows"]


def main(argv: list[str]) -> None:
    import importlib

    import atheris

    if len(argv) > 1 and argv[1] in TARGETS:
        os.environ["CX_FUZZ_TARGET"] = argv[1]
        argv = [argv[0], *argv[2:]]
    target = os.environ.get("CX_FUZZ_TARGET")
    if target not in TARGETS:
        sys.exit(f"usage: {argv[0]} {{{','.join(TARGETS)}}} [libFuzzer options] [corpus]")
    with atheris.instrument_imports(include=["colo_xdp"]):
        for name in MODULES:
            importlib.import_module(name)
    atheris.Setup(argv, TARGETS[target])
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
