"""The one door to the C helper (``colo_xdp._native``, built from csrc/).

Nothing else in colo_xdp imports the cffi module: the engine, the AF_XDP
sockets, and the glue from chardev and AF_XDP sockets to the engine come
through here as thin typed wrappers, one per C call, that keep their own
scratch buffers.  C functions return 0 (or a count) or ``-errno``; ``_check``
is the one place that turns a negative return into ``NativeError``, an
``OSError`` carrying the errno, and callers turn that into their own
sentence.  The chardev glue is the exception: a turn's -errno values (a
socket with nothing to read, a peer gone) are its usual results, returned
as they are to the role that acts on them::

    core = EngineCore({"compare_timeout_ms": 3000, ...})  # struct cx_config
    consumed = core.feed_stream(Side.PRIMARY, chunk, now_ms)
    xsk = XskCore.open({"ifindex": 3, "queue": 0, ...})   # struct xsk__config
    n = rx_to_engine(xsk, core, Side.PRIMARY, now_ms, XDP_GLUE_BURST)

Calls cross once per burst or chunk, never once per frame (``feed`` is for
tests and tools).

Lives at the package's top rather than in engine/ because it serves the XDP
transport (sockets, glue) as much as the engine.
"""
from __future__ import annotations

import errno
import os

from colo_xdp._native import ffi, lib
from colo_xdp.errors import ColoXdpError

# -- constants (csrc/*.h, the cdef regions) ----------------------------------

CX_NET_BUFSIZE = lib.CX_NET_BUFSIZE
CX_FRAMING_LOST_LEN = lib.CX_FRAMING_LOST_LEN
CX_MAX_RULES = lib.CX_MAX_RULES
CX_PRIMARY = lib.CX_PRIMARY
CX_SECONDARY = lib.CX_SECONDARY

CX_EV_CHECKPOINT = lib.CX_EV_CHECKPOINT
CX_EV_DROP = lib.CX_EV_DROP
CX_EV_CONN_NEW = lib.CX_EV_CONN_NEW
CX_EV_CONN_EVICT = lib.CX_EV_CONN_EVICT

CX_CKPT_MISMATCH = lib.CX_CKPT_MISMATCH
CX_CKPT_TIMEOUT = lib.CX_CKPT_TIMEOUT
CX_CKPT_QUEUE_FULL = lib.CX_CKPT_QUEUE_FULL
CX_CKPT_TABLE_FULL = lib.CX_CKPT_TABLE_FULL

CX_DROP_UNSUPPORTED = lib.CX_DROP_UNSUPPORTED
CX_DROP_QUEUE_FULL = lib.CX_DROP_QUEUE_FULL
CX_DROP_TABLE_FULL = lib.CX_DROP_TABLE_FULL
CX_DROP_FLUSHED = lib.CX_DROP_FLUSHED
CX_DROP_FAILOVER = lib.CX_DROP_FAILOVER
CX_DROP_EMPTY = lib.CX_DROP_EMPTY
CX_DROP_OVERSIZE = lib.CX_DROP_OVERSIZE
CX_DROP_TRUNCATED = lib.CX_DROP_TRUNCATED
CX_DROP_NO_MEMORY = lib.CX_DROP_NO_MEMORY
CX_DROP_PASSTHROUGH = lib.CX_DROP_PASSTHROUGH
CX_DROP_FRAG_TIMEOUT = lib.CX_DROP_FRAG_TIMEOUT
CX_DROP_FRAG_OVERLAP = lib.CX_DROP_FRAG_OVERLAP
CX_DROP_FRAG_LIMIT = lib.CX_DROP_FRAG_LIMIT

CX_FRAG_REASSEMBLED = lib.CX_FRAG_REASSEMBLED
CX_FRAG_TIMED_OUT = lib.CX_FRAG_TIMED_OUT
CX_FRAG_OVERLAP = lib.CX_FRAG_OVERLAP
CX_FRAG_OVER_LIMIT = lib.CX_FRAG_OVER_LIMIT

CX_REL_MATCHED = lib.CX_REL_MATCHED
CX_REL_UNSUPPORTED = lib.CX_REL_UNSUPPORTED
CX_REL_NO_PAYLOAD = lib.CX_REL_NO_PAYLOAD
CX_REL_RETRANSMIT = lib.CX_REL_RETRANSMIT
CX_REL_FLUSHED = lib.CX_REL_FLUSHED
CX_REL_FAILOVER = lib.CX_REL_FAILOVER
CX_REL_PASSTHROUGH = lib.CX_REL_PASSTHROUGH

