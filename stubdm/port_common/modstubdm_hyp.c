// _xenglue: the device model's C glue inside MicroPython (DESIGN.md 3, 6, 9).
//
// The same boundary as the cffi module stubdm._xenglue on CPython: Xen's
// user-library API (xendevicemodel, xenforeignmemory, xenevtchn), compiled
// against Xen's real headers, plus the mapcache core. Which implementation
// of that API is linked in is the port's business (host_sim's libsim in the
// unix port, Xen's libraries in dom0, MiniOS's in a stub domain).
//
// stubdm/glue_cffi.py gives CPython exactly this API over cffi, so that
// stubdm/hypervisor.py and stubdm/memory.py are one source for both:
//
//   Xen(domid)                     the three handles, opened for one domain
//     .create_ioreq_server(bufioreq) -> id
//     .get_ioreq_server_info(id)   -> (ioreq_gfn, bufioreq_gfn, bufioreq_port)
//     .map_io_range(id, is_mmio, start, end)      (end inclusive)
//     .unmap_io_range(id, is_mmio, start, end)
//     .map_pcidev(id, seg, bus, dev, fn)
//     .set_ioreq_server_state(id, enabled)
//     .destroy_ioreq_server(id)
//     .set_isa_irq_level(irq, level)
//     .set_pci_intx_level(seg, bus, dev, intx, level)
//     .set_pci_link_route(link, irq)
//     .inject_msi(addr, data)      an MSI write of data to addr (XEN_DMOP_inject_msi)
//     .shutdown(reason)
//     .map_page(gfn)               -> writable memoryview of the 4 KiB frame
//                                     (mapped for the life of the process)
//     .evtchn_fd() -> fd, .bind_interdomain(remote_port) -> local port,
//     .pending() -> port, .unmask(port), .notify(port)
//     .pending_nowait() -> port, or -1 at once when none is delivered
//     .bind_unbound_port(remote_domid) -> local port, .unbind(port)
//     .share_pages(remote_domid, count, writable)
//                                  -> (address, refs tuple, writable memoryview):
//                                     count fresh pages of our own domain's
//                                     memory granted to remote_domid
//     .unshare(address, count)     ends that share (the grantee may still map
//                                     it: the pages then stay until it unmaps)
//     .share_frames(address, count) -> frames tuple of that share's pages
//                                     (kbdif.h's page-ref; dom0: ENOSYS)
//     .own_pages(count)            -> (address, frames tuple, writable memoryview):
//                                     count fresh pages of our own memory and
//                                     their frame numbers (fbif.h's page-ref;
//                                     MiniOS: virt_to_mfn; host_sim: page index
//                                     in the domain's memory; dom0: ENOSYS)
//     .free_own_pages(address, frames)  gives them back
//     .populate_physmap(gfn, count)  fresh pages at gfn.. (video RAM above the
//                                     guest's RAM; libxenctrl's _exact call)
//     .relocate_memory(count, src_gfn, dst_gfn)   move them (the VRAM BAR)
//     .set_hvm_param(index, value), .get_hvm_param(index) -> int
//                                  (libxenctrl's xc_hvm_param_*: the S3 state)
//     .track_dirty_vram(first_pfn, count) -> bytes: bit i of byte i / 8 set
//                                     when page first_pfn + i was written since
//                                     the last call (count 0 stops tracking)
//   Xs()                           a xenstore connection (xs_open(0)); tx 0 is
//                                  no transaction
//     .read(tx, path) -> bytes, .write(tx, path, bytes|str), .mkdir(tx, path),
//     .rm(tx, path), .directory(tx, path) -> [str], .get_perms(tx, path) ->
//     [(domid, bits)], .set_perms(tx, path, [(domid, bits)]),
//     .watch(path, token), .unwatch(path, token), .fileno() -> fd,
//     .check_watch() -> (path, token) or None, .transaction_start() -> tx,
//     .transaction_end(tx, abort) -> True, or False to retry (EAGAIN),
//     .domain_path(domid) -> str, .close()
//   Mapcache(xen, bucket_shift, max_buckets)
//     .add_ram(start, end_exclusive)
//     .map(gpa, length)            -> writable memoryview, or None (not RAM);
//                                     valid until the next map/invalidate
//     .map_locked(gpa, length)     -> the same, but valid until .unlock(gpa)
//                                     (kept across invalidates: DMA in flight)
//     .unlock(gpa)                 drops one lock on gpa's bucket
//     .bucket_room(gpa) -> bytes to the end of gpa's bucket
//     .prdt_copy(prdt, n, skip, buf, to_guest[, cursor]) -> True, or False
//                                     (not RAM, table too short): len(buf)
//                                     bytes of an AHCI PRD table's stream;
//                                     cursor: a bytearray(16) kept with the
//                                     table (mapcache.h)
//     .invalidate()
//     .stats() -> (hits, misses, maps, unmaps, evictions, invalidations,
//                  refused, buckets_mapped, buckets_locked, max_buckets,
//                  bucket_pages)
//     .footprint() -> heap bytes of the cache itself
//   barrier()                      full memory fence (ioreq handshake)
//   atomic_add32(buf, n)           atomic add to the u32 at buf[0:4]
//                                  (the buffered page's read_pointer)
//   inet_sum(buf, start, end) -> the ones'-complement sum (RFC 1071) of
//                                  buf[start:end], folded to 16 bits
//                                  (stubdm/mapcache/inet_sum.h); ValueError
//                                  unless 0 <= start <= end <= len(buf)
//   prdt_total(prdt, n) -> an AHCI PRD table's bytes, or -1 - i when entry
//                                  i's count is odd (mapcache.h)
//   footprint(bucket_shift, max_buckets) -> heap bytes of such a cache
//   PAGE_SHIFT, MIN_BUCKET_SHIFT, MAX_BUCKET_SHIFT, MAX_RAM_RANGES, and the
//   errno values ENOSYS EINVAL EFAULT ENOMEM (MicroPython's errno module
//   lacks ENOSYS, PORTABLE_PYTHON.md 12)
// Failures raise OSError(errno) (the library call's errno).
//
// Memory: the handles and the mapcache live on the C heap (malloc, by the
// libraries); the Python objects here only point at them. The one Python
// object referenced from C (a Mapcache's Xen) sits in the Mapcache object
// itself, which the GC scans, so no root pointer is needed: no C static
// holds a Python object. Guest pages are outside the GC heap, and the GC
// ignores pointers there.
//
// 64-bit values (gfns, guest addresses, ioreq data) need a 64-bit mp_uint_t:
// the unix port on x86_64/arm64 and MiniOS on x86_64 (PV) have it.
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include <xenctrl.h>
#include <xendevicemodel.h>
#include <xenevtchn.h>
#include <xenforeignmemory.h>
#include <xengnttab.h>
#include <xenstore.h>

#include "py/obj.h"
#include "py/objarray.h"
#include "py/runtime.h"
#include "py/mperrno.h"

#include "mapcache.h"
#include "inet_sum.h"
#include "evtchn_nowait.h"

_Static_assert(sizeof(mp_uint_t) >= sizeof(uint64_t), "_xenglue needs a 64-bit mp_uint_t");

#define XENGLUE_PAGE_SIZE ((size_t)1 << MAPCACHE_PAGE_SHIFT)
#define RW_BYTES ('B' | MP_OBJ_ARRAY_TYPECODE_FLAG_RW)

static uint64_t get_u64(mp_obj_t o) {
    return (uint64_t)mp_obj_int_get_uint_checked(o);
}

static mp_int_t get_int(mp_obj_t o) {
    return mp_obj_get_int(o);
}

static NORETURN void raise_errno(void) {
    mp_raise_OSError(errno ? errno : MP_EIO);
}

// A library call's int result: negative means failure with errno set.
static mp_obj_t check(int r) {
    if (r < 0) {
        raise_errno();
    }
    return MP_OBJ_NEW_SMALL_INT(r);
}

// ---- Xen: the three handles of one domain ----------------------------------

typedef struct {
    mp_obj_base_t base;
    xendevicemodel_handle *dmod;
    xenforeignmemory_handle *fmem;
    xenevtchn_handle *xce;
    xengntshr_handle *xgs;  // opened on first share
    xc_interface *xch;  // libxenctrl, opened on first populate
    domid_t domid;
} xenglue_xen_t;

static const mp_obj_type_t xenglue_xen_type;

