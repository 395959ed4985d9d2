# Drive stubdm.devices.ahci as libahci does (port start, IDENTIFY, DMA read
# and write, NCQ with many tags completing out of order, ATAPI behind a
# port, COMRESET), then with a deterministic pseudo-random mix of FISes,
# PRDTs, slots, tags and engine stops; print registers and what memory and
# disks hold. Run under CPython and MicroPython by
# tests/test_micropython_portable.py: the outputs must be identical.
import struct
import sys

from common import Lcg

from stubdm import block, log
from stubdm.devices import ahci

log.verbose = 0

STEPS = int(sys.argv[1]) if len(sys.argv) > 1 else 300
RAM = 1 << 20
CLB = 0x10000
FB = 0x20000
CT = 0x40000
BUF = 0x80000


class Pin:
    def __init__(self, ram, views):
        self.ram = ram
        self.views = views
        ram.pins += 1

    def release(self):
        if self.views is not None:
            self.ram.pins -= 1
            self.views = None


class Ram:
    """Guest memory: read/write/lock, None/False outside RAM; 64 KiB 'buckets'."""

    def __init__(self, n):
        self.b = bytearray(n)
        self.mv = memoryview(self.b)
        self.pins = 0

    def read(self, gpa, n):
        if gpa < 0 or n < 0 or gpa + n > len(self.b):
            return None
        return bytes(self.b[gpa:gpa + n])

    def write(self, gpa, data):
        n = len(data)
        if gpa < 0 or gpa + n > len(self.b):
            return False
        self.b[gpa:gpa + n] = data
        return True

    def lock(self, gpa, n):
        if gpa < 0 or n < 0 or gpa + n > len(self.b):
            return None
        views = []
        pos = gpa
        while pos < gpa + n:
            k = min(gpa + n - pos, 0x10000 - (pos & 0xFFFF))
            views.append(self.mv[pos:pos + k])
            pos += k
        return Pin(self, views)


def csum(b):
    s = 0
    for i in range(0, len(b), 64):
        s = (s * 31 + b[i] + (b[i + 1] << 8)) & 0xFFFFFFFF
    return s


queue = []


def defer(fn):
    queue.append(fn)


def run_queue(rng=None):
    n = 0
    while queue and n < 10000:
        i = rng.below(len(queue)) if rng is not None else 0
        fn = queue.pop(i)
        fn()
        n += 1
    return n


hd_data = bytearray(1024 * 512)
for s in range(1024):
    hd_data[s * 512:s * 512 + 4] = struct.pack("<I", s * 2654435761 & 0xFFFFFFFF)
cd_data = bytearray(32 * 2048)
for b in range(32):
    cd_data[b * 2048:b * 2048 + 4] = struct.pack("<I", 0xC0DE + b)
hd = block.MemoryDisk(hd_data, defer=defer)
cd = block.MemoryDisk(cd_data, readonly=True, cdrom=True, defer=defer)
ram = Ram(RAM)
hba = ahci.Ahci(ram, [hd, cd])
hba.config_write(0x04, 2, 0x0006)
hba.config_write(0x24, 4, 0xFEBF0000)
abar = hba.bar_handler(5)


def w(off, v):
    abar.write(off, 4, v)


def r(off):
    return abar.read(off, 4)


def pw(p, off, v):
    w(0x100 + p * 0x80 + off, v)


def pr(p, off):
    return r(0x100 + p * 0x80 + off)


def show(what, p=0):
    print("%s: is=%08x tfd=%04x sact=%08x ci=%08x cmd=%08x hba_is=%x line=%d pins=%d" % (
        what, pr(p, 0x10), pr(p, 0x20), pr(p, 0x34), pr(p, 0x38), pr(p, 0x18), r(0x08),
        hba.intx_asserted, ram.pins))


