# Tests of stubdm.pci: configuration space, BARs, INTx, the bus.
# Each test names the rule it pins: PCI Local Bus Specification 3.0 section,
# or the QEMU (hw/pci/pci.c) behaviour that a Xen guest has always seen.
import random

import pytest

from stubdm import log
from stubdm.irq import IrqLine
from stubdm.pci import PciBus, PciFunction, wire_irq
from stubdm.devices.pci_serial import PciSerial


@pytest.fixture(autouse=True)
def quiet_log():
    old = log.verbose
    log.verbose = 0
    log.reset_counts()
    yield
    log.verbose = old


class Recorder:
    """A BAR handler that remembers every access."""

    def __init__(self, fill=0x5A):
        self.fill = fill
        self.reads = []
        self.writes = []

    def read(self, offset, size):
        self.reads.append((offset, size))
        return (self.fill * 0x0101010101010101) & ((1 << (8 * size)) - 1)

    def write(self, offset, size, value):
        self.writes.append((offset, size, value))


def make_function(**kw):
    f = PciFunction("test", 0x1234, 0x5678, 0x020000, revision=3, subsys_vendor=0xAAAA,
                    subsys_id=0xBBBB, irq_pin=kw.pop("irq_pin", 1), **kw)
    f.add_bar(0, 0x100, "io", Recorder())
    f.add_bar(1, 0x1000000, "mem", Recorder(), prefetch=True)
    f.add_bar(2, 0x100000, "mem", Recorder(), mem64=True)
    return f


def make_bus(*functions):
    events = {"intx": [], "bar": []}
    bus = PciBus(
        intx_sink=lambda dev, pin, level: events["intx"].append((dev, pin, level)),
        bar_sink=lambda fn, idx, kind, old, new, size: events["bar"].append(
            (fn.name, idx, kind, old, new, size)
        ),
    )
    for devfn, f in functions:
        bus.attach(devfn, f)
    return bus, events


IDENTITY = ((0x00, 4), (0x08, 4), (0x0E, 1), (0x2C, 4), (0x3D, 1))


def identity(f):
    return [f.config_read(off, size) for off, size in IDENTITY]


def test_identity_fields_read_little_endian():
    # PCI 3.0 6.1: vendor/device at 0, class code at 9-0xb, little-endian.
    f = make_function()
    assert f.config_read(0x00, 4) == 0x56781234
    assert f.config_read(0x00, 2) == 0x1234
    assert f.config_read(0x03, 1) == 0x56
    assert f.config_read(0x08, 4) == 0x02000003
    assert f.config_read(0x2C, 4) == 0xBBBBAAAA
    assert f.config_read(0x3D, 1) == 1


def test_identity_fields_are_read_only():
    # PCI 3.0 6.1: vendor, device, revision, class, header type, subsystem
    # and interrupt pin are read-only (QEMU's cmask).
    f = make_function()
    before = identity(f)
    for off in (0x00, 0x08, 0x0C, 0x2C, 0x3C):
        f.config_write(off, 4, 0xFFFFFFFF)
        f.config_write(off, 4, 0)
    assert identity(f) == before


def test_command_writable_bits():
    # QEMU pci_init_wmask: IO, MEM, bus master and INTx disable (bit 10).
    f = make_function()
    f.config_write(0x04, 2, 0xFFFF)
    assert f.config_read(0x04, 2) == 0x0507
    f.config_write(0x04, 2, 0)
    assert f.config_read(0x04, 2) == 0


def test_status_write_one_to_clear_and_interrupt_bit_read_only():
    # PCI 3.0 6.2.3: error bits 8, 11-15 are RW1C; bit 3 is read-only.
    f = make_function()
    f.config[0x06] = 0x08
    f.config[0x07] = 0xF9
    f.config_write(0x06, 2, 0x0100)  # clears bit 8 only
    assert f.config_read(0x06, 2) == 0xF808
    f.config_write(0x06, 2, 0xFFFF)
    assert f.config_read(0x06, 2) == 0x0008


def test_latency_cache_line_and_interrupt_line():
    # QEMU: cache line size and interrupt line writable, latency timer 0.
    f = make_function()
    f.config_write(0x0C, 4, 0xFFFFFFFF)
    assert f.config_read(0x0C, 4) == 0x000000FF  # header type 0, BIST 0
    f.config_write(0x3C, 2, 0xFFFF)
    assert f.config_read(0x3C, 2) == 0x01FF  # pin stays INTA


