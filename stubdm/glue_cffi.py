# CPython's face of the C glue: the API of MicroPython's user C module
# _xenglue (stubdm/port_common/modstubdm_hyp.c, whose header comment is the
# reference), built on the cffi module stubdm._xenglue (build/glue_build.py).
# stubdm/hypervisor.py and stubdm/memory.py use only this API, so they are
# one source on both runtimes. CPython only; keep it a thin shim.
import os

# Which implementation of Xen's library API the glue is linked with: host_sim's
# (stubdm._xenglue, `scons glue`) unless STUBDM_GLUE=xen names Xen's own libraries
# (stubdm._xenglue_xen, `scons glue-xen`), for a device model in dom0.
VARIANT = os.environ.get("STUBDM_GLUE", "sim")
if VARIANT == "xen":
    from stubdm._xenglue_xen import ffi, lib
elif VARIANT == "sim":
    from stubdm._xenglue import ffi, lib
else:
    raise ImportError("STUBDM_GLUE must be sim or xen, not %r" % VARIANT[:16])

# Where Xen's libraries look for the hypervisor (libxencall, libxenforeignmemory:
# the first, then the older one). With neither, no hypervisor is there, and the
# libraries would only print their own errors before failing.
PRIVCMD = ("/dev/xen/privcmd", "/proc/xen/privcmd")
ENODEV = 19
ENOSYS = 38
EAGAIN = 11

PAGE_SHIFT = 12
_PAGE_SIZE = 1 << PAGE_SHIFT


def _raise():
    e = ffi.errno or 5  # EIO if the library left errno unset
    raise OSError(e, os.strerror(e))


def _check(r):
    if r < 0:
        _raise()
    return r


