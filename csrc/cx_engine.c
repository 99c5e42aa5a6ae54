/*
 * cx_engine.c - colo-xdp compare engine.
 *
 * Ports the behaviour of QEMU's net/colo-compare.c (7.2) and fixes what it
 * gets wrong; docs/compare-rules.md lists every rule and every difference.
 *
 *   engine
 *     table: hash buckets ──▶ conn ──▶ conn ...    (5-tuple ─▶ connection)
 *     all:   conn ⇄ conn ⇄ conn ...                (creation order: flush, scan)
 *     idle:  conn ⇄ conn ...                       (no frame queued: LRU victims)
 *     conn
 *       q[PRIMARY]:   frame ⇄ frame ⇄ ...          (TCP: sorted by seq,
 *       q[SECONDARY]: frame ⇄ frame ⇄ ...           others: arrival order)
 *
 * A frame fed in is parsed, queued on its side of its connection, and that
 * connection is compared at once.  Releases are appended to the out buffer in
 * the outdev's framing; checkpoint requests and drops become events,
 * coalesced per kind, reason, side and connection until the next drain, and
 * a checkpoint request also sets a sticky bit (ckpt_wanted) that only a
 * checkpoint clears.
 *
 * Flow control: the stream and burst feeds stop in front of a frame that
 * would run its side ahead (its connection holds flow_high_water frames of
 * that side and none of the other's, or it needs a slot of a table full of
 * busy connections); the caller leaves the rest unread until the other side
 * catches up.  Passthrough flows take no connection.
 */
#include "cx_engine.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

/* Kinds of comparison, one comparator each. */
enum cx_cmp { CMP_TCP, CMP_L4, CMP_WHOLE };

struct cx_frame {
    struct cx_frame *prev, *next;
    uint64_t born_ms;
    uint32_t len;          /* bytes in data[], vnet header included */
    uint32_t vnet_len;
    uint32_t cmp_off;      /* where the compared bytes start (UDP/ICMP/other) */
    /* TCP only */
    uint32_t pay_off;      /* payload start in data[] */
    uint32_t pay_len;
    uint32_t seq, seq_end, ack;
    uint32_t done;         /* payload bytes already matched (QEMU's offset) */
    bool has_ack;
    bool captured;         /* already given out as miscompare evidence */
    bool transient;        /* lives on feed_queue's stack, bytes in the
                              caller's buffer: copied only if still queued
                              when the compare is done */
    bool gone;             /* a transient frame was released or consumed */
    bool pooled;           /* a FRAME_SLOT buffer: back to the free list */
    uint32_t weight;       /* frames it stands for: 1, or a datagram's fragments */
    struct cx_frag *frags; /* a reassembled datagram: the fragments it was made
                              of, in arrival order; released in its place */
    const uint8_t *bytes;  /* the frame: data[], or the caller's while transient */
    uint8_t data[];        /* a datagram: the reassembled one, compared only */
};

/* One fragment as it came (vnet header included), and its part. */
struct cx_frag {
    struct cx_frag *next;
    uint64_t born_ms;      /* when it came (its own hold time) */
    uint32_t off, plen;    /* bytes [off, off + plen) of the datagram's payload */
    uint32_t pay_at;       /* where that part is in data[] */
    uint32_t len, vnet_len;
    uint32_t l3_off;       /* the IP header */
    uint32_t hdr_end, nh_at;
    uint8_t nh;            /* (struct cx_fraginfo) */
    uint8_t data[];
};

/* A datagram being reassembled, one side's.  COLLECT holds fragments;
 * PASS (after a checkpoint or failover released what it held) lets the
 * rest through uncompared; DISCARD (overlap, a limit) drops the rest.  Both
 * last until the timeout. */
enum reasm_state { RA_COLLECT, RA_PASS, RA_DISCARD };

struct cx_reasm {
    struct cx_reasm *hnext;            /* hash chain */
    struct cx_reasm *prev, *next;      /* age order, oldest first */
    struct cx_key key;                 /* addresses, proto (IPv4), tags */
    uint32_t id;
    uint32_t hash;
    uint8_t side;
    uint8_t state;                     /* enum reasm_state */
    uint8_t discard_reason;            /* CX_DROP_* of a DISCARD datagram */
    bool have_last;
    uint64_t born_ms;
    struct cx_frag *head, *tail;       /* arrival order */
    uint32_t nfrags;
    uint32_t bytes;                    /* of the fragments held */
    uint32_t have;                     /* payload bytes held */
    uint32_t total;                    /* the payload's length, once the last came */
};

#define REASM_BUCKETS 1024             /* power of two */

struct cx_reasm_table {
    struct cx_reasm *buckets[REASM_BUCKETS];
    struct cx_reasm *head, *tail;      /* age order, both sides */
    uint32_t count[2];
    uint64_t bytes[2];
};

/* Queued frames of over half a FRAME_SLOT up to a FRAME_SLOT (frames of an
 * Ethernet MTU, vnet header and all) live in FRAME_SLOT-byte buffers taken
 * from and given back to a free list: a side that runs ahead queues (and
 * later frees) one per frame, and malloc/free was about a fifth of the
 * engine's instructions at 1400 B.  The list is LIFO, so the buffer reused
 * is the one most likely still in cache, and it keeps at most
 * FRAME_POOL_MAX buffers (what a burst frees past that goes back to
 * malloc).  Smaller frames are malloc'd as they come (a slot would take
 * up to many times their size), and so are larger ones. */
#define FRAME_SLOT 2048
#define FRAME_POOL_MAX 1024

struct cx_queue {
    struct cx_frame *head, *tail;
    uint32_t count;
};

struct cx_conn {
    struct cx_key key;
    uint32_t hash;
    uint8_t cmp;                   /* enum cx_cmp */
    bool idle;
    struct cx_conn *hnext;         /* hash chain */
    struct cx_conn *all_prev, *all_next;
    struct cx_conn *idle_prev, *idle_next;
    struct cx_queue q[2];
    uint32_t held[2];              /* frames the queues stand for (fragments) */
    /* TCP compare state */
    uint32_t max_ack[2];
    bool have_ack[2];
    uint32_t compared_seq;         /* end of the highest compared data */
    bool have_compared;
    /* for stats */
    uint64_t created_ms, last_ms;
    uint64_t matched, released, mismatches, checkpoints;
};

struct cx_list {
    struct cx_conn *head, *tail;
};

/* A free FRAME_SLOT buffer, linked through its first bytes. */
struct cx_pool_slot {
    struct cx_pool_slot *next;
};

/* Where an event of the current batch is, for coalescing; a slot whose gen
 * is not the engine's is empty (so a drain empties the table in O(1)). */
struct cx_slot {
    uint32_t gen;
    uint32_t idx;
};

struct cx_engine {
    struct cx_config cfg;
    struct cx_conn **buckets;
    uint32_t nbuckets;             /* power of two, grown with nconns (table_grow) */
    uint32_t max_buckets;          /* the power of two >= max_connections */
    uint32_t nconns;
    struct cx_list all, idle;
    uint64_t queued[2];
    bool failed_over;
    bool scan_armed;
    uint64_t next_scan_ms;
    /* The time of the latest feed or tick: "now" for the releases that are
     * given none (checkpoint, failover, set_passthrough). */
    uint64_t last_now_ms;
    /* out buffer: [head, len) is pending; the record at head has
     * out_rec_left bytes still to go (0: head is a record boundary) */
    uint8_t *out;
    size_t out_head, out_len, out_cap, out_rec_left;
    struct cx_event *events;
    size_t nevents;
    struct cx_slot *slots;         /* open addressing over events */
    uint32_t nslots;               /* power of two, >= 2 * max_events */
    uint32_t gen;
    uint32_t hwm;                  /* flow_high_water in force */
    uint32_t ckpt_wanted;          /* 1 << CX_CKPT_* since the last checkpoint */
    uint64_t skip[2];              /* bytes of an oversize record still to skip */
    uint8_t *evidence;             /* cfg.evidence_max_bytes, or NULL */
    size_t evidence_len;
    struct cx_rule *rules;
    size_t nrules;
    struct cx_reasm_table ra;
    struct cx_pool_slot *pool;     /* free FRAME_SLOT buffers, LIFO */
    uint32_t pool_count;
    struct cx_counters ctr;
};

/* Where a fragment belongs: its datagram and its part of it. */
struct cx_fraginfo {
    uint32_t id;           /* IPv4 identification or IPv6 fragment id */
    uint32_t off;          /* of its part in the datagram's payload */
    uint32_t pay_at;       /* where its part starts in the frame */
    uint32_t plen;         /* its part's length */
    uint32_t hdr_end;      /* IPv4: end of the IP header; IPv6: the fragment
                              header (the unfragmentable part ends there) */
    uint32_t nh_at;        /* IPv6: the byte naming the fragment header */
    uint8_t next;          /* IPv6: the fragment header's next header */
    bool more;             /* more fragments follow */
};

/* A parsed view of a frame; nothing is copied. */
struct cx_parsed {
    bool supported;
    bool fragment;         /* an IP fragment: reassembled before compare */
    struct cx_key key;
    uint8_t cmp;
    uint32_t cmp_off;
    uint32_t l3_off;
    uint32_t pay_off, pay_len;
    uint32_t seq, ack;
    bool has_ack;
    struct cx_fraginfo fi;
};

/* ---- byte helpers ------------------------------------------------------ */

static inline void wr32(uint8_t *p, uint32_t v)
{
    p[0] = v >> 24; p[1] = v >> 16; p[2] = v >> 8; p[3] = v;
}

/* 32-bit sequence arithmetic: is a after b, wrapping around? (RFC 1982) */
static inline bool seq_after(uint32_t a, uint32_t b) { return (int32_t)(a - b) > 0; }

/* ---- parsing ----------------------------------------------------------- */

/* The 802.1Q / 802.1ad tags and the EtherType after them: the offset of the
 * network header, or 0 when the frame is cut or carries too many tags.  The
 * VIDs go into the key (PCP and DEI are ignored, as IPv4's TOS is). */
