"""The standard VGA (stubdm/devices/vga.py): registers, planar memory, VBE
DISPI, and what it renders into a Surface.

In-process tests drive the device as a guest would (ports, the 0xa0000
window, BAR2) over a LocalVram; the end-to-end ones run the device model in
its own process under host_sim with the scripted guest on both runtimes:
text through the VGA hole (buffered ioreqs), a VBE mode drawn into the BAR0
video RAM that the device model populated and moved into the BAR, the frame
read back from the surface the device model dumps (-vga-dump).

Register facts: IBM VGA Technical Reference (mode 3's register table, the
write modes), Bochs' vbe_display_api; the font is the build's
(build/make_font.py, code page 437 from console-setup's VGA font).
"""
import os
import struct
import time

import pytest

from stubdm import log
from stubdm.devices import vga as vga_mod
from stubdm.devices.vga import LocalVram, Vga
from stubdm.display import MemorySurface

# Mode 3 (80x25 text, 720x400) as a VGA BIOS programs it.
MODE3_MISC = 0x67
MODE3_SEQ = (0x03, 0x00, 0x03, 0x00, 0x02)
MODE3_CRTC = (0x5F, 0x4F, 0x50, 0x82, 0x55, 0x81, 0xBF, 0x1F, 0x00, 0x4F, 0x0D, 0x0E,
              0x00, 0x00, 0x00, 0x00, 0x9C, 0x8E, 0x8F, 0x28, 0x1F, 0x96, 0xB9, 0xA3, 0xFF)
MODE3_GC = (0x00, 0x00, 0x00, 0x00, 0x00, 0x10, 0x0E, 0x00, 0xFF)
MODE3_AC = (0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x14, 0x07, 0x38, 0x39, 0x3A, 0x3B,
            0x3C, 0x3D, 0x3E, 0x3F, 0x0C, 0x00, 0x0F, 0x08, 0x00)

# Mode 0x12 (640x480, 16 colours, planar), a VGA BIOS's parameter table.
MODE12_MISC = 0xE3
MODE12_SEQ = (0x03, 0x01, 0x0F, 0x00, 0x06)
MODE12_CRTC = (0x5F, 0x4F, 0x50, 0x82, 0x54, 0x80, 0x0B, 0x3E, 0x00, 0x40, 0x00, 0x00,
               0x00, 0x00, 0x00, 0x59, 0xEA, 0x8C, 0xDF, 0x28, 0x00, 0xE7, 0x04, 0xE3, 0xFF)
MODE12_GC = (0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x05, 0x0F, 0xFF)
MODE12_AC = (0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x14, 0x07, 0x38, 0x39, 0x3A, 0x3B,
             0x3C, 0x3D, 0x3E, 0x3F, 0x01, 0x00, 0x0F, 0x00, 0x00)

FONT = vga_mod.load_font()
needs_font = pytest.mark.skipif(FONT is None, reason="build/out/vgafont.bin not built "
                                "(scons vgafont, from console-setup-linux's fonts)")


def ega_dac(i):
    """The 64-entry EGA palette a VGA BIOS loads: 6-bit r, g, b of entry i."""
    def level(primary, secondary):
        return ((i >> primary) & 1) * 0x2A + ((i >> secondary) & 1) * 0x15
    return level(2, 5), level(1, 4), level(0, 3)


def c8(v6):
    return (v6 << 2) | (v6 >> 4)


def program_mode3(g):
    """A BIOS's mode set through g.outb (ports)."""
    program_mode(g, MODE3_MISC, MODE3_SEQ, MODE3_CRTC, MODE3_GC, MODE3_AC)


