#!/usr/bin/env python3
"""Build the test guest: Debian's kernel plus a busybox initramfs.

    python3 build/make_guest.py [--out build/guest] [--cache build/cache]

Produces OUT/vmlinuz and OUT/initramfs.cpio.gz (DESIGN.md section 10). The
Debian packages are fetched with `apt-get download` into the cache folder and
unpacked there with `dpkg-deb -x`; nothing is installed on the host. The
kernel is whatever linux-image-amd64 the host's apt sources offer, so the same
script works on Debian 12 and 13.

Each step prints one line and is skipped when its output is newer than its
inputs. The initramfs is written here (newc cpio, gzip), so no `cpio` binary
is needed. Compressed modules (.ko.xz, .ko.gz, .ko.zst) are stored
decompressed because busybox insmod loads plain ELF only.

Guest interface (/init):
- `stubdm.run=<base64>` on the kernel command line: the decoded commands run
  with `sh -c`, then `STUBDM-EXIT=<status>` is printed and the guest powers
  off. Longer scripts: `stubdm.runfile=<path>` runs a file, which can be added
  by appending a second cpio archive to the initrd (the kernel unpacks
  concatenated archives; `write_cpio` below makes one).
- otherwise an interactive shell on the console; power off when it exits.
- `stubdm.quiet` suppresses init's own status line.
- `stubdm.modprobe=a,b,...` loads those modules (of the on-demand ones) in that
  order before the commands; when a framebuffer appears, init clears tty1 and
  writes a line on it (what fbcon shows).
"""

import argparse
import glob
import gzip
import io
import lzma
import os
import shutil
import struct
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

KERNEL_META = "linux-image-amd64"
BUSYBOX_PKG = "busybox-static"

# Modules the guest loads at boot, in the order asked for; their dependencies
# come from the kernel's modules.dep. Built-in ones are skipped.
MODULES = (
    "scsi_mod", "libata", "ata_piix", "ata_generic", "libahci", "ahci", "sd_mod",
    "cdrom", "sr_mod", "isofs",
    "8139too", "8139cp", "e1000",
    "uio", "uio_pci_generic",
)

# In the image with their dependencies but not loaded at boot: a test loads
# them with modprobe (Linux's bochs DRM driver for the standard VGA, with drm,
# drm_kms_helper, ttm, drm_ttm_helper and drm_vram_helper; DESIGN.md 15).
MODULES_ON_DEMAND = ("bochs",)

MODULES_LOAD = "etc/stubdm/modules.load"  # read by /init, one path a line

