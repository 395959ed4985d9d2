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

// The relay (vfu_relay): a plain access to a BAR whose ioreq type is set
// goes on as host_sim's SimHypervisor.send_ioreq would send it, answered in
// C when the device model's answer is all that comes.
#define VFU_RELAYED 3    // one or more accesses answered; nothing waits
#define VFU_RELAY_WAIT 4 // acc's ioreq is out, its answer not seen in the first wait
#define VFU_RELAY_SHORT 5 // acc's reply went out short: sent bytes of out[] (or -errno)
// acc answered (its data in held, counted), its reply not sent: the device
// model changed a line level (the caller applies the ring first, then
// replies) or notified other ports during the access (taken[0..nout), the
// caller's to serve after the reply). VFU_RELAYED may leave taken[0..nout)
// too: notifies seen while spinning for the next access.
#define VFU_RELAY_HELD 6
#define VFU_NO_RELAY 0xff // type[]: this BAR's accesses are the caller's

typedef struct {
    uint64_t base[6];    // each BAR's guest address
    uint8_t type[6];     // its ioreq type (IOREQ_TYPE_PIO, _COPY) or VFU_NO_RELAY
    uint8_t *slot;       // the vCPU's ioreq_t in the ioreq page
    void *evtchn;        // hs_sim_evtchn_t of the device model's handle
    uint32_t dm_port;    // the device model's end of the vCPU's channel
    uint32_t vp_eport;   // the guest's end (ioreq_t.vp_eport)
    void *wait_fds;      // struct pollfd[]: host_sim's, [0] the handle's kick eventfd
    int wait_nfds;
    int timeout_ms;      // the first wait for an answer (then the caller's)
    void *spin_fds;      // struct pollfd[]: [0] the connection, [1] the handle's kick,
                         // [2] the level ring's kick (fd -1: none), then what ends a spin
    int spin_nfds;
    uint32_t spin_ns;    // after a reply, watch the connection this long (0: return)
    uint32_t max_batch;  // accesses per call at most
    uint32_t *taken;     // what the waits and spins took from the handle (VFU_RELAY_WAIT,
    int max_taken;       // VFU_RELAY_HELD, VFU_RELAYED): the caller serves taken[0..nout)
    int nout;
    const uint32_t *irq_prod; // the device model's ring of line levels (HS_IRQ_OFF_PROD;
    const uint32_t *irq_cons; // NULL: none) and host_sim's index in it (HS_IRQ_OFF_CONS)
    uint64_t held;       // VFU_RELAY_HELD: the access's data
    int is_read;         // the last access relayed was a read
    int sent;            // VFU_RELAY_SHORT
    uint8_t out[64];     // the last reply
    uint64_t n_reads, n_writes, n_posted; // answered here, summed
    uint64_t ioreq_ns;   // their ioreqs' round trips (publish to answer seen), summed
} vfu_relay_t;

// vfu_recv, and each plain access to a relayed BAR: the ioreq written into
// the slot, the event raised, the answer awaited (hs_sim_wait_answer), the
// reply sent; then, for up to spin_ns, the next access. VFU_RELAYED, or what
// vfu_recv gave for the first message this cannot answer, or VFU_RELAY_WAIT
// (the slot is READY or answered later: the caller waits on with
// taken[0..nout)), VFU_RELAY_SHORT, VFU_RELAY_HELD.
int vfu_relay(int fd, uint8_t *buf, int cap, const uint64_t *bar_sizes, vfu_access_t *acc,
              vfu_relay_t *r);
// Watch fd for up to spin_ns: 1 readable (or hung up), 0 not in the window.
int vfu_spin(int fd, uint32_t spin_ns);

// The reply to a VFU_READ (cmd 9, with value) or VFU_WRITE (cmd 10), built
// in out (at least 48 bytes) and sent without blocking: the bytes sent
// (fewer than the reply's 32 + count: the rest is the caller's) or -errno.
int vfu_reply(int fd, const vfu_access_t *acc, int cmd, uint64_t value, uint8_t *out);

#endif
