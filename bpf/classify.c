// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * classify.c - XDP program on a guest's tap (a veth in tests): decides, frame
 * by frame, whether the engine compares it (redirect to the AF_XDP socket of
 * its rx queue, as it is: the engine parses it itself), or it goes its
 * normal way (primary) or nowhere (secondary) uncompared.  A primary frame
 * of a passthrough flow goes to the socket too: the engine holds the same
 * list and releases it to the outdev uncompared.
 *
 * Built and loaded by colo_xdp/transport/xdp/classifier.py with bcc:
 *   BPF(src_file="bpf/classify.c", cflags=["-I<bpf dir>", "-DCX_XDP_SIDE=0"])
 * CX_XDP_SIDE is CX_XDP_SIDE_PRIMARY or CX_XDP_SIDE_SECONDARY (classify.h).
 * Everything else is in maps that user space fills before attaching: see
 * classify.h for their layout and for the verdict table.
 *
 *  frame ──▶ guest? ──no──▶ NOT_GUEST
 *             │yes
 *             ▼
 *            Ethernet [802.1Q/802.1ad ×2] ──not IPv4/IPv6──▶ UNSUPPORTED
 *             │         (tagged, CX_XDP_CFG_VLAN_UNCOMPARED) ──▶ UNSUPPORTED
 *             ▼
 *            IPv4 | IPv6 [ext headers ×6] ──cut or inconsistent──▶ MALFORMED
 *             │ fragment? ──yes──▶ redirect (no ports): the engine reassembles
 *             ▼
 *            TCP/UDP/ICMP/ICMPv6/other ──cut──▶ MALFORMED; ND, MLD ──▶ UNSUPPORTED
 *             │ 5-tuple
 *             ▼
 *            passthrough rule matches? ──yes──▶ PASSTHROUGH: primary as below
 *             │no                               (the engine releases it); secondary drop
 *             ▼
 *            redirect to xsks[rx_queue] ──no socket──▶ NO_SOCKET
 *
 * The parse rules are the engine's (csrc/cx_engine.c, parse_frame): a frame
 * the engine would compare is COMPARE here, and one it would not compare is
 * never sent to it (same outcome, without the trip through user space).
 */
#include <uapi/linux/bpf.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/in.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/ipv6.h>
#include <uapi/linux/tcp.h>
#include <uapi/linux/udp.h>

#include "classify.h"   /* includes cx_wire.h: protocol numbers, rules */

#ifndef CX_XDP_SIDE
#error "CX_XDP_SIDE must be set: -DCX_XDP_SIDE=0 (primary) or 1 (secondary)"
#endif
#if CX_XDP_SIDE != CX_XDP_SIDE_PRIMARY && CX_XDP_SIDE != CX_XDP_SIDE_SECONDARY
#error "CX_XDP_SIDE must be CX_XDP_SIDE_PRIMARY (0) or CX_XDP_SIDE_SECONDARY (1)"
#endif

/* ---- named return codes --------------------------------------------------- */

/* Parse helpers return the next header's protocol, or one of these. */
#define PARSE_CUT (-1)            /* header cut by data_end or inconsistent */
#define PARSE_LINK (-2)           /* L4 that is link housekeeping (ND, MLD) */

/* What a frame that is not compared does on this side. */
#if CX_XDP_SIDE == CX_XDP_SIDE_PRIMARY
#define ACT_NOT_COMPARED XDP_PASS /* primary: on its normal way */
#else
#define ACT_NOT_COMPARED XDP_DROP /* secondary: never reaches the network */
#endif
/* What bpf_redirect_map returns when the queue has no socket. */
#define ACT_NO_SOCKET XDP_DROP
/* A passthrough flow's frame: the primary's to the engine (released there
 * uncompared, to the outdev with the rest), the secondary's nowhere. */
#define TO_ENGINE_IF_PASSTHROUGH (CX_XDP_SIDE == CX_XDP_SIDE_PRIMARY)

/* ---- maps ------------------------------------------------------------------ */

/* xsks: rx queue index -> AF_XDP socket (fd written by user space).
 * CX_XDP_MAX_QUEUES entries; a queue without a socket gives NO_SOCKET. */
BPF_XSKMAP(xsks, CX_XDP_MAX_QUEUES);

/* counters: verdict -> struct cx_xdp_counter, one copy per CPU (no atomics);
 * user space adds the copies up.  CX_XDP_VERDICT__COUNT entries. */
BPF_PERCPU_ARRAY(counters, struct cx_xdp_counter, CX_XDP_VERDICT__COUNT);

/* config: index 0 -> struct cx_xdp_config (flags).  One entry; all zero (no
 * guest filter, no VLAN compare) until written. */
