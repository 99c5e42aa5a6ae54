/*
 * xsk.c - AF_XDP sockets over raw syscalls (no libxdp): see xsk.h for the
 * frame pools and the calls.
 *
 * The four rings are shared with the kernel.  Each has a producer and a
 * consumer index in shared memory; we keep cached copies and touch the
 * shared ones only when the cache runs dry (peek, reserve) or to publish
 * (submit, release).  The ordering rules, as in the kernel's xsk_queue.h:
 *
 *   we consume (rx, completion): load-acquire the producer, then read the
 *     descriptors; finish reading them, then store-release the consumer.
 *   we produce (fill, tx): load-acquire the consumer before reusing slots;
 *     write the descriptors, then store-release the producer.
 *
 * Called from the one thread that owns the socket; nothing is locked.
 */
#define _GNU_SOURCE
#include "xsk.h"

#include <errno.h>
#include <linux/if_xdp.h>
#include <net/if.h>
#include <sys/ioctl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#ifndef AF_XDP
#define AF_XDP 44
#endif
#ifndef SOL_XDP
#define SOL_XDP 283
#endif
/* Newer than the build host's <linux/if_xdp.h> may be. */
#ifndef XDP_USE_NEED_WAKEUP
#define XDP_USE_NEED_WAKEUP (1 << 3)
#endif
#ifndef XDP_RING_NEED_WAKEUP
#define XDP_RING_NEED_WAKEUP (1 << 0)
#endif
#ifndef XDP_USE_SG
#define XDP_USE_SG (1 << 4)                 /* 6.6 on */
#endif
#ifndef XDP_PKT_CONTD
#define XDP_PKT_CONTD (1 << 0)              /* 6.6 on */
#endif
#ifndef XDP_MAX_TX_SKB_BUDGET
#define XDP_MAX_TX_SKB_BUDGET 9           /* <linux/if_xdp.h> of 6.17 on */
#endif

/* In copy mode one TX kick moves at most this many frames (the kernel's
 * TX_BATCH_SIZE) and answers EAGAIN while more wait, unless the socket's
 * budget is raised (XDP_MAX_TX_SKB_BUDGET, 6.17 on): then a whole ring. */
#define TX_KICK_BATCH 32
/* Kicks beyond the ones the queued frames need, for transient EBUSY/EAGAIN. */
#define TX_KICK_SPARE 4
/* The most frames xsk__tx_burst queues per call. */
#define TX_BURST_MAX 256
/* Backoff between binds refused with EBUSY: from 1 ms, doubling, at most this. */
#define BIND_BACKOFF_MAX_MS 32

struct ring {
    uint32_t cached_prod;
    uint32_t cached_cons;
    uint32_t mask;
    uint32_t size;
    uint32_t *producer;       /* shared with the kernel */
    uint32_t *consumer;       /* shared with the kernel */
    uint32_t *flags;          /* shared: XDP_RING_NEED_WAKEUP */
    void *descs;              /* struct xdp_desc[size] or uint64_t[size] */
    void *map;
    size_t map_len;
};

struct xsk {
    int fd;
    uint8_t *umem;
    uint64_t umem_size;
    uint32_t frame_size;
    uint32_t mtu;             /* the interface's at open; 0: unknown */
    uint32_t rx_frames;       /* frames 0 .. rx_frames-1 */
    uint32_t tx_frames;       /* the rest */
    struct ring fill, comp, rx, tx;
    uint64_t *tx_free;        /* stack of free tx frame addresses */
    uint32_t n_tx_free;
    uint32_t tx_outstanding;  /* submitted, not yet completed */
    uint32_t tx_reserved;     /* reserved by xsk__tx_reserve, not yet submitted */
    uint64_t *fill_wait;      /* rx frames handed back, not yet in the fill ring */
    uint32_t n_fill_wait;
    uint8_t *whole;           /* XSK__WHOLE_SLOTS buffers for xsk__rx_whole, or NULL */
    uint64_t tx_kicks;        /* sendto calls made to get the kernel sending */
    uint64_t tx_batches;      /* submits that queued frames */
    uint64_t rx_wakeups;      /* recvfrom calls made for an empty fill ring */
    uint64_t rx_batches;      /* peeks that found frames */
    uint32_t tx_budget;       /* frames one kick sends at most */
};

