# The device state stream (stubdm/savestate.py) on both runtimes: a whole machine
# (chipset, COM1 and a pci-serial, i8042, IDE with a disk and a CD, AHCI, both NICs)
# driven to a random state through its buses, saved, loaded into a fresh machine and
# saved again; every step's bytes printed as a CRC-32, so CPython and MicroPython must
# write the same stream and refuse the same damaged ones.
import sys

from common import Lcg

from stubdm import block, log, savestate
from stubdm.machine import Machine

log.verbose = 0

STEPS = int(sys.argv[1]) if len(sys.argv) > 1 else 400


class Platform:
    def __init__(self):
        self.calls = []

    def __getattr__(self, name):
        def call(*args):
            self.calls.append((name,) + args)
        return call


class Net:
    mac = b"\x52\x54\x00\x12\x34\x56"

    def __getattr__(self, name):
        return lambda *a, **k: None


class Mem:
    def read(self, a, n):
        return None

    def lock(self, a, n):
        return None

    def write(self, a, b):
        return False


def machine():
    disks = [block.MemoryDisk(bytearray(64 * 1024)),
             block.MemoryDisk(bytearray(64 * 1024), cdrom=True, readonly=True),
             block.MemoryDisk(bytearray(64 * 1024))]
    p = Platform()
    m = Machine(p, [None, None], 64 << 20, pci_serial_slots=(0,),
                ide={"drives": [(0, 0, disks[0]), (1, 0, disks[1])], "mem": Mem()},
                ahci={"disks": [disks[2]], "mem": Mem()},
                nics=[("rtl8139", 0, Net(), None), ("e1000", 0, Net(), None)], nic_mem=Mem())
    return m, p


def poke(m, r, steps):
    ports = (0x3F8, 0x3F9, 0x3FA, 0x3FB, 0x3FC, 0x3FF, 0x60, 0x64, 0x1F1, 0x1F2, 0x1F3,
             0x1F4, 0x1F5, 0x1F6, 0x176, 0x3F6, 0x92, 0xCF9)
    devfns = m.pci.devfns()
    for _ in range(steps):
        k = r.below(3)
        if k == 0:
            m.pio.write(r.pick(ports), 1, r.byte())
        elif k == 1:
            m.pio.read(r.pick(ports), 1)
        else:
            m.pci.config_write(r.pick(devfns), r.pick((0x04, 0x10, 0x14, 0x3C, 0x40, 0x60)),
                               1, r.byte())
    # A sector of IDENTIFY half read: a PIO transfer stands mid-way.
    m.pio.write(0x1F6, 1, 0xA0)
    m.pio.write(0x1F7, 1, 0xEC)
    for _ in range(50):
        m.pio.read(0x1F0, 2)


def main():
    r = Lcg(13)
    m, _ = machine()
    poke(m, r, STEPS)
    data = savestate.save_machine(m)
    print("saved", len(data), savestate.crc32(data))
    m2, p2 = machine()
    before = len(p2.calls)
    savestate.load_machine(m2, data)
    again = savestate.save_machine(m2)
    print("loaded and saved again: same", again == data)
    print("platform calls on load", len(p2.calls) - before)
    # The next accesses answer alike on both machines.
    out = []
    for port in (0x1F0, 0x1F0, 0x1F7, 0x3FD, 0x3F8, 0x64, 0x60):
        out.append((m.pio.read(port, 2 if port == 0x1F0 else 1),
                    m2.pio.read(port, 2 if port == 0x1F0 else 1)))
    print("read-backs", out, all(a == b for a, b in out))
    # Damaged streams: refused, the machine untouched.
    m3, _ = machine()
    ref = savestate.save_machine(m3)
    for name, bad in (("truncated", data[:len(data) - 9]), ("flipped", data[:40] + bytes(
            [data[40] ^ 4]) + data[41:]), ("empty", b""), ("magic", b"XTUBDMDS" + data[8:])):
        try:
            savestate.load_machine(m3, bad)
            print(name, "accepted")
        except savestate.StateError as e:
            print(name, "refused:", str(e)[:60])
    recs = savestate.read_records(data)
    newer = savestate.write_records([(n, v + (1 if n == "i8042" else 0), f)
                                     for n, v, f in recs])
    try:
        savestate.load_machine(m3, newer)
        print("newer accepted")
    except savestate.StateError as e:
        print("newer refused:", str(e)[:70])
    print("untouched", savestate.save_machine(m3) == ref)
    v = {"a": [1, -2, 1 << 70, b"\x00\x01", "x", None, True], "b": {"c": False}}
    print("codec", savestate.decode(savestate.encode(v)) == v,
          savestate.crc32(savestate.encode(v)))


main()
