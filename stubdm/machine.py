# The PC that stubdm emulates for a Xen HVM guest (DESIGN.md section 4):
# what sits on which port, PCI slot and IRQ line (stubdm/layout.py holds the
# numbers). The platform (the hypervisor through the ioreq server) is handed
# in: every range claimed here is registered with it, and re-registered when
# the guest moves a BAR or the PM base.
from stubdm import abi, layout, log
from stubdm.bus import IoBus
from stubdm.devices.i440fx import I440fxHostBridge, PciHostPorts
from stubdm.devices.i8042 import I8042
from stubdm.devices.pci_serial import PciSerial
from stubdm.devices.piix3 import Piix3Isa, ResetControl
from stubdm.devices.piix4_pm import PM1_CNT_OFFSET, Piix4Pm
from stubdm.devices.platform_pci import XenPlatformPci, XenPlatformPorts
from stubdm.devices.port92 import Port92
from stubdm.devices.uart16550 import Uart16550
from stubdm.irq import IrqLine
from stubdm.pci import PciBus

# Kept for those who imported them from here.
COM1_PORT = layout.COM1_PORT
COM1_IRQ = layout.COM1_IRQ
DEVFN_HOST_BRIDGE = layout.DEVFN_HOST_BRIDGE
DEVFN_PIIX3 = layout.DEVFN_PIIX3
DEVFN_PLATFORM = layout.DEVFN_PLATFORM
DEVFN_FIRST_FREE = layout.DEVFN_FIRST_FREE


class Window:
    """A device core seen through a window that starts `base` bytes into it."""

    def __init__(self, dev, base):
        self.dev = dev
        self.base = base

    def read(self, offset, size):
        return self.dev.read(self.base + offset, size)

    def write(self, offset, size, value):
        self.dev.write(self.base + offset, size, value)

    def read_rep(self, offset, size, count, buf):
        rep = getattr(self.dev, "read_rep", None)
        return rep is not None and rep(self.base + offset, size, count, buf)

    def write_rep(self, offset, size, count, buf):
        rep = getattr(self.dev, "write_rep", None)
        return rep is not None and rep(self.base + offset, size, count, buf)


class BarWindow:
    """A decoding BAR on the machine's bus: the bus has checked that the
    access lies inside the BAR, so it goes straight to the BAR's handler."""

    def __init__(self, function, index):
        self.f = function
        self.index = index
        self.h = function.bar_handler(index)

    def read(self, offset, size):
        return self.h.read(offset, size) & ((1 << (8 * size)) - 1)

    def write(self, offset, size, value):
        self.h.write(offset, size, value & ((1 << (8 * size)) - 1))

    def read_rep(self, offset, size, count, buf):
        rep = getattr(self.h, "read_rep", None)
        return rep is not None and rep(offset, size, count, buf)

    def write_rep(self, offset, size, count, buf):
        rep = getattr(self.h, "write_rep", None)
        return rep is not None and rep(offset, size, count, buf)


class IrqLatch:
    """The machine's interrupt lines as the platform sees them.

    Devices drive levels as often as they like (a 16550 fed by one 4 KiB rep
    outsb toggles its THRE interrupt 8192 times); each line's level is
    latched here and reported to the platform only when it differs from
    what the platform last saw, and while a request is being served (between
    hold() and release(), which the dispatcher calls around each request and
    the ioreq loop around each buffered batch) only once, when it ends. Out
    of a request (a timer) a change is reported at once.
    """

    def __init__(self, platform):
        self.platform = platform
        self.isa = bytearray(16)
        self.isa_seen = bytearray(16)
        self.intx = {}  # (dev, pin) -> level
        self.intx_seen = {}
        self.held = 0
        self.dirty = False
        self.reports = 0  # calls made to the platform

    def isa_line(self, irq):
        return IrqLine(lambda level: self.set_isa(irq, level))

    def set_isa(self, irq, level):
        self.isa[irq] = 1 if level else 0
        if self.held:
            self.dirty = True
        else:
            self._report_isa(irq)

    def set_intx(self, dev, pin, level):
        key = (dev, pin)
        self.intx[key] = 1 if level else 0
        if self.held:
            self.dirty = True
        else:
            self._report_intx(key)

    def hold(self):
        self.held += 1

    def release(self):
        if self.held > 0:
            self.held -= 1
        if not self.held and self.dirty:
            self.flush()

    def flush(self):
        self.dirty = False
        for irq in range(16):
            if self.isa[irq] != self.isa_seen[irq]:
                self._report_isa(irq)
        if self.intx:
            for key in sorted(self.intx):
                self._report_intx(key)

    def _report_isa(self, irq):
        level = self.isa[irq]
        if level != self.isa_seen[irq]:
            self.isa_seen[irq] = level
            self.reports += 1
            self.platform.set_isa_irq_level(irq, level)

    def _report_intx(self, key):
        level = self.intx[key]
        if level != self.intx_seen.get(key, 0):
            self.intx_seen[key] = level
            self.reports += 1
            self.platform.set_pci_intx_level(key[0], key[1], level)