/* ---- rings ------------------------------------------------------------- */

/* Consumer side (rx, completion): up to n entries from *idx on. */
static uint32_t cons__peek(struct ring *r, uint32_t n, uint32_t *idx)
{
    uint32_t entries = r->cached_prod - r->cached_cons;

    if (entries == 0) {
        /* Acquire: descriptors written before the kernel moved the
         * producer are visible once we see the new producer. */
        r->cached_prod = __atomic_load_n(r->producer, __ATOMIC_ACQUIRE);
        entries = r->cached_prod - r->cached_cons;
    }
    if (entries > n)
        entries = n;
    *idx = r->cached_cons;
    r->cached_cons += entries;
    return entries;
}

static void cons__release(struct ring *r, uint32_t n)
{
    /* Release: our reads of the n descriptors are done before the kernel
     * may overwrite their slots. */
    __atomic_store_n(r->consumer, *r->consumer + n, __ATOMIC_RELEASE);
}

/* Producer side (fill, tx): reserve up to n slots from *idx on. */
static uint32_t prod__reserve(struct ring *r, uint32_t n, uint32_t *idx)
{
    uint32_t free = r->cached_cons - r->cached_prod;

    if (free < n) {
        /* Acquire: the kernel has finished with the slots it consumed. */
        r->cached_cons = __atomic_load_n(r->consumer, __ATOMIC_ACQUIRE) + r->size;
        free = r->cached_cons - r->cached_prod;
    }
    if (n > free)
        n = free;
    *idx = r->cached_prod;
    r->cached_prod += n;
    return n;
}

static void prod__submit(struct ring *r, uint32_t n)
{
    /* Release: the n descriptors are written before the kernel sees them. */
    __atomic_store_n(r->producer, *r->producer + n, __ATOMIC_RELEASE);
}

static int ring__map(int fd, struct ring *r, const struct xdp_ring_offset *off,
                     uint32_t size, size_t desc_size, off_t pgoff, int producer)
{
    size_t len = off->desc + (size_t)size * desc_size;
    void *map = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, pgoff);

    if (map == MAP_FAILED)
        return -errno;
    r->map = map;
    r->map_len = len;
    r->producer = (uint32_t *)((uint8_t *)map + off->producer);
    r->consumer = (uint32_t *)((uint8_t *)map + off->consumer);
    r->flags = (uint32_t *)((uint8_t *)map + off->flags);
    r->descs = (uint8_t *)map + off->desc;
    r->size = size;
    r->mask = size - 1;
    r->cached_prod = *r->producer;
    r->cached_cons = *r->consumer + (producer ? size : 0);
    return 0;
}

/* Does the kernel ask to be woken for this ring?  Bound with
 * XDP_USE_NEED_WAKEUP, it sets the flag only when it stopped looking at the
 * ring (in copy mode: always on tx, never on the fill ring). */
static int ring__needs_wakeup(const struct ring *r)
{
    return __atomic_load_n(r->flags, __ATOMIC_RELAXED) & XDP_RING_NEED_WAKEUP;
}

static void ring__unmap(struct ring *r)
{
    if (r->map)
        munmap(r->map, r->map_len);
    r->map = NULL;
}

/* ---- setup ---------------------------------------------------------------- */

