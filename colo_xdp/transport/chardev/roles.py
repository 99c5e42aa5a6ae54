"""The chardev roles on the service's loop: primary-in, secondary-in, outdev
and notify-dev, each one QEMU socket chardev (``endpoint``) served by the
loop's selector.

A role talks to its loop (``colo_xdp.service.loop.Loop``) through a small
surface: ``watch``/``unwatch`` with a handler taking the event mask,
``engine``, ``log``, ``now_ms()``, ``paused`` and ``outdev``; the notify
role also reports a finished checkpoint with ``colo_checkpoint()``.

An input's turn is one call into C (``csrc/chardev_glue.h``): it reads the
socket, feeds the engine and writes what that released to a chardev outdev
(``Outdev.fd``), whose ``wrote`` then acts on the write's result.  While
the inputs keep bringing data the same call goes round them again, so that
under load the loop's Python runs once for many reads.

Inputs are flow-controlled by the engine (``Loop.balance_inputs``): when a
feed is held back, the rest of what was read stays in the input's buffer,
the socket is not read, and the lead waits in the kernel's socket buffer
until the loop feeds it again.
"""
from __future__ import annotations

import errno
import os
import select
import selectors
import socket
import time
from typing import TYPE_CHECKING

from colo_xdp import native
from colo_xdp.engine import FRAMING_LOST, DropReason, Side
from colo_xdp.errors import FramingError
from colo_xdp.proto.framing import NET_BUFSIZE
from colo_xdp.proto.notify import DO_CHECKPOINT_RECORD, NotifyEvent, NotifyProtocol
from colo_xdp.transport.chardev import endpoint
from colo_xdp.transport.chardev.endpoint import EndpointError, Spec

if TYPE_CHECKING:
    from colo_xdp.service.loop import Loop

READ = selectors.EVENT_READ
WRITE = selectors.EVENT_WRITE

# The most one read of an input takes.  As large as a peer's socket buffer
# can hold, so that one read takes all that waits: a 64 KiB read took about
# 45 frames of 1400 B, and the extra turns, wakeups and syscalls cost 1400 B
# pairs about 70 % more CPU here (tools.bench's shaped rows).
CHUNK = 1024 * 1024
# Rounds over the inputs one readable input may start (chardev_glue__pump
# also stops when a round reads little, or at its byte budget).
PUMP_ROUNDS = 64
PUMP = native.ChardevPump()        # one loop thread: one result struct
NOTIFY_OUT_MAX = 64 * 1024         # DO_CHECKPOINT bytes kept for a slow peer
# What a non-blocking read or write that found nothing to do returns (-errno).
NOTHING_NOW = (errno.EAGAIN, errno.EINTR)


