# Realtek RTL8139C+ (10ec:8139, revision 0x20 as QEMU's), libxl's default NIC
# model. Linux drives a revision >= 0x20 with 8139cp (8139too refuses it):
# C+ mode descriptor rings with checksum, VLAN and large-send fields. Older
# drivers get the RTL8139's classic receive ring and four transmit slots.
#
# Registers: RTL8139C(L)+ datasheet section 6 (offsets below); C+ registers
# and descriptor bits as Linux's 8139cp names them. One register file serves
# BAR0 (256 bytes of I/O) and BAR1 (256 bytes of MMIO).
#
# The network (stubdm/net.py) is handed in, and so is guest memory (DMA only
# through it) and nothing else: the INTx pin is this PCI function's own.
#
# C+ receive works in runs: the device's descriptors ahead are read in one
# guest-memory read (up to the ring's end or RX_FETCH), and over a burst of
# frames from a network that says where its bursts end (net.rx_batches) the
# interrupt is raised once, at the burst's end, or before the guest's next
# register access, whichever comes first. Each descriptor is still written
# back as its frame lands: with the write-backs held to the burst's end too,
# Linux's 8139cp stalled receiving (tests/test_net_linux.py), cause not found.
import struct

from stubdm import log
from stubdm.bus import fill_rep
from stubdm.compat import const, ticks_us
from stubdm.devices import netutil
from stubdm.net import MAX_FRAME, MIN_FRAME, TX_CSUM, TX_CSUM6, TX_TSO4, TX_TSO6, load_txq
from stubdm.pci import PciFunction

VENDOR_REALTEK = const(0x10EC)
DEVICE_RTL8139 = const(0x8139)
REVISION_CPLUS = const(0x20)
CLASS_ETHERNET = const(0x020000)
SUBSYS_VENDOR_QEMU = const(0x1AF4)
SUBSYS_ID_QEMU = const(0x1100)
REG_SIZE = const(256)

# Register offsets (datasheet 6; C+ ones after 8139cp).
IDR0 = const(0x00)  # MAC, 6 bytes
MAR0 = const(0x08)  # multicast hash, 8 bytes
TSD0 = const(0x10)  # classic TX status x4; C+: tally counter address (64 bits)
TSAD0 = const(0x20)  # classic TX address x4; C+: TX normal-priority ring (64 bits)
THPDS = const(0x28)  # C+: TX high-priority ring (64 bits)
RBSTART = const(0x30)
CR = const(0x37)
CAPR = const(0x38)
CBR = const(0x3A)
IMR = const(0x3C)
ISR = const(0x3E)
TCR = const(0x40)
RCR = const(0x44)
TCTR = const(0x48)
MPC = const(0x4C)
CR9346 = const(0x50)
CONFIG0 = const(0x51)
CONFIG1 = const(0x52)
TIMERINT = const(0x54)
MSR = const(0x58)
CONFIG3 = const(0x59)
CONFIG4 = const(0x5A)
MULINT = const(0x5C)
RERID = const(0x5E)
TSAD = const(0x60)
BMCR = const(0x62)
BMSR = const(0x64)
ANAR = const(0x66)
ANLPAR = const(0x68)
ANER = const(0x6A)
CSCR = const(0x74)
CONFIG5 = const(0xD8)
TPPOLL = const(0xD9)
RMS = const(0xDA)  # C+: largest frame received
CPCR = const(0xE0)
INTRMIT = const(0xE2)
RDSAR = const(0xE4)  # C+: RX ring (64 bits)
ETTHR = const(0xEC)

# CR bits
CR_RST = const(0x10)
CR_RE = const(0x08)
CR_TE = const(0x04)
CR_BUFE = const(0x01)
# Interrupt bits (ISR/IMR)
INT_ROK = const(0x0001)
INT_RER = const(0x0002)
INT_TOK = const(0x0004)
INT_TER = const(0x0008)
INT_RXOVW = const(0x0010)  # classic: RX buffer overflow; C+: RX descriptor unavailable
INT_LINKCHG = const(0x0020)
INT_FOVW = const(0x0040)
INT_TDU = const(0x0080)  # C+: TX descriptor unavailable
INT_SWINT = const(0x0100)
INT_TIMEOUT = const(0x4000)
INT_SERR = const(0x8000)
INT_MASK = const(0xE1FF)
# TSD bits
TSD_SIZE = const(0x1FFF)
TSD_OWN = const(0x2000)
TSD_TOK = const(0x8000)
# RCR bits
RCR_AAP = const(0x01)
RCR_APM = const(0x02)
RCR_AM = const(0x04)
RCR_AB = const(0x08)
RCR_WRAP = const(0x80)
# Classic RX packet header status
RX_ROK = const(0x0001)
RX_BAR = const(0x2000)
RX_PAM = const(0x4000)
RX_MAR = const(0x8000)
RX_FETCH = const(64)  # C+ RX descriptors read in one run (8139cp's ring is 64)
# CPCR bits
CPCR_TXEN = const(0x0001)
CPCR_RXEN = const(0x0002)
CPCR_RXCSUM = const(0x0020)
CPCR_VLAN = const(0x0040)
# 9346CR: mode in bits 7-6, then the EEPROM's pins
EE_MODE = const(0xC0)
EE_PROGRAM = const(0x80)
EE_AUTOLOAD = const(0x40)
EE_CS = const(0x08)
EE_SK = const(0x04)
EE_DI = const(0x02)
EE_DO = const(0x01)
# TPPOLL
TPPOLL_NPQ = const(0x40)
TPPOLL_HPQ = const(0x80)

