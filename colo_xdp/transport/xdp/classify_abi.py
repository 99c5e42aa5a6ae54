"""What ``bpf/classify.h`` defines, for Python: verdicts, configuration,
passthrough rules, guest MACs and the metadata in front of every frame the
XDP program sends to an AF_XDP socket.

The header is the source of truth; ``tests/xdp/test_header.py`` parses it and
checks every value and layout here against it.  Standard library and the
engine's ``Side`` only (classify.h numbers the sides as the engine does), so
that transports and tests can use it without bcc::

    meta = Meta.unpack(buf[addr - META_SIZE:addr])   # AF_XDP buffer
    if meta is not None:
        print(meta.proto, meta.saddr, meta.sport, meta.l4_off)
"""
from __future__ import annotations

import enum
import ipaddress
import struct
from dataclasses import dataclass
from pathlib import Path

from colo_xdp.engine import MAX_PASSTHROUGH_RULES, Side
from colo_xdp.errors import ConfigError
from colo_xdp.proto.inet import net_bytes
from colo_xdp.transport.xdp.bpfsys import XDP_DROP, XDP_PASS, XDP_REDIRECT

# bpf/ is package data: an installed colo-xdp (a wheel) carries it as
# colo_xdp/bpf/ (setup.py copies it there at build time); a source tree or
# an editable install uses the tree's own bpf/.
PACKAGE_BPF_DIR = Path(__file__).resolve().parents[2] / "bpf"
SOURCE_BPF_DIR = Path(__file__).resolve().parents[3] / "bpf"


def find_bpf_dir() -> Path:
    """Where classify.c and classify.h are: the package's copy, else the tree's."""
    for candidate in (PACKAGE_BPF_DIR, SOURCE_BPF_DIR):
        if (candidate / "classify.c").is_file() and (candidate / "classify.h").is_file():
            return candidate
    return PACKAGE_BPF_DIR


BPF_DIR = find_bpf_dir()
CLASSIFY_C = BPF_DIR / "classify.c"
CLASSIFY_H = BPF_DIR / "classify.h"

# Sizes (classify.h "sizes"; the rule limit is cx_wire.h's, the engine's).
MAX_QUEUES = 64
MAX_RULES = MAX_PASSTHROUGH_RULES
MAX_GUEST_MACS = 16
MAX_VLAN_TAGS = 2


class Verdict(enum.IntEnum):
    """What the program decided for a frame; also its counter index."""

    COMPARE = 0            # redirected to the AF_XDP socket of its rx queue
    COMPARE_NO_META = 1    # redirected without metadata (no room in the driver)
    NO_SOCKET = 2          # to be compared, no socket on its queue: dropped
    PASSTHROUGH = 3        # on the passthrough list: primary redirected with
                           # META_F_PASSTHROUGH (released uncompared), secondary drop
    UNSUPPORTED = 4        # ARP, ND/MLD, other EtherTypes, tagged without VLAN
                           # compare: primary pass, secondary drop
    MALFORMED = 5          # IPv4/IPv6 the engine would not parse: as UNSUPPORTED
    NOT_GUEST = 6          # source MAC not a guest's: pass on both sides


VERDICT_COUNT = 7

# What the program does with a frame of each verdict, per side (classify.h).
_NOT_COMPARED = {Side.PRIMARY: XDP_PASS, Side.SECONDARY: XDP_DROP}


def action_of(verdict: Verdict, side: Side) -> int:
    """The XDP action the program takes for ``verdict`` on ``side``."""
    if verdict in (Verdict.COMPARE, Verdict.COMPARE_NO_META):
        return XDP_REDIRECT
    if verdict is Verdict.PASSTHROUGH and Side(side) is Side.PRIMARY:
        return XDP_REDIRECT
    if verdict is Verdict.NO_SOCKET:
        return XDP_DROP
    if verdict is Verdict.NOT_GUEST:
        return XDP_PASS
    return _NOT_COMPARED[Side(side)]


# struct cx_xdp_config flags.
CFG_GUEST_MACS = 0x1
CFG_VLAN_UNCOMPARED = 0x2

# Metadata.
META_MAGIC = 0xC01A0D01
META_F_VLAN = 0x1
META_F_FRAGMENT = 0x2
META_F_IPV6 = 0x4
META_F_PASSTHROUGH = 0x8

# Layouts, little-endian host (x86_64, arm64): "<" plus explicit padding.
COUNTER = struct.Struct("<QQ")            # struct cx_xdp_counter
CONFIG = struct.Struct("<I")              # struct cx_xdp_config
RULE = struct.Struct("<16s16s16s16sHHB3x")  # struct cx_rule (bpf/cx_wire.h)
RULES_HEAD = struct.Struct("<I4x")        # struct cx_xdp_rules: count, pad, then the rules
RULES_SIZE = RULES_HEAD.size + MAX_RULES * RULE.size
MAC = struct.Struct("<6s")                # struct cx_xdp_mac
# struct cx_xdp_meta: hash, saddr, daddr, sport, dport (network order, kept
# as bytes), proto, flags, l3_off, l4_off, vlan_tci, magic.  IPv6 addresses
# are folded to 4 bytes (the XOR of their words; META_F_IPV6): the metadata
# area holds at most 32 bytes.
META = struct.Struct("<I4s4s2s2sBBHHHI")
META_SIZE = META.size


