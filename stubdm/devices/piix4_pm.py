# Intel 82371AB PIIX4 function 3: ACPI power management, PCI 00:01.3 of the
# xenfv machine (8086:7113 rev 03, class 0x068000), as QEMU's hw/acpi/piix4.c
# and hw/acpi/core.c present it to a Xen guest. Datasheet: Intel 82371AB
# PIIX4, document 290562, section 3.4 (function 3 configuration) and 7.2
# (power management I/O registers).
#
# How Xen's HVM machine splits the ACPI hardware (checked in Xen's source):
# - hvmloader (tools/firmware/hvmloader/pci.c) finds this function by class
#   0x0680, sets PMBA (config 0x40) to 0xb001 (ACPI_PM1A_EVT_BLK_ADDRESS_V1),
#   enables it with config 0x80 bit 0, writes interrupt line 9, turns the
#   SMBus I/O off (0xd2 = 0), then enables ACPI with outb(0xb2, 0xf1) until
#   PM1a_CNT.SCI_EN reads back set (hvmloader.c acpi_enable_sci). SCI_EN is
#   clear at reset on "xenfv" (QEMU's alias of xenfv-4.2, whose machine
#   compat turns PIIX4_PM's smm-compat on; measured: pc-i440fx-6.0 and later
#   with smm=off set SCI_EN at reset and ignore ACPI_ENABLE/DISABLE).
# - libacpi's FADT (static_tables.c) names PM1a_EVT 0xb000 (4 bytes),
#   PM1a_CNT 0xb004 (2), PM_TMR 0xb008 (4), GPE0 0xafe0 (4), SCI_INT 9.
# - Xen itself emulates PM1a_EVT and PM_TMR (xen/arch/x86/hvm/pmtimer.c
#   intercepts them before any ioreq server): only PM1a_CNT, GPE0 and the APM
#   ports reach the device model. So this function claims PM1a_CNT alone at
#   PMBA + 4 (what qemu-xen's memory listener claims there: the holes of
#   QEMU's 64-byte PM block are unclaimed and read all ones under Xen).
# - Sleep types (libacpi dsdt.asl, ssdt_s3.asl, ssdt_s4.asl): \_S5 and \_S4
#   are SLP_TYP 0, \_S3 is SLP_TYP 1 (present when the toolstack offers S3).
#   QEMU's acpi_pm1_cnt_write: SLP_EN with type 0 powers off, type 1
#   suspends; any other type is not in Xen's tables: a guest error, ignored.
from stubdm import log
from stubdm.bus import fill_rep
from stubdm.compat import const
from stubdm.pci import PciFunction

VENDOR_INTEL = const(0x8086)
DEVICE_82371AB_3 = const(0x7113)
CLASS_BRIDGE_OTHER = const(0x068000)
REVISION = const(0x03)
SUBSYS_VENDOR_QEMU = const(0x1AF4)
SUBSYS_ID_QEMU = const(0x1100)
STATUS_RESET = const(0x0280)  # fast back-to-back, DEVSEL medium (QEMU's realize)

# Function 3 configuration registers (datasheet 3.4).
PMBA = const(0x40)  # PM base address, bits 15:6; bit 0 reads 1 after reset
PMBA_MASK = const(0xFFC0)
DEVACTB = const(0x58)  # 0x58-0x5b device activity B
DEVRESD = const(0x5F)
DEVRESA_63 = const(0x63)
DEVRESB_67 = const(0x67)
PMREGMISC = const(0x80)  # bit 0: PM I/O space enable
SMBBA = const(0x90)  # SMBus base address
SMBHSTCFG = const(0xD2)  # bit 0: SMBus host interface enable
SMB_IO_BASE = const(0xB100)  # QEMU's xenfv smb_io_base
SMM_DONE = const(0x02)  # 0x5b bit 1: QEMU's "SMM already initialised" (no SMM under Xen)

