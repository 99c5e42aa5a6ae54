"""Polling before sleeping while frames are held (colo_xdp.service.busypoll):
the window grows while input comes within the bound of going to sleep,
halves when it does not, and a poll that finds input never sleeps; then the
service end to end: a pair whose second copy follows the first is caught by
polling, and ``--busy-poll 0`` never polls."""
from __future__ import annotations

import time

import pytest

from colo_xdp.service import busypoll
from colo_xdp.service.busypoll import GROW_FROM_S, AdaptivePoll
from test_control import start, stats
from test_service import connect_all, udp

READY = [("key", 1)]


class Clock:
    """The module's ``time``: monotonic and thread_time, moved by the fake
    selector (a poll runs on the CPU; a sleep does not)."""

    def __init__(self):
        self.now = 100.0
        self.cpu = 5.0

    def monotonic(self) -> float:
        return self.now

    def thread_time(self) -> float:
        return self.cpu


class Selector:
    """select(timeout): input comes ``after`` seconds from the first call of
    a wait; polls (timeout 0) cost ``poll_cost`` each."""

    def __init__(self, clock: Clock, poll_cost: float = 1e-6):
        self.clock, self.poll_cost = clock, poll_cost
        self.steal_every: int | None = None     # the CPU taken away every so many polls
        self.polls = 0
        self.after: float | None = None
        self.began: float | None = None
        self.calls: list[float] = []

    def wait(self, after: float | None) -> None:
        self.after, self.began = after, self.clock.now

    def __call__(self, timeout: float):
        self.calls.append(timeout)
        due = None if self.after is None else self.began + self.after
        if timeout == 0:
            self.polls += 1
            if self.steal_every and self.polls % self.steal_every == 0:
                self.clock.now += 0.002          # preempted for 2 ms
            if due is not None and self.clock.now >= due:
                return READY
            self.clock.now += self.poll_cost
            self.clock.cpu += self.poll_cost
            return []
        if due is not None and due <= self.clock.now + timeout:
            self.clock.now = max(self.clock.now, due)
            return READY
        self.clock.now += timeout
        return []


@pytest.fixture
def clock(monkeypatch):
    c = Clock()
    monkeypatch.setattr(busypoll, "time", c)
    return c


def test_off_means_one_sleeping_select(clock):
    poll, sel = AdaptivePoll(0.0), Selector(clock)
    sel.wait(0.0001)
    assert poll.select(sel, 1.0) == READY
    assert sel.calls == [1.0] and poll.window_s == 0 and poll.hits == poll.misses == 0


def test_the_window_grows_to_cover_a_partner_that_comes_soon(clock):
    poll, sel = AdaptivePoll(500e-6), Selector(clock)
    windows = []
    for _ in range(12):
        sel.wait(260e-6)                     # the partner, 0.26 ms after going to wait
        sel.calls.clear()
        assert poll.select(sel, 1.0) == READY
        windows.append(poll.window_s)
    assert windows[0] == GROW_FROM_S
    assert windows[-1] == 500e-6             # grown to the bound, not past it
    assert poll.hits >= 3                    # once wide enough, polling found it
    assert all(t == 0 for t in sel.calls)    # ... and never slept


def test_a_late_partner_shrinks_the_window_to_nothing(clock):
    poll, sel = AdaptivePoll(500e-6), Selector(clock)
    poll.window_s = 500e-6
    for _ in range(12):
        sel.wait(0.05)                       # 50 ms: a checkpoint, a mute secondary
        assert poll.select(sel, 1.0) == READY
    assert poll.window_s == 0
    misses = poll.misses
    sel.wait(0.05)
    sel.calls.clear()
    poll.select(sel, 1.0)
    assert sel.calls == [1.0] and poll.misses == misses   # no poll at all now


def test_a_lone_interruption_is_no_reason_to_stop(clock):
    poll, sel = AdaptivePoll(500e-6), Selector(clock)
    poll.window_s = 500e-6
    sel.steal_every = 10                     # once: an interrupt, a kernel thread
    sel.wait(300e-6)
    assert poll.select(sel, 1.0) == READY
    sel.steal_every = None
    for _ in range(200):
        sel.wait(300e-6)
        assert poll.select(sel, 1.0) == READY
    assert poll.contended == 0 and poll.window_s == 500e-6


def test_a_shared_cpu_stops_polling_for_a_while(clock):
    poll, sel = AdaptivePoll(500e-6), Selector(clock)
    poll.window_s = 500e-6
    sel.steal_every = 100                    # another process takes turns on our CPU
    for _ in range(60):
        sel.wait(300e-6)
        assert poll.select(sel, 1.0) == READY
        if poll.contended:
            break
    assert poll.contended == 1 and poll.window_s == 0
    sel.steal_every = None
    sel.wait(100e-6)
    sel.calls.clear()
    poll.select(sel, 1.0)
    assert sel.calls == [1.0]                # backing off: sleeps at once, does not grow
    assert poll.window_s == 0
    clock.now += busypoll.CONTENDED_BACKOFF_S
    sel.wait(100e-6)
    poll.select(sel, 1.0)
    assert poll.window_s == GROW_FROM_S      # after the back-off it grows again


def test_a_timeout_is_kept_while_polling(clock):
    poll, sel = AdaptivePoll(500e-6), Selector(clock)
    poll.window_s = 500e-6
    sel.wait(None)                           # nothing comes
    began = clock.now
    assert poll.select(sel, 0.002) == []
    assert clock.now - began == pytest.approx(0.002, abs=2e-6)
    assert poll.misses == 1


def _pairs(out, pin, sin, n: int, gap_s: float) -> None:
    for i in range(n):
        frame = udp(b"poll %03d" % i)
        sin.send(frame)
        time.sleep(gap_s)
        pin.send(frame)
        assert out.records(1)[0].frame == frame


def test_the_service_catches_the_second_copy_by_polling(lab):
    _, ctl = start(lab, "--busy-poll", "50000")
    out, _, pin, sin = connect_all(lab)
    _pairs(out, pin, sin, 40, 0.001)
    snap = stats(ctl)["busy_poll"]
    assert snap["max_us"] == 50000
    # It polled: a poll found the copy, or (a busy host) found the CPU shared.
    assert snap["hits"] or snap["contended"], snap


def test_busy_poll_0_never_polls(lab):
    _, ctl = start(lab, "--busy-poll", "0")
    out, _, pin, sin = connect_all(lab)
    _pairs(out, pin, sin, 20, 0.001)
    assert stats(ctl)["busy_poll"] == {"max_us": 0, "window_us": 0, "hits": 0, "misses": 0,
                                       "contended": 0}
