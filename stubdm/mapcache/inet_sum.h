// The Internet checksum's ones'-complement sum (RFC 1071) over a buffer, for
// the NICs' checksum offload (stubdm/devices/netutil.py): the C both glues
// compile (build/glue_build.py for cffi, stubdm/port_common/modstubdm_hyp.c
// for MicroPython), kept beside the mapcache because both already build from
// here. Big-endian 16-bit words; an odd last byte is the high half of a word.
// The result is folded to 16 bits: 0 only when every byte is 0, so it equals
// netutil's pure-Python sum (the value mod 0xffff, 0xffff for a non-zero
// multiple) that tests prove it against.
#ifndef STUBDM_INET_SUM_H
#define STUBDM_INET_SUM_H

#include <stddef.h>
#include <stdint.h>

static inline uint32_t stubdm_inet_sum(const uint8_t *p, size_t n) {
    uint64_t s = 0;
    size_t i = 0;
    // Four bytes (two words) a turn: the sum of words is the same in any order.
    for (; i + 4 <= n; i += 4) {
        s += ((uint32_t)p[i] << 8 | p[i + 1]) + ((uint32_t)p[i + 2] << 8 | p[i + 3]);
    }
    for (; i + 2 <= n; i += 2) {
        s += (uint32_t)p[i] << 8 | p[i + 1];
    }
    if (i < n) {
        s += (uint32_t)p[i] << 8;
    }
    while (s >> 16) {
        s = (s & 0xFFFF) + (s >> 16);
    }
    return (uint32_t)s;
}

#endif
