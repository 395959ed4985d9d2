"""vfio-user server for one PCI function per socket (host_sim; CPython only).

QEMU (>= 10.1, `vfio-user-pci`) is the client; this module is the server
side that puts one of stubdm's PCI functions in front of a real guest
(DESIGN.md section 10). It is written for a single-threaded event loop:

    srv = VfioUserServer(path, backend)
    while ...:
        ready = poll(srv.filenos())         # listener, connection, unmask fd
        for fd in ready:
            srv.handle_readable(fd)

`handle_readable` does one non-blocking read and handles every whole message
it then holds (the poll is level-triggered: what is left is read on the next
round). It never raises: a broken peer gets an error reply or the connection
is closed, and the server listens for the next client. One client at a time;
a second connection is accepted and closed at once.

Backend (duck-typed; the server calls nothing else):
    config_read(offset, size) -> int        size 1, 2 or 4, within a dword
    config_write(offset, size, value)
    bar_regions() -> [(index, size, is_io[, mmap])]  BARs 0-5 (called once,
        here); mmap: an MmapRegion for a memory BAR the client maps itself
    region_read(index, offset, size) -> int
    region_write(index, offset, size, value)
    dma_map(iova, size, fd, fd_offset, prot)  fd: int or None (no fd sent);
        the backend owns fd from the call on (keeps it or closes it, also
        when it raises); prot: 1 read, 2 write.
    dma_unmap(iova, size)                   exactly the pairs dma_map saw;
        also called for every mapping left when a client goes away.
    reset()                                 optional: if present, GET_INFO
        advertises VFIO_DEVICE_FLAGS_RESET and DEVICE_RESET calls it.
    A DMA_MAP without an fd is memory the server can't reach; QEMU sends one
    for each mmap-able BAR once the guest places it: accept it (ignore it).
INTx goes the other way: the owner calls `srv.set_intx(level)` whenever the
function's INTx output changes (after the INTx-disable gate, which the
backend's configuration space owns).

Protocol (QEMU 11.1 hw/vfio-user/*.c, docs/interop/vfio-user.rst,
linux/vfio.h; the facts checked with QEMU are in DESIGN.md section 10):
- Header `<HHIII`: msg_id, command, size (header included), flags, error.
  flags bits 0-3 type (0 request, 1 reply), 0x10 NO_REPLY, 0x20 ERROR.
  A reply echoes msg_id and command; an error reply is the header alone,
  flags 0x21, error = errno. A message with NO_REPLY never gets a reply,
  not even an error (QEMU does not wait for one and would mis-frame it).
- VERSION first (anything before it: EINVAL); reply `<HH` major 0, minor 0
  and NUL-terminated JSON, never longer than the request (QEMU reads the
  reply into the request's buffer); `{}` if ours would not fit.
- Regions: 0-5 BARs (sizes from the backend), 6 ROM (size 0), 7 config
  space (256 bytes: QEMU treats a 256-byte config region as conventional
  PCI and drops its PCIe capability), 8 VGA (size 0). QEMU reads the whole
  config region in one REGION_READ of 256 bytes at realize.
- Posted writes: QEMU sets NO_REPLY on writes to memory BARs only
  (hw/vfio/pci.c: "IO regions are sync, memory can be async"; none at all
  once a region is offered with MMAP). Writes to I/O BARs and to config
  space wait for a reply, so every guest `out` to an I/O BAR is a full
  round trip.
- Every BAR access after an INTx was signalled is followed by a SET_IRQS
  UNMASK round trip from QEMU (its EOI), before the vCPU continues.
- mmap-able BARs (MmapRegion): REGION_INFO flags READ|WRITE|MMAP, the
  fd's offset in `offset` and the fd as SCM_RIGHTS; a sparse BAR also gets
  the SPARSE_MMAP capability (flag CAPS, at cap_offset 32). A request whose
  argsz has no room for it gets argsz = the size needed and nothing else
  (no CAPS flag, no fd): QEMU asks again with that argsz. The client traps
  what is not mapped, and the whole BAR while an INTx is pending: the
  backend still answers region_read/region_write there. With any region
  mmap-able QEMU posts no writes.
- Region accesses: config space is split into accesses of 1, 2 or 4 bytes
  that stay within a dword; a BAR access of 1, 2, 4 or 8 bytes is one
  backend access, any other count is split into byte accesses. Any part
  outside the region: EINVAL. Count 0: EINVAL.
- INTx (index 0) as Linux's vfio-pci: flags EVENTFD|MASKABLE|AUTOMASKED.
  The line going high with the trigger eventfd set and not masked signals
  the eventfd and masks. UNMASK (QEMU sends it after the guest's next BAR
  access, its end-of-interrupt) re-signals if the line is still high.
  MASK/UNMASK take DATA_NONE or DATA_BOOL; UNMASK also DATA_EVENTFD (an
  eventfd that unmasks when signalled; polled here). TRIGGER takes an
  eventfd (no fd sent: disable), DATA_NONE/BOOL (a software trigger) and
  DATA_NONE with count 0 (disable INTx). MSI (1) and MSI-X (2) have no
  vectors: only the disable form succeeds.
"""

import array
import errno
import json
import os
import select
import socket
import stat
import struct

__all__ = ["VfioUserServer", "MmapRegion"]

try:  # the hot path in C (host_sim/vfio_floor/vfu_fast.c), where it is built
    from host_sim._vfu_fast import ffi as _ffi, lib as _lib
except ImportError:
    _ffi = _lib = None

# Commands (hw/vfio-user/protocol.h).
VERSION = 1
DMA_MAP = 2
DMA_UNMAP = 3
DEVICE_GET_INFO = 4
DEVICE_GET_REGION_INFO = 5
DEVICE_GET_REGION_IO_FDS = 6
DEVICE_GET_IRQ_INFO = 7
DEVICE_SET_IRQS = 8
REGION_READ = 9
REGION_WRITE = 10
DMA_READ = 11
DMA_WRITE = 12
DEVICE_RESET = 13
DIRTY_PAGES = 14

