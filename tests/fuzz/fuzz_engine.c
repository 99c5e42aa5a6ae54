/*
 * fuzz_engine.c - libFuzzer harness for the engine's C core (csrc/cx_engine.c).
 *
 * Built with ASan and UBSan by tests/fuzz/fuzzlib.py (`make fuzz`, and a short
 * run in `make test`); the csrc/ files are compiled with it unchanged.
 *
 * An input is a small program for one engine:
 *
 *   config (4 bytes) | op | op | ...
 *
 *   config: [0] bit 0 vnet_hdr, bits 1-3 max_queue_size, bits 4-6
 *           max_connections (indices into the tables below), bit 7 evidence
 *           buffer on; [1] compare_timeout (low nibble) and expired_scan_cycle
 *           (high nibble); [2] max_events; [3] reassembly limits: bits 0-1
 *           reasm_max_datagrams, bits 2-3 reasm_max_bytes, bit 4 a 50 ms
 *           reasm_timeout, bit 5 one datagram per source (0: the defaults).
 *   op:     one byte, kind = low nibble (OP_*), side = bit 7, then its
 *           arguments; an op cut short by the end of the input is skipped.
 *
 * OP_FEED_STREAM and OP_FEED_RAW hand the engine bytes as they came; OP_SYNTH
 * builds a well-formed Ethernet/IPv4 frame of one of four flows from a few
 * argument bytes, so that the fuzzer reaches the compare rules (equal
 * payloads, overlapping TCP ranges, wrapping sequence numbers) quickly.
 *
 * After every op the harness checks what must always hold and abort()s
 * (a crash for libFuzzer) when it does not:
 *   - every frame fed in is accounted for (released, consumed, dropped, held);
 *   - the table holds at most max_connections connections, each side of each
 *     at most max_queue_size frames, and the snapshot adds up to the totals;
 *   - the out buffer holds exactly the released records, none cut short
 *     except by an explicit abandon, each a legal length;
 *   - events and evidence records are well formed.
 * With CX_FUZZ_STATS set, each input ends with a line of its counters on
 * stderr, so a test can see which rules a corpus reaches.
 */
#include "cx_engine.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum {
    OP_FEED_STREAM, OP_FEED_RAW, OP_SYNTH, OP_TICK, OP_CHECKPOINT, OP_FAILOVER,
    OP_OUT, OP_DRAIN, OP_RULES, OP_NOTE_DROP, OP_SNAPSHOT, OP__COUNT
};

static const uint32_t QUEUE_SIZES[8] = {1, 2, 3, 4, 8, 64, 1024, 1024};
static const uint32_t CONN_LIMITS[8] = {1, 2, 3, 4, 16, 256, 16384, 16384};
static const uint64_t TIMEOUTS[16] = {1, 2, 10, 50, 100, 500, 1000, 3000,
                                      3000, 3000, 3000, 3000, 60000, 60000, 1, 1};
static const uint32_t EVENT_LIMITS[4] = {65536, 4, 16, 1024};
#define EVIDENCE_BYTES 512
#define NO_EVENT 0xffffffffu

#define CHECK(cond) do {                                                        \
        if (!(cond)) {                                                          \
            fprintf(stderr, "fuzz_engine: invariant broken: %s (line %d)\n",    \
                    #cond, __LINE__);                                           \
            abort();                                                            \
        }                                                                       \
    } while (0)

struct cursor {
    const uint8_t *p;
    size_t n;
};

static bool take(struct cursor *c, size_t n, const uint8_t **out)
{
    if (c->n < n)
        return false;
    *out = c->p;
    c->p += n;
    c->n -= n;
    return true;
}

static bool take8(struct cursor *c, uint32_t *v)
{
    const uint8_t *p;
    if (!take(c, 1, &p))
        return false;
    *v = p[0];
    return true;
}

static bool take16(struct cursor *c, uint32_t *v)
{
    const uint8_t *p;
    if (!take(c, 2, &p))
        return false;
    *v = (uint32_t)p[0] << 8 | p[1];
    return true;
}

