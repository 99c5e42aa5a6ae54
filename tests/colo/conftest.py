"""Fixtures of the real COLO pair tests: the patched QEMU (built by
scripts/build-qemu.sh, run by `make setup`), the guest image (tests/vm's) and
a lab with one COLO pair per test module.  Without root, the build, the guest
or /dev/net/tun they skip; under CI=true they fail instead."""
from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Iterator

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "vm"))

from tools import vmlab  # noqa: E402
from colopair import ColoPair, cached_qemu  # noqa: E402
from vmkit import VmNetwork, need  # noqa: E402


@pytest.fixture(scope="session")
def colo_qemu() -> str:
    problem = vmlab.qemu_problem()
    need(problem is None, problem or "")
    path = cached_qemu()
    need(path is not None, "the patched QEMU is not built: run 'make setup' "
         "(scripts/build-qemu.sh, 8-20 minutes once)")
    return path


@pytest.fixture(scope="session")
def colo_guest(colo_qemu) -> vmlab.Guest:
    try:
        return vmlab.build_guest()
    except vmlab.VmBuildError as exc:
        need(False, f"cannot build the guest: {exc}")


@contextlib.contextmanager
def colo_lab(guest: vmlab.Guest, qemu: str, request, **kwargs) -> Iterator[ColoPair]:
    """A lab (namespaces cxc-h-N / cxc-c-N, /tmp/cxc-*) and a pair in it;
    both removed on every path."""
    lab = VmNetwork(guest, prefix="cxc-", dir_prefix="cxc-")
    pair = None
    try:
        pair = ColoPair(lab, qemu, **kwargs)
        lab.build()
        yield pair
    finally:
        if pair:
            print(f"\n{request.node.name}: "
                  + " ".join(f"{k}={v}" for k, v in pair.timings.items()))
            pair.close()
        lab.close()


@pytest.fixture(scope="module")
def reference_pair(colo_guest, colo_qemu, request) -> Iterator[ColoPair]:
    """One pair with QEMU's in-process colo-compare, in COLO, guest up and
    checkpointed once, shared by the tests of a module (they run in file
    order; failover last).  Periodic checkpoints are rare (60 s) unless a
    test asks for more."""
    with colo_lab(colo_guest, colo_qemu, request, comparator="qemu",
                  checkpoint_delay_ms=60000) as pair:
        pair.up()
        yield pair


def start_colo_xdp(pair: ColoPair, *roles: str):
    """colo-xdp compare with ``roles`` and the pair's QMP monitor for it, a
    control socket (``pair.cx_ctl``) and timeouts long enough for a TCG guest."""
    pair.cx_ctl = str(pair.lab.dir / "cx-ctl.sock")
    pair.cx = pair.lab.colo_xdp(
        "compare", *roles, "--qmp", pair.comparator_endpoints["qmp"] + ",reconnect=1",
        "--control", pair.cx_ctl, ready_timeout=60)
    return pair.cx


@pytest.fixture(scope="module")
def chardev_pair(colo_guest, colo_qemu, request) -> Iterator[ColoPair]:
    """colo-xdp in chardev mode where -object colo-compare would be: it
    connects to the three comparator sockets QEMU serves and drives the
    primary's COLO through its own QMP monitor (``--qmp``)."""
    with colo_lab(colo_guest, colo_qemu, request, comparator="external",
                  checkpoint_delay_ms=60000) as pair:
        pair.start()
        ep = pair.comparator_endpoints
        start_colo_xdp(pair, "--outdev", ep["outdev"] + ",reconnect=1",
                       "--primary-in", ep["primary_in"] + ",reconnect=1",
                       "--secondary-in", ep["secondary_in"] + ",reconnect=1",
                       "--vnet-hdr-support")
        pair.run_colo()
        yield pair


@pytest.fixture(scope="module")
def xdp_pair(colo_guest, colo_qemu, xdp_available, request) -> Iterator[ColoPair]:
    """colo-xdp in XDP mode on both guests' taps, released frames sent by
    AF_XDP on the client's bridge port, COLO driven through ``--qmp``."""
    with colo_lab(colo_guest, colo_qemu, request, comparator="xdp",
                  checkpoint_delay_ms=60000) as pair:
        pair.start()
        start_colo_xdp(pair, "--primary-xdp", "ccp0", "--secondary-xdp", "ccs0",
                       "--outdev", "xdp:c-h")
        pair.run_colo()
        yield pair


@pytest.fixture(scope="module")
def xdp_offload_pair(colo_guest, colo_qemu, xdp_available, request) -> Iterator[ColoPair]:
    """As ``xdp_pair``, with the guests' virtio-net offloads on (TSO, partial
    checksums: virtio-net's defaults)."""
    with colo_lab(colo_guest, colo_qemu, request, comparator="xdp",
                  checkpoint_delay_ms=60000, offloads=True) as pair:
        pair.start()
        start_colo_xdp(pair, "--primary-xdp", "ccp0", "--secondary-xdp", "ccs0",
                       "--outdev", "xdp:c-h")
        pair.run_colo()
        yield pair


@pytest.fixture(scope="session")
def xdp_available() -> None:
    from colo_xdp.transport.xdp import classifier as xdp
    problem = xdp.unavailable()
    need(problem is None, f"XDP mode cannot run here: {problem}")