# Hold-time histogram of released primary frames (counters.hold_hist).
CX_HOLD_BUCKETS = lib.CX_HOLD_BUCKETS

XSK_DEFAULT_FRAME_SIZE = lib.XSK__DEFAULT_FRAME_SIZE
XSK_DEFAULT_FRAME_COUNT = lib.XSK__DEFAULT_FRAME_COUNT
XSK_DEFAULT_RING_SIZE = lib.XSK__DEFAULT_RING_SIZE
XSK_DEFAULT_BIND_TIMEOUT_MS = lib.XSK__DEFAULT_BIND_TIMEOUT_MS

XDP_GLUE_BURST = lib.XDP_GLUE__BURST

CX_FEED_FORCE = lib.CX_FEED_FORCE
CX_FEED_BLOCKED = lib.CX_FEED_BLOCKED


class NativeError(ColoXdpError, OSError):
    """A C helper call returned -errno; ``errno`` says which, ``call`` where."""

    def __init__(self, err: int, call: str):
        super().__init__(err, f"{call}: {os.strerror(err)}")
        self.call = call


def _check(rc: int, call: str) -> int:
    """The one check of a C return value: -errno raises, anything else is returned."""
    if rc < 0:
        raise NativeError(-rc, call)
    return rc


# -- the engine (csrc/cx_engine.h) -------------------------------------------

class EngineCore:
    """One ``struct cx_engine``, freed with this object."""

    def __init__(self, config: dict[str, int]):
        ptr = lib.cx_engine__new(ffi.new("struct cx_config *", config))
        if ptr == ffi.NULL:
            raise NativeError(errno.ENOMEM, "cx_engine__new")
        self._e = ffi.gc(ptr, lib.cx_engine__free)
        self._consumed = ffi.new("size_t *")
        self._data = ffi.new("const uint8_t **")
        self._events = ffi.new("const struct cx_event **")
        self._rows = None                # the last conn_snapshot's array

    def feed(self, side: int, frame: bytes, vnet_len: int, now_ms: int) -> None:
        lib.cx_engine__feed(self._e, side, frame, len(frame), vnet_len, now_ms)

    def feed_burst(self, side: int, frames: list[bytes], now_ms: int, force: bool = True) -> int:
        """cx_engine__feed_burst, the AF_XDP path's call (tests compare the
        two); how many frames it took (fewer when flow control held it
        back)."""
        keep = [ffi.from_buffer(f) for f in frames]
        ptrs = ffi.new("const uint8_t *[]", keep)
        lens = ffi.new("uint32_t[]", [len(f) for f in frames])
        return lib.cx_engine__feed_burst(self._e, side, ptrs, lens, len(frames), now_ms,
                                         CX_FEED_FORCE if force else 0)

    @property
    def consumed(self) -> int:
        """What the last feed_stream consumed (also when it failed)."""
        return self._consumed[0]

    def feed_stream(self, side: int, chunk, now_ms: int, force: bool) -> tuple[int, bool]:
        """(bytes consumed, held back by flow control); NativeError (EPROTO)
        when a record length is past any frame (``consumed`` stops there)."""
        rc = lib.cx_engine__feed_stream(self._e, side, ffi.from_buffer(chunk), len(chunk),
                                        now_ms, CX_FEED_FORCE if force else 0, self._consumed)
        _check(rc, "cx_engine__feed_stream")
        return self._consumed[0], rc == CX_FEED_BLOCKED

    def stream_reset(self, side: int) -> None:
        lib.cx_engine__stream_reset(self._e, side)

    def checkpoint_wanted(self) -> int:
        """The mask (1 << CX_CKPT_*) of checkpoint requests outstanding."""
        return lib.cx_engine__checkpoint_wanted(self._e)

    def tick(self, now_ms: int) -> int:
        return lib.cx_engine__tick(self._e, now_ms)

    def set_time(self, now_ms: int) -> None:
        lib.cx_engine__set_time(self._e, now_ms)

    def checkpoint(self) -> None:
        lib.cx_engine__checkpoint(self._e)

    def failover(self) -> None:
        lib.cx_engine__failover(self._e)

    def set_passthrough(self, rules: list[dict[str, int]]) -> None:
        arr = ffi.new("struct cx_rule[]", rules or 1)
        _check(lib.cx_engine__set_passthrough(self._e, arr, len(rules)),
               "cx_engine__set_passthrough")

    def conn_snapshot(self, limit: int | None = None) -> list:
        """``struct cx_conn_info`` of every connection, in creation order; with
        ``limit``, the ``limit`` most worth a look (cx_engine__conn_top).
        Valid until the next call: a slice does not keep its array alive,
        so the array is kept here."""
        n = lib.cx_engine__connections(self._e)
        if limit is not None and limit < n:
            self._rows = ffi.new("struct cx_conn_info[]", max(limit, 1))
            return self._rows[0:lib.cx_engine__conn_top(self._e, self._rows, limit)]
        self._rows = ffi.new("struct cx_conn_info[]", max(n, 1))
        n = min(lib.cx_engine__conn_snapshot(self._e, self._rows, n), n)
        return self._rows[0:n]

    def evidence(self) -> bytes:
        n = lib.cx_engine__evidence(self._e, self._data)
        return bytes(ffi.buffer(self._data[0], n)) if n else b""

    def note_drop(self, side: int, reason: int) -> None:
        lib.cx_engine__note_drop(self._e, side, reason)

    def out_peek(self) -> memoryview:
        n = lib.cx_engine__out_peek(self._e, self._data)
        return memoryview(ffi.buffer(self._data[0], n)) if n else memoryview(b"")

    def out_pending(self) -> int:
        return lib.cx_engine__out_peek(self._e, self._data)

    def out_consume(self, n: int) -> None:
        lib.cx_engine__out_consume(self._e, n)

    def out_note_unsent(self, n: int) -> None:
        lib.cx_engine__out_note_unsent(self._e, n)

    def out_abandon_partial(self) -> bool:
        return bool(lib.cx_engine__out_abandon_partial(self._e))

    def events(self) -> list:
        """``struct cx_event`` since the last events_clear (valid until then)."""
        n = lib.cx_engine__events(self._e, self._events)
        return self._events[0][0:n] if n else []

    def events_clear(self) -> None:
        lib.cx_engine__events_clear(self._e)

    def counters(self):
        """The engine's ``struct cx_counters`` (live: read it before the next call)."""
        return lib.cx_engine__counters(self._e)

    def connections(self) -> int:
        return lib.cx_engine__connections(self._e)

    def queued(self, side: int) -> int:
        return lib.cx_engine__queued(self._e, side)


