# The device model's entry point: parse the QEMU-style arguments libxl
# gives a device model, set up the ioreq server, and run the event loop.
import sys

from stubdm import abi, layout, log
from stubdm.compat import ticks_add, ticks_diff, ticks_us

# Four character times at 9600 baud, about what a 16550 waits before it
# raises the RX character timeout.
RX_TIMEOUT_MS = 4

# How long one turn of the event loop goes on taking delivered ports before
# its timers, xenstore and QMP run (e1000's interrupt timer counts in 250 us).
BURST_US = 500

# MicroPython's GC heap, measured for the exit stats (heap_peak=, the most
# live heap seen: sampled after a collection when idle, and every
# HEAP_SAMPLE_US while busy). A collection of the device model's heap takes
# about a millisecond: one per 1000 events was 1.2 us per ioreq (bench pio).
# CPython reports nothing here.
HEAP_SAMPLE_US = 200000

# What the loop looks at without an event of its own (QMP's ring, for a
# notification lost or late; libxenstore's watch queue, for a lost
# connection) is looked at each idle turn and at most every SLOW_CHORES_US
# while ports keep arriving: on MicroPython it was a fifth of a turn's
# work after each access.
SLOW_CHORES_US = 1000
try:
    import gc as _gc

    _mem_alloc = _gc.mem_alloc
    _mem_free = _gc.mem_free
except (ImportError, AttributeError):  # CPython
    _gc = None
    _mem_alloc = None

USAGE = """usage: stubdm -xen-domid N [options]

Options (QEMU's spelling, as libxl passes them in dm-argv):
  -xen-domid N        guest domain to serve (required)
  -m MiB              guest RAM size (default 128)
  -smp N              number of vCPUs (default 1)
  -serial DEV         back end of the next serial port (COM1, then each
                      pci-serial): stdio, null, file:PATH, /dev/hvcN (default:
                      COM1 on stdio)
  -device pci-serial[,addr=SLOT]
                      a 16550 behind PCI function 1b36:0002 (slots 0-3 are
                      the xenfv machine's; default: the first free from 4)
  -drive file=PATH,if=ide,index=N,media=disk|cdrom[,format=raw|host_device]
         [,cache=MODE][,readonly=on]
                      an IDE drive (N 0-3: channel N/2, unit N%2), as libxl writes it
  -drive if=none,id=ID[,file=PATH,readonly=on]
  -device ide-cd|ide-hd,drive=ID,bus=ide.0|ide.1[,unit=0|1]
                      a drive placed by -device (libxl's CD-ROMs)
  -device ahci,id=ID[,addr=SLOT]
                      an ICH9 AHCI controller (8086:2922) with six SATA ports
  -device ide-hd|ide-cd,bus=ID.N,unit=0,drive=DRIVE
                      the -drive if=none,id=DRIVE on AHCI port N (libxl's hdtype=ahci)
  -ide-native         the PIIX3 IDE function in PCI native mode (BARs 0-4, INTA)
                      instead of the ISA ports: for host_sim's QEMU engine
  -device rtl8139|e1000,id=nicD,netdev=netD,mac=XX:XX:XX:XX:XX:XX[,addr=SLOT]
                      an RTL8139C+ or an 82540EM on the -netdev with that id
  -netdev type=tap,id=netD,ifname=...,script=no,downscript=no
                      a NIC's network (a stub domain's: its PV NIC to dom0)
  -net none           no NICs (what libxl writes then)
  -nodefaults         no default serial port (COM1 on stdio), as QEMU: a -serial
                      still makes COM1; the i8042, port 0x92, the platform ports
                      and the chipset stay (xenfv has them whatever it is told)
  -no-timers          device timers never fire (lock-step comparisons with
                      QEMU's qtest, whose virtual clock stands still)
  -incoming file:PATH start from the device state saved in PATH (refused, and the
                      guest not started, unless all of it reads back)
  -incoming $STUBDOM_RESTORE_INCOMING_ARG
                      the same from the restore stream (a stub domain's console 2)
  -restore-stream PATH
                      where that stream is off MiniOS
  -save-stream PATH   where the xenstore command "save" writes the device state
                      (a stub domain's console 1; default /var/lib/xen/qemu-save.N)
  -d LEVEL            log verbosity: 0 quiet, 1 guest errors (default), 2 debug
  -h, --help          this text

Exit status: 0 when the guest shut down or rebooted, 1 on a hypervisor
error, 2 on bad arguments.
"""


class ArgError(Exception):
    pass


NIC_MODELS = ("rtl8139", "e1000")


def _props(spec, what):
    """QEMU's key=value,... (',,' is a literal comma)."""
    parts = spec.replace(",,", "\x00").split(",")
    out = []
    for p in parts:
        p = p.replace("\x00", ",")
        k, eq, v = p.partition("=")
        if not eq:
            raise ArgError("%s: %r is not key=value" % (what, p))
        out.append((k, v))
    return out


def parse_mac(v, what):
    parts = v.split(":")
    if len(parts) != 6:
        raise ArgError(what + ": MAC must be six hex bytes: " + v)
    try:
        b = bytes([int(x, 16) for x in parts])
    except ValueError:
        raise ArgError(what + ": MAC must be six hex bytes: " + v)
    for x in parts:
        if len(x) != 2:
            raise ArgError(what + ": MAC must be six hex bytes: " + v)
    if b[0] & 1:
        raise ArgError(what + ": a multicast MAC can't be a NIC's: " + v)
    return b


