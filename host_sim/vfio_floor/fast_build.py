"""Build host_sim._vfu_fast, the vfio-user server's hot path (vfu_fast.c), with cffi.

Run by SConstruct (host_sim/vfio_floor/SConscript, target vfu-fast); usable
alone: python3 host_sim/vfio_floor/fast_build.py
"""
import os
import sys

import cffi

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))

CDEF = """
#define VFU_MAX_FDS 64
#define VFU_BYTES 0
#define VFU_READ 1
#define VFU_WRITE 2
typedef struct {
    uint32_t len;
    int nfds;
    int ctrunc;
    int fds[VFU_MAX_FDS];
    uint16_t msg_id;
    int posted;
    uint32_t region;
    uint32_t count;
    uint64_t offset;
    uint64_t value;
} vfu_access_t;
int vfu_recv(int fd, uint8_t *buf, int cap, const uint64_t *bar_sizes, vfu_access_t *acc);
int vfu_reply(int fd, const vfu_access_t *acc, int cmd, uint64_t value, uint8_t *out);
#define VFU_RELAYED 3
#define VFU_RELAY_WAIT 4
#define VFU_RELAY_SHORT 5
#define VFU_RELAY_HELD 6
#define VFU_NO_RELAY 0xff
#define POLLIN ...
struct pollfd { int fd; short events; short revents; };
typedef struct {
    uint64_t base[6];
    uint8_t type[6];
    uint8_t *slot;
    void *evtchn;
    uint32_t dm_port;
    uint32_t vp_eport;
    void *wait_fds;
    int wait_nfds;
    int timeout_ms;
    void *spin_fds;
    int spin_nfds;
    uint32_t spin_ns;
    uint32_t max_batch;
    uint32_t *taken;
    int max_taken;
    int nout;
    const uint32_t *irq_prod;
    const uint32_t *irq_cons;
    uint64_t held;
    int is_read;
    int sent;
    uint8_t out[64];
    uint64_t n_reads, n_writes, n_posted;
    uint64_t ioreq_ns;
} vfu_relay_t;
int vfu_relay(int fd, uint8_t *buf, int cap, const uint64_t *bar_sizes, vfu_access_t *acc,
              vfu_relay_t *r);
int vfu_spin(int fd, uint32_t spin_ns);
"""


def make_ffi():
    ffi = cffi.FFI()
    ffi.cdef(CDEF)
    # The relay raises and awaits the device model's events as send_ioreq does,
    # with the same code: host_sim's half of the event channels' shared memory.
    libsim = os.path.join(ROOT, "host_sim", "libsim")
    ffi.set_source("host_sim._vfu_fast", '#include <poll.h>\n#include "vfu_fast.h"',
                   sources=[os.path.join(HERE, "vfu_fast.c"),
                            os.path.join(libsim, "hostsim_evtchn_sim.c")],
                   include_dirs=[HERE, libsim],
                   extra_compile_args=["-O2", "-std=gnu11", "-Wall", "-Wextra"])
    return ffi


def build(tmpdir=None):
    tmpdir = tmpdir or os.path.join(ROOT, "build", "out", "vfu_fast")
    os.makedirs(tmpdir, exist_ok=True)
    so = make_ffi().compile(tmpdir=tmpdir, verbose=False)
    dest = os.path.join(ROOT, "host_sim", os.path.basename(so))
    os.replace(so, dest)
    return dest


if __name__ == "__main__":
    sys.exit(print(build()))
