# ATA and ATAPI drives: the command layer shared by the IDE controller
# (stubdm/devices/ide.py) and any other transport (AHCI). A drive is a task
# file and a state machine; the transport moves register accesses in and
# hands the drive three services (the Transport interface below).
#
# Sources: ATA/ATAPI-6 (T13 1410D) for the task file, protocols and command
# codes (sections 6 and 8), ATA8-ACS for the LBA48 and FLUSH CACHE EXT
# details, SFF-8020i / MMC-3 and SPC-3 for the ATAPI packet commands, and
# QEMU's hw/ide/core.c and atapi.c, whose guest-visible answers (IDENTIFY
# words, signatures, what reads of an absent slave return) a Xen guest has
# always seen. Linux's libata (libata-sff.c, libata-scsi.c) and sr drivers
# are the clients this is checked with.
#
# Transport interface (what a drive calls):
#   irq(drive)                the drive asserts INTRQ (the transport decides
#                             whether the line rises: nIEN, the selected unit)
#   dma_start(drive, go)      a DMA command is ready; call go() once the bus
#                             master runs (at once if it already does)
#   dma_map(n, to_guest)      the next n bytes of the guest's scatter list,
#                             pinned: an object with .views (memoryviews in
#                             order, n bytes together) and .release(), or
#                             None when the list is too short or outside RAM
#                             (the transport has logged it)
#   dma_end(ok)               the drive has finished (ok False: an error)
#
# Disks are stubdm/block.py BlockDevices; their errno results become ATA
# errors (or SCSI sense), never a silent success.
from stubdm import block, log
from stubdm.compat import const

# Task-file register offsets in the command block (ATA-6 section 7).
REG_DATA = const(0)
REG_ERROR = const(1)  # read: error; write: features
REG_NSECTOR = const(2)
REG_SECTOR = const(3)  # LBA 7:0
REG_LCYL = const(4)  # LBA 15:8
REG_HCYL = const(5)  # LBA 23:16
REG_SELECT = const(6)  # device/head
REG_STATUS = const(7)  # read: status; write: command

# Status register (ATA-6 7.15).
ST_ERR = const(0x01)
ST_DRQ = const(0x08)
ST_DSC = const(0x10)  # device seek complete (obsolete, QEMU's SEEK_STAT)
ST_DF = const(0x20)
ST_DRDY = const(0x40)
ST_BSY = const(0x80)
ST_READY = const(0x50)  # DRDY | DSC: what an idle ATA disk shows

# Error register (ATA-6 7.9).
ERR_AMNF = const(0x01)
ERR_ABRT = const(0x04)
ERR_IDNF = const(0x10)
ERR_UNC = const(0x40)

# Device/head register (ATA-6 7.10).
SEL_ALWAYS = const(0xA0)  # obsolete bits 7 and 5, always one (QEMU)
SEL_DEV = const(0x10)
SEL_LBA = const(0x40)

# ATAPI interrupt reason, in the sector count register (ATA-6 8.21).
IR_COD = const(0x01)
IR_IO = const(0x02)

# Commands (ATA-6 section 8; ATA8-ACS for the EXT and FUA forms).
CMD_NOP = const(0x00)
CMD_DEVICE_RESET = const(0x08)
CMD_RECALIBRATE = const(0x10)  # 0x10-0x1f
CMD_READ = const(0x20)
CMD_READ_NORETRY = const(0x21)
CMD_READ_EXT = const(0x24)
CMD_READ_DMA_EXT = const(0x25)
CMD_READ_MULTIPLE_EXT = const(0x29)
CMD_READ_LOG_EXT = const(0x2F)
CMD_WRITE = const(0x30)
CMD_WRITE_NORETRY = const(0x31)
CMD_WRITE_EXT = const(0x34)
CMD_WRITE_DMA_EXT = const(0x35)
CMD_WRITE_MULTIPLE_EXT = const(0x39)
CMD_WRITE_DMA_FUA_EXT = const(0x3D)
LOG_DIRECTORY = const(0x00)
LOG_NCQ_ERROR = const(0x10)  # SATA's NCQ command error log (one page)
CMD_VERIFY = const(0x40)
CMD_VERIFY_NORETRY = const(0x41)
CMD_VERIFY_EXT = const(0x42)
CMD_SEEK = const(0x70)  # 0x70-0x7f
CMD_DIAGNOSE = const(0x90)
CMD_SPECIFY = const(0x91)  # INITIALIZE DEVICE PARAMETERS
CMD_PACKET = const(0xA0)
CMD_IDENTIFY_PACKET = const(0xA1)
CMD_READ_MULTIPLE = const(0xC4)
CMD_WRITE_MULTIPLE = const(0xC5)
CMD_SET_MULTIPLE = const(0xC6)
CMD_READ_DMA = const(0xC8)
CMD_READ_DMA_NORETRY = const(0xC9)
CMD_WRITE_DMA = const(0xCA)
CMD_WRITE_DMA_NORETRY = const(0xCB)
CMD_WRITE_MULTIPLE_FUA_EXT = const(0xCE)
CMD_STANDBY_IMMEDIATE = const(0xE0)
CMD_IDLE_IMMEDIATE = const(0xE1)
CMD_STANDBY = const(0xE2)
CMD_IDLE = const(0xE3)
CMD_CHECK_POWER_MODE = const(0xE5)
CMD_SLEEP = const(0xE6)
CMD_FLUSH_CACHE = const(0xE7)
CMD_FLUSH_CACHE_EXT = const(0xEA)
CMD_IDENTIFY = const(0xEC)
CMD_SET_FEATURES = const(0xEF)

# SET FEATURES subcommands (ATA-6 8.37).
SF_ENABLE_WCACHE = const(0x02)
SF_XFER_MODE = const(0x03)
SF_DISABLE_RLA = const(0x55)
SF_DISABLE_REVERT = const(0x66)
SF_DISABLE_WCACHE = const(0x82)
SF_ENABLE_RLA = const(0xAA)
SF_ENABLE_REVERT = const(0xCC)

MAX_MULT_SECTORS = const(16)  # QEMU's; IDENTIFY word 47
SECTOR = const(512)
CD_BLOCK = const(2048)
LBA28_LIMIT = const(0x0FFFFFFF)
# Guest memory one disk request moves at most (within the mapcache's reach).
DMA_CHUNK = const(1 << 20)
DMA_WINDOW = const(8)  # disk requests of one DMA command in flight at once
PIO_BUF = const(MAX_MULT_SECTORS * SECTOR)
ATAPI_BUF = const(0x10000 + CD_BLOCK)  # one DRQ block (< 64 KiB) plus a partial block

# SCSI sense keys and additional sense codes (SPC-3 4.5.6, MMC-3 annex F).
SK_NO_SENSE = const(0)
SK_NOT_READY = const(2)
SK_MEDIUM_ERROR = const(3)
SK_ILLEGAL_REQUEST = const(5)
SK_UNIT_ATTENTION = const(6)
SK_ABORTED_COMMAND = const(0x0B)
ASC_READ_ERROR = const(0x11)
ASC_INVALID_OPCODE = const(0x20)
ASC_LBA_OUT_OF_RANGE = const(0x21)
ASC_INVALID_FIELD = const(0x24)
ASC_WRITE_PROTECTED = const(0x27)
ASC_MEDIUM_CHANGED = const(0x28)
ASC_INCOMPATIBLE_FORMAT = const(0x30)
ASC_NO_MEDIUM = const(0x3A)
ASC_REMOVAL_PREVENTED = const(0x53)

