"""stubdm/mapcache/mapcache.c over a fake foreign-memory API (fake_fmem.c).

Guest RAM is a memfd; the tests look at it directly through an mmap of the
memfd and at the mapcache's mappings through ffi.buffer memoryviews.
"""
import errno
import mmap
import os
import random
import shutil
import subprocess
import sys

import pytest

from . import build_test_module as btm

pytestmark = pytest.mark.skipif(
    not os.path.exists(btm.XEN_HEADER) or not sys.platform.startswith("linux"),
    reason="needs Linux and Xen's headers: apt-get install libxen-dev",
)

MiB = 1 << 20
PAGE = 4096

# fake_fmem_counter selectors
MAP_CALLS, UNMAP_CALLS, BAD_UNMAPS, LIVE, LIVE_MAX, PAGES_MAPPED, DOMID, PROT = range(8)


@pytest.fixture(scope="module")
def mod(tmp_path_factory):
    pytest.importorskip("cffi")
    return btm.build(tmp_path_factory.mktemp("mapcache"))


class Env:
    """One fake foreign-memory handle with its guest RAM, and a mapcache on it."""

    def __init__(self, mod, ram_bytes, shift=20, max_buckets=4, ranges=None, domid=7):
        self.ffi, self.lib = mod.ffi, mod.lib
        self.h = self.lib.xenforeignmemory_open(self.ffi.NULL, 0)
        assert self.h != self.ffi.NULL
        fd = self.lib.fake_fmem_set_ram(self.h, ram_bytes)
        assert fd >= 0
        self.ram = mmap.mmap(fd, ram_bytes)
        self.mc = self.lib.mapcache_new(self.h, domid, shift, max_buckets)
        assert self.mc != self.ffi.NULL
        for start, end in ranges if ranges is not None else [(0, ram_bytes)]:
            assert self.lib.mapcache_add_ram(self.mc, start, end) == 0

    def map(self, gpa, n, lock=0):
        """memoryview on guest bytes [gpa, gpa+n), or None (errno in self.errno)."""
        p = self.lib.mapcache_map(self.mc, gpa, n, lock)
        self.errno = self.ffi.errno
        if p == self.ffi.NULL:
            return None
        return memoryview(self.ffi.buffer(p, n))

    def ptr(self, gpa, n, lock=0):
        p = self.lib.mapcache_map(self.mc, gpa, n, lock)
        self.errno = self.ffi.errno
        return p

    def refuse(self, gpa, n, want_errno, lock=0):
        p = self.lib.mapcache_map(self.mc, gpa, n, lock)
        assert p == self.ffi.NULL
        assert self.ffi.errno == want_errno, os.strerror(self.ffi.errno)

    def unlock(self, gpa):
        return self.lib.mapcache_unlock(self.mc, gpa)

    def stats(self):
        s = self.ffi.new("mapcache_stats_t *")
        self.lib.mapcache_get_stats(self.mc, s)
        return s

    def fake(self, which):
        return self.lib.fake_fmem_counter(self.h, which)

    def close(self):
        if self.mc is not None:
            self.lib.mapcache_free(self.mc)
            self.mc = None
            assert self.fake(LIVE) == 0, "mapcache_free left mappings behind"
            assert self.fake(BAD_UNMAPS) == 0, "unmap of something not mapped"
        self.ram.close()
        self.lib.xenforeignmemory_close(self.h)


@pytest.fixture
def make(mod):
    envs = []

    def factory(*args, **kw):
        e = Env(mod, *args, **kw)
        envs.append(e)
        return e

    yield factory
    for e in envs:
        e.close()


def test_data_visible_both_ways(make):
    e = make(4 * MiB)
    v = e.map(0x1234, 16)
    v[:] = b"written by the DM"[:16]
    assert e.ram[0x1234:0x1244] == b"written by the D"
    e.ram[0x200005:0x20000C] = b"guest!!"
    assert bytes(e.map(0x200005, 7)) == b"guest!!"
    # Pages of a bucket are mapped linearly: a multi-page span is contiguous.
    blob = os.urandom(3 * PAGE)
    e.map(0x300FF0, len(blob))[:] = blob
    assert e.ram[0x300FF0 : 0x300FF0 + len(blob)] == blob
    # The whole last bucket, both ways.
    blob = os.urandom(MiB)
    e.ram[3 * MiB : 4 * MiB] = blob
    assert bytes(e.map(3 * MiB, MiB)) == blob
    assert e.fake(DOMID) == 7
    assert e.fake(PROT) == mmap.PROT_READ | mmap.PROT_WRITE


