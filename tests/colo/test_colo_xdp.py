"""colo-xdp in a real QEMU COLO pair, driving QEMU's own COLO through the
primary's QMP monitor (``--qmp``), in both modes:

``chardev``  where ``-object colo-compare`` would be, behind QEMU's
             filter-mirror/redirector/rewriter (tests/colo/colopair.py,
             ``external`` wiring);
``xdp``      on the guests' taps, released frames sent by AF_XDP.

The same assertions as test_reference.py (QEMU's in-process colo-compare),
plus what colo-xdp itself counts.  One pair per mode for the module; the
tests run in file order and the last one fails over.  ``pytest -s`` prints
the figures.
"""
from __future__ import annotations

import socket
import time

import pytest

from colo_xdp.cli.ctl_client import ControlClient
from colopair import ColoPair
from test_reference import ask as ask_reference
from test_reference import ask_patiently as ask_patiently_reference
from test_reference import drain, ms, spread

pytestmark = pytest.mark.colo

MODES = ("chardev_pair", "xdp_pair")
STOP_SKEW_S = 0.05          # the kit's and colo-xdp's monitors read one STOP apart


@pytest.fixture(params=MODES, scope="module")
def pair(request) -> ColoPair:
    ask.pair = request.getfixturevalue(request.param)
    return ask.pair


def ask(client: socket.socket, payload: bytes) -> tuple[bytes, float, float]:
    """test_reference's ask; a reply that never comes fails with the logs."""
    try:
        return ask_reference(client, payload)
    except socket.timeout:
        pair = ask.pair
        pytest.fail(f"no reply to {payload!r}; colo-xdp stats: {stats(pair)}\n"
                    f"{pair.lab.logs()}")


def ask_patiently(client: socket.socket, payload: bytes) -> bytes:
    """test_reference's ask_patiently; no reply in 3 tries fails with the logs."""
    reply = ask_patiently_reference(client, payload)
    if reply is None:
        pair = ask.pair
        pytest.fail(f"no reply to {payload!r} in 3 tries; colo-xdp stats: {stats(pair)}\n"
                    f"{pair.lab.logs()}")
    return reply


def stats(pair: ColoPair) -> dict:
    with ControlClient.connect(path=pair.cx_ctl, timeout=10) as client:
        return client.request({"cmd": "stats"})["stats"]


def settled(pair: ColoPair, timeout: float = 5.0) -> dict:
    """Stats once nothing is held (late frames of the last exchange compared)."""
    deadline = time.monotonic() + timeout
    while True:
        s = stats(pair)
        if not s["held"]["primary"] or time.monotonic() > deadline:
            return s
        time.sleep(0.05)


def test_matching_requests_are_answered_without_checkpoints(pair: ColoPair):
    client = pair.client()
    before = stats(pair)
    t_start = time.monotonic()
    rtts = []
    for i in range(30):
        reply, t0, t1 = ask(client, b"request %d" % i)
        assert reply == b"echo:request %d" % i, pair.lab.logs()
        rtts.append(ms(t1 - t0))
    after = settled(pair)
    assert pair.checkpoints(t_start) == [], f"a checkpoint for matching replies:\n{pair.lab.logs()}"
    assert after["pairs"]["matched"] - before["pairs"]["matched"] >= 30
    assert after["checkpoint_requests"] == before["checkpoint_requests"]
    print(f"\n{pair.comparator}: matching round trip: {spread(rtts)}")