static mp_obj_t xen_make_new(const mp_obj_type_t *type, size_t n_args, size_t n_kw,
    const mp_obj_t *args) {
    mp_arg_check_num(n_args, n_kw, 1, 1, false);
    mp_int_t domid = get_int(args[0]);
    if (domid < 0 || domid > 0xFFFF) {
        mp_raise_ValueError(MP_ERROR_TEXT("domid"));
    }
    xenglue_xen_t *self = mp_obj_malloc(xenglue_xen_t, type);
    self->domid = (domid_t)domid;
    self->dmod = NULL;
    self->fmem = NULL;
    self->xce = NULL;
    self->xgs = NULL;
    self->xch = NULL;
    errno = 0;
    self->dmod = xendevicemodel_open(NULL, 0);
    if (self->dmod == NULL) {
        raise_errno();
    }
    self->fmem = xenforeignmemory_open(NULL, 0);
    if (self->fmem == NULL) {
        int e = errno;
        xendevicemodel_close(self->dmod);
        errno = e;
        raise_errno();
    }
    self->xce = xenevtchn_open(NULL, 0);
    if (self->xce == NULL) {
        int e = errno;
        xenforeignmemory_close(self->fmem);
        xendevicemodel_close(self->dmod);
        errno = e;
        raise_errno();
    }
    return MP_OBJ_FROM_PTR(self);
}

#define XEN(o) ((xenglue_xen_t *)MP_OBJ_TO_PTR(o))

static mp_obj_t xen_create_ioreq_server(mp_obj_t self_in, mp_obj_t bufioreq) {
    xenglue_xen_t *self = XEN(self_in);
    ioservid_t id;
    check(xendevicemodel_create_ioreq_server(self->dmod, self->domid, get_int(bufioreq), &id));
    return MP_OBJ_NEW_SMALL_INT(id);
}
static MP_DEFINE_CONST_FUN_OBJ_2(xen_create_ioreq_server_obj, xen_create_ioreq_server);

static mp_obj_t xen_get_ioreq_server_info(mp_obj_t self_in, mp_obj_t id) {
    xenglue_xen_t *self = XEN(self_in);
    xen_pfn_t ioreq_gfn = 0, buf_gfn = 0;
    evtchn_port_t port = 0;
    check(xendevicemodel_get_ioreq_server_info(self->dmod, self->domid,
        (ioservid_t)get_int(id), &ioreq_gfn, &buf_gfn, &port));
    mp_obj_t t[3] = {
        mp_obj_new_int_from_ull(ioreq_gfn),
        mp_obj_new_int_from_ull(buf_gfn),
        mp_obj_new_int_from_uint(port),
    };
    return mp_obj_new_tuple(3, t);
}
static MP_DEFINE_CONST_FUN_OBJ_2(xen_get_ioreq_server_info_obj, xen_get_ioreq_server_info);

static mp_obj_t xen_map_io_range(size_t n_args, const mp_obj_t *args) {
    xenglue_xen_t *self = XEN(args[0]);
    return check(xendevicemodel_map_io_range_to_ioreq_server(self->dmod, self->domid,
        (ioservid_t)get_int(args[1]), get_int(args[2]), get_u64(args[3]), get_u64(args[4])));
}
static MP_DEFINE_CONST_FUN_OBJ_VAR_BETWEEN(xen_map_io_range_obj, 5, 5, xen_map_io_range);

static mp_obj_t xen_unmap_io_range(size_t n_args, const mp_obj_t *args) {
    xenglue_xen_t *self = XEN(args[0]);
    return check(xendevicemodel_unmap_io_range_from_ioreq_server(self->dmod, self->domid,
        (ioservid_t)get_int(args[1]), get_int(args[2]), get_u64(args[3]), get_u64(args[4])));
}
static MP_DEFINE_CONST_FUN_OBJ_VAR_BETWEEN(xen_unmap_io_range_obj, 5, 5, xen_unmap_io_range);

static mp_obj_t xen_map_pcidev(size_t n_args, const mp_obj_t *args) {
    xenglue_xen_t *self = XEN(args[0]);
    return check(xendevicemodel_map_pcidev_to_ioreq_server(self->dmod, self->domid,
        (ioservid_t)get_int(args[1]), (uint16_t)get_int(args[2]), (uint8_t)get_int(args[3]),
        (uint8_t)get_int(args[4]), (uint8_t)get_int(args[5])));
}
static MP_DEFINE_CONST_FUN_OBJ_VAR_BETWEEN(xen_map_pcidev_obj, 6, 6, xen_map_pcidev);

static mp_obj_t xen_set_ioreq_server_state(mp_obj_t self_in, mp_obj_t id, mp_obj_t enabled) {
    xenglue_xen_t *self = XEN(self_in);
    return check(xendevicemodel_set_ioreq_server_state(self->dmod, self->domid,
        (ioservid_t)get_int(id), get_int(enabled)));
}
static MP_DEFINE_CONST_FUN_OBJ_3(xen_set_ioreq_server_state_obj, xen_set_ioreq_server_state);

static mp_obj_t xen_destroy_ioreq_server(mp_obj_t self_in, mp_obj_t id) {
    xenglue_xen_t *self = XEN(self_in);
    return check(xendevicemodel_destroy_ioreq_server(self->dmod, self->domid,
        (ioservid_t)get_int(id)));
}
static MP_DEFINE_CONST_FUN_OBJ_2(xen_destroy_ioreq_server_obj, xen_destroy_ioreq_server);

static mp_obj_t xen_set_isa_irq_level(mp_obj_t self_in, mp_obj_t irq, mp_obj_t level) {
    xenglue_xen_t *self = XEN(self_in);
    return check(xendevicemodel_set_isa_irq_level(self->dmod, self->domid,
        (uint8_t)get_int(irq), (unsigned int)get_int(level)));
}
static MP_DEFINE_CONST_FUN_OBJ_3(xen_set_isa_irq_level_obj, xen_set_isa_irq_level);

static mp_obj_t xen_set_pci_intx_level(size_t n_args, const mp_obj_t *args) {
    xenglue_xen_t *self = XEN(args[0]);
    return check(xendevicemodel_set_pci_intx_level(self->dmod, self->domid,
        (uint16_t)get_int(args[1]), (uint8_t)get_int(args[2]), (uint8_t)get_int(args[3]),
        (uint8_t)get_int(args[4]), (unsigned int)get_int(args[5])));
}
static MP_DEFINE_CONST_FUN_OBJ_VAR_BETWEEN(xen_set_pci_intx_level_obj, 6, 6, xen_set_pci_intx_level);

static mp_obj_t xen_set_pci_link_route(mp_obj_t self_in, mp_obj_t link, mp_obj_t irq) {
    xenglue_xen_t *self = XEN(self_in);
    return check(xendevicemodel_set_pci_link_route(self->dmod, self->domid,
        (uint8_t)get_int(link), (uint8_t)get_int(irq)));
}
static MP_DEFINE_CONST_FUN_OBJ_3(xen_set_pci_link_route_obj, xen_set_pci_link_route);

static mp_obj_t xen_inject_msi(mp_obj_t self_in, mp_obj_t addr, mp_obj_t data) {
    xenglue_xen_t *self = XEN(self_in);
    return check(xendevicemodel_inject_msi(self->dmod, self->domid, get_u64(addr),
        (uint32_t)get_u64(data)));
}
static MP_DEFINE_CONST_FUN_OBJ_3(xen_inject_msi_obj, xen_inject_msi);

static mp_obj_t xen_shutdown(mp_obj_t self_in, mp_obj_t reason) {
    xenglue_xen_t *self = XEN(self_in);
    return check(xendevicemodel_shutdown(self->dmod, self->domid,
        (unsigned int)get_int(reason)));
}
static MP_DEFINE_CONST_FUN_OBJ_2(xen_shutdown_obj, xen_shutdown);

static mp_obj_t xen_map_page(mp_obj_t self_in, mp_obj_t gfn_in) {
    xenglue_xen_t *self = XEN(self_in);
    xen_pfn_t gfn = (xen_pfn_t)get_u64(gfn_in);
    int err = 0;
    errno = 0;
    void *p = xenforeignmemory_map(self->fmem, self->domid, PROT_READ | PROT_WRITE, 1, &gfn, &err);
    if (p == NULL) {
        raise_errno();
    }
    if (err) {
        xenforeignmemory_unmap(self->fmem, p, 1);
        mp_raise_OSError(err < 0 ? -err : err);
    }
    return mp_obj_new_memoryview(RW_BYTES, XENGLUE_PAGE_SIZE, p);
}
static MP_DEFINE_CONST_FUN_OBJ_2(xen_map_page_obj, xen_map_page);

