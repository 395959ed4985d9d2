# The Xen platform PCI device (5853:0001) and its fixed I/O ports 0x10-0x1f.
#
# Guest-visible behaviour follows QEMU's hw/i386/xen/xen_platform.c (what
# every Xen HVM guest's PV drivers were written against) and Xen's
# docs/misc/hvm-emulated-unplug.pandoc. The PV-driver handshake (Linux
# arch/x86/xen/platform-pci-unplug.c, Windows PV drivers):
#   inw(0x10) == 0x49d2 magic; inb(0x12) protocol version (1);
#   outw(product, 0x12); outl(build, 0x10); inw(0x10) again (0xd249 would
#   mean "blacklisted": never sent here, nor by current QEMU);
#   outw(mask, 0x10) unplugs the emulated devices the PV drivers replace.
# Port map by access size (offsets from 0x10), as QEMU:
#   offset 0: inb platform flags, inw magic, outb platform flags (bit 0 ROM
#             lock), outw unplug mask, outl driver build number;
#   offset 2: inb protocol version, outb log byte, outw product number;
#   anything else reads all ones and is ignored on write.
from stubdm import log
from stubdm.bus import fill_rep
from stubdm.compat import const
from stubdm.pci import PciFunction

VENDOR_XEN = const(0x5853)
DEVICE_XEN_PLATFORM = const(0x0001)
CLASS_OTHERS = const(0xFF8000)  # base class 0xff, subclass 0x80, prog-if 0
REVISION = const(1)

FIXED_PORT_BASE = const(0x10)
FIXED_PORT_COUNT = const(16)

MAGIC = const(0x49D2)
PROTOCOL_VERSION = const(1)

FLAG_ROM_LOCK = const(0x01)  # PFFLAG_ROM_LOCK: 0xc0000-0xfffff read-only

# Unplug mask (hvm-emulated-unplug.pandoc; QEMU's UNPLUG_* flags).
UNPLUG_IDE_SCSI_DISKS = const(0x01)  # all IDE and SCSI disks
UNPLUG_ALL_NICS = const(0x02)
UNPLUG_AUX_IDE_DISKS = const(0x04)  # IDE disks except primary master; bit 0 overrides
UNPLUG_NVME_DISKS = const(0x08)
UNPLUG_KNOWN = const(0x0F)

IO_BAR_SIZE = const(0x100)
MMIO_BAR_SIZE = const(0x1000000)  # 16 MiB, prefetchable: "reserve 16MB mmio for shared memory"

LOG_LINE_MAX = const(4095)  # QEMU's log_buffer is 4096 bytes with a NUL

# BAR0 byte registers (QEMU's xen_platform_ioport_writeb).
BAR_FLAGS = const(0)
BAR_SUSE_UNPLUG = const(4)  # xen-kmp/VMDP: outl(1) unplugs disks and NICs
BAR_UNPLUG_OR_LOG = const(8)  # 1 unplug disks, 2 unplug NICs, else a log byte


def _printable(buf):
    # The line comes from the guest: keep control characters out of our log.
    out = []
    for c in buf:
        out.append(chr(c) if 32 <= c < 127 else "?")
    return "".join(out)


class XenPlatformPorts:
    """Core of the fixed ports 0x10-0x1f; read/write offsets are relative to 0x10.

    unplug_cb(mask) gets the guest's unplug mask (UNPLUG_* bits);
    log_cb(line) gets each line the PV drivers write to the log port;
    rom_lock_cb(locked), if given, makes 0xc0000-0xfffff read-only or writable
    (QEMU: xen_set_mem_type(HVMMEM_ram_ro/rw, pfn 0xc0, 0x40 pages)).
    """

    name = "xen_platform"

    def __init__(self, unplug_cb, log_cb=None, rom_lock_cb=None):
        self.unplug_cb = unplug_cb
        self.log_cb = log_cb
        self.rom_lock_cb = rom_lock_cb
        self.flags = 0
        self.product = 0  # PV driver product number (1: XenSource/Citrix Windows)
        self.build = 0  # PV driver build number
        self.unplugged = 0  # union of every unplug mask received
        self._line = bytearray()

    def reset(self):
        self.set_flags(0)  # QEMU's platform_fixed_ioport_reset
        self._line = bytearray()

    # --- guest I/O ----------------------------------------------------------

    def read(self, offset, size):
        if size == 1:
            if offset == 0:
                return self.flags
            if offset == 2:
                return PROTOCOL_VERSION
            return 0xFF
        if size == 2:
            return MAGIC if offset == 0 else 0xFFFF
        if size != 4:
            log.guest_error(self.name, f"read size {size} at 0x{offset:x}")
        return 0xFFFFFFFF

    def write(self, offset, size, value):
        if size == 1:
            value &= 0xFF
            if offset == 0:
                self.set_flags(value)
            elif offset == 2:
                self.log_byte(value)
        elif size == 2:
            value &= 0xFFFF
            if offset == 0:
                self.unplug(value)
            elif offset == 2:
                self.product = value
                log.guest(self.name, f"PV driver product {value}")
        elif size == 4:
            if offset == 0:
                self.build = value & 0xFFFFFFFF
                log.guest(self.name, f"PV driver build {self.build}")
        else:
            log.guest_error(self.name, f"write size {size} at 0x{offset:x}")

    def read_rep(self, offset, size, count, buf):
        if size not in (1, 2, 4):
            return False
        fill_rep(buf, self.read(offset, size), size, count)  # reads have no effect
        return True

    def write_rep(self, offset, size, count, buf):
        if size != 1:
            return False
        if offset == 0 and self.rom_lock_cb is None:
            self.set_flags(buf[count - 1])  # a latch, with nobody told of it
        elif offset == 2:
            for i in range(count):
                self.log_byte(buf[i])
        elif offset != 0:
            return True  # byte writes elsewhere do nothing
        else:
            return False
        return True

    # --- shared with BAR0 ---------------------------------------------------

    def set_flags(self, value):
        self.flags = value & FLAG_ROM_LOCK
        if self.rom_lock_cb is not None:
            self.rom_lock_cb(self.flags)

    def unplug(self, mask):
        if mask & ~UNPLUG_KNOWN:
            log.unimp(self.name, f"unplug mask 0x{mask:x} has unknown bits")
        mask &= UNPLUG_KNOWN
        if not mask:
            return
        self.unplugged |= mask
        log.guest(self.name, f"guest unplugs emulated devices, mask 0x{mask:x}")
        self.unplug_cb(mask)

    def log_byte(self, b):
        # QEMU drops the byte that finds the buffer full; this keeps it.
        if b == 0x0A:
            self._flush()
            return
        self._line.append(b)
        if len(self._line) >= LOG_LINE_MAX:
            self._flush()

    def _flush(self):
        line = _printable(self._line)
        self._line = bytearray()
        if self.log_cb is not None:
            self.log_cb(line)
        else:
            log.guest(self.name, line)

    # --- save/restore ---------------------------------------------------------

    def state(self):
        return {
            "flags": self.flags,
            "product": self.product,
            "build": self.build,
            "unplugged": self.unplugged,
            "line": bytes(self._line),
        }

    def load_state(self, d):
        # QEMU's xen_platform_post_load re-applies the ROM lock.
        self.set_flags(d.get("flags", 0))
        self.product = d.get("product", 0) & 0xFFFF
        self.build = d.get("build", 0) & 0xFFFFFFFF
        self.unplugged = d.get("unplugged", 0) & UNPLUG_KNOWN
        line = bytes(d.get("line", b""))
        self._line = bytearray(line[:LOG_LINE_MAX])


