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
#define CX_ETH_P_8021Q 0x8100
#define CX_ETH_P_8021AD 0x88A8

#define CX_IP_HLEN_MIN 20
#define CX_IP_FRAG_OFFSET_MASK 0x1fff   /* of the IPv4 flags/fragment word */

/* ---- transport layer --------------------------------------------------- */

#define CX_IPPROTO_ICMP 1
#define CX_IPPROTO_TCP 6
#define CX_IPPROTO_UDP 17
/* Protocols keyed by ports where TCP and UDP keep them, as QEMU does. */
#define CX_IPPROTO_DCCP 33
#define CX_IPPROTO_SCTP 132
#define CX_IPPROTO_UDPLITE 136

#define CX_TCP_HLEN_MIN 20
#define CX_TCP_FLAG_ACK 0x10
#define CX_UDP_HLEN 8
#define CX_ICMP_HLEN_MIN 4
#define CX_PORTS_LEN 4                  /* source and destination port */

/*
 * A passthrough rule: flows it matches are not compared (the primary's frames
 * go on at once, the secondary's are dropped).  Everything in network byte
 * order, as the fields lie in the frame; a zero mask, port or protocol
 * matches anything.  The engine takes an array of these
 * (cx_engine__set_passthrough), the classifier holds them in its "rules" map.
 */
struct cx_rule {
    __u32 saddr;
    __u32 smask;
    __u32 daddr;
    __u32 dmask;
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

/* Does rule r cover the flow?  Every argument in network byte order. */
CX_WIRE_INLINE int cx_rule_match(const struct cx_rule *r, __u32 saddr, __u32 daddr,
                                 __u16 sport, __u16 dport, __u8 proto)
{
    return (!r->proto || r->proto == proto) &&
           !((saddr ^ r->saddr) & r->smask) && !((daddr ^ r->daddr) & r->dmask) &&
           (!r->sport || r->sport == sport) && (!r->dport || r->dport == dport);
}

#endif /* CX_WIRE_H */
