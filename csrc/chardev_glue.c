/*
 * chardev_glue.c - chardev sockets meet the engine (chardev_glue.h).
 */
#include "chardev_glue.h"

#include <errno.h>
#include <stdbool.h>
#include <string.h>
#include <sys/socket.h>

int64_t chardev_glue__write(struct cx_engine *e, int fd, uint64_t *left)
{
    const uint8_t *data;
    size_t len = cx_engine__out_peek(e, &data);
    ssize_t n = 0;

    if (len) {
        n = send(fd, data, len, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (n > 0)
            cx_engine__out_consume(e, (size_t)n);
        else if (n < 0)
            n = -errno;
    }
    *left = cx_engine__out_peek(e, &data);
    return n;
}

/* Feed the records the input holds; false when its framing is lost. */
static bool input_feed(struct cx_engine *e, struct chardev_glue__input *in, uint64_t now_ms,
                       int flags)
{
    size_t consumed = 0;

    in->feed = cx_engine__feed_stream(e, in->side, in->buf + in->start, in->end - in->start,
                                      now_ms, flags, &consumed);
    in->start += consumed;
    in->took += consumed;
    if (in->feed < 0)
        return false;
    if (in->start == in->end)
        in->start = in->end = 0;
    in->held = in->feed == CX_FEED_BLOCKED;
    return true;
}

/* One input's turn: a held input is fed first and read only once that
 * frees it.  False when the call must stop: the peer closed, the read
 * failed, or the framing is lost. */
static bool input_turn(struct cx_engine *e, struct chardev_glue__input *in, uint64_t now_ms,
                       int flags)
{
    if (in->held) {
        if (in->end == in->start)
            in->held = 0;
        else if (!input_feed(e, in, now_ms, flags))
            return false;
        if (in->held)
            return true;
    }
    if (in->fd < 0)
        return true;
    if (in->end + in->chunk > in->cap) {           /* slide the partial record down */
        memmove(in->buf, in->buf + in->start, in->end - in->start);
        in->end -= in->start;
        in->start = 0;
    }
    size_t room = in->cap - in->end < in->chunk ? in->cap - in->end : in->chunk;
    if (!room)
        return true;
    ssize_t n = recv(in->fd, in->buf + in->end, room, MSG_DONTWAIT);
    if (n <= 0) {
        in->nread = n < 0 ? -errno : 0;
        return n < 0 && (errno == EAGAIN || errno == EINTR);
    }
    in->nread = n;
    in->end += (size_t)n;
    in->read += (size_t)n;
    return input_feed(e, in, now_ms, flags);
}

/* Whether the events from *seen on want the caller now: a checkpoint
 * request or a drop (new connections can wait, up to CHARDEV_GLUE_EVENTS). */
static bool events_want_caller(struct cx_engine *e, size_t first, size_t *seen)
{
    const struct cx_event *ev;
    size_t n = cx_engine__events(e, &ev);

    for (; *seen < n; (*seen)++)
        if (ev[*seen].kind == CX_EV_CHECKPOINT || ev[*seen].kind == CX_EV_DROP)
            return true;
    return n - first >= CHARDEV_GLUE_EVENTS;
}

void chardev_glue__pump(struct cx_engine *e, struct chardev_glue__input *const *ins, size_t n,
                        uint32_t max_rounds, uint64_t now_ms, int flags, int out_fd,
                        struct chardev_glue__pump *r)
{
    const struct cx_event *ev;
    size_t first = cx_engine__events(e, &ev), seen = first;
    uint64_t total = 0;
    bool go = n > 0;

    for (size_t i = 0; i < n; i++) {
        ins[i]->nread = -EAGAIN;
        ins[i]->feed = CX_FEED_DONE;
        ins[i]->read = ins[i]->took = 0;
    }
    r->nsent = 0;
    r->rounds = 0;
    while (go) {
        uint64_t before = total;
        uint64_t took = 0;
        bool held = false;
        for (size_t i = 0; go && i < (r->rounds ? n : 1); i++) {
            struct chardev_glue__input *in = ins[i];
            uint64_t had = in->read, had_took = in->took;
            go = input_turn(e, in, now_ms, flags);
            total += in->read - had;
            took += in->took - had_took;
            held |= in->held;
            if (events_want_caller(e, first, &seen))
                go = false;
            if (out_fd >= 0) {
                int64_t sent = chardev_glue__write(e, out_fd, &r->out_left);
                if (sent)
                    r->nsent = sent;
                if (sent < 0 || r->out_left)
                    go = false;
            }
        }
        r->rounds++;
        /* On while the inputs bring data, or flow control lets a held
         * input go on as the other catches up. */
        bool more = total - before >= CHARDEV_GLUE_MORE || (held && took);
        if (!more || out_fd < 0 || r->rounds >= max_rounds || total >= CHARDEV_GLUE_BUDGET)
            break;
    }
    if (out_fd < 0 || !r->rounds)
        r->out_left = cx_engine__out_peek(e, &(const uint8_t *){NULL});
}
