# stubdm.ioreq's Dispatcher and IoreqLoop over bytearray pages laid out as
# Xen's (like tests/test_ioreq.py), with real device cores behind the buses:
# the fixed cases of test_ioreq.py, then a deterministic pseudo-random stream
# of synchronous and buffered requests, hostile ones included. Compared
# between CPython and MicroPython by tests/test_micropython_portable.py.
import struct
import sys

from common import Lcg, hexs
from ioreq_fakes import Hyp, Ram, Regs, get, put, state  # noqa: F401

from stubdm import abi, log
from stubdm.bus import IoBus
from stubdm.devices.i440fx import I440fxHostBridge
from stubdm.devices.i8042 import I8042
from stubdm.devices.uart16550 import Uart16550
from stubdm.ioreq import Dispatcher, IoreqLoop
from stubdm.irq import IrqLine
from stubdm.pci import PciBus

log.verbose = 0

STEPS = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
RAM = 1 << 16
ALL = 0xFFFFFFFFFFFFFFFF


def show_slot(loop, vcpu):
    addr, data, count, size, port, pad, flags, type_ = get(loop, vcpu)
    return "%x/%x/%d/%d/%02x/%d" % (addr, data, count, size, flags, type_)


def make_rig():
    pio, mmio = IoBus("pio"), IoBus("mmio")
    uart_irq, kbd_irq, aux_irq = IrqLine(), IrqLine(), IrqLine()
    uart = Uart16550(uart_irq, "com1")
    kbc = I8042(kbd_irq, aux_irq, lambda: None)
    regs, low = Regs(), Regs()
    pio.add(0x3F8, 8, uart, "uart")
    pio.add(0x60, 5, kbc, "i8042")
    mmio.add(0xFEB00000, 16, regs, "regs")
    mmio.add(0xA0000, 16, low, "low")
    pci = PciBus()
    pci.attach(0, I440fxHostBridge(ram_size=RAM))
    ram, hyp = Ram(RAM), Hyp()
    d = Dispatcher(pio, mmio, pci, ram)
    offsets = []
    d.on_timeoffset = offsets.append
    page, buf = bytearray(4096), bytearray(4096)
    loop = IoreqLoop(hyp, d, page, [5, 6], buf, 9)
    return loop, regs, low, ram, hyp, uart_irq, offsets


