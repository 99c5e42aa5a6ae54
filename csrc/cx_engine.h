/*
 * cx_engine.h - colo-xdp compare engine, the C core behind colo_xdp.engine.
 *
 * Sans-I/O: frames and the time go in, actions come out.  Nothing in here
 * reads a socket or a clock.  The region between the cdef markers is read
 * verbatim by csrc/build_cffi.py, so it holds plain declarations only.
 *
 * Return convention: 0 (or a count) on success, -errno on failure.
 */
#ifndef CX_ENGINE_H
#define CX_ENGINE_H

#include <stddef.h>
#include <stdint.h>

#include "cx_wire.h"   /* struct cx_rule, protocol numbers, byte readers */

/* cdef-begin */

/* QEMU's NET_BUFSIZE: the largest frame a chardev stream may carry. */
#define CX_NET_BUFSIZE 69632
/* A record length past this is no frame anyone sent (QEMU's largest is
 * CX_NET_BUFSIZE; a GSO super-frame with its vnet header stays far under):
 * the stream has lost its framing, and skipping that many bytes would
 * swallow the good frames behind it. */
#define CX_FRAMING_LOST_LEN 1048576   /* 1 MiB */
/* QEMU's sizeof(struct virtio_net_hdr_v1_hash): larger vnet headers are
 * treated as a misconfigured stream and the frame is not parsed. */
#define CX_VNET_HDR_MAX 20

#define CX_PRIMARY 0
#define CX_SECONDARY 1

/* Event kinds. */
#define CX_EV_CHECKPOINT 1    /* reason: CX_CKPT_* */
#define CX_EV_DROP 2          /* reason: CX_DROP_* */
#define CX_EV_CONN_NEW 3
#define CX_EV_CONN_EVICT 4

/* Why a checkpoint was requested. */
#define CX_CKPT_MISMATCH 1
#define CX_CKPT_TIMEOUT 2
#define CX_CKPT_QUEUE_FULL 3
#define CX_CKPT_TABLE_FULL 4
#define CX_CKPT__COUNT 5

/* Why a frame was dropped (never released). */
#define CX_DROP_UNSUPPORTED 1 /* secondary frame that is not compared */
#define CX_DROP_QUEUE_FULL 2  /* its side of the connection held max_queue_size */
#define CX_DROP_TABLE_FULL 3  /* no connection slot and none idle to evict */
#define CX_DROP_FLUSHED 4     /* secondary frame discarded by a checkpoint */
#define CX_DROP_FAILOVER 5    /* secondary frame after failover */
#define CX_DROP_EMPTY 6       /* zero-length frame */
#define CX_DROP_OVERSIZE 7    /* length over CX_NET_BUFSIZE */
#define CX_DROP_TRUNCATED 8   /* peer went away mid-frame (reported by a transport) */
#define CX_DROP_NO_MEMORY 9   /* the frame could not be stored or released */
#define CX_DROP_PASSTHROUGH 10 /* secondary frame of a passthrough flow */
#define CX_DROP_FRAG_TIMEOUT 11 /* fragment of a datagram not whole in reasm_timeout_ms */
#define CX_DROP_FRAG_OVERLAP 12 /* fragment of a datagram with overlapping fragments */
#define CX_DROP_FRAG_LIMIT 13   /* fragment past the reassembly limits */
#define CX_DROP__COUNT 14

/* IP fragment reassembly: what became of a datagram (counters.frag). */
#define CX_FRAG_REASSEMBLED 0 /* whole: compared as one frame */
#define CX_FRAG_TIMED_OUT 1   /* not whole within reasm_timeout_ms: dropped */
#define CX_FRAG_OVERLAP 2     /* overlapping fragments (RFC 5722): dropped */
#define CX_FRAG_OVER_LIMIT 3  /* past a reassembly limit: dropped */
#define CX_FRAG__COUNT 4

/* Reassembly defaults (cx_config fields left 0 take these). */
#define CX_REASM_TIMEOUT_MS 3000        /* as compare_timeout: no frame waits longer */
#define CX_REASM_MAX_BYTES 4194304      /* all fragments held, one side (4 MiB) */
#define CX_REASM_MAX_DATAGRAMS 1024     /* datagrams being reassembled, one side */
#define CX_REASM_MAX_FRAGS 64           /* fragments of one datagram */
#define CX_REASM_MAX_PER_HOST 64        /* datagrams being reassembled per source
                                           address, one side */