# C+ descriptors: 16 bytes, opts1, opts2, 64-bit buffer address.
DESC_OWN = const(0x80000000)
DESC_EOR = const(0x40000000)
DESC_FS = const(0x20000000)
DESC_LS = const(0x10000000)
TX_LGSEN = const(0x08000000)
TX_IPCS = const(0x00040000)
TX_UDPCS = const(0x00020000)
TX_TCPCS = const(0x00010000)
TX_MSS_SHIFT = const(16)
TX_MSS_MASK = const(0x7FF)
TX_LEN_MASK = const(0xFFFF)
TX_ERROR = const(0x00800000)
TX_VLAN_TAG = const(0x00020000)  # opts2
RX_LEN_MASK = const(0x1FFF)
RX_MCAST = const(0x04000000)
RX_PID_TCP = const(0x00010000)
RX_PID_UDP = const(0x00020000)
RX_PID_IP = const(0x00030000)
RX_IPF = const(0x00008000)
RX_UDPF = const(0x00004000)
RX_TCPF = const(0x00002000)
RX_VLAN_TAGGED = const(0x00010000)  # opts2
# A C+ ring has up to 1024 descriptors (datasheet 9.2); one without an end
# bit wraps there. Each request walks at most one ring's worth.
CP_RING_MAX = const(1024)
# Bytes one TX poll gathers at most (a 64-descriptor ring of 64 KiB large
# sends); the rest is taken up at the driver's next register access.
TX_BYTE_BUDGET = const(4 << 20)
TALLY_DUMP = const(0x08)  # TSD0 bit (C+): dump the tally counters
TALLY_SIZE = const(64)
LARGE_SEND_MAX = const(0x10000)  # a large-send payload is an IP datagram at most
CLASSIC_TX_MAX = const(1792)  # datasheet: TSD SIZE, "maximum 1792 bytes"
TX_QUEUE = const(64)  # frames kept while the network has no room (then TX stalls)

# RTL8139C+'s hardware version (TCR bits 30-26, 23-22), as 8139too's table has it.
TCR_HWVER = const(0x74800000)
TCR_RO = const(0x7CC00000)

# PHY (basic mode) registers with link up: 100 Mb/s full duplex, autonegotiated.
BMCR_DEFAULT = const(0x1000)  # autonegotiation enabled
BMSR_BASE = const(0x7809)  # 100FD/100HD/10FD/10HD, autoneg able, extended
BMSR_ANEG_DONE = const(0x0020)
BMSR_LINK = const(0x0004)
ANAR_DEFAULT = const(0x05E1)
ANLPAR_UP = const(0x45E1)
MSR_LINKB = const(0x04)  # link fail (inverse)
MSR_SPEED10 = const(0x08)

# Per byte: which bits the guest writes directly (0: read-only or special).
_WRITABLE = (
    (IDR0, 6, 0xFF), (MAR0, 8, 0xFF), (TSAD0, 16, 0xFF), (RBSTART, 4, 0xFF),
    (0x34, 2, 0xFF), (CAPR, 2, 0xFF), (IMR, 2, 0xFF), (RCR, 4, 0xFF), (TIMERINT, 4, 0xFF),
    (CONFIG1, 1, 0xFF), (CONFIG3, 1, 0xFF), (CONFIG4, 1, 0xFF), (MULINT, 2, 0xFF),
    (MSR, 1, 0xC0), (ANAR, 2, 0xFF), (CSCR, 2, 0xFF), (CONFIG5, 1, 0xFF), (RMS, 2, 0xFF),
    (CPCR, 2, 0xFF), (INTRMIT, 2, 0xFF), (RDSAR, 8, 0xFF), (ETTHR, 1, 0xFF),
    (0x78, 12, 0xFF),
)


# Offsets whose writes have side effects beyond storing bits.
_HOOKED = bytearray(REG_SIZE)
for _off, _n in ((TSD0, 16), (TSAD0, 8), (CR, 1), (CAPR, 2), (IMR, 4), (TCR, 4), (RCR, 4),
                 (TCTR, 4), (MPC, 4), (CR9346, 1), (TIMERINT, 4), (BMCR, 2), (TPPOLL, 1),
                 (CPCR, 2), (RDSAR, 8)):
    for _i in range(_n):
        _HOOKED[_off + _i] = 1


def _le(buf, off, n):
    v = 0
    for i in range(n):
        v |= buf[off + i] << (8 * i)
    return v


def _put_le(buf, off, n, v):
    for i in range(n):
        buf[off + i] = (v >> (8 * i)) & 0xFF