// ---- video RAM: guest memory the device model populates and moves -----------

// libxenctrl, opened on first use (the VRAM's populate, the S3 param).
static void open_xc(xenglue_xen_t *self) {
    if (self->xch == NULL) {
        self->xch = xc_interface_open(NULL, NULL, 0);
        if (self->xch == NULL) {
            raise_errno();
        }
    }
}

// At most this many pages per call (512 MiB, QEMU's largest VGA memory).
#define XENGLUE_MAX_VRAM_PAGES (131072)

static mp_obj_t xen_populate_physmap(mp_obj_t self_in, mp_obj_t gfn_in, mp_obj_t count_in) {
    xenglue_xen_t *self = XEN(self_in);
    mp_int_t count = get_int(count_in);
    if (count <= 0 || count > XENGLUE_MAX_VRAM_PAGES) {
        mp_raise_OSError(MP_EINVAL);
    }
    errno = 0;
    open_xc(self);
    xen_pfn_t *pfns = malloc(sizeof(xen_pfn_t) * (size_t)count);
    if (pfns == NULL) {
        mp_raise_OSError(MP_ENOMEM);
    }
    xen_pfn_t gfn = (xen_pfn_t)get_u64(gfn_in);
    for (mp_int_t i = 0; i < count; i++) {
        pfns[i] = gfn + (xen_pfn_t)i;
    }
    int r = xc_domain_populate_physmap_exact(self->xch, self->domid, (unsigned long)count, 0, 0,
        pfns);
    int e = errno;
    free(pfns);
    errno = e;
    return check(r);
}
static MP_DEFINE_CONST_FUN_OBJ_3(xen_populate_physmap_obj, xen_populate_physmap);

static mp_obj_t xen_relocate_memory(size_t n_args, const mp_obj_t *args) {
    xenglue_xen_t *self = XEN(args[0]);
    errno = 0;
    return check(xendevicemodel_relocate_memory(self->dmod, self->domid,
        (uint32_t)get_int(args[1]), get_u64(args[2]), get_u64(args[3])));
}
static MP_DEFINE_CONST_FUN_OBJ_VAR_BETWEEN(xen_relocate_memory_obj, 4, 4, xen_relocate_memory);

static mp_obj_t xen_set_hvm_param(mp_obj_t self_in, mp_obj_t index, mp_obj_t value) {
    xenglue_xen_t *self = XEN(self_in);
    errno = 0;
    open_xc(self);
    return check(xc_hvm_param_set(self->xch, self->domid, (uint32_t)get_int(index),
        get_u64(value)));
}
static MP_DEFINE_CONST_FUN_OBJ_3(xen_set_hvm_param_obj, xen_set_hvm_param);

static mp_obj_t xen_get_hvm_param(mp_obj_t self_in, mp_obj_t index) {
    xenglue_xen_t *self = XEN(self_in);
    errno = 0;
    open_xc(self);
    uint64_t v = 0;
    check(xc_hvm_param_get(self->xch, self->domid, (uint32_t)get_int(index), &v));
    return mp_obj_new_int_from_ull(v);
}
static MP_DEFINE_CONST_FUN_OBJ_2(xen_get_hvm_param_obj, xen_get_hvm_param);

static mp_obj_t xen_track_dirty_vram(mp_obj_t self_in, mp_obj_t first_in, mp_obj_t count_in) {
    xenglue_xen_t *self = XEN(self_in);
    mp_int_t count = get_int(count_in);
    if (count < 0 || count > XENGLUE_MAX_VRAM_PAGES) {
        mp_raise_OSError(MP_EINVAL);
    }
    const size_t bits = 8 * sizeof(unsigned long);
    size_t words = ((size_t)count + bits - 1) / bits;
    unsigned long *bitmap = calloc(words ? words : 1, sizeof(unsigned long));
    if (bitmap == NULL) {
        mp_raise_OSError(MP_ENOMEM);
    }
    errno = 0;
    int r = xendevicemodel_track_dirty_vram(self->dmod, self->domid, get_u64(first_in),
        (uint32_t)count, count ? bitmap : NULL);
    if (r < 0) {
        int e = errno;
        free(bitmap);
        mp_raise_OSError(e ? e : MP_EIO);
    }
    // Little-endian words: byte i / 8, bit i % 8 is page i.
    size_t nbytes = ((size_t)count + 7) / 8;
    byte *out = malloc(nbytes ? nbytes : 1);
    if (out == NULL) {
        free(bitmap);
        mp_raise_OSError(MP_ENOMEM);
    }
    for (size_t i = 0; i < nbytes; i++) {
        out[i] = (byte)(bitmap[i / sizeof(unsigned long)] >> (8 * (i % sizeof(unsigned long))));
    }
    free(bitmap);
    mp_obj_t o = mp_obj_new_bytes(out, nbytes);
    free(out);
    return o;
}
static MP_DEFINE_CONST_FUN_OBJ_3(xen_track_dirty_vram_obj, xen_track_dirty_vram);

static mp_obj_t xen_evtchn_fd(mp_obj_t self_in) {
    return check(xenevtchn_fd(XEN(self_in)->xce));
}
static MP_DEFINE_CONST_FUN_OBJ_1(xen_evtchn_fd_obj, xen_evtchn_fd);

static mp_obj_t xen_bind_interdomain(mp_obj_t self_in, mp_obj_t remote) {
    xenglue_xen_t *self = XEN(self_in);
    return check(xenevtchn_bind_interdomain(self->xce, self->domid,
        (evtchn_port_t)get_int(remote)));
}
static MP_DEFINE_CONST_FUN_OBJ_2(xen_bind_interdomain_obj, xen_bind_interdomain);

static mp_obj_t xen_pending(mp_obj_t self_in) {
    return check(xenevtchn_pending(XEN(self_in)->xce));
}
static MP_DEFINE_CONST_FUN_OBJ_1(xen_pending_obj, xen_pending);

static mp_obj_t xen_unmask(mp_obj_t self_in, mp_obj_t port) {
    return check(xenevtchn_unmask(XEN(self_in)->xce, (evtchn_port_t)get_int(port)));
}
static MP_DEFINE_CONST_FUN_OBJ_2(xen_unmask_obj, xen_unmask);

// evtchn_nowait.h: -1 with EAGAIN at once when nothing is delivered.
static mp_obj_t xen_pending_nowait(mp_obj_t self_in) {
    int r = stubdm_evtchn_pending_nowait(XEN(self_in)->xce);
    if (r < 0 && errno == EAGAIN) {
        return MP_OBJ_NEW_SMALL_INT(-1);
    }
    return check(r);
}
static MP_DEFINE_CONST_FUN_OBJ_1(xen_pending_nowait_obj, xen_pending_nowait);

static mp_obj_t xen_notify(mp_obj_t self_in, mp_obj_t port) {
    return check(xenevtchn_notify(XEN(self_in)->xce, (evtchn_port_t)get_int(port)));
}
static MP_DEFINE_CONST_FUN_OBJ_2(xen_notify_obj, xen_notify);

static mp_obj_t xen_bind_unbound_port(mp_obj_t self_in, mp_obj_t remote_dom) {
    return check(xenevtchn_bind_unbound_port(XEN(self_in)->xce, (uint32_t)get_int(remote_dom)));
}
static MP_DEFINE_CONST_FUN_OBJ_2(xen_bind_unbound_port_obj, xen_bind_unbound_port);

static mp_obj_t xen_unbind(mp_obj_t self_in, mp_obj_t port) {
    return check(xenevtchn_unbind(XEN(self_in)->xce, (evtchn_port_t)get_int(port)));
}
static MP_DEFINE_CONST_FUN_OBJ_2(xen_unbind_obj, xen_unbind);

#ifdef STUBDM_PLATFORM_MINIOS
// MiniOS has no gntshr (Xen's libxengnttab builds the no-gntshr variant
// there): grant our own pages with MiniOS's grant-table calls instead.
// UNTESTED here (README: the MiniOS target); the same API is tested through
// xengntshr under host_sim. A page the grantee still maps when we end access
// is never freed (gnttab_end_access refuses it), so it is never reused.
#include <mini-os/gnttab.h>
#include <mini-os/mm.h>

typedef struct minios_share {
    struct minios_share *next;
    void *addr;
    uint32_t count;
    int order;
    grant_ref_t refs[];
} minios_share_t;

