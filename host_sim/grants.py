"""host_sim's grant tables: one domain shares its own pages with another.

What Xen enforces (xen/common/grant_table.c, v1 entries) and host_sim with it:
- a grant names one grantee domain; only that domain may map or copy it;
- a read-only grant maps read-only, and a writable mapping of it is refused;
- a reference out of the table, never granted, or already ended is refused;
- access can't be ended while the grantee still has the page mapped: the
  sharer's unshare then leaves the entry (and its page) in place until the
  last mapping goes, as Linux's gntalloc does, so a mapped grant is never
  silently reused for another page.

The pages a domain shares are its own memory (a memfd per domain, page
allocated, zeroed as gntalloc's are), never another domain's RAM.

A domain's frame number here is a page index in its memfd. Pages it takes for
itself (own_alloc: MiniOS's alloc_pages) it may name to a backend by frame
number (fbif.h's page-ref and pd[]); only a privileged domain maps them, by
foreign mapping (map_foreign: xenforeignmemory_map), and a frame outside that
domain's memory is refused as Xen refuses it, whatever its owner offered.
"""
import ctypes
import errno
import mmap
import os

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                       ctypes.c_int, ctypes.c_long]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_MAP_FIXED = 0x10
_MAP_FAILED = ctypes.c_void_p(-1).value

PAGE = 4096
# libxl's default max_grant_frames (32) of 512 v1 entries each.
NR_GRANTS = 32 * 512
# The first references are Xen's reserved entries (GNTTAB_NR_RESERVED_ENTRIES:
# the console and xenstore rings).
FIRST_REF = 8


class GrantError(Exception):
    def __init__(self, err, what):
        super().__init__("%s: %s" % (what, errno.errorcode.get(err, err)))
        self.errno = err


class DomainMemory:
    """A domain's own pages (what it may grant), as one memfd."""

    def __init__(self, domid, npages):
        self.domid = domid
        self.npages = npages
        self.fd = os.memfd_create("host_sim-dom%d-mem" % domid, 0)
        os.ftruncate(self.fd, npages * PAGE)
        self.free = list(range(npages - 1, -1, -1))  # pop() gives the lowest first
        self.held = {}  # frame -> foreign mappings of it
        self.dying = set()  # frames freed while foreign-mapped

    def alloc(self):
        if not self.free:
            raise GrantError(errno.ENOMEM, "domain %d is out of memory" % self.domid)
        page = self.free.pop()
        # A fresh page is zero: punch the old contents out of the file.
        os.pwrite(self.fd, bytes(PAGE), page * PAGE)
        return page

    def release(self, page):
        self.free.append(page)

    def foreign_hold(self, frames, delta):
        """A foreign mapping holds its frames (as Xen's page references do): one freed
        while mapped goes back to the free list only at the last unmap."""
        for f in frames:
            n = self.held.get(f, 0) + delta
            if n > 0:
                self.held[f] = n
                continue
            self.held.pop(f, None)
            if f in self.dying:
                self.dying.discard(f)
                self.release(f)

    def release_own(self, page):
        if page in self.held:
            self.dying.add(page)
        else:
            self.release(page)

    def owns(self, frame):
        return isinstance(frame, int) and 0 <= frame < self.npages

    def close(self):
        os.close(self.fd)


class Grant:
    __slots__ = ("dom", "ref", "grantee", "page", "readonly", "maps", "ending")

    def __init__(self, dom, ref, grantee, page, readonly):
        self.dom = dom
        self.ref = ref
        self.grantee = grantee
        self.page = page
        self.readonly = readonly
        self.maps = 0
        self.ending = False  # unshared while mapped: freed at the last unmap


class Mapping:
    """A grantee's mapping of one granted page; .mem is its memoryview."""

    def __init__(self, table, grant, mm, writable):
        self.table = table
        self.grant = grant
        self.mm = mm
        self.writable = writable
        self.mem = memoryview(mm)

    def unmap(self):
        if self.mm is None:
            return
        self.mem.release()
        self.mm.close()
        self.mm = None
        self.table._unmapped(self.grant)


class MultiMapping:
    """Several granted pages mapped side by side (GNTTABOP_map_grant_ref of each
    into one virtual range, as a backend maps a multi-page ring)."""

    def __init__(self, table, grants, addr, writable):
        self.table = table
        self.grants = grants
        self.addr = addr
        self.writable = writable
        n = len(grants) * PAGE
        self.mem = memoryview((ctypes.c_char * n).from_address(addr)).cast("B")
        if not writable:
            self.mem = self.mem.toreadonly()

    def unmap(self):
        if self.addr is None:
            return
        self.mem.release()
        _libc.munmap(self.addr, len(self.grants) * PAGE)
        self.addr = None
        for g in self.grants:
            self.table._unmapped(g)


