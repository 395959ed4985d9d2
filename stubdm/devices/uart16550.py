"""16550A UART: the PC's COM port.

Sources: National/TI PC16550D datasheet (register summary, Table II;
section 8 "Registers"), and QEMU hw/char/serial.c, whose guest-visible
behaviour this model reproduces register by register (checked against QEMU
11.1.3 through qtest: random port sequences, loopback included, give the
same values and IRQ 4 levels).

Interface (stubdm/devices/__init__.py conventions):
- read(offset, size) / write(offset, size, value), offsets 0-7.
- irq.set_level(0|1) for the interrupt line; chardev.write(bytes) for output.
- receive(data), can_receive(), receive_break() for input from the back end.
- set_modem_lines(cts, dsr, ri, dcd) for modem inputs from the back end.
- rx_timeout(): the platform's timer. While `rx_timer_armed` is true, the
  platform calls rx_timeout() after about four character times (any short
  idle delay will do); it raises the character-timeout interrupt (IIR 0xCC)
  for bytes left below the FIFO trigger level, as QEMU's fifo_timeout_timer.

Accesses wider than a byte are split into byte accesses at consecutive
offsets, combined little-endian, as QEMU's memory core does for this device
(impl.max_access_size = 1); bytes that fall past offset 7 read 0xff and
their writes are dropped.

Choices and deliberate differences from QEMU:
- Transmission is immediate (no baud-rate timing), as in QEMU: a THR write
  goes straight to chardev.write() (or, in loopback, into the receiver), so
  THRE/TEMT are set again before the write returns.
- The interrupt line is NOT gated by MCR.OUT2. On a PC the OUT2 pin enables
  the tri-state IRQ driver on the motherboard, but QEMU's serial.c ignores
  OUT2 and a PCI 16550 (1b36:0002) has no such gate either; we follow QEMU.
- Loopback (MCR bit 4): MSR reads return the looped outputs (RTS->CTS,
  DTR->DSR, OUT1->RI, OUT2->DCD) with no delta bits, as QEMU. The datasheet
  would also generate delta bits/modem-status interrupts from the outputs.
  External input is still accepted in loopback, as QEMU (datasheet: the
  serial input is disconnected).
- reset() also clears FCR (FIFOs off, trigger 1), as the datasheet's master
  reset does; QEMU's reset leaves FCR alone while clearing the IIR FIFO bits.
- The RX character timeout needs the platform's timer (rx_timeout() above);
  QEMU arms its own timer on the virtual clock.
- Modem inputs are what the back end last set (set_modem_lines); reset
  value CTS|DSR|DCD (MSR 0xB0) as QEMU with a non-tty back end.
- Non-FIFO mode: receive() of several bytes overwrites RBR and sets OE for
  each byte after the first (the 16450 overrun rule); QEMU never hands it
  more than can_receive() allows.
"""
from stubdm import log
from stubdm.compat import const

# Register offsets (PC16550D Table II). DLAB = LCR bit 7.
REG_RBR = const(0)  # read, DLAB=0: receiver buffer
REG_THR = const(0)  # write, DLAB=0: transmitter holding
REG_DLL = const(0)  # DLAB=1: divisor latch LSB
REG_IER = const(1)  # DLAB=0: interrupt enable
REG_DLM = const(1)  # DLAB=1: divisor latch MSB
REG_IIR = const(2)  # read: interrupt identification
REG_FCR = const(2)  # write: FIFO control
REG_LCR = const(3)
REG_MCR = const(4)
REG_LSR = const(5)
REG_MSR = const(6)
REG_SCR = const(7)
WINDOW = const(8)

FIFO_LEN = const(16)  # 16550A RX and TX FIFOs (datasheet 8.6)

# IER (8.4)
IER_RDI = const(0x01)  # received data available (and character timeout)
IER_THRI = const(0x02)  # THR empty
IER_RLSI = const(0x04)  # receiver line status
IER_MSI = const(0x08)  # modem status

