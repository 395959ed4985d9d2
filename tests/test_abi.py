"""stubdm.abi against Xen's own header (Debian's libxen-dev), compiled with cffi.

Every size, offset and bit encoding of ioreq_t and the buffered ioreq page is
taken from the C compiler, not from our reading of the header.
"""
import os
import struct

import pytest

from stubdm import abi

HEADER = "/usr/include/xen/hvm/ioreq.h"

pytestmark = pytest.mark.skipif(
    not os.path.exists(HEADER), reason="needs Xen's public headers: apt-get install libxen-dev"
)

CDEF = """
    size_t sizeof_ioreq(void);
    size_t sizeof_buf_ioreq(void);
    size_t sizeof_buffered_iopage(void);
    size_t off_ioreq(int field);
    size_t off_bufpage(int field);
    void encode_ioreq(unsigned char *out, uint64_t addr, uint64_t data, uint32_t count,
                      uint32_t size, uint32_t port, int state, int ptr, int dir, int df,
                      int type);
    void encode_buf(unsigned char *out, int type, int dir, int size, uint32_t addr,
                    uint32_t data);
    int constant(int which);
"""

SOURCE = r"""
#define __XEN_TOOLS__ 1
#include <stdint.h>
#include <stddef.h>
#include <string.h>
#include <xen/xen.h>
#include <xen/hvm/ioreq.h>
#include <xen/hvm/dm_op.h>
#include <xen/hvm/hvm_op.h>
#include <xen/sched.h>
#include <xen/hvm/params.h>

size_t sizeof_ioreq(void) { return sizeof(ioreq_t); }
size_t sizeof_buf_ioreq(void) { return sizeof(buf_ioreq_t); }
size_t sizeof_buffered_iopage(void) { return sizeof(buffered_iopage_t); }
size_t off_ioreq(int f) {
    switch (f) {
    case 0: return offsetof(ioreq_t, addr);
    case 1: return offsetof(ioreq_t, data);
    case 2: return offsetof(ioreq_t, count);
    case 3: return offsetof(ioreq_t, size);
    case 4: return offsetof(ioreq_t, vp_eport);
    case 5: return offsetof(ioreq_t, _pad0);
    case 6: return offsetof(ioreq_t, type);
    }
    return (size_t)-1;
}
size_t off_bufpage(int f) {
    switch (f) {
    case 0: return offsetof(buffered_iopage_t, read_pointer);
    case 1: return offsetof(buffered_iopage_t, write_pointer);
    case 2: return offsetof(buffered_iopage_t, buf_ioreq);
    }
    return (size_t)-1;
}
void encode_ioreq(unsigned char *out, uint64_t addr, uint64_t data, uint32_t count,
                  uint32_t size, uint32_t port, int state, int ptr, int dir, int df,
                  int type) {
    ioreq_t r;
    memset(&r, 0, sizeof(r));
    r.addr = addr; r.data = data; r.count = count; r.size = size; r.vp_eport = port;
    r.state = state; r.data_is_ptr = ptr; r.dir = dir; r.df = df; r.type = type;
    memcpy(out, &r, sizeof(r));
}
void encode_buf(unsigned char *out, int type, int dir, int size, uint32_t addr,
                uint32_t data) {
    buf_ioreq_t b;
    memset(&b, 0, sizeof(b));
    b.type = type; b.dir = dir; b.size = size; b.addr = addr; b.data = data;
    memcpy(out, &b, sizeof(b));
}
int constant(int w) {
    switch (w) {
    case 0: return STATE_IOREQ_NONE;
    case 1: return STATE_IOREQ_READY;
    case 2: return STATE_IOREQ_INPROCESS;
    case 3: return STATE_IORESP_READY;
    case 4: return IOREQ_TYPE_PIO;
    case 5: return IOREQ_TYPE_COPY;
    case 6: return IOREQ_TYPE_PCI_CONFIG;
    case 7: return IOREQ_TYPE_TIMEOFFSET;
    case 8: return IOREQ_TYPE_INVALIDATE;
    case 9: return IOREQ_READ;
    case 10: return IOREQ_WRITE;
    case 11: return IOREQ_BUFFER_SLOT_NUM;
    case 12: return XEN_DMOP_IO_RANGE_PORT;
    case 13: return XEN_DMOP_IO_RANGE_MEMORY;
    case 14: return XEN_DMOP_IO_RANGE_PCI;
    case 15: return HVM_IOREQSRV_BUFIOREQ_OFF;
    case 16: return HVM_IOREQSRV_BUFIOREQ_LEGACY;
    case 17: return HVM_IOREQSRV_BUFIOREQ_ATOMIC;
    case 18: return SHUTDOWN_poweroff;
    case 19: return SHUTDOWN_reboot;
    case 20: return SHUTDOWN_crash;
    case 21: return HVM_PARAM_ACPI_S_STATE;
    }
    return -1;
}
"""