class XenPlatformIoBar:
    """BAR0, 256 bytes of I/O, byte-wide like QEMU's xen_pci_io_ops (wider
    accesses are taken a byte at a time, as QEMU's memory core splits them)."""

    def __init__(self, ports):
        self.ports = ports

    def _read_byte(self, offset):
        return self.ports.flags if offset == BAR_FLAGS else 0xFF

    def _write_byte(self, offset, b):
        p = self.ports
        if offset == BAR_FLAGS:
            p.set_flags(b)
        elif offset == BAR_SUSE_UNPLUG:
            if b == 1:
                p.unplug(UNPLUG_IDE_SCSI_DISKS | UNPLUG_ALL_NICS)
        elif offset == BAR_UNPLUG_OR_LOG:
            if b == 1:
                p.unplug(UNPLUG_IDE_SCSI_DISKS)
            elif b == 2:
                p.unplug(UNPLUG_ALL_NICS)
            else:
                p.log_byte(b)

    def read(self, offset, size):
        v = 0
        for i in range(size):
            v |= self._read_byte(offset + i) << (8 * i)
        return v

    def write(self, offset, size, value):
        for i in range(size):
            self._write_byte(offset + i, (value >> (8 * i)) & 0xFF)

    def read_rep(self, offset, size, count, buf):
        fill_rep(buf, self.read(offset, size), size, count)  # reads have no effect
        return True

    def write_rep(self, offset, size, count, buf):
        if size != 1:
            return False
        if offset not in (BAR_FLAGS, BAR_SUSE_UNPLUG, BAR_UNPLUG_OR_LOG):
            return True  # nothing there acts on a write
        p = self.ports
        if offset == BAR_FLAGS and p.rom_lock_cb is None:
            p.set_flags(buf[count - 1])
            return True
        for i in range(count):
            self._write_byte(offset, buf[i])
        return True


class XenPlatformMmio:
    """BAR1, 16 MiB: QEMU's platform_mmio_read returns 0, writes are ignored."""

    def read(self, offset, size):
        return 0

    def write(self, offset, size, value):
        pass


class XenPlatformPci(PciFunction):
    """The PCI face of the platform device; `ports` is its XenPlatformPorts core,
    whose state this function saves and restores with its own (as QEMU's
    vmstate "platform" carries the flags)."""

    def __init__(self, ports):
        super().__init__(
            "xen_platform",
            VENDOR_XEN,
            DEVICE_XEN_PLATFORM,
            CLASS_OTHERS,
            revision=REVISION,
            subsys_vendor=VENDOR_XEN,
            subsys_id=DEVICE_XEN_PLATFORM,
            irq_pin=1,
        )
        self.ports = ports
        self.add_bar(0, IO_BAR_SIZE, "io", XenPlatformIoBar(ports))
        self.add_bar(1, MMIO_BAR_SIZE, "mem", XenPlatformMmio(), prefetch=True)

    def reset(self):
        super().reset()
        self.ports.reset()

    def state(self):
        d = super().state()
        d["ports"] = self.ports.state()
        return d

    def load_state(self, d):
        super().load_state(d)
        if "ports" in d:
            self.ports.load_state(d["ports"])
