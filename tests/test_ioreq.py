"""The ioreq loop with hand-built requests in plain pages, hostile ones included.

The pages here are bytearrays laid out exactly as Xen's (stubdm.abi, itself
checked against Xen's header in test_abi.py); the end-to-end path through
host_sim is in test_scripted_guest.py.
"""
import struct

import pytest

from stubdm import abi, log
from stubdm.bus import IoBus
from stubdm.ioreq import Dispatcher, IoreqLoop
from tests.portable.ioreq_fakes import Hyp, Ram, Regs, get, put, state

RAM = 1 << 20


class Function:
    def __init__(self):
        self.space = bytearray(256)

    def config_read(self, reg, size):
        return int.from_bytes(self.space[reg : reg + size], "little")

    def config_write(self, reg, size, value):
        self.space[reg : reg + size] = value.to_bytes(size, "little")


class Pci:
    """Only 00:03.0 is present."""

    def __init__(self):
        self.f = Function()

    def find(self, devfn):
        return self.f if devfn == 0x18 else None


@pytest.fixture
def rig():
    pio, mmio = IoBus("pio"), IoBus("mmio")
    dev, mdev = Regs(), Regs()
    pio.add(0x3F8, 8, dev, "uart")
    mmio.add(0xFEB00000, 16, mdev, "regs")
    ram, hyp = Ram(RAM), Hyp()
    d = Dispatcher(pio, mmio, Pci(), ram)
    page, buf = bytearray(4096), bytearray(4096)
    loop = IoreqLoop(hyp, d, page, [5, 6], buf, 9)
    log.reset_counts()
    return loop, dev, mdev, ram, hyp


def test_pio_write_then_read_round_trip(rig):
    loop, dev, _, _, hyp = rig
    put(loop, 0, abi.IOREQ_TYPE_PIO, 0x3FF, 0x1A5, size=1)  # high bits masked
    loop.on_port(5)
    assert dev.log == [("w", 7, 1, 0xA5)]
    assert state(loop, 0) == abi.STATE_IORESP_READY and hyp.notified == [5]
    put(loop, 1, abi.IOREQ_TYPE_PIO, 0x3FF, 0xDEAD, size=1, read=1)
    loop.on_port(6)
    assert get(loop, 1)[1] == 0xA5 and hyp.notified == [5, 6]
    # The flags other than state are kept: dir still says read.
    assert get(loop, 1)[6] & abi.FLAG_DIR_READ
    assert hyp.barriers >= 4


def test_unclaimed_read_is_all_ones(rig):
    loop = rig[0]
    put(loop, 0, abi.IOREQ_TYPE_PIO, 0x80, size=2, read=1)
    loop.on_port(5)
    assert get(loop, 0)[1] == 0xFFFF
    assert log.count("guest_error") == 1


def test_mmio_qword(rig):
    loop, _, mdev, _, _ = rig
    put(loop, 0, abi.IOREQ_TYPE_COPY, 0xFEB00008, 0x1122334455667788, size=8)
    loop.on_port(5)
    put(loop, 0, abi.IOREQ_TYPE_COPY, 0xFEB00008, size=8, read=1)
    loop.on_port(5)
    assert get(loop, 0)[1] == 0x1122334455667788


def test_rep_outsb_from_guest_memory(rig):
    loop, dev, _, ram, _ = rig
    ram.write(0x1000, b"hello")
    put(loop, 0, abi.IOREQ_TYPE_PIO, 0x3F8, 0x1000, size=1, count=5, ptr=1)
    loop.on_port(5)
    assert [e[3] for e in dev.log] == list(b"hello")
    assert all(e[1] == 0 for e in dev.log)  # the port does not step


def test_rep_insw_backwards(rig):
    loop, dev, _, ram, _ = rig
    dev.regs[0:2] = b"\x34\x12"
    put(loop, 0, abi.IOREQ_TYPE_PIO, 0x3F8, 0x2004, size=2, count=3, read=1, ptr=1, df=1)
    loop.on_port(5)
    assert ram.read(0x2000, 6) == b"\x34\x12" * 3


