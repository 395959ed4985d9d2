# The device model's side of the hypervisor boundary: Xen's user-library API
# (xendevicemodel, xenforeignmemory, xenevtchn) through the C glue. The same
# glue runs against Xen's libraries (dom0), MiniOS's (stub domain) and
# host_sim's (tests); this module does not know which.
#
# The glue has one API on both runtimes (stubdm/port_common/modstubdm_hyp.c
# documents it): on MicroPython it is the user C module _xenglue, on CPython
# stubdm/glue_cffi.py over the cffi module stubdm._xenglue. Only the import
# below differs.
import errno as _errno

from stubdm import abi

_glue_missing = "the C glue is not built (run scons)"
try:
    import _xenglue as glue  # MicroPython: the user C module
except ImportError:
    try:
        from stubdm import glue_cffi as glue  # CPython: cffi
    except ImportError as e:
        glue = None
        _glue_missing += ": " + str(e)  # which one (STUBDM_GLUE=xen: scons glue-xen)


class HypervisorError(Exception):
    def __init__(self, what, err):
        super().__init__(what + ": " + _errno.errorcode.get(err, str(err)))
        self.errno = err


def _err(e):
    return e.errno if e.errno is not None else (e.args[0] if e.args else 0)


class Hypervisor:
    """Handles on the hypervisor for one guest domain."""

    def __init__(self, domid):
        if glue is None:
            raise HypervisorError(_glue_missing, 0)
        self.domid = domid
        try:
            self.xen = glue.Xen(domid)
        except OSError as e:
            why = getattr(e, "strerror", None)
            if _err(e) == _errno.ENODEV and isinstance(why, str):
                raise HypervisorError(why, _errno.ENODEV)  # the glue's own: no hypervisor
            raise HypervisorError("opening the hypervisor's handles", _err(e))
        # The ioreq loop's hot calls, straight to the glue (they cannot fail
        # in a way the loop could handle).
        self.barrier = glue.barrier
        self.bufioreq_consume = glue.atomic_add32
        # Shared-ring indices are published with one atomic add each: a plain
        # store may be a byte-by-byte copy (MiniOS's memcpy) that a backend
        # could read half-written.
        self.atomic_add32 = glue.atomic_add32

    def _call(self, what, f, *args):
        try:
            return f(*args)
        except OSError as e:
            raise HypervisorError(what, _err(e))

    # ---- ioreq server ----
    def create_ioreq_server(self, bufioreq=abi.HVM_IOREQSRV_BUFIOREQ_ATOMIC):
        return self._call("create_ioreq_server", self.xen.create_ioreq_server, bufioreq)

    def ioreq_server_info(self, sid):
        """(ioreq gfn, buffered ioreq gfn, buffered ioreq event channel port)."""
        return self._call("get_ioreq_server_info", self.xen.get_ioreq_server_info, sid)

    def map_io_range(self, sid, is_mmio, start, end):
        self._call("map_io_range", self.xen.map_io_range, sid, is_mmio, start, end)

    def unmap_io_range(self, sid, is_mmio, start, end):
        self._call("unmap_io_range", self.xen.unmap_io_range, sid, is_mmio, start, end)

    def map_pcidev(self, sid, seg, bus, dev, fn):
        self._call("map_pcidev", self.xen.map_pcidev, sid, seg, bus, dev, fn)

    def set_ioreq_server_state(self, sid, enabled):
        self._call("set_ioreq_server_state", self.xen.set_ioreq_server_state, sid, enabled)

    def destroy_ioreq_server(self, sid):
        self._call("destroy_ioreq_server", self.xen.destroy_ioreq_server, sid)

    # ---- interrupts and the domain ----
    def set_isa_irq_level(self, irq, level):
        try:
            self.xen.set_isa_irq_level(irq, level)
        except OSError as e:
            raise HypervisorError("set_isa_irq_level", _err(e))

    def set_pci_intx_level(self, seg, bus, dev, intx, level):
        self._call("set_pci_intx_level", self.xen.set_pci_intx_level, seg, bus, dev, intx, level)

    def set_pci_link_route(self, link, irq):
        self._call("set_pci_link_route", self.xen.set_pci_link_route, link, irq)

    def inject_msi(self, addr, data):
        self._call("inject_msi", self.xen.inject_msi, addr, data)

    def shutdown(self, reason):
        self._call("shutdown", self.xen.shutdown, reason)

    def set_acpi_s_state(self, state):
        # qemu-xen's suspend and wake-up notifiers: Xen pauses and resets the
        # vCPUs at 3, and unpauses them at 0.
        self._call("set HVM_PARAM_ACPI_S_STATE", self.xen.set_hvm_param,
                   abi.HVM_PARAM_ACPI_S_STATE, state)

    # ---- foreign memory ----
    def map_page(self, gfn):
        """Map one guest frame for the life of the device model (the ioreq pages)."""
        try:
            return self.xen.map_page(gfn)
        except OSError as e:
            raise HypervisorError("map gfn %#x" % gfn, _err(e))

    # ---- event channels ----
    def evtchn_fd(self):
        return self._call("evtchn fd", self.xen.evtchn_fd)

    def bind_interdomain(self, remote_port):
        return self._call("bind_interdomain", self.xen.bind_interdomain, remote_port)

    def pending(self):
        try:
            return self.xen.pending()
        except OSError as e:
            raise HypervisorError("evtchn pending", _err(e))

    def pending_nowait(self):
        """The next delivered port, or -1 at once when none is (or the handle
        failed: the poll that follows sees why)."""
        try:
            return self.xen.pending_nowait()
        except OSError:
            return -1

    def unmask(self, port):
        try:
            self.xen.unmask(port)
        except OSError:
            pass  # as before: a failed unmask shows up as a missing event

    def notify(self, port):
        try:
            self.xen.notify(port)
        except OSError as e:
            raise HypervisorError("evtchn notify", _err(e))

    def bind_unbound_port(self, remote_domid):
        """A new port of ours that remote_domid (a PV backend) binds to."""
        return self._call("bind_unbound_port", self.xen.bind_unbound_port, remote_domid)

    def unbind(self, port):
        try:
            self.xen.unbind(port)
        except OSError:
            pass  # closing what is already closed: nothing left to undo

    # ---- grants: our own pages, shared with another domain ----
    def share_pages(self, remote_domid, count, writable=True):
        """Grant count fresh pages of our own memory to remote_domid: a SharedPages."""
        addr, refs, mem = self._call("share_pages", self.xen.share_pages, remote_domid, count,
                                     writable)
        return SharedPages(self, addr, refs, mem)

    # ---- our own pages, named by frame number (fbif.h's page-ref and pd[]) ----
    def own_pages(self, count):
        """count fresh pages of our own memory and their frame numbers: an OwnPages.
        A stub domain only (MiniOS, host_sim): in dom0 it is ENOSYS."""
        addr, frames, mem = self._call("own_pages (frame numbers of our own memory: a stub "
                                       "domain's, none in dom0)", self.xen.own_pages, count)
        return OwnPages(self, addr, frames, mem)

    # barrier() and bufioreq_consume(page, n) (advance the buffered page's
    # read_pointer by n, atomically) are the glue's own, bound in __init__.


