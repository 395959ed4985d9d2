# The ioreq loop: Xen's side of every emulated access arrives here as an
# ioreq_t in the shared page (one slot per vCPU) or as an 8-byte item in the
# buffered page, and is dispatched to the port, MMIO or PCI-config handlers
# (DESIGN.md section 5). Everything in a request came from the guest or from
# the hypervisor on its behalf: it is range-checked before use.
import struct

from stubdm import abi, log
from stubdm.compat import const, ticks_diff, ticks_us

_ALL_ONES = const(0xFFFFFFFFFFFFFFFF)
_MAX_REP_BYTES = const(4096)  # Xen keeps one rep request within a page


def _mask(size):
    return (1 << (8 * size)) - 1


def _ones(size):
    """All ones as wide as the access (a refused read must not answer wider)."""
    return _mask(size) if 1 <= size <= 8 else _ALL_ONES


class Dispatcher:
    """Carries out one request against the machine's buses.

    pio, mmio: stubdm.bus.IoBus; pci: stubdm.pci.PciBus (find(devfn) gives
    the function or None); mem: guest memory with read(gpa, n) -> bytes or None,
    write(gpa, data) -> bool, invalidate(). irqs, if given, has hold() and
    release() (stubdm.machine.IrqLatch): IRQ levels the request changes reach
    the platform once, when it is done, before its answer.
    """

    def __init__(self, pio, mmio, pci, mem, irqs=None):
        self.pio = pio
        self.mmio = mmio
        self.pci = pci
        self.mem = mem
        self.irqs = irqs
        self.time_offset = 0
        self.on_timeoffset = None

    def dispatch(self, type_, addr, data, count, size, is_read, is_ptr, df):
        """Returns the new value of the request's data field."""
        irqs = self.irqs
        if irqs is None:
            return self._dispatch(type_, addr, data, count, size, is_read, is_ptr, df)
        irqs.hold()
        try:
            return self._dispatch(type_, addr, data, count, size, is_read, is_ptr, df)
        finally:
            irqs.release()

    def _dispatch(self, type_, addr, data, count, size, is_read, is_ptr, df):
        if type_ == abi.IOREQ_TYPE_PIO or type_ == abi.IOREQ_TYPE_COPY:
            return self._io(type_, addr, data, count, size, is_read, is_ptr, df)
        if type_ == abi.IOREQ_TYPE_PCI_CONFIG:
            if is_ptr:
                return self._pci_rep(addr, data, count, size, is_read, df)
            return self._pci(addr, data, size, is_read)
        if type_ == abi.IOREQ_TYPE_INVALIDATE:
            self.mem.invalidate()
            return data
        if type_ == abi.IOREQ_TYPE_TIMEOFFSET:
            # The guest moved its RTC: Xen tells us the new offset in seconds.
            off = data
            if off & 0x8000000000000000:
                off -= 1 << 64
            self.time_offset = off
            if self.on_timeoffset is not None:
                self.on_timeoffset(off)
            return data
        log.guest_error("ioreq", "unknown request type %d" % type_)
        return _ones(size) if is_read else data

    def _io(self, type_, addr, data, count, size, is_read, is_ptr, df):
        bus = self.pio if type_ == abi.IOREQ_TYPE_PIO else self.mmio
        ok_sizes = (1, 2, 4) if type_ == abi.IOREQ_TYPE_PIO else (1, 2, 4, 8)
        if size not in ok_sizes:
            log.guest_error(bus.name, "access of size %d at %#x" % (size, addr))
            return _ones(size) if is_read else data
        if count == 0 or (is_ptr and count * size > _MAX_REP_BYTES):
            log.guest_error(bus.name, "rep count %d of size %d at %#x" % (count, size, addr))
            return _ones(size) if is_read and not is_ptr else data
        if type_ == abi.IOREQ_TYPE_PIO and addr > 0xFFFF:
            log.guest_error(bus.name, "port %#x out of range" % addr)
            return _ones(size) if is_read else data
        if not is_ptr:
            # A non-pointer request is one access whatever count says (as QEMU).
            if is_read:
                return bus.read(addr, size) & _mask(size)
            bus.write(addr, size, data & _mask(size))
            return data
        # Rep string I/O: item i of guest memory is at data +/- i*size; for
        # MMIO the device address steps too, a port stays put. Guest memory
        # is copied as one block (Xen keeps it within a page) when it can be.
        step = -size if df else size
        dev_step = 0 if type_ == abi.IOREQ_TYPE_PIO else step
        mem = self.mem
        total = count * size
        lo = data - (count - 1) * size if df else data
        whole = 0 <= lo and lo + total <= _ALL_ONES
        if is_read:
            buf = bytearray(total)
            read = None
            if dev_step == 0:  # every item from the same port: find its device once
                r = bus.find(addr)
                if r is not None and addr + size <= r.end:
                    read = r.dev.read
                    off = addr - r.start
            m = _mask(size)
            for i in range(count):
                if read is not None:
                    v = read(off, size) & m
                else:
                    v = bus.read((addr + i * dev_step) & _ALL_ONES, size) & m
                o = (count - 1 - i) * size if df else i * size
                buf[o : o + size] = v.to_bytes(size, "little")
            if whole and mem.write(lo, buf):
                return data
            for i in range(count):  # some of it is not RAM: as far as it goes
                gpa = (data + i * step) & _ALL_ONES
                o = (count - 1 - i) * size if df else i * size
                if not mem.write(gpa, buf[o : o + size]):
                    log.guest_error(bus.name, "rep read into %#x: not guest RAM" % gpa)
                    break
            return data
        block = mem.read(lo, total) if whole else None
        if block is not None and dev_step == 0:
            # Every item to the same port: find its device once.
            r = bus.find(addr)
            if r is not None and addr + size <= r.end:
                write = r.dev.write
                off = addr - r.start
                for i in range(count):
                    o = (count - 1 - i) * size if df else i * size
                    write(off, size, int.from_bytes(block[o : o + size], "little"))
                return data
        for i in range(count):
            if block is not None:
                o = (count - 1 - i) * size if df else i * size
                b = block[o : o + size]
            else:
                gpa = (data + i * step) & _ALL_ONES
                b = mem.read(gpa, size)
                if b is None:
                    log.guest_error(bus.name, "rep write from %#x: not guest RAM" % gpa)
                    break
            bus.write((addr + i * dev_step) & _ALL_ONES, size, int.from_bytes(b, "little"))
        return data

    def _pci_rep(self, addr, data, count, size, is_read, df):
        # rep ins/outs on 0xcfc-0xcff while CONFIG_ADDRESS is enabled: Xen
        # sends it as one PCI_CONFIG ioreq with data_is_ptr (qemu-xen aborts
        # on it). It is the same register accessed count times, as a port.
        if size not in (1, 2, 4) or count == 0 or count * size > _MAX_REP_BYTES:
            log.guest_error("pci", "rep config access: count %d of size %d" % (count, size))
            return data
        step = -size if df else size
        mem = self.mem
        for i in range(count):
            gpa = (data + i * step) & _ALL_ONES
            if is_read:
                v = self._pci(addr, 0, size, 1)
                if not mem.write(gpa, (v & _mask(size)).to_bytes(size, "little")):
                    log.guest_error("pci", "rep config read into %#x: not guest RAM" % gpa)
                    break
            else:
                b = mem.read(gpa, size)
                if b is None:
                    log.guest_error("pci", "rep config write from %#x: not guest RAM" % gpa)
                    break
                self._pci(addr, int.from_bytes(b, "little"), size, 0)
        return data

    def _pci(self, addr, data, size, is_read):
        sbdf = addr >> abi.PCI_SBDF_SHIFT
        reg = addr & 0xFFFFFFFF
        devfn = sbdf & 0xFF
        if size not in (1, 2, 4) or reg >= 256 or sbdf >> 8:
            log.guest_error(
                "pci", "config access %04x:%02x:%02x.%d reg %#x size %d"
                % (sbdf >> 16, (sbdf >> 8) & 0xFF, devfn >> 3, devfn & 7, reg, size)
            )
            return _ones(size) if is_read else data
        f = self.pci.find(devfn)
        if f is None:
            log.guest_error(
                "pci", "config %s of absent %02x.%d" % ("read" if is_read else "write",
                                                       devfn >> 3, devfn & 7)
            )
            return _mask(size) if is_read else data
        if is_read:
            return f.config_read(reg, size) & _mask(size)
        f.config_write(reg, size, data & _mask(size))
        return data


