"""The control socket of a real ``colo-xdp compare``: every command, bad
input of every kind, slow and vanishing clients, and who may connect.

Each test starts the service through test_service's ``lab`` fixture (which
removes every process, socket and directory on every path and fails the
test on any traceback) with ``--control`` on a socket in the lab directory.
"""
from __future__ import annotations

import errno
import json
import os
import socket
import stat
import subprocess
import time

import pytest

from colo_xdp.lab.pktgen import arp_frame
from control_kit import TIMEOUT, Ctl
from test_service import ServiceSandbox, colo_xdp_argv, connect_all, free_tcp_ports, udp

CTL = "ctl.sock"


def start(lab: ServiceSandbox, *args: str, notify: bool = True):
    cmp = lab.start(args=("--control", lab.path(CTL), *args), notify=notify)
    return cmp, lab.track_ctl(Ctl.unix(lab.path(CTL)))


def _track_ctl(self: ServiceSandbox, ctl: Ctl) -> Ctl:
    self.track(ctl.sock)
    return ctl


ServiceSandbox.track_ctl = _track_ctl


def stats(ctl: Ctl, **args) -> dict:
    reply = ctl.ask({"cmd": "stats", **args})
    assert reply["ok"], reply
    return reply["stats"]


def wait_stats(ctl: Ctl, pred, timeout: float = TIMEOUT) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        snap = stats(ctl)
        if pred(snap):
            return snap
        if time.monotonic() > deadline:
            raise AssertionError(f"stats never got there: {json.dumps(snap)[:2000]}")
        time.sleep(0.02)


# -- every command ---------------------------------------------------------------------------

def test_help_lists_commands(lab):
    _, ctl = start(lab)
    reply = ctl.ask({"cmd": "help", "id": 1})
    assert reply["ok"] and reply["id"] == 1
    assert set(reply["commands"]) == {"checkpoint", "failover", "stats", "subscribe",
                                      "passthrough", "help"}


def test_checkpoint_flushes_held_frames(lab):
    cmp, ctl = start(lab)
    out, note, pin, sin = connect_all(lab)
    primary, secondary = udp(b"primary says A"), udp(b"second says B")
    pin.send(primary)
    sin.send(secondary)
    wait_stats(ctl, lambda s: s["checkpoint_requests"]["mismatch"] == 1)
    out.expect_quiet()
    reply = ctl.ask({"cmd": "checkpoint"})
    assert reply == {"ok": True, "released": 1, "dropped_secondary": 1}
    assert out.frames(1) == [primary]
    cmp.wait_line(r"checkpoint_done source=control")
    assert stats(ctl)["checkpoints_done"] == 1
    s = cmp.stop_summary()
    assert (s.frames_in, s.released, s.dropped) == ((1, 1), 1, (0, 1))


def test_failover_releases_then_passes_through(lab):
    cmp, ctl = start(lab)
    out, note, pin, sin = connect_all(lab)
    held = udp(b"held")
    pin.send(held)
    wait_stats(ctl, lambda s: s["held"]["primary"] == 1)
    reply = ctl.ask({"cmd": "failover"})
    assert reply == {"ok": True, "already": False, "released": 1, "dropped_secondary": 0}
    assert out.frames(1) == [held]
    alone = udp(b"alone")
    pin.send(alone)
    assert out.frames(1) == [alone]
    assert ctl.ask({"cmd": "failover"})["already"] is True
    snap = stats(ctl)
    assert snap["failover"] is True
    cmp.wait_line(r"colo-xdp: failover source=control")
    assert cmp.count(r"colo-xdp: failover") == 1