def parse_nic(spec):
    """-device rtl8139|e1000,id=nicD,netdev=netD,mac=XX:..[,addr=SLOT] (libxl's form)."""
    model, _, rest = spec.partition(",")
    what = "-device " + model
    nic = {"model": model, "id": None, "netdev": None, "mac": None, "slot": 0}
    for k, v in _props(rest, what) if rest else ():
        if k == "id":
            nic["id"] = v
        elif k == "netdev":
            nic["netdev"] = v
        elif k == "mac":
            nic["mac"] = parse_mac(v, what)
        elif k == "addr":
            try:
                slot = int(v.split(".")[0], 16 if "." in v or v.startswith("0x") else 0)
            except ValueError:
                raise ArgError(what + ": addr: not a slot: " + v)
            if not 0 < slot < layout.NUM_SLOTS:
                raise ArgError("%s,addr=%s: PCI slot %d is %s" % (
                    what, v, slot, "taken by " + layout.slot_holder(0) if slot == 0
                    else "not on bus 0"))
            nic["slot"] = slot
        elif k in ("romfile", "bootindex"):
            pass  # option ROMs and boot order are the firmware's business here
        else:
            raise ArgError(what + ": unknown property " + k)
    if nic["netdev"] is None:
        raise ArgError(what + ": needs netdev=ID")
    return nic


def parse_netdev(spec):
    """-netdev type=tap,id=netD,ifname=...,br=...,script=no,downscript=no (libxl's
    form; QEMU's positional 'tap,id=...' too)."""
    first, _, rest = spec.partition(",")
    nd = {}
    if "=" not in first:
        nd["type"] = first
        props = _props(rest, "-netdev") if rest else []
    else:
        props = _props(spec, "-netdev")
    for k, v in props:
        nd[k] = v
    if nd.get("type") not in ("tap", "bridge", "user"):
        raise ArgError("-netdev: type must be tap (as libxl writes it), not %r" % nd.get("type"))
    if not nd.get("id"):
        raise ArgError("-netdev: needs id=ID")
    for k in ("script", "downscript"):
        if nd.get(k, "no") != "no":
            # A stub domain runs no scripts: dom0's hotplug scripts set up the vif.
            raise ArgError("-netdev %s: %s=%s: the device model runs no scripts"
                           % (nd["id"], k, nd[k]))
    return nd


def check_nics(opts):
    used = {}
    for nic in opts["nics"]:
        if nic["netdev"] not in opts["netdevs"]:
            raise ArgError("-device %s: netdev %s is not defined by a -netdev"
                           % (nic["model"], nic["netdev"]))
        if nic["netdev"] in used:
            raise ArgError("-device %s: netdev %s is already %s's" % (
                nic["model"], nic["netdev"], used[nic["netdev"]]))
        used[nic["netdev"]] = nic["id"] or nic["model"]
    try:
        layout.place([("pci-serial", n) for n in opts["pci_serial"]]
                     + [(n["model"], n["slot"]) for n in opts["nics"]])
    except layout.SlotError as e:
        raise ArgError("-device " + str(e))


def parse_args(argv):
    opts = {"domid": None, "ram_mib": 128, "vcpus": 1, "serial": [], "pci_serial": [],
            "defaults": True, "verbose": 1, "timers": True, "ide": [], "ide_native": False,
            "nics": [], "netdevs": {}, "ahci": None, "ahci_drives": []}
    opts["vga"] = None  # video RAM MiB of the standard VGA (-device VGA), or None
    opts["vga_dump"] = None
    from stubdm.driveargs import DriveArgError, DriveArgs

    drive_args = DriveArgs()
    i = 0

    def value():
        if i + 1 >= len(argv):
            raise ArgError(argv[i] + " needs a value")
        return argv[i + 1]

    def number(v, lo, hi, what):
        try:
            n = int(v, 0)
        except ValueError:
            raise ArgError(what + ": not a number: " + v)
        if n < lo or n > hi:
            raise ArgError("%s must be %d..%d" % (what, lo, hi))
        return n

    while i < len(argv):
        a = argv[i]
        if a in ("-h", "--help", "-help"):
            raise ArgError("")
        if a == "-xen-domid":
            opts["domid"] = number(value(), 1, 0x7FEF, "-xen-domid")
            i += 2
        elif a == "-m":
            v = value()
            if v.endswith("M"):
                v = v[:-1]
            opts["ram_mib"] = number(v, 1, 1 << 20, "-m")
            i += 2
        elif a == "-smp":
            opts["vcpus"] = number(value().split(",")[0], 1, 128, "-smp")
            i += 2
        elif a == "-serial":
            v = value()
            if v not in ("stdio", "null") and not v.startswith("file:") \
                    and not v.startswith("/dev/hvc"):
                raise ArgError("-serial: unknown back end " + v)
            opts["serial"].append(v)
            i += 2
        elif a == "-device" and value().split(",")[0] == "ahci":
            opts["ahci"] = parse_ahci(value(), opts["ahci"])
            i += 2
        elif a == "-device" and ahci_bus(value(), opts["ahci"]) is not None:
            opts["ahci_drives"].append(parse_ahci_drive(value(), opts["ahci"]))
            i += 2
        elif a == "-drive" or (a == "-device" and value().split(",")[0] in ("ide-cd", "ide-hd")):
            try:
                if a == "-drive":
                    drive_args.drive(value())
                else:
                    drive_args.device(value().split(",")[0], value())
            except DriveArgError as e:
                raise ArgError(str(e))
            i += 2
        elif a == "-device" and value().split(",")[0] == "VGA":
            opts["vga"] = parse_vga(value())
            i += 2
        elif a == "-vga":
            # The older spelling (libxl's qemu-traditional args): std, none, cirrus.
            v = value()
            if v == "std":
                opts["vga"] = VGA_DEFAULT_MB
            elif v == "cirrus":
                from stubdm import control

                try:
                    control.device_option("cirrus-vga", v)
                except control.ControlError as e:
                    raise ArgError(str(e))
            elif v != "none":
                raise ArgError("-vga %s: only std (the standard VGA) or none" % v)
            i += 2
        elif a == "-vga-dump":
            opts["vga_dump"] = value()  # tests: the rendered frame, to a file
            i += 2
        elif a == "-device" and value().split(",")[0] in NIC_MODELS:
            opts["nics"].append(parse_nic(value()))
            i += 2
        elif a == "-netdev":
            nd = parse_netdev(value())
            if nd["id"] in opts["netdevs"]:
                raise ArgError("-netdev: id %s used twice" % nd["id"])
            opts["netdevs"][nd["id"]] = nd
            i += 2
        elif a == "-net":
            if value() != "none":  # libxl writes -net none for a guest without NICs
                raise ArgError("-net: only 'none' (NICs are -device with -netdev)")
            i += 2
        elif a == "-ide-native":
            opts["ide_native"] = True
            i += 1
        elif a == "-device":
            parts = value().split(",")
            if parts[0] != "pci-serial":
                from stubdm import control

                try:
                    taken = control.device_option(parts[0], value())
                except control.ControlError as e:
                    raise ArgError(str(e))
                if not taken:
                    raise ArgError("-device: unknown device " + parts[0])
                i += 2
                continue
            slot = 0
            for p in parts[1:]:
                if p.startswith("addr="):
                    slot = number(p[5:].split(".")[0], 0, 31, "pci-serial addr")
                    if slot == 0:  # addr=0 means slot 0, not "any" (QEMU's addr)
                        raise ArgError("-device pci-serial,addr=0: PCI slot 0 is taken by "
                                       + layout.slot_holder(0))
                else:
                    raise ArgError("-device pci-serial: unknown property " + p)
            opts["pci_serial"].append(slot)
            try:
                layout.place([("pci-serial", n) for n in opts["pci_serial"]])
            except layout.SlotError as e:
                raise ArgError("-device " + str(e))
            i += 2
        elif a == "-nodefaults":
            opts["defaults"] = False
            i += 1
        elif a == "-no-timers":
            opts["timers"] = False
            i += 1
        elif a == "-save-stream":
            opts["save_stream"] = value()
            i += 2
        elif a == "-restore-stream":
            opts["restore_stream"] = value()
            i += 2
        elif a == "-d":
            opts["verbose"] = number(value(), 0, 2, "-d")
            i += 2
        else:
            from stubdm import control

            try:
                n = control.toolstack_option(argv, i, opts)
            except control.ControlError as e:
                raise ArgError(str(e))
            if not n:
                raise ArgError("unknown option " + a)
            i += n
    if opts["domid"] is None:
        raise ArgError("-xen-domid is required")
    check_nics(opts)
    opts["ahci_drives"] = resolve_ahci_drives(opts["ahci_drives"], drive_args)
    opts["ide"] = drive_args.drives()
    opts["ide_ids"] = drive_args.qmp_names()
    return opts


