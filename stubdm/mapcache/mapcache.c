// stubdm mapcache: bucketed, bounded, LRU cache of foreign guest mappings.
// See mapcache.h for the contract. Design notes:
// - A bucket slot maps one contiguous run of guest pages: the part of one
//   2^bucket_shift bucket that lies inside one RAM range. Usually that is the
//   whole bucket; at the edge of a RAM range it is only the pages inside RAM
//   (and a bucket holding the end of one range and the start of the next has
//   one slot per run). Runs never overlap, since RAM ranges don't.
// - Slots live in a fixed array of max_buckets; an empty slot has
//   vaddr == NULL, so the bound can never be exceeded. Lookup is a linear
//   scan, preceded by a fast path on the slot used last.
// - A slot kept across an invalidate because it is locked is "stale": it is
//   never returned by a lookup again and is unmapped on its last unlock.
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "mapcache.h"

typedef struct {
    uint8_t *vaddr;     // NULL: slot free
    uint64_t start;     // guest physical address of the first mapped page
    uint64_t lru;       // tick of the last use
    uint32_t npages;    // pages mapped at vaddr
    uint32_t locks;     // outstanding map(lock=1) calls
    uint32_t stale;     // kept across an invalidate only because it is locked
} mapcache_slot_t;

typedef struct {
    uint64_t start;
    uint64_t end;       // exclusive
} mapcache_range_t;

struct mapcache {
    xenforeignmemory_handle *fmem;
    uint32_t domid;
    unsigned bucket_shift;
    uint32_t bucket_pages;
    uint32_t max_buckets;
    uint32_t n_ram;
    mapcache_range_t ram[MAPCACHE_MAX_RAM_RANGES];
    mapcache_slot_t *last;      // fast path: slot of the last hit or map (never stale)
    uint64_t tick;
    mapcache_stats_t stats;     // counters; the uint32_t gauges are filled on demand
    xen_pfn_t *gfns;            // scratch, bucket_pages entries
    int *errs;                  // scratch, bucket_pages entries
    mapcache_slot_t slots[];    // max_buckets entries
};

static uint64_t slot_bytes(const mapcache_slot_t *s) {
    return (uint64_t)s->npages << MAPCACHE_PAGE_SHIFT;
}

// True if [gpa, gpa + len) lies inside the slot's mapping; len >= 1 and
// gpa + len must not wrap (no arithmetic here can overflow either way).
static int slot_covers(const mapcache_slot_t *s, uint64_t gpa, uint64_t len) {
    if (gpa < s->start) {
        return 0;
    }
    uint64_t off = gpa - s->start;
    uint64_t size = slot_bytes(s);
    return off < size && len <= size - off;
}

static void slot_unmap(mapcache_t *mc, mapcache_slot_t *s) {
    xenforeignmemory_unmap(mc->fmem, s->vaddr, s->npages);
    mc->stats.unmaps++;
    if (mc->last == s) {
        mc->last = NULL;
    }
    memset(s, 0, sizeof(*s));
}

static void *slot_use(mapcache_t *mc, mapcache_slot_t *s, uint64_t gpa, int lock) {
    if (lock) {
        if (s->locks == UINT32_MAX) {
            errno = EOVERFLOW;
            return NULL;
        }
        s->locks++;
    }
    s->lru = ++mc->tick;
    mc->last = s;
    return s->vaddr + (gpa - s->start);
}

