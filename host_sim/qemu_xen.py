"""qemu-xen (Debian's qemu-system-xen) as a device model on host_sim.

qemu-xen reaches Xen only through Xen's user libraries; with host_sim's
(build/out/libsim-xen, first on LD_LIBRARY_PATH) it serves host_sim's
hypervisor like stubdm does, through the same ioreq pages and event
channels, and reaches host_sim's xenstored through Debian's own libxenstore
(XENSTORED_PATH). It runs as libxl runs it for an HVM guest whose device
model is in dom0 (libxl_dm.c, libxl__build_device_model_args_new), in its
own process group: it spins when host_sim's socket closes, so the runner
ends the whole group.
"""
import os
import shutil
import signal
import subprocess
import tempfile
import time

from host_sim import proto, toolstack
from host_sim.hypervisor import SimError, SimHypervisor
from host_sim.scripted import ROOT, ScriptedGuest

WRAPPER = os.path.join(ROOT, "build", "out", "qemu-system-xen")
LIBDIR = os.path.join(ROOT, "build", "out", "libsim-xen")
GUEST_DOMID = 1
GUEST_UUID = "00000000-0000-4000-8000-000000000001"
# libxl's video RAM for qemu-xen's stdvga (LIBXL_VGA_INTERFACE_TYPE_STD).
VIDEORAM_MIB = 16


# NICs for the engine's guest, as libxl's vif lines give them (rtl8139 is its
# default model), each on a hub of its own: no host network.
ENGINE_NICS = [
    "-netdev", "hubport,id=net0,hubid=0",
    "-device", "rtl8139,id=nic0,netdev=net0,mac=00:16:3e:00:00:01,addr=05.0",
    "-netdev", "hubport,id=net1,hubid=1",
    "-device", "e1000,id=nic1,netdev=net1,mac=00:16:3e:00:00:02,addr=06.0",
]


class QemuXenMissing(SimError):
    pass


class QemuXenFailed(SimError):
    pass


def missing():
    """Why qemu-xen can't run here (None when it can)."""
    if not os.access(WRAPPER, os.X_OK):
        return "no qemu-system-xen at %s: run build/provision_qemu.sh" % os.path.relpath(
            WRAPPER, ROOT)
    if not os.path.exists(os.path.join(LIBDIR, "libxendevicemodel.so.1")):
        return "no host_sim Xen libraries in %s: run scons libsim-xen" % os.path.relpath(
            LIBDIR, ROOT)
    return None


def dm_args(domid, ram_mib, name="guest", serial=None, qmp=None, vga="stdvga", extra=()):
    """qemu-xen's command line as libxl builds it for a dom0 device model
    (no disks, no NICs unless extra adds them; no display)."""
    args = [WRAPPER, "-xen-domid", str(domid), "-no-shutdown"]
    if qmp is not None:
        args += ["-chardev", "socket,id=libxl-cmd,path=%s,server=on,wait=off" % qmp,
                 "-mon", "chardev=libxl-cmd,mode=control"]
    args += ["-nodefaults", "-no-user-config", "-name", name, "-display", "none"]
    if serial is not None:
        args += ["-serial", serial]
    if vga == "stdvga":
        args += ["-device", "VGA,vgamem_mb=%d" % VIDEORAM_MIB]
    elif vga == "cirrus":
        args += ["-device", "cirrus-vga,vgamem_mb=8"]
    args += ["-boot", "order=cda", "-smp", "1,maxcpus=1", "-machine", "xenfv",
             "-m", str(ram_mib)]
    return args + list(extra)


def dm_env(sock, xenstored_path):
    env = dict(os.environ)
    env[proto.SOCKET_ENV] = sock
    env["XENSTORED_PATH"] = xenstored_path
    env["LD_LIBRARY_PATH"] = LIBDIR
    env.pop("LD_PRELOAD", None)
    return env


def write_dom0_layout(xs, domid, name, ram_mib):
    """What xen-init-dom0 and libxl write before a dom0 device model starts:
    dom0's own keys, the guest's domain, /libxl/<domid>/dm-version and
    /local/domain/0/device-model/<domid>, where qemu-xen reports its state."""
    xs.write("/local/domain/0/name", "Domain-0")
    xs.write("/local/domain/0/domid", "0")
    toolstack.domain_make(xs, domid, name, GUEST_UUID, hvm=True)
    memkb = (ram_mib + VIDEORAM_MIB) * 1024
    toolstack.build_post(xs, domid, memkb, 1, 1, 0xFEFFF, videoram_kb=VIDEORAM_MIB * 1024)
    xs.write("/libxl/%d/dm-version" % domid, "qemu_xen")
    dm = "/local/domain/0/device-model/%d" % domid
    xs.mkdir(dm)
    return dm


