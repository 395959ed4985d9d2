"""Save and restore a running scripted-guest machine (stubdm-sim save / restore).

What a save holds, and where each part comes from:
- guest RAM: host_sim's own memory of the domain (the hypervisor's part, as Xen's
  save stream carries the pages itself);
- what Xen emulates (the 0xcf8 latch, the PM1a event block and ACPI port location):
  host_sim's too;
- the device model's state: asked for over the older xenstore command protocol, as a
  MiniOS-era toolstack does: `save` written to device-model/<guest>/command under the
  stub domain's home; the device model drains its disks, writes its device state
  stream (stubdm/savestate.py) to its save stream (-save-stream, a stub domain's
  console 1) and answers `paused` in device-model/<guest>/state; `continue` resumes.
- the machine's configuration (the device model's arguments, RAM size), so that the
  restore builds the same machine. Disk images are not in the file: as with Xen, the
  disks stay where they are (the restored machine opens the same images).

A restore starts a fresh device model (any runtime) with `-incoming file:` on the
device state: it refuses to start the guest unless the whole stream reads back; then
the RAM and host_sim's part are put back before the guest's next access.

The file is itself a savestate stream (versioned records, CRC-32): records sim/config,
sim/platform, sim/ram, sim/populated (the video RAM the device model populated), dm.
"""
import os
import sys
import time
import zlib

from host_sim import scripted
from stubdm import savestate

PAGE = 4096
FILE_VERSION = 1
_ZERO = bytes(PAGE)
_ZERO_CHUNK = bytes(64 * PAGE)


class SaveError(scripted.SimError):
    pass


def start(dm_args=(), ram_mib=64, runtime="cpython", **kw):
    """A scripted session whose device model answers the command protocol's save."""
    rundir = kw.pop("rundir", None) or os.environ.get("TMPDIR", "/tmp")
    stream = os.path.join(rundir, "stubdm-save-%d-%d" % (os.getpid(), time.monotonic_ns()))
    s = scripted.Session(dm_args=list(dm_args) + ["-save-stream", stream], ram_mib=ram_mib,
                         runtime=runtime, xenstore=True, **kw)
    s.save_stream = stream
    s.saved_config = (list(dm_args), ram_mib)
    return s


def _dm_dir(s):
    return "/local/domain/%d/device-model/%d" % (s.stubdom_domid, s.hv.domid)


def _dm_state(s):
    from host_sim.xs import XsError

    try:
        return s.xs.read(_dm_dir(s) + "/state").decode()
    except XsError:
        return None


def command(s, cmd, want, timeout=30):
    """Write cmd to the device model's command key; wait for state in want."""
    s.xs.write(_dm_dir(s) + "/state", "")
    s.xs.write(_dm_dir(s) + "/command", cmd)
    # The answer comes through xenstored, not the hypervisor's socket that pump() polls:
    # look often (pump_until would look every 200 ms).
    deadline = time.monotonic() + timeout
    while _dm_state(s) not in want:
        if time.monotonic() > deadline or not s.hv.alive():
            s.hv.pump_until(lambda: _dm_state(s) in want,
                            "the device model's answer to %r" % cmd, timeout=0.2)
            break
        s.hv.pump(0.002)
    return _dm_state(s)