def test_stats_counters_queues_and_connection_table(lab):
    cmp, ctl = start(lab, "--max-queue-size", "7", "--max-connections", "50")
    out, note, pin, sin = connect_all(lab)
    matched = [udp(b"pair %d" % i, sport=1000 + i) for i in range(3)]
    pin.send(*matched)
    sin.send(*matched)
    assert out.frames(3) == matched
    pin.send(udp(b"waits", sport=2000))                 # held: no secondary yet
    snap = wait_stats(ctl, lambda s: s["held"]["primary"] == 1)
    assert snap["mode"] == "chardev" and snap["failover"] is False
    assert snap["frames_in"] == {"primary": 4, "secondary": 3}
    assert snap["bytes_in"]["primary"] == sum(map(len, matched)) + len(udp(b"waits"))
    assert snap["pairs"] == {"compared": 3, "matched": 3, "mismatched": 0}
    assert snap["released"]["matched"] == 3 and snap["released_total"] == 3
    assert snap["held"] == {"primary": 1, "secondary": 0}
    assert snap["max_queue_size"] == 7
    assert snap["peers"] == {"outdev": True, "notify-dev": True, "primary-in": True,
                             "secondary-in": True}
    conns = snap["connections"]
    assert (conns["count"], conns["max"], conns["opened"], conns["shown"]) == (4, 50, 4, 4)
    rows = {row["sport"]: row for row in conns["table"]}
    assert rows[2000]["held"] == {"primary": 1, "secondary": 0}
    assert rows[2000]["conn"] == "udp 10.0.0.1:2000 > 10.0.0.2:2000"
    assert rows[1000]["matched"] == 1 and rows[1000]["released"] == 1
    assert snap["control"] == {"clients": 1, "subscribers": 0, "events_lost": 0}
    # Fewer rows on request: the busiest (holding frames) first.
    small = stats(ctl, connections=1)["connections"]
    assert small["shown"] == 1 and small["table"][0]["sport"] == 2000
    assert stats(ctl, connections=0)["connections"]["table"] == []


def test_passthrough_add_list_del(lab):
    cmp, ctl = start(lab, "--passthrough", "icmp")
    out, note, pin, sin = connect_all(lab)
    held = [udp(b"held %d" % i, dport=53) for i in range(2)]
    pin.send(*held)
    wait_stats(ctl, lambda s: s["held"]["primary"] == 2)

    reply = ctl.ask({"cmd": "passthrough", "op": "add", "flow": "udp 10.0.0.0/24:* > *:53"})
    assert reply["ok"] and reply["added"] and reply["rules"] == 2
    assert out.frames(2) == held                         # what the flow held goes out, in order
    alone = udp(b"not compared", dport=53)
    pin.send(alone)
    assert out.frames(1) == [alone]
    sin.send(udp(b"whatever the secondary says", dport=53))
    other = udp(b"still compared", dport=54)
    pin.send(other)
    out.expect_quiet()

    listed = ctl.ask({"cmd": "passthrough", "op": "list"})["rules"]
    assert [r["flow"] for r in listed] == ["icmp * > *", "udp 10.0.0.0/24 > *:53"]
    snap = stats(ctl)
    assert snap["passthrough_rules"] == 2
    assert snap["released"]["passthrough"] == 3
    assert snap["dropped"]["secondary"]["passthrough"] == 1
    cmp.wait_line(r'passthrough_changed op=add flow="udp 10.0.0.0/24 > \*:53" rules=2')

    reply = ctl.ask({"cmd": "passthrough", "op": "del", "proto": "udp", "src": "10.0.0.0/24",
                     "dport": 53})
    assert reply["ok"] and reply["rules"] == 1
    again = udp(b"compared again", dport=53)
    pin.send(again)
    out.expect_quiet()
    sin.send(again)
    assert out.frames(1) == [again]
    bad = ctl.ask({"cmd": "passthrough", "op": "del", "flow": "tcp * > *:22"})
    assert bad["ok"] is False and "no passthrough rule" in bad["error"]


