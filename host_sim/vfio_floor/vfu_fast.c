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
//
// vfu_relay goes further for host_sim's engine: a plain access to a BAR of
// one of stubdm's functions becomes its ioreq here, in the vCPU's slot of
// the ioreq page, with the event to the device model and the wait for its
// answer (host_sim/libsim/hostsim_evtchn_sim.c, as send_ioreq uses them),
// and the reply; no Python runs per access. Whatever else comes (another
// message, another fd ready, no answer in the first wait) is the caller's,
// with every check of a dead or hung device model.
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <sched.h>

#include "hostsim_evtchn_sim.h"
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

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

// Watch fds[0] for up to spin_ns: 1 when it is readable (or hung up), 0 when
// the window passed or any other of fds is ready (the caller serves those).
static int spin_readable(struct pollfd *fds, int nfds, uint32_t spin_ns) {
    if (spin_ns == 0) {
        return 0;
    }
    uint64_t end = now_ns() + spin_ns;
    for (;;) {
        int n = poll(fds, (nfds_t)nfds, 0);
        if (n > 0) {
            return fds[0].revents != 0 && n == 1;
        }
        if (n < 0 && errno != EINTR) {
            return 0;
        }
        if (now_ns() >= end) {
            return 0;
        }
        __builtin_ia32_pause();
        sched_yield();  // to any runnable task (hostsim_libs.c's hs_spin_relax: why)
    }
}

int vfu_spin(int fd, uint32_t spin_ns) {
    struct pollfd pfd = {.fd = fd, .events = POLLIN};
    return spin_readable(&pfd, 1, spin_ns);
}

// ioreq.h's ioreq_t: addr, data, count, size, vp_eport, pad, flags (state:4,
// data_is_ptr:1, dir:1, df:1), type; the state published last.
#define IOREQ_OFF_DATA 8
#define IOREQ_OFF_FLAGS 30
#define IOREQ_OFF_TYPE 31
#define IOREQ_DIR_READ 0x20
#define STATE_IOREQ_READY 1

// One access as its ioreq: 1 answered (*data), 0 out and not answered yet.
static int relay_one(vfu_relay_t *r, const vfu_access_t *acc, int is_read, uint64_t *data) {
    uint8_t *s = r->slot;
    uint64_t addr = r->base[acc->region] + acc->offset;
    uint64_t value = is_read ? 0 : acc->value;
    uint32_t count = 1, size = acc->count;
    uint8_t flags = is_read ? IOREQ_DIR_READ : 0;
    memcpy(s, &addr, 8);
    memcpy(s + IOREQ_OFF_DATA, &value, 8);
    memcpy(s + 16, &count, 4);
    memcpy(s + 20, &size, 4);
    memcpy(s + 24, &r->vp_eport, 4);
    s[28] = s[29] = 0;
    s[IOREQ_OFF_TYPE] = r->type[acc->region];
    uint64_t t0 = now_ns();
    __atomic_store_n(s + IOREQ_OFF_FLAGS, (uint8_t)(flags | STATE_IOREQ_READY), __ATOMIC_RELEASE);
    hs_sim_evtchn_t *h = r->evtchn;
    hs_sim_raise(h, r->dm_port);
    if (!hs_sim_wait_answer(h, r->dm_port, s + IOREQ_OFF_FLAGS, r->wait_fds, r->wait_nfds,
                            r->timeout_ms, r->taken, r->max_taken, &r->nout)) {
        return 0;
    }
    r->ioreq_ns += now_ns() - t0;
    memcpy(data, s + IOREQ_OFF_DATA, 8);
    __atomic_store_n(s + IOREQ_OFF_FLAGS, flags, __ATOMIC_RELEASE);  // back to NONE
    return 1;
}

// The device model wrote line levels host_sim has not applied.
static int irq_pending(const vfu_relay_t *r) {
    return r->irq_prod != NULL &&
           __atomic_load_n(r->irq_prod, __ATOMIC_ACQUIRE) != *r->irq_cons;
}

// After a reply, watch the connection for the next access for up to spin_ns:
// 1 it is readable (and nothing else is); 0 the window passed, or host_sim
// has work: the device model notified ports (taken[nout..) now) or set line
// levels, or another fd of host_sim's is ready. A kick that brings nothing
// (its bits were taken with the last answer) does not end the spin.
static int relay_spin(vfu_relay_t *r) {
    struct pollfd *fds = r->spin_fds;
    if (r->spin_ns == 0 || r->spin_nfds < 3) {
        return 0;
    }
    uint64_t end = now_ns() + r->spin_ns;
    for (;;) {
        int n = poll(fds, (nfds_t)r->spin_nfds, 0);
        if (n < 0 && errno != EINTR) {
            return 0;
        }
        if (n > 0 && fds[1].revents) {
            n--;
            if (r->nout >= r->max_taken) {
                return 0;  // no room: the caller serves what it has first
            }
            int k = hs_sim_take(r->evtchn, r->taken + r->nout, r->max_taken - r->nout);
            r->nout += k;
            if (k > 0) {
                return 0;
            }
        }
        if (n > 0 && fds[2].revents) {
            n--;
            // The counter first, then the ring (as hs_sim_take): a kick after
            // this read is for entries after it. Entries there: the caller
            // applies them (VFU_RELAYED drains the ring); none: a kick for
            // levels already applied, nothing.
            uint64_t count;
            while (read(fds[2].fd, &count, sizeof(count)) < 0 && errno == EINTR) {
            }
            if (irq_pending(r)) {
                return 0;
            }
        }
        if (n > 0) {
            return fds[0].revents != 0 && n == 1;
        }
        if (now_ns() >= end) {
            return 0;
        }
        __builtin_ia32_pause();
        sched_yield();  // to any runnable task (hostsim_libs.c's hs_spin_relax: why)
    }
}

int vfu_relay(int fd, uint8_t *buf, int cap, const uint64_t *bar_sizes, vfu_access_t *acc,
              vfu_relay_t *r) {
    uint32_t done = 0;
    r->nout = 0;
    for (;;) {
        int k = vfu_recv(fd, buf, cap, bar_sizes, acc);
        if ((k == -EAGAIN || k == -EWOULDBLOCK) && done) {
            return VFU_RELAYED;
        }
        if ((k != VFU_READ && k != VFU_WRITE) || r->evtchn == NULL ||
            r->type[acc->region] == VFU_NO_RELAY) {
            return k;
        }
        uint64_t data = 0;
        r->is_read = k == VFU_READ;
        if (!relay_one(r, acc, k == VFU_READ, &data)) {
            return VFU_RELAY_WAIT;
        }
        if (acc->posted) {
            r->n_posted++;
        } else if (k == VFU_READ) {
            r->n_reads++;
        } else {
            r->n_writes++;
        }
        if (r->nout > 0 || irq_pending(r)) {
            r->held = data;
            return VFU_RELAY_HELD;
        }
        if (!acc->posted) {
            uint32_t n = HDR_SIZE + RW_SIZE + (k == VFU_READ ? acc->count : 0);
            int sent = vfu_reply(fd, acc, k == VFU_READ ? REGION_READ : REGION_WRITE, data,
                                 r->out);
            if (sent != (int)n) {
                r->sent = sent;
                return VFU_RELAY_SHORT;
            }
        }
        if (++done >= r->max_batch || !relay_spin(r)) {
            return VFU_RELAYED;
        }
    }
}