def h2d(cmd, lba=0, count=0, features=0, device=0x40, control=0, c=True):
    f = bytearray(20)
    f[0] = 0x27
    f[1] = 0x80 if c else 0
    f[2] = cmd
    f[3] = features & 0xFF
    f[4] = lba & 0xFF
    f[5] = (lba >> 8) & 0xFF
    f[6] = (lba >> 16) & 0xFF
    f[7] = device
    f[8] = (lba >> 24) & 0xFF
    f[9] = (lba >> 32) & 0xFF
    f[10] = (lba >> 40) & 0xFF
    f[11] = (features >> 8) & 0xFF
    f[12] = count & 0xFF
    f[13] = (count >> 8) & 0xFF
    f[15] = control
    return f


def build(p, slot, fis, prds, write=False, acmd=None, flags=0):
    ct = CT + p * 0x20000 + slot * 0x800
    t = bytearray(0x80 + 16 * len(prds))
    t[0:20] = fis
    if acmd is not None:
        t[0x40:0x40 + len(acmd)] = acmd
    for i in range(len(prds)):
        a, n = prds[i]
        struct.pack_into("<IIII", t, 0x80 + 16 * i, a & 0xFFFFFFFF, (a >> 32) & 0xFFFFFFFF, 0,
                         (n - 1) & 0x3FFFFF)
    ram.write(ct, t)
    dw0 = 5 | (len(prds) << 16) | (0x40 if write else 0) | (0x20 if acmd else 0) | flags
    ram.write(CLB + p * 0x1000 + slot * 32, struct.pack("<IIII", dw0, 0, ct, 0) + bytes(16))


def start(p):
    w(0x04, 0x80000000)
    pw(p, 0x00, CLB + p * 0x1000)
    pw(p, 0x08, FB + p * 0x100)
    pw(p, 0x18, pr(p, 0x18) | 0x10)
    pw(p, 0x18, pr(p, 0x18) | 0x01)
    pw(p, 0x10, 0xFFFFFFFF)
    pw(p, 0x14, 0x7DC0007F)
    w(0x04, 0x80000002)


def restart(p):
    pw(p, 0x18, pr(p, 0x18) & ~1)
    pw(p, 0x10, 0xFFFFFFFF)
    w(0x08, 0xFF)
    pw(p, 0x18, pr(p, 0x18) | 1)


print("cap=%08x pi=%x vs=%08x sig0=%08x sig1=%08x ssts0=%x" % (
    r(0), r(0x0C), r(0x10), pr(0, 0x24), pr(1, 0x24), pr(0, 0x28)))
start(0)
start(1)
show("started")
build(0, 0, h2d(0xEC, device=0), [(BUF, 512)])
pw(0, 0x38, 1)
run_queue()
show("identify")
print("identify sum %08x" % csum(ram.mv[BUF:BUF + 512]))
pw(0, 0x10, 0xFFFFFFFF)
w(0x08, 1)
build(0, 1, h2d(0x25, 100, 24), [(BUF + 0xF000, 0x2000), (BUF + 0x30000, 0x1000)])
pw(0, 0x38, 2)
run_queue()
show("read dma ext")
print("read sum %08x %08x" % (csum(ram.mv[BUF + 0xF000:BUF + 0x11000]),
                              csum(ram.mv[BUF + 0x30000:BUF + 0x31000])))
for i in range(0x2000):
    ram.b[BUF + 0x40000 + i] = i & 0xFF
build(0, 2, h2d(0x35, 900, 16), [(BUF + 0x40000, 0x2000)], write=True)
pw(0, 0x38, 4)
run_queue()
show("write dma ext")
print("disk sum %08x" % csum(memoryview(hd_data)[900 * 512:916 * 512]))
# NCQ: 32 tags, completions in a pseudo-random order.
rng = Lcg(11)
for t in range(32):
    n = 4 + (t % 4) * 4
    build(0, t, h2d(0x60, 16 * t, t << 3, features=n), [(BUF + t * 0x2000, n * 512)])
pw(0, 0x34, 0xFFFFFFFF)
pw(0, 0x38, 0xFFFFFFFF)
show("ncq issued")
done = 0
while queue:
    queue.pop(rng.below(len(queue)))()
    done += 1
    if done % 8 == 0:
        show("ncq %d done" % done)
