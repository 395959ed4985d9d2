// host_sim._vfu_fast: the vfio-user server's hot path (vfu_fast.c has why).
// fast_build.py declares the same to cffi.
#ifndef VFU_FAST_H
#define VFU_FAST_H

#include <stdint.h>

#define VFU_MAX_FDS 64 // room to notice (and close) floods, as the Python server
#define VFU_BYTES 0    // not a plain BAR access: buf[:len] and fds for Python
#define VFU_READ 1
#define VFU_WRITE 2

typedef struct {
    uint32_t len;    // bytes received (0: the peer closed)
    int nfds;        // fds received (ours to close or keep)
    int ctrunc;      // more fds came than fit: a flood
    int fds[VFU_MAX_FDS];
    uint16_t msg_id; // VFU_READ / VFU_WRITE: the access
    int posted;      // NO_REPLY: a posted write, answered by nothing
    uint32_t region;
    uint32_t count;
    uint64_t offset;
    uint64_t value;  // VFU_WRITE: the data, little-endian
} vfu_access_t;

// One non-blocking recvmsg on fd into buf: VFU_READ, VFU_WRITE, VFU_BYTES,
// or -errno. bar_sizes: the six BARs' sizes (0: none).
int vfu_recv(int fd, uint8_t *buf, int cap, const uint64_t *bar_sizes, vfu_access_t *acc);

// The reply to a VFU_READ (cmd 9, with value) or VFU_WRITE (cmd 10), built
// in out (at least 48 bytes) and sent without blocking: the bytes sent
// (fewer than the reply's 32 + count: the rest is the caller's) or -errno.
int vfu_reply(int fd, const vfu_access_t *acc, int cmd, uint64_t value, uint8_t *out);

#endif
