"""AF_XDP sockets: the Python face of the C helper (csrc/xsk.c).

One ``XskSocket`` is one socket on one rx queue of one interface, in copy
mode, with its own UMEM.  Frames cross the cffi boundary in bursts: one call
takes up to ``max`` received frames (their UMEM offsets and lengths in
arrays the socket owns), one call hands them back, one call sends a list of
frames::

    with XskSocket("veth0", queue=0) as xsk:
        classifier.set_socket(0, xsk.fileno())      # XdpClassifier
        n = xsk.rx_burst()                          # frames waiting, up to 64
        for addr, length in xsk.received(n):        # tests and tools only
            frame = xsk.frame(addr, length)         # a view into the UMEM
        xsk.rx_done(n)                              # all n back to the kernel
        xsk.tx_burst([frame1, frame2])              # copied, queued, kicked

A multi-queue interface needs one socket per queue: a socket bound to one
queue never sees frames that arrive on another.

Errors a user can cause raise ``XskError`` with one sentence saying what to
do: interface or queue missing, not root, no AF_XDP in the kernel, queue in
use, UMEM over RLIMIT_MEMLOCK.
"""
from __future__ import annotations

import errno
import os
import socket
from dataclasses import dataclass
from typing import Iterator, Sequence

from colo_xdp import native
from colo_xdp.errors import XdpError

DEFAULT_BURST = 64


class XskError(XdpError):
    """An AF_XDP socket could not be opened or used; one sentence."""


@dataclass(frozen=True)
class XskConfig:
    frame_size: int = native.XSK_DEFAULT_FRAME_SIZE   # 2048 or 4096
    frame_count: int = native.XSK_DEFAULT_FRAME_COUNT # half rx, half tx
    ring_size: int = native.XSK_DEFAULT_RING_SIZE     # power of two
    bind_timeout_ms: int = native.XSK_DEFAULT_BIND_TIMEOUT_MS
    burst: int = DEFAULT_BURST                        # most frames per rx_burst
    # Bind with XDP_USE_SG: a frame longer than a UMEM frame (a guest's
    # TSO/GSO super-frame) comes in several descriptors instead of being
    # dropped; only for a reader that joins them (the XDP glue does).
    multi_buffer: bool = False


@dataclass(frozen=True)
class XskInfo:
    umem_bytes: int
    rx_frames: int
    tx_frames: int
    bind_retries: int
    memlock_raised: bool
    memlock_limit: int
    multi_buffer: bool = False      # bound with XDP_USE_SG (kernel 6.6 or later)

    def memlock_note(self) -> str | None:
        """One sentence for the log when RLIMIT_MEMLOCK had to be raised."""
        if not self.memlock_raised:
            return None
        limit = ("unlimited" if self.memlock_limit >= (1 << 63) or self.memlock_limit < 0
                 else f"{self.memlock_limit >> 10} KiB")
        return (f"raised RLIMIT_MEMLOCK to {limit} to register a "
                f"{self.umem_bytes >> 10} KiB AF_XDP UMEM (no CAP_IPC_LOCK)")


def _rx_queues(ifname: str) -> int | None:
    """The interface's rx queues in use (real_num_rx_queues), or None.

    /sys/class/net/IF/queues lists exactly those; netlink only has the count
    allocated (a veth made without numrxqueues has 1 in use of 2 or more, and
    binding to the others is refused; a multi-queue tap has 256), except for
    a tap, whose queues in use are its attached ones (IFLA_TUN_NUM_QUEUES).
    /sys is read when it shows the caller's network namespace (its ifindex
    matches), else netlink is the fallback."""
    try:
        index = socket.if_nametoindex(ifname)
    except OSError:
        return None
    base = f"/sys/class/net/{ifname}"
    try:
        with open(f"{base}/ifindex") as f:
            if int(f.read()) == index:
                return sum(1 for q in os.listdir(f"{base}/queues") if q.startswith("rx-")) or None
    except (OSError, ValueError):
        pass
    try:
        from pyroute2 import IPRoute

        with IPRoute() as ipr:
            links = ipr.link("get", index=index)
        if not links:
            return None
        info = links[0].get_attr("IFLA_LINKINFO")
        if info and info.get_attr("IFLA_INFO_KIND") == "tun":
            data = info.get_attr("IFLA_INFO_DATA")
            if data and data.get_attr("IFLA_TUN_MULTI_QUEUE"):
                return data.get_attr("IFLA_TUN_NUM_QUEUES") or 1
        return links[0].get_attr("IFLA_NUM_RX_QUEUES")
    except Exception:                 # only a count: never mask the caller's own error
        return None


