"""host_sim's hypervisor: Xen's side of the device model interface, on Linux.

What Xen keeps for one HVM domain and shows a device model: ioreq servers
(with their shared and buffered ioreq pages and the ranges they claim),
event channels, the guest's RAM for foreign mapping, IRQ lines and domain
shutdown. The device model reaches it through host_sim's implementation of
Xen's user libraries (libsim), over a unix socket; it runs in its own
process. Single-threaded: pump() serves the device model, and a vCPU that
waits for an ioreq pumps until the answer comes.
"""
import mmap
import os
import select
import socket
import struct
import time
import zlib

from host_sim import proto
from host_sim._simevtchn import ffi as _evtchn_ffi, lib as _evtchn_lib
from host_sim.evtchn import EventChannels, EvtchnError, INTERDOMAIN
from host_sim.grants import GrantError, GrantTables
from stubdm import abi

PAGE = 4096
# Where Xen's HVM special pages live (ioreq pages among them), below the
# BIOS at 4 GiB - 64 KiB.
SPECIAL_GFN = 0xFEFF0
SPECIAL_PAGES = 16
PROT_RW = 3
_ENOENT, _EINVAL, _EEXIST, _ENOSPC, _EPROTO, _EBUSY, _ERANGE = 2, 22, 17, 28, 71, 16, 34


_ENOMEM, _EOPNOTSUPP = 12, 95
_PHYSMAP_OPS = frozenset([proto.POPULATE_PHYSMAP, proto.RELOCATE_MEMORY, proto.TRACK_DIRTY_VRAM,
                          proto.HVM_PARAM, proto.SET_MEM_TYPE, proto.PIN_MEMORY_CACHEATTR])
# Not RAM in an HVM guest: the toolstack's domain builder leaves the VGA hole
# unpopulated (Xen's stdvga.c forwards writes there to the device model).
VGA_HOLE = (0xA0000, 0xC0000)
# HVM params (xen/include/public/hvm/params.h): HVM_NR_PARAMS in Xen 4.17-4.21.
HVM_NR_PARAMS = 39
HVM_PARAM_ACPI_S_STATE = 14
HVM_PARAM_ALTP2M = 35  # read-only to a set_param
# Deprecated: a set_param of these is EINVAL (hvm_allow_set_param).
_PARAMS_DEPRECATED = frozenset([4, 13, 20, 21, 22, 23, 24, 25, 26, 30])
# LIBXL_MAXMEM_CONSTANT: the slack libxl adds to a domain's maximum memory
# over its RAM and video RAM (option ROMs come out of it).
MAXMEM_SLACK = 1 << 20
# hvmmem_type_t values set_mem_type accepts (dm.c's table; the others EINVAL).
HVMMEM_RAM_RW, HVMMEM_RAM_RO, HVMMEM_MMIO_DM = 0, 1, 2
# PAT types pin_memory_cacheattr takes (UC, WC, WT, WP, WB, UC-), and the
# XEN_DMOP_MEM_CACHEATTR delete value.
_CACHEATTRS = frozenset([0, 1, 4, 5, 6, 7, 0xFFFFFFFF])
_MAX_GFN = (1 << 40) - 1  # a 52-bit guest physical address space, in pages
# What one take() of an event channel handle may return: every port twice.
_TAKE_MAX = 2 * 4096
_UNMASKED = 0x80000000


def _name(what):
    return what() if callable(what) else what


class SimError(Exception):
    pass


class DeviceModelGone(SimError):
    pass


class DeviceModelHung(SimError):
    pass


class DomainSuspended(SimError):
    """A vCPU access while the domain is in S3: on Xen its vCPUs are paused."""


class IoreqServer:
    def __init__(self, sid, ioreq_gfn, buf_gfn, vcpu_ports, buf_port):
        self.id = sid
        self.ioreq_gfn = ioreq_gfn
        self.buf_gfn = buf_gfn
        self.vcpu_ports = vcpu_ports
        self.buf_port = buf_port
        self.enabled = False
        self.ranges = {abi.XEN_DMOP_IO_RANGE_PORT: [], abi.XEN_DMOP_IO_RANGE_MEMORY: []}
        self.pcidevs = set()
        self.page = None  # a view of the ioreq page, made at the first request

    def claims(self, kind, addr):
        for start, end in self.ranges[kind]:
            if start <= addr <= end:
                return True
        return False

    def contains(self, kind, start, end):
        """Whether the claims cover all of start..end (Xen's
        rangeset_contains_range: adjacent claims merge into one range)."""
        at = start
        progress = True
        while progress:
            progress = False
            for a, b in self.ranges[kind]:
                if a <= at <= b:
                    if b >= end:
                        return True
                    at = b + 1
                    progress = True
        return False

    def overlaps(self, kind, start, end):
        for a, b in self.ranges[kind]:
            if a <= end and start <= b:
                return True
        return False

    def remove(self, kind, start, end):
        """Take start..end out of the claims, splitting those it cuts (Xen's
        rangeset_remove_range)."""
        out = []
        for a, b in self.ranges[kind]:
            if b < start or a > end:
                out.append((a, b))
                continue
            if a < start:
                out.append((a, start - 1))
            if b > end:
                out.append((end + 1, b))
        self.ranges[kind] = out


class EvtchnHandle:
    """A device model's xenevtchn handle: its ports, and what its events go by
    instead of messages (hostsim_proto.h, HS_EVTCHN_*): memory shared with
    libsim (the ports' state, the delivery ring, the bits the device model sets
    to notify), a pipe we write a byte to per port delivered (the fd it polls;
    it hangs up when we close), and an eventfd it writes when it set a bit."""

    # us: how long host_sim watches an ioreq slot for the answer, and how long
    # the device model may watch the delivery ring after its notify, before
    # either sleeps in poll (each wake-up from poll costs about 20-40 us here).
    spin_us = (100, 200)

    def __init__(self, hid):
        self.id = hid
        self.conn = None  # the connection that opened it
        self.ports = set()
        self.closed = False
        self.kick_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.pipe_r, self.pipe_w = os.pipe2(os.O_CLOEXEC)
        os.set_blocking(self.pipe_w, False)
        self.shm_fd = os.memfd_create("host_sim-evtchn", os.MFD_CLOEXEC)
        os.ftruncate(self.shm_fd, _evtchn_lib.HS_EVTCHN_SHM_SIZE)
        self.shm = mmap.mmap(self.shm_fd, _evtchn_lib.HS_EVTCHN_SHM_SIZE)
        self._buf = _evtchn_ffi.from_buffer(self.shm)
        c = self.c = _evtchn_ffi.new("hs_sim_evtchn_t *")
        c.shm = _evtchn_ffi.cast("uint8_t *", self._buf)
        c.pipe_fd = self.pipe_w
        c.kick_fd = self.kick_fd
        # The bounded spins before sleeping (hostsim_evtchn_sim.c, hostsim_libs.c).
        c.spin_ns = self.spin_us[0] * 1000
        struct.pack_into("<I", self.shm, _evtchn_lib.HS_EVTCHN_OFF_DM_SPIN,
                         self.spin_us[1] * 1000)
        self._taken = _evtchn_ffi.new("uint32_t[]", _TAKE_MAX)

    def peer_fds(self):
        """What the device model gets, in HS_EVTCHN_FD_* order."""
        return [self.pipe_r, self.kick_fd, self.shm_fd]

    def sent(self):
        """Its copies are made: the ends only it uses are no longer ours to keep."""
        for fd in (self.pipe_r, self.shm_fd):
            os.close(fd)
        self.pipe_r = self.shm_fd = -1

    def bind(self, port):
        self.ports.add(port)
        if not self.closed:
            _evtchn_lib.hs_sim_reset(self.c, port)

    def unbind(self, port):
        self.ports.discard(port)
        if not self.closed:
            _evtchn_lib.hs_sim_reset(self.c, port)

    def deliver(self, port):
        if not self.closed:
            _evtchn_lib.hs_sim_raise(self.c, port)

    def redeliver(self, port):
        if not self.closed:
            _evtchn_lib.hs_sim_redeliver(self.c, port)

    def take(self):
        """The device model's requests since the last kick: ports it notified, and
        ports it unmasked while pending (| UNMASKED)."""
        if self.closed:
            return []
        n = _evtchn_lib.hs_sim_take(self.c, self._taken, _TAKE_MAX)
        return self._taken[0:n]

    def close(self):
        """The device model's fd hangs up (as the evtchn device's when Xen goes)."""
        if self.closed:
            return
        self.closed = True
        _evtchn_ffi.release(self._buf)
        try:
            self.shm.close()
        except BufferError:
            pass  # a view of it is still alive: the mapping goes with the last one
        for fd in (self.pipe_w, self.kick_fd, self.pipe_r, self.shm_fd):
            if fd >= 0:
                os.close(fd)


