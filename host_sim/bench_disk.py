"""stubdm-sim bench disk: a disk's throughput in a real guest, stubdm against QEMU.

Boots of each configuration (--rounds, interleaved; medians printed), in one
invocation, the same kernel, initramfs, QEMU flags and a fresh copy of the same
image each time:

- stubdm: host_sim's Engine; the guest's disk is stubdm's (AHCI or PIIX3 IDE,
  --hdtype), which reaches the image as a stub domain would: blkfront to
  host_sim's blkback;
- qemu-xen (Debian's qemu-system-xen) on the same host_sim engine, run as libxl
  runs a device model in dom0: it opens the image as a file (libxl's dom0 -drive
  lines, no PV disk in between), its AHCI fronted over vfio-user as stubdm's is.
  With --hdtype ide there is no qemu-xen row: its PIIX3 IDE is the chipset's
  00:01.1 on the ISA compatibility ports, which vfio-user can't carry to the
  guest (stubdm's engine IDE is a native-mode PCI function for that reason);
- QEMU's built-in controller of the same kind (ICH9 AHCI by `-device ahci`, or
  the pc machine's PIIX3 IDE), the image a raw file behind it; with AHCI also
  QEMU's built-in IDE (the issue's aim: stubdm's AHCI at least as fast).

Inside the guest, build/guest_tools/disk_bench.c (built here with `gcc -static`,
shipped in a cpio archive appended to a temporary copy of the initramfs) times
with CLOCK_MONOTONIC, O_DIRECT: a sequential read and a sequential write in
1 MiB requests, then 4 KiB random reads from several processes at once (what
NCQ serves in parallel). Ratios are stubdm's over QEMU's. The tool marks each
phase on the console; the device model's CPU time (/proc/PID/stat) at each mark
gives its time per MiB and per 4 KiB read, for stubdm and qemu-xen alike.
"""
import os
import re
import resource
import shutil
import statistics
import sys
import tempfile
import time

from host_sim import bench
from host_sim.bench import BenchError, Timeline, _Timed
from host_sim.bench_net import _cpu_seconds
from host_sim.engine import Engine
from host_sim.scripted import ROOT

TOOL_SRC = os.path.join(ROOT, "build", "guest_tools", "disk_bench.c")
TOOL_GUEST_PATH = "usr/bin/disk_bench"
DISK_LINE = re.compile(r"^DISK seq_read_bytes=(\d+) ns=(\d+) seq_write_bytes=(\d+) ns=(\d+) "
                       r"rand_reads=(\d+) jobs=(\d+) ns=(\d+)\s*$", re.M)
MARK = re.compile(rb"DISKMARK (read|write|rand|end)\r?\n")
# The guest's block queue limits and /sys/block/sda/stat before and after the tool
# (guest_run): what request sizes Linux sent the controller.
QUEUE_LINE = re.compile(r"^DISKQ (\d+) (\d+) (\d+)\s*$", re.M)
STAT_LINE = re.compile(r"^DISKSTAT([01])((?: \d+){7,})\s*$", re.M)
QUEUE_KEYS = ("max_sectors_kb", "max_hw_sectors_kb", "max_segments")
TIMEOUT = 600.0


def build_tool(outdir):
    return bench.build_tool(outdir, TOOL_SRC)


def guest_run(seq_mib, reads, jobs, dev="sda"):
    """The guest's commands: the queue limits, the disk's stat counters, the tool, the
    counters again; the tool's exit status is the run's."""
    q = " ".join("$(cat /sys/block/%s/queue/%s)" % (dev, k) for k in QUEUE_KEYS)
    stat = "$(cat /sys/block/%s/stat)" % dev
    return ("echo DISKQ %s; echo DISKSTAT0 %s; /%s /dev/%s %d %d %d; s=$?; "
            "echo DISKSTAT1 %s; [ $s = 0 ]" % (q, stat, TOOL_GUEST_PATH, dev, seq_mib, reads,
                                              jobs, stat))


