# QMP, the QEMU Machine Protocol, as libxl speaks it to a stub domain's device
# model (DESIGN.md 7): JSON objects over a vchan (stubdm/vchan.py) whose
# server end is published at device-model/<guest>/qmp-vchan under our home;
# dom0's vchan-socket-proxy turns it into libxl's unix socket.
#
# The session as QEMU runs it (qapi/qmp-dispatch.c, monitor/qmp.c): a greeting
# with our version, then only qmp_capabilities until it is sent; replies are
# {"return": ...} or {"error": {"class", "desc"}}, with the request's "id"
# copied back; events (STOP, RESUME, SHUTDOWN, DEVICE_TRAY_MOVED) go to every
# negotiated session. A client that sends bad JSON, a non-object, an unknown
# command or bad arguments gets QEMU's error for it and the session goes on.
from stubdm import log, qjson
from stubdm.compat import const
from stubdm.vchan import OFF_CLI_LIVE as V_OFF_CLI_LIVE
from stubdm.vchan import VchanServer

# libxl reads the version from the greeting: >= 2.8 for blockdev-change-medium
# with "id" (libxl_disk.c); this is the QEMU whose interface we follow.
QEMU_VERSION = (9, 2, 0)
MAX_MESSAGE = const(65536)  # longer input is refused, and the parser starts afresh
MAX_PENDING_OUT = const(1 << 20)  # replies queued for a client that doesn't read
FDSET_FIRST = const(2)  # fdset 1 is libxl's save stream (/dev/fdset/1)

_WS = b" \t\r\n"


def _now():
    try:
        import time

        t = time.time()
        s = int(t)
        return {"seconds": s, "microseconds": int((t - s) * 1000000)}
    except Exception:
        return {"seconds": 0, "microseconds": 0}


class QmpError(Exception):
    def __init__(self, desc, cls="GenericError"):
        super().__init__(desc)
        self.desc = desc
        self.cls = cls


class Splitter:
    """Cuts a byte stream into top-level JSON texts (objects, arrays, or stray
    tokens up to the end of a line), tracking strings and escapes."""

    def __init__(self):
        self.buf = bytearray()
        self.depth = 0
        self.in_str = False
        self.esc = False
        self.junk = False

    def _reset(self):
        self.buf = bytearray()
        self.depth = 0
        self.in_str = self.esc = self.junk = False

    def feed(self, data):
        """The complete texts in data (bytes each), and None for one that grew too long."""
        out = []
        for c in data:
            if self.depth == 0 and not self.junk:
                if c in _WS:
                    continue
                if c == 0x7B or c == 0x5B:  # { [
                    self.depth = 1
                    self.buf.append(c)
                    continue
                self.junk = True
            if self.junk:
                if c == 0x0A:
                    out.append(bytes(self.buf))
                    self._reset()
                else:
                    self.buf.append(c)
                    if len(self.buf) > MAX_MESSAGE:
                        out.append(None)
                        self._reset()
                continue
            self.buf.append(c)
            if len(self.buf) > MAX_MESSAGE:
                out.append(None)
                self._reset()
                continue
            if self.in_str:
                if self.esc:
                    self.esc = False
                elif c == 0x5C:  # backslash
                    self.esc = True
                elif c == 0x22:
                    self.in_str = False
            elif c == 0x22:
                self.in_str = True
            elif c == 0x7B or c == 0x5B:
                self.depth += 1
            elif c == 0x7D or c == 0x5D:
                self.depth -= 1
                if self.depth == 0:
                    out.append(bytes(self.buf))
                    self._reset()
        return out


