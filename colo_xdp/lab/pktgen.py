"""Frame builders and QEMU chardev framing for tests, the demo and the benchmark.

Builders return whole Ethernet II frames as ``bytes``, with every checksum
correct, so a frame can go straight onto a chardev socket or a tap device::

    frame = udp_frame(b"hello", sport=1000, dport=2000)
    wire = encode(frame)                        # u32be len | frame
    wire = encode(vnet_header(12) + frame, 12)  # u32be len | u32be 12 | hdr + frame

Layer functions (``ipv4``, ``udp``, ``tcp``, ...) build one header plus its
payload and can be stacked by hand for anything the ``*_frame`` helpers do
not cover. ``encode`` and ``Decoder`` (re-exported from
``colo_xdp.proto.framing``) speak QEMU's chardev framing. Standard
library only.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

# The chardev codec and the protocol numbers live in proto/; drivers and tests
# take them from here.
from colo_xdp.proto.framing import (NET_BUFSIZE, Decoder, FramingError,  # noqa: F401
                                        Record, encode)
from colo_xdp.proto.inet import (IPPROTO_GRE, IPPROTO_ICMP, IPPROTO_ICMPV6,  # noqa: F401
                                 IPPROTO_TCP, IPPROTO_UDP)

ETH_HLEN = 14
ETH_P_IP = 0x0800
ETH_P_ARP = 0x0806
ETH_P_8021Q = 0x8100
ETH_P_8021AD = 0x88A8
ETH_P_IPV6 = 0x86DD

IPV6_NO_NEXT_HEADER = 59
IPV6_HOPOPTS = 0
IPV6_ROUTING = 43
IPV6_FRAGMENT = 44
IPV6_DSTOPTS = 60

ICMPV6_ECHO_REQUEST = 128
ICMPV6_ECHO_REPLY = 129
ICMPV6_ND_NEIGHBOR_SOLICIT = 135
ICMPV6_ND_NEIGHBOR_ADVERT = 136

IP_DF = 0x2  # flags field of the IPv4 header (3 bits): don't fragment
IP_MF = 0x1  # more fragments

TCP_FIN = 0x01
TCP_SYN = 0x02
TCP_RST = 0x04
TCP_PSH = 0x08
TCP_ACK = 0x10
TCP_URG = 0x20

ICMP_ECHO_REPLY = 0
ICMP_ECHO_REQUEST = 8

ARP_REQUEST = 1
ARP_REPLY = 2

DEFAULT_SRC_MAC = "52:54:00:00:00:01"
DEFAULT_DST_MAC = "52:54:00:00:00:02"
DEFAULT_SRC_IP = "10.0.0.1"
DEFAULT_DST_IP = "10.0.0.2"
DEFAULT_SRC_IP6 = "fd00::1"
DEFAULT_DST_IP6 = "fd00::2"
DEFAULT_SPORT = 1000
DEFAULT_DPORT = 2000

_TCP_FLAG_NAMES = "FSRPAU"


@dataclass(frozen=True)
class EtherAddrs:
    """Source and destination MAC of an Ethernet header."""

    src: str = DEFAULT_SRC_MAC
    dst: str = DEFAULT_DST_MAC


@dataclass(frozen=True)
class IPv4Fields:
    """The IPv4 header fields a test may want to vary; options set the IHL."""

    ident: int = 0
    ttl: int = 64
    tos: int = 0
    flags: int = IP_DF
    frag_offset: int = 0
    options: bytes = b""


ETHER_DEFAULTS = EtherAddrs()
IPV4_DEFAULTS = IPv4Fields()


# --- helpers -----------------------------------------------------------------

def mac_bytes(mac: str | bytes) -> bytes:
    """The 6 bytes of a MAC given as ``aa:bb:cc:dd:ee:ff`` or as bytes."""
    raw = mac if isinstance(mac, bytes) else bytes.fromhex(mac.replace(":", ""))
    if len(raw) != 6:
        raise ValueError(f"a MAC address has 6 bytes, got {mac!r}")
    return raw


def ip4_bytes(addr: str | bytes) -> bytes:
    """The 4 bytes of an IPv4 address given as dotted text or as bytes."""
    return addr if isinstance(addr, bytes) else ipaddress.IPv4Address(addr).packed


def inet_checksum(data: bytes) -> int:
    """RFC 1071 one's-complement checksum of ``data``."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _pad4(options: bytes) -> bytes:
    """Options padded with end-of-list zeros to a multiple of 4 bytes."""
    return options + b"\0" * (-len(options) % 4)


