# libxenvchan's server end, byte for byte (Xen's tools/libs/vchan; the shared
# page is struct vchan_interface, xen/include/public/io/libxenvchan.h), on
# pages the device model grants to the client's domain and an unbound event
# channel. The server publishes ring-ref and event-channel under its xenstore
# path as libxenvchan_server_init does; a client (vchan-socket-proxy in dom0)
# maps the page, sets cli_live and notifies.
#
# Two byte streams: "left" is the client's writes (our reads), "right" ours.
# Each has {cons, prod} u32 indices that only grow (mod 2**32); the ring at
# index i is byte i & (size - 1). We keep our own index privately and only
# publish it; the peer's is read, checked, and never trusted: a prod more than
# a ring ahead of our cons, or a cons behind what it last said or ahead of our
# prod, drops the connection (logged) and a fresh ring is offered.
import struct

from stubdm import log
from stubdm.compat import const
from stubdm.frontends.ring import load32
from stubdm.hypervisor import HypervisorError

PAGE = const(4096)
# struct vchan_interface
OFF_LEFT_CONS = const(0)
OFF_LEFT_PROD = const(4)
OFF_RIGHT_CONS = const(8)
OFF_RIGHT_PROD = const(12)
OFF_LEFT_ORDER = const(16)
OFF_RIGHT_ORDER = const(18)
OFF_CLI_LIVE = const(20)
OFF_SRV_LIVE = const(21)
OFF_CLI_NOTIFY = const(22)
OFF_SRV_NOTIFY = const(23)
OFF_GRANTS = const(24)
NOTIFY_WRITE = const(1)
NOTIFY_READ = const(2)
# Ring orders (init.c): 10 lives at offset 1024 of the shared page, 11 at
# 2048; 12 and up take 2**(order-12) pages of their own, named in grants[].
SMALL_ORDER = const(10)
LARGE_ORDER = const(11)
MAX_ORDER = const(20)
# cli_live / srv_live
LIVE_CLOSED = const(0)
LIVE_OPEN = const(1)
LIVE_WAITING = const(2)
# xenstore permission bits (XS_PERM_NONE, XS_PERM_READ)
_PERM_NONE = const(0)
_PERM_READ = const(1)
_M = const(0xFFFFFFFF)


def _order_for(n):
    o = 12
    while (1 << o) < n:
        o += 1
    return o


def ring_orders(read_min, write_min):
    """(left order, right order) as libxenvchan_server_init picks them."""
    if read_min > (1 << MAX_ORDER) or write_min > (1 << MAX_ORDER):
        raise ValueError("vchan ring over 1 MiB")
    left, right = _order_for(read_min), _order_for(write_min)
    if read_min <= 1024 and write_min <= 2048:
        return SMALL_ORDER, LARGE_ORDER
    if read_min <= 2048 and write_min <= 1024:
        return LARGE_ORDER, SMALL_ORDER
    if read_min <= 2048:
        return LARGE_ORDER, right
    if write_min <= 2048:
        return left, LARGE_ORDER
    return left, right


