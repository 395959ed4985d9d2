# The PIIX3 IDE function (00:01.1, 8086:7010): two channels of two drive
# positions each, the task-file ports and bus-master DMA. The drives
# themselves (ATA disks, ATAPI CD-ROMs) are stubdm/devices/ata.py; a channel
# is their transport.
#
# Sources: Intel 82371FB/SB PIIX/PIIX3 datasheet (290550), section 2.3 (IDE
# configuration: class 0x010180, BMIBA at 0x20, IDETIM at 0x40/0x42) and
# section 2.7 (bus master IDE registers BMICX, BMISX, BMIDTPX; the PRD
# format); ATA/ATAPI-6 section 7 for the command and control blocks; QEMU's
# hw/ide/piix.c, pci.c and ioport.c for what a Xen guest has always seen
# (byte-only bus-master command and status, the status write rule, the
# one-page PRD fail-safe, reads of absent drives).
#
# Two ways in:
# - compatibility mode (prog-if 0x80, as QEMU's xenfv machine): channel 0 at
#   ports 0x1f0-0x1f7 and 0x3f6 with ISA IRQ 14, channel 1 at 0x170-0x177 and
#   0x376 with IRQ 15; only BAR4 (bus master) is a BAR;
# - native mode (prog-if 0x8f): BAR0-3 hold the channels' command and control
#   blocks and the function interrupts on INTA. PIIX3 hardware has no native
#   mode; host_sim's QEMU engine, which reaches PCI functions only, uses it so
#   that Linux's ata_piix drives the same channels through BARs.
from stubdm import log
from stubdm.bus import fill_rep
from stubdm.compat import const
from stubdm.devices import ata
from stubdm.pci import CMD_MASTER, PciFunction

# The register numbers the port handlers test on every access, as plain globals.
_DATA = ata.REG_DATA
_STATUS = ata.REG_STATUS
_SELECT = ata.REG_SELECT
_ALWAYS = ata.SEL_ALWAYS
_DEV = ata.SEL_DEV

VENDOR_INTEL = const(0x8086)
DEVICE_82371SB_IDE = const(0x7010)
CLASS_IDE_COMPAT = const(0x010180)  # compatibility mode, bus master capable
CLASS_IDE_NATIVE = const(0x01018F)
SUBSYS_VENDOR_QEMU = const(0x1AF4)
SUBSYS_ID_QEMU = const(0x1100)
STATUS_RESET = const(0x0280)  # DEVSEL medium, fast back-to-back (QEMU's piix_ide_reset)

COMPAT = (
    (0x1F0, 0x3F6, 14),  # primary: command block, control block, ISA IRQ
    (0x170, 0x376, 15),  # secondary
)
CMD_BLOCK_LEN = const(8)

# Device control register (ATA-6 7.8).
CTL_NIEN = const(0x02)
CTL_SRST = const(0x04)
CTL_HOB = const(0x80)

# Bus master IDE registers (PIIX3 datasheet 2.7): per channel, 8 bytes apart.
BM_CMD = const(0)  # BMICX
BM_STATUS = const(2)  # BMISX
BM_PRD = const(4)  # BMIDTPX
BMC_START = const(0x01)
BMC_READ = const(0x08)  # bus master writes memory (a device-to-host transfer)
BMS_ACTIVE = const(0x01)
BMS_ERROR = const(0x02)
BMS_INTR = const(0x04)
BMS_DMA_CAP = const(0x60)  # drive 0/1 DMA capable: software's bits
BM_BAR_SIZE = const(16)
PRD_EOT = const(0x80000000)
PRD_TABLE_MAX = const(4096)  # QEMU's fail-safe: a table without EOT ends after one page


class _Chunk:
    """Guest memory pinned for one disk request (the transport's dma_map)."""

    def __init__(self, pins, views):
        self.pins = pins
        self.views = views

    def release(self):
        for p in self.pins:
            p.release()
        self.pins = []