# Packet command opcodes (SPC-3, MMC-3).
SCSI_TEST_UNIT_READY = const(0x00)
SCSI_REQUEST_SENSE = const(0x03)
SCSI_INQUIRY = const(0x12)
SCSI_MODE_SENSE_6 = const(0x1A)
SCSI_START_STOP = const(0x1B)
SCSI_ALLOW_REMOVAL = const(0x1E)
SCSI_READ_CAPACITY = const(0x25)
SCSI_READ_10 = const(0x28)
SCSI_SEEK_10 = const(0x2B)
SCSI_VERIFY_10 = const(0x2F)
SCSI_READ_TOC = const(0x43)
SCSI_GET_CONFIGURATION = const(0x46)
SCSI_GET_EVENT_STATUS = const(0x4A)
SCSI_READ_DISC_INFO = const(0x51)
SCSI_MODE_SENSE_10 = const(0x5A)
SCSI_READ_12 = const(0xA8)
SCSI_SET_CD_SPEED = const(0xBB)

# MMC-3 profiles (5.3.1) and GESN media event codes (6.6.2.4).
PROFILE_NONE = const(0x0000)
PROFILE_CD_ROM = const(0x0008)
PROFILE_DVD_ROM = const(0x0010)
CD_MAX_BLOCKS = const(404849)  # 80-minute CD; bigger media are DVD-ROM (as QEMU)
MEC_NO_CHANGE = const(0)
MEC_NEW_MEDIA = const(2)
MEC_MEDIA_REMOVAL = const(3)

# Packet commands a pending UNIT ATTENTION does not fail (SPC-3 5.8.7; QEMU's ALLOW_UA).
_ALLOW_UA = (SCSI_REQUEST_SENSE, SCSI_INQUIRY, SCSI_GET_CONFIGURATION, SCSI_GET_EVENT_STATUS)
# Packet commands that need a medium (QEMU's CHECK_READY).
_NEED_MEDIUM = (SCSI_TEST_UNIT_READY, SCSI_READ_CAPACITY, SCSI_READ_10, SCSI_READ_12,
                SCSI_SEEK_10, SCSI_VERIFY_10, SCSI_READ_TOC, SCSI_READ_DISC_INFO)


def _errno_to_ata(status, is_write):
    if status == block.EIO and not is_write:
        return ERR_UNC
    return ERR_ABRT


def _padstr(buf, off, s, n):
    """ATA strings: two characters a word, the first in the high byte (ATA-6 8.15.10)."""
    b = s.encode()
    for i in range(n):
        c = b[i] if i < len(b) else 0x20
        buf[off + (i ^ 1)] = c


def _put16(buf, word, v):
    buf[2 * word] = v & 0xFF
    buf[2 * word + 1] = (v >> 8) & 0xFF


def _be16(b, o):
    return (b[o] << 8) | b[o + 1]


def _be32(b, o):
    return (b[o] << 24) | (b[o + 1] << 16) | (b[o + 2] << 8) | b[o + 3]


def _pbe16(b, o, v):
    b[o] = (v >> 8) & 0xFF
    b[o + 1] = v & 0xFF


def _pbe32(b, o, v):
    b[o] = (v >> 24) & 0xFF
    b[o + 1] = (v >> 16) & 0xFF
    b[o + 2] = (v >> 8) & 0xFF
    b[o + 3] = v & 0xFF


def _tf_reg(i):
    def get(self):
        return self.tf[i]

    def put(self, v):
        self.tf[i] = v & 0xFF

    return property(get, put)


def _hob_reg(i):
    def get(self):
        return self.hob[i]

    def put(self, v):
        self.hob[i] = v & 0xFF

    return property(get, put)


class Drive:
    """One device position on a channel: the task file every drive has.

    A position with no drive (present False) still latches register writes,
    as QEMU's absent slave does; its reads are answered by the transport.
    """

    present = False
    atapi = False

    # The task file lives in two byte arrays indexed by register offset (the
    # channel's port handlers touch them directly: a rep outsb to a register
    # is 4096 writes); commands use these names.
    feature = _tf_reg(REG_ERROR)
    nsector = _tf_reg(REG_NSECTOR)
    sector = _tf_reg(REG_SECTOR)
    lcyl = _tf_reg(REG_LCYL)
    hcyl = _tf_reg(REG_HCYL)
    select = _tf_reg(REG_SELECT)
    hob_feature = _hob_reg(REG_ERROR)
    hob_nsector = _hob_reg(REG_NSECTOR)
    hob_sector = _hob_reg(REG_SECTOR)
    hob_lcyl = _hob_reg(REG_LCYL)
    hob_hcyl = _hob_reg(REG_HCYL)

    def __init__(self, transport, unit, name):
        self.t = transport
        self.unit = unit
        self.name = name
        self.tf = bytearray(8)
        self.hob = bytearray(8)
        self.select = SEL_ALWAYS
        self.status = 0
        self.error = 0
        self.cmd = 0

    # --- task file ---------------------------------------------------------

    def tf_write(self, reg, v):
        """A write to command-block register 1-6 (v a byte); the previous value
        becomes the high-order byte (HOB) of a 48-bit command (ATA-6 6.20)."""
        if reg == REG_SELECT:
            self.tf[REG_SELECT] = v | SEL_ALWAYS
        else:
            self.hob[reg] = self.tf[reg]
            self.tf[reg] = v

    def tf_read(self, reg, hob):
        if reg == REG_STATUS:
            return self.status
        if reg == REG_ERROR and not hob:
            return self.error
        if hob and reg != REG_SELECT:
            return self.hob[reg]
        return self.tf[reg]

    def set_signature(self):
        """What a reset or diagnostic leaves (ATA-6 9.12): ATA 01/01/00/00,
        ATAPI 01/01/14/eb, and QEMU's ff/ff for an empty position."""
        self.select &= 0xF0
        self.nsector = 1
        self.sector = 1
        if self.atapi:
            self.lcyl, self.hcyl = 0x14, 0xEB
        elif self.present:
            self.lcyl, self.hcyl = 0, 0
        else:
            self.lcyl, self.hcyl = 0xFF, 0xFF

    def srst(self, asserted):
        """Software reset (device control SRST): BSY while asserted, then the signature."""
        if asserted:
            self.abort_transfer()
            self.status = ST_BSY | ST_DSC
            return
        self.set_signature()
        self.error = 0x01  # diagnostic passed
        self.status = 0 if (self.atapi or not self.present) else ST_READY

    def abort_transfer(self):
        pass

    def exec_cmd(self, cmd):
        pass

    def data_read(self, size):
        return 0

    def data_write(self, size, value):
        pass

    STATE_VERSION = 1

    def state(self):
        return {"tf": bytes(self.tf), "hob": bytes(self.hob), "status": self.status,
                "error": self.error, "cmd": self.cmd}

    def load_state(self, d):
        tf, hob = bytes(d["tf"]), bytes(d["hob"])
        if len(tf) != 8 or len(hob) != 8:
            raise ValueError(self.name + ": saved task file has the wrong size")
        self.tf[0:8] = tf
        self.hob[0:8] = hob
        self.tf[REG_SELECT] |= SEL_ALWAYS
        self.status = d["status"] & 0xFF
        self.error = d["error"] & 0xFF
        self.cmd = d.get("cmd", 0) & 0xFF

    def resume(self):
        """After every record is loaded: restart what was waiting (nothing here)."""


class _PioBuffer:
    """The drive's data-register window: bytes [pos, end) of buf move next."""

    def __init__(self, size):
        self.buf = bytearray(size)
        self.mv = memoryview(self.buf)
        self.pos = 0
        self.end = 0


