# The xenfv machine's chipset pieces, in-process: the host bridge's ports
# 0xcf8-0xcff, port 0x92, the PIIX4 PM function at 01.3, the PCI layout, the
# machine's IRQ latch and the log's rate limit. Facts pinned: QEMU 11.1's pc
# machine as measured by tests/test_differential.py (0xcf8 sizes, 0x92,
# PIIX4 registers), Xen's hvmloader and libacpi (PMBA 0xb000, PM1a_CNT at
# +4, SCI 9, SLP_TYP S5 = 0 and S3 = 1), QEMU's hw/acpi/core.c
# (acpi_pm1_cnt_write).
import pytest

from stubdm import abi, layout, log
from stubdm.devices.i440fx import PciHostPorts
from stubdm.devices.piix3 import ResetControl
from stubdm.devices.piix4_pm import Piix4Pm
from stubdm.devices.port92 import Port92
from stubdm.ioreq import Dispatcher
from stubdm.irq import IrqLine
from stubdm.machine import Machine


@pytest.fixture(autouse=True)
def quiet_log():
    old = log.verbose
    log.verbose = 0
    log.reset_counts()
    yield
    log.verbose = old
    log._out = None
    log.reset_counts()


class FakePlatform:
    def __init__(self):
        self.calls = []
        self.ranges = set()
        self.pcidevs = []
        self.shutdowns = []

    def set_isa_irq_level(self, irq, level):
        self.calls.append(("isa", irq, level))

    def set_pci_intx_level(self, dev, pin, level):
        self.calls.append(("intx", dev, pin, level))

    def set_pci_link_route(self, link, irq):
        self.calls.append(("route", link, irq))

    def map_range(self, kind, start, end):
        assert (kind, start, end) not in self.ranges
        self.ranges.add((kind, start, end))

    def unmap_range(self, kind, start, end):
        self.ranges.remove((kind, start, end))

    def map_pcidev(self, devfn):
        self.pcidevs.append(devfn)

    def shutdown(self, reason):
        self.shutdowns.append(reason)


class NoMem:
    def read(self, gpa, n):
        return None

    def write(self, gpa, data):
        return False

    def invalidate(self):
        pass


class Ram:
    def __init__(self, size=1 << 16):
        self.b = bytearray(size)

    def read(self, gpa, n):
        if gpa + n > len(self.b):
            return None
        return bytes(self.b[gpa : gpa + n])

    def write(self, gpa, data):
        if gpa + len(data) > len(self.b):
            return False
        self.b[gpa : gpa + len(data)] = data
        return True

    def invalidate(self):
        pass


def machine(mem=None, **kw):
    p = FakePlatform()
    m = Machine(p, [None], 64 << 20, **kw)
    return m, p, Dispatcher(m.pio, m.mmio, m.pci, mem or Ram(), m.irqs)


def pio(d, port, size, value=None):
    if value is None:
        return d.dispatch(abi.IOREQ_TYPE_PIO, port, 0, 1, size, 1, 0, 0)
    d.dispatch(abi.IOREQ_TYPE_PIO, port, value, 1, size, 0, 0, 0)
    return None


def cfg(d, devfn, reg, size=4, value=None):
    addr = (devfn << 32) | reg
    if value is None:
        return d.dispatch(abi.IOREQ_TYPE_PCI_CONFIG, addr, 0, 1, size, 1, 0, 0)
    d.dispatch(abi.IOREQ_TYPE_PCI_CONFIG, addr, value, 1, size, 0, 0, 0)
    return None


# --- layout -----------------------------------------------------------------


def test_layout_is_xenfv():
    m, p, _ = machine(pci_serial_slots=(0,))
    # 00.0 i440FX, 01.0 PIIX3, 01.3 PIIX4 PM, 03.0 platform, 04.0 the first free.
    assert m.pci.devfns() == [0x00, 0x08, 0x0B, 0x18, 0x20]
    assert p.pcidevs == [0x00, 0x08, 0x0B, 0x18, 0x20]
    assert layout.DEVFN_PIIX3_IDE == 0x09 and layout.DEVFN_VGA == 0x10


def test_place_follows_command_line_order():
    assert layout.place([("a", 0), ("b", 0), ("c", 7), ("d", 0)]) == [4, 5, 7, 6]
    for slot in (1, 2, 3):
        with pytest.raises(layout.SlotError, match="slot %d is taken by" % slot):
            layout.place([("pci-serial", slot)])
    with pytest.raises(layout.SlotError, match="slot 4 is taken by pci-serial"):
        layout.place([("pci-serial", 0), ("pci-serial", 4)])
    with pytest.raises(layout.SlotError, match="no free PCI slot"):
        layout.place([("x", 0)] * 29)


# --- 0xcf8-0xcff ----------------------------------------------------------------


def host_ports():
    resets = []
    rcr = ResetControl(lambda: resets.append(1))
    m, _, _ = machine()
    return PciHostPorts(m.pci, rcr), rcr, resets