mapcache_t *mapcache_new(xenforeignmemory_handle *fmem, uint32_t domid, unsigned bucket_shift, unsigned max_buckets) {
    if (bucket_shift < MAPCACHE_MIN_BUCKET_SHIFT || bucket_shift > MAPCACHE_MAX_BUCKET_SHIFT
        || max_buckets == 0 || max_buckets > UINT32_MAX / 2) {
        errno = EINVAL;
        return NULL;
    }
    size_t n = max_buckets;
    if (n > (SIZE_MAX - sizeof(mapcache_t)) / sizeof(mapcache_slot_t)) {
        errno = ENOMEM;
        return NULL;
    }
    mapcache_t *mc = calloc(1, sizeof(mapcache_t) + n * sizeof(mapcache_slot_t));
    if (mc == NULL) {
        errno = ENOMEM;
        return NULL;
    }
    mc->fmem = fmem;
    mc->domid = domid;
    mc->bucket_shift = bucket_shift;
    mc->bucket_pages = (uint32_t)1 << (bucket_shift - MAPCACHE_PAGE_SHIFT);
    mc->max_buckets = (uint32_t)max_buckets;
    mc->gfns = calloc(mc->bucket_pages, sizeof(xen_pfn_t));
    mc->errs = calloc(mc->bucket_pages, sizeof(int));
    if (mc->gfns == NULL || mc->errs == NULL) {
        free(mc->gfns);
        free(mc->errs);
        free(mc);
        errno = ENOMEM;
        return NULL;
    }
    return mc;
}

void mapcache_free(mapcache_t *mc) {
    if (mc == NULL) {
        return;
    }
    for (uint32_t i = 0; i < mc->max_buckets; i++) {
        if (mc->slots[i].vaddr != NULL) {
            slot_unmap(mc, &mc->slots[i]);
        }
    }
    free(mc->gfns);
    free(mc->errs);
    free(mc);
}

int mapcache_add_ram(mapcache_t *mc, uint64_t start, uint64_t end_exclusive) {
    uint64_t mask = MAPCACHE_PAGE_SIZE - 1;
    if (start >= end_exclusive || (start & mask) != 0 || (end_exclusive & mask) != 0) {
        errno = EINVAL;
        return -1;
    }
    for (uint32_t i = 0; i < mc->n_ram; i++) {
        if (start < mc->ram[i].end && mc->ram[i].start < end_exclusive) {
            errno = EINVAL;
            return -1;
        }
    }
    if (mc->n_ram >= MAPCACHE_MAX_RAM_RANGES) {
        errno = ENOSPC;
        return -1;
    }
    mc->ram[mc->n_ram].start = start;
    mc->ram[mc->n_ram].end = end_exclusive;
    mc->n_ram++;
    return 0;
}

// Frees a slot for a new mapping: an empty one, else the least recently used
// unlocked one (unmapped here). NULL if every slot is mapped and locked.
static mapcache_slot_t *slot_claim(mapcache_t *mc) {
    mapcache_slot_t *victim = NULL;
    for (uint32_t i = 0; i < mc->max_buckets; i++) {
        mapcache_slot_t *s = &mc->slots[i];
        if (s->vaddr == NULL) {
            return s;
        }
        if (s->locks == 0 && (victim == NULL || s->lru < victim->lru)) {
            victim = s;
        }
    }
    if (victim != NULL) {
        slot_unmap(mc, victim);
        mc->stats.evictions++;
    }
    return victim;
}

