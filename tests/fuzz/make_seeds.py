"""Write the fuzzers' seed inputs: for the engine one small program per rule,
for the parsers a few well-formed and broken inputs.

    .venv/bin/python tests/fuzz/make_seeds.py

Each seed is an input for tests/fuzz/fuzz_engine.c (its header comment has
the format) that walks the engine through one rule of docs/compare-rules.md
with real frames from colo_xdp.lab.pktgen.  They are the start of the fuzzer's
corpus (tests/fuzz/corpus/engine/seed-*) and, replayed under ASan/UBSan by
tests/fuzz/test_fuzz_engine.py, the proof that every rule runs clean; that
test also checks, from the counters each seed prints, that together they
reach every release, drop and checkpoint reason.  Files not named seed-* in
that directory are the fuzzer's own finds and are left alone.

The parser seeds (corpus/framing, corpus/notify, corpus/spec,
corpus/control) follow tests/fuzz/fuzz_parsers.py: for framing and notify a
flags byte (bit 0: vnet word; bit 1: 64-byte record limit; the rest: how the
stream is cut) and then the stream; for spec the text; for control a flags
byte (bits 0-1: the line limit; bit 2: one line per read; bit 3: a 3-rule
passthrough table; bit 4: a sink that refuses more than 2 rules; bits 5-7:
how the stream is cut) and then request lines.  The segment seeds
(corpus/segment) follow tests/fuzz/fuzz_segment.c: mtu, max_len, a frame.
"""
from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from colo_xdp.lab import pktgen as g  # noqa: E402
from colo_xdp.lab.pktgen import IPv4Fields  # noqa: E402

CORPUS = Path(__file__).resolve().parent / "corpus" / "engine"

# Harness op codes (fuzz_engine.c, enum OP_*); bit 7 selects the secondary.
FEED_STREAM, FEED_RAW, SYNTH, TICK, CHECKPOINT, FAILOVER, OUT, DRAIN, RULES, NOTE_DROP, \
    SNAPSHOT = range(11)
P, S = 0, 0x80
QUEUE = {1: 0, 2: 1, 3: 2, 4: 3, 8: 4, 64: 5, 1024: 6}
CONNS = {1: 0, 2: 1, 3: 2, 4: 3, 16: 4, 256: 5, 16384: 6}
TIMEOUT = {1: 0, 2: 1, 10: 2, 50: 3, 100: 4, 500: 5, 1000: 6, 3000: 7, 60000: 12}
EVENTS = {65536: 0, 4: 1, 16: 2, 1024: 3}
DROP_TRUNCATED, DROP_NO_MEMORY = 8, 9


def config(vnet=False, queue=1024, conns=16384, evidence=False, timeout=3000, scan=1000,
           events=65536, reasm=0) -> bytes:
    """reasm: byte 3 as is (fuzz_engine.c: the reassembly limits)."""
    b0 = int(vnet) | QUEUE[queue] << 1 | CONNS[conns] << 4 | (0x80 if evidence else 0)
    return bytes([b0, TIMEOUT[timeout] | TIMEOUT[scan] << 4, EVENTS[events], reasm])


def raw(side: int, frame: bytes, vnet_len: int = 0) -> bytes:
    return bytes([FEED_RAW | side, vnet_len]) + struct.pack(">H", len(frame)) + frame


def largest(side: int, one_past: bool) -> bytes:
    """A record of CX_NET_BUFSIZE bytes, or one byte more (oversize)."""
    return bytes([FEED_RAW | 0x40 | side, 0]) + struct.pack(">H", int(one_past))


def stream(side: int, data: bytes) -> bytes:
    return bytes([FEED_STREAM | side]) + struct.pack(">H", len(data)) + data


def tick(dt: int) -> bytes:
    return bytes([TICK]) + struct.pack(">H", dt)


def consume(n: int) -> bytes:
    return bytes([OUT]) + struct.pack(">H", n)


def note(side: int, reason: int) -> bytes:
    return bytes([NOTE_DROP | side, reason + 1])


def rules(*specs: bytes) -> bytes:
    """specs: 4 bytes each, decoded by op_rules() in fuzz_engine.c."""
    return bytes([RULES, len(specs)]) + b"".join(specs)


