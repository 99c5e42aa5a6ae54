/*
 * segment.c - one frame into wire frames: see segment.h.
 *
 * What a guest's virtio-net hands its tap with offloads on (the default):
 *
 *   [Ethernet][tags][IPv4|IPv6 (+ext)][TCP|UDP][ payload, up to 64 KiB      ]
 *                    total length:       whole     checksum: pseudo-header sum
 *
 * and what goes on the wire, piece i of count:
 *
 *   [Ethernet][tags][IP: length, IPv4 id + i, header checksum][TCP: seq + i*piece,
 *    FIN/PSH on the last only, CWR on the first only | UDP: length][ piece i ]
 *    TCP/UDP checksum in full over the pseudo-header
 */
#include "segment.h"

#include <errno.h>
#include <string.h>

#include "cx_wire.h"

#define ETH_TYPE_AT 12
#define IP4_TOT_AT 2
#define IP4_ID_AT 4
#define IP4_FRAG_AT 6
#define IP4_PROTO_AT 9
#define IP4_CSUM_AT 10
#define IP4_ADDRS_AT 12           /* source and destination, 8 bytes */
#define IP4_FRAG_BITS (CX_IP_FRAG_MF | CX_IP_FRAG_OFFSET_MASK)
#define IP6_PLEN_AT 4
#define IP6_NEXT_AT 6
#define IP6_ADDRS_AT 8            /* source and destination, 32 bytes */
#define TCP_SEQ_AT 4
#define TCP_DOFF_AT 12
#define TCP_FLAGS_AT 13
#define TCP_CSUM_AT 16
#define TCP_FIN 0x01
#define TCP_PSH 0x08
#define TCP_CWR 0x80
#define UDP_LEN_AT 4
#define UDP_CSUM_AT 6

/* ---- checksums (RFC 1071) ------------------------------------------------ */

static uint32_t csum_add(uint32_t sum, const uint8_t *p, size_t n)
{
    for (; n > 1; p += 2, n -= 2)
        sum += (uint32_t)p[0] << 8 | p[1];
    if (n)
        sum += (uint32_t)p[0] << 8;
    return sum;
}

static uint16_t csum_fold(uint32_t sum)
{
    while (sum >> 16)
        sum = (sum & 0xffff) + (sum >> 16);
    return (uint16_t)~sum;
}

static void wr16(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}

static void wr32(uint8_t *p, uint32_t v)
{
    wr16(p, v >> 16);
    wr16(p + 2, v);
}

static uint32_t rd32(const uint8_t *p)
{
    return (uint32_t)cx_rd16(p) << 16 | cx_rd16(p + 2);
}

/* The TCP/UDP checksum of the l4_len bytes at the plan's l4_off in f, in
 * full over IPv4's or IPv6's pseudo-header (RFC 8200 8.1).  UDP over IPv4
 * without one (0) keeps none; a UDP sum of 0 goes out as 0xffff. */
static void l4_checksum(const struct segment__plan *p, uint8_t *f, uint32_t l4_len)
{
    uint8_t *l4 = f + p->l4_off;
    uint32_t at = p->proto == CX_IPPROTO_TCP ? TCP_CSUM_AT : UDP_CSUM_AT;

    if (p->proto == CX_IPPROTO_UDP && !p->ipv6 && !l4[at] && !l4[at + 1])
        return;
    uint32_t sum = p->ipv6 ? csum_add(0, f + p->l3_off + IP6_ADDRS_AT, 32)
                           : csum_add(0, f + p->l3_off + IP4_ADDRS_AT, 8);
    sum += p->proto + (l4_len & 0xffff) + (l4_len >> 16);
    l4[at] = l4[at + 1] = 0;
    uint16_t c = csum_fold(csum_add(sum, l4, l4_len));
    if (p->proto == CX_IPPROTO_UDP && c == 0)
        c = 0xffff;
    wr16(l4 + at, c);
}

/* ---- where the headers are ---------------------------------------------- */