static minios_share_t *minios_shares;

static void *glue_share_pages(xenglue_xen_t *self, uint32_t domid, int count, uint32_t *refs,
    int writable) {
    (void)self;
    int order = 0;
    while ((1 << order) < count) {
        order++;
    }
    minios_share_t *sh = malloc(sizeof(*sh) + sizeof(grant_ref_t) * (size_t)count);
    if (sh == NULL) {
        errno = ENOMEM;
        return NULL;
    }
    void *p = (void *)alloc_pages(order);
    if (p == NULL) {
        free(sh);
        errno = ENOMEM;
        return NULL;
    }
    memset(p, 0, XENGLUE_PAGE_SIZE << order);
    for (int i = 0; i < count; i++) {
        sh->refs[i] = gnttab_grant_access((domid_t)domid,
            virt_to_mfn((char *)p + (size_t)i * XENGLUE_PAGE_SIZE), !writable);
        refs[i] = sh->refs[i];
    }
    sh->addr = p;
    sh->count = (uint32_t)count;
    sh->order = order;
    sh->next = minios_shares;
    minios_shares = sh;
    return p;
}

static int glue_unshare(xenglue_xen_t *self, void *addr, uint32_t count) {
    (void)self;
    for (minios_share_t **pp = &minios_shares; *pp != NULL; pp = &(*pp)->next) {
        minios_share_t *sh = *pp;
        if (sh->addr == addr && sh->count == count) {
            int all = 1;
            for (uint32_t i = 0; i < count; i++) {
                all &= gnttab_end_access(sh->refs[i]);
            }
            if (all) {
                free_pages(sh->addr, sh->order);
            }
            *pp = sh->next;
            free(sh);
            return 0;
        }
    }
    errno = EINVAL;
    return -1;
}
#else
static void *glue_share_pages(xenglue_xen_t *self, uint32_t domid, int count, uint32_t *refs,
    int writable) {
    if (self->xgs == NULL) {
        self->xgs = xengntshr_open(NULL, 0);
        if (self->xgs == NULL) {
            return NULL;
        }
    }
    return xengntshr_share_pages(self->xgs, domid, count, refs, writable);
}

static int glue_unshare(xenglue_xen_t *self, void *addr, uint32_t count) {
    if (self->xgs == NULL) {
        errno = EINVAL;
        return -1;
    }
    return xengntshr_unshare(self->xgs, addr, count);
}
#endif

// ---- our own pages by frame number ----
#if defined(STUBDM_PLATFORM_MINIOS)
static void *glue_own_pages(uint32_t count, uint64_t *frames) {
    int order = 0;
    while ((1u << order) < count) {
        order++;
    }
    void *p = (void *)alloc_pages(order);
    if (p == NULL) {
        errno = ENOMEM;
        return NULL;
    }
    memset(p, 0, XENGLUE_PAGE_SIZE << order);
    for (uint32_t i = 0; i < count; i++) {
        frames[i] = virt_to_mfn((char *)p + (size_t)i * XENGLUE_PAGE_SIZE);
    }
    return p;
}

static int glue_free_own_pages(void *addr, uint32_t count, const uint64_t *frames) {
    (void)frames;
    int order = 0;
    while ((1u << order) < count) {
        order++;
    }
    free_pages(addr, order);
    return 0;
}
#elif defined(STUBDM_GLUE_SIM)
#include "hostsim_internal.h"
static void *glue_own_pages(uint32_t count, uint64_t *frames) {
    return hostsim_own_pages(count, frames);
}

static int glue_free_own_pages(void *addr, uint32_t count, const uint64_t *frames) {
    return hostsim_free_own_pages(addr, count, frames);
}
#else
// dom0: a process has no frame numbers of its own to give a backend.
static void *glue_own_pages(uint32_t count, uint64_t *frames) {
    (void)count;
    (void)frames;
    errno = ENOSYS;
    return NULL;
}

static int glue_free_own_pages(void *addr, uint32_t count, const uint64_t *frames) {
    (void)addr;
    (void)count;
    (void)frames;
    errno = ENOSYS;
    return -1;
}
#endif

// ---- the frame numbers of pages we granted (kbdif.h's page-ref beside page-gref) ----
#if defined(STUBDM_PLATFORM_MINIOS)
static int glue_share_frames(xenglue_xen_t *self, void *addr, uint32_t count,
    uint64_t *frames) {
    (void)self;
    for (minios_share_t *sh = minios_shares; sh != NULL; sh = sh->next) {
        if (sh->addr == addr && sh->count == count) {
            for (uint32_t i = 0; i < count; i++) {
                frames[i] = virt_to_mfn((char *)addr + (size_t)i * XENGLUE_PAGE_SIZE);
            }
            return 0;
        }
    }
    errno = EINVAL;
    return -1;
}
#elif defined(STUBDM_GLUE_SIM)
static int glue_share_frames(xenglue_xen_t *self, void *addr, uint32_t count,
    uint64_t *frames) {
    return hostsim_share_frames(self->xgs, addr, count, frames);
}
#else
// dom0: granted pages have no frame numbers a process could name.
static int glue_share_frames(xenglue_xen_t *self, void *addr, uint32_t count,
    uint64_t *frames) {
    (void)self;
    (void)addr;
    (void)count;
    (void)frames;
    errno = ENOSYS;
    return -1;
}
#endif

// An array for `count` frame numbers (1..65536, else EINVAL).
static uint64_t *frames_alloc(mp_int_t count) {
    if (count <= 0 || count > 65536) {
        mp_raise_OSError(MP_EINVAL);
    }
    uint64_t *frames = malloc(sizeof(uint64_t) * (size_t)count);
    if (frames == NULL) {
        mp_raise_OSError(MP_ENOMEM);
    }
    errno = 0;
    return frames;
}

// A glue call that filled no frames failed: free the array, raise its errno.
static NORETURN void frames_fail(uint64_t *frames) {
    int e = errno;
    free(frames);
    mp_raise_OSError(e ? e : MP_EIO);
}

// The frame numbers as a tuple of ints; frees the array.
static mp_obj_t frames_tuple(uint64_t *frames, mp_int_t count) {
    mp_obj_t t = mp_obj_new_tuple((size_t)count, NULL);
    mp_obj_tuple_t *tt = MP_OBJ_TO_PTR(t);
    for (mp_int_t i = 0; i < count; i++) {
        tt->items[i] = mp_obj_new_int_from_ull(frames[i]);
    }
    free(frames);
    return t;
}

static mp_obj_t xen_share_frames(mp_obj_t self_in, mp_obj_t addr, mp_obj_t count_in) {
    mp_int_t count = get_int(count_in);
    uint64_t *frames = frames_alloc(count);
    if (glue_share_frames(XEN(self_in), (void *)(uintptr_t)get_u64(addr), (uint32_t)count,
        frames) < 0) {
        frames_fail(frames);
    }
    return frames_tuple(frames, count);
}
static MP_DEFINE_CONST_FUN_OBJ_3(xen_share_frames_obj, xen_share_frames);

static mp_obj_t xen_own_pages(mp_obj_t self_in, mp_obj_t count_in) {
    (void)self_in;
    mp_int_t count = get_int(count_in);
    uint64_t *frames = frames_alloc(count);
    void *p = glue_own_pages((uint32_t)count, frames);
    if (p == NULL) {
        frames_fail(frames);
    }
    mp_obj_t t = frames_tuple(frames, count);
    mp_obj_t out[3] = {
        mp_obj_new_int_from_ull((uintptr_t)p),
        t,
        mp_obj_new_memoryview(RW_BYTES, (size_t)count * XENGLUE_PAGE_SIZE, p),
    };
    return mp_obj_new_tuple(3, out);
}
static MP_DEFINE_CONST_FUN_OBJ_2(xen_own_pages_obj, xen_own_pages);

static mp_obj_t xen_free_own_pages(mp_obj_t self_in, mp_obj_t addr, mp_obj_t frames_in) {
    (void)self_in;
    size_t n;
    mp_obj_t *items;
    mp_obj_get_array(frames_in, &n, &items);
    uint64_t *frames = frames_alloc(n > 65536 ? 0 : (mp_int_t)n);
    for (size_t i = 0; i < n; i++) {
        frames[i] = get_u64(items[i]);
    }
    errno = 0;
    int r = glue_free_own_pages((void *)(uintptr_t)get_u64(addr), (uint32_t)n, frames);
    free(frames);
    return check(r);
}
static MP_DEFINE_CONST_FUN_OBJ_3(xen_free_own_pages_obj, xen_free_own_pages);