def program_mode(g, misc, seq, crtc, gcr, ac):
    g.outb(0x3C2, misc)
    for i, v in enumerate(seq):
        g.outb(0x3C4, i)
        g.outb(0x3C5, v)
    g.outb(0x3D4, 0x11)
    g.outb(0x3D5, 0x00)  # unlock CRTC 0-7
    for i, v in enumerate(crtc):
        g.outb(0x3D4, i)
        g.outb(0x3D5, v)
    for i, v in enumerate(gcr):
        g.outb(0x3CE, i)
        g.outb(0x3CF, v)
    g.inb(0x3DA)
    for i, v in enumerate(ac):
        g.outb(0x3C0, i)
        g.outb(0x3C0, v)
    g.outb(0x3C8, 0)
    for i in range(64):
        for c in ega_dac(i):
            g.outb(0x3C9, c)
    g.inb(0x3DA)
    g.outb(0x3C0, 0x20)  # palette address source: the screen on


def set_cursor(g, pos, start=0x0D, end=0x0E):
    for reg, v in ((0x0A, start), (0x0B, end), (0x0E, pos >> 8), (0x0F, pos & 0xFF)):
        g.outb(0x3D4, reg)
        g.outb(0x3D5, v)


def dispi(g, index, value):
    g.outw(0x1CE, index)
    g.outw(0x1CF, value)


def dispi_read(g, index):
    g.outw(0x1CE, index)
    return g.inw(0x1CF)


def set_vbe_mode(g, w, h, bpp, flags=vga_mod.DISPI_LFB_ENABLED):
    g.outb(0x3C2, 0x01)  # colour: input status 1 at 0x3da (as Linux's bochs sets it)
    dispi(g, vga_mod.DISPI_ENABLE, 0)
    dispi(g, vga_mod.DISPI_BPP, bpp)
    dispi(g, vga_mod.DISPI_XRES, w)
    dispi(g, vga_mod.DISPI_YRES, h)
    dispi(g, vga_mod.DISPI_BANK, 0)
    dispi(g, vga_mod.DISPI_VIRT_WIDTH, w)
    dispi(g, vga_mod.DISPI_X_OFFSET, 0)
    dispi(g, vga_mod.DISPI_Y_OFFSET, 0)
    dispi(g, vga_mod.DISPI_ENABLE, vga_mod.DISPI_ENABLED | flags)
    g.inb(0x3DA)
    g.outb(0x3C0, 0x20)


def glyph_pixels(ch, fg, bg, cw=9):
    """The 9x16 cell a VGA shows for ch (code page 437) in colours fg/bg."""
    out = []
    for y in range(16):
        bits = FONT[ch * 16 + y]
        row = [fg if bits & (0x80 >> x) else bg for x in range(8)]
        row.append(fg if 0xC0 <= ch <= 0xDF and bits & 1 else bg)
        out.append(row[:cw])
    return out


def cell_of(surface_pixel, col, row, cw=9, ch=16):
    return [[surface_pixel(col * cw + x, row * ch + y) for x in range(cw)] for y in range(ch)]


# --- in-process: the device driven through its bus handlers --------------------------


class Direct:
    """A guest's I/O straight into one Vga (no hypervisor)."""

    def __init__(self, vga):
        self.v = vga

    def outb(self, port, value):
        self._port(port, 1, value)

    def outw(self, port, value):
        self._port(port, 2, value)

    def _port(self, port, size, value):
        if 0x1CE <= port <= 0x1D0:
            self.v.dispi_ports.write(port - 0x1CE, size, value)
        else:
            self.v.ports.write(port - 0x3B0, size, value)

    def inb(self, port):
        return self.v.ports.read(port - 0x3B0, 1)

    def inw(self, port):
        return self.v.dispi_ports.read(port - 0x1CE, 2)

    def writeb(self, addr, value):
        self.v.window.write(addr - 0xA0000, 1, value)

    def readb(self, addr):
        return self.v.window.read(addr - 0xA0000, 1)


@pytest.fixture
def dev():
    log.reset_counts()
    surface = MemorySurface(max_bytes=4 << 20)
    v = Vga(LocalVram(16 << 20), surface)
    return v, Direct(v), surface


