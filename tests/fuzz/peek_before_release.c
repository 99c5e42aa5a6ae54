/*
 * peek_before_release.c - the out buffer asked for before anything was
 * released, under UBSan: cx_engine__out_peek() must not do arithmetic on a
 * NULL pointer.  Built and run by tests/fuzz/test_fuzz_engine.py.
 */
#include "cx_engine.h"

#include <stdio.h>

int main(void)
{
    struct cx_config cfg = {
        .compare_timeout_ms = 3000, .expired_scan_cycle_ms = 1000,
        .max_queue_size = 1024, .max_connections = 16, .max_events = 16,
    };
    struct cx_engine *e = cx_engine__new(&cfg);
    const uint8_t *data;
    if (!e)
        return 2;
    size_t n = cx_engine__out_peek(e, &data);
    cx_engine__out_consume(e, 0);
    cx_engine__free(e);
    printf("pending=%zu\n", n);
    return n != 0;
}
