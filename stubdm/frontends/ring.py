# The frontend's half of a Xen shared ring (xen/include/public/io/ring.h):
# requests out, responses back, over the page(s) the frontend grants to its
# backend. blkfront's one ring, netfront's tx and rx rings are each one
# FrontRing. The backend is hostile: what it writes to the shared page is
# range-checked, copied once before it is parsed, and a backend caught lying
# about its indices breaks the ring for good (DESIGN.md section 13).
"""FrontRing: the frontend's side of a ring.h shared ring.

    ring = FrontRing(mem, req_size, rsp_size, barrier, name="vbd-768")

mem is a writable memoryview (or bytearray) of the shared ring page(s),
contiguous, page-aligned in the grant sense (len(mem) = PAGE_SIZE << order);
req_size and rsp_size are the sizes of one request and one response
(pv_abi.BLKIF_REQ_SIZE and BLKIF_RSP_SIZE, NETIF_TX_REQ_SIZE and ...);
barrier() is a full memory barrier (the glue's `barrier`; any no-op in tests
where both ends run in one thread). add32(buf, n), if given, is the glue's
atomic_add32 (stubdm.hypervisor's bufioreq_consume): the two indices the
frontend publishes (req_prod, rsp_event) are then updated by one atomic 32-bit
add, never torn. Pass it in a stub domain: MicroPython's struct.pack_into
stores through memcpy, which MiniOS does byte by byte, and a backend reading
half a req_prod sees it run backwards (Linux's blkback then halts the ring).
The constructor initialises the shared header (SHARED_RING_INIT then
FRONT_RING_INIT): do it before granting the page. `start` sets the initial
index (0, as Linux; tests start near 2**32).

Attributes (read only): size (entries, a power of two), req_prod_pvt,
rsp_cons, broken (None, or why the ring was refused).

Requests:
    ring.free_requests() -> int      slots free for new requests (0 once broken)
    ring.new_request() -> memoryview req_size bytes of the next slot, or None
                                      when full or broken; fill it in place
                                      (struct.pack_into); it is published by:
    ring.push_requests() -> bool     RING_PUSH_REQUESTS_AND_CHECK_NOTIFY: True
                                      when the backend must be notified
Responses:
    ring.get_response() -> bytes     the next response, copied out of the
                                      shared page (rsp_size bytes), or None
    ring.unconsumed_responses() -> int
    ring.drain(handle)               handle(response) for each, then final
                                      checks until idle (the usual event loop)
    ring.final_check_for_responses() -> bool
                                      RING_FINAL_CHECK_FOR_RESPONSES: arm
                                      rsp_event and look again; False means
                                      idle until the backend notifies
    ring.in_flight() -> int          requests produced and not yet answered

A backend whose rsp_prod claims more responses than requests pushed (which
covers running beyond the ring's size) or moves rsp_prod backwards is logged
as a guest error and the ring goes broken: get_response() gives None,
push_requests() and final_check_for_responses() give False, new_request()
gives None. The owner (the xenbus frontend) should then close the device.
A value of rsp_prod that fails the check is read twice more before the ring
is refused: MicroPython's struct reads byte by byte, and a read racing the
backend's store can mix old and new bytes; a lying backend's value stays.
The contents of a response (its id, status) are the backend's word: check
them against what is in flight.
"""
import struct

from stubdm import log, pv_abi
from stubdm.compat import const

_M = const(0xFFFFFFFF)
_OFF_REQ_PROD = const(0)
_OFF_REQ_EVENT = const(4)
_OFF_RSP_PROD = const(8)
_OFF_RSP_EVENT = const(12)
_OFF_RING = const(64)


def load32(mem, off):
    """A shared little-endian index read as one 4-byte copy (one load with glibc's
    memcpy): struct.unpack_from reads byte by byte on both runtimes, so it could see
    half of the other end's store. (MiniOS's memcpy is bytewise either way.)"""
    return int.from_bytes(bytes(mem[off:off + 4]), "little")


def store32(mem, off, value):
    """The matching store, one 4-byte copy: struct.pack_into clears the field, then
    writes it byte by byte, so the other end could read 0 (host_sim's BackRing did).
    Where it matters on MiniOS, add32 (the glue's atomic add) publishes instead."""
    mem[off:off + 4] = (value & _M).to_bytes(4, "little")
_REREADS = const(2)


