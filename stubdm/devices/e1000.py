# Intel 82540EM Gigabit Ethernet (8086:100e), the e1000 that libxl offers as
# model=e1000, as Linux's e1000 driver drives it. Registers, descriptors and
# bits: PCI/PCI-X Family of Gigabit Ethernet Controllers Software Developer's
# Manual (8254x SDM): 13 (registers), 3.2 (receive), 3.3 (transmit), 3.5
# (TCP segmentation), 5 (EEPROM), 8 (PHY: the 82540EM's internal M88-style
# PHY, ID 0x01410C20 as Linux's e1000_phy.h names it).
#
# BAR0: 128 KiB of registers (MMIO); BAR1: 64 bytes of I/O, the IOADDR/IODATA
# window onto the same registers (SDM 13.2.4). The network (stubdm/net.py)
# and guest memory (all DMA) are handed in.
import struct

from stubdm import log
from stubdm.bus import fill_rep
from stubdm.compat import const
from stubdm.devices import netutil
from stubdm.net import MAX_FRAME, MIN_FRAME, TX_CSUM, TX_CSUM6, TX_TSO4, TX_TSO6, load_txq
from stubdm.pci import PciFunction

VENDOR_INTEL = const(0x8086)
DEVICE_82540EM = const(0x100E)
REVISION = const(0x03)
CLASS_ETHERNET = const(0x020000)
SUBSYS_VENDOR_QEMU = const(0x1AF4)
SUBSYS_ID_QEMU = const(0x1100)
MMIO_SIZE = const(0x20000)
IO_SIZE = const(0x40)

# Registers (SDM table 13-2), byte offsets.
CTRL = const(0x0000)
STATUS = const(0x0008)
EECD = const(0x0010)
EERD = const(0x0014)
CTRL_EXT = const(0x0018)
MDIC = const(0x0020)
ICR = const(0x00C0)
ITR = const(0x00C4)
ICS = const(0x00C8)
IMS = const(0x00D0)
IMC = const(0x00D8)
RCTL = const(0x0100)
TCTL = const(0x0400)
PBA = const(0x1000)
RDBAL = const(0x2800)
RDBAH = const(0x2804)
RDLEN = const(0x2808)
RDH = const(0x2810)
RDT = const(0x2818)
RDTR = const(0x2820)
TDBAL = const(0x3800)
TDBAH = const(0x3804)
TDLEN = const(0x3808)
TDH = const(0x3810)
TDT = const(0x3818)
STATS = const(0x4000)  # 0x4000-0x40ff, clear on read
STATS_END = const(0x4100)
RXCSUM = const(0x5000)
MTA = const(0x5200)  # 128 dwords
RA = const(0x5400)  # 16 pairs RAL/RAH
VFTA = const(0x5600)  # 128 dwords
VET = const(0x0038)