static uint32_t parse_link(const uint8_t *f, uint32_t len, uint32_t vnet_len,
                           struct cx_key *k, uint16_t *ethertype)
{
    uint32_t at = vnet_len + 12;
    uint16_t type = cx_rd16(f + at);
    while (type == CX_ETH_P_8021Q || type == CX_ETH_P_8021AD) {
        if (k->ntags == CX_VLAN_MAX_TAGS || len < at + CX_VLAN_HLEN + 2)
            return 0;
        k->vid[k->ntags++] = cx_rd16(f + at + 2) & CX_VLAN_VID_MASK;
        at += CX_VLAN_HLEN;
        type = cx_rd16(f + at);
    }
    *ethertype = type;
    return at + 2;
}

/* L4 header of a whole datagram at l4 (l4_len bytes by the IP length):
 * ports, compare kind and TCP fields into pp.  False: not compared. */
static bool parse_l4(const uint8_t *f, uint32_t l4_off, uint32_t l4_len, uint8_t proto,
                     struct cx_parsed *pp)
{
    const uint8_t *l4 = f + l4_off;
    switch (proto) {
    case CX_IPPROTO_TCP: {
        if (l4_len < CX_TCP_HLEN_MIN)
            return false;
        uint32_t doff = (l4[12] >> 4) * 4u;
        if (doff < CX_TCP_HLEN_MIN || doff > l4_len)
            return false;
        pp->key.sport = cx_rd16(l4);
        pp->key.dport = cx_rd16(l4 + 2);
        pp->cmp = CMP_TCP;
        pp->seq = cx_rd32(l4 + 4);
        pp->ack = cx_rd32(l4 + 8);
        pp->has_ack = (l4[13] & CX_TCP_FLAG_ACK) != 0;
        pp->pay_off = l4_off + doff;
        /* The IP length, not the frame size: padding is not payload. */
        pp->pay_len = l4_len - doff;
        return true;
    }
    case CX_IPPROTO_UDP:
        if (l4_len < CX_UDP_HLEN)
            return false;
        pp->key.sport = cx_rd16(l4);
        pp->key.dport = cx_rd16(l4 + 2);
        pp->cmp = CMP_L4;
        pp->cmp_off = l4_off;
        return true;
    case CX_IPPROTO_ICMP:
    case CX_IPPROTO_ICMPV6:
        if (l4_len < CX_ICMP_HLEN_MIN)
            return false;
        if (proto == CX_IPPROTO_ICMPV6 && cx_icmpv6_is_link(l4[0]))
            return false;          /* ND and MLD: as ARP, never compared */
        pp->cmp = CMP_L4;
        pp->cmp_off = l4_off;
        return true;
    default:
        /* Protocols with ports where TCP and UDP keep them (DCCP, SCTP,
         * UDP-Lite) are keyed by them too, as QEMU does; the whole frame is
         * compared, so the IP header's TTL / hop limit, TOS / traffic class
         * and flow label count. */
        if ((proto == CX_IPPROTO_DCCP || proto == CX_IPPROTO_SCTP ||
             proto == CX_IPPROTO_UDPLITE) && l4_len >= CX_PORTS_LEN) {
            pp->key.sport = cx_rd16(l4);
            pp->key.dport = cx_rd16(l4 + 2);
        }
        return true;
    }
}

/* IPv4 at ip (room bytes of frame): the address family's part of the key;
 * *l4_off and *l4_len by the total length.  False: not compared. */
static bool parse_ipv4(const uint8_t *f, uint32_t ip_off, uint32_t room, struct cx_parsed *pp,
                       uint32_t *l4_off, uint32_t *l4_len, uint8_t *proto)
{
    const uint8_t *ip = f + ip_off;
    if (room < CX_IP_HLEN_MIN)
        return false;
    uint32_t ihl = (ip[0] & 0x0f) * 4u;
    uint32_t tot = cx_rd16(ip + 2);
    if ((ip[0] >> 4) != 4 || ihl < CX_IP_HLEN_MIN || tot < ihl || tot > room)
        return false;
    pp->key.family = CX_FAMILY_IPV4;
    pp->key.saddr[2] = pp->key.daddr[2] = htonl(0xffff);
    memcpy(&pp->key.saddr[3], ip + 12, 4);
    memcpy(&pp->key.daddr[3], ip + 16, 4);
    *proto = ip[9];
    *l4_off = ip_off + ihl;
    *l4_len = tot - ihl;
    uint16_t frag = cx_rd16(ip + 6);
    if (frag & (CX_IP_FRAG_MF | CX_IP_FRAG_OFFSET_MASK)) {
        pp->fragment = true;
        pp->fi.id = cx_rd16(ip + 4);
        pp->fi.off = (frag & CX_IP_FRAG_OFFSET_MASK) * 8u;
        pp->fi.more = (frag & CX_IP_FRAG_MF) != 0;
        pp->fi.pay_at = *l4_off;
        pp->fi.plen = *l4_len;
        pp->fi.hdr_end = *l4_off;
        if (pp->fi.more && (pp->fi.plen == 0 || pp->fi.plen % 8))
            return false;          /* only the last part may end off 8 */
    }
    return true;
}

/* IPv6 at ip: the fixed header, then the extension headers (hop-by-hop,
 * routing, destination options, fragment; at most CX_IPV6_MAX_EXT, each
 * within the payload length) to the upper-layer header.  False: not
 * compared (cut, jumbogram, too many extension headers). */
static bool parse_ipv6(const uint8_t *f, uint32_t ip_off, uint32_t room, struct cx_parsed *pp,
                       uint32_t *l4_off, uint32_t *l4_len, uint8_t *proto)
{
    const uint8_t *ip = f + ip_off;
    if (room < CX_IPV6_HLEN || (ip[0] >> 4) != 6)
        return false;
    uint32_t plen = cx_rd16(ip + 4);
    if (plen == 0 || plen > room - CX_IPV6_HLEN)   /* 0: a jumbogram (RFC 2675) */
        return false;
    pp->key.family = CX_FAMILY_IPV6;
    memcpy(pp->key.saddr, ip + 8, 16);
    memcpy(pp->key.daddr, ip + 24, 16);

    uint32_t end = ip_off + CX_IPV6_HLEN + plen;   /* the packet's end */
    uint32_t at = ip_off + CX_IPV6_HLEN;
    uint32_t nh_at = ip_off + 6;                   /* the byte naming the next header */
    uint8_t nh = ip[6];
    for (int i = 0;; i++) {
        if (nh != CX_IPPROTO_HOPOPTS && nh != CX_IPPROTO_ROUTING &&
            nh != CX_IPPROTO_DSTOPTS && nh != CX_IPPROTO_FRAGMENT)
            break;                                 /* the upper layer */
        if (i == CX_IPV6_MAX_EXT || end - at < 8)
            return false;
        if (nh == CX_IPPROTO_HOPOPTS && i != 0)    /* only right after the header */
            return false;
        if (nh == CX_IPPROTO_FRAGMENT) {
            if (pp->fragment)                      /* two fragment headers */
                return false;
            uint16_t w = cx_rd16(f + at + 2);
            pp->fi.id = cx_rd32(f + at + 4);
            pp->fi.off = w & CX_IPV6_FRAG_OFFSET_MASK;
            pp->fi.more = (w & CX_IPV6_FRAG_M) != 0;
            pp->fi.hdr_end = at;
            pp->fi.nh_at = nh_at;
            pp->fi.next = f[at];
            pp->fi.pay_at = at + CX_IPV6_FRAG_HLEN;
            pp->fi.plen = end - pp->fi.pay_at;
            pp->fragment = true;
            if (pp->fi.more && (pp->fi.plen == 0 || pp->fi.plen % 8))
                return false;      /* RFC 8200 4.5: a multiple of 8 */
            /* What follows is the fragmentable part: not parsed here (a
             * later fragment has no headers), but in the whole datagram. */
            *proto = f[at];
            *l4_off = pp->fi.pay_at;
            *l4_len = pp->fi.plen;
            return true;
        }
        uint32_t hlen = (f[at + 1] + 1u) * 8u;
        if (hlen > end - at)
            return false;
        nh_at = at;
        nh = f[at];
        at += hlen;
    }
    *proto = nh;
    *l4_off = at;
    *l4_len = end - at;
    return true;
}

/*
 * parse_frame - stands for QEMU's parse_packet_early + fill_connection_key,
 * for IPv4 and IPv6 (QEMU: IPv4 only), untagged, 802.1Q-tagged or QinQ,
 * with every header validated before use.  An IP fragment is marked
 * (pp->fragment) and keyed by its datagram: the caller reassembles it and
 * parses the whole datagram.  Anything it cannot vouch for is
 * "unsupported": passed through from the primary, dropped from the
 * secondary.
 */
static void parse_frame(const uint8_t *f, uint32_t len, uint32_t vnet_len,
                        struct cx_parsed *pp)
{
    /* A copy of a zero struct, not memset: gcc -O2 makes this memset a
     * rep stos, half the cost of the whole parse (tools/parse_cost.c). */
    static const struct cx_parsed zero;
    *pp = zero;
    if (vnet_len > CX_VNET_HDR_MAX || len < vnet_len + CX_ETH_HLEN)
        return;
    uint16_t ethertype;
    uint32_t ip_off = parse_link(f, len, vnet_len, &pp->key, &ethertype);
    if (!ip_off)
        return;

    uint32_t l4_off = 0, l4_len = 0;
    uint8_t proto = 0;
    bool ok;
    if (ethertype == CX_ETH_P_IP)
        ok = parse_ipv4(f, ip_off, len - ip_off, pp, &l4_off, &l4_len, &proto);
    else if (ethertype == CX_ETH_P_IPV6)
        ok = parse_ipv6(f, ip_off, len - ip_off, pp, &l4_off, &l4_len, &proto);
    else
        ok = false;                         /* ARP and other EtherTypes */
    if (!ok)
        return;

    pp->l3_off = ip_off;
    pp->cmp = CMP_WHOLE;
    pp->cmp_off = vnet_len;
    if (pp->fragment) {
        /* Keyed by its datagram (RFC 791 / RFC 8200: addresses, id; IPv4
         * also the protocol): no ports in a later fragment. */
        pp->key.proto = pp->key.family == CX_FAMILY_IPV4 ? proto : 0;
        pp->supported = true;
        return;
    }
    pp->key.proto = proto;
    pp->supported = parse_l4(f, l4_off, l4_len, proto, pp);
}