AHCI_PORTS = 6
VGA_DEFAULT_MB = 16  # libxl's videoram for stdvga


def parse_vga(spec):
    """-device VGA[,vgamem_mb=M]: the video RAM in MiB (QEMU rounds it up to a
    power of two; 4 MiB at least, or Linux's bochs driver refuses the BAR)."""
    mb = VGA_DEFAULT_MB
    for p in spec.split(",")[1:]:
        if p.startswith("vgamem_mb="):
            try:
                mb = int(p[10:])
            except ValueError:
                raise ArgError("-device VGA: vgamem_mb is not a number: " + p[10:])
            if not 1 <= mb <= 256:
                raise ArgError("-device VGA: vgamem_mb must be 1..256")
        elif p.startswith("id=") or p.startswith("addr=0x2") or p == "addr=2":
            pass
        else:
            raise ArgError("-device VGA: unknown property " + p)
    size = 1
    while size < mb:
        size <<= 1
    return max(size, 4)


class VgaDump:
    """-vga-dump FILE: each changed frame, whole, to FILE (b"STUBDMFB", <II width
    height, then rows of B, G, R, X), replaced by a rename so a reader never sees
    half a frame. For tests and debugging; a stub domain shows its frames through
    the PV framebuffer."""

    def __init__(self, path, surface):
        self.path = path
        self.surface = surface

    def write(self):
        s = self.surface
        if not s.take_dirty() or s.width <= 0:
            return
        import struct

        try:
            import os
        except ImportError:
            os = None  # the stub domain's port: written in place
        tmp = self.path + ".tmp" if os is not None else self.path
        with open(tmp, "wb") as f:
            f.write(b"STUBDMFB" + struct.pack("<II", s.width, s.height))
            f.write(s.buf[:s.stride * s.height])
        if os is not None:
            os.rename(tmp, self.path)


def parse_ahci(spec, have):
    """-device ahci,id=ID[,addr=SLOT] (libxl: -device ahci,id=ahci0)."""
    if have is not None:
        raise ArgError("-device ahci: one AHCI controller only")
    ctl = {"id": None, "slot": 0}
    rest = spec.partition(",")[2]
    for k, v in _props(rest, "-device ahci") if rest else ():
        if k == "id":
            ctl["id"] = v
        elif k == "addr":
            try:
                ctl["slot"] = int(v.split(".")[0], 16)
            except ValueError:
                raise ArgError("-device ahci,addr=%s: not a slot" % v)
            if not 0 < ctl["slot"] < 32:
                raise ArgError("-device ahci,addr=%s: PCI slots are 1..31 here" % v)
        else:
            raise ArgError("-device ahci: unknown property " + k)
    if not ctl["id"]:
        raise ArgError("-device ahci needs id= (its drives name bus=ID.N)")
    return ctl


def ahci_bus(spec, ctl):
    """The bus= of an ide-hd/ide-cd when it names the AHCI controller, else None."""
    if ctl is None or spec.split(",")[0] not in ("ide-hd", "ide-cd"):
        return None
    for p in spec.split(",")[1:]:
        if p.startswith("bus=") and p[4:].split(".")[0] == ctl["id"]:
            return p[4:]
    return None


