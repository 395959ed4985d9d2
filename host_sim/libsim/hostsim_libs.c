// host_sim's implementation of the part of Xen's user libraries
// (xendevicemodel, xenforeignmemory, xenevtchn, xengntshr) that a device
// model uses.
// Compiled against Debian's libxen-dev headers, so the compiler checks every
// signature against Xen's; the device model's glue links with this library
// under host_sim and with Xen's own libraries under a real hypervisor.
//
// Every call becomes a request on one stream socket to the host_sim
// hypervisor process (path in $HOST_SIM_SOCKET); hostsim_proto.h has the
// wire format. Event channels' events are the exception: shared memory, a
// pipe and an eventfd per handle, no message. Guest memory arrives as memfds and is mapped with mmap, so a
// foreign mapping here is as zero-copy as privcmd's.
//
// Thread-safe: one lock (recursive: a call may refresh the memory map)
// covers the socket round trip and the cached memory map, for device models
// that call from several threads (qemu-xen).
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <xendevicemodel.h>
#include <xenevtchn.h>
#include <xenforeignmemory.h>
#include <xengnttab.h>

#include "hostsim_internal.h"
#include "hostsim_proto.h"

#define HS_PAGE_SHIFT 12
#define HS_PAGE_SIZE (1UL << HS_PAGE_SHIFT)
#define HS_MAX_FDS 16
#define HS_MAX_REGIONS 64
#define HS_MAX_PAYLOAD 4096

struct xendevicemodel_handle {
    int unused;
};

struct xenforeignmemory_handle {
    int unused;
};

struct xenevtchn_handle {
    uint32_t id;
    int fd;  // the pipe host_sim writes a byte to per port delivered
    int kick;  // the eventfd that wakes host_sim
    uint8_t *shm;  // HS_EVTCHN_SHM_SIZE bytes shared with host_sim
    uint32_t cons;  // ring entries taken (ours; the shared copy is for host_sim)
    pthread_mutex_t lock;  // the ring's consumer side and the spin's state below
    // The bounded spin after an answer (see hs_spin_for_event): the port
    // pending() last returned, the current window, and when we started
    // waiting for the next event without one coming in the window.
    uint32_t answer_port;
    uint32_t spin_ns;
    uint64_t waited_since;
};

typedef struct {
    uint64_t gfn;
    uint64_t npages;
    uint64_t fd_offset;
    int fd;
    int prot;
} hs_region_t;

static int hs_sock = -1;
static hs_region_t hs_regions[HS_MAX_REGIONS];
static unsigned hs_nregions;
static int hs_regions_stale;
static pthread_mutex_t hs_lock = PTHREAD_RECURSIVE_MUTEX_INITIALIZER_NP;