/* ---- events and output ------------------------------------------------- */

#define NO_EVENT 0xffffffffu

static uint32_t key_hash(const struct cx_key *k);
static bool key_eq(const struct cx_key *a, const struct cx_key *b);

static bool event_is(const struct cx_event *ev, uint8_t kind, uint8_t reason, int side,
                     const struct cx_key *key)
{
    return ev->kind == kind && ev->reason == reason && ev->side == side &&
           ev->has_key == (key != NULL) && (!key || key_eq(&ev->key, key));
}

/*
 * Record an event; returns its index, or NO_EVENT when the array is full.
 * Checkpoint requests and drops are coalesced: the same kind, reason, side
 * and connection again in the same batch only counts up the first record,
 * so a storm costs a hash probe per frame here and one record in Python.
 */
static uint32_t emit(struct cx_engine *e, uint8_t kind, uint8_t reason, int side,
                     const struct cx_key *key)
{
    struct cx_slot *slot = NULL;
    /* (Past half the slots new records just append: probes stay short.) */
    if ((kind == CX_EV_CHECKPOINT || kind == CX_EV_DROP) && e->nevents < e->nslots / 2) {
        struct cx_key zero = {0};
        uint32_t h = key_hash(key ? key : &zero) ^ ((uint32_t)kind << 24 |
                                                    (uint32_t)reason << 8 | (uint32_t)side);
        h *= 0x9e3779b1u;
        for (uint32_t i = h & (e->nslots - 1);; i = (i + 1) & (e->nslots - 1)) {
            slot = &e->slots[i];
            if (slot->gen != e->gen)
                break;                               /* empty: not seen this batch */
            struct cx_event *ev = &e->events[slot->idx];
            if (event_is(ev, kind, reason, side, key)) {
                ev->count++;
                return slot->idx;
            }
        }
    }
    if (e->nevents >= e->cfg.max_events) {
        e->ctr.events_lost++;
        return NO_EVENT;
    }
    struct cx_event *ev = &e->events[e->nevents];
    memset(ev, 0, sizeof(*ev));
    ev->kind = kind;
    ev->reason = reason;
    ev->side = (uint8_t)side;
    ev->count = 1;
    if (key) {
        ev->has_key = 1;
        ev->key = *key;
    }
    if (slot) {
        slot->gen = e->gen;
        slot->idx = (uint32_t)e->nevents;
    }
    return (uint32_t)(e->nevents++);
}

/* Counted, kept sticky in ckpt_wanted (never lost), and an event. */
static uint32_t request_checkpoint(struct cx_engine *e, int reason, const struct cx_key *key)
{
    e->ctr.checkpoints[reason]++;
    e->ckpt_wanted |= 1u << reason;
    return emit(e, CX_EV_CHECKPOINT, (uint8_t)reason, CX_PRIMARY, key);
}

/* Keep a copy of a frame as evidence for checkpoint request `event`, once. */
static void capture(struct cx_engine *e, struct cx_frame *f, int side, int reason,
                    uint32_t event)
{
    if (!e->evidence || !f || f->captured)
        return;
    size_t need = sizeof(struct cx_evidence) + ((f->len + 7u) & ~7u);
    if (e->evidence_len + need > e->cfg.evidence_max_bytes) {
        e->ctr.evidence_lost++;
        return;
    }
    struct cx_evidence *h = (struct cx_evidence *)(e->evidence + e->evidence_len);
    memset(h, 0, need);
    h->event = event;
    h->side = (uint8_t)side;
    h->reason = (uint8_t)reason;
    h->vnet_len = f->vnet_len;
    h->len = f->len;
    h->born_ms = f->born_ms;
    memcpy(h + 1, f->bytes, f->len);
    e->evidence_len += need;
    f->captured = true;
}

static void count_drop_n(struct cx_engine *e, int side, int reason, const struct cx_key *key,
                         uint32_t n)
{
    e->ctr.dropped[side][reason] += n;
    uint32_t ev = emit(e, CX_EV_DROP, (uint8_t)reason, side, key);
    if (ev != NO_EVENT)
        e->events[ev].count += n - 1;     /* coalesced: n drops, one record */
}

static void count_drop(struct cx_engine *e, int side, int reason, const struct cx_key *key)
{
    count_drop_n(e, side, reason, key, 1);
}

/* Make room for n more bytes in the out buffer; false when out of memory. */
static bool out_reserve(struct cx_engine *e, size_t n)
{
    if (e->out_head && e->out_head == e->out_len)
        e->out_head = e->out_len = 0;
    if (e->out_len + n <= e->out_cap)
        return true;
    if (e->out_head) {             /* slide pending bytes to the front */
        memmove(e->out, e->out + e->out_head, e->out_len - e->out_head);
        e->out_len -= e->out_head;
        e->out_head = 0;
        if (e->out_len + n <= e->out_cap)
            return true;
    }
    size_t cap = e->out_cap ? e->out_cap : 1 << 16;
    while (cap < e->out_len + n)
        cap *= 2;
    uint8_t *p = realloc(e->out, cap);
    if (!p)
        return false;
    e->out = p;
    e->out_cap = cap;
    return true;
}

/* The hold-time bucket of held ms (see CX_HOLD_BUCKETS). */
static unsigned hold_bucket(uint64_t held)
{
    if (held == 0)
        return 0;
    if (held == 1)
        return 1;
    unsigned b = 1 + (64 - __builtin_clzll(held - 1));   /* 1 + ceil(log2(held)) */
    return b < CX_HOLD_BUCKETS - 1 ? b : CX_HOLD_BUCKETS - 1;
}

/* release - stands for QEMU's colo_release_primary_pkt/compare_chr_send:
 * append one frame to the out buffer in the outdev's framing.
 *
 * Every primary frame that leaves the engine goes through here, exactly
 * once (matched, unsupported, retransmit, flushed, failover, passthrough:
 * a queued frame through frame_release, which frees it; a reassembled
 * datagram as its fragments, each once), so this is where both released[]
 * and the hold-time histogram count it: hold_hist sums to released[].  A
 * frame that cannot be appended (out of memory) is counted dropped, in
 * neither.  born_ms is when the frame came; "now" is the latest time the
 * engine was given (a checkpoint or failover is given none). */
static void release(struct cx_engine *e, const uint8_t *data, uint32_t len,
                    uint32_t vnet_len, int why, uint64_t born_ms)
{
    size_t hdr = e->cfg.vnet_hdr ? 8 : 4;
    if (!out_reserve(e, hdr + len)) {
        /* Out of memory is the one way a frame can be lost here: count it. */
        count_drop(e, CX_PRIMARY, CX_DROP_NO_MEMORY, NULL);
        return;
    }
    uint8_t *p = e->out + e->out_len;
    wr32(p, len);
    if (e->cfg.vnet_hdr)
        wr32(p + 4, vnet_len);
    memcpy(p + hdr, data, len);
    e->out_len += hdr + len;
    e->ctr.released[why]++;
    e->ctr.released_bytes += len;
    uint64_t held = e->last_now_ms > born_ms ? e->last_now_ms - born_ms : 0;
    e->ctr.hold_hist[hold_bucket(held)]++;
    e->ctr.hold_ms_sum += held;
}

/* ---- queues ------------------------------------------------------------ */

static void queue_unlink(struct cx_queue *q, struct cx_frame *f)
{
    if (f->prev) f->prev->next = f->next; else q->head = f->next;
    if (f->next) f->next->prev = f->prev; else q->tail = f->prev;
    q->count--;
}

/* Insert after `at` (NULL: at the head). */
static void queue_insert_after(struct cx_queue *q, struct cx_frame *at, struct cx_frame *f)
{
    f->prev = at;
    f->next = at ? at->next : q->head;
    if (f->next) f->next->prev = f; else q->tail = f;
    if (at) at->next = f; else q->head = f;
    q->count++;
}

/* TCP queues are kept in sequence order, equal sequences in arrival order.
 * Segments mostly arrive in order, so the walk starts at the tail. */
static void queue_insert(struct cx_queue *q, struct cx_frame *f, bool by_seq)
{
    struct cx_frame *at = q->tail;
    if (by_seq)
        while (at && seq_after(at->seq, f->seq))
            at = at->prev;
    queue_insert_after(q, at, f);
}

/* A queued frame's buffer for len bytes of frame: from the free list when it
 * takes over half a FRAME_SLOT and fits one (f->pooled set), else malloc'd.
 * NULL when out of memory. */
static struct cx_frame *frame_alloc(struct cx_engine *e, uint32_t len)
{
    struct cx_frame *f;
    size_t size = sizeof(*f) + len;
    if (size <= FRAME_SLOT / 2 || size > FRAME_SLOT) {
        f = malloc(size);
        if (f)
            f->pooled = false;
        return f;
    }
    if (e->pool) {
        f = (struct cx_frame *)e->pool;
        e->pool = e->pool->next;
        e->pool_count--;
    } else {
        f = aligned_alloc(64, FRAME_SLOT);     /* data[] on whole cache lines */
        if (!f)
            return NULL;
    }
    f->pooled = true;
    return f;
}

static void frame_free(struct cx_engine *e, struct cx_frame *f)
{
    if (f->pooled && e->pool_count < FRAME_POOL_MAX) {
        struct cx_pool_slot *slot = (struct cx_pool_slot *)f;
        slot->next = e->pool;
        e->pool = slot;
        e->pool_count++;
    } else {
        free(f);
    }
}

static void frags_free(struct cx_frag *fr)
{
    while (fr) {
        struct cx_frag *next = fr->next;
        free(fr);
        fr = next;
    }
}

/* Release the fragments in arrival order; returns how many. */
static uint32_t frags_release(struct cx_engine *e, const struct cx_frag *fr, int why)
{
    uint32_t n = 0;
    for (; fr; fr = fr->next, n++)
        release(e, fr->data, fr->len, fr->vnet_len, why, fr->born_ms);
    return n;
}