def fixed_cases():
    loop, regs, low, ram, hyp, uart_irq, offsets = make_rig()
    log.reset_counts()
    # UART scratch register round trip, then LSR.
    put(loop, 0, abi.IOREQ_TYPE_PIO, 0x3FF, 0x1A5, size=1)
    loop.on_port(5)
    put(loop, 1, abi.IOREQ_TYPE_PIO, 0x3FF, 0xDEAD, size=1, read=1)
    loop.on_port(6)
    print("scr", show_slot(loop, 1), "notified", hyp.notified)
    put(loop, 0, abi.IOREQ_TYPE_PIO, 0x3FD, size=1, read=1)
    loop.on_port(5)
    print("lsr", show_slot(loop, 0))
    # Unclaimed port: all ones.
    put(loop, 0, abi.IOREQ_TYPE_PIO, 0x80, size=2, read=1)
    loop.on_port(5)
    print("unclaimed", show_slot(loop, 0), log.count("guest_error"))
    # MMIO qword.
    put(loop, 0, abi.IOREQ_TYPE_COPY, 0xFEB00008, 0x1122334455667788, size=8)
    loop.on_port(5)
    put(loop, 0, abi.IOREQ_TYPE_COPY, 0xFEB00008, size=8, read=1)
    loop.on_port(5)
    print("qword", show_slot(loop, 0))
    # rep outsb from guest memory into the UART (THR: loopback off, dropped).
    ram.write(0x1000, b"hello")
    put(loop, 0, abi.IOREQ_TYPE_COPY, 0xFEB00000, 0x1000, size=1, count=5, ptr=1)
    loop.on_port(5)
    print("rep outsb", hexs(regs.regs[0:5]))
    # rep insw backwards.
    regs.regs[0:2] = b"\x34\x12"
    put(loop, 0, abi.IOREQ_TYPE_COPY, 0xFEB00000, 0x2004, size=2, count=3, read=1, ptr=1, df=1)
    loop.on_port(5)
    print("rep insw df", hexs(ram.read(0x1FFC, 12)))
    # PCI config of the host bridge and of an absent function.
    sbdf = abi.pci_sbdf(0, 0, 0, 0)
    put(loop, 0, abi.IOREQ_TYPE_PCI_CONFIG, (sbdf << 32) | 0, size=4, read=1)
    loop.on_port(5)
    print("pci id", show_slot(loop, 0))
    put(loop, 0, abi.IOREQ_TYPE_PCI_CONFIG, (sbdf << 32) | 0x59, 0x33, size=1)
    loop.on_port(5)
    put(loop, 0, abi.IOREQ_TYPE_PCI_CONFIG, (sbdf << 32) | 0x58, size=4, read=1)
    loop.on_port(5)
    print("pci pam", show_slot(loop, 0))
    other = abi.pci_sbdf(0, 0, 4, 0)
    put(loop, 0, abi.IOREQ_TYPE_PCI_CONFIG, other << 32, size=4, read=1)
    loop.on_port(5)
    print("pci absent", show_slot(loop, 0))
    # Invalidate and time offset.
    put(loop, 0, abi.IOREQ_TYPE_INVALIDATE, 0)
    loop.on_port(5)
    put(loop, 0, abi.IOREQ_TYPE_TIMEOFFSET, 0, data=(-3600) & ALL, size=8)
    loop.on_port(5)
    print("invalidations", ram.invalidations, "offset", loop.d.time_offset, offsets)
    # Buffered ring wrapping, with an 8-byte item in two slots.
    items = [
        abi.pack_buf_ioreq(abi.IOREQ_TYPE_COPY, 0, 1, 0xA0000, 0x11),
        abi.pack_buf_ioreq(abi.IOREQ_TYPE_COPY, 0, 2, 0xA0002, 0x2233),
        abi.pack_buf_ioreq(abi.IOREQ_TYPE_COPY, 0, 8, 0xA0008, 0x44556677),
        struct.pack("<II", 0, 0x8899AABB),
    ]
    start = 509
    for i in range(len(items)):
        slot = (start + i) % 511
        loop.buf[8 + slot * 8 : 16 + slot * 8] = items[i]
    struct.pack_into("<II", loop.buf, 0, start, start + 4)
    put(loop, 0, abi.IOREQ_TYPE_PIO, 0x3F8, size=1, read=1)
    loop.on_port(5)
    print("buffered", low.log, struct.unpack_from("<II", loop.buf, 0))
    # Hostile requests.
    hostile = (
        (42, 4, 1, 0, 0),
        (abi.IOREQ_TYPE_PIO, 0, 1, 0, 0),
        (abi.IOREQ_TYPE_PIO, 3, 1, 0, 0),
        (abi.IOREQ_TYPE_PIO, 16, 1, 0, 0),
        (abi.IOREQ_TYPE_COPY, 16, 1, 0, 0),
        (abi.IOREQ_TYPE_PIO, 1, 0, 0, 0),
        (abi.IOREQ_TYPE_PIO, 1, 10**9, 1, 0x1000),
        (abi.IOREQ_TYPE_PIO, 4, 2, 1, 1 << 40),
        (abi.IOREQ_TYPE_PIO, 4, 2, 1, 0xFFFFFFFFFFFFFFFC),
    )
    for type_, size, count, ptr, data in hostile:
        for read in (0, 1):
            put(loop, 0, type_, 0x3F8, data, size=size, count=count, ptr=ptr, read=read)
            loop.on_port(5)
            print("hostile", show_slot(loop, 0), state(loop, 0))
    for st in (0, 2, 3, 9, 15):
        put(loop, 0, abi.IOREQ_TYPE_PIO, 0x3F8, 0x41, state=st)
        loop.on_port(5)
        print("not ready", st, show_slot(loop, 0))
    struct.pack_into("<II", loop.buf, 0, 0, 100000)
    put(loop, 0, abi.IOREQ_TYPE_PIO, 0x3F8, size=1, read=1)
    loop.on_port(5)
    print("corrupt ring", struct.unpack_from("<II", loop.buf, 0), state(loop, 0))
    print("irq4", uart_irq.level, "handled", loop.handled, "buffered", loop.buffered)
    print("guest errors", log.count("guest_error"))


