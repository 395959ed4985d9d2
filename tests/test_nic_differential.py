"""Differential tests of the NICs: stubdm's rtl8139 and e1000 against QEMU's
own (hw/net/rtl8139.c, hw/net/e1000.c) through qtest, in lock step.

Both sides get the NIC at 00:05.0 with the same MAC, its BARs programmed the
same way, and the same register script; every value read of the behaviour
both share is compared. The device model runs as a scripted-guest session
(real ioreqs) on CPython and MicroPython.

Deliberate differences, not compared:
- QEMU's rtl8139 and e1000 fill their EEPROMs with QEMU's templates (IDs,
  init words): only the MAC words, the 8139 signature word and the e1000
  checksum rule (the 64 words sum to 0xBABA) are the guest-visible facts.
- Configuration space past the header (QEMU's e1000 and rtl8139 have no
  capabilities either, but differ in reserved bytes), CONFIG registers and
  the 8139's timer: implementation details a driver does not read back.
- e1000's RXCSUM (receive checksum offload, SDM 13.4.29): QEMU's e1000
  does not model it (it reads 0 whatever was written); stubdm does, and
  checks received checksums for the guest.
- e1000's I/O BAR: QEMU's is a placeholder (reads 0, writes vanish); stubdm
  serves IOADDR/IODATA (SDM 13.2.4), through which Linux's e1000 issues the
  82540's CTRL.RST (e1000_reset_hw, E1000_WRITE_REG_IO).
- e1000 autonegotiation: QEMU brings the link up from a timer after reset
  (which qtest's frozen clock never runs); stubdm's partner is there at once.
"""
import collections

import pytest

from host_sim.qtest_qemu import QemuQtest, find_qemu, qemu_missing_reason
from host_sim.scripted import Session

QEMU = find_qemu()
pytestmark = pytest.mark.skipif(QEMU is None, reason=qemu_missing_reason() or "no QEMU")

SLOT = 5
MAC = "52:54:00:12:34:56"
IO_BASE = 0xC000
MMIO_BASE = 0xFEB00000


class Both:
    def __init__(self, g, q):
        self.g = g
        self.q = q
        self.trail = collections.deque(maxlen=30)

    def _fail(self, what, a, b):
        pytest.fail("%s: stubdm %s, QEMU %s\n  last steps:\n    %s"
                    % (what, a, b, "\n    ".join(self.trail)))

    def op(self, name, *args):
        """A write on both sides."""
        self.trail.append("%s %s" % (name, " ".join(hex(a) for a in args)))
        getattr(self.g, name)(*args)
        getattr(self.q, name)(*args)

    def get(self, name, addr, compare=True):
        a = getattr(self.g, name)(addr)
        b = getattr(self.q, name)(addr)
        self.trail.append("%s 0x%x -> 0x%x / 0x%x" % (name, addr, a, b))
        if compare and a != b:
            self._fail("%s 0x%x" % (name, addr), hex(a), hex(b))
        return a, b

    def cfg_write(self, reg, value, size=4):
        self.op("outl", 0xCF8, 0x80000000 | (SLOT << 11) | (reg & 0xFC))
        self.op({1: "outb", 2: "outw", 4: "outl"}[size], 0xCFC + (reg & 3), value)

    def cfg_read(self, reg, compare=True):
        self.op("outl", 0xCF8, 0x80000000 | (SLOT << 11) | (reg & 0xFC))
        return self.get("inl", 0xCFC, compare)


def session(model, runtime):
    args = ["-no-timers", "-device", "%s,id=nic0,netdev=net0,mac=%s,addr=%d" % (model, MAC, SLOT),
            "-netdev", "type=tap,id=net0,script=no,downscript=no"]
    return Session(dm_args=args, ram_mib=64, runtime=runtime)


def qemu(model):
    return QemuQtest(["-m", "64", "-device", "%s,addr=%d,mac=%s" % (model, SLOT, MAC)],
                     qemu=QEMU)


@pytest.fixture
def rtl(dm_runtime):
    with session("rtl8139", dm_runtime) as s, qemu("rtl8139") as q:
        b = Both(s.guest, q)
        b.cfg_write(0x10, IO_BASE)
        b.cfg_write(0x14, MMIO_BASE)
        b.cfg_write(0x04, 0x0007, 2)
        yield b


