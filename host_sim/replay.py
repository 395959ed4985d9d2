"""stubdm-sim replay: QEMU's own access trace, replayed against stubdm.

QEMU run with `-trace memory_region_ops_read -trace memory_region_ops_write`
prints one line per access a device region gets, as QEMU 11.1 writes it
(shown folded here):

    memory_region_ops_write cpu 0 mr 0x5555... addr 0xcf8 value 0x80000000 size 4 \
        name 'pci-conf-idx'

(`addr` is the absolute address; the log back end may prefix `PID@SECS:`).
Each access by a vCPU is replayed through the scripted guest
(host_sim.scripted: a real device model process behind host_sim's Xen
routing): writes are written, reads are read and compared with QEMU's value,
per memory region (QEMU's name; PCI configuration data per function, 16550s
per base). What stubdm does not serve is counted as skipped and not sent:
ranges Xen emulates itself (host_sim does, as Xen would), ranges nobody
claims, PCI functions only one of the two machines has. A difference is
classified as timing-only when only bits that depend on when the access came
differ (a 16550's transmitter-empty bits and THR interrupt, modem status
deltas, the PM timer's status); those are reported separately. Every other
difference is one a driver would act on: the exit status is then 1.

Note: QEMU's trace shows accesses as its memory core hands them to a device
region: a 2-byte guest access to a region that takes bytes shows as two
1-byte lines, and those are what is replayed.
"""
import lzma
import re
import sys

from host_sim import scripted
from stubdm import abi

# Regions of QEMU's pc machine whose devices stubdm models (or that show what
# stubdm must leave alone): what build/record_trace.py keeps of a trace.
RECORDED_REGIONS = {
    "pci-conf-idx", "pci-conf-data", "serial", "i8042-data", "i8042-cmd", "port92",
    "acpi-cnt", "acpi-evt", "acpi-gpe0", "apm-io", "piix-reset-control", "io",
}

_LINE = re.compile(
    r"^(?:\d+@\d+\.\d+:)?memory_region_ops_(read|write) cpu (-?\d+) mr 0x[0-9a-f]+ "
    r"addr (0x[0-9a-f]+) value (0x[0-9a-f]+) size (\d+) name '(.*)'\s*$")
CF8_ENABLED = 0x80000000


class Access:
    __slots__ = ("is_read", "cpu", "addr", "value", "size", "name", "lineno")

    def __init__(self, is_read, cpu, addr, value, size, name, lineno=0):
        self.is_read = is_read
        self.cpu = cpu
        self.addr = addr
        self.value = value
        self.size = size
        self.name = name
        self.lineno = lineno


def parse_line(line, lineno=0):
    """An Access, or None for a line that is not a memory_region_ops one."""
    m = _LINE.match(line)
    if m is None:
        return None
    return Access(m.group(1) == "read", int(m.group(2)), int(m.group(3), 16),
                  int(m.group(4), 16), int(m.group(5)), m.group(6), lineno)


def open_trace(path):
    if path.endswith(".xz"):
        return lzma.open(path, "rt", errors="replace")
    return open(path, errors="replace")


def read_trace(path, comments=None):
    """(accesses, lines that were neither accesses nor comments); the comment
    lines (build/record_trace.py's header) go to `comments` if given."""
    out, other = [], 0
    with open_trace(path) as f:
        for n, line in enumerate(f, 1):
            if line.startswith("#"):
                if comments is not None:
                    comments.append(line.rstrip("\n"))
                continue
            if not line.strip():
                continue
            a = parse_line(line, n)
            if a is None:
                other += 1
            else:
                out.append(a)
    return out, other


# Bits whose value depends on when an access came, not on what came before:
# (QEMU region name, offset in the device) -> function(qemu, stubdm) -> True
# when the two differ only in such bits.
def _lsr(q, s):
    return (q ^ s) & ~0x60 == 0  # THRE, TEMT: the transmitter's progress


def _iir(q, s):
    # No interrupt (x1) versus THR empty (x2): the transmitter again.
    return q & 0xF0 == s & 0xF0 and {q & 0x0F, s & 0x0F} <= {0x01, 0x02}


def _msr(q, s):
    return (q ^ s) & ~0x0F == 0  # the delta bits: what changed since the last read


def _pm1_sts(q, s):
    return (q ^ s) & ~0x0001 == 0  # TMR_STS: the PM timer's carry


TIMING = {
    ("serial", 2): _iir, ("serial", 5): _lsr, ("serial", 6): _msr,
    ("acpi-evt", 0): _pm1_sts,
}