def test_subscribe_streams_events(lab):
    cmp, ctl = start(lab)
    out, note, pin, sin = connect_all(lab)
    reply = ctl.ask({"cmd": "subscribe", "events": ["checkpoint_requested", "connection_opened",
                                                    "frame_dropped", "checkpoint_done"]})
    assert reply["ok"] and "frame_dropped" in reply["subscribed"]
    pin.send(udp(b"AAAA"))
    sin.send(udp(b"BBBB"))
    conn = "udp 10.0.0.1:1000 > 10.0.0.2:2000"
    opened = ctl.event("connection_opened")
    assert opened["conn"] == conn and isinstance(opened["ts"], float)
    requested = ctl.event("checkpoint_requested")
    assert (requested["reason"], requested["conn"]) == ("mismatch", conn)
    sin.send(*[arp_frame()] * 5)                           # unsupported: dropped
    dropped = ctl.event("frame_dropped")
    assert (dropped["side"], dropped["reason"], dropped["conn"]) == \
        ("secondary", "unsupported", None)
    total = dropped["count"]
    while total < 5:                                     # summed per batch
        total += ctl.event("frame_dropped", reason="unsupported")["count"]
    assert total == 5
    # Commands still work on a subscribed connection; events keep coming.
    assert ctl.ask({"cmd": "checkpoint"})["released"] == 1
    assert ctl.event("checkpoint_done")["source"] == "control"
    assert stats(ctl)["control"]["subscribers"] == 1


def test_subscribe_everything_by_default(lab):
    cmp, ctl = start(lab)
    ctl.ask({"cmd": "subscribe"})
    out, note, pin, sin = connect_all(lab)
    assert ctl.event("connected", role="primary-in")["endpoint"].startswith("unix:")
    ctl.ask({"cmd": "failover"})
    assert ctl.event("failover")["source"] == "control"


# -- bad input ---------------------------------------------------------------------------------

def assert_error(reply: dict, fragment: str) -> None:
    assert reply["ok"] is False, reply
    assert fragment in reply["error"], reply
    assert "\n" not in reply["error"]


def test_bad_requests_get_an_error_and_the_connection_stays_usable(lab):
    cmp, ctl = start(lab)
    ctl.send_raw(b"{this is not json\n")
    assert_error(ctl.line(), "not valid JSON")
    ctl.send_raw(b"\x00\xff\xfe garbage \x80\n")
    assert_error(ctl.line(), "not UTF-8")
    ctl.send_raw(b"[1,2,3]\n")
    assert_error(ctl.line(), "JSON object")
    assert_error(ctl.ask({"cmd": "launch", "id": 9}), "unknown command 'launch'")
    assert_error(ctl.ask({"nocmd": True}), "needs \"cmd\"")
    assert_error(ctl.ask({"cmd": "stats", "connections": "all"}), "connections must be")
    assert_error(ctl.ask({"cmd": "passthrough", "op": "add", "flow": "udp ::g > *"}),
                 "not an IPv4 or IPv6 address")
    ctl.send_raw(b"\n\n   \n")                           # blank lines: ignored
    # An oversized line: one error, the rest of it skipped, then business as usual.
    ctl.send_raw(b'{"cmd": "stats", "pad": "' + b"x" * (200 * 1024))
    assert_error(ctl.line(), "longer than 65536 bytes")
    ctl.send_raw(b"y" * (100 * 1024) + b'"}\n')
    reply = ctl.ask({"cmd": "help", "id": "after"})
    assert reply["ok"] and reply["id"] == "after"
    # Several requests in one write, answered in order.
    ctl.send_raw(b'{"cmd":"help","id":1}\n{"cmd":"nope","id":2}\n{"cmd":"stats","id":3}\n')
    assert [ctl.line()["id"] for _ in range(3)] == [1, 2, 3]
    assert cmp.stop() == 0


