"""Differential tests: stubdm against qemu-xen, both serving host_sim.

The peer here is Xen's own device model, Debian's qemu-system-xen (QEMU
11.1's xenfv machine, as libxl runs it for a dom0 device model, on
host_sim's Xen libraries: host_sim/qemu_xen.py). Both device models serve
the same host_sim hypervisor code through real ioreqs, and the same
scripted guest drives them, so everything between the guest and the device
(Xen's routing of 0xcf8-0xcff, the ranges Xen keeps, buffered writes) is
identical and only the device models differ.

Every script of tests/test_differential.py (16550, i8042, i440FX/PIIX3
config space, 0xcf8 routing, port 0x92, PIIX4 PM) runs here too, lock step,
every read compared, with qemu-xen in the place of QEMU's pc machine under
qtest, and so do those of tests/test_nic_differential.py (rtl8139, e1000 at
00:05.0) and tests/test_ide_differential.py (PIIX3 IDE: disk and ATAPI
CD-ROM, PIO and bus-master DMA); the scripts below add the platform device,
whole config spaces and what only Xen's routing shows. What those modules
leave out on purpose (EEPROM templates, reserved bytes, IDENTIFY words of
QEMU's features) is left out here for the same reasons.

Deliberate differences (each encoded where it applies):

- Slots: qemu-xen's xenfv machine creates the Xen platform device during
  machine init, before the command line's `-device VGA` (libxl's argv for
  stdvga), so the platform device is 00:02.0 and VGA 00:03.0; stubdm keeps
  02.0 for VGA and puts the platform device at 03.0 (stubdm/layout.py, the
  layout qemu-traditional gave). Compared function by function, each at its
  own slot.
- Functions stubdm does not model yet: 01.1 (PIIX3 IDE) and VGA.
- i8042 extended state: `-machine xenfv` is xenfv-4.2, and its
  compatibility properties turn the i8042's "extended-state" off, so
  qemu-xen's controller replies (0xd0 output port, 0xc0 input port, 0xaa
  self test) queue in the keyboard's output buffer instead of being
  overwritten, while stubdm follows QEMU's current pc machine (extended
  state on). The shared scripts run qemu-xen with `-global
  i8042.extended-state=on` so that the rest is compared;
  test_i8042_xenfv_extended_state_off pins the difference as libxl's argv
  gives it to a real guest.
- stubdm runs with its timers (as qemu-xen does): neither clock stands still
  here, unlike QEMU under qtest.
"""
import pytest

from host_sim import qemu_xen
from host_sim.scripted import Session

from tests import test_differential as td
# The qtest suite's scripts, collected here with this module's `both`.
from tests.test_differential import (  # noqa: F401
    test_config_address_reads_at_every_size, test_config_address_reserved_and_bus_bits,
    test_config_address_writes_at_every_size, test_config_data_as_plain_ports,
    test_i8042_command_byte, test_i8042_irq_levels, test_i8042_keyboard_reset_identify_echo,
    test_i8042_random_sequence, test_i8042_status_and_self_test, test_pci_absent_functions,
    test_pci_bar_sizing, test_pci_command_and_status, test_pci_command_serr_writable,
    test_pci_config_space_bytes_and_words, test_pci_config_space_dwords,
    test_pci_writable_registers, test_piix3_pirq_routes, test_piix4_gpe0,
    test_piix4_pm1a_control, test_piix4_pm_base_moves, test_piix4_pm_config_space,
    test_piix4_pm_writable_registers, test_port92, test_uart_divisor_latch,
    test_uart_loopback_echo, test_uart_lsr_after_transmit,
    test_uart_random_sequence, test_uart_reset_values, test_uart_scratch,
    test_uart_thre_interrupt)

MISSING = qemu_xen.missing()
pytestmark = pytest.mark.skipif(MISSING is not None, reason=MISSING or "")

RAM_MIB = td.RAM_MIB
PLATFORM_ID = 0x00015853
PLATFORM_STUBDM = 3  # slot (see the deliberate differences above)
PLATFORM_QEMU_XEN = 2


class Both(td.Both):
    """stubdm (g) and qemu-xen (q), both scripted guests of host_sim."""

    def _fail(self, what, a, b):
        steps = "\n    ".join(self.trail)
        pytest.fail("%s: stubdm %s, qemu-xen %s\n  last steps:\n    %s" % (what, a, b, steps))

    def cfg_pair(self, slots, reg, size=4, fn=0):
        """One register of a function at its own slot on each side, compared."""
        out = []
        for x, dev in zip((self.g, self.q), slots):
            out.append(x.pci_read(dev, fn, reg, size))
        self._note("cfg %s reg 0x%02x/%d -> 0x%x / 0x%x" % (slots, reg, size, out[0], out[1]))
        if out[0] != out[1]:
            self._fail("config reg 0x%02x (slots %s)" % (reg, slots), hex(out[0]), hex(out[1]))
        return out[0]

    def cfg_write_pair(self, slots, reg, value, size=4, fn=0):
        self._note("cfg %s reg 0x%02x/%d <- 0x%x" % (slots, reg, size, value))
        for x, dev in zip((self.g, self.q), slots):
            x.pci_write(dev, fn, reg, value, size)


