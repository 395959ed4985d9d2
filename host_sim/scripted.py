"""A scripted guest: port, MMIO and PCI-config accesses as a vCPU makes them.

Each access becomes what Xen would make of it: an ioreq to the server that
claimed the port or address (through the real ioreq page and event channel,
to the device model in its own process), a direct access to guest RAM, or
all ones for what nobody claimed. Port 0xcf8 is emulated here, as Xen does.
The vocabulary is QEMU's qtest protocol's, so one script can drive stubdm
and QEMU's own models (host_sim.qtest_qemu) and the results compared.
"""
import os
import shutil
import subprocess
import sys
import tempfile

from host_sim.hypervisor import SimError, SimHypervisor  # noqa: F401
from host_sim import proto
from host_sim.qtest_qemu import die_with_parent
from stubdm import abi

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PORT = abi.XEN_DMOP_IO_RANGE_PORT
MMIO = abi.XEN_DMOP_IO_RANGE_MEMORY


class ScriptedGuest:
    def __init__(self, hv, vcpu=0):
        self.hv = hv
        self.vcpu = vcpu
        self.cf8 = 0

    # ---- port I/O ----
    def _pio(self, port, size, value=None):
        is_read = value is None
        if port == 0xCF8 and size == 4:
            if is_read:
                return self.cf8
            self.cf8 = value & 0xFFFFFFFF
            return None
        if 0xCFC <= port <= 0xCFF and self.cf8 & 0x80000000:
            return self._config(port, size, value)
        s = self.hv.server_for(PORT, port)
        if s is None:
            return (1 << (8 * size)) - 1 if is_read else None
        data = self.hv.send_ioreq(s, self.vcpu, abi.IOREQ_TYPE_PIO, port,
                                  0 if is_read else value, size, is_read=1 if is_read else 0)
        return data & ((1 << (8 * size)) - 1) if is_read else None

    def _config(self, port, size, value):
        bus = (self.cf8 >> 16) & 0xFF
        dev = (self.cf8 >> 11) & 0x1F
        fn = (self.cf8 >> 8) & 7
        reg = (self.cf8 & 0xFC) | (port & 3)
        is_read = value is None
        s = self.hv.server_for_pci(bus, dev, fn)
        if s is None:
            return (1 << (8 * size)) - 1 if is_read else None
        addr = (abi.pci_sbdf(0, bus, dev, fn) << abi.PCI_SBDF_SHIFT) | reg
        data = self.hv.send_ioreq(s, self.vcpu, abi.IOREQ_TYPE_PCI_CONFIG, addr,
                                  0 if is_read else value, size, is_read=1 if is_read else 0)
        return data & ((1 << (8 * size)) - 1) if is_read else None

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
        s = self.hv.server_for(PORT, port)
        if s is not None:
            self.hv.send_ioreq(s, self.vcpu, abi.IOREQ_TYPE_PIO, port, gpa, size, count,
                               is_read=0, ptr=1, df=df)

    def rep_ins(self, port, gpa, size, count, df=0):
        s = self.hv.server_for(PORT, port)
        if s is not None:
            self.hv.send_ioreq(s, self.vcpu, abi.IOREQ_TYPE_PIO, port, gpa, size, count,
                               is_read=1, ptr=1, df=df)

    # ---- memory ----
    def _in_ram(self, addr, n):
        return addr + n <= self.hv.ram_size

    def _mem_read(self, addr, size):
        if self._in_ram(addr, size):
            return int.from_bytes(self.hv.ram[addr : addr + size], "little")
        s = self.hv.server_for(MMIO, addr)
        if s is None:
            return (1 << (8 * size)) - 1
        return self.hv.send_ioreq(s, self.vcpu, abi.IOREQ_TYPE_COPY, addr, 0, size, is_read=1)

    def _mem_write(self, addr, size, value):
        if self._in_ram(addr, size):
            self.hv.ram[addr : addr + size] = value.to_bytes(size, "little")
            return
        s = self.hv.server_for(MMIO, addr)
        if s is not None:
            self.hv.send_ioreq(s, self.vcpu, abi.IOREQ_TYPE_COPY, addr, value, size)

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
        if not self._in_ram(addr, n):
            raise ValueError("memread outside guest RAM")
        return bytes(self.hv.ram[addr : addr + n])

    def memwrite(self, addr, data):
        if not self._in_ram(addr, len(data)):
            raise ValueError("memwrite outside guest RAM")
        self.hv.ram[addr : addr + len(data)] = data

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


