/*
 * xsk.h - AF_XDP sockets over raw syscalls: UMEM, the four rings, bind in
 * copy mode, burst receive and burst transmit.  The C side of
 * colo_xdp/transport/xdp/xsk.py (through colo_xdp/native.py).
 *
 * One struct xsk is one socket bound to one rx queue of one interface, with
 * its own UMEM.  The UMEM's frames are split in two pools:
 *
 *   UMEM  [ rx frames: 0 .. rx_frames-1 | tx frames: rx_frames .. frame_count-1 ]
 *
 *   rx:  fill ring --> kernel --> rx ring --> caller (xsk__rx_burst)
 *          ^                                    |
 *          +------------ xsk__rx_done ----------+
 *
 *   tx:  free stack --xsk__tx_reserve--> caller writes the frame in place
 *          ^                                 | xsk__tx_submit, xsk__tx_kick
 *          +------- completion ring <------ kernel <-- tx ring <--+
 *
 * Received frames stay the caller's until it hands them back with
 * xsk__rx_done (in any order, in bursts).  Frames to transmit are written
 * straight into free tx frames, which come back through the completion ring.
 *
 * Nothing here prints or exits.  Return convention: 0 (or a count) on
 * success, -errno on failure.  The region between the cdef markers is read
 * verbatim by csrc/build_cffi.py, so it holds plain declarations only.
 */
#ifndef CX_XSK_H
#define CX_XSK_H

#include <stddef.h>
#include <stdint.h>

/* cdef-begin */

/* UMEM frame sizes the kernel takes in aligned mode (powers of two). */
#define XSK__FRAME_SIZE_MIN 2048
#define XSK__FRAME_SIZE_MAX 4096
/* In copy mode a received frame starts this far into its UMEM frame
 * (XDP_PACKET_HEADROOM). */
#define XSK__RX_HEADROOM 256
/* A multi-buffer socket puts a frame longer than its UMEM frame in several
 * descriptors; xsk__rx_whole copies one such frame into one of this many
 * buffers of the socket, each this long (QEMU's NET_BUFSIZE, the most the
 * engine takes: a longer frame is not copied). */
#define XSK__WHOLE_SLOTS 8
#define XSK__WHOLE_MAX 69632

/* Defaults for struct xsk__config fields left 0. */
#define XSK__DEFAULT_FRAME_SIZE 2048
#define XSK__DEFAULT_FRAME_COUNT 2048
#define XSK__DEFAULT_RING_SIZE 1024
#define XSK__DEFAULT_BIND_TIMEOUT_MS 1000

struct xsk__config {
    uint32_t ifindex;
    uint32_t queue;              /* rx queue to bind; frames on others are not seen */
    uint32_t frame_size;         /* XSK__FRAME_SIZE_MIN or _MAX; 0: default */
    uint32_t frame_count;        /* UMEM frames, half rx, half tx; 0: default */
    uint32_t ring_size;          /* each of the four rings, power of two; 0: default */
    uint32_t bind_timeout_ms;    /* keep retrying a bind that gets EBUSY; 0: default */
    uint32_t multi_buffer;       /* 1: bind with XDP_USE_SG where the kernel has it
                                  * (6.6), see xsk__rx_peek */
};

/* What xsk__open arranged, for the caller to report. */
struct xsk__info {
    uint64_t umem_bytes;
    uint32_t rx_frames;
    uint32_t tx_frames;
    uint32_t bind_retries;       /* binds refused with EBUSY before one worked */
    uint8_t multi_buffer;        /* bound with XDP_USE_SG (asked, and the kernel has it) */
    uint8_t memlock_raised;      /* RLIMIT_MEMLOCK was raised to register the UMEM */
    uint64_t memlock_limit;      /* the soft limit in force after open */
};

/* The kernel's per-socket counters (XDP_STATISTICS), then ours: the
 * syscalls made to wake the kernel against the bursts moved. */
struct xsk__stats {
    uint64_t rx_dropped;
    uint64_t rx_invalid_descs;
    uint64_t tx_invalid_descs;
    uint64_t rx_ring_full;
    uint64_t rx_fill_ring_empty_descs;
    uint64_t tx_ring_empty_descs;
    uint64_t tx_kicks;           /* sendto calls (only when the tx ring asks) */
    uint64_t tx_batches;         /* xsk__tx_submit calls that queued frames */
    uint64_t rx_wakeups;         /* recvfrom calls (only when the fill ring asks) */
    uint64_t rx_batches;         /* xsk__rx_peek calls that found frames */
    uint64_t tx_budget;          /* frames one kick sends at most */
};

struct xsk;

/* Open a socket, register its UMEM, map its rings, fill the fill ring and
 * bind it in copy mode to cfg->queue of cfg->ifindex.  -EBUSY from bind
 * (the queue's previous socket is still being torn down) is retried with
 * backoff for cfg->bind_timeout_ms.  -ENOBUFS: the UMEM is over
 * RLIMIT_MEMLOCK even after raising it as far as allowed.  *info may be NULL. */
int xsk__open(const struct xsk__config *cfg, struct xsk **out, struct xsk__info *info);
void xsk__close(struct xsk *x);

