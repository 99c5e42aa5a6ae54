"""The COLO pair with an external comparator: colo-xdp's chardev mode where
QEMU's -object colo-compare would be (wiring: tests/colo/colopair.py).

colo-xdp has no QMP link yet; its notify_dev requests are turned into QMP
checkpoint requests by the kit (ColoPair.serve_notify).
"""
from __future__ import annotations

import time

import pytest

from colopair import ColoPair
from test_reference import ask, ms, spread

pytestmark = pytest.mark.colo


def test_matching_replies_flow_through_colo_xdp(external_pair: ColoPair):
    pair = external_pair
    client = pair.client()
    t_start = time.monotonic()
    rtts = []
    for i in range(20):
        reply, t0, t1 = ask(client, b"request %d" % i)
        assert reply == b"echo:request %d" % i, pair.lab.logs()
        rtts.append(ms(t1 - t0))
    assert [t for t in pair.notify_seen if t >= t_start] == [], "matching replies: a checkpoint request"
    print(f"\nexternal comparator, matching round trip: {spread(rtts)}")


def test_divergence_through_colo_xdp_and_qmp(external_pair: ColoPair):
    pair = external_pair
    client = pair.client()
    to_stop, reply_delay = [], []
    for i in range(2):
        payload = b"!Diverge %d now" % i
        reply, t0, t1 = ask(client, payload)
        assert reply == b"echo:" + payload, f"got {reply!r}: not the primary's reply"
        cp = pair.wait_checkpoint(t0)
        assert t0 < cp.stop <= t1
        to_stop.append(ms(cp.stop - t0))
        reply_delay.append(ms(t1 - t0))
        reply, _, _ = ask(client, b"after %d" % i)
        assert reply == b"echo:after %d" % i
    print(f"\nexternal comparator, divergence: client send to STOP: {spread(to_stop)}"
          f"\nexternal comparator, divergence: reply delay: {spread(reply_delay)}")
    log = pair.lab.stop(pair.cx)
    print(log.strip().splitlines()[-1])