def _ram_pages(hv):
    """(bitmap of non-zero pages, their bytes) of the guest's RAM."""
    ram = hv.ram
    n = hv.ram_size // PAGE
    bitmap = bytearray((n + 7) // 8)
    out = []
    step = len(_ZERO_CHUNK) // PAGE
    for c in range(0, n, step):
        chunk = ram[c * PAGE:(c + step) * PAGE]  # bytes: compared at memcmp speed
        if chunk == _ZERO_CHUNK[:len(chunk)]:
            continue
        for j in range(len(chunk) // PAGE):
            page = chunk[j * PAGE:(j + 1) * PAGE]
            if page != _ZERO:
                i = c + j
                bitmap[i >> 3] |= 1 << (i & 7)
                out.append(page)
    return bytes(bitmap), b"".join(out)


def _populated_pages(hv):
    """The pages the device model populated beyond RAM (the VGA's video RAM), non-zero
    ones only: they are guest memory, as Xen's save stream carries them."""
    gfns, pages = [], []
    for gfn in sorted(hv.populated):
        mem = hv.guest_memory(gfn * PAGE, PAGE)
        if mem is not None and bytes(mem) != _ZERO:
            gfns.append(gfn)
            pages.append(bytes(mem))
    return {"gfns": gfns, "pages": zlib.compress(b"".join(pages), 1)}


def save(s, path, resume=True):
    """Save session s (a start() session) to path; the guest continues afterwards when
    resume. Returns figures: dict of seconds and bytes."""
    if s.hv.ram is None:
        raise SaveError("save: only a scripted guest's RAM is host_sim's to save")
    t0 = time.perf_counter()
    try:
        os.unlink(s.save_stream)
    except OSError:
        pass
    st = command(s, "save", ("paused", "error"))
    t_dm = time.perf_counter() - t0
    if st != "paused":
        raise SaveError("save: the device model could not save its state (it said: %s)"
                        % _last_words(s))
    with open(s.save_stream, "rb") as f:
        dm = f.read()
    os.unlink(s.save_stream)  # the device model's console 1: read, nothing left behind
    bitmap, pages = _ram_pages(s.hv)
    g = s.guest
    em = g.emulated
    dm_args, ram_mib = s.saved_config
    records = [
        ("sim/config", FILE_VERSION, {"dm_args": dm_args, "ram_mib": ram_mib}),
        ("sim/platform", FILE_VERSION, {
            "cf8": g.cf8, "amd_cf8_ext": g.amd_cf8_ext, "acpi_location": em.acpi_location,
            "pm1a_sts": em.pm1a_sts, "pm1a_en": em.pm1a_en,
            "debug_console": bytes(em.debug_console),
            "regs": [[k[0], k[1], v] for k, v in sorted(em.regs.items())]}),
        ("sim/ram", FILE_VERSION, {"size": s.hv.ram_size, "bitmap": bitmap,
                                   "pages": zlib.compress(pages, 1)}),
        ("sim/populated", FILE_VERSION, _populated_pages(s.hv)),
        ("dm", FILE_VERSION, {"state": dm}),
    ]
    data = savestate.write_records(records)
    with open(path, "wb") as f:
        f.write(data)
    t_all = time.perf_counter() - t0
    if resume:
        command(s, "continue", ("running",))
    return {"dm_seconds": t_dm, "seconds": t_all, "dm_bytes": len(dm), "bytes": len(data),
            "ram_pages": len(pages) // PAGE}


def _last_words(s):
    lines = [ln for ln in s.dm_messages().splitlines() if "save" in ln]
    return lines[-1] if lines else "nothing"


def read(path):
    """The file's records as a dict, or SaveError saying why it can't be restored."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise SaveError("restore: can't read %s: %s" % (path, e))
    try:
        recs = savestate.read_records(data)
    except savestate.StateError as e:
        raise SaveError("restore: %s: %s" % (path, e))
    out = {}
    for name, version, fields in recs:
        if version > FILE_VERSION:
            raise SaveError("restore: %s: record %s is version %d, newer than this "
                            "host_sim's (%d)" % (path, name, version, FILE_VERSION))
        out[name] = fields
    for name in ("sim/config", "sim/platform", "sim/ram", "dm"):
        if name not in out:
            raise SaveError("restore: %s has no %s record: not a saved machine" % (path, name))
    return out


def restore(path, runtime="cpython", libxl=False, **kw):
    """A new session running the machine saved in path (on any runtime): the guest
    continues where it was. SaveError if the file can't be fully read; the device
    model's refusal (DeviceModelGone) if it can't take the device state.
    libxl: start the device model as libxl restores a stub domain's: its arguments in
    dm-argv with -incoming $STUBDOM_RESTORE_INCOMING_ARG, the state on its console 2
    (-restore-stream here); else with -incoming file: on its command line."""
    recs = read(path)
    cfg = recs["sim/config"]
    ram = recs["sim/ram"]
    try:
        dm_args = [str(a) for a in cfg["dm_args"]]
        ram_mib = int(cfg["ram_mib"])
        size = int(ram["size"])
        bitmap = bytes(ram["bitmap"])
        pages = zlib.decompress(bytes(ram["pages"]))
    except (KeyError, TypeError, ValueError, zlib.error) as e:
        raise SaveError("restore: %s: malformed record: %s" % (path, e))
    n = size // PAGE
    if size != ram_mib << 20 or len(bitmap) != (n + 7) // 8:
        raise SaveError("restore: %s: RAM record does not match its configuration" % path)
    count = sum(bin(b).count("1") for b in bitmap)
    if count * PAGE != len(pages):
        raise SaveError("restore: %s: RAM record holds %d bytes for %d pages"
                        % (path, len(pages), count))
    rundir = kw.get("rundir") or os.environ.get("TMPDIR", "/tmp")
    blob = os.path.join(rundir, "stubdm-restore-%d-%d" % (os.getpid(), time.monotonic_ns()))
    with open(blob, "wb") as f:
        f.write(bytes(recs["dm"]["state"]))
    try:
        if libxl:
            from stubdm.control import INCOMING_CONSOLE

            argv = ["-xen-domid", "1", "-m", str(ram_mib)] + dm_args + ["-incoming",
                                                                      INCOMING_CONSOLE]
            s = start(["-restore-stream", blob], ram_mib, runtime, dm_argv=argv, **kw)
        else:
            s = start(dm_args + ["-incoming", "file:" + blob], ram_mib, runtime, **kw)
    finally:
        os.unlink(blob)
    s.saved_config = (dm_args, ram_mib)
    # The device model reads no guest RAM before the guest's next access: put it back.
    mv = memoryview(s.hv.ram)
    j = 0
    for i in range(n):
        if bitmap[i >> 3] & (1 << (i & 7)):
            mv[i * PAGE:(i + 1) * PAGE] = pages[j * PAGE:(j + 1) * PAGE]
            j += 1
    pop = recs.get("sim/populated", {"gfns": [], "pages": zlib.compress(b"")})
    try:
        gfns = [int(x) for x in pop["gfns"]]
        data = zlib.decompress(bytes(pop["pages"]))
    except (KeyError, TypeError, ValueError, zlib.error) as e:
        s.close()
        raise SaveError("restore: %s: malformed populated pages: %s" % (path, e))
    if len(data) != len(gfns) * PAGE:
        s.close()
        raise SaveError("restore: %s: populated pages record is inconsistent" % path)
    for i in range(len(gfns)):
        mem = s.hv.guest_memory(gfns[i] * PAGE, PAGE) if gfns[i] in s.hv.populated else None
        if mem is None:
            s.close()
            raise SaveError("restore: %s: gfn %#x was populated when saved, not now (another "
                            "machine?)" % (path, gfns[i]))
        mem[:] = data[i * PAGE:(i + 1) * PAGE]
    p = recs["sim/platform"]
    g = s.guest
    em = g.emulated
    g.cf8 = int(p["cf8"]) & 0xFFFFFFFF
    g.amd_cf8_ext = bool(p["amd_cf8_ext"])
    em.acpi_location = 1 if p["acpi_location"] else 0
    em.pm1a_sts = int(p["pm1a_sts"]) & 0xFFFF
    em.pm1a_en = int(p["pm1a_en"]) & 0xFFFF
    em.debug_console = bytearray(p["debug_console"])
    em.regs = dict(((k0, k1), v) for k0, k1, v in p["regs"])
    s.hv.pump(0)  # the interrupt levels the restored devices drive
    return s


# ---- stubdm-sim save / restore -------------------------------------------------

# The demonstration guest: PCI BARs moved, bytes in COM1's receive FIFO (loopback), a
# key in the i8042's queue, an IDE disk written, a PIO read left half-way.
DEMO_DISK_SECTORS = 2048


def _demo_args(disk):
    return ["-device", "pci-serial", "-drive",
            "file=%s,if=ide,index=0,media=disk,format=raw,cache=writeback" % disk]


def _stubdm_only(args):
    if getattr(args, "dm", "stubdm") != "stubdm":
        print("stubdm-sim: save/restore: stubdm's device state only (qemu-xen saves through "
              "QMP's xen-save-devices-state, which host_sim does not drive)", file=sys.stderr)
        return True
    return False


def cmd_save(args):
    if _stubdm_only(args):
        return 2
    disk = os.path.abspath(args.disk)
    if not os.path.exists(disk):
        with open(disk, "wb") as f:
            f.truncate(DEMO_DISK_SECTORS * 512)
    s = start(_demo_args(disk), runtime=args.dm_runtime)
    with s:
        demo = Demo(s.guest)
        demo.first_half()
        fig = save(s, args.file, resume=False)
        print("saved to %s: %d bytes (device state %d bytes, %d RAM pages) in %.1f ms "
              "(device model %.1f ms, %s)" % (args.file, fig["bytes"], fig["dm_bytes"],
                                             fig["ram_pages"], fig["seconds"] * 1e3,
                                             fig["dm_seconds"] * 1e3, args.dm_runtime))
    return 0


def cmd_restore(args):
    if _stubdm_only(args):
        return 2
    try:
        s = restore(args.file, runtime=args.dm_runtime)
    except SaveError as e:
        print("stubdm-sim: %s" % e, file=sys.stderr)
        return 1
    with s:
        demo = Demo(s.guest)
        print("restored on %s; the guest continues:" % args.dm_runtime)
        for line in demo.second_half():
            print("  " + line)
    return 0


class Demo:
    """The demonstration guest, in two halves either side of a save."""

    COM1 = 0x3F8
    MSG = b"in the FIFO 16B!"
    RAM_AT = 0x100000
    RAM_TEXT = b"a page of guest RAM, written before the save"

    def __init__(self, g):
        self.g = g

    def first_half(self):
        g = self.g
        g.memwrite(self.RAM_AT, self.RAM_TEXT)
        # COM1 in loopback with its FIFO on: what it sends waits in its receive FIFO.
        g.outb(self.COM1 + 2, 0x07)
        g.outb(self.COM1 + 4, 0x10)
        for b in self.MSG:
            g.outb(self.COM1, b)
        # The pci-serial's BAR moved where the guest wants it.
        g.pci_write(4, 0, 0x10, 0xD100)
        g.pci_write(4, 0, 0x04, 0x0001, 2)
        # A keyboard command whose answer waits in the i8042's queue.
        g.outb(0x60, 0xF2)  # identify keyboard: ACK, 0xAB, 0x83
        # The disk: a PIO write of a sector, then a read left half-way.
        io = 0x1F0
        g.pci_write(1, 1, 0x40, 0x80008000)
        g.outb(io + 6, 0xE0)
        g.outb(io + 2, 1)
        g.outb(io + 3, 7)
        g.outb(io + 4, 0)
        g.outb(io + 5, 0)
        g.outb(io + 7, 0x30)  # WRITE SECTORS
        for i in range(256):
            g.outw(io, (0x5A00 + i) & 0xFFFF)
        g.inb(io + 7)
        g.outb(io + 2, 1)
        g.outb(io + 3, 7)
        g.outb(io + 7, 0x20)  # READ SECTORS
        self.first_words = [g.inw(io) for _ in range(100)]

    def second_half(self):
        g = self.g
        out = ["guest RAM at %#x: %r" % (self.RAM_AT, g.memread(self.RAM_AT,
                                                               len(self.RAM_TEXT)))]
        got = bytes(g.inb(self.COM1) for _ in range(len(self.MSG)))
        out.append("COM1 receive FIFO: %r" % got)
        out.append("pci-serial BAR0 at %#x, its LSR %#04x"
                   % (g.pci_read(4, 0, 0x10) & ~3, g.inb(0xD105)))
        out.append("i8042 queue: %s" % " ".join("%02x" % g.inb(0x60) for _ in range(3)))
        words = [g.inw(0x1F0) for _ in range(156)]
        out.append("rest of the sector read: %s ... status %#04x"
                   % (" ".join("%04x" % w for w in words[:4]), g.inb(0x1F7)))
        return out


def add_command(sub, common):
    h = ("The scripted demonstration guest (COM1 loopback bytes in its FIFO, a pci-serial "
         "BAR moved, an i8042 answer queued, an IDE disk written and a read half-way) is "
         "run to a point and saved: guest RAM and host_sim's emulated state from host_sim, "
         "the device model's state over the xenstore command protocol (save -> paused; "
         "stubdm writes its device state stream to -save-stream). restore starts a fresh "
         "device model, on any --dm-runtime, with -incoming file: (it refuses a stream it "
         "can't fully read, and the guest is not started), puts RAM back and the guest "
         "continues. Disk images are not in the file: they stay where they are.")
    sp = sub.add_parser("save", parents=[common], help="save a running scripted guest",
                        description=h)
    sp.add_argument("file", metavar="FILE")
    sp.add_argument("--disk", default="stubdm-demo-disk.img",
                    help="the demonstration guest's IDE disk image (made if missing; "
                    "restore opens the same path)")
    sp.set_defaults(func=cmd_save)
    rp = sub.add_parser("restore", parents=[common], help="continue a saved scripted guest",
                        description=h)
    rp.add_argument("file", metavar="FILE")
    rp.set_defaults(func=cmd_restore)
