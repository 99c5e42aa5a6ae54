"""colo-xdp under systemd: Type=notify (READY=1 when `ready` is logged, the
watchdog from the loop, STOPPING=1), journald's priorities, and the unit
files as `colo-xdp install-units` writes them, checked by systemd-analyze.

The NOTIFY_SOCKET is a datagram socket this test owns (a path, and an
abstract ``@`` address), so nothing needs systemd running as PID 1.
"""
from __future__ import annotations

import os
import re
import socket
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from control_kit import need_tool
from test_service import TIMEOUT, colo_xdp_argv, connect_all, udp

from colo_xdp.service.sdnotify import Notifier


class NotifySocket:
    """A NOTIFY_SOCKET of our own: the datagrams colo-xdp sends to systemd."""

    def __init__(self, address: str):
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + address[1:] if address.startswith("@") else address)
        self.sock.settimeout(TIMEOUT)
        self.messages: list[str] = []

    def wait(self, state: str, timeout: float = TIMEOUT) -> list[str]:
        """Messages until one with the line ``state``; all of them so far."""
        deadline = time.monotonic() + timeout
        while not any(state in m.split("\n") for m in self.messages):
            self.sock.settimeout(max(deadline - time.monotonic(), 0.001))
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except socket.timeout:
                raise AssertionError(f"no {state} among {self.messages}") from None
        return self.messages

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(params=["path", "abstract"])
def notify_socket(request, lab, monkeypatch):
    if request.param == "path":
        address = lab.path("notify-systemd")
    else:
        address = f"@cxp-notify-{uuid.uuid4().hex[:12]}"
    ns = NotifySocket(address)
    monkeypatch.setenv("NOTIFY_SOCKET", address)
    monkeypatch.setenv("WATCHDOG_USEC", "200000")          # a ping every 0.1 s
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    try:
        yield ns
    finally:
        ns.close()


def test_type_notify_ready_watchdog_stopping(lab, notify_socket):
    cmp = lab.start(ready=False)
    messages = notify_socket.wait("READY=1")
    cmp.wait_line(r"^colo-xdp: ready$")     # logged just before READY=1 was sent
    ready = next(m for m in messages if "READY=1" in m.split("\n"))
    assert f"MAINPID={cmp.proc.pid}" in ready.split("\n")
    out, note, pin, sin = connect_all(lab)
    pair = udp(b"under systemd")
    pin.send(pair)
    sin.send(pair)
    assert out.frames(1) == [pair]
    start = len(notify_socket.messages)
    end = time.monotonic() + 0.6               # pings due every 0.1 s; the loop idles 0.5 s
    while (left := end - time.monotonic()) > 0:
        notify_socket.sock.settimeout(left)
        try:
            notify_socket.messages.append(notify_socket.sock.recv(4096).decode())
        except socket.timeout:
            break
    pings = [m for m in notify_socket.messages[start:] if m == "WATCHDOG=1"]
    assert 3 <= len(pings) <= 10, notify_socket.messages[start:]
    cmp.terminate()
    notify_socket.wait("STOPPING=1")
    assert cmp.proc.wait(TIMEOUT) == 0