BPF_ARRAY(config, struct cx_xdp_config, 1);

/* rules_a, rules_b: index 0 -> struct cx_xdp_rules, a whole passthrough list
 * each; rule_list: index 0 -> the one of them in use (empty: no rules).
 * User space fills the other and then points rule_list at it (classify.h). */
BPF_ARRAY(rules_a, struct cx_xdp_rules, 1);
BPF_ARRAY(rules_b, struct cx_xdp_rules, 1);
BPF_ARRAY_OF_MAPS(rule_list, "rules_a", 1);

/* guest_macs: struct cx_xdp_mac -> __u8 (unused), the guest's source MACs,
 * consulted with CX_XDP_CFG_GUEST_MACS.  CX_XDP_MAX_GUEST_MACS entries. */
BPF_HASH(guest_macs, struct cx_xdp_mac, __u8, CX_XDP_MAX_GUEST_MACS);

/* ---- helpers ----------------------------------------------------------------- */

/* An 802.1Q / 802.1ad tag, after the MAC addresses. */
struct vlan_hdr {
    __be16 tci;
    __be16 encapsulated_proto;
};

/* Where the parse stands: the next header. */
struct cursor {
    void *pos;
};

/* struct flow flags. */
#define FLOW_VLAN 0x1             /* the frame had 802.1Q / 802.1ad tags */
#define FLOW_FRAGMENT 0x2         /* an IPv4 or IPv6 fragment */
#define FLOW_IPV6 0x4

/* What the passthrough rules match a frame by.  Addresses as the engine
 * keeps them: IPv6, IPv4 mapped (::ffff:a.b.c.d).  Only for the verdict:
 * the engine parses the frame itself (docs/xdp.md, "No metadata"). */
struct flow {
    __u32 saddr[4];
    __u32 daddr[4];
    __u16 sport;
    __u16 dport;
    __u8 proto;
    __u8 flags;               /* FLOW_* */
};

static __always_inline int is_vlan(__u16 h_proto)
{
    return h_proto == bpf_htons(CX_ETH_P_8021Q) || h_proto == bpf_htons(CX_ETH_P_8021AD);
}

/* Ethernet and up to CX_XDP_MAX_VLAN_TAGS tags: returns the EtherType after
 * them (network order), or PARSE_CUT. */
static __always_inline int parse_ethhdr(struct cursor *c, void *data_end,
                                        struct flow *f)
{
    struct ethhdr *eth = c->pos;
    if ((void *)(eth + 1) > data_end)
        return PARSE_CUT;
    __u16 h_proto = eth->h_proto;
    c->pos = eth + 1;

#pragma unroll
    for (int i = 0; i < CX_XDP_MAX_VLAN_TAGS; i++) {
        if (!is_vlan(h_proto))
            break;
        struct vlan_hdr *vh = c->pos;
        if ((void *)(vh + 1) > data_end)
            return PARSE_CUT;
        f->flags |= FLOW_VLAN;
        h_proto = vh->encapsulated_proto;
        c->pos = vh + 1;
    }
    return h_proto;
}

/* IPv4 header, checked as the engine checks it: returns the L4 protocol, or
 * PARSE_CUT.  *l4_len is what the total length leaves after the header. */
static __always_inline int parse_iphdr(struct cursor *c, void *data_end,
                                       struct flow *f, __u32 *l4_len)
{
    struct iphdr *ip = c->pos;
    if ((void *)(ip + 1) > data_end)
        return PARSE_CUT;
    __u32 ihl = ip->ihl * 4;
    __u32 tot = bpf_ntohs(ip->tot_len);
    if (ip->version != 4 || ihl < CX_IP_HLEN_MIN || tot < ihl)
        return PARSE_CUT;
    if (c->pos + tot > data_end)    /* total length beyond the frame */
        return PARSE_CUT;

    f->saddr[2] = f->daddr[2] = bpf_htonl(0xffff);
    f->saddr[3] = ip->saddr;
    f->daddr[3] = ip->daddr;
    f->proto = ip->protocol;
    *l4_len = tot - ihl;
    if (bpf_ntohs(ip->frag_off) & (CX_IP_FRAG_MF | CX_IP_FRAG_OFFSET_MASK)) {
        f->flags |= FLOW_FRAGMENT;
        /* As the engine: only the last part may end off a multiple of 8. */
        if ((bpf_ntohs(ip->frag_off) & CX_IP_FRAG_MF) && (*l4_len == 0 || *l4_len % 8))
            return PARSE_CUT;
    }
    c->pos += ihl;
    return ip->protocol;
}

/* IPv6 header and its extension headers (hop-by-hop first only, routing,
 * destination options, fragment; at most CX_IPV6_MAX_EXT), checked as the
 * engine checks them: returns the upper-layer protocol, or PARSE_CUT.
 * *l4_len is what the payload length leaves after the extension headers. */