# IIR (8.5, Table IV): bit 0 = 0 when an interrupt is pending.
IIR_NO_INT = const(0x01)
IIR_ID = const(0x06)
IIR_MSI = const(0x00)
IIR_THRI = const(0x02)
IIR_RDI = const(0x04)
IIR_RLSI = const(0x06)
IIR_CTI = const(0x0C)  # character timeout (FIFO mode)
IIR_FE = const(0xC0)  # FIFOs enabled

# FCR (8.6)
FCR_FE = const(0x01)
FCR_RFR = const(0x02)  # reset RX FIFO (self-clearing)
FCR_XFR = const(0x04)  # reset TX FIFO (self-clearing)
FCR_STICKY = const(0xC9)  # bits that stay: trigger level, DMA mode, enable

# LCR (8.2)
LCR_DLAB = const(0x80)

# MCR (8.7)
MCR_DTR = const(0x01)
MCR_RTS = const(0x02)
MCR_OUT1 = const(0x04)
MCR_OUT2 = const(0x08)
MCR_LOOP = const(0x10)
MCR_MASK = const(0x1F)

# LSR (8.3)
LSR_DR = const(0x01)
LSR_OE = const(0x02)
LSR_PE = const(0x04)
LSR_FE = const(0x08)
LSR_BI = const(0x10)
LSR_THRE = const(0x20)
LSR_TEMT = const(0x40)
LSR_INT_ANY = const(0x1E)  # OE|PE|FE|BI raise the line-status interrupt

# MSR (8.8)
MSR_DCTS = const(0x01)
MSR_DDSR = const(0x02)
MSR_TERI = const(0x04)
MSR_DDCD = const(0x08)
MSR_CTS = const(0x10)
MSR_DSR = const(0x20)
MSR_RI = const(0x40)
MSR_DCD = const(0x80)
MSR_ANY_DELTA = const(0x0F)

_ITL = (1, 4, 8, 14)  # RX trigger level by FCR bits 7:6


class _Fifo8:
    """A fixed-size byte ring (QEMU's Fifo8)."""

    def __init__(self, size):
        self.buf = bytearray(size)
        self.size = size
        self.head = 0
        self.num = 0

    def reset(self):
        self.head = 0
        self.num = 0

    def is_full(self):
        return self.num >= self.size

    def push(self, b):
        self.buf[(self.head + self.num) % self.size] = b & 0xFF
        self.num += 1

    def pop(self):
        b = self.buf[self.head]
        self.head = (self.head + 1) % self.size
        self.num -= 1
        return b

    def contents(self):
        out = bytearray(self.num)
        for i in range(self.num):
            out[i] = self.buf[(self.head + i) % self.size]
        return bytes(out)

    def load(self, data):
        self.reset()
        for b in data[: self.size]:
            self.push(b)


