// host_sim's half of the event channel handles' shared memory: see
// hostsim_evtchn_sim.h and hostsim_proto.h (HS_EVTCHN_*).
#include "hostsim_evtchn_sim.h"

#include <errno.h>
#include <poll.h>
#include <stdint.h>
#include <time.h>
#include <unistd.h>
#include <sched.h>

#include "hostsim_proto.h"


// Bounded: a peer flipping a state byte without end must not hold us.
#define HS_SIM_CAS_TRIES 64
// How long hs_sim_wait_answer waits on for the answer once other ports came.
#define HS_SIM_OTHERS_WAIT_NS 2000000u

static uint32_t *u32_at(hs_sim_evtchn_t *h, uint32_t off) {
    return (uint32_t *)(h->shm + off);
}

static void byte_to_pipe(hs_sim_evtchn_t *h) {
    char b = 1;
    // Non-blocking: the pipe holds far more bytes than the ring has entries,
    // so EAGAIN means a peer that stopped reading: its loss.
    while (write(h->pipe_fd, &b, 1) < 0 && errno == EINTR) {
    }
}

static uint64_t now_ns(void);

static int push(hs_sim_evtchn_t *h, uint32_t port) {
    uint32_t cons = __atomic_load_n(u32_at(h, HS_EVTCHN_OFF_CONS), __ATOMIC_ACQUIRE);
    if (h->prod - cons >= HS_EVTCHN_RING) {
        h->overflows++;
        // One byte with no entry tells the reader (pending() says EFBIG).
        if (__atomic_exchange_n(u32_at(h, HS_EVTCHN_OFF_OVERFLOW), 1, __ATOMIC_SEQ_CST) == 0) {
            byte_to_pipe(h);
        }
        return -1;
    }
    uint32_t *ring = u32_at(h, HS_EVTCHN_OFF_RING);
    __atomic_store_n(&ring[h->prod % HS_EVTCHN_RING], port, __ATOMIC_RELAXED);
    h->prod++;
    h->raised_ns = now_ns();
    __atomic_store_n(u32_at(h, HS_EVTCHN_OFF_PROD), h->prod, __ATOMIC_RELEASE);
    byte_to_pipe(h);
    return 1;
}

int hs_sim_raise(hs_sim_evtchn_t *h, uint32_t port) {
    if (port == 0 || port >= HS_EVTCHN_PORTS) {
        return 0;
    }
    uint8_t *st = h->shm + HS_EVTCHN_OFF_STATE + port;
    uint8_t old = __atomic_load_n(st, __ATOMIC_ACQUIRE);
    for (int i = 0; i < HS_SIM_CAS_TRIES; i++) {
        if (old & HS_EVTCHN_PENDING) {
            return 0;  // the event it already has covers this one
        }
        // Unmasked: deliver and mask, as the evtchn device does; masked:
        // remember it until the unmask.
        uint8_t new = (old & HS_EVTCHN_MASKED) ? old | HS_EVTCHN_PENDING : old | HS_EVTCHN_MASKED;
        if (__atomic_compare_exchange_n(st, &old, new, 0, __ATOMIC_SEQ_CST, __ATOMIC_ACQUIRE)) {
            return (old & HS_EVTCHN_MASKED) ? 0 : push(h, port);
        }
    }
    return 0;
}

int hs_sim_redeliver(hs_sim_evtchn_t *h, uint32_t port) {
    if (port == 0 || port >= HS_EVTCHN_PORTS) {
        return 0;
    }
    uint8_t *st = h->shm + HS_EVTCHN_OFF_STATE + port;
    uint8_t old = __atomic_load_n(st, __ATOMIC_ACQUIRE);
    for (int i = 0; i < HS_SIM_CAS_TRIES; i++) {
        if (!(old & HS_EVTCHN_PENDING) || (old & HS_EVTCHN_MASKED)) {
            return 0;  // delivered meanwhile, or masked again
        }
        uint8_t new = (uint8_t)((old & ~HS_EVTCHN_PENDING) | HS_EVTCHN_MASKED);
        if (__atomic_compare_exchange_n(st, &old, new, 0, __ATOMIC_SEQ_CST, __ATOMIC_ACQUIRE)) {
            return push(h, port);
        }
    }
    return 0;
}

void hs_sim_reset(hs_sim_evtchn_t *h, uint32_t port) {
    if (port == 0 || port >= HS_EVTCHN_PORTS) {
        return;
    }
    uint64_t keep = ~(1ULL << (port % 64));
    __atomic_store_n(h->shm + HS_EVTCHN_OFF_STATE + port, 0, __ATOMIC_SEQ_CST);
    __atomic_fetch_and((uint64_t *)(h->shm + HS_EVTCHN_OFF_SEND) + port / 64, keep,
                       __ATOMIC_SEQ_CST);
    __atomic_fetch_and((uint64_t *)(h->shm + HS_EVTCHN_OFF_UNMASK) + port / 64, keep,
                       __ATOMIC_SEQ_CST);
}

