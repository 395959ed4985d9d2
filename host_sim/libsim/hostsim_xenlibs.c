// The rest of Xen's user libraries that qemu-xen (Debian's qemu-system-xen)
// imports, for host_sim's drop-in shared library (build/out/libsim-xen):
// xc_* of libxenctrl, the xendevicemodel_*, xenforeignmemory_* and
// xengnttab_* functions hostsim_libs.c lacks. Linked with hostsim_libs.c and
// hostsim_version.map into one .so, symlinked under Xen's sonames.
//
// What only PCI passthrough uses (pirqs, iomem/ioport permissions, MSI
// binding) fails with ENOSYS and says so on stderr, once per function.
#define _GNU_SOURCE
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include <xenctrl.h>
#include <xendevicemodel.h>
#include <xenforeignmemory.h>
#include <xengnttab.h>

#include "hostsim_internal.h"
#include "hostsim_proto.h"

// Xen 4.20's; not in 4.17's xenctrl.h (declared identically in 4.20's).
int xc_physdev_map_pirq_gsi(xc_interface *xch, uint32_t domid, int gsi, int *pirq);
int xc_pcidev_get_gsi(xc_interface *xch, uint32_t sbdf);

#define HS_PAGE_SHIFT 12

struct xc_interface_core {
    int unused;
};

typedef struct {
    uint8_t b[64];
    uint32_t n;
} hx_msg_t;

static void hx_put(hx_msg_t *m, const void *v, uint32_t k) {
    memcpy(m->b + m->n, v, k);
    m->n += k;
}
static void hx_put16(hx_msg_t *m, uint16_t v) {
    hx_put(m, &v, 2);
}
static void hx_put32(hx_msg_t *m, uint32_t v) {
    hx_put(m, &v, 4);
}
static void hx_put64(hx_msg_t *m, uint64_t v) {
    hx_put(m, &v, 8);
}

static int hx_simple(uint32_t op, const hx_msg_t *m) {
    return hostsim_call(op, m->b, m->n, NULL, 0, NULL, NULL, NULL, 0) < 0 ? -1 : 0;
}

// A call host_sim does not provide: log once, fail as Xen's library fails
// on a hypervisor without the feature.
static int hx_unsupported(const char *fn, const char *why, int *once) {
    if (!*once) {
        *once = 1;
        fprintf(stderr, "host_sim libsim: %s: not simulated (%s), ENOSYS\n", fn, why);
    }
    errno = ENOSYS;
    return -1;
}

#define HX_ENOSYS(fn) \
    do { \
        static int once_; \
        return hx_unsupported(fn, "PCI passthrough", &once_); \
    } while (0)

// ---- libxenctrl ----

xc_interface *xc_interface_open(xentoollog_logger *logger, xentoollog_logger *dombuild_logger,
                                unsigned open_flags) {
    (void)logger;
    (void)dombuild_logger;
    (void)open_flags;
    if (hostsim_connect() < 0) {
        return NULL;
    }
    return calloc(1, sizeof(xc_interface));
}

int xc_interface_close(xc_interface *xch) {
    free(xch);
    return 0;
}

// extent_start[i] is the first gfn of extent i, 2^extent_order pages
// (XENMEM_populate_physmap for a translated guest). Consecutive extents
// travel as one run; the _exact form fails unless every extent is populated.
int xc_domain_populate_physmap_exact(xc_interface *xch, uint32_t domid,
                                     unsigned long nr_extents, unsigned int extent_order,
                                     unsigned int mem_flags, xen_pfn_t *extent_start) {
    (void)xch;
    if (extent_order > 18 || mem_flags != 0 || (nr_extents && extent_start == NULL)) {
        errno = EINVAL;
        return -1;
    }
    uint64_t per = 1ULL << extent_order;
    unsigned long i = 0;
    while (i < nr_extents) {
        uint8_t buf[6 + 16 * HS_POPULATE_MAX_RUNS];
        uint32_t runs = 0;
        while (i < nr_extents && runs < HS_POPULATE_MAX_RUNS) {
            uint64_t gfn = (uint64_t)extent_start[i], n = per;
            if (gfn & (per - 1)) {
                errno = EINVAL;  // an extent is aligned to its order in the p2m
                return -1;
            }
            i++;
            while (i < nr_extents && (uint64_t)extent_start[i] == gfn + n) {
                n += per;
                i++;
            }
            memcpy(buf + 6 + 16 * runs, &gfn, 8);
            memcpy(buf + 6 + 16 * runs + 8, &n, 8);
            runs++;
        }
        uint16_t d = (uint16_t)domid;
        memcpy(buf, &d, 2);
        memcpy(buf + 2, &runs, 4);
        if (hostsim_call(HS_OP_POPULATE_PHYSMAP, buf, 6 + 16 * runs, NULL, 0, NULL, NULL, NULL,
                         0) < 0) {
            return -1;
        }
        hostsim_regions_changed();
    }
    return 0;
}

