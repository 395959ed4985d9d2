"""Build the device model's C glue as a cffi module (CPython side).

The glue is Xen's user-library API (xendevicemodel, xenforeignmemory,
xenevtchn, xengntshr), declared from Debian's libxen-dev headers, plus the
mapcache core. It is linked with one of two implementations of that API:
  sim: host_sim's (host_sim/libsim), for tests and development on Linux;
  xen: Xen's own libraries, for a device model in dom0 under real Xen.
xenstore is Debian's libxenstore in both (it honours XENSTORED_PATH, which
host_sim points at the device model's domain's socket).
The two are separate modules, so both can be built side by side: sim is
stubdm._xenglue, xen is stubdm._xenglue_xen (STUBDM_GLUE=xen picks it at run
time, stubdm/glue_cffi.py).
build("sim") also builds host_sim's own side of the event channels' shared
memory (host_sim/libsim/hostsim_evtchn_sim.c) as host_sim._simevtchn.
Run by SConstruct (`scons glue`, `scons glue-xen`); usable alone:
python3 build/glue_build.py [sim|xen]
"""
import os
import sys

import cffi

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODULES = {"sim": "stubdm._xenglue", "xen": "stubdm._xenglue_xen"}

CDEF = """
typedef int... domid_t;
typedef int... ioservid_t;
typedef int... evtchn_port_t;
typedef unsigned long... xen_pfn_t;
typedef int xenevtchn_port_or_error_t;
typedef struct xendevicemodel_handle xendevicemodel_handle;
typedef struct xenforeignmemory_handle xenforeignmemory_handle;
typedef struct xenevtchn_handle xenevtchn_handle;
struct xentoollog_logger;

xendevicemodel_handle *xendevicemodel_open(struct xentoollog_logger *logger,
                                           unsigned int open_flags);
int xendevicemodel_close(xendevicemodel_handle *dmod);
int xendevicemodel_create_ioreq_server(xendevicemodel_handle *dmod, domid_t domid,
                                       int handle_bufioreq, ioservid_t *id);
int xendevicemodel_get_ioreq_server_info(xendevicemodel_handle *dmod, domid_t domid,
    ioservid_t id, xen_pfn_t *ioreq_gfn, xen_pfn_t *bufioreq_gfn, evtchn_port_t *bufioreq_port);
int xendevicemodel_map_io_range_to_ioreq_server(xendevicemodel_handle *dmod, domid_t domid,
    ioservid_t id, int is_mmio, uint64_t start, uint64_t end);
int xendevicemodel_unmap_io_range_from_ioreq_server(xendevicemodel_handle *dmod,
    domid_t domid, ioservid_t id, int is_mmio, uint64_t start, uint64_t end);
int xendevicemodel_map_pcidev_to_ioreq_server(xendevicemodel_handle *dmod, domid_t domid,
    ioservid_t id, uint16_t segment, uint8_t bus, uint8_t device, uint8_t function);
int xendevicemodel_unmap_pcidev_from_ioreq_server(xendevicemodel_handle *dmod, domid_t domid,
    ioservid_t id, uint16_t segment, uint8_t bus, uint8_t device, uint8_t function);
int xendevicemodel_destroy_ioreq_server(xendevicemodel_handle *dmod, domid_t domid,
    ioservid_t id);
int xendevicemodel_set_ioreq_server_state(xendevicemodel_handle *dmod, domid_t domid,
    ioservid_t id, int enabled);
int xendevicemodel_set_pci_intx_level(xendevicemodel_handle *dmod, domid_t domid,
    uint16_t segment, uint8_t bus, uint8_t device, uint8_t intx, unsigned int level);
int xendevicemodel_set_isa_irq_level(xendevicemodel_handle *dmod, domid_t domid, uint8_t irq,
    unsigned int level);
int xendevicemodel_set_pci_link_route(xendevicemodel_handle *dmod, domid_t domid,
    uint8_t link, uint8_t irq);
int xendevicemodel_inject_msi(xendevicemodel_handle *dmod, domid_t domid, uint64_t msi_addr,
    uint32_t msi_data);
int xendevicemodel_modified_memory(xendevicemodel_handle *dmod, domid_t domid,
    uint64_t first_pfn, uint32_t nr);
int xendevicemodel_shutdown(xendevicemodel_handle *dmod, domid_t domid, unsigned int reason);
int xendevicemodel_relocate_memory(xendevicemodel_handle *dmod, domid_t domid, uint32_t size,
    uint64_t src_gfn, uint64_t dst_gfn);
int xendevicemodel_track_dirty_vram(xendevicemodel_handle *dmod, domid_t domid,
    uint64_t first_pfn, uint32_t nr, unsigned long *dirty_bitmap);
typedef struct xc_interface_core xc_interface;
xc_interface *xc_interface_open(struct xentoollog_logger *logger,
    struct xentoollog_logger *dombuild_logger, unsigned open_flags);
int xc_domain_populate_physmap_exact(xc_interface *xch, uint32_t domid,
    unsigned long nr_extents, unsigned int extent_order, unsigned int mem_flags,
    xen_pfn_t *extent_start);
int xc_hvm_param_set(xc_interface *handle, uint32_t dom, uint32_t param, uint64_t value);
int xc_hvm_param_get(xc_interface *handle, uint32_t dom, uint32_t param, uint64_t *value);

xenforeignmemory_handle *xenforeignmemory_open(struct xentoollog_logger *logger,
                                               unsigned int open_flags);
int xenforeignmemory_close(xenforeignmemory_handle *fmem);
void *xenforeignmemory_map(xenforeignmemory_handle *fmem, uint32_t dom, int prot,
                           size_t pages, const xen_pfn_t arr[], int err[]);
int xenforeignmemory_unmap(xenforeignmemory_handle *fmem, void *addr, size_t pages);

xenevtchn_handle *xenevtchn_open(struct xentoollog_logger *logger, unsigned int open_flags);
int xenevtchn_close(xenevtchn_handle *xce);
int xenevtchn_fd(xenevtchn_handle *xce);
int xenevtchn_notify(xenevtchn_handle *xce, evtchn_port_t port);
xenevtchn_port_or_error_t xenevtchn_bind_interdomain(xenevtchn_handle *xce, uint32_t domid,
                                                     evtchn_port_t remote_port);
int xenevtchn_unbind(xenevtchn_handle *xce, evtchn_port_t port);
xenevtchn_port_or_error_t xenevtchn_pending(xenevtchn_handle *xce);
int xenevtchn_unmask(xenevtchn_handle *xce, evtchn_port_t port);
xenevtchn_port_or_error_t xenevtchn_bind_unbound_port(xenevtchn_handle *xce, uint32_t domid);

typedef struct xengntdev_handle xengntshr_handle;
xengntshr_handle *xengntshr_open(struct xentoollog_logger *logger, unsigned int open_flags);
int xengntshr_close(xengntshr_handle *xgs);
void *xengntshr_share_pages(xengntshr_handle *xgs, uint32_t domid, int count, uint32_t *refs,
                            int writable);
int xengntshr_unshare(xengntshr_handle *xgs, void *start_address, uint32_t count);

struct xs_handle;
typedef uint32_t xs_transaction_t;
struct xs_permissions { unsigned int id; unsigned int perms; };
struct xs_handle *xs_open(unsigned long flags);
void xs_close(struct xs_handle *xsh);
char **xs_directory(struct xs_handle *h, xs_transaction_t t, const char *path,
                    unsigned int *num);
void *xs_read(struct xs_handle *h, xs_transaction_t t, const char *path, unsigned int *len);
bool xs_write(struct xs_handle *h, xs_transaction_t t, const char *path, const void *data,
              unsigned int len);
bool xs_mkdir(struct xs_handle *h, xs_transaction_t t, const char *path);
bool xs_rm(struct xs_handle *h, xs_transaction_t t, const char *path);
struct xs_permissions *xs_get_permissions(struct xs_handle *h, xs_transaction_t t,
                                          const char *path, unsigned int *num);
bool xs_set_permissions(struct xs_handle *h, xs_transaction_t t, const char *path,
                        struct xs_permissions *perms, unsigned int num_perms);
bool xs_watch(struct xs_handle *h, const char *path, const char *token);
bool xs_unwatch(struct xs_handle *h, const char *path, const char *token);
int xs_fileno(struct xs_handle *h);
char **xs_check_watch(struct xs_handle *h);
xs_transaction_t xs_transaction_start(struct xs_handle *h);
bool xs_transaction_end(struct xs_handle *h, xs_transaction_t t, bool abort);
char *xs_get_domain_path(struct xs_handle *h, unsigned int domid);
void free(void *);


#define PROT_READ ...
#define PROT_WRITE ...
void stubdm_barrier(void);
void stubdm_atomic_add32(void *p, uint32_t v);
uint32_t stubdm_inet_sum(const uint8_t *p, size_t n);
int stubdm_evtchn_pending_nowait(xenevtchn_handle *xce);
void *stubdm_own_pages(uint32_t count, uint64_t *frames);
int stubdm_free_own_pages(void *addr, uint32_t count, const uint64_t *frames);
int stubdm_share_frames(xengntshr_handle *xgs, void *addr, uint32_t count, uint64_t *frames);
"""



