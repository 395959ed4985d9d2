"""End-to-end tests of stubdm through the real path.

The device model runs in its own process (python -m stubdm) against
host_sim's hypervisor; the scripted guest's accesses become ioreqs in the
shared page, the answers come back through it, IRQs and PCI link routes
arrive as dm_ops (host_sim.scripted.Session). Nothing here talks to a device
core directly.

One Session serves the tests that leave the machine as they found it (the
module-scoped `shared` fixture); tests that reset the machine, move BARs or
scramble device state get a fresh one (`fresh`). Facts checked come from
DESIGN.md sections 4 and 5 (ioreq protocol) and, for the platform device,
Xen's docs/misc/hvm-emulated-unplug.pandoc.

Every test runs on both device model runtimes (the `dm_runtime` fixture of
tests/conftest.py: CPython, and MicroPython's build/out/micropython).
"""
import random
import struct
import time

import pytest

from host_sim.scripted import Session
from stubdm import abi

COM1 = 0x3F8
RBR, IER, IIR, LCR, MCR, LSR, MSR, SCR = range(8)
THR = RBR
FCR = IIR
KBD_DATA, KBD_CMD = 0x60, 0x64
PLATFORM = 0x10
PORT = abi.XEN_DMOP_IO_RANGE_PORT
MMIO = abi.XEN_DMOP_IO_RANGE_MEMORY
ALL_ONES = 0xFFFFFFFFFFFFFFFF
RAM_MIB = 64

DEV_PLATFORM = 3
DEV_PCI_SERIAL = 4  # the first free slot (stubdm/machine.py DEVFN_FIRST_FREE)


def mask(size):
    return (1 << (8 * size)) - 1


def ones(size):
    """A refused read answers all ones as wide as the access (never wider)."""
    return mask(size) if 1 <= size <= 8 else ALL_ONES


class Logged(Session):
    """A Session with a few helpers; the device model's stderr is its dm.log."""

    def __init__(self, dm_args=(), **kw):
        super().__init__(dm_args=dm_args, ram_mib=RAM_MIB, **kw)

    def log_text(self):
        return self.dm_messages()

    @property
    def server(self):
        (s,) = self.hv.servers.values()
        return s

    def alive(self):
        return self.proc.poll() is None


@pytest.fixture(scope="module")
def shared(dm_runtime):
    with Logged(runtime=dm_runtime) as s:
        yield s


@pytest.fixture
def fresh(dm_runtime):
    with Logged(runtime=dm_runtime) as s:
        yield s


@pytest.fixture
def serial_pci(dm_runtime):
    with Logged(dm_args=["-device", "pci-serial"], runtime=dm_runtime) as s:
        yield s


def assert_healthy(s):
    """The device model is alive and its COM1 answers as after reset."""
    assert s.alive(), "device model exited:\n" + s.log_text()
    g = s.guest
    assert g.inb(COM1 + LSR) == 0x60
    g.outb(COM1 + SCR, 0x5A)
    assert g.inb(COM1 + SCR) == 0x5A
    assert g.inw(PLATFORM) == 0x49D2


def pci_ids(g, dev, fn=0):
    return g.pci_read(dev, fn, 0, 4)


def enumerate_pci(g):
    found = []
    for dev in range(32):
        for fn in range(8):
            if pci_ids(g, dev, fn) != 0xFFFFFFFF:
                found.append((dev, fn))
    return found


# =====================================================================
# Serial output, rep string I/O (data_is_ptr) and the mapcache
# =====================================================================


def test_com1_output_reaches_the_serial_file(shared):
    g = shared.guest
    before = len(shared.serial_output())
    for b in b"hello from the guest\n":
        g.outb(COM1 + THR, b)
    assert shared.serial_output()[before:] == b"hello from the guest\n"


def test_rep_outsb_from_guest_ram(shared):
    g = shared.guest
    text = b"rep outsb through data_is_ptr\n"
    g.memwrite(0x10000, text)
    before = len(shared.serial_output())
    g.rep_outs(COM1 + THR, 0x10000, 1, len(text))
    assert shared.serial_output()[before:] == text


def test_rep_outsb_across_page_and_bucket_boundaries(shared):
    g = shared.guest
    out = b""
    expect = b""
    for gpa in (0x1FFE, 0xFFFFC, 0x2FFFFF):  # page; 1 MiB mapcache bucket; both
        data = bytes(range(0x41, 0x41 + 9))
        g.memwrite(gpa, data)
        before = len(shared.serial_output())
        g.rep_outs(COM1 + THR, gpa, 1, len(data))
        out += shared.serial_output()[before:]
        expect += data
    assert out == expect


def test_rep_outsb_backwards(shared):
    g = shared.guest
    g.memwrite(0x20000, b"abcdef")
    before = len(shared.serial_output())
    g.rep_outs(COM1 + THR, 0x20005, 1, 6, df=1)  # item i at data - i
    assert shared.serial_output()[before:] == b"fedcba"


def test_rep_outs_stops_at_the_end_of_guest_ram(shared):
    g = shared.guest
    end = shared.hv.ram_size
    g.memwrite(end - 3, b"XYZ")
    before = len(shared.serial_output())
    g.rep_outs(COM1 + THR, end - 3, 1, 6)
    assert shared.serial_output()[before:] == b"XYZ"
    # Backwards from address 2: 2, 1, 0, then the address wraps: stop.
    g.memwrite(0, b"012")
    before = len(shared.serial_output())
    g.rep_outs(COM1 + THR, 2, 1, 5, df=1)
    assert shared.serial_output()[before:] == b"210"
    assert_healthy(shared)


def test_rep_insb_from_the_uart_receiver(shared):
    # Loopback with FIFOs on: 16 bytes sent come back into the RX FIFO, and
    # rep insb moves them into guest RAM.
    g = shared.guest
    g.outb(COM1 + FCR, 0x07)
    g.outb(COM1 + MCR, 0x18)
    data = bytes((7 * i + 3) & 0xFF for i in range(16))
    for b in data:
        g.outb(COM1 + THR, b)
    assert g.inb(COM1 + LSR) & 0x01
    g.memwrite(0x30000, bytes(32))
    g.rep_ins(COM1 + RBR, 0x30FF8, 1, 16)  # crosses into the next page
    assert g.memread(0x30FF8, 16) == data
    assert g.inb(COM1 + LSR) == 0x60  # receiver empty again
    # Backwards: the first byte received lands at the highest address.
    for b in b"1234":
        g.outb(COM1 + THR, b)
    g.rep_ins(COM1 + RBR, 0x31003, 1, 4, df=1)
    assert g.memread(0x31000, 4) == b"4321"
    g.outb(COM1 + MCR, 0x08)
    g.outb(COM1 + FCR, 0x00)
    assert_healthy(shared)