static __always_inline int parse_ipv6hdr(struct cursor *c, void *data_end,
                                         struct flow *f, __u32 *l4_len)
{
    struct ipv6hdr *ip6 = c->pos;
    if ((void *)(ip6 + 1) > data_end)
        return PARSE_CUT;
    __u32 left = bpf_ntohs(ip6->payload_len);
    if (ip6->version != 6 || left == 0)     /* 0: a jumbogram */
        return PARSE_CUT;
    if (c->pos + sizeof(*ip6) + left > data_end)
        return PARSE_CUT;
    __builtin_memcpy(f->saddr, &ip6->saddr, 16);
    __builtin_memcpy(f->daddr, &ip6->daddr, 16);
    f->flags |= FLOW_IPV6;
    __u8 nh = ip6->nexthdr;
    c->pos += sizeof(*ip6);

#pragma unroll
    for (int i = 0; i < CX_IPV6_MAX_EXT + 1; i++) {
        if (nh != CX_IPPROTO_HOPOPTS && nh != CX_IPPROTO_ROUTING &&
            nh != CX_IPPROTO_DSTOPTS && nh != CX_IPPROTO_FRAGMENT)
            break;
        if (i == CX_IPV6_MAX_EXT || left < 8)
            return PARSE_CUT;
        if (nh == CX_IPPROTO_HOPOPTS && i != 0)
            return PARSE_CUT;
        __u8 *eh = c->pos;
        if ((void *)(eh + 8) > data_end)
            return PARSE_CUT;
        if (nh == CX_IPPROTO_FRAGMENT) {
            /* The rest is the fragmentable part: the engine reassembles. */
            f->flags |= FLOW_FRAGMENT;
            f->proto = eh[0];
            left -= CX_IPV6_FRAG_HLEN;
            if ((eh[3] & CX_IPV6_FRAG_M) && (left == 0 || left % 8))
                return PARSE_CUT;
            *l4_len = left;
            c->pos += CX_IPV6_FRAG_HLEN;
            return eh[0];
        }
        __u32 hlen = (eh[1] + 1) * 8;
        if (hlen > left)
            return PARSE_CUT;
        nh = eh[0];
        left -= hlen;
        c->pos += hlen;
    }
    f->proto = nh;
    *l4_len = left;
    return nh;
}

/* L4 header of a first (or only) fragment: ports into f, 0 or PARSE_CUT. */
static __always_inline int parse_l4(struct cursor *c, void *data_end, int proto,
                                    __u32 l4_len, struct flow *f)
{
    switch (proto) {
    case CX_IPPROTO_TCP: {
        struct tcphdr *tcp = c->pos;
        if (l4_len < CX_TCP_HLEN_MIN || (void *)(tcp + 1) > data_end)
            return PARSE_CUT;
        __u32 doff = tcp->doff * 4;
        if (doff < CX_TCP_HLEN_MIN || doff > l4_len)
            return PARSE_CUT;
        f->sport = tcp->source;
        f->dport = tcp->dest;
        return 0;
    }
    case CX_IPPROTO_UDP: {
        struct udphdr *udp = c->pos;
        if (l4_len < CX_UDP_HLEN || (void *)(udp + 1) > data_end)
            return PARSE_CUT;
        f->sport = udp->source;
        f->dport = udp->dest;
        return 0;
    }
    case CX_IPPROTO_ICMP:
        if (l4_len < CX_ICMP_HLEN_MIN || c->pos + CX_ICMP_HLEN_MIN > data_end)
            return PARSE_CUT;
        return 0;
    case CX_IPPROTO_ICMPV6: {
        __u8 *icmp6 = c->pos;
        if (!(f->flags & FLOW_IPV6))
            return 0;                /* protocol 58 in IPv4: an "other" */
        if (l4_len < CX_ICMP_HLEN_MIN || (void *)(icmp6 + CX_ICMP_HLEN_MIN) > data_end)
            return PARSE_CUT;
        return cx_icmpv6_is_link(icmp6[0]) ? PARSE_LINK : 0;
    }
    case CX_IPPROTO_DCCP:
    case CX_IPPROTO_SCTP:
    case CX_IPPROTO_UDPLITE: {
        /* Keyed by their ports where TCP and UDP keep them, as the engine does;
         * too short for ports: keyed without them, still compared. */
        __be16 *ports = c->pos;
        if (l4_len >= CX_PORTS_LEN && (void *)(ports + 2) <= data_end) {
            f->sport = ports[0];
            f->dport = ports[1];
        }
        return 0;
    }
    default:
        return 0;
    }
}

