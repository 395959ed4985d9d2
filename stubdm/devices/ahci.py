# AHCI: the ICH9 SATA controller in AHCI mode (8086:2922, class 0x010601), as
# qemu-xen's `-device ahci` shows it. Command lists, command tables, PRDTs
# and FIS receive areas live in guest memory; the ATA and ATAPI command sets
# are stubdm/devices/ata.py's drives, fed from H2D register FISes instead of
# task-file ports. NCQ (READ/WRITE FPDMA QUEUED) bypasses the drive's
# one-command state machine: up to 32 commands a port, each split into disk
# requests that are all in flight at once.
#
# Sources: Serial ATA AHCI 1.3 (sections 3: HBA and port registers, 4: system
# memory structures, 5.3-5.6: command processing, 6: error handling), SATA 2.6
# section 10.3 (FIS layouts) and 13.6 (NCQ), the ICH9 datasheet (AHCI BAR5
# ABAR, BAR4 index/data pair) and, for what a Xen guest has always seen,
# QEMU's hw/ide/ahci.c and ich.c (six ports, CAP bits, VS 1.0, reset values).
# Linux's libahci.c is the client this is checked with.
import struct

from stubdm import block, log
from stubdm.hypervisor import glue
from stubdm.compat import const
from stubdm.devices import ata
from stubdm.pci import CAPABILITY_LIST, CMD_MASTER, STATUS, STS_CAP_LIST, PciFunction

VENDOR_INTEL = const(0x8086)
DEVICE_ICH9_AHCI = const(0x2922)
CLASS_AHCI = const(0x010601)
REVISION = const(0x02)
SUBSYS_VENDOR_QEMU = const(0x1AF4)
SUBSYS_ID_QEMU = const(0x1100)
NUM_PORTS = const(6)  # ICH9 (and QEMU's ich9-ahci)
NUM_SLOTS = const(32)
ABAR = const(5)
ABAR_SIZE = const(0x1000)  # QEMU's AHCI_MEM_BAR_SIZE
IDP_BAR = const(4)
IDP_SIZE = const(32)
IDP_INDEX = const(0x10)
IDP_DATA = const(0x14)
# With MSI (Ahci(msi=...)), ICH9's capabilities where QEMU's ich9-ahci puts them
# (hw/ide/ich.c): MSI first at 0x80 (one vector, 64-bit address, no masking),
# then the SATA capability at 0xA8 (revision 1.0, the index/data pair in BAR4).
MSI_CAP = const(0x80)
SATA_CAP = const(0xA8)
CAP_ID_MSI = const(0x05)
CAP_ID_SATA = const(0x12)
MSI_FLAGS = const(MSI_CAP + 2)
MSI_ADDR_LO = const(MSI_CAP + 4)
MSI_ADDR_HI = const(MSI_CAP + 8)
MSI_DATA = const(MSI_CAP + 12)
MSI_CAP_SIZE = const(14)
MSI_FLAGS_ENABLE = const(0x0001)
MSI_FLAGS_64BIT = const(0x0080)
SATA_CAP_SIZE = const(8)
SATA_CAP_BAR = const((IDP_BAR + 4) | (4 << 4))  # BAR4 (offset 0x20), index at 2^4

# Generic host control (AHCI 1.3 section 3.1).
HBA_CAP = const(0x00)
HBA_GHC = const(0x04)
HBA_IS = const(0x08)
HBA_PI = const(0x0C)
HBA_VS = const(0x10)
HBA_CCC_CTL = const(0x14)
HBA_CCC_PORTS = const(0x18)
HBA_EM_LOC = const(0x1C)
HBA_EM_CTL = const(0x20)
HBA_CAP2 = const(0x24)
HBA_BOHC = const(0x28)
CAP_S64A = const(1 << 31)
CAP_SNCQ = const(1 << 30)
CAP_SAM = const(1 << 18)  # AHCI only: GHC.AE reads one
CAP_ISS_GEN1 = const(1 << 20)
CAP = const(CAP_S64A | CAP_SNCQ | CAP_ISS_GEN1 | CAP_SAM | ((NUM_SLOTS - 1) << 8)
            | (NUM_PORTS - 1))
GHC_HR = const(0x01)
GHC_IE = const(0x02)
GHC_AE = const(0x80000000)
VERSION = const(0x00010000)  # 1.0, as QEMU reports
PORT_BASE = const(0x100)
PORT_LEN = const(0x80)

# Port registers (section 3.3), offsets in a port's 0x80 bytes.
P_CLB = const(0x00)
P_CLBU = const(0x04)
P_FB = const(0x08)
P_FBU = const(0x0C)
P_IS = const(0x10)
P_IE = const(0x14)
P_CMD = const(0x18)
P_TFD = const(0x20)
P_SIG = const(0x24)
P_SSTS = const(0x28)
P_SCTL = const(0x2C)
P_SERR = const(0x30)
P_SACT = const(0x34)
P_CI = const(0x38)
P_SNTF = const(0x3C)
P_FBS = const(0x40)

# PxIS / PxIE bits.
IS_DHRS = const(1 << 0)
IS_PSS = const(1 << 1)
IS_DSS = const(1 << 2)
IS_SDBS = const(1 << 3)
IS_UFS = const(1 << 4)
IS_DPS = const(1 << 5)
IS_IFS = const(1 << 27)
IS_HBDS = const(1 << 28)
IS_HBFS = const(1 << 29)
IS_TFES = const(1 << 30)
IS_W1C = const(0xFDC000FF)  # the defined bits (PCS, PRCS are cleared at their source)
IE_MASK = const(0xFDC000FF)

# PxCMD bits.
CMD_ST = const(1 << 0)
CMD_SUD = const(1 << 1)
CMD_POD = const(1 << 2)
CMD_CLO = const(1 << 3)
CMD_FRE = const(1 << 4)
CMD_FR = const(1 << 14)
CMD_CR = const(1 << 15)
CMD_ATAPI = const(1 << 24)
# What software writes: ST, SUD, POD, CLO, FRE, PMA, ATAPI, DLAE, ALPE, ASP (ICC reads 0).
CMD_WRITABLE = const(0x0F02001F)

SSTS_PRESENT = const(0x113)  # IPM active, gen 1, device present with phy communication
SIG_ATA = const(0x00000101)
SIG_ATAPI = const(0xEB140101)
TFD_BSY = const(0x80)

# Memory structures (section 4).
CMDH_SIZE = const(32)
CMDH_ATAPI = const(1 << 5)
CMDH_WRITE = const(1 << 6)
CMDH_RESET = const(1 << 8)
CMDH_CLR_BUSY = const(1 << 10)
CT_CFIS = const(0x00)
CT_ACMD = const(0x40)
CT_PRDT = const(0x80)
PRD_SIZE = const(16)
PRD_DBC = const(0x3FFFFF)
RFIS_DSFIS = const(0x00)
RFIS_PSFIS = const(0x20)
RFIS_RFIS = const(0x40)
RFIS_SDBFIS = const(0x58)
RFIS_SIZE = const(256)

