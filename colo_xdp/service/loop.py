"""One thread, one selector, one engine: the loop every service runs on.

Each turn waits for ready sockets (no longer than the engine's next timer;
while the engine holds frames it polls first, ``busypoll``), lets each ready
role read into the engine (a bounded batch; chardev inputs go round again
while they bring data, ``roles.Input``), runs the expired-frame scan
when due, gives every role and attachment its tick, and ends with
``after_batch``: the engine's events are handled, released frames are
written to the outdev, and backpressure is decided.

Backpressure, written once for compare and forward: when the outdev cannot
keep up, released frames wait in the engine's out buffer; past
``OUT_HIGH_WATER`` the inputs are no longer read until it falls under
``OUT_LOW_WATER``, so nothing is lost and nothing is reordered.  The frames
not read meanwhile wait in the kernel (a socket buffer, an rx ring).

Flow control, also written once (``balance_inputs``): what is read is decided
by the engine's state, not by chunk sizes.  A feed the engine holds back (its
side would run ahead of the other, see cx_engine.h) leaves the input
unread, its lead in the kernel; every turn the held inputs are fed again,
so they go on as soon as the other side has caught up (again and again
while a round of feeds takes frames).  When every input is
held back after a round that took nothing, or another has taken nothing for ``FLOW_STALL_MS`` while frames of
its side are queued (they may wait for frames behind the held one), or for
``FLOW_STOPPED_MS`` (it stopped), the held input is fed with flow control off
and the engine's limits decide (queue_full, table_full, a checkpoint), so
nothing deadlocks.  The first two keep the expired-frame scan honest: a frame
waits at most FLOW_STALL_MS for a partner we chose not to read.

A role is any object with ``open``, ``shutdown`` and ``maybe_retry(now)``;
inputs add ``pause(paused)``, ``held``, ``held_since``, ``stopped_other_at``,
``last_fed_ms`` and ``feed(force)``,
the outdev ``has_peer``, ``write_pending`` and ``wait_writable(timeout)``.  An attachment (control socket, /metrics, the
evidence pcap) has ``open``, ``close``, ``tick(now)``, ``end_batch`` and
``stats``.
"""
from __future__ import annotations

import selectors
import time

from colo_xdp.engine import Engine
from colo_xdp.observe import log as logmod
from colo_xdp.observe.log import EventLog
from colo_xdp.proto.framing import count_records
from colo_xdp.service import signals as sigs
from colo_xdp.service.busypoll import AdaptivePoll
from colo_xdp.service.sdnotify import Notifier
from colo_xdp.errors import EndpointError

READ = selectors.EVENT_READ
WRITE = selectors.EVENT_WRITE

OUT_HIGH_WATER = 8 * 1024 * 1024   # stop reading inputs above this much output
OUT_LOW_WATER = 1 * 1024 * 1024    # ... and resume below this
SHUTDOWN_DRAIN_S = 2.0             # how long to try delivering at exit
MAX_SLEEP_S = 0.5
# Flow control: a held input is forced after another input took nothing for
# this long while frames of its side are queued (see _force_reason).
FLOW_STALL_MS = 200
# ... and after it took nothing for this long (or compare_timeout, if shorter)
# whatever is queued: it has stopped producing, the limits decide.
FLOW_STOPPED_MS = 1000
# Rounds of feeding the held inputs again in one turn, at most (each round
# that goes on took frames: the buffers read are finite, this only bounds it).
BALANCE_ROUNDS_MAX = 256


