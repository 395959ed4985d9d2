"""stubdm-sim fuzz: a structure-aware fuzzer for every device model.

The real Machine, Dispatcher and IoreqLoop run in this process (CPython)
against a fake platform that is as strict as Xen's dm_ops (it counts every
hypervisor call and refuses what Xen refuses) and fake guest RAM behind the
mapcache API that stubdm.memory.GuestMemory uses. Nothing here knows the
devices: ports, MMIO ranges, PCI functions and BARs are discovered from the
machine (its buses and PCI bus), so a device added to the machine is fuzzed
without a change here; `--device NAME` picks by the names the machine gives.

Requests are generated from what the machine claims (every offset of every
range, valid and invalid sizes, config space of every devfn, BAR sizing and
BARs moved over each other and over fixed ports, rep I/O with pointers at and
past the end of RAM, df, huge counts, replays of earlier writes to a device
cut short or repeated, buffered ioreqs, INVALIDATE, unknown types, device
events). After every request the fuzzer checks: no exception escaped, it took
under 10 ms of CPU (a rep: plus 5 us a byte, REP_BYTE_S), it made at most a
bound of hypervisor calls, every IRQ line's level as the platform last saw it
is the device's, and no read value is wider than its access. Memory is sampled (allocated blocks after a collection)
over each run of one machine. Each finding is reported with the seed and a
reproducer shrunk by delta debugging on the request sequence.

Runs are deterministic for a seed: an "epoch" is one machine from power-on;
its requests come from a generator seeded with (seed, epoch), so any request
can be regenerated for a reproducer instead of being kept in memory.
"""
import errno
import gc
import random
import resource
import struct
import sys
import time

from stubdm import abi, log
from stubdm.hypervisor import HypervisorError
from stubdm.ioreq import Dispatcher, IoreqLoop
from stubdm.irq import IrqLine
from stubdm.memory import GuestMemory, ram_ranges

SLOW_S = 0.010  # a request slower than this is a finding
LATER_SLOW = 3  # further occurrences of a slow finding kept to shrink from
# The work bound of one request, as decided for this fuzzer: SLOW_S of the
# device model's CPU, plus REP_BYTE_S for each byte a rep moves beyond its
# first item. Xen clamps a rep to one page (MAX_REP_BYTES), and each item is a
# guest access in its own right that the device carries out (an ATA command, a
# register write, a frame to send), an item wider than the register being as
# many accesses as it has bytes (QEMU's memory core splits it so). Done in one
# request, the items save a round trip each (some 20-50 us under host_sim,
# several on Xen); 5 us a byte keeps a whole rep several times cheaper than
# the same accesses one by one. The worst case, a full page: 30.5 ms.
REP_BYTE_S = 0.000005
# Hypervisor calls one request may make. The most a well-behaved request
# needs: a command write that moves all six BARs (unmap + map each) plus its
# INTx, or a PIRQ dword (four link routes).
CALL_BOUND = 32
EPOCH = 50000  # requests per machine before a fresh one (a reboot)
WARMUP = 0.2  # of an epoch, before memory is first sampled
SAMPLE_EVERY = 2500
GROWTH_BLOCKS = 1000  # allocated blocks an epoch may gain after warm-up (clean: ~300)
VCPU_PORT = 5
BUF_PORT = 9
ALL64 = (1 << 64) - 1
PIO, COPY, PCI = abi.IOREQ_TYPE_PIO, abi.IOREQ_TYPE_COPY, abi.IOREQ_TYPE_PCI_CONFIG
TYPE_NAMES = {PIO: "PIO", COPY: "COPY", PCI: "PCI", abi.IOREQ_TYPE_TIMEOFFSET: "TIMEOFFSET",
              abi.IOREQ_TYPE_INVALIDATE: "INVALIDATE"}
VALID_SIZES = {PIO: (1, 2, 4), COPY: (1, 2, 4, 8), PCI: (1, 2, 4)}
MAX_REP_BYTES = 4096  # what Xen sends at most in one rep request


def _mask(size):
    return (1 << (8 * size)) - 1


# ---------------------------------------------------------------- the fakes

class FakePlatform:
    """The machine's hypervisor calls, counted and checked as Xen's dm_ops check them.

    What Xen refuses (xen/arch/x86/hvm/dm.c, xen/common/ioreq.c) raises the
    HypervisorError the real platform would raise: a bad IRQ number, level or
    link, a range that overlaps one already mapped (EEXIST), an unmap of a
    range not mapped (ENOENT).
    """

    def __init__(self):
        self.calls = 0
        self.irq_calls = 0
        self.isa = {}
        self.intx = {}
        self.links = {}
        self.ranges = {abi.XEN_DMOP_IO_RANGE_PORT: [], abi.XEN_DMOP_IO_RANGE_MEMORY: []}
        self.pcidevs = []
        self.shutdowns = []
        self.shutdown_calls = 0
        self.map_changes = 0
        self.msis = 0  # messages inject_msi took
        self.other = {}

    def _refuse(self, what, err):
        raise HypervisorError(what, err)

    def set_isa_irq_level(self, irq, level):
        self.calls += 1
        self.irq_calls += 1
        if not 0 <= irq <= 15 or level not in (0, 1):
            self._refuse("set_isa_irq_level(%r, %r)" % (irq, level), errno.EINVAL)
        self.isa[irq] = level

    def set_pci_intx_level(self, dev, pin, level):
        self.calls += 1
        self.irq_calls += 1
        if not 0 <= dev <= 0x1F or not 0 <= pin <= 3 or level not in (0, 1):
            self._refuse("set_pci_intx_level(%r, %r, %r)" % (dev, pin, level), errno.EINVAL)
        self.intx[(dev, pin)] = level

    def inject_msi(self, addr, data):
        # XEN_DMOP_inject_msi (hvm_inject_msi): vector 0 names a pirq, and this
        # domain has none: -ERANGE.
        self.calls += 1
        self.irq_calls += 1
        if not 0 <= addr <= ALL64 or not 0 <= data <= 0xFFFFFFFF or data & 0xFF == 0:
            self._refuse("inject_msi(%#x, %#x)" % (addr, data), errno.ERANGE)
        self.msis += 1

    def set_pci_link_route(self, link, irq):
        self.calls += 1
        if not 0 <= link <= 3 or not 0 <= irq <= 15:
            self._refuse("set_pci_link_route(%r, %r)" % (link, irq), errno.EINVAL)
        self.links[link] = irq

    def map_range(self, kind, start, end):
        self.calls += 1
        self.map_changes += 1
        rs = self.ranges.get(kind)
        if rs is None or start > end or end > ALL64:
            self._refuse("map_io_range(%r, %#x, %#x)" % (kind, start, end), errno.EINVAL)
        for s, e in rs:
            if start <= e and s <= end:
                self._refuse("map_io_range(%d, %#x, %#x) over %#x-%#x" % (kind, start, end, s, e),
                             errno.EEXIST)
        rs.append((start, end))

    def unmap_range(self, kind, start, end):
        self.calls += 1
        self.map_changes += 1
        rs = self.ranges.get(kind)
        if rs is None or (start, end) not in rs:
            self._refuse("unmap_io_range(%r, %#x, %#x)" % (kind, start, end), errno.ENOENT)
        rs.remove((start, end))

    def map_pcidev(self, devfn):
        self.calls += 1
        if not 0 <= devfn <= 0xFF or devfn in self.pcidevs:
            self._refuse("map_pcidev(%r)" % devfn, errno.EEXIST)
        self.pcidevs.append(devfn)

    def shutdown(self, reason):
        self.calls += 1
        self.shutdown_calls += 1
        self.shutdowns.append(reason)

    def set_acpi_s_state(self, state):
        # Xen's HVM_PARAM_ACPI_S_STATE takes 3 (suspend) and 0 (wake) only.
        self.calls += 1
        if state not in (0, 3):
            self._refuse("set_acpi_s_state(%r)" % state, errno.EINVAL)

    def __getattr__(self, name):
        # A platform call added after this fuzzer was written: counted, accepted.
        if name.startswith("_"):
            raise AttributeError(name)

        def call(*args):
            self.calls += 1
            self.other[name] = self.other.get(name, 0) + 1

        return call


