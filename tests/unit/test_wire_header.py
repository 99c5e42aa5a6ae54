"""bpf/cx_wire.h is the one place the engine and the classifier learn wire
numbers from: the engine's cffi build exposes them, the Python mirrors agree,
and nothing in the C sources defines them a second time."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from colo_xdp._native import ffi, lib
from colo_xdp.transport.xdp import classify_abi as classify

ROOT = Path(__file__).resolve().parents[2]
WIRE_H = ROOT / "bpf" / "cx_wire.h"


def _defines(path: Path) -> dict[str, int]:
    text = re.sub(r"/\*.*?\*/", "", path.read_text(), flags=re.S)
    return {name: int(value, 0) for name, value in
            re.findall(r"^#define\s+(CX_\w+)\s+(0x[0-9a-fA-F]+|\d+)\s*$", text, flags=re.M)}


def test_engine_build_sees_the_wire_numbers():
    defines = _defines(WIRE_H)
    assert defines, "no #define found in cx_wire.h"
    for name, value in defines.items():
        assert getattr(lib, name) == value, name


def test_rule_layout_is_the_classifiers():
    assert ffi.sizeof("struct cx_rule") == classify.RULE.size
    assert ffi.offsetof("struct cx_rule", "sport") == 64
    assert ffi.offsetof("struct cx_rule", "proto") == 68


@pytest.mark.parametrize("pattern", [
    r"static\s+inline\s+\w+\s+rd(16|32)\s*\(",          # a second byte reader
    r"#define\s+(IPPROTO_\w+|ETH_P_\w+|ETH_HLEN)\b",     # protocol numbers again
    r"\bstruct\s+cx_xdp_rule\b",                         # the old BPF-only rule
    r"\brule_match\s*\(",                                # a matcher of its own
])
def test_nothing_defined_twice(pattern):
    sources = [*(ROOT / "csrc").glob("*.[ch]"), *(ROOT / "bpf").glob("*.[ch]")]
    offenders = [p.name for p in sources
                 if p.name != "cx_wire.h" and re.search(pattern, p.read_text())]
    assert not offenders, f"{pattern} in {offenders}: use bpf/cx_wire.h"
