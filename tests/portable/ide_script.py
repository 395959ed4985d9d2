# The PIIX3 IDE with an ATA disk and an ATAPI CD-ROM (stubdm.devices.ide and
# ata, over MemoryDisk and FileDisk): a fixed probe-and-I/O sequence as
# libata makes it, then a deterministic pseudo-random stream of register,
# bus-master and data accesses. Every value read and the IRQ levels are
# printed; tests/test_micropython_portable.py compares MicroPython's output
# with CPython's.
import sys

from common import Lcg, hexs

from stubdm import log
from stubdm.block import MemoryDisk
from stubdm.devices import ata
from stubdm.devices.ide import PiixIde
from stubdm.filedisk import FileDisk
from stubdm.irq import IrqLine

log.verbose = 0

STEPS = int(sys.argv[1]) if len(sys.argv) > 1 else 3000
RAM = 1 << 20


class Pin:
    def __init__(self, views):
        self.views = views

    def release(self):
        pass


class Mem:
    def __init__(self):
        self.ram = bytearray(RAM)
        self.mv = memoryview(self.ram)

    def read(self, gpa, n):
        if gpa < 0 or gpa + n > RAM:
            return None
        return bytes(self.ram[gpa:gpa + n])

    def lock(self, gpa, n):
        if gpa < 0 or gpa + n > RAM:
            return None
        views = []
        pos = gpa
        while pos < gpa + n:
            k = min(gpa + n - pos, 0x4000 - (pos & 0x3FFF))
            views.append(self.mv[pos:pos + k])
            pos += k
        return Pin(views)


def fill(n, seed):
    rng = Lcg(seed)
    return bytearray(rng.bytes_(n))


mem = Mem()
lines = [IrqLine(), IrqLine()]
ide = PiixIde(mem, lines)
hd = MemoryDisk(fill(64 * 512, 1))
path = "/tmp/stubdm-ide-script.img"
f = open(path, "wb")
f.write(bytes(fill(40 * 2048, 2)))
f.close()
cd = FileDisk(path, readonly=True, cdrom=True)
ide.attach(0, 0, ata.AtaDisk(ide.channels[0], 0, "ide0.0", hd, "QM00001"))
ide.attach(1, 0, ata.AtapiCdrom(ide.channels[1], 0, "ide1.0", cd, "QM00003"))
ide.config_write(0x04, 2, 5)
ide.config_write(0x20, 4, 0xC000)
ch = ide.channels


def st(c):
    return "st=%02x err=%02x irq=%d" % (ch[c].read(7, 1), ch[c].read(1, 1), lines[c].level)