class Channel:
    """One role's socket: a listener serving one peer at a time (as QEMU's
    socket chardev does), or a connector that may retry."""

    def __init__(self, svc: "Loop", role: str, spec: Spec):
        self.svc = svc
        self.role = role
        self.spec = spec
        self.listener: socket.socket | None = None
        self.inode = 0                    # our listening socket file's (cleanup removes only it)
        self.sock: socket.socket | None = None
        self.retry_at: float | None = None
        # A retry's non-blocking connect in progress, and when to give it up.
        self.connecting: socket.socket | None = None
        self.connect_deadline = 0.0

    # -- lifecycle ---------------------------------------------------------

    def open(self) -> None:
        if self.spec.server:
            self.listener = endpoint.listen(self.spec, self.role)
            self.inode = endpoint.bound_inode(self.spec)
            self.svc.watch(self.listener, READ, self._accept)
        else:
            try:
                self._attach(endpoint.connect(self.spec))
            except EndpointError as exc:
                if not self.spec.reconnect:
                    raise EndpointError(exc.errno, f"{self.role}: {exc.strerror}; add "
                                        ",reconnect=SECONDS to keep trying") from None
                self.svc.log.warning("connect_failed", role=self.role, error=exc.strerror,
                                     retry_s=self.spec.reconnect)
                self.retry_at = time.monotonic() + self.spec.reconnect

    def shutdown(self) -> None:
        self._abort_connect()
        self._detach()
        if self.listener:
            self.svc.unwatch(self.listener)
            self.listener.close()
            self.listener = None
            endpoint.cleanup(self.spec, self.inode)

    def maybe_retry(self, now: float) -> None:
        """Runs every loop turn.  Retries never block the loop: the connect is
        started here and finished in _connect_done when the socket is writable
        (a blocking connect to a host that drops SYNs would stall every role
        for CONNECT_TIMEOUT_S at each retry)."""
        if self.connecting and now >= self.connect_deadline:
            self._abort_connect()
            self._retry_later(now, f"cannot connect to {self.spec}: timed out")
        if self.retry_at is None or now < self.retry_at or self.sock or self.connecting:
            return
        self.retry_at = None
        try:
            self.connecting = endpoint.connect_start(self.spec)
        except EndpointError as exc:
            self._retry_later(now, exc.strerror)
            return
        self.connect_deadline = now + endpoint.CONNECT_TIMEOUT_S
        self.svc.watch(self.connecting, WRITE, self._connect_done)

    def _connect_done(self, mask: int) -> None:
        sock, self.connecting = self.connecting, None
        self.svc.unwatch(sock)
        try:
            self._attach(endpoint.connect_finish(self.spec, sock))
        except EndpointError as exc:
            self._retry_later(time.monotonic(), exc.strerror)

    def _abort_connect(self) -> None:
        if self.connecting:
            self.svc.unwatch(self.connecting)
            self.connecting.close()
            self.connecting = None

    def _retry_later(self, now: float, error: str) -> None:
        self.svc.log.warning("connect_failed", role=self.role, error=error,
                             retry_s=self.spec.reconnect)
        self.retry_at = now + (self.spec.reconnect or 1.0)

    def _accept(self, mask: int) -> None:
        try:
            sock, _ = self.listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:              # EMFILE, ENOBUFS, ...: try again later
            self.svc.log.warning("accept_failed", role=self.role,
                                 error=exc.strerror or str(exc))
            return
        sock.setblocking(False)
        endpoint.tune(sock)
        self.svc.unwatch(self.listener)      # one peer at a time
        self._attach(sock)

    def _attach(self, sock: socket.socket) -> None:
        self.sock = sock
        self.svc.log.event("connected", role=self.role, endpoint=self.spec)
        self.connected()

    def _detach(self) -> None:
        if self.sock:
            self.svc.unwatch(self.sock)
            self.sock.close()
            self.sock = None

    def lost(self, why: str, reconnect_now: bool = False) -> None:
        """The peer is gone (or its stream broken): close, then listen or retry."""
        self._detach()
        self.svc.log.warning("disconnected", role=self.role, endpoint=self.spec, why=why)
        self.disconnected()
        if self.spec.server:
            self.svc.watch(self.listener, READ, self._accept)
        elif self.spec.reconnect or reconnect_now:
            self.retry_at = time.monotonic() + (0 if reconnect_now else self.spec.reconnect)
        else:
            # Staying up without it would look alive and do nothing: exit
            # non-zero, so that a supervisor (systemd) starts us again.
            self.svc.give_up(f"{self.role}: the peer at {self.spec} went away and the "
                             "endpoint has no ,reconnect=SECONDS; exiting")

    # -- hooks ---------------------------------------------------------------

    def connected(self) -> None:
        pass

    def disconnected(self) -> None:
        pass