NIC_MODELS = ("rtl8139", "e1000")


def make_nic(model, net, mem, mac, name, clock=None):
    """An emulated NIC of `model` on network `net` (stubdm/net.py). clock: ticks
    in us for e1000's interrupt throttling (ITR), which then needs the event
    loop to call run_timers (Machine.nic_timer_deadline); None: no throttling."""
    if model == "rtl8139":
        from stubdm.devices.rtl8139 import Rtl8139

        return Rtl8139(net, mem, mac, name)
    if model == "e1000":
        from stubdm.devices.e1000 import E1000

        return E1000(net, mem, mac, name, clock)
    raise ValueError("unknown NIC model " + model)


class Machine:
    """Devices, buses and their registration with the platform.

    platform: set_isa_irq_level(irq, level), set_pci_intx_level(dev, pin,
    level), set_pci_link_route(link, irq), map_range(kind, start, end),
    unmap_range(kind, start, end), map_pcidev(devfn), shutdown(reason), and
    optionally set_acpi_s_state(state) (S3; qemu-xen does it with
    xc_set_hvm_param(HVM_PARAM_ACPI_S_STATE)).
    chardevs: back ends for the serial ports, in order (COM1 first).
    pci_serial_slots: one slot per pci-serial (0: the first free slot).
    isa: the ISA devices (COM1, i8042, platform ports 0x10, port 0x92).
    com1: COM1 among them (None: with isa). QEMU's -nodefaults drops only the default
    serial port: an explicit -serial still makes COM1, and the rest always stay.
    s3: the guest's ACPI tables offer S3 (libxl's acpi_s3, default on).
    ide: None (no IDE function), or the PIIX3 IDE at 01.1 as a dict: "drives"
    [(channel, unit, BlockDevice)], "mem" (GuestMemory, for DMA), "native"
    (PCI native mode on INTA instead of the compatibility ports; see
    stubdm/devices/ide.py).
    nics: (model, slot, net, mac) per NIC: model "rtl8139" or "e1000", slot 0
    for the first free (after the pci-serials), net its stubdm.net network,
    mac 6 bytes or None (the network's); nic_mem: the GuestMemory they DMA
    through; nic_clock: see make_nic.
    ahci: None, or the ICH9 AHCI function as a dict: "disks" (a BlockDevice or
    None per SATA port), "mem" (GuestMemory), "slot" (0: the first free, after
    the NICs).
    vga: None, or the standard VGA at 00:02.0 as a dict: "vram" (its video RAM:
    stubdm.memory.GuestVram under Xen, vga.LocalVram without one), "surface"
    (a stubdm.display.Surface, or None).
    """

    def __init__(self, platform, chardevs, ram_bytes, isa=True, pci_serial_slots=(), s3=True,
                 ide=None, nics=(), nic_mem=None, ahci=None, nic_clock=None, com1=None,
                 vga=None):
        self.platform = platform
        self.vga = None
        self.irqs = IrqLatch(platform)
        self.pio = IoBus("pio")
        self.mmio = IoBus("mmio")
        self.pci = PciBus(intx_sink=self.irqs.set_intx, bar_sink=self._bar_changed)
        self.bar_ranges = {}
        self.pm_range = None
        self.reset_requested = False  # the guest reset or powered off: stop serving
        self.shutdown_reason = None
        self.suspended = False
        self.uarts = []
        chardevs = list(chardevs)
        com1 = isa if com1 is None else (isa and com1)

        self.pci.attach(layout.DEVFN_HOST_BRIDGE, I440fxHostBridge(ram_bytes))
        self.pci.attach(layout.DEVFN_PIIX3, Piix3Isa(platform.set_pci_link_route))
        self.pm = Piix4Pm(self.irqs.isa_line(layout.SCI_IRQ), self._pm_moved, self.poweroff,
                          self.suspend, s3=s3, com1=com1)
        self.pci.attach(layout.DEVFN_PIIX4_PM, self.pm)
        self.platform_ports = XenPlatformPorts(self._unplug, self._platform_log)
        self.pci.attach(layout.DEVFN_PLATFORM, XenPlatformPci(self.platform_ports))

        # The chipset's own ports, there whatever -nodefaults says.
        self.reset_control = ResetControl(self.reset)
        self.host_ports = PciHostPorts(self.pci, self.reset_control)
        self._claim_ports(layout.PCI_HOST_PORTS, layout.PCI_HOST_PORT_COUNT, self.host_ports,
                          "pci host")
        self._claim_ports(layout.APM_CNT, 2, self.pm.apm, "apm")
        self._claim_ports(layout.ACPI_GPE0_BLK, layout.ACPI_GPE0_LEN, self.pm.gpe, "gpe0")

        if com1:
            chardev = chardevs.pop(0) if chardevs else None
            uart = Uart16550(self.irqs.isa_line(layout.COM1_IRQ), "com1", chardev)
            self.uarts.append(uart)
            self._claim_ports(layout.COM1_PORT, 8, uart, "com1")
        if isa:
            self.i8042 = I8042(self.irqs.isa_line(layout.KBD_IRQ),
                               self.irqs.isa_line(layout.AUX_IRQ), self.reset)
            self._claim_ports(layout.I8042_DATA, 1, Window(self.i8042, 0), "i8042 data")
            self._claim_ports(layout.I8042_CMD, 1, Window(self.i8042, 4), "i8042 command")
            self._claim_ports(layout.PLATFORM_PORTS, 16, self.platform_ports, "xen platform")
            self.port92 = Port92(self.reset)
            self._claim_ports(layout.PORT92, 1, self.port92, "port92")

        requests = [("pci-serial", slot) for slot in pci_serial_slots]
        requests += [(n[0], n[1]) for n in nics]
        if ahci is not None:
            requests.append(("ahci", ahci.get("slot", 0)))
        slots = layout.place(requests)
        for slot in slots[:len(pci_serial_slots)]:
            irq = IrqLine()
            uart = Uart16550(irq, "pci-serial", chardevs.pop(0) if chardevs else None)
            self.uarts.append(uart)
            self.pci.attach(layout.devfn(slot), PciSerial(uart, irq))
        self.nics = []
        for i in range(len(nics)):
            model, _slot, net, mac = nics[i]
            slot = slots[len(pci_serial_slots) + i]
            same = len([n for n in self.nics if n.name.split(".")[0] == model])
            name = model if not same else "%s.%d" % (model, same)  # the fuzzer's --device names
            nic = make_nic(model, net, nic_mem, mac, name, nic_clock)
            self.nics.append(nic)
            self.pci.attach(layout.devfn(slot), nic)

        if vga is not None:
            self._add_vga(vga)
        self.ide = None
        if ide is not None:
            self._add_ide(ide)
        self.ahci = None
        if ahci is not None:
            from stubdm.devices.ahci import Ahci

            # MSI as qemu-xen's ich9-ahci offers it, where the platform sends it.
            self.ahci = Ahci(ahci["mem"], ahci.get("disks", ()),
                             msi=getattr(platform, "inject_msi", None))
            self.pci.attach(layout.devfn(slots[-1]), self.ahci)

        for d in self.pci.devfns():
            platform.map_pcidev(d)

    def nic_timer_deadline(self):
        """The earliest tick (us) at which run_nic_timers has work, or None."""
        when = None
        for nic in self.nics:
            d = getattr(nic, "timer_deadline", None)
            t = d() if d is not None else None
            if t is not None and (when is None or t - when < 0):
                when = t
        return when

    def run_nic_timers(self, now):
        for nic in self.nics:
            run = getattr(nic, "run_timers", None)
            if run is not None:
                run(now)

    def _add_ide(self, cfg):
        from stubdm.devices import ata
        from stubdm.devices.ide import COMPAT, PiixIde

        native = cfg.get("native", False)
        lines = None if native else [self.irqs.isa_line(COMPAT[i][2]) for i in range(2)]
        ide = PiixIde(cfg["mem"], lines, native=native)
        for channel, unit, disk in cfg.get("drives", ()):
            cls = ata.AtapiCdrom if disk.cdrom else ata.AtaDisk
            serial = "QM%05d" % (2 * channel + unit + 1)  # QEMU's drive serials
            ide.attach(channel, unit, cls(ide.channels[channel], unit,
                                          "ide%d.%d" % (channel, unit), disk, serial))
        self.pci.attach(layout.DEVFN_PIIX3_IDE, ide)
        if not native:
            for start, length, dev, name in ide.compat_ports():
                self._claim_ports(start, length, dev, name)
        self.ide = ide

    def _add_vga(self, cfg):
        from stubdm.devices import vga as vga_mod

        dev = vga_mod.Vga(cfg["vram"], cfg.get("surface"))
        self.vga = dev
        self.pci.attach(layout.DEVFN_VGA, dev)
        self._claim_ports(vga_mod.PORTS_START, vga_mod.PORTS_COUNT, dev.ports, "vga")
        self._claim_ports(vga_mod.DISPI_PORTS, vga_mod.DISPI_PORT_COUNT, dev.dispi_ports,
                          "vga dispi")
        self.mmio.add(vga_mod.WINDOW_START, vga_mod.WINDOW_SIZE, dev.window, "vga window")
        self.platform.map_range(abi.XEN_DMOP_IO_RANGE_MEMORY, vga_mod.WINDOW_START,
                                vga_mod.WINDOW_START + vga_mod.WINDOW_SIZE - 1)

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
            if not (function is self.vga and index == 0):
                self.platform.unmap_range(xkind, r.start, r.end - 1)
        ram_bar = function is self.vga and index == 0
        if ram_bar:
            # The video RAM is guest memory under Xen: moved into the BAR, never
            # claimed from the ioreq server (ioreqs that still come, e.g. from a
            # trapped BAR under host_sim's QEMU engine, reach it on our bus).
            if not function.vram_moved(new):
                return
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
        if not ram_bar:
            self.platform.map_range(xkind, new, new + size - 1)

    def _pm_moved(self, base):
        """PMBA changed: PM1a_CNT (2 bytes at base + 4) moves with it."""
        r = self.pm_range
        if r is not None:
            self.pm_range = None
            self.pio.remove(r)
            self.platform.unmap_range(abi.XEN_DMOP_IO_RANGE_PORT, r.start, r.end - 1)
        if base is None:
            return
        start = base + PM1_CNT_OFFSET
        try:
            r = self.pio.add(start, 2, self.pm.control, "piix4_pm PM1a_CNT")
        except ValueError as e:
            log.guest_error("piix4_pm", str(e))
            return
        self.pm_range = r
        self.platform.map_range(abi.XEN_DMOP_IO_RANGE_PORT, start, start + 1)

    def _unplug(self, mask):
        log.guest("platform", "guest unplugged emulated devices, mask %#x" % mask)

    def _platform_log(self, line):
        log.guest("guest", line)

    def reset(self):
        self._shutdown(abi.SHUTDOWN_reboot)

    def poweroff(self):
        self._shutdown(abi.SHUTDOWN_poweroff)

    def _shutdown(self, reason):
        # As qemu-xen's destroy_hvm_domain: the dm_op shutdown, once; the
        # domain goes away (or is rebuilt) and this device model with it.
        if self.reset_requested:
            return
        self.reset_requested = True
        self.shutdown_reason = reason
        self.platform.shutdown(reason)

    def suspend(self):
        # qemu-xen's suspend notifier: xc_set_hvm_param(ACPI_S_STATE, 3), and
        # Xen parks the vCPUs until the toolstack sets the parameter to 0.
        # Once, as QEMU's suspend request is ignored while suspended: a rep of
        # S3 writes is one suspend, not one hypercall an item (the fuzzer's).
        if self.suspended:
            return
        self.suspended = True
        set_state = getattr(self.platform, "set_acpi_s_state", None)
        if set_state is None:
            log.unimp("piix4_pm", "S3: this platform cannot set HVM_PARAM_ACPI_S_STATE")
            return
        try:
            set_state(3)
        except Exception as e:  # noqa: BLE001 - as qemu-xen, which ignores the answer
            log.unimp("piix4_pm", "S3: the hypervisor refused: %s" % e)
