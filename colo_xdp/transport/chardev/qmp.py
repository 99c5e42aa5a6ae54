"""``--qmp``: QEMU's own COLO (KVM or TCG) driven through the primary's monitor.

In QEMU's COLO the compare object lives in the primary QEMU and talks to the
COLO thread in-process.  From outside, the monitor is the way in:

* **Checkpoint now.**  QEMU has no such command, but
  ``migrate-set-parameters`` with ``x-checkpoint-delay`` set to the value it
  already has runs the checkpoint notifier: the COLO thread checkpoints at
  once (the primary's STOP follows in 1.3-1.7 ms) and re-arms its periodic
  timer.  The value is read (``query-migrate-parameters``) right before each
  kick and written back unchanged, so an operator's setting is never
  changed.  One kick is outstanding at a time: requests meanwhile are
  counted (``coalesced``), and a kick that no checkpoint followed within
  ``KICK_RETRY_S`` is sent again (``retries``).
* **Checkpoint done.**  Every checkpoint, periodic ones included, is
  bracketed by the primary's ``STOP`` and ``RESUME`` events.  At STOP the
  primary's vCPUs are stopped, and every frame the guest sent before it is
  already in our input sockets or rings (QEMU writes a frame to the filter's
  chardev, or a tap, before the COLO thread can stop the VM); QEMU writes
  RESUME before the resumed guest can send anything.  So at a STOP while in
  COLO the service reads what its inputs hold and flushes, for as long as no
  RESUME has reached us: nothing the primary produced before the checkpoint
  stays held, nothing it produced after it is released uncompared.  A STOP
  read after its RESUME (a loop late by a whole checkpoint) flushes nothing
  (``late_stops``).  Waiting for RESUME, or asking ``query-status`` first,
  would be too late: frames produced after it could be released uncompared.
  docs/qmp.md has the reasoning.
* **COLO ends.**  ``COLO_EXIT`` on the primary, or the monitor reporting
  COLO mode ``none`` after it was ``primary``: the service fails over.

The monitor may be absent at start (``reconnect=``), restarted, or not in
COLO yet (polled every ``COLO_POLL_S`` and said once); a peer that is not a
QMP monitor is one warning and a reconnect later, never a crash.
"""
from __future__ import annotations

import socket
import time
from typing import TYPE_CHECKING, Callable

from colo_xdp.proto.qmp import Event, Greeting, QmpClient, QmpError, Reply
from colo_xdp.transport.chardev.endpoint import Spec
from colo_xdp.transport.chardev.roles import Dialogue

if TYPE_CHECKING:
    from colo_xdp.service.compare import CompareService

KICK_RETRY_S = 2.0          # no checkpoint this long after a kick: kick again
COLO_POLL_S = 1.0           # how often COLO's state is asked for
OUT_MAX = 64 * 1024         # command bytes kept for a monitor that does not read
RETRY_NOT_QMP_S = 5.0       # a peer that is not a monitor: try again this much later