static void sleep_ms(uint32_t ms)
{
    struct timespec ts = { .tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L };

    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

static int is_pow2(uint32_t v)
{
    return v && !(v & (v - 1));
}

/* Register the UMEM; over RLIMIT_MEMLOCK (the kernel counts UMEM pages
 * against it unless we have CAP_IPC_LOCK) raise the limit, to unlimited if
 * allowed (CAP_SYS_RESOURCE), else to the hard limit, and try once more. */
static int umem__register(struct xsk *x, struct xsk__info *info)
{
    struct xdp_umem_reg reg = {
        .addr = (uint64_t)(uintptr_t)x->umem,
        .len = x->umem_size,
        .chunk_size = x->frame_size,
        .headroom = 0,
        .flags = 0,
    };
    struct rlimit rl;

    if (setsockopt(x->fd, SOL_XDP, XDP_UMEM_REG, &reg, sizeof(reg)) == 0)
        return 0;
    if (errno != ENOBUFS)
        return -errno;
    if (getrlimit(RLIMIT_MEMLOCK, &rl) != 0)
        return -ENOBUFS;
    struct rlimit unlimited = { RLIM_INFINITY, RLIM_INFINITY };
    struct rlimit to_hard = { rl.rlim_max, rl.rlim_max };
    if (setrlimit(RLIMIT_MEMLOCK, &unlimited) != 0) {
        if (rl.rlim_cur == rl.rlim_max || setrlimit(RLIMIT_MEMLOCK, &to_hard) != 0)
            return -ENOBUFS;
    }
    info->memlock_raised = 1;
    if (setsockopt(x->fd, SOL_XDP, XDP_UMEM_REG, &reg, sizeof(reg)) == 0)
        return 0;
    return -errno;
}

static int rings__create(struct xsk *x, uint32_t size)
{
    struct xdp_mmap_offsets off;
    socklen_t optlen = sizeof(off);
    int err;

    if (setsockopt(x->fd, SOL_XDP, XDP_UMEM_FILL_RING, &size, sizeof(size)) ||
        setsockopt(x->fd, SOL_XDP, XDP_UMEM_COMPLETION_RING, &size, sizeof(size)) ||
        setsockopt(x->fd, SOL_XDP, XDP_RX_RING, &size, sizeof(size)) ||
        setsockopt(x->fd, SOL_XDP, XDP_TX_RING, &size, sizeof(size)))
        return -errno;
    if (getsockopt(x->fd, SOL_XDP, XDP_MMAP_OFFSETS, &off, &optlen))
        return -errno;
    err = ring__map(x->fd, &x->fill, &off.fr, size, sizeof(uint64_t),
                    XDP_UMEM_PGOFF_FILL_RING, 1);
    if (!err)
        err = ring__map(x->fd, &x->comp, &off.cr, size, sizeof(uint64_t),
                        XDP_UMEM_PGOFF_COMPLETION_RING, 0);
    if (!err)
        err = ring__map(x->fd, &x->rx, &off.rx, size, sizeof(struct xdp_desc),
                        XDP_PGOFF_RX_RING, 0);
    if (!err)
        err = ring__map(x->fd, &x->tx, &off.tx, size, sizeof(struct xdp_desc),
                        XDP_PGOFF_TX_RING, 1);
    return err;
}

/* Bind in copy mode; EBUSY (the queue's last socket is still going away,
 * some 30 ms after its close) is retried with backoff for timeout_ms. */
static int bind__retry(struct xsk *x, uint32_t ifindex, uint32_t queue, uint32_t timeout_ms,
                       uint32_t multi_buffer, uint32_t *retries)
{
    struct sockaddr_xdp sa = {
        .sxdp_family = AF_XDP,
        .sxdp_flags = XDP_COPY | XDP_USE_NEED_WAKEUP | (multi_buffer ? XDP_USE_SG : 0),
        .sxdp_ifindex = ifindex,
        .sxdp_queue_id = queue,
    };
    uint32_t waited = 0, delay = 1;

    for (;;) {
        if (bind(x->fd, (struct sockaddr *)&sa, sizeof(sa)) == 0)
            return 0;
        if (errno != EBUSY || waited >= timeout_ms)
            return -errno;
        sleep_ms(delay);
        waited += delay;
        (*retries)++;
        delay = delay * 2 > BIND_BACKOFF_MAX_MS ? BIND_BACKOFF_MAX_MS : delay * 2;
    }
}

/* The interface's MTU, or 0: asked through a unix socket, since an AF_XDP
 * socket answers no interface ioctls. */
static uint32_t iface__mtu(uint32_t ifindex)
{
    struct ifreq ifr = { 0 };
    uint32_t mtu = 0;
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);

    if (fd < 0)
        return 0;
    if (if_indextoname(ifindex, ifr.ifr_name) && ioctl(fd, SIOCGIFMTU, &ifr) == 0 &&
        ifr.ifr_mtu > 0)
        mtu = (uint32_t)ifr.ifr_mtu;
    close(fd);
    return mtu;
}