static int hx_hvm_param(uint32_t dom, int param, int set, uint64_t *value) {
    hx_msg_t m = {.n = 0};
    hx_put16(&m, (uint16_t)dom);
    hx_put32(&m, (uint32_t)param);
    hx_put32(&m, (uint32_t)set);
    hx_put64(&m, set ? *value : 0);
    uint8_t reply[8];
    uint32_t len = 0;
    if (hostsim_call(HS_OP_HVM_PARAM, m.b, m.n, reply, sizeof(reply), &len, NULL, NULL, 0) < 0) {
        return -1;
    }
    if (len != 8) {
        errno = EPROTO;
        return -1;
    }
    memcpy(value, reply, 8);
    return 0;
}

int xc_set_hvm_param(xc_interface *handle, uint32_t dom, int param, unsigned long value) {
    (void)handle;
    uint64_t v = value;
    return hx_hvm_param(dom, param, 1, &v);
}

int xc_get_hvm_param(xc_interface *handle, uint32_t dom, int param, unsigned long *value) {
    (void)handle;
    uint64_t v = 0;
    if (hx_hvm_param(dom, param, 0, &v) < 0) {
        return -1;
    }
    *value = (unsigned long)v;
    return 0;
}

// The current names (the device model's glue uses these; qemu-xen the old ones).
int xc_hvm_param_set(xc_interface *handle, uint32_t dom, uint32_t param, uint64_t value) {
    (void)handle;
    return hx_hvm_param(dom, (int)param, 1, &value);
}

int xc_hvm_param_get(xc_interface *handle, uint32_t dom, uint32_t param, uint64_t *value) {
    (void)handle;
    return hx_hvm_param(dom, (int)param, 0, value);
}

int xc_domain_shutdown(xc_interface *xch, uint32_t domid, int reason) {
    (void)xch;
    hx_msg_t m = {.n = 0};
    hx_put16(&m, (uint16_t)domid);
    hx_put32(&m, (uint32_t)reason);
    return hx_simple(HS_OP_SHUTDOWN, &m);
}

// Passthrough only.
int xc_domain_bind_pt_pci_irq(xc_interface *xch, uint32_t domid, uint8_t machine_irq,
                              uint8_t bus, uint8_t device, uint8_t intx) {
    (void)xch, (void)domid, (void)machine_irq, (void)bus, (void)device, (void)intx;
    HX_ENOSYS("xc_domain_bind_pt_pci_irq");
}

int xc_domain_iomem_permission(xc_interface *xch, uint32_t domid, unsigned long first_mfn,
                               unsigned long nr_mfns, uint8_t allow_access) {
    (void)xch, (void)domid, (void)first_mfn, (void)nr_mfns, (void)allow_access;
    HX_ENOSYS("xc_domain_iomem_permission");
}

int xc_domain_ioport_mapping(xc_interface *xch, uint32_t domid, uint32_t first_gport,
                             uint32_t first_mport, uint32_t nr_ports, uint32_t add_mapping) {
    (void)xch, (void)domid, (void)first_gport, (void)first_mport, (void)nr_ports;
    (void)add_mapping;
    HX_ENOSYS("xc_domain_ioport_mapping");
}

int xc_domain_memory_mapping(xc_interface *xch, uint32_t domid, unsigned long first_gfn,
                             unsigned long first_mfn, unsigned long nr_mfns,
                             uint32_t add_mapping) {
    (void)xch, (void)domid, (void)first_gfn, (void)first_mfn, (void)nr_mfns, (void)add_mapping;
    HX_ENOSYS("xc_domain_memory_mapping");
}

int xc_domain_update_msi_irq(xc_interface *xch, uint32_t domid, uint32_t gvec, uint32_t pirq,
                             uint32_t gflags, uint64_t gtable) {
    (void)xch, (void)domid, (void)gvec, (void)pirq, (void)gflags, (void)gtable;
    HX_ENOSYS("xc_domain_update_msi_irq");
}