INIT_SCRIPT = r"""#!/bin/sh
# stubdm guest init (written by build/make_guest.py)
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
[ -x /bin/mount ] || /bin/busybox --install -s
mount -t proc proc /proc
read -r t_init _ < /proc/uptime
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null || mdev -s
mkdir -p /tmp /dev/pts /run
mount -t devpts devpts /dev/pts 2>/dev/null

stubdm_off() {
    sync
    poweroff -f
    reboot -f
    while :; do sleep 3600; done
}

kver=$(uname -r)
loaded=0
missing=""
while read -r mod; do
    [ -n "$mod" ] || continue
    path=/lib/modules/$kver/$mod
    if [ ! -f "$path" ]; then
        missing="$missing ${mod##*/}"
    elif insmod "$path" 2>/dev/null; then
        loaded=$((loaded + 1))
    else
        missing="$missing ${mod##*/}(insmod)"
    fi
done < /etc/stubdm/modules.load
[ -z "$missing" ] || echo "stubdm-init: warning: modules not loaded:$missing"

# A PCI 16550 (stubdm's 1b36:0002) is ttyS1. Linux registers a UART's
# interrupt only while the port is open: keep it open for the session and
# greet it, so its line shows (and counts) in /proc/interrupts.
if grep -q '^1: uart:16550A' /proc/tty/driver/serial 2>/dev/null; then
    exec 9<>/dev/ttyS1
    echo "stubdm-init: ttyS1 open" >&9
fi

run=""
runfile=""
quiet=""
probe=""
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        stubdm.run=*) run=${arg#stubdm.run=} ;;
        stubdm.runfile=*) runfile=${arg#stubdm.runfile=} ;;
        stubdm.quiet) quiet=1 ;;
        stubdm.modprobe=*) probe=${arg#stubdm.modprobe=} ;;
    esac
done
# stubdm.modprobe=a,b,...: on-demand modules, loaded in that order (busybox
# modprobe would take modules.dep's order, which is not a load order).
if [ -n "$probe" ]; then
    for mod in $(echo "$probe" | tr , ' '); do
        modprobe "$mod" 2>/dev/null || echo "stubdm-init: warning: modprobe $mod failed"
    done
    # A display driver (the bochs DRM on the standard VGA) binds in the
    # background: once fbcon has tty1, say on it where the shell is.
    i=0
    while [ ! -e /dev/fb0 ] && [ $i -lt 50 ]; do sleep 0.2; i=$((i + 1)); done
    [ -e /dev/fb0 ] && printf '\033[2J\033[H%s\n%s\n' \
        "stubdm-init: kernel $kver, $(cut -d' ' -f2 /proc/fb | head -n1) on fb0;" \
        "the shell is on ttyS0" > /dev/tty1
fi
read -r t_mods _ < /proc/uptime
[ -n "$quiet" ] ||
    echo "stubdm-init: kernel $kver; init at ${t_init}s; $loaded modules loaded at ${t_mods}s"

if [ -n "$run" ] || [ -n "$runfile" ]; then
    cd /tmp
    if [ -n "$run" ]; then
        if cmds=$(echo "$run" | base64 -d); then
            sh -c "$cmds"
            status=$?
        else
            echo "stubdm-init: stubdm.run is not valid base64"
            status=126
        fi
    else
        sh "$runfile"
        status=$?
    fi
    echo "STUBDM-EXIT=$status"
    stubdm_off
fi

echo "stubdm-init: interactive shell; exit it to power off"
setsid cttyhack sh -l
stubdm_off
"""

PROFILE = """export PATH=/bin:/sbin:/usr/bin:/usr/sbin
export PS1='stubdm-guest:\\w# '
"""


def step(name, msg):
    print(f"{name}: {msg}", flush=True)


def fail(msg):
    print(f"make_guest: error: {msg}", file=sys.stderr)
    sys.exit(1)


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, **kw)


def mtime(path):
    try:
        return os.stat(path).st_mtime
    except FileNotFoundError:
        return None


def read_text(path):
    try:
        with open(path) as f:
            return f.read()
    except FileNotFoundError:
        return None


def up_to_date(output, inputs):
    out = mtime(output)
    if out is None:
        return False
    return all((mtime(i) or float("inf")) <= out for i in inputs)


# ---------------------------------------------------------------- packages

def apt_show(*pkgs):
    """{package: fields of its candidate version} for those apt knows."""
    r = subprocess.run(["apt-cache", "show", "--no-all-versions", *pkgs],
                       capture_output=True, text=True)
    found = {}
    for stanza in r.stdout.split("\n\n"):
        fields, key = {}, None
        for line in stanza.splitlines():
            if line[:1] in (" ", "\t") and key:
                fields[key] += "\n" + line.strip()
            elif ":" in line:
                key, _, value = line.partition(":")
                fields[key] = value.strip()
        if "Package" in fields:
            found.setdefault(fields["Package"], fields)
    return found


def resolve_kernel_package(meta):
    """linux-image-amd64's fields -> (linux-image-<kver>-amd64, version)."""
    for alt in meta.get("Depends", "").split(","):
        first = alt.split("|")[0].strip()
        name = first.split("(")[0].strip()
        if name.startswith("linux-image-") and name != KERNEL_META:
            if "(=" in first:
                return name, first.split("(=")[1].rstrip(")").strip()
            info = apt_show(name).get(name)
            return name, info["Version"] if info else None
    fail(f"{KERNEL_META} {meta.get('Version')} depends on no linux-image-*: "
         f"{meta.get('Depends')!r}")