class BusMaster:
    """One channel's bus-master DMA engine: BMICX, BMISX, BMIDTPX, the PRD walk."""

    def __init__(self, channel):
        self.ch = channel
        self.reset()

    def reset(self):
        self.cmd = 0
        self.status = 0
        self.addr = 0
        self.go = None  # a drive waiting for the engine to start
        self._prd_reset()

    def _prd_reset(self):
        self.cur = self.addr
        self.prd_addr = 0
        self.prd_len = 0
        self.prd_last = False
        self.failed = False

    def read(self, offset, size):
        if offset >= BM_PRD:
            o = offset - BM_PRD
            if o + size > 4:
                return (1 << (8 * size)) - 1
            return (self.addr >> (8 * o)) & ((1 << (8 * size)) - 1)
        if size != 1:  # QEMU's bmdma ops: byte accesses only
            return (1 << (8 * size)) - 1
        if offset == BM_CMD:
            return self.cmd
        if offset == BM_STATUS:
            return self.status
        return 0xFF

    def write(self, offset, size, value):
        if offset >= BM_PRD:
            o = offset - BM_PRD
            if o + size > 4:
                return
            shift = 8 * o
            mask = ((1 << (8 * size)) - 1) << shift
            self.addr = ((self.addr & ~mask) | ((value << shift) & mask)) & 0xFFFFFFFC
            return
        if size != 1:
            return
        if offset == BM_CMD:
            self._command(value)
        elif offset == BM_STATUS:
            # Bits 5-6 are software's, 1 (active) is read-only, 1 and 2 are
            # write-one-to-clear (QEMU's bmdma_write).
            s = self.status
            self.status = (value & BMS_DMA_CAP) | (s & BMS_ACTIVE) | (s & ~value & 0x06)

    def _command(self, value):
        was = self.cmd & BMC_START
        self.cmd = value & (BMC_START | BMC_READ)
        if (value & BMC_START) == was:
            return
        if not value & BMC_START:
            # Stopping the engine: a request already at the disk completes
            # (it can't be called back), the rest of the transfer fails.
            self.status &= ~BMS_ACTIVE
            return
        self.cur = self.addr
        self._prd_reset()
        if not self.status & BMS_ACTIVE:
            self.status |= BMS_ACTIVE
            go = self.go
            self.go = None
            if go is not None:
                go()

    # --- the drives' side -------------------------------------------------------

    def start(self, go):
        if self.status & BMS_ACTIVE:
            go()
        else:
            self.go = go

    def _fail(self, msg, master_abort):
        log.guest_error(self.ch.name, msg)
        self.failed = True
        if master_abort:
            self.status |= BMS_ERROR

    def map(self, n, to_guest):
        ch = self.ch
        if not self.status & BMS_ACTIVE:
            self._fail("DMA with the bus master stopped", False)
            return None
        if not ch.master_enabled():
            self._fail("DMA with bus mastering disabled in PCI COMMAND", True)
            return None
        mem = ch.mem
        pins = []
        views = []
        need = n
        while need > 0:
            if self.prd_len == 0:
                if self.prd_last or self.cur - self.addr >= PRD_TABLE_MAX:
                    for p in pins:
                        p.release()
                    self._fail("PRD table at %#x ends %d bytes short of the transfer%s" % (
                        self.addr, need, "" if self.prd_last else " (no end-of-table mark)"),
                        False)
                    return None
                raw = mem.read(self.cur, 8)
                if raw is None:
                    for p in pins:
                        p.release()
                    self._fail("PRD table entry at %#x is not guest RAM" % self.cur, True)
                    return None
                self.cur += 8
                base = int.from_bytes(raw[0:4], "little")
                cnt = int.from_bytes(raw[4:8], "little")
                length = cnt & 0xFFFE
                self.prd_addr = base & 0xFFFFFFFE
                self.prd_len = length if length else 0x10000
                self.prd_last = bool(cnt & PRD_EOT)
            k = min(self.prd_len, need)
            pin = mem.lock(self.prd_addr, k)
            if pin is None:
                for p in pins:
                    p.release()
                self._fail("PRD buffer %#x+%d is not guest RAM" % (self.prd_addr, k), True)
                return None
            pins.append(pin)
            for v in pin.views:
                views.append(v)
            self.prd_addr += k
            self.prd_len -= k
            need -= k
        return _Chunk(pins, views)

    def end(self, ok):
        # The transfer is over. The engine stays active when the PRDs describe
        # more than the drive moved (datasheet 2.7.2; QEMU's stay_active).
        if not ok or self.failed or (self.prd_len == 0 and self.prd_last):
            self.status &= ~BMS_ACTIVE
        elif self.prd_len == 0 and self.cur - self.addr >= PRD_TABLE_MAX:
            self.status &= ~BMS_ACTIVE

    def state(self):
        return {"cmd": self.cmd, "status": self.status, "addr": self.addr, "cur": self.cur,
                "prd_addr": self.prd_addr, "prd_len": self.prd_len,
                "prd_last": self.prd_last, "failed": self.failed}

    def load_state(self, d):
        self.cmd = d["cmd"] & (BMC_START | BMC_READ)
        self.status = d["status"] & 0xFF
        self.addr = d["addr"] & 0xFFFFFFFC
        cur = d["cur"]
        self.cur = cur if self.addr <= cur <= self.addr + PRD_TABLE_MAX else self.addr
        self.prd_addr = d["prd_addr"] & 0xFFFFFFFE
        n = d["prd_len"]
        self.prd_len = n if 0 <= n <= 0x10000 else 0
        self.prd_last = bool(d["prd_last"])
        self.failed = bool(d["failed"])
        self.go = None  # a drive waiting for the engine asks again (Drive.resume)