static mp_obj_t xen_share_pages(size_t n_args, const mp_obj_t *args) {
    xenglue_xen_t *self = XEN(args[0]);
    mp_int_t count = get_int(args[2]);
    if (count <= 0 || count > 65536) {
        mp_raise_OSError(MP_EINVAL);
    }
    errno = 0;
    uint32_t *refs = malloc(sizeof(uint32_t) * (size_t)count);
    if (refs == NULL) {
        mp_raise_OSError(MP_ENOMEM);
    }
    void *p = glue_share_pages(self, (uint32_t)get_int(args[1]), (int)count, refs,
        mp_obj_is_true(args[3]));
    if (p == NULL) {
        int e = errno;
        free(refs);
        mp_raise_OSError(e ? e : MP_EIO);
    }
    mp_obj_t t = mp_obj_new_tuple((size_t)count, NULL);
    mp_obj_tuple_t *tt = MP_OBJ_TO_PTR(t);
    for (mp_int_t i = 0; i < count; i++) {
        tt->items[i] = mp_obj_new_int_from_uint(refs[i]);
    }
    free(refs);
    mp_obj_t out[3] = {
        mp_obj_new_int_from_ull((uintptr_t)p),
        t,
        mp_obj_new_memoryview(RW_BYTES, (size_t)count * XENGLUE_PAGE_SIZE, p),
    };
    return mp_obj_new_tuple(3, out);
}
static MP_DEFINE_CONST_FUN_OBJ_VAR_BETWEEN(xen_share_pages_obj, 4, 4, xen_share_pages);

static mp_obj_t xen_unshare(mp_obj_t self_in, mp_obj_t addr, mp_obj_t count) {
    errno = 0;
    return check(glue_unshare(XEN(self_in), (void *)(uintptr_t)get_u64(addr),
        (uint32_t)get_int(count)));
}
static MP_DEFINE_CONST_FUN_OBJ_3(xen_unshare_obj, xen_unshare);

static const mp_rom_map_elem_t xen_locals_table[] = {
    { MP_ROM_QSTR(MP_QSTR_bind_unbound_port), MP_ROM_PTR(&xen_bind_unbound_port_obj) },
    { MP_ROM_QSTR(MP_QSTR_unbind), MP_ROM_PTR(&xen_unbind_obj) },
    { MP_ROM_QSTR(MP_QSTR_share_pages), MP_ROM_PTR(&xen_share_pages_obj) },
    { MP_ROM_QSTR(MP_QSTR_unshare), MP_ROM_PTR(&xen_unshare_obj) },
    { MP_ROM_QSTR(MP_QSTR_share_frames), MP_ROM_PTR(&xen_share_frames_obj) },
    { MP_ROM_QSTR(MP_QSTR_own_pages), MP_ROM_PTR(&xen_own_pages_obj) },
    { MP_ROM_QSTR(MP_QSTR_set_hvm_param), MP_ROM_PTR(&xen_set_hvm_param_obj) },
    { MP_ROM_QSTR(MP_QSTR_get_hvm_param), MP_ROM_PTR(&xen_get_hvm_param_obj) },
    { MP_ROM_QSTR(MP_QSTR_free_own_pages), MP_ROM_PTR(&xen_free_own_pages_obj) },
    { MP_ROM_QSTR(MP_QSTR_create_ioreq_server), MP_ROM_PTR(&xen_create_ioreq_server_obj) },
    { MP_ROM_QSTR(MP_QSTR_get_ioreq_server_info), MP_ROM_PTR(&xen_get_ioreq_server_info_obj) },
    { MP_ROM_QSTR(MP_QSTR_map_io_range), MP_ROM_PTR(&xen_map_io_range_obj) },
    { MP_ROM_QSTR(MP_QSTR_unmap_io_range), MP_ROM_PTR(&xen_unmap_io_range_obj) },
    { MP_ROM_QSTR(MP_QSTR_map_pcidev), MP_ROM_PTR(&xen_map_pcidev_obj) },
    { MP_ROM_QSTR(MP_QSTR_set_ioreq_server_state), MP_ROM_PTR(&xen_set_ioreq_server_state_obj) },
    { MP_ROM_QSTR(MP_QSTR_destroy_ioreq_server), MP_ROM_PTR(&xen_destroy_ioreq_server_obj) },
    { MP_ROM_QSTR(MP_QSTR_set_isa_irq_level), MP_ROM_PTR(&xen_set_isa_irq_level_obj) },
    { MP_ROM_QSTR(MP_QSTR_set_pci_intx_level), MP_ROM_PTR(&xen_set_pci_intx_level_obj) },
    { MP_ROM_QSTR(MP_QSTR_set_pci_link_route), MP_ROM_PTR(&xen_set_pci_link_route_obj) },
    { MP_ROM_QSTR(MP_QSTR_inject_msi), MP_ROM_PTR(&xen_inject_msi_obj) },
    { MP_ROM_QSTR(MP_QSTR_shutdown), MP_ROM_PTR(&xen_shutdown_obj) },
    { MP_ROM_QSTR(MP_QSTR_map_page), MP_ROM_PTR(&xen_map_page_obj) },
    { MP_ROM_QSTR(MP_QSTR_evtchn_fd), MP_ROM_PTR(&xen_evtchn_fd_obj) },
    { MP_ROM_QSTR(MP_QSTR_bind_interdomain), MP_ROM_PTR(&xen_bind_interdomain_obj) },
    { MP_ROM_QSTR(MP_QSTR_pending), MP_ROM_PTR(&xen_pending_obj) },
    { MP_ROM_QSTR(MP_QSTR_unmask), MP_ROM_PTR(&xen_unmask_obj) },
    { MP_ROM_QSTR(MP_QSTR_notify), MP_ROM_PTR(&xen_notify_obj) },
    { MP_ROM_QSTR(MP_QSTR_populate_physmap), MP_ROM_PTR(&xen_populate_physmap_obj) },
    { MP_ROM_QSTR(MP_QSTR_relocate_memory), MP_ROM_PTR(&xen_relocate_memory_obj) },
    { MP_ROM_QSTR(MP_QSTR_track_dirty_vram), MP_ROM_PTR(&xen_track_dirty_vram_obj) },
    { MP_ROM_QSTR(MP_QSTR_pending_nowait), MP_ROM_PTR(&xen_pending_nowait_obj) },
};
static MP_DEFINE_CONST_DICT(xen_locals, xen_locals_table);

static MP_DEFINE_CONST_OBJ_TYPE(
    xenglue_xen_type,
    MP_QSTR_Xen,
    MP_TYPE_FLAG_NONE,
    make_new, xen_make_new,
    locals_dict, &xen_locals
    );

// ---- Mapcache ------------------------------------------------------------------

typedef struct {
    mp_obj_base_t base;
    mapcache_t *mc;
    mp_obj_t xen;  // keeps the foreign-memory handle's owner alive
} xenglue_mapcache_t;

static const mp_obj_type_t xenglue_mapcache_type;

static mp_obj_t mapcache_make_new(const mp_obj_type_t *type, size_t n_args, size_t n_kw,
    const mp_obj_t *args) {
    mp_arg_check_num(n_args, n_kw, 3, 3, false);
    if (!mp_obj_is_type(args[0], &xenglue_xen_type)) {
        mp_raise_TypeError(MP_ERROR_TEXT("Mapcache needs a Xen"));
    }
    xenglue_xen_t *xen = XEN(args[0]);
    mp_int_t shift = get_int(args[1]);
    mp_int_t max_buckets = get_int(args[2]);
    if (shift < 0 || max_buckets < 0) {
        mp_raise_OSError(MP_EINVAL);
    }
    xenglue_mapcache_t *self = mp_obj_malloc(xenglue_mapcache_t, type);
    self->xen = args[0];
    errno = 0;
    self->mc = mapcache_new(xen->fmem, xen->domid, (unsigned)shift, (unsigned)max_buckets);
    if (self->mc == NULL) {
        raise_errno();
    }
    return MP_OBJ_FROM_PTR(self);
}

#define MC(o) (((xenglue_mapcache_t *)MP_OBJ_TO_PTR(o))->mc)

static mp_obj_t mapcache_add_ram_m(mp_obj_t self_in, mp_obj_t start, mp_obj_t end) {
    return check(mapcache_add_ram(MC(self_in), get_u64(start), get_u64(end)));
}
static MP_DEFINE_CONST_FUN_OBJ_3(mapcache_add_ram_obj, mapcache_add_ram_m);