class FakeMapcache:
    """stubdm's mapcache API (stubdm/mapcache/mapcache.h) over a bytearray per
    bucket, allocated when first mapped: as strict as the C core (None for a
    range crossing a bucket, wrapping, or not inside one RAM range)."""

    def __init__(self, bucket_shift=20, max_buckets=64):
        self.shift = bucket_shift
        self.max_buckets = max_buckets
        self.ranges = []
        self.store = {}  # bucket number -> bytearray: the guest's RAM
        self.mapped = {}  # bucket number -> True, as the cache holds them
        self.locks = {}  # bucket number -> pins held (map_locked)
        self.hits = self.misses = self.maps = self.evictions = self.invalidations = 0

    def add_ram(self, start, end):
        if start & 0xFFF or end & 0xFFF or start >= end:
            raise OSError(errno.EINVAL, "bad RAM range")
        for s, e in self.ranges:
            if start < e and s < end:
                raise OSError(errno.EINVAL, "overlapping RAM range")
        self.ranges.append((start, end))

    def _bucket(self, b):
        buf = self.store.get(b)
        if buf is None:
            buf = bytearray(1 << self.shift)
            self.store[b] = buf
        return buf

    def map(self, gpa, length):
        if length <= 0 or gpa < 0 or gpa + length > ALL64 + 1:
            return None
        b = gpa >> self.shift
        if (gpa + length - 1) >> self.shift != b:
            return None
        for s, e in self.ranges:
            if s <= gpa and gpa + length <= e:
                break
        else:
            return None
        if b in self.mapped:
            self.hits += 1
        else:
            self.misses += 1
            self.maps += 1
            if len(self.mapped) >= self.max_buckets:
                del self.mapped[next(iter(self.mapped))]
                self.evictions += 1
            self.mapped[b] = True
        off = gpa & ((1 << self.shift) - 1)
        return memoryview(self._bucket(b))[off : off + length]

    def map_locked(self, gpa, length):
        """As map, pinned until unlock(gpa) (DMA in flight; the C core's refcount)."""
        mv = self.map(gpa, length)
        if mv is not None:
            b = gpa >> self.shift
            self.locks[b] = self.locks.get(b, 0) + 1
        return mv

    def unlock(self, gpa):
        b = gpa >> self.shift
        n = self.locks.get(b, 0)
        if not n:
            raise OSError(errno.EINVAL, "unlock of an unlocked bucket")
        if n == 1:
            del self.locks[b]
        else:
            self.locks[b] = n - 1

    def bucket_room(self, gpa):
        size = 1 << self.shift
        return size - (gpa & (size - 1))

    def invalidate(self):
        self.invalidations += 1
        self.mapped = {}

    def stats(self):
        return (self.hits, self.misses, self.maps, 0, self.evictions, self.invalidations, 0,
                len(self.mapped), 0, self.max_buckets, (1 << self.shift) >> 12)

    def footprint(self):
        return 64 + 16 * self.max_buckets

    def guest_write(self, gpa, data):
        """The guest's own store to its RAM (no device model involved)."""
        for i in range(len(data)):
            a = gpa + i
            self._bucket(a >> self.shift)[a & ((1 << self.shift) - 1)] = data[i]


class FakeGuestMemory(GuestMemory):
    """stubdm.memory.GuestMemory's own code over FakeMapcache."""

    def __init__(self, ram_bytes, bucket_shift=20, max_buckets=64):
        self.mc = FakeMapcache(bucket_shift, max_buckets)
        self.ranges = ram_ranges(ram_bytes)
        for start, end in self.ranges:
            self.mc.add_ram(start, end)


class FakeHyp:
    """What the ioreq loop asks of the hypervisor handle."""

    def __init__(self):
        self.notified = 0
        self.last_port = None

    def barrier(self):
        pass

    def notify(self, port):
        self.notified += 1
        self.last_port = port

    def bufioreq_consume(self, page, n):
        rp = struct.unpack_from("<I", page, 0)[0]
        struct.pack_into("<I", page, 0, (rp + n) & 0xFFFFFFFF)


class NullChardev:
    """A serial back end that only counts (the device model's flush() included)."""

    def __init__(self):
        self.bytes = 0

    def write(self, data):
        self.bytes += len(data)

    def flush(self):
        pass


class FuzzNet:
    """A NIC's network for the fuzzer (stubdm/net.py's interface): frames sent
    come back in (bounded), so what the fuzzer makes a NIC send also goes
    through its receive path; nothing is kept."""

    def __init__(self):
        self.mac = None
        self.link_up = True
        self.on_tx_room = None
        self.on_link = None
        self.receiver = None
        self.depth = 0

    def set_receiver(self, fn):
        self.receiver = fn

    def rx_resume(self):
        pass

    def transmit(self, frame):
        if self.receiver is not None and self.depth < 2:
            self.depth += 1
            try:
                self.receiver(memoryview(bytes(frame)))
            finally:
                self.depth -= 1
        return True


def default_machine(platform, chardevs, ram_bytes):
    """The machine stubdm-sim boots by default: the ISA devices, one PCI serial,
    and the PIIX3 IDE with a disk and a CD-ROM (in-memory; DMA into fake RAM
    that the Rig then uses as the guest's), the AHCI, and both NICs."""
    from stubdm.block import MemoryDisk
    from stubdm.machine import Machine

    mem = FakeGuestMemory(ram_bytes)
    drives = [(0, 0, MemoryDisk(bytearray(1 << 20))),
              (1, 0, MemoryDisk(bytearray(1 << 20), readonly=True, cdrom=True))]
    # And the ICH9 AHCI (libxl's hdtype="ahci") with a disk and a CD-ROM on ports 0 and 1.
    sata = [MemoryDisk(bytearray(1 << 20)), MemoryDisk(bytearray(1 << 20), readonly=True,
                                                       cdrom=True)]
    kw = {}
    try:
        # The standard VGA: its video RAM in the fuzzer's memory, drawn into a surface
        # of 4 MiB (big modes are refused by it, as by a small fbfront).
        from stubdm.devices.vga import LocalVram
        from stubdm.display import MemorySurface

        kw["vga"] = {"vram": LocalVram(16 << 20), "surface": MemorySurface(4 << 20)}
    except ImportError:
        pass  # a stubdm from before the VGA
    try:
        try:
            m = Machine(platform, chardevs, ram_bytes, True, (0,),
                        ide={"drives": drives, "mem": mem}, ahci={"disks": sata, "mem": mem},
                        nics=[("rtl8139", 0, FuzzNet(), None), ("e1000", 0, FuzzNet(), None)],
                        nic_mem=mem, **kw)
        except TypeError:
            if not kw:
                raise
            m = Machine(platform, chardevs, ram_bytes, True, (0,),
                        ide={"drives": drives, "mem": mem}, ahci={"disks": sata, "mem": mem},
                        nics=[("rtl8139", 0, FuzzNet(), None), ("e1000", 0, FuzzNet(), None)],
                        nic_mem=mem)
    except TypeError:  # a stubdm from before IDE and AHCI (an old tree under test)
        m = Machine(platform, chardevs, ram_bytes, True, (0,))
    m.fuzz_mem = mem
    return m


# ------------------------------------------------------------ discovery

def _walk(root, limit=4000):
    """Objects of stubdm's reachable from the machine through attributes and containers."""
    seen = set()
    todo = [root]
    out = []
    while todo and len(out) < limit:
        o = todo.pop()
        if id(o) in seen:
            continue
        seen.add(id(o))
        if isinstance(o, (list, tuple, set)):
            todo.extend(o)
            continue
        if isinstance(o, dict):
            todo.extend(o.values())
            continue
        mod = getattr(type(o), "__module__", "") or ""
        if not mod.startswith("stubdm") and not mod.startswith("tests") \
                and not mod.startswith("host_sim"):
            continue
        out.append(o)
        d = getattr(o, "__dict__", None)
        if d:
            todo.extend(v for k, v in d.items() if k != "platform")
    return out


def _msi_cap(f):
    """Where a PCI function's MSI capability (ID 5) is in its config space, or None."""
    c = f.config
    if not c[6] & 0x10:  # status: no capability list
        return None
    off = c[0x34] & 0xFC
    for _ in range(48):
        if off < 0x40:
            return None
        if c[off] == 0x05:
            return off
        off = c[off + 1] & 0xFC
    return None


def _isa_irq_of(line):
    """The ISA IRQ an IrqLine's sink reports to, if it is one (else None)."""
    sink = line.sink
    if sink is None:
        return None
    owner = getattr(sink, "__self__", None)
    if owner is not None:
        irq = getattr(owner, "irq", None)
        return irq if isinstance(irq, int) else None
    code = getattr(sink, "__code__", None)
    if code is None or not sink.__closure__:
        return None
    for name, cell in zip(code.co_freevars, sink.__closure__):
        if name in ("irq", "isa_irq", "gsi"):
            try:
                v = cell.cell_contents
            except ValueError:
                return None
            return v if isinstance(v, int) else None
    return None


def irq_lines(machine):
    """[(key, device-side level function)]: ('isa', irq) from the IrqLines
    reporting to the platform, ('intx', dev, pin) from the PCI functions."""
    isa = {}
    for o in _walk(machine):
        if isinstance(o, IrqLine):
            irq = _isa_irq_of(o)
            if irq is not None:
                isa.setdefault(irq, []).append(o)
    out = []
    for irq in sorted(isa):
        ls = isa[irq]
        out.append((("isa", irq), lambda ls=ls: 1 if any(x.level for x in ls) else 0))
    pins = {}
    for f in machine.pci:
        if getattr(f, "irq_pin", 0):
            pins.setdefault((f.devfn >> 3, f.irq_pin - 1), []).append(f)
    for key in sorted(pins):
        fs = pins[key]
        out.append((("intx",) + key, lambda fs=fs: 1 if any(f.intx_asserted for f in fs) else 0))
    return out


def device_names(machine):
    names = []
    for bus in (machine.pio, machine.mmio):
        for r in bus.ranges:
            names.append(r.name)
    for f in machine.pci:
        names.append(f.name)
    return names


def name_matches(name, want):
    return want is None or name == want or name.startswith(want + " ")


# ------------------------------------------------------------ one machine

