# kbdfront: the stub domain's PV keyboard and pointer (xen/include/public/io/
# kbdif.h), feeding the emulated i8042's keyboard and PS/2 mouse. dom0's
# backend turns what its display client types and points at into kbdif
# events: Linux input key codes (buttons are keys too: BTN_LEFT...), relative
# motion, or absolute positions when we ask for them (request-abs-pointer,
# when the backend offers feature-abs-pointer) in 0..width/height as the
# backend publishes them.
#
# Keys become scan codes in the set the guest chose for the keyboard (1 or 2;
# the i8042 then translates set 2 to set 1 if its command byte says so, as the
# hardware does). The PS/2 mouse is relative: an absolute position becomes the
# motion from the last one, scaled from the backend's published range (width,
# height) to the guest's screen (the display surface's size), or taken as the
# screen's pixels when the backend publishes no range; starting from the
# top-left corner.
#
# The ring page is granted (page-gref, kbdif.h's key) and named by its frame
# number too (page-ref: "obsolete", but QEMU's xenfb, the backend libxl runs in
# dom0 for a stub domain, maps only that one), as Linux's xen-kbdfront writes
# both. Where our pages have no frame numbers (dom0), page-gref alone.
#
# The backend is hostile: its in_prod is range-checked, events are copied
# before they are parsed, key codes and coordinates are bounded; what makes no
# sense is dropped and logged.
import struct

from stubdm import log, pv_abi as A
from stubdm.frontends.ring import take_in_events
from stubdm.frontends.xenbus import Frontend

PAGE = 4096
BTN_LEFT = 0x110
BTN_RIGHT = 0x111
BTN_MIDDLE = 0x112
BTN_SIDE = 0x113
BTN_EXTRA = 0x114
KEY_SYSRQ = 99
KEY_PAUSE = 119
KEY_MAX = 0x2FF
MAX_COORD = 1 << 16  # absolute coordinates and sizes beyond this are nonsense
MAX_REL = 1 << 16

# Linux key codes 84..143 that are not set-1 code = key code: (key code, set-1
# code, 0xE0-prefixed). 1..83 are their own set-1 codes.
_SET1_HIGH = (
    (85, 0x76, 0), (86, 0x56, 0), (87, 0x57, 0), (88, 0x58, 0), (89, 0x73, 0),
    (90, 0x78, 0), (91, 0x77, 0), (92, 0x79, 0), (93, 0x70, 0), (94, 0x7B, 0),
    (95, 0x5C, 0), (96, 0x1C, 1), (97, 0x1D, 1), (98, 0x35, 1), (100, 0x38, 1),
    (102, 0x47, 1), (103, 0x48, 1), (104, 0x49, 1), (105, 0x4B, 1), (106, 0x4D, 1),
    (107, 0x4F, 1), (108, 0x50, 1), (109, 0x51, 1), (110, 0x52, 1), (111, 0x53, 1),
    (113, 0x20, 1), (114, 0x2E, 1), (115, 0x30, 1), (116, 0x5E, 1), (117, 0x59, 0),
    (121, 0x7E, 0), (124, 0x7D, 0), (125, 0x5B, 1), (126, 0x5C, 1), (127, 0x5D, 1),
    (142, 0x5F, 1), (143, 0x63, 1),
)
_SET1 = {}
for _k, _c, _e in _SET1_HIGH:
    _SET1[_k] = (_e, _c)

# Set 2 from set 1: the inverse of the 8042's set 2 -> set 1 translation
# (stubdm.devices.i8042.translate). F7 is the one key whose set-2 code (0x83)
# is past the codes that translate uniquely.
_SET2_OF_SET1 = None


def _set2_table():
    global _SET2_OF_SET1
    if _SET2_OF_SET1 is None:
        from stubdm.devices.i8042 import translate

        t = bytearray(128)
        for c2 in range(0x7F, 0, -1):  # the lowest set-2 code wins
            c1 = translate(c2)
            if c1 < 0x80:
                t[c1] = c2
        t[0x41] = 0x83
        _SET2_OF_SET1 = bytes(t)
    return _SET2_OF_SET1


