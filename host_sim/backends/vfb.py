"""host_sim's vfb backend: the stub domain's PV framebuffer, as dom0 shows it.

Follows QEMU's xenfb backend (hw/display/xenfb.c), which libxl runs in dom0
for a stub domain with vnc/sdl: it offers feature-resize, asks for update
events (request-update) when the frontend offers feature-update, reads the
geometry from struct xenfb_page at connection (checked as QEMU checks it:
stride > 0 and within mem_length, width and height limited to what the
stride and memory hold), maps the page directory and through it the frame
pages read-only, and tells the frontend its refresh period (30 ms while a
viewer is connected, XENFB_NO_REFRESH when the last one leaves).

As fbif.h and QEMU have it, "page-ref" and pd[] (and the directory's entries)
are frame numbers of the frontend's own memory, mapped with dom0's
foreign-mapping privilege (host_sim's map_foreign, xenforeignmemory_map), not
grants: a frame outside the frontend domain's memory is refused, so the
connection fails. Depth 32 only (the surface format stubdm draws): any other
depth is refused.

The frontend is hostile: its geometry, its directory and its out events are
range-checked; a bad update is clipped or dropped (logged), a bad resize is
ignored, an index past the ring's size drops that batch.
"""
import struct

from host_sim.backends.base import BACKEND_DOMID, MAX_PORT, Backend, BackendError
from host_sim.backends.ring import load32, store32
from host_sim.evtchn import EvtchnError
from host_sim.grants import GrantError
from stubdm import pv_abi as A

PAGE = 4096
REFRESH_MS = 30  # QEMU's GUI_REFRESH_INTERVAL_DEFAULT
MAX_FB_PAGES = A.XENFB_PD_USABLE * A.XENFB_FRAMES_PER_PD_PAGE
UP_QUEUE = 8  # rectangles kept per refresh before it becomes the whole frame
_M = 0xFFFFFFFF
MAX_FRAME = (1 << 64) - 1  # xen_pfn_t


