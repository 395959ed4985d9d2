# The PC a Xen HVM guest sees, in one place: PCI slots, fixed ports and IRQ
# lines (DESIGN.md section 4).
#
# PCI bus 0 is laid out as QEMU's xenfv machine, which libxl starts for every
# HVM guest (QEMU hw/i386/pc_piix.c: i440FX at 00.0, PIIX3 at 01.0 with its
# IDE at 01.1 and PIIX4 ACPI at 01.3, VGA at 02.0, the Xen platform device at
# 03.0; NICs, disks and the rest take the first free slot from 04.0 on).
# hvmloader programs these devices by what they are, not where, but guests
# and their saved PCI paths know the slots, so they stay put.
from stubdm.compat import const


def devfn(dev, fn=0):
    return (dev << 3) | fn


# --- PCI slots --------------------------------------------------------------

DEVFN_HOST_BRIDGE = const(0x00)  # 00.0 i440FX
DEVFN_PIIX3 = const(0x08)  # 01.0 PIIX3 PCI-to-ISA bridge (multi-function)
DEVFN_PIIX3_IDE = const(0x09)  # 01.1 PIIX3 IDE
DEVFN_PIIX4_PM = const(0x0B)  # 01.3 PIIX4 ACPI power management
DEVFN_VGA = const(0x10)  # 02.0 VGA (reserved until VGA lands)
DEVFN_PLATFORM = const(0x18)  # 03.0 Xen platform device
DEVFN_FIRST_FREE = const(0x20)  # 04.0: NICs (rtl8139, e1000), AHCI, pci-serial, ...

# Every slot the fixed layout holds, with what holds it: a device given an
# explicit addr= there is a usage error naming the holder.
FIXED_SLOTS = (
    (0, "the i440FX host bridge (00:00.0)"),
    (1, "the PIIX3 (00:01.0 ISA bridge, 00:01.1 IDE, 00:01.3 ACPI)"),
    (2, "VGA (00:02.0)"),
    (3, "the Xen platform device (00:03.0)"),
)
FIRST_FREE_SLOT = const(4)
NUM_SLOTS = const(32)


def slot_holder(slot):
    """What the fixed layout has at `slot`, or None when the slot is free."""
    for s, what in FIXED_SLOTS:
        if s == slot:
            return what
    return None


class SlotError(ValueError):
    pass


def place(requests):
    """Slots for devices in command-line order, as QEMU places them.

    `requests` is a list of (name, slot or 0 for "any"); returns the slots.
    An explicit slot must be free; "any" takes the first free slot from 04
    at the time the device comes (so a later explicit addr= may then find it
    taken, as with QEMU's -device).
    """
    taken = {}
    for s, what in FIXED_SLOTS:
        taken[s] = what
    out = []
    for name, slot in requests:
        if slot:
            if not 0 < slot < NUM_SLOTS:
                raise SlotError("%s: PCI slot %d does not exist (0..%d)"
                                % (name, slot, NUM_SLOTS - 1))
            if slot in taken:
                raise SlotError("%s,addr=%d: PCI slot %d is taken by %s"
                                % (name, slot, slot, taken[slot]))
        else:
            slot = FIRST_FREE_SLOT
            while slot in taken:
                slot += 1
            if slot >= NUM_SLOTS:
                raise SlotError("%s: no free PCI slot left on bus 0" % name)
        taken[slot] = "%s (00:%02x.0)" % (name, slot)
        out.append(slot)
    return out


# --- Fixed I/O ports ----------------------------------------------------------

PLATFORM_PORTS = const(0x10)  # 0x10-0x1f Xen platform device (unplug protocol)
I8042_DATA = const(0x60)
I8042_CMD = const(0x64)
PORT92 = const(0x92)  # system control port A: A20, fast reset
APM_CNT = const(0xB2)  # 0xb2-0xb3 APM control/status (PIIX4 PM function)
COM1_PORT = const(0x3F8)
PCI_HOST_PORTS = const(0xCF8)  # 0xcf8-0xcff: CONFIG_ADDRESS, 0xcf9 reset control, CONFIG_DATA
PCI_HOST_PORT_COUNT = const(8)

# PIIX4 ACPI blocks as hvmloader programs them and libacpi's FADT names them
# (Xen's public hvm/ioreq.h, version 1 layout): the PM base (PMBA, config 0x40)
# is set to ACPI_PM1A_EVT_BLK_ADDRESS_V1 by hvmloader; GPE0 is fixed.
ACPI_PM_BASE_V1 = const(0xB000)  # PM1a_EVT 0xb000 (Xen's), PM1a_CNT 0xb004, PM_TMR 0xb008 (Xen's)
ACPI_GPE0_BLK = const(0xAFE0)  # ACPI_GPE0_BLK_ADDRESS_V1, 4 bytes
ACPI_GPE0_LEN = const(4)

# --- ISA IRQ lines --------------------------------------------------------------

KBD_IRQ = const(1)
COM1_IRQ = const(4)
SCI_IRQ = const(9)  # FADT SCI_INT (libacpi static_tables.c); hvmloader writes 9 to 01.3's 0x3c
AUX_IRQ = const(12)