class AtaBase(Drive):
    """What ATA disks and ATAPI drives share: command dispatch, PIO data
    transfer through the data register, DMA through the transport."""

    present = True
    model = "QEMU HARDDISK"

    def __init__(self, transport, unit, name, disk, serial, bufsize):
        super().__init__(transport, unit, name)
        self.disk = disk
        self.serial = serial
        self.version = "2.5+"  # QEMU's hw_version: what guests have always read
        self.pio = _PioBuffer(bufsize)
        self.pio_out = False  # the guest writes the data register (else reads)
        self.end_fn = None  # called when the guest has moved the last byte
        self.busy = False  # a disk request or DMA is under way
        self.gen = 0  # bumped by a reset: completions of older requests are dropped
        self.dma_pending = None
        self.xfer_mode = 0x45  # UDMA5 selected, as QEMU's IDENTIFY starts (SET FEATURES 03h)
        self.wcache = True  # cache=writeback (libxl's): FLUSH CACHE reaches the disk
        self.set_signature()
        self.status = 0 if self.atapi else ST_READY
        self.error = 0x01

    # --- save/restore (at a quiescent point: no disk request in flight) -------

    # What a data-register transfer continues with, by name.
    _END_FNS = ("_pio_write_block", "_pio_read_next", "_packet")

    def state(self):
        d = super().state()
        p = self.pio
        end = None
        if self.end_fn is not None:
            for name in self._END_FNS:
                if self.end_fn == getattr(self, name, None):
                    end = name
            if end is None:
                raise ValueError(self.name + ": a transfer can't be saved mid-way")
        if self.busy and self.dma_pending is None:
            raise ValueError(self.name + ": a disk request is in flight")
        d["pio"] = bytes(p.buf[0:max(p.end, self._buffered())])
        d["pio_end"] = p.end
        d["pio_pos"] = p.pos
        d["pio_out"] = self.pio_out
        d["end_fn"] = end
        d["dma"] = None
        if self.dma_pending is not None:
            op, sector, nbytes, source = self.dma_args
            d["dma"] = [op, sector, nbytes, None if source is None else bytes(source)]
        d["xfer_mode"] = self.xfer_mode
        d["wcache"] = self.wcache
        return d

    def load_state(self, d):
        super().load_state(d)
        p = self.pio
        buf = bytes(d["pio"])
        pos, end = d["pio_pos"], d["pio_end"]
        if len(buf) > len(p.buf) or not 0 <= pos <= end <= len(buf):
            raise ValueError(self.name + ": saved PIO buffer out of range")
        p.buf[0:len(buf)] = buf
        p.end = end
        p.pos = pos
        self.pio_out = bool(d["pio_out"])
        end = d["end_fn"]
        if end is not None and end not in self._END_FNS:
            raise ValueError(self.name + ": unknown transfer step %r" % (end,))
        self.end_fn = None if end is None else getattr(self, end, None)
        if end is not None and self.end_fn is None:
            raise ValueError(self.name + ": transfer step %s is not this drive's" % end)
        self.xfer_mode = d["xfer_mode"] & 0xFF
        self.wcache = bool(d["wcache"])
        self.busy = False
        self.dma_pending = None
        dma = d.get("dma")
        self._restart = None
        if dma is not None:
            op, sector, nbytes, source = dma
            if op not in (block.READ, block.WRITE) or sector < 0 or not 0 < nbytes <= 1 << 26:
                raise ValueError(self.name + ": saved DMA out of range")
            self._restart = (op, sector, nbytes, source)

    def resume(self):
        """The DMA the guest had set up when it was saved waits for the bus master again
        (it had not started: a transfer under way is drained before a save)."""
        r = getattr(self, "_restart", None)
        self._restart = None
        if r is not None:
            self._dma_restart(*r)

    def _dma_restart(self, op, sector, nbytes, source):
        self.exec_cmd(self.cmd)  # ATA: the task file still holds the command

    def _buffered(self):
        """How much of the PIO buffer holds data beyond the current block (ATAPI)."""
        return 0

    # --- interrupts and status -----------------------------------------------

    def _irq(self):
        self.t.irq(self)

    def _ok(self, irq=True):
        self.end_fn = None
        self.status = ST_READY
        self.error = 0
        self.busy = False
        if irq:
            self._irq()

    def _abort(self, err=ERR_ABRT):
        """End the command with an error (ATA-6 6.2: ERR set, error register)."""
        self.end_fn = None
        self.pio.pos = self.pio.end = 0
        self.busy = False
        self.error = err
        self.status = ST_DRDY | ST_ERR  # without DSC, as QEMU's ide_abort_command
        self._irq()

    def abort_transfer(self):
        self.gen += 1
        self.busy = False
        self.end_fn = None
        self.pio.pos = self.pio.end = 0
        if self.dma_pending is not None:
            self.dma_pending = None

    # --- PIO ----------------------------------------------------------------

    def _pio_start(self, n, out, end_fn, irq=True):
        """Offer n bytes of pio.buf at the data register (DRQ)."""
        self.pio.pos = 0
        self.pio.end = n
        self.pio_out = out
        self.end_fn = end_fn
        self.busy = False
        self.status = ST_READY | ST_DRQ if not self.atapi else ST_DRDY | ST_DRQ
        if irq:
            self._irq()

    def data_read(self, size):
        p = self.pio
        if not self.status & ST_DRQ or self.pio_out:
            log.guest_error(self.name, "data register read without a PIO read under way")
            return 0
        end = p.pos + size
        if end > p.end:
            # An odd ATAPI byte count: the last word is padded (ATA-6 8.21.4).
            end = p.end
        v = int.from_bytes(p.buf[p.pos:end], "little")
        p.pos = end
        if p.pos >= p.end:
            self._block_done()
        return v

    def data_write(self, size, value):
        p = self.pio
        if not self.status & ST_DRQ or not self.pio_out:
            log.guest_error(self.name, "data register write without a PIO write under way")
            return
        n = min(size, p.end - p.pos)
        p.buf[p.pos:p.pos + n] = value.to_bytes(size, "little")[0:n]
        p.pos += n
        if p.pos >= p.end:
            self._block_done()

    def _block_done(self):
        fn = self.end_fn
        self.end_fn = None
        self.status &= ~ST_DRQ
        if fn is None:
            self.status &= ~ST_BSY
        else:
            self.status |= ST_BSY
            fn()

    # --- disk requests --------------------------------------------------------

    def _submit(self, op, sector, views, then, release=None):
        """disk.submit with the drive's reset generation: a reset in between
        drops the completion (the data is the guest's problem then); release,
        if given, runs then all the same (guest memory pinned for the request)."""
        gen = self.gen
        self.busy = True

        def done(status):
            if gen == self.gen:
                then(status)
            elif release is not None:
                release()

        try:
            self.disk.submit(op, sector, views, done)
        except Exception as e:  # a broken disk must not take the device model down
            log.info(self.name, "disk request failed: %s" % e)
            done(block.EIO)

    # --- DMA (ATA and ATAPI) ---------------------------------------------------

    def _dma(self, op, sector, nbytes, then, source=None):
        """Move nbytes between the disk from 512-byte `sector` on (or `source`,
        a buffer) and the guest's scatter list, chunk by chunk; then(ok,
        status) at the end (status None: the scatter list failed)."""
        # "left": bytes not yet mapped; "out": requests in flight; "err": the first
        # failure (then no more are mapped). A command bigger than one disk request
        # has all its requests in flight at once, up to DMA_WINDOW of them.
        st = {"left": nbytes, "sector": sector, "pos": 0, "again": False, "busy": False,
              "out": 0, "err": block.OK, "end": False}
        # One disk request takes at most the disk's max_sectors (stubdm/block.py).
        limit = DMA_CHUNK
        if source is None:
            limit = min(limit, max(1, getattr(self.disk, "max_sectors", 2048)) * SECTOR)
        gen = self.gen
        self.busy = True

        def finish(ok, status):
            st["end"] = True
            then(ok, status)

        def step():
            # Completions may come before submit returns: iterate, never recurse.
            if st["busy"]:
                st["again"] = True
                return
            st["busy"] = True
            while True:
                st["again"] = False
                if gen != self.gen or st["end"]:
                    break
                if st["err"] != block.OK or st["left"] <= 0:
                    if st["out"] == 0:
                        if st["err"] != block.OK:
                            finish(False, st["err"])
                        else:
                            finish(True, block.OK)
                    break
                if st["out"] >= DMA_WINDOW:
                    break
                n = min(st["left"], limit)
                chunk = self.t.dma_map(n, op == block.READ)
                if chunk is None:
                    st["left"] = 0
                    if st["out"] == 0:
                        finish(False, None)
                        break
                    st["err"] = None  # the scatter list failed mid-way: then(False, None)
                    continue
                if source is not None:
                    pos = st["pos"]
                    for v in chunk.views:
                        v[:] = source[pos:pos + len(v)]
                        pos += len(v)
                    st["pos"] = pos
                    chunk.release()
                    st["left"] -= n
                    continue
                self._dma_chunk(op, st, n, chunk, step)
            st["busy"] = False

        self.dma_pending = step
        self.dma_args = (op, sector, nbytes, source)  # a saved state restarts it from these
        self.t.dma_start(self, self._dma_go)

    def _dma_go(self):
        step = self.dma_pending
        self.dma_pending = None
        if step is not None:
            step()

    def _dma_chunk(self, op, st, n, chunk, step):
        views = chunk.views
        bounce = None
        for v in views:
            if len(v) % SECTOR:
                bounce = bytearray(n)  # PRD pieces off the sector grid: copy through
                break
        if bounce is not None and op == block.WRITE:
            pos = 0
            for v in views:
                bounce[pos:pos + len(v)] = v
                pos += len(v)
        sector = st["sector"]
        st["sector"] += n // SECTOR
        st["left"] -= n
        st["out"] += 1

        def done(status):
            if status == block.OK and bounce is not None and op == block.READ:
                pos = 0
                for v in views:
                    v[:] = bounce[pos:pos + len(v)]
                    pos += len(v)
            chunk.release()
            st["out"] -= 1
            if status != block.OK and st["err"] == block.OK:
                st["err"] = status
            step()

        self._submit(op, sector, [memoryview(bounce)] if bounce is not None else views, done,
                     chunk.release)

    # --- identify helpers -----------------------------------------------------

    def _mode_words(self, buf):
        """Words 62, 63, 88: supported and selected DMA modes."""
        m = self.xfer_mode
        sw = 0x07 | ((1 << (m & 7)) << 8 if m & 0xF8 == 0x10 else 0)
        mw = 0x07 | ((1 << (m & 7)) << 8 if m & 0xF8 == 0x20 else 0)
        ud = 0x3F | ((1 << (m & 7)) << 8 if m & 0xF8 == 0x40 else 0)
        _put16(buf, 62, sw)
        _put16(buf, 63, mw)
        _put16(buf, 88, ud)

    def _set_features(self):
        f = self.feature
        if f == SF_XFER_MODE:
            m = self.nsector
            kind, n = m & 0xF8, m & 7
            ok = ((m in (0, 1)) or (kind == 0x08 and n <= 4) or (kind in (0x10, 0x20) and n <= 2)
                  or (kind == 0x40 and n <= 5))
            if not ok:
                self._abort()
                return
            self.xfer_mode = m if m > 1 else 0x0C
            self._ok()
        elif f in (SF_ENABLE_WCACHE, SF_DISABLE_WCACHE) and not self.atapi:
            self.wcache = f == SF_ENABLE_WCACHE
            self._ok()
        elif f in (SF_ENABLE_RLA, SF_DISABLE_RLA, SF_ENABLE_REVERT, SF_DISABLE_REVERT):
            self._ok()
        else:
            log.unimp(self.name, "SET FEATURES %#04x" % f)
            self._abort()

    def _common(self, cmd):
        """Commands every drive takes; False when cmd is not one of them."""
        if cmd == CMD_SET_FEATURES:
            self._set_features()
        elif cmd == CMD_CHECK_POWER_MODE:
            self._ok(irq=False)
            self.nsector = 0xFF  # active or idle
            self._irq()
        elif cmd in (CMD_STANDBY_IMMEDIATE, CMD_IDLE_IMMEDIATE, CMD_STANDBY, CMD_IDLE,
                     CMD_SLEEP):
            self._ok()
        elif cmd == CMD_DIAGNOSE:
            self.set_signature()
            self.status = 0 if self.atapi else ST_READY
            self.error = 0x01
            self._irq()
        else:
            return False
        return True