def parse_requests(text, reads):
    """Linux's queue limits and the mean size (KiB) of the sequential phases' requests,
    from guest_run's lines: {"max_sectors_kb": .., "read_kib": .., "write_kib": ..} or
    None. The random phase's reads (one 4 KiB request each) are taken out of the reads."""
    text = text.replace("\r", "")
    q = QUEUE_LINE.search(text)
    st = {}
    for m in STAT_LINE.finditer(text):
        st[m.group(1)] = [int(x) for x in m.group(2).split()]
    if q is None or len(st) != 2:
        return None
    out = dict(zip(QUEUE_KEYS, (int(x) for x in q.groups())))
    # Fields (Documentation/block/stat.rst): 0 reads, 2 sectors read, 4 writes, 6 sectors written.
    d = [b - a for a, b in zip(st["0"], st["1"])]
    nr, sr = d[0] - reads, d[2] - 8 * reads
    out["read_kib"] = sr / 2.0 / nr if nr > 0 else 0.0
    out["write_kib"] = d[6] / 2.0 / d[4] if d[4] > 0 else 0.0
    out["read_cmds"] = max(nr, 0)  # one request, one command to the controller
    out["write_cmds"] = d[4]
    return out


def parse(text):
    m = None
    for m in DISK_LINE.finditer(text.replace("\r", "")):
        pass
    if m is None:
        return None
    g = [int(x) for x in m.groups()]
    return {"read_mb_s": g[0] / 1e6 / (g[1] / 1e9), "write_mb_s": g[2] / 1e6 / (g[3] / 1e9),
            "iops": g[4] / (g[6] / 1e9), "jobs": g[5]}


class DiskTimeline(Timeline):
    """The console sink, also noting the device model's CPU seconds at each DISKMARK."""

    def __init__(self):
        super().__init__()
        self.engine = None
        self.cpu = {}  # phase -> device model CPU seconds when its mark arrived
        self.ioreqs = {}  # phase -> the engine's ioreqs so far when its mark arrived
        self.guest_cpu = {}  # phase -> QEMU's (the guest's) CPU seconds then
        self.host_cpu = {}  # phase -> host_sim's own (this process: blkback, vfio-user)
        self.intx = {}  # phase -> the device model's INTx level changes and MSIs so far
        self._pos = 0
        self._irq_pos = 0
        self._intx_n = 0

    def write(self, chunk):
        super().write(chunk)
        # Only whole lines count: a mark is seen when its newline has arrived.
        for m in MARK.finditer(self.buf, self._pos):
            self._pos = m.end()
            self._note(m.group(1).decode())
        # What ends before the last newline holds no mark still to come.
        self._pos = max(self._pos, self.buf.rfind(b"\n") + 1)

    def _note(self, phase):
        e = self.engine
        self.ioreqs[phase] = getattr(e, "ioreqs", 0)
        for procs, attr in ((self.cpu, "dm"), (self.guest_cpu, "qemu_proc")):
            proc = getattr(e, attr, None)
            cpu = _cpu_seconds(proc.pid) if proc is not None else None
            if cpu is not None:
                procs[phase] = cpu
        ru = resource.getrusage(resource.RUSAGE_SELF)
        self.host_cpu[phase] = ru.ru_utime + ru.ru_stime
        # host_sim's hypervisor logs every interrupt hypercall the device model made
        # (a level change or an MSI).
        irq_log = getattr(getattr(e, "hv", None), "irq_log", None)
        if irq_log is not None:
            n = len(irq_log)
            if n < self._irq_pos:
                self._irq_pos = 0  # a new log (a new hypervisor)
            for i in range(self._irq_pos, n):
                if irq_log[i][0] in ("intx", "msi"):
                    self._intx_n += 1
            self._irq_pos = n
            self.intx[phase] = self._intx_n


