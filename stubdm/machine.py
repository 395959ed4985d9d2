# The PC that stubdm emulates for a Xen HVM guest (DESIGN.md section 4):
# what sits on which port, PCI slot and IRQ line. The platform (the
# hypervisor through the ioreq server) is handed in: every range claimed here
# is registered with it, and re-registered when the guest moves a BAR.
from stubdm import abi, log
from stubdm.bus import IoBus
from stubdm.devices.i440fx import I440fxHostBridge
from stubdm.devices.i8042 import I8042
from stubdm.devices.pci_serial import PciSerial
from stubdm.devices.piix3 import Piix3Isa
from stubdm.devices.platform_pci import XenPlatformPci, XenPlatformPorts
from stubdm.devices.uart16550 import Uart16550
from stubdm.irq import IrqLine
from stubdm.pci import PciBus

# Fixed ISA resources of the PC (and of Xen's xenfv machine).
COM1_PORT = 0x3F8
COM1_IRQ = 4
I8042_DATA = 0x60
I8042_CMD = 0x64
KBD_IRQ = 1
AUX_IRQ = 12
PLATFORM_PORTS = 0x10
RESET_CONTROL = 0xCF9  # PIIX3 reset control register

# PCI slots, as QEMU's xenfv machine places them.
DEVFN_HOST_BRIDGE = 0x00
DEVFN_PIIX3 = 0x08
DEVFN_PLATFORM = 0x18
DEVFN_FIRST_FREE = 0x20


class Window:
    """A device core seen through a window that starts `base` bytes into it."""

    def __init__(self, dev, base):
        self.dev = dev
        self.base = base

    def read(self, offset, size):
        return self.dev.read(self.base + offset, size)

    def write(self, offset, size, value):
        self.dev.write(self.base + offset, size, value)


class BarWindow:
    def __init__(self, function, index):
        self.f = function
        self.index = index

    def read(self, offset, size):
        return self.f.bar_read(self.index, offset, size)

    def write(self, offset, size, value):
        self.f.bar_write(self.index, offset, size, value)


class ResetControl:
    """Port 0xcf9: bit 2 set starts a reset (bit 1 says hard or soft; both reboot here)."""

    def __init__(self, reset_cb):
        self.value = 0
        self.reset_cb = reset_cb

    def read(self, offset, size):
        return self.value if size == 1 else (1 << (8 * size)) - 1

    def write(self, offset, size, value):
        if size != 1:
            log.guest_error("rcr", "%d-byte write to 0xcf9" % size)
            return
        self.value = value & 0x0A
        if value & 0x04:
            self.reset_cb()


class Machine:
    """Devices, buses and their registration with the platform.

    platform: set_isa_irq_level(irq, level), set_pci_intx_level(dev, pin,
    level), set_pci_link_route(link, irq), map_range(kind, start, end),
    unmap_range(kind, start, end), map_pcidev(devfn), shutdown(reason).
    chardevs: back ends for the serial ports, in order (COM1 first).
    """

    def __init__(self, platform, chardevs, ram_bytes, isa=True, pci_serial_slots=()):
        self.platform = platform
        self.pio = IoBus("pio")
        self.mmio = IoBus("mmio")
        self.pci = PciBus(intx_sink=platform.set_pci_intx_level, bar_sink=self._bar_changed)
        self.bar_ranges = {}
        self.reset_requested = False
        self.uarts = []
        chardevs = list(chardevs)

        self.pci.attach(DEVFN_HOST_BRIDGE, I440fxHostBridge(ram_bytes))
        self.pci.attach(DEVFN_PIIX3, Piix3Isa(platform.set_pci_link_route))
        self.platform_ports = XenPlatformPorts(self._unplug, self._platform_log)
        self.pci.attach(DEVFN_PLATFORM, XenPlatformPci(self.platform_ports))

        if isa:
            chardev = chardevs.pop(0) if chardevs else None
            com1 = Uart16550(self._isa_line(COM1_IRQ), "com1", chardev)
            self.uarts.append(com1)
            self._claim_ports(COM1_PORT, 8, com1, "com1")
            self.i8042 = I8042(self._isa_line(KBD_IRQ), self._isa_line(AUX_IRQ), self.reset)
            self._claim_ports(I8042_DATA, 1, Window(self.i8042, 0), "i8042 data")
            self._claim_ports(I8042_CMD, 1, Window(self.i8042, 4), "i8042 command")
            self._claim_ports(PLATFORM_PORTS, 16, self.platform_ports, "xen platform")
            self._claim_ports(RESET_CONTROL, 1, ResetControl(self.reset), "reset control")

        devfn = DEVFN_FIRST_FREE
        for slot in pci_serial_slots:
            devfn = slot << 3 if slot else devfn
            irq = IrqLine()
            uart = Uart16550(irq, "pci-serial", chardevs.pop(0) if chardevs else None)
            self.uarts.append(uart)
            self.pci.attach(devfn, PciSerial(uart, irq))
            devfn += 8

        for d in self.pci.devfns():
            platform.map_pcidev(d)

    def _isa_line(self, irq):
        platform = self.platform
        return IrqLine(lambda level: platform.set_isa_irq_level(irq, level))

    def _claim_ports(self, start, length, dev, name):
        self.pio.add(start, length, dev, name)
        self.platform.map_range(abi.XEN_DMOP_IO_RANGE_PORT, start, start + length - 1)

    def _bar_changed(self, function, index, kind, old, new, size):
        key = (function.devfn, index)
        is_io = kind == "io"
        bus = self.pio if is_io else self.mmio
        xkind = abi.XEN_DMOP_IO_RANGE_PORT if is_io else abi.XEN_DMOP_IO_RANGE_MEMORY
        r = self.bar_ranges.pop(key, None)
        if r is not None:
            bus.remove(r)
            self.platform.unmap_range(xkind, r.start, r.end - 1)
        if new is None:
            return
        try:
            r = bus.add(new, size, BarWindow(function, index), "%s BAR%d" % (function.name, index))
        except ValueError as e:
            # The guest put this BAR over another range: it decodes nothing
            # until moved away (real chipsets make such overlaps undefined).
            log.guest_error("pci", str(e))
            return
        self.bar_ranges[key] = r
        self.platform.map_range(xkind, new, new + size - 1)

    def _unplug(self, mask):
        log.info("platform", "guest unplugged emulated devices, mask %#x" % mask)

    def _platform_log(self, line):
        log.info("guest", line)

    def reset(self):
        self.reset_requested = True
        self.platform.shutdown(abi.SHUTDOWN_reboot)
