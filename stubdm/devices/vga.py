# Standard VGA with Bochs VBE extensions at 00:02.0: QEMU's `-device VGA`
# (hw/display/vga.c, vga-pci.c), which libxl asks for with vga="stdvga".
#
# PCI: 1234:1111 rev 2, class 0x030000, subsystem 1af4:1100, no interrupt pin
# (DESIGN.md section 15). BAR0: the video RAM, prefetchable; under Xen it is
# guest memory the device model populated (VramBacking, handed in), moved to
# where the guest puts the BAR, never trapped. BAR2 (4 KiB MMIO): EDID at 0
# (none: zeros), the VGA registers 0x3c0-0x3df at 0x400, Bochs VBE DISPI at
# 0x500 (16-bit registers), QEMU's extended registers at 0x600 (size, byte
# order).
# Legacy: ports 0x3b0-0x3df (the CRTC at 0x3b4/0x3d4 and input status 1 at
# 0x3ba/0x3da as the misc output register's colour bit selects), VBE DISPI on
# 0x1ce (index) / 0x1cf (data), and the memory window 0xa0000-0xbfffff (Xen
# sends writes there as buffered ioreqs).
#
# Video RAM layout, as QEMU's: planar memory interleaved, byte 4 * a + p is
# plane p at address a (so a text cell's character and attribute are at
# 4 * i and 4 * i + 1, its font in plane 2); chain-4 and the VBE modes see
# it as linear bytes.
#
# Register semantics: IBM VGA Technical Reference (sequencer, graphics
# controller, attribute controller, CRTC, DAC), the Bochs VBE interface
# (vbe_display_api.txt), QEMU's choices where those leave any.
from stubdm import log
from stubdm.compat import const, ticks_diff, ticks_us
from stubdm.display import BYTES_PER_PIXEL
from stubdm.pci import PciFunction

VENDOR_BOCHS = const(0x1234)
DEVICE_VGA = const(0x1111)
CLASS_VGA = const(0x030000)
SUBSYS_VENDOR_QEMU = const(0x1AF4)
SUBSYS_ID_QEMU = const(0x1100)
REVISION = const(2)
MMIO_BAR_SIZE = const(4096)
DEFAULT_VRAM_MB = const(16)

# BAR2 layout (QEMU's vga-pci.c).
MMIO_EDID = const(0x000)
MMIO_EDID_SIZE = const(0x400)
MMIO_VGA = const(0x400)  # 0x3c0-0x3df
MMIO_VGA_SIZE = const(0x20)
MMIO_DISPI = const(0x500)
MMIO_DISPI_SIZE = const(0x16)  # 11 registers of 16 bits
MMIO_QEXT = const(0x600)
QEXT_SIZE_REG = const(0x600)
QEXT_BYTESWAP_REG = const(0x604)
QEXT_SIZE = const(8)
QEXT_LITTLE_ENDIAN = const(0x1E1E1E1E)
QEXT_BIG_ENDIAN = const(0xBEBEBEBE)

# Legacy ports.
PORTS_START = const(0x3B0)
PORTS_COUNT = const(0x30)  # 0x3b0-0x3df
DISPI_PORTS = const(0x1CE)  # 0x1ce index, 0x1cf data, 0x1d0 data (QEMU's alias)
DISPI_PORT_COUNT = const(3)
WINDOW_START = const(0xA0000)
WINDOW_SIZE = const(0x20000)

# VBE DISPI registers (Bochs vbe.h).
DISPI_ID = const(0)
DISPI_XRES = const(1)
DISPI_YRES = const(2)
DISPI_BPP = const(3)
DISPI_ENABLE = const(4)
DISPI_BANK = const(5)
DISPI_VIRT_WIDTH = const(6)
DISPI_VIRT_HEIGHT = const(7)
DISPI_X_OFFSET = const(8)
DISPI_Y_OFFSET = const(9)
DISPI_VIDEO_MEMORY_64K = const(10)
DISPI_NUM = const(11)
DISPI_ID0 = const(0xB0C0)
DISPI_ID5 = const(0xB0C5)
DISPI_MAX_XRES = const(16000)
DISPI_MAX_YRES = const(12000)
DISPI_MAX_BPP = const(32)
DISPI_ENABLED = const(0x01)
DISPI_GETCAPS = const(0x02)
DISPI_8BIT_DAC = const(0x20)
DISPI_LFB_ENABLED = const(0x40)
DISPI_NOCLEARMEM = const(0x80)
DISPI_BPPS = (4, 8, 15, 16, 24, 32)

# Writable bits per register, as QEMU's masks (sequencer, graphics controller).
SR_MASK = (0x03, 0x3D, 0x0F, 0x3F, 0x0E, 0x00, 0x00, 0xFF)
GR_MASK = (0x0F, 0x0F, 0x0F, 0x1F, 0x03, 0x7B, 0x0F, 0x0F, 0xFF,
           0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00)
AR_COUNT = const(0x15)
CR_COUNT = const(256)  # QEMU keeps all 256 indices

# Misc output and input status bits.
MSR_COLOR = const(0x01)
ST01_RETRACE = const(0x09)  # vertical retrace | display disabled, toggled per read
AR_PAS = const(0x20)  # palette address source: the screen shows only when set
SR01_CHAR8 = const(0x01)
SR01_DOTCLOCK_DIV2 = const(0x08)
SR01_SCREEN_OFF = const(0x20)
SR04_ODD_EVEN_OFF = const(0x04)
SR04_CHAIN4 = const(0x08)
GR05_ODD_EVEN = const(0x10)
GR06_GRAPHICS = const(0x01)
AR10_GRAPHICS = const(0x01)
AR10_LINE_GRAPHICS = const(0x04)
AR10_BLINK = const(0x08)
AR10_P54 = const(0x80)
CR0A_CURSOR_OFF = const(0x20)
CR11_PROTECT = const(0x80)

PAGE = const(4096)
REFRESH_MS = const(30)  # how often the main loop asks for a refresh
# Text geometry we draw at most (QEMU's own text modes stay far below).
TEXT_MAX_COLS = const(200)
TEXT_MAX_ROWS = const(150)
GLYPH_CACHE_MAX = const(512)
FONT_HEIGHT = const(16)

KIND_OFF = const(0)
KIND_TEXT = const(1)
KIND_VBE = const(2)
KIND_GFX = const(3)  # VGA graphics modes (planar 16 colours, chain-4 256 colours)

_MASK32 = []
for _i in range(16):
    _m = 0
    for _p in range(4):
        if _i & (1 << _p):
            _m |= 0xFF << (8 * _p)
    _MASK32.append(_m)
_MASK32 = tuple(_MASK32)


def _has_step_slices():
    # CPython converts whole rows with step slices and bytes.translate;
    # MicroPython has neither and goes pixel by pixel.
    try:
        t = bytearray(4)
        t[0::2] = bytes(2).translate(bytes(range(256)))
        return True
    except (TypeError, NotImplementedError, ValueError, AttributeError):
        return False


_STEP = _has_step_slices()
if _STEP:
    # Per-byte maps for 15/16 bpp: each colour channel (8 bits, the top bits
    # repeated below) is the OR of one function of the low byte and one of the
    # high byte, so a row converts with a few translates and one big OR.
    _T16_B = bytes((((v & 0x1F) << 3) | ((v & 0x1F) >> 2)) for v in range(256))
    _T16_GL = bytes(((v >> 5) << 2) for v in range(256))
    _T16_GH = bytes((((v & 7) << 5) | ((v & 7) >> 1)) for v in range(256))
    _T16_R = bytes((((v >> 3) << 3) | ((v >> 3) >> 2)) for v in range(256))
    _T15_GL = bytes((((v >> 5) << 3) | (v >> 7)) for v in range(256))
    _T15_GH = bytes((((v & 3) << 6) | ((v & 3) << 1)) for v in range(256))
    _T15_R = bytes(((((v >> 2) & 0x1F) << 3) | (((v >> 2) & 0x1F) >> 2)) for v in range(256))