/* Take a frame off its queue and free it (a transient one is only marked). */
static void frame_drop(struct cx_engine *e, struct cx_conn *c, int side, struct cx_frame *f)
{
    queue_unlink(&c->q[side], f);
    e->queued[side] -= f->weight;
    c->held[side] -= f->weight;
    frags_free(f->frags);
    if (f->transient)
        f->gone = true;
    else
        frame_free(e, f);
}

/* A primary frame goes out: a reassembled datagram as its fragments. */
static void frame_release(struct cx_engine *e, struct cx_conn *c, struct cx_frame *f, int why)
{
    if (f->frags)
        frags_release(e, f->frags, why);
    else
        release(e, f->bytes, f->len, f->vnet_len, why, f->born_ms);
    c->released += f->weight;
    if (why == CX_REL_MATCHED)
        c->matched += f->weight;
    frame_drop(e, c, CX_PRIMARY, f);
}

/* A secondary frame consumed by a match or skipped (counted by weight). */
static void frame_consume(struct cx_engine *e, struct cx_conn *c, struct cx_frame *s,
                          uint64_t *counter)
{
    *counter += s->weight;
    frame_drop(e, c, CX_SECONDARY, s);
}

/* A connection asks for a checkpoint; p and s are the frames to keep as
 * evidence (either may be NULL). */
static void conn_checkpoint(struct cx_engine *e, struct cx_conn *c, int reason,
                            struct cx_frame *p, struct cx_frame *s)
{
    uint32_t event = request_checkpoint(e, reason, &c->key);
    c->checkpoints++;
    if (reason == CX_CKPT_MISMATCH)
        c->mismatches++;
    capture(e, p, CX_PRIMARY, reason, event);
    capture(e, s, CX_SECONDARY, reason, event);
}

/* Release every held primary frame of a connection, drop its secondary ones. */
static void conn_flush(struct cx_engine *e, struct cx_conn *c, int why, int drop_reason)
{
    while (c->q[CX_PRIMARY].head)
        frame_release(e, c, c->q[CX_PRIMARY].head, why);
    while (c->q[CX_SECONDARY].head) {
        count_drop_n(e, CX_SECONDARY, drop_reason, &c->key, c->q[CX_SECONDARY].head->weight);
        frame_drop(e, c, CX_SECONDARY, c->q[CX_SECONDARY].head);
    }
}

static bool on_passthrough_list(const struct cx_engine *e, const struct cx_key *k)
{
    for (size_t i = 0; i < e->nrules; i++)
        if (cx_rule_match(&e->rules[i], k->saddr, k->daddr, htons(k->sport),
                          htons(k->dport), k->proto))
            return true;
    return false;
}

/* ---- connection table -------------------------------------------------- */

/* Mix the key's 44 bytes into 32 bits, 8 at a time (5 words and the last
 * 4 bytes: every frame is hashed, and 11 rounds of 4 bytes were a tenth of
 * the engine's instructions at 1400 B). */
static uint32_t key_hash(const struct cx_key *k)
{
    uint64_t w[sizeof(*k) / 8 + 1] = { 0 };
    memcpy(w, k, sizeof(*k));
    uint64_t h = 0x9e3779b97f4a7c15ull;
    for (size_t i = 0; i < sizeof(w) / 8; i++) {
        h ^= w[i];
        h *= 0xff51afd7ed558ccdull;
        h ^= h >> 29;
    }
    h ^= h >> 33;
    return (uint32_t)h;
}

static bool key_eq(const struct cx_key *a, const struct cx_key *b)
{
    return memcmp(a, b, sizeof(*a)) == 0;
}

_Static_assert(sizeof(struct cx_key) == 44, "struct cx_key has no implicit padding");

#define LIST_UNLINK(list, c, prev, next) do {                     \
        if ((c)->prev) (c)->prev->next = (c)->next;                \
        else (list)->head = (c)->next;                             \
        if ((c)->next) (c)->next->prev = (c)->prev;                \
        else (list)->tail = (c)->prev;                             \
        (c)->prev = (c)->next = NULL;                              \
    } while (0)

#define LIST_APPEND(list, c, prev, next) do {                     \
        (c)->prev = (list)->tail;                                  \
        (c)->next = NULL;                                          \
        if ((list)->tail) (list)->tail->next = (c);                \
        else (list)->head = (c);                                   \
        (list)->tail = (c);                                        \
    } while (0)

static void conn_set_idle(struct cx_engine *e, struct cx_conn *c, bool idle)
{
    if (c->idle == idle)
        return;
    if (idle)
        LIST_APPEND(&e->idle, c, idle_prev, idle_next);
    else
        LIST_UNLINK(&e->idle, c, idle_prev, idle_next);
    c->idle = idle;
}

static void conn_touch(struct cx_engine *e, struct cx_conn *c)
{
    conn_set_idle(e, c, !c->q[0].count && !c->q[1].count);
}

/* Take an empty connection out of the table and free it. */
static void conn_remove(struct cx_engine *e, struct cx_conn *c)
{
    struct cx_conn **pp = &e->buckets[c->hash & (e->nbuckets - 1)];
    while (*pp != c)
        pp = &(*pp)->hnext;
    *pp = c->hnext;
    conn_set_idle(e, c, false);
    LIST_UNLINK(&e->all, c, all_prev, all_next);
    e->nconns--;
    free(c);
}

static void conn_evict(struct cx_engine *e, struct cx_conn *c)
{
    e->ctr.conns_evicted++;
    emit(e, CX_EV_CONN_EVICT, 0, 0, &c->key);
    conn_remove(e, c);
}

static struct cx_conn *conn_find(const struct cx_engine *e, const struct cx_key *key,
                                 uint32_t h)
{
    for (struct cx_conn *c = e->buckets[h & (e->nbuckets - 1)]; c; c = c->hnext)
        if (c->hash == h && key_eq(&c->key, key))
            return c;
    return NULL;
}

/* Double the buckets once there are as many connections as buckets: the
 * table stays as small as its connections (1000 of them in 8 KiB, in cache
 * while a megabyte of frames streams by, where the 128 KiB for
 * max_connections missed it at every lookup).  Out of memory: the chains
 * grow longer instead. */
static void table_grow(struct cx_engine *e)
{
    if (e->nconns < e->nbuckets || e->nbuckets >= e->max_buckets)
        return;
    uint32_t n = e->nbuckets * 2;
    struct cx_conn **b = calloc(n, sizeof(*b));
    if (!b)
        return;
    for (struct cx_conn *c = e->all.head; c; c = c->all_next) {
        c->hnext = b[c->hash & (n - 1)];
        b[c->hash & (n - 1)] = c;
    }
    free(e->buckets);
    e->buckets = b;
    e->nbuckets = n;
}

/* Would a new connection find a slot (free, or an idle one to evict)? */
static bool conn_room(const struct cx_engine *e)
{
    return e->nconns < e->cfg.max_connections || e->idle.head;
}

/*
 * conn_new - with conn_find, stands for QEMU's connection_get, without its
 * wipe of the whole table when full: the least recently idle connection (no
 * frame queued) makes room, and when every connection holds frames NULL says
 * the table is full.
 */
static struct cx_conn *conn_new(struct cx_engine *e, const struct cx_key *key, uint32_t h,
                                uint8_t cmp, uint64_t now_ms)
{
    if (e->nconns >= e->cfg.max_connections) {
        if (!e->idle.head)
            return NULL;
        conn_evict(e, e->idle.head);
    }
    struct cx_conn *c = calloc(1, sizeof(*c));
    if (!c)
        return NULL;
    c->key = *key;
    c->hash = h;
    c->cmp = cmp;
    c->created_ms = now_ms;
    c->hnext = e->buckets[h & (e->nbuckets - 1)];
    e->buckets[h & (e->nbuckets - 1)] = c;
    LIST_APPEND(&e->all, c, all_prev, all_next);
    e->nconns++;
    table_grow(e);
    e->ctr.conns_created++;
    emit(e, CX_EV_CONN_NEW, 0, 0, key);
    return c;
}

/* ---- comparators -------------------------------------------------------- */

/* UDP, ICMP and other IPv4: equal size, equal bytes from the compare offset on
 * (the L4 header for UDP/ICMP, the frame after the vnet header otherwise).
 * Both frames are read at the primary's offset, as QEMU does. */
static bool dgram_equal(const struct cx_frame *p, const struct cx_frame *s)
{
    return p->len == s->len &&
           memcmp(p->bytes + p->cmp_off, s->bytes + p->cmp_off, p->len - p->cmp_off) == 0;
}

/*
 * compare_dgram - stands for QEMU's colo_compare_packet, oldest primary first
 * (QEMU takes the newest, which reverses a primary that runs ahead).  The
 * oldest primary frame is matched against the secondary queue, oldest first;
 * a match releases it and consumes that secondary frame; no match is a
 * mismatch: both stay queued and a checkpoint is requested.
 */
static void compare_dgram(struct cx_engine *e, struct cx_conn *c)
{
    struct cx_queue *pq = &c->q[CX_PRIMARY], *sq = &c->q[CX_SECONDARY];

    while (pq->head && sq->head) {
        struct cx_frame *p = pq->head, *s = sq->head;
        while (s && !dgram_equal(p, s))
            s = s->next;
        if (!s) {
            e->ctr.mismatches_by_proto[c->cmp == CMP_L4 ? 1 : 2]++;
            conn_checkpoint(e, c, CX_CKPT_MISMATCH, p, sq->tail);  /* newest: each once */
            return;
        }
        frame_release(e, c, p, CX_REL_MATCHED);
        frame_consume(e, c, s, &e->ctr.matched_secondary);
    }
}

/* Is this segment's data all at or below the highest compared sequence? */
static bool tcp_already_compared(const struct cx_conn *c, const struct cx_frame *f)
{
    return c->have_compared && !seq_after(f->seq_end, c->compared_seq);
}

static bool tcp_bytes_equal(const struct cx_frame *p, uint32_t poff,
                            const struct cx_frame *s, uint32_t soff, uint32_t n)
{
    return memcmp(p->bytes + p->pay_off + poff, s->bytes + s->pay_off + soff, n) == 0;
}

