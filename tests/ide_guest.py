# The guest's side of a PIIX3 IDE on the compatibility ports, in qtest's
# vocabulary (outb/inb/outw/inw/outl/memwrite/memread/pci_*), so that one
# script drives stubdm through host_sim's scripted guest and QEMU's own IDE
# through -accel qtest. Register sequences as Linux's libata-sff and
# ata_piix make them.
import time

CHANNELS = ((0x1F0, 0x3F6), (0x170, 0x376))
BMIBA = 0xC000
PRD_TABLE = 0x100000
BUF = 0x200000


def pci_cfg(g, reg, value=None, size=4):
    """00:01.1's configuration space through 0xcf8/0xcfc."""
    g.outl(0xCF8, 0x80000000 | (1 << 11) | (1 << 8) | (reg & 0xFC))
    port = 0xCFC + (reg & 3)
    if value is None:
        return {1: g.inb, 2: g.inw, 4: g.inl}[size](port)
    {1: g.outb, 2: g.outw, 4: g.outl}[size](port, value)


class IdeGuest:
    def __init__(self, g):
        self.g = g
        pci_cfg(g, 0x20, BMIBA)
        pci_cfg(g, 0x04, 0x0005, 2)  # I/O decode, bus master
        pci_cfg(g, 0x40, 0x80008000)  # IDETIM: both channels decode (hvmloader does this)

    def cmd(self, ch):
        return CHANNELS[ch][0]

    def outb(self, ch, reg, v):
        self.g.outb(CHANNELS[ch][0] + reg, v)

    def inb(self, ch, reg):
        return self.g.inb(CHANNELS[ch][0] + reg)

    def alt(self, ch):
        return self.g.inb(CHANNELS[ch][1])

    def ctl(self, ch, v):
        self.g.outb(CHANNELS[ch][1], v)

    def regs(self, ch):
        return [self.inb(ch, r) for r in range(1, 8)]

    def taskfile(self, ch, unit, lba, count, lba48=False):
        o = self.outb
        if lba48:
            o(ch, 2, (count >> 8) & 0xFF)
            o(ch, 3, (lba >> 24) & 0xFF)
            o(ch, 4, (lba >> 32) & 0xFF)
            o(ch, 5, (lba >> 40) & 0xFF)
            o(ch, 2, count & 0xFF)
            o(ch, 3, lba & 0xFF)
            o(ch, 4, (lba >> 8) & 0xFF)
            o(ch, 5, (lba >> 16) & 0xFF)
            o(ch, 6, 0x40 | (unit << 4))
        else:
            o(ch, 2, count & 0xFF)
            o(ch, 3, lba & 0xFF)
            o(ch, 4, (lba >> 8) & 0xFF)
            o(ch, 5, (lba >> 16) & 0xFF)
            o(ch, 6, 0xE0 | (unit << 4) | ((lba >> 24) & 0x0F))

    def wait(self, ch, n=2000):
        for _ in range(n):
            st = self.alt(ch)
            if not st & 0x80:
                return st
        return st

    def pio_in(self, ch, nbytes, dword=False):
        out = bytearray()
        port = CHANNELS[ch][0]
        if dword:
            for _ in range(nbytes // 4):
                out += self.g.inl(port).to_bytes(4, "little")
        else:
            for _ in range((nbytes + 1) // 2):
                out += self.g.inw(port).to_bytes(2, "little")
        return bytes(out[:nbytes])

    def pio_out(self, ch, data):
        port = CHANNELS[ch][0]
        for i in range(0, len(data), 2):
            self.g.outw(port, int.from_bytes(data[i:i + 2], "little"))

    def identify(self, ch, unit, packet=False):
        self.outb(ch, 6, 0xA0 | (unit << 4))
        self.outb(ch, 7, 0xA1 if packet else 0xEC)
        self.wait(ch)
        return self.pio_in(ch, 512)

    def read_pio(self, ch, unit, lba, count, lba48=False):
        self.taskfile(ch, unit, lba, count, lba48)
        self.outb(ch, 7, 0x24 if lba48 else 0x20)
        data = bytearray()
        for _ in range(count):
            st = self.wait(ch)
            if st & 1:
                break
            data += self.pio_in(ch, 512)
        return bytes(data), self.inb(ch, 7)

    def write_pio(self, ch, unit, lba, data, lba48=False):
        count = len(data) // 512
        self.taskfile(ch, unit, lba, count, lba48)
        self.outb(ch, 7, 0x34 if lba48 else 0x30)
        for i in range(count):
            st = self.wait(ch)
            if st & 1 or not st & 8:
                break
            self.pio_out(ch, data[i * 512:(i + 1) * 512])
        self.wait(ch)
        return self.inb(ch, 7)

    def prd(self, entries, table=PRD_TABLE):
        raw = bytearray()
        for a, n, last in entries:
            raw += a.to_bytes(4, "little")
            raw += ((n & 0xFFFF) | (0x80000000 if last else 0)).to_bytes(4, "little")
        self.g.memwrite(table, bytes(raw))

    def dma(self, ch, unit, cmd, lba, count, entries, to_memory, lba48=False, table=PRD_TABLE,
            irq=None):
        """One DMA command in libata's order; (BMISX, status, error, IRQ level at the end)."""
        bm = BMIBA + 8 * ch
        g = self.g
        if entries is not None:
            self.prd(entries, table)
        g.outl(bm + 4, table)
        g.outb(bm, 0x08 if to_memory else 0)
        g.outb(bm + 2, 0x06)
        self.taskfile(ch, unit, lba, count, lba48)
        self.outb(ch, 7, cmd)
        g.outb(bm, (0x08 if to_memory else 0) | 1)
        self.wait(ch, 20000)
        # As a driver does, wait for the interrupt bit (qemu-xen's block layer
        # completes DMA in another thread: BSY may clear before BMISX says so).
        deadline = time.monotonic() + 10
        bms = g.inb(bm + 2)
        while not bms & 0x04 and bms & 0x01 and time.monotonic() < deadline:
            time.sleep(0.001)
            bms = g.inb(bm + 2)
        level = irq() if irq is not None else None
        g.outb(bm, 0x08 if to_memory else 0)
        return bms, self.inb(ch, 7), self.inb(ch, 1), level

    def packet(self, ch, unit, cdb, nbytes=0xFFFE, dma=False, entries=None):
        """A packet command: (data, status, error, interrupt reason)."""
        g = self.g
        bm = BMIBA + 8 * ch
        if dma:
            self.prd(entries)
            g.outl(bm + 4, PRD_TABLE)
            g.outb(bm, 0x08)
            g.outb(bm + 2, 0x06)
        self.outb(ch, 6, 0xA0 | (unit << 4))
        self.outb(ch, 1, 1 if dma else 0)
        self.outb(ch, 4, nbytes & 0xFF)
        self.outb(ch, 5, nbytes >> 8)
        self.outb(ch, 7, 0xA0)
        self.wait(ch)
        self.pio_out(ch, bytes(cdb) + bytes(12 - len(cdb)))
        if dma:
            g.outb(bm, 0x09)
        data = bytearray()
        for _ in range(5000):
            st = self.wait(ch, 20000)
            if not st & 0x08:
                break
            n = self.inb(ch, 4) | (self.inb(ch, 5) << 8)
            data += self.pio_in(ch, n)
        if dma:
            g.outb(bm, 0x08)
        st = self.inb(ch, 7)
        return bytes(data), st, self.inb(ch, 1), self.inb(ch, 2)