def _open_error(rc: int, ifname: str, queue: int, cfg: XskConfig) -> str:
    err = -rc
    if err == errno.EAFNOSUPPORT:
        return "this kernel has no AF_XDP sockets: use a kernel built with CONFIG_XDP_SOCKETS"
    if err == errno.EPERM:
        return "AF_XDP sockets need root (CAP_NET_RAW): run colo-xdp as root"
    if err == errno.ENODEV:
        return f"there is no interface {ifname!r}: check the name with 'ip link'"
    if err == errno.EINVAL:
        queues = _rx_queues(ifname)
        if queues is not None and queue >= queues:
            return (f"{ifname} has no rx queue {queue} (it has {queues}): "
                    f"bind one socket per queue, 0..{queues - 1}")
        return (f"the AF_XDP socket on {ifname} queue {queue} was refused (invalid "
                f"argument): check the frame size ({cfg.frame_size}) and ring size "
                f"({cfg.ring_size}, a power of two)")
    if err == errno.EBUSY:
        return (f"rx queue {queue} of {ifname} is in use by another AF_XDP socket "
                f"(still after {cfg.bind_timeout_ms} ms): stop its owner")
    if err == errno.ENOBUFS:
        umem = cfg.frame_size * cfg.frame_count
        return (f"the AF_XDP UMEM ({umem >> 10} KiB) is over RLIMIT_MEMLOCK and the limit "
                "could not be raised: run as root, raise 'ulimit -l', or use fewer frames")
    if err == errno.EOPNOTSUPP:
        return f"{ifname} does not take AF_XDP sockets in copy mode"
    return f"opening an AF_XDP socket on {ifname} queue {queue} failed: {os.strerror(err)}"