static void tcp_set_compared(struct cx_conn *c, uint32_t seq)
{
    c->compared_seq = seq;
    c->have_compared = true;
}

/* Outcome of matching the heads of the two TCP queues. */
enum tcp_step { TCP_BOTH, TCP_PRIMARY, TCP_SECONDARY, TCP_WAIT, TCP_DIFFERENT };

/* Skip the part of a segment at or below the compared sequence: it was
 * compared already (a coalesced retransmit, say) and needs no second look.
 * The caller knows the segment ends above the compared sequence. */
static void tcp_skip_compared(const struct cx_conn *c, struct cx_frame *f)
{
    if (c->have_compared && seq_after(c->compared_seq, f->seq + f->done))
        f->done = c->compared_seq - f->seq;
}

/*
 * tcp_match_heads - stands for QEMU's colo_mark_tcp_pkt (with its inverted
 * memcmp fixed, as upstream did), comparing by sequence number rather than by
 * position.  Identical ranges with identical payload consume both.  Otherwise
 * the two heads are compared from the same sequence number over the shorter
 * remaining part.  When the primary is fully matched it is released only if
 * its ACK is at or below the lower of the two sides' highest ACKs, since the
 * secondary may not yet have seen what the primary acknowledges.  When the
 * heads start at different sequence numbers one side has a gap whose data may
 * still arrive (out of order): wait; a gap that never fills expires.
 */
static enum tcp_step tcp_match_heads(const struct cx_conn *c, struct cx_frame *p,
                                     struct cx_frame *s)
{
    tcp_skip_compared(c, p);
    tcp_skip_compared(c, s);
    if (p->seq == s->seq && p->seq_end == s->seq_end) {
        /* The same segment on both sides: what is left of it is compared,
         * and the ACKs do not matter (they differ with timing alone). */
        uint32_t from = p->done > s->done ? p->done : s->done;
        return tcp_bytes_equal(p, from, s, from, p->pay_len - from) ? TCP_BOTH
                                                                     : TCP_DIFFERENT;
    }
    if (p->seq + p->done != s->seq + s->done)
        return TCP_WAIT;

    uint32_t p_left = p->pay_len - p->done;
    uint32_t s_left = s->pay_len - s->done;
    uint32_t n = p_left < s_left ? p_left : s_left;
    if (!tcp_bytes_equal(p, p->done, s, s->done, n))
        return TCP_DIFFERENT;
    if (s_left < p_left) {
        p->done += n;
        s->done += n;
        return TCP_SECONDARY;
    }
    bool acked = c->have_ack[0] && c->have_ack[1] &&
                 !seq_after(p->ack, seq_after(c->max_ack[0], c->max_ack[1])
                                        ? c->max_ack[1] : c->max_ack[0]);
    if (!acked)
        return TCP_DIFFERENT;
    p->done += n;
    s->done += n;
    return TCP_PRIMARY;
}

/*
 * compare_tcp - stands for QEMU's colo_compare_tcp, as a loop over the heads
 * of both queues while both hold a segment.  Segments without payload and
 * data at or below the compared sequence (retransmits) are released (primary)
 * or consumed (secondary) without compare; then the heads are matched.
 */
static void compare_tcp(struct cx_engine *e, struct cx_conn *c)
{
    struct cx_queue *pq = &c->q[CX_PRIMARY], *sq = &c->q[CX_SECONDARY];

    while (pq->head && sq->head) {
        struct cx_frame *p = pq->head, *s = sq->head;
        bool p_gone = false;

        if (p->pay_len == 0) {
            frame_release(e, c, p, CX_REL_NO_PAYLOAD);
            p_gone = true;
        } else if (tcp_already_compared(c, p)) {
            frame_release(e, c, p, CX_REL_RETRANSMIT);
            p_gone = true;
        }
        if (s->pay_len == 0 || tcp_already_compared(c, s)) {
            frame_consume(e, c, s, &e->ctr.skipped_secondary);
            continue;
        }
        if (p_gone)
            continue;

        switch (tcp_match_heads(c, p, s)) {
        case TCP_BOTH:
            tcp_set_compared(c, p->seq_end);
            frame_release(e, c, p, CX_REL_MATCHED);
            frame_consume(e, c, s, &e->ctr.matched_secondary);
            break;
        case TCP_PRIMARY:
            tcp_set_compared(c, p->seq_end);
            frame_release(e, c, p, CX_REL_MATCHED);
            if (s->done == s->pay_len)     /* nothing left of it to compare */
                frame_consume(e, c, s, &e->ctr.matched_secondary);
            break;
        case TCP_SECONDARY:
            tcp_set_compared(c, s->seq_end);
            frame_consume(e, c, s, &e->ctr.matched_secondary);
            break;
        case TCP_WAIT:
            return;
        case TCP_DIFFERENT:
            e->ctr.mismatches_by_proto[0]++;
            conn_checkpoint(e, c, CX_CKPT_MISMATCH, p, s);
            return;
        }
    }
}

static void compare(struct cx_engine *e, struct cx_conn *c)
{
    if (c->cmp == CMP_TCP)
        compare_tcp(e, c);
    else
        compare_dgram(e, c);
}

/* ---- feeding ------------------------------------------------------------ */

enum feed_step { FEED_TAKEN, FEED_HELD_BACK };

/* What is fed: one frame, or a reassembled datagram standing for the
 * fragments it was made of (released in its place, counted by weight). */
struct cx_input {
    const uint8_t *data;
    uint32_t len, vnet_len;
    uint32_t weight;
    struct cx_frag *frags;         /* owned; taken by a queued frame */
};

/* Would this frame run its side ahead of the other?  (Flow control; see the
 * header.)  c is the frame's connection, NULL when it has none yet. */
static bool runs_ahead(const struct cx_engine *e, const struct cx_conn *c, int side)
{
    if (!c)
        return !conn_room(e);
    return c->q[side].count >= e->hwm && !c->q[!side].count;
}

/* Not compared (unsupported, passthrough): the primary's frame goes on (a
 * datagram's fragments, in the order they came), the secondary's is dropped. */
static void input_uncompared(struct cx_engine *e, int side, const struct cx_input *in,
                             int why, int drop_reason, const struct cx_key *key)
{
    if (side != CX_PRIMARY)
        count_drop_n(e, side, drop_reason, key, in->weight);
    else if (in->frags)
        frags_release(e, in->frags, why);
    else
        release(e, in->data, in->len, in->vnet_len, why, e->last_now_ms);  /* held 0 */
}

static void count_in(struct cx_engine *e, int side, uint32_t len)
{
    e->ctr.frames_in[side]++;
    e->ctr.bytes_in[side] += len;
}

/* A transient frame still queued after its compare: copy it (bytes and all)
 * to the heap, in its place in the queue.  False when out of memory: it is
 * taken off the queue instead. */
static bool frame_keep(struct cx_engine *e, struct cx_conn *c, int side, struct cx_frame *t)
{
    struct cx_queue *q = &c->q[side];
    struct cx_frame *f = frame_alloc(e, t->len);
    if (!f) {
        t->frags = NULL;           /* the caller still owns them */
        frame_drop(e, c, side, t);
        return false;
    }
    bool pooled = f->pooled;
    *f = *t;
    memcpy(f->data, t->bytes, t->len);
    f->bytes = f->data;
    f->transient = false;
    f->pooled = pooled;
    if (f->prev) f->prev->next = f; else q->head = f;
    if (f->next) f->next->prev = f; else q->tail = f;
    return true;
}

/*
 * Queue a frame on its connection and compare; the queue limit decides.
 *
 * The frame is queued as it is, in the caller's buffer (transient), and
 * copied only if the compare leaves it queued: the frame that completes a
 * pair (the follower's, in steady state) is compared and released or
 * consumed straight from the input, never copied.  Nothing else changes:
 * the compare sees the same queues either way.
 */
static void feed_queue(struct cx_engine *e, struct cx_conn *c, int side, struct cx_input *in,
                       const struct cx_parsed *pp, uint64_t now_ms)
{
    c->last_ms = now_ms;
    struct cx_queue *q = &c->q[side];
    if (q->count >= e->cfg.max_queue_size) {
        count_drop_n(e, side, CX_DROP_QUEUE_FULL, &pp->key, in->weight);
        return;
    }
    struct cx_frame tf;
    struct cx_frame *f = &tf;
    f->transient = true;
    f->gone = false;
    f->bytes = in->data;
    f->born_ms = now_ms;
    f->len = in->len;
    f->vnet_len = in->vnet_len;
    f->cmp_off = pp->cmp_off;
    f->pay_off = pp->pay_off;
    f->pay_len = pp->pay_len;
    f->seq = pp->seq;
    f->seq_end = pp->seq + pp->pay_len;
    f->ack = pp->ack;
    f->has_ack = pp->has_ack;
    f->done = 0;
    f->captured = false;
    f->weight = in->weight;
    f->frags = in->frags;

    if (c->cmp == CMP_TCP && pp->has_ack &&
        (!c->have_ack[side] || seq_after(pp->ack, c->max_ack[side]))) {
        c->max_ack[side] = pp->ack;
        c->have_ack[side] = true;
    }
    queue_insert(q, f, c->cmp == CMP_TCP);
    e->queued[side] += f->weight;
    c->held[side] += f->weight;
    compare(e, c);
    if (tf.gone) {
        in->frags = NULL;          /* released (primary) or freed with it */
    } else if (frame_keep(e, c, side, &tf)) {
        in->frags = NULL;          /* the queued frame's now */
    } else {
        count_drop_n(e, side, CX_DROP_NO_MEMORY, &pp->key, in->weight);
        conn_touch(e, c);          /* a new connection stays evictable */
        return;
    }
    conn_touch(e, c);
    /* Still full after comparing: only a checkpoint can make room. */
    if (q->count >= e->cfg.max_queue_size)
        conn_checkpoint(e, c, CX_CKPT_QUEUE_FULL, NULL, NULL);
}

/* A parsed, supported, whole frame or datagram: passthrough (the
 * engine's list), flow control, its connection. */