static void put16(uint8_t *p, uint32_t v) { p[0] = (uint8_t)(v >> 8); p[1] = (uint8_t)v; }

static void put32(uint8_t *p, uint32_t v)
{
    put16(p, v >> 16);
    put16(p + 2, v);
}

/* What the harness knows must be true of the engine, kept alongside it. */
struct world {
    struct cx_engine *e;
    struct cx_config cfg;
    uint64_t now;
    size_t hdr;                    /* outdev record header: 4, or 8 with vnet */
    uint64_t out_gone;             /* bytes consumed or abandoned */
    uint64_t noted_no_memory[2];   /* CX_DROP_NO_MEMORY drops the harness noted itself */
};

/* ---- building frames ----------------------------------------------------- */

/* One of four flows (flow 3 starts its sequence numbers just below 2^32). */
static const uint32_t FLOW_SEQ_BASE[4] = {0, 1000, 0x7fffff00u, 0xffffff00u};

#define SYN_TCP 0
#define SYN_UDP 1
#define SYN_ICMP 2
#define SYN_GRE 3
#define SYN_FRAGMENT 4
#define SYN_TCP_BAD_DOFF 5
#define SYN_VLAN 6
#define SYN_ARP 7

/*
 * synth_frame - a frame from 8 argument bytes:
 *   [0] kind (bits 0-2), flow (bits 3-4), vnet header length index (bits 5-6)
 *   [1] payload length, [2] payload pattern, [3-4] sequence offset,
 *   [5-6] ack offset, [7] TCP flags.
 * Equal arguments make equal frames, so matches are easy to find.
 */
static uint32_t synth_frame(const uint8_t *a, uint8_t *f, uint32_t *vnet_len)
{
    static const uint32_t VNET[4] = {0, 10, 12, 21};
    uint32_t kind = a[0] & 7, flow = (a[0] >> 3) & 3;
    uint32_t plen = a[1] % 97;
    uint32_t vl = VNET[(a[0] >> 5) & 3];
    uint8_t *eth = f + vl, *ip = eth + 14;
    uint32_t l4len;

    memset(f, 0, vl + 14 + 20 + 20 + 4);
    for (uint32_t i = 0; i < vl; i++)
        f[i] = (uint8_t)(a[2] ^ i);
    memcpy(eth, "\x52\x54\x00\x00\x00\x02\x52\x54\x00\x00\x00\x01\x08\x00", 14);
    if (kind == SYN_ARP) {
        eth[12] = 0x08;
        eth[13] = 0x06;
    }
    uint8_t *l4 = ip + 20;
    uint8_t *payload;
    switch (kind) {
    case SYN_TCP:
    case SYN_TCP_BAD_DOFF:
        put16(l4, 4000 + flow);
        put16(l4 + 2, 2000);
        put32(l4 + 4, FLOW_SEQ_BASE[flow] + ((uint32_t)a[3] << 8 | a[4]));
        put32(l4 + 8, 1 + ((uint32_t)a[5] << 8 | a[6]));
        l4[12] = kind == SYN_TCP_BAD_DOFF ? 0xf0 : 0x50;
        l4[13] = a[7];
        payload = l4 + 20;
        l4len = 20 + plen;
        ip[9] = 6;
        break;
    case SYN_UDP:
        put16(l4, 1000 + flow);
        put16(l4 + 2, 2000);
        put16(l4 + 4, 8 + plen);
        payload = l4 + 8;
        l4len = 8 + plen;
        ip[9] = 17;
        break;
    case SYN_ICMP:
        l4[0] = 8;
        put16(l4 + 6, (uint32_t)a[3] << 8 | a[4]);
        payload = l4 + 8;
        l4len = 8 + plen;
        ip[9] = 1;
        break;
    default:                          /* GRE, fragment, VLAN, ARP */
        payload = l4;
        l4len = plen;
        ip[9] = kind == SYN_FRAGMENT ? 17 : 47;
        break;
    }
    for (uint32_t i = 0; i < plen; i++)
        payload[i] = (uint8_t)(a[2] + i);
    ip[0] = 0x45;
    put16(ip + 2, 20 + l4len);
    put16(ip + 6, kind == SYN_FRAGMENT ? 1 + (a[3] & 7) : 0x4000);
    ip[8] = 64;
    put32(ip + 12, 0x0a000001 + flow);
    put32(ip + 16, 0x0a000002);
    uint32_t len = vl + 14 + 20 + l4len;
    if (kind == SYN_VLAN) {           /* an 802.1Q tag after the MACs */
        memmove(eth + 16, eth + 12, len - vl - 12);
        eth[12] = 0x81;
        eth[13] = 0x00;
        eth[14] = 0;
        eth[15] = 100;
        len += 4;
    }
    *vnet_len = vl;
    return len;
}

