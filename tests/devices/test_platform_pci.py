# Tests of the Xen platform PCI device and its fixed ports 0x10-0x1f.
# Values pinned are QEMU's hw/i386/xen/xen_platform.c and Xen's
# docs/misc/hvm-emulated-unplug.pandoc (DESIGN.md section 4).
import random

import pytest

from stubdm import log
from stubdm.devices.platform_pci import (
    UNPLUG_ALL_NICS,
    UNPLUG_IDE_SCSI_DISKS,
    XenPlatformPci,
    XenPlatformPorts,
)
from stubdm.pci import PciBus


@pytest.fixture(autouse=True)
def quiet_log():
    old = log.verbose
    log.verbose = 0
    log.reset_counts()
    yield
    log.verbose = old


def make():
    ev = {"unplug": [], "log": [], "rom": []}
    ports = XenPlatformPorts(
        ev["unplug"].append, log_cb=ev["log"].append, rom_lock_cb=ev["rom"].append
    )
    return XenPlatformPci(ports), ports, ev


def test_identity():
    # QEMU xen_platform_class_init: 5853:0001 rev 1, class 0xff80 prog-if 0,
    # subsystem 5853:0001, interrupt pin INTA.
    fn, _, _ = make()
    assert fn.config_read(0x00, 4) == 0x00015853
    assert fn.config_read(0x08, 4) == 0xFF800001
    assert fn.config_read(0x2C, 4) == 0x00015853
    assert fn.config_read(0x3D, 1) == 1


def test_bar_probes():
    # QEMU: BAR0 256-byte I/O, BAR1 16 MiB prefetchable 32-bit memory.
    fn, _, _ = make()
    fn.config_write(0x10, 4, 0xFFFFFFFF)
    fn.config_write(0x14, 4, 0xFFFFFFFF)
    fn.config_write(0x18, 4, 0xFFFFFFFF)
    assert fn.config_read(0x10, 4) == 0xFFFFFF01
    assert fn.config_read(0x14, 4) == 0xFF000008
    assert fn.config_read(0x18, 4) == 0


def test_mmio_bar_reads_zero_ignores_writes():
    # QEMU platform_mmio_read returns 0; platform_mmio_write does nothing.
    fn, _, _ = make()
    fn.bar_write(1, 0x100, 4, 0xFFFFFFFF)
    assert fn.bar_read(1, 0x100, 4) == 0
    assert fn.bar_read(1, 0xFFFFFC, 4) == 0


def test_magic_and_protocol_version():
    # hvm-emulated-unplug: inw(0x10) = 0x49d2, inb(0x12) = version 1.
    _, ports, _ = make()
    assert ports.read(0, 2) == 0x49D2
    assert ports.read(2, 1) == 1
    assert ports.read(0, 1) == 0  # platform flags
    assert ports.read(4, 2) == 0xFFFF
    assert ports.read(3, 1) == 0xFF
    assert ports.read(0, 4) == 0xFFFFFFFF


def test_unplug_mask_calls_back():
    # hvm-emulated-unplug: outw(mask, 0x10); bit 0 disks, 1 NICs, 2 aux IDE,
    # 3 NVMe.
    _, ports, ev = make()
    ports.write(0, 2, 0x0003)
    ports.write(0, 2, 0x0008)
    ports.write(0, 2, 0x0000)
    assert ev["unplug"] == [0x3, 0x8]
    assert ports.unplugged == 0xB


def test_linux_handshake():
    # Linux arch/x86/xen/platform-pci-unplug.c check_platform_magic():
    # magic, version, outw product to 0x12, outl build to 0x10, magic again.
    _, ports, ev = make()
    assert ports.read(0, 2) == 0x49D2
    assert ports.read(2, 1) == 1
    ports.write(2, 2, 3)  # XEN_IOPORT_LINUX_PRODNUM
    ports.write(0, 4, 0xFFFF)  # XEN_IOPORT_LINUX_DRVVER
    assert ports.read(0, 2) == 0x49D2  # not blacklisted
    assert ports.product == 3
    assert ports.build == 0xFFFF
    assert ev["unplug"] == []


def test_log_port_line_buffering():
    # QEMU log_writeb: bytes to 0x12 gather into a line, '\n' flushes it.
    _, ports, ev = make()
    for c in b"hello\x01\n":
        ports.write(2, 1, c)
    assert ev["log"] == ["hello?"]
    for _ in range(5000):
        ports.write(2, 1, 0x41)
    assert ev["log"][1] == "A" * 4095


def test_rom_lock_flag():
    # QEMU platform_fixed_ioport_writeb(0): bit 0 = ROM lock, read back at 0x10.
    _, ports, ev = make()
    ports.write(0, 1, 0xFF)
    assert ports.read(0, 1) == 1
    assert ev["rom"] == [1]


def test_io_bar_registers():
    # QEMU xen_platform_ioport_{readb,writeb}: 0 flags, 4 SUSE unplug
    # (1: disks and NICs), 8 unplug 1/2 or log byte; other reads all ones.
    fn, ports, ev = make()
    assert fn.bar_read(0, 0, 1) == 0
    assert fn.bar_read(0, 1, 1) == 0xFF
    assert fn.bar_read(0, 0, 2) == 0xFF00
    fn.bar_write(0, 0, 1, 1)
    assert ports.flags == 1
    fn.bar_write(0, 4, 4, 1)
    assert ev["unplug"] == [UNPLUG_IDE_SCSI_DISKS | UNPLUG_ALL_NICS]
    fn.bar_write(0, 8, 1, 1)
    fn.bar_write(0, 8, 1, 2)
    assert ev["unplug"][1:] == [UNPLUG_IDE_SCSI_DISKS, UNPLUG_ALL_NICS]
    for c in b"ok\n":
        fn.bar_write(0, 8, 1, c)
    assert ev["log"] == ["ok"]


def test_on_bus_intx_and_state():
    ev = []
    bus = PciBus(intx_sink=lambda dev, pin, level: ev.append((dev, pin, level)))
    fn, ports, _ = make()
    bus.attach(3 << 3, fn)
    fn.set_irq(1)
    assert ev == [(3, 0, 1)]
    ports.write(0, 1, 1)
    ports.write(2, 2, 7)
    saved = fn.state()
    fn2, ports2, _ = make()
    fn2.load_state(saved)
    assert ports2.flags == 1 and ports2.product == 7
    assert fn2.state() == saved


def test_hostile_port_and_bar_accesses():
    # The guest is hostile: random port, BAR and config accesses never raise.
    rng = random.Random(99)
    fn, ports, ev = make()
    for _ in range(20000):
        r = rng.random()
        off = rng.randrange(-2, 20)
        size = rng.choice((0, 1, 2, 3, 4, 8))
        v = rng.getrandbits(64)
        if r < 0.3:
            ports.write(off, size, v)
        elif r < 0.5:
            ports.read(off, size)
        elif r < 0.7:
            fn.bar_write(0, rng.randrange(-2, 0x102), size, v)
        elif r < 0.8:
            fn.bar_read(rng.randrange(-1, 7), rng.randrange(0, 0x1000002), size)
        else:
            fn.config_write(rng.randrange(-4, 0x104), size, v)
    assert fn.config_read(0x00, 4) == 0x00015853
    assert fn.config_read(0x08, 4) == 0xFF800001
    assert ports.read(0, 2) == 0x49D2
    for mask in ev["unplug"]:
        assert 0 < mask <= 0xF
