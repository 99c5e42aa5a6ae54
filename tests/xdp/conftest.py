"""Fixtures for the XDP tests: the classifier loaded per side, bare AF_XDP
sockets, network namespaces with a veth pair.

These tests need root, bcc (Debian's python3-bpfcc) and kernel headers
(``make setup`` arranges both).  Without them they skip, or fail when CI is
set: CI must not pass by skipping.  Every namespace, link, program and
socket a fixture makes is removed on every path.
"""
from __future__ import annotations

import contextlib
import itertools
import os
from typing import Iterator

import pytest

from colo_xdp.lab.netns import add_netns, add_veth
from colo_xdp.transport.xdp import classifier as xdp
from colo_xdp.transport.xdp.classify_abi import Side
from xdp_kit import VethPair, bare_xsk, bpf_problem, need, sh


@pytest.fixture(scope="session")
def bpf_ready() -> None:
    problem = bpf_problem()
    need(problem is None, problem or "")


@pytest.fixture(scope="session")
def test_sockets(bpf_ready) -> Iterator[dict[Side, int]]:
    """A bare AF_XDP socket per side (fds), for the programs' queue 0."""
    with contextlib.ExitStack() as stack:
        yield {side: stack.enter_context(bare_xsk()).fileno() for side in Side}


@pytest.fixture(scope="session")
def programs(test_sockets) -> Iterator[dict[Side, xdp.XdpClassifier]]:
    """The classifier of each side, loaded (not attached), with a socket on
    rx queue 0: the queue of every BPF_PROG_TEST_RUN."""
    with contextlib.ExitStack() as stack:
        progs = {}
        for side in Side:
            clf = stack.enter_context(xdp.XdpClassifier(side))
            clf.set_socket(0, test_sockets[side])
            progs[side] = clf
        yield progs


@pytest.fixture(params=list(Side), ids=lambda s: s.name.lower())
def side(request) -> Side:
    return request.param


@pytest.fixture
def clf(programs, test_sockets, side) -> Iterator[xdp.XdpClassifier]:
    """The loaded classifier of ``side``, its configuration and socket reset
    afterwards."""
    prog = programs[side]
    try:
        yield prog
    finally:
        prog.set_rules([])
        prog.set_guest_macs([])
        prog.set_config(vlan_compare=True)
        prog.set_socket(0, test_sockets[side])


# --- network namespaces ----------------------------------------------------------

_counter = itertools.count()


@pytest.fixture
def netns_available(bpf_ready) -> None:
    need(os.path.isdir("/run/netns") or os.access("/run", os.W_OK),
         "network namespaces cannot be made here")


@pytest.fixture
def veth(netns_available) -> Iterator[VethPair]:
    """Two fresh namespaces joined by a single-queue veth pair, IPv6 off
    (no stray router solicitations), both ends up with an IPv4 address."""
    tag = f"{os.getpid()}-{next(_counter)}"
    pair = VethPair(host_ns=f"cxh-{tag}", guest_ns=f"cxg-{tag}")
    made = []
    try:
        for ns in (pair.host_ns, pair.guest_ns):
            made.append(ns)
            add_netns(ns)
        add_veth(pair.host_ns, pair.host, pair.guest_ns, pair.guest, up=False)
        for ns, dev, ip in ((pair.host_ns, pair.host, pair.host_ip),
                            (pair.guest_ns, pair.guest, pair.guest_ip)):
            sh("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", dev)
            sh("ip", "-n", ns, "link", "set", dev, "up")
        yield pair
    finally:
        for ns in made:
            sh("ip", "netns", "del", ns, check=False)