def test_client_gone_mid_line_runs_nothing(lab):
    cmp, ctl = start(lab)
    out, note, pin, sin = connect_all(lab)
    pin.send(udp(b"held"))
    wait_stats(ctl, lambda s: s["held"]["primary"] == 1)
    # A complete request without its newline, then the client vanishes.
    gone = Ctl.unix(lab.path(CTL))
    gone.send_raw(b'{"cmd": "failover"}')
    gone.close()
    # Half-closed after a partial line: told so, nothing run.
    half = Ctl.unix(lab.path(CTL))
    half.send_raw(b'{"cmd": "checkpoint"}')
    half.sock.shutdown(socket.SHUT_WR)
    rest = half.expect_closed()
    reply = json.loads(rest)
    assert_error(reply, "ended in the middle of a request line")
    half.close()
    # Many clients coming and going at once.
    for _ in range(50):
        c = Ctl.unix(lab.path(CTL))
        c.send_raw(b'{"cmd": "sta')
        c.close()
    snap = stats(ctl)
    assert snap["failover"] is False and snap["checkpoints_done"] == 0
    assert snap["held"]["primary"] == 1
    out.expect_quiet(0.05)
    wait_stats(ctl, lambda s: s["control"]["clients"] == 1)


def test_half_closed_client_still_gets_its_replies(lab):
    cmp, ctl = start(lab)
    ctl.send_raw(b'{"cmd":"help","id":1}\n{"cmd":"stats","id":2}\n')
    ctl.sock.shutdown(socket.SHUT_WR)
    lines = ctl.expect_closed().splitlines()
    assert [json.loads(x)["id"] for x in lines] == [1, 2]


def test_client_that_never_reads_its_replies_is_not_read_either(lab):
    """Thousands of pipelined stats requests, never read: the service stops
    reading that client once its replies back up, and serves everyone else."""
    cmp, ctl = start(lab)
    out, note, pin, sin = connect_all(lab)
    hog = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    lab.track(hog)
    hog.connect(lab.path(CTL))
    hog.setblocking(False)
    request = b'{"cmd": "stats", "connections": 0}\n'
    sent = 0
    deadline = time.monotonic() + 3.0
    while time.monotonic() < deadline:                  # until the kernel buffers are full
        try:
            sent += hog.send(request * 256)
        except BlockingIOError:
            time.sleep(0.05)
            try:
                sent += hog.send(request * 256)
            except BlockingIOError:
                break
    assert sent > 0
    t0 = time.monotonic()
    assert stats(ctl)["control"]["clients"] == 2
    assert time.monotonic() - t0 < 2.0
    pair = udp(b"still flowing")
    pin.send(pair)
    sin.send(pair)
    assert out.frames(1) == [pair]
    hog.close()
    wait_stats(ctl, lambda s: s["control"]["clients"] == 1)


def test_subscriber_that_never_reads_loses_events_not_the_service(lab):
    cmp, ctl = start(lab, "--max-connections", "1000")
    out, note, pin, sin = connect_all(lab)
    sleeper = Ctl.unix(lab.path(CTL))
    lab.track(sleeper.sock)
    sleeper.send({"cmd": "subscribe", "events": ["connection_opened", "connection_evicted"]})
    assert sleeper.line()["ok"]                          # then it never reads again
    # 12000 flows through a 1000-connection table: an opened and an evicted
    # event each, some 2.5 MB of events nobody reads.
    flows = [udp(b"f", sport=1 + i % 60000, src=f"10.1.{i // 60000}.1") for i in range(12000)]
    for i in range(0, len(flows), 200):
        chunk = flows[i:i + 200]         # well under the table size: nothing is table_full
        pin.send(*chunk)
        sin.send(*chunk)
        assert out.frames(len(chunk), timeout=10) == chunk
        if i % 2000 == 0:
            t0 = time.monotonic()
            stats(ctl, connections=0)                    # the loop answers at once
            assert time.monotonic() - t0 < 2.0
    snap = wait_stats(ctl, lambda s: s["control"]["events_lost"] > 0)
    assert snap["connections"]["evicted"] == 11000
    lost = snap["control"]["events_lost"]
    # The sleeper wakes up and reads what was queued for it.
    seen = reported = 0
    while True:
        try:
            msg = sleeper.line(timeout=0.5)
        except AssertionError:                           # quiet: all read
            break
        if msg["event"] == "events_lost":                # a gap, and how many it holds
            reported += msg["count"]
        else:
            assert msg["event"] in ("connection_opened", "connection_evicted")
            seen += 1
    # Every event was either delivered or counted as lost.
    assert seen + lost == 12000 + 11000
    # The next event is preceded by how many were missed since the last report.
    pin.send(udp(b"one more", sport=61000))
    sin.send(udp(b"one more", sport=61000))
    assert sleeper.line() == {"event": "events_lost", "ts": pytest.approx(time.time(), abs=5),
                              "count": lost - reported}
    assert sleeper.event("connection_opened")["conn"] == "udp 10.0.0.1:61000 > 10.0.0.2:2000"
    assert cmp.stop() == 0


