"""stubdm-sim: run the stubdm device model against host_sim's Xen environment."""
import argparse
import os
import sys
import time

from host_sim import scripted

EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_DM = 0, 1, 2, 3


def _session(args, **kw):
    if getattr(args, "dm", "stubdm") == "qemu-xen":
        from host_sim import qemu_xen

        kw.pop("dm_args", None)  # stubdm's options; qemu-xen has its own machine
        return qemu_xen.QemuXenSession(**kw)
    return scripted.Session(runtime=args.dm_runtime, **kw)


def cmd_script(args):
    """A scripted guest session: what a guest's firmware and drivers would poke first."""
    with _session(args, dm_args=["-device", "pci-serial"]) as s:
        g = s.guest
        print("device model (%s) pid %d serving domain %d through host_sim"
              % (getattr(args, "dm", "stubdm"), s.proc.pid, s.hv.domid))
        print("PCI bus 0, as the guest enumerates it through 0xcf8/0xcfc:")
        for dev in range(32):
            vd = g.pci_read(dev, 0, 0)
            if vd != 0xFFFFFFFF:
                cls = g.pci_read(dev, 0, 8) >> 8
                print("  00:%02x.0 %04x:%04x class %06x" % (dev, vd & 0xFFFF, vd >> 16, cls))
        print("COM1 LSR after reset: %#04x (16550A: 0x60)" % g.inb(0x3FD))
        msg = b"Hello from the scripted guest, through stubdm's 16550A.\n"
        g.memwrite(0x10000, msg)
        g.rep_outs(0x3F8, 0x10000, 1, len(msg))  # rep outsb from guest RAM
        g.outb(0x64, 0xAA)
        print("i8042 self test: %#04x (expect 0x55)" % g.inb(0x60))
        print("Xen platform ports: magic %#06x, protocol %d" % (g.inw(0x10), g.inb(0x12)))
        g.outb(0x3F9, 0x02)
        print("THRE interrupt enabled: IRQ4 %s" % ("high" if g.get_irq(4) else "low"))
        g.inb(0x3FA)
        print("IIR read: IRQ4 %s" % ("high" if g.get_irq(4) else "low"))
        print("guest reboots through the i8042 (pulse 0xfe)")
        g.outb(0x64, 0xFE)
        s.hv.pump_until(lambda: s.hv.shutdown_reason is not None, "the reset")
        print("hypervisor saw shutdown reason %d (reboot)" % s.hv.shutdown_reason)
        time.sleep(0.05)
        print("COM1 output: %r" % s.serial_output().decode(errors="replace"))
    return EXIT_OK


NIC_MODELS = ("rtl8139", "e1000")


def parse_nic_spec(spec):
    """model=rtl8139|e1000[,mac=XX:XX:XX:XX:XX:XX] -> (model, mac or None)."""
    model, mac = None, None
    for part in spec.split(","):
        k, eq, v = part.partition("=")
        if k == "model" and v in NIC_MODELS:
            model = v
        elif k == "mac" and len(v) == 17 and all(
                len(x) == 2 and all(c in "0123456789abcdefABCDEF" for c in x)
                for x in v.split(":")) and v.count(":") == 5:
            if int(v[:2], 16) & 1:
                raise ValueError("%s: a multicast MAC can't be a NIC's" % spec)
            mac = v.lower()
        else:
            raise ValueError("%s: give model=rtl8139|e1000[,mac=XX:XX:XX:XX:XX:XX]" % spec)
    if model is None:
        raise ValueError("%s: model=rtl8139 or model=e1000 is needed" % spec)
    return model, mac