CKPT, FAIL, DRAIN_, SNAP = bytes([CHECKPOINT]), bytes([FAILOVER | S]), bytes([DRAIN]), bytes([SNAPSHOT])
ABANDON = bytes([OUT | S]) + b"\0\0"
ALL_OUT = consume(0x8000)


def udp(tag: bytes, sport: int = 1000, **kw) -> bytes:
    return g.udp_frame(tag, sport=sport, **kw)


def seg(payload: bytes, seq: int, ack: int = 1, flags: int = g.TCP_ACK | g.TCP_PSH,
        sport: int = 4000) -> bytes:
    return g.tcp_frame(payload, sport=sport, seq=seq % (1 << 32), ack=ack % (1 << 32),
                       flags=flags)


DATA = bytes(range(200))
SEC = IPv4Fields(ttl=63, ident=77)

SEEDS: dict[str, bytes] = {
    # UDP, ICMP, other IPv4
    "udp-match": config() + raw(P, udp(b"a")) + raw(S, udp(b"a", ip=SEC)) + ALL_OUT,
    "udp-primary-ahead": config() + raw(P, udp(b"1")) + raw(P, udp(b"2")) + raw(S, udp(b"1"))
    + raw(S, udp(b"2")),
    "udp-mismatch-checkpoint": config(evidence=True) + raw(P, udp(b"a")) + raw(S, udp(b"b"))
    + DRAIN_ + CKPT + DRAIN_,
    "icmp-match-and-mismatch": config() + raw(P, g.icmp_echo_frame(b"x", seq=1))
    + raw(S, g.icmp_echo_frame(b"x", seq=1)) + raw(P, g.icmp_echo_frame(b"y", seq=2))
    + raw(S, g.icmp_echo_frame(b"z", seq=2)),
    "gre-whole-frame": config() + raw(P, g.ipv4_frame(b"gre", 47)) + raw(S, g.ipv4_frame(b"gre", 47))
    + raw(P, g.ipv4_frame(b"gre", 47)) + raw(S, g.ipv4_frame(b"gre", 47, ip=SEC)),
    "fragment-alone-times-out": config(timeout=100, scan=50)
    + raw(P, g.ipv4_frame(b"frag", 17, ip=IPv4Fields(flags=0, frag_offset=3)))
    + raw(S, g.ipv4_frame(b"frag", 17, ip=IPv4Fields(flags=0, frag_offset=3)))
    + tick(0) + tick(5000) + tick(5000),
    # IPv6, tags, fragments (issue 14)
    "udp6-match-and-mismatch": config(evidence=True) + raw(P, g.udp6_frame(b"a"))
    + raw(S, g.udp6_frame(b"a", ip=g.IPv6Fields(hop_limit=3, flow_label=7)))
    + raw(P, g.udp6_frame(b"b", ip=g.IPv6Fields(ext=((0, b""), (60, b"x")))))
    + raw(S, g.udp6_frame(b"c")) + CKPT,
    "tcp6-and-icmp6": config() + raw(P, g.tcp6_frame(DATA[:50], seq=1, ack=1))
    + raw(S, g.tcp6_frame(DATA[:20], seq=1, ack=1)) + raw(S, g.tcp6_frame(DATA[20:50], seq=21, ack=1))
    + raw(P, g.icmp6_echo_frame(b"p")) + raw(S, g.icmp6_echo_frame(b"p"))
    + raw(P, g.neighbor_solicit_frame()) + raw(S, g.neighbor_solicit_frame()),
    "vlan-and-qinq": config() + raw(P, g.vlan_frame(udp(b"v"), 5)) + raw(S, g.vlan_frame(udp(b"v"), 6))
    + raw(S, g.vlan_frame(udp(b"v"), 5, pcp=3)) + raw(P, g.qinq_frame(g.udp6_frame(b"q")))
    + raw(S, g.qinq_frame(g.udp6_frame(b"q"))) + raw(P, g.vlan_frame(g.qinq_frame(udp(b"3")))),
    "fragments-reassembled": config(evidence=True)
    + b"".join(raw(P, f) for f in g.fragment(g.udp_frame(DATA, ip=IPv4Fields(flags=0)), 64, order=[2, 0, 1, 3]))
    + b"".join(raw(S, f) for f in g.fragment(g.udp_frame(DATA, ip=IPv4Fields(flags=0)), 96))
    + b"".join(raw(P, f) for f in g.fragment(g.qinq_frame(g.udp6_frame(DATA)), 48))
    + b"".join(raw(S, f) for f in g.fragment(g.qinq_frame(g.udp6_frame(DATA[:-1] + b"!")), 80))
    + DRAIN_ + CKPT,
    "fragments-overlap-and-limits": config(reasm=0x01 | 0x20)
    + b"".join(raw(P, f) for f in g.fragment(g.udp6_frame(DATA), 64)[:2])
    + raw(P, g.fragment(g.udp6_frame(DATA), [56, 64])[1])
    + raw(P, g.fragment(g.udp6_frame(DATA, src="fd00::9"), 64, ident=9)[0])
    + raw(S, g.fragment(g.udp_frame(DATA, ip=IPv4Fields(flags=0)), 64, ident=1)[0])
    + raw(S, g.fragment(g.udp_frame(DATA, ip=IPv4Fields(flags=0)), 64, ident=2)[0])
    + raw(S, g.fragment(g.udp_frame(DATA, ip=IPv4Fields(flags=0)), 64, ident=1)[0]),
    "fragments-flushed-then-passed": config(reasm=0x10, timeout=100, scan=50) + tick(0)
    + raw(P, g.fragment(g.tcp6_frame(DATA, seq=1), 64)[0])
    + raw(S, g.fragment(g.tcp6_frame(DATA, seq=1), 64)[0]) + CKPT
    + raw(P, g.fragment(g.tcp6_frame(DATA, seq=1), 64)[1])
    + raw(S, g.fragment(g.tcp6_frame(DATA, seq=1), 64)[1]) + tick(100) + FAIL
    + raw(P, g.fragment(g.udp_frame(DATA, ip=IPv4Fields(flags=0)), 64)[0]),
    "passthrough-ipv6": config() + rules(bytes([2, 0x10, 0, 0]))
    + raw(P, g.udp6_frame(b"p")) + raw(S, g.udp6_frame(b"p"))
    + b"".join(raw(P, f) for f in g.fragment(g.udp6_frame(DATA), 64)),
    "sctp-ports": config() + raw(P, g.ipv4_frame(b"\x00\x01\x00\x02sctp", 132))
    + raw(S, g.ipv4_frame(b"\x00\x01\x00\x02sctp", 132)),
    # not compared
    "unsupported": config() + raw(P, g.arp_frame()) + raw(S, g.arp_frame())
    + raw(P, g.ipv6_frame(b"6")[:40]) + raw(S, g.vlan_frame(g.arp_frame()))
    + raw(P, udp(b"runt")[:30]) + raw(S, (lambda f: f[:14] + b"\x44" + f[15:])(udp(b"ihl")))
    + raw(P, (lambda f: f[:46] + b"\xf0" + f[47:])(g.tcp_frame(b""))) + raw(P, udp(b"x"), 21),
    "empty-and-largest": config() + raw(P, b"") + raw(S, b"") + largest(P, False)
    + largest(S, True) + largest(P, True),
    # TCP
    "tcp-equal-segmentation": config() + raw(P, seg(b"", 0, 0, g.TCP_SYN))
    + raw(S, seg(b"", 0, 0, g.TCP_SYN)) + raw(P, seg(DATA[:50], 1)) + raw(S, seg(DATA[:50], 1))
    + raw(P, seg(DATA[50:90], 51)) + raw(S, seg(DATA[50:90], 51)),
    "tcp-different-segmentation": config() + raw(P, seg(DATA[:100], 1))
    + raw(S, seg(DATA[:40], 1)) + raw(S, seg(DATA[40:100], 41)) + raw(P, seg(DATA[100:130], 101))
    + raw(P, seg(DATA[130:160], 131)) + raw(S, seg(DATA[100:160], 101)),
    "tcp-retransmits": config() + raw(P, seg(DATA[:50], 1)) + raw(S, seg(DATA[:50], 1))
    + raw(P, seg(DATA[:50], 1)) + raw(S, seg(DATA[:50], 1)) + raw(P, seg(DATA[:80], 1))
    + raw(S, seg(DATA[50:80], 51)),
    "tcp-pure-acks": config() + raw(P, seg(b"", 1, 5, g.TCP_ACK)) + raw(S, seg(b"", 1, 5, g.TCP_ACK))
    + raw(S, seg(b"", 1, 9, g.TCP_ACK)) + raw(P, seg(DATA[:10], 1, 9)) + raw(S, seg(DATA[:10], 1, 9)),
    "tcp-ack-rule": config(evidence=True) + raw(P, seg(DATA[:20], 1, 900)) + raw(P, seg(DATA[20:40], 21, 900))
    + raw(S, seg(DATA[:40], 1, 100)) + DRAIN_ + raw(S, seg(b"", 41, 1000, g.TCP_ACK)),
    "tcp-gap-waits": config() + raw(P, seg(DATA[20:40], 21)) + raw(S, seg(DATA[:20], 1))
    + raw(P, seg(DATA[:20], 1)) + raw(S, seg(DATA[20:40], 21)),
    "tcp-mismatch": config(evidence=True) + raw(P, seg(b"abcd", 1)) + raw(S, seg(b"abce", 1)) + CKPT,
    "tcp-wraparound": config() + raw(P, seg(DATA[:100], (1 << 32) - 50, (1 << 32) - 5))
    + raw(S, seg(DATA[:60], (1 << 32) - 50, (1 << 32) - 5))
    + raw(S, seg(DATA[60:100], 10, 2)) + raw(P, seg(DATA[100:120], 50, 3)) + raw(S, seg(DATA[100:120], 50, 3)),
    "tcp-synth-flows": config(queue=8) + bytes([SYNTH]) + bytes([0, 10, 7, 0, 1, 0, 0, 0x18])
    + bytes([SYNTH | S]) + bytes([0, 10, 7, 0, 1, 0, 0, 0x18])
    + bytes([SYNTH]) + bytes([0x18, 40, 9, 0, 0, 0, 1, 0x18])
    + bytes([SYNTH | S]) + bytes([0x18, 20, 9, 0, 0, 0, 1, 0x18])
    + bytes([SYNTH | S]) + bytes([0x18, 20, 29, 0, 20, 0, 1, 0x18]),
    # time, limits, checkpoint, failover
    "timeout": config(evidence=True, timeout=100, scan=50) + tick(0) + raw(P, udp(b"alone"))
    + raw(S, udp(b"other", sport=1001)) + tick(60) + tick(60) + DRAIN_ + tick(100) + tick(100) + CKPT,
    "queue-full": config(queue=2) + raw(P, udp(b"0")) + raw(P, udp(b"1")) + raw(P, udp(b"2"))
    + raw(S, udp(b"9")) + raw(S, udp(b"8")) + raw(S, udp(b"7")) + CKPT + raw(P, udp(b"3")),
    "table-full-and-eviction": config(conns=2) + raw(P, udp(b"a", 1)) + raw(P, udp(b"b", 2))
    + raw(P, udp(b"c", 3)) + raw(S, udp(b"c", 3)) + CKPT + raw(P, udp(b"d", 4))
    + raw(S, udp(b"d", 4)) + SNAP,
    "checkpoint-flush": config() + raw(P, udp(b"1")) + raw(P, seg(DATA[:10], 1))
    + raw(P, seg(DATA[10:20], 11)) + raw(S, udp(b"x", 7)) + CKPT + raw(P, seg(DATA[:20], 1))
    + raw(S, seg(DATA[:20], 1)),
    "failover": config() + raw(P, udp(b"held")) + raw(S, udp(b"s", 9)) + FAIL
    + raw(P, udp(b"after")) + raw(S, udp(b"after")) + tick(0) + tick(5000),
    "passthrough": config() + raw(P, udp(b"held")) + raw(S, udp(b"nope"))
    + rules(bytes([2, 0, 1, 0])) + raw(P, udp(b"p")) + raw(S, udp(b"s")) + rules()
    + raw(P, udp(b"q")) + raw(S, udp(b"q")) + SNAP,
    # the framed stream, vnet headers
    "stream-records": config() + stream(P, g.encode(udp(b"s1")) + g.encode(udp(b"s2")) + b"\0\0")
    + stream(S, g.encode(udp(b"s1")) + g.encode(udp(b"s2"))),
    "stream-zero-length": config() + stream(P, g.encode(udp(b"s1")) + b"\0\0\0\0junk"),
    "stream-oversize": config() + stream(S, struct.pack(">I", g.NET_BUFSIZE + 1) + b"junk"),
    "vnet-headers": config(vnet=True)
    + stream(P, g.encode(g.vnet_header(12, b"\x01") + udp(b"v"), 12))
    + stream(S, g.encode(g.vnet_header(12, b"\x02") + udp(b"v"), 12))
    + raw(P, g.vnet_header(21) + udp(b"w"), 21) + raw(S, g.vnet_header(10) + udp(b"w"), 10)
    + stream(P, struct.pack(">II", 40, 0xFFFFFFFF) + bytes(40)),
    # transports' notes, the out buffer, bounded event and evidence buffers
    "truncated-note": config() + note(P, DROP_TRUNCATED) + note(S, DROP_TRUNCATED) + note(S, 0)
    + note(P, 10),
    "outdev-cut": config() + raw(P, g.arp_frame()) + raw(P, g.arp_frame()) + consume(10) + ABANDON
    + raw(P, g.arp_frame()) + consume(3) + consume(0x8000),
    "events-lost": config(events=4) + b"".join(raw(P, udp(b"%d" % i, 1000 + i)) for i in range(8))
    + DRAIN_ + raw(P, udp(b"x")),
    "evidence-lost": config(evidence=True) + raw(P, udp(bytes(400))) + raw(S, udp(bytes(399) + b"x"))
    + raw(P, udp(bytes(401), 5)) + raw(S, udp(bytes(400) + b"y", 5)),
}


