"""The time of the last checkpoint, in stats and in /metrics."""
from __future__ import annotations

import time

from control_kit import Ctl
from test_metrics import samples, start
from test_service import COLO_CHECKPOINT_WIRE, connect_all

NAME = "colo_xdp_last_checkpoint_timestamp_seconds"


def test_last_checkpoint_time_in_stats_and_metrics(lab):
    cmp, port = start(lab, "--control", lab.path("ctl.sock"))
    ctl = Ctl.unix(lab.path("ctl.sock"))
    lab.track(ctl.sock)
    assert ctl.ask({"cmd": "stats"})["stats"]["last_checkpoint_unix"] is None
    assert not any(name == NAME for name, _ in samples(port))     # absent until one
    out, note, pin, sin = connect_all(lab)
    before = time.time()
    note.send_raw(COLO_CHECKPOINT_WIRE)
    deadline = time.monotonic() + 5
    while (at := ctl.ask({"cmd": "stats"})["stats"]["last_checkpoint_unix"]) is None:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert before - 0.01 <= at <= time.time()
    assert samples(port)[(NAME, frozenset())] == at
    cmp.stop_summary()