class VfbBack(Backend):
    TYPE = "vfb"

    def __init__(self, hv, xs_socket, frontend_domid, devid, log=None):
        super().__init__(hv, xs_socket, frontend_domid, devid, log=log)
        self.page_map = None
        self.fb_map = None
        self.fb = None  # memoryview of the frame pages
        self.fb_len = 0
        self.width = self.height = self.stride = self.offset = 0
        self.depth = 32
        self.feature_update = False
        self.dirty = []  # rectangles changed since the viewer last took them
        self.full = False
        self.generation = 0  # bumps at every update or resize: viewers poll it
        self.viewers = 0
        self.listeners = []  # callables(kind) on "update"/"resize"/"connect"/"disconnect"
        self.stats.update({"updates": 0, "resizes": 0, "bad_events": 0, "clipped": 0})

    def features(self):
        return {"feature-resize": 1}

    # ---- connection: not a ring.h ring ----
    def _connect(self):
        fe = self.frontend
        v = self._read(fe + "/page-ref")
        frame = int(v) if v is not None and v.isdigit() and len(v) <= 20 else None
        port = self._read_int(fe + "/event-channel", 1, MAX_PORT)
        if frame is None or frame > MAX_FRAME or port is None:
            raise BackendError("%s: frontend wrote no valid page-ref/event-channel" % self.name)
        self.page_map = self._map_frames([frame], True, "the shared page")
        self.ring_map = self.page_map  # the base unmaps it at disconnection
        page = self.page_map.mem
        _ic, _ip, _oc, _op, w, h, stride, mem_len, depth = struct.unpack_from(
            A.XENFB_PAGE_HEAD_FMT, page, 0)
        npages = (mem_len + PAGE - 1) // PAGE
        if mem_len == 0 or npages > MAX_FB_PAGES:
            raise BackendError("%s: mem_length %d outside 1..%d" % (self.name, mem_len,
                                                                     MAX_FB_PAGES * PAGE))
        self.fb_len = mem_len
        if not self._configure(w, h, depth, 0, stride):
            raise BackendError("%s: frontend's framebuffer geometry refused" % self.name)
        self._map_fb(page, npages)
        self.feature_update = self._read_int(fe + "/feature-update", 0, 1) == 1
        if self.feature_update:
            self.xs.write(self.path + "/request-update", "1")
        try:
            self.port = self.hv.evtchn.bind_interdomain(BACKEND_DOMID, self.frontend_domid,
                                                       port, callback=self._on_event)
        except EvtchnError as e:
            raise BackendError("%s: binding event channel %d: %s" % (self.name, port, e))
        self.full = True
        self.generation += 1
        if self.viewers:
            self.send_refresh_period(REFRESH_MS)
        self._tell("connect")

    def _map_frames(self, frames, writable, what):
        try:
            return self.hv.grants.map_foreign(BACKEND_DOMID, self.frontend_domid, frames,
                                              writable)
        except GrantError as e:
            raise BackendError("%s: mapping %s: %s" % (self.name, what, e))

    def _map_fb(self, page, npages):
        # As QEMU's xenfb_map_fb: the directory pages, then the frames they list.
        ndirs = (npages * A.XENFB_PD_ENTRY_SIZE + PAGE - 1) // PAGE
        pd = list(struct.unpack_from("<%dQ" % ndirs, page, A.XENFB_PAGE_OFF_PD))
        d = self._map_frames(pd, False, "the page directory")
        try:
            frames = list(struct.unpack_from("<%dQ" % npages, d.mem, 0))
        finally:
            d.unmap()
        self.fb_map = self._map_frames(frames, False, "the framebuffer")
        self.fb = self.fb_map.mem

    def _fbread(self, off, n):
        """n bytes of the frame memory at off (a copy: the frontend draws on)."""
        return bytes(self.fb[off:off + n])

    def _configure(self, width, height, depth, offset, stride):
        """QEMU's xenfb_configure_fb checks; True if the geometry is taken."""
        if depth != 32:
            self.log("%s: can't handle frontend fb depth %d" % (self.name, depth))
            return False
        if stride <= 0 or stride > self.fb_len:
            self.log("%s: invalid frontend stride %d" % (self.name, stride))
            return False
        max_w = stride // 4
        if width < 0 or width > max_w:
            self.log("%s: frontend width %d limited to %d" % (self.name, width, max_w))
            width = max_w
        if offset < 0 or offset >= self.fb_len:
            self.log("%s: invalid frontend offset %d" % (self.name, offset))
            return False
        max_h = (self.fb_len - offset) // stride
        if height < 0 or height > max_h:
            self.log("%s: frontend height %d limited to %d" % (self.name, height, max_h))
            height = max_h
        self.width, self.height, self.depth = width, height, depth
        self.offset, self.stride = offset, stride
        return True

    def _disconnect(self):
        was = self.fb is not None
        self.fb = None
        if self.fb_map is not None:
            self.fb_map.unmap()
        self.fb_map = None
        self.page_map = None
        super()._disconnect()
        if was:
            self.generation += 1
            self._tell("disconnect")

    def _run(self):
        self._event_pending = False
        if self.page_map is not None:
            self.serve()

    def connected_now(self):
        return self.fb is not None and self.state == 4

    # ---- out events (frontend -> us) ----
    def serve(self):
        page = self.page_map.mem
        cons = load32(page, A.XENFB_PAGE_OFF_OUT_CONS)
        prod = load32(page, A.XENFB_PAGE_OFF_OUT_PROD)
        n = (prod - cons) & _M
        if n > A.XENFB_OUT_RING_LEN:
            self.stats["bad_events"] += 1
            self.log("%s: out_prod %d is %d events past out_cons: batch dropped"
                     % (self.name, prod, n))
            n = 0
        resized = updated = False
        for i in range(n):
            off = A.event_offset(A.XENFB_OUT_RING_OFFS, A.XENFB_OUT_RING_LEN,
                                 A.XENFB_OUT_EVENT_SIZE, cons + i)
            ev = bytes(page[off:off + A.XENFB_RESIZE_SIZE])
            self.stats["requests"] += 1
            if ev[0] == A.XENFB_TYPE_UPDATE:
                updated = self._update(*struct.unpack(A.XENFB_UPDATE_FMT,
                                                      ev[:A.XENFB_UPDATE_SIZE])[1:]) or updated
            elif ev[0] == A.XENFB_TYPE_RESIZE:
                _t, w, h, stride, depth, offset = struct.unpack(A.XENFB_RESIZE_FMT, ev)
                if self._configure(w, h, depth, offset, stride):
                    self.stats["resizes"] += 1
                    self.full = True
                    resized = True
            else:
                # fbif.h: an unknown out event is an error.
                self.stats["bad_events"] += 1
                self.log("%s: unknown out event type %d" % (self.name, ev[0]))
        store32(page, A.XENFB_PAGE_OFF_OUT_CONS, prod)
        self.notify()
        if resized or updated:
            self.generation += 1
            self._tell("resize" if resized else "update")

    def _update(self, x, y, w, h):
        self.stats["updates"] += 1
        if len(self.dirty) >= UP_QUEUE:
            self.full = True
        if self.full:
            return True
        x0, y0 = max(x, 0), max(y, 0)
        w2 = min(w, self.width - x0)
        h2 = min(h, self.height - y0)
        if w2 < 0 or h2 < 0:
            self.stats["bad_events"] += 1
            self.log("%s: bogus update %d,%d %dx%d ignored" % (self.name, x, y, w, h))
            return False
        if (x0, y0, w2, h2) != (x, y, w, h):
            self.stats["clipped"] += 1
        if w2 == self.width and h2 > self.height // 2:
            self.full = True  # QEMU's scroll detector
        else:
            self.dirty.append((x0, y0, w2, h2))
        return True

    def take_dirty(self):
        """(full, [rectangles]) changed since the last call."""
        full, rects = self.full, self.dirty
        self.full, self.dirty = False, []
        return full, rects

    # ---- in events (us -> frontend) ----
    def send_refresh_period(self, ms):
        if self.page_map is None or not self.feature_update:
            return False
        page = self.page_map.mem
        cons = load32(page, A.XENFB_PAGE_OFF_IN_CONS)
        prod = load32(page, A.XENFB_PAGE_OFF_IN_PROD)
        if ((prod - cons) & _M) >= A.XENFB_IN_RING_LEN:
            return False  # full (or the frontend lies about in_cons): nothing sent
        ev = bytearray(A.XENFB_IN_EVENT_SIZE)
        struct.pack_into(A.XENFB_REFRESH_PERIOD_FMT, ev, 0, A.XENFB_TYPE_REFRESH_PERIOD,
                         ms & _M)
        off = A.event_offset(A.XENFB_IN_RING_OFFS, A.XENFB_IN_RING_LEN,
                             A.XENFB_IN_EVENT_SIZE, prod)
        page[off:off + A.XENFB_IN_EVENT_SIZE] = ev
        store32(page, A.XENFB_PAGE_OFF_IN_PROD, (prod + 1) & _M)
        self.notify()
        return True

    def viewer(self, delta):
        """A viewer came (+1) or went (-1): the frontend hears the refresh period."""
        before = self.viewers
        self.viewers = max(0, self.viewers + delta)
        if before == 0 and self.viewers:
            self.send_refresh_period(REFRESH_MS)
        elif before and self.viewers == 0:
            self.send_refresh_period(A.XENFB_NO_REFRESH)

    def _tell(self, kind):
        for fn in list(self.listeners):
            fn(kind)

    # ---- the frame, for viewers ----
    def rect(self, x, y, w, h):
        """The pixels of a rectangle (clipped by the caller), rows of w*4 bytes B,G,R,X
        (a bytes-like copy)."""
        if self.fb is None or w <= 0 or h <= 0:
            return bytes(max(w, 0) * max(h, 0) * 4)
        s = self.stride
        base = self.offset + y * s + x * 4
        n = w * 4
        if w * 4 == s:
            return self._fbread(base, n * h)  # no second copy: 3 MiB is page faults
        rd = self._fbread
        return b"".join([rd(base + r * s, n) for r in range(h)])

    def frame(self):
        """(width, height, bytes): the visible frame now."""
        if self.fb is None:
            return 0, 0, b""
        return self.width, self.height, self.rect(0, 0, self.width, self.height)