def test_io_bar_sizing_probe():
    # PCI 3.0 6.2.5.1: all ones in, size mask | type bits out.
    f = make_function()
    f.config_write(0x10, 4, 0xFFFFFFFF)
    assert f.config_read(0x10, 4) == 0xFFFFFF01


def test_mem_bar_sizing_probe_prefetchable():
    f = make_function()
    f.config_write(0x14, 4, 0xFFFFFFFF)
    assert f.config_read(0x14, 4) == 0xFF000008


def test_mem64_bar_sizing_probe():
    # PCI 3.0 6.2.5.1: type 10b = 64-bit; the upper dword is all address.
    f = make_function()
    f.config_write(0x18, 4, 0xFFFFFFFF)
    f.config_write(0x1C, 4, 0xFFFFFFFF)
    assert f.config_read(0x18, 4) == 0xFFF00004
    assert f.config_read(0x1C, 4) == 0xFFFFFFFF


def test_unused_bars_and_rom_bar_read_zero():
    # Unimplemented BARs and the expansion ROM BAR (0x30) are hardwired 0.
    f = make_function()
    for off in (0x20, 0x24, 0x30):
        f.config_write(off, 4, 0xFFFFFFFF)
        assert f.config_read(off, 4) == 0


def test_bar_changed_on_enable_move_disable():
    # QEMU pci_update_mappings: a BAR decodes when its space is enabled in
    # the command register and its address is not 0.
    f = make_function()
    bus, ev = make_bus((0x18, f))
    f.config_write(0x10, 4, 0xC001)
    assert ev["bar"] == []  # I/O decode still off
    f.config_write(0x04, 2, 0x0001)
    assert ev["bar"] == [("test", 0, "io", None, 0xC000, 0x100)]
    assert f.bar_mapping(0) == 0xC000
    f.config_write(0x10, 4, 0xC100)
    assert ev["bar"][-1] == ("test", 0, "io", 0xC000, 0xC100, 0x100)
    f.config_write(0x04, 2, 0x0000)
    assert ev["bar"][-1] == ("test", 0, "io", 0xC100, None, 0x100)
    assert len(ev["bar"]) == 3


def test_bar_rewritten_with_same_address_is_quiet():
    f = make_function()
    bus, ev = make_bus((0x18, f))
    f.config_write(0x14, 4, 0xF0000000)
    f.config_write(0x04, 2, 0x0002)
    f.config_write(0x14, 4, 0xF0000000)
    f.config_write(0x04, 2, 0x0006)  # bus master: no decode change
    assert ev["bar"] == [("test", 1, "mem", None, 0xF0000000, 0x1000000)]


def test_sizing_probe_while_decoding_unmaps():
    # QEMU pci_bar_address: a range reaching the top of the space (where the
    # all-ones probe leaves it) does not decode; address 0 does not either.
    f = make_function()
    bus, ev = make_bus((0x18, f))
    f.config_write(0x14, 4, 0xF0000000)
    f.config_write(0x04, 2, 0x0002)
    f.config_write(0x14, 4, 0xFFFFFFFF)
    assert ev["bar"][-1] == ("test", 1, "mem", 0xF0000000, None, 0x1000000)
    f.config_write(0x14, 4, 0xE0000000)
    assert ev["bar"][-1] == ("test", 1, "mem", None, 0xE0000000, 0x1000000)
    f.config_write(0x14, 4, 0)
    assert ev["bar"][-1] == ("test", 1, "mem", 0xE0000000, None, 0x1000000)


def test_io_bar_beyond_64k_does_not_decode():
    # Deliberate: x86 in/out reach 16-bit ports only.
    f = make_function()
    bus, ev = make_bus((0x18, f))
    f.config_write(0x04, 2, 0x0001)
    f.config_write(0x10, 4, 0x10001)
    assert ev["bar"] == []
    f.config_write(0x10, 4, 0xFF01)
    assert ev["bar"] == [("test", 0, "io", None, 0xFF00, 0x100)]