class Finding(Exception):
    pass


def _voluntary_switches():
    # Linux's per-thread count of voluntary context switches (sleeps, waits).
    return resource.getrusage(resource.RUSAGE_THREAD).ru_nvcsw


class _CheckedCore:
    """A device core on a bus, its read values checked against the access size
    (appended to `wide` as (range name, offset, size, value)); all else passed on."""

    def __init__(self, dev, rng, wide):
        self._dev = dev
        self._rng = rng
        self._wide = wide

    def read(self, offset, size):
        v = self._dev.read(offset, size)
        if not isinstance(v, int) or v < 0 or v >> (8 * size):
            self._wide.append((self._rng.name, offset, size, v))
        return v

    def write(self, offset, size, value):
        self._dev.write(offset, size, value)

    def __getattr__(self, name):
        return getattr(self._dev, name)


class Rig:
    """One machine from power-on, its ioreq loop and the checks around a request."""

    def __init__(self, factory, ram_bytes, instrument=True):
        self.platform = FakePlatform()
        self.chardevs = [NullChardev() for _ in range(8)]
        self.ram_bytes = ram_bytes
        self.machine = factory(self.platform, list(self.chardevs), ram_bytes)
        m = self.machine
        self.mem = getattr(m, "fuzz_mem", None) or FakeGuestMemory(ram_bytes)
        irqs = getattr(m, "irqs", None)  # the machine's IRQ latch, as main.py hands it on
        if irqs is not None:
            self.d = Dispatcher(m.pio, m.mmio, m.pci, self.mem, irqs)
        else:
            self.d = Dispatcher(m.pio, m.mmio, m.pci, self.mem)
        self.page = bytearray(4096)
        self.buf = bytearray(4096)
        self.hyp = FakeHyp()
        self.loop = IoreqLoop(self.hyp, self.d, self.page, [VCPU_PORT], self.buf, BUF_PORT,
                              self.flush)
        self.lines = irq_lines(m)
        self.wide = []  # (where, offset, size, value) a device returned, this request
        if instrument:
            self._wrap()

    def flush(self):
        for c in self.chardevs:
            c.flush()
        hook = getattr(self.machine, "end_request", None)
        if hook is not None:
            hook()

    def _wrap(self):
        """Check every value a device core returns before the dispatcher masks it."""
        wide = self.wide

        def wrap_bus(bus):
            # At each range's device, not at the bus: the ioreq loop's single
            # accesses go straight to the device of the range they hit last.
            for r in bus.ranges:
                r.dev = _CheckedCore(r.dev, r, wide)
            inner_add = bus.add

            def add(start, length, dev, name=""):
                r = inner_add(start, length, dev, name)
                r.dev = _CheckedCore(dev, r, wide)
                return r

            bus.add = add

        def wrap_fn(f):
            inner = f.config_read

            def config_read(offset, size):
                v = inner(offset, size)
                if not isinstance(v, int) or v < 0 or v >> (8 * size):
                    wide.append((f.name + " config", offset, size, v))
                return v

            f.config_read = config_read

        wrap_bus(self.machine.pio)
        wrap_bus(self.machine.mmio)
        for f in self.machine.pci:
            wrap_fn(f)

    def target_name(self, req):
        if req[0] != "S":
            return {"B": "buffered", "M": "guest RAM", "E": "event"}[req[0]]
        t, addr = req[1], req[2]
        if t in (PIO, COPY):
            bus = self.machine.pio if t == PIO else self.machine.mmio
            r = bus.find(addr & ALL64) if addr <= ALL64 else None
            return r.name if r is not None else ("unclaimed " + bus.name)
        if t == PCI:
            f = self.machine.pci.find((addr >> 32) & 0xFF) if not addr >> 40 else None
            return (f.name + " config") if f is not None else "absent PCI config"
        return TYPE_NAMES.get(t, "type %d" % t)

    def execute(self, req):
        """Carries out one request; returns (time it took, read data or None); raises
        what escaped. The time is the CPU time the request used, or the wall time
        when it blocked (slept or waited: a voluntary context switch): what other
        processes take of these two cores is not the device model's."""
        t0, c0, v0 = time.perf_counter(), time.thread_time(), _voluntary_switches()
        data = self._execute(req)
        wall = time.perf_counter() - t0
        cpu = time.thread_time() - c0
        self.last_wall, self.last_cpu = wall, cpu
        if wall > SLOW_S / 2 and _voluntary_switches() != v0:
            return wall, data
        return cpu, data

    def _execute(self, req):
        kind = req[0]
        if kind == "S":
            _, t, addr, data, count, size, is_read, ptr, df = req
            self.page[0:32] = abi.pack_ioreq(addr & ALL64, data & ALL64, count & 0xFFFFFFFF,
                                             size & 0xFFFFFFFF, VCPU_PORT, abi.STATE_IOREQ_READY,
                                             ptr, is_read, df, t & 0xFF)
            self.loop.on_port(VCPU_PORT)
            if self.page[abi.IOREQ_OFF_FLAGS] & abi.STATE_MASK != abi.STATE_IORESP_READY:
                raise Finding("the request was left unanswered")
            return struct.unpack_from("<Q", self.page, 8)[0] if is_read else None
        if kind == "B":
            _, slots, extra = req
            rp, wp = struct.unpack_from("<II", self.buf, 0)
            for i, (w0, w1) in enumerate(slots):
                s = (wp + i) % abi.IOREQ_BUFFER_SLOT_NUM
                struct.pack_into("<II", self.buf, abi.BUFIOREQ_OFF_SLOTS + 8 * s, w0, w1)
            struct.pack_into("<I", self.buf, 4, (wp + len(slots) + extra) & 0xFFFFFFFF)
            self.loop.on_port(BUF_PORT)
            return None
        if kind == "M":
            _, gpa, data = req
            self.mem.mc.guest_write(gpa, data)
            return None
        if kind == "E":
            self._event(req)
            self.flush()
            return None
        raise ValueError("unknown request " + repr(req))

    def _event(self, req):
        _, what, idx, arg = req
        m = self.machine
        uarts = getattr(m, "uarts", [])
        if what in ("rx", "tick", "break") and idx < len(uarts):
            u = uarts[idx]
            if what == "rx":
                u.receive(arg)
            elif what == "tick":
                if u.rx_timer_armed:
                    u.rx_timeout()
            else:
                u.receive_break()
        vga = getattr(m, "vga", None)
        if what == "refresh" and vga is not None:
            vga.refresh()  # the main loop's display refresh, between guest accesses
        kbc = getattr(m, "i8042", None)
        if kbc is not None:
            if what == "key":
                kbc.key_event(arg)
            elif what == "mouse":
                dx, dy, dz, b = arg
                kbc.mouse_event(dx, dy, dz, b)

    def irq_mismatch(self):
        p = self.platform
        for key, level in self.lines:
            want = level()
            seen = p.isa.get(key[1], 0) if key[0] == "isa" else p.intx.get(key[1:], 0)
            if want != seen:
                return key, want, seen
        return None


# ------------------------------------------------------------ the generator

INTERESTING = (0, 1, 2, 3, 4, 7, 8, 0x0F, 0x10, 0x1F, 0x20, 0x3F, 0x40, 0x55, 0x7F, 0x80,
               0x81, 0xAA, 0xC0, 0xE0, 0xF0, 0xFE, 0xFF, 0x100, 0x7FFF, 0x8000, 0xFFFF,
               0x10000, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 0x100000000, ALL64)


class Target:
    __slots__ = ("space", "start", "length", "name")

    def __init__(self, space, start, length, name):
        self.space = space
        self.start = start
        self.length = length
        self.name = name