# =====================================================================
# PCI: enumeration, identities, BARs, INTx and PIRQ routing
# =====================================================================


def test_pci_enumeration(shared):
    g = shared.guest
    assert enumerate_pci(g) == [(0, 0), (1, 0), (1, 1), (1, 3), (3, 0)]
    assert pci_ids(g, 0) == 0x12378086
    assert pci_ids(g, 1) == 0x70008086
    assert pci_ids(g, 3) == 0x00015853
    assert g.pci_read(1, 0, 0x0E, 1) & 0x80  # PIIX3 is multi-function
    # Bus 1 has nothing.
    assert g.pci_read(0, 0, 0, 4, bus=1) == 0xFFFFFFFF


def test_pci_enumeration_with_pci_serial(serial_pci):
    g = serial_pci.guest
    assert enumerate_pci(g) == [(0, 0), (1, 0), (1, 1), (1, 3), (3, 0), (4, 0)]
    assert pci_ids(g, DEV_PCI_SERIAL) == 0x00021B36
    assert g.pci_read(DEV_PCI_SERIAL, 0, 0x08, 4) >> 8 == 0x070002
    assert g.pci_read(DEV_PCI_SERIAL, 0, 0x3D, 1) == 1  # INTA


def test_platform_device_identity(shared):
    g = shared.guest
    assert g.pci_read(3, 0, 0x08, 4) == 0xFF800001  # class ff80, prog-if 0, rev 1
    assert g.pci_read(3, 0, 0x2C, 4) == 0x00015853  # subsystem
    assert g.pci_read(3, 0, 0x3D, 1) == 1  # INTA


def test_platform_bar_sizing(fresh):
    g = fresh.guest
    g.pci_write(3, 0, 0x10, 0xFFFFFFFF)
    assert g.pci_read(3, 0, 0x10) == 0xFFFFFF01  # 256 bytes of I/O
    g.pci_write(3, 0, 0x14, 0xFFFFFFFF)
    assert g.pci_read(3, 0, 0x14) == 0xFF000008  # 16 MiB, prefetchable memory
    for reg in range(0x18, 0x28, 4):
        g.pci_write(3, 0, reg, 0xFFFFFFFF)
        assert g.pci_read(3, 0, reg) == 0
    assert_healthy(fresh)


def _port_ranges(s):
    return sorted(s.server.ranges[PORT])


def test_platform_bar0_decodes_where_programmed_and_moves(fresh):
    g = fresh.guest
    fixed = _port_ranges(fresh)
    g.pci_write(3, 0, 0x10, 0xC000)
    assert g.inb(0xC000) == 0xFF  # IO decoding still off: nobody there
    assert _port_ranges(fresh) == fixed
    g.pci_write(3, 0, 0x04, 0x0001, 2)
    assert (0xC000, 0xC0FF) in fresh.server.ranges[PORT]
    # Offset 0 of BAR0 is the platform flags, shared with port 0x10.
    assert g.inb(0xC000) == 0
    g.outb(0xC000, 0x01)
    assert g.inb(0xC000) == 0x01
    assert g.inb(PLATFORM) == 0x01
    g.outb(PLATFORM, 0x00)
    assert g.inb(0xC000) == 0x00
    assert g.inb(0xC001) == 0xFF
    # Move it: the old range is gone (all ones), the new one answers.
    g.outb(0xC000, 0x01)
    g.pci_write(3, 0, 0x10, 0xC100)
    assert (0xC000, 0xC0FF) not in fresh.server.ranges[PORT]
    assert (0xC100, 0xC1FF) in fresh.server.ranges[PORT]
    assert g.inb(0xC000) == 0xFF
    assert g.inb(0xC100) == 0x01
    # IO decoding off again: unregistered.
    g.pci_write(3, 0, 0x04, 0x0000, 2)
    assert _port_ranges(fresh) == fixed
    assert g.inb(0xC100) == 0xFF
    g.outb(PLATFORM, 0x00)
    assert_healthy(fresh)


def test_bar_over_claimed_ports_decodes_nothing(fresh):
    # BAR0 at 0x300 would cover COM1 (0x3f8-0x3ff): COM1 keeps its ports,
    # the BAR decodes nothing until moved somewhere free.
    g = fresh.guest
    fixed = _port_ranges(fresh)
    g.pci_write(3, 0, 0x10, 0x300)
    g.pci_write(3, 0, 0x04, 0x0001, 2)
    assert _port_ranges(fresh) == fixed
    assert g.inb(0x300) == 0xFF
    assert g.inb(COM1 + LSR) == 0x60
    g.pci_write(3, 0, 0x10, 0xC000)
    assert (0xC000, 0xC0FF) in fresh.server.ranges[PORT]
    assert g.inb(0xC000) == 0x00
    g.pci_write(3, 0, 0x10, 0x0000)  # address 0: not decoding
    assert _port_ranges(fresh) == fixed
    assert_healthy(fresh)


def test_platform_bar1_mmio(fresh):
    g = fresh.guest
    base = 0xF2000000
    assert g.readl(base) == 0xFFFFFFFF
    g.pci_write(3, 0, 0x14, base)
    g.pci_write(3, 0, 0x04, 0x0002, 2)
    assert (base, base + 0xFFFFFF) in fresh.server.ranges[MMIO]
    assert g.readl(base) == 0  # QEMU's platform_mmio_read answers 0
    assert g.readq(base + 0xFFFFF8) == 0
    g.writel(base + 0x100, 0x12345678)  # ignored
    assert g.readl(base + 0x100) == 0
    g.pci_write(3, 0, 0x14, 0xF4000000)
    assert (base, base + 0xFFFFFF) not in fresh.server.ranges[MMIO]
    assert g.readl(base) == 0xFFFFFFFF
    assert g.readb(0xF4000000) == 0
    g.pci_write(3, 0, 0x04, 0x0000, 2)
    assert fresh.server.ranges[MMIO] == []
    assert_healthy(fresh)


