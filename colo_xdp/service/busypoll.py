"""Polling before sleeping while frames wait for their partner.

A primary frame is held until the secondary's copy comes (or the other way
round), and that copy usually follows within microseconds to a fraction of
a millisecond.  Sleeping in the selector costs a wakeup when it comes: on
the machines measured, tens of microseconds of a frame's latency, more than
the whole turn that releases it.  So while the engine holds frames, the loop
first polls its sockets without sleeping, for a window that adapts as
QEMU's iothreads adapt theirs (``poll-max-ns``): it grows (doubling, from
``GROW_FROM_S``) while what the loop waits for comes within ``max_s`` of
going to sleep, and halves when it did not (the partner is late: a mute
secondary, a checkpoint) so that a wait polling cannot shorten costs no CPU.
With nothing held the loop sleeps at once: an idle service polls never.

Polling pays only on a CPU of our own.  On one we share (with the guests'
vCPUs, say), the scheduler takes the CPU away in the middle of a poll, the
frame waits for our next time slice, milliseconds, and the partner we
wait for may be the very process we keep off the CPU.  So the time polled
is watched in samples of ``CONTENDED_SAMPLE_S``: a sample in which the CPU
was taken from us (wall time past our ``thread_time``) for more than
``CONTENDED_SHARE`` of it stops polling for ``CONTENDED_BACKOFF_S``, then
the window grows again from nothing.  A lone interruption (an interrupt, a
kernel thread's turn) is no reason to stop.

The cost: CPU time spent polling, at most ``max_s`` each time the engine
holds frames; the counters say how often a poll found its input
(``hits``), how often it ran out and slept (``misses``) and how often the
CPU was found shared (``contended``).
"""
from __future__ import annotations

import time
from typing import Callable

GROW_FROM_S = 4e-6            # the first window, as QEMU's first poll_ns
DEFAULT_BUSY_POLL_US = 500    # the window's bound (colo-xdp compare --busy-poll)
CONTENDED_SAMPLE_S = 0.05     # polling time judged at once
CONTENDED_SHARE = 0.25        # off the CPU for more of a sample than this: it is shared
CONTENDED_BACKOFF_S = 1.0     # ... and then no polling for this long


class AdaptivePoll:
    """The window the loop polls for before sleeping (0: sleep at once)."""

    def __init__(self, max_s: float):
        self.max_s = max_s
        self.window_s = 0.0
        self.hits = 0
        self.misses = 0
        self.contended = 0
        self.backoff_until = 0.0
        self._polled_s = 0.0          # the sample so far: wall time polled,
        self._stolen_s = 0.0          # ... and of it, off the CPU

    def select(self, select: Callable[[float], list], wait_s: float) -> list:
        """``select(timeout)``'s ready list within ``wait_s``, polled for the
        window first; the window adapts to when input came."""
        began = time.monotonic()
        if wait_s <= 0 or not self.max_s or began < self.backoff_until:
            return select(wait_s)
        if self.window_s:
            ready = self._poll(select, began, min(self.window_s, wait_s))
            if ready:
                self.hits += 1
                return ready
            self.misses += 1
            if not self.window_s:             # contended: no growing either
                return select(max(began + wait_s - time.monotonic(), 0.0))
        ready = select(max(began + wait_s - time.monotonic(), 0.0))
        if ready and time.monotonic() - began <= self.max_s:
            self.window_s = min(max(self.window_s * 2, GROW_FROM_S), self.max_s)
        else:
            self.window_s /= 2
            if self.window_s < GROW_FROM_S:
                self.window_s = 0.0
        return ready

    def _poll(self, select: Callable[[float], list], began: float, window_s: float) -> list:
        """select(0) until input comes or ``window_s`` has passed; then judge
        the sample (a shared CPU stops polling for CONTENDED_BACKOFF_S)."""
        on_cpu = time.thread_time()
        while True:
            ready = select(0)
            now = time.monotonic()
            if ready or now - began >= window_s:
                break
        wall = now - began
        self._polled_s += wall
        self._stolen_s += max(wall - (time.thread_time() - on_cpu), 0.0)
        if self._polled_s >= CONTENDED_SAMPLE_S:
            if self._stolen_s > CONTENDED_SHARE * self._polled_s:
                self.contended += 1
                self.window_s = 0.0
                self.backoff_until = now + CONTENDED_BACKOFF_S
            self._polled_s = self._stolen_s = 0.0
        return ready

    def stats(self) -> dict:
        return {"max_us": round(self.max_s * 1e6), "window_us": round(self.window_s * 1e6),
                "hits": self.hits, "misses": self.misses, "contended": self.contended}
