# Whole-rep I/O on both interpreters: the same pseudo-random stream of
# single accesses and reps (page-sized ones included, df too) goes to two
# sets of the ISA devices, one with the dispatcher handing reps whole to
# read_rep/write_rep and one item by item; after every request the read
# data, guest RAM, IRQ levels, serial output and device states must agree.
# tests/test_rep_bulk.py does it through the fuzzer on CPython; this runs
# the same code paths under MicroPython (compared by
# tests/test_micropython_portable.py).
import sys

from common import Lcg, show
from ioreq_fakes import Hyp, Ram, get, put

from stubdm import abi, log
from stubdm.bus import IoBus
from stubdm.devices.i440fx import PciHostPorts
from stubdm.devices.i8042 import I8042
from stubdm.devices.piix3 import ResetControl
from stubdm.devices.piix4_pm import Piix4Pm
from stubdm.devices.platform_pci import XenPlatformPorts
from stubdm.devices.port92 import Port92
from stubdm.devices.uart16550 import Uart16550
from stubdm.ioreq import Dispatcher, IoreqLoop
from stubdm.irq import IrqLine
from stubdm.machine import Window
from stubdm.pci import PciBus

log.verbose = 0
STEPS = int(sys.argv[1]) if len(sys.argv) > 1 else 1500
RAM = 1 << 16
PORTS = ((0x3F8, 8), (0x60, 1), (0x64, 1), (0x92, 1), (0xB2, 2), (0xAFE0, 4), (0x10, 16),
         (0xCF8, 8))
VALUES = (0xAD, 0xAE, 0xA7, 0xA8, 0x60, 0xD1, 0xD2, 0xD3, 0xD4, 0xF0, 0xF1, 0xF2, 0xF3,
          0xF4, 0xF5, 0xFF, 0xED, 0xEE, 0x80, 0x83, 0x03, 0x0F, 0x01, 0x02, 0x07, 0xC7, 0x10)


class Out:
    def __init__(self):
        self.data = bytearray()

    def write(self, b):
        self.data[len(self.data) :] = bytes(b)


class Rig:
    def __init__(self, bulk):
        self.events = []
        ev = self.events
        self.irqs = [IrqLine(), IrqLine(), IrqLine(), IrqLine()]
        self.out = Out()
        self.uart = Uart16550(self.irqs[0], "com1", self.out)
        self.kbc = I8042(self.irqs[1], self.irqs[2], lambda: ev.append("kbc reset"))
        self.p92 = Port92(lambda: ev.append("p92 reset"))
        self.pm = Piix4Pm(self.irqs[3], lambda b: None, lambda: ev.append("off"),
                          lambda: ev.append("s3"))
        self.plat = XenPlatformPorts(lambda m: ev.append("unplug %d" % m),
                                     lambda line: ev.append("log " + line))
        self.rcr = ResetControl(lambda: ev.append("rcr reset"))
        self.host = PciHostPorts(PciBus(), self.rcr)
        pio = IoBus("pio")
        pio.add(0x3F8, 8, self.uart, "com1")
        pio.add(0x60, 1, Window(self.kbc, 0), "i8042 data")
        pio.add(0x64, 1, Window(self.kbc, 4), "i8042 command")
        pio.add(0x92, 1, self.p92, "port92")
        pio.add(0xB2, 2, self.pm.apm, "apm")
        pio.add(0xAFE0, 4, self.pm.gpe, "gpe0")
        pio.add(0x10, 16, self.plat, "xen platform")
        pio.add(0xCF8, 8, self.host, "pci host")
        self.ram = Ram(RAM)
        d = Dispatcher(pio, IoBus("mmio"), PciBus(), self.ram)
        d.rep_bulk = bulk
        self.loop = IoreqLoop(Hyp(), d, bytearray(4096), [5])

    def states(self):
        return (self.uart.state(), self.kbc.state(), self.p92.state(), self.pm.state(),
                self.plat.state(), self.host.state(), self.rcr.state(),
                [i.level for i in self.irqs], bytes(self.out.data), list(self.events))


def request(rng):
    port, n = rng.pick(PORTS)
    off = rng.below(n)
    if rng.chance(45):
        v = rng.pick(VALUES) if rng.chance(60) else rng.byte()
        return port + off, v, 1, 1, rng.below(2), 0, 0
    size = rng.pick((1, 1, 1, 2, 4))
    count = rng.pick((1, 2, 3, 17, 100, 4096 // size))
    data = rng.below(RAM - count * size) if rng.chance(90) else RAM - 3
    if rng.chance(25):
        data += (count - 1) * size  # df: the items go down from data
        return port + off, data, size, count, rng.below(2), 1, 1
    return port + off, data, size, count, rng.below(2), 1, 0


def main():
    rng = Lcg(2026)
    a, b = Rig(True), Rig(False)
    reps = differ = 0
    for step in range(STEPS):
        if rng.chance(10):
            at, chunk = rng.below(RAM - 64), rng.bytes_(64)
            a.ram.b[at : at + 64] = chunk
            b.ram.b[at : at + 64] = chunk
            continue
        addr, data, size, count, read, ptr, df = request(rng)
        for r in (a, b):
            put(r.loop, 0, abi.IOREQ_TYPE_PIO, addr, data, size, count, read, ptr, df)
            r.loop.on_port(5)
        reps += ptr
        if get(a.loop, 0) != get(b.loop, 0) or a.ram.b != b.ram.b or a.states() != b.states():
            differ += 1
            if differ <= 3:
                print("differ at", step, hex(addr), size, count, read, df)
    print("requests", STEPS, "reps", reps, "differences", differ)
    print(show(a.states()[:7]))
    print("serial", len(a.out.data), "events", len(a.events))


main()
