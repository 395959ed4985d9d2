# libxl's disk arguments as QEMU takes them (DESIGN.md section 7), parsed
# into the IDE drives the machine gets:
#   -drive file=PATH,if=ide,index=N,media=disk|cdrom,format=F,cache=C[,readonly=on]
#   -drive if=none,id=ID[,file=PATH,format=F,readonly=on,...]
#   -device ide-cd|ide-hd,drive=ID,bus=ide.B,unit=U[,id=...]
# index N is channel N // 2, unit N % 2 (QEMU's if=ide numbering).
from stubdm.compat import const

MAX_INDEX = const(3)
FORMATS = ("raw", "host_device")
CACHES = ("writeback", "none", "writethrough", "unsafe", "directsync")


class DriveArgError(ValueError):
    pass


def split_props(s):
    """QEMU's option syntax: comma-separated key=value, ",," for a literal comma."""
    out = []
    cur = ""
    i = 0
    while i < len(s):
        c = s[i]
        if c == ",":
            if i + 1 < len(s) and s[i + 1] == ",":
                cur += ","
                i += 2
                continue
            out.append(cur)
            cur = ""
        else:
            cur += c
        i += 1
    out.append(cur)
    props = []
    for p in out:
        if "=" in p:
            k, v = p.split("=", 1)
        else:
            k, v = p, ""
        props.append((k, v))
    return props


def _onoff(v, what):
    if v in ("on", "true", "yes", ""):
        return True
    if v in ("off", "false", "no"):
        return False
    raise DriveArgError(what + ": on or off, not " + v)


class DriveArgs:
    """Collects -drive and ide -device options; drives() gives the result."""

    def __init__(self):
        self.by_id = {}  # id -> drive dict (if=none)
        self.ids = []
        self.placed = {}  # (channel, unit) -> drive dict

    def drive(self, arg):
        d = {"file": None, "if": "ide", "index": None, "media": "disk", "format": "raw",
             "readonly": False, "id": None, "used": False}
        for k, v in split_props(arg):
            if k == "file":
                d["file"] = v
            elif k == "if":
                if v not in ("ide", "none"):
                    raise DriveArgError("-drive if=%s: only ide and none are emulated" % v)
                d["if"] = v
            elif k == "index":
                try:
                    d["index"] = int(v)
                except ValueError:
                    raise DriveArgError("-drive index=%s: not a number" % v)
                if not 0 <= d["index"] <= MAX_INDEX:
                    raise DriveArgError("-drive index=%s: IDE has positions 0..3" % v)
            elif k == "media":
                if v not in ("disk", "cdrom"):
                    raise DriveArgError("-drive media=%s: disk or cdrom" % v)
                d["media"] = v
            elif k == "format":
                if v not in FORMATS:
                    raise DriveArgError("-drive format=%s: raw or host_device" % v)
                d["format"] = v
            elif k == "cache":
                if v not in CACHES:
                    raise DriveArgError("-drive cache=%s: unknown cache mode" % v)
            elif k == "readonly":
                d["readonly"] = _onoff(v, "-drive readonly")
            elif k == "id":
                d["id"] = v
            elif k in ("aio", "discard", "werror", "rerror", "snapshot"):
                pass  # the backend's business, not the emulated drive's
            else:
                raise DriveArgError("-drive: unknown property " + k)
        if d["if"] == "none":
            if not d["id"]:
                raise DriveArgError("-drive if=none needs id=")
            if d["id"] in self.by_id:
                raise DriveArgError("-drive id=%s: used twice" % d["id"])
            self.by_id[d["id"]] = d
            self.ids.append(d["id"])
            return
        if d["index"] is None:
            n = 0
            while (n // 2, n % 2) in self.placed:
                n += 1
            if n > MAX_INDEX:
                raise DriveArgError("-drive if=ide: all four IDE positions are taken")
            d["index"] = n
        if d["media"] == "disk" and not d["file"]:
            raise DriveArgError("-drive if=ide,media=disk needs file=")
        self._place(d["index"] // 2, d["index"] % 2, d, "-drive index=%d" % d["index"])

    def _place(self, channel, unit, d, what):
        if (channel, unit) in self.placed:
            raise DriveArgError("%s: IDE position ide.%d unit %d is taken" % (what, channel, unit))
        self.placed[(channel, unit)] = d

    def device(self, kind, arg):
        """-device ide-cd / ide-hd."""
        drive = None
        bus = None
        unit = 0
        qdev_id = None
        for k, v in split_props(arg)[1:]:
            if k == "drive":
                drive = v
            elif k == "bus":
                if v not in ("ide.0", "ide.1"):
                    raise DriveArgError("-device %s,bus=%s: ide.0 or ide.1" % (kind, v))
                bus = int(v[4])
            elif k == "unit":
                if v not in ("0", "1"):
                    raise DriveArgError("-device %s,unit=%s: 0 or 1" % (kind, v))
                unit = int(v)
            elif k == "id":
                qdev_id = v  # QMP names the drive by it (eject, blockdev-change-medium)
            elif k in ("serial", "model", "ver", "wwn"):
                pass
            else:
                raise DriveArgError("-device %s: unknown property %s" % (kind, k))
        if drive is None or drive not in self.by_id:
            raise DriveArgError("-device %s: drive=%s is no -drive if=none,id=..." % (kind, drive))
        d = self.by_id[drive]
        if d["used"]:
            raise DriveArgError("-device %s: drive %s is used twice" % (kind, drive))
        d["used"] = True
        d["qdev_id"] = qdev_id
        d["media"] = "cdrom" if kind == "ide-cd" else "disk"
        if d["media"] == "disk" and not d["file"]:
            raise DriveArgError("-device ide-hd: drive %s has no file" % drive)
        if bus is None:
            raise DriveArgError("-device %s needs bus=ide.0 or ide.1" % kind)
        self._place(bus, unit, d, "-device " + kind)

    def qmp_names(self):
        """{(channel, unit): (-device id or None, -drive id or None)}: QMP's names."""
        out = {}
        for pos in self.placed:
            d = self.placed[pos]
            out[pos] = (d.get("qdev_id"), d["id"])
        return out

    def drives(self):
        """(channel, unit, path or None, readonly, cdrom) in position order."""
        out = []
        for channel in (0, 1):
            for unit in (0, 1):
                d = self.placed.get((channel, unit))
                if d is not None:
                    cd = d["media"] == "cdrom"
                    out.append((channel, unit, d["file"], d["readonly"] or cd, cd))
        return out
