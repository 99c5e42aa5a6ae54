/*
 * chardev_glue.h - chardev sockets meet the engine.
 *
 * A frame that arrives alone (COLO's request and reply traffic) costs a turn
 * of its own, and its latency is that turn: one call reads the input's
 * socket, feeds the whole records read and writes what they released to the
 * outdev's socket, where three calls and their Python took several times as
 * long.  The caller keeps the input's buffer and decides what a result means
 * (colo_xdp.transport.chardev.roles).
 */
#ifndef CX_CHARDEV_GLUE_H
#define CX_CHARDEV_GLUE_H

#include "cx_engine.h"

/* cdef-begin */

/* What one chardev_glue__read_feed_write did. */
struct chardev_glue__turn {
    int64_t nread;        /* recv's return: bytes read, 0 when the peer
                           * closed, or -errno (-EAGAIN: nothing waited);
                           * nothing was fed unless it is > 0 */
    int feed;             /* cx_engine__feed_stream's return: CX_FEED_DONE,
                           * CX_FEED_BLOCKED or -EPROTO (framing lost) */
    uint64_t consumed;    /* bytes of buf from start the feed took */
    int64_t nsent;        /* bytes written to out_fd, or -errno; 0 when
                           * nothing was released or out_fd < 0 */
    uint64_t out_left;    /* bytes still in the engine's out buffer */
};

/* Read up to room bytes from in_fd into buf + end (non-blocking), feed the
 * records in buf[start, end + nread) to the engine for side (flags:
 * CX_FEED_*), then write the engine's out buffer to out_fd (-1: leave it to
 * the caller) and consume what went out. */
void chardev_glue__read_feed_write(struct cx_engine *e, int side, int in_fd, uint8_t *buf,
                                   size_t start, size_t end, size_t room, uint64_t now_ms,
                                   int flags, int out_fd, struct chardev_glue__turn *t);

/* Write the engine's out buffer to fd (non-blocking) and consume what went
 * out.  Returns the bytes written (0: nothing waited) or -errno (-EAGAIN:
 * the socket is full); *left is what stays in the out buffer. */
int64_t chardev_glue__write(struct cx_engine *e, int fd, uint64_t *left);

/* cdef-end */

#endif /* CX_CHARDEV_GLUE_H */