def test_pci_identity(dev):
    v, _, _ = dev
    assert v.config_read(0, 4) == 0x11111234
    assert v.config_read(8, 4) == 0x03000002  # class 0x030000, rev 2
    assert v.config_read(0x2C, 4) == 0x11001AF4
    assert v.config_read(0x3D, 1) == 0  # no interrupt pin
    v.config_write(0x10, 4, 0xFFFFFFFF)
    assert v.config_read(0x10, 4) == 0xFF000008  # 16 MiB, 32-bit, prefetchable
    v.config_write(0x18, 4, 0xFFFFFFFF)
    assert v.config_read(0x18, 4) == 0xFFFFF000  # 4 KiB MMIO


def test_bochs_probe_through_bar2(dev):
    """What Linux's bochs driver reads (DESIGN.md 15)."""
    v, _, _ = dev
    assert v.bar_read(2, 0x500, 2) == 0xB0C5
    assert v.bar_read(2, 0x514, 2) == 256  # VIDEO_MEMORY_64K: 16 MiB
    assert v.bar_read(2, 0x600, 4) == 8
    v.bar_write(2, 0x604, 4, 0x1E1E1E1E)
    assert v.bar_read(2, 0x604, 4) == 0x1E1E1E1E
    assert v.bar_read(2, 0, 4) == 0  # no EDID
    v.bar_write(2, 0x508, 2, vga_mod.DISPI_ENABLED | vga_mod.DISPI_LFB_ENABLED)
    assert v.dispi_enabled
    # The VGA registers at 0x400: 0x3c4/0x3c5 = sequencer index/data.
    v.bar_write(2, 0x404, 2, 0x0F02)
    assert v.bar_read(2, 0x405, 1) == 0x0F


@needs_font
def test_text_mode_renders_glyphs_and_colours(dev):
    v, g, s = dev
    program_mode3(g)
    text = b"Hello, VGA"
    for i, ch in enumerate(text):
        g.writeb(0xB8000 + 2 * (80 * 2 + 5 + i), ch)
        g.writeb(0xB8000 + 2 * (80 * 2 + 5 + i) + 1, 0x1F)  # white on blue
    set_cursor(g, 0x2000, 0x20)  # cursor off, out of the way
    v.refresh()
    assert (s.width, s.height) == (720, 400)
    white, blue, black = (255, 255, 255), (0, 0, c8(0x2A)), (0, 0, 0)
    for i, ch in enumerate(text):
        assert cell_of(s.pixel, 5 + i, 2) == glyph_pixels(ch, white, blue), chr(ch)
    assert cell_of(s.pixel, 4, 2) == glyph_pixels(0, black, black)
    # 'H' really has both colours (the font is not blank).
    flat = sum(cell_of(s.pixel, 5, 2), [])
    assert white in flat and blue in flat
    # A second refresh with nothing written redraws nothing.
    s.take_dirty()
    v.refresh()
    assert s.take_dirty() == []
    # One character changes: one cell is redrawn.
    g.writeb(0xB8000 + 2 * (80 * 2 + 5), ord("J"))
    v.refresh()
    assert s.take_dirty() == [(5 * 9, 2 * 16, 9, 16)]
    assert cell_of(s.pixel, 5, 2) == glyph_pixels(ord("J"), white, blue)


@needs_font
def test_cursor(dev):
    v, g, s = dev
    program_mode3(g)
    g.writeb(0xB8000 + 2 * 81 + 1, 0x07)  # grey on black at (1, 1)
    set_cursor(g, 81)
    v.refresh()
    grey = (c8(0x2A), c8(0x2A), c8(0x2A))
    cell = cell_of(s.pixel, 1, 1)
    assert all(p == grey for p in cell[13] + cell[14])
    assert all(p == (0, 0, 0) for p in cell[12] + cell[15])
    set_cursor(g, 82)
    s.take_dirty()
    v.refresh()
    assert s.take_dirty() == [(9, 16, 18, 16)]  # the old and the new cell, one rectangle
    assert all(p == (0, 0, 0) for p in sum(cell_of(s.pixel, 1, 1), []))


