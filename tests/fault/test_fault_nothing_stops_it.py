"""Issue 12, "nothing around it stops it": each finding against the real CLI.

Every test here first reproduced its finding (the service died, lost frames
or took over someone else's sockets) and now shows it survived: the process
keeps comparing (``still_serving``), ends with its summary, and every frame
it was given ends in a counter.
"""
from __future__ import annotations

import errno
import os
import re
import select
import signal
import socket
import stat
import struct
import subprocess
import threading
import time
from pathlib import Path

import pytest

from control_kit import Ctl
from faultkit import (TIMEOUT, Compare, connect_all, flow_frame, free_tcp_ports,
                      still_serving)
from test_service import colo_xdp_argv, udp

CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def need_root(why: str) -> None:
    if os.geteuid() != 0:
        if CI:
            pytest.fail(f"this test needs root: {why}")
        pytest.skip(f"needs root: {why}")


def run_cli(*args: str, timeout: float = 10.0) -> subprocess.CompletedProcess:
    return subprocess.run(colo_xdp_argv() + list(args), stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=timeout)


def one_error_line(result: subprocess.CompletedProcess) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in lines if line.startswith("colo-xdp: error: ")]
    assert len(errors) == 1, result.stderr
    return errors[0]


def wait_for(pred, what: str, timeout: float = TIMEOUT):
    deadline = time.monotonic() + timeout
    while True:
        got = pred()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


# -- /metrics: a scraper's bad Accept header ----------------------------------------------

@pytest.mark.parametrize("accept", ["application/openmetrics-text; version=abc",
                                    "text/plain; version=1.x",
                                    "application/openmetrics-text; version=",
                                    "text/plain; version=0.0.4; charset=\xff"])
def test_a_bad_accept_header_gets_an_answer_not_a_dead_service(lab, accept):
    (port,) = free_tcp_ports(1)
    cmp = lab.start(args=("--metrics", f"127.0.0.1:{port}"))
    out, note, pin, sin = connect_all(lab)
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.sendall(f"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: {accept}\r\n\r\n"
                     .encode("latin-1"))
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    status = answer.split(b"\r\n", 1)[0]
    assert status == b"HTTP/1.1 200 OK", answer[:200]
    assert b"colo_xdp_frames_total" in answer             # the plain text format
    still_serving(out, pin, sin)
    cmp.stop_summary()


# -- the evidence pcap on a full disk ---------------------------------------------------------

@pytest.fixture
def small_fs(lab):
    """A 64 KiB tmpfs in the lab directory: a disk that fills up."""
    need_root("mounting a small tmpfs to fill up")
    mnt = lab.dir / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k,mode=0700", "cxp-small", str(mnt)],
                   check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_a_full_disk_under_the_evidence_pcap_stops_nothing(lab, small_fs):
    path = str(small_fs / "evidence.pcapng")
    cmp = lab.start(args=("--miscompare-pcap", path, "--miscompare-pcap-size", "0.02",
                          "--miscompare-pcap-keep", "10"))
    out, note, pin, sin = connect_all(lab)
    payload = bytes(1400)
    for i in range(60):                    # 10 files of 20 KB, about 170 KB, on 64 KiB
        pin.send(flow_frame(i, 1, size=1400))
        sin.send(flow_frame(i, 2, size=1400))
        if i % 10 == 9:
            still_serving(out, pin, sin)
    cmp.wait_line(r"^colo-xdp: miscompare_pcap_failed .*No space left on device")
    still_serving(out, pin, sin)
    del payload
    s = cmp.stop_summary()
    assert s.frames_in[0] == s.released                  # every primary frame went out
    assert "Traceback" not in cmp.log


# -- signals ------------------------------------------------------------------------------