class Region:
    def __init__(self, key):
        self.key = key
        self.accesses = 0
        self.replayed = 0
        self.reads = 0
        self.same = 0
        self.timing = 0
        self.diffs = []  # (access, stubdm value)
        self.ndiffs = 0
        self.skipped = {}  # reason -> count

    def skip(self, why):
        self.skipped[why] = self.skipped.get(why, 0) + 1


class Replayer:
    def __init__(self, guest, hv, dm="stubdm"):
        self.dm = dm  # whose answers are compared with QEMU's, for the report
        self.g = guest
        self.hv = hv
        self.regions = {}
        self.cf8 = 0  # the dword the trace's guest last wrote to 0xcf8
        self.qemu_has = {}  # (bus, devfn) -> QEMU has a function there (first read)
        self.timing_diffs = []
        self.shutdown = None  # (reason, line) when the device model ended the domain
        self.after_shutdown = 0
        self.lines = 0

    def region(self, key):
        r = self.regions.get(key)
        if r is None:
            r = self.regions[key] = Region(key)
        return r

    def run(self, accesses):
        for a in accesses:
            self.lines += 1
            if self.shutdown is not None:
                if a.cpu >= 0:
                    self.after_shutdown += 1
                continue
            self.one(a)
            if self.hv.shutdown_reason is not None:
                self.shutdown = (self.hv.shutdown_reason, a.lineno)

    def one(self, a):
        if a.cpu < 0:
            self.region(a.name).skip("not a vCPU access")
            self.region(a.name).accesses += 1
            return
        mask = (1 << (8 * a.size)) - 1
        qv = a.value & mask
        if a.name == "pci-conf-idx" and not a.is_read and a.addr == 0xCF8 and a.size == 4:
            self.cf8 = a.value & 0xFFFFFFFF
        key, offset = a.name, a.addr
        if a.name == "pci-conf-data" and self.cf8 & CF8_ENABLED:
            bus, devfn = (self.cf8 >> 16) & 0xFF, (self.cf8 >> 8) & 0xFF
            reg = (self.cf8 & 0xFC) | (a.addr & 3)
            if a.is_read and (bus, devfn) not in self.qemu_has:
                # The first read of a function (its ID or class, as scans go)
                # is all ones when QEMU's machine has nothing there.
                self.qemu_has[(bus, devfn)] = qv != mask
            served = self.hv.server_for_pci(bus, devfn >> 3, devfn & 7) is not None
            in_qemu = self.qemu_has.get((bus, devfn), True)
            if served or in_qemu:
                key = "pci %02x:%02x.%d" % (bus, devfn >> 3, devfn & 7)
            else:
                # Nobody in either machine: what the guest's scan sees through
                # host_sim's routing (all ones) against QEMU's master abort.
                key = "pci (no function in either)"
            r = self.region(key)
            r.accesses += 1
            if served and not in_qemu:
                return r.skip("only in %s's machine" % self.dm)
            if not served and in_qemu:
                return r.skip("a function %s does not model" % self.dm)
            return self._replay(r, a, qv, reg)
        if a.name == "serial":
            key = "serial %#x" % (a.addr & ~7)
            offset = a.addr & 7
        r = self.region(key)
        r.accesses += 1
        if a.addr <= 0xFFFF:
            route = self.g._route_pio(a.addr, a.size)
            if route[0] == "xen":
                return r.skip("emulated by Xen (host_sim: %s)" % route[1])
            if route[0] == "none":
                return r.skip("not claimed by " + self.dm)
        else:
            if self.g.emulated.mmio_handler(a.addr, a.size) is not None:
                return r.skip("emulated by Xen (host_sim)")
            if self.hv.server_for_range(scripted.MMIO, a.addr, a.addr + a.size - 1) is None:
                return r.skip("not claimed by " + self.dm)
        return self._replay(r, a, qv, offset)

    def _replay(self, r, a, qv, offset):
        g = self.g
        r.replayed += 1
        if a.addr <= 0xFFFF:
            sv = g._pio(a.addr, a.size, None if a.is_read else qv)
        elif a.is_read:
            sv = g._mem_read(a.addr, a.size)
        else:
            g._mem_write(a.addr, a.size, qv)
            sv = None
        if not a.is_read:
            return
        r.reads += 1
        sv &= (1 << (8 * a.size)) - 1
        if sv == qv:
            r.same += 1
            return
        timing = TIMING.get((a.name, offset))
        if timing is not None and timing(qv, sv):
            r.timing += 1
            if len(self.timing_diffs) < 20:
                self.timing_diffs.append((r.key, a, sv))
            return
        r.ndiffs += 1
        if len(r.diffs) < 8:
            r.diffs.append((a, sv, offset))

    def differences(self):
        return sum(r.ndiffs for r in self.regions.values())

    def report(self, out, path):
        out.write("replay of %s against %s: %d accesses\n" % (path, self.dm, self.lines))
        out.write("%-26s %8s %8s %8s %8s %6s %6s  %s\n" % (
            "region", "accesses", "replayed", "reads", "same", "timing", "diffs", "skipped"))
        for key in sorted(self.regions):
            r = self.regions[key]
            skipped = ", ".join("%d %s" % (n, why) for why, n in sorted(r.skipped.items()))
            out.write("%-26s %8d %8d %8d %8d %6d %6d  %s\n" % (
                key, r.accesses, r.replayed, r.reads, r.same, r.timing, r.ndiffs, skipped))
        if self.shutdown is not None:
            reason, line = self.shutdown
            names = {abi.SHUTDOWN_reboot: "reboot", abi.SHUTDOWN_poweroff: "poweroff"}
            out.write("the device model shut the domain down (%s) at trace line %d; %d vCPU "
                      "accesses followed in QEMU's trace\n"
                      % (names.get(reason, reason), line, self.after_shutdown))
        if self.timing_diffs:
            out.write("timing-only differences (bits that depend on when the access came):\n")
            for key, a, sv in self.timing_diffs:
                out.write("  line %d %s %#x size %d: QEMU %#x, %s %#x\n"
                          % (a.lineno, key, a.addr, a.size, a.value & ((1 << 8 * a.size) - 1),
                             self.dm, sv))
        n = self.differences()
        if n:
            out.write("%d difference%s a driver would act on:\n" % (n, "" if n == 1 else "s"))
            for key in sorted(self.regions):
                r = self.regions[key]
                for a, sv, offset in r.diffs:
                    out.write("  line %d %s (register %#x) read of size %d at %#x: QEMU %#x, "
                              "%s %#x\n" % (a.lineno, key, offset, a.size, a.addr,
                                            a.value & ((1 << 8 * a.size) - 1), self.dm, sv))
                if r.ndiffs > len(r.diffs):
                    out.write("  ... %d more in %s\n" % (r.ndiffs - len(r.diffs), key))
        else:
            out.write("no difference a driver would act on\n")


