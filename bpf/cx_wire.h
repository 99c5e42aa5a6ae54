/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * cx_wire.h - what the compare engine (csrc/cx_engine.c, gcc or clang) and
 * the classifier (bpf/classify.c, bcc) both know about frames on the wire:
 * byte readers, EtherTypes and IP protocol numbers, the header sizes both
 * check, and the passthrough rule with its matcher.
 *
 * Defined here and nowhere else.  Plain C on <linux/types.h> types, no libc,
 * so that it compiles in a BPF program and in user space alike; bcc finds it
 * with -I bpf/, the cffi build (csrc/build_cffi.py) and the fuzz and
 * sanitizer builds with the same include path.  The region between the cdef
 * markers is read by csrc/build_cffi.py: plain declarations only.
 */
#ifndef CX_WIRE_H
#define CX_WIRE_H

#include <linux/types.h>

#ifndef CX_WIRE_INLINE
#define CX_WIRE_INLINE static inline __attribute__((always_inline))
#endif

/* cdef-begin */

/* ---- link and network layer -------------------------------------------- */

#define CX_ETH_HLEN 14
#define CX_ETH_P_IP 0x0800
#define CX_ETH_P_IPV6 0x86DD
#define CX_ETH_P_8021Q 0x8100
#define CX_ETH_P_8021AD 0x88A8
#define CX_VLAN_HLEN 4
#define CX_VLAN_MAX_TAGS 2              /* 802.1Q, or QinQ (802.1ad + 802.1Q) */
#define CX_VLAN_VID_MASK 0x0fff

#define CX_IP_HLEN_MIN 20
#define CX_IP_FRAG_OFFSET_MASK 0x1fff   /* of the IPv4 flags/fragment word */
#define CX_IP_FRAG_MF 0x2000            /* more fragments */

#define CX_IPV6_HLEN 40
/* Extension headers walked (hop-by-hop, routing, destination options,
 * fragment); more than this many in one packet: not compared. */
#define CX_IPV6_MAX_EXT 6
#define CX_IPPROTO_HOPOPTS 0
#define CX_IPPROTO_ROUTING 43
#define CX_IPPROTO_FRAGMENT 44
#define CX_IPPROTO_DSTOPTS 60
#define CX_IPV6_FRAG_HLEN 8
#define CX_IPV6_FRAG_OFFSET_MASK 0xfff8 /* of the fragment header's offset word */
#define CX_IPV6_FRAG_M 0x0001

/* Addresses are kept as IPv6: IPv4 as ::ffff:a.b.c.d (RFC 4291 2.5.5.2). */
#define CX_FAMILY_IPV4 4
#define CX_FAMILY_IPV6 6

/* ---- transport layer --------------------------------------------------- */

#define CX_IPPROTO_ICMP 1
#define CX_IPPROTO_TCP 6
#define CX_IPPROTO_UDP 17
#define CX_IPPROTO_ICMPV6 58
/* ICMPv6 types that are link housekeeping, not the guest's conversation:
 * MLD (130-132, 143) and Neighbour Discovery (133-137).  Treated as ARP is. */
#define CX_ICMPV6_MLD_QUERY 130
#define CX_ICMPV6_ND_REDIRECT 137
#define CX_ICMPV6_MLD2_REPORT 143
/* Protocols keyed by ports where TCP and UDP keep them, as QEMU does. */
#define CX_IPPROTO_DCCP 33
#define CX_IPPROTO_SCTP 132
#define CX_IPPROTO_UDPLITE 136

#define CX_TCP_HLEN_MIN 20
#define CX_TCP_FLAG_ACK 0x10
#define CX_UDP_HLEN 8
#define CX_ICMP_HLEN_MIN 4
#define CX_PORTS_LEN 4                  /* source and destination port */

/* Passthrough rules, one limit for the engine (cx_engine__set_passthrough
 * refuses more) and the classifier (its list map holds this many): each
 * scans them in order, the classifier for every frame. */
#define CX_MAX_RULES 64

/*
 * A passthrough rule: flows it matches are not compared (the primary's frames
 * go on at once, the secondary's are dropped).  Everything in network byte
 * order, as the fields lie in the frame; addresses as IPv6 (IPv4 mapped,
 * ::ffff:a.b.c.d, so an IPv4 prefix /n is a mask of 96 + n bits); a zero
 * mask, port or protocol matches anything.  The engine takes an array of
 * these (cx_engine__set_passthrough), the classifier holds them in its
 * rule list (struct cx_xdp_rules, classify.h).
 */
struct cx_rule {
    __u32 saddr[4];
    __u32 smask[4];
    __u32 daddr[4];
    __u32 dmask[4];
    __u16 sport;
    __u16 dport;
    __u8 proto;
    __u8 pad[3];
};

/* cdef-end */

/* ---- byte readers (big-endian fields at any alignment) ------------------ */

CX_WIRE_INLINE __u16 cx_rd16(const __u8 *p)
{
    return (__u16)(p[0] << 8 | p[1]);
}

CX_WIRE_INLINE __u32 cx_rd32(const __u8 *p)
{
    return (__u32)p[0] << 24 | (__u32)p[1] << 16 | (__u32)p[2] << 8 | p[3];
}

/* Is a (4 words, network order) in the prefix net/mask? */
CX_WIRE_INLINE int cx_addr_in(const __u32 *a, const __u32 *net, const __u32 *mask)
{
    return !(((a[0] ^ net[0]) & mask[0]) | ((a[1] ^ net[1]) & mask[1]) |
             ((a[2] ^ net[2]) & mask[2]) | ((a[3] ^ net[3]) & mask[3]));
}

/* Does rule r cover the flow?  Every argument in network byte order;
 * addresses as 4 words (IPv4 mapped). */
CX_WIRE_INLINE int cx_rule_match(const struct cx_rule *r, const __u32 *saddr,
                                 const __u32 *daddr, __u16 sport, __u16 dport, __u8 proto)
{
    return (!r->proto || r->proto == proto) &&
           cx_addr_in(saddr, r->saddr, r->smask) && cx_addr_in(daddr, r->daddr, r->dmask) &&
           (!r->sport || r->sport == sport) && (!r->dport || r->dport == dport);
}

/* Is this ICMPv6 type link housekeeping (Neighbour Discovery, MLD)? */
CX_WIRE_INLINE int cx_icmpv6_is_link(__u8 type)
{
    return (type >= CX_ICMPV6_MLD_QUERY && type <= CX_ICMPV6_ND_REDIRECT) ||
           type == CX_ICMPV6_MLD2_REPORT;
}

#endif /* CX_WIRE_H */