def mapcache_cdef():
    """The mapcache's declarations for cffi, read from its own header.

    cffi's cdef takes no preprocessor lines and no comments; mapcache.h keeps
    its declarations plain so that dropping those is enough.
    """
    out = []
    with open(os.path.join(ROOT, "stubdm", "mapcache", "mapcache.h")) as f:
        for line in f:
            line = line.split("//")[0].rstrip()
            if line and not line.lstrip().startswith("#"):
                out.append(line)
    return "\n".join(out) + "\n"


SOURCE = """
#include <sys/mman.h>
#include <xenctrl.h>
#include <xendevicemodel.h>
#include <xenforeignmemory.h>
#include <xenevtchn.h>
#include <xengnttab.h>
#include <xenstore.h>
#include "mapcache.h"
#include "inet_sum.h"
#include "evtchn_nowait.h"
// A full fence: the ioreq handshake's read and write barriers (DESIGN.md 5).
static void stubdm_barrier(void) { __sync_synchronize(); }
// Xen renormalises the buffered ring's pointers with a 64-bit cmpxchg, so
// the consumer must advance read_pointer atomically, never store it.
static void stubdm_atomic_add32(void *p, uint32_t v) { __atomic_fetch_add((uint32_t *)p, v, __ATOMIC_SEQ_CST); }
// Pages of our own memory by frame number (fbif.h's page-ref): host_sim's
// call; in dom0 (Xen's libraries) a process has no frame numbers of its own.
#include <errno.h>
#ifdef STUBDM_GLUE_SIM
#include "hostsim_internal.h"
static void *stubdm_own_pages(uint32_t count, uint64_t *frames) {
    return hostsim_own_pages(count, frames);
}
static int stubdm_free_own_pages(void *addr, uint32_t count, const uint64_t *frames) {
    return hostsim_free_own_pages(addr, count, frames);
}
// The frames of granted pages (kbdif.h's page-ref beside page-gref).
static int stubdm_share_frames(xengntshr_handle *xgs, void *addr, uint32_t count,
                               uint64_t *frames) {
    return hostsim_share_frames(xgs, addr, count, frames);
}
#else
static void *stubdm_own_pages(uint32_t count, uint64_t *frames) {
    (void)count; (void)frames; errno = ENOSYS; return NULL;
}
static int stubdm_free_own_pages(void *addr, uint32_t count, const uint64_t *frames) {
    (void)addr; (void)count; (void)frames; errno = ENOSYS; return -1;
}
static int stubdm_share_frames(xengntshr_handle *xgs, void *addr, uint32_t count,
                               uint64_t *frames) {
    (void)xgs; (void)addr; (void)count; (void)frames; errno = ENOSYS; return -1;
}
#endif
"""