def test_rep_mmio_steps_both_sides(rig):
    loop, _, mdev, ram, _ = rig
    ram.write(0x3000, bytes(range(16)))
    put(loop, 0, abi.IOREQ_TYPE_COPY, 0xFEB00000, 0x3000, size=4, count=4, ptr=1)
    loop.on_port(5)
    assert bytes(mdev.regs) == bytes(range(16))


def test_pci_config(rig):
    loop = rig[0]
    sbdf = abi.pci_sbdf(0, 0, 3, 0)
    put(loop, 0, abi.IOREQ_TYPE_PCI_CONFIG, (sbdf << 32) | 0x3C, 0x0B, size=1)
    loop.on_port(5)
    put(loop, 0, abi.IOREQ_TYPE_PCI_CONFIG, (sbdf << 32) | 0x3C, size=4, read=1)
    loop.on_port(5)
    assert get(loop, 0)[1] == 0x0B
    # Nobody registered 00:04.0: all ones and a guest error.
    other = abi.pci_sbdf(0, 0, 4, 0)
    put(loop, 0, abi.IOREQ_TYPE_PCI_CONFIG, other << 32, size=4, read=1)
    loop.on_port(5)
    assert get(loop, 0)[1] == 0xFFFFFFFF and log.count("guest_error") == 1


def test_invalidate_and_timeoffset(rig):
    loop, _, _, ram, _ = rig
    put(loop, 0, abi.IOREQ_TYPE_INVALIDATE, 0)
    loop.on_port(5)
    assert ram.invalidations == 1
    put(loop, 0, abi.IOREQ_TYPE_TIMEOFFSET, 0, data=(-3600) & 0xFFFFFFFFFFFFFFFF, size=8)
    loop.on_port(5)
    assert loop.d.time_offset == -3600


def test_buffered_ring_drained_before_the_sync_request(rig):
    loop, dev, mdev, _, _ = rig
    # Two buffered writes to the MMIO range and one 8-byte item (two slots);
    # buffered addresses are 20 bits, so put a device low.
    low = Regs()
    loop.d.mmio.add(0xA0000, 16, low, "vga")
    items = [
        abi.pack_buf_ioreq(abi.IOREQ_TYPE_COPY, 0, 1, 0xA0000, 0x11),
        abi.pack_buf_ioreq(abi.IOREQ_TYPE_COPY, 0, 2, 0xA0002, 0x2233),
        abi.pack_buf_ioreq(abi.IOREQ_TYPE_COPY, 0, 8, 0xA0008, 0x44556677),
        struct.pack("<II", 0, 0x8899AABB),
    ]
    # Start near the end of the ring so the 8-byte item wraps.
    start = 509
    for i, it in enumerate(items):
        slot = (start + i) % 511
        loop.buf[8 + slot * 8 : 16 + slot * 8] = it
    struct.pack_into("<II", loop.buf, 0, start, start + 4)
    put(loop, 0, abi.IOREQ_TYPE_PIO, 0x3F8, size=1, read=1)
    loop.on_port(5)
    assert [e for e in low.log] == [
        ("w", 0, 1, 0x11),
        ("w", 2, 2, 0x2233),
        ("w", 8, 8, 0x8899AABB44556677),
    ]
    assert struct.unpack_from("<II", loop.buf, 0) == (start + 4, start + 4)
    assert dev.log == [("r", 0, 1)]


@pytest.mark.parametrize(
    "type_,size,count,ptr,data",
    [
        (42, 4, 1, 0, 0),  # unknown type
        (abi.IOREQ_TYPE_PIO, 0, 1, 0, 0),
        (abi.IOREQ_TYPE_PIO, 3, 1, 0, 0),
        (abi.IOREQ_TYPE_PIO, 16, 1, 0, 0),
        (abi.IOREQ_TYPE_COPY, 16, 1, 0, 0),
        (abi.IOREQ_TYPE_PIO, 1, 0, 0, 0),
        (abi.IOREQ_TYPE_PIO, 1, 10**9, 1, 0x1000),
        (abi.IOREQ_TYPE_PIO, 4, 2, 1, 1 << 40),  # pointer outside guest RAM
        (abi.IOREQ_TYPE_PIO, 4, 2, 1, 0xFFFFFFFFFFFFFFFC),  # wraps
    ],
)
@pytest.mark.parametrize("read", [0, 1])
def test_hostile_requests_are_survived(rig, type_, size, count, ptr, data, read):
    loop, dev, _, _, hyp = rig
    put(loop, 0, type_, 0x3F8, data, size=size, count=count, ptr=ptr, read=read)
    loop.on_port(5)
    assert state(loop, 0) == abi.STATE_IORESP_READY
    assert hyp.notified == [5]
    assert log.count("guest_error") >= 1
    if read and not ptr:
        # All ones, never wider than the access.
        want = (1 << (8 * size)) - 1 if 1 <= size <= 8 else 0xFFFFFFFFFFFFFFFF
        assert get(loop, 0)[1] == want


