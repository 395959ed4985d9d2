# host_sim's blkback serving indirect requests (host_sim/backends/blkback.py): the
# whole-page fast path (every segment a full page of a persistent grant already
# mapped: one preadv/pwritev over the cached pages) and what it leaves to the
# checked path: partial pages, grants not mapped yet, bad sector ranges, requests
# past the end. Over a real image file; the grants are host_sim's map() faked.
import os
import struct

import pytest

from host_sim.backends import blkback as B
from stubdm import pv_abi as A

PAGE = 4096
IND = 1  # the indirect descriptor page's grant


class Mapping:
    def __init__(self, table, ref):
        self.buf = bytearray(PAGE)
        self.mem = memoryview(self.buf)
        self.writable = True
        self.table = table
        self.ref = ref

    def unmap(self):
        self.table.unmapped.append(self.ref)


class Grants:
    def __init__(self):
        self.pages = {}
        self.mapped = []
        self.unmapped = []

    def map(self, dom, frontend, ref, writable):
        self.mapped.append(ref)
        m = self.pages.get(ref)
        if m is None:
            m = self.pages[ref] = Mapping(self, ref)
        return m


class Hv:
    def __init__(self):
        self.grants = Grants()


@pytest.fixture
def back(tmp_path):
    img = str(tmp_path / "d.img")
    data = os.urandom(1 << 20)
    with open(img, "wb") as f:
        f.write(data)
    b = object.__new__(B.BlkBack)  # the data path only: no xenstore, no ring
    b.hv = Hv()
    b.frontend_domid = 2
    b.image, b.readonly, b.cdrom = img, False, False
    b.persistent = True
    b.pgrants, b.pviews = {}, {}
    b.stats = {k: 0 for k in ("reads", "writes", "bytes", "indirect", "segments", "requests",
                              "errors", "flushes")}
    b._open()
    yield b, data
    os.close(b.fd)


def indirect(b, op, sector, segs):
    """Run one indirect request of segs [(gref, first, last)]."""
    page = b.hv.grants.map(0, 2, IND, False)
    raw = b"".join(struct.pack(A.BLKIF_SEG_FMT, *s) for s in segs)
    page.buf[0:len(raw)] = raw
    req = bytearray(A.BLKIF_REQ_SIZE)
    struct.pack_into(A.BLKIF_INDIRECT_FMT, req, 0, A.BLKIF_OP_INDIRECT, op, len(segs), 9,
                     sector, 0, IND, 0, 0, 0, 0, 0, 0, 0)
    b._indirect(req)


def page(b, ref):
    return bytes(b.hv.grants.pages[ref].buf)


def test_whole_pages_read_and_write_through_the_cached_grants(back):
    b, data = back
    segs = [(100 + i, 0, 7) for i in range(64)]
    indirect(b, A.BLKIF_OP_READ, 16, segs)  # first time: mapped and kept (checked path)
    maps = len(b.hv.grants.mapped)
    indirect(b, A.BLKIF_OP_READ, 24, segs)  # then straight from the cached pages
    assert len(b.hv.grants.mapped) == maps + 1  # only the descriptor page again
    for i in range(64):
        assert page(b, 100 + i) == data[(24 + 8 * i) * 512:(32 + 8 * i) * 512]
    for i in range(64):
        b.hv.grants.pages[100 + i].buf[:] = bytes([i]) * PAGE
    indirect(b, A.BLKIF_OP_WRITE, 8, segs)
    with open(b.image, "rb") as f:
        f.seek(8 * 512)
        assert f.read(64 * PAGE) == b"".join(bytes([i]) * PAGE for i in range(64))
    assert b.stats["reads"] == 2 and b.stats["writes"] == 1
    assert b.stats["bytes"] == 3 * 64 * PAGE


def test_partial_pages_move_only_their_sectors(back):
    b, data = back
    segs = [(200, 0, 7), (201, 2, 5)]
    indirect(b, A.BLKIF_OP_READ, 0, segs)
    indirect(b, A.BLKIF_OP_READ, 0, segs)  # both grants cached now: still the checked path
    assert page(b, 200) == data[0:PAGE]
    got = page(b, 201)
    assert got[2 * 512:6 * 512] == data[PAGE:PAGE + 4 * 512]
    assert got[:2 * 512] == bytes(1024) and got[6 * 512:] == bytes(1024)


def test_bad_segments_and_requests_past_the_end_are_refused(back):
    b, _data = back
    indirect(b, A.BLKIF_OP_READ, 0, [(300, 0, 7)])  # cache the grant
    end = (1 << 20) // 512
    for sector, segs in ((0, [(300, 0, 8)]),  # a ninth sector in a page
                         (0, [(300, 5, 4)]),  # first after last
                         (end - 7, [(300, 0, 7)]),  # one sector past the end
                         (2**63, [(300, 0, 7)])):
        with pytest.raises(B.BadRequest):
            indirect(b, A.BLKIF_OP_READ, sector, segs)
    b.readonly = True
    with pytest.raises(B.BadRequest):
        indirect(b, A.BLKIF_OP_WRITE, 0, [(300, 0, 7)])
