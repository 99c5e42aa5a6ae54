"""A real COLO pair with QEMU's own in-process colo-compare (the reference).

One pair for the module (booting a TCG guest under COLO is the slow part);
the tests run in file order and the last one kills the primary.  The
secondary's fw_cfg switch is on: it answers requests starting with '!'
differently (flipped case, same length) after every checkpoint.  Run with
``pytest -s`` to see the figures.
"""
from __future__ import annotations

import socket
import statistics
import time

import pytest

from colopair import ColoPair

pytestmark = pytest.mark.colo

REPLY_TIMEOUT = 5.0


def ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


def spread(values: list[float]) -> str:
    return (f"min={min(values):.1f} median={statistics.median(values):.1f} "
            f"max={max(values):.1f} ms (n={len(values)})")


def ask(client: socket.socket, payload: bytes) -> tuple[bytes, float, float]:
    """Send payload; the reply, the send time and the receive time."""
    client.settimeout(REPLY_TIMEOUT)
    t0 = time.monotonic()
    client.send(payload)
    reply = client.recv(65536)
    return reply, t0, time.monotonic()


def ask_patiently(client: socket.socket, payload: bytes, tries: int = 3) -> bytes | None:
    """The reply to ``payload``, sent again (UDP) when none came in 5 s;
    replies to earlier copies or requests are passed over; None after
    ``tries`` sends.  For tests that count checkpoints rather than time
    replies: a TCG pair checkpointed every few hundred ms under load can
    lose a datagram (QEMU's colo-compare as well as colo-xdp)."""
    want = b"echo:" + payload
    for _ in range(tries):
        client.settimeout(REPLY_TIMEOUT)
        client.send(payload)
        deadline = time.monotonic() + REPLY_TIMEOUT
        try:
            while time.monotonic() < deadline:
                if client.recv(65536) == want:
                    return want
        except socket.timeout:
            continue
    return None


def drain(client: socket.socket, quiet: float = 0.2) -> None:
    """Drop late replies to earlier attempts."""
    client.settimeout(quiet)
    try:
        while True:
            client.recv(65536)
    except socket.timeout:
        pass


def test_matching_requests_are_answered_without_checkpoints(reference_pair: ColoPair):
    pair = reference_pair
    client = pair.client()
    t_start = time.monotonic()
    rtts = []
    for i in range(30):
        reply, t0, t1 = ask(client, b"request %d" % i)
        assert reply == b"echo:request %d" % i, pair.lab.logs()
        rtts.append(ms(t1 - t0))
    assert pair.checkpoints(t_start) == [], \
        f"matching replies caused a checkpoint:\n{pair.lab.logs()}"
    print(f"\nmatching round trip: {spread(rtts)}")


def test_divergence_gets_a_checkpoint_and_the_primarys_reply(reference_pair: ColoPair):
    """The fw_cfg switch diverges the secondary again after every checkpoint."""
    pair = reference_pair
    client = pair.client()
    to_stop, reply_delay, durations = [], [], []
    for i in range(3):
        payload = b"!Diverge %d now" % i
        reply, t0, t1 = ask(client, payload)
        assert reply == b"echo:" + payload, f"got {reply!r}: not the primary's reply"
        cp = pair.wait_checkpoint(t0)
        assert t0 < cp.stop <= t1, "the reply left before the checkpoint began"
        to_stop.append(ms(cp.stop - t0))
        reply_delay.append(ms(t1 - t0))
        durations.append(cp.ms)
        # the pair is in step again: matching requests pass untouched
        reply, _, _ = ask(client, b"after %d" % i)
        assert reply == b"echo:after %d" % i
    print(f"\ndivergence: client send to primary STOP: {spread(to_stop)}"
          f"\ndivergence: reply delay: {spread(reply_delay)}"
          f"\ndivergence: checkpoint STOP->RESUME: {spread(durations)}")


def test_checkpoint_requested_from_outside(reference_pair: ColoPair):
    """migrate-set-parameters x-checkpoint-delay=<current> checkpoints now."""
    pair = reference_pair
    to_stop, durations = [], []
    for _ in range(3):
        t0 = pair.request_checkpoint()
        cp = pair.wait_checkpoint(t0)
        to_stop.append(ms(cp.stop - t0))
        durations.append(cp.ms)
    print(f"\nQMP request to STOP: {spread(to_stop)}"
          f"\nrequested checkpoint STOP->RESUME: {spread(durations)}")


def test_periodic_checkpoints(reference_pair: ColoPair):
    pair = reference_pair
    client = pair.client()
    delay_ms = 500
    pair.set_checkpoint_delay(delay_ms)
    t0 = time.monotonic()
    try:
        deadline = t0 + 10
        i = 0
        while len(pair.checkpoints(t0)) < 5:
            assert time.monotonic() < deadline, f"only {len(pair.checkpoints(t0))} checkpoints"
            assert ask_patiently(client, b"periodic %d" % i), \
                f"no reply to periodic {i} in 3 tries:\n{pair.lab.logs()}"
            i += 1
            time.sleep(0.05)
        cps = pair.checkpoints(t0)
    finally:
        pair.set_checkpoint_delay(60000)
    gaps = [ms(b.stop - a.resume) for a, b in zip(cps, cps[1:])]
    print(f"\nperiodic (x-checkpoint-delay={delay_ms}): STOP->RESUME: "
          f"{spread([c.ms for c in cps])}; RESUME->next STOP: {spread(gaps)}; "
          f"{i} requests answered meanwhile")


def test_failover_serves_the_client_again(reference_pair: ColoPair):
    pair = reference_pair
    client = pair.client()
    t_kill = pair.failover()
    pair.qmp_s.wait_event("COLO_EXIT", t_kill)
    t_reply = pair.first_reply_after(t_kill)
    failover_ms = ms(t_reply - t_kill)
    pair.timings["failover_ms"] = failover_ms
    print(f"\nfailover: primary killed to first reply from the secondary: {failover_ms} ms "
          f"(x-colo-lost-heartbeat took {pair.timings['lost_heartbeat_ms']} ms)")
    drain(client)
    for i in range(5):
        reply, _, _ = ask(client, b"served %d" % i)
        assert reply == b"echo:served %d" % i