EXTENDED_STATE_ON = ["-global", "i8042.extended-state=on"]


@pytest.fixture
def both(dm_runtime):
    with Session(dm_args=["-no-timers"], ram_mib=RAM_MIB, runtime=dm_runtime) as s:
        with qemu_xen.QemuXenSession(ram_mib=RAM_MIB, dm_args_extra=EXTENDED_STATE_ON) as q:
            yield Both(s, q.guest)


# Controller commands whose replies the two machines keep differently.
_KBD_SEQ = (("o", 0x60, 0xED), ("o", 0x60, 0x02), ("o", 0x64, 0xD0), ("o", 0x64, 0xC0),
            ("o", 0x64, 0xD2), ("i", 0x60), ("o", 0x64, 0xAA), ("o", 0x60, 0xED),
            ("i", 0x60), ("i", 0x60), ("i", 0x60))


def _kbd_run(g):
    out = []
    for step in _KBD_SEQ:
        if step[0] == "o":
            g.outb(step[1], step[2])
        else:
            out.append(g.inb(step[1]))
    return out


def test_i8042_xenfv_extended_state_off(dm_runtime):
    with Session(ram_mib=RAM_MIB, runtime=dm_runtime) as s:
        stubdm = _kbd_run(s.guest)
    with qemu_xen.QemuXenSession(ram_mib=RAM_MIB) as q:  # libxl's argv, xenfv-4.2
        xenfv = _kbd_run(q.guest)
    with qemu_xen.QemuXenSession(ram_mib=RAM_MIB, dm_args_extra=EXTENDED_STATE_ON) as q:
        extended = _kbd_run(q.guest)
    # stubdm: the 0xd2 byte overwrites the pending replies (extended state).
    assert stubdm == extended == [0xFA, 0xED, 0xED, 0xED]
    # xenfv-4.2: the ack, then output port, input port and self-test replies in turn.
    assert xenfv[0] == 0xFA and xenfv[3] == 0x55 and xenfv[1:3] != [0xED, 0xED]


PLATFORM = (PLATFORM_STUBDM, PLATFORM_QEMU_XEN)


def test_uart_fifo_enable_and_iir(both):
    # qemu-xen's RX character timeout runs in real time (4 character times,
    # about 4 ms at the reset rate of 9600 baud) and would fire between two
    # steps; at divisor 0xffff it is tens of seconds away. stubdm runs with
    # -no-timers.
    both.outb(td.COM1 + td.LCR, 0x80)
    both.outb(td.COM1 + td.DLL, 0xFF)
    both.outb(td.COM1 + td.DLM, 0xFF)
    both.outb(td.COM1 + td.LCR, 0x03)
    td.test_uart_fifo_enable_and_iir(both)


def test_platform_device_identity_and_config_space(both):
    assert both.cfg_pair(PLATFORM, 0) == PLATFORM_ID
    assert both.cfg_pair(PLATFORM, 0x08) >> 8 == 0xFF8000
    for reg in range(0, 256, 4):
        both.cfg_pair(PLATFORM, reg)
    for reg in range(0, 0x40):
        both.cfg_pair(PLATFORM, reg, 1)


def test_platform_device_bars(both):
    sizes = []
    for i in range(6):
        reg = 0x10 + 4 * i
        old = both.cfg_pair(PLATFORM, reg)
        both.cfg_write_pair(PLATFORM, reg, 0xFFFFFFFF)
        sizes.append(both.cfg_pair(PLATFORM, reg))
        both.cfg_write_pair(PLATFORM, reg, old)
        both.cfg_pair(PLATFORM, reg)
    # BAR0 256-byte I/O, BAR1 16 MiB prefetchable memory (DESIGN.md section 4).
    assert sizes[0] == 0xFFFFFF01 and sizes[1] == 0xFF000008


def test_platform_device_writable_registers(both):
    for reg, value, size in ((0x04, 0x0003, 2), (0x0C, 0xFF, 1), (0x0D, 0xFF, 1),
                             (0x3C, 0x0B, 1), (0x10, 0xC101, 4), (0x14, 0xF1000000, 4),
                             (0x04, 0x0000, 2)):
        both.cfg_write_pair(PLATFORM, reg, value, size)
        both.cfg_pair(PLATFORM, reg & ~3)


def test_platform_unplug_ports(both):
    for port in range(0x10, 0x20):
        both.inb(port)
    assert both.inp(0x10, 2) == 0x49D2  # the unplug protocol's magic
    both.inp(0x12, 1)  # protocol version
    both.inp(0x10, 4)
    # Product number and build, then an unplug of nothing (mask 0).
    both.out(0x12, 0x0003, 2)
    both.out(0x10, 0x00000001, 4)
    both.out(0x10, 0x0000, 2)
    for port in range(0x10, 0x20):
        both.inb(port)