print("ncq sum %08x" % csum(ram.mv[BUF:BUF + 32 * 0x2000]))
# ATAPI on port 1: INQUIRY by PIO, READ(10) by DMA, an error and its sense.
build(1, 0, h2d(0xA0, 0xFFFE << 8, device=0), [(BUF, 96)], acmd=bytes([0x12, 0, 0, 0, 96]))
pw(1, 0x38, 1)
run_queue()
show("inquiry", 1)
print("inquiry %s" % bytes(ram.b[BUF + 8:BUF + 32]))
build(1, 1, h2d(0xA0, 0, features=1, device=0), [(BUF + 0x1000, 8192)],
      acmd=bytes([0x28, 0, 0, 0, 0, 5, 0, 0, 4]))
pw(1, 0x38, 2)
run_queue()
show("read10", 1)
print("read10 sum %08x" % csum(ram.mv[BUF + 0x1000:BUF + 0x3000]))
build(1, 2, h2d(0xA0, 0, features=1, device=0), [(BUF, 2048)],
      acmd=bytes([0x28, 0, 0, 0, 0, 200, 0, 0, 1]))
pw(1, 0x38, 4)
run_queue()
show("read10 past the end", 1)
restart(1)
build(1, 3, h2d(0xA0, 0xFFFE << 8, device=0), [(BUF, 18)], acmd=bytes([0x03, 0, 0, 0, 18]))
pw(1, 0x38, 8)
run_queue()
print("sense %02x %02x" % (ram.b[BUF + 2], ram.b[BUF + 12]))
# COMRESET.
pw(0, 0x2C, 1)
pw(0, 0x2C, 0)
show("comreset")

# The mix.
OPS = (0x00, 0x20, 0x24, 0x25, 0x30, 0x35, 0x60, 0x61, 0xA0, 0xA1, 0xC8, 0xCA, 0xE7, 0xEC, 0xEF)
rng = Lcg(1234)
for step in range(STEPS):
    p = rng.below(2)
    slots = 0
    for _ in range(1 + rng.below(4)):
        slot = rng.below(32)
        n = rng.pick((0, 1, 8, 255, 65535))
        lba = rng.pick((0, 7, 1018, 1023, 1 << 28, rng.below(2048)))
        fis = h2d(rng.pick(OPS), lba, (slot << 3) if rng.chance(80) else n,
                  features=n if rng.chance(50) else rng.below(65536), device=rng.byte(),
                  control=rng.pick((0, 0, 4)), c=rng.chance(95))
        prds = []
        for _ in range(rng.pick((0, 1, 1, 2))):
            prds.append((rng.pick((BUF + rng.below(1 << 18), 0xFFFF0000, RAM - 256)),
                         rng.pick((512, 4096, 1 << 16, 1 + rng.below(8192)))))
        build(p, slot, fis, prds, write=rng.chance(30),
              acmd=bytes([rng.pick((0x00, 0x03, 0x12, 0x25, 0x28, 0x43, 0xFF))]
                         + [rng.byte() for _ in range(11)]))
        slots |= 1 << slot
    pw(p, 0x34, slots if rng.chance(70) else (rng.next() << 1) & 0xFFFFFFFF)
    pw(p, 0x38, slots)
    if rng.chance(40):
        while queue and rng.chance(70):
            queue.pop(rng.below(len(queue)))()
    if rng.chance(10):
        pw(p, 0x2C, 1)
        pw(p, 0x2C, 0)
    if rng.chance(25):
        restart(p)
    if step % 50 == 49:
        show("mix %d" % step, p)
run_queue()
for p in (0, 1):
    restart(p)
    pw(p, 0x34, 0)
    build(p, 0, h2d(0xEC if p == 0 else 0xA1, device=0), [(BUF, 512)])
    pw(p, 0x38, 1)
    run_queue()
    show("after the mix", p)
print("disk sum %08x pins %d" % (csum(hd_data), ram.pins))
