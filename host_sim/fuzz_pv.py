"""A hostile backend for the device model's PV frontends, in-process: blkfront, netfront,
fbfront and kbdfront (and stubdm-echo) over fake grants, event channels and xenstore,
with every response and index the backend writes chosen to hurt: ids never sent or sent
twice, statuses and lengths out of range, offsets past the page, rsp_prod far ahead or
backwards, chains that never end. Checks, per event: no exception escapes, the handler
is fast, no I/O is reported successful that the backend did not complete, and nothing
completes twice.

    stubdm-sim fuzz-pv --requests N --seed S     (also run by tests/test_fuzz_pv.py)
"""
import random
import struct
import time

from stubdm import block, log, pv_abi as A
from stubdm.frontends.blkfront import BlkFront
from stubdm.frontends.netfront import NetFront
from stubdm.frontends.xenbus import FrontendBus

PAGE = 4096


class Finding(Exception):
    pass


class FakeShared:
    def __init__(self, count):
        self.buf = bytearray(count * PAGE)
        self.mem = memoryview(self.buf)
        self.refs = tuple(range(1000, 1000 + count))

    def unshare(self):
        self.mem = None


class FakeOwn:
    def __init__(self, count):
        self.buf = bytearray(count * PAGE)
        self.mem = memoryview(self.buf)
        self.frames = tuple(range(5000, 5000 + count))

    def free(self):
        self.mem = None


class FakeHyp:
    def __init__(self):
        self.notifies = 0
        self.next_port = 10

    def share_pages(self, domid, count, writable=True):
        return FakeShared(count)

    def own_pages(self, count):
        return FakeOwn(count)

    def bind_unbound_port(self, domid):
        self.next_port += 1
        return self.next_port

    def unbind(self, port):
        pass

    def notify(self, port):
        self.notifies += 1

    def barrier(self):
        pass

    def atomic_add32(self, buf, n):
        v = struct.unpack_from("<I", buf, 0)[0]
        struct.pack_into("<I", buf, 0, (v + n) & 0xFFFFFFFF)


class FakeXs:
    """What a frontend reads of xenstore: a backend's features and our own keys."""

    def __init__(self, values):
        self.values = dict(values)

    def read(self, path, tx=0):
        return self.values.get(path)

    def read_int(self, path, lo, hi, tx=0):
        v = self.values.get(path)
        if v is None or not v.isdigit():
            return None
        n = int(v)
        return n if lo <= n <= hi else None

    def write(self, path, value, tx=0):
        self.values[path] = str(value)

    def rm(self, path, tx=0):
        self.values.pop(path, None)

    def watch(self, path, token, cb):
        pass

    def unwatch(self, path, token):
        pass

    def transaction(self, body):
        return body(0)


class FakeBus:
    def __init__(self, xs, hyp):
        self.xs = xs
        self.hyp = hyp
        self.home = "/local/domain/2"
        self.ports = {}
        self.later = []  # what a frontend deferred, run by the target

    # The device model's own queue (it needs only self.later).
    defer = FrontendBus.defer
    run_deferred = FrontendBus.run_deferred

    def forget_ports(self, fe):
        pass


BACK = "/local/domain/0/backend/%s/2/%s"


def connect(cls, devtype, devid, features):
    front = "/local/domain/2/device/%s/%s" % (devtype, devid)
    back = BACK % (devtype, devid)
    vals = {front + "/backend": back, front + "/backend-id": "0", back + "/state": "4"}
    for k, v in features.items():
        vals[back + "/" + k] = v
    xs = FakeXs(vals)
    fe = cls(FakeBus(xs, FakeHyp()), devid)
    assert fe.start()
    xs.values[back + "/state"] = "2"
    fe._backend_changed(back + "/state")
    xs.values[back + "/state"] = "4"
    fe._backend_changed(back + "/state")
    if fe.state != 4:
        raise Finding("%s did not connect: %s" % (fe.name, fe.failed))
    return fe


