"""colo-xdp with real guests: two TCG guests (Debian's kernel, a busybox
initramfs, a UDP echo on port 7) replicating each other, a client in its own
namespace.  The secondary boots with colo.diverge=1: it answers requests
starting with '!' differently.  Pictures and command lines: docs/vm-tests.md.
"""
from __future__ import annotations

import pytest

from vmkit import exchange_and_diverge

pytestmark = pytest.mark.vm

TAP = "tap,id=hn0,ifname={},script=no,downscript=no,vhost=off"


def test_xdp_mode_on_the_guests_taps(lab, xdp_ready):
    """A: colo-xdp in XDP mode on both taps; the client's frames reach the
    primary through the bridge and the secondary by a tc mirred mirror;
    released replies leave by AF_XDP on the client's veth."""
    lab.boot("primary", diverge=False, netdev=TAP.format("tap-p"))
    lab.boot("secondary", diverge=True, netdev=TAP.format("tap-s"))
    lab.plug_tap("tap-p", bridge=True)
    lab.plug_tap("tap-s", bridge=False)
    lab.mirror_client_to("tap-s")
    cx = lab.colo_xdp("compare", "--primary-xdp", "tap-p", "--secondary-xdp", "tap-s",
                      "--outdev", "xdp:c-h", "--notify-dev", lab.unix("notify.sock"))
    notify = lab.connect("notify.sock")
    lab.wait_ready("primary", "secondary")

    exchange_and_diverge(lab, notify)

    log = lab.stop(cx)
    assert "released=6" in log and "checkpoints_requested=0" not in log, log


def test_qemu_filters_with_colo_xdp_as_colo_compare(lab):
    """B: QEMU's own filter-mirror / filter-redirector wiring from
    docs/COLO-FT.txt, with colo-xdp in chardev mode where -object colo-compare
    would be (no COLO migration: the network path only).  The NIC is
    virtio-net, whose frames carry a virtio-net header through QEMU's filters
    (COLO-FT.txt uses e1000, which has none): every filter and colo-xdp get
    vnet_hdr_support, as with -object colo-compare,vnet_hdr_support=on."""
    lab.boot("primary", diverge=False, netdev=TAP.format("tap-p"), extra=(
        "-chardev", "socket,id=mirror0,host=127.0.0.1,port=9003,server=on,wait=off",
        "-chardev", "socket,id=compare0,host=127.0.0.1,port=9001,server=on,wait=off",
        "-chardev", "socket,id=compare_out,host=127.0.0.1,port=9005,server=on,wait=off",
        "-object", "filter-mirror,id=m0,netdev=hn0,queue=tx,outdev=mirror0,vnet_hdr_support=on",
        "-object", "filter-redirector,netdev=hn0,id=redire0,queue=rx,indev=compare_out,vnet_hdr_support=on",
        "-object", "filter-redirector,netdev=hn0,id=redire1,queue=rx,outdev=compare0,vnet_hdr_support=on",
    ))
    lab.plug_tap("tap-p", bridge=True)
    cx = lab.colo_xdp("compare",
                      "--primary-in", "tcp:127.0.0.1:9001,reconnect=1",
                      "--secondary-in", "tcp:127.0.0.1:9004,server=on",
                      "--outdev", "tcp:127.0.0.1:9005,reconnect=1",
                      "--notify-dev", lab.unix("notify.sock"), "--vnet-hdr-support")
    notify = lab.connect("notify.sock")
    lab.boot("secondary", diverge=True, netdev=TAP.format("tap-s"), extra=(
        "-chardev", "socket,id=red0,host=127.0.0.1,port=9003,reconnect=1",
        "-chardev", "socket,id=red1,host=127.0.0.1,port=9004,reconnect=1",
        "-object", "filter-redirector,id=f1,netdev=hn0,queue=tx,indev=red0,vnet_hdr_support=on",
        "-object", "filter-redirector,id=f2,netdev=hn0,queue=rx,outdev=red1,vnet_hdr_support=on",
    ))
    lab.plug_tap("tap-s", bridge=False)
    lab.wait_ready("primary", "secondary")

    exchange_and_diverge(lab, notify, vnet=True)

    log = lab.stop(cx)
    assert "released=6" in log and "checkpoints_requested=0" not in log, log
