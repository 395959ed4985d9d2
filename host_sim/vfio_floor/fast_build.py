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
"""


def make_ffi():
    ffi = cffi.FFI()
    ffi.cdef(CDEF)
    ffi.set_source("host_sim._vfu_fast", '#include "vfu_fast.h"',
                   sources=[os.path.join(HERE, "vfu_fast.c")], include_dirs=[HERE],
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
