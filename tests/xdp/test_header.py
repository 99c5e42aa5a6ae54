"""bpf/classify.h and its Python mirror (colo_xdp.transport.xdp.classify_abi) agree;
so do the kernel ABI numbers bpfsys uses and <linux/bpf.h>.

The header is parsed here, not compiled: #defines, enum members and struct
layouts (natural alignment, as clang lays them out for BPF and x86_64).  The
layouts are also checked against the types bcc built from the compiled
program, for the structs that are map keys or values.
"""
from __future__ import annotations

import ctypes
import re
import struct
from pathlib import Path

import pytest

from colo_xdp.transport.xdp import bpfsys
from colo_xdp.transport.xdp import classify_abi as classify
from colo_xdp.transport.xdp.classify_abi import CLASSIFY_H, Side, Verdict

C_TYPES = {"__u8": 1, "__u16": 2, "__u32": 4, "__u64": 8,
           "__be16": 2, "__be32": 4}


def _strip_comments(text: str) -> str:
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    return re.sub(r"//[^\n]*", "", text)


def _int(text: str) -> int:
    return int(text.rstrip("uUlL"), 0)


def header_defines(path: Path) -> dict[str, int]:
    """Every '#define NAME <integer>' of a header."""
    out = {}
    for name, value in re.findall(r"^#define\s+(\w+)\s+(0x[0-9a-fA-F]+|\d+)[uUlL]*\s*$",
                                  _strip_comments(path.read_text()), flags=re.M):
        out[name] = _int(value)
    return out


def header_enum(path: Path, name: str) -> dict[str, int]:
    """The members of ``enum name`` with their values (implicit ones counted)."""
    text = _strip_comments(path.read_text())
    body = re.search(r"enum\s+" + name + r"\s*\{(.*?)\}", text, flags=re.S)
    assert body, f"enum {name} not in {path}"
    out, nxt = {}, 0
    for item in filter(None, (i.strip() for i in body.group(1).split(","))):
        member, _, value = (p.strip() for p in item.partition("="))
        if value:
            nxt = out[value] if value in out else _int(value)
        out[member] = nxt
        nxt += 1
    return out


def header_struct(path: Path, name: str) -> list[tuple[str, int, int]]:
    """(field, offset, size) of ``struct name``, with natural alignment."""
    text = _strip_comments(path.read_text())
    body = re.search(r"struct\s+" + name + r"\s*\{(.*?)\};", text, flags=re.S)
    assert body, f"struct {name} not in {path}"
    fields, offset, align_max = [], 0, 1
    for ctype, field, count in re.findall(r"(\w+)\s+(\w+)(?:\[(\d+)\])?\s*;", body.group(1)):
        size = C_TYPES[ctype]
        offset = (offset + size - 1) // size * size
        fields.append((field, offset, size * int(count or 1)))
        offset += size * int(count or 1)
        align_max = max(align_max, size)
    total = (offset + align_max - 1) // align_max * align_max
    return fields + [("sizeof", total, 0)]


def python_layout(fmt: struct.Struct, names: list[str]) -> list[tuple[str, int, int]]:
    """(field, offset, size) of a struct format, padding ('x') skipped."""
    out, offset, names = [], 0, list(names)
    for count, code in re.findall(r"(\d*)([a-zA-Z])", fmt.format.lstrip("<>=!@")):
        n = int(count or 1)
        size = struct.calcsize("<" + code)
        if code == "x":
            offset += n
            continue
        if code == "s":
            out.append((names.pop(0), offset, n))
            offset += n
            continue
        for _ in range(n):
            out.append((names.pop(0), offset, size))
            offset += size
    assert not names
    return out + [("sizeof", fmt.size, 0)]


def without_padding(fields):
    return [f for f in fields if not f[0].startswith("pad")]


DEFINES = header_defines(CLASSIFY_H)
# What the classifier shares with the engine (protocol numbers, the rule).
WIRE_H = CLASSIFY_H.parent / "cx_wire.h"


def _header_of(name: str) -> Path:
    return WIRE_H if name == "cx_rule" else CLASSIFY_H


@pytest.mark.parametrize("c_name,py_value", [
    ("CX_XDP_MAX_QUEUES", classify.MAX_QUEUES),
    ("CX_XDP_MAX_GUEST_MACS", classify.MAX_GUEST_MACS),
    ("CX_XDP_MAX_VLAN_TAGS", classify.MAX_VLAN_TAGS),
    ("CX_XDP_SIDE_PRIMARY", Side.PRIMARY),
    ("CX_XDP_SIDE_SECONDARY", Side.SECONDARY),
    ("CX_XDP_CFG_GUEST_MACS", classify.CFG_GUEST_MACS),
    ("CX_XDP_CFG_VLAN_UNCOMPARED", classify.CFG_VLAN_UNCOMPARED),
])
def test_defines(c_name, py_value):
    assert DEFINES[c_name] == py_value


def test_every_define_is_mirrored():
    mirrored = {"CX_XDP_MAX_QUEUES", "CX_XDP_MAX_GUEST_MACS",
                "CX_XDP_MAX_VLAN_TAGS", "CX_XDP_SIDE_PRIMARY", "CX_XDP_SIDE_SECONDARY",
                "CX_XDP_CFG_GUEST_MACS", "CX_XDP_CFG_VLAN_UNCOMPARED"}
    assert set(DEFINES) == mirrored, "a new #define in classify.h needs its Python twin"


