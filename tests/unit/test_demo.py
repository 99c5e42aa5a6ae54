"""`colo-xdp demo`: the command end to end, its cross-check, and its cleanup."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from colo_xdp.lab import chardev_demo as demo
from colo_xdp.lab.pktgen import icmp_echo_frame, udp_frame
from colo_xdp.lab.process import colo_xdp_command

DEMO_BUDGET_S = 10.0


def _demo_argv(*args: str) -> list[str]:
    """The chardev demo (`colo-xdp demo --chardev`, `make demo`'s fallback), run by
    the colo-xdp script of this Python."""
    return [*colo_xdp_command(), "demo", "--chardev", *args]


def _header_value(text: str, name: str) -> str:
    return re.search(rf"^  {name} +(\S+)", text, re.M).group(1).rstrip(",")


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def _row(event: str, proto: str, detail: str, why: str) -> re.Pattern:
    """An event line, whatever its time and addresses."""
    return re.compile(rf"^ +\d+  {re.escape(event)} +{proto} .*{re.escape(detail)}\S* +{why}$",
                      re.M)


# --- the command, end to end ----------------------------------------------------------

def test_demo_command_plays_the_scenario_as_expected():
    began = time.monotonic()
    done = subprocess.run(_demo_argv(), capture_output=True, text=True,
                          timeout=DEMO_BUDGET_S * 3)
    took = time.monotonic() - began
    out = done.stdout

    assert done.returncode == 0, out + done.stderr
    assert took < DEMO_BUDGET_S
    for number in range(1, 6):
        assert f"Phase {number} of 5: " in out
    # Releases with their why, and checkpoints with the reason from the service's log.
    assert _row("released", "ARP", "is-at", "unsupported").search(out)
    assert _row("dropped", "ARP", "secondary frame", "unsupported").search(out)
    assert len(_row("released", "ICMP", "echo-reply seq=", "matched").findall(out)) == 3
    assert _row("checkpoint", "UDP", "DO_CHECKPOINT", "mismatch").search(out)
    assert _row("released", "UDP", "len=24", "flushed").search(out)
    assert _row("released", "TCP", "[S.] seq=1000 len=0", "no_payload").search(out)
    assert _row("released", "TCP", "[P.] seq=1201 len=100", "matched").search(out)
    assert _row("checkpoint", "UDP", "DO_CHECKPOINT", "timeout").search(out)
    assert len(_row("released", "UDP", "", "flushed").findall(out)) == 3
    # The summary: what the demo saw, what the service counted, what was expected.
    assert re.search(r"^  frames in, primary +16 +16 +16$", out, re.M)
    assert re.search(r"^  frames in, secondary +13 +13 +13$", out, re.M)
    assert re.search(r"^  released +16 +16 +16$", out, re.M)
    assert re.search(r"^  checkpoints requested +2 +2 +2$", out, re.M)
    assert re.search(r"^    mismatch +1 +1$", out, re.M)
    assert re.search(r"^    timeout +1 +1$", out, re.M)
    assert re.search(r"^  dropped, secondary +2 +2 +2$", out, re.M)
    assert "released exactly once, in per-connection order: yes" in out
    assert "Differences" not in out
    assert "colo-xdp demo: as expected" in out
    # Nothing left behind.
    assert not Path(_header_value(out, "DIR")).exists()
    assert _gone(int(_header_value(out, "pid")))


def test_quiet_prints_the_summary_only():
    lines: list[str] = []

    assert demo.run(quiet=True, echo=lines.append) is True

    text = "\n".join(lines)
    assert lines[0] == "Summary"
    assert "Phase" not in text and "  DIR " not in text
    assert re.search(r"^  released +16 +16 +16$", text, re.M)
    assert lines[-1].startswith("colo-xdp demo: as expected")


def test_ctrl_c_stops_the_service_and_removes_its_directory():
    proc = subprocess.Popen(_demo_argv(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    seen = []
    try:
        for line in proc.stdout:
            seen.append(line)
            if line.startswith("Phase 2 "):
                proc.send_signal(signal.SIGINT)
                break
        seen.append(proc.stdout.read())
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
    out = "".join(seen)

    assert proc.returncode == 130, out
    assert "demo interrupted" in out
    assert not Path(_header_value(out, "DIR")).exists()
    assert _gone(int(_header_value(out, "pid")))


# --- the cross-check bites -------------------------------------------------------------

def test_a_scenario_the_service_disagrees_with_fails():
    """The script claims a match, but the secondary's reply differs: the service
    requests checkpoints, holds the frame, and releases it only when stopped."""
    pri = icmp_echo_frame(b"abcd", seq=1, reply=True, src="10.0.0.2", dst="10.0.0.100")
    sec = icmp_echo_frame(b"abcX", seq=1, reply=True, src="10.0.0.2", dst="10.0.0.100")
    lying = [demo.Phase("lying", "expects a match that is not one", (
        demo.Step(demo.Act.PRIMARY, pri, "reply"),
        demo.Step(demo.Act.SECONDARY, sec, "reply", releases=(pri,))))]
    lines: list[str] = []

    assert demo.run(quiet=True, echo=lines.append, phases=lying) is False

    text = "\n".join(lines)
    assert "released nothing; expected reply" in text
    assert re.search(r"checkpoint requests: mismatch on icmp 10\.0\.0\.2:0 > 10\.0\.0\.100:0",
                     text)
    assert "still held when the service stopped: reply" in text
    assert "released matched: seen 0, expected 1" in text
    assert lines[-1].startswith("colo-xdp demo: NOT as expected")


def _udp(payload: bytes, sport: int = 1000) -> bytes:
    return udp_frame(payload, sport=sport)


def test_order_check_wants_each_primary_frame_once_in_connection_order():
    a1, a2, b1 = _udp(b"a1"), _udp(b"a2"), _udp(b"b1", sport=2000)
    labels = demo.Labels([])
    sent = [a1, a2, b1]

    # Connections may interleave any way; within one, the order is the order sent.
    assert demo.order_differences(sent, [b1, a1, a2], labels) == []
    assert len(demo.order_differences(sent, [a2, a1, b1], labels)) == 1
    missing_and_twice = demo.order_differences(sent, [a1, a1, b1], labels)
    assert any("released 2 times" in d for d in missing_and_twice)
    assert any("released 0 times" in d for d in missing_and_twice)
    assert demo.order_differences(sent, [a1, a2, b1, _udp(b"x")], labels)


def test_the_scenario_expects_every_primary_frame_released_once():
    demo.check_scenario(demo.scenario())
    frame = _udp(b"once")
    with pytest.raises(ValueError, match="exactly once"):
        demo.check_scenario([demo.Phase("p", "", (demo.Step(demo.Act.PRIMARY, frame, "f"),))])
    with pytest.raises(ValueError, match="twice"):
        demo.check_scenario([demo.Phase("p", "", (
            demo.Step(demo.Act.PRIMARY, frame, "f", releases=(frame,)),
            demo.Step(demo.Act.PRIMARY, frame, "f")))])


def test_checkpoint_reasons_are_read_from_the_service_log():
    seen = [demo.Seen(1.0, demo.NOTIFY, b"DO_CHECKPOINT"),
            demo.Seen(1.1, demo.LOG, 'colo-xdp: checkpoint_requested reason=mismatch '
                                     'conn="udp 10.0.0.2:7000 > 10.0.0.100:40000"'),
            demo.Seen(1.2, demo.LOG, "colo-xdp: frame_dropped side=secondary "
                                     "reason=flushed conn=-"),
            demo.Seen(1.3, demo.LOG, "colo-xdp: stopped frames_in=3/2 released=3 "
                                     "dropped=0/1 checkpoints_requested=1")]

    got = demo.Outcome.from_seen(seen)

    assert got.checkpoints == [(1.0, "mismatch", "udp 10.0.0.2:7000 > 10.0.0.100:40000")]
    assert got.drops == [(1.2, "secondary", "flushed", "-")]
    assert demo.service_counts(got.stopped) == {
        "in primary": 3, "in secondary": 2, "released": 3, "checkpoints": 1,
        "dropped primary": 0, "dropped secondary": 1}