def test_planar_write_modes(dev):
    """Write modes 0-3 with set/reset, rotate, logic ops, bit mask and map mask."""
    v, g, _ = dev
    vram = v.vram.view

    def gc(i, val):
        g.outb(0x3CE, i)
        g.outb(0x3CF, val)

    def seq(i, val):
        g.outb(0x3C4, i)
        g.outb(0x3C5, val)

    def planes(addr):
        return tuple(vram[addr * 4 + p] for p in range(4))

    seq(4, 0x06)  # planar, sequential
    gc(5, 0x00)
    gc(6, 0x05)  # graphics, 0xa0000 64 KiB
    seq(2, 0x0F)
    gc(8, 0xFF)
    g.writeb(0xA0000, 0xA5)  # mode 0, no set/reset: the byte to all planes
    assert planes(0) == (0xA5,) * 4
    gc(1, 0x05)
    gc(0, 0x01)  # set/reset planes 0 and 2 from bit 0/2 of GR0
    g.writeb(0xA0001, 0x3C)
    assert planes(1) == (0xFF, 0x3C, 0x00, 0x3C)
    gc(1, 0)
    gc(3, 0x01)  # rotate right by 1
    g.writeb(0xA0002, 0x01)
    assert planes(2) == (0x80,) * 4
    gc(3, 0x08)  # AND with the latches
    g.readb(0xA0000)  # latches = 0xa5 x4
    g.writeb(0xA0003, 0x0F)
    assert planes(3) == (0x05,) * 4
    gc(3, 0x18)  # XOR
    gc(8, 0xF0)  # bit mask: the low nibble keeps the latches
    g.readb(0xA0000)
    g.writeb(0xA0004, 0xFF)
    assert planes(4) == (0x55,) * 4
    gc(3, 0)
    gc(8, 0xFF)
    seq(2, 0x05)  # map mask: planes 0 and 2 only
    g.writeb(0xA0005, 0x11)
    assert planes(5) == (0x11, 0, 0x11, 0)
    seq(2, 0x0F)
    gc(5, 0x01)  # write mode 1: the latches as they are
    g.readb(0xA0001)
    g.writeb(0xA0006, 0x00)
    assert planes(6) == planes(1)
    gc(5, 0x02)  # write mode 2: colour 0b1010 to each plane's bits
    g.writeb(0xA0007, 0x0A)
    assert planes(7) == (0x00, 0xFF, 0x00, 0xFF)
    gc(5, 0x03)  # write mode 3: set/reset colour, mask = value & bit mask
    gc(0, 0x0C)
    g.readb(0xA0000)
    g.writeb(0xA0008, 0x0F)
    assert planes(8) == (0xA0, 0xA0, 0xAF, 0xAF)
    # Read mode 1: colour compare against GR2 where GR7 cares.
    gc(5, 0x08)
    gc(2, 0x0A)
    gc(7, 0x0F)
    assert g.readb(0xA0007) == 0xFF
    gc(2, 0x05)
    assert g.readb(0xA0007) == 0x00
    gc(7, 0x00)  # nothing cares: all match
    assert g.readb(0xA0007) == 0xFF


