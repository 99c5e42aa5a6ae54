"""Fixtures of the VM tests: the guest image (built once, cached under
.cache/vm/) and a lab per test.  Without root, QEMU, /dev/net/tun or the
Debian tools they skip; under CI=true they fail instead."""
from __future__ import annotations

import os
from typing import Iterator

import pytest

from tools import vmlab
from vmkit import VmNetwork, need


@pytest.fixture(scope="session")
def guest() -> vmlab.Guest:
    problem = vmlab.qemu_problem()
    need(problem is None, problem or "")
    try:
        return vmlab.build_guest()
    except vmlab.VmBuildError as exc:
        need(False, f"cannot build the guest: {exc}")


@pytest.fixture
def xdp_ready() -> None:
    try:
        import bcc  # noqa: F401
    except ImportError:
        need(False, "bcc is missing: run 'make setup' (Debian's python3-bpfcc)")
    from colo_xdp.transport.xdp import classifier as xdp
    need(os.path.isdir(xdp.KERNEL_BUILD_DIR) or os.path.exists(xdp.KHEADERS),
         f"no kernel headers in {xdp.KERNEL_BUILD_DIR}: run scripts/setup-bpf.sh as root")


@pytest.fixture
def lab(guest, request) -> Iterator[VmNetwork]:
    lab = VmNetwork(guest)
    try:
        lab.build()
        yield lab
    finally:
        if lab.timings:
            print(f"\n{request.node.name} timings: "
                  + " ".join(f"{k}={v}" for k, v in lab.timings.items() if not k.endswith("_start")))
        lab.close()