/* ---- invariants ------------------------------------------------------------ */

static void check_world(struct world *w)
{
    const struct cx_counters *c = cx_engine__counters(w->e);
    uint64_t released = 0, dropped[2] = {0, 0};
    for (int r = 0; r < CX_REL__COUNT; r++)
        released += c->released[r];
    for (int s = 0; s < 2; s++)
        for (int r = 0; r < CX_DROP__COUNT; r++)
            dropped[s] += c->dropped[s][r];
    uint64_t queued[2] = {cx_engine__queued(w->e, 0), cx_engine__queued(w->e, 1)};

    /* every frame in is accounted for */
    CHECK(c->frames_in[0] == released + dropped[0] + queued[0]);
    CHECK(c->frames_in[1] == c->matched_secondary + c->skipped_secondary + dropped[1] +
                             queued[1]);
    /* nothing is lost for want of memory here */
    CHECK(c->dropped[0][CX_DROP_NO_MEMORY] == w->noted_no_memory[0]);
    CHECK(c->dropped[1][CX_DROP_NO_MEMORY] == w->noted_no_memory[1]);

    /* bounded by the configuration */
    uint32_t nconns = cx_engine__connections(w->e);
    CHECK(nconns <= w->cfg.max_connections);
    CHECK(nconns == c->conns_created - c->conns_evicted);

    /* the out buffer holds exactly what was released and not yet gone */
    const uint8_t *out;
    size_t pending = cx_engine__out_peek(w->e, &out);
    CHECK(w->out_gone + pending == c->released_bytes + w->hdr * released);
}

/* Walk whole records at the front of the out buffer (it is at a record
 * boundary whenever nothing was consumed mid-record). */
static void check_out_records(struct world *w, bool at_boundary)
{
    const uint8_t *out;
    size_t pending = cx_engine__out_peek(w->e, &out), pos = 0;
    if (!at_boundary)
        return;
    while (pos < pending) {
        CHECK(pending - pos >= w->hdr);
        uint32_t len = (uint32_t)out[pos] << 24 | (uint32_t)out[pos + 1] << 16 |
                       (uint32_t)out[pos + 2] << 8 | out[pos + 3];
        CHECK(len >= 1 && len <= CX_NET_BUFSIZE);
        CHECK(pending - pos - w->hdr >= len);
        pos += w->hdr + len;
    }
}

static void check_snapshot(struct world *w)
{
    static struct cx_conn_info info[64];
    size_t n = cx_engine__conn_snapshot(w->e, info, 64);
    CHECK(n == cx_engine__connections(w->e));
    uint64_t queued[2] = {0, 0};
    for (size_t i = 0; i < n && i < 64; i++) {
        /* a reassembled datagram is one frame of the queue, standing for
         * up to CX_REASM_MAX_FRAGS fragments in the counts */
        CHECK(info[i].queued[0] <= (uint64_t)w->cfg.max_queue_size * CX_REASM_MAX_FRAGS);
        CHECK(info[i].queued[1] <= (uint64_t)w->cfg.max_queue_size * CX_REASM_MAX_FRAGS);
        CHECK(info[i].matched <= info[i].released);
        CHECK(info[i].mismatches <= info[i].checkpoints);
        queued[0] += info[i].queued[0];
        queued[1] += info[i].queued[1];
    }
    if (n <= 64) {   /* the totals also count fragments waiting for their datagram */
        const struct cx_counters *ctr = cx_engine__counters(w->e);
        CHECK(queued[0] + ctr->frag_held[0] == cx_engine__queued(w->e, 0));
        CHECK(queued[1] + ctr->frag_held[1] == cx_engine__queued(w->e, 1));
    }
}

