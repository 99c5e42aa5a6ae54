#!/usr/bin/env python3
"""atheris harnesses for the parsers that read what peers and users send.

    .venv/bin/python tests/fuzz/fuzz_parsers.py TARGET [libFuzzer options] [corpus dirs]

(libFuzzer's -merge runs this file again as a program, with its own options
only: the target then comes from CX_FUZZ_TARGET, set here, and the first
python3 on PATH must be the venv's: fuzzlib.env() puts it there.)

TARGET is one of:

* ``framing``: colo_xdp.transport.framing.Decoder, fed a byte stream in
  pieces through ``push``/``records`` (as NotifyProtocol reads).  It must
  yield exactly the records an independent walk of the stream finds, in
  order, raise FramingError exactly at the first zero-length or oversize
  record, and keep the rest as ``pending``.  (``feed`` loses the records it
  completed in the same call before a broken one:
  test_fuzz_parsers.py::test_decoder_feed_keeps_records_before_a_broken_one.)
* ``notify``: colo_xdp.notify.NotifyProtocol, fed in pieces.  Every whole
  record becomes one event of the right kind, each COLO_USERSPACE_PROXY_INIT
  one reply, a broken record an error sentence; nothing raises.
* ``spec``: colo_xdp.transport.chardev.parse_spec on any text.  It returns
  a Spec that says what the text says, or raises SpecError; nothing else.

Each target is a plain function of bytes, so tests/fuzz/test_fuzz_parsers.py
replays the corpus and every crash reproducer without atheris.
"""
from __future__ import annotations

import math
import os
import struct
import sys

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
    from colo_xdp.transport.framing import Decoder, FramingError, encode

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
    from colo_xdp.notify import (CHECKPOINT_DONE, PROXY_INIT, PROXY_INIT_REPLY, NotifyEvent,
                                 NotifyProtocol)
    from colo_xdp.transport.framing import encode

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
    from colo_xdp.transport.chardev import Spec, SpecError, check_distinct, parse_spec

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


TARGETS = {"framing": fuzz_framing, "notify": fuzz_notify, "spec": fuzz_spec}
MODULES = ["colo_xdp.transport.framing", "colo_xdp.notify", "colo_xdp.transport.chardev"]


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