def test_verdicts():
    members = header_enum(CLASSIFY_H, "cx_xdp_verdict")
    count = members.pop("CX_XDP_VERDICT__COUNT")
    assert {f"CX_XDP_{v.name}": int(v) for v in Verdict} == members
    assert count == classify.VERDICT_COUNT == len(Verdict)


def test_sides_match_the_engine():
    """Side numbers are the engine's CX_PRIMARY / CX_SECONDARY."""
    engine_h = header_defines(CLASSIFY_H.parents[1] / "csrc" / "cx_engine.h")
    assert (engine_h["CX_PRIMARY"], engine_h["CX_SECONDARY"]) == (Side.PRIMARY, Side.SECONDARY)


LAYOUTS = {
    "cx_xdp_counter": (classify.COUNTER, ["frames", "bytes"]),
    "cx_xdp_config": (classify.CONFIG, ["flags"]),
    "cx_rule": (classify.RULE, ["saddr", "smask", "daddr", "dmask", "sport", "dport",
                                "proto"]),
    "cx_xdp_mac": (classify.MAC, ["addr"]),
}


@pytest.mark.parametrize("name", LAYOUTS)
def test_struct_layouts(name):
    fmt, names = LAYOUTS[name]
    assert without_padding(header_struct(_header_of(name), name)) == python_layout(fmt, names)


@pytest.mark.parametrize("table,part,name", [
    (b"counters", "Leaf", "cx_xdp_counter"),
    (b"config", "Leaf", "cx_xdp_config"),
    (b"guest_macs", "Key", "cx_xdp_mac"),
])
def test_compiled_map_types(programs, table, part, name):
    """The types bcc took from the compiled program have the header's layout."""
    ctype = getattr(programs[Side.PRIMARY]._table(table), part)
    if table == b"counters":        # per-CPU leaf: an array of the struct
        ctype = ctype._type_
    got = [(f, getattr(ctype, f).offset, getattr(ctype, f).size) for f, *_ in ctype._fields_]
    assert got + [("sizeof", ctypes.sizeof(ctype), 0)] == header_struct(_header_of(name), name)


def test_one_rule_limit_for_the_engine_and_the_classifier():
    """CX_MAX_RULES (cx_wire.h) is the engine's limit and the list map's size."""
    from colo_xdp.engine import MAX_PASSTHROUGH_RULES
    from colo_xdp.proto.flows import PassthroughTable
    assert header_defines(WIRE_H)["CX_MAX_RULES"] == MAX_PASSTHROUGH_RULES == classify.MAX_RULES
    assert PassthroughTable().max_rules == MAX_PASSTHROUGH_RULES
    assert "CX_MAX_RULES" not in DEFINES


@pytest.mark.parametrize("table", [b"rules_a", b"rules_b"])
def test_compiled_rule_lists(programs, table):
    """struct cx_xdp_rules as compiled: the count, then CX_MAX_RULES rules."""
    leaf = programs[Side.PRIMARY]._table(table).Leaf
    assert [f for f, *_ in leaf._fields_ if not f.startswith("pad")] == ["count", "rule"]
    assert (leaf.count.offset, leaf.rule.offset) == (0, classify.RULES_HEAD.size)
    assert ctypes.sizeof(leaf) == classify.RULES_SIZE
    assert leaf.rule.size == classify.MAX_RULES * classify.RULE.size
    assert programs[Side.PRIMARY]._table(table).max_entries == 1


def test_compiled_map_sizes(programs):
    clf = programs[Side.PRIMARY]
    assert clf._table(b"xsks").max_entries == classify.MAX_QUEUES
    assert clf._table(b"counters").max_entries == classify.VERDICT_COUNT
    assert clf._table(b"rule_list").max_entries == 1
    assert clf._table(b"guest_macs").max_entries == classify.MAX_GUEST_MACS
    assert clf._table(b"config").max_entries == 1


# --- kernel ABI numbers -----------------------------------------------------------

UAPI_BPF = Path("/usr/include/linux/bpf.h")
UAPI_IF_LINK = Path("/usr/include/linux/if_link.h")


@pytest.fixture(scope="module")
def uapi():
    if not UAPI_BPF.exists():
        pytest.fail(f"{UAPI_BPF} is missing: install linux-libc-dev", pytrace=False)


def test_bpf_numbers_match_uapi(uapi):
    cmds = header_enum(UAPI_BPF, "bpf_cmd")
    assert cmds["BPF_PROG_TEST_RUN"] == bpfsys.BPF_PROG_TEST_RUN
    assert cmds["BPF_LINK_CREATE"] == bpfsys.BPF_LINK_CREATE
    assert header_enum(UAPI_BPF, "bpf_attach_type")["BPF_XDP"] == bpfsys.BPF_XDP
    actions = header_enum(UAPI_BPF, "xdp_action")
    assert {k: v for k, v in actions.items()} == {
        f"XDP_{name.upper()}": value for value, name in bpfsys.XDP_ACTION_NAMES.items()}
    link = UAPI_IF_LINK.read_text()
    assert re.search(r"XDP_FLAGS_SKB_MODE\s+\(1U << 1\)", link)
    assert re.search(r"XDP_FLAGS_DRV_MODE\s+\(1U << 2\)", link)
    assert (bpfsys.XDP_FLAGS_SKB_MODE, bpfsys.XDP_FLAGS_DRV_MODE) == (2, 4)