static enum feed_step feed_parsed(struct cx_engine *e, int side, struct cx_input *in,
                                  const struct cx_parsed *pp, uint64_t now_ms, int flags)
{
    uint32_t h = key_hash(&pp->key);
    struct cx_conn *c = conn_find(e, &pp->key, h);
    if (!c && e->nrules && on_passthrough_list(e, &pp->key)) {
        /* The flow is not compared; no connection is taken. */
        input_uncompared(e, side, in, CX_REL_PASSTHROUGH, CX_DROP_PASSTHROUGH, &pp->key);
        return FEED_TAKEN;
    }
    if (!(flags & CX_FEED_FORCE) && runs_ahead(e, c, side)) {
        e->ctr.held_back[side]++;
        return FEED_HELD_BACK;
    }
    if (!c)
        c = conn_new(e, &pp->key, h, pp->cmp, now_ms);
    if (!c) {
        count_drop_n(e, side, CX_DROP_TABLE_FULL, &pp->key, in->weight);
        request_checkpoint(e, CX_CKPT_TABLE_FULL, &pp->key);
        return FEED_TAKEN;
    }
    feed_queue(e, c, side, in, pp, now_ms);
    return FEED_TAKEN;
}

/* ---- IP fragment reassembly ---------------------------------------------- */

/*
 *   ra.buckets: (side, addresses, [IPv4: proto], tags, id) ──▶ reasm ──▶ ...
 *   ra.head:    reasm ⇄ reasm ⇄ ...        (age order: the timeout scan)
 *   reasm: frag ─▶ frag ─▶ ...             (arrival order, as released)
 *
 * Each side reassembles its own datagrams.  Once every byte is there the
 * datagram is put together (the first fragment's headers, fragment fields
 * cleared) and fed as one frame that stands for its fragments: compared by
 * the rules of its protocol, and when the primary's is released, its
 * fragments go out, in the order they came.  Bounded: fragments per
 * datagram, datagram size, datagrams per source address, datagrams and
 * bytes per side, and a timeout; overlapping fragments abandon the datagram
 * (RFC 5722; the same for IPv4, as Linux does).
 */

static uint32_t reasm_hash(const struct cx_key *k, uint32_t id, int side)
{
    uint32_t h = key_hash(k) ^ (id * 0x9e3779b1u) ^ (uint32_t)side;
    h ^= h >> 16;
    h *= 0x85ebca6bu;
    h ^= h >> 13;
    return h;
}

static struct cx_reasm *reasm_find(const struct cx_engine *e, const struct cx_key *k,
                                   uint32_t id, int side, uint32_t h)
{
    for (struct cx_reasm *r = e->ra.buckets[h & (REASM_BUCKETS - 1)]; r; r = r->hnext)
        if (r->hash == h && r->id == id && r->side == side && key_eq(&r->key, k))
            return r;
    return NULL;
}

/* Let go of the fragments a datagram holds (the caller has accounted them). */
static void reasm_clear(struct cx_engine *e, struct cx_reasm *r)
{
    frags_free(r->head);
    r->head = r->tail = NULL;
    e->ctr.frag_held[r->side] -= r->nfrags;
    e->ra.bytes[r->side] -= r->bytes;
    r->nfrags = r->bytes = r->have = 0;
}

static void reasm_remove(struct cx_engine *e, struct cx_reasm *r)
{
    struct cx_reasm **pp = &e->ra.buckets[r->hash & (REASM_BUCKETS - 1)];
    while (*pp != r)
        pp = &(*pp)->hnext;
    *pp = r->hnext;
    LIST_UNLINK(&e->ra, r, prev, next);
    e->ra.count[r->side]--;
    reasm_clear(e, r);
    free(r);
}

/* Abandon a datagram: what it holds and what comes of it later is dropped. */
static void reasm_discard(struct cx_engine *e, struct cx_reasm *r, int drop_reason,
                          int outcome)
{
    if (r->nfrags)
        count_drop_n(e, r->side, drop_reason, &r->key, r->nfrags);
    reasm_clear(e, r);
    e->ctr.frag[r->side][outcome]++;
    r->state = RA_DISCARD;
    r->discard_reason = (uint8_t)drop_reason;
}

/* Datagrams one side is reassembling from this source address. */
static uint32_t reasm_per_host(const struct cx_engine *e, int side, const struct cx_key *k)
{
    uint32_t n = 0;
    for (const struct cx_reasm *r = e->ra.head; r; r = r->next)
        n += r->side == side && !memcmp(r->key.saddr, k->saddr, sizeof(k->saddr));
    return n;
}

static struct cx_reasm *reasm_new(struct cx_engine *e, int side, const struct cx_parsed *pp,
                                  uint32_t h, uint64_t now_ms)
{
    if (e->ra.count[side] >= e->cfg.reasm_max_datagrams ||
        reasm_per_host(e, side, &pp->key) >= e->cfg.reasm_max_per_host)
        return NULL;
    struct cx_reasm *r = calloc(1, sizeof(*r));
    if (!r)
        return NULL;
    r->key = pp->key;
    r->id = pp->fi.id;
    r->hash = h;
    r->side = (uint8_t)side;
    r->born_ms = now_ms;
    r->hnext = e->ra.buckets[h & (REASM_BUCKETS - 1)];
    e->ra.buckets[h & (REASM_BUCKETS - 1)] = r;
    LIST_APPEND(&e->ra, r, prev, next);
    e->ra.count[side]++;
    return r;
}

/* Does the part [off, off + plen) overlap one held, or contradict the end? */
static bool reasm_conflicts(const struct cx_reasm *r, const struct cx_fraginfo *fi)
{
    uint32_t end = fi->off + fi->plen;
    if (!fi->more && (r->have_last || end < r->have))
        return true;                   /* a second end, or an end before data */
    if (r->have_last && end > r->total)
        return true;                   /* data past the end */
    for (const struct cx_frag *fr = r->head; fr; fr = fr->next) {
        if (!fi->more && fr->off + fr->plen > end)
            return true;               /* the end comes before held data */
        if (fi->off < fr->off + fr->plen && fr->off < end)
            return true;               /* overlap (an exact duplicate too) */
    }
    return false;
}

/* Put the datagram together: the first fragment's headers with the fragment
 * fields cleared (IPv4: offset, MF and id zero; IPv6: the fragment header
 * taken out), then every part at its offset.  NULL: too big, or no memory. */
static uint8_t *reasm_build(const struct cx_reasm *r, uint32_t *len_out,
                            uint32_t *vnet_out)
{
    const struct cx_frag *first = r->head;
    while (first->off != 0)
        first = first->next;           /* there is one: every byte is here */
    bool v6 = r->key.family == CX_FAMILY_IPV6;
    uint32_t hdr = first->hdr_end;     /* headers kept: up to the payload or
                                          the fragment header */
    uint32_t l3 = first->l3_off;
    uint32_t ip_len = v6 ? hdr - l3 - CX_IPV6_HLEN + r->total : hdr - l3 + r->total;
    if (ip_len > 0xffff || hdr + r->total > CX_NET_BUFSIZE)
        return NULL;
    uint8_t *d = malloc(hdr + r->total);
    if (!d)
        return NULL;
    memcpy(d, first->data, hdr);
    for (const struct cx_frag *fr = r->head; fr; fr = fr->next)
        memcpy(d + hdr + fr->off, fr->data + fr->pay_at, fr->plen);
    if (v6) {
        d[first->nh_at] = first->nh;
        d[l3 + 4] = (uint8_t)(ip_len >> 8);
        d[l3 + 5] = (uint8_t)ip_len;
    } else {
        d[l3 + 2] = (uint8_t)(ip_len >> 8);
        d[l3 + 3] = (uint8_t)ip_len;
        memset(d + l3 + 4, 0, 4);      /* id, flags, offset: never compared */
        memset(d + l3 + 10, 0, 2);     /* nor the checksum, stale and id-bound */
    }
    *len_out = hdr + r->total;
    *vnet_out = first->vnet_len;
    return d;
}

/* Every byte is here: feed the datagram as one frame standing for its
 * fragments (flow control does not apply: its fragments are taken). */
static void reasm_complete(struct cx_engine *e, struct cx_reasm *r, uint64_t now_ms)
{
    int side = r->side;
    uint32_t len, vnet_len;
    uint8_t *d = reasm_build(r, &len, &vnet_len);
    if (!d) {
        reasm_discard(e, r, CX_DROP_FRAG_LIMIT, CX_FRAG_OVER_LIMIT);
        reasm_remove(e, r);
        return;
    }
    struct cx_input in = { .data = d, .len = len, .vnet_len = vnet_len,
                           .weight = r->nfrags, .frags = r->head };
    struct cx_key key = r->key;
    e->ctr.frag_held[side] -= r->nfrags;   /* now the datagram's */
    e->ra.bytes[side] -= r->bytes;
    r->head = r->tail = NULL;
    r->nfrags = r->bytes = r->have = 0;
    reasm_remove(e, r);
    e->ctr.frag[side][CX_FRAG_REASSEMBLED]++;

    struct cx_parsed pp;
    parse_frame(d, len, vnet_len, &pp);
    if (!pp.supported || pp.fragment)
        input_uncompared(e, side, &in, CX_REL_UNSUPPORTED, CX_DROP_UNSUPPORTED, &key);
    else
        feed_parsed(e, side, &in, &pp, now_ms, CX_FEED_FORCE);
    frags_free(in.frags);
    free(d);
}