class Loop:
    """The selector, the clock and backpressure around one engine.  Subclasses
    set ``inputs``, ``outdev``, ``channels`` (every role, in opening order)
    and ``attachments``, and handle the engine's events in ``on_events``."""

    def __init__(self, engine: Engine, log: EventLog):
        self.engine = engine
        self.log = log
        self.sel = selectors.DefaultSelector()
        self.inputs: list = []
        self.outdev = None
        self.channels: list = []
        self.attachments: list = []
        self.paused = False              # inputs not read: the output is backed up
        self.resumed_ms = -(1 << 62)     # when backpressure last ended
        self._stop = False
        self._t0 = time.monotonic()
        self.signals: sigs.Signals | None = None     # installed by serve_loop
        self.undelivered = 0             # released frames the outdev never took (at exit)
        self.fatal: str | None = None    # why the loop gave up (exit status 1)
        self.notifier = Notifier()       # systemd Type=notify: READY=1, WATCHDOG=1
        # While frames are held: poll before sleeping (colo_xdp.service.busypoll).
        self.poll = AdaptivePoll(0.0)

    # -- what roles use -------------------------------------------------------

    def watch(self, sock, events: int, handler) -> None:
        # Looked up first: modify() of a socket not registered formats the
        # socket's repr into its KeyError (getsockname, getpeername), and
        # flow control watches and unwatches inputs all the time.
        key = self.sel.get_map().get(sock)
        if key is None:
            self.sel.register(sock, events, handler)
        elif key.events != events or key.data != handler:
            self.sel.modify(sock, events, handler)

    def unwatch(self, sock) -> None:
        try:
            self.sel.unregister(sock)
        except (KeyError, ValueError):
            pass

    def now_ms(self) -> int:
        return int((time.monotonic() - self._t0) * 1000)

    def stop(self, *_args) -> None:
        """Signal-safe: the loop ends after its current turn."""
        self._stop = True

    def give_up(self, why: str) -> None:
        """A role cannot go on (a connecting endpoint without reconnect lost
        its peer): stop, and exit non-zero with ``why`` (the first one)."""
        if self.fatal is None:
            self.fatal = why
        self._stop = True

    # -- running ----------------------------------------------------------------

    def open(self) -> None:
        """Open the attachments, then every role; on failure close what was
        opened, in reverse, and re-raise (EndpointError: one sentence)."""
        opened: list = []
        try:
            for part in self.attachments:
                try:
                    part.open()
                except EndpointError:
                    raise
                except OSError as exc:
                    raise EndpointError(exc.errno, exc.strerror or str(exc)) from None
                opened.append(part.close)
            for role in self.channels:
                role.open()
                opened.append(role.shutdown)
        except BaseException:
            for undo in reversed(opened):
                undo()
            raise

    def run(self) -> None:
        deadline = self.engine.run_timers(self.now_ms())
        while not self._stop:
            now = self.now_ms()
            wake = min(deadline, self.wake_at_ms())
            wait_s = min(max(wake - now, 0) / 1000.0, MAX_SLEEP_S,
                         self.notifier.due_in(time.monotonic()))
            if self.held_inputs():
                wait_s = min(wait_s, FLOW_STALL_MS / 4000.0)
            if self.poll.max_s and self.engine.holding():
                ready = self.poll.select(self.sel.select, wait_s)
            else:
                ready = self.sel.select(wait_s)
            for key, mask in ready:
                key.data(mask)
            self.balance_inputs()
            now = self.now_ms()
            if now >= deadline:
                deadline = self.scan_for_expired(now)
            mono = time.monotonic()
            for role in self.channels:
                role.maybe_retry(mono)
            for part in self.attachments:
                self.guarded(part, part.tick, mono)
            self.notifier.tick(mono)
            if self.signals is not None and self.signals.pending:
                for signum in self.signals.take():
                    self.on_signal(signum)
            self.on_turn()
            self.log.tick()
            self.after_batch()

    def close(self) -> None:
        """Try, for a moment, to deliver what the engine released, then close
        every role and attachment."""
        self.drain_output()
        for role in self.channels:
            role.shutdown()
        for part in self.attachments:
            part.close()
        self.sel.close()
        self.log.tick(final=True)

    def scan_for_expired(self, now: int) -> int:
        """Run the expired-frame scan, unless the inputs are not being read
        (backpressure) or were resumed less than a cycle ago: a frame is not
        old because its partner waits unread in our own socket buffer.
        Returns when to come back."""
        cycle = self.engine.config.expired_scan_cycle_ms
        if self.paused or now - self.resumed_ms < cycle:
            return now + cycle
        return self.engine.run_timers(now)

    # -- flow control -------------------------------------------------------------

    def held_inputs(self) -> list:
        return [inp for inp in self.inputs if inp.held]

    def balance_inputs(self) -> None:
        """Feed held inputs again: the other side may have made room.  While
        a round of feeds takes something, feed again: two inputs that each
        hold more than flow_high_water frames beyond the other are both held
        after a round that took frames from both, and that is progress, not
        a deadlock.  After a round that took nothing, one still held is
        forced when all are held or the others have stalled."""
        held = self.held_inputs()
        if not held or self.paused:
            return
        for _ in range(BALANCE_ROUNDS_MAX):
            took = 0
            for inp in held:
                took += inp.feed()
            held = self.held_inputs()
            if not held or not took:
                break
        else:
            held = []                     # taking all the while: no force now
        now = self.now_ms()
        for inp in held:
            others = [o for o in self.inputs if o is not inp]
            why = self._force_reason(inp, others, now)
            if why:
                if why == "stopped":
                    inp.stopped_other_at = now
                self.log.event("flow_forced", side=inp.side.name.lower(), why=why)
                inp.feed(force=True)
                break                     # the other one gets its turn first
        self.outdev.write_pending()       # the rest of after_batch ends the turn

    def _force_reason(self, inp, others: list, now: int) -> str | None:
        """Why the held input ``inp`` must be fed anyway, or None to wait:
        - every other input is held too (each waits for the other);
        - since ``inp`` was held, another one took nothing for FLOW_STALL_MS
          while frames of its side are queued: they may wait for frames
          behind the held one;
        - since ``inp`` was held, another one took nothing for FLOW_STOPPED_MS
          (or compare_timeout if shorter): it has stopped, and until it
          takes something again the limits decide (queue_full, table_full).
        A side merely behind is waited for: frames ahead that wait too long
        expire and ask for a checkpoint, as without flow control."""
        if all(o.held for o in others):
            return "both held"
        stopped_ms = min(FLOW_STOPPED_MS, self.engine.config.compare_timeout_ms)
        for o in others:
            if o.held:
                continue
            if inp.stopped_other_at is not None and o.last_fed_ms <= inp.stopped_other_at:
                return "stopped"
            inp.stopped_other_at = None
            quiet = now - max(o.last_fed_ms, inp.held_since)
            if quiet >= stopped_ms:
                return "stopped"
            if quiet >= FLOW_STALL_MS and self.engine.queued(o.side):
                return "stalled"
            return None
        return None

    # -- after every batch ------------------------------------------------------

    def after_batch(self) -> None:
        # Released frames first: nothing below changes them, and a frame's
        # latency ends when it is written.
        self.outdev.write_pending()
        self.on_events(self.engine.drain_events())
        for part in self.attachments:
            self.guarded(part, part.end_batch)
        pending = self.engine.output_pending()
        if not self.paused and pending > OUT_HIGH_WATER:
            self._pause(True, pending)
        elif self.paused and pending < OUT_LOW_WATER:
            self._pause(False, pending)

    def _pause(self, paused: bool, pending: int) -> None:
        if not paused:
            self.resumed_ms = self.now_ms()
        self.paused = paused
        self.log.event("backpressure", on=paused, pending_bytes=pending)
        for inp in self.inputs:
            inp.pause(paused)

    def drain_output(self) -> None:
        """At exit: try, for a moment, to deliver what the engine released."""
        end = time.monotonic() + SHUTDOWN_DRAIN_S
        while self.engine.output_pending() and self.outdev.has_peer and time.monotonic() < end:
            self.outdev.wait_writable(0.05)
            self.outdev.write_pending()
        left = self.engine.output_pending()
        if left:
            # Given up: a record half-sent is cut (counted in lost.outdev_cut);
            # the whole ones left are counted in frames, not only in bytes.
            cut = self.engine.abandon_partial_output()
            out = self.engine.output()
            frames = count_records(out, self.engine.config.vnet_hdr)
            out.release()
            self.undelivered = frames
            self.log.warning("undelivered_at_exit", bytes=left, frames=frames, cut=int(cut))

    def guarded(self, part, call, *args) -> None:
        """Call an attachment (control socket, /metrics, evidence pcap): what
        it raises is logged, never the end of comparing."""
        try:
            call(*args)
        except Exception as exc:   # noqa: BLE001 - nothing around the service may stop it
            self.log.warning("control_error", role=getattr(part, "name", type(part).__name__),
                             error=f"{type(exc).__name__}: {exc}")

    # -- signals ------------------------------------------------------------------

    def on_signal(self, signum: int) -> None:
        """A signal noted since the last turn (colo_xdp.service.signals)."""
        if signum == sigs.REOPEN:
            self.reopen()
        elif signum == sigs.STATUS:
            self.log.once("status", **self.summary_fields())

    def reopen(self) -> None:
        """SIGHUP: reopen the log file and every attachment's file (logrotate)."""
        log_path = logmod.log_file_in_use()
        try:
            logmod.reopen()
        except OSError as exc:
            self.log.warning("reopen_failed", path=log_path, error=exc.strerror or str(exc))
        files = []
        for part in self.attachments:
            reopen = getattr(part, "reopen", None)
            if reopen is not None:
                self.guarded(part, reopen)
                files.append(part.name)
        self.log.event("log_reopened", log=log_path or "-", files=",".join(files) or "-")

    def summary_fields(self) -> dict:
        """The counters as the ``stopped`` and ``status`` lines give them."""
        return {}

    # -- hooks --------------------------------------------------------------------

    def on_events(self, actions: list) -> None:
        """The engine's events of the last batch."""

    def on_turn(self) -> None:
        """Once a turn, after the timers and ticks."""

    def wake_at_ms(self) -> float:
        """When the subclass next needs a turn without any socket ready."""
        return float("inf")


def serve_loop(loop: Loop, on_ready=None, handled: tuple[int, ...] = (
        *sigs.STOP, sigs.REOPEN, sigs.STATUS)) -> Loop:
    """Install the signals, open, announce readiness, run until SIGINT or
    SIGTERM (or ``loop.stop``), close, restore the signals."""
    loop.signals = sigs.Signals(loop, handled)
    loop.signals.install()
    try:
        loop.open()
        if on_ready:
            on_ready(loop)
        loop.notifier.ready(status="ready")
        try:
            loop.run()
        finally:
            loop.notifier.stopping()
            loop.close()
    finally:
        loop.signals.restore()
        loop.notifier.close()
    return loop