def _row_dirty(dirty, a, line, first):
    """Whether the scan line at VRAM offset a (line bytes) touches a page marked in
    dirty (one flag per page, from page `first`)."""
    for p in range(a // PAGE - first, (a + line - 1) // PAGE - first + 1):
        if dirty[p]:
            return True
    return False


def _spread_table():
    """byte -> an int whose nibble k (from the top) is the byte's bit 7 - k: four
    planes' bytes, each shifted by its plane number and or-ed, give eight 4-bit
    colour indices at once (the planar 16-colour modes)."""
    t = []
    for b in range(256):
        v = 0
        for k in range(8):
            if b & (0x80 >> k):
                v |= 1 << (4 * (7 - k))
        t.append(v)
    return t


_SPREAD = None  # built on the first planar frame
PLANAR_CACHE_MAX = const(4096)  # 8-pixel patterns kept (a screen has few)
PLANAR_SPAN = const(0x40000)  # 64 K planar addresses, four bytes each


def _or_bytes(x, y):
    n = len(x)
    return (int.from_bytes(x, "little") | int.from_bytes(y, "little")).to_bytes(n, "little")


def font_paths():
    """Where build/out/vgafont.bin (build/make_font.py) may be: beside the tree this
    module came from (MicroPython's __file__ is relative to its path entry)."""
    import sys

    out = []
    try:
        here = __file__
    except NameError:
        here = ""
    i = here.rfind("stubdm/devices/")
    if i >= 0:
        top = here[:i]
        if top.startswith("/"):
            out.append(top + "build/out/vgafont.bin")
        else:
            for p in sys.path:
                if p and p[0] == "/":
                    out.append(p + "/" + top + "build/out/vgafont.bin")
    return out


_font_cache = []


def load_font():
    """The 8x16 character ROM (256 x 16 bytes), or None when it was not built."""
    if _font_cache:
        return _font_cache[0]
    data = None
    try:
        from stubdm_vgafont import FONT  # frozen into the stub domain's port

        data = FONT
    except ImportError:
        pass
    for p in ([] if data is not None else font_paths()):
        try:
            with open(p, "rb") as f:
                data = f.read()
            break
        except OSError:
            data = None
    if data is not None and len(data) != 256 * FONT_HEIGHT:
        data = None
    _font_cache.append(data)
    return data


class LocalVram:
    """Video RAM in the device model's own memory (no hypervisor: the fuzzer,
    unit tests). Every write goes through the device, which marks it."""

    def __init__(self, size):
        self.size = size
        self._mem = bytearray(size)
        self.view = memoryview(self._mem)
        self.gpa = None

    def move(self, gpa):
        self.gpa = gpa
        return True

    def dirty(self, first_page, count):
        return b""  # nothing beyond what the device marked itself


class _Mmio:
    """BAR2: EDID, VGA ports, DISPI, QEMU's extended registers."""

    def __init__(self, vga):
        self.vga = vga

    def read(self, offset, size):
        v = self.vga
        if offset < MMIO_EDID_SIZE:
            return 0  # no EDID blob: the driver picks its default mode
        if MMIO_VGA <= offset < MMIO_VGA + MMIO_VGA_SIZE:
            out = 0
            for i in range(size):
                port = 0x3C0 + offset - MMIO_VGA + i
                if port >= 0x3E0:
                    break
                out |= v.port_read(port) << (8 * i)
            return out
        if MMIO_DISPI <= offset < MMIO_DISPI + MMIO_DISPI_SIZE:
            index = (offset - MMIO_DISPI) >> 1
            out = v.dispi_select_read(index)
            if size > 2 and index + 1 < DISPI_NUM:
                out |= v.dispi_select_read(index + 1) << 16
            if offset & 1:
                out >>= 8
            return out
        if offset == QEXT_SIZE_REG:
            return QEXT_SIZE
        if offset == QEXT_BYTESWAP_REG:
            return v.qext_byteswap
        return 0

    def write(self, offset, size, value):
        v = self.vga
        if offset < MMIO_EDID_SIZE:
            v.guest_error("write to the read-only EDID at BAR2+%#x" % offset)
            return
        if MMIO_VGA <= offset < MMIO_VGA + MMIO_VGA_SIZE:
            for i in range(size):
                port = 0x3C0 + offset - MMIO_VGA + i
                if port >= 0x3E0:
                    break
                v.port_write(port, (value >> (8 * i)) & 0xFF)
            return
        if MMIO_DISPI <= offset < MMIO_DISPI + MMIO_DISPI_SIZE:
            if offset & 1:
                v.guest_error("DISPI write at odd BAR2 offset %#x" % offset)
                return
            index = (offset - MMIO_DISPI) >> 1
            v.dispi_select_write(index, value & 0xFFFF)
            if size > 2 and index + 1 < DISPI_NUM:
                v.dispi_select_write(index + 1, (value >> 16) & 0xFFFF)
            return
        if offset == QEXT_BYTESWAP_REG and size == 4:
            if value in (QEXT_LITTLE_ENDIAN, QEXT_BIG_ENDIAN):
                v.qext_byteswap = value
                if value == QEXT_BIG_ENDIAN:
                    log.unimp("vga", "big-endian framebuffer asked for: shown little-endian")
            else:
                v.guest_error("extended register byte order %#x" % value)
            return
        v.guest_error("write of %d bytes at BAR2+%#x: nothing there" % (size, offset))


class _Vram:
    """BAR0 when an access reaches the device model (it does not under Xen, where
    the BAR is guest memory): straight into video RAM, bounds checked."""

    def __init__(self, vga):
        self.vga = vga

    def read(self, offset, size):
        v = self.vga
        view = v.vram.view
        if view is None or offset < 0 or offset + size > v.vram_size:
            return (1 << (8 * size)) - 1
        return int.from_bytes(bytes(view[offset:offset + size]), "little")

    def write(self, offset, size, value):
        v = self.vga
        view = v.vram.view
        if view is None or offset < 0 or offset + size > v.vram_size:
            return
        view[offset:offset + size] = (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little")
        v.mark(offset, size)
        v.plane2_written = True


class _Ports:
    """The legacy VGA ports 0x3b0-0x3df, as a bus device (offset from 0x3b0)."""

    def __init__(self, vga):
        self.vga = vga

    def read(self, offset, size):
        out = 0
        for i in range(size):
            if offset + i >= PORTS_COUNT:
                out |= 0xFF << (8 * i)
                continue
            out |= self.vga.port_read(PORTS_START + offset + i) << (8 * i)
        return out

    def write(self, offset, size, value):
        for i in range(size):
            if offset + i < PORTS_COUNT:
                self.vga.port_write(PORTS_START + offset + i, (value >> (8 * i)) & 0xFF)

    def write_rep(self, offset, size, count, buf):
        # rep outs (a BIOS loading the DAC through 0x3c9): each item in order.
        if offset + size > PORTS_COUNT:
            return False
        write = self.vga.port_write
        port = PORTS_START + offset
        if size == 1:
            for i in range(count):
                write(port, buf[i])
            return True
        for i in range(count):
            for k in range(size):
                write(port + k, buf[i * size + k])
        return True


class _DispiPorts:
    """0x1ce (index), 0x1cf and 0x1d0 (data): 16-bit registers."""

    def __init__(self, vga):
        self.vga = vga

    def read(self, offset, size):
        v = self.vga
        if offset == 0:
            out = v.dispi_index
        else:
            out = v.dispi_read(v.dispi_index)
        return out & 0xFF if size == 1 else out

    def write(self, offset, size, value):
        v = self.vga
        if offset == 0:
            if size == 1:
                v.guest_error("byte write to the DISPI index port")
            v.dispi_index = value & 0xFFFF
            return
        v.dispi_write(v.dispi_index, value & 0xFFFF)


class _Window:
    """0xa0000-0xbffff, as a bus device (offset from 0xa0000)."""

    def __init__(self, vga):
        self.vga = vga

    def read(self, offset, size):
        v = self.vga
        out = 0
        for i in range(size):
            out |= v.mem_readb(offset + i) << (8 * i)
        return out

    def write(self, offset, size, value):
        v = self.vga
        for i in range(size):
            v.mem_writeb(offset + i, (value >> (8 * i)) & 0xFF)

    def write_rep(self, offset, size, count, buf):
        # rep stos/movs into the window (a BIOS clearing the screen): byte by byte,
        # in order, through the same planar logic.
        n = size * count
        if offset + n > WINDOW_SIZE:
            return False
        v = self.vga
        for i in range(n):
            v.mem_writeb(offset + i, buf[i])
        return True


class Vga(PciFunction):
    """The VGA function and its legacy interfaces; rendering into a Surface.

    vram: a VramBacking (size, view: memoryview of all of video RAM or None,
    move(gpa or None) -> bool, dirty(first_page, count) -> bitmap bytes (bit i
    of byte i // 8 = page first_page + i written by the guest since the last
    call), b"" (nothing beyond what the device marks) or None (unknown: all)).
    surface: a stubdm.display.Surface, or None (nothing drawn until set).
    """

    def __init__(self, vram, surface=None, name="vga"):
        super().__init__(name, VENDOR_BOCHS, DEVICE_VGA, CLASS_VGA, revision=REVISION,
                         subsys_vendor=SUBSYS_VENDOR_QEMU, subsys_id=SUBSYS_ID_QEMU)
        self.vram = vram
        self.vram_size = vram.size
        self.surface = surface
        self.ports = _Ports(self)
        self.dispi_ports = _DispiPorts(self)
        self.window = _Window(self)
        self.mmio = _Mmio(self)
        self.add_bar(0, vram.size, "mem", _Vram(self), prefetch=True)
        self.add_bar(2, MMIO_BAR_SIZE, "mem", self.mmio)
        # The video RAM pages written through the device itself (legacy window,
        # BAR0 ioreqs): Xen's dirty tracking sees only the guest's own writes.
        self.pages = (vram.size + PAGE - 1) // PAGE
        self.marked = bytearray(self.pages)
        self._no_pages = bytes(self.pages)
        self.any_marked = False
        self.plane2_written = True
        self.frames = 0
        self.busy_us = 0
        self.last_us = 0
        self.drawn = 0  # refreshes that redrew something, and their time
        self.drawn_us = 0
        self._reset_registers()
        self._reset_display()
        self._load_rom_font()

    # --- reset ---------------------------------------------------------------

    def _reset_registers(self):
        self.msr = 0
        self.fcr = 0
        self.st01 = 0
        self.sr_index = 0
        self.sr = bytearray(8)
        self.gr_index = 0
        self.gr = bytearray(16)
        self.ar_index = 0
        self.ar = bytearray(AR_COUNT)
        self.ar_flip_flop = 0
        self.cr_index = 0
        self.cr = bytearray(CR_COUNT)
        self.dac_state = 0
        self.dac_read_index = 0
        self.dac_write_index = 0
        self.dac_sub_index = 0
        self.dac_cache = bytearray(3)
        self.palette = bytearray(768)
        self.dac_8bit = False
        self.latch = 0
        self.dispi_index = 0
        self.dispi = [0] * DISPI_NUM
        self.dispi[DISPI_ID] = DISPI_ID5  # the rest 0 until the guest sets a mode
        self.dispi_enabled = False  # ENABLE's bit 0, latched with the mode it set
        self.bank_offset = 0
        self.vbe_line = 0
        self.vbe_start = 0
        self.qext_byteswap = QEXT_LITTLE_ENDIAN

    def _reset_display(self):
        self.geom = None  # what the surface was last sized and drawn for
        self.text_shadow = None
        self.font_copy = None
        self.glyphs = {}
        self.row_cache = {}
        self.cursor_drawn = -1
        self.colour_cache = None
        self.palette_dirty = True
        self.planar_cache = None  # (the colours, dup, {8 pixels' indices: their pixels})
        self.cga_noted = False

    def _load_rom_font(self):
        """What the VGA BIOS does at a text mode set: the 8x16 font into plane 2,
        32-byte slots (a guest without a BIOS, e.g. the scripted one, needs it)."""
        font = load_font()
        view = self.vram.view
        if font is None:
            log.info("vga", "no font (build/out/vgafont.bin: run scons vgafont): text "
                     "is blank until the guest loads one")
            return
        if view is None or self.vram_size < 256 * 32 * 4:
            return
        for ch in range(256):
            base = ch * 32 * 4 + 2
            g = ch * FONT_HEIGHT
            for row in range(FONT_HEIGHT):
                view[base + row * 4] = font[g + row]
        self.mark(0, 256 * 32 * 4)

    def reset(self):
        super().reset()
        self._reset_registers()
        self._reset_display()

    def guest_error(self, msg):
        log.guest_error(self.name, msg)

    # --- dirty marking -----------------------------------------------------------

    def mark(self, offset, size):
        first = offset // PAGE
        last = (offset + size - 1) // PAGE
        if last >= self.pages:
            last = self.pages - 1
        m = self.marked
        for p in range(first, last + 1):
            m[p] = 1
        self.any_marked = True

    # --- the VGA ports ---------------------------------------------------------------

    def _port_invalid(self, port):
        if self.msr & MSR_COLOR:
            return 0x3B0 <= port <= 0x3BF
        return 0x3D0 <= port <= 0x3DF

    def port_read(self, port):
        if self._port_invalid(port):
            return 0xFF
        if port == 0x3C0:
            return self.ar_index if self.ar_flip_flop == 0 else 0
        if port == 0x3C1:
            i = self.ar_index & 0x1F
            return self.ar[i] if i < AR_COUNT else 0
        if port == 0x3C2:
            return 0  # input status 0: no switch sense, no interrupt
        if port == 0x3C4:
            return self.sr_index
        if port == 0x3C5:
            return self.sr[self.sr_index]
        if port == 0x3C7:
            return self.dac_state
        if port == 0x3C8:
            return self.dac_write_index
        if port == 0x3C9:
            v = self.palette[self.dac_read_index * 3 + self.dac_sub_index]
            self.dac_sub_index += 1
            if self.dac_sub_index == 3:
                self.dac_sub_index = 0
                self.dac_read_index = (self.dac_read_index + 1) & 0xFF
            return v
        if port == 0x3CA:
            return self.fcr
        if port == 0x3CC:
            return self.msr
        if port == 0x3CE:
            return self.gr_index
        if port == 0x3CF:
            return self.gr[self.gr_index]
        if port in (0x3B4, 0x3D4):
            return self.cr_index
        if port in (0x3B5, 0x3D5):
            return self.cr[self.cr_index]
        if port in (0x3BA, 0x3DA):
            # Input status 1; reading it also resets the attribute flip-flop.
            self.ar_flip_flop = 0
            self.st01 ^= ST01_RETRACE
            return self.st01
        if 0x3C0 <= port <= 0x3CF:
            return 0  # the PEL mask and the unused ports there read 0 (QEMU's)
        return 0xFF  # not decoded (QEMU claims none of these)

    def port_write(self, port, v):
        if self._port_invalid(port):
            return
        if port == 0x3C0:
            if self.ar_flip_flop == 0:
                self.ar_index = v & 0x3F
            else:
                i = self.ar_index & 0x1F
                if i < 0x10:
                    self.ar[i] = v & 0x3F
                elif i == 0x10:
                    self.ar[i] = v & ~0x10 & 0xFF
                elif i == 0x11:
                    self.ar[i] = v
                elif i == 0x12:
                    self.ar[i] = v & 0x3F
                elif i == 0x13:
                    self.ar[i] = v & 0x0F
                elif i == 0x14:
                    self.ar[i] = v & 0x0F
                else:
                    self.guest_error("attribute register %#x does not exist" % i)
                self.palette_dirty = True
            self.ar_flip_flop ^= 1
        elif port == 0x3C2:
            self.msr = v & ~0x10 & 0xFF
        elif port == 0x3C4:
            self.sr_index = v & 7
        elif port == 0x3C5:
            self.sr[self.sr_index] = v & SR_MASK[self.sr_index]
        elif port == 0x3C7:
            self.dac_read_index = v
            self.dac_sub_index = 0
            self.dac_state = 3
        elif port == 0x3C8:
            self.dac_write_index = v
            self.dac_sub_index = 0
            self.dac_state = 0
        elif port == 0x3C9:
            self.dac_cache[self.dac_sub_index] = v
            self.dac_sub_index += 1
            if self.dac_sub_index == 3:
                o = self.dac_write_index * 3
                self.palette[o:o + 3] = self.dac_cache
                self.dac_sub_index = 0
                self.dac_write_index = (self.dac_write_index + 1) & 0xFF
                self.palette_dirty = True
        elif port == 0x3CE:
            self.gr_index = v & 0x0F
        elif port == 0x3CF:
            self.gr[self.gr_index] = v & GR_MASK[self.gr_index]
        elif port in (0x3B4, 0x3D4):
            self.cr_index = v
        elif port in (0x3B5, 0x3D5):
            i = self.cr_index
            if self.cr[0x11] & CR11_PROTECT and i <= 7:
                if i == 7:  # only the line compare bit 8 stays writable
                    self.cr[7] = (self.cr[7] & ~0x10) | (v & 0x10)
                return
            self.cr[i] = v
        elif port in (0x3BA, 0x3DA):
            self.fcr = v & 0x10

    # --- VBE DISPI -----------------------------------------------------------------

    def dispi_select_read(self, index):
        """BAR2's DISPI registers: an access selects the register, as QEMU's."""
        self.dispi_index = index
        return self.dispi_read(index)

    def dispi_select_write(self, index, value):
        self.dispi_index = index
        self.dispi_write(index, value)

    def dispi_read(self, index):
        if index >= DISPI_NUM:
            return 0
        if index == DISPI_VIDEO_MEMORY_64K:
            return (self.vram_size >> 16) & 0xFFFF
        if self.dispi[DISPI_ENABLE] & DISPI_GETCAPS:
            if index == DISPI_XRES:
                return DISPI_MAX_XRES
            if index == DISPI_YRES:
                return DISPI_MAX_YRES
            if index == DISPI_BPP:
                return DISPI_MAX_BPP
        return self.dispi[index]

    def dispi_write(self, index, value):
        if index >= DISPI_NUM:
            self.guest_error("DISPI register %#x does not exist" % index)
            return
        d = self.dispi
        if index == DISPI_ID:
            if DISPI_ID0 <= value <= DISPI_ID5:
                d[DISPI_ID] = value
            else:
                self.guest_error("DISPI ID %#x is no interface version" % value)
        elif index in (DISPI_XRES, DISPI_YRES, DISPI_BPP, DISPI_VIRT_WIDTH, DISPI_X_OFFSET,
                       DISPI_Y_OFFSET):
            d[index] = value
            self._dispi_fixup()
        elif index == DISPI_BANK:
            mask = (self.vram_size >> 16) - 1
            if d[DISPI_BPP] == 4:
                mask >>= 2  # planar: each bank is 64 KiB of each of four planes
            if value & ~mask:
                self.guest_error("DISPI bank %d past video RAM (%d banks)" % (value, mask + 1))
            d[DISPI_BANK] = value & mask
            self.bank_offset = (value & mask) << 16
        elif index == DISPI_ENABLE:
            self._dispi_enable(value)
        elif index == DISPI_VIDEO_MEMORY_64K or index == DISPI_VIRT_HEIGHT:
            pass  # read-only (VIRT_HEIGHT follows from the others)

    def _bits(self):
        bpp = self.dispi[DISPI_BPP]
        return 16 if bpp == 15 else bpp

    def _dispi_fixup(self):
        """Bring the mode registers inside what the hardware and video RAM can show,
        as the Bochs interface has no way to refuse (QEMU's vbe_fixup_regs): every
        frame a guest can ask for lies in VRAM. Only while enabled."""
        d = self.dispi
        if not d[DISPI_ENABLE] & DISPI_ENABLED:
            return
        if d[DISPI_BPP] not in DISPI_BPPS:
            self.guest_error("DISPI depth %d: not 4/8/15/16/24/32, 8 used" % d[DISPI_BPP])
            d[DISPI_BPP] = 8
        bits = self._bits()
        x = d[DISPI_XRES] & ~7
        if x == 0:
            x = 8
        x = min(x, DISPI_MAX_XRES)
        d[DISPI_XRES] = x
        vw = min(d[DISPI_VIRT_WIDTH] & ~7, DISPI_MAX_XRES)
        if vw < x:
            vw = x
        d[DISPI_VIRT_WIDTH] = vw
        line = vw * bits // 8
        max_y = self.vram_size // line
        y = d[DISPI_YRES]
        if y == 0:
            y = 1
        y = min(y, DISPI_MAX_YRES)
        if y > max_y:
            self.guest_error("DISPI mode %dx%d at %d bpp is larger than video RAM"
                             % (x, y, d[DISPI_BPP]))
            y = max_y
        d[DISPI_YRES] = y
        d[DISPI_X_OFFSET] = min(d[DISPI_X_OFFSET], DISPI_MAX_XRES)
        d[DISPI_Y_OFFSET] = min(d[DISPI_Y_OFFSET], DISPI_MAX_YRES)
        if self._dispi_start() + y * line > self.vram_size:
            d[DISPI_Y_OFFSET] = 0
            if self._dispi_start() + y * line > self.vram_size:
                d[DISPI_X_OFFSET] = 0
        d[DISPI_VIRT_HEIGHT] = max_y & 0xFFFF
        self._dispi_layout()

    def _dispi_start(self):
        d = self.dispi
        bits = self._bits()
        line = d[DISPI_VIRT_WIDTH] * bits // 8
        return d[DISPI_X_OFFSET] * bits // 8 + d[DISPI_Y_OFFSET] * line

    def _dispi_layout(self):
        d = self.dispi
        self.vbe_line = d[DISPI_VIRT_WIDTH] * self._bits() // 8
        self.vbe_start = self._dispi_start() & ~3  # a dword address, as the CRTC's

    def _dispi_enable(self, value):
        d = self.dispi
        was = self.dispi_enabled
        if value & DISPI_ENABLED and not was:
            d[DISPI_VIRT_WIDTH] = 0
            d[DISPI_X_OFFSET] = 0
            d[DISPI_Y_OFFSET] = 0
            d[DISPI_ENABLE] |= DISPI_ENABLED
            self._dispi_fixup()
            if not value & DISPI_NOCLEARMEM:
                n = d[DISPI_YRES] * self.vbe_line
                view = self.vram.view
                if view is not None and n > 0:
                    zero = bytes(min(n, 65536))
                    pos = 0
                    while pos < n:
                        k = min(len(zero), n - pos)
                        view[pos:pos + k] = zero[:k]
                        pos += k
                    self.mark(0, n)
            # What a VBE mode set leaves in the VGA registers (QEMU's): graphics
            # at 0xa0000 64 KiB, chain-4 for the packed depths.
            self.gr[6] = (self.gr[6] & ~0x0C) | 0x05
            self.cr[0x17] |= 3
            self.cr[0x13] = (self.vbe_line >> 3) & 0xFF
            self.cr[0x01] = ((d[DISPI_XRES] >> 3) - 1) & 0xFF
            h = d[DISPI_YRES] - 1
            self.cr[0x12] = h & 0xFF
            self.cr[0x07] = (self.cr[0x07] & ~0x42) | ((h >> 7) & 0x02) | ((h >> 3) & 0x40)
            self.cr[0x18] = 0xFF
            self.cr[0x07] |= 0x10
            self.cr[0x09] |= 0x40
            if d[DISPI_BPP] == 4:
                self.sr[1] &= ~SR01_DOTCLOCK_DIV2
                self.gr[5] &= ~0x60
            else:
                self.gr[5] = (self.gr[5] & ~0x60) | 0x40
            self.cr[0x09] &= ~0x9F  # no double scan
            self.dispi_enabled = True
        elif not value & DISPI_ENABLED:
            self.bank_offset = 0
            self.dispi_enabled = False
        self.dac_8bit = bool(value & DISPI_8BIT_DAC)
        self.palette_dirty = True
        d[DISPI_ENABLE] = value

    # --- the memory window ----------------------------------------------------------

    def _window_addr(self, offset):
        """Offset into the plane address space for a window offset, or -1 when the
        memory map (GR6 bits 2-3) leaves that part of the window undecoded."""
        mm = (self.gr[6] >> 2) & 3
        if mm == 0:
            return offset
        if mm == 1:
            if offset >= 0x10000:
                return -1
            return offset + self.bank_offset
        if mm == 2:
            offset -= 0x10000
            if offset < 0 or offset >= 0x8000:
                return -1
            return offset
        offset -= 0x18000
        if offset < 0 or offset >= 0x8000:
            return -1
        return offset

    def _vbe_linear(self):
        # QEMU 11.1 leaves the sequencer alone at a VBE mode set and maps the bank
        # linearly for the packed depths (checked against qemu-xen).
        return self.dispi_enabled and self.dispi[DISPI_BPP] != 4

    def mem_readb(self, offset):
        addr = self._window_addr(offset)
        view = self.vram.view
        if addr < 0 or view is None:
            return 0xFF
        size = self.vram_size
        if self.sr[4] & SR04_CHAIN4 or self._vbe_linear():
            return view[addr] if addr < size else 0xFF
        if not self.gr[5] & GR05_ODD_EVEN:
            # Planar: load the latches from all four planes.
            o = addr * 4
            if o + 4 > size:
                return 0xFF
            latch = view[o] | view[o + 1] << 8 | view[o + 2] << 16 | view[o + 3] << 24
            self.latch = latch
            if not self.gr[5] & 0x08:
                return (latch >> (8 * (self.gr[4] & 3))) & 0xFF
            # Read mode 1: colour compare.
            r = (latch ^ _MASK32[self.gr[2] & 0x0F]) & _MASK32[self.gr[7] & 0x0F]
            r |= r >> 16
            r |= r >> 8
            return ~r & 0xFF
        # Odd/even: even addresses plane 0 or 2, odd ones plane 1 or 3.
        plane = (self.gr[4] & 2) | (addr & 1)
        o = ((addr & ~1) << 1) | plane
        return view[o] if o < size else 0xFF

    def mem_writeb(self, offset, val):
        addr = self._window_addr(offset)
        view = self.vram.view
        if addr < 0 or view is None:
            return
        size = self.vram_size
        if self._vbe_linear():
            if addr < size:  # a VBE packed mode's bank: bytes as they are
                view[addr] = val
                self.mark(addr, 1)
                self.plane2_written = True
            return
        if self.sr[4] & SR04_CHAIN4:
            if addr < size and self.sr[2] & (1 << (addr & 3)):
                view[addr] = val
                self.mark(addr, 1)
                self.plane2_written = True  # chain-4 bytes are every plane's
            return
        if not self.gr[5] & GR05_ODD_EVEN:
            self._planar_write(addr, val, view, size)
            return
        # Odd/even: the address bit picks plane 0/1 (2/3 with GR4 bit 1, as
        # QEMU's), written if the map mask has it.
        plane = (self.gr[4] & 2) | (addr & 1)
        if self.sr[2] & (1 << plane):
            o = ((addr & ~1) << 1) | plane
            if o < size:
                view[o] = val
                self.mark(o, 1)
                if plane & 2:
                    self.plane2_written = True

    def _planar_write(self, addr, val, view, size):
        o = addr * 4
        if o + 4 > size:
            return
        gr = self.gr
        mode = gr[5] & 3
        latch = self.latch
        if mode == 1:
            v = latch
        else:
            if mode == 0 or mode == 3:
                rot = gr[3] & 7
                val = ((val >> rot) | (val << (8 - rot))) & 0xFF
            if mode == 0:
                v = val * 0x01010101
                sr_en = _MASK32[gr[1] & 0x0F]
                v = (v & ~sr_en) | (_MASK32[gr[0] & 0x0F] & sr_en)
                bit_mask = gr[8]
            elif mode == 2:
                v = _MASK32[val & 0x0F]
                bit_mask = gr[8]
            else:
                bit_mask = gr[8] & val
                v = _MASK32[gr[0] & 0x0F]
            func = (gr[3] >> 3) & 3
            if func == 1:
                v &= latch
            elif func == 2:
                v |= latch
            elif func == 3:
                v ^= latch
            bit_mask *= 0x01010101
            v = (v & bit_mask) | (latch & ~bit_mask)
        wmask = self.sr[2] & 0x0F
        if wmask & 4:
            self.plane2_written = True
        for p in range(4):
            if wmask & (1 << p):
                view[o + p] = (v >> (8 * p)) & 0xFF
        self.mark(o, 4)

    # --- BAR0 placement (called by the machine) -----------------------------------

    def vram_moved(self, gpa):
        """The guest placed BAR0 at gpa (None: it stopped decoding). False when the
        video RAM could not go there (over RAM): the BAR then shows nothing."""
        ok = self.vram.move(gpa)
        if not ok:
            self.guest_error("video RAM BAR moved to %#x: refused (not free guest address "
                             "space)" % gpa)
            self.vram.move(None)  # out of the guest's sight until the BAR moves again
        return ok

    # --- rendering --------------------------------------------------------------------

    def set_surface(self, surface):
        self.surface = surface
        self.geom = None

    def _colour(self, index):
        """B, G, R, X bytes of DAC entry index."""
        p = self.palette
        o = index * 3
        if self.dac_8bit:
            r, g, b = p[o], p[o + 1], p[o + 2]
        else:
            r, g, b = p[o] & 0x3F, p[o + 1] & 0x3F, p[o + 2] & 0x3F
            r = (r << 2) | (r >> 4)
            g = (g << 2) | (g >> 4)
            b = (b << 2) | (b >> 4)
        return bytes((b, g, r, 0))

    def _attr_colours(self):
        """The 16 text colours through the attribute palette and the DAC."""
        if self.colour_cache is not None:
            return self.colour_cache
        ar = self.ar
        out = []
        for i in range(16):
            v = ar[i] & 0x3F
            if ar[0x10] & AR10_P54:
                v = ((ar[0x14] & 0x0F) << 4) | (v & 0x0F)
            else:
                v = ((ar[0x14] & 0x0C) << 4) | v
            out.append(self._colour(v))
        self.colour_cache = out
        self.glyphs = {}
        self.row_cache = {}
        return out

    def _mode(self):
        """(kind, width, height, extra) for what the registers show now."""
        if not self.ar_index & AR_PAS or self.sr[1] & SR01_SCREEN_OFF:
            return (KIND_OFF, 0, 0, None)
        if self.dispi_enabled:
            d = self.dispi
            return (KIND_VBE, d[DISPI_XRES], d[DISPI_YRES], d[DISPI_BPP])
        if self.gr[6] & GR06_GRAPHICS:
            return (KIND_GFX, 0, 0, None)
        cr = self.cr
        cols = cr[1] + 1
        cheight = (cr[9] & 0x1F) + 1
        vde = cr[0x12] | ((cr[7] & 0x02) << 7) | ((cr[7] & 0x40) << 3)
        rows = (vde + 1) // cheight
        cw = 8 if self.sr[1] & SR01_CHAR8 else 9
        if self.sr[1] & SR01_DOTCLOCK_DIV2:
            cw = 16  # doubled 8-dot cells (QEMU draws no 18-dot ones)
        return (KIND_TEXT, cols, rows, (cw, cheight))

    def refresh(self):
        """Redraw what changed since the last call into the surface (the main loop
        calls this every REFRESH_MS). Returns the number of rectangles updated."""
        s = self.surface
        if s is None:
            return 0
        t0 = ticks_us()
        kind, w, h, extra = self._mode()
        if kind == KIND_TEXT:
            n = self._refresh_text(s, w, h, extra[0], extra[1])
        elif kind == KIND_VBE:
            n = self._refresh_vbe(s, w, h, extra)
        elif kind == KIND_GFX and not self.sr[4] & SR04_CHAIN4 and not self.gr[5] & 0x60:
            n = self._refresh_planar(s)
        else:
            n = self._refresh_blank(s, kind)
        self.frames += 1
        self.last_us = ticks_diff(ticks_us(), t0)
        self.busy_us += self.last_us
        if n:
            self.drawn += 1
            self.drawn_us += self.last_us
        return n

    @staticmethod
    def _bit(bitmap, i):
        return i // 8 < len(bitmap) and bitmap[i // 8] & (1 << (i % 8))

    def _take_dirty(self, first, count):
        """A bytearray of count flags: the pages [first, first + count) of video RAM
        written by the guest (Xen's tracking) or by the device since last time."""
        if count <= 0:
            return bytearray(0)
        return self._merge_dirty(self.vram.dirty(first, count), first, count)

    def _merge_dirty(self, bitmap, first, count):
        end = min(first + count, self.pages)
        if self.any_marked and end - first == count:
            flags = bytearray(self.marked[first:end])  # one copy, not a loop
        else:
            flags = bytearray(count)
            if self.any_marked:
                m = self.marked
                for p in range(first, end):
                    if m[p]:
                        flags[p - first] = 1
        if bitmap is None:
            for i in range(count):
                flags[i] = 1
        else:
            for i in range(min(len(bitmap), (count + 7) // 8)):
                b = bitmap[i]
                if b:
                    for k in range(8):
                        if b & (1 << k) and i * 8 + k < count:
                            flags[i * 8 + k] = 1
        return flags

    def _clear_marks(self):
        if self.any_marked:
            self.marked[:] = self._no_pages
            self.any_marked = False

    def _resize(self, s, geom, w, h):
        if self.geom == geom:
            return True
        if not s.resize(w, h):
            if self.geom != ("too big",) + geom:
                self.guest_error("mode %dx%d does not fit the display (%d bytes)"
                                 % (w, h, s.max_bytes))
            self.geom = ("too big",) + geom
            return False
        self.geom = geom
        self.text_shadow = None
        self.glyphs = {}
        self.row_cache = {}
        self.cursor_drawn = -1
        return True

    def _refresh_blank(self, s, kind):
        if kind == KIND_GFX and self.geom != ("gfx",):
            log.unimp("vga", "VGA graphics modes other than planar 16 colours (chain-4, "
                      "CGA shift modes) are not drawn")
        geom = ("blank",) if kind == KIND_OFF else ("gfx",)
        if self.geom == geom:
            self._clear_marks()
            return 0
        w, h = (s.width, s.height) if s.width > 0 else (640, 480)
        if not self._resize(s, geom, w, h):
            return 0
        zero = bytes(s.stride)
        buf = s.buf
        for y in range(h):
            buf[y * s.stride:(y + 1) * s.stride] = zero
        s.update(0, 0, w, h)
        self._clear_marks()
        return 1

    # Planar 16 colours (mode 0x12 and its kin) ------------------------------------

    def _refresh_planar(self, s):
        """The four planes, a bit of each per pixel, through the attribute palette
        (plane enable AR12) and the DAC, as QEMU's vga_draw_line4: geometry from
        the CRTC (display end, offset, maximum scan line with double scan, line
        compare), SR1's half dot clock doubling each pixel."""
        global _SPREAD
        cr, sr = self.cr, self.sr
        cols = cr[1] + 1  # 8-pixel groups a line (at most 256: 1 KiB of VRAM)
        h = (cr[0x12] | ((cr[7] & 0x02) << 7) | ((cr[7] & 0x40) << 3)) + 1
        dup = 2 if sr[1] & SR01_DOTCLOCK_DIV2 else 1
        w = cols * 8 * dup
        scans = ((cr[9] & 0x1F) + 1) << (cr[9] >> 7)  # display lines per source row
        compare = cr[0x18] | ((cr[7] & 0x10) << 4) | ((cr[9] & 0x40) << 3)
        view = self.vram.view
        if view is None or self.vram_size < PLANAR_SPAN:
            return 0
        geom = ("planar", w, h, scans)
        full = self.geom != geom
        if not self._resize(s, geom, w, h):
            self._clear_marks()
            return 0
        if (cr[0x17] & 3) != 3 and not self.cga_noted:
            self.cga_noted = True
            log.unimp("vga", "CRTC CGA/Hercules address wrap (CR17 bits 0-1) is not applied")
        if self.palette_dirty:
            self.palette_dirty = False
            self.colour_cache = None
            full = True
        colours = self._attr_colours()
        cache = self.planar_cache
        if cache is None or cache[0] is not colours or cache[1] != dup:
            # Patterns drawn in other colours, or at the other dot clock (their
            # width is 8 * dup pixels, found by the fuzzer): gone.
            cache = (colours, dup, {})
            self.planar_cache = cache
        cache = cache[2]
        if _SPREAD is None:
            _SPREAD = _spread_table()
        spread = _SPREAD
        plane_mask = (self.ar[0x12] & 0x0F) * 0x11111111
        dirty = self._take_dirty(0, PLANAR_SPAN // PAGE)
        self._clear_marks()
        if not full and dirty == bytes(len(dirty)):
            return 0
        amask = PLANAR_SPAN - 1  # addresses wrap at 64 K (four bytes each)
        start = ((cr[0x0C] << 8) | cr[0x0D]) * 4
        line = cr[0x13] * 8  # word mode: two addresses a unit
        stride = s.stride
        buf = s.buf
        n = w * BYTES_PER_PIXEL
        rects = 0
        run0 = -1
        addr = start
        for y in range(h + 1):
            draw = False
            if y < h:
                if y == compare:
                    addr = 0  # the split screen: from address 0 on
                src = addr & amask
                if (y + 1) % scans == 0:
                    addr += line
                # A line spans at most two pages (the second may be page 0: a wrap).
                draw = full or dirty[src // PAGE] or \
                    dirty[((src + cols * 4 - 1) & amask) // PAGE]
            if draw:
                if run0 < 0:
                    run0 = y
                parts = []
                for i in range(cols):
                    o = (src + 4 * i) & amask
                    v = (spread[view[o]] | (spread[view[o + 1]] << 1) |
                         (spread[view[o + 2]] << 2) | (spread[view[o + 3]] << 3)) & plane_mask
                    px = cache.get(v)
                    if px is None:
                        if len(cache) >= PLANAR_CACHE_MAX:
                            cache.clear()
                        px = b"".join([colours[(v >> (28 - 4 * k)) & 15] * dup
                                       for k in range(8)])
                        cache[v] = px
                    parts.append(px)
                o = y * stride
                buf[o:o + n] = b"".join(parts)
            elif run0 >= 0:
                s.update(0, run0, w, y - run0)
                rects += 1
                run0 = -1
        return rects

    # Text --------------------------------------------------------------------------

    def _refresh_text(self, s, cols, rows, cw, ch):
        if cols > TEXT_MAX_COLS or rows > TEXT_MAX_ROWS or rows < 1:
            if self.geom != ("text too big", cols, rows):
                self.guest_error("text mode %dx%d: more than %dx%d is not drawn"
                                 % (cols, rows, TEXT_MAX_COLS, TEXT_MAX_ROWS))
                self.geom = ("text too big", cols, rows)
            self._clear_marks()
            return 0
        view = self.vram.view
        if view is None:
            return 0
        geom = ("text", cols, rows, cw, ch)
        full = self.geom != geom
        if not self._resize(s, geom, cols * cw, rows * ch):
            self._clear_marks()
            return 0
        cr = self.cr
        if self.palette_dirty:
            self.palette_dirty = False
            self.colour_cache = None
            full = True
        colours = self._attr_colours()
        start = (cr[0x0C] << 8) | cr[0x0D]
        line = cr[0x13] * 2
        if line == 0:
            line = cols
        # The fonts in plane 2: attribute bit 3 clear picks map B (SR3 bits 4, 1,
        # 0), set picks map A (bits 5, 3, 2); 8 KiB slots.
        sr3 = self.sr[3]
        font_0 = ((sr3 >> 4) & 1) | ((sr3 << 1) & 6)
        font_1 = ((sr3 >> 5) & 1) | ((sr3 >> 1) & 6)
        n_pages = min(self.pages, (0x10000 * 4) // PAGE)
        guest = self.vram.dirty(0, n_pages)
        text_pages = self._merge_dirty(guest, 0, n_pages)
        # Plane 2 shares its pages with the characters: the font is read again
        # only when something wrote plane 2 (the device knows its own writes;
        # the guest's own, through BAR0, show as dirty pages of the font).
        fonts = (font_0, font_1)
        check_font = self.plane2_written or self.font_copy is None or \
            self.font_copy[0] != fonts
        if not check_font and guest != b"":
            for f in fonts:
                first = (f * 8192 * 4) // PAGE
                for p in range(first, min(first + 8, n_pages)):
                    if guest is None or self._bit(guest, p):
                        check_font = True
        self.plane2_written = False
        self._clear_marks()
        if check_font:
            new_copy = (fonts, self._read_font(view, font_0), self._read_font(view, font_1))
            if self.font_copy is None or self.font_copy != new_copy:
                self.font_copy = new_copy
                self.glyphs = {}
                self.row_cache = {}
                full = True
        font_0_rows, font_1_rows = self.font_copy[1], self.font_copy[2]
        cursor = -1
        if not cr[0x0A] & CR0A_CURSOR_OFF:
            c = ((cr[0x0E] << 8) | cr[0x0F]) - start
            if 0 <= c:
                r, col = c // line, c % line
                if r < rows and col < cols:
                    cursor = r * cols + col
        shadow = self.text_shadow
        if shadow is None or len(shadow) != cols * rows * 2:
            shadow = bytearray(cols * rows * 2)
            self.text_shadow = shadow
            full = True
        stride = s.stride
        buf = s.buf
        row_bytes = cw * BYTES_PER_PIXEL
        blink_mask = 0x7F if self.ar[0x10] & AR10_BLINK else 0xFF
        nine = cw == 9
        line_gfx = self.ar[0x10] & AR10_LINE_GRAPHICS
        glyphs = self.glyphs
        rects = 0
        old_cursor = self.cursor_drawn
        for r in range(rows):
            if not full:
                a0 = ((start + r * line) & 0xFFFF) * 4
                a1 = ((start + r * line + cols - 1) & 0xFFFF) * 4
                if not (text_pages[a0 // PAGE] or text_pages[a1 // PAGE]) and \
                        old_cursor // cols != r and cursor // cols != r:
                    continue
            # Which cells changed; then the span from the first to the last one is
            # drawn a scan line at a time (one slice per line, not per cell).
            x0 = -1
            x1 = -1
            cells = []
            base_i = r * cols
            for c in range(cols):
                o = ((start + r * line + c) & 0xFFFF) * 4
                chv = view[o]
                at = view[o + 1] & blink_mask
                cells.append(chv | (at << 8))
                i = (base_i + c) * 2
                cell = base_i + c
                if not full and shadow[i] == chv and shadow[i + 1] == at and \
                        cell != cursor and cell != old_cursor:
                    continue
                shadow[i] = chv
                shadow[i + 1] = at
                if x0 < 0:
                    x0 = c
                x1 = c
            if x0 < 0:
                continue
            span = []
            for c in range(x0, x1 + 1):
                key = cells[c]
                g = glyphs.get(key)
                if g is None:
                    at = key >> 8
                    rows_src = font_1_rows if at & 0x08 else font_0_rows
                    g = self._glyph(key & 0xFF, at, rows_src, ch, cw, colours, nine, line_gfx)
                    if len(glyphs) >= GLYPH_CACHE_MAX:
                        glyphs.clear()
                    glyphs[key] = g
                span.append(g)
            base = r * ch * stride + x0 * row_bytes
            n = (x1 - x0 + 1) * row_bytes
            for y in range(ch):
                o = base + y * stride
                buf[o:o + n] = b"".join([g[y] for g in span])
            if cursor >= 0 and cursor // cols == r and x0 <= cursor % cols <= x1:
                c = cursor % cols
                self._draw_cursor(buf, r * ch * stride + c * row_bytes, stride, row_bytes, ch,
                                  colours[(cells[c] >> 8) & 0x0F])
            s.update(x0 * cw, r * ch, (x1 - x0 + 1) * cw, ch)
            rects += 1
        self.cursor_drawn = cursor
        return rects

    def _read_font(self, view, font):
        """256 glyphs x 32 rows from plane 2 at character map `font` (8 KiB slots)."""
        base = font * 8192 * 4 + 2
        out = bytearray(8192)
        if base + 8192 * 4 > self.vram_size:
            return out
        for i in range(8192):
            out[i] = view[base + i * 4]
        return out

    def _glyph(self, chv, at, font, ch, cw, colours, nine, line_gfx):
        """A cell's pixels, ch rows of cw * 4 bytes; its rows come from a cache of
        font-row patterns per attribute (many characters share rows)."""
        fg = colours[at & 0x0F]
        bg = colours[at >> 4]
        rows = self.row_cache.get(at)
        if rows is None:
            if len(self.row_cache) >= 64:
                self.row_cache = {}
            rows = {}
            self.row_cache[at] = rows
        dup = cw >= 16
        ninth = nine and line_gfx and 0xC0 <= chv <= 0xDF
        parts = []
        for y in range(ch):
            bits = font[chv * 32 + y] if y < 32 else 0
            key = bits | 0x100 if ninth and bits & 1 else bits
            row = rows.get(key)
            if row is None:
                px = []
                for k in range(8):
                    p = fg if bits & (0x80 >> k) else bg
                    px.append(p)
                    if dup:
                        px.append(p)
                if nine:
                    p = fg if key & 0x100 else bg
                    px.append(p)
                    if dup:
                        px.append(p)
                row = b"".join(px)
                rows[key] = row
            parts.append(row)
        return parts  # one bytes object a scan line

    def _draw_cursor(self, buf, base, stride, row_bytes, ch, colour):
        cr = self.cr
        first = cr[0x0A] & 0x1F
        last = cr[0x0B] & 0x1F
        if last >= ch:
            last = ch - 1
        if first > last:
            return
        px = colour * (row_bytes // BYTES_PER_PIXEL)
        for y in range(first, last + 1):
            buf[base + y * stride:base + y * stride + row_bytes] = px

    # VBE linear modes --------------------------------------------------------------

    def _refresh_vbe(self, s, w, h, bpp):
        view = self.vram.view
        if view is None:
            return 0
        geom = ("vbe", w, h, bpp)
        full = self.geom != geom
        if not self._resize(s, geom, w, h):
            self._clear_marks()
            return 0
        if bpp == 4:
            if self.geom != ("vbe4",):
                log.unimp("vga", "VBE 4 bpp (planar) modes are not drawn")
            self.geom = ("vbe4",)
            self._clear_marks()
            return 0
        if self.palette_dirty:
            self.palette_dirty = False
            if bpp <= 8:
                full = True
        line = self.vbe_line
        start = self.vbe_start
        row_bytes = (w * self._bits() + 7) // 8
        if line <= 0 or start + (h - 1) * line + row_bytes > self.vram_size:
            # An X offset past the virtual width (the fixup allows it) would run
            # the last row off the end of VRAM: never read there.
            if self.geom != ("vbe off vram",) + geom:
                self.guest_error("VBE frame at %#x runs past video RAM: not drawn" % start)
            self.geom = ("vbe off vram",) + geom
            self._clear_marks()
            return 0
        first = start // PAGE
        last = (start + h * line - 1) // PAGE
        dirty = self._take_dirty(first, last - first + 1)
        self._clear_marks()
        if not full and dirty == bytes(len(dirty)):
            return 0  # nothing written: the common case, one compare
        stride = s.stride
        buf = s.buf
        rects = 0
        y = 0
        pal = None
        if bpp == 8:
            pal = [self._colour(i) for i in range(256)]
        while y < h:
            if not full and not _row_dirty(dirty, start + y * line, line, first):
                y += 1
                continue
            # A run of changed rows: one draw and one update for all of them.
            y0 = y
            y += 1
            while y < h and (full or _row_dirty(dirty, start + y * line, line, first)):
                y += 1
            self._draw_rows(view, buf, stride, start, line, w, y0, y, bpp, pal)
            s.update(0, y0, w, y - y0)
            rects += 1
        return rects

    def _draw_rows(self, view, buf, stride, start, line, w, y0, y1, bpp, pal):
        if bpp == 32:
            n = w * 4
            if line == n and stride == n:
                buf[y0 * n:y1 * n] = view[start + y0 * n:start + y1 * n]
                return
            for y in range(y0, y1):
                a = start + y * line
                buf[y * stride:y * stride + n] = view[a:a + n]
            return
        if _STEP:
            self._draw_rows_step(view, buf, stride, start, line, w, y0, y1, bpp, pal)
            return
        for y in range(y0, y1):
            a = start + y * line
            o = y * stride
            if bpp == 24:
                row = bytearray(w * 4)
                try:
                    row[0::4] = view[a:a + 3 * w:3]  # CPython: step slices
                    row[1::4] = view[a + 1:a + 3 * w:3]
                    row[2::4] = view[a + 2:a + 3 * w:3]
                except (TypeError, NotImplementedError, ValueError):
                    for x in range(w):
                        row[4 * x] = view[a + 3 * x]
                        row[4 * x + 1] = view[a + 3 * x + 1]
                        row[4 * x + 2] = view[a + 3 * x + 2]
                buf[o:o + w * 4] = row
            elif bpp == 16 or bpp == 15:
                row = bytearray(w * 4)
                for x in range(w):
                    v = view[a + 2 * x] | (view[a + 2 * x + 1] << 8)
                    if bpp == 16:
                        r, g, b = v >> 11, (v >> 5) & 0x3F, v & 0x1F
                        row[4 * x + 1] = (g << 2) | (g >> 4)
                    else:
                        r, g, b = (v >> 10) & 0x1F, (v >> 5) & 0x1F, v & 0x1F
                        row[4 * x + 1] = (g << 3) | (g >> 2)
                    row[4 * x] = (b << 3) | (b >> 2)
                    row[4 * x + 2] = (r << 3) | (r >> 2)
                buf[o:o + w * 4] = row
            else:
                buf[o:o + w * 4] = b"".join([pal[view[a + x]] for x in range(w)])

    def _draw_rows_step(self, view, buf, stride, start, line, w, y0, y1, bpp, pal):
        """8/15/16/24 bpp rows converted whole (CPython)."""
        if bpp == 8:
            tb = bytes(p[0] for p in pal)
            tg = bytes(p[1] for p in pal)
            tr = bytes(p[2] for p in pal)
        bpb = 3 if bpp == 24 else 1 if bpp == 8 else 2  # VRAM bytes a pixel

        def conv(a, n):
            out = bytearray(n * 4)
            if bpp == 24:
                src = bytes(view[a:a + 3 * n])
                out[0::4] = src[0::3]
                out[1::4] = src[1::3]
                out[2::4] = src[2::3]
            elif bpp == 8:
                src = bytes(view[a:a + n])
                out[0::4] = src.translate(tb)
                out[1::4] = src.translate(tg)
                out[2::4] = src.translate(tr)
            else:
                src = bytes(view[a:a + 2 * n])
                lo = src[0::2]
                hi = src[1::2]
                out[0::4] = lo.translate(_T16_B)
                if bpp == 16:
                    out[1::4] = _or_bytes(lo.translate(_T16_GL), hi.translate(_T16_GH))
                    out[2::4] = hi.translate(_T16_R)
                else:
                    out[1::4] = _or_bytes(lo.translate(_T15_GL), hi.translate(_T15_GH))
                    out[2::4] = hi.translate(_T15_R)
            return out

        if line == bpb * w and stride == w * 4:
            # Rows back to back in VRAM and in the frame: converted many at a time,
            # or a tall narrow mode (8x12000, found by the fuzzer) costs a turn a row.
            k = max(1, 16384 // w)
            for y in range(y0, y1, k):
                n = min(k, y1 - y)
                buf[y * stride:(y + n) * stride] = conv(start + y * line, n * w)
            return
        for y in range(y0, y1):
            buf[y * stride:y * stride + w * 4] = conv(start + y * line, w)

    # --- figures ----------------------------------------------------------------------

    def stats(self):
        return {"frames": self.frames, "busy_us": self.busy_us, "last_us": self.last_us,
                "drawn": self.drawn, "drawn_us": self.drawn_us,
                "vram": self.vram_size}

    # --- save/restore -----------------------------------------------------------------
    # The registers; the video RAM is guest memory under Xen (saved with the guest's RAM)
    # and what was drawn is derived: the whole screen is drawn again after a load.

    _STATE_INTS = ("msr", "fcr", "sr_index", "gr_index", "ar_index", "ar_flip_flop",
                   "cr_index", "dac_state", "dac_read_index", "dac_write_index",
                   "dac_sub_index", "latch", "dispi_index", "bank_offset", "qext_byteswap")
    _STATE_BYTES = ("sr", "gr", "ar", "cr", "dac_cache", "palette")
    _STATE_FLAGS = ("dispi_enabled", "dac_8bit")

    def state(self):
        d = super().state()
        for k in self._STATE_INTS:
            d[k] = getattr(self, k)
        for k in self._STATE_BYTES:
            d[k] = bytes(getattr(self, k))
        for k in self._STATE_FLAGS:
            if hasattr(self, k):
                d[k] = bool(getattr(self, k))
        d["dispi"] = list(self.dispi)
        return d

    def load_state(self, d):
        dispi = d["dispi"]
        if len(dispi) != len(self.dispi):
            raise ValueError(self.name + ": saved VBE registers have the wrong count")
        for k in self._STATE_BYTES:
            v = bytes(d[k])
            if len(v) != len(getattr(self, k)):
                raise ValueError(self.name + ": saved %s has the wrong size" % k)
        super().load_state(d)
        for k in self._STATE_BYTES:
            getattr(self, k)[:] = bytes(d[k])
        for k in self._STATE_INTS:
            setattr(self, k, int(d[k]) & 0xFFFFFFFF)
        for k in self._STATE_FLAGS:
            if hasattr(self, k):
                setattr(self, k, bool(d.get(k, False)))
        self.dispi = [int(v) & 0xFFFF for v in dispi]
        self.dispi[DISPI_ID] = dispi[DISPI_ID] & 0xFFFF
        # A saved stream is as hostile as the guest: indices back in range, the
        # mode through the same fixup as a guest's, the bank inside VRAM.
        self.sr_index &= 7
        self.gr_index &= 0x0F
        self.cr_index &= 0xFF
        self.ar_index &= 0x3F
        self.ar_flip_flop &= 1
        self.dac_read_index &= 0xFF
        self.dac_write_index &= 0xFF
        self.dac_sub_index %= 3
        self.dac_state &= 0xFF
        self.msr &= 0xFF
        self.fcr &= 0xFF
        self._dispi_fixup()
        self.bank_offset &= ((self.vram_size >> 16) - 1) << 16
        self._dispi_layout()
        self._reset_display()
        for i in range(self.pages):
            self.marked[i] = 1
        self.any_marked = True