static mp_obj_t mapcache_map_m(mp_obj_t self_in, mp_obj_t gpa, mp_obj_t len_in) {
    mp_int_t len = get_int(len_in);
    if (len <= 0) {
        return mp_const_none;
    }
    void *p = mapcache_map(MC(self_in), get_u64(gpa), (size_t)len, 0);
    if (p == NULL) {
        return mp_const_none;
    }
    return mp_obj_new_memoryview(RW_BYTES, (size_t)len, p);
}
static MP_DEFINE_CONST_FUN_OBJ_3(mapcache_map_obj, mapcache_map_m);

static mp_obj_t mapcache_map_locked_m(mp_obj_t self_in, mp_obj_t gpa, mp_obj_t len_in) {
    // A mapping that stays valid (across maps and invalidates) until unlock(gpa):
    // guest memory under DMA in flight.
    mp_int_t len = get_int(len_in);
    if (len <= 0) {
        return mp_const_none;
    }
    void *p = mapcache_map(MC(self_in), get_u64(gpa), (size_t)len, 1);
    if (p == NULL) {
        return mp_const_none;
    }
    return mp_obj_new_memoryview(RW_BYTES, (size_t)len, p);
}
static MP_DEFINE_CONST_FUN_OBJ_3(mapcache_map_locked_obj, mapcache_map_locked_m);

static mp_obj_t mapcache_unlock_m(mp_obj_t self_in, mp_obj_t gpa) {
    errno = 0;
    return check(mapcache_unlock(MC(self_in), get_u64(gpa)));
}
static MP_DEFINE_CONST_FUN_OBJ_2(mapcache_unlock_obj, mapcache_unlock_m);

static mp_obj_t mapcache_bucket_room_m(mp_obj_t self_in, mp_obj_t gpa) {
    return mp_obj_new_int_from_uint(mapcache_bucket_room(MC(self_in), get_u64(gpa)));
}
static MP_DEFINE_CONST_FUN_OBJ_2(mapcache_bucket_room_obj, mapcache_bucket_room_m);

static mp_obj_t mapcache_prdt_copy_m(size_t n_args, const mp_obj_t *args) {
    mp_buffer_info_t tb, bb;
    mp_get_buffer_raise(args[1], &tb, MP_BUFFER_READ);
    mp_int_t n = get_int(args[2]);
    mp_int_t skip = get_int(args[3]);
    int to_guest = mp_obj_is_true(args[5]);
    mp_get_buffer_raise(args[4], &bb, to_guest ? MP_BUFFER_READ : MP_BUFFER_WRITE);
    if (n < 0 || (size_t)n > tb.len / 16 || skip < 0) {
        mp_raise_ValueError(MP_ERROR_TEXT("prdt_copy: bad table or offset"));
    }
    uint64_t cur[2];
    mp_buffer_info_t cb = {0};
    if (n_args > 6 && args[6] != mp_const_none) {
        mp_get_buffer_raise(args[6], &cb, MP_BUFFER_RW);
        if (cb.len != sizeof cur) {
            mp_raise_ValueError(MP_ERROR_TEXT("prdt_copy: a cursor is 16 bytes"));
        }
        memcpy(cur, cb.buf, sizeof cur);  // the bytearray's bytes may be unaligned
    }
    if (bb.len == 0) {
        return mp_const_true;
    }
    int r = mapcache_prdt_copy(MC(args[0]), tb.buf, (uint32_t)n, (uint64_t)skip, bb.buf,
                               bb.len, to_guest, cb.buf != NULL ? cur : NULL);
    if (cb.buf != NULL) {
        memcpy(cb.buf, cur, sizeof cur);
    }
    return mp_obj_new_bool(r == 0);
}
static MP_DEFINE_CONST_FUN_OBJ_VAR_BETWEEN(mapcache_prdt_copy_obj, 6, 7, mapcache_prdt_copy_m);

static mp_obj_t mapcache_invalidate_m(mp_obj_t self_in) {
    mapcache_invalidate(MC(self_in));
    return mp_const_none;
}
static MP_DEFINE_CONST_FUN_OBJ_1(mapcache_invalidate_obj, mapcache_invalidate_m);

static mp_obj_t mapcache_stats_m(mp_obj_t self_in) {
    mapcache_stats_t s;
    mapcache_get_stats(MC(self_in), &s);
    mp_obj_t t[11] = {
        mp_obj_new_int_from_ull(s.hits),
        mp_obj_new_int_from_ull(s.misses),
        mp_obj_new_int_from_ull(s.maps),
        mp_obj_new_int_from_ull(s.unmaps),
        mp_obj_new_int_from_ull(s.evictions),
        mp_obj_new_int_from_ull(s.invalidations),
        mp_obj_new_int_from_ull(s.refused),
        mp_obj_new_int_from_uint(s.buckets_mapped),
        mp_obj_new_int_from_uint(s.buckets_locked),
        mp_obj_new_int_from_uint(s.max_buckets),
        mp_obj_new_int_from_uint(s.bucket_pages),
    };
    return mp_obj_new_tuple(11, t);
}
static MP_DEFINE_CONST_FUN_OBJ_1(mapcache_stats_obj, mapcache_stats_m);

static mp_obj_t mapcache_footprint_m(mp_obj_t self_in) {
    return mp_obj_new_int_from_uint(mapcache_footprint(MC(self_in)));
}
static MP_DEFINE_CONST_FUN_OBJ_1(mapcache_footprint_obj, mapcache_footprint_m);

static const mp_rom_map_elem_t mapcache_locals_table[] = {
    { MP_ROM_QSTR(MP_QSTR_add_ram), MP_ROM_PTR(&mapcache_add_ram_obj) },
    { MP_ROM_QSTR(MP_QSTR_map), MP_ROM_PTR(&mapcache_map_obj) },
    { MP_ROM_QSTR(MP_QSTR_map_locked), MP_ROM_PTR(&mapcache_map_locked_obj) },
    { MP_ROM_QSTR(MP_QSTR_unlock), MP_ROM_PTR(&mapcache_unlock_obj) },
    { MP_ROM_QSTR(MP_QSTR_bucket_room), MP_ROM_PTR(&mapcache_bucket_room_obj) },
    { MP_ROM_QSTR(MP_QSTR_prdt_copy), MP_ROM_PTR(&mapcache_prdt_copy_obj) },
    { MP_ROM_QSTR(MP_QSTR_invalidate), MP_ROM_PTR(&mapcache_invalidate_obj) },
    { MP_ROM_QSTR(MP_QSTR_stats), MP_ROM_PTR(&mapcache_stats_obj) },
    { MP_ROM_QSTR(MP_QSTR_footprint), MP_ROM_PTR(&mapcache_footprint_obj) },
};
static MP_DEFINE_CONST_DICT(mapcache_locals, mapcache_locals_table);

static MP_DEFINE_CONST_OBJ_TYPE(
    xenglue_mapcache_type,
    MP_QSTR_Mapcache,
    MP_TYPE_FLAG_NONE,
    make_new, mapcache_make_new,
    locals_dict, &mapcache_locals
    );

// ---- Xs: a xenstore connection -------------------------------------------------

typedef struct {
    mp_obj_base_t base;
    struct xs_handle *h;
} xenglue_xs_t;

static const mp_obj_type_t xenglue_xs_type;

static mp_obj_t xs_make_new(const mp_obj_type_t *type, size_t n_args, size_t n_kw,
    const mp_obj_t *args) {
    mp_arg_check_num(n_args, n_kw, 0, 0, false);
    errno = 0;
    struct xs_handle *h = xs_open(0);
    if (h == NULL) {
        raise_errno();
    }
    xenglue_xs_t *self = mp_obj_malloc(xenglue_xs_t, type);
    self->h = h;
    return MP_OBJ_FROM_PTR(self);
}

static struct xs_handle *xs_of(mp_obj_t o) {
    xenglue_xs_t *self = MP_OBJ_TO_PTR(o);
    if (self->h == NULL) {
        mp_raise_OSError(MP_EBADF);
    }
    return self->h;
}

static xs_transaction_t tx_of(mp_obj_t o) {
    return (xs_transaction_t)mp_obj_int_get_truncated(o);
}

static mp_obj_t xs_check_bool(bool ok) {
    if (!ok) {
        raise_errno();
    }
    return mp_const_none;
}

