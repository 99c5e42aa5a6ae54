/*
 * fuzz_segment.c - libFuzzer harness for csrc/segment.c (target "segment" of
 * tests/fuzz/fuzzlib.py), under ASan and UBSan.
 *
 * Input: u16le mtu (68 + value % 9000), u16le max_len (128 + value % 4096),
 * then a frame.  Each planned wire frame is written into a buffer of exactly
 * the room the plan promises; the invariants: a write never fails and never
 * exceeds that room, a cut piece fits max_len and its IP packet fits mtu,
 * and the pieces' payload is the frame's, in order.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "segment.h"

#define CHECK(cond)                                                          \
    do {                                                                     \
        if (!(cond)) {                                                       \
            fprintf(stderr, "invariant broken: %s (%s:%d)\n", #cond,         \
                    __FILE__, __LINE__);                                     \
            abort();                                                         \
        }                                                                    \
    } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 4)
        return 0;
    uint32_t mtu = 68 + (uint32_t)(data[0] | data[1] << 8) % 9000;
    uint32_t max_len = 128 + (uint32_t)(data[2] | data[3] << 8) % 4096;
    uint32_t len = (uint32_t)(size - 4);
    uint8_t *frame = malloc(len ? len : 1);        /* its own allocation: ASan sees overreads */
    struct segment__plan p;

    CHECK(frame != NULL);
    memcpy(frame, data + 4, len);
    if (segment__plan(frame, len, mtu, max_len, &p) == 0) {
        uint32_t room = p.piece ? max_len : len;
        uint8_t *buf = malloc(room ? room : 1);
        uint32_t pay = 0;
        CHECK(buf != NULL && p.count >= 1);
        for (uint32_t i = 0; i < p.count; i++) {
            int n = segment__write(&p, frame, len, i, buf, room);
            CHECK(n > 0 && (uint32_t)n <= room);
            if (!p.piece)
                continue;
            CHECK((uint32_t)n - p.l3_off <= mtu);
            CHECK(memcmp(buf + p.hdr_len, frame + p.hdr_len + pay, (uint32_t)n - p.hdr_len) == 0);
            pay += (uint32_t)n - p.hdr_len;
        }
        CHECK(!p.piece || pay == p.end - p.hdr_len);
        free(buf);
    }
    free(frame);
    return 0;
}