def test_planar_16_colour_mode_0x12_renders(dev):
    """Mode 0x12: each pixel a bit of each of the four planes, through the attribute
    palette (plane enable AR12) and the DAC; 640x480 from the CRTC; the start
    address scrolls; only changed lines are redrawn."""
    v, g, s = dev
    program_mode(g, MODE12_MISC, MODE12_SEQ, MODE12_CRTC, MODE12_GC, MODE12_AC)

    def colour(c):  # what the BIOS's attribute palette and DAC make of index c
        return tuple(c8(x) for x in ega_dac(MODE12_AC[c]))

    def plane_bytes(addr, values):
        for p in range(4):
            g.outb(0x3C4, 2)
            g.outb(0x3C5, 1 << p)  # map mask: this plane only
            g.writeb(0xA0000 + addr, values[p])

    v.refresh()
    assert (s.width, s.height) == (640, 480)
    assert s.pixel(0, 0) == colour(0)
    s.take_dirty()
    for c in range(16):  # 16 bars of 40 pixels, rows 100-109
        for y in range(100, 110):
            for b in range(5):
                plane_bytes(y * 80 + c * 5 + b, [0xFF if c >> p & 1 else 0 for p in range(4)])
    plane_bytes(200 * 80 + 1, (0x80, 0, 0, 0x01))  # x 8: colour 1; x 15: colour 8
    v.refresh()
    for c in range(16):
        assert s.pixel(c * 40, 100) == colour(c), c
        assert s.pixel(c * 40 + 39, 109) == colour(c), c
    assert s.pixel(8, 200) == colour(1) and s.pixel(15, 200) == colour(8)
    assert s.pixel(9, 200) == colour(0) and s.pixel(16, 200) == colour(0)
    assert s.pixel(0, 99) == colour(0) and s.pixel(0, 110) == colour(0)
    rows = set()
    for _x, y, _w, hh in s.take_dirty():
        rows.update(range(y, y + hh))
    assert set(range(100, 110)) | {200} <= rows and len(rows) < 100, sorted(rows)
    v.refresh()
    assert s.take_dirty() == []  # nothing written: nothing redrawn
    # Plane enable: only plane 0 shows, so colour 15 shows as 1.
    g.inb(0x3DA)
    g.outb(0x3C0, 0x12 | 0x20)
    g.outb(0x3C0, 0x01)
    v.refresh()
    assert s.pixel(15 * 40, 100) == colour(1) and s.pixel(14 * 40, 100) == colour(0)
    g.inb(0x3DA)
    g.outb(0x3C0, 0x12 | 0x20)
    g.outb(0x3C0, 0x0F)
    # The start address one line (80 bytes) on: the picture moves up a line.
    g.outb(0x3D4, 0x0D)
    g.outb(0x3D5, 80)
    v.refresh()
    assert s.pixel(3 * 40, 99) == colour(3) and s.pixel(3 * 40, 109) == colour(0)
    assert log.count("guest_error") == 0 and log.count("unimp") == 0


def test_planar_dot_clock_change_redraws_at_the_new_width(dev):
    """SR1's half dot clock doubles each pixel: patterns drawn before the change
    must not be reused at the other width (the fuzzer's ValueError)."""
    v, g, s = dev
    program_mode(g, MODE12_MISC, MODE12_SEQ, MODE12_CRTC, MODE12_GC, MODE12_AC)
    g.outb(0x3C4, 2)
    g.outb(0x3C5, 0x0F)
    g.writeb(0xA0000, 0xF0)
    v.refresh()
    assert s.width == 640 and s.pixel(3, 0) != s.pixel(4, 0)
    g.outb(0x3C4, 1)
    g.outb(0x3C5, MODE12_SEQ[1] | 0x08)  # half dot clock: 320 pixels, each twice
    v.refresh()
    assert s.width == 1280 and s.pixel(7, 0) == s.pixel(0, 0) != s.pixel(8, 0)


def test_every_mask_combination_stays_inside_vram(dev):
    """Every write mode, function and mask: only the addressed dword changes."""
    v, g, _ = dev
    vram = v.vram.view
    before = bytes(vram)
    seen = set()
    g.outb(0x3C4, 4)
    g.outb(0x3C5, 0x06)
    for mode in range(4):
        for func in range(4):
            for mask in range(16):
                for reg, val in ((5, mode), (3, func << 3 | 3), (8, 0x5A), (1, mask ^ 3),
                                 (0, mask)):
                    g.outb(0x3CE, reg)
                    g.outb(0x3CF, val)
                g.outb(0x3C4, 2)
                g.outb(0x3C5, mask)
                g.writeb(0xA0000 + 0xFFFF, 0xC3)
                seen.add(bytes(vram[0xFFFF * 4:0x40000]))
    after = bytes(vram)
    assert after[:0xFFFF * 4] == before[:0xFFFF * 4]
    assert after[0x40000:] == before[0x40000:]
    assert len(seen) > 8  # the modes and masks did write different things there


