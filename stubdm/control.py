# The device model as libxl drives a stub-domain device model (DESIGN.md 7):
# its arguments from xenstore (<vm>/image/dm-argv/NNN), the options libxl
# writes that this device model takes without a device behind them (each with
# its reason), readiness ("running" in device-model/<guest>/state) and the
# older xenstore command protocol (device-model/<guest>/command).
from stubdm import log
from stubdm.hypervisor import HypervisorError

# Keys dm-argv/001 ... as libxl writes them (libxl__write_stub_dmargs).
# -incoming's value libxl writes for a stub domain (libxl_dm.c): its console 2.
INCOMING_CONSOLE = "$STUBDOM_RESTORE_INCOMING_ARG"
MAX_ARGS = 999


class ControlError(Exception):
    pass


def read_dm_argv(xs):
    """The argument list libxl wrote for us: our domain's target is the guest, the
    guest's vm path holds image/dm-argv/NNN. Raises ControlError saying what is missing."""
    me = xs.read_int("domid", 0, 0x7FEF)
    if me is None:
        raise ControlError("xenstore: no valid 'domid' for this domain")
    guest = xs.read_int("/local/domain/%d/target" % me, 1, 0x7FEF)
    if guest is None:
        raise ControlError("xenstore: /local/domain/%d/target names no guest: not a stub "
                           "domain" % me)
    vm = xs.read("/local/domain/%d/vm" % guest)
    if not vm or not vm.startswith("/vm/") or len(vm) > 256:
        raise ControlError("xenstore: the guest's vm path is missing or bad: %r"
                           % (vm[:64] if vm else vm))
    base = vm + "/image/dm-argv"
    keys = xs.directory(base)
    if not keys:
        raise ControlError("xenstore: no arguments under %s" % base)
    nums = []
    for k in keys:
        if len(k) != 3 or not k.isdigit() or not 1 <= int(k) <= MAX_ARGS:
            raise ControlError("xenstore: %s/%s is not an argument key (001-999)"
                               % (base, k[:16]))
        nums.append(int(k))
    nums.sort()
    if nums != list(range(1, len(nums) + 1)):
        raise ControlError("xenstore: %s has gaps: keys must run from 001" % base)
    argv = []
    for n in nums:
        v = xs.read("%s/%03d" % (base, n))
        if v is None:
            raise ControlError("xenstore: %s/%03d vanished" % (base, n))
        argv.append(v)
    return argv


# Options libxl writes for a stub domain's device model that have nothing to
# emulate here: (option, takes a value, why it is fine to take no action).
IGNORED = (
    ("-no-shutdown", False, "the guest's shutdown goes to Xen (dm_op); the toolstack ends us"),
    ("-no-user-config", False, "stubdm reads no configuration files"),
    ("-nographic", False, "stubdm has no display of its own"),
    ("-k", True, "keymaps belong to the VNC server in dom0"),
    ("-boot", True, "the boot order is the firmware's (hvmloader/SeaBIOS)"),
    ("-no-acpi", False, "Xen's hvmloader builds the ACPI tables; PM registers stay"),
    ("-xen-domid-restrict", False, "a stub domain is restricted by Xen itself"),
)


def toolstack_option(argv, i, opts):
    """A libxl option parse_args has no branch for: the number of arguments it
    takes (1 or 2), after checking it; 0 if it is not one of libxl's."""
    a = argv[i]
    v = argv[i + 1] if i + 1 < len(argv) else None
    for name, takes, why in IGNORED:
        if a == name:
            if takes and v is None:
                raise ControlError(a + " needs a value")
            log.debug("control", "%s: accepted, no action: %s" % (a, why))
            return 2 if takes else 1
    if a == "-name":
        if v is None:
            raise ControlError("-name needs a value")
        opts["name"] = v[:64]
        return 2
    if a == "-display":
        if v != "none":
            raise ControlError("-display %s: a stub domain has no display; the guest's "
                               "screen goes to dom0 through the PV framebuffer" % v)
        return 2
    if a in ("-machine", "-M"):
        if v is None:
            raise ControlError(a + " needs a value")
        kind = v.split(",")[0]
        if kind.startswith("type="):
            kind = kind[5:]
        if kind != "xenfv":
            raise ControlError("%s %s: stubdm emulates libxl's xenfv machine only (a guest "
                               "with xen_platform_pci=0 needs pc)" % (a, kind))
        return 2
    if a == "-incoming":
        # What libxl writes for a stub domain: $STUBDOM_RESTORE_INCOMING_ARG, the stub
        # domain's console 2 (the restore stream; -restore-stream off MiniOS). QEMU's
        # file: URI too (host_sim, a dom0 device model). fd:N is a dom0 QEMU's: refused.
        if v is None:
            raise ControlError("-incoming needs a value")
        if v != INCOMING_CONSOLE and (not v.startswith("file:") or len(v) < 6):
            raise ControlError("-incoming %s: only %s (console 2) or file:PATH"
                               % (v[:64], INCOMING_CONSOLE))
        opts["incoming"] = v
        return 2
    if a in ("-vnc", "-sdl", "-spice", "-chardev", "-mon", "-usb", "-usbdevice"):
        raise ControlError("%s: libxl writes it for a device model in dom0, not a stub "
                           "domain's" % a)
    return 0


def device_option(model, spec):
    """-device values libxl writes for display devices: True if taken (no action yet),
    else raise with what to do; None if the model is not a display device."""
    if model == "cirrus-vga":
        raise ControlError("-device cirrus-vga: stubdm emulates the standard VGA only: "
                           "set vga=\"stdvga\" in the guest's configuration")
    if model == "VGA":
        return True  # stubdm/main.py parses it (the standard VGA at 00:02.0)
    return None


class Readiness:
    """device-model/<guest>/state under our home, as libxl waits for it, and the older
    command protocol there (save / continue)."""

    def __init__(self, xs, home, guest, on_command=None):
        self.xs = xs
        self.dir = "%s/device-model/%d" % (home, guest)
        self.on_command = on_command
        self.state = None

    def announce(self, state="running"):
        try:
            self.xs.write(self.dir + "/state", state)
            self.state = state
        except HypervisorError as e:
            log.info("control", "can't write %s/state: %s" % (self.dir, e))

    def watch_commands(self):
        self.xs.watch(self.dir + "/command", "stubdm-command", self._command)

    def _command(self, _path):
        cmd = self.xs.read(self.dir + "/command")
        if not cmd:
            return
        cmd = cmd[:32]
        if self.on_command is not None and self.on_command(cmd):
            return
        log.info("control", "command %r: not supported" % cmd)