def parse_ahci_drive(spec, ctl):
    """-device ide-hd|ide-cd,bus=ahci0.N,unit=0,drive=ahcidisk-N: (port, drive id, kind)."""
    kind = spec.split(",")[0]
    bus = ahci_bus(spec, ctl)
    port = bus[len(ctl["id"]) + 1:] if "." in bus else ""
    if not port.isdigit() or not 0 <= int(port) < AHCI_PORTS:
        raise ArgError("-device %s,bus=%s: AHCI ports are %s.0..%s.%d" % (
            kind, bus, ctl["id"], ctl["id"], AHCI_PORTS - 1))
    drive = None
    for k, v in _props(spec.partition(",")[2], "-device " + kind):
        if k == "drive":
            drive = v
        elif k == "unit":
            if v != "0":
                raise ArgError("-device %s,unit=%s: a SATA port has unit 0 only" % (kind, v))
        elif k not in ("bus", "id", "serial", "model", "ver", "wwn"):
            raise ArgError("-device %s: unknown property %s" % (kind, k))
    if not drive:
        raise ArgError("-device %s,bus=%s needs drive=" % (kind, bus))
    return (int(port), drive, kind)


def resolve_ahci_drives(placed, drive_args):
    """(port, path or None, readonly, cdrom) per AHCI drive, from the -drive if=none lines."""
    out = []
    ports = {}
    for port, drive, kind in placed:
        d = drive_args.by_id.get(drive)
        if d is None:
            raise ArgError("-device %s: drive=%s is no -drive if=none,id=..." % (kind, drive))
        if d["used"]:
            raise ArgError("-device %s: drive %s is used twice" % (kind, drive))
        if port in ports:
            raise ArgError("-device %s: AHCI port %d is taken" % (kind, port))
        d["used"] = True
        ports[port] = True
        cd = kind == "ide-cd"
        if not cd and not d["file"]:
            raise ArgError("-device ide-hd: drive %s has no file" % drive)
        out.append((port, d["file"], d["readonly"] or cd, cd))
    return out


def serial_backends(opts):
    """The -serial back ends, COM1's first. QEMU's defaults: COM1 on stdio unless
    -nodefaults; what -serial asks for is made either way (libxl's stub domain:
    -nodefaults -serial /dev/hvc3), so COM1 exists iff this is not empty."""
    return opts["serial"] or (["stdio"] if opts["defaults"] else [])


class FdChardev:
    """A serial back end writing to a file. A UART hands it one byte at a
    time; they are written out once per request (flush), not byte by byte."""

    def __init__(self, f):
        self.f = f
        self.pending = []

    def write(self, data):
        self.pending.append(bytes(data))

    def flush(self):
        if not self.pending:
            return
        data = b"".join(self.pending)
        self.pending = []
        try:
            self.f.write(data)
            self.f.flush()
        except OSError:
            pass


def make_chardev(spec):
    if spec == "null":
        return None
    if spec == "stdio" or spec.startswith("/dev/hvc"):
        # A stub domain's console N is its serial port to dom0 (libxl's /dev/hvc3...);
        # off MiniOS the device model's own stdout stands in for it.
        return FdChardev(sys.stdout.buffer if hasattr(sys.stdout, "buffer") else sys.stdout)
    return FdChardev(open(spec[5:], "ab"))


class Platform:
    """The machine's view of the hypervisor: one ioreq server of one domain."""

    def __init__(self, hyp, sid):
        self.hyp = hyp
        self.sid = sid

    def set_isa_irq_level(self, irq, level):
        self.hyp.set_isa_irq_level(irq, level)

    def set_pci_intx_level(self, dev, pin, level):
        self.hyp.set_pci_intx_level(0, 0, dev, pin, level)

    def set_pci_link_route(self, link, irq):
        self.hyp.set_pci_link_route(link, irq)

    def inject_msi(self, addr, data):
        self.hyp.inject_msi(addr, data)

    def map_range(self, kind, start, end):
        self.hyp.map_io_range(self.sid, kind, start, end)

    def unmap_range(self, kind, start, end):
        self.hyp.unmap_io_range(self.sid, kind, start, end)

    def map_pcidev(self, devfn):
        self.hyp.map_pcidev(self.sid, 0, 0, devfn >> 3, devfn & 7)

    def shutdown(self, reason):
        self.hyp.shutdown(reason)

    def set_acpi_s_state(self, state):
        self.hyp.set_acpi_s_state(state)


# Watch events served per turn of the loop: a flood can't starve the ioreqs.
XS_EVENTS_PER_TURN = 64
# How long start-up waits for the PV devices the arguments name (libxl gives a
# device model 30 s to say it is running).
PV_SETTLE_MS = 20000
# How long a save waits for the disks' requests in flight to complete.
SAVE_DRAIN_MS = 10000


def pv_drivers():
    """The PV device types the device model drives as a frontend, and their drivers."""
    from stubdm import pv_echo
    from stubdm.frontends.blkfront import BlkFront
    from stubdm.frontends.echo import EchoFrontend
    from stubdm.frontends.netfront import NetFront

    return (("vbd", BlkFront), ("vif", NetFront), ("vfb", _fbfront), ("vkbd", _kbdfront),
            (pv_echo.TYPE, EchoFrontend))


# The display's frontends are imported only for a stub domain that has them (their
# code is heap on MicroPython): the bus calls these as it would a class.
def _fbfront(bus, devid):
    from stubdm.frontends.fbfront import FbFront

    return FbFront(bus, devid)


def _kbdfront(bus, devid):
    from stubdm.frontends.kbdfront import KbdFront

    return KbdFront(bus, devid)