int xsk__open(const struct xsk__config *cfg, struct xsk **out, struct xsk__info *info)
{
    struct xsk__info scratch;
    struct xsk__config c = *cfg;
    struct xsk *x;
    uint32_t idx, i;
    int err;

    if (!info)
        info = &scratch;
    memset(info, 0, sizeof(*info));
    *out = NULL;
    if (!c.frame_size)
        c.frame_size = XSK__DEFAULT_FRAME_SIZE;
    if (!c.frame_count)
        c.frame_count = XSK__DEFAULT_FRAME_COUNT;
    if (!c.ring_size)
        c.ring_size = XSK__DEFAULT_RING_SIZE;
    if (!c.bind_timeout_ms)
        c.bind_timeout_ms = XSK__DEFAULT_BIND_TIMEOUT_MS;
    if ((c.frame_size != XSK__FRAME_SIZE_MIN && c.frame_size != XSK__FRAME_SIZE_MAX) ||
        c.frame_count < 2 || !is_pow2(c.ring_size))
        return -EINVAL;

    x = calloc(1, sizeof(*x));
    if (!x)
        return -ENOMEM;
    x->fd = -1;
    x->frame_size = c.frame_size;
    /* Every rx frame fits the fill ring at once, so handing frames back never
     * finds it full; the rest of the UMEM is for tx. */
    x->rx_frames = c.frame_count / 2 < c.ring_size ? c.frame_count / 2 : c.ring_size;
    x->tx_frames = c.frame_count - x->rx_frames;
    x->umem_size = (uint64_t)c.frame_count * c.frame_size;

    x->fd = socket(AF_XDP, SOCK_RAW | SOCK_CLOEXEC, 0);
    if (x->fd < 0) {
        err = -errno;
        goto fail;
    }
    x->umem = mmap(NULL, x->umem_size, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (x->umem == MAP_FAILED) {
        x->umem = NULL;
        err = -errno;
        goto fail;
    }
    x->tx_free = calloc(x->tx_frames, sizeof(*x->tx_free));
    x->fill_wait = calloc(x->rx_frames, sizeof(*x->fill_wait));
    if (!x->tx_free || !x->fill_wait) {
        err = -ENOMEM;
        goto fail;
    }
    for (i = 0; i < x->tx_frames; i++)
        x->tx_free[i] = (uint64_t)(x->rx_frames + i) * x->frame_size;
    x->n_tx_free = x->tx_frames;

    err = umem__register(x, info);
    if (err)
        goto fail;
    err = rings__create(x, c.ring_size);
    if (err)
        goto fail;
    /* One kick may send the whole tx ring (kernel 6.17's
     * XDP_MAX_TX_SKB_BUDGET); an older kernel keeps TX_KICK_BATCH. */
    uint32_t budget = c.ring_size;
    if (setsockopt(x->fd, SOL_XDP, XDP_MAX_TX_SKB_BUDGET, &budget, sizeof(budget)) == 0)
        x->tx_budget = budget;
    else
        x->tx_budget = TX_KICK_BATCH;

    /* All rx frames go to the fill ring before bind: nothing is missed. */
    if (prod__reserve(&x->fill, x->rx_frames, &idx) != x->rx_frames) {
        err = -ENOSPC;
        goto fail;
    }
    for (i = 0; i < x->rx_frames; i++)
        ((uint64_t *)x->fill.descs)[(idx + i) & x->fill.mask] = (uint64_t)i * x->frame_size;
    prod__submit(&x->fill, x->rx_frames);

    err = bind__retry(x, c.ifindex, c.queue, c.bind_timeout_ms, c.multi_buffer,
                      &info->bind_retries);
    if (err == -EINVAL && c.multi_buffer)   /* before 6.6: no XDP_USE_SG */
        err = bind__retry(x, c.ifindex, c.queue, c.bind_timeout_ms, 0, &info->bind_retries);
    else if (!err)
        info->multi_buffer = c.multi_buffer != 0;
    if (err)
        goto fail;

    x->mtu = iface__mtu(c.ifindex);

    struct rlimit rl;
    if (getrlimit(RLIMIT_MEMLOCK, &rl) == 0)
        info->memlock_limit = rl.rlim_cur;
    info->umem_bytes = x->umem_size;
    info->rx_frames = x->rx_frames;
    info->tx_frames = x->tx_frames;
    *out = x;
    return 0;

fail:
    xsk__close(x);
    return err;
}

void xsk__close(struct xsk *x)
{
    if (!x)
        return;
    ring__unmap(&x->fill);
    ring__unmap(&x->comp);
    ring__unmap(&x->rx);
    ring__unmap(&x->tx);
    if (x->fd >= 0)
        close(x->fd);
    if (x->umem)
        munmap(x->umem, x->umem_size);
    free(x->tx_free);
    free(x->fill_wait);
    free(x->whole);
    free(x);
}

int xsk__fd(const struct xsk *x)
{
    return x->fd;
}

uint32_t xsk__frame_size(const struct xsk *x)
{
    return x->frame_size;
}

uint32_t xsk__mtu(const struct xsk *x)
{
    return x->mtu;
}

uint8_t *xsk__umem(const struct xsk *x)
{
    return x->umem;
}

uint64_t xsk__umem_size(const struct xsk *x)
{
    return x->umem_size;
}

/* ---- receive ------------------------------------------------------------- */

static void fill__flush(struct xsk *x);

uint32_t xsk__rx_peek(struct xsk *x, uint64_t *addrs, uint32_t *lens, uint8_t *more,
                      uint32_t max)
{
    if (x->n_fill_wait)
        fill__flush(x);
    const struct xdp_desc *descs = x->rx.descs;
    uint32_t idx, i, whole = 0;
    uint32_t n = cons__peek(&x->rx, max, &idx);

    for (i = 0; i < n; i++) {
        const struct xdp_desc *d = &descs[(idx + i) & x->rx.mask];
        addrs[i] = d->addr;
        lens[i] = d->len;
        uint8_t contd = (d->options & XDP_PKT_CONTD) != 0;
        if (more)
            more[i] = contd;
        if (!contd)
            whole = i + 1;
    }
    /* Not consumed yet: the next peek sees the same descriptors first. */
    x->rx.cached_cons -= n;
    if (whole)
        x->rx_batches++;
    else if (ring__needs_wakeup(&x->fill)) {
        /* The kernel stopped for want of fill ring entries and asks to be
         * told there are some again (a zero-copy driver; copy mode never
         * asks): a recvfrom that returns at once. */
        x->rx_wakeups++;
        recvfrom(x->fd, NULL, 0, MSG_DONTWAIT, NULL, NULL);
    }
    return whole;
}

const uint8_t *xsk__rx_whole(struct xsk *x, uint32_t slot, const uint64_t *addrs,
                             const uint32_t *lens, uint32_t n, uint32_t *len)
{
    uint64_t total = 0;

    for (uint32_t i = 0; i < n; i++)
        total += lens[i];
    *len = total > UINT32_MAX ? UINT32_MAX : (uint32_t)total;
    if (slot >= XSK__WHOLE_SLOTS || total > XSK__WHOLE_MAX)
        return NULL;
    if (!x->whole && !(x->whole = malloc((size_t)XSK__WHOLE_SLOTS * XSK__WHOLE_MAX)))
        return NULL;
    uint8_t *buf = x->whole + (size_t)slot * XSK__WHOLE_MAX, *at = buf;
    for (uint32_t i = 0; i < n; i++) {
        memcpy(at, x->umem + addrs[i], lens[i]);
        at += lens[i];
    }
    return buf;
}

void xsk__rx_release(struct xsk *x, uint32_t n)
{
    if (!n)
        return;
    x->rx.cached_cons += n;
    cons__release(&x->rx, n);
}

uint32_t xsk__rx_burst(struct xsk *x, uint64_t *addrs, uint32_t *lens, uint32_t max)
{
    uint32_t n = xsk__rx_peek(x, addrs, lens, NULL, max);
    xsk__rx_release(x, n);
    return n;
}

/* Move waiting frames into the fill ring, as many as it takes now.  The
 * kernel publishes how far it consumed the fill ring lazily, so the ring can
 * look full while its frames already sit in the rx ring: the rest waits for
 * the next call instead of being lost. */
static void fill__flush(struct xsk *x)
{
    uint64_t *ring = x->fill.descs;
    uint32_t idx, i;
    uint32_t n = prod__reserve(&x->fill, x->n_fill_wait, &idx);

    for (i = 0; i < n; i++)
        ring[(idx + i) & x->fill.mask] = x->fill_wait[i];
    if (!n)
        return;
    prod__submit(&x->fill, n);
    x->n_fill_wait -= n;
    memmove(x->fill_wait, x->fill_wait + n, (size_t)x->n_fill_wait * sizeof(*x->fill_wait));
}

int xsk__rx_done(struct xsk *x, const uint64_t *addrs, uint32_t n)
{
    uint64_t rx_end = (uint64_t)x->rx_frames * x->frame_size;
    uint32_t i;

    if (n > x->rx_frames - x->n_fill_wait)
        return -EINVAL;                 /* more than could be out: given back twice */
    for (i = 0; i < n; i++)
        if (addrs[i] >= rx_end)
            return -EINVAL;
    for (i = 0; i < n; i++)
        x->fill_wait[x->n_fill_wait++] = addrs[i] - addrs[i] % x->frame_size;
    fill__flush(x);
    return 0;
}

/* ---- transmit ------------------------------------------------------------- */

/* Take completed tx frames back onto the free stack. */
static void comp__reap(struct xsk *x)
{
    const uint64_t *ring = x->comp.descs;
    uint32_t idx, i;
    uint32_t n = cons__peek(&x->comp, x->comp.size, &idx);

    for (i = 0; i < n; i++)
        x->tx_free[x->n_tx_free++] = ring[(idx + i) & x->comp.mask];
    if (n)
        cons__release(&x->comp, n);
    x->tx_outstanding -= n;
}

/* Frames in the tx ring the kernel has not read yet. */
static uint32_t tx__unread(const struct xsk *x)
{
    /* Acquire: pairs with the kernel's release of the consumer. */
    return *x->tx.producer - __atomic_load_n(x->tx.consumer, __ATOMIC_ACQUIRE);
}

/* Make the kernel send what the tx ring holds, if it asks to be woken for
 * it (XDP_RING_NEED_WAKEUP; copy mode always asks): one sendto moves at
 * most tx_budget frames and says EAGAIN while more wait, so kick until the
 * ring is read.  EBUSY/ENOBUFS (the device is busy) leave the rest for the
 * next kick.  No frame unread, or no wakeup asked for: no syscall. */
static int tx__kick(struct xsk *x)
{
    uint32_t kicks = tx__unread(x) / x->tx_budget + TX_KICK_SPARE;

    while (kicks-- && tx__unread(x) && ring__needs_wakeup(&x->tx)) {
        x->tx_kicks++;
        if (sendto(x->fd, NULL, 0, MSG_DONTWAIT, NULL, 0) >= 0)
            continue;
        if (errno == EAGAIN || errno == EINTR)
            continue;
        if (errno == EBUSY || errno == ENOBUFS)
            return 0;
        return -errno;
    }
    return 0;
}

uint32_t xsk__tx_reserve(struct xsk *x, uint32_t n, uint64_t *addrs)
{
    uint32_t idx, i;

    /* A reservation never submitted gives its slots back first. */
    x->tx.cached_prod -= x->tx_reserved;
    x->tx_reserved = 0;
    comp__reap(x);
    if (n > x->n_tx_free)
        n = x->n_tx_free;
    n = prod__reserve(&x->tx, n, &idx);
    /* The top n of the free stack, top first: xsk__tx_submit pops them. */
    for (i = 0; i < n; i++)
        addrs[i] = x->tx_free[x->n_tx_free - 1 - i];
    x->tx_reserved = n;
    return n;
}

int xsk__tx_submit(struct xsk *x, const uint32_t *lens, uint32_t n)
{
    struct xdp_desc *ring = x->tx.descs;
    uint32_t reserved = x->tx_reserved, i;
    int err = 0;

    if (n > reserved)
        err = -EINVAL;
    for (i = 0; !err && i < n; i++) {
        if (lens[i] > x->frame_size)
            err = -EMSGSIZE;
        else if (lens[i] == 0)
            err = -EINVAL;
    }
    if (err)
        n = 0;
    /* Slots reserved and not used go back: nothing was published past
     * cached_prod - reserved, so the kernel never saw them. */
    x->tx.cached_prod -= reserved - n;
    x->tx_reserved = 0;
    uint32_t idx = x->tx.cached_prod - n;
    for (i = 0; i < n; i++) {
        uint64_t addr = x->tx_free[--x->n_tx_free];
        ring[(idx + i) & x->tx.mask] = (struct xdp_desc){ .addr = addr, .len = lens[i] };
    }
    if (n) {
        prod__submit(&x->tx, n);
        x->tx_outstanding += n;
        x->tx_batches++;
    }
    return err ? err : (int)n;
}

int xsk__tx_kick(struct xsk *x)
{
    int err = tx__kick(x);

    comp__reap(x);
    return err;
}

int xsk__tx_queue(struct xsk *x, const uint8_t *buf, const uint32_t *lens, uint32_t n)
{
    uint64_t addrs[TX_BURST_MAX];
    uint32_t got, i;

    for (i = 0; i < n; i++) {
        if (lens[i] > x->frame_size)
            return -EMSGSIZE;
        if (lens[i] == 0)
            return -EINVAL;
    }
    got = xsk__tx_reserve(x, n < TX_BURST_MAX ? n : TX_BURST_MAX, addrs);
    for (i = 0; i < got; i++) {
        memcpy(x->umem + addrs[i], buf, lens[i]);
        buf += lens[i];
    }
    return xsk__tx_submit(x, lens, got);
}

int xsk__tx_burst(struct xsk *x, const uint8_t *buf, const uint32_t *lens, uint32_t n)
{
    int got = xsk__tx_queue(x, buf, lens, n);

    if (got < 0)
        return got;
    int err = xsk__tx_kick(x);
    return err ? err : got;
}

uint32_t xsk__tx_unsent(const struct xsk *x, uint64_t *addrs, uint32_t *lens, uint32_t max)
{
    const struct xdp_desc *ring = x->tx.descs;
    /* Acquire: as prod__reserve, what the kernel has read is behind this. */
    uint32_t cons = __atomic_load_n(x->tx.consumer, __ATOMIC_ACQUIRE);
    uint32_t n = *x->tx.producer - cons, i;

    if (n > max)
        n = max;
    for (i = 0; i < n; i++) {
        const struct xdp_desc *d = &ring[(cons + i) & x->tx.mask];
        addrs[i] = d->addr;
        lens[i] = d->len;
    }
    return n;
}

int xsk__tx_reap(struct xsk *x)
{
    int err = tx__kick(x);

    comp__reap(x);
    return err ? err : (int)x->n_tx_free;
}

uint32_t xsk__tx_pending(const struct xsk *x)
{
    return x->tx_outstanding;
}

int xsk__stats(const struct xsk *x, struct xsk__stats *out)
{
    struct xdp_statistics st;
    socklen_t optlen = sizeof(st);

    memset(&st, 0, sizeof(st));
    if (getsockopt(x->fd, SOL_XDP, XDP_STATISTICS, &st, &optlen))
        return -errno;
    out->rx_dropped = st.rx_dropped;
    out->rx_invalid_descs = st.rx_invalid_descs;
    out->tx_invalid_descs = st.tx_invalid_descs;
    out->rx_ring_full = st.rx_ring_full;
    out->rx_fill_ring_empty_descs = st.rx_fill_ring_empty_descs;
    out->tx_ring_empty_descs = st.tx_ring_empty_descs;
    out->tx_kicks = x->tx_kicks;
    out->tx_batches = x->tx_batches;
    out->rx_wakeups = x->rx_wakeups;
    out->rx_batches = x->rx_batches;
    out->tx_budget = x->tx_budget;
    return 0;
}
