# The stubdm-echo frontend (stubdm/pv_echo.py has the protocol): a ring in
# one granted page, data pages granted once at connection and reused for
# every request, one event channel. Each round fills every data page with a
# known pattern, sends one request per page and checks each reply against
# what the backend's advertised transform must give.
import struct

from stubdm import log, pv_echo
from stubdm.compat import ticks_diff, ticks_us
from stubdm.frontends.ring import FrontRing
from stubdm.frontends.xenbus import Frontend
from stubdm.hypervisor import HypervisorError

DATA_PAGES = 16
PAGE = 4096
MAX_GO = 100000  # rounds one echo-go may ask for

_BASE = bytes(range(256))
_XBASE = bytes([b ^ pv_echo.XOR_BYTE for b in range(256)])


def _pattern(base, seed):
    seed &= 0xFF
    return (base[seed:] + base[:seed]) * (PAGE // 256)


class EchoFrontend(Frontend):
    TYPE = pv_echo.TYPE

    def __init__(self, bus, devid):
        super().__init__(bus, devid)
        self.ring = None
        self.ring_pages = None
        self.data = None
        self.port = None
        self.transform = "none"
        self.rounds_left = 0
        self.rounds_done = 0
        self.good = 0
        self.bad = 0
        self.waiting = {}  # request id -> data page index
        self.next_id = 1
        self.seed = 0
        self.in_round = False
        self.pings_left = 0
        self.ping_t0 = 0
        self._go_token = "stubdm-echo-go:" + devid
        self._ping_token = "stubdm-echo-ping:" + devid

    def setup(self):
        t = self.xs.read(self.backend + "/feature-transform")
        if t not in ("xor", "none"):
            if t is not None:
                log.guest_error("echo", "%s: unknown feature-transform %r" % (self.name, t[:16]))
            t = "none"
        self.transform = t
        hyp = self.hyp
        self.ring_pages = hyp.share_pages(self.backend_id, 1)
        self.data = hyp.share_pages(self.backend_id, DATA_PAGES)
        self.ring = FrontRing(self.ring_pages.mem, pv_echo.REQ_SIZE, pv_echo.RSP_SIZE,
                              hyp.barrier, name=self.name, add32=hyp.atomic_add32)
        self.port = hyp.bind_unbound_port(self.backend_id)
        self.listen(self.port)

    def publish(self, tx):
        self.xs.write(self.path + "/ring-ref", self.ring_pages.refs[0], tx)
        self.xs.write(self.path + "/event-channel", self.port, tx)

    def connected(self):
        self.waiting = {}
        self.xs.watch(self.path + "/echo-go", self._go_token, self._go)
        self.xs.watch(self.path + "/echo-ping", self._ping_token, self._ping)

    def disconnect(self):
        if self.backend is not None and self.ring is not None:
            self.xs.unwatch(self.path + "/echo-go", self._go_token)
            self.xs.unwatch(self.path + "/echo-ping", self._ping_token)
        self.pings_left = 0
        if self.port is not None:
            self.hyp.unbind(self.port)
            self.port = None
        self.ring = None
        for shared in (self.data, self.ring_pages):
            if shared is not None:
                shared.unshare()
        self.data = self.ring_pages = None
        self.waiting = {}
        self.in_round = False

    # ---- the data path ----
    def _go(self, _path):
        n = self.xs.read_int(self.path + "/echo-go", 0, MAX_GO)
        if n is None or n == 0:
            return
        self.xs.rm(self.path + "/echo-go")  # taken: the next write asks again
        self.rounds_left += n
        self._kick()

    def _ping(self, _path):
        """echo-ping = N: N empty requests one after another (each waits for its
        reply): the ring and event channel round trip; echo-ping-us = the total."""
        n = self.xs.read_int(self.path + "/echo-ping", 0, MAX_GO)
        if not n or self.ring is None or self.waiting or self.in_round:
            return
        self.xs.rm(self.path + "/echo-ping")
        self.pings_left = n
        self.ping_t0 = ticks_us()
        self._send_ping()

    def _send_ping(self):
        slot = self.ring.new_request()
        if slot is None:
            self.pings_left = 0
            return
        rid = self.next_id
        self.next_id += 1
        self.waiting[rid] = None
        struct.pack_into(pv_echo.REQ_FORMAT, slot, 0, rid, self.data.refs[0], 0, 0)
        if self.ring.push_requests():
            self.hyp.notify(self.port)

    def _kick(self):
        ring = self.ring
        if ring is None or self.waiting or self.rounds_left <= 0 or ring.broken:
            return
        self.rounds_left -= 1
        self.in_round = True
        self.seed = (self.seed + 1) & 0xFF
        mem = self.data.mem
        for i in range(DATA_PAGES):
            slot = ring.new_request()
            if slot is None:
                break
            off = (i * 64) % 1024
            length = PAGE - off - i
            base = i * PAGE
            mem[base:base + PAGE] = _pattern(_BASE, self.seed + i)
            rid = self.next_id
            self.next_id += 1
            self.waiting[rid] = (i, off, length)
            struct.pack_into(pv_echo.REQ_FORMAT, slot, 0, rid, self.data.refs[i], off, length)
        if ring.push_requests():
            self.hyp.notify(self.port)

    def on_event(self, port):
        ring = self.ring
        if ring is None:
            return
        ring.drain(self._check)
        if ring.broken:
            self._fail("ring broken: " + ring.broken)
            return
        if self.pings_left and not self.waiting:
            self.pings_left -= 1
            if self.pings_left:
                self._send_ping()
            else:
                self.xs.write(self.path + "/echo-ping-us", ticks_diff(ticks_us(), self.ping_t0))
                self._kick()  # rounds asked for meanwhile
        elif self.in_round and not self.waiting:
            self.in_round = False
            self._round_done()

    def _check(self, rsp):
        rid, status, _pad, length = struct.unpack(pv_echo.RSP_FORMAT, rsp)
        if rid not in self.waiting:
            log.guest_error("echo", "%s: response to unknown request %d" % (self.name, rid))
            self.bad += 1
            return
        w = self.waiting.pop(rid)
        if w is None:  # a ping: an empty request, an empty reply
            if status == pv_echo.STATUS_OK and length == 0:
                self.good += 1
            else:
                self.bad += 1
            return
        i, off, want_len = w
        base = self.transform == "xor" and _XBASE or _BASE
        expect = _pattern(base, self.seed + i)[off:off + want_len]
        got = self.data.mem[i * PAGE + off:i * PAGE + off + want_len]
        if status == pv_echo.STATUS_OK and length == want_len and bytes(got) == expect:
            self.good += 1
        else:
            self.bad += 1

    def _round_done(self):
        self.rounds_done += 1
        if self.rounds_left > 0:
            self._kick()
            return
        try:
            self.xs.write(self.path + "/echo-done", "%d %d %d"
                          % (self.rounds_done, self.good, self.bad))
        except HypervisorError as e:
            log.info("echo", "%s: %s" % (self.name, e))