def test_pci_serial_through_its_bar_with_intx(serial_pci):
    s = serial_pci
    g = s.guest
    hv = s.hv
    dev = DEV_PCI_SERIAL
    g.pci_write(dev, 0, 0x10, 0xFFFFFFFF)
    assert g.pci_read(dev, 0, 0x10) == 0xFFFFFFF9  # 8 bytes of I/O
    io = 0xD000
    g.pci_write(dev, 0, 0x10, io)
    g.pci_write(dev, 0, 0x04, 0x0001, 2)
    assert (io, io + 7) in s.server.ranges[PORT]
    # The UART behind the BAR: reset values, scratch.
    assert g.inb(io + LSR) == 0x60
    assert g.inb(io + IIR) == 0x01
    g.outb(io + SCR, 0xC3)
    assert g.inb(io + SCR) == 0xC3
    g.outb(COM1 + SCR, 0x11)
    assert g.inb(io + SCR) == 0xC3
    # THRE interrupt -> INTA of device 4 -> Xen.
    assert hv.intx_level(dev, 0) == 0
    g.outb(io + IER, 0x02)
    assert hv.intx_level(dev, 0) == 1
    status = g.pci_read(dev, 0, 0x06, 2)
    assert status & 0x0008  # interrupt status mirrors the line
    # Route INTA of device 4 (link (4 + 0) & 3 = A) to IRQ 11 through PIIX3.
    g.pci_write(1, 0, 0x60, 0x0B, 1)
    assert hv.link_route[0] == 11
    assert g.get_irq(11)
    # INTx disable (command bit 10) gates the pin.
    g.pci_write(dev, 0, 0x04, 0x0401, 2)
    assert hv.intx_level(dev, 0) == 0
    assert not g.get_irq(11)
    g.pci_write(dev, 0, 0x04, 0x0001, 2)
    assert hv.intx_level(dev, 0) == 1
    # Reading IIR (THRE) ends the interrupt.
    assert g.inb(io + IIR) == 0x02
    assert hv.intx_level(dev, 0) == 0
    assert not g.get_irq(11)
    # Loopback echo through the BAR, with wide accesses split into bytes.
    g.outb(io + MCR, 0x10)
    g.outb(io + THR, 0x77)
    assert g.inw(io + RBR) & 0xFF == 0x77
    # Unrouted link: the line goes nowhere.
    g.outb(io + IER, 0x02)
    assert hv.intx_level(dev, 0) == 1
    g.pci_write(1, 0, 0x60, 0x80, 1)
    assert hv.link_route[0] == 0
    assert not g.get_irq(11)
    assert_healthy(s)


def test_pirq_route_writes_reach_xen(fresh):
    g = fresh.guest
    hv = fresh.hv
    n = len(hv.irq_log)
    g.pci_write(1, 0, 0x60, 0x0B0A0509)
    assert hv.link_route == [9, 5, 10, 11]
    assert [e for e in hv.irq_log[n:] if e[0] == "route"] == [
        ("route", 0, 9), ("route", 1, 5), ("route", 2, 10), ("route", 3, 11)]
    g.pci_write(1, 0, 0x62, 0x80, 1)  # bit 7: disabled
    assert hv.link_route == [9, 5, 0, 11]
    g.pci_write(1, 0, 0x62, 0x0E0F, 2)
    assert hv.link_route == [9, 5, 15, 14]
    g.pci_write(1, 0, 0x63, 0x02, 1)  # reserved code: not routed
    assert hv.link_route[3] == 0
    assert g.pci_read(1, 0, 0x60) == 0x020F0509
    # Rewriting the same value is forwarded again (Xen keeps the routes).
    n = len(hv.irq_log)
    g.pci_write(1, 0, 0x60, 0x09, 1)
    assert hv.irq_log[n:] == [("route", 0, 9)]


# Xen forwards an access at 0xcfd as PCI_CONFIG with reg = cf8 | (port & 3).
def test_misaligned_config_word_inside_a_dword(fresh):
    # outw to 0xcfd: a legal config cycle (byte enables 0110), as the
    # comment at the top of stubdm/pci.py says too.
    g = fresh.guest
    g.pci_write(1, 0, 0x61, 0x0F0E, 2)
    assert fresh.hv.link_route[1:3] == [14, 15]
    assert g.pci_read(1, 0, 0x61, 2) == 0x0F0E
    assert g.pci_read(0, 0, 0x01, 2) == 0x3780  # bytes 1-2 of 8086:1237


# =====================================================================
# Reset: i8042 pulse and port 0xcf9 -> SHUTDOWN_reboot, clean exit
# =====================================================================


def _expect_reboot(s):
    assert s.proc.wait(timeout=10) == 0
    assert s.hv.shutdown_reason == abi.SHUTDOWN_reboot


def test_i8042_reset_pulse_reboots(fresh):
    g = fresh.guest
    assert g.inb(KBD_CMD) & 0x02 == 0
    g.outb(KBD_CMD, 0xFE)
    _expect_reboot(fresh)


def test_i8042_output_port_reset_reboots(fresh):
    g = fresh.guest
    g.outb(KBD_CMD, 0xD1)
    g.outb(KBD_DATA, 0x02)  # bit 0 low: CPU reset
    _expect_reboot(fresh)


def test_reset_control_register_reboots(fresh):
    g = fresh.guest
    g.outb(0xCF9, 0x02)  # hard-reset select only: nothing happens
    assert g.inb(0xCF9) == 0x02
    assert fresh.hv.shutdown_reason is None
    assert_healthy(fresh)
    g.outb(0xCF9, 0x06)
    _expect_reboot(fresh)


def test_harmless_i8042_pulses_do_not_reset(fresh):
    g = fresh.guest
    for cmd in (0xFF, 0xF1, 0xFD, 0xF3):  # bit 0 set: CPU reset not pulsed
        g.outb(KBD_CMD, cmd)
    assert fresh.hv.shutdown_reason is None
    assert_healthy(fresh)


# =====================================================================
# Xen platform ports 0x10-0x1f
# =====================================================================


def test_platform_magic_version_and_unplug(fresh):
    g = fresh.guest
    assert g.inw(PLATFORM) == 0x49D2
    assert g.inb(PLATFORM + 2) == 1  # protocol version
    assert g.inb(PLATFORM) == 0  # flags
    assert g.inl(PLATFORM) == 0xFFFFFFFF
    assert g.inb(PLATFORM + 1) == 0xFF
    assert g.inw(PLATFORM + 2) == 0xFFFF
    assert g.inb(0x1F) == 0xFF
    # The PV drivers' handshake (Linux platform-pci-unplug.c).
    g.outw(PLATFORM + 2, 3)  # product
    g.outl(PLATFORM, 0x12345)  # build
    assert g.inw(PLATFORM) == 0x49D2  # not blacklisted
    g.outw(PLATFORM, 0x0003)  # unplug IDE disks and NICs
    for b in b"pv drivers here\n":
        g.outb(PLATFORM + 2, b)
    g.outb(PLATFORM, 0x01)  # ROM lock
    assert g.inb(PLATFORM) == 0x01
    g.outb(PLATFORM, 0xFE)
    assert g.inb(PLATFORM) == 0x00  # only bit 0 sticks
    assert_healthy(fresh)
    log = fresh.log_text()
    assert "mask 0x3" in log
    assert "pv drivers here" in log
    assert "build 74565" in log