class AtaDisk(AtaBase):
    """An ATA hard disk (ATA-6 general feature set, 48-bit address feature set)."""

    def __init__(self, transport, unit, name, disk, serial):
        super().__init__(transport, unit, name, disk, serial, PIO_BUF)
        self.mult_sectors = MAX_MULT_SECTORS
        self.ncq_log = False  # a SATA disk with NCQ keeps log 10h
        self.ncq_error = None  # (tag, status, error, lba, count) of a failed queued command
        self._geometry()
        self.xfer = None  # the PIO command under way: [sector, left, is_write, per_block, fua]

    def state(self):
        d = super().state()
        d["mult_sectors"] = self.mult_sectors
        d["xfer"] = None if self.xfer is None else list(self.xfer)
        return d

    def load_state(self, d):
        super().load_state(d)
        m = d["mult_sectors"]
        self.mult_sectors = m if 0 < m <= MAX_MULT_SECTORS and not m & (m - 1) else \
            MAX_MULT_SECTORS
        x = d["xfer"]
        if x is not None:
            if len(x) != 6 or not self._range_ok(x[0], x[1]) or not 0 < x[3] <= 256:
                raise ValueError(self.name + ": saved PIO command out of range")
            x = [int(x[0]), int(x[1]), bool(x[2]), int(x[3]), bool(x[4]), bool(x[5])]
        self.xfer = x
        self._geometry()

    def _geometry(self):
        # QEMU's hd_geometry_guess for an LBA disk: 16 heads, 63 sectors a track.
        # Worked out again at each IDENTIFY: a PV disk learns its size when it connects.
        n = self.disk.sectors
        self.heads = 16
        self.secs = 63
        self.cyls = max(1, min(16383, n // (16 * 63)))

    # --- addressing ---------------------------------------------------------

    def _lba(self, lba48):
        if lba48:
            return ((self.hob_hcyl << 40) | (self.hob_lcyl << 32) | (self.hob_sector << 24)
                    | (self.hcyl << 16) | (self.lcyl << 8) | self.sector)
        if self.select & SEL_LBA:
            return (((self.select & 0x0F) << 24) | (self.hcyl << 16) | (self.lcyl << 8)
                    | self.sector)
        cyl = (self.hcyl << 8) | self.lcyl
        if self.sector == 0:
            return -1  # sector numbers start at 1 (CHS)
        return (cyl * self.heads + (self.select & 0x0F)) * self.secs + self.sector - 1

    def _set_lba(self, lba, lba48):
        if lba48:
            self.hob_hcyl = (lba >> 40) & 0xFF
            self.hob_lcyl = (lba >> 32) & 0xFF
            self.hob_sector = (lba >> 24) & 0xFF
            self.hcyl = (lba >> 16) & 0xFF
            self.lcyl = (lba >> 8) & 0xFF
            self.sector = lba & 0xFF
        elif self.select & SEL_LBA:
            self.select = (self.select & 0xF0) | ((lba >> 24) & 0x0F)
            self.hcyl = (lba >> 16) & 0xFF
            self.lcyl = (lba >> 8) & 0xFF
            self.sector = lba & 0xFF
        else:
            cyl = lba // (self.heads * self.secs)
            r = lba % (self.heads * self.secs)
            self.hcyl = (cyl >> 8) & 0xFF
            self.lcyl = cyl & 0xFF
            self.select = (self.select & 0xF0) | (r // self.secs)
            self.sector = r % self.secs + 1

    def _count(self, lba48):
        if lba48:
            n = (self.hob_nsector << 8) | self.nsector
            return n or 65536
        return self.nsector or 256

    def _range_ok(self, lba, n):
        total = self.disk.sectors
        return 0 <= lba and n <= total and lba <= total - n

    # --- command dispatch ---------------------------------------------------

    def exec_cmd(self, cmd):
        self.cmd = cmd
        self.error = 0
        if cmd in (CMD_READ, CMD_READ_NORETRY, CMD_READ_EXT):
            self._pio_rw(cmd == CMD_READ_EXT, False, 1)
        elif cmd in (CMD_READ_MULTIPLE, CMD_READ_MULTIPLE_EXT):
            self._pio_rw(cmd == CMD_READ_MULTIPLE_EXT, False, self.mult_sectors)
        elif cmd in (CMD_WRITE, CMD_WRITE_NORETRY, CMD_WRITE_EXT):
            self._pio_rw(cmd == CMD_WRITE_EXT, True, 1)
        elif cmd in (CMD_WRITE_MULTIPLE, CMD_WRITE_MULTIPLE_EXT, CMD_WRITE_MULTIPLE_FUA_EXT):
            self._pio_rw(cmd != CMD_WRITE_MULTIPLE, True, self.mult_sectors,
                         fua=cmd == CMD_WRITE_MULTIPLE_FUA_EXT)
        elif cmd in (CMD_READ_DMA, CMD_READ_DMA_NORETRY, CMD_READ_DMA_EXT):
            self._dma_rw(cmd == CMD_READ_DMA_EXT, False)
        elif cmd in (CMD_WRITE_DMA, CMD_WRITE_DMA_NORETRY, CMD_WRITE_DMA_EXT,
                     CMD_WRITE_DMA_FUA_EXT):
            self._dma_rw(cmd in (CMD_WRITE_DMA_EXT, CMD_WRITE_DMA_FUA_EXT), True,
                         fua=cmd == CMD_WRITE_DMA_FUA_EXT)
        elif cmd in (CMD_VERIFY, CMD_VERIFY_NORETRY, CMD_VERIFY_EXT):
            lba48 = cmd == CMD_VERIFY_EXT
            lba, n = self._lba(lba48), self._count(lba48)
            if not self._range_ok(lba, n):
                self._abort()
            else:
                self._set_lba(lba + n - 1, lba48)
                self._ok()
        elif cmd in (CMD_FLUSH_CACHE, CMD_FLUSH_CACHE_EXT):
            self._flush(None)
        elif cmd == CMD_READ_LOG_EXT:
            self._read_log()
        elif cmd == CMD_IDENTIFY:
            self._identify()
            self._pio_start(SECTOR, False, None)
        elif cmd == CMD_SET_MULTIPLE:
            n = self.nsector
            if n > MAX_MULT_SECTORS or n & (n - 1):
                self._abort()
            else:
                self.mult_sectors = n
                self._ok()
        elif cmd == CMD_SPECIFY or CMD_RECALIBRATE <= cmd <= 0x1F or CMD_SEEK <= cmd <= 0x7F:
            self._ok()
        elif self._common(cmd):
            pass
        else:
            if cmd not in (CMD_NOP, CMD_PACKET, CMD_IDENTIFY_PACKET, CMD_DEVICE_RESET):
                log.unimp(self.name, "ATA command %#04x" % cmd)
            self._abort()

    # --- IDENTIFY DEVICE (ATA-6 8.15; words as QEMU's ide_identify) -------------

    def _identify(self):
        b = self.pio.buf
        b[0:SECTOR] = bytes(SECTOR)
        self._geometry()
        n = self.disk.sectors
        _put16(b, 0, 0x0040)  # fixed device
        _put16(b, 1, self.cyls)
        _put16(b, 3, self.heads)
        _put16(b, 4, 512 * self.secs)
        _put16(b, 5, 512)
        _put16(b, 6, self.secs)
        _padstr(b, 20, self.serial, 20)
        _put16(b, 20, 3)
        _put16(b, 21, 512)
        _put16(b, 22, 4)
        _padstr(b, 46, self.version, 8)
        _padstr(b, 54, self.model, 40)
        _put16(b, 47, 0x8000 | MAX_MULT_SECTORS)
        _put16(b, 48, 1)  # dword I/O
        _put16(b, 49, (1 << 11) | (1 << 9) | (1 << 8))  # IORDY, LBA, DMA
        _put16(b, 51, 0x200)
        _put16(b, 52, 0x200)
        _put16(b, 53, 7)  # words 54-58, 64-70 and 88 valid
        _put16(b, 54, self.cyls)
        _put16(b, 55, self.heads)
        _put16(b, 56, self.secs)
        chs = self.cyls * self.heads * self.secs
        _put16(b, 57, chs)
        _put16(b, 58, chs >> 16)
        if self.mult_sectors:
            _put16(b, 59, 0x100 | self.mult_sectors)
        n28 = min(n, LBA28_LIMIT)
        _put16(b, 60, n28)
        _put16(b, 61, n28 >> 16)
        self._mode_words(b)
        _put16(b, 64, 0x03)  # PIO3-4
        for w in (65, 66, 67, 68):
            _put16(b, w, 120)
        _put16(b, 80, 0xF0)  # ATA-4 to ATA-7
        _put16(b, 81, 0x16)
        _put16(b, 82, (1 << 14) | (1 << 5))  # NOP, write cache
        _put16(b, 83, (1 << 14) | (1 << 13) | (1 << 12) | (1 << 10))  # FLUSH (EXT), LBA48
        _put16(b, 84, (1 << 14) | ((1 << 5) if self.ncq_log else 0))  # GPL: READ LOG EXT
        _put16(b, 85, (1 << 14) | ((1 << 5) if self.wcache else 0))
        _put16(b, 86, (1 << 13) | (1 << 12) | (1 << 10))
        _put16(b, 87, (1 << 14) | ((1 << 5) if self.ncq_log else 0))
        _put16(b, 93, 1 | (1 << 14) | 0x2000)
        for i in range(4):
            _put16(b, 100 + i, (n >> (16 * i)) & 0xFFFF)

    # --- READ LOG EXT (ACS-3 7.24; general purpose logs) --------------------------

    def _log_pages(self, addr):
        """How many pages the log at addr has (0: not supported)."""
        if addr == LOG_DIRECTORY:
            return 1
        if addr == LOG_NCQ_ERROR and self.ncq_log:
            return 1
        return 0

    def _read_log(self):
        addr = self.sector
        # The page number is LBA 15:8 (libata writes no more); any higher bit is past it.
        page = (self.hob_lcyl << 16) | (self.hob_sector << 8) | self.lcyl
        n = self._count(True)
        have = self._log_pages(addr)
        if have == 0 or page + n > have or n * SECTOR > len(self.pio.buf):
            log.guest_error(self.name, "READ LOG EXT of log %#04x pages %d+%d (has %d)" % (
                addr, page, n, have))
            self._abort()
            return
        b = self.pio.buf
        b[0:SECTOR] = bytes(SECTOR)
        if addr == LOG_DIRECTORY:
            _put16(b, 0, 1)  # the directory's version; then each log's page count
            for a in range(1, 256):
                _put16(b, a, self._log_pages(a))
        else:
            self._ncq_error_page(b)
        self._pio_start(n * SECTOR, False, None)

    def _ncq_error_page(self, b):
        """Log 10h: the failed queued command (its tag, status, error, LBA, count),
        or NQ (no queued command failed). Reading it clears it, as on a drive."""
        e = self.ncq_error
        self.ncq_error = None
        if e is None:
            b[0] = 0x80  # NQ
        else:
            tag, status, error, lba, count = e
            b[0] = tag & 0x1F
            b[2] = status
            b[3] = error
            for i in range(3):
                b[4 + i] = (lba >> (8 * i)) & 0xFF
                b[8 + i] = (lba >> (24 + 8 * i)) & 0xFF
            b[7] = 0x40
            b[12] = count & 0xFF
            b[13] = (count >> 8) & 0xFF
        b[511] = (-sum(b[0:511])) & 0xFF  # the page's bytes sum to 0

    # --- PIO read/write (ATA-6 9.7 PIO data-in, 9.8 PIO data-out) ---------------

    def _pio_rw(self, lba48, is_write, per_block, fua=False):
        if per_block == 0:  # READ/WRITE MULTIPLE before SET MULTIPLE
            self._abort()
            return
        lba, n = self._lba(lba48), self._count(lba48)
        if not self._range_ok(lba, n):
            log.guest_error(self.name, "sectors %d+%d past the disk's %d" %
                            (lba, n, self.disk.sectors))
            self._abort()
            return
        if is_write and self.disk.readonly:
            self._abort()
            return
        self.xfer = [lba, n, is_write, per_block, fua, lba48]
        if is_write:
            k = min(n, per_block)
            self._pio_start(k * SECTOR, True, self._pio_write_block, irq=False)
        else:
            self._pio_read_next()

    def _pio_read_next(self):
        x = self.xfer
        lba, n = x[0], x[1]
        if n == 0:
            self.xfer = None
            self.status = ST_READY  # the last block was read: no interrupt (QEMU)
            self.end_fn = None
            return
        k = min(n, x[3])
        self.status = ST_READY | ST_BSY

        def done(status):
            if status != block.OK:
                self.xfer = None
                self._abort(_errno_to_ata(status, False))
                return
            x[0] = lba + k
            x[1] = n - k
            self._set_lba(lba + k, x[5])  # the next sector, as QEMU leaves it
            self.nsector = x[1] & 0xFF
            self._pio_start(k * SECTOR, False, self._pio_read_next)

        self._submit(block.READ, lba, [self.pio.mv[0:k * SECTOR]], done)

    def _pio_write_block(self):
        x = self.xfer
        lba, n = x[0], x[1]
        k = min(n, x[3])

        def written(status):
            if status != block.OK:
                self.xfer = None
                self._abort(_errno_to_ata(status, True))
                return
            x[0] = lba + k
            x[1] = n - k
            self._set_lba(lba + k, x[5])  # the next sector, as QEMU leaves it
            self.nsector = x[1] & 0xFF
            if x[1] == 0:
                self.xfer = None
                if x[4]:
                    self._flush(None)
                else:
                    self._ok()
                return
            self._pio_start(min(x[1], x[3]) * SECTOR, True, self._pio_write_block)

        self._submit(block.WRITE, lba, [self.pio.mv[0:k * SECTOR]], written)

    # --- DMA read/write (ATA-6 9.10) ----------------------------------------------

    def _dma_rw(self, lba48, is_write, fua=False):
        lba, n = self._lba(lba48), self._count(lba48)
        if not self._range_ok(lba, n):
            log.guest_error(self.name, "DMA of sectors %d+%d past the disk's %d" %
                            (lba, n, self.disk.sectors))
            self._abort()
            return
        if is_write and self.disk.readonly:
            self._abort()
            return
        self.status = ST_READY | ST_DRQ | ST_BSY

        def then(ok, status):
            self.dma_pending = None
            if not ok:
                self.t.dma_end(False)
                self._abort(ERR_ABRT if status is None else _errno_to_ata(status, is_write))
                return
            self._set_lba(lba + n - 1, lba48)
            self.nsector = 0
            if fua:
                self.t.dma_end(True)
                self._flush(None)
                return
            self.status = ST_READY
            self.busy = False
            self._irq()
            self.t.dma_end(True)

        self._dma(block.WRITE if is_write else block.READ, lba, n * SECTOR, then)

    def _flush(self, _x):
        self.status = ST_READY | ST_BSY

        def done(status):
            if status != block.OK:
                self._abort(ERR_ABRT)
            else:
                self._ok()

        self._submit(block.FLUSH, 0, [], done)


class AtapiCdrom(AtaBase):
    """An ATAPI CD/DVD-ROM drive (SFF-8020i packet protocol, MMC-3 commands)."""

    atapi = True
    model = "QEMU DVD-ROM"

    def __init__(self, transport, unit, name, disk, serial):
        super().__init__(transport, unit, name, disk, serial, ATAPI_BUF)
        self.sense_key = SK_NO_SENSE
        self.asc = 0
        self.ascq = 0
        self.locked = False
        self.tray_open = False
        self.event = MEC_NO_CHANGE
        self.packet_dma = False
        self.stream = None  # a PIO data-in transfer: [left, lba, blocks left]
        self.status = 0
        disk.on_change = self.medium_changed
        if disk.media_changed:
            self.medium_changed()

    def medium_changed(self):
        """The disk's medium was changed (or ejected) by the host: a UNIT
        ATTENTION for the next command and a media event for GESN."""
        self.disk.media_changed = False
        self.tray_open = False
        if self.disk.sectors:
            self.event = MEC_NEW_MEDIA
            self._sense(SK_UNIT_ATTENTION, ASC_MEDIUM_CHANGED)
        else:
            self.event = MEC_MEDIA_REMOVAL
            self._sense(SK_UNIT_ATTENTION, ASC_MEDIUM_CHANGED)

    def _blocks(self):
        if self.tray_open:
            return 0
        return self.disk.sectors // 4

    def _sense(self, key, asc, ascq=0):
        self.sense_key = key
        self.asc = asc
        self.ascq = ascq

    # --- ATA commands an ATAPI device takes (ATA-6 6.4 PACKET feature set) --

    def exec_cmd(self, cmd):
        self.cmd = cmd
        if cmd == CMD_PACKET:
            self.packet_dma = bool(self.feature & 1)
            self.error = 0
            self.nsector = IR_COD
            # DRQ for the packet, without an interrupt (IDENTIFY PACKET word 0: 50 us DRQ).
            self._pio_start(12, True, self._packet, irq=False)
            return
        if cmd == CMD_IDENTIFY_PACKET:
            self._identify()
            self._pio_start(SECTOR, False, None)
            self.status = ST_READY | ST_DRQ  # QEMU's READY | SEEK
            return
        if cmd == CMD_DEVICE_RESET:
            self.abort_transfer()
            self.set_signature()
            self.status = 0
            self.error = 0x01
            return
        if cmd == CMD_IDENTIFY:
            # An ATAPI device aborts IDENTIFY DEVICE and shows its signature (ATA-6 8.15).
            self.set_signature()
            self._abort()
            return
        if self._common(cmd):
            return
        if cmd not in (CMD_NOP, CMD_READ_DMA, CMD_READ, CMD_WRITE, CMD_WRITE_DMA):
            log.unimp(self.name, "ATA command %#04x to an ATAPI device" % cmd)
        self._abort()

    def _identify(self):
        # IDENTIFY PACKET DEVICE (ATA-6 8.16), words as QEMU's ide_atapi_identify
        # with DMA: removable CD-ROM, DRQ within 50 us, 12-byte packets.
        b = self.pio.buf
        b[0:SECTOR] = bytes(SECTOR)
        _put16(b, 0, (2 << 14) | (5 << 8) | (1 << 7) | (2 << 5))
        _padstr(b, 20, self.serial, 20)
        _put16(b, 20, 3)
        _put16(b, 21, 512)
        _put16(b, 22, 4)
        _padstr(b, 46, self.version, 8)
        _padstr(b, 54, self.model, 40)
        _put16(b, 48, 1)
        _put16(b, 49, (1 << 9) | (1 << 8))  # LBA, DMA
        _put16(b, 53, 7)
        self._mode_words(b)
        _put16(b, 64, 3)
        _put16(b, 65, 0xB4)
        _put16(b, 66, 0xB4)
        _put16(b, 67, 0x12C)
        _put16(b, 68, 0xB4)
        _put16(b, 71, 30)
        _put16(b, 72, 30)
        _put16(b, 80, 0x1E)

    # --- the packet protocol (ATA-6 9.11 PACKET, SFF-8020i 5.x) ------------------

    def _byte_limit(self):
        n = (self.hcyl << 8) | self.lcyl
        if n == 0 or n == 0xFFFF:
            n = 0xFFFE  # "0 is invalid"; an odd limit is rounded down (ATA-6 8.21.4)
        return n & ~1

    def _packet(self):
        cdb = bytes(self.pio.buf[0:12])
        self.status = ST_DRDY | ST_BSY
        op = cdb[0]
        if self.sense_key == SK_UNIT_ATTENTION and op not in _ALLOW_UA:
            self._check_condition_keep()
            return
        if op in _NEED_MEDIUM and not self._blocks():
            self._fail(SK_NOT_READY, ASC_NO_MEDIUM, 0x02 if self.tray_open else 0)
            return
        if op == SCSI_TEST_UNIT_READY:
            self._good()
        elif op == SCSI_REQUEST_SENSE:
            self._request_sense(cdb)
        elif op == SCSI_INQUIRY:
            self._inquiry(cdb)
        elif op in (SCSI_MODE_SENSE_6, SCSI_MODE_SENSE_10):
            self._mode_sense(cdb)
        elif op == SCSI_START_STOP:
            self._start_stop(cdb)
        elif op == SCSI_ALLOW_REMOVAL:
            self.locked = bool(cdb[4] & 1)
            self.disk.locked = self.locked  # the host's eject asks (QMP eject's force)
            self._good()
        elif op == SCSI_READ_CAPACITY:
            r = bytearray(8)
            _pbe32(r, 0, self._blocks() - 1)
            _pbe32(r, 4, CD_BLOCK)
            self._reply(r, 8)
        elif op in (SCSI_READ_10, SCSI_READ_12):
            lba = _be32(cdb, 2)
            n = _be16(cdb, 7) if op == SCSI_READ_10 else _be32(cdb, 6)
            self._read(lba, n)
        elif op in (SCSI_SEEK_10, SCSI_VERIFY_10):
            if _be32(cdb, 2) >= self._blocks():
                self._fail(SK_ILLEGAL_REQUEST, ASC_LBA_OUT_OF_RANGE)
            else:
                self._good()
        elif op == SCSI_SET_CD_SPEED:
            self._good()
        elif op == SCSI_READ_TOC:
            self._read_toc(cdb)
        elif op == SCSI_GET_CONFIGURATION:
            self._get_configuration(cdb)
        elif op == SCSI_GET_EVENT_STATUS:
            self._gesn(cdb)
        elif op == SCSI_READ_DISC_INFO:
            self._disc_info(cdb)
        else:
            log.unimp(self.name, "packet command %#04x" % op)
            self._fail(SK_ILLEGAL_REQUEST, ASC_INVALID_OPCODE)

    def _good(self):
        self.end_fn = None
        self.busy = False
        self.error = 0
        self.nsector = IR_IO | IR_COD
        self.status = ST_DRDY | ST_DSC
        self._irq()

    def _fail(self, key, asc, ascq=0):
        self._sense(key, asc, ascq)
        self._check_condition_keep()

    def _check_condition_keep(self):
        """CHECK CONDITION with the current sense (ATA-6 8.21: sense key in error 7:4)."""
        self.end_fn = None
        self.stream = None
        self.pio.pos = self.pio.end = 0
        self.busy = False
        self.error = self.sense_key << 4  # QEMU's ide_atapi_cmd_error: no ABRT bit
        self.nsector = IR_IO | IR_COD
        self.status = ST_DRDY | ST_ERR
        self._irq()

    # --- data-in: a reply buffer or disc blocks, by PIO or DMA ----------------------

    def _reply(self, data, alloc):
        """Send `data`, cut to the allocation length."""
        n = min(len(data), alloc)
        if n == 0:
            self._good()
            return
        if self.packet_dma:
            src = memoryview(bytes(data[0:n]))
            self._dma(block.READ, 0, n, self._dma_then, source=src)
            return
        self.pio.buf[0:n] = data[0:n]
        # The stream: bytes left, next block, blocks left, buffered end, DRQ block size.
        self.stream = [n, 0, 0, n, 0]
        self.pio.pos = 0
        self._next_drq()

    def _read(self, lba, n):
        blocks = self._blocks()
        if lba < 0 or n > blocks or lba > blocks - n:
            log.guest_error(self.name, "READ of blocks %d+%d past the disc's %d" %
                            (lba, n, blocks))
            self._fail(SK_ILLEGAL_REQUEST, ASC_LBA_OUT_OF_RANGE)
            return
        if n == 0:
            self._good()
            return
        if self.packet_dma:
            self._dma(block.READ, lba * 4, n * CD_BLOCK, self._dma_then)
            return
        self.stream = [n * CD_BLOCK, lba, n, 0, 0]
        self.pio.pos = 0
        self._next_drq()

    def _dma_then(self, ok, status):
        self.dma_pending = None
        self.t.dma_end(ok)
        if ok:
            self._good()
        elif status is None:
            self._fail(SK_ABORTED_COMMAND, 0)
        else:
            self._fail(SK_MEDIUM_ERROR, ASC_READ_ERROR)

    def _next_drq(self):
        """Present the next DRQ block of the PIO data-in stream; refill the
        buffer from the disc when it holds less than the block."""
        s = self.stream
        if s is None:
            return
        left = s[0]
        if left <= 0:
            self.stream = None
            self._good()
            return
        want = min(left, self._byte_limit())
        p = self.pio
        have = s[3] - p.pos
        if have >= want or s[2] == 0:
            want = min(want, have)
            self._drq_block(p.pos, want)
            return
        # Keep the unread bytes, then read whole blocks after them.
        p.buf[0:have] = p.buf[p.pos:s[3]]
        p.pos = 0
        s[3] = have
        k = min(s[2], (len(p.buf) - have) // CD_BLOCK, (want - have + CD_BLOCK - 1) // CD_BLOCK)
        lba = s[1]
        self.status = ST_DRDY | ST_BSY

        def done(status):
            if status != block.OK:
                self.stream = None
                self._fail(SK_MEDIUM_ERROR, ASC_READ_ERROR)
                return
            s[1] = lba + k
            s[2] -= k
            s[3] = have + k * CD_BLOCK
            self._next_drq()

        self._submit(block.READ, lba * 4, [p.mv[have:have + k * CD_BLOCK]], done)

    def _drq_block(self, start, n):
        p = self.pio
        self.stream[4] = n
        self.lcyl = n & 0xFF
        self.hcyl = (n >> 8) & 0xFF
        self.nsector = IR_IO
        p.pos = start
        p.end = start + n
        self.pio_out = False
        self.busy = False
        self.end_fn = self._drq_done
        self.status = ST_DRDY | ST_DRQ
        self._irq()

    def _drq_done(self):
        s = self.stream
        if s is None:
            return
        s[0] -= s[4]
        self._next_drq()

    # --- packet commands ------------------------------------------------------

    def _request_sense(self, cdb):
        r = bytearray(18)
        r[0] = 0xF0  # valid, current error, fixed format (SPC-3 4.5.3), as QEMU
        r[2] = self.sense_key
        r[7] = 10
        r[12] = self.asc
        r[13] = self.ascq
        if self.sense_key == SK_UNIT_ATTENTION:
            self._sense(SK_NO_SENSE, 0)
        self._reply(r, cdb[4])

    def _inquiry(self, cdb):
        if cdb[1] & 1:  # EVPD: no vital product data pages here (as QEMU's ATAPI)
            self._fail(SK_ILLEGAL_REQUEST, ASC_INVALID_FIELD)
            return
        r = bytearray(36)
        r[0] = 0x05  # CD/DVD device
        r[1] = 0x80  # removable
        r[2] = 0x00
        r[3] = 0x21  # ATAPI transport version 2, response format 1
        r[4] = 31
        r[8:16] = b"QEMU    "
        r[16:32] = b"QEMU DVD-ROM    "
        v = (self.version + "    ")[0:4]
        r[32:36] = v.encode()
        self._reply(r, _be16(cdb, 3) if cdb[3] else cdb[4])

    def _mode_sense(self, cdb):
        ten = cdb[0] == SCSI_MODE_SENSE_10
        alloc = _be16(cdb, 7) if ten else cdb[4]
        page = cdb[2] & 0x3F
        pc = cdb[2] >> 6
        if pc == 3:  # saved values
            self._fail(SK_ILLEGAL_REQUEST, 0x39)  # saving parameters not supported
            return
        pages = bytearray()
        if page in (0x01, 0x3F):
            pages += bytes((0x01, 0x06, 0x00, 0x05, 0, 0, 0, 0))  # read error recovery
        if page in (0x2A, 0x3F):
            p = bytearray(20)  # MM capabilities and mechanical status (MMC-3 6.3.11)
            p[0] = 0x2A
            p[1] = 18
            p[2] = 0x3B  # reads CD-R, CD-RW, DVD-ROM, DVD-R, DVD-RAM
            p[4] = 0x71
            p[5] = 0x03
            p[6] = 0x29 | (0x02 if self.locked else 0)  # tray, eject, lock (state)
            _pbe16(p, 8, 706)
            p[11] = 2
            _pbe16(p, 12, 512)
            _pbe16(p, 14, 706)
            pages += p
        if not pages:
            self._fail(SK_ILLEGAL_REQUEST, ASC_INVALID_FIELD)
            return
        medium = 0x70 if not self._blocks() else 0x01  # no disc / 120 mm data disc
        if ten:
            r = bytearray(8)
            _pbe16(r, 0, 6 + len(pages))
            r[2] = medium
        else:
            r = bytearray(4)
            r[0] = 3 + len(pages)
            r[1] = medium
        self._reply(r + pages, alloc)

    def _start_stop(self, cdb):
        start, loej = cdb[4] & 1, cdb[4] & 2
        if loej:
            if not start and self.locked:
                self._fail(SK_ILLEGAL_REQUEST, ASC_REMOVAL_PREVENTED, 0x02)
                return
            if not start:
                self.tray_open = True
                self.event = MEC_MEDIA_REMOVAL
            else:
                self.tray_open = False
        self._good()

    def _lba_or_msf(self, r, o, lba, msf):
        if msf:
            f = lba + 150
            r[o] = 0
            r[o + 1] = f // (75 * 60)
            r[o + 2] = (f // 75) % 60
            r[o + 3] = f % 75
        else:
            _pbe32(r, o, lba)

    def _read_toc(self, cdb):
        msf = cdb[1] & 2
        fmt = cdb[2] & 0x0F
        if fmt == 0 and cdb[9] >> 6:
            fmt = cdb[9] >> 6  # the older format field (SFF-8020i)
        alloc = _be16(cdb, 7)
        blocks = self._blocks()
        if fmt == 0:
            track = cdb[6]
            if track > 1 and track != 0xAA:
                self._fail(SK_ILLEGAL_REQUEST, ASC_INVALID_FIELD)
                return
            r = bytearray(4)
            r[2] = 1
            r[3] = 1
            if track <= 1:
                d = bytearray(8)
                d[1] = 0x14  # ADR 1, data track
                d[2] = 1
                self._lba_or_msf(d, 4, 0, msf)
                r += d
            d = bytearray(8)
            d[1] = 0x16
            d[2] = 0xAA  # lead-out
            self._lba_or_msf(d, 4, blocks, msf)
            r += d
        elif fmt == 1:  # session information: one session at 0 (the rest zero, as QEMU)
            r = bytearray(12)
            r[2] = 1
            r[3] = 1
        elif fmt == 2:  # raw TOC: A0, A1, A2 and track 1 of session 1
            r = bytearray(4)
            r[2] = 1
            r[3] = 1
            for point, pm in ((0xA0, 1), (0xA1, 1), (0xA2, None), (1, None)):
                d = bytearray(11)
                d[0] = 1
                d[1] = 0x14
                d[3] = point
                if point == 0xA2:
                    f = blocks + 150
                    d[8], d[9], d[10] = f // 4500, (f // 75) % 60, f % 75
                elif point == 1:
                    d[8], d[9], d[10] = 0, 2, 0
                else:
                    d[8] = pm
                r += d
        else:
            self._fail(SK_ILLEGAL_REQUEST, ASC_INVALID_FIELD)
            return
        _pbe16(r, 0, len(r) - 2)
        self._reply(r, alloc)

    def _profile(self):
        blocks = self._blocks()
        if not blocks:
            return PROFILE_NONE
        return PROFILE_DVD_ROM if blocks > CD_MAX_BLOCKS else PROFILE_CD_ROM

    def _get_configuration(self, cdb):
        rt = cdb[1] & 3
        sfn = _be16(cdb, 2)
        alloc = _be16(cdb, 7)
        if rt == 3:
            self._fail(SK_ILLEGAL_REQUEST, ASC_INVALID_FIELD)
            return
        cur = self._profile()
        feats = []
        # Profile list (MMC-3 5.3.1): DVD-ROM and CD-ROM, the current one flagged.
        f = bytearray(12)
        f[2] = 0x03
        f[3] = 8
        _pbe16(f, 4, PROFILE_DVD_ROM)
        f[6] = 1 if cur == PROFILE_DVD_ROM else 0
        _pbe16(f, 8, PROFILE_CD_ROM)
        f[10] = 1 if cur == PROFILE_CD_ROM else 0
        feats.append((0, f))
        f = bytearray(12)  # core: ATAPI, version 2
        _pbe16(f, 0, 1)
        f[2] = 0x0B
        f[3] = 8
        _pbe32(f, 4, 2)
        f[8] = 1
        feats.append((1, f))
        f = bytearray(8)  # morphing: asynchronous event reporting by GESN polling
        _pbe16(f, 0, 2)
        f[2] = 0x07
        f[3] = 4
        feats.append((2, f))
        f = bytearray(8)  # removable medium: tray, eject, lock
        _pbe16(f, 0, 3)
        f[2] = 0x03
        f[3] = 4
        f[4] = 0x29 | (0x02 if self.locked else 0)
        feats.append((3, f))
        r = bytearray(8)
        _pbe16(r, 6, cur)
        for code, data in feats:
            if code < sfn:
                continue
            if rt == 1 and not data[2] & 1:
                continue
            r += data
            if rt == 2:
                break
        _pbe32(r, 0, len(r) - 4)
        self._reply(r, alloc)

    def _gesn(self, cdb):
        if not cdb[1] & 1:  # asynchronous notification is not offered
            self._fail(SK_ILLEGAL_REQUEST, ASC_INVALID_FIELD)
            return
        alloc = _be16(cdb, 7)
        if cdb[4] & 0x10:  # media class (MMC-3 6.6.2.4)
            r = bytearray(8)
            _pbe16(r, 0, 4)  # bytes after the 4-byte header (MMC-3 6.6.2.1)
            r[2] = 0x04
            r[3] = 0x10
            r[4] = self.event
            r[5] = 0x02 if self._blocks() else 0x00
            self.event = MEC_NO_CHANGE
        else:
            r = bytearray(4)
            r[2] = 0x80  # no event available
            r[3] = 0x10
        self._reply(r, alloc)

    def _disc_info(self, cdb):
        r = bytearray(34)
        _pbe16(r, 0, 32)
        r[2] = 0x0E  # complete disc, last session complete
        r[3] = 1
        r[4] = 1
        r[5] = 1
        r[6] = 1
        r[7] = 0x20  # unrestricted use
        self._reply(r, _be16(cdb, 7))

    def abort_transfer(self):
        super().abort_transfer()
        self.stream = None

    def state(self):
        d = super().state()
        d["sense"] = [self.sense_key, self.asc, self.ascq]
        d["locked"] = self.locked
        d["tray_open"] = self.tray_open
        d["event"] = self.event
        d["packet_dma"] = self.packet_dma
        d["stream"] = None if self.stream is None else list(self.stream)
        return d

    def load_state(self, d):
        super().load_state(d)
        sense = d["sense"]
        self.sense_key, self.asc, self.ascq = sense[0] & 0xF, sense[1] & 0xFF, sense[2] & 0xFF
        self.locked = bool(d["locked"])
        self.disk.locked = self.locked
        self.tray_open = bool(d["tray_open"])
        self.event = d["event"] & 0xFF
        self.packet_dma = bool(d["packet_dma"])
        st = d["stream"]
        if st is not None:
            if len(st) != 5 or [v for v in st if not isinstance(v, int) or v < 0] \
                    or st[3] > len(self.pio.buf):
                raise ValueError(self.name + ": saved data-in stream out of range")
            st = list(st)
        self.stream = st

    def _dma_restart(self, op, sector, nbytes, source):
        self._dma(op, sector, nbytes, self._dma_then, source)

    def _buffered(self):
        s = self.stream
        return 0 if s is None else min(s[3], len(self.pio.buf))