class IoreqLoop:
    """The shared and buffered ioreq pages of one ioreq server.

    hyp provides barrier(), notify(port), bufioreq_consume(page, n);
    ports[i] is the local event channel port bound to vCPU i's vp_eport;
    flush(), if given, runs after each request's work and before its answer
    (back ends that batch output write it out then).
    """

    def __init__(self, hyp, dispatcher, ioreq_page, ports, buf_page=None, buf_port=None,
                 flush=None):
        self.hyp = hyp
        self.d = dispatcher
        self.page = ioreq_page
        self.buf = buf_page
        self.buf_port = buf_port
        self.ports = ports
        self.flush = flush
        self.vcpu_of_port = {}
        for i in range(len(ports)):
            self.vcpu_of_port[ports[i]] = i
        self.handled = 0
        self.buffered = 0
        self.busy_us = 0  # READY seen to IORESP_READY set, summed

    def on_port(self, port):
        """An event channel fired: finish buffered writes, then the vCPU's request."""
        self.drain_buffered()
        vcpu = self.vcpu_of_port.get(port)
        if vcpu is not None:
            self.handle_slot(vcpu)
        elif port != self.buf_port:
            log.debug("ioreq", "event on unknown port %d" % port)

    def handle_slot(self, vcpu):
        page = self.page
        off = vcpu * abi.IOREQ_SIZE
        flags = page[off + abi.IOREQ_OFF_FLAGS]
        state = flags & abi.STATE_MASK
        if state != abi.STATE_IOREQ_READY:
            if state > abi.STATE_IORESP_READY:
                log.guest_error("ioreq", "vcpu %d slot in unknown state %d" % (vcpu, state))
            return
        t0 = ticks_us()
        self.hyp.barrier()  # read the request only after seeing READY
        addr, data, count, size, _port, _pad, flags, type_ = struct.unpack_from(
            abi.IOREQ_FMT, page, off
        )
        keep = flags & ~abi.STATE_MASK
        page[off + abi.IOREQ_OFF_FLAGS] = keep | abi.STATE_IOREQ_INPROCESS
        data = self.d.dispatch(
            type_,
            addr,
            data,
            count,
            size,
            flags & abi.FLAG_DIR_READ,
            flags & abi.FLAG_DATA_IS_PTR,
            flags & abi.FLAG_DF,
        )
        if self.flush is not None:
            self.flush()
        struct.pack_into("<Q", page, off + abi.IOREQ_OFF_DATA, data & _ALL_ONES)
        self.hyp.barrier()  # the data must be visible before IORESP_READY
        page[off + abi.IOREQ_OFF_FLAGS] = keep | abi.STATE_IORESP_READY
        self.busy_us += ticks_diff(ticks_us(), t0)
        self.handled += 1
        self.hyp.notify(self.ports[vcpu])

    def drain_buffered(self):
        buf = self.buf
        if buf is None:
            return
        rp, wp = struct.unpack_from("<II", buf, 0)
        pending = (wp - rp) & 0xFFFFFFFF
        if pending == 0:
            return
        self.hyp.barrier()
        if pending > abi.IOREQ_BUFFER_SLOT_NUM:
            log.guest_error("ioreq", "buffered ring pointers %d/%d inconsistent" % (rp, wp))
            self.hyp.bufioreq_consume(buf, pending)
            return
        irqs = getattr(self.d, "irqs", None)
        if irqs is not None:
            irqs.hold()  # the whole batch reports its IRQ changes once
        try:
            done = self._drain(buf, rp, pending)
        finally:
            if irqs is not None:
                irqs.release()
        if self.flush is not None:
            self.flush()
        self.hyp.barrier()
        self.hyp.bufioreq_consume(buf, done)

    def _drain(self, buf, rp, pending):
        done = 0
        while done < pending:
            slot = (rp + done) % abi.IOREQ_BUFFER_SLOT_NUM
            w0, lo = struct.unpack_from("<II", buf, abi.BUFIOREQ_OFF_SLOTS + slot * 8)
            size = 1 << ((w0 >> abi.BUF_SIZE_SHIFT) & 3)
            n = 1
            if size == 8:
                if done + 1 >= pending:
                    break  # second half not published yet
                slot2 = (rp + done + 1) % abi.IOREQ_BUFFER_SLOT_NUM
                hi = struct.unpack_from("<I", buf, abi.BUFIOREQ_OFF_SLOTS + slot2 * 8 + 4)[0]
                lo |= hi << 32
                n = 2
            type_ = w0 & abi.BUF_TYPE_MASK
            addr = (w0 >> abi.BUF_ADDR_SHIFT) & abi.BUF_ADDR_MASK
            if (w0 >> abi.BUF_DIR_SHIFT) & 1:
                log.guest_error("ioreq", "buffered read at %#x dropped" % addr)
            else:
                self.d.dispatch(type_, addr, lo, 1, size, 0, 0, 0)
            done += n
            self.buffered += 1
        return done
