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


def start_process(args, env, log_path):
    """qemu-xen in a process group of its own (killpg ends it all)."""
    err = open(log_path, "wb")
    try:
        return subprocess.Popen(args, env=env, stdin=subprocess.DEVNULL, stdout=err,
                                stderr=err, start_new_session=True)
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
