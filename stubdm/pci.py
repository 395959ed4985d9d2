# Conventional PCI: type-0 configuration space, BARs, INTx, and the one bus
# (segment 0, bus 0) that the device model serves (DESIGN.md section 4).
#
# Register layout: PCI Local Bus Specification 3.0, section 6.1 (header),
# 6.2.2 (command), 6.2.3 (status), 6.2.5.1 (BARs). Where the spec leaves a
# choice, QEMU's hw/pci/pci.c is followed (pci_init_wmask, pci_init_w1cmask,
# pci_do_device_reset, pci_bar_address), because a Xen guest has always seen
# QEMU's answer.
#
# A configuration access never crosses a dword: the host bridge turns an
# access to port 0xcfc-0xcff into one config cycle with one dword address and
# byte enables, so a 2-byte access at offset 1 is a legal cycle (byte enables
# 0110), while a 4-byte access at 0xcfd is split by the CPU into 0xcfc-0xcff
# (bytes 1-3 of the dword, a config cycle) and 0xd00 (not configuration
# space at all, unclaimed: all ones). Xen forwards such an access as one
# PCI_CONFIG ioreq of the full size; this module serves the part inside the
# dword, as the hardware would, and logs a guest error.
from stubdm import log
from stubdm.compat import const
from stubdm.irq import IrqLine

CONFIG_SIZE = const(256)
EXT_CONFIG_SIZE = const(4096)  # PCIe extended space: a conventional function has none

# Header, PCI 3.0 section 6.1 (type 0).
VENDOR_ID = const(0x00)
DEVICE_ID = const(0x02)
COMMAND = const(0x04)
STATUS = const(0x06)
REVISION_ID = const(0x08)
CLASS_PROG = const(0x09)  # class code: prog-if 0x09, subclass 0x0a, base class 0x0b
CACHE_LINE_SIZE = const(0x0C)
LATENCY_TIMER = const(0x0D)
HEADER_TYPE = const(0x0E)
BIST = const(0x0F)
BAR0 = const(0x10)
NUM_BARS = const(6)
CARDBUS_CIS = const(0x28)
SUBSYSTEM_VENDOR_ID = const(0x2C)
SUBSYSTEM_ID = const(0x2E)
ROM_ADDRESS = const(0x30)
CAPABILITY_LIST = const(0x34)
INTERRUPT_LINE = const(0x3C)
INTERRUPT_PIN = const(0x3D)
MIN_GNT = const(0x3E)
MAX_LAT = const(0x3F)
DEVICE_SPECIFIC = const(0x40)

HEADER_TYPE_MULTI_FUNCTION = const(0x80)

# Command register, PCI 3.0 section 6.2.2.
CMD_IO = const(0x0001)
CMD_MEMORY = const(0x0002)
CMD_MASTER = const(0x0004)
CMD_SERR = const(0x0100)
CMD_INTX_DISABLE = const(0x0400)
# Writable command bits, as QEMU 11.1 makes them for every function (SERR included).
CMD_WRITABLE = const(0x0507)

# Status register, PCI 3.0 section 6.2.3.
STS_INTERRUPT = const(0x0008)  # read-only: the function's INTx level
STS_CAP_LIST = const(0x0010)
STS_DEVSEL_MEDIUM = const(0x0200)
# Write-1-to-clear error bits: 8 master data parity, 11 signalled target
# abort, 12 received target abort, 13 received master abort, 14 signalled
# system error, 15 detected parity error (QEMU's pci_init_w1cmask).
STS_W1C = const(0xF900)

# BAR low bits, PCI 3.0 section 6.2.5.1.
BAR_IO = const(0x01)
BAR_MEM_64 = const(0x04)
BAR_MEM_PREFETCH = const(0x08)

IO_SPACE_END = const(0x10000)  # x86 port space: in/out reach 16 bits only

INTX_PIN_NAMES = ("none", "INTA", "INTB", "INTC", "INTD")


def _ones(size):
    if 1 <= size <= 8:
        return (1 << (8 * size)) - 1
    return 0xFFFFFFFF


class _Bar:
    """One decoded BAR: what add_bar() was told, plus where it decodes now."""

    def __init__(self, index, size, kind, handler, prefetch, mem64):
        self.index = index
        self.size = size
        self.kind = kind
        self.handler = handler
        self.mem64 = mem64
        if kind == "io":
            self.type_bits = BAR_IO
        else:
            self.type_bits = (BAR_MEM_64 if mem64 else 0) | (BAR_MEM_PREFETCH if prefetch else 0)
        self.mapped = None  # the base it decodes at, or None