@pytest.fixture
def e1k(dm_runtime):
    with session("e1000", dm_runtime) as s, qemu("e1000") as q:
        b = Both(s.guest, q)
        b.cfg_write(0x10, MMIO_BASE)
        b.cfg_write(0x14, IO_BASE)
        b.cfg_write(0x04, 0x0007, 2)
        yield b


# ---------------------------------------------------------------- rtl8139

def test_rtl8139_identity_and_bars(rtl):
    rtl.cfg_read(0x00)
    rtl.cfg_read(0x08)  # revision 0x20 and class 0x020000
    rtl.cfg_read(0x3C)  # interrupt pin A
    for reg in (0x10, 0x14):
        rtl.cfg_write(reg, 0xFFFFFFFF)
        rtl.cfg_read(reg)  # sizes: 256 bytes of I/O, 256 of memory
    rtl.cfg_write(0x10, IO_BASE)
    rtl.cfg_write(0x14, MMIO_BASE)


def test_rtl8139_reset_values(rtl):
    rtl.op("outb", IO_BASE + 0x37, 0x10)  # CR.RST
    for off in range(6):
        rtl.get("inb", IO_BASE + off)  # the MAC
    rtl.get("inb", IO_BASE + 0x37)  # CR: BUFE
    a, b = rtl.get("inl", IO_BASE + 0x40, compare=False)
    assert a & 0x7CC00000 == b & 0x7CC00000  # TCR hardware version: RTL8139C+
    rtl.get("inw", IO_BASE + 0x3C)
    rtl.get("inw", IO_BASE + 0x3E)
    a, b = rtl.get("inw", IO_BASE + 0x64, compare=False)  # BMSR
    assert a & 0x0024 == b & 0x0024  # link up, autonegotiation done
    rtl.get("inb", IO_BASE + 0x5E)  # the PCI revision mirror


def test_rtl8139_eeprom_bit_banged(rtl):
    def word(loc, addr_len):
        out = []
        for x in (rtl.g, rtl.q):
            enb = 0x88
            cmd = loc | (6 << addr_len)
            x.outb(IO_BASE + 0x50, enb & ~0x08)
            x.outb(IO_BASE + 0x50, enb)
            for i in range(4 + addr_len, -1, -1):
                d = 0x02 if cmd & (1 << i) else 0
                x.outb(IO_BASE + 0x50, enb | d)
                x.outb(IO_BASE + 0x50, enb | d | 0x04)
            x.outb(IO_BASE + 0x50, enb)
            v = 0
            for _ in range(16):
                x.outb(IO_BASE + 0x50, enb | 0x04)
                v = (v << 1) | (x.inb(IO_BASE + 0x50) & 1)
                x.outb(IO_BASE + 0x50, enb)
            x.outb(IO_BASE + 0x50, 0)
            out.append(v)
        return out

    assert word(0, 6) == [0x8129, 0x8129]
    for loc in (7, 8, 9):
        a, b = word(loc, 6)
        assert a == b, loc
    a, b = word(0, 8)  # 8139cp's width probe must fail on both
    assert a != 0x8129 and b != 0x8129


def test_rtl8139_registers_both_keep(rtl):
    base = MMIO_BASE
    for v in (0x12345678, 0xFFFFFFFF, 0):
        rtl.op("writel", base + 0x30, v)  # RBSTART
        rtl.get("readl", base + 0x30)
        rtl.op("writel", base + 0x08, v)  # MAR0-3
        rtl.get("readl", base + 0x08)
    rtl.op("writew", base + 0x3C, 0xE07F)
    rtl.get("readw", base + 0x3C)
    rtl.op("outb", IO_BASE + 0x37, 0x0C)  # RE | TE
    rtl.get("inb", IO_BASE + 0x37)
    rtl.op("outl", IO_BASE + 0x44, 0x0000F78E)  # RCR as 8139too writes it
    rtl.get("inl", IO_BASE + 0x44)
    rtl.get("inw", IO_BASE + 0x3A)  # CBR
    rtl.get("inw", IO_BASE + 0x38)  # CAPR
    for i in range(4):
        a, b = rtl.get("inl", IO_BASE + 0x10 + 4 * i, compare=False)
        assert a & 0x2000 == b & 0x2000  # TX slots start owned by the host
    # ISR: write 1 to clear (nothing pending on either side).
    rtl.op("outw", IO_BASE + 0x3E, 0xFFFF)
    rtl.get("inw", IO_BASE + 0x3E)


# ---------------------------------------------------------------- e1000

