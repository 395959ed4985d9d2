"""Differential tests of the standard VGA: stubdm against qemu-xen, both
serving host_sim (tests/test_differential_qemu_xen.py explains the set-up),
the same scripted guest driving both through real ioreqs, every read
compared: VGA register read-backs (sequencer, graphics and attribute
controllers, CRTC, DAC, misc output), Bochs VBE DISPI registers with
hostile modes, and the 0xa0000 window's planar memory, written through
buffered ioreqs as Xen sends them.

Deliberate differences: the VGA is at 00:02.0 in stubdm and 00:03.0 in
qemu-xen (the platform device's slot, see there). Left out: reads of the
0xb8000 text window (memory map 3, odd/even): qemu-xen 11.1 under host_sim
answers 0 there whatever was written (chain-4 and planar at 0xa0000 agree),
not understood yet.
"""
import random

import pytest

from host_sim import qemu_xen
from host_sim.scripted import Session
from stubdm.devices import vga as vga_mod
from tests import test_differential as td
from tests.test_differential_qemu_xen import Both, EXTENDED_STATE_ON

MISSING = qemu_xen.missing()
pytestmark = pytest.mark.skipif(MISSING is not None, reason=MISSING or "")

VGA = (2, 3)  # slots: stubdm, qemu-xen


@pytest.fixture
def both(dm_runtime):
    with Session(dm_args=["-no-timers", "-device", "VGA,vgamem_mb=16"], ram_mib=td.RAM_MIB,
                 runtime=dm_runtime) as s:
        with qemu_xen.QemuXenSession(ram_mib=td.RAM_MIB, dm_args_extra=EXTENDED_STATE_ON) as q:
            yield Both(s, q.guest)


def test_pci_identity_and_bars(both):
    for reg in range(0, 0x40, 4):
        if reg in (0x10, 0x18, 0x30):
            continue  # BAR contents are where each side's firmware left them
        both.cfg_pair(VGA, reg)
    for reg in (0x10, 0x18):
        old = [x.pci_read(dev, 0, reg) for x, dev in zip((both.g, both.q), VGA)]
        both.cfg_write_pair(VGA, reg, 0xFFFFFFFF)
        both.cfg_pair(VGA, reg)  # the BAR's size and type bits
        for x, dev, v in zip((both.g, both.q), VGA, old):
            x.pci_write(dev, 0, reg, v)


def _indexed(both, index_port, data_port, indices, values):
    for i in indices:
        for v in values:
            both.outb(index_port, i)
            both.outb(data_port, v)
            both.inb(index_port)
            both.inb(data_port)


def test_sequencer_and_graphics_registers(both):
    _indexed(both, 0x3C4, 0x3C5, range(0, 12), (0xFF, 0x00, 0xA5))
    _indexed(both, 0x3CE, 0x3CF, range(0, 20), (0xFF, 0x00, 0x5A))


def test_crtc_registers_and_protect_bit(both):
    both.outb(0x3C2, 0x67)  # colour: CRTC at 0x3d4
    both.inb(0x3CC)
    _indexed(both, 0x3D4, 0x3D5, range(0, 0x20), (0xFF, 0x3C))
    both.outb(0x3D4, 0x11)
    both.outb(0x3D5, 0x80)  # protect CR0-7: only CR7 bit 4 stays writable
    _indexed(both, 0x3D4, 0x3D5, range(0, 9), (0x00, 0x55))
    both.outb(0x3C2, 0x66)  # mono: the colour CRTC ports read all ones
    both.inb(0x3D4)
    both.inb(0x3D5)
    both.inb(0x3B4)
    both.inb(0x3DA)


def test_attribute_controller_flip_flop(both):
    both.outb(0x3C2, 0x67)
    both.inb(0x3DA)
    for i in range(0, 0x20):
        for v in (0xFF, 0x2A):
            both.outb(0x3C0, i)
            both.inb(0x3C0)
            both.outb(0x3C0, v)
            both.inb(0x3C0)
            both.inb(0x3C1)
    both.inb(0x3DA)
    both.outb(0x3C0, 0x30)
    both.inb(0x3C0)
    both.inb(0x3DA)
    both.inb(0x3DA)


def test_dac_read_and_write_indices(both):
    both.outb(0x3C8, 0xFE)
    for c in range(12):
        both.outb(0x3C9, (c * 37) & 0xFF)
        both.inb(0x3C8)
        both.inb(0x3C7)
    both.outb(0x3C7, 0xFE)
    for _ in range(12):
        both.inb(0x3C9)
        both.inb(0x3C7)
    both.inb(0x3C6)
    both.outb(0x3C6, 0x0F)
    both.inb(0x3C6)


def test_misc_and_status_registers(both):
    for v in (0x00, 0x01, 0x67, 0xFF):
        both.outb(0x3C2, v)
        both.inb(0x3CC)
        both.inb(0x3C2)
        both.inb(0x3CA)
        both.inb(0x3BA)
        both.inb(0x3DA)
    both.outb(0x3DA, 0xFF)
    both.inb(0x3CA)


def _dispi(both, index, value):
    both.out(0x1CE, index, 2)
    both.out(0x1CF, value, 2)


def _dispi_all(both):
    for i in range(0, 12):
        both.out(0x1CE, i, 2)
        both.inp(0x1CF, 2)


