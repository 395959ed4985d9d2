# Tests of the i440FX host bridge and the PIIX3 ISA bridge.
# Values pinned are QEMU's (hw/pci-host/i440fx.c, hw/isa/piix.c) and Xen's
# QEMU PIRQ hook (xen_piix_pci_write_config_client), DESIGN.md section 4.
import random

import pytest

from stubdm import log
from stubdm.devices import piix3
from stubdm.devices.i440fx import I440fxHostBridge
from stubdm.devices.piix3 import Piix3Isa
from stubdm.pci import PciBus


@pytest.fixture(autouse=True)
def quiet_log():
    old = log.verbose
    log.verbose = 0
    log.reset_counts()
    yield
    log.verbose = old


def make_piix3():
    calls = []
    return Piix3Isa(lambda link, irq: calls.append((link, irq))), calls


def test_i440fx_identity():
    # QEMU i440fx_class_init: 8086:1237 rev 2, class 0x0600, header type 0;
    # QEMU's default subsystem 1af4:1100.
    hb = I440fxHostBridge()
    assert hb.config_read(0x00, 4) == 0x12378086
    assert hb.config_read(0x08, 4) == 0x06000002
    assert hb.config_read(0x0E, 1) == 0x00
    assert hb.config_read(0x2C, 4) == 0x11001AF4
    assert hb.config_read(0x3D, 1) == 0


def test_i440fx_pam_and_smram_are_stored():
    # QEMU i440fx_realize: SMRAM 0x72 = 0x02; PAM 0x59-0x5f writable.
    hb = I440fxHostBridge()
    assert hb.config_read(0x72, 1) == 0x02
    assert hb.config_read(0x58, 4) == 0
    hb.config_write(0x58, 4, 0x33333300)
    hb.config_write(0x5C, 4, 0x33333333)
    assert [hb.pam(i) for i in range(7)] == [0x33] * 7
    hb.config_write(0x72, 1, 0x0A)
    assert hb.smram == 0x0A


def test_i440fx_coreboot_ram_size():
    # QEMU: register 0x57 = RAM size in 8 MiB units, at most 255.
    assert I440fxHostBridge(ram_size=512 << 20).config_read(0x57, 1) == 64
    assert I440fxHostBridge(ram_size=8 << 30).config_read(0x57, 1) == 255


def test_piix3_identity():
    # QEMU piix3: 8086:7000 rev 0, class 0x0601, multi-function header.
    isa, _ = make_piix3()
    assert isa.config_read(0x00, 4) == 0x70008086
    assert isa.config_read(0x08, 4) == 0x06010000
    assert isa.config_read(0x0E, 1) == 0x80
    assert isa.config_read(0x2C, 4) == 0x11001AF4


def test_piix3_reset_values():
    # QEMU piix_reset (the command bits it sets are cleared again by the
    # PCI bus reset, pci_do_device_reset; DEVSEL medium stays).
    isa, calls = make_piix3()
    assert isa.config_read(0x04, 4) == 0x02000000
    assert isa.config_read(0x4C, 4) == 0x0003004D
    assert isa.config_read(0x60, 4) == 0x80808080
    assert isa.config_read(0x68, 4) == 0x00000200
    assert isa.config_read(0x70, 1) == 0x80
    assert isa.config_read(0x74, 4) == 0x0C0C0000
    assert isa.config_read(0x78, 4) == 0x00000002
    assert isa.config_read(0xA0, 4) == 0x00000008
    assert isa.config_read(0xA8, 4) == 0x0000000F
    assert calls == []  # reset does not route: Xen starts with no routes


def test_pirq_route_byte_write():
    # DESIGN.md 4 / Xen QEMU: PIRQA = 0x0b -> set_pci_link_route(0, 11).
    isa, calls = make_piix3()
    isa.config_write(0x60, 1, 0x0B)
    assert calls == [(0, 11)]
    assert isa.config_read(0x60, 1) == 0x0B
    assert isa.pirq(0) == 11


def test_pirq_route_disable_bit_means_route_0():
    # PIIX3 datasheet 2.2.11: bit 7 set disables routing; Xen: route 0.
    isa, calls = make_piix3()
    isa.config_write(0x61, 1, 0x80)
    isa.config_write(0x61, 1, 0x8B)
    assert calls == [(1, 0), (1, 0)]


def test_pirq_route_dword_and_partial_writes():
    # Xen QEMU: one call per byte of the access that lands in 0x60-0x63,
    # changed or not.
    isa, calls = make_piix3()
    isa.config_write(0x60, 4, 0x0F0E0B0A)
    assert calls == [(0, 10), (1, 11), (2, 14), (3, 15)]
    del calls[:]
    isa.config_write(0x62, 2, 0x8005)
    assert calls == [(2, 5), (3, 0)]
    del calls[:]
    # An access never crosses a dword: 0x60 is not reached from 0x5e/0x5f.
    isa.config_write(0x5E, 4, 0x09090909)
    isa.config_write(0x5F, 2, 0x0909)
    assert calls == []
    assert isa.config_read(0x5C, 4) == 0x09090000


def test_pirq_reserved_codes_route_0():
    # PIIX3 datasheet 2.2.11: codes 0-2, 8, 13 are reserved -> not routed;
    # bits 6:4 are reserved and ignored, as Xen's QEMU masks with 0xf.
    isa, calls = make_piix3()
    for v in (0x00, 0x01, 0x02, 0x08, 0x0D):
        isa.config_write(0x63, 1, v)
    isa.config_write(0x63, 1, 0x7B)
    assert calls == [(3, 0)] * 5 + [(3, 11)]
    assert log.count("guest_error") == 5


def test_chipset_on_a_bus():
    calls = []
    bus = PciBus()
    bus.attach(0x00, I440fxHostBridge())
    bus.attach(piix3.DEVFN, Piix3Isa(lambda link, irq: calls.append((link, irq))))
    assert bus.config_read(0x00, 0x00, 4) == 0x12378086
    assert bus.config_read(0x08, 0x00, 4) == 0x70008086
    bus.config_write(0x08, 0x60, 1, 0x0A)
    assert calls == [(0, 10)]


def test_hostile_config_writes_chipset():
    # The guest is hostile: random accesses never raise, identity stays.
    rng = random.Random(4321)
    hb = I440fxHostBridge()
    isa, calls = make_piix3()
    idents = [(f, f.config_read(0, 4), f.config_read(8, 4), f.config_read(0x0C, 4),
               f.config_read(0x2C, 4)) for f in (hb, isa)]
    for _ in range(20000):
        f = hb if rng.random() < 0.5 else isa
        off = rng.randrange(-8, 0x110)
        size = rng.choice((0, 1, 2, 3, 4, 4, 8))
        if rng.random() < 0.6:
            f.config_write(off, size, rng.getrandbits(64))
        else:
            f.config_read(off, size)
    for f, a, b, c, d in idents:
        assert f.config_read(0, 4) == a
        assert f.config_read(8, 4) == b
        assert f.config_read(0x0C, 4) & 0xFFFFFF00 == c & 0xFFFFFF00
        assert f.config_read(0x2C, 4) == d
    for link, irq in calls:
        assert 0 <= link <= 3
        assert irq == 0 or irq in piix3.VALID_IRQS