# =====================================================================
# Hostile ioreqs, hand-built
# =====================================================================


def _send(s, type_, addr, data=0, size=1, count=1, is_read=1, ptr=0, df=0):
    return s.hv.send_ioreq(s.server, 0, type_, addr, data, size, count, is_read, ptr, df)


@pytest.mark.parametrize("type_", [3, 4, 5, 6, 9, 0x42, 0xFF])
def test_unknown_request_type(shared, type_):
    assert _send(shared, type_, COM1 + LSR, is_read=1) == ones(1)
    assert _send(shared, type_, COM1 + SCR, data=0x99, is_read=0) == 0x99
    assert_healthy(shared)


@pytest.mark.parametrize("size", [0, 3, 5, 8, 16, 1 << 31, 0xFFFFFFFF])
def test_bad_port_access_sizes(shared, size):
    shared.guest.outb(COM1 + SCR, 0x21)
    assert _send(shared, abi.IOREQ_TYPE_PIO, COM1 + LSR, size=size) == ones(size)
    _send(shared, abi.IOREQ_TYPE_PIO, COM1 + SCR, data=0x77, size=size, is_read=0)
    assert shared.guest.inb(COM1 + SCR) == 0x21
    assert_healthy(shared)


@pytest.mark.parametrize("size", [0, 3, 16])
def test_bad_mmio_access_sizes(shared, size):
    assert _send(shared, abi.IOREQ_TYPE_COPY, 0xF2000000, size=size) == ones(size)
    _send(shared, abi.IOREQ_TYPE_COPY, 0xF2000000, data=1, size=size, is_read=0)
    assert_healthy(shared)


def test_bad_counts(shared):
    g = shared.guest
    srv = shared.server
    g.outb(COM1 + SCR, 0x31)
    # count 0: nothing happens, a read answers all ones.
    assert _send(shared, abi.IOREQ_TYPE_PIO, COM1 + SCR, count=0) == ones(1)
    _send(shared, abi.IOREQ_TYPE_PIO, COM1 + SCR, data=0x44, count=0, is_read=0)
    assert g.inb(COM1 + SCR) == 0x31
    # A huge count without data_is_ptr is one access.
    assert _send(shared, abi.IOREQ_TYPE_PIO, COM1 + SCR, count=10**9) == 0x31
    # A huge rep count is refused outright: no RAM is touched, no byte sent.
    g.memwrite(0x40000, b"\xEE" * 64)
    before = len(shared.serial_output())
    shared.hv.send_ioreq(srv, 0, abi.IOREQ_TYPE_PIO, COM1 + THR, 0x40000, 1, 10**9, 0, 1, 0)
    shared.hv.send_ioreq(srv, 0, abi.IOREQ_TYPE_PIO, COM1 + RBR, 0x40000, 1, 10**9, 1, 1, 0)
    shared.hv.send_ioreq(srv, 0, abi.IOREQ_TYPE_PIO, COM1 + RBR, 0x40000, 4, 0xFFFFFFFF, 1, 1, 1)
    assert shared.serial_output()[before:] == b""
    assert g.memread(0x40000, 64) == b"\xEE" * 64
    assert_healthy(shared)


@pytest.mark.parametrize("gpa", [1 << 40, (1 << 64) - 2, 0xF0000000, 0xFEFF0000])
def test_data_is_ptr_outside_guest_ram(shared, gpa):
    # 0xfeff0000 is where host_sim keeps the ioreq pages: not guest RAM.
    srv = shared.server
    hv = shared.hv
    before = len(shared.serial_output())
    hv.send_ioreq(srv, 0, abi.IOREQ_TYPE_PIO, COM1 + THR, gpa, 1, 4, 0, 1, 0)
    hv.send_ioreq(srv, 0, abi.IOREQ_TYPE_PIO, COM1 + RBR, gpa, 1, 4, 1, 1, 0)
    hv.send_ioreq(srv, 0, abi.IOREQ_TYPE_COPY, 0xF2000000, gpa, 4, 4, 0, 1, 0)
    hv.send_ioreq(srv, 0, abi.IOREQ_TYPE_COPY, 0xF2000000, gpa, 4, 4, 1, 1, 1)
    assert shared.serial_output()[before:] == b""
    assert_healthy(shared)


@pytest.mark.parametrize("dev,fn,bus,reg,size", [
    (7, 0, 0, 0, 4),  # nobody there
    (3, 5, 0, 0, 4),
    (0, 0, 1, 0, 4),  # another bus
    (0, 0, 0, 0x100, 4),  # extended space
    (0, 0, 0, 0xFFFFFFFC, 4),
    (0, 0, 0, 0, 8),  # bad sizes
    (0, 0, 0, 0, 3),
    (0, 0, 0, 0, 0),
])
def test_pci_config_hostile(shared, dev, fn, bus, reg, size):
    addr = (abi.pci_sbdf(0, bus, dev, fn) << abi.PCI_SBDF_SHIFT) | reg
    data = _send(shared, abi.IOREQ_TYPE_PCI_CONFIG, addr, size=size)
    assert data == ones(size)
    _send(shared, abi.IOREQ_TYPE_PCI_CONFIG, addr, data=0, size=size, is_read=0)
    assert pci_ids(shared.guest, 0) == 0x12378086
    assert_healthy(shared)


def test_pci_config_segment_bits(shared):
    addr = (0x1234 << 48) | (abi.pci_sbdf(0, 0, 0, 0) << abi.PCI_SBDF_SHIFT)
    assert _send(shared, abi.IOREQ_TYPE_PCI_CONFIG, addr, size=4) & 0xFFFFFFFF == 0xFFFFFFFF
    assert_healthy(shared)


def test_invalidate_and_timeoffset(shared):
    g = shared.guest
    g.memwrite(0x50000, b"before\n")
    g.rep_outs(COM1 + THR, 0x50000, 1, 7)  # the bucket is mapped now
    assert _send(shared, abi.IOREQ_TYPE_INVALIDATE, 0, size=0, count=0, is_read=0) == 0
    for _ in range(3):
        _send(shared, abi.IOREQ_TYPE_INVALIDATE, 0xDEADBEEF, data=0x1234, size=8, is_read=1)
    g.memwrite(0x50000, b"after!\n")
    before = len(shared.serial_output())
    g.rep_outs(COM1 + THR, 0x50000, 1, 7)  # mapped afresh
    assert shared.serial_output()[before:] == b"after!\n"
    for off in (-3600, 0, 1 << 62, -(1 << 63), 12345):
        _send(shared, abi.IOREQ_TYPE_TIMEOFFSET, 0, data=off & ALL_ONES, size=8, is_read=0)
    assert_healthy(shared)


