"""The control protocol without sockets: line framing, requests, commands
(colo_xdp.proto.control), flow specs and the passthrough table
(colo_xdp.proto.flows)."""
from __future__ import annotations

import json

import pytest

from colo_xdp.proto.control import (COMMANDS, MAX_LINE, BadRequest, Commands, LineReader,
                                    Request, encode, event_line, parse_request)
from colo_xdp.proto.flows import (FlowError, PassthroughError, PassthroughSink,
                                  PassthroughTable, flow_from_fields, format_flow, parse_flow)
from colo_xdp.engine import EngineError, PassthroughRule
from colo_xdp.observe.log import EVENT_NAMES


class FakeTarget:
    def __init__(self):
        self.pushed: list[list[PassthroughRule]] = []
        self.passthrough = PassthroughTable([PassthroughSink(self.pushed.append)])
        self.calls: list = []

    def control_checkpoint(self) -> dict:
        self.calls.append("checkpoint")
        return {"released": 2, "dropped_secondary": 1}

    def control_failover(self) -> dict:
        self.calls.append("failover")
        return {"already": False, "released": 0, "dropped_secondary": 0}

    def control_stats(self, connections: int) -> dict:
        self.calls.append(("stats", connections))
        return {"connections": {"shown": 0}}


class FakeSession:
    events: frozenset = frozenset()

    def subscribe(self, events):
        self.events = events


def ask(line: bytes | str, target: FakeTarget | None = None, session=None) -> dict:
    target = target or FakeTarget()
    item = parse_request(line.encode() if isinstance(line, str) else line)
    assert item is not None
    reply = Commands(target).reply(item, session or FakeSession())
    # Every reply is one JSON line.
    wire = encode(reply)
    assert wire.endswith(b"\n") and wire.count(b"\n") == 1
    return json.loads(wire)


def one_sentence(reply: dict) -> str:
    assert reply["ok"] is False
    error = reply["error"]
    assert isinstance(error, str) and error and "\n" not in error and "Traceback" not in error
    return error


# -- line framing ----------------------------------------------------------------------

def test_lines_split_across_feeds():
    r = LineReader()
    r.feed(b'{"cmd": "st')
    assert r.next_line() is None and r.partial == 11
    r.feed(b'ats"}\n{"cmd": "help"}\n{"cm')
    assert r.next_line() == b'{"cmd": "stats"}'
    assert r.has_line()
    assert r.next_line() == b'{"cmd": "help"}'
    assert r.next_line() is None
    assert r.partial == 4


def test_oversized_line_is_one_error_then_skipped_to_its_newline():
    r = LineReader(max_line=100)
    r.feed(b"x" * 150)
    item = r.next_line()
    assert isinstance(item, BadRequest) and "longer than 100 bytes" in item.error
    assert r.next_line() is None
    r.feed(b"y" * 1000)                       # still the same line: skipped, no new error
    assert r.next_line() is None
    assert len(r.buf) == 0                   # memory stays bounded
    r.feed(b'zzz\n{"cmd":"help"}\n')
    assert r.next_line() == b'{"cmd":"help"}'


def test_oversized_line_arriving_whole():
    r = LineReader(max_line=100)
    r.feed(b"x" * 200 + b'\n{"cmd":"help"}\n')
    assert isinstance(r.next_line(), BadRequest)
    assert r.next_line() == b'{"cmd":"help"}'


def test_a_line_of_exactly_the_limit_is_taken():
    r = LineReader(max_line=MAX_LINE)
    body = b'{"cmd":"help","pad":"' + b"p" * (MAX_LINE - 24) + b'"}'
    assert len(body) + 1 == MAX_LINE
    r.feed(body + b"\n")
    assert r.next_line() == body


# -- requests ------------------------------------------------------------------------

@pytest.mark.parametrize("line, fragment", [
    (b"{not json", "not valid JSON"),
    (b"\xff\xfe", "not UTF-8"),
    (b"[1, 2]", "must be a JSON object"),
    (b'"stats"', "must be a JSON object"),
    (b"{}", "needs \"cmd\""),
    (b'{"cmd": 5}', "needs \"cmd\""),
    (b'{"cmd": "stats", "id": [1]}', "id must be"),
    (b"[" * 100000, "not valid JSON"),          # nesting deep enough to overflow the parser
])
def test_malformed_requests(line, fragment):
    item = parse_request(line)
    assert isinstance(item, BadRequest)
    reply = Commands(FakeTarget()).reply(item, FakeSession())
    assert fragment in one_sentence(reply)