# FIS types (SATA 2.6 10.3).
FIS_REG_H2D = const(0x27)
FIS_REG_D2H = const(0x34)
FIS_SDB = const(0xA1)
FIS_PIO_SETUP = const(0x5F)
FIS_C = const(0x80)
CTL_SRST = const(0x04)

# NCQ (SATA 2.6 13.6; ATA8-ACS 7.24, 7.63).
CMD_READ_FPDMA = const(0x60)
CMD_WRITE_FPDMA = const(0x61)
NCQ_FUA = const(0x80)
# Guest memory the HBA keeps pinned for NCQ requests in flight, all ports
# together: more waits for completions (the mapcache has 64 1-MiB buckets).
INFLIGHT_BYTES = const(24 << 20)
PIO_BLOCKS_MAX = const(1 << 17)  # a PIO command's DRQ blocks (65536 sectors, one a block)


def _u32(b, o):
    return b[o] | (b[o + 1] << 8) | (b[o + 2] << 16) | (b[o + 3] << 24)


class _Chunk:
    """Guest memory pinned for one disk request: .views in order, .release()."""

    def __init__(self, pins, views):
        self.pins = pins
        self.views = views

    def release(self):
        for p in self.pins:
            p.release()
        self.pins = []
        self.views = []


# The glue's C walk of a PRDT (stubdm/mapcache/mapcache.h), on both runtimes; None
# without a glue (then, and for memories without a mapcache, SgList pins views).
_prdt_total = getattr(glue, "prdt_total", None) if glue is not None else None


def _parse_prdt(raw, n):
    """A PRDT's entries as (addrs, lens, total, bad): physically contiguous entries
    merged (one piece to pin, not two); bad is the first entry with an odd byte
    count, or -1."""
    addrs = []
    lens = []
    total = 0
    for i in range(n):
        addr, _rsvd, dw3 = struct.unpack_from("<QII", raw, i * PRD_SIZE)
        dbc = (dw3 & PRD_DBC) + 1
        if dbc & 1:
            return addrs, lens, total, i
        addr &= 0xFFFFFFFFFFFFFFFE
        total += dbc
        if addrs and addrs[-1] + lens[-1] == addr:
            lens[-1] += dbc
            continue
        addrs.append(addr)
        lens.append(dbc)
    return addrs, lens, total, -1


class SgList:
    """A command's PRDT, walked once from the front (map, copy_in, copy_out) or at
    any offset (copy: with the glue's C over the table's bytes, raw)."""

    def __init__(self, mem, addrs, lens, total, raw=None, n=0):
        self.mem = mem
        self.addrs = addrs  # None until the Python walk needs them (from raw)
        self.lens = lens
        self.total = total
        self.raw = raw
        self.n = n
        mc = getattr(mem, "mc", None) if raw is not None else None
        # The mapcache that copies the table's stream in one C call (None: map views).
        self.mc = mc if mc is not None and hasattr(mc, "prdt_copy") else None
        # Where the last copy ended in the table (the C walk's cursor, mapcache.h): a
        # command's copies in stream order read each entry once, even of 65535.
        self.cursor = bytearray(16) if self.mc is not None else None
        self.i = 0
        self.off = 0  # bytes of entry i already used
        self.moved = 0

    def copy(self, skip, buf, to_guest):
        """Move len(buf) bytes between buf and the stream from byte skip on (into the
        guest if to_guest), nothing pinned: True, or False when a piece is not guest
        RAM or the table is short. Only where self.mc is set."""
        return self.mc.prdt_copy(self.raw, self.n, skip, buf, to_guest, self.cursor)

    def map(self, n):
        """Pin the next n bytes: a _Chunk, or None (too short or not RAM; logged by the caller)."""
        if n > self.total - self.moved:
            return None
        if self.addrs is None:
            self.addrs, self.lens, _t, _bad = _parse_prdt(self.raw, self.n)
        pins = []
        views = []
        need = n
        i, off = self.i, self.off
        mem = self.mem
        mc = getattr(mem, "mc", None)  # a GuestMemory's mapcache (tests' memories have none)
        spans = {}  # bucket start -> view of each whole mapcache bucket pinned for this chunk
        bucket = mc.bucket_room(0) if mc is not None else 0  # buckets: aligned, a power of two
        mask = bucket - 1
        while need > 0:
            k = min(self.lens[i] - off, need)
            a = self.addrs[i] + off
            # A guest buffer's pages are scattered, but many share a bucket: one pin
            # per bucket and a slice of it per PRDT piece, not a lock call per piece.
            v = None
            if bucket:
                lo = a - (a & mask)
                if a + k <= lo + bucket:  # the piece stays in a's bucket
                    bv = spans.get(lo)
                    if bv is None:
                        pin = mem.lock(lo, bucket)  # None if the bucket is not all RAM
                        if pin is not None:
                            if len(pin.views) == 1:
                                pins.append(pin)
                                bv = pin.views[0]
                                spans[lo] = bv
                            else:
                                pin.release()
                    if bv is not None:
                        v = bv[a - lo:a - lo + k]
            if v is not None:
                views.append(v)
            else:
                pin = mem.lock(a, k)
                if pin is None:
                    for p in pins:
                        p.release()
                    return None
                pins.append(pin)
                for v in pin.views:
                    views.append(v)
            need -= k
            off += k
            if off == self.lens[i]:
                i += 1
                off = 0
        self.i, self.off = i, off
        self.moved += n
        return _Chunk(pins, views)

    def copy_in(self, dst):
        """Fill dst (a memoryview) from the next len(dst) bytes; False if too short/not RAM."""
        if self.mc is not None:
            if len(dst) > self.total - self.moved or not self.copy(self.moved, dst, False):
                return False
            self.moved += len(dst)
            return True
        c = self.map(len(dst))
        if c is None:
            return False
        pos = 0
        for v in c.views:
            dst[pos:pos + len(v)] = v
            pos += len(v)
        c.release()
        return True

    def copy_out(self, src):
        if self.mc is not None:
            if len(src) > self.total - self.moved or not self.copy(self.moved, src, True):
                return False
            self.moved += len(src)
            return True
        c = self.map(len(src))
        if c is None:
            return False
        pos = 0
        for v in c.views:
            v[:] = src[pos:pos + len(v)]
            pos += len(v)
        c.release()
        return True


# --- drives behind a port ---------------------------------------------------------