def test_mem64_bar_above_4g():
    f = make_function()
    bus, ev = make_bus((0x18, f))
    f.config_write(0x04, 2, 0x0002)
    f.config_write(0x1C, 4, 0x1)  # the high dword alone gives a non-zero base
    assert ev["bar"] == [("test", 2, "mem", None, 0x100000000, 0x100000)]
    f.config_write(0x18, 4, 0x00200000)
    assert ev["bar"][-1] == ("test", 2, "mem", 0x100000000, 0x100200000, 0x100000)
    assert f.bar_mapping(2) == 0x100200000


def test_attach_announces_decoding_bars():
    f = make_function()
    f.config_write(0x10, 4, 0xC000)
    f.config_write(0x04, 2, 0x0001)
    bus, ev = make_bus((0x18, f))
    assert ev["bar"] == [("test", 0, "io", None, 0xC000, 0x100)]


def test_bar_read_write_forward_to_handler():
    f = make_function()
    assert f.bar_read(0, 0x10, 2) == 0x5A5A
    f.bar_write(1, 0x20, 4, 0x11223344)
    assert f._bars[0].handler.reads == [(0x10, 2)]
    assert f._bars[1].handler.writes == [(0x20, 4, 0x11223344)]


def test_bar_access_outside_bar_is_a_guest_error():
    # devices/__init__.py: undecoded reads all ones, writes dropped, logged.
    f = make_function()
    assert f.bar_read(0, 0xFF, 2) == 0xFFFF
    f.bar_write(3, 0, 4, 1)
    assert f.bar_read(7, 0, 1) == 0xFF
    assert log.count("guest_error") == 3
    assert f._bars[0].handler.reads == []


def test_config_unaligned_within_dword_is_a_legal_cycle():
    # PCI 3.0 3.2.2.3.2: a config cycle is one dword + byte enables; a word
    # at offset 1 is byte enables 0110.
    f = make_function()
    assert f.config_read(0x01, 2) == 0x7812
    f.config_write(0x3C, 4, 0)
    f.config_write(0x3D, 2, 0xFFFF)  # pin, min_gnt: read-only
    assert log.count("guest_error") == 0


def test_config_access_crossing_a_dword():
    # The CPU splits the access at 0xcff/0xd00: only the bytes in the dword
    # reach config space; the rest reads all ones and is lost on write.
    f = make_function()
    assert f.config_read(0x03, 2) == 0xFF56
    assert f.config_read(0x02, 4) == 0xFFFF5678
    f.config_write(0x3B, 4, 0x00000B00)  # byte 0x3b only (0x3c not reached)
    assert f.config_read(0x3C, 1) == 0
    f.config_write(0x3F, 2, 0x0B00)
    assert f.config_read(0x3C, 1) == 0
    assert log.count("guest_error") == 4


def test_config_bad_size_and_offset():
    f = make_function()
    assert f.config_read(0x00, 3) == 0xFFFFFF
    assert f.config_read(0x00, 8) == 0xFFFFFFFFFFFFFFFF
    assert f.config_read(-4, 4) == 0xFFFFFFFF
    assert f.config_read(0x1000, 4) == 0xFFFFFFFF
    f.config_write(0x3C, 3, 0xFFFFFF)
    assert f.config_read(0x3C, 1) == 0
    assert log.count("guest_error") == 5


def test_extended_config_space_reads_all_ones_quietly():
    # QEMU pci_host_config_read_common: beyond 256 bytes of a conventional
    # function, ~0 and no complaint (Linux probes 0x100 for PCIe caps).
    f = make_function()
    assert f.config_read(0x100, 4) == 0xFFFFFFFF
    f.config_write(0x100, 4, 0)
    assert log.count("guest_error") == 0


def test_device_specific_area_is_read_write():
    # QEMU pci_init_wmask: 0x40-0xff is guest-writable.
    f = make_function()
    f.config_write(0x40, 4, 0xDEADBEEF)
    f.config_write(0xFC, 4, 0x01020304)
    assert f.config_read(0x40, 4) == 0xDEADBEEF
    assert f.config_read(0xFC, 4) == 0x01020304