def phase_cpu(cpu):
    """Each phase's (read, write, rand) share of a figure noted at the marks (CPU seconds,
    ioreqs)."""
    out = {}
    for a, b in (("read", "write"), ("write", "rand"), ("rand", "end")):
        if a in cpu and b in cpu:
            out[a] = cpu[b] - cpu[a]
    return out


class StubdmDiskEngine(_Timed, Engine):
    pass


def _qemu_xen_engine():
    """qemu-xen's engine class for the bench, or (None, why it can't run here)."""
    from host_sim import qemu_xen

    why = qemu_xen.missing()
    if why is not None:
        return None, why

    class QemuXenDiskEngine(_Timed, qemu_xen.engine_class()):
        # qemu-xen's ICH9 AHCI sends MSIs with xendevicemodel_inject_msi, which
        # host_sim delivers through the function's vfio-user MSI vector, as
        # stubdm's AHCI does: both rows take the guest's interrupts the same way.
        pass

    return QemuXenDiskEngine, None


class QemuDiskEngine(_Timed, Engine):
    """The same QEMU command line with QEMU's own controller and the image behind it."""

    image = None
    hdtype = "ide"

    def start_dm(self):
        self.hv = None
        self.dm = None

    def start_servers(self):
        pass

    def qemu_args(self):
        drive = "file=%s,format=raw,cache=writeback" % self.image.replace(",", ",,")
        if self.hdtype == "ahci":
            extra = ["-device", "ahci,id=ahci0", "-drive", drive + ",if=none,id=d0",
                     "-device", "ide-hd,bus=ahci0.0,drive=d0"]
        else:
            extra = ["-drive", drive + ",if=ide,index=0,media=disk"]
        return super().qemu_args() + extra


def run_one(config, qemu, kernel, initrd, image, hdtype, run, runtime, reads=None):
    """One boot; reads: the random reads run makes (guest_run's), to tell Linux's
    sequential request sizes from its stat counters."""
    from host_sim.engine import ahci_args

    tl = DiskTimeline()
    if config == "stubdm":
        e = StubdmDiskEngine(qemu, kernel, initrd, run=run, runtime=runtime, quiet=True, out=tl,
                             timeout=TIMEOUT, disks=[(image, False)], hdtype=hdtype)
    elif config == "qemu-xen":
        # A dom0 device model: the image file itself on qemu-xen's command line.
        cls, _why = _qemu_xen_engine()
        e = cls(qemu, kernel, initrd, run=run, quiet=True, out=tl, timeout=TIMEOUT,
                dm_extra=ahci_args([(image, False)], [], pv=False)[0])
    else:
        e = QemuDiskEngine(qemu, kernel, initrd, run=run, quiet=True, out=tl, timeout=TIMEOUT)
        e.image = image
        e.hdtype = "ide" if config == "qemu-ide" else hdtype
    tl.engine = e
    try:
        rc = e.boot()
    except Exception as err:
        raise BenchError("%s: %s\n%s" % (config, err, bytes(tl.buf[-800:]).decode(
            errors="replace")))
    out = bytes(tl.buf).decode(errors="replace")
    r = parse(out)
    if rc != 0 or r is None:
        raise BenchError("%s: no result (status %s):\n%s" % (config, rc, out[-800:]))
    r["cpu"] = phase_cpu(tl.cpu)
    r["requests"] = parse_requests(out, reads) if reads is not None else None
    r["phase_ioreqs"] = phase_cpu(tl.ioreqs)
    r["phase_intx"] = phase_cpu(tl.intx)
    r["guest_cpu"] = phase_cpu(tl.guest_cpu)
    r["host_cpu"] = phase_cpu(tl.host_cpu)
    if config == "stubdm":
        r["stats"] = bench.dm_stats(getattr(e, "messages", "")) or {}
    r["ioreqs"] = e.ioreqs
    return r


def _ratio(a, b):
    return "%.2fx" % (a / b) if b else "-"


