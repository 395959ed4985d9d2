# Drive stubdm.devices.rtl8139 as 8139cp and 8139too do (EEPROM, C+ rings
# with checksum offload and large send, the classic ring and TX slots), then
# with a deterministic pseudo-random mix of register accesses, descriptor
# garbage and received frames; print what the guest and the wire see.
# Run under CPython and MicroPython by tests/test_micropython_portable.py:
# the outputs must be identical (CPython is the oracle).
import struct
import sys

from common import Lcg, hexs

from stubdm import log
from stubdm.devices import netutil
from stubdm.devices import rtl8139 as R
from stubdm.net import MemoryNet

log.verbose = 0

STEPS = int(sys.argv[1]) if len(sys.argv) > 1 else 3000
RAM = 1 << 20
MAC = b"\x00\x16\x3e\x5a\x0b\x01"


class Ram:
    """Guest memory for a device model: read/write, None/False outside RAM."""

    def __init__(self, n):
        self.b = bytearray(n)

    def read(self, gpa, n):
        if gpa < 0 or n < 0 or gpa + n > len(self.b):
            return None
        return bytes(self.b[gpa : gpa + n])

    def write(self, gpa, data):
        n = len(data)
        if gpa < 0 or gpa + n > len(self.b):
            return False
        self.b[gpa : gpa + n] = data
        return True


def digest(frames):
    out = []
    for f in frames:
        s = netutil.ones_sum(f, 0, len(f))
        out.append("%d:%04x" % (len(f), s))
    return " ".join(out)


def tcp_frame(payload, dst, src):
    tcp = struct.pack(">HHIIBBHHH", 40000, 80, 1000, 0, 0x50, 0x18, 65535, 0, 0) + payload
    ip = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 0x1234, 0x4000, 64, 6, 0,
                     b"\x0a\x00\x00\x01", b"\x0a\x00\x00\x02")
    return dst + src + b"\x08\x00" + ip + tcp


def eeprom_word(nic, loc, addr_len):
    enb = 0x80 | R.EE_CS
    cmd = loc | (6 << addr_len)
    nic.write(R.CR9346, 1, enb & ~R.EE_CS)
    nic.write(R.CR9346, 1, enb)
    for i in range(4 + addr_len, -1, -1):
        d = R.EE_DI if cmd & (1 << i) else 0
        nic.write(R.CR9346, 1, enb | d)
        nic.write(R.CR9346, 1, enb | d | R.EE_SK)
    nic.write(R.CR9346, 1, enb)
    v = 0
    for _ in range(16):
        nic.write(R.CR9346, 1, enb | R.EE_SK)
        v = (v << 1) | (nic.read(R.CR9346, 1) & 1)
        nic.write(R.CR9346, 1, enb)
    nic.write(R.CR9346, 1, 0)
    return v


def scenario(nic, net, ram):
    print("id", hex(nic.config_read(0, 4)), hex(nic.config_read(8, 1)))
    print("eeprom", hex(eeprom_word(nic, 0, 8) == 0x8129), hex(eeprom_word(nic, 0, 6)),
          hex(eeprom_word(nic, 7, 6)), hex(eeprom_word(nic, 8, 6)), hex(eeprom_word(nic, 9, 6)))
    nic.write(R.CR, 1, R.CR_RST)
    nic.write(R.CPCR, 2, 0x002B)
    for i in range(4):
        opts1 = R.DESC_OWN | 1536 | (R.DESC_EOR if i == 3 else 0)
        ram.write(0x11000 + 16 * i, struct.pack("<IIQ", opts1, 0, 0x20000 + 0x800 * i))
    nic.write(R.RDSAR, 4, 0x11000)
    nic.write(R.TSAD0, 4, 0x10000)
    nic.write(R.CR, 1, R.CR_RE | R.CR_TE)
    nic.write(R.IMR, 2, 0x81FF)
    nic.write(R.RCR, 4, R.RCR_APM | R.RCR_AB)
    f = tcp_frame(b"portable" * 40, b"\x00\x16\x3e\x00\x00\x02", MAC)
    ram.write(0x30000, f)
    ram.write(0x10000, struct.pack("<IIQ", R.DESC_OWN | R.DESC_FS | R.DESC_LS | R.TX_IPCS
                                   | R.TX_TCPCS | len(f), 0, 0x30000))
    ram.write(0x10010, struct.pack("<IIQ", R.DESC_OWN | R.DESC_FS | R.DESC_LS | R.TX_LGSEN
                                   | (100 << 16) | len(f), 0, 0x30000))
    nic.write(R.TPPOLL, 1, R.TPPOLL_NPQ)
    print("sent", digest(net.sent))
    net.sent = []
    back = tcp_frame(b"back" * 30, MAC, b"\x00\x16\x3e\x00\x00\x02")
    net.deliver(back)
    net.deliver(b"\xff" * 6 + back[6:])
    for i in range(3):
        print("rxd", i, hexs(ram.read(0x11000 + 16 * i, 8)))
    print("isr", hex(nic.read(R.ISR, 2)), "irq", nic.intx_asserted)
    nic.write(R.ISR, 2, 0xFFFF)