class Generator:
    """Requests for the machine as it is now. Its state (what it learnt of each
    device) is bounded, and it starts afresh with each machine."""

    def __init__(self, rng, rig, device=None):
        self.rng = rng
        self.rig = rig
        self.device = device
        self.hist = {}  # target name -> recent writes (offset, size, value)
        self.seen = {}  # target name -> recent read values
        self.version = None
        self.targets = []
        m = rig.machine
        self.functions = [f for f in m.pci if name_matches(f.name, device)]
        self.bar_functions = [f for f in self.functions if f.bars()]
        # AHCI functions (class 01.06.01): driven as libahci drives one, and off it.
        self.ahci_functions = [f for f in self.functions
                               if bytes(f.config[9:12]) == b"\x01\x06\x01" and f.bars()]
        # Functions offering MSI (the AHCI), with where their capability is.
        self.msi_functions = [(f, c) for f in self.functions for c in (_msi_cap(f),)
                              if c is not None]
        self.uarts = len(getattr(m, "uarts", []))
        self.kbd = getattr(m, "i8042", None) is not None
        self.vga = getattr(m, "vga", None) is not None and name_matches("vga", device)
        self.pending = []

    def _refresh(self):
        v = self.rig.platform.map_changes
        if v == self.version:
            return
        self.version = v
        m = self.rig.machine
        ts = []
        for space, bus in (("pio", m.pio), ("mmio", m.mmio)):
            for r in bus.ranges:
                if name_matches(r.name, self.device) or self._bar_of_selected(r.name):
                    ts.append(Target(space, r.start, r.end - r.start, r.name))
        self.targets = ts

    def _bar_of_selected(self, range_name):
        for f in self.functions:
            if range_name.startswith(f.name + " BAR"):
                return True
        return False

    def next(self):
        if not self.pending:
            self._refresh()
            self.pending = self._make()
            self.pending.reverse()
        return self.pending.pop()

    def _make(self):
        rng = self.rng
        r = rng.random()
        if r < 0.40 and self.targets:
            return [self._reg(rng.choice(self.targets))]
        if r < 0.53 and (self.functions or self.device is None):
            return [self._config()]
        if r < 0.60 and self.bar_functions:
            return self._bar_game()
        if r < 0.605 and self.msi_functions:
            return self._msi_game()
        if r < 0.62 and self.ahci_functions:
            return self._ahci_game()
        if r < 0.72 and self.targets:
            return [self._rep(rng.choice(self.targets))]
        if r < 0.80 and self.targets:
            return self._sequence(rng.choice(self.targets))
        if r < 0.84:
            return [self._buffered()]
        if r < 0.87:
            return [self._odd()]
        if r < 0.90:
            return [self._chaos()]
        if r < 0.93:
            return [self._memwrite()]
        if r < 0.97 and (self.device is None or self.vga):
            return [self._event()]
        if self.targets:
            return [self._reg(rng.choice(self.targets))]
        return [self._config()]

    # -- values ---------------------------------------------------------------

    def _value(self, tname, size):
        rng = self.rng
        r = rng.random()
        seen = self.seen.get(tname)
        bits = 8 * min(max(size, 1), 8)
        if r < 0.35:
            v = rng.choice(INTERESTING)
        elif r < 0.6 and seen:
            v = rng.choice(seen) ^ (1 << rng.randrange(bits)) \
                if rng.random() < 0.5 else rng.choice(seen)
        elif r < 0.7 and self.hist.get(tname):
            v = rng.choice(self.hist[tname])[2]
        else:
            v = rng.getrandbits(bits)
        if rng.random() < 0.95 and 0 < size <= 8:
            v &= _mask(size)  # else garbage above the access: the loop must mask it
        return v & ALL64

    def _size(self, space):
        rng = self.rng
        if rng.random() < 0.05:
            return rng.choice((0, 3, 5, 6, 7, 16, 0x80000000, 0xFFFFFFFF) if space == "mmio"
                              else (0, 3, 8, 16, 0xFFFFFFFF))
        if space == "mmio":
            return rng.choice((1, 1, 2, 4, 4, 8))
        return rng.choice((1, 1, 1, 1, 2, 2, 4, 4))

    def learn(self, req, data):
        """After a request ran: remember what the device answered, and writes."""
        if req[0] != "S" or req[7]:
            return
        tname = self.rig.target_name(req)
        if req[6]:
            if data is not None and req[5] in (1, 2, 4, 8):
                s = self.seen.setdefault(tname, [])
                if len(s) < 16:
                    s.append(data & _mask(req[5]))
                else:
                    s[self.rng.randrange(16)] = data & _mask(req[5])
        elif req[1] in (PIO, COPY):
            t = self._target_at(req[1], req[2])
            if t is not None:
                h = self.hist.setdefault(tname, [])
                w = (req[2] - t.start, req[5], req[3])
                if len(h) < 32:
                    h.append(w)
                else:
                    h.pop(0)
                    h.append(w)

    def _target_at(self, t, addr):
        space = "pio" if t == PIO else "mmio"
        for x in self.targets:
            if x.space == space and x.start <= addr < x.start + x.length:
                return x
        return None

    # -- request kinds --------------------------------------------------------

    def _io(self, space, addr, data, size, is_read, count=1, ptr=0, df=0):
        return ("S", PIO if space == "pio" else COPY, addr & ALL64, data, count, size,
                is_read, ptr, df)

    def _reg(self, t):
        rng = self.rng
        r = rng.random()
        if r < 0.9:
            off = rng.randrange(t.length) if t.length <= 4096 or rng.random() < 0.5 \
                else rng.choice((0, 4, 8, t.length - 8, t.length - 4))
        else:
            off = rng.choice((-1, t.length - 1, t.length, t.length + 1))
        size = self._size(t.space)
        is_read = 1 if rng.random() < 0.5 else 0
        data = 0 if is_read else self._value(t.name, size)
        count = 1 if rng.random() < 0.97 else rng.choice((0, 2, 0xFFFFFFFF))
        return self._io(t.space, t.start + off, data, size, is_read, count)

    def _config(self):
        rng = self.rng
        if self.functions and rng.random() < 0.85:
            f = rng.choice(self.functions)
            devfn = f.devfn
        else:
            devfn = rng.randrange(256)
        sbdf = devfn
        if rng.random() < 0.03:
            sbdf |= rng.choice((1 << 8, 0xFF << 8, 1 << 16, 0xFFFF << 16))
        r = rng.random()
        if r < 0.65:
            reg = rng.randrange(0x40)
        elif r < 0.95:
            reg = rng.randrange(256)
        else:
            reg = rng.choice((256, 0xFFF, 0x1000, 0x7FFFFFFF, 0xFFFFFFFF))
        size = rng.choice((1, 1, 2, 2, 4, 4, 4)) if rng.random() < 0.96 \
            else rng.choice((0, 3, 8, 0xFFFFFFFF))
        is_read = 1 if rng.random() < 0.5 else 0
        data = 0 if is_read else self._value("cfg %d" % devfn, size)
        return ("S", PCI, (sbdf << 32) | reg, data, 1, size, is_read, 0, 0)

    def _cfg(self, f, reg, size, value=None):
        addr = (f.devfn << 32) | reg
        if value is None:
            return ("S", PCI, addr, 0, 1, size, 1, 0, 0)
        return ("S", PCI, addr, value & _mask(size), 1, size, 0, 0, 0)

    def _bar_game(self):
        rng = self.rng
        f = rng.choice(self.bar_functions)
        bars = f.bars()
        index, kind, size = rng.choice(bars)
        reg = 0x10 + 4 * index
        cmd = int.from_bytes(bytes(f.config[4:6]), "little")
        decode = 1 if kind == "io" else 2
        r = rng.random()
        unmapped = all(f.bar_mapping(i) is None for i, _k, _s in bars)
        if r < 0.15 or (unmapped and r < 0.5):
            # Firmware's assignment: free space, decoding on.
            out = []
            for i, k, s in bars:
                base = (0xC000 + 0x100 * (f.devfn >> 3)) if k == "io" \
                    else (0xE0000000 + (f.devfn >> 3) * (16 << 20))
                base = (base + s - 1) & ~(s - 1)
                out.append(self._cfg(f, 0x10 + 4 * i, 4, base))
            out.append(self._cfg(f, 4, 2, cmd | 0x7))
            return out
        if r < 0.35:  # sizing, as firmware and Linux probe it
            old = int.from_bytes(bytes(f.config[reg : reg + 4]), "little")
            out = [self._cfg(f, 4, 2, cmd & ~decode)] if rng.random() < 0.5 else []
            out += [self._cfg(f, reg, 4, 0xFFFFFFFF), self._cfg(f, reg, 4)]
            if rng.random() < 0.8:
                out.append(self._cfg(f, reg, 4, old))
            if out[0][3] != cmd and rng.random() < 0.8:
                out.append(self._cfg(f, 4, 2, cmd))
            return out
        if r < 0.8:  # move it: over another BAR, over fixed ports, to odd places
            base = self._bar_base(kind, size)
            out = [self._cfg(f, reg, 4, base & 0xFFFFFFFF)]
            if kind == "mem" and reg + 4 < 0x28 and rng.random() < 0.3:
                out.append(self._cfg(f, reg + 4, 4, base >> 32))
            if rng.random() < 0.5:
                out.append(self._cfg(f, 4, 2, cmd | decode))
            return out
        # decoding, bus mastering and INTx disable toggled
        v = rng.choice((0, 1, 2, 3, 4, 7, 0x400, 0x407, 0xFFFF, cmd ^ decode, cmd ^ 0x400))
        return [self._cfg(f, 4, rng.choice((1, 2, 2, 4)), v)]

    def _msi_game(self):
        """A driver's MSI set-up (address, data, enable, bus mastering), or a hostile
        one: vector 0 (Xen refuses it), an address off the APIC window, enable
        toggled while the function's interrupt is pending."""
        rng = self.rng
        f, cap = rng.choice(self.msi_functions)
        flags = int.from_bytes(bytes(f.config[cap + 2:cap + 4]), "little")
        wide = bool(flags & 0x80)
        r = rng.random()
        if r < 0.25:  # on or off, nothing else
            return [self._cfg(f, cap + 2, 2, flags ^ 1)]
        addr = 0xFEE00000 | (rng.randrange(256) << 12) if rng.random() < 0.8 \
            else rng.getrandbits(32) & ~3
        vector = rng.choice((0, 0x10, 0x21, 0xEF, 0xFF)) if rng.random() < 0.3 \
            else rng.randrange(0x10, 0x100)
        data = (rng.choice((0, 0x4000, 0x8000)) | vector) & 0xFFFF
        out = [self._cfg(f, cap + 4, 4, addr)]
        if wide:
            out.append(self._cfg(f, cap + 8, 4, rng.getrandbits(32) if rng.random() < 0.1
                                 else 0))
        out.append(self._cfg(f, cap + (12 if wide else 8), 2, data))
        out.append(self._cfg(f, cap + 2, 2, flags | 1))
        cmd = int.from_bytes(bytes(f.config[4:6]), "little")
        if rng.random() < 0.7:
            out.append(self._cfg(f, 4, 2, cmd | 0x4))  # bus mastering: messages may go
        return out

    # Where _ahci_game keeps its command lists, FIS areas, command tables and
    # buffers in the fuzzer's RAM (a port's 32 slots' tables 256 bytes apart).
    AHCI_CLB = 0x300000
    AHCI_FB = 0x308000
    AHCI_CT = 0x310000
    AHCI_BUF = 0x400000

    def _ahci_game(self):
        """A command as libahci issues one (command header, FIS and PRDT in guest
        memory, then PxSACT/PxCI), with the port set up first when the dice say,
        and the interrupt handler's reads and acknowledgements; the values are
        often the guest's worst: PRD pieces outside RAM or with odd counts, long
        tables, NCQ tags that don't match the slot, sectors past the disk."""
        rng = self.rng
        f = rng.choice(self.ahci_functions)
        abar = f.bar_mapping(5)
        if abar is None or not f.config[4] & 0x4:
            # Firmware's assignment, memory decoding and bus mastering on.
            size = [s for i, _k, s in f.bars() if i == 5][0]
            base = (0xE0000000 + (f.devfn >> 3) * (16 << 20) + size - 1) & ~(size - 1)
            return [self._cfg(f, 0x24, 4, base), self._cfg(f, 4, 2, 0x7)]
        abar = abar[0] if isinstance(abar, tuple) else abar
        port = rng.choice((0, 0, 0, 1, 1, rng.randrange(6)))
        pr = abar + 0x100 + 0x80 * port
        clb = self.AHCI_CLB + 0x400 * port
        fb = self.AHCI_FB + 0x100 * port
        out = []

        def w(addr, v, size=4):
            out.append(self._io("mmio", addr, v & _mask(size), size, 0))

        def rd(addr):
            out.append(self._io("mmio", addr, 0, 4, 1))

        r = rng.random()
        if r < 0.2:  # the driver's port start: GHC.AE|IE, CLB, FB, IE, FRE, ST
            w(abar + 0x04, 0x80000002)
            w(pr + 0x00, clb)
            w(pr + 0x04, 0)
            w(pr + 0x08, fb)
            w(pr + 0x0C, 0)
            w(pr + 0x30, 0xFFFFFFFF)  # SERR
            w(pr + 0x10, 0xFFFFFFFF)  # IS
            w(pr + 0x14, 0xFDC000FF if rng.random() < 0.9 else rng.getrandbits(32))
            w(pr + 0x18, 0x10 | 0x6)
            w(pr + 0x18, 0x11 | 0x6)
            if rng.random() < 0.2:  # COMRESET
                w(pr + 0x2C, 1)
                w(pr + 0x2C, 0)
            return out
        if r < 0.35:  # the interrupt handler: IS, PxIS read and cleared, SACT/CI
            rd(abar + 0x08)
            rd(pr + 0x10)
            w(pr + 0x10, 0xFFFFFFFF if rng.random() < 0.8 else rng.getrandbits(32))
            rd(pr + 0x34 if rng.random() < 0.5 else pr + 0x38)
            w(abar + 0x08, 0xFFFFFFFF if rng.random() < 0.8 else 1 << port)
            if rng.random() < 0.1:  # error recovery: stop, CLO, start
                w(pr + 0x18, 0x16)
                w(pr + 0x18, 0x1E)
                w(pr + 0x18, 0x17)
            return out
        # A command in slot `slot`, most often on a port set up and running (the
        # other requests keep scribbling on its registers).
        if rng.random() < 0.8:
            w(pr + 0x00, clb)
            w(pr + 0x04, 0)
            w(pr + 0x08, fb)
            w(pr + 0x0C, 0)
            w(pr + 0x18, 0x17)
        slot = rng.randrange(32) if rng.random() < 0.5 else rng.randrange(4)
        ncq = rng.random() < 0.5
        op = rng.choice((0x60, 0x61)) if ncq else rng.choice(
            (0xEC, 0x25, 0x35, 0xC8, 0xCA, 0xE7, 0xEA, 0x2F, 0xEF, 0xA0, 0xA1, 0x20,
             rng.randrange(256)))
        sectors = rng.choice((1, 8, 128, 256, 2048, 0, rng.randrange(65536)))
        lba = rng.choice((0, 1, 2040, 2047, 2048, rng.getrandbits(48)))
        fis = bytearray(20)
        fis[0] = 0x27 if rng.random() < 0.97 else rng.getrandbits(8)
        fis[1] = 0x80 if rng.random() < 0.95 else rng.getrandbits(8)
        fis[2] = op
        fis[4:7] = (lba & 0xFFFFFF).to_bytes(3, "little")
        fis[7] = 0x40 | (rng.choice((0, 0x80)) if ncq else 0)
        fis[8:11] = (lba >> 24).to_bytes(3, "little")
        if ncq:
            tag = slot if rng.random() < 0.9 else rng.randrange(32)
            fis[3], fis[11] = sectors & 0xFF, (sectors >> 8) & 0xFF
            fis[12] = tag << 3
        else:
            fis[12], fis[13] = sectors & 0xFF, (sectors >> 8) & 0xFF
        # The PRDT: pieces in the buffer area, or the guest's worst.
        want = max(sectors, 1) * 512
        n = rng.choice((1, 2, 8, 64)) if rng.random() < 0.9 else rng.choice((0, 168, 4096))
        ram = min(self.rig.ram_bytes, 0xF0000000)
        prdt = bytearray()
        left = want
        for i in range(n):
            k = max(2, min(left, 1 << 22) // max(1, n - i) & ~1) if left > 0 else 512
            r = rng.random()
            if r < 0.85:
                a = self.AHCI_BUF + rng.randrange(0, 0x200000, 0x1000)
            elif r < 0.9:
                a = ram - rng.choice((2, 512, 4096))  # runs off the end of RAM
            elif r < 0.95:
                a = rng.choice((0xFEC00000, 0xB8000, ALL64 - 4095, 1 << 40))
            else:
                a = rng.getrandbits(64)
            if rng.random() < 0.03:
                k |= 1  # an odd byte count
            k = min(k, 1 << 22)
            prdt += struct.pack("<QII", a, 0, (k - 1) & 0x3FFFFF | (rng.choice((0, 1 << 31))))
            left -= k
        ct = self.AHCI_CT + 0x100 * slot + 0x4000 * port
        if len(prdt) > 0x80 * 16 or rng.random() < 0.05:
            ct = rng.choice((ram - 0x80, 0xFEC00000, ct))  # a table off RAM's end or outside
        dw0 = 5 | (0x40 if op in (0x61, 0x35, 0xCA) else 0) | (n << 16)
        if op in (0xA0, 0xA1):
            dw0 |= 0x20
        if rng.random() < 0.05:
            dw0 = rng.getrandbits(32)
        hdr = struct.pack("<IIII", dw0 & 0xFFFFFFFF, 0, ct & 0xFFFFFF80, ct >> 32) + bytes(16)
        out.append(("M", clb + 32 * slot, hdr))
        table = bytes(fis) + bytes(0x80 - 20)
        if op == 0xA0:  # ATAPI: a READ(10) or INQUIRY packet
            pkt = rng.choice((b"\x28\x00\x00\x00\x00\x00\x00\x00\x04\x00",
                              b"\x12\x00\x00\x00\x60\x00"))
            table = table[:0x40] + pkt + table[0x40 + len(pkt):]
        if ct + 0x80 + len(prdt) <= ram:
            out.append(("M", ct, table + bytes(prdt[:0x1000])))
        if ncq:
            w(pr + 0x34, 1 << slot)
        w(pr + 0x38, 1 << slot)
        if rng.random() < 0.5:
            rd(pr + 0x38)
        return out

    def _bar_base(self, kind, size):
        rng = self.rng
        m = self.rig.machine
        cands = []
        bus = m.pio if kind == "io" else m.mmio
        for r in bus.ranges:
            cands.append(r.start)
        if kind == "io":
            cands += [0, 0x60, 0xCF8, 0x3F8, 0x10000 - size, 0xFFFC, 0xC000,
                      rng.randrange(0x1000, 0x10000)]
        else:
            cands += [0, 0xA0000, 0x100000, 0xF0000000, 0xFEB00000, 0xFFFFFFF0 & ~(size - 1),
                      self.rig.ram_bytes - size, rng.randrange(1 << 32), 1 << 32]
        return rng.choice(cands) & ~(size - 1)

    def _gpa(self, size, count):
        rng = self.rng
        end = min(self.rig.ram_bytes, 0xF0000000)
        total = size * max(count, 1)
        c = rng.random()
        if c < 0.5:
            return rng.randrange(max(end - total, 1))
        return rng.choice((0, 1, end - total, end - total + 1, end - 1, end, end + 4096,
                           4096 - 1, (1 << 20) - 1, 0xF0000000 - 2, 1 << 32, (1 << 32) - 1,
                           ALL64 - 2, ALL64 - total + 1, rng.getrandbits(64))) & ALL64

    def _rep(self, t):
        rng = self.rng
        size = rng.choice((1, 1, 2, 4) if t.space == "pio" else (1, 2, 4, 8))
        if rng.random() < 0.03:
            size = rng.choice((0, 3, 16))
        page = MAX_REP_BYTES // max(size, 1)
        c = rng.random()
        if c < 0.6:
            count = rng.randint(1, 16)
        elif c < 0.8:
            count = rng.randint(17, 256)
        elif c < 0.88:
            count = page  # a whole page: the most Xen sends in one request
        else:
            count = rng.choice((0, page + 1, 0x10000, 0xFFFFFFFF))
        # A device's data registers are where strings go: offsets written before first.
        h = self.hist.get(t.name)
        if h and rng.random() < 0.6:
            off = rng.choice(h)[0] if rng.random() < 0.7 else 0
        else:
            off = rng.randrange(t.length)
        df = 1 if rng.random() < 0.2 else 0
        return self._io(t.space, t.start + off, self._gpa(max(size, 1), count), size,
                        1 if rng.random() < 0.5 else 0, count, 1, df)

    def _sequence(self, t):
        """Earlier writes to this device again: cut short, repeated, stuttered."""
        rng = self.rng
        h = self.hist.get(t.name)
        if not h:
            return [self._reg(t)]
        k = rng.randint(1, min(8, len(h)))
        i = rng.randrange(len(h) - k + 1)
        seq = h[i : i + k]
        mode = rng.random()
        if mode < 0.35 and k > 1:
            seq = seq[: rng.randrange(1, k)]
        elif mode < 0.7:
            seq = seq * rng.randint(2, 3)
        elif mode < 0.85:
            seq = [w for w in seq for _ in (0, 1)]
        out = []
        for off, size, value in seq:
            out.append(self._io(t.space, t.start + off, value, size, 0))
            if rng.random() < 0.2:
                out.append(self._io(t.space, t.start + rng.randrange(t.length), 0, 1, 1))
        return out

    def _buffered(self):
        rng = self.rng
        slots = []
        low = [t for t in self.targets if t.start + t.length <= 1 << 20]
        for _ in range(rng.randint(1, 6)):
            size = rng.choice((1, 2, 4, 8))
            r = rng.random()
            t = PIO if r < 0.4 else COPY if r < 0.9 else \
                rng.choice((abi.IOREQ_TYPE_TIMEOFFSET, PCI, 3, 200))
            if low and rng.random() < 0.7:
                x = rng.choice(low)
                addr = x.start + rng.randrange(x.length)
                t = PIO if x.space == "pio" and t in (PIO, COPY) else t
            else:
                addr = rng.randrange(1 << 20)
            d = 1 if rng.random() < 0.05 else 0
            data = self._value("buffered", size)
            w = abi.pack_buf_ioreq(t, d, size, addr, data & 0xFFFFFFFF)
            slots.append(struct.unpack("<II", w))
            if size == 8 and rng.random() < 0.95:
                slots.append((0, (data >> 32) & 0xFFFFFFFF))
        extra = 0
        if rng.random() < 0.03:
            extra = rng.choice((-1, 511, 600, 0x7FFFFFFF))
        return ("B", tuple(slots), extra)

    def _odd(self):
        rng = self.rng
        r = rng.random()
        if r < 0.3:
            return ("S", abi.IOREQ_TYPE_INVALIDATE, 0, 0, 1, 8, 0, 0, 0)
        if r < 0.5:
            return ("S", abi.IOREQ_TYPE_TIMEOFFSET, 0, rng.choice((0, 3600, ALL64 - 3599,
                                                                    rng.getrandbits(64))),
                    1, 8, 0, 0, 0)
        t = rng.choice((3, 4, 5, 6, 9, 10, 0x7F, 0x80, 0xFF))
        return ("S", t, rng.getrandbits(64), rng.getrandbits(64), 1, rng.choice((1, 4, 8)),
                rng.randrange(2), rng.randrange(2), rng.randrange(2))

    def _chaos(self):
        rng = self.rng
        t = rng.choice((PIO, PIO, COPY, COPY, PCI, rng.randrange(256)))
        if rng.random() < 0.5 and self.targets:
            x = rng.choice(self.targets)
            addr = x.start + rng.randrange(-4, x.length + 4)
        else:
            addr = rng.choice((rng.getrandbits(16), rng.getrandbits(32), rng.getrandbits(64)))
        return ("S", t, addr & ALL64, rng.getrandbits(64),
                rng.choice((0, 1, 1, 1, 2, rng.getrandbits(32))),
                rng.choice((0, 1, 2, 3, 4, 8, 16, rng.getrandbits(32))),
                rng.randrange(2), 1 if rng.random() < 0.2 else 0, rng.randrange(2))

    def _memwrite(self):
        rng = self.rng
        end = min(self.rig.ram_bytes, 0xF0000000)
        n = rng.choice((1, 4, 16, 64))
        gpa = rng.randrange(0, end - n)
        return ("M", gpa, bytes(rng.getrandbits(8) for _ in range(n)))

    def _event(self):
        rng = self.rng
        choices = []
        if self.uarts:
            choices += ["rx", "rx", "tick", "tick", "break"]
        if self.kbd:
            choices += ["key", "mouse"]
        if self.vga:
            choices += ["refresh"]
        if not choices:
            return self._memwrite()
        what = rng.choice(choices)
        if what == "rx":
            return ("E", "rx", rng.randrange(self.uarts),
                    bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 20))))
        if what in ("tick", "break"):
            return ("E", what, rng.randrange(self.uarts), None)
        if what == "refresh":
            return ("E", "refresh", 0, None)
        if what == "key":
            return ("E", "key", 0, bytes(rng.choice((0x1E, 0x9E, 0xE0, 0x2A, 0xAA, 0x1C, 0x9C))
                                         for _ in range(rng.randint(1, 3))))
        return ("E", "mouse", 0, (rng.randint(-300, 300), rng.randint(-300, 300),
                                  rng.randint(-2, 2), rng.randrange(8)))