# PM I/O registers (datasheet 7.2; ACPI 1.0 fixed hardware).
PM1_CNT_OFFSET = const(4)  # from PMBA
SCI_EN = const(0x0001)
SLP_TYP_SHIFT = const(10)
SLP_TYP_MASK = const(7)
SLP_EN = const(0x2000)
SLP_TYP_S5 = const(0)  # \_S5 and \_S4 in Xen's DSDT/SSDT_S4
SLP_TYP_S3 = const(1)  # \_S3 in Xen's SSDT_S3

# APM control and status, ports 0xb2 and 0xb3 (QEMU hw/isa/apm.c).
APM_ACPI_ENABLE = const(0xF1)  # FADT ACPI_ENABLE
APM_ACPI_DISABLE = const(0xF0)  # FADT ACPI_DISABLE

GPE0_LEN = const(4)  # 2 bytes status (write 1 to clear), 2 bytes enable


class Pm1Control:
    """PM1a_CNT, a 2-byte window (offset 0 = PMBA + 4).

    QEMU's ops for it implement 16-bit accesses only: a byte write to the low
    byte is carried out as a 16-bit write of that byte (the high byte, where
    SLP_TYP and SLP_EN live, becomes 0), a byte write to the high byte keeps
    the low byte. Both are logged: ACPI says PM1_CNT is a 16-bit register.
    """

    def __init__(self, pm):
        self.pm = pm

    def read(self, offset, size):
        cnt = self.pm.pm1_cnt
        if offset == 0 and size == 2:
            return cnt
        if size == 1 and offset in (0, 1):
            return (cnt >> (8 * offset)) & 0xFF
        log.guest_error("piix4_pm", "PM1a_CNT read of %d bytes at +%d" % (size, offset))
        return (1 << (8 * size)) - 1

    def read_rep(self, offset, size, count, buf):
        if not (offset == 0 and size == 2 or size == 1 and offset in (0, 1)):
            return False
        fill_rep(buf, self.read(offset, size), size, count)  # reads have no effect
        return True

    def write(self, offset, size, value):
        pm = self.pm
        if offset == 0 and size == 2:
            pm.pm1_cnt_write(value & 0xFFFF)
        elif offset == 0 and size == 1:
            log.guest_error("piix4_pm", "PM1a_CNT byte write 0x%02x at +0" % (value & 0xFF))
            pm.pm1_cnt_write(value & 0xFF)
        elif offset == 1 and size == 1:
            log.guest_error("piix4_pm", "PM1a_CNT byte write 0x%02x at +1" % (value & 0xFF))
            pm.pm1_cnt_write(((value & 0xFF) << 8) | (pm.pm1_cnt & 0xFF))
        else:
            log.guest_error("piix4_pm", "PM1a_CNT write of %d bytes at +%d dropped" % (size, offset))


class ApmPorts:
    """Ports 0xb2 (APM control: the FADT's SMI_CMD) and 0xb3 (APM status), byte-wide."""

    def __init__(self, pm):
        self.pm = pm

    def read(self, offset, size):
        v = 0
        for i in range(size):
            o = offset + i
            b = self.pm.apmc if o == 0 else self.pm.apms if o == 1 else 0xFF
            v |= b << (8 * i)
        return v

    def write(self, offset, size, value):
        for i in range(size):
            o = offset + i
            b = (value >> (8 * i)) & 0xFF
            if o == 0:
                self.pm.apm_command(b)
            elif o == 1:
                self.pm.apms = b

    def read_rep(self, offset, size, count, buf):
        fill_rep(buf, self.read(offset, size), size, count)  # reads have no effect
        return True

    def write_rep(self, offset, size, count, buf):
        if size != 1 or offset not in (0, 1):
            return False
        pm = self.pm
        last = buf[count - 1]
        if offset == 1:
            pm.apms = last  # a plain latch
            return True
        # SMI_CMD: the command byte latches; only ACPI enable and disable
        # act, and the last of them decides SCI_EN.
        for i in range(count - 1, -1, -1):
            if buf[i] in (APM_ACPI_ENABLE, APM_ACPI_DISABLE):
                pm.apm_command(buf[i])
                break
        pm.apm_command(last)
        return True


