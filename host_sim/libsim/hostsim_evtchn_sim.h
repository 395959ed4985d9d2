// host_sim's half of an event channel handle's shared memory (hostsim_proto.h,
// HS_EVTCHN_*): what host_sim/hypervisor.py calls through the cffi module
// host_sim._simevtchn (build/glue_build.py). The device model's half is in
// hostsim_libs.c. The shared page is the device model's to scribble on: every
// index read from it is reduced into range, and no loop waits on it.
#ifndef HOSTSIM_EVTCHN_SIM_H
#define HOSTSIM_EVTCHN_SIM_H

#include <stdint.h>

typedef struct {
    uint8_t *shm;  // HS_EVTCHN_SHM_SIZE bytes, mapped by host_sim
    int pipe_fd;  // the write end of the pipe the device model reads
    int kick_fd;  // the eventfd the device model writes
    uint32_t prod;  // ring entries written (ours; the shared copy is for the peer)
    uint32_t overflows;  // times the ring was found full
    // Each hop of the ioreq round trips hs_sim_wait_answer saw answered, summed
    // (ns, for benches): our last delivery to the device model's pending(), its
    // pending() to its notify(), its notify() to our seeing the answer. From the
    // device model's stamps (HS_EVTCHN_OFF_STAMPS): counted only when in order.
    uint64_t raised_ns;  // CLOCK_MONOTONIC of our last delivery
    uint64_t hop_n, hop_to_dm_ns, hop_in_dm_ns, hop_back_ns;
    uint32_t spin_ns;  // how long hs_sim_wait_answer watches the slot (0: never)
} hs_sim_evtchn_t;

// An event on local port: 1 delivered (in the ring, a byte in the pipe), 0
// left pending (masked, or pending already), -1 lost (the ring was full).
int hs_sim_raise(hs_sim_evtchn_t *h, uint32_t port);
// The device model unmasked port while it was pending: deliver it again.
int hs_sim_redeliver(hs_sim_evtchn_t *h, uint32_t port);
// A port (re)bound or closed: not pending, not masked, nothing asked of us.
void hs_sim_reset(hs_sim_evtchn_t *h, uint32_t port);
// The kick eventfd fired: the ports notified since the last call, then the
// ports unmasked while pending (with HS_SIM_UNMASKED set), at most max.
int hs_sim_take(hs_sim_evtchn_t *h, uint32_t *out, int max);
#define HS_SIM_UNMASKED 0x80000000u

struct pollfd;
// A vCPU waiting for its ioreq's answer: poll fds (fds[0] is this handle's kick
// eventfd) up to timeout_ms in all, taking what each kick brings, until a notify
// of port with *state (the ioreq slot's state byte) IORESP_READY after it: 1,
// with the other ports taken (notified during the access, the caller's to serve)
// in out[0..*nout). 0 when the time is up, another fd is ready (left ready for the
// caller's own poll), out is full or port was notified with no answer: whatever
// was taken in out[0..*nout) for the caller to serve.
int hs_sim_wait_answer(hs_sim_evtchn_t *h, uint32_t port, const uint8_t *state,
                       struct pollfd *fds, int nfds, int timeout_ms, uint32_t *out, int max,
                       int *nout);

#endif