void *mapcache_map(mapcache_t *mc, uint64_t gpa, size_t len, int lock) {
    // Fast path: the slot used last (never stale; covers only RAM within one bucket).
    mapcache_slot_t *s = mc->last;
    if (s != NULL && len != 0 && slot_covers(s, gpa, len)) {
        mc->stats.hits++;
        return slot_use(mc, s, gpa, lock);
    }

    // Refuse what no bucket can hold.
    uint64_t len64 = (uint64_t)len;
    if (len == 0 || len64 - 1 > UINT64_MAX - gpa) {
        mc->stats.refused++;
        errno = EINVAL;
        return NULL;
    }
    uint64_t last_byte = gpa + (len64 - 1);
    if ((gpa >> mc->bucket_shift) != (last_byte >> mc->bucket_shift)) {
        mc->stats.refused++;
        errno = EINVAL;
        return NULL;
    }
    const mapcache_range_t *r = NULL;
    for (uint32_t i = 0; i < mc->n_ram; i++) {
        if (mc->ram[i].start <= gpa && last_byte < mc->ram[i].end) {
            r = &mc->ram[i];
            break;
        }
    }
    if (r == NULL) {
        mc->stats.refused++;
        errno = EFAULT;
        return NULL;
    }

    // Lookup among the mapped slots.
    for (uint32_t i = 0; i < mc->max_buckets; i++) {
        s = &mc->slots[i];
        if (s->vaddr != NULL && !s->stale && slot_covers(s, gpa, len64)) {
            mc->stats.hits++;
            return slot_use(mc, s, gpa, lock);
        }
    }

    // Miss: map the part of gpa's bucket that lies inside RAM range r.
    mc->stats.misses++;
    uint64_t bucket_size = (uint64_t)1 << mc->bucket_shift;
    uint64_t bucket_start = gpa & ~(bucket_size - 1);
    uint64_t run_start = bucket_start > r->start ? bucket_start : r->start;
    uint64_t run_end = r->end;
    if (bucket_start + bucket_size > bucket_start && bucket_start + bucket_size < run_end) {
        run_end = bucket_start + bucket_size;   // else the bucket ends at 2^64 or past r
    }
    uint32_t npages = (uint32_t)((run_end - run_start) >> MAPCACHE_PAGE_SHIFT);

    s = slot_claim(mc);
    if (s == NULL) {
        errno = ENOMEM;
        return NULL;
    }
    for (uint32_t i = 0; i < npages; i++) {
        mc->gfns[i] = (xen_pfn_t)((run_start >> MAPCACHE_PAGE_SHIFT) + i);
        mc->errs[i] = 0;
    }
    errno = 0;
    void *vaddr = xenforeignmemory_map(mc->fmem, mc->domid, PROT_READ | PROT_WRITE, npages, mc->gfns, mc->errs);
    if (vaddr == NULL) {
        if (errno == 0) {
            errno = ENOMEM;
        }
        return NULL;
    }
    for (uint32_t i = 0; i < npages; i++) {
        if (mc->errs[i] != 0) {
            xenforeignmemory_unmap(mc->fmem, vaddr, npages);
            mc->stats.unmaps++;
            errno = EFAULT;
            return NULL;
        }
    }
    mc->stats.maps++;
    s->vaddr = vaddr;
    s->start = run_start;
    s->npages = npages;
    s->locks = 0;
    s->stale = 0;
    return slot_use(mc, s, gpa, lock);
}

static int slot_unlock(mapcache_t *mc, mapcache_slot_t *s) {
    s->locks--;
    if (s->locks == 0 && s->stale) {
        slot_unmap(mc, s);
    }
    return 0;
}

int mapcache_unlock(mapcache_t *mc, uint64_t gpa) {
    mapcache_slot_t *live = NULL;
    for (uint32_t i = 0; i < mc->max_buckets; i++) {
        mapcache_slot_t *s = &mc->slots[i];
        if (s->vaddr != NULL && s->locks != 0 && slot_covers(s, gpa, 1)) {
            if (s->stale) {
                return slot_unlock(mc, s);
            }
            live = s;
        }
    }
    if (live == NULL) {
        errno = EINVAL;
        return -1;
    }
    return slot_unlock(mc, live);
}

int mapcache_unlock_ptr(mapcache_t *mc, const void *ptr) {
    uintptr_t p = (uintptr_t)ptr;
    for (uint32_t i = 0; i < mc->max_buckets; i++) {
        mapcache_slot_t *s = &mc->slots[i];
        uintptr_t base = (uintptr_t)s->vaddr;
        if (s->vaddr != NULL && s->locks != 0 && p >= base && p - base < slot_bytes(s)) {
            return slot_unlock(mc, s);
        }
    }
    errno = EINVAL;
    return -1;
}

void mapcache_invalidate(mapcache_t *mc) {
    for (uint32_t i = 0; i < mc->max_buckets; i++) {
        mapcache_slot_t *s = &mc->slots[i];
        if (s->vaddr == NULL) {
            continue;
        }
        if (s->locks == 0) {
            slot_unmap(mc, s);
        } else {
            s->stale = 1;
        }
    }
    mc->last = NULL;
    mc->stats.invalidations++;
}