static int take_bits(hs_sim_evtchn_t *h, uint32_t off, uint32_t flag, uint32_t *out, int n,
                     int max) {
    uint64_t *words = (uint64_t *)(h->shm + off);
    for (int w = 0; w < HS_EVTCHN_PORTS / 64 && n < max; w++) {
        if (__atomic_load_n(&words[w], __ATOMIC_RELAXED) == 0) {
            continue;
        }
        uint64_t bits = __atomic_exchange_n(&words[w], 0, __ATOMIC_SEQ_CST);
        while (bits && n < max) {
            int b = __builtin_ctzll(bits);
            bits &= bits - 1;
            out[n++] = ((uint32_t)w * 64 + (uint32_t)b) | flag;
        }
        if (bits) {
            // No room: put the rest back for the next call.
            __atomic_fetch_or(&words[w], bits, __ATOMIC_SEQ_CST);
        }
    }
    return n;
}

int hs_sim_take(hs_sim_evtchn_t *h, uint32_t *out, int max) {
    uint64_t count;
    // First the counter, then the bits: a kick after this read is for bits
    // set after it, and fires again.
    while (read(h->kick_fd, &count, sizeof(count)) < 0 && errno == EINTR) {
    }
    int n = take_bits(h, HS_EVTCHN_OFF_SEND, 0, out, 0, max);
    return take_bits(h, HS_EVTCHN_OFF_UNMASK, HS_SIM_UNMASKED, out, n, max);
}

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

// Before sleeping in poll, watch the slot for a bounded time: a device model
// on the other CPU answers a plain access in a few microseconds, and a wake-up
// from poll costs this machine's kernel about 20 us (bench pio prints it).
// Seen: IORESP_READY in the state bits and the port's notify bit set (the
// device model sets the state, then the bit, then kicks the eventfd).
static int spin_for_answer(hs_sim_evtchn_t *h, uint32_t port, const uint8_t *state) {
    if (port == 0 || port >= HS_EVTCHN_PORTS || h->spin_ns == 0) {
        return 0;
    }
    const uint64_t *send = (const uint64_t *)(h->shm + HS_EVTCHN_OFF_SEND) + port / 64;
    uint64_t bit = 1ULL << (port % 64);
    uint64_t end = now_ns() + (h->spin_ns < 1000000u ? h->spin_ns : 1000000u);
    for (;;) {
        for (int i = 0; i < 64; i++) {
            if ((__atomic_load_n(send, __ATOMIC_ACQUIRE) & bit) &&
                (__atomic_load_n(state, __ATOMIC_ACQUIRE) & 0xF) == 3) {
                return 1;
            }
            __builtin_ia32_pause();
        }
        sched_yield();  // to any runnable task (hostsim_libs.c's hs_spin_relax: why)
        if (now_ns() >= end) {
            return 0;
        }
    }
}

// An answer seen: the hops from the device model's stamps, when they are in
// order (a stale or scribbled stamp is simply not counted).
static void count_hops(hs_sim_evtchn_t *h) {
    const uint64_t *st = (const uint64_t *)(h->shm + HS_EVTCHN_OFF_STAMPS);
    uint64_t taken = __atomic_load_n(&st[0], __ATOMIC_RELAXED);
    uint64_t told = __atomic_load_n(&st[1], __ATOMIC_RELAXED);
    uint64_t seen = now_ns();
    if (h->raised_ns <= taken && taken <= told && told <= seen &&
        seen - h->raised_ns < 1000000000u) {
        h->hop_n++;
        h->hop_to_dm_ns += taken - h->raised_ns;
        h->hop_in_dm_ns += told - taken;
        h->hop_back_ns += seen - told;
    }
}

int hs_sim_wait_answer(hs_sim_evtchn_t *h, uint32_t port, const uint8_t *state,
                       struct pollfd *fds, int nfds, int timeout_ms, uint32_t *out, int max,
                       int *nout) {
    int n = 0;
    *nout = 0;
    if (nfds < 1 || fds[0].fd != h->kick_fd || max < 1) {
        return 0;
    }
    uint64_t end = now_ns() + (uint64_t)(timeout_ms > 0 ? timeout_ms : 0) * 1000000u;
    // The eventfd may not have been written yet when the spin saw the answer
    // (EAGAIN, it is non-blocking): its kick then finds no bits later, and is
    // nothing.
    int seen = spin_for_answer(h, port, state);
    for (;;) {
        if (!seen) {
            uint64_t now = now_ns();
            int left = now >= end ? 0 : (int)((end - now + 999999u) / 1000000u);
            int r;
            while ((r = poll(fds, (nfds_t)nfds, left)) < 0 && errno == EINTR) {
            }
            if (r != 1 || fds[0].revents != POLLIN) {
                break;  // the time is up, or host_sim has more to serve
            }
        }
        seen = 0;
        int first = n;
        n += hs_sim_take(h, out + n, max - n);
        for (int i = first; i < n; i++) {
            if (out[i] != port) {
                continue;
            }
            // ioreq.h's IORESP_READY in the state bits, seen after the event
            // (as Xen's vCPU): the answer; what else came is the caller's.
            if ((__atomic_load_n(state, __ATOMIC_ACQUIRE) & 0xF) == 3) {
                out[i] = out[--n];
                *nout = n;
                count_hops(h);
                return 1;
            }
            *nout = n;
            return 0;  // a notify with no answer: the caller's checks
        }
        if (n >= max) {
            break;
        }
        if (n > 0 && first == 0) {
            // Others came first: serving them must not wait for an answer that
            // may need them (a device model waiting on a backend) for long.
            uint64_t soon = now_ns() + HS_SIM_OTHERS_WAIT_NS;
            end = soon < end ? soon : end;
        }
    }
    *nout = n;
    return 0;
}