/* One fragment (counted in): held until its datagram is whole. */
static void reasm_feed(struct cx_engine *e, int side, const uint8_t *data, uint32_t len,
                       uint32_t vnet_len, const struct cx_parsed *pp, uint64_t now_ms)
{
    const struct cx_fraginfo *fi = &pp->fi;
    uint32_t h = reasm_hash(&pp->key, fi->id, side);
    struct cx_reasm *r = reasm_find(e, &pp->key, fi->id, side, h);
    if (!r && !(r = reasm_new(e, side, pp, h, now_ms))) {
        count_drop(e, side, CX_DROP_FRAG_LIMIT, &pp->key);
        e->ctr.frag[side][CX_FRAG_OVER_LIMIT]++;
        return;
    }
    if (r->state == RA_PASS) {         /* its datagram was flushed: the rest too */
        struct cx_input in = { .data = data, .len = len, .vnet_len = vnet_len, .weight = 1 };
        input_uncompared(e, side, &in, CX_REL_FLUSHED, CX_DROP_FLUSHED, &pp->key);
        return;
    }
    if (r->state == RA_DISCARD) {
        count_drop(e, side, r->discard_reason, &pp->key);
        return;
    }
    if (reasm_conflicts(r, fi)) {
        count_drop(e, side, CX_DROP_FRAG_OVERLAP, &pp->key);
        reasm_discard(e, r, CX_DROP_FRAG_OVERLAP, CX_FRAG_OVERLAP);
        return;
    }
    if (r->nfrags >= CX_REASM_MAX_FRAGS || fi->off + fi->plen > 0xffff ||
        e->ra.bytes[side] + len > e->cfg.reasm_max_bytes) {
        count_drop(e, side, CX_DROP_FRAG_LIMIT, &pp->key);
        reasm_discard(e, r, CX_DROP_FRAG_LIMIT, CX_FRAG_OVER_LIMIT);
        return;
    }
    struct cx_frag *fr = malloc(sizeof(*fr) + len);
    if (!fr) {
        count_drop(e, side, CX_DROP_NO_MEMORY, &pp->key);
        return;
    }
    fr->next = NULL;
    fr->born_ms = now_ms;
    fr->off = fi->off;
    fr->plen = fi->plen;
    fr->pay_at = fi->pay_at;
    fr->len = len;
    fr->vnet_len = vnet_len;
    fr->l3_off = pp->l3_off;
    fr->hdr_end = fi->hdr_end;
    fr->nh_at = fi->nh_at;
    fr->nh = fi->next;
    memcpy(fr->data, data, len);
    if (r->tail) r->tail->next = fr; else r->head = fr;
    r->tail = fr;
    r->nfrags++;
    r->bytes += len;
    r->have += fi->plen;
    e->ra.bytes[side] += len;
    e->ctr.frag_held[side]++;
    if (!fi->more) {
        r->have_last = true;
        r->total = fi->off + fi->plen;
    }
    if (r->have_last && r->have == r->total)
        reasm_complete(e, r, now_ms);
}

/* Datagrams older than reasm_timeout_ms: what they hold is dropped. */
static void reasm_expire(struct cx_engine *e, uint64_t now_ms)
{
    while (e->ra.head && now_ms > e->ra.head->born_ms &&
           now_ms - e->ra.head->born_ms > e->cfg.reasm_timeout_ms) {
        struct cx_reasm *r = e->ra.head;
        if (r->state == RA_COLLECT)
            reasm_discard(e, r, CX_DROP_FRAG_TIMEOUT, CX_FRAG_TIMED_OUT);
        reasm_remove(e, r);
    }
}

/* A checkpoint or failover: datagrams being collected release (primary) or
 * drop (secondary) what they hold, and let the rest of them through. */
static void reasm_flush(struct cx_engine *e, int why, int drop_reason)
{
    for (struct cx_reasm *r = e->ra.head; r; r = r->next) {
        if (r->state != RA_COLLECT)
            continue;
        struct cx_input in = { .weight = r->nfrags, .frags = r->head };
        if (r->nfrags)
            input_uncompared(e, r->side, &in, why, drop_reason, &r->key);
        reasm_clear(e, r);
        r->state = RA_PASS;
    }
}

/* One frame: taken (compared, released, queued or counted dropped), or held
 * back by flow control (nothing counted: the caller keeps it unread). */
static enum feed_step feed_one(struct cx_engine *e, int side, const uint8_t *data,
                               uint32_t len, uint32_t vnet_len, uint64_t now_ms, int flags)
{
    if (len == 0 || len > CX_NET_BUFSIZE) {
        count_in(e, side, len);
        count_drop(e, side, len ? CX_DROP_OVERSIZE : CX_DROP_EMPTY, NULL);
        return FEED_TAKEN;
    }
    if (e->failed_over) {
        count_in(e, side, len);
        if (side == CX_PRIMARY)
            release(e, data, len, vnet_len, CX_REL_FAILOVER, now_ms);   /* held 0 */
        else
            count_drop(e, side, CX_DROP_FAILOVER, NULL);
        return FEED_TAKEN;
    }

    struct cx_parsed pp;
    struct cx_input in = { .data = data, .len = len, .vnet_len = vnet_len, .weight = 1 };
    parse_frame(data, len, vnet_len, &pp);
    if (!pp.supported) {
        count_in(e, side, len);
        input_uncompared(e, side, &in, CX_REL_UNSUPPORTED, CX_DROP_UNSUPPORTED, NULL);
        return FEED_TAKEN;
    }
    if (pp.fragment) {
        count_in(e, side, len);
        reasm_feed(e, side, data, len, vnet_len, &pp, now_ms);
        return FEED_TAKEN;
    }
    if (feed_parsed(e, side, &in, &pp, now_ms, flags) == FEED_HELD_BACK)
        return FEED_HELD_BACK;
    count_in(e, side, len);
    return FEED_TAKEN;
}

void cx_engine__feed(struct cx_engine *e, int side, const uint8_t *data,
                     uint32_t len, uint32_t vnet_len, uint64_t now_ms)
{
    e->last_now_ms = now_ms;
    feed_one(e, side ? CX_SECONDARY : CX_PRIMARY, data, len, vnet_len, now_ms, CX_FEED_FORCE);
}

size_t cx_engine__feed_burst(struct cx_engine *e, int side, const uint8_t *const *frames,
                             const uint32_t *lens, size_t n, uint64_t now_ms, int flags)
{
    e->last_now_ms = now_ms;
    side = side ? CX_SECONDARY : CX_PRIMARY;
    for (size_t i = 0; i < n; i++)
        if (feed_one(e, side, frames[i], lens[i], 0, now_ms, flags) == FEED_HELD_BACK)
            return i;
    return n;
}

int cx_engine__feed_stream(struct cx_engine *e, int side, const uint8_t *buf,
                           size_t len, uint64_t now_ms, int flags, size_t *consumed)
{
    size_t hdr = e->cfg.vnet_hdr ? 8 : 4;
    size_t pos = 0;
    int rc = CX_FEED_DONE;

    e->last_now_ms = now_ms;
    side = side ? CX_SECONDARY : CX_PRIMARY;
    if (e->skip[side]) {                  /* the body of an oversize record */
        size_t n = len < e->skip[side] ? len : (size_t)e->skip[side];
        e->skip[side] -= n;
        pos = n;
    }
    while (len - pos >= hdr) {
        uint32_t flen = cx_rd32(buf + pos);
        if (flen > CX_FRAMING_LOST_LEN) {
            count_in(e, side, flen);
            count_drop(e, side, CX_DROP_OVERSIZE, NULL);
            *consumed = pos;
            return -EPROTO;
        }
        if (flen > CX_NET_BUFSIZE) {
            /* Counted now; its body is skipped as it comes, the frames after
             * it are read on. */
            count_in(e, side, flen);
            count_drop(e, side, CX_DROP_OVERSIZE, NULL);
            size_t here = len - pos - hdr < flen ? len - pos - hdr : flen;
            e->skip[side] = flen - here;
            pos += hdr + here;
            continue;
        }
        if (len - pos - hdr < flen)
            break;
        uint32_t vnet_len = e->cfg.vnet_hdr ? cx_rd32(buf + pos + 4) : 0;
        if (feed_one(e, side, buf + pos + hdr, flen, vnet_len, now_ms, flags) == FEED_HELD_BACK) {
            rc = CX_FEED_BLOCKED;
            break;
        }
        pos += hdr + flen;
    }
    *consumed = pos;
    return rc;
}

void cx_engine__stream_reset(struct cx_engine *e, int side)
{
    e->skip[side ? CX_SECONDARY : CX_PRIMARY] = 0;
}

uint32_t cx_engine__checkpoint_wanted(const struct cx_engine *e) { return e->ckpt_wanted; }

/* ---- time, checkpoint, failover ---------------------------------------- */

/* The first frame of a queue older than compare_timeout, or NULL. */
static struct cx_frame *queue_expired(const struct cx_engine *e, const struct cx_queue *q,
                                      uint64_t now)
{
    for (struct cx_frame *f = q->head; f; f = f->next)
        if (now > f->born_ms && now - f->born_ms > e->cfg.compare_timeout_ms)
            return f;
    return NULL;
}

/*
 * cx_engine__tick - stands for QEMU's check_old_packet_regular: every
 * expired_scan_cycle, the first connection (in creation order) holding a
 * frame older than compare_timeout on either side requests one checkpoint.
 */
uint64_t cx_engine__tick(struct cx_engine *e, uint64_t now_ms)
{
    e->last_now_ms = now_ms;
    if (!e->scan_armed) {
        e->scan_armed = true;
        e->next_scan_ms = now_ms + e->cfg.expired_scan_cycle_ms;
        return e->next_scan_ms;
    }
    if (now_ms < e->next_scan_ms)
        return e->next_scan_ms;
    e->next_scan_ms = now_ms + e->cfg.expired_scan_cycle_ms;
    reasm_expire(e, now_ms);
    if (e->failed_over)
        return e->next_scan_ms;
    for (struct cx_conn *c = e->all.head; c; c = c->all_next) {
        if (c->idle)
            continue;
        struct cx_frame *p = queue_expired(e, &c->q[CX_PRIMARY], now_ms);
        struct cx_frame *s = queue_expired(e, &c->q[CX_SECONDARY], now_ms);
        if (p || s) {
            conn_checkpoint(e, c, CX_CKPT_TIMEOUT, p, s);
            break;
        }
    }
    return e->next_scan_ms;
}

/* Stands for QEMU's colo_flush_packets over every connection, primary frames
 * released oldest (TCP: lowest sequence) first. */
static void flush_all(struct cx_engine *e, int why, int drop_reason)
{
    for (struct cx_conn *c = e->all.head; c; c = c->all_next) {
        conn_flush(e, c, why, drop_reason);
        conn_touch(e, c);
    }
    /* Then the datagrams not yet whole (their fragments mostly came after
     * the ones queued), in the order they were begun. */
    reasm_flush(e, why, drop_reason);
}