def test_ioreq_with_every_flag_combination(shared):
    # Reads and writes with df and data_is_ptr in every combination, to
    # ports nobody would expect them on: answered, and the DM survives.
    hv = shared.hv
    srv = shared.server
    shared.guest.memwrite(0x60000, bytes(64))
    for port in (COM1 + LSR, PLATFORM, KBD_CMD, 0xCF9):
        for is_read in (0, 1):
            for ptr in (0, 1):
                for df in (0, 1):
                    if port in (KBD_CMD, 0xCF9) and not is_read:
                        continue  # zero bytes would be harmless, but keep it clean
                    hv.send_ioreq(srv, 0, abi.IOREQ_TYPE_PIO, port, 0x60020, 1, 2,
                                  is_read, ptr, df)
    assert_healthy(shared)


# =====================================================================
# The buffered ioreq ring
# =====================================================================


def _publish_buffered(s, items):
    """Put writes in the buffered ring without signalling the device model."""
    srv = s.server
    page = s.hv.page_of(srv.buf_gfn)
    wp = struct.unpack_from("<I", page, abi.BUFIOREQ_OFF_WRITE_POINTER)[0]
    for type_, addr, size, value in items:
        slots = [abi.pack_buf_ioreq(type_, 0, size, addr, value & 0xFFFFFFFF)]
        if size == 8:
            slots.append(struct.pack("<II", 0, (value >> 32) & 0xFFFFFFFF))
        for item in slots:
            o = abi.BUFIOREQ_OFF_SLOTS + (wp % abi.IOREQ_BUFFER_SLOT_NUM) * abi.BUF_IOREQ_SIZE
            page[o : o + abi.BUF_IOREQ_SIZE] = item
            wp = (wp + 1) & 0xFFFFFFFF
    struct.pack_into("<I", page, abi.BUFIOREQ_OFF_WRITE_POINTER, wp)


def _buffered_pending(s):
    page = s.hv.page_of(s.server.buf_gfn)
    rp, wp = struct.unpack_from("<II", page, 0)
    return (wp - rp) & 0xFFFFFFFF


def test_buffered_write_then_sync_read(shared):
    g = shared.guest
    shared.hv.send_buffered(shared.server, abi.IOREQ_TYPE_PIO, COM1 + SCR, 1, 0xA5)
    assert g.inb(COM1 + SCR) == 0xA5
    assert _buffered_pending(shared) == 0


def test_buffered_ring_is_drained_before_each_sync_request(shared):
    # Not signalled at all: only the rule "drain the ring before each
    # synchronous request" makes the read see the writes, in order.
    g = shared.guest
    _publish_buffered(shared, [
        (abi.IOREQ_TYPE_PIO, COM1 + SCR, 1, 0x11),
        (abi.IOREQ_TYPE_PIO, COM1 + LCR, 1, 0x83),
        (abi.IOREQ_TYPE_PIO, COM1 + SCR, 1, 0x22),
        (abi.IOREQ_TYPE_COPY, 0xA0000, 8, 0x0123456789ABCDEF),  # two slots, nobody there
        (abi.IOREQ_TYPE_PIO, COM1 + SCR, 1, 0x33),
        (abi.IOREQ_TYPE_PIO, PLATFORM, 1, 0x01),
    ])
    assert g.inb(COM1 + SCR) == 0x33
    assert _buffered_pending(shared) == 0
    assert g.inb(COM1 + LCR) == 0x83
    assert g.inb(PLATFORM) == 0x01
    g.outb(COM1 + LCR, 0x03)
    g.outb(PLATFORM, 0x00)
    assert_healthy(shared)


def test_buffered_ring_wraps(shared):
    # More writes than the ring holds (511 slots), signalled as Xen does.
    g = shared.guest
    hv = shared.hv
    for i in range(1300):
        hv.send_buffered(shared.server, abi.IOREQ_TYPE_PIO, COM1 + SCR, 1, i & 0xFF)
    assert g.inb(COM1 + SCR) == 1299 & 0xFF
    assert _buffered_pending(shared) == 0
    assert_healthy(shared)


def test_buffered_ring_with_bad_pointers(fresh):
    # A write pointer further ahead than the ring holds: the DM drops it all
    # and carries on.
    page = fresh.hv.page_of(fresh.server.buf_gfn)
    rp = struct.unpack_from("<I", page, 0)[0]
    struct.pack_into("<I", page, 4, (rp + 5000) & 0xFFFFFFFF)
    assert fresh.guest.inb(COM1 + LSR) == 0x60
    assert _buffered_pending(fresh) == 0
    assert_healthy(fresh)


# =====================================================================
# Fuzz: random accesses everywhere, then the DM must still be right
# =====================================================================

# Writes that would reboot the guest (and end the device model): kept out.
_RESET_I8042 = set(range(0xF0, 0x100, 2)) | {0xD1}


def _safe_write(port, size, value):
    for i in range(size):
        p = port + i
        b = (value >> (8 * i)) & 0xFF
        if p == KBD_CMD and b in _RESET_I8042:
            value &= ~(0xFF << (8 * i))
            value |= 0xAE << (8 * i)  # keyboard enable: harmless
        if p == 0xCF9 or port == 0xCF9:  # every byte of a wide access reaches it (QEMU)
            value &= ~(0x04 << (8 * i))
        if p == 0x92:
            value &= ~(0x01 << (8 * i))  # port 0x92 fast reset
    return value


def _restore_known_state(s):
    g = s.guest
    g.outb(COM1 + LCR, 0x03)
    g.outb(COM1 + MCR, 0x08)
    g.outb(COM1 + FCR, 0x07)  # resets both FIFOs
    g.outb(COM1 + FCR, 0x00)
    g.outb(COM1 + IER, 0x00)
    for _ in range(40):
        if not g.inb(COM1 + LSR) & 0x01:
            break
        g.inb(COM1 + RBR)
    g.inb(COM1 + LSR)  # error bits clear on read
    g.inb(COM1 + MSR)
    g.outb(PLATFORM, 0x00)