class IdeChannel:
    """One IDE channel: the task file shared by two drive positions, the
    device control register, the interrupt line and its bus master. It is
    the drives' transport (stubdm/devices/ata.py)."""

    def __init__(self, name, irq, mem, master_enabled):
        self.name = name
        self.irq_line = irq
        self.mem = mem
        self.master_enabled = master_enabled
        self.unit = 0
        self.ctl = 0
        self.bm = BusMaster(self)
        self.drives = [ata.Drive(self, 0, name + ".0"), ata.Drive(self, 1, name + ".1")]
        for d in self.drives:
            d.set_signature()

    def attach(self, unit, drive):
        self.drives[unit] = drive

    def cur(self):
        return self.drives[self.unit]

    def _none(self):
        return not self.drives[0].present and not self.drives[1].present

    # --- transport interface (ata.py) ------------------------------------------

    def irq(self, drive):
        if self.ctl & CTL_NIEN:
            return
        self.bm.status |= BMS_INTR
        self.irq_line.set_level(1)

    def dma_start(self, drive, go):
        self.bm.start(go)

    def dma_map(self, n, to_guest):
        return self.bm.map(n, to_guest)

    def dma_end(self, ok):
        self.bm.end(ok)

    # --- command block -------------------------------------------------------------

    def read(self, offset, size):
        if offset == _STATUS and size == 1:  # the hot path: status polling
            d = self.drives[self.unit]
            self.irq_line.set_level(0)  # reading status acknowledges INTRQ (ATA-6 5.2.9)
            return d.status if d.present else 0
        if offset == _DATA and size in (2, 4):
            d = self.cur()
            return d.data_read(size) if d.present else 0
        if size != 1:
            v = 0
            for i in range(size):
                v |= self.read(offset + i, 1) << (8 * i) if offset + i < CMD_BLOCK_LEN else (
                    0xFF << (8 * i))
            return v
        if offset == _DATA:
            return 0xFF
        d = self.cur()
        if self._none():
            v = 0
        elif offset in (ata.REG_ERROR, _STATUS) and not d.present:
            v = 0  # an absent slave (QEMU)
        else:
            v = d.tf_read(offset, self.ctl & CTL_HOB)
        if offset == _STATUS:
            self.irq_line.set_level(0)  # reading status acknowledges INTRQ (ATA-6 5.2.9)
        return v & 0xFF

    def read_rep(self, offset, size, count, buf):
        # A rep of byte reads of one register: the task file reads with no
        # effect but status's (INTRQ acknowledged, the same each time); the
        # data register is 16/32-bit and reads all ones as a byte.
        if size != 1 or not 0 <= offset < CMD_BLOCK_LEN:
            return False
        fill_rep(buf, self.read(offset, 1), 1, count)
        return True

    def write(self, offset, size, value):
        if size == 1 and 0 < offset < _SELECT:  # the hot path: task-file registers
            self.ctl &= ~CTL_HOB
            d0, d1 = self.drives
            t = d0.tf
            d0.hob[offset] = t[offset]
            t[offset] = value
            t = d1.tf
            d1.hob[offset] = t[offset]
            t[offset] = value
            return
        if offset == _DATA and size in (2, 4):
            d = self.cur()
            if d.present:
                d.data_write(size, value)
            return
        if size != 1:
            for i in range(size):
                if offset + i < CMD_BLOCK_LEN:
                    self.write(offset + i, 1, (value >> (8 * i)) & 0xFF)
            return
        if offset == _DATA:
            return
        if offset == _STATUS:
            self._command(value)
            return
        # Both positions latch every task-file write (they share the cable).
        self.ctl &= ~CTL_HOB
        d0, d1 = self.drives
        if offset == _SELECT:
            d0.tf[offset] = value | _ALWAYS
            d1.tf[offset] = value | _ALWAYS
            self.unit = 1 if value & _DEV else 0
            return
        t = d0.tf
        d0.hob[offset] = t[offset]
        t[offset] = value
        t = d1.tf
        d1.hob[offset] = t[offset]
        t[offset] = value

    def _command(self, cmd):
        d = self.cur()
        if not d.present:
            return  # commands to an absent device are ignored (QEMU)
        if d.status & (ata.ST_BSY | ata.ST_DRQ) and not (
                cmd == ata.CMD_DEVICE_RESET and d.atapi):
            log.guest_error(d.name, "command %#04x while the drive is busy (status %#04x)"
                            % (cmd, d.status))
            return
        self.irq_line.set_level(0)
        d.exec_cmd(cmd)

    # --- control block (alternate status / device control) -------------------------

    def ctl_read(self, offset, size):
        if size != 1:
            return (1 << (8 * size)) - 1
        d = self.cur()
        if self._none() or not d.present:
            return 0
        return d.status

    def ctl_write(self, offset, size, value):
        if size != 1:
            return
        old = self.ctl
        self.ctl = value & 0xFF
        if not old & CTL_SRST and value & CTL_SRST:
            self.bm.go = None
            for d in self.drives:
                d.srst(True)
        elif old & CTL_SRST and not value & CTL_SRST:
            self.unit = 0
            for d in self.drives:
                d.srst(False)

    def state(self):
        return {"unit": self.unit, "ctl": self.ctl, "bm": self.bm.state(),
                "irq": 1 if self.irq_line.level else 0,
                "drives": [d.state() for d in self.drives]}

    def load_state(self, d):
        drives = d["drives"]
        if len(drives) != 2:
            raise ValueError(self.name + ": saved state has %d drives" % len(drives))
        for i in range(2):
            if (drives[i].get("pio") is None) != (not self.drives[i].present):
                raise ValueError("%s.%d: saved drive is another kind" % (self.name, i))
        self.unit = 1 if d["unit"] else 0
        self.ctl = d["ctl"] & 0xFF
        self.bm.load_state(d["bm"])
        for i in range(2):
            self.drives[i].load_state(drives[i])
        self.irq_line.set_level(1 if d["irq"] else 0)

    def resume(self):
        for dr in self.drives:
            dr.resume()


