# The PCI bus with the machine's functions (stubdm.pci + i440fx + piix3 +
# platform_pci, and the PCI 16550): configuration dumps, BAR sizing and
# moves, PIRQ routing, INTx, the Xen platform ports, then a deterministic
# pseudo-random stream of configuration and BAR accesses. Compared between
# CPython and MicroPython by tests/test_micropython_portable.py.
import sys

from common import Lcg, Recorder, show

from stubdm import log
from stubdm.devices.i440fx import I440fxHostBridge
from stubdm.devices.pci_serial import PciSerial
from stubdm.devices.piix3 import Piix3Isa
from stubdm.devices.platform_pci import XenPlatformPci, XenPlatformPorts
from stubdm.devices.uart16550 import Uart16550
from stubdm.irq import IrqLine
from stubdm.pci import PciBus

log.verbose = 0

STEPS = int(sys.argv[1]) if len(sys.argv) > 1 else 3000

HB, ISA, PLATFORM, SERIAL = 0x00, 0x08, 0x10, 0x18


def dump(bus, devfn):
    words = []
    for off in range(0, 256, 4):
        words.append("%08x" % bus.config_read(devfn, off, 4))
    print("cfg %02x.%d" % (devfn >> 3, devfn & 7))
    for i in range(0, 64, 8):
        print("  %02x: %s" % (i * 4, " ".join(words[i : i + 8])))


def size_bar(bus, devfn, index):
    off = 0x10 + 4 * index
    old = bus.config_read(devfn, off, 4)
    bus.config_write(devfn, off, 4, 0xFFFFFFFF)
    probe = bus.config_read(devfn, off, 4)
    bus.config_write(devfn, off, 4, old)
    return probe