NREGS = const(MMIO_SIZE // 4)

# CTRL
CTRL_SLU = const(0x00000040)
CTRL_RST = const(0x04000000)
CTRL_VME = const(0x40000000)
CTRL_PHY_RST = const(0x80000000)
# STATUS: full duplex, link up, 1000 Mb/s, as the 82540EM reports a link
STATUS_FD = const(0x00000001)
STATUS_LU = const(0x00000002)
STATUS_SPEED_1000 = const(0x00000080)
STATUS_BASE = const(0x80080780)  # GIO master enable, ASDV 1000, MTXCKOK, speed 1000
# EECD (SDM 13.4.3)
EECD_SK = const(0x01)
EECD_CS = const(0x02)
EECD_DI = const(0x04)
EECD_DO = const(0x08)
EECD_REQ = const(0x40)
EECD_GNT = const(0x80)
EECD_PRES = const(0x100)
EECD_WRITABLE = const(0x37 | EECD_REQ)  # not DO: the EEPROM drives it
# EERD (SDM 13.4.4)
EERD_START = const(0x01)
EERD_DONE = const(0x10)
# MDIC (SDM 13.4.7)
MDIC_OP_WRITE = const(0x04000000)
MDIC_OP_READ = const(0x08000000)
MDIC_READY = const(0x10000000)
MDIC_INT_EN = const(0x20000000)
MDIC_ERROR = const(0x40000000)
PHY_ADDR = const(1)
# Interrupt causes (SDM 13.4.17)
ICR_TXDW = const(0x0001)
ICR_TXQE = const(0x0002)
ICR_LSC = const(0x0004)
ICR_RXSEQ = const(0x0008)
ICR_RXDMT0 = const(0x0010)
ICR_RXO = const(0x0040)
ICR_RXT0 = const(0x0080)
ICR_MDAC = const(0x0200)
ICR_TXD_LOW = const(0x8000)
ICR_MASK = const(0x0001F6DF)
# RCTL (SDM 13.4.22)
RCTL_EN = const(0x00000002)
RCTL_SBP = const(0x00000004)
RCTL_UPE = const(0x00000008)
RCTL_MPE = const(0x00000010)
RCTL_LPE = const(0x00000020)
RCTL_BAM = const(0x00008000)
RCTL_VFE = const(0x00040000)
RCTL_BSEX = const(0x02000000)
RCTL_SECRC = const(0x04000000)
# RXCSUM
RXCSUM_IPOFL = const(0x100)
RXCSUM_TUOFL = const(0x200)
# RX descriptor status and errors (SDM 3.2.3)
RXD_DD = const(0x01)
RXD_EOP = const(0x02)
RXD_IXSM = const(0x04)
RXD_VP = const(0x08)
RXD_TCPCS = const(0x20)
RXD_IPCS = const(0x40)
RXE_TCPE = const(0x20)
RXE_IPE = const(0x40)
# TCTL
TCTL_EN = const(0x00000002)
# TX descriptors (SDM 3.3.3-3.3.7)
TXD_EOP = const(0x01)  # command byte
TXD_IC = const(0x04)
TXD_RS = const(0x08)
TXD_RPS = const(0x10)
TXD_DEXT = const(0x20)
TXD_VLE = const(0x40)
TXD_TSE = const(0x04)  # DCMD / TUCMD
TUCMD_TCP = const(0x01)
TUCMD_IP = const(0x02)
POPTS_IXSM = const(0x01)
POPTS_TXSM = const(0x02)
TXD_STAT_DD = const(0x01)

MAX_TX_FRAME = const(16384)  # the TX FIFO: the largest frame without TSO
TSO_MAX = const(0x10000)  # a TSO payload is one IP datagram's at most
TSO_MAX_SEGS = const(128)
# Work one doorbell may do: descriptors and bytes gathered. What is left is
# taken up at the driver's next register access (its interrupt handler's ICR
# read follows at once), so a hostile ring costs bounded time per request.
TX_DESC_BUDGET = const(1024)
TX_BYTE_BUDGET = const(4 << 20)
TX_FETCH = const(64)  # TX descriptors fetched in one guest-memory read
RX_FETCH = const(64)  # RX descriptors fetched in one guest-memory read
RX_MAX_FRAME = const(16384)

# PHY registers (M88E1011 as the 82540EM's: SDM 8, Linux e1000_hw.h).
PHY_CTRL = const(0)
PHY_STATUS = const(1)
PHY_ID1 = const(2)
PHY_ID2 = const(3)
PHY_AUTONEG_ADV = const(4)
PHY_LP_ABILITY = const(5)
PHY_1000T_CTRL = const(9)
PHY_1000T_STATUS = const(10)
PHY_SPEC_CTRL = const(0x10)
PHY_SPEC_STATUS = const(0x11)
MII_CR_RESET = const(0x8000)
MII_CR_RESTART_AN = const(0x0200)
MII_SR_LINK = const(0x0004)
MII_SR_AN_DONE = const(0x0020)
PHY_STATUS_BASE = const(0x7949)
PHY_SPEC_STATUS_UP = const(0xAC00)  # 1000 Mb/s, full duplex, resolved, link
# Registers a PHY has (the rest answer MDIC with the error bit) and their writable bits.
_PHY_REGS = (
    (PHY_CTRL, 0x1140, 0xFDFF), (PHY_STATUS, PHY_STATUS_BASE, 0), (PHY_ID1, 0x0141, 0),
    (PHY_ID2, 0x0C20, 0), (PHY_AUTONEG_ADV, 0x0DE1, 0xFFFF), (PHY_LP_ABILITY, 0, 0),
    (6, 0x0001, 0), (7, 0x2801, 0xFFFF), (8, 0, 0), (PHY_1000T_CTRL, 0x0E00, 0xFFFF),
    (PHY_1000T_STATUS, 0, 0), (15, 0x3000, 0), (PHY_SPEC_CTRL, 0x0360, 0xFFFF),
    (PHY_SPEC_STATUS, 0, 0), (0x12, 0, 0xFFFF), (0x13, 0, 0), (0x14, 0x0D60, 0xFFFF),
    (0x15, 0, 0), (0x16, 0, 0xFFFF), (0x18, 0, 0xFFFF), (0x19, 0, 0xFFFF), (0x1A, 0, 0xFFFF),
    (0x1D, 0, 0xFFFF), (0x1E, 0, 0xFFFF),
)

# Registers the guest writes as plain storage (reads give back what it wrote),
# as (first, count) in dwords, with a mask of writable bits.
_PLAIN = (
    (CTRL_EXT, 1, 0xFFFFFFFF), (0x0028, 3, 0xFFFFFFFF), (VET, 1, 0xFFFF),
    (0x0170, 1, 0xFFFF), (0x0178, 1, 0xFFFFFFFF), (0x0410, 1, 0x3FFFFFFF),
    (0x0458, 1, 0xFFFFFFFF), (0x0E00, 1, 0xFFFFFFFF), (PBA, 1, 0xFFFF),
    (0x2160, 1, 0x8000FFF8), (0x2168, 1, 0xFFF8),
    (RDBAL, 1, 0xFFFFFFF0), (RDBAH, 1, 0xFFFFFFFF), (RDLEN, 1, 0xFFF80), (RDTR, 1, 0xFFFF),
    (0x2828, 2, 0xFFFFFFFF), (0x282C, 1, 0xFFFF), (0x2C00, 1, 0xFFF),
    (TDBAL, 1, 0xFFFFFFF0), (TDBAH, 1, 0xFFFFFFFF), (TDLEN, 1, 0xFFF80), (0x3820, 1, 0xFFFF),
    (0x3828, 1, 0xFFFFFFFF), (0x382C, 1, 0xFFFF), (0x3830, 1, 0xFFFFFFFF),
    (RXCSUM, 1, 0x7FF), (MTA, 128, 0xFFFFFFFF), (RA, 32, 0xFFFFFFFF), (VFTA, 128, 0xFFFFFFFF),
    (0x5800, 1, 0x1F), (0x5808, 1, 0xFFFFFFFF), (0x5820, 1, 0xFFFFFFFF), (ITR, 1, 0xFFFF),
)
# Statistics this model counts (SDM 13.7), dword offsets from STATS.
ST_MPC = const(0x10 // 4)
ST_GPRC = const(0x74 // 4)
ST_BPRC = const(0x78 // 4)
ST_MPRC = const(0x7C // 4)
ST_GPTC = const(0x80 // 4)
ST_GORCL = const(0x88 // 4)
ST_GOTCL = const(0x90 // 4)
ST_RNBC = const(0xA0 // 4)
ST_TORL = const(0xC0 // 4)
ST_TOTL = const(0xC8 // 4)
ST_TPR = const(0xD0 // 4)
ST_TPT = const(0xD4 // 4)
ST_BPTC = const(0xF4 // 4)
ST_MPTC = const(0xF0 // 4)
ST_ROC = const(0xAC // 4)
_STAT64_LOW = (0x4088, 0x4090, 0x40C0, 0x40C8)
_STAT64_HIGH = (0x408C, 0x4094, 0x40C4, 0x40CC)


def _le(buf, off, n):
    v = 0
    for i in range(n):
        v |= buf[off + i] << (8 * i)
    return v


def eeprom_image(mac):
    """The 82540EM's 64-word EEPROM (SDM 5.6): MAC in words 0-2, IDs, the
    init control words, and word 0x3f making the sum 0xBABA."""
    w = [0xFFFF] * 64
    w[0] = mac[0] | (mac[1] << 8)
    w[1] = mac[2] | (mac[3] << 8)
    w[2] = mac[4] | (mac[5] << 8)
    w[3] = 0x0000
    w[4] = 0xFFFF  # LED settings: the defaults
    w[5] = 0x0000
    w[6] = 0x0000
    w[7] = 0x0000
    w[8] = 0x3000
    w[9] = 0x1000
    w[0x0A] = 0x6403  # init control 1
    w[0x0B] = DEVICE_82540EM  # subsystem ID
    w[0x0C] = VENDOR_INTEL  # subsystem vendor
    w[0x0D] = DEVICE_82540EM
    w[0x0E] = VENDOR_INTEL
    w[0x0F] = 0x3040  # init control 2: pause capabilities
    w[0x10] = 0x0008
    w[0x11] = 0x2000
    w[0x12] = 0x7E14
    w[0x13] = 0x0048
    w[0x14] = 0x1000
    w[0x15] = 0x00D8
    w[0x16] = 0x0000
    w[0x17] = 0x2700
    w[0x18] = 0x6CC9
    w[0x19] = 0x3150
    w[0x1A] = 0x0722
    w[0x1B] = 0x040B
    w[0x1C] = 0x0984
    w[0x1D] = 0x0000
    w[0x1E] = 0xC000
    w[0x1F] = 0x0706
    w[0x20] = 0x1008
    w[0x21] = 0x0000
    w[0x22] = 0x0F04
    w[0x23] = 0x7FFF
    w[0x24] = 0x4D01  # init control 3 (port A)
    w[0x30] = 0x0100
    w[0x31] = 0x4000
    w[0x32] = 0x121C
    s = 0
    for i in range(63):
        s += w[i]
    w[63] = (0xBABA - s) & 0xFFFF
    return w


class _Regs:
    """The plain registers by dword index, 0 unless written: sparse, because
    a stub domain's heap has no room to spare for 128 KiB of mostly nothing."""

    def __init__(self):
        self.d = {}

    def __getitem__(self, i):
        return self.d.get(i, 0)

    def __setitem__(self, i, v):
        if v:
            self.d[i] = v & 0xFFFFFFFF
        else:
            self.d.pop(i, None)


class _IoWindow:
    """BAR1: IOADDR at 0 picks a register, IODATA at 4 reads or writes it
    (SDM 13.2.4; other offsets are reserved: they read as 0)."""

    def __init__(self, nic):
        self.nic = nic
        self.ioaddr = 0

    def read(self, offset, size):
        if offset == 0 and size == 4:
            return self.ioaddr
        if offset == 4 and size == 4:
            return self.nic.reg_read(self.ioaddr & 0x1FFFC)
        return 0

    def write(self, offset, size, value):
        if offset == 0 and size == 4:
            self.ioaddr = value & 0x1FFFF
        elif offset == 4 and size == 4:
            self.nic.reg_write(self.ioaddr & 0x1FFFC, value)
        else:
            log.guest_error(self.nic.name, "I/O BAR write of %d bytes at %#x" % (size, offset))

    # Whole reps (stubdm/bus.py): IOADDR latches; IODATA is a register
    # access each time (reads may clear, writes may start work): one by one.

    def read_rep(self, offset, size, count, buf):
        if offset == 4 and size == 4:
            return False
        fill_rep(buf, self.read(offset, size), size, count)  # no effect
        return True

    def write_rep(self, offset, size, count, buf):
        if offset == 4 and size == 4:
            return False
        if offset == 0 and size == 4:
            self.write(0, 4, int.from_bytes(buf[count * 4 - 4 : count * 4], "little"))
        else:
            log.guest_error(self.nic.name, "I/O BAR: %d writes of %d bytes at %#x"
                            % (count, size, offset))
        return True


class E1000(PciFunction):
    """An 82540EM on the PCI bus: `net` its stubdm.net network, `mem` guest memory."""

    def __init__(self, net, mem, mac=None, name="e1000", clock=None):
        super().__init__(name, VENDOR_INTEL, DEVICE_82540EM, CLASS_ETHERNET, revision=REVISION,
                         subsys_vendor=SUBSYS_VENDOR_QEMU, subsys_id=SUBSYS_ID_QEMU, irq_pin=1)
        self.net = net
        self.mem = mem
        mac = bytes(mac or net.mac or b"\x52\x54\x00\x12\x34\x56")
        if len(mac) != 6:
            raise ValueError("a MAC is 6 bytes")
        self.mac = mac
        self.eeprom = netutil.Eeprom93c46(eeprom_image(mac))
        self.clock = clock  # ticks in us for ITR; None: no throttling (QEMU's mitigation=off)
        self.r = None
        self._deferred = None  # when a throttled interrupt may be raised
        self._last_irq = 0
        # A burst of frames from a network that says where bursts end
        # (net.rx_batches): the interrupt is raised at its end (or at the
        # guest's next register access).
        self._rx_batch = bool(getattr(net, "rx_batches", False))
        self._irq_held = False
        self.reg_wmask = {}
        for first, count, mask in _PLAIN:
            for i in range(count):
                self.reg_wmask[first // 4 + i] = mask
        self.phy = {}
        self.phy_wmask = {}
        for reg, _v, m in _PHY_REGS:
            self.phy_wmask[reg] = m
        self.io = _IoWindow(self)
        self.add_bar(0, MMIO_SIZE, "mem", self)
        self.add_bar(1, IO_SIZE, "io", self.io)
        self.txq = []
        self.rx_paused = False
        if self._rx_batch:
            net.on_rx_done = self._rx_flush
        net.set_receiver(self.receive)
        net.on_tx_room = self.tx_room
        net.on_link = self.link_changed
        self.hw_reset()

    @property
    def net_offload(self):
        """What the network finishes for us (stubdm/net.py's tx_offload)."""
        return getattr(self.net, "tx_offload", 0)

    # ---- reset -----------------------------------------------------------------

    def reset(self):
        super().reset()
        self.hw_reset()

    def hw_reset(self):
        self.r = r = _Regs()
        self.st = [0] * 64  # statistics, dwords from STATS; 64-bit ones whole
        r[PBA // 4] = 0x00100030  # 48 KiB RX, 16 KiB TX
        r[0x0410 // 4] = 0x00602008  # TIPG
        r[0x0E00 // 4] = 0x07068302  # LEDCTL
        r[VET // 4] = 0x8100
        r[RXCSUM // 4] = 0x300  # IP and TCP/UDP checksum offload
        # RAL0/RAH0 come from the EEPROM at reset (SDM 5.6.1), address valid.
        m = self.mac
        r[RA // 4] = m[0] | (m[1] << 8) | (m[2] << 16) | (m[3] << 24)
        r[RA // 4 + 1] = m[4] | (m[5] << 8) | 0x80000000
        self._update_ucast()
        self.ctrl = 0x00000240  # SLU, speed 1000 (ASDE off)
        self.eecd = EECD_PRES | EECD_GNT  # granted: firmware-free part
        self.icr = 0
        self.ims = 0
        self.rctl = 0
        self.tctl = 0
        self.rdh = 0
        self.rdt = 0
        self._rxc = None  # prefetched RX descriptors: (ring index of the first, bytes)
        self.tdh = 0
        self.tdt = 0
        self.eerd = 0
        self.mdic = 0
        self.ctx = [0] * 12  # TX context: ipcss ipcso ipcse tucss tucso tucse paylen
        #                       tucmd hdrlen mss valid (one for checksums and TSO)
        self.tx_pkt = []  # data of the packet being gathered
        self.tx_len = 0
        self.tx_tso = False
        self.tx_popts = 0
        self.tx_vlan = -1
        self.tx_legacy_cs = None
        self.tx_drop = False
        self.tx_more = False
        self.tx_bytes_done = 0
        self.txq = []
        self.phy_reset()
        self._irq_held = False
        self._update_irq()
        if self.rx_paused:
            self.rx_paused = False
            self.net.rx_resume()

    def phy_reset(self):
        for reg, v, _m in _PHY_REGS:
            self.phy[reg] = v
        self._phy_link()

    def _phy_link(self):
        up = self.net.link_up
        st = PHY_STATUS_BASE | (MII_SR_LINK | MII_SR_AN_DONE if up else 0)
        self.phy[PHY_STATUS] = st
        self.phy[PHY_LP_ABILITY] = 0x45E0 if up else 0
        self.phy[PHY_1000T_STATUS] = 0x3C00 if up else 0
        self.phy[PHY_SPEC_STATUS] = PHY_SPEC_STATUS_UP if up else 0x8800

    def _status(self):
        v = STATUS_BASE | STATUS_FD
        if self.net.link_up and self.ctrl & CTRL_SLU:
            v |= STATUS_LU
        return v

    def link_changed(self):
        self._phy_link()
        self._cause(ICR_LSC)

    # ---- interrupts -----------------------------------------------------------

    def _cause(self, bits):
        self.icr |= bits
        self._update_irq()

    def _update_irq(self):
        level = 1 if self.icr & self.ims else 0
        if level and not self._irq_level and self.clock is not None:
            # ITR (SDM 13.4.18): at least ITR x 256 ns between interrupts.
            gap = (self.r[ITR // 4] & 0xFFFF) * 256 // 1000
            now = self.clock()
            if gap and now - self._last_irq < gap:
                self._deferred = self._last_irq + gap
                return
            self._last_irq = now
        self._deferred = None
        self.set_irq(level)

    def timer_deadline(self):
        """When run_timers() has work (a throttled interrupt), or None."""
        return self._deferred

    def run_timers(self, now):
        if self._deferred is not None and now - self._deferred >= 0:
            self._deferred = None
            self._update_irq()

    def _rx_flush(self):
        """A burst's end: the interrupt its frames raise."""
        if self._irq_held:
            self._irq_held = False
            self._update_irq()

    # ---- MMIO (BAR0) -----------------------------------------------------------

    def read(self, offset, size):
        # Registers are 32 bits wide; narrower reads see their part of the dword.
        base = offset & ~3
        v = self.reg_read(base)
        if size == 8:
            v |= self.reg_read(base + 4) << 32
        return (v >> (8 * (offset & 3))) & ((1 << (8 * size)) - 1)

    def write(self, offset, size, value):
        if size == 4 and not offset & 3:
            self.reg_write(offset, value)
            return
        if size == 8 and not offset & 7:
            self.reg_write(offset, value & 0xFFFFFFFF)
            self.reg_write(offset + 4, value >> 32)
            return
        # The 8254x takes dword accesses only (SDM 13.1): merge, as QEMU's
        # memory core does for its 4-byte-only e1000 registers.
        log.guest_error(self.name, "%d-byte register write at %#x" % (size, offset))
        base = offset & ~3
        if (offset & 3) + size > 4:
            return
        shift = 8 * (offset & 3)
        mask = ((1 << (8 * size)) - 1) << shift
        old = self.reg_peek(base)
        self.reg_write(base, (old & ~mask) | ((value << shift) & mask))

    def reg_peek(self, off):
        """A register's value without read side effects (clear-on-read)."""
        if off == ICR:
            return self.icr
        if STATS <= off < STATS_END:
            j = (off - STATS) // 4
            if off in _STAT64_HIGH:
                return self.st[j - 1] >> 32 & 0xFFFFFFFF
            return self.st[j] & 0xFFFFFFFF
        return self.reg_read(off)

    def reg_read(self, off):
        if off < 0 or off >= MMIO_SIZE:
            return 0
        if self._irq_held:
            self._rx_flush()
        if self.tx_more:
            self._transmit()
        if off == CTRL:
            return self.ctrl
        if off == STATUS:
            return self._status()
        if off == EECD:
            v = self.eecd
            if self.eecd & EECD_CS and self.eeprom.do:
                v |= EECD_DO
            return v
        if off == EERD:
            return self.eerd
        if off == MDIC:
            return self.mdic
        if off == ICR:
            v = self.icr
            self.icr = 0  # read clears (SDM 13.4.17)
            self._update_irq()
            return v
        if off == IMS:
            return self.ims
        if off == RCTL:
            return self.rctl
        if off == TCTL:
            return self.tctl
        if off == RDH:
            return self.rdh
        if off == RDT:
            return self.rdt
        if off == TDH:
            return self.tdh
        if off == TDT:
            return self.tdt
        if STATS <= off < STATS_END:
            # Clear on read; a 64-bit pair (kept whole at its low half) clears
            # with its high half.
            st = self.st
            j = (off - STATS) // 4
            if off in _STAT64_LOW:
                return st[j] & 0xFFFFFFFF
            if off in _STAT64_HIGH:
                v = st[j - 1] >> 32 & 0xFFFFFFFF
                st[j - 1] = 0
                return v
            v = st[j] & 0xFFFFFFFF
            st[j] = 0
            return v
        return self.r[off // 4]

    def reg_write(self, off, v):
        if off < 0 or off >= MMIO_SIZE:
            return
        if self._irq_held:
            self._rx_flush()
        if self.tx_more:
            self._transmit()
        v &= 0xFFFFFFFF
        i = off // 4
        m = self.reg_wmask.get(i)
        if m is not None:
            self.r[i] = v & m
            if off == RDLEN or off == RDBAL or off == RDBAH:
                self._rxc = None
                self._resume_rx()
            elif RA <= off < RA + 128:
                self._update_ucast()
            return
        if off == CTRL:
            self._ctrl_write(v)
        elif off == EECD:
            self._eecd_write(v)
        elif off == EERD:
            self._eerd_write(v)
        elif off == MDIC:
            self._mdic_write(v)
        elif off == ICR:
            self.icr &= ~v
            self._update_irq()
        elif off == ICS:
            self._cause(v & ICR_MASK)
        elif off == IMS:
            self.ims |= v & ICR_MASK
            self._update_irq()
        elif off == IMC:
            self.ims &= ~v
            self._update_irq()
        elif off == RCTL:
            was = self.rctl
            self.rctl = v & 0x07FFFFFE
            if self.rctl & RCTL_EN and not was & RCTL_EN:
                self._resume_rx()
        elif off == TCTL:
            self.tctl = v & 0x03FFFFFA
            if self.tctl & TCTL_EN:
                self._transmit()
        elif off == RDH:
            self.rdh = v & 0xFFFF
            self._rxc = None
        elif off == RDT:
            self.rdt = v & 0xFFFF
            self._rxc_check()
            self._resume_rx()
        elif off == TDH:
            self.tdh = v & 0xFFFF
        elif off == TDT:
            self.tdt = v & 0xFFFF
            self._transmit()
        elif STATS <= off < STATS_END:
            pass  # read-only counters
        elif off == STATUS:
            pass  # read-only
        else:
            log.guest_error(self.name, "write of %#x to register %#x (read-only or absent)"
                            % (v, off))

    def _ctrl_write(self, v):
        if v & CTRL_RST:
            self.hw_reset()  # self-clearing; the whole MAC returns to power-on
            return
        if v & CTRL_PHY_RST:
            self.phy_reset()
        old = self.ctrl
        self.ctrl = v & ~(CTRL_RST | CTRL_PHY_RST | 0x8) & 0xFFFFFFFF  # LRST self-clears
        if (old ^ self.ctrl) & CTRL_SLU:
            self._cause(ICR_LSC)

    def _eecd_write(self, v):
        # The EEPROM's pins are the driver's while it holds the grant (REQ);
        # GNT answers REQ at once: no on-chip client competes here.
        self.eecd = (v & EECD_WRITABLE) | EECD_PRES | EECD_GNT
        self.eeprom.pins(v & EECD_CS, v & EECD_SK, v & EECD_DI)

    def _eerd_write(self, v):
        # SDM 13.4.4: START, the word address in bits 15-8; DONE and the data
        # in bits 31-16 come back.
        if not v & EERD_START:
            self.eerd = v & 0xFF00
            return
        addr = (v >> 8) & 0xFF
        if addr >= 64:
            log.guest_error(self.name, "EERD read of word %d of 64" % addr)
            self.eerd = (addr << 8) | EERD_DONE | (0xFFFF << 16)
            return
        self.eerd = (addr << 8) | EERD_DONE | (self.eeprom.words[addr] << 16)

    def _mdic_write(self, v):
        data = v & 0xFFFF
        reg = (v >> 16) & 0x1F
        phy = (v >> 21) & 0x1F
        op = v & 0x0C000000
        out = v & ~(MDIC_READY | MDIC_ERROR) & 0xFFFFFFFF
        if phy != PHY_ADDR or reg not in self.phy or op not in (MDIC_OP_READ, MDIC_OP_WRITE):
            out |= MDIC_ERROR
        elif op == MDIC_OP_READ:
            out = (out & ~0xFFFF) | self.phy[reg]
        else:
            self._phy_write(reg, data)
        self.mdic = out | MDIC_READY
        if v & MDIC_INT_EN:
            self._cause(ICR_MDAC)

    def _phy_write(self, reg, data):
        m = self.phy_wmask.get(reg, 0)
        self.phy[reg] = (self.phy[reg] & ~m) | (data & m)
        if reg == PHY_CTRL:
            if data & MII_CR_RESET:
                self.phy_reset()
            elif data & MII_CR_RESTART_AN:
                # Autonegotiation completes at once with the link partner
                # (the backend): report the (re)established link.
                self._phy_link()
                self._cause(ICR_LSC)
            self.phy[PHY_CTRL] &= ~(MII_CR_RESET | MII_CR_RESTART_AN)

    # ---- receive -----------------------------------------------------------------

    def _resume_rx(self):
        if self.rx_paused:
            self.rx_paused = False
            self.net.rx_resume()

    def _rxc_check(self):
        """Keep the prefetched descriptors only while all that are left of them
        are still the hardware's (between RDH and RDT): a tail moved back gives
        them to the driver, which may rewrite them."""
        c = self._rxc
        if c is None:
            return
        count = self.r[RDLEN // 4] // 16
        left = c[0] + len(c[1]) // 16 - self.rdh
        if count == 0 or left < 0 or left > (self.rdt - self.rdh) % count:
            self._rxc = None

    def _rx_desc(self, base, count):
        """The RX descriptor at RDH (16 bytes), or None if it is not guest RAM.
        As the 82540EM prefetches, a run up to RDT or the ring's end (at most
        RX_FETCH) is read in one guest-memory read and used frame by frame;
        one at a time if the run is not all RAM, so the bad one is found."""
        h = self.rdh
        c = self._rxc
        if c is not None:
            i = (h - c[0]) * 16
            if 0 <= i < len(c[1]):
                return c[1][i:i + 16]
        self._rxc = None
        k = min((self.rdt - h) % count, count - h, RX_FETCH)
        if k > 1:
            run = self.mem.read(base + 16 * h, 16 * k)
            if run is not None:
                self._rxc = (h, memoryview(run))
                return self._rxc[1][0:16]
        return self.mem.read(base + 16 * h, 16)

    def _rx_ring(self):
        """(base, descriptors) of a usable RX ring, or None (a guest error)."""
        count = self.r[RDLEN // 4] // 16
        if count == 0:
            return None
        if self.rdh >= count or self.rdt >= count:
            log.guest_error(self.name, "RX ring head %d / tail %d outside its %d descriptors"
                            % (self.rdh, self.rdt, count))
            return None
        return (self.r[RDBAL // 4] | (self.r[RDBAH // 4] << 32)), count

    def _bufsize(self):
        code = (self.rctl >> 16) & 3
        size = 2048 >> code
        if self.rctl & RCTL_BSEX and code:
            size <<= 4
        return size

    def _filter(self, frame):
        """SDM 3.2.1: (accept, is broadcast, is multicast)."""
        rctl = self.rctl
        d0 = frame[0]
        if d0 & 1:
            if bytes(frame[0:6]) == b"\xff\xff\xff\xff\xff\xff":
                return bool(rctl & (RCTL_BAM | RCTL_MPE)), True, False
            if rctl & RCTL_MPE:
                return True, False, True
            shift = (4, 3, 2, 0)[(rctl >> 12) & 3]
            h = (((frame[5] << 8) | frame[4]) >> shift) & 0xFFF
            return bool(self.r[MTA // 4 + (h >> 5)] & (1 << (h & 31))), False, True
        if rctl & RCTL_UPE:
            return True, False, False
        return bytes(frame[0:6]) in self._ucast, False, False

    def _update_ucast(self):
        """The valid RAL/RAH pairs as addresses (RAH bit 31: address valid)."""
        r = self.r
        out = []
        for i in range(16):
            rah = r[RA // 4 + 2 * i + 1]
            if rah & 0x80000000:
                out.append(struct.pack("<IH", r[RA // 4 + 2 * i], rah & 0xFFFF))
        self._ucast = out

    def receive(self, frame):
        """A frame from the network; False: no descriptors now (the net keeps it)."""
        n = len(frame)
        if not self.rctl & RCTL_EN or n < MIN_FRAME:
            return True
        ok, bcast, mcast = self._filter(frame)
        if not ok:
            return True
        vlan = None
        vet = self.r[VET // 4] & 0xFFFF
        if n >= 18 and ((frame[12] << 8) | frame[13]) == vet:
            tci = (frame[14] << 8) | frame[15]
            if self.rctl & RCTL_VFE and \
                    not self.r[VFTA // 4 + ((tci >> 5) & 0x7F)] & (1 << (tci & 31)):
                return True
            if self.ctrl & CTRL_VME:
                vlan = tci
        if n > 1518 and not self.rctl & RCTL_LPE or n > RX_MAX_FRAME:
            self.st[ST_ROC] += 1  # oversized
            return True
        ring = self._rx_ring()
        if ring is None:
            self.rx_paused = True
            return False
        base, count = ring
        bufsize = self._bufsize()
        need = (n + (-4 if vlan is not None else 0) + (0 if self.rctl & RCTL_SECRC else 4)
                + bufsize - 1) // bufsize
        free = (self.rdt - self.rdh) % count
        if need > free:
            # No room in the ring: the frame waits in the network (the FIFO
            # would hold it) until the driver moves RDT.
            if not self.rx_paused:
                self.st[ST_RNBC] += 1
                self._cause(ICR_RXO if free == 0 else ICR_RXDMT0)
            self.rx_paused = True
            return False
        # The frame's bytes built once. Unless RCTL.SECRC strips it, its CRC
        # follows it in the buffer (Linux's e1000 drops 4 bytes); the wire here
        # carries none, so it is the zeros bytearray() starts with.
        crc = 0 if self.rctl & RCTL_SECRC else 4
        if vlan is not None:
            data = bytearray(n - 4 + crc)
            data[0:12] = frame[0:12]
            data[12:n - 4] = frame[16:]
        else:
            data = bytearray(n + crc)
            data[0:n] = frame
        mv = memoryview(data)
        csum_status, csum_err = self._rx_csum(data)
        pos = 0
        total = len(data)
        descs = 0
        while descs < need:
            addr = base + 16 * self.rdh
            d = self._rx_desc(base, count)
            if d is None:
                log.guest_error(self.name, "RX descriptor at %#x is not guest RAM" % addr)
                self.rx_paused = True
                return False
            buf = struct.unpack_from("<Q", d, 0)[0]
            take = min(bufsize, total - pos)
            if buf and take and not self.mem.write(buf, mv[pos : pos + take]):
                log.guest_error(self.name, "RX buffer at %#x is not guest RAM" % buf)
            if pos + take >= total:  # the last: EOP, checksum and VLAN fields
                wb = struct.pack("<HHBBH", take, 0, RXD_DD | RXD_EOP | csum_status |
                                 (RXD_VP if vlan is not None else 0), csum_err,
                                 vlan if vlan is not None else 0)
            else:
                wb = struct.pack("<HHBBH", take, 0, RXD_DD, 0, 0)
            self.mem.write(addr + 8, wb)
            pos += take
            descs += 1
            self.rdh = (self.rdh + 1) % count
        s = self.st
        s[ST_GPRC] += 1
        s[ST_TPR] += 1
        if bcast:
            s[ST_BPRC] += 1
        if mcast:
            s[ST_MPRC] += 1
        s[ST_GORCL] += n + 4
        s[ST_TORL] += n + 4
        cause = ICR_RXT0
        free = (self.rdt - self.rdh) % count
        if free <= count >> (((self.rctl >> 8) & 3) + 1):
            cause |= ICR_RXDMT0
        self.icr |= cause
        if self._rx_batch:
            self._irq_held = True  # raised at the burst's end (_rx_flush)
        else:
            self._update_irq()
        return True

    def _rx_csum(self, frame):
        """RX checksum offload (SDM 3.2.9): status and error bits."""
        rxcsum = self.r[RXCSUM // 4]
        if not rxcsum & (RXCSUM_IPOFL | RXCSUM_TUOFL):
            return RXD_IXSM, 0
        h = netutil.parse(frame)
        if h is None:
            return RXD_IXSM, 0
        st = 0
        err = 0
        if h.v4 and rxcsum & RXCSUM_IPOFL:
            st |= RXD_IPCS
            if netutil.ones_sum(frame, h.ip, h.l4) != 0xFFFF:
                err |= RXE_IPE
        co = netutil.csum_offset(h.proto)
        if rxcsum & RXCSUM_TUOFL and co >= 0 and h.l4 + co + 2 <= h.l4_end:
            if h.proto == netutil.IPPROTO_UDP and netutil.get16(frame, h.l4 + 6) == 0:
                return st, err
            st |= RXD_TCPCS
            s = netutil.l4_sum(frame, h)
            if s != 0xFFFF:
                err |= RXE_TCPE
        return st, err

    # ---- transmit ------------------------------------------------------------------

    def tx_room(self):
        q = self.txq
        while q:
            e = q[0]
            if isinstance(e, tuple):  # (frame, offload, mss)
                if not self.net.transmit(e[0], e[1], e[2]):
                    return
            elif not self.net.transmit(e):
                return
            q.pop(0)
        self._transmit()

    def _send(self, frame, offload=0, mss=0, segs=1, hdr=0):
        """A frame to the network; offload/mss: one the network finishes
        (stubdm/net.py), segs frames of hdr header bytes each on the wire."""
        n = len(frame)
        if n < MIN_FRAME or n > MAX_FRAME:
            log.guest_error(self.name, "TX frame of %d bytes dropped" % n)
            return
        s = self.st
        wire = n + (segs - 1) * hdr + 4 * segs
        s[ST_GPTC] += segs
        s[ST_TPT] += segs
        s[ST_GOTCL] += wire
        s[ST_TOTL] += wire
        if frame[0] & 1:
            s[ST_BPTC if bytes(frame[0:6]) == b"\xff\xff\xff\xff\xff\xff" else ST_MPTC] += segs
        if offload:
            if not self.txq and self.net.transmit(frame, offload, mss):
                return
            self.txq.append((bytes(frame), offload, mss))
            return
        if not self.txq and self.net.transmit(frame):
            return
        self.txq.append(bytes(frame))

    def _transmit(self):
        """Process TX descriptors from TDH to TDT: at most one lap of the ring
        per call, and none while frames wait for the network (the FIFO is full)."""
        if not self.tctl & TCTL_EN:
            return
        count = self.r[TDLEN // 4] // 16
        if count == 0 or self.tdh == self.tdt:
            return
        if self.tdh >= count or self.tdt >= count:
            log.guest_error(self.name, "TX ring head %d / tail %d outside its %d descriptors"
                            % (self.tdh, self.tdt, count))
            return
        base = self.r[TDBAL // 4] | (self.r[TDBAH // 4] << 32)
        cause = 0
        self.tx_more = False
        budget = self.tx_bytes_done + TX_BYTE_BUDGET
        # Descriptors are fetched ahead in runs (as the 82540EM prefetches
        # them), up to TDT or the ring's end: one guest-memory read per run.
        run = None
        at = 0
        for _ in range(min(count, TX_DESC_BUDGET)):
            if self.tdh == self.tdt or self.txq:
                break
            if self.tx_bytes_done >= budget:
                self.tx_more = True
                break
            addr = base + 16 * self.tdh
            if run is None or at >= len(run):
                k = min((self.tdt - self.tdh) % count, count - self.tdh, TX_FETCH)
                run = self.mem.read(addr, 16 * k) if k > 1 else None
                if run is None:  # one at a time finds the descriptor outside RAM
                    run = self.mem.read(addr, 16)
                    if run is None:
                        log.guest_error(self.name, "TX descriptor at %#x is not guest RAM"
                                        % addr)
                        return  # the ring waits for the driver's next doorbell
                run = memoryview(run)
                at = 0
            d = run[at:at + 16]
            at += 16
            cmd = self._tx_desc(d)
            if cmd & (TXD_RS | TXD_RPS):
                st = bytearray(1)
                st[0] = (d[12] & 0xF0) | TXD_STAT_DD
                self.mem.write(addr + 12, st)
                cause |= ICR_TXDW
            self.tdh = (self.tdh + 1) % count
        if self.tdh == self.tdt:
            cause |= ICR_TXQE
        elif not self.txq:
            self.tx_more = True  # a lap's worth done: the rest at the next access
        if cause:
            self._cause(cause)

    def _tx_desc(self, d):
        """One descriptor; returns its command byte (for RS)."""
        lower, upper = struct.unpack_from("<II", d, 8)
        if lower & (TXD_DEXT << 24):
            dtyp = (lower >> 20) & 0xF
            if dtyp == 0:  # context descriptor (SDM 3.3.6)
                c = self.ctx
                c[0] = d[0]  # IPCSS
                c[1] = d[1]  # IPCSO
                c[2] = _le(d, 2, 2)  # IPCSE
                c[3] = d[4]  # TUCSS
                c[4] = d[5]  # TUCSO
                c[5] = _le(d, 6, 2)  # TUCSE
                c[6] = lower & 0xFFFFF  # PAYLEN
                c[7] = lower >> 24  # TUCMD
                c[8] = (upper >> 8) & 0xFF  # HDRLEN
                c[9] = upper >> 16  # MSS
                c[10] = 1
                return lower >> 24
            if dtyp != 1:
                log.guest_error(self.name, "TX descriptor type %d" % dtyp)
                return lower >> 24
            cmd = lower >> 24
            length = lower & 0xFFFFF
            if not self.tx_pkt and not self.tx_drop and self.tx_len == 0:
                self.tx_tso = bool(cmd & TXD_TSE)
                self.tx_popts = (upper >> 8) & 0xFF
            vle = cmd & TXD_VLE
        else:  # legacy (SDM 3.3.3)
            cmd = (lower >> 24) & 0xFF
            length = lower & 0xFFFF
            if not self.tx_pkt and not self.tx_drop and self.tx_len == 0:
                self.tx_tso = False
                self.tx_popts = 0
                self.tx_legacy_cs = (d[10], d[13]) if cmd & TXD_IC else None  # CSO, CSS
            vle = cmd & TXD_VLE
        if vle and cmd & TXD_EOP:
            self.tx_vlan = upper >> 16
        buf = struct.unpack_from("<Q", d, 0)[0]
        limit = (TSO_MAX + 256) if self.tx_tso else MAX_TX_FRAME
        if length and not self.tx_drop:
            if self.tx_len + length > limit:
                log.guest_error(self.name, "TX packet over %d bytes dropped" % limit)
                self.tx_drop = True
            else:
                data = self.mem.read(buf, length)
                if data is None:
                    log.guest_error(self.name, "TX buffer %#x+%d is not guest RAM"
                                    % (buf, length))
                    self.tx_drop = True
                else:
                    self.tx_pkt.append(data)
                    self.tx_len += length
                    self.tx_bytes_done += length
        if cmd & TXD_EOP:
            if not self.tx_drop and self.tx_pkt:
                self._tx_packet(bytearray(b"".join(self.tx_pkt)), lower & (TXD_DEXT << 24))
            self.tx_pkt = []
            self.tx_len = 0
            self.tx_drop = False
            self.tx_vlan = -1
            self.tx_legacy_cs = None
        return cmd

    def _tx_packet(self, pkt, ext):
        c = self.ctx
        if ext and self.tx_popts & POPTS_TXSM and self.net_offload and \
                not (self.tx_vlan >= 0 and self.ctrl & CTRL_VME) and self._offload(pkt):
            return
        if ext and self.tx_tso:
            segs = self._tso(pkt)
            if segs is None:
                return
        else:
            if ext:
                if self.tx_popts & POPTS_TXSM and not netutil.put_sum(pkt, c[3], c[4], c[5]):
                    log.guest_error(self.name, "TX checksum offsets outside the packet")
                if self.tx_popts & POPTS_IXSM and not netutil.put_sum(pkt, c[0], c[1], c[2]):
                    log.guest_error(self.name, "TX IP checksum offsets outside the packet")
            elif self.tx_legacy_cs is not None:
                cso, css = self.tx_legacy_cs
                netutil.put_sum(pkt, css, cso, 0)
            segs = (pkt,)
        for s in segs:
            if self.tx_vlan >= 0 and self.ctrl & CTRL_VME:
                vet = self.r[VET // 4] & 0xFFFF
                tag = bytes((vet >> 8, vet & 0xFF, (self.tx_vlan >> 8) & 0xFF,
                             self.tx_vlan & 0xFF))
                s = s[0:12] + tag + s[12:]
            self._send(s)

    def _offload(self, pkt):
        """Hand a packet whose checksum insertion (and TSO) the network can do
        to it undone (stubdm/net.py's tx_offload), when the context asks for
        exactly what the network would do: the TCP/UDP sum from the L4 header
        to the end (and the IPv4 header's at its place), TSO cut at the TCP
        header's end. True if handed over; False: done here as before."""
        c = self.ctx
        if not c[10] or c[5] != 0:  # TUCSE: to the packet's end only
            return False
        n = len(pkt)
        ipcss, ipcso, ipcse, tucss, tucso = c[0], c[1], c[2], c[3], c[4]
        can = self.net_offload
        ixsm = self.tx_popts & POPTS_IXSM
        if self.tx_tso:
            tucmd, hdr, mss = c[7], c[8], c[9]
            v4 = bool(tucmd & TUCMD_IP)
            want = TX_TSO4 if v4 else TX_TSO6
            if not can & want or not tucmd & TUCMD_TCP or mss == 0 or hdr >= n or \
                    n > MAX_FRAME or (n - hdr + mss - 1) // mss > TSO_MAX_SEGS or \
                    ipcss + (20 if v4 else 40) > hdr or (v4 and not ixsm):
                return False
            # The whole packet's IP length, as if it were one frame.
            if v4:
                netutil.put16(pkt, ipcss + 2, n - ipcss)
            else:
                netutil.put16(pkt, ipcss + 4, n - ipcss - 40)
        h = netutil.parse(pkt)
        # (e1000_tx_csum leaves the IP fields 0: they matter with IXSM or TSO only)
        if h is None or h.ip != 14 or h.l4 != tucss or \
                (h.ip != ipcss and (ixsm or self.tx_tso)):
            return False  # (a tag in the frame: netback takes untagged ones only)
        co = netutil.csum_offset(h.proto)
        if co < 0 or tucso != tucss + co or h.l4 + co + 2 > h.l4_end:
            return False
        if ixsm and (not h.v4 or ipcso != h.ip + 10 or ipcse != h.l4 - 1):
            return False
        if self.tx_tso:
            if h.v4 != v4 or hdr != h.l4 + netutil.tcp_hdr_len(pkt, h):
                return False
            netutil.fill_ip_checksum(pkt, h)
            # The driver left the pseudo-header's sum without a length; the
            # hardware adds each segment's. The network's field holds the
            # whole packet's (its segmentation swaps it for each segment's).
            netutil.put16(pkt, tucso, netutil.add(netutil.get16(pkt, tucso), n - tucss))
            self._send(pkt, want, mss, (n - hdr + mss - 1) // mss, hdr)
            return True
        want = TX_CSUM if h.v4 else TX_CSUM6
        if not can & want:
            return False
        if ixsm:
            netutil.fill_ip_checksum(pkt, h)
        self._send(pkt, want)
        return True

    def _tso(self, pkt):
        """TCP segmentation (SDM 3.5): every frame gets the header (HDRLEN bytes)
        and up to MSS of payload; IP length and ID, TCP sequence and flags
        updated; the checksums inserted as for one frame, the TCP one adding
        the segment's length to the pseudo-header sum the driver left."""
        c = self.ctx
        hdr = c[8]
        mss = c[9]
        n = len(pkt)
        ipcss, ipcso, ipcse, tucss, tucso, tucse = c[0], c[1], c[2], c[3], c[4], c[5]
        tucmd = c[7]
        v4 = tucmd & TUCMD_IP
        tcp = tucmd & TUCMD_TCP
        if not c[10] or mss == 0 or hdr == 0 or hdr >= n or tucss + 20 > hdr and tcp or \
                tucso + 2 > hdr or ipcss + (20 if v4 else 40) > hdr or \
                (n - hdr + mss - 1) // mss > TSO_MAX_SEGS:
            log.guest_error(self.name, "TSO context unusable (hdrlen %d mss %d, %d bytes)"
                            % (hdr, mss, n))
            return None
        seq = netutil.get32(pkt, tucss + 4) if tcp else 0
        ip_id = netutil.get16(pkt, ipcss + 4)
        l4_sum = netutil.get16(pkt, tucso)
        out = []
        pos = hdr
        i = 0
        while pos < n:
            take = min(mss, n - pos)
            seg = bytearray(hdr + take)
            seg[0:hdr] = pkt[0:hdr]
            seg[hdr:] = pkt[pos : pos + take]
            total = len(seg)
            if v4:
                netutil.put16(seg, ipcss + 2, total - ipcss)
                netutil.put16(seg, ipcss + 4, (ip_id + i) & 0xFFFF)
            else:
                netutil.put16(seg, ipcss + 4, total - ipcss - 40)
            if tcp:
                netutil.put32(seg, tucss + 4, (seq + pos - hdr) & 0xFFFFFFFF)
                if pos + take < n:
                    seg[tucss + 13] &= ~(netutil.TCP_FIN | netutil.TCP_PSH) & 0xFF
            else:
                netutil.put16(seg, tucss + 4, total - tucss)
            netutil.put16(seg, tucso, netutil.add(l4_sum, total - tucss))
            if self.tx_popts & POPTS_TXSM:
                netutil.put_sum(seg, tucss, tucso, tucse)
            if self.tx_popts & POPTS_IXSM:
                netutil.put_sum(seg, ipcss, ipcso, ipcse)
            out.append(seg)
            pos += take
            i += 1
        return out

    # ---- save/restore ---------------------------------------------------------------

    def state(self):
        self._rx_flush()
        d = super().state()
        d["regs"] = [(k, self.r.d[k]) for k in sorted(self.r.d)]
        d["nic"] = (self.ctrl, self.eecd, self.icr, self.ims, self.rctl, self.tctl, self.rdh,
                    self.rdt, self.tdh, self.tdt, self.eerd, self.mdic)
        d["ctx"] = list(self.ctx)
        d["stats"] = list(self.st)
        d["phy"] = [(k, self.phy[k]) for k in sorted(self.phy)]
        d["eeprom"] = list(self.eeprom.words)
        # Frames whose descriptors are done but that wait for room on the
        # network: the guest was told they were sent.
        # An offloaded one is saved finished (netutil.saved_txq).
        d["txq"] = netutil.saved_txq(self.txq, self.name)
        return d

    def load_state(self, d):
        super().load_state(d)
        txq = load_txq(d.get("txq", ()), self.name)
        regs = d["regs"]
        r = _Regs()
        for k, v in regs:
            if not 0 <= k < NREGS:
                raise ValueError(self.name + ": saved register %d out of range" % k)
            r[k] = v
        self.r = r
        (self.ctrl, self.eecd, self.icr, self.ims, self.rctl, self.tctl, self.rdh, self.rdt,
         self.tdh, self.tdt, self.eerd, self.mdic) = d["nic"]
        self._rxc = None
        self.ctx = list(d["ctx"])[:12]
        st = list(d.get("stats", ()))
        self.st = [int(v) & 0xFFFFFFFFFFFFFFFF for v in st[:64]] + [0] * (64 - len(st[:64]))
        self._update_ucast()
        for k, v in d["phy"]:
            if k in self.phy:
                self.phy[k] = v & 0xFFFF
        self.eeprom.words = [w & 0xFFFF for w in d["eeprom"]][:64]
        self.txq = txq
        self._update_irq()