# -- who may connect ---------------------------------------------------------------------------

NOBODY_CONNECT = """
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
try:
    s.connect(sys.argv[1])
except OSError as exc:
    print(exc.errno)
else:
    print(0)
"""


def connect_as_nobody(path: str) -> int:
    """errno of a connect() to ``path`` by user nobody (0 if it succeeded)."""
    if os.geteuid() != 0:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail("this test needs root to switch to user nobody")
        pytest.skip("needs root to switch to user nobody")
    result = subprocess.run(["/usr/bin/python3", "-c", NOBODY_CONNECT, path],
                            user="nobody", group="nogroup", extra_groups=[],
                            capture_output=True, text=True, timeout=TIMEOUT, cwd="/")
    assert result.returncode == 0, result.stderr
    return int(result.stdout)


def test_control_socket_is_mode_0600_and_keeps_other_users_out(lab):
    os.chmod(lab.dir, 0o755)            # so only the socket's own mode can stop nobody
    start(lab)
    mode = stat.S_IMODE(os.stat(lab.path(CTL)).st_mode)
    assert mode == 0o600
    assert connect_as_nobody(lab.path(CTL)) == errno.EACCES
    # The same user would get in through a socket open to all: the mode is what stops it.
    open_sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    lab.track(open_sock)
    open_sock.bind(lab.path("open.sock"))
    os.chmod(lab.path("open.sock"), 0o666)
    open_sock.listen(1)
    assert connect_as_nobody(lab.path("open.sock")) == 0


def test_control_socket_removed_at_exit_and_stale_one_replaced(lab):
    cmp, ctl = start(lab)
    assert cmp.stop() == 0
    assert not os.path.exists(lab.path(CTL))
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(lab.path(CTL))                          # bound, never listening: stale
    stale.close()
    cmp, ctl = start(lab)
    assert ctl.ask({"cmd": "help"})["ok"]


def run_cli(*args: str, timeout: float = 10.0) -> subprocess.CompletedProcess:
    return subprocess.run(colo_xdp_argv() + list(args), stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=timeout)


def compare_args(lab: ServiceSandbox, prefix: str = "") -> list[str]:
    return ["compare", "--primary-in", f"unix:{lab.path(prefix + 'pin.sock')},server=on",
            "--secondary-in", f"unix:{lab.path(prefix + 'sin.sock')},server=on",
            "--outdev", f"unix:{lab.path(prefix + 'out.sock')},server=on"]


def test_a_live_control_socket_is_not_taken_over(lab):
    cmp, ctl = start(lab)
    result = run_cli(*compare_args(lab, "b-"), "--control", lab.path(CTL))
    assert result.returncode == 1
    assert result.stderr.strip() == (f"colo-xdp: error: another process listens on "
                                     f"{lab.path(CTL)} (control socket); stop it or choose "
                                     f"another path")
    assert ctl.ask({"cmd": "help"})["ok"]              # the first one is untouched


def test_a_file_in_the_way_is_refused(lab):
    with open(lab.path("plain"), "w") as f:
        f.write("keep me")
    result = run_cli(*compare_args(lab), "--control", lab.path("plain"))
    assert result.returncode == 1
    assert "exists and is not a socket" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    with open(lab.path("plain")) as f:
        assert f.read() == "keep me"


