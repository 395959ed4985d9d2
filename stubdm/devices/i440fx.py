# Intel 82441FX PMC (i440FX host bridge), PCI function 00.0.
#
# Identity and reset values are QEMU's hw/pci-host/i440fx.c (what a Xen HVM
# guest has always seen): 8086:1237 rev 02, class 0x060000, subsystem
# 1af4:1100 (QEMU's default subsystem for devices that set none). Datasheet:
# Intel 82441FX PCI and Memory Controller (PMC), document 290549, section 3.2.
#
# Under Xen the guest's memory map belongs to the hypervisor, so PAM (shadow
# RAM for 0xc0000-0xfffff) and SMRAM only hold what the guest wrote.
from stubdm.compat import const
from stubdm.pci import PciFunction

VENDOR_INTEL = const(0x8086)
DEVICE_82441 = const(0x1237)
CLASS_BRIDGE_HOST = const(0x060000)
SUBSYS_VENDOR_QEMU = const(0x1AF4)
SUBSYS_ID_QEMU = const(0x1100)

# Device-specific registers (datasheet section 3.2).
COREBOOT_RAM_SIZE = const(0x57)  # QEMU extension: RAM size in 8 MiB units, max 255
PAM0 = const(0x59)  # PAM0..PAM6: 0x59-0x5f
PAM_COUNT = const(7)
SMRAM = const(0x72)
SMRAM_RESET = const(0x02)  # C_BASE_SEG = 010b: SMRAM at 0xa0000 (QEMU's i440fx_realize)

DEVFN = const(0x00)


class I440fxHostBridge(PciFunction):
    """The host bridge at devfn 0. `ram_size` (bytes) only feeds register 0x57."""

    def __init__(self, ram_size=0):
        super().__init__(
            "i440fx",
            VENDOR_INTEL,
            DEVICE_82441,
            CLASS_BRIDGE_HOST,
            revision=0x02,
            subsys_vendor=SUBSYS_VENDOR_QEMU,
            subsys_id=SUBSYS_ID_QEMU,
        )
        # QEMU leaves the whole 0x40-0xff area guest-writable; PAM and SMRAM
        # are the registers firmware actually programs.
        units = ram_size // (8 * 1024 * 1024)
        self._ram_units = 255 if units > 255 else units
        self.reset()

    def reset(self):
        super().reset()
        for i in range(0x40, 0x100):
            self.config[i] = 0
        self.config[COREBOOT_RAM_SIZE] = self._ram_units
        self.config[SMRAM] = SMRAM_RESET

    def pam(self, n):
        """PAM register n (0-6) as the guest last wrote it."""
        return self.config[PAM0 + n]

    @property
    def smram(self):
        return self.config[SMRAM]
