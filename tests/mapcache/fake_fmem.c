// Test double of Xen's foreign-memory API, for the mapcache unit tests only.
//
// "Guest RAM" is a memfd of configurable size; gfn g is the page at offset
// g * 4096 in it, so a test can check what the mapcache writes by reading the
// memfd and the other way round. xenforeignmemory_map reserves an address
// range and maps each requested page of the memfd there with MAP_FIXED;
// a gfn beyond the memfd, or the gfn chosen with fake_fmem_fail_gfn, gets
// err[i] = EFAULT and stays PROT_NONE, as Xen reports per-page errors.
// All state lives in the handle; the counters let tests see every call.
#define _GNU_SOURCE
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <xenforeignmemory.h>

#define FAKE_PAGE_SIZE (4096)
#define FAKE_MAX_LIVE (1024)

typedef struct {
    void *addr;
    size_t pages;
} fake_mapping_t;

struct xenforeignmemory_handle {
    int memfd;
    uint64_t ram_pages;
    int64_t fail_gfn;       // -1: none
    int fail_next_errno;    // 0: none; else the next map returns NULL with this errno
    uint32_t last_domid;
    int last_prot;
    long map_calls;
    long unmap_calls;
    long bad_unmaps;        // unmap of something not mapped, or with a wrong page count
    long live;              // mappings now
    long live_max;          // high-water mark of live
    long pages_mapped;      // pages in live mappings
    fake_mapping_t maps[FAKE_MAX_LIVE];
};

typedef struct xenforeignmemory_handle fake_fmem_t;

xenforeignmemory_handle *xenforeignmemory_open(struct xentoollog_logger *logger, unsigned open_flags) {
    (void)logger;
    (void)open_flags;
    fake_fmem_t *h = calloc(1, sizeof(*h));
    if (h == NULL) {
        return NULL;
    }
    h->memfd = -1;
    h->fail_gfn = -1;
    return h;
}

int xenforeignmemory_close(xenforeignmemory_handle *h) {
    if (h == NULL) {
        return 0;
    }
    for (int i = 0; i < FAKE_MAX_LIVE; i++) {
        if (h->maps[i].addr != NULL) {
            munmap(h->maps[i].addr, h->maps[i].pages * FAKE_PAGE_SIZE);
        }
    }
    if (h->memfd >= 0) {
        close(h->memfd);
    }
    free(h);
    return 0;
}

void *xenforeignmemory_map(xenforeignmemory_handle *h, uint32_t dom, int prot, size_t pages, const xen_pfn_t arr[], int err[]) {
    h->map_calls++;
    h->last_domid = dom;
    h->last_prot = prot;
    if (h->fail_next_errno != 0) {
        errno = h->fail_next_errno;
        h->fail_next_errno = 0;
        return NULL;
    }
    if (pages == 0 || h->memfd < 0) {
        errno = EINVAL;
        return NULL;
    }
    int slot = -1;
    for (int i = 0; i < FAKE_MAX_LIVE; i++) {
        if (h->maps[i].addr == NULL) {
            slot = i;
            break;
        }
    }
    if (slot < 0) {
        errno = ENOMEM;
        return NULL;
    }
    uint8_t *base = mmap(NULL, pages * FAKE_PAGE_SIZE, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (base == MAP_FAILED) {
        return NULL;
    }
    for (size_t i = 0; i < pages; i++) {
        int e = 0;
        if (arr[i] >= h->ram_pages || (h->fail_gfn >= 0 && arr[i] == (xen_pfn_t)h->fail_gfn)) {
            e = EFAULT;
        } else if (mmap(base + i * FAKE_PAGE_SIZE, FAKE_PAGE_SIZE, prot, MAP_SHARED | MAP_FIXED, h->memfd, (off_t)(arr[i] * FAKE_PAGE_SIZE)) == MAP_FAILED) {
            e = errno;
        }
        if (err != NULL) {
            err[i] = e;
        } else if (e != 0) {
            munmap(base, pages * FAKE_PAGE_SIZE);
            errno = e;
            return NULL;
        }
    }
    h->maps[slot].addr = base;
    h->maps[slot].pages = pages;
    h->live++;
    h->pages_mapped += (long)pages;
    if (h->live > h->live_max) {
        h->live_max = h->live;
    }
    return base;
}

int xenforeignmemory_unmap(xenforeignmemory_handle *h, void *addr, size_t pages) {
    h->unmap_calls++;
    for (int i = 0; i < FAKE_MAX_LIVE; i++) {
        if (h->maps[i].addr == addr && addr != NULL) {
            if (h->maps[i].pages != pages) {
                h->bad_unmaps++;
            }
            munmap(addr, h->maps[i].pages * FAKE_PAGE_SIZE);
            h->pages_mapped -= (long)h->maps[i].pages;
            h->maps[i].addr = NULL;
            h->maps[i].pages = 0;
            h->live--;
            return 0;
        }
    }
    h->bad_unmaps++;
    errno = EINVAL;
    return -1;
}

// ---- test controls ----

// Creates the guest RAM memfd (zero filled); returns its fd (owned by the
// handle: the test may mmap it but must not close it), or -1.
int fake_fmem_set_ram(xenforeignmemory_handle *h, uint64_t bytes) {
    if (h->memfd >= 0 || bytes % FAKE_PAGE_SIZE != 0) {
        errno = EINVAL;
        return -1;
    }
    int fd = memfd_create("fake-guest-ram", MFD_CLOEXEC);
    if (fd < 0) {
        return -1;
    }
    if (ftruncate(fd, (off_t)bytes) != 0) {
        close(fd);
        return -1;
    }
    h->memfd = fd;
    h->ram_pages = bytes / FAKE_PAGE_SIZE;
    return fd;
}

void fake_fmem_fail_gfn(xenforeignmemory_handle *h, int64_t gfn) {
    h->fail_gfn = gfn;
}

void fake_fmem_fail_next_map(xenforeignmemory_handle *h, int err) {
    h->fail_next_errno = err;
}

// which: 0 map calls, 1 unmap calls, 2 bad unmaps, 3 live mappings,
// 4 live high-water mark, 5 pages mapped now, 6 last domid, 7 last prot.
long fake_fmem_counter(xenforeignmemory_handle *h, int which) {
    switch (which) {
        case 0:
            return h->map_calls;
        case 1:
            return h->unmap_calls;
        case 2:
            return h->bad_unmaps;
        case 3:
            return h->live;
        case 4:
            return h->live_max;
        case 5:
            return h->pages_mapped;
        case 6:
            return (long)h->last_domid;
        case 7:
            return (long)h->last_prot;
    }
    return -1;
}