def test_odd_even_text_layout(dev):
    v, g, _ = dev
    program_mode3(g)
    g.writeb(0xB8000, ord("A"))
    g.writeb(0xB8001, 0x1E)
    assert bytes(v.vram.view[0:2]) == b"A\x1e"  # plane 0 char, plane 1 attribute
    assert g.readb(0xB8001) == 0x1E
    assert g.readb(0xA0000) == 0xFF  # mode 3 decodes 0xb8000-0xbffff only


def test_registers_read_back_and_out_of_range_indices(dev):
    v, g, _ = dev
    g.outb(0x3C4, 0x0A)  # index wraps to 3 bits, as QEMU's
    assert v.port_read(0x3C4) == 2
    g.outb(0x3C5, 0xFF)
    assert v.port_read(0x3C5) == 0x0F  # map mask: 4 bits
    g.outb(0x3CE, 0x1C)
    assert v.port_read(0x3CE) == 0x0C
    g.outb(0x3CF, 0xFF)
    assert v.port_read(0x3CF) == 0  # no register there
    g.inb(0x3DA)
    g.outb(0x3C0, 0x1F)
    g.outb(0x3C0, 0x55)  # attribute 0x1f does not exist: refused, logged
    assert log.count("guest_error") >= 1
    g.outb(0x3C2, 0x01)  # colour: the CRTC at 0x3d4
    assert v.port_read(0x3B4) == 0xFF
    g.outb(0x3D4, 0x99)
    assert v.port_read(0x3D4) == 0x99
    g.outb(0x3C8, 0xFF)
    for c in (1, 2, 3, 4, 5, 6):
        g.outb(0x3C9, c)  # wraps to entry 0
    g.outb(0x3C7, 0xFF)
    assert [v.port_read(0x3C9) for _ in range(6)] == [1, 2, 3, 4, 5, 6]


def test_dispi_hostile_modes_are_clamped_into_vram(dev):
    v, g, s = dev
    size = v.vram_size
    for w, h, bpp in ((16000, 12000, 32), (0, 0, 32), (1023, 767, 32), (65535, 65535, 24),
                      (8, 65535, 32), (4096, 4096, 8), (1024, 768, 13), (1024, 768, 0)):
        set_vbe_mode(g, w, h, bpp)
        d = v.dispi
        assert d[vga_mod.DISPI_BPP] in vga_mod.DISPI_BPPS
        assert d[vga_mod.DISPI_XRES] % 8 == 0 and d[vga_mod.DISPI_XRES] > 0
        assert d[vga_mod.DISPI_YRES] > 0
        assert v.vbe_start + d[vga_mod.DISPI_YRES] * v.vbe_line <= size, (w, h, bpp)
        v.refresh()  # never reads past VRAM; too big for the surface: logged
    set_vbe_mode(g, 1024, 768, 32)
    dispi(g, vga_mod.DISPI_Y_OFFSET, 60000)
    dispi(g, vga_mod.DISPI_X_OFFSET, 60000)
    assert v.vbe_start + 768 * v.vbe_line <= size
    dispi(g, vga_mod.DISPI_BANK, 0xFFFF)
    assert v.bank_offset == 255 << 16
    g.writeb(0xAFFFF, 0x77)  # the last byte of video RAM
    assert v.vram.view[size - 1] == 0x77
    assert dispi_read(g, 0x0B) == 0 and dispi_read(g, 0xFFFF) == 0
    assert log.count("guest_error") > 0


def test_vbe_32bpp_renders_and_tracks_changes(dev):
    v, g, s = dev
    set_vbe_mode(g, 64, 48, 32)
    assert (s.width, s.height) == (0, 0)
    v.refresh()
    assert (s.width, s.height) == (64, 48)
    s.take_dirty()
    v.bar_write(0, (10 * 64 + 3) * 4, 4, 0x00123456)  # a BAR0 write that reached us
    v.refresh()
    assert s.pixel(3, 10) == (0x12, 0x34, 0x56)
    assert s.take_dirty() == [(0, 0, 64, 16)]  # rows 0-15 share the written page


