# blkfront: the stub domain's PV disk (xen/include/public/io/blkif.h), as the
# disk a storage controller sees (stubdm/block.py). The guest's disks are the
# stub domain's own vbds (libxl attaches them as xvda...); an emulated IDE or
# AHCI command becomes as few blkif requests as the backend allows.
#
# Negotiated (each only if the backend offers it): a multi-page ring
# (max-ring-page-order, up to RING_ORDER), indirect descriptors
# (feature-max-indirect-segments: one request carries up to MAX_SEGS pages),
# persistent grants (feature-persistent: a pool of data pages granted once at
# connection and reused for every request, so no grant is made or ended per
# I/O), and flush (feature-flush-cache, else feature-barrier; with neither the
# backend has no volatile cache and a write is durable when it completes).
#
# Data moves between the controller's views (guest memory pinned for the
# transfer) and the pool by memoryview slices. The backend is hostile: a
# response to an id we never sent, a second response to one, or a ring it
# corrupts fails only what is affected, logged; nothing is reported done that
# was not.
import struct

from stubdm import block, log, pv_abi as A
from stubdm.frontends.ring import FrontRing
from stubdm.frontends.xenbus import Frontend

PAGE = 4096
RING_ORDER = 2  # 4 pages: 128 requests in flight
# 2 MiB per disk: two 1 MiB requests in flight (1 MiB held one only). MiniOS has
# 2048 grant entries (NR_GRANT_FRAMES 4): two disks and a CD-ROM must fit in them.
POOL_PAGES = 512
MAX_SEGS = 256  # pages per request with indirect descriptors (1 MiB)
INDIRECT_PAGES = 16  # indirect descriptor pages: indirect requests in flight
MAX_SECTORS_VALUE = 1 << 48


def _copy(srcs, dsts):
    """Copy the byte stream of the views srcs into that of dsts (equal totals)."""
    si = di = 0
    so = do = 0
    while si < len(srcs) and di < len(dsts):
        s = srcs[si]
        d = dsts[di]
        ls, ld = len(s), len(d)
        n = min(ls - so, ld - do)
        if n == ls:
            d[do:do + n] = s  # a whole source view: no slice of it to make
        elif n == ld:
            d[:] = s[so:so + n]
        else:
            d[do:do + n] = s[so:so + n]
        so += n
        do += n
        if so == ls:
            si += 1
            so = 0
        if do == ld:
            di += 1
            do = 0


class _Job:
    __slots__ = ("op", "done", "left", "status")

    def __init__(self, op, done):
        self.op = op
        self.done = done
        self.left = 0
        self.status = block.OK


class _Piece:
    """One blkif request's worth of a job: its sectors and the views they fill, or
    (submit_sg) the controller's scatter list and where in its stream they start."""

    __slots__ = ("job", "sector", "views", "nbytes", "sg", "skip")

    def __init__(self, job, sector, views, nbytes, sg=None, skip=0):
        self.job = job
        self.sector = sector
        self.views = views
        self.nbytes = nbytes
        self.sg = sg
        self.skip = skip


def _sg_copy(piece, views, to_guest):
    """A submit_sg piece's bytes between its scatter list and the pool views, one
    call a view: False when the scatter list refused (not guest RAM)."""
    sg = piece.sg
    pos = piece.skip
    for v in views:
        if not sg.copy(pos, v, to_guest):
            return False
        pos += len(v)
    return True