def test_intx_asserts_through_bus_and_status_bit3():
    # PCI 3.0 6.2.3: status bit 3 shows the function's interrupt state.
    f = make_function(irq_pin=2)
    bus, ev = make_bus((3 << 3 | 1, f))
    f.set_irq(1)
    assert ev["intx"] == [(3, 1, 1)]
    assert f.config_read(0x06, 2) & 0x08
    f.set_irq(1)
    assert ev["intx"] == [(3, 1, 1)]
    f.set_irq(0)
    assert ev["intx"] == [(3, 1, 1), (3, 1, 0)]
    assert not f.config_read(0x06, 2) & 0x08


def test_intx_disable_masks_the_pin_but_not_status():
    # PCI 3.0 6.2.2 bit 10: INTx disable drops the pin; status bit 3 still
    # shows the device's level; clearing it re-asserts a pending interrupt.
    f = make_function()
    bus, ev = make_bus((0x10, f))
    f.set_irq(1)
    f.config_write(0x04, 2, 0x0400)
    assert ev["intx"] == [(2, 0, 1), (2, 0, 0)]
    assert f.config_read(0x06, 2) & 0x08
    f.config_write(0x04, 2, 0x0000)
    assert ev["intx"][-1] == (2, 0, 1)
    f.config_write(0x05, 1, 0x04)  # byte write to command's upper half
    assert ev["intx"][-1] == (2, 0, 0)
    f.set_irq(0)
    f.config_write(0x05, 1, 0x00)
    assert ev["intx"][-1] == (2, 0, 0)
    assert len(ev["intx"]) == 4
    assert not f.config_read(0x06, 2) & 0x08


def test_intx_wire_or_between_functions_of_one_device():
    # Xen's set_pci_intx_level holds one level per (device, pin): the bus
    # ORs the functions that share it.
    a = make_function()
    b = PciFunction("b", 1, 2, 0, irq_pin=1)
    bus, ev = make_bus((0x20, a), (0x21, b))
    a.set_irq(1)
    b.set_irq(1)
    a.set_irq(0)
    assert ev["intx"] == [(4, 0, 1)]
    b.set_irq(0)
    assert ev["intx"] == [(4, 0, 1), (4, 0, 0)]


def test_function_without_pin_never_drives_intx():
    f = make_function(irq_pin=0)
    bus, ev = make_bus((0x20, f))
    f.set_irq(1)
    assert ev["intx"] == []


def test_irq_line_helpers():
    f = make_function()
    bus, ev = make_bus((0x20, f))
    line = f.irq_line()
    line.set_level(1)
    assert ev["intx"] == [(4, 0, 1)]
    line2 = IrqLine()
    line2.set_level(1)
    g = PciFunction("g", 1, 2, 0, irq_pin=1)
    wire_irq(line2, g)
    assert g.intx_asserted == 1


def test_bus_absent_function_and_order():
    f = make_function()
    g = PciFunction("g", 1, 2, 0)
    bus, ev = make_bus((0x18, f), (0x00, g))
    assert bus.config_read(0x08, 0, 4) == 0xFFFFFFFF
    assert bus.config_read(0x08, 0, 2) == 0xFFFF
    bus.config_write(0x08, 0x04, 2, 7)
    assert bus.config_read(0x18, 0, 2) == 0x1234
    assert bus.find(0x18) is f and bus.find(0x08) is None
    assert bus.devfns() == [0x00, 0x18]
    assert [x.name for x in bus] == ["g", "test"]
    with pytest.raises(ValueError):
        bus.attach(0x18, PciFunction("h", 1, 2, 0))
    assert log.count("guest_error") == 0


def test_add_bar_rejects_bad_declarations():
    f = PciFunction("x", 1, 2, 0)
    with pytest.raises(ValueError):
        f.add_bar(0, 0x300, "io", Recorder())
    with pytest.raises(ValueError):
        f.add_bar(0, 2, "io", Recorder())
    with pytest.raises(ValueError):
        f.add_bar(5, 0x1000, "mem", Recorder(), mem64=True)
    f.add_bar(0, 0x1000, "mem", Recorder(), mem64=True)
    with pytest.raises(ValueError):
        f.add_bar(1, 0x100, "io", Recorder())


