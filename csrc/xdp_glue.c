/*
 * xdp_glue.c - AF_XDP sockets meet the engine and the chardev framing.
 */
#include "xdp_glue.h"

#include "classify.h"   /* struct cx_xdp_meta: what the classifier says of a frame */
#include "segment.h"

#include <errno.h>
#include <string.h>

static uint32_t burst_cap(uint32_t max)
{
    return max && max < XDP_GLUE__BURST ? max : XDP_GLUE__BURST;
}

/* The engine's mark for a frame from the classifier's metadata in front of
 * it (xsk__rx_done clears the magic, so a frame without metadata has none). */
static uint8_t mark_of(const uint8_t *frame)
{
    struct cx_xdp_meta meta;
    memcpy(&meta, frame - sizeof(meta), sizeof(meta));
    if (meta.magic != CX_XDP_META_MAGIC)
        return 0;
    return meta.flags & CX_XDP_META_F_PASSTHROUGH ? CX_MARK_PASSTHROUGH : 0;
}

int xdp_glue__rx_to_engine(struct xsk *x, struct cx_engine *e, int side, uint64_t now_ms,
                           uint32_t max, int flags, int *held_back)
{
    uint64_t addrs[XDP_GLUE__BURST];
    uint32_t lens[XDP_GLUE__BURST];
    uint8_t more[XDP_GLUE__BURST];
    const uint8_t *frames[XDP_GLUE__BURST];
    uint8_t marks[XDP_GLUE__BURST];
    uint32_t frame_lens[XDP_GLUE__BURST];
    uint32_t first_desc[XDP_GLUE__BURST + 1];
    uint8_t *umem = xsk__umem(x);
    uint32_t want = burst_cap(max), n = 0, slot = 0;
    uint32_t descs = xsk__rx_peek(x, addrs, lens, more, XDP_GLUE__BURST);

    /* Descriptors into frames: one descriptor is a frame in place; a frame
     * in several (multi-buffer) is copied whole into one of the socket's
     * buffers, as many per call as it has.  One too long for the engine is
     * given to it with its length alone, to be counted as an oversize drop
     * (the engine reads no byte of such a frame). */
    for (uint32_t d = 0; d < descs && n < want;) {
        uint32_t k = 1;
        while (more[d + k - 1])
            k++;
        if (k == 1) {
            frames[n] = umem + addrs[d];
            frame_lens[n] = lens[d];
        } else {
            if (slot == XSK__WHOLE_SLOTS)
                break;
            frames[n] = xsk__rx_whole(x, slot++, addrs + d, lens + d, k, &frame_lens[n]);
            if (!frames[n]) {
                if (frame_lens[n] <= CX_NET_BUFSIZE)
                    break;                      /* no memory: try again next call */
                frames[n] = umem + addrs[d];
            }
        }
        marks[n] = mark_of(umem + addrs[d]);   /* the metadata is in front of the first */
        first_desc[n++] = d;
        d += k;
        first_desc[n] = d;
    }
    uint32_t taken = n ? (uint32_t)cx_engine__feed_burst(e, side, frames, frame_lens, marks,
                                                         n, now_ms, flags) : 0;
    /* Frames held back stay at the head of the rx ring for the next call;
     * the engine copied what it took: those go back to the fill ring. */
    *held_back = taken < n;
    uint32_t done = taken ? first_desc[taken] : 0;
    xsk__rx_release(x, done);
    int err = done ? xsk__rx_done(x, addrs, done) : 0;
    return err ? err : (int)taken;
}

int xdp_glue__tx_from_engine(struct xsk *x, struct cx_engine *e, uint32_t max)
{
    static uint8_t scratch[XDP_GLUE__BURST * XSK__FRAME_SIZE_MAX];
    uint32_t lens[XDP_GLUE__BURST];
    size_t rec_len[XDP_GLUE__BURST];
    uint32_t hdr = cx_engine__out_header_len(e);
    uint32_t frame_size = xsk__frame_size(x);
    uint32_t mtu = xsk__mtu(x) ? xsk__mtu(x) : frame_size;
    uint32_t room = xsk__tx_room(x);
    uint32_t want = burst_cap(max), n = 0;
    const uint8_t *out;
    size_t pending = cx_engine__out_peek(e, &out), pos = 0, scratch_pos = 0;

    if (want > room)
        want = room;                    /* a record's frames go out all, or none */
    while (n < want && pending - pos >= hdr) {
        uint32_t len = cx_rd32(out + pos);
        uint32_t vnet = hdr == 8 ? cx_rd32(out + pos + 4) : 0;
        struct segment__plan plan;
        if (pending - pos - hdr < len)
            break;                              /* never here: records are whole */
        const uint8_t *frame = out + pos + hdr + vnet;
        /* A frame longer than the outdev takes is cut (segment.c); one that
         * cannot be, or is inconsistent, or would need more than a burst, is
         * skipped and counted (outdev_cut). */
        if (vnet > len || len == vnet ||
            segment__plan(frame, len - vnet, mtu, frame_size, &plan) < 0 ||
            plan.count > XDP_GLUE__BURST) {
            if (n)                              /* send what came before it first */
                break;
            cx_engine__out_skip_record(e);
            out = NULL;
            pending = cx_engine__out_peek(e, &out);
            continue;
        }
        if (n + plan.count > want)
            break;
        for (uint32_t i = 0; i < plan.count; i++) {
            int w = segment__write(&plan, frame, len - vnet, i, scratch + scratch_pos,
                                   frame_size);
            lens[n + i] = (uint32_t)w;          /* w > 0: planned for frame_size */
            rec_len[n + i] = 0;
            scratch_pos += (uint32_t)w;
        }
        n += plan.count;
        rec_len[n - 1] = hdr + len;             /* the record is done with its last frame */
        pos += hdr + len;
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