def _garble_rsp_prod(rng, ring, produced):
    """A rsp_prod the backend might write: honest, ahead, behind, or wild."""
    cons = ring.rsp_cons
    pick = rng.random()
    if pick < 0.9:
        return (cons + rng.randint(0, max(0, produced))) & 0xFFFFFFFF
    if pick < 0.95:
        return (cons + rng.randint(produced + 1, produced + ring.size * 3)) & 0xFFFFFFFF
    if pick < 0.98:
        return (cons - rng.randint(1, 50)) & 0xFFFFFFFF
    return rng.getrandbits(32)


class BlkTarget:
    name = "blkfront"

    def __init__(self, rng):
        self.rng = rng
        self.fe = connect(BlkFront, "vbd", "51712", {
            "sectors": "100000", "info": "0", "sector-size": "512",
            "feature-flush-cache": "1", "max-ring-page-order": "2",
            "feature-max-indirect-segments": "256", "feature-persistent": "1"})
        self.done = {}
        self.ids = 0

    def step(self):
        rng, fe = self.rng, self.fe
        if fe.ring is None:  # the frontend gave up on us: reconnect a fresh one
            self.__init__(rng)
            return "reconnected"
        for _ in range(rng.randint(0, 3)):
            self.ids += 1
            key = self.ids
            n = rng.choice((512, 4096, 4096 * 12, 65536, 4096 * 300))
            buf = memoryview(bytearray(n))

            def done(status, key=key):
                if key in self.done:
                    raise Finding("blkfront completed I/O %d twice" % key)
                self.done[key] = status
            fe.submit(rng.choice((block.READ, block.WRITE, block.FLUSH)),
                      rng.randint(0, 100000), [buf], done)
        ring = fe.ring
        if ring is None:
            return
        # The backend answers (or lies) in the shared ring.
        mem = ring.mem
        produced = ring.in_flight()
        k = rng.randint(0, produced + 2)
        pend = list(fe.inflight.keys())
        for i in range(k):
            slot = 64 + ((ring.rsp_cons + i) & (ring.size - 1)) * ring.entry
            rid = rng.choice(pend) if pend and rng.random() < 0.8 else rng.getrandbits(64)
            status = rng.choice((0, 0, 0, -1, -2, rng.randint(-32768, 32767)))
            struct.pack_into(A.BLKIF_RSP_FMT, mem, slot, rid, rng.randint(0, 255), status)
        struct.pack_into("<I", mem, 8, _garble_rsp_prod(rng, ring, k))
        fe.on_event(fe.port)


class NetTarget:
    name = "netfront"

    def __init__(self, rng):
        self.rng = rng
        feats = {"feature-rx-copy": "1", "feature-sg": "1"}
        for k in ("feature-gso-tcpv4", "feature-gso-tcpv6", "feature-ipv6-csum-offload",
                  "feature-no-csum-offload"):
            if rng.random() < 0.5:
                feats[k] = rng.choice(("1", "1", "0", "x"))
        self.fe = connect(NetFront, "vif", "0", feats)
        self.fe.xs.values[self.fe.path + "/mac"] = "00:16:3e:00:00:01"
        self.got = 0
        self.fe.set_receiver(self.receive)

    def receive(self, mv):
        if not 14 <= len(mv) <= 0xFFFF:
            raise Finding("netfront delivered a %d-byte frame" % len(mv))
        self.got += 1
        return self.rng.random() < 0.9  # sometimes the NIC has no room

    def step(self):
        rng, fe = self.rng, self.fe
        if fe.tx is None:
            self.__init__(rng)
            return "reconnected"
        for _ in range(rng.randint(0, 2)):
            frame = bytes(rng.choice((14, 60, 1514, 9000, 65535, 70000, 3)))
            if rng.random() < 0.5:  # an offload the NIC may or may not have been offered
                fe.transmit(frame, rng.choice((1, 2, 4, 8)), rng.choice((0, 1448, 65535, 70000)))
            else:
                fe.transmit(frame)
        before = fe.tx.in_flight() if fe.tx is not None else 0
        if before > fe.tx.size if fe.tx is not None else False:
            raise Finding("netfront has %d TX requests in flight" % before)
        if fe.rx_paused and rng.random() < 0.5:
            fe.rx_resume()
        if fe.tx is None:
            return
        for ring, fmt, make in (
                (fe.tx, A.NETIF_TX_RSP_FMT,
                 lambda: (rng.choice(list(fe.tx_busy) or [0]) if rng.random() < 0.8
                          else rng.getrandbits(16), rng.choice((0, -1, -2, 1)))),
                (fe.rx, A.NETIF_RX_RSP_FMT,
                 lambda: (rng.randint(0, 140), rng.choice((0, 0, 100, 4000, 65535)),
                          rng.choice((0, 0, 4, 4, 2, 8, 0xFFFF)),
                          rng.choice((60, 1514, 4096, 0, -1, 32767, -32768))))):
            produced = ring.in_flight()
            k = rng.randint(0, produced + 2)
            for i in range(k):
                slot = 64 + ((ring.rsp_cons + i) & (ring.size - 1)) * ring.entry
                struct.pack_into(fmt, ring.mem, slot, *make())
            struct.pack_into("<I", ring.mem, 8, _garble_rsp_prod(rng, ring, k))
        fe.on_event(fe.port)
        # The device model's loop runs deferred work (a resume, a burst's rest)
        # after the events of a turn: some turns, never, or several.
        for _ in range(rng.choice((0, 1, 1, 3))):
            fe.bus.run_deferred()
        if len(fe.bus.later) > 2:
            raise Finding("netfront queued %d deferred jobs" % len(fe.bus.later))