def start_process(args, env, log_path, pass_fds=()):
    """qemu-xen in a process group of its own (killpg ends it all), and dying
    with us: a runner killed with SIGKILL can't end the group, and qemu-xen
    spins once host_sim's socket is gone (a TAP it holds would also keep the
    run's namespace)."""
    from host_sim.qtest_qemu import die_with_parent

    err = open(log_path, "wb")
    try:
        return subprocess.Popen(args, env=env, stdin=subprocess.DEVNULL, stdout=err,
                                stderr=err, start_new_session=True,
                                pass_fds=tuple(pass_fds), preexec_fn=die_with_parent)
    finally:
        err.close()


def stop_process(proc, grace=2.0):
    """End qemu-xen's whole process group: TERM, then KILL."""
    if proc is None:
        return
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(wait)
            break
        except subprocess.TimeoutExpired:
            continue
    try:  # whatever else is left in its group
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def describe_failure(what, proc, log_path):
    tail = ""
    try:
        with open(log_path, errors="replace") as f:
            tail = f.read()[-2000:].strip()
    except OSError:
        pass
    rc = proc.poll() if proc is not None else None
    status = "running" if rc is None else "exit status %d" % rc
    return "qemu-xen %s (%s)%s" % (what, status, (":\n" + tail) if tail else "")