def test_fuzz_random_accesses(serial_pci):
    s = serial_pci
    g = s.guest
    rng = random.Random(0x5EED)
    claimed_ports = [(COM1, 8), (KBD_DATA, 1), (KBD_CMD, 1), (PLATFORM, 16), (0xCF9, 1)]
    # Give the BARs somewhere to be, and let the fuzz move them.
    g.pci_write(DEV_PLATFORM, 0, 0x10, 0xC000)
    g.pci_write(DEV_PLATFORM, 0, 0x14, 0xF2000000)
    g.pci_write(DEV_PLATFORM, 0, 0x04, 0x0003, 2)
    g.pci_write(DEV_PCI_SERIAL, 0, 0x10, 0xD000)
    g.pci_write(DEV_PCI_SERIAL, 0, 0x04, 0x0001, 2)
    claimed_ports += [(0xC000, 256), (0xD000, 8)]
    devs = [0, 1, DEV_PLATFORM, DEV_PCI_SERIAL, 2, 7, 31]
    for _ in range(3000):
        r = rng.random()
        size = rng.choice((1, 1, 1, 2, 4))
        if r < 0.55:  # port I/O
            if rng.random() < 0.85:
                base, n = rng.choice(claimed_ports)
                port = base + rng.randrange(n)
            else:
                port = rng.randrange(0x10000)
            if port in (0xCF8, 0xCFC, 0xCFD, 0xCFE, 0xCFF):
                port = 0x80  # config space has its own branch below
            if rng.random() < 0.5:
                {1: g.inb, 2: g.inw, 4: g.inl}[size](port)
            else:
                value = _safe_write(port, size, rng.getrandbits(8 * size))
                {1: g.outb, 2: g.outw, 4: g.outl}[size](port, value)
        elif r < 0.75:  # MMIO
            size = rng.choice((1, 2, 4, 8))
            if rng.random() < 0.7:
                addr = 0xF2000000 + rng.randrange(0x1000000 - 8)
            else:
                addr = rng.randrange(s.hv.ram_size, 1 << 32)
            if rng.random() < 0.5:
                {1: g.readb, 2: g.readw, 4: g.readl, 8: g.readq}[size](addr)
            else:
                {1: g.writeb, 2: g.writew, 4: g.writel, 8: g.writeq}[size](
                    addr, rng.getrandbits(8 * size))
        else:  # PCI configuration space, sometimes misaligned
            dev = rng.choice(devs)
            fn = rng.choice((0, 0, 0, rng.randrange(8)))
            reg = rng.randrange(256)
            if rng.random() < 0.8:
                reg &= ~(size - 1)
            port = 0xCFC + (reg & 3)
            g.outl(0xCF8, 0x80000000 | (dev << 11) | (fn << 8) | (reg & 0xFC))
            if rng.random() < 0.5:
                {1: g.inb, 2: g.inw, 4: g.inl}[size](port)
            else:
                {1: g.outb, 2: g.outw, 4: g.outl}[size](port, rng.getrandbits(8 * size))
    assert s.alive(), "device model died during the fuzz:\n" + s.log_text()[-3000:]
    assert s.hv.shutdown_reason is None
    # Still correct: identities, BAR programming, UART, i8042, platform.
    assert enumerate_pci(g) == [(0, 0), (1, 0), (1, 1), (1, 3), (3, 0), (4, 0)]
    _restore_known_state(s)
    assert_healthy(s)
    g.pci_write(DEV_PCI_SERIAL, 0, 0x10, 0xE000)
    g.pci_write(DEV_PCI_SERIAL, 0, 0x04, 0x0001, 2)
    assert (0xE000, 0xE007) in s.server.ranges[PORT]
    g.outb(0xE000 + SCR, 0x6B)
    assert g.inb(0xE000 + SCR) == 0x6B
    g.outb(KBD_CMD, 0x60)
    g.outb(KBD_DATA, 0x45)  # interrupts on, keyboard enabled
    for _ in range(40):
        if not g.inb(KBD_CMD) & 0x01:
            break
        g.inb(KBD_DATA)
    g.outb(KBD_CMD, 0xAA)
    assert g.inb(KBD_DATA) == 0x55
    text = b"still here\n"
    g.memwrite(0x70000, text)
    before = len(s.serial_output())
    g.rep_outs(COM1 + THR, 0x70000, 1, len(text))
    assert s.serial_output()[before:] == text


def test_fuzz_raw_ioreqs(fresh):
    # Random request fields straight into the ioreq page.
    s = fresh
    hv = s.hv
    srv = s.server
    rng = random.Random(0xBAD)
    types = [abi.IOREQ_TYPE_PIO, abi.IOREQ_TYPE_COPY, abi.IOREQ_TYPE_PCI_CONFIG,
             abi.IOREQ_TYPE_TIMEOFFSET, abi.IOREQ_TYPE_INVALIDATE, 3, 0x80]
    for _ in range(1500):
        type_ = rng.choice(types)
        is_read = rng.randrange(2)
        ptr = rng.randrange(2)
        df = rng.randrange(2)
        size = rng.choice((1, 2, 4, 8, 0, 3, rng.getrandbits(32)))
        count = rng.choice((1, 1, 2, 16, 0, rng.getrandbits(32)))
        if type_ == abi.IOREQ_TYPE_PIO:
            addr = rng.choice((COM1 + rng.randrange(8), PLATFORM + rng.randrange(16),
                               KBD_DATA, rng.getrandbits(16), rng.getrandbits(64)))
        elif type_ == abi.IOREQ_TYPE_PCI_CONFIG:
            addr = (abi.pci_sbdf(0, 0, rng.choice((0, 1, 3, 9)), 0) << 32) | rng.randrange(300)
            if rng.random() < 0.1:
                addr = rng.getrandbits(64)
        else:
            addr = rng.getrandbits(rng.choice((20, 32, 64)))
        if ptr:
            data = rng.choice((0x80000 + rng.randrange(0x2000), rng.getrandbits(64)))
        else:
            data = rng.getrandbits(64)
        if type_ == abi.IOREQ_TYPE_PIO and not is_read:
            if ptr:
                if addr & 0xFFFF in (KBD_CMD, KBD_DATA, 0xCF9) or addr in (KBD_CMD, 0xCF9):
                    continue  # bytes from RAM could pulse the reset line
            elif addr in (KBD_CMD, KBD_DATA, 0xCF9):
                continue
        hv.send_ioreq(srv, 0, type_, addr, data, size & 0xFFFFFFFF, count & 0xFFFFFFFF,
                      is_read, ptr, df)
    assert s.alive(), "device model died during the fuzz:\n" + s.log_text()[-3000:]
    assert s.hv.shutdown_reason is None
    _restore_known_state(s)
    assert_healthy(s)
    assert enumerate_pci(s.guest) == [(0, 0), (1, 0), (1, 1), (1, 3), (3, 0)]


def test_uart_rx_character_timeout(fresh):
    # PC16550D section 8.6.3: with FIFOs on and fewer bytes than the trigger
    # level waiting, IIR reports a character timeout (0xcc) once the line has
    # been idle for about four character times; Linux relies on it.
    g = fresh.guest
    g.outb(0x3FA, 0x81)  # FIFO on, trigger level 8
    g.outb(0x3FC, 0x10)  # loopback
    g.outb(0x3F9, 0x01)  # RX data interrupt
    g.outb(0x3F8, 0x41)
    # One byte, below the trigger: no RX-data interrupt (the timeout may
    # already have fired if this host stalled for 4 ms).
    assert g.inb(0x3FA) in (0xC1, 0xCC)
    deadline = time.monotonic() + 2
    while g.inb(0x3FA) != 0xCC and time.monotonic() < deadline:
        time.sleep(0.005)
    assert g.inb(0x3FA) == 0xCC
    assert g.get_irq(4)
    assert g.inb(0x3F8) == 0x41
    assert g.inb(0x3FA) == 0xC1 and not g.get_irq(4)


