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
 * sends a frame its IPv4 TCP/UDP checksum is computed in full; a frame whose
 * checksum was right keeps the same value.  UDP without a checksum (0) and
 * fragments are left alone.
 */
static void l4_checksum_finish(uint8_t *f, uint32_t len)
{
    if (len < CX_ETH_HLEN + CX_IP_HLEN_MIN || cx_rd16(f + 12) != CX_ETH_P_IP)
        return;
    uint8_t *ip = f + CX_ETH_HLEN;
    uint32_t ihl = (ip[0] & 0x0f) * 4u, tot = cx_rd16(ip + 2);
    if ((ip[0] >> 4) != 4 || ihl < CX_IP_HLEN_MIN || tot < ihl || CX_ETH_HLEN + tot > len ||
        (cx_rd16(ip + 6) & 0x3fff))
        return;
    uint8_t proto = ip[9];
    uint8_t *l4 = ip + ihl;
    uint32_t l4_len = tot - ihl, at;
    if (proto == CX_IPPROTO_TCP && l4_len >= CX_TCP_HLEN_MIN)
        at = 16;
    else if (proto == CX_IPPROTO_UDP && l4_len >= CX_UDP_HLEN && (l4[6] || l4[7]))
        at = 6;
    else
        return;
    l4[at] = l4[at + 1] = 0;
    uint32_t sum = csum_add(0, ip + 12, 8) + proto + l4_len;
    uint16_t c = csum_fold(csum_add(sum, l4, l4_len));
    if (proto == CX_IPPROTO_UDP && c == 0)
        c = 0xffff;
    l4[at] = c >> 8;
    l4[at + 1] = c & 0xff;
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

int xdp_glue__tx_from_engine(struct xsk *x, struct cx_engine *e, uint32_t max)
{
    static uint8_t scratch[XDP_GLUE__BURST * XSK__FRAME_SIZE_MAX];
    uint32_t lens[XDP_GLUE__BURST];
    size_t rec_len[XDP_GLUE__BURST];
    uint32_t hdr = cx_engine__out_header_len(e);
    uint32_t frame_size = xsk__frame_size(x);
    uint32_t want = burst_cap(max), n = 0;
    const uint8_t *out;
    size_t pending = cx_engine__out_peek(e, &out), pos = 0, scratch_pos = 0;

    while (n < want && pending - pos >= hdr) {
        uint32_t len = cx_rd32(out + pos);
        uint32_t vnet = hdr == 8 ? cx_rd32(out + pos + 4) : 0;
        if (pending - pos - hdr < len)
            break;                              /* never here: records are whole */
        if (vnet > len || len - vnet > frame_size || len == vnet) {
            if (n)                              /* send what came before it first */
                break;
            cx_engine__out_skip_record(e);
            out = NULL;
            pending = cx_engine__out_peek(e, &out);
            continue;
        }
        lens[n] = len - vnet;
        rec_len[n] = hdr + len;
        memcpy(scratch + scratch_pos, out + pos + hdr + vnet, lens[n]);
        l4_checksum_finish(scratch + scratch_pos, lens[n]);
        scratch_pos += lens[n];
        pos += hdr + len;
        n++;
    }
    if (!n)
        return 0;
    int sent = xsk__tx_burst(x, scratch, lens, n);
    if (sent < 0)
        return sent;
    size_t done = 0;
    for (int i = 0; i < sent; i++)
        done += rec_len[i];
    cx_engine__out_consume(e, done);
    return sent;
}