def ip6_bytes(addr: str | bytes) -> bytes:
    """The 16 bytes of an IPv6 address given as text or as bytes."""
    return addr if isinstance(addr, bytes) else ipaddress.IPv6Address(addr).packed


def _is_ip6(addr: str | bytes) -> bool:
    return len(addr) == 16 if isinstance(addr, bytes) else ":" in addr


def _pseudo_header(src: str | bytes, dst: str | bytes, proto: int, length: int) -> bytes:
    """The pseudo-header that TCP, UDP (and ICMPv6) checksums cover: IPv4's,
    or IPv6's (RFC 8200 8.1) when the addresses are IPv6."""
    if _is_ip6(src):
        return ip6_bytes(src) + ip6_bytes(dst) + struct.pack("!IxxxB", length, proto)
    return ip4_bytes(src) + ip4_bytes(dst) + struct.pack("!BBH", 0, proto, length)


# --- layer builders ----------------------------------------------------------

def ethernet(payload: bytes, ethertype: int = ETH_P_IP,
             eth: EtherAddrs = ETHER_DEFAULTS) -> bytes:
    """An Ethernet II frame carrying ``payload``."""
    return mac_bytes(eth.dst) + mac_bytes(eth.src) + struct.pack("!H", ethertype) + payload


def ipv4(payload: bytes, proto: int, src: str = DEFAULT_SRC_IP,
         dst: str = DEFAULT_DST_IP, ip: IPv4Fields = IPV4_DEFAULTS) -> bytes:
    """An IPv4 packet with a correct header checksum; options extend the IHL."""
    options = _pad4(ip.options)
    ihl = 5 + len(options) // 4
    if ihl > 15:
        raise ValueError("IPv4 options are limited to 40 bytes")
    flags_frag = (ip.flags << 13) | ip.frag_offset
    header = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, ip.tos,
                         ihl * 4 + len(payload), ip.ident, flags_frag, ip.ttl,
                         proto, 0, ip4_bytes(src), ip4_bytes(dst)) + options
    checksum = inet_checksum(header)
    return header[:10] + struct.pack("!H", checksum) + header[12:] + payload


def udp(payload: bytes, sport: int = DEFAULT_SPORT, dport: int = DEFAULT_DPORT,
        src: str = DEFAULT_SRC_IP, dst: str = DEFAULT_DST_IP) -> bytes:
    """A UDP datagram whose checksum covers the IPv4 pseudo-header of src/dst."""
    length = 8 + len(payload)
    header = struct.pack("!HHHH", sport, dport, length, 0)
    checksum = inet_checksum(_pseudo_header(src, dst, IPPROTO_UDP, length)
                             + header + payload) or 0xFFFF
    return header[:6] + struct.pack("!H", checksum) + payload


def tcp(payload: bytes, sport: int = DEFAULT_SPORT, dport: int = DEFAULT_DPORT,
        src: str = DEFAULT_SRC_IP, dst: str = DEFAULT_DST_IP, *, seq: int = 0,
        ack: int = 0, flags: int = TCP_ACK, window: int = 65535,
        options: bytes = b"") -> bytes:
    """A TCP segment with a correct checksum; options extend the data offset."""
    options = _pad4(options)
    doff = 5 + len(options) // 4
    if doff > 15:
        raise ValueError("TCP options are limited to 40 bytes")
    header = struct.pack("!HHIIBBHHH", sport, dport, seq & 0xFFFFFFFF,
                         ack & 0xFFFFFFFF, doff << 4, flags, window, 0, 0) + options
    segment = header + payload
    checksum = inet_checksum(_pseudo_header(src, dst, IPPROTO_TCP, len(segment)) + segment)
    return segment[:16] + struct.pack("!H", checksum) + segment[18:]