# =====================================================================
# Xen's routing of 0xcf8-0xcff and of the ranges Xen emulates itself
# (xen/arch/x86/hvm/ioreq.c hvm_access_cf8 and arch_ioreq_server_get_type_addr,
# xen/common/ioreq.c ioreq_server_select; DESIGN.md section 4)
# =====================================================================

ALL_RUNTIMES = ("cpython", "micropython", "port")


@pytest.fixture(params=ALL_RUNTIMES)
def any_runtime(request):
    from host_sim.scripted import RuntimeMissing, dm_command

    try:
        dm_command(request.param)
    except RuntimeMissing as e:
        pytest.skip(str(e))
    return request.param


def _ioreqs(s):
    return s.hv.stats["ioreqs"]


def pci_check_type1(g):
    """Linux's arch/x86/pci/direct.c pci_check_type1, access for access."""
    g.outb(0xCFB, 0x01)
    tmp = g.inl(0xCF8)
    g.outl(0xCF8, 0x80000000)
    ok = g.inl(0xCF8) == 0x80000000
    g.outl(0xCF8, tmp)
    return ok


def test_linux_finds_pci_through_xens_routing(any_runtime):
    with Logged(dm_args=["-device", "pci-serial"], runtime=any_runtime) as s:
        g = s.guest
        n = _ioreqs(s)
        assert pci_check_type1(g)
        # Each of those five accesses reached the device model as a port ioreq.
        assert _ioreqs(s) == n + 5
        assert enumerate_pci(g) == [(0, 0), (1, 0), (1, 1), (1, 3), (3, 0), (4, 0)]
        assert pci_ids(g, 1, 3) == 0x71138086


def test_without_a_claimant_0xcf8_reads_all_ones_and_pci_is_gone(tmp_path):
    # Real Xen with no server on 0xcf8: Linux's probe fails, nothing answers.
    from host_sim.scripted import ScriptedGuest, SimHypervisor

    hv = SimHypervisor(str(tmp_path / "hv.sock"), ram_mib=1)
    try:
        g = ScriptedGuest(hv)
        assert g.inl(0xCF8) == 0xFFFFFFFF
        assert not pci_check_type1(g)
        assert g.cf8 == 0xFFFFFFFF  # Xen still recorded the dwords written
        assert g.pci_read(0, 0, 0) == 0xFFFFFFFF
    finally:
        hv.close()


def test_config_data_routing(shared):
    g = shared.guest
    hv = shared.hv
    # Bit 31 clear: a plain port ioreq, which the host bridge answers with ones.
    g.outl(0xCF8, 0x00000000)
    n = _ioreqs(shared)
    assert g.inl(0xCFC) == 0xFFFFFFFF
    assert _ioreqs(shared) == n + 1
    # Bit 31 set, an SBDF nobody registered: no ioreq at all, all ones.
    g.outl(0xCF8, 0x80000000 | (7 << 11))
    n = _ioreqs(shared)
    assert g.inl(0xCFC) == 0xFFFFFFFF and g.inw(0xCFE) == 0xFFFF
    assert _ioreqs(shared) == n
    # Bus 1 likewise (the device model registered bus 0 only).
    g.outl(0xCF8, 0x80010000)
    n = _ioreqs(shared)
    assert g.inl(0xCFC) == 0xFFFFFFFF and _ioreqs(shared) == n
    # Xen masks CONFIG_ADDRESS bits 1:0 and takes the register's low bits
    # from the port; bits 30:24 are ignored on Intel.
    g.outl(0xCF8, 0x8F000003)
    assert g.inl(0xCFC) == 0x12378086
    assert g.inw(0xCFE) == 0x1237
    g.outl(0xCF8, 0x80000008 | (1 << 11))
    assert g.inb(0xCFF) == 0x06  # PIIX3 class, base byte: register 0x0b
    assert hv.server_for_pci(0, 1, 3) is shared.server


def test_byte_and_word_accesses_to_config_address(shared):
    # QEMU's semantics (measured on 11.1), reached through plain port ioreqs.
    g = shared.guest
    g.outl(0xCF8, 0x92345678)
    g.outb(0xCF8, 0x11)
    g.outw(0xCFA, 0x2222)
    g.outb(0xCFB, 0x01)
    assert g.inl(0xCF8) == 0x92345678
    assert g.inb(0xCF8) == 0x78 and g.inw(0xCF8) == 0x5678
    assert g.inw(0xCFA) == 0x5678 and g.inb(0xCFB) == 0x78
    assert g.inl(0xCFA) == 0  # unaligned: QEMU refuses it
    assert g.inb(0xCF9) == 0x00  # the reset control register
    g.outl(0xCF8, 0)
    assert_healthy(shared)


def test_xens_own_ranges_never_reach_the_device_model(fresh):
    g = fresh.guest
    hv = fresh.hv
    srv = fresh.server
    # Claim them the way qemu-xen does: Xen accepts the claim...
    for kind, start, end in ((PORT, 0x70, 0x71), (PORT, 0x40, 0x43), (PORT, 0xE9, 0xE9),
                             (MMIO, 0xFEC00000, 0xFEC000FF), (MMIO, 0xFED00000, 0xFED003FF),
                             (MMIO, 0xFEE00000, 0xFEE00FFF)):
        assert hv._map_io_range(srv, True, kind, start, end) == 0
    # ...but its own emulation answers first.
    n = _ioreqs(fresh)
    g.outb(0x70, 0x0A)
    g.inb(0x71)
    g.outb(0x43, 0x34)
    g.inb(0x40)
    for ch in b"hi\n":
        g.outb(0xE9, ch)
    assert g.inb(0xE9) == 0xE9
    g.readl(0xFEC00000)
    g.writel(0xFEE000B0, 0)
    g.readl(0xFED000F0)
    assert _ioreqs(fresh) == n
    assert bytes(g.emulated.debug_console) == b"hi\n"
    # An access only partly inside Xen's handler is not Xen's: it goes to
    # the claims, which cover 0x70-0x71 only: nobody.
    assert g.inw(0x71) == 0xFFFF and _ioreqs(fresh) == n
    # PM1a_EVT and PM_TMR are Xen's too, wherever hvmloader put them.
    assert g.hvmloader_acpi() == (1, 3)
    n = _ioreqs(fresh)
    g.outw(0xB002, 0x0100)
    assert g.inl(0xB000) == 0x01000000
    t1 = g.inl(0xB008)
    assert g.inl(0xB008) != t1 or g.inl(0xB008) != t1
    assert _ioreqs(fresh) == n
    assert_healthy(fresh)