def test_chipset_whole_config_spaces(both):
    # Every byte of 00.0, 01.0 and 01.3 at once: a byte-level image of each.
    for dev, fn in ((0, 0), (1, 0), (1, 3)):
        for reg in range(256):
            both.cfg_pair((dev, dev), reg, 1, fn=fn)


def test_cf8_latch_seen_by_xen_routing(both):
    # Xen records dword writes to 0xcf8 and forwards them: with bit 31 clear
    # 0xcfc is a plain port (the device model's CONFIG_DATA without an
    # enabled address), with it set a PCI_CONFIG ioreq for the SBDF.
    both.out(0xCF8, 0x00000000, 4)
    both.inp(0xCFC, 4)
    both.out(0xCF8, 0x80000000, 4)
    assert both.inp(0xCFC, 4) == 0x12378086
    assert both.inp(0xCF8, 4) == 0x80000000
    both.out(0xCF8, 0x8000F800, 4)  # 00:1f.0: nobody registered it: all ones
    assert both.inp(0xCFC, 4) == 0xFFFFFFFF
    both.out(0xCF8, 0x80010000, 4)  # bus 1: nobody
    assert both.inp(0xCFC, 4) == 0xFFFFFFFF


def test_xen_keeps_its_ranges_from_both(both):
    # qemu-xen claims the RTC, IOAPIC, HPET and LAPIC windows; Xen answers
    # them itself, so neither device model ever sees an access there.
    before = [x.hv.stats["ioreqs"] for x in (both.g, both.q)]
    for x in (both.g, both.q):
        x.outb(0x70, 0x0A)
        x.inb(0x71)
        x.readl(0xFEC00000)
        x.readl(0xFED00000)
        x.readl(0xFEE00030)
    assert [x.hv.stats["ioreqs"] for x in (both.g, both.q)] == before


# =====================================================================
# NICs (the scripts of tests/test_nic_differential.py) and IDE (those of
# tests/test_ide_differential.py), qemu-xen in QEMU's place
# =====================================================================

from tests import test_nic_differential as tn  # noqa: E402
from tests.test_nic_differential import (  # noqa: E402,F401
    test_e1000_eeprom_bit_banged, test_e1000_identity_and_bars, test_e1000_interrupt_registers,
    test_e1000_phy_over_mdic, test_e1000_reset_and_mac, test_e1000_ring_registers,
    test_rtl8139_eeprom_bit_banged, test_rtl8139_identity_and_bars,
    test_rtl8139_registers_both_keep, test_rtl8139_reset_values)


class NicBoth(tn.Both):
    def _fail(self, what, a, b):
        pytest.fail("%s: stubdm %s, qemu-xen %s\n  last steps:\n    %s"
                    % (what, a, b, "\n    ".join(self.trail)))


def _nic_pair(model, runtime, io_bar, mmio_bar):
    s = tn.session(model, runtime)
    try:
        q = qemu_xen.QemuXenSession(ram_mib=64, dm_args_extra=[
            "-netdev", "hubport,id=net0,hubid=0",
            "-device", "%s,id=nic0,netdev=net0,mac=%s,addr=%d" % (model, tn.MAC, tn.SLOT)])
    except BaseException:
        s.close()
        raise
    b = NicBoth(s.guest, q.guest)
    b.cfg_write(io_bar, tn.IO_BASE)
    b.cfg_write(mmio_bar, tn.MMIO_BASE)
    b.cfg_write(0x04, 0x0007, 2)
    return s, q, b


@pytest.fixture
def rtl(dm_runtime):
    s, q, b = _nic_pair("rtl8139", dm_runtime, 0x10, 0x14)
    with s, q:
        yield b


@pytest.fixture
def e1k(dm_runtime):
    s, q, b = _nic_pair("e1000", dm_runtime, 0x14, 0x10)
    with s, q:
        yield b


from tests import test_ide_differential as ti  # noqa: E402
from tests.test_ide_differential import images  # noqa: E402,F401  (its fixture)


def test_ide_same_answers_as_qemu_xen(images, dm_runtime):  # noqa: F811
    hd, cd = images
    hd_bytes = hd.read_bytes()
    args = ["-drive", "file=%s,if=ide,index=0,media=disk,format=raw,cache=writeback" % hd,
            "-drive", "file=%s,if=ide,index=2,media=cdrom,format=raw" % cd]
    with Session(dm_args=["-no-timers"] + args, ram_mib=ti.RAM_MIB, runtime=dm_runtime) as s:
        ours = ti.script(s.guest, s.guest.get_irq)
    hd.write_bytes(hd_bytes)
    with qemu_xen.QemuXenSession(ram_mib=ti.RAM_MIB, dm_args_extra=args) as q:
        theirs = ti.script(q.guest, q.guest.get_irq)
    hd.write_bytes(hd_bytes)
    assert len(ours) == len(theirs)
    diffs = ["%s:\n  stubdm   %r\n  qemu-xen %r" % (a[0], a[1:], b[1:])
             for a, b in zip(ours, theirs) if a != b]
    assert not diffs, "\n".join(d[:600] for d in diffs)
