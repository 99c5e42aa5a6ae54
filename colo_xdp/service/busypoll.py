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

The cost: CPU time spent polling, at most ``max_s`` each time the engine
holds frames; the counters say how often a poll found its input
(``hits``) and how often it ran out and slept (``misses``).
"""
from __future__ import annotations

import time
from typing import Callable

GROW_FROM_S = 4e-6            # the first window, as QEMU's first poll_ns
DEFAULT_BUSY_POLL_US = 500    # the window's bound (colo-xdp compare --busy-poll)


class AdaptivePoll:
    """The window the loop polls for before sleeping (0: sleep at once)."""

    def __init__(self, max_s: float):
        self.max_s = max_s
        self.window_s = 0.0
        self.hits = 0
        self.misses = 0

    def select(self, select: Callable[[float], list], wait_s: float) -> list:
        """``select(timeout)``'s ready list within ``wait_s``, polled for the
        window first; the window adapts to when input came."""
        if wait_s <= 0 or not self.max_s:
            return select(wait_s)
        began = time.monotonic()
        if self.window_s:
            polled_until = began + min(self.window_s, wait_s)
            while True:
                ready = select(0)
                if ready:
                    self.hits += 1
                    return ready
                if time.monotonic() >= polled_until:
                    break
            self.misses += 1
        ready = select(max(began + wait_s - time.monotonic(), 0.0))
        if ready and time.monotonic() - began <= self.max_s:
            self.window_s = min(max(self.window_s * 2, GROW_FROM_S), self.max_s)
        else:
            self.window_s /= 2
            if self.window_s < GROW_FROM_S:
                self.window_s = 0.0
        return ready

    def stats(self) -> dict:
        return {"max_us": round(self.max_s * 1e6), "window_us": round(self.window_s * 1e6),
                "hits": self.hits, "misses": self.misses}