int cx_engine__set_passthrough(struct cx_engine *e, const struct cx_rule *rules, size_t n)
{
    struct cx_rule *copy = NULL;
    if (n > CX_MAX_RULES)
        return -E2BIG;
    if (n) {
        copy = malloc(n * sizeof(*copy));
        if (!copy)
            return -ENOMEM;
        memcpy(copy, rules, n * sizeof(*copy));
    }
    free(e->rules);
    e->rules = copy;
    e->nrules = n;
    /* Passthrough flows have no connection: the ones now covered release
     * what they hold (primary) and drop the rest (secondary), then go. */
    struct cx_conn *next;
    for (struct cx_conn *c = e->all.head; c; c = next) {
        next = c->all_next;
        if (!on_passthrough_list(e, &c->key))
            continue;
        conn_flush(e, c, CX_REL_PASSTHROUGH, CX_DROP_PASSTHROUGH);
        conn_evict(e, c);
    }
    return 0;
}

static void conn_info(const struct cx_conn *c, struct cx_conn_info *ci)
{
    memset(ci, 0, sizeof(*ci));
    ci->key = c->key;
    ci->queued[0] = c->held[0];
    ci->queued[1] = c->held[1];
    ci->created_ms = c->created_ms;
    ci->last_ms = c->last_ms;
    ci->matched = c->matched;
    ci->released = c->released;
    ci->mismatches = c->mismatches;
    ci->checkpoints = c->checkpoints;
}

size_t cx_engine__conn_snapshot(struct cx_engine *e, struct cx_conn_info *out, size_t max)
{
    size_t i = 0;
    for (struct cx_conn *c = e->all.head; c && i < max; c = c->all_next, i++)
        conn_info(c, &out[i]);
    return e->nconns;
}

/* Is a less worth a look than b?  Fewer frames held, then seen longer ago. */
static bool conn_less(const struct cx_conn *a, const struct cx_conn *b)
{
    uint64_t qa = (uint64_t)a->q[0].count + a->q[1].count;
    uint64_t qb = (uint64_t)b->q[0].count + b->q[1].count;
    return qa != qb ? qa < qb : a->last_ms < b->last_ms;
}

/* Restore the min-heap (least worth a look at the root) below i. */
static void heap_down(struct cx_conn **h, size_t n, size_t i)
{
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < n && conn_less(h[l], h[m]))
            m = l;
        if (r < n && conn_less(h[r], h[m]))
            m = r;
        if (m == i)
            return;
        struct cx_conn *t = h[i];
        h[i] = h[m];
        h[m] = t;
        i = m;
    }
}

size_t cx_engine__conn_top(struct cx_engine *e, struct cx_conn_info *out, size_t max)
{
    if (e->nconns <= max)
        return cx_engine__conn_snapshot(e, out, max);
    struct cx_conn **h = malloc(max * sizeof(*h));
    if (!h)
        return 0;
    size_t n = 0;
    for (struct cx_conn *c = e->all.head; c; c = c->all_next) {
        if (n < max) {
            h[n++] = c;
            if (n == max)
                for (size_t i = max / 2; i-- > 0;)
                    heap_down(h, n, i);
        } else if (conn_less(h[0], c)) {
            h[0] = c;
            heap_down(h, n, 0);
        }
    }
    /* Pop the least first, filling from the back: most worth a look first. */
    for (size_t k = n; k > 0; k--) {
        conn_info(h[0], &out[k - 1]);
        h[0] = h[k - 1];
        heap_down(h, k - 1, 0);
    }
    free(h);
    return n;
}

size_t cx_engine__evidence(struct cx_engine *e, const uint8_t **data)
{
    *data = e->evidence;
    return e->evidence_len;
}

void cx_engine__set_time(struct cx_engine *e, uint64_t now_ms)
{
    e->last_now_ms = now_ms;
}

void cx_engine__checkpoint(struct cx_engine *e)
{
    flush_all(e, CX_REL_FLUSHED, CX_DROP_FLUSHED);
    e->ckpt_wanted = 0;
}

void cx_engine__failover(struct cx_engine *e)
{
    flush_all(e, CX_REL_FAILOVER, CX_DROP_FAILOVER);
    e->ckpt_wanted = 0;
    e->failed_over = true;
}

void cx_engine__note_drop(struct cx_engine *e, int side, int reason)
{
    if (reason <= 0 || reason >= CX_DROP__COUNT)
        return;
    e->ctr.frames_in[side ? 1 : 0]++;
    count_drop(e, side ? 1 : 0, reason, NULL);
}

/* ---- accessors and lifecycle ------------------------------------------ */

size_t cx_engine__out_peek(struct cx_engine *e, const uint8_t **data)
{
    *data = e->out ? e->out + e->out_head : NULL;   /* nothing released yet: NULL */
    return e->out_len - e->out_head;
}

void cx_engine__out_consume(struct cx_engine *e, size_t n)
{
    size_t hdr = e->cfg.vnet_hdr ? 8 : 4;
    size_t pending = e->out_len - e->out_head;
    if (n > pending)
        n = pending;
    while (n) {                    /* walk record boundaries as bytes leave */
        if (!e->out_rec_left)
            e->out_rec_left = hdr + cx_rd32(e->out + e->out_head);
        size_t take = n < e->out_rec_left ? n : e->out_rec_left;
        e->out_head += take;
        e->out_rec_left -= take;
        n -= take;
    }
    if (e->out_head == e->out_len)
        e->out_head = e->out_len = 0;
}

int cx_engine__out_abandon_partial(struct cx_engine *e)
{
    if (!e->out_rec_left)
        return 0;
    e->out_head += e->out_rec_left;
    e->out_rec_left = 0;
    if (e->out_head == e->out_len)
        e->out_head = e->out_len = 0;
    e->ctr.outdev_cut++;
    return 1;
}

void cx_engine__out_skip_record(struct cx_engine *e)
{
    size_t hdr = e->cfg.vnet_hdr ? 8 : 4;
    if (e->out_head == e->out_len || e->out_rec_left)
        return;                    /* empty, or in the middle of a record */
    cx_engine__out_consume(e, hdr + cx_rd32(e->out + e->out_head));
    e->ctr.outdev_cut++;
}

void cx_engine__out_note_unsent(struct cx_engine *e, uint64_t n)
{
    e->ctr.outdev_unsent += n;
}

uint32_t cx_engine__out_header_len(const struct cx_engine *e)
{
    return e->cfg.vnet_hdr ? 8 : 4;
}

size_t cx_engine__events(struct cx_engine *e, const struct cx_event **events)
{
    *events = e->events;
    return e->nevents;
}

void cx_engine__events_clear(struct cx_engine *e)
{
    e->nevents = 0;
    if (++e->gen == 0) {           /* wrapped: every slot could look current */
        memset(e->slots, 0, (size_t)e->nslots * sizeof(*e->slots));
        e->gen = 1;
    }
    e->evidence_len = 0;
}

const struct cx_counters *cx_engine__counters(struct cx_engine *e) { return &e->ctr; }

uint32_t cx_engine__connections(struct cx_engine *e) { return e->nconns; }

uint64_t cx_engine__queued(struct cx_engine *e, int side)
{
    side = side ? 1 : 0;
    return e->queued[side] + e->ctr.frag_held[side];
}

struct cx_engine *cx_engine__new(const struct cx_config *cfg)
{
    if (!cfg->max_queue_size || !cfg->max_connections || !cfg->max_events)
        return NULL;
    struct cx_engine *e = calloc(1, sizeof(*e));
    if (!e)
        return NULL;
    e->cfg = *cfg;
    e->max_buckets = 64;
    while (e->max_buckets < cfg->max_connections && e->max_buckets < (1u << 24))
        e->max_buckets <<= 1;
    e->nbuckets = 64;
    e->hwm = cfg->flow_high_water ? cfg->flow_high_water : cfg->max_queue_size / 2;
    if (e->hwm > cfg->max_queue_size)
        e->hwm = cfg->max_queue_size;
    if (!e->hwm)
        e->hwm = 1;
    if (!e->cfg.reasm_timeout_ms)
        e->cfg.reasm_timeout_ms = CX_REASM_TIMEOUT_MS;
    if (!e->cfg.reasm_max_bytes)
        e->cfg.reasm_max_bytes = CX_REASM_MAX_BYTES;
    if (!e->cfg.reasm_max_datagrams)
        e->cfg.reasm_max_datagrams = CX_REASM_MAX_DATAGRAMS;
    if (!e->cfg.reasm_max_per_host)
        e->cfg.reasm_max_per_host = CX_REASM_MAX_PER_HOST;
    e->nslots = 64;
    while (e->nslots < 2 * (uint64_t)cfg->max_events && e->nslots < (1u << 31))
        e->nslots <<= 1;
    e->gen = 1;
    e->buckets = calloc(e->nbuckets, sizeof(*e->buckets));
    e->events = calloc(cfg->max_events, sizeof(*e->events));
    e->slots = calloc(e->nslots, sizeof(*e->slots));
    if (!e->buckets || !e->events || !e->slots)
        goto fail;
    if (cfg->evidence_max_bytes) {
        e->evidence = malloc(cfg->evidence_max_bytes);
        if (!e->evidence)
            goto fail;
    }
    return e;
fail:
    cx_engine__free(e);
    return NULL;
}

void cx_engine__free(struct cx_engine *e)
{
    if (!e)
        return;
    struct cx_conn *c = e->all.head;
    while (c) {
        struct cx_conn *next = c->all_next;
        for (int side = 0; side < 2; side++) {
            struct cx_frame *f = c->q[side].head;
            while (f) {
                struct cx_frame *fn = f->next;
                frags_free(f->frags);
                frame_free(e, f);
                f = fn;
            }
        }
        free(c);
        c = next;
    }
    while (e->ra.head)
        reasm_remove(e, e->ra.head);
    while (e->pool) {
        struct cx_pool_slot *next = e->pool->next;
        free(e->pool);
        e->pool = next;
    }
    free(e->buckets);
    free(e->events);
    free(e->slots);
    free(e->evidence);
    free(e->rules);
    free(e->out);
    free(e);
}