def set1_code(keycode):
    """(0xE0-prefixed, set-1 make code) of a Linux key code, or None."""
    if 1 <= keycode <= 83:
        return (0, keycode)
    return _SET1.get(keycode)


def scancodes(keycode, pressed, scanset):
    """The bytes a PS/2 keyboard in scan set 1 or 2 sends for a Linux key code going
    down (pressed) or up; b"" for a key it has none for."""
    if scanset not in (1, 2):
        return b""
    if keycode == KEY_PAUSE:
        # Make only, no break; always the same sequence.
        if not pressed:
            return b""
        if scanset == 1:
            return b"\xe1\x1d\x45\xe1\x9d\xc5"
        return b"\xe1\x14\x77\xe1\xf0\x14\xf0\x77"
    if keycode == KEY_SYSRQ:  # Print Screen: fake shift plus the key
        if scanset == 1:
            return b"\xe0\x2a\xe0\x37" if pressed else b"\xe0\xb7\xe0\xaa"
        return b"\xe0\x12\xe0\x7c" if pressed else b"\xe0\xf0\x7c\xe0\xf0\x12"
    code = set1_code(keycode)
    if code is None:
        return b""
    ext, c1 = code
    out = bytearray()
    if ext:
        out.append(0xE0)
    if scanset == 1:
        out.append(c1 if pressed else c1 | 0x80)
    else:
        c2 = _set2_table()[c1]
        if c2 == 0:
            return b""
        if not pressed:
            out.append(0xF0)
        out.append(c2)
    return bytes(out)