class _NetbackGrants:
    """The frontend's granted pages, as host_sim's grant copy sees them."""

    def __init__(self, count):
        self.pages = {ref: bytearray(4096) for ref in range(8, 8 + count)}

    def copy_from(self, mapper, dom, ref, offset, length):
        import errno
        from host_sim.grants import GrantError
        page = self.pages.get(ref)
        if page is None:
            raise GrantError(errno.EINVAL, "grant %d is not granted" % ref)
        if offset < 0 or length < 0 or offset + length > 4096:
            raise GrantError(errno.EINVAL, "copy of %r+%r crosses the page" % (offset, length))
        return bytes(page[offset:offset + length])


class _FakeHv:
    def __init__(self, pages):
        self.grants = _NetbackGrants(pages)


def netback_rig(offload=True, pages=40):
    """host_sim's NetBack's TX side alone, in-process and without a TAP (what it
    would write goes to sent_to_wire), its ring driven by a FrontRing: (nb, ring,
    grants). nb._serve_tx() serves what was pushed."""
    from host_sim.backends.netback import NetBack
    from host_sim.backends.ring import BackRing
    from stubdm.frontends.ring import FrontRing
    nb = NetBack.__new__(NetBack)  # no xenstore, event channel or TAP
    nb.offload = offload
    nb.name = "vif 2/0"
    nb.frontend_domid = 2
    nb.logged = []
    nb.log = nb.logged.append
    nb.stats = {k: 0 for k in ("tx_packets", "tx_errors", "tx_bytes", "tx_gso",
                               "tx_csum_blank")}
    nb.tap = -1
    nb.sent_to_wire = []
    nb.hv = _FakeHv(pages)
    mem = bytearray(4096)
    ring = FrontRing(mem, A.NETIF_TX_REQ_SIZE, A.NETIF_TX_RSP_SIZE, lambda: None,
                     name="fe tx")
    nb.tx = BackRing(mem, A.NETIF_TX_REQ_SIZE, A.NETIF_TX_RSP_SIZE, name="be tx",
                     log=nb.logged.append)
    nb.notify = lambda: None
    return nb, ring, nb.hv.grants