class PciFunction:
    """One function's type-0 configuration space with BARs and an INTx pin.

    Devices subclass this (or wrap a device core with it). Guest accesses
    come in through config_read/config_write and bar_read/bar_write; the
    function reports BAR moves and INTx changes to the bus it is attached to.
    Hooks for subclasses: config_written(offset, size, value) after each
    accepted write, reset().
    """

    def __init__(
        self,
        name,
        vendor,
        device,
        class_code,
        revision=0,
        subsys_vendor=0,
        subsys_id=0,
        header_type=0,
        irq_pin=0,
    ):
        if not 0 <= irq_pin <= 4:
            raise ValueError("irq_pin must be 0 (none) or 1..4 (INTA..INTD)")
        self.name = name
        self.bus = None
        self.devfn = None
        self.config = bytearray(CONFIG_SIZE)
        self.wmask = bytearray(CONFIG_SIZE)  # bits the guest may write
        self.w1cmask = bytearray(CONFIG_SIZE)  # bits a guest 1 clears
        self._bars = [None] * NUM_BARS
        self._irq_level = 0  # what the device asserts
        self._intx_out = 0  # what the bus was last told
        self.irq_pin = irq_pin

        self._set(VENDOR_ID, 2, vendor)
        self._set(DEVICE_ID, 2, device)
        self._set(REVISION_ID, 1, revision)
        self._set(CLASS_PROG, 3, class_code)
        self._set(HEADER_TYPE, 1, header_type)
        self._set(SUBSYSTEM_VENDOR_ID, 2, subsys_vendor)
        self._set(SUBSYSTEM_ID, 2, subsys_id)
        self._set(INTERRUPT_PIN, 1, irq_pin)

        # QEMU's pci_init_wmask: command IO/MEM/MASTER/INTX_DISABLE, cache
        # line size and interrupt line; latency timer read-only 0; the whole
        # device-specific area 0x40-0xff read/write unless a device narrows it.
        self.set_wmask(COMMAND, 2, CMD_WRITABLE)
        self.set_wmask(CACHE_LINE_SIZE, 1, 0xFF)
        self.set_wmask(INTERRUPT_LINE, 1, 0xFF)
        for i in range(DEVICE_SPECIFIC, CONFIG_SIZE):
            self.wmask[i] = 0xFF
        self._set_mask(self.w1cmask, STATUS, 2, STS_W1C)

    # --- raw helpers (no side effects) -------------------------------------

    def _set(self, offset, size, value):
        for i in range(size):
            self.config[offset + i] = (value >> (8 * i)) & 0xFF

    def _get(self, offset, size):
        v = 0
        for i in range(size):
            v |= self.config[offset + i] << (8 * i)
        return v

    @staticmethod
    def _set_mask(mask, offset, size, value):
        for i in range(size):
            mask[offset + i] = (value >> (8 * i)) & 0xFF

    def set_wmask(self, offset, size, value):
        """Make `value`'s bits of the little-endian field at `offset` guest-writable."""
        self._set_mask(self.wmask, offset, size, value)

    def set_w1cmask(self, offset, size, value):
        self._set_mask(self.w1cmask, offset, size, value)

    # --- identity ---------------------------------------------------------

    @property
    def vendor_id(self):
        return self._get(VENDOR_ID, 2)

    @property
    def device_id(self):
        return self._get(DEVICE_ID, 2)

    @property
    def command(self):
        return self._get(COMMAND, 2)

    @property
    def status(self):
        return self._get(STATUS, 2)

    # --- BARs -------------------------------------------------------------

    def add_bar(self, index, size, kind, handler, prefetch=False, mem64=False):
        """Declare BAR `index` (0-5): `size` bytes of 'io' or 'mem' space.

        `handler` has read(offset, size) and write(offset, size, value), with
        offsets relative to the BAR. A 64-bit BAR also takes index + 1.
        """
        if kind not in ("io", "mem"):
            raise ValueError("BAR kind must be 'io' or 'mem'")
        if kind == "io" and (prefetch or mem64):
            raise ValueError("an I/O BAR is neither prefetchable nor 64-bit")
        last = index + 1 if mem64 else index
        if not (0 <= index and last < NUM_BARS):
            raise ValueError("BAR index out of range")
        for i in range(index, last + 1):
            if self._bars[i] is not None or (i > 0 and self._is_upper_half(i)):
                raise ValueError("BAR slot already used")
        if size <= 0 or size & (size - 1):
            raise ValueError("BAR size must be a power of two")
        if kind == "io" and not 4 <= size <= 0x10000:
            raise ValueError("I/O BAR size must be 4..64 KiB")
        if kind == "mem" and (size < 16 or (not mem64 and size > 0x80000000)):
            raise ValueError("memory BAR size out of range")
        bar = _Bar(index, size, kind, handler, prefetch, mem64)
        self._bars[index] = bar
        off = BAR0 + 4 * index
        low_type_mask = 0x3 if kind == "io" else 0xF
        mask = ((1 << 64) - size) & ((1 << 64) - 1)  # ~(size - 1), 64 bits
        self._set(off, 4, bar.type_bits)
        self.set_wmask(off, 4, mask & 0xFFFFFFFF & ~low_type_mask)
        if mem64:
            self._set(off + 4, 4, 0)
            self.set_wmask(off + 4, 4, mask >> 32)
        return bar

    def _is_upper_half(self, i):
        prev = self._bars[i - 1]
        return prev is not None and prev.mem64

    def bar_base(self, index):
        """The address BAR `index` holds (type bits stripped), mapped or not."""
        bar = self._bars[index]
        off = BAR0 + 4 * index
        base = self._get(off, 4)
        if bar.mem64:
            base |= self._get(off + 4, 4) << 32
        return base & ~(bar.size - 1)

    def _decode_address(self, bar, command):
        # QEMU's pci_bar_address: unmapped when the space is disabled, the
        # address is 0, or the range wraps or touches the top of the space
        # (that is where the all-ones sizing probe leaves it).
        if bar.kind == "io":
            if not command & CMD_IO:
                return None
        elif not command & CMD_MEMORY:
            return None
        base = self.bar_base(bar.index)
        if base == 0:
            return None
        last = base + bar.size - 1
        if bar.kind == "io":
            # Deliberate: QEMU only refuses the top of 32-bit space; a port
            # range beyond 0xffff is unreachable by in/out, so don't claim it.
            if last >= IO_SPACE_END:
                return None
        elif bar.mem64:
            if last >= (1 << 64) - 1:
                return None
        elif last >= 0xFFFFFFFF:
            return None
        return base

    def bar_mapping(self, index):
        """Where BAR `index` decodes now (None: not decoding)."""
        bar = self._bars[index]
        return None if bar is None else bar.mapped

    def bars(self):
        """The declared BARs as (index, kind, size), in index order."""
        out = []
        for bar in self._bars:
            if bar is not None:
                out.append((bar.index, bar.kind, bar.size))
        return out

    def _update_mappings(self):
        command = self._get(COMMAND, 2)
        for bar in self._bars:
            if bar is None:
                continue
            new = self._decode_address(bar, command)
            old = bar.mapped
            if new != old:
                bar.mapped = new
                if self.bus is not None:
                    self.bus.bar_changed(self, bar.index, bar.kind, old, new, bar.size)

    def bar_handler(self, index):
        """BAR `index`'s handler, for a bus that has already checked an
        access lies inside the BAR (stubdm.machine's BAR windows)."""
        bar = self._bars[index] if 0 <= index < NUM_BARS else None
        return None if bar is None else bar.handler

    def bar_read(self, index, offset, size):
        bar = self._bar_for_access(index, offset, size, "read")
        if bar is None:
            return _ones(size)
        return bar.handler.read(offset, size) & _ones(size)

    def bar_write(self, index, offset, size, value):
        bar = self._bar_for_access(index, offset, size, "write")
        if bar is not None:
            bar.handler.write(offset, size, value & _ones(size))

    def _bar_for_access(self, index, offset, size, what):
        bar = self._bars[index] if 0 <= index < NUM_BARS else None
        if bar is None:
            log.guest_error(self.name, f"{what} of absent BAR {index}")
            return None
        if size not in (1, 2, 4, 8) or offset < 0 or offset + size > bar.size:
            log.guest_error(
                self.name, f"BAR{index} {what} size {size} at 0x{offset:x} outside 0x{bar.size:x}"
            )
            return None
        return bar

    # --- configuration space ----------------------------------------------

    def _check_config_access(self, offset, size, what):
        """Return how many bytes of the access reach this function's config space."""
        if size not in (1, 2, 4) or offset < 0 or offset >= EXT_CONFIG_SIZE:
            log.guest_error(self.name, f"config {what} size {size} at 0x{offset:x}")
            return 0
        n = size
        if (offset & 3) + size > 4:
            n = 4 - (offset & 3)
            log.guest_error(
                self.name,
                f"config {what} size {size} at 0x{offset:x} crosses a dword: "
                f"only {n} byte(s) reach the function",
            )
        if offset + n > CONFIG_SIZE:
            return 0  # extended space: a conventional function answers all ones
        return n

    def config_read(self, offset, size):
        n = self._check_config_access(offset, size, "read")
        value = _ones(size)
        if n:
            value = (value & ~((1 << (8 * n)) - 1)) | self._get(offset, n)
        return value

    def config_write(self, offset, size, value):
        n = self._check_config_access(offset, size, "write")
        if not n:
            return
        value &= (1 << (8 * n)) - 1
        cfg = self.config
        wmask = self.wmask
        w1c = self.w1cmask
        for i in range(n):
            a = offset + i
            b = (value >> (8 * i)) & 0xFF
            m = wmask[a]
            v = (cfg[a] & ~m) | (b & m)
            cfg[a] = v & ~(b & w1c[a]) & 0xFF
        if offset < BAR0 + 4 * NUM_BARS and offset + n > COMMAND:
            self._update_mappings()
        if offset <= COMMAND + 1 < offset + n:
            self._update_intx()
        self.config_written(offset, n, value)

    def config_written(self, offset, size, value):
        """Hook: called after a guest write of `size` bytes at `offset` was applied."""

    # --- INTx -------------------------------------------------------------

    def set_irq(self, level):
        """The device drives its INTx pin (level-triggered, 1 asserted)."""
        level = 1 if level else 0
        self._irq_level = level
        sts = self.config[STATUS]
        self.config[STATUS] = (sts | STS_INTERRUPT) if level else (sts & ~STS_INTERRUPT)
        self._update_intx()

    def irq_line(self):
        """An IrqLine whose level drives this function's INTx pin."""
        return IrqLine(self.set_irq)

    def _update_intx(self):
        out = self._irq_level
        # INTX_DISABLE is bit 10 of the command register: bit 2 of its high byte.
        if self.irq_pin == 0 or self.config[COMMAND + 1] & (CMD_INTX_DISABLE >> 8):
            out = 0
        if out != self._intx_out:
            self._intx_out = out
            if self.bus is not None:
                self.bus.set_intx(self, out)

    @property
    def intx_asserted(self):
        """What the pin shows the bus (the device level, gated by INTx disable)."""
        return self._intx_out

    # --- reset, save/restore ----------------------------------------------

    def reset(self):
        """Power-on state, as QEMU's pci_do_device_reset: clear guest-writable
        command, status, interrupt line and cache line bits and the BAR
        addresses; drop INTx. Subclasses set their own registers after this."""
        self._irq_level = 0
        self.config[STATUS] &= ~STS_INTERRUPT
        cmd = self._get(COMMAND, 2) & ~(CMD_WRITABLE | self._get_mask(self.w1cmask, COMMAND))
        self._set(COMMAND, 2, cmd)
        sts = self._get(STATUS, 2) & ~(
            self._get_mask(self.wmask, STATUS) | self._get_mask(self.w1cmask, STATUS)
        )
        self._set(STATUS, 2, sts)
        self.config[INTERRUPT_LINE] &= ~self.wmask[INTERRUPT_LINE]
        self.config[CACHE_LINE_SIZE] = 0
        for bar in self._bars:
            if bar is None:
                continue
            off = BAR0 + 4 * bar.index
            self._set(off, 4, bar.type_bits)
            if bar.mem64:
                self._set(off + 4, 4, 0)
        self._update_mappings()
        self._update_intx()

    @staticmethod
    def _get_mask(mask, offset):
        return mask[offset] | (mask[offset + 1] << 8)

    # Fields a saved image must agree on: the same device, or refuse it
    # (QEMU's get_pci_config_device does the same with its cmask).
    _IDENTITY = ((VENDOR_ID, 4), (REVISION_ID, 4), (HEADER_TYPE, 1), (SUBSYSTEM_VENDOR_ID, 4))

    def state(self):
        return {"config": bytes(self.config), "irq_level": self._irq_level}

    def load_state(self, d):
        config = d["config"]
        if len(config) != CONFIG_SIZE:
            raise ValueError(self.name + ": saved config space has the wrong size")
        for off, size in self._IDENTITY:
            if bytes(config[off : off + size]) != bytes(self.config[off : off + size]):
                raise ValueError(self.name + ": saved config space is for another device")
        if config[INTERRUPT_PIN] != self.config[INTERRUPT_PIN]:
            raise ValueError(self.name + ": saved config space has another INTx pin")
        self.config[0:CONFIG_SIZE] = config
        level = 1 if d.get("irq_level", 0) else 0
        self._irq_level = level
        sts = self.config[STATUS]
        self.config[STATUS] = (sts | STS_INTERRUPT) if level else (sts & ~STS_INTERRUPT)
        self._update_mappings()
        self._update_intx()

    # --- bus attachment -----------------------------------------------------

    def attached(self, bus, devfn):
        """Called by PciBus.attach: announce what already decodes or is asserted."""
        self.bus = bus
        self.devfn = devfn
        for bar in self._bars:
            if bar is not None and bar.mapped is not None:
                bus.bar_changed(self, bar.index, bar.kind, None, bar.mapped, bar.size)
        if self._intx_out:
            bus.set_intx(self, 1)


