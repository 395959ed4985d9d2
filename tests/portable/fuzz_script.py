# A short structure-aware fuzz of the whole machine (stubdm.machine.Machine,
# the Dispatcher and the ioreq loop), on both interpreters: requests built
# from the ranges, PCI functions and BARs the machine claims (as
# host_sim/fuzz.py builds them, with this folder's portable generator),
# with a fixed seed. It prints a running digest of every answer and the
# hypervisor calls, and any exception, IRQ line left inconsistent or value
# wider than its access; tests/test_micropython_portable.py compares the
# output of MicroPython with CPython's. Args: [steps] [seed].
import gc
import struct
import sys

from common import Lcg
from ioreq_fakes import Ram

from stubdm import abi, log
from stubdm.ioreq import Dispatcher, IoreqLoop
from stubdm.machine import Machine

log.verbose = 0
STEPS = int(sys.argv[1]) if len(sys.argv) > 1 else 20000
SEED = int(sys.argv[2]) if len(sys.argv) > 2 else 20261202
RAM = 1 << 20
ALL = 0xFFFFFFFFFFFFFFFF
PORT, BUFPORT = 5, 9
VALUES = (0, 1, 2, 4, 7, 0x0F, 0x10, 0x1F, 0x40, 0x55, 0x7F, 0x80, 0xAA, 0xFE, 0xFF, 0x100,
          0x8000, 0xFFFF, 0x80000000, 0xFFFFFFFF)


class Platform:
    """Counts hypervisor calls; keeps what the platform last saw of each line."""

    def __init__(self):
        self.calls = 0
        self.isa = bytearray(16)
        self.intx = {}
        self.errors = 0

    def set_isa_irq_level(self, irq, level):
        self.calls += 1
        if 0 <= irq < 16 and level in (0, 1):
            self.isa[irq] = level
        else:
            self.errors += 1

    def set_pci_intx_level(self, dev, pin, level):
        self.calls += 1
        self.intx[(dev, pin)] = level

    def set_pci_link_route(self, link, irq):
        self.calls += 1
        if not (0 <= link < 4 and 0 <= irq < 16):
            self.errors += 1

    def map_range(self, kind, start, end):
        self.calls += 1
        if start > end:
            self.errors += 1

    def unmap_range(self, kind, start, end):
        self.calls += 1

    def map_pcidev(self, devfn):
        self.calls += 1

    def shutdown(self, reason):
        self.calls += 1

    def set_acpi_s_state(self, state):
        self.calls += 1


class Hyp:
    """The ioreq loop's hypervisor calls; keeps counts only (a long run stays small)."""

    def __init__(self):
        self.notified = 0

    def barrier(self):
        pass

    def notify(self, port):
        self.notified += 1

    def bufioreq_consume(self, page, n):
        rp = struct.unpack_from("<I", page, 0)[0]
        struct.pack_into("<I", page, 0, (rp + n) & 0xFFFFFFFF)


class Sink:
    def __init__(self):
        self.n = 0

    def write(self, data):
        self.n += len(data)

    def flush(self):
        pass


