/*
 * xdp_glue.c - AF_XDP sockets meet the engine and the chardev framing.
 */
#include "xdp_glue.h"

#include <errno.h>
#include <string.h>

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

/*
 * A guest that offloads checksums (virtio-net's default) hands its tap TCP
 * and UDP frames holding only the pseudo-header sum: the kernel would finish
 * them from skb state that XDP and AF_XDP do not carry.  So before AF_XDP
 * sends a frame its TCP/UDP checksum is computed in full, over IPv4's or
 * IPv6's pseudo-header (RFC 8200 8.1), untagged, 802.1Q or QinQ; a frame
 * whose checksum was right keeps the same value.  Left alone: UDP over IPv4
 * without a checksum (0), fragments, and IPv6 with a routing header (its
 * pseudo-header names the final destination) or more extension headers than
 * the engine walks.
 */
static void l4_checksum_finish(uint8_t *f, uint32_t len)
{
    uint32_t at = 12;
    uint16_t type = len >= 14 ? cx_rd16(f + 12) : 0;
    for (int tags = 0; (type == CX_ETH_P_8021Q || type == CX_ETH_P_8021AD); tags++) {
        if (tags == CX_VLAN_MAX_TAGS || len < at + CX_VLAN_HLEN + 2)
            return;
        at += CX_VLAN_HLEN;
        type = cx_rd16(f + at);
    }
    uint8_t *ip = f + at + 2;
    uint32_t room = len - (at + 2), sum, l4_len;
    uint8_t proto, *l4;
    if (type == CX_ETH_P_IP) {
        if (room < CX_IP_HLEN_MIN)
            return;
        uint32_t ihl = (ip[0] & 0x0f) * 4u, tot = cx_rd16(ip + 2);
        if ((ip[0] >> 4) != 4 || ihl < CX_IP_HLEN_MIN || tot < ihl || tot > room ||
            (cx_rd16(ip + 6) & 0x3fff))
            return;
        proto = ip[9];
        l4 = ip + ihl;
        l4_len = tot - ihl;
        sum = csum_add(0, ip + 12, 8);
    } else if (type == CX_ETH_P_IPV6) {
        if (room < CX_IPV6_HLEN || (ip[0] >> 4) != 6)
            return;
        uint32_t end = CX_IPV6_HLEN + cx_rd16(ip + 4), off = CX_IPV6_HLEN;
        if (end > room)
            return;
        proto = ip[6];
        for (int i = 0; proto == CX_IPPROTO_HOPOPTS || proto == CX_IPPROTO_DSTOPTS; i++) {
            if (i == CX_IPV6_MAX_EXT || end - off < 8 || (ip[off + 1] + 1u) * 8u > end - off)
                return;
            proto = ip[off];
            off += (ip[off + 1] + 1u) * 8u;
        }
        l4 = ip + off;
        l4_len = end - off;
        sum = csum_add(0, ip + 8, 32);
    } else {
        return;
    }
    uint32_t c_at;
    if (proto == CX_IPPROTO_TCP && l4_len >= CX_TCP_HLEN_MIN)
        c_at = 16;
    else if (proto == CX_IPPROTO_UDP && l4_len >= CX_UDP_HLEN &&
             (type == CX_ETH_P_IPV6 || l4[6] || l4[7]))
        c_at = 6;                      /* IPv6 UDP always has one (RFC 8200) */
    else
        return;
    l4[c_at] = l4[c_at + 1] = 0;
    sum += proto + (l4_len & 0xffff) + (l4_len >> 16);
    uint16_t c = csum_fold(csum_add(sum, l4, l4_len));
    if (proto == CX_IPPROTO_UDP && c == 0)
        c = 0xffff;
    l4[c_at] = c >> 8;
    l4[c_at + 1] = c & 0xff;
}

static uint32_t burst_cap(uint32_t max)
{
    return max && max < XDP_GLUE__BURST ? max : XDP_GLUE__BURST;
}

int xdp_glue__rx_to_engine(struct xsk *x, struct cx_engine *e, int side, uint64_t now_ms,
                           uint32_t max, int flags, int *held_back)
{
    uint64_t addrs[XDP_GLUE__BURST];
    uint32_t lens[XDP_GLUE__BURST];
    const uint8_t *frames[XDP_GLUE__BURST];
    uint8_t *umem = xsk__umem(x);
    uint32_t n = xsk__rx_peek(x, addrs, lens, burst_cap(max));

    for (uint32_t i = 0; i < n; i++)
        frames[i] = umem + addrs[i];
    uint32_t taken = (uint32_t)cx_engine__feed_burst(e, side, frames, lens, n, now_ms, flags);
    /* Frames held back stay at the head of the rx ring for the next call;
     * the engine copied what it took: those go back to the fill ring. */
    *held_back = taken < n;
    xsk__rx_release(x, taken);
    int err = taken ? xsk__rx_done(x, addrs, taken) : 0;
    return err ? err : (int)taken;
}