def test_blank_lines_are_ignored():
    assert parse_request(b"   ") is None
    assert parse_request(b"") is None


def test_unknown_command_lists_the_known_ones():
    error = one_sentence(ask('{"cmd": "reboot", "id": 3}'))
    assert "unknown command 'reboot'" in error
    for name in COMMANDS:
        assert name in error


def test_id_is_echoed_on_success_and_error():
    assert ask('{"cmd": "help", "id": "a1"}')["id"] == "a1"
    assert ask('{"cmd": "nope", "id": 7}')["id"] == 7
    assert ask('{"cmd": 1, "id": 8}')["id"] == 8
    assert "id" not in ask('{"cmd": "help"}')


@pytest.mark.parametrize("raw_id", [b"NaN", b"Infinity", b"-Infinity", b"1e999"])
def test_an_id_that_json_cannot_carry_is_refused(raw_id):
    """Found writing the control fuzz target: Python's json reads NaN, Infinity
    and 1e999 (as inf), and the reply echoed them back, which is not JSON."""
    item = parse_request(b'{"cmd": "help", "id": ' + raw_id + b"}")
    assert isinstance(item, BadRequest) and item.id is None
    reply = Commands(FakeTarget()).reply(item, FakeSession())
    assert "id must be a string or a number" in one_sentence(reply)

    def strict(name):
        raise ValueError(f"{name} is not JSON")
    assert json.loads(encode(reply), parse_constant=strict) == reply


def test_unknown_field_is_refused():
    error = one_sentence(ask('{"cmd": "checkpoint", "force": true}'))
    assert "checkpoint takes no field 'force'" in error


# -- commands ----------------------------------------------------------------------------

def test_checkpoint_and_failover_reach_the_target():
    target = FakeTarget()
    assert ask('{"cmd": "checkpoint"}', target) == {"ok": True, "released": 2,
                                                     "dropped_secondary": 1}
    assert ask('{"cmd": "failover"}', target)["already"] is False
    assert target.calls == ["checkpoint", "failover"]


def test_stats_connections_argument():
    target = FakeTarget()
    assert ask('{"cmd": "stats"}', target)["ok"]
    assert ask('{"cmd": "stats", "connections": 0}', target)["ok"]
    assert target.calls == [("stats", 100), ("stats", 0)]
    for bad in ('-1', '"all"', 'true', '1e9'):
        error = one_sentence(ask(f'{{"cmd": "stats", "connections": {bad}}}', target))
        assert "connections must be a whole number" in error


def test_subscribe_all_or_some_events():
    session = FakeSession()
    reply = ask('{"cmd": "subscribe"}', session=session)
    assert reply["ok"] and session.events == frozenset(EVENT_NAMES)
    reply = ask('{"cmd": "subscribe", "events": ["checkpoint_requested"]}', session=session)
    assert reply["subscribed"] == ["checkpoint_requested"]
    assert session.events == {"checkpoint_requested"}
    assert "unknown event 'bogus'" in one_sentence(
        ask('{"cmd": "subscribe", "events": ["bogus"]}'))
    assert "list of event names" in one_sentence(ask('{"cmd": "subscribe", "events": "all"}'))


def test_help_names_every_command_and_event():
    reply = ask('{"cmd": "help"}')
    assert set(reply["commands"]) == set(COMMANDS)
    assert reply["events"] == list(EVENT_NAMES)


def test_passthrough_add_list_del():
    target = FakeTarget()
    reply = ask('{"cmd": "passthrough", "op": "add", "flow": "udp 10.0.0.0/24:* > *:53"}',
                target)
    assert reply == {"ok": True, "added": True, "rules": 1, "rule": {
        "flow": "udp 10.0.0.0/24 > *:53", "proto": "udp", "src": "10.0.0.0/24", "dst": None,
        "sport": None, "dport": 53}}
    assert target.pushed[-1] == [PassthroughRule(proto=17, src="10.0.0.0/24", dport=53)]
    # The same rule again, as fields: not added twice.
    reply = ask('{"cmd": "passthrough", "op": "add", "proto": 17, "src": "10.0.0.9/24", '
                '"dst": "*", "dport": "53"}', target)
    assert reply["added"] is False and reply["rules"] == 1
    ask('{"cmd": "passthrough", "op": "add", "flow": "icmp"}', target)
    listed = ask('{"cmd": "passthrough", "op": "list"}', target)["rules"]
    assert [r["flow"] for r in listed] == ["udp 10.0.0.0/24 > *:53", "icmp * > *"]
    reply = ask('{"cmd": "passthrough", "op": "del", "flow": "udp 10.0.0.0/24 > *:53"}', target)
    assert reply["deleted"] and reply["rules"] == 1
    assert target.pushed[-1] == [PassthroughRule(proto=1)]
    error = one_sentence(ask('{"cmd": "passthrough", "op": "del", "flow": "tcp"}', target))
    assert "no passthrough rule 'tcp * > *'" in error


