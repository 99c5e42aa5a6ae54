/*
 * chardev_glue.c - chardev sockets meet the engine (chardev_glue.h).
 */
#include "chardev_glue.h"

#include <errno.h>
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

void chardev_glue__read_feed_write(struct cx_engine *e, int side, int in_fd, uint8_t *buf,
                                   size_t start, size_t end, size_t room, uint64_t now_ms,
                                   int flags, int out_fd, struct chardev_glue__turn *t)
{
    ssize_t n = recv(in_fd, buf + end, room, MSG_DONTWAIT);
    size_t consumed = 0;

    t->nread = n < 0 ? -errno : n;
    t->feed = CX_FEED_DONE;
    t->consumed = 0;
    t->nsent = 0;
    if (n > 0) {
        t->feed = cx_engine__feed_stream(e, side, buf + start, end + (size_t)n - start,
                                         now_ms, flags, &consumed);
        t->consumed = consumed;
    }
    if (out_fd >= 0)
        t->nsent = chardev_glue__write(e, out_fd, &t->out_left);
    else
        t->out_left = cx_engine__out_peek(e, &(const uint8_t *){NULL});
}
