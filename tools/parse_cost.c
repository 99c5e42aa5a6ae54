/*
 * parse_cost.c - what the engine's own parse of a frame costs, next to
 * the whole feed of a matched pair: the measurement behind "the engine
 * parses, the classifier writes no metadata" (docs/xdp.md, Metadata).
 *
 *   cc -O2 -std=gnu11 -Icsrc -Ibpf tools/parse_cost.c -o /tmp/parse_cost && /tmp/parse_cost
 *
 * It includes csrc/cx_engine.c to reach its static parse_frame.  Per frame
 * kind (IPv4 UDP, IPv4 TCP, IPv6 TCP, 802.1Q-tagged IPv4 UDP): ns per
 * parse_frame ("parse"), ns per parse that takes the offsets from
 * classify.c's metadata as it used to be written, validated ("meta", with
 * the metadata hot in cache: the best case for it), and ns per pair of
 * cx_engine__feed_burst feeding primary and secondary the same frames
 * (parse, compare, release).  "parse %" is the two parses' share of a pair.
 *
 * Measured on the 2-core test host (6.18, gcc 12, -O2, noisy: other work
 * shares it): parse 14-27 ns, meta 7-14 ns, a pair 230-340 ns.  The metadata
 * would save 5-10 ns a frame, 2-4 % of a pair, before the cost of writing
 * it (bpf_xdp_adjust_meta, a hash, 28 bytes, per frame in the kernel),
 * clearing it (32 bytes per frame handed back) and reading its cache line;
 * so the engine parses and the classifier writes none.  Before this tool
 * parse_frame cleared its result with memset, which gcc made a rep stos:
 * 35-55 ns, half of it the clear.
 */
#include "../csrc/cx_engine.c"

#include <stdio.h>
#include <time.h>

#define ROUNDS 2000000
#define BURST 64

/* The metadata classify.c used to put in front of each frame (28 bytes). */
#define META_MAGIC 0xc01a0d01
#define META_F_VLAN 0x1
#define META_F_FRAGMENT 0x2
#define META_F_IPV6 0x4
struct meta {
    uint32_t hash, saddr, daddr;
    uint16_t sport, dport;
    uint8_t proto, flags;
    uint16_t l3_off, l4_off, vlan_tci;
    uint32_t magic;
};

/*
 * What the engine would do with classify.c's metadata (struct meta
 * in front of the frame): trust nothing it says that it can check cheaply,
 * take the network and transport offsets from it and skip the link-layer
 * and extension-header walk.  The addresses still come from the frame (the
 * metadata folds IPv6 addresses), the IP lengths are still checked (they
 * bound the L4 header) and the L4 header is parsed as before (the compare
 * needs TCP's sequence numbers and payload).  One tag only: a QinQ key
 * needs both VIDs, the metadata has the outer one.
 */
static void parse_with_meta(const uint8_t *f, uint32_t len, const struct meta *m,
                            struct cx_parsed *pp)
{
    if (m->magic != META_MAGIC || m->l3_off >= len || m->l4_off <= m->l3_off ||
        m->l4_off >= len || (m->flags & META_F_FRAGMENT)) {
        parse_frame(f, len, 0, pp);                 /* no metadata: parse */
        return;
    }
    static const struct cx_parsed zero;
    *pp = zero;
    const uint8_t *ip = f + m->l3_off;
    uint32_t l4_len;
    if (m->flags & META_F_IPV6) {
        pp->key.family = CX_FAMILY_IPV6;
        memcpy(pp->key.saddr, ip + 8, 16);
        memcpy(pp->key.daddr, ip + 24, 16);
        l4_len = m->l3_off + CX_IPV6_HLEN + cx_rd16(ip + 4) - m->l4_off;
    } else {
        pp->key.family = CX_FAMILY_IPV4;
        pp->key.saddr[2] = pp->key.daddr[2] = htonl(0xffff);
        memcpy(&pp->key.saddr[3], ip + 12, 4);
        memcpy(&pp->key.daddr[3], ip + 16, 4);
        l4_len = m->l3_off + cx_rd16(ip + 2) - m->l4_off;
    }
    if (l4_len > len - m->l4_off)
        return;
    if (m->flags & META_F_VLAN)
        pp->key.vid[pp->key.ntags++] = m->vlan_tci & CX_VLAN_VID_MASK;
    pp->l3_off = m->l3_off;
    pp->cmp = CMP_WHOLE;
    pp->key.proto = m->proto;
    pp->supported = parse_l4(f, m->l4_off, l4_len, m->proto, pp);
}

static double now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e9 + ts.tv_nsec;
}

