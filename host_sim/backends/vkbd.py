"""host_sim's vkbd backend: a viewer's keyboard and pointer, as kbdif events.

As QEMU's xenfb input backend (hw/display/xenfb.c) that libxl runs in dom0
for a stub domain: it offers feature-abs-pointer and, if the frontend asks
(request-abs-pointer), reports positions (XENKBD_TYPE_POS) in 0..width and
0..height as it publishes them (RANGE both: kbdif.h's raw pointer range, so
that any frame size maps back to exact pixels), else relative motion
(XENKBD_TYPE_MOTION). Buttons are key events BTN_LEFT/RIGHT/MIDDLE; the wheel
is rel_z (negative = up, as Linux's kbdfront reads it). A full ring drops the
event (QEMU: EAGAIN). Out events from the frontend are consumed unread.

The shared page is the one "page-ref" names, a frame number of the frontend's
own memory mapped with dom0's foreign-mapping privilege, as QEMU's common_bind
does: QEMU reads no "page-gref" (kbdif.h's grant), so a frontend that writes
only that one does not connect there, nor here.

The frontend is hostile: an in_cons that claims more room than the ring has
is taken as a full ring (logged).
"""
import struct

from host_sim.backends.base import BACKEND_DOMID, MAX_PORT, Backend, BackendError
from host_sim.backends.ring import load32, store32
from host_sim.evtchn import EvtchnError
from host_sim.grants import GrantError
from stubdm import pv_abi as A

RANGE = 0x7FFF
MAX_FRAME = (1 << 64) - 1  # xen_pfn_t
BTN_LEFT = 0x110
BTN_RIGHT = 0x111
BTN_MIDDLE = 0x112
_M = 0xFFFFFFFF


class VkbdBack(Backend):
    TYPE = "vkbd"

    def __init__(self, hv, xs_socket, frontend_domid, devid, log=None):
        super().__init__(hv, xs_socket, frontend_domid, devid, log=log)
        self.page_map = None
        self.abs = False
        self.buttons = 0
        self.last = None  # the last pointer position, for relative motion
        self.stats.update({"sent": 0, "dropped": 0})

    def features(self):
        return {"feature-abs-pointer": 1, "width": RANGE, "height": RANGE}

    def _connect(self):
        fe = self.frontend
        v = self._read(fe + "/page-ref")
        frame = int(v) if v is not None and v.isdigit() and len(v) <= 20 else None
        port = self._read_int(fe + "/event-channel", 1, MAX_PORT)
        if frame is None or frame > MAX_FRAME or port is None:
            raise BackendError("%s: frontend wrote no valid page-ref/event-channel" % self.name)
        try:
            self.page_map = self.hv.grants.map_foreign(BACKEND_DOMID, self.frontend_domid,
                                                       [frame], True)
        except GrantError as e:
            raise BackendError("%s: mapping the shared page: %s" % (self.name, e))
        self.ring_map = self.page_map  # the base unmaps it
        self.abs = self._read_int(fe + "/request-abs-pointer", 0, 1) == 1
        try:
            self.port = self.hv.evtchn.bind_interdomain(BACKEND_DOMID, self.frontend_domid,
                                                       port, callback=self._on_event)
        except EvtchnError as e:
            raise BackendError("%s: binding event channel %d: %s" % (self.name, port, e))
        self.buttons = 0
        self.last = None

    def _disconnect(self):
        self.page_map = None
        super()._disconnect()

    def _run(self):
        self._event_pending = False
        pm = self.page_map
        if pm is not None:
            cons = load32(pm.mem, A.XENKBD_PAGE_OFF_OUT_CONS)
            prod = load32(pm.mem, A.XENKBD_PAGE_OFF_OUT_PROD)
            if cons != prod:
                store32(pm.mem, A.XENKBD_PAGE_OFF_OUT_CONS, prod)
                self.notify()

    # ---- events to the frontend ----
    def _send(self, ev):
        pm = self.page_map
        if pm is None or self.state != 4:
            return False
        page = pm.mem
        cons = load32(page, A.XENKBD_PAGE_OFF_IN_CONS)
        prod = load32(page, A.XENKBD_PAGE_OFF_IN_PROD)
        used = (prod - cons) & _M
        if used >= A.XENKBD_IN_RING_LEN:
            if used > A.XENKBD_IN_RING_LEN:
                self.log("%s: frontend's in_cons %d is %d behind in_prod" % (self.name, cons,
                                                                          used))
            self.stats["dropped"] += 1
            return False
        off = A.event_offset(A.XENKBD_IN_RING_OFFS, A.XENKBD_IN_RING_LEN,
                             A.XENKBD_IN_EVENT_SIZE, prod)
        buf = bytearray(A.XENKBD_IN_EVENT_SIZE)
        buf[:len(ev)] = ev
        page[off:off + A.XENKBD_IN_EVENT_SIZE] = buf
        store32(page, A.XENKBD_PAGE_OFF_IN_PROD, (prod + 1) & _M)
        self.stats["sent"] += 1
        self.notify()
        return True

    def key(self, keycode, down):
        """A Linux input key code going down or up."""
        return self._send(struct.pack(A.XENKBD_KEY_FMT, A.XENKBD_TYPE_KEY, 1 if down else 0,
                                      keycode & _M))

    def pointer(self, x, y, buttons, wheel, width, height):
        """The pointer at pixel x, y of a width x height frame, buttons (bit 0 left,
        1 middle, 2 right, as RFB), wheel clicks (negative = up) since the last call."""
        width = max(width, 1)
        height = max(height, 1)
        x = min(max(x, 0), width - 1)
        y = min(max(y, 0), height - 1)
        if self.abs:
            ax = (x * RANGE + width // 2) // width
            ay = (y * RANGE + height // 2) // height
            moved = self.last != (x, y)
            if moved or wheel:
                self._send(struct.pack(A.XENKBD_POSITION_FMT, A.XENKBD_TYPE_POS, ax, ay,
                                       wheel))
        else:
            lx, ly = self.last if self.last is not None else (0, 0)
            if (x, y) != (lx, ly) or wheel:
                self._send(struct.pack(A.XENKBD_MOTION_FMT, A.XENKBD_TYPE_MOTION, x - lx,
                                       y - ly, wheel))
        self.last = (x, y)
        for bit, code in ((1, BTN_LEFT), (2, BTN_MIDDLE), (4, BTN_RIGHT)):
            if (buttons ^ self.buttons) & bit:
                self.key(code, buttons & bit)
        self.buttons = buttons & 7