def random_stream():
    loop, regs, low, ram, hyp, uart_irq, offsets = make_rig()
    log.reset_counts()
    rng = Lcg(0x10AEC)
    for i in range(0, RAM, 4):
        struct.pack_into("<I", ram.b, i, rng.next())
    ports = (0x3F8, 0x3F9, 0x3FA, 0x3FB, 0x3FC, 0x3FD, 0x3FE, 0x3FF, 0x60, 0x64, 0x80, 0xCF8)
    mm = (0xFEB00000, 0xFEB00004, 0xFEB0000C, 0xA0000, 0xA0008, 0xFEB00010, 0xDEAD0000)
    wp = 0
    out = []
    for step in range(STEPS):
        op = rng.below(100)
        vcpu = rng.below(2)
        read = rng.below(2)
        if op < 35:
            size = rng.pick((1, 1, 1, 2, 4, 8, 3))
            ptr = 1 if rng.chance(10) else 0
            count = rng.below(8) + 1 if ptr else 1
            data = rng.below(RAM) if ptr else rng.next()
            put(loop, vcpu, abi.IOREQ_TYPE_PIO, rng.pick(ports), data, size, count, read, ptr,
                rng.below(2))
        elif op < 60:
            size = rng.pick((1, 2, 4, 8, 8, 16))
            ptr = 1 if rng.chance(15) else 0
            count = rng.below(8) + 1 if ptr else 1
            data = rng.below(RAM) if ptr else (rng.next() << 33) ^ rng.next()
            put(loop, vcpu, abi.IOREQ_TYPE_COPY, rng.pick(mm) + rng.below(4), data, size, count,
                read, ptr, rng.below(2))
        elif op < 75:
            dev = rng.pick((0, 0, 0, 4))
            reg = rng.below(258)
            size = rng.pick((1, 2, 4, 3))
            addr = (abi.pci_sbdf(0, rng.pick((0, 0, 0, 1)), dev, 0) << 32) | reg
            put(loop, vcpu, abi.IOREQ_TYPE_PCI_CONFIG, addr, rng.next(), size, 1, read)
        elif op < 80:
            put(loop, vcpu, rng.pick((abi.IOREQ_TYPE_INVALIDATE, abi.IOREQ_TYPE_TIMEOFFSET, 5, 255)),
                0, (rng.next() << 33) ^ rng.next(), 8, 1, 0)
        else:
            # Buffered writes, one to three items, published before the event.
            n = rng.below(3) + 1
            for j in range(n):
                size = rng.pick((1, 2, 4))
                item = abi.pack_buf_ioreq(
                    abi.IOREQ_TYPE_COPY if rng.chance(70) else abi.IOREQ_TYPE_PIO,
                    1 if rng.chance(5) else 0,
                    size,
                    rng.pick((0xA0000, 0xA0004, 0x3F8, 0x3FF, 0xB0000)),
                    rng.next(),
                )
                slot = wp % 511
                loop.buf[8 + slot * 8 : 16 + slot * 8] = item
                wp = (wp + 1) & 0xFFFFFFFF
            struct.pack_into("<I", loop.buf, 4, wp)
            loop.on_port(9)
            out.append("buf%d" % n)
            continue
        loop.on_port(5 + vcpu)
        out.append(show_slot(loop, vcpu) + ":%d" % state(loop, vcpu))
        if len(out) >= 8:
            print(" ".join(out))
            out = []
    if out:
        print(" ".join(out))
    print("regs", hexs(regs.regs), "low", hexs(low.regs))
    h = 0
    for i in range(0, RAM, 4):
        h = (h * 31 + struct.unpack_from("<I", ram.b, i)[0]) & 0xFFFFFFFF
    print("ram hash %08x" % h, "invalidations", ram.invalidations, "offsets", offsets[-3:])
    print("handled", loop.handled, "buffered", loop.buffered, "notified", len(hyp.notified),
          "barriers", hyp.barriers, "irq4", uart_irq.level)
    print("guest errors", log.count("guest_error"))


fixed_cases()
random_stream()