def cached_debs(cache, name):
    debs = glob.glob(os.path.join(cache, "debs", f"{name}_*.deb"))
    return sorted(debs, key=os.path.getmtime)


def deb_filename(name, version):
    return f"{name}_{version.replace(':', '%3a')}_"


def download(cache, name, version):
    """Return the path of name's .deb in the cache, fetching it if needed."""
    debdir = os.path.join(cache, "debs")
    os.makedirs(debdir, exist_ok=True)
    have = cached_debs(cache, name)
    if version:
        prefix = deb_filename(name, version)
        for deb in have:
            if os.path.basename(deb).startswith(prefix):
                step(f"download {name}", f"cached {os.path.basename(deb)}")
                return deb
        t0 = time.time()
        r = subprocess.run(["apt-get", "download", "-q", f"{name}={version}"],
                           cwd=debdir, capture_output=True, text=True)
        if r.returncode == 0:
            for deb in cached_debs(cache, name):
                if os.path.basename(deb).startswith(prefix):
                    size = os.path.getsize(deb) / 1e6
                    step(f"download {name}", f"fetched {os.path.basename(deb)} "
                         f"({size:.1f} MB, {time.time() - t0:.1f} s)")
                    return deb
        err = (r.stderr or r.stdout).strip().splitlines()
        msg = err[-1] if err else "no file"
    else:
        msg = "apt knows no candidate (run apt-get update?)"
    if have:
        step(f"download {name}", f"failed ({msg}); using cached "
             f"{os.path.basename(have[-1])}")
        return have[-1]
    fail(f"cannot download {name}: {msg}")


def extract(cache, deb):
    """dpkg-deb -x deb into cache/root/<package>; return that folder."""
    name = os.path.basename(deb).split("_")[0]
    root = os.path.join(cache, "root", name)
    stamp = root + ".stamp"
    if up_to_date(stamp, [deb]) and read_text(stamp) == os.path.basename(deb):
        step(f"extract {name}", "up to date")
        return root
    t0 = time.time()
    shutil.rmtree(root, ignore_errors=True)
    os.makedirs(root)
    run(["dpkg-deb", "-x", deb, root])
    with open(stamp, "w") as f:
        f.write(os.path.basename(deb))
    step(f"extract {name}", f"{os.path.basename(deb)} ({time.time() - t0:.1f} s)")
    return root


def find_one(root, patterns, what):
    for pat in patterns:
        hits = sorted(glob.glob(os.path.join(root, pat)))
        if hits:
            return hits[-1]
    fail(f"no {what} in {root} (looked for {', '.join(patterns)})")


# ---------------------------------------------------------------- modules

def modname(path):
    base = os.path.basename(path)
    return base.split(".ko")[0].replace("-", "_")


def modinfo(data):
    """{key: [values]} from the .modinfo section of a module's ELF bytes."""
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        fail("not a 64-bit little-endian ELF module")
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)

    def section(i):
        name, _type, _flags, _addr, off, size = struct.unpack_from(
            "<IIQQQQ", data, shoff + i * shentsize)
        return name, off, size

    _, stroff, _ = section(shstrndx)
    info = {}
    for i in range(shnum):
        name, off, size = section(i)
        end = data.index(b"\0", stroff + name)
        if data[stroff + name:end] == b".modinfo":
            for item in data[off:off + size].split(b"\0"):
                key, eq, value = item.decode("utf-8", "replace").partition("=")
                if eq:
                    info.setdefault(key, []).append(value)
    return info