@pytest.mark.parametrize("st", [0, 2, 3, 9, 15])
def test_slot_not_ready_is_left_alone(rig, st):
    loop, dev, _, _, hyp = rig
    put(loop, 0, abi.IOREQ_TYPE_PIO, 0x3F8, 0x41, state=st)
    before = bytes(loop.page[:32])
    loop.on_port(5)
    assert bytes(loop.page[:32]) == before  # never moved, never backwards
    assert dev.log == [] and hyp.notified == []


def test_corrupt_buffered_pointers(rig):
    loop, dev, _, _, _ = rig
    struct.pack_into("<II", loop.buf, 0, 0, 100000)
    put(loop, 0, abi.IOREQ_TYPE_PIO, 0x3F8, size=1, read=1)
    loop.on_port(5)
    assert log.count("guest_error") == 1
    rp, wp = struct.unpack_from("<II", loop.buf, 0)
    assert rp == wp
    assert state(loop, 0) == abi.STATE_IORESP_READY


# --- IRQ levels: once per request, before its answer (stubdm.machine.IrqLatch) ---


class Toggler:
    """A register whose every write flips an IRQ line (as a 16550's THRE does)."""

    def __init__(self, line):
        self.line = line

    def read(self, off, size):
        return 0

    def write(self, off, size, value):
        self.line.set_level(0)
        self.line.set_level(value & 1)


class SeenPlatform:
    def __init__(self, loop=None):
        self.loop = loop
        self.calls = []

    def set_isa_irq_level(self, irq, level):
        # What the vCPU's slot says when the platform hears of the level.
        st = state(self.loop, 0) if self.loop is not None else None
        self.calls.append((irq, level, st))

    def set_pci_intx_level(self, dev, pin, level):
        self.calls.append(("intx", dev, pin, level))


def latch_rig(rig):
    from stubdm.machine import IrqLatch

    loop = rig[0]
    plat = SeenPlatform(loop)
    irqs = IrqLatch(plat)
    loop.d.irqs = irqs
    low = Toggler(irqs.isa_line(5))
    loop.d.pio.add(0x200, 1, low, "toggler")
    return loop, plat, irqs


def test_irq_reported_once_per_request_before_the_answer(rig):
    loop, plat, irqs = latch_rig(rig)
    ram = rig[3]
    ram.b[0x1000 : 0x1000 + 4096] = b"\x01" * 4096
    put(loop, 0, abi.IOREQ_TYPE_PIO, 0x200, data=0x1000, size=1, count=4096, ptr=1)
    loop.on_port(5)
    assert plat.calls == [(5, 1, abi.STATE_IOREQ_INPROCESS)]
    put(loop, 0, abi.IOREQ_TYPE_PIO, 0x200, data=0x1000, size=1, count=4096, ptr=1)
    loop.on_port(5)
    assert len(plat.calls) == 1  # the level ended as the platform last saw it
    assert irqs.reports == 1


def test_buffered_batch_reports_irq_changes_once(rig):
    loop, plat, irqs = latch_rig(rig)
    items = [abi.pack_buf_ioreq(abi.IOREQ_TYPE_PIO, 0, 1, 0x200, i & 1) for i in range(99)]
    for i, it in enumerate(items):
        loop.buf[8 + i * 8 : 16 + i * 8] = it
    struct.pack_into("<II", loop.buf, 0, 0, len(items))
    loop.on_port(9)
    assert plat.calls == []  # 98 flips, and the line ends low, as the platform saw it
    items = [abi.pack_buf_ioreq(abi.IOREQ_TYPE_PIO, 0, 1, 0x200, 1)] * 3
    for i, it in enumerate(items):
        loop.buf[8 + (99 + i) * 8 : 16 + (99 + i) * 8] = it
    struct.pack_into("<I", loop.buf, 4, 99 + 3)
    loop.on_port(9)
    assert [c[:2] for c in plat.calls] == [(5, 1)]