static void drain(struct world *w)
{
    const struct cx_event *ev;
    size_t n = cx_engine__events(w->e, &ev);
    CHECK(n <= w->cfg.max_events);
    for (size_t i = 0; i < n; i++) {
        CHECK(ev[i].kind >= CX_EV_CHECKPOINT && ev[i].kind <= CX_EV_CONN_EVICT);
        if (ev[i].kind == CX_EV_CHECKPOINT)
            CHECK(ev[i].reason >= 1 && ev[i].reason < CX_CKPT__COUNT && ev[i].has_key);
        if (ev[i].kind == CX_EV_DROP)
            CHECK(ev[i].reason >= 1 && ev[i].reason < CX_DROP__COUNT && ev[i].side <= 1);
    }
    const uint8_t *evd;
    size_t len = cx_engine__evidence(w->e, &evd), pos = 0;
    CHECK(len <= w->cfg.evidence_max_bytes);
    while (pos < len) {
        struct cx_evidence h;
        CHECK(len - pos >= sizeof(h));
        memcpy(&h, evd + pos, sizeof(h));
        CHECK(h.event == NO_EVENT || h.event < n);
        CHECK(h.side <= 1 && h.len >= 1 && h.len <= CX_NET_BUFSIZE);
        CHECK(h.reason == CX_CKPT_MISMATCH || h.reason == CX_CKPT_TIMEOUT);
        pos += sizeof(h) + ((h.len + 7u) & ~7u);
        CHECK(pos <= len);
    }
    cx_engine__events_clear(w->e);
}

static void report(struct world *w)
{
    const struct cx_counters *c = cx_engine__counters(w->e);
    fprintf(stderr, "cx-stats released=");
    for (int r = 0; r < CX_REL__COUNT; r++)
        fprintf(stderr, "%s%llu", r ? "," : "", (unsigned long long)c->released[r]);
    for (int s = 0; s < 2; s++) {
        fprintf(stderr, " dropped%d=", s);
        for (int r = 0; r < CX_DROP__COUNT; r++)
            fprintf(stderr, "%s%llu", r ? "," : "", (unsigned long long)c->dropped[s][r]);
    }
    fprintf(stderr, " checkpoints=");
    for (int r = 0; r < CX_CKPT__COUNT; r++)
        fprintf(stderr, "%s%llu", r ? "," : "", (unsigned long long)c->checkpoints[r]);
    fprintf(stderr, " mismatches=%llu,%llu,%llu skipped=%llu evicted=%llu events_lost=%llu "
            "evidence_lost=%llu outdev_cut=%llu\n",
            (unsigned long long)c->mismatches_by_proto[0],
            (unsigned long long)c->mismatches_by_proto[1],
            (unsigned long long)c->mismatches_by_proto[2],
            (unsigned long long)c->skipped_secondary, (unsigned long long)c->conns_evicted,
            (unsigned long long)c->events_lost, (unsigned long long)c->evidence_lost,
            (unsigned long long)c->outdev_cut);
    for (int s = 0; s < 2; s++) {
        fprintf(stderr, "cx-stats frag%d=", s);
        for (int r = 0; r < CX_FRAG__COUNT; r++)
            fprintf(stderr, "%s%llu", r ? "," : "", (unsigned long long)c->frag[s][r]);
        fprintf(stderr, "\n");
    }
}

/* ---- ops --------------------------------------------------------------------- */

static uint8_t frame_buf[CX_NET_BUFSIZE + 64];