def _move_pio_block(drive, sg, packet):
    """One DRQ block of the drive's PIO protocol through the FIS transport: the
    whole block to or from the PRDT (the packet itself from the command table).
    Returns False when the PRDT is too short or outside RAM."""
    p = drive.pio
    mv = p.mv[p.pos:p.end]
    if packet is not None:
        n = min(len(mv), len(packet))
        mv[0:n] = packet[0:n]
        ok = True
    elif drive.pio_out:
        ok = sg.copy_in(mv)
    else:
        ok = sg.copy_out(mv)
    if not ok:
        return False
    p.pos = p.end
    drive._block_done()
    return True


class AhciDisk(ata.AtaDisk):
    """An ATA disk on a SATA port: ata.py's disk plus NCQ in IDENTIFY (words 75, 76)
    and the NCQ command error log that Linux reads after a queued command failed."""

    def __init__(self, *a):
        super().__init__(*a)
        self.ncq_log = True

    def state(self):
        d = super().state()
        e = self.ncq_error
        d["ncq_error"] = None if e is None else list(e)  # log 10h, until the guest reads it
        return d

    def load_state(self, d):
        super().load_state(d)
        e = d.get("ncq_error")  # absent from version 1 records: no failed command kept
        if e is not None:
            if len(e) != 5 or not 0 <= e[0] < NUM_SLOTS or not 0 <= e[1] <= 0xFF or \
                    not 0 <= e[2] <= 0xFF or not 0 <= e[3] < 1 << 48 or not 0 <= e[4] <= 0xFFFF:
                raise ValueError(self.name + ": saved NCQ error log out of range")
            e = (int(e[0]), int(e[1]), int(e[2]), int(e[3]), int(e[4]))
        self.ncq_error = e

    def _identify(self):
        super()._identify()
        b = self.pio.buf
        ata._put16(b, 75, NUM_SLOTS - 1)  # queue depth 32
        ata._put16(b, 76, 1 << 8)  # NCQ (QEMU names no signalling speed)
        # Word 93 is PATA's hardware reset result; a SATA device reports 0 (ATA8-ACS
        # 7.16.7.47), or Linux takes it for a PATA disk behind a bridge and caps
        # commands at 128 KiB ("applying bridge limits").
        ata._put16(b, 93, 0)


class AhciCdrom(ata.AtapiCdrom):
    """An ATAPI drive on a SATA port."""


# --- a command issued from a slot --------------------------------------------------


class _Cmd:
    def __init__(self, slot, hdr0, fis, acmd, sg, gen):
        self.slot = slot
        self.hdr0 = hdr0
        self.fis = fis
        self.acmd = acmd
        self.sg = sg
        self.gen = gen
        self.packet_sent = False
        self.blocks = 0
        # NCQ
        self.left = 0
        self.status = block.OK
        self.fua = False
        self.is_write = False


class _Req:
    """One disk request of an NCQ command, waiting for its turn in flight."""

    def __init__(self, port, cmd, op, sector, nbytes, skip=0):
        self.port = port
        self.cmd = cmd
        self.op = op
        self.sector = sector
        self.nbytes = nbytes
        self.skip = skip  # where its bytes start in the command's PRDT stream