class Input(Channel):
    """primary-in or secondary-in: framed frames into the engine."""

    def __init__(self, svc: "Loop", role: str, spec: Spec, side: Side):
        super().__init__(svc, role, spec)
        self.side = side
        # Room for one chunk behind the longest partial record; the glue
        # reads into it (csrc/chardev_glue.h), and so buf never resizes.
        self.buf = bytearray(CHUNK + NET_BUFSIZE + 8)
        self.view = memoryview(self.buf)
        self.io = native.ChardevInput(side, self.buf, CHUNK)
        self.held = False               # flow control: the engine wants the other side
        self.last_fed_ms = svc.now_ms()   # when a feed last took something
        self.held_since = 0               # when flow control last held it back
        self.stopped_other_at: int | None = None   # forced: the other side stopped

    # buf[start:end]: read, not yet taken by the engine (kept in the glue's struct)
    @property
    def start(self) -> int:
        return self.io.st.start

    @start.setter
    def start(self, value: int) -> None:
        self.io.st.start = value

    @property
    def end(self) -> int:
        return self.io.st.end

    @end.setter
    def end(self, value: int) -> None:
        self.io.st.end = value

    def connected(self) -> None:
        self.svc.engine.stream_reset(self.side)
        self.held = False
        self.io.st.held = 0
        self.io.st.fd = self.sock.fileno()
        self.last_fed_ms = self.svc.now_ms()      # quiet is counted from here
        if not self.svc.paused:
            self.svc.watch(self.sock, READ, self._readable)

    def disconnected(self) -> None:
        if self.held:                   # whole frames already read are not lost
            self.feed(force=True)
        if self.end > self.start:       # the peer left in the middle of a record
            self.svc.engine.note_drop(self.side, DropReason.TRUNCATED)
            self.svc.log.warning("frame_dropped", side=self.side.name.lower(),
                                 reason="truncated", bytes=self.end - self.start)
        self.start = self.end = 0
        self.held = False
        self.io.st.held = 0
        self.io.st.fd = -1

    def pause(self, paused: bool) -> None:
        if not self.sock or self.held:
            return
        if paused:
            self.svc.unwatch(self.sock)
        else:
            self.svc.watch(self.sock, READ, self._readable)

    def feed(self, force: bool = False) -> int:
        """Feed what was read and not yet taken; with ``force`` all of it
        (flow control off for this call).  Returns the bytes taken."""
        used = 0
        if self.end > self.start:
            now = self.svc.now_ms()
            try:
                used, held = self.svc.engine.feed_stream_flow(
                    self.side, self.view[self.start:self.end], now, force)
            except FramingError as exc:
                self._framing_lost(str(exc))
                return 0
            self.start += used
            if self.start == self.end:
                self.start = self.end = 0
            if used:
                self.last_fed_ms = now
        else:
            held = False
        self._hold(held)
        return used

    def _framing_lost(self, error: str) -> None:
        self.start = self.end = 0
        self.svc.log.warning("stream_broken", role=self.role, reason="oversize", error=error)
        self.lost("framing lost", reconnect_now=True)

    def _hold(self, held: bool) -> None:
        """Flow control held the feed back (or no longer does): the socket
        is not read while it is held."""
        self.io.st.held = held
        if held == self.held:
            return
        self.held = held
        if held:
            self.held_since = self.svc.now_ms()
        if not self.sock:
            return
        if held:
            self.svc.unwatch(self.sock)      # the lead stays in the socket buffer
        elif not self.svc.paused:
            self.svc.watch(self.sock, READ, self._readable)

    def _readable(self, mask: int) -> None:
        # This input first, then every connected one while they bring data
        # (chardev_glue__pump).  What it released goes out now; events,
        # attachments and backpressure wait for the end of the turn
        # (Loop.run), once for every input read in it.
        inputs = [self] + [i for i in self.svc.inputs
                           if i is not self and isinstance(i, Input) and i.sock]
        self._pump(inputs, PUMP_ROUNDS, False)

    def read_now(self, force: bool = False) -> int:
        """Read one chunk, paused or not, feed its whole records to the
        engine (flow control off with ``force``, as at a checkpoint's drain)
        and write what they released to a chardev outdev.  Returns the bytes
        read (0: nothing was waiting, or held back)."""
        if not self.sock:
            return 0
        return self._pump([self], 1, force)

    def _pump(self, inputs: list, rounds: int, force: bool) -> int:
        """One call into C (chardev_glue.h) over ``inputs``, then what its
        results mean for each of them and for the outdev; the bytes read."""
        svc = self.svc
        outdev = svc.outdev
        chardev_out = isinstance(outdev, Outdev)
        now = svc.now_ms()
        r = PUMP.run(svc.engine.handle, [i.io for i in inputs], rounds, now, force,
                     outdev.fd if chardev_out else -1)
        nread = 0
        for inp in inputs:
            nread += inp._after_pump(now)
        if chardev_out:
            outdev.wrote(r.nsent, r.out_left)
        elif nread:
            outdev.write_pending()
        return nread

    def _after_pump(self, now: int) -> int:
        st = self.io.st
        if st.took:
            self.last_fed_ms = now
        if st.feed < 0:
            self._framing_lost(FRAMING_LOST)
        elif st.nread == 0:
            self.lost("peer closed the stream")
        elif st.nread < 0 and -st.nread not in NOTHING_NOW:
            self.lost(os.strerror(-st.nread))
        else:
            self._hold(bool(st.held))
        return st.read