static void op_rules(struct world *w, struct cursor *c)
{
    struct cx_rule rules[3];
    uint32_t n, v;
    if (!take8(c, &n))
        return;
    n %= 4;
    memset(rules, 0, sizeof(rules));
    for (uint32_t i = 0; i < n && i < 3; i++) {
        const uint8_t *a;
        if (!take(c, 4, &a))
            return;
        /* protocol, a source /24 or /32 or any (IPv4 mapped, or with bit 4
         * fd00::/16), source port of a flow, any */
        static const uint8_t PROTO[4] = {0, 6, 17, 47};
        rules[i].proto = PROTO[a[0] & 3];
        v = 0x0a000001 + (a[1] & 3);
        uint32_t mask = (a[1] & 4) ? 0xffffffffu : (a[1] & 8) ? 0xffffff00u : 0;
        uint8_t be[4];
        if (a[1] & 0x10) {
            put32(be, 0xfd000000u);
            memcpy(&rules[i].saddr[0], be, 4);
            put32(be, 0xffff0000u);
            memcpy(&rules[i].smask[0], be, 4);
        } else if (mask) {
            rules[i].saddr[2] = htonl(0xffff);
            memset(rules[i].smask, 0xff, 12);
            put32(be, v);
            memcpy(&rules[i].saddr[3], be, 4);
            put32(be, mask);
            memcpy(&rules[i].smask[3], be, 4);
        }
        /* ports in network byte order, as in cx_wire.h */
        rules[i].sport = htons((a[2] & 1) ? (uint16_t)(((a[2] & 2) ? 4000 : 1000) + ((a[2] >> 2) & 3)) : 0);
        rules[i].dport = htons((a[3] & 1) ? 2000 : 0);
    }
    CHECK(cx_engine__set_passthrough(w->e, n ? rules : NULL, n) == 0);
}