# Header flags.
TYPE_REQUEST = 0x0
TYPE_REPLY = 0x1
TYPE_MASK = 0xF
NO_REPLY = 0x10
ERROR = 0x20

# linux/vfio.h
DEVICE_FLAGS_RESET = 1 << 0
DEVICE_FLAGS_PCI = 1 << 1
REGION_INFO_FLAG_READ = 1 << 0
REGION_INFO_FLAG_WRITE = 1 << 1
REGION_INFO_FLAG_MMAP = 1 << 2
REGION_INFO_FLAG_CAPS = 1 << 3
REGION_INFO_CAP_SPARSE_MMAP = 1
IRQ_INFO_EVENTFD = 1 << 0
IRQ_INFO_MASKABLE = 1 << 1
IRQ_INFO_AUTOMASKED = 1 << 2
IRQ_INFO_NORESIZE = 1 << 3
IRQ_SET_DATA_NONE = 1 << 0
IRQ_SET_DATA_BOOL = 1 << 1
IRQ_SET_DATA_EVENTFD = 1 << 2
IRQ_SET_ACTION_MASK = 1 << 3
IRQ_SET_ACTION_UNMASK = 1 << 4
IRQ_SET_ACTION_TRIGGER = 1 << 5
IRQ_SET_DATA_TYPE_MASK = 0x7
IRQ_SET_ACTION_TYPE_MASK = 0x38
DMA_MAP_FLAG_READ = 1 << 0
DMA_MAP_FLAG_WRITE = 1 << 1
DMA_UNMAP_FLAG_ALL = 1 << 1

PCI_INTX_IRQ_INDEX = 0
PCI_MSI_IRQ_INDEX = 1
PCI_MSIX_IRQ_INDEX = 2
NUM_IRQS = 3  # INTx, MSI, MSI-X (QEMU needs >= 3; ERR/REQ absent = silent)
PCI_ROM_REGION_INDEX = 6
PCI_CONFIG_REGION_INDEX = 7
NUM_REGIONS = 9  # BAR0-5, ROM, config, VGA
CONFIG_SIZE = 256

HDR = struct.Struct("<HHIII")
HDR_SIZE = HDR.size  # 16
RW = struct.Struct("<QII")  # offset, region, count
HDR_RW = struct.Struct("<HHIIIQII")  # header + RW, for the hot path
VERSION_S = struct.Struct("<HH")
INFO_S = struct.Struct("<IIII")  # device info, irq info
REGION_INFO_S = struct.Struct("<IIIIQQ")
SET_IRQS_S = struct.Struct("<IIIII")
DMA_MAP_S = struct.Struct("<IIQQQ")
DMA_UNMAP_S = struct.Struct("<IIQQ")
CAP_HDR_S = struct.Struct("<HHI")  # id, version, next
SPARSE_S = struct.Struct("<II")  # nr_areas, reserved
AREA_S = struct.Struct("<QQ")  # offset, size
EVENTFD_ONE = (1).to_bytes(8, "little")

MAX_DATA_XFER = 1 << 20  # advertised max_data_xfer_size (QEMU's default)
MAX_MSG = MAX_DATA_XFER + 4096  # larger messages: the connection is closed
MAX_MSG_FDS = 8  # advertised; QEMU sends at most one fd per message here
MAX_DMA_MAPS = 65535
PAGE = 4096  # the advertised pgsizes: mmap offsets and sizes are multiples
MAX_SPARSE_AREAS = 64
RECV_SIZE = 65536
CMSG_LEN = socket.CMSG_SPACE(64 * 4)  # room to notice (and close) floods
SEND_TIMEOUT = 5.0
MAX_SPIN_US = 1000
SPIN_BATCH = 64  # accesses answered in one spin at most, then the caller's loop runs
# Plain ints: socket.MSG_* are IntFlag members, whose operators cost
# microseconds on every message.
RECV_FLAGS = int(socket.MSG_CMSG_CLOEXEC) | int(socket.MSG_DONTWAIT)
MSG_CTRUNC = int(socket.MSG_CTRUNC)
SOL_SOCKET = int(socket.SOL_SOCKET)
SCM_RIGHTS = int(socket.SCM_RIGHTS)
U64 = 1 << 64
U64_MASK = U64 - 1

_CAPS = {"capabilities": {"max_msg_fds": MAX_MSG_FDS,
                          "max_data_xfer_size": MAX_DATA_XFER,
                          "pgsizes": 4096,
                          "max_dma_maps": MAX_DMA_MAPS}}


class MmapRegion:
    """A memory BAR the client maps straight into the guest (its accesses then
    send no messages: the guest reads and writes the file at RAM speed).

    Declare it as the 4th item of the BAR's bar_regions() entry:

        vram = os.memfd_create("vram", os.MFD_CLOEXEC)
        os.ftruncate(vram, 16 << 20)
        def bar_regions(self):
            return [(0, 16 << 20, False, MmapRegion(vram)),   # all of BAR0
                    (2, 4096, False)]                          # trapped

    fd: the backend's (a memfd or any mappable file), open as long as the
        server; the server never closes it and sends the client a copy with
        each REGION_INFO reply for the BAR.
    offset: where the BAR starts in the file (a multiple of 4096).
    areas: None, the whole BAR is mapped; or [(offset, size)] within the BAR
        (multiples of 4096, ascending, not overlapping): only those are
        mapped (vfio's sparse mmap), the rest is trapped as usual.
    The file must reach offset + the BAR's size. The backend keeps answering
    region_read/region_write for the whole BAR: QEMU traps it while an INTx
    is pending. Checked when the server is made (ValueError).
    """

    def __init__(self, fd, offset=0, areas=None):
        self.fd = fd
        self.offset = offset
        self.areas = None if areas is None else [tuple(a) for a in areas]

    def _check(self, index, size):
        where = "BAR%d's mmap" % index
        if not isinstance(self.fd, int) or self.fd < 0:
            raise ValueError("%s: bad fd %r" % (where, self.fd))
        if not isinstance(self.offset, int) or self.offset < 0 or self.offset % PAGE:
            raise ValueError("%s: offset %r is not a page multiple" % (where, self.offset))
        if size < PAGE:
            raise ValueError("%s: the BAR is smaller than a page" % where)
        try:
            st = os.fstat(self.fd)
        except OSError as e:
            raise ValueError("%s: fd %d: %s" % (where, self.fd, e))
        if stat.S_ISREG(st.st_mode) and st.st_size < self.offset + size:
            raise ValueError("%s: the file ends before the BAR does" % where)
        if self.areas is None:
            return
        if not 1 <= len(self.areas) <= MAX_SPARSE_AREAS:
            raise ValueError("%s: 1 to %d areas" % (where, MAX_SPARSE_AREAS))
        end = 0
        for a in self.areas:
            if len(a) != 2 or not all(isinstance(v, int) for v in a):
                raise ValueError("%s: bad area %r" % (where, a))
            off, n = a
            if off < end or n <= 0 or off % PAGE or n % PAGE or off + n > size:
                raise ValueError("%s: bad area (%#x, %#x)" % (where, off, n))
            end = off + n

    def _caps(self):
        if self.areas is None:
            return b""
        return (CAP_HDR_S.pack(REGION_INFO_CAP_SPARSE_MMAP, 1, 0)
                + SPARSE_S.pack(len(self.areas), 0)
                + b"".join(AREA_S.pack(o, n) for o, n in self.areas))


