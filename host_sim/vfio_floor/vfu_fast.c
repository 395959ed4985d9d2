// The vfio-user server's hot path in C (host_sim/vfio_user.py, CPython, cffi
// module host_sim._vfu_fast built by host_sim/vfio_floor/fast_build.py).
//
// A guest access to a BAR is one REGION_READ or REGION_WRITE message that
// waits for its reply: parsing it, building the reply and the checks in
// between cost several microseconds in Python per access. Here one
// recvmsg() takes what the socket holds; if that is exactly one plain BAR
// access (a request, no fds, count 1, 2, 4 or 8, inside the BAR, the sizes
// exact) it comes back parsed, and vfu_reply() answers it after the Python
// backend has. Anything else comes back as bytes (and fds) for the Python
// server's general path, which also owns every error reply: this file
// refuses nothing itself, so the behaviour on bad input is Python's.
#define _GNU_SOURCE
#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>

#include "vfu_fast.h"

#define HDR_SIZE 16
#define RW_SIZE 16
#define REGION_READ 9
#define REGION_WRITE 10
#define FLAG_REPLY 0x1u
#define FLAG_NO_REPLY 0x10u
#define NUM_BARS 6

static uint32_t get32(const uint8_t *p) {
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}

static uint64_t get_le(const uint8_t *p, uint32_t n) {
    uint64_t v = 0;
    memcpy(&v, p, n); // x86-64 and every host_sim host: little-endian
    return v;
}

int vfu_recv(int fd, uint8_t *buf, int cap, const uint64_t *bar_sizes, vfu_access_t *acc) {
    union {
        struct cmsghdr h;
        char room[CMSG_SPACE(sizeof(int) * VFU_MAX_FDS)];
    } ctl;
    struct iovec iov = {buf, (size_t)cap};
    struct msghdr m = {0};
    m.msg_iov = &iov;
    m.msg_iovlen = 1;
    m.msg_control = &ctl;
    m.msg_controllen = sizeof ctl;
    acc->nfds = 0;
    acc->ctrunc = 0;
    acc->len = 0;
    ssize_t n = recvmsg(fd, &m, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
    if (n < 0) {
        return -errno;
    }
    acc->len = (uint32_t)n;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&m); c; c = CMSG_NXTHDR(&m, c)) {
        if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
            size_t k = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
            for (size_t i = 0; i < k && acc->nfds < VFU_MAX_FDS; i++) {
                memcpy(&acc->fds[acc->nfds++], CMSG_DATA(c) + i * sizeof(int), sizeof(int));
            }
        }
    }
    if (m.msg_flags & MSG_CTRUNC) {
        acc->ctrunc = 1;
    }
    if (n == 0 || acc->nfds || acc->ctrunc || n < HDR_SIZE + RW_SIZE) {
        return VFU_BYTES;
    }
    uint16_t cmd;
    memcpy(&acc->msg_id, buf, 2);
    memcpy(&cmd, buf + 2, 2);
    uint32_t size = get32(buf + 4);
    uint32_t flags = get32(buf + 8);
    uint64_t offset = get_le(buf + HDR_SIZE, 8);
    uint32_t region = get32(buf + HDR_SIZE + 8);
    uint32_t count = get32(buf + HDR_SIZE + 12);
    if ((flags & ~FLAG_NO_REPLY) != 0 || region >= NUM_BARS ||
        (count != 1 && count != 2 && count != 4 && count != 8) ||
        offset > bar_sizes[region] || count > bar_sizes[region] - offset) {
        return VFU_BYTES;
    }
    acc->offset = offset;
    acc->region = region;
    acc->count = count;
    acc->posted = (flags & FLAG_NO_REPLY) != 0;
    if (cmd == REGION_READ && size == HDR_SIZE + RW_SIZE && (uint32_t)n == size) {
        return VFU_READ;
    }
    if (cmd == REGION_WRITE && size == HDR_SIZE + RW_SIZE + count && (uint32_t)n == size) {
        acc->value = get_le(buf + HDR_SIZE + RW_SIZE, count);
        return VFU_WRITE;
    }
    return VFU_BYTES;
}

int vfu_reply(int fd, const vfu_access_t *acc, int cmd, uint64_t value, uint8_t *out) {
    uint32_t n = HDR_SIZE + RW_SIZE + (cmd == REGION_READ ? acc->count : 0);
    uint16_t c = (uint16_t)cmd;
    uint32_t size = n, flags = FLAG_REPLY, err = 0;
    memcpy(out, &acc->msg_id, 2);
    memcpy(out + 2, &c, 2);
    memcpy(out + 4, &size, 4);
    memcpy(out + 8, &flags, 4);
    memcpy(out + 12, &err, 4);
    memcpy(out + HDR_SIZE, &acc->offset, 8);
    memcpy(out + HDR_SIZE + 8, &acc->region, 4);
    memcpy(out + HDR_SIZE + 12, &acc->count, 4);
    if (cmd == REGION_READ) {
        memcpy(out + HDR_SIZE + RW_SIZE, &value, acc->count);
    }
    ssize_t sent = send(fd, out, n, MSG_DONTWAIT | MSG_NOSIGNAL);
    if (sent < 0) {
        return (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) ? 0 : -errno;
    }
    return (int)sent; // short: the caller sends out[sent:n] the slow way
}
