"""stubdm-sim bench disk: a disk's throughput in a real guest, stubdm against QEMU.

One boot per configuration, in one invocation, the same kernel, initramfs,
QEMU flags and a fresh copy of the same image each time:

- stubdm: host_sim's Engine; the guest's disk is stubdm's (AHCI or PIIX3 IDE,
  --hdtype), which reaches the image as a stub domain would: blkfront to
  host_sim's blkback;
- QEMU's built-in controller of the same kind (ICH9 AHCI by `-device ahci`, or
  the pc machine's PIIX3 IDE), the image a raw file behind it; with AHCI also
  QEMU's built-in IDE (the issue's aim: stubdm's AHCI at least as fast).

Inside the guest, build/guest_tools/disk_bench.c (built here with `gcc -static`,
shipped in a cpio archive appended to a temporary copy of the initramfs) times
with CLOCK_MONOTONIC, O_DIRECT: a sequential read and a sequential write in
1 MiB requests, then 4 KiB random reads from several processes at once (what
NCQ serves in parallel). Ratios are stubdm's over QEMU's.
"""
import os
import re
import shutil
import sys
import tempfile
import time

from host_sim import bench
from host_sim.bench import BenchError, Timeline, _Timed
from host_sim.engine import Engine
from host_sim.scripted import ROOT

TOOL_SRC = os.path.join(ROOT, "build", "guest_tools", "disk_bench.c")
TOOL_GUEST_PATH = "usr/bin/disk_bench"
DISK_LINE = re.compile(r"^DISK seq_read_bytes=(\d+) ns=(\d+) seq_write_bytes=(\d+) ns=(\d+) "
                       r"rand_reads=(\d+) jobs=(\d+) ns=(\d+)\s*$", re.M)
TIMEOUT = 600.0


def build_tool(outdir):
    return bench.build_tool(outdir, TOOL_SRC)


def parse(text):
    m = None
    for m in DISK_LINE.finditer(text.replace("\r", "")):
        pass
    if m is None:
        return None
    g = [int(x) for x in m.groups()]
    return {"read_mb_s": g[0] / 1e6 / (g[1] / 1e9), "write_mb_s": g[2] / 1e6 / (g[3] / 1e9),
            "iops": g[4] / (g[6] / 1e9), "jobs": g[5]}


class StubdmDiskEngine(_Timed, Engine):
    pass


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


def run_one(config, qemu, kernel, initrd, image, hdtype, run, runtime):
    tl = Timeline()
    if config == "stubdm":
        e = StubdmDiskEngine(qemu, kernel, initrd, run=run, runtime=runtime, quiet=True, out=tl,
                             timeout=TIMEOUT, disks=[(image, False)], hdtype=hdtype)
    else:
        e = QemuDiskEngine(qemu, kernel, initrd, run=run, quiet=True, out=tl, timeout=TIMEOUT)
        e.image = image
        e.hdtype = "ide" if config == "qemu-ide" else hdtype
    try:
        rc = e.boot()
    except Exception as err:
        raise BenchError("%s: %s\n%s" % (config, err, bytes(tl.buf[-800:]).decode(
            errors="replace")))
    out = bytes(tl.buf).decode(errors="replace")
    r = parse(out)
    if rc != 0 or r is None:
        raise BenchError("%s: no result (status %s):\n%s" % (config, rc, out[-800:]))
    if config == "stubdm":
        r["stats"] = bench.dm_stats(getattr(e, "messages", "")) or {}
        r["ioreqs"] = e.ioreqs
    return r


def _ratio(a, b):
    return "%.2fx" % (a / b) if b else "-"


def bench_disk(qemu, kernel, initrd, hdtype="ahci", size_mib=64, seq_mib=32, reads=2000,
               jobs=4, runtime="cpython", out=None):
    out = out or sys.stdout
    bench._need(qemu, kernel, initrd)
    d = tempfile.mkdtemp(prefix="stubdm-bench-disk-")
    try:
        tool = build_tool(d)
        with open(tool, "rb") as f:
            files = {TOOL_GUEST_PATH: (f.read(), 0o755)}
        rd = bench.initrd_with(initrd, files, os.path.join(d, "initramfs.cpio.gz"))
        master = os.path.join(d, "master.img")
        with open(master, "wb") as f:
            f.write(os.urandom(size_mib << 20))
        run = "/%s /dev/sda %d %d %d" % (TOOL_GUEST_PATH, seq_mib, reads, jobs)
        results = {}
        configs = ("stubdm", "qemu") + (("qemu-ide",) if hdtype == "ahci" else ())
        for config in configs:
            image = os.path.join(d, "%s.img" % config)
            shutil.copyfile(master, image)
            t0 = time.monotonic()
            results[config] = run_one(config, qemu, kernel, rd, image, hdtype, run, runtime)
            results[config]["wall"] = time.monotonic() - t0
    finally:
        shutil.rmtree(d, ignore_errors=True)
    configs = [c for c in configs if c in results]
    s, q = results["stubdm"], results["qemu"]
    names = {"stubdm": "stubdm %s (%s) via host_sim, blkfront/blkback" % (hdtype, runtime),
             "qemu": "QEMU's built-in %s" % ("ICH9 AHCI" if hdtype == "ahci" else "PIIX3 IDE"),
             "qemu-ide": "QEMU's built-in PIIX3 IDE"}
    out.write("bench disk (%s): %d MiB sequential in 1 MiB O_DIRECT requests, %d random "
              "4 KiB reads by %d processes; guest clock\n" % (hdtype, seq_mib, reads, jobs))
    out.write("  %-52s %12s %12s %12s\n" % ("", "read MB/s", "write MB/s", "4k IOPS"))
    for c in configs:
        r = results[c]
        out.write("  %-52s %12.1f %12.1f %12.0f\n" % (names[c], r["read_mb_s"], r["write_mb_s"],
                                                      r["iops"]))
    out.write("  %-52s %12s %12s %12s\n" % ("ratio stubdm / QEMU", _ratio(
        s["read_mb_s"], q["read_mb_s"]), _ratio(s["write_mb_s"], q["write_mb_s"]),
        _ratio(s["iops"], q["iops"])))
    if "qemu-ide" in results:
        i = results["qemu-ide"]
        out.write("  %-52s %12s %12s %12s\n" % ("ratio stubdm / QEMU's IDE", _ratio(
            s["read_mb_s"], i["read_mb_s"]), _ratio(s["write_mb_s"], i["write_mb_s"]),
            _ratio(s["iops"], i["iops"])))
    st = s.get("stats") or {}
    if st:
        hits, misses = st.get("mapcache_hits", 0), st.get("mapcache_misses", 0)
        out.write("  stubdm: %d ioreqs for the whole boot and run; mapcache hit rate %.1f%%%s\n"
                  % (s["ioreqs"], 100.0 * hits / (hits + misses) if hits + misses else 0.0,
                     "; heap peak %d bytes" % st["heap_peak"] if "heap_peak" in st else ""))
    return results


def cmd_bench_disk(args):
    from host_sim import engine, qtest_qemu

    qemu = qtest_qemu.find_qemu()
    kernel, initrd = engine.find_kernel()
    try:
        bench_disk(qemu, kernel, initrd, hdtype=args.hdtype, runtime=args.dm_runtime)
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
    b.set_defaults(func=cmd_bench_disk)
