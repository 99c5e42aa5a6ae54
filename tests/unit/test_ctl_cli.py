"""``colo-xdp ctl ...`` and ``colo-xdp stats``: the real commands against a
real service's control socket."""
from __future__ import annotations

import json
import os
import re
import subprocess
import time

from control_kit import TIMEOUT, Ctl
from test_service import ServiceSandbox, colo_xdp_argv, connect_all, free_tcp_ports, udp

CTL = "ctl.sock"


def start(lab: ServiceSandbox, *args: str):
    return lab.start(args=("--control", lab.path(CTL), *args))


def ctl(lab: ServiceSandbox, *args: str, env: dict | None = None, path: str | None = None):
    argv = colo_xdp_argv() + ["ctl", "--control", path or lab.path(CTL), *args]
    return subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=10, env=env)


def ok(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    return result.stdout


def test_checkpoint_and_failover(lab):
    start(lab)
    out, note, pin, sin = connect_all(lab)
    pin.send(udp(b"held"))
    sin.send(udp(b"other"))
    note.read_bytes(17)                                   # DO_CHECKPOINT: held now
    assert ok(ctl(lab, "checkpoint")) == \
        "checkpoint: released 1 primary frame(s), dropped 1 secondary frame(s)\n"
    assert out.frames(1) == [udp(b"held")]
    reply = json.loads(ok(ctl(lab, "--json", "failover")))
    assert reply == {"ok": True, "already": False, "released": 0, "dropped_secondary": 0}
    assert ok(ctl(lab, "failover")) == "failover: already done\n"


def test_passthrough_commands(lab):
    start(lab)
    assert ok(ctl(lab, "passthrough", "add", "udp 10.0.0.0/24:* > *:53")) == \
        "added: udp 10.0.0.0/24 > *:53\n"
    # Unquoted words are joined into one flow.
    assert ok(ctl(lab, "passthrough", "add", "tcp", "*", ">", "10.0.0.2:22")) == \
        "added: tcp * > 10.0.0.2:22\n"
    assert ok(ctl(lab, "passthrough", "add", "tcp * > 10.0.0.2:22")) == \
        "already there: tcp * > 10.0.0.2:22\n"
    assert ok(ctl(lab, "passthrough", "list")) == "udp 10.0.0.0/24 > *:53\ntcp * > 10.0.0.2:22\n"
    assert ok(ctl(lab, "passthrough", "del", "udp 10.0.0.0/24 > *:53")) == \
        "deleted: udp 10.0.0.0/24 > *:53\n"
    listed = json.loads(ok(ctl(lab, "--json", "passthrough", "list")))
    assert [r["flow"] for r in listed["rules"]] == ["tcp * > 10.0.0.2:22"]
    bad = ctl(lab, "passthrough", "add", "udp 10.0.0.300 > *")
    assert bad.returncode == 1 and bad.stdout == ""
    assert bad.stderr == "colo-xdp: error: source '10.0.0.300' is not an IPv4 or IPv6 " \
                         "address, address/prefix or *\n"


def test_stats_and_send(lab):
    start(lab)
    out, note, pin, sin = connect_all(lab)
    pin.send(udp(b"x"))
    sin.send(udp(b"x"))
    out.frames(1)
    snap = json.loads(ok(ctl(lab, "stats", "--connections", "5")))
    assert snap["frames_in"] == {"primary": 1, "secondary": 1}
    assert snap["connections"]["table"][0]["conn"] == "udp 10.0.0.1:1000 > 10.0.0.2:2000"
    reply = json.loads(ok(ctl(lab, "send", '{"cmd": "help", "id": 4}')))
    assert reply["id"] == 4 and "subscribe" in reply["commands"]
    bad = ctl(lab, "send", '{"cmd": "nope"}')
    assert bad.returncode == 1
    assert json.loads(bad.stdout)["error"].startswith("unknown command 'nope'")
    assert ctl(lab, "send", "not json").returncode == 2


def test_subscribe_prints_events(lab):
    start(lab)
    out, note, pin, sin = connect_all(lab)
    argv = colo_xdp_argv() + ["ctl", "--control", lab.path(CTL), "subscribe",
                              "-e", "checkpoint_requested", "-n", "1"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # Wait until it has subscribed, then cause a mismatch.
        probe = Ctl.unix(lab.path(CTL))
        lab.track(probe.sock)
        deadline = time.monotonic() + TIMEOUT
        while probe.ask({"cmd": "stats"})["stats"]["control"]["subscribers"] < 1:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        pin.send(udp(b"AAAA"))
        sin.send(udp(b"BBBB"))
        stdout, stderr = proc.communicate(timeout=TIMEOUT)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 0, stderr
    assert re.fullmatch(r'\d\d:\d\d:\d\d checkpoint_requested reason=mismatch '
                        r'conn="udp 10.0.0.1:1000 > 10.0.0.2:2000"\n', stdout), stdout


def test_stats_once_table(lab):
    start(lab)
    out, note, pin, sin = connect_all(lab)
    pin.send(udp(b"pair"), udp(b"held", sport=7))
    sin.send(udp(b"pair"))
    out.frames(1)
    time.sleep(0.1)
    argv = colo_xdp_argv() + ["stats", "--once", "--control", lab.path(CTL)]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert "\x1b[" not in text                           # no screen control with --once
    for pattern in (r"colo-xdp chardev  up \S+  failover no  backpressure off  "
                    r"peers outdev\+ notify-dev\+ primary-in\+ secondary-in\+",
                    r"frames in +primary 2  secondary 1",
                    r"pairs +compared 1  matched 1  mismatched 0",
                    r"released +1: matched 1",
                    r"held +primary 1  secondary 0  outdev 0 B",
                    r"checkpoint requests +none",
                    r"drops secondary +none",
                    r"connections +2 of 16384  opened 2",
                    r"udp 10.0.0.1:7 > 10.0.0.2:2000 +1/0 +0 +0"):
        assert re.search(pattern, text), f"{pattern!r} not in:\n{text}"
    as_json = subprocess.run(argv + ["--json"], capture_output=True, text=True, timeout=10)
    assert json.loads(as_json.stdout)["held"] == {"primary": 1, "secondary": 0}


def test_stats_over_tcp_control(lab):
    (port,) = free_tcp_ports(1)
    lab.start(args=("--control-tcp", f"127.0.0.1:{port}"))
    argv = colo_xdp_argv() + ["stats", "--once", "--control-tcp", f"127.0.0.1:{port}"]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    assert result.returncode == 0 and "frames in" in result.stdout


def test_no_service_is_one_sentence(lab):
    result = ctl(lab, "stats", path=lab.path("nothing.sock"))
    assert result.returncode == 1
    assert result.stderr == (f"colo-xdp: error: no colo-xdp answers on {lab.path('nothing.sock')}"
                             ": is colo-xdp compare running with --control (or --control-tcp)?\n")


def test_control_path_from_the_environment(lab):
    start(lab)
    env = {**os.environ, "COLO_XDP_CONTROL": lab.path(CTL)}
    argv = colo_xdp_argv() + ["ctl", "passthrough", "list"]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=10, env=env)
    assert result.returncode == 0 and result.stdout == ""
