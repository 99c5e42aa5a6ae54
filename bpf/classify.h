/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * classify.h - what bpf/classify.c and user space share: its configuration,
 * map keys and values, verdicts (also the counter indices) and the metadata
 * it puts in front of every frame it sends to an AF_XDP socket.
 *
 * Defined here and nowhere else; what the engine knows too (protocol
 * numbers, the passthrough rule and its matcher) is in cx_wire.h, which this
 * header includes.  colo_xdp/transport/xdp/classify_abi.py mirrors these
 * values for Python; tests/xdp/test_header.py parses this file and checks
 * that the two agree.  Plain C with <linux/types.h> types, so it compiles in
 * the BPF program (bcc) and in user space C alike.  Every enum member has an
 * explicit value and every #define a plain integer, so the test can read them.
 */
#ifndef COLO_XDP_CLASSIFY_H
#define COLO_XDP_CLASSIFY_H

#include <linux/types.h>

#include "cx_wire.h"   /* struct cx_rule and CX_MAX_RULES, the rule list's */

/* ---- sizes ------------------------------------------------------------ */

/* AF_XDP sockets: one per rx queue of the interface, keyed by queue index. */
#define CX_XDP_MAX_QUEUES 64
/* Guest source MACs (only used with CX_XDP_CFG_GUEST_MACS). */
#define CX_XDP_MAX_GUEST_MACS 16
/* 802.1Q / 802.1ad tags parsed in front of the EtherType. */
#define CX_XDP_MAX_VLAN_TAGS 2

/* ---- sides (compile-time: -DCX_XDP_SIDE=...) ---------------------------- */

/* The same numbers as the engine's CX_PRIMARY / CX_SECONDARY. */
#define CX_XDP_SIDE_PRIMARY 0
#define CX_XDP_SIDE_SECONDARY 1

/* ---- verdicts ----------------------------------------------------------- */

/*
 * What the program decided for a frame; also the index of its counter.
 * The action follows from the verdict and the side:
 *
 *   verdict          primary        secondary
 *   COMPARE          redirect to the AF_XDP socket of the frame's rx queue
 *   COMPARE_NO_META  redirect (no metadata: the driver has no room for it)
 *   NO_SOCKET        drop           drop       (no socket bound on that queue)
 *   PASSTHROUGH      redirect       drop       (flow on the passthrough list;
 *                    (metadata flag                the engine releases the
 *                    PASSTHROUGH)                  primary's frame uncompared)
 *   UNSUPPORTED      pass           drop       (ARP, ND and MLD, other
 *                                               EtherTypes, three tags, tagged
 *                                               with CX_XDP_CFG_VLAN_UNCOMPARED)
 *   MALFORMED        pass           drop       (IPv4 or IPv6 the engine would
 *                                               not parse: cut or inconsistent)
 *   NOT_GUEST        pass           pass       (source MAC not a guest's)
 */
enum cx_xdp_verdict {
    CX_XDP_COMPARE = 0,
    CX_XDP_COMPARE_NO_META = 1,
    CX_XDP_NO_SOCKET = 2,
    CX_XDP_PASSTHROUGH = 3,
    CX_XDP_UNSUPPORTED = 4,
    CX_XDP_MALFORMED = 5,
    CX_XDP_NOT_GUEST = 6,
    CX_XDP_VERDICT__COUNT = 7,
};

/* Per-CPU counters, one per verdict (map "counters", index: the verdict). */
struct cx_xdp_counter {
    __u64 frames;
    __u64 bytes;
};

/* ---- configuration (map "config", one entry at index 0) ----------------- */

/* Only frames whose source MAC is in map "guest_macs" are the guest's;
 * without it every frame on the interface is (a tap carries one guest). */
#define CX_XDP_CFG_GUEST_MACS 0x1
/* 802.1Q / QinQ-tagged frames are not compared, as in QEMU; without it
 * they are, as the engine compares them (metadata offsets point past the
 * tags). */
#define CX_XDP_CFG_VLAN_UNCOMPARED 0x2

struct cx_xdp_config {
    __u32 flags;       /* CX_XDP_CFG_* */
};

/* Key of map "guest_macs" (value: __u8, unused). */
struct cx_xdp_mac {
    __u8 addr[6];
};