class _Reject(Exception):
    """Answer the current request with an error reply (errno in args[0])."""


def _swap_trigger(old, fd):
    """A client's new trigger eventfd fd (or None) in place of old, which is
    closed; fd made non-blocking: a full pipe posing as an eventfd must not
    block the loop (QEMU's eventfds are non-blocking already)."""
    if old is not None and old != fd:
        _close_fds([old])
    if fd is not None:
        os.set_blocking(fd, False)
    return fd


def _close_fds(fds):
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass
    del fds[:]


class VfioUserServer:
    def __init__(self, path, backend, log=print, fast=None, spin_us=0):
        """fast: True, False or None (the default: C's hot path when
        host_sim._vfu_fast is built, `scons vfu-fast`); spin_us: on the C path,
        after answering a BAR access, watch the connection this long for the
        next one before going back to the caller's poll (a wake-up from poll
        costs this machine about as much as an access); ValueError for a bad BAR."""
        if fast and _lib is None:
            raise ValueError("host_sim._vfu_fast is not built (scons vfu-fast)")
        self._fast = _lib is not None if fast is None else bool(fast)
        self.spin_ns = max(0, min(int(spin_us), MAX_SPIN_US)) * 1000
        # The backend's ioreq relay (host_sim/engine.py's StubdmFunction): its
        # plain BAR accesses answered in C (vfu_relay), or None.
        self._relay = getattr(backend, "relay_ready", None) if self._fast else None
        self.path = path
        self.backend = backend
        self.log = log
        sizes = [0] * NUM_REGIONS
        self._mmap = [None] * NUM_REGIONS
        for entry in backend.bar_regions():
            index, size, is_io = entry[:3]
            if not 0 <= index <= 5 or size < 0 or (size & (size - 1)) or len(entry) > 4:
                raise ValueError("bad BAR region %r" % (entry,))
            sizes[index] = size
            if len(entry) == 4 and entry[3] is not None:
                mm = entry[3]
                if not isinstance(mm, MmapRegion) or is_io:
                    raise ValueError("BAR%d: only a memory BAR takes an MmapRegion" % index)
                mm._check(index, size)
                self._mmap[index] = mm
        sizes[PCI_CONFIG_REGION_INDEX] = CONFIG_SIZE
        self._region_size = sizes
        if self._fast:
            self._cbuf = _ffi.new("uint8_t[]", RECV_SIZE)
            self._cacc = _ffi.new("vfu_access_t *")
            self._cout = _ffi.new("uint8_t[]", 64)
            self._csizes = _ffi.new("uint64_t[]", sizes[:6])
        self._has_reset = callable(getattr(backend, "reset", None))
        # Replace a stale socket file, never anything else.
        try:
            if stat.S_ISSOCK(os.lstat(path).st_mode):
                os.unlink(path)
        except FileNotFoundError:
            pass
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._listener.bind(path)
            self._listener.listen(2)
            self._listener.setblocking(False)
        except OSError:
            self._listener.close()
            raise
        self._listen_fd = self._listener.fileno()
        self._conn = None
        self._conn_fd = -1
        self._intx_level = 0
        self._intx_trigger = None  # eventfd to signal (ours to close)
        self._intx_unmask = None  # eventfd that unmasks when signalled
        self._intx_masked = False
        self._pin = None  # the function's interrupt pin, once read
        self._msi_trigger = None  # MSI's eventfd (vector 0), ours to close
        self._dma = []  # [(iova, size)] mapped by the current client
        self._reply_fds = None  # fds a handler wants sent with its reply
        self.on_fds_changed = None
        self._reset_connection_state()
        self.stats = {"reads": 0, "writes": 0, "posted": 0, "irqs": 0}
        self._handlers = {
            VERSION: self._h_version,
            DMA_MAP: self._h_dma_map,
            DMA_UNMAP: self._h_dma_unmap,
            DEVICE_GET_INFO: self._h_get_info,
            DEVICE_GET_REGION_INFO: self._h_region_info,
            DEVICE_GET_IRQ_INFO: self._h_irq_info,
            DEVICE_SET_IRQS: self._h_set_irqs,
            DEVICE_RESET: self._h_reset,
        }

    # --- event-loop interface ----------------------------------------------

    def _fds_changed(self):
        if self.on_fds_changed is not None:
            self.on_fds_changed()

    def filenos(self):
        """The fds to poll for reading: listener, connection, INTx unmask eventfd.
        on_fds_changed() (when set) is called whenever this list changes."""
        out = [self._listen_fd]
        if self._conn is not None:
            out.append(self._conn_fd)
        if self._intx_unmask is not None:
            out.append(self._intx_unmask)
        return out

    def fileno(self):
        """The listening socket (see filenos() for all of them)."""
        return self._listen_fd

    @property
    def connected(self):
        return self._conn is not None

    def handle_readable(self, fd):
        try:
            if fd == self._conn_fd and self._conn is not None:
                if self._fast and self._versioned and not self._buf and not self._pending_fds:
                    self._read_fast(fd)
                else:
                    self._read_connection()
            elif fd == self._listen_fd:
                self._accept()
            elif fd == self._intx_unmask and fd is not None:
                try:
                    got = os.read(fd, 8)
                except (BlockingIOError, InterruptedError):
                    return
                if not got:  # not an eventfd: EOF would spin the loop
                    self._intx_set_unmask(None)
                    return
                self._intx_do_unmask()
        except Exception as e:  # never let the peer crash the event loop
            self.log("vfio-user: internal error %s: %s; closing the connection"
                     % (type(e).__name__, e))
            self.disconnect()

    def serve_forever(self, stop=lambda: False, interval=0.05):
        """Poll and handle until stop() is true (checked every `interval` s)."""
        ms = int(interval * 1000)
        while not stop():
            p = select.poll()
            for fd in self.filenos():
                p.register(fd, select.POLLIN)
            for fd, _ev in p.poll(ms):
                self.handle_readable(fd)

    def set_intx(self, level):
        """The function's INTx output (gated by its INTx-disable bit) is `level`."""
        level = 1 if level else 0
        self._intx_level = level
        if level and not self._intx_masked and self._intx_trigger is not None:
            self._intx_fire()

    def close(self):
        self.disconnect()
        if self._listener is not None:
            self._listener.close()
            self._listener = None
            self._listen_fd = -1
            self._fds_changed()
            try:
                if stat.S_ISSOCK(os.lstat(self.path).st_mode):
                    os.unlink(self.path)
            except OSError:
                pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # --- connection ---------------------------------------------------------

    def _reset_connection_state(self):
        self._buf = bytearray()
        self._base = 0  # stream position of self._buf[0]
        self._pending_fds = []  # [(stream position, fd)]
        self._versioned = False

    def _accept(self):
        try:
            conn, _ = self._listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            self.log("vfio-user: accept failed: %s" % e)
            return
        if self._conn is not None:
            self.log("vfio-user: refused a second client")
            conn.close()
            return
        conn.setblocking(False)
        self._conn = conn
        self._conn_fd = conn.fileno()
        self._reset_connection_state()
        self._fds_changed()

    def disconnect(self):
        """Drop the client and everything it set up (fds, DMA mappings)."""
        conn = self._conn
        if conn is None:
            return
        self._conn = None
        self._conn_fd = -1
        try:
            conn.close()
        except OSError:
            pass
        self._fds_changed()
        fds = [fd for _, fd in self._pending_fds]
        _close_fds(fds)
        self._reset_connection_state()
        self._intx_set_trigger(None)
        self._intx_set_unmask(None)
        self._intx_masked = False
        self._msi_set_trigger(None)
        maps, self._dma = self._dma, []
        for iova, size in maps:
            try:
                self.backend.dma_unmap(iova, size)
            except Exception as e:
                self.log("vfio-user: backend dma_unmap(0x%x, 0x%x): %s" % (iova, size, e))

    def _protocol_error(self, why):
        self.log("vfio-user: protocol error: %s; closing the connection" % why)
        self.disconnect()

    def _read_connection(self):
        conn = self._conn
        try:
            data, anc, mflags, _ = conn.recvmsg(RECV_SIZE, CMSG_LEN, RECV_FLAGS)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            self.log("vfio-user: receive failed: %s" % e)
            self.disconnect()
            return
        fds = []
        for level, kind, cdata in anc:
            if level == SOL_SOCKET and kind == SCM_RIGHTS:
                n = len(cdata) // 4
                fds.extend(struct.unpack_from("<%di" % n, cdata))
        self._consume(conn, data, fds, mflags & MSG_CTRUNC)

    def _read_fast(self, fd):
        """_read_connection through host_sim._vfu_fast: a plain BAR access is
        parsed and answered in C around the backend's call (or relayed by the
        backend's ioreq relay, all in C); anything else goes the general way
        (_consume). With spin_ns, the next access is awaited that long."""
        for _ in range(SPIN_BATCH):
            if not self._fast_one(fd) or not self.spin_ns or self._conn_fd != fd:
                return
            if not _lib.vfu_spin(fd, self.spin_ns):
                return

    def _fast_one(self, fd):
        # One message (or the relay's run of them); True if it was a plain BAR
        # access answered (the next is likely soon).
        acc = self._cacc
        r = self._relay(fd) if self._relay is not None else None
        if r is not None:
            k = _lib.vfu_relay(fd, self._cbuf, RECV_SIZE, self._csizes, acc, r)
            self.backend.relay_sync(r)
            if k == _lib.VFU_RELAYED:
                self.backend.relay_taken(r)
                return False  # the relay spun for the next one itself
            if k == _lib.VFU_RELAY_HELD:
                # Answered; what the device model set or notified in the
                # access: its levels before the reply, its notifies after.
                self.backend.relay_held()
                if not acc.posted:
                    if r.is_read:
                        self._fast_reply(fd, REGION_READ, r.held, HDR_SIZE + RW.size + acc.count)
                    else:
                        self._fast_reply(fd, REGION_WRITE, 0, HDR_SIZE + RW.size)
                self.backend.relay_taken(r)
                return False  # host_sim's loop serves what else there is first
            if k == _lib.VFU_RELAY_SHORT:
                self._fast_sent(fd, r.sent, r.out,
                                HDR_SIZE + RW.size + (acc.count if r.is_read else 0))
                return False
            if k == _lib.VFU_RELAY_WAIT:
                # The ioreq is out: the backend waits for its answer as
                # send_ioreq does (a dead or hung device model ends the run).
                k = _lib.VFU_READ if r.is_read else _lib.VFU_WRITE
                try:
                    v = self.backend.relay_wait(acc, r) & U64_MASK
                except Exception as e:
                    self.log("vfio-user: region %s: %s: %s"
                             % ("read" if r.is_read else "write", type(e).__name__, e))
                    if not acc.posted:
                        self._error(acc.msg_id, REGION_READ if r.is_read else REGION_WRITE,
                                    errno.EIO)
                    return False
                return self._fast_done(fd, k, v)
        else:
            k = _lib.vfu_recv(fd, self._cbuf, RECV_SIZE, self._csizes, acc)
        if k == _lib.VFU_READ:
            try:
                v = self.backend.region_read(acc.region, acc.offset, acc.count) & U64_MASK
            except Exception as e:
                self.log("vfio-user: region read: %s: %s" % (type(e).__name__, e))
                if not acc.posted:
                    self._error(acc.msg_id, REGION_READ, errno.EIO)
                return False
            return self._fast_done(fd, k, v)
        if k == _lib.VFU_WRITE:
            try:
                self.backend.region_write(acc.region, acc.offset, acc.count, acc.value)
            except Exception as e:
                self.log("vfio-user: region write: %s: %s" % (type(e).__name__, e))
                if not acc.posted:
                    self._error(acc.msg_id, REGION_WRITE, errno.EIO)
                return False
            return self._fast_done(fd, k, 0)
        if k == _lib.VFU_BYTES:
            self._consume(self._conn, _ffi.buffer(self._cbuf, acc.len)[:],
                          list(acc.fds[0:acc.nfds]), acc.ctrunc)
        elif k not in (-errno.EAGAIN, -errno.EINTR):
            self.log("vfio-user: receive failed: %s" % os.strerror(-k))
            self.disconnect()
        return False

    def _fast_done(self, fd, k, v):
        # A plain access answered by the backend: count it, reply (not to a posted write).
        acc = self._cacc
        if k == _lib.VFU_READ:
            self.stats["reads"] += 1
            if not acc.posted:
                self._fast_reply(fd, REGION_READ, v, HDR_SIZE + RW.size + acc.count)
        elif acc.posted:
            self.stats["posted"] += 1
        else:
            self.stats["writes"] += 1
            self._fast_reply(fd, REGION_WRITE, 0, HDR_SIZE + RW.size)
        return True

    def _fast_reply(self, fd, cmd, value, n):
        self._fast_sent(fd, _lib.vfu_reply(fd, self._cacc, cmd, value, self._cout),
                        self._cout, n)

    def _fast_sent(self, fd, sent, out, n):
        if sent != n:
            if sent < 0:
                self.log("vfio-user: send failed: %s" % os.strerror(-sent))
                self.disconnect()
            else:  # the client is slow to read: the bounded wait of _send
                self._send(_ffi.buffer(out, n)[sent:])

    def _consume(self, conn, data, fds, ctrunc):
        """Received bytes (and the fds that came with them): handle every whole message."""
        if ctrunc:
            _close_fds(fds)
            self._protocol_error("too many file descriptors in one message")
            return
        if not data:
            _close_fds(fds)
            self.disconnect()  # the client closed
            return
        if fds:
            # The kernel ends a read after the segment that carries fds, so
            # they belong to the message holding the last byte read.
            pos = self._base + len(self._buf) + len(data) - 1
            for fd in fds:
                self._pending_fds.append((pos, fd))
        if self._buf:
            self._buf += data
            buf = self._buf
        else:
            buf = data  # the usual case: whole messages, no copy
        end = len(buf)
        off = 0
        unpack_hdr = HDR.unpack_from
        while end - off >= HDR_SIZE:
            msg_id, cmd, size, flags, _err = unpack_hdr(buf, off)
            if size < HDR_SIZE or size > MAX_MSG:
                self._protocol_error("message size %d" % size)
                return
            if end - off < size:
                break
            if self._pending_fds:
                msg_fds = self._take_fds(self._base + off + size)
            else:
                msg_fds = []
            self._dispatch(buf, off, size, msg_id, cmd, flags, msg_fds)
            if self._conn is not conn:
                return  # closed while handling
            off += size
        self._base += off
        if off == end:
            self._buf = bytearray()
        elif buf is self._buf:
            del buf[:off]
        else:
            self._buf = bytearray(memoryview(buf)[off:])
        if len(self._pending_fds) > MAX_MSG_FDS * 4:
            self._protocol_error("file descriptors without messages")

    def _take_fds(self, limit):
        mine = [fd for pos, fd in self._pending_fds if pos < limit]
        self._pending_fds = [(pos, fd) for pos, fd in self._pending_fds if pos >= limit]
        return mine

    def _send(self, data, fds=None):
        conn = self._conn
        if conn is None:
            return
        # fds go with the first byte that leaves (copies: the owner keeps its own).
        anc = [(SOL_SOCKET, SCM_RIGHTS, array.array("i", fds))] if fds else None
        try:
            n = conn.sendmsg([data], anc) if anc else conn.send(data)
        except (BlockingIOError, InterruptedError):
            n = 0
        except OSError as e:
            self.log("vfio-user: send failed: %s" % e)
            self.disconnect()
            return
        if n == len(data):
            return
        if n:
            anc = None
        # Slow path: the client is not reading; wait a bounded time.
        view = memoryview(data)[n:]
        p = select.poll()
        p.register(self._conn_fd, select.POLLOUT)
        while view:
            if not p.poll(SEND_TIMEOUT * 1000):
                self.log("vfio-user: client does not read its replies")
                self.disconnect()
                return
            try:
                n = conn.sendmsg([view], anc) if anc else conn.send(view)
                if n:
                    anc = None
                view = view[n:]
            except (BlockingIOError, InterruptedError):
                continue
            except OSError as e:
                self.log("vfio-user: send failed: %s" % e)
                self.disconnect()
                return

    def _reply(self, msg_id, cmd, payload=b"", fds=None):
        self._send(HDR.pack(msg_id, cmd, HDR_SIZE + len(payload), TYPE_REPLY, 0) + payload,
                   fds)

    def _error(self, msg_id, cmd, err):
        self._send(HDR.pack(msg_id, cmd, HDR_SIZE, TYPE_REPLY | ERROR, err))

    # --- dispatch -------------------------------------------------------------

    def _dispatch(self, buf, off, size, msg_id, cmd, flags, fds):
        no_reply = flags & NO_REPLY
        try:
            mtype = flags & TYPE_MASK
            if mtype != TYPE_REQUEST:
                # We never send requests, so no reply can be expected.
                self.log("vfio-user: dropped message %d type %d (command %d)"
                         % (msg_id, mtype, cmd))
                return
            if cmd == REGION_WRITE and self._versioned and not fds:
                self._region_write(buf, off, size, msg_id, no_reply)
                return
            if cmd == REGION_READ and self._versioned and not fds:
                self._region_read(buf, off, size, msg_id, no_reply)
                return
            handler = self._handlers.get(cmd)
            if handler is None:
                if cmd in (REGION_READ, REGION_WRITE):
                    raise _Reject(errno.EINVAL)  # before VERSION, or with fds
                self.log("vfio-user: unsupported command %d" % cmd)
                raise _Reject(errno.ENOSYS)
            if not self._versioned and cmd != VERSION:
                self.log("vfio-user: command %d before VERSION" % cmd)
                raise _Reject(errno.EINVAL)
            self._reply_fds = None
            payload = handler(buf, off + HDR_SIZE, size - HDR_SIZE, fds)
            if not no_reply:
                self._reply(msg_id, cmd, payload, self._reply_fds)
        except _Reject as e:
            if not no_reply and self._conn is not None:
                self._error(msg_id, cmd, e.args[0])
            elif no_reply:
                self.log("vfio-user: posted command %d failed: %s"
                         % (cmd, os.strerror(e.args[0])))
        except Exception as e:  # a backend fault: report it, keep serving
            self.log("vfio-user: command %d: %s: %s" % (cmd, type(e).__name__, e))
            if not no_reply and self._conn is not None:
                self._error(msg_id, cmd, errno.EIO)
        finally:
            if fds:
                _close_fds(fds)

    # --- region access (the guest's hot path) -------------------------------

    def _check_rw(self, buf, off, size):
        if size < HDR_SIZE + RW.size:
            raise _Reject(errno.EINVAL)
        offset, region, count = RW.unpack_from(buf, off + HDR_SIZE)
        if region >= NUM_REGIONS or count == 0 or count > MAX_DATA_XFER:
            raise _Reject(errno.EINVAL)
        if offset + count > self._region_size[region]:
            raise _Reject(errno.EINVAL)
        return offset, region, count

    def _region_read(self, buf, off, size, msg_id, no_reply):
        try:
            offset, region, count = self._check_rw(buf, off, size)
            if size != HDR_SIZE + RW.size:
                raise _Reject(errno.EINVAL)
            if region == PCI_CONFIG_REGION_INDEX:
                data = self._config_read(offset, count)
            elif count in (1, 2, 4, 8):
                v = self.backend.region_read(region, offset, count)
                data = (v & ((1 << (8 * count)) - 1)).to_bytes(count, "little")
            else:
                rd = self.backend.region_read
                data = bytes(rd(region, offset + i, 1) & 0xFF for i in range(count))
        except _Reject as e:
            if not no_reply:
                self._error(msg_id, REGION_READ, e.args[0])
            return
        except Exception as e:
            self.log("vfio-user: region read: %s: %s" % (type(e).__name__, e))
            if not no_reply:
                self._error(msg_id, REGION_READ, errno.EIO)
            return
        self.stats["reads"] += 1
        if not no_reply:
            self._send(HDR_RW.pack(msg_id, REGION_READ, HDR_SIZE + RW.size + count,
                                   TYPE_REPLY, 0, offset, region, count) + data)

    def _region_write(self, buf, off, size, msg_id, no_reply):
        try:
            offset, region, count = self._check_rw(buf, off, size)
            if size != HDR_SIZE + RW.size + count:
                raise _Reject(errno.EINVAL)
            p = off + HDR_SIZE + RW.size
            if region == PCI_CONFIG_REGION_INDEX:
                self._config_write(offset, buf[p:p + count])
            elif count in (1, 2, 4, 8):
                self.backend.region_write(region, offset, count,
                                          int.from_bytes(buf[p:p + count], "little"))
            else:
                wr = self.backend.region_write
                for i in range(count):
                    wr(region, offset + i, 1, buf[p + i])
        except _Reject as e:
            if no_reply:
                self.log("vfio-user: posted write refused: %s" % os.strerror(e.args[0]))
            else:
                self._error(msg_id, REGION_WRITE, e.args[0])
            return
        except Exception as e:
            self.log("vfio-user: region write: %s: %s" % (type(e).__name__, e))
            if not no_reply:
                self._error(msg_id, REGION_WRITE, errno.EIO)
            return
        if no_reply:
            self.stats["posted"] += 1
            return
        self.stats["writes"] += 1
        self._send(HDR_RW.pack(msg_id, REGION_WRITE, HDR_SIZE + RW.size,
                               TYPE_REPLY, 0, offset, region, count))

    @staticmethod
    def _config_chunks(offset, count):
        # Pieces of 4, 2 or 1 bytes that never cross a dword (a config cycle).
        end = offset + count
        while offset < end:
            rem = end - offset
            for n in (4, 2, 1):
                if n <= rem and (offset & 3) + n <= 4:
                    break
            yield offset, n
            offset += n

    def _config_read(self, offset, count):
        rd = self.backend.config_read
        if count in (1, 2, 4) and (offset & 3) + count <= 4:
            v = rd(offset, count) & ((1 << (8 * count)) - 1)
            return v.to_bytes(count, "little")
        out = bytearray()
        for o, n in self._config_chunks(offset, count):
            out += (rd(o, n) & ((1 << (8 * n)) - 1)).to_bytes(n, "little")
        return bytes(out)

    def _config_write(self, offset, data):
        wr = self.backend.config_write
        start = offset
        for o, n in self._config_chunks(offset, len(data)):
            wr(o, n, int.from_bytes(data[o - start:o - start + n], "little"))

    # --- other requests -------------------------------------------------------
    # Each takes (buf, payload offset, payload length, fds), returns the reply
    # payload, raises _Reject(errno). fds left in the list are closed.

    def _h_version(self, buf, p, n, fds):
        if self._versioned or fds or n < VERSION_S.size:
            raise _Reject(errno.EINVAL)
        major, _minor = VERSION_S.unpack_from(buf, p)
        raw = bytes(buf[p + VERSION_S.size:p + n])
        if raw.endswith(b"\0"):
            raw = raw[:-1]
        if raw:
            try:
                caps = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, ValueError, RecursionError):
                raise _Reject(errno.EINVAL)
            if not isinstance(caps, dict) or not isinstance(
                    caps.get("capabilities", {}), dict):
                raise _Reject(errno.EINVAL)
        if major != 0:
            raise _Reject(errno.ENOTSUP)
        text = json.dumps(_CAPS, separators=(",", ":")).encode() + b"\0"
        if VERSION_S.size + len(text) > n:
            text = b"{}\0"
            if VERSION_S.size + len(text) > n:
                raise _Reject(errno.EINVAL)
        self._versioned = True
        return VERSION_S.pack(0, 0) + text

    def _h_get_info(self, buf, p, n, fds):
        if fds or n < 4:
            raise _Reject(errno.EINVAL)
        (argsz,) = struct.unpack_from("<I", buf, p)
        if argsz < INFO_S.size:
            raise _Reject(errno.EINVAL)
        flags = DEVICE_FLAGS_PCI | (DEVICE_FLAGS_RESET if self._has_reset else 0)
        return INFO_S.pack(INFO_S.size, flags, NUM_REGIONS, NUM_IRQS)

    def _h_region_info(self, buf, p, n, fds):
        if fds or n < 12:
            raise _Reject(errno.EINVAL)
        argsz, _flags, index = struct.unpack_from("<III", buf, p)
        if argsz < REGION_INFO_S.size or index >= NUM_REGIONS:
            raise _Reject(errno.EINVAL)
        size = self._region_size[index]
        flags = (REGION_INFO_FLAG_READ | REGION_INFO_FLAG_WRITE) if size else 0
        mm = self._mmap[index]
        if mm is None:
            return REGION_INFO_S.pack(REGION_INFO_S.size, flags, index, 0, size, 0)
        caps = mm._caps()
        need = REGION_INFO_S.size + len(caps)
        flags |= REGION_INFO_FLAG_MMAP
        if argsz < need:
            # Room for the fixed part only: say how much to ask for (vfio's
            # convention); QEMU asks again, so no fd goes with this one.
            return REGION_INFO_S.pack(need, flags, index, 0, size, mm.offset)
        cap_offset = REGION_INFO_S.size if caps else 0
        if caps:
            flags |= REGION_INFO_FLAG_CAPS
        self._reply_fds = [mm.fd]
        return REGION_INFO_S.pack(need, flags, index, cap_offset, size, mm.offset) + caps

    def _h_irq_info(self, buf, p, n, fds):
        if fds or n < INFO_S.size:
            raise _Reject(errno.EINVAL)
        argsz, _flags, index, _count = INFO_S.unpack_from(buf, p)
        if argsz < INFO_S.size or index >= NUM_IRQS:
            raise _Reject(errno.EINVAL)
        if index == PCI_INTX_IRQ_INDEX:
            flags = IRQ_INFO_EVENTFD | IRQ_INFO_MASKABLE | IRQ_INFO_AUTOMASKED
            count = 1 if self._intx_pin() else 0
        elif index == PCI_MSI_IRQ_INDEX:
            # Linux's vfio-pci: MSI is not maskable, and its vectors are all
            # set up at once (NORESIZE).
            flags, count = IRQ_INFO_EVENTFD | IRQ_INFO_NORESIZE, self._msi_vectors()
        else:
            flags, count = IRQ_INFO_EVENTFD, 0
        return INFO_S.pack(INFO_S.size, flags, index, count)

    def _intx_pin(self):
        # Read once, as Linux's vfio-pci reads PCI_INTERRUPT_PIN when the
        # device is enabled: the register is read-only, and every INTx
        # unmask (a SET_IRQS per interrupt) asking the function again was an
        # ioreq round trip per interrupt (584 in a 64 MiB transfer to the guest).
        if self._pin is None:
            try:
                self._pin = self.backend.config_read(0x3D, 1) & 0xFF
            except Exception:
                return 0
        return self._pin

    def _h_set_irqs(self, buf, p, n, fds):
        if n < SET_IRQS_S.size:
            raise _Reject(errno.EINVAL)
        argsz, flags, index, start, count = SET_IRQS_S.unpack_from(buf, p)
        data_type = flags & IRQ_SET_DATA_TYPE_MASK
        action = flags & IRQ_SET_ACTION_TYPE_MASK
        if (argsz < SET_IRQS_S.size or flags & ~0x3F or index >= NUM_IRQS
                or data_type not in (1, 2, 4) or action not in (8, 16, 32)):
            raise _Reject(errno.EINVAL)
        if data_type == IRQ_SET_DATA_BOOL:
            if count > n - SET_IRQS_S.size:
                raise _Reject(errno.EINVAL)
            bools = buf[p + SET_IRQS_S.size:p + SET_IRQS_S.size + count]
        else:
            bools = None
        if data_type == IRQ_SET_DATA_EVENTFD:
            if len(fds) not in (0, count):
                raise _Reject(errno.EINVAL)
        elif fds:
            raise _Reject(errno.EINVAL)
        disable = (action == IRQ_SET_ACTION_TRIGGER and data_type == IRQ_SET_DATA_NONE
                   and count == 0)
        if index == PCI_MSI_IRQ_INDEX and self._msi_vectors():
            return self._msi_set_irqs(action, data_type, start, count, bools, fds, disable)
        if index != PCI_INTX_IRQ_INDEX or not self._intx_pin():
            # No vectors here: only "disable" is meaningful.
            if disable:
                return b""
            raise _Reject(errno.EINVAL)
        if disable:
            self._intx_set_trigger(None)
            self._intx_set_unmask(None)
            self._intx_masked = False
            return b""
        if start != 0 or count != 1:
            raise _Reject(errno.EINVAL)
        if action == IRQ_SET_ACTION_MASK:
            if data_type == IRQ_SET_DATA_EVENTFD:
                raise _Reject(errno.EINVAL)
            if bools is None or bools[0] & 1:
                self._intx_masked = True
        elif action == IRQ_SET_ACTION_UNMASK:
            if data_type == IRQ_SET_DATA_EVENTFD:
                self._intx_set_unmask(fds.pop() if fds else None)
            elif bools is None or bools[0] & 1:
                self._intx_do_unmask()
        else:  # TRIGGER
            if data_type == IRQ_SET_DATA_EVENTFD:
                was_enabled = self._intx_trigger is not None
                self._intx_set_trigger(fds.pop() if fds else None)
                if self._intx_trigger is None:
                    self._intx_masked = False
                else:
                    if not was_enabled:
                        self._intx_masked = False
                    self.set_intx(self._intx_level)
            elif bools is None or bools[0] & 1:
                if self._intx_trigger is not None:
                    self._intx_signal()
        return b""

    def _h_dma_map(self, buf, p, n, fds):
        if n < DMA_MAP_S.size or len(fds) > 1:
            raise _Reject(errno.EINVAL)
        argsz, flags, fd_offset, iova, size = DMA_MAP_S.unpack_from(buf, p)
        if (argsz < DMA_MAP_S.size or flags & ~(DMA_MAP_FLAG_READ | DMA_MAP_FLAG_WRITE)
                or size == 0 or iova + size > U64 or fd_offset + size > U64):
            raise _Reject(errno.EINVAL)
        end = iova + size
        for m_iova, m_size in self._dma:
            if iova < m_iova + m_size and m_iova < end:
                raise _Reject(errno.EEXIST)
        if len(self._dma) >= MAX_DMA_MAPS:
            raise _Reject(errno.ENOSPC)
        fd = fds.pop() if fds else None
        self._dma.append((iova, size))  # before the call: the backend may keep it
        try:
            self.backend.dma_map(iova, size, fd, fd_offset, flags)
        except Exception:
            self._dma.pop()
            raise
        return b""

    def _h_dma_unmap(self, buf, p, n, fds):
        if fds or n < DMA_UNMAP_S.size:
            raise _Reject(errno.EINVAL)
        argsz, flags, iova, size = DMA_UNMAP_S.unpack_from(buf, p)
        if argsz < DMA_UNMAP_S.size or flags & ~DMA_UNMAP_FLAG_ALL:
            raise _Reject(errno.EINVAL)
        if flags & DMA_UNMAP_FLAG_ALL:
            if iova or size:
                raise _Reject(errno.EINVAL)
            victims = list(self._dma)
        else:
            end = iova + size
            if size == 0 or end > U64:
                raise _Reject(errno.EINVAL)
            victims = []
            for m_iova, m_size in self._dma:
                if m_iova < end and iova < m_iova + m_size:
                    if m_iova < iova or m_iova + m_size > end:
                        raise _Reject(errno.EINVAL)  # would split a mapping
                    victims.append((m_iova, m_size))
        for v in victims:
            self._dma.remove(v)
            self.backend.dma_unmap(v[0], v[1])
        return b""

    def _h_reset(self, buf, p, n, fds):
        if fds:
            raise _Reject(errno.EINVAL)
        if not self._has_reset:
            raise _Reject(errno.ENOTTY)
        self.backend.reset()
        return b""

    # --- MSI ------------------------------------------------------------------

    def _msi_vectors(self):
        get = getattr(self.backend, "msi_vectors", None)
        try:
            return 1 if get is not None and get() else 0
        except Exception:
            return 0

    def _msi_set_irqs(self, action, data_type, start, count, bools, fds, disable):
        if disable:
            self._msi_set_trigger(None)
            return b""
        if action != IRQ_SET_ACTION_TRIGGER:
            raise _Reject(errno.ENOTTY)  # vfio-pci has no MSI masking
        if start != 0 or count != 1:
            raise _Reject(errno.EINVAL)
        if data_type == IRQ_SET_DATA_EVENTFD:
            self._msi_set_trigger(fds.pop() if fds else None)
        elif (bools is None or bools[0] & 1) and self._msi_trigger is not None:
            self.signal_msi()
        return b""

    def _msi_set_trigger(self, fd):
        self._msi_trigger = _swap_trigger(self._msi_trigger, fd)

    def signal_msi(self):
        """The function's MSI vector 0 fires: True if a client has it set up
        (QEMU then sends the message its copy of the capability holds)."""
        if self._msi_trigger is None:
            return False
        try:
            os.write(self._msi_trigger, EVENTFD_ONE)
        except BlockingIOError:
            pass  # the counter is full: the client has events to read already
        except OSError:
            return False
        self.stats["irqs"] += 1
        return True

    # --- INTx -----------------------------------------------------------------

    def _intx_signal(self):
        try:
            os.write(self._intx_trigger, EVENTFD_ONE)
            self.stats["irqs"] += 1
        except OSError as e:
            self.log("vfio-user: INTx eventfd write failed: %s" % e)

    def _intx_fire(self):
        # AUTOMASKED: each signal masks until the client unmasks.
        self._intx_masked = True
        self._intx_signal()

    def _intx_do_unmask(self):
        self._intx_masked = False
        if self._intx_level and self._intx_trigger is not None:
            self._intx_fire()

    def _intx_set_trigger(self, fd):
        self._intx_trigger = _swap_trigger(self._intx_trigger, fd)

    def _intx_set_unmask(self, fd):
        old, self._intx_unmask = self._intx_unmask, fd
        if old != fd:
            self._fds_changed()
        if old is not None and old != fd:
            _close_fds([old])
        if fd is not None:
            os.set_blocking(fd, False)