class SharedPages:
    """Pages of ours granted to another domain: .refs (one per page), .mem (all of them)."""

    def __init__(self, hyp, addr, refs, mem):
        self.hyp = hyp
        self.addr = addr
        self.refs = refs
        self.mem = mem

    def frames(self):
        """The pages' frame numbers, for a backend that maps by frame (kbdif.h's
        page-ref, which QEMU's backend reads); HypervisorError where there are none
        (dom0)."""
        try:
            return self.hyp.xen.share_frames(self.addr, len(self.refs))
        except OSError as e:
            raise HypervisorError("frames of shared pages", _err(e))

    def unshare(self):
        """End the grants. A grantee that still maps them keeps the pages until it
        unmaps; they are never reused before that."""
        if self.mem is None:
            return
        self.mem = None
        try:
            self.hyp.xen.unshare(self.addr, len(self.refs))
        except OSError as e:
            raise HypervisorError("unshare", _err(e))


class OwnPages:
    """Pages of our own memory: .frames (one per page), .mem (all of them). A backend
    with foreign-mapping privilege maps them by frame number."""

    def __init__(self, hyp, addr, frames, mem):
        self.hyp = hyp
        self.addr = addr
        self.frames = frames
        self.mem = mem

    def free(self):
        if self.mem is None:
            return
        self.mem = None
        try:
            self.hyp.xen.free_own_pages(self.addr, self.frames)
        except OSError as e:
            raise HypervisorError("free_own_pages", _err(e))