def test_dispi_identity_and_caps(both):
    _dispi_all(both)
    for v in (0xB0C0, 0xB0C4, 0xB0C5, 0x1234, 0xB0C6):
        _dispi(both, vga_mod.DISPI_ID, v)
        both.out(0x1CE, 0, 2)
        both.inp(0x1CF, 2)
    _dispi(both, vga_mod.DISPI_ENABLE, vga_mod.DISPI_GETCAPS)
    _dispi_all(both)
    _dispi(both, vga_mod.DISPI_ENABLE, 0)
    both.inp(0x1CE, 2)


@pytest.mark.parametrize("mode", [(1024, 768, 32), (640, 480, 8), (1023, 767, 24),
                                  (16000, 12000, 32), (0, 0, 16), (8, 65535, 15),
                                  (1280, 1024, 13), (4096, 4096, 32)])
def test_dispi_modes_clamped_the_same(both, mode):
    w, h, bpp = mode
    _dispi(both, vga_mod.DISPI_ENABLE, 0)
    _dispi(both, vga_mod.DISPI_BPP, bpp)
    _dispi(both, vga_mod.DISPI_XRES, w)
    _dispi(both, vga_mod.DISPI_YRES, h)
    _dispi(both, vga_mod.DISPI_VIRT_WIDTH, w)
    _dispi_all(both)
    _dispi(both, vga_mod.DISPI_ENABLE, vga_mod.DISPI_ENABLED | vga_mod.DISPI_LFB_ENABLED
           | vga_mod.DISPI_NOCLEARMEM)
    _dispi_all(both)
    for off in ((0, 0), (60000, 60000), (8, 3)):
        _dispi(both, vga_mod.DISPI_X_OFFSET, off[0])
        _dispi(both, vga_mod.DISPI_Y_OFFSET, off[1])
        _dispi_all(both)
    for bank in (0, 1, 255, 256, 0xFFFF):
        _dispi(both, vga_mod.DISPI_BANK, bank)
        both.out(0x1CE, vga_mod.DISPI_BANK, 2)
        both.inp(0x1CF, 2)
    # The VGA registers a VBE mode set leaves.
    for i in range(9):
        both.outb(0x3CE, i)
        both.inb(0x3CF)
    for i in range(5):
        both.outb(0x3C4, i)
        both.inb(0x3C5)


def _mem(both, addr, size=1):
    out = []
    for x in (both.g, both.q):
        out.append({1: x.readb, 2: x.readw, 4: x.readl}[size](addr))
    both._note("mem %#x/%d -> %#x / %#x" % (addr, size, out[0], out[1]))
    if out[0] != out[1]:
        both._fail("memory read at %#x" % addr, hex(out[0]), hex(out[1]))
    return out[0]


def _memw(both, addr, value, size=1):
    both._note("mem %#x/%d <- %#x" % (addr, size, value))
    for x in (both.g, both.q):
        {1: x.writeb, 2: x.writew, 4: x.writel}[size](addr, value)


def _regs(both, pairs):
    for port, index, value in pairs:
        both.outb(port, index)
        both.outb(port + 1, value)


def test_planar_write_modes_random(both):
    """Random planar writes (every write mode, rotate, function, set/reset, bit
    and map masks), each read back through read modes 0 and 1."""
    rng = random.Random(14)
    _regs(both, [(0x3C4, 4, 0x06), (0x3CE, 6, 0x05)])
    # stubdm loads the font into plane 2 at power-on (qemu-xen's VGA BIOS would):
    # clear all planes of the addresses used first.
    _regs(both, [(0x3CE, 5, 0x00), (0x3CE, 1, 0x00), (0x3CE, 3, 0x00), (0x3CE, 8, 0xFF),
                 (0x3C4, 2, 0x0F)])
    for i in range(64):
        _memw(both, 0xA0000 + i, 0)
    for _ in range(300):
        _regs(both, [(0x3CE, 5, rng.randrange(4)), (0x3CE, 3, rng.randrange(32)),
                     (0x3CE, 0, rng.randrange(16)), (0x3CE, 1, rng.randrange(16)),
                     (0x3CE, 8, rng.choice((0xFF, 0x00, rng.randrange(256)))),
                     (0x3C4, 2, rng.randrange(16))])
        addr = 0xA0000 + rng.randrange(64)
        _mem(both, 0xA0000 + rng.randrange(64))  # load the latches
        _memw(both, addr, rng.randrange(256))
        if rng.random() < 0.3:
            _regs(both, [(0x3CE, 5, 0x00)])
            for p in range(4):
                _regs(both, [(0x3CE, 4, p)])
                _mem(both, addr)
            _regs(both, [(0x3CE, 5, 0x08), (0x3CE, 2, rng.randrange(16)),
                         (0x3CE, 7, rng.randrange(16))])
            _mem(both, addr)


def test_vbe_banked_window(both):
    _dispi(both, vga_mod.DISPI_ENABLE, 0)
    _dispi(both, vga_mod.DISPI_BPP, 8)
    _dispi(both, vga_mod.DISPI_XRES, 640)
    _dispi(both, vga_mod.DISPI_YRES, 480)
    _dispi(both, vga_mod.DISPI_ENABLE, vga_mod.DISPI_ENABLED)
    for bank in (0, 3, 255):
        _dispi(both, vga_mod.DISPI_BANK, bank)
        for off in (0, 1, 0xFFFF):
            _memw(both, 0xA0000 + off, (bank + off) & 0xFF)
        for off in (0, 1, 0xFFFF):
            _mem(both, 0xA0000 + off)
        _mem(both, 0xB0000)
