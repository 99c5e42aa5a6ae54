"""``--metrics HOST:PORT``: scrape a real service over HTTP and read the
exposition back with prometheus_client's own parser."""
from __future__ import annotations

import http.client
import re
import socket
import time
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from colo_xdp.lab.pktgen import arp_frame
from test_service import ServiceSandbox, connect_all, free_tcp_ports, udp

TIMEOUT = 5.0


def start(lab: ServiceSandbox, *args: str):
    (port,) = free_tcp_ports(1)
    cmp = lab.start(args=("--metrics", f"127.0.0.1:{port}", *args))
    return cmp, port


def scrape(port: int, accept: str | None = None) -> tuple[str, str]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/metrics")
    if accept:
        req.add_header("Accept", accept)
    with urllib.request.urlopen(req, timeout=TIMEOUT) as resp:
        assert resp.status == 200
        return resp.read().decode(), resp.headers["Content-Type"]


def samples(port: int) -> dict[tuple, float]:
    """{(sample name, frozenset(labels)): value} from one scrape."""
    text, _ = scrape(port)
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(got: dict, name: str, **labels) -> float:
    return got[(name, frozenset(labels.items()))]


def wait_metric(port: int, name: str, expected: float, **labels) -> dict:
    deadline = time.monotonic() + TIMEOUT
    while True:
        got = samples(port)
        if got.get((name, frozenset(labels.items()))) == expected:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"{name}{labels} never became {expected}: "
                                 f"{got.get((name, frozenset(labels.items())))}")
        time.sleep(0.02)


def test_scrape_counts_what_happened(lab):
    cmp, port = start(lab)
    out, note, pin, sin = connect_all(lab)
    pairs = [udp(b"pair %d" % i, sport=1000 + i) for i in range(3)]
    pin.send(*pairs)
    sin.send(*pairs)
    assert out.frames(3) == pairs
    pin.send(udp(b"AAAA", sport=2000))
    sin.send(udp(b"BBBB", sport=2000))                   # a UDP mismatch: both held
    sin.send(arp_frame(), arp_frame())                   # unsupported secondary: dropped
    got = wait_metric(port, "colo_xdp_dropped_frames_total", 2, side="secondary",
                      reason="unsupported")
    assert value(got, "colo_xdp_frames_total", side="primary") == 4
    assert value(got, "colo_xdp_frames_total", side="secondary") == 6
    primary_bytes = sum(map(len, pairs)) + len(udp(b"AAAA"))
    assert value(got, "colo_xdp_bytes_total", side="primary") == primary_bytes
    assert value(got, "colo_xdp_pairs_compared_total") == 4
    assert value(got, "colo_xdp_mismatches_total", proto="udp_icmp") == 1
    assert value(got, "colo_xdp_mismatches_total", proto="tcp") == 0
    assert value(got, "colo_xdp_checkpoint_requests_total", reason="mismatch") == 1
    assert value(got, "colo_xdp_checkpoint_requests_total", reason="timeout") == 0
    assert value(got, "colo_xdp_released_frames_total", reason="matched") == 3
    assert value(got, "colo_xdp_released_bytes_total") == sum(map(len, pairs))
    assert value(got, "colo_xdp_queued_frames", side="primary") == 1
    assert value(got, "colo_xdp_queued_frames", side="secondary") == 1
    assert value(got, "colo_xdp_connections") == 4
    assert value(got, "colo_xdp_connections_opened_total") == 4
    assert value(got, "colo_xdp_peer_connected", role="outdev") == 1
    assert value(got, "colo_xdp_failover") == 0
    info = [(dict(labels), v) for (name, labels), v in got.items() if name == "colo_xdp_info"]
    assert len(info) == 1 and info[0][0]["mode"] == "chardev" and info[0][1] == 1
    assert ("process_cpu_seconds_total", frozenset()) in got

    # A checkpoint (notify-dev) shows up as released by flush and dropped secondary.
    note.send_raw(b"\x00\x00\x00\x0fCOLO_CHECKPOINT")
    got = wait_metric(port, "colo_xdp_checkpoints_total", 1, source="notify-dev")
    assert value(got, "colo_xdp_released_frames_total", reason="flushed") == 1
    assert value(got, "colo_xdp_dropped_frames_total", side="secondary", reason="flushed") == 1
    assert value(got, "colo_xdp_queued_frames", side="primary") == 0
    # Every primary frame released (3 matched, 1 flushed) is in the hold histogram.
    assert value(got, "colo_xdp_hold_seconds_count") == 4
    les = sorted(((float(dict(labels)["le"]), v) for (name, labels), v in got.items()
                  if name == "colo_xdp_hold_seconds_bucket"))
    assert len(les) == 16 and les[-1] == (float("inf"), 4)
    assert [v for _, v in les] == sorted(v for _, v in les)      # cumulative
    assert value(got, "colo_xdp_hold_seconds_sum") >= 0


