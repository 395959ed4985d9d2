// stubdm mapcache: the device model's only window on guest memory.
//
// Guest RAM is mapped on demand in buckets of 2^bucket_shift bytes, each
// bucket with one xenforeignmemory_map call, and at most max_buckets buckets
// are mapped at once (least recently used unlocked bucket evicted first).
// A mapping taken with lock=1 stays valid until it is unlocked, even across
// mapcache_invalidate (Xen's INVALIDATE ioreq); other pointers are valid
// only until the next mapcache_map or mapcache_invalidate call.
//
// Plain C99, no globals, no Python API: compiled into a cffi module on
// CPython and into a MicroPython user C module. Not thread safe (the device
// model is a single-threaded event loop).
#ifndef STUBDM_MAPCACHE_H
#define STUBDM_MAPCACHE_H

#include <stddef.h>
#include <stdint.h>
#include <xenforeignmemory.h>

#define MAPCACHE_PAGE_SHIFT (12)
#define MAPCACHE_PAGE_SIZE ((uint64_t)1 << MAPCACHE_PAGE_SHIFT)
#define MAPCACHE_MAX_RAM_RANGES (8)
#define MAPCACHE_MIN_BUCKET_SHIFT (MAPCACHE_PAGE_SHIFT)
#define MAPCACHE_MAX_BUCKET_SHIFT (30)

typedef struct mapcache mapcache_t;

typedef struct {
    uint64_t hits;            // requests served by an already mapped bucket
    uint64_t misses;          // requests that needed a new bucket mapping
    uint64_t maps;            // successful xenforeignmemory_map calls
    uint64_t unmaps;          // xenforeignmemory_unmap calls
    uint64_t evictions;       // buckets unmapped to make room (LRU)
    uint64_t invalidations;   // mapcache_invalidate calls
    uint64_t refused;         // requests refused: outside RAM, crossing a bucket, len 0, wrap
    uint32_t buckets_mapped;  // buckets mapped now (including locked stale ones)
    uint32_t buckets_locked;  // buckets with at least one lock now
    uint32_t max_buckets;
    uint32_t bucket_pages;
} mapcache_stats_t;

// Returns NULL with errno EINVAL (bad bucket_shift / max_buckets) or ENOMEM.
// bucket_shift must be in [MAPCACHE_MIN_BUCKET_SHIFT, MAPCACHE_MAX_BUCKET_SHIFT],
// max_buckets >= 1. The handle stays owned by the caller.
mapcache_t *mapcache_new(xenforeignmemory_handle *fmem, uint32_t domid, unsigned bucket_shift, unsigned max_buckets);

// Unmaps everything (locked buckets too) and frees the cache. NULL is fine.
void mapcache_free(mapcache_t *mc);

// Declares guest RAM [start, end_exclusive); both page aligned, start < end,
// no overlap with a range already added, at most MAPCACHE_MAX_RAM_RANGES.
// Returns 0, or -1 with errno EINVAL (bad or overlapping range) or ENOSPC.
int mapcache_add_ram(mapcache_t *mc, uint64_t start, uint64_t end_exclusive);

// Pointer to guest bytes [gpa, gpa + len), or NULL with errno set:
//   EINVAL  len == 0, gpa + len wraps, or the range crosses a bucket boundary
//   EFAULT  the range is not entirely inside one RAM range, or Xen refused a
//           page of the bucket (per-page error)
//   ENOMEM  the cache is full and every bucket is locked
//   other   errno of a failed xenforeignmemory_map
// lock != 0 takes a lock on the bucket: the pointer then stays valid until
// the matching mapcache_unlock / mapcache_unlock_ptr.
void *mapcache_map(mapcache_t *mc, uint64_t gpa, size_t len, int lock);

// Drops one lock on the bucket holding gpa. When both a bucket kept across an
// invalidate (stale) and a fresh bucket hold gpa locked, the stale one is
// released first; use mapcache_unlock_ptr to be exact. Returns 0, or -1 with
// errno EINVAL if no locked bucket holds gpa.
int mapcache_unlock(mapcache_t *mc, uint64_t gpa);

// Drops one lock on the bucket that contains ptr (any pointer returned by
// mapcache_map(lock=1), or inside its mapping). Returns 0, or -1 (EINVAL).
int mapcache_unlock_ptr(mapcache_t *mc, const void *ptr);

// Unmaps every unlocked bucket. Locked buckets stay mapped (their pointers
// remain valid) but are never returned again by mapcache_map; each is
// unmapped when its last lock is dropped.
void mapcache_invalidate(mapcache_t *mc);

// Bytes from gpa to the end of its bucket (>= 1), for splitting transfers.
size_t mapcache_bucket_room(mapcache_t *mc, uint64_t gpa);

void mapcache_get_stats(mapcache_t *mc, mapcache_stats_t *out);

// Bytes of heap the cache itself uses (struct, bucket slots, scratch arrays);
// the mapped guest pages are not counted.
size_t mapcache_footprint(mapcache_t *mc);

// AHCI's physical region descriptor table (AHCI 1.3.1 4.2.3.3): n entries of
// 16 bytes, each a u64 data base address (bit 0 reserved, taken as 0), a
// reserved u32 and a u32 whose bits 21:0 are the byte count minus one (bit 0
// of that field set: an even count). The table is the caller's copy, read
// from guest memory once, so the guest can't change it under a transfer.

// The table's total byte count, or -1 - i when entry i's count is odd.
int64_t mapcache_prdt_total(const uint8_t *prdt, uint32_t n);

// Copies len bytes between buf and the guest memory of the table's byte
// stream, from byte skip of it on: into the guest when to_guest, else out of
// it. Each piece goes through mapcache_map without a lock (one call per piece
// within a bucket, one memcpy). Returns 0, or -1 with errno EFAULT when a
// piece is not guest RAM or its address range wraps, EINVAL when the table
// holds fewer than skip + len bytes; bytes before the failing piece were
// copied. cursor (or NULL): two u64s, the entry where the last call over the
// same table ended and the stream offset it starts at ({0, 0} at first); a
// call from there on walks on from that entry instead of from entry 0, so a
// command's calls in stream order read each entry once, however long the
// table. Only calls over one table may share a cursor.
int mapcache_prdt_copy(mapcache_t *mc, const uint8_t *prdt, uint32_t n, uint64_t skip, uint8_t *buf, size_t len, int to_guest, uint64_t *cursor);

#endif // STUBDM_MAPCACHE_H