@pytest.fixture(scope="module")
def xen(tmp_path_factory):
    import importlib
    import sys

    cffi = pytest.importorskip("cffi")
    ffi = cffi.FFI()
    ffi.cdef(CDEF)
    ffi.set_source("_abi_probe", SOURCE)
    out = tmp_path_factory.mktemp("abi")
    ffi.compile(tmpdir=str(out), verbose=False)
    sys.path.insert(0, str(out))
    try:
        mod = importlib.import_module("_abi_probe")
    finally:
        sys.path.remove(str(out))
    return mod


def test_sizes(xen):
    assert xen.lib.sizeof_ioreq() == abi.IOREQ_SIZE == struct.calcsize(abi.IOREQ_FMT)
    assert xen.lib.sizeof_buf_ioreq() == abi.BUF_IOREQ_SIZE
    page = abi.BUFIOREQ_OFF_SLOTS + abi.IOREQ_BUFFER_SLOT_NUM * abi.BUF_IOREQ_SIZE
    assert xen.lib.sizeof_buffered_iopage() == page <= abi.PAGE_SIZE


def test_offsets(xen):
    ours = [
        abi.IOREQ_OFF_ADDR,
        abi.IOREQ_OFF_DATA,
        abi.IOREQ_OFF_COUNT,
        abi.IOREQ_OFF_SIZE,
        abi.IOREQ_OFF_VP_EPORT,
        abi.IOREQ_OFF_PAD0,
        abi.IOREQ_OFF_TYPE,
    ]
    assert [xen.lib.off_ioreq(i) for i in range(7)] == ours
    assert [xen.lib.off_bufpage(i) for i in range(3)] == [
        abi.BUFIOREQ_OFF_READ_POINTER,
        abi.BUFIOREQ_OFF_WRITE_POINTER,
        abi.BUFIOREQ_OFF_SLOTS,
    ]


def test_constants(xen):
    ours = [
        abi.STATE_IOREQ_NONE,
        abi.STATE_IOREQ_READY,
        abi.STATE_IOREQ_INPROCESS,
        abi.STATE_IORESP_READY,
        abi.IOREQ_TYPE_PIO,
        abi.IOREQ_TYPE_COPY,
        abi.IOREQ_TYPE_PCI_CONFIG,
        abi.IOREQ_TYPE_TIMEOFFSET,
        abi.IOREQ_TYPE_INVALIDATE,
        abi.IOREQ_READ,
        abi.IOREQ_WRITE,
        abi.IOREQ_BUFFER_SLOT_NUM,
        abi.XEN_DMOP_IO_RANGE_PORT,
        abi.XEN_DMOP_IO_RANGE_MEMORY,
        abi.XEN_DMOP_IO_RANGE_PCI,
        abi.HVM_IOREQSRV_BUFIOREQ_OFF,
        abi.HVM_IOREQSRV_BUFIOREQ_LEGACY,
        abi.HVM_IOREQSRV_BUFIOREQ_ATOMIC,
        abi.SHUTDOWN_poweroff,
        abi.SHUTDOWN_reboot,
        abi.SHUTDOWN_crash,
        abi.HVM_PARAM_ACPI_S_STATE,
    ]
    assert [xen.lib.constant(i) for i in range(len(ours))] == ours


@pytest.mark.parametrize("state", [0, 1, 2, 3, 15])
@pytest.mark.parametrize("ptr,dir_,df", [(0, 0, 0), (1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 1, 1)])
def test_ioreq_encoding(xen, state, ptr, dir_, df):
    # The flags byte at offset 30 holds four bit-fields; the compiler decides
    # where they land, so compare whole encodings.
    c = xen.ffi.new("unsigned char[32]")
    args = (0x123456789ABCDEF0, 0xFEDCBA9876543210, 0x1000, 4, 77)
    xen.lib.encode_ioreq(c, *args, state, ptr, dir_, df, 0xA5)
    mine = abi.pack_ioreq(*args, state, ptr, dir_, df, 0xA5)
    assert bytes(xen.ffi.buffer(c)) == mine
    fields = struct.unpack(abi.IOREQ_FMT, mine)
    flags = fields[6]
    assert flags & abi.STATE_MASK == state
    assert bool(flags & abi.FLAG_DATA_IS_PTR) == bool(ptr)
    assert bool(flags & abi.FLAG_DIR_READ) == bool(dir_)
    assert bool(flags & abi.FLAG_DF) == bool(df)


@pytest.mark.parametrize("size", [1, 2, 4, 8])
@pytest.mark.parametrize("dir_", [0, 1])
@pytest.mark.parametrize("addr", [0, 0xA0000, 0xFFFFF])
def test_buf_ioreq_encoding(xen, size, dir_, addr):
    c = xen.ffi.new("unsigned char[8]")
    xen.lib.encode_buf(c, abi.IOREQ_TYPE_COPY, dir_, abi.buf_size_code(size), addr, 0xCAFEBABE)
    mine = abi.pack_buf_ioreq(abi.IOREQ_TYPE_COPY, dir_, size, addr, 0xCAFEBABE)
    assert bytes(xen.ffi.buffer(c)) == mine