# ------------------------------------------------------------ text form

def format_request(req):
    k = req[0]
    if k == "S":
        _, t, addr, data, count, size, is_read, ptr, df = req
        return ("ioreq type=%s addr=%#x data=%#x count=%d size=%d dir=%s ptr=%d df=%d"
                % (TYPE_NAMES.get(t, str(t)), addr, data, count, size,
                   "read" if is_read else "write", ptr, df))
    if k == "B":
        return "bufioreq slots=%s extra=%d" % (",".join("%08x:%08x" % s for s in req[1]) or "-",
                                                req[2])
    if k == "M":
        return "ram gpa=%#x data=%s" % (req[1], req[2].hex())
    _, what, idx, arg = req
    if isinstance(arg, bytes):
        arg = arg.hex()
    elif isinstance(arg, tuple):
        arg = ":".join(str(a) for a in arg)
    return "event %s index=%d arg=%s" % (what, idx, arg)


def parse_request(line):
    words = line.split()
    kv = dict(w.split("=", 1) for w in words[1:] if "=" in w)
    if words[0] == "ioreq":
        names = dict((v, k) for k, v in TYPE_NAMES.items())
        t = names[kv["type"]] if kv["type"] in names else int(kv["type"])
        return ("S", t, int(kv["addr"], 0), int(kv["data"], 0), int(kv["count"]),
                int(kv["size"]), 1 if kv["dir"] == "read" else 0, int(kv["ptr"]), int(kv["df"]))
    if words[0] == "bufioreq":
        slots = () if kv["slots"] == "-" else tuple(
            tuple(int(h, 16) for h in s.split(":")) for s in kv["slots"].split(","))
        return ("B", slots, int(kv["extra"]))
    if words[0] == "ram":
        return ("M", int(kv["gpa"], 0), bytes.fromhex(kv["data"]))
    if words[0] == "event":
        what, arg = words[1], kv["arg"]
        if what in ("rx", "key"):
            arg = bytes.fromhex(arg)
        elif what == "mouse":
            arg = tuple(int(a) for a in arg.split(":"))
        else:
            arg = None
        return ("E", what, int(kv["index"]), arg)
    raise ValueError("not a request: " + line)