static mp_obj_t xs_read_m(mp_obj_t self_in, mp_obj_t tx, mp_obj_t path) {
    unsigned int len = 0;
    errno = 0;
    void *p = xs_read(xs_of(self_in), tx_of(tx), mp_obj_str_get_str(path), &len);
    if (p == NULL) {
        raise_errno();
    }
    mp_obj_t b = mp_obj_new_bytes(p, len);
    free(p);
    return b;
}
static MP_DEFINE_CONST_FUN_OBJ_3(xs_read_obj, xs_read_m);

static mp_obj_t xs_write_m(size_t n_args, const mp_obj_t *args) {
    mp_buffer_info_t bi;
    mp_get_buffer_raise(args[3], &bi, MP_BUFFER_READ);
    errno = 0;
    return xs_check_bool(xs_write(xs_of(args[0]), tx_of(args[1]), mp_obj_str_get_str(args[2]),
        bi.buf, (unsigned int)bi.len));
}
static MP_DEFINE_CONST_FUN_OBJ_VAR_BETWEEN(xs_write_obj, 4, 4, xs_write_m);

static mp_obj_t xs_mkdir_m(mp_obj_t self_in, mp_obj_t tx, mp_obj_t path) {
    errno = 0;
    return xs_check_bool(xs_mkdir(xs_of(self_in), tx_of(tx), mp_obj_str_get_str(path)));
}
static MP_DEFINE_CONST_FUN_OBJ_3(xs_mkdir_obj, xs_mkdir_m);

static mp_obj_t xs_rm_m(mp_obj_t self_in, mp_obj_t tx, mp_obj_t path) {
    errno = 0;
    return xs_check_bool(xs_rm(xs_of(self_in), tx_of(tx), mp_obj_str_get_str(path)));
}
static MP_DEFINE_CONST_FUN_OBJ_3(xs_rm_obj, xs_rm_m);

static mp_obj_t xs_directory_m(mp_obj_t self_in, mp_obj_t tx, mp_obj_t path) {
    unsigned int num = 0;
    errno = 0;
    char **v = xs_directory(xs_of(self_in), tx_of(tx), mp_obj_str_get_str(path), &num);
    if (v == NULL) {
        raise_errno();
    }
    mp_obj_t list = mp_obj_new_list(0, NULL);
    for (unsigned int i = 0; i < num; i++) {
        mp_obj_list_append(list, mp_obj_new_str(v[i], strlen(v[i])));
    }
    free(v);
    return list;
}
static MP_DEFINE_CONST_FUN_OBJ_3(xs_directory_obj, xs_directory_m);

static mp_obj_t xs_get_perms_m(mp_obj_t self_in, mp_obj_t tx, mp_obj_t path) {
    unsigned int num = 0;
    errno = 0;
    struct xs_permissions *p = xs_get_permissions(xs_of(self_in), tx_of(tx),
        mp_obj_str_get_str(path), &num);
    if (p == NULL) {
        raise_errno();
    }
    mp_obj_t list = mp_obj_new_list(0, NULL);
    for (unsigned int i = 0; i < num; i++) {
        mp_obj_t t[2] = { mp_obj_new_int_from_uint(p[i].id), mp_obj_new_int_from_uint(p[i].perms) };
        mp_obj_list_append(list, mp_obj_new_tuple(2, t));
    }
    free(p);
    return list;
}
static MP_DEFINE_CONST_FUN_OBJ_3(xs_get_perms_obj, xs_get_perms_m);

static mp_obj_t xs_set_perms_m(size_t n_args, const mp_obj_t *args) {
    size_t n;
    mp_obj_t *items;
    mp_obj_get_array(args[3], &n, &items);
    if (n == 0 || n > 256) {
        mp_raise_OSError(MP_EINVAL);
    }
    struct xs_permissions *p = malloc(sizeof(*p) * n);
    if (p == NULL) {
        mp_raise_OSError(MP_ENOMEM);
    }
    for (size_t i = 0; i < n; i++) {
        size_t k;
        mp_obj_t *pair;
        mp_obj_get_array(items[i], &k, &pair);
        if (k != 2) {
            free(p);
            mp_raise_ValueError(MP_ERROR_TEXT("perms: (domid, bits) pairs"));
        }
        p[i].id = (unsigned int)get_int(pair[0]);
        p[i].perms = (unsigned int)get_int(pair[1]);
    }
    errno = 0;
    bool ok = xs_set_permissions(xs_of(args[0]), tx_of(args[1]), mp_obj_str_get_str(args[2]),
        p, (unsigned int)n);
    int e = errno;
    free(p);
    errno = e;
    return xs_check_bool(ok);
}
static MP_DEFINE_CONST_FUN_OBJ_VAR_BETWEEN(xs_set_perms_obj, 4, 4, xs_set_perms_m);

static mp_obj_t xs_watch_m(mp_obj_t self_in, mp_obj_t path, mp_obj_t token) {
    errno = 0;
    return xs_check_bool(xs_watch(xs_of(self_in), mp_obj_str_get_str(path),
        mp_obj_str_get_str(token)));
}
static MP_DEFINE_CONST_FUN_OBJ_3(xs_watch_obj, xs_watch_m);

static mp_obj_t xs_unwatch_m(mp_obj_t self_in, mp_obj_t path, mp_obj_t token) {
    errno = 0;
    return xs_check_bool(xs_unwatch(xs_of(self_in), mp_obj_str_get_str(path),
        mp_obj_str_get_str(token)));
}
static MP_DEFINE_CONST_FUN_OBJ_3(xs_unwatch_obj, xs_unwatch_m);

static mp_obj_t xs_fileno_m(mp_obj_t self_in) {
    return check(xs_fileno(xs_of(self_in)));
}
static MP_DEFINE_CONST_FUN_OBJ_1(xs_fileno_obj, xs_fileno_m);

static mp_obj_t xs_check_watch_m(mp_obj_t self_in) {
    errno = 0;
    char **v = xs_check_watch(xs_of(self_in));
    if (v == NULL) {
        if (errno == EAGAIN) {
            return mp_const_none;
        }
        raise_errno();
    }
    mp_obj_t t[2] = {
        mp_obj_new_str(v[XS_WATCH_PATH], strlen(v[XS_WATCH_PATH])),
        mp_obj_new_str(v[XS_WATCH_TOKEN], strlen(v[XS_WATCH_TOKEN])),
    };
    free(v);
    return mp_obj_new_tuple(2, t);
}
static MP_DEFINE_CONST_FUN_OBJ_1(xs_check_watch_obj, xs_check_watch_m);

static mp_obj_t xs_transaction_start_m(mp_obj_t self_in) {
    errno = 0;
    xs_transaction_t t = xs_transaction_start(xs_of(self_in));
    if (t == XBT_NULL) {
        raise_errno();
    }
    return mp_obj_new_int_from_uint(t);
}
static MP_DEFINE_CONST_FUN_OBJ_1(xs_transaction_start_obj, xs_transaction_start_m);

static mp_obj_t xs_transaction_end_m(mp_obj_t self_in, mp_obj_t tx, mp_obj_t abort_in) {
    errno = 0;
    if (xs_transaction_end(xs_of(self_in), tx_of(tx), mp_obj_is_true(abort_in))) {
        return mp_const_true;
    }
    if (errno == EAGAIN) {
        return mp_const_false;
    }
    raise_errno();
}
static MP_DEFINE_CONST_FUN_OBJ_3(xs_transaction_end_obj, xs_transaction_end_m);

static mp_obj_t xs_domain_path_m(mp_obj_t self_in, mp_obj_t domid) {
    errno = 0;
    char *p = xs_get_domain_path(xs_of(self_in), (unsigned int)get_int(domid));
    if (p == NULL) {
        raise_errno();
    }
    mp_obj_t s = mp_obj_new_str(p, strlen(p));
    free(p);
    return s;
}
static MP_DEFINE_CONST_FUN_OBJ_2(xs_domain_path_obj, xs_domain_path_m);

static mp_obj_t xs_close_m(mp_obj_t self_in) {
    xenglue_xs_t *self = MP_OBJ_TO_PTR(self_in);
    if (self->h != NULL) {
        xs_close(self->h);
        self->h = NULL;
    }
    return mp_const_none;
}
static MP_DEFINE_CONST_FUN_OBJ_1(xs_close_obj, xs_close_m);