static void run_op(struct world *w, struct cursor *c, uint32_t op, bool *at_boundary)
{
    int side = (op >> 7) & 1;
    const uint8_t *data;
    uint32_t n, v;

    switch (op & 0x0f) {
    case OP_FEED_STREAM: {
        size_t consumed = 99;
        if (!take16(c, &n))
            return;
        if (n > c->n)
            n = (uint32_t)c->n;
        take(c, n, &data);
        /* with flow control, or forced (bit 0x40) */
        int rc = cx_engine__feed_stream(w->e, side, data, n, w->now,
                                        (op & 0x40) ? CX_FEED_FORCE : 0, &consumed);
        CHECK(consumed <= n);
        if (rc == -EPROTO) {
            /* a length past any frame: the record is counted, the framing
             * lost; the service would close the stream, a new peer resets */
            CHECK(consumed + 4 <= n && cx_rd32(data + consumed) > CX_FRAMING_LOST_LEN);
            cx_engine__stream_reset(w->e, side);
            break;
        }
        CHECK(rc == CX_FEED_DONE || rc == CX_FEED_BLOCKED);
        CHECK(!(op & 0x40) || rc == CX_FEED_DONE);
        break;
    }
    case OP_FEED_RAW: {
        uint32_t vnet;
        if (!take8(c, &vnet) || !take16(c, &n))
            return;
        if (op & 0x40) {                       /* the largest record, or one past it */
            n = CX_NET_BUFSIZE + (n & 1);
            memset(frame_buf, (int)vnet, n);
            cx_engine__feed(w->e, side, frame_buf, n, vnet, w->now);
            break;
        }
        if (n > c->n)
            n = (uint32_t)c->n;
        take(c, n, &data);
        /* a copy of exactly n bytes, so ASan sees any read past the frame */
        uint8_t *copy = malloc(n ? n : 1);
        CHECK(copy != NULL);
        memcpy(copy, data, n);
        cx_engine__feed(w->e, side, copy, n, vnet, w->now);
        free(copy);
        break;
    }
    case OP_SYNTH: {
        uint32_t vnet_len;
        if (!take(c, 8, &data))
            return;
        uint32_t len = synth_frame(data, frame_buf, &vnet_len);
        uint8_t *copy = malloc(len);
        CHECK(copy != NULL);
        memcpy(copy, frame_buf, len);
        cx_engine__feed(w->e, side, copy, len, vnet_len, w->now);
        free(copy);
        break;
    }
    case OP_TICK:
        if (!take16(c, &v))
            return;
        w->now += v;
        CHECK(cx_engine__tick(w->e, w->now) >= w->now);
        break;
    case OP_CHECKPOINT:
        cx_engine__checkpoint(w->e);
        CHECK(cx_engine__queued(w->e, 0) == 0 && cx_engine__queued(w->e, 1) == 0);
        break;
    case OP_FAILOVER:
        if (!side)                              /* half as often as the rest */
            return;
        cx_engine__failover(w->e);
        CHECK(cx_engine__queued(w->e, 0) == 0 && cx_engine__queued(w->e, 1) == 0);
        break;
    case OP_OUT: {
        const uint8_t *out;
        if (!take16(c, &n))
            return;
        size_t before = cx_engine__out_peek(w->e, &out);
        if (side) {
            int cut = cx_engine__out_abandon_partial(w->e);
            size_t after = cx_engine__out_peek(w->e, &out);
            CHECK(cut ? after < before : after == before);
            w->out_gone += before - after;
            *at_boundary = true;
        } else {
            if (n & 0x8000)                     /* everything: a record boundary */
                n = (uint32_t)before;
            cx_engine__out_consume(w->e, n);
            size_t after = cx_engine__out_peek(w->e, &out);
            CHECK(after == (n < before ? before - n : 0));
            w->out_gone += before - after;
            *at_boundary = after == 0 || (*at_boundary && n == 0);
        }
        break;
    }
    case OP_DRAIN:
        drain(w);
        break;
    case OP_RULES:
        op_rules(w, c);
        break;
    case OP_NOTE_DROP:
        if (!take8(c, &v))
            return;
        v = v % 12 - 1;                         /* -1 .. 10: some out of range */
        cx_engine__note_drop(w->e, side, (int)v);
        w->noted_no_memory[side] += v == CX_DROP_NO_MEMORY;
        break;
    case OP_SNAPSHOT:
        check_snapshot(w);
        break;
    default:
        break;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct cursor c = {data, size};
    const uint8_t *h;
    if (!take(&c, 4, &h))
        return 0;

    struct world w;
    memset(&w, 0, sizeof(w));
    w.cfg.vnet_hdr = h[0] & 1;
    w.cfg.max_queue_size = QUEUE_SIZES[(h[0] >> 1) & 7];
    w.cfg.max_connections = CONN_LIMITS[(h[0] >> 4) & 7];
    w.cfg.evidence_max_bytes = (h[0] & 0x80) ? EVIDENCE_BYTES : 0;
    w.cfg.compare_timeout_ms = TIMEOUTS[h[1] & 15];
    w.cfg.expired_scan_cycle_ms = TIMEOUTS[h[1] >> 4];
    w.cfg.max_events = EVENT_LIMITS[h[2] & 3];
    static const uint32_t REASM_DGRAMS[4] = {0, 1, 2, 4}, REASM_BYTES[4] = {0, 300, 2000, 0};
    w.cfg.reasm_max_datagrams = REASM_DGRAMS[h[3] & 3];
    w.cfg.reasm_max_bytes = REASM_BYTES[(h[3] >> 2) & 3];
    w.cfg.reasm_timeout_ms = (h[3] & 0x10) ? 50 : 0;
    w.cfg.reasm_max_per_host = (h[3] & 0x20) ? 1 : 0;
    w.hdr = w.cfg.vnet_hdr ? 8 : 4;
    w.e = cx_engine__new(&w.cfg);
    CHECK(w.e != NULL);

    bool at_boundary = true;
    uint32_t op;
    while (take8(&c, &op)) {
        run_op(&w, &c, op, &at_boundary);
        check_world(&w);
        check_out_records(&w, at_boundary);
    }
    check_snapshot(&w);
    drain(&w);
    /* a last checkpoint leaves nothing held */
    cx_engine__checkpoint(w.e);
    check_world(&w);
    CHECK(cx_engine__queued(w.e, 0) == 0 && cx_engine__queued(w.e, 1) == 0);
    drain(&w);
    if (getenv("CX_FUZZ_STATS"))
        report(&w);
    cx_engine__free(w.e);
    return 0;
}