/* One released record of the engine's out buffer. */
struct tx_record {
    const uint8_t *vnet;          /* its virtio-net header (vnet_len bytes), or NULL */
    uint32_t vnet_len;
    const uint8_t *frame;         /* the Ethernet frame after it */
    uint32_t len;
};

/* The tx frames reserved and not yet written: frame i at umem + addrs[i]. */
struct tx_frames {
    uint8_t *umem;
    const uint64_t *addrs;
    uint32_t room;                /* frames left */
    uint32_t frame_size;
    uint32_t *lens;               /* set for each frame written */
};

/*
 * One released record into tx frames, written in place in the UMEM: the
 * frame copied once (its vnet header is not sent), its TCP/UDP checksum
 * finished in the copy.  Returns how many tx frames it became (today always
 * one), 0 when it needs more than out->room (it waits for the next burst),
 * or -EMSGSIZE when no tx frame can ever carry it (the caller skips it and
 * counts it).  The one place that shapes what goes on the wire: segmenting
 * a GSO record (its vnet header says how) would make one record many
 * frames here.
 */
static int tx__emit_record(const struct tx_record *r, const struct tx_frames *out)
{
    if (r->len == 0 || r->len > out->frame_size)
        return -EMSGSIZE;
    if (out->room < 1)
        return 0;
    uint8_t *to = out->umem + out->addrs[0];
    memcpy(to, r->frame, r->len);
    l4_checksum_finish(to, r->len);
    out->lens[0] = r->len;
    return 1;
}

int xdp_glue__tx_from_engine(struct xsk *x, struct cx_engine *e, uint32_t max)
{
    uint64_t addrs[XDP_GLUE__BURST];
    uint32_t lens[XDP_GLUE__BURST];
    uint8_t *umem = xsk__umem(x);
    uint32_t hdr = cx_engine__out_header_len(e);
    uint32_t frame_size = xsk__frame_size(x);
    const uint8_t *out;
    size_t pending = cx_engine__out_peek(e, &out), pos = 0;

    if (pending < hdr)
        return 0;                               /* nothing released: reserve nothing */
    uint32_t want = burst_cap(max);
    uint32_t room = xsk__tx_reserve(x, want, addrs), used = 0;
    while (used < room && pending - pos >= hdr) {
        uint32_t len = cx_rd32(out + pos);
        uint32_t vnet = hdr == 8 ? cx_rd32(out + pos + 4) : 0;
        if (pending - pos - hdr < len)
            break;                              /* never here: records are whole */
        int got = -EMSGSIZE;
        if (vnet <= len) {
            const uint8_t *at = out + pos + hdr;
            struct tx_record r = { vnet ? at : NULL, vnet, at + vnet, len - vnet };
            struct tx_frames f = { umem, addrs + used, room - used, frame_size, lens + used };
            got = tx__emit_record(&r, &f);
        }
        if (got == 0)
            break;                              /* wants more frames than are left */
        if (got < 0) {
            /* Not for this outdev: what came before it is in tx frames
             * already, so it leaves the out buffer first; then this one is
             * skipped and counted (outdev_cut). */
            cx_engine__out_consume(e, pos);
            size_t left = pending - pos;
            cx_engine__out_skip_record(e);
            pending = cx_engine__out_peek(e, &out);
            pos = 0;
            if (pending == left)
                break;                          /* mid-record: nothing skipped */
            continue;
        }
        used += (uint32_t)got;
        pos += hdr + len;
    }
    /* The records written leave the out buffer before the kick: once
     * queued, a frame is the kernel's, so a kick that fails cannot make
     * them go out twice (they stay in the tx ring, counted by
     * xsk__tx_pending, and the next kick sends them). */
    cx_engine__out_consume(e, pos);
    int err = xsk__tx_submit(x, lens, used);
    if (err < 0)
        return err;
    /* One kick per batch, not per burst: while the engine has more and
     * the ring had room for a whole burst, the caller's next call queues
     * more first.  The last burst, a short one (ring or tx frames full) or
     * an empty one kicks. */
    if (room == want && used == room && cx_engine__out_peek(e, &out) >= hdr)
        return (int)used;
    err = xsk__tx_kick(x);
    return err ? err : (int)used;
}