def test_repeated_hits_do_not_map_again(make):
    e = make(4 * MiB)
    for i in range(100):
        assert e.map(0x100000 + i * 64, 64) is not None
    assert e.fake(MAP_CALLS) == 1
    s = e.stats()
    assert (s.misses, s.hits, s.maps) == (1, 99, 1)
    # Alternating between two buckets: the slow-path lookup also hits.
    for i in range(50):
        assert e.map(0x200000 + i, 1) is not None
        assert e.map(0x100000 + i, 1) is not None
    assert e.fake(MAP_CALLS) == 2
    s = e.stats()
    assert (s.misses, s.hits, s.buckets_mapped) == (2, 198, 2)


def test_lru_eviction_order(make):
    e = make(8 * MiB, max_buckets=2)
    A, B, C = 0 * MiB, 1 * MiB, 2 * MiB
    e.map(A, 8)
    e.map(B, 8)
    e.map(A, 8)  # A is now more recent than B
    e.map(C, 8)  # evicts B
    s = e.stats()
    assert (s.evictions, s.buckets_mapped) == (1, 2)
    assert e.fake(UNMAP_CALLS) == 1
    maps = e.fake(MAP_CALLS)
    e.map(A, 8)  # still cached
    e.map(C, 8)  # still cached
    assert e.fake(MAP_CALLS) == maps
    e.map(B, 8)  # miss again; evicts A (least recent of A, C)
    assert e.fake(MAP_CALLS) == maps + 1
    e.map(C, 8)
    assert e.fake(MAP_CALLS) == maps + 1
    e.map(A, 8)
    assert e.fake(MAP_CALLS) == maps + 2
    assert e.stats().evictions == 3


def test_bound_is_never_exceeded(make):
    rnd = random.Random(1234)
    e = make(16 * MiB, max_buckets=3)
    locked = []
    for _ in range(2000):
        gpa = rnd.randrange(16) * MiB + rnd.randrange(MiB - 64)
        op = rnd.random()
        if op < 0.1 and locked:
            assert e.unlock(locked.pop(rnd.randrange(len(locked)))) == 0
        elif op < 0.15:
            e.lib.mapcache_invalidate(e.mc)
        else:
            lock = 1 if op > 0.95 and len(locked) < 4 else 0
            v = e.map(gpa, 64, lock)
            if v is None:
                assert e.errno == errno.ENOMEM
                assert e.stats().buckets_locked == 3
            elif lock:
                locked.append(gpa)
        s = e.stats()
        assert s.buckets_mapped <= 3
        assert e.fake(LIVE) == s.buckets_mapped
    assert e.fake(LIVE_MAX) == 3
    assert e.stats().evictions > 0


def test_invalidate_keeps_locked_drops_unlocked(make):
    e = make(8 * MiB)
    e.ram[0x100010:0x100015] = b"keep!"
    locked = e.map(0x100010, 5, lock=1)
    e.map(0x200000, 4)
    e.map(0x300000, 4)
    assert e.fake(LIVE) == 3
    e.lib.mapcache_invalidate(e.mc)
    assert e.fake(UNMAP_CALLS) == 2
    s = e.stats()
    assert (s.buckets_mapped, s.buckets_locked, s.invalidations) == (1, 1, 1)
    # The locked pointer still works, both ways.
    assert bytes(locked) == b"keep!"
    locked[:] = b"KEEP?"
    assert e.ram[0x100010:0x100015] == b"KEEP?"
    # A stale bucket is not handed out again: the same gpa maps afresh.
    maps = e.fake(MAP_CALLS)
    fresh = e.map(0x100010, 5)
    assert e.fake(MAP_CALLS) == maps + 1
    assert bytes(fresh) == b"KEEP?"
    assert e.stats().buckets_mapped == 2