def read_modules_dep(moddir, wanted):
    """{name: (relative path, [dependency paths])}.

    From modules.dep when the tree has one; Debian's packages don't ship it
    (depmod makes it at install time), so otherwise from each module's
    `depends=` in .modinfo, for the closure of the wanted modules only.
    """
    deps = {}
    dep_file = os.path.join(moddir, "modules.dep")
    if os.path.exists(dep_file):
        with open(dep_file) as f:
            for line in f:
                if ":" not in line:
                    continue
                mod, _, rest = line.partition(":")
                deps[modname(mod)] = (mod.strip(), rest.split())
        return deps

    paths = {}
    for top, _dirs, files in os.walk(os.path.join(moddir, "kernel")):
        for f in files:
            if ".ko" in f:
                rel = os.path.relpath(os.path.join(top, f), moddir)
                paths[modname(rel)] = rel
    todo = [w.replace("-", "_") for w in wanted]
    while todo:
        name = todo.pop()
        if name in deps or name not in paths:
            continue
        data = decompress_module(os.path.join(moddir, paths[name]))
        if data is None:
            continue
        names = [d.replace("-", "_") for v in modinfo(data).get("depends", [])
                 for d in v.split(",") if d]
        deps[name] = (paths[name], [paths[d] for d in names if d in paths])
        todo.extend(names)
    return deps


def read_builtin(moddir):
    try:
        with open(os.path.join(moddir, "modules.builtin")) as f:
            return {modname(line.strip()) for line in f if line.strip()}
    except FileNotFoundError:
        return set()


def load_order(deps, builtin, wanted):
    """Module paths in an order that insmod accepts, and wanted names not found.

    A depth-first walk that emits each module after its dependencies.
    """
    by_path = {path: name for name, (path, _) in deps.items()}
    order, seen, missing = [], set(), []

    def visit(path, chain):
        if path in seen:
            return
        if path in chain:
            fail(f"dependency cycle in modules.dep: {' -> '.join(chain + (path,))}")
        for dep in deps[by_path[path]][1]:
            if dep in by_path:
                visit(dep, chain + (path,))
        seen.add(path)
        order.append(path)

    for want in wanted:
        name = want.replace("-", "_")
        if name in deps:
            visit(deps[name][0], ())
        elif name not in builtin:
            missing.append(want)
    return order, missing


_zstd_note = []


def decompress_module(path):
    """Module bytes as plain ELF, or None if this host can't decompress it."""
    with open(path, "rb") as f:
        data = f.read()
    if path.endswith(".xz"):
        data = lzma.decompress(data)
    elif path.endswith(".gz"):
        data = gzip.decompress(data)
    elif path.endswith(".zst"):
        if not shutil.which("zstd"):
            _zstd_note.append(os.path.basename(path))
            return None
        data = run(["zstd", "-dc", path], capture_output=True).stdout
    if data[:4] != b"\x7fELF":
        fail(f"{path} does not decompress to an ELF file")
    return data


def plain_name(path):
    for ext in (".xz", ".gz", ".zst"):
        if path.endswith(ext):
            return path[: -len(ext)]
    return path


# ---------------------------------------------------------------- cpio

S_IFDIR, S_IFREG, S_IFLNK, S_IFCHR = 0o040000, 0o100000, 0o120000, 0o020000


class Cpio:
    """Writer for the newc format (the one the kernel's initramfs accepts)."""

    def __init__(self, mtime=0):
        self.buf = io.BytesIO()
        self.ino = 1
        self.mtime = int(mtime)
        self.dirs = set()

    def _entry(self, name, mode, data=b"", nlink=1, rdev=(0, 0)):
        name_b = name.encode() + b"\0"
        fields = (self.ino, mode, 0, 0, nlink, self.mtime, len(data),
                  0, 0, rdev[0], rdev[1], len(name_b), 0)
        self.ino += 1
        hdr = b"070701" + b"".join(b"%08x" % v for v in fields)
        self.buf.write(hdr + name_b)
        self.buf.write(b"\0" * (-(len(hdr) + len(name_b)) % 4))
        self.buf.write(data)
        self.buf.write(b"\0" * (-len(data) % 4))

    def dir(self, path, mode=0o755):
        path = path.strip("/")
        if not path or path in self.dirs:
            return
        self.dir(os.path.dirname(path))
        self.dirs.add(path)
        self._entry(path, S_IFDIR | mode, nlink=2)

    def file(self, path, data, mode=0o644):
        path = path.strip("/")
        self.dir(os.path.dirname(path))
        self._entry(path, S_IFREG | mode, data)

    def symlink(self, path, target):
        path = path.strip("/")
        self.dir(os.path.dirname(path))
        self._entry(path, S_IFLNK | 0o777, target.encode())

    def chardev(self, path, major, minor, mode=0o600):
        path = path.strip("/")
        self.dir(os.path.dirname(path))
        self._entry(path, S_IFCHR | mode, rdev=(major, minor))

    def finish(self):
        self._entry("TRAILER!!!", 0, nlink=1)
        self.buf.write(b"\0" * (-self.buf.tell() % 512))
        return self.buf.getvalue()


