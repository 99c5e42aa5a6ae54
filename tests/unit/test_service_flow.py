"""Issue 11 through the real CLI: traffic shaped like QEMU's (independent
writers for primary and secondary, one side running ahead), many new flows
through a small table, passthrough with a full table, stats on a big table."""
from __future__ import annotations

import threading
import time

import pytest

from colo_xdp.lab.pktgen import encode, udp_frame
from control_kit import Ctl
from test_service import ServiceSandbox, lab  # noqa: F401  (the fixture)

N = 20_000


def frames_of(n: int, flows: int = 1) -> list[bytes]:
    return [udp_frame(b"frame %d" % i, sport=1000 + i % flows, dport=2000 + (i // flows) % 7
                      if flows > 1 else 2000) for i in range(n)]


class Writers:
    """Two independent writer threads, in bursts of 128 frames, as QEMU's
    two VMs would write: ``lead_side`` starts first and stays up to
    ``lead`` frames ahead of the other; the other writes as fast as it can
    once the lead is there (or after half a second: a writer blocked by
    backpressure cannot build more lead)."""

    def __init__(self, pin, sin, frames: list[bytes], lead_side: str, lead: int):
        self.frames = frames
        self.lead_side = lead_side
        self.lead = lead
        self.sent = {"primary": 0, "secondary": 0}
        self.cond = threading.Condition()
        self.errors: list[BaseException] = []
        self.threads = [threading.Thread(target=self._run, args=(sock, side), daemon=True)
                        for sock, side in ((pin.sock, "primary"), (sin.sock, "secondary"))]

    def _run(self, sock, side: str) -> None:
        other = "secondary" if side == "primary" else "primary"
        try:
            sock.settimeout(30)
            if side != self.lead_side:
                with self.cond:
                    self.cond.wait_for(lambda: self.sent[other] >= self.lead, timeout=0.5)
            pos = 0
            while pos < len(self.frames):
                if side == self.lead_side:
                    with self.cond:            # never more than `lead` ahead
                        self.cond.wait_for(lambda: pos + 128 - self.sent[other] <= self.lead,
                                           timeout=30)
                chunk = self.frames[pos:pos + 128]
                sock.sendall(b"".join(encode(f) for f in chunk))
                pos += len(chunk)
                with self.cond:
                    self.sent[side] = pos
                    self.cond.notify_all()
        except BaseException as exc:       # reported by join()
            self.errors.append(exc)

    def start(self) -> "Writers":
        for t in self.threads:
            t.start()
        return self

    def join(self) -> None:
        for t in self.threads:
            t.join(60)
        assert not self.errors, self.errors


@pytest.mark.parametrize("lead_side", ["secondary", "primary"])
def test_one_side_2048_frames_ahead_loses_nothing_and_asks_nothing(lab, lead_side):
    cmp = lab.start()
    notify = lab.connect("notify.sock")
    out = lab.connect("out.sock")
    pin, sin = lab.connect("pin.sock"), lab.connect("sin.sock")
    frames = frames_of(N)
    writers = Writers(pin, sin, frames, lead_side, 2048).start()
    assert out.frames(N, timeout=60) == frames
    writers.join()
    out.expect_quiet()
    notify.sock.settimeout(0.2)
    with pytest.raises(TimeoutError):
        notify.sock.recv(100)              # not one DO_CHECKPOINT
    s = cmp.stop_summary()
    assert s.frames_in == (N, N)
    assert (s.released, s.dropped, s.checkpoints) == (N, (0, 0), 0)


def test_20000_new_flows_through_a_table_of_1024(lab):
    cmp = lab.start(notify=False, args=("--max-connections", "1024"))
    out = lab.connect("out.sock")
    pin, sin = lab.connect("pin.sock"), lab.connect("sin.sock")
    frames = [udp_frame(b"new flow", sport=1 + i % 60000, dport=1 + i // 60000)
              for i in range(N)]
    writers = Writers(pin, sin, frames, "primary", 4096).start()
    assert out.frames(N, timeout=60) == frames
    writers.join()
    s = cmp.stop_summary()
    assert (s.released, s.dropped, s.checkpoints) == (N, (0, 0), 0)


def test_passthrough_is_never_dropped_for_a_full_table(lab):
    cmp = lab.start(notify=False, args=("--max-connections", "4",
                                        "--passthrough", "udp * > *:9999"))
    out = lab.connect("out.sock")
    pin, sin = lab.connect("pin.sock"), lab.connect("sin.sock")
    busy = [udp_frame(b"held", sport=10 + i) for i in range(4)]
    pin.send(*busy)                          # the table: four connections holding frames
    passing = [udp_frame(b"pass %d" % i, sport=20000 + i, dport=9999) for i in range(500)]
    pin.send(*passing)
    sin.send(*passing)
    assert out.frames(500) == passing
    sin.send(*busy)
    assert out.frames(4) == busy
    s = cmp.stop_summary()
    assert s.released == 504
    assert s.dropped == (0, 500)             # the secondary's passthrough copies
    assert s.checkpoints == 0


def test_stats_on_262144_connections_is_fast_and_the_loop_goes_on(lab):
    ctl_path = lab.path("ctl.sock")
    cmp = lab.start(notify=False, args=("--control", ctl_path,
                                        "--max-connections", "262144"))
    out = lab.connect("out.sock")
    pin, sin = lab.connect("pin.sock"), lab.connect("sin.sock")
    n = 262_144
    flows = b"".join(encode(udp_frame(b"c", sport=1 + i % 60000, dport=1 + i // 60000))
                     for i in range(n))
    pin.sock.settimeout(60)
    pin.send_raw(flows)
    ctl = Ctl.unix(ctl_path)
    lab.track(ctl.sock)
    deadline = time.monotonic() + 60
    while ctl.ask({"cmd": "stats"})["stats"]["connections"]["count"] < n:
        assert time.monotonic() < deadline, "the flows never all arrived"
        time.sleep(0.1)
    t0 = time.monotonic()
    reply = ctl.ask({"cmd": "stats", "connections": 20})
    took = time.monotonic() - t0
    assert reply["ok"] and len(reply["stats"]["connections"]["table"]) == 20
    assert took < 0.3, f"stats took {took:.3f} s"
    # the data path is served right after
    t0 = time.monotonic()
    probe = udp_frame(b"c", sport=1, dport=1)      # the partner of the first flow
    sin.send(probe)
    assert out.frames(1)[0] == probe
    assert time.monotonic() - t0 < 0.3
    cmp.stop()


def test_flow_high_water_is_how_far_a_side_is_read_ahead(lab):
    """--flow-high-water 8: a primary 20 frames ahead on one flow is read 8
    frames in, the rest waits in its socket until the secondary catches up;
    then all 20 pairs are released and nothing is dropped."""
    ctl_path = lab.path("ctl.sock")
    cmp = lab.start(notify=False, args=("--control", ctl_path, "--flow-high-water", "8"))
    assert "flow_high_water=8" in cmp.wait_line(r"^colo-xdp: started ")
    out = lab.connect("out.sock")
    pin, sin = lab.connect("pin.sock"), lab.connect("sin.sock")
    frames = frames_of(20)
    pin.send(*frames)
    ctl = Ctl.unix(ctl_path)
    lab.track(ctl.sock)
    time.sleep(0.1)                                  # well under the 1 s a side may stall
    s = ctl.ask({"cmd": "stats"})["stats"]
    assert s["frames_in"]["primary"] == 8 and s["held"]["primary"] == 8
    sin.send(*frames)
    assert out.frames(20) == frames
    summary = cmp.stop_summary()
    assert summary.dropped == (0, 0) and summary.checkpoints == 0


def test_both_sides_read_far_past_the_high_water_mark_go_on_without_force(lab):
    """Each side's read holds far more than --flow-high-water frames beyond
    the other's (what a 1 MiB read of small frames does): both inputs are
    held after every round of feeds, but every round takes frames, so the
    loop feeds again instead of forcing one side past a queue of 64 (which
    dropped for queue_full and asked for a checkpoint)."""
    cmp = lab.start(notify=False, args=("--flow-high-water", "8", "--max-queue-size", "64"))
    out = lab.connect("out.sock")
    pin, sin = lab.connect("pin.sock"), lab.connect("sin.sock")
    frames = frames_of(300)
    sin.send(*frames)
    time.sleep(0.1)                                  # read: 8 taken, the rest held
    pin.send(*frames)
    assert out.frames(300) == frames
    summary = cmp.stop_summary()
    assert summary.dropped == (0, 0) and summary.checkpoints == 0


def test_flow_high_water_over_the_queue_size_is_one_line(lab):
    cmp = lab.start(notify=False, ready=False,
                    args=("--max-queue-size", "16", "--flow-high-water", "17"))
    assert cmp.proc.wait(10) == 2
    assert "flow_high_water must be from 0 to max_queue_size (16)" in cmp.log
