# fbfront: the stub domain's PV framebuffer (xen/include/public/io/fbif.h),
# as the Surface the display adapter draws into (stubdm/display.py). dom0's
# backend shows the frame (to VNC clients) straight from the pages we share.
#
# The frame lives in FB_BYTES of the stub domain's own memory, taken once when
# the device is found and kept for the frontend's life, so the adapter draws
# into the same buffer whether or not a backend is connected (a reconnecting
# backend maps the same pages again). One page holds struct xenfb_page: the
# in/out event rings, the geometry, and pd[]: the frame numbers of the
# page-directory pages, each listing the frame numbers of 512 frame pages.
#
# Frame numbers, not grants (fbif.h, as MiniOS's fbfront does): "page-ref" is
# the frame number of the xenfb_page, pd[] and the directory hold frame
# numbers; dom0's backend (QEMU's xenfb) maps them with its foreign-mapping
# privilege. So the pages are our own (hyp.own_pages), granted to nobody.
# ("page-gref" is kbdif.h's key, for the keyboard's grant: kbdfront.)
#
# Out events (sent only as the backend asks, fbif.h): XENFB_TYPE_UPDATE when
# the backend wrote request-update (we offer feature-update), the rectangles
# of one refresh coalesced (at most MAX_RECTS, else their bounding box, and a
# bounding box again when the ring has no room); XENFB_TYPE_RESIZE when it
# offers feature-resize. Without feature-resize the published geometry is
# fixed: a smaller mode is drawn in its top-left corner, a larger one refused.
# In events: XENFB_TYPE_REFRESH_PERIOD (0 = nobody is looking: updates are
# held back, one full-frame update when someone looks again); others ignored.
#
# The backend is hostile: its ring indices are range-checked (a backend that
# claims more than the ring holds has its events dropped, logged), events are
# copied before they are parsed.
import struct

from stubdm import log, pv_abi as A
from stubdm.display import BYTES_PER_PIXEL
from stubdm.frontends.ring import take_in_events
from stubdm.frontends.xenbus import Frontend

PAGE = 4096
FB_BYTES = 8 * 1024 * 1024  # 1920x1080 at 32 bpp fits
FB_PAGES = FB_BYTES // PAGE
PD_PAGES = (FB_PAGES + A.XENFB_FRAMES_PER_PD_PAGE - 1) // A.XENFB_FRAMES_PER_PD_PAGE
DEFAULT_WIDTH = 640
DEFAULT_HEIGHT = 480
DEPTH = 32
MAX_DIM = 16384  # pixels a side: more is no mode (and past what viewers take)
MAX_RECTS = 8  # per refresh; QEMU's backend keeps 8 before it redraws everything
_M = 0xFFFFFFFF