def session(runtime="cpython", ram_mib=128, dm="stubdm"):
    """The device model the trace is replayed against: stubdm as the recordings'
    QEMU was configured (a pci-serial at 04.0, as stubdm places the first), or
    Xen's own qemu-xen (host_sim/qemu_xen.py) with the same pci-serial."""
    if dm == "qemu-xen":
        from host_sim import qemu_xen

        return qemu_xen.QemuXenSession(
            dm_args_extra=["-chardev", "null,id=pciser",
                           "-device", "pci-serial,chardev=pciser,addr=04.0"],
            ram_mib=ram_mib)
    return scripted.Session(dm_args=["-device", "pci-serial", "-serial", "null",
                                     "-serial", "null", "-no-timers"],
                            ram_mib=ram_mib, runtime=runtime)


def replay(path, runtime="cpython", ram_mib=128, out=sys.stdout, dm="stubdm"):
    """Replays the trace at path; returns the Replayer (its report already written)."""
    comments = []
    accesses, _other = read_trace(path, comments)
    with session(runtime, ram_mib, dm) as s:
        rp = Replayer(s.guest, s.hv, dm)
        rp.run(accesses)
    for c in comments:
        out.write(c + "\n")
    rp.report(out, path)
    return rp


def cmd_replay(args):
    try:
        rp = replay(args.trace, args.dm_runtime, args.memory, dm=getattr(args, "dm", "stubdm"))
    except OSError as e:
        print("stubdm-sim replay: %s" % e, file=sys.stderr)
        return 2
    return 1 if rp.differences() else 0


def add_command(sub, common):
    rp = sub.add_parser(
        "replay", parents=[common],
        help="replay QEMU's access trace against stubdm and compare every read",
        description="Replay a trace QEMU printed with -trace memory_region_ops_read -trace "
        "memory_region_ops_write (plain or .xz) against stubdm's models through the scripted "
        "guest, comparing every read with QEMU's value, per region. Regions stubdm does not "
        "serve are skipped; timing-only differences are reported apart. Record one with "
        "build/record_trace.py.",
        epilog="Exit status: 0 no difference a driver would act on, 1 differences, 2 the "
        "trace cannot be read, 3 the device model crashed or hung.")
    rp.add_argument("trace", metavar="TRACE", help="the trace file (QEMU's text; .xz too)")
    rp.add_argument("--memory", type=int, default=128, metavar="MiB",
                    help="guest RAM the trace was recorded with (default 128, as "
                    "build/record_trace.py records)")
    rp.set_defaults(func=cmd_replay)