/* Why a primary frame was released. */
#define CX_REL_MATCHED 0      /* compared equal with the secondary */
#define CX_REL_UNSUPPORTED 1  /* not compared: ARP, ND/MLD, other EtherTypes,
                                 malformed */
#define CX_REL_NO_PAYLOAD 2   /* TCP segment without payload (SYN, ACK, FIN) */
#define CX_REL_RETRANSMIT 3   /* TCP data at or below the compared sequence */
#define CX_REL_FLUSHED 4      /* released by a checkpoint */
#define CX_REL_FAILOVER 5     /* after failover, or flushed by it */
#define CX_REL_PASSTHROUGH 6  /* a flow on the passthrough list: not compared */
#define CX_REL__COUNT 7

/* Hold time of released primary frames (counters.hold_hist): how long each
 * waited in the engine, released at - arrived, in whole ms.  Bucket 0 holds
 * 0 ms, bucket 1 holds 1 ms, bucket b (2..14) holds (2^(b-2), 2^(b-1)] ms,
 * so the upper bounds (Prometheus le, inclusive) are 0, 1, 2, 4, ... 8192;
 * bucket 15 holds the rest (over 8192 ms: +Inf).  That is
 * b = held ? min(1 + ceil(log2(held)), 15) : 0. */
#define CX_HOLD_BUCKETS 16

/* Flow control (cx_engine__feed_stream, cx_engine__feed_burst). */
#define CX_FEED_FORCE 0x1     /* flag: take every frame; only the limits apply */
#define CX_FEED_DONE 0        /* every whole frame was taken */
#define CX_FEED_BLOCKED 1     /* stopped in front of a frame that would run its
                                 side ahead: leave it unread until the other
                                 side's feed makes room (or force it) */

struct cx_config {
    uint64_t compare_timeout_ms;     /* a frame older than this is expired */
    uint64_t expired_scan_cycle_ms;  /* how often to look for expired frames */
    uint32_t max_queue_size;         /* frames per side of a connection */
    uint32_t max_connections;        /* connection table limit */
    uint32_t max_events;             /* events kept between drains */
    uint32_t evidence_max_bytes;     /* miscompare evidence kept between drains;
                                        0: none captured */
    uint8_t vnet_hdr;                /* framing carries a vnet_hdr_len word */
    uint32_t flow_high_water;        /* frames one side may hold on a connection
                                        the other side holds nothing on before
                                        a feed stops there; 0: max_queue_size / 2 */
    /* IP fragment reassembly limits, per side; 0: the CX_REASM_* default */
    uint64_t reasm_timeout_ms;
    uint32_t reasm_max_bytes;
    uint32_t reasm_max_datagrams;
    uint32_t reasm_max_per_host;
};

/* A 5-tuple as it appears in the frame, with its VLAN tags: addresses in
 * network byte order as IPv6 (IPv4 mapped, ::ffff:a.b.c.d), ports in host
 * order (0 for protocols without ports), VIDs outer first.  No implicit
 * padding: keys compare with memcmp. */
struct cx_key {
    uint32_t saddr[4];
    uint32_t daddr[4];
    uint16_t sport;
    uint16_t dport;
    uint16_t vid[2];     /* 802.1Q/802.1ad VIDs, outer first; 0 past ntags */
    uint8_t proto;
    uint8_t family;      /* CX_FAMILY_IPV4 or CX_FAMILY_IPV6 */
    uint8_t ntags;       /* 0, 1 or 2 */
    uint8_t pad;
};

/* Events are coalesced between drains: one record per kind, reason, side
 * and connection, with how many times it happened. */
struct cx_event {
    uint8_t kind;
    uint8_t reason;
    uint8_t side;        /* for drops */
    uint8_t has_key;     /* 0 when the frame had no connection */
    struct cx_key key;
    uint32_t count;
};

/* One connection, for stats. */
struct cx_conn_info {
    struct cx_key key;
    uint8_t passthrough;            /* always 0 now: passthrough flows take no
                                       connection (kept for the stats rows) */
    uint32_t queued[2];             /* frames held (a reassembled datagram:
                                       its fragments) */
    uint64_t created_ms;
    uint64_t last_ms;               /* last frame seen */
    uint64_t matched;               /* primary frames released as matched */
    uint64_t released;              /* primary frames released, any reason */
    uint64_t mismatches;
    uint64_t checkpoints;           /* checkpoint requests it caused */
};