def test_claims_as_xen_keeps_them(fresh):
    hv = fresh.hv
    srv = fresh.server
    # Overlapping an existing claim: EEXIST; unmapping part of one splits it.
    assert hv._map_io_range(srv, True, PORT, 0x3FC, 0x400) == -17
    assert hv._map_io_range(srv, True, PORT, 0x500, 0x50F) == 0
    assert hv._map_io_range(srv, False, PORT, 0x504, 0x507) == 0
    assert hv.server_for_range(PORT, 0x500, 0x503) is srv
    assert hv.server_for_range(PORT, 0x503, 0x504) is None
    assert hv._map_io_range(srv, False, PORT, 0x504, 0x504) == -2
    # Each SBDF once; libxendevicemodel refuses dev > 31 and fn > 7.
    assert hv._map_pcidev(srv, True, (0, 0, 3, 0)) == -17
    assert hv._map_pcidev(srv, False, (0, 0, 9, 0)) == -2
    assert hv._map_pcidev(srv, True, (0, 0, 32, 0)) == -22
    # A word at 0x92 is not inside the one-port claim: nobody answers it.
    g = fresh.guest
    n = _ioreqs(fresh)
    assert g.inw(0x92) == 0xFFFF and _ioreqs(fresh) == n
    # Adjacent claims merge: a dword across 0xb2-0xb3 and beyond is refused,
    # a word inside is served.
    assert g.inw(0xB2) == 0x0000
    assert g.inl(0xB2) == 0xFFFFFFFF


# =====================================================================
# Port 0x92 and PIIX4 power management, end to end
# =====================================================================


def test_port92_fast_reset_reboots(fresh):
    g = fresh.guest
    g.outb(0x92, 0x02)
    assert g.inb(0x92) == 0x02 and fresh.hv.shutdown_reason is None
    g.outb(0x92, 0x03)
    _expect_reboot(fresh)


def test_guest_poweroff_powers_the_domain_off(any_runtime):
    with Logged(runtime=any_runtime) as s:
        g = s.guest
        assert g.hvmloader_acpi() == (1, 3)
        assert g.inw(0xB004) & 1  # SCI_EN: ACPI mode
        assert g.pci_read(1, 3, 0x3C, 1) == 9
        g.acpi_sleep(5)  # no such sleep type in Xen's tables
        assert s.hv.shutdown_reason is None and s.alive()
        assert "sleep type 5" in s.log_text()
        g.acpi_sleep(0)  # \_S5
        assert s.proc.wait(timeout=10) == 0
        assert s.hv.shutdown_reason == abi.SHUTDOWN_poweroff


def test_pm_registers_of_the_wrong_size(fresh):
    g = fresh.guest
    g.hvmloader_acpi()
    g.outb(0xB005, (5 << 2) | 0x20)  # byte write to the high byte: type 5 + SLP_EN
    assert g.inw(0xB004) == (5 << 10) | 1 and fresh.hv.shutdown_reason is None
    g.outb(0xB004, 0x01)  # the low byte alone clears the high one (QEMU)
    assert g.inw(0xB004) == 0x0001
    assert g.inl(0xB004) == 0xFFFFFFFF  # wider than the claim: nobody
    g.outl(0xB004, 0x2000)
    assert g.inw(0xB004) == 0x0001
    assert_healthy(fresh)


# =====================================================================
# Found by fuzzing: IRQ storms, log floods, clashing slots
# =====================================================================


def test_rep_outsb_to_a_uart_makes_at_most_one_irq_call(fresh):
    g = fresh.guest
    hv = fresh.hv
    g.outb(COM1 + IER, 0x02)  # THR-empty interrupts on
    assert g.get_irq(4)
    g.memwrite(0x40000, b"z" * 4096)
    n = len(hv.irq_log)
    g.rep_outs(COM1 + THR, 0x40000, 1, 4096)
    isa4 = [e for e in hv.irq_log[n:] if e[:2] == ("isa", 4)]
    assert len(isa4) <= 1  # was 8192
    assert g.get_irq(4)
    g.outb(COM1 + IER, 0x00)
    assert not g.get_irq(4)
    assert_healthy(fresh)


def test_guest_log_flood_is_rate_limited(fresh):
    g = fresh.guest
    g.memwrite(0x40000, b"flood\n" * 682)
    for _ in range(20):
        g.rep_outs(PLATFORM + 2, 0x40000, 1, 4092)  # 682 log lines each
    for i in range(500):
        g.outw(PLATFORM + 2, i)  # PV product numbers
    time.sleep(0.5)
    g.memwrite(0x40000, b"last\n")
    g.rep_outs(PLATFORM + 2, 0x40000, 1, 5)
    assert_healthy(fresh)
    text = fresh.log_text()
    assert len(text) < 8000, text[-2000:]
    told = [line for line in text.splitlines() if "similar messages suppressed" in line]
    # 13640 lines and 500 numbers sent; all but a few dozen were dropped, and said so.
    assert sum(int(line.split("(")[1].split()[0]) for line in told) > 13000
    assert "last" in text


@pytest.mark.parametrize("args,slot", [
    (["-device", "pci-serial,addr=1"], 1),
    (["-device", "pci-serial,addr=3"], 3),
    (["-device", "pci-serial", "-device", "pci-serial,addr=4"], 4),
])
def test_pci_serial_on_a_taken_slot_is_a_usage_error(any_runtime, args, slot):
    import subprocess

    from host_sim.scripted import dm_command, dm_env

    r = subprocess.run(dm_command(any_runtime) + ["-xen-domid", "1"] + args,
                       env=dm_env("/nonexistent"), capture_output=True, timeout=30)
    err = r.stderr.decode(errors="replace")
    assert r.returncode == 2, err
    assert "PCI slot %d is taken by" % slot in err
    assert "Traceback" not in err


def test_rep_string_io_is_split_at_page_edges_as_xen_does(fresh):
    shared = fresh
    g = shared.guest
    g.memwrite(0x40800, b"x" * 6144 + b"\n")
    before = len(shared.serial_output())
    n = _ioreqs(shared)
    g.rep_outs(COM1 + THR, 0x40800, 1, 6145)  # 0x40800-0x42000: three pages
    assert _ioreqs(shared) == n + 3
    assert shared.serial_output()[before:] == b"x" * 6144 + b"\n"
