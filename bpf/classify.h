/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * classify.h - what bpf/classify.c and user space share: its configuration,
 * map keys and values, verdicts (also the counter indices).  It writes no
 * metadata in front of the frames it redirects: the engine parses them
 * (docs/xdp.md, "No metadata").
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
 *   NO_SOCKET        drop           drop       (no socket bound on that queue)
 *   PASSTHROUGH      redirect       drop       (flow on the passthrough list;
 *                                                 the engine, with the same
 *                                                 list, releases the primary's
 *                                                 frame uncompared)
 *   UNSUPPORTED      pass           drop       (ARP, ND and MLD, other
 *                                               EtherTypes, three tags, tagged
 *                                               with CX_XDP_CFG_VLAN_UNCOMPARED)
 *   MALFORMED        pass           drop       (IPv4 or IPv6 the engine would
 *                                               not parse: cut or inconsistent)
 *   NOT_GUEST        pass           pass       (source MAC not a guest's)
 */
enum cx_xdp_verdict {
    CX_XDP_COMPARE = 0,
    CX_XDP_NO_SOCKET = 1,
    CX_XDP_PASSTHROUGH = 2,
    CX_XDP_UNSUPPORTED = 3,
    CX_XDP_MALFORMED = 4,
    CX_XDP_NOT_GUEST = 5,
    CX_XDP_VERDICT__COUNT = 6,
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
 * they are, as the engine compares them. */
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

#endif /* COLO_XDP_CLASSIFY_H */
