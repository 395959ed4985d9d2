# Address decoding for port I/O and MMIO: ranges of the guest's port and
# physical address spaces, each owned by a device core (read/write at an
# offset). The ioreq loop dispatches into these; unclaimed reads are all ones.
from stubdm import log


class IoRange:
    def __init__(self, start, length, dev, name):
        self.start = start
        self.end = start + length  # exclusive
        self.dev = dev
        self.name = name


class IoBus:
    """One address space (ports or memory). Ranges never overlap."""

    def __init__(self, name):
        self.name = name
        self.ranges = []
        self.last = None  # the range the last find() gave (the ioreq loop looks there first)

    def add(self, start, length, dev, name=""):
        if length <= 0:
            raise ValueError("empty range")
        for r in self.ranges:
            if start < r.end and r.start < start + length:
                raise ValueError(
                    "%s range %#x+%#x of %s overlaps %s" % (self.name, start, length, name, r.name)
                )
        r = IoRange(start, length, dev, name)
        self.ranges.append(r)
        return r

    def remove(self, r):
        if r in self.ranges:
            self.ranges.remove(r)
        if self.last is r:
            self.last = None

    def find(self, addr):
        r = self.last
        if r is not None and r.start <= addr < r.end:
            return r
        for r in self.ranges:
            if r.start <= addr < r.end:
                self.last = r
                return r
        return None

    def read(self, addr, size):
        r = self.find(addr)
        if r is None or addr + size > r.end:
            log.guest_error(self.name, "read of %d bytes at %#x: nothing there" % (size, addr))
            return (1 << (8 * size)) - 1
        return r.dev.read(addr - r.start, size)

    def write(self, addr, size, value):
        r = self.find(addr)
        if r is None or addr + size > r.end:
            log.guest_error(
                self.name, "write of %d bytes at %#x: nothing there (%#x)" % (size, addr, value)
            )
            return
        r.dev.write(addr - r.start, size, value)


# Whole reps. A device on a bus may offer read_rep(offset, size, count, buf)
# and write_rep(offset, size, count, buf) for `count` accesses of `size` bytes
# to the one offset (a rep ins/outs to a port): item i is buf[i*size:
# (i+1)*size], little-endian, in the order the guest makes them; buf is a
# memoryview the device fills (read) or reads (write). Either returns True
# when it has done exactly what the single accesses would have done, or
# anything else, having done nothing, to get them one by one
# (stubdm/ioreq.py).


def fill_rep(buf, value, size, count):
    """Every item of buf is `value`: a register that reads with no effect."""
    if size == 1:
        buf[0:count] = bytes((value & 0xFF,)) * count
    else:
        buf[0 : count * size] = (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little") * count
