# System control port A, port 0x92 (IBM PS/2 "fast A20 and reset"), as
# QEMU's hw/i386/port92.c gives it to every pc machine, xenfv included:
#   bit 1  A20 gate (QEMU drives the CPU's A20 line with it)
#   bit 0  fast reset: a 0 -> 1 transition resets the machine
# The register holds whatever byte the guest last wrote (all eight bits read
# back, as QEMU); a machine reset clears bit 0 only.
#
# Under Xen the A20 line goes nowhere (an HVM vCPU has no A20 gate), so only
# the value and the reset matter: reset is the machine's reset callback
# (SHUTDOWN_reboot, DESIGN.md section 4). The port is claimed alone, so Xen
# forwards only byte accesses (a wider one is not inside the claim); a wider
# one reaching the core anyway is treated byte by byte, as QEMU's memory
# core splits it, and logged.
from stubdm import log
from stubdm.compat import const

A20_GATE = const(0x02)
FAST_RESET = const(0x01)


class Port92:
    name = "port92"

    def __init__(self, reset_cb, a20_cb=None):
        self.reset_cb = reset_cb
        self.a20_cb = a20_cb
        self.value = 0

    def reset(self):
        self.value &= ~FAST_RESET

    @property
    def a20(self):
        return 1 if self.value & A20_GATE else 0

    def read(self, offset, size):
        if size != 1 or offset:
            log.guest_error(self.name, "%d-byte read at 0x%x" % (size, 0x92 + offset))
        v = 0
        for i in range(size):
            v |= self.value << (8 * i)
        return v

    def write(self, offset, size, value):
        if size != 1 or offset:
            log.guest_error(self.name, "%d-byte write at 0x%x" % (size, 0x92 + offset))
        for i in range(size):
            self._write_byte((value >> (8 * i)) & 0xFF)

    def _write_byte(self, b):
        old = self.value
        self.value = b
        if self.a20_cb is not None and (old ^ b) & A20_GATE:
            self.a20_cb(1 if b & A20_GATE else 0)
        if b & FAST_RESET and not old & FAST_RESET:
            self.reset_cb()

    def read_rep(self, offset, size, count, buf):
        if size != 1 or offset:
            return False
        buf[0:count] = bytes((self.value,)) * count  # reading has no effect
        return True

    def write_rep(self, offset, size, count, buf):
        if size != 1 or offset:
            return False
        # Only edges act (an A20 change, a rising fast-reset bit): find them
        # in the bytes rather than storing each.
        a20 = self.a20_cb
        old = self.value
        for i in range(count):
            b = buf[i]
            if b != old:
                self.value = b
                if a20 is not None and (old ^ b) & A20_GATE:
                    a20(1 if b & A20_GATE else 0)
                if b & FAST_RESET and not old & FAST_RESET:
                    self.reset_cb()
                old = self.value  # as a callback left it
        return True

    def state(self):
        return {"value": self.value}

    def load_state(self, d):
        self.value = d.get("value", 0) & 0xFF