def make_ffi(variant):
    ffi = cffi.FFI()
    ffi.cdef(CDEF + mapcache_cdef())
    kwargs = {
        "extra_compile_args": ["-O2", "-Wall"],
        "sources": [os.path.join(ROOT, "stubdm", "mapcache", "mapcache.c")],
        "include_dirs": [os.path.join(ROOT, "stubdm", "mapcache")],
        "libraries": ["xenstore"],
    }
    if variant == "sim":
        kwargs["sources"].append(os.path.join(ROOT, "host_sim", "libsim", "hostsim_libs.c"))
        # libxenctrl's populate call and the VRAM dm_ops (the VGA's video RAM)
        kwargs["sources"].append(os.path.join(ROOT, "host_sim", "libsim", "hostsim_xenlibs.c"))
        kwargs["include_dirs"].append(os.path.join(ROOT, "host_sim", "libsim"))
        kwargs["define_macros"] = [("STUBDM_GLUE_SIM", "1")]
    elif variant == "xen":
        kwargs["libraries"] += ["xendevicemodel", "xenforeignmemory", "xenevtchn", "xengnttab",
                                "xenctrl"]
    else:
        raise SystemExit("variant must be sim or xen, not " + repr(variant))
    ffi.set_source(MODULES[variant], SOURCE, **kwargs)
    return ffi