INIT, CKPT_DONE = b"COLO_USERSPACE_PROXY_INIT", b"COLO_CHECKPOINT"
PARSER_SEEDS: dict[str, dict[str, bytes]] = {
    "framing": {
        "records": b"\x08" + g.encode(b"abc") + g.encode(udp(b"x")) + b"\0\0",
        "vnet-records": b"\x05" + g.encode(b"hdr+frame", 3) + g.encode(b"z", 0),
        "zero-length": b"\x00" + g.encode(b"ok") + b"\0\0\0\0rest",
        "oversize": b"\x02" + g.encode(b"ok") + struct.pack(">I", 65) + bytes(65),
    },
    "notify": {
        "handshake": b"\x10" + g.encode(INIT) + g.encode(CKPT_DONE) + g.encode(b"HELLO"),
        "vnet": b"\x01" + g.encode(INIT, 0) + g.encode(CKPT_DONE, 0),
        "broken": b"\x00" + g.encode(CKPT_DONE) + b"\xff\xff\xff\xff",
    },
    "spec": {
        "unix-server": b"unix:/run/colo/pin.sock,server=on,wait=off",
        "tcp-reconnect": b"tcp:127.0.0.1:9005,reconnect=0.5",
        "tcp-v6": b"tcp:[::1]:9001,server=on",
        "nowait": b"tcp::9004,server,nowait",
        "bad": b"tcp:host:0,reconnect=nan,bogus=1",
    },
}