def cmd_boot(args):
    """Boot a real Linux guest under QEMU with stubdm serving its PCI functions."""
    from host_sim import engine, qtest_qemu

    qemu = qtest_qemu.find_qemu()
    if qemu is None:
        print("stubdm-sim: no QEMU >= 10.1 with vfio-user: %s" % qtest_qemu.qemu_missing_reason(),
              file=sys.stderr)
        return EXIT_FAIL
    dk, di = engine.find_kernel()
    kernel, initrd = args.kernel or dk, args.initrd or di
    for what, path in (("kernel", kernel), ("initrd", initrd)):
        if not path or not os.path.exists(path):
            print("stubdm-sim: no guest %s%s (build the default guest with "
                  "python3 build/make_guest.py, or pass --%s)"
                  % (what, " at " + path if path else "", what), file=sys.stderr)
            return EXIT_FAIL
    disks = []
    for spec in args.disk or ():
        path, _, flag = spec.partition(",")
        if flag not in ("", "readonly") or not os.path.exists(path):
            print("stubdm-sim: --disk %s: PATH[,readonly] of an existing image" % spec,
                  file=sys.stderr)
            return EXIT_USAGE
        disks.append((os.path.abspath(path), flag == "readonly"))
    cdroms = [os.path.abspath(p) if p else None for p in (args.cdrom or ())]
    try:
        nics = [parse_nic_spec(spec) for spec in args.nic or ()]
    except ValueError as err:
        print("stubdm-sim: --nic %s" % err, file=sys.stderr)
        return EXIT_USAGE
    cls = engine.Engine
    if args.dm == "qemu-xen":
        from host_sim import qemu_xen

        if disks or cdroms:
            print("stubdm-sim: --disk and --cdrom serve stubdm's devices only",
                  file=sys.stderr)
            return EXIT_USAGE
        if args.vnc:
            print("stubdm-sim: --vnc shows stubdm's PV framebuffer only", file=sys.stderr)
            return EXIT_USAGE
        cls = qemu_xen.engine_class()
    e = cls(qemu, kernel, initrd, memory=args.memory, run=args.run,
                      runtime=args.dm_runtime, quiet=not args.verbose, timeout=args.timeout,
                      disks=disks, cdroms=cdroms, **({"nics": nics} if nics else {}),
                      **({"hdtype": args.hdtype} if args.hdtype != "ide" else {}),
                      **({"qmp": os.path.abspath(args.qmp)} if args.qmp else {}),
                      **({"vnc": args.vnc} if args.vnc else {}))
    if nics and not args.run:
        print("stubdm-sim: the guest's NIC D reaches peer 10.0.(2+D).2/24 in this run's own "
              "network namespace", file=sys.stderr)
    try:
        rc = e.boot()
    except scripted.SimError as err:
        print("\nstubdm-sim: %s" % err, file=sys.stderr)
        tail = "\n".join(e.messages.splitlines()[-15:]) if hasattr(e, "messages") else ""
        if tail:
            print("stubdm-sim: the device model's last words:\n" + tail, file=sys.stderr)
        return EXIT_DM
    if args.verbose:
        print("stubdm-sim: %d ioreqs served by the device model" % e.ioreqs, file=sys.stderr)
    return rc


def bench_ioreq(args):
    """ioreqs per second on a UART register, and the device model's time per ioreq."""
    n = args.count
    with _session(args) as s:
        g = s.guest
        for _ in range(200):
            g.inb(0x3FF)  # warm up
        t = time.perf_counter()
        for _ in range(n):
            g.inb(0x3FF)
        dt = time.perf_counter() - t
        s.close()
        st = s.dm_stats() or {}
    # rep outsb from guest RAM: the device model reads each string through
    # its mapcache, over 48 MiB of RAM (more than the cache maps at once).
    reps, span = n // 4, 48 << 20
    with _session(args) as s:
        t = time.perf_counter()
        for i in range(reps):
            s.guest.rep_outs(0x3FF, (i * 1048573) % span, 1, 64)
        rdt = time.perf_counter() - t
        s.close()
        rst = s.dm_stats() or {}
    busy = st.get("busy_us", 0) / max(st.get("ioreqs", 1), 1)
    print("stubdm (%s) via host_sim: %d ioreqs on the UART scratch register"
          % (args.dm_runtime, n))
    print("  round trips: %.0f per second, %.1f us each" % (n / dt, dt / n * 1e6))
    print("  device model time per ioreq (READY to IORESP_READY): %.2f us" % busy)
    print("  host_sim transport and hypervisor side: %.1f us" % (dt / n * 1e6 - busy))
    from host_sim import bench as _bench

    pp = _bench.socket_pingpong_us()
    print("  physical floor: a request/reply between two processes over a unix socket, in C "
          "(build/out/vfio_floor --pingpong): %s" % ("%.1f us" % pp if pp is not None else
                                                     _bench.vfio_floor_missing()))
    for spin, what in ((0, "both sides sleep in poll"), (100, "both spin 100 us first")):
        ev = _bench.evtchn_pingpong_us(spin)
        if ev is not None:
            print("  the ioreq path's shape as a C ping-pong (shared page, pipe, eventfd; "
                  "vfio_floor --evtchn-pingpong), %s: %.1f us" % (what, ev))
    hits, misses = rst.get("mapcache_hits", 0), rst.get("mapcache_misses", 0)
    print("  rep outsb of 64 bytes from guest RAM: %.0f per second, %.1f us each, "
          "%.1f us in the device model" % (reps / rdt, rdt / reps * 1e6,
                                           rst.get("busy_us", 0) / max(rst.get("ioreqs", 1), 1)))
    print("  mapcache: %d hits, %d misses (hit rate %.1f%%), %d buckets mapped, "
          "%d bytes of metadata" % (hits, misses, 100.0 * hits / max(hits + misses, 1),
                                     rst.get("mapcache_buckets", 0),
                                     rst.get("mapcache_footprint", 0)))
    from host_sim import qtest_qemu

    qemu = qtest_qemu.find_qemu()
    if qemu is None:
        print("QEMU peer: skipped (%s)" % qtest_qemu.qemu_missing_reason())
        return EXIT_OK
    with qtest_qemu.QemuQtest(qemu=qemu) as q:
        for _ in range(200):
            q.inb(0x3FF)
        t = time.perf_counter()
        for _ in range(n):
            q.inb(0x3FF)
        qdt = time.perf_counter() - t
    print("QEMU (%s) 16550 via qtest: %.0f per second, %.1f us each" % (
        os.path.basename(qemu),
        n / qdt, qdt / n * 1e6))
    print("ratio stubdm/QEMU round trips per second: %.2f" % ((n / dt) / (n / qdt)))
    from host_sim import qemu_xen

    qemu_xen.print_ioreq_peer(n, dt, busy, qdt, args.dm_runtime)
    return EXIT_OK