def test_config_address_latches_only_a_dword_at_0xcf8():
    hp, _, _ = host_ports()
    hp.write(0, 4, 0x92345678)
    for off, size in ((0, 1), (0, 2), (2, 1), (2, 2), (3, 1), (2, 4), (3, 2), (3, 4)):
        hp.write(off, size, 0x01010101 & ((1 << 8 * size) - 1))
    assert hp.read(0, 4) == 0x92345678


def test_config_address_reads_at_every_size():
    # Measured on QEMU 11.1: the low bytes, not shifted; unaligned reads 0;
    # 0xcf9 is PIIX3's reset control repeated in each byte.
    hp, rcr, _ = host_ports()
    hp.write(0, 4, 0x92345678)
    rcr.write(0, 1, 0x02)
    got = {}
    for off in range(4):
        for size in (1, 2, 4):
            got[off, size] = hp.read(off, size)
    assert got == {
        (0, 1): 0x78, (0, 2): 0x5678, (0, 4): 0x92345678,
        (1, 1): 0x02, (1, 2): 0x0202, (1, 4): 0x02020202,
        (2, 1): 0x78, (2, 2): 0x5678, (2, 4): 0,
        (3, 1): 0x78, (3, 2): 0, (3, 4): 0,
    }


def test_reset_control_through_the_host_ports():
    hp, rcr, resets = host_ports()
    hp.write(1, 1, 0x0B)
    assert rcr.value == 0x02 and not resets  # only the reset type is kept
    hp.write(1, 2, 0x0402)  # the second byte has RST_CPU
    assert resets == [1]


def test_config_data_as_a_plain_port():
    hp, _, _ = host_ports()
    hp.write(0, 4, 0x00000000)
    assert hp.read(4, 4) == 0xFFFFFFFF and hp.read(5, 1) == 0xFF
    hp.write(0, 4, 0x80000000)
    assert hp.read(4, 4) == 0x12378086  # the i440FX's ids, through the bus
    assert hp.read(6, 2) == 0x1237
    assert hp.read(5, 2) == 0 and hp.read(6, 4) == 0  # unaligned: QEMU refuses
    hp.write(0, 4, 0x80010000)  # bus 1: nothing there
    assert hp.read(4, 4) == 0xFFFFFFFF


# --- port 0x92 --------------------------------------------------------------------


def test_port92_holds_the_byte_and_resets_on_a_rising_bit0():
    resets = []
    p92 = Port92(lambda: resets.append(1))
    p92.write(0, 1, 0xFE)
    assert p92.read(0, 1) == 0xFE and p92.a20 == 1 and not resets
    p92.write(0, 1, 0x03)
    assert resets == [1]
    p92.write(0, 1, 0x03)  # no edge: nothing
    assert resets == [1]
    p92.reset()
    assert p92.read(0, 1) == 0x02


def test_port92_in_the_machine_reboots():
    m, p, d = machine()
    pio(d, 0x92, 1, 0x02)
    assert pio(d, 0x92, 1) == 0x02
    pio(d, 0x92, 1, 0x03)
    assert p.shutdowns == [abi.SHUTDOWN_reboot] and m.reset_requested


# --- PIIX4 PM ----------------------------------------------------------------------


def pm_machine(**kw):
    m, p, d = machine(**kw)
    # hvmloader's pci_setup for class 0x0680, then acpi_enable_sci.
    cfg(d, 0x0B, 0x3C, 2, 0x0009)
    cfg(d, 0x0B, 0x40, 4, 0xB001)
    cfg(d, 0x0B, 0x80, 1, 0x01)
    pio(d, 0xB2, 1, 0xF1)
    return m, p, d


def test_piix4_identity():
    m, _, d = machine()
    assert cfg(d, 0x0B, 0x00) == 0x71138086
    assert cfg(d, 0x0B, 0x08) == 0x06800003
    assert cfg(d, 0x0B, 0x0C) == 0
    assert cfg(d, 0x0B, 0x2C) == 0x11001AF4
    assert cfg(d, 0x0B, 0x04) == 0x02800000
    assert cfg(d, 0x0B, 0x3C) == 0x0100
    assert cfg(d, 0x0B, 0x40) == 0x01
    assert cfg(d, 0x0B, 0x58) == 0x02000000  # no SMM under Xen
    assert cfg(d, 0x0B, 0x90) == 0xB101


def test_pm1a_cnt_follows_pmba():
    m, p, d = pm_machine()
    port = abi.XEN_DMOP_IO_RANGE_PORT
    assert (port, 0xB004, 0xB005) in p.ranges
    assert pio(d, 0xB004, 2) == 0x0001  # SCI_EN from ACPI_ENABLE
    cfg(d, 0x0B, 0x40, 4, 0xC001)
    assert (port, 0xB004, 0xB005) not in p.ranges and (port, 0xC004, 0xC005) in p.ranges
    cfg(d, 0x0B, 0x80, 1, 0x00)
    assert not [r for r in p.ranges if r[1] in (0xB004, 0xC004)]


