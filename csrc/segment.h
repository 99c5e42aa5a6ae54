/*
 * segment.h - one frame into wire frames: a guest's TSO/GSO/USO super-frame
 * cut to fit the outdev, each piece with its TCP/UDP checksum in full (a
 * guest that offloads checksums leaves only the pseudo-header sum).
 *
 *   segment__plan(frame, mtu, max_len)   how many wire frames, cut where
 *   segment__write(plan, frame, i, buf)  wire frame i into the caller's buffer
 *
 * Each wire frame is written on its own into a buffer the caller gives (a
 * UMEM frame in practice), so nothing is copied twice.  Nothing here
 * prints, allocates or keeps state; 0 (or a length) on success, -errno on
 * failure.  The region between the cdef markers is read verbatim by
 * csrc/build_cffi.py, so it holds plain declarations only.
 */
#ifndef CX_SEGMENT_H
#define CX_SEGMENT_H

#include <stdint.h>

/* cdef-begin */

/* The fewest payload bytes a cut piece may carry: a smaller max_len than
 * the headers plus this is refused (-EMSGSIZE), not cut into slivers. */
#define SEGMENT__MIN_PIECE 64

/* How a frame goes out; filled by segment__plan, read by segment__write. */
struct segment__plan {
    uint32_t count;        /* wire frames: 1 when the frame goes out whole */
    uint32_t piece;        /* payload bytes per wire frame but the last; 0: whole */
    uint32_t end;          /* where the IP packet ends (Ethernet padding after it) */
    uint32_t hdr_len;      /* Ethernet, tags, IP (+ extension headers), TCP/UDP header */
    uint16_t l3_off;       /* IPv4 or IPv6 header */
    uint16_t l4_off;       /* TCP or UDP header */
    uint8_t proto;         /* CX_IPPROTO_TCP or _UDP; 0: no checksum to finish */
    uint8_t ipv6;
};

/* Plan how frame f (len bytes) leaves where no IP packet may be longer than
 * mtu (the outdev's) and no wire frame longer than max_len (a UMEM frame).
 * A frame that fits goes out whole (count 1), its TCP/UDP checksum
 * finished where it has one: TCP or UDP over IPv4, or over IPv6 with
 * hop-by-hop and destination options headers, untagged or with up to two
 * tags; left as it is: UDP over IPv4 without a checksum (0), fragments, IPv6
 * with a routing header, anything else.  A longer one is cut: TCP into
 * segments as long as fit (sequence numbers, IPv4 ids and lengths set per
 * segment, FIN and PSH on the last, CWR on the first), UDP into datagrams of
 * the most payload that fits (a UDP super-frame does not say the size its
 * sender cut at: docs/xdp.md).
 * Returns 0; -EMSGSIZE: too long and not cut (not TCP/UDP over IPv4/IPv6,
 * an IPv4 fragment, an IPv6 routing or fragment header, or the limits
 * leave less than SEGMENT__MIN_PIECE for payload); -EINVAL: an empty frame,
 * or headers that do not agree with len (a truncated super-frame). */
int segment__plan(const uint8_t *f, uint32_t len, uint32_t mtu, uint32_t max_len,
                  struct segment__plan *plan);

/* Write wire frame i (0 .. plan->count-1) of frame f (len bytes, as
 * planned) into buf (room bytes).
 * Returns its length, or -ENOSPC when room is short, -EINVAL for an i past
 * the plan. */
int segment__write(const struct segment__plan *plan, const uint8_t *f, uint32_t len,
                   uint32_t i, uint8_t *buf, uint32_t room);

/* cdef-end */

#endif /* CX_SEGMENT_H */