int xc_domain_unbind_msi_irq(xc_interface *xch, uint32_t domid, uint32_t gvec, uint32_t pirq,
                             uint32_t gflags) {
    (void)xch, (void)domid, (void)gvec, (void)pirq, (void)gflags;
    HX_ENOSYS("xc_domain_unbind_msi_irq");
}

int xc_domain_unbind_pt_irq(xc_interface *xch, uint32_t domid, uint8_t machine_irq,
                            uint8_t irq_type, uint8_t bus, uint8_t device, uint8_t intx,
                            uint8_t isa_irq) {
    (void)xch, (void)domid, (void)machine_irq, (void)irq_type, (void)bus, (void)device;
    (void)intx, (void)isa_irq;
    HX_ENOSYS("xc_domain_unbind_pt_irq");
}

int xc_physdev_map_pirq(xc_interface *xch, uint32_t domid, int index, int *pirq) {
    (void)xch, (void)domid, (void)index, (void)pirq;
    HX_ENOSYS("xc_physdev_map_pirq");
}

int xc_physdev_map_pirq_gsi(xc_interface *xch, uint32_t domid, int gsi, int *pirq) {
    (void)xch, (void)domid, (void)gsi, (void)pirq;
    HX_ENOSYS("xc_physdev_map_pirq_gsi");
}

int xc_physdev_map_pirq_msi(xc_interface *xch, uint32_t domid, int index, int *pirq, int devfn,
                            int bus, int entry_nr, uint64_t table_base) {
    (void)xch, (void)domid, (void)index, (void)pirq, (void)devfn, (void)bus, (void)entry_nr;
    (void)table_base;
    HX_ENOSYS("xc_physdev_map_pirq_msi");
}

int xc_physdev_unmap_pirq(xc_interface *xch, uint32_t domid, int pirq) {
    (void)xch, (void)domid, (void)pirq;
    HX_ENOSYS("xc_physdev_unmap_pirq");
}

int xc_pcidev_get_gsi(xc_interface *xch, uint32_t sbdf) {
    (void)xch, (void)sbdf;
    HX_ENOSYS("xc_pcidev_get_gsi");
}

// ---- libxendevicemodel, beyond hostsim_libs.c ----

int xendevicemodel_track_dirty_vram(xendevicemodel_handle *dmod, domid_t domid,
                                    uint64_t first_pfn, uint32_t nr,
                                    unsigned long *dirty_bitmap) {
    (void)dmod;
    const unsigned bits = 8 * sizeof(unsigned long);
    uint32_t done = 0;
    do {
        uint32_t k = nr - done;
        if (k > HS_DIRTY_MAX_PAGES) {
            k = HS_DIRTY_MAX_PAGES;
        }
        hx_msg_t m = {.n = 0};
        hx_put16(&m, domid);
        hx_put64(&m, first_pfn + done);
        hx_put32(&m, k);
        uint8_t reply[HS_DIRTY_MAX_PAGES / 8];
        uint32_t len = 0;
        if (hostsim_call(HS_OP_TRACK_DIRTY_VRAM, m.b, m.n, reply, sizeof(reply), &len, NULL,
                         NULL, 0) < 0) {
            return -1;
        }
        if (len != (k + 7) / 8) {
            errno = EPROTO;
            return -1;
        }
        for (uint32_t i = 0; i < k && dirty_bitmap != NULL; i++) {
            uint32_t at = done + i;
            unsigned long bit = 1UL << (at % bits);
            if (reply[i / 8] & (1u << (i % 8))) {
                dirty_bitmap[at / bits] |= bit;
            } else {
                dirty_bitmap[at / bits] &= ~bit;
            }
        }
        done += k;
    } while (done < nr);
    return 0;
}

int xendevicemodel_relocate_memory(xendevicemodel_handle *dmod, domid_t domid, uint32_t size,
                                   uint64_t src_gfn, uint64_t dst_gfn) {
    (void)dmod;
    hx_msg_t m = {.n = 0};
    hx_put16(&m, domid);
    hx_put32(&m, size);
    hx_put64(&m, src_gfn);
    hx_put64(&m, dst_gfn);
    int r = hx_simple(HS_OP_RELOCATE_MEMORY, &m);
    hostsim_regions_changed();  // even a partial move changes the map
    return r;
}