class Xen:
    """The three handles (xendevicemodel, xenforeignmemory, xenevtchn) of one domain."""

    def __init__(self, domid):
        if not 0 <= domid <= 0xFFFF:
            raise ValueError("domid")
        self.domid = domid
        if VARIANT == "xen" and not [p for p in PRIVCMD if os.path.exists(p)]:
            raise OSError(ENODEV, "no Xen hypervisor here (neither %s nor %s exists: not "
                          "a Xen domain with privcmd)" % PRIVCMD)
        self.dmod = lib.xendevicemodel_open(ffi.NULL, 0)
        if self.dmod == ffi.NULL:
            _raise()
        self.fmem = lib.xenforeignmemory_open(ffi.NULL, 0)
        if self.fmem == ffi.NULL:
            _raise()
        self.xce = lib.xenevtchn_open(ffi.NULL, 0)
        if self.xce == ffi.NULL:
            _raise()
        self._id = ffi.new("ioservid_t *")
        self._gfns = ffi.new("xen_pfn_t[2]")
        self._port = ffi.new("evtchn_port_t *")
        self._pages = []  # the mapped frames, for the life of the process
        self.xgs = None  # the grant-share handle, opened on first use
        self._shares = {}  # address -> pointer of each live share
        self._owned = {}  # address -> pointer of each live own_pages

    def create_ioreq_server(self, bufioreq):
        _check(lib.xendevicemodel_create_ioreq_server(self.dmod, self.domid, bufioreq, self._id))
        return self._id[0]

    def get_ioreq_server_info(self, sid):
        g = self._gfns
        _check(lib.xendevicemodel_get_ioreq_server_info(self.dmod, self.domid, sid, g, g + 1,
                                                         self._port))
        return g[0], g[1], self._port[0]

    def map_io_range(self, sid, is_mmio, start, end):
        return _check(lib.xendevicemodel_map_io_range_to_ioreq_server(
            self.dmod, self.domid, sid, is_mmio, start, end))

    def unmap_io_range(self, sid, is_mmio, start, end):
        return _check(lib.xendevicemodel_unmap_io_range_from_ioreq_server(
            self.dmod, self.domid, sid, is_mmio, start, end))

    def map_pcidev(self, sid, seg, bus, dev, fn):
        return _check(lib.xendevicemodel_map_pcidev_to_ioreq_server(
            self.dmod, self.domid, sid, seg, bus, dev, fn))

    def set_ioreq_server_state(self, sid, enabled):
        return _check(lib.xendevicemodel_set_ioreq_server_state(self.dmod, self.domid, sid,
                                                                 enabled))

    def destroy_ioreq_server(self, sid):
        return _check(lib.xendevicemodel_destroy_ioreq_server(self.dmod, self.domid, sid))

    def set_isa_irq_level(self, irq, level):
        return _check(lib.xendevicemodel_set_isa_irq_level(self.dmod, self.domid, irq, level))

    def set_pci_intx_level(self, seg, bus, dev, intx, level):
        return _check(lib.xendevicemodel_set_pci_intx_level(self.dmod, self.domid, seg, bus,
                                                             dev, intx, level))

    def set_pci_link_route(self, link, irq):
        return _check(lib.xendevicemodel_set_pci_link_route(self.dmod, self.domid, link, irq))

    def inject_msi(self, addr, data):
        return _check(lib.xendevicemodel_inject_msi(self.dmod, self.domid, addr, data))

    def shutdown(self, reason):
        return _check(lib.xendevicemodel_shutdown(self.dmod, self.domid, reason))

    def map_page(self, gfn):
        arr = ffi.new("xen_pfn_t[1]", [gfn])
        err = ffi.new("int[1]")
        p = lib.xenforeignmemory_map(self.fmem, self.domid, lib.PROT_READ | lib.PROT_WRITE, 1,
                                     arr, err)
        if p == ffi.NULL:
            _raise()
        if err[0]:
            lib.xenforeignmemory_unmap(self.fmem, p, 1)
            e = abs(err[0])
            raise OSError(e, os.strerror(e))
        self._pages.append(p)
        return memoryview(ffi.buffer(p, _PAGE_SIZE))

    def _xc(self):
        # libxenctrl, opened on first use (the VGA's populate, the S3 param)
        if getattr(self, "xch", None) is None:
            xch = lib.xc_interface_open(ffi.NULL, ffi.NULL, 0)
            if xch == ffi.NULL:
                _raise()
            self.xch = xch
        return self.xch

    def set_hvm_param(self, index, value):
        return _check(lib.xc_hvm_param_set(self._xc(), self.domid, index, value))

    def get_hvm_param(self, index):
        v = ffi.new("uint64_t *")
        _check(lib.xc_hvm_param_get(self._xc(), self.domid, index, v))
        return v[0]

    def populate_physmap(self, gfn, count):
        if not 0 < count <= 131072:
            raise OSError(22, os.strerror(22))
        xch = self._xc()
        pfns = ffi.new("xen_pfn_t[]", [gfn + i for i in range(count)])
        return _check(lib.xc_domain_populate_physmap_exact(xch, self.domid, count, 0, 0,
                                                           pfns))

    def relocate_memory(self, count, src_gfn, dst_gfn):
        return _check(lib.xendevicemodel_relocate_memory(self.dmod, self.domid, count, src_gfn,
                                                         dst_gfn))

    def track_dirty_vram(self, first_pfn, count):
        if not 0 <= count <= 131072:
            raise OSError(22, os.strerror(22))
        words = ffi.new("unsigned long[]", max(1, (count + 63) // 64))
        _check(lib.xendevicemodel_track_dirty_vram(self.dmod, self.domid, first_pfn, count,
                                                   words if count else ffi.NULL))
        return bytes(ffi.buffer(words))[:(count + 7) // 8]  # little-endian words

    def evtchn_fd(self):
        return _check(lib.xenevtchn_fd(self.xce))

    def bind_interdomain(self, remote_port):
        return _check(lib.xenevtchn_bind_interdomain(self.xce, self.domid, remote_port))

    def pending(self):
        return _check(lib.xenevtchn_pending(self.xce))

    def pending_nowait(self):
        """The next delivered port, or -1 at once when none is."""
        r = lib.stubdm_evtchn_pending_nowait(self.xce)
        if r < 0 and ffi.errno == EAGAIN:
            return -1
        return _check(r)

    def unmask(self, port):
        return _check(lib.xenevtchn_unmask(self.xce, port))

    def notify(self, port):
        return _check(lib.xenevtchn_notify(self.xce, port))

    def bind_unbound_port(self, remote_domid):
        return _check(lib.xenevtchn_bind_unbound_port(self.xce, remote_domid))

    def unbind(self, port):
        return _check(lib.xenevtchn_unbind(self.xce, port))

    def share_pages(self, remote_domid, count, writable):
        if self.xgs is None:
            self.xgs = lib.xengntshr_open(ffi.NULL, 0)
            if self.xgs == ffi.NULL:
                self.xgs = None
                _raise()
        if count <= 0:
            raise OSError(22, os.strerror(22))
        refs = ffi.new("uint32_t[]", count)
        p = lib.xengntshr_share_pages(self.xgs, remote_domid, count, refs, 1 if writable else 0)
        if p == ffi.NULL:
            _raise()
        addr = int(ffi.cast("uintptr_t", p))
        self._shares[addr] = p
        return addr, tuple(refs), memoryview(ffi.buffer(p, count * _PAGE_SIZE))

    def own_pages(self, count):
        if VARIANT == "xen":
            # A dom0 process has no frames of its own to name: MiniOS and host_sim only.
            raise OSError(ENOSYS, "pages by frame number: unsupported in dom0 (a stub "
                          "domain's own memory only)")
        if not 0 < count <= 1 << 20:
            raise OSError(22, os.strerror(22))
        frames = ffi.new("uint64_t[]", count)
        p = lib.stubdm_own_pages(count, frames)
        if p == ffi.NULL:
            _raise()
        addr = int(ffi.cast("uintptr_t", p))
        self._owned[addr] = p
        return addr, tuple(frames), memoryview(ffi.buffer(p, count * _PAGE_SIZE))

    def free_own_pages(self, addr, frames):
        p = self._owned.pop(addr, None)
        if p is None:
            raise OSError(22, os.strerror(22))
        return _check(lib.stubdm_free_own_pages(p, len(frames),
                                                ffi.new("uint64_t[]", list(frames))))

    def share_frames(self, addr, count):
        """The frame numbers of a share's pages (host_sim's; dom0: ENOSYS)."""
        p = self._shares.get(addr)
        if p is None or self.xgs is None or not 0 < count <= 1 << 20:
            raise OSError(22, os.strerror(22))
        frames = ffi.new("uint64_t[]", count)
        _check(lib.stubdm_share_frames(self.xgs, p, count, frames))
        return tuple(frames)

    def unshare(self, addr, count):
        p = self._shares.pop(addr, None)
        if p is None or self.xgs is None:
            raise OSError(22, os.strerror(22))
        return _check(lib.xengntshr_unshare(self.xgs, p, count))


class Xs:
    """A xenstore connection (libxenstore's xs_open(0)): Python's bytes and str."""

    def __init__(self):
        self.h = lib.xs_open(0)
        if self.h == ffi.NULL:
            _raise()
        self._num = ffi.new("unsigned int *")

    def close(self):
        if self.h is not None:
            lib.xs_close(self.h)
            self.h = None

    def _p(self, path):
        if not isinstance(path, str):
            raise TypeError("path")
        return path.encode()

    def read(self, tx, path):
        p = lib.xs_read(self.h, tx, self._p(path), self._num)
        if p == ffi.NULL:
            _raise()
        try:
            return ffi.unpack(ffi.cast("char *", p), self._num[0])
        finally:
            lib.free(p)

    def write(self, tx, path, data):
        if isinstance(data, str):
            data = data.encode()
        if not lib.xs_write(self.h, tx, self._p(path), data, len(data)):
            _raise()

    def mkdir(self, tx, path):
        if not lib.xs_mkdir(self.h, tx, self._p(path)):
            _raise()

    def rm(self, tx, path):
        if not lib.xs_rm(self.h, tx, self._p(path)):
            _raise()

    def directory(self, tx, path):
        p = lib.xs_directory(self.h, tx, self._p(path), self._num)
        if p == ffi.NULL:
            _raise()
        try:
            return [ffi.string(p[i]).decode() for i in range(self._num[0])]
        finally:
            lib.free(p)

    def get_perms(self, tx, path):
        p = lib.xs_get_permissions(self.h, tx, self._p(path), self._num)
        if p == ffi.NULL:
            _raise()
        try:
            return [(p[i].id, p[i].perms) for i in range(self._num[0])]
        finally:
            lib.free(p)

    def set_perms(self, tx, path, perms):
        arr = ffi.new("struct xs_permissions[]", len(perms))
        for i, (dom, bits) in enumerate(perms):
            arr[i].id = dom
            arr[i].perms = bits
        if not lib.xs_set_permissions(self.h, tx, self._p(path), arr, len(perms)):
            _raise()

    def watch(self, path, token):
        if not lib.xs_watch(self.h, self._p(path), self._p(token)):
            _raise()

    def unwatch(self, path, token):
        if not lib.xs_unwatch(self.h, self._p(path), self._p(token)):
            _raise()

    def fileno(self):
        return _check(lib.xs_fileno(self.h))

    def check_watch(self):
        """The next watch event as (path, token), or None when none is queued."""
        v = lib.xs_check_watch(self.h)
        if v == ffi.NULL:
            if ffi.errno == 11:  # EAGAIN: nothing queued
                return None
            _raise()
        try:
            return ffi.string(v[0]).decode(), ffi.string(v[1]).decode()
        finally:
            lib.free(v)

    def transaction_start(self):
        t = lib.xs_transaction_start(self.h)
        if t == 0:
            _raise()
        return t

    def transaction_end(self, tx, abort):
        """True when committed (or aborted as asked); False when it must be retried."""
        if lib.xs_transaction_end(self.h, tx, bool(abort)):
            return True
        if ffi.errno == 11:  # EAGAIN: a conflict
            return False
        _raise()

    def domain_path(self, domid):
        p = lib.xs_get_domain_path(self.h, domid)
        if p == ffi.NULL:
            _raise()
        try:
            return ffi.string(p).decode()
        finally:
            lib.free(p)


class Mapcache:
    """The mapcache core over a Xen's foreign-memory handle."""

    def __init__(self, xen, bucket_shift, max_buckets):
        if not isinstance(xen, Xen):
            raise TypeError("Mapcache needs a Xen")
        if bucket_shift < 0 or max_buckets < 0:
            raise OSError(22, os.strerror(22))
        self.xen = xen
        self.mc = lib.mapcache_new(xen.fmem, xen.domid, bucket_shift, max_buckets)
        if self.mc == ffi.NULL:
            _raise()
        self._stats = ffi.new("mapcache_stats_t *")

    def add_ram(self, start, end):
        return _check(lib.mapcache_add_ram(self.mc, start, end))

    def map(self, gpa, length):
        if length <= 0:
            return None
        p = lib.mapcache_map(self.mc, gpa, length, 0)
        if p == ffi.NULL:
            return None
        return memoryview(ffi.buffer(p, length))

    def map_locked(self, gpa, length):
        if length <= 0:
            return None
        p = lib.mapcache_map(self.mc, gpa, length, 1)
        if p == ffi.NULL:
            return None
        return memoryview(ffi.buffer(p, length))

    def unlock(self, gpa):
        return _check(lib.mapcache_unlock(self.mc, gpa))

    def bucket_room(self, gpa):
        return lib.mapcache_bucket_room(self.mc, gpa)

    def prdt_copy(self, prdt, n, skip, buf, to_guest, cursor=None):
        """Copy len(buf) bytes between buf and the guest memory of an AHCI PRD table's
        stream (prdt: its n entries' bytes) from byte skip on, into the guest if to_guest:
        True, or False when a piece is not guest RAM or the table is too short. cursor:
        a bytearray(16) kept with the table (mapcache.h: the walk goes on where the last
        call ended), or None."""
        if n < 0 or 16 * n > len(prdt) or skip < 0:
            raise ValueError("prdt_copy: bad table or offset")
        if cursor is None:
            cur = ffi.NULL
        elif len(cursor) == 16:
            cur = ffi.from_buffer("uint64_t[]", cursor, require_writable=True)
        else:
            raise ValueError("prdt_copy: a cursor is 16 bytes")
        if len(buf) == 0:
            return True
        b = ffi.from_buffer("uint8_t[]", buf, require_writable=not to_guest)
        return lib.mapcache_prdt_copy(self.mc, ffi.from_buffer("uint8_t[]", prdt), n, skip,
                                      b, len(buf), 1 if to_guest else 0, cur) == 0

    def invalidate(self):
        lib.mapcache_invalidate(self.mc)

    def stats(self):
        s = self._stats
        lib.mapcache_get_stats(self.mc, s)
        return (s.hits, s.misses, s.maps, s.unmaps, s.evictions, s.invalidations, s.refused,
                s.buckets_mapped, s.buckets_locked, s.max_buckets, s.bucket_pages)

    def footprint(self):
        return lib.mapcache_footprint(self.mc)


def prdt_total(prdt, n):
    """An AHCI PRD table's total byte count, or -1 - i when entry i's count is odd."""
    if n < 0 or 16 * n > len(prdt):
        raise ValueError("prdt_total: table shorter than its entries")
    return lib.mapcache_prdt_total(ffi.from_buffer("uint8_t[]", prdt), n)


def barrier():
    lib.stubdm_barrier()


def atomic_add32(buf, n):
    lib.stubdm_atomic_add32(ffi.from_buffer(buf), n & 0xFFFFFFFF)


def inet_sum(buf, start, end):
    if start < 0 or end < start or end > len(buf):
        raise ValueError("inet_sum: range outside the buffer")
    return lib.stubdm_inet_sum(ffi.from_buffer("uint8_t[]", buf) + start, end - start)


def footprint(bucket_shift, max_buckets):
    mc = lib.mapcache_new(ffi.NULL, 0, bucket_shift, max_buckets)
    if mc == ffi.NULL:
        _raise()
    try:
        return lib.mapcache_footprint(mc)
    finally:
        lib.mapcache_free(mc)