def icmp_echo(payload: bytes = b"", ident: int = 1, seq: int = 1,
              reply: bool = False) -> bytes:
    """An ICMP echo request (or reply) message with a correct checksum."""
    kind = ICMP_ECHO_REPLY if reply else ICMP_ECHO_REQUEST
    message = struct.pack("!BBHHH", kind, 0, 0, ident, seq) + payload
    return message[:2] + struct.pack("!H", inet_checksum(message)) + message[4:]


# --- whole frames ------------------------------------------------------------

def udp_frame(payload: bytes = b"", *, src: str = DEFAULT_SRC_IP,
              dst: str = DEFAULT_DST_IP, sport: int = DEFAULT_SPORT,
              dport: int = DEFAULT_DPORT, ip: IPv4Fields = IPV4_DEFAULTS,
              eth: EtherAddrs = ETHER_DEFAULTS) -> bytes:
    """An Ethernet/IPv4/UDP frame."""
    return ethernet(ipv4(udp(payload, sport, dport, src, dst), IPPROTO_UDP, src, dst, ip),
                    ETH_P_IP, eth)


def tcp_frame(payload: bytes = b"", *, src: str = DEFAULT_SRC_IP,
              dst: str = DEFAULT_DST_IP, sport: int = DEFAULT_SPORT,
              dport: int = DEFAULT_DPORT, seq: int = 0, ack: int = 0,
              flags: int = TCP_ACK, window: int = 65535, options: bytes = b"",
              ip: IPv4Fields = IPV4_DEFAULTS, eth: EtherAddrs = ETHER_DEFAULTS) -> bytes:
    """An Ethernet/IPv4/TCP frame."""
    segment = tcp(payload, sport, dport, src, dst, seq=seq, ack=ack, flags=flags,
                  window=window, options=options)
    return ethernet(ipv4(segment, IPPROTO_TCP, src, dst, ip), ETH_P_IP, eth)


def icmp_echo_frame(payload: bytes = b"", *, ident: int = 1, seq: int = 1,
                    reply: bool = False, src: str = DEFAULT_SRC_IP,
                    dst: str = DEFAULT_DST_IP, ip: IPv4Fields = IPV4_DEFAULTS,
                    eth: EtherAddrs = ETHER_DEFAULTS) -> bytes:
    """An Ethernet/IPv4/ICMP echo request or reply frame."""
    message = icmp_echo(payload, ident, seq, reply)
    return ethernet(ipv4(message, IPPROTO_ICMP, src, dst, ip), ETH_P_IP, eth)


def ipv4_frame(payload: bytes, proto: int = IPPROTO_GRE, *, src: str = DEFAULT_SRC_IP,
               dst: str = DEFAULT_DST_IP, ip: IPv4Fields = IPV4_DEFAULTS,
               eth: EtherAddrs = ETHER_DEFAULTS) -> bytes:
    """An Ethernet/IPv4 frame of any protocol, ``payload`` taken as is."""
    return ethernet(ipv4(payload, proto, src, dst, ip), ETH_P_IP, eth)


def arp_frame(op: int = ARP_REQUEST, *, sender_ip: str = DEFAULT_SRC_IP,
              target_ip: str = DEFAULT_DST_IP, sender_mac: str = DEFAULT_SRC_MAC,
              target_mac: str = "00:00:00:00:00:00",
              eth: EtherAddrs = EtherAddrs(dst="ff:ff:ff:ff:ff:ff")) -> bytes:
    """An Ethernet/ARP frame for IPv4 over Ethernet (request by default)."""
    body = struct.pack("!HHBBH6s4s6s4s", 1, ETH_P_IP, 6, 4, op,
                       mac_bytes(sender_mac), ip4_bytes(sender_ip),
                       mac_bytes(target_mac), ip4_bytes(target_ip))
    return ethernet(body, ETH_P_ARP, eth)


@dataclass(frozen=True)
class IPv6Fields:
    """The IPv6 header fields a test may want to vary, and extension headers
    (``ext``: (next-header number, body) pairs, in order; a body is padded
    to a multiple of 8 bytes with its 2-byte type/length prefix added)."""

    hop_limit: int = 64
    traffic_class: int = 0
    flow_label: int = 0
    ext: tuple[tuple[int, bytes], ...] = ()