size_t mapcache_bucket_room(mapcache_t *mc, uint64_t gpa) {
    uint64_t bucket_size = (uint64_t)1 << mc->bucket_shift;
    return (size_t)(bucket_size - (gpa & (bucket_size - 1)));
}

void mapcache_get_stats(mapcache_t *mc, mapcache_stats_t *out) {
    *out = mc->stats;
    out->buckets_mapped = 0;
    out->buckets_locked = 0;
    for (uint32_t i = 0; i < mc->max_buckets; i++) {
        if (mc->slots[i].vaddr != NULL) {
            out->buckets_mapped++;
            if (mc->slots[i].locks != 0) {
                out->buckets_locked++;
            }
        }
    }
    out->max_buckets = mc->max_buckets;
    out->bucket_pages = mc->bucket_pages;
}

size_t mapcache_footprint(mapcache_t *mc) {
    return sizeof(mapcache_t) + (size_t)mc->max_buckets * sizeof(mapcache_slot_t)
           + (size_t)mc->bucket_pages * (sizeof(xen_pfn_t) + sizeof(int));
}

// --- AHCI PRD tables (mapcache.h) ---

static uint32_t prd_count(const uint8_t *e) {
    uint32_t dw3 = (uint32_t)e[12] | (uint32_t)e[13] << 8 | (uint32_t)e[14] << 16
                   | (uint32_t)e[15] << 24;
    return (dw3 & 0x3FFFFF) + 1;
}

static uint64_t prd_address(const uint8_t *e) {
    uint64_t a = 0;
    for (int i = 7; i >= 0; i--) {
        a = a << 8 | e[i];
    }
    return a & ~(uint64_t)1;
}

int64_t mapcache_prdt_total(const uint8_t *prdt, uint32_t n) {
    int64_t total = 0;
    for (uint32_t i = 0; i < n; i++) {
        uint32_t c = prd_count(prdt + 16 * (size_t)i);
        if (c & 1) {
            return -1 - (int64_t)i;
        }
        total += c;
    }
    return total;
}

int mapcache_prdt_copy(mapcache_t *mc, const uint8_t *prdt, uint32_t n, uint64_t skip,
                       uint8_t *buf, size_t len, int to_guest, uint64_t *cursor) {
    uint32_t i = 0;
    uint64_t base = 0;  // where entry i starts in the stream
    if (cursor != NULL && cursor[0] < n && cursor[1] <= skip) {
        i = (uint32_t)cursor[0];  // the last call's entry: the walk goes on from there
        base = cursor[1];
    }
    for (; i < n; i++) {  // the entry that holds byte skip
        uint32_t c = prd_count(prdt + 16 * (size_t)i);
        if (skip - base < c) {
            break;
        }
        base += c;
    }
    skip -= base;
    while (len > 0) {
        if (i >= n) {
            errno = EINVAL;
            return -1;
        }
        if (cursor != NULL) {
            cursor[0] = i;
            cursor[1] = base;
        }
        const uint8_t *e = prdt + 16 * (size_t)i;
        uint64_t a = prd_address(e);
        uint64_t c = prd_count(e);
        if (a > UINT64_MAX - (c - 1)) {
            errno = EFAULT;
            return -1;
        }
        a += skip;
        uint64_t k = c - skip;
        if (k > len) {
            k = len;
        }
        while (k > 0) {
            uint64_t room = mapcache_bucket_room(mc, a);
            size_t m = (size_t)(k < room ? k : room);
            uint8_t *p = mapcache_map(mc, a, m, 0);
            if (p == NULL) {
                errno = EFAULT;
                return -1;
            }
            if (to_guest) {
                memcpy(p, buf, m);
            } else {
                memcpy(buf, p, m);
            }
            buf += m;
            a += m;
            k -= m;
            len -= m;
        }
        base += c;
        i++;
        skip = 0;
    }
    return 0;
}
