# Guest memory as the device model sees it: through the mapcache only
# (DESIGN.md section 6). Copies are slice assignments between memoryviews of
# mapped buckets and Python buffers, never per-byte loops.
from stubdm.hypervisor import ffi, lib

# HVM guests have RAM below the MMIO hole and the rest above 4 GiB; this is
# where hvmloader's default hole starts.
LOW_RAM_END = 0xF0000000


def ram_ranges(ram_bytes):
    low = min(ram_bytes, LOW_RAM_END)
    ranges = [(0, low)]
    if ram_bytes > low:
        ranges.append((1 << 32, (1 << 32) + ram_bytes - low))
    return ranges


class GuestMemory:
    def __init__(self, hyp, ram_bytes, bucket_shift=20, max_buckets=64):
        self.mc = lib.mapcache_new(hyp.fmem, hyp.domid, bucket_shift, max_buckets)
        if self.mc == ffi.NULL:
            raise MemoryError("mapcache_new failed")
        self.ranges = ram_ranges(ram_bytes)
        for start, end in self.ranges:
            if lib.mapcache_add_ram(self.mc, start, end) < 0:
                raise ValueError("bad guest RAM range %#x-%#x" % (start, end))
        self._stats = ffi.new("mapcache_stats_t *")

    def _piece(self, gpa, want):
        """A memoryview of up to `want` bytes at gpa, ending at its bucket's end.

        The mapping is unlocked: it is only valid until the next map, so each
        piece is copied before the next is asked for. None if not guest RAM.
        """
        k = min(lib.mapcache_bucket_room(self.mc, gpa), want)
        p = lib.mapcache_map(self.mc, gpa, k, 0) if k else ffi.NULL
        if p == ffi.NULL:
            return None
        return memoryview(ffi.buffer(p, k))

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

    def invalidate(self):
        lib.mapcache_invalidate(self.mc)

    def stats(self):
        s = self._stats
        lib.mapcache_get_stats(self.mc, s)
        hits, misses = s.hits, s.misses
        return {
            "hits": hits,
            "misses": misses,
            "hit_rate": hits / (hits + misses) if hits + misses else 0.0,
            "maps": s.maps,
            "evictions": s.evictions,
            "refused": s.refused,
            "buckets_mapped": s.buckets_mapped,
            "max_buckets": s.max_buckets,
            "bucket_bytes": s.bucket_pages * 4096,
            "footprint": lib.mapcache_footprint(self.mc),
        }