int xendevicemodel_set_mem_type(xendevicemodel_handle *dmod, domid_t domid,
                                hvmmem_type_t mem_type, uint64_t first_pfn, uint32_t nr) {
    (void)dmod;
    hx_msg_t m = {.n = 0};
    hx_put16(&m, domid);
    hx_put32(&m, (uint32_t)mem_type);
    hx_put64(&m, first_pfn);
    hx_put32(&m, nr);
    return hx_simple(HS_OP_SET_MEM_TYPE, &m);
}

int xendevicemodel_pin_memory_cacheattr(xendevicemodel_handle *dmod, domid_t domid,
                                        uint64_t start, uint64_t end, uint32_t type) {
    (void)dmod;
    hx_msg_t m = {.n = 0};
    hx_put16(&m, domid);
    hx_put64(&m, start);
    hx_put64(&m, end);
    hx_put32(&m, type);
    return hx_simple(HS_OP_PIN_MEMORY_CACHEATTR, &m);
}

// XEN_DMOP_set_irq_level is Arm's; x86 Xen answers EOPNOTSUPP.
int xendevicemodel_set_irq_level(xendevicemodel_handle *dmod, domid_t domid, uint32_t irq,
                                 unsigned int level) {
    (void)dmod, (void)domid, (void)irq, (void)level;
    errno = EOPNOTSUPP;
    return -1;
}

// ---- libxenforeignmemory, beyond hostsim_libs.c ----

void *xenforeignmemory_map2(xenforeignmemory_handle *fmem, uint32_t dom, void *addr, int prot,
                            int flags, size_t pages, const xen_pfn_t arr[], int err[]) {
    (void)fmem;
    return hostsim_map(dom, addr, prot, flags, pages, arr, err);
}

// As on MiniOS: no resource mapping, so the caller falls back to
// get_ioreq_server_info and maps the pages by frame number.
xenforeignmemory_resource_handle *xenforeignmemory_map_resource(
    xenforeignmemory_handle *fmem, domid_t domid, unsigned int type, unsigned int id,
    unsigned long frame, unsigned long nr_frames, void **paddr, int prot, int flags) {
    (void)fmem, (void)domid, (void)type, (void)id, (void)frame, (void)nr_frames, (void)paddr;
    (void)prot, (void)flags;
    errno = EOPNOTSUPP;
    return NULL;
}

int xenforeignmemory_unmap_resource(xenforeignmemory_handle *fmem,
                                    xenforeignmemory_resource_handle *fres) {
    (void)fmem;
    if (fres != NULL) {
        errno = EINVAL;  // none was ever handed out
        return -1;
    }
    return 0;
}

// ---- libxengnttab: opening works; mapping another domain's grants is not
// simulated for a dom0 device model (qemu-xen's PV backends) ----

struct hx_gnttab {
    uint32_t max_grants;
};

xengnttab_handle *xengnttab_open(struct xentoollog_logger *logger, unsigned int open_flags) {
    (void)logger, (void)open_flags;
    return (xengnttab_handle *)calloc(1, sizeof(struct hx_gnttab));
}

int xengnttab_close(xengnttab_handle *xgt) {
    free(xgt);
    return 0;
}

int xengnttab_set_max_grants(xengnttab_handle *xgt, uint32_t nr_grants) {
    ((struct hx_gnttab *)xgt)->max_grants = nr_grants;
    return 0;
}

int xengnttab_grant_copy(xengnttab_handle *xgt, uint32_t count,
                         xengnttab_grant_copy_segment_t *segs) {
    (void)xgt, (void)count, (void)segs;
    static int once;
    return hx_unsupported("xengnttab_grant_copy", "grant copy: the device model's PV backends",
                          &once);
}

void *xengnttab_map_domain_grant_refs(xengnttab_handle *xgt, uint32_t count, uint32_t domid,
                                      uint32_t *refs, int prot) {
    (void)xgt, (void)count, (void)domid, (void)refs, (void)prot;
    static int once;
    hx_unsupported("xengnttab_map_domain_grant_refs", "grant mapping: PV backends", &once);
    return NULL;
}

int xengnttab_unmap(xengnttab_handle *xgt, void *start_address, uint32_t count) {
    (void)xgt, (void)start_address, (void)count;
    errno = EINVAL;  // nothing is ever mapped through this handle
    return -1;
}