class _Window:
    def __init__(self, read, write):
        self.read = read
        self.write = write


class _NativeCtl:
    """BAR1/BAR3 in native mode: 4 bytes, the control block at offset 2."""

    def __init__(self, ch):
        self.ch = ch

    def read(self, offset, size):
        if offset == 2:
            return self.ch.ctl_read(0, size)
        return (1 << (8 * size)) - 1

    def write(self, offset, size, value):
        if offset == 2:
            self.ch.ctl_write(0, size, value)


class _BmBar:
    def __init__(self, ide):
        self.ide = ide

    def read(self, offset, size):
        ch = self.ide.channels[offset >> 3]
        o = offset & 7
        if o + size > 8:
            return (1 << (8 * size)) - 1
        return ch.bm.read(o, size)

    def write(self, offset, size, value):
        ch = self.ide.channels[offset >> 3]
        o = offset & 7
        if o + size <= 8:
            ch.bm.write(o, size, value)


class _OrLine:
    """Native mode: both channels' lines wire-ORed onto the function's INTA."""

    def __init__(self, fn, index):
        self.fn = fn
        self.index = index
        self.level = 0

    def set_level(self, level):
        level = 1 if level else 0
        if level == self.level:
            return
        self.level = level
        self.fn._levels[self.index] = level
        self.fn.set_irq(self.fn._levels[0] | self.fn._levels[1])