/* Miscompare evidence: after a checkpoint request for a mismatch or a
 * timeout, the frames involved (each frame once), as records of this header
 * followed by len bytes of frame, 8-byte aligned. */
struct cx_evidence {
    uint32_t event;                 /* index in the events of the same drain,
                                       or 0xffffffff if that event was lost */
    uint8_t side;
    uint8_t reason;                 /* CX_CKPT_* */
    uint16_t reserved;
    uint32_t vnet_len;
    uint32_t len;
    uint64_t born_ms;
};

struct cx_counters {
    uint64_t frames_in[2];
    uint64_t bytes_in[2];
    uint64_t released[CX_REL__COUNT];   /* primary frames, by reason */
    uint64_t released_bytes;
    uint64_t matched_secondary;         /* secondary frames consumed by a match */
    uint64_t skipped_secondary;         /* TCP secondary segments needing no compare */
    uint64_t dropped[2][CX_DROP__COUNT];
    uint64_t checkpoints[CX_CKPT__COUNT];
    uint64_t mismatches_by_proto[3];    /* tcp, udp+icmp, other */
    uint64_t conns_created;
    uint64_t conns_evicted;
    uint64_t events_lost;               /* events past max_events between drains */
    uint64_t evidence_lost;             /* evidence frames past evidence_max_bytes */
    uint64_t outdev_cut;                /* released frames cut short by an outdev
                                           that went away mid-record */
    uint64_t outdev_unsent;             /* released frames queued on an AF_XDP
                                           socket that closed before sending them */
    uint64_t held_back[2];              /* feeds stopped by flow control */
    uint64_t frag[2][CX_FRAG__COUNT];   /* datagrams by reassembly outcome */
    uint64_t frag_held[2];              /* fragments now waiting for the rest
                                           of their datagram (in queued) */
    /* Every primary frame released (the sum of released[]) counted once
     * here by how long it was held (see CX_HOLD_BUCKETS), and the sum of
     * those hold times in ms. */
    uint64_t hold_hist[CX_HOLD_BUCKETS];
    uint64_t hold_ms_sum;
};

struct cx_engine;

/* Lifecycle.  cx_engine__new returns NULL when out of memory or when the
 * configuration is unusable (zero queue size, zero connections). */
struct cx_engine *cx_engine__new(const struct cx_config *cfg);
void cx_engine__free(struct cx_engine *e);

/* Feed one frame (vnet header included, vnet_len bytes long) seen at now_ms,
 * without flow control (as CX_FEED_FORCE). */
void cx_engine__feed(struct cx_engine *e, int side, const uint8_t *frame,
                     uint32_t len, uint32_t vnet_len, uint64_t now_ms);

/*
 * Flow control: a feed stops in front of a frame when taking it would run
 * its side ahead of the other, that is when its connection already holds
 * flow_high_water frames of this side and none of the other's, or when it
 * opens a connection and the table is full of connections holding frames.
 * The caller leaves the rest unread (in its socket or rx ring: backpressure)
 * until the other side's feed has made room, and feeds with CX_FEED_FORCE
 * when both sides are held back or the other side has stopped: then the
 * limits (max_queue_size, max_connections) decide, as without flow control.
 */

/* Feed a burst of n frames (AF_XDP rx: pointers into UMEM), no vnet header.
 * Returns how many were taken, from the first: fewer than n when held back. */
size_t cx_engine__feed_burst(struct cx_engine *e, int side, const uint8_t *const *frames,
                             const uint32_t *lens, size_t n, uint64_t now_ms, int flags);

/* Feed whole records of a QEMU-framed stream from buf.  *consumed says how
 * many bytes were used: a partial record at the end is left, and so is
 * everything from a frame held back.  Returns CX_FEED_DONE or
 * CX_FEED_BLOCKED.  A zero-length record is a well-formed empty frame:
 * counted (empty) and read past.  A record over CX_NET_BUFSIZE is counted
 * (oversize) and its body skipped as it arrives, across calls; the frames
 * after it are read on.  A length over CX_FRAMING_LOST_LEN is counted
 * (oversize) and returns -EPROTO with *consumed in front of it: the framing
 * is lost, the caller closes the stream. */