def test_unlock_after_invalidate_releases(make):
    e = make(4 * MiB)
    e.map(0x100000, 8, lock=1)
    e.map(0x100100, 8, lock=1)  # two locks on one bucket
    assert e.stats().buckets_locked == 1
    e.lib.mapcache_invalidate(e.mc)
    assert e.unlock(0x100000) == 0
    assert e.fake(LIVE) == 1  # one lock left
    unmaps = e.fake(UNMAP_CALLS)
    assert e.unlock(0x100100) == 0
    assert e.fake(UNMAP_CALLS) == unmaps + 1
    assert e.fake(LIVE) == 0
    s = e.stats()
    assert (s.buckets_mapped, s.buckets_locked) == (0, 0)
    assert e.unlock(0x100000) == -1
    assert e.ffi.errno == errno.EINVAL


def test_unlock_without_invalidate_keeps_bucket_cached(make):
    e = make(4 * MiB)
    e.map(0x100000, 8, lock=1)
    assert e.unlock(0x1FFFFF) == 0  # any gpa of the bucket
    assert e.fake(LIVE) == 1
    assert e.stats().buckets_locked == 0
    assert e.unlock(0x100000) == -1  # no lock left
    assert e.unlock(0x300000) == -1  # never mapped
    e.map(0x100000, 8)
    assert e.fake(MAP_CALLS) == 1


def test_unlock_ptr_picks_the_exact_bucket(make):
    e = make(4 * MiB)
    old = e.ptr(0x100000, 8, lock=1)
    e.lib.mapcache_invalidate(e.mc)
    new = e.ptr(0x100000, 8, lock=1)
    assert old != new and e.fake(LIVE) == 2
    assert e.lib.mapcache_unlock_ptr(e.mc, new + 5) == 0
    assert e.fake(LIVE) == 2  # fresh bucket stays cached, stale one still locked
    e.ffi.buffer(old, 8)[:] = b"stillok!"  # stale mapping still valid
    assert e.lib.mapcache_unlock_ptr(e.mc, old) == 0
    assert e.fake(LIVE) == 1
    assert e.lib.mapcache_unlock_ptr(e.mc, old) == -1
    # By gpa, a stale lock is released before a fresh one.
    old = e.ptr(0x100000, 8, lock=1)
    e.lib.mapcache_invalidate(e.mc)
    e.ptr(0x100000, 8, lock=1)
    assert e.unlock(0x100000) == 0
    s = e.stats()
    assert (s.buckets_mapped, s.buckets_locked) == (1, 1)


def test_all_locked_gives_enomem(make):
    e = make(8 * MiB, max_buckets=2)
    e.map(0, 8, lock=1)
    e.map(MiB, 8, lock=1)
    maps = e.fake(MAP_CALLS)
    e.refuse(2 * MiB, 8, errno.ENOMEM)
    assert e.fake(MAP_CALLS) == maps
    s = e.stats()
    assert (s.buckets_mapped, s.refused) == (2, 0)
    assert e.map(MiB + 4, 4) is not None  # locked buckets still serve hits
    assert e.unlock(0) == 0
    assert e.map(2 * MiB, 8) is not None  # evicts the now unlocked bucket 0
    assert e.stats().evictions == 1
    assert e.fake(LIVE) == 2