class FbFront(Frontend):
    """A PV framebuffer, and the display.Surface an adapter draws into (the same
    interface, not the class: MicroPython takes single inheritance only)."""

    TYPE = "vfb"

    def __init__(self, bus, devid):
        super().__init__(bus, devid)
        self.max_bytes = FB_BYTES
        self.width = 0
        self.height = 0
        self.stride = 0
        self.buf = None
        self.fb = None  # OwnPages: the frame
        self.dir = None  # OwnPages: the page directory
        self.shared = None  # OwnPages: struct xenfb_page
        self.port = None
        self.feature_resize = False
        self.update_wanted = False
        self.refresh_period = None  # ms, as the backend advised; None: never said
        self.pub_width = 0  # the geometry the backend was given (page, or last resize)
        self.pub_height = 0
        self.pub_stride = 0
        self.rects = []  # this refresh's changed rectangles
        self.resize_pending = False
        self.full_pending = False
        self.stats = {"updates": 0, "resizes": 0, "merged": 0, "held": 0, "in_events": 0,
                      "bad_in": 0}

    # ---- memory: taken once, for the frontend's life ----
    def start(self):
        if not super().start():
            return False
        hyp = self.hyp
        try:
            self.fb = hyp.own_pages(FB_PAGES)
            self.dir = hyp.own_pages(PD_PAGES)
            self.shared = hyp.own_pages(1)
        except Exception as e:  # HypervisorError: out of memory, or dom0 (none of its own)
            self._fail("the framebuffer's memory: %s" % e)
            self._free_memory()
            return False
        self.buf = self.fb.mem
        frames = self.fb.frames
        dmem = self.dir.mem
        dmem[0:len(dmem)] = bytes(len(dmem))
        for i in range(FB_PAGES):
            struct.pack_into("<Q", dmem, i * A.XENFB_PD_ENTRY_SIZE, frames[i])
        if self.width == 0:
            self._geometry(DEFAULT_WIDTH, DEFAULT_HEIGHT)
        return True

    def _free_memory(self):
        for sh in (self.fb, self.dir, self.shared):
            if sh is not None:
                try:
                    sh.free()
                except Exception:
                    pass
        self.fb = self.dir = self.shared = None
        self.buf = None

    def stop(self):
        super().stop()
        self._free_memory()

    # ---- the handshake ----
    def setup(self):
        if self.shared is None:
            self._fail("no framebuffer memory")
            return
        be = self.backend
        self.feature_resize = self.xs.read_int(be + "/feature-resize", 0, 1) == 1
        page = self.shared.mem
        page[0:PAGE] = bytes(PAGE)
        # The backend starts from the geometry drawn now.
        w, h, s = self.width, self.height, self.stride
        self.pub_width, self.pub_height, self.pub_stride = w, h, s
        struct.pack_into(A.XENFB_PAGE_HEAD_FMT, page, 0, 0, 0, 0, 0, w, h, s, FB_BYTES, DEPTH)
        dframes = self.dir.frames
        for i in range(PD_PAGES):
            struct.pack_into("<Q", page, A.XENFB_PAGE_OFF_PD + i * A.XENFB_PD_ENTRY_SIZE,
                             dframes[i])
        self.rects = []
        self.resize_pending = False
        self.full_pending = True  # the backend sees the whole frame once connected
        self.refresh_period = None
        self.port = self.hyp.bind_unbound_port(self.backend_id)
        self.listen(self.port)

    def publish(self, tx):
        xs, p = self.xs, self.path
        xs.write(p + "/page-ref", self.shared.frames[0], tx)
        xs.write(p + "/event-channel", self.port, tx)
        xs.write(p + "/protocol", "x86_64-abi", tx)
        xs.write(p + "/feature-update", 1, tx)

    def connected(self):
        self.update_wanted = self.xs.read_int(self.backend + "/request-update", 0, 1) == 1
        self.flush()

    def disconnect(self):
        if self.port is not None:
            self.hyp.unbind(self.port)
            self.port = None
        self.update_wanted = False
        self.rects = []

    def _geometry(self, width, height):
        self.width = width
        self.height = height
        self.stride = width * BYTES_PER_PIXEL

    # ---- the Surface ----
    def fits(self, width, height):
        if not (0 < width <= MAX_DIM and 0 < height <= MAX_DIM) or self.buf is None:
            return False
        if width * BYTES_PER_PIXEL * height > self.max_bytes:
            return False
        if self.port is not None and not self.feature_resize:
            # The backend knows one geometry: the mode must fit inside it.
            return width <= self.pub_width and height <= self.pub_height
        return True

    def resize(self, width, height):
        if not self.fits(width, height):
            return False
        if self.port is not None and not self.feature_resize:
            self.width = width
            self.height = height
            self.stride = self.pub_stride  # drawn in the corner of the published frame
        else:
            self._geometry(width, height)
            if self.port is not None:
                self.resize_pending = True
        self.stats["resizes"] += 1
        self.rects = []
        self.full_pending = True
        return True

    def update(self, x, y, w, h):
        if w <= 0 or h <= 0 or self.full_pending:
            return
        rects = self.rects
        if len(rects) >= MAX_RECTS:
            self.stats["merged"] += 1
            rects.append((x, y, w, h))
            self.rects = [_bbox(rects)]
        else:
            rects.append((x, y, w, h))

    def wants_frames(self):
        """False while the backend says nobody looks (XENFB_NO_REFRESH): an adapter may
        skip rendering; the next look gets a full frame."""
        return self.refresh_period != A.XENFB_NO_REFRESH

    def flush(self):
        """End of a refresh: send what changed (and a resize first) as out events."""
        if self.backend_state != 4 or self.port is None or self.shared is None:
            return
        if not (self.resize_pending or self.full_pending or self.rects):
            return
        page = self.shared.mem
        cons, prod = struct.unpack_from("<II", page, A.XENFB_PAGE_OFF_OUT_CONS)
        used = (prod - cons) & _M
        if used > A.XENFB_OUT_RING_LEN:
            log.guest_error("fbfront", "%s: backend's out_cons %d is %d events behind "
                            "out_prod" % (self.name, cons, used))
            return
        free = A.XENFB_OUT_RING_LEN - used
        sent = 0
        if self.resize_pending and self.feature_resize:
            if free == 0:
                return
            ev = bytearray(A.XENFB_OUT_EVENT_SIZE)
            struct.pack_into(A.XENFB_RESIZE_FMT, ev, 0, A.XENFB_TYPE_RESIZE, self.width,
                             self.height, self.stride, DEPTH, 0)
            self._put(page, prod, ev)
            prod = (prod + 1) & _M
            free -= 1
            sent += 1
            self.resize_pending = False
            self.pub_width, self.pub_height, self.pub_stride = \
                self.width, self.height, self.stride
        if self.update_wanted and self.refresh_period != A.XENFB_NO_REFRESH:
            rects = self.rects
            if self.full_pending:
                rects = [(0, 0, self.width, self.height)]
            if rects and free > 0:
                if len(rects) > free:
                    self.stats["merged"] += 1
                    rects = [_bbox(rects)]
                for x, y, w, h in rects:
                    ev = bytearray(A.XENFB_OUT_EVENT_SIZE)
                    struct.pack_into(A.XENFB_UPDATE_FMT, ev, 0, A.XENFB_TYPE_UPDATE,
                                     x, y, w, h)
                    self._put(page, prod, ev)
                    prod = (prod + 1) & _M
                    sent += 1
                self.stats["updates"] += len(rects)
                self.rects = []
                self.full_pending = False
        elif self.rects or self.full_pending:
            if self.update_wanted:
                # Nobody looks: hold one full frame for when someone does.
                self.stats["held"] += 1
                self.rects = []
                self.full_pending = True
            else:
                # The backend redraws on its own (no request-update): nothing to say.
                self.rects = []
                self.full_pending = False
        if sent:
            self.hyp.barrier()  # the events before the index that publishes them
            struct.pack_into("<I", page, A.XENFB_PAGE_OFF_OUT_PROD, prod)
            self.hyp.notify(self.port)

    def _put(self, page, idx, ev):
        off = A.event_offset(A.XENFB_OUT_RING_OFFS, A.XENFB_OUT_RING_LEN,
                             A.XENFB_OUT_EVENT_SIZE, idx)
        page[off:off + A.XENFB_OUT_EVENT_SIZE] = ev

    # ---- in events ----
    def on_event(self, port):
        if self.shared is None:
            return
        events = take_in_events(self.shared.mem, A.XENFB_PAGE_OFF_IN_CONS,
                                A.XENFB_IN_RING_OFFS, A.XENFB_IN_RING_LEN,
                                A.XENFB_IN_EVENT_SIZE, self.hyp.barrier, "fbfront", self.name)
        if events is None:
            self.stats["bad_in"] += 1
            return
        for ev in events:
            self.stats["in_events"] += 1
            if ev[0] == A.XENFB_TYPE_REFRESH_PERIOD:
                period = struct.unpack(A.XENFB_REFRESH_PERIOD_FMT,
                                       ev[0:A.XENFB_REFRESH_PERIOD_SIZE])[1]
                if period != A.XENFB_NO_REFRESH and self.refresh_period == A.XENFB_NO_REFRESH:
                    self.full_pending = True
                self.refresh_period = period
            # Unknown in events are ignored (fbif.h).
        # The backend also signals when it consumed out events: room for held rects.
        self.flush()


def _bbox(rects):
    x0 = y0 = 1 << 30
    x1 = y1 = -(1 << 30)
    for x, y, w, h in rects:
        if x < x0:
            x0 = x
        if y < y0:
            y0 = y
        if x + w > x1:
            x1 = x + w
        if y + h > y1:
            y1 = y + h
    return (x0, y0, x1 - x0, y1 - y0)
