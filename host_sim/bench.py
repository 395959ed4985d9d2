"""Benches on a real guest: boot time and port I/O round trips, stubdm against QEMU.

`stubdm-sim bench boot` and `stubdm-sim bench pio` run the same kernel and
initramfs under the same QEMU (same memory backend, accelerator and flags),
one boot per configuration, in one invocation (DESIGN.md section 11):

- stubdm: host_sim's Engine; the PCI UART (1b36:0002 at 00:04.0) and the Xen
  platform device are stubdm's, every access an ioreq to the device model;
- the transport floor: the same Engine and vfio-user server, but behind it a
  function with no device logic at all (a static 1b36:0002 configuration
  space with one 8-byte I/O BAR; reads return 0, writes are dropped) and no
  device model process: stubdm minus the floor is what host_sim and the
  device model add;
- the floor's physical limit (bench pio, where `scons` built it):
  build/out/vfio_floor, a minimal vfio-user server in C
  (host_sim/vfio_floor/vfio_floor.c) giving the same answers, so the
  transport floor minus it is what host_sim's Python server and engine loop
  cost; with a C ping-pong over a socketpair, the socket's own round trip;
- QEMU: its own `-device pci-serial` at 00:04.0, the upper bound.

The boot figure is the host's wall clock from QEMU's start to the guest
init's status line (`stubdm-init: kernel ...; init at X.XXs; ...`, whose
X.XX is the guest kernel's own uptime at init) and to the exit marker of a
trivial command. The port I/O figure is measured inside the guest by
build/guest_tools/pio_bench.c (built here with the host's `gcc -static`,
shipped in a cpio archive appended to a temporary copy of the initramfs;
build/guest/initramfs.cpio.gz is never changed): N `inb` then N `outb` of
the UART's scratch register (BAR0 + 7). Port I/O only: 1b36:0002 has no
memory BAR.
"""
import importlib.util
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from host_sim import engine
from host_sim.engine import EXIT_MARK, Engine, EngineError
from host_sim.scripted import ROOT

TOOL_SRC = os.path.join(ROOT, "build", "guest_tools", "pio_bench.c")
TOOL_GUEST_PATH = "usr/bin/pio_bench"
UART_SLOT = engine.DEVFN_PCI_SERIAL >> 3  # 04.0, for all three configurations
UART_SYSFS = "/sys/bus/pci/devices/0000:00:%02x.0" % UART_SLOT
SCRATCH = 7
BOOT_TIMEOUT = 120.0

INIT_MARK = b"stubdm-init: kernel"
PIO_BEGIN = b"PIO-BEGIN"
PIO_LINE = re.compile(r"^PIO port=(0x[0-9a-fA-F]+) reads=(\d+) ns=(\d+) writes=(\d+) ns=(\d+)"
                      r"(?: rounds=(\d+) best_read_ns=(\d+) best_write_ns=(\d+))?\s*$", re.M)
INIT_LINE = re.compile(r"stubdm-init: kernel (\S+); init at ([0-9.]+)s(?:; \d+ modules loaded at "
                       r"([0-9.]+)s)?")
STATS_LINE = re.compile(r"^stubdm-stats:(.*)$", re.M)

STUBDM, FLOOR, QEMU = "stubdm", "floor", "qemu"
CFLOOR = "c-floor"  # build/out/vfio_floor: the floor's physical limit
# stubdm with host_sim's and libsim's spins before sleeping turned off: what
# the two wake-ups of the device model's round trip cost (bench pio only).
NOSPIN = "stubdm-nospin"
# The floor and its physical limit with the same policy: no spin anywhere.
FLOOR_NOSPIN = "floor-nospin"
CFLOOR_NOSPIN = "c-floor-nospin"
# qemu-xen (host_sim/qemu_xen.py): Xen's own device model through the same
# engine, its pci-serial at 00:04.0; in the default set where it is installed.
QEMU_XEN = "qemu-xen"
CONFIGS = (STUBDM, FLOOR, QEMU)


def default_configs():
    from host_sim import qemu_xen

    return CONFIGS + ((QEMU_XEN,) if qemu_xen.missing() is None else ())


class BenchError(Exception):
    pass


# ---------------------------------------------------------------- the guest tool

def build_tool(outdir, src=TOOL_SRC):
    """Compile a guest tool (build/guest_tools/*.c; pio_bench.c by default) statically
    into outdir; its path. BenchError if gcc can't."""
    gcc = shutil.which("gcc")
    if gcc is None:
        raise BenchError("no gcc on this host (apt-get install gcc libc6-dev)")
    out = os.path.join(outdir, os.path.splitext(os.path.basename(src))[0])
    r = subprocess.run([gcc, "-static", "-O2", "-s", "-o", out, src],
                       capture_output=True, text=True)
    if r.returncode != 0 or not os.path.exists(out):
        err = (r.stderr or r.stdout).strip().splitlines()
        raise BenchError("gcc -static could not build %s: %s"
                         % (os.path.relpath(src, ROOT), err[-1] if err else "failed"))
    return out