/* ---- passthrough list (maps "rule_list", "rules_a", "rules_b") ----------- */

/*
 * The passthrough list, whole, in one map value: flows its rules (cx_wire.h,
 * the engine's own) match are not compared.  Two maps hold one each,
 * "rules_a" and "rules_b" (index 0); "rule_list", an array of maps with one
 * slot, points to the one in use.  User space writes the new list into the
 * other and then points the slot at it: one update, after which the kernel
 * has waited for every program still reading the old list (an update of an
 * array of maps waits for an RCU grace period), so the next change may
 * write that one.  A frame looks the slot up once and scans one list that
 * nobody writes meanwhile: never a half-written list, never one list's
 * count with another's rules.
 */
struct cx_xdp_rules {
    __u32 count;       /* rules in use, from rule[0] */
    __u32 pad;
    struct cx_rule rule[CX_MAX_RULES];
};

/* ---- metadata ------------------------------------------------------------ */

/*
 * Put by bpf_xdp_adjust_meta right in front of the frame of every COMPARE
 * verdict, and of every PASSTHROUGH one on the primary: in an AF_XDP buffer
 * it ends where the frame starts, so it is at addr - sizeof(struct cx_xdp_meta).  The magic is last, next to the frame.
 * Values as in the frame (network byte order); ports are 0 for protocols
 * without them and for fragments (the engine reassembles them and decides
 * on the datagram).  IPv6 addresses are folded to 32 bits, the XOR of their
 * words (CX_XDP_META_F_IPV6): the metadata area holds at most 32 bytes.
 * Offsets count from the start of the Ethernet header; l4_off is 0 when
 * the L4 header is not parsed (fragment).
 * User space clears the magic before a buffer goes back to the fill ring, so
 * a buffer that came without metadata (COMPARE_NO_META) is never misread.
 */
#define CX_XDP_META_MAGIC 0xc01a0d01
#define CX_XDP_META_F_VLAN 0x1       /* frame had 802.1Q / 802.1ad tags */
#define CX_XDP_META_F_FRAGMENT 0x2   /* an IPv4 or IPv6 fragment */
#define CX_XDP_META_F_IPV6 0x4       /* IPv6: addresses folded */
/* On the passthrough list (verdict PASSTHROUGH, primary): the engine releases
 * the frame uncompared and gives its flow no connection. */
#define CX_XDP_META_F_PASSTHROUGH 0x8

struct cx_xdp_meta {
    __u32 hash;        /* cx_xdp_flow_hash() of the 5-tuple below */
    __u32 saddr;
    __u32 daddr;
    __u16 sport;
    __u16 dport;
    __u8 proto;
    __u8 flags;        /* CX_XDP_META_F_* */
    __u16 l3_off;      /* IPv4 or IPv6 header */
    __u16 l4_off;      /* TCP/UDP/ICMP/... header, 0 if none */
    __u16 vlan_tci;    /* outer tag's TCI (host order), 0 if untagged */
    __u32 magic;       /* CX_XDP_META_MAGIC */
};

/* ---- flow hash ------------------------------------------------------------ */

#ifndef CX_XDP_INLINE
#define CX_XDP_INLINE static inline __attribute__((always_inline))
#endif

/* MurmurHash3's 32-bit finaliser. */
CX_XDP_INLINE __u32 cx_xdp_mix32(__u32 h)
{
    h ^= h >> 16;
    h *= 0x85ebca6b;
    h ^= h >> 13;
    h *= 0xc2b2ae35;
    h ^= h >> 16;
    return h;
}

/*
 * The metadata's hash of a 5-tuple as it is in the frame (direction kept,
 * like the engine's connection key).  The words are taken as they lie in
 * memory on a little-endian host (__u32 loads of network-order fields).
 */
CX_XDP_INLINE __u32 cx_xdp_flow_hash(__u32 saddr, __u32 daddr, __u16 sport,
                                     __u16 dport, __u8 proto)
{
    __u32 h = cx_xdp_mix32(proto);
    h = cx_xdp_mix32(h ^ (((__u32)sport << 16) | dport));
    h = cx_xdp_mix32(h ^ daddr);
    return cx_xdp_mix32(h ^ saddr);
}

#endif /* COLO_XDP_CLASSIFY_H */
