"""colo-xdp in XDP mode on a real QEMU COLO pair whose guests keep
virtio-net's default offloads (TSO and checksum offload, ``vhost=off`` as
COLO's filters need): the guests hand their taps TSO super-frames with
partial checksums, colo-xdp takes them whole (multi-buffer AF_XDP), compares
the two replicas' streams by sequence range (the secondary cuts its stream
its own way), and sends the primary's on the client's bridge port cut into
MSS-sized segments with full checksums.

The guest's ``colo-send`` (tools/vmlab.py) streams a deterministic pattern
over TCP; the client checks every byte.  ``pytest -s`` prints the figures.
"""
from __future__ import annotations

import time

import pytest

from tools import vmlab
from colopair import ColoPair
from test_colo_xdp import settled, stats
from vmkit import GUEST_IP

pytestmark = pytest.mark.colo

STREAM_BYTES = 20 << 20
STREAM_TIMEOUT = 240.0


def fetch(pair: ColoPair, n: int) -> vmlab.Fetched:
    return vmlab.fetch_stream(pair.lab.client_ns, GUEST_IP, n, STREAM_TIMEOUT)


def test_a_20_mb_tcp_stream_with_offloads_reaches_the_client_intact(xdp_offload_pair):
    pair = xdp_offload_pair
    before = stats(pair)
    t0 = time.monotonic()
    fetched = fetch(pair, STREAM_BYTES)
    seconds = fetched.seconds
    after = settled(pair)
    assert fetched.got == STREAM_BYTES, \
        f"{fetched.got} of {STREAM_BYTES} bytes\n{pair.lab.logs()[-4000:]}"
    assert fetched.intact, "the bytes that came are not colo-send's pattern"
    mismatches = (after["checkpoint_requests"]["mismatch"]
                  - before["checkpoint_requests"]["mismatch"])
    assert mismatches == 0, f"{mismatches} mismatch checkpoints\n{pair.cx.log[-4000:]}"
    frames = after["frames_in"]["primary"] - before["frames_in"]["primary"]
    frames_s = after["frames_in"]["secondary"] - before["frames_in"]["secondary"]
    print(f"\noffloads: {STREAM_BYTES >> 20} MiB over TCP in {seconds:.1f} s "
          f"({STREAM_BYTES / seconds / 1e6:.2f} MB/s); primary frames in: {frames} "
          f"(avg {STREAM_BYTES / max(frames, 1):.0f} payload bytes per frame), "
          f"secondary frames in: {frames_s}; "
          f"checkpoints by QEMU meanwhile: {len(pair.checkpoints(t0))}; "
          f"checkpoint requests: {after['checkpoint_requests']}")
    # Super-frames came: an average above one MSS needs them.
    assert STREAM_BYTES / max(frames, 1) > 1448, after


def test_the_stream_survives_checkpoints_taken_while_it_runs(xdp_offload_pair):
    """QEMU checkpoints every 300 ms during the stream: each flushes what
    colo-xdp holds (the primary's super-frames go out, the secondary's are
    dropped) and the replicas go on from the same state, their streams cut
    their own ways again."""
    pair = xdp_offload_pair
    before = stats(pair)
    t0 = time.monotonic()
    pair.set_checkpoint_delay(300)
    try:
        fetched = fetch(pair, STREAM_BYTES)
    finally:
        pair.set_checkpoint_delay(60000)
    seconds = fetched.seconds
    after = settled(pair)
    taken = len(pair.checkpoints(t0))
    assert fetched.got == STREAM_BYTES, \
        f"{fetched.got} of {STREAM_BYTES} bytes\n{pair.lab.logs()[-4000:]}"
    assert fetched.intact, "the bytes that came are not colo-send's pattern"
    mismatches = (after["checkpoint_requests"]["mismatch"]
                  - before["checkpoint_requests"]["mismatch"])
    print(f"\noffloads with checkpoints: {STREAM_BYTES >> 20} MiB in {seconds:.1f} s "
          f"({STREAM_BYTES / seconds / 1e6:.2f} MB/s), QEMU took {taken} checkpoints, "
          f"colo-xdp requested {mismatches} for a mismatch; "
          f"released: {after['released']}")
    assert taken >= 1
    assert mismatches == 0, f"{mismatches} mismatch checkpoints\n{pair.cx.log[-4000:]}"
