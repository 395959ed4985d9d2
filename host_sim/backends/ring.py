"""BackRing: the backend's side of a Xen shared ring (xen/include/public/io/ring.h).

host_sim's blkback and netback serve the stub domain's frontends through it,
as strictly as Linux's backends do (or more): the frontend is hostile, every
index it writes is checked, every request is copied out of the shared page
once before it is parsed, and a frontend caught lying about req_prod is
logged and not served again.

    ring = BackRing(mem, req_size, rsp_size, name="vbd 1/768", log=print)

mem: writable memoryview (or bytearray, mmap) of the shared ring page(s),
contiguous (len = PAGE_SIZE << ring-page-order), as the frontend initialised
it. req_size, rsp_size: one request's and one response's size (stubdm.pv_abi).
barrier: a full memory barrier; by default a lock's acquire and release (a
locked instruction: a full fence on x86), since the frontend runs in another
process. log(msg): where refusals go (default: stderr). Indices are read and
written as 4-byte slices of the view (one memcpy of 4 aligned bytes: a single
load or store on x86), never with struct: struct.pack_into clears the field
before it stores the value byte by byte, so the frontend could read rsp_prod 0
(netfront then breaks the ring), and unpack_from reads byte by byte, tearing
against the frontend's atomic add.

The ring attaches at the shared rsp_prod, as Linux's blkback does
(BACK_RING_ATTACH): rsp_prod_pvt = req_cons = rsp_prod. A frontend whose
req_prod is already more than the ring's size past it is refused at once.

Attributes (read only): size, req_cons, rsp_prod_pvt, broken (None or why).

Requests:
    ring.get_request() -> bytes        the next request (req_size bytes), copied,
                                        or None: none published, no response slot
                                        left for it (RING_REQUEST_CONS_OVERFLOW),
                                        or broken
    ring.unconsumed_requests() -> int  XEN_RING_NR_UNCONSUMED_REQUESTS
    ring.final_check_for_requests() -> bool
                                        RING_FINAL_CHECK_FOR_REQUESTS: arm
                                        req_event, look again; False = idle until
                                        the frontend notifies
Responses:
    ring.new_response() -> memoryview  rsp_size bytes of the next response slot
                                        (fill in place), or None if every consumed
                                        request already has its response
    ring.push_responses() -> bool      RING_PUSH_RESPONSES_AND_CHECK_NOTIFY: True
                                        when the frontend must be notified
    ring.pending_responses() -> int    requests consumed and not yet answered

Refused (logged once, then the ring is broken and serves nothing): a req_prod
more than size past rsp_prod_pvt (RING_REQUEST_PROD_OVERFLOW: more requests
than the ring holds), and a req_prod that moves backwards.
"""
import sys
import threading

from stubdm import pv_abi

_M = 0xFFFFFFFF
_OFF_REQ_PROD = pv_abi.SRING_OFF_REQ_PROD
_OFF_REQ_EVENT = pv_abi.SRING_OFF_REQ_EVENT
_OFF_RSP_PROD = pv_abi.SRING_OFF_RSP_PROD
_OFF_RSP_EVENT = pv_abi.SRING_OFF_RSP_EVENT
_OFF_RING = pv_abi.SRING_OFF_RING

_fence_lock = threading.Lock()


def full_barrier():
    """A full memory fence from pure Python: an uncontended lock is a locked
    read-modify-write, which x86 orders against every load and store."""
    _fence_lock.acquire()
    _fence_lock.release()


def load32(mem, off):
    """The 4-byte ring index at off, read as one copy (never bytewise)."""
    return int.from_bytes(mem[off:off + 4], "little")


def store32(mem, off, value):
    """Write a ring index as one 4-byte copy, so the peer never sees it half-written."""
    mem[off:off + 4] = (value & _M).to_bytes(4, "little")


def _stderr_log(msg):
    sys.stderr.write("host_sim: " + msg + "\n")


class BackRing:
    def __init__(self, mem, req_size, rsp_size, barrier=full_barrier, name="ring", log=None):
        mem = memoryview(mem)
        entry = max(req_size, rsp_size)
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
        self.log = log if log is not None else _stderr_log
        self.broken = None
        start = load32(mem, _OFF_RSP_PROD)
        self.rsp_prod_pvt = start
        self.req_cons = start
        self._rsp_pushed = start  # our own copy of the published rsp_prod
        self._req_seen = start  # the frontend's req_prod, last read and accepted
        self._refresh()

    # -- requests ------------------------------------------------------------

    def _refresh(self):
        """Reads and checks the frontend's req_prod; returns requests available."""
        if self.broken is not None:
            return 0
        rp = load32(self.mem, _OFF_REQ_PROD)
        base = self.rsp_prod_pvt
        if rp != self._req_seen:
            # RING_REQUEST_PROD_OVERFLOW (more requests than the ring holds
            # past rsp_prod_pvt), or behind what it already published.
            ahead = (rp - base) & _M
            if ahead > self.size or ahead < ((self._req_seen - base) & _M):
                self._break("req_prod %d outside %d..%d (rsp_prod_pvt %d, ring size %d)"
                            % (rp, self._req_seen, (base + self.size) & _M, base, self.size))
                return 0
            self._req_seen = rp
            self.barrier()  # read the requests only after their req_prod
        return (self._req_seen - self.req_cons) & _M

    def unconsumed_requests(self):
        n = self._refresh()
        room = self.size - ((self.req_cons - self.rsp_prod_pvt) & _M)
        return n if n < room else room

    def get_request(self):
        cons = self.req_cons
        if self._req_seen == cons and self._refresh() == 0:
            return None
        if self.broken is not None:
            return None
        if ((cons - self.rsp_prod_pvt) & _M) >= self.size:
            return None  # RING_REQUEST_CONS_OVERFLOW: answer some first
        off = _OFF_RING + (cons & (self.size - 1)) * self.entry
        # One copy: the frontend may rewrite the slot, the parser sees this.
        data = bytes(self.mem[off:off + self.req_size])
        self.req_cons = (cons + 1) & _M
        return data

    def final_check_for_requests(self):
        if self.unconsumed_requests():
            return True
        if self.broken is not None:
            return False
        store32(self.mem, _OFF_REQ_EVENT, self.req_cons + 1)
        self.barrier()  # req_event is visible before we look at req_prod again
        return self.unconsumed_requests() != 0

    # -- responses -----------------------------------------------------------

    def pending_responses(self):
        return (self.req_cons - self.rsp_prod_pvt) & _M

    def new_response(self):
        if self.broken is not None or self.rsp_prod_pvt == self.req_cons:
            return None
        off = _OFF_RING + (self.rsp_prod_pvt & (self.size - 1)) * self.entry
        self.rsp_prod_pvt = (self.rsp_prod_pvt + 1) & _M
        return self.mem[off:off + self.rsp_size]

    def push_responses(self):
        if self.broken is not None:
            return False
        old = self._rsp_pushed
        new = self.rsp_prod_pvt
        if new == old:
            return False
        self.barrier()  # the frontend sees the responses before the new rsp_prod
        store32(self.mem, _OFF_RSP_PROD, new)
        self._rsp_pushed = new
        self.barrier()  # rsp_prod is visible before we look at rsp_event
        event = load32(self.mem, _OFF_RSP_EVENT)
        return ((new - event) & _M) < ((new - old) & _M)

    def _break(self, why):
        self.broken = why
        self.log("%s: frontend broke the ring, not serving it: %s" % (self.name, why))