# ------------------------------------------------------------ checks and runs

class Problem:
    """One finding: what, where, and how to get it again."""

    def __init__(self, kind, key, message, epoch, index, target):
        self.kind = kind
        self.key = key
        self.message = message
        self.epoch = epoch
        self.index = index
        self.target = target
        self.count = 1
        self.reproducer = None
        self.shrink_note = ""
        # A slow finding's next occurrences (epoch, index, message), up to
        # LATER_SLOW: if the first was a scheduling hiccup that a fresh machine
        # does not repeat, a later one of the same key may be the real bug.
        self.later = []


def rep_bytes(req):
    """The bytes a rep request moves beyond its first item (0 for anything else)."""
    if req[0] != "S":
        return 0
    count, size = req[4], max(1, min(req[5], 8))
    if count < 2:  # rep ins/outs/movs (data_is_ptr) and rep stos alike
        return 0
    return min(count * size, MAX_REP_BYTES) - size


def check_request(rig, req, call_bound=CALL_BOUND, slow_s=SLOW_S):
    """Runs one request on the rig; returns [(kind, key, message)] of what is wrong."""
    p = rig.platform
    calls0, irq0, down0, map0 = p.calls, p.irq_calls, p.shutdown_calls, p.map_changes
    del rig.wide[:]
    out = []
    target = rig.target_name(req)
    try:
        dt, data = rig.execute(req)
    except Finding as e:
        return [("protocol", target, str(e))], None, target
    except Exception as e:  # noqa: BLE001 - any escape is the finding
        tb = e.__traceback__
        where = "?"
        while tb is not None:
            fn = tb.tb_frame.f_code.co_filename
            if "/stubdm/" in fn or "/tests/" in fn:
                where = "%s:%d" % (fn.split("/")[-1], tb.tb_lineno)
            tb = tb.tb_next
        return [("exception", "%s at %s" % (type(e).__name__, where),
                 "%s: %s (at %s, %s)" % (type(e).__name__, e, where, target))], None, target
    if dt > slow_s + rep_bytes(req) * REP_BYTE_S:
        # Rep requests are slow for their count: one key per target and size class.
        key = target
        if req[0] == "S" and req[7] and req[4]:
            n = req[4].bit_length()
            key = "%s, rep of %d..%d items" % (target, 1 << (n - 1), (1 << n) - 1)
        out.append(("slow", key, "one request took %.1f ms (%.1f ms of CPU) (%s: %s)"
                    % (rig.last_wall * 1000, rig.last_cpu * 1000, target,
                       format_request(req))))
    calls = p.calls - calls0
    if calls > call_bound:
        out.append(("hypercalls", target, "one request made %d hypervisor calls (%d IRQ level "
                    "changes, %d map/unmap, %d shutdowns; the bound is %d) at %s"
                    % (calls, p.irq_calls - irq0, p.map_changes - map0,
                       p.shutdown_calls - down0, call_bound, target)))
    mm = rig.irq_mismatch()
    if mm is not None:
        key, want, seen = mm
        out.append(("irq", "%s %s" % (key[0], "/".join(str(k) for k in key[1:])),
                    "after a request to %s the device's %s line is %d but the platform last "
                    "saw %d" % (target, " ".join(str(k) for k in key), want, seen)))
    if data is not None and req[0] == "S" and not req[7] and req[5] in VALID_SIZES.get(req[1], ()):
        if data >> (8 * req[5]):
            # Keyed by the shape of the request: one cause shows on every target.
            shape = TYPE_NAMES.get(req[1]) + " read"
            if req[1] == PCI and (req[2] & 0xFFFFFFFF) >= 256:
                shape += ", register >= 256"
            elif req[1] == PCI and req[2] >> 40:
                shape += ", segment or bus not 0"
            elif req[1] != PCI and req[4] == 0:
                shape += ", count 0"
            elif req[1] == PIO and req[2] > 0xFFFF:
                shape += ", port above 0xffff"
            else:
                shape += ", " + target
            out.append(("wide", shape, "read of size %d answered %#x (%s)"
                        % (req[5], data, format_request(req))))
    for where, off, size, v in rig.wide:
        out.append(("wide", "%s+%#x" % (where, off),
                    "%s returned %r for a %d-byte read at offset %#x" % (where, v, size, off)))
    return out, data, target