enum layout {
    LAYOUT_L4,        /* TCP or UDP over IPv4/IPv6, lengths consistent: plan filled */
    LAYOUT_OTHER,     /* something else: goes out as it is, never cut */
    LAYOUT_BAD,       /* IP or L4 header cut, or lengths that do not agree */
};

static enum layout ipv4_layout(const uint8_t *f, uint32_t len, struct segment__plan *p)
{
    const uint8_t *ip = f + p->l3_off;
    uint32_t room = len - p->l3_off;

    if (room < CX_IP_HLEN_MIN)
        return LAYOUT_BAD;
    uint32_t ihl = (ip[0] & 0x0f) * 4u, tot = cx_rd16(ip + IP4_TOT_AT);
    if ((ip[0] >> 4) != 4 || ihl < CX_IP_HLEN_MIN || tot < ihl || tot > room)
        return LAYOUT_BAD;
    if (cx_rd16(ip + IP4_FRAG_AT) & IP4_FRAG_BITS)
        return LAYOUT_OTHER;
    p->proto = ip[IP4_PROTO_AT];
    p->l4_off = (uint16_t)(p->l3_off + ihl);
    p->end = p->l3_off + tot;
    return LAYOUT_L4;
}

/* Over hop-by-hop and destination options headers only: a routing header
 * makes the pseudo-header name another address, a fragment header makes
 * the rest not a whole datagram. */
static enum layout ipv6_layout(const uint8_t *f, uint32_t len, struct segment__plan *p)
{
    const uint8_t *ip = f + p->l3_off;
    uint32_t room = len - p->l3_off;

    if (room < CX_IPV6_HLEN || (ip[0] >> 4) != 6)
        return LAYOUT_BAD;
    uint32_t end = CX_IPV6_HLEN + cx_rd16(ip + IP6_PLEN_AT), off = CX_IPV6_HLEN;
    if (end == CX_IPV6_HLEN)
        return LAYOUT_OTHER;                /* a jumbogram, or nothing after */
    if (end > room)
        return LAYOUT_BAD;
    uint8_t proto = ip[IP6_NEXT_AT];
    for (int i = 0; proto == CX_IPPROTO_HOPOPTS || proto == CX_IPPROTO_DSTOPTS; i++) {
        if (i == CX_IPV6_MAX_EXT)
            return LAYOUT_OTHER;
        if (end - off < 8 || (ip[off + 1] + 1u) * 8u > end - off)
            return LAYOUT_BAD;
        proto = ip[off];
        off += (ip[off + 1] + 1u) * 8u;
    }
    p->ipv6 = 1;
    p->proto = proto;
    p->l4_off = (uint16_t)(p->l3_off + off);
    p->end = p->l3_off + end;
    return LAYOUT_L4;
}

static enum layout layout(const uint8_t *f, uint32_t len, struct segment__plan *p)
{
    uint32_t at = ETH_TYPE_AT;
    uint16_t type = len >= at + 2 ? cx_rd16(f + at) : 0;

    for (int tags = 0; type == CX_ETH_P_8021Q || type == CX_ETH_P_8021AD; tags++) {
        if (tags == CX_VLAN_MAX_TAGS || len < at + CX_VLAN_HLEN + 2)
            return LAYOUT_OTHER;
        at += CX_VLAN_HLEN;
        type = cx_rd16(f + at);
    }
    p->l3_off = (uint16_t)(at + 2);
    enum layout l = type == CX_ETH_P_IP     ? ipv4_layout(f, len, p)
                    : type == CX_ETH_P_IPV6 ? ipv6_layout(f, len, p)
                                            : LAYOUT_OTHER;
    if (l != LAYOUT_L4)
        return l;
    uint32_t l4_len = p->end - p->l4_off;
    const uint8_t *l4 = f + p->l4_off;
    if (p->proto == CX_IPPROTO_TCP) {
        uint32_t doff = (l4_len >= CX_TCP_HLEN_MIN ? l4[TCP_DOFF_AT] >> 4 : 0) * 4u;
        if (doff < CX_TCP_HLEN_MIN || doff > l4_len)
            return LAYOUT_BAD;
        p->hdr_len = p->l4_off + doff;
    } else if (p->proto == CX_IPPROTO_UDP) {
        if (l4_len < CX_UDP_HLEN)
            return LAYOUT_BAD;
        p->hdr_len = p->l4_off + CX_UDP_HLEN;
    } else {
        return LAYOUT_OTHER;
    }
    return LAYOUT_L4;
}