def main(argv=None):
    p = argparse.ArgumentParser(
        prog="stubdm-sim",
        description="Run the stubdm device model against host_sim, the Xen environment "
        "emulated on Linux.",
        epilog="Exit status: 0 success, 1 failure, 2 bad usage, 3 the device model "
        "crashed or hung.",
    )
    p.add_argument("--dm-runtime", default="cpython", choices=list(scripted.RUNTIMES),
                   help="interpreter the device model runs on: cpython, or micropython "
                   "(build/out/micropython, built by scons), or port (the stub domain's "
                   "MicroPython port built for Linux, build/out/stubdm-port) "
                   "(default: cpython)")
    # --dm-runtime is taken after the command too (stubdm-sim boot --dm-runtime ...).
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--dm-runtime", choices=list(scripted.RUNTIMES),
                        default=argparse.SUPPRESS, help="as the global option")
    # --dm qemu-xen: Xen's own device model (host_sim/qemu_xen.py) instead of stubdm.
    p.add_argument("--dm", default="stubdm", choices=["stubdm", "qemu-xen"],
                   help="device model: stubdm, or qemu-xen (Debian's qemu-system-xen on "
                   "host_sim's Xen libraries) (default: stubdm)")
    common.add_argument("--dm", choices=["stubdm", "qemu-xen"], default=argparse.SUPPRESS,
                        help="as the global option")
    sub = p.add_subparsers(dest="cmd", metavar="COMMAND")
    sp = sub.add_parser("script", parents=[common],
                        help="a scripted guest session against the device model")
    sp.set_defaults(func=cmd_script)
    bo = sub.add_parser(
        "boot", parents=[common],
        help="boot a Linux guest under QEMU, stubdm serving its PCI functions",
        description="Boot Debian's Linux (build/guest, made by set-up) under QEMU; stubdm "
        "serves the guest's PCI UART (1b36:0002) and Xen platform device (5853:0001) through "
        "host_sim, access by access, as Xen ioreqs. The guest's console is this terminal.",
        epilog="Exit status: with --run, the exit status of CMDS in the guest; otherwise 0 "
        "when the guest powers off. 1: QEMU or the guest image missing, or the guest stopped "
        "without a status; 3: the device model crashed or hung (reported within seconds).")
    bo.add_argument("--kernel", help="guest kernel (default: build/guest/vmlinuz)")
    bo.add_argument("--initrd", help="guest initramfs (default: build/guest/initramfs.cpio.gz)")
    bo.add_argument("--memory", type=int, default=512, metavar="MiB",
                    help="guest RAM (default 512)")
    bo.add_argument("--run", metavar="CMDS",
                    help="shell commands for the guest to run; it powers off after them")
    bo.add_argument("--timeout", type=float, default=None, metavar="S",
                    help="give up after S seconds (default: none)")
    bo.add_argument("--disk", action="append", metavar="PATH[,readonly]",
                    help="an IDE disk for the guest (repeatable; the first is /dev/sda), "
                    "passed to stubdm as libxl's -drive ...,if=ide")
    bo.add_argument("--hdtype", choices=("ide", "ahci"), default="ide",
                    help="the disks' controller, as libxl's hdtype: ide (PIIX3) or ahci "
                    "(ICH9 AHCI, -device ahci; CD-ROMs stay on IDE)")
    bo.add_argument("--cdrom", action="append", metavar="PATH",
                    help="an ATAPI CD-ROM on ide.1 (libxl's -device ide-cd; /dev/sr0)")
    bo.add_argument("--nic", action="append", metavar="model=rtl8139|e1000[,mac=...]",
                    help="an emulated NIC (repeatable; NIC D is ethD): the stub domain's vif D "
                    "behind host_sim's netback, on a TAP in this run's private network "
                    "namespace, where the peer is 10.0.(2+D).2/24")
    bo.add_argument("--qmp", metavar="PATH",
                    help="the device model's QMP (over its vchan) as a unix socket at PATH "
                    "while the guest runs, as libxl's /var/run/xen/qmp-libxl-<domid>")
    bo.add_argument("--vnc", metavar="HOST:N|unix:PATH",
                    help="the stub domain's PV framebuffer and keyboard (vfb/vkbd, as libxl's "
                    "vnc=1) on an RFB server at TCP port 5900+N or a unix socket, showing the "
                    "standard VGA (-device VGA; the guest's fbcon on bochs-drm); "
                    "`stubdm-sim screenshot --vnc ADDR FILE.png` takes its frame")
    bo.add_argument("-v", "--verbose", action="store_true", help="kernel messages and notes")
    bo.set_defaults(func=cmd_boot)
    bp = sub.add_parser("bench", help="print performance figures")
    bsub = bp.add_subparsers(dest="bench", metavar="BENCH")
    bi = bsub.add_parser("ioreq", parents=[common],
                         help="ioreq round trips on a UART register, vs QEMU")
    bi.add_argument("--count", type=int, default=20000, help="accesses to time")
    bi.set_defaults(func=bench_ioreq)
    from host_sim import bench
    bb = bsub.add_parser("boot", parents=[common],
                         help="boot to init and to a command's exit: stubdm, the "
                         "vfio-user floor and QEMU's pci-serial, same guest")
    bb.add_argument("--repeat", type=int, default=1, metavar="K",
                    help="boots per configuration (default 1)")
    bb.set_defaults(func=bench.cmd_boot)
    bpi = bsub.add_parser("pio", parents=[common],
                          help="port I/O round trips in the guest on the PCI UART: "
                          "stubdm, the vfio-user floor and QEMU's pci-serial")
    bpi.add_argument("--count", type=int, default=20000, metavar="N",
                     help="inb and outb to time in each configuration (default 20000)")
    bpi.set_defaults(func=bench.cmd_pio)
    from host_sim import fuzz, replay
    fuzz.add_command(sub, common)
    replay.add_command(sub, common)
    from host_sim import bench_xenstore, xenstored
    xenstored.add_command(sub)
    bench_xenstore.add_command(bsub)
    from host_sim import bench_pv, fuzz_pv
    bench_pv.add_command(bsub, common)
    from host_sim import bench_disk
    bench_disk.add_command(bsub, common)
    from host_sim import bench_net
    bench_net.add_command(bsub, common)
    fuzz_pv.add_command(sub, common)
    from host_sim import saverestore
    saverestore.add_command(sub, common)
    from host_sim import vnc
    vnc.add_command(sub)
    args = p.parse_args(argv)
    if not hasattr(args, "func"):
        (bp if args.cmd == "bench" else p).print_help()
        return EXIT_USAGE
    try:
        scripted.dm_command(args.dm_runtime)  # the runtime exists, or one line saying so
    except scripted.RuntimeMissing as e:
        print("stubdm-sim: %s" % e, file=sys.stderr)
        return EXIT_FAIL
    try:
        return args.func(args)
    except scripted.SimError as e:
        print("stubdm-sim: %s" % e, file=sys.stderr)
        return EXIT_DM
    except KeyboardInterrupt:
        return EXIT_FAIL


if __name__ == "__main__":
    sys.exit(main())
