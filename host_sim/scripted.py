"""A scripted guest: port, MMIO and PCI-config accesses as a vCPU makes them.

Each access becomes what Xen would make of it: an ioreq to the server that
claimed the port or address (through the real ioreq page and event channel,
to the device model in its own process), a direct access to guest RAM, or
all ones for what nobody claimed. Xen's own emulation (PIT, PIC, RTC, PM
timer, IOAPIC, HPET, LAPIC, port 0xe9) answers first and never reaches the
device model; port 0xcf8 is only watched, as Xen watches it, and forwarded.
The vocabulary is QEMU's qtest protocol's, so one script can drive stubdm
and QEMU's own models (host_sim.qtest_qemu) and the results compared.
"""
import os
import shutil
import subprocess
import sys
import tempfile
import time

from host_sim.hypervisor import VGA_HOLE, DomainSuspended, SimError, SimHypervisor  # noqa: F401
from host_sim import proto
from host_sim.qtest_qemu import die_with_parent
from stubdm import abi

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PORT = abi.XEN_DMOP_IO_RANGE_PORT
MMIO = abi.XEN_DMOP_IO_RANGE_MEMORY


# What Xen emulates itself, before any ioreq server (hvm_io_intercept's
# handlers, registered in xen/arch/x86: emul-i8254.c, vpic.c, rtc.c, hvm.c,
# pmtimer.c, vioapic.c, hpet.c, vlapic.c). A handler takes an access only
# when the access lies wholly inside it; one that does not reaches the ioreq
# servers like any other port. A device model may claim these ranges (Xen
# accepts the claim) but never sees an access there.
XEN_PORTS = (
    (0x20, 2, "PIC master"),
    (0x40, 4, "PIT"),
    (0x61, 1, "PC speaker"),
    (0x70, 2, "RTC"),
    (0xA0, 2, "PIC slave"),
    (0xE9, 1, "debug console"),
    (0x4D0, 2, "ELCR"),
)
# PM1a_EVT and PM_TMR, where HVM_PARAM_ACPI_IOPORTS_LOCATION puts them (Xen's
# public hvm/ioreq.h): version 0 until hvmloader selects version 1.
ACPI_PM1A_EVT = (0x1F40, 0xB000)
ACPI_PM_TMR = (0x1F48, 0xB008)
XEN_MMIO = (
    (0xFEC00000, 0x100, "IOAPIC"),  # VIOAPIC_MEM_LENGTH
    (0xFED00000, 0x400, "HPET"),  # HPET_MMAP_SIZE
    (0xFEE00000, 0x1000, "LAPIC"),  # the default APIC base, one page
)
CF8_ENABLED = 0x80000000
PM_TIMER_HZ = 3579545


class SimEmulated:
    """host_sim's stand-in for Xen's own emulation of those ranges.

    The debug console (0xe9) and the PM1a event block and PM timer follow
    Xen (hvm.c hvm_print_line, pmtimer.c); the PIT, PIC, ELCR, RTC, IOAPIC,
    HPET and LAPIC are not modelled: a read returns what was last written
    there (0 at first). What matters here is that none of them ever reaches
    the device model.
    """

    def __init__(self):
        self.acpi_location = 0  # HVM_PARAM_ACPI_IOPORTS_LOCATION
        self.debug_console = bytearray()
        self.pm1a_sts = 0
        self.pm1a_en = 0
        self.regs = {}
        self.accesses = 0
        self.t0 = time.monotonic()

    def port_handler(self, port, size):
        """The name of Xen's handler that takes this access, or None."""
        last = port + size - 1
        for start, n, name in XEN_PORTS:
            if start <= port and last < start + n:
                return name
        evt = ACPI_PM1A_EVT[self.acpi_location]
        if evt <= port and last < evt + 4:
            return "PM1a_EVT"
        tmr = ACPI_PM_TMR[self.acpi_location]
        if tmr <= port and last < tmr + 4:
            return "PM_TMR"
        return None

    def mmio_handler(self, addr, size):
        for start, n, name in XEN_MMIO:
            if start <= addr < start + n:
                if addr + size > start + n:
                    # hvm_mmio_accept: Xen crashes a domain whose access
                    # starts inside an internal handler and ends outside it.
                    raise SimError("MMIO access %#x+%d straddles the end of Xen's %s: "
                                   "Xen crashes the domain" % (addr, size, name))
                return name
        return None

    def port_io(self, name, port, size, value):
        self.accesses += 1
        mask = (1 << (8 * size)) - 1
        if name == "debug console":
            if value is None:
                return 0xE9  # Bochs' "port e9 hack" answer
            self.debug_console.append(value & 0xFF)
            return None
        if name == "PM1a_EVT":
            off = port - ACPI_PM1A_EVT[self.acpi_location]
            if value is None:
                return ((self.pm1a_sts | (self.pm1a_en << 16)) >> (8 * off)) & mask
            for i in range(size):
                b = (value >> (8 * i)) & 0xFF
                o = off + i
                if o < 2:
                    self.pm1a_sts &= ~(b << (8 * o))
                else:
                    sh = 8 * (o - 2)
                    self.pm1a_en = (self.pm1a_en & ~(0xFF << sh)) | (b << sh)
            return None
        if name == "PM_TMR":
            if value is not None or size != 4:
                return mask if value is None else None  # "HVM_PMT bad access": ~0
            ticks = int((time.monotonic() - self.t0) * PM_TIMER_HZ)
            return ticks & 0xFFFFFFFF
        return self._regfile(("pio", port), size, value)

    def mmio(self, name, addr, size, value):
        self.accesses += 1
        return self._regfile(("mmio", addr), size, value)

    def _regfile(self, key, size, value):
        if value is None:
            return self.regs.get(key, 0) & ((1 << (8 * size)) - 1)
        self.regs[key] = value
        return None