# -- AF_XDP sockets (csrc/xsk.h) ---------------------------------------------

class XskCore:
    """One ``struct xsk``: an AF_XDP socket and its UMEM, until ``close``."""

    def __init__(self, x, info: dict[str, int]):
        self._x = x
        self.info = info
        self.umem = ffi.buffer(lib.xsk__umem(x), lib.xsk__umem_size(x))

    @classmethod
    def open(cls, config: dict[str, int]) -> "XskCore":
        """NativeError with xsk__open's errno when the socket is refused."""
        out = ffi.new("struct xsk **")
        info = ffi.new("struct xsk__info *")
        _check(lib.xsk__open(ffi.new("struct xsk__config *", config), out, info), "xsk__open")
        return cls(out[0], {name: getattr(info, name)
                            for name, _ in ffi.typeof(info[0]).fields})

    def close(self) -> None:
        x, self._x = self._x, None
        self.umem = None
        if x is not None:
            lib.xsk__close(x)

    def fd(self) -> int:
        return lib.xsk__fd(self._x)

    @staticmethod
    def burst_arrays(n: int):
        """The (addrs, lens) arrays rx_burst fills: uint64_t[n], uint32_t[n]."""
        return ffi.new("uint64_t[]", n), ffi.new("uint32_t[]", n)

    def rx_burst(self, addrs, lens, max_frames: int) -> int:
        return lib.xsk__rx_burst(self._x, addrs, lens, max_frames)

    def rx_done(self, addrs, n: int) -> None:
        _check(lib.xsk__rx_done(self._x, addrs, n), "xsk__rx_done")

    def tx_burst(self, frames) -> int:
        lens = ffi.new("uint32_t[]", [len(f) for f in frames])
        return _check(lib.xsk__tx_burst(self._x, b"".join(frames), lens, len(frames)),
                      "xsk__tx_burst")

    def tx_queue(self, frames) -> int:
        lens = ffi.new("uint32_t[]", [len(f) for f in frames])
        return _check(lib.xsk__tx_queue(self._x, b"".join(frames), lens, len(frames)),
                      "xsk__tx_queue")

    def tx_kick(self) -> None:
        _check(lib.xsk__tx_kick(self._x), "xsk__tx_kick")

    def tx_unsent(self) -> list[bytes]:
        n = self.tx_pending()
        addrs, lens = ffi.new("uint64_t[]", max(n, 1)), ffi.new("uint32_t[]", max(n, 1))
        n = lib.xsk__tx_unsent(self._x, addrs, lens, n)
        return [self.umem[addrs[i]:addrs[i] + lens[i]] for i in range(n)]

    def tx_reap(self) -> int:
        return _check(lib.xsk__tx_reap(self._x), "xsk__tx_reap")

    def tx_pending(self) -> int:
        return lib.xsk__tx_pending(self._x)

    def stats(self) -> dict[str, int]:
        st = ffi.new("struct xsk__stats *")
        _check(lib.xsk__stats(self._x, st), "xsk__stats")
        return {name: getattr(st, name) for name, _ in ffi.typeof(st[0]).fields}