def open_pv(hyp):
    """xenstore and the stub domain's PV frontends, or (None, None) without a xenstore."""
    from stubdm.hypervisor import HypervisorError
    from stubdm.xenstore import Xenstore

    try:
        xs = Xenstore()
    except HypervisorError as e:
        log.info("stubdm", "no xenstore (%s): no PV devices" % e)
        return None, None
    from stubdm.frontends.xenbus import FrontendBus

    try:
        bus = FrontendBus(hyp, xs, pv_drivers())
        bus.start()
    except HypervisorError as e:
        log.info("stubdm", "xenstore: %s: no PV devices" % e)
        return xs, None
    return xs, bus



def _rx_armed(uarts):
    """True if one of the 16550s has its RX character timeout armed."""
    for u in uarts:
        if u.rx_timer_armed:
            return True
    return False

class DeviceModel:
    def __init__(self, opts):
        from stubdm.hypervisor import Hypervisor, HypervisorError
        from stubdm.ioreq import Dispatcher, IoreqLoop
        from stubdm.machine import Machine
        from stubdm.memory import GuestMemory

        hyp = Hypervisor(opts["domid"])
        self.hyp = hyp
        ram = opts["ram_mib"] << 20
        self.mem = GuestMemory(hyp, ram)
        sid = hyp.create_ioreq_server(abi.HVM_IOREQSRV_BUFIOREQ_ATOMIC)
        self.sid = sid
        ioreq_gfn, buf_gfn, buf_port = hyp.ioreq_server_info(sid)
        page = hyp.map_page(ioreq_gfn)
        buf = hyp.map_page(buf_gfn) if buf_gfn else None
        ports = []
        for v in range(opts["vcpus"]):
            remote = int.from_bytes(
                page[v * abi.IOREQ_SIZE + abi.IOREQ_OFF_VP_EPORT :
                     v * abi.IOREQ_SIZE + abi.IOREQ_OFF_VP_EPORT + 4], "little")
            if remote == 0:
                raise HypervisorError("vCPU %d has no ioreq event channel: -smp %d is more "
                                      "than the domain's vCPUs" % (v, opts["vcpus"]), 22)
            ports.append(hyp.bind_interdomain(remote))
        local_buf = hyp.bind_interdomain(buf_port) if buf is not None else None
        # xenstore and the PV frontends first: the disks the arguments name are
        # the stub domain's own vbds, which the machine's controllers are given.
        self.xs, self.pv = open_pv(hyp)
        self.needed_pv = []  # frontends that must be Connected before the guest runs
        # The display and its input, if the toolstack gave the stub domain a vfb and a
        # vkbd (libxl does for a guest with vnc or sdl): the adapter draws into fbfront.
        self.fb = self.pv.device("vfb", 0) if self.pv is not None else None
        self.kbd = self.pv.device("vkbd", 0) if self.pv is not None else None
        serials = serial_backends(opts)
        chardevs = [make_chardev(s) for s in serials]
        self.timers = opts["timers"]
        self.vga_dump = None
        vga = self.vga_config(opts, hyp, ram)
        self.machine = Machine(Platform(hyp, sid), chardevs, ram, True,
                               opts["pci_serial"], com1=bool(serials),
                               ide=self.ide_config(opts),
                               ahci=self.ahci_config(opts),
                               nics=self.open_nics(opts), nic_mem=self.mem,
                               nic_clock=ticks_us if self.timers else None, vga=vga)
        m = self.machine
        if self.kbd is not None:
            self.kbd.i8042 = getattr(m, "i8042", None)  # none with -nodefaults
            self.kbd.display = self.fb
        self.dispatcher = Dispatcher(m.pio, m.mmio, m.pci, self.mem, m.irqs)
        outputs = [c for c in chardevs if c is not None]

        def flush():
            for c in outputs:
                c.flush()

        self.loop = IoreqLoop(hyp, self.dispatcher, page, ports, buf, local_buf, flush)
        self.settle_pv(PV_SETTLE_MS)
        self.paused = False  # saved ("save"): device timers stand still until "continue"
        self.save_stream = opts.get("save_stream") or "/var/lib/xen/qemu-save.%d" % opts[
            "domid"]
        if opts.get("incoming"):
            self.load_devices(opts["incoming"], opts.get("restore_stream"))
        hyp.set_ioreq_server_state(sid, 1)
        self.readiness = None
        if self.pv is not None:
            # Ready: libxl waits (30 s) for "running" under our own home.
            from stubdm.control import Readiness

            self.readiness = Readiness(self.xs, self.pv.home, opts["domid"], self._command)
            self.readiness.announce("running")
            self.readiness.watch_commands()
        self.qmp = None
        self.held = []  # ioreq ports that fired while QMP's stop holds the guest
        self.quit_requested = False
        if self.pv is not None:
            self.start_qmp(opts)
        self.heap_peak = 0
        if _mem_alloc is not None:
            self.sample_heap()  # the set-up's own: the machine and its devices

    def start_qmp(self, opts):
        """QMP on a vchan at device-model/<guest>/qmp-vchan (stubdm/qmp.py), for dom0."""
        from stubdm.hypervisor import HypervisorError
        from stubdm.qmp import DmControl, QmpServer

        path = "%s/device-model/%d/qmp-vchan" % (self.pv.home, opts["domid"])
        try:
            self.qmp = QmpServer(self.hyp, self.xs, path, DmControl(self, opts))
        except HypervisorError as e:
            log.info("stubdm", "no QMP: %s" % e)

    def resume_held(self):
        """QMP cont: the requests that waited are served now."""
        held, self.held = self.held, []
        for port in held:
            self.loop.on_port(port)

    def open_nics(self, opts):
        """(model, slot, network, mac) per -device NIC, for the machine."""
        from stubdm.nics import NetdevError, open_netdev

        out = []
        for nic in opts["nics"]:
            try:
                net = open_netdev(opts["netdevs"][nic["netdev"]], self)
            except NetdevError as e:
                raise ArgError(str(e))
            out.append((nic["model"], nic["slot"], net, nic["mac"]))
        return out

    def _command(self, cmd):
        """The older xenstore command protocol: True if cmd was handled."""
        if cmd == "continue":
            self.paused = False
            self.readiness.announce("running")
            return True
        if cmd == "save":
            # qemu-traditional's: pause, write the state to the save file, say "paused".
            # The toolstack has paused the vCPUs; what the disks still owe is drained.
            from stubdm.savestate import StateError

            self.paused = True
            t0 = ticks_us()
            try:
                data = self.save_devices()
                f = open(self.save_stream, "wb")
                try:
                    f.write(data)
                finally:
                    f.close()
            except (StateError, OSError) as e:
                log.info("stubdm", "save: %s" % e)
                self.readiness.announce("error")
                return True
            log.info("stubdm", "save: %d bytes of device state to %s in %d us"
                     % (len(data), self.save_stream, ticks_diff(ticks_us(), t0)))
            self.readiness.announce("paused")
            return True
        return False

    def save_devices(self, timeout_ms=SAVE_DRAIN_MS):
        """The device state stream (stubdm/savestate.py), once every disk request in
        flight has completed (as QEMU drains its block layer before a save); StateError
        if they don't within timeout_ms."""
        import select

        from stubdm import savestate

        t0 = ticks_us()
        poller = None
        while savestate.busy_devices(self.machine):
            if poller is None:
                poller = select.poll()
                poller.register(self.hyp.evtchn_fd(), select.POLLIN)
            if ticks_diff(ticks_us(), t0) // 1000 >= timeout_ms:
                raise savestate.StateError("requests still in flight after %d ms: %s"
                                           % (timeout_ms, ", ".join(
                                               savestate.busy_devices(self.machine))))
            for _obj, ev in poller.poll(10):
                if ev & (select.POLLHUP | select.POLLERR):
                    raise savestate.StateError("the hypervisor went away while draining")
                port = self.hyp.pending()
                self.hyp.unmask(port)
                if self.pv is None or not self.pv.on_port(port):
                    self.loop.on_port(port)
        return savestate.save_machine(self.machine)

    def load_devices(self, spec, restore_stream=None):
        """-incoming: the device state from spec (file:PATH, or libxl's console 2: the
        restore stream), all of it read back before the guest may run; ArgError (the
        device model exits, the guest never starts) if not."""
        from stubdm.control import INCOMING_CONSOLE
        from stubdm.savestate import StateError, load_machine

        if spec == INCOMING_CONSOLE:
            if restore_stream is None:
                raise ArgError("-incoming %s: the restore stream (console 2) is not wired "
                               "on this platform: give -restore-stream PATH" % spec)
            path = restore_stream
        else:
            path = spec[5:]
        try:
            f = open(path, "rb")
            try:
                data = f.read()
            finally:
                f.close()
        except OSError as e:
            raise ArgError("-incoming %s: can't read it: %s" % (spec, e))
        t0 = ticks_us()
        try:
            load_machine(self.machine, data)
        except StateError as e:
            raise ArgError("-incoming %s: %s: the guest is not started" % (spec, e))
        log.info("stubdm", "restored %d bytes of device state from %s in %d us"
                 % (len(data), path, ticks_diff(ticks_us(), t0)))

    def settle_pv(self, timeout_ms):
        """Serve xenstore and the frontends' events until every PV device the arguments
        named is Connected (as QEMU opens its drives before the guest runs), or give up
        after timeout_ms: a disk whose backend never came is then an absent disk."""
        import select

        from stubdm.xenstore import LOST as XS_LOST

        if self.pv is None or not self.needed_pv:
            return
        hyp = self.hyp
        poller = select.poll()
        fd = hyp.evtchn_fd()
        xs_fd = self.xs.fileno()
        poller.register(fd, select.POLLIN)
        poller.register(xs_fd, select.POLLIN)
        t0 = ticks_us()
        while True:
            waiting = [fe for fe in self.needed_pv if fe.state != 4 and fe.failed is None
                       and fe.state != 6]
            if not waiting:
                return
            left = timeout_ms - ticks_diff(ticks_us(), t0) // 1000
            if left <= 0:
                log.info("stubdm", "PV devices not connected after %d ms: %s" % (
                    timeout_ms, ", ".join(fe.name for fe in waiting)))
                return
            for obj, ev in poller.poll(min(left, 100)):
                if obj == fd:
                    if ev & (select.POLLHUP | select.POLLERR):
                        return
                    port = hyp.pending()
                    hyp.unmask(port)
                    self.pv.on_port(port)
            if self.xs.events() == XS_LOST:
                log.info("stubdm", "xenstore connection lost while PV devices connected")
                return

    def vga_config(self, opts, hyp, ram):
        """The standard VGA: its video RAM populated in guest memory, and the surface
        it draws into (fbfront's when the stub domain has a vfb; -vga-dump's; else
        none: nothing shows the frame, so nothing is drawn)."""
        if opts["vga"] is None:
            return None
        from stubdm.memory import GuestVram

        try:
            vram = GuestVram(hyp, ram, opts["vga"] << 20)
        except MemoryError as e:
            raise ArgError("-device VGA: " + str(e))
        surface = self.fb
        if opts["vga_dump"] is not None:
            from stubdm.display import MemorySurface

            surface = None
            for mb in (4, 2):  # 1024x768x32 fits 4 MiB; a small heap (the port's) gets text
                try:
                    surface = MemorySurface(max_bytes=mb << 20)
                    break
                except MemoryError:
                    pass
            if surface is None:
                raise ArgError("-vga-dump: no room for a surface in the heap")
            self.vga_dump = VgaDump(opts["vga_dump"], surface)
        return {"vram": vram, "surface": surface}

    def ide_config(self, opts):
        """The PIIX3 IDE function (always there, as in QEMU's xenfv) and its drives."""
        from stubdm.disks import DriveError, open_drive

        drives = []
        self.media = []  # (QMP id, medium slot) per CD-ROM
        for channel, unit, path, readonly, cdrom in opts["ide"]:
            try:
                disk = open_drive(path, readonly, cdrom, self)
            except DriveError as e:
                raise ArgError(str(e))
            if cdrom:
                from stubdm.medium import Medium

                disk = Medium(disk)
                ids = opts.get("ide_ids", {}).get((channel, unit), (None, None))
                self.media.append((ids[0] or ids[1] or "ide%d-cd%d" % (channel, unit), disk))
            drives.append((channel, unit, disk))
        return {"drives": drives, "mem": self.mem, "native": opts["ide_native"]}

    def ahci_config(self, opts):
        """The AHCI controller (-device ahci) and the drives on its ports."""
        from stubdm.disks import DriveError, open_drive

        if opts["ahci"] is None:
            return None
        disks = [None] * AHCI_PORTS
        for port, path, readonly, cdrom in opts["ahci_drives"]:
            try:
                disks[port] = open_drive(path, readonly, cdrom, self)
            except DriveError as e:
                raise ArgError(str(e))
        return {"disks": disks, "mem": self.mem, "slot": opts["ahci"]["slot"]}

    def run(self):
        import select

        hyp = self.hyp
        # The burst's unmask and pending_nowait straight to the glue, with
        # Hypervisor.unmask's and pending_nowait's handling inline: one Python
        # frame less each per access (bench pio's noise hid the gain).
        evtchn = hyp.xen
        fd = hyp.evtchn_fd()
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        xs_fd = -1
        if self.xs is not None:
            from stubdm.xenstore import LOST as XS_LOST

            xs_fd = self.xs.fileno()
            poller.register(xs_fd, select.POLLIN)
        pv = self.pv
        xs_backlog = False  # watch events left queued (a flood is served in slices)
        uarts = self.machine.uarts if self.timers else []
        armed = {}  # uart index -> when its RX character timeout was first seen armed
        heap_due = slow_due = ticks_us()
        vga = self.machine.vga
        if vga is not None and vga.surface is None:
            vga = None  # nothing shows the frame: nothing to draw
        if vga is not None:
            from stubdm.devices.vga import REFRESH_MS
        next_frame = ticks_us()
        vcpu_ports = self.loop.vcpu_of_port
        while not self.machine.reset_requested and not self.quit_requested:
            timeout = 1000
            if vga is not None:
                wait = ticks_diff(next_frame, ticks_us()) // 1000
                timeout = wait if wait > 0 else 0
            if armed or _rx_armed(uarts):
                timeout = RX_TIMEOUT_MS
            nic_due = self.machine.nic_timer_deadline() if self.timers else None
            if nic_due is not None:
                # e1000's interrupt throttling: wake when its next interrupt is due.
                # poll counts ms: one due within 1 ms is raised at the end of this
                # turn (waiting for it spun at poll(0); rounding up to 1 ms halved
                # throughput: Linux's bulk ITR gap is 250 us).
                wait = (ticks_diff(nic_due, ticks_us()) - 1) // 1000
                timeout = min(timeout, wait if wait > 0 else 0)
            if xs_backlog or (pv is not None and pv.later and not self.paused):
                timeout = 0
            ready = poller.poll(timeout)
            xs_ready = False
            # select.poll gives (fd, event) on CPython and (registered object,
            # event) on MicroPython: the objects registered are the fds.
            for obj, ev in ready:
                if obj == xs_fd:
                    if ev & (select.POLLHUP | select.POLLERR):
                        xs_fd = self._xenstore_lost(poller, xs_fd)
                    xs_ready = True
                    continue  # served below, with any backlog
                if ev & (select.POLLHUP | select.POLLERR):
                    log.info("stubdm", "event channel closed: the hypervisor is gone")
                    self.report()
                    return 0
                # Every port delivered by now, before this turn's other work:
                # the guest's next access often comes while the answer's
                # notify() spins, and a whole turn before taking it was a
                # fifth of an access (bench pio). Bounded in time, so that
                # timers, xenstore and QMP still get their turn in a flood.
                port = hyp.pending()
                t_burst = ticks_us()
                while port >= 0:
                    try:
                        evtchn.unmask(port)
                    except OSError:
                        pass  # a failed unmask shows up as a missing event
                    if port in vcpu_ports and not self.paused:
                        self.loop.on_port(port)  # the guest's access: first
                    elif pv is not None and pv.on_port(port):
                        pass
                    elif self.qmp is not None and self.qmp.on_port(port):
                        pass
                    elif self.held is not None and self.paused:
                        if port not in self.held:
                            self.held.append(port)  # QMP stop: the vCPU's request waits
                    else:
                        self.loop.on_port(port)
                    if ticks_diff(ticks_us(), t_burst) >= BURST_US:
                        break
                    try:
                        port = evtchn.pending_nowait()
                    except OSError:
                        port = -1  # the handle failed: the next poll says why
            if pv is not None and pv.later and not self.paused:
                # What the guest's accesses asked for, now answered (stopped or
                # saved: it waits, as QEMU's NICs take nothing while stopped).
                pv.run_deferred()
            now = ticks_us()
            slow = not ready or ticks_diff(now, slow_due) >= 0
            if slow:
                slow_due = ticks_add(now, SLOW_CHORES_US)
            if self.held and not self.paused:
                self.resume_held()
            if self.qmp is not None and slow:
                self.qmp.poll()
            if xs_fd >= 0 and (slow or xs_ready or xs_backlog):
                n = self.xs.events()
                if n == XS_LOST:
                    # libxenstore reads its socket in a thread: no POLLHUP reaches us.
                    xs_fd = self._xenstore_lost(poller, xs_fd)
                    n = 0
                xs_backlog = n >= XS_EVENTS_PER_TURN
            if _mem_alloc is not None and ((not ready and timeout == 1000) or
                                           ticks_diff(now, heap_due) >= 0):
                heap_due = ticks_add(now, HEAP_SAMPLE_US)
                self.sample_heap()
            if self.paused:
                continue  # saved: the device clocks stand still (as QEMU's vm_stop)
            if armed or _rx_armed(uarts):
                self._rx_timeouts(uarts, armed)
            if vga is not None and ticks_diff(ticks_us(), next_frame) >= 0:
                # The display refresh, as QEMU's GUI timer: what changed, redrawn.
                next_frame = ticks_us() + REFRESH_MS * 1000
                vga.refresh()
                if self.vga_dump is not None:
                    self.vga_dump.write()
            if self.fb is not None:
                self.fb.flush()  # what was drawn this turn, as update events
            if nic_due is not None and ticks_diff(ticks_us(), nic_due) >= -1000:
                self.machine.run_nic_timers(ticks_add(ticks_us(), 1000))
        why = {abi.SHUTDOWN_reboot: "reboot", abi.SHUTDOWN_poweroff: "poweroff"}.get(
            getattr(self.machine, "shutdown_reason", None), "shutdown")
        log.info("stubdm", "guest asked for %s: passed to Xen, serving stops" % why)
        self.report()
        return 0

    def _xenstore_lost(self, poller, xs_fd):
        """xenstored went away: the PV devices stop, the guest's emulation goes on.
        The fd to poll from now on (-1: none)."""
        log.info("stubdm", "xenstore connection lost: PV devices stop")
        poller.unregister(xs_fd)
        return -1

    def _rx_timeouts(self, uarts, armed):
        """The 16550's character timeout: data below the trigger level idled too long."""
        now = ticks_us()
        for i in range(len(uarts)):
            u = uarts[i]
            if not u.rx_timer_armed:
                armed.pop(i, None)
            elif i not in armed:
                armed[i] = now
            elif ticks_diff(now, armed[i]) >= RX_TIMEOUT_MS * 1000:
                del armed[i]
                u.rx_timeout()

    def sample_heap(self):
        """MicroPython: the live heap now (after a collection); keeps the peak."""
        _gc.collect()
        used = _mem_alloc()
        if used > self.heap_peak:
            self.heap_peak = used

    def report(self):
        """One line of figures on stderr, for benches (host_sim parses it).

        On MicroPython it ends with heap_peak= (the most live GC heap seen,
        bytes) and heap_size= (the GC heap, bytes).
        """
        log.flush_suppressed()  # what the rate limit held back, counted
        lp = self.loop
        st = self.mem.stats()
        heap = ""
        if _mem_alloc is not None:
            self.sample_heap()
            heap = " heap_peak=%d heap_size=%d" % (self.heap_peak, _mem_alloc() + _mem_free())
        vga = ""
        if self.machine.vga is not None:
            v = self.machine.vga.stats()
            vga = " vga_frames=%d vga_busy_us=%d vga_drawn=%d vga_drawn_us=%d" % (
                v["frames"], v["busy_us"], v["drawn"], v["drawn_us"])
        if self.kbd is not None:
            # What came in through the PV keyboard and went on to the i8042.
            k = self.kbd.stats
            vga += " kbd_keys=%d kbd_motion=%d kbd_pos=%d kbd_buttons=%d kbd_dropped=%d" % (
                k["keys"], k["motion"], k["pos"], k["buttons"], k["dropped"])
        if self.pv is not None:
            # The disks' traffic: controller submissions and the blkif requests they became.
            subs = reqs = 0
            for key in self.pv.devices:
                fe = self.pv.devices[key]
                if key[0] == "vbd" and getattr(fe, "stats", None) is not None:
                    subs += fe.stats["submits"]
                    reqs += fe.stats["requests"]
            vga += " blk_submits=%d blk_requests=%d" % (subs, reqs)
        sys.stderr.write(
            "stubdm-stats: ioreqs=%d buffered=%d busy_us=%d mapcache_hits=%d "
            "mapcache_misses=%d mapcache_buckets=%d mapcache_footprint=%d%s%s\n"
            % (lp.handled, lp.buffered, lp.busy_us, st["hits"], st["misses"],
               st["buckets_mapped"], st["footprint"], vga, heap)
        )