SIM_MODULE = "host_sim._simevtchn"
SIM_CDEF = """
typedef struct {
    uint8_t *shm;
    int pipe_fd;
    int kick_fd;
    uint32_t prod;
    uint32_t overflows;
    uint64_t raised_ns;
    uint64_t hop_n, hop_to_dm_ns, hop_in_dm_ns, hop_back_ns;
    uint32_t spin_ns;
} hs_sim_evtchn_t;
int hs_sim_raise(hs_sim_evtchn_t *h, uint32_t port);
int hs_sim_redeliver(hs_sim_evtchn_t *h, uint32_t port);
void hs_sim_reset(hs_sim_evtchn_t *h, uint32_t port);
int hs_sim_take(hs_sim_evtchn_t *h, uint32_t *out, int max);
struct pollfd { int fd; short events; short revents; };
int hs_sim_wait_answer(hs_sim_evtchn_t *h, uint32_t port, const uint8_t *state,
                       struct pollfd *fds, int nfds, int timeout_ms, uint32_t *out, int max,
                       int *nout);
#define POLLIN ...
#define HS_SIM_UNMASKED ...
#define HS_EVTCHN_SHM_SIZE ...
#define HS_EVTCHN_PORTS ...
#define HS_EVTCHN_OFF_DM_SPIN ...
"""


def make_sim_ffi():
    """host_sim's side of the event channels (host_sim runs on CPython only)."""
    libsim = os.path.join(ROOT, "host_sim", "libsim")
    ffi = cffi.FFI()
    ffi.cdef(SIM_CDEF)
    ffi.set_source(SIM_MODULE, "#include <poll.h>\n#include \"hostsim_evtchn_sim.h\"\n"
                   "#include \"hostsim_proto.h\"\n",
                   sources=[os.path.join(libsim, "hostsim_evtchn_sim.c")],
                   include_dirs=[libsim], extra_compile_args=["-O2", "-Wall"])
    return ffi


def _compile(ffi, tmpdir, package):
    os.makedirs(tmpdir, exist_ok=True)
    so = ffi.compile(tmpdir=tmpdir, verbose=False)
    dest = os.path.join(ROOT, package, os.path.basename(so))
    os.replace(so, dest)
    return dest


def build(variant="sim", tmpdir=None):
    tmpdir = tmpdir or os.path.join(ROOT, "build", "out", "glue-" + variant)
    dest = _compile(make_ffi(variant), tmpdir, "stubdm")
    if variant == "sim":
        _compile(make_sim_ffi(), tmpdir + "-host_sim", "host_sim")
    return dest


if __name__ == "__main__":
    print(build(sys.argv[1] if len(sys.argv) > 1 else "sim"))