def write_cpio(path, files, mtime=0):
    """Write a gzip'd newc archive of {guest path: (bytes, mode)}, e.g. to append
    a script to the initramfs for stubdm.runfile."""
    c = Cpio(mtime)
    for name in sorted(files):
        data, mode = files[name]
        c.file(name, data, mode)
    with open(path, "wb") as f:
        f.write(gzip.compress(c.finish(), 6, mtime=0))


def busybox_applets(busybox):
    """Applet paths ('bin/ls', ...) from the busybox binary, or None."""
    try:
        r = subprocess.run([busybox, "--list-full"], capture_output=True,
                           text=True, timeout=30)
    except OSError:
        return None
    if r.returncode != 0:
        return None
    return [line.strip() for line in r.stdout.splitlines() if line.strip()]


def build_initramfs(out_path, busybox, moddir, kver, modules, stamp_time, on_demand=()):
    deps = read_modules_dep(moddir, list(modules) + list(on_demand))
    builtin = read_builtin(moddir)
    order, missing = load_order(deps, builtin, list(modules) + list(on_demand))
    at_boot = set(load_order(deps, builtin, modules)[0])
    for want in missing:
        print(f"  warning: module {want} is in the kernel package neither as a module "
              "nor built in")

    c = Cpio(stamp_time)
    for d in ("bin", "sbin", "usr/bin", "usr/sbin", "proc", "sys", "dev",
              "run", "root", "etc/stubdm", "lib/modules/" + kver):
        c.dir(d)
    c.dir("tmp", 0o1777)
    # The kernel opens /dev/console for init before devtmpfs is mounted.
    c.chardev("dev/console", 5, 1)

    with open(busybox, "rb") as f:
        c.file("bin/busybox", f.read(), 0o755)
    applets = busybox_applets(busybox)
    if applets is None:
        print("  note: could not run busybox --list-full here; "
              "/init runs busybox --install -s at boot")
        c.symlink("bin/sh", "busybox")
    else:
        for applet in applets:
            if applet in ("bin/busybox", "init", "linuxrc"):
                continue
            depth = applet.count("/")
            c.symlink(applet, "../" * depth + "bin/busybox")

    loaded, skipped = [], []
    new_dep = []
    for rel in order:
        data = decompress_module(os.path.join(moddir, rel))
        if data is None:
            skipped.append(rel)
            continue
        plain = plain_name(rel)
        c.file(f"lib/modules/{kver}/{plain}", data)
        if rel in at_boot:
            loaded.append(plain)
        dep_plain = [plain_name(d) for d in deps[modname(rel)][1]]
        new_dep.append(f"{plain}: {' '.join(dep_plain)}".rstrip())
    if skipped:
        print(f"  note: no zstd binary on this host; left out {len(skipped)} "
              f".ko.zst modules: {' '.join(_zstd_note)}")
    # A modules.dep over the included modules only, so busybox modprobe works.
    c.file(f"lib/modules/{kver}/modules.dep", ("\n".join(new_dep) + "\n").encode())
    c.file(MODULES_LOAD, ("\n".join(loaded) + "\n").encode())
    c.file("etc/profile", PROFILE.encode())
    c.file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n")
    c.file("etc/group", b"root:x:0:\n")
    c.file("init", INIT_SCRIPT.encode(), 0o755)

    raw = c.finish()
    tmp = out_path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(gzip.compress(raw, 6, mtime=0))
    os.replace(tmp, out_path)
    return loaded, len(raw)


