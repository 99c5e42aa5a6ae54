/*
 * xdp_glue.c - AF_XDP sockets meet the engine and the chardev framing.
 */
#include "xdp_glue.h"

#include "segment.h"

#include <errno.h>
#include <string.h>

static uint32_t burst_cap(uint32_t max)
{
    return max && max < XDP_GLUE__BURST ? max : XDP_GLUE__BURST;
}

int xdp_glue__rx_to_engine(struct xsk *x, struct cx_engine *e, int side, uint64_t now_ms,
                           uint32_t max, int flags, int *held_back)
{
    uint64_t addrs[XDP_GLUE__BURST];
    uint32_t lens[XDP_GLUE__BURST];
    uint8_t more[XDP_GLUE__BURST];
    const uint8_t *frames[XDP_GLUE__BURST];
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
        first_desc[n++] = d;
        d += k;
        first_desc[n] = d;
    }
    uint32_t taken = n ? (uint32_t)cx_engine__feed_burst(e, side, frames, frame_lens, n,
                                                         now_ms, flags) : 0;
    /* Frames held back stay at the head of the rx ring for the next call;
     * the engine copied what it took: those go back to the fill ring. */
    *held_back = taken < n;
    uint32_t done = taken ? first_desc[taken] : 0;
    xsk__rx_release(x, done);
    int err = done ? xsk__rx_done(x, addrs, done) : 0;
    return err ? err : (int)taken;
}

/* One released record of the engine's out buffer: the Ethernet frame after
 * its virtio-net header, if any (never sent: a super-frame is cut to the
 * MTU, not by the header's gso_size). */
struct tx_record {
    const uint8_t *frame;
    uint32_t len;
};

/* The tx frames reserved and not yet written: frame i at umem + addrs[i]. */
struct tx_frames {
    uint8_t *umem;
    const uint64_t *addrs;
    uint32_t room;                /* frames left */
    uint32_t frame_size;
    uint32_t mtu;                 /* the interface's: no IP packet longer */
    uint32_t *lens;               /* set for each frame written */
};

/*
 * One released record into tx frames, written in place in the UMEM: its
 * vnet header is not sent; a frame that fits is copied once with its
 * TCP/UDP checksum finished in the copy, a longer one (a guest's TSO/USO
 * super-frame) is cut to the MTU, each piece written straight into its tx
 * frame (segment.h).  Returns how many tx frames it became, 0 when it
 * needs more than out->room (it waits for the next burst), or -EMSGSIZE
 * when it can never go out so (empty, not cuttable, inconsistent, or more
 * pieces than a burst): the caller skips it and counts it.  The one place
 * that shapes what goes on the wire.
 */
static int tx__emit_record(const struct tx_record *r, const struct tx_frames *out)
{
    struct segment__plan plan;

    if (r->len == 0 || segment__plan(r->frame, r->len, out->mtu, out->frame_size, &plan) < 0 ||
        plan.count > XDP_GLUE__BURST)
        return -EMSGSIZE;
    if (plan.count > out->room)
        return 0;
    for (uint32_t i = 0; i < plan.count; i++) {
        int w = segment__write(&plan, r->frame, r->len, i, out->umem + out->addrs[i],
                               out->frame_size);
        if (w <= 0)
            return -EMSGSIZE;           /* never here: planned for frame_size */
        out->lens[i] = (uint32_t)w;
    }
    return (int)plan.count;
}

int xdp_glue__tx_from_engine(struct xsk *x, struct cx_engine *e, uint32_t max)
{
    uint64_t addrs[XDP_GLUE__BURST];
    uint32_t lens[XDP_GLUE__BURST];
    uint8_t *umem = xsk__umem(x);
    uint32_t hdr = cx_engine__out_header_len(e);
    uint32_t frame_size = xsk__frame_size(x);
    uint32_t mtu = xsk__mtu(x) ? xsk__mtu(x) : frame_size;
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
            struct tx_record r = { out + pos + hdr + vnet, len - vnet };
            struct tx_frames f = { umem, addrs + used, room - used, frame_size, mtu, lens + used };
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