/* ---- the calls ---------------------------------------------------------- */

int segment__plan(const uint8_t *f, uint32_t len, uint32_t mtu, uint32_t max_len,
                  struct segment__plan *plan)
{
    struct segment__plan p = { .count = 1 };

    if (!len) {
        *plan = (struct segment__plan){ .count = 1 };
        return -EINVAL;
    }
    enum layout l = layout(f, len, &p);

    if (l != LAYOUT_L4) {
        /* Out as it is, with no checksum to finish; too long, it cannot go. */
        *plan = (struct segment__plan){ .count = 1, .end = len };
        uint32_t l3_len = len > p.l3_off ? len - p.l3_off : 0;
        if (len <= max_len && l3_len <= mtu)
            return 0;
        return l == LAYOUT_BAD ? -EINVAL : -EMSGSIZE;
    }
    if (len <= max_len && p.end - p.l3_off <= mtu) {
        *plan = p;
        return 0;
    }
    uint32_t by_mtu = mtu > p.hdr_len - p.l3_off ? mtu - (p.hdr_len - p.l3_off) : 0;
    uint32_t by_frame = max_len > p.hdr_len ? max_len - p.hdr_len : 0;
    p.piece = by_mtu < by_frame ? by_mtu : by_frame;
    if (p.piece < SEGMENT__MIN_PIECE) {
        *plan = (struct segment__plan){ .count = 1, .end = len };
        return -EMSGSIZE;
    }
    uint32_t pay_len = p.end - p.hdr_len;
    p.count = pay_len ? (pay_len + p.piece - 1) / p.piece : 1;
    *plan = p;
    return 0;
}

int segment__write(const struct segment__plan *plan, const uint8_t *f, uint32_t len,
                   uint32_t i, uint8_t *buf, uint32_t room)
{
    const struct segment__plan *p = plan;

    if (i >= p->count)
        return -EINVAL;
    if (!p->piece) {
        if (room < len)
            return -ENOSPC;
        memcpy(buf, f, len);
        if (p->proto)
            l4_checksum(p, buf, p->end - p->l4_off);
        return (int)len;
    }
    uint32_t from = i * p->piece, pay_len = p->end - p->hdr_len;
    uint32_t piece = pay_len - from < p->piece ? pay_len - from : p->piece;
    uint32_t n = p->hdr_len + piece;
    if (room < n)
        return -ENOSPC;
    memcpy(buf, f, p->hdr_len);
    memcpy(buf + p->hdr_len, f + p->hdr_len + from, piece);

    uint8_t *ip = buf + p->l3_off, *l4 = buf + p->l4_off;
    if (p->ipv6) {
        wr16(ip + IP6_PLEN_AT, n - p->l3_off - CX_IPV6_HLEN);
    } else {
        uint32_t ihl = p->l4_off - p->l3_off;
        wr16(ip + IP4_TOT_AT, n - p->l3_off);
        wr16(ip + IP4_ID_AT, cx_rd16(ip + IP4_ID_AT) + i);
        ip[IP4_CSUM_AT] = ip[IP4_CSUM_AT + 1] = 0;
        wr16(ip + IP4_CSUM_AT, csum_fold(csum_add(0, ip, ihl)));
    }
    if (p->proto == CX_IPPROTO_TCP) {
        wr32(l4 + TCP_SEQ_AT, rd32(l4 + TCP_SEQ_AT) + from);
        if (i != p->count - 1)
            l4[TCP_FLAGS_AT] &= (uint8_t)~(TCP_FIN | TCP_PSH);
        if (i != 0)
            l4[TCP_FLAGS_AT] &= (uint8_t)~TCP_CWR;
    } else {
        wr16(l4 + UDP_LEN_AT, n - p->l4_off);
    }
    l4_checksum(p, buf, n - p->l4_off);
    return (int)n;
}