def test_refused_requests(make):
    lowmem = (0, 0xA0000)
    top = 6 * MiB - 0x10000  # RAM ends inside a bucket
    e = make(8 * MiB, ranges=[lowmem, (MiB, top)])
    cases = [
        (6 * MiB, 4, errno.EFAULT),  # above RAM
        (0xB8000, 2, errno.EFAULT),  # VGA hole
        (0x9FFFE, 4, errno.EFAULT),  # straddles the end of lowmem
        (top - 2, 4, errno.EFAULT),  # straddles the end of RAM
        (top, 1, errno.EFAULT),  # first byte above RAM, same bucket
        (MiB - 2, 4, errno.EINVAL),  # crosses a bucket (and a hole)
        (2 * MiB - 8, 16, errno.EINVAL),  # crosses a bucket inside RAM
        (MiB, 2 * MiB, errno.EINVAL),  # longer than a bucket
        (MiB, 0, errno.EINVAL),  # len 0
        (2**64 - 8, 16, errno.EINVAL),  # wraps around
        (2**64 - 1, 2**64 - 1, errno.EINVAL),
        (2**64 - 16, 16, errno.EFAULT),  # ends exactly at 2^64, not RAM
    ]
    for gpa, n, want in cases:
        e.refuse(gpa, n, want)
    # len 0 also refused on the fast path (last bucket covers the gpa).
    assert e.map(MiB, 8) is not None
    e.refuse(MiB, 0, errno.EINVAL)
    e.refuse(MiB + 8, 0, errno.EINVAL)
    s = e.stats()
    assert s.refused == len(cases) + 2
    assert e.fake(MAP_CALLS) == 1
    assert e.map(MiB, MiB) is not None  # a whole bucket is fine
    assert e.map(0x9FFFC, 4) is not None  # last bytes of lowmem
    assert e.map(top - 4, 4) is not None  # last bytes of RAM


def test_edge_bucket_maps_only_ram_pages(make):
    # lowmem ends inside bucket 0; the second range starts in bucket 0 as well
    # and ends inside bucket 1.
    e = make(4 * MiB, ranges=[(0, 0xA0000), (0xC0000, 0x180000)])
    assert e.map(0x10, 4) is not None
    assert e.fake(PAGES_MAPPED) == 0xA0000 // PAGE
    e.ram[0xC0000:0xC0004] = b"ROM?"
    assert bytes(e.map(0xC0000, 4)) == b"ROM?"  # same bucket, other run
    assert e.fake(MAP_CALLS) == 2
    assert e.fake(PAGES_MAPPED) == 0xA0000 // PAGE + 0x40000 // PAGE
    assert e.map(0x17FFFC, 4) is not None
    assert e.fake(PAGES_MAPPED) == 0xA0000 // PAGE + 0x40000 // PAGE + 0x80000 // PAGE
    e.refuse(0x180000, 4, errno.EFAULT)
    # Repeat hits on each run don't map again.
    for gpa in (0x10, 0xC0010, 0x100000, 0x9F000):
        assert e.map(gpa, 16) is not None
    assert e.fake(MAP_CALLS) == 3


def test_per_page_error_fails_cleanly(make):
    e = make(4 * MiB)
    e.lib.fake_fmem_fail_gfn(e.h, 0x105)  # page 5 of bucket 1
    e.refuse(0x100000, 8, errno.EFAULT)
    e.refuse(0x1FF000, 8, errno.EFAULT)
    assert e.fake(LIVE) == 0
    assert e.fake(MAP_CALLS) == e.fake(UNMAP_CALLS) == 2
    s = e.stats()
    assert (s.buckets_mapped, s.maps, s.refused) == (0, 0, 0)
    assert e.map(0x200000, 8) is not None  # other buckets unaffected
    e.lib.fake_fmem_fail_gfn(e.h, -1)
    assert e.map(0x100000, 8) is not None
    # A complete failure of the map call passes its errno through.
    e.lib.fake_fmem_fail_next_map(e.h, errno.EIO)
    e.refuse(0x300000, 8, errno.EIO)
    assert e.stats().buckets_mapped == 2


def test_failed_map_after_eviction_never_exceeds_bound(make):
    e = make(4 * MiB, max_buckets=1)
    e.map(0, 8)
    e.lib.fake_fmem_fail_gfn(e.h, 0x100)
    e.refuse(MiB, 8, errno.EFAULT)
    assert e.fake(LIVE_MAX) == 1
    assert e.stats().buckets_mapped == 0