def epoch_rng(seed, epoch):
    return random.Random("%d:%d" % (seed, epoch))


def _done(rig):
    return bool(rig.platform.shutdowns) or getattr(rig.machine, "reset_requested", False)


def run_sequence(reqs, factory=default_machine, ram_bytes=16 << 20, instrument=True, **kw):
    """Runs reqs on a fresh machine; returns every (index, kind, key, message) found."""
    rig = Rig(factory, ram_bytes, instrument)
    found = []
    for i, req in enumerate(reqs):
        probs, _data, _t = check_request(rig, req, **kw)
        for kind, key, msg in probs:
            found.append((i, kind, key, msg))
        if any(k in ("exception", "protocol") for _i, k, _key, _m in found):
            break
        if _done(rig):
            rig.platform.shutdowns = []
            rig.machine.reset_requested = False
    return found


def blocks_growth(reqs, factory=default_machine, ram_bytes=16 << 20, repeat=30):
    """Allocated blocks gained over `repeat` more runs of reqs, after three warm-up runs."""
    rig = Rig(factory, ram_bytes)
    for _ in range(3):
        for req in reqs:
            rig.execute(req)
    gc.collect()
    b0 = sys.getallocatedblocks()
    for _ in range(repeat):
        for req in reqs:
            rig.execute(req)
    gc.collect()
    return sys.getallocatedblocks() - b0


def ddmin(seq, test, budget):
    """Zeller's delta debugging: a 1-minimal sub-sequence of seq for which test holds
    (while budget, a list holding the trials left, lasts)."""
    n = 2
    while len(seq) >= 2 and budget[0] > 0:
        chunk = (len(seq) + n - 1) // n
        parts = [seq[i : i + chunk] for i in range(0, len(seq), chunk)]
        done = False
        for p in parts:
            budget[0] -= 1
            if test(p):
                seq, n, done = p, 2, True
                break
            if budget[0] <= 0:
                return seq
        if not done:
            for i in range(len(parts)):
                comp = [x for j, p in enumerate(parts) if j != i for x in p]
                budget[0] -= 1
                if comp and test(comp):
                    seq, n, done = comp, max(n - 1, 2), True
                    break
                if budget[0] <= 0:
                    return seq
        if not done:
            if n >= len(seq):
                break
            n = min(len(seq), 2 * n)
    return seq


