# The device model's side of the hypervisor boundary: Xen's user-library API
# (xendevicemodel, xenforeignmemory, xenevtchn) through the C glue. The same
# glue runs against Xen's libraries (dom0), MiniOS's (stub domain) and
# host_sim's (tests); this module does not know which.
import errno as _errno

from stubdm import abi

try:
    from stubdm._xenglue import ffi, lib
except ImportError:  # MicroPython: the same names come from the user C module
    ffi = None
    lib = None


class HypervisorError(Exception):
    def __init__(self, what, err):
        super().__init__(what + ": " + _errno.errorcode.get(err, str(err)))
        self.errno = err


def _check(what, r):
    if r < 0:
        raise HypervisorError(what, ffi.errno if ffi is not None else 0)
    return r


class Hypervisor:
    """Handles on the hypervisor for one guest domain."""

    def __init__(self, domid):
        if lib is None:
            raise HypervisorError("glue module stubdm._xenglue not built (run scons)", 0)
        self.domid = domid
        self.dmod = lib.xendevicemodel_open(ffi.NULL, 0)
        if self.dmod == ffi.NULL:
            raise HypervisorError("xendevicemodel_open", ffi.errno)
        self.fmem = lib.xenforeignmemory_open(ffi.NULL, 0)
        if self.fmem == ffi.NULL:
            raise HypervisorError("xenforeignmemory_open", ffi.errno)
        self.xce = lib.xenevtchn_open(ffi.NULL, 0)
        if self.xce == ffi.NULL:
            raise HypervisorError("xenevtchn_open", ffi.errno)
        self._idbuf = ffi.new("ioservid_t *")
        self._pages = []

    # ---- ioreq server ----
    def create_ioreq_server(self, bufioreq=abi.HVM_IOREQSRV_BUFIOREQ_ATOMIC):
        _check(
            "create_ioreq_server",
            lib.xendevicemodel_create_ioreq_server(self.dmod, self.domid, bufioreq, self._idbuf),
        )
        return self._idbuf[0]

    def ioreq_server_info(self, sid):
        g = ffi.new("xen_pfn_t[2]")
        port = ffi.new("evtchn_port_t *")
        _check(
            "get_ioreq_server_info",
            lib.xendevicemodel_get_ioreq_server_info(self.dmod, self.domid, sid, g, g + 1, port),
        )
        return g[0], g[1], port[0]

    def map_io_range(self, sid, is_mmio, start, end):
        _check(
            "map_io_range",
            lib.xendevicemodel_map_io_range_to_ioreq_server(
                self.dmod, self.domid, sid, is_mmio, start, end
            ),
        )

    def unmap_io_range(self, sid, is_mmio, start, end):
        _check(
            "unmap_io_range",
            lib.xendevicemodel_unmap_io_range_from_ioreq_server(
                self.dmod, self.domid, sid, is_mmio, start, end
            ),
        )

    def map_pcidev(self, sid, seg, bus, dev, fn):
        _check(
            "map_pcidev",
            lib.xendevicemodel_map_pcidev_to_ioreq_server(
                self.dmod, self.domid, sid, seg, bus, dev, fn
            ),
        )

    def set_ioreq_server_state(self, sid, enabled):
        _check(
            "set_ioreq_server_state",
            lib.xendevicemodel_set_ioreq_server_state(self.dmod, self.domid, sid, enabled),
        )

    def destroy_ioreq_server(self, sid):
        _check(
            "destroy_ioreq_server",
            lib.xendevicemodel_destroy_ioreq_server(self.dmod, self.domid, sid),
        )

    # ---- interrupts and the domain ----
    def set_isa_irq_level(self, irq, level):
        _check(
            "set_isa_irq_level",
            lib.xendevicemodel_set_isa_irq_level(self.dmod, self.domid, irq, level),
        )

    def set_pci_intx_level(self, seg, bus, dev, intx, level):
        _check(
            "set_pci_intx_level",
            lib.xendevicemodel_set_pci_intx_level(
                self.dmod, self.domid, seg, bus, dev, intx, level
            ),
        )

    def set_pci_link_route(self, link, irq):
        _check(
            "set_pci_link_route",
            lib.xendevicemodel_set_pci_link_route(self.dmod, self.domid, link, irq),
        )

    def shutdown(self, reason):
        _check("shutdown", lib.xendevicemodel_shutdown(self.dmod, self.domid, reason))

    # ---- foreign memory ----
    def map_page(self, gfn):
        """Map one guest frame for the life of the device model (the ioreq pages)."""
        arr = ffi.new("xen_pfn_t[1]", [gfn])
        err = ffi.new("int[1]")
        p = lib.xenforeignmemory_map(
            self.fmem, self.domid, lib.PROT_READ | lib.PROT_WRITE, 1, arr, err
        )
        if p == ffi.NULL:
            raise HypervisorError("map gfn %#x" % gfn, ffi.errno)
        if err[0]:
            lib.xenforeignmemory_unmap(self.fmem, p, 1)
            raise HypervisorError("map gfn %#x" % gfn, -err[0])
        self._pages.append(p)
        return memoryview(ffi.buffer(p, abi.PAGE_SIZE))

    # ---- event channels ----
    def evtchn_fd(self):
        return lib.xenevtchn_fd(self.xce)

    def bind_interdomain(self, remote_port):
        return _check(
            "bind_interdomain", lib.xenevtchn_bind_interdomain(self.xce, self.domid, remote_port)
        )

    def pending(self):
        return _check("evtchn pending", lib.xenevtchn_pending(self.xce))

    def unmask(self, port):
        lib.xenevtchn_unmask(self.xce, port)

    def notify(self, port):
        _check("evtchn notify", lib.xenevtchn_notify(self.xce, port))

    def barrier(self):
        lib.stubdm_barrier()

    def bufioreq_consume(self, page, n):
        """Advance the buffered page's read_pointer by n, atomically."""
        lib.stubdm_atomic_add32(ffi.from_buffer(page), n)