# control: flags (fuzz_parsers.fuzz_control), then request lines.
LIMIT_24, LIMIT_96, LIMIT_400, LAZY, SMALL_TABLE, REFUSING_SINK = 1, 2, 3, 4, 8, 16
WHOLE, BY_1, BY_7, BY_61 = 7 << 5, 0 << 5, 3 << 5, 5 << 5


def control(flags: int, *lines, end: bytes = b"\n") -> bytes:
    """A flags byte, then each line (a dict as JSON, bytes as they are)."""
    return bytes([flags]) + b"\n".join(
        line if isinstance(line, bytes) else json.dumps(line).encode() for line in lines) + end


def pt(op: str, flow=None, **fields) -> dict:
    return {"cmd": "passthrough", "op": op, **({"flow": flow} if flow is not None else {}),
            **fields}


CONTROL_SEEDS = {
    "commands": control(WHOLE, {"cmd": "checkpoint"}, {"cmd": "failover"}, {"cmd": "failover"},
                        {"cmd": "stats"}, {"cmd": "stats", "connections": 0},
                        {"cmd": "stats", "connections": 65536},
                        {"cmd": "stats", "connections": -1}, {"cmd": "stats", "connections": True},
                        {"cmd": "subscribe"},
                        {"cmd": "subscribe", "events": ["checkpoint_requested", "frame_dropped"]},
                        {"cmd": "subscribe", "events": []},
                        {"cmd": "subscribe", "events": ["bogus"]},
                        {"cmd": "subscribe", "events": "all"}, {"cmd": "help"},
                        {"cmd": "reboot"}, {"cmd": "checkpoint", "force": True}),
    "ids": control(BY_7, {"cmd": "help", "id": "a1"}, {"cmd": "stats", "id": 7},
                   {"cmd": "checkpoint", "id": 1.5}, {"cmd": "nope", "id": -3},
                   {"cmd": "help", "id": None}, {"cmd": "help", "id": True},
                   {"cmd": "help", "id": [1]}, {"cmd": "help", "id": {"n": 1}},
                   {"cmd": 1, "id": 8}, {"id": "no-cmd"}, b'{"cmd":"help","id":1e999}',
                   b'{"cmd":"help","id":NaN}', b'{"cmd":"help","id":-Infinity}',
                   b'{"cmd":"help","id":' + b"9" * 40 + b"}"),
    "passthrough-spec": control(WHOLE, pt("add", "udp 10.0.0.0/24:* > *:53"),
                                pt("add", "tcp * > 10.0.0.2:22"), pt("add", "10.0.0.9 > *"),
                                pt("add", "icmp"), pt("add", "47 10.1.0.0/16 > 10.2.0.0/16"),
                                pt("add", "  UDP   1.2.3.4:1000>5.6.7.8:2000 "),
                                pt("add", "udp 10.0.0.7/24 > *:53"), pt("list"),
                                pt("del", "udp 10.0.0.0/24 > *:53"), pt("del", "udp"),
                                pt("del", "icmp * > *"), pt("list")),
    "passthrough-fields": control(BY_61, pt("add", proto="tcp", dst="10.0.0.2", dport=22),
                                  pt("add", proto=17, src="10.0.0.9/24", dst="*", dport="53"),
                                  pt("add", proto="any", sport=None, dst="0.0.0.0/0"),
                                  pt("add", proto="132", src="192.168.1.1/255.255.255.0",
                                     sport=5000),
                                  pt("del", proto=6, dst="10.0.0.2/32", dport=22),
                                  pt("del", proto="udp", src="10.0.0.0/24", dport=53),
                                  pt("list")),
    "passthrough-bad": control(WHOLE, {"cmd": "passthrough"}, pt("flip", "udp"), pt("add"),
                               pt("add", "udp", dport=5), pt("list", "udp"),
                               pt("list", proto="tcp"), pt("add", "udp 1.2.3.4 >"),
                               pt("add", 7), pt("add", dport=70000),
                               pt("add", proto="icmp", dport=1), pt("add", src="10.0.0.300"),
                               pt("add", "udp * > *:http"), pt("add", "256"), pt("add", "0"),
                               pt("add", "udp :53 > *"), pt("add", "udp a > b > c"),
                               pt("add", proto=True), pt("add", sport=1.5),
                               pt("add", src=["10.0.0.1"])),
    "table-full": control(WHOLE | SMALL_TABLE, pt("add", "tcp"), pt("add", "udp"),
                          pt("add", "icmp"), pt("add", "47"), pt("add", "tcp"), pt("del", "udp"),
                          pt("add", "47"), pt("list")),
    "sink-refuses": control(BY_61 | REFUSING_SINK, pt("add", "tcp"), pt("add", "udp"),
                            pt("add", "icmp"), pt("del", "tcp"), pt("add", "icmp"),
                            pt("add", "udp")),
    "bad-lines": control(BY_7, b"{not json", b"\xff\xfe", b"[1, 2]", b'"stats"', b"{}",
                         b'{"cmd": 5}', b"", b" \t ", b'{"cmd": "help"}\r', b"[" * 50,
                         b'{"cmd": "\\ud800"}', b'{"cmd": "help", "cmd": "stats"}',
                         b'\xef\xbb\xbf{"cmd": "help"}'),
    "oversized": control(BY_1 | LIMIT_24, b'{"cmd": "help", "pad": "' + b"x" * 30 + b'"}',
                         b'{"cmd":"help"}', b'{"cmd":"checkpoint"}' + b" " * 3,
                         b'{"cmd": "stats"', end=b"x" * 40),
    "oversized-pieces": control(BY_7 | LIMIT_96, {"cmd": "stats", "id": "x" * 100},
                                {"cmd": "failover", "id": 2}, b"y" * 200),
    "lazy": control((6 << 5) | LAZY | LIMIT_400, {"cmd": "help"}, pt("add", "udp * > *:53"),
                    b"z" * 500, {"cmd": "stats", "id": 3}, end=b'{"cmd":'),
    "flow-text": control(WHOLE, b"udp 10.0.0.0/24:* > *:53", b"tcp * > 10.0.0.2:22",
                         b"10.0.0.9 > *", b"icmp", b"any", b"icmp * > *:1", b"sctp 1.2.3.4:9 > *",
                         b"udp 1.2.3.4/33 > *", b"udp 1.2.3.4:0 > *"),
    "unfinished": control(BY_1, {"cmd": "help"}, b'{"cmd": "checkpoint"}', end=b""),
}
PARSER_SEEDS["control"] = CONTROL_SEEDS