def test_sighup_reopens_the_log_and_evidence_files_and_loses_nothing(lab):
    log_path, pcap_path = lab.path("colo.log"), lab.path("evidence.pcapng")
    cmp = lab.start(args=("--log-file", log_path, "--miscompare-pcap", pcap_path),
                    ready=False)
    wait_for(lambda: os.path.exists(log_path) and "colo-xdp: ready" in Path(log_path).read_text(),
             "the ready line in the log file")
    out, note, pin, sin = connect_all(lab)
    pin.send(udp(b"A-held"))
    sin.send(udp(b"B-diff"))                               # mismatch: evidence, A held
    wait_for(lambda: "checkpoint_requested" in Path(log_path).read_text(), "a request")
    os.rename(log_path, log_path + ".1")                   # what logrotate does
    os.rename(pcap_path, pcap_path + ".1")
    cmp.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: os.path.exists(log_path) and "log_reopened" in Path(log_path).read_text(),
             "a new log file")
    wait_for(lambda: os.path.exists(pcap_path), "a new evidence file")
    assert cmp.proc.poll() is None
    assert os.stat(pcap_path + ".1").st_size > os.stat(pcap_path).st_size
    still_serving(out, pin, sin)
    cmp.terminate()
    assert out.frames(1) == [udp(b"A-held")]              # the held frame, at exit
    assert cmp.proc.wait(TIMEOUT) == 0
    text = Path(log_path).read_text()
    assert re.search(r"colo-xdp: stopped frames_in=2/2 released=2 ", text), text
    assert "checkpoint_requested" in Path(log_path + ".1").read_text()
    assert "Traceback" not in text


@pytest.mark.parametrize("sig", [signal.SIGHUP, signal.SIGUSR2, signal.SIGALRM, signal.SIGPWR,
                                 signal.SIGIO, signal.SIGPROF, signal.SIGVTALRM])
def test_sighup_and_sigusr2_do_not_kill(lab, sig):
    cmp = lab.start()
    out, note, pin, sin = connect_all(lab)
    held = udp(b"held over the signal", sport=4000)
    pin.send(held)
    for _ in range(3):
        cmp.proc.send_signal(sig)
        time.sleep(0.05)
    still_serving(out, pin, sin)
    assert cmp.proc.poll() is None
    if sig == signal.SIGUSR2:
        cmp.proc.send_signal(sig)
        cmp.wait_line(r"^colo-xdp: status frames_in=2/1 released=1 dropped=0/0 "
                      r"checkpoints_requested=0$")
    cmp.terminate()
    assert out.frames(1) == [held]
    s = cmp.stop_summary()
    assert s.frames_in == (2, 1) and s.released == 2
    assert os.listdir(lab.dir) == []                       # every socket file removed


# -- the control socket: TCP clients cannot lock root out -----------------------------------

def test_idle_tcp_clients_do_not_lock_out_the_unix_control_socket(lab):
    (port,) = free_tcp_ports(1)
    ctl_path = lab.path("ctl.sock")
    lab.start(args=("--control", ctl_path, "--control-tcp", f"127.0.0.1:{port}",
                    "--control-idle-timeout", "1"))
    idle = [lab.track(socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT))
            for _ in range(70)]
    time.sleep(0.3)
    ctl = Ctl.unix(ctl_path)
    lab.track(ctl.sock)
    assert ctl.ask({"cmd": "help"})["ok"]
    # The idle ones (and the 6 past the TCP cap at once) are closed after the
    # idle timeout (1 s here); a subscriber is not idle.
    deadline = time.monotonic() + TIMEOUT
    for sock in idle:
        sock.settimeout(max(deadline - time.monotonic(), 0.01))
        try:
            data = sock.recv(100)
        except ConnectionResetError:
            data = b""
        assert data == b""
    sub = Ctl.tcp(port)
    lab.track(sub.sock)
    assert sub.ask({"cmd": "subscribe", "events": ["checkpoint_done"]})["ok"]
    time.sleep(1.5)                      # the idle unix client is gone by now, not the subscriber
    with pytest.raises((BrokenPipeError, ConnectionResetError, AssertionError)):
        ctl.ask({"cmd": "help"})
    ctl = Ctl.unix(ctl_path)
    lab.track(ctl.sock)
    assert ctl.ask({"cmd": "checkpoint"})["ok"]
    assert sub.event("checkpoint_done")["source"] == "control"


# -- a second service on the same chardev paths ------------------------------------------

def test_a_second_service_on_the_same_sockets_is_refused(lab):
    first = lab.start()
    out, note, pin, sin = connect_all(lab)
    before = {name: os.stat(lab.path(name)).st_ino for name in os.listdir(lab.dir)}
    second = run_cli("compare", "--primary-in", f"unix:{lab.path('pin.sock')},server=on",
                     "--secondary-in", f"unix:{lab.path('other-sin.sock')},server=on",
                     "--outdev", f"unix:{lab.path('other-out.sock')},server=on")
    assert second.returncode == 1
    line = one_error_line(second)
    assert line == (f"colo-xdp: error: another process listens on {lab.path('pin.sock')} "
                    "(primary-in); stop it or choose another path"), line
    after = {name: os.stat(lab.path(name)).st_ino for name in before}
    assert after == before                                 # nothing unlinked or replaced
    assert sorted(os.listdir(lab.dir)) == sorted(before)   # and nothing left behind
    still_serving(out, pin, sin)
    first.stop_summary()