class ScriptedGuest:
    def __init__(self, hv, vcpu=0):
        self.hv = hv
        self.vcpu = vcpu
        self.cf8 = 0  # Xen's d->arch.hvm.pci_cf8: the last dword written to 0xcf8
        self.amd_cf8_ext = False  # AMD family 10h-16h with NB_CFG's CF8 extension on
        self.emulated = SimEmulated()

    # ---- port I/O, routed as Xen routes it ----
    def _route_pio(self, port, size):
        """What Xen does with this access: ("xen", name) for its own
        emulation, ("pci", server, addr) for a PCI_CONFIG ioreq, ("pio",
        server) for a port ioreq, or ("none",): nobody, reads all ones."""
        name = self.emulated.port_handler(port, size)
        if name is not None:
            return ("xen", name)
        # arch_ioreq_server_get_type_addr: a CONFIG_DATA access while the
        # watched dword has bit 31 becomes PCI_CONFIG, for the server that
        # registered the SBDF; no such server means nobody (no fallback).
        if port & ~3 == 0xCFC and self.cf8 & CF8_ENABLED:
            cf8 = self.cf8
            bus = (cf8 >> 16) & 0xFF
            devfn = (cf8 >> 8) & 0xFF
            reg = (cf8 & 0xFC) | (port & 3)
            if self.amd_cf8_ext:
                reg |= (cf8 & 0x0F000000) >> 16  # CF8_ADDR_HI: extended registers
            s = self.hv.server_for_pci(bus, devfn >> 3, devfn & 7)
            if s is None:
                return ("none",)
            addr = (abi.pci_sbdf(0, bus, devfn >> 3, devfn & 7) << abi.PCI_SBDF_SHIFT) | reg
            return ("pci", s, addr)
        s = self.hv.server_for_range(PORT, port, port + size - 1)
        if s is None:
            return ("none",)
        return ("pio", s)

    def _running(self):
        if self.hv.s3_suspended:
            raise DomainSuspended("vcpu %d: the domain is in S3, its vCPUs do not run until "
                                  "the toolstack wakes it" % self.vcpu)

    def _pio(self, port, size, value=None):
        self._running()
        is_read = value is None
        mask = (1 << (8 * size)) - 1
        if not is_read and port == 0xCF8 and size == 4:
            # hvm_access_cf8 records the dword, then lets the access through.
            self.cf8 = value & 0xFFFFFFFF
        route = self._route_pio(port, size)
        if route[0] == "xen":
            return self.emulated.port_io(route[1], port, size, value)
        if route[0] == "none":
            return mask if is_read else None
        if route[0] == "pci":
            type_, addr = abi.IOREQ_TYPE_PCI_CONFIG, route[2]
        else:
            type_, addr = abi.IOREQ_TYPE_PIO, port
        data = self.hv.send_ioreq(route[1], self.vcpu, type_, addr, 0 if is_read else value,
                                  size, is_read=1 if is_read else 0)
        return data & mask if is_read else None

    def _rep(self, port, gpa, size, count, df, is_read):
        self._running()
        if not is_read and port == 0xCF8 and size == 4 and count:
            # Xen's intercept hands hvm_access_cf8 the first item, which it
            # records before the whole request goes to the ioreq server.
            self.cf8 = int.from_bytes(self.memread(gpa, 4), "little")
        route = self._route_pio(port, size)
        if route[0] == "xen":
            # Xen's intercept repeats the handler for each item.
            step = -size if df else size
            for i in range(count):
                a = gpa + i * step
                if is_read:
                    v = self.emulated.port_io(route[1], port, size, None)
                    self.memwrite(a, v.to_bytes(size, "little"))
                else:
                    v = int.from_bytes(self.memread(a, size), "little")
                    self.emulated.port_io(route[1], port, size, v)
            return
        if route[0] == "none":
            if is_read:  # the null handler: all ones into every item
                step = -size if df else size
                for i in range(count):
                    self.memwrite(gpa + i * step, b"\xff" * size)
            return
        if route[0] == "pci":
            type_, addr = abi.IOREQ_TYPE_PCI_CONFIG, route[2]
        else:
            type_, addr = abi.IOREQ_TYPE_PIO, port
        # Xen's emulator keeps one ioreq's items within a guest page
        # (hvmemul_linear_to_phys clamps the count) and repeats the
        # instruction for the rest; an item across a page edge goes alone.
        while count > 0:
            off = gpa & 0xFFF
            n = (off // size + 1) if df else (0x1000 - off) // size
            n = max(1, min(count, n))
            self.hv.send_ioreq(route[1], self.vcpu, type_, addr, gpa, size, n,
                               is_read=is_read, ptr=1, df=df)
            gpa += -n * size if df else n * size
            count -= n

    def outb(self, port, v):
        self._pio(port, 1, v & 0xFF)

    def outw(self, port, v):
        self._pio(port, 2, v & 0xFFFF)

    def outl(self, port, v):
        self._pio(port, 4, v & 0xFFFFFFFF)

    def inb(self, port):
        return self._pio(port, 1)

    def inw(self, port):
        return self._pio(port, 2)

    def inl(self, port):
        return self._pio(port, 4)

    def rep_outs(self, port, gpa, size, count, df=0):
        """rep outs: count items of size bytes from guest RAM at gpa to a port."""
        self._rep(port, gpa, size, count, df, 0)

    def rep_ins(self, port, gpa, size, count, df=0):
        self._rep(port, gpa, size, count, df, 1)

    # ---- memory ----
    def _in_ram(self, addr, n):
        return self.hv.guest_memory(addr, n) is not None

    def _mem_read(self, addr, size):
        self._running()
        mem = self.hv.guest_memory(addr, size)  # RAM (not the VGA hole), populated pages
        if mem is not None:
            return int.from_bytes(mem, "little")
        name = self.emulated.mmio_handler(addr, size)
        if name is not None:
            return self.emulated.mmio(name, addr, size, None)
        s = self.hv.server_for_range(MMIO, addr, addr + size - 1)
        if s is None:
            return (1 << (8 * size)) - 1
        return self.hv.send_ioreq(s, self.vcpu, abi.IOREQ_TYPE_COPY, addr, 0, size, is_read=1)

    def _mem_write(self, addr, size, value):
        self._running()
        mem = self.hv.guest_memory(addr, size)
        if mem is not None:
            if not self.hv.write_discarded(addr, size):  # ram_ro drops writes
                mem[:] = value.to_bytes(size, "little")
                self.hv.mark_dirty(addr, size)
            return
        name = self.emulated.mmio_handler(addr, size)
        if name is not None:
            self.emulated.mmio(name, addr, size, value)
            return
        s = self.hv.server_for_range(MMIO, addr, addr + size - 1)
        if s is not None:
            if self._vga_write(s, addr, size, value):
                return
            self.hv.send_ioreq(s, self.vcpu, abi.IOREQ_TYPE_COPY, addr, value, size)

    def _vga_write(self, s, addr, size, value):
        """Xen's stdvga.c: a single write wholly inside 0xa0000-0xbffff goes
        to the buffered ring; when it can't (no ring, ring full) it goes
        synchronously like any other access (False)."""
        lo, hi = VGA_HOLE
        if not (lo <= addr and addr + size <= hi):
            return False
        return self.hv.try_send_buffered(s, abi.IOREQ_TYPE_COPY, addr, size, value)

    def readb(self, a):
        return self._mem_read(a, 1)

    def readw(self, a):
        return self._mem_read(a, 2)

    def readl(self, a):
        return self._mem_read(a, 4)

    def readq(self, a):
        return self._mem_read(a, 8)

    def writeb(self, a, v):
        self._mem_write(a, 1, v & 0xFF)

    def writew(self, a, v):
        self._mem_write(a, 2, v & 0xFFFF)

    def writel(self, a, v):
        self._mem_write(a, 4, v & 0xFFFFFFFF)

    def writeq(self, a, v):
        self._mem_write(a, 8, v & 0xFFFFFFFFFFFFFFFF)

    def memread(self, addr, n):
        mem = self.hv.guest_memory(addr, n)
        if mem is None:
            raise ValueError("memread outside guest RAM")
        return bytes(mem)

    def memwrite(self, addr, data):
        mem = self.hv.guest_memory(addr, len(data))
        if mem is None:
            raise ValueError("memwrite outside guest RAM")
        mem[:] = data
        self.hv.mark_dirty(addr, len(data))

    # ---- interrupts ----
    def get_irq(self, n):
        self.hv.pump(0)
        return bool(self.hv.gsi_level(n))

    # ---- PCI helpers (configuration mechanism #1, as firmware uses it) ----
    def pci_read(self, dev, fn, reg, size=4, bus=0):
        self.outl(0xCF8, 0x80000000 | (bus << 16) | (dev << 11) | (fn << 8) | (reg & 0xFC))
        port = 0xCFC + (reg & 3)
        return {1: self.inb, 2: self.inw, 4: self.inl}[size](port)

    def pci_write(self, dev, fn, reg, value, size=4, bus=0):
        self.outl(0xCF8, 0x80000000 | (bus << 16) | (dev << 11) | (fn << 8) | (reg & 0xFC))
        port = 0xCFC + (reg & 3)
        {1: self.outb, 2: self.outw, 4: self.outl}[size](port, value)

    # ---- firmware steps (what hvmloader does before the OS runs) ----
    def hvmloader_acpi(self):
        """hvmloader's ACPI set-up: PM ports at version 1, the PIIX4 PM
        function (found by class 0x0680, as hvmloader's pci_setup) at
        PMBA 0xb000 with interrupt line 9, then ACPI enabled through SMI_CMD
        (acpi_enable_sci). Returns the function's (dev, fn), or None."""
        self.emulated.acpi_location = 1  # hvm_param_set(HVM_PARAM_ACPI_IOPORTS_LOCATION, 1)
        for dev in range(32):
            for fn in range(8):
                if self.pci_read(dev, fn, 0x08, 4) >> 16 != 0x0680:
                    continue
                self.pci_write(dev, fn, 0x20, 0, 2)
                self.pci_write(dev, fn, 0xD2, 0, 2)
                self.pci_write(dev, fn, 0x22, 0, 2)
                self.pci_write(dev, fn, 0x3C, 9, 2)
                self.pci_write(dev, fn, 0x3D, 1, 2)
                self.pci_write(dev, fn, 0x40, 0xB000 | 1, 4)
                self.pci_write(dev, fn, 0x80, 0x01, 1)
                if not self.inb(0xB004) & 1:
                    self.outb(0xB2, 0xF1)
                return dev, fn
        return None

    def acpi_sleep(self, slp_typ, pm1a_cnt=0xB004):
        """The OS's sleep sequence (ACPICA acpi_hw_legacy_sleep): SLP_TYP
        first, then SLP_TYP with SLP_EN, in 16-bit writes to PM1a_CNT."""
        cnt = self.inw(pm1a_cnt) & ~((7 << 10) | (1 << 13)) & 0xFFFF
        cnt |= (slp_typ & 7) << 10
        self.outw(pm1a_cnt, cnt)
        self.outw(pm1a_cnt, cnt | (1 << 13))


# The device model's runtimes (stubdm-sim --dm-runtime, tests' dm_runtime).
RUNTIMES = ("cpython", "micropython", "port")
MICROPYTHON = os.path.join(ROOT, "build", "out", "micropython")
# MicroPython's GC heap for the device model. Compiled from source, the
# code itself lives in this heap (the port's is frozen, outside its 4 MiB):
# with the PV frontends, QMP and its vchan loaded, 340 KB are live before a
# test driver allocates its buffers, and 1 MiB failed on fragmentation in
# blkfront's harness (an 8 KiB allocation with 695 KB free). 2 MiB leaves
# room and fits a 28-32 MiB stub domain many times over.
MICROPYTHON_HEAP = "2M"
PORT_BINARY = os.path.join(ROOT, "build", "out", "stubdm-port")


class RuntimeMissing(SimError):
    pass


def dm_command(runtime="cpython", script=None):
    """How to start the device model on the given runtime (run it with dm_env's env).
    script: a test harness to run in its place (a file that builds stubdm's
    DeviceModel itself; not on the port, whose code is frozen)."""
    entry = ["-m", "stubdm"] if script is None else [script]
    if runtime == "cpython":
        return [sys.executable] + entry
    if runtime == "micropython":
        if not os.access(MICROPYTHON, os.X_OK):
            raise RuntimeMissing("no MicroPython device model runtime at %s: run scons"
                                 % os.path.relpath(MICROPYTHON, ROOT))
        return [MICROPYTHON, "-X", "heapsize=" + MICROPYTHON_HEAP] + entry
    if script is not None:
        raise ValueError("the port runs only its frozen device model")
    if runtime == "port":
        # The stub domain's own MicroPython port (stubdm/port_minios) built for
        # Linux: the device model frozen in, arguments passed straight to it.
        if not os.access(PORT_BINARY, os.X_OK):
            raise RuntimeMissing("no port device model runtime at %s: run scons (port-host)"
                                 % os.path.relpath(PORT_BINARY))
        return [PORT_BINARY]
    raise ValueError("unknown device model runtime: " + runtime)


def dm_env(sock, base=None):
    """The device model's environment: host_sim's socket, stubdm importable on both runtimes."""
    env = dict(os.environ if base is None else base)
    env[proto.SOCKET_ENV] = sock
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    # MicroPython's path: frozen modules first (as its default path), then the tree.
    env["MICROPYPATH"] = ".frozen" + os.pathsep + ROOT
    return env


class Session:
    """host_sim's hypervisor, a device model process serving it, and a scripted guest.

    Use as a context manager; the device model never outlives it.
    """

    def __init__(self, dm_args=(), ram_mib=64, runtime="cpython", serial_log=None,
                 stderr=None, timeout=10.0, xenstore=False, pv_devices=(), stubdom_domid=2,
                 dm_script=None, dm_argv=None, qmp=None, vnc=None):
        """xenstore: run host_sim's xenstored with libxl's layout for the guest and
        a stub domain (stubdom_domid) that the device model runs as, reaching
        xenstore through its domain's socket. pv_devices: PV devices of the stub
        domain, (type, devid, backend class) each, with their backends started
        here (host_sim/backends/) as domain 0. qmp: a unix socket path where dom0's
        vchan-socket-proxy (host_sim/vchan.py) serves the device model's QMP, as
        libxl's /var/run/xen/qmp-libxl-<guest>; pump the hypervisor while using it.
        vnc: HOST:DISPLAY or unix:PATH: the stub domain gets vfb 0 and vkbd 0 (as
        libxl adds them for vnc=1), shown to VNC clients there (self.vnc,
        host_sim/vnc.py); pump the hypervisor while a client talks to it."""
        cmd = dm_command(runtime, dm_script)  # first: a missing runtime leaves nothing behind
        self.runtime = runtime
        self.dir = tempfile.mkdtemp(prefix="stubdm-sim-")
        self.sock = os.path.join(self.dir, "hv.sock")
        self.xenstored = None
        self.xs = None
        self.backends = []
        env_extra = {}
        dm_domid = 0
        self.dm_argv = dm_argv
        self.qmp_proxy = None
        self.vnc = None
        if xenstore or pv_devices or dm_argv is not None or qmp or vnc:
            dm_domid = stubdom_domid
            try:
                env_extra = self._start_xenstore(stubdom_domid)
            except Exception:
                self._stop_xenstore()
                shutil.rmtree(self.dir, ignore_errors=True)
                raise
        self.hv = SimHypervisor(self.sock, ram_mib=ram_mib, dm_domid=dm_domid)
        self.hv.punch_vga_hole()  # 0xa0000-0xbffff is not RAM, as Xen builds the domain
        self.hv.timeout = timeout
        self.serial_log = serial_log or os.path.join(self.dir, "com1.log")
        if dm_argv is None:
            args = cmd + ["-xen-domid", str(self.hv.domid), "-m", str(ram_mib)]
        else:
            args = list(cmd)  # as a stub domain starts: its arguments are in xenstore
        if "-serial" not in dm_args:
            args += ["-serial", "file:" + self.serial_log]
        args += list(dm_args)
        self.dm_log = os.path.join(self.dir, "dm.log")
        if stderr is None:
            stderr = open(self.dm_log, "wb")
        try:
            for dev in pv_devices:
                self.add_pv_device(*dev[:3], **(dev[3] if len(dev) > 3 else {}))
            if vnc:
                self.pvenv.attach(self.hv)
                self.vnc = self.pvenv.add_display(vnc)
        except Exception:
            self.close()
            raise
        env = dm_env(self.sock)
        env.update(env_extra)
        self.proc = subprocess.Popen(args, env=env, stdin=subprocess.DEVNULL,
                                     stderr=stderr, preexec_fn=die_with_parent)
        if getattr(stderr, "name", None) == self.dm_log:
            stderr.close()
        self.hv.alive = lambda: self.proc.poll() is None
        try:
            self.hv.pump_until(self._ready, "its start-up", timeout=30)
        except SimError as e:
            self.close()
            # What it said before it went is what the caller needs to know.
            said = [ln for ln in self.dm_messages().strip().splitlines()
                    if ln.startswith("stubdm") or "Error" in ln]
            last = "\n".join(said[-5:])
            raise type(e)("%s%s" % (e, "; it said:\n" + last if last else ""))
        except Exception:
            self.close()
            raise
        self.guest = ScriptedGuest(self.hv)
        if qmp:
            from host_sim.vchan import VchanSocketProxy

            self.qmp_proxy = VchanSocketProxy(
                self.hv, self.xenstored.socket_path, stubdom_domid,
                "%s/device-model/%d/qmp-vchan" % (self.paths["stub"], self.hv.domid), qmp)

    # ---- xenstore and PV devices (host_sim/pvenv.py) ----
    def _start_xenstore(self, stub):
        from host_sim.pvenv import PvEnv

        self.stubdom_domid = stub
        self.pvenv = PvEnv(self.dir, stub, dm_argv=self.dm_argv or ())
        self.xenstored = self.pvenv.xenstored
        self.xs = self.pvenv.xs
        self.paths = self.pvenv.paths
        self.backends = self.pvenv.backends
        return self.pvenv.env

    def add_pv_device(self, devtype, devid, cls, **kw):
        """Both halves of a PV device of the stub domain, and its backend, started."""
        self.pvenv.attach(self.hv)
        return self.pvenv.add_device(devtype, devid, cls, **kw)

    def _stop_xenstore(self):
        if getattr(self, "pvenv", None) is not None:
            self.pvenv.close()
            self.pvenv = None
        self.xs = self.xenstored = None
        self.backends = []

    def _ready(self):
        for s in self.hv.servers.values():
            if s.enabled:
                return True
        return False

    def serial_output(self):
        if getattr(self, "_final", None) is not None:
            return self._final[1]
        try:
            with open(self.serial_log, "rb") as f:
                return f.read()
        except OSError:
            return b""

    def dm_messages(self):
        """What the device model wrote on stderr so far."""
        if getattr(self, "_final", None) is not None:
            return self._final[0]
        try:
            with open(self.dm_log, "r", errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def dm_stats(self):
        """The figures the device model reports when it exits (after close())."""
        for line in self.dm_messages().splitlines():
            if line.startswith("stubdm-stats:"):
                return dict((k, int(v)) for k, v in
                            (kv.split("=") for kv in line.split()[1:]))
        return None

    def close(self):
        """End the domain: the device model sees its event channel close and exits."""
        if getattr(self, "_closed", False):
            return
        self._closed = True
        try:
            if self.qmp_proxy is not None:
                self.qmp_proxy.close()
            self._stop_xenstore()
            self.hv.close()
        finally:
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            # Keep what the device model said, then leave nothing behind.
            self._final = (self.dm_messages(), self.serial_output())
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