def cut_seed(frame: bytes, mtu: int = 1500, max_len: int = 2048) -> bytes:
    """fuzz_segment.c's input: mtu and max_len as it decodes them, the frame."""
    return struct.pack("<HH", mtu - 68, max_len - 128) + frame


HOP = g.IPv6Fields(ext=((g.IPV6_HOPOPTS, b"\x01\x02\x00\x00"),))
SEGMENT_SEEDS = {
    "tcp4-tso": cut_seed(seg(bytes(range(256)) * 15, 7, flags=g.TCP_ACK | g.TCP_PSH | 0x81)),
    "tcp4-fits": cut_seed(seg(b"fits", 7)),
    "udp4-uso": cut_seed(udp(bytes(3000)), mtu=576),
    "udp4-no-checksum": cut_seed(udp(bytes(3000))[:40] + b"\0\0" + udp(bytes(3000))[42:]),
    "tcp6-hop-tagged": cut_seed(g.vlan_frame(g.tcp6_frame(bytes(3500), seq=9, ip=HOP)),
                                mtu=9000),
    "udp6": cut_seed(g.udp6_frame(bytes(2500)), max_len=1024),
    "truncated": cut_seed(seg(bytes(3000), 1)[:2500]),
    "fragment": cut_seed(udp(bytes(3000), ip=IPv4Fields(flags=1))),
}


def main() -> None:
    CORPUS.mkdir(parents=True, exist_ok=True)
    for old in CORPUS.glob("seed-*"):
        old.unlink()
    for name, data in SEEDS.items():
        (CORPUS / f"seed-{name}").write_bytes(data)
    for target, seeds in {**PARSER_SEEDS, "segment": SEGMENT_SEEDS}.items():
        where = CORPUS.parent / target
        where.mkdir(parents=True, exist_ok=True)
        for old in where.glob("seed-*"):
            old.unlink()
        for name, data in seeds.items():
            (where / f"seed-{name}").write_bytes(data)
    print(f"wrote {len(SEEDS)} engine seeds, {len(SEGMENT_SEEDS)} segment seeds and "
          f"{sum(map(len, PARSER_SEEDS.values()))} parser seeds under {CORPUS.parent}")


if __name__ == "__main__":
    main()