int cx_engine__feed_stream(struct cx_engine *e, int side, const uint8_t *buf,
                           size_t len, uint64_t now_ms, int flags, size_t *consumed);

/* A side's stream has a new peer: forget the rest of an oversize record
 * still being skipped. */
void cx_engine__stream_reset(struct cx_engine *e, int side);

/* Checkpoint requests outstanding since the last cx_engine__checkpoint (or
 * failover), as a mask of 1 << CX_CKPT_*: kept apart from the events, so a
 * request is never lost to a full event array.  0: none. */
uint32_t cx_engine__checkpoint_wanted(const struct cx_engine *e);

/* Run the expired-frame scan if it is due.  Returns the time of the next
 * scan, the deadline the caller should wake up at. */
uint64_t cx_engine__tick(struct cx_engine *e, uint64_t now_ms);

/* The time is now_ms, and nothing else happens (no scan): for the hold time
 * of the releases that are given no time (checkpoint, failover,
 * set_passthrough), which otherwise count it to the latest feed or tick. */
void cx_engine__set_time(struct cx_engine *e, uint64_t now_ms);

/* The COLO frame reports a checkpoint: release every queued primary frame in
 * per-connection order, discard queued secondary frames. */
void cx_engine__checkpoint(struct cx_engine *e);

/* Failover: flush as a checkpoint does, then stop comparing for good:
 * primary frames pass straight through, secondary frames are dropped. */
void cx_engine__failover(struct cx_engine *e);

/* Replace the passthrough list (n may be 0, at most CX_MAX_RULES).
 * Connections it now covers release their held primary frames and drop
 * their secondary ones.  Returns 0, or -E2BIG (too many rules) or -ENOMEM
 * with nothing changed. */
int cx_engine__set_passthrough(struct cx_engine *e, const struct cx_rule *rules, size_t n);

/* Fill up to max connections (creation order); returns how many there are. */
size_t cx_engine__conn_snapshot(struct cx_engine *e, struct cx_conn_info *out, size_t max);

/* The max connections most worth a look: most frames held, then most
 * recently seen; all of them in creation order when they fit.  One pass over
 * the table, a heap of max entries.  Returns how many were filled. */
size_t cx_engine__conn_top(struct cx_engine *e, struct cx_conn_info *out, size_t max);

/* Evidence since the last events_clear (cleared with the events). */
size_t cx_engine__evidence(struct cx_engine *e, const uint8_t **data);

/* A transport lost a partial record (peer gone mid-frame): count it. */
void cx_engine__note_drop(struct cx_engine *e, int side, int reason);

/* Released frames, already in the outdev's wire framing. */
size_t cx_engine__out_peek(struct cx_engine *e, const uint8_t **data);
void cx_engine__out_consume(struct cx_engine *e, size_t n);
/* The outdev went away in the middle of a record: skip the rest of it, so
 * the next peer starts on a record boundary, and count it (outdev_cut; the
 * frame stays counted as released).  Returns 1 if a record was cut, else 0. */
int cx_engine__out_abandon_partial(struct cx_engine *e);
/* Drop the whole record at the head of the out buffer (an outdev that cannot
 * carry it, e.g. larger than an AF_XDP frame): counted in outdev_cut. */
void cx_engine__out_skip_record(struct cx_engine *e);
/* n frames the outdev took from the out buffer never went out (left in the
 * tx ring of an AF_XDP socket that was closed): counted in outdev_unsent. */
void cx_engine__out_note_unsent(struct cx_engine *e, uint64_t n);
/* Bytes in front of each frame in the out buffer: 4, or 8 with vnet. */
uint32_t cx_engine__out_header_len(const struct cx_engine *e);

/* Events since the last clear. */
size_t cx_engine__events(struct cx_engine *e, const struct cx_event **events);
void cx_engine__events_clear(struct cx_engine *e);

const struct cx_counters *cx_engine__counters(struct cx_engine *e);
uint32_t cx_engine__connections(struct cx_engine *e);
/* Frames queued on one side over all connections. */
uint64_t cx_engine__queued(struct cx_engine *e, int side);

/* cdef-end */

#endif /* CX_ENGINE_H */
