"""--qmp: the QMP client protocol, and colo-xdp compare driving a monitor that
behaves like a COLO primary QEMU's (tests/unit/qmp_fake.py).  The same
against real QEMU COLO pairs is tests/colo/."""
from __future__ import annotations

import json
import time

import pytest

from colo_xdp.proto.qmp import Event, Greeting, QmpClient, QmpError, Reply
from qmp_fake import FakeQmp
from test_service import connect_all, udp

GREETING = (b'{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}, '
            b'"package": "Debian"}, "capabilities": ["oob"]}}\r\n')


# -- the protocol ------------------------------------------------------------------------

def test_greeting_replies_and_events_in_any_chunking():
    stream = (GREETING + b'{"return": {}, "id": 1}\r\n'
              b'{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "STOP"}\r\n'
              b'{"error": {"class": "GenericError", "desc": "no"}, "id": 2}\r\n')
    for step in (1, 7, len(stream)):
        qmp, got = QmpClient(), []
        for i in range(0, len(stream), step):
            got += qmp.receive(stream[i:i + step])
        assert got == [Greeting("7.2.0", ("oob",)), Reply(1, True, {}), Event("STOP", {}),
                       Reply(2, False, None, "GenericError", "no")]


def test_commands_carry_increasing_ids_and_arguments():
    qmp = QmpClient()
    first = qmp.command("qmp_capabilities")
    second = qmp.command("migrate-set-parameters", {"x-checkpoint-delay": 200})
    assert (first.id, second.id) == (1, 2)
    assert json.loads(second.data) == {"execute": "migrate-set-parameters", "id": 2,
                                       "arguments": {"x-checkpoint-delay": 200}}
    assert second.data.endswith(b"\n")


@pytest.mark.parametrize("stream, words", [
    (b"HTTP/1.1 400 Bad Request\r\n", "not a JSON object"),
    (b'{"hello": 1}\r\n', "did not greet"),
    (b"[1, 2]\r\n", "not a JSON object"),
    (GREETING + b'{"return": {}}\r\n', "without an id"),
    (GREETING + b'{"id": 1}\r\n', "neither return nor error"),
    (b"x" * 2000, "longer than"),
])
def test_a_peer_that_is_not_a_monitor_is_one_sentence(stream, words):
    with pytest.raises(QmpError) as err:
        QmpClient(max_line=1024).receive(stream)
    assert words in str(err.value) and "\n" not in str(err.value)


# -- the service with a monitor ------------------------------------------------------------

@pytest.fixture
def qmp(lab):
    fake = FakeQmp(lab.path("qmp.sock"))
    yield fake
    fake.close()


def start(lab, *args: str, qmp_spec: str | None = None):
    return lab.start(notify=False, args=("--qmp", qmp_spec or f"unix:{lab.path('qmp.sock')}",
                                         "--control", lab.path("ctl.sock"), *args))


def wait(cond, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.005)


def test_a_mismatch_kicks_one_checkpoint_and_its_stop_releases_the_primary(lab, qmp):
    cmp = start(lab)
    cmp.wait_line(r"qmp_colo_active mode=primary")
    out, _, pin, sin = connect_all(lab, notify=False)
    pin.send(udp(b"same"))
    sin.send(udp(b"same"))
    assert out.frames(1) == [udp(b"same")]
    pin.send(udp(b"primary", sport=7))
    sin.send(udp(b"second!", sport=7))               # same length, other bytes
    assert out.frames(1) == [udp(b"primary", sport=7)]   # released by the checkpoint
    line = cmp.wait_line(r"checkpoint_done source=qmp")
    assert "request_to_stop_ms=" in line
    assert qmp.kicks() == 1 and qmp.set_values == [20000]     # the delay is never changed
    summary = cmp.stop_summary()
    assert summary.released == 2 and summary.dropped == (0, 1)


def test_a_storm_of_requests_is_one_kick(lab, qmp):
    qmp.checkpoint_s = 0.2
    cmp = start(lab)
    cmp.wait_line(r"qmp_colo_active")
    out, _, pin, sin = connect_all(lab, notify=False)
    pin.send(*[udp(b"P%03d" % i, sport=100 + i) for i in range(50)])
    sin.send(*[udp(b"S%03d" % i, sport=100 + i) for i in range(50)])
    assert len(out.frames(50)) == 50
    cmp.wait_line(r"checkpoint_done source=qmp")
    stats = lab_stats(lab)
    # The engine counts every request and keeps one checkpoint outstanding:
    # the QMP driver is asked once (issue 11), and kicks once.
    assert stats["checkpoint_requests"]["mismatch"] == 50
    assert stats["qmp"]["requests"] == 1 and stats["qmp"]["kicks"] == qmp.kicks() == 1
    assert stats["checkpoints_done_by_source"] == {"qmp": 1}


