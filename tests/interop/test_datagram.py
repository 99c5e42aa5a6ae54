"""UDP, ICMP and other IPv4 protocols: one compare rule, three offsets."""

import pytest

from tools.harness import checkpoint, primary, secondary, wait_checkpoints, wait_output
from colo_xdp.lab.pktgen import (EtherAddrs, IPv4Fields, icmp_echo_frame, ipv4_frame,
                             udp_frame)

pytestmark = pytest.mark.interop


def udp_flow(n, tag=b"u"):
    """n UDP frames of one connection with distinct payloads."""
    return [udp_frame(tag + b"%03d" % i) for i in range(n)]


def icmp_flow(n):
    """n ICMP echo requests of one connection (same id) with distinct seq."""
    return [icmp_echo_frame(b"ping", seq=i) for i in range(n)]


def gre_flow(n):
    """n GRE (compared as 'other' protocol) frames with distinct payloads."""
    return [ipv4_frame(b"gre%03d" % i) for i in range(n)]


FLOWS = {"udp": udp_flow, "icmp": icmp_flow, "other": gre_flow}


def lockstep(frames):
    """Each frame from the primary, then the same from the secondary."""
    return [step for f in frames for step in (primary(f), secondary(f))]


def primary_ahead(frames):
    """All frames from the primary first, then all from the secondary."""
    return [primary(f) for f in frames] + [secondary(f) for f in frames]


@pytest.mark.parametrize("flow", FLOWS)
def test_lockstep_flow_released_in_order(play, flow):
    frames = FLOWS[flow](5)
    run = play(lockstep(frames) + [wait_output(len(frames))])
    assert run.released == frames, run.summary()
    assert run.do_checkpoints == 0, run.summary()


@pytest.mark.parametrize("flow", FLOWS)
def test_secondary_ahead_released_in_order(play, flow):
    frames = FLOWS[flow](4)
    steps = [secondary(f) for f in frames] + [primary(f) for f in frames]
    run = play(steps + [wait_output(len(frames))])
    assert run.released == frames, run.summary()
    assert run.do_checkpoints == 0, run.summary()


def test_udp_ignores_ethernet_and_ip_header_fields(play):
    sent = udp_frame(b"data")
    twin = udp_frame(b"data", ip=IPv4Fields(ident=77, ttl=3, tos=0x10),
                     eth=EtherAddrs(src="02:00:00:00:00:09"))
    run = play([primary(sent), secondary(twin), wait_output(1)])
    assert run.released == [sent], run.summary()
    assert run.do_checkpoints == 0


def test_icmp_ignores_ip_header_fields(play):
    sent = icmp_echo_frame(b"ping")
    twin = icmp_echo_frame(b"ping", ip=IPv4Fields(ttl=9, ident=4))
    run = play([primary(sent), secondary(twin), wait_output(1)])
    assert run.released == [sent], run.summary()


@pytest.mark.parametrize("field", [{"ttl": 63}, {"ident": 7}])
def test_other_protocol_compares_whole_frame(play, field):
    """For protocols other than TCP/UDP/ICMP a TTL or id difference is a mismatch."""
    sent = ipv4_frame(b"payload")
    twin = ipv4_frame(b"payload", ip=IPv4Fields(**field))
    run = play([primary(sent), secondary(twin), wait_checkpoints(1)])
    assert run.released == [], run.summary()


@pytest.mark.parametrize("twin", [
    pytest.param(udp_frame(b"datb"), id="payload"),
    pytest.param(udp_frame(b"data", ip=IPv4Fields(options=b"\x01" * 4)), id="size"),
])
def test_udp_mismatch_holds_frame_and_requests_checkpoint(play, twin):
    sent = udp_frame(b"data")
    run = play([primary(sent), secondary(twin), wait_checkpoints(1)])
    assert run.released == [], run.summary()


@pytest.mark.parametrize("flow", FLOWS)
def test_mismatch_then_checkpoint_releases_primary(play, flow):
    sent, other, after = FLOWS[flow](3)
    run = play([primary(sent), secondary(other), wait_checkpoints(1), checkpoint(),
                wait_output(1), primary(after), secondary(after), wait_output(2)])
    assert run.released == [sent, after], run.summary()
    assert run.do_checkpoints >= 1


def test_mismatch_leaves_other_connections_alone(play):
    held, wrong = udp_flow(2, b"a")
    other = udp_frame(b"other", sport=9)
    run = play([primary(held), secondary(wrong), wait_checkpoints(1),
                primary(other), secondary(other), wait_output(1)])
    assert run.released == [other], run.summary()


# QEMU 7.2 takes the newest primary frame of a UDP/ICMP/other connection first
# and looks for it among the secondary frames: with the primary k frames ahead
# it releases them reversed, and only after requesting k checkpoints; with
# distinct payloads in a steady flow it releases nothing at all. colo-xdp
# compares oldest with oldest, so the output keeps the primary's order.

@pytest.mark.parametrize("flow", FLOWS)
@pytest.mark.parametrize("ahead", [1, 3])
def test_ours_primary_ahead_released_oldest_first(play_ours, flow, ahead):
    frames = FLOWS[flow](ahead + 1)
    run = play_ours(primary_ahead(frames) + [wait_output(len(frames))])
    assert run.released == frames, run.summary()
    assert run.do_checkpoints == 0, run.summary()


def test_ours_steady_flow_with_primary_one_ahead(play_ours):
    frames = udp_flow(6)
    steps = [primary(frames[0])]
    for newer, older in zip(frames[1:], frames):
        steps += [primary(newer), secondary(older)]
    run = play_ours(steps + [secondary(frames[-1]), wait_output(len(frames))])
    assert run.released == frames, run.summary()
    assert run.do_checkpoints == 0, run.summary()


@pytest.mark.parametrize("flow", FLOWS)
def test_qemu_primary_ahead_released_reversed(play_qemu, flow):
    """The measured QEMU fault the test above guards against."""
    frames = FLOWS[flow](3)
    run = play_qemu(primary_ahead(frames) + [wait_output(len(frames))])
    assert run.released == frames[::-1], run.summary()
    assert [row[2] for row in run.after_each_write()] == [0, 0, 0, 1, 1, 0]