class KbdFront(Frontend):
    TYPE = "vkbd"

    def __init__(self, bus, devid):
        super().__init__(bus, devid)
        self.i8042 = None  # the machine's I8042, set by the device model
        self.display = None  # the Surface the guest's screen is in, for absolute scaling
        self.shared = None
        self.frame = None  # the ring page's frame number (page-ref), if it has one
        self.port = None
        self.abs = False
        self.range_w = 0  # the backend's absolute range; 0: the display's pixels
        self.range_h = 0
        self.last_x = 0
        self.last_y = 0
        self.buttons = 0
        self.down = {}  # keys held: let go of them all if the backend goes
        self.stats = {"keys": 0, "motion": 0, "pos": 0, "buttons": 0, "dropped": 0,
                      "bad": 0}

    # ---- the handshake ----
    def setup(self):
        self.abs = self.xs.read_int(self.backend + "/feature-abs-pointer", 0, 1) == 1
        self.shared = self.hyp.share_pages(self.backend_id, 1)
        self.shared.mem[0:PAGE] = bytes(PAGE)
        self.frame = None
        try:
            self.frame = self.shared.frames()[0]
        except Exception as e:  # HypervisorError (dom0): the grant alone then
            log.info("kbdfront", "%s: no frame number for page-ref (%s): page-gref only"
                     % (self.name, e))
        self.port = self.hyp.bind_unbound_port(self.backend_id)
        self.listen(self.port)

    def publish(self, tx):
        xs, p = self.xs, self.path
        xs.write(p + "/" + A.XENKBD_FIELD_RING_GREF, self.shared.refs[0], tx)
        if self.frame is not None:
            xs.write(p + "/" + A.XENKBD_FIELD_RING_REF, self.frame, tx)
        xs.write(p + "/" + A.XENKBD_FIELD_EVT_CHANNEL, self.port, tx)
        if self.abs:
            xs.write(p + "/" + A.XENKBD_FIELD_REQ_ABS_POINTER, 1, tx)

    def connected(self):
        be = self.backend
        w = self.xs.read_int(be + "/" + A.XENKBD_FIELD_WIDTH, 1, MAX_COORD)
        h = self.xs.read_int(be + "/" + A.XENKBD_FIELD_HEIGHT, 1, MAX_COORD)
        # No range published: positions are the display's pixels (QEMU's xenfb scales
        # them to its surface), 0 here.
        self.range_w = w if w is not None else 0
        self.range_h = h if h is not None else 0
        self.last_x = self.last_y = 0

    def disconnect(self):
        if self.port is not None:
            self.hyp.unbind(self.port)
            self.port = None
        if self.shared is not None:
            self.shared.unshare()
            self.shared = None
        self._release_all()

    def _release_all(self):
        # A key or button held when the backend went would stay down in the guest.
        keys = list(self.down.keys())
        self.down = {}
        for k in keys:
            self._key(k, 0)
        if self.buttons:
            self.buttons = 0
            self._mouse(0, 0, 0)

    # ---- events from the backend ----
    def on_event(self, port):
        sh = self.shared
        if sh is None:
            return
        events = take_in_events(sh.mem, A.XENKBD_PAGE_OFF_IN_CONS, A.XENKBD_IN_RING_OFFS,
                                A.XENKBD_IN_RING_LEN, A.XENKBD_IN_EVENT_SIZE,
                                self.hyp.barrier, "kbdfront", self.name)
        if events is None:
            self.stats["bad"] += 1
            return
        for ev in events:
            self.event(ev[0:16])

    def event(self, ev):
        """One in event (its first 16 bytes)."""
        t = ev[0]
        if t == A.XENKBD_TYPE_KEY:
            _t, pressed, code = struct.unpack(A.XENKBD_KEY_FMT, ev[:A.XENKBD_KEY_SIZE])
            if pressed > 1 or code > KEY_MAX:
                self._bad("key event %d pressed=%d" % (code, pressed))
                return
            if BTN_LEFT <= code <= BTN_EXTRA:
                bit = (1, 2, 4, 8, 16)[code - BTN_LEFT]
                self.buttons = (self.buttons | bit) if pressed else (self.buttons & ~bit)
                self.stats["buttons"] += 1
                self._mouse(0, 0, 0)
                return
            if pressed:
                self.down[code] = True
            else:
                self.down.pop(code, None)
            self._key(code, pressed)
        elif t == A.XENKBD_TYPE_MOTION:
            _t, dx, dy, dz = struct.unpack(A.XENKBD_MOTION_FMT, ev)
            if not (-MAX_REL <= dx <= MAX_REL and -MAX_REL <= dy <= MAX_REL
                    and -MAX_REL <= dz <= MAX_REL):
                self._bad("motion %d,%d,%d" % (dx, dy, dz))
                return
            self.stats["motion"] += 1
            self._mouse(dx, -dy, dz)  # PS/2: y grows upwards
        elif t == A.XENKBD_TYPE_POS:
            _t, ax, ay, dz = struct.unpack(A.XENKBD_POSITION_FMT, ev)
            if not self.abs:
                self._bad("absolute position, never requested")
                return
            rw = self.range_w or MAX_COORD
            rh = self.range_h or MAX_COORD
            if not (0 <= ax <= rw and 0 <= ay <= rh and -MAX_REL <= dz <= MAX_REL):
                self._bad("position %d,%d outside %dx%d" % (ax, ay, rw, rh))
                return
            d = self.display
            if self.range_w == 0 or self.range_h == 0:
                x, y = ax, ay  # already the display's pixels
            else:
                gw, gh = rw, rh
                if d is not None and d.width > 0 and d.height > 0:
                    gw, gh = d.width, d.height
                x = (ax * gw + rw // 2) // rw
                y = (ay * gh + rh // 2) // rh
            dx, dy = x - self.last_x, y - self.last_y
            self.last_x, self.last_y = x, y
            self.stats["pos"] += 1
            self._mouse(dx, -dy, dz)
        # Other types (multi-touch never requested, unknown): ignored (kbdif.h).

    def _bad(self, what):
        self.stats["bad"] += 1
        log.guest_error("kbdfront", "%s: %s dropped" % (self.name, what))

    def _key(self, code, pressed):
        kbd = self.i8042
        if kbd is None:
            self.stats["dropped"] += 1
            return
        data = scancodes(code, pressed, kbd.kbd.scancode_set)
        if not data:
            self.stats["dropped"] += 1
            return
        self.stats["keys"] += 1
        kbd.key_event(data)

    def _mouse(self, dx, dy, dz):
        if self.i8042 is None:
            self.stats["dropped"] += 1
            return
        self.i8042.mouse_event(dx, dy, dz, self.buttons)