# -- bad input: one line -------------------------------------------------------------------

@pytest.mark.parametrize("option", ["--compare-timeout", "--expired-scan-cycle"])
def test_a_huge_timeout_is_one_line(lab, option):
    result = run_cli("compare", "--primary-in", f"unix:{lab.path('p')},server=on",
                     "--secondary-in", f"unix:{lab.path('s')},server=on",
                     "--outdev", f"unix:{lab.path('o')},server=on",
                     option, "100000000000000000000")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert option in result.stderr and "100000000000000000000" in result.stderr


@pytest.mark.parametrize("flow", ["udp 10.0.0.0/0 > *:53", "0.0.0.0/0 > *",
                                  "tcp * > 192.168.0.0/0:22"])
def test_a_slash_zero_prefix_is_refused(lab, flow):
    ctl_path = lab.path("ctl.sock")
    lab.start(args=("--control", ctl_path))
    result = run_cli("ctl", "-s", ctl_path, "passthrough", "add", flow)
    assert result.returncode == 1
    assert "/0" in result.stderr and "use *" in result.stderr, result.stderr
    assert run_cli("ctl", "-s", ctl_path, "passthrough", "list").stdout == ""
    result = run_cli("compare", "--primary-in", f"unix:{lab.path('p')},server=on",
                     "--secondary-in", f"unix:{lab.path('s')},server=on",
                     "--outdev", f"unix:{lab.path('o')},server=on", "--passthrough", flow)
    assert result.returncode == 2 and "use *" in one_error_line(result)


# -- a connecting endpoint whose peer goes away ------------------------------------------

@pytest.mark.parametrize("role", ["outdev", "primary-in"])
def test_a_connecting_endpoint_without_reconnect_exits_when_its_peer_goes(lab, role):
    (port,) = free_tcp_ports(1)
    listener = lab.listen_tcp(port)
    spec = f"tcp:127.0.0.1:{port}"
    cmp = lab.start(**{"out" if role == "outdev" else "pin": spec})
    peer = lab.accept(listener)
    names = {"outdev": ["notify.sock", "pin.sock", "sin.sock"],
             "primary-in": ["notify.sock", "out.sock", "sin.sock"]}[role]
    assert sorted(os.listdir(lab.dir)) == names
    peer.close()
    rc = cmp.proc.wait(TIMEOUT)
    cmp._reader.join(TIMEOUT)
    assert rc == 1, cmp.log
    assert cmp.lines[-1] == (f"colo-xdp: error: {role}: the peer at {spec} went away and "
                             "the endpoint has no ,reconnect=SECONDS; exiting"), cmp.log
    assert any(line.startswith("colo-xdp: stopped ") for line in cmp.lines), cmp.log
    assert os.listdir(lab.dir) == []                       # sockets removed on the way out


# -- exit accounting -----------------------------------------------------------------------

def _count_records(data: bytes) -> int:
    n, pos = 0, 0
    while pos + 4 <= len(data):
        size = struct.unpack_from(">I", data, pos)[0]
        if pos + 4 + size > len(data):
            break
        n += 1
        pos += 4 + size
    return n


def _send_until_full(sock: socket.socket, record: bytes, limit: int) -> int:
    """Whole records, non-blocking, until the socket takes no more; returns how many."""
    sock.setblocking(False)
    sent = 0
    try:
        while sent < limit:
            try:
                n = sock.send(record)
            except BlockingIOError:
                break
            assert n == len(record), "a record was split"   # small records: all or nothing
            sent += 1
    finally:
        sock.setblocking(True)
        sock.settimeout(TIMEOUT)
    return sent


