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

# The slot's fields the hot path reads, as constants MicroPython folds into
# the code (an attribute of the abi module is a lookup each time): the same
# values as abi's, which tests/test_ioreq.py checks.
_TYPE_PIO = const(0)  # abi.IOREQ_TYPE_PIO
_TYPE_COPY = const(1)  # abi.IOREQ_TYPE_COPY
_SLOT_SIZE = const(32)  # abi.IOREQ_SIZE
_OFF_DATA = const(8)  # abi.IOREQ_OFF_DATA
_OFF_COUNT = const(16)  # abi.IOREQ_OFF_COUNT
_OFF_FLAGS = const(30)  # abi.IOREQ_OFF_FLAGS
_OFF_TYPE = const(31)  # abi.IOREQ_OFF_TYPE
_STATE_MASK = const(0x0F)
_READY = const(1)  # abi.STATE_IOREQ_READY
_INPROCESS = const(2)
_RESP_READY = const(3)
_IS_PTR = const(0x10)
_DIR_READ = const(0x20)
_DF = const(0x40)
_PIO_SIZES = (1, 2, 4)
_MMIO_SIZES = (1, 2, 4, 8)


def _mask(size):
    return (1 << (8 * size)) - 1


def _reverse_items(b, size, count):
    """The items of b (count of `size` bytes) in the opposite order."""
    out = bytearray(count * size)
    if size == 1:
        for i in range(count):
            out[count - 1 - i] = b[i]
        return out
    for i in range(count):
        o = (count - 1 - i) * size
        out[o : o + size] = b[i * size : (i + 1) * size]
    return out


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
        self.rep_bulk = True  # hand whole reps to devices that take them (tests turn it off)

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

    def access(self, type_, addr, data, count, size, is_read):
        """dispatch() of a single port or MMIO access (not data_is_ptr): the
        request nearly every guest exit is, by a shorter path.

        Nothing here allocates from the heap: on MicroPython an allocation
        of more than one GC block walks the heap's allocation table past
        everything freed since the last collection (py/gc.c), microseconds
        per access.
        """
        if type_ == _TYPE_PIO:
            bus = self.pio
            if size not in _PIO_SIZES or addr > 0xFFFF or count == 0:
                return self.dispatch(type_, addr, data, count, size, is_read, 0, 0)
        else:
            bus = self.mmio
            if size not in _MMIO_SIZES or count == 0:
                return self.dispatch(type_, addr, data, count, size, is_read, 0, 0)
        # The IRQ latch held for the access, as hold()/release() (inline:
        # two method calls were a tenth of an access on MicroPython).
        irqs = self.irqs
        if irqs is not None:
            irqs.held += 1
        try:
            r = bus.last
            if r is None or addr < r.start or addr + size > r.end:
                if is_read:
                    return bus.read(addr, size) & ((1 << (8 * size)) - 1)
                bus.write(addr, size, data & ((1 << (8 * size)) - 1))
                return data
            if is_read:
                return r.dev.read(addr - r.start, size) & ((1 << (8 * size)) - 1)
            r.dev.write(addr - r.start, size, data & ((1 << (8 * size)) - 1))
            return data
        finally:
            if irqs is not None:
                irqs.held -= 1
                if irqs.dirty and not irqs.held:
                    irqs.flush()

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
        mem = self.mem
        total = count * size
        lo = data - (count - 1) * size if df else data
        whole = 0 <= lo and lo + total <= _ALL_ONES
        if is_read:
            buf = bytearray(total)  # the items in the order the device gives them
            if type_ == abi.IOREQ_TYPE_PIO:
                self._port_rep_read(bus, addr, size, count, buf)
            else:
                self._mmio_rep_read(bus, addr, size, count, buf, df)
            if df:
                buf = _reverse_items(buf, size, count)  # item i at data - i*size
            if whole and mem.write(lo, buf):
                return data
            # Some of it is not RAM: the items as far as RAM goes, in one block.
            n = self._ram_items(data, size, count, df)
            if n:
                o = (count - n) * size if df else 0
                mem.write(data - (n - 1) * size if df else data, buf[o : o + n * size])
            gpa = (data + (-n if df else n) * size) & _ALL_ONES
            log.guest_error(bus.name, "rep read into %#x: not guest RAM" % gpa)
            return data
        block = mem.read(lo, total) if whole else None
        if block is None:
            # Not all RAM: the items up to the first that is not.
            n = self._ram_items(data, size, count, df)
            gpa = (data + (-n if df else n) * size) & _ALL_ONES
            log.guest_error(bus.name, "rep write from %#x: not guest RAM" % gpa)
            block = mem.read(data - (n - 1) * size if df else data, n * size) if n else b""
            count = n
        if df and count:
            block = _reverse_items(block, size, count)
        if count:
            if type_ == abi.IOREQ_TYPE_PIO:
                self._port_rep_write(bus, addr, size, count, block)
            else:
                self._mmio_rep_write(bus, addr, size, count, block, df)
        return data

    def _ram_items(self, data, size, count, df):
        """How many items from item 0 on are guest RAM (a block of n items is
        RAM exactly when each is): found by halving, a few reads, not count."""
        mem = self.mem
        lo, hi = 0, count  # item counts: lo known RAM, hi + 1 known not
        while lo < hi:
            n = (lo + hi + 1) // 2
            start = data - (n - 1) * size if df else data
            if 0 <= start and start + n * size <= _ALL_ONES + 1 and \
                    mem.read(start, n * size) is not None:
                lo = n
            else:
                hi = n - 1
        return lo

    # Rep items are handed to devices in the order the guest makes them:
    # item i at buf[i*size:(i+1)*size], little-endian. A device may take a
    # whole rep to one port at once with read_rep(offset, size, count, buf)
    # (buf a writable memoryview of count*size bytes to fill) or
    # write_rep(offset, size, count, buf) (buf read-only); either returns
    # True when it has done exactly what count single accesses would have
    # done, and anything else (having done nothing) to get single accesses.

    def _port_rep_read(self, bus, addr, size, count, buf):
        r = bus.find(addr)
        if r is None or addr + size > r.end:
            # Unclaimed: all ones, and one log line for the whole rep.
            log.guest_error(bus.name, "rep read of %d x %d bytes at %#x: nothing there"
                            % (count, size, addr))
            buf[:] = b"\xff" * len(buf)
            return
        dev = r.dev
        off = addr - r.start
        if self.rep_bulk:
            rep = getattr(dev, "read_rep", None)
            if rep is not None and rep(off, size, count, memoryview(buf)) is True:
                return
        read = dev.read
        m = _mask(size)
        if size == 1:
            for i in range(count):
                buf[i] = read(off, 1) & 0xFF
            return
        for i in range(count):
            buf[i * size : (i + 1) * size] = (read(off, size) & m).to_bytes(size, "little")

    def _port_rep_write(self, bus, addr, size, count, block):
        r = bus.find(addr)
        if r is None or addr + size > r.end:
            log.guest_error(bus.name, "rep write of %d x %d bytes at %#x: nothing there"
                            % (count, size, addr))
            return
        dev = r.dev
        off = addr - r.start
        if self.rep_bulk:
            rep = getattr(dev, "write_rep", None)
            if rep is not None and rep(off, size, count, memoryview(block)) is True:
                return
        write = dev.write
        if size == 1:
            for i in range(count):
                write(off, 1, block[i])
            return
        for i in range(count):
            write(off, size, int.from_bytes(block[i * size : (i + 1) * size], "little"))

    def _mmio_items(self, bus, addr, size, count, df):
        """(range, n): the first n items from `addr` on (stepping by size, down
        if df) all decode in that one range, or (None, n): none of them
        decodes anywhere."""
        r = bus.find(addr)
        if r is not None and addr + size <= r.end:
            # The items stay inside r as long as their address does.
            n = (addr - r.start) // size + 1 if df else (r.end - addr) // size
            return r, min(n, count)
        # Nothing decodes this item: skip to the first item that lands in the
        # next range in the direction of travel (or to the address wrap).
        if df:
            n = addr // size + 1  # items down to address 0
            for q in bus.ranges:
                if q.start + size <= addr:
                    x = min(q.end - size, addr - size)  # the highest start that fits
                    n = min(n, (addr - x + size - 1) // size)
        else:
            n = (_ALL_ONES - addr) // size + 1  # items up to the wrap
            for q in bus.ranges:
                if q.start > addr:
                    n = min(n, (q.start - addr + size - 1) // size)
        return None, max(1, min(n, count))

    def _mmio_rep_read(self, bus, addr, size, count, buf, df):
        step = -size if df else size
        m = _mask(size)
        i = 0
        while i < count:
            a = (addr + i * step) & _ALL_ONES
            r, n = self._mmio_items(bus, a, size, count - i, df)
            if r is None:
                log.guest_error(bus.name, "rep read of %d x %d bytes at %#x: nothing there"
                                % (n, size, a))
                buf[i * size : (i + n) * size] = b"\xff" * (n * size)
            else:
                read = r.dev.read
                off = a - r.start
                for j in range(i, i + n):
                    buf[j * size : (j + 1) * size] = (read(off, size) & m).to_bytes(size, "little")
                    off += step
            i += n

    def _mmio_rep_write(self, bus, addr, size, count, block, df):
        step = -size if df else size
        i = 0
        while i < count:
            a = (addr + i * step) & _ALL_ONES
            r, n = self._mmio_items(bus, a, size, count - i, df)
            if r is None:
                log.guest_error(bus.name, "rep write of %d x %d bytes at %#x: nothing there"
                                % (n, size, a))
            else:
                write = r.dev.write
                off = a - r.start
                for j in range(i, i + n):
                    write(off, size, int.from_bytes(block[j * size : (j + 1) * size], "little"))
                    off += step
            i += n

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
        off = vcpu * _SLOT_SIZE
        flags = page[off + _OFF_FLAGS]
        state = flags & _STATE_MASK
        if state != _READY:
            if state > _RESP_READY:
                log.guest_error("ioreq", "vcpu %d slot in unknown state %d" % (vcpu, state))
            return
        t0 = ticks_us()
        hyp = self.hyp
        hyp.barrier()  # read the request only after seeing READY
        # Two fields at a time: a tuple of two fits one MicroPython GC block
        # (see Dispatcher.access), the slot's eight would not.
        addr, data = struct.unpack_from("<QQ", page, off)
        count, size = struct.unpack_from("<II", page, off + _OFF_COUNT)
        flags = page[off + _OFF_FLAGS]
        type_ = page[off + _OFF_TYPE]
        keep = flags & ~_STATE_MASK
        page[off + _OFF_FLAGS] = keep | _INPROCESS
        if type_ <= _TYPE_COPY and not flags & _IS_PTR:
            data = self.d.access(type_, addr, data, count, size, flags & _DIR_READ)
        else:
            data = self.d.dispatch(type_, addr, data, count, size, flags & _DIR_READ,
                                   flags & _IS_PTR, flags & _DF)
        if self.flush is not None:
            self.flush()
        if data < 0 or data >> 64:
            data &= _ALL_ONES
        struct.pack_into("<Q", page, off + _OFF_DATA, data)
        hyp.barrier()  # the data must be visible before IORESP_READY
        page[off + _OFF_FLAGS] = keep | _RESP_READY
        self.busy_us += ticks_diff(ticks_us(), t0)
        self.handled += 1
        hyp.notify(self.ports[vcpu])

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
