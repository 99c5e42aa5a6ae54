/*
 * xdp_glue.h - AF_XDP sockets meet the engine and the chardev framing.
 *
 * One call per burst, so Python never touches a frame in XDP mode: frames go
 * from the rx ring into the engine, and from the engine's releases into the
 * tx ring.  (forward uses the engine too, with comparing stopped, as framer.)
 */
#ifndef CX_XDP_GLUE_H
#define CX_XDP_GLUE_H

#include "cx_engine.h"
#include "xsk.h"

/* cdef-begin */

/* Frames moved per call at most. */
#define XDP_GLUE__BURST 256

/* Receive up to max frames and feed them to the engine (flags: CX_FEED_*);
 * return how many it took.  *held_back is 1 when flow control stopped the
 * feed: the rest stays in the rx ring, to be fed again once the other side
 * has caught up (or forced). */
int xdp_glue__rx_to_engine(struct xsk *x, struct cx_engine *e, int side, uint64_t now_ms,
                           uint32_t max, int flags, int *held_back);

/* Transmit up to max frames from the engine's out buffer, each released
 * record copied once, straight into tx frames of the UMEM (vnet header
 * left out, TCP/UDP checksum finished there; a record longer than the
 * interface's MTU or a UMEM frame cut into several: csrc/segment.h), and
 * consume the records queued.  A record that cannot go out so (not
 * cuttable, inconsistent, or empty) is skipped and counted (outdev_cut).
 * Returns the frames queued (0 with records pending: the tx ring or the tx
 * frames are full for now), or -errno when the kick failed: the records
 * queued are consumed all the same and wait in the tx ring
 * (xsk__tx_pending), never sent twice.  The kernel is kicked once a call
 * queues less than a full burst (max frames) or leaves nothing behind: a
 * caller goes on calling while this returns a count and frames are pending
 * (XdpOutdev.write_pending). */
int xdp_glue__tx_from_engine(struct xsk *x, struct cx_engine *e, uint32_t max);

/* cdef-end */

#endif /* CX_XDP_GLUE_H */
