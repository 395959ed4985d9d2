# Intel 82371SB PIIX3, function 0: the PCI-to-ISA bridge at devfn 01.0.
#
# Identity and reset values follow QEMU's hw/isa/piix.c (piix_reset) and its
# Xen variant: 8086:7000, class 0x060100, revision 0, header type 0x80
# (multi-function: IDE is 01.1), subsystem 1af4:1100 (QEMU's default).
# Datasheet: Intel 82371FB/82371SB PIIX/PIIX3, document 290550, section 2.2.
#
# The device model runs none of the ISA side (Xen emulates PIC, PIT, RTC;
# DESIGN.md section 4). What matters is PIRQ routing: every write to
# 0x60-0x63 becomes set_pci_link_route(link, irq), as QEMU's
# piix3_write_config_xen / xen_piix_pci_write_config_client does.
from stubdm import log
from stubdm.compat import const
from stubdm.pci import PciFunction

VENDOR_INTEL = const(0x8086)
DEVICE_82371SB_0 = const(0x7000)
CLASS_BRIDGE_ISA = const(0x060100)
SUBSYS_VENDOR_QEMU = const(0x1AF4)
SUBSYS_ID_QEMU = const(0x1100)

DEVFN = const(0x08)  # 01.0

# Device-specific registers (datasheet section 2.2) and QEMU's reset values.
IORT = const(0x4C)  # ISA I/O recovery timer
XBCS = const(0x4E)  # X-bus chip select
PIRQRC = const(0x60)  # PIRQRC[A:D]: 0x60-0x63
PIRQ_COUNT = const(4)
PIRQ_DISABLE = const(0x80)  # IRQINTA#..D# routing disabled
PIRQ_IRQ_MASK = const(0x0F)  # bits 6:4 reserved
TOM = const(0x69)  # top of memory
MBIRQ0 = const(0x70)
MBDMA0 = const(0x76)
MBDMA1 = const(0x77)
PCSC = const(0x78)
SMICNTL = const(0xA0)
SMIREQ = const(0xA8)

_RESET_VALUES = (
    (IORT, 0x4D),
    (XBCS, 0x03),
    (PIRQRC, 0x80),
    (PIRQRC + 1, 0x80),
    (PIRQRC + 2, 0x80),
    (PIRQRC + 3, 0x80),
    (TOM, 0x02),
    (MBIRQ0, 0x80),
    (MBDMA0, 0x0C),
    (MBDMA1, 0x0C),
    (PCSC, 0x02),
    (SMICNTL, 0x08),
    (SMIREQ, 0x0F),
)
STATUS_RESET = const(0x0200)  # DEVSEL medium timing, read-only

# PIRQRC bits 3:0 (datasheet 2.2.11): IRQ 0-2, 8 and 13 are reserved codes.
VALID_IRQS = (3, 4, 5, 6, 7, 9, 10, 11, 12, 14, 15)


def pirq_route(value):
    """The ISA IRQ a PIRQRC value routes to; 0 means not routed."""
    if value & PIRQ_DISABLE:
        return 0
    irq = value & PIRQ_IRQ_MASK
    return irq if irq in VALID_IRQS else 0


class Piix3Isa(PciFunction):
    """PIIX3 function 0. link_route_cb(link 0..3, isa_irq or 0) on every PIRQRC write."""

    def __init__(self, link_route_cb):
        super().__init__(
            "piix3",
            VENDOR_INTEL,
            DEVICE_82371SB_0,
            CLASS_BRIDGE_ISA,
            revision=0,
            subsys_vendor=SUBSYS_VENDOR_QEMU,
            subsys_id=SUBSYS_ID_QEMU,
            header_type=0x80,
        )
        self.link_route_cb = link_route_cb
        self.reset()

    def reset(self):
        # QEMU's piix_reset also writes command 0x0007, but the PCI bus reset
        # that follows clears every guest-writable command bit, so the guest
        # finds 0 (like every other function); only DEVSEL timing stays.
        super().reset()
        for i in range(0x40, 0x100):
            self.config[i] = 0
        for off, value in _RESET_VALUES:
            self.config[off] = value
        self._set(0x06, 2, STATUS_RESET)

    def config_written(self, offset, size, value):
        # Like Xen's QEMU, every byte written in 0x60-0x63 is forwarded, even
        # when unchanged: Xen keeps the routes, this is only the messenger.
        for i in range(size):
            reg = offset + i
            if PIRQRC <= reg < PIRQRC + PIRQ_COUNT:
                raw = (value >> (8 * i)) & 0xFF
                irq = pirq_route(raw)
                if irq == 0 and not raw & PIRQ_DISABLE:
                    link = reg - PIRQRC
                    log.guest_error(self.name, f"PIRQ link {link}: reserved code 0x{raw:02x}")
                self.link_route_cb(reg - PIRQRC, irq)

    def pirq(self, link):
        """Where link 0..3 is routed now (0: not routed)."""
        return pirq_route(self.config[PIRQRC + link])

    def load_state(self, d):
        super().load_state(d)
        # The routes live in Xen: a restored guest's new domain hears them again.
        for link in range(PIRQ_COUNT):
            self.link_route_cb(link, self.pirq(link))


RCR_SYS_RST = const(0x02)  # system reset type: hard (1) or soft (0); kept
RCR_RST_CPU = const(0x04)  # a write with this bit set resets


class ResetControl:
    """PIIX3 reset control register at port 0xcf9 (datasheet 2.2.13), as
    QEMU's rcr_write: a write with bit 2 resets (hard and soft both reboot
    under Xen); otherwise only bit 1 is kept. One byte; the host bridge's
    port device (i440fx.PciHostPorts) feeds it every byte it gets at 0xcf9."""

    def __init__(self, reset_cb):
        self.value = 0
        self.reset_cb = reset_cb

    def reset(self):
        self.value = 0

    def state(self):
        return {"value": self.value}

    def load_state(self, d):
        self.value = d["value"] & RCR_SYS_RST

    def read(self, offset, size):
        return self.value

    def write(self, offset, size, value):
        if value & RCR_RST_CPU:
            self.reset_cb()
            return
        self.value = value & RCR_SYS_RST