class ForeignMapping:
    """Frames of a foreign domain mapped side by side (xenforeignmemory_map); .mem."""

    def __init__(self, mem, frames, addr, writable):
        self.dom_mem = mem
        self.frames = frames
        self.addr = addr
        npages = self.npages = len(frames)
        self.mem = memoryview((ctypes.c_char * (npages * PAGE)).from_address(addr)).cast("B")
        if not writable:
            self.mem = self.mem.toreadonly()

    def unmap(self):
        if self.addr is None:
            return
        self.mem.release()
        _libc.munmap(self.addr, self.npages * PAGE)
        self.addr = None
        self.dom_mem.foreign_hold(self.frames, -1)


# Domains with the foreign-mapping privilege (dom0's toolstack and backends).
PRIVILEGED = frozenset([0])
# Frames per foreign map at once (privcmd takes any count; this bounds a hostile one).
MAX_FOREIGN = 1 << 16


class GrantTables:
    def __init__(self, log=None, pages_per_domain=4096):
        self.log = log or (lambda msg: None)
        self.pages_per_domain = pages_per_domain
        self.memory = {}  # domid -> DomainMemory
        self.grants = {}  # (dom, ref) -> Grant
        self.stats = {"shared": 0, "maps": 0, "copies": 0, "refused": 0,
                      "foreign_maps": 0}

    def memory_of(self, dom):
        m = self.memory.get(dom)
        if m is None:
            m = self.memory[dom] = DomainMemory(dom, self.pages_per_domain)
        return m

    def _refuse(self, err, what):
        self.stats["refused"] += 1
        self.log("grant refused: " + what)
        raise GrantError(err, what)

    def _free_ref(self, dom):
        for ref in range(FIRST_REF, NR_GRANTS):
            if (dom, ref) not in self.grants:
                return ref
        raise GrantError(errno.ENOSPC, "domain %d's grant table is full" % dom)

    def share(self, dom, grantee, count, writable):
        """gntshr: grant count fresh pages of dom's memory to grantee.
        Returns [(ref, page index in dom's memfd)]."""
        if count <= 0:
            raise GrantError(errno.EINVAL, "share of %d pages" % count)
        mem = self.memory_of(dom)
        out = []
        try:
            for _ in range(count):
                ref = self._free_ref(dom)
                page = mem.alloc()
                self.grants[(dom, ref)] = Grant(dom, ref, grantee, page, not writable)
                out.append((ref, page))
        except GrantError:
            for ref, page in out:
                del self.grants[(dom, ref)]
                mem.release(page)
            raise
        self.stats["shared"] += count
        return out

    def unshare(self, dom, ref):
        """End access (gnttab_end_foreign_access): freed now, or at the last unmap."""
        g = self.grants.get((dom, ref))
        if g is None or g.ending:
            return -errno.ENOENT
        if g.maps:
            g.ending = True
            self.log("domain %d ends grant %d while domain %d still maps it: kept until "
                     "unmapped" % (dom, ref, g.grantee))
            return 0
        self._end(g)
        return 0

    def _end(self, g):
        del self.grants[(g.dom, g.ref)]
        self.memory_of(g.dom).release_own(g.page)

    def _check(self, mapper, dom, ref, writable):
        if not (isinstance(ref, int) and 0 <= ref < NR_GRANTS):
            self._refuse(errno.EINVAL, "domain %d: reference %r of domain %d is out of the "
                         "table" % (mapper, ref, dom))
        g = self.grants.get((dom, ref))
        if g is None:
            self._refuse(errno.ENOENT, "domain %d: domain %d has not granted reference %d"
                         % (mapper, dom, ref))
        if g.grantee != mapper:
            self._refuse(errno.EPERM, "domain %d: reference %d of domain %d is granted to "
                         "domain %d" % (mapper, ref, dom, g.grantee))
        if writable and g.readonly:
            self._refuse(errno.EPERM, "domain %d: reference %d of domain %d is read-only"
                         % (mapper, ref, dom))
        return g

    def map(self, mapper, dom, ref, writable=True):
        """GNTTABOP_map_grant_ref: the grantee maps one page; returns a Mapping."""
        g = self._check(mapper, dom, ref, writable)
        prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)
        mm = mmap.mmap(self.memory_of(dom).fd, PAGE, mmap.MAP_SHARED, prot,
                       offset=g.page * PAGE)
        g.maps += 1
        self.stats["maps"] += 1
        return Mapping(self, g, mm, writable)

    def map_many(self, mapper, dom, refs, writable=True):
        """Map several grants of dom into one contiguous range: a MultiMapping."""
        if not 0 < len(refs) <= 64:
            self._refuse(errno.EINVAL, "map of %d grants at once" % len(refs))
        grants = [self._check(mapper, dom, ref, writable) for ref in refs]
        n = len(grants) * PAGE
        prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)
        base = _libc.mmap(None, n, 0, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, -1, 0)
        if base in (None, _MAP_FAILED):
            raise GrantError(ctypes.get_errno(), "reserving %d bytes" % n)
        fd = self.memory_of(dom).fd
        for i, g in enumerate(grants):
            p = _libc.mmap(base + i * PAGE, PAGE, prot, mmap.MAP_SHARED | _MAP_FIXED, fd,
                           g.page * PAGE)
            if p in (None, _MAP_FAILED):
                _libc.munmap(base, n)
                raise GrantError(ctypes.get_errno(), "mapping grant %d" % g.ref)
        for g in grants:
            g.maps += 1
        self.stats["maps"] += len(grants)
        return MultiMapping(self, grants, base, writable)

    def _unmapped(self, g):
        g.maps -= 1
        if g.maps == 0 and g.ending:
            self._end(g)

    def copy_from(self, mapper, dom, ref, offset, length):
        """GNTTABOP_copy out of a granted page."""
        g = self._check(mapper, dom, ref, False)
        if offset < 0 or length < 0 or offset + length > PAGE:
            self._refuse(errno.EINVAL, "copy of %r+%r crosses the page" % (offset, length))
        self.stats["copies"] += 1
        return os.pread(self.memory_of(dom).fd, length, g.page * PAGE + offset)

    def copy_to(self, mapper, dom, ref, offset, data):
        """GNTTABOP_copy into a granted page (it must be writable)."""
        g = self._check(mapper, dom, ref, True)
        if offset < 0 or offset + len(data) > PAGE:
            self._refuse(errno.EINVAL, "copy of %r+%r crosses the page" % (offset, len(data)))
        self.stats["copies"] += 1
        os.pwrite(self.memory_of(dom).fd, data, g.page * PAGE + offset)

    # ---- a domain's own pages, named by frame number ----
    def own_alloc(self, dom, count):
        """count fresh pages of dom's memory for dom itself: their frame numbers."""
        if count <= 0:
            raise GrantError(errno.EINVAL, "allocation of %d pages" % count)
        mem = self.memory_of(dom)
        out = []
        try:
            for _ in range(count):
                out.append(mem.alloc())
        except GrantError:
            for page in out:
                mem.release(page)
            raise
        return out

    def own_free(self, dom, frames):
        mem = self.memory_of(dom)
        for page in frames:
            mem.release_own(page)

    def map_foreign(self, mapper, dom, frames, writable=True):
        """xenforeignmemory_map: a privileged domain maps dom's frames; ForeignMapping."""
        if mapper not in PRIVILEGED or mapper == dom:
            self._refuse(errno.EPERM, "domain %d may not map domain %d's memory"
                         % (mapper, dom))
        mem = self.memory_of(dom)
        if not 0 < len(frames) <= MAX_FOREIGN:
            self._refuse(errno.EINVAL, "foreign map of %d frames" % len(frames))
        for i, f in enumerate(frames):
            if not mem.owns(f):
                self._refuse(errno.EINVAL, "domain %d: frame %r (entry %d) is not domain "
                             "%d's memory" % (mapper, f, i, dom))
        n = len(frames) * PAGE
        prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)
        base = _libc.mmap(None, n, 0, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, -1, 0)
        if base in (None, _MAP_FAILED):
            raise GrantError(ctypes.get_errno(), "reserving %d bytes" % n)
        for i, f in enumerate(frames):
            p = _libc.mmap(base + i * PAGE, PAGE, prot, mmap.MAP_SHARED | _MAP_FIXED, mem.fd,
                           f * PAGE)
            if p in (None, _MAP_FAILED):
                err = ctypes.get_errno()
                _libc.munmap(base, n)
                raise GrantError(err, "mapping frame %d" % f)
        self.stats["foreign_maps"] += len(frames)
        frames = list(frames)
        mem.foreign_hold(frames, 1)
        return ForeignMapping(mem, frames, base, writable)

    def release_domain(self, dom):
        """A domain is destroyed: its grants go once nobody maps them."""
        for (d, ref), g in list(self.grants.items()):
            if d == dom:
                if g.maps:
                    g.ending = True
                else:
                    self._end(g)

    def close(self):
        for m in self.memory.values():
            m.close()
        self.memory = {}
