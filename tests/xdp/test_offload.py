"""XDP mode with the guests' default virtio-net offloads, no VM: TSO and USO
super-frames (up to 64 KB, checksum partial) written into two taps the way
QEMU writes a guest's output (IFF_VNET_HDR, a virtio_net_hdr with gso_type),
compared by colo-xdp, and sent on the uplink as frames that fit its MTU.

    ns host: p-t (tap, fd held here) ┐
             s-t (tap, fd held here) ├─ colo-xdp compare --outdev xdp:u-h
             u-h ──veth── u-g (ns uplink: sniffed)

On the tap, a GSO frame skips native XDP and runs the program in generic
mode, linearized (the program is not frags-capable); the AF_XDP socket,
bound with XDP_USE_SG, gets it in several descriptors (docs/xdp.md).
"""
from __future__ import annotations

import fcntl
import os
import socket
import struct
import time

import pytest

from colo_xdp.lab import pktgen as g
from test_service_xdp import TIMEOUT, XdpServiceNetwork, lab, stop  # noqa: F401 (fixture)
from xdp_kit import in_netns, need, sh

TUNSETIFF = 0x400454CA
IFF_TAP, IFF_NO_PI, IFF_VNET_HDR = 0x0002, 0x1000, 0x4000
VNET_F_NEEDS_CSUM = 1
GSO_NONE, GSO_TCPV4, GSO_UDP_L4 = 0, 1, 5
ETH_IP_TCP = 14 + 20 + 20
MSS = 1448
SRC, DST = "10.98.0.2", "10.98.0.1"


def open_tap(lab: XdpServiceNetwork, name: str) -> int:
    """A tap in the host namespace, up: the fd QEMU would hold."""
    need(os.path.exists("/dev/net/tun"), "/dev/net/tun is missing: no taps here")
    with in_netns(lab.ns["host"]):
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TAP | IFF_NO_PI | IFF_VNET_HDR))
    sh("ip", "-n", lab.ns["host"], "link", "set", name, "up")
    return fd


def partial(frame: bytes, l4_off: int, csum_at: int) -> bytes:
    """frame's L4 checksum replaced by the pseudo-header sum alone, as a
    guest that offloads checksums leaves it."""
    l4_len = len(frame) - l4_off
    words = frame[26:34] + bytes([0, frame[23]]) + l4_len.to_bytes(2, "big")
    total = sum(int.from_bytes(words[i:i + 2], "big") for i in range(0, len(words), 2))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    at = l4_off + csum_at
    return frame[:at] + total.to_bytes(2, "big") + frame[at + 2:]


def tcp_out(data: bytes, seq: int) -> bytes:
    """What a guest hands its tap for data at seq: a virtio_net_hdr (TSO when
    longer than one MSS) and the frame, checksum partial."""
    frame = partial(g.tcp_frame(data, src=SRC, dst=DST, sport=80, dport=5555, seq=seq, ack=7,
                                flags=0x18), 34, 16)
    gso = GSO_TCPV4 if len(data) > MSS else GSO_NONE
    return struct.pack("<BBHHHH", VNET_F_NEEDS_CSUM, gso, ETH_IP_TCP, MSS, 34, 16) + frame


def udp_out(data: bytes, gso_size: int) -> bytes:
    """A UDP super-frame (USO, gso_type UDP_L4) of datagrams of gso_size."""
    frame = partial(g.udp_frame(data, src=SRC, dst=DST, sport=4000, dport=53), 34, 6)
    return struct.pack("<BBHHHH", VNET_F_NEEDS_CSUM, GSO_UDP_L4, 42, gso_size, 34, 6) + frame


def checksum_ok(frame: bytes) -> bool:
    """IPv4 header and TCP/UDP checksums both verify."""
    ihl = (frame[14] & 15) * 4
    ip = frame[14:14 + ihl]
    tot = int.from_bytes(frame[16:18], "big")
    l4 = frame[14 + ihl:14 + tot]
    pseudo = frame[26:34] + bytes([0, frame[23]]) + len(l4).to_bytes(2, "big")
    return g.inet_checksum(ip) == 0 and g.inet_checksum(pseudo + l4) == 0


SO_RCVBUFFORCE = 33
SOL_PACKET, PACKET_STATISTICS = 263, 6


def sniffer(lab) -> socket.socket:
    """A packet socket on the uplink's far end, with room for a burst of a
    few hundred frames (a slow reader, under ASan say, must not drop)."""
    sock = lab.packet_socket("u")
    sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 32 << 20)
    return sock


def sniffer_drops(sock: socket.socket) -> int:
    """Frames the packet socket dropped (PACKET_STATISTICS, since last asked)."""
    _packets, drops = struct.unpack("II", sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8))
    return drops