def test_a_watchdog_for_another_pid_is_not_ours():
    n = Notifier({"NOTIFY_SOCKET": "/nonexistent", "WATCHDOG_USEC": "1000000",
                  "WATCHDOG_PID": str(os.getpid() + 1)})
    assert n.watchdog_s is None
    assert Notifier({"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "1000000"}).watchdog_s == 1.0
    assert not Notifier({}).enabled
    n = Notifier({"NOTIFY_SOCKET": "/nonexistent/socket"})
    n.ready()                                                # unreachable: counted, not raised
    assert n.errors == 1


def test_journald_gets_syslog_priorities(lab, monkeypatch):
    """stderr as $JOURNAL_STREAM says: a warning is <4>, info <6>."""
    import subprocess as sp
    r, w = os.pipe()
    st = os.fstat(w)
    monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
    proc = sp.Popen(colo_xdp_argv() + [
        "compare", "--primary-in", f"unix:{lab.path('pin.sock')},server=on",
        "--secondary-in", f"unix:{lab.path('sin.sock')},server=on",
        "--outdev", f"tcp:127.0.0.1:1,reconnect=5"], stdin=sp.DEVNULL, stdout=sp.DEVNULL,
        stderr=w)
    os.close(w)
    try:
        with os.fdopen(r) as stream:
            lines = []
            for line in stream:
                lines.append(line.rstrip("\n"))
                if line.startswith("<6>colo-xdp: ready"):
                    break
    finally:
        proc.terminate()
        proc.wait(TIMEOUT)
    assert any(line.startswith("<4>colo-xdp: connect_failed role=outdev ") for line in lines), lines
    assert "<6>colo-xdp: ready" in lines
    assert all(line[:3] in ("<4>", "<6>") for line in lines), lines


def test_log_timestamps_on_stderr(lab):
    cmp = lab.start(args=("--log-timestamps",), ready=False)
    line = cmp.wait_line(r"colo-xdp: ready$")
    assert __import__("re").fullmatch(
        r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z info colo-xdp: ready", line), line
    cmp.terminate()
    cmp.proc.wait(TIMEOUT)


# -- the unit files ---------------------------------------------------------------------------

def test_install_units_and_systemd_analyze_verify(tmp_path):
    analyze = need_tool("systemd-analyze")
    exe = colo_xdp_argv()[0]
    if not os.access(exe, os.X_OK) or not exe.endswith("colo-xdp"):
        pytest.fail(f"no colo-xdp console script to put in ExecStart ({exe}); make setup")
    result = subprocess.run([exe, "install-units", "--dir", str(tmp_path)], capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["colo-xdp-compare@.service", "colo-xdp-forward@.service"]
    for name in names:
        text = (tmp_path / name).read_text()
        assert f"ExecStart={exe} " in text
        assert "Type=notify" in text and "WatchdogSec=" in text
        assert "CapabilityBoundingSet=" in text and "NoNewPrivileges=yes" in text
        assert oct((tmp_path / name).stat().st_mode & 0o777) == "0o644"
        # systemd-analyze verifies an instance; unknown keys are only warnings
        # on stderr, so a clean verify is rc 0 and nothing said.
        instance = tmp_path / name.replace("@.", "@vm1.")
        instance.write_text(text)
        check = subprocess.run([analyze, "verify", str(instance)], capture_output=True,
                               text=True, timeout=60, cwd=tmp_path)
        assert check.returncode == 0 and check.stderr.strip() == "", (name, check.stderr)
        instance.unlink()


def test_systemd_analyze_catches_what_this_test_looks_for(tmp_path):
    """The verify above would fail on a typo: it is not a test that cannot fail."""
    analyze = need_tool("systemd-analyze")
    exe = colo_xdp_argv()[0]
    text = (Path(__file__).resolve().parents[2] / "systemd" / "colo-xdp-compare@.service") \
        .read_text().replace("/usr/local/bin/colo-xdp", exe).replace("Type=notify", "Type=notfy")
    bad = tmp_path / "colo-xdp-compare@vm1.service"
    bad.write_text(text)
    check = subprocess.run([analyze, "verify", str(bad)], capture_output=True, text=True,
                           timeout=60, cwd=tmp_path)
    assert "notfy" in check.stderr


def test_install_units_into_a_missing_directory_is_one_line(tmp_path):
    result = subprocess.run(colo_xdp_argv() + ["install-units", "--dir", str(tmp_path / "no")],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert result.stderr == f"colo-xdp: error: {tmp_path / 'no'} is not a directory; create " \
                            "it or give another --dir\n"


def test_a_log_file_that_cannot_be_reopened_keeps_the_old_one(tmp_path):
    from colo_xdp.observe import log as logmod
    path = tmp_path / "logs" / "colo.log"
    path.parent.mkdir()
    logmod.setup(False, "text", log_file=str(path))
    try:
        logmod.EventLog().event("ready")
        path.rename(tmp_path / "colo.log.1")
        path.parent.rmdir()                        # nowhere to create the new file
        with pytest.raises(OSError):
            logmod.reopen()
        logmod.EventLog().event("status", frames_in=1)
        text = (tmp_path / "colo.log.1").read_text()
        assert re.search(r"Z info colo-xdp: ready\n.*Z info colo-xdp: status frames_in=1\n$",
                         text, re.S), text
    finally:
        logmod.setup(False, "text")