class FrontRing:
    def __init__(self, mem, req_size, rsp_size, barrier, name="ring", start=0, add32=None):
        mem = memoryview(mem)
        entry = req_size if req_size > rsp_size else rsp_size
        size = pv_abi.ring_size(entry, len(mem))
        if req_size <= 0 or rsp_size <= 0 or size == 0:
            raise ValueError("ring of %d bytes cannot hold %d-byte entries" % (len(mem), entry))
        self.mem = mem
        self.name = name
        self.req_size = req_size
        self.rsp_size = rsp_size
        self.entry = entry
        self.size = size
        self.barrier = barrier
        self.add32 = add32
        self._req_prod_word = mem[_OFF_REQ_PROD:_OFF_REQ_PROD + 4]
        self._rsp_event_word = mem[_OFF_RSP_EVENT:_OFF_RSP_EVENT + 4]
        self.broken = None
        start &= _M
        self.req_prod_pvt = start
        self.rsp_cons = start
        self._req_pushed = start  # our own copy of the published req_prod
        self._rsp_seen = start  # the backend's rsp_prod, last read and accepted
        # SHARED_RING_INIT: indices, events one past them, pvt and pad zeroed.
        struct.pack_into("<IIII", mem, 0, start, (start + 1) & _M, start, (start + 1) & _M)
        mem[pv_abi.SRING_OFF_PVT:_OFF_RING] = bytes(_OFF_RING - pv_abi.SRING_OFF_PVT)

    # -- requests ------------------------------------------------------------

    def free_requests(self):
        if self.broken is not None:
            return 0
        return self.size - ((self.req_prod_pvt - self.rsp_cons) & _M)

    def in_flight(self):
        return (self.req_prod_pvt - self.rsp_cons) & _M

    def new_request(self):
        if self.broken is not None or ((self.req_prod_pvt - self.rsp_cons) & _M) >= self.size:
            return None
        off = _OFF_RING + (self.req_prod_pvt & (self.size - 1)) * self.entry
        self.req_prod_pvt = (self.req_prod_pvt + 1) & _M
        return self.mem[off:off + self.req_size]

    def push_requests(self):
        if self.broken is not None:
            return False
        old = self._req_pushed
        new = self.req_prod_pvt
        if new == old:
            return False
        self.barrier()  # the backend sees the requests before the new req_prod
        self._publish(self._req_prod_word, _OFF_REQ_PROD, new)
        self._req_pushed = new
        self.barrier()  # req_prod is visible before we look at req_event
        event = load32(self.mem, _OFF_REQ_EVENT)
        # Notify iff req_event lies in (old, new]: the backend asked to be
        # woken at one of the requests just published.
        return ((new - event) & _M) < ((new - old) & _M)

    # -- responses -----------------------------------------------------------

    def _refresh(self):
        """Reads and checks the backend's rsp_prod; returns unconsumed responses."""
        if self.broken is not None:
            return 0
        rp = load32(self.mem, _OFF_RSP_PROD)
        if rp != self._rsp_seen:
            tries = 0
            while not self._acceptable(rp):
                if tries == _REREADS:
                    self._break("rsp_prod %d outside %d..%d (rsp_cons %d)"
                                % (rp, self._rsp_seen, self._req_pushed, self.rsp_cons))
                    return 0
                tries += 1
                self.barrier()
                rp = load32(self.mem, _OFF_RSP_PROD)
            self._rsp_seen = rp
            self.barrier()  # read the responses only after their rsp_prod
        return (self._rsp_seen - self.rsp_cons) & _M

    def _acceptable(self, rp):
        # No more responses than requests pushed, and never fewer than the
        # backend already announced.
        cons = self.rsp_cons
        now = (rp - cons) & _M
        return ((self._rsp_seen - cons) & _M) <= now <= ((self._req_pushed - cons) & _M)

    def unconsumed_responses(self):
        return self._refresh()

    def get_response(self):
        cons = self.rsp_cons
        if self._rsp_seen == cons and self._refresh() == 0:
            return None
        if self.broken is not None:
            return None
        off = _OFF_RING + (cons & (self.size - 1)) * self.entry
        # One copy: the backend may rewrite the slot, the parser sees this.
        data = bytes(self.mem[off:off + self.rsp_size])
        self.rsp_cons = (cons + 1) & _M
        return data

    def final_check_for_responses(self):
        if self._refresh():
            return True
        if self.broken is not None:
            return False
        self._publish(self._rsp_event_word, _OFF_RSP_EVENT, (self.rsp_cons + 1) & _M)
        self.barrier()  # rsp_event is visible before we look at rsp_prod again
        return self._refresh() != 0

    def drain(self, handle):
        """handle(response) for every response, until the ring is idle and rsp_event is
        armed (the final-check loop every frontend's event handler runs)."""
        while True:
            while True:
                rsp = self.get_response()
                if rsp is None:
                    break
                handle(rsp)
            if not self.final_check_for_responses():
                return

    def _publish(self, word, off, value):
        if self.add32 is None:
            store32(self.mem, off, value)
        else:
            # Only this end writes the word: the add takes it exactly to value.
            cur = load32(self.mem, off)
            self.add32(word, (value - cur) & _M)

    def _break(self, why):
        self.broken = why
        log.guest_error(self.name, "backend broke the ring: " + why)


def take_in_events(page, cons_off, ring_offs, ring_len, event_size, barrier, who, name):
    """The events a backend has put on a fbif.h/kbdif.h in ring (in_cons at cons_off,
    in_prod after it), copied out and given back: a list of event_size-byte records,
    or None when in_prod is more than a ring ahead (logged; what it published is
    skipped, as nothing of it can be trusted)."""
    cons, prod = load32(page, cons_off), load32(page, cons_off + 4)
    n = (prod - cons) & _M
    if n > ring_len:
        log.guest_error(who, "%s: backend's in_prod %d is %d events past in_cons"
                        % (name, prod, n))
        store32(page, cons_off, prod)
        return None
    barrier()  # the events only after their in_prod
    events = []
    for i in range(n):
        off = pv_abi.event_offset(ring_offs, ring_len, event_size, cons + i)
        events.append(bytes(page[off:off + event_size]))
    barrier()  # copied before the slots are given back
    store32(page, cons_off, prod)
    return events
