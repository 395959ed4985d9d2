# A guest's-eye driver for the PIIX3 IDE model in-process: the register
# sequences libata (libata-sff.c) and ata_piix use, over the device cores.
from stubdm.block import MemoryDisk
from stubdm.devices import ata
from stubdm.devices.ide import PiixIde
from stubdm.irq import IrqLine

RAM = 4 << 20


class Pinned:
    def __init__(self, views):
        self.views = views
        self.released = False

    def release(self):
        self.released = True


class FakeMemory:
    """Guest RAM as GuestMemory shows it: read() and lock(), None outside RAM."""

    def __init__(self, size=RAM):
        self.ram = bytearray(size)
        self.mv = memoryview(self.ram)
        self.locked = []

    def read(self, gpa, n):
        if gpa < 0 or gpa + n > len(self.ram):
            return None
        return bytes(self.ram[gpa:gpa + n])

    def lock(self, gpa, n):
        if gpa < 0 or gpa + n > len(self.ram):
            return None
        # Split at 64 KiB "buckets", as the mapcache does at its bucket edges.
        views = []
        pos = gpa
        while pos < gpa + n:
            k = min(gpa + n - pos, 0x10000 - (pos & 0xFFFF))
            views.append(self.mv[pos:pos + k])
            pos += k
        p = Pinned(views)
        self.locked.append(p)
        return p

    def unreleased(self):
        return [p for p in self.locked if not p.released]