class VchanServer:
    """One vchan server. on_data() runs when bytes came (read them with read()),
    on_connect() / on_disconnect() when a client comes and goes."""

    def __init__(self, hyp, xs, path, remote, read_min=0, write_min=0, name="vchan"):
        self.hyp = hyp
        self.xs = xs
        self.path = path
        self.remote = remote
        self.name = name
        self.orders = ring_orders(read_min, write_min)
        self.on_data = None
        self.on_connect = None
        self.on_disconnect = None
        self.port = None
        self.page = None
        self.extra = None
        self.mem = None
        self.connected = False
        self.drops = 0  # connections dropped for bad indices
        self._open()

    # ---- set-up, as libxenvchan_server_init ----
    def _open(self):
        hyp = self.hyp
        lo, ro = self.orders
        self.port = hyp.bind_unbound_port(self.remote)
        self.page = hyp.share_pages(self.remote, 1)
        mem = self.page.mem
        mem[0:PAGE] = bytes(PAGE)
        npages = [1 << (o - 12) if o >= 12 else 0 for o in (lo, ro)]
        if npages[0] + npages[1]:
            if OFF_GRANTS + 4 * (npages[0] + npages[1]) > _first_ring_offset(lo, ro):
                raise ValueError("vchan grants list overlaps the in-page ring")
            self.extra = hyp.share_pages(self.remote, npages[0] + npages[1])
            refs = self.extra.refs
            for i in range(len(refs)):
                struct.pack_into("<I", mem, OFF_GRANTS + 4 * i, refs[i])
        self.read_buf = self._buffer(lo, 0)
        self.write_buf = self._buffer(ro, npages[0])
        self.read_size = 1 << lo
        self.write_size = 1 << ro
        struct.pack_into("<HH", mem, OFF_LEFT_ORDER, lo, ro)
        mem[OFF_CLI_LIVE] = LIVE_WAITING
        mem[OFF_SRV_LIVE] = LIVE_OPEN
        mem[OFF_CLI_NOTIFY] = NOTIFY_WRITE  # tell us when the client writes
        self.mem = mem
        self._words = (mem[OFF_LEFT_CONS:OFF_LEFT_CONS + 4],
                       mem[OFF_RIGHT_PROD:OFF_RIGHT_PROD + 4],
                       mem[OFF_CLI_LIVE:OFF_CLI_LIVE + 4])
        self.rd_cons = 0  # ours: what we consumed of left
        self.wr_prod = 0  # ours: what we produced into right
        self.peer_cons = 0  # the client's cons of right, as last read
        self.connected = False
        self.hyp.barrier()
        self._publish()

    def _buffer(self, order, first_page):
        if order == SMALL_ORDER:
            return self.page.mem[1024:2048]
        if order == LARGE_ORDER:
            return self.page.mem[2048:4096]
        return self.extra.mem[first_page * PAGE:first_page * PAGE + (1 << order)]

    def _publish(self):
        me = self.xs.read_int("domid", 0, 0x7FEF)
        perms = [(me if me is not None else 0, _PERM_NONE), (self.remote, _PERM_READ)]
        ref = self.page.refs[0]
        port = self.port
        path = self.path

        def body(tx):
            self.xs.write(path + "/ring-ref", ref, tx)
            self.xs.set_perms(path + "/ring-ref", perms, tx)
            self.xs.write(path + "/event-channel", port, tx)
            self.xs.set_perms(path + "/event-channel", perms, tx)

        self.xs.transaction(body)

    def close(self):
        """libxenvchan_close: srv_live 0, the client told, grants and port gone, the
        xenstore node removed."""
        if self.mem is None:
            return
        self.mem[OFF_SRV_LIVE] = LIVE_CLOSED
        self.hyp.barrier()
        try:
            self.hyp.notify(self.port)
        except HypervisorError:
            pass
        self._release()
        try:
            self.xs.rm(self.path)
        except HypervisorError as e:
            log.info(self.name, "can't remove %s: %s" % (self.path, e))

    def _release(self):
        self.mem = None
        self._words = None
        self.read_buf = self.write_buf = None
        self.hyp.unbind(self.port)
        self.port = None
        for shared in (self.extra, self.page):
            if shared is not None:
                shared.unshare()
        self.extra = self.page = None

    def _drop(self, why):
        """The client broke the protocol: log it, end this ring, offer a new one."""
        self.drops += 1
        log.guest_error(self.name, "client broke the vchan: %s: connection dropped" % why)
        was = self.connected
        self.mem[OFF_SRV_LIVE] = LIVE_CLOSED
        self.hyp.barrier()
        try:
            self.hyp.notify(self.port)
        except HypervisorError:
            pass
        self._release()
        self.connected = False
        if was and self.on_disconnect is not None:
            self.on_disconnect()
        self._open()

    # ---- notifications (io.c's request_notify / send_notify) ----
    def _request_notify(self, bit):
        # cli_notify: we set bits, the client clears them. Only we set, so a bit
        # seen clear stays clear until our add sets it (no carry into its neighbours).
        mem = self.mem
        if not mem[OFF_CLI_NOTIFY] & bit:
            self.hyp.atomic_add32(self._words[2], bit << 16)
        self.hyp.barrier()

    def _send_notify(self, bit):
        # srv_notify: the client sets bits, we clear them (fetch-and-and).
        self.hyp.barrier()
        mem = self.mem
        if mem[OFF_SRV_NOTIFY] & bit:
            self.hyp.atomic_add32(self._words[2], -(bit << 24))
            self.hyp.notify(self.port)

    def _set_index(self, word, off, value):
        cur = load32(self.mem, off)
        self.hyp.atomic_add32(word, (value - cur) & _M)

    # ---- the streams ----
    def data_ready(self):
        """Bytes the client has written and we have not read; None if the ring broke."""
        if self.mem is None:
            return 0
        prod = load32(self.mem, OFF_LEFT_PROD)
        n = (prod - self.rd_cons) & _M
        if n > self.read_size:
            self._drop("left prod %d is %d bytes past our cons %d (ring %d)"
                       % (prod, n, self.rd_cons, self.read_size))
            return None
        return n

    def read(self, limit=65536):
        """What the client wrote (up to limit bytes), b"" if nothing; None if the
        ring broke."""
        n = self.data_ready()
        if not n:
            if n == 0 and self.mem is not None:
                self._request_notify(NOTIFY_WRITE)
                n = self.data_ready()  # it may have written before seeing the bit
            if not n:
                return n if n is None else b""
        if n > limit:
            n = limit
        self.hyp.barrier()  # the data only after its prod
        size = self.read_size
        i = self.rd_cons & (size - 1)
        buf = self.read_buf
        first = size - i
        if first >= n:
            out = bytes(buf[i:i + n])
        else:
            out = bytes(buf[i:size]) + bytes(buf[0:n - first])
        self.rd_cons = (self.rd_cons + n) & _M
        self.hyp.barrier()  # consumed before we say so
        self._set_index(self._words[0], OFF_LEFT_CONS, self.rd_cons)
        self._send_notify(NOTIFY_READ)
        return out

    def space(self):
        """Bytes we may write now; None if the ring broke."""
        if self.mem is None:
            return 0
        cons = load32(self.mem, OFF_RIGHT_CONS)
        used = (self.wr_prod - cons) & _M
        back = (cons - self.peer_cons) & _M
        if used > self.write_size or back > self.write_size:
            self._drop("right cons %d outside %d..%d" % (cons, self.peer_cons, self.wr_prod))
            return None
        self.peer_cons = cons
        return self.write_size - used

    def write(self, data):
        """Write what fits of data; returns the bytes taken (0 when full, None if the
        ring broke). When short, the client is asked to tell us when it reads."""
        room = self.space()
        if room is None:
            return None
        if room < len(data):
            self._request_notify(NOTIFY_READ)
            room = self.space()
            if room is None:
                return None
        n = len(data) if len(data) < room else room
        if n == 0:
            return 0
        size = self.write_size
        i = self.wr_prod & (size - 1)
        buf = self.write_buf
        first = size - i
        if first >= n:
            buf[i:i + n] = data[0:n]
        else:
            buf[i:size] = data[0:first]
            buf[0:n - first] = data[first:n]
        self.hyp.barrier()  # the data before its prod
        self.wr_prod = (self.wr_prod + n) & _M
        self._set_index(self._words[1], OFF_RIGHT_PROD, self.wr_prod)
        self._send_notify(NOTIFY_WRITE)
        return n

    def is_open(self):
        return self.connected

    # ---- events ----
    def on_event(self):
        """Our event channel fired: a client came or went, wrote or read."""
        if self.mem is None:
            return
        live = self.mem[OFF_CLI_LIVE]
        if live == LIVE_OPEN and not self.connected:
            self.connected = True
            # Our own indices as we know them: a client may have scribbled on them.
            self._set_index(self._words[0], OFF_LEFT_CONS, self.rd_cons)
            self._set_index(self._words[1], OFF_RIGHT_PROD, self.wr_prod)
            # A restarted client maps the same ring: what an old one left unread
            # is its, not the new one's (vchan-socket-proxy's discard_buffers).
            if self.on_connect is not None:
                self.on_connect()
        elif live != LIVE_OPEN and self.connected:
            self.connected = False
            # Seen: back to "not yet connected" (init.c's 2), so that a client that
            # comes next knows its predecessor's close was noticed.
            self.mem[OFF_CLI_LIVE] = LIVE_WAITING
            self._discard()
            if self.on_disconnect is not None:
                self.on_disconnect()
            return
        if self.connected and self.on_data is not None:
            self.on_data()

    def _discard(self):
        for _ in range(64):
            d = self.read()
            if not d:
                return


def _first_ring_offset(lo, ro):
    """Where the first in-page ring starts (the grants list must end before it)."""
    if SMALL_ORDER in (lo, ro):
        return 1024
    if LARGE_ORDER in (lo, ro):
        return 2048
    return PAGE