def test_rep_pci_config_is_the_same_register_count_times(rig):
    loop, _, _, ram, _ = rig
    f = loop.d.pci.f
    ram.b[0x2000:0x200C] = bytes(range(1, 13))
    addr = (0x18 << 32) | 0x40
    put(loop, 0, abi.IOREQ_TYPE_PCI_CONFIG, addr, data=0x2000, size=4, count=3, ptr=1)
    loop.on_port(5)
    assert f.space[0x40:0x44] == bytes((9, 10, 11, 12))  # the last item wins
    put(loop, 0, abi.IOREQ_TYPE_PCI_CONFIG, addr, data=0x3000, size=4, count=2, ptr=1, read=1)
    loop.on_port(5)
    assert ram.b[0x3000:0x3008] == bytes((9, 10, 11, 12)) * 2
    # The pointer is never taken for a value.
    assert f.space[0x44:0x48] == bytes(4)


def test_single_access_reports_irq_once_before_the_answer(rig):
    # The short path of one port access (Dispatcher.access) holds the latch
    # as dispatch() does: a write that flips the line twice reaches the
    # platform once, while the slot is still INPROCESS.
    loop, plat, irqs = latch_rig(rig)
    put(loop, 0, abi.IOREQ_TYPE_PIO, 0x200, data=1, size=1)
    loop.on_port(5)
    assert plat.calls == [(5, 1, abi.STATE_IOREQ_INPROCESS)]
    assert state(loop, 0) == abi.STATE_IORESP_READY and irqs.held == 0
    put(loop, 0, abi.IOREQ_TYPE_PIO, 0x200, data=1, size=1)
    loop.on_port(5)
    assert len(plat.calls) == 1  # high before and after: nothing to report


class Broken:
    def read(self, off, size):
        raise RuntimeError("device bug")

    def write(self, off, size, value):
        raise RuntimeError("device bug")


def test_failing_device_leaves_the_latch_released(rig):
    loop, plat, irqs = latch_rig(rig)
    loop.d.pio.add(0x300, 1, Broken(), "broken")
    put(loop, 0, abi.IOREQ_TYPE_PIO, 0x300, size=1, read=1)
    with pytest.raises(RuntimeError):
        loop.on_port(5)
    assert irqs.held == 0
    # Later levels still reach the platform at once.
    put(loop, 0, abi.IOREQ_TYPE_PIO, 0x200, data=1, size=1)
    loop.on_port(5)
    assert plat.calls == [(5, 1, abi.STATE_IOREQ_INPROCESS)]


def test_hot_path_constants_are_abis():
    from stubdm import ioreq

    assert (ioreq._TYPE_PIO, ioreq._TYPE_COPY) == (abi.IOREQ_TYPE_PIO, abi.IOREQ_TYPE_COPY)
    assert (ioreq._SLOT_SIZE, ioreq._OFF_DATA, ioreq._OFF_COUNT, ioreq._OFF_FLAGS,
            ioreq._OFF_TYPE) == (abi.IOREQ_SIZE, abi.IOREQ_OFF_DATA, abi.IOREQ_OFF_COUNT,
                                 abi.IOREQ_OFF_FLAGS, abi.IOREQ_OFF_TYPE)
    assert (ioreq._STATE_MASK, ioreq._READY, ioreq._INPROCESS, ioreq._RESP_READY) == (
        abi.STATE_MASK, abi.STATE_IOREQ_READY, abi.STATE_IOREQ_INPROCESS,
        abi.STATE_IORESP_READY)
    assert (ioreq._IS_PTR, ioreq._DIR_READ, ioreq._DF) == (
        abi.FLAG_DATA_IS_PTR, abi.FLAG_DIR_READ, abi.FLAG_DF)
    # The two-field reads cover the slot's layout as IOREQ_FMT has it.
    assert abi.IOREQ_FMT == "<QQIIIHBB" and abi.IOREQ_OFF_SIZE == abi.IOREQ_OFF_COUNT + 4
