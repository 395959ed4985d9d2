# A guest's-eye driver for the AHCI model in-process: the register and memory
# sequences Linux's libahci uses (port start, command headers and tables,
# H2D FISes, PRDTs, NCQ with PxSACT), over the device core.
import struct

from stubdm.block import MemoryDisk
from stubdm.devices import ahci

from tests.devices.ide_helpers import FakeMemory

RAM = 16 << 20
CLB = 0x10000  # each port's command list: CLB + port * 0x1000
FB = 0x80000  # FIS receive areas: FB + port * 0x100
CT = 0x100000  # command tables: CT + port * 0x10000 + slot * 0x800
BUF = 0x400000  # data buffers


class Memory(FakeMemory):
    def write(self, gpa, data):
        if gpa < 0 or gpa + len(data) > len(self.ram):
            return False
        self.ram[gpa:gpa + len(data)] = data
        return True


def disk(sectors, pattern=True, **kw):
    data = bytearray(sectors * 512)
    if pattern:
        for s in range(sectors):
            data[s * 512:s * 512 + 8] = struct.pack("<Q", s * 0x10001 + 7)
    return MemoryDisk(data, **kw)


def h2d(cmd, lba=0, count=0, features=0, device=0x40, control=0, c=True):
    f = bytearray(20)
    f[0] = 0x27
    f[1] = 0x80 if c else 0
    f[2] = cmd
    f[3] = features & 0xFF
    f[4], f[5], f[6] = lba & 0xFF, (lba >> 8) & 0xFF, (lba >> 16) & 0xFF
    f[7] = device
    f[8], f[9], f[10] = (lba >> 24) & 0xFF, (lba >> 32) & 0xFF, (lba >> 40) & 0xFF
    f[11] = (features >> 8) & 0xFF
    f[12], f[13] = count & 0xFF, (count >> 8) & 0xFF
    f[15] = control
    return f


class Rig:
    def __init__(self, disks, defer=False):
        self.mem = Memory(RAM)
        self.queue = []
        if defer:
            for d in disks:
                if d is not None:
                    d.defer = self._defer
        self.disks = disks
        self.hba = ahci.Ahci(self.mem, disks)
        self.levels = []
        orig = self.hba.set_irq

        def set_irq(level):
            self.levels.append(level)
            orig(level)

        self.hba.set_irq = set_irq
        self.hba.config_write(0x04, 2, 0x0006)  # memory and bus mastering on
        self.hba.config_write(0x24, 4, 0xFEBF0000)
        self.abar = self.hba.bar_handler(5)

    def _defer(self, fn):
        self.queue.append(fn)

    # --- registers -----------------------------------------------------------------
    def r(self, off):
        return self.abar.read(off, 4)

    def w(self, off, v):
        self.abar.write(off, 4, v)

    def pr(self, port, off):
        return self.r(0x100 + port * 0x80 + off)

    def pw(self, port, off, v):
        self.w(0x100 + port * 0x80 + off, v)

    @property
    def line(self):
        return self.hba.intx_asserted

    def run_deferred(self, order=None):
        q = self.queue
        self.queue = []
        if order is not None:
            rest = [q[i] for i in range(len(q)) if i not in order]
            q = [q[i] for i in order]
            self.queue = rest
        for fn in q:
            fn()
        return len(q)

    def drain(self):
        n = 0
        while self.queue and n < 100000:
            n += self.run_deferred()
        return n

    # --- libahci's port start ---------------------------------------------------------
    def start(self, port=0, irq=True):
        self.w(0x04, 0x80000000)  # GHC.AE
        self.pw(port, 0x00, CLB + port * 0x1000)
        self.pw(port, 0x04, 0)
        self.pw(port, 0x08, FB + port * 0x100)
        self.pw(port, 0x0C, 0)
        self.pw(port, 0x30, 0xFFFFFFFF)  # SERR
        self.pw(port, 0x10, 0xFFFFFFFF)  # IS
        self.pw(port, 0x18, self.pr(port, 0x18) | 0x10)  # FRE
        self.pw(port, 0x18, self.pr(port, 0x18) | 0x01)  # ST
        self.pw(port, 0x10, 0xFFFFFFFF)  # the signature FIS's DHRS
        if irq:
            self.pw(port, 0x14, 0x7DC0007F)  # libahci's DEF_PORT_IRQ
            self.w(0x04, 0x80000002)

    # --- commands ------------------------------------------------------------------
    def ctba(self, port, slot):
        return CT + port * 0x10000 + slot * 0x800

    def build(self, port, slot, fis, prds=(), write=False, atapi=None, flags=0):
        """A command header and table: prds are (address, byte count) pairs."""
        ct = self.ctba(port, slot)
        table = bytearray(0x80 + 16 * len(prds))
        table[0:len(fis)] = fis
        if atapi is not None:
            table[0x40:0x40 + len(atapi)] = atapi
        for i, (addr, n) in enumerate(prds):
            struct.pack_into("<IIII", table, 0x80 + 16 * i, addr & 0xFFFFFFFF, addr >> 32, 0,
                             (n - 1) & 0x3FFFFF)
        self.mem.write(ct, table)
        dw0 = 5 | (len(prds) << 16) | (0x40 if write else 0) | (0x20 if atapi else 0) | flags
        hdr = struct.pack("<IIII", dw0, 0, ct, 0) + bytes(16)
        self.mem.write(CLB + port * 0x1000 + slot * 32, hdr)

    def issue(self, port, slots):
        self.pw(port, 0x38, slots)

    def prdbc(self, port, slot):
        return struct.unpack_from("<I", self.mem.ram, CLB + port * 0x1000 + slot * 32 + 4)[0]

    def rfis(self, port, off, n):
        a = FB + port * 0x100 + off
        return bytes(self.mem.ram[a:a + n])

    def buf(self, addr, n):
        return bytes(self.mem.ram[addr:addr + n])