class XskSocket:
    """An AF_XDP socket bound to rx queue ``queue`` of ``ifname`` (copy mode)."""

    def __init__(self, ifname: str, queue: int = 0, config: XskConfig | None = None):
        self.ifname = ifname
        self.queue = queue
        self.config = config or XskConfig()
        self.info: XskInfo | None = None
        self._x = None
        burst = max(1, self.config.burst)
        self._addrs, self._lens = native.XskCore.burst_arrays(burst)
        self._last_burst = 0

    # -- lifecycle --------------------------------------------------------

    def __enter__(self) -> "XskSocket":
        self.open()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close()

    def open(self) -> None:
        if self._x is not None:
            return
        try:
            ifindex = socket.if_nametoindex(self.ifname)
        except OSError:
            raise XskError(f"there is no interface {self.ifname!r}: check the name with "
                           "'ip link'") from None
        c = self.config
        cfg = {
            "ifindex": ifindex, "queue": self.queue, "frame_size": c.frame_size,
            "frame_count": c.frame_count, "ring_size": c.ring_size,
            "bind_timeout_ms": c.bind_timeout_ms, "multi_buffer": int(c.multi_buffer)}
        try:
            self._x = native.XskCore.open(cfg)
        except native.NativeError as exc:
            raise XskError(_open_error(-exc.errno, self.ifname, self.queue, c)) from None
        info = self._x.info
        self.info = XskInfo(info["umem_bytes"], info["rx_frames"], info["tx_frames"],
                            info["bind_retries"], bool(info["memlock_raised"]),
                            info["memlock_limit"], bool(info["multi_buffer"]))

    def close(self) -> None:
        """Close the socket and free its UMEM; safe to call twice."""
        x, self._x = self._x, None
        if x is not None:
            x.close()

    def fileno(self) -> int:
        self._need_open()
        return self._x.fd()

    @property
    def handle(self) -> native.XskCore:
        """The C socket, for the XDP glue (colo_xdp.native.rx_to_engine)."""
        self._need_open()
        return self._x

    def _need_open(self) -> None:
        if self._x is None:
            raise XskError("the AF_XDP socket is not open: use it inside 'with'")

    # -- receive ------------------------------------------------------------

    def rx_burst(self, max_frames: int | None = None) -> int:
        """Take up to ``max_frames`` (at most the configured burst) received
        frames; returns how many.  They are ``addrs[:n]``/``lens[:n]`` until
        the next rx_burst, and the caller's until ``rx_done``."""
        self._need_open()
        limit = len(self._addrs) if max_frames is None else min(max_frames, len(self._addrs))
        self._last_burst = max(self._x.rx_burst(self._addrs, self._lens, limit), 0)
        return self._last_burst

    @property
    def addrs(self):
        """UMEM offsets of the last burst (a cffi uint64_t array)."""
        return self._addrs

    @property
    def lens(self):
        return self._lens

    def received(self, n: int) -> Iterator[tuple[int, int]]:
        """(addr, length) of the last burst's n frames."""
        for i in range(n):
            yield self._addrs[i], self._lens[i]

    def rx_done(self, n: int) -> None:
        """Give the last burst's first n frames back to the kernel."""
        self._need_open()
        if not 0 <= n <= self._last_burst:      # the C side reads addrs[:n]
            raise XskError(f"cannot hand back {n} frames: the last burst took "
                           f"{self._last_burst}")
        self._last_burst = 0                  # each burst is given back once
        try:
            self._x.rx_done(self._addrs, n)
        except native.NativeError:
            raise XskError("a frame handed back is not one this socket received "
                           "(handed back twice?)") from None

    def frame(self, addr: int, length: int) -> memoryview:
        """A view of a received frame in the UMEM (valid until rx_done)."""
        self._need_open()
        return memoryview(self._x.umem)[addr:addr + length]

    # -- transmit -------------------------------------------------------------

    def tx_burst(self, frames: Sequence[bytes]) -> int:
        """Copy frames into the UMEM and send them; returns how many were
        queued (fewer when tx frames run out: call ``tx_reap`` and again)."""
        self._need_open()
        if not frames:
            return 0
        try:
            return self._x.tx_burst(frames)
        except native.NativeError as exc:
            raise self._tx_error(exc) from None

    def tx_queue(self, frames: Sequence[bytes]) -> int:
        """``tx_burst`` without the kick (``tx_kick``): how many were queued
        is known even when the kick then fails."""
        self._need_open()
        if not frames:
            return 0
        try:
            return self._x.tx_queue(frames)
        except native.NativeError as exc:
            raise self._tx_error(exc) from None

    def tx_kick(self) -> None:
        """Make the kernel send what is queued; XskError if it cannot (the
        frames stay queued: ``tx_unsent``)."""
        self._need_open()
        try:
            self._x.tx_kick()
        except native.NativeError as exc:
            raise self._tx_error(exc) from None

    def tx_unsent(self) -> list[bytes]:
        """Copies of the frames queued that the kernel has not read yet, in
        order: what closing the socket would lose."""
        self._need_open()
        return self._x.tx_unsent()

    def _tx_error(self, exc: native.NativeError) -> XskError:
        if exc.errno == errno.EMSGSIZE:
            return XskError(f"a frame is longer than the AF_XDP frame size "
                            f"({self.config.frame_size} bytes)")
        return XskError(f"sending on {self.ifname} queue {self.queue} failed: {exc.strerror}")

    def tx_reap(self) -> int:
        """Kick the kernel for queued frames, take completed ones back;
        returns the tx frames free."""
        self._need_open()
        try:
            return self._x.tx_reap()
        except native.NativeError as exc:
            raise XskError(f"sending on {self.ifname} queue {self.queue} failed: "
                           f"{exc.strerror}") from None

    @property
    def tx_pending(self) -> int:
        self._need_open()
        return self._x.tx_pending()

    def stats(self) -> dict[str, int]:
        """The kernel's counters for this socket (XDP_STATISTICS)."""
        self._need_open()
        try:
            return self._x.stats()
        except native.NativeError as exc:
            raise XskError(f"reading AF_XDP statistics failed: {exc.strerror}") from None
