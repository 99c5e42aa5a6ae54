/*
 * chardev_glue.h - chardev sockets meet the engine.
 *
 * One call reads the inputs' sockets, feeds the whole records read to the
 * engine and writes what they released to the outdev's socket.  A frame that
 * arrives alone (COLO's request and reply traffic) costs one turn, where
 * three calls and their Python took several times as long.  Under load the
 * same call goes round the inputs again while they keep bringing data, so
 * that the loop's Python runs once for many records, not once per read
 * (a turn's Python cost more than the engine's work on the records of a
 * read of 1400 B frames).  It stops as soon as there is something only the
 * caller can decide: an input gone, broken or held back by flow control
 * for good, a checkpoint request or a drop, an outdev that is full or failed.
 * The caller owns the buffers and decides what the results mean
 * (colo_xdp.transport.chardev.roles).
 */
#ifndef CX_CHARDEV_GLUE_H
#define CX_CHARDEV_GLUE_H

#include "cx_engine.h"

/* cdef-begin */

/* A round after the first only when the one before read this much... */
#define CHARDEV_GLUE_MORE 16384
/* ... and no more rounds once a call has read this much. */
#define CHARDEV_GLUE_BUDGET 1048576       /* 1 MiB: a few ms of frames at most */
/* A call ends at once on a checkpoint request or a drop; at this many
 * other events (new connections), too. */
#define CHARDEV_GLUE_EVENTS 256

/* One chardev input: its socket and its buffer, owned by the caller. */
struct chardev_glue__input {
    int fd;               /* the socket (non-blocking reads); -1: not read */
    int side;             /* CX_PRIMARY or CX_SECONDARY */
    uint8_t *buf;         /* cap bytes */
    uint64_t cap;
    uint64_t chunk;       /* most bytes one recv asks for; cap >= chunk +
                           * the longest record, so a partial record never
                           * leaves a read without room */
    /* Kept across calls; the caller may read and set them between calls. */
    uint64_t start, end;  /* buf[start, end): read, not yet taken */
    int held;             /* flow control holds it: what buf has is fed
                           * again, the socket is not read meanwhile */
    /* What the last chardev_glue__pump did with it. */
    int64_t nread;        /* its last recv: bytes, 0 when the peer closed,
                           * -errno (-EAGAIN: nothing waited or not read) */
    int feed;             /* its last feed: CX_FEED_DONE, CX_FEED_BLOCKED,
                           * or -EPROTO (framing lost; start and end are
                           * left as they were after the read) */
    uint64_t read;        /* bytes read in the call */
    uint64_t took;        /* bytes of records the engine took in the call */
};

/* What one chardev_glue__pump did beyond its inputs. */
struct chardev_glue__pump {
    int64_t nsent;        /* the last write to out_fd: bytes, or -errno;
                           * 0 when nothing was released or out_fd < 0 */
    uint64_t out_left;    /* bytes still in the engine's out buffer */
    uint32_t rounds;      /* rounds of reads made */
};

/* Round 1: read ins[0] once (up to its chunk, at buf + end; a partial
 * record first slides to the front), feed the records in buf[start, end)
 * (flags: CX_FEED_*) and write the engine's out buffer to out_fd (-1: leave
 * it to the caller, and stop after round 1).  A held input is fed what it
 * has first and read only if that frees it.  Then, up to max_rounds, every
 * input in turn, while the round before read CHARDEV_GLUE_MORE bytes (or
 * fed something while an input was held: flow control going back and
 * forth) and the call has read less than CHARDEV_GLUE_BUDGET; a round ends the call
 * early when an input's peer closed or its read failed, its framing was
 * lost, the engine asked for a checkpoint or dropped a frame (or has
 * CHARDEV_GLUE_EVENTS other events), or a write failed or left bytes
 * behind. */
void chardev_glue__pump(struct cx_engine *e, struct chardev_glue__input *const *ins, size_t n,
                        uint32_t max_rounds, uint64_t now_ms, int flags, int out_fd,
                        struct chardev_glue__pump *r);

/* Write the engine's out buffer to fd (non-blocking) and consume what went
 * out.  Returns the bytes written (0: nothing waited) or -errno (-EAGAIN:
 * the socket is full); *left is what stays in the out buffer. */
int64_t chardev_glue__write(struct cx_engine *e, int fd, uint64_t *left);

/* cdef-end */

#endif /* CX_CHARDEV_GLUE_H */