@pytest.mark.parametrize("bpp", [8, 15, 16, 24])
def test_vbe_depths(dev, bpp):
    v, g, s = dev
    set_vbe_mode(g, 16, 4, bpp)
    vram = v.vram.view
    bpp_bytes = (bpp + 7) // 8
    o = (2 * 16 + 5) * bpp_bytes
    if bpp == 8:
        g.outb(0x3C8, 7)
        for c in (0x3F, 0x20, 0x01):
            g.outb(0x3C9, c)
        vram[o] = 7
        want = (c8(0x3F), c8(0x20), c8(0x01))
    elif bpp == 15:
        vram[o:o + 2] = struct.pack("<H", (31 << 10) | (16 << 5) | 1)
        want = (0xFF, 16 << 3 | 16 >> 2, 1 << 3 | 0)
    elif bpp == 16:
        vram[o:o + 2] = struct.pack("<H", (31 << 11) | (32 << 5) | 1)
        want = (0xFF, 32 << 2 | 32 >> 4, 1 << 3 | 0)
    else:
        vram[o:o + 3] = bytes((0x11, 0x22, 0x33))
        want = (0x33, 0x22, 0x11)
    v.mark(0, 4096)
    v.refresh()
    assert s.pixel(5, 2) == want
    assert s.pixel(4, 2) == (0, 0, 0)


def test_blank_when_palette_source_clear(dev):
    v, g, s = dev
    set_vbe_mode(g, 64, 48, 32)
    v.vram.view[0:4] = b"\xff\xff\xff\x00"
    v.mark(0, 4)
    g.inb(0x3DA)
    g.outb(0x3C0, 0x00)  # PAS clear: the screen blanks (bochs' blank)
    v.refresh()
    assert all(b == 0 for b in s.frame())


# --- end to end: the device model under host_sim, the scripted guest -----------------

DUMP_MAGIC = b"STUBDMFB"


def read_dump(path):
    with open(path, "rb") as f:
        data = f.read()
    assert data[:8] == DUMP_MAGIC
    w, h = struct.unpack_from("<II", data, 8)
    pix = data[16:]
    assert len(pix) == w * h * 4

    def pixel(x, y):
        o = (y * w + x) * 4
        return (pix[o + 2], pix[o + 1], pix[o])

    return w, h, pixel


def wait_dump(session, path, check, timeout=20.0):
    """Serve the device model (its dm_ops wait for host_sim) until the dumped
    frame passes check(width, height, pixel)."""
    end = time.monotonic() + timeout
    last = None
    while time.monotonic() < end:
        if os.path.exists(path):
            try:
                last = read_dump(path)
            except AssertionError:
                last = None  # caught mid-write by a rename race: read again
            if last is not None and check(*last):
                return last
        session.hv.pump(0.05)
    size = None if last is None else (last[0], last[1])
    raise AssertionError("the dumped frame never showed it (last frame: %r); device model:\n%s"
                         % (size, session.dm_messages()))


@pytest.fixture
def big_heap(monkeypatch):
    # A surface of a VBE frame is a few MiB of the device model's heap (a stub
    # domain gets libxl's 128 MiB + video RAM; the fbfront's pages live outside it).
    from host_sim import scripted

    monkeypatch.setattr(scripted, "MICROPYTHON_HEAP", "24M")


