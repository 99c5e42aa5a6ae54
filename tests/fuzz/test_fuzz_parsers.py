"""The parsers of what peers and users send, fuzzed (tests/fuzz/fuzz_parsers.py).

For each of framing (transport.framing.Decoder), notify (notify.NotifyProtocol),
spec (transport.chardev.parse_spec) and control (the control socket's
protocol, colo_xdp.proto.control): its corpus and crash reproducers replay as plain
calls, and a short atheris run (FUZZ_TEST_SECONDS, default 4) finds nothing.
"""
from __future__ import annotations


import pytest

import fuzz_parsers
import fuzzlib
from colo_xdp.proto.framing import Decoder, FramingError, encode


def _corpus() -> list:
    return [pytest.param(t, p, id=f"{t}/{p.name}")
            for t in fuzzlib.PYTHON_TARGETS for p in sorted((fuzzlib.CORPUS / t).glob("*"))]


def _reproducers() -> list:
    return [pytest.param(t, p, id=f"{t}/{p.name}")
            for t in fuzzlib.PYTHON_TARGETS for p in fuzzlib.reproducers(t)]


@pytest.mark.parametrize("target, path", _corpus())
def test_corpus_input(target, path):
    fuzz_parsers.TARGETS[target](path.read_bytes())


@pytest.mark.parametrize("target, path", _reproducers() or [
    pytest.param(None, None, id="none-yet")])
def test_crash_reproducer(target, path):
    if target:
        fuzz_parsers.TARGETS[target](path.read_bytes())


@pytest.mark.parametrize("target", fuzzlib.PYTHON_TARGETS)
def test_short_fuzz_run_finds_nothing(atheris_ready, target, tmp_path):
    result, kept = fuzzlib.short_run(target, tmp_path)
    assert result.ok, f"{target}: the fuzzer found a problem; kept {kept}:\n{result.tail()}"
    assert result.stat("number_of_executed_units") > 1000


def test_decoder_feed_keeps_records_before_a_broken_one():
    """Found by the framing fuzzer: when one piece holds a good record and
    then a zero-length one, the good record comes with the exception."""
    dec = Decoder(vnet=False)
    with pytest.raises(FramingError) as info:
        dec.feed(encode(b"good") + b"\0\0\0\0")
    assert [r.frame for r in info.value.records] == [b"good"]