class Rig:
    """A PIIX3 IDE function with drives, and the guest's side of it."""

    def __init__(self, drives=(), native=False, defer=False):
        self.mem = FakeMemory()
        self.levels = {14: [], 15: []}
        self.lines = [IrqLine(lambda v: self.levels[14].append(v)),
                      IrqLine(lambda v: self.levels[15].append(v))]
        self.ide = PiixIde(self.mem, self.lines, native=native)
        self.queue = []
        self.disks = {}
        for ch, unit, kind, disk in drives:
            if defer:
                disk.defer = self.queue.append
            name = "ide%d.%d" % (ch, unit)
            cls = ata.AtapiCdrom if kind == "cd" else ata.AtaDisk
            drv = cls(self.ide.channels[ch], unit, name, disk, "QM%05d" % (2 * ch + unit + 1))
            self.ide.attach(ch, unit, drv)
            self.disks[(ch, unit)] = disk
        self.ide.config_write(0x04, 2, 0x0005)  # I/O and bus mastering on
        self.ide.config_write(0x20, 4, 0xC000)  # BAR4

    def run_deferred(self):
        while self.queue:
            self.queue.pop(0)()

    def ch(self, i=0):
        return self.ide.channels[i]

    def irq(self, i=0):
        return self.lines[i].level

    # registers
    def outb(self, ch, reg, v):
        self.ch(ch).write(reg, 1, v)

    def inb(self, ch, reg):
        return self.ch(ch).read(reg, 1)

    def altstatus(self, ch=0):
        return self.ch(ch).ctl_read(0, 1)

    def ctl(self, ch, v):
        self.ch(ch).ctl_write(0, 1, v)

    def bm_w(self, ch, off, size, v):
        self.ide.bar_write(4, 8 * ch + off, size, v)

    def bm_r(self, ch, off, size=1):
        return self.ide.bar_read(4, 8 * ch + off, size)

    def select(self, ch, unit, lba_bits=0x40):
        self.outb(ch, 6, 0xA0 | lba_bits | (unit << 4))

    def taskfile(self, ch, unit, lba, count, lba48=False, feature=0):
        if lba48:
            self.outb(ch, 1, 0)
            self.outb(ch, 2, (count >> 8) & 0xFF)
            self.outb(ch, 3, (lba >> 24) & 0xFF)
            self.outb(ch, 4, (lba >> 32) & 0xFF)
            self.outb(ch, 5, (lba >> 40) & 0xFF)
            self.outb(ch, 1, feature)
            self.outb(ch, 2, count & 0xFF)
            self.outb(ch, 3, lba & 0xFF)
            self.outb(ch, 4, (lba >> 8) & 0xFF)
            self.outb(ch, 5, (lba >> 16) & 0xFF)
            self.select(ch, unit)
        else:
            self.outb(ch, 1, feature)
            self.outb(ch, 2, count & 0xFF)
            self.outb(ch, 3, lba & 0xFF)
            self.outb(ch, 4, (lba >> 8) & 0xFF)
            self.outb(ch, 5, (lba >> 16) & 0xFF)
            self.outb(ch, 6, 0xE0 | (unit << 4) | ((lba >> 24) & 0x0F))

    def pio_in(self, ch, nbytes):
        out = bytearray()
        for _ in range((nbytes + 1) // 2):
            out += self.ch(ch).read(0, 2).to_bytes(2, "little")
        return bytes(out[:nbytes])

    def pio_out(self, ch, data):
        for i in range(0, len(data), 2):
            self.ch(ch).write(0, 2, int.from_bytes(data[i:i + 2], "little"))

    def prd(self, table, entries):
        """entries: (addr, length, last); length 65536 is written as 0."""
        for i, (a, n, last) in enumerate(entries):
            self.mem.ram[table + 8 * i:table + 8 * i + 4] = a.to_bytes(4, "little")
            cnt = (n & 0xFFFF) | (0x80000000 if last else 0)
            self.mem.ram[table + 8 * i + 4:table + 8 * i + 8] = cnt.to_bytes(4, "little")

    def dma(self, ch, unit, cmd, lba, count, table, entries, to_memory, lba48=False):
        """libata's order: PRD table, BMIDTP, direction, clear status; command; start."""
        self.prd(table, entries)
        self.bm_w(ch, 4, 4, table)
        self.bm_w(ch, 0, 1, 0x08 if to_memory else 0)
        self.bm_w(ch, 2, 1, 0x06)
        self.taskfile(ch, unit, lba, count, lba48)
        self.outb(ch, 7, cmd)
        self.bm_w(ch, 0, 1, (0x08 if to_memory else 0) | 1)
        self.run_deferred()
        bm = self.bm_r(ch, 2)
        self.bm_w(ch, 0, 1, 0x08 if to_memory else 0)  # stop
        st = self.inb(ch, 7)
        return bm, st

    def packet(self, ch, unit, cdb, dma=False, bcl=0xFFFE):
        """SFF-8020i PACKET: features, byte count limit, 0xa0, then the 12-byte CDB."""
        self.select(ch, unit, 0)
        self.outb(ch, 1, 1 if dma else 0)
        self.outb(ch, 4, bcl & 0xFF)
        self.outb(ch, 5, bcl >> 8)
        self.outb(ch, 7, 0xA0)
        assert self.altstatus(ch) & 0x08, "no DRQ for the packet"
        cdb = bytes(cdb) + bytes(12 - len(cdb))
        self.pio_out(ch, cdb)
        self.run_deferred()

    def packet_in(self, ch, unit, cdb, bcl=0xFFFE):
        """A PIO data-in packet command: the bytes, the final status, the error."""
        self.packet(ch, unit, cdb, bcl=bcl)
        data = bytearray()
        for _ in range(10000):
            st = self.inb(ch, 7)
            if st & 0x80:
                self.run_deferred()
                continue
            if not st & 0x08:
                return bytes(data), st, self.inb(ch, 1)
            n = self.inb(ch, 4) | (self.inb(ch, 5) << 8)
            assert self.inb(ch, 2) == 2  # interrupt reason: data to the host
            data += self.pio_in(ch, n)
            self.run_deferred()
        raise AssertionError("packet command never ended")


def disk(n_sectors, **kw):
    data = bytearray(n_sectors * 512)
    for i in range(n_sectors):
        data[i * 512:i * 512 + 8] = i.to_bytes(8, "little")
        data[i * 512 + 8] = 0xA5
    return MemoryDisk(data, **kw)