# Why a configuration has no row (printed in its place).
IDE_QEMU_XEN = ("qemu-xen's PIIX3 IDE is the chipset's 00:01.1 on the ISA compatibility "
                "ports, which vfio-user can't carry to the guest")


CONFIGS = ("stubdm", "qemu-xen", "qemu", "qemu-ide")


def median_rounds(rounds):
    """One configuration's rounds (run_one's results, in order) as one result: the
    round with the median read MB/s for its detail figures, each headline figure the
    median of its own rounds, and every round's (read, write, IOPS) under "rounds"."""
    by_read = sorted(rounds, key=lambda r: r["read_mb_s"])
    r = dict(by_read[(len(by_read) - 1) // 2])
    for k in ("read_mb_s", "write_mb_s", "iops"):
        r[k] = statistics.median([x[k] for x in rounds])
    r["rounds"] = [(x["read_mb_s"], x["write_mb_s"], x["iops"]) for x in rounds]
    return r


def bench_disk(qemu, kernel, initrd, hdtype="ahci", size_mib=64, seq_mib=32, reads=2000,
               jobs=4, runtime="cpython", out=None, qemu_xen=True, rounds=1, configs=None,
               progress=None):
    """configs: the rows to run (CONFIGS' names; None: every one this hdtype has);
    rounds: boots of each, interleaved (stubdm, qemu-xen, ..., stubdm, ...), medians
    printed; progress: a stream told of each boot as it starts."""
    out = out or sys.stdout
    if rounds < 1:
        raise BenchError("rounds must be at least 1")
    if configs is not None:
        bad = [c for c in configs if c not in CONFIGS]
        if bad or not configs:
            raise BenchError("no such configuration: %s (there are %s)"
                             % (", ".join(bad) or "none given", ", ".join(CONFIGS)))
        if "qemu-ide" in configs and hdtype != "ahci":
            raise BenchError("qemu-ide is the comparison row of --hdtype ahci; with ide, "
                             "qemu is QEMU's IDE")
    bench._need(qemu, kernel, initrd)
    size_mib = max(size_mib, seq_mib)
    skipped = {}
    if qemu_xen:
        if hdtype == "ide":
            skipped["qemu-xen"] = IDE_QEMU_XEN
        else:
            _cls, why = _qemu_xen_engine()
            if why is not None:
                skipped["qemu-xen"] = why
    d = tempfile.mkdtemp(prefix="stubdm-bench-disk-")
    try:
        tool = build_tool(d)
        with open(tool, "rb") as f:
            files = {TOOL_GUEST_PATH: (f.read(), 0o755)}
        rd = bench.initrd_with(initrd, files, os.path.join(d, "initramfs.cpio.gz"))
        master = os.path.join(d, "master.img")
        with open(master, "wb") as f:
            f.write(os.urandom(size_mib << 20))
        run = guest_run(seq_mib, reads, jobs)
        every = ("stubdm",) + (("qemu-xen",) if qemu_xen else ()) + ("qemu",) + (
            ("qemu-ide",) if hdtype == "ahci" else ())
        configs = tuple(c for c in every if configs is None or c in configs)
        runs = {}
        for i in range(rounds):
            for config in configs:
                if config in skipped:
                    continue
                if progress is not None:
                    progress.write("bench disk: round %d of %d, %s\n" % (i + 1, rounds, config))
                    progress.flush()
                image = os.path.join(d, "%s.img" % config)
                shutil.copyfile(master, image)
                t0 = time.monotonic()
                r = run_one(config, qemu, kernel, rd, image, hdtype, run, runtime, reads=reads)
                r["wall"] = time.monotonic() - t0
                runs.setdefault(config, []).append(r)
    finally:
        shutil.rmtree(d, ignore_errors=True)
    results = {c: median_rounds(rs) for c, rs in runs.items()}
    s, q = results.get("stubdm") or {}, results.get("qemu")
    names = {"stubdm": "stubdm %s (%s) via host_sim, blkfront/blkback" % (hdtype, runtime),
             "qemu-xen": "qemu-xen %s via host_sim, image file (dom0)" % hdtype,
             "qemu": "QEMU's built-in %s" % ("ICH9 AHCI" if hdtype == "ahci" else "PIIX3 IDE"),
             "qemu-ide": "QEMU's built-in PIIX3 IDE"}
    w = out.write
    w("bench disk (%s): %d MiB sequential in 1 MiB O_DIRECT requests, %d random "
      "4 KiB reads by %d processes; guest clock%s\n"
      % (hdtype, seq_mib, reads, jobs,
         "; %d interleaved rounds, medians" % rounds if rounds > 1 else ""))
    # Beside each MB/s the guest commands per MiB (Linux's requests from its stat
    # counters): a 1 MiB pread is one AHCI command or two, depending on how the guest's
    # pages merge into libahci's 168 PRD entries, and that moves the figure.
    w("  %-56s %10s %7s %10s %7s %9s\n" % ("", "read MB/s", "cmd/MiB", "write MB/s", "cmd/MiB",
                                          "4k IOPS"))
    for c in configs:
        if c in skipped:
            w("  %-56s %10s %7s %10s %7s %9s  (%s)\n" % (names[c], "-", "", "-", "", "-",
                                                       skipped[c]))
            continue
        r = results[c]
        rq = r.get("requests") or {}
        per = ["%.2f" % (rq[k] / seq_mib) if k in rq else "?" for k in ("read_cmds", "write_cmds")]
        w("  %-56s %10.1f %7s %10.1f %7s %9.0f\n" % (names[c], r["read_mb_s"], per[0],
                                                     r["write_mb_s"], per[1], r["iops"]))

    def ratios(label, a, b):
        w("  %-56s %10s %7s %10s %7s %9s\n" % (label, _ratio(a["read_mb_s"], b["read_mb_s"]),
                                              "", _ratio(a["write_mb_s"], b["write_mb_s"]),
                                              "", _ratio(a["iops"], b["iops"])))

    if s:
        if "qemu-xen" in results:
            ratios("ratio stubdm / qemu-xen", s, results["qemu-xen"])
        if q:
            ratios("ratio stubdm / QEMU", s, q)
        if "qemu-ide" in results:
            ratios("ratio stubdm / QEMU's IDE", s, results["qemu-ide"])
    if rounds > 1:
        for c in configs:
            if c in results:
                rs = results[c]["rounds"]
                w("  %-10s rounds: read %s MB/s, write %s MB/s, %s IOPS\n"
                  % (c, " ".join("%.0f" % x[0] for x in rs), " ".join("%.0f" % x[1] for x in rs),
                     " ".join("%.0f" % x[2] for x in rs)))
        w("  (the detail lines below are each row's median round by read MB/s)\n")
    # The device model's own CPU per unit of work, phase by phase (the guest's marks).
    for c in ("stubdm", "qemu-xen"):
        cpu = results.get(c, {}).get("cpu") or {}
        if len(cpu) == 3:
            w("  %-10s device model CPU: %.2f ms/MiB read, %.2f ms/MiB write, "
              "%.0f us per 4k read\n" % (c, 1e3 * cpu["read"] / seq_mib,
                                          1e3 * cpu["write"] / seq_mib,
                                          1e6 * cpu["rand"] / reads))
        g, h = results.get(c, {}).get("guest_cpu") or {}, results.get(c, {}).get("host_cpu") or {}
        if len(g) == 3 and len(h) == 3:
            w("  %-10s CPU of QEMU (the guest) / host_sim: %.2f / %.2f ms/MiB read, "
              "%.2f / %.2f ms/MiB write\n" % (c, 1e3 * g["read"] / seq_mib, 1e3 * h["read"] / seq_mib,
                                             1e3 * g["write"] / seq_mib,
                                             1e3 * h["write"] / seq_mib))
        n = results.get(c, {}).get("phase_intx") or {}
        rq = results.get(c, {}).get("requests") or {}
        if len(n) == 3 and rq.get("read_cmds") and rq.get("write_cmds"):
            w("  %-10s interrupt calls (set_pci_intx_level, inject_msi): %.2f per command read, "
              "%.2f per command written, %.2f per 4k read\n"
              % (c, n["read"] / rq["read_cmds"], n["write"] / rq["write_cmds"],
                 n["rand"] / reads))
        io = results.get(c, {}).get("phase_ioreqs") or {}
        if len(io) == 3:
            w("  %-10s guest accesses to it: %.1f per MiB read, %.1f per MiB write, "
              "%.1f per 4k read\n" % (c, io["read"] / seq_mib, io["write"] / seq_mib,
                                      io["rand"] / reads))
    # What Linux sent each controller (its queue limits: libahci's 168 PRD entries,
    # ata_piix's 128, and the IDENTIFY words the disk's max_sectors come from).
    for c in configs:
        q = (results.get(c) or {}).get("requests")
        if q:
            w("  %-10s guest requests: %.0f KiB per sequential read, %.0f KiB per write "
              "(queue: max_sectors_kb %d, max_hw_sectors_kb %d, max_segments %d)\n"
              % (c, q["read_kib"], q["write_kib"], q["max_sectors_kb"],
                 q["max_hw_sectors_kb"], q["max_segments"]))
    st = s.get("stats") or {}
    if st:
        hits, misses = st.get("mapcache_hits", 0), st.get("mapcache_misses", 0)
        w("  stubdm: %d ioreqs for the whole boot and run; mapcache hit rate %.1f%%%s\n"
          % (s["ioreqs"], 100.0 * hits / (hits + misses) if hits + misses else 0.0,
             "; heap peak %d bytes" % st["heap_peak"] if "heap_peak" in st else ""))
        if st.get("blk_submits"):
            w("  stubdm: %d disk commands became %d blkif requests (%.2f each), whole run\n"
              % (st["blk_submits"], st["blk_requests"],
                 st["blk_requests"] / st["blk_submits"]))
    return results


def cmd_bench_disk(args):
    from host_sim import engine, qtest_qemu

    qemu = qtest_qemu.find_qemu()
    kernel, initrd = engine.find_kernel()
    try:
        configs = None
        if args.configs is not None:
            configs = tuple(c for c in args.configs.split(",") if c)
        bench_disk(qemu, kernel, initrd, hdtype=args.hdtype, runtime=args.dm_runtime,
                   seq_mib=args.seq_mib, reads=args.reads, rounds=args.rounds,
                   configs=configs, progress=sys.stderr)
    except BenchError as e:
        sys.stderr.write("stubdm-sim bench disk: %s\n" % e)
        return 1
    return 0


def add_command(bsub, common):
    b = bsub.add_parser("disk", parents=[common],
                        help="disk throughput in a real guest: stubdm's AHCI or IDE against "
                        "QEMU's built-in controllers (sequential MB/s, 4 KiB random IOPS)")
    b.add_argument("--hdtype", choices=("ide", "ahci"), default="ahci",
                   help="the controller (default ahci; with ahci QEMU's IDE runs too)")
    b.add_argument("--seq-mib", type=int, default=32, metavar="N",
                   help="MiB read and written sequentially (default 32; the image is 64)")
    b.add_argument("--reads", type=int, default=2000, metavar="N",
                   help="4 KiB random reads (default 2000)")
    b.add_argument("--rounds", type=int, default=3, metavar="N",
                   help="boots of each configuration, interleaved; the table gives medians "
                   "(default 3)")
    b.add_argument("--configs", metavar="LIST",
                   help="comma-separated rows to run, of %s (default: all that the "
                   "controller has)" % ",".join(CONFIGS))
    b.set_defaults(func=cmd_bench_disk)