def main():
    intx = Recorder("intx")
    bars = Recorder("bar")
    routes = Recorder("route")
    unplugs = Recorder("unplug")
    lines = Recorder("log")
    roms = Recorder("rom")

    def bar_sink(function, index, kind, old, new, size):
        bars(function.name, index, kind, old, new, size)

    bus = PciBus(intx, bar_sink)
    hb = I440fxHostBridge(ram_size=512 << 20)
    isa = Piix3Isa(routes)
    ports = XenPlatformPorts(unplugs, lines, roms)
    plat = XenPlatformPci(ports)
    uart_irq = IrqLine()
    uart = Uart16550(uart_irq, "pci-uart")
    ser = PciSerial(uart, irq=uart_irq)
    bus.attach(HB, hb)
    bus.attach(ISA, isa)
    bus.attach(PLATFORM, plat)
    bus.attach(SERIAL, ser)
    print("devfns", bus.devfns(), "len", len(bus))
    print("names", [f.name for f in bus])
    for devfn in bus.devfns():
        dump(bus, devfn)
    print("absent", "%x" % bus.config_read(0x20, 0, 4), "%x" % bus.config_read(0x20, 2, 2))

    # BAR sizing, placement and decoding, as firmware does it.
    for devfn, f in ((PLATFORM, plat), (SERIAL, ser)):
        for index, kind, size in f.bars():
            print("bar", f.name, index, kind, "%x" % size, "probe %08x" % size_bar(bus, devfn, index))
    bus.config_write(PLATFORM, 0x10, 4, 0xC000)
    bus.config_write(PLATFORM, 0x14, 4, 0xF0000000)
    bus.config_write(SERIAL, 0x10, 4, 0xC100)
    bus.config_write(PLATFORM, 0x04, 2, 0x0003)
    bus.config_write(SERIAL, 0x04, 2, 0x0001)
    for e in bars.take():
        print("bar_changed", show(e))
    print("mapping", plat.bar_mapping(0), plat.bar_mapping(1), ser.bar_mapping(0))

    # PIRQ routing through PIIX3 0x60-0x63.
    bus.config_write(ISA, 0x60, 4, 0x0B0A8005)
    bus.config_write(ISA, 0x61, 1, 0x0D)  # reserved code: a guest error
    print("routes", show(routes.take()), [isa.pirq(i) for i in range(4)])

    # INTx from the UART behind the PCI BAR, gated by INTx disable.
    ser.bar_write(0, 1, 1, 0x02)  # IER: THR empty interrupt
    print("intx after IER", show(intx.take()), "status %04x" % ser.status)
    bus.config_write(SERIAL, 0x04, 2, 0x0401)
    print("intx disabled", show(intx.take()), ser.intx_asserted, bus.intx_level(3, 0))
    bus.config_write(SERIAL, 0x04, 2, 0x0001)
    print("intx enabled", show(intx.take()), ser.bar_read(0, 2, 1))
    print("intx after IIR read", show(intx.take()))

    # Xen platform device: magic, version, unplug, log line, ROM lock.
    print("magic %x version %x" % (ports.read(0, 2), ports.read(2, 1)))
    ports.write(0, 2, 0x0003)
    ports.write(2, 2, 1)
    ports.write(0, 4, 0x1234)
    for c in b"hello xen\n":
        plat.bar_write(0, 8, 1, c)
    plat.bar_write(0, 0, 1, 1)
    print("unplugs", show(unplugs.take()), "lines", show(lines.take()), "rom", show(roms.take()))
    print("platform state", show(plat.state()["ports"]))
    print("mmio", plat.bar_read(1, 0x100, 4), plat.bar_read(1, 0xFFFFFC, 8))

    # Pseudo-random configuration and BAR accesses, hostile ones included.
    rng = Lcg(0x1237)
    devfns = (HB, ISA, PLATFORM, SERIAL, 0x20, 0x09)
    out = []
    for step in range(STEPS):
        devfn = rng.pick(devfns)
        op = rng.below(100)
        if op < 40:
            size = rng.pick((1, 2, 4, 4, 3))
            off = rng.below(260)
            out.append("r%x.%x.%d=%x" % (devfn, off, size, bus.config_read(devfn, off, size)))
        elif op < 80:
            size = rng.pick((1, 2, 4))
            off = rng.pick((0x04, 0x06, 0x0C, 0x10, 0x14, 0x3C, 0x60, 0x62, 0x59, 0x72, rng.below(256)))
            v = rng.next() if rng.chance(60) else 0xFFFFFFFF
            bus.config_write(devfn, off, size, v)
            out.append("w%x.%x.%d" % (devfn, off, size))
        elif op < 90:
            f = bus.find(devfn)
            if f is not None and f.bars():
                index = rng.pick(f.bars())[0]
                off = rng.below(16)
                size = rng.pick((1, 2, 4, 8))
                out.append("b%x.%d.%x=%x" % (devfn, index, off, f.bar_read(index, off, size)))
        elif op < 95:
            f = bus.find(devfn)
            if f is not None and f.bars():
                index = rng.pick(f.bars())[0]
                off = rng.below(16)
                f.bar_write(index, off, 1, rng.byte())
                out.append("bw%x.%d.%x" % (devfn, index, off))
        elif op < 98:
            f = bus.find(devfn)
            if f is not None:
                st = f.state()
                f.reset()
                f.load_state(st)
                out.append("sr%x" % devfn)
        else:
            f = bus.find(devfn)
            if f is not None:
                f.reset()
                out.append("reset%x" % devfn)
        ev = intx.take()
        if ev:
            out.append("intx" + show(ev))
        ev = bars.take()
        for e in ev:
            out.append("bar" + show(e))
        if len(out) >= 12:
            print(" ".join(out))
            out = []
    if out:
        print(" ".join(out))
    for devfn in bus.devfns():
        dump(bus, devfn)
    print("routes", len(routes.take()), "unplugs", show(unplugs.take()), "rom", show(roms.take()))
    print("lines", show(lines.take()))
    print("guest errors", log.count("guest_error"), "unimp", log.count("unimp"))


main()