class Fuzzer:
    def __init__(self, seed=0, requests=100000, device=None, factory=default_machine,
                 ram_bytes=16 << 20, epoch=EPOCH, slow_s=SLOW_S, call_bound=CALL_BOUND,
                 progress=None, shrink_seconds=20.0, growth_blocks=GROWTH_BLOCKS):
        self.seed = seed
        self.requests = requests
        self.device = device
        self.factory = factory
        self.ram_bytes = ram_bytes
        self.epoch_len = epoch
        self.slow_s = slow_s
        self.call_bound = call_bound
        self.progress = progress
        self.shrink_seconds = shrink_seconds
        self.growth_blocks = growth_blocks
        self.problems = {}
        self.coverage = {}
        self.done = 0
        self.epochs = 0
        self.unconfirmed = []
        self.seconds = 0.0

    def _rig(self):
        return Rig(self.factory, self.ram_bytes)

    def check_device(self):
        """None if --device names something the machine has, else the names it has."""
        if self.device is None:
            return None
        names = device_names(self._rig().machine)
        if any(name_matches(n, self.device) for n in names):
            return None
        return names

    def _note(self, kind, key, msg, epoch, index, target):
        p = self.problems.get((kind, key))
        if p is None:
            self.problems[(kind, key)] = Problem(kind, key, msg, epoch, index, target)
        else:
            p.count += 1
            if kind == "slow" and len(p.later) < LATER_SLOW:
                p.later.append((epoch, index, msg))

    def run(self, shrink=True):
        """Runs the requests; returns the findings (shrunk unless shrink is False:
        then shrink(problem) does one)."""
        old_verbose = log.verbose
        log.verbose = 0
        gc_was = gc.isenabled()
        gc.disable()  # collections run between requests, not inside a timed one
        t_start = time.perf_counter()
        last_report = t_start
        try:
            epoch = 0
            while self.done < self.requests:
                n = min(self.epoch_len, self.requests - self.done)
                ran, last_report = self._epoch(epoch, n, t_start, last_report)
                self.done += ran
                epoch += 1
            self.epochs = epoch
        finally:
            self.seconds = time.perf_counter() - t_start
            if gc_was:
                gc.enable()
            log.verbose = old_verbose
        if shrink:
            self._shrink_all()
        return sorted(self.problems.values(), key=lambda p: (p.epoch, p.index))

    def _epoch(self, epoch, n, t_start, last_report):
        rig = self._rig()
        gen = Generator(epoch_rng(self.seed, epoch), rig, self.device)
        cov = self.coverage
        samples = []
        warm = int(n * WARMUP)
        i = 0
        while i < n:
            req = gen.next()
            probs, data, target = check_request(rig, req, self.call_bound, self.slow_s)
            cov[target] = cov.get(target, 0) + 1
            i += 1
            crashed = False
            for kind, key, msg in probs:
                self._note(kind, key, msg, epoch, i - 1, target)
                crashed = crashed or kind in ("exception", "protocol")
            if crashed:
                break  # the device model is gone: a fresh machine
            if _done(rig):
                # A reboot or power-off: the toolstack will end this device model,
                # but a guest's requests may still be in flight; keep going.
                rig.platform.shutdowns = []
                rig.machine.reset_requested = False
            gen.learn(req, data)
            if i % 1000 == 0:
                gc.collect(0)
                if i >= warm and i % SAMPLE_EVERY == 0:
                    gc.collect()
                    samples.append((i, sys.getallocatedblocks()))
                if self.progress is not None:
                    now = time.perf_counter()
                    if now - last_report >= 3.0:
                        last_report = now
                        total = self.done + i
                        self.progress("fuzz: %d/%d requests, %.0f/s, %d findings"
                                      % (total, self.requests, total / (now - t_start),
                                         len(self.problems)))
        gc.collect()
        if len(samples) >= 4:
            first = min(b for _i, b in samples[: len(samples) // 2])
            grew = samples[-1][1] - first
            ups = sum(1 for a, b in zip(samples, samples[1:]) if b[1] > a[1])
            if grew > self.growth_blocks and ups >= (len(samples) - 1) * 3 // 4:
                self._note("growth", "memory", "allocated blocks grew by %d over %d requests "
                           "after warm-up (from %d to %d)" % (grew, samples[-1][0] - samples[0][0],
                                                              first, samples[-1][1]),
                           epoch, i - 1, "")
        return i, last_report

    # -- reproducers ----------------------------------------------------------

    def regenerate(self, epoch, index):
        """The requests of `epoch` up to and including `index`, as the run made them."""
        rig = self._rig()
        gen = Generator(epoch_rng(self.seed, epoch), rig, self.device)
        reqs = []
        for _ in range(index + 1):
            req = gen.next()
            reqs.append(req)
            try:
                _dt, data = rig.execute(req)
            except Exception:  # noqa: BLE001 - the finding itself, at the end
                break
            if _done(rig):
                rig.platform.shutdowns = []
                rig.machine.reset_requested = False
            gen.learn(req, data)
        return reqs

    def _reproduces(self, p, reqs):
        kw = {"call_bound": self.call_bound, "slow_s": self.slow_s}
        if p.kind == "slow":
            # Timing: it must be slow twice without the fuzzer's own checks
            # inside, so neither they nor a scheduling hiccup is shrunk to.
            for _ in range(2):
                if not any(k == p.kind and key == p.key for _i, k, key, _m in
                           run_sequence(reqs, self.factory, self.ram_bytes, False, **kw)):
                    return False
            return True
        return any(k == p.kind and key == p.key for _i, k, key, _m in
                   run_sequence(reqs, self.factory, self.ram_bytes, **kw))

    def _grows(self, reqs):
        try:
            return blocks_growth(reqs, self.factory, self.ram_bytes) >= 30
        except Exception:  # noqa: BLE001 - a crash is another finding
            return False

    def shrink(self, p):
        """Finds p's reproducer; False if p did not happen again on a fresh machine."""
        old_verbose = log.verbose
        log.verbose = 0
        try:
            while not self._shrink(p):
                if not p.later:
                    return False
                # The occurrence did not come again: try the key's next one.
                p.epoch, p.index, p.message = p.later.pop(0)
            return True
        finally:
            log.verbose = old_verbose

    def _shrink_all(self):
        gc.enable()
        self.unconfirmed = []
        for p in sorted(self.problems.values(), key=lambda p: (p.epoch, p.index)):
            if not self.shrink(p) and p.kind == "slow":
                # Slow only with the checks inside it, or only once: not a finding.
                del self.problems[(p.kind, p.key)]
                self.unconfirmed.append(p)

    def _shrink(self, p):
        t0 = time.perf_counter()
        reqs = self.regenerate(p.epoch, p.index)
        deadline = t0 + self.shrink_seconds
        budget = [4000]

        if p.kind == "growth":
            reqs = reqs[-500:]
            if not self._grows(reqs):
                p.shrink_note = "not reproduced by repeating the last %d requests" % len(reqs)
                p.reproducer = None
                return True

            def test(seq):
                return time.perf_counter() < deadline and self._grows(seq)
        else:
            def test(seq):
                return time.perf_counter() < deadline and self._reproduces(p, seq)

            if not self._reproduces(p, reqs):
                p.shrink_note = "did not reproduce on a fresh machine"
                p.reproducer = reqs[-50:]
                return False
        full = len(reqs)
        # Most findings need little context: the shortest failing suffix first.
        k = 1
        while k < len(reqs):
            budget[0] -= 1
            if test(reqs[-k:]):
                reqs = reqs[-k:]
                break
            k *= 2
        reqs = ddmin(reqs, test, budget)
        p.reproducer = reqs
        p.shrink_note = "shrunk from %d requests in %.1f s" % (full, time.perf_counter() - t0)
        if p.kind == "growth":
            p.message += "; " + _growth_site(reqs, self.factory, self.ram_bytes)
        return True


def _growth_site(reqs, factory, ram_bytes):
    import tracemalloc

    rig = Rig(factory, ram_bytes)
    for req in reqs * 3:
        rig.execute(req)
    tracemalloc.start()
    s0 = tracemalloc.take_snapshot()
    for req in reqs * 50:
        rig.execute(req)
    s1 = tracemalloc.take_snapshot()
    tracemalloc.stop()
    stats = s1.compare_to(s0, "lineno")
    if not stats:
        return "no allocation site found"
    top = stats[0]
    fr = top.traceback[0]
    return "grows at %s:%d (%+d blocks over 50 repetitions)" % (fr.filename.split("/")[-1],
                                                                 fr.lineno, top.count_diff)


def report(fz, problems, out):
    rate = fz.done / fz.seconds if fz.seconds else 0.0
    out.write("fuzz: seed %d, %d requests in %.1f s: %.0f requests/second, %d machines, "
              "%d finding%s\n" % (fz.seed, fz.done, fz.seconds, rate, fz.epochs, len(problems),
                                  "" if len(problems) == 1 else "s"))
    if fz.unconfirmed:
        n = len(fz.unconfirmed)
        out.write("%d slow request%s not confirmed on a re-run without the fuzzer's checks "
                  "(not findings), e.g. %s\n" % (n, "" if n == 1 else "s", "; ".join(
                      p.message for p in fz.unconfirmed[:3])))
    top = sorted(fz.coverage.items(), key=lambda kv: -kv[1])
    out.write("requests by target: %s\n" % ", ".join("%s %d" % kv for kv in top[:24]))
    for n, p in enumerate(problems, 1):
        out.write("\nFINDING %d: %s: %s\n" % (n, p.kind, p.message))
        out.write("  seen %d time%s; first at seed %d, machine %d, request %d\n"
                  % (p.count, "" if p.count == 1 else "s", fz.seed, p.epoch, p.index))
        if p.reproducer is not None:
            out.write("  reproducer (%d request%s, %s; run it with stubdm-sim fuzz --repro "
                      "FILE):\n" % (len(p.reproducer), "" if len(p.reproducer) == 1 else "s",
                                    p.shrink_note))
            for req in p.reproducer:
                out.write("    " + format_request(req) + "\n")
        else:
            out.write("  no reproducer: %s\n" % p.shrink_note)


def cmd_fuzz(args):
    if args.repro:
        with open(args.repro) as f:
            reqs = [parse_request(x.strip()) for x in f if x.strip() and
                    not x.strip().startswith("#")]
        found = run_sequence(reqs, ram_bytes=args.ram_mib << 20)
        for i, kind, _key, msg in found:
            print("request %d: %s: %s" % (i, kind, msg))
        print("%d request%s, %d finding%s" % (len(reqs), "" if len(reqs) == 1 else "s",
                                              len(found), "" if len(found) == 1 else "s"))
        return 1 if found else 0

    def progress(msg):
        sys.stderr.write(msg + "\n")
        sys.stderr.flush()

    fz = Fuzzer(seed=args.seed, requests=args.requests, device=args.device,
                ram_bytes=args.ram_mib << 20, progress=progress)
    if args.list_devices:
        for n in device_names(fz._rig().machine):
            print(n)
        return 0
    names = fz.check_device()
    if names is not None:
        sys.stderr.write("stubdm-sim fuzz: no device %r; the machine has: %s\n"
                         % (args.device, ", ".join(names)))
        return 2
    problems = fz.run()
    report(fz, problems, sys.stdout)
    return 1 if problems else 0


def add_command(sub, common):
    fz = sub.add_parser(
        "fuzz", help="fuzz every device model in-process (the real Machine and Dispatcher)",
        description="Structure-aware fuzzing of stubdm's machine: requests built from the "
        "ranges, PCI functions and BARs the machine claims, run through the real ioreq loop "
        "on CPython with a fake platform as strict as Xen's. Reports exceptions, requests "
        "slower than 10 ms of CPU (a rep: plus 5 us a byte), memory growth, IRQ lines left "
        "inconsistent, values wider than the access and requests making too many hypervisor "
        "calls, each with the seed and a "
        "reproducer shrunk by delta debugging.",
        epilog="Exit status: 0 no findings, 1 findings, 2 bad usage.")
    fz.add_argument("--device", metavar="NAME",
                    help="only this device (a name the machine gives: --list-devices)")
    fz.add_argument("--requests", type=int, default=100000, metavar="N",
                    help="requests to run (default 100000)")
    fz.add_argument("--seed", type=int, default=0, metavar="S", help="seed (default 0)")
    fz.add_argument("--ram-mib", type=int, default=16, metavar="MiB",
                    help="guest RAM behind the fake mapcache (default 16)")
    fz.add_argument("--list-devices", action="store_true", help="the names --device takes")
    fz.add_argument("--repro", metavar="FILE",
                    help="run a reproducer (the request lines of a finding) and report")
    fz.set_defaults(func=cmd_fuzz)