def tcp_packet(rng, v4=True, payload=0, udp=False):
    """An Ethernet frame with an IPv4/IPv6 TCP (or UDP) packet of payload bytes,
    lengths right, checksums not filled."""
    l4 = 8 if udp else 20
    pay = bytes(rng.getrandbits(8) for _ in range(min(payload, 64))) * (payload // 64 + 1)
    pay = pay[:payload]
    seg = bytearray(l4) + pay
    if udp:
        struct.pack_into(">HHH", seg, 0, 1000, 2000, len(seg))
    else:
        struct.pack_into(">HHIIBB", seg, 0, 1000, 2000, 1, 0, 5 << 4, 0x18)
    eth = bytearray(b"\x00\x16\x3e\x00\x00\x01\x00\x16\x3e\x00\x00\x02")
    if v4:
        ip = bytearray(20)
        struct.pack_into(">BBHHHBBH4s4s", ip, 0, 0x45, 0, 20 + len(seg), 1, 0, 64,
                         17 if udp else 6, 0, b"\x0a\0\0\x0f", b"\x0a\0\0\x02")
        return bytes(eth + b"\x08\x00" + ip + seg)
    ip = bytearray(40)
    struct.pack_into(">IHBB16s16s", ip, 0, 6 << 28, len(seg), 17 if udp else 6, 64,
                     b"\xfe\x80" + bytes(14), b"\xfe\x80" + bytes(13) + b"\x02")
    return bytes(eth + b"\x86\xdd" + ip + seg)


def put_tx_packet(ring, grants, frame, flags=0, extras=(), lie=0):
    """netfront's requests for frame (its pages from grants), the extras (each
    8 bytes of a netif_extra_info) after the first request; lie: added to the
    first slot's size. Returns how many requests were put (0: no room)."""
    n = len(frame)
    slots = max(1, (n + 4095) // 4096)
    if ring.free_requests() < slots + len(extras) or slots > len(grants.pages):
        return 0
    refs = sorted(grants.pages)
    pos = 0
    for i in range(slots):
        chunk = frame[pos:pos + 4096]
        grants.pages[refs[i]][0:len(chunk)] = chunk
        fl = (A.NETTXF_more_data if i + 1 < slots else 0) | (flags if i == 0 else 0)
        if i == 0 and extras:
            fl |= A.NETTXF_extra_info
        size = (n + lie) & 0xFFFF if i == 0 else len(chunk)
        struct.pack_into(A.NETIF_TX_REQ_FMT, ring.new_request(), 0, refs[i], 0, fl, i, size)
        if i == 0:
            for e in extras:
                ring.new_request()[0:8] = e
        pos += 4096
    ring.push_requests()
    return slots + len(extras)


def gso_extra(size, gtype, eflags=0, etype=A.XEN_NETIF_EXTRA_TYPE_GSO):
    return struct.pack(A.NETIF_EXTRA_GSO_FMT, etype, eflags, size, gtype, 0)


class NetbackTarget:
    """A hostile netfront against host_sim's netback's TX parsing: csum_blank on
    any frame, GSO extras of any size and type, extra-info types never
    negotiated, chains that lie. Every request must be answered, nothing may
    escape, and what reaches the wire must carry a sound vnet header."""

    name = "netback"

    def __init__(self, rng):
        self.rng = rng
        self.nb, self.ring, self.grants = netback_rig(offload=rng.random() < 0.9)
        self.put = 0

    def step(self):
        rng, nb, ring = self.rng, self.nb, self.ring
        for _ in range(rng.randint(1, 3)):
            kind = rng.random()
            if kind < 0.6:
                frame = tcp_packet(rng, v4=rng.random() < 0.7,
                                   payload=rng.choice((0, 10, 1448, 3000, 20000, 65000)),
                                   udp=rng.random() < 0.2)
                if len(frame) > 0xFFFF:
                    frame = frame[:0xFFFF]
            else:
                frame = bytes(rng.getrandbits(8) for _ in range(rng.choice((3, 14, 60, 200))))
            flags = rng.choice((0, A.NETTXF_csum_blank,
                                A.NETTXF_csum_blank | A.NETTXF_data_validated,
                                A.NETTXF_data_validated))
            extras = []
            if rng.random() < 0.5:
                for _ in range(rng.choice((1, 1, 1, 1, 2, 5))):
                    extras.append(gso_extra(rng.choice((1448, 1448, 0, rng.getrandbits(16))),
                                            rng.choice((1, 1, 1, 2, 0, 3, 255)),
                                            rng.choice((0, 0, 0, A.XEN_NETIF_EXTRA_FLAG_MORE)),
                                            rng.choice((1,) * 6 + (0, 2, 4, 5, 200))))
            lie = rng.choice((0,) * 8 + (1, -1, 4096, -30))
            self.put += put_tx_packet(ring, self.grants, frame, flags, extras, lie)
        nb._serve_tx()
        while True:
            rsp = ring.get_response()
            if rsp is None:
                break
            self.put -= 1
        if self.put != 0 and nb.tx.broken is None:
            raise Finding("netback left %d requests unanswered" % self.put)
        self.put = 0
        for hdr, frame in nb.sent_to_wire:
            fl, gtype, hdr_len, gsize, start, off = struct.unpack("<BBHHHH", hdr)
            if fl & 1 and start + off + 2 > len(frame):
                raise Finding("a vnet header's checksum at %d+%d past a %d-byte frame"
                              % (start, off, len(frame)))
            if gtype and (gsize == 0 or hdr_len > len(frame) or not fl & 1):
                raise Finding("a GSO vnet header (size %d, headers %d) on %d bytes"
                              % (gsize, hdr_len, len(frame)))
            if not 14 <= len(frame) <= 0xFFFF:
                raise Finding("netback sent a %d-byte frame" % len(frame))
        nb.sent_to_wire = []
        if nb.tx.broken is not None:
            self.__init__(rng)
            return "reconnected"


class _Line:
    def set_level(self, level):
        pass


class FbTarget:
    """fbfront under a backend that lies about out_cons and in_prod and sends in events
    of any type, while an adapter resizes and draws: the frontend must never write more
    out events than the ring holds free, and every event it writes must be sound."""

    name = "fbfront"

    def __init__(self, rng):
        from stubdm.frontends import fbfront
        self.rng = rng
        self.fb = fbfront
        feats = {}
        if rng.random() < 0.8:
            feats["feature-resize"] = "1"
        if rng.random() < 0.9:
            feats["request-update"] = "1"
        self.fe = connect(fbfront.FbFront, "vfb", "0", feats)
        self.seen = 0  # out_prod the honest backend has checked up to

    def step(self):
        rng, fe = self.rng, self.fe
        if fe.shared is None or fe.port is None:
            self.__init__(rng)
            return "reconnected"
        page = fe.shared.mem
        for _ in range(rng.randint(0, 3)):
            op = rng.random()
            if op < 0.2:
                fe.resize(rng.choice((0, -1, 1, 640, 720, 1024, 1920, 4000, 1 << 20)),
                          rng.choice((0, 1, 400, 480, 768, 1080, 3000)))
            elif fe.width > 0:
                w, h = rng.randint(1, fe.width), rng.randint(1, fe.height)
                fe.update(rng.randint(0, fe.width - w), rng.randint(0, fe.height - h), w, h)
            if fe.stride * fe.height > fe.max_bytes or (fe.buf is not None and
                                                         len(fe.buf) < fe.stride * fe.height):
                raise Finding("fbfront's geometry %dx%d stride %d exceeds its memory"
                              % (fe.width, fe.height, fe.stride))
        cons, prod = struct.unpack_from("<II", page, A.XENFB_PAGE_OFF_OUT_CONS)
        was_honest = ((prod - cons) & 0xFFFFFFFF) <= A.XENFB_OUT_RING_LEN
        fe.flush()
        cons, prod = struct.unpack_from("<II", page, A.XENFB_PAGE_OFF_OUT_CONS)
        honest = ((prod - cons) & 0xFFFFFFFF) <= A.XENFB_OUT_RING_LEN
        if was_honest and not honest:
            raise Finding("fbfront wrote %d out events into a ring of %d"
                          % ((prod - cons) & 0xFFFFFFFF, A.XENFB_OUT_RING_LEN))
        # The backend reads what is new, checks it, then lies or not about out_cons.
        for i in range((prod - self.seen) & 0xFFFFFFFF if honest else 0):
            off = A.event_offset(A.XENFB_OUT_RING_OFFS, A.XENFB_OUT_RING_LEN,
                                 A.XENFB_OUT_EVENT_SIZE, self.seen + i)
            ev = bytes(page[off:off + A.XENFB_RESIZE_SIZE])
            if ev[0] == A.XENFB_TYPE_UPDATE:
                _t, x, y, w, h = struct.unpack(A.XENFB_UPDATE_FMT, ev[:A.XENFB_UPDATE_SIZE])
                if x < 0 or y < 0 or w <= 0 or h <= 0 or x + w > 1 << 16 or y + h > 1 << 16:
                    raise Finding("fbfront sent update %d,%d %dx%d" % (x, y, w, h))
            elif ev[0] == A.XENFB_TYPE_RESIZE:
                _t, w, h, stride, depth, offset = struct.unpack(A.XENFB_RESIZE_FMT, ev)
                if w <= 0 or h <= 0 or stride < w * 4 or stride * h > fe.max_bytes \
                        or depth != 32 or offset != 0:
                    raise Finding("fbfront sent resize %dx%d stride %d depth %d"
                                  % (w, h, stride, depth))
            else:
                raise Finding("fbfront sent out event type %d" % ev[0])
        self.seen = prod
        pick = rng.random()
        if pick < 0.7:
            struct.pack_into("<I", page, A.XENFB_PAGE_OFF_OUT_CONS, prod)
        elif pick > 0.9:
            struct.pack_into("<I", page, A.XENFB_PAGE_OFF_OUT_CONS, rng.getrandbits(32))
        # else it consumes nothing
        # In events: refresh periods and junk, with honest or wild in_prod.
        ic, ip = struct.unpack_from("<II", page, A.XENFB_PAGE_OFF_IN_CONS)
        for i in range(rng.randint(0, 4)):
            off = A.event_offset(A.XENFB_IN_RING_OFFS, A.XENFB_IN_RING_LEN,
                                 A.XENFB_IN_EVENT_SIZE, ip + i)
            page[off:off + 8] = struct.pack(A.XENFB_REFRESH_PERIOD_FMT,
                                            rng.choice((1, 1, 0, 2, 255)),
                                            rng.choice((0, 30, 0xFFFFFFFF)))
        ip2 = (ip + rng.randint(0, 4)) if rng.random() < 0.9 else rng.getrandbits(32)
        struct.pack_into("<I", page, A.XENFB_PAGE_OFF_IN_PROD, ip2 & 0xFFFFFFFF)
        fe.on_event(fe.port)


class KbdTarget:
    """kbdfront under a backend writing any in event with any fields and any in_prod,
    into a real i8042: nothing escapes, the i8042's queues stay bounded."""

    name = "kbdfront"

    def __init__(self, rng):
        from stubdm.devices.i8042 import I8042
        from stubdm.frontends.kbdfront import KbdFront
        self.rng = rng
        self.fe = connect(KbdFront, "vkbd", "0", {"feature-abs-pointer": "1",
                                                  "width": str(rng.choice((1, 800, 32767))),
                                                  "height": str(rng.choice((1, 600, 32767)))})
        self.kbd = I8042(_Line(), _Line(), lambda: None)
        self.fe.i8042 = self.kbd
        self.kbd.write(4, 1, 0xA8)  # aux port on, mouse reporting on
        self.kbd.write(4, 1, 0xD4)
        self.kbd.write(0, 1, 0xF4)

    def step(self):
        rng, fe = self.rng, self.fe
        if fe.shared is None:
            self.__init__(rng)
            return "reconnected"
        page = fe.shared.mem
        ic, ip = struct.unpack_from("<II", page, A.XENKBD_PAGE_OFF_IN_CONS)
        for i in range(rng.randint(0, 8)):
            off = A.event_offset(A.XENKBD_IN_RING_OFFS, A.XENKBD_IN_RING_LEN,
                                 A.XENKBD_IN_EVENT_SIZE, ip + i)
            t = rng.choice((1, 3, 3, 4, 5, 0, 2, 99))
            big = rng.choice((0, 1, -1, 100, 1 << 20, -(1 << 31), (1 << 31) - 1))
            if t == A.XENKBD_TYPE_KEY:
                ev = struct.pack(A.XENKBD_KEY_FMT, t, rng.choice((0, 1, 2, 255)),
                                 rng.choice((rng.randint(0, 0x120), 0x110, 0xFFFFFFFF)))
            else:
                ev = struct.pack("<B3xiii", t, big, rng.randint(-500, 40000), big)
            page[off:off + len(ev)] = ev
        ip2 = (ip + rng.randint(0, 8)) if rng.random() < 0.9 else rng.getrandbits(32)
        struct.pack_into("<I", page, A.XENKBD_PAGE_OFF_IN_PROD, ip2 & 0xFFFFFFFF)
        fe.on_event(fe.port)
        # The guest reads now and then.
        for _ in range(rng.randint(0, 20)):
            if self.kbd.read(4, 1) & 1:
                self.kbd.read(0, 1)
        for dev in (self.kbd.kbd, self.kbd.mouse):
            if len(dev.q) > 64:
                raise Finding("i8042 queue of %d bytes" % len(dev.q))
        if len(fe.down) > 0x300:
            raise Finding("kbdfront holds %d keys down" % len(fe.down))


TARGETS = {"blkfront": BlkTarget, "netfront": NetTarget, "fbfront": FbTarget,
           "kbdfront": KbdTarget, "netback": NetbackTarget}
ALL = ("blkfront", "netfront", "fbfront", "kbdfront", "netback")


def run(requests, seed, targets=("blkfront", "netfront"), slow_ms=50.0, progress=None):
    # slow_ms: a step moves up to a few MiB through the frontend (Python slice copies):
    # 50 ms is far above that, and far below a hang.
    """Returns (steps done, findings [(target, step, message)])."""
    findings = []
    verbose, log.verbose = log.verbose, 0
    try:
        for name in targets:
            rng = random.Random("%s:%d" % (name, seed))
            t = TARGETS[name](rng)
            last = time.monotonic()
            for step in range(requests):
                t0 = time.perf_counter()
                try:
                    what = t.step()
                except Finding as e:
                    findings.append((name, step, str(e)))
                    break
                except Exception as e:  # what escapes the frontend is the finding
                    findings.append((name, step, "%s: %s" % (type(e).__name__, e)))
                    break
                ms = (time.perf_counter() - t0) * 1e3
                if ms > slow_ms and what != "reconnected":  # set-up is the fake's cost
                    findings.append((name, step, "a step took %.1f ms" % ms))
                if progress and time.monotonic() - last > 5:
                    last = time.monotonic()
                    progress("%s: %d steps" % (name, step))
    finally:
        log.verbose = verbose
    return requests * len(targets), findings


def cmd(args):
    import sys

    t0 = time.perf_counter()
    n, findings = run(args.requests, args.seed, targets=ALL,
                      progress=lambda m: sys.stderr.write("fuzz-pv: %s\n" % m))
    dt = time.perf_counter() - t0
    print("fuzz-pv: %d steps (%s) in %.1f s, %.0f/s, seed %d"
          % (n, ", ".join(ALL), dt, n / dt, args.seed))
    for name, step, msg in findings:
        print("  finding: %s step %d: %s (rerun with --seed %d)" % (name, step, msg, args.seed))
    if not findings:
        print("  findings: none")
    return 1 if findings else 0


def add_command(sub, common):
    p = sub.add_parser("fuzz-pv", parents=[common],
                       help="a hostile backend against the device model's PV frontends "
                       "(blkfront, netfront, fbfront, kbdfront), in-process")
    p.add_argument("--requests", type=int, default=20000, metavar="N",
                   help="backend steps per frontend (default 20000)")
    p.add_argument("--seed", type=int, default=1, metavar="S")
    p.set_defaults(func=cmd)