def _args(req, spec):
    """Check a command's arguments against spec: ((name, type, required), ...)."""
    a = req.get("arguments", {})
    if not isinstance(a, dict):
        raise QmpError("QMP input member 'arguments' must be an object")
    names = [s[0] for s in spec]
    for k in a:
        if k not in names:
            raise QmpError("Parameter '%s' is unexpected" % k)
    for name, kind, required in spec:
        if name not in a:
            if required:
                raise QmpError("Parameter '%s' is missing" % name)
            continue
        v = a[name]
        ok = (kind == "str" and isinstance(v, str)) or \
            (kind == "bool" and isinstance(v, bool)) or \
            (kind == "int" and isinstance(v, int) and not isinstance(v, bool)) or \
            (kind == "any")
        if not ok:
            what = {"str": "string", "bool": "boolean", "int": "integer"}.get(kind, kind)
            raise QmpError("Invalid parameter type for '%s', expected: %s" % (name, what))
    return a


class QmpServer:
    """The QMP monitor on one vchan. dm is the device model's side of it
    (stubdm/main.py's DeviceModel): its machine, pause/resume, quit, the CD
    slots by QMP id, and the save/restore hooks."""

    def __init__(self, hyp, xs, path, dm, remote=0):
        self.dm = dm
        self.path = path
        self.chan = VchanServer(hyp, xs, path, remote, name="qmp")
        self.chan.on_data = self._readable
        self.chan.on_connect = self._connected
        self.chan.on_disconnect = self._disconnected
        self.port = self.chan.port
        self.negotiated = False
        self.split = Splitter()
        self.out = b""
        self.fdsets = []  # [fdset-id, fd number, opaque, source disk]
        self.next_fd = 64
        self.stats = {"commands": 0, "errors": 0, "sessions": 0}
        for qid, medium in dm.media():
            medium.on_source_change = self._source_changed_cb(qid)
            if medium.source is not None:
                self._add_fdset(qid, medium.source)

    # ---- the channel ----
    def on_port(self, port):
        """True if port is our vchan's (the main loop's dispatch)."""
        if port != self.chan.port:
            return False
        self.chan.on_event()
        self.port = self.chan.port  # a dropped ring comes back on a new port
        if self.chan.connected:
            self._flush()
        return True

    def poll(self):
        """Look at the ring without an event (the main loop, each turn): what a lost
        or late notification left there is served within a turn."""
        if self.chan.mem is not None and (self.chan.connected or
                                          self.chan.mem[V_OFF_CLI_LIVE] == 1):
            self.on_port(self.chan.port)

    def _connected(self):
        self.stats["sessions"] += 1
        self.negotiated = False
        self.split = Splitter()
        self.out = b""
        major, minor, micro = QEMU_VERSION
        self._send({"QMP": {"version": {"qemu": {"major": major, "minor": minor,
                                                 "micro": micro},
                                        "package": "stubdm"},
                            "capabilities": []}})

    def _disconnected(self):
        self.negotiated = False
        self.out = b""
        self.split = Splitter()

    def _readable(self):
        for _ in range(64):  # a flood is served in slices, the rest on the next event
            data = self.chan.read(4096)
            if not data:
                return
            for text in self.split.feed(data):
                self._handle(text)
                if not self.chan.connected:
                    return

    def _send(self, obj):
        if len(self.out) > MAX_PENDING_OUT:
            return  # the client reads nothing: it loses replies, we keep our memory
        self.out += qjson.dumps(obj).encode() + b"\r\n"
        self._flush()

    def _flush(self):
        while self.out and self.chan.connected:
            n = self.chan.write(self.out)
            if not n:
                return
            self.out = self.out[n:]

    def event(self, name, data=None):
        if self.negotiated and self.chan.connected:
            ev = {"event": name, "timestamp": _now()}
            if data is not None:
                ev["data"] = data
            self._send(ev)

    def close(self):
        self.chan.close()

    # ---- one request ----
    def _handle(self, text):
        rid = None
        try:
            if text is None:
                raise QmpError("JSON parse error, message too long")
            try:
                req = qjson.loads(text)
            except ValueError:
                raise QmpError("JSON parse error, invalid JSON")
            if not isinstance(req, dict):
                raise QmpError("QMP input must be a JSON object")
            rid = req.get("id")
            for k in req:
                if k not in ("execute", "arguments", "id", "control"):
                    raise QmpError("QMP input member '%s' is unexpected" % k)
            cmd = req.get("execute")
            if cmd is None:
                raise QmpError("QMP input lacks member 'execute'")
            if not isinstance(cmd, str):
                raise QmpError("QMP input member 'execute' must be a string")
            self.stats["commands"] += 1
            if not self.negotiated and cmd != "qmp_capabilities":
                raise QmpError("Expecting capabilities negotiation with 'qmp_capabilities'",
                               "CommandNotFound")
            f = _COMMANDS.get(cmd)
            if f is None:
                raise QmpError("The command %s has not been found" % cmd[:64],
                               "CommandNotFound")
            ret = f(self, req)
        except QmpError as e:
            self.stats["errors"] += 1
            log.guest("qmp", "%s" % e.desc)
            reply = {"error": {"class": e.cls, "desc": e.desc}}
            if rid is not None:
                reply["id"] = rid
            self._send(reply)
            return
        reply = {"return": {} if ret is None else ret}
        if rid is not None:
            reply["id"] = rid
        self._send(reply)
        after = getattr(self, "_after", None)
        if after is not None:
            self._after = None
            after()

    # ---- fdsets: the stub domain's CD vbds, as its own add-fd makes them ----
    def _add_fdset(self, qid, disk):
        used = [s[0] for s in self.fdsets]
        n = FDSET_FIRST
        while n in used:
            n += 1
        self.fdsets.append([n, self.next_fd, "stub-devid:" + _devid_of(qid), disk])
        self.next_fd += 1
        return n

    def _source_changed_cb(self, qid):
        def changed(disk):
            # A new medium in the vbd (its backend's params): the stub domain
            # offers it again, as a Linux stub domain's add-fd does for libxl.
            for s in self.fdsets:
                if s[3] is disk:
                    return
            self._add_fdset(qid, disk)
        return changed

    def medium_by_id(self, a):
        qid = a.get("id", a.get("device"))
        if qid is None:
            raise QmpError("Need exactly one of 'device' and 'id'")
        for q, medium in self.dm.media():
            if q == qid or q == "ide-" + qid:
                return q, medium
        raise QmpError("Device '%s' not found" % qid[:64], "DeviceNotFound")