def test_hold_histogram_is_cumulative_and_in_seconds(tmp_path):
    """Engine -> stats snapshot's hold_ms -> the colo_xdp_hold_seconds family,
    read back with prometheus_client's parser (a service not started)."""
    from prometheus_client import CollectorRegistry, generate_latest

    from colo_xdp.engine import Side
    from colo_xdp.lab.pktgen import udp_frame
    from colo_xdp.observe.metrics import ServiceCollector
    from colo_xdp.observe.stats import render, snapshot
    from colo_xdp.service.compare import CompareService
    from colo_xdp.service.config import CompareConfig
    from colo_xdp.transport.chardev.endpoint import parse_spec

    specs = [parse_spec(f"unix:{tmp_path}/{name},server=on") for name in ("p", "s", "o")]
    svc = CompareService(CompareConfig(*specs))
    eng = svc.engine
    frames = [udp_frame(b"%d" % i, sport=1000 + i) for i in range(4)]
    eng.feed_frame(Side.PRIMARY, frames[0], 1000)
    eng.feed_frame(Side.SECONDARY, frames[0], 1000)      # held 0 ms
    eng.feed_frame(Side.PRIMARY, frames[1], 1000)
    eng.feed_frame(Side.SECONDARY, frames[1], 1005)      # held 5 ms
    eng.feed_frame(Side.PRIMARY, frames[2], 1000)
    eng.feed_frame(Side.PRIMARY, frames[3], 1005)
    eng.run_timers(1100)
    eng.checkpoint()                                     # held 100 and 95 ms
    snap = snapshot(svc)
    hold = snap["hold_ms"]
    assert hold["count"] == 4 == snap["released_total"] and hold["sum"] == 200
    assert list(hold["buckets"])[:3] == ["le_0", "le_1", "le_2"]
    assert list(hold["buckets"])[-2:] == ["le_8192", "inf"] and len(hold["buckets"]) == 16
    assert {k: v for k, v in hold["buckets"].items() if v} == {
        "le_0": 1, "le_8": 1, "le_128": 2}
    assert "hold time            mean 50.0 ms  p50 <= 8 ms  p99 <= 128 ms" in render(snap)

    registry = CollectorRegistry()
    registry.register(ServiceCollector(svc))
    text = generate_latest(registry).decode()
    assert "# TYPE colo_xdp_hold_seconds histogram" in text
    (family,) = [f for f in text_string_to_metric_families(text)
                 if f.name == "colo_xdp_hold_seconds"]
    assert family.type == "histogram"
    got = {(s.name, s.labels.get("le")): s.value for s in family.samples}
    assert got[("colo_xdp_hold_seconds_count", None)] == 4
    assert got[("colo_xdp_hold_seconds_sum", None)] == pytest.approx(0.2)
    buckets = [(float(le), v) for (name, le), v in got.items()
               if name == "colo_xdp_hold_seconds_bucket"]
    assert [le for le, _ in buckets] == [0.0] + [2 ** i / 1000 for i in range(14)] + [
        float("inf")]
    cumulative = dict(buckets)
    assert cumulative[0.0] == 1 and cumulative[0.004] == 1 and cumulative[0.008] == 2
    assert cumulative[0.064] == 2 and cumulative[0.128] == 4 and cumulative[8.192] == 4
    assert cumulative[float("inf")] == 4
    assert [v for _, v in buckets] == sorted(v for _, v in buckets)