def tool_missing_reason():
    """'' if the guest tool builds here, else why not (for skips)."""
    d = tempfile.mkdtemp(prefix="stubdm-bench-")
    try:
        build_tool(d)
        return ""
    except BenchError as e:
        return str(e)
    finally:
        shutil.rmtree(d, ignore_errors=True)


def parse_pio(text):
    """The figures of pio_bench's result line in text, or None.

    {'port': int, 'reads': N, 'read_ns': T, 'writes': N, 'write_ns': T,
     'rounds': R, 'best_read_ns': B, 'best_write_ns': B}  (the last three
    when the line has them: B is the fastest round of reads // R accesses)
    """
    if isinstance(text, (bytes, bytearray)):
        text = bytes(text).decode(errors="replace")
    m = None
    for m in PIO_LINE.finditer(text.replace("\r", "")):
        pass
    if m is None:
        return None
    p = {"port": int(m.group(1), 16), "reads": int(m.group(2)), "read_ns": int(m.group(3)),
         "writes": int(m.group(4)), "write_ns": int(m.group(5))}
    if m.group(6):
        p.update(rounds=int(m.group(6)), best_read_ns=int(m.group(7)),
                 best_write_ns=int(m.group(8)))
    return p


def _make_guest_module():
    spec = importlib.util.spec_from_file_location(
        "stubdm_make_guest", os.path.join(ROOT, "build", "make_guest.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def initrd_with(base, files, path):
    """Write to path: base's bytes, then a gzip'd cpio of {guest path: (bytes, mode)}."""
    extra = path + ".extra"
    _make_guest_module().write_cpio(extra, files)
    with open(path, "wb") as out:
        with open(base, "rb") as f:
            shutil.copyfileobj(f, out)
        with open(extra, "rb") as f:
            shutil.copyfileobj(f, out)
    os.unlink(extra)
    return path


def dm_stats(messages):
    """The device model's exit figures (`stubdm-stats: k=v ...`) as a dict, or None."""
    found = None
    for m in STATS_LINE.finditer(messages or ""):
        found = m
    if found is None:
        return None
    st = {}
    for kv in found.group(1).split():
        k, _, v = kv.partition("=")
        if v.isdigit():
            st[k] = int(v)
    return st


# ---------------------------------------------------------------- timing

class Timeline:
    """The guest console's sink: host wall-clock times of the markers as they arrive."""

    def __init__(self):
        self.t_qemu = None
        self.marks = {}
        self.buf = bytearray()
        self._scan = 0

    def write(self, chunk):
        now = time.monotonic()
        self.buf += chunk
        # Only whole lines count: a marker is seen when its line is complete.
        end = self.buf.rfind(b"\n")
        if end < self._scan:
            return
        for line in bytes(self.buf[self._scan:end]).split(b"\n"):
            for key, mark in (("init", INIT_MARK), ("exit", EXIT_MARK),
                              ("pio_begin", PIO_BEGIN), ("pio", b"PIO port=")):
                if key not in self.marks and mark in line:
                    self.marks[key] = now
        self._scan = end + 1

    def flush(self):
        pass

    def since_qemu(self, key):
        t = self.marks.get(key)
        return None if t is None or self.t_qemu is None else t - self.t_qemu


class _Timed:
    """Mixin: note when QEMU is started (qemu_args() is built just before)."""

    def qemu_args(self):
        args = super().qemu_args()
        self.out.t_qemu = time.monotonic()
        return args


class StubdmEngine(_Timed, Engine):
    """Engine, also timing each ioreq round trip as host_sim sees it (send to answer),
    and keeping its hops (SimHypervisor.hop_stats) from before host_sim closes."""

    ioreq_time = 0.0
    hops = None

    def close(self):
        if self.hv is not None:
            self.hops = self.hv.hop_stats()
        super().close()

    def ioreq(self, server, type_, addr, data, size, is_read):
        t = time.perf_counter()
        try:
            return super().ioreq(server, type_, addr, data, size, is_read)
        finally:
            self.ioreq_time += time.perf_counter() - t

    def relayed(self, n, ioreq_ns, p, q):
        super().relayed(n, ioreq_ns, p, q)
        self.ioreq_time += ioreq_ns / 1e9

    def ioreq_answer_late(self, *args):
        t = time.perf_counter()
        try:
            return super().ioreq_answer_late(*args)
        finally:
            self.ioreq_time += time.perf_counter() - t


class NoSpinEngine(StubdmEngine):
    """StubdmEngine with every spin off: the event channels' (EvtchnHandle.spin_us
    (0, 0) for the handles the device model opens at its start) and the
    vfio-user servers' (Engine.spin_us)."""

    spin_us = 0

    def start_dm(self):
        from host_sim.hypervisor import EvtchnHandle

        saved = EvtchnHandle.spin_us
        EvtchnHandle.spin_us = (0, 0)
        try:
            super().start_dm()
        finally:
            EvtchnHandle.spin_us = saved


class NullSerialFunction:
    """vfio-user back end with no device logic: 1b36:0002's configuration space
    (what stubdm's and QEMU's pci-serial show), one 8-byte I/O BAR that reads 0
    and drops writes. Only the registers firmware and Linux program are
    writable (command, BAR0, interrupt line), as on any PCI function."""

    BAR_SIZE = 8

    def __init__(self):
        c = bytearray(256)
        c[0x00:0x04] = (0x1B36 | 0x0002 << 16).to_bytes(4, "little")
        c[0x08:0x0C] = (0x01 | 0x070002 << 8).to_bytes(4, "little")  # rev 1, 16550
        c[0x10:0x14] = (1).to_bytes(4, "little")  # I/O BAR
        c[0x2C:0x30] = (0x1AF4 | 0x1100 << 16).to_bytes(4, "little")
        c[0x3D] = 1  # INTA
        self.config = c
        w = bytearray(256)
        w[0x04:0x06] = (0x0507).to_bytes(2, "little")  # IO, MEM, MASTER, INTX_DISABLE
        w[0x10:0x14] = (~(self.BAR_SIZE - 1) & 0xFFFFFFFC).to_bytes(4, "little")
        w[0x3C] = 0xFF
        self.wmask = w
        self.reads = self.writes = 0

    def bar_regions(self):
        return [(0, self.BAR_SIZE, True)]

    def config_read(self, offset, size):
        return int.from_bytes(self.config[offset:offset + size], "little")

    def config_write(self, offset, size, value):
        for i in range(size):
            m = self.wmask[offset + i]
            b = (value >> (8 * i)) & 0xFF
            self.config[offset + i] = (self.config[offset + i] & ~m) | (b & m)

    def region_read(self, index, offset, size):
        self.reads += 1
        return 0

    def region_write(self, index, offset, size, value):
        self.writes += 1

    def dma_map(self, iova, size, fd, fd_offset, prot):
        if fd is not None:
            os.close(fd)  # ours from the call on; nothing here reads guest RAM

    def dma_unmap(self, iova, size):
        pass


class FloorEngine(_Timed, Engine):
    """The Engine's vfio-user path with NullSerialFunction at 00:04.0, no device
    model; its server spins as stubdm's do (Engine.spin_us)."""

    def start_dm(self):
        self.hv = None
        self.dm = None

    def start_servers(self):
        from host_sim.vfio_user import VfioUserServer

        self.function = NullSerialFunction()
        path = os.path.join(self.dir, "null%02x.sock" % engine.DEVFN_PCI_SERIAL)
        srv = VfioUserServer(path, self.function, log=self.note, spin_us=self.spin_us)
        self.servers.append((engine.DEVFN_PCI_SERIAL, self.function, srv))
        self.guest_slots = {engine.DEVFN_PCI_SERIAL: (UART_SLOT, 0)}  # engine.qemu_args


VFIO_FLOOR = os.path.join(ROOT, "build", "out", "vfio_floor")
CFLOOR_STATS = re.compile(r"^VFIO-FLOOR reads=(\d+) writes=(\d+) posted=(\d+) busy_ns=(\d+)",
                          re.M)


def vfio_floor_missing():
    """None if build/out/vfio_floor is there, else why not."""
    if os.access(VFIO_FLOOR, os.X_OK):
        return None
    return "no %s (run .venv/bin/scons -Q)" % os.path.relpath(VFIO_FLOOR, ROOT)


class CFloorServer:
    """build/out/vfio_floor serving one socket, in the Engine's server slot
    (it runs its own loop: nothing for the Engine to poll); spin_us: its
    --spin-us, the watch for the next request before each sleep."""

    def __init__(self, path, spin_us=0):
        why = vfio_floor_missing()
        if why:
            raise BenchError(why)
        self.path = path
        self.stats = None
        self.proc = subprocess.Popen([VFIO_FLOOR, "--spin-us", str(spin_us), path],
                                     stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     preexec_fn=engine.die_with_parent)
        if self.proc.stdout.readline().strip() != b"VFIO-FLOOR ready":
            self.close()
            raise BenchError("vfio_floor did not start: %s"
                             % self.proc.stderr.read().decode(errors="replace").strip())

    def filenos(self):
        return []

    def handle_readable(self, fd):
        pass

    def close(self):
        if self.proc.poll() is None:
            try:  # it ends by itself once QEMU hangs up
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        out = self.proc.stdout.read().decode(errors="replace")
        m = CFLOOR_STATS.search(out)
        if m:
            self.stats = dict(zip(("reads", "writes", "posted", "busy_ns"),
                                  map(int, m.groups())))


class CFloorEngine(_Timed, Engine):
    """The same QEMU and guest with build/out/vfio_floor at 00:04.0: the physical
    floor of a TCG exit, QEMU's vfio-user client and a socket round trip; it
    spins as the Engine's servers do (Engine.spin_us)."""

    def start_dm(self):
        self.hv = None
        self.dm = None

    def start_servers(self):
        srv = CFloorServer(os.path.join(self.dir, "cfloor%02x.sock" % engine.DEVFN_PCI_SERIAL),
                           spin_us=self.spin_us)
        self.floor = srv
        self.servers.append((engine.DEVFN_PCI_SERIAL, None, srv))
        self.guest_slots = {engine.DEVFN_PCI_SERIAL: (UART_SLOT, 0)}


def _vfio_floor_us(args, pattern):
    """vfio_floor ARGS's one round trip in us (pattern's groups: n and ns), or None
    without the tool."""
    if vfio_floor_missing():
        return None
    r = subprocess.run([VFIO_FLOOR] + args, capture_output=True, text=True, timeout=60)
    m = re.search(pattern, r.stdout)
    return int(m.group(2)) / int(m.group(1)) / 1e3 if m else None


def socket_pingpong_us(n=20000):
    """One request/reply round trip between two processes over a unix socket
    (vfio_floor --pingpong, in C), in us; None without the tool."""
    return _vfio_floor_us(["--pingpong", str(n)], r"PINGPONG n=(\d+) ns=(\d+)")


def evtchn_pingpong_us(spin_us, n=20000):
    """One round trip of the ioreq path's shape between two processes (a word in
    a shared page, a pipe byte, an eventfd back; vfio_floor --evtchn-pingpong, in
    C), each side watching the page spin_us before it sleeps; None without it."""
    return _vfio_floor_us(["--evtchn-pingpong", str(n), str(spin_us)],
                          r"EVTCHN-PINGPONG n=(\d+) spin_us=\d+ ns=(\d+)")


class FloorNoSpinEngine(FloorEngine):
    """The floor with its server's spin off: against stubdm-nospin."""

    spin_us = 0


class CFloorNoSpinEngine(CFloorEngine):
    """The C server with its spin off: against stubdm-nospin's floor."""

    spin_us = 0


class QemuEngine(_Timed, Engine):
    """The same QEMU command line, with QEMU's own pci-serial at 00:04.0."""

    def start_dm(self):
        self.hv = None
        self.dm = None

    def start_servers(self):
        pass

    def qemu_args(self):
        return super().qemu_args() + [
            "-chardev", "null,id=benchser",
            "-device", "pci-serial,addr=%02x.0,chardev=benchser" % UART_SLOT]


def _qemu_xen_engine():
    from host_sim import qemu_xen

    class QemuXenBenchEngine(_Timed, qemu_xen.engine_class()):
        ioreq_time = 0.0

        def ioreq(self, server, type_, addr, data, size, is_read):
            t = time.perf_counter()
            try:
                return super().ioreq(server, type_, addr, data, size, is_read)
            finally:
                self.ioreq_time += time.perf_counter() - t

    return QemuXenBenchEngine


ENGINES = {STUBDM: StubdmEngine, FLOOR: FloorEngine, QEMU: QemuEngine, CFLOOR: CFloorEngine,
           NOSPIN: NoSpinEngine, FLOOR_NOSPIN: FloorNoSpinEngine,
           CFLOOR_NOSPIN: CFloorNoSpinEngine}
LABELS = {STUBDM: "stubdm (%s) via host_sim", FLOOR: "transport floor (null vfio-user)",
          NOSPIN: "stubdm (%s), no spin before poll",
          FLOOR_NOSPIN: "transport floor, no spin before poll",
          CFLOOR: "minimal C vfio-user server",
          CFLOOR_NOSPIN: "minimal C server, no spin before poll",
          QEMU: "QEMU's own pci-serial", QEMU_XEN: "qemu-xen's pci-serial via host_sim"}


def label(config, runtime):
    return LABELS[config] % runtime if "%s" in LABELS[config] else LABELS[config]


def run_one(config, qemu, kernel, initrd, run, runtime="cpython", timeout=BOOT_TIMEOUT):
    """One boot of one configuration; a dict of what it measured."""
    tl = Timeline()
    cls = _qemu_xen_engine() if config == QEMU_XEN else ENGINES[config]
    e = cls(qemu, kernel, initrd, run=run, runtime=runtime, quiet=True, out=tl,
            timeout=timeout)
    t0 = time.monotonic()
    try:
        rc = e.boot()
    except Exception as err:
        tail = bytes(tl.buf[-600:]).decode(errors="replace")
        raise BenchError("%s: %s%s" % (label(config, runtime), err,
                                       "\nguest console ends:\n" + tail if tail else ""))
    t_end = time.monotonic()
    out = bytes(tl.buf).decode(errors="replace")
    if rc != 0:
        raise BenchError("%s: the guest's command failed (status %d):\n%s"
                         % (label(config, runtime), rc, out[-600:]))
    r = {"config": config, "rc": rc, "output": out,
         "startup": (tl.t_qemu - t0) if tl.t_qemu else None,
         "to_init": tl.since_qemu("init"), "to_exit": tl.since_qemu("exit"),
         "to_end": (t_end - tl.t_qemu) if tl.t_qemu else None,
         "pio_host": (tl.marks["pio"] - tl.marks["pio_begin"])
         if "pio" in tl.marks and "pio_begin" in tl.marks else None}
    m = INIT_LINE.search(out)
    r["kernel"] = m.group(1) if m else None
    r["kernel_init"] = float(m.group(2)) if m else None
    # /init prints its line once the modules are in: the guest's uptime then.
    r["kernel_line"] = float(m.group(3)) if m and m.group(3) else None
    # What the kernel's clock doesn't see: firmware, loading, decompression.
    r["pre_kernel"] = (r["to_init"] - r["kernel_line"]
                       if r["to_init"] is not None and r["kernel_line"] is not None else None)
    if config in (STUBDM, QEMU_XEN, NOSPIN):
        r["ioreqs"] = e.ioreqs
        r["ioreq_us"] = e.ioreq_time / e.ioreqs * 1e6 if e.ioreqs else None
        r["stats"] = dm_stats(getattr(e, "messages", ""))
        r["hops"] = getattr(e, "hops", None)
    if config in (FLOOR, FLOOR_NOSPIN):
        r["null_accesses"] = e.function.reads + e.function.writes
    if config in (CFLOOR, CFLOOR_NOSPIN):
        r["cfloor_stats"] = e.floor.stats
    return r


def _need(qemu, kernel, initrd):
    for what, path in (("QEMU", qemu), ("kernel", kernel), ("initrd", initrd)):
        if not path or not os.path.exists(path):
            raise BenchError("no %s%s" % (what, " at " + path if path else ""))


def _qemu_name(qemu):
    try:
        r = subprocess.run([qemu, "--version"], capture_output=True, text=True, timeout=10)
        m = re.search(r"version (\S+)", r.stdout)
        return "QEMU " + m.group(1) if m else os.path.basename(qemu)
    except (OSError, subprocess.TimeoutExpired):
        return os.path.basename(qemu)


def _load():
    try:
        with open("/proc/loadavg") as f:
            return float(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _load_line(before):
    """The host's load before the bench: other work there disturbs every figure."""
    if before is None:
        return ""
    return ("host: %d CPUs, load average %.2f before the bench%s\n"
            % (os.cpu_count() or 0, before,
               " (busy: expect noisy figures)" if before >= 0.5 * (os.cpu_count() or 1) else ""))


def _fmt(v, unit="s", spec="%.2f"):
    return "-" if v is None else (spec % v) + unit


def _ratio(a, b):
    return (a / b) if a and b else None


# ---------------------------------------------------------------- bench boot

def bench_boot(qemu, kernel, initrd, repeat=1, runtime="cpython", out=None,
               configs=None):
    """Boot to init and to a trivial command's exit, per configuration; prints a table.

    Returns {config: [result dict per boot]}.
    """
    out = out or sys.stdout
    configs = configs or default_configs()
    _need(qemu, kernel, initrd)
    load = _load()
    results = {c: [] for c in configs}
    for _ in range(max(1, repeat)):
        for c in configs:  # interleaved, so drift hits all alike
            results[c].append(run_one(c, qemu, kernel, initrd, "true", runtime))
    first = results[configs[0]][0]
    w = out.write
    w("bench boot: Linux %s under %s (TCG), 512 MiB, same kernel and initramfs; "
      "guest command 'true'; %d boot%s per configuration%s\n"
      % (first.get("kernel") or "?", _qemu_name(qemu), repeat, "s" if repeat > 1 else "",
         ", interleaved; mean (min-max)" if repeat > 1 else ""))
    w("  to init line, to exit marker: host wall clock from QEMU's start to the guest's line\n"
      "  kernel's init: the guest's uptime when /init ran (its line comes once the modules "
      "are in)\n"
      "  pre-kernel: to init line minus the guest's uptime at that line (firmware, "
      "loading, decompression)\n")
    keys = (("to_init", "to init line"), ("kernel_init", "kernel's init"),
            ("pre_kernel", "pre-kernel"), ("to_exit", "to exit marker"))
    cw = 19 if repeat > 1 else 14
    w("  %-34s" % "" + "".join(" %*s" % (cw, k[1]) for k in keys) + "\n")
    means = {}
    for c in configs:
        rs = results[c]
        row = []
        for key, _ in keys:
            vals = [r[key] for r in rs if r[key] is not None]
            mean = statistics.fmean(vals) if vals else None
            means[(c, key)] = mean
            cell = _fmt(mean)
            if repeat > 1 and vals:
                cell += " (%.2f-%.2f)" % (min(vals), max(vals))
            row.append(cell)
        w("  %-34s" % label(c, runtime) + "".join(" %*s" % (cw, v) for v in row) + "\n")
    if STUBDM in configs and QEMU in configs:
        w("ratio stubdm/QEMU boot time: " + ", ".join(
            "%s %s" % (name, _fmt(_ratio(means[(STUBDM, k)], means[(QEMU, k)]), ""))
            for k, name in keys) + "\n")
    if STUBDM in configs and QEMU_XEN in configs:
        w("ratio stubdm/qemu-xen boot time: " + ", ".join(
            "%s %s" % (name, _fmt(_ratio(means[(STUBDM, k)], means[(QEMU_XEN, k)]), ""))
            for k, name in keys) + "\n")
    if STUBDM in configs:
        rs = results[STUBDM]
        st = [r["stats"] for r in rs if r.get("stats")]
        n = statistics.fmean([s["ioreqs"] for s in st]) if st else None
        busy = sum(s["busy_us"] for s in st) / max(sum(s["ioreqs"] for s in st), 1) if st else None
        w("stubdm: device model start-up %s before QEMU starts (not in the figures above); "
          "%s ioreqs per boot, %s of device model time each\n"
          % (_fmt(statistics.fmean([r["startup"] for r in rs])),
             "%.0f" % n if n is not None else "-", _fmt(busy, " us")))
    w(_load_line(load))
    return results


# ---------------------------------------------------------------- bench pio

def bench_pio(qemu, kernel, initrd, count=20000, runtime="cpython", out=None,
              configs=None):
    """Port I/O round trips on the PCI UART's scratch register, per configuration.

    Returns {config: result dict} (with 'pio' from parse_pio, and rates).
    """
    out = out or sys.stdout
    if not configs:
        # The floor's physical limit, beside the floor, where it is built.
        # Each of stubdm, the floor and its physical limit twice: with the spins
        # before sleeping (host_sim's default) and with none, so that each ratio
        # compares like with like.
        configs = default_configs()
        if vfio_floor_missing() is None:
            configs = configs[:2] + (CFLOOR, CFLOOR_NOSPIN) + configs[2:]
        configs = configs[:1] + (NOSPIN,) + configs[1:2] + (FLOOR_NOSPIN,) + configs[2:]
    _need(qemu, kernel, initrd)
    load = _load()
    work = tempfile.mkdtemp(prefix="stubdm-bench-")
    try:
        tool = build_tool(work)
        with open(tool, "rb") as f:
            data = f.read()
        bench_initrd = initrd_with(initrd, {TOOL_GUEST_PATH: (data, 0o755)},
                                   os.path.join(work, "initrd-bench.cpio.gz"))
        run = "/%s %s %d %d" % (TOOL_GUEST_PATH, UART_SYSFS, count, SCRATCH)
        results = {}
        for c in configs:
            r = run_one(c, qemu, kernel, bench_initrd, run, runtime)
            p = parse_pio(r["output"])
            if p is None:
                raise BenchError("%s: pio_bench printed no result:\n%s"
                                 % (label(c, runtime), r["output"][-600:]))
            r["pio"] = p
            r["read_us"] = p["read_ns"] / p["reads"] / 1e3
            r["write_us"] = p["write_ns"] / p["writes"] / 1e3
            r["reads_per_s"] = p["reads"] / (p["read_ns"] / 1e9)
            r["writes_per_s"] = p["writes"] / (p["write_ns"] / 1e9)
            per_round = p["reads"] // p.get("rounds", 1)
            r["best_read_us"] = p.get("best_read_ns", p["read_ns"]) / per_round / 1e3
            r["best_write_us"] = p.get("best_write_ns", p["write_ns"]) / per_round / 1e3
            results[c] = r
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if CFLOOR in results:
        results[CFLOOR]["pingpong_us"] = socket_pingpong_us()
    if STUBDM in results:
        results[STUBDM]["evtchn_sleep_us"] = evtchn_pingpong_us(0)
        results[STUBDM]["evtchn_spin_us"] = evtchn_pingpong_us(100)
    _print_pio(results, count, runtime, qemu, out, configs)
    out.write(_load_line(load))
    return results


def _hop_us(hops):
    """SimHypervisor.hop_stats's sums as (count, delivery to pending(), pending() to
    notify(), notify() to the answer seen) in us per round trip; None if none counted."""
    if not hops or not hops.get("n"):
        return None
    hn = hops["n"]
    return (hn,) + tuple(hops[k] / hn / 1e3 for k in ("to_dm_ns", "in_dm_ns", "back_ns"))


def _print_pio(results, count, runtime, qemu, out, configs):
    w = out.write
    any_r = results[configs[0]]
    w("bench pio: %d inb then %d outb of the PCI UART's scratch register (00:%02x.0 BAR0+%d, "
      "port %#x), timed in the guest; Linux %s under %s (TCG); one boot per configuration\n"
      % (count, count, UART_SLOT, SCRATCH, any_r["pio"]["port"], any_r.get("kernel") or "?",
         _qemu_name(qemu)))
    w("  (best: the fastest of the guest's %d rounds, less disturbed by other load)\n"
      % any_r["pio"].get("rounds", 1))
    w("  %-36s %10s %9s %9s %10s %9s %9s\n" % (
        "", "reads/s", "us/read", "best us", "writes/s", "us/write", "best us"))
    for c in configs:
        r = results[c]
        w("  %-36s %10.0f %9.2f %9.2f %10.0f %9.2f %9.2f\n" % (
            label(c, runtime), r["reads_per_s"], r["read_us"], r["best_read_us"],
            r["writes_per_s"], r["write_us"], r["best_write_us"]))
    checks = ["%s %.2f/%.2f s" % (c, (results[c]["pio"]["read_ns"] + results[c]["pio"]["write_ns"])
                                / 1e9, results[c]["pio_host"])
              for c in configs if results[c].get("pio_host") is not None]
    if checks:
        w("  guest clock check, timed loops by the guest/host (host: console lines): %s\n"
          % ", ".join(checks))
    if STUBDM in results and QEMU in results:
        s, q = results[STUBDM], results[QEMU]
        w("ratio stubdm/QEMU accesses per second: reads %.4f, writes %.4f "
          "(QEMU %.0fx faster on reads)\n"
          % (s["reads_per_s"] / q["reads_per_s"], s["writes_per_s"] / q["writes_per_s"],
             q["reads_per_s"] / s["reads_per_s"]))
    if QEMU_XEN in results:
        x = results[QEMU_XEN]
        if STUBDM in results:
            s = results[STUBDM]
            w("ratio stubdm/qemu-xen accesses per second: reads %.2f, writes %.2f\n"
              % (s["reads_per_s"] / x["reads_per_s"], s["writes_per_s"] / x["writes_per_s"]))
        if QEMU in results:
            q = results[QEMU]
            w("ratio qemu-xen/QEMU accesses per second: reads %.4f, writes %.4f\n"
              % (x["reads_per_s"] / q["reads_per_s"], x["writes_per_s"] / q["writes_per_s"]))
        if x.get("ioreq_us") is not None:
            w("qemu-xen: ioreq round trip in host_sim (send_ioreq, all ioreqs) %.2f us, "
              "%d ioreqs in the run\n" % (x["ioreq_us"], x["ioreqs"]))
    if FLOOR in results and CFLOOR in results:
        f, c = results[FLOOR], results[CFLOOR]
        w("transport floor against its physical limit (the same guest loop, QEMU and "
          "socket; DESIGN.md section 11):%s read      write\n" % (" " * 1))
        rows = [("minimal C vfio-user server (build/out/vfio_floor): TCG exit, QEMU's client, "
                 "socket", c["read_us"], c["write_us"])]
        pp = c.get("pingpong_us")
        if pp is not None:
            rows.append(("  of which a socket round trip between two processes (C ping-pong)",
                         pp, pp))
        st = c.get("cfloor_stats") or {}
        if st.get("reads") or st.get("writes"):
            cs = st["busy_ns"] / 1e3 / (st["reads"] + st["writes"] + st["posted"])
            rows.append(("  of which the C server, request in to reply sent (the send wakes QEMU)",
                         cs, cs))
        rows.append(("host_sim's vfio-user server and engine loop (floor - C server)",
                     f["read_us"] - c["read_us"], f["write_us"] - c["write_us"]))
        for name, rd, wr in rows:
            w("  %-84s %7.2f us %7.2f us\n" % (name, rd, wr))
        w("ratio floor/C server time per access: reads %.2f, writes %.2f (best rounds: %.2f, "
          "%.2f)\n" % (f["read_us"] / c["read_us"], f["write_us"] / c["write_us"],
                       f["best_read_us"] / c["best_read_us"],
                       f["best_write_us"] / c["best_write_us"]))
    if STUBDM in results and FLOOR in results:
        s, f = results[STUBDM], results[FLOOR]
        w("ratio stubdm/floor time per access: reads %.2f, writes %.2f (best rounds: %.2f, "
          "%.2f)\n" % (s["read_us"] / f["read_us"], s["write_us"] / f["write_us"],
                       s["best_read_us"] / f["best_read_us"],
                       s["best_write_us"] / f["best_write_us"]))
        st = s.get("stats") or {}
        n = st.get("ioreqs", 0)
        dm_us = st["busy_us"] / n if n else None
        w("ratio stubdm/floor accesses per second: reads %.2f, writes %.2f\n"
          % (s["reads_per_s"] / f["reads_per_s"], s["writes_per_s"] / f["writes_per_s"]))
        rt = s.get("ioreq_us")
        rows = [("transport floor: TCG exit, vfio-user round trip, Python server",
                 f["read_us"], f["write_us"]),
                ("added by host_sim and the device model (stubdm - floor)",
                 s["read_us"] - f["read_us"], s["write_us"] - f["write_us"])]
        if rt is not None:
            rows.append(("  ioreq round trip in host_sim (send_ioreq, all ioreqs)", rt, rt))
            if dm_us is not None:
                rows.append(("    device model, READY to IORESP_READY (%s)" % runtime,
                             dm_us, dm_us))
                rows.append(("    event channels, process switches, hypervisor side",
                             rt - dm_us, rt - dm_us))
            hops = _hop_us(s.get("hops"))
            if hops is not None:
                hn, to_dm, in_dm, back = hops
                rows += [
                    ("    hops (%d%% of them, stamps in shared memory):" % (100 * hn // n
                                                                            if n else 0),
                     None, None),
                    ("      host_sim's delivery to the DM's pending() returning", to_dm, to_dm),
                    ("      the DM, pending() to its notify() (loop and request)", in_dm, in_dm),
                    ("      the DM's notify() to host_sim seeing the answer", back, back),
                    ("      host_sim's own code around them (send_ioreq)",
                     rt - to_dm - in_dm - back, rt - to_dm - in_dm - back)]
            rows.append(("  the rest: engine loop (DM polls), function back end",
                         s["read_us"] - f["read_us"] - rt, s["write_us"] - f["write_us"] - rt))
        # The same round trip's shape in C (vfio_floor --evtchn-pingpong).
        for key, what in (("evtchn_sleep_us", "both sides sleep in poll"),
                          ("evtchn_spin_us", "both spin 100 us first")):
            v = s.get(key)
            if v is not None:
                rows.append(("    its shape as a C ping-pong, " + what, v, v))
        w("stubdm's time per access, split (DESIGN.md section 11):" + " " * 11
          + "read      write\n")
        for name, rd, wr in rows:
            if rd is None:
                w("  %s\n" % name)
                continue
            w("  %-64s %7.2f us %7.2f us\n" % (name, rd, wr))
        if n:
            w("  device model: %d ioreqs in the run (%d of them the bench's), busy %.2f s, "
              "%.2f us each\n" % (n, 2 * (count + 100), st["busy_us"] / 1e6, dm_us))
        else:
            w("  device model: no stubdm-stats line in its log\n")
    if NOSPIN in results and (FLOOR_NOSPIN in results or FLOOR in results):
        o, f = results[NOSPIN], results.get(FLOOR_NOSPIN) or results[FLOOR]
        if FLOOR_NOSPIN in results and CFLOOR_NOSPIN in results:
            c = results[CFLOOR_NOSPIN]
            w("without the spins: ratio floor/C server time per access: reads %.2f, writes %.2f\n"
              % (f["read_us"] / c["read_us"], f["write_us"] / c["write_us"]))
        w("without the spins (stubdm-nospin against floor-nospin, where it ran): stubdm/floor "
          "time per access: "
          "reads %.2f, writes %.2f (best rounds: %.2f, %.2f)\n"
          % (o["read_us"] / f["read_us"], o["write_us"] / f["write_us"],
             o["best_read_us"] / f["best_read_us"], o["best_write_us"] / f["best_write_us"]))
        hops = _hop_us(o.get("hops"))
        if hops is not None and o.get("ioreq_us") is not None:
            _hn, to_dm, in_dm, back = hops
            w("  its ioreq round trip %.2f us: delivery to pending() %.2f, the DM %.2f, "
              "notify() to the answer seen %.2f, host_sim's own code %.2f us\n"
              % (o["ioreq_us"], to_dm, in_dm, back, o["ioreq_us"] - to_dm - in_dm - back))


# ---------------------------------------------------------------- stubdm-sim bench

def _locate():
    from host_sim import qtest_qemu

    qemu = qtest_qemu.find_qemu()
    if qemu is None:
        raise BenchError("no QEMU >= 10.1 with vfio-user: %s" % qtest_qemu.qemu_missing_reason())
    kernel, initrd = engine.find_kernel()
    if kernel is None or initrd is None:
        raise BenchError("no guest image in build/guest (python3 build/make_guest.py)")
    return qemu, kernel, initrd


def cmd_boot(args):
    """stubdm-sim bench boot [--repeat K]"""
    try:
        bench_boot(*_locate(), repeat=args.repeat, runtime=args.dm_runtime)
    except (BenchError, EngineError) as e:
        print("stubdm-sim: bench boot: %s" % e, file=sys.stderr)
        return 1
    return 0


def cmd_pio(args):
    """stubdm-sim bench pio [--count N]"""
    if args.count < 1:
        print("stubdm-sim: bench pio: --count must be at least 1", file=sys.stderr)
        return 2
    try:
        bench_pio(*_locate(), count=args.count, runtime=args.dm_runtime)
    except (BenchError, EngineError) as e:
        print("stubdm-sim: bench pio: %s" % e, file=sys.stderr)
        return 1
    return 0