def test_pm1a_cnt_sizes_as_qemu():
    m, _, d = pm_machine()
    pio(d, 0xB004, 2, 0x0201)
    assert pio(d, 0xB004, 2) == 0x0201
    pio(d, 0xB004, 1, 0x00)  # QEMU widens it: the high byte becomes 0
    assert pio(d, 0xB004, 2) == 0x0000
    pio(d, 0xB005, 1, 0x03)  # keeps the low byte
    assert pio(d, 0xB004, 2) == 0x0300
    assert pio(d, 0xB005, 1) == 0x03 and pio(d, 0xB004, 1) == 0x00
    assert log.count("guest_error") == 2


def test_poweroff_and_bad_sleep_types():
    m, p, d = pm_machine()
    pio(d, 0xB004, 2, (5 << 10) | 0x2001)  # type 5: not in Xen's tables
    assert p.shutdowns == [] and log.count("guest_error") == 1
    assert pio(d, 0xB004, 2) == (5 << 10) | 1  # stored, SLP_EN is not
    pio(d, 0xB004, 2, (0 << 10) | 0x2001)  # S5
    assert p.shutdowns == [abi.SHUTDOWN_poweroff] and m.reset_requested


def test_s3_without_a_platform_hook_is_survived():
    m, p, d = pm_machine()
    pio(d, 0xB004, 2, (1 << 10) | 0x2001)
    assert m.suspended and p.shutdowns == [] and log.count("unimp") == 1
    m2, p2, d2 = pm_machine(s3=False)
    pio(d2, 0xB004, 2, (1 << 10) | 0x2001)
    assert not m2.suspended and log.count("guest_error") == 1


def test_s3_through_the_platform():
    states = []
    m, p, d = pm_machine()
    p.set_acpi_s_state = states.append
    pio(d, 0xB004, 2, (1 << 10) | 0x2001)
    assert states == [3]


def test_apm_and_gpe0():
    m, p, d = pm_machine()
    pio(d, 0xB3, 1, 0x55)
    assert pio(d, 0xB2, 2) == 0x55F1
    pio(d, 0xB2, 1, 0xF0)
    assert pio(d, 0xB004, 2) & 1 == 0
    pio(d, 0xAFE0, 4, 0xFFFFFFFF)  # status is write-1-to-clear, enable is plain
    assert pio(d, 0xAFE0, 4) == 0xFFFF0000
    pio(d, 0xAFE2, 2, 0x0004)
    del p.calls[:]
    m.pm.raise_gpe(2)
    assert p.calls == [("isa", 9, 1)]
    pio(d, 0xAFE0, 1, 0x04)
    assert p.calls[-1] == ("isa", 9, 0)
    # QEMU's acpi_update_sci looks at the first status/enable byte only.
    n = len(p.calls)
    pio(d, 0xAFE3, 1, 0x02)
    m.pm.raise_gpe(9)
    assert len(p.calls) == n and pio(d, 0xAFE1, 1) == 0x02


# --- IRQ latch --------------------------------------------------------------------


def test_rep_outsb_reports_the_uart_irq_at_most_once():
    # Fuzzing found 8192 set_isa_irq_level calls for one 4 KiB rep outsb to
    # a 16550 with THRE interrupts on; the platform must hear each change of
    # a line once per request at most, and nothing when it ends as it began.
    ram = Ram()
    m, p, d = machine(mem=ram)
    pio(d, 0x3F8 + 1, 1, 0x02)  # IER: THRE
    assert p.calls == [("isa", 4, 1)]
    del p.calls[:]
    d.dispatch(abi.IOREQ_TYPE_PIO, 0x3F8, 0, 4096, 1, 0, 1, 0)
    assert p.calls == []  # raised before, raised after
    pio(d, 0x3F8 + 2, 1)  # IIR read clears the THRE interrupt
    assert p.calls == [("isa", 4, 0)]
    assert m.irqs.reports == 2


def test_irq_changes_out_of_a_request_go_at_once():
    m, p, _ = machine()
    line = m.irqs.isa_line(5)
    line.set_level(1)
    line.set_level(0)
    assert p.calls == [("isa", 5, 1), ("isa", 5, 0)]


# --- log rate limit -------------------------------------------------------------


def test_guest_log_flood_stays_small_and_counts_what_it_dropped():
    log.verbose = 1
    out = []
    log._out = out
    m, p, d = machine()
    ram = Ram()
    d.mem = ram
    ram.b[0:4096] = b"x\n" * 2048
    d.dispatch(abi.IOREQ_TYPE_PIO, 0x12, 0, 4096, 1, 0, 1, 0)  # 2048 log lines
    for i in range(1000):
        pio(d, 0x12, 2, i)  # PV product numbers
    assert len(out) <= 2 * log.BURST
    assert sum(len(x) for x in out) < 4096
    assert log.count("suppressed") >= 2048 + 1000 - 2 * log.BURST
    log.flush_suppressed()
    told = [x for x in out if "similar messages suppressed" in x]
    assert len(told) == 2
    assert sum(int(x.split("(")[1].split()[0]) for x in told) == log.count("suppressed")


def test_long_guest_lines_are_cut():
    log.verbose = 1
    out = []
    log._out = out
    log.guest("guest", "y" * 5000)
    assert len(out[0]) < log.LINE_MAX + 80