static int hs_connect_locked(void) {
    if (hs_sock >= 0) {
        return 0;
    }
    const char *path = getenv(HOSTSIM_SOCKET_ENV);
    if (path == NULL || strlen(path) >= sizeof(((struct sockaddr_un *)0)->sun_path)) {
        errno = ENOENT;
        return -1;
    }
    int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (s < 0) {
        return -1;
    }
    struct sockaddr_un sa;
    memset(&sa, 0, sizeof(sa));
    sa.sun_family = AF_UNIX;
    strcpy(sa.sun_path, path);
    if (connect(s, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        int e = errno;
        close(s);
        errno = e;
        return -1;
    }
    hs_sock = s;
    return 0;
}

static int hs_connect(void) {
    pthread_mutex_lock(&hs_lock);
    int r = hs_connect_locked();
    pthread_mutex_unlock(&hs_lock);
    return r;
}

static int hs_write_all(const void *buf, size_t len) {
    const char *p = buf;
    while (len > 0) {
        ssize_t n = send(hs_sock, p, len, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            return -1;
        }
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

// Read exactly len bytes; the first recvmsg may carry descriptors.
static int hs_read_all(void *buf, size_t len, int *fds, int *nfds) {
    char *p = buf;
    int first = 1;
    while (len > 0) {
        struct iovec iov = {p, len};
        union {
            struct cmsghdr align;
            char buf[CMSG_SPACE(sizeof(int) * HS_MAX_FDS)];
        } ctl;
        struct msghdr msg;
        memset(&msg, 0, sizeof(msg));
        msg.msg_iov = &iov;
        msg.msg_iovlen = 1;
        if (first && fds != NULL) {
            msg.msg_control = ctl.buf;
            msg.msg_controllen = sizeof(ctl.buf);
        }
        ssize_t n = recvmsg(hs_sock, &msg, MSG_CMSG_CLOEXEC);
        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            return -1;
        }
        if (n == 0) {
            errno = ECONNRESET;
            return -1;
        }
        if (first && fds != NULL) {
            for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c != NULL; c = CMSG_NXTHDR(&msg, c)) {
                if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
                    int k = (int)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
                    for (int i = 0; i < k && *nfds < HS_MAX_FDS; i++) {
                        memcpy(&fds[(*nfds)++], CMSG_DATA(c) + i * sizeof(int), sizeof(int));
                    }
                }
            }
        }
        first = 0;
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

// One request; with reply != NULL waits for the response. Returns the
// (non-negative) result or -1 with errno set.
static int hs_call_locked(uint32_t op, const void *req, uint32_t req_len, void *reply,
                          uint32_t reply_cap, uint32_t *reply_len, int *fds, int *nfds,
                          int one_way) {
    if (hs_connect_locked() < 0) {
        return -1;
    }
    uint8_t buf[8 + HS_MAX_PAYLOAD];
    if (req_len > HS_MAX_PAYLOAD) {
        errno = EINVAL;
        return -1;
    }
    memcpy(buf, &op, 4);
    memcpy(buf + 4, &req_len, 4);
    if (req_len) {
        memcpy(buf + 8, req, req_len);
    }
    if (hs_write_all(buf, 8 + req_len) < 0) {
        return -1;
    }
    if (one_way) {
        return 0;
    }
    int32_t hdr[2];
    if (nfds != NULL) {
        *nfds = 0;
    }
    if (hs_read_all(hdr, sizeof(hdr), fds, nfds) < 0) {
        return -1;
    }
    uint32_t len = (uint32_t)hdr[1];
    if (len > HS_MAX_PAYLOAD) {
        errno = EPROTO;
        return -1;
    }
    uint8_t payload[HS_MAX_PAYLOAD];
    if (len && hs_read_all(payload, len, NULL, NULL) < 0) {
        return -1;
    }
    if (reply != NULL) {
        memcpy(reply, payload, len < reply_cap ? len : reply_cap);
    }
    if (reply_len != NULL) {
        *reply_len = len;
    }
    if (hdr[0] < 0) {
        errno = -hdr[0];
        return -1;
    }
    return hdr[0];
}

static int hs_call(uint32_t op, const void *req, uint32_t req_len, void *reply,
                   uint32_t reply_cap, uint32_t *reply_len, int *fds, int *nfds, int one_way) {
    pthread_mutex_lock(&hs_lock);
    int r = hs_call_locked(op, req, req_len, reply, reply_cap, reply_len, fds, nfds, one_way);
    int e = errno;
    pthread_mutex_unlock(&hs_lock);
    errno = e;
    return r;
}

int hostsim_call(uint32_t op, const void *req, uint32_t req_len, void *reply,
                 uint32_t reply_cap, uint32_t *reply_len, int *fds, int *nfds, int one_way) {
    return hs_call(op, req, req_len, reply, reply_cap, reply_len, fds, nfds, one_way);
}

int hostsim_connect(void) {
    return hs_connect();
}

void hostsim_regions_changed(void) {
    pthread_mutex_lock(&hs_lock);
    hs_regions_stale = 1;
    pthread_mutex_unlock(&hs_lock);
}

// A little packer for request payloads.
typedef struct {
    uint8_t b[256];
    uint32_t n;
} hs_msg_t;

static void put(hs_msg_t *m, const void *v, uint32_t k) {
    memcpy(m->b + m->n, v, k);
    m->n += k;
}
static void put8(hs_msg_t *m, uint8_t v) {
    put(m, &v, 1);
}
static void put16(hs_msg_t *m, uint16_t v) {
    put(m, &v, 2);
}
static void put32(hs_msg_t *m, uint32_t v) {
    put(m, &v, 4);
}
static void put64(hs_msg_t *m, uint64_t v) {
    put(m, &v, 8);
}

static int simple(uint32_t op, hs_msg_t *m) {
    int r = hs_call(op, m->b, m->n, NULL, 0, NULL, NULL, NULL, 0);
    return r < 0 ? -1 : 0;
}

// ---- xendevicemodel ----

xendevicemodel_handle *xendevicemodel_open(struct xentoollog_logger *logger,
                                           unsigned int open_flags) {
    (void)logger;
    (void)open_flags;
    if (hs_connect() < 0) {
        return NULL;
    }
    return calloc(1, sizeof(xendevicemodel_handle));
}

int xendevicemodel_close(xendevicemodel_handle *dmod) {
    free(dmod);
    return 0;
}

int xendevicemodel_create_ioreq_server(xendevicemodel_handle *dmod, domid_t domid,
                                       int handle_bufioreq, ioservid_t *id) {
    (void)dmod;
    hs_msg_t m = {.n = 0};
    put16(&m, domid);
    put32(&m, (uint32_t)handle_bufioreq);
    int r = hs_call(HS_OP_CREATE_IOREQ_SERVER, m.b, m.n, NULL, 0, NULL, NULL, NULL, 0);
    if (r < 0) {
        return -1;
    }
    *id = (ioservid_t)r;
    return 0;
}

int xendevicemodel_get_ioreq_server_info(xendevicemodel_handle *dmod, domid_t domid,
                                         ioservid_t id, xen_pfn_t *ioreq_gfn,
                                         xen_pfn_t *bufioreq_gfn, evtchn_port_t *bufioreq_port) {
    (void)dmod;
    hs_msg_t m = {.n = 0};
    put16(&m, domid);
    put16(&m, id);
    uint8_t reply[20];
    uint32_t len = 0;
    if (hs_call(HS_OP_GET_IOREQ_SERVER_INFO, m.b, m.n, reply, sizeof(reply), &len, NULL, NULL,
                0) < 0) {
        return -1;
    }
    if (len != sizeof(reply)) {
        errno = EPROTO;
        return -1;
    }
    uint64_t g, b;
    uint32_t p;
    memcpy(&g, reply, 8);
    memcpy(&b, reply + 8, 8);
    memcpy(&p, reply + 16, 4);
    if (ioreq_gfn != NULL) {
        *ioreq_gfn = g;
    }
    if (bufioreq_gfn != NULL) {
        *bufioreq_gfn = b;
    }
    if (bufioreq_port != NULL) {
        *bufioreq_port = p;
    }
    return 0;
}

static int io_range(uint32_t op, domid_t domid, ioservid_t id, int is_mmio, uint64_t start,
                    uint64_t end) {
    hs_msg_t m = {.n = 0};
    put16(&m, domid);
    put16(&m, id);
    put32(&m, (uint32_t)is_mmio);
    put64(&m, start);
    put64(&m, end);
    return simple(op, &m);
}

int xendevicemodel_map_io_range_to_ioreq_server(xendevicemodel_handle *dmod, domid_t domid,
                                                ioservid_t id, int is_mmio, uint64_t start,
                                                uint64_t end) {
    (void)dmod;
    return io_range(HS_OP_MAP_IO_RANGE, domid, id, is_mmio, start, end);
}

int xendevicemodel_unmap_io_range_from_ioreq_server(xendevicemodel_handle *dmod, domid_t domid,
                                                    ioservid_t id, int is_mmio, uint64_t start,
                                                    uint64_t end) {
    (void)dmod;
    return io_range(HS_OP_UNMAP_IO_RANGE, domid, id, is_mmio, start, end);
}

static int pcidev(uint32_t op, domid_t domid, ioservid_t id, uint16_t seg, uint8_t bus,
                  uint8_t dev, uint8_t fn) {
    hs_msg_t m = {.n = 0};
    put16(&m, domid);
    put16(&m, id);
    put16(&m, seg);
    put8(&m, bus);
    put8(&m, dev);
    put8(&m, fn);
    return simple(op, &m);
}

int xendevicemodel_map_pcidev_to_ioreq_server(xendevicemodel_handle *dmod, domid_t domid,
                                              ioservid_t id, uint16_t segment, uint8_t bus,
                                              uint8_t device, uint8_t function) {
    (void)dmod;
    return pcidev(HS_OP_MAP_PCIDEV, domid, id, segment, bus, device, function);
}

int xendevicemodel_unmap_pcidev_from_ioreq_server(xendevicemodel_handle *dmod, domid_t domid,
                                                  ioservid_t id, uint16_t segment, uint8_t bus,
                                                  uint8_t device, uint8_t function) {
    (void)dmod;
    return pcidev(HS_OP_UNMAP_PCIDEV, domid, id, segment, bus, device, function);
}

int xendevicemodel_destroy_ioreq_server(xendevicemodel_handle *dmod, domid_t domid,
                                        ioservid_t id) {
    (void)dmod;
    hs_msg_t m = {.n = 0};
    put16(&m, domid);
    put16(&m, id);
    return simple(HS_OP_DESTROY_IOREQ_SERVER, &m);
}

int xendevicemodel_set_ioreq_server_state(xendevicemodel_handle *dmod, domid_t domid,
                                          ioservid_t id, int enabled) {
    (void)dmod;
    hs_msg_t m = {.n = 0};
    put16(&m, domid);
    put16(&m, id);
    put32(&m, (uint32_t)enabled);
    return simple(HS_OP_SET_IOREQ_SERVER_STATE, &m);
}

static void hs_kick(int fd);

// The ring of line levels (hostsim_proto.h, HS_IRQ_*), asked for on the
// first level set: a level is one store and a kick, not a round trip that
// waits for host_sim's Python (the guest's vCPU waits meanwhile when the
// level is set inside its access). state 0: not asked yet; 1: ours, for
// domid; -1: refused (every level goes as a message).
static struct {
    int state;
    uint16_t domid;
    int kick;
    uint8_t *shm;
    uint32_t prod;
} hs_irq;

static void hs_irq_open_locked(uint16_t domid) {
    hs_irq.state = -1;
    hs_msg_t m = {.n = 0};
    put16(&m, domid);
    int fds[HS_MAX_FDS];
    int nfds = 0;
    if (hs_call_locked(HS_OP_IRQ_OPEN, m.b, m.n, NULL, 0, NULL, fds, &nfds, 0) < 0) {
        return;
    }
    void *shm = MAP_FAILED;
    if (nfds == 2) {
        shm = mmap(NULL, HS_IRQ_SHM_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED,
                   fds[HS_IRQ_FD_SHM], 0);
    }
    if (shm == MAP_FAILED) {
        for (int i = 0; i < nfds; i++) {
            close(fds[i]);
        }
        return;  // host_sim's ring stays unused: the messages still work
    }
    close(fds[HS_IRQ_FD_SHM]);
    hs_irq.kick = fds[HS_IRQ_FD_KICK];
    hs_irq.shm = shm;
    hs_irq.domid = domid;
    hs_irq.prod = 0;
    hs_irq.state = 1;
}

// 1: the entries are in the ring (together) and host_sim kicked; 0: send
// the message.
static int hs_irq_push_n(uint16_t domid, const uint16_t *entries, uint32_t n) {
    pthread_mutex_lock(&hs_lock);
    if (hs_irq.state == 0) {
        hs_irq_open_locked(domid);
    }
    int ok = hs_irq.state == 1 && hs_irq.domid == domid;
    if (ok) {
        uint32_t cons =
            __atomic_load_n((uint32_t *)(hs_irq.shm + HS_IRQ_OFF_CONS), __ATOMIC_ACQUIRE);
        // Full (host_sim is behind): the message, which host_sim serves
        // after applying the ring, keeps the order.
        ok = hs_irq.prod - cons <= HS_IRQ_RING - n;
    }
    if (ok) {
        uint16_t *ring = (uint16_t *)(hs_irq.shm + HS_IRQ_OFF_RING);
        for (uint32_t i = 0; i < n; i++) {
            __atomic_store_n(&ring[(hs_irq.prod + i) % HS_IRQ_RING], entries[i],
                             __ATOMIC_RELAXED);
        }
        hs_irq.prod += n;
        __atomic_store_n((uint32_t *)(hs_irq.shm + HS_IRQ_OFF_PROD), hs_irq.prod,
                         __ATOMIC_RELEASE);
        hs_kick(hs_irq.kick);
    }
    pthread_mutex_unlock(&hs_lock);
    return ok;
}

static int hs_irq_push(uint16_t domid, uint16_t entry) {
    return hs_irq_push_n(domid, &entry, 1);
}

// libxendevicemodel passes level as the dm_op's uint8_t; dm.c refuses any but
// 0 and 1, and a device or INTx pin out of range.
int xendevicemodel_set_pci_intx_level(xendevicemodel_handle *dmod, domid_t domid,
                                      uint16_t segment, uint8_t bus, uint8_t device,
                                      uint8_t intx, unsigned int level) {
    (void)dmod;
    uint8_t lv = (uint8_t)level;
    if (segment == 0 && bus == 0 && device <= 0x1f && intx <= 3 && lv <= 1 &&
        hs_irq_push(domid, (uint16_t)((device << 3) | (intx << 1) | lv))) {
        return 0;
    }
    hs_msg_t m = {.n = 0};
    put16(&m, domid);
    put16(&m, segment);
    put8(&m, bus);
    put8(&m, device);
    put8(&m, intx);
    put32(&m, lv);
    return simple(HS_OP_SET_PCI_INTX_LEVEL, &m);
}

int xendevicemodel_set_isa_irq_level(xendevicemodel_handle *dmod, domid_t domid, uint8_t irq,
                                     unsigned int level) {
    (void)dmod;
    uint8_t lv = (uint8_t)level;
    if (irq <= 15 && lv <= 1 &&
        hs_irq_push(domid, (uint16_t)(HS_IRQ_ISA | (irq << 1) | lv))) {
        return 0;
    }
    hs_msg_t m = {.n = 0};
    put16(&m, domid);
    put8(&m, irq);
    put32(&m, lv);
    return simple(HS_OP_SET_ISA_IRQ_LEVEL, &m);
}

int xendevicemodel_set_pci_link_route(xendevicemodel_handle *dmod, domid_t domid, uint8_t link,
                                      uint8_t irq) {
    (void)dmod;
    hs_msg_t m = {.n = 0};
    put16(&m, domid);
    put8(&m, link);
    put8(&m, irq);
    return simple(HS_OP_SET_PCI_LINK_ROUTE, &m);
}

int xendevicemodel_inject_msi(xendevicemodel_handle *dmod, domid_t domid, uint64_t msi_addr,
                              uint32_t msi_data) {
    (void)dmod;
    // Vector 0 (a pirq, dm.c's ERANGE or a binding) stays a message.
    if (msi_data & 0xFF) {
        uint16_t e[HS_IRQ_MSI_ENTRIES] = {HS_IRQ_MSI};
        for (int i = 0; i < 4; i++) {
            e[1 + i] = (uint16_t)(msi_addr >> (16 * i));
        }
        e[5] = (uint16_t)msi_data;
        e[6] = (uint16_t)(msi_data >> 16);
        if (hs_irq_push_n(domid, e, HS_IRQ_MSI_ENTRIES)) {
            return 0;
        }
    }
    hs_msg_t m = {.n = 0};
    put16(&m, domid);
    put64(&m, msi_addr);
    put32(&m, msi_data);
    return simple(HS_OP_INJECT_MSI, &m);
}

int xendevicemodel_modified_memory(xendevicemodel_handle *dmod, domid_t domid,
                                   uint64_t first_pfn, uint32_t nr) {
    (void)dmod;
    hs_msg_t m = {.n = 0};
    put16(&m, domid);
    put64(&m, first_pfn);
    put32(&m, nr);
    return simple(HS_OP_MODIFIED_MEMORY, &m);
}

int xendevicemodel_shutdown(xendevicemodel_handle *dmod, domid_t domid, unsigned int reason) {
    (void)dmod;
    hs_msg_t m = {.n = 0};
    put16(&m, domid);
    put32(&m, reason);
    return simple(HS_OP_SHUTDOWN, &m);
}

// ---- xenforeignmemory ----

xenforeignmemory_handle *xenforeignmemory_open(struct xentoollog_logger *logger,
                                               unsigned int open_flags) {
    (void)logger;
    (void)open_flags;
    if (hs_connect() < 0) {
        return NULL;
    }
    return calloc(1, sizeof(xenforeignmemory_handle));
}

int xenforeignmemory_close(xenforeignmemory_handle *fmem) {
    free(fmem);
    return 0;
}

// Fetch the guest's memory layout afresh (regions appear as the guest's
// RAM is set up, e.g. when QEMU hands its RAM over).
static int hs_refresh_regions(uint32_t dom) {
    hs_msg_t m = {.n = 0};
    put16(&m, (uint16_t)dom);
    uint8_t reply[HS_MAX_PAYLOAD];
    uint32_t len = 0;
    int fds[HS_MAX_FDS];
    int nfds = 0;
    if (hs_call(HS_OP_MEMORY_MAP, m.b, m.n, reply, sizeof(reply), &len, fds, &nfds, 0) < 0) {
        return -1;
    }
    for (unsigned i = 0; i < hs_nregions; i++) {
        close(hs_regions[i].fd);
    }
    hs_nregions = 0;
    uint32_t n = 0;
    if (len >= 4) {
        memcpy(&n, reply, 4);
    }
    if (n > HS_MAX_REGIONS || len < 4 + n * 32) {
        n = 0;
    }
    for (uint32_t i = 0; i < n; i++) {
        const uint8_t *r = reply + 4 + i * 32;
        hs_region_t *g = &hs_regions[hs_nregions];
        uint32_t idx, prot;
        memcpy(&g->gfn, r, 8);
        memcpy(&g->npages, r + 8, 8);
        memcpy(&g->fd_offset, r + 16, 8);
        memcpy(&idx, r + 24, 4);
        memcpy(&prot, r + 28, 4);
        if ((int)idx >= nfds) {
            continue;
        }
        g->fd = dup(fds[idx]);
        g->prot = (int)prot;
        if (g->fd >= 0) {
            hs_nregions++;
        }
    }
    for (int i = 0; i < nfds; i++) {
        close(fds[i]);
    }
    return 0;
}

static const hs_region_t *hs_find(uint64_t gfn) {
    for (unsigned i = 0; i < hs_nregions; i++) {
        const hs_region_t *g = &hs_regions[i];
        if (gfn >= g->gfn && gfn - g->gfn < g->npages) {
            return g;
        }
    }
    return NULL;
}

static void *hs_map_locked(uint32_t dom, void *addr, int prot, int flags, size_t pages,
                           const xen_pfn_t arr[], int err[]) {
    if (pages == 0 || pages > (SIZE_MAX >> HS_PAGE_SHIFT)) {
        errno = EINVAL;
        return NULL;
    }
    int refreshed = 0;
    if (hs_regions_stale) {
        if (hs_refresh_regions(dom) < 0) {
            return NULL;
        }
        hs_regions_stale = 0;
        refreshed = 1;
    }
    for (size_t i = 0; i < pages; i++) {
        if (hs_find(arr[i]) == NULL && !refreshed) {
            if (hs_refresh_regions(dom) < 0) {
                return NULL;
            }
            refreshed = 1;
        }
    }
    // Reserve the whole window first (where the caller asks, as privcmd's
    // mmap does), then map each page over it; a page that is not guest
    // memory stays inaccessible, as with privcmd.
    uint8_t *base = mmap(addr, pages << HS_PAGE_SHIFT, PROT_NONE,
                         (flags & MAP_FIXED) | MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (base == MAP_FAILED) {
        return NULL;
    }
    int failed = 0;
    for (size_t i = 0; i < pages; i++) {
        const hs_region_t *g = hs_find(arr[i]);
        int e = 0;
        if (g == NULL) {
            e = -EFAULT;
        } else {
            off_t off = (off_t)(g->fd_offset + ((arr[i] - g->gfn) << HS_PAGE_SHIFT));
            void *p = mmap(base + (i << HS_PAGE_SHIFT), HS_PAGE_SIZE, prot,
                           MAP_SHARED | MAP_FIXED, g->fd, off);
            if (p == MAP_FAILED) {
                e = -errno;
            }
        }
        if (err != NULL) {
            err[i] = e;
        }
        failed |= e != 0;
    }
    if (failed && err == NULL) {
        munmap(base, pages << HS_PAGE_SHIFT);
        errno = EFAULT;
        return NULL;
    }
    return base;
}

void *hostsim_map(uint32_t dom, void *addr, int prot, int flags, size_t pages,
                  const xen_pfn_t arr[], int err[]) {
    pthread_mutex_lock(&hs_lock);
    void *p = hs_map_locked(dom, addr, prot, flags, pages, arr, err);
    int e = errno;
    pthread_mutex_unlock(&hs_lock);
    errno = e;
    return p;
}

void *xenforeignmemory_map(xenforeignmemory_handle *fmem, uint32_t dom, int prot, size_t pages,
                           const xen_pfn_t arr[], int err[]) {
    (void)fmem;
    return hostsim_map(dom, NULL, prot, 0, pages, arr, err);
}

int xenforeignmemory_unmap(xenforeignmemory_handle *fmem, void *addr, size_t pages) {
    (void)fmem;
    return munmap(addr, pages << HS_PAGE_SHIFT);
}

// ---- xenevtchn ----
//
// No message per event (hostsim_proto.h, HS_EVTCHN_*): host_sim puts each
// port it delivers in the handle's shared ring and writes a byte to the
// pipe this handle's fd reads, so pending() is one read and unmask() and
// notify() are a bit in shared memory plus, when host_sim must act, one
// eventfd write. The pipe's bytes count the ring's entries exactly, so the
// fd is readable only when pending() has a port to return, and it hangs up
// when host_sim closes the handle or dies, as the evtchn device's does.

static void hs_kick(int fd) {
    uint64_t one = 1;
    // An eventfd's counter saturates only after 2^64 - 2 kicks: never lost.
    while (write(fd, &one, sizeof(one)) < 0 && errno == EINTR) {
    }
}

static uint64_t *hs_evtchn_bits(xenevtchn_handle *xce, uint32_t off, evtchn_port_t port) {
    return (uint64_t *)(xce->shm + off) + port / 64;
}

xenevtchn_handle *xenevtchn_open(struct xentoollog_logger *logger, unsigned int open_flags) {
    (void)logger;
    (void)open_flags;
    int fds[HS_MAX_FDS];
    int nfds = 0;
    int r = hs_call(HS_OP_EVTCHN_OPEN, NULL, 0, NULL, 0, NULL, fds, &nfds, 0);
    if (r < 0) {
        return NULL;
    }
    xenevtchn_handle *h = NULL;
    void *shm = MAP_FAILED;
    int e = EPROTO;
    if (nfds == 3) {
        shm = mmap(NULL, HS_EVTCHN_SHM_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED,
                   fds[HS_EVTCHN_FD_SHM], 0);
        e = errno;
    }
    if (shm != MAP_FAILED) {
        h = calloc(1, sizeof(*h));
        e = ENOMEM;
    }
    if (h == NULL) {
        if (shm != MAP_FAILED) {
            munmap(shm, HS_EVTCHN_SHM_SIZE);
        }
        for (int i = 0; i < nfds; i++) {
            close(fds[i]);
        }
        // host_sim keeps a handle until it is closed or the connection goes.
        hs_msg_t m = {.n = 0};
        put32(&m, (uint32_t)r);
        simple(HS_OP_EVTCHN_CLOSE, &m);
        errno = e;
        return NULL;
    }
    close(fds[HS_EVTCHN_FD_SHM]);
    h->id = (uint32_t)r;
    h->fd = fds[HS_EVTCHN_FD_PIPE];
    h->kick = fds[HS_EVTCHN_FD_KICK];
    h->shm = shm;
    pthread_mutex_init(&h->lock, NULL);
    return h;
}

int xenevtchn_close(xenevtchn_handle *xce) {
    if (xce == NULL) {
        return 0;
    }
    hs_msg_t m = {.n = 0};
    put32(&m, xce->id);
    simple(HS_OP_EVTCHN_CLOSE, &m);
    munmap(xce->shm, HS_EVTCHN_SHM_SIZE);
    close(xce->fd);
    close(xce->kick);
    pthread_mutex_destroy(&xce->lock);
    free(xce);
    return 0;
}

int xenevtchn_fd(xenevtchn_handle *xce) {
    return xce->fd;
}

// A notify that answers the event pending() just returned (an ioreq's
// IORESP_READY, a backend's responses) is often followed within tens of
// microseconds by the next event on it: the guest's next access. Sleeping in
// poll until then costs a wake-up of about 20 us on these machines (bench pio
// prints the kernel's figure); so the notify watches the delivery ring for a
// bounded window first, and the poll that follows finds the byte already
// there. The window adapts as KVM's halt polling does: it grows (to at most
// HS_SPIN_MAX_NS) while the next event comes within HS_SPIN_MAX_NS of the
// notify, and halves when it comes later; after any other notify, no spin.
#define HS_SPIN_MIN_NS 10000u
#define HS_SPIN_MAX_NS 200000u

// Inside a spin: let any runnable task of this CPU run first. On these
// 2-CPU machines the guest's QEMU, host_sim and the device model are three
// tasks, and two spinning ones starved the third (bench disk, AHCI, 64 MiB,
// alternating runs: 278/291 MB/s and 937 IOPS spinning with pause alone,
// 320/336 MB/s and 1440 IOPS yielding; bench pio 64.3 -> 58.9 us per read).
static void hs_spin_relax(void) {
    sched_yield();
}

static uint64_t hs_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void hs_spin_for_event(xenevtchn_handle *xce, evtchn_port_t port) {
    pthread_mutex_lock(&xce->lock);
    uint32_t window = xce->answer_port == port ? xce->spin_ns : 0;
    // host_sim's limit (0: never), itself no more than ours.
    uint32_t limit = __atomic_load_n((uint32_t *)(xce->shm + HS_EVTCHN_OFF_DM_SPIN),
                                     __ATOMIC_RELAXED);
    if (window > limit) {
        window = limit;
    }
    int armed = xce->answer_port == port;
    xce->answer_port = 0;
    uint32_t cons = xce->cons;
    pthread_mutex_unlock(&xce->lock);
    if (!armed) {
        return;
    }
    const uint32_t *prod = (const uint32_t *)(xce->shm + HS_EVTCHN_OFF_PROD);
    uint64_t start = hs_now_ns();
    if (window > 0) {
        uint64_t end = start + window;
        for (;;) {
            for (int i = 0; i < 64; i++) {
                if (__atomic_load_n(prod, __ATOMIC_ACQUIRE) != cons) {
                    return;  // an event came: the window was right
                }
                __builtin_ia32_pause();
            }
            hs_spin_relax();
            if (hs_now_ns() >= end) {
                break;
            }
        }
    }
    pthread_mutex_lock(&xce->lock);
    xce->waited_since = start;  // pending() learns how long the wait was
    pthread_mutex_unlock(&xce->lock);
}

// pending() took port: adapt the window to the last wait, arm the next spin.
static void hs_spin_learn(xenevtchn_handle *xce, evtchn_port_t port) {
    if (xce->waited_since != 0) {
        uint64_t gap = hs_now_ns() - xce->waited_since;
        xce->waited_since = 0;
        if (gap <= HS_SPIN_MAX_NS) {
            uint32_t w = xce->spin_ns * 2;
            xce->spin_ns = w < HS_SPIN_MIN_NS ? HS_SPIN_MIN_NS
                           : w > HS_SPIN_MAX_NS ? HS_SPIN_MAX_NS : w;
        } else {
            xce->spin_ns = xce->spin_ns / 2 < HS_SPIN_MIN_NS ? 0 : xce->spin_ns / 2;
        }
    }
    xce->answer_port = port;
}

// EVTCHNOP_send: host_sim checks the port is ours when it takes the bit.
int xenevtchn_notify(xenevtchn_handle *xce, evtchn_port_t port) {
    if (port == 0 || port >= HS_EVTCHN_PORTS) {
        errno = EINVAL;
        return -1;
    }
    __atomic_store_n((uint64_t *)(xce->shm + HS_EVTCHN_OFF_STAMPS) + 1, hs_now_ns(),
                     __ATOMIC_RELAXED);
    uint64_t bit = 1ULL << (port % 64);
    // Already set: host_sim has not taken it yet, and will see this one too.
    if (!(__atomic_fetch_or(hs_evtchn_bits(xce, HS_EVTCHN_OFF_SEND, port), bit,
                            __ATOMIC_SEQ_CST) & bit)) {
        hs_kick(xce->kick);
    }
    hs_spin_for_event(xce, port);
    return 0;
}

xenevtchn_port_or_error_t xenevtchn_bind_interdomain(xenevtchn_handle *xce, uint32_t domid,
                                                     evtchn_port_t remote_port) {
    hs_msg_t m = {.n = 0};
    put32(&m, xce->id);
    put32(&m, domid);
    put32(&m, remote_port);
    return hs_call(HS_OP_EVTCHN_BIND_INTERDOMAIN, m.b, m.n, NULL, 0, NULL, NULL, NULL, 0);
}

int xenevtchn_unbind(xenevtchn_handle *xce, evtchn_port_t port) {
    hs_msg_t m = {.n = 0};
    put32(&m, xce->id);
    put32(&m, port);
    return simple(HS_OP_EVTCHN_UNBIND, &m);
}

// Like the evtchn device: blocks until a port is delivered, returns it
// (masked until xenevtchn_unmask).
xenevtchn_port_or_error_t xenevtchn_pending(xenevtchn_handle *xce) {
    uint8_t byte;
    ssize_t n;
    while ((n = read(xce->fd, &byte, 1)) < 0 && errno == EINTR) {
    }
    if (n <= 0) {
        if (n == 0) {
            errno = ECONNRESET;  // host_sim closed the handle or is gone
        }
        return -1;
    }
    // One byte, one entry (written before the byte): threads that read a
    // byte each take an entry each.
    pthread_mutex_lock(&xce->lock);
    uint32_t *prod = (uint32_t *)(xce->shm + HS_EVTCHN_OFF_PROD);
    uint32_t *cons = (uint32_t *)(xce->shm + HS_EVTCHN_OFF_CONS);
    uint32_t c = xce->cons;
    int r;
    if (c == __atomic_load_n(prod, __ATOMIC_ACQUIRE)) {
        // The byte of an overflow: ports were lost, as the evtchn device's
        // read says with EFBIG.
        __atomic_store_n((uint32_t *)(xce->shm + HS_EVTCHN_OFF_OVERFLOW), 0, __ATOMIC_SEQ_CST);
        errno = EFBIG;
        r = -1;
    } else {
        const uint32_t *ring = (const uint32_t *)(xce->shm + HS_EVTCHN_OFF_RING);
        r = (int)__atomic_load_n(&ring[c % HS_EVTCHN_RING], __ATOMIC_RELAXED);
        xce->cons = c + 1;
        __atomic_store_n(cons, c + 1, __ATOMIC_RELEASE);
        if (r <= 0 || r >= HS_EVTCHN_PORTS) {
            errno = EPROTO;
            r = -1;
        } else {
            hs_spin_learn(xce, (evtchn_port_t)r);
            __atomic_store_n((uint64_t *)(xce->shm + HS_EVTCHN_OFF_STAMPS), hs_now_ns(),
                             __ATOMIC_RELAXED);
        }
    }
    pthread_mutex_unlock(&xce->lock);
    return r;
}

// pending() without blocking: -1 with EAGAIN when the ring holds no entry for
// us. One that is there has its byte written just after it, so the read
// inside pending() waits microseconds at most, and no poll is needed first.
int hostsim_evtchn_pending_nowait(xenevtchn_handle *xce) {
    pthread_mutex_lock(&xce->lock);
    int none = xce->cons == __atomic_load_n((uint32_t *)(xce->shm + HS_EVTCHN_OFF_PROD),
                                            __ATOMIC_ACQUIRE);
    pthread_mutex_unlock(&xce->lock);
    if (none) {
        errno = EAGAIN;
        return -1;
    }
    return xenevtchn_pending(xce);
}

int xenevtchn_unmask(xenevtchn_handle *xce, evtchn_port_t port) {
    if (port == 0 || port >= HS_EVTCHN_PORTS) {
        errno = EINVAL;
        return -1;
    }
    uint8_t old = __atomic_fetch_and(xce->shm + HS_EVTCHN_OFF_STATE + port,
                                     (uint8_t)~HS_EVTCHN_MASKED, __ATOMIC_SEQ_CST);
    if (old & HS_EVTCHN_PENDING) {
        // An event came while it was masked: host_sim delivers it again.
        uint64_t bit = 1ULL << (port % 64);
        __atomic_fetch_or(hs_evtchn_bits(xce, HS_EVTCHN_OFF_UNMASK, port), bit,
                          __ATOMIC_SEQ_CST);
        hs_kick(xce->kick);
    }
    return 0;
}

xenevtchn_port_or_error_t xenevtchn_bind_unbound_port(xenevtchn_handle *xce, uint32_t domid) {
    hs_msg_t m = {.n = 0};
    put32(&m, xce->id);
    put32(&m, domid);
    return hs_call(HS_OP_EVTCHN_BIND_UNBOUND, m.b, m.n, NULL, 0, NULL, NULL, NULL, 0);
}

// ---- xengntshr: the caller's domain shares its own pages ----
//
// host_sim allocates the pages in the domain's memory (a memfd it sends with
// every reply) and returns a grant reference and file offset per page; the
// pages are mapped here into one window. Each share is remembered so that
// unshare knows the references behind an address.

typedef struct hs_share {
    struct hs_share *next;
    uint8_t *addr;
    uint32_t count;
    uint64_t *frames;  // each page's frame (its index in the domain's memory)
    uint32_t refs[];
} hs_share_t;

struct xengntdev_handle {
    hs_share_t *shares;
};

xengntshr_handle *xengntshr_open(struct xentoollog_logger *logger, unsigned int open_flags) {
    (void)logger;
    (void)open_flags;
    if (hs_connect() < 0) {
        return NULL;
    }
    return calloc(1, sizeof(xengntshr_handle));
}

static int hs_unshare_refs(const uint32_t *refs, uint32_t count) {
    int ret = 0;
    while (count > 0) {
        uint32_t k = count < HS_GNTSHR_MAX_PAGES ? count : HS_GNTSHR_MAX_PAGES;
        uint8_t buf[4 + 4 * HS_GNTSHR_MAX_PAGES];
        memcpy(buf, &k, 4);
        memcpy(buf + 4, refs, 4 * k);
        if (hs_call(HS_OP_GNTSHR_UNSHARE, buf, 4 + 4 * k, NULL, 0, NULL, NULL, NULL, 0) < 0) {
            ret = -1;
        }
        refs += k;
        count -= k;
    }
    return ret;
}

int xengntshr_close(xengntshr_handle *xgs) {
    if (xgs == NULL) {
        return 0;
    }
    while (xgs->shares != NULL) {
        hs_share_t *sh = xgs->shares;
        xengntshr_unshare(xgs, sh->addr, sh->count);
    }
    free(xgs);
    return 0;
}

int xengntshr_fd(xengntshr_handle *xgs) {
    (void)xgs;
    errno = ENOSYS;
    return -1;
}

void *xengntshr_share_pages(xengntshr_handle *xgs, uint32_t domid, int count, uint32_t *refs,
                            int writable) {
    if (count <= 0 || count > (1 << 20)) {
        errno = EINVAL;
        return NULL;
    }
    size_t len = (size_t)count << HS_PAGE_SHIFT;
    hs_share_t *sh = malloc(sizeof(*sh) + sizeof(uint32_t) * (size_t)count);
    if (sh == NULL) {
        return NULL;
    }
    sh->frames = malloc(sizeof(uint64_t) * (size_t)count);
    if (sh->frames == NULL) {
        free(sh);
        return NULL;
    }
    uint8_t *base = mmap(NULL, len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (base == MAP_FAILED) {
        free(sh->frames);
        free(sh);
        return NULL;
    }
    uint32_t done = 0;
    while (done < (uint32_t)count) {
        uint32_t k = (uint32_t)count - done;
        if (k > HS_GNTSHR_MAX_PAGES) {
            k = HS_GNTSHR_MAX_PAGES;
        }
        hs_msg_t m = {.n = 0};
        put32(&m, domid);
        put32(&m, k);
        put32(&m, writable ? 1 : 0);
        uint8_t reply[12 * HS_GNTSHR_MAX_PAGES];
        uint32_t rlen = 0;
        int fds[HS_MAX_FDS];
        int nfds = 0;
        if (hs_call(HS_OP_GNTSHR_SHARE, m.b, m.n, reply, sizeof(reply), &rlen, fds, &nfds,
                    0) < 0) {
            goto fail;
        }
        int ok = nfds >= 1 && rlen == 12 * k;
        for (uint32_t i = 0; ok && i < k; i++) {
            uint64_t off;
            memcpy(&sh->refs[done + i], reply + 12 * i, 4);
            memcpy(&off, reply + 12 * i + 4, 8);
            sh->frames[done + i] = off >> HS_PAGE_SHIFT;
            void *p = mmap(base + ((size_t)(done + i) << HS_PAGE_SHIFT), HS_PAGE_SIZE,
                           PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, fds[0], (off_t)off);
            ok = p != MAP_FAILED;
        }
        for (int i = 0; i < nfds; i++) {
            close(fds[i]);
        }
        if (!ok) {
            hs_unshare_refs(&sh->refs[done], k);
            errno = EPROTO;
            goto fail;
        }
        done += k;
    }
    memcpy(refs, sh->refs, sizeof(uint32_t) * (size_t)count);
    sh->addr = base;
    sh->count = (uint32_t)count;
    sh->next = xgs->shares;
    xgs->shares = sh;
    return base;
fail: {
    int e = errno;
    if (done) {
        hs_unshare_refs(sh->refs, done);
    }
    munmap(base, len);
    free(sh->frames);
    free(sh);
    errno = e;
    return NULL;
}
}

int hostsim_share_frames(xengntshr_handle *xgs, void *addr, uint32_t count, uint64_t *frames) {
    for (hs_share_t *sh = xgs != NULL ? xgs->shares : NULL; sh != NULL; sh = sh->next) {
        if (sh->addr == addr && sh->count == count) {
            memcpy(frames, sh->frames, sizeof(uint64_t) * count);
            return 0;
        }
    }
    errno = EINVAL;
    return -1;
}

void *xengntshr_share_page_notify(xengntshr_handle *xgs, uint32_t domid, uint32_t *ref,
                                  int writable, uint32_t notify_offset,
                                  evtchn_port_t notify_port) {
    (void)notify_offset;
    (void)notify_port;
    // The unmap notification (a byte cleared, an event sent when the sharer
    // dies) is not simulated: say so rather than pretend.
    (void)xgs;
    (void)domid;
    (void)ref;
    (void)writable;
    errno = ENOSYS;
    return NULL;
}

int xengntshr_unshare(xengntshr_handle *xgs, void *start_address, uint32_t count) {
    for (hs_share_t **pp = &xgs->shares; *pp != NULL; pp = &(*pp)->next) {
        hs_share_t *sh = *pp;
        if (sh->addr == start_address && sh->count == count) {
            int r = hs_unshare_refs(sh->refs, sh->count);
            munmap(sh->addr, (size_t)sh->count << HS_PAGE_SHIFT);
            *pp = sh->next;
            free(sh->frames);
            free(sh);
            return r;
        }
    }
    errno = EINVAL;
    return -1;
}

// ---- the domain's own pages, by frame number (HS_OP_OWN_ALLOC) ----
static int hs_free_frames(const uint64_t *frames, uint32_t count) {
    int ret = 0;
    while (count > 0) {
        uint32_t k = count < HS_OWN_MAX_PAGES ? count : HS_OWN_MAX_PAGES;
        uint8_t buf[4 + 8 * HS_OWN_MAX_PAGES];
        memcpy(buf, &k, 4);
        memcpy(buf + 4, frames, 8 * k);
        if (hs_call(HS_OP_OWN_FREE, buf, 4 + 8 * k, NULL, 0, NULL, NULL, NULL, 0) < 0) {
            ret = -1;
        }
        frames += k;
        count -= k;
    }
    return ret;
}

void *hostsim_own_pages(uint32_t count, uint64_t *frames) {
    if (count == 0 || count > (1u << 20)) {
        errno = EINVAL;
        return NULL;
    }
    if (hs_connect() < 0) {
        return NULL;
    }
    size_t len = (size_t)count << HS_PAGE_SHIFT;
    uint8_t *base = mmap(NULL, len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (base == MAP_FAILED) {
        return NULL;
    }
    uint32_t done = 0;
    while (done < count) {
        uint32_t k = count - done < HS_OWN_MAX_PAGES ? count - done : HS_OWN_MAX_PAGES;
        uint8_t reply[8 * HS_OWN_MAX_PAGES];
        uint32_t rlen = 0;
        int fds[HS_MAX_FDS];
        int nfds = 0;
        if (hs_call(HS_OP_OWN_ALLOC, &k, 4, reply, sizeof(reply), &rlen, fds, &nfds, 0) < 0) {
            goto fail;
        }
        int ok = nfds >= 1 && rlen == 8 * k;
        if (ok) {
            memcpy(&frames[done], reply, 8 * k);
        }
        for (uint32_t i = 0; ok && i < k; i++) {
            void *p = mmap(base + ((size_t)(done + i) << HS_PAGE_SHIFT), HS_PAGE_SIZE,
                           PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, fds[0],
                           (off_t)(frames[done + i] << HS_PAGE_SHIFT));
            ok = p != MAP_FAILED;
        }
        for (int i = 0; i < nfds; i++) {
            close(fds[i]);
        }
        if (!ok) {
            if (rlen == 8 * k) {
                hs_free_frames(&frames[done], k);
            }
            errno = EPROTO;
            goto fail;
        }
        done += k;
    }
    return base;
fail: {
    int e = errno;
    if (done) {
        hs_free_frames(frames, done);
    }
    munmap(base, len);
    errno = e;
    return NULL;
}
}

int hostsim_free_own_pages(void *addr, uint32_t count, const uint64_t *frames) {
    if (addr == NULL || count == 0 || count > (1u << 20)) {
        errno = EINVAL;
        return -1;
    }
    int r = hs_free_frames(frames, count);
    munmap(addr, (size_t)count << HS_PAGE_SHIFT);
    return r;
}
