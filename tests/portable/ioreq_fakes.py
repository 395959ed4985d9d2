# Stand-ins for the ioreq loop's surroundings: the hypervisor calls, guest
# RAM, a register file, and the slot helpers. Shared by tests/test_ioreq.py
# (CPython) and tests/portable/ioreq_script.py (both interpreters), so they
# use only what MicroPython has.
import struct

from stubdm import abi


class Hyp:
    def __init__(self):
        self.notified = []
        self.barriers = 0

    def barrier(self):
        self.barriers += 1

    def notify(self, port):
        self.notified.append(port)

    def bufioreq_consume(self, page, n):
        rp = struct.unpack_from("<I", page, 0)[0]
        struct.pack_into("<I", page, 0, (rp + n) & 0xFFFFFFFF)


class Ram:
    def __init__(self, size):
        self.size = size
        self.b = bytearray(size)
        self.invalidations = 0

    def read(self, gpa, n):
        if gpa + n > self.size:
            return None
        return bytes(self.b[gpa : gpa + n])

    def write(self, gpa, data):
        if gpa + len(data) > self.size:
            return False
        self.b[gpa : gpa + len(data)] = data
        return True

    def invalidate(self):
        self.invalidations += 1


class Regs:
    """16 byte-wide registers that record every access."""

    def __init__(self):
        self.regs = bytearray(16)
        self.log = []

    def read(self, off, size):
        self.log.append(("r", off, size))
        return int.from_bytes(self.regs[off : off + size], "little")

    def write(self, off, size, value):
        self.log.append(("w", off, size, value))
        self.regs[off : off + size] = value.to_bytes(size, "little")


def put(loop, vcpu, type_, addr, data=0, size=1, count=1, read=0, ptr=0, df=0, state=1):
    loop.page[vcpu * 32 : vcpu * 32 + 32] = abi.pack_ioreq(
        addr, data, count, size, 0, state, ptr, read, df, type_
    )


def get(loop, vcpu):
    return struct.unpack_from(abi.IOREQ_FMT, loop.page, vcpu * 32)


def state(loop, vcpu):
    return loop.page[vcpu * 32 + abi.IOREQ_OFF_FLAGS] & abi.STATE_MASK