def test_hold_histogram_is_documented():
    from pathlib import Path

    docs = (Path(__file__).resolve().parents[2] / "docs" / "observability.md").read_text()
    assert "`colo_xdp_hold_seconds`" in docs


def test_verdict_family_is_there_and_empty_in_chardev_mode(lab):
    cmp, port = start(lab)
    text, ctype = scrape(port)
    assert ctype.startswith("text/plain")
    assert re.search(r"^# TYPE colo_xdp_xdp_verdicts(_total)? counter$", text, re.M)
    assert "colo_xdp_xdp_verdicts_total{" not in text


def test_openmetrics_on_request(lab):
    cmp, port = start(lab)
    text, ctype = scrape(port, accept="application/openmetrics-text; version=1.0.0")
    assert ctype.startswith("application/openmetrics-text")
    assert text.rstrip().endswith("# EOF")


def test_http_corners(lab):
    cmp, port = start(lab)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
    conn.request("HEAD", "/metrics")
    resp = conn.getresponse()
    assert resp.status == 200 and int(resp.headers["Content-Length"]) > 0
    assert resp.read() == b""
    conn.close()
    for method, path, status in (("GET", "/", 200), ("GET", "/nope", 404),
                                 ("POST", "/metrics", 405), ("GET", "/metrics?x=1", 200)):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
        conn.request(method, path)
        assert conn.getresponse().status == status, (method, path)
        conn.close()
    # Garbage and an endless header: an error status, never a hang or a crash.
    for junk, status in ((b"\x00\x01\x02\r\n\r\n", b"400"),
                         (b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 20000, b"431")):
        with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
            sock.sendall(junk)
            assert sock.recv(100).split()[1] == status
    assert scrape(port)[0]


def test_a_silent_http_client_does_not_hold_up_anything(lab):
    cmp, port = start(lab)
    out, note, pin, sin = connect_all(lab)
    silent = [lab.track(socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT))
              for _ in range(5)]
    silent[0].sendall(b"GET /metr")                      # and never the rest
    pair = udp(b"flows")
    pin.send(pair)
    sin.send(pair)
    assert out.frames(1) == [pair]
    assert samples(port)[("colo_xdp_frames_total", frozenset({("side", "primary")}))] == 1


def test_scrapes_while_frames_flow(lab):
    """Scrapes interleave with the data path on the one loop: every scrape is
    a consistent, growing snapshot and no frame is lost."""
    cmp, port = start(lab)
    out, note, pin, sin = connect_all(lab)
    last = -1.0
    for i in range(20):
        batch = [udp(b"batch %d frame %d" % (i, j), sport=1000 + j % 7) for j in range(50)]
        pin.send(*batch)
        sin.send(*batch)
        got = samples(port)
        frames = value(got, "colo_xdp_frames_total", side="primary")
        assert frames >= last
        last = frames
        assert out.frames(50) == batch
    got = wait_metric(port, "colo_xdp_released_frames_total", 1000, reason="matched")
    assert value(got, "colo_xdp_frames_total", side="primary") == 1000
    cmp.stop_summary()