# -- the glue (csrc/xdp_glue.h) ----------------------------------------------

_HELD = ffi.new("int *")


def rx_to_engine(xsk: XskCore, engine: EngineCore, side: int, now_ms: int, max_frames: int,
                 force: bool = False) -> tuple[int, bool]:
    """Up to max_frames from the socket's rx ring into the engine: (how many,
    held back by flow control: the rest stays in the ring)."""
    n = _check(lib.xdp_glue__rx_to_engine(xsk._x, engine._e, side, now_ms, max_frames,
                                          CX_FEED_FORCE if force else 0, _HELD),
               "xdp_glue__rx_to_engine")
    return n, bool(_HELD[0])


def tx_from_engine(xsk: XskCore, engine: EngineCore, max_frames: int) -> int:
    """Up to max_frames of the engine's releases out of the socket; how many."""
    return _check(lib.xdp_glue__tx_from_engine(xsk._x, engine._e, max_frames),
                  "xdp_glue__tx_from_engine")


# -- the chardev glue (csrc/chardev_glue.h) ------------------------------------

class ChardevInput:
    """One chardev input's socket and buffer for the glue
    (``struct chardev_glue__input``; ``st`` is the struct).  ``buf`` is the
    caller's; it keeps its size while this lives."""

    def __init__(self, side: int, buf: bytearray, chunk: int):
        self._buf = ffi.from_buffer(buf)          # keeps buf alive
        self.st = ffi.new("struct chardev_glue__input *")
        self.st.fd = -1
        self.st.side = side
        self.st.buf = self._buf
        self.st.cap = len(buf)
        self.st.chunk = chunk


class ChardevPump:
    """chardev_glue__pump over a list of inputs, its result struct kept and
    reused: ``run`` returns it (``nsent``, ``out_left``, ``rounds``; see
    chardev_glue.h).  The inputs' own results are in their ``st``."""

    def __init__(self):
        self._r = ffi.new("struct chardev_glue__pump *")
        self._ins = ffi.new("struct chardev_glue__input *[]", 2)

    def run(self, engine: EngineCore, inputs: list, max_rounds: int, now_ms: int,
            force: bool, out_fd: int):
        if len(inputs) > len(self._ins):
            self._ins = ffi.new("struct chardev_glue__input *[]", len(inputs))
        for i, inp in enumerate(inputs):
            self._ins[i] = inp.st
        lib.chardev_glue__pump(engine._e, self._ins, len(inputs), max_rounds, now_ms,
                               CX_FEED_FORCE if force else 0, out_fd, self._r)
        return self._r


_LEFT = ffi.new("uint64_t *")


def write_out(engine: EngineCore, fd: int) -> tuple[int, int]:
    """chardev_glue__write: (bytes written or -errno, bytes left)."""
    n = lib.chardev_glue__write(engine._e, fd, _LEFT)
    return n, _LEFT[0]


# -- cutting frames for the wire (csrc/segment.h) ----------------------------

def segment(frame: bytes, mtu: int, max_len: int) -> list[bytes]:
    """The wire frames ``frame`` leaves as where no IP packet may be longer
    than ``mtu`` and no frame longer than ``max_len``, checksums finished (what
    the AF_XDP outdev sends; for tests and tools).  NativeError: EMSGSIZE (too
    long, not cut), EINVAL (headers inconsistent with the length)."""
    plan = ffi.new("struct segment__plan *")
    _check(lib.segment__plan(frame, len(frame), mtu, max_len, plan), "segment__plan")
    buf = ffi.new("uint8_t[]", max(max_len, len(frame)))
    out = []
    for i in range(plan.count):
        n = _check(lib.segment__write(plan, frame, len(frame), i, buf, len(buf)),
                   "segment__write")
        out.append(bytes(ffi.buffer(buf, n)))
    return out