def test_bucket_room(make):
    e = make(4 * MiB)
    room = e.lib.mapcache_bucket_room
    assert room(e.mc, 0) == MiB
    assert room(e.mc, MiB - 1) == 1
    assert room(e.mc, 0x123456) == 0x200000 - 0x123456
    assert room(e.mc, 2**64 - 1) == 1
    # A transfer split by bucket_room maps piece by piece.
    gpa, n, blob = 0xFFF00, 0x300, os.urandom(0x300)
    done = 0
    while done < n:
        step = min(n - done, room(e.mc, gpa + done))
        e.map(gpa + done, step)[:] = blob[done : done + step]
        done += step
    assert e.ram[gpa : gpa + n] == blob
    e2 = make(4 * MiB, shift=12)
    assert e2.lib.mapcache_bucket_room(e2.mc, 0x1FFF) == 1
    assert e2.stats().bucket_pages == 1


def test_add_ram_validation(make, mod):
    e = make(4 * MiB, ranges=[(0, MiB)])
    add = mod.lib.mapcache_add_ram
    for start, end in [(MiB, MiB), (2 * MiB, MiB), (MiB + 1, 2 * MiB), (MiB, 2 * MiB - 1), (0x80000, 2 * MiB)]:
        assert add(e.mc, start, end) == -1
        assert mod.ffi.errno == errno.EINVAL
    for i in range(1, 8):
        assert add(e.mc, i * 2 * MiB, i * 2 * MiB + PAGE) == 0
    assert add(e.mc, 100 * MiB, 101 * MiB) == -1
    assert mod.ffi.errno == errno.ENOSPC


def test_new_validation(mod):
    lib, ffi = mod.lib, mod.ffi
    for shift, n in [(11, 4), (31, 4), (20, 0)]:
        assert lib.mapcache_new(ffi.NULL, 1, shift, n) == ffi.NULL
        assert ffi.errno == errno.EINVAL
    mc = lib.mapcache_new(ffi.NULL, 1, 20, 4)
    s = ffi.new("mapcache_stats_t *")
    lib.mapcache_get_stats(mc, s)
    assert (s.max_buckets, s.bucket_pages, s.buckets_mapped) == (4, 256, 0)
    lib.mapcache_free(mc)
    lib.mapcache_free(ffi.NULL)


def test_free_unmaps_everything(mod):
    e = Env(mod, 4 * MiB)
    e.map(0, 8, lock=1)
    e.map(MiB, 8)
    e.lib.mapcache_invalidate(e.mc)
    e.map(2 * MiB, 8, lock=1)
    e.close()  # asserts no live mapping and no bad unmap


def test_footprint(mod):
    lib, ffi = mod.lib, mod.ffi
    a = lib.mapcache_new(ffi.NULL, 1, 20, 32)
    b = lib.mapcache_new(ffi.NULL, 1, 20, 33)
    c = lib.mapcache_new(ffi.NULL, 1, 21, 32)
    try:
        per_slot = lib.mapcache_footprint(b) - lib.mapcache_footprint(a)
        per_page = (lib.mapcache_footprint(c) - lib.mapcache_footprint(a)) // 256
        assert per_slot == 40
        assert per_page == 12  # gfn + err scratch
        assert lib.mapcache_footprint(a) < 8192
    finally:
        for mc in (a, b, c):
            lib.mapcache_free(mc)


def _prdt(entries):
    """An AHCI PRD table's bytes (AHCI 1.3.1 4.2.3.3) from (address, byte count) pairs."""
    out = bytearray()
    for addr, n in entries:
        out += addr.to_bytes(8, "little") + bytes(4) + (n - 1).to_bytes(4, "little")
    return bytes(out)


def _prdt_copy(e, table, skip, buf, to_guest, cursor=None):
    ffi = e.ffi
    cur = ffi.NULL if cursor is None else cursor
    rc = e.lib.mapcache_prdt_copy(e.mc, table, len(table) // 16, skip,
                                  ffi.from_buffer(buf), len(buf), to_guest, cur)
    return rc, ffi.errno