def wire_irq(line, function):
    """Route an existing IrqLine (already handed to a device core) to `function`'s INTx."""
    line.sink = function.set_irq
    function.set_irq(line.level)


class PciBus:
    """Bus 0 of segment 0: up to 32 devices of 8 functions, addressed by devfn.

    intx_sink(dev, pin, level): pin 0..3 = INTA..INTD of device `dev`, the
    wire-OR of all its functions on that pin (Xen's set_pci_intx_level keeps
    one level per device and pin). bar_sink(function, index, kind, old, new,
    size): a BAR stopped decoding at `old` and/or started at `new` (None for
    not decoding); the owner re-registers the range with the ioreq server.
    """

    def __init__(self, intx_sink=None, bar_sink=None):
        self.intx_sink = intx_sink
        self.bar_sink = bar_sink
        self._functions = {}
        self._devfns = []  # sorted: MicroPython dicts have no order
        self._intx = {}  # (dev, pin) -> set of asserting devfns

    def attach(self, devfn, function):
        if not 0 <= devfn < 256:
            raise ValueError("devfn out of range")
        if devfn in self._functions:
            raise ValueError("devfn %02x.%d already used" % (devfn >> 3, devfn & 7))
        self._functions[devfn] = function
        self._devfns.append(devfn)
        self._devfns.sort()
        function.attached(self, devfn)

    def find(self, devfn):
        return self._functions.get(devfn)

    def devfns(self):
        return list(self._devfns)

    def __iter__(self):
        for devfn in self._devfns:
            yield self._functions[devfn]

    def __len__(self):
        return len(self._devfns)

    def config_read(self, devfn, offset, size):
        """All ones for an absent function (a master abort); the caller decides whether to log."""
        f = self._functions.get(devfn)
        if f is None:
            return _ones(size)
        return f.config_read(offset, size)

    def config_write(self, devfn, offset, size, value):
        f = self._functions.get(devfn)
        if f is not None:
            f.config_write(offset, size, value)

    def set_intx(self, function, level):
        pin = function.irq_pin - 1
        if pin < 0 or function.devfn is None:
            return
        dev = function.devfn >> 3
        key = (dev, pin)
        asserting = self._intx.get(key)
        if asserting is None:
            asserting = set()
            self._intx[key] = asserting
        before = 1 if asserting else 0
        if level:
            asserting.add(function.devfn)
        else:
            asserting.discard(function.devfn)
        after = 1 if asserting else 0
        if after != before and self.intx_sink is not None:
            self.intx_sink(dev, pin, after)

    def intx_level(self, dev, pin):
        return 1 if self._intx.get((dev, pin)) else 0

    def bar_changed(self, function, index, kind, old, new, size):
        if self.bar_sink is not None:
            self.bar_sink(function, index, kind, old, new, size)