class PiixIde(PciFunction):
    """PIIX3 function 1. irqs: the two channels' IRQ lines (ISA 14 and 15) in
    compatibility mode, ignored in native mode. mem: GuestMemory (read, lock)."""

    def __init__(self, mem, irqs=None, native=False):
        super().__init__("piix3-ide", VENDOR_INTEL, DEVICE_82371SB_IDE,
                         CLASS_IDE_NATIVE if native else CLASS_IDE_COMPAT,
                         subsys_vendor=SUBSYS_VENDOR_QEMU, subsys_id=SUBSYS_ID_QEMU,
                         irq_pin=1 if native else 0)
        self.native = native
        self._levels = [0, 0]
        self.channels = []
        for i in range(2):
            line = _OrLine(self, i) if native else irqs[i]
            self.channels.append(IdeChannel("ide%d" % i, line, mem, self._master))
        if native:
            for i in range(2):
                ch = self.channels[i]
                self.add_bar(2 * i, CMD_BLOCK_LEN, "io", _Window(ch.read, ch.write))
                self.add_bar(2 * i + 1, 4, "io", _NativeCtl(ch))
        self.add_bar(4, BM_BAR_SIZE, "io", _BmBar(self))
        self.reset()

    def _master(self):
        return bool(self.command & CMD_MASTER)

    def attach(self, channel, unit, drive):
        self.channels[channel].attach(unit, drive)

    def reset(self):
        super().reset()
        self._set(0x06, 2, STATUS_RESET)

    def compat_ports(self):
        """(start, length, handler, name, channel) of the ranges compatibility mode claims."""
        out = []
        for i in range(2):
            ch = self.channels[i]
            cmd, ctl, _irq = COMPAT[i]
            out.append((cmd, CMD_BLOCK_LEN, ch, "ide%d" % i))
            out.append((ctl, 1, _Window(ch.ctl_read, ch.ctl_write), "ide%d control" % i))
        return out

    def state(self):
        d = super().state()
        d["channels"] = [ch.state() for ch in self.channels]
        return d

    def load_state(self, d):
        chans = d["channels"]
        if len(chans) != 2:
            raise ValueError(self.name + ": saved state has %d channels" % len(chans))
        super().load_state(d)
        for i in range(2):
            self.channels[i].load_state(chans[i])

    def resume(self):
        for ch in self.channels:
            ch.resume()
