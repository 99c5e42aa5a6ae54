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

from colo_xdp import vmlab  # noqa: E402
from colopair import ColoPair, cached_qemu  # noqa: E402
from vmkit import Lab, need  # noqa: E402


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
    lab = Lab(guest, prefix="cxc-", dir_prefix="cxc-")
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


@pytest.fixture(scope="module")
def external_pair(colo_guest, colo_qemu, request) -> Iterator[ColoPair]:
    """A pair without colo-compare: colo-xdp in chardev mode connects to the
    three comparator sockets QEMU serves; its notify_dev requests reach the
    primary by QMP through ColoPair.serve_notify.  ``pair.cx`` is colo-xdp's
    process (the lab stops it), ``pair.notify_seen`` the DO_CHECKPOINT times."""
    with colo_lab(colo_guest, colo_qemu, request, comparator="external",
                  checkpoint_delay_ms=60000) as pair:
        pair.start()
        ep = pair.comparator_endpoints
        pair.cx = pair.lab.colo_xdp(
            "compare", "--outdev", ep["outdev"], "--primary-in", ep["primary_in"],
            "--secondary-in", ep["secondary_in"], "--notify-dev", pair.lab.unix("notify.sock"),
            "--vnet-hdr-support")
        pair.notify_seen = pair.serve_notify(pair.lab.connect("notify.sock"))
        pair.run_colo()
        yield pair
