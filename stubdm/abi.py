# The ioreq ABI, byte for byte as xen/include/public/hvm/ioreq.h lays it out
# (DESIGN.md section 5). tests/test_abi.py compiles against Debian's
# libxen-dev headers and checks every size, offset and bit here.
import struct

from stubdm.compat import const

# struct ioreq: 32 bytes, one per vCPU in the shared ioreq page.
IOREQ_SIZE = const(32)
IOREQ_OFF_ADDR = const(0)  # u64
IOREQ_OFF_DATA = const(8)  # u64
IOREQ_OFF_COUNT = const(16)  # u32
IOREQ_OFF_SIZE = const(20)  # u32
IOREQ_OFF_VP_EPORT = const(24)  # u32
IOREQ_OFF_PAD0 = const(28)  # u16
IOREQ_OFF_FLAGS = const(30)  # u8: state:4, data_is_ptr:1, dir:1, df:1, pad:1
IOREQ_OFF_TYPE = const(31)  # u8
IOREQ_FMT = "<QQIIIHBB"

# Bits of the byte at IOREQ_OFF_FLAGS.
STATE_MASK = const(0x0F)
FLAG_DATA_IS_PTR = const(0x10)
FLAG_DIR_READ = const(0x20)
FLAG_DF = const(0x40)

STATE_IOREQ_NONE = const(0)
STATE_IOREQ_READY = const(1)
STATE_IOREQ_INPROCESS = const(2)
STATE_IORESP_READY = const(3)

IOREQ_READ = const(1)
IOREQ_WRITE = const(0)

IOREQ_TYPE_PIO = const(0)
IOREQ_TYPE_COPY = const(1)
IOREQ_TYPE_PCI_CONFIG = const(2)
IOREQ_TYPE_TIMEOFFSET = const(7)
IOREQ_TYPE_INVALIDATE = const(8)

# struct buffered_iopage: two u32 pointers, then 511 slots of 8 bytes.
PAGE_SIZE = const(4096)
BUFIOREQ_OFF_READ_POINTER = const(0)
BUFIOREQ_OFF_WRITE_POINTER = const(4)
BUFIOREQ_OFF_SLOTS = const(8)
IOREQ_BUFFER_SLOT_NUM = const(511)
BUF_IOREQ_SIZE = const(8)

# struct buf_ioreq, word 0 (little-endian u32): type 0-7, pad 8, dir 9,
# size code 10-11 (0 => 1 byte, 1 => 2, 2 => 4, 3 => 8), addr 12-31.
# Word 1 holds the low 32 data bits; an 8-byte item spends a second slot on
# the high 32 bits.
BUF_TYPE_MASK = const(0xFF)
BUF_DIR_SHIFT = const(9)
BUF_SIZE_SHIFT = const(10)
BUF_ADDR_SHIFT = const(12)
BUF_ADDR_MASK = const(0xFFFFF)

# PCI_CONFIG requests: seg[63:48] bus[47:40] dev[39:35] fn[34:32] reg[31:0].
PCI_SBDF_SHIFT = const(32)

# dm_op io range kinds (xen/include/public/hvm/dm_op.h).
XEN_DMOP_IO_RANGE_PORT = const(0)
XEN_DMOP_IO_RANGE_MEMORY = const(1)
XEN_DMOP_IO_RANGE_PCI = const(2)

# handle_bufioreq argument of create_ioreq_server (hvm_op.h).
HVM_IOREQSRV_BUFIOREQ_OFF = const(0)
HVM_IOREQSRV_BUFIOREQ_LEGACY = const(1)
HVM_IOREQSRV_BUFIOREQ_ATOMIC = const(2)

# SHUTDOWN_* reasons (xen/include/public/sched.h).
SHUTDOWN_poweroff = const(0)
SHUTDOWN_reboot = const(1)
SHUTDOWN_suspend = const(2)
SHUTDOWN_crash = const(3)

# The ACPI sleep state HVM param (xen/include/public/hvm/params.h): the device
# model sets 3 when the guest enters S3 (Xen pauses and resets the vCPUs), 0 to wake it.
HVM_PARAM_ACPI_S_STATE = const(14)


def pack_ioreq(addr, data, count, size, vp_eport, state, data_is_ptr, dir_, df, type_):
    flags = (state & STATE_MASK) | (FLAG_DATA_IS_PTR if data_is_ptr else 0)
    flags |= (FLAG_DIR_READ if dir_ else 0) | (FLAG_DF if df else 0)
    return struct.pack(
        IOREQ_FMT,
        addr & 0xFFFFFFFFFFFFFFFF,
        data & 0xFFFFFFFFFFFFFFFF,
        count & 0xFFFFFFFF,
        size & 0xFFFFFFFF,
        vp_eport & 0xFFFFFFFF,
        0,
        flags,
        type_ & 0xFF,
    )


def pci_sbdf(seg, bus, dev, fn):
    return ((seg & 0xFFFF) << 16) | ((bus & 0xFF) << 8) | ((dev & 0x1F) << 3) | (fn & 7)


def buf_size_code(size):
    """Size in bytes (1, 2, 4, 8) to the 2-bit code; -1 for anything else."""
    if size == 1:
        return 0
    if size == 2:
        return 1
    if size == 4:
        return 2
    if size == 8:
        return 3
    return -1


def pack_buf_ioreq(type_, dir_, size, addr, data32):
    """One 8-byte slot of the buffered page (the producer's side, for host_sim)."""
    code = buf_size_code(size)
    if code < 0:
        raise ValueError("buffered ioreq size must be 1, 2, 4 or 8")
    w0 = (type_ & BUF_TYPE_MASK) | ((dir_ & 1) << BUF_DIR_SHIFT)
    w0 |= code << BUF_SIZE_SHIFT
    w0 |= (addr & BUF_ADDR_MASK) << BUF_ADDR_SHIFT
    return struct.pack("<II", w0, data32 & 0xFFFFFFFF)