def lab_stats(lab) -> dict:
    from colo_xdp.cli.ctl_client import ControlClient
    with ControlClient.connect(path=lab.path("ctl.sock")) as client:
        return client.request({"cmd": "stats"})["stats"]


def test_a_periodic_checkpoint_flushes_and_is_counted(lab, qmp):
    cmp = start(lab)
    cmp.wait_line(r"qmp_colo_active")
    out, _, pin, sin = connect_all(lab, notify=False)
    pin.send(udp(b"held primary"))
    sin.send(udp(b"other second", sport=9))         # another flow: nothing to match
    out.expect_quiet(0.2)
    qmp.checkpoint()                                 # QEMU's own timer, no request
    assert out.frames(1) == [udp(b"held primary")]
    assert "request_to_stop_ms" not in cmp.wait_line(r"checkpoint_done source=qmp")
    assert qmp.kicks() == 0
    assert cmp.stop_summary().dropped == (0, 1)


def test_frames_sent_before_the_stop_are_released_by_it_even_if_unread(lab, qmp):
    """The guest's frames from before the checkpoint are in our socket when
    STOP comes; the checkpoint must not leave them held."""
    cmp = start(lab, "--max-queue-size", "100000")
    cmp.wait_line(r"qmp_colo_active")
    out, _, pin, sin = connect_all(lab, notify=False)
    frames = [udp(b"before %05d" % i, sport=2000 + i % 50) for i in range(3000)]
    pin.send(*frames)
    qmp.checkpoint()
    got = out.frames(3000, timeout=10)
    # A flush releases connection by connection, each in order.
    assert sorted(got) == sorted(frames)
    assert [f for f in got if f[34:36] == frames[7][34:36]] == frames[7::50]
    stats = lab_stats(lab)
    assert stats["held"] == {"primary": 0, "secondary": 0}
    assert stats["checkpoint_requests"]["timeout"] == 0
    # After RESUME frames are compared again: a lone primary stays held.
    pin.send(udp(b"after"))
    out.expect_quiet(0.3)
    assert lab_stats(lab)["held"]["primary"] == 1


def test_a_stop_that_is_not_a_checkpoint_flushes_nothing(lab, qmp):
    cmp = start(lab)
    cmp.wait_line(r"qmp_colo_active")
    out, _, pin, _sin = connect_all(lab, notify=False)
    pin.send(udp(b"held"))
    qmp.status = "paused"
    qmp.event("STOP")
    cmp.wait_line(r"qmp_vm_stopped status=paused")
    out.expect_quiet(0.2)
    assert lab_stats(lab)["checkpoints_done"] == 0


def test_a_kick_with_no_checkpoint_is_sent_again(lab, qmp):
    qmp.kicks_work = False
    cmp = start(lab)
    cmp.wait_line(r"qmp_colo_active")
    out, _, pin, sin = connect_all(lab, notify=False)
    pin.send(udp(b"AAAA"))
    sin.send(udp(b"BBBB"))
    wait(lambda: qmp.kicks() == 1)
    qmp.kicks_work = True
    cmp.wait_line(r"qmp_checkpoint_retry", timeout=5)
    assert out.frames(1) == [udp(b"AAAA")]
    assert lab_stats(lab)["qmp"]["retries"] == 1 and qmp.kicks() == 2


def test_waiting_for_colo_is_said_once_then_requests_go_through(lab, qmp):
    qmp.mode = "none"
    cmp = start(lab)
    cmp.wait_line(r"qmp_waiting_for_colo mode=none")
    out, _, pin, sin = connect_all(lab, notify=False)
    pin.send(udp(b"AAAA"))
    sin.send(udp(b"BBBB"))                          # requested before COLO: held back
    time.sleep(1.2)
    assert qmp.kicks() == 0 and cmp.count("qmp_waiting_for_colo") == 1
    qmp.mode = "primary"
    assert out.frames(1, timeout=5) == [udp(b"AAAA")]
    assert lab_stats(lab)["qmp"]["undelivered"] == 1