def test_prdt_copy_moves_the_stream_and_stops_at_a_piece_outside_ram(make):
    # AHCI's scatter list in C: the guest's PRD pieces in table order, any bucket.
    e = make(4 * MiB, ranges=[(0, 0xA0000), (MiB, 4 * MiB)])
    e.ram[:] = os.urandom(4 * MiB)
    pieces = [(0x3FF000, 8192 - 4096), (0x1000, 512), (2 * MiB - 1024, 2048), (0x9F000, 4096)]
    table = _prdt(pieces)
    want = b"".join(e.ram[a:a + n] for a, n in pieces)
    buf = bytearray(len(want))
    assert _prdt_copy(e, table, 0, buf, 0)[0] == 0 and buf == want
    part = bytearray(1000)
    assert _prdt_copy(e, table, 4000, part, 0)[0] == 0 and part == want[4000:5000]
    # Into the guest, from the middle of the stream.
    blob = os.urandom(3000)
    assert _prdt_copy(e, table, 4096 + 100, bytearray(blob), 1)[0] == 0
    assert e.ram[0x1000 + 100:0x1000 + 512] == blob[:412]
    assert e.ram[2 * MiB - 1024:2 * MiB - 1024 + 2048] == blob[412:2460]
    # A guest's table with a piece in the VGA hole: EFAULT, the pieces before it
    # moved, nothing written past them.
    e.ram[0x3FF000:0x400000] = bytes(4096)
    bad = _prdt([(0x3FF000, 4096), (0xB8000, 4096), (0x1000, 4096)])
    blob = os.urandom(3 * 4096)
    before = bytes(e.ram[0x1000:0x2000])
    assert _prdt_copy(e, bad, 0, bytearray(blob), 1) == (-1, errno.EFAULT)
    assert e.ram[0x3FF000:0x400000] == blob[:4096]
    assert e.ram[0x1000:0x2000] == before
    # Above RAM, an address that wraps, and a table shorter than the copy.
    for t, want_errno in ((_prdt([(4 * MiB, 4096)]), errno.EFAULT),
                          (_prdt([(2**64 - 4096, 8192)]), errno.EFAULT),
                          (_prdt([(0x1000, 4096)]), errno.EINVAL)):
        assert _prdt_copy(e, t, 0, bytearray(8192), 0) == (-1, want_errno)


def test_prdt_copy_cursor_walks_a_long_table_once(make):
    # A hostile table of 65535 two-byte entries (the most a command header names):
    # with the cursor each call in stream order starts at the entry the last one
    # ended in, and a call behind it still gets its bytes (walked from entry 0).
    e = make(4 * MiB)
    e.ram[:] = os.urandom(4 * MiB)
    n = 65535
    entries = [(MiB + 6 * i, 2) for i in range(n)]  # 2 bytes used of every 6
    table = _prdt(entries)
    stream = b"".join(e.ram[a:a + 2] for a, _ in entries)
    cur = e.ffi.new("uint64_t[2]")
    pos = 0
    for size in (1000, 4096, 8190, 2, 30000, 65536, len(stream) - 108824):
        buf = bytearray(size)
        assert _prdt_copy(e, table, pos, buf, 0, cur)[0] == 0
        assert buf == stream[pos:pos + size]
        pos += size
        last = (pos - 1) // 2
        assert (cur[0], cur[1]) == (last, 2 * last)  # the entry of the last byte moved
    assert pos == len(stream)
    buf = bytearray(10)
    assert _prdt_copy(e, table, 50, buf, 0, cur)[0] == 0 and buf == stream[50:60]
    assert (cur[0], cur[1]) == (29, 58)
    # A cursor past the table (or past skip) is not trusted: the walk starts at 0.
    cur[0], cur[1] = n + 5, 0
    assert _prdt_copy(e, table, 8, buf, 0, cur)[0] == 0 and buf == stream[8:18]
    cur[0], cur[1] = 100, 200
    assert _prdt_copy(e, table, 8, buf, 0, cur)[0] == 0 and buf == stream[8:18]
    assert _prdt_copy(e, table, len(stream) - 4, buf, 0, cur) == (-1, errno.EINVAL)


@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")
@pytest.mark.parametrize("std", ["c99", "gnu99"])
def test_mapcache_c_compiles_strictly(tmp_path, std):
    cmd = ["gcc", "-std=" + std, "-Wall", "-Wextra", "-Werror", "-pedantic", "-O2",
           "-c", btm.MAPCACHE_C, "-o", str(tmp_path / "mapcache.o")]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