def test_divergence_gets_a_checkpoint_and_the_primarys_reply(pair: ColoPair):
    """colo-xdp's request reaches QEMU by QMP; the checkpoint's STOP flushes."""
    client = pair.client()
    before = stats(pair)
    to_stop, reply_delay = [], []
    for i in range(3):
        payload = b"!Diverge %d now" % i
        reply, t0, t1 = ask(client, payload)
        assert reply == b"echo:" + payload, f"got {reply!r}: not the primary's reply"
        cp = pair.wait_checkpoint(t0)
        # colo-xdp flushes at the STOP it reads on its own monitor: the kit
        # may read the same STOP on its monitor a little after the reply.
        assert t0 < cp.stop <= t1 + STOP_SKEW_S, "the reply left before the checkpoint began"
        to_stop.append(ms(cp.stop - t0))
        reply_delay.append(ms(t1 - t0))
        reply, _, _ = ask(client, b"after %d" % i)       # in step again
        assert reply == b"echo:after %d" % i
    after = settled(pair)
    log = pair.cx.log
    request_to_stop = [float(w.split("=")[1]) for line in log.splitlines()
                       if "checkpoint_done source=qmp" in line
                       for w in line.split() if w.startswith("request_to_stop_ms=")]
    assert len(request_to_stop) >= 3, log[-3000:]
    assert after["checkpoint_requests"]["mismatch"] - before["checkpoint_requests"]["mismatch"] >= 3
    # A kick for each divergence, none without a request: on a loaded host a
    # reply can also wait past the compare timeout (a request of its own), and
    # a STOP slower than KICK_RETRY_S is kicked again (a retry).
    kicks = after["qmp"]["kicks"] - before["qmp"]["kicks"]
    retries = after["qmp"]["retries"] - before["qmp"]["retries"]
    requests = {reason: n - before["checkpoint_requests"].get(reason, 0)
                for reason, n in after["checkpoint_requests"].items()}
    assert 3 <= kicks - retries <= sum(requests.values()), \
        f"{kicks} kicks ({retries} retries) for requests {requests}"
    assert after["released"]["flushed"] - before["released"]["flushed"] >= 3   # the replies
    print(f"\n{pair.comparator}: divergence: client send to primary STOP: {spread(to_stop)}"
          f"\n{pair.comparator}: divergence: colo-xdp request to STOP: "
          f"{spread(request_to_stop[-3:])}"
          f"\n{pair.comparator}: divergence: reply delay: {spread(reply_delay)}")


def test_every_checkpoint_qemu_takes_is_counted(pair: ColoPair):
    """Periodic checkpoints (QEMU's own timer) flush colo-xdp too."""
    client = pair.client()
    s = stats(pair)
    before, late_before = s["checkpoints_done_by_source"].get("qmp", 0), s["qmp"]["late_stops"]
    t0 = time.monotonic()
    pair.set_checkpoint_delay(400)          # setting it checkpoints too
    try:
        i = 0
        while len(pair.checkpoints(t0)) < 4:
            assert time.monotonic() < t0 + 30, "QEMU took fewer checkpoints than asked"
            ask_patiently(client, b"periodic %d" % i)
            i += 1
            time.sleep(0.05)
    finally:
        pair.set_checkpoint_delay(60000)
    # the STOP the reset causes, and its RESUME: then nothing is under way
    last_stop = pair.qmp_p.wait_event("STOP", time.monotonic() - 0.01)
    pair.qmp_p.wait_event("RESUME", last_stop.t)
    time.sleep(0.1)
    taken = len(pair.qmp_p.events_named("STOP", t0))
    assert taken == len(pair.checkpoints(t0))
    s = stats(pair)
    counted = s["checkpoints_done_by_source"]["qmp"] - before
    late = s["qmp"]["late_stops"] - late_before
    assert counted + late == taken, f"QEMU took {taken} checkpoints, colo-xdp counted " \
                                    f"{counted} and {late} STOPs read after their RESUME"
    print(f"\n{pair.comparator}: periodic: QEMU took {taken}, colo-xdp counted {counted} "
          f"(+{late} read late)")


def test_nothing_is_held_at_the_end(pair: ColoPair):
    client = pair.client()
    drain(client)
    s = settled(pair)
    assert s["held"] == {"primary": 0, "secondary": 0}, s["held"]
    assert s["qmp"]["connected"] and s["qmp"]["colo_mode"] == "primary"


def test_failover_serves_the_client_again(pair: ColoPair):
    """The primary dies.  In XDP mode colo-xdp dies with it (they share the
    primary's host), which takes its program off the secondary's tap as
    removing the secondary's redirectors does in chardev mode."""
    client = pair.client()
    t_kill = pair.failover(*([pair.cx] if pair.comparator == "xdp" else []))
    pair.qmp_s.wait_event("COLO_EXIT", t_kill)
    t_reply = pair.first_reply_after(t_kill)
    failover_ms = ms(t_reply - t_kill)
    print(f"\n{pair.comparator}: failover: primary killed to first reply: {failover_ms} ms")
    drain(client)
    for i in range(3):
        reply, _, _ = ask(client, b"served %d" % i)
        assert reply == b"echo:served %d" % i