class Rtl8139(PciFunction):
    """An RTL8139C+ on the PCI bus: `net` is its stubdm.net network, `mem` the
    guest memory it DMAs through (GuestMemory: read/write)."""

    def __init__(self, net, mem, mac=None, name="rtl8139"):
        super().__init__(name, VENDOR_REALTEK, DEVICE_RTL8139, CLASS_ETHERNET,
                         revision=REVISION_CPLUS, subsys_vendor=SUBSYS_VENDOR_QEMU,
                         subsys_id=SUBSYS_ID_QEMU, irq_pin=1)
        self.net = net
        self.mem = mem
        mac = bytes(mac or net.mac or b"\x52\x54\x00\x12\x34\x56")
        if len(mac) != 6:
            raise ValueError("a MAC is 6 bytes")
        self.mac = mac
        words = [0x8129, DEVICE_RTL8139, VENDOR_REALTEK, SUBSYS_VENDOR_QEMU, SUBSYS_ID_QEMU,
                 0x4D10, 0xF7C2,
                 mac[0] | (mac[1] << 8), mac[2] | (mac[3] << 8), mac[4] | (mac[5] << 8)]
        self.eeprom = netutil.Eeprom93c46(words)
        self.regs = bytearray(REG_SIZE)
        self.reg_wmask = bytearray(REG_SIZE)
        for off, n, m in _WRITABLE:
            for i in range(n):
                self.reg_wmask[off + i] = m
        self.add_bar(0, REG_SIZE, "io", self)
        self.add_bar(1, REG_SIZE, "mem", self)
        self._image = None
        self.txq = []  # frames waiting for room on the network
        self.tx_more = False  # a TX poll stopped at its budget
        self.tx_done = []  # (kind, index) completions to report once txq drains
        self.rx_paused = False
        self.stats = [0] * 8  # tally: tx ok, rx ok, tx err, rx err, missed, ...
        self._t0 = ticks_us()
        # C+ RX runs: prefetched descriptors (index, opts1, buffer), the next
        # one last; an interrupt update held for the burst's end.
        self._rxc = None
        self._irq_held = False
        self._rx_batch = bool(getattr(net, "rx_batches", False))
        if self._rx_batch:
            net.on_rx_done = self._rx_flush
        net.set_receiver(self.receive)
        net.on_tx_room = self.tx_room
        net.on_link = self.link_changed
        self.hw_reset()

    # ---- reset and identity -------------------------------------------------

    def reset(self):
        super().reset()
        self.hw_reset()

    def _reset_image(self):
        """The register file at power-on (datasheet 6: initial values), link aside."""
        r = bytearray(REG_SIZE)
        r[0:6] = self.mac
        r[CR] = CR_BUFE
        _put_le(r, TCR, 4, TCR_HWVER)
        r[CONFIG1] = 0x0D
        r[CONFIG3] = 0x40
        r[RERID] = REVISION_CPLUS
        _put_le(r, BMCR, 2, BMCR_DEFAULT)
        _put_le(r, ANAR, 2, ANAR_DEFAULT)
        _put_le(r, ANER, 2, 0x0001)
        _put_le(r, CSCR, 2, 0x0740)
        _put_le(r, RMS, 2, 0x1FFF)
        for i in range(4):
            _put_le(r, TSD0 + 4 * i, 4, TSD_OWN)  # slots start free
        _put_le(r, TSAD, 2, 0x000F)
        return bytes(r)

    def hw_reset(self):
        """Power-on / CR.RST state: a copy of the reset image (a guest may reset
        in a 4 KiB rep outsb: each must be cheap)."""
        self._rxc = None
        self._irq_held = False
        if self._image is None:
            self._image = self._reset_image()
        self.regs[0:REG_SIZE] = self._image
        self.isr = 0
        self.imr = 0
        self.rx_bufsize = 8192
        self.rx_ptr = 0  # CAPR + 16: the driver's read position
        self.rx_addr = 0  # CBR: where the next packet goes
        self.cplus = False
        self.cp_tx_index = 0
        self.cp_rx_index = 0
        if self.txq:
            self.txq = []
        if self.tx_done:
            self.tx_done = []
        self.tx_more = False
        self._set_link_regs()
        self._update_irq()
        if self.rx_paused:
            self.rx_paused = False
            self.net.rx_resume()

    def _set_link_regs(self):
        up = self.net.link_up
        bmsr = BMSR_BASE | (BMSR_ANEG_DONE | BMSR_LINK if up else 0)
        _put_le(self.regs, BMSR, 2, bmsr)
        _put_le(self.regs, ANLPAR, 2, ANLPAR_UP if up else 0)
        msr = self.regs[MSR] & 0xC0
        if not up:
            msr |= MSR_LINKB
        self.regs[MSR] = msr

    def link_changed(self):
        self._set_link_regs()
        self._raise(INT_LINKCHG)

    # ---- interrupts -----------------------------------------------------------

    def _raise(self, bits):
        self.isr |= bits
        self._update_irq()

    def _update_irq(self):
        _put_le(self.regs, ISR, 2, self.isr)
        _put_le(self.regs, IMR, 2, self.imr)
        self.set_irq(1 if self.isr & self.imr else 0)

    # ---- register access (BAR handler) ---------------------------------------

    def read(self, offset, size):
        if offset < 0 or offset + size > REG_SIZE:
            return (1 << (8 * size)) - 1
        if self._irq_held:
            self._rx_flush()
        if self.tx_more:
            self._cp_transmit()
        r = self.regs
        end = offset + size
        if offset < TCTR + 4 and end > TCTR:
            # The timer counts at the PCI clock, 33 MHz.
            _put_le(r, TCTR, 4, (ticks_us() - self._t0) * 33)
        if offset <= CR9346 < end:
            v = r[CR9346] & ~EE_DO
            if r[CR9346] & EE_MODE == EE_PROGRAM and self.eeprom.do:
                v |= EE_DO
            r[CR9346] = v
        if size == 1:
            return r[offset]
        return int.from_bytes(r[offset:end], "little")

    # Whole reps to one register (stubdm/bus.py). Reads have no effect but
    # the timer's (it moves on: one by one) and a C+ transmission left to
    # finish (done at the next access: one by one). Writes to registers
    # without hooks only store bits: the last write is what count leave.

    def read_rep(self, offset, size, count, buf):
        if self.tx_more or offset < 0 or offset + size > REG_SIZE or (
                offset < TCTR + 4 and offset + size > TCTR):
            return False
        fill_rep(buf, self.read(offset, size), size, count)
        return True

    def write_rep(self, offset, size, count, buf):
        if self.tx_more or offset < 0 or offset + size > REG_SIZE:
            return False
        for a in range(offset, offset + size):
            if _HOOKED[a]:
                return False
        last = (count - 1) * size
        self.write(offset, size, int.from_bytes(buf[last : last + size], "little"))
        return True

    def write(self, offset, size, value):
        if offset < 0 or offset + size > REG_SIZE:
            return
        if self._irq_held:
            self._rx_flush()
        if self.tx_more:
            self._cp_transmit()
        r = self.regs
        wm = self.reg_wmask
        end = offset + size
        for i in range(size):
            a = offset + i
            b = (value >> (8 * i)) & 0xFF
            m = wm[a]
            if m:
                r[a] = (r[a] & ~m) | (b & m)
            elif a == ISR or a == ISR + 1:
                self.isr &= ~(b << (8 * (a - ISR)))
            elif TSD0 <= a < TSD0 + 16:
                r[a] = b
            elif a == TCR or a == TCR + 1 or a == TCR + 2 or a == TCR + 3:
                m = (~TCR_RO >> (8 * (a - TCR))) & 0xFF
                r[a] = (r[a] & ~m) | (b & m)
            elif a == BMCR or a == BMCR + 1:
                m = 0xFF if a == BMCR else 0x3D  # bits 15 and 9 self-clear
                r[a] = b & m
        hooked = 0
        for a in range(offset, end):
            hooked |= _HOOKED[a]
        if not hooked:
            return
        # Side effects, in address order.
        if offset <= TSD0 + 15 and end > TSD0:
            for i in range(4):
                if offset < TSD0 + 4 * i + 4 and end > TSD0 + 4 * i:
                    self._tsd_written(i)
        if offset <= CAPR + 1 and end > CAPR:
            capr = _le(r, CAPR, 2)
            self.rx_ptr = (capr + 16) % self.rx_bufsize
            self._update_rx_regs()
            self._resume_rx()
        if offset <= CR < end:
            self._cr_written((value >> (8 * (CR - offset))) & 0xFF)
        if offset <= IMR + 1 and end > IMR:
            self.imr = _le(r, IMR, 2) & INT_MASK
        if offset <= ISR + 1 and end > IMR:
            self._update_irq()
            self._resume_rx()
        if offset <= RCR + 3 and end > RCR:
            # The ring is 8, 16, 32 or 64 KiB; the driver allocates 16 bytes
            # more (and 1.5 KiB for WRAP) as slack past its end.
            self.rx_bufsize = 8192 << ((r[RCR + 1] >> 3) & 3)
            self.rx_ptr %= self.rx_bufsize
            self.rx_addr %= self.rx_bufsize
            self._update_rx_regs()
        if offset <= TCTR + 3 and end > TCTR:
            self._t0 = ticks_us()  # any write clears the counter
        if offset <= MPC + 3 and end > MPC:
            _put_le(r, MPC, 4, 0)
        if offset <= CR9346 < end:
            self._cr9346_written((value >> (8 * (CR9346 - offset))) & 0xFF)
        if offset <= TIMERINT + 3 and end > TIMERINT and _le(r, TIMERINT, 4):
            log.unimp(self.name, "TimerInt: the timer interrupt is not emulated")
        if offset <= BMCR + 1 and end > BMCR:
            self._set_link_regs()
        if offset <= TPPOLL < end:
            poll = (value >> (8 * (TPPOLL - offset))) & 0xFF
            if poll & TPPOLL_HPQ:
                log.unimp(self.name, "high-priority TX queue: served as the normal one")
            if poll & (TPPOLL_NPQ | TPPOLL_HPQ):
                self._cp_transmit()
        if offset <= CPCR + 1 and end > CPCR:
            self.cplus = True
            self._rxc = None
            self._resume_rx()
        if offset <= RDSAR + 7 and end > RDSAR:
            self.cp_rx_index = 0
            self._rxc = None
        if offset <= TSAD0 + 7 and end > TSAD0 and self.cplus:
            self.cp_tx_index = 0

    def _cr_written(self, v):
        r = self.regs
        if v & CR_RST:
            self.hw_reset()
            return
        old = r[CR]
        r[CR] = (old & CR_BUFE) | (v & (CR_RE | CR_TE))
        self._rxc = None  # the driver may rewrite its ring while the receiver is off
        if v & CR_RE and not old & CR_RE:
            # Enabling the receiver starts the classic ring at its beginning.
            self.rx_addr = 0
            self.rx_ptr = 0
            self.cp_rx_index = 0
            self._update_rx_regs()
            self._resume_rx()
        if not v & CR_TE:
            self.cp_tx_index = 0

    def _cr9346_written(self, v):
        r = self.regs
        mode = v & EE_MODE
        keep = v & (EE_MODE | EE_CS | EE_SK | EE_DI)
        if mode == EE_AUTOLOAD:
            # Reload the ID registers from the EEPROM, then back to normal mode.
            w = self.eeprom.words
            for i in range(3):
                r[IDR0 + 2 * i] = w[7 + i] & 0xFF
                r[IDR0 + 2 * i + 1] = w[7 + i] >> 8
            keep = 0
        r[CR9346] = keep
        if mode == EE_PROGRAM:
            self.eeprom.pins(v & EE_CS, v & EE_SK, v & EE_DI)
        else:
            self.eeprom.pins(0, 0, 0)

    # ---- receive ----------------------------------------------------------------

    def _update_rx_regs(self):
        r = self.regs
        _put_le(r, CBR, 2, self.rx_addr & 0xFFFF)
        _put_le(r, CAPR, 2, (self.rx_ptr - 16) & 0xFFFF)
        if self.rx_addr == self.rx_ptr:
            r[CR] |= CR_BUFE
        else:
            r[CR] &= ~CR_BUFE

    def _resume_rx(self):
        if self.rx_paused:
            self.rx_paused = False
            self.net.rx_resume()

    def _accept(self, frame):
        """The RCR address filter (datasheet 6.9): (accepted, classic status bits)."""
        rcr = self.regs[RCR]
        if frame[0] & 1:
            if bytes(frame[0:6]) == b"\xff\xff\xff\xff\xff\xff":
                return bool(rcr & (RCR_AB | RCR_AAP)), RX_BAR
            if rcr & RCR_AAP:
                return True, RX_MAR
            if not rcr & RCR_AM:
                return False, 0
            bit = netutil.ether_crc(bytes(frame[0:6])) >> 26
            return bool(self.regs[MAR0 + (bit >> 3)] & (1 << (bit & 7))), RX_MAR
        if bytes(frame[0:6]) == bytes(self.regs[0:6]):
            return bool(rcr & (RCR_APM | RCR_AAP)), RX_PAM
        return bool(rcr & RCR_AAP), 0

    def receive(self, frame):
        """A frame from the network. False: no room now (the network keeps it)."""
        if not self.regs[CR] & CR_RE or len(frame) < MIN_FRAME:
            return True  # receiver off: the wire's frame is lost, as on hardware
        ok, status = self._accept(frame)
        if not ok:
            return True
        if self.cplus and _le(self.regs, CPCR, 2) & CPCR_RXEN:
            return self._cp_receive(frame, status)
        return self._classic_receive(frame, status)

    def _classic_receive(self, frame, status):
        n = len(frame)
        size = self.rx_bufsize
        if n + 4 > size - 16:
            log.guest_error(self.name, "a %d-byte frame can't fit the %d-byte RX buffer"
                            % (n, size))
            self._missed()
            return True
        need = (n + 8 + 3) & ~3  # header, frame, CRC, aligned
        used = (self.rx_addr - self.rx_ptr) % size
        if size - used <= need:
            self.rx_paused = True  # the driver frees space with CAPR
            return False
        base = _le(self.regs, RBSTART, 4)
        rec = bytearray(n + 8)
        _put_le(rec, 0, 2, status | RX_ROK)
        _put_le(rec, 2, 2, n + 4)
        rec[4 : 4 + n] = frame
        # The CRC is not on the wire here; the driver discards it.
        pos = self.rx_addr
        if pos + len(rec) <= size or (self.regs[RCR] & RCR_WRAP and size < 65536):
            # WRAP: the buffer has room past its end (1.5 KiB plus 16).
            okw = self.mem.write(base + pos, rec)
        else:
            first = size - pos
            okw = self.mem.write(base + pos, memoryview(rec)[:first]) and \
                self.mem.write(base, memoryview(rec)[first:])
        if not okw:
            log.guest_error(self.name, "RX buffer at %#x is not guest RAM" % base)
            self._missed()
            return True
        self.rx_addr = (pos + need) % size
        self._update_rx_regs()
        self.stats[1] += 1
        self._raise(INT_ROK)
        return True

    def _missed(self):
        _put_le(self.regs, MPC, 4, (_le(self.regs, MPC, 4) + 1) & 0xFFFFFF)
        self.stats[4] += 1

    def _cp_desc(self, base):
        """(index, opts1, buffer) of the C+ RX descriptor at cp_rx_index, or None
        if it is not guest RAM. The device's descriptors from there (OWN, up to
        the ring's end or RX_FETCH) are read in one run and used frame by frame:
        the driver does not touch a descriptor it has given the device (and the
        run is dropped when it moves the ring or turns the receiver off). One at
        a time where the run is not all RAM, so the bad one is found."""
        i = self.cp_rx_index
        c = self._rxc
        if c:
            e = c.pop()
            if e[0] == i:
                return e
        self._rxc = None
        addr = base + 16 * i
        k = CP_RING_MAX - i
        if k > RX_FETCH:
            k = RX_FETCH
        run = self.mem.read(addr, 16 * k) if k > 1 else None
        if run is None:
            d = self.mem.read(addr, 16)
            if d is None:
                return None
            opts1, _opts2, buf = struct.unpack("<IIQ", d)
            return i, opts1, buf
        opts1, _opts2, buf = struct.unpack_from("<IIQ", run, 0)
        first = (i, opts1, buf)
        if opts1 & (DESC_OWN | DESC_EOR) != DESC_OWN:
            return first
        ahead = []
        for j in range(1, k):
            opts1, _opts2, buf = struct.unpack_from("<IIQ", run, 16 * j)
            if not opts1 & DESC_OWN:
                break
            ahead.append((i + j, opts1, buf))
            if opts1 & DESC_EOR:
                break
        if ahead:
            ahead.reverse()
            self._rxc = ahead
        return first

    def _cp_receive(self, frame, status):
        r = self.regs
        base = int.from_bytes(r[RDSAR:RDSAR + 8], "little")
        e = self._cp_desc(base)
        addr = base + 16 * self.cp_rx_index
        if e is None:
            log.guest_error(self.name, "C+ RX descriptor at %#x is not guest RAM" % addr)
            self._missed()
            return True
        _i, opts1, buf = e
        if not opts1 & DESC_OWN:
            self._rxc = None
            self._rx_flush()
            if not self.rx_paused:
                self._raise(INT_RXOVW)  # descriptor unavailable: the driver refills
            self.rx_paused = True
            return False
        cpcr = r[CPCR] | (r[CPCR + 1] << 8)
        opts2 = 0
        n = len(frame)
        if cpcr & CPCR_VLAN and n >= 18 and frame[12] == 0x81 and frame[13] == 0:
            tag = (frame[14] << 8) | frame[15]
            opts2 = RX_VLAN_TAGGED | ((tag & 0xFF) << 8) | (tag >> 8)
            frame = bytes(frame[0:12]) + bytes(frame[16:])
            n = len(frame)
        bufsize = opts1 & RX_LEN_MASK
        eor = opts1 & DESC_EOR
        self.cp_rx_index = 0 if eor else (self.cp_rx_index + 1) % CP_RING_MAX
        if n + 4 > bufsize:
            # 8139cp gives each descriptor a whole frame's buffer: a longer
            # frame is an error (RxErrLong) in this one descriptor.
            log.guest_error(self.name, "C+ RX buffer of %d bytes for a %d-byte frame"
                            % (bufsize, n))
            self._cp_rx_done(addr, eor | DESC_FS | DESC_LS | 0x00300000 | (n + 4), 0)
            self.stats[3] += 1
            self._raise(INT_RER)
            return True
        if not self.mem.write(buf, frame):
            log.guest_error(self.name, "C+ RX buffer at %#x is not guest RAM" % buf)
            self._cp_rx_done(addr, eor | DESC_FS | DESC_LS | 0x00100000 | (n + 4), 0)
            self._raise(INT_RER)
            return True
        st = eor | DESC_FS | DESC_LS | ((n + 4) & RX_LEN_MASK)
        if status & (RX_MAR | RX_BAR):
            st |= RX_MCAST
        if cpcr & CPCR_RXCSUM:
            st |= self._rx_csum(frame)
        self._cp_rx_done(addr, st, opts2)
        self.stats[1] += 1
        self.isr |= INT_ROK
        if self._rx_batch:
            self._irq_held = True  # raised at the burst's end (_rx_flush)
        else:
            self._update_irq()
        return True

    def _rx_csum(self, frame):
        """The protocol ID and checksum-failure bits of an RX descriptor."""
        h = netutil.parse(frame)
        if h is None or not h.v4:
            return 0
        st = 0
        ihl = h.l4 - h.ip
        if netutil.ones_sum(frame, h.ip, h.ip + ihl) != 0xFFFF:
            st |= RX_IPF
        co = netutil.csum_offset(h.proto)
        if co < 0 or h.l4 + co + 2 > h.l4_end:
            return st | RX_PID_IP
        s = netutil.l4_sum(frame, h)
        bad = s != 0xFFFF
        if h.proto == netutil.IPPROTO_TCP:
            return st | RX_PID_TCP | (RX_TCPF if bad else 0)
        if netutil.get16(frame, h.l4 + 6) == 0:
            bad = False  # UDP without a checksum
        return st | RX_PID_UDP | (RX_UDPF if bad else 0)

    def _cp_rx_done(self, addr, opts1, opts2):
        """A descriptor handed back (OWN clear), written at once."""
        if not self.mem.write(addr, struct.pack("<II", opts1 & ~DESC_OWN & 0xFFFFFFFF,
                                                 opts2 & 0xFFFFFFFF)):
            log.guest_error(self.name, "C+ RX descriptor at %#x is not guest RAM" % addr)

    def _rx_flush(self):
        """The burst's end: the interrupt its frames raise."""
        if self._irq_held:
            self._irq_held = False
            self._update_irq()

    # ---- transmit ----------------------------------------------------------------

    def _send(self, frame, offload=0, mss=0):
        """Queue a frame for the network (offload/mss: one it finishes,
        stubdm/net.py); False when TX must stall."""
        n = len(frame)
        if n < MIN_FRAME or n > MAX_FRAME:
            log.guest_error(self.name, "TX frame of %d bytes dropped" % n)
            self.stats[2] += 1
            return True
        if offload:
            if not self.txq and self.net.transmit(frame, offload, mss):
                self.stats[0] += 1
                return True
            self.txq.append((bytes(frame), offload, mss))
            return True
        if not self.txq and self.net.transmit(frame):
            self.stats[0] += 1
            return True
        self.txq.append(bytes(frame))
        return True

    def tx_room(self):
        """The network has room again: send what waits, then resume the rings."""
        q = self.txq
        while q:
            e = q[0]
            if isinstance(e, tuple):  # (frame, offload, mss)
                if not self.net.transmit(e[0], e[1], e[2]):
                    return
            elif not self.net.transmit(e):
                return
            q.pop(0)
            self.stats[0] += 1
        done = self.tx_done
        self.tx_done = []
        for kind, i in done:
            if kind == "slot":
                self._slot_done(i)
        if self.cplus:
            self._cp_transmit()

    def _tsd_written(self, i):
        if self.cplus and _le(self.regs, CPCR, 2) & CPCR_TXEN:
            if i == 0 and self.regs[TSD0] & TALLY_DUMP:
                self._dump_tally()
            return
        r = self.regs
        if r[TSD0 + 4 * i + 1] & (TSD_OWN >> 8) or not r[CR] & CR_TE:
            self._update_tsad()
            return
        tsd = _le(r, TSD0 + 4 * i, 4)
        size = tsd & TSD_SIZE
        addr = _le(r, TSAD0 + 4 * i, 4)
        tsd &= ~TSD_TOK & 0xFFFFFFFF
        if size > CLASSIC_TX_MAX:
            log.guest_error(self.name, "TX slot %d: %d bytes, over the %d maximum"
                            % (i, size, CLASSIC_TX_MAX))
            _put_le(r, TSD0 + 4 * i, 4, tsd | TSD_OWN | 0x40000000)  # TABT
            self.stats[2] += 1
            self._update_tsad()
            self._raise(INT_TER)
            return
        data = self.mem.read(addr, size)
        if data is None:
            log.guest_error(self.name, "TX slot %d buffer %#x+%d is not guest RAM"
                            % (i, addr, size))
            _put_le(r, TSD0 + 4 * i, 4, tsd | TSD_OWN | 0x40000000)
            self._update_tsad()
            self._raise(INT_TER)
            return
        self._send(data)
        if self.txq:
            _put_le(r, TSD0 + 4 * i, 4, tsd | TSD_OWN)  # DMA done, not yet sent
            self.tx_done.append(("slot", i))
            self._update_tsad()
            return
        _put_le(r, TSD0 + 4 * i, 4, tsd)
        self._slot_done(i)

    def _slot_done(self, i):
        r = self.regs
        _put_le(r, TSD0 + 4 * i, 4, _le(r, TSD0 + 4 * i, 4) | TSD_OWN | TSD_TOK)
        self._update_tsad()
        self._raise(INT_TOK)

    def _update_tsad(self):
        # TSAD gathers OWN (TSD bit 13), TABT (30) and TOK (15) of the four slots.
        r = self.regs
        v = 0
        for i in range(4):
            b1 = r[TSD0 + 4 * i + 1]
            v |= ((b1 >> 5) & 1) << i | ((b1 >> 7) & 1) << (12 + i) \
                | ((r[TSD0 + 4 * i + 3] >> 6) & 1) << (4 + i)
        r[TSAD] = v & 0xFF
        r[TSAD + 1] = v >> 8

    def _dump_tally(self):
        r = self.regs
        addr = (_le(r, TSD0, 4) & ~0x3F) | (_le(r, TSD0 + 4, 4) << 32)
        t = bytearray(TALLY_SIZE)
        s = self.stats
        _put_le(t, 0, 8, s[0])  # TxOk
        _put_le(t, 8, 8, s[1])  # RxOk
        _put_le(t, 16, 8, s[2])  # TxErr
        _put_le(t, 24, 4, s[3])  # RxErr
        _put_le(t, 28, 2, s[4] & 0xFFFF)  # MissPkt
        if not self.mem.write(addr, t):
            log.guest_error(self.name, "tally counters at %#x: not guest RAM" % addr)
        r[TSD0] &= ~TALLY_DUMP

    def _cp_transmit(self):
        """Walk the C+ normal-priority TX ring from where it stopped: at most
        one ring's worth of descriptors, a frame from FS to LS."""
        r = self.regs
        if not (r[CR] & CR_TE and _le(r, CPCR, 2) & CPCR_TXEN):
            return
        base = _le(r, TSAD0, 4) | (_le(r, TSAD0 + 4, 4) << 32)
        parts = []
        total = 0
        first = None
        sent = False
        gathered = 0
        self.tx_more = False
        for _ in range(CP_RING_MAX):
            if self.txq:
                break  # the network is full: the ring waits (tx_room resumes it)
            if gathered >= TX_BYTE_BUDGET and first is None:
                self.tx_more = True
                break
            addr = base + 16 * self.cp_tx_index
            d = self.mem.read(addr, 16)
            if d is None:
                log.guest_error(self.name, "C+ TX descriptor at %#x is not guest RAM" % addr)
                self._raise(INT_TER)
                break
            opts1 = _le(d, 0, 4)
            if not opts1 & DESC_OWN:
                break
            opts2 = _le(d, 4, 4)
            buf = _le(d, 8, 4) | (_le(d, 12, 4) << 32)
            n = opts1 & TX_LEN_MASK
            self.cp_tx_index = 0 if opts1 & DESC_EOR else (self.cp_tx_index + 1) % CP_RING_MAX
            if opts1 & DESC_FS:
                if parts:
                    log.guest_error(self.name, "C+ TX: a frame without its last fragment")
                parts = []
                total = 0
                first = opts1
            error = first is None
            if not error:
                total += n
                if total > LARGE_SEND_MAX + 0x100:
                    error = True
                    log.guest_error(self.name, "C+ TX frame over %d bytes" % total)
                else:
                    data = self.mem.read(buf, n) if n else b""
                    gathered += n
                    if data is None:
                        error = True
                        log.guest_error(self.name, "C+ TX buffer %#x+%d is not guest RAM"
                                        % (buf, n))
                    else:
                        parts.append(data)
            # Hand the descriptor back (error summary on a bad one).
            wb = bytearray(4)
            _put_le(wb, 0, 4, (opts1 & (DESC_EOR | DESC_FS | DESC_LS))
                    | (TX_ERROR if error else 0) | n)
            self.mem.write(addr, wb)
            if error:
                parts = []
                first = None
                self.stats[2] += 1
                self._raise(INT_TER)
                continue
            if opts1 & DESC_LS:
                self._cp_frame(b"".join(parts), first, opts2)
                parts = []
                first = None
                sent = True
        if sent:
            self._raise(INT_TOK)

    def _cp_frame(self, frame, opts1, opts2):
        frame = bytearray(frame)
        if opts2 & TX_VLAN_TAG and len(frame) >= 12:
            tag = ((opts2 & 0xFF) << 8) | ((opts2 >> 8) & 0xFF)
            frame = frame[0:12] + bytes((0x81, 0x00, tag >> 8, tag & 0xFF)) + frame[12:]
        can = getattr(self.net, "tx_offload", 0)
        if can and not opts2 & TX_VLAN_TAG and opts1 & (TX_LGSEN | TX_TCPCS | TX_UDPCS) and \
                self._offload(frame, opts1, can):
            return
        if opts1 & TX_LGSEN:
            mss = (opts1 >> TX_MSS_SHIFT) & TX_MSS_MASK
            h = netutil.parse(frame)
            segs = None
            if h is not None and h.proto == netutil.IPPROTO_TCP and h.l4 + 20 <= len(frame):
                hdr_len = h.l4 + ((frame[h.l4 + 12] >> 4) * 4)
                segs = netutil.segment(frame, h, hdr_len, mss, 64)
            if segs is None:
                log.guest_error(self.name, "C+ large send of a frame it can't cut (MSS %d)"
                                % mss)
                self.stats[2] += 1
                return
            for s in segs:
                self._send(s)
            return
        if len(frame) > 0x1FFF:
            log.guest_error(self.name, "C+ TX frame of %d bytes without large send"
                            % len(frame))
            self.stats[2] += 1
            return
        if opts1 & (TX_IPCS | TX_TCPCS | TX_UDPCS):
            h = netutil.parse(frame)
            if h is not None:
                if opts1 & TX_IPCS:
                    netutil.fill_ip_checksum(frame, h)
                if (opts1 & TX_TCPCS and h.proto == netutil.IPPROTO_TCP) or \
                        (opts1 & TX_UDPCS and h.proto == netutil.IPPROTO_UDP):
                    netutil.fill_l4_checksum(frame, h)
        self._send(frame)

    def _offload(self, frame, opts1, can):
        """Hand a large send or a TCP/UDP checksum insertion to the network
        (stubdm/net.py's tx_offload) when it would do what this chip does: the
        whole datagram's sum (so no padding after it), segments cut at the TCP
        header's end with every checksum filled. The chip ignores what the
        field holds: it gets the pseudo-header's sum the network starts from.
        True if handed over; False: done here as before."""
        n = len(frame)
        h = netutil.parse(frame)
        if h is None or h.ip != netutil.ETH_HLEN or h.l4_end != n or n > MAX_FRAME:
            return False
        co = netutil.csum_offset(h.proto)
        if co < 0 or h.l4 + co + 2 > n:
            return False
        mss = 0
        if opts1 & TX_LGSEN:
            mss = (opts1 >> TX_MSS_SHIFT) & TX_MSS_MASK
            hl = netutil.tcp_hdr_len(frame, h)
            want = TX_TSO4 if h.v4 else TX_TSO6
            if not hl or mss == 0 or not can & want or \
                    (n - h.l4 - hl + mss - 1) // mss > 64:
                return False
            ip = True  # every segment's IPv4 sum, as segment() does
        else:
            if n > 0x1FFF or not ((opts1 & TX_TCPCS and h.proto == netutil.IPPROTO_TCP) or
                                  (opts1 & TX_UDPCS and h.proto == netutil.IPPROTO_UDP)):
                return False
            want = TX_CSUM if h.v4 else TX_CSUM6
            if not can & want:
                return False
            ip = opts1 & TX_IPCS
        if ip:
            netutil.fill_ip_checksum(frame, h)
        netutil.put16(frame, h.l4 + co, netutil.pseudo_sum(frame, h, n - h.l4))
        self._send(frame, want, mss)
        return True

    # ---- save/restore --------------------------------------------------------------

    def state(self):
        self._rx_flush()
        d = super().state()
        d["regs"] = bytes(self.regs)
        d["nic"] = (self.isr, self.imr, self.rx_bufsize, self.rx_ptr, self.rx_addr,
                    self.cplus, self.cp_tx_index, self.cp_rx_index)
        d["eeprom"] = list(self.eeprom.words)
        # Frames the NIC took from the guest that wait for room on the network,
        # and the completions it reports once they are sent: part of the NIC.
        # An offloaded one is saved finished (netutil.saved_txq).
        d["txq"] = netutil.saved_txq(self.txq, self.name)
        d["tx_done"] = [i for _kind, i in self.tx_done]
        return d

    def load_state(self, d):
        super().load_state(d)
        txq = load_txq(d.get("txq", ()), self.name)
        done = [int(i) for i in d.get("tx_done", ())]
        if len(done) > 4 or [i for i in done if not 0 <= i < 4]:
            raise ValueError(self.name + ": saved TX completions out of range")
        regs = d["regs"]
        if len(regs) != REG_SIZE:
            raise ValueError(self.name + ": saved registers have the wrong size")
        self.regs[0:REG_SIZE] = regs
        (self.isr, self.imr, bufsize, ptr, addr, self.cplus, self.cp_tx_index,
         self.cp_rx_index) = d["nic"]
        self.rx_bufsize = bufsize if bufsize in (8192, 16384, 32768, 65536) else 8192
        self.rx_ptr = ptr % self.rx_bufsize
        self.rx_addr = addr % self.rx_bufsize
        self.cp_tx_index %= CP_RING_MAX
        self.cp_rx_index %= CP_RING_MAX
        self.eeprom.words = [w & 0xFFFF for w in d["eeprom"]][:64]
        self.txq = txq
        self.tx_done = [("slot", i) for i in done]
        self._rxc = None
        self._irq_held = False
        self._update_irq()
