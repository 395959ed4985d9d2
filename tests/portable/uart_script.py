# Drive stubdm.devices.uart16550.Uart16550 with a deterministic pseudo-random
# sequence and print every read value and the IRQ level after each step.
# Run under CPython and MicroPython by tests/test_micropython_portable.py:
# the outputs must be identical (CPython is the oracle).
import sys

from common import Lcg, Recorder, hexs, show

from stubdm import log
from stubdm.devices.uart16550 import Uart16550
from stubdm.irq import IrqLine

log.verbose = 0  # guest errors are counted, not printed

STEPS = int(sys.argv[1]) if len(sys.argv) > 1 else 3000

# Values worth writing to each register, besides plain random bytes.
INTERESTING = (
    (0, (0x41, 0x00, 0xFF, 0x0D)),  # THR / DLL
    (1, (0x00, 0x01, 0x02, 0x03, 0x05, 0x0F, 0xF0)),  # IER / DLM
    (2, (0x00, 0x01, 0x07, 0x41, 0x81, 0xC1, 0xC7, 0x06)),  # FCR
    (3, (0x03, 0x83, 0x80, 0x1B, 0x00)),  # LCR
    (4, (0x00, 0x0B, 0x1F, 0x10, 0x18, 0x13, 0x08)),  # MCR (loopback 0x10)
    (5, (0x00, 0xFF)),  # LSR (read-only)
    (6, (0x00, 0xFF)),  # MSR (read-only)
    (7, (0x55, 0xAA)),  # SCR
)


class Chardev:
    def __init__(self):
        self.out = bytearray()

    def write(self, data):
        self.out += data


def main():
    rng = Lcg(0x16550)
    sink = Recorder("irq4")
    irq = IrqLine(sink)
    chardev = Chardev()
    u = Uart16550(irq, "com1", chardev)
    line = []
    for step in range(STEPS):
        op = rng.below(100)
        if op < 40:
            off = rng.below(8)
            size = 1 if rng.chance(90) else rng.pick((2, 4, 8, 3))
            v = u.read(off, size)
            line.append("r%d.%d=%x" % (off, size, v))
        elif op < 75:
            off = rng.below(8)
            if rng.chance(70):
                v = rng.pick(INTERESTING[off][1])
            else:
                v = rng.byte()
            size = 1 if rng.chance(95) else rng.pick((2, 4))
            if size > 1:
                v |= rng.byte() << 8
            u.write(off, size, v)
            line.append("w%d.%d=%x" % (off, size, v))
        elif op < 85:
            n = rng.below(20) + 1
            room = u.can_receive()
            data = rng.bytes_(n)
            u.receive(data)
            line.append("rx%d/%d" % (n, room))
        elif op < 88:
            u.receive_break()
            line.append("brk")
        elif op < 93:
            armed = 1 if u.rx_timer_armed else 0
            u.rx_timeout()
            line.append("to%d" % armed)
        elif op < 98:
            lines = rng.below(16)
            u.set_modem_lines(lines & 1, lines & 2, lines & 4, lines & 8)
            line.append("ml%x" % lines)
        elif op < 99:
            # Save, reset, restore: the device must come back the same.
            st = u.state()
            u.reset()
            u.load_state(st)
            line.append("sr")
        else:
            u.reset()
            line.append("reset")
        line.append("i%d" % irq.level)
        if len(line) >= 16:
            print(" ".join(line))
            line = []
    if line:
        print(" ".join(line))
    print("irq transitions", len(sink.events))
    print("tx", len(chardev.out), hexs(chardev.out[:64]))
    print("state", show(u.state()))
    print("guest errors", log.count("guest_error"))


main()
