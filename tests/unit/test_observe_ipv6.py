"""IPv6, tagged and fragmented traffic in what the service shows: stats rows,
the table, metrics, the miscompare pcap."""
from __future__ import annotations

import re

from colo_xdp.engine import Side
from colo_xdp.lab import pktgen as g
from test_pcap import start as start_pcap, tcpdump, wait_packets
from test_service import connect_all


def _service(tmp_path):
    from colo_xdp.service.compare import CompareService
    from colo_xdp.service.config import CompareConfig
    from colo_xdp.transport.chardev.endpoint import parse_spec
    specs = [parse_spec(f"unix:{tmp_path}/{name},server=on") for name in ("p", "s", "o")]
    return CompareService(CompareConfig(*specs))


def test_stats_table_and_metrics_show_ipv6_tags_and_fragments(tmp_path):
    from prometheus_client import CollectorRegistry, generate_latest

    from colo_xdp.observe.metrics import ServiceCollector
    from colo_xdp.observe.stats import render, snapshot
    svc = _service(tmp_path)
    frame = g.qinq_frame(g.udp6_frame(b"x" * 3000, src="2001:db8:1234:5678::abcd"), 200, 7)
    for f in g.fragment(frame, 1448):
        svc.engine.feed_frame(Side.PRIMARY, f, 0)
    snap = snapshot(svc, connections=10)
    row, = snap["connections"]["table"]
    assert row["conn"] == "udp [2001:db8:1234:5678::abcd]:1000 > [fd00::2]:2000 vlan 200 vlan 7"
    assert (row["family"], row["vlan"], row["src"]) == (6, [200, 7], "2001:db8:1234:5678::abcd")
    assert row["held"] == {"primary": 3, "secondary": 0}
    assert snap["fragments"]["primary"]["reassembled"] == 1
    text = render(snap)
    assert row["conn"] in text                          # not cut short
    assert "fragmented primary   reassembled 1" in text
    registry = CollectorRegistry()
    registry.register(ServiceCollector(svc))
    metrics = generate_latest(registry).decode()
    assert ('colo_xdp_fragmented_datagrams_total{outcome="reassembled",side="primary"} 1.0'
            in metrics)


def test_ipv6_mismatch_evidence_read_back_by_tcpdump(lab):
    cmp, path = start_pcap(lab)
    out, note, pin, sin = connect_all(lab)
    primary, secondary = g.udp6_frame(b"primary says A"), g.udp6_frame(b"second says B!")
    pin.send(primary)
    sin.send(secondary)
    packets = wait_packets(path, 2)
    for p in packets:
        assert re.fullmatch(rf'checkpoint_requested #1 reason=mismatch side={p["if_name"]} '
                            r'conn="udp \[fd00::1\]:1000 > \[fd00::2\]:2000" held_ms=\d+',
                            p["comment"]), p["comment"]
    lines = tcpdump(path)
    assert len(lines) == 2 and all("fd00::1.1000 > fd00::2.2000: UDP, length 14" in line
                                   for line in lines), lines
    cmp.stop_summary()