static uint32_t build(uint8_t *f, int kind, uint32_t i)
{
    static const uint8_t mac[12] = {0x52, 0x54, 0, 0, 0, 2, 0x52, 0x54, 0, 0, 0, 1};
    uint32_t at = 12, pay = 64;
    memcpy(f, mac, 12);
    if (kind == 3) {                                   /* 802.1Q tag, VID 10 */
        f[12] = 0x81; f[13] = 0x00; f[14] = 0; f[15] = 10;
        at = 16;
    }
    uint8_t *ip;
    uint32_t l4_len = (kind == 1 || kind == 2 ? 20 : 8) + pay;
    uint8_t proto = kind == 1 || kind == 2 ? 6 : 17;
    if (kind == 2) {                                   /* IPv6 */
        f[at] = 0x86; f[at + 1] = 0xdd;
        ip = f + at + 2;
        memset(ip, 0, 40);
        ip[0] = 0x60; ip[4] = l4_len >> 8; ip[5] = l4_len & 0xff; ip[6] = proto; ip[7] = 64;
        ip[8] = 0xfd; ip[23] = 1; ip[24] = 0xfd; ip[39] = 2;
        ip += 40;
    } else {
        f[at] = 0x08; f[at + 1] = 0x00;
        ip = f + at + 2;
        memset(ip, 0, 20);
        ip[0] = 0x45; ip[2] = (20 + l4_len) >> 8; ip[3] = (20 + l4_len) & 0xff;
        ip[8] = 64; ip[9] = proto;
        ip[12] = 10; ip[15] = 1; ip[16] = 10; ip[19] = 2;
        ip += 20;
    }
    memset(ip, 0, l4_len);
    ip[0] = 0x0f; ip[1] = 0xa0; ip[2] = 0; ip[3] = 80;
    if (proto == 6) {
        wr32(ip + 4, 1000 + i * pay);
        ip[12] = 5 << 4; ip[13] = 0x10;
    } else {
        ip[4] = l4_len >> 8; ip[5] = l4_len & 0xff;
    }
    return (uint32_t)(ip - f) + l4_len;
}

int main(void)
{
    static const char *names[] = {"ipv4 udp", "ipv4 tcp", "ipv6 tcp", "vlan ipv4 udp"};
    static uint8_t frames[BURST][256];
    uint32_t lens[BURST];
    const uint8_t *ptrs[BURST];
    volatile uint32_t sink = 0;

    printf("%-14s %9s %11s %16s %8s\n", "frame", "parse ns", "meta ns", "feed ns (pair)",
           "parse %");
    for (int kind = 0; kind < 4; kind++) {
        for (int i = 0; i < BURST; i++) {
            lens[i] = build(frames[i], kind, i);
            ptrs[i] = frames[i];
        }
        struct cx_parsed pp;
        double t0 = now_ns();
        for (int r = 0; r < ROUNDS; r++) {
            parse_frame(frames[r % BURST], lens[r % BURST], 0, &pp);
            sink += pp.key.sport + pp.supported;
        }
        double parse = (now_ns() - t0) / ROUNDS;

        struct meta metas[BURST];
        for (int i = 0; i < BURST; i++) {
            struct meta *m = &metas[i];
            memset(m, 0, sizeof(*m));
            m->l3_off = kind == 3 ? 18 : 14;
            m->l4_off = m->l3_off + (kind == 2 ? 40 : 20);
            m->proto = kind == 1 || kind == 2 ? 6 : 17;
            m->flags = (kind == 2 ? META_F_IPV6 : 0) | (kind == 3 ? META_F_VLAN : 0);
            m->vlan_tci = kind == 3 ? 10 : 0;
            m->magic = META_MAGIC;
        }
        t0 = now_ns();
        for (int r = 0; r < ROUNDS; r++) {
            parse_with_meta(frames[r % BURST], lens[r % BURST], &metas[r % BURST], &pp);
            sink += pp.key.sport + pp.supported;
        }
        double meta = (now_ns() - t0) / ROUNDS;

        struct cx_config cfg = {.compare_timeout_ms = 3000, .expired_scan_cycle_ms = 3000,
                                .max_queue_size = 1024, .max_connections = 16384,
                                .max_events = 4096};
        struct cx_engine *e = cx_engine__new(&cfg);
        const uint8_t *out;
        t0 = now_ns();
        int bursts = ROUNDS / BURST;
        for (int r = 0; r < bursts; r++) {
            if (kind == 1 || kind == 2)             /* TCP: sequence numbers go on */
                for (int i = 0; i < BURST; i++)
                    wr32(frames[i] + lens[i] - 64 - 20 + 4, 1000 + (r * BURST + i) * 64);
            cx_engine__feed_burst(e, CX_PRIMARY, ptrs, lens, BURST, r, CX_FEED_FORCE);
            cx_engine__feed_burst(e, CX_SECONDARY, ptrs, lens, BURST, r, CX_FEED_FORCE);
            cx_engine__out_consume(e, cx_engine__out_peek(e, &out));
            cx_engine__events_clear(e);
        }
        double feed = (now_ns() - t0) / (bursts * BURST);
        if (cx_engine__counters(e)->released[CX_REL_MATCHED] != (uint64_t)bursts * BURST)
            printf("(%s: not all matched: %llu)\n", names[kind],
                   (unsigned long long)cx_engine__counters(e)->released[CX_REL_MATCHED]);
        cx_engine__free(e);
        printf("%-14s %9.1f %11.1f %16.1f %7.1f%%\n", names[kind], parse, meta, feed,
               100.0 * 2 * parse / feed);
    }
    return sink == 42;
}
