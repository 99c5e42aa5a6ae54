"""Structured logs: stable event names, ``--log-format json``, rate limiting."""
from __future__ import annotations

import io
import json
import logging
import re
from pathlib import Path

import pytest

from colo_xdp.observe import log as logmod
from colo_xdp.observe.log import EVENT_NAMES, EventLog
from test_service import connect_all, udp

ROOT = Path(__file__).resolve().parents[2]


def test_every_event_name_in_the_source_is_a_stable_one():
    calls = re.compile(r"""\.(?:event|warning|once)\(\s*["']([a-z_]+)["']""")
    used = set()
    for path in (ROOT / "colo_xdp").rglob("*.py"):
        used |= set(calls.findall(path.read_text()))
    assert used, "no log calls found"
    assert used <= set(EVENT_NAMES), sorted(used - set(EVENT_NAMES))
    docs = (ROOT / "docs" / "observability.md").read_text()
    for name in EVENT_NAMES:
        assert f"`{name}`" in docs, f"{name} is not documented in docs/observability.md"


@pytest.fixture
def captured():
    """The colo_xdp logger's output, restored afterwards."""
    saved = (logmod.logger.handlers[:], logmod.logger.level, logmod._format_in_use)
    stream = io.StringIO()

    def use(fmt: str) -> io.StringIO:
        logmod.setup(False, fmt)
        logmod.logger.handlers[0].stream = stream
        return stream
    yield use
    logmod.logger.handlers[:], logmod.logger.level, logmod._format_in_use = saved


def test_json_lines(captured):
    stream = captured("json")
    log = EventLog()
    log.event("checkpoint_requested", reason="mismatch", conn="udp 1.2.3.4:1 > 5.6.7.8:2")
    log.warning("frame_dropped", side="secondary", reason="unsupported", conn="-")
    log.once("stopped", frames_in="1/1", released=1)
    lines = [json.loads(x) for x in stream.getvalue().splitlines()]
    assert [x["event"] for x in lines] == ["checkpoint_requested", "frame_dropped", "stopped"]
    assert lines[0]["reason"] == "mismatch" and lines[0]["level"] == "info"
    assert lines[1]["level"] == "warning"
    assert lines[2]["released"] == 1
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", lines[0]["ts"])


def test_text_lines_unchanged(captured):
    stream = captured("text")
    EventLog().event("checkpoint_requested", reason="mismatch", conn="udp a > b")
    assert stream.getvalue() == 'colo-xdp: checkpoint_requested reason=mismatch conn="udp a > b"\n'


def test_rate_limit_holds_in_json_and_the_tap_sees_everything(captured):
    stream = captured("json")
    now = [0.0]
    log = EventLog(burst=3, clock=lambda: now[0])
    tapped = []
    log.tap = lambda name, fields: tapped.append(name)
    for _ in range(10):
        log.event("checkpoint_requested", reason="timeout")
    now[0] = 1.5
    log.event("checkpoint_requested", reason="timeout")
    lines = [json.loads(x) for x in stream.getvalue().splitlines()]
    assert len(lines) == 4
    assert lines[-1]["suppressed"] == 7
    assert len(tapped) == 11                       # subscribers get every one


def test_suppressed_counts_are_said_even_when_no_next_line_comes(captured):
    stream = captured("text")
    now = [0.0]
    log = EventLog(burst=2, clock=lambda: now[0])
    for _ in range(5):
        log.warning("frame_dropped", side="primary", reason="queue_full")
    log.event("checkpoint_requested", reason="mismatch")
    log.tick()                                      # the window is not over yet
    assert "events_suppressed" not in stream.getvalue()
    now[0] = 1.2
    log.tick()
    assert stream.getvalue().splitlines()[-1] == \
        "colo-xdp: events_suppressed event=frame_dropped suppressed=3"
    log.warning("frame_dropped", side="primary", reason="queue_full")
    assert "suppressed=" not in stream.getvalue().splitlines()[-1]   # said once, not twice
    for _ in range(3):
        log.warning("frame_dropped", side="primary", reason="queue_full")
    log.tick(final=True)                            # at exit: whatever window
    assert stream.getvalue().splitlines()[-1] == \
        "colo-xdp: events_suppressed event=frame_dropped suppressed=2"


def test_service_logs_json(lab):
    cmp = lab.start(args=("--log-format", "json"), ready=False)
    first = json.loads(cmp.wait_line(r'"event":"ready"'))
    assert first["level"] == "info"
    out, note, pin, sin = connect_all(lab)
    pin.send(udp(b"AAAA"))
    sin.send(udp(b"BBBB"))
    line = json.loads(cmp.wait_line(r'"event":"checkpoint_requested"'))
    assert line["reason"] == "mismatch"
    assert line["conn"] == "udp 10.0.0.1:1000 > 10.0.0.2:2000"
    assert cmp.stop() == 0
    events = [json.loads(x) for x in cmp.lines]        # every line is JSON
    assert events[-1]["event"] == "stopped"
    # Numbers stay numbers: per side as an object, as in stats.
    assert events[-1]["frames_in"] == {"primary": 1, "secondary": 1}
    assert events[-1]["checkpoints_requested"] == 1


def test_errors_are_json_too(lab):
    cmp = lab.start(pin="unix:", args=("--log-format", "json"), ready=False)
    assert cmp.wait(5) == 2                   # exited, its stderr read to the end
    (line,) = cmp.lines
    obj = json.loads(line)
    assert obj["event"] == "error" and "names no socket path" in obj["error"]


def test_unknown_format_is_refused():
    with pytest.raises(ValueError):
        logmod.setup(False, "xml")
    assert logging.getLogger("colo_xdp") is logmod.logger