def _devid_of(qid):
    return qid[4:] if qid.startswith("ide-") else qid


# ---- the commands libxl sends ----
def _capabilities(s, req):
    a = _args(req, (("enable", "any", False),))
    if s.negotiated:
        raise QmpError("Capabilities negotiation is already complete, command ignored",
                       "CommandNotFound")
    if a.get("enable"):
        raise QmpError("Capability '%s' not available" % str(a["enable"])[:32])
    s.negotiated = True


def _query_status(s, req):
    _args(req, ())
    running = s.dm.is_running()
    st = "running" if running else "paused"
    if s.dm.machine_suspended():
        st = "suspended"
    return {"status": st, "running": running}


def _stop(s, req):
    _args(req, ())
    if s.dm.is_running():
        s.dm.pause()
        s.event("STOP")


def _cont(s, req):
    _args(req, ())
    if not s.dm.is_running():
        s.dm.resume()
        s.event("RESUME")


def _quit(s, req):
    _args(req, ())

    def after():
        s.event("SHUTDOWN", {"guest": False, "reason": "host-qmp-quit"})
        s.dm.quit()
    s._after = after


def _query_chardev(s, req):
    _args(req, ())
    out = []
    specs = s.dm.serial_specs()
    for i in range(len(specs)):
        out.append({"label": "serial%d" % i, "filename": specs[i], "frontend-open": True})
    return out


