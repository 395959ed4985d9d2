#!/usr/bin/env python3
"""Record QEMU's own access trace of a Linux boot, for `stubdm-sim replay`.

    .venv/bin/python build/record_trace.py [--out tests/data] [--only NAME] [--keep-all]

Boots the default guest (build/guest: Debian's kernel and the busybox
initramfs) under build/qemu-system-x86_64 with TCG, on QEMU's pc machine laid
out as close to libxl's xenfv as QEMU allows without Xen (i440FX 00.0, PIIX3
01.0, IDE 01.1, PIIX4 PM 01.3, a pci-serial at 04.0 where stubdm puts its
own; no SMM and PIIX4 PM's smm-compat, as xenfv has them; QEMU refuses
the Xen platform device without Xen), with

    -trace memory_region_ops_read -trace memory_region_ops_write

and keeps every line QEMU printed for the regions stubdm models (the host
bridge's 0xcf8-0xcff, the 16550s, the i8042, port 0x92, PIIX4 PM's ACPI
blocks, APM, reset control), in QEMU's own format, xz-compressed, as
OUT/NAME.trace.xz. The lines of other regions (PIT, HPET, APIC, ...: Xen's,
or devices stubdm lacks) are dropped and counted in a comment at the top.
--keep-all keeps them too.

Each recording is one guest run (RECORDINGS below): the console on ttyS0,
commands in the guest, then poweroff (ACPI S5) or reboot.
"""
import argparse
import base64
import lzma
import os
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from host_sim.replay import RECORDED_REGIONS, parse_line  # noqa: E402

QEMU = os.path.join(REPO, "build", "qemu-system-x86_64")
GUEST = os.path.join(REPO, "build", "guest")
RAM_MIB = 128  # the replay runs stubdm with the same -m

# name -> (commands the guest runs before it powers off, how it ends)
RECORDINGS = {
    # Boot to the shell, list the PCI functions, power off through ACPI.
    "linux-boot-poweroff": ("ls /sys/bus/pci/devices; cat /proc/interrupts", "poweroff"),
    # Read every function's config space through sysfs (Linux's type 1
    # accesses of every size), talk to the PCI UART (ttyS1) and the console,
    # then reboot (Linux tries the ACPI reset register, the i8042, 0xcf9).
    "linux-sysfs-ttyS1-reboot": (
        "for d in /sys/bus/pci/devices/*; do echo $d; od -An -tx4 $d/config; "
        "cat $d/vendor $d/device $d/class $d/irq; done; "
        "stty -F /dev/ttyS1 115200; echo hello-ttyS1 > /dev/ttyS1; "
        "stty -F /dev/ttyS1 9600 cs7 parenb; echo again > /dev/ttyS1; "
        "cat /proc/tty/driver/serial; cat /proc/interrupts", "reboot"),
}


def qemu_args(trace_file, run, serial_log):
    append = "console=ttyS0 panic=-1 quiet stubdm.run=" + base64.b64encode(run.encode()).decode()
    return [
        # smm=off: Xen has no SMM, so qemu-xen's PIIX4 PM says so (config 0x5b).
        # smm-compat=on: as xenfv-4.2's compatibility properties (hw_compat_5_2)
        # set it; without it QEMU's PIIX4 is "ACPI only" with SMM off (SCI_EN
        # set from reset, SMI_CMD ignored), which qemu-xen's is not.
        QEMU, "-machine", "pc,accel=tcg,smm=off", "-global", "PIIX4_PM.smm-compat=on",
        "-m", "%dM" % RAM_MIB,
        "-nodefaults", "-no-reboot", "-display", "none",
        "-serial", "file:" + serial_log,
        "-chardev", "null,id=pciser", "-device", "pci-serial,chardev=pciser,addr=04.0",
        "-kernel", os.path.join(GUEST, "vmlinuz"),
        "-initrd", os.path.join(GUEST, "initramfs.cpio.gz"), "-append", append,
        "-trace", "memory_region_ops_read,file=" + trace_file,
        "-trace", "memory_region_ops_write,file=" + trace_file,
    ]


def record(name, out_dir, keep_all=False, timeout=300):
    cmds, end = RECORDINGS[name]
    # The guest's init powers off (ACPI S5) after the commands on its own.
    run = cmds + ("; sync; reboot -f" if end == "reboot" else "")
    with tempfile.TemporaryDirectory(prefix="stubdm-trace-") as d:
        trace = os.path.join(d, "trace")
        serial = os.path.join(d, "ttyS0")
        t0 = time.time()
        p = subprocess.run(qemu_args(trace, run, serial), stdin=subprocess.DEVNULL,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout)
        if p.returncode != 0:
            raise SystemExit("%s: QEMU exited %d: %s" % (name, p.returncode,
                                                        p.stderr.decode(errors="replace")))
        with open(serial, "rb") as f:
            console = f.read()
        done = b"reboot: Restarting system" if end == "reboot" else b"STUBDM-EXIT=0"
        if done not in console:
            raise SystemExit("%s: the guest's commands failed:\n%s"
                             % (name, console.decode(errors="replace")[-2000:]))
        kept, dropped, total = [], {}, 0
        with open(trace, errors="replace") as f:
            for line in f:
                total += 1
                a = parse_line(line)
                if a is None:
                    continue
                if keep_all or a.name in RECORDED_REGIONS:
                    kept.append(line)
                else:
                    dropped[a.name] = dropped.get(a.name, 0) + 1
        head = ["# stubdm trace %s: QEMU %s, `%s`, %d MiB, -device pci-serial,addr=04.0\n"
                % (name, qemu_version(), run, RAM_MIB),
                "# recorded by build/record_trace.py in %.0f s; %d of %d lines kept\n"
                % (time.time() - t0, len(kept), total)]
        if dropped:
            head.append("# dropped (regions stubdm does not model): %s\n" % ", ".join(
                "%s %d" % kv for kv in sorted(dropped.items(), key=lambda kv: -kv[1])))
        data = "".join(head + kept).encode()
        path = os.path.join(out_dir, name + ".trace.xz")
        with open(path, "wb") as f:
            f.write(lzma.compress(data, preset=9 | lzma.PRESET_EXTREME))
        print("%s: %d lines kept of %d, %d bytes (%s)" % (path, len(kept), total,
                                                         os.path.getsize(path), end))
        return path


def qemu_version():
    out = subprocess.run([QEMU, "--version"], stdout=subprocess.PIPE, text=True).stdout
    return out.split("version")[1].split()[0] if "version" in out else "?"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=os.path.join(REPO, "tests", "data"))
    ap.add_argument("--only", choices=sorted(RECORDINGS), help="one recording")
    ap.add_argument("--keep-all", action="store_true",
                    help="keep the lines of every region (large)")
    args = ap.parse_args()
    for what, path in (("QEMU", QEMU), ("guest kernel", os.path.join(GUEST, "vmlinuz"))):
        if not os.path.exists(path):
            raise SystemExit("no %s at %s: run build/setup.sh" % (what, path))
    os.makedirs(args.out, exist_ok=True)
    for name in ([args.only] if args.only else sorted(RECORDINGS)):
        record(name, args.out, args.keep_all)


if __name__ == "__main__":
    main()
