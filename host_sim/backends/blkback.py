"""host_sim's blkback: a raw image (sparse is fine) or an ISO behind a blkif ring.

Offers what Linux's xen-blkback offers (DESIGN.md 13): feature-flush-cache and
feature-barrier (the image has a write cache: the page cache), feature-persistent
(grants kept mapped, up to a bound), feature-max-indirect-segments 256,
max-ring-page-order 4. FLUSH_DISKCACHE and WRITE_BARRIER mean fdatasync: a write
the frontend flushed is on disk when the response says so. Discard is not offered.

The frontend is hostile: segment sector ranges, segment counts, indirect pages,
sector numbers past the end, writes to a read-only image: each is a
BLKIF_RSP_ERROR (logged), never a crash and never a partial success.
"""
import os
import struct

from host_sim.backends.base import BACKEND_DOMID, Backend
from host_sim.grants import GrantError
from stubdm import pv_abi as A

MAX_INDIRECT_SEGMENTS = 256
MAX_RING_PAGE_ORDER = 4
MAX_PERSISTENT = 1056  # Linux blkback's per-ring bound (xen_blkif_max_pgrants)
SECTORS_PER_PAGE = A.BLKIF_SECTORS_PER_PAGE


class BadRequest(Exception):
    pass


class BlkBack(Backend):
    TYPE = "vbd"
    REQ_SIZE = A.BLKIF_REQ_SIZE
    RSP_SIZE = A.BLKIF_RSP_SIZE
    MAX_RING_PAGE_ORDER = MAX_RING_PAGE_ORDER

    def __init__(self, hv, xs_socket, frontend_domid, devid, path=None, readonly=False,
                 cdrom=False, log=None):
        super().__init__(hv, xs_socket, frontend_domid, devid, log=log)
        self.image = path
        self.readonly = readonly or cdrom
        self.cdrom = cdrom
        self.fd = -1
        self.sectors = 0
        self.persistent = False
        self.pgrants = {}  # gref -> Mapping (persistent grants)
        self.pviews = {}  # gref -> a view of its whole page (the fast path's I/O vector)
        self.stats.update({"reads": 0, "writes": 0, "flushes": 0, "errors": 0,
                           "bytes": 0, "indirect": 0, "segments": 0})
        self._open()

    def _open(self):
        if self.image is None:
            self.fd, self.sectors = -1, 0
            return
        self.fd = os.open(self.image, os.O_RDONLY if self.readonly else os.O_RDWR)
        self.sectors = os.fstat(self.fd).st_size // A.BLKIF_SECTOR_SIZE

    def features(self):
        return {"feature-flush-cache": 1, "feature-barrier": 1, "feature-persistent": 1,
                "feature-max-indirect-segments": MAX_INDIRECT_SEGMENTS}

    def connected(self):
        fe_pers = self._read_int(self.frontend + "/feature-persistent", 0, 1)
        # Persistent only when both sides offered it.
        self.persistent = fe_pers == 1 and str(self.features().get("feature-persistent")) == "1"
        info = (A.VDISK_CDROM | A.VDISK_REMOVABLE if self.cdrom else 0) | \
            (A.VDISK_READONLY if self.readonly else 0)
        for k, v in (("sectors", self.sectors), ("info", info), ("sector-size", 512),
                     ("physical-sector-size", 512)):
            self.xs.write(self.path + "/" + k, str(v))

    def disconnect(self):
        for v in self.pviews.values():
            v.release()
        self.pviews = {}
        for m in self.pgrants.values():
            m.unmap()
        self.pgrants = {}

    def destroy(self):
        super().destroy()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def start(self):
        super().start()
        if self.cdrom:
            # The toolstack changes a CD's medium by writing params (libxl's
            # cdrom_insert; the older protocol's media change): the image follows.
            self.xs.watch(self.path + "/params", "params:" + self.name)

    def watch_event(self, path, token):
        if token != "params:" + self.name:
            return
        p = self._read(self.path + "/params")
        if p is None or (p or None) == self.image:
            return
        try:
            self.change_medium(p or None)
        except OSError as e:
            self.log("%s: can't open the new medium %r: %s" % (self.name, p, e))
            self.change_medium(None)

    def change_medium(self, path):
        """A CD-ROM's medium changes (None: eject): new size, then params, to the
        frontend."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        self.image = path
        self.sectors = 0
        try:
            self._open()
        finally:
            self.xs.write(self.path + "/sectors", str(self.sectors))
            self.xs.write(self.path + "/params", path or "")

    # ---- grants ----
    def _page(self, ref, writable):
        """A granted data page: kept mapped when persistent, else mapped for this request."""
        m = self.pgrants.get(ref)
        if m is not None:
            if writable and not m.writable:
                raise BadRequest("grant %d is mapped read-only" % ref)
            return m, False
        try:
            # Persistent grants are mapped writable once (the frontend grants them so).
            m = self.hv.grants.map(BACKEND_DOMID, self.frontend_domid, ref,
                                   writable or self.persistent)
        except GrantError as e:
            raise BadRequest(str(e))
        if self.persistent and len(self.pgrants) < MAX_PERSISTENT:
            self.pgrants[ref] = m
            self.pviews[ref] = m.mem[0:A.BLKIF_SECTOR_SIZE * SECTORS_PER_PAGE]
            return m, False
        return m, True

    # ---- the data path ----
    def serve(self):
        ring = self.ring
        while ring is not None:
            while True:
                req = ring.get_request()
                if req is None:
                    break
                op, rid, status = self._handle(req)
                rsp = ring.new_response()
                struct.pack_into(A.BLKIF_RSP_FMT, rsp, 0, rid, op, status)
            if ring.push_responses():
                self.notify()
            if not ring.final_check_for_requests():
                break
            ring = self.ring

    def _handle(self, req):
        op = req[0]
        rid = struct.unpack_from("<Q", req, A.BLKIF_REQ_OFF_ID)[0]
        self.stats["requests"] += 1
        try:
            if op in (A.BLKIF_OP_READ, A.BLKIF_OP_WRITE, A.BLKIF_OP_WRITE_BARRIER):
                nseg = req[A.BLKIF_REQ_OFF_NR_SEGMENTS]
                sector = struct.unpack_from("<Q", req, A.BLKIF_REQ_OFF_SECTOR_NUMBER)[0]
                if op == A.BLKIF_OP_WRITE_BARRIER:
                    self._flush()
                    if nseg == 0:
                        return op, rid, A.BLKIF_RSP_OKAY
                if not 0 < nseg <= A.BLKIF_MAX_SEGMENTS_PER_REQUEST:
                    raise BadRequest("%d segments" % nseg)
                segs = [struct.unpack_from(A.BLKIF_SEG_FMT, req, A.BLKIF_REQ_OFF_SEG + 8 * i)
                        for i in range(nseg)]
                self._rw(op != A.BLKIF_OP_READ, sector, segs)
                if op == A.BLKIF_OP_WRITE_BARRIER:
                    self._flush()
            elif op == A.BLKIF_OP_INDIRECT:
                self._indirect(req)
            elif op == A.BLKIF_OP_FLUSH_DISKCACHE:
                self._flush()
            else:
                self.stats["errors"] += 1
                self.log("%s: request %d: operation %d not supported" % (self.name, rid, op))
                return op, rid, A.BLKIF_RSP_EOPNOTSUPP
        except BadRequest as e:
            self.stats["errors"] += 1
            self.log("%s: request %d refused: %s" % (self.name, rid, e))
            return op, rid, A.BLKIF_RSP_ERROR
        except OSError as e:
            self.stats["errors"] += 1
            self.log("%s: request %d: I/O error: %s" % (self.name, rid, e))
            return op, rid, A.BLKIF_RSP_ERROR
        return op, rid, A.BLKIF_RSP_OKAY

    def _indirect(self, req):
        (_op, iop, nseg, _id, sector, _handle, *grefs) = struct.unpack(
            A.BLKIF_INDIRECT_FMT, req[:A.BLKIF_INDIRECT_SIZE])
        if iop not in (A.BLKIF_OP_READ, A.BLKIF_OP_WRITE):
            raise BadRequest("indirect operation %d" % iop)
        if not 0 < nseg <= MAX_INDIRECT_SEGMENTS:
            raise BadRequest("%d indirect segments (at most %d)" % (nseg, MAX_INDIRECT_SEGMENTS))
        npages = (nseg + A.BLKIF_SEGS_PER_INDIRECT_FRAME - 1) // A.BLKIF_SEGS_PER_INDIRECT_FRAME
        raws = []
        for p in range(npages):
            m, temp = self._page(grefs[p], False)
            try:
                # One copy of the descriptors: the frontend may rewrite the page.
                n = min(A.BLKIF_SEGS_PER_INDIRECT_FRAME, nseg - p * A.BLKIF_SEGS_PER_INDIRECT_FRAME)
                raws.append(bytes(m.mem[:8 * n]))
            finally:
                if temp:
                    m.unmap()
        self.stats["indirect"] += 1
        raw = raws[0] if npages == 1 else b"".join(raws)
        if self._rw_pages(iop == A.BLKIF_OP_WRITE, sector, raw, nseg):
            return
        segs = [struct.unpack_from(A.BLKIF_SEG_FMT, raw, 8 * i) for i in range(nseg)]
        self._rw(iop == A.BLKIF_OP_WRITE, sector, segs)

    def _rw_pages(self, write, sector, raw, nseg):
        """The common case of _rw in one go: every segment a whole page (sectors
        0..7) of a persistent grant already mapped, the descriptors' bytes raw.
        False (nothing done) for anything else, which _rw then checks piece by
        piece."""
        if not self.persistent or self.fd < 0 or (write and self.readonly):
            return False
        if raw[4::8] != bytes(nseg) or raw[5::8] != _LAST_SECT * nseg:
            return False
        total = nseg * SECTORS_PER_PAGE
        if sector + total > self.sectors:
            return False  # _rw refuses it, and says why
        views = self.pviews
        try:
            iov = [views[g] for g in memoryview(raw).cast("I")[0::2]]
        except KeyError:
            return False  # a grant not mapped yet: _rw maps (and keeps) it
        self.stats["segments"] += nseg
        self._io(write, sector * A.BLKIF_SECTOR_SIZE, iov, total * 512)
        self.stats["writes" if write else "reads"] += 1
        self.stats["bytes"] += total * 512
        return True

    def _io(self, write, pos, iov, want):
        if write:
            done = 0
            while done < want:  # a short write continues where it stopped
                n = os.pwritev(self.fd, _rest(iov, done), pos + done)
                if n <= 0:
                    raise OSError("short write at byte %d of %d" % (done, want))
                done += n
        else:
            got = os.preadv(self.fd, iov, pos)
            if got < want:  # a short image: zeros, as a sparse file reads
                _zero(_rest(iov, got))

    def _rw(self, write, sector, segs):
        if self.fd < 0:
            raise BadRequest("no medium")
        if write and self.readonly:
            raise BadRequest("write to a read-only disk")
        total = 0
        for gref, first, last in segs:
            if first > last or last >= SECTORS_PER_PAGE:
                raise BadRequest("segment sectors %d..%d" % (first, last))
            total += last - first + 1
        if sector + total > self.sectors:
            raise BadRequest("sectors %d+%d past the end (%d)" % (sector, total, self.sectors))
        pos = sector * A.BLKIF_SECTOR_SIZE
        self.stats["segments"] += len(segs)
        # The granted pages themselves are the I/O vector: one preadv/pwritev per
        # request, no copy in between (host_sim is CPython: the kernel fills them).
        iov = []
        temps = []
        try:
            for gref, first, last in segs:
                m, temp = self._page(gref, not write)
                if temp:
                    temps.append(m)
                iov.append(m.mem[first * 512:(last + 1) * 512])
            self._io(write, pos, iov, total * 512)
        finally:
            # A page's slices hold its mapping open: release them before unmapping.
            for v in iov:
                v.release()
            for m in temps:
                m.unmap()
        self.stats["writes" if write else "reads"] += 1
        self.stats["bytes"] += total * 512

    def _flush(self):
        self.stats["flushes"] += 1
        if self.fd >= 0 and not self.readonly:
            os.fdatasync(self.fd)


_LAST_SECT = bytes((SECTORS_PER_PAGE - 1,))


def _rest(iov, skip):
    """The views of iov after its first skip bytes."""
    out = []
    for v in iov:
        if skip >= len(v):
            skip -= len(v)
            continue
        out.append(v[skip:])
        skip = 0
    return out


def _zero(views):
    for v in views:
        v[:] = bytes(len(v))
        v.release()


def vbd_device(path, vdev="xvda", readonly=False, cdrom=False):
    """A scripted Session's pv_devices entry for a stub-domain disk, with the keys
    libxl writes for one (libxl_disk.c: device_disk_add)."""
    devid = (202 << 8) | ((ord(vdev[3]) - ord("a")) << 4)
    mode = "r" if readonly or cdrom else "w"
    dtype = "cdrom" if cdrom else "disk"
    back = {"params": path or "", "type": "phy", "mode": mode, "device-type": dtype,
            "removable": "1" if cdrom else "0", "bootable": "1", "dev": vdev,
            "discard-enable": "0"}
    front = {"virtual-device": str(devid), "device-type": dtype}
    return ("vbd", devid, BlkBack, {"backend_keys": back, "frontend_keys": front,
                                    "path": path, "readonly": readonly, "cdrom": cdrom})