def _query_pci(s, req):
    _args(req, ())
    pci = s.dm.machine.pci
    devices = []
    for devfn in pci.devfns():
        def cfg(off, size):
            return pci.config_read(devfn, off, size)
        devices.append({
            "bus": 0, "slot": devfn >> 3, "function": devfn & 7,
            "class_info": {"class": cfg(0x0A, 2)},
            "id": {"vendor": cfg(0, 2), "device": cfg(2, 2),
                   "subsystem-vendor": cfg(0x2C, 2), "subsystem": cfg(0x2E, 2)},
            "irq_pin": cfg(0x3D, 1), "qdev_id": "", "regions": [],
        })
    return [{"bus": 0, "devices": devices}]


def _save_devices(s, req):
    a = _args(req, (("filename", "str", True), ("live", "bool", False)))
    s.dm.save_devices_state(a["filename"], a.get("live", False))


def _load_devices(s, req):
    a = _args(req, (("filename", "str", True),))
    s.dm.load_devices_state(a["filename"])


def _dirty_log(s, req):
    a = _args(req, (("enable", "bool", True),))
    # Xen tracks the guest's dirty pages itself (log-dirty); the device model's
    # own DMA writes are reported with modified_memory whatever this says.
    s.dm.dirty_log = a["enable"]


def _eject(s, req):
    a = _args(req, (("device", "str", False), ("id", "str", False), ("force", "bool", False)))
    qid, medium = s.medium_by_id(a)
    if medium.locked and not a.get("force", False):
        # QEMU's answer while the guest holds the door (PREVENT ALLOW MEDIUM REMOVAL).
        raise QmpError("Device '%s' is locked and force was not specified, wait for tray "
                       "to open and try again" % qid)
    if medium.has_medium():
        medium.eject()
        s.event("DEVICE_TRAY_MOVED", {"device": "", "id": qid, "tray-open": True})


def _change_medium(s, req):
    a = _args(req, (("device", "str", False), ("id", "str", False), ("filename", "str", True),
                    ("format", "str", False), ("read-only-mode", "str", False),
                    ("force", "bool", False)))
    qid, medium = s.medium_by_id(a)
    if medium.locked and not a.get("force", False) and medium.has_medium():
        raise QmpError("Device '%s' is locked and force was not specified, wait for tray "
                       "to open and try again" % qid)
    fmt = a.get("format", "raw")
    if fmt not in ("raw", "host_device"):
        raise QmpError("Unknown driver '%s'" % fmt[:32])
    name = a["filename"]
    disk = None
    if name.startswith("/dev/fdset/"):
        n = name[11:]
        if not n.isdigit() or len(n) > 9:
            raise QmpError("Could not open '%s': Invalid argument" % name[:64])
        for fs in s.fdsets:
            if fs[0] == int(n):
                disk = fs[3]
        if disk is None:
            raise QmpError("Could not open '%s': No such file or directory" % name[:64])
    else:
        disk = s.dm.open_medium(name)
        if disk is None:
            raise QmpError("Could not open '%s': No such file or directory" % name[:64])
    if medium.has_medium():
        medium.eject()
        s.event("DEVICE_TRAY_MOVED", {"device": "", "id": qid, "tray-open": True})
    medium.insert(disk)
    s.event("DEVICE_TRAY_MOVED", {"device": "", "id": qid, "tray-open": False})


def _add_fd(s, req):
    _args(req, (("fdset-id", "int", False), ("opaque", "str", False)))
    raise QmpError("No file descriptor supplied via SCM_RIGHTS")


def _query_fdsets(s, req):
    _args(req, ())
    return [{"fdset-id": fs[0], "fds": [{"fd": fs[1], "opaque": fs[2]}]} for fs in s.fdsets]


def _remove_fd(s, req):
    a = _args(req, (("fdset-id", "int", True), ("fd", "int", False)))
    n = a["fdset-id"]
    for fs in s.fdsets:
        if fs[0] == n and ("fd" not in a or a["fd"] == fs[1]):
            s.fdsets.remove(fs)
            return
    if "fd" in a:
        raise QmpError("File descriptor named 'fdset-id:%d, fd:%d' not found" % (n, a["fd"]))
    raise QmpError("File descriptor named 'fdset-id:%d' not found" % n)


