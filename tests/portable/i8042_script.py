# Drive stubdm.devices.i8042.I8042 (ports 0x60/0x64, keyboard and mouse)
# with a deterministic pseudo-random sequence; print every byte read, the
# IRQ1/IRQ12 levels and the reset/A20 callbacks. Compared between CPython
# and MicroPython by tests/test_micropython_portable.py.
import sys

from common import Lcg, Recorder, show

from stubdm import log
from stubdm.devices.i8042 import I8042
from stubdm.irq import IrqLine

log.verbose = 0

STEPS = int(sys.argv[1]) if len(sys.argv) > 1 else 3000

# Controller commands (port 0x64), weighted towards the ones firmware uses.
CTRL_CMDS = (
    0x20, 0x60, 0xA7, 0xA8, 0xA9, 0xAA, 0xAB, 0xAD, 0xAE, 0xC0, 0xD0, 0xD1,
    0xD2, 0xD3, 0xD4, 0xDD, 0xDF, 0xF0, 0xFE, 0xFF, 0xA1, 0x21, 0x7F,
)
# Keyboard commands and arguments (port 0x60).
KBD_BYTES = (
    0xED, 0x07, 0xEE, 0xF0, 0x00, 0x01, 0x02, 0xF2, 0xF3, 0x2B, 0xF4, 0xF5,
    0xF6, 0xFA, 0xFC, 0xFF, 0xAB, 0x1C,
)
# Mouse commands and arguments (sent after 0xD4).
AUX_BYTES = (
    0xE6, 0xE7, 0xE8, 0x03, 0xE9, 0xEA, 0xEB, 0xEC, 0xEE, 0xF0, 0xF2, 0xF3,
    200, 100, 80, 0xF4, 0xF5, 0xF6, 0xFF, 0x0A,
)
# Set-2 scancodes: a, shift, enter, release prefix, extended prefix, arrows.
SCANCODES = (
    b"\x1c", b"\xf0\x1c", b"\x12", b"\xf0\x12", b"\x5a", b"\xe0\x75",
    b"\xe0\xf0\x75", b"\x76", b"\xe1\x14\x77\xe1\xf0\x14\xf0\x77",
)


def main():
    rng = Lcg(0x8042)
    kbd_rec = Recorder("irq1")
    aux_rec = Recorder("irq12")
    kbd_irq = IrqLine(kbd_rec)
    aux_irq = IrqLine(aux_rec)
    resets = Recorder("reset")
    a20 = Recorder("a20")
    k = I8042(kbd_irq, aux_irq, resets, a20)
    line = []
    for step in range(STEPS):
        op = rng.below(100)
        if op < 35:
            off = rng.pick((0, 0, 0, 4, 4, 1, 5))
            size = 1 if rng.chance(95) else 2
            line.append("r%d=%x" % (off, k.read(off, size)))
        elif op < 50:
            cmd = rng.pick(CTRL_CMDS) if rng.chance(85) else rng.byte()
            k.write(4, 1, cmd)
            line.append("c%x" % cmd)
        elif op < 65:
            b = rng.pick(KBD_BYTES) if rng.chance(85) else rng.byte()
            k.write(0, 1, b)
            line.append("d%x" % b)
        elif op < 75:
            b = rng.pick(AUX_BYTES) if rng.chance(85) else rng.byte()
            k.write(4, 1, 0xD4)
            k.write(0, 1, b)
            line.append("m%x" % b)
        elif op < 85:
            sc = rng.pick(SCANCODES)
            k.key_event(sc)
            line.append("k%d" % len(sc))
        elif op < 95:
            dx = rng.below(600) - 300
            dy = rng.below(600) - 300
            dz = rng.below(5) - 2
            buttons = rng.below(8)
            k.mouse_event(dx, dy, dz, buttons)
            line.append("mv%d,%d,%d,%d" % (dx, dy, dz, buttons))
        elif op < 97:
            k.write(rng.pick((1, 2, 3, 5, 6, 7)), 1, rng.byte())
            line.append("wx")
        elif op < 99:
            st = k.state()
            k.reset()
            k.load_state(st)
            line.append("sr")
        else:
            k.reset()
            line.append("reset")
        line.append("i%d%d" % (kbd_irq.level, aux_irq.level))
        r = resets.take()
        if r:
            line.append("RESET%d" % len(r))
        a = a20.take()
        if a:
            line.append("a20=" + ",".join(["%d" % e[0] for e in a]))
        if len(line) >= 16:
            print(" ".join(line))
            line = []
    if line:
        print(" ".join(line))
    print("irq1 transitions", len(kbd_rec.events), "irq12 transitions", len(aux_rec.events))
    print("state", show(k.state()))
    print("guest errors", log.count("guest_error"), "unimp", log.count("unimp"))


main()