class Gpe0Block:
    """GPE0_BLK, 4 bytes: GPE0_STS (write 1 to clear) then GPE0_EN, byte-wide as QEMU's."""

    def __init__(self, pm):
        self.pm = pm

    def read(self, offset, size):
        v = 0
        for i in range(size):
            o = offset + i
            b = 0xFF
            if 0 <= o < GPE0_LEN // 2:
                b = self.pm.gpe_sts[o]
            elif o < GPE0_LEN:
                b = self.pm.gpe_en[o - GPE0_LEN // 2]
            v |= b << (8 * i)
        return v

    def write(self, offset, size, value):
        pm = self.pm
        for i in range(size):
            o = offset + i
            b = (value >> (8 * i)) & 0xFF
            if 0 <= o < GPE0_LEN // 2:
                pm.gpe_sts[o] &= ~b & 0xFF
            elif o < GPE0_LEN:
                pm.gpe_en[o - GPE0_LEN // 2] = b
        pm.update_sci()

    def read_rep(self, offset, size, count, buf):
        fill_rep(buf, self.read(offset, size), size, count)  # reads have no effect
        return True

    def write_rep(self, offset, size, count, buf):
        # Status bytes: each write clears its ones, so all clear their union;
        # enable bytes latch, so the last write's stand.
        pm = self.pm
        half = GPE0_LEN // 2
        for j in range(size):
            o = offset + j
            if 0 <= o < half:
                acc = 0
                for i in range(j, count * size, size):
                    acc |= buf[i]
                pm.gpe_sts[o] &= ~acc & 0xFF
            elif half <= o < GPE0_LEN:
                pm.gpe_en[o - half] = buf[(count - 1) * size + j]
        pm.update_sci()
        return True


class Piix4Pm(PciFunction):
    """PIIX4 function 3.

    sci: IrqLine of the SCI (ISA IRQ 9 on xenfv); io_moved(base or None):
    PM1a_CNT starts (or stops) decoding at base + 4; poweroff_cb(),
    suspend_cb(): the guest entered S5 (or S4, the same type in Xen's
    tables) or S3. s3: whether the ACPI tables offer S3 (libxl acpi_s3,
    default on). com1, lpt1: what the DEVRES registers report present.
    """

    def __init__(self, sci, io_moved, poweroff_cb, suspend_cb, s3=True, com1=True, lpt1=False):
        super().__init__(
            "piix4_pm",
            VENDOR_INTEL,
            DEVICE_82371AB_3,
            CLASS_BRIDGE_OTHER,
            revision=REVISION,
            subsys_vendor=SUBSYS_VENDOR_QEMU,
            subsys_id=SUBSYS_ID_QEMU,
            irq_pin=1,
        )
        self.sci = sci
        self.io_moved = io_moved
        self.poweroff_cb = poweroff_cb
        self.suspend_cb = suspend_cb
        self.s3 = s3
        self._com1 = com1
        self._lpt1 = lpt1
        self.pm1_cnt = 0
        self.apmc = 0
        self.apms = 0
        self.gpe_sts = bytearray(GPE0_LEN // 2)
        self.gpe_en = bytearray(GPE0_LEN // 2)
        self.io_base = None  # where PM1a_CNT's block decodes (PMBA), or None
        self.control = Pm1Control(self)
        self.apm = ApmPorts(self)
        self.gpe = Gpe0Block(self)
        self._set(0x06, 2, STATUS_RESET)
        # What QEMU's machine-ready notifier and realize write once.
        self.config[DEVRESD] = 0x10 | (0x80 if lpt1 else 0)
        self.config[DEVRESA_63] = 0x60
        self.config[DEVRESB_67] = 0x08 if com1 else 0
        self._set(SMBBA, 2, SMB_IO_BASE | 1)
        self.config[SMBHSTCFG] = 0x09
        self.reset()

    def reset(self):
        super().reset()
        # QEMU's piix4_reset and acpi_pm1_cnt_reset / acpi_gpe_reset.
        for i in range(4):
            self.config[DEVACTB + i] = 0
        self.config[DEVACTB + 3] = SMM_DONE
        self._set(PMBA, 4, 0x01)
        self.config[PMREGMISC] = 0
        self.pm1_cnt = 0
        for i in range(GPE0_LEN // 2):
            self.gpe_sts[i] = 0
            self.gpe_en[i] = 0
        self._pm_io_update()
        self.update_sci()

    # --- configuration space ------------------------------------------------

    def config_written(self, offset, size, value):
        end = offset + size
        if offset <= PMREGMISC < end or (offset < PMBA + 4 and PMBA < end):
            self._pm_io_update()
        if offset <= SMBHSTCFG < end and self.config[SMBHSTCFG] & 1:
            log.unimp(self.name, "SMBus host interface enabled: not modelled")

    def _pm_io_update(self):
        base = None
        if self.config[PMREGMISC] & 1:
            base = self._get(PMBA, 4) & PMBA_MASK
        if base != self.io_base:
            self.io_base = base
            if self.io_moved is not None:
                self.io_moved(base)

    # --- PM1a_CNT -----------------------------------------------------------

    def pm1_cnt_write(self, value):
        # QEMU keeps every bit but SLP_EN, which only triggers.
        self.pm1_cnt = value & ~SLP_EN & 0xFFFF
        if not value & SLP_EN:
            return
        typ = (value >> SLP_TYP_SHIFT) & SLP_TYP_MASK
        if typ == SLP_TYP_S5:
            log.info(self.name, "guest entered S5: power off")
            self.poweroff_cb()
        elif typ == SLP_TYP_S3 and self.s3:
            log.info(self.name, "guest entered S3: suspend")
            self.suspend_cb()
        else:
            log.guest_error(self.name, "sleep type %d: not offered by the ACPI tables" % typ)

    # --- APM / SMI_CMD -------------------------------------------------------

    def apm_command(self, b):
        self.apmc = b
        # ACPI 3.0 section 4.7.2.5: the OS hands over with ACPI_ENABLE.
        if b == APM_ACPI_ENABLE:
            self.pm1_cnt |= SCI_EN
        elif b == APM_ACPI_DISABLE:
            self.pm1_cnt &= ~SCI_EN
        else:
            log.debug(self.name, "APM command 0x%02x: no SMM under Xen" % b)

    # --- GPE0 and the SCI ----------------------------------------------------

    def raise_gpe(self, bit):
        """An event for GPE0 bit `bit` (0-15): set its status, update the SCI."""
        self.gpe_sts[bit >> 3] |= 1 << (bit & 7)
        self.update_sci()

    def update_sci(self):
        # PM1a_EVT is Xen's (it drives the same IRQ 9 for its own events):
        # what this function adds to the SCI is GPE0, of which QEMU's
        # acpi_update_sci looks at the first status/enable byte only.
        level = 1 if self.gpe_sts[0] & self.gpe_en[0] else 0
        if self.sci is not None:
            self.sci.set_level(level)

    # --- save/restore --------------------------------------------------------

    def state(self):
        d = super().state()
        d["pm1_cnt"] = self.pm1_cnt
        d["apmc"] = self.apmc
        d["apms"] = self.apms
        d["gpe_sts"] = bytes(self.gpe_sts)
        d["gpe_en"] = bytes(self.gpe_en)
        return d

    def load_state(self, d):
        super().load_state(d)
        self.pm1_cnt = d.get("pm1_cnt", 0) & ~SLP_EN & 0xFFFF
        self.apmc = d.get("apmc", 0) & 0xFF
        self.apms = d.get("apms", 0) & 0xFF
        sts = bytes(d.get("gpe_sts", b""))
        en = bytes(d.get("gpe_en", b""))
        for i in range(GPE0_LEN // 2):
            self.gpe_sts[i] = sts[i] if i < len(sts) else 0
            self.gpe_en[i] = en[i] if i < len(en) else 0
        self._pm_io_update()
        self.update_sci()
