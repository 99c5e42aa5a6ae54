"""What the product knows of IP by name, written once: protocol numbers and
their names, and the one parser of ``address`` or ``address/prefix``, IPv4
or IPv6 (the passthrough rules of the engine, the classifier and the
control socket all read it)::

    net = network("10.0.0.7/24", "source")        # IPv4Network('10.0.0.0/24')
    addr, mask = net_bytes("10.0.0.7/24", "source")
    # ::ffff:10.0.0.0 and a mask of 96 + 24 bits, 16 bytes each

The engine and the classifier keep every address in 128 bits, IPv4 mapped
(``::ffff:a.b.c.d``), so one rule format serves both families.  Standard
library only: the engine, transports and tests all import it.
"""
from __future__ import annotations

import ipaddress

IPPROTO_ICMP = 1
IPPROTO_TCP = 6
IPPROTO_UDP = 17
IPPROTO_GRE = 47
IPPROTO_ICMPV6 = 58

PROTO_NAMES = {"icmp": IPPROTO_ICMP, "tcp": IPPROTO_TCP, "udp": IPPROTO_UDP,
               "icmp6": IPPROTO_ICMPV6}
PROTO_BY_NUMBER = {v: k for k, v in PROTO_NAMES.items()}
PROTO_NAMES["ipv6-icmp"] = IPPROTO_ICMPV6     # /etc/protocols' name, read too

_ALL = (1 << 128) - 1


def network(text: str, what: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """An address (a /32 or /128) or ``address/len``, IPv4 or IPv6, host
    bits dropped.  ValueError with one sentence naming ``what`` (source,
    destination) otherwise."""
    try:
        return ipaddress.ip_network(text, strict=False)
    except ipaddress.NetmaskValueError:
        raise ValueError(f"{what} {text!r} has a prefix outside 0..32 (IPv4) "
                         "or 0..128 (IPv6)") from None
    except ValueError:
        raise ValueError(f"{what} {text!r} is not an IPv4 or IPv6 address or "
                         "address/prefix") from None


def net_bytes(text: str | None, what: str) -> tuple[bytes, bytes]:
    """Address and mask, 16 bytes each in network byte order, IPv4 mapped
    (``::ffff:a.b.c.d``, mask 96 + len bits); None or a /0 (anything, of
    either family) is all zeros."""
    if text is None:
        return b"\0" * 16, b"\0" * 16
    net = network(text, what)
    if net.prefixlen == 0:
        return b"\0" * 16, b"\0" * 16
    if net.version == 4:
        addr, bits = b"\0" * 10 + b"\xff\xff" + net.network_address.packed, 96 + net.prefixlen
    else:
        addr, bits = net.network_address.packed, net.prefixlen
    return addr, (_ALL ^ ((1 << (128 - bits)) - 1)).to_bytes(16, "big")
