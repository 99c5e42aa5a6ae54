"""Flow specs and the passthrough list (sans-I/O).

A flow spec names the flows not to compare, as a line or as JSON fields::

    parse_flow("udp 10.0.0.0/24:* > *:53")      # PassthroughRule(proto=17, src=...)
    flow_from_fields({"proto": "tcp", "dport": 22})
    format_flow(rule)                            # "udp 10.0.0.0/24 > *:53"

``PassthroughTable`` keeps the list and gives every change to its sinks in
two phases (each checks, then all commit): the engine, in XDP mode the
classifiers' list maps, the ``--passthrough-file``; so the kernel fast path
and the engine never disagree.  The control protocol
(colo_xdp.proto.control) and the command line read and change it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from colo_xdp.engine import MAX_PASSTHROUGH_RULES, PassthroughRule
from colo_xdp.errors import ConfigError, ControlError
from colo_xdp.proto.inet import PROTO_BY_NUMBER, PROTO_NAMES, network
# Protocols the engine keys by port (compare-rules.md: DCCP, SCTP, UDP-Lite too).
PORTED_PROTOS = {6, 17, 33, 132, 136}
WILDCARDS = {"*", "any"}

# -- flow specs ------------------------------------------------------------------------

class FlowError(ConfigError):
    """A flow spec that names no flow; the message is one sentence."""


def _shorten(digits: str) -> str:
    """A number too long to repeat whole in an error sentence."""
    return digits if len(digits) <= 12 else f"{digits[:8]}... ({len(digits)} digits)"


def _proto(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool):
        raise FlowError(f"protocol {value!r} is not tcp, udp, icmp, icmp6, a number or *")
    if isinstance(value, int):
        number = value
    else:
        text = str(value).strip().lower()
        if text in WILDCARDS:
            return None
        if text in PROTO_NAMES:
            return PROTO_NAMES[text]
        if not (text.isascii() and text.isdigit()):
            raise FlowError(f"protocol {value!r} is not tcp, udp, icmp, icmp6, a number or *")
        digits = text.lstrip("0") or "0"      # int() refuses over 4300 digits
        if len(digits) > 3:
            raise FlowError(f"protocol number {_shorten(digits)} is outside 1..255")
        number = int(digits)
    if not 1 <= number <= 255:
        raise FlowError(f"protocol number {number} is outside 1..255")
    return number


def _net(value: Any, what: str) -> str | None:
    """'10.0.0.7/24' -> '10.0.0.0/24', '10.0.0.1/32' -> '10.0.0.1', '*' -> None;
    IPv6 alike ('fd00::7/64' -> 'fd00::/64'); a /0 prefix is refused (say *
    for any address)."""
    if value is None:
        return None
    text = str(value).strip()
    if text.lower() in WILDCARDS:
        return None
    try:
        net = network(text, what)
    except ValueError:
        raise FlowError(f"{what} {text!r} is not an IPv4 or IPv6 address, "
                        "address/prefix or *") from None
    if net.prefixlen == 0:
        # Every address: a typo away from "compare nothing for anyone".  The
        # wildcard must be said as such.
        raise FlowError(f"{what} {text!r} has prefix /0, which matches every address; "
                        "use * for any address")
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

class PassthroughError(ControlError):
    """A passthrough change that was refused; the message is one sentence."""


def _takes_any(rules: list[PassthroughRule]) -> None:
    """A sink with nothing to check: it takes any list the table allows."""


@dataclass(frozen=True)
class PassthroughSink:
    """Somewhere the passthrough list goes.

    ``check(rules)`` raises (one sentence: EngineError, XdpError, ...) when
    the sink could not take the list, and changes nothing.  ``commit(rules)``
    takes it; a list ``check`` passed should not fail there (what still can,
    out of memory or a syscall, is undone on the other sinks).
    """

    commit: Callable[[list[PassthroughRule]], None]
    check: Callable[[list[PassthroughRule]], None] = _takes_any


class PassthroughTable:
    """The passthrough list and where it goes.

    Every change goes, as the whole new list, to every sink in two phases:
    each sink checks it (the engine: the rule limit and every field; the
    classifiers: what fits their list map; the file: that it can be
    written), and only when all accept do they commit, in order, ``final``
    last.  ``final`` is the one sink whose commit cannot be taken back: the
    engine, which releases what the connections a new rule covers hold.  A
    refusal in the first phase changes nothing anywhere; a commit that fails
    anyway gives the sinks already committed the old list back::

        table = PassthroughTable(final=PassthroughSink(engine.set_passthrough,
                                                       engine.check_passthrough))
        table.add_sink(PassthroughSink(classifier.set_rules, classifier.check_rules))
        table.add(parse_flow("udp * > *:53"))

    In chardev mode the engine is the only sink; in XDP mode each guest
    interface's port adds its classifier (colo_xdp/transport/xdp/port.py),
    and ``--passthrough-file`` adds the file.  The limit is the engine's and
    the classifier's (``MAX_PASSTHROUGH_RULES``, CX_MAX_RULES in
    bpf/cx_wire.h).
    """

    def __init__(self, sinks: list[PassthroughSink] | None = None,
                 max_rules: int = MAX_PASSTHROUGH_RULES,
                 final: PassthroughSink | None = None):
        self.sinks: list[PassthroughSink] = list(sinks or [])
        self.final = final
        self.max_rules = max_rules
        self.rules: list[PassthroughRule] = []
        self.on_change: Callable[[str, PassthroughRule], None] | None = None

    def add_sink(self, sink: PassthroughSink) -> None:
        """Attach a sink and bring it up to date at once."""
        sink.check(list(self.rules))
        sink.commit(list(self.rules))
        self.sinks.append(sink)

    def remove_sink(self, sink: PassthroughSink) -> None:
        """Detach a sink (a transport going away); unknown sinks are ignored."""
        if sink in self.sinks:
            self.sinks.remove(sink)

    def replace(self, rules: list[PassthroughRule]) -> None:
        unique = list(dict.fromkeys(rules))
        if len(unique) > self.max_rules:
            raise PassthroughError(f"at most {self.max_rules} passthrough rules are kept, "
                                   f"not {len(unique)}")
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
        everyone = [*self.sinks, *([self.final] if self.final else [])]
        for sink in everyone:
            try:
                sink.check(list(new))
            except Exception as exc:   # any sink's refusal; sinks are plug-ins
                raise PassthroughError(f"the passthrough list was not changed: {exc}") from None
        done: list[PassthroughSink] = []
        for sink in everyone:
            try:
                sink.commit(list(new))
            except Exception as exc:   # checked, failed anyway (memory, a syscall)
                for undo in done:
                    undo.commit(list(self.rules))
                raise PassthroughError(f"the passthrough list was not changed: {exc}") from None
            done.append(sink)
        self.rules = new