@pytest.mark.parametrize("address", ["0.0.0.0:9999", "10.1.2.3:9999", "[::]:9999"])
def test_control_tcp_refuses_non_loopback(lab, address):
    result = run_cli(*compare_args(lab), "--control-tcp", address)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert lines[0].startswith("colo-xdp: error: --control-tcp must listen on a loopback "
                               "address such as 127.0.0.1")


@pytest.mark.parametrize("address, fragment", [
    ("localhost", "HOST:PORT"), ("127.0.0.1:0", "port from 1"), ("example.org:80", "IP address"),
])
def test_bad_addresses_are_one_sentence(lab, address, fragment):
    for option in ("--control-tcp", "--metrics"):
        result = run_cli(*compare_args(lab), option, address)
        assert result.returncode == 2
        assert result.stderr.startswith(f"colo-xdp: error: {option} ")
        assert fragment in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_control_tcp_on_loopback(lab):
    (port,) = free_tcp_ports(1)
    lab.start(args=("--control-tcp", f"localhost:{port}"))
    ctl = Ctl.tcp(port)
    lab.track(ctl.sock)
    assert ctl.ask({"cmd": "stats"})["ok"]
    assert ctl.ask({"cmd": "passthrough", "op": "add", "flow": "tcp"})["added"]


def test_sigusr1_still_fails_over_with_a_control_socket(lab):
    cmp, ctl = start(lab)
    cmp.proc.send_signal(__import__("signal").SIGUSR1)
    cmp.wait_line(r"colo-xdp: failover source=signal")
    assert stats(ctl)["failover"] is True


def test_default_control_path(monkeypatch):
    from colo_xdp.proto import control
    monkeypatch.setattr(control.os, "geteuid", lambda: 0)
    assert control.default_control_path() == "/run/colo-xdp/colo-xdp.sock"
    monkeypatch.setattr(control.os, "geteuid", lambda: 1000)
    monkeypatch.setenv("XDG_RUNTIME_DIR", "/run/user/1000")
    assert control.default_control_path() == "/run/user/1000/colo-xdp.sock"
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    assert control.default_control_path() is None


def test_a_bug_in_a_command_is_an_error_reply_not_a_crash(tmp_path):
    """In-process: the service's loop turned by hand, a command that raises."""
    from colo_xdp.observe.log import EventLog
    from colo_xdp.service.compare import CompareService
    from colo_xdp.service.config import CompareConfig
    from colo_xdp.transport.chardev.endpoint import parse_spec

    specs = [parse_spec(f"unix:{tmp_path}/{name},server=on") for name in ("p", "s", "o")]
    log = EventLog()
    seen: list = []
    svc = CompareService(CompareConfig(*specs, control_path=str(tmp_path / CTL)), log)
    svc.open()
    try:
        svc.attachments[0].commands._cmd_stats = lambda req, session: 1 / 0
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        client.connect(str(tmp_path / CTL))
        client.sendall(b'{"cmd": "stats"}\n{"cmd": "help", "id": 2}\n')
        log.tap = lambda name, fields: seen.append((name, fields))
        client.setblocking(False)
        data = b""
        deadline = time.monotonic() + TIMEOUT
        while data.count(b"\n") < 2 and time.monotonic() < deadline:
            for key, mask in svc.sel.select(0.05):
                key.data(mask)
            svc.after_batch()
            try:
                data += client.recv(65536)
            except BlockingIOError:
                pass
        first, second = (json.loads(x) for x in data.splitlines())
        assert first == {"ok": False, "error": "internal error (ZeroDivisionError); "
                                               "the service logged it"}
        assert second["ok"] and second["id"] == 2
        assert ("control_error", {"role": "control",
                                  "error": "ZeroDivisionError: division by zero"}) in seen
        client.close()
    finally:
        svc.close()
    assert not os.path.exists(tmp_path / CTL)