@pytest.mark.parametrize("request_, fragment", [
    ('{"cmd": "passthrough"}', "needs op"),
    ('{"cmd": "passthrough", "op": "flip", "flow": "udp"}', "needs op"),
    ('{"cmd": "passthrough", "op": "add"}', "needs a flow"),
    ('{"cmd": "passthrough", "op": "add", "flow": "udp", "dport": 5}', "not both"),
    ('{"cmd": "passthrough", "op": "list", "flow": "udp"}', "takes no flow"),
    ('{"cmd": "passthrough", "op": "add", "flow": "udp 1.2.3.4 >"}', "is not"),
    ('{"cmd": "passthrough", "op": "add", "flow": 7}', "flow spec"),
    ('{"cmd": "passthrough", "op": "add", "dport": 70000}', "outside 1..65535"),
    ('{"cmd": "passthrough", "op": "add", "proto": "icmp", "dport": 1}', "icmp has no ports"),
    ('{"cmd": "passthrough", "op": "add", "src": "10.0.0.300"}', "not an IPv4 or IPv6 address"),
])
def test_passthrough_bad_requests(request_, fragment):
    assert fragment in one_sentence(ask(request_))


# -- flow specs ---------------------------------------------------------------------------

@pytest.mark.parametrize("text, rule, canonical", [
    ("udp 10.0.0.0/24:* > *:53", PassthroughRule(proto=17, src="10.0.0.0/24", dport=53),
     "udp 10.0.0.0/24 > *:53"),
    ("tcp * > 10.0.0.2:22", PassthroughRule(proto=6, dst="10.0.0.2", dport=22),
     "tcp * > 10.0.0.2:22"),
    ("10.0.0.9 > *", PassthroughRule(src="10.0.0.9"), "* 10.0.0.9 > *"),
    ("icmp", PassthroughRule(proto=1), "icmp * > *"),
    ("any", PassthroughRule(), "* * > *"),
    ("47 10.1.0.0/16 > 10.2.0.0/16", PassthroughRule(proto=47, src="10.1.0.0/16",
                                                      dst="10.2.0.0/16"),
     "47 10.1.0.0/16 > 10.2.0.0/16"),
    ("  UDP   1.2.3.4:1000>5.6.7.8:2000 ", PassthroughRule(17, "1.2.3.4", "5.6.7.8", 1000, 2000),
     "udp 1.2.3.4:1000 > 5.6.7.8:2000"),
    ("tcp * > 10.0.0.1/32:*", PassthroughRule(proto=6, dst="10.0.0.1"), "tcp * > 10.0.0.1"),
    ("sctp", None, None),
    ("udp [fd00::7/64]:* > *:53", PassthroughRule(proto=17, src="fd00::/64", dport=53),
     "udp fd00::/64 > *:53"),
    ("tcp * > 2001:db8::2", PassthroughRule(proto=6, dst="2001:db8::2"),
     "tcp * > 2001:db8::2"),
    ("udp [fd00::1]:5 > [fd00::2/128]:6", PassthroughRule(17, "fd00::1", "fd00::2", 5, 6),
     "udp [fd00::1]:5 > [fd00::2]:6"),
    ("icmp6 * > fe80::/10", PassthroughRule(proto=58, dst="fe80::/10"),
     "icmp6 * > fe80::/10"),
    ("ipv6-icmp", PassthroughRule(proto=58), "icmp6 * > *"),
])
def test_flow_specs(text, rule, canonical):
    if rule is None:
        with pytest.raises(FlowError):
            parse_flow(text)
        return
    assert parse_flow(text) == rule
    assert format_flow(rule) == canonical
    assert parse_flow(canonical) == rule