class BlkFront(Frontend):
    TYPE = "vbd"

    def __init__(self, bus, devid):
        super().__init__(bus, devid)
        self.sectors = 0
        self.readonly = False
        self.cdrom = False
        self.media_changed = False
        self.params = None
        self.on_change = None
        self.max_sectors = 11 * A.BLKIF_SECTORS_PER_PAGE
        self.flush_op = None
        self.ring = None
        self.ring_pages = None
        self.pool = None
        self.indirect = None
        self.free_pages = []
        self.free_ind = []
        self.port = None
        self.queue = []
        self.inflight = {}  # request id -> (piece, pool pages, indirect page or None)
        self.next_id = 1
        self.max_segs = A.BLKIF_MAX_SEGMENTS_PER_REQUEST
        # One event's responses are one batch (stubdm/block.py): while their done
        # callbacks run, what the controller submits waits for one push and notify
        # at the end, and the controller hears on_batch_end once after the last.
        self.batching = False
        self.on_batch_end = None
        self.stats = {"submits": 0, "requests": 0, "indirect": 0, "errors": 0,
                      "batches": 0}

    # ---- the handshake ----
    def setup(self):
        be = self.backend
        hyp = self.hyp
        order = self.xs.read_int(be + "/max-ring-page-order", 0, 16) or 0
        self.order = order if order < RING_ORDER else RING_ORDER
        ind = self.xs.read_int(be + "/feature-max-indirect-segments", 0, 1 << 20) or 0
        self.max_segs = A.BLKIF_MAX_SEGMENTS_PER_REQUEST
        if ind > A.BLKIF_MAX_SEGMENTS_PER_REQUEST:
            self.max_segs = ind if ind < MAX_SEGS else MAX_SEGS
        self.max_sectors = self.max_segs * A.BLKIF_SECTORS_PER_PAGE
        self.ring_pages = hyp.share_pages(self.backend_id, 1 << self.order)
        self.ring = FrontRing(self.ring_pages.mem, A.BLKIF_REQ_SIZE, A.BLKIF_RSP_SIZE,
                              hyp.barrier, name=self.name, add32=hyp.atomic_add32)
        self.pool = hyp.share_pages(self.backend_id, POOL_PAGES)
        # Every pool page's segment descriptor for a whole page, in page order: an
        # indirect request over a run of pages is one slice of it (the last patched).
        refs = self.pool.refs
        self.seg_full = b"".join([struct.pack(A.BLKIF_SEG_FMT, refs[i], 0, PAGE // 512 - 1)
                                  for i in range(POOL_PAGES)])
        self.free_pages = list(range(POOL_PAGES))
        self.free_ind = []
        if self.max_segs > A.BLKIF_MAX_SEGMENTS_PER_REQUEST:
            self.indirect = hyp.share_pages(self.backend_id, INDIRECT_PAGES)
            self.free_ind = list(range(INDIRECT_PAGES))
        self.port = hyp.bind_unbound_port(self.backend_id)
        self.listen(self.port)

    def publish(self, tx):
        xs, p = self.xs, self.path
        refs = self.ring_pages.refs
        if self.order:
            xs.write(p + "/ring-page-order", self.order, tx)
            for i in range(len(refs)):
                xs.write(p + "/ring-ref%d" % i, refs[i], tx)
        else:
            xs.write(p + "/ring-ref", refs[0], tx)
        xs.write(p + "/event-channel", self.port, tx)
        xs.write(p + "/protocol", "x86_64-abi", tx)
        xs.write(p + "/feature-persistent", 1, tx)

    def connected(self):
        be = self.backend
        sectors = self.xs.read_int(be + "/sectors", 0, MAX_SECTORS_VALUE)
        info = self.xs.read_int(be + "/info", 0, 0xFFFFFFFF)
        ssize = self.xs.read_int(be + "/sector-size", 1, 1 << 16)
        if sectors is None or info is None or ssize != A.BLKIF_SECTOR_SIZE:
            self._fail("backend published no valid sectors/info/sector-size=512")
            return
        self.sectors = sectors
        # What the device model was told (-drive ...,media=cdrom / readonly) stands;
        # the backend may only add to it.
        self.readonly = self.readonly or bool(info & A.VDISK_READONLY)
        self.cdrom = self.cdrom or bool(info & A.VDISK_CDROM)
        if self.xs.read_int(be + "/feature-flush-cache", 0, 1) == 1:
            self.flush_op = A.BLKIF_OP_FLUSH_DISKCACHE
        elif self.xs.read_int(be + "/feature-barrier", 0, 1) == 1:
            self.flush_op = A.BLKIF_OP_WRITE_BARRIER
        else:
            self.flush_op = None
        self.xs.watch(be + "/sectors", "stubdm-vbd-size:" + self.devid, self._resized)
        # A CD's medium changes by a new params (the older toolstacks' media
        # change; libxl's QMP sequence writes it too): even to one of the same size.
        self.params = self.xs.read(be + "/params")
        if self.cdrom:
            self.xs.watch(be + "/params", "stubdm-vbd-params:" + self.devid, self._params)
        if self.on_change is not None:
            self.on_change()

    def _params(self, _path):
        p = self.xs.read(self.backend + "/params")
        if p == self.params or self.state != 4:
            return
        self.params = p
        n = self.xs.read_int(self.backend + "/sectors", 0, MAX_SECTORS_VALUE)
        self.sectors = n if n is not None and p else 0
        self.media_changed = True
        if self.on_change is not None:
            self.on_change()

    def _resized(self, _path):
        n = self.xs.read_int(self.backend + "/sectors", 0, MAX_SECTORS_VALUE)
        if n is not None and n != self.sectors and self.state == 4:
            self.sectors = n
            self.media_changed = True
            if self.on_change is not None:
                self.on_change()

    def disconnect(self):
        if self.ring is not None and self.backend is not None:
            self.xs.unwatch(self.backend + "/sectors", "stubdm-vbd-size:" + self.devid)
            if self.cdrom:
                self.xs.unwatch(self.backend + "/params", "stubdm-vbd-params:" + self.devid)
        # Nothing in flight can complete now: the controller hears EIO (once the
        # disk is down, so that what it submits in its callbacks fails at once too).
        pending = [v[0] for v in self.inflight.values()] + self.queue
        self.inflight = {}
        self.queue = []
        if self.port is not None:
            self.hyp.unbind(self.port)
            self.port = None
        self.ring = None
        for shared in (self.indirect, self.pool, self.ring_pages):
            if shared is not None:
                shared.unshare()
        self.indirect = self.pool = self.ring_pages = None
        self.sectors = 0
        for piece in pending:
            self._piece_done(piece, block.EIO)
        if self.on_change is not None:
            self.on_change()

    # ---- the disk a controller sees ----
    def ready(self):
        return self.state == 4 and self.ring is not None

    def submit(self, op, sector, views, done):
        self.stats["submits"] += 1
        if not self.ready():
            done(block.ENOMEDIUM if self.cdrom else block.EIO)
            return
        job = _Job(op, done)
        if op == block.FLUSH:
            if self.flush_op is None:
                done(block.OK)  # no volatile cache behind the backend
                return
            job.left = 1
            self.queue.append(_Piece(job, 0, (), 0))
            if not self.batching:
                self._pump()
            return
        if op == block.WRITE and self.readonly:
            done(block.EROFS)
            return
        if op not in (block.READ, block.WRITE):
            done(block.EINVAL)
            return
        total = 0
        for v in views:
            total += len(v)
        if total == 0 or total % 512 or sector < 0 or sector + total // 512 > self.sectors:
            done(block.EINVAL)
            return
        # Cut the stream into requests of at most max_segs pages.
        cap = self.max_segs * PAGE
        pieces = []
        cur = []
        cur_n = 0
        start = sector
        for v in views:
            off = 0
            lv = len(v)
            while off < lv:
                n = lv - off
                if n > cap - cur_n:
                    n = cap - cur_n
                cur.append(v if n == lv else v[off:off + n])
                cur_n += n
                off += n
                if cur_n == cap:
                    pieces.append(_Piece(job, start, cur, cur_n))
                    start += cur_n // 512
                    cur = []
                    cur_n = 0
        if cur_n:
            pieces.append(_Piece(job, start, cur, cur_n))
        job.left = len(pieces)
        self.queue += pieces
        if not self.batching:
            self._pump()  # else once the batch's responses are all handled

    def submit_sg(self, op, sector, nbytes, sg, skip, done):
        """As submit (READ or WRITE), the data being nbytes of the controller's scatter
        list from byte skip of its stream on (sg.copy(skip, buf, to_guest) -> bool,
        stubdm/block.py): moved between guest memory and the pool by one call per
        run of pool pages, no views of guest memory; a refused copy is EINVAL."""
        self.stats["submits"] += 1
        if not self.ready():
            done(block.ENOMEDIUM if self.cdrom else block.EIO)
            return
        if op == block.WRITE and self.readonly:
            done(block.EROFS)
            return
        if op not in (block.READ, block.WRITE) or nbytes <= 0 or nbytes % 512 or sector < 0 \
                or sector + nbytes // 512 > self.sectors:
            done(block.EINVAL)
            return
        job = _Job(op, done)
        cap = self.max_segs * PAGE
        pos = 0
        pieces = []
        while pos < nbytes:
            n = nbytes - pos
            if n > cap:
                n = cap
            pieces.append(_Piece(job, sector + pos // 512, None, n, sg, skip + pos))
            pos += n
        job.left = len(pieces)
        self.queue += pieces
        if not self.batching:
            self._pump()

    # ---- requests out ----
    def _pump(self):
        ring = self.ring
        sent = False
        refused = []  # pieces whose guest memory could not be read: failed after the loop
        while self.queue and ring is not None and not ring.broken:
            piece = self.queue[0]
            npages = (piece.nbytes + PAGE - 1) // PAGE
            use_ind = npages > A.BLKIF_MAX_SEGMENTS_PER_REQUEST
            if ring.free_requests() == 0 or len(self.free_pages) < npages \
                    or (use_ind and not self.free_ind):
                break  # back-pressure: wait for responses
            self.queue.pop(0)
            job = piece.job
            if job.op == block.FLUSH:
                slot = ring.new_request()
                rid = self.next_id
                self.next_id += 1
                struct.pack_into(A.BLKIF_REQ_HEAD_FMT, slot, 0, self.flush_op, 0, 0, rid, 0)
                self.inflight[rid] = (piece, (), None)
                sent = True
                continue
            # The last npages of the free list, in its order: pages go back in the order
            # they came, so the list keeps ascending runs and _views few, long views.
            fp = self.free_pages
            pages = fp[len(fp) - npages:]
            self.free_pages = fp[:len(fp) - npages]
            run = pages[0] if pages == list(range(pages[0], pages[0] + npages)) else -1
            if job.op == block.WRITE:
                dsts = self._views(pages, piece.nbytes, run)
                if piece.sg is None:
                    _copy(piece.views, dsts)
                elif not _sg_copy(piece, dsts, False):
                    self.free_pages += pages
                    refused.append(piece)
                    continue
            slot = ring.new_request()
            rid = self.next_id
            self.next_id += 1
            op = A.BLKIF_OP_WRITE if job.op == block.WRITE else A.BLKIF_OP_READ
            refs = self.pool.refs
            ind = None
            full = PAGE // 512 - 1  # the last sector of a whole page
            tail = (piece.nbytes - (npages - 1) * PAGE) // 512 - 1  # of the last page
            if use_ind:
                ind = self.free_ind.pop()
                imem = self.indirect.mem
                if run >= 0:  # one run of pool pages: its descriptors in one slice
                    base = ind * PAGE
                    imem[base:base + 8 * npages] = self.seg_full[8 * run:8 * (run + npages)]
                    imem[base + 8 * npages - 3] = tail  # the last one's last_sect
                else:
                    for i in range(npages):
                        struct.pack_into(A.BLKIF_SEG_FMT, imem, ind * PAGE + 8 * i,
                                         refs[pages[i]], 0, full if i < npages - 1 else tail)
                struct.pack_into(A.BLKIF_INDIRECT_FMT, slot, 0, A.BLKIF_OP_INDIRECT, op,
                                 npages, rid, piece.sector, 0, self.indirect.refs[ind],
                                 0, 0, 0, 0, 0, 0, 0)
                self.stats["indirect"] += 1
            else:
                struct.pack_into(A.BLKIF_REQ_HEAD_FMT, slot, 0, op, npages, 0, rid,
                                 piece.sector)
                for i in range(npages):
                    struct.pack_into(A.BLKIF_SEG_FMT, slot, A.BLKIF_REQ_OFF_SEG + 8 * i,
                                     refs[pages[i]], 0, full if i < npages - 1 else tail)
            self.inflight[rid] = (piece, pages, ind)
            self.stats["requests"] += 1
            sent = True
        if sent and ring.push_requests():
            self.hyp.notify(self.port)
        for piece in refused:
            self._piece_done(piece, block.EINVAL)

    def _views(self, pages, nbytes, run=-1):
        """The pool pages of one request as views holding its nbytes in order: one view
        per run of consecutive pages (the copies then move long slices); run: the
        first page when the pages are known to be one run."""
        mem = self.pool.mem
        if run >= 0:
            return [mem[run * PAGE:run * PAGE + nbytes]]
        out = []
        i = 0
        n = len(pages)
        while i < n and nbytes > 0:
            j = i + 1
            while j < n and pages[j] == pages[j - 1] + 1:
                j += 1
            run = (j - i) * PAGE
            if run > nbytes:
                run = nbytes
            start = pages[i] * PAGE
            out.append(mem[start:start + run])
            nbytes -= run
            i = j
        return out

    # ---- responses back ----
    def on_event(self, port):
        self._drain()

    def poll(self):
        """Handle now, as one batch, the responses the backend has already published
        (their event not yet handled): True if there were any (stubdm/block.py)."""
        ring = self.ring
        if ring is None or self.batching or not ring.unconsumed_responses():
            return False
        self._drain()
        return True

    def _drain(self):
        ring = self.ring
        if ring is None or self.batching:
            return
        self.stats["batches"] += 1
        try:
            self.batching = True
            try:
                ring.drain(self._response)
            finally:
                self.batching = False
            if ring.broken:
                self._fail("ring broken: " + ring.broken)
                return
            self._pump()  # what the controller submitted meanwhile: one push, one notify
        finally:
            # Also after a broken ring: what completed before the break is reported.
            if self.on_batch_end is not None:
                self.on_batch_end()

    def _response(self, rsp):
        rid, _op, status = struct.unpack(A.BLKIF_RSP_FMT, rsp)
        entry = self.inflight.pop(rid, None)
        if entry is None:
            log.guest_error("blkfront", "%s: response to request %d, which is not in flight"
                            % (self.name, rid))
            return
        piece, pages, ind = entry
        err = block.OK
        if status != A.BLKIF_RSP_OKAY:
            self.stats["errors"] += 1
            err = block.EIO
        elif piece.job.op == block.READ:
            if piece.sg is None:
                _copy(self._views(pages, piece.nbytes), piece.views)
            else:
                n = len(pages)
                run = pages[0] if pages == list(range(pages[0], pages[0] + n)) else -1
                if not _sg_copy(piece, self._views(pages, piece.nbytes, run), True):
                    err = block.EINVAL
        self.free_pages += pages
        if ind is not None:
            self.free_ind.append(ind)
        self._piece_done(piece, err)

    def _piece_done(self, piece, err):
        job = piece.job
        if err != block.OK:
            job.status = err
        job.left -= 1
        if job.left == 0:
            job.done(job.status)


def vbd_devid(name):
    """Xen's virtual device number of a disk name: xvdX -> 202 << 8 | index << 4,
    for the 26 single-letter names (libxl's xvd encoding). None for anything else."""
    if name.startswith("/dev/"):
        name = name[5:]
    if len(name) == 4 and name.startswith("xvd") and "a" <= name[3] <= "z":
        return (202 << 8) | ((ord(name[3]) - ord("a")) << 4)
    return None