/* Is the source MAC one of the guest's (when the filter is on)? */
static __always_inline int is_guest(const struct cx_xdp_config *cfg, void *data,
                                    void *data_end)
{
    if (!(cfg->flags & CX_XDP_CFG_GUEST_MACS))
        return 1;
    struct ethhdr *eth = data;
    if ((void *)(eth + 1) > data_end)
        return 1;    /* not even Ethernet: MALFORMED decides */
    struct cx_xdp_mac mac = {};
    __builtin_memcpy(mac.addr, eth->h_source, sizeof(mac.addr));
    return guest_macs.lookup(&mac) != NULL;
}

/* Does a rule of the list in use cover the flow?  The list is looked up
 * once: the whole scan reads one list, which nobody writes while in use. */
static __always_inline int on_passthrough_list(const struct flow *f)
{
    __u32 zero = 0;
    void *inner = rule_list.lookup(&zero);
    if (!inner)
        return 0;
    struct cx_xdp_rules *list = bpf_map_lookup_elem(inner, &zero);
    if (!list)
        return 0;
    __u32 n = list->count;
    for (__u32 i = 0; i < CX_MAX_RULES; i++) {
        if (i >= n)
            break;
        if (cx_rule_match(&list->rule[i], f->saddr, f->daddr, f->sport, f->dport, f->proto))
            return 1;
    }
    return 0;
}

/* Everything but the redirect: the verdict for the frame at data. */
static __always_inline int classify(struct xdp_md *ctx, const struct cx_xdp_config *cfg,
                                    struct flow *f)
{
    void *data = (void *)(long)ctx->data;
    void *data_end = (void *)(long)ctx->data_end;
    struct cursor c = { .pos = data };
    __u32 l4_len = 0;

    if (!is_guest(cfg, data, data_end))
        return CX_XDP_NOT_GUEST;
    int h_proto = parse_ethhdr(&c, data_end, f);
    if (h_proto == PARSE_CUT)
        return CX_XDP_MALFORMED;
    if (h_proto != bpf_htons(CX_ETH_P_IP) && h_proto != bpf_htons(CX_ETH_P_IPV6))
        return CX_XDP_UNSUPPORTED;
    if ((f->flags & FLOW_VLAN) && (cfg->flags & CX_XDP_CFG_VLAN_UNCOMPARED))
        return CX_XDP_UNSUPPORTED;
    int proto = h_proto == bpf_htons(CX_ETH_P_IP) ? parse_iphdr(&c, data_end, f, &l4_len)
                                                  : parse_ipv6hdr(&c, data_end, f, &l4_len);
    if (proto == PARSE_CUT)
        return CX_XDP_MALFORMED;
    /* A fragment goes to the engine, which reassembles it and decides on
     * the whole datagram (passthrough included: a later fragment has no
     * ports to match). */
    if (f->flags & FLOW_FRAGMENT)
        return CX_XDP_COMPARE;
    int l4 = parse_l4(&c, data_end, proto, l4_len, f);
    if (l4 == PARSE_CUT)
        return CX_XDP_MALFORMED;
    if (l4 == PARSE_LINK)
        return CX_XDP_UNSUPPORTED;
    if (on_passthrough_list(f))
        return CX_XDP_PASSTHROUGH;
    return CX_XDP_COMPARE;
}

static __always_inline int action_of(int verdict)
{
    switch (verdict) {
    case CX_XDP_NOT_GUEST:
        return XDP_PASS;
    case CX_XDP_NO_SOCKET:
        return ACT_NO_SOCKET;
    default:
        return ACT_NOT_COMPARED;
    }
}

/* ---- entry point --------------------------------------------------------------- */

int xdp_classify(struct xdp_md *ctx)
{
    __u32 zero = 0;
    struct flow f = {};
    int verdict = CX_XDP_MALFORMED;
    int action;
    __u64 len = bpf_xdp_get_buff_len(ctx);

    struct cx_xdp_config *cfg = config.lookup(&zero);
    if (cfg)
        verdict = classify(ctx, cfg, &f);

    if (verdict == CX_XDP_COMPARE ||
        (verdict == CX_XDP_PASSTHROUGH && TO_ENGINE_IF_PASSTHROUGH)) {
        action = xsks.redirect_map(ctx->rx_queue_index, ACT_NO_SOCKET);
        if (action != XDP_REDIRECT)
            verdict = CX_XDP_NO_SOCKET;
    } else {
        action = action_of(verdict);
    }

    /* The one exit: every frame is counted under its verdict. */
    __u32 key = verdict;
    struct cx_xdp_counter *ctr = counters.lookup(&key);
    if (ctr) {
        ctr->frames++;
        ctr->bytes += len;
    }
    return action;
}