def toolstack_argv():
    """dm-argv as libxl wrote it for us (stubdm/control.py), or ArgError saying why not."""
    from stubdm import control
    from stubdm.hypervisor import HypervisorError
    from stubdm.xenstore import Xenstore

    try:
        xs = Xenstore()
    except HypervisorError as e:
        raise ArgError("-xen-domid is required (and no xenstore to read dm-argv from: %s)"
                       % e)
    try:
        return control.read_dm_argv(xs)
    except control.ControlError as e:
        raise ArgError(str(e))
    finally:
        xs.close()


def main(argv=None):
    if argv is None:
        argv = sys.argv[1:]
    if "-xen-domid" not in argv and not [a for a in argv if a in ("-h", "--help", "-help")]:
        # A stub domain gets its arguments from the toolstack, through xenstore; what
        # the command line holds (host_sim's own settings) comes first.
        try:
            argv = list(argv) + toolstack_argv()
        except ArgError as e:
            sys.stderr.write("stubdm: " + str(e) + "\n")
            return 2
    try:
        opts = parse_args(argv)
    except ArgError as e:
        msg = str(e)
        if msg:
            sys.stderr.write("stubdm: " + msg + "\n")
        sys.stderr.write(USAGE)
        return 0 if not msg else 2
    log.verbose = opts["verbose"]
    from stubdm.hypervisor import HypervisorError

    try:
        dm = DeviceModel(opts)
        return dm.run()
    except ArgError as e:
        sys.stderr.write("stubdm: " + str(e) + "\n")
        return 2
    except HypervisorError as e:
        sys.stderr.write("stubdm: " + str(e) + "\n")
        return 1


def cli():
    sys.exit(main())


if __name__ == "__main__":
    sys.exit(main())