@needs_font
def test_scripted_text_mode(dm_runtime, big_heap, tmp_path):
    from host_sim.scripted import Session

    dump = str(tmp_path / "frame")
    with Session(dm_args=["-device", "VGA,vgamem_mb=16", "-vga-dump", dump],
                 runtime=dm_runtime) as s:
        g = s.guest
        program_mode3(g)
        text = b"stubdm VGA text \xdb\xb0"
        for i, ch in enumerate(text):
            g.writeb(0xB8000 + 2 * (80 * 3 + i), ch)  # buffered ioreqs, as Xen sends them
            g.writeb(0xB8000 + 2 * (80 * 3 + i) + 1, 0x4E)  # yellow on red
        g.writeb(0xB8000 + 2 * (80 * 3 + len(text)) + 1, 0x07)  # grey on black
        set_cursor(g, 80 * 3 + len(text))
        yellow, red = (255, 255, c8(0x15)), (c8(0x2A), 0, 0)

        def shown(w, h, pixel):
            return (w, h) == (720, 400) and all(
                cell_of(pixel, i, 3) == glyph_pixels(ch, yellow, red)
                for i, ch in enumerate(text))

        w, h, pixel = wait_dump(s, dump, shown)
        # The cursor: scan lines 13-14 of its cell in the cell's foreground colour.
        grey = (c8(0x2A),) * 3
        wait_dump(s, dump, lambda w, h, p: all(
            px == grey for px in cell_of(p, len(text), 3)[13]))
        _, _, pixel = wait_dump(s, dump, shown)
        cur = cell_of(pixel, len(text), 3)
        assert all(p == grey for p in cur[14]) and all(p == (0, 0, 0) for p in cur[12])
        assert "Traceback" not in s.dm_messages()


def test_scripted_vbe_mode_in_bar0(dm_runtime, big_heap, tmp_path):
    """A VBE mode drawn straight into BAR0: the video RAM the device model
    populated, moved into the BAR when the guest placed it, seen through Xen's
    dirty tracking (host_sim's page hashes)."""
    from host_sim.scripted import Session

    dump = str(tmp_path / "frame")
    with Session(dm_args=["-device", "VGA", "-vga-dump", dump], runtime=dm_runtime) as s:
        g = s.guest
        bar0 = 0xF0000000
        g.pci_write(2, 0, 0x10, bar0)
        g.pci_write(2, 0, 0x18, 0xF1000000)
        g.pci_write(2, 0, 0x04, 0x0003, size=2)
        assert g.readw(0xF1000500) == 0xB0C5  # DISPI ID through BAR2
        w, h = 320, 200
        set_vbe_mode(g, w, h, 32)
        # A white 40x20 box at (100, 50), a blue line on row 150.
        for y in range(50, 70):
            g.memwrite(bar0 + (y * w + 100) * 4, b"\xff\xff\xff\x00" * 40)
        g.memwrite(bar0 + 150 * w * 4, b"\xff\x00\x00\x00" * w)

        def shown(fw, fh, pixel):
            return (fw, fh) == (w, h) and pixel(100, 50) == (255, 255, 255) \
                and pixel(139, 69) == (255, 255, 255) and pixel(319, 150) == (0, 0, 255)

        _, _, pixel = wait_dump(s, dump, shown)
        assert pixel(99, 50) == (0, 0, 0) and pixel(140, 69) == (0, 0, 0)
        assert pixel(0, 149) == (0, 0, 0) and pixel(0, 151) == (0, 0, 0)
        # Moved over RAM: refused (the RAM stays the guest's), the device model lives.
        g.memwrite(0x01000000, b"RAM!" * 4)
        g.pci_write(2, 0, 0x10, 0x01000000)
        with pytest.raises(ValueError):  # the video RAM is no longer at the old place
            g.memwrite(bar0 + 10 * w * 4, b"\x00\xff\x00\x00" * 8)
        assert g.memread(0x01000000, 16) == b"RAM!" * 4
        end = time.monotonic() + 0.3
        while time.monotonic() < end:
            s.hv.pump(0.05)
        g.pci_write(2, 0, 0x10, bar0)
        g.memwrite(bar0 + 20 * w * 4, b"\x00\xff\x00\x00" * 8)
        wait_dump(s, dump, lambda fw, fh, p: p(0, 20) == (0, 255, 0))
        assert "refused" in s.dm_messages()


@needs_font
def test_scripted_text_mode_on_the_port(big_heap, tmp_path):
    """The stub domain's own port (built for Linux): no files, the font frozen in
    (build/out/pyfont), a fixed heap that holds a text frame's surface."""
    from host_sim import scripted

    if not os.access(scripted.PORT_BINARY, os.X_OK):
        pytest.skip("the port is not built: run scons")
    test_scripted_text_mode("port", None, tmp_path)
