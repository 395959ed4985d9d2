# Drive stubdm.devices.e1000 as Linux's e1000 does (Microwire EEPROM, MDIC,
# TX with context descriptors, checksum offload and TSO, the RX ring), then
# with a deterministic pseudo-random mix of register accesses, descriptor
# garbage and received frames; print what the guest and the wire see.
# Run under CPython and MicroPython by tests/test_micropython_portable.py:
# the outputs must be identical (CPython is the oracle).
import struct
import sys

from common import Lcg, hexs
from rtl8139_script import MAC, Ram, digest, tcp_frame

from stubdm import log
from stubdm.devices import e1000 as E
from stubdm.net import MemoryNet

log.verbose = 0

STEPS = int(sys.argv[1]) if len(sys.argv) > 1 else 3000
RAM = 1 << 20


def eeprom_word(nic, addr):
    eecd = nic.read(E.EECD, 4) | E.EECD_REQ
    nic.write(E.EECD, 4, eecd)
    eecd &= ~(E.EECD_DI | E.EECD_SK)
    nic.write(E.EECD, 4, eecd)
    eecd |= E.EECD_CS
    nic.write(E.EECD, 4, eecd)
    cmd = (6 << 6) | addr
    for i in range(8, -1, -1):
        eecd &= ~E.EECD_DI
        if cmd & (1 << i):
            eecd |= E.EECD_DI
        nic.write(E.EECD, 4, eecd)
        nic.write(E.EECD, 4, eecd | E.EECD_SK)
        nic.write(E.EECD, 4, eecd)
    v = 0
    for _ in range(16):
        nic.write(E.EECD, 4, eecd | E.EECD_SK)
        eecd = nic.read(E.EECD, 4) & ~E.EECD_DI
        v = (v << 1) | (1 if eecd & E.EECD_DO else 0)
        eecd &= ~E.EECD_SK
        nic.write(E.EECD, 4, eecd)
    nic.write(E.EECD, 4, eecd & ~(E.EECD_CS | E.EECD_REQ))
    return v


def scenario(nic, net, ram):
    print("id", hex(nic.config_read(0, 4)))
    words = [eeprom_word(nic, a) for a in range(64)]
    print("eeprom", hexs(bytes(words[0:3][0].to_bytes(2, "little"))), hex(sum(words) & 0xFFFF))
    nic.write(E.MDIC, 4, E.MDIC_OP_READ | (1 << 21) | (E.PHY_ID2 << 16))
    print("mdic", hex(nic.read(E.MDIC, 4)))
    nic.write(E.CTRL, 4, E.CTRL_RST)
    nic.write(E.TDBAL, 4, 0x10000)
    nic.write(E.TDLEN, 4, 256)
    nic.write(E.TCTL, 4, E.TCTL_EN)
    for i in range(8):
        ram.write(0x11000 + 16 * i, struct.pack("<QQ", 0x20000 + 0x800 * i, 0))
    nic.write(E.RDBAL, 4, 0x11000)
    nic.write(E.RDLEN, 4, 128)
    nic.write(E.RCTL, 4, E.RCTL_EN | E.RCTL_BAM)
    nic.write(E.RDT, 4, 7)
    nic.write(E.IMS, 4, 0x9D)
    f = bytearray(tcp_frame(b"portable" * 100, b"\x00\x16\x3e\x00\x00\x02", MAC))
    f[16:18] = b"\x00\x00"
    ram.write(0x30000, f)
    ctx = struct.pack("<BBHBBHII", 14, 24, 33, 34, 50, 0,
                      (len(f) - 54) | ((E.TXD_DEXT | E.TUCMD_IP | E.TUCMD_TCP | E.TXD_TSE) << 24),
                      (54 << 8) | (300 << 16))
    dat = struct.pack("<QII", 0x30000, len(f) | (1 << 20)
                      | ((E.TXD_DEXT | E.TXD_TSE | E.TXD_EOP | E.TXD_RS) << 24),
                      (E.POPTS_TXSM | E.POPTS_IXSM) << 8)
    ram.write(0x10000, ctx)
    ram.write(0x10010, dat)
    nic.write(E.TDT, 4, 2)
    print("sent", digest(net.sent))
    net.sent = []
    back = tcp_frame(b"back" * 30, MAC, b"\x00\x16\x3e\x00\x00\x02")
    net.deliver(back)
    net.deliver(b"\xff" * 6 + back[6:])
    for i in range(3):
        print("rxd", i, hexs(ram.read(0x11000 + 16 * i + 8, 8)))
    print("icr", hex(nic.read(E.ICR, 4)), "irq", nic.intx_asserted)


def main():
    ram = Ram(RAM)
    net = MemoryNet(MAC, tx_room=1 << 30)
    nic = E.E1000(net, ram)
    scenario(nic, net, ram)
    rng = Lcg(0x1000E)
    offs = (E.CTRL, E.STATUS, E.EECD, E.EERD, E.MDIC, E.ICR, E.ICS, E.IMS, E.IMC, E.RCTL,
            E.TCTL, E.RDBAL, E.RDLEN, E.RDH, E.RDT, E.TDBAL, E.TDLEN, E.TDH, E.TDT, E.RXCSUM,
            E.MTA, E.RA, E.RA + 4, 0x4074, 0x4080, E.VET, E.ITR)
    vals = (0, 1, 2, 7, 8, 0x80, 0x100, 0x2000, 0xFFFF, 0x10000, 0x11000, 0x8000002,
            0xFFFFFFFF)
    line = []
    for step in range(STEPS):
        op = rng.below(100)
        if op < 35:
            off = rng.pick(offs) if rng.chance(80) else rng.below(0x20000) & ~3
            line.append("r%x=%x" % (off, nic.read(off, 4)))
        elif op < 75:
            off = rng.pick(offs) if rng.chance(80) else rng.below(0x20000) & ~3
            if off == E.CTRL and rng.chance(80):
                continue
            v = rng.pick(vals) if rng.chance(60) else rng.next()
            nic.write(off, 4, v)
            line.append("w%x" % off)
        elif op < 85:
            a = rng.pick((0x10000, 0x11000, 0x20000)) + 16 * rng.below(16)
            ram.write(a, struct.pack("<IIII", rng.below(RAM), rng.below(2), rng.next(),
                                     rng.next()))
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
    print("guest errors", log.count("guest_error") > 0)


main()