@pytest.mark.parametrize("text", [
    "", "udp tcp", "udp a > b > c", "udp 1.2.3.4", "udp 1.2.3.4:0 > *", "udp :53 > *",
    "udp * > *:http", "256", "0", "icmp * > *:1", "udp 1.2.3.4/33 > *", "udp * >",
    "tcp 0.0.0.0/0:* > 10.0.0.1", "10.0.0.0/0 > *", "* > 192.168.1.0/0",
    "udp [fd00::1 > *", "udp [fd00::1]x > *", "udp fd00::/129 > *", "udp [10.0.0.1:5 > *",
    "udp [fd00::g]:5 > *", "icmp6 ::/0 > fe80::/10",
])
def test_bad_flow_specs_are_one_sentence(text):
    with pytest.raises(FlowError) as info:
        parse_flow(text)
    assert "\n" not in str(info.value) and str(info.value)


@pytest.mark.parametrize("fields, fragment", [
    ({"proto": "7" * 5000}, "protocol number 777"),
    ({"dport": "9" * 5000}, "destination port 999"),
    ({"sport": "0" * 5000}, "source port 0 is outside"),
    ({"flow": "1" * 5000}, "protocol number 111"),
    ({"flow": "udp * > *:" + "5" * 5000}, "destination port 555"),
])
def test_numbers_too_long_for_int_are_out_of_range(fields, fragment):
    """Found writing the control fuzz target: int() refuses more than 4300
    digits with a ValueError, which escaped Commands.reply (the server's
    "internal error") for a request well under MAX_LINE."""
    error = one_sentence(ask(json.dumps({"cmd": "passthrough", "op": "add", **fields})))
    assert fragment in error and "outside" in error
    # Leading zeros still count for nothing.
    assert flow_from_fields({"proto": "0" * 5000 + "6", "dport": "0" * 5000 + "53"}) == \
        PassthroughRule(proto=6, dport=53)


def test_flow_fields_match_flow_text():
    assert flow_from_fields({"proto": "udp", "src": "10.0.0.0/24", "dport": 53}) == \
        parse_flow("udp 10.0.0.0/24:* > *:53")
    assert flow_from_fields({}) == PassthroughRule()
    assert flow_from_fields({"proto": None, "sport": "*", "dst": "any"}) == PassthroughRule()


# -- passthrough table --------------------------------------------------------------------

def test_table_refusal_in_a_check_changes_no_sink():
    first: list = []
    last: list = []

    def refusing(rules):
        if len(rules) > 1:
            raise EngineError("the map is full")

    table = PassthroughTable([PassthroughSink(first.append), PassthroughSink(list, refusing)],
                             final=PassthroughSink(last.append))
    table.add(PassthroughRule(proto=6))
    with pytest.raises(PassthroughError, match="was not changed: the map is full"):
        table.add(PassthroughRule(proto=17))
    assert table.rules == [PassthroughRule(proto=6)]
    assert first == last == [[PassthroughRule(proto=6)]]   # the new list reached nobody


def test_table_commit_that_fails_gives_the_old_list_back_and_final_commits_last():
    order: list = []

    def failing(rules):
        order.append(("failing", rules))
        if len(rules) > 1:
            raise OSError("the syscall failed")

    table = PassthroughTable([PassthroughSink(lambda r: order.append(("first", r))),
                              PassthroughSink(failing)],
                             final=PassthroughSink(lambda r: order.append(("final", r))))
    tcp, udp = PassthroughRule(proto=6), PassthroughRule(proto=17)
    table.add(tcp)
    assert [who for who, _ in order] == ["first", "failing", "final"]
    order.clear()
    with pytest.raises(PassthroughError, match="was not changed: the syscall failed"):
        table.add(udp)
    assert order == [("first", [tcp, udp]), ("failing", [tcp, udp]), ("first", [tcp])]
    assert table.rules == [tcp]


def test_table_limit_and_late_sink():
    table = PassthroughTable(max_rules=2)
    table.add(PassthroughRule(proto=6))
    table.add(PassthroughRule(proto=17))
    with pytest.raises(PassthroughError, match="full"):
        table.add(PassthroughRule(proto=1))
    got: list = []
    table.add_sink(PassthroughSink(got.append))         # e.g. an XDP map attached later
    assert got == [[PassthroughRule(proto=6), PassthroughRule(proto=17)]]


def test_event_lines():
    line = event_line("checkpoint_requested", {"reason": "mismatch", "conn": "-"}, 12.34567)
    assert json.loads(line) == {"event": "checkpoint_requested", "ts": 12.346,
                                "reason": "mismatch", "conn": None}
    assert line.endswith(b"\n") and line.count(b"\n") == 1


def test_request_dataclass_defaults():
    assert parse_request(b'{"cmd": "stats", "connections": 3}') == \
        Request("stats", {"connections": 3}, None)
