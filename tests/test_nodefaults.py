"""-nodefaults as QEMU takes it (DESIGN.md 4, 7): it drops the default serial port only.
libxl starts a stub domain's device model with -nodefaults -serial /dev/hvc3, so the guest
has COM1 on that console; the i8042, port 0x92 and the platform ports are the xenfv
machine's whatever -nodefaults says."""
from host_sim.scripted import Session
from stubdm.main import parse_args, serial_backends

ABSENT = 0xFF  # what a port nobody claims reads under Xen


def backends(*args):
    return serial_backends(parse_args(["-xen-domid", "1"] + list(args)))


def test_com1_only_when_asked_for_or_by_default():
    assert backends() == ["stdio"]
    assert backends("-nodefaults") == []
    assert backends("-nodefaults", "-serial", "/dev/hvc3") == ["/dev/hvc3"]
    assert backends("-serial", "null", "-nodefaults", "-serial", "file:/x") == ["null",
                                                                                "file:/x"]


def test_libxl_serial_is_com1_under_nodefaults(dm_runtime):
    # Session names the -serial (its log file) as host_sim's setting, after which
    # -nodefaults comes from the arguments, as libxl writes it.
    with Session(runtime=dm_runtime, dm_args=["-nodefaults"]) as s:
        g = s.guest
        assert g.inb(0x3FD) == 0x60  # COM1's LSR: transmitter empty
        for c in b"com1 here":
            g.outb(0x3F8, c)
        s.hv.pump_until(lambda: b"com1 here" in s.serial_output(), "COM1's output")
        # The PIIX4's DEVRESB says COM1 is decoded, as the ACPI tables read it.
        assert s.guest.pci_read(1, 3, 0x67, size=1) & 0x08
        assert g.inb(0x64) != ABSENT  # i8042 status
        assert g.inb(0x92) != ABSENT  # port 0x92
        assert g.inw(0x10) == 0x49D2  # the platform device's unplug magic