class IrqRing:
    """A device model's ring of line levels (hostsim_proto.h, HS_IRQ_*): its
    set_pci_intx_level and set_isa_irq_level calls, one u16 entry each, in
    memory shared with libsim; it writes an eventfd after each. The memory is
    the device model's to scribble on: indices are checked, entries decoded
    into range."""

    def __init__(self, domid):
        self.domid = domid
        self.kick_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.shm_fd = os.memfd_create("host_sim-irq", os.MFD_CLOEXEC)
        os.ftruncate(self.shm_fd, proto.IRQ_SHM_SIZE)
        self.shm = mmap.mmap(self.shm_fd, proto.IRQ_SHM_SIZE)
        self._buf = _evtchn_ffi.from_buffer(self.shm)
        self.c = _evtchn_ffi.cast("uint8_t *", self._buf)  # for the relay's checks
        self.cons = 0
        self.closed = False

    def peer_fds(self):
        """What the device model gets, in HS_IRQ_FD_* order."""
        return [self.shm_fd, self.kick_fd]

    def sent(self):
        os.close(self.shm_fd)
        self.shm_fd = -1

    def take(self):
        """The entries written since the last take, oldest first; None when the
        device model's index is not within a ring of ours (nothing is taken)."""
        if self.closed:
            return ()
        prod = struct.unpack_from("<I", self.shm, proto.IRQ_OFF_PROD)[0]
        n = (prod - self.cons) & 0xFFFFFFFF
        if n == 0:
            return ()
        bad = n > proto.IRQ_RING
        if not bad:
            at = self.cons % proto.IRQ_RING
            first = min(n, proto.IRQ_RING - at)
            out = struct.unpack_from("<%dH" % first, self.shm, proto.IRQ_OFF_RING + 2 * at)
            if first < n:
                out += struct.unpack_from("<%dH" % (n - first), self.shm, proto.IRQ_OFF_RING)
        self.cons = prod
        struct.pack_into("<I", self.shm, proto.IRQ_OFF_CONS, prod)
        return None if bad else out

    def clear_kick(self):
        try:
            os.eventfd_read(self.kick_fd)
        except BlockingIOError:
            pass

    def close(self):
        if self.closed:
            return
        self.closed = True
        self.c = None
        _evtchn_ffi.release(self._buf)
        try:
            self.shm.close()
        except BufferError:
            pass
        for fd in (self.kick_fd, self.shm_fd):
            if fd >= 0:
                os.close(fd)


class Conn:
    def __init__(self, sock):
        self.sock = sock
        self.buf = b""
        self.handles = []  # event channel handles opened over this connection
        self.grants = set()  # references this connection's domain shared through it
        self.own = set()  # frames of its own memory it took through it
        self.irq = None  # its ring of line levels (IrqRing), once it asked


class Region:
    def __init__(self, gfn, npages, fd, offset):
        self.gfn = gfn
        self.npages = npages
        self.fd = fd
        self.offset = offset