def test_every_frame_ends_in_a_counter_at_exit(lab):
    """Frames still in the input sockets at SIGTERM are read and counted; frames
    released but not delivered are counted as such, in frames."""
    cmp = lab.start()
    out, note, pin, sin = connect_all(lab)
    out.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    frame = flow_frame(7, 0, size=900)
    record = struct.pack(">I", len(frame)) + frame
    limit = 40000                         # 36 MB: far past the 8 MiB backpressure mark
    sent_p = sent_s = 0
    deadline = time.monotonic() + 3 * TIMEOUT
    while time.monotonic() < deadline:
        sent_p += _send_until_full(pin.sock, record, limit - sent_p)
        sent_s += _send_until_full(sin.sock, record, limit - sent_s)
        if sent_p >= limit or "backpressure on=True" in cmp.log:
            more = _send_until_full(pin.sock, record, 1)
            sent_p += more
            if not more:
                break
        time.sleep(0.01)
    cmp.wait_line(r"^colo-xdp: backpressure on=True")
    sent_s += _send_until_full(sin.sock, record, limit - sent_s)
    # Both inputs now hold frames colo-xdp has not read: stop it.
    cmp.terminate()
    rc = cmp.proc.wait(3 * TIMEOUT)
    cmp._reader.join(TIMEOUT)
    assert rc == 0, cmp.log
    summary = next(line for line in cmp.lines if line.startswith("colo-xdp: stopped "))
    fields = dict(re.findall(r"(\w+)=(\S+)", summary))
    assert fields["frames_in"] == f"{sent_p}/{sent_s}", (summary, sent_p, sent_s)
    released = int(fields["released"])
    dropped_p = int(fields["dropped"].split("/")[0])     # queue_full: one flow, 1024 held
    assert released + dropped_p == sent_p
    undelivered = cmp.wait_line(r"^colo-xdp: undelivered_at_exit ")
    u = dict(re.findall(r"(\w+)=(\S+)", undelivered))
    # What the outdev got (its socket buffer, read now) plus what never left = released.
    out.sock.settimeout(TIMEOUT)
    data = bytearray()
    while chunk := out.sock.recv(1 << 20):
        data += chunk
    # A frame half sent when colo-xdp gave up is cut (counted in lost.outdev_cut).
    assert _count_records(bytes(data)) + int(u["frames"]) + int(u["cut"]) == released


# -- permissions ----------------------------------------------------------------------------

def test_evidence_is_private_and_never_written_through_a_symlink(lab):
    target = lab.path("victim")
    Path(target).write_text("keep me")
    os.symlink(target, lab.path("evidence.pcapng"))
    result = run_cli("compare", "--primary-in", f"unix:{lab.path('p')},server=on",
                     "--secondary-in", f"unix:{lab.path('s')},server=on",
                     "--outdev", f"unix:{lab.path('o')},server=on",
                     "--miscompare-pcap", lab.path("evidence.pcapng"))
    assert result.returncode == 1
    assert "symbolic link" in one_error_line(result)
    assert Path(target).read_text() == "keep me"
    os.unlink(lab.path("evidence.pcapng"))

    old = os.umask(0)
    try:
        cmp = lab.start(args=("--miscompare-pcap", lab.path("evidence.pcapng")))
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(lab.path("evidence.pcapng")).st_mode) == 0o600
    for name in ("pin.sock", "sin.sock", "out.sock", "notify.sock"):
        assert stat.S_IMODE(os.stat(lab.path(name)).st_mode) == 0o660, name
    cmp.stop_summary()


@pytest.mark.parametrize("args", [
    ["ctl", "--timeout", "1e300", "checkpoint"], ["ctl", "--timeout", "nan", "stats"],
    ["stats", "--interval", "nan", "--once"], ["stats", "--interval", "1e300", "--once"],
    ["compare", "--outdev", "unix:/x", "--control-idle-timeout", "nan"],
    ["forward", "--xdp", "x", "--to", "unix:/x", "--control-idle-timeout", "inf"],
    ["compare", "--outdev", "unix:/x", "--miscompare-pcap-size", "nan"],
])
def test_numbers_no_clock_can_hold_are_refused(args):
    """Found while fixing --compare-timeout: the same OverflowError (or a
    ValueError for nan) waited in every seconds option."""
    result = run_cli(*args)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and "Invalid value for" in result.stderr


def test_a_record_cut_short_by_the_stop_is_counted(lab):
    cmp = lab.start()
    out, note, pin, sin = connect_all(lab)
    whole = flow_frame(1, 1)
    pin.send(whole)
    sin.send(whole)
    assert out.frames(1) == [whole]
    pin.send_raw(struct.pack(">I", 100) + bytes(40))         # 40 of 100 bytes, then SIGTERM
    time.sleep(0.1)
    s = cmp.stop_summary()
    assert s.dropped == (1, 0)                                # the cut one: truncated
    assert "frame_dropped side=primary reason=truncated bytes=44" in cmp.log