# ---------------------------------------------------------------- main

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join(REPO, "build", "guest"),
                    help="output folder (default build/guest)")
    ap.add_argument("--cache", default=os.path.join(REPO, "build", "cache"),
                    help="download and unpack folder (default build/cache)")
    ap.add_argument("--module", action="append", default=[],
                    help="load this module too (with its dependencies)")
    ap.add_argument("--force", action="store_true", help="rebuild the outputs")
    args = ap.parse_args()
    out = os.path.abspath(args.out)
    cache = os.path.abspath(args.cache)
    os.makedirs(out, exist_ok=True)

    known = apt_show(KERNEL_META, BUSYBOX_PKG)
    if KERNEL_META not in known:
        have = [d for d in cached_debs(cache, "linux-image-*")
                if "linux-image-amd64_" not in d]
        if not have:
            fail(f"apt knows no {KERNEL_META}; run apt-get update")
        kpkg, kversion = os.path.basename(have[-1]).split("_")[0], None
        step("resolve", f"{KERNEL_META} unknown to apt; using cached {kpkg}")
    else:
        kpkg, kversion = resolve_kernel_package(known[KERNEL_META])
        step("resolve", f"{KERNEL_META} -> {kpkg} {kversion}")
    bb = known.get(BUSYBOX_PKG)

    kdeb = download(cache, kpkg, kversion)
    bdeb = download(cache, BUSYBOX_PKG, bb["Version"] if bb else None)
    kroot = extract(cache, kdeb)
    broot = extract(cache, bdeb)
    kstamp = os.path.join(cache, "root", kpkg + ".stamp")
    bstamp = os.path.join(cache, "root", BUSYBOX_PKG + ".stamp")

    vmlinuz_src = find_one(kroot, ["boot/vmlinuz-*"], "kernel image")
    kver = os.path.basename(vmlinuz_src)[len("vmlinuz-"):]
    moddir = find_one(kroot, [f"lib/modules/{kver}", f"usr/lib/modules/{kver}"],
                      "module folder")
    busybox = find_one(broot, ["bin/busybox", "usr/bin/busybox"], "busybox")

    vmlinuz = os.path.join(out, "vmlinuz")
    if not args.force and up_to_date(vmlinuz, [kstamp]):
        step("vmlinuz", f"up to date ({kver})")
    else:
        shutil.copyfile(vmlinuz_src, vmlinuz + ".tmp")
        os.replace(vmlinuz + ".tmp", vmlinuz)
        step("vmlinuz", f"{kver} ({os.path.getsize(vmlinuz) / 1e6:.1f} MB)")

    initrd = os.path.join(out, "initramfs.cpio.gz")
    modules = list(MODULES) + args.module
    inputs = [kstamp, bstamp, os.path.abspath(__file__)]
    # The module list is part of the input: remember it beside the output.
    listfile = initrd + ".modules"
    wanted = " ".join(modules) + " on-demand: " + " ".join(MODULES_ON_DEMAND) + "\n"
    if read_text(listfile) != wanted:
        with open(listfile, "w") as f:
            f.write(wanted)
    inputs.append(listfile)
    if not args.force and up_to_date(initrd, inputs):
        step("initramfs", f"up to date ({os.path.getsize(initrd) / 1e6:.1f} MB)")
    else:
        t0 = time.time()
        loaded, raw = build_initramfs(initrd, busybox, moddir, kver, modules,
                                      os.path.getmtime(kdeb), MODULES_ON_DEMAND)
        step("initramfs", f"{len(loaded)} modules, {raw / 1e6:.1f} MB raw, "
             f"{os.path.getsize(initrd) / 1e6:.1f} MB gzip ({time.time() - t0:.1f} s)")


if __name__ == "__main__":
    main()
