# stubdm.frontends.ring's FrontRing driven as blkfront and netfront drive it,
# with the backend's part played by this script writing the shared page with
# struct (host_sim's BackRing is CPython-only). A deterministic pseudo-random
# stream of requests, partial service, notifications and final checks over
# indices that start near 2**32, then hostile backends. Compared between
# CPython and MicroPython by tests/test_micropython_portable.py.
import struct
import sys

from common import Lcg, hexs

from stubdm import log
from stubdm import pv_abi as P
from stubdm.frontends.ring import FrontRing

log.verbose = 0

STEPS = int(sys.argv[1]) if len(sys.argv) > 1 else 400
M = 0xFFFFFFFF


class Barriers:
    def __init__(self):
        self.n = 0

    def __call__(self):
        self.n += 1


class Add32:
    """The glue's atomic_add32(buf, n), by struct."""

    def __init__(self):
        self.n = 0

    def __call__(self, word, n):
        self.n += 1
        struct.pack_into("<I", word, 0, (struct.unpack_from("<I", word, 0)[0] + n) & M)


class ScriptBackend:
    """ring.h's back-ring macros spelled out over the page, for blkif."""

    def __init__(self, page, size, entry):
        self.page = page
        self.size = size
        self.entry = entry
        self.req_cons = self.rsp_prod_pvt = self.get(P.SRING_OFF_RSP_PROD)

    def get(self, off):
        return struct.unpack_from("<I", self.page, off)[0]

    def put(self, off, v):
        struct.pack_into("<I", self.page, off, v & M)

    def slot(self, idx):
        return P.SRING_OFF_RING + (idx & (self.size - 1)) * self.entry

    def serve(self, n, status):
        """Consumes up to n requests and answers each; returns the ids."""
        prod = self.get(P.SRING_OFF_REQ_PROD)
        ids = []
        while self.req_cons != prod and len(ids) < n:
            op, nr, _h, rid, sector = struct.unpack_from(P.BLKIF_REQ_HEAD_FMT, self.page,
                                                        self.slot(self.req_cons))
            self.req_cons = (self.req_cons + 1) & M
            struct.pack_into(P.BLKIF_RSP_FMT, self.page, self.slot(self.rsp_prod_pvt),
                             rid, op, status)
            self.rsp_prod_pvt = (self.rsp_prod_pvt + 1) & M
            ids.append(rid & 0xFFFF)
        return ids

    def push(self):
        old = self.get(P.SRING_OFF_RSP_PROD)
        new = self.rsp_prod_pvt
        self.put(P.SRING_OFF_RSP_PROD, new)
        event = self.get(P.SRING_OFF_RSP_EVENT)
        return ((new - event) & M) < ((new - old) & M)

    def final_check(self):
        if self.get(P.SRING_OFF_REQ_PROD) != self.req_cons:
            return True
        self.put(P.SRING_OFF_REQ_EVENT, self.req_cons + 1)
        return self.get(P.SRING_OFF_REQ_PROD) != self.req_cons


def blk_stream(start, pages, seed, add32=None):
    page = bytearray(P.PAGE_SIZE * pages)
    bar = Barriers()
    ring = FrontRing(memoryview(page), P.BLKIF_REQ_SIZE, P.BLKIF_RSP_SIZE, bar, "vbd", start,
                     add32)
    back = ScriptBackend(page, ring.size, P.BLKIF_ENTRY_SIZE)
    rng = Lcg(seed)
    print("blk", "pages", pages, "size", ring.size, "start", start)
    next_id = 1
    outstanding = {}
    notes = [0, 0]
    for step in range(STEPS):
        made = rng.below(ring.free_requests() + 1)
        for _ in range(made):
            slot = ring.new_request()
            nseg = 1 + rng.below(P.BLKIF_MAX_SEGMENTS_PER_REQUEST)
            struct.pack_into(P.BLKIF_REQ_HEAD_FMT, slot, 0, P.BLKIF_OP_READ, nseg, 0x300,
                             (next_id << 32) | next_id, next_id * 8)
            for s in range(nseg):
                struct.pack_into(P.BLKIF_SEG_FMT, slot, P.BLKIF_REQ_OFF_SEG + s * 8,
                                 0x100 + s, 0, 7)
            outstanding[next_id] = nseg
            next_id += 1
        kick = ring.push_requests()
        notes[0] += 1 if kick else 0
        ids = back.serve(rng.below(ring.size + 1), P.BLKIF_RSP_OKAY)
        bkick = back.push()
        notes[1] += 1 if bkick else 0
        got = []
        while True:
            r = ring.get_response()
            if r is None:
                break
            rid, op, status = struct.unpack(P.BLKIF_RSP_FMT, r)
            if (rid & M) not in outstanding or rid >> 32 != rid & M:
                print("  bad id", rid)
            else:
                del outstanding[rid & M]
            got.append(rid & 0xFFFF)
        if ids != got:
            print("  mismatch", ids, got)
        idle = back.final_check() if rng.chance(50) else None
        more = ring.final_check_for_responses()
        if step % 37 == 0 or step == STEPS - 1:
            print(" ", step, made, kick, len(ids), bkick, idle, more, ring.in_flight(),
                  ring.req_prod_pvt, ring.rsp_cons, hexs(page[0:16]))
    print("  notified", notes, "in flight", len(outstanding), "barriers", bar.n,
          "broken", ring.broken, "atomic adds", add32.n if add32 else None)