class QmpMonitor(Dialogue):
    """The primary QEMU's QMP monitor as a role of the compare service."""

    def __init__(self, svc: "CompareService", spec: Spec):
        super().__init__(svc, "qmp", spec)
        self.qmp = QmpClient()
        self.ready = False                  # capabilities negotiated
        self.version = ""
        self.colo_mode = "unknown"          # primary | secondary | none | unknown
        self.was_primary = False
        self.waiting_said = False
        self.next_poll = 0.0
        # id -> what to do with the reply
        self.pending: dict[int, Callable[[Reply], None]] = {}
        # The checkpoint being asked for: when the first request came, when
        # the kick went out; None when none is outstanding.
        self.requested_at: float | None = None
        self.kicked_at: float | None = None
        self.counts = {"requests": 0, "kicks": 0, "coalesced": 0, "retries": 0,
                       "undelivered": 0, "checkpoints": 0, "late_stops": 0,
                       "not_checkpoints": 0}
        self.stop_seen = 0.0                  # when the last STOP event was read
        self.later: list = []                 # messages read behind the one being handled

    # -- the connection ----------------------------------------------------------

    def connected(self) -> None:
        self.qmp = QmpClient()
        self.out.clear()
        self.pending.clear()
        self.ready = False
        self.listen_to_peer()

    def disconnected(self) -> None:
        self.ready = False
        self.out.clear()
        self.pending.clear()
        self.kicked_at = None
        self.colo_mode = "unknown"

    def on_data(self, data: bytes) -> None:
        try:
            messages = self.qmp.receive(data)
        except QmpError as exc:
            self.svc.log.warning("qmp_protocol_error", endpoint=self.spec, error=str(exc))
            self.lost("not a QMP monitor", reconnect_now=True)    # retried, later:
            if not self.spec.server:
                self.retry_at = time.monotonic() + max(self.spec.reconnect or 0, RETRY_NOT_QMP_S)
            return
        for i, msg in enumerate(messages):
            self.later = messages[i + 1:]
            if isinstance(msg, Greeting):
                self.version = msg.version
                self._send("qmp_capabilities", None, self._negotiated)
            elif isinstance(msg, Reply):
                handler = self.pending.pop(msg.id, None)
                if handler:
                    handler(msg)
            elif isinstance(msg, Event):
                self._event(msg)
            if not self.sock:           # a handler lost the connection
                return

    def _send(self, name: str, arguments: dict | None,
              on_reply: Callable[[Reply], None]) -> None:
        if not self.sock:
            return
        if len(self.out) > OUT_MAX:
            self.lost("the monitor does not read its commands")
            return
        cmd = self.qmp.command(name, arguments)
        self.pending[cmd.id] = on_reply
        self.send(cmd.data)

    def _negotiated(self, reply: Reply) -> None:
        if not reply.ok:
            self.svc.log.warning("qmp_protocol_error", endpoint=self.spec,
                                 error=f"qmp_capabilities refused: {reply.error_desc}")
            self.lost("capabilities refused")
            return
        self.ready = True
        self.svc.log.event("qmp_connected", endpoint=self.spec, qemu=self.version or "?")
        self._poll_colo()
        if self.requested_at is not None:        # asked for while we had no monitor
            self._kick()

    # -- COLO's state -----------------------------------------------------------------

    def maybe_retry(self, now: float) -> None:
        super().maybe_retry(now)
        if not self.ready:
            return
        if now >= self.next_poll:
            self._poll_colo()
        if self.kicked_at is not None and now - self.kicked_at > KICK_RETRY_S:
            self.counts["retries"] += 1
            self.svc.log.warning("qmp_checkpoint_retry", waited_s=round(now - self.kicked_at, 3))
            self.kicked_at = None
            self._kick()

    def _poll_colo(self) -> None:
        self.next_poll = time.monotonic() + COLO_POLL_S
        self._send("query-colo-status", None, self._colo_status)

    def _colo_status(self, reply: Reply) -> None:
        if not reply.ok:
            if not self.waiting_said:
                self.waiting_said = True
                self.svc.log.warning("qmp_no_colo", error=reply.error_desc)
            return
        mode = str(reply.value.get("mode", "none")) if isinstance(reply.value, dict) else "none"
        if mode == self.colo_mode:
            return
        self.colo_mode = mode
        if mode == "primary":
            self.was_primary = True
            self.waiting_said = False
            self.svc.log.event("qmp_colo_active", mode=mode)
            if self.requested_at is not None and self.kicked_at is None:
                self._kick()
        elif self.was_primary:
            reason = reply.value.get("reason", "?") if isinstance(reply.value, dict) else "?"
            self._colo_ended(f"the primary left COLO (mode {mode}, reason {reason})")
        elif not self.waiting_said:
            self.waiting_said = True
            self.svc.log.event("qmp_waiting_for_colo", mode=mode)

    def _colo_ended(self, why: str) -> None:
        self.was_primary = False
        self.requested_at = self.kicked_at = None
        self.svc.failover(source="qmp", why=why)

    # -- checkpoints ----------------------------------------------------------------------

    def request_checkpoint(self) -> None:
        """The engine asked for a checkpoint."""
        self.counts["requests"] += 1
        if self.requested_at is not None:
            self.counts["coalesced"] += 1
            return
        self.requested_at = time.monotonic()
        if not self.ready or self.colo_mode != "primary":
            self.counts["undelivered"] += 1
            return                               # sent once the monitor and COLO are there
        self._kick()

    def _kick(self) -> None:
        self.kicked_at = time.monotonic()
        self.counts["kicks"] += 1
        self._send("query-migrate-parameters", None, self._set_delay)

    def _set_delay(self, reply: Reply) -> None:
        delay = reply.value.get("x-checkpoint-delay") if reply.ok and isinstance(
            reply.value, dict) else None
        if not isinstance(delay, int) or isinstance(delay, bool):
            self.svc.log.warning("qmp_checkpoint_failed",
                                 error=reply.error_desc or "no x-checkpoint-delay in "
                                 "query-migrate-parameters")
            return
        self._send("migrate-set-parameters", {"x-checkpoint-delay": delay}, self._kicked)

    def _kicked(self, reply: Reply) -> None:
        if not reply.ok:
            self.svc.log.warning("qmp_checkpoint_failed", error=reply.error_desc)

    def _event(self, event: Event) -> None:
        if event.name == "STOP":
            self.stop_seen = time.monotonic()
            if self.colo_mode == "primary":
                self._checkpoint_stop()
            # Only to say so when it was not a checkpoint's (run state colo,
            # or running again already): an operator's stop, an error.
            self._send("query-status", None, self._stopped)
        elif event.name == "COLO_EXIT":
            mode, reason = event.data.get("mode", "?"), event.data.get("reason", "?")
            if mode == "primary" or self.was_primary:
                self._colo_ended(f"COLO_EXIT mode={mode} reason={reason}")

    def resumed(self) -> bool:
        """Has the primary's RESUME reached us, read or still in the socket?
        QEMU writes RESUME before the resumed guest can send a frame, so while
        this is False every frame in our inputs is from before the stop."""
        if any(isinstance(m, Event) and m.name == "RESUME" for m in self.later):
            return True
        if self.qmp.buffered_has(b'"RESUME"'):
            return True
        try:
            peek = self.sock.recv(65536, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            return True                          # cannot tell: take the safe side
        return b'"RESUME"' in peek

    def _checkpoint_stop(self) -> None:
        fields = {}
        if self.requested_at is not None:      # the checkpoint we asked for
            fields["request_to_stop_ms"] = round((self.stop_seen - self.requested_at) * 1000, 3)
        self.requested_at = self.kicked_at = None
        if self.svc.checkpoint_at_stop(self.resumed, **fields):
            self.counts["checkpoints"] += 1
        else:
            self.counts["late_stops"] += 1

    def _stopped(self, reply: Reply) -> None:
        status = reply.value.get("status") if reply.ok and isinstance(reply.value, dict) else None
        if status not in ("colo", "running"):
            self.counts["not_checkpoints"] += 1
            self.svc.log.warning("qmp_vm_stopped", status=status or "?",
                                 colo_mode=self.colo_mode)

    def stats(self) -> dict:
        return {"connected": self.ready, "colo_mode": self.colo_mode,
                "outstanding": self.requested_at is not None, **self.counts}
