# Guest memory as the device model sees it: through the mapcache only
# (DESIGN.md section 6). Copies are slice assignments between memoryviews of
# mapped buckets and Python buffers, never per-byte loops. The mapcache is
# the C glue's (stubdm/hypervisor.py: the same API on both runtimes).
from stubdm.hypervisor import glue

# HVM guests have RAM below the MMIO hole and the rest above 4 GiB; this is
# where hvmloader's default hole starts.
LOW_RAM_END = 0xF0000000


# The legacy VGA window is not RAM in an HVM guest: Xen's stdvga (and the
# device model's VGA) answer there; hvmloader's RAM resumes at 0xc0000.
VGA_HOLE_START = 0xA0000
VGA_HOLE_END = 0xC0000


def ram_ranges(ram_bytes):
    low = min(ram_bytes, LOW_RAM_END)
    if low > VGA_HOLE_END:
        ranges = [(0, VGA_HOLE_START), (VGA_HOLE_END, low)]
    else:
        ranges = [(0, min(low, VGA_HOLE_START))]
    if ram_bytes > low:
        ranges.append((1 << 32, (1 << 32) + ram_bytes - low))
    return ranges


class GuestMemory:
    def __init__(self, hyp, ram_bytes, bucket_shift=20, max_buckets=64):
        try:
            self.mc = glue.Mapcache(hyp.xen, bucket_shift, max_buckets)
        except OSError:
            raise MemoryError("mapcache_new failed")
        self.ranges = ram_ranges(ram_bytes)
        for start, end in self.ranges:
            try:
                self.mc.add_ram(start, end)
            except OSError:
                raise ValueError("bad guest RAM range %#x-%#x" % (start, end))

    def _piece(self, gpa, want):
        """A memoryview of up to `want` bytes at gpa, ending at its bucket's end.

        The mapping is unlocked: it is only valid until the next map, so each
        piece is copied before the next is asked for. None if not guest RAM.
        """
        mc = self.mc
        return mc.map(gpa, min(mc.bucket_room(gpa), want))

    def read(self, gpa, n):
        out = bytearray(n)
        pos = 0
        while pos < n:
            mv = self._piece(gpa + pos, n - pos)
            if mv is None:
                return None
            out[pos : pos + len(mv)] = mv
            pos += len(mv)
        return bytes(out)

    def write(self, gpa, data):
        src = memoryview(data)
        n = len(src)
        pos = 0
        while pos < n:
            mv = self._piece(gpa + pos, n - pos)
            if mv is None:
                return False
            mv[:] = src[pos : pos + len(mv)]
            pos += len(mv)
        return True

    def lock(self, gpa, n):
        """Pin [gpa, gpa+n) for DMA in flight: a Pinned (its .views cover the range in
        order, each within one bucket, valid across invalidates until .release()), or
        None if any of it is not guest RAM (nothing stays locked then)."""
        views = []
        starts = []
        pos = 0
        mc = self.mc
        while pos < n:
            a = gpa + pos
            mv = mc.map_locked(a, min(mc.bucket_room(a), n - pos))
            if mv is None:
                for s in starts:
                    mc.unlock(s)
                return None
            views.append(mv)
            starts.append(a)
            pos += len(mv)
        return Pinned(mc, views, starts)

    def invalidate(self):
        self.mc.invalidate()

    def stats(self):
        (hits, misses, maps, _unmaps, evictions, _invalidations, refused, buckets_mapped,
         _locked, max_buckets, bucket_pages) = self.mc.stats()
        return {
            "hits": hits,
            "misses": misses,
            "hit_rate": hits / (hits + misses) if hits + misses else 0.0,
            "maps": maps,
            "evictions": evictions,
            "refused": refused,
            "buckets_mapped": buckets_mapped,
            "max_buckets": max_buckets,
            "bucket_bytes": bucket_pages * 4096,
            "footprint": self.mc.footprint(),
        }


class Pinned:
    """Guest memory locked in the mapcache while a transfer is in flight."""

    def __init__(self, mc, views, starts):
        self.mc = mc
        self.views = views
        self._starts = starts

    def release(self):
        for s in self._starts:
            try:
                self.mc.unlock(s)
            except OSError:
                pass
        self._starts = []
        self.views = []


# The VGA's video RAM under Xen (stubdm/devices/vga.py): guest memory that
# the device model populates above the guest's RAM, as qemu-xen does, and
# moves into BAR0 wherever the guest puts it (relocate_memory). It is
# mapped once, whole, through a mapcache of its own (one locked bucket the
# size of the VRAM): moving pages in the guest's physmap keeps the frames,
# so the mapping stays valid wherever the guest sees them.
VRAM_ALIGN = 16 << 20


def vram_home(ram_bytes, size):
    """Where populated video RAM starts: above the guest's RAM, aligned to its
    size (one mapcache bucket), below the PCI hole or else above 4 GiB."""
    align = max(size, VRAM_ALIGN)
    top = 0
    for _start, end in ram_ranges(ram_bytes):
        top = max(top, end)
    home = (top + align - 1) // align * align
    if top <= LOW_RAM_END and home + size > LOW_RAM_END:
        home = (max(top, 1 << 32) + align - 1) // align * align
    return home


class GuestVram:
    """Video RAM in guest memory: size, view (all of it), move(gpa), dirty()."""

    def __init__(self, hyp, ram_bytes, size):
        if size & (size - 1) or size < (1 << 20):
            raise ValueError("video RAM must be a power of two of at least 1 MiB")
        self.hyp = hyp
        self.size = size
        self.ram = ram_ranges(ram_bytes)
        self.home = vram_home(ram_bytes, size)
        self.gpa = self.home
        self.tracking = None  # (first pfn, count) Xen tracks for us
        self.track_failed = False
        xen = hyp.xen
        try:
            xen.populate_physmap(self.home >> 12, size >> 12)
        except OSError as e:
            raise MemoryError("populating %d MiB of video RAM at %#x: %s"
                              % (size >> 20, self.home, e))
        shift = 20
        while (1 << shift) < size:
            shift += 1
        try:
            self.mc = glue.Mapcache(xen, shift, 1)
            self.mc.add_ram(self.home, self.home + size)
        except OSError:
            raise MemoryError("mapcache for the video RAM")
        self.view = self.mc.map_locked(self.home, size)
        if self.view is None:
            raise MemoryError("mapping the video RAM")

    def overlaps_ram(self, gpa):
        for start, end in self.ram:
            if gpa < end and start < gpa + self.size:
                return True
        return False

    def move(self, gpa):
        """Put the video RAM at gpa (None: back home). False if refused."""
        dst = self.home if gpa is None else gpa
        if dst == self.gpa:
            return True
        if gpa is not None and (gpa % 4096 or self.overlaps_ram(gpa)):
            return False
        try:
            self.hyp.xen.relocate_memory(self.size >> 12, self.gpa >> 12, dst >> 12)
        except OSError:
            return False
        self.gpa = dst
        self.tracking = None
        return True

    def dirty(self, first_page, count):
        """Pages [first_page, +count) of video RAM the guest wrote since the last
        call (Xen's track_dirty_vram), or None when Xen can't tell (all dirty)."""
        if self.track_failed:
            return None
        try:
            return self.hyp.xen.track_dirty_vram((self.gpa >> 12) + first_page, count)
        except OSError:
            self.track_failed = True  # e.g. a shadow-paging Xen: redraw everything
            return None
