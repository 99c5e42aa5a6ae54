"""XdpPort in this process, on a veth in namespaces the test makes: opening
it again (an interface that went away and came back) reuses the classifier
already compiled, and frames flow through the reopened port."""
from __future__ import annotations

import time

import pytest

from colo_xdp.lab import pktgen
from colo_xdp.transport.xdp import classifier as xdp
from colo_xdp.transport.xdp.classify_abi import Side
from colo_xdp.transport.xdp.port import XdpPort

from xdp_kit import in_netns, xdp_shown
from test_netns import send_from_guest


@pytest.fixture
def compiles(monkeypatch):
    """How many times bcc compiles a program (bcc.BPF objects made)."""
    bcc = xdp._import_bcc()
    made = []
    real = bcc.BPF

    class Counted(real):
        def __init__(self, *args, **kwargs):
            made.append(kwargs.get("cflags"))
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(bcc, "BPF", Counted)
    return made


def _open(pair) -> tuple[XdpPort, float]:
    port = XdpPort(pair.host, Side.PRIMARY)
    start = time.monotonic()
    with in_netns(pair.host_ns):
        port.open()
    return port, time.monotonic() - start


def test_reopening_a_port_does_not_compile_again(veth, compiles):
    port, first = _open(veth)
    port.close()
    assert not xdp_shown(veth.host_ns, veth.host)
    compiled = len(compiles)
    port, again = _open(veth)
    try:
        assert len(compiles) == compiled, "the classifier was compiled again"
        assert xdp_shown(veth.host_ns, veth.host)
        # The reused program starts from zero and redirects to the new socket.
        assert sum(port.verdicts().values()) == 0
        frame = pktgen.udp_frame(b"after reopening", src=veth.guest_ip, dst=veth.host_ip,
                                 sport=4000, dport=7000)
        send_from_guest(veth, [frame])
        deadline = time.monotonic() + 2
        while port.verdicts()["compare"] < 1:
            assert time.monotonic() < deadline, port.verdicts()
            time.sleep(0.02)
        assert port.kernel_drops() == {"rx_ring_full": 0, "rx_dropped": 0}
    finally:
        port.close()
    print(f"open: first {first * 1000:.0f} ms, again {again * 1000:.0f} ms")
    assert again < 0.25, f"reopening took {again:.2f} s"
    assert not xdp_shown(veth.host_ns, veth.host)