def test_e1000_identity_and_bars(e1k):
    e1k.cfg_read(0x00)
    e1k.cfg_read(0x3C)
    for reg in (0x10, 0x14):
        e1k.cfg_write(reg, 0xFFFFFFFF)
        e1k.cfg_read(reg)  # 128 KiB of memory, 64 bytes of I/O
    e1k.cfg_write(0x10, MMIO_BASE)
    e1k.cfg_write(0x14, IO_BASE)


def test_e1000_reset_and_mac(e1k):
    m = MMIO_BASE
    e1k.op("writel", m + 0x0000, 0x04000000)  # CTRL.RST
    e1k.get("readl", m + 0x5400)  # RAL0
    e1k.get("readl", m + 0x5404)  # RAH0 (address valid)
    for off in (0x0100, 0x0400, 0x00D0, 0x2810, 0x2818, 0x3810, 0x3818):
        e1k.get("readl", m + off)
    for w in range(3):
        e1k.op("writel", m + 0x0014, (w << 8) | 1)  # EERD start
        e1k.get("readl", m + 0x0014)


def test_e1000_eeprom_bit_banged(e1k):
    def words():
        out = []
        for x in (e1k.g, e1k.q):
            ws = []
            for addr in range(64):
                eecd = (x.readl(MMIO_BASE + 0x10) | 0x40) & ~0x0F
                x.writel(MMIO_BASE + 0x10, eecd)
                eecd |= 0x02
                x.writel(MMIO_BASE + 0x10, eecd)
                cmd = (6 << 6) | addr
                for i in range(8, -1, -1):
                    eecd = (eecd & ~0x04) | (0x04 if cmd & (1 << i) else 0)
                    x.writel(MMIO_BASE + 0x10, eecd)
                    x.writel(MMIO_BASE + 0x10, eecd | 1)
                    x.writel(MMIO_BASE + 0x10, eecd)
                eecd &= ~0x04
                v = 0
                for _ in range(16):
                    x.writel(MMIO_BASE + 0x10, eecd | 1)
                    v = (v << 1) | (1 if x.readl(MMIO_BASE + 0x10) & 0x08 else 0)
                    x.writel(MMIO_BASE + 0x10, eecd)
                x.writel(MMIO_BASE + 0x10, eecd & ~0x42)
                ws.append(v)
            out.append(ws)
        return out

    a, b = words()
    assert a[:3] == b[:3]  # the MAC
    assert sum(a) & 0xFFFF == sum(b) & 0xFFFF == 0xBABA


def test_e1000_phy_over_mdic(e1k):
    m = MMIO_BASE
    for reg in (2, 3):
        e1k.op("writel", m + 0x20, 0x08000000 | (1 << 21) | (reg << 16))
        e1k.get("readl", m + 0x20)
    e1k.op("writel", m + 0x20, 0x08000000 | (2 << 21) | (2 << 16))  # no PHY 2
    a, b = e1k.get("readl", m + 0x20, compare=False)
    assert a & 0x40000000 and b & 0x40000000


def test_e1000_interrupt_registers(e1k):
    m = MMIO_BASE
    e1k.op("writel", m + 0xD8, 0xFFFFFFFF)  # IMC
    e1k.get("readl", m + 0xC0)  # ICR (clears)
    e1k.op("writel", m + 0xC8, 0x81)  # ICS: RXT0 | TXDW
    e1k.cfg_read(0x04)  # status bit 3: no interrupt while masked
    e1k.op("writel", m + 0xD0, 0x80)  # IMS
    e1k.get("readl", m + 0xD0)
    e1k.cfg_read(0x04)  # now asserted on both
    e1k.get("readl", m + 0xC0)
    e1k.get("readl", m + 0xC0)  # cleared by the read
    e1k.cfg_read(0x04)
    e1k.op("writel", m + 0xC8, 0x04)
    e1k.op("writel", m + 0xD8, 0x80)
    e1k.get("readl", m + 0xD0)


def test_e1000_ring_registers(e1k):
    m = MMIO_BASE
    for off, v in ((0x2800, 0x12345670), (0x2804, 0x9), (0x2808, 0x1000), (0x2810, 3),
                   (0x2818, 7), (0x3800, 0x87654320), (0x3804, 0), (0x3808, 0x800),
                   (0x3810, 0), (0x0100, 0x0400801A)):
        e1k.op("writel", m + off, v)
        e1k.get("readl", m + off)