def tx_ring():
    # netfront's tx ring: 12-byte requests, 4-byte responses, 256 entries.
    page = bytearray(P.PAGE_SIZE)
    ring = FrontRing(page, P.NETIF_TX_REQ_SIZE, P.NETIF_TX_RSP_SIZE, Barriers(), "vif", M - 9)
    for i in range(ring.size):
        struct.pack_into(P.NETIF_TX_REQ_FMT, ring.new_request(), 0, 0x2000 + i, 0,
                         P.NETTXF_more_data if i % 3 else 0, i, 60 + i)
    print("tx", ring.size, ring.free_requests(), ring.new_request(), ring.push_requests())
    # The backend answers all of them, newest first (ids tell them apart).
    prod = struct.unpack_from("<I", page, P.SRING_OFF_REQ_PROD)[0]
    for k in range(ring.size):
        idx = (prod - ring.size + k) & M
        off = P.SRING_OFF_RING + (idx & 255) * P.NETIF_TX_ENTRY_SIZE
        gref, _o, flags, rid, size = struct.unpack_from(P.NETIF_TX_REQ_FMT, page, off)
        struct.pack_into(P.NETIF_TX_RSP_FMT, page, off, 255 - rid,
                         P.NETIF_RSP_OKAY if size < 300 else P.NETIF_RSP_DROPPED)
    struct.pack_into("<I", page, P.SRING_OFF_RSP_PROD, prod)
    statuses = [0, 0, 0]
    ids = 0
    for _ in range(ring.size):
        rid, status = struct.unpack(P.NETIF_TX_RSP_FMT, ring.get_response())
        statuses[status + 2] += 1
        ids += rid
    print("tx answers", statuses, ids, ring.get_response(), ring.rsp_cons, ring.free_requests())


def hostile(case):
    log.reset_counts()
    page = bytearray(P.PAGE_SIZE)
    fixes = []

    def barrier():
        # The torn case: the backend's store lands while the ring reads again.
        if fixes:
            struct.pack_into("<I", page, P.SRING_OFF_RSP_PROD, fixes.pop())

    ring = FrontRing(page, P.BLKIF_REQ_SIZE, P.BLKIF_RSP_SIZE, barrier, "vbd-evil", M - 2)
    for i in range(4):
        struct.pack_into(P.BLKIF_REQ_HEAD_FMT, ring.new_request(), 0, 0, 1, 0, i, i)
    ring.push_requests()
    cons = ring.rsp_cons
    if case == "ahead":
        struct.pack_into("<I", page, P.SRING_OFF_RSP_PROD, cons + 5 & M)
    elif case == "beyond":
        struct.pack_into("<I", page, P.SRING_OFF_RSP_PROD, cons + 40 & M)
    elif case == "behind":
        struct.pack_into("<I", page, P.SRING_OFF_RSP_PROD, cons - 1 & M)
    elif case == "backwards":
        struct.pack_into("<I", page, P.SRING_OFF_RSP_PROD, cons + 3 & M)
        ring.get_response()
        ring.get_response()
        ring.get_response()
        struct.pack_into("<I", page, P.SRING_OFF_RSP_PROD, cons + 2 & M)
    elif case == "torn":
        struct.pack_into("<I", page, P.SRING_OFF_RSP_PROD, cons + 2 & M)
        ring.get_response()
        # 0xffffffff -> 0x00000001 read half old, half new: 0xffff0001.
        struct.pack_into("<I", page, P.SRING_OFF_RSP_PROD, 0xFFFF0001)
        fixes.append(cons + 4 & M)
    got = 0
    for _ in range(10):
        if ring.get_response() is not None:
            got += 1
    print("hostile", case, got, ring.broken is not None, ring.final_check_for_responses(),
          ring.new_request() is None, ring.free_requests(), ring.push_requests(),
          log.count("guest_error"))


blk_stream(M - 40, 1, 7)
blk_stream(M - 1000, 16, 11, Add32())
tx_ring()
for c in ("ahead", "beyond", "behind", "backwards", "torn"):
    hostile(c)