int xsk__fd(const struct xsk *x);
/* The UMEM: frame data lives at umem + addr. */
uint8_t *xsk__umem(const struct xsk *x);
uint64_t xsk__umem_size(const struct xsk *x);
uint32_t xsk__frame_size(const struct xsk *x);
/* The MTU of the socket's interface when it was opened; 0 if unknown. */
uint32_t xsk__mtu(const struct xsk *x);

/* Take up to max received frames: addrs[i] is the frame's offset in the
 * UMEM, lens[i] its length.
 * Returns the count (0 when none is waiting).  On a multi_buffer socket
 * these are descriptors, ending on a frame's last (see xsk__rx_peek). */
uint32_t xsk__rx_burst(struct xsk *x, uint64_t *addrs, uint32_t *lens, uint32_t max);

/* xsk__rx_burst in two steps, for a caller that may leave frames unread:
 * peek at up to max received descriptors (they stay at the head of the rx
 * ring), then release the first n of them, which become the caller's as if
 * xsk__rx_burst had taken them.  What is left is seen again by the next
 * peek; while it stays, the kernel counts frames past the ring as dropped.
 * On a multi_buffer socket a frame may span several descriptors: more[i]
 * is 1 when the frame goes on in descriptor i+1 (XDP_PKT_CONTD), and the
 * peek ends on a frame's last descriptor (a frame not all in the ring yet,
 * or longer than max descriptors, is not counted); more may be NULL on a
 * socket without multi_buffer. */
uint32_t xsk__rx_peek(struct xsk *x, uint64_t *addrs, uint32_t *lens, uint8_t *more,
                      uint32_t max);
void xsk__rx_release(struct xsk *x, uint32_t n);

/* Copy the n descriptors of one frame (as xsk__rx_peek gave them) into
 * buffer slot (0 .. XSK__WHOLE_SLOTS-1) of this socket, valid until the
 * slot is used again; *len is the frame's length.  NULL when the slot does
 * not exist, the buffers could not be allocated, or the frame is longer
 * than XSK__WHOLE_MAX (*len still says how long). */
const uint8_t *xsk__rx_whole(struct xsk *x, uint32_t slot, const uint64_t *addrs,
                             const uint32_t *lens, uint32_t n, uint32_t *len);

/* Give received frames back for the kernel to fill again.  Returns 0, or
 * -EINVAL if an address is not one of this socket's rx frames (nothing is
 * given back then). */
int xsk__rx_done(struct xsk *x, const uint64_t *addrs, uint32_t n);

/* Transmit in place, in three steps (libxdp's reserve / submit):
 *
 *   n = xsk__tx_reserve(x, want, addrs);   up to want free tx frames and
 *                                          ring slots; write frame i at
 *                                          umem + addrs[i]
 *   xsk__tx_submit(x, lens, used);         queue the first used of them
 *                                          (used <= n), give the rest back
 *   xsk__tx_kick(x);                       make the kernel send them
 *
 * Nothing else on the tx side may run between reserve and submit.
 * xsk__tx_reserve returns how many it reserved: fewer than want (maybe 0)
 * when tx frames or ring slots run out (completed frames are taken back
 * first).  xsk__tx_submit returns how many it queued, or -EMSGSIZE (a length
 * past a UMEM frame) or -EINVAL (an empty frame, or more than reserved):
 * then nothing is queued.  Frames once queued are the kernel's: a failed
 * kick (-errno) leaves them in the tx ring (xsk__tx_pending counts them),
 * the next kick sends them, and a close loses them. */
uint32_t xsk__tx_reserve(struct xsk *x, uint32_t n, uint64_t *addrs);
int xsk__tx_submit(struct xsk *x, const uint32_t *lens, uint32_t n);
int xsk__tx_kick(struct xsk *x);

/* The three steps for frames laid back to back in buf (lens[i] bytes each):
 * copied into tx frames, queued, kicked.  Returns how many were queued (at
 * most 256; fewer when tx frames or ring slots run out: call again after
 * xsk__tx_reap), or -errno: -EMSGSIZE for a frame longer than a UMEM frame
 * and -EINVAL for an empty one (nothing is sent then); another -errno if the
 * kick failed (what was queued stays queued, see xsk__tx_pending).
 * xsk__tx_queue is the same without the kick, for a caller that must know
 * how many were queued when the kick fails. */
int xsk__tx_burst(struct xsk *x, const uint8_t *buf, const uint32_t *lens, uint32_t n);
int xsk__tx_queue(struct xsk *x, const uint8_t *buf, const uint32_t *lens, uint32_t n);

/* The frames queued that the kernel has not read from the tx ring yet, in
 * order, up to max: what a socket about to be closed would never send (the
 * caller may copy them out of the UMEM and send them on another). */
uint32_t xsk__tx_unsent(const struct xsk *x, uint64_t *addrs, uint32_t *lens, uint32_t max);

/* Kick the kernel for frames still queued and take completed tx frames
 * back.  Returns the number of tx frames now free. */
int xsk__tx_reap(struct xsk *x);
/* Frames queued for transmit and not yet completed. */
uint32_t xsk__tx_pending(const struct xsk *x);

int xsk__stats(const struct xsk *x, struct xsk__stats *out);

/* cdef-end */

#endif /* CX_XSK_H */