class AhciPort:
    """One SATA port: its registers, the command list it fetches from and the
    drive it feeds. It is the drive's transport (ata.py's interface)."""

    def __init__(self, hba, index):
        self.hba = hba
        self.index = index
        self.name = "ahci.%d" % index
        self.drive = None
        self.disk = None
        self.gen = 0
        self.cur = None  # the non-NCQ command the drive runs
        self.ncq = [None] * NUM_SLOTS
        self.ncq_busy = 0  # bitmask of NCQ tags in flight
        self.sdb_pending = 0  # tags completed, not yet reported
        self._running = False
        self._again = False
        self._batch_kick = False  # a kick waits for the disk's batch of completions to end
        self.reset_regs()

    def attach(self, disk):
        self.disk = disk
        cls = AhciCdrom if disk.cdrom else AhciDisk
        self.drive = cls(self, 0, self.name, disk, "QM%05d" % (self.index + 1))
        disk.on_batch_end = self.batch_end
        self.port_reset()

    # --- registers ---------------------------------------------------------------

    def reset_regs(self):
        self.clb = 0
        self.fb = 0
        self.is_ = 0
        self.ie = 0
        self.cmd = CMD_SUD | CMD_POD
        self.tfd = 0x7F
        self.sig = 0xFFFFFFFF
        self.ssts = 0
        self.sctl = 0
        self.serr = 0
        self.sact = 0
        self.ci = 0
        self.error_stop = False
        self.srst = False
        self.sig_pending = False

    def port_reset(self):
        """COMRESET (or HBA reset): the drive resets and sends its signature FIS."""
        self._abort_all()
        d = self.drive
        if d is None:
            self.ssts = 0
            self.tfd = 0x7F
            self.sig = 0xFFFFFFFF
            return
        d.srst(True)
        d.srst(False)
        # What a Xen guest has always seen after a port reset (QEMU's
        # ahci_reset_port): DSC and DF, plus DRDY on an ATAPI drive.
        d.status = ata.ST_DSC | ata.ST_DF | (ata.ST_DRDY if d.atapi else 0)
        self.ssts = SSTS_PRESENT
        # The drive's signature FIS reaches PxSIG, PxTFD and the receive area once
        # there is one (PxCMD.FRE), as QEMU's ahci_init_d2h has it.
        self.tfd = 0x7F
        self.sig = 0xFFFFFFFF
        self.sig_pending = True
        if self.cmd & CMD_FRE:
            self._signature()

    def _signature(self):
        d = self.drive
        self.sig_pending = False
        self.sig = SIG_ATAPI if d.atapi else SIG_ATA
        self.tfd = (d.error << 8) | d.status
        self._d2h(True)

    def read(self, off):
        if off == P_CLB:
            return self.clb & 0xFFFFFFFF
        if off == P_CLBU:
            return self.clb >> 32
        if off == P_FB:
            return self.fb & 0xFFFFFFFF
        if off == P_FBU:
            return self.fb >> 32
        if off == P_IS:
            return self.is_
        if off == P_IE:
            return self.ie
        if off == P_CMD:
            return self.cmd
        if off == P_TFD:
            return self.tfd
        if off == P_SIG:
            return self.sig
        if off == P_SSTS:
            return self.ssts
        if off == P_SCTL:
            return self.sctl
        if off == P_SERR:
            return self.serr
        if off == P_SACT:
            return self.sact
        if off == P_CI:
            return self.ci
        return 0

    def write(self, off, v):
        if off == P_CLB:
            self.clb = (self.clb & ~0xFFFFFFFF) | (v & 0xFFFFFC00)
        elif off == P_CLBU:
            self.clb = (self.clb & 0xFFFFFFFF) | (v << 32)
        elif off == P_FB:
            self.fb = (self.fb & ~0xFFFFFFFF) | (v & 0xFFFFFF00)
        elif off == P_FBU:
            self.fb = (self.fb & 0xFFFFFFFF) | (v << 32)
        elif off == P_IS:
            self.is_ &= ~(v & IS_W1C)
            self.hba.update_irq()
        elif off == P_IE:
            self.ie = v & IE_MASK
            self.hba.update_irq()
        elif off == P_CMD:
            self._write_cmd(v)
        elif off == P_SCTL:
            old = self.sctl
            self.sctl = v & 0xFFF
            if old & 0xF == 1 and v & 0xF == 0:
                self.port_reset()
                self.hba.update_irq()
        elif off == P_SERR:
            self.serr &= ~v
        elif off == P_SACT:
            if self.cmd & CMD_ST:
                self.sact |= v
        elif off == P_CI:
            if not self.cmd & CMD_ST:
                if v:
                    log.guest_error(self.name, "command issue %#x with PxCMD.ST clear" % v)
                return
            self.ci |= v
            self.kick()
        # TFD, SIG, SSTS are read-only; SNTF, FBS: no port multiplier.

    def _write_cmd(self, v):
        old = self.cmd
        new = (old & ~CMD_WRITABLE) | (v & CMD_WRITABLE)
        if new & CMD_CLO:
            self.tfd &= ~(TFD_BSY | ata.ST_DRQ)  # command list override (section 3.3.7)
            new &= ~CMD_CLO
        if new & CMD_FRE:
            new |= CMD_FR
        else:
            new &= ~CMD_FR
        if new & CMD_ST:
            new |= CMD_CR
        else:
            new &= ~CMD_CR
        self.cmd = new
        if new & CMD_FRE and not old & CMD_FRE and self.sig_pending and self.drive is not None:
            self._signature()  # the signature the drive sent, now that there is a place
        if old & CMD_ST and not new & CMD_ST:
            # Stopping the engine (section 10.3.2): CI and SACT clear, the
            # commands under way are forgotten (their disk requests finish
            # unreported) and an error stop is over.
            self._abort_all()
            self.ci = 0
            self.sact = 0
            self.error_stop = False
            self.cmd &= ~0x1F00  # CCS
        if not old & CMD_ST and new & CMD_ST:
            self.kick()

    def _abort_all(self):
        self.gen += 1
        if self.cur is not None and self.drive is not None:
            self.drive.abort_transfer()
            self.drive.status = ata.ST_READY if not self.drive.atapi else ata.ST_DRDY
        self.cur = None
        self.ncq = [None] * NUM_SLOTS
        self.ncq_busy = 0
        self.sdb_pending = 0
        self.hba.drop_requests(self)

    # --- FISes to the receive area -------------------------------------------------

    def _rfis(self, off, data):
        if not self.cmd & CMD_FRE:
            return
        if not self.hba.mem.write(self.fb + off, data):
            log.guest_error(self.name, "FIS receive area %#x is not guest RAM" % self.fb)

    def _tf_bytes(self, f, d):
        f[4] = d.sector
        f[5] = d.lcyl
        f[6] = d.hcyl
        f[7] = d.select
        f[8] = d.hob_sector
        f[9] = d.hob_lcyl
        f[10] = d.hob_hcyl
        f[12] = d.nsector
        f[13] = d.hob_nsector

    def _d2h(self, irq=True):
        d = self.drive
        f = bytearray(20)
        f[0] = FIS_REG_D2H
        f[1] = 0x40 if irq else 0
        if d is not None:
            f[2] = d.status
            f[3] = d.error
            self._tf_bytes(f, d)
        self._rfis(RFIS_RFIS, f)
        self.is_ |= IS_DHRS

    def _pio_setup(self, n):
        # As QEMU's ahci_write_fis_pio writes it (what a Xen guest has always
        # read): no direction bit, E_Status the status with DRQ (libahci takes a
        # PIO data-in command's result status from byte 15).
        d = self.drive
        f = bytearray(20)
        f[0] = FIS_PIO_SETUP
        f[1] = 0x40
        f[2] = (d.status & ~ata.ST_BSY) | ata.ST_DRQ
        f[3] = d.error
        self._tf_bytes(f, d)
        f[15] = f[2]
        f[16] = n & 0xFF
        f[17] = (n >> 8) & 0xFF
        self._rfis(RFIS_PSFIS, f)
        self.is_ |= IS_PSS

    def _sdb(self, done, status, error):
        f = bytearray(8)
        f[0] = FIS_SDB
        f[1] = 0x40
        f[2] = status & 0x77
        f[3] = error
        f[4:8] = done.to_bytes(4, "little")
        self._rfis(RFIS_SDBFIS, f)
        self.is_ |= IS_SDBS

    # --- transport interface (ata.py) ---------------------------------------------------

    def irq(self, drive):
        self.kick()

    def dma_start(self, drive, go):
        go()

    def dma_map(self, n, to_guest):
        c = self.cur
        if c is None:
            return None
        chunk = c.sg.map(n)
        if chunk is None:
            log.guest_error(self.name, "slot %d: PRDT of %d bytes ends short of the transfer "
                            "or leaves guest RAM (%d bytes moved)" % (c.slot, c.sg.total,
                                                                     c.sg.moved))
        return chunk

    def dma_end(self, ok):
        pass

    # --- command processing -------------------------------------------------------------

    def batch_end(self):
        """The disk has delivered a batch of completions (stubdm/block.py): report
        them all in one Set Device Bits FIS and raise the interrupt once."""
        if self._batch_kick:
            self._batch_kick = False
            self.kick()

    def kick(self):
        """Make progress: run the current command, issue slots, report NCQ
        completions. Re-entered by completions that come before submit
        returns: those only ask for one more round. A completion in the middle
        of the disk's batch waits for batch_end."""
        if self._running:
            self._again = True
            return
        if self.disk is not None and getattr(self.disk, "batching", False):
            self._batch_kick = True
            return
        self._running = True
        try:
            rounds = 0
            while True:
                self._again = False
                self._step()
                if not self._again:
                    break
                rounds += 1
                if rounds > PIO_BLOCKS_MAX:
                    log.guest_error(self.name, "command does not settle; port stopped")
                    self._abort_all()
                    break
            if self.sdb_pending:
                self._report_ncq()
        finally:
            self._running = False
        self.hba.update_irq()

    def _step(self):
        if self.cur is not None:
            self._progress()
        if self.cur is None:
            self._issue()

    def _progress(self):
        c = self.cur
        d = self.drive
        while c is self.cur:
            st = d.status
            if st & ata.ST_DRQ and not st & ata.ST_BSY:
                if c.blocks >= PIO_BLOCKS_MAX:
                    self._fail_cur("more PIO blocks than any command moves")
                    return
                c.blocks += 1
                packet = None
                if d.atapi and d.pio_out and not c.packet_sent and d.cmd == ata.CMD_PACKET:
                    c.packet_sent = True
                    packet = c.acmd
                else:
                    n = d.pio.end - d.pio.pos
                    self._pio_setup(n)
                if not _move_pio_block(d, c.sg, packet):
                    log.guest_error(self.name, "slot %d: PRDT too short for PIO or not "
                                    "guest RAM" % c.slot)
                    self._fail_cur(None)
                    return
                continue
            if st & ata.ST_BSY or d.busy:
                return  # a disk request is under way: its completion kicks again
            self._complete_cur()
            return

    def _fail_cur(self, msg):
        if msg:
            log.guest_error(self.name, "slot %d: %s" % (self.cur.slot, msg))
        d = self.drive
        d.abort_transfer()
        d.error = ata.ERR_ABRT
        d.status = ata.ST_DRDY | ata.ST_ERR
        self._complete_cur()

    def _complete_cur(self):
        c = self.cur
        self.cur = None
        d = self.drive
        self._set_prdbc(c.slot, c.sg.moved)
        self.tfd = (d.error << 8) | d.status
        if d.status & ata.ST_ERR:
            # The failed command stays issued (AHCI 6.2.2.1; QEMU): software finds
            # it in PxCI and restarts the engine. The FIS is there; the interrupt is TFES.
            self._d2h(False)
            self.is_ &= ~IS_DHRS
            self._error_stop()
            return
        self.ci &= ~(1 << c.slot)
        self._d2h(True)

    def _error_stop(self):
        """A task-file error: PxIS.TFES, and the port processes nothing more
        until software clears PxCMD.ST (section 6.2.2)."""
        self.is_ |= IS_TFES
        self.error_stop = True
        if self.ncq_busy:
            # The device aborts its queued commands on an error (SATA 2.6
            # 13.6.3.2); they stay set in PxSACT until software restarts the port.
            if self.sdb_pending:
                self._report_ncq()
            self.gen += 1
            self.ncq = [None] * NUM_SLOTS
            self.ncq_busy = 0
            self.hba.drop_requests(self)

    def _set_prdbc(self, slot, n):
        self.hba.mem.write(self.clb + slot * CMDH_SIZE + 4, (n & 0xFFFFFFFF).to_bytes(4, "little"))

    def _slot_error(self, slot, msg, hbfs=False):
        """A command that never reached the drive: ABRT in PxTFD, PxIS.TFES; it
        stays issued until software stops the engine."""
        log.guest_error(self.name, "slot %d: %s" % (slot, msg))
        st = ata.ST_DRDY | ata.ST_ERR
        self.tfd = (ata.ERR_ABRT << 8) | st
        f = bytearray(20)
        f[0] = FIS_REG_D2H
        f[1] = 0x40
        f[2] = st
        f[3] = ata.ERR_ABRT
        self._rfis(RFIS_RFIS, f)
        if hbfs:
            self.is_ |= IS_HBFS
        self._error_stop()

    def _issue(self):
        """Start the issued slots, lowest first: every NCQ command at once, one
        other command at a time (and only with no NCQ command in flight)."""
        if not self.cmd & CMD_ST or self.error_stop:
            return
        if not self.hba.master_enabled():
            if self.ci:
                log.guest_error(self.name, "commands issued with bus mastering disabled")
            return
        for slot in range(NUM_SLOTS):
            bit = 1 << slot
            if not self.ci & bit:
                continue
            if self.cur is not None or self.error_stop:
                return
            self._start(slot)

    def _start(self, slot):
        mem = self.hba.mem
        hdr = mem.read(self.clb + slot * CMDH_SIZE, CMDH_SIZE)
        if hdr is None:
            self._slot_error(slot, "command list at %#x is not guest RAM" % self.clb, True)
            return
        dw0 = _u32(hdr, 0)
        ctba = (_u32(hdr, 8) & 0xFFFFFF80) | (_u32(hdr, 12) << 32)
        prdtl = dw0 >> 16
        table = mem.read(ctba, CT_PRDT)
        if table is None:
            self._slot_error(slot, "command table at %#x is not guest RAM" % ctba, True)
            return
        fis = table[0:20]
        if fis[0] != FIS_REG_H2D:
            self._slot_error(slot, "command FIS type %#04x is no H2D register FIS" % fis[0])
            return
        if self.drive is None:
            self._slot_error(slot, "command to a port without a device")
            return
        sg = self._sg(ctba, prdtl, slot)
        if sg is None:
            return
        if not fis[1] & FIS_C:
            self._control(slot, dw0, fis)
            return
        op = fis[2]
        if op in (CMD_READ_FPDMA, CMD_WRITE_FPDMA) and not self.drive.atapi:
            self._ncq(slot, dw0, fis, sg)
            return
        if self.ncq_busy:
            self._slot_error(slot, "command %#04x while NCQ commands are in flight" % op)
            return
        if self.ncq[slot] is not None:
            self._slot_error(slot, "slot reused while its NCQ command is in flight")
            return
        d = self.drive
        if d.status & (ata.ST_BSY | ata.ST_DRQ):
            d.abort_transfer()  # a stale protocol (the guest stopped mid-way): start afresh
            d.status = ata.ST_READY if not d.atapi else ata.ST_DRDY
        c = _Cmd(slot, dw0, fis, table[CT_ACMD:CT_ACMD + 16], sg, self.gen)
        self.cur = c
        self.tfd = (self.tfd & 0xFF00) | TFD_BSY | (self.tfd & 0x7F)
        d.feature = fis[3]
        d.sector = fis[4]
        d.lcyl = fis[5]
        d.hcyl = fis[6]
        d.select = fis[7]  # no PATA's obsolete bits 7 and 5 on SATA (QEMU's FISes show 0)
        d.hob_sector = fis[8]
        d.hob_lcyl = fis[9]
        d.hob_hcyl = fis[10]
        d.hob_feature = fis[11]
        d.nsector = fis[12]
        d.hob_nsector = fis[13]
        d.exec_cmd(op)
        self._again = True  # look at what the drive did

    def _sg(self, ctba, prdtl, slot):
        if prdtl == 0:
            return SgList(self.hba.mem, [], [], 0)
        raw = self.hba.mem.read(ctba + CT_PRDT, prdtl * PRD_SIZE)
        if raw is None:
            self._slot_error(slot, "PRDT of %d entries at %#x is not guest RAM"
                             % (prdtl, ctba + CT_PRDT), True)
            return None
        mem = self.hba.mem
        if _prdt_total is not None and getattr(mem, "mc", None) is not None:
            addrs = lens = None  # walked in C (SgList.copy), in Python only if mapped
            total = _prdt_total(raw, prdtl)
            bad = -1 - total if total < 0 else -1
        else:
            addrs, lens, total, bad = _parse_prdt(raw, prdtl)
        if bad >= 0:
            dbc = (struct.unpack_from("<I", raw, bad * PRD_SIZE + 12)[0] & PRD_DBC) + 1
            self._slot_error(slot, "PRDT entry %d: odd byte count %d" % (bad, dbc))
            return None
        return SgList(mem, addrs, lens, total, raw, prdtl)

    def _control(self, slot, dw0, fis):
        """A FIS with C clear: the device control register (SRST)."""
        d = self.drive
        self.ci &= ~(1 << slot)
        if fis[15] & CTL_SRST:
            if not self.srst:
                self._abort_all()
                self.srst = True
                d.srst(True)
            self.tfd = (d.error << 8) | d.status
            return
        if self.srst:
            self.srst = False
            d.srst(False)
            self.sig = SIG_ATAPI if d.atapi else SIG_ATA
            self.tfd = (d.error << 8) | d.status
            self._d2h(True)

    # --- NCQ ------------------------------------------------------------------------

    def _ncq(self, slot, dw0, fis, sg):
        bit = 1 << slot
        d = self.drive
        tag = fis[12] >> 3
        if tag != slot:
            self._slot_error(slot, "NCQ tag %d issued from slot %d" % (tag, slot))
            return
        if self.ncq_busy & bit:
            self._slot_error(slot, "NCQ tag %d reused while in flight" % tag)
            return
        if self.cur is not None:
            self._slot_error(slot, "NCQ command while a non-queued command runs")
            return
        if not self.sact & bit:
            log.guest_error(self.name, "NCQ tag %d issued without its PxSACT bit" % tag)
            self.sact |= bit
        n = fis[3] | (fis[11] << 8)
        if n == 0:
            n = 65536
        lba = (fis[4] | (fis[5] << 8) | (fis[6] << 16) | (fis[8] << 24) | (fis[9] << 32)
               | (fis[10] << 40))
        is_write = fis[2] == CMD_WRITE_FPDMA
        total = self.disk.sectors
        nbytes = n * ata.SECTOR
        if n > total or lba > total - n:
            self._slot_error(slot, "NCQ %s of sectors %d+%d past the disk's %d" % (
                "write" if is_write else "read", lba, n, total))
            return
        if is_write and self.disk.readonly:
            self._slot_error(slot, "NCQ write to a read-only disk")
            return
        if sg.total < nbytes:
            self._slot_error(slot, "NCQ PRDT holds %d bytes of the %d to move" % (
                sg.total, nbytes))
            return
        c = _Cmd(slot, dw0, fis, None, sg, self.gen)
        c.is_write = is_write
        c.fua = is_write and bool(fis[7] & NCQ_FUA)
        self.ncq[slot] = c
        self.ncq_busy |= bit
        self.ci &= ~bit  # accepted: the device's D2H with BSY clear, no interrupt
        self.tfd = (d.error << 8) | ata.ST_READY
        op = block.WRITE if is_write else block.READ
        step = max(ata.SECTOR, min(ata.DMA_CHUNK, self.disk.max_sectors * ata.SECTOR))
        reqs = []
        pos = 0
        while pos < nbytes:
            k = min(step, nbytes - pos)
            reqs.append(_Req(self, c, op, lba + pos // ata.SECTOR, k, pos))
            pos += k
        c.left = len(reqs)
        self.hba.queue(reqs)

    def ncq_request_done(self, req, status):
        c = req.cmd
        if c.gen != self.gen or self.ncq[c.slot] is not c:
            return  # the engine was stopped or reset since: unreported
        if status != block.OK and c.status == block.OK:
            c.status = status
        c.left -= 1
        if c.left > 0:
            return
        if c.fua and c.status == block.OK:
            c.fua = False
            c.left = 1
            self.hba.queue([_Req(self, c, block.FLUSH, 0, 0)])
            return
        self._ncq_end(c)

    def _ncq_end(self, c):
        bit = 1 << c.slot
        if c.status == block.OK:
            self.ncq[c.slot] = None
            self.ncq_busy &= ~bit
            self.sdb_pending |= bit
            self.kick()
            return
        if c.status != block.EINVAL:  # EINVAL: the guest's PRDT, logged as its error
            log.info(self.name, "NCQ tag %d failed at the disk: errno %d" % (c.slot, c.status))
        if self.sdb_pending:
            self._report_ncq()
        if self.sdb_pending:
            self._report_ncq()  # what completed before the error is reported
        err = ata._errno_to_ata(c.status, c.is_write)
        st = ata.ST_DRDY | ata.ST_ERR
        f = c.fis
        self.drive.ncq_error = (c.slot, st, err, f[4] | (f[5] << 8) | (f[6] << 16) | (
            f[8] << 24) | (f[9] << 32) | (f[10] << 40), f[3] | (f[11] << 8))
        self.tfd = (err << 8) | st
        self.drive.error = err
        self.drive.status = ata.ST_READY
        self._sdb(0, st, err)
        self._error_stop()
        self.kick()  # the interrupt (once the disk's batch of completions is over)

    def _report_ncq(self):
        """One Set Device Bits FIS for every tag completed since the last one."""
        done = self.sdb_pending
        self.sdb_pending = 0
        self.sact &= ~done
        if self.error_stop:
            self._sdb(done, self.tfd & 0xFF, self.tfd >> 8)  # the error stays in PxTFD
            return
        self.tfd = (self.tfd & 0xFF00) | ata.ST_READY
        self._sdb(done, ata.ST_READY, 0)

    def state(self):
        return {"clb": self.clb, "fb": self.fb, "is": self.is_, "ie": self.ie, "cmd": self.cmd,
                "tfd": self.tfd, "sig": self.sig, "ssts": self.ssts, "sctl": self.sctl,
                "serr": self.serr, "sact": self.sact, "ci": self.ci,
                "error_stop": self.error_stop, "srst": self.srst,
                "sig_pending": self.sig_pending, "sdb_pending": self.sdb_pending,
                "drive": self.drive.state() if self.drive is not None else None}

    def busy(self):
        """A command under way (its disk requests in flight): not a point to save at."""
        return self.cur is not None or self.ncq_busy != 0

    def load_state(self, d):
        if (d["drive"] is None) != (self.drive is None):
            raise ValueError(self.name + ": saved port has %s drive" % (
                "no" if d["drive"] is None else "a"))
        self.clb = d["clb"] & 0xFFFFFFFFFFFFFC00
        self.fb = d["fb"] & 0xFFFFFFFFFFFFFF00
        self.is_ = d["is"] & 0xFFFFFFFF
        self.ie = d["ie"] & IE_MASK
        self.cmd = d["cmd"] & 0xFFFFFFFF
        self.tfd = d["tfd"] & 0xFFFF
        self.sig = d["sig"] & 0xFFFFFFFF
        self.ssts = d["ssts"] & 0xFFFFFFFF
        self.sctl = d["sctl"] & 0xFFF
        self.serr = d["serr"] & 0xFFFFFFFF
        self.sact = d["sact"] & 0xFFFFFFFF
        self.ci = d["ci"] & 0xFFFFFFFF
        self.error_stop = bool(d["error_stop"])
        self.srst = bool(d["srst"])
        self.sig_pending = bool(d["sig_pending"])
        self.sdb_pending = d["sdb_pending"] & 0xFFFFFFFF
        self.cur = None
        self.ncq = [None] * NUM_SLOTS
        self.ncq_busy = 0
        if self.drive is not None:
            self.drive.load_state(d["drive"])


class _Abar:
    def __init__(self, hba):
        self.hba = hba

    def read(self, offset, size):
        if size == 8:
            return self.read(offset, 4) | (self.read(offset + 4, 4) << 32)
        v = self.hba.reg_read(offset & ~3)
        return (v >> (8 * (offset & 3))) & ((1 << (8 * size)) - 1)

    def write(self, offset, size, value):
        if size == 8:
            self.write(offset, 4, value & 0xFFFFFFFF)
            self.write(offset + 4, 4, value >> 32)
            return
        # A narrower write reaches the register as a dword with the other bytes zero
        # (QEMU's access adjustment): no read-modify-write of write-one-to-clear bits.
        self.hba.reg_write(offset & ~3, (value << (8 * (offset & 3))) & 0xFFFFFFFF)


class _Idp:
    """BAR4: the index/data pair (ICH9 14.4.1) onto the ABAR registers."""

    def __init__(self, hba):
        self.hba = hba
        self.index = 0

    def read(self, offset, size):
        if offset == IDP_INDEX and size == 4:
            return self.index
        if offset == IDP_DATA and size == 4:
            return self.hba.reg_read(self.index)
        return (1 << (8 * size)) - 1

    def write(self, offset, size, value):
        if offset == IDP_INDEX and size == 4:
            self.index = value & (ABAR_SIZE - 4)
        elif offset == IDP_DATA and size == 4:
            self.hba.reg_write(self.index, value)


class Ahci(PciFunction):
    """The ICH9 AHCI function. mem: GuestMemory (read, write, lock); disks: a
    BlockDevice or None per port, in port order."""

    # 2: a disk's NCQ command error log (READ LOG EXT page 10h) is saved; version 1
    # records load with none.
    STATE_VERSION = 2

    def __init__(self, mem, disks=(), name="ahci", msi=None):
        """msi: None (INTx only, and no MSI capability offered), or a callable
        msi(addr, data) that sends one message (the platform's inject_msi): only
        where the hypervisor delivers it, or the guest waits for interrupts that
        never come."""
        super().__init__(name, VENDOR_INTEL, DEVICE_ICH9_AHCI, CLASS_AHCI, revision=REVISION,
                         subsys_vendor=SUBSYS_VENDOR_QEMU, subsys_id=SUBSYS_ID_QEMU,
                         irq_pin=1)
        self.mem = mem
        self.msi = msi
        self._msi_up = False  # the interrupt condition, as last signalled by MSI
        self.msi_sent = 0
        if msi is not None:
            self._add_capabilities()
        self.ghc = GHC_AE
        self.is_ = 0
        self.pending = []  # NCQ disk requests waiting for room in flight (FIFO)
        self.pending_head = 0
        self.inflight = 0  # bytes pinned by NCQ requests at the disk
        self._kicking = False
        self._kick_again = False
        self.ports = [AhciPort(self, i) for i in range(NUM_PORTS)]
        disks = list(disks)
        for i in range(min(len(disks), NUM_PORTS)):
            if disks[i] is not None:
                self.ports[i].attach(disks[i])
        self.idp = _Idp(self)
        self.add_bar(IDP_BAR, IDP_SIZE, "io", self.idp)
        self.add_bar(ABAR, ABAR_SIZE, "mem", _Abar(self))
        self.reset()

    def master_enabled(self):
        return bool(self.command & CMD_MASTER)

    def _add_capabilities(self):
        c = self.config
        c[STATUS] |= STS_CAP_LIST
        c[CAPABILITY_LIST] = MSI_CAP
        for off, size in ((MSI_CAP, MSI_CAP_SIZE), (SATA_CAP, SATA_CAP_SIZE)):
            self.set_wmask(off, size, 0)  # read-only but for the fields below
        c[MSI_CAP] = CAP_ID_MSI
        c[MSI_CAP + 1] = SATA_CAP
        self._set(MSI_FLAGS, 2, MSI_FLAGS_64BIT)  # one vector: MMC 0
        self.set_wmask(MSI_FLAGS, 2, MSI_FLAGS_ENABLE)
        self.set_wmask(MSI_ADDR_LO, 4, 0xFFFFFFFC)
        self.set_wmask(MSI_ADDR_HI, 4, 0xFFFFFFFF)
        self.set_wmask(MSI_DATA, 2, 0xFFFF)
        c[SATA_CAP] = CAP_ID_SATA
        c[SATA_CAP + 1] = 0
        self._set(SATA_CAP + 2, 2, 0x0010)  # revision 1.0
        self._set(SATA_CAP + 4, 4, SATA_CAP_BAR)

    def msi_enabled(self):
        return self.msi is not None and bool(self.config[MSI_FLAGS] & MSI_FLAGS_ENABLE)

    def config_written(self, offset, size, value):
        if self.msi is not None and offset <= MSI_FLAGS < offset + size:
            self._msi_up = False  # MSI switched on or off: signal what is pending anew
            self.update_irq()

    def reset(self):
        super().reset()
        if self.msi is not None:
            # As QEMU's msi_reset: disabled, no address or data.
            self._set(MSI_FLAGS, 2, MSI_FLAGS_64BIT)
            self._set(MSI_ADDR_LO, 4, 0)
            self._set(MSI_ADDR_HI, 4, 0)
            self._set(MSI_DATA, 2, 0)
        self._msi_up = False
        self.hba_reset()

    def hba_reset(self):
        self.ghc = GHC_AE
        self.is_ = 0
        for p in self.ports:
            p.reset_regs()
            p.port_reset()
        self.update_irq()

    # --- the ABAR -------------------------------------------------------------------

    def reg_read(self, off):
        if off >= PORT_BASE:
            i = (off - PORT_BASE) // PORT_LEN
            if i < NUM_PORTS:
                return self.ports[i].read((off - PORT_BASE) % PORT_LEN)
            return 0
        if off == HBA_CAP:
            return CAP
        if off == HBA_GHC:
            return self.ghc
        if off == HBA_IS:
            return self.is_
        if off == HBA_PI:
            return (1 << NUM_PORTS) - 1
        if off == HBA_VS:
            return VERSION
        return 0  # CCC, enclosure management, CAP2, BOHC: none

    def reg_write(self, off, v):
        if off >= PORT_BASE:
            i = (off - PORT_BASE) // PORT_LEN
            if i < NUM_PORTS:
                self.ports[i].write((off - PORT_BASE) % PORT_LEN, v)
            return
        if off == HBA_GHC:
            if v & GHC_HR:
                self.hba_reset()  # HR reads back 0: the reset is done at once
                return
            self.ghc = GHC_AE | (v & GHC_IE)
            self.update_irq()
        elif off == HBA_IS:
            self.is_ &= ~v
            if (self._irq_level or self._msi_up) and not self._irq_wanted():
                # The guest's handler is done and the line would fall. Completions the
                # disks already hold (their event not yet handled) are reported first:
                # the line then stays up for them, where it would fall and rise again
                # a moment later (two interrupt-level calls to the hypervisor).
                for p in self.ports:
                    if p.ncq_busy or p.cur is not None:
                        poll = getattr(p.disk, "poll", None)
                        if poll is not None:
                            poll()
            was = self._msi_up
            self.update_irq()
            if was and self._msi_up:
                # Still pending after the handler's acknowledgement (a port that
                # raised its status after the handler read IS): an MSI is an edge,
                # so the guest hears of it only by a new message.
                self._send_msi()

    def _irq_wanted(self):
        for p in self.ports:
            if p.is_ & p.ie:
                self.is_ |= 1 << p.index
        return bool(self.ghc & GHC_IE and self.is_)

    def update_irq(self):
        want = self._irq_wanted()
        if not self.msi_enabled():
            self._msi_up = False
            self.set_irq(1 if want else 0)
            return
        self.set_irq(0)  # with MSI on, INTx stays deasserted (QEMU's ahci_irq_raise)
        if want and not self._msi_up:
            self._send_msi()
        self._msi_up = want

    def _send_msi(self):
        if not self.master_enabled():
            return  # a memory write the function may not make (QEMU drops it too)
        addr = self._get(MSI_ADDR_LO, 4) | (self._get(MSI_ADDR_HI, 4) << 32)
        data = self._get(MSI_DATA, 2)
        self.msi_sent += 1
        try:
            self.msi(addr, data)
        except Exception as e:  # refused (the guest's address or data): logged, serve on
            log.guest_error(self.name, "MSI to %#x data %#x refused: %s" % (addr, data, e))

    # --- NCQ requests to the disks ------------------------------------------------------

    def queue(self, reqs):
        for r in reqs:
            self.pending.append(r)
        self._kick()

    def drop_requests(self, port):
        """Forget the waiting requests of `port` (its engine stopped)."""
        keep = [r for r in self.pending[self.pending_head:] if r.port is not port]
        self.pending = keep
        self.pending_head = 0

    def _kick(self):
        if self._kicking:
            self._kick_again = True
            return
        self._kicking = True
        try:
            while True:
                self._kick_again = False
                self._submit_some()
                if not self._kick_again:
                    break
        finally:
            self._kicking = False

    def _submit_some(self):
        while self.pending_head < len(self.pending):
            r = self.pending[self.pending_head]
            if self.inflight and self.inflight + r.nbytes > INFLIGHT_BYTES:
                return
            self.pending_head += 1
            if self.pending_head == len(self.pending):
                self.pending = []
                self.pending_head = 0
            self._submit(r)

    def _submit(self, r):
        p = r.port
        c = r.cmd
        if p.ncq[c.slot] is not c:
            return  # its port stopped or reset meanwhile
        if r.op == block.FLUSH:
            self._disk_submit(p, r, [], None, None)
            return
        sub = getattr(p.disk, "submit_sg", None)
        if sub is not None and c.sg.mc is not None:
            # The disk copies between its buffers and the PRDT's pages itself, one C
            # call per buffer (blkfront: per run of pool pages): no views, no pins.
            self.inflight += r.nbytes
            self._disk_submit_sg(p, r, sub, c.sg)
            return
        chunk = c.sg.map(r.nbytes)
        if chunk is None:
            log.guest_error(p.name, "NCQ tag %d: PRDT buffer is not guest RAM" % c.slot)
            p.ncq_request_done(r, block.EINVAL)
            return
        views = chunk.views
        bounce = None
        for v in views:
            if len(v) % ata.SECTOR:
                bounce = bytearray(r.nbytes)  # PRD pieces off the sector grid: copy through
                break
        if bounce is not None:
            if r.op == block.WRITE:
                pos = 0
                for v in views:
                    bounce[pos:pos + len(v)] = v
                    pos += len(v)
            views = [memoryview(bounce)]
        self.inflight += r.nbytes
        self._disk_submit(p, r, views, chunk, bounce)

    def _disk_submit(self, p, r, views, chunk, bounce):
        def done(status):
            if chunk is not None:
                if status == block.OK and bounce is not None and r.op == block.READ:
                    pos = 0
                    for v in chunk.views:
                        v[:] = bounce[pos:pos + len(v)]
                        pos += len(v)
                chunk.release()
                self.inflight -= r.nbytes
            p.ncq_request_done(r, status)
            self._kick()

        try:
            p.disk.submit(r.op, r.sector, views, done)
        except Exception as e:  # a broken disk must not take the device model down
            log.info(p.name, "disk request failed: %s" % e)
            done(block.EIO)

    def _disk_submit_sg(self, p, r, sub, sg):
        def done(status):
            self.inflight -= r.nbytes
            if status == block.EINVAL:
                log.guest_error(p.name, "NCQ tag %d: PRDT buffer is not guest RAM" % r.cmd.slot)
            p.ncq_request_done(r, status)
            self._kick()

        try:
            sub(r.op, r.sector, r.nbytes, sg, r.skip, done)
        except Exception as e:  # a broken disk must not take the device model down
            log.info(p.name, "disk request failed: %s" % e)
            done(block.EIO)

    def state(self):
        d = super().state()
        d["ghc"] = self.ghc
        d["is"] = self.is_
        d["idp_index"] = self.idp.index
        d["ports"] = [p.state() for p in self.ports]
        return d

    def busy(self):
        return self.inflight != 0 or self.pending_head < len(self.pending) or \
            [p for p in self.ports if p.busy()] != []

    def load_state(self, d):
        ports = d["ports"]
        if len(ports) != NUM_PORTS:
            raise ValueError(self.name + ": saved state has %d ports" % len(ports))
        has_msi = bool(d["config"][STATUS] & STS_CAP_LIST)
        if has_msi != (self.msi is not None):
            raise ValueError(self.name + ": saved AHCI %s an MSI capability" % (
                "has" if has_msi else "lacks"))
        super().load_state(d)
        self._msi_up = False
        self.ghc = d["ghc"] & 0xFFFFFFFF
        self.is_ = d["is"] & 0xFFFFFFFF
        self.idp.index = d.get("idp_index", 0) & (ABAR_SIZE - 4)
        self.pending = []
        self.pending_head = 0
        self.inflight = 0
        for i in range(NUM_PORTS):
            self.ports[i].load_state(ports[i])
        self.update_irq()