def test_reset_clears_guest_state():
    # QEMU pci_do_device_reset: writable command bits, interrupt line, cache
    # line and BAR addresses cleared; INTx dropped.
    f = make_function()
    bus, ev = make_bus((0x18, f))
    f.config_write(0x10, 4, 0xC000)
    f.config_write(0x04, 2, 0x0001)
    f.config_write(0x3C, 1, 11)
    f.set_irq(1)
    f.reset()
    assert f.config_read(0x04, 2) == 0
    assert f.config_read(0x10, 4) == 0x1
    assert f.config_read(0x3C, 1) == 0
    assert ev["bar"][-1] == ("test", 0, "io", 0xC000, None, 0x100)
    assert ev["intx"][-1] == (3, 0, 0)


def test_state_round_trip_remaps_and_reasserts():
    f = make_function()
    f.config_write(0x10, 4, 0xC000)
    f.config_write(0x04, 2, 0x0001)
    f.set_irq(1)
    saved = f.state()
    g = make_function()
    bus, ev = make_bus((0x18, g))
    g.load_state(saved)
    assert g.config_read(0x10, 4) == 0xC001
    assert ev["bar"] == [("test", 0, "io", None, 0xC000, 0x100)]
    assert ev["intx"] == [(3, 0, 1)]
    assert g.state() == saved


def test_load_state_refuses_another_device():
    # QEMU get_pci_config_device: read-only identity must match.
    saved = PciFunction("other", 1, 2, 0).state()
    f = make_function()
    with pytest.raises(ValueError):
        f.load_state(saved)


def test_hostile_config_writes_never_raise_nor_touch_read_only_fields():
    # The guest is hostile (STYLE.md): 20000 random accesses, every offset and
    # size including bad ones; identity and BAR type bits never change.
    rng = random.Random(1234)
    f = make_function()
    bus, ev = make_bus((0x18, f))
    before = identity(f)
    for _ in range(20000):
        off = rng.randrange(-8, 0x110)
        size = rng.choice((0, 1, 2, 3, 4, 4, 4, 8))
        if rng.random() < 0.5:
            f.config_write(off, size, rng.getrandbits(64))
        else:
            v = f.config_read(off, size)
            assert 0 <= v < (1 << 64)
        if rng.random() < 0.01:
            f.set_irq(rng.getrandbits(1))
    assert identity(f) == before
    assert f.config_read(0x10, 4) & 0x3 == 0x1
    assert f.config_read(0x14, 4) & 0xF == 0x8
    assert f.config_read(0x18, 4) & 0xF == 0x4
    assert f.config_read(0x30, 4) == 0
    # Every reported mapping change is consistent: each new base was later
    # the old one of the next change of the same BAR.
    last = {}
    for name, idx, kind, old, new, size in ev["bar"]:
        assert last.get(idx) == old
        last[idx] = new
    for idx in (0, 1, 2):
        assert f.bar_mapping(idx) == last.get(idx)


class FakeUart:
    def __init__(self):
        self.regs = bytearray(8)
        self.accesses = []

    def read(self, offset, size):
        self.accesses.append(("r", offset, size))
        return self.regs[offset]

    def write(self, offset, size, value):
        self.accesses.append(("w", offset, size, value))
        self.regs[offset] = value


def test_pci_serial_identity():
    # QEMU hw/char/serial-pci.c: 1b36:0002 rev 1, class 0x070002,
    # default subsystem 1af4:1100, INTA, BAR0 8-byte I/O.
    fn = PciSerial(FakeUart())
    assert fn.config_read(0x00, 4) == 0x00021B36
    assert fn.config_read(0x08, 4) == 0x07000201
    assert fn.config_read(0x2C, 4) == 0x11001AF4
    assert fn.config_read(0x3D, 1) == 1
    fn.config_write(0x10, 4, 0xFFFFFFFF)
    assert fn.config_read(0x10, 4) == 0xFFFFFFF9


def test_pci_serial_forwards_byte_wide_and_routes_irq():
    # QEMU serial_io_ops are byte-wide: a word access is two byte accesses.
    uart = FakeUart()
    line = IrqLine()
    fn = PciSerial(uart, irq=line)
    bus, ev = make_bus((3 << 3, fn))
    fn.bar_write(0, 0, 2, 0x0201)
    assert uart.accesses == [("w", 0, 1, 0x01), ("w", 1, 1, 0x02)]
    assert fn.bar_read(0, 0, 2) == 0x0201
    line.set_level(1)
    assert ev["intx"] == [(3, 0, 1)]
    assert fn.config_read(0x06, 2) & 0x08