class SimHypervisor:
    def __init__(self, sock_path, ram_mib=64, domid=1, vcpus=1, log=None, own_ram=True,
                 dm_domid=0):
        """own_ram: guest RAM is a memfd of ours at gfn 0 (the scripted guest);
        otherwise it arrives later through add_ram() (QEMU's DMA maps).
        dm_domid: the domain the device model runs in (0: dom0; else a stub
        domain): every libsim connection acts as that domain."""
        self.domid = domid
        self.dm_domid = dm_domid
        self.vcpus = vcpus
        self.log = log or (lambda msg: None)
        self.ram_size = ram_mib << 20
        self.regions = []
        self.ram_fd = -1
        self.ram = None
        if own_ram:
            self.ram_fd = os.memfd_create("host_sim-guest-ram", 0)
            os.ftruncate(self.ram_fd, self.ram_size)
            self.ram = mmap.mmap(self.ram_fd, self.ram_size)
            self.regions.append(Region(0, self.ram_size // PAGE, self.ram_fd, 0))
        self.special_fd = os.memfd_create("host_sim-special-pages", 0)
        os.ftruncate(self.special_fd, SPECIAL_PAGES * PAGE)
        self.special = mmap.mmap(self.special_fd, SPECIAL_PAGES * PAGE)
        self.special_used = 0
        self.regions.append(Region(SPECIAL_GFN, SPECIAL_PAGES, self.special_fd, 0))
        self._init_physmap()
        self.on_intx = None  # (dev, intx, level) -> None: where PCI INTx goes
        self.on_msi = None  # (addr, data) -> delivered: where MSI writes go
        self.servers = {}
        self.next_server = 0
        self.handles = {}
        self.opened = []  # every handle ever opened (their hop sums, for benches)
        self.next_handle = 1
        self.evtchn = EventChannels(self.log)
        self.grants = GrantTables(self.log)
        self.notified = set()  # the guest's ioreq ports the device model notified
        self._extra_fds = {}  # fd -> callback(): host_sim's own clients (backends)
        self._deferred = []  # work queued by event callbacks, run at the end of a pump
        self._sent_once = None  # what gave descriptors away once: .sent() after sending
        self.isa_irq = [0] * 16
        self.intx = {}
        self.link_route = [0] * 4
        self.irq_log = []
        self._irq_rings = []  # the device models' rings of line levels (IrqRing)
        self._irq_bad = 0  # entries or indices of theirs found out of range
        self.shutdown_reason = None
        self.alive = lambda: True
        self.timeout = 10.0
        self.stats = {"requests": 0, "ioreqs": 0}
        self.sock_path = sock_path
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(sock_path)
        self.listener.listen(4)
        self.conns = []
        self._poll = select.poll()
        self._poll.register(self.listener.fileno(), select.POLLIN)
        self._fdmap = {self.listener.fileno(): self.listener}
        # send_ioreq's wait in C: the fds above as pollfd arrays, one per handle
        # (its kick first), made again when the set changes; the slots' state bytes.
        self._cfds = {}
        # What those waits leave out: the rings' kicks (the levels are applied
        # once the answer is seen, before anything goes to the guest).
        self._quiet_fds = set()
        self._nout = _evtchn_ffi.new("int *")
        self._special_buf = _evtchn_ffi.from_buffer(self.special)
        self._special_c = _evtchn_ffi.cast("uint8_t *", self._special_buf)

    def close(self):
        for s in self.servers.values():
            if s.page is not None:
                s.page.release()
                s.page = None
        # Pointers into the special pages are used only while a handle is open.
        self._special_c = None
        _evtchn_ffi.release(self._special_buf)
        for c in self.conns:
            c.sock.close()
        for h in self.handles.values():
            h.close()
        for ring in self._irq_rings:
            ring.close()
        self.listener.close()
        self.grants.close()
        try:
            os.unlink(self.sock_path)
        except OSError:
            pass
        # A memoryview of a page may still be alive (a traceback holds one):
        # then the mapping goes when the last view does.
        for m in (self.ram, self.special):
            if m is not None:
                try:
                    m.close()
                except BufferError:
                    pass
        for r in self.regions:
            try:
                os.close(r.fd)
            except OSError:
                pass

    # ---- the event loop ----
    def pump(self, timeout=0.0):
        """Serve whatever the device model sent; wait up to timeout seconds."""
        events = self._poll.poll(int(timeout * 1000))
        for fd, _ in events:
            cb = self._extra_fds.get(fd)
            if cb is not None:
                cb()
                continue
            obj = self._fdmap.get(fd)
            if obj is self.listener:
                s, _ = self.listener.accept()
                c = Conn(s)
                self.conns.append(c)
                self._fdmap[s.fileno()] = c
                self._poll.register(s.fileno(), select.POLLIN)
                self._cfds = {}
            elif isinstance(obj, Conn):
                self._serve(obj)
        if self._deferred:
            self.run_deferred()
        return bool(events)

    def filenos(self):
        """Every descriptor pump() serves (for a caller polling them with its own)."""
        return list(self._fdmap.keys())

    # ---- host_sim's own clients (PV backends) in the same loop ----
    def add_fd(self, fd, callback):
        """Poll fd with the device model's sockets; callback() when it is readable."""
        self._extra_fds[fd] = callback
        self._fdmap[fd] = None
        self._poll.register(fd, select.POLLIN)
        self._cfds = {}

    def remove_fd(self, fd):
        self._quiet_fds.discard(fd)
        if self._extra_fds.pop(fd, None) is not None:
            self._poll.unregister(fd)
            self._fdmap.pop(fd, None)
            self._cfds = {}

    def defer(self, fn):
        """Run fn() at the end of this pump (event callbacks must not re-enter the loop)."""
        self._deferred.append(fn)

    def run_deferred(self):
        for _ in range(1000):  # deferred work may defer more; never forever
            if not self._deferred:
                return
            work, self._deferred = self._deferred, []
            for fn in work:
                fn()

    def pump_until(self, cond, what="start-up", timeout=None, limit=None):
        """Serve the device model until cond() holds; `what` names what we wait for
        (or is a function giving the name: called only to report a failure); limit:
        the time to report, when some of it was spent before the call."""
        if cond():
            return
        timeout = self.timeout if timeout is None else timeout
        limit = timeout if limit is None else limit
        deadline = time.monotonic() + timeout
        wait = max(min(timeout, 0.2), 0)
        while True:
            # Serve first, look at the device model's health after: an answer
            # usually comes in the first wait, and then that is all it costs.
            self.pump(wait)
            if cond():
                return
            if not self.alive():
                # What it sent before it exited (an answer, then exit on a
                # reset) may still be unread: serve that first.
                for _ in range(64):
                    if not self.pump(0) or cond():
                        break
                if cond():
                    return
                raise DeviceModelGone("the device model exited (waiting for %s)"
                                      % _name(what))
            left = deadline - time.monotonic()
            if left <= 0:
                raise DeviceModelHung("the device model gave no answer in %.1f s (waiting for %s)"
                                      % (limit, _name(what)))
            wait = min(left, 0.2)

    def _drop(self, c):
        self._poll.unregister(c.sock.fileno())
        del self._fdmap[c.sock.fileno()]
        self._cfds = {}
        self.conns.remove(c)
        c.sock.close()
        # libsim opens one connection per process: the device model is gone,
        # and with it its event channels and what it shared (as when a stub
        # domain dies: grants still mapped stay until their mapper unmaps).
        if c.irq is not None:
            # What it set before it went took effect (a returned dm_op has).
            self.irq_drain()
            self._irq_rings.remove(c.irq)
            self.remove_fd(c.irq.kick_fd)
            c.irq.close()
            c.irq = None
        for h in c.handles:
            if self.handles.pop(h.id, None) is not None:
                self._evtchn_close(h)
        for ref in sorted(c.grants):
            self.grants.unshare(self.dm_domid, ref)
        self.grants.own_free(self.dm_domid, sorted(c.own))

    def _serve(self, c):
        try:
            data = c.sock.recv(65536)
        except OSError:
            data = b""
        if not data:
            self._drop(c)
            return
        c.buf += data
        if self._irq_rings:
            # Levels it set before these messages take effect before them.
            self.irq_drain()
        while len(c.buf) >= 8:
            op, n = struct.unpack_from("<II", c.buf, 0)
            if n > 4096:
                self.log("libsim peer sent a %d-byte payload; closing it" % n)
                self._drop(c)
                return
            if len(c.buf) < 8 + n:
                break
            payload = c.buf[8 : 8 + n]
            c.buf = c.buf[8 + n :]
            self.stats["requests"] += 1
            fds = []
            try:
                ret, reply, fds = self._op(op, payload, c)
            except (struct.error, KeyError, ValueError) as e:
                self.log("bad request op %d: %s" % (op, e))
                ret, reply, fds = -_EINVAL, b"", []
            if op in proto.ONE_WAY:
                continue
            msg = struct.pack("<iI", ret, len(reply)) + reply
            try:
                if fds:
                    socket.send_fds(c.sock, [msg], fds)
                else:
                    c.sock.sendall(msg)
            except OSError:
                # The peer died between its request and our answer (a killed
                # qemu-xen): it is gone, as when its socket reads empty.
                self._drop(c)
                return
            if self._sent_once is not None:
                self._sent_once.sent()  # the device model has its copies now
                self._sent_once = None

    # ---- operations ----
    def _op(self, op, p, c=None):
        fmt = proto.REQUEST_FORMATS[op]
        args = struct.unpack_from(fmt, p, 0) if fmt != "<" else ()
        if op == proto.MEMORY_MAP:
            return self._memory_map()
        if op in proto.EVTCHN_OPS or op in proto.GNTSHR_OPS:
            try:
                return self._pv_op(op, args, p, c)
            except (EvtchnError, GrantError) as e:
                self.log("domain %d: %s" % (self.dm_domid, e))
                return -e.errno, b"", []
        domid = args[0]
        if domid != self.domid:
            return -_ENOENT, b"", []
        if op in _PHYSMAP_OPS:
            return self._physmap_op(op, args, p)
        if op == proto.CREATE_IOREQ_SERVER:
            return self._create_server(args[1]), b"", []
        # dm.c's checks; the level is the dm_op's uint8_t (libxendevicemodel
        # truncates the caller's unsigned int), 0 or 1.
        if op == proto.SET_ISA_IRQ_LEVEL:
            _, irq, level = args
            if irq >= 16 or level & 0xFF > 1:
                return -_EINVAL, b"", []
            self._set_isa_irq(irq, level & 1)
            return 0, b"", []
        if op == proto.SET_PCI_INTX_LEVEL:
            _, seg, bus, dev, intx, level = args
            if seg or bus or dev > 31 or intx > 3 or level & 0xFF > 1:
                return -_EINVAL, b"", []
            self._set_intx(dev, intx, level & 1)
            return 0, b"", []
        if op == proto.IRQ_OPEN:
            return self._irq_open(c)
        if op == proto.SET_PCI_LINK_ROUTE:
            _, link, irq = args
            if link > 3 or irq > 15:
                return -_EINVAL, b"", []
            self.link_route[link] = irq
            self.irq_log.append(("route", link, irq))
            return 0, b"", []
        if op == proto.SHUTDOWN:
            self.shutdown_reason = args[1]
            self.log("device model asked for shutdown, reason %d" % args[1])
            return 0, b"", []
        if op == proto.INJECT_MSI:
            return self._inject_msi(args[1], args[2]), b"", []
        if op == proto.MODIFIED_MEMORY:
            return 0, b"", []
        s = self.servers.get(args[1])
        if s is None:
            return -_ENOENT, b"", []
        if op == proto.GET_IOREQ_SERVER_INFO:
            return 0, struct.pack("<QQI", s.ioreq_gfn, s.buf_gfn, s.buf_port), []
        if op in (proto.MAP_IO_RANGE, proto.UNMAP_IO_RANGE):
            _, _, kind, start, end = args
            if kind not in s.ranges or end < start:
                return -_EINVAL, b"", []
            return self._map_io_range(s, op == proto.MAP_IO_RANGE, kind, start, end), b"", []
        if op in (proto.MAP_PCIDEV, proto.UNMAP_PCIDEV):
            _, _, seg, bus, dev, fn = args
            key = (seg, bus, dev, fn)
            return self._map_pcidev(s, op == proto.MAP_PCIDEV, key), b"", []
        if op == proto.SET_IOREQ_SERVER_STATE:
            s.enabled = bool(args[2])
            return 0, b"", []
        if op == proto.DESTROY_IOREQ_SERVER:
            del self.servers[s.id]
            return 0, b"", []
        return -_EINVAL, b"", []

    # ---- line levels (the messages above, or a device model's IrqRing) ----
    def _set_isa_irq(self, irq, level):
        self.isa_irq[irq] = level
        self.irq_log.append(("isa", irq, level))

    def _set_intx(self, dev, intx, level):
        self.intx[(dev, intx)] = level
        self.irq_log.append(("intx", dev, intx, level))
        if self.on_intx is not None:
            self.on_intx(dev, intx, level)

    def _inject_msi(self, addr, data):
        """XEN_DMOP_inject_msi (hvm_inject_msi): vector 0 names a pirq, which this
        domain has none of (-ERANGE); any other message goes to the guest where
        its interrupt controllers take it (on_msi), or is dropped, as Xen drops a
        fixed message no vCPU matches (0 all the same)."""
        self.irq_log.append(("msi", addr, data))
        if data & 0xFF == 0:
            return -_ERANGE
        if self.on_msi is None or not self.on_msi(addr, data):
            self.stats["msi_dropped"] = self.stats.get("msi_dropped", 0) + 1
        return 0

    def _irq_open(self, c):
        if c is None:
            return -_EINVAL, b"", []
        if c.irq is not None:
            return -_EBUSY, b"", []
        ring = c.irq = IrqRing(self.domid)
        self._irq_rings.append(ring)

        def kicked():
            ring.clear_kick()
            self.irq_drain()

        self.add_fd(ring.kick_fd, kicked)
        self._quiet_fds.add(ring.kick_fd)
        self._sent_once = ring
        return 0, b"", ring.peer_fds()

    def irq_drain(self):
        """Apply what the device models' rings hold, in each one's order."""
        for ring in self._irq_rings:
            entries = ring.take()
            if entries is None:
                self._irq_bad_note("its ring index is out of range; entries lost")
                continue
            i, n = 0, len(entries)
            while i < n:
                e = entries[i]
                i += 1
                if e == proto.IRQ_MSI:
                    if n - i < proto.IRQ_MSI_ENTRIES - 1:
                        # libsim publishes a message's entries together.
                        self._irq_bad_note("a message cut short")
                        break
                    w = entries[i:i + proto.IRQ_MSI_ENTRIES - 1]
                    i += proto.IRQ_MSI_ENTRIES - 1
                    self._inject_msi(w[0] | w[1] << 16 | w[2] << 32 | w[3] << 48,
                                     w[4] | w[5] << 16)
                elif e & proto.IRQ_ISA:
                    if e & 0x7FE0:
                        self._irq_bad_note("entry %#06x is no ISA IRQ" % e)
                    else:
                        self._set_isa_irq((e >> 1) & 15, e & 1)
                elif e & 0x7F00:
                    self._irq_bad_note("entry %#06x is no PCI INTx or MSI" % e)
                else:
                    self._set_intx(e >> 3, (e >> 1) & 3, e & 1)

    def _irq_bad_note(self, what):
        # libsim writes only good entries: a bad one is memory scribbled by the
        # device model. Logged a few times, counted always.
        self._irq_bad += 1
        if self._irq_bad <= 8:
            self.log("device model's line levels: %s" % what)

    def _alloc_special(self):
        if self.special_used >= SPECIAL_PAGES:
            return None
        gfn = SPECIAL_GFN + self.special_used
        self.special_used += 1
        return gfn

    def _alloc_port(self):
        """A port of the guest for the device model's domain (Xen's side of an ioreq server)."""
        return self.evtchn.alloc_unbound(self.domid, self.dm_domid, callback=self.notified.add)

    def _create_server(self, bufioreq):
        ioreq_gfn = self._alloc_special()
        buf_gfn = self._alloc_special() if bufioreq else 0
        if ioreq_gfn is None or buf_gfn is None:
            return -_ENOSPC
        sid = self.next_server
        self.next_server += 1
        ports = [self._alloc_port() for _ in range(self.vcpus)]
        buf_port = self._alloc_port() if bufioreq else 0
        s = IoreqServer(sid, ioreq_gfn, buf_gfn, ports, buf_port)
        s.bufioreq_handling = bufioreq
        page = self.page_of(ioreq_gfn)
        for i in range(self.vcpus):
            struct.pack_into("<I", page, i * abi.IOREQ_SIZE + abi.IOREQ_OFF_VP_EPORT, ports[i])
        self.servers[sid] = s
        return sid

    def add_ram(self, gpa, size, fd, offset):
        """Guest RAM from elsewhere (QEMU's DMA_MAP): ours to close."""
        if gpa % PAGE or size % PAGE or offset % PAGE or size <= 0:
            os.close(fd)
            raise ValueError("unaligned guest RAM region %#x+%#x" % (gpa, size))
        for r in self.regions:
            if gpa // PAGE < r.gfn + r.npages and r.gfn < (gpa + size) // PAGE:
                os.close(fd)
                raise ValueError("guest RAM region %#x+%#x overlaps" % (gpa, size))
        self.regions.append(Region(gpa // PAGE, size // PAGE, fd, offset))

    def remove_ram(self, gpa, size):
        for r in list(self.regions):
            if r.gfn == gpa // PAGE and r.npages == size // PAGE and r.fd != self.special_fd:
                self.regions.remove(r)
                os.close(r.fd)
                return True
        return False

    def page_of(self, gfn):
        off = (gfn - SPECIAL_GFN) * PAGE
        return memoryview(self.special)[off : off + PAGE]

    def _memory_map(self):
        # One descriptor per backing file: QEMU sends a fresh fd of the same
        # memfd with every DMA map, and libsim takes at most 16.
        fds, files, body = [], [], b""
        for r in self.regions:
            st = os.fstat(r.fd)
            key = (st.st_dev, st.st_ino)
            if key not in files:
                files.append(key)
                fds.append(r.fd)
            body += struct.pack(proto.REGION_FORMAT, r.gfn, r.npages, r.offset,
                                files.index(key), PROT_RW)
        return 0, struct.pack("<I", len(self.regions)) + body, fds

    # ---- event channels and grants, as the device model's domain uses them ----
    def _pv_op(self, op, args, payload, c):
        dom = self.dm_domid
        if op == proto.EVTCHN_OPEN:
            return self._evtchn_open(c)
        if op == proto.GNTSHR_SHARE:
            remote, count, writable = args
            if not 0 < count <= proto.GNTSHR_MAX_PAGES:
                return -_EINVAL, b"", []
            shared = self.grants.share(dom, remote, count, bool(writable))
            if c is not None:
                c.grants.update(ref for ref, _ in shared)
            body = b"".join(struct.pack("<IQ", ref, page * PAGE) for ref, page in shared)
            return 0, body, [self.grants.memory_of(dom).fd]
        if op == proto.OWN_ALLOC:
            (count,) = args
            if c is None or not 0 < count <= proto.OWN_MAX_PAGES:
                return -_EINVAL, b"", []
            frames = self.grants.own_alloc(dom, count)
            c.own.update(frames)
            return 0, struct.pack("<%dQ" % count, *frames), [self.grants.memory_of(dom).fd]
        if op == proto.OWN_FREE:
            (count,) = args
            if c is None or not 0 < count <= proto.OWN_MAX_PAGES or len(payload) < 4 + 8 * count:
                return -_EINVAL, b"", []
            frames = struct.unpack_from("<%dQ" % count, payload, 4)
            mine = sorted(set(frames) & c.own)
            c.own.difference_update(mine)
            self.grants.own_free(dom, mine)
            return (0 if len(mine) == count else -_ENOENT), b"", []
        if op == proto.GNTSHR_UNSHARE:
            (count,) = args
            if not 0 < count <= proto.GNTSHR_MAX_PAGES or len(payload) < 4 + 4 * count:
                return -_EINVAL, b"", []
            refs = struct.unpack_from("<%dI" % count, payload, 4)
            ret = 0
            for ref in refs:
                if c is not None and ref not in c.grants:
                    ret = -_ENOENT
                    continue
                if c is not None:
                    c.grants.discard(ref)
                ret = self.grants.unshare(dom, ref) or ret
            return ret, b"", []
        h = self.handles.get(args[0])
        if h is None or (c is not None and h not in c.handles):
            return -_ENOENT, b"", []
        if op == proto.EVTCHN_BIND_INTERDOMAIN:
            _, remote_dom, remote = args
            return self.evtchn.bind_interdomain(dom, remote_dom, remote, handle=h), b"", []
        if op == proto.EVTCHN_BIND_UNBOUND:
            _, remote_dom = args
            return self.evtchn.alloc_unbound(dom, remote_dom, handle=h), b"", []
        if op == proto.EVTCHN_UNBIND:
            local = args[1]
            if local not in h.ports:
                return -_ENOENT, b"", []
            self.evtchn.close(dom, local)
            return 0, b"", []
        if op == proto.EVTCHN_CLOSE:
            del self.handles[h.id]
            if c is not None:
                c.handles.remove(h)
            self._evtchn_close(h)
            return 0, b"", []
        return -_EINVAL, b"", []

    def _evtchn_open(self, c):
        hid = self.next_handle
        self.next_handle += 1
        h = EvtchnHandle(hid)
        h.conn = c
        self.handles[hid] = h
        self.opened.append(h)
        if c is not None:
            c.handles.append(h)
        self.add_fd(h.kick_fd, self._evtchn_kicked(h))
        self._sent_once = h
        return hid, b"", h.peer_fds()

    def _evtchn_kicked(self, h):
        """What to do when the device model kicks handle h: it set bits in their
        shared memory. EVTCHNOP_send for each port it notified (one of its own: the
        hypercall checks that too), and the events of ports it unmasked while they
        were pending. (Every ioreq's answer comes this way: kept to few calls.)"""
        serve, take = self._evtchn_serve, h.take

        def kicked():
            serve(h, take())

        return kicked

    def _evtchn_serve(self, h, taken):
        if self._irq_rings:
            self.irq_drain()  # levels set before these notifies, first
        ports, send, dom = h.ports, self.evtchn.send, self.dm_domid
        for v in taken:
            if v in ports:
                send(dom, v)
            elif v & _UNMASKED and v ^ _UNMASKED in ports:
                h.redeliver(v ^ _UNMASKED)

    def _cfds_for(self, h):
        quiet = self._quiet_fds
        fds = [h.kick_fd] + [fd for fd in self._fdmap if fd != h.kick_fd and fd not in quiet]
        arr = _evtchn_ffi.new("struct pollfd[]", len(fds))
        for i, fd in enumerate(fds):
            arr[i].fd = fd
            arr[i].events = _evtchn_lib.POLLIN
        self._cfds[h] = cfds = (arr, len(fds))
        return cfds

    def _evtchn_close(self, h):
        self.remove_fd(h.kick_fd)
        self.evtchn.close_handle(h)
        h.close()

    # ---- what the guest's side does ----
    def signal(self, remote):
        """Xen raising an event towards the device model on one of the guest's ports."""
        p = self.evtchn.ports.get((self.domid, remote))
        if p is None or p.state != INTERDOMAIN:
            return False
        q = p.peer
        self.evtchn.raise_event(q)
        return q.handle is not None and not q.handle.closed

    def server_for(self, kind, addr):
        for s in self.servers.values():
            if s.enabled and s.claims(kind, addr):
                return s
        return None

    def server_for_pci(self, bus, dev, fn):
        for s in self.servers.values():
            if s.enabled and (0, bus, dev, fn) in s.pcidevs:
                return s
        return None

    # ---- claims, as xen/common/ioreq.c keeps them ----
    def _map_io_range(self, s, is_map, kind, start, end):
        # A claim may cover ranges Xen emulates itself (qemu-xen claims the
        # RTC and the IOAPIC): Xen accepts it, and its own emulation still
        # answers those accesses first (host_sim.scripted routes them so).
        if is_map:
            if s.overlaps(kind, start, end):
                return -_EEXIST
            s.ranges[kind].append((start, end))
            return 0
        if not s.contains(kind, start, end):
            return -_ENOENT
        s.remove(kind, start, end)
        return 0

    def _map_pcidev(self, s, is_map, key):
        # libxendevicemodel refuses dev > 31 or fn > 7; Xen's PCI rangeset
        # holds each SBDF once.
        _seg, _bus, dev, fn = key
        if dev > 31 or fn > 7:
            return -_EINVAL
        if is_map:
            if key in s.pcidevs:
                return -_EEXIST
            s.pcidevs.add(key)
            return 0
        if key not in s.pcidevs:
            return -_ENOENT
        s.pcidevs.discard(key)
        return 0

    def server_for_range(self, kind, start, end):
        """The first enabled server whose claims cover all of start..end
        (ioreq_server_select): an access a claim covers only in part goes
        to nobody."""
        for s in self.servers.values():
            if s.enabled and s.contains(kind, start, end):
                return s
        return None

    def hop_stats(self):
        """The hops of the ioreq round trips answered in C, over every handle
        (hs_sim_evtchn_t's sums): {"n", "to_dm_ns", "in_dm_ns", "back_ns"}."""
        out = {"n": 0, "to_dm_ns": 0, "in_dm_ns": 0, "back_ns": 0}
        for h in self.opened:
            c = h.c
            out["n"] += c.hop_n
            out["to_dm_ns"] += c.hop_to_dm_ns
            out["in_dm_ns"] += c.hop_in_dm_ns
            out["back_ns"] += c.hop_back_ns
        return out

    def send_ioreq(self, s, vcpu, type_, addr, data, size, count=1, is_read=0, ptr=0, df=0):
        """Put a request in vCPU's slot, wake the device model, wait for the answer
        (as Xen's vCPU does: the state IORESP_READY, seen after the event)."""
        page = s.page
        if page is None:
            page = s.page = self.page_of(s.ioreq_gfn)
            s.states = {}
        off = vcpu * abi.IOREQ_SIZE
        flags_at = off + abi.IOREQ_OFF_FLAGS
        port = s.vcpu_ports[vcpu]
        p, q, h = self.ioreq_channel(s, vcpu)
        req = abi.pack_ioreq(addr, data, count, size, port, abi.STATE_IOREQ_NONE, ptr,
                             is_read, df, type_)
        page[off : off + abi.IOREQ_SIZE] = req
        # Publish the state last: the device model reads the rest after READY.
        page[flags_at] = req[abi.IOREQ_OFF_FLAGS] | abi.STATE_IOREQ_READY
        self.notified.discard(port)
        q.sent += 1
        _evtchn_lib.hs_sim_raise(h.c, q.port)
        # The first wait in C: when the device model's notify of this port is all
        # that comes, no Python runs until the answer. Anything else is served here
        # and by pump_until, whose checks come after.
        state = self.ioreq_state(s, vcpu)
        cfds = self._cfds.get(h) or self._cfds_for(h)
        nout = self._nout
        if _evtchn_lib.hs_sim_wait_answer(h.c, q.port, state, cfds[0], cfds[1],
                                          self.first_wait_ms(), h._taken, _TAKE_MAX, nout):
            # The device model's EVTCHNOP_send on its end, counted as send() does.
            self.evtchn.stats["sent"] += 1
            p.sent += 1
            data = self._ioreq_done(page, off, req[abi.IOREQ_OFF_FLAGS], port)
            if nout[0]:
                self.serve_taken(h, nout[0])  # its other notifies in the access
            return data
        return self.ioreq_answer_late(s, vcpu, h, nout[0], req[abi.IOREQ_OFF_FLAGS], type_, addr)

    def ioreq_channel(self, s, vcpu):
        """(Xen's end of vCPU's event channel, the device model's end, its handle);
        DeviceModelGone when no device model is bound."""
        port = s.vcpu_ports[vcpu]
        p = self.evtchn.ports.get((self.domid, port))
        q = p.peer if p is not None and p.state == INTERDOMAIN else None
        h = q.handle if q is not None else None
        if h is None or h.closed:
            raise DeviceModelGone("vcpu %d: no device model bound to port %d" % (vcpu, port))
        return p, q, h

    def ioreq_state(self, s, vcpu):
        """The address (a cffi uint8_t *) of vCPU's ioreq_t state byte in s's page."""
        state = s.states.get(vcpu)
        if state is None:
            state = s.states[vcpu] = self._special_c + (
                (s.ioreq_gfn - SPECIAL_GFN) * PAGE + vcpu * abi.IOREQ_SIZE + abi.IOREQ_OFF_FLAGS)
        return state

    def first_wait_ms(self):
        """How long the first wait for an answer (in C) lasts before pump_until's."""
        return int(min(0.2, self.timeout) * 1000)

    def ioreq_answer_late(self, s, vcpu, h, nout, flags, type_, addr):
        """An ioreq published in vCPU's slot and raised, whose first wait (in C,
        hs_sim_wait_answer) did not see the answer: serve what that wait took
        from handle h (h._taken[0:nout]) and the device model until the answer,
        with the checks of a dead or hung device model; its data. flags: the
        ioreq's flags byte with state NONE (the slot goes back to it)."""
        page = s.page
        off = vcpu * abi.IOREQ_SIZE
        flags_at = off + abi.IOREQ_OFF_FLAGS
        port = s.vcpu_ports[vcpu]
        notified = self.notified

        def answered():
            return port in notified and (
                page[flags_at] & abi.STATE_MASK == abi.STATE_IORESP_READY
            )

        if nout:
            self._evtchn_serve(h, h._taken[0:nout])
            if self._deferred:
                self.run_deferred()
        if not answered():
            # The first wait is part of the time the device model has.
            first = self.first_wait_ms() / 1000
            try:
                self.pump_until(answered,
                                lambda: "an ioreq of type %d at %#x" % (type_, addr),
                                timeout=self.timeout - first, limit=self.timeout)
            except DeviceModelGone:
                # A device model that shut the domain down (a reset or
                # poweroff port) may exit before its notify of the answer
                # is seen: on Xen this vCPU never runs again, so there is
                # no one to give the answer to. Any other exit is an error.
                if self.shutdown_reason is None:
                    raise
        return self._ioreq_done(page, off, flags, port)

    def serve_taken(self, h, n):
        """Serve what a wait in C took from handle h besides an answer (h._taken[0:n])."""
        self._evtchn_serve(h, h._taken[0:n])
        if self._deferred:
            self.run_deferred()

    def _ioreq_done(self, page, off, flags, port):
        if self._irq_rings:
            self.irq_drain()  # the levels it set in the access, before its answer
        data = struct.unpack_from("<Q", page, off + abi.IOREQ_OFF_DATA)[0]
        page[off + abi.IOREQ_OFF_FLAGS] = flags  # back to NONE
        self.notified.discard(port)
        self.stats["ioreqs"] += 1
        return data

    def send_buffered(self, s, type_, addr, size, value):
        """Queue a write in the buffered page, as Xen does for VGA memory."""
        page = self.page_of(s.buf_gfn)
        slots = [abi.pack_buf_ioreq(type_, 0, size, addr, value & 0xFFFFFFFF)]
        if size == 8:
            slots.append(struct.pack("<II", 0, (value >> 32) & 0xFFFFFFFF))

        def room():
            rp, wp = struct.unpack_from("<II", page, 0)
            return abi.IOREQ_BUFFER_SLOT_NUM - ((wp - rp) & 0xFFFFFFFF) >= len(slots)

        if not room():
            self.signal(s.buf_port)
            self.pump_until(room, "room in the buffered ioreq ring")
        wp = struct.unpack_from("<I", page, 4)[0]
        for i, item in enumerate(slots):
            slot = (wp + i) % abi.IOREQ_BUFFER_SLOT_NUM
            o = abi.BUFIOREQ_OFF_SLOTS + slot * abi.BUF_IOREQ_SIZE
            page[o : o + abi.BUF_IOREQ_SIZE] = item
        struct.pack_into("<I", page, 4, (wp + len(slots)) & 0xFFFFFFFF)
        self.signal(s.buf_port)

    # ---- interrupts as the guest's interrupt controllers see them ----
    def gsi_level(self, irq):
        """ISA IRQ level, wired-OR with the PCI links routed to it (Xen's vpic input)."""
        level = self.isa_irq[irq] if irq < 16 else 0
        for (dev, intx), lv in self.intx.items():
            link = (dev + intx) & 3
            if lv and self.link_route[link] == irq and irq:
                level = 1
        return level

    def intx_level(self, dev, intx=0):
        return self.intx.get((dev, intx), 0)

    # ---- the guest's physmap beyond its RAM (what qemu-xen asks of Xen) ----
    def _init_physmap(self):
        """The VGA hole out of the RAM region; populated pages in one memfd,
        page by page (gfn -> page of that file); HVM params; dirty VRAM."""
        self.videoram = 16 << 20  # libxl's default for qemu-xen's stdvga
        self.populated = {}
        self.pop_fd = os.memfd_create("host_sim-populated", 0)
        self.pop_pages = 0  # pages in pop_fd
        self.mem_types = {}  # gfn -> hvmmem type, where not ram_rw
        self.cacheattrs = []
        self.hvm_params = {}
        self.param_log = []
        self.s3_suspended = False  # d->arch.hvm.is_s3_suspended
        self.s3_resets = 0  # times hvm_s3_suspend reset the vCPUs
        self.dirty_range = None  # (first_pfn, nr) tracked, and the dirty gfns
        self.dirty = set()
        self.dirty_hashes = {}  # gfn -> crc32 at the last call
        self.physmap_log = []

    def punch_vga_hole(self):
        """Take 0xa0000-0xbffff out of the guest's RAM, as Xen's domain
        builder leaves it (scripted sessions do; stubdm/memory.py's ram_ranges
        leaves it out of the mapcache's RAM)."""
        for r in list(self.regions):
            if r.fd == self.ram_fd and r.gfn == 0:
                lo, hi = VGA_HOLE[0] // PAGE, VGA_HOLE[1] // PAGE
                if r.npages > hi:
                    self.regions.remove(r)
                    self.regions.insert(0, Region(hi, r.npages - hi, r.fd, hi * PAGE))
                    self.regions.insert(0, Region(0, lo, r.fd, 0))

    def max_extra_pages(self):
        """Pages the domain may populate beyond its RAM (libxl's maxmem)."""
        return (self.videoram + MAXMEM_SLACK) // PAGE

    def _gfn_taken(self, gfn):
        if gfn in self.populated:
            return True
        for r in self.regions:
            if r.fd != self.pop_fd and r.gfn <= gfn < r.gfn + r.npages:
                return True
        return False

    def _rebuild_populated_regions(self):
        self.regions = [r for r in self.regions if r.fd != self.pop_fd]
        run = None
        for gfn in sorted(self.populated):
            page = self.populated[gfn]
            if run and gfn == run[0] + run[1] and page == run[2] + run[1]:
                run[1] += 1
                continue
            if run:
                self.regions.append(Region(run[0], run[1], self.pop_fd, run[2] * PAGE))
            run = [gfn, 1, page]
        if run:
            self.regions.append(Region(run[0], run[1], self.pop_fd, run[2] * PAGE))

    def _physmap_op(self, op, args, p):
        if op == proto.POPULATE_PHYSMAP:
            return self.populate_physmap(args[1], p), b"", []
        if op == proto.RELOCATE_MEMORY:
            _, size, src, dst = args
            return self.relocate_memory(size, src, dst), b"", []
        if op == proto.TRACK_DIRTY_VRAM:
            _, first, nr = args
            ret, bitmap = self.track_dirty_vram(first, nr)
            return ret, bitmap, []
        if op == proto.HVM_PARAM:
            _, index, is_set, value = args
            ret, value = self.hvm_param(index, bool(is_set), value)
            return ret, (struct.pack("<Q", value) if ret == 0 else b""), []
        if op == proto.SET_MEM_TYPE:
            _, mtype, first, nr = args
            return self.set_mem_type(mtype, first, nr), b"", []
        if op == proto.PIN_MEMORY_CACHEATTR:
            _, start, end, ctype = args
            if ctype not in _CACHEATTRS or end < start or end > _MAX_GFN:
                return -_EINVAL, b"", []
            self.cacheattrs.append((start, end, ctype))
            return 0, b"", []
        return -_EINVAL, b"", []

    def populate_physmap(self, nruns, payload):
        """XENMEM_populate_physmap (exact): fresh zeroed pages at the runs'
        gfns. All or nothing; a gfn already backed or beyond the domain's
        maximum memory fails the whole call."""
        if not 0 < nruns <= proto.POPULATE_MAX_RUNS or len(payload) < 6 + 16 * nruns:
            return -_EINVAL
        runs = [struct.unpack_from("<QQ", payload, 6 + 16 * i) for i in range(nruns)]
        total = 0
        seen = set()
        for gfn, n in runs:
            if n == 0 or n > self.max_extra_pages() or gfn + n - 1 > _MAX_GFN:
                return -_EINVAL
            total += n
            if total > self.max_extra_pages() - len(self.populated):
                self.log("populate_physmap: %d pages over the domain's maximum memory" % total)
                return -_ENOMEM
            for g in range(gfn, gfn + n):
                if g in seen or self._gfn_taken(g):
                    self.log("populate_physmap: gfn %#x is already populated" % g)
                    return -_EEXIST
                seen.add(g)
        os.ftruncate(self.pop_fd, (self.pop_pages + total) * PAGE)
        for gfn, n in runs:
            for g in range(gfn, gfn + n):
                self.populated[g] = self.pop_pages
                self.pop_pages += 1
            self.physmap_log.append(("populate", gfn, n))
        self._rebuild_populated_regions()
        return 0

    def relocate_memory(self, size, src, dst):
        """XEN_DMOP_relocate_memory (XENMAPSPACE_gmfn_range): page i of src
        moves to dst + i; what dst + i held goes. host_sim moves only pages
        it populated (qemu-xen moves its VRAM) and never over RAM it did
        not populate."""
        if size == 0 or src + size - 1 > _MAX_GFN or dst + size - 1 > _MAX_GFN:
            return -_EINVAL
        for i in range(size):
            if src + i not in self.populated:
                self.log("relocate_memory: gfn %#x is not populated" % (src + i))
                return -_EINVAL
            d = dst + i
            if d not in self.populated and self._gfn_taken(d):
                return -_EINVAL
        pages = [self.populated.pop(src + i) for i in range(size)]
        for i, page in enumerate(pages):
            self.populated[dst + i] = page
            self.mem_types.pop(src + i, None)
        self.physmap_log.append(("relocate", src, dst, size))
        self._rebuild_populated_regions()
        return 0

    def track_dirty_vram(self, first, nr):
        """XEN_DMOP_track_dirty_vram: nr = 0 stops tracking; a new range
        reports every page dirty once; then the pages written since the last
        call. Writes host_sim routes itself (the scripted guest's) are marked
        as they happen; a guest that writes the memory straight (QEMU's vCPUs
        through an mmap-ed BAR) is caught by comparing each page's hash with
        the last call's, so a page written with what it held shows clean."""
        if nr == 0:
            self.dirty_range = None
            self.dirty = set()
            self.dirty_hashes = {}
            return 0, b""
        if nr > (1 << 30) // PAGE or nr > proto.DIRTY_MAX_PAGES or first + nr - 1 > _MAX_GFN:
            return -_EINVAL, b""
        if self.dirty_range != (first, nr):
            self.dirty_range = (first, nr)
            self.dirty = set(range(first, first + nr))
            self.dirty_hashes = {}
        hashes = self.dirty_hashes
        for g in range(first, first + nr):
            mem = self.guest_memory(g * PAGE, PAGE)
            h = zlib.crc32(mem) if mem is not None else None
            if hashes.get(g, h) != h:
                self.dirty.add(g)
            hashes[g] = h
        bitmap = bytearray((nr + 7) // 8)
        for g in self.dirty:
            i = g - first
            if 0 <= i < nr:
                bitmap[i // 8] |= 1 << (i % 8)
        self.dirty = set()
        return 0, bytes(bitmap)

    def mark_dirty(self, gpa, size):
        if self.dirty_range is None:
            return
        first, nr = self.dirty_range
        for g in range(gpa // PAGE, (gpa + size - 1) // PAGE + 1):
            if first <= g < first + nr:
                self.dirty.add(g)

    def hvm_param(self, index, is_set, value):
        """HVMOP_get_param / set_param as the device model's domain sees them
        (xen/arch/x86/hvm/hvm.c; never set: 0). ACPI_S_STATE is not stored: 3
        suspends the domain (hvm_s3_suspend: vCPUs paused and reset), 0 wakes
        it, anything else is EINVAL; reading it says whether it is suspended."""
        if index >= HVM_NR_PARAMS:
            return -_EINVAL, 0
        self.param_log.append(("set" if is_set else "get", index, value))
        if index == HVM_PARAM_ACPI_S_STATE:
            if not is_set:
                return 0, 3 if self.s3_suspended else 0
            if value == 3:
                if not self.s3_suspended:
                    self.s3_suspended = True
                    self.s3_resets += 1
                    self.log("domain suspended (S3): vCPUs paused and reset")
            elif value == 0:
                if self.s3_suspended:
                    self.s3_suspended = False
                    self.log("domain woken from S3")
            else:
                return -_EINVAL, 0
            return 0, value
        if is_set:
            if index == HVM_PARAM_ALTP2M:
                return -_EEXIST, 0
            if index in _PARAMS_DEPRECATED:
                return -_EINVAL, 0
            self.hvm_params[index] = value
            return 0, value
        return 0, self.hvm_params.get(index, 0)

    def set_mem_type(self, mtype, first, nr):
        """XEN_DMOP_set_mem_type: ram_rw and ram_ro on RAM (ram_ro drops the
        guest's writes), mmio_dm on a hole."""
        if mtype not in (HVMMEM_RAM_RW, HVMMEM_RAM_RO, HVMMEM_MMIO_DM):
            return -_EINVAL
        if nr == 0 or first + nr - 1 > _MAX_GFN:
            return -_EINVAL
        for g in range(first, first + nr):
            ram = self._gfn_taken(g)
            if ram == (mtype == HVMMEM_MMIO_DM):
                return -_EINVAL
        for g in range(first, first + nr):
            if mtype == HVMMEM_RAM_RW:
                self.mem_types.pop(g, None)
            else:
                self.mem_types[g] = mtype
        return 0

    def guest_memory(self, gpa, size):
        """A writable view of guest memory at gpa (RAM or populated pages,
        within one page run), or None where the guest has no memory."""
        gfn = gpa // PAGE
        for r in self.regions:
            if r.fd == self.special_fd or not (r.gfn <= gfn < r.gfn + r.npages):
                continue
            if gpa + size > (r.gfn + r.npages) * PAGE:
                return None
            if r.fd == self.ram_fd and self.ram is not None:
                return memoryview(self.ram)[gpa : gpa + size]
            off = r.offset + gpa - r.gfn * PAGE
            base = off - off % mmap.ALLOCATIONGRANULARITY
            m = mmap.mmap(r.fd, off - base + size, offset=base)
            return memoryview(m)[off - base : off - base + size]
        return None

    def write_discarded(self, gpa, size):
        """Whether a guest write there is dropped (ram_ro pages)."""
        for g in range(gpa // PAGE, (gpa + size - 1) // PAGE + 1):
            if self.mem_types.get(g) == HVMMEM_RAM_RO:
                return True
        return False

    def try_send_buffered(self, s, type_, addr, size, value):
        """Xen's ioreq_send_buffered: queue a single write below 1 MiB in the
        server's buffered page. False (send it synchronously) when the
        server has no buffered page, the size is not 1/2/4/8 or the ring is
        full. With BUFIOREQ_ATOMIC the pointers are brought back below the
        ring size, as Xen does."""
        if not s.buf_gfn or addr > 0xFFFFF or size not in (1, 2, 4, 8):
            return False
        page = self.page_of(s.buf_gfn)
        qw = 1 if size == 8 else 0
        rp, wp = struct.unpack_from("<II", page, 0)
        if (wp - rp) & 0xFFFFFFFF >= abi.IOREQ_BUFFER_SLOT_NUM - qw:
            return False
        slots = [abi.pack_buf_ioreq(type_, 0, size, addr, value & 0xFFFFFFFF)]
        if qw:
            slots.append(abi.pack_buf_ioreq(type_, 0, size, addr, (value >> 32) & 0xFFFFFFFF))
        for i, item in enumerate(slots):
            o = abi.BUFIOREQ_OFF_SLOTS + ((wp + i) % abi.IOREQ_BUFFER_SLOT_NUM) \
                * abi.BUF_IOREQ_SIZE
            page[o : o + abi.BUF_IOREQ_SIZE] = item
        struct.pack_into("<I", page, 4, (wp + len(slots)) & 0xFFFFFFFF)
        if getattr(s, "bufioreq_handling", 0) == abi.HVM_IOREQSRV_BUFIOREQ_ATOMIC:
            rp, wp = struct.unpack_from("<II", page, 0)
            if rp >= abi.IOREQ_BUFFER_SLOT_NUM:
                n = rp // abi.IOREQ_BUFFER_SLOT_NUM * abi.IOREQ_BUFFER_SLOT_NUM
                # One 8-byte store, as Xen's cmpxchg64 on both pointers.
                page[0:8] = struct.pack("<II", rp - n, wp - n)
        self.signal(s.buf_port)
        return True