static const mp_rom_map_elem_t xs_locals_table[] = {
    { MP_ROM_QSTR(MP_QSTR_read), MP_ROM_PTR(&xs_read_obj) },
    { MP_ROM_QSTR(MP_QSTR_write), MP_ROM_PTR(&xs_write_obj) },
    { MP_ROM_QSTR(MP_QSTR_mkdir), MP_ROM_PTR(&xs_mkdir_obj) },
    { MP_ROM_QSTR(MP_QSTR_rm), MP_ROM_PTR(&xs_rm_obj) },
    { MP_ROM_QSTR(MP_QSTR_directory), MP_ROM_PTR(&xs_directory_obj) },
    { MP_ROM_QSTR(MP_QSTR_get_perms), MP_ROM_PTR(&xs_get_perms_obj) },
    { MP_ROM_QSTR(MP_QSTR_set_perms), MP_ROM_PTR(&xs_set_perms_obj) },
    { MP_ROM_QSTR(MP_QSTR_watch), MP_ROM_PTR(&xs_watch_obj) },
    { MP_ROM_QSTR(MP_QSTR_unwatch), MP_ROM_PTR(&xs_unwatch_obj) },
    { MP_ROM_QSTR(MP_QSTR_fileno), MP_ROM_PTR(&xs_fileno_obj) },
    { MP_ROM_QSTR(MP_QSTR_check_watch), MP_ROM_PTR(&xs_check_watch_obj) },
    { MP_ROM_QSTR(MP_QSTR_transaction_start), MP_ROM_PTR(&xs_transaction_start_obj) },
    { MP_ROM_QSTR(MP_QSTR_transaction_end), MP_ROM_PTR(&xs_transaction_end_obj) },
    { MP_ROM_QSTR(MP_QSTR_domain_path), MP_ROM_PTR(&xs_domain_path_obj) },
    { MP_ROM_QSTR(MP_QSTR_close), MP_ROM_PTR(&xs_close_obj) },
};
static MP_DEFINE_CONST_DICT(xs_locals, xs_locals_table);

static MP_DEFINE_CONST_OBJ_TYPE(
    xenglue_xs_type,
    MP_QSTR_Xs,
    MP_TYPE_FLAG_NONE,
    make_new, xs_make_new,
    locals_dict, &xs_locals
    );

// ---- module functions --------------------------------------------------------------

static mp_obj_t xenglue_barrier(void) {
    // A full fence: the ioreq handshake's read and write barriers (DESIGN.md 5).
    __sync_synchronize();
    return mp_const_none;
}
static MP_DEFINE_CONST_FUN_OBJ_0(xenglue_barrier_obj, xenglue_barrier);

static mp_obj_t xenglue_atomic_add32(mp_obj_t buf_in, mp_obj_t n) {
    // Xen renormalises the buffered ring's pointers with a 64-bit cmpxchg, so
    // the consumer must advance read_pointer atomically, never store it.
    mp_buffer_info_t bi;
    mp_get_buffer_raise(buf_in, &bi, MP_BUFFER_WRITE);
    if (bi.len < 4 || ((uintptr_t)bi.buf & 3)) {
        mp_raise_ValueError(MP_ERROR_TEXT("need an aligned u32"));
    }
    __atomic_fetch_add((uint32_t *)bi.buf, (uint32_t)mp_obj_int_get_truncated(n), __ATOMIC_SEQ_CST);
    return mp_const_none;
}
static MP_DEFINE_CONST_FUN_OBJ_2(xenglue_atomic_add32_obj, xenglue_atomic_add32);

static mp_obj_t xenglue_inet_sum(mp_obj_t buf_in, mp_obj_t start_in, mp_obj_t end_in) {
    mp_buffer_info_t bi;
    mp_get_buffer_raise(buf_in, &bi, MP_BUFFER_READ);
    mp_int_t start = get_int(start_in);
    mp_int_t end = get_int(end_in);
    if (start < 0 || end < start || (size_t)end > bi.len) {
        mp_raise_ValueError(MP_ERROR_TEXT("inet_sum: range outside the buffer"));
    }
    return MP_OBJ_NEW_SMALL_INT(stubdm_inet_sum((const uint8_t *)bi.buf + start,
                                                (size_t)(end - start)));
}
static MP_DEFINE_CONST_FUN_OBJ_3(xenglue_inet_sum_obj, xenglue_inet_sum);

static mp_obj_t xenglue_prdt_total(mp_obj_t prdt_in, mp_obj_t n_in) {
    mp_buffer_info_t tb;
    mp_get_buffer_raise(prdt_in, &tb, MP_BUFFER_READ);
    mp_int_t n = get_int(n_in);
    if (n < 0 || (size_t)n > tb.len / 16) {
        mp_raise_ValueError(MP_ERROR_TEXT("prdt_total: table shorter than its entries"));
    }
    return mp_obj_new_int_from_ll(mapcache_prdt_total(tb.buf, (uint32_t)n));
}
static MP_DEFINE_CONST_FUN_OBJ_2(xenglue_prdt_total_obj, xenglue_prdt_total);

static mp_obj_t xenglue_footprint(mp_obj_t shift_in, mp_obj_t max_in) {
    // Heap bytes of a cache of this geometry (no handle needed).
    mp_int_t shift = get_int(shift_in);
    mp_int_t max_buckets = get_int(max_in);
    if (shift < 0 || max_buckets < 0) {
        mp_raise_OSError(MP_EINVAL);
    }
    errno = 0;
    mapcache_t *mc = mapcache_new(NULL, 0, (unsigned)shift, (unsigned)max_buckets);
    if (mc == NULL) {
        raise_errno();
    }
    size_t n = mapcache_footprint(mc);
    mapcache_free(mc);
    return mp_obj_new_int_from_uint(n);
}
static MP_DEFINE_CONST_FUN_OBJ_2(xenglue_footprint_obj, xenglue_footprint);

static const mp_rom_map_elem_t xenglue_globals_table[] = {
    { MP_ROM_QSTR(MP_QSTR___name__), MP_ROM_QSTR(MP_QSTR__xenglue) },
    { MP_ROM_QSTR(MP_QSTR_Xen), MP_ROM_PTR(&xenglue_xen_type) },
    { MP_ROM_QSTR(MP_QSTR_Mapcache), MP_ROM_PTR(&xenglue_mapcache_type) },
    { MP_ROM_QSTR(MP_QSTR_Xs), MP_ROM_PTR(&xenglue_xs_type) },
    { MP_ROM_QSTR(MP_QSTR_barrier), MP_ROM_PTR(&xenglue_barrier_obj) },
    { MP_ROM_QSTR(MP_QSTR_atomic_add32), MP_ROM_PTR(&xenglue_atomic_add32_obj) },
    { MP_ROM_QSTR(MP_QSTR_inet_sum), MP_ROM_PTR(&xenglue_inet_sum_obj) },
    { MP_ROM_QSTR(MP_QSTR_prdt_total), MP_ROM_PTR(&xenglue_prdt_total_obj) },
    { MP_ROM_QSTR(MP_QSTR_footprint), MP_ROM_PTR(&xenglue_footprint_obj) },
    { MP_ROM_QSTR(MP_QSTR_ENOSYS), MP_ROM_INT(ENOSYS) },
    { MP_ROM_QSTR(MP_QSTR_EINVAL), MP_ROM_INT(EINVAL) },
    { MP_ROM_QSTR(MP_QSTR_EFAULT), MP_ROM_INT(EFAULT) },
    { MP_ROM_QSTR(MP_QSTR_ENOMEM), MP_ROM_INT(ENOMEM) },
    { MP_ROM_QSTR(MP_QSTR_PAGE_SHIFT), MP_ROM_INT(MAPCACHE_PAGE_SHIFT) },
    { MP_ROM_QSTR(MP_QSTR_MIN_BUCKET_SHIFT), MP_ROM_INT(MAPCACHE_MIN_BUCKET_SHIFT) },
    { MP_ROM_QSTR(MP_QSTR_MAX_BUCKET_SHIFT), MP_ROM_INT(MAPCACHE_MAX_BUCKET_SHIFT) },
    { MP_ROM_QSTR(MP_QSTR_MAX_RAM_RANGES), MP_ROM_INT(MAPCACHE_MAX_RAM_RANGES) },
};
static MP_DEFINE_CONST_DICT(xenglue_globals, xenglue_globals_table);

const mp_obj_module_t xenglue_user_cmodule = {
    .base = { &mp_type_module },
    .globals = (mp_obj_dict_t *)&xenglue_globals,
};

MP_REGISTER_MODULE(MP_QSTR__xenglue, xenglue_user_cmodule);