IPV6_DEFAULTS = IPv6Fields()


def ipv6_ext(kind: int, body: bytes = b"", next_header: int = IPV6_NO_NEXT_HEADER) -> bytes:
    """One extension header (hop-by-hop, routing, destination options) with
    ``body`` after its next-header and length bytes, padded with PadN."""
    raw = body + b"\0" * (-(len(body) + 2) % 8)
    return struct.pack("!BB", next_header, (len(raw) + 2) // 8 - 1) + raw


def ipv6(payload: bytes, next_header: int, src: str = DEFAULT_SRC_IP6,
         dst: str = DEFAULT_DST_IP6, ip: IPv6Fields = IPV6_DEFAULTS) -> bytes:
    """An IPv6 packet: the fixed header, ``ip.ext`` extension headers, payload."""
    chain = b""
    kinds = [k for k, _ in ip.ext] + [next_header]
    for (kind, body), nxt in zip(ip.ext, kinds[1:]):
        chain += ipv6_ext(kind, body, nxt)
    rest = chain + payload
    word = 6 << 28 | (ip.traffic_class & 0xFF) << 20 | (ip.flow_label & 0xFFFFF)
    return struct.pack("!IHBB16s16s", word, len(rest), kinds[0], ip.hop_limit,
                       ip6_bytes(src), ip6_bytes(dst)) + rest


def ipv6_frame(payload: bytes = b"", *, next_header: int = IPV6_NO_NEXT_HEADER,
               src: str = DEFAULT_SRC_IP6, dst: str = DEFAULT_DST_IP6, hop_limit: int = 64,
               ip: IPv6Fields | None = None, eth: EtherAddrs = ETHER_DEFAULTS) -> bytes:
    """An Ethernet/IPv6 frame; ``payload`` follows the headers as is."""
    ip = ip or IPv6Fields(hop_limit=hop_limit)
    return ethernet(ipv6(payload, next_header, src, dst, ip), ETH_P_IPV6, eth)


def icmpv6(kind: int, body: bytes, src: str = DEFAULT_SRC_IP6,
           dst: str = DEFAULT_DST_IP6, code: int = 0) -> bytes:
    """An ICMPv6 message with its checksum (over the IPv6 pseudo-header)."""
    message = struct.pack("!BBH", kind, code, 0) + body
    checksum = inet_checksum(_pseudo_header(src, dst, IPPROTO_ICMPV6, len(message)) + message)
    return message[:2] + struct.pack("!H", checksum) + message[4:]


def udp6_frame(payload: bytes = b"", *, src: str = DEFAULT_SRC_IP6,
               dst: str = DEFAULT_DST_IP6, sport: int = DEFAULT_SPORT,
               dport: int = DEFAULT_DPORT, ip: IPv6Fields = IPV6_DEFAULTS,
               eth: EtherAddrs = ETHER_DEFAULTS) -> bytes:
    """An Ethernet/IPv6/UDP frame."""
    return ethernet(ipv6(udp(payload, sport, dport, src, dst), IPPROTO_UDP, src, dst, ip),
                    ETH_P_IPV6, eth)


def tcp6_frame(payload: bytes = b"", *, src: str = DEFAULT_SRC_IP6,
               dst: str = DEFAULT_DST_IP6, sport: int = DEFAULT_SPORT,
               dport: int = DEFAULT_DPORT, seq: int = 0, ack: int = 0,
               flags: int = TCP_ACK, window: int = 65535, options: bytes = b"",
               ip: IPv6Fields = IPV6_DEFAULTS, eth: EtherAddrs = ETHER_DEFAULTS) -> bytes:
    """An Ethernet/IPv6/TCP frame."""
    segment = tcp(payload, sport, dport, src, dst, seq=seq, ack=ack, flags=flags,
                  window=window, options=options)
    return ethernet(ipv6(segment, IPPROTO_TCP, src, dst, ip), ETH_P_IPV6, eth)


def icmp6_echo_frame(payload: bytes = b"", *, ident: int = 1, seq: int = 1,
                     reply: bool = False, src: str = DEFAULT_SRC_IP6,
                     dst: str = DEFAULT_DST_IP6, ip: IPv6Fields = IPV6_DEFAULTS,
                     eth: EtherAddrs = ETHER_DEFAULTS) -> bytes:
    """An Ethernet/IPv6/ICMPv6 echo request or reply frame."""
    kind = ICMPV6_ECHO_REPLY if reply else ICMPV6_ECHO_REQUEST
    message = icmpv6(kind, struct.pack("!HH", ident, seq) + payload, src, dst)
    return ethernet(ipv6(message, IPPROTO_ICMPV6, src, dst, ip), ETH_P_IPV6, eth)


def neighbor_solicit_frame(target: str = DEFAULT_DST_IP6, *, src: str = DEFAULT_SRC_IP6,
                           eth: EtherAddrs = EtherAddrs(dst="33:33:ff:00:00:02")) -> bytes:
    """An Ethernet/IPv6 Neighbour Solicitation (RFC 4861 4.3) for ``target``,
    to its solicited-node multicast address, hop limit 255."""
    packed = ip6_bytes(target)
    dst = str(ipaddress.IPv6Address(bytes.fromhex("ff0200000000000000000001ff") + packed[13:]))
    message = icmpv6(ICMPV6_ND_NEIGHBOR_SOLICIT, b"\0" * 4 + packed, src, dst)
    return ethernet(ipv6(message, IPPROTO_ICMPV6, src, dst, IPv6Fields(hop_limit=255)),
                    ETH_P_IPV6, eth)


def vlan_frame(frame: bytes, vid: int = 100, pcp: int = 0, tpid: int = ETH_P_8021Q) -> bytes:
    """``frame`` with an 802.1Q tag (or ``tpid``'s) right after its MACs: on
    a tagged frame the new tag is the outer one."""
    tag = struct.pack("!HH", tpid, (pcp << 13) | (vid & 0x0FFF))
    return frame[:12] + tag + frame[12:]


def qinq_frame(frame: bytes, outer: int = 200, inner: int = 100) -> bytes:
    """``frame`` (untagged) in QinQ: an 802.1ad outer tag, an 802.1Q inner one."""
    return vlan_frame(vlan_frame(frame, inner), outer, tpid=ETH_P_8021AD)


def _split_eth(frame: bytes) -> tuple[bytes, int, bytes]:
    """(MACs and tags, EtherType, network packet) of an Ethernet frame."""
    at = 12
    while struct.unpack_from("!H", frame, at)[0] in (ETH_P_8021Q, ETH_P_8021AD):
        at += 4
    return frame[:at], struct.unpack_from("!H", frame, at)[0], frame[at + 2:]


def fragment(frame: bytes, sizes: list[int] | int, *, ident: int = 0x4242,
             order: list[int] | None = None) -> list[bytes]:
    """``frame`` (Ethernet, maybe tagged, IPv4 or IPv6) cut into IP fragments
    whose parts of the payload have ``sizes`` bytes (the last takes the rest;
    all but the last a multiple of 8), each a whole frame with correct
    headers; ``order`` permutes them.  IPv4: the header is copied into each
    with MF and the offset set; IPv6: a fragment header (RFC 8200 4.5) goes
    after the header and its extension headers (all of them taken as the
    unfragmentable part)."""
    head, ethertype, packet = _split_eth(frame)
    if ethertype == ETH_P_IP:
        ihl = (packet[0] & 0x0F) * 4
        hdr, body = packet[:ihl], packet[ihl:struct.unpack_from("!H", packet, 2)[0]]
    elif ethertype == ETH_P_IPV6:
        hdr, body, nh_at = packet[:40], packet[40:40 + struct.unpack_from("!H", packet, 4)[0]], 6
        nh = packet[6]
        while nh in (IPV6_HOPOPTS, IPV6_ROUTING, IPV6_DSTOPTS):
            n = (body[1] + 1) * 8
            nh_at, nh = len(hdr), body[0]
            hdr, body = hdr + body[:n], body[n:]
    else:
        raise ValueError("only IPv4 and IPv6 frames can be fragmented")
    cuts, at = [], 0
    for size in ([sizes] * (len(body) // sizes + 1) if isinstance(sizes, int) else sizes):
        if at >= len(body):
            break
        cuts.append((at, body[at:at + size]))
        at += size
    if at < len(body):
        cuts.append((at, body[at:]))
    out = []
    for i, (off, part) in enumerate(cuts):
        more = i + 1 < len(cuts)
        if more and len(part) % 8:
            raise ValueError("every fragment but the last carries a multiple of 8 bytes")
        if ethertype == ETH_P_IP:
            word = (struct.unpack_from("!H", hdr, 6)[0] & 0x4000) | (0x2000 if more else 0) | off // 8
            h = bytearray(hdr)
            struct.pack_into("!HHH", h, 2, len(hdr) + len(part), ident & 0xFFFF, word)
            struct.pack_into("!H", h, 10, 0)
            struct.pack_into("!H", h, 10, inet_checksum(bytes(h)))
            out.append(head + struct.pack("!H", ethertype) + bytes(h) + part)
        else:
            h = bytearray(hdr)
            fh = struct.pack("!BBHI", h[nh_at], 0, off | more, ident)
            h[nh_at] = IPV6_FRAGMENT
            struct.pack_into("!H", h, 4, len(hdr) - 40 + 8 + len(part))
            out.append(head + struct.pack("!H", ethertype) + bytes(h) + fh + part)
    return [out[i] for i in order] if order else out


def vnet_header(length: int = 12, pattern: bytes = b"\0") -> bytes:
    """A virtio-net header of ``length`` bytes: ``pattern`` repeated and cut."""
    if not pattern:
        raise ValueError("the vnet header pattern needs at least one byte")
    return (pattern * (length // len(pattern) + 1))[:length]


# --- describing frames -------------------------------------------------------

def describe(frame: bytes, vnet_hdr_len: int = 0) -> str:
    """A one-line summary for messages, e.g. ``UDP 10.0.0.1:1000>10.0.0.2:2000 len=64``."""
    eth = frame[vnet_hdr_len:]
    if len(eth) < ETH_HLEN:
        return f"runt len={len(frame)}"
    ethertype = struct.unpack_from("!H", eth, 12)[0]
    if ethertype in (ETH_P_8021Q, ETH_P_8021AD) and len(eth) >= 18:
        vid = struct.unpack_from("!H", eth, 14)[0] & 0x0FFF
        return f"802.1Q vid={vid} len={len(frame)}"
    if ethertype == ETH_P_IP:
        return f"{_describe_ipv4(eth[ETH_HLEN:])} len={len(frame)}"
    names = {ETH_P_ARP: "ARP", ETH_P_IPV6: "IPv6"}
    return f"{names.get(ethertype, f'ethertype 0x{ethertype:04x}')} len={len(frame)}"


def _describe_ipv4(packet: bytes) -> str:
    """Protocol and endpoints of an IPv4 packet, with TCP seq/ack/flags."""
    if len(packet) < 20:
        return "IPv4 truncated"
    ihl = (packet[0] & 0x0F) * 4
    proto = packet[9]
    src, dst = (str(ipaddress.IPv4Address(packet[i:i + 4])) for i in (12, 16))
    l4 = packet[ihl:]
    if proto in (IPPROTO_TCP, IPPROTO_UDP) and len(l4) >= 8:
        sport, dport = struct.unpack_from("!HH", l4)
        text = f"{'TCP' if proto == IPPROTO_TCP else 'UDP'} {src}:{sport}>{dst}:{dport}"
        if proto == IPPROTO_TCP and len(l4) >= 20:
            seq, ack, _, flags = struct.unpack_from("!IIBB", l4, 4)
            names = "".join(n for i, n in enumerate(_TCP_FLAG_NAMES) if flags >> i & 1)
            text += f" seq={seq} ack={ack} [{names}] payload={len(l4) - (l4[12] >> 4) * 4}"
        return text
    if proto == IPPROTO_ICMP and len(l4) >= 8:
        kind, _, _, ident, seq = struct.unpack_from("!BBHHH", l4)
        return f"ICMP type={kind} {src}>{dst} id={ident} seq={seq}"
    return f"IPv4 proto={proto} {src}>{dst}"