def _wakeup(s, req):
    _args(req, ())
    if not s.dm.machine_suspended():
        raise QmpError("Unable to wake up: guest is not in suspended state")
    s.dm.wakeup()


_COMMANDS = {
    "qmp_capabilities": _capabilities,
    "query-status": _query_status,
    "stop": _stop,
    "cont": _cont,
    "quit": _quit,
    "query-chardev": _query_chardev,
    "query-pci": _query_pci,
    "xen-save-devices-state": _save_devices,
    "xen-load-devices-state": _load_devices,
    "xen-set-global-dirty-log": _dirty_log,
    "eject": _eject,
    "blockdev-change-medium": _change_medium,
    "add-fd": _add_fd,
    "query-fdsets": _query_fdsets,
    "remove-fd": _remove_fd,
    "system_wakeup": _wakeup,
}


class DmControl:
    """What QMP sees of the device model (stubdm/main.py's DeviceModel)."""

    def __init__(self, dm, opts):
        self.dmm = dm
        self.machine = dm.machine
        self.specs = list(opts.get("serial") or [])
        self.dirty_log = False

    def media(self):
        return getattr(self.dmm, "media", [])

    def is_running(self):
        return not self.dmm.paused

    def pause(self):
        # As QEMU's vm_stop: device clocks stand still and the vCPUs' requests
        # wait (libxl has paused the vCPUs too); disk I/O in flight completes.
        self.dmm.paused = True

    def resume(self):
        self.dmm.paused = False  # the main loop serves what waited

    def quit(self):
        self.dmm.quit_requested = True

    def serial_specs(self):
        return self.specs

    def machine_suspended(self):
        return bool(getattr(self.machine, "suspended", False))

    def wakeup(self):
        # qemu-xen's wakeup: HVM_PARAM_ACPI_S_STATE back to 0, the guest resumes.
        self.machine.suspended = False
        set_state = getattr(self.machine.platform, "set_acpi_s_state", None)
        if set_state is not None:
            set_state(0)

    def save_devices_state(self, filename, live):
        """xen-save-devices-state: stubdm/savestate.py's record stream, written once
        every disk request has finished. /dev/fdset/N is the stub domain's save stream."""
        save = getattr(self.dmm, "save_devices", None)
        if save is None:
            raise QmpError("xen-save-devices-state: this device model has no device "
                           "state support (stubdm/savestate.py)")
        if live:
            raise QmpError("xen-save-devices-state: live saving is not supported "
                           "(save after stop)")
        path = filename
        if filename.startswith("/dev/fdset/"):
            path = self.dmm.save_stream
        try:
            data = save()
            f = open(path, "wb")
            try:
                f.write(data)
            finally:
                f.close()
        except OSError as e:
            raise QmpError("Could not open '%s': %s" % (filename[:64], e))
        except Exception as e:  # savestate.StateError: what it could not save, said
            raise QmpError("xen-save-devices-state: %s" % e)

    def load_devices_state(self, filename):
        """xen-load-devices-state: all of the file read and checked before any device
        changes (savestate.load_machine)."""
        if self.is_running():
            raise QmpError("xen-load-devices-state: the guest must be stopped first")
        try:
            from stubdm.savestate import load_machine
        except ImportError:
            raise QmpError("xen-load-devices-state: no device state support")
        try:
            f = open(filename, "rb")
            try:
                data = f.read()
            finally:
                f.close()
        except OSError as e:
            raise QmpError("Could not open '%s': %s" % (filename[:64], e))
        try:
            load_machine(self.machine, data)
        except Exception as e:
            raise QmpError("xen-load-devices-state: %s" % e)

    def open_medium(self, name):
        """A medium named by path: one of the stub domain's own vbds (/dev/xvdX)."""
        from stubdm.disks import DriveError, open_drive

        if not name.startswith("/dev/xvd"):
            return None
        try:
            return open_drive(name, True, True, self.dmm)
        except DriveError:
            return None