def test_metrics_port_in_use_is_one_sentence(lab):
    (port,) = free_tcp_ports(1)
    blocker = lab.track(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
    blocker.bind(("127.0.0.1", port))
    blocker.listen(1)
    cmp = lab.start(args=("--metrics", f"127.0.0.1:{port}"), ready=False)
    assert cmp.proc.wait(TIMEOUT) == 1
    cmp._reader.join(TIMEOUT)
    assert cmp.lines == [f"colo-xdp: error: cannot listen on metrics 127.0.0.1:{port}: "
                         "Address already in use"]


def test_metrics_not_served_without_the_option(lab):
    (port,) = free_tcp_ports(1)
    lab.start()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=1)


def test_xdp_hooks_verdicts_and_a_second_passthrough_sink(tmp_path):
    """What XDP mode plugs in, with stand-ins: verdict counters show up in stats
    and metrics; a second passthrough sink (the BPF map) gets every change, and
    when it refuses one the engine is put back as it was."""
    from prometheus_client import CollectorRegistry, generate_latest

    from colo_xdp.proto.flows import PassthroughError, PassthroughSink, parse_flow
    from colo_xdp.observe.metrics import ServiceCollector
    from colo_xdp.service.compare import CompareService
    from colo_xdp.service.config import CompareConfig
    from colo_xdp.observe.stats import render, snapshot
    from colo_xdp.transport.chardev.endpoint import parse_spec

    specs = [parse_spec(f"unix:{tmp_path}/{name},server=on") for name in ("p", "s", "o")]
    svc = CompareService(CompareConfig(*specs, passthrough=[parse_flow("icmp")]))
    assert snapshot(svc)["kernel_dropped"] == {}                # chardev inputs
    assert snapshot(svc)["xdp_wakeups"] == {}
    svc.verdict_counters = lambda: {"redirect": 7, "pass": 5}
    svc.kernel_drops = lambda: {"primary": {"rx_ring_full": 3, "rx_dropped": 1}}
    svc.xdp_wakeups = lambda: {"outdev": {"tx_kicks": 2, "tx_batches": 8, "rx_wakeups": 0,
                                          "rx_batches": 0}}
    snap = snapshot(svc)
    assert "af_xdp outdev        tx_kicks 2, tx_batches 8" in render(snap)
    assert snap["verdicts"] == {"redirect": 7, "pass": 5}
    assert snap["kernel_dropped"] == {"primary": {"rx_ring_full": 3, "rx_dropped": 1}}
    assert "kernel drops primary rx_ring_full 3, rx_dropped 1" in render(snap)
    registry = CollectorRegistry()
    registry.register(ServiceCollector(svc))
    text = generate_latest(registry).decode()
    assert 'colo_xdp_xdp_verdicts_total{verdict="redirect"} 7.0' in text
    assert ('colo_xdp_xdp_kernel_dropped_total{reason="rx_ring_full",side="primary"} 3.0'
            in text)
    assert 'colo_xdp_xdp_ring_calls_total{role="outdev",what="tx_kicks"} 2.0' in text

    pushed: list = []

    def bpf_map(rules):
        if len(rules) > 2:
            raise RuntimeError("at most 2 passthrough rules fit the XDP program")

    svc.passthrough.add_sink(PassthroughSink(pushed.append, bpf_map))
    assert pushed == [[parse_flow("icmp")]]              # brought up to date at once
    svc.passthrough.add(parse_flow("udp * > *:53"))
    assert pushed[-1] == [parse_flow("icmp"), parse_flow("udp * > *:53")]
    with pytest.raises(PassthroughError, match="at most 2 passthrough rules fit"):
        svc.passthrough.add(parse_flow("tcp"))
    assert len(svc.passthrough.rules) == 2
    # The engine got the old list back: TCP is still compared (held, not passed).
    from colo_xdp.engine import Side
    from colo_xdp.lab.pktgen import tcp_frame
    svc.engine.feed_frame(Side.PRIMARY, tcp_frame(b"data"), 0)
    c = svc.engine.counters()
    assert c.released["passthrough"] == 0 and c.queued["primary"] == 1
    svc.sel.close()