class Outdev(Channel):
    """Where released primary frames go, in order, never dropped for slowness."""

    writing = False

    @property
    def has_peer(self) -> bool:
        return self.sock is not None

    def wait_writable(self, timeout: float) -> None:
        if self.sock:
            select.select([], [self.sock], [], timeout)

    def connected(self) -> None:
        self.writing = False
        self.svc.watch(self.sock, READ, self._ready)
        self.write_pending()

    def disconnected(self) -> None:
        if self.svc.engine.abandon_partial_output():
            self.svc.log.warning("outdev_cut", why="outdev closed in the middle of a frame")
        self.writing = False

    def _ready(self, mask: int) -> None:
        if mask & READ:
            try:
                data = self.sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                data = None
            except OSError as exc:
                self.lost(exc.strerror or str(exc))
                return
            if data == b"":
                self.lost("peer closed the stream")
                return
        if mask & WRITE:
            self.write_pending()

    @property
    def fd(self) -> int:
        """The socket the chardev glue writes released frames to (-1: none)."""
        return self.sock.fileno() if self.sock else -1

    def write_pending(self) -> None:
        if self.sock:
            self.wrote(*native.write_out(self.svc.engine.handle, self.sock.fileno()))

    def wrote(self, n: int, left: int) -> None:
        """A write of the released frames (chardev_glue.h) wrote ``n`` bytes
        (or failed, -errno) and left ``left``: the rest waits until the
        socket is writable."""
        if n < 0 and -n not in NOTHING_NOW:
            self.lost(os.strerror(-n))
            return
        if not self.sock:
            return
        want = left > 0
        if want != self.writing:
            self.writing = want
            self.svc.watch(self.sock, READ | (WRITE if want else 0), self._ready)


class Dialogue(Channel):
    """A role that talks with its peer both ways (notify-dev, the QMP
    monitor): what it sends waits in ``out`` while the peer is slow, what it
    reads goes to ``on_data``.  Subclasses call ``listen_to_peer`` when
    connected and clear what they keep when disconnected."""

    def __init__(self, svc: "Loop", role: str, spec: Spec):
        super().__init__(svc, role, spec)
        self.out = bytearray()

    def listen_to_peer(self) -> None:
        self.svc.watch(self.sock, READ, self._ready)
        self._flush()

    def send(self, data: bytes) -> None:
        self.out += data
        self._flush()

    def on_data(self, data: bytes) -> None:
        raise NotImplementedError

    def _ready(self, mask: int) -> None:
        if mask & WRITE:
            self._flush()
        if not mask & READ or not self.sock:
            return
        try:
            data = self.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self.lost(exc.strerror or str(exc))
            return
        if not data:
            self.lost("peer closed the stream")
            return
        self.on_data(data)

    def _flush(self) -> None:
        if not self.sock:
            return
        try:
            n = self.sock.send(self.out) if self.out else 0
        except (BlockingIOError, InterruptedError):
            n = 0
        except OSError as exc:
            self.lost(exc.strerror or str(exc))
            return
        del self.out[:n]
        self.svc.watch(self.sock, READ | (WRITE if self.out else 0), self._ready)


class Notify(Dialogue):
    """notify-dev: DO_CHECKPOINT out, COLO_CHECKPOINT in."""

    def __init__(self, svc: "Loop", role: str, spec: Spec, vnet: bool):
        super().__init__(svc, role, spec)
        self.vnet = vnet
        self.proto = NotifyProtocol(vnet)
        self.suppressed = 0

    def connected(self) -> None:
        self.proto = NotifyProtocol(self.vnet)
        self.listen_to_peer()

    def disconnected(self) -> None:
        self.out.clear()

    def request_checkpoint(self) -> None:
        if not self.sock:
            return
        if len(self.out) >= NOTIFY_OUT_MAX:   # the peer is not reading: it has enough
            self.suppressed += 1
            return
        self.send(DO_CHECKPOINT_RECORD)

    def on_data(self, data: bytes) -> None:
        reply, events, error = self.proto.receive(data)
        if reply:
            self.send(reply)
        for kind, msg in events:
            if kind is NotifyEvent.CHECKPOINT:
                self.svc.colo_checkpoint()
            elif kind is NotifyEvent.INIT:
                self.svc.log.event("notify_init", role=self.role)
            else:
                self.svc.log.warning("notify_unknown_message", message=msg[:64])
        if error:
            self.svc.log.warning("stream_broken", role=self.role, error=error)
            self.lost("framing lost", reconnect_now=True)
