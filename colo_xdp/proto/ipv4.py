"""What the product knows of IPv4 by name, written once: protocol numbers
and their names, and the one parser of ``address`` or ``address/prefix``
(the passthrough rules of the engine, the classifier and the control socket
all read it)::

    net = network("10.0.0.7/24", "source")       # IPv4Network('10.0.0.0/24')
    addr, mask = net_bytes("10.0.0.7/24", "source")  # b'\\n\\0\\0\\0', b'\\xff\\xff\\xff\\0'

Standard library only: the engine, transports and tests all import it.
"""
from __future__ import annotations

import ipaddress

IPPROTO_ICMP = 1
IPPROTO_TCP = 6
IPPROTO_UDP = 17
IPPROTO_GRE = 47

PROTO_NAMES = {"icmp": IPPROTO_ICMP, "tcp": IPPROTO_TCP, "udp": IPPROTO_UDP}
PROTO_BY_NUMBER = {v: k for k, v in PROTO_NAMES.items()}


def network(text: str, what: str) -> ipaddress.IPv4Network:
    """``a.b.c.d`` (a /32) or ``a.b.c.d/len``, host bits dropped.  ValueError
    with one sentence naming ``what`` (source, destination) otherwise."""
    try:
        return ipaddress.IPv4Network(text, strict=False)
    except ipaddress.NetmaskValueError:
        raise ValueError(f"{what} {text!r} has a prefix outside 0..32") from None
    except ValueError:
        raise ValueError(f"{what} {text!r} is not an IPv4 address or address/prefix") \
            from None


def net_bytes(text: str | None, what: str) -> tuple[bytes, bytes]:
    """Address and mask in network byte order; None (anything) is all zeros."""
    if text is None:
        return b"\0" * 4, b"\0" * 4
    net = network(text, what)
    return net.network_address.packed, net.netmask.packed
