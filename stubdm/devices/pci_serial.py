# A 16550A UART behind a PCI I/O BAR: QEMU's "pci-serial" (hw/char/serial-pci.c,
# docs/specs/pci-serial.rst), which Linux binds with 8250_pci (DESIGN.md
# section 10): 1b36:0002 rev 1, class 0x070002 (serial controller, 16550
# compatible), subsystem 1af4:1100 (QEMU's default), INTA, BAR0 8 bytes of I/O.
#
# Wiring the UART's interrupt: the UART core takes an IrqLine at
# construction; hand the same line here and it is routed to INTA:
#     line = IrqLine()
#     uart = <16550 core>(..., line, ...)
#     fn = PciSerial(uart, irq=line)
#     bus.attach(devfn, fn)
# (or later: stubdm.pci.wire_irq(line, fn)).
from stubdm.compat import const
from stubdm.pci import PciFunction, wire_irq

VENDOR_REDHAT = const(0x1B36)
DEVICE_REDHAT_SERIAL = const(0x0002)
CLASS_SERIAL_16550 = const(0x070002)
SUBSYS_VENDOR_QEMU = const(0x1AF4)
SUBSYS_ID_QEMU = const(0x1100)
UART_BAR_SIZE = const(8)


class _ByteWide:
    """QEMU's serial_io_ops take one byte at a time; a wider access becomes
    consecutive byte accesses, little-endian, as QEMU's memory core splits it."""

    def __init__(self, core):
        self.core = core

    def read(self, offset, size):
        if size == 1:
            return self.core.read(offset, 1) & 0xFF
        v = 0
        for i in range(size):
            v |= (self.core.read(offset + i, 1) & 0xFF) << (8 * i)
        return v

    def write(self, offset, size, value):
        if size == 1:
            self.core.write(offset, 1, value & 0xFF)
            return
        for i in range(size):
            self.core.write(offset + i, 1, (value >> (8 * i)) & 0xFF)

    def read_rep(self, offset, size, count, buf):
        # A whole rep of bytes to one register: the core's own, if it has one.
        rep = getattr(self.core, "read_rep", None)
        return size == 1 and rep is not None and rep(offset, 1, count, buf)

    def write_rep(self, offset, size, count, buf):
        rep = getattr(self.core, "write_rep", None)
        return size == 1 and rep is not None and rep(offset, 1, count, buf)


class PciSerial(PciFunction):
    """PCI function for a UART core (anything with read/write(offset, size...)).

    The UART's own state is saved by whoever owns the UART; state() here is
    the PCI configuration space only.
    """

    def __init__(self, uart, irq=None):
        super().__init__(
            "pci_serial",
            VENDOR_REDHAT,
            DEVICE_REDHAT_SERIAL,
            CLASS_SERIAL_16550,
            revision=1,
            subsys_vendor=SUBSYS_VENDOR_QEMU,
            subsys_id=SUBSYS_ID_QEMU,
            irq_pin=1,
        )
        self.uart = uart
        self.add_bar(0, UART_BAR_SIZE, "io", _ByteWide(uart))
        if irq is not None:
            wire_irq(irq, self)