class ClassifyError(ConfigError):
    """A rule or MAC that cannot be written to the program's maps."""


def mix32(h: int) -> int:
    """cx_xdp_mix32: MurmurHash3's 32-bit finaliser."""
    h &= 0xFFFFFFFF
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & 0xFFFFFFFF
    h ^= h >> 16
    return h


def flow_hash(saddr: bytes, daddr: bytes, sport: bytes, dport: bytes, proto: int) -> int:
    """cx_xdp_flow_hash of a 5-tuple given as the frame's bytes."""
    le = lambda b: int.from_bytes(b, "little")  # noqa: E731 - __u32/__u16 loads
    h = mix32(proto)
    h = mix32(h ^ ((le(sport) << 16) | le(dport)))
    h = mix32(h ^ le(daddr))
    return mix32(h ^ le(saddr))


@dataclass(frozen=True)
class Meta:
    """struct cx_xdp_meta, decoded: addresses dotted (IPv6: their 4-byte
    fold, flags & META_F_IPV6), ports as numbers."""

    hash: int
    saddr: str
    daddr: str
    sport: int
    dport: int
    proto: int
    flags: int
    l3_off: int
    l4_off: int
    vlan_tci: int

    @classmethod
    def unpack(cls, raw: bytes | memoryview) -> "Meta | None":
        """The metadata in ``raw`` (META_SIZE bytes), or None without the magic."""
        (h, sa, da, sp, dp, proto, flags, l3, l4, tci, magic) = META.unpack(raw)
        if magic != META_MAGIC:
            return None
        return cls(h, str(ipaddress.IPv4Address(sa)), str(ipaddress.IPv4Address(da)),
                   int.from_bytes(sp, "big"), int.from_bytes(dp, "big"),
                   proto, flags, l3, l4, tci)

    def expected_hash(self) -> int:
        """The hash the program must have put in for this 5-tuple."""
        return flow_hash(ipaddress.IPv4Address(self.saddr).packed,
                         ipaddress.IPv4Address(self.daddr).packed,
                         self.sport.to_bytes(2, "big"), self.dport.to_bytes(2, "big"),
                         self.proto)


def fold6(addr: bytes) -> bytes:
    """An IPv6 address as the metadata carries it: the XOR of its 4 words."""
    words = struct.unpack("<4I", addr)
    return struct.pack("<I", words[0] ^ words[1] ^ words[2] ^ words[3])


def _number(value: int | None, name: str, limit: int) -> int:
    if value is None:
        return 0
    if not isinstance(value, int) or not 0 <= value <= limit:
        raise ClassifyError(f"{name} {value!r} is outside 0..{limit}")
    return value


def pack_rule(rule) -> bytes:
    """struct cx_rule (bpf/cx_wire.h) for a passthrough rule.

    ``rule`` has ``proto``, ``src``, ``dst`` (address or address/prefix),
    ``sport`` and ``dport``, None for anything (the engine's PassthroughRule).
    Everything goes in network byte order, as the program compares it with
    the frame's bytes.
    """
    try:
        saddr, smask = net_bytes(rule.src, "source")
        daddr, dmask = net_bytes(rule.dst, "destination")
    except ValueError as exc:
        raise ClassifyError(str(exc)) from None
    swap16 = lambda v: int.from_bytes(v.to_bytes(2, "big"), "little")  # noqa: E731
    return RULE.pack(saddr, smask, daddr, dmask,
                     swap16(_number(rule.sport, "source port", 0xFFFF)),
                     swap16(_number(rule.dport, "destination port", 0xFFFF)),
                     _number(rule.proto, "protocol", 0xFF))


def pack_rule_list(packed: list[bytes]) -> bytes:
    """struct cx_xdp_rules holding the rules ``pack_rule`` made, in order
    (at most MAX_RULES)."""
    return (RULES_HEAD.pack(len(packed)) + b"".join(packed)).ljust(RULES_SIZE, b"\0")


def pack_mac(mac: str | bytes) -> bytes:
    """struct cx_xdp_mac of 'aa:bb:cc:dd:ee:ff' (or 6 bytes)."""
    try:
        raw = mac if isinstance(mac, bytes) else bytes.fromhex(mac.replace(":", ""))
    except ValueError:
        raw = b""
    if len(raw) != 6:
        raise ClassifyError(f"{mac!r} is not a MAC address")
    return MAC.pack(raw)