class Uart16550:
    def __init__(self, irq, name="uart", chardev=None):
        self.irq = irq
        self.name = name
        self.chardev = chardev  # anything with write(bytes); None drops output
        self.rx = _Fifo8(FIFO_LEN)
        self.tx = _Fifo8(FIFO_LEN)
        self.reset()

    # -- state -------------------------------------------------------------

    def reset(self):
        self.divider = 0x0C  # 9600 baud with the PC's 1.8432 MHz clock
        self.rbr = 0
        self.thr = 0
        self.tsr = 0
        self.ier = 0
        self.iir = IIR_NO_INT
        self.lcr = 0
        self.mcr = MCR_OUT2
        self.lsr = LSR_TEMT | LSR_THRE
        self.msr = MSR_DCD | MSR_DSR | MSR_CTS
        self.scr = 0
        self.fcr = 0
        self.itl = 1
        self.thr_ipending = 0
        self.timeout_ipending = 0
        self.rx_timer_armed = False
        self.rx.reset()
        self.tx.reset()
        self.irq.set_level(0)

    _FIELDS = (
        "divider", "rbr", "thr", "tsr", "ier", "iir", "lcr", "mcr", "lsr", "msr",
        "scr", "fcr", "thr_ipending", "timeout_ipending",
    )
    _WIDE = ("divider",)  # 16-bit; the rest are bytes or flags

    def state(self):
        d = {"version": 1}
        for k in self._FIELDS:
            d[k] = getattr(self, k)
        d["rx_timer_armed"] = 1 if self.rx_timer_armed else 0
        d["rx_fifo"] = self.rx.contents()
        d["tx_fifo"] = self.tx.contents()
        return d

    def load_state(self, d):
        for k in self._FIELDS:
            v = int(d.get(k, 0))
            setattr(self, k, v & (0xFFFF if k in self._WIDE else 0xFF))
        self.ier &= 0x0F
        self.mcr &= MCR_MASK
        self.fcr &= FCR_STICKY
        self.thr_ipending = 1 if self.thr_ipending else 0
        self.timeout_ipending = 1 if self.timeout_ipending else 0
        self.itl = _ITL[self.fcr >> 6]
        self.rx_timer_armed = bool(d.get("rx_timer_armed", 0))
        self.rx.load(bytes(d.get("rx_fifo", b"")))
        self.tx.load(bytes(d.get("tx_fifo", b"")))
        # The IRQ level is derived state: recompute it from the registers.
        self._update_irq()

    # -- interrupt logic (datasheet Table IV; QEMU serial_update_irq) ------

    def _update_irq(self):
        ier = self.ier
        lsr = self.lsr
        iid = IIR_NO_INT
        if (ier & IER_RLSI) and (lsr & LSR_INT_ANY):
            iid = IIR_RLSI
        elif (ier & IER_RDI) and self.timeout_ipending:
            # IER.RDI masks the timeout too: not in the datasheet, but real
            # hardware (and QEMU) behave so.
            iid = IIR_CTI
        elif (
            (ier & IER_RDI)
            and (lsr & LSR_DR)
            and (not (self.fcr & FCR_FE) or self.rx.num >= self.itl)
        ):
            iid = IIR_RDI
        elif (ier & IER_THRI) and self.thr_ipending:
            iid = IIR_THRI
        elif (ier & IER_MSI) and (self.msr & MSR_ANY_DELTA):
            iid = IIR_MSI
        self.iir = iid | (self.iir & 0xF0)
        self.irq.set_level(0 if iid == IIR_NO_INT else 1)

    # -- transmit / receive ------------------------------------------------

    def _xmit(self):
        # Runs with LSR.THRE and LSR.TEMT clear. No baud timing: every
        # pending byte leaves now.
        while True:
            if self.fcr & FCR_FE:
                if self.tx.num == 0:  # defensive: a THR write just pushed a byte
                    self.lsr |= LSR_THRE
                    break
                self.tsr = self.tx.pop()
                if self.tx.num == 0:
                    self.lsr |= LSR_THRE
            else:
                self.tsr = self.thr
                self.lsr |= LSR_THRE
            if (self.lsr & LSR_THRE) and not self.thr_ipending:
                self.thr_ipending = 1
                self._update_irq()
            if self.mcr & MCR_LOOP:
                self._receive1(self.tsr)
            elif self.chardev is not None:
                self.chardev.write(bytes((self.tsr,)))
            if self.lsr & LSR_THRE:
                break
        self.lsr |= LSR_TEMT

    def _receive1(self, b):
        if self.fcr & FCR_FE:
            if self.rx.is_full():
                self.lsr |= LSR_OE  # overruns never overwrite FIFO contents
            else:
                self.rx.push(b)
            self.lsr |= LSR_DR
            self.rx_timer_armed = True
        else:
            if self.lsr & LSR_DR:
                self.lsr |= LSR_OE
            self.rbr = b & 0xFF
            self.lsr |= LSR_DR
        self._update_irq()

    def can_receive(self):
        """How many bytes the back end should offer now (QEMU's flow control)."""
        if self.fcr & FCR_FE:
            n = self.rx.num
            if n >= FIFO_LEN:
                return 0
            # Offer up to the trigger level, then a byte at a time, so the
            # guest sees its trigger level rather than a full FIFO.
            return self.itl - n if n <= self.itl else 1
        return 0 if (self.lsr & LSR_DR) else 1

    def receive(self, data):
        """Bytes from the back end. Extra bytes are dropped with LSR.OE set."""
        for b in data:
            self._receive1(b)

    def receive_break(self):
        """A break condition on the line (datasheet 8.3, LSR bit 4)."""
        self.rbr = 0
        if self.fcr & FCR_FE:
            if self.rx.is_full():
                self.lsr |= LSR_OE
            else:
                self.rx.push(0)
        self.lsr |= LSR_BI | LSR_DR
        self._update_irq()

    def rx_timeout(self):
        """The character-timeout timer expired (datasheet 8.5, IIR 0x0C)."""
        self.rx_timer_armed = False
        if self.rx.num:
            self.timeout_ipending = 1
            self._update_irq()

    def set_modem_lines(self, cts, dsr, ri, dcd):
        """Modem inputs from the back end; sets MSR delta bits on change."""
        old = self.msr
        new = old & ~(MSR_CTS | MSR_DSR | MSR_RI | MSR_DCD)
        if cts:
            new |= MSR_CTS
        if dsr:
            new |= MSR_DSR
        if ri:
            new |= MSR_RI
        if dcd:
            new |= MSR_DCD
        if new != old:
            new |= ((new >> 4) ^ (old >> 4)) & MSR_ANY_DELTA
            # TERI only on a trailing edge of RI (1 -> 0).
            if (new & MSR_TERI) and not (old & MSR_RI):
                new &= ~MSR_TERI
            self.msr = new & 0xFF
            self._update_irq()

    # -- guest access ------------------------------------------------------

    def read(self, offset, size):
        if size not in (1, 2, 4, 8):
            log.guest_error(self.name, "read of size %d at %d" % (size, offset))
            size = 1
        if size == 1:
            if 0 <= offset < WINDOW:
                return self._read8(offset)
            log.guest_error(self.name, "read outside the window at %d" % offset)
            return 0xFF
        val = 0
        for i in range(size):
            o = offset + i
            b = self._read8(o) if 0 <= o < WINDOW else 0xFF
            val |= b << (8 * i)
        return val

    def write(self, offset, size, value):
        if size not in (1, 2, 4, 8):
            log.guest_error(self.name, "write of size %d at %d" % (size, offset))
            size = 1
        for i in range(size):
            o = offset + i
            if 0 <= o < WINDOW:
                self._write8(o, (value >> (8 * i)) & 0xFF)
            else:
                log.guest_error(self.name, "write outside the window at %d" % o)

    # -- whole reps to one port (stubdm/ioreq.py) --------------------------
    # Exactly what `count` single accesses do, done at once where the
    # outcome is known without replaying each: the IRQ level only matters
    # when the request ends (the machine latches it), so the interrupt
    # logic runs once at the end.

    def read_rep(self, offset, size, count, buf):
        if size != 1 or not 0 <= offset < WINDOW:
            return False
        if offset == REG_RBR and not (self.lcr & LCR_DLAB):
            if self.fcr & FCR_FE:
                rx = self.rx
                n0 = rx.num
                k = min(n0, count)
                for i in range(k):
                    buf[i] = rx.pop()
                if k < count:
                    buf[k:count] = bytes(count - k)  # an empty FIFO reads 0
                if n0 >= 2:
                    self.rx_timer_armed = True  # some read left bytes behind
                if rx.num == 0:
                    self.lsr &= ~(LSR_DR | LSR_BI)
                self.timeout_ipending = 0
                self._update_irq()
                return True
            # No FIFO: every read gives RBR and clears DR.
            v = self.rbr
            self.lsr &= ~(LSR_DR | LSR_BI)
            self._update_irq()
            buf[0:count] = bytes((v,)) * count
            return True
        # Every other register: a first read may clear what it reports (IIR's
        # THRE, LSR's errors, MSR's deltas); after that it reads the same with
        # no effect.
        buf[0] = self._read8(offset)
        if count > 1:
            buf[1:count] = bytes((self._read8(offset),)) * (count - 1)
        return True

    def write_rep(self, offset, size, count, buf):
        if size != 1 or not 0 <= offset < WINDOW:
            return False
        dlab = self.lcr & LCR_DLAB
        if offset == REG_THR and not dlab:
            if self.fcr & FCR_FE and self.tx.num:
                return False  # older bytes queued first: one by one
            # Each byte goes into THR (the TX FIFO, when on), out at once, and
            # THR is empty again: the line sees the bytes, THRE ends pending.
            last = buf[count - 1]
            self.thr = last
            self.tsr = last
            if self.fcr & FCR_FE:
                # Where count pushes and pops leave the (empty) FIFO's ring.
                tx = self.tx
                for j in range(max(0, count - tx.size), count):
                    tx.buf[(tx.head + j) % tx.size] = buf[j]
                tx.head = (tx.head + count) % tx.size
            self.lsr |= LSR_THRE | LSR_TEMT
            self.thr_ipending = 1
            if self.mcr & MCR_LOOP:
                # Loopback: each byte is received; what finds the FIFO full
                # (or, without FIFOs, RBR unread) is an overrun.
                if self.fcr & FCR_FE:
                    rx = self.rx
                    k = min(count, rx.size - rx.num)
                    for i in range(k):
                        rx.push(buf[i])
                    if k < count:
                        self.lsr |= LSR_OE
                    self.rx_timer_armed = True
                else:
                    if self.lsr & LSR_DR or count > 1:
                        self.lsr |= LSR_OE
                    self.rbr = last
                self.lsr |= LSR_DR
            elif self.chardev is not None:
                self.chardev.write(bytes(buf))
            self._update_irq()
            return True
        if offset == REG_FCR:
            # Each write may flush the FIFOs (its reset bits, or a change of
            # FIFO enable); a flush of an empty FIFO changes nothing, so one
            # flush each does what any number of them do. The last value stays.
            fcr = self.fcr
            rx = tx = 0
            for i in range(count):
                v = buf[i]
                if (v ^ fcr) & FCR_FE:
                    rx = tx = 1
                else:
                    rx |= v & FCR_RFR
                    tx |= v & FCR_XFR
                fcr = v & FCR_STICKY
            if rx:
                self.lsr &= ~(LSR_DR | LSR_BI)
                self.rx_timer_armed = False
                self.timeout_ipending = 0
                self.rx.reset()
            if tx:
                self.lsr |= LSR_THRE
                self.thr_ipending = 1
                self.tx.reset()
            self._write_fcr(fcr)
            self._update_irq()
            return True
        if offset == REG_IER and not dlab:
            # Only the THRI edges act (on thr_ipending); the last edge decides.
            ier = self.ier
            edge = False
            changed = False
            for i in range(count):
                v = buf[i] & 0x0F
                if ier != v:
                    changed = True
                    if (ier ^ v) & IER_THRI:
                        edge = True
                ier = v
            self.ier = ier
            if edge:
                if (ier & IER_THRI) and (self.lsr & LSR_THRE):
                    self.thr_ipending = 1
                else:
                    self.thr_ipending = 0
            if changed:
                self._update_irq()
            return True
        # DLL, DLM, LCR, MCR and SCR latch what is written, with no other
        # effect: the last value is what count writes leave; LSR and MSR drop it.
        self._write8(offset, buf[count - 1])
        return True

    def _read8(self, addr):
        if addr == REG_RBR:
            if self.lcr & LCR_DLAB:
                return self.divider & 0xFF
            if self.fcr & FCR_FE:
                ret = self.rx.pop() if self.rx.num else 0
                if self.rx.num == 0:
                    self.lsr &= ~(LSR_DR | LSR_BI)
                else:
                    self.rx_timer_armed = True
                self.timeout_ipending = 0
            else:
                ret = self.rbr
                self.lsr &= ~(LSR_DR | LSR_BI)
            self._update_irq()
            return ret
        if addr == REG_IER:
            if self.lcr & LCR_DLAB:
                return (self.divider >> 8) & 0xFF
            return self.ier
        if addr == REG_IIR:
            ret = self.iir
            # Reading IIR while it names THRE clears that source (8.5).
            if (ret & IIR_ID) == IIR_THRI:
                self.thr_ipending = 0
                self._update_irq()
            return ret
        if addr == REG_LCR:
            return self.lcr
        if addr == REG_MCR:
            return self.mcr
        if addr == REG_LSR:
            ret = self.lsr
            # Reading LSR clears the error bits (8.3); QEMU clears BI and OE.
            if self.lsr & (LSR_BI | LSR_OE):
                self.lsr &= ~(LSR_BI | LSR_OE)
                self._update_irq()
            return ret
        if addr == REG_MSR:
            if self.mcr & MCR_LOOP:
                # Loopback (8.7): outputs feed inputs. OUT1->RI, OUT2->DCD,
                # RTS->CTS, DTR->DSR.
                mcr = self.mcr
                return ((mcr & 0x0C) << 4) | ((mcr & MCR_RTS) << 3) | ((mcr & MCR_DTR) << 5)
            ret = self.msr
            if self.msr & MSR_ANY_DELTA:
                self.msr &= 0xF0
                self._update_irq()
            return ret
        return self.scr

    def _write8(self, addr, val):
        if addr == REG_THR:
            if self.lcr & LCR_DLAB:
                self.divider = (self.divider & 0xFF00) | val
                return
            self.thr = val
            if self.fcr & FCR_FE:
                if self.tx.is_full():
                    self.tx.pop()  # TX overrun: the oldest byte is lost
                self.tx.push(val)
            self.thr_ipending = 0
            self.lsr &= ~(LSR_THRE | LSR_TEMT)
            self._update_irq()
            self._xmit()
        elif addr == REG_IER:
            if self.lcr & LCR_DLAB:
                self.divider = (self.divider & 0x00FF) | (val << 8)
                return
            changed = (self.ier ^ val) & 0x0F
            self.ier = val & 0x0F
            # Setting IER.THRI while THR is empty raises THRE at once, even
            # if an IIR read had cleared it (not in the datasheet; Windows
            # relies on it, and QEMU does it on the rising edge).
            if changed & IER_THRI:
                if (self.ier & IER_THRI) and (self.lsr & LSR_THRE):
                    self.thr_ipending = 1
                else:
                    self.thr_ipending = 0
            if changed:
                self._update_irq()
        elif addr == REG_FCR:
            # Toggling FIFO enable flushes both FIFOs (8.6).
            if (val ^ self.fcr) & FCR_FE:
                val |= FCR_XFR | FCR_RFR
            if val & FCR_RFR:
                self.lsr &= ~(LSR_DR | LSR_BI)
                self.rx_timer_armed = False
                self.timeout_ipending = 0
                self.rx.reset()
            if val & FCR_XFR:
                self.lsr |= LSR_THRE
                self.thr_ipending = 1
                self.tx.reset()
            self._write_fcr(val & FCR_STICKY)
            self._update_irq()
        elif addr == REG_LCR:
            self.lcr = val
        elif addr == REG_MCR:
            self.mcr = val & MCR_MASK
        elif addr == REG_SCR:
            self.scr = val
        # LSR and MSR writes: the datasheet calls them factory test; dropped.

    def _write_fcr(self, val):
        self.fcr = val
        if val & FCR_FE:
            self.iir |= IIR_FE
            self.itl = _ITL[val >> 6]
        else:
            self.iir &= ~IIR_FE & 0xFF