def main():
    rng = Lcg(SEED)
    plat = Platform()
    m = Machine(plat, [Sink(), Sink()], RAM, True, (0,))
    ram, hyp = Ram(RAM), Hyp()
    irqs = getattr(m, "irqs", None)
    d = Dispatcher(m.pio, m.mmio, m.pci, ram, irqs) if irqs is not None else \
        Dispatcher(m.pio, m.mmio, m.pci, ram)
    page, buf = bytearray(4096), bytearray(4096)
    loop = IoreqLoop(hyp, d, page, [PORT], buf, BUFPORT)
    funcs = list(m.pci)
    # ISA lines and where they go (COM1 IRQ 4, keyboard 1, mouse 12).
    lines = [(m.uarts[0].irq, 4), (m.i8042.kbd_irq, 1), (m.i8042.aux_irq, 12)]
    digest = 0
    findings = 0
    wp = 0
    heap = [] if hasattr(gc, "mem_alloc") else None
    print("machine", " ".join([r.name.replace(" ", "_") for r in m.pio.ranges]),
          " ".join([f.name for f in funcs]))
    for step in range(STEPS):
        targets = [(0, r.start, r.end - r.start) for r in m.pio.ranges] + \
            [(1, r.start, r.end - r.start) for r in m.mmio.ranges]
        k = rng.below(100)
        t, addr, data, count, size, rd, ptr, df = 0, 0, 0, 1, 1, 0, 0, 0
        if k < 55:
            space, start, length = rng.pick(targets)
            t = abi.IOREQ_TYPE_COPY if space else abi.IOREQ_TYPE_PIO
            addr = start + (rng.below(length) if length <= 4096 else rng.below(64))
            size = rng.pick((1, 1, 2, 4, 8, 3, 0)) if space else rng.pick((1, 1, 1, 2, 4, 3))
            rd = rng.below(2)
            data = 0 if rd else rng.pick(VALUES) if rng.chance(50) else rng.next() & 0xFFFF
        elif k < 80:
            f = rng.pick(funcs)
            reg = rng.below(0x40) if rng.chance(70) else rng.below(256)
            if rng.chance(20):
                reg = 0x10 + 4 * rng.below(6)  # BARs: size them, move them
            t, size, rd = abi.IOREQ_TYPE_PCI_CONFIG, rng.pick((1, 2, 4, 4)), rng.below(2)
            addr = (f.devfn << 32) | reg
            if not rd:
                data = rng.pick((0xFFFFFFFF, 0xC000, 0x3F8, 0x60, 0xCF8, 0xE0000000, 7, 0x407)) \
                    if rng.chance(60) else rng.next()
        elif k < 90:
            space, start, length = rng.pick(targets)
            t = abi.IOREQ_TYPE_COPY if space else abi.IOREQ_TYPE_PIO
            addr = start + rng.below(min(length, 8))
            size = rng.pick((1, 2, 4))
            count = rng.pick((1, 2, 17, 64, 4096 // size, 4097))
            ptr, rd, df = 1, rng.below(2), 1 if rng.chance(20) else 0
            data = rng.pick((0x1000, RAM - 2, RAM, 0, ALL - 1))
        elif k < 95:
            a = rng.pick(targets)
            item = abi.pack_buf_ioreq(abi.IOREQ_TYPE_PIO if a[0] == 0 else abi.IOREQ_TYPE_COPY,
                                      0, 1, (a[1] + rng.below(min(a[2], 8))) & 0xFFFFF,
                                      rng.byte())
            s = wp % 511
            buf[8 + 8 * s : 16 + 8 * s] = item
            wp += 1
            struct.pack_into("<I", buf, 4, wp & 0xFFFFFFFF)
            t = -1
        else:
            t = rng.pick((abi.IOREQ_TYPE_INVALIDATE, abi.IOREQ_TYPE_TIMEOFFSET, 3, 200))
            data, size, rd = rng.next(), 8, rng.below(2)
        calls0 = plat.calls
        try:
            if t < 0:
                loop.on_port(BUFPORT)
            else:
                page[0:32] = abi.pack_ioreq(addr, data, count, size, PORT, 1, ptr, rd, df, t)
                loop.on_port(PORT)
        except Exception as e:  # noqa: BLE001 - an escape is what we look for
            findings += 1
            print("step", step, "exception", type(e).__name__)
            continue
        if t >= 0:
            got = struct.unpack_from("<Q", page, 8)[0]
            if rd and not ptr:
                digest = (digest * 31 + got) & 0xFFFFFFFF
                if size in (1, 2, 4) and got >> (8 * size) and t <= 2:
                    print("step", step, "wide %x size %d type %d" % (got, size, t))
        digest = (digest * 31 + plat.calls - calls0) & 0xFFFFFFFF
        # Every IRQ line's level, as the platform last saw it, is the device's.
        for f in funcs:
            if f.irq_pin and f.intx_asserted != plat.intx.get((f.devfn >> 3, f.irq_pin - 1), 0):
                findings += 1
                print("step", step, "intx of", f.name, "inconsistent")
        for line, irq in lines:
            if line.level != plat.isa[irq]:
                findings += 1
                print("step", step, "IRQ", irq, "inconsistent")
        if m.reset_requested:
            m.reset_requested = False
        if heap is not None and step % 5000 == 4999:
            gc.collect()
            heap.append(gc.mem_alloc())
        if step % 500 == 499:
            print("step", step + 1, "digest %08x" % digest, "calls", plat.calls,
                  "errors", plat.errors, "ram", ram.b[0x1000], ram.b[RAM - 1])
    if heap is not None and len(heap) >= 4:
        # MicroPython: the live heap must not grow after warm-up (CPython prints the same).
        grew = heap[-1] - heap[1]
        sys.stderr.write("heap samples %s\n" % heap)
        if grew > 20000:
            findings += 1
            print("heap grew by more than 20000 bytes")
    print("done", STEPS, "findings", findings, "digest %08x" % digest,
          "guest errors", log.count("guest_error") > 0)


main()