class QemuXenSession:
    """host_sim's hypervisor and xenstored, qemu-xen serving them, and a
    scripted guest: the same interface as host_sim.scripted.Session."""

    runtime = "qemu-xen"

    def __init__(self, dm_args_extra=(), ram_mib=64, serial_log=None, timeout=10.0,
                 vga="stdvga", start_timeout=30.0):
        why = missing()
        if why is not None:
            raise QemuXenMissing(why)
        from host_sim import xenstored
        from host_sim.xs import Xs

        self.dir = tempfile.mkdtemp(prefix="stubdm-qemu-xen-")
        self.sock = os.path.join(self.dir, "hv.sock")
        self.proc = None
        self.xenstored = None
        self.xs = None
        self.hv = None
        self._closed = False
        self._final = None
        self.dm_log = os.path.join(self.dir, "qemu-xen.log")
        self.serial_log = serial_log or os.path.join(self.dir, "com1.log")
        try:
            self.xenstored = xenstored.spawn(rundir=os.path.join(self.dir, "xenstore"))
            self.xs = Xs(self.xenstored.socket_path)
            self.dm_path = write_dom0_layout(self.xs, GUEST_DOMID, "guest", ram_mib)
            self.hv = SimHypervisor(self.sock, ram_mib=ram_mib, domid=GUEST_DOMID, dm_domid=0)
            self.hv.punch_vga_hole()
            self.hv.videoram = VIDEORAM_MIB << 20
            self.hv.timeout = timeout
            args = dm_args(GUEST_DOMID, ram_mib, serial="file:" + self.serial_log,
                           qmp=os.path.join(self.dir, "qmp.sock"), vga=vga,
                           extra=dm_args_extra)
            self.args = args
            self.proc = start_process(args, dm_env(self.sock, self.xenstored.socket_path),
                                      self.dm_log)
            self.hv.alive = lambda: self.proc.poll() is None
            try:
                self.hv.pump_until(self._ready, "its start-up", timeout=start_timeout)
            except SimError as e:
                raise QemuXenFailed(describe_failure("did not start: %s" % e, self.proc,
                                                     self.dm_log))
        except BaseException:
            self.close()
            raise
        self.guest = ScriptedGuest(self.hv)

    def _ready(self):
        if not any(s.enabled for s in self.hv.servers.values()):
            return False
        return self.dm_state() == "running"

    def dm_state(self):
        try:
            return self.xs.read(self.dm_path + "/state").decode()
        except OSError:
            return None

    def serial_output(self):
        if self._final is not None:
            return self._final[1]
        try:
            with open(self.serial_log, "rb") as f:
                return f.read()
        except OSError:
            return b""

    def dm_messages(self):
        if self._final is not None:
            return self._final[0]
        try:
            with open(self.dm_log, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def dm_stats(self):
        return None  # qemu-xen reports no figures of its own

    def close(self):
        if self._closed:
            return
        self._closed = True
        try:
            if self.hv is not None:
                self.hv.close()
        finally:
            stop_process(self.proc)
            if self.xs is not None:
                self.xs.close()
            if self.xenstored is not None:
                self.xenstored.stop()
            self._final = (self.dm_messages(), self.serial_output())
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def wait_for(cond, timeout, step=0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(step)
    return cond()


# ---- the QEMU engine with qemu-xen as the device model ----

def _engine_classes():
    """QemuXenEngine and its function class (engine.py is imported lazily:
    the scripted session needs none of it)."""
    from host_sim import engine as eng
    from host_sim.vfio_user import VfioUserServer

    class QemuXenFunction(eng.StubdmFunction):
        """One of qemu-xen's PCI functions behind a vfio-user server. BARs
        host_sim places itself get a window per BAR (VGA has two memory BARs)."""

        def _base(self, index):
            base = self.bases.get(index)
            if base is not None:
                return base
            bar = next((b for b in self.bars if b[0] == index), None)
            if bar is None:
                raise eng.EngineError("no BAR %d" % index)
            _, size, is_io = bar
            reg = 0x10 + 4 * index
            value = self._cfg(reg, 4)
            cmd = self._cfg(0x04, 2)
            enable = 1 if is_io else 2
            base = value & (0xFFFFFFFC if is_io else 0xFFFFFFF0)
            if not (cmd & enable) or base == 0:
                slot = self.devfn >> 3
                if is_io:
                    base = eng.SHADOW_IO + slot * 0x400 + index * 0x100
                else:
                    base = eng.SHADOW_MEM + slot * (64 << 20) + index * (16 << 20)
                base = (base + size - 1) & ~(size - 1)
                self._cfg(reg, 4, base)
                self._cfg(0x04, 2, cmd | enable)
                self.engine.note("00:%02x.%d BAR%d placed at %#x for qemu-xen"
                                 % (self.devfn >> 3, self.devfn & 7, index, base))
            self.bases[index] = (base, is_io)
            return self.bases[index]

    class QemuXenEngine(eng.Engine):
        """host_sim's engine with qemu-xen serving the guest: every function
        of qemu-xen's machine outside the chipset (slot 2 and up: platform
        device, VGA, pci-serial, rtl8139 and e1000) fronted over vfio-user. ISA devices
        and the compatibility-mode IDE stay unreachable, as with stubdm."""

        dm_name = "qemu-xen"

        def start_dm(self):
            from host_sim import xenstored
            from host_sim.xs import Xs

            why = missing()
            if why is not None:
                raise QemuXenMissing(why)
            sock = os.path.join(self.dir, "hv.sock")
            self.xenstored = xenstored.spawn(rundir=os.path.join(self.dir, "xenstore"))
            self.xs = Xs(self.xenstored.socket_path)
            self.dm_path = write_dom0_layout(self.xs, GUEST_DOMID, "guest", self.memory)
            self.hv = SimHypervisor(sock, ram_mib=self.memory, domid=GUEST_DOMID,
                                    own_ram=False, log=self.note, dm_domid=0)
            self.hv.videoram = VIDEORAM_MIB << 20
            self.hv.on_intx = self._intx
            self.hv.on_msi = self._msi
            self.serial_log = os.path.join(self.dir, "pci-serial.log")
            self.dm_log = os.path.join(self.dir, "qemu-xen.log")
            nic_args, tap_fds = self._nics()
            extra = ["-chardev", "file,id=pciser,path=" + self.serial_log,
                     "-device", "pci-serial,addr=%02x.0,chardev=pciser"
                     % (eng.DEVFN_PCI_SERIAL >> 3)] + nic_args + list(self.dm_extra)
            args = dm_args(GUEST_DOMID, self.memory, qmp=os.path.join(self.dir, "qmp.sock"),
                           extra=extra)
            try:
                self.dm = start_process(args, dm_env(sock, self.xenstored.socket_path),
                                        self.dm_log, pass_fds=tap_fds)
            finally:
                for fd in tap_fds:
                    os.close(fd)  # qemu-xen's now
            if self.ns is not None:
                self._start_peers()
            self.hv.alive = lambda: self.dm.poll() is None

            def ready():
                if not any(s.enabled for s in self.hv.servers.values()):
                    return False
                try:
                    return self.xs.read(self.dm_path + "/state") == b"running"
                except OSError:
                    return False

            try:
                self.hv.pump_until(ready, "its start-up", timeout=30)
            except SimError as e:
                raise QemuXenFailed(describe_failure("did not start: %s" % e, self.dm,
                                                     self.dm_log))

        def _nics(self):
            """qemu-xen's NIC lines and the TAP fds they name. With --nic, each NIC on a
            TAP in the run's namespace, its peer at 10.0.(2+D).2 as with stubdm (a dom0
            device model's NIC is a TAP: libxl's -netdev type=tap); else ENGINE_NICS."""
            if not self.nics:
                return list(ENGINE_NICS), []
            from host_sim.netns import Namespace

            self.ns = Namespace()
            self.peers = []
            args, fds = [], []
            try:
                for d, (model, mac) in enumerate(self.nics):
                    mac = mac or "00:16:3e:00:01:%02x" % d
                    fd = self.ns.open_tap("tap%d" % d, "10.0.%d.2/24" % (2 + d))
                    fds.append(fd)
                    args += ["-netdev", "tap,id=net%d,fd=%d,vhost=off" % (d, fd),
                             "-device", "%s,id=nic%d,netdev=net%d,mac=%s,addr=%02x.0"
                             % (model, d, d, mac, 5 + d)]
            except Exception:
                for fd in fds:
                    os.close(fd)
                raise
            return args, fds

        def start_servers(self):
            devfns = set()
            for s in self.hv.servers.values():
                for seg, bus, dev, fn in s.pcidevs:
                    if seg == 0 and bus == 0 and dev >= 2:
                        devfns.add(dev << 3 | fn)
            # The guest sees each at qemu-xen's own slot (engine.qemu_args).
            self.guest_slots = {d: (d >> 3, d & 7) for d in devfns}
            for devfn in sorted(devfns):
                fn = QemuXenFunction(self, devfn)
                path = os.path.join(self.dir, "fn%02x.sock" % devfn)
                srv = VfioUserServer(path, fn, log=self.note)
                self.servers.append((devfn, fn, srv))

        def boot(self):
            try:
                return super().boot()
            except (eng.DeviceModelGone, eng.DeviceModelHung) as e:
                # Name it: the engine's messages say "the device model".
                raise type(e)("qemu-xen: %s" % e)

        def ioreq(self, server, type_, addr, data, size, is_read):
            # Memory qemu-xen populated and moved into a BAR (VRAM) is guest
            # RAM under Xen: the guest reaches it without an ioreq.
            if type_ == eng.abi.IOREQ_TYPE_COPY and self.hv is not None:
                mem = self.hv.guest_memory(addr, size)
                if mem is not None:
                    if is_read:
                        return int.from_bytes(mem, "little")
                    mem[:] = (data & ((1 << (8 * size)) - 1)).to_bytes(size, "little")
                    self.hv.mark_dirty(addr, size)
                    return 0
            return super().ioreq(server, type_, addr, data, size, is_read)

        def close(self):
            proc, self.dm = self.dm, None
            try:
                super().close()
            finally:
                stop_process(proc)
                if getattr(self, "xs", None) is not None:
                    self.xs.close()
                if getattr(self, "xenstored", None) is not None:
                    self.xenstored.stop()

    return QemuXenEngine, QemuXenFunction


def engine_class():
    return _engine_classes()[0]


# ---- benches: qemu-xen beside stubdm and QEMU's built-in device ----

def time_scratch_reads(session, n, port=0x3FF, warm=200):
    """Seconds for n inb of a port through the session's scripted guest."""
    g = session.guest
    for _ in range(warm):
        g.inb(port)
    t = time.perf_counter()
    for _ in range(n):
        g.inb(port)
    return time.perf_counter() - t


def service_times(hv, server, port, n, warm=100):
    """Per-ioreq service time as host_sim sees it, the same way for any
    device model: the request is published and signalled, then host_sim
    spins on the slot's state byte, stamping when the device model takes it
    (INPROCESS) and when it answers (IORESP_READY). Returns the median
    microseconds (READY to IORESP_READY, INPROCESS to IORESP_READY) over n
    inb; the second is 0 where host_sim never saw INPROCESS (the device
    model took and answered the request between two looks)."""
    import statistics
    import struct

    from stubdm import abi

    page = hv.page_of(server.ioreq_gfn)
    off = 0
    flags = off + abi.IOREQ_OFF_FLAGS
    evport = server.vcpu_ports[0]
    pick, serve = [], []
    for i in range(warm + n):
        req = abi.pack_ioreq(port, 0, 1, 1, evport, abi.STATE_IOREQ_NONE, 0, 1, 0,
                             abi.IOREQ_TYPE_PIO)
        page[off : off + abi.IOREQ_SIZE] = req
        hv.notified.discard(evport)
        t0 = time.perf_counter()
        page[flags] = req[abi.IOREQ_OFF_FLAGS] | abi.STATE_IOREQ_READY
        hv.signal(evport)
        t1 = None
        limit = t0 + 5.0
        while True:
            st = page[flags] & abi.STATE_MASK
            if st == abi.STATE_IOREQ_INPROCESS and t1 is None:
                t1 = time.perf_counter()
            elif st == abi.STATE_IORESP_READY:
                t2 = time.perf_counter()
                break
            if time.perf_counter() > limit:
                raise SimError("no answer to a timed ioreq in 5 s")
        if t1 is None:
            t1 = t2  # taken and answered between two looks
        hv.pump_until(lambda: evport in hv.notified, "the timed ioreq's notification")
        struct.unpack_from("<Q", page, off + abi.IOREQ_OFF_DATA)
        page[flags] = req[abi.IOREQ_OFF_FLAGS]
        if i >= warm:
            pick.append((t2 - t0) * 1e6)
            serve.append((t2 - t1) * 1e6)
    return statistics.median(pick), statistics.median(serve)


def session_service_times(session, n, port=0x3FF):
    hv = session.hv
    s = hv.server_for_range(0, port, port)
    if s is None:
        raise SimError("no device model claims port %#x" % port)
    return service_times(hv, s, port, n)


def print_ioreq_peer(n, stubdm_dt, stubdm_busy_us, qemu_dt, runtime, out=None):
    """bench ioreq's side-by-side table: stubdm and qemu-xen through the
    same host_sim path, QEMU's 16550 through qtest, on the UART scratch
    register. qemu-xen reports no service time of its own: its estimate is
    its round trip minus host_sim's side as stubdm's run measured it (the
    same hypervisor, event channels and ioreq page)."""
    import sys

    w = (out or sys.stdout).write
    why = missing()
    if why is not None:
        w("qemu-xen peer: skipped (%s)\n" % why)
        return None
    with QemuXenSession() as s:
        xdt = time_scratch_reads(s, n)
        x_pick, x_serve = session_service_times(s, min(n, 2000))
    from host_sim.scripted import Session

    with Session(runtime=runtime) as s:
        s_pick, s_serve = session_service_times(s, min(n, 2000))
    rows = [("stubdm (%s) via host_sim" % runtime, stubdm_dt),
            ("qemu-xen via host_sim", xdt), ("QEMU's 16550 via qtest", qemu_dt)]
    w("bench ioreq, side by side: %d inb of the UART scratch register (0x3ff), same run\n" % n)
    w("  %-32s %12s %10s %14s\n" % ("", "per second", "us each", "x QEMU's time"))
    for name, dt in rows:
        w("  %-32s %12.0f %10.1f %14.2f\n" % (name, n / dt, dt / n * 1e6, dt / qemu_dt))
    w("ratio stubdm/qemu-xen round trips per second: %.2f\n" % (xdt / stubdm_dt))
    w("per-ioreq service time, seen from host_sim spinning on the slot (median of %d):\n"
      % min(n, 2000))
    w("  %-32s %22s %24s\n" % ("", "READY to IORESP_READY", "INPROCESS to IORESP_READY"))
    w("  %-32s %19.1f us %21.2f us\n" % ("stubdm (%s)" % runtime, s_pick, s_serve))
    w("  %-32s %19.1f us %21.2f us\n" % ("qemu-xen", x_pick, x_serve))
    w("  (READY to IORESP_READY includes the event channel and the device model's wake-up; "
      "stubdm's own busy time per ioreq in the first run: %.1f us)\n" % stubdm_busy_us)
    w("ratio stubdm/qemu-xen READY to IORESP_READY: %.2f\n" % (s_pick / x_pick))
    return xdt