# The device model's runtimes (stubdm-sim --dm-runtime, tests' dm_runtime).
RUNTIMES = ("cpython", "micropython", "port")
MICROPYTHON = os.path.join(ROOT, "build", "out", "micropython")
# MicroPython's GC heap for the device model. Measured: at most about
# 110 KB live while a guest boots and drives the devices or the device tests
# run (the exit stats line's heap_peak=); start-up (compiling stubdm from
# source) needs 160-192 KB of heap. 1 MiB leaves room and fits a 28-32 MiB
# stub domain many times over.
MICROPYTHON_HEAP = "1M"
PORT_BINARY = os.path.join(ROOT, "build", "out", "stubdm-port")


class RuntimeMissing(SimError):
    pass


def dm_command(runtime="cpython"):
    """How to start the device model on the given runtime (run it with dm_env's env)."""
    if runtime == "cpython":
        return [sys.executable, "-m", "stubdm"]
    if runtime == "micropython":
        if not os.access(MICROPYTHON, os.X_OK):
            raise RuntimeMissing("no MicroPython device model runtime at %s: run scons"
                                 % os.path.relpath(MICROPYTHON, ROOT))
        return [MICROPYTHON, "-X", "heapsize=" + MICROPYTHON_HEAP, "-m", "stubdm"]
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
                 stderr=None, timeout=10.0, xenstore=False, pv_devices=(), stubdom_domid=2):
        """xenstore: run host_sim's xenstored with libxl's layout for the guest and
        a stub domain (stubdom_domid) that the device model runs as, reaching
        xenstore through its domain's socket. pv_devices: PV devices of the stub
        domain, (type, devid, backend class) each, with their backends started
        here (host_sim/backends/) as domain 0."""
        cmd = dm_command(runtime)  # first: a missing runtime leaves nothing behind
        self.runtime = runtime
        self.dir = tempfile.mkdtemp(prefix="stubdm-sim-")
        self.sock = os.path.join(self.dir, "hv.sock")
        self.xenstored = None
        self.xs = None
        self.backends = []
        env_extra = {}
        dm_domid = 0
        if xenstore or pv_devices:
            dm_domid = stubdom_domid
            try:
                env_extra = self._start_xenstore(stubdom_domid)
            except Exception:
                self._stop_xenstore()
                shutil.rmtree(self.dir, ignore_errors=True)
                raise
        self.hv = SimHypervisor(self.sock, ram_mib=ram_mib, dm_domid=dm_domid)
        self.hv.timeout = timeout
        self.serial_log = serial_log or os.path.join(self.dir, "com1.log")
        args = cmd + ["-xen-domid", str(self.hv.domid), "-m", str(ram_mib)]
        if "-serial" not in dm_args:
            args += ["-serial", "file:" + self.serial_log]
        args += list(dm_args)
        self.dm_log = os.path.join(self.dir, "dm.log")
        if stderr is None:
            stderr = open(self.dm_log, "wb")
        try:
            for devtype, devid, cls in pv_devices:
                self.add_pv_device(devtype, devid, cls)
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
        except Exception:
            self.close()
            raise
        self.guest = ScriptedGuest(self.hv)

    # ---- xenstore and PV devices ----
    def _start_xenstore(self, stub):
        from host_sim import toolstack, xenstored
        from host_sim.xs import Xs

        self.stubdom_domid = stub
        self.xenstored = xenstored.spawn(rundir=os.path.join(self.dir, "xenstore"))
        self.xs = Xs(self.xenstored.socket_path)
        self.paths = toolstack.write_hvm_domain(self.xs, 1, "guest",
                                                "00000000-0000-4000-8000-000000000001", stub)
        return {"XENSTORED_PATH": self.xenstored.domain_socket_path(stub)}

    def add_pv_device(self, devtype, devid, cls, **kw):
        """Both halves of a PV device of the stub domain, and its backend, started."""
        from host_sim import toolstack

        toolstack.add_device(self.xs, 0, self.stubdom_domid, devtype, devid)
        be = cls(self.hv, self.xenstored.socket_path, self.stubdom_domid, str(devid), **kw)
        self.backends.append(be)
        be.start()
        return be

    def _stop_xenstore(self):
        for be in self.backends:
            try:
                be.destroy()
            except Exception:
                pass
        self.backends = []
        if self.xs is not None:
            self.xs.close()
            self.xs = None
        if self.xenstored is not None:
            self.xenstored.stop()
            self.xenstored = None

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