def test_colo_exit_fails_over_and_says_why(lab, qmp):
    cmp = start(lab)
    cmp.wait_line(r"qmp_colo_active")
    out, _, pin, sin = connect_all(lab, notify=False)
    pin.send(udp(b"held"))
    qmp.event("COLO_EXIT", {"mode": "primary", "reason": "request"})
    line = cmp.wait_line(r"failover source=qmp")
    assert "COLO_EXIT mode=primary reason=request" in line
    assert out.frames(1) == [udp(b"held")]
    pin.send(udp(b"passes"))
    assert out.frames(1) == [udp(b"passes")]


def test_leaving_colo_without_an_event_fails_over(lab, qmp):
    cmp = start(lab)
    cmp.wait_line(r"qmp_colo_active")
    qmp.mode = "none"
    assert "left COLO" in cmp.wait_line(r"failover source=qmp", timeout=5)


def test_the_monitor_lost_and_back(lab, qmp):
    cmp = start(lab, qmp_spec=f"unix:{lab.path('qmp.sock')},reconnect=1")
    cmp.wait_line(r"qmp_connected")
    qmp.drop_client()
    cmp.wait_line(r"disconnected role=qmp")
    wait(lambda: qmp.clients == 2, timeout=5)
    cmp.wait_line(r"qmp_colo_active", start=len(cmp.lines) - 1, timeout=5)
    out, _, pin, sin = connect_all(lab, notify=False)
    pin.send(udp(b"AAAA"))
    sin.send(udp(b"BBBB"))
    assert out.frames(1) == [udp(b"AAAA")]


def test_a_peer_that_is_not_qmp_is_one_warning_and_the_service_goes_on(lab):
    fake = FakeQmp(lab.path("qmp.sock"), greeting=b"SSH-2.0-OpenSSH_9.2\r\n")
    try:
        cmp = start(lab, qmp_spec=f"unix:{lab.path('qmp.sock')},reconnect=1")
        line = cmp.wait_line(r"qmp_protocol_error")
        assert "not a QMP monitor" in line
        out, _, pin, sin = connect_all(lab, notify=False)
        pin.send(udp(b"same"))
        sin.send(udp(b"same"))
        assert out.frames(1) == [udp(b"same")]
        assert cmp.stop_summary().released == 1
    finally:
        fake.close()


def test_metrics_count_checkpoints_by_source(lab, qmp):
    from test_service import free_tcp_ports
    from test_metrics import wait_metric
    port, = free_tcp_ports(1)
    cmp = start(lab, "--metrics", f"127.0.0.1:{port}")
    cmp.wait_line(r"qmp_colo_active")
    qmp.checkpoint()
    got = wait_metric(port, "colo_xdp_checkpoints_total", 1, source="qmp")
    assert got[("colo_xdp_qmp_checkpoint_kicks_total", frozenset({("outcome", "kicks")}))] == 0


def test_the_checkpoint_reads_what_backpressure_left_in_the_sockets(lab, qmp):
    """Inputs not being read (the outdev is behind) still give up every frame
    from before the checkpoint: none stays held, none is left unread."""
    cmp = start(lab)
    cmp.wait_line(r"qmp_colo_active")
    out, _, pin, sin = connect_all(lab, notify=False)
    sent = 0
    while not cmp.count(r"backpressure on=True"):     # small steps: sends never block
        pairs = [udp(b"%06d" % (sent + i) + b"x" * 1394, sport=3000) for i in range(10)]
        pin.send(*pairs)
        sin.send(*pairs)
        sent += 10
        assert sent < 20000, "the outdev never backed up"
        time.sleep(0.002)
    late = [udp(b"late %03d" % i, sport=9999) for i in range(100)]
    pin.send(*late)
    time.sleep(0.2)
    before = lab_stats(lab)
    assert before["frames_in"]["primary"] < sent + 100        # not all read: paused
    qmp.checkpoint()
    cmp.wait_line(r"checkpoint_done source=qmp")
    after = lab_stats(lab)
    assert after["frames_in"]["primary"] == sent + 100
    assert after["held"]["primary"] == 0
    got = out.frames(sent + 100, timeout=20)
    assert [f for f in got if f in late] == late