def sniff_until(sock: socket.socket, nbytes: int, proto: int) -> list[bytes]:
    """Frames of protocol proto from 10.98.0.2 until nbytes of payload came."""
    got, have, deadline = [], 0, time.monotonic() + TIMEOUT
    while have < nbytes and time.monotonic() < deadline:
        try:
            frame = sock.recv(70000)
        except socket.timeout:
            break
        if frame[12:14] == b"\x08\x00" and frame[23] == proto and frame[26:30] == g.ip4_bytes(SRC):
            got.append(frame)
            ihl = (frame[14] & 15) * 4
            hdr = ihl + (frame[14 + ihl + 12] >> 4) * 4 if proto == 6 else ihl + 8
            have += int.from_bytes(frame[16:18], "big") - hdr
    return got


@pytest.fixture
def taps(lab):
    fds = {side: open_tap(lab, f"{side}-t") for side in ("p", "s")}
    try:
        yield fds
    finally:
        for fd in fds.values():
            os.close(fd)


def compare(lab) -> list[str]:
    return ["compare", "--primary-xdp", "p-t", "--secondary-xdp", "s-t",
            "--outdev", "xdp:u-h", "--notify-dev", lab.unix("notify.sock")]


def test_tso_super_frames_cut_differently_are_compared_and_leave_as_mss_segments(lab, taps):
    """The primary sends 240000 bytes in twelve 20000-byte super-frames back
    to back (more than a burst joins: XSK__WHOLE_SLOTS), the secondary the
    same bytes cut otherwise (super-frames of other sizes and plain
    segments): they match, and the uplink gets valid segments that fit its
    MTU, carrying the bytes in order."""
    proc = lab.start(*compare(lab))
    lab.connect("notify.sock")
    sniff = sniffer(lab)
    data = bytes((i * 13 + i // 251) & 0xFF for i in range(240000))
    base = 1000
    for off in range(0, len(data), 20000):
        os.write(taps["p"], tcp_out(data[off:off + 20000], base + off))
    cuts = [0, 1448, 31000, 32448, 33896, 60000, 125000, 126448, 190000, 240000]
    for a, b in zip(cuts, cuts[1:]):
        os.write(taps["s"], tcp_out(data[a:b], base + a))
    got = sniff_until(sniff, len(data), 6)
    assert sniffer_drops(sniff) == 0
    assert all(len(f) <= 1514 for f in got), [len(f) for f in got]
    assert all(checksum_ok(f) for f in got)
    payload, seq = b"", base
    for f in got:
        assert int.from_bytes(f[38:42], "big") == seq
        body = f[14 + 20 + 20:14 + int.from_bytes(f[16:18], "big")]
        payload += body
        seq += len(body)
    log = stop(proc)
    assert payload == data, f"{len(payload)} of {len(data)} bytes came:\n{log}"
    assert "checkpoints_requested=0" in log, log


def test_uso_super_frame_leaves_as_datagrams_that_fill_the_mtu(lab, taps):
    proc = lab.start(*compare(lab))
    lab.connect("notify.sock")
    sniff = sniffer(lab)
    data = bytes(range(256)) * 40                           # 10240 bytes
    for side in ("p", "s"):
        os.write(taps[side], udp_out(data, 1000))
    got = sniff_until(sniff, len(data), 17)
    assert [len(f) for f in got] == [1514] * 6 + [14 + 28 + len(data) - 6 * 1472]
    assert all(checksum_ok(f) for f in got)
    assert b"".join(f[42:] for f in got) == data
    log = stop(proc)
    assert "checkpoints_requested=0" in log, log


def test_a_super_frame_that_differs_requests_a_checkpoint(lab, taps):
    lab.start(*compare(lab))
    note = lab.connect("notify.sock")
    data = bytes(30000)
    os.write(taps["p"], tcp_out(data, 1))
    os.write(taps["s"], tcp_out(data[:20000] + b"\x01" + data[20001:], 1))
    assert note.recv(17) == b"\x00\x00\x00\x0dDO_CHECKPOINT"


def test_a_truncated_super_frame_is_counted_and_the_next_one_served(lab, taps):
    """A TSO frame whose IP total length runs past its end is MALFORMED in
    the classifier (counted, never sent to the engine) on both sides; the
    service goes on and the next super-frame comes through whole."""
    proc = lab.start(*compare(lab))
    lab.connect("notify.sock")
    sniff = sniffer(lab)
    data = bytes(range(256)) * 40
    bad = tcp_out(data, 1)[:-3000]                      # says 10294 bytes of IP, has 7294
    for side in ("p", "s"):
        os.write(taps[side], bad)
        os.write(taps[side], tcp_out(data, 1))
    got = sniff_until(sniff, len(data), 6)
    assert b"".join(f[54:14 + int.from_bytes(f[16:18], "big")] for f in got) == data
    log = stop(proc)
    assert "checkpoints_requested=0" in log, log


def test_a_port_binds_its_sockets_multi_buffer(lab, taps):
    from colo_xdp.transport.xdp.classify_abi import Side
    from colo_xdp.transport.xdp.port import XdpPort
    with in_netns(lab.ns["host"]), XdpPort("p-t", Side.PRIMARY) as port:
        assert all(s.info.multi_buffer for s in port.sockets)