def main():
    ram = Ram(RAM)
    net = MemoryNet(MAC, tx_room=1 << 30)
    nic = R.Rtl8139(net, ram)
    scenario(nic, net, ram)
    rng = Lcg(0x8139)
    offs = (R.CR, R.CAPR, R.IMR, R.ISR, R.TCR, R.RCR, R.CR9346, R.TSD0, R.TSD0 + 4, R.TSAD0,
            R.RBSTART, R.BMCR, R.BMSR, R.MSR, R.TPPOLL, R.CPCR, R.RDSAR, R.TSAD, R.CBR, R.MPC)
    vals = (0, 1, 0x0C, 0x10, 0x40, 0x80, 0xFF, 0x2000, 0xFFFF, 0x20000, 0x10000, 0xFFFFFFFF)
    line = []
    for step in range(STEPS):
        op = rng.below(100)
        if op < 35:
            off = rng.pick(offs) if rng.chance(80) else rng.below(256)
            size = rng.pick((1, 2, 4))
            if off < R.TCTR + 4 and off + size > R.TCTR:
                continue  # the timer counts real time: not the same twice
            line.append("r%x.%d=%x" % (off, size, nic.read(off, size)))
        elif op < 75:
            off = rng.pick(offs) if rng.chance(80) else rng.below(256)
            size = rng.pick((1, 2, 4))
            v = rng.pick(vals) if rng.chance(60) else rng.next()
            nic.write(off, size, v & ((1 << (8 * size)) - 1))
            line.append("w%x.%d" % (off, size))
        elif op < 85:
            # Garbage (or plausible) descriptors in the rings and buffers.
            a = rng.pick((0x10000, 0x11000, 0x20000)) + 16 * rng.below(8)
            ram.write(a, struct.pack("<IIII", rng.next() | (rng.below(2) << 31), rng.next(),
                                     rng.below(RAM), rng.below(2)))
            line.append("m")
        elif op < 97:
            n = rng.below(1600) + 1
            d = rng.pick((MAC, b"\xff" * 6, b"\x01\x00\x5e\x00\x00\x01", b"\x02" * 6))
            net.deliver(d + rng.bytes_(n))
            line.append("rx%d/%d" % (n, len(net.backlog)))
        elif op < 99:
            st = nic.state()
            nic.reset()
            nic.load_state(st)
            line.append("sr")
        else:
            nic.reset()
            line.append("reset")
        line.append("i%d" % nic.intx_asserted)
        if len(line) >= 16:
            print(" ".join(line))
            line = []
        if len(net.backlog) > 8:
            net.backlog = net.backlog[-4:]
    if line:
        print(" ".join(line))
    print("sent", len(net.sent), digest(net.sent[-8:]))
    print("regs", hexs(nic.regs))
    print("guest errors", log.count("guest_error") > 0)


if __name__ == "__main__":
    main()
