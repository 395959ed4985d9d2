# Intel 82441FX PMC (i440FX host bridge), PCI function 00.0.
#
# Identity and reset values are QEMU's hw/pci-host/i440fx.c (what a Xen HVM
# guest has always seen): 8086:1237 rev 02, class 0x060000, subsystem
# 1af4:1100 (QEMU's default subsystem for devices that set none). Datasheet:
# Intel 82441FX PCI and Memory Controller (PMC), document 290549, section 3.2.
#
# Under Xen the guest's memory map belongs to the hypervisor, so PAM (shadow
# RAM for 0xc0000-0xfffff) and SMRAM only hold what the guest wrote.
from stubdm import log
from stubdm.bus import fill_rep
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


# --- Ports 0xcf8-0xcff: configuration mechanism #1 ----------------------------
#
# Xen only watches 0xcf8 (it records dword writes) and forwards every access
# to these ports to the server that claims them, except a 0xcfc-0xcff access
# while its recorded dword has bit 31 set, which becomes a PCI_CONFIG ioreq
# (DESIGN.md section 4). So this device model owns CONFIG_ADDRESS, and what
# the guest sees for each offset and size is what qemu-xen's memory core
# makes of QEMU's i440FX regions (hw/pci/pci_host.c: pci-conf-idx, 4 bytes at
# 0xcf8, and pci-conf-data, 4 bytes at 0xcfc) with PIIX3's reset control
# register laid over 0xcf9 (hw/isa/piix.c). Measured on QEMU 11.1's pc
# machine (tests/test_differential.py compares every offset and size):
# - CONFIG_ADDRESS latches only a dword write at 0xcf8; every read at 0xcf8
#   and 0xcfa and a byte read at 0xcfb return its low bytes (not shifted).
# - 0xcf9 is the reset control register at any size: a read repeats it in
#   every byte, a write is one register write per byte, low byte first.
# - Unaligned word and dword accesses at 0xcfa-0xcfb and 0xcfc-0xcff read 0
#   and are dropped (QEMU's memory core refuses them).
# - CONFIG_DATA as a plain port access (the recorded dword lacks bit 31)
#   reads all ones; with bit 31 set it is a configuration cycle to bus 0.
CONFIG_ENABLE = const(0x80000000)


def _ones(size):
    return (1 << (8 * size)) - 1


class PciHostPorts:
    """Ports 0xcf8-0xcff (offsets 0-7). pci: stubdm.pci.PciBus; rcr: the
    reset control register core at 0xcf9 (read/write of one byte)."""

    name = "i440fx"

    def __init__(self, pci, rcr):
        self.pci = pci
        self.rcr = rcr
        self.config_address = 0

    def reset(self):
        self.config_address = 0

    def state(self):
        return {"config_address": self.config_address}

    def load_state(self, d):
        self.config_address = d["config_address"] & 0xFFFFFFFF

    def read(self, offset, size):
        if offset == 1:
            b = self.rcr.read(0, 1) & 0xFF
            v = 0
            for i in range(size):
                v |= b << (8 * i)
            return v
        if offset < 4:
            if offset + size <= 4 and offset % size == 0:
                return self.config_address & _ones(size)
            log.guest_error(self.name, "unaligned %d-byte read at 0x%x" % (size, 0xCF8 + offset))
            return 0
        return self._data(offset - 4, size, None)

    def write(self, offset, size, value):
        if offset == 1:
            for i in range(size):
                self.rcr.write(0, 1, (value >> (8 * i)) & 0xFF)
            return
        if offset == 0 and size == 4:
            self.config_address = value & 0xFFFFFFFF
            return
        if offset < 4:
            # Not a configuration address: QEMU ignores it (Linux's
            # pci_check_type1 writes a byte to 0xcfb on purpose).
            log.guest_error(self.name, "%d-byte write 0x%x at 0x%x ignored"
                            % (size, value & _ones(size), 0xCF8 + offset))
            return
        self._data(offset - 4, size, value)

    def read_rep(self, offset, size, count, buf):
        if offset >= 4:
            return False  # configuration data: the functions' own reads, one by one
        fill_rep(buf, self.read(offset, size), size, count)  # these read with no effect
        return True

    def write_rep(self, offset, size, count, buf):
        if offset == 0 and size == 4:
            last = count * 4 - 4
            self.config_address = int.from_bytes(buf[last : last + 4], "little")  # a latch
            return True
        if offset < 4 and offset != 1:
            log.guest_error(self.name, "%d x %d-byte writes at 0x%x ignored"
                            % (count, size, 0xCF8 + offset))
            return True
        return False

    def _data(self, offset, size, value):
        is_read = value is None
        if offset % size or offset + size > 4:
            log.guest_error(self.name, "unaligned %d-byte %s at 0x%x"
                            % (size, "read" if is_read else "write", 0xCFC + offset))
            return 0 if is_read else None
        addr = self.config_address
        if not addr & CONFIG_ENABLE:
            return _ones(size) if is_read else None
        # QEMU ORs the port's low bits into the address (it does not mask
        # CONFIG_ADDRESS bits 1:0, Xen does) and ignores bits 30:24.
        addr |= offset
        bus = (addr >> 16) & 0xFF
        devfn = (addr >> 8) & 0xFF
        reg = addr & 0xFF
        if bus != 0:
            log.guest_error(self.name, "configuration cycle to bus %d: no such bus" % bus)
            return _ones(size) if is_read else None
        if is_read:
            return self.pci.config_read(devfn, reg, size) & _ones(size)
        self.pci.config_write(devfn, reg, size, value & _ones(size))
        return None