def pio_in(c, n):
    out = bytearray()
    for _ in range((n + 1) // 2):
        out += ch[c].read(0, 2).to_bytes(2, "little")
    return bytes(out[:n])


def tf(c, lba, n):
    for reg, v in ((2, n), (3, lba & 0xFF), (4, (lba >> 8) & 0xFF), (5, (lba >> 16) & 0xFF),
                   (6, 0xE0)):
        ch[c].write(reg, 1, v)


def packet(c, cdb, dma=False):
    ch[c].write(6, 1, 0xA0)
    ch[c].write(1, 1, 1 if dma else 0)
    ch[c].write(4, 1, 0xFE)
    ch[c].write(5, 1, 0xFF)
    ch[c].write(7, 1, 0xA0)
    cdb = bytes(cdb) + bytes(12 - len(cdb))
    for i in range(0, 12, 2):
        ch[c].write(0, 2, cdb[i] | (cdb[i + 1] << 8))
    if dma:
        ide.bar_write(4, 8 * c, 1, 0x09)
    data = bytearray()
    for _ in range(100):
        s = ch[c].read(7, 1)
        if not s & 0x08:
            break
        n = ch[c].read(4, 1) | (ch[c].read(5, 1) << 8)
        data += pio_in(c, n)
    print("packet", hexs(bytes(cdb[:1])), len(data), hexs(bytes(data[:40])), st(c))


def prd(entries, table=0x1000):
    o = table
    for a, n, last in entries:
        mem.ram[o:o + 4] = a.to_bytes(4, "little")
        mem.ram[o + 4:o + 8] = ((n & 0xFFFF) | (0x80000000 if last else 0)).to_bytes(4, "little")
        o += 8
    ide.bar_write(4, 4, 4, table)
    ide.bar_write(4, 12, 4, table)


def main():
    ch[0].write(6, 1, 0xA0)
    ch[0].write(7, 1, 0xEC)
    print("identify", hexs(pio_in(0, 512)), st(0))
    tf(0, 5, 3)
    ch[0].write(7, 1, 0x20)
    for _ in range(3):
        print("sector", hexs(pio_in(0, 512)[:16]), st(0))
    tf(0, 9, 2)
    ch[0].write(7, 1, 0x30)
    for i in range(2):
        for j in range(256):
            ch[0].write(0, 2, (i * 256 + j) & 0xFFFF)
    print("write", st(0), hexs(bytes(hd.data[9 * 512:9 * 512 + 8])))
    prd([(0x8000, 1000, False), (0x9000, 24, True)])
    ide.bar_write(4, 2, 1, 6)
    tf(0, 20, 2)
    ch[0].write(7, 1, 0xC8)
    ide.bar_write(4, 0, 1, 0x09)
    print("dma", "%02x" % ide.bar_read(4, 2, 1), st(0), hexs(mem.read(0x8000, 16)),
          hexs(mem.read(0x9000, 24)))
    ide.bar_write(4, 0, 1, 0x08)
    packet(1, [0x12, 0, 0, 0, 36])
    packet(1, [0x25])
    packet(1, [0x28, 0, 0, 0, 0, 3, 0, 0, 2])
    packet(1, [0x43, 0, 0, 0, 0, 0, 0, 0, 20])
    packet(1, [0x46, 0, 0, 0, 0, 0, 0, 0, 64])
    packet(1, [0x4A, 1, 0, 0, 0x10, 0, 0, 0, 8])
    prd([(0x20000, 4096, True)])
    packet(1, [0x28, 0, 0, 0, 0, 7, 0, 0, 2], dma=True)
    print("cd dma", hexs(mem.read(0x20000, 16)), "%02x" % ide.bar_read(4, 10, 1))
    cd.change(None)
    packet(1, [0x00])
    packet(1, [0x03, 0, 0, 0, 18])
    packet(1, [0x4A, 1, 0, 0, 0x10, 0, 0, 0, 8])
    # The random stream: any register, any size, BAR4, PRD tables, SRST.
    rng = Lcg(0x1DE)
    for i in range(STEPS):
        c = rng.below(2)
        k = rng.below(10)
        size = rng.pick((1, 1, 1, 2, 4))
        if k < 4:
            off = rng.below(8)
            print(i, "r", c, off, size, "%x" % ch[c].read(off, size), lines[c].level)
        elif k < 7:
            off = rng.below(8)
            v = rng.pick((0x20, 0x24, 0x30, 0xC8, 0xCA, 0xEC, 0xA1, 0xA0, 0xEF, 0xE7, 0xC4,
                          0x25, 0x35, rng.byte(), rng.byte(), 0xE0, 0x00))
            ch[c].write(off, size, v)
            print(i, "w", c, off, size, "%x" % v, lines[c].level)
        elif k == 7:
            off = rng.below(16)
            v = rng.pick((1, 9, 0, 8, 6, rng.byte()))
            ide.bar_write(4, off, size, v)
            print(i, "bm", off, size, "%x" % ide.bar_read(4, off & 0xE, 1))
        elif k == 8:
            ch[c].ctl_write(0, 1, rng.pick((0, 2, 4, 0x80, rng.byte())))
            print(i, "ctl", c, "%x" % ch[c].ctl_read(0, 1))
        else:
            prd([(rng.below(RAM // 2) & ~1, rng.below(0x10000) & ~1, rng.chance(70))
                 for _ in range(rng.below(4) + 1)])
            print(i, "prd")
    print("guest errors", log.count("guest_error") > 0)


main()
