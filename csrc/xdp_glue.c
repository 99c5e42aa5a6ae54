/*
 * xdp_glue.c - AF_XDP sockets meet the engine and the chardev framing.
 */
#include "xdp_glue.h"

#include <errno.h>
#include <string.h>

static inline uint32_t rd32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static uint32_t burst_cap(uint32_t max)
{
    return max && max < XDP_GLUE__BURST ? max : XDP_GLUE__BURST;
}

int xdp_glue__rx_to_engine(struct xsk *x, struct cx_engine *e, int side, uint64_t now_ms,
                           uint32_t max)
{
    uint64_t addrs[XDP_GLUE__BURST];
    uint32_t lens[XDP_GLUE__BURST];
    const uint8_t *frames[XDP_GLUE__BURST];
    uint8_t *umem = xsk__umem(x);
    uint32_t n = xsk__rx_burst(x, addrs, lens, burst_cap(max));

    for (uint32_t i = 0; i < n; i++)
        frames[i] = umem + addrs[i];
    cx_engine__feed_burst(e, side, frames, lens, n, now_ms);
    /* The engine copied what it keeps: the frames go back to the fill ring. */
    int err = n ? xsk__rx_done(x, addrs, n) : 0;
    return err ? err : (int)n;
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
        uint32_t len = rd32(out + pos);
        uint32_t vnet = hdr == 8 ? rd32(out + pos + 4) : 0;
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
